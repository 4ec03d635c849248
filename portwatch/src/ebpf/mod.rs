//! Loading the kernel programs and decoding what they send.
pub mod btf;
pub mod events;
pub mod iter;
pub mod load;

pub use load::{HookStatus, Observer, ObserverOptions};
