//! `portwatch completions SHELL`: the completion script, generated from the clap
//! definitions (cli.rs), so it always matches the commands and flags.
use std::io::Write;

use clap::CommandFactory;

use crate::{
    cli::{Cli, CompletionsArgs},
    error::{exit, Error, Result},
};

pub fn run(a: CompletionsArgs) -> Result<u8> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut visible(&Cli::command()), "portwatch", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => Ok(exit::OK),
        // `portwatch completions bash | head`: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(Error::io("stdout", e)),
    }
}

/// `cmd` without its hidden arguments and subcommands (clap_complete's generators
/// offer those too): completions offer what `--help` shows.
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_string());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(v) = cmd.get_version() {
        out = out.version(v.to_string());
    }
    out = out.args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned());
    out.subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(visible))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_arguments_and_commands_are_not_offered() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut visible(&Cli::command()), "portwatch", &mut script);
            let text = String::from_utf8_lossy(&script);
            assert!(!text.contains("ready-fd") && !text.contains("out-dir"), "{shell}");
            assert!(text.contains("detach-ready") && text.contains("completions") && text.contains("wide"), "{shell}");
        }
    }
}
