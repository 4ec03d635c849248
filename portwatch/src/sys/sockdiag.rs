//! Sockets bound to given ports, from the kernel's sock_diag netlink interface
//! (what `ss` uses), filtered in the kernel by an inet_diag bytecode program.
use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::AF_INET;
use netlink_packet_sock_diag::{
    constants::{IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use portwatch_common::tcp_state::{BOUND_INACTIVE, CLOSE, ESTABLISHED, LISTEN};

pub use crate::model::socket::{Family, Proto, SockEntry};

/// inet_diag bytecode ops (`include/uapi/linux/inet_diag.h`).
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Longer port lists are filtered in user space only (jump offsets are u16).
pub const MAX_KERNEL_FILTER_PORTS: usize = 1024;

/// Bytecode accepting sockets whose local port is any of `ports`, laid out as `ss`
/// compiles `sport = A or sport = B`: each test falls through (`yes`) to a `JMP`
/// that skips to the end (accept) and otherwise (`no`) skips past that `JMP` to the
/// next test; the last test's `no` jumps past the end (reject). The kernel's audit
/// requires every op to be reachable along `yes` jumps, which this layout satisfies.
pub fn port_filter_bytecode(ports: &[u16]) -> Vec<u8> {
    let ports = &ports[..ports.len().min(MAX_KERNEL_FILTER_PORTS)];
    let n = ports.len();
    let mut bc = Vec::with_capacity(n * 12);
    for (i, &port) in ports.iter().enumerate() {
        // Test: yes -> next op (8 bytes on), no -> skip this pair and the JMP (12).
        bc.extend_from_slice(&[INET_DIAG_BC_S_EQ, 8]);
        bc.extend_from_slice(&12u16.to_ne_bytes());
        bc.extend_from_slice(&[0, 0]);
        bc.extend_from_slice(&port.to_ne_bytes());
        if i + 1 < n {
            // JMP always takes `no`: to the end, i.e. over the remaining tests.
            let rest = (n - i - 1) * 8 + (n - i - 2) * 4;
            bc.extend_from_slice(&[INET_DIAG_BC_JMP, 4]);
            bc.extend_from_slice(&((rest + 4) as u16).to_ne_bytes());
        }
    }
    bc
}

fn request(family: u8, protocol: u8, states: u32, ports: &[u16]) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            // SAFETY (bitflags 1.x): the kernel accepts any state bits.
            states: unsafe { StateFlags::from_bits_unchecked(states) },
            // One port: also in the request itself, which the kernel compares before
            // running the bytecode (cheaper per socket in a large UDP table).
            socket_id: {
                let mut id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
                if let [port] = ports {
                    id.source_port = *port;
                }
                id
            },
        })
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    if !ports.is_empty() {
        let bc = port_filter_bytecode(ports);
        let nla_len = (4 + bc.len()) as u16;
        buf.extend_from_slice(&nla_len.to_ne_bytes());
        buf.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        buf.extend_from_slice(&bc);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
        let len = buf.len() as u32;
        buf[..4].copy_from_slice(&len.to_ne_bytes());
    }
    buf
}

/// Dumps sockets of one family and protocol in the given TCP states, keeping those
/// whose local port is in `ports` (all when `ports` is empty).
pub fn dump(proto: Proto, family: Family, states: u32, ports: &[u16]) -> io::Result<Vec<SockEntry>> {
    let protocol = match proto {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    };
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let kernel_ports: &[u16] = if ports.len() <= MAX_KERNEL_FILTER_PORTS { ports } else { &[] };
    socket.send(&request(family.af(), protocol, states, kernel_ports), 0)?;

    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    return Err(io::Error::from_raw_os_error(code));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let id = &h.socket_id;
                    if ports.is_empty() || ports.contains(&id.source_port) {
                        let lo = u32::from_ne_bytes([id.cookie[0], id.cookie[1], id.cookie[2], id.cookie[3]]);
                        let hi = u32::from_ne_bytes([id.cookie[4], id.cookie[5], id.cookie[6], id.cookie[7]]);
                        out.push(SockEntry {
                            proto,
                            family,
                            state: h.state,
                            addr: id.source_address,
                            port: id.source_port,
                            peer: id.destination_address,
                            peer_port: id.destination_port,
                            inode: u64::from(h.inode),
                            uid: h.uid,
                            cookie: u64::from(lo) | (u64::from(hi) << 32),
                            recv_q: h.recv_queue,
                            send_q: h.send_queue,
                            cgroup: cgroup_id(&r.nlas),
                        });
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// `INET_DIAG_CGROUP_ID` (Linux >= 5.9): the cgroup v2 id of the socket's creator.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// The socket's cgroup id from its attributes; 0 when absent.
fn cgroup_id(nlas: &[netlink_packet_sock_diag::inet::nlas::Nla]) -> u64 {
    use netlink_packet_utils::nla::Nla as _;
    nlas.iter()
        .find_map(|n| match n {
            netlink_packet_sock_diag::inet::nlas::Nla::Other(a) if a.kind() == INET_DIAG_CGROUP_ID && a.value_len() == 8 => {
                let mut v = [0u8; 8];
                a.emit_value(&mut v);
                Some(u64::from_ne_bytes(v))
            }
            _ => None,
        })
        .unwrap_or(0)
}

/// Which sockets to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub tcp: bool,
    pub udp: bool,
    /// Include TCP connections (established etc.) whose local port matches: the server
    /// side of accepted connections and clients that happen to use the port.
    pub connections: bool,
}

impl Default for Query {
    fn default() -> Self {
        Self { tcp: true, udp: true, connections: false }
    }
}

/// Every socket bound to one of `ports`: TCP listeners and bound-only sockets, UDP
/// sockets; both families.
pub fn sockets_on_ports(ports: &[u16], q: Query) -> io::Result<Vec<SockEntry>> {
    let mut out = Vec::new();
    let tcp_states = if q.connections { !(1 << 0) } else { (1 << LISTEN) | (1 << CLOSE) | (1 << BOUND_INACTIVE) };
    for family in [Family::Ipv4, Family::Ipv6] {
        if q.tcp {
            out.extend(dump(Proto::Tcp, family, tcp_states, ports)?);
        }
        if q.udp {
            out.extend(dump(Proto::Udp, family, u32::MAX, ports)?);
        }
    }
    Ok(out)
}

/// The TCP listeners on `port`, both families.
pub fn listeners(port: u16) -> io::Result<Vec<SockEntry>> {
    let mut out = dump(Proto::Tcp, Family::Ipv4, 1 << LISTEN, &[port])?;
    out.extend(dump(Proto::Tcp, Family::Ipv6, 1 << LISTEN, &[port])?);
    Ok(out)
}

/// Every established TCP connection (both families), for `who --clients`.
pub fn dump_all_connections() -> io::Result<Vec<SockEntry>> {
    let mut out = dump(Proto::Tcp, Family::Ipv4, 1 << ESTABLISHED, &[])?;
    out.extend(dump(Proto::Tcp, Family::Ipv6, 1 << ESTABLISHED, &[])?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytecode_chain_accepts_on_match_and_rejects_at_end() {
        let bc = port_filter_bytecode(&[5050, 5051, 5052]);
        assert_eq!(bc.len(), 3 * 8 + 2 * 4);
        // Interpret it as the kernel does: returns whether `port` is accepted.
        let run = |port: u16| {
            let mut pc = 0usize;
            while pc < bc.len() {
                let (code, yes, no) = (bc[pc], bc[pc + 1] as usize, u16::from_ne_bytes([bc[pc + 2], bc[pc + 3]]) as usize);
                let taken = match code {
                    INET_DIAG_BC_JMP => false,
                    INET_DIAG_BC_S_EQ => u16::from_ne_bytes([bc[pc + 6], bc[pc + 7]]) == port,
                    _ => panic!("unexpected op"),
                };
                pc += if taken { yes } else { no };
            }
            pc == bc.len()
        };
        assert!(run(5050) && run(5051) && run(5052));
        assert!(!run(5053) && !run(1));
        assert_eq!(port_filter_bytecode(&[7]).len(), 8);
    }
}
