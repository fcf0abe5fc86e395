//! The few collective operations the protocol needs, over the library's private communicator.
//!
//! Kept to plain functions of bytes and integers so that the protocol modules do not spell out
//! MPI buffer types, and so a simulated transport can stand in for them later. Every one is an
//! immediate (non-blocking) collective waited for under a [`Watch`] with a label: a rank that
//! never arrives is named and the job aborted ([`stall`]), never waited for for ever. The
//! caller passes the watch and the label, so a stall report says where it happened.

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Count;

use crate::protocol::agree::{Vote, VoteReduce};
use crate::stall::{self, Watch};

/// Names a wait: a key identical on every rank waiting in it (a directory name) and a
/// description for people. Called only on a timeout.
pub(crate) type Label<'a> = &'a dyn Fn() -> (String, String);

/// True on every rank iff `ok` is true on every rank.
pub(crate) fn all_ok(comm: &SimpleCommunicator, watch: &Watch, label: Label, ok: bool) -> bool {
    let mine = u8::from(ok);
    let mut all = 0u8;
    mpi::request::scope(|scope| {
        let req = comm.immediate_all_reduce_into(scope, &mine, &mut all, SystemOperation::min());
        stall::wait_request(comm, watch, label, req);
    });
    all == 1
}

/// Maximum of `x` over all ranks.
pub(crate) fn max_u64(comm: &SimpleCommunicator, watch: &Watch, label: Label, x: u64) -> u64 {
    let mut out = 0u64;
    mpi::request::scope(|scope| {
        let req = comm.immediate_all_reduce_into(scope, &x, &mut out, SystemOperation::max());
        stall::wait_request(comm, watch, label, req);
    });
    out
}

/// A zero-length slice with a real address. An empty `&[u8]` points at address 1, which
/// Open MPI takes for `MPI_IN_PLACE` (observed: `MPI_ERR_ARG` in `MPI_Gatherv`).
fn nonnull(bytes: &[u8]) -> &[u8] {
    static ANCHOR: [u8; 1] = [0];
    if bytes.is_empty() {
        &ANCHOR[..0]
    } else {
        bytes
    }
}

/// Gathers every rank's bytes at `root`; `Some(per-rank bytes)` on the root, `None` elsewhere.
/// Non-roots may return before the root has everything: a broadcast that follows should use
/// the same label key, so ranks waiting in either are counted together.
pub(crate) fn gather_bytes(
    comm: &SimpleCommunicator,
    watch: &Watch,
    label: Label,
    root: i32,
    bytes: &[u8],
) -> Option<Vec<Vec<u8>>> {
    let bytes = nonnull(bytes);
    let proc = comm.process_at_rank(root);
    let len = bytes.len() as Count;
    if comm.rank() != root {
        mpi::request::scope(|scope| {
            let req = proc.immediate_gather_into(scope, &len);
            stall::wait_request(comm, watch, label, req);
        });
        mpi::request::scope(|scope| {
            let req = proc.immediate_gather_varcount_into(scope, bytes);
            stall::wait_request(comm, watch, label, req);
        });
        return None;
    }
    let n = comm.size() as usize;
    let mut counts = vec![0 as Count; n];
    mpi::request::scope(|scope| {
        let req = proc.immediate_gather_into_root(scope, &len, &mut counts[..]);
        stall::wait_request(comm, watch, label, req);
    });
    let displs: Vec<Count> = counts
        .iter()
        .scan(0, |acc, &c| {
            let d = *acc;
            *acc += c;
            Some(d)
        })
        .collect();
    let total: Count = counts.iter().sum();
    // One spare byte so the receive buffer never has the dangling empty-slice address.
    let mut buf = vec![0u8; total as usize + 1];
    {
        let mut part = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
        mpi::request::scope(|scope| {
            let req = proc.immediate_gather_varcount_into_root(scope, bytes, &mut part);
            stall::wait_request(comm, watch, label, req);
        });
    }
    Some(
        counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
            .collect(),
    )
}

/// Broadcasts `bytes` from `root` (ignored elsewhere) and returns them on every rank.
pub(crate) fn bcast_bytes(
    comm: &SimpleCommunicator,
    watch: &Watch,
    label: Label,
    root: i32,
    bytes: Vec<u8>,
) -> Vec<u8> {
    let proc = comm.process_at_rank(root);
    let mut len = bytes.len() as u64;
    mpi::request::scope(|scope| {
        let req = proc.immediate_broadcast_into(scope, &mut len);
        stall::wait_request(comm, watch, label, req);
    });
    if len == 0 {
        return Vec::new();
    }
    let mut buf = if comm.rank() == root {
        bytes
    } else {
        vec![0u8; len as usize]
    };
    mpi::request::scope(|scope| {
        let req = proc.immediate_broadcast_into(scope, &mut buf[..]);
        stall::wait_request(comm, watch, label, req);
    });
    buf
}

/// A non-blocking allreduce of agreement votes (`MPI_MAX` over their encoding), one round in
/// flight at a time: started at
/// one agreement poll, completed at the next. Its buffers are allocated once and leaked, so the
/// request may outlive any borrow (MPI writes into them asynchronously).
pub struct MpiFlagReduce {
    /// Dropped only once no round is pending (see `Drop`).
    comm: std::mem::ManuallyDrop<SimpleCommunicator>,
    watch: Watch,
    rounds: u64,
    send: &'static mut [u32; 3],
    recv: &'static mut [u32; 3],
    pending: Option<Request<'static, [u32], StaticScope>>,
}

impl MpiFlagReduce {
    /// A reducer over its own duplicate of `comm`, so its rounds never match other collectives.
    pub(crate) fn new(comm: &SimpleCommunicator, watch: Watch) -> Self {
        MpiFlagReduce {
            comm: std::mem::ManuallyDrop::new(comm.duplicate()),
            watch,
            rounds: 0,
            send: Box::leak(Box::new([0; 3])),
            recv: Box::leak(Box::new([0; 3])),
            pending: None,
        }
    }
}

impl VoteReduce for MpiFlagReduce {
    fn start(&mut self, vote: Vote) {
        debug_assert!(self.pending.is_none());
        *self.send = vote.to_words();
        // SAFETY: both buffers are leaked boxes ('static) that nothing else reads or writes
        // while the request is pending: `finish` waits before reading `recv`, and `start` is
        // only called with no request pending, so `send` is not rewritten under MPI.
        let send: &'static [u32; 3] = unsafe { &*(self.send as *const [u32; 3]) };
        let recv: &'static mut [u32; 3] = unsafe { &mut *(self.recv as *mut [u32; 3]) };
        self.pending = Some(self.comm.immediate_all_reduce_into(
            StaticScope,
            &send[..],
            &mut recv[..],
            SystemOperation::max(),
        ));
    }

    fn finish(&mut self, poll: u64) -> Option<Vote> {
        let req = self.pending.take()?;
        self.rounds += 1;
        let round = self.rounds;
        let label = || {
            (
                format!("agreement-{round}"),
                format!("poll {poll} (agreement round {round})"),
            )
        };
        stall::wait_request(&self.comm, &self.watch, label, req);
        Some(Vote::from_words(*self.recv))
    }
}

impl Drop for MpiFlagReduce {
    fn drop(&mut self) {
        if let Some(mut req) = self.pending.take() {
            // Every rank started this round at the same poll count, so when the application
            // ends normally it completes at once. Freeing the communicator under a pending
            // round crashes MPI_Finalize (observed: SIGSEGV), so we wait for it, briefly.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match req.test() {
                    Ok(_) => break,
                    Err(r) if std::time::Instant::now() < deadline => {
                        req = r;
                        std::thread::yield_now();
                    }
                    Err(r) => {
                        // Some rank stopped polling early (it is failing anyway). Waiting
                        // could hang, so the round and its communicator are left to MPI.
                        // SAFETY: the round's buffers are leaked and live forever.
                        let _ = unsafe { r.into_raw() };
                        return;
                    }
                }
            }
        }
        // SAFETY: no round is pending on the communicator and it is not used after this.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.comm) };
    }
}
