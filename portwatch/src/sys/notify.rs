//! The systemd notification protocol (sd_notify(3)): one datagram of
//! `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`). Outside systemd (no variable) it
//! does nothing.
use std::os::unix::net::UnixDatagram;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`: `/run/systemd/notify` or `@name`. Anything else
/// (empty, relative, or vsock addresses, which portwatch does not speak) is None.
pub fn parse_addr(v: &std::ffi::OsStr) -> Option<NotifyAddr> {
    use std::os::unix::ffi::OsStrExt as _;
    let b = v.as_bytes();
    match b.first()? {
        b'/' => Some(NotifyAddr::Path(std::path::PathBuf::from(v))),
        b'@' if b.len() > 1 => Some(NotifyAddr::Abstract(b[1..].to_vec())),
        _ => None,
    }
}

/// Sends `state` (e.g. `READY=1`) to systemd. Ok(false) when not run by systemd
/// with a notification socket.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET").as_deref().and_then(parse_addr) else { return Ok(false) };
    let sock = UnixDatagram::unbound()?;
    match addr {
        NotifyAddr::Path(p) => sock.send_to(state.as_bytes(), p)?,
        NotifyAddr::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(&name)?;
            sock.send_to_addr(state.as_bytes(), &a)?
        }
    };
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notify_socket() {
        assert_eq!(parse_addr("/run/systemd/notify".as_ref()), Some(NotifyAddr::Path("/run/systemd/notify".into())));
        assert_eq!(parse_addr("@/org/x".as_ref()), Some(NotifyAddr::Abstract(b"/org/x".to_vec())));
        assert_eq!(parse_addr("".as_ref()), None);
        assert_eq!(parse_addr("@".as_ref()), None);
        assert_eq!(parse_addr("vsock:2:1".as_ref()), None);
    }

    #[test]
    fn sends_a_datagram_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        // The only test in the crate that touches NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1").unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!notify("READY=1").unwrap());
    }
}
