//! `portwatch doctor`.
use crate::{
    cli::DoctorArgs,
    error::Result,
    output::{doctor::render, to_json},
    service::doctor,
};

pub fn run(a: DoctorArgs) -> Result<u8> {
    let report = doctor::run();
    if a.json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(report.exit_code())
}
