//! The agent's control socket: newline-delimited JSON over a Unix socket, the
//! caller identified by its peer credentials (SO_PEERCRED). One typed protocol
//! ([`proto`]) is spoken by the agent ([`server`]) and the CLI ([`client`]).
pub mod client;
pub mod proto;
pub mod server;
