//! `portwatch wait` and `portwatch run` with real servers.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{free_port, portwatch, require_root, spawn_python, ChildGuard, PidGuard};

fn http_server(port: u16) -> String {
    format!(
        r#"
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 503); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
socketserver.TCPServer.allow_reuse_address = True
srv = socketserver.TCPServer(("127.0.0.1", {port}), H)
print("READY", flush=True)
srv.serve_forever()
"#
    )
}

#[test]
fn wait_healthy_http_and_tcp() {
    let port = free_port();
    let (_srv, _) = spawn_python(&http_server(port));
    let out = portwatch(&["wait", "--timeout", "5s", &port.to_string(), &format!("http://127.0.0.1:{port}/health"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v.iter().all(|r| r["ready"] == true));
    assert_eq!(v[0]["detail"], "accepted");
    // A wrong status is not ready.
    let out = portwatch(&["wait", "--timeout", "1s", &format!("http://127.0.0.1:{port}/other")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 503"));
}

#[test]
fn wait_names_the_holder_of_a_wedged_listener() {
    require_root();
    let port = free_port();
    let (srv, _) = spawn_python(&http_server(port));
    kill(Pid::from_raw(srv.pid()), Signal::SIGSTOP).expect("SIGSTOP");
    let out = portwatch(&["wait", "--timeout", "2s", &format!("tcp://127.0.0.1:{port}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("never accepted") && err.contains(&format!("pid {}", srv.pid())) && err.contains("python3"), "{err}");
    let _ = kill(Pid::from_raw(srv.pid()), Signal::SIGCONT);
}

#[test]
fn wait_refused_then_ready_when_the_server_starts() {
    let port = free_port();
    let mut waiter = Command::new(portwatch_tests::bin())
        .args(["wait", "--timeout", "15s", &port.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("wait");
    std::thread::sleep(Duration::from_millis(700));
    let (_srv, _) = spawn_python(&http_server(port));
    let status = waiter.wait().expect("wait exits");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut waiter.stderr.take().expect("stderr"), &mut err).expect("read");
    assert!(status.success(), "{err}");
    assert!(err.contains("refused") && err.contains("ready"), "{err}");
}

#[test]
fn run_forking_leaves_nothing_behind_even_a_setsid_daemon() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("daemon.pid");
    // The command double-forks a setsid daemon that listens, then exits at once: a
    // launcher, so --forking.
    let script = format!(
        r#"
import os, socket, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen()
        open("{pidfile}", "w").write(str(os.getpid()))
        while True:
            c, _ = s.accept(); c.close()
    os._exit(0)
os._exit(0)
"#,
        pidfile = pidfile.display()
    );
    let mut run = Command::new(portwatch_tests::bin())
        .args(["run", "--forking", "--port", &port.to_string(), "--timeout", "10s", "--grace", "1s", "--", "python3", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let run_pid = run.id() as i32;
    let stderr = run.stderr.take().expect("stderr");
    let guard = ChildGuard(run);
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok).find(|l| l.contains("ready"));
    assert!(line.is_some_and(|l| l.contains("ready after")), "run did not report readiness");
    let daemon: i32 = std::fs::read_to_string(&pidfile).expect("daemon pid").trim().parse().expect("pid");
    let _daemon_guard = PidGuard(daemon);
    let ppid = std::fs::read_to_string(format!("/proc/{daemon}/stat")).expect("daemon alive");
    assert!(ppid.contains(&format!(" {run_pid} ")), "the daemon was adopted by run (subreaper): {ppid}");
    kill(Pid::from_raw(run_pid), Signal::SIGTERM).expect("SIGTERM run");
    let start = Instant::now();
    let mut guard = guard;
    let status = loop {
        if let Some(st) = guard.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "run did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.code().is_some(), "run exited normally after SIGTERM: {status:?}");
    assert!(!std::path::Path::new(&format!("/proc/{daemon}")).exists(), "the daemon is gone");
    // Connections the daemon accepted and closed linger in TIME_WAIT; servers (this
    // daemon too) use SO_REUSEADDR, which lets a new listener bind over them.
    assert!(
        portwatch::service::reaper::bindable(portwatch::model::socket::Proto::Tcp, "127.0.0.1".parse().expect("ip"), port),
        "the port is free"
    );
    assert_eq!(portwatch(&["check", "-q", &port.to_string()]).status.code(), Some(0));
}

#[test]
fn run_exits_with_the_command_status() {
    let out = portwatch(&["run", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let out = portwatch(&["run", "--", "/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));
}

#[test]
fn run_detach_ready_then_stop() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("svc.pid");
    let pf = pidfile.to_str().expect("utf8");
    let out = portwatch(&[
        "run",
        "--detach-ready",
        "--pid-file",
        pf,
        "--port",
        &port.to_string(),
        "--timeout",
        "10s",
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("run --stop"), "{err}");
    let supervisor: i32 = std::fs::read_to_string(&pidfile).expect("pid file").trim().parse().expect("pid");
    let _guard = PidGuard(supervisor);
    // The service outlives the command that started it, and serves.
    assert_eq!(portwatch(&["check", "-q", &port.to_string()]).status.code(), Some(1));
    assert_eq!(portwatch(&["wait", "--timeout", "2s", &port.to_string()]).status.code(), Some(0));
    let out = portwatch(&["run", "--stop", pf]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!portwatch_tests::alive(supervisor), "the supervisor is gone");
    assert_eq!(portwatch(&["check", "-q", &port.to_string()]).status.code(), Some(0), "the service is gone");
    assert!(!pidfile.exists());
}

#[test]
fn wait_uses_its_whole_timeout() {
    let port = free_port();
    let start = Instant::now();
    let out = portwatch(&["wait", "--timeout", "2s", &port.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() >= Duration::from_millis(1900), "gave up after {:?}", start.elapsed());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
}

#[test]
fn run_kills_a_command_that_ignores_sigterm() {
    let mut run = Command::new(portwatch_tests::bin())
        .args(["run", "--grace", "1s", "--", "sh", "-c", "trap '' TERM; echo up; sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run");
    let stdout = run.stdout.take().expect("stdout");
    let guard = ChildGuard(run);
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok).next();
    assert_eq!(line.as_deref(), Some("up"));
    kill(Pid::from_raw(guard.pid()), Signal::SIGTERM).expect("SIGTERM");
    let mut guard = guard;
    let status = guard.0.wait().expect("wait");
    assert_eq!(status.code(), Some(137), "the command was SIGKILLed after grace: {status:?}");
}

#[test]
fn run_reports_a_command_that_ends_before_ready() {
    let port = free_port();
    let out = portwatch(&["run", "--port", &port.to_string(), "--timeout", "5s", "--", "sleep", "0.2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("before it was ready"));
    // A failing command takes its descendants with it and passes its status on.
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("bg.pid");
    let script = format!("setsid sleep 60 & echo $! > {}; exit 5", pidfile.display());
    let start = Instant::now();
    let out = portwatch(&["run", "--grace", "1s", "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(5));
    assert!(start.elapsed() < Duration::from_secs(30));
    let bg: i32 = std::fs::read_to_string(&pidfile).expect("pid").trim().parse().expect("pid");
    let _g = PidGuard(bg);
    assert!(!portwatch_tests::alive(bg), "the setsid sleep did not survive run");
}

#[test]
fn run_detach_ready_json_report() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("svc.pid");
    let pf = pidfile.to_str().expect("utf8");
    let p = port.to_string();
    // The command's own `--json` and `--log` stay its own, not run's.
    let script = format!(
        "import sys, http.server as h\nassert sys.argv[1:] == ['--json', '--log', 'x'], sys.argv\n\
         h.ThreadingHTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"
    );
    let out = portwatch(&[
        "run",
        "--detach-ready",
        "--json",
        "--pid-file",
        pf,
        "--port",
        &p,
        "--timeout",
        "10s",
        "--",
        "python3",
        "-c",
        &script,
        "--json",
        "--log",
        "x",
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let supervisor = v["supervisor_pid"].as_i64().expect("supervisor_pid") as i32;
    let _guard = PidGuard(supervisor);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["pid_file"], pf);
    assert_eq!(v["log"], dir.path().join("svc.log").to_str().expect("utf8"));
    assert!(v["elapsed_ms"].as_u64().is_some() && v.get("error").is_none(), "{v}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(portwatch(&["run", "--stop", pf]).status.code(), Some(0));

    // Not ready: exit 1 and the reason, still one JSON object.
    let out = portwatch(&["run", "--detach-ready", "--json", "--pid-file", pf, "--port", &p, "--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ready"], false);
    assert!(v["error"].as_str().is_some_and(|e| e.contains("not ready after 1s") && e.contains("no listener")), "{v}");
}
