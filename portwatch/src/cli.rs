//! Command-line interface: clap definitions (doc comments are the help text) and
//! dispatch. `main.rs` only turns the outcome into an exit code.
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{
    doctor,
    error::{exit, Error, Result},
    ports::{self, PortSet},
    watch,
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))
}

/// Runs a command; returns the exit code for success and "no" answers.
pub fn execute(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Watch { ports, json, duration, count } => {
            let opts = watch::WatchOptions { ports: ports::merge(&ports), json, duration, count };
            runtime()?.block_on(watch::run(opts))?;
            Ok(exit::OK)
        }
        Command::Doctor { json } => {
            let report = doctor::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?);
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
            Command::Doctor { .. } => panic!("wrong command"),
        }
        assert!(Cli::try_parse_from(["portwatch", "watch", "-p", "0"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "watch", "-p", "abc"]).is_err());
    }
}
