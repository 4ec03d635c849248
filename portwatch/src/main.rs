use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};
use portwatch::{
    cli::{Cli, Command, OneShot},
    cmd,
    error::{exit, Result},
};

/// Runs a command; returns the exit code for success and "no" answers.
fn execute(command: Command) -> Result<u8> {
    match command {
        Command::Watch(a) => cmd::watch::run(a),
        Command::Who(a) => cmd::who::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Free(a) => cmd::free::run(a),
        Command::Cleanup(a) => cmd::cleanup::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::History(a) => cmd::history::run(a),
        Command::Wait(a) => cmd::wait::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Lease(a) => cmd::lease::run(a),
        Command::Doctor(a) => cmd::doctor::run(a),
        Command::Completions(a) => cmd::completions::run(a),
        Command::Man(a) => cmd::man::run(a),
    }
}

/// Bad input is one line: clap's first line without its "error: " prefix, and its
/// tips ("a similar subcommand exists: 'who'") in parentheses after it.
fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut line = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string();
    // "the following required arguments were not provided:" names them next.
    if line.ends_with(':') {
        if let Some(next) = lines.next() {
            line.push(' ');
            line.push_str(next);
        }
    }
    let tips: Vec<&str> = lines.filter_map(|l| l.strip_prefix("tip: ")).collect();
    if !tips.is_empty() {
        line.push_str(&format!(" (tip: {})", tips.join("; ")));
    }
    line
}

fn main() -> ExitCode {
    // `who` and `check` first through a parser that knows only them (start-up).
    let parsed = OneShot::parse_args(std::env::args_os()).map(|command| Cli { command }).map_or_else(Cli::try_parse, Ok);
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(exit::USAGE)
                }
                _ => {
                    eprintln!("portwatch: {}", one_line(&e.render().to_string()));
                    ExitCode::from(exit::USAGE)
                }
            };
        }
    };
    // One-shot commands end quietly when their reader goes away (`| head`), as
    // every Unix tool does: the default SIGPIPE action. The agent and `run` keep
    // ignoring it (a client closing the control socket must not kill the agent);
    // `watch` ends on the write error itself.
    if !matches!(cli.command, Command::Agent(_) | Command::Run(_) | Command::Watch(_)) {
        // SAFETY: restoring a signal's default action before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match execute(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("portwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
