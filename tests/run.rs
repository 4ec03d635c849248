//! `run` and `wait` against real leftovers: never ready for someone else's listener,
//! never hanging on a leaked daemon, always naming who is in the way (issue 12).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{alive, bin, free_port, portwatch, require_root, spawn_python, ChildGuard, PidGuard};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A WSGI app for gunicorn, in a temp dir.
fn gunicorn_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.py"),
        "import os\ndef app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'new' if os.environ.get('NEW') else b'ok']\n",
    )
    .expect("app");
    dir
}

/// Starts a gunicorn master with two workers on `port` (in `dir`); returns its guard
/// once it answers.
fn gunicorn(dir: &std::path::Path, port: u16) -> ChildGuard {
    let child = Command::new("gunicorn")
        .args(["-w", "2", "-b", &format!("127.0.0.1:{port}"), "app:app"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gunicorn (cargo xtask test puts it on PATH)");
    let g = ChildGuard(child);
    let start = Instant::now();
    // Serving, and both workers forked (one answers before the other exists: a
    // tree stopped then would leave the second serving).
    while http_get(port, "/").is_none() || portwatch_tests::children_of(g.pid()).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "gunicorn did not start its two workers");
        std::thread::sleep(Duration::from_millis(50));
    }
    g
}

/// SIGSTOPs a process and its children: the seed's wedged leftover.
fn stop_tree(pid: i32) -> Vec<PidGuard> {
    let kids: Vec<i32> = portwatch_tests::children_of(pid).into_iter().collect();
    for &p in kids.iter().chain(std::iter::once(&pid)) {
        kill(Pid::from_raw(p), Signal::SIGSTOP).expect("SIGSTOP");
    }
    kids.into_iter().map(PidGuard).collect()
}

/// The body of GET `path`, or `None` when nothing answers within 2 s.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// The child's output, killing it if it runs longer than `limit`.
fn output_within(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            panic!("still running after {limit:?}");
        }
    }
}

#[test]
fn a_stopped_leftover_gunicorn_fails_the_run_before_the_command_starts() {
    require_root();
    let app = gunicorn_app();
    let port = free_port();
    let old = gunicorn(app.path(), port);
    let _workers = stop_tree(old.pid());
    let marker = app.path().join("started");
    let cmd = format!("touch {}; exec gunicorn -b 127.0.0.1:{port} app:app", marker.display());
    let t = Instant::now();
    let out = Command::new(bin())
        .args(["run", "-p", &port.to_string(), "--timeout", "20s", "--", "sh", "-c", &cmd])
        .current_dir(app.path())
        .output()
        .expect("run");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "failed at once, not at the timeout: {err}");
    assert!(!marker.exists(), "the command was not started");
    let line =
        err.lines().find(|l| l.contains(&format!("pid {} gunicorn", old.pid()))).unwrap_or_else(|| panic!("names the master: {err}"));
    assert!(line.contains("(T stopped)") && line.contains("up ") && line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(err.contains("--free"), "says how to go on: {err}");
    assert!(alive(old.pid()), "nothing was signalled without --free");

    // Detached, the same: not ready, exit 1, the holder named, nothing started.
    let pf = app.path().join("svc.pid");
    let out = Command::new(bin())
        .args(["run", "--detach-ready", "--json", "--pid-file", pf.to_str().unwrap(), "-p", &port.to_string(), "--", "sh", "-c", &cmd])
        .current_dir(app.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ready"], false);
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains(&format!("port {port} already held by pid {}", old.pid())) && e.contains("T stopped"), "{v}");
    assert!(!marker.exists(), "the command was not started");
}

#[test]
fn free_clears_a_stopped_leftover_and_the_new_server_is_the_one_ready() {
    require_root();
    let app = gunicorn_app();
    let port = free_port();
    let old = gunicorn(app.path(), port);
    let workers = stop_tree(old.pid());
    let worker_pids: Vec<i32> = workers.iter().map(|w| w.0).collect();
    // Foreground: freed, then ready through the new server's own listener.
    let mut run = Command::new(bin())
        .args(["run", "--free", "--grace", "1s", "-p", &port.to_string(), "--health", &format!("http://127.0.0.1:{port}/health")])
        .args(["--timeout", "30s", "--", "gunicorn", "-b", &format!("127.0.0.1:{port}"), "--env", "NEW=1", "app:app"])
        .current_dir(app.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let err = run.stderr.take().expect("stderr");
    let run = ChildGuard(run);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("ready after")) {
        seen.push(rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no readiness: {seen:#?}")));
    }
    let all = seen.join("\n");
    assert!(all.contains(&format!("--free: port {port}: freed")) && all.contains(&format!("{} (gunicorn, T)", old.pid())), "{all}");
    assert!(!alive(old.pid()) && worker_pids.iter().all(|&p| !alive(p)), "the leftover and its workers are gone");
    assert!(http_get(port, "/").is_some_and(|b| b.ends_with("new")), "the new server answers");
    kill(Pid::from_raw(run.pid()), Signal::SIGTERM).expect("SIGTERM");
    let mut run = run;
    let t = Instant::now();
    while run.0.try_wait().expect("try_wait").is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "run ended after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(http_get(port, "/").is_none(), "the run ended its server");

    // Detached: the same, then stopped.
    let old = gunicorn(app.path(), port);
    let _w = stop_tree(old.pid());
    let pf = app.path().join("svc.pid");
    let out = Command::new(bin())
        .args(["run", "--detach-ready", "--free", "--grace", "1s", "--pid-file", pf.to_str().unwrap(), "-p", &port.to_string()])
        .args(["--", "gunicorn", "-b", &format!("127.0.0.1:{port}"), "--env", "NEW=1", "app:app"])
        .current_dir(app.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!alive(old.pid()));
    assert!(http_get(port, "/").is_some_and(|b| b.ends_with("new")), "the new server answers");
    let out = portwatch(&["run", "--stop", pf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(http_get(port, "/").is_none(), "stopped");
    let out = portwatch(&["run", "--stop", pf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stopping a service that already ended is fine");
    assert!(stderr(&out).contains("nothing to stop"), "{}", stderr(&out));
}

#[test]
fn a_port_taken_by_an_outsider_while_starting_fails_at_once_naming_it() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let started = dir.path().join("started");
    let cmd = format!("touch {}; sleep 1; exec python3 -m http.server {port} --bind 127.0.0.1", started.display());
    let run = Command::new(bin())
        .args(["run", "-p", &port.to_string(), "--timeout", "30s", "--", "sh", "-c", &cmd])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    // The outsider binds after the run's check (the command has started) and
    // before the command's bind.
    let t0 = Instant::now();
    while !started.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (outsider, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let t = Instant::now();
    let out = output_within(run, Duration::from_secs(10));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "at once, not at the timeout: {err}");
    assert!(err.contains(&format!("port {port} is held by pid {} python3", outsider.pid())) && err.contains("did not start"), "{err}");
    assert!(alive(outsider.pid()), "the outsider is not the run's to end");
}

#[test]
fn a_leaked_daemon_ends_with_the_command_and_is_listed() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let pidfile = dir.path().join("leak.pid");
    // A test runner that leaks a listening daemon in its own session and exits.
    let daemon = format!(
        "import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nopen('{}', 'w').write(str(os.getpid()))\ntime.sleep(300)",
        pidfile.display()
    );
    for (code, exit) in [(0, "exit 0"), (3, "exit 3")] {
        let _ = std::fs::remove_file(&pidfile);
        let script = format!("setsid python3 -c \"{daemon}\" & while [ ! -s {} ]; do sleep 0.05; done; {exit}", pidfile.display());
        let t = Instant::now();
        let out = Command::new(bin()).args(["run", "--grace", "1s", "--", "sh", "-c", &script]).output().expect("run");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "the command's status: {err}");
        assert!(t.elapsed() < Duration::from_secs(10), "did not hang on the leak: {err}");
        let pid: i32 = std::fs::read_to_string(&pidfile).expect("pid").trim().parse().expect("pid");
        let _g = PidGuard(pid);
        assert!(!alive(pid), "the leaked daemon was ended");
        let line = err.lines().find(|l| l.contains(&format!("pid {pid} python3"))).unwrap_or_else(|| panic!("listed: {err}"));
        assert!(line.contains(&format!("port {port}/tcp")) && line.contains("SIGTERM"), "{line}");
        assert!(err.contains(&format!("the command exited with status {code}")), "{err}");
    }
}

#[test]
fn forking_hands_over_to_a_daemonizing_gunicorn() {
    require_root();
    let app = gunicorn_app();
    let port = free_port();
    let pf = app.path().join("svc.pid");
    let out = Command::new(bin())
        .args(["run", "--forking", "--detach-ready", "--pid-file", pf.to_str().unwrap(), "-p", &port.to_string()])
        .args(["--health", &format!("http://127.0.0.1:{port}/"), "--", "gunicorn", "--daemon", "-w", "2"])
        .args(["-b", &format!("127.0.0.1:{port}"), "app:app"])
        .current_dir(app.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sup: i32 = std::fs::read_to_string(&pf).expect("pid file").trim().parse().expect("pid");
    let who: serde_json::Value = serde_json::from_slice(&portwatch(&["who", "--json", &port.to_string()]).stdout).expect("json");
    let pids: Vec<i64> =
        who.as_array().unwrap().iter().flat_map(|s| s["holders"].as_array().unwrap().iter().map(|h| h["pid"].as_i64().unwrap())).collect();
    assert!(!pids.is_empty());
    let guards: Vec<PidGuard> = pids.iter().map(|&p| PidGuard(p as i32)).collect();
    for s in who.as_array().unwrap() {
        for h in s["holders"].as_array().unwrap() {
            let cg = h["cgroup"].as_str().unwrap_or_default();
            assert!(cg.contains(&format!("portwatch-run-{sup}-")), "the daemon is in the run's cgroup: {cg}");
        }
    }
    let out = portwatch(&["run", "--stop", pf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(guards.iter().all(|g| !alive(g.0)), "every gunicorn process ended");
    assert_eq!(portwatch(&["check", "-q", &port.to_string()]).status.code(), Some(0), "the port is free");
    let log = std::fs::read_to_string(app.path().join("svc.log")).unwrap_or_default();
    assert!(log.contains("the launcher exited 0") && log.contains("ending"), "{log}");
}

#[test]
fn a_killed_run_leaves_a_cgroup_that_cleanup_ends() {
    require_root();
    let port = free_port();
    let daemon = format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(300)"
    );
    let mut run = Command::new(bin())
        .args(["run", "--", "sh", "-c", &format!("setsid python3 -c \"{daemon}\"; sleep 300")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run");
    let mut out = BufReader::new(run.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("READY");
    assert!(line.starts_with("READY"), "{line}");
    let run_pid = run.id() as i32;
    let run = ChildGuard(run);
    let who: serde_json::Value = serde_json::from_slice(&portwatch(&["who", "--json", &port.to_string()]).stdout).expect("json");
    let holder = who[0]["holders"][0]["pid"].as_i64().expect("holder") as i32;
    let _g = PidGuard(holder);
    kill(Pid::from_raw(run_pid), Signal::SIGKILL).expect("SIGKILL run");
    drop(run);
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(holder), "the daemon outlived the killed run");
    let out = portwatch(&["cleanup", "--runs", "--grace", "1s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("portwatch-run-{run_pid}-")) && text.contains(&format!("pid {holder} python3")), "{text}");
    assert!(text.contains(&format!("port {port}/tcp")) && text.contains("SIGTERM"), "{text}");
    assert!(!alive(holder), "cleanup ended it");
    let again = portwatch(&["cleanup", "--runs"]);
    assert!(!String::from_utf8_lossy(&again.stdout).contains(&format!("portwatch-run-{run_pid}-")), "and removed the cgroup");
}

#[test]
fn http_wait_on_a_stopped_gunicorn_names_it() {
    require_root();
    let app = gunicorn_app();
    let port = free_port();
    let g = gunicorn(app.path(), port);
    let _w = stop_tree(g.pid());
    let out = portwatch(&["wait", "--timeout", "2s", &format!("http://127.0.0.1:{port}/health")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("queued but never accepted") && err.contains(&format!("pid {} gunicorn (T stopped)", g.pid())), "{err}");
    assert!(err.contains("not ready after 2s:"), "durations to the millisecond: {err}");
}

#[test]
fn a_backlog_of_one_gets_one_probe_connection() {
    let port = free_port();
    let (l, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(1)\nprint('READY', flush=True)\ntime.sleep(60)"
    ));
    for target in [format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}/")] {
        let out = portwatch(&["wait", "--timeout", "2500ms", "--interval", "50ms", &target]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("queued but never accepted"), "{target}: the diagnosis, not a connect timeout: {err}");
    }
    // Two waits, one connection each: the probes never filled the queue.
    let ss = Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().expect("ss");
    let recv_q: u32 = String::from_utf8_lossy(&ss.stdout).split_whitespace().nth(1).and_then(|q| q.parse().ok()).expect("Recv-Q");
    assert_eq!(recv_q, 2, "one queued connection per wait");
    drop(l);
}

#[test]
fn http_details_status_lists_redirects_and_the_host_header() {
    let port = free_port();
    let (srv, _) = spawn_python(&format!(
        r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get('Host') != '127.0.0.1:{port}':
            self.send_response(400)
        elif self.path == '/old':
            self.send_response(302); self.send_header('Location', '/new')
        elif self.path == '/made':
            self.send_response(201)
        else:
            self.send_response(200)
        self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(('127.0.0.1', {port}), H)
print('READY', flush=True)
s.serve_forever()
"#
    ));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    assert_eq!(portwatch(&["wait", "--timeout", "2s", &url("/health")]).status.code(), Some(0), "Host: carries the port");
    let out = portwatch(&["wait", "--timeout", "1s", &url("/old")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 302 redirect to /new"), "{}", stderr(&out));
    assert_eq!(portwatch(&["wait", "--timeout", "1s", "--expect-status", "200,302", &url("/old")]).status.code(), Some(0));
    assert_eq!(
        portwatch(&["wait", "--timeout", "1s", "--expect-status", "200", "--expect-status", "201", &url("/made")]).status.code(),
        Some(0)
    );
    let out = portwatch(&["wait", "--timeout", "1s", "--expect-status", "200", &url("/made")]);
    assert!(stderr(&out).contains("HTTP 201"), "{}", stderr(&out));
    // `wait TARGETS -- COMMAND`: the command's status.
    let out = portwatch(&["wait", "--timeout", "2s", &format!("localhost:{port}"), &url("/"), "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    drop(srv);
}

#[test]
fn bad_input_is_one_line_with_its_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "not a program\n").expect("write");
    let plain = plain.to_str().expect("utf8");
    let port = free_port().to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["wait", "localhost:abc"], 2, "not a number"),
        (vec!["wait", "::1:80"], 2, "HOST:PORT"),
        (vec!["wait", "--expect-status", "99", "5050"], 2, "HTTP status"),
        (vec!["run", "-p", &port], 2, "COMMAND"),
        (vec!["run", "--", "/nonexistent/portwatch-test-cmd"], 127, "command not found"),
        (vec!["run", "--", plain], 126, "not executable"),
        (vec!["wait", "--timeout", "1s", &port, "--", "/nonexistent/portwatch-test-cmd"], 1, "not ready"),
    ];
    for (args, code, needle) in cases {
        let out = Command::new(bin()).args(&args).current_dir(dir.path()).output().expect("portwatch");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.lines().count() <= 2, "{args:?}: short: {err}");
    }
    // Once ready, a missing command is 127 as in a shell.
    let (srv, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\nwhile True: s.accept()[0].close()"
    ));
    let out = portwatch(&["wait", "--timeout", "2s", &port, "--", "/nonexistent/portwatch-test-cmd"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    drop(srv);
}
