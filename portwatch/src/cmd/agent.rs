//! `portwatch agent`.
use std::io::IsTerminal;

use crate::{
    agent,
    cli::AgentArgs,
    error::{exit, Error, Result},
    model::ports,
};

pub fn run(a: AgentArgs) -> Result<u8> {
    let mut cfg = crate::cmd::load_config(a.config.as_deref())?;
    cfg.merge_flags(&ports::merge(&a.ports), a.stall, a.grace, a.interval);
    cfg.reap |= a.reap;
    if a.db.is_some() {
        cfg.db = a.db;
    }
    if a.no_history {
        cfg.history = false;
    }
    if a.metrics.is_some() {
        cfg.metrics = a.metrics;
    }
    if a.socket.is_some() {
        cfg.socket = a.socket;
    }
    if a.no_socket {
        cfg.socket = None;
    }
    if let Some(m) = a.socket_mode {
        if u32::from_str_radix(m.trim_start_matches("0o"), 8).map_or(true, |v| v > 0o777) {
            return Err(Error::Usage(format!("--socket-mode: '{m}' is not an octal file mode like 0660")));
        }
        cfg.socket_mode = m;
    }
    init_logging(a.log_json);
    crate::cmd::runtime()?.block_on(agent::run(cfg, a.dry_run))?;
    Ok(exit::OK)
}

/// Logs on stderr: text (coloured on a terminal, unless NO_COLOR is set), or JSON
/// lines with typed fields (`output::log`); under systemd with stderr in the
/// journal, every line starts with its `<N>` priority and text lines carry no
/// timestamp (journald stamps them).
fn init_logging(json: bool) {
    use crate::output::log::{stderr_is_journal, JournalText, JsonFormat};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let journal = stderr_is_journal();
    let ansi = std::io::stderr().is_terminal() && !no_color && !journal;
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        b.event_format(JsonFormat { journal }).init();
    } else if journal {
        b.event_format(JournalText).init();
    } else {
        b.init();
    }
}
