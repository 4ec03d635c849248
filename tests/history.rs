//! The agent's history: real binds from child processes, recorded in SQLite,
//! surviving `kill -9` of the agent and a restart; a database that cannot be used
//! never stops the agent (it reports the fault and reaps anyway); paths that would
//! let another user steer root's writes are refused; files are created 0640; and
//! a reader with read access only can read a stopped agent's history.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{alive, control, free_port, portwatch, require_root, spawn_python, start_logged, wait_for, ChildGuard};

fn start_agent(port: u16, db: &std::path::Path) -> ChildGuard {
    let port = port.to_string();
    start_logged(&["agent", "--no-socket", "--interval", "200ms", "-p", &port, "--db", db.to_str().expect("utf8")], "agent started").0
}

fn history(args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["history", "--json"];
    full.extend_from_slice(args);
    let out = portwatch(&full);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn history_survives_kill_9_names_holders_and_answers_at() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let dbs = db.to_str().expect("utf8");

    let agent = start_agent(port, &db);
    let mut holder_cmd = Command::new("python3");
    holder_cmd
        .args(["-u", "-c", &format!("import os, socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n")])
        .env("GITHUB_RUN_ID", "4711")
        .env("GITHUB_JOB", "integration")
        .stdout(Stdio::piped());
    let mut holder = holder_cmd.spawn().expect("holder");
    let out = holder.stdout.take().expect("stdout");
    let holder = ChildGuard(holder);
    let ready = std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok).any(|l| l.starts_with("READY"));
    assert!(ready);
    std::thread::sleep(Duration::from_millis(300));
    let held_at = history::now_rfc3339();
    let (failer, _) = spawn_python(&format!(
        "import socket\nt = socket.socket()\ntry:\n    t.bind(('127.0.0.1', {port}))\nexcept OSError:\n    pass\nprint('READY', flush=True)\nimport time; time.sleep(60)\n"
    ));
    // Committed batches must survive an abrupt end of the agent.
    std::thread::sleep(Duration::from_millis(800));
    kill(Pid::from_raw(agent.pid()), Signal::SIGKILL).expect("kill -9");
    drop(agent);

    let rows = history(&["--db", dbs, &port.to_string()]);
    let of = |event: &str, pid: i32| rows.iter().filter(move |r| r["event"] == event && r["pid"] == pid).count();
    assert_eq!(of("bind", holder.pid()), 1, "{rows:#?}");
    assert_eq!(of("listen", holder.pid()), 1);
    let bind = rows.iter().find(|r| r["event"] == "bind").expect("bind row");
    assert_eq!(bind["job"], "GITHUB_RUN_ID=4711 GITHUB_JOB=integration");
    assert!(bind["ancestry"].as_str().unwrap_or("").contains("python3"));
    assert!(bind["cmdline"].as_str().unwrap_or("").contains("s.listen()"));
    let failed: Vec<_> = rows.iter().filter(|r| r["event"] == "bind_failed").collect();
    assert_eq!(failed.len(), 1, "{rows:#?}");
    assert_eq!(failed[0]["pid"], failer.pid());
    assert_eq!(failed[0]["error"], "EADDRINUSE");
    let detail = failed[0]["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(&format!("held by pid {} (python3)", holder.pid()))
            && detail.contains("since")
            && detail.contains("job GITHUB_RUN_ID=4711"),
        "{detail}"
    );

    // A restarted agent appends to the same database.
    let agent = start_agent(port, &db);
    drop(holder);
    std::thread::sleep(Duration::from_millis(800));
    kill(Pid::from_raw(agent.pid()), Signal::SIGTERM).expect("SIGTERM");
    let mut agent = agent;
    let _ = agent.0.wait();
    let rows = history(&["--db", dbs, &port.to_string()]);
    assert!(rows.iter().any(|r| r["event"] == "close"), "the close seen by the restarted agent: {rows:#?}");

    // Who held the port at a past moment, and after it was closed.
    let at = history(&["--db", dbs, &port.to_string(), "--at", &held_at]);
    assert_eq!(at.len(), 1, "{at:#?}");
    assert_eq!(at[0]["comm"], "python3");
    let after_close = history::now_rfc3339();
    assert!(history(&["--db", dbs, &port.to_string(), "--at", &after_close]).is_empty(), "closed by now");
    // Filters.
    assert!(history(&["--db", dbs, "--pid", &failer.pid().to_string()]).iter().all(|r| r["pid"] == failer.pid()));
    assert!(history(&["--db", dbs, "--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02T00:00:00Z"]).is_empty());
}

#[test]
fn history_errors_are_clean() {
    let out = portwatch(&["history", "--db", "/nonexistent/h.db"]);
    assert_eq!(out.status.code(), Some(3));
    let out = portwatch(&["history", "--since", "yesterday", "--db", "/nonexistent/h.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid time"));
    let out = portwatch(&["history", "--at", "1s"]);
    assert_eq!(out.status.code(), Some(2), "--at needs a port");
}

/// An agent with a control socket and metrics, reaping (stall 2 s, grace 1 s) when
/// asked, writing its history to `db`.
struct Agent {
    guard: ChildGuard,
    log: Receiver<String>,
    socket: PathBuf,
    metrics: u16,
}

impl Agent {
    fn start(port: u16, db: &Path, dir: &Path, reap: bool) -> Self {
        let socket = dir.join("agent.sock");
        let metrics = free_port();
        let (port_s, addr) = (port.to_string(), format!("127.0.0.1:{metrics}"));
        let mut args = vec!["agent", "--log-json", "--stall", "2s", "--grace", "1s", "--interval", "200ms"];
        if reap {
            args.push("--reap");
        }
        args.extend(["--socket", socket.to_str().expect("utf8"), "--metrics", &addr, "-p", &port_s, "--db", db.to_str().expect("utf8")]);
        let (guard, log) = start_logged(&args, "agent started");
        Self { guard, log, socket, metrics }
    }

    fn status(&self) -> serde_json::Value {
        let v = control(&self.socket, r#"{"cmd":"status"}"#);
        assert_eq!(v["ok"], true, "{v}");
        v
    }

    /// The history fault the agent reports, once it does.
    fn history_error(&self) -> String {
        wait_for("a history_error in status", Duration::from_secs(10), || self.status()["history_error"].as_str().map(String::from))
    }

    fn scrape(&self) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).expect("connect to /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response");
        resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }

    /// Log lines so far.
    fn lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

/// A listener that never accepts, with a connection waiting: the agent must reap it
/// within stall + grace + 1 s.
fn assert_reaps_a_stuck_listener(port: u16) {
    let (silent, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nc = socket.create_connection(('127.0.0.1', {port}))\nprint('READY', flush=True)\ntime.sleep(120)\n"
    ));
    let since = Instant::now();
    while alive(silent.pid()) {
        assert!(since.elapsed() < Duration::from_secs(2 + 1 + 1 + 1), "the agent did not reap the stuck listener");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

fn promtool_accepts(body: &str) {
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
}

#[test]
fn a_corrupt_database_does_not_stop_the_agent_and_is_tried_again() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&db, &garbage).expect("garbage");
    let agent = Agent::start(port, &db, dir.path(), true);
    let e = agent.history_error();
    assert!(e.contains("not a database") && e.contains(db.to_str().expect("utf8")), "{e}");

    assert_reaps_a_stuck_listener(port);
    // The rows of that bind, listen, verdict and reap were counted as they failed.
    let st = wait_for("failed rows in status", Duration::from_secs(5), || {
        let st = agent.status();
        (st["history_rows_failed"].as_u64().unwrap_or(0) >= 3).then_some(st)
    });
    assert_eq!(st["history_rows"], serde_json::Value::Null, "{st}");
    assert_eq!(st["history_rows_dropped"], 0, "{st}");
    let body = agent.scrape();
    assert!(body.contains("portwatch_history_ok 0"), "{body}");
    let failed_line = body.lines().find(|l| l.starts_with("portwatch_history_rows_failed_total ")).expect("failed rows metric");
    let failed: u64 = failed_line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count");
    assert!(failed >= 3, "{failed_line}");
    promtool_accepts(&body);
    let lines = agent.lines();
    let fault: Vec<&String> = lines.iter().filter(|l| l.contains("history database unavailable")).collect();
    assert_eq!(fault.len(), 1, "one line per fault, not per retry: {lines:#?}");
    assert!(fault[0].contains("not a database"), "{}", fault[0]);
    assert!(lines.iter().any(|l| l.contains("reaped; port is free")), "{lines:#?}");
    assert_eq!(std::fs::read(&db).expect("db"), garbage, "the bad database is left as it was");

    // Moved aside by its operator: the agent creates a new one and records again.
    std::fs::rename(&db, dir.path().join("history.db.bad")).expect("move aside");
    wait_for("the history is written again", Duration::from_secs(70), || {
        let st = agent.status();
        (st["history_error"].is_null() && st["history_rows"].is_u64()).then_some(())
    });
    assert!(agent.scrape().contains("portwatch_history_ok 1"));
    let (listener, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); print('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let dbs = db.to_str().expect("utf8");
    wait_for("the new bind in the history", Duration::from_secs(5), || {
        history(&["--db", dbs, &port.to_string()]).iter().any(|r| r["event"] == "bind" && r["pid"] == listener.pid()).then_some(())
    });
    drop(agent.guard);
}

#[test]
fn a_database_that_cannot_be_created_does_not_stop_the_agent() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    // Its directory is a regular file: no permission bit root could override.
    std::fs::write(dir.path().join("not-a-dir"), "x").expect("file");
    let db = dir.path().join("not-a-dir/history.db");
    let agent = Agent::start(port, &db, dir.path(), true);
    let e = agent.history_error();
    assert!(e.contains("not a directory"), "{e}");
    assert_reaps_a_stuck_listener(port);
    wait_for("failed rows in status", Duration::from_secs(5), || (agent.status()["history_rows_failed"].as_u64() > Some(0)).then_some(()));
    assert!(agent.scrape().contains("portwatch_history_ok 0"));
}

#[test]
fn database_paths_that_are_a_way_in_are_refused() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    // A symlink where the database should be: root must not write through it.
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "precious data").expect("write");
    let link = dir.path().join("history.db");
    std::os::unix::fs::symlink(&precious, &link).expect("symlink");
    let agent = Agent::start(port, &link, dir.path(), false);
    let e = agent.history_error();
    assert!(e.contains("symbolic link") && e.contains("refusing"), "{e}");
    assert!(!e.contains('\n'));
    assert!(agent.lines().iter().any(|l| l.contains("history database unavailable") && l.contains("symbolic link")));
    // The agent runs on without history.
    assert_eq!(agent.status()["ports"][0], port);
    drop(agent);
    assert_eq!(std::fs::read_to_string(&precious).expect("precious"), "precious data");
    for f in ["precious-wal", "precious-shm", "history.db-wal", "history.db-shm"] {
        assert!(!dir.path().join(f).exists(), "{f} was created");
    }

    // A directory any user may write: refused, nothing created in it.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let agent = Agent::start(port, &open.join("history.db"), dir.path(), false);
    let e = agent.history_error();
    assert!(e.contains("writable by group and others") && e.contains("open"), "{e}");
    assert_eq!(agent.status()["history_rows_failed"], 0);
    drop(agent);
    assert_eq!(std::fs::read_dir(&open).expect("ls").count(), 0, "nothing created in a world-writable directory");
}

#[test]
fn new_databases_are_0640_and_readable_by_a_reader_with_read_access_only() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("new/history.db");
    let (dbs, port_s) = (db.to_str().expect("utf8"), port.to_string());
    let agent = Agent::start(port, &db, dir.path(), false);
    let (listener, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    wait_for("rows in the database", Duration::from_secs(5), || (agent.status()["history_rows"].as_u64() >= Some(2)).then_some(()));
    for f in ["history.db", "history.db-wal", "history.db-shm"] {
        assert_eq!(mode(&dir.path().join("new").join(f)), 0o640, "{f}");
    }
    assert_eq!(mode(&dir.path().join("new")), 0o755);
    // Stopped cleanly: no -wal, no -shm left, and no one but root could create them.
    kill(Pid::from_raw(agent.guard.pid()), Signal::SIGTERM).expect("SIGTERM");
    let mut guard = agent.guard;
    let _ = guard.0.wait();
    assert!(!dir.path().join("new/history.db-shm").exists());
    // Readable by others now (as an operator might make it), in directories they
    // may enter, and read by nobody.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", portwatch_tests::bin(), "history", "--json", "--db", dbs])
            .args(args)
            .output()
            .expect("setpriv")
    };
    let out = as_nobody(&[&port_s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(rows.iter().any(|r| r["event"] == "listen" && r["pid"] == listener.pid()), "{rows:#?}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("new/history.db-shm").exists(), "the reader created nothing");

    // After a kill -9 the -wal and -shm stay, with the mode the database had when
    // they were created (0640): nobody still gets an answer, and a note that the
    // newest rows are not shown.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let agent = Agent::start(port, &db, dir.path(), false);
    drop(listener);
    wait_for("the close recorded", Duration::from_secs(5), || (agent.status()["history_rows"].as_u64() >= Some(3)).then_some(()));
    kill(Pid::from_raw(agent.guard.pid()), Signal::SIGKILL).expect("kill -9");
    drop(agent);
    assert_eq!(mode(&dir.path().join("new/history.db-wal")), 0o640);
    assert_eq!(mode(&dir.path().join("new/history.db-shm")), 0o640);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = as_nobody(&[&port_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("note:") && err.contains("history.db-wal") && err.contains("not shown"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("json");
    // Without read access: a clear error, the missing-privilege exit code.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = as_nobody(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("cannot read the history database") && err.trim_end().lines().count() == 1, "{err}");
}

mod history {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn now_rfc3339() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    pub fn now_ns() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
    }

    pub fn parse_ns(s: &str) -> i64 {
        humantime::parse_rfc3339(s).unwrap().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
    }

    /// The moment `ns` as a local time `offset_secs` east of UTC, with that offset.
    pub fn rfc3339_with_offset(ns: i64, offset_secs: i64) -> String {
        let shifted = UNIX_EPOCH + Duration::from_nanos((ns + offset_secs * 1_000_000_000) as u64);
        let utc = humantime::format_rfc3339_seconds(shifted).to_string();
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let o = offset_secs.abs();
        format!("{}{sign}{:02}:{:02}", utc.trim_end_matches('Z'), o / 3600, o % 3600 / 60)
    }
}

/// A server that held the port before the agent started: the agent writes an
/// `observed` row for it (not seen binding) with its pid, command, CI job (GitLab's
/// variables) and `since` = the process's start, so `history --at` (now, a
/// relative time, a local time with an offset) names it. A socket bound while the
/// agent runs gets its bind row and no `observed` one.
#[test]
fn history_knows_who_was_already_there() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let dbs = db.to_str().expect("utf8");
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", &format!("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n")])
        .env("CI_JOB_ID", "8812")
        .env("CI_JOB_NAME", "integration")
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("holder");
    let out = child.stdout.take().expect("stdout");
    let holder = ChildGuard(child);
    assert!(std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok).any(|l| l.starts_with("READY")));
    let started_before = history::now_ns();
    std::thread::sleep(Duration::from_millis(1100));
    let agent = start_agent(port, &db);
    let rows = wait_for("the observed row", Duration::from_secs(20), || {
        // The database appears with the agent's first batch.
        let out = portwatch(&["history", "--json", "--db", dbs, &port.to_string()]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok().filter(|_| out.status.success())?;
        rows.iter().any(|r| r["event"] == "observed").then_some(rows)
    });
    let observed: Vec<_> = rows.iter().filter(|r| r["event"] == "observed").collect();
    assert_eq!(observed.len(), 1, "{rows:#?}");
    let o = observed[0];
    assert_eq!(o["pid"], holder.pid());
    assert_eq!(o["comm"], "python3");
    assert_eq!(o["job"], "CI_JOB_ID=8812 CI_JOB_NAME=integration");
    assert!(o["detail"].as_str().unwrap_or("").contains("not seen binding"), "{o:#?}");
    // `since` (the row's time) is the holder's start: before the agent started.
    let t = history::parse_ns(o["time"].as_str().unwrap());
    assert!(t <= started_before && t > started_before - 30_000_000_000, "{} vs {started_before}", o["time"]);

    // A socket bound under the agent's eyes: a bind row, no observed row.
    let other = free_port();
    drop(agent);
    let agent = {
        let (p1, p2) = (port.to_string(), other.to_string());
        start_logged(&["agent", "--no-socket", "--interval", "200ms", "-p", &p1, "-p", &p2, "--db", dbs], "agent started").0
    };
    let (late, _) = spawn_python(&format!("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {other})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"));
    std::thread::sleep(Duration::from_millis(1500));
    let rows = history(&["--db", dbs, &other.to_string()]);
    assert!(rows.iter().any(|r| r["event"] == "bind" && r["pid"] == late.pid()), "{rows:#?}");
    assert!(!rows.iter().any(|r| r["event"] == "observed"), "{rows:#?}");
    drop(agent);

    // --at: now, relative, and a local time with an offset.
    let p = port.to_string();
    for at in ["now", "-1s", "1s"] {
        let a = history(&["--db", dbs, &p, "--at", at]);
        assert!(a.iter().any(|r| r["pid"] == holder.pid() && r["event"] == "observed"), "--at {at}: {a:#?}");
    }
    let plus2 = history::rfc3339_with_offset(history::now_ns(), 2 * 3600);
    assert!(plus2.ends_with("+02:00"), "{plus2}");
    let a = history(&["--db", dbs, &p, "--at", &plus2]);
    assert!(a.iter().any(|r| r["pid"] == holder.pid()), "--at {plus2}: {a:#?}");
    // Long before the holder started: nobody.
    assert!(history(&["--db", dbs, &p, "--at", "2000-01-01T02:00:00+02:00"]).is_empty());
    let text = portwatch(&["history", "--db", dbs, &p, "--at", "now"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("observed") && text.contains(&holder.pid().to_string()), "{text}");
    // Bad times: one line, exit 2.
    for bad in ["yesterday", "2026-13-01T00:00:00+02:00", "-", "2026-12-01T07:00:00+25:00"] {
        let out = portwatch(&["history", "--db", dbs, &p, "--at", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--at {bad}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "--at {bad}: {err}");
    }
}

/// A port number means something within one network namespace: a listener in a
/// namespace the test creates is recorded with that namespace, `history PORT`
/// (this namespace) does not show it as holding the host's port, and `--netns all`
/// shows it, naming its namespace.
#[test]
fn history_is_kept_per_network_namespace() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let dbs = db.to_str().expect("utf8");
    let ns = portwatch_tests::Netns::create("hist");
    let agent = start_agent(port, &db);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, "python3", "-u", "-c"]).arg(format!(
        "import socket, time\ns = socket.socket(); s.bind(('0.0.0.0', {port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    let (in_ns, _) = portwatch_tests::spawn_ready(cmd);
    std::thread::sleep(Duration::from_millis(800));
    kill(Pid::from_raw(agent.pid()), Signal::SIGTERM).expect("SIGTERM");
    let mut agent = agent;
    let _ = agent.0.wait();

    let p = port.to_string();
    let all = history(&["--db", dbs, &p, "--netns", "all"]);
    let listen = all.iter().find(|r| r["event"] == "listen" && r["pid"] == in_ns.pid()).unwrap_or_else(|| panic!("{all:#?}"));
    let cookie = listen["netns"].as_u64().expect("a listen row names its namespace");
    assert!(history(&["--db", dbs, &p]).iter().all(|r| r["pid"] != in_ns.pid()), "mixed into this namespace's history");
    assert!(history(&["--db", dbs, &p, "--at", "now"]).is_empty(), "the host's port is free");
    let there = history(&["--db", dbs, &p, "--at", "now", "--netns", &cookie.to_string()]);
    assert_eq!(there.iter().map(|r| r["pid"].as_i64()).collect::<Vec<_>>(), vec![Some(i64::from(in_ns.pid()))], "{there:#?}");
    let text = portwatch(&["history", "--db", dbs, &p, "--netns", "all"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().any(|l| l.contains("listen") && l.contains(&format!("netns {cookie}"))), "{text}");
    let bad = portwatch(&["history", "--db", dbs, "--netns", "mine"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// `history --html/--svg`: the timeline of a real agent's history — a job's server
/// that held the port and closed, then another whose neighbour's bind failed —
/// rendered by headless Chromium: the screenshot shows the bars in their owners'
/// colours and the failed bind's red mark.
#[test]
fn the_timeline_renders_in_a_browser() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let dbs = db.to_str().expect("utf8");
    let agent = start_agent(port, &db);
    let first = Command::new("python3")
        .args([
            "-c",
            &format!("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(1); s.close()"),
        ])
        .env("GITHUB_RUN_ID", "77")
        .env("GITHUB_JOB", "smoke")
        .status()
        .expect("first server");
    assert!(first.success());
    let second = Command::new("python3")
        .args(["-c", &format!("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\nt = socket.socket()\ntry:\n    t.bind(('127.0.0.1', {port}))\nexcept OSError:\n    pass\ntime.sleep(1)")])
        .status()
        .expect("second server");
    assert!(second.success());
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(agent.pid()), Signal::SIGTERM).expect("SIGTERM");
    let mut agent = agent;
    let _ = agent.0.wait();

    let (html, svg) = (dir.path().join("t.html"), dir.path().join("t.svg"));
    let out = portwatch(&["history", "--db", dbs, &port.to_string(), "--html", html.to_str().unwrap(), "--svg", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).expect("html");
    assert_eq!(page.matches("class=\"bar\"").count(), 2, "two holders: {page}");
    assert_eq!(page.matches("class=\"mark bind_failed\"").count(), 1, "{page}");
    assert!(page.contains("job GITHUB_RUN_ID=77 GITHUB_JOB=smoke"), "{page}");
    assert!(!page.contains("<script") && !page.contains("src="), "self-contained, no script: {page}");
    assert!(std::fs::read_to_string(&svg).expect("svg").starts_with("<svg xmlns"));
    let nowhere = portwatch(&["history", "--db", dbs, &port.to_string(), "--html", "/nonexistent/dir/t.html"]);
    assert_eq!(nowhere.status.code(), Some(2), "an unwritable FILE is bad input: {}", String::from_utf8_lossy(&nowhere.stderr));

    // The page, and the drawing alone (the page's legend has swatches of every
    // colour; the drawing's colours are its bars and marks only).
    let shoot = |file: &std::path::Path, name: &str| {
        let shot = dir.path().join(name);
        let chrome = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1240,420"])
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("file://{}", file.display()))
            .env("HOME", dir.path())
            .output()
            .expect("chromium (cargo xtask test installs it)");
        assert!(shot.exists(), "no screenshot of {}: {}", file.display(), String::from_utf8_lossy(&chrome.stderr));
        shot
    };
    let (page_shot, drawing_shot) = (shoot(&html, "page.png"), shoot(&svg, "drawing.png"));
    // Count the screenshot's pixels of the failed bind's red and of any strong
    // colour (the bars), with a PNG decoder in the standard library's terms.
    let check = r#"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n"
pos, idat, w = 8, b"", 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype, _, _, inter = struct.unpack(">IIBBBBB", body)
        assert depth == 8 and ctype in (2, 6) and inter == 0, (depth, ctype, inter)
        bpp = 3 if ctype == 2 else 4
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
raw, stride, prev, red, vivid = zlib.decompress(idat), w * bpp, bytearray(w * bpp), 0, 0
for y in range(h):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]; c = prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    for x in range(0, stride, bpp):
        r, g, bl = line[x], line[x + 1], line[x + 2]
        if abs(r - 0xd6) < 12 and abs(g - 0x27) < 12 and abs(bl - 0x28) < 12: red += 1
        if max(r, g, bl) - min(r, g, bl) > 90: vivid += 1
    prev = line
print(red, vivid)
"#;
    let count = |png: &std::path::Path| -> (u64, u64) {
        let out = Command::new("python3").args(["-c", check]).arg(png).output().expect("png check");
        let text = String::from_utf8_lossy(&out.stdout);
        let n: Vec<u64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        assert_eq!(n.len(), 2, "{text} {}", String::from_utf8_lossy(&out.stderr));
        (n[0], n[1])
    };
    let (red, vivid) = count(&drawing_shot);
    assert!(red >= 20, "the failed bind's red mark is not in the drawing ({red} px)");
    assert!(vivid >= 5000, "the holders' bars are not in the drawing ({vivid} px of strong colour)");
    let (_, vivid) = count(&page_shot);
    assert!(vivid >= 5000, "the page does not show the drawing ({vivid} px of strong colour)");
}

/// `check` at the start of a job: a held port is blamed in one line — who holds
/// it, the job that left it and how long ago (from the agent's history when it
/// saw the bind, else the holder's environment and age), stopped or not, and the
/// accept queue.
#[test]
fn check_blames_the_job_that_left_a_port_held() {
    require_root();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let agent = start_agent(port, &db);
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", &format!("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(64)\ncs = [socket.create_connection(('127.0.0.1', {port})) for _ in range(3)]\nprint('READY', flush=True)\ntime.sleep(60)\n")])
        .env("GITHUB_RUN_ID", "123456")
        .env("GITHUB_JOB", "smoke");
    let (leftover, _) = portwatch_tests::spawn_ready(cmd);
    kill(Pid::from_raw(leftover.pid()), Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::sleep(Duration::from_millis(800));
    kill(Pid::from_raw(agent.pid()), Signal::SIGTERM).expect("SIGTERM");
    let mut agent = agent;
    let _ = agent.0.wait();

    let p = port.to_string();
    let out = portwatch(&["check", &p, "--db", db.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("port {port} held by python3 (pid {}), left by job GITHUB_RUN_ID=123456 GITHUB_JOB=smoke ", leftover.pid());
    assert!(text.starts_with(&want), "{text}");
    assert!(text.trim_end().ends_with("s ago, state T (stopped), accept queue 3/64"), "{text}");
    // Without a history: the holder's own environment still names the job.
    let out = portwatch(&["check", &p, "--db", "/nonexistent/history.db"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&want), "{}", String::from_utf8_lossy(&out.stdout));
    kill(Pid::from_raw(leftover.pid()), Signal::SIGCONT).expect("SIGCONT");
}
