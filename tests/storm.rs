//! Issue 6's storm: at least 100k binds per second for 10 s on a watched port while
//! the agent records history. No kernel event may be lost, no history row dropped,
//! and the agent's memory must stay bounded. (Its own test binary, so nothing else
//! runs beside it.)
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use portwatch_tests::{free_port, require_root, start_logged};

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn bind_storm_while_recording_loses_nothing() {
    require_root();
    let loadgen = std::path::Path::new(portwatch_tests::bin()).with_file_name("pw-loadgen");
    assert!(loadgen.exists(), "{} missing: cargo xtask test builds it (cargo build --release -p portwatch-loadgen)", loadgen.display());
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("storm.db");
    // Room for every row of the storm (~2M; max_events is kept at every commit).
    let cfg = dir.path().join("pw.toml");
    std::fs::write(&cfg, "max_events = 5000000\nmax_db_size = \"2GiB\"\n").expect("config");
    let port_s = port.to_string();
    let (agent, log) = start_logged(
        &["agent", "--no-socket", "--log-json", "--config", cfg.to_str().expect("utf8"), "-p", &port_s, "--db", db.to_str().expect("utf8")],
        "agent started",
    );
    let apid = agent.pid();
    let sampler = std::thread::spawn(move || {
        let mut max = 0;
        for _ in 0..130 {
            max = max.max(rss_kib(apid));
            std::thread::sleep(Duration::from_millis(100));
        }
        max
    });
    let out = Command::new(&loadgen)
        .args(["storm", "--seconds", "10", "--threads", "1", "--rate", "101000", "--port", &port_s])
        .output()
        .expect("pw-loadgen storm");
    assert!(out.status.success());
    let storm: serde_json::Value = serde_json::from_slice(&out.stdout).expect("storm json");
    let binds = storm["binds"].as_u64().expect("binds");
    let rate = storm["binds_per_sec"].as_f64().expect("rate");
    assert!(rate >= 100_000.0, "the storm itself ran at {rate}/s");
    let max_rss = sampler.join().expect("sampler");
    kill(Pid::from_raw(apid), Signal::SIGTERM).expect("SIGTERM");
    // Every log line up to and including "agent stopped", which carries the
    // kernel's lost-event count.
    let mut lines = Vec::new();
    while let Ok(l) = log.recv_timeout(Duration::from_secs(20)) {
        let done = l.contains("agent stopped");
        lines.push(l);
        if done {
            break;
        }
    }
    drop(agent);
    let stopped = lines.last().cloned().unwrap_or_default();
    assert!(stopped.contains("agent stopped"), "agent did not stop cleanly: {lines:?}");
    let v: serde_json::Value = serde_json::from_str(&stopped).expect("json log line");
    assert_eq!(v["lost_events"], 0, "kernel events lost: {stopped}");
    let dropped: Vec<&String> = lines.iter().filter(|l| l.contains("rows were dropped")).collect();
    assert!(dropped.is_empty(), "history dropped rows: {dropped:?}");
    let conn = rusqlite::Connection::open(&db).expect("open db");
    let count = |event: &str| -> u64 {
        conn.query_row("SELECT COUNT(*) FROM events WHERE event = ?1 AND port = ?2", rusqlite::params![event, port], |r| r.get::<_, i64>(0))
            .expect("count") as u64
    };
    // What the agent warned about, for a failure's message.
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("WARN") || l.contains("\"warn") || l.contains("error")).collect();
    assert_eq!(count("bind"), binds, "every bind recorded; agent warnings: {warnings:?}");
    if count("close") != binds {
        // Which sockets: bound with no close row, and where they fall in the storm.
        let unclosed: Vec<(i64, i64, i64)> = conn
            .prepare(
                "SELECT b.cookie, b.time_ns - (SELECT MIN(time_ns) FROM events WHERE event = 'bind' AND port = ?1), \
                 (SELECT MAX(time_ns) FROM events WHERE event = 'bind' AND port = ?1) - b.time_ns \
                 FROM events b WHERE b.event = 'bind' AND b.port = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM events c WHERE c.event = 'close' AND c.cookie = b.cookie) LIMIT 5",
            )
            .and_then(|mut st| st.query_map([port], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
            .unwrap_or_default();
        panic!(
            "every close recorded: {} closes for {binds} binds; unclosed (cookie, ns after the first bind, ns before the last): {unclosed:?}; agent warnings: {warnings:?}; {stopped}",
            count("close")
        );
    }
    // Bounded by the history queue (QUEUE_ROWS) and the ring buffer; the systemd unit
    // allows 128 MiB.
    assert!(max_rss < 128 * 1024, "agent RSS peaked at {max_rss} KiB");
    eprintln!("storm: {binds} binds at {rate:.0}/s, agent RSS peak {max_rss} KiB");
}
