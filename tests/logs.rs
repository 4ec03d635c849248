//! The agent's logs as machines and terminals read them: `--log-json` fields typed
//! (numbers, arrays, no Debug text), the failed-bind line naming the holder's pid
//! and command (and `watch`'s EADDRINUSE line too), NO_COLOR honoured on a
//! terminal, and the journal's `<N>` priority prefixes when stderr is the journal.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{bin, free_port, require_root, spawn_python, start_logged, ChildGuard};

fn holder_script(port: u16) -> String {
    format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    )
}

fn failer_script(port: u16) -> String {
    format!("import socket, time\nt = socket.socket()\ntry:\n    t.bind(('127.0.0.1', {port}))\nexcept OSError:\n    pass\nprint('READY', flush=True)\ntime.sleep(60)\n")
}

/// Every value of a JSON object, recursively, as text: none may be Rust Debug.
fn assert_no_debug_text(v: &serde_json::Value, line: &str) {
    match v {
        serde_json::Value::String(s) => assert!(!s.starts_with("Some(") && !s.starts_with('['), "Debug text {s:?} in {line}"),
        serde_json::Value::Array(a) => a.iter().for_each(|x| assert_no_debug_text(x, line)),
        serde_json::Value::Object(o) => o.values().for_each(|x| assert_no_debug_text(x, line)),
        _ => {}
    }
}

#[test]
fn json_log_is_typed_and_names_the_holder() {
    require_root();
    let port = free_port();
    let ps = port.to_string();
    let (_agent, log) =
        start_logged(&["agent", "--log-json", "--no-socket", "--no-history", "--interval", "200ms", "-p", &ps], "agent started");
    let (holder, _) = spawn_python(&holder_script(port));
    std::thread::sleep(Duration::from_millis(300));
    let (failer, _) = spawn_python(&failer_script(port));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    let failed = loop {
        let line = log.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a bind failed line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        assert_no_debug_text(&v, &line);
        lines.push(v.clone());
        if v["message"] == "bind failed" {
            break v;
        }
    };
    assert!(!lines.is_empty());
    assert_eq!(failed["pid"], failer.pid(), "{failed}");
    assert_eq!(failed["port"], port);
    assert_eq!(failed["holder_pid"], holder.pid());
    assert_eq!(failed["holder_comm"], "python3");
    assert_eq!(failed["held_by"], format!("held by pid {} (python3) listen 127.0.0.1:{port}", holder.pid()));
    assert_eq!(failed["level"], "WARN");
}

#[test]
fn agent_started_line_has_arrays_and_numbers() {
    require_root();
    let (a, b) = (free_port(), free_port());
    let (sa, sb) = (a.to_string(), b.to_string());
    let mut child = Command::new(bin())
        .args(["agent", "--log-json", "--no-socket", "--no-history", "-p", &sa, "-p", &sb])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let err = child.stderr.take().unwrap();
    let agent = ChildGuard(child);
    let line = BufReader::new(err).lines().map_while(Result::ok).find(|l| l.contains("agent started")).expect("agent started");
    drop(agent);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let mut want = vec![a, b];
    want.sort_unstable();
    assert_eq!(v["ports"], serde_json::json!(want), "{line}");
    assert!(v["existing_sockets"].is_u64() && v["reap"].is_boolean() && v["dry_run"].is_boolean(), "{line}");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
}

/// Runs the agent on a pseudo-terminal (script(1)) for a moment; its output.
fn agent_on_terminal(no_color: bool) -> String {
    let port = free_port();
    let cmd = format!("timeout -s INT 3 {} agent --no-socket --no-history -p {port}", bin());
    let mut c = Command::new("script");
    c.args(["-qfec", &cmd, "/dev/null"]).stdin(Stdio::null()).stderr(Stdio::inherit()).env_remove("NO_COLOR").env_remove("JOURNAL_STREAM");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    let out = c.output().expect("script");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_is_honoured_on_a_terminal() {
    require_root();
    let coloured = agent_on_terminal(false);
    assert!(coloured.contains("agent started") && coloured.contains('\x1b'), "a terminal gets colours: {coloured:?}");
    let plain = agent_on_terminal(true);
    assert!(plain.contains("agent started") && !plain.contains('\x1b'), "NO_COLOR=1: {plain:?}");
}

/// The agent with stderr in a file that `JOURNAL_STREAM` names (as systemd does
/// for a service logging to the journal), or names another file.
fn agent_log_as_journal(json: bool, matching: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let m = if matching { file.metadata().unwrap() } else { std::fs::metadata(dir.path()).unwrap() };
    let port = free_port().to_string();
    let mut args = vec!["agent", "--no-socket", "--no-history", "-p", &port];
    if json {
        args.push("--log-json");
    }
    let child = Command::new(bin())
        .args(&args)
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("agent");
    let agent = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        text.clear();
        std::fs::File::open(&path).unwrap().read_to_string(&mut text).unwrap();
        if text.contains("agent started") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(agent.pid()), Signal::SIGTERM).unwrap();
    drop(agent);
    text
}

#[test]
fn journal_gets_priorities_and_no_timestamps() {
    require_root();
    let text = agent_log_as_journal(false, true);
    let line = text.lines().find(|l| l.contains("agent started")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("<6>agent started"), "{line:?}");
    assert!(!line.contains('\x1b'));
    let json = agent_log_as_journal(true, true);
    let line = json.lines().find(|l| l.contains("agent started")).unwrap_or_else(|| panic!("{json}"));
    let body = line.strip_prefix("<6>").unwrap_or_else(|| panic!("{line:?}"));
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["level"], "INFO");
    // JOURNAL_STREAM naming another file: not the journal, plain lines.
    let other = agent_log_as_journal(false, false);
    let line = other.lines().find(|l| l.contains("agent started")).unwrap_or_else(|| panic!("{other}"));
    assert!(!line.starts_with('<'), "{line:?}");
}

#[test]
fn watch_names_the_holder_of_a_port_in_use() {
    require_root();
    let port = free_port();
    let (holder, _) = spawn_python(&holder_script(port));
    let mut child =
        Command::new(bin()).args(["watch", "-p", &port.to_string()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("watch");
    let mut out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let mut watch = ChildGuard(child);
    // stderr is drained to the end: a closed pipe would fail watch's own writes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("watching") {
                let _ = tx.send(());
            }
        }
    });
    assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok(), "watch did not start");
    let (_failer, _) = spawn_python(&failer_script(port));
    std::thread::sleep(Duration::from_millis(600));
    kill(Pid::from_raw(watch.pid()), Signal::SIGINT).unwrap();
    let _ = watch.0.wait();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let want = format!("EADDRINUSE (held by pid {} (python3) listen 127.0.0.1:{port}", holder.pid());
    assert!(text.contains(&want), "no {want:?} in\n{text}");
}
