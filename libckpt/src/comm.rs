//! The application's communicator: a duplicate of the one the application passed in, so that
//! its messages can never match the library's, with per-peer message counts.
//!
//! The counts are what quiescence (draining in-flight messages before a checkpoint) is built
//! on; for now they are kept and exposed, and the application must reach `poll` with no
//! message in flight.

use std::cell::RefCell;

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::point_to_point::{self as p2p, Status};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Tag;

/// A reduction operation for [`Comm::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// Sum.
    Sum,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
}

impl Reduce {
    fn op(self) -> SystemOperation {
        match self {
            Reduce::Sum => SystemOperation::sum(),
            Reduce::Min => SystemOperation::min(),
            Reduce::Max => SystemOperation::max(),
        }
    }
}

/// Messages sent to and received from each peer (point-to-point only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// `sent[p]`: messages this rank sent to rank `p`.
    pub sent: Vec<u64>,
    /// `received[p]`: messages this rank received from rank `p`.
    pub received: Vec<u64>,
}

/// The wrapped communicator handed to the application by [`crate::Checkpointer::comm`].
pub struct Comm {
    raw: SimpleCommunicator,
    counts: RefCell<Counts>,
}

impl Comm {
    pub(crate) fn new(raw: SimpleCommunicator) -> Self {
        let n = raw.size() as usize;
        Comm {
            raw,
            counts: RefCell::new(Counts {
                sent: vec![0; n],
                received: vec![0; n],
            }),
        }
    }

    /// This rank.
    pub fn rank(&self) -> i32 {
        self.raw.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> i32 {
        self.raw.size()
    }

    /// Per-peer message counts so far.
    pub fn counts(&self) -> Counts {
        self.counts.borrow().clone()
    }

    /// Blocking send of `data` to `dest` with `tag`.
    pub fn send<T: Equivalence>(&self, dest: i32, tag: Tag, data: &[T]) {
        self.raw.process_at_rank(dest).send_with_tag(data, tag);
        self.counts.borrow_mut().sent[dest as usize] += 1;
    }

    /// Blocking receive from `src` with `tag` into `buf`.
    pub fn recv_into<T: Equivalence>(&self, src: i32, tag: Tag, buf: &mut [T]) -> Status {
        let st = self
            .raw
            .process_at_rank(src)
            .receive_into_with_tag(buf, tag);
        self.counts.borrow_mut().received[st.source_rank() as usize] += 1;
        st
    }

    /// Sends `send` to `dest` and receives into `recv` from `src`, both with `tag`, without
    /// deadlock. `None` for either side skips it (e.g. at the edge of a domain).
    pub fn sendrecv<T: Equivalence>(
        &self,
        send: &[T],
        dest: Option<i32>,
        recv: &mut [T],
        src: Option<i32>,
        tag: Tag,
    ) {
        match (dest, src) {
            (Some(d), Some(s)) => {
                let dp = self.raw.process_at_rank(d);
                let sp = self.raw.process_at_rank(s);
                p2p::send_receive_into_with_tags(send, &dp, tag, recv, &sp, tag);
                let mut c = self.counts.borrow_mut();
                c.sent[d as usize] += 1;
                c.received[s as usize] += 1;
            }
            (Some(d), None) => self.send(d, tag, send),
            (None, Some(s)) => {
                self.recv_into(s, tag, recv);
            }
            (None, None) => {}
        }
    }

    /// Reduces `send` over all ranks into `recv` on every rank.
    pub fn all_reduce<T: Equivalence>(&self, send: &[T], recv: &mut [T], op: Reduce) {
        self.raw.all_reduce_into(send, recv, op.op());
    }

    /// Gathers every rank's `data` (all of the same length) at `root`, concatenated in rank
    /// order; `Some` on the root, `None` elsewhere.
    pub fn gather<T: Equivalence + Clone + Default>(
        &self,
        root: i32,
        data: &[T],
    ) -> Option<Vec<T>> {
        let proc = self.raw.process_at_rank(root);
        if self.rank() == root {
            let mut out = vec![T::default(); data.len() * self.size() as usize];
            proc.gather_into_root(data, &mut out[..]);
            Some(out)
        } else {
            proc.gather_into(data);
            None
        }
    }

    /// Blocks until every rank has called it.
    pub fn barrier(&self) {
        self.raw.barrier();
    }
}
