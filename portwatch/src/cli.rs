//! The command line: clap definitions (doc comments are the help text), one `Args`
//! struct per command. Dispatch is in `cmd`.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    model::{
        ports::{self, parse_port, PortSet},
        target::{clap_target, Target},
        time::parse_duration,
    },
    service::holders::Method,
};

/// The exit codes, for `--help` and the man page (README.md has the same table).
const EXIT_STATUS: &str = "Exit status:
  0   success; check: every port is free
  1   the answer is \"no\": check found a port held; free/cleanup left a port held; wait/run: not ready
  2   bad input: a port of 0 or 70000, a word for a number, a bad range or duration, an unknown command
  3   unreadable or invalid configuration
  4   missing privilege (root, or CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN)
  5   the host lacks something needed (BPF, BTF, cgroup v2)
  6   refused to act: a protected process, a port another holder has leased
  70  internal error

Environment: NO_COLOR (no colours), RUST_LOG (agent log filter), PORTWATCH_SOCKET (the agent's control socket).";

#[derive(Debug, Parser)]
#[command(
    name = "portwatch",
    version,
    about = "Who grabbed this port, is it actually serving, and can I get it back safely?",
    long_about = None,
    after_long_help = EXIT_STATUS
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `who` and `check` alone, for their start-up: clap builds every argument of every
/// command it is given before it parses, and the whole CLI is most of a one-shot
/// command's own start-up. `main` tries this first for `who`/`check` and takes
/// [`Cli`] for anything this does not accept (help, errors), so what is printed
/// never differs.
#[derive(Debug, Parser)]
#[command(name = "portwatch")]
pub struct OneShot {
    #[command(subcommand)]
    pub command: OneShotCommand,
}

#[derive(Debug, Subcommand)]
pub enum OneShotCommand {
    Who(WhoArgs),
    Check(CheckArgs),
}

impl OneShot {
    /// The command, when the arguments are a `who` or `check` this parser accepts.
    pub fn parse_args<I, T>(args: I) -> Option<Command>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args = args.into_iter().map(Into::into);
        let argv0 = args.next()?;
        let first = args.next()?;
        if first != "who" && first != "check" {
            return None;
        }
        let one = Self::try_parse_from([argv0, first].into_iter().chain(args)).ok()?;
        Some(match one.command {
            OneShotCommand::Who(a) => Command::Who(a),
            OneShotCommand::Check(a) => Command::Check(a),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream binds (with failures), listens, accept-queue arrivals and closes as they
    /// happen, from eBPF hooks. Needs root.
    Watch(WatchArgs),
    /// Every socket bound to the port(s) and every process holding it (masters and
    /// forked workers), with accept-queue figures for listeners.
    Who(WhoArgs),
    /// Exit 0 if every port is free to bind, 1 if any is held (and say by whom).
    Check(CheckArgs),
    /// Get ports back now: SIGTERM every holder of each port (SIGCONT first to
    /// stopped ones), wait --grace, and with --force SIGKILL what remains.
    Free(FreeArgs),
    /// Reap every listener on the ports that is stuck (accept queue stalled, all
    /// holders stopped, health probe failing, bound but never listening); healthy
    /// ones are left alone. Observes for --stall first. Needs root.
    Cleanup(CleanupArgs),
    /// The long-running privileged agent: follows bind/listen/accept/close events,
    /// judges listeners continuously, logs each verdict with its evidence, and reaps
    /// stuck ones with --reap. SIGTERM/SIGINT stop it and detach every hook.
    Agent(AgentArgs),
    /// The recorded timeline of watched ports (written by the agent): binds, failed
    /// binds with their holder, listens, closes, verdicts, signals.
    History(HistoryArgs),
    /// Wait until targets really serve: HOST:PORT or tcp://HOST:PORT (accepted by the
    /// application, not just queued by the kernel), http:// URLs (2xx), or a bare
    /// port; then, with `-- COMMAND`, run COMMAND.
    Wait(WaitArgs),
    /// Run a service: fail at once if its ports are held (or free them with --free),
    /// start COMMAND, wait until its own processes serve the ports and health URLs,
    /// forward SIGINT/SIGTERM, and exit with its status. When COMMAND exits, what it
    /// left is ended (its own cgroup, and the child subreaper).
    Run(RunArgs),
    /// Port leases: while a lease holds a port, binds to it from outside the
    /// holder's cgroup fail at once in the kernel (EADDRINUSE; EPERM before Linux
    /// 5.18). `run --lease` takes them for a run; these are for operators.
    Lease(LeaseArgs),
    /// Show what this host supports (privileges, BTF, cgroup v2, each hook type,
    /// tried for real) and what portwatch will use.
    Doctor(DoctorArgs),
    /// Print the shell completion script for SHELL on stdout, e.g.
    /// `portwatch completions bash > /etc/bash_completion.d/portwatch`.
    Completions(CompletionsArgs),
    /// Write the man pages (portwatch.1, portwatch-COMMAND.1) into a directory.
    #[command(hide = true)]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Port(s) to watch: 5050, 5050-5052, 5050,5051; repeatable. Default: all ports.
    #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (e.g. 30s, 5m). Default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after printing this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Also show each connection the kernel completes into a listener's accept queue
    /// (`accept` events). Off by default: on a busy port that is one event per
    /// connection; the agent only needs the kernel's count.
    #[arg(long)]
    pub accepts: bool,
}

#[derive(Debug, Args)]
pub struct WhoArgs {
    /// Port(s): 5050, 5050-5052, 5050,5051.
    #[arg(required = true, value_name = "PORT", value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// Only TCP sockets.
    #[arg(long)]
    pub tcp: bool,
    /// Only UDP sockets.
    #[arg(long)]
    pub udp: bool,
    /// Also list local clients connected to the port (never holders).
    #[arg(long)]
    pub clients: bool,
    /// How to find holders: auto (the fastest that can answer exactly), holders
    /// (BPF iter/task pass), task-file (BPF iter/task_file pass), proc (/proc walk).
    #[arg(long, value_enum, default_value_t = Method::Auto)]
    pub method: Method,
    /// Print how holders were found, on stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// JSON array of sockets instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Show whole command lines (the default when stdout is not a terminal).
    #[arg(long, short = 'w')]
    pub wide: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Port(s): 5050, 5050-5052, 5050,5051.
    #[arg(required = true, value_name = "PORT", value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// Check UDP instead of TCP (give both flags for both).
    #[arg(long)]
    pub udp: bool,
    /// Check TCP (the default).
    #[arg(long)]
    pub tcp: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print nothing; only the exit code.
    #[arg(short, long)]
    pub quiet: bool,
    /// Free only if a bind without SO_REUSEADDR would succeed (default: free if a
    /// server that sets SO_REUSEADDR, as most do, could bind it on every address).
    #[arg(long)]
    pub strict: bool,
    /// The agent's history database, for which job left a holder and since when
    /// (default /var/lib/portwatch/history.db; unused when unreadable).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FreeArgs {
    /// Port(s): 5050, 5050-5052, 5050,5051.
    #[arg(required = true, value_name = "PORT", value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// SIGKILL holders still alive after the grace period.
    #[arg(long)]
    pub force: bool,
    /// Time between SIGTERM and SIGKILL (and to wait without --force).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub grace: Duration,
    /// Print the plan (targets, signals, reasons) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Free TCP (the default).
    #[arg(long)]
    pub tcp: bool,
    /// Free UDP instead (give both flags for both).
    #[arg(long)]
    pub udp: bool,
    /// Read the `protect` list from this config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Port(s) to judge; repeatable. Default: the config's `ports`.
    #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// Configuration file (TOML): ports, stall, grace, protect list, probes.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long a condition must last (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub stall: Option<Duration>,
    /// Time between SIGTERM and SIGKILL (default 5s).
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// SIGKILL holders still alive after the grace period.
    #[arg(long)]
    pub force: bool,
    /// Print verdicts and plans; signal nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON report (verdicts, plans, outcomes) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only end what killed `run`s left behind (their cgroups); no ports needed.
    /// Without it, cleanup does this first and then judges the ports.
    #[arg(long, conflicts_with_all = ["ports", "stall"])]
    pub runs: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Port(s) to watch; repeatable. Added to the config's.
    #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// How long a condition must last before a listener is stuck (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub stall: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when reaping (default 5s).
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// How often to sample sockets and holders (default 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Reap stuck listeners (TERM, grace, KILL).
    #[arg(long)]
    pub reap: bool,
    /// Log what would be reaped; signal nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// History database (default /var/lib/portwatch/history.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Record no history.
    #[arg(long)]
    pub no_history: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Control socket path (default /run/portwatch/portwatch.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Serve no control socket.
    #[arg(long)]
    pub no_socket: bool,
    /// Control socket mode, octal (default 0660; group `portwatch` if it exists).
    #[arg(long)]
    pub socket_mode: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this port.
    #[arg(value_parser = parse_port)]
    pub port: Option<u16>,
    /// From this long ago (10m or -10m), `now`, or this time: UTC
    /// (2026-11-26T10:02:11Z), with an offset (2026-11-26T12:02:11+02:00), or local
    /// (2026-11-26 12:02:11).
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Up to this time (same forms as --since).
    #[arg(long, allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Only events of this pid.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Who held PORT at this moment (same forms as --since: now, -10m, a time).
    #[arg(long, requires = "port", allow_hyphen_values = true)]
    pub at: Option<String>,
    /// Network namespace: `own` (this command's, the default), `all`, or a
    /// namespace cookie (the `netns` of a JSON row).
    #[arg(long, value_name = "own|all|COOKIE", default_value = "own", value_parser = parse_netns)]
    pub netns: NetnsChoice,
    /// JSON array of rows instead of text.
    #[arg(long, conflicts_with_all = ["html", "svg"])]
    pub json: bool,
    /// Write the timeline as a self-contained HTML page to FILE: a lane per port,
    /// a bar per holder (coloured by CI job or process), marks for failed binds,
    /// verdicts, signals and reaps; hover for details.
    #[arg(long, value_name = "FILE", conflicts_with = "at")]
    pub html: Option<PathBuf>,
    /// Write the timeline as an SVG picture to FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "at")]
    pub svg: Option<PathBuf>,
    /// History database (default /var/lib/portwatch/history.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

/// Which network namespace's history `history` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsChoice {
    Own,
    All,
    Cookie(u64),
}

fn parse_netns(s: &str) -> std::result::Result<NetnsChoice, String> {
    match s {
        "own" => Ok(NetnsChoice::Own),
        "all" => Ok(NetnsChoice::All),
        _ => s
            .parse::<u64>()
            .ok()
            .filter(|&c| c != 0)
            .map(NetnsChoice::Cookie)
            .ok_or_else(|| format!("'{s}' is not own, all or a namespace cookie (a positive number)")),
    }
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// What to wait for: tcp://HOST:PORT, http://HOST:PORT/PATH, or a bare port
    /// (tcp://127.0.0.1:PORT).
    #[arg(required = true, value_name = "TARGET", value_parser = clap_target)]
    pub targets: Vec<Target>,
    /// Give up after this long.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// First retry delay (doubles up to 2s).
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub interval: Duration,
    /// HTTP status(es) that count as ready: 200, or 200,204,302; repeatable
    /// (default: any 2xx).
    #[arg(long, value_name = "CODES", value_delimiter = ',', value_parser = parse_status_code)]
    pub expect_status: Vec<u16>,
    /// JSON result on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run this once every target is ready, and exit with its status (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// An HTTP status code, 100 to 599.
fn parse_status_code(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(c) if (100..=599).contains(&c) => Ok(c),
        _ => Err(format!("'{s}' is not an HTTP status code (100 to 599)")),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Port(s) the service must serve.
    #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// Health URL(s) that must answer 2xx.
    #[arg(long, value_name = "URL", value_parser = clap_target)]
    pub health: Vec<Target>,
    /// Free the ports first (TERM, grace, KILL), as `free --force`.
    #[arg(long)]
    pub free: bool,
    /// The command is a launcher that daemonizes (systemd's Type=forking): its exit
    /// with status 0 hands the service over to what it started, and the run lasts
    /// until none of that is left. Without it, the command's exit ends the run.
    #[arg(long)]
    pub forking: bool,
    /// How long to wait for readiness.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping leftovers.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub grace: Duration,
    /// Once ready, leave the service running under a background supervisor and
    /// exit 0; stop it later with `--stop PIDFILE`. Needs --pid-file.
    #[arg(long, requires = "pid_file")]
    pub detach_ready: bool,
    /// Where the background supervisor writes its pid.
    #[arg(long, value_name = "PIDFILE")]
    pub pid_file: Option<PathBuf>,
    /// With --detach-ready: the service's output (default: PIDFILE.log).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// With --detach-ready: print the readiness report as one JSON object on stdout
    /// (ready, supervisor_pid, pid_file, log, elapsed_ms, error).
    #[arg(long, requires = "detach_ready")]
    pub json: bool,
    /// Stop a service started with --detach-ready: SIGTERM its supervisor, which
    /// ends every process under it, and wait.
    #[arg(long, value_name = "PIDFILE", conflicts_with_all = ["detach_ready", "command"])]
    pub stop: Option<PathBuf>,
    /// Lease the ports to this run while it lasts: a bind to one of them from
    /// outside the run's processes fails at once (and is reported), so nothing can
    /// take them between runs' steps or while the service restarts. The lease ends
    /// with the run, also when the run is killed. Needs root and cgroup v2.
    #[arg(long, requires = "ports")]
    pub lease: bool,
    /// Give the job its own copy of the ports (-p): its binds to them go to free
    /// real ports chosen for this run, its connects to them on this host
    /// (127.0.0.1, ::1) reach those, and getsockname/getpeername show the port it
    /// asked for. Other jobs see their own. TCP and UDP; needs root and cgroup v2.
    /// Clients outside the job reach the real port only (see README).
    #[arg(long, requires = "ports")]
    pub isolate_ports: bool,
    /// Internal: the pipe to report readiness on (set by --detach-ready).
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
    /// The command, after `--`.
    #[arg(last = true, required_unless_present = "stop", value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    pub action: LeaseAction,
}

#[derive(Debug, Subcommand)]
pub enum LeaseAction {
    /// Every lease: port, holder (a run or an operator), cgroup, refused binds.
    /// As root it also removes stale ones (their holder is gone).
    List {
        /// Only these port(s).
        #[arg(value_name = "PORT", value_parser = ports::clap_port_spec)]
        ports: Vec<PortSet>,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lease port(s) to a cgroup until `lease drop` (root only).
    Add(LeaseGrant),
    /// Lease port(s) to a cgroup for as long as this command runs (until SIGTERM
    /// or SIGINT; also when it is killed), printing each refused bind (root only).
    /// For a CI job: start it in the background at the job's start.
    Hold(LeaseGrant),
    /// Drop leases (root only): binds to the ports work again at once.
    Drop {
        /// Port(s) whose leases to drop.
        #[arg(short, long = "port", value_name = "PORTS", value_parser = ports::clap_port_spec, required_unless_present_any = ["holder", "all"])]
        ports: Vec<PortSet>,
        /// Every lease of this holder (as `lease list` names it).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["ports", "all"])]
        holder: Option<String>,
        /// Every lease.
        #[arg(long, conflicts_with = "ports")]
        all: bool,
    },
}

/// Which ports, to which cgroup (`lease add`, `lease hold`).
#[derive(Debug, Args)]
pub struct LeaseGrant {
    /// Port(s) to lease: 5050, 5050-5052, 5050,5051; repeatable.
    #[arg(short, long = "port", value_name = "PORTS", required = true, value_parser = ports::clap_port_spec)]
    pub ports: Vec<PortSet>,
    /// The cgroup v2 directory whose processes may bind them, e.g.
    /// /sys/fs/cgroup/system.slice/myservice.service.
    #[arg(long, value_name = "DIR", required_unless_present = "pid", conflicts_with = "pid")]
    pub cgroup: Option<PathBuf>,
    /// The cgroup of this process instead.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_ports() {
        let cli = Cli::try_parse_from(["portwatch", "watch", "-p", "5050-5051", "--port", "8080", "--json"]).unwrap();
        match cli.command {
            Command::Watch(WatchArgs { ports, json, .. }) => {
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

    /// Every argument a user can give has help text (the man pages and completions
    /// are generated from it); only hidden ones and `run`'s trailing command are
    /// exempt.
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "command" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "portwatch", &mut missing);
        assert!(missing.is_empty(), "arguments without help text: {missing:?}");
        cmd.debug_assert();
    }

    #[test]
    fn one_shot_parser_agrees_with_the_full_one() {
        let cases: &[&[&str]] = &[
            &["who", "5050"],
            &["who", "5050-5052,8080", "--json", "-v", "--tcp"],
            &["who", "--method", "proc", "--clients", "-w", "5050"],
            &["check", "5050"],
            &["check", "-q", "--udp", "--tcp", "--strict", "--json", "5050,5051"],
            &["check", "--db", "/var/tmp/h.db", "5050"],
        ];
        for case in cases {
            let argv: Vec<&str> = std::iter::once("portwatch").chain(case.iter().copied()).collect();
            let full = Cli::try_parse_from(&argv).unwrap().command;
            let one = OneShot::parse_args(&argv).unwrap_or_else(|| panic!("not taken: {argv:?}"));
            assert_eq!(format!("{one:?}"), format!("{full:?}"), "{argv:?}");
        }
        // Help, errors and other commands are left to the full parser.
        let declined: &[&[&str]] = &[
            &["who", "--help"],
            &["who", "-h"],
            &["check", "--version"],
            &["who"],
            &["who", "0"],
            &["who", "abc"],
            &["check", "--bogus", "5050"],
            &["watch"],
            &["--version"],
            &[],
        ];
        for case in declined {
            let argv: Vec<&str> = std::iter::once("portwatch").chain(case.iter().copied()).collect();
            assert!(OneShot::parse_args(&argv).is_none(), "{argv:?}");
        }
    }

    #[test]
    fn parses_completions_and_man() {
        let cli = Cli::try_parse_from(["portwatch", "completions", "zsh"]).unwrap();
        assert!(matches!(cli.command, Command::Completions(CompletionsArgs { shell: clap_complete::Shell::Zsh })));
        assert!(Cli::try_parse_from(["portwatch", "completions", "tcsh"]).is_err());
        assert!(Cli::try_parse_from(["portwatch", "man", "--out-dir", "/tmp/x"]).is_ok());
    }
}
