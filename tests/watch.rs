//! `portwatch watch` against the real kernel: real sockets from child processes.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portwatch_tests::{events_of, free_port, require_root, run_python, Watch};

#[test]
fn sees_tcp4_udp_tcp6_binds_listens_failures_and_closes_on_watched_ports_only() {
    require_root();
    let (p_tcp, p_udp, p_tcp6, p_other) = (free_port(), free_port(), free_port(), free_port());
    let watch = Watch::start(&["--accepts", "--port", &format!("{p_tcp},{p_udp}"), "--port", &p_tcp6.to_string()]);
    let out = run_python(&format!(
        r#"
import os, socket, time
t = socket.socket(); t.bind(("127.0.0.1", {p_tcp})); t.listen(8)
c = socket.create_connection(("127.0.0.1", {p_tcp}))
dup = socket.socket()
try:
    dup.bind(("127.0.0.1", {p_tcp}))
except OSError as e:
    assert e.errno == 98, e
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", {p_udp}))
s6 = socket.socket(socket.AF_INET6); s6.bind(("::1", {p_tcp6})); s6.listen()
o = socket.socket(); o.bind(("127.0.0.1", {p_other})); o.listen()
time.sleep(0.2)
for s in (c, t, u, s6, o, dup):
    s.close()
print(os.getpid())
"#
    ));
    let pid: i32 = out.trim().parse().expect("child pid");
    let (events, stderr) = watch.stop();

    let binds = events_of(&events, pid, p_tcp, "bind");
    let ok: Vec<_> = binds.iter().filter(|e| e.get("error").is_none()).collect();
    let failed: Vec<_> = binds.iter().filter(|e| e.get("error").is_some()).collect();
    assert_eq!(ok.len(), 1, "one successful tcp4 bind: {events:#?}");
    assert_eq!((ok[0]["proto"].as_str(), ok[0]["family"].as_str(), ok[0]["addr"].as_str()), (Some("tcp"), Some("ipv4"), Some("127.0.0.1")));
    assert_eq!(failed.len(), 1, "one failed bind: {events:#?}");
    assert_eq!(failed[0]["error"], "EADDRINUSE");
    assert_eq!(failed[0]["held_by"]["state"], "listen");
    assert_eq!(events_of(&events, pid, p_tcp, "listen").len(), 1);
    let accepts: Vec<_> = events.iter().filter(|e| e["event"] == "accept" && e["port"] == p_tcp).collect();
    assert_eq!(accepts.len(), 1, "the connection queued on the listener");
    assert!(accepts[0]["pid"].is_null());
    assert_eq!(accepts[0]["peer_addr"], "127.0.0.1");
    assert_eq!(events_of(&events, pid, p_tcp, "close").len(), 1, "listener close");

    let udp = events_of(&events, pid, p_udp, "bind");
    assert_eq!(udp.len(), 1);
    assert_eq!(udp[0]["proto"], "udp");
    assert_eq!(events_of(&events, pid, p_udp, "close").len(), 1);

    let b6 = events_of(&events, pid, p_tcp6, "bind");
    assert_eq!(b6.len(), 1);
    assert_eq!((b6[0]["family"].as_str(), b6[0]["addr"].as_str()), (Some("ipv6"), Some("::1")));
    assert_eq!(events_of(&events, pid, p_tcp6, "listen").len(), 1);

    for e in &events {
        assert_ne!(e["port"], p_other, "unwatched port reported: {e}");
        for key in ["time", "event", "pid", "tid", "uid", "comm", "proto", "family", "addr", "port"] {
            assert!(e.get(key).is_some(), "{key} missing in {e}");
        }
    }
    assert!(stderr.contains(" 0 lost"), "{stderr}");
}

/// Without `--accepts` connections are only counted in the kernel: `watch` shows the
/// listener's bind, listen and close, and no `accept` event (on a watched port and in
/// watch-all mode).
#[test]
fn accepts_are_shown_only_with_the_accepts_flag() {
    require_root();
    let port = free_port();
    for args in [vec!["--port".to_string(), port.to_string()], vec![]] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let watch = Watch::start(&args);
        let out = run_python(&format!(
            r#"
import os, socket, time
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", {port})); t.listen(8)
cs = [socket.create_connection(("127.0.0.1", {port})) for _ in range(3)]
a = t.accept()[0]
time.sleep(0.1)
for s in cs + [a, t]:
    s.close()
print(os.getpid())
"#
        ));
        let pid: i32 = out.trim().parse().expect("child pid");
        let (events, stderr) = watch.stop();
        assert_eq!(events_of(&events, pid, port, "listen").len(), 1, "{args:?}: {events:#?}");
        assert_eq!(events_of(&events, pid, port, "close").len(), 1, "{args:?}: {events:#?}");
        let accepts: Vec<_> = events.iter().filter(|e| e["event"] == "accept" && e["port"] == port).collect();
        assert!(accepts.is_empty(), "{args:?}: accept events without --accepts: {accepts:#?}");
        assert!(stderr.contains(" 0 lost"), "{stderr}");
    }
}

#[test]
fn bind_zero_reports_the_port_the_kernel_chose() {
    require_root();
    let watch = Watch::start(&[]);
    let out = run_python(
        r#"
import os, socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(os.getpid(), s.getsockname()[1])
s.close()
"#,
    );
    let mut it = out.split_whitespace().map(|v| v.parse::<i32>().expect("number"));
    let (pid, port) = (it.next().expect("pid"), it.next().expect("port") as u16);
    let (events, _) = watch.stop();
    let binds = events_of(&events, pid, port, "bind");
    assert_eq!(binds.len(), 1, "bind(0) seen with its real port {port}: {events:#?}");
    assert_eq!(binds[0]["requested_port"], 0);
    assert_eq!(binds[0]["comm"], "python3");
    assert_eq!(events_of(&events, pid, port, "listen").len(), 1);
}

#[test]
fn listen_without_bind_is_reported_in_watch_all_mode() {
    require_root();
    let watch = Watch::start(&[]);
    let out = run_python(
        r#"
import os, socket, time
s = socket.socket(); s.listen()
time.sleep(0.1)
print(os.getpid(), s.getsockname()[1])
"#,
    );
    let mut it = out.split_whitespace().map(|v| v.parse::<i32>().expect("number"));
    let (pid, port) = (it.next().expect("pid"), it.next().expect("port") as u16);
    let (events, _) = watch.stop();
    let listens: Vec<_> = events.iter().filter(|e| e["event"] == "listen" && e["pid"] == pid).collect();
    assert_eq!(listens.len(), 1, "{events:#?}");
    assert_eq!(listens[0]["port"], port, "the implicitly bound port is resolved");
}

/// A socket whose own storage cannot be allocated (forced here with
/// `PORTWATCH_NO_SOCKET_STORAGE=1`) is tracked in the cookie-keyed hash instead:
/// its close is still reported, for a listener, a bound-only TCP socket and UDP.
#[test]
fn closes_are_reported_when_a_socket_has_no_storage() {
    require_root();
    let (p_listen, p_bound, p_udp) = (free_port(), free_port(), free_port());
    let ports = format!("{p_listen},{p_bound},{p_udp}");
    let watch = Watch::start_env(&["--port", &ports], &[("PORTWATCH_NO_SOCKET_STORAGE", "1")]);
    let out = run_python(&format!(
        r#"
import os, socket
t = socket.socket(); t.bind(("127.0.0.1", {p_listen})); t.listen()
b = socket.socket(); b.bind(("127.0.0.1", {p_bound}))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", {p_udp}))
for s in (t, b, u):
    s.close()
print(os.getpid())
"#
    ));
    let pid: i32 = out.trim().parse().expect("child pid");
    let (events, stderr) = watch.stop();
    for port in [p_listen, p_bound, p_udp] {
        assert_eq!(events_of(&events, pid, port, "bind").len(), 1, "{port}: {events:#?}");
        assert_eq!(events_of(&events, pid, port, "close").len(), 1, "{port}: {events:#?}");
    }
    assert!(stderr.contains(" 0 lost"), "{stderr}");
}
