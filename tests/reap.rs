//! Stuck listeners and safe reaping against real processes: the seed story's
//! stopped gunicorn, a listener that never accepts, a TERM-ignoring server, PID 1
//! in a pid namespace, and a pid that no longer holds the socket.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{alive, children_of, free_port, portwatch, require_root, spawn_python, start_logged, ChildGuard, PidGuard};

fn start_gunicorn(port: u16, dir: &std::path::Path) -> (ChildGuard, BTreeSet<i32>) {
    std::fs::write(dir.join("app.py"), "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n")
        .expect("app");
    let child = Command::new("python3")
        .args(["-m", "gunicorn", "--bind", &format!("127.0.0.1:{port}"), "--workers", "4", "app:app"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gunicorn (cargo xtask test installs it)");
    let master = ChildGuard(child);
    for _ in 0..200 {
        let w = children_of(master.pid());
        if w.len() == 4 {
            return (master, w);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gunicorn did not start 4 workers");
}

/// Bindable the way servers bind (SO_REUSEADDR).
fn bindable(port: u16) -> bool {
    portwatch::service::reaper::bindable(portwatch::model::socket::Proto::Tcp, "127.0.0.1".parse().expect("ip"), port)
}

#[test]
fn stopped_gunicorn_is_stuck_and_free_force_kills_only_it() {
    require_root();
    let (port, other) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, workers) = start_gunicorn(port, dir.path());
    let _worker_guards: Vec<PidGuard> = workers.iter().map(|&w| PidGuard(w)).collect();
    let mut pids: Vec<i32> = workers.iter().copied().collect();
    pids.push(master.pid());
    for &p in &pids {
        kill(Pid::from_raw(p), Signal::SIGSTOP).expect("SIGSTOP");
    }
    // Clients whose requests sit in the accept queue, and one process that is only a
    // client of the port; an unrelated listener elsewhere.
    let (client, _) = spawn_python(&format!(
        "import socket, time\ncs = [socket.create_connection(('127.0.0.1', {port})) for _ in range(3)]\nfor c in cs: c.send(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    let (unrelated, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {other})); s.listen()\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));

    let out = portwatch(&["cleanup", "--dry-run", "--json", "--stall", "2s", "-p", &port.to_string(), "-p", &other.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 1, "only the stopped gunicorn: {report:#}");
    let kinds: Vec<&str> = verdicts[0]["reasons"].as_array().expect("reasons").iter().filter_map(|r| r["kind"].as_str()).collect();
    assert!(kinds.contains(&"accept_stall") && kinds.contains(&"holders_stopped"), "{kinds:?}");
    assert!(verdicts[0]["reasons"][0]["evidence"].as_str().unwrap_or("").contains("3/"), "{report:#}");
    let mut verdict_pids: Vec<i32> =
        verdicts[0]["pids"].as_array().expect("pids").iter().filter_map(|p| p.as_i64()).map(|p| p as i32).collect();
    verdict_pids.sort_unstable();
    pids.sort_unstable();
    assert_eq!(verdict_pids, pids);
    assert!(report["healthy"].as_array().expect("healthy").contains(&serde_json::json!(other)));
    assert!(pids.iter().all(|&p| alive(p)), "a dry run signals nothing");

    let out = portwatch(&["free", "--force", "--grace", "2s", &port.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("freed"), "{text}");
    // The master is our child: it is a zombie until reaped, which is not alive.
    assert!(pids.iter().all(|&p| !alive(p)), "every gunicorn pid is gone");
    assert!(bindable(port), "the port is bindable again");
    assert!(alive(client.pid()), "a client of the port is not a holder");
    assert!(alive(unrelated.pid()), "an unrelated listener is untouched");
    drop(master);
}

#[test]
fn term_ignoring_server_needs_force() {
    require_root();
    let port = free_port();
    let (server, _) = spawn_python(&format!(
        "import signal, socket, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    let out = portwatch(&["free", "--grace", "1s", &port.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--force"));
    assert!(alive(server.pid()), "SIGTERM is ignored and there is no SIGKILL without --force");
    let dry = portwatch(&["free", "--dry-run", "--force", &port.to_string()]);
    assert_eq!(dry.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("SIGKILL"));
    assert!(alive(server.pid()));
    let out = portwatch(&["free", "--force", "--grace", "1s", "--json", &port.to_string()]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let signals: Vec<&str> = v[0]["outcome"]["signals"].as_array().expect("signals").iter().filter_map(|s| s["signal"].as_str()).collect();
    assert_eq!(signals, vec!["SIGTERM", "SIGKILL"]);
    assert!(!alive(server.pid()));
    assert!(bindable(port));
}

#[test]
fn agent_reaps_a_listener_that_never_accepts_and_spares_a_busy_one() {
    require_root();
    let (stuck_port, busy_port) = (free_port(), free_port());
    let (busy, _) = spawn_python(&format!(
        r#"
import http.server, socketserver, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = socketserver.ThreadingTCPServer(("127.0.0.1", {busy_port}), H)
print("READY", flush=True)
srv.serve_forever()
"#
    ));
    let (_traffic, _) = spawn_python(&format!(
        "import time, urllib.request\nprint('READY', flush=True)\nfor _ in range(400):\n    urllib.request.urlopen('http://127.0.0.1:{busy_port}/', timeout=2).read()\n    time.sleep(0.02)\n"
    ));
    let ports = format!("{stuck_port},{busy_port}");
    let (agent, rx) = start_logged(
        &[
            "agent",
            "--reap",
            "--log-json",
            "--no-history",
            "--no-socket",
            "--stall",
            "2s",
            "--grace",
            "1s",
            "--interval",
            "200ms",
            "-p",
            &ports,
        ],
        "agent started",
    );

    let (silent, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {stuck_port})); s.listen()\nc = socket.create_connection(('127.0.0.1', {stuck_port}))\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    let stuck_since = Instant::now();
    let mut died_after = None;
    while stuck_since.elapsed() < Duration::from_secs(8) {
        if !alive(silent.pid()) {
            died_after = Some(stuck_since.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let died_after = died_after.expect("the agent did not reap the stuck listener");
    assert!(died_after <= Duration::from_secs(2 + 1 + 1), "reaped after {died_after:?}, want <= stall + grace + 1s");
    std::thread::sleep(Duration::from_secs(3));
    let _ = kill(Pid::from_raw(agent.pid()), Signal::SIGTERM);
    let logs: Vec<String> = rx.iter().take_while(|l| !l.contains("agent stopped")).collect();
    let stuck_lines: Vec<&String> = logs.iter().filter(|l| l.contains("listener stuck")).collect();
    assert_eq!(stuck_lines.len(), 1, "{logs:#?}");
    assert!(stuck_lines[0].contains(&format!("\"port\":{stuck_port}")), "{}", stuck_lines[0]);
    assert!(stuck_lines[0].contains("accept_stall"));
    assert!(logs.iter().any(|l| l.contains("reaped; port is free")), "{logs:#?}");
    assert!(alive(busy.pid()), "the busy server was not touched");
    assert!(!logs.iter().any(|l| l.contains("listener stuck") && l.contains(&format!("\"port\":{busy_port}"))));
}

/// The agent judges accept stalls from the kernel's per-port count of connections
/// completed into accept queues (no ring-buffer event per connection). A listener
/// whose queue never empties but keeps moving (a slow acceptor: connections arrive
/// as fast as it takes them) is healthy only if those counts are read: from the
/// queue length alone it looks exactly like a stalled one. A running holder that
/// never accepts, with connections queued, is stuck, and for that reason alone.
#[test]
fn agent_judges_accept_stalls_from_the_kernel_counts() {
    require_root();
    let (asleep_port, slow_port) = (free_port(), free_port());
    let (asleep, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {asleep_port})); s.listen(16)\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    // Eight connections queued first, then one accepted and one new every 50 ms:
    // the queue stays near eight and never empties.
    let (slow, _) = spawn_python(&format!(
        r#"
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", {slow_port})); s.listen(64)
cs = [socket.create_connection(("127.0.0.1", {slow_port})) for _ in range(8)]
print("READY", flush=True)
end = time.time() + 60
while time.time() < end:
    a, _ = s.accept(); a.close()
    cs.pop(0).close()
    cs.append(socket.create_connection(("127.0.0.1", {slow_port})))
    time.sleep(0.05)
"#
    ));
    let ports = format!("{asleep_port},{slow_port}");
    let (agent, rx) = start_logged(
        &["agent", "--log-json", "--no-history", "--no-socket", "--stall", "2s", "--interval", "200ms", "-p", &ports],
        "agent started",
    );
    let _clients = spawn_python(&format!(
        "import socket, time\ncs = [socket.create_connection(('127.0.0.1', {asleep_port})) for _ in range(3)]\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    std::thread::sleep(Duration::from_secs(5));
    let _ = kill(Pid::from_raw(agent.pid()), Signal::SIGTERM);
    let logs: Vec<String> = rx.iter().take_while(|l| !l.contains("agent stopped")).collect();
    let stuck_on = |port: u16| -> Vec<&String> {
        logs.iter().filter(|l| l.contains("listener stuck") && l.contains(&format!("\"port\":{port}"))).collect()
    };
    let asleep_lines = stuck_on(asleep_port);
    assert_eq!(asleep_lines.len(), 1, "the holder that never accepts, 3 connections queued, is stuck: {logs:#?}");
    assert!(asleep_lines[0].contains("\"reasons\":\"accept_stall\""), "{}", asleep_lines[0]);
    assert!(asleep_lines[0].contains("accept queue 3/16"), "{}", asleep_lines[0]);
    assert!(stuck_on(slow_port).is_empty(), "the slow acceptor's queue moves (kernel counts): {logs:#?}");
    assert!(alive(slow.pid()) && alive(asleep.pid()), "nothing was reaped without --reap");
}

#[test]
fn pid_1_of_a_pid_namespace_is_refused() {
    require_root();
    let port = free_port();
    // python is PID 1 of a new pid namespace and holds the port; portwatch, its child,
    // is asked to free it.
    let script = format!(
        "import os, socket, subprocess\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nassert os.getpid() == 1\nr = subprocess.run(['{bin}', 'free', '--force', '--grace', '1s', '{port}'], capture_output=True, text=True)\nprint('CODE', r.returncode)\nprint('OUT', r.stdout.strip())\n",
        bin = portwatch_tests::bin()
    );
    let out = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "python3", "-c", &script]).output().expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("CODE 6"), "refusal exit code: {text}");
    assert!(text.contains("refused") && text.contains("pid 1"), "{text}");
}

#[test]
fn a_pid_that_no_longer_holds_the_socket_or_names_another_process_is_never_signalled() {
    require_root();
    use portwatch::{
        model::{
            plan::{Protect, Sequence},
            process::Holder,
            socket::{Family, Proto, SockState, Socket},
        },
        service::reaper,
        sys::proc,
    };
    // A real process that does not hold the socket the plan names, as after pid reuse.
    let bystander = ChildGuard(Command::new("sleep").arg("60").spawn().expect("sleep"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sock = |holder: Holder| Socket {
        port,
        proto: Proto::Tcp,
        family: Family::Ipv4,
        addr: "127.0.0.1".parse().expect("ip"),
        state: SockState::Listen,
        inode: 123_456_789,
        cookie: 1,
        uid: 0,
        accept_queue: Some(0),
        backlog: Some(128),
        peer: None,
        since: None,
        job: None,
        holders: vec![holder],
    };
    let me = reaper::caller_self();
    let seq = Sequence { force: true, grace: Duration::from_millis(100) };
    let info = proc::info(bystander.pid()).expect("bystander");
    // The same process, but it does not hold the planned socket.
    let s = sock(Holder { proc: info.clone(), fd: 3 });
    let plan = reaper::plan_port(port, &[&s], &me, &Protect::default(), seq);
    assert!(plan.refused.is_none(), "{:?}", plan.refused);
    let outcome = reaper::execute(&plan, &me, &|_| false);
    assert!(outcome.signals.is_empty(), "no signal may be sent: {outcome:?}");
    assert!(outcome.skipped[0].why.contains("no longer holds"), "{outcome:?}");
    // A plan made for an earlier process with this pid (another start time).
    let mut earlier = info;
    earlier.start_ticks -= 1;
    let s = sock(Holder { proc: earlier, fd: 3 });
    let plan = reaper::plan_port(port, &[&s], &me, &Protect::default(), seq);
    let outcome = reaper::execute(&plan, &me, &|_| false);
    assert!(outcome.signals.is_empty(), "no signal may be sent: {outcome:?}");
    assert!(outcome.skipped[0].why.contains("another process"), "{outcome:?}");
    assert!(alive(bystander.pid()));
    assert!(!outcome.freed);
    drop(listener);
}

#[test]
fn bad_durations_configs_and_ports_are_clean_errors() {
    let cases: &[(&[&str], i32, &str)] = &[
        (&["free", "5050", "--grace", "soon"], 2, "invalid duration"),
        (&["free", "0"], 2, "1-65535"),
        (&["cleanup", "--stall", "x1", "-p", "5050"], 2, "invalid duration"),
        (&["agent", "--config", "/nonexistent/portwatch.toml"], 3, "cannot read config"),
        (&["free", "--config", "/nonexistent/portwatch.toml", "5050"], 3, "cannot read config"),
    ];
    for (args, code, needle) in cases {
        let out = portwatch(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("pw.toml");
    std::fs::write(&cfg, "ports = [5050]\nstal = \"3s\"\n").expect("write");
    let out = portwatch(&["cleanup", "--config", cfg.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("line 2") && err.contains("stal"), "{err}");
    std::fs::write(&cfg, "ports = [\"abc\"]\n").expect("write");
    let out = portwatch(&["agent", "--config", cfg.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a number"));
    // Readable config, but no ports at all: a usage error.
    std::fs::write(&cfg, "stall = \"3s\"\n").expect("write");
    let out = portwatch(&["cleanup", "--config", cfg.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
