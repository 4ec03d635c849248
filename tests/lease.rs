//! Port leases (issue 16): a port leased to a run's cgroup refuses, in the kernel,
//! every bind from outside it (also while the service restarts and the port is
//! unbound), reports who tried, and ends with the run, also when the run is
//! SIGKILLed. Operators' leases are root-only to change, and a lease never locks
//! out `free`. Real processes, real sockets, the real cgroup hooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, UdpSocket},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{alive, bin, free_port, portwatch, portwatch_unprivileged, require_root, wait_for, ChildGuard, TestCgroup};

const EADDRINUSE: i32 = 98;
const EPERM: i32 = 1;

/// A service that binds 127.0.0.1:PORT, then closes it when FILE1 appears (a
/// restart) and binds again when FILE2 appears.
const RESTARTING: &str = r#"
import os, socket, sys, time
port, closed, again = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def serve():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(16); return s
s = serve(); print("SERVING", flush=True)
while not os.path.exists(closed): time.sleep(0.02)
s.close(); print("CLOSED", flush=True)
while not os.path.exists(again): time.sleep(0.02)
s = serve(); print("REBOUND", flush=True)
time.sleep(600)
"#;

/// What a bind from this test process (outside every lease) gets: Ok or the errno.
fn tcp_bind(addr: &str, port: u16) -> Result<(), i32> {
    let a: SocketAddr = format!("{addr}:{port}").parse().unwrap();
    TcpListener::bind(a).map(drop).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn udp_bind(addr: &str, port: u16) -> Result<(), i32> {
    let a: SocketAddr = format!("{addr}:{port}").parse().unwrap();
    UdpSocket::bind(a).map(drop).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// A `portwatch run` with its stdout and stderr lines on channels.
struct Run {
    guard: ChildGuard,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    err_seen: Vec<String>,
}

/// A server listening on 127.0.0.1:PORT (argv[1]), printing SERVING.
const SERVER: &str =
    "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',int(sys.argv[1]))); s.listen(); print('SERVING', flush=True); time.sleep(600)";

impl Run {
    /// `portwatch run --lease -p PORT` of [`SERVER`], once it serves and run says
    /// it is ready.
    fn leased_server(port: u16, env: &[(&str, &str)]) -> Self {
        let p = port.to_string();
        let mut run = Self::start(&["run", "--lease", "-p", &p, "--", "python3", "-u", "-c", SERVER, &p], env);
        run.out_line("SERVING");
        run.err_line("ready after");
        run
    }

    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run");
        let (out, err) = (lines(child.stdout.take().expect("stdout")), lines(child.stderr.take().expect("stderr")));
        Self { guard: ChildGuard(child), out, err, err_seen: Vec::new() }
    }

    fn pid(&self) -> i32 {
        self.guard.pid()
    }

    /// Waits for a stdout line equal to `want`.
    fn out_line(&self, want: &str) {
        loop {
            let l = self.out.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no '{want}' from the service"));
            if l == want {
                return;
            }
        }
    }

    /// Waits for a stderr line containing `want`; returns it.
    fn err_line(&mut self, want: &str) -> String {
        if let Some(l) = self.err_seen.iter().find(|l| l.contains(want)) {
            return l.clone();
        }
        loop {
            let l =
                self.err.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no '{want}' from run; saw {:?}", self.err_seen));
            self.err_seen.push(l.clone());
            if l.contains(want) {
                return l;
            }
        }
    }

    fn wait(mut self) -> i32 {
        wait_for("the run to end", Duration::from_secs(20), || self.guard.0.try_wait().unwrap()).code().unwrap_or(-1)
    }
}

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// What sweeps stale leases in these tests (`lease list` as root, `cleanup`, the
/// agent) runs under this lock, so a test that leaves its lease stale on purpose
/// sees its own sweep remove it (tests run in parallel).
static SWEEPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sweeping() -> std::sync::MutexGuard<'static, ()> {
    SWEEPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn leases(port: u16) -> Vec<serde_json::Value> {
    let _sweeps = sweeping();
    leases_unlocked(port)
}

/// [`leases`] for a test that holds [`SWEEPS`] already.
fn leases_unlocked(port: u16) -> Vec<serde_json::Value> {
    let o = portwatch(&["lease", "list", "--json", &port.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap()
}

fn holder_dirs() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf/portwatch/leases")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn a_leased_port_refuses_outsiders_even_while_the_service_restarts() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (closed, again) = (dir.path().join("closed"), dir.path().join("again"));
    let p = port.to_string();
    let mut run = Run::start(
        &["run", "--lease", "-p", &p, "--", "python3", "-u", "-c", RESTARTING, &p, closed.to_str().unwrap(), again.to_str().unwrap()],
        &[],
    );
    run.err_line(&format!("lease: port {port} leased to this run; binds from outside it fail with EADDRINUSE"));
    run.out_line("SERVING");
    run.err_line("ready after");

    // Every address and both protocols: the lease is on the port number.
    for addr in ["127.0.0.2", "0.0.0.0", "[::]", "[::1]"] {
        assert_eq!(tcp_bind(addr, port), Err(EADDRINUSE), "tcp {addr}");
    }
    assert_eq!(udp_bind("127.0.0.1", port), Err(EADDRINUSE), "udp");
    let me = std::process::id();
    let line = run.err_line("lease: refused pid");
    assert!(line.contains(&format!("lease: refused pid {me} (")) && line.ends_with("EADDRINUSE"), "{line}");

    // Another network namespace has ports of its own: the lease is not its business.
    let ns = portwatch_tests::Netns::create("lease");
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "python3",
            "-c",
            &format!("import socket; s=socket.socket(); s.bind(('0.0.0.0',{port})); print('BOUND')"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "BOUND", "{o:?}");
    drop(ns);

    // `who` and `lease list` show the lease, its holder and the last refusal.
    let who = String::from_utf8_lossy(&portwatch(&["who", &p]).stdout).into_owned();
    assert!(who.contains(&format!("lease: leased to run pid {}", run.pid())), "{who}");
    let l = leases(port);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["state"], "active");
    assert_eq!(l[0]["holder"]["kind"], "run");
    assert_eq!(l[0]["holder"]["pid"], run.pid());
    assert!(l[0]["refused"].as_u64().unwrap() >= 5, "{l:?}");
    assert_eq!(l[0]["last_refused"]["pid"], me);
    let cg = l[0]["cgroup"].as_str().unwrap();
    assert!(cg.contains(&format!("portwatch-run-{}-", run.pid())), "{cg}");

    // The service restarts: while nothing is bound, an outsider is still refused,
    // and the service itself binds again.
    std::fs::write(&closed, "").unwrap();
    run.out_line("CLOSED");
    assert_eq!(tcp_bind("127.0.0.1", port), Err(EADDRINUSE), "the gap of a restart");
    std::fs::write(&again, "").unwrap();
    run.out_line("REBOUND");

    // The run ends: the lease with it.
    kill(Pid::from_raw(run.pid()), Signal::SIGTERM).unwrap();
    let run_pid = run.pid();
    run.wait();
    assert_eq!(tcp_bind("127.0.0.1", port), Ok(()), "after the run");
    assert!(leases(port).is_empty());
    assert!(!holder_dirs().iter().any(|d| d.contains(&format!("portwatch-run-{run_pid}-"))), "{:?}", holder_dirs());
}

#[test]
fn a_sigkilled_runs_lease_ends_with_it_and_is_swept() {
    require_root();
    let port = free_port();
    let run = Run::leased_server(port, &[]);
    // 127.0.0.2 does not collide with the service's 127.0.0.1: only the lease refuses.
    assert_eq!(tcp_bind("127.0.0.2", port), Err(EADDRINUSE));
    let name = wait_for("the run's lease directory", Duration::from_secs(5), || {
        holder_dirs().into_iter().find(|d| d.starts_with(&format!("portwatch-run-{}-", run.pid())))
    });
    // No other test's sweep until this one has looked.
    let sweeps = sweeping();
    kill(Pid::from_raw(run.pid()), Signal::SIGKILL).unwrap();
    let _ = run.wait();
    // The kernel closed the run's links: not one more bind is refused.
    wait_for("the lease to stop", Duration::from_secs(5), || tcp_bind("127.0.0.2", port).ok());
    // Its pinned map stayed behind, stale: `lease list` removes it (and says so).
    let o = portwatch(&["lease", "list"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("removed stale lease {name}")), "{o:?}");
    assert!(!holder_dirs().contains(&name));
    assert!(leases_unlocked(port).is_empty());
    // What the killed run left (its service, in its cgroup) is for cleanup.
    let _ = portwatch(&["cleanup", "--runs"]);
    drop(sweeps);
}

/// `python3 -c SCRIPT` started inside the test's cgroup `cg`.
fn python_in(cg: &TestCgroup, script: &str) -> ChildGuard {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", script]).stdout(Stdio::piped());
    cg.enter(&mut cmd);
    ChildGuard(cmd.spawn().unwrap())
}

fn first_line(g: &mut ChildGuard) -> String {
    let mut l = String::new();
    BufReader::new(g.0.stdout.as_mut().unwrap()).read_line(&mut l).unwrap();
    l.trim().to_string()
}

#[test]
fn operators_lease_to_a_cgroup_and_only_root_changes_leases() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let cg = TestCgroup::new("op");
    let dir = cg.0.to_str().unwrap();

    // Not root: no lease is made or dropped, and `run --lease` says why.
    let o = portwatch_unprivileged(&["lease", "add", "-p", &p, "--cgroup", dir]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let o = portwatch_unprivileged(&["run", "--lease", "-p", &p, "--", "true"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert_eq!(tcp_bind("127.0.0.1", port), Ok(()));

    let o = portwatch(&["lease", "add", "-p", &p, "--cgroup", dir]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("leased port {port} (operator lease lease-")), "{o:?}");
    assert_eq!(tcp_bind("127.0.0.1", port), Err(EADDRINUSE));
    // Inside the cgroup the port binds as usual.
    let mut inside = python_in(
        &cg,
        &format!("import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); print('BOUND', flush=True); time.sleep(600)"),
    );
    assert_eq!(first_line(&mut inside), "BOUND");
    drop(inside);

    // One holder per port; a second lease on it is refused (exit 6).
    let o = portwatch(&["lease", "add", "-p", &p, "--cgroup", dir]);
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("port {port} is already leased to lease-")), "{o:?}");

    // The operator's lease outlives the command that made it, until root drops it.
    let o = portwatch_unprivileged(&["lease", "drop", "-p", &p]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("lease drop is root-only"), "{o:?}");
    assert_eq!(tcp_bind("127.0.0.1", port), Err(EADDRINUSE), "a refused drop leaves the lease");
    let o = portwatch(&["lease", "drop", "-p", &p]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(tcp_bind("127.0.0.1", port), Ok(()));
    assert!(leases(port).is_empty());
    let o = portwatch(&["lease", "drop", "-p", &p]);
    assert_eq!(o.status.code(), Some(1), "nothing left to drop: {o:?}");
}

#[test]
fn bad_lease_requests_are_one_line_errors() {
    require_root();
    let cg = TestCgroup::new("bad");
    let dir = cg.0.to_str().unwrap();
    for (args, code) in [
        (vec!["lease", "add", "-p", "0", "--cgroup", dir], 2),
        (vec!["lease", "add", "-p", "70000", "--cgroup", dir], 2),
        (vec!["lease", "add", "-p", "five", "--cgroup", dir], 2),
        (vec!["lease", "add", "-p", "5050"], 2),
        (vec!["lease", "add", "-p", "5050", "--cgroup", "/tmp"], 2),
        (vec!["lease", "add", "-p", "5050", "--pid", "999999999"], 2),
        (vec!["lease", "drop"], 2),
        (vec!["run", "--lease", "--", "true"], 2),
    ] {
        let o = portwatch(&args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // The cgroup v2 root would lease to everyone: refused as bad input.
    let root = cg.0.parent().unwrap().to_str().unwrap().to_string();
    let o = portwatch(&["lease", "add", "-p", "5050", "--cgroup", &root]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(leases(5050).iter().all(|l| l["cgroup"] != root.as_str()));
}

#[test]
fn a_lease_never_locks_out_free() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let run = Run::leased_server(port, &[]);
    // The service wedges (stopped): root frees the port the usual way.
    let service = portwatch_tests::children_of(run.pid()).into_iter().next().expect("the service");
    kill(Pid::from_raw(service), Signal::SIGSTOP).unwrap();
    let o = portwatch(&["free", "--force", "--grace", "1s", &p]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(!alive(service));
    // The command's end ends the run, and its lease: the port is everyone's again.
    run.wait();
    assert_eq!(tcp_bind("127.0.0.1", port), Ok(()));
    assert!(leases(port).is_empty());
}

#[test]
fn a_stale_operator_lease_on_a_removed_cgroup_is_swept() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let cg = TestCgroup::new("gone");
    let o = portwatch(&["lease", "add", "-p", &p, "--cgroup", cg.0.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // The cgroup is found by its id (opened by handle, or walked to).
    let l = leases(port);
    assert_eq!((l[0]["state"].as_str(), l[0]["cgroup"].as_str()), (Some("active"), cg.0.to_str()), "{l:?}");
    drop(cg);
    // No process can be in a removed cgroup: the lease would refuse everyone.
    assert_eq!(tcp_bind("127.0.0.1", port), Err(EADDRINUSE));
    let l = leases(port);
    assert!(l.is_empty() || l[0]["state"] == "stale", "{l:?}");
    let o = {
        let _sweeps = sweeping();
        portwatch(&["cleanup", "--runs"])
    };
    assert!(o.status.code().is_some_and(|c| c <= 1), "{o:?}");
    assert_eq!(tcp_bind("127.0.0.1", port), Ok(()), "swept");
    assert!(leases(port).is_empty());
}

#[test]
fn older_kernels_refuse_with_eperm() {
    require_root();
    // The build for kernels without bpf_set_retval, forced here: bind() fails with
    // EPERM, and the run says so.
    let port = free_port();
    let p = port.to_string();
    let mut run = Run::start(&["run", "--lease", "-p", &p, "--", "python3", "-u", "-c", SERVER, &p], &[("PORTWATCH_LEASE_EPERM", "1")]);
    run.err_line("binds from outside it fail with EPERM");
    run.out_line("SERVING");
    assert_eq!(tcp_bind("127.0.0.2", port), Err(EPERM));
    assert!(run.err_line("lease: refused pid").ends_with("EPERM"));
    kill(Pid::from_raw(run.pid()), Signal::SIGTERM).unwrap();
    run.wait();
    assert_eq!(tcp_bind("127.0.0.2", port), Ok(()));
}

#[test]
fn the_agent_records_who_a_lease_refused_and_the_timeline_marks_it() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let dbs = db.to_str().unwrap();
    // The agent sweeps stale leases every 5 s.
    let _sweeps = sweeping();
    let (agent, _log) =
        portwatch_tests::start_logged(&["agent", "--no-socket", "--interval", "200ms", "-p", &p, "--db", dbs], "agent started");
    let run = Run::leased_server(port, &[("GITHUB_RUN_ID", "9191"), ("GITHUB_JOB", "lease-smoke")]);
    // An outsider of its own, named, tries the leased port on another address.
    let mut outsider = Command::new("python3")
        .args(["-u", "-c", &format!("import socket,time\ntry:\n    socket.socket().bind(('127.0.0.2',{port})); print('BOUND', flush=True)\nexcept OSError as e:\n    print('ERRNO', e.errno, flush=True)\ntime.sleep(600)")])
        .stdout(Stdio::piped())
        .spawn()
        .map(ChildGuard)
        .unwrap();
    assert_eq!(first_line(&mut outsider), "ERRNO 98");
    let rows = wait_for("the refusal in the history", Duration::from_secs(10), || {
        let o = portwatch(&["history", "--json", "--db", dbs, &p]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).ok()?;
        rows.iter().any(|r| r["event"] == "lease_refused").then_some(rows)
    });
    let r = rows.iter().find(|r| r["event"] == "lease_refused").unwrap();
    assert_eq!(r["pid"], outsider.pid(), "{r:#}");
    assert_eq!(r["error"], "lease");
    let detail = r["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("refused by the lease of run pid {}", run.pid())), "{detail}");
    assert!(detail.contains("GITHUB_RUN_ID=9191"), "{detail}");
    kill(Pid::from_raw(run.pid()), Signal::SIGTERM).unwrap();
    run.wait();
    kill(Pid::from_raw(agent.pid()), Signal::SIGTERM).unwrap();
    let mut agent = agent;
    let _ = agent.0.wait();
    let html = dir.path().join("t.html");
    let o = portwatch(&["history", "--db", dbs, &p, "--html", html.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("class=\"mark lease_refused\"").count(), 1, "{page}");
}

#[test]
fn a_bind_flood_against_a_lease_prints_a_count_not_a_flood() {
    require_root();
    let port = free_port();
    let run = Run::leased_server(port, &[]);
    let t0 = std::time::Instant::now();
    for _ in 0..2000 {
        assert_eq!(tcp_bind("127.0.0.2", port), Err(EADDRINUSE));
    }
    let secs = t0.elapsed().as_secs();
    // Every refusal is accounted for, shown or counted, but at most 20 lines a
    // second are shown (however long the flood took: minutes under emulation).
    let mut lines: Vec<String> = run.err_seen.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let accounted = |lines: &[String]| -> (u64, u64) {
        let shown = lines.iter().filter(|l| l.contains("lease: refused pid")).count() as u64;
        let hidden: u64 = lines
            .iter()
            .filter(|l| l.contains("more binds refused in the last second (not shown)"))
            .filter_map(|l| l.split("lease: ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .sum();
        (shown, hidden)
    };
    while accounted(&lines).0 + accounted(&lines).1 < 2000 && std::time::Instant::now() < deadline {
        if let Ok(l) = run.err.recv_timeout(Duration::from_millis(500)) {
            lines.push(l);
        }
    }
    let (shown, hidden) = accounted(&lines);
    assert_eq!(shown + hidden, 2000, "{shown} shown + {hidden} counted");
    assert!(hidden > 0 && shown <= 20 * (secs + 2), "{shown} lines in {secs} s for 2000 refusals");
    kill(Pid::from_raw(run.pid()), Signal::SIGTERM).unwrap();
    run.wait();
}

#[test]
fn lease_hold_leases_to_a_cgroup_while_it_runs_and_not_after_a_kill() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let cg = TestCgroup::new("hold");
    let mut hold = Run::start(&["lease", "hold", "-p", &p, "--cgroup", cg.0.to_str().unwrap()], &[]);
    let line = hold.err_line("until this command ends; binds from outside it fail with EADDRINUSE");
    assert!(line.contains(&format!("port {port} leased to {}", cg.0.display())), "{line}");
    assert_eq!(tcp_bind("127.0.0.1", port), Err(EADDRINUSE));
    assert!(hold.err_line("lease: refused pid").contains(&format!("pid {} (", std::process::id())));
    let mut inside = python_in(
        &cg,
        &format!("import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); print('BOUND', flush=True); time.sleep(600)"),
    );
    assert_eq!(first_line(&mut inside), "BOUND");
    drop(inside);
    let l = leases(port);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["holder"]["pid"], hold.pid());
    assert!(l[0]["command"].as_str().unwrap_or("").contains("lease hold"), "{l:?}");
    // SIGKILL: the kernel closes the links; the stale map is swept.
    kill(Pid::from_raw(hold.pid()), Signal::SIGKILL).unwrap();
    let _ = hold.wait();
    assert_eq!(tcp_bind("127.0.0.1", port), Ok(()));
    drop({
        let _sweeps = sweeping();
        portwatch(&["lease", "list"])
    });
    assert!(leases(port).is_empty());
    // Not root: no.
    let o = portwatch_unprivileged(&["lease", "hold", "-p", &p, "--cgroup", cg.0.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
}
