//! `watch` records: an aligned table or JSON lines.
use crate::{
    model::{
        event::{Activity, ErrorSource, HeldBy, Record},
        socket::endpoint,
    },
    output::esc,
    sys::clock::{hms_ms, rfc3339_ms, WallClock},
};

pub const HEADER: &str = "TIME          EVENT   PID      COMM             PROTO  ADDRESS                                          RESULT";

/// Who a failed bind ran into, names escaped: `held by pid 8330 (python3) listen
/// 127.0.0.1:5050` (the pid and command when known; the socket always).
pub fn held_by(h: &HeldBy, port: u16) -> String {
    let who = match (h.pids.as_slice(), &h.comm) {
        ([], _) => String::new(),
        ([pid, ..], Some(comm)) => format!("pid {pid} ({}) ", esc(comm)),
        (pids, None) => format!("pid {} ", pids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
    };
    format!("held by {who}{} {}", h.state.name(), endpoint(h.addr, port))
}

/// One line of the human table.
pub fn human_line(r: &Record, clock: &WallClock) -> String {
    let proto = format!("{}{}", r.proto.map_or("other", |p| p.name()), r.family.digit());
    let result = match (&r.error, r.event) {
        (Some(_), _) if r.error_source == Some(ErrorSource::LostEvents) => "unknown (events were lost meanwhile)".to_string(),
        (Some(_), _) if r.error_source == Some(ErrorSource::OtherNetns) => "unknown (another network namespace)".to_string(),
        (Some(e), _) if r.lease.is_some() => {
            format!("{} (refused by the lease of {})", e.name(), r.lease.as_deref().map(super::lease::holder).unwrap_or_default())
        }
        (Some(e), _) => {
            let mut s = e.name().to_string();
            if let Some(h) = &r.held_by {
                s.push_str(&format!(" ({} inode {})", held_by(h, r.port), h.inode));
            }
            s
        }
        (None, Activity::Bind) if r.requested_port == Some(0) => "ok (port chosen by kernel)".to_string(),
        (None, Activity::Accept) => format!("queued from {}", r.peer_addr.map_or("?".into(), |a| endpoint(a, r.peer_port.unwrap_or(0)))),
        (None, _) => "ok".to_string(),
    };
    format!(
        "{:<13} {:<7} {:<8} {:<16} {:<6} {:<48} {}",
        hms_ms(clock.wall(r.ts_ns)),
        r.event.name(),
        r.pid.map_or("-".to_string(), |p| p.to_string()),
        esc(r.comm.as_deref().unwrap_or("-")),
        proto,
        endpoint(r.addr, r.port),
        result
    )
}

/// One JSON object (one line), written straight to `out`.
pub fn write_json<W: std::io::Write>(out: &mut W, r: &mut Record, clock: &WallClock) -> std::io::Result<()> {
    r.time = Some(rfc3339_ms(clock.wall(r.ts_ns)));
    serde_json::to_writer(&mut *out, &*r).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{tests::ev, BindError, EventKind, HeldBy};

    #[test]
    fn renders_table_and_json() {
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let mut r = Record::from_event(&ev(EventKind::Bind, 42, 5050, 1, 1_000));
        r.requested_port = Some(5050);
        let line = human_line(&r, &clock);
        assert!(line.starts_with("22:13:20.000"), "{line}");
        assert!(line.contains("bind") && line.contains("42") && line.contains("python3"));
        assert!(line.contains("tcp4") && line.contains("127.0.0.1:5050") && line.ends_with("ok"));
        let header_cols: Vec<&str> = HEADER.split_whitespace().collect();
        assert_eq!(header_cols, ["TIME", "EVENT", "PID", "COMM", "PROTO", "ADDRESS", "RESULT"]);

        r.error = Some(BindError::AddrInUse);
        r.held_by = Some(HeldBy {
            inode: 11546,
            state: crate::model::socket::SockState::Listen,
            addr: "127.0.0.1".parse().unwrap(),
            uid: 0,
            cookie: 9,
            pids: vec![8330],
            comm: Some("python3".into()),
        });
        let line = human_line(&r, &clock);
        assert!(line.ends_with("EADDRINUSE (held by pid 8330 (python3) listen 127.0.0.1:5050 inode 11546)"), "{line}");
        let mut buf = Vec::new();
        write_json(&mut buf, &mut r, &clock).unwrap();
        assert_eq!(buf.last(), Some(&b'\n'));
        let j: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        for key in ["time", "event", "pid", "tid", "uid", "comm", "proto", "family", "addr", "port", "error"] {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        assert_eq!(j["error"], "EADDRINUSE");
        assert_eq!(j["family"], "ipv4");
        assert_eq!(j["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(j["held_by"]["pids"][0], 8330);
    }

    #[test]
    fn hostile_names_are_escaped() {
        let clock = WallClock::with_offset_ns(0);
        let mut e = ev(EventKind::Listen, 7, 5050, 1, 1);
        e.task.as_mut().unwrap().comm = "\x1b[2J\nport".into();
        let line = human_line(&Record::from_event(&e), &clock);
        assert!(!line.contains('\x1b') && !line.contains('\n'), "{line:?}");
    }
}
