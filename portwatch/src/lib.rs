//! portwatch: who grabbed this port, is it actually serving, and can I get it back
//! safely? The library behind the `portwatch` binary.
pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod doctor;
pub mod ebpf;
pub mod error;
pub mod free;
pub mod history;
pub mod metrics;
pub mod model;
pub mod output;
pub mod ports;
pub mod probe;
pub mod reap;
pub mod run;
pub mod sys;
pub mod verdict;
pub mod wait;
pub mod watch;
pub mod who;
