//! Sockets: protocol, address family and state as the kernel numbers them, typed.
use std::net::{IpAddr, SocketAddr};

use portwatch_common::tcp_state;
use serde::{Deserialize, Serialize};

use super::process::Holder;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Tcp, Self::Udp].into_iter().find(|p| p.name() == s)
    }

    /// From an `IPPROTO_*` number.
    pub fn from_ipproto(p: u16) -> Option<Self> {
        match p {
            portwatch_common::IPPROTO_TCP => Some(Self::Tcp),
            portwatch_common::IPPROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// From an `AF_*` number.
    pub fn from_af(af: u16) -> Option<Self> {
        match af {
            portwatch_common::AF_INET => Some(Self::Ipv4),
            portwatch_common::AF_INET6 => Some(Self::Ipv6),
            _ => None,
        }
    }

    pub fn af(self) -> u8 {
        match self {
            Self::Ipv4 => portwatch_common::AF_INET as u8,
            Self::Ipv6 => portwatch_common::AF_INET6 as u8,
        }
    }

    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() {
            Self::Ipv4
        } else {
            Self::Ipv6
        }
    }

    /// `4` or `6`, as in `tcp4`.
    pub fn digit(self) -> char {
        match self {
            Self::Ipv4 => '4',
            Self::Ipv6 => '6',
        }
    }
}

/// A socket's state, as `ss` names it. A TCP socket that is bound but neither
/// listening nor connected is `bound` (the kernel says CLOSE, or BOUND_INACTIVE
/// from 6.5); a UDP socket is `bound` or `connected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SockState {
    Listen,
    Bound,
    Connected,
    Established,
    SynSent,
    SynRecv,
    #[serde(rename = "fin-wait-1")]
    FinWait1,
    #[serde(rename = "fin-wait-2")]
    FinWait2,
    TimeWait,
    CloseWait,
    LastAck,
    Closing,
    NewSynRecv,
    Unknown,
}

impl SockState {
    /// From the kernel's state number (`include/net/tcp_states.h`; UDP reuses them).
    pub fn from_kernel(proto: Proto, state: u8) -> Self {
        use tcp_state::*;
        match (proto, state) {
            (Proto::Udp, ESTABLISHED) => Self::Connected,
            (Proto::Udp, _) => Self::Bound,
            (Proto::Tcp, LISTEN) => Self::Listen,
            (Proto::Tcp, CLOSE | BOUND_INACTIVE) => Self::Bound,
            (Proto::Tcp, ESTABLISHED) => Self::Established,
            (Proto::Tcp, SYN_SENT) => Self::SynSent,
            (Proto::Tcp, SYN_RECV) => Self::SynRecv,
            (Proto::Tcp, FIN_WAIT1) => Self::FinWait1,
            (Proto::Tcp, FIN_WAIT2) => Self::FinWait2,
            (Proto::Tcp, TIME_WAIT) => Self::TimeWait,
            (Proto::Tcp, CLOSE_WAIT) => Self::CloseWait,
            (Proto::Tcp, LAST_ACK) => Self::LastAck,
            (Proto::Tcp, CLOSING) => Self::Closing,
            (Proto::Tcp, NEW_SYN_RECV) => Self::NewSynRecv,
            (Proto::Tcp, _) => Self::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Listen => "listen",
            Self::Bound => "bound",
            Self::Connected => "connected",
            Self::Established => "established",
            Self::SynSent => "syn-sent",
            Self::SynRecv => "syn-recv",
            Self::FinWait1 => "fin-wait-1",
            Self::FinWait2 => "fin-wait-2",
            Self::TimeWait => "time-wait",
            Self::CloseWait => "close-wait",
            Self::LastAck => "last-ack",
            Self::Closing => "closing",
            Self::NewSynRecv => "new-syn-recv",
            Self::Unknown => "unknown",
        }
    }
}

/// One socket as the kernel reports it (sock_diag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEntry {
    pub proto: Proto,
    pub family: Family,
    /// The kernel's state number (see [`SockState::from_kernel`]).
    pub state: u8,
    pub addr: IpAddr,
    pub port: u16,
    pub peer: IpAddr,
    pub peer_port: u16,
    /// 0 for a connection still waiting in a listener's accept queue.
    pub inode: u64,
    pub uid: u32,
    pub cookie: u64,
    /// Listeners: connections waiting in the accept queue. Others: bytes queued.
    pub recv_q: u32,
    /// Listeners: the accept queue's maximum (backlog).
    pub send_q: u32,
    /// The cgroup v2 id of the process that created the socket (0: not known).
    pub cgroup: u64,
}

impl SockEntry {
    pub fn sock_state(&self) -> SockState {
        SockState::from_kernel(self.proto, self.state)
    }

    pub fn is_listener(&self) -> bool {
        self.proto == Proto::Tcp && self.state == tcp_state::LISTEN
    }
}

/// A socket on a port and every process holding it: what `who` answers (and its
/// `--json` schema).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    pub port: u16,
    pub proto: Proto,
    pub family: Family,
    pub addr: IpAddr,
    pub state: SockState,
    pub inode: u64,
    pub cookie: u64,
    pub uid: u32,
    /// Listeners: connections waiting to be accepted.
    pub accept_queue: Option<u32>,
    /// Listeners: the accept queue's maximum.
    pub backlog: Option<u32>,
    /// For `--clients`: the client's own end of a connection to the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// From the agent's history: since when this socket has held the port (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// From the agent's history: the CI job that bound it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub holders: Vec<Holder>,
}

impl Socket {
    /// A bound socket, or (`client`) the client end of a connection to a port, whose
    /// `port` is then the server's and `peer` the client's own end.
    pub fn new(e: &SockEntry, holders: Vec<Holder>, client: bool) -> Self {
        let listener = e.is_listener();
        Self {
            port: if client { e.peer_port } else { e.port },
            proto: e.proto,
            family: e.family,
            addr: e.addr,
            state: e.sock_state(),
            inode: e.inode,
            cookie: e.cookie,
            uid: e.uid,
            accept_queue: listener.then_some(e.recv_q),
            backlog: listener.then_some(e.send_q),
            peer: client.then_some(SocketAddr::new(e.addr, e.port)),
            since: None,
            job: None,
            holders,
        }
    }

    pub fn is_listener(&self) -> bool {
        self.proto == Proto::Tcp && self.state == SockState::Listen
    }

    /// Whether a connection to `target` can reach this listener: same family (an
    /// IPv6 socket not bound v6-only also takes IPv4 connections, seen as
    /// `::ffff:a.b.c.d` or `::`), and an address that is the target's or a wildcard.
    pub fn covers(&self, target: IpAddr) -> bool {
        let wildcard = self.addr.is_unspecified();
        match (self.addr, target) {
            (IpAddr::V4(a), IpAddr::V4(t)) => wildcard || a == t,
            (IpAddr::V6(a), IpAddr::V6(t)) => wildcard || a == t,
            (IpAddr::V6(a), IpAddr::V4(t)) => wildcard || a.to_ipv4_mapped() == Some(t),
            (IpAddr::V4(_), IpAddr::V6(t)) => t.to_ipv4_mapped().is_some_and(|t| wildcard || self.addr == IpAddr::V4(t)),
        }
    }
}

/// An endpoint as `ss` prints it: `127.0.0.1:5050`, `[::1]:5050`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_names() {
        assert_eq!(SockState::from_kernel(Proto::Tcp, tcp_state::LISTEN), SockState::Listen);
        assert_eq!(SockState::from_kernel(Proto::Tcp, tcp_state::CLOSE), SockState::Bound);
        assert_eq!(SockState::from_kernel(Proto::Tcp, tcp_state::BOUND_INACTIVE), SockState::Bound);
        assert_eq!(SockState::from_kernel(Proto::Udp, tcp_state::ESTABLISHED), SockState::Connected);
        assert_eq!(SockState::from_kernel(Proto::Udp, tcp_state::CLOSE), SockState::Bound);
        assert_eq!(SockState::from_kernel(Proto::Tcp, 99), SockState::Unknown);
        for s in [SockState::Listen, SockState::FinWait1, SockState::TimeWait, SockState::NewSynRecv] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert_eq!(serde_json::to_value(Family::Ipv6).unwrap(), "ipv6");
    }

    #[test]
    fn endpoints_and_coverage() {
        assert_eq!(endpoint("::1".parse().unwrap(), 80), "[::1]:80");
        assert_eq!(endpoint("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
        let entry = |addr: &str| SockEntry {
            proto: Proto::Tcp,
            family: Family::of(addr.parse().unwrap()),
            state: tcp_state::LISTEN,
            addr: addr.parse().unwrap(),
            port: 5050,
            peer: "0.0.0.0".parse().unwrap(),
            peer_port: 0,
            inode: 1,
            uid: 0,
            cookie: 1,
            recv_q: 0,
            send_q: 128,
            cgroup: 0,
        };
        let v4 = "127.0.0.1".parse().unwrap();
        let v6 = "::1".parse().unwrap();
        assert!(Socket::new(&entry("127.0.0.1"), vec![], false).covers(v4));
        assert!(!Socket::new(&entry("127.0.0.1"), vec![], false).covers(v6));
        assert!(!Socket::new(&entry("::1"), vec![], false).covers(v4));
        assert!(Socket::new(&entry("::"), vec![], false).covers(v4));
        assert!(Socket::new(&entry("0.0.0.0"), vec![], false).covers(v4));
        assert!(!Socket::new(&entry("10.0.0.1"), vec![], false).covers(v4));
    }
}
