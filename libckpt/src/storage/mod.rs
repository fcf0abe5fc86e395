//! Where epoch data lives. Level 1 (node-local files) is [`local`]; partner copies, parity
//! files and the shared file system will be siblings of it, each recorded as a [`crate::Level`]
//! in the manifest. [`parity`] is the erasure code of level 3 groups (pure, no IO yet).

pub mod durable;
pub mod liveness;
pub mod local;
pub mod parity;
