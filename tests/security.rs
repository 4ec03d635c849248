//! portwatch runs as root and kills processes: each test here is an attack by an
//! unprivileged local user (`nobody`, uid 65534, with access to the agent's control
//! socket as members of its group have) or by a hostile process, and asserts what
//! must never happen: a signal the attacker's own kill(2) could not send, a process
//! named or shaped to fool portwatch, an agent exhausted or blinded, a forged line
//! in root's terminal. Every process and port is the test's own.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use portwatch_tests::{alive, bin, free_port, portwatch, require_root, spawn_python, start_logged, ChildGuard};

const NOBODY: u32 = 65534;

fn socket_path(name: &str) -> String {
    format!("/tmp/portwatch-security-{}-{name}.sock", std::process::id())
}

/// An agent on `ports` whose control socket nobody may use (as the socket's group may).
fn agent(ports: &str, socket: &str, extra: &[&str]) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    let mut args =
        vec!["agent", "--log-json", "--no-history", "--interval", "200ms", "--socket", socket, "--socket-mode", "0666", "-p", ports];
    args.extend_from_slice(extra);
    start_logged(&args, "control socket ready")
}

/// `portwatch ARGS` as nobody, through the agent at `socket`.
fn as_nobody(socket: &str, args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("PORTWATCH_SOCKET", socket).uid(NOBODY).gid(NOBODY).output().expect("portwatch as nobody")
}

/// A python3 script run as nobody; waits for its READY line.
fn spawn_python_as_nobody(script: &str) -> ChildGuard {
    let mut child = Command::new("python3")
        .args(["-u", "-c", script])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 as nobody");
    let out = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    assert!(BufReader::new(out).lines().map_while(Result::ok).any(|l| l.starts_with("READY")), "no READY from nobody's python");
    guard
}

fn listener_script(addr: &str, port: u16) -> String {
    format!("import socket, time\ns = socket.socket(socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET)\ns.bind(('{addr}', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(120)\n")
}

/// One raw request line on the control socket and its reply line.
fn request(socket: &str, line: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(line).expect("write");
    let mut reply = String::new();
    let _ = BufReader::new(s).read_line(&mut reply);
    reply
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// (1) A root service keeps rebinding a port while nobody asks the agent to free it,
/// as fast as it can: the plan is built once and authorized for nobody, so the root
/// service is never signalled, whatever the timing.
#[test]
fn a_root_service_rebinding_its_port_is_never_signalled_for_nobody() {
    require_root();
    let port = free_port();
    let socket = socket_path("rebind");
    let (_agent, _log) = agent(&port.to_string(), &socket, &[]);
    let marks = tempfile::NamedTempFile::new().expect("marks");
    let (root_service, _) = spawn_python(&format!(
        r#"
import signal, socket, time
def hit(sig, frame):
    open({marks:?}, "a").write("signal %d\n" % sig)
signal.signal(signal.SIGTERM, hit)
signal.signal(signal.SIGCONT, hit)
print("READY", flush=True)
while True:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", {port})); s.listen()
    except OSError:
        pass
    time.sleep(0.003)
    s.close()
"#,
        marks = marks.path().display().to_string()
    ));
    // nobody's attack: free --force over and over for 4 seconds, straight at the socket.
    let attack = format!(
        r#"
import socket, time
end = time.time() + 4
n = 0
while time.time() < end:
    c = socket.socket(socket.AF_UNIX); c.connect({socket:?})
    c.sendall(b'{{"cmd":"free","ports":[{port}],"force":true,"grace_ms":50}}\n')
    c.makefile().readline(); c.close(); n += 1
print("READY", n, flush=True)
"#
    );
    let out = Command::new("python3").args(["-c", &attack]).uid(NOBODY).gid(NOBODY).output().expect("attack");
    let text = String::from_utf8_lossy(&out.stdout);
    let n: u32 = text.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(n > 20, "the attack ran: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(alive(root_service.pid()), "the root service was killed");
    assert_eq!(std::fs::read_to_string(marks.path()).unwrap_or_default(), "", "the root service was signalled");
    let _ = std::fs::remove_file(&socket);
}

/// (2) A process with real (and saved) uid 0 and effective uid nobody: /proc shows
/// it as nobody's, but nobody's kill(2) gets EPERM, so portwatch refuses too.
#[test]
fn credentials_are_judged_as_kill_judges_them() {
    require_root();
    let port = free_port();
    let socket = socket_path("creds");
    let (_agent, _log) = agent(&port.to_string(), &socket, &[]);
    // Real and saved uid 0, effective uid nobody (imports first: nobody cannot read
    // root's interpreter directories).
    let script = format!(
        "import os, socket, time\nos.setresuid(0, {NOBODY}, 0)\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(120)\n"
    );
    let mut child = Command::new("python3").args(["-u", "-c", &script]).stdout(Stdio::piped()).spawn().expect("python3");
    let out = child.stdout.take().expect("stdout");
    let target = ChildGuard(child);
    assert!(BufReader::new(out).lines().map_while(Result::ok).any(|l| l.starts_with("READY")));
    let status = std::fs::read_to_string(format!("/proc/{}/status", target.pid())).expect("status");
    assert!(status.contains(&format!("Uid:\t0\t{NOBODY}\t0")), "the target's uids: {status}");
    let out = as_nobody(&socket, &["free", "--force", "--grace", "1s", &port.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("kill(2)") && err.contains("uid 0"), "{err}");
    assert!(alive(target.pid()));
    let _ = std::fs::remove_file(&socket);
}

/// (3) nobody asks the agent to free a port its own parent holds: the agent applies
/// the caller's ancestry (from SO_PEERCRED), not its own.
#[test]
fn the_callers_own_tree_is_protected() {
    require_root();
    let port = free_port();
    let socket = socket_path("tree");
    let (_agent, _log) = agent(&port.to_string(), &socket, &[]);
    let script = format!(
        r#"
import os, socket, subprocess
s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
r = subprocess.run([{bin:?}, "free", "--force", "--grace", "1s", "{port}"], capture_output=True, text=True, env={{"PORTWATCH_SOCKET": {socket:?}}})
print("CODE", r.returncode)
print("OUT", r.stdout.strip(), r.stderr.strip())
"#,
        bin = bin()
    );
    let out = Command::new("python3").args(["-c", &script]).uid(NOBODY).gid(NOBODY).output().expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the parent survived to report: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("CODE 6") && text.contains("ancestor of the caller"), "{text}");
    let _ = std::fs::remove_file(&socket);
}

/// (4) A health probe failing on 127.0.0.1:P reaps only the listener it reached,
/// never another user's healthy listener on [::1]:P.
#[test]
fn a_probe_condemns_only_the_listener_it_reached() {
    require_root();
    let port = free_port();
    let healthy = spawn_python_as_nobody(&format!(
        r#"
import http.server, socket, socketserver
class S(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = S(("::1", {port}), H)
print("READY", flush=True)
srv.serve_forever()
"#
    ));
    // Root's listener on 127.0.0.1 answers HTTP with 503.
    let (broken, _) = spawn_python(&format!(
        r#"
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503); self.end_headers()
    def log_message(self, *a): pass
srv = socketserver.ThreadingTCPServer(("127.0.0.1", {port}), H)
print("READY", flush=True)
srv.serve_forever()
"#
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, format!("[[probe]]\nport = {port}\nhttp = \"http://127.0.0.1:{port}/\"\nfailures = 2\ntimeout = \"1s\"\n"))
        .expect("config");
    let (agent, _log) = start_logged(
        &[
            "agent",
            "--reap",
            "--no-history",
            "--no-socket",
            "--stall",
            "1s",
            "--grace",
            "1s",
            "--interval",
            "200ms",
            "-p",
            &port.to_string(),
            "--config",
            cfg.to_str().expect("utf8"),
        ],
        "agent started",
    );
    let start = Instant::now();
    while alive(broken.pid()) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(broken.pid()), "the listener the probe reached was reaped");
    std::thread::sleep(Duration::from_secs(3));
    assert!(alive(healthy.pid()), "the healthy [::1] listener of another user was reaped on 127.0.0.1's probe");
    drop(agent);
}

/// (5) Kernel threads by the kernel's flag: in a pid namespace, pid 2 and its
/// children are ordinary processes and can be freed.
#[test]
fn pid_2_of_a_pid_namespace_is_not_a_kernel_thread() {
    require_root();
    let port = free_port();
    let script = format!(
        r#"
import os, socket, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('up', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE)
child.stdout.readline()
assert child.pid == 2, child.pid
r = subprocess.run([{bin:?}, "free", "--force", "--grace", "1s", "{port}"], capture_output=True, text=True)
print("CODE", r.returncode, r.stdout.strip(), r.stderr.strip())
print("ALIVE", child.poll() is None)
"#,
        bin = bin()
    );
    // The interpreter itself (a launcher script, e.g. pyenv's, would fork first).
    let python =
        String::from_utf8(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3").stdout)
            .expect("utf8");
    let out = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", python.trim(), "-c", &script]).output().expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("CODE 0") && text.contains("ALIVE False"), "{text}");
}

/// (6) Every signal sent for a client of the control socket is a history row that
/// names the client (uid and pid).
#[test]
fn signals_sent_for_a_client_are_recorded_with_the_client() {
    require_root();
    let port = free_port();
    let socket = socket_path("record");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    let (agent, _log) = start_logged(
        &[
            "agent",
            "--log-json",
            "--db",
            db.to_str().expect("utf8"),
            "--interval",
            "200ms",
            "--socket",
            &socket,
            "--socket-mode",
            "0666",
            "-p",
            &port.to_string(),
        ],
        "control socket ready",
    );
    let own = spawn_python_as_nobody(&listener_script("127.0.0.1", port));
    let out = as_nobody(&socket, &["free", "--force", "--grace", "1s", &port.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!alive(own.pid()));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid()), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(agent.pid()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = portwatch(&["history", &port.to_string(), "--json", "--db", db.to_str().expect("utf8")]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let signals: Vec<&serde_json::Value> = rows.as_array().expect("rows").iter().filter(|r| r["event"] == "signal").collect();
    assert!(!signals.is_empty(), "{rows:#}");
    for s in signals {
        assert_eq!(s["pid"], own.pid());
        assert!(s["detail"].as_str().unwrap_or("").contains(&format!("asked by uid {NOBODY} pid")), "{s}");
    }
}

/// (7a) A listener held by a thread whose main thread has exited: found, and freed.
#[test]
fn a_listener_held_by_a_thread_of_an_exited_main_thread_is_found_and_freed() {
    require_root();
    let port = free_port();
    let (holder, _) = spawn_python(&format!(
        r#"
import ctypes, socket, threading, time
def serve():
    s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
    print("READY", flush=True)
    time.sleep(120)
threading.Thread(target=serve).start()
time.sleep(0.5)
ctypes.CDLL(None).syscall(60, 0)  # exit(2): only the main thread ends
"#
    ));
    std::thread::sleep(Duration::from_millis(800));
    let out = portwatch(&["who", "--json", &port.to_string()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["holders"][0]["pid"], holder.pid(), "{v:#}");
    let out = portwatch(&["free", "--force", "--grace", "1s", &port.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// (7b) A socket in flight over SCM_RIGHTS has no holder: the refusal says so.
#[test]
fn a_socket_in_flight_says_why_nobody_holds_it() {
    require_root();
    let port = free_port();
    let (_sender, _) = spawn_python(&format!(
        r#"
import socket, time
a, b = socket.socketpair()
s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
socket.send_fds(a, [b"x"], [s.fileno()])
s.close()
print("READY", flush=True)
time.sleep(120)
"#
    ));
    let out = portwatch(&["free", "--force", "--grace", "1s", &port.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{text}");
    assert!(text.contains("SCM_RIGHTS"), "{text}");
}

/// (8) `check` says free only when a server could bind: a connected socket bound to
/// the port holds it; TIME_WAIT is free for SO_REUSEADDR servers, held for --strict.
#[test]
fn check_is_free_when_a_server_can_bind() {
    require_root();
    let (port, server_port) = (free_port(), free_port());
    let (client, _) = spawn_python(&format!(
        r#"
import socket, time
l = socket.socket(); l.bind(("127.0.0.1", {server_port})); l.listen()
c = socket.socket(); c.bind(("127.0.0.1", {port})); c.connect(("127.0.0.1", {server_port}))
print("READY", flush=True)
time.sleep(120)
"#
    ));
    let out = portwatch(&["check", "--json", &port.to_string()]);
    assert_eq!(out.status.code(), Some(1), "a connected socket bound to the port holds it");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["holders"][0]["pid"], client.pid(), "{v:#}");
    drop(client);
    // A connection closed by its server end: TIME_WAIT on the server's port.
    let tw = free_port();
    let script = format!(
        "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {tw})); s.listen()\nc = socket.create_connection(('127.0.0.1', {tw})); a, _ = s.accept(); a.close(); s.close(); c.recv(1); c.close()\n"
    );
    assert!(Command::new("python3").args(["-c", &script]).status().expect("python").success());
    let out = portwatch(&["check", &tw.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("time-wait"), "{text}");
    let out = portwatch(&["check", "--strict", &tw.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
}

/// (9 and 10) One user cannot exhaust the agent: huge or endless request lines,
/// and hundreds of connections, cost it bounded memory and fds, and root's own
/// requests are still answered.
#[test]
fn the_control_socket_is_bounded() {
    require_root();
    let port = free_port();
    let socket = socket_path("bounds");
    let (agent, _log) = agent(&port.to_string(), &socket, &[]);
    let apid = agent.pid();
    let before = rss_kib(apid);
    let attack = format!(
        r#"
import socket, time
# A 100 MB line, and an endless one.
for size in (100 << 20, 4 << 20):
    c = socket.socket(socket.AF_UNIX); c.connect({socket:?})
    try:
        chunk = b"x" * (1 << 20)
        for _ in range(size >> 20):
            c.sendall(chunk)
    except OSError:
        pass
    c.close()
# Hundreds of idle connections.
held = []
for _ in range(400):
    c = socket.socket(socket.AF_UNIX)
    try:
        c.connect({socket:?}); held.append(c)
    except OSError:
        break
print("READY", len(held), flush=True)
time.sleep(60)
"#
    );
    let mut child =
        Command::new("python3").args(["-u", "-c", &attack]).uid(NOBODY).gid(NOBODY).stdout(Stdio::piped()).spawn().expect("attack");
    let out = child.stdout.take().expect("stdout");
    let attacker = ChildGuard(child);
    let ready = BufReader::new(out).lines().map_while(Result::ok).find(|l| l.starts_with("READY")).expect("attack ran");
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(apid), "the agent survived: {ready}");
    let grew = rss_kib(apid).saturating_sub(before);
    assert!(grew < 32 * 1024, "the agent's RSS grew by {grew} KiB");
    assert!(fd_count(apid) < 200, "the agent holds {} fds", fd_count(apid));
    // Root still gets an answer, and nobody's next connection is told why not.
    assert!(request(&socket, b"{\"cmd\":\"status\"}\n").contains("\"ok\":true"));
    let busy = Command::new("python3")
        .args(["-c", &format!("import socket\nc = socket.socket(socket.AF_UNIX); c.connect({socket:?}); print(c.makefile().readline())")])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("one more");
    assert!(
        String::from_utf8_lossy(&busy.stdout).contains("too many connections"),
        "{}{}",
        String::from_utf8_lossy(&busy.stdout),
        String::from_utf8_lossy(&busy.stderr)
    );
    drop(attacker);
    // A too-long request gets an error reply, and the connection ends.
    let long = vec![b'x'; 100 * 1024];
    let reply = request(&socket, &[&long[..], b"\n"].concat());
    assert!(reply.contains("bad_request") && reply.contains("longer than"), "{reply}");
    let _ = std::fs::remove_file(&socket);
}

/// (11) Hostile command lines: 50 processes with 1 MB command lines on watched
/// ports cost the agent kilobytes each, not megabytes.
#[test]
fn megabyte_command_lines_cost_the_agent_little() {
    require_root();
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let spec = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    let (agent, _log) =
        start_logged(&["agent", "--no-socket", "--db", db.to_str().expect("utf8"), "--interval", "200ms", "-p", &spec], "agent started");
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(agent.pid());
    // 1 MB of command line, in arguments of 128 KiB (the kernel's limit for one).
    let pads: Vec<String> = (0..8).map(|_| "y".repeat(128 * 1024 - 1)).collect();
    let mut kids = Vec::new();
    for p in &ports {
        let script = format!("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {p})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n");
        let mut c = Command::new("python3")
            .args(["-u", "-c", &script])
            .args(&pads)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let out = c.stdout.take().expect("stdout");
        kids.push(ChildGuard(c));
        assert!(BufReader::new(out).lines().map_while(Result::ok).any(|l| l.starts_with("READY")));
    }
    std::thread::sleep(Duration::from_secs(2));
    let grew = rss_kib(agent.pid()).saturating_sub(before);
    assert!(grew < 16 * 1024, "50 MB of command lines grew the agent by {grew} KiB");
}

/// (13) A failed bind inside another network namespace is not blamed on the host's
/// listener on the same port number.
#[test]
fn a_failed_bind_in_another_network_namespace_is_not_blamed_on_the_host() {
    require_root();
    let port = free_port();
    let ns = portwatch_tests::Netns::create("sec");
    let (_host, _) = spawn_python(&listener_script("127.0.0.1", port));
    let watch = portwatch_tests::Watch::start(&["--port", &port.to_string()]);
    let script = format!(
        "import socket\na = socket.socket(); a.bind(('0.0.0.0', {port}))\nb = socket.socket()\ntry:\n    b.bind(('0.0.0.0', {port}))\nexcept OSError:\n    pass\n"
    );
    let st = Command::new("ip").args(["netns", "exec", &ns.0, "python3", "-c", &script]).status().expect("netns python");
    assert!(st.success());
    let (events, _) = watch.stop();
    let failed: Vec<&serde_json::Value> = events.iter().filter(|e| e["error"].is_string()).collect();
    assert!(!failed.is_empty(), "{events:#?}");
    for f in failed {
        assert_eq!(f["error_source"], "other_netns", "{f}");
        assert!(f.get("held_by").is_none(), "blamed on the host's listener: {f}");
    }
}

/// (14) A process names itself with escape sequences and puts forged lines in its
/// command line: no human-readable output lets either through.
#[test]
fn hostile_names_cannot_drive_roots_terminal_or_forge_lines() {
    require_root();
    let port = free_port();
    let (_evil, _) = spawn_python(&format!(
        r#"
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"\x1b]0;pwned\x07\x1b[2J", 0, 0, 0)
s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
print("READY", flush=True)
time.sleep(120)
"#
    ));
    let forged = format!("\nport {port}: free\n\x1b[31m");
    let (_evil2, _) = {
        let script = listener_script("::1", port);
        let mut c = Command::new("python3").args(["-u", "-c", &script, &forged]).stdout(Stdio::piped()).spawn().expect("python");
        let out = c.stdout.take().expect("stdout");
        let g = ChildGuard(c);
        assert!(BufReader::new(out).lines().map_while(Result::ok).any(|l| l.starts_with("READY")));
        (g, ())
    };
    for args in [vec!["who", "--wide"], vec!["check"], vec!["free", "--dry-run"]] {
        let mut a = args.clone();
        let p = port.to_string();
        a.push(&p);
        let out = portwatch(&a);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{a:?}: {text:?}");
        assert!(!text.lines().any(|l| l.trim() == format!("port {port}: free")), "{a:?}: a forged line: {text}");
    }
}

/// (15 and 16) Huge durations are refused at parse time, one line and exit 2; a
/// closed stdout ends a command quietly.
#[test]
fn huge_durations_and_closed_pipes() {
    for args in [
        vec!["free", "--grace", "18446744073709551615", "5050"],
        vec!["wait", "--timeout", "1000000d", "5050"],
        vec!["run", "--grace", "99999999999999s", "--", "true"],
        vec!["cleanup", "--stall", "18446744073709551615", "-p", "5050"],
        vec!["history", "--since", "1000000d"],
    ] {
        let out = portwatch(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
    let mut child = Command::new(bin()).args(["check", "1-30000"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("check");
    let mut first = [0u8; 16];
    child.stdout.take().expect("stdout").read_exact(&mut first).expect("read");
    // stdout is closed here; the rest of the output goes nowhere.
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}

/// (17) `--socket` pointing at a regular file never deletes it.
#[test]
fn the_socket_path_never_deletes_a_file() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep me").expect("write");
    let out = portwatch(&["agent", "--no-history", "-p", &free_port().to_string(), "--socket", precious.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&precious).expect("still there"), "keep me");
}

/// (18) SIGHUP stops the agent cleanly: every row written, the socket removed.
#[test]
fn sighup_loses_no_rows() {
    require_root();
    let port = free_port();
    let socket = socket_path("hup");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    let (agent, rx) = start_logged(
        &["agent", "--log-json", "--db", db.to_str().expect("utf8"), "--socket", &socket, "-p", &port.to_string()],
        "control socket ready",
    );
    let script = format!("import socket\nfor _ in range(300):\n    s = socket.socket(); s.bind(('127.0.0.1', {port})); s.close()\n");
    assert!(Command::new("python3").args(["-c", &script]).status().expect("python").success());
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid()), nix::sys::signal::Signal::SIGHUP);
    let stopped = rx.iter().find(|l| l.contains("agent stopped"));
    assert!(stopped.is_some(), "no clean stop on SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(agent.pid()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!std::path::Path::new(&socket).exists(), "the socket was removed");
    let conn = rusqlite::Connection::open(&db).expect("db");
    let binds: i64 = conn.query_row("SELECT COUNT(*) FROM events WHERE event = 'bind' AND port = ?1", [port], |r| r.get(0)).expect("count");
    assert_eq!(binds, 300, "every bind row was written");
}
