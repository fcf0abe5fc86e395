//! Where epoch data lives. [`copies`] is the seam every level goes through (where a rank's copy
//! of an epoch is at each level, storing and removing copies); level 1 (node-local files) is
//! [`local`], with its spare recycling; [`parity`] is the erasure code of level 3 groups (pure,
//! no IO yet); [`hints`] tells the kernel what IO comes next (writeback, read-ahead).

pub mod copies;
pub mod durable;
pub mod hints;
pub mod liveness;
pub mod local;
pub mod parity;
pub mod parity_sets;
