//! `run --isolate-ports`: two jobs bind the same port number at once, each reaches
//! its own server, sees the port it asked for, and the rewriting ends with the run
//! (also when the run is SIGKILLed). Real processes, the real kernel hooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use portwatch_tests::{bin, free_port, portwatch, portwatch_unprivileged, require_root, wait_for, ChildGuard};

/// A job: an HTTP server and a UDP echo server on 127.0.0.1:PORT (and TCP and UDP
/// ones on [::1]:PORT), then clients of its own on the same port. It prints one `READY`
/// line of JSON with what it saw, and serves until the stop file exists.
const JOB: &str = r#"
import http.server, json, os, socket, sys, threading, time
port, marker, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("%s %d" % (marker, self.connection.getsockname()[1])).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port))
def echo():
    while True:
        d, a = u.recvfrom(100); u.sendto(marker.encode() + b" " + d, a)
threading.Thread(target=echo, daemon=True).start()
c = socket.create_connection(("127.0.0.1", port), timeout=5); c.sendall(b"GET / HTTP/1.0\r\n\r\n")
body = b"".join(iter(lambda: c.recv(4096), b"")).split(b"\r\n\r\n", 1)[1].decode()
peer = c.getpeername()[1]
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.settimeout(5)
q.sendto(b"ping", ("127.0.0.1", port)); d, a = q.recvfrom(100)
s6 = socket.socket(socket.AF_INET6); s6.bind(("::1", port)); s6.listen()
c6 = socket.create_connection(("::1", port), timeout=5); a6, _ = s6.accept()
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", port))
q6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); q6.settimeout(5); q6.sendto(b"six", ("::1", port))
d6, a6u = u6.recvfrom(100); u6.sendto(d6, a6u); _, f6 = q6.recvfrom(100)
v6 = [s6.getsockname()[1], c6.getpeername()[1], a6.getsockname()[1], u6.getsockname()[1], f6[1]]
print("READY " + json.dumps({"sockname": srv.socket.getsockname()[1], "peer": peer, "body": body, "udp": d.decode(), "udp_from": a[1], "v6": v6}), flush=True)
while not os.path.exists(stop):
    time.sleep(0.05)
"#;

/// A running `portwatch run` and what it said.
struct Job {
    run: ChildGuard,
    /// The job's `READY` line.
    seen: serde_json::Value,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line so far.
    log: Vec<String>,
}

impl Job {
    fn start(run_args: &[&str], job: &[&str]) -> Self {
        let mut child = Command::new(bin())
            .arg("run")
            .args(run_args)
            .arg("--")
            .args(job)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portwatch run");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let run = ChildGuard(child);
        let (tx, stderr) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        let (otx, orx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("READY ") {
                    let _ = otx.send(rest.to_string());
                }
            }
        });
        let mut j = Self { run, seen: serde_json::Value::Null, stderr, log: Vec::new() };
        match orx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => j.seen = serde_json::from_str(&line).unwrap(),
            Err(_) => {
                j.drain();
                panic!("the job did not get ready: {:#?}", j.log);
            }
        }
        j
    }

    fn drain(&mut self) {
        while let Ok(l) = self.stderr.try_recv() {
            self.log.push(l);
        }
    }

    /// Waits for a stderr line containing `what` (`n`-th occurrence) and returns it.
    fn said(&mut self, what: &str, n: usize) -> String {
        wait_for(&format!("'{what}' from portwatch run"), Duration::from_secs(30), || {
            self.drain();
            self.log.iter().filter(|l| l.contains(what)).nth(n - 1).cloned()
        })
    }

    /// The real port the run chose for `port`.
    fn real_port(&mut self, port: u16) -> u16 {
        let line = self.said(&format!("port {port} isolated"), 1);
        line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no real port in {line:?}"))
    }

    fn pid(&self) -> i32 {
        self.run.pid()
    }
}

fn job_cmd<'a>(port: &'a str, marker: &'a str, stop: &'a str) -> Vec<&'a str> {
    vec!["python3", "-u", "-c", JOB, port, marker, stop]
}

/// GET / from outside any job.
fn get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// This process's cgroup v2 directory (runs create theirs below it).
fn own_cgroup_dir() -> PathBuf {
    let root = portwatch_tests::cgroup2_root();
    let cg = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    Path::new(&root).join(path.trim_start_matches('/'))
}

fn pins_of(pid: i32) -> Vec<String> {
    let prefix = format!("portwatch-run-{pid}-");
    std::fs::read_dir("/sys/fs/bpf/portwatch/remap")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)).collect())
        .unwrap_or_default()
}

#[test]
fn two_jobs_bind_the_same_port_and_each_reaches_its_own() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (stop_a, stop_b) = (dir.path().join("stop-a"), dir.path().join("stop-b"));
    let (sa, sb) = (stop_a.to_str().unwrap(), stop_b.to_str().unwrap());
    let health = format!("http://127.0.0.1:{port}/");
    let mut a = Job::start(&["--isolate-ports", "-p", &p, "--health", &health, "--timeout", "30s"], &job_cmd(&p, "A", sa));
    let mut b = Job::start(&["--isolate-ports", "-p", &p, "--timeout", "30s"], &job_cmd(&p, "B", sb));
    let (ra, rb) = (a.real_port(port), b.real_port(port));
    assert!(ra != rb && ra != port && rb != port, "real ports {ra}, {rb} for {port}");

    // Inside each job: its own server, and the port it asked for everywhere.
    for (j, m) in [(&a, "A"), (&b, "B")] {
        let s = &j.seen;
        assert_eq!(s["body"], format!("{m} {port}"), "job {m} reached another server: {s}");
        assert_eq!(s["sockname"], port, "{s}");
        assert_eq!(s["peer"], port, "{s}");
        assert_eq!(s["udp"], format!("{m} ping"), "{s}");
        assert_eq!(s["udp_from"], port, "{s}");
        assert_eq!(s["v6"], serde_json::json!([port, port, port, port, port]), "{s}");
    }
    // The run's readiness and --health looked at the real port, and say both.
    a.said("ready after", 1);
    let ready = a.said(&format!("port {port} (isolated: real port {ra})"), 1);
    assert!(ready.contains("python3"), "{ready}");
    a.said(&format!("http://127.0.0.1:{port}/: ready"), 1);
    b.said(&format!("port {port} (isolated: real port {rb})"), 1);

    // Outside any job: nothing on the port itself; each real port is its job's.
    assert!(get(port).is_err(), "a process outside the jobs reached port {port}");
    assert_eq!(get(ra).unwrap(), format!("A {port}"));
    assert_eq!(get(rb).unwrap(), format!("B {port}"));
    assert_eq!(pins_of(a.pid()).len(), 1, "run A's remap is not pinned for nested runs");

    // B ends normally: its remap and pin go with it.
    std::fs::write(&stop_b, "").unwrap();
    let st = b.run.0.wait().unwrap();
    assert!(st.success(), "run B: {st:?}");
    assert!(pins_of(b.pid()).is_empty(), "run B's pin outlived it");
    std::net::TcpListener::bind(("127.0.0.1", rb)).expect("run B's real port is free again");

    // A is SIGKILLed: the kernel closes its links, the rewriting ends at once.
    let a_pid = a.pid();
    a.run.0.kill().unwrap();
    a.run.0.wait().unwrap();
    wait_for("run A's job to be gone", Duration::from_secs(10), || get(ra).is_err().then_some(()));
    let leftover = std::fs::read_dir(own_cgroup_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("portwatch-run-{a_pid}-")))
        .expect("the SIGKILLed run's cgroup is left behind");
    // A process in the dead run's cgroup binds the port itself now.
    let script = format!(
        "import socket\nopen({procs:?}, 'w').write('0')\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nc = socket.create_connection(('127.0.0.1', {port}))\nprint(s.getsockname()[1])\n",
        procs = leftover.join("cgroup.procs").to_str().unwrap()
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), p, "a bind in the dead run's cgroup was still rewritten");
    wait_for("the leftover cgroup to be removed", Duration::from_secs(5), || std::fs::remove_dir(&leftover).ok());
    std::net::TcpListener::bind(("127.0.0.1", ra)).expect("run A's real port is free again");
    // The dead run's pin is dropped by the next look at the remaps.
    let out = portwatch(&["who", &p]);
    assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
    assert!(pins_of(a_pid).is_empty(), "the SIGKILLed run's pin was not cleaned");
}

#[test]
fn a_run_inside_an_isolated_job_checks_the_real_port() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let health = format!("http://127.0.0.1:{port}/");
    let mut job = vec![bin(), "run", "-p", &p, "--health", &health, "--timeout", "30s", "--"];
    job.extend(job_cmd(&p, "N", stop.to_str().unwrap()));
    let mut outer = Job::start(&["--isolate-ports", "-p", &p, "--timeout", "30s"], &job);
    let real = outer.real_port(port);
    outer.said(&format!("port {port} isolated by the enclosing run: the job's binds and local connects use real port {real}"), 1);
    // Both the nested run and the outer one get ready, on the real port.
    outer.said("ready after", 2);
    assert_eq!(outer.seen["body"], format!("N {port}"));
    std::fs::write(&stop, "").unwrap();
    let st = outer.run.0.wait().unwrap();
    assert!(st.success(), "{st:?}: {:#?}", outer.log);
}

/// A port leased by one run (`--lease`) can still be a job's own port number in an
/// isolated run: the job's bind is rewritten before the root's lease programs see
/// it, so they see the real port, not the leased one.
#[test]
fn an_isolated_job_binds_a_port_number_another_run_leases() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (stop_l, stop_j) = (dir.path().join("stop-l"), dir.path().join("stop-j"));
    let leaser = format!(
        "import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY {{}}', flush=True)\nwhile not os.path.exists({stop:?}): time.sleep(0.05)\n",
        stop = stop_l.to_str().unwrap()
    );
    let mut lease = Job::start(&["--lease", "-p", &p, "--timeout", "30s"], &["python3", "-u", "-c", &leaser]);
    lease.said("leased to this run", 1);
    let mut job = Job::start(&["--isolate-ports", "-p", &p, "--timeout", "30s"], &job_cmd(&p, "I", stop_j.to_str().unwrap()));
    assert_eq!(job.seen["body"], format!("I {port}"), "{}", job.seen);
    job.said("ready after", 1);
    lease.drain();
    assert!(!lease.log.iter().any(|l| l.contains("refused")), "the lease refused the isolated job: {:#?}", lease.log);
    for (stop, j) in [(&stop_j, &mut job), (&stop_l, &mut lease)] {
        std::fs::write(stop, "").unwrap();
        let st = j.run.0.wait().unwrap();
        assert!(st.success(), "{st:?}: {:#?}", j.log);
    }
}

/// The CI case: two pytest sessions at once, each starting gunicorn on the same
/// port through the pytest plugin (examples/pytest), each under its own isolated
/// run. Both pass; without isolation the second would have freed (killed) the
/// first one's gunicorn.
#[test]
fn two_pytest_suites_with_gunicorn_on_one_port_pass_in_parallel() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pytest");
    let suites: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let (p, example) = (p.clone(), example.clone());
            thread::spawn(move || {
                let out = Command::new(bin())
                    .args(["run", "--isolate-ports", "-p", &p, "--timeout", "120s", "--", "python3", "-m", "pytest", "-q"])
                    .arg(&example)
                    .env("PORTWATCH", bin())
                    .env("APP_PORT", &p)
                    .output()
                    .expect(
                        "portwatch run (python3 with pytest, flask, gunicorn and the plugin on PATH: cargo xtask test puts its venv there)",
                    );
                (name, out)
            })
        })
        .collect();
    for s in suites {
        let (name, out) = s.join().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "suite {name}: {:?}\n{stdout}\n{stderr}", out.status);
        assert!(stdout.contains("2 passed"), "suite {name}: {stdout}");
        assert!(stderr.contains(&format!("port {port} isolated: ")), "suite {name}: {stderr}");
    }
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} is left held");
}

#[test]
fn isolate_ports_needs_ports_and_root() {
    let out = portwatch(&["run", "--isolate-ports", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = portwatch_unprivileged(&["run", "--isolate-ports", "-p", "5050", "--", "true"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
