//! Where epoch data lives. Level 1 (node-local files) is [`local`]; partner copies, XOR parity
//! and the shared file system will be siblings of it, each recorded as a [`crate::Level`] in the
//! manifest.

pub mod durable;
pub mod liveness;
pub mod local;
