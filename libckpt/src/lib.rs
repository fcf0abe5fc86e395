//! # ckpt: coordinated checkpoint/restart for MPI jobs
//!
//! An application describes its state once with [`Protect`], creates a [`Checkpointer`] on
//! every rank, restores if [`Checkpointer::restarting`], and calls [`Checkpointer::poll`] once
//! per iteration:
//!
//! ```ignore
//! let mut ck = ckpt::Checkpointer::new(&world, ckpt::Config::from_env()?)?;
//! if ck.restarting() { ck.restore(&mut state)?; }
//! while !state.done() {
//!     state.step(ck.comm());
//!     if ck.poll(&mut state)?.should_exit() { break; }
//! }
//! ```
//!
//! See `ARCHITECTURE.md` for the protocol, the on-disk format and the invariants.

#![warn(missing_docs)]

pub mod cart;
pub mod config;
pub mod env;
pub mod error;
pub mod events;
pub mod fault;
pub mod format;
pub mod hold;
pub mod identity;
pub mod levels;
pub mod manifest;
pub mod placement;
pub mod protocol;
pub mod retention;
pub mod storage;
pub mod trigger;
pub mod util;

#[cfg(feature = "mpi")]
mod background;
#[cfg(feature = "mpi")]
mod checkpointer;
#[cfg(feature = "mpi")]
pub mod collective;
#[cfg(feature = "mpi")]
mod comm;
#[cfg(feature = "mpi")]
mod commit;
#[cfg(feature = "mpi")]
mod handoff;
#[cfg(feature = "mpi")]
mod inflight;
#[cfg(feature = "mpi")]
mod recover;
#[cfg(feature = "mpi")]
mod region;
#[cfg(feature = "mpi")]
mod restore;
#[cfg(feature = "mpi")]
mod stall;
#[cfg(feature = "mpi")]
mod subcomm;
#[cfg(feature = "mpi")]
mod transport;
#[cfg(feature = "mpi")]
mod watchdog;
#[cfg(feature = "mpi")]
mod writeback;

#[cfg(feature = "mpi")]
pub use checkpointer::{Checkpointer, Poll};
#[cfg(feature = "mpi")]
pub use collective::{AllReduceRequest, Reduce, ReduceTest};
#[cfg(feature = "mpi")]
pub use comm::{
    Comm, RecvRequest, SendBuffers, SendRequest, SendTest, Source, Status, TagSel, Test,
};
#[cfg(feature = "mpi")]
pub use commit::EpochStats;
pub use config::{Config, Interval};
pub use error::{Corruption, Error, Result};
pub use manifest::{Level, Manifest};
#[cfg(feature = "mpi")]
pub use region::{Protect, Regions};
#[cfg(feature = "mpi")]
pub use restore::Restored;
#[cfg(feature = "mpi")]
pub use subcomm::SubComm;

/// Re-exported so applications can derive `Pod` for their bulk element types.
pub use bytemuck;
#[cfg(feature = "mpi")]
/// Re-exported so applications use the same MPI bindings as the library, with rsmpi's
/// `derive` feature: `#[derive(ckpt::mpi::traits::Equivalence)]` with
/// `#[mpi(crate = "::ckpt::mpi")]` (see [`collective`]), and its `user-operations` feature
/// (`ckpt::mpi::collective::UserOperation`).
pub use mpi;

/// What the protocol modules share about this rank.
#[cfg(feature = "mpi")]
pub(crate) struct Ctx {
    pub lib: mpi::topology::SimpleCommunicator,
    pub rank: i32,
    pub nranks: i32,
    pub cfg: Config,
    /// Deadline on this rank's file IO (`CKPT_IO_TIMEOUT`).
    pub io: watchdog::IoWatchdog,
}
