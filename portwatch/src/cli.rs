//! Command-line interface: clap definitions (doc comments are the help text) and
//! dispatch. `main.rs` only turns the outcome into an exit code.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{
    agent,
    config::Config,
    doctor,
    error::{exit, Error, Result},
    free, history,
    ports::{self, PortSet},
    run, wait, watch, who,
};

#[derive(Debug, Parser)]
#[command(
    name = "portwatch",
    version,
    about = "Who grabbed this port, is it actually serving, and can I get it back safely?",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream binds (with failures), listens, accept-queue arrivals and closes as they
    /// happen, from eBPF hooks. Needs root.
    Watch {
        /// Port(s) to watch: 5050, 5050-5052, 5050,5051; repeatable. Default: all ports.
        #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Stop after this long (e.g. 30s, 5m). Default: until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Stop after printing this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Every socket bound to the port(s) and every process holding it (masters and
    /// forked workers), with accept-queue figures for listeners.
    Who {
        /// Port(s): 5050, 5050-5052, 5050,5051.
        #[arg(required = true, value_name = "PORT", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        /// Only TCP sockets.
        #[arg(long)]
        tcp: bool,
        /// Only UDP sockets.
        #[arg(long)]
        udp: bool,
        /// Also list local clients connected to the port (never holders).
        #[arg(long)]
        clients: bool,
        /// How to find holders: auto (the fastest that can answer exactly), holders
        /// (BPF iter/task pass), task-file (BPF iter/task_file pass), proc (/proc walk).
        #[arg(long, value_enum, default_value_t = who::Method::Auto)]
        method: who::Method,
        /// Print how holders were found, on stderr.
        #[arg(long, short = 'v')]
        verbose: bool,
        /// JSON array of sockets instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if every port is free to bind, 1 if any is held (and say by whom).
    Check {
        /// Port(s): 5050, 5050-5052, 5050,5051.
        #[arg(required = true, value_name = "PORT", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        /// Check UDP instead of TCP (give both flags for both).
        #[arg(long)]
        udp: bool,
        /// Check TCP (the default).
        #[arg(long)]
        tcp: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print nothing; only the exit code.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Get ports back now: SIGTERM every holder of each port (SIGCONT first to
    /// stopped ones), wait --grace, and with --force SIGKILL what remains.
    Free {
        /// Port(s): 5050, 5050-5052, 5050,5051.
        #[arg(required = true, value_name = "PORT", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        /// SIGKILL holders still alive after the grace period.
        #[arg(long)]
        force: bool,
        /// Time between SIGTERM and SIGKILL (and to wait without --force).
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        grace: Duration,
        /// Print the plan (targets, signals, reasons) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Free TCP (the default).
        #[arg(long)]
        tcp: bool,
        /// Free UDP instead (give both flags for both).
        #[arg(long)]
        udp: bool,
        /// Read the `protect` list from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reap every listener on the ports that is stuck (accept queue stalled, all
    /// holders stopped, health probe failing, bound but never listening); healthy
    /// ones are left alone. Observes for --stall first. Needs root.
    Cleanup {
        /// Port(s) to judge; repeatable. Default: the config's `ports`.
        #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// How long a condition must last (default 10s).
        #[arg(long, value_parser = parse_duration)]
        stall: Option<Duration>,
        /// Time between SIGTERM and SIGKILL (default 5s).
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// SIGKILL holders still alive after the grace period.
        #[arg(long)]
        force: bool,
        /// Print verdicts and plans; signal nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// The long-running privileged agent: follows bind/listen/accept/close events,
    /// judges listeners continuously, logs each verdict with its evidence, and reaps
    /// stuck ones with --reap. SIGTERM/SIGINT stop it and detach every hook.
    Agent {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Port(s) to watch; repeatable. Added to the config's.
        #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        #[arg(long, value_parser = parse_duration)]
        stall: Option<Duration>,
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// How often to sample sockets and holders (default 500ms).
        #[arg(long, value_parser = parse_duration)]
        interval: Option<Duration>,
        /// Reap stuck listeners (TERM, grace, KILL).
        #[arg(long)]
        reap: bool,
        /// Log what would be reaped; signal nothing.
        #[arg(long)]
        dry_run: bool,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// History database (default /var/lib/portwatch/history.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Record no history.
        #[arg(long)]
        no_history: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Control socket path (default /run/portwatch.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Serve no control socket.
        #[arg(long)]
        no_socket: bool,
        /// Control socket mode, octal (default 0660; group `portwatch` if it exists).
        #[arg(long)]
        socket_mode: Option<String>,
    },
    /// The recorded timeline of watched ports (written by the agent): binds, failed
    /// binds with their holder, listens, closes, verdicts, signals.
    History {
        /// Only this port.
        #[arg(value_parser = ports::parse_port)]
        port: Option<u16>,
        /// From this long ago (10m) or this time (2026-11-26T10:02:11Z).
        #[arg(long)]
        since: Option<String>,
        /// Up to this time.
        #[arg(long)]
        until: Option<String>,
        /// Only events of this pid.
        #[arg(long)]
        pid: Option<i32>,
        /// Who held PORT at this moment.
        #[arg(long, requires = "port")]
        at: Option<String>,
        #[arg(long)]
        json: bool,
        /// History database (default /var/lib/portwatch/history.db).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Wait until targets really serve: tcp://HOST:PORT (accepted by the application,
    /// not just queued by the kernel), http:// URLs (2xx), or a bare port.
    Wait {
        #[arg(required = true, value_name = "TARGET", value_parser = wait::clap_target)]
        targets: Vec<wait::Target>,
        /// Give up after this long.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: Duration,
        /// First retry delay (doubles up to 2s).
        #[arg(long, value_parser = parse_duration, default_value = "100ms")]
        interval: Duration,
        /// HTTP status that counts as ready (default: any 2xx).
        #[arg(long)]
        expect_status: Option<u16>,
        /// JSON result on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run a service: optionally free its ports first, start COMMAND, wait until its
    /// ports and health URLs are ready, forward SIGINT/SIGTERM, exit with its status.
    /// Nothing started under it survives it (child subreaper).
    Run {
        /// Port(s) the service must serve.
        #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        /// Health URL(s) that must answer 2xx.
        #[arg(long, value_name = "URL", value_parser = wait::clap_target)]
        health: Vec<wait::Target>,
        /// Free the ports first (TERM, grace, KILL), as `free --force`.
        #[arg(long)]
        free: bool,
        /// How long to wait for readiness.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: Duration,
        /// Time between SIGTERM and SIGKILL when stopping leftovers.
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        grace: Duration,
        /// Once ready, leave the service running under a background supervisor and
        /// exit 0; stop it later with `--stop PIDFILE`. Needs --pid-file.
        #[arg(long, requires = "pid_file")]
        detach_ready: bool,
        /// Where the background supervisor writes its pid.
        #[arg(long, value_name = "PIDFILE")]
        pid_file: Option<PathBuf>,
        /// With --detach-ready: the service's output (default: PIDFILE.log).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Stop a service started with --detach-ready: SIGTERM its supervisor, which
        /// ends every process under it, and wait.
        #[arg(long, value_name = "PIDFILE", conflicts_with_all = ["detach_ready", "command"])]
        stop: Option<PathBuf>,
        /// Internal: the pipe to report readiness on (set by --detach-ready).
        #[arg(long, hide = true)]
        ready_fd: Option<i32>,
        /// The command, after `--`.
        #[arg(last = true, required_unless_present = "stop", value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Show what this host supports (privileges, BTF, cgroup v2, each hook type,
    /// tried for real) and what portwatch will use.
    Doctor {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Parses `5s`, `250ms`, `1m30s`; a bare number means seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration '{t}': {e} (e.g. 5s, 250ms, 1m)"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The agent's control socket (PORTWATCH_SOCKET overrides the default path).
fn agent_request(req: &serde_json::Value) -> Option<serde_json::Value> {
    let path = std::env::var_os("PORTWATCH_SOCKET").map_or_else(|| PathBuf::from(crate::control::DEFAULT_SOCKET), PathBuf::from);
    crate::control::request(&path, req)
}

/// The agent's reply, or its error as ours (a denial is a missing privilege).
fn agent_ok(reply: serde_json::Value) -> Result<serde_json::Value> {
    if reply["ok"] == true {
        return Ok(reply);
    }
    let msg = reply["error"].as_str().unwrap_or("the agent refused").to_string();
    if msg.starts_with("denied") {
        Err(Error::privilege(format!("agent: {msg}"), "ask root, or free only ports your own processes hold"))
    } else {
        Err(Error::Internal(format!("agent: {msg}")))
    }
}

/// The agent's answer to `free`, one line per port.
fn render_agent_free(reports: &serde_json::Value) -> String {
    let mut out = String::new();
    for r in reports.as_array().cloned().unwrap_or_default() {
        let port = &r["port"];
        let plan = &r["plan"];
        let targets: Vec<String> = plan["targets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| format!("{} ({})", t["pid"], t["comm"].as_str().unwrap_or("?")))
            .collect();
        let line = if let Some(why) = plan["refused"].as_str() {
            format!("port {port}: refused: {why}")
        } else if plan["sockets"] == 0 {
            format!("port {port}: already free")
        } else if r["outcome"].is_null() {
            format!("port {port}: would signal {}", targets.join(", "))
        } else if r["outcome"]["freed"] == true {
            format!(
                "port {port}: freed in {} (via the agent): {}",
                free::fmt_ms(r["outcome"]["elapsed_ms"].as_u64().unwrap_or(0)),
                targets.join(", ")
            )
        } else {
            format!("port {port}: still held by {}", r["outcome"]["survivors"])
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A plain listing of the sockets the agent reported.
fn render_agent_sockets(ports: &PortSet, sockets: &serde_json::Value) -> String {
    let mut out = String::new();
    let list = sockets.as_array().cloned().unwrap_or_default();
    for port in ports.iter() {
        let here: Vec<&serde_json::Value> = list.iter().filter(|s| s["port"] == port).collect();
        if here.is_empty() {
            out.push_str(&format!("port {port}: free\n"));
            continue;
        }
        out.push_str(&format!("port {port}: {} socket(s) (from the agent)\n", here.len()));
        for s in here {
            let since = s["since"].as_str().map(|t| format!(" since {t}")).unwrap_or_default();
            let job = s["job"].as_str().map(|j| format!(" job {j}")).unwrap_or_default();
            out.push_str(&format!(
                "  {} {} {} inode {}{since}{job}\n",
                s["proto"].as_str().unwrap_or("?"),
                s["addr"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["inode"]
            ));
            for h in s["holders"].as_array().cloned().unwrap_or_default() {
                out.push_str(&format!(
                    "    pid {} ppid {} {} ({}) {} fd {}: {}\n",
                    h["pid"],
                    h["ppid"],
                    h["comm"].as_str().unwrap_or("?"),
                    h["user"].as_str().unwrap_or("?"),
                    h["state"].as_str().unwrap_or("?"),
                    h["fd"],
                    h["cmdline"].as_str().unwrap_or("")
                ));
            }
        }
    }
    out
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config> {
    path.map_or_else(|| Ok(Config::default()), Config::load)
}

/// Command-line flags override the file; ports given on the command line are added.
fn merge_flags(cfg: &mut Config, ports: &[PortSet], stall: Option<Duration>, grace: Option<Duration>, interval: Option<Duration>) {
    cfg.ports.extend(&ports::merge(ports));
    if let Some(s) = stall {
        cfg.stall = s;
    }
    if let Some(g) = grace {
        cfg.grace = g;
    }
    if let Some(i) = interval {
        cfg.interval = i;
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(tty);
    if json {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::io("starting the async runtime", e))
}

/// Runs a command; returns the exit code for success and "no" answers.
pub fn execute(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Watch { ports, json, duration, count } => {
            let opts = watch::WatchOptions { ports: ports::merge(&ports), json, duration, count };
            runtime()?.block_on(watch::run(opts))?;
            Ok(exit::OK)
        }
        Command::Who { ports, tcp, udp, clients, method, verbose, json } => {
            let proc = method == who::Method::Proc;
            let ports = ports::merge(&ports);
            // Without privilege, ask the agent (it sees every holder) when one runs.
            if !is_root() && !proc {
                if let Some(reply) = agent_request(&serde_json::json!({"cmd": "who", "ports": ports.iter().collect::<Vec<_>>()})) {
                    let sockets = agent_ok(reply)?["sockets"].clone();
                    if json {
                        println!("{}", to_json(&sockets)?);
                    } else {
                        print!("{}", render_agent_sockets(&ports, &sockets));
                    }
                    return Ok(exit::OK);
                }
            }
            let t0 = std::time::Instant::now();
            let r = who::gather(&ports, who::WhoOptions { tcp, udp, clients, method, prefetch: true })?;
            for n in &r.notes {
                eprintln!("portwatch: note: {n}");
            }
            if verbose {
                let phases: Vec<String> = r.phases.iter().map(|(n, ms)| format!("{n} {ms:.2} ms")).collect();
                let detail = if phases.is_empty() { String::new() } else { format!(" ({})", phases.join(", ")) };
                eprintln!("portwatch: holders found by {} in {:.2} ms{detail}", r.method, t0.elapsed().as_secs_f64() * 1e3);
            }
            if json {
                let mut all = r.sockets.clone();
                all.extend(r.clients.iter().cloned());
                println!("{}", to_json(&all)?);
            } else {
                print!("{}", who::render(&ports, &r));
            }
            Ok(exit::OK)
        }
        Command::Check { ports, tcp, udp, json, quiet } => {
            let ports = ports::merge(&ports);
            let opts = who::WhoOptions { tcp: tcp || !udp, udp, prefetch: true, ..Default::default() };
            let r = who::gather(&ports, opts)?;
            let st = who::port_status(&ports, &r);
            if !quiet {
                for n in &r.notes {
                    eprintln!("portwatch: note: {n}");
                }
                if json {
                    println!("{}", to_json(&st)?);
                } else {
                    print!("{}", who::render_check(&st));
                }
            }
            Ok(if st.iter().all(|s| s.free) { exit::OK } else { exit::CONDITION })
        }
        Command::Free { ports, force, grace, dry_run, tcp, udp, config, json } => {
            let cfg = load_config(config.as_deref())?;
            if !is_root() && !udp {
                let req = serde_json::json!({
                    "cmd": "free", "ports": ports::merge(&ports).iter().collect::<Vec<_>>(),
                    "force": force, "grace_ms": grace.as_millis() as u64, "dry_run": dry_run,
                });
                if let Some(reply) = agent_request(&req) {
                    let reply = agent_ok(reply)?;
                    let reports = reply["reports"].clone();
                    if json {
                        println!("{}", to_json(&reports)?);
                    } else {
                        print!("{}", render_agent_free(&reports));
                    }
                    return Ok(reply["exit_code"].as_u64().map_or(exit::INTERNAL, |c| c as u8));
                }
            }
            let opts = free::FreeOptions { force, grace, dry_run, tcp, udp, protect: cfg.protect };
            let (reports, notes) = free::run(&ports::merge(&ports), &opts)?;
            for n in &notes {
                eprintln!("portwatch: note: {n}");
            }
            if json {
                println!("{}", to_json(&reports)?);
            } else {
                print!("{}", free::render(&reports, force, grace));
            }
            Ok(free::exit_code(&reports))
        }
        Command::Cleanup { ports, config, stall, grace, force, dry_run, json } => {
            let mut cfg = load_config(config.as_deref())?;
            merge_flags(&mut cfg, &ports, stall, grace, None);
            if cfg.ports.is_empty() {
                return Err(Error::Usage("no ports: give --port or a config with `ports`".into()));
            }
            // Say what is missing before announcing the observation.
            crate::ebpf::load::preflight()?;
            if !json {
                eprintln!("portwatch: observing {} port(s) for {}", cfg.ports.len(), humantime::format_duration(cfg.stall));
            }
            let (report, code) = runtime()?.block_on(agent::cleanup(cfg.clone(), force, dry_run))?;
            if json {
                println!("{}", to_json(&report)?);
            } else {
                print!("{}", agent::render_cleanup(&report, force, cfg.grace));
            }
            Ok(code)
        }
        Command::Agent {
            config,
            ports,
            stall,
            grace,
            interval,
            reap,
            dry_run,
            log_json,
            db,
            no_history,
            metrics,
            socket,
            no_socket,
            socket_mode,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            merge_flags(&mut cfg, &ports, stall, grace, interval);
            cfg.reap |= reap;
            if db.is_some() {
                cfg.db = db;
            }
            if no_history {
                cfg.history = false;
            }
            if metrics.is_some() {
                cfg.metrics = metrics;
            }
            if socket.is_some() {
                cfg.socket = socket;
            }
            if no_socket {
                cfg.socket = None;
            }
            if let Some(m) = socket_mode {
                if u32::from_str_radix(m.trim_start_matches("0o"), 8).map_or(true, |v| v > 0o777) {
                    return Err(Error::Usage(format!("--socket-mode: '{m}' is not an octal file mode like 0660")));
                }
                cfg.socket_mode = m;
            }
            init_logging(log_json);
            runtime()?.block_on(agent::run(cfg, dry_run))?;
            Ok(exit::OK)
        }
        Command::Wait { targets, timeout, interval, expect_status, json } => {
            let opts = wait::WaitOptions { timeout, interval, expect_status, quiet: json };
            let results = runtime()?.block_on(wait::wait_all(&targets, &opts));
            if json {
                println!("{}", to_json(&results)?);
            } else {
                for r in results.iter().filter(|r| !r.ready) {
                    eprintln!("portwatch: {} not ready after {}: {}", r.target, humantime::format_duration(timeout), r.detail);
                }
            }
            Ok(if results.iter().all(|r| r.ready) { exit::OK } else { exit::CONDITION })
        }
        Command::Run { ports, health, free, timeout, grace, detach_ready, pid_file, log, stop, ready_fd, command } => {
            if let Some(pidfile) = stop {
                return run::stop(&pidfile, grace);
            }
            if detach_ready {
                let pidfile = pid_file.ok_or_else(|| Error::Usage("--detach-ready needs --pid-file".into()))?;
                return run::detach(&pidfile, log.as_deref());
            }
            let opts = run::RunOptions { ports: ports::merge(&ports), health, free, timeout, grace, command, pid_file, ready_fd };
            runtime()?.block_on(run::run(opts))
        }
        Command::History { port, since, until, pid, at, json, db } => {
            let now = history::now_ns();
            let when = |s: Option<String>| s.map(|s| history::parse_when(&s, now).map_err(Error::Usage)).transpose();
            let (since, until, at) = (when(since)?, when(until)?, when(at)?);
            let path = db.unwrap_or_else(|| history::DEFAULT_DB.into());
            let store = history::Store::open_readonly(&path)?;
            let dberr = |e: rusqlite::Error| Error::Config(format!("history database {}: {e}", path.display()));
            let rows = match (at, port) {
                (Some(t), Some(p)) => store.holders_at(p, t).map_err(dberr)?,
                _ => store.query(port, since, until, pid).map_err(dberr)?,
            };
            if json {
                println!("{}", to_json(&rows)?);
            } else if let (Some(t), Some(p)) = (at, port) {
                if rows.is_empty() {
                    println!("port {p} was not held (as far as the agent saw) at {}", history::fmt_time(t));
                } else {
                    println!("port {p} at {} was held by:", history::fmt_time(t));
                    print!("{}", history::render(&rows));
                }
            } else {
                print!("{}", history::render(&rows));
            }
            Ok(exit::OK)
        }
        Command::Doctor { json } => {
            let report = doctor::run();
            if json {
                println!("{}", to_json(&report)?);
            } else {
                print!("{}", doctor::render(&report));
            }
            Ok(report.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").unwrap_err().contains("invalid duration 'soon'"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn parses_watch_ports() {
        let cli = Cli::try_parse_from(["portwatch", "watch", "-p", "5050-5051", "--port", "8080", "--json"]).unwrap();
        match cli.command {
            Command::Watch { ports, json, .. } => {
                assert!(json);
                assert_eq!(ports::merge(&ports).iter().collect::<Vec<_>>(), vec![5050, 5051, 8080]);
            }
            _ => panic!("wrong command"),
        }
        assert!(Cli::try_parse_from(["portwatch", "watch", "-p", "0"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "watch", "-p", "abc"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "check"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "who", "70000"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "who", "5050-5052", "8080"]).is_ok());
    }
}
