//! The agent's history: real binds from child processes, recorded in SQLite,
//! surviving `kill -9` of the agent and a restart.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{free_port, portwatch, require_root, spawn_python, start_logged, ChildGuard};

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

mod history {
    pub fn now_rfc3339() -> String {
        humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
    }
}
