//! `portwatch who` / `check` against real processes: gunicorn masters and workers,
//! SO_REUSEPORT pairs, UDP, IPv6, bound-only sockets, orphans, clients.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeSet, process::Command, time::Duration};

use portwatch_tests::{free_port, kernel_at_least, portwatch, portwatch_unprivileged, require_root, spawn_python, ChildGuard, PidGuard};

/// `who --json` with the given `--method`.
fn who_method(method: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["who", "--json", "--method", method];
    full.extend_from_slice(args);
    let out = portwatch(&full);
    assert!(out.status.success(), "who --method {method} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("who --json is a JSON array")
}

/// What must not depend on the method: each socket and its (pid, fd) holders.
fn summary(sockets: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = sockets
        .iter()
        .map(|s| {
            let mut h: Vec<(i64, i64)> = s["holders"]
                .as_array()
                .map(|a| a.iter().map(|h| (h["pid"].as_i64().unwrap_or(-1), h["fd"].as_i64().unwrap_or(-1))).collect())
                .unwrap_or_default();
            h.sort();
            format!("{} {} {} {} {} {} {:?}", s["port"], s["proto"], s["family"], s["addr"], s["state"], s["inode"], h)
        })
        .collect();
    v.sort();
    v
}

/// `who --json` by the fast path (`--method holders`, which fails rather than fall
/// back), checked against the task_file pass and the /proc walk.
fn who_json(args: &[&str]) -> Vec<serde_json::Value> {
    who_json_on(args, None)
}

/// [`who_json`], comparing the methods only on `ports` when given: a range may
/// meanwhile gain sockets of tests running alongside.
fn who_json_on(args: &[&str], ports: Option<&[u16]>) -> Vec<serde_json::Value> {
    let keep = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        match ports {
            Some(ps) => v.into_iter().filter(|s| ps.iter().any(|&p| s["port"].as_u64() == Some(u64::from(p)))).collect(),
            None => v,
        }
    };
    let fast = keep(who_method("holders", args));
    // Before Linux 6.8 sock_diag does not list bound, never-listening TCP sockets:
    // only the holders pass (which finds sockets in the kernel's tables) sees them.
    let listed = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
        v.iter().filter(|s| kernel_at_least(6, 8) || !(s["proto"] == "tcp" && s["state"] == "bound")).cloned().collect()
    };
    for m in ["task-file", "proc", "auto"] {
        let other = keep(who_method(m, args));
        let want = if m == "auto" { fast.clone() } else { listed(&fast) };
        assert_eq!(summary(&other), summary(&want), "--method {m} disagrees with --method holders for {args:?}");
    }
    fast
}

fn holder_pids(sockets: &[serde_json::Value]) -> BTreeSet<i64> {
    sockets.iter().flat_map(|s| s["holders"].as_array().cloned().unwrap_or_default()).filter_map(|h| h["pid"].as_i64()).collect()
}

#[test]
fn gunicorn_master_and_all_four_workers() {
    require_root();
    let have = Command::new("python3").args(["-c", "import gunicorn"]).status().expect("python3");
    assert!(have.success(), "gunicorn is needed (cargo xtask test installs it)");
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.py"), "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n")
        .expect("write app");
    let child = Command::new("python3")
        .args(["-m", "gunicorn", "--bind", &format!("127.0.0.1:{port}"), "--workers", "4", "app:app"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn gunicorn");
    let master = ChildGuard(child);
    // Wait until the master forked its 4 workers.
    let mut workers = BTreeSet::new();
    for _ in 0..200 {
        workers = portwatch_tests::children_of(master.pid()).into_iter().map(i64::from).collect();
        if workers.len() == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(workers.len(), 4, "gunicorn did not start 4 workers");
    let sockets = who_json(&[&port.to_string()]);
    assert_eq!(sockets.len(), 1, "{sockets:#?}");
    let s = &sockets[0];
    assert_eq!((s["proto"].as_str(), s["state"].as_str(), s["family"].as_str()), (Some("tcp"), Some("listen"), Some("ipv4")));
    assert!(s["backlog"].as_u64().unwrap_or(0) > 0 && s["accept_queue"].is_u64() && s["inode"].as_u64().unwrap_or(0) > 0);
    let mut want = workers.clone();
    want.insert(i64::from(master.pid()));
    assert_eq!(holder_pids(&sockets), want, "master and all workers");
    let h = &s["holders"][0];
    for key in ["pid", "ppid", "uid", "user", "comm", "cmdline", "state", "fd"] {
        assert!(h.get(key).is_some(), "{key} missing");
    }
    assert!(s["holders"].as_array().expect("holders").iter().all(|h| h["cmdline"].as_str().unwrap_or("").contains("gunicorn")));

    // check: held -> 1; the human view names the port and every process.
    let out = portwatch(&["check", &port.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let text = portwatch(&["who", &port.to_string()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("port {port}: 1 socket, 5 processes")), "{text}");
    // Gunicorn workers outlive a SIGKILLed master (the seed story's leftovers), so the
    // test kills the workers it caused too.
    let worker_guards: Vec<PidGuard> = workers.iter().map(|&w| PidGuard(w as i32)).collect();
    drop(master);
    drop(worker_guards);
    for _ in 0..100 {
        if portwatch(&["check", "-q", &port.to_string()]).status.code() == Some(0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("port {port} still held after gunicorn was killed");
}

#[test]
fn reuseport_pair_udp_ipv6_and_bound_only_sockets() {
    require_root();
    let (p_rp, p_udp, p_v6, p_dual, p_bound) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let script = |body: &str| format!("import os, socket, time\n{body}\nprint('READY', os.getpid(), flush=True)\ntime.sleep(60)\n");
    let rp =
        format!("s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(('127.0.0.1', {p_rp})); s.listen()");
    let (a, _) = spawn_python(&script(&rp));
    let (b, _) = spawn_python(&script(&rp));
    let (u, _) = spawn_python(&script(&format!("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', {p_udp}))")));
    let (v6, _) = spawn_python(&script(&format!("s = socket.socket(socket.AF_INET6); s.bind(('::1', {p_v6})); s.listen()")));
    let (dual, _) = spawn_python(&script(&format!(
        "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(('::', {p_dual})); s.listen()"
    )));
    let (bound, _) = spawn_python(&script(&format!("s = socket.socket(); s.bind(('127.0.0.1', {p_bound}))")));

    let s = who_json(&[&p_rp.to_string()]);
    assert_eq!(s.len(), 2, "two SO_REUSEPORT sockets: {s:#?}");
    assert_eq!(holder_pids(&s), [a.pid(), b.pid()].into_iter().map(i64::from).collect());

    let s = who_json(&[&p_udp.to_string()]);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0]["proto"].as_str(), s[0]["state"].as_str()), (Some("udp"), Some("bound")));
    assert_eq!(holder_pids(&s), BTreeSet::from([i64::from(u.pid())]));
    assert!(who_json(&["--tcp", &p_udp.to_string()]).is_empty(), "--tcp hides UDP");

    let s = who_json(&[&p_v6.to_string()]);
    assert_eq!((s.len(), s[0]["family"].as_str(), s[0]["addr"].as_str()), (1, Some("ipv6"), Some("::1")));
    assert_eq!(holder_pids(&s), BTreeSet::from([i64::from(v6.pid())]));

    let s = who_json(&[&p_dual.to_string()]);
    assert_eq!((s.len(), s[0]["addr"].as_str()), (1, Some("::")));
    assert_eq!(holder_pids(&s), BTreeSet::from([i64::from(dual.pid())]));

    let s = who_json(&[&p_bound.to_string()]);
    assert_eq!(s.len(), 1, "a bound, never-listening TCP socket: {s:#?}");
    assert_eq!(s[0]["state"], "bound");
    assert_eq!(holder_pids(&s), BTreeSet::from([i64::from(bound.pid())]));

    // Ranges and lists in one call.
    let all = who_json(&[&format!("{p_rp},{p_udp}"), &p_v6.to_string()]);
    assert_eq!(all.len(), 4);
    drop((a, b, u, v6, dual, bound));
}

#[test]
fn orphaned_listener_and_clients_are_not_holders() {
    require_root();
    let port = free_port();
    // The parent forks a child that holds the listener, then exits: the child is
    // re-parented (to init or a subreaper).
    let (parent, line) = spawn_python(&format!(
        r#"
import os, socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
pid = os.fork()
if pid == 0:
    time.sleep(60)
    sys.exit(0)
print("READY", pid, flush=True)
os._exit(0)
"#
    ));
    let orphan: i32 = line.parse().expect("orphan pid");
    // Make sure the orphan is cleaned up even though we did not spawn it directly.
    let _orphan_guard = PidGuard(orphan);
    drop(parent);
    std::thread::sleep(Duration::from_millis(200));
    let (client, _) = spawn_python(&format!(
        "import os, socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let s = who_json(&[&port.to_string()]);
    assert_eq!(s.len(), 1, "only the listener: {s:#?}");
    assert_eq!(holder_pids(&s), BTreeSet::from([i64::from(orphan)]));
    let h = &s[0]["holders"][0];
    assert_ne!(h["ppid"], i64::from(std::process::id()), "re-parented");
    assert_eq!(s[0]["accept_queue"], 1, "the client's connection waits in the accept queue");

    let with_clients = who_json(&["--clients", &port.to_string()]);
    assert_eq!(with_clients.len(), 2);
    let c: Vec<_> = with_clients.iter().filter(|s| s.get("peer").is_some()).collect();
    assert_eq!(c.len(), 1);
    assert_eq!(holder_pids(&c.iter().map(|v| (*v).clone()).collect::<Vec<_>>()), BTreeSet::from([i64::from(client.pid())]));
}

#[test]
fn unprivileged_run_falls_back_to_proc_with_a_note() {
    require_root();
    let port = free_port();
    let (server, _) = spawn_python(&format!(
        "import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let out = portwatch_unprivileged(&["who", "--json", &port.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("walking /proc"), "{stderr}");
    assert!(stderr.contains("may be missing"), "{stderr}");
    let s: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(s.len(), 1, "the socket itself is visible without privilege");
    assert!(holder_pids(&s).is_empty(), "a root-owned holder is not visible to nobody");
    // Forcing the BPF holders pass without privilege: exit 4, one line.
    let out = portwatch_unprivileged(&["who", "--method", "holders", &port.to_string()]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    // As root the same socket has its holder.
    assert_eq!(holder_pids(&who_json(&[&port.to_string()])), BTreeSet::from([i64::from(server.pid())]));
}

#[test]
fn fast_path_limits_fall_back_and_high_fds_and_many_ports_are_found() {
    require_root();
    // 20 SO_REUSEPORT UDP sockets on one port: more than the holders pass tracks (16),
    // so it declines and `auto` answers from the task_file pass, completely.
    let crowded = free_port();
    let (many, _) = spawn_python(&format!(
        "import os, socket, time\nss = []\nfor _ in range(20):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(('127.0.0.1', {crowded})); ss.append(s)\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let out = portwatch(&["who", "--json", "--method", "holders", &crowded.to_string()]);
    assert_eq!(out.status.code(), Some(5), "holders declines: {}", String::from_utf8_lossy(&out.stderr));
    let out = portwatch(&["who", "-v", "--json", &crowded.to_string()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("found by bpf-iterator"), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(s.len(), 20);
    assert_eq!(holder_pids(&s), BTreeSet::from([i64::from(many.pid())]));

    // A listener at fd 5000 (the fd table grows past many 64-slot chunks), and
    // listeners spread over a 40-port range (three 16-port passes).
    let high = free_port();
    let (h, _) = spawn_python(&format!(
        "import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {high})); s.listen(); os.dup2(s.fileno(), 5000); s.close()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let s = who_json(&[&high.to_string()]);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0]["holders"][0]["pid"].as_i64(), s[0]["holders"][0]["fd"].as_i64()), (Some(i64::from(h.pid())), Some(5000)));

    let base = loop {
        let b = free_port();
        if b < 31_900 && (b..b + 40).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            break b;
        }
    };
    let picks = [base, base + 17, base + 39];
    let mut guards = Vec::new();
    for p in picks {
        guards.push(spawn_python(&format!(
            "import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {p})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
        )).0);
    }
    let range = format!("{base}-{}", base + 39);
    // (Tests running alongside may take other ports of the range meanwhile.)
    let s = who_json_on(&["--tcp", &range], Some(&picks));
    for (p, g) in picks.iter().zip(&guards) {
        let on: Vec<serde_json::Value> = s.iter().filter(|x| x["port"].as_u64() == Some(u64::from(*p))).cloned().collect();
        assert_eq!(holder_pids(&on), BTreeSet::from([i64::from(g.pid())]), "port {p}: {s:#?}");
    }

    // Concurrent readers of the pinned iterator each get their own answer.
    let handles: Vec<_> =
        picks.iter().map(|&p| std::thread::spawn(move || (p, who_method("holders", &["--tcp", &p.to_string()])))).collect();
    for (h, g) in handles.into_iter().zip(&guards) {
        let (p, s) = h.join().expect("thread");
        assert_eq!(s.len(), 1, "port {p}: {s:#?}");
        assert_eq!(holder_pids(&s), BTreeSet::from([i64::from(g.pid())]), "port {p}");
    }
    drop((many, h, guards));
}

/// `who --json -v PORT`: the answer, and how the holders were found (from stderr).
fn who_verbose(port: u16) -> (Vec<serde_json::Value>, String) {
    let (v, method, _) = who_account(port);
    (v, method)
}

/// [`who_verbose`], with `-v`'s whole account ("holders found by METHOD in ... ms
/// (phases)").
fn who_account(port: u16) -> (Vec<serde_json::Value>, String, String) {
    let out = portwatch(&["who", "--json", "-v", &port.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let method = err.split("holders found by ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?").to_string();
    (serde_json::from_slice(&out.stdout).expect("json"), method, err)
}

/// Whether the kernel has the task filter for iterator links the candidates' pass
/// needs (Linux 6.1); says so when the test is skipped.
fn task_filter() -> bool {
    let ok = kernel_at_least(6, 1);
    if !ok {
        eprintln!("skipped: the task filter for iterators needs Linux 6.1");
    }
    ok
}

/// `who --json PORT` when one of a few asks is answered from the candidates (a
/// parallel test's `who` may rewrite the hints at the moment of one ask).
fn from_candidates(port: u16) -> Option<Vec<serde_json::Value>> {
    (0..5).find_map(|_| {
        let (v, method) = who_verbose(port);
        (method == "bpf-candidates").then_some(v)
    })
}

/// The candidates' pass: asked again, `who` checks the processes that held the
/// port last time and their descendants instead of every task, and its answer is
/// the full pass's. (Another test's `who` may rewrite the hints at the same moment,
/// so the first of a few asks must come from the candidates.)
#[test]
fn a_repeated_who_checks_the_last_holders_and_gets_the_same_answer() {
    require_root();
    if !task_filter() {
        return;
    }
    let port = free_port();
    // A master and three forked workers, all holding the listener; SIGUSR1 makes
    // the master fork one more.
    let (master, _) = spawn_python(&format!(
        "import os, signal, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\ndef worker(*_):\n    if os.fork() == 0:\n        time.sleep(120); os._exit(0)\nsignal.signal(signal.SIGUSR1, worker)\nfor _ in range(3):\n    worker()\nprint('READY', flush=True)\nwhile True:\n    time.sleep(120)\n"
    ));
    let workers = portwatch_tests::children_of(master.pid());
    let mut guards: Vec<PidGuard> = workers.iter().map(|&w| PidGuard(w)).collect();
    let full = who_json(&[&port.to_string()]);
    let mut want: BTreeSet<i64> = workers.iter().map(|&w| i64::from(w)).collect();
    want.insert(i64::from(master.pid()));
    assert_eq!(holder_pids(&full), want);
    let v = from_candidates(port).expect("a repeated who is answered from the candidates");
    assert_eq!(holder_pids(&v), want, "{v:#?}");
    assert_eq!(summary(&v), summary(&full));
    // A worker forked since (a pid the hints do not name) is found as a descendant.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(master.pid()), nix::sys::signal::Signal::SIGUSR1).expect("SIGUSR1");
    let now = portwatch_tests::wait_for("a fourth worker", Duration::from_secs(10), || {
        let c = portwatch_tests::children_of(master.pid());
        (c.len() == 4).then_some(c)
    });
    guards.extend(now.difference(&workers).map(|&w| PidGuard(w)));
    want.extend(now.iter().map(|&w| i64::from(w)));
    let v = from_candidates(port).expect("the new worker is found from the candidates");
    assert_eq!(holder_pids(&v), want, "{v:#?}");
}

/// A process outside the candidates that holds the socket (here: received over a
/// unix socket) leaves one of the file's references unaccounted for: `who` then
/// takes the full pass, and names it.
#[test]
fn a_holder_outside_the_candidates_is_found_by_the_full_pass() {
    require_root();
    if !task_filter() {
        return;
    }
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pass.sock");
    // The holder in a cgroup of its own, so that cgroup's candidates leave the
    // receiver out too.
    let cg = portwatch_tests::TestCgroup::new("who-outside");
    let (holder, _) = portwatch_tests::spawn_python_in(
        &cg,
        &format!(
            "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nu = socket.socket(socket.AF_UNIX); u.bind('{p}'); u.listen()\nprint('READY', flush=True)\nc, _ = u.accept(); socket.send_fds(c, [b'x'], [s.fileno()])\ntime.sleep(120)\n",
            p = path.display()
        ),
    );
    // The hints now name only the first holder.
    let (first, _) = who_verbose(port);
    assert_eq!(holder_pids(&first), BTreeSet::from([i64::from(holder.pid())]));
    // A process of its own (not a descendant) receives the listener, and sleeps:
    // not waiting on the socket, it is no candidate either.
    let (receiver, _) = spawn_python(&format!(
        "import socket, time\nu = socket.socket(socket.AF_UNIX); u.connect('{p}')\nmsg, fds, _, _ = socket.recv_fds(u, 1, 1)\nprint('READY', fds[0], flush=True)\ntime.sleep(120)\n",
        p = path.display()
    ));
    let (v, method) = who_verbose(port);
    assert_eq!(holder_pids(&v), BTreeSet::from([i64::from(holder.pid()), i64::from(receiver.pid())]), "{v:#?}");
    assert_ne!(method, "bpf-candidates", "the receiver is no candidate: the proof must fail");
}

/// Hints are never answers: planted pids that hold nothing, with the real holder
/// left out, give the right answer (from the socket's cgroup or the full pass).
#[test]
fn planted_hints_change_nothing_but_the_time() {
    require_root();
    let port = free_port();
    let (holder, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    let bystander = ChildGuard(Command::new("sleep").arg("60").spawn().expect("sleep"));
    // Written the way portwatch writes it (root's, 0600), naming the bystander only.
    let hints = std::path::Path::new("/run/portwatch-holders");
    let old = std::fs::read_to_string(hints).unwrap_or_default();
    std::fs::write(hints, format!("{port} {}\n{old}", bystander.pid())).expect("write hints");
    let (v, _) = who_verbose(port);
    assert_eq!(holder_pids(&v), BTreeSet::from([i64::from(holder.pid())]), "{v:#?}");
}

/// A thread blocked in accept() on the listener holds a transient reference to
/// its file (the fd table is shared): the count exceeds the fds, the proof fails,
/// and the full pass gives the answer, the same one.
#[test]
fn a_transient_reference_costs_a_full_pass_not_a_wrong_answer() {
    require_root();
    let port = free_port();
    let (holder, _) = spawn_python(&format!(
        "import socket, threading, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nthreading.Thread(target=s.accept, daemon=True).start()\ntime.sleep(0.2)\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    let want = BTreeSet::from([i64::from(holder.pid())]);
    for _ in 0..3 {
        let (v, method) = who_verbose(port);
        assert_eq!(holder_pids(&v), want, "{v:#?}");
        assert_ne!(method, "bpf-candidates", "one fd, two references");
    }
}

/// Servers wait in select()/poll() on their listener (gunicorn's sync workers,
/// Python's socketserver); each waiter holds a reference to the file while it
/// waits. The program subtracts those it finds on the socket's wait queue, so
/// such a server is still answered from the candidates.
#[test]
fn pollers_are_answered_from_the_candidates() {
    require_root();
    if !task_filter() {
        return;
    }
    let port = free_port();
    let (master, _) = spawn_python(&format!(
        "import os, select, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nif os.fork() == 0:\n    select.select([s], [], [])\n    os._exit(0)\nimport selectors\nsel = selectors.PollSelector(); sel.register(s, selectors.EVENT_READ)\nprint('READY', flush=True)\nsel.select()\n"
    ));
    let workers = portwatch_tests::children_of(master.pid());
    let _guards: Vec<PidGuard> = workers.iter().map(|&w| PidGuard(w)).collect();
    in_wait(master.pid());
    for &w in &workers {
        in_wait(w);
    }
    let mut want: BTreeSet<i64> = workers.iter().map(|&w| i64::from(w)).collect();
    want.insert(i64::from(master.pid()));
    let full = who_json(&[&port.to_string()]);
    assert_eq!(holder_pids(&full), want);
    let v = from_candidates(port).expect("pollers are answered from the candidates");
    assert_eq!(summary(&v), summary(&full));
}

/// A first ask about a port whose sockets were made in a cgroup of their own (a
/// service's, a run's, a container's): the processes in that cgroup are the
/// candidates, so even the first `who` visits no other task, and its answer is
/// the full pass's.
#[test]
fn a_first_ask_checks_the_sockets_own_cgroup() {
    require_root();
    if !task_filter() {
        return;
    }
    let port = free_port();
    let cg = portwatch_tests::TestCgroup::new("who-first");
    let (server, _) = portwatch_tests::spawn_python_in(
        &cg,
        &format!(
            "import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nif os.fork() == 0:\n    time.sleep(120); os._exit(0)\nprint('READY', flush=True)\ntime.sleep(120)\n"
        ),
    );
    let workers = portwatch_tests::children_of(server.pid());
    let _guards: Vec<PidGuard> = workers.iter().map(|&w| PidGuard(w)).collect();
    let mut want: BTreeSet<i64> = workers.iter().map(|&w| i64::from(w)).collect();
    want.insert(i64::from(server.pid()));
    // The first ask about this port: no hints name it.
    let (v, method) = who_verbose(port);
    assert_eq!(holder_pids(&v), want, "{v:#?}");
    assert_eq!(method, "bpf-candidates", "the socket's cgroup gives the candidates");
    assert_eq!(summary(&v), summary(&who_json(&[&port.to_string()])));
}

/// A first ask about a server idle on its listener (in accept(), poll() or
/// epoll_wait(), as idle servers are): the program finds the waiting process on
/// the socket's wait queue, and it and its parent are the candidates. A
/// pre-forked worker in accept() brings its master (the parent, asleep). The
/// answer is the full pass's.
#[test]
fn a_first_ask_finds_an_idle_server_from_its_waiters() {
    require_root();
    if !task_filter() {
        return;
    }
    let waits = [
        ("accept", "s.accept()"),
        ("poll", "import select\np = select.poll(); p.register(s, select.POLLIN); p.poll()"),
        ("epoll", "import select\ne = select.epoll(); e.register(s.fileno(), select.EPOLLIN); e.poll()"),
        ("forked worker in accept", "if os.fork() == 0:\n    s.accept(); os._exit(0)\ntime.sleep(120)"),
    ];
    let mut servers = Vec::new();
    for (what, wait) in waits {
        let port = free_port();
        let (server, _) = spawn_python(&format!(
            "import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\n{wait}\n"
        ));
        let mut want = BTreeSet::from([i64::from(server.pid())]);
        let workers = if what.starts_with("forked") {
            portwatch_tests::wait_for("the forked worker", Duration::from_secs(10), || {
                let c = portwatch_tests::children_of(server.pid());
                (!c.is_empty()).then_some(c)
            })
        } else {
            BTreeSet::new()
        };
        want.extend(workers.iter().map(|&w| i64::from(w)));
        let guards: Vec<PidGuard> = workers.iter().map(|&w| PidGuard(w)).collect();
        servers.push((what, port, server, guards, want));
    }
    for (what, port, server, _, want) in &servers {
        let waiter = portwatch_tests::children_of(server.pid()).into_iter().next().unwrap_or(server.pid());
        in_wait(waiter);
        // The first ask about this port (no hints name it: the full pass writes them).
        let (v, method, account) = who_account(*port);
        assert_eq!(&holder_pids(&v), want, "{what}: {v:#?}");
        assert_eq!(method, "bpf-candidates", "{what}: {account}");
        assert!(account.contains("holders of waiting candidates"), "{what}: answered by the waiters: {account}");
        assert_eq!(summary(&v), summary(&who_json(&[&port.to_string()])), "{what}");
    }
}

/// A server found from its waiters is remembered: once it stops waiting (here
/// SIGSTOPped, as a wedged server does not wait either), the next ask checks it
/// as a hinted candidate instead of visiting every task.
#[test]
fn a_server_seen_waiting_is_still_a_candidate_once_stopped() {
    require_root();
    if !task_filter() {
        return;
    }
    let port = free_port();
    // In a process group of its own: a stopped process in the test binary's group
    // gets that whole group SIGHUPped by the kernel when another test's process
    // exit leaves it orphaned (the binary died of SIGHUP once in a 6.12 guest).
    let (server, _) = spawn_python(&format!(
        "import os, socket\nos.setpgid(0, 0)\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ns.accept()\n"
    ));
    in_wait(server.pid());
    let want = BTreeSet::from([i64::from(server.pid())]);
    let (v, _, account) = who_account(port);
    assert_eq!(holder_pids(&v), want);
    assert!(account.contains("holders of waiting candidates"), "{account}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.pid()), nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    portwatch_tests::wait_for("the server to stop", Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).ok()?;
        (stat.rsplit(')').next()?.split_whitespace().next()? == "T").then_some(())
    });
    let (v, method, account) = who_account(port);
    assert_eq!(holder_pids(&v), want, "{v:#?}");
    assert_eq!(method, "bpf-candidates", "{account}");
    assert!(account.contains("holders of hinted candidates"), "remembered from the first ask: {account}");
}

/// Waits until `pid` sleeps in accept, poll/select or epoll_wait.
fn in_wait(pid: i32) {
    // In a waiting syscall, asleep, and still asleep 100 ms later without having
    // run meanwhile (the same voluntary switch count): on the wait queue by then.
    // The syscall number alone is not enough: entering epoll_wait (or poll, or
    // accept) comes before queueing the task, and under TCG the gap between is
    // long enough for an ask to miss it (a 6.1 guest did, once).
    let asleep = || -> Option<u64> {
        let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        let nr: i64 = sc.split_whitespace().next()?.parse().ok()?;
        // x86_64: poll 7, select 23, accept 43, epoll_wait 232, pselect6 270,
        // ppoll 271, epoll_pwait 281, accept4 288, epoll_pwait2 441.
        if !matches!(nr, 7 | 23 | 43 | 232 | 270 | 271 | 281 | 288 | 441) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        if !field("State:")?.starts_with('S') {
            return None;
        }
        field("voluntary_ctxt_switches:")?.parse().ok()
    };
    portwatch_tests::wait_for("the process to wait on its listener", Duration::from_secs(10), || {
        let before = asleep()?;
        std::thread::sleep(Duration::from_millis(100));
        (asleep()? == before).then_some(())
    });
}
