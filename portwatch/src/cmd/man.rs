//! `portwatch man --out-dir DIR` (hidden; `cargo xtask dist` runs it): one man page
//! per command (portwatch.1, portwatch-who.1, ...), generated from the clap
//! definitions (cli.rs).
use clap::CommandFactory;

use crate::{
    cli::{Cli, ManArgs},
    error::{exit, Error, Result},
};

pub fn run(a: ManArgs) -> Result<u8> {
    let dir = &a.out_dir;
    let err = |e| Error::io(format!("writing man pages into {}", dir.display()), e);
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    // The pages' date: SOURCE_DATE_EPOCH (reproducible builds set it), else today.
    let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<i64>().ok());
    let ns = epoch.map_or_else(crate::sys::clock::wall_now_ns, |s| s.saturating_mul(1_000_000_000));
    let date: String = crate::model::time::fmt_time(ns).chars().take(10).collect();
    write(&cmd, dir, &date).map_err(err)?;
    Ok(exit::OK)
}

/// `cmd`'s page and, below it, its visible subcommands' (as clap_mangen's
/// `generate_to`, with portwatch's version on every page, not only the first).
fn write(cmd: &clap::Command, dir: &std::path::Path, date: &str) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write(sub, dir, date)?;
    }
    let man =
        clap_mangen::Man::new(cmd.clone()).date(date).source(format!("portwatch {}", env!("CARGO_PKG_VERSION"))).manual("portwatch manual");
    man.generate_to(dir).map(|_| ())
}
