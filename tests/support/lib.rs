//! Helpers for the integration tests: real processes, real sockets, the real binary.
//! Every spawned process is owned by a guard that kills it when the test ends, even
//! on failure; ports are picked by the tests; nothing else is touched.
// Test helpers fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    os::unix::process::CommandExt,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// The `portwatch` binary of this build profile (`cargo xtask test` builds it first),
/// or `PORTWATCH_BIN`.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let path = std::env::var("PORTWATCH_BIN").unwrap_or_else(|_| format!("{}/portwatch", env!("PORTWATCH_PROFILE_DIR")));
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: build it first (cargo build --release -p portwatch; cargo xtask test does)"
        );
        path
    })
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
}

/// The kernel tests need root; failing loudly beats passing without testing.
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests load eBPF programs and must run as root (cargo xtask test does, in CI)");
}

/// A port that is free right now (TCP on 127.0.0.1 and ::1, UDP on 127.0.0.1), taken
/// below the kernel's ephemeral range so no concurrent outgoing connection can grab
/// it between the check and the test's own bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 1000) as u16 * 12;
    loop {
        let port = 20000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12000;
        // std's TcpListener sets SO_REUSEADDR, which binds over a connection in
        // TIME_WAIT on the port; servers in the tests do not all set it (a python
        // listener got EADDRINUSE on a port another test binary had served), so
        // the port must also bind without it, on every address.
        let ok = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && portwatch::sys::bindable::bindable(port);
        if ok {
            return port;
        }
    }
}

/// Kills (SIGKILL) and reaps its process on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The children of `pid` (its main thread's list).
pub fn children_of(pid: i32) -> std::collections::BTreeSet<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills (SIGKILL) a process the test caused to exist but did not spawn directly
/// (a forked worker, an orphan) when dropped.
pub struct PidGuard(pub i32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs `portwatch ARGS` to completion.
pub fn portwatch(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run portwatch")
}

/// Runs `portwatch ARGS` as an unprivileged user (nobody).
pub fn portwatch_unprivileged(args: &[&str]) -> Output {
    Command::new(bin()).args(args).uid(65534).gid(65534).output().expect("run portwatch as nobody")
}

/// Starts a python3 script; waits until it prints a line starting with `READY`, and
/// returns the guard and the rest of that line.
pub fn spawn_python(script: &str) -> (ChildGuard, String) {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", script]);
    spawn_ready(cmd)
}

/// [`spawn_python`], the script started inside the test's cgroup `cg`.
pub fn spawn_python_in(cg: &TestCgroup, script: &str) -> (ChildGuard, String) {
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", script]);
    cg.enter(&mut cmd);
    spawn_ready(cmd)
}

/// Starts `cmd` (its stdout piped); waits until it prints a line starting with
/// `READY`, and returns the guard and the rest of that line.
pub fn spawn_ready(mut cmd: Command) -> (ChildGuard, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let line = read_line_matching(stdout, "READY", Duration::from_secs(20));
    (guard, line.trim_start_matches("READY").trim().to_string())
}

/// Where cgroup v2 is mounted (the shortest mount point if several).
pub fn cgroup2_root() -> std::path::PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("cgroup2 ")))
        .filter_map(|l| l.split_whitespace().nth(4).map(std::path::PathBuf::from))
        .min_by_key(|p| p.as_os_str().len())
        .expect("a cgroup v2 mount")
}

/// A cgroup of the test's own under the cgroup v2 root; what is in it is killed
/// and the cgroup removed when dropped.
pub struct TestCgroup(pub std::path::PathBuf);

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let dir = cgroup2_root().join(format!("pw-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test's cgroup");
        Self(dir)
    }

    /// Makes `cmd`'s child move itself into the cgroup before it execs.
    pub fn enter(&self, cmd: &mut Command) {
        let procs = self.0.join("cgroup.procs");
        // SAFETY: only a write to a file between fork and exec.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, "0"));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A network namespace the test creates (`ip netns add`), deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn create(tag: &str) -> Self {
        let name = format!("pw{tag}{}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns").success());
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn read_line_matching<R: Read + Send + 'static>(r: R, prefix: &'static str, timeout: Duration) -> String {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if line.starts_with(prefix) {
                let _ = tx.send(line);
                break;
            }
        }
    });
    rx.recv_timeout(timeout).unwrap_or_else(|_| panic!("no '{prefix}' line within {timeout:?}"))
}

/// Runs a python3 script to completion and returns its stdout.
pub fn run_python(script: &str) -> String {
    let out = Command::new("python3").args(["-c", script]).output().expect("run python3");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `portwatch watch --json`.
pub struct Watch {
    child: ChildGuard,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

impl Watch {
    /// Starts the watch and returns once its hooks are attached.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_env(extra, &[])
    }

    /// [`Watch::start`] with extra environment variables.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin())
            .arg("watch")
            .arg("--json")
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portwatch watch");
        let mut out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("watching") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let w = Self { child: ChildGuard(child), stdout, stderr };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let (_, err) = w.stop();
            panic!("portwatch watch did not start: {err}");
        }
        w
    }

    /// Stops it with SIGINT (as Ctrl-C would) and returns its JSON lines and stderr.
    pub fn stop(mut self) -> (Vec<serde_json::Value>, String) {
        // Let the last events reach the ring buffer and the failure window pass.
        thread::sleep(Duration::from_millis(300));
        let pid = nix::unistd::Pid::from_raw(self.child.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.0.try_wait().ok().flatten();
        let out = std::mem::replace(&mut self.stdout, thread::spawn(String::new)).join().unwrap_or_default();
        let err = std::mem::replace(&mut self.stderr, thread::spawn(String::new)).join().unwrap_or_default();
        assert!(status.is_some_and(|s| s.success()), "watch did not exit cleanly on SIGINT: {status:?}\n{err}");
        let events = out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect();
        (events, err)
    }
}

/// Events of `pid` on `port` of the given kind.
pub fn events_of<'a>(events: &'a [serde_json::Value], pid: i32, port: u16, kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind && e["port"] == port && e["pid"] == pid).collect()
}

/// Starts `portwatch ARGS` (an agent) with its stderr drained by a thread, and waits
/// until a log line contains `ready`. Returns the guard and every later log line.
pub fn start_logged(args: &[&str], ready: &'static str) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut child = Command::new(bin()).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn portwatch");
    let err = child.stderr.take().expect("stderr");
    let guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains(ready) {
                let _ = ready_tx.send(());
            }
            let _ = tx.send(line);
        }
    });
    assert!(ready_rx.recv_timeout(Duration::from_secs(30)).is_ok(), "no '{ready}' in the log within 30s");
    (guard, rx)
}

/// Sends one request line to an agent's control socket and returns its JSON reply.
pub fn control(socket: &std::path::Path, request: &str) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    s.write_all(format!("{request}\n").as_bytes()).expect("send request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}
