//! Bad input and missing privileges: one line on stderr, a distinct exit code, no panic.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portwatch_tests::{free_port, portwatch, portwatch_unprivileged, require_root, spawn_python};

fn one_line_error(args: &[&str], code: i32, needle: &str) {
    let out = portwatch(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line, got {stderr:?}");
    assert!(stderr.contains(needle), "{args:?}: {stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn bad_ports_exit_2_with_one_line() {
    one_line_error(&["who", "0"], 2, "1-65535");
    one_line_error(&["who", "70000"], 2, "out of range");
    one_line_error(&["who", "abc"], 2, "not a number");
    one_line_error(&["who", "--", "-5"], 2, "negative");
    one_line_error(&["who", "-5"], 2, "-5");
    one_line_error(&["who", "5052-5050"], 2, "invalid range");
    one_line_error(&["check"], 2, "required");
    one_line_error(&["watch", "--port", "x"], 2, "not a number");
    one_line_error(&["watch", "--duration", "soon"], 2, "invalid duration");
    one_line_error(&["frobnicate"], 2, "unrecognized subcommand");
}

#[test]
fn missing_privilege_exits_4() {
    require_root();
    let out = portwatch_unprivileged(&["watch", "--port", "5050"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("root"), "{stderr}");
    let out = portwatch_unprivileged(&["doctor"]);
    assert_eq!(out.status.code(), Some(4));
    // A port held by root: nobody cannot see (or signal) its holders.
    let port = free_port();
    let (_server, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let out = portwatch_unprivileged(&["free", "--force", &port.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("root"), "{stderr}");
}

#[test]
fn check_free_and_held() {
    require_root();
    let port = free_port();
    let out = portwatch(&["check", &port.to_string()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{port}: free")));
    let (server, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let out = portwatch(&["check", "--json", &port.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["free"], false);
    assert_eq!(v[0]["holders"][0]["pid"], server.pid());
    // UDP on the same number does not make the TCP port busy, and the reverse.
    let out = portwatch(&["check", "--udp", &port.to_string()]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn doctor_reports_hooks_as_json() {
    require_root();
    let out = portwatch(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["observer_ready"], true);
    let hooks = v["hooks"].as_array().expect("hooks");
    let hook = |name: &str| hooks.iter().find(|h| h["hook"] == name).unwrap_or_else(|| panic!("{name} not probed"));
    assert_eq!(hook("cgroup/post_bind4")["supported"], true);
    assert_eq!(hook("tp_btf/inet_sock_set_state")["supported"], true);
    // Every probe has a verdict, and every failure says why.
    for h in hooks {
        assert!(h["supported"].is_boolean());
        if h["supported"] == false {
            assert!(h["error"].as_str().is_some_and(|e| !e.is_empty()), "{h}");
        }
    }
}
