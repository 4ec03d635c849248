//! `portwatch check`.
use crate::{
    agent::history::store::Store,
    cli::CheckArgs,
    config::DEFAULT_DB,
    error::{exit, Result},
    model::ports,
    output::{blame, to_json},
    service::{
        blame::blame,
        holders::{self, Strictness},
        remap,
    },
};

pub fn run(a: CheckArgs) -> Result<u8> {
    let ports = ports::merge(&a.ports);
    let (tcp, udp) = (a.tcp || !a.udp, a.udp);
    let strict = if a.strict { Strictness::Strict } else { Strictness::ReuseAddr };
    // Inside an isolated job (`run --isolate-ports`) its ports are the real ones.
    let map = if crate::cmd::is_root() { remap::inherited() } else { crate::model::remap::PortMap::default() };
    let real: ports::PortSet = ports.iter().map(|p| map.real(p)).collect();
    let holders::CheckResult { statuses: mut st, notes, mut sockets } = holders::check(&real, tcp, udp, strict)?;
    for s in &mut st {
        s.port = map.virtual_of(s.port);
    }
    for s in &mut sockets {
        s.port = map.virtual_of(s.port);
    }
    if !a.quiet {
        crate::cmd::notes(&notes);
        if a.json {
            println!("{}", to_json(&st)?);
        } else {
            // A held port: who is in the way, which job left it and how long ago
            // (the agent's history, when readable), stopped or not, its queue.
            let blames = if st.iter().all(|s| s.free) || !crate::cmd::is_root() {
                Vec::new()
            } else {
                let store = Store::open_readonly(a.db.as_deref().unwrap_or(DEFAULT_DB.as_ref())).ok();
                let lookup = |cookie: u64| {
                    let row = store.as_ref()?.first_seen(cookie).ok()??;
                    Some((row.time_ns, row.job.as_deref().map(str::to_owned)))
                };
                blame(&sockets, &lookup)
            };
            print!("{}", blame::render(&st, &blames));
        }
    }
    Ok(if st.iter().all(|s| s.free) { exit::OK } else { exit::CONDITION })
}
