//! portwatch: who grabbed this port, is it actually serving, and can I get it back
//! safely? The library behind the `portwatch` binary.
//!
//! Data flows one way: `cli` (arguments) -> `cmd` (one module per command) ->
//! `service` (holders, reaper, readiness, ...) -> `model` (pure, typed), `sys` (the
//! OS) and `ebpf` (the kernel programs); `output` renders; `agent` is the
//! long-running event loop with its history and control socket.
pub mod agent;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod ebpf;
pub mod error;
pub mod model;
pub mod output;
pub mod service;
pub mod sys;
