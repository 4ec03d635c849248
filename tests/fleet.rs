//! Running on a fleet: Prometheus metrics scraped over real HTTP and checked by
//! promtool; the systemd unit verified by systemd-analyze; the example config valid.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use portwatch_tests::{free_port, portwatch, require_root, spawn_python, start_logged};

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Content-Type: text/plain; version=0.0.4"), "{resp}");
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[test]
fn metrics_are_scraped_and_pass_promtool() {
    require_root();
    let (watched, metrics_port) = (free_port(), free_port());
    let (watched_s, addr) = (watched.to_string(), format!("127.0.0.1:{metrics_port}"));
    // With history, whose metrics the alerting rules use too.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let (_agent, _log) = start_logged(
        &["agent", "--db", db.to_str().expect("utf8"), "--no-socket", "--interval", "200ms", "-p", &watched_s, "--metrics", &addr],
        "serving Prometheus metrics",
    );
    // Counters are there at 0 before any event.
    let first = scrape(metrics_port);
    for needle in [
        "portwatch_events_total{event=\"bind_failed\"} 0",
        "portwatch_verdicts_total{reason=\"accept_stall\"} 0",
        "portwatch_signals_total{signal=\"SIGKILL\"} 0",
        "portwatch_reaps_total{outcome=\"freed\"} 0",
    ] {
        assert!(first.contains(needle), "missing {needle} in\n{first}");
    }
    // The gauges appear with the agent's first sample.
    let free_line = format!("portwatch_port_held{{port=\"{watched}\"}} 0");
    let mut before = String::new();
    for _ in 0..50 {
        before = scrape(metrics_port);
        if before.contains(&free_line) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(before.contains(&free_line), "{before}");
    let (_server, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {watched})); s.listen()\nc = socket.create_connection(('127.0.0.1', {watched}))\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    std::thread::sleep(Duration::from_millis(800));
    let body = scrape(metrics_port);
    for needle in [
        format!("portwatch_port_held{{port=\"{watched}\"}} 1"),
        format!("portwatch_port_holders{{port=\"{watched}\"}} 1"),
        format!("portwatch_accept_queue_length{{port=\"{watched}\"}} 1"),
        format!("portwatch_port_stuck{{port=\"{watched}\",reason=\"accept_stall\"}} 0"),
        "portwatch_events_total{event=\"listen\"} 1".to_string(),
        "portwatch_ringbuf_lost_events_total 0".to_string(),
        "portwatch_build_info{version=".to_string(),
    ] {
        assert!(body.contains(&needle), "missing {needle} in\n{body}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask test installs Debian's prometheus package)");
    promtool.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(out.status.success(), "promtool: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // process_* for the agent itself.
    for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
        let line = body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in\n{body}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v > 0.0 || name == "process_cpu_seconds_total", "{line}");
    }
    // Every metric the alerting rules use is exported (counters from the start).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = std::fs::read_to_string(root.join("deploy/portwatch.rules.yml")).expect("rules");
    for word in
        rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("portwatch_") || w.starts_with("process_"))
    {
        assert!(body.lines().any(|l| l.starts_with(word)), "the rules use {word}, which the agent does not export:\n{body}");
    }
    // HEAD: the headers of GET, no body.
    let mut head = TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
    head.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut resp = String::new();
    head.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("Content-Length: ") && resp.ends_with("\r\n\r\n"), "{resp:?}");
    // A client that sends nothing is dropped after the read timeout (5 s).
    let mut idle = TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    let n = idle.read_to_end(&mut buf).expect("closed by the agent, not timed out here");
    assert!(n == 0 && t.elapsed() >= Duration::from_secs(4) && t.elapsed() < Duration::from_secs(12), "{n} bytes after {:?}", t.elapsed());
    let mut bad = TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
    bad.write_all(b"GET /nope HTTP/1.1\r\n\r\n").expect("request");
    let mut resp = String::new();
    bad.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 404"));
}

#[test]
fn systemd_unit_verifies_and_example_config_parses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("deploy/portwatch.service")).expect("unit");
    assert!(unit.contains("CapabilityBoundingSet=") && unit.contains("ProtectSystem=strict") && unit.contains("NoNewPrivileges=yes"));
    // The control socket lives in the unit's runtime directory (ProtectSystem makes
    // the rest of /run read-only), and systemd waits for READY=1.
    assert!(unit.contains("RuntimeDirectory=portwatch") && unit.contains("Type=notify") && unit.contains("LimitNOFILE="));
    assert!(unit.contains("SystemCallFilter=@system-service"));
    // systemd-analyze checks that ExecStart's binary exists: point it at this build.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("portwatch.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/portwatch", portwatch_tests::bin())).expect("write unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("systemd-analyze");
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // The hardening keeps its exposure score (systemd-analyze security; the README
    // records it): at most 4.0 ("OK").
    let sec = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&copy).output().expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&sec.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for portwatch.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score in {text}{}", String::from_utf8_lossy(&sec.stderr)));
    assert!(score <= 4.0, "exposure {score}:\n{text}");
    // The example config is accepted (a dry run signals nothing).
    let cfg = root.join("deploy/portwatch.toml");
    let out = portwatch(&["cleanup", "--dry-run", "--json", "--stall", "200ms", "--config", cfg.to_str().expect("utf8")]);
    assert!(matches!(out.status.code(), Some(0 | 1 | 6)), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["verdicts"].is_array());
}

#[test]
fn alerting_rules_pass_promtool() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let check = Command::new("promtool")
        .args(["check", "rules", "portwatch.rules.yml"])
        .current_dir(&deploy)
        .output()
        .expect("promtool (cargo xtask test installs Debian's prometheus package)");
    assert!(check.status.success(), "{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    // The rules' unit tests: which series fire which alert, with which labels.
    let test =
        Command::new("promtool").args(["test", "rules", "portwatch.rules.test.yml"]).current_dir(&deploy).output().expect("promtool");
    assert!(test.status.success(), "{}{}", String::from_utf8_lossy(&test.stdout), String::from_utf8_lossy(&test.stderr));
}
