use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};
use portwatch::{
    cli::{execute, Cli},
    error::exit,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
                    // One line: clap's first line, without its "error: " prefix.
                    let text = e.render().to_string();
                    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
                    let mut line = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string();
                    // "the following required arguments were not provided:" names them next.
                    if line.ends_with(':') {
                        if let Some(next) = lines.next() {
                            line.push(' ');
                            line.push_str(next);
                        }
                    }
                    eprintln!("portwatch: {line}");
                    ExitCode::from(exit::USAGE)
                }
            };
        }
    };
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("portwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
