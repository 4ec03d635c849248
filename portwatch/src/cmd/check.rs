//! `portwatch check`.
use crate::{
    cli::CheckArgs,
    error::{exit, Result},
    model::ports,
    output::{to_json, who::render_check},
    service::holders::{self, WhoOptions},
};

pub fn run(a: CheckArgs) -> Result<u8> {
    let ports = ports::merge(&a.ports);
    let opts = WhoOptions { tcp: a.tcp || !a.udp, udp: a.udp, prefetch: true, ..Default::default() };
    let r = holders::gather(&ports, opts)?;
    let st = holders::port_status(&ports, &r);
    if !a.quiet {
        crate::cmd::notes(&r.notes);
        if a.json {
            println!("{}", to_json(&st)?);
        } else {
            print!("{}", render_check(&st));
        }
    }
    Ok(if st.iter().all(|s| s.free) { exit::OK } else { exit::CONDITION })
}
