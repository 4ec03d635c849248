//! `portwatch who`.
use std::io::IsTerminal;

use crate::{
    agent::control::{client, proto::Request},
    cli::WhoArgs,
    error::{exit, Result},
    model::ports,
    output::{
        to_json,
        who::{remaps, render, Width},
    },
    service::{
        holders::{self, Method, WhoOptions, WhoResult},
        remap,
    },
};

pub fn run(a: WhoArgs) -> Result<u8> {
    let ports = ports::merge(&a.ports);
    let width = if a.wide || !std::io::stdout().is_terminal() { Width::Wide } else { Width::Narrow };
    // Without privilege, ask the agent (it sees every holder) when one runs.
    if !crate::cmd::is_root() && a.method != Method::Proc {
        let req = Request::Who { ports: ports.iter().collect() };
        if let Some(reply) = client::request(&client::socket_path(), &req) {
            let sockets = client::ok(reply)?.sockets.unwrap_or_default();
            if a.json {
                println!("{}", to_json(&sockets)?);
            } else {
                print!("{}", render(&ports, &WhoResult { sockets, method: "agent", ..WhoResult::default() }, width));
            }
            return Ok(exit::OK);
        }
    }
    let t0 = std::time::Instant::now();
    let mut r = holders::gather(
        &ports,
        WhoOptions { tcp: a.tcp, udp: a.udp, clients: a.clients, connections: false, method: a.method, prefetch: true },
    )?;
    r.leases = crate::service::lease::on_ports(&ports.iter().collect::<Vec<u16>>());
    crate::cmd::notes(&r.notes);
    if a.verbose {
        let phases: Vec<String> = r.phases.iter().map(|(n, ms)| format!("{n} {ms:.2} ms")).collect();
        let detail = if phases.is_empty() { String::new() } else { format!(" ({})", phases.join(", ")) };
        eprintln!("portwatch: holders found by {} in {:.2} ms{detail}", r.method, t0.elapsed().as_secs_f64() * 1e3);
    }
    if a.json {
        let mut all = r.sockets.clone();
        all.extend(r.clients.iter().cloned());
        println!("{}", to_json(&all)?);
    } else {
        print!("{}", render(&ports, &r, width));
        for line in remaps(&ports, &remap::active()) {
            println!("{line}");
        }
    }
    Ok(exit::OK)
}
