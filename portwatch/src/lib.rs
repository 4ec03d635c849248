//! portwatch: who grabbed this port, is it actually serving, and can I get it back
//! safely? The library behind the `portwatch` binary.
pub mod cli;
pub mod doctor;
pub mod ebpf;
pub mod error;
pub mod model;
pub mod output;
pub mod ports;
pub mod sys;
pub mod watch;
pub mod who;
