//! `portwatch free`.
use crate::{
    agent::control::{client, proto::Request},
    cli::FreeArgs,
    error::{Error, Result},
    model::{
        plan::{self, FreeStatus, PortReport},
        ports,
    },
    output::{free::render, to_json},
    service::reaper::{self, FreeOptions},
};

pub fn run(a: FreeArgs) -> Result<u8> {
    let cfg = crate::cmd::load_config(a.config.as_deref())?;
    let ports = ports::merge(&a.ports);
    let (reports, notes) = match via_agent(&a, &ports)? {
        Some(reports) => (reports, Vec::new()),
        None => {
            let opts = FreeOptions { force: a.force, grace: a.grace, dry_run: a.dry_run, tcp: a.tcp, udp: a.udp, protect: cfg.protect };
            reaper::free(&ports, &opts, &reaper::caller_self())?
        }
    };
    crate::cmd::notes(&notes);
    // The caller may not signal a holder: one line, as for any missing privilege.
    if plan::status(&reports) == FreeStatus::Denied {
        let why = reports.iter().find_map(|r| r.plan.refused.as_ref().filter(|w| w.is_permission()).map(|w| (r.port, w.to_string())));
        let (port, why) = why.unwrap_or_default();
        return Err(Error::privilege(
            format!("port {port}: {}", crate::output::esc(&why)),
            "ask root, or free only ports your own processes hold",
        ));
    }
    if a.json {
        println!("{}", to_json(&reports)?);
    } else {
        print!("{}", render(&reports, a.force, a.grace));
    }
    Ok(reaper::exit_code(&reports))
}

/// Without privilege, the agent (when one runs) frees for us what we may signal.
fn via_agent(a: &FreeArgs, ports: &crate::model::ports::PortSet) -> Result<Option<Vec<PortReport>>> {
    if crate::cmd::is_root() || a.udp {
        return Ok(None);
    }
    let req =
        Request::Free { ports: ports.iter().collect(), force: a.force, grace_ms: Some(a.grace.as_millis() as u64), dry_run: a.dry_run };
    match client::request(&client::socket_path(), &req) {
        None => Ok(None),
        Some(reply) => Ok(Some(client::ok(reply)?.reports.unwrap_or_default())),
    }
}
