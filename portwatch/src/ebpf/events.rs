//! Decoding ring-buffer records into typed events (pure; unit-tested).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[cfg(test)]
use portwatch_common::AF_INET6;
use portwatch_common::{info_flags, Event, EventKind, AF_INET};

use crate::model::{
    event::{SockEvent, Task},
    socket::{Family, Proto},
};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("short record: {0} bytes, expected {1}")]
    Short(usize, usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown address family {0}")]
    Family(u16),
}

pub fn ip_from(family: u16, bytes: [u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// A kernel `comm` (NUL-padded) as text.
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Decodes one ring-buffer record, checking its size first.
pub fn decode(bytes: &[u8]) -> Result<SockEvent, DecodeError> {
    let need = core::mem::size_of::<Event>();
    if bytes.len() < need {
        return Err(DecodeError::Short(bytes.len(), need));
    }
    // SAFETY: the length was checked; `Event` is plain old data, any bytes are valid.
    let ev: Event = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
    from_raw(&ev)
}

pub fn from_raw(ev: &Event) -> Result<SockEvent, DecodeError> {
    let kind = EventKind::from_u32(ev.info.kind).ok_or(DecodeError::Kind(ev.info.kind))?;
    let i = &ev.info;
    let d = &ev.data;
    let family = Family::from_af(d.family).ok_or(DecodeError::Family(d.family))?;
    let task = (i.flags & info_flags::NO_TASK == 0).then(|| Task {
        pid: i.tgid,
        tid: i.tid,
        uid: i.uid,
        gid: i.gid,
        comm: comm_str(&i.comm),
        cgroup_id: i.cgroup_id,
    });
    Ok(SockEvent {
        kind,
        ts_ns: i.ts_ns,
        task,
        netns_cookie: i.netns_cookie,
        cookie: d.cookie,
        proto: Proto::from_ipproto(d.protocol),
        family,
        addr: ip_from(d.family, d.addr),
        port: d.port,
        req_port: d.req_port,
        peer: ip_from(d.family, d.peer_addr),
        peer_port: d.peer_port,
        old_state: d.old_state,
        new_state: d.new_state,
        lost_before: 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn raw(kind: EventKind, pid: u32, port: u16) -> Event {
        let mut ev = Event::default();
        ev.info.kind = kind as u32;
        ev.info.tgid = pid;
        ev.info.tid = pid;
        ev.info.ts_ns = 1_000;
        ev.info.comm[..7].copy_from_slice(b"python3");
        ev.data.family = AF_INET;
        ev.data.protocol = 6;
        ev.data.port = port;
        ev.data.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev
    }

    #[test]
    fn decodes_a_record() {
        let ev = raw(EventKind::Bind, 42, 5050);
        // SAFETY: viewing a POD struct as bytes.
        let bytes = unsafe { core::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), core::mem::size_of::<Event>()) };
        let d = decode(bytes).unwrap();
        assert_eq!(d.kind, EventKind::Bind);
        assert_eq!(d.task.as_ref().unwrap().comm, "python3");
        assert_eq!(d.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(d.proto, Some(Proto::Tcp));
        assert_eq!(decode(&bytes[..10]), Err(DecodeError::Short(10, 128)));
    }

    #[test]
    fn rejects_unknown_kind_and_handles_no_task() {
        let mut ev = raw(EventKind::Accept, 0, 5050);
        ev.info.flags = info_flags::NO_TASK;
        assert!(from_raw(&ev).unwrap().task.is_none());
        ev.info.kind = 99;
        assert_eq!(from_raw(&ev), Err(DecodeError::Kind(99)));
        let mut v6 = raw(EventKind::Bind, 1, 1);
        v6.data.family = 99;
        assert_eq!(from_raw(&v6), Err(DecodeError::Family(99)));
        v6.data.family = AF_INET6;
        v6.data.addr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(from_raw(&v6).unwrap().addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
