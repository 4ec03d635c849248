//! `portwatch check`.
use crate::{
    cli::CheckArgs,
    error::{exit, Result},
    model::ports,
    output::{to_json, who::render_check},
    service::holders::{self, Strictness},
};

pub fn run(a: CheckArgs) -> Result<u8> {
    let ports = ports::merge(&a.ports);
    let strict = if a.strict { Strictness::Strict } else { Strictness::ReuseAddr };
    let (st, notes) = holders::check(&ports, a.tcp || !a.udp, a.udp, strict)?;
    if !a.quiet {
        crate::cmd::notes(&notes);
        if a.json {
            println!("{}", to_json(&st)?);
        } else {
            print!("{}", render_check(&st));
        }
    }
    Ok(if st.iter().all(|s| s.free) { exit::OK } else { exit::CONDITION })
}
