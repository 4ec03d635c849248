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
    // clap's tips survive, on the same line.
    one_line_error(&["whoo", "5050"], 2, "unrecognized subcommand 'whoo' (tip: a similar subcommand exists: 'who')");
    one_line_error(&["who", "--jsn", "5050"], 2, "a similar argument exists: '--json'");
    one_line_error(&["completions", "tcsh"], 2, "invalid value 'tcsh'");
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
    // The holders program's self-checks: the task filter (6.1+) and, with it, the
    // tasks waiting on a socket (a thread of doctor's own in poll and epoll_wait).
    if portwatch_tests::kernel_at_least(6, 1) {
        let checks = v["checks"].as_array().expect("checks");
        let detail = |name: &str| checks.iter().find(|c| c["name"] == name).map(|c| c["detail"].to_string()).unwrap_or_default();
        assert!(detail("who candidates").contains("a repeated who checks"), "{checks:?}");
        assert!(detail("who waiters").contains("a first who checks the tasks waiting"), "{checks:?}");
    }
    // Every probe has a verdict, and every failure says why.
    for h in hooks {
        assert!(h["supported"].is_boolean());
        if h["supported"] == false {
            assert!(h["error"].as_str().is_some_and(|e| !e.is_empty()), "{h}");
        }
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definitions() {
    for (shell, needle) in [("bash", "complete -F _portwatch"), ("zsh", "#compdef portwatch"), ("fish", "complete -c portwatch")] {
        let out = portwatch(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle) && text.contains("detach-ready") && text.contains("wide"), "{shell}: {text}");
        assert!(!text.contains("out-dir"), "{shell}: the hidden man command is not completed");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = portwatch(&["man", "--out-dir", dir.path().to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["portwatch.1", "portwatch-who.1", "portwatch-run.1", "portwatch-completions.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") && text.contains(".TH"), "{page}");
    }
    assert!(!dir.path().join("portwatch-man.1").exists(), "the hidden command has no page");
}

/// On a terminal the help is styled; NO_COLOR turns every colour off (clap's help
/// and errors; the agent's log is tested with the agent).
#[test]
fn no_color_is_honoured_on_a_terminal() {
    let on_tty = |no_color: bool| {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec", &format!("{} --help", portwatch_tests::bin()), "/dev/null"]).env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().expect("script(1) from util-linux");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(on_tty(false).contains("\x1b["), "styled help on a terminal");
    let plain = on_tty(true);
    assert!(plain.contains("Usage:") && !plain.contains("\x1b["), "{plain:?}");
}
