//! Whether a port is free, asked of the kernel itself: by binding it.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Socket, Type};

/// Whether `port` can be bound right now on every address, TCP and UDP, IPv4 and
/// IPv6, without `SO_REUSEADDR` (so a port with sockets in TIME_WAIT is not free).
/// The test sockets are closed at once. A family the host lacks is skipped.
pub fn bindable(port: u16) -> bool {
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    [(Domain::IPV4, Type::STREAM, v4), (Domain::IPV6, Type::STREAM, v6), (Domain::IPV4, Type::DGRAM, v4), (Domain::IPV6, Type::DGRAM, v6)]
        .into_iter()
        .all(|(domain, ty, addr)| {
            let Ok(s) = Socket::new(domain, ty, None) else { return true };
            if domain == Domain::IPV6 && s.set_only_v6(true).is_err() {
                return false;
            }
            s.bind(&addr.into()).is_ok()
        })
}
