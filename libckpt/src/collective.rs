//! Collectives on the application's communicator ([`Comm`]).
//!
//! # One element-type story
//! Point-to-point calls take [`bytemuck::Pod`] elements: a message is bytes behind the
//! library's 16-byte envelope, moved, logged at a checkpoint and replayed as bytes, so any
//! plain-old-data type travels as it is. Collectives take rsmpi's [`Equivalence`] types: they
//! carry no envelope and are MPI's own operations over MPI datatypes, which a reduction needs
//! (MPI adds `f64`s, not bytes). A struct of such fields gets `Equivalence` by derive through
//! the re-export (the `mpi(crate = ...)` attribute points the derive at it):
//!
//! ```no_run
//! use ckpt::mpi::traits::Equivalence;
//!
//! #[derive(Equivalence, Clone, Copy, Default, Debug)]
//! #[mpi(crate = "::ckpt::mpi")]
//! struct Particle {
//!     x: [f64; 3],
//!     id: u32,
//! }
//!
//! fn everyone(comm: &ckpt::Comm, mine: Particle) -> ckpt::Result<Vec<Particle>> {
//!     comm.all_gather(&[mine])
//! }
//! ```
//!
//! The bridge: a `Pod` type that is not `Equivalence` can use the collectives that only move
//! data, as bytes: [`Comm::broadcast_pod`], [`Comm::gather_pod`], [`Comm::all_gather_pod`] (the
//! others through `bytemuck::cast_slice::<T, u8>`, `u8` being `Equivalence`). Reductions and
//! scans have no byte variant: MPI must know the element type to compute with it.
//!
//! # Semantics
//! - Collectives run on the application's communicator, with MPI's rules: every rank calls the
//!   same collectives in the same order, with the same root, counts and operation. Each call
//!   blocks as its MPI counterpart does, with no deadline: a rank that never comes leaves the
//!   others waiting, as in MPI (the library's own waits have deadlines; the application's do
//!   not).
//! - Arguments are checked on each rank before MPI is called: buffer lengths, the root, counts.
//!   A refused call returns [`Error::Usage`] without entering MPI; the other ranks may already
//!   wait in it, so the error is not recoverable: abort. What one rank cannot see (another
//!   rank's length or counts) is MPI's to check, and OpenMPI's default error handler aborts the
//!   job.
//! - Collectives carry no envelope and are never logged. None can be in flight at a checkpoint:
//!   every rank calls `poll` outside any collective, and an [`AllReduceRequest`] borrows the
//!   `Comm`, so `poll` (which borrows the `Checkpointer` mutably) cannot be called until it is
//!   completed: the borrow checker refuses it.
//!
//!   ```compile_fail
//!   use ckpt::{Checkpointer, Protect, Reduce, Regions};
//!   struct S;
//!   impl Protect for S {
//!       fn protect(&mut self, _: &mut Regions<'_>) {}
//!   }
//!   fn step(ck: &mut Checkpointer, s: &mut S) -> ckpt::Result<f64> {
//!       let sum = ck.comm().iall_reduce(&[1.0f64], Reduce::Sum)?;
//!       ck.poll(s)?; // refused: `sum` still borrows the communicator
//!       Ok(sum.wait()[0])
//!   }
//!   ```
//! - Once `poll` returned `should_exit()`, collectives fail as sends and receives do ("the job
//!   is stopping"). Every rank got `should_exit()` at the same poll, so all refuse alike.
//!
//! # Reductions
//! Every reduction takes an [`Operation`]: a built-in [`Reduce`], or a user-defined
//! `&ckpt::mpi::collective::UserOperation` (one per rank, the same on every rank). A user
//! operation must be associative; create it with `UserOperation::commutative` only when the
//! order of its operands does not matter, else with `UserOperation::associative`, and MPI then
//! combines the ranks' values in rank order (what [`Comm::scan`] always does). Its closure must
//! not panic (the job aborts) and must not call the library.

use std::fmt::Display;

use bytemuck::Pod;
use mpi::collective::{Operation, SystemOperation};
use mpi::datatype::{Equivalence, Partition, PartitionMut};
use mpi::raw::AsRaw;
use mpi::traits::*;
use mpi::Count;

use crate::comm::Comm;
use crate::error::{Error, Result};

/// A built-in reduction, for [`Comm::reduce`], [`Comm::all_reduce`], [`Comm::scan`] and the
/// others. MPI defines which element types each one applies to (arithmetic ones to numbers,
/// logical ones to integers and `bool`, bitwise ones to integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// Sum.
    Sum,
    /// Product.
    Prod,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Logical and (non-zero is true).
    LogicalAnd,
    /// Logical or.
    LogicalOr,
    /// Logical exclusive or.
    LogicalXor,
    /// Bitwise and.
    BitAnd,
    /// Bitwise or.
    BitOr,
    /// Bitwise exclusive or.
    BitXor,
}

impl Reduce {
    fn system(self) -> SystemOperation {
        match self {
            Reduce::Sum => SystemOperation::sum(),
            Reduce::Prod => SystemOperation::product(),
            Reduce::Min => SystemOperation::min(),
            Reduce::Max => SystemOperation::max(),
            Reduce::LogicalAnd => SystemOperation::logical_and(),
            Reduce::LogicalOr => SystemOperation::logical_or(),
            Reduce::LogicalXor => SystemOperation::logical_xor(),
            Reduce::BitAnd => SystemOperation::bitwise_and(),
            Reduce::BitOr => SystemOperation::bitwise_or(),
            Reduce::BitXor => SystemOperation::bitwise_xor(),
        }
    }
}

// SAFETY: the handle is one of MPI's predefined operations, valid for the life of MPI.
unsafe impl AsRaw for Reduce {
    type Raw = mpi::ffi::MPI_Op;
    fn as_raw(&self) -> Self::Raw {
        self.system().as_raw()
    }
}

impl Operation for Reduce {}

/// Displacements and the total of one rank's `counts`, as MPI takes them.
struct Layout {
    counts: Vec<Count>,
    displs: Vec<Count>,
    total: usize,
}

/// The argument checks of one collective call on one rank: pure, so they are tested without
/// MPI.
struct Args {
    call: &'static str,
    rank: i32,
    size: i32,
    /// For errors: the job rank, and the communicator's index (0: the root one).
    named: (i32, usize),
}

impl Args {
    /// The checks of `call` by `rank` of `size` on a communicator (`named`: the job rank and
    /// the communicator's index, for errors); refuses it at once when the job is stopping
    /// (`stopped`).
    fn new(
        call: &'static str,
        (rank, size): (i32, i32),
        named: (i32, usize),
        stopped: Option<&str>,
    ) -> Result<Args> {
        let a = Args {
            call,
            rank,
            size,
            named,
        };
        match stopped {
            Some(why) => Err(a.refuse(format!("refused: {why}"))),
            None => Ok(a),
        }
    }

    fn refuse(&self, what: impl Display) -> Error {
        let what = match self.named.1 {
            0 => format!("{}: {what}", self.call),
            i => format!(
                "communicator #{i} (rank {} of {}): {}: {what}",
                self.rank, self.size, self.call
            ),
        };
        Error::Usage {
            rank: self.named.0,
            what,
        }
    }

    fn root(&self, root: i32) -> Result<()> {
        if (0..self.size).contains(&root) {
            Ok(())
        } else {
            Err(self.refuse(format!(
                "root {root} does not exist (ranks 0..{})",
                self.size - 1
            )))
        }
    }

    fn count(&self, what: &str, n: usize) -> Result<Count> {
        Count::try_from(n).map_err(|_| {
            self.refuse(format!(
                "{what} of {n} elements is more than MPI can count ({})",
                Count::MAX
            ))
        })
    }

    fn same_len(&self, send: usize, recv: usize) -> Result<()> {
        if send == recv {
            self.count("a buffer", send).map(drop)
        } else {
            Err(self.refuse(format!(
                "send has {send} elements but recv {recv}; they must be equal"
            )))
        }
    }

    /// The length of `size` blocks of `block` elements, which MPI must be able to count.
    fn times_size(&self, what: &str, block: usize) -> Result<usize> {
        let n = block.saturating_mul(self.size as usize);
        self.count(what, n).map(|_| n)
    }

    /// Checks that `len` elements are `size` blocks of `block` elements.
    fn blocks(&self, what: &str, len: usize, block: usize) -> Result<()> {
        let want = block.checked_mul(self.size as usize);
        if want == Some(len) {
            self.count(what, len).map(drop)
        } else {
            Err(self.refuse(format!(
                "{what} has {len} elements, but {} ranks x {block} elements are expected",
                self.size
            )))
        }
    }

    /// Checks that `len` elements split into `size` equal blocks.
    fn multiple(&self, what: &str, len: usize) -> Result<()> {
        if len % self.size as usize == 0 {
            Ok(())
        } else {
            Err(self.refuse(format!(
                "{what} have {len} elements, not a multiple of the {} ranks",
                self.size
            )))
        }
    }

    /// Checks `counts` (one per rank) and lays them out one after the other.
    fn layout(&self, name: &str, counts: &[usize]) -> Result<Layout> {
        if counts.len() != self.size as usize {
            return Err(self.refuse(format!(
                "{name} has {} entries; it needs one per rank ({})",
                counts.len(),
                self.size
            )));
        }
        let mut l = Layout {
            counts: Vec::with_capacity(counts.len()),
            displs: Vec::with_capacity(counts.len()),
            total: 0,
        };
        let sum = format!("the sum of {name}");
        for &c in counts {
            l.displs.push(self.count(&sum, l.total)?);
            l.counts.push(self.count(name, c)?);
            l.total = l.total.saturating_add(c);
        }
        self.count(&sum, l.total)?;
        Ok(l)
    }

    /// Checks that this rank's entry of `counts` is `mine`.
    fn my_count(&self, name: &str, counts: &[usize], mine: usize) -> Result<()> {
        match counts.get(self.rank as usize) {
            Some(&c) if c == mine => Ok(()),
            c => Err(self.refuse(format!(
                "{name}[{}] is {} but this rank's buffer has {mine} elements",
                self.rank,
                c.map_or("missing".to_owned(), |c| c.to_string())
            ))),
        }
    }

    /// Checks that `len` elements match the `total` of `name`.
    fn total(&self, what: &str, len: usize, name: &str, total: usize) -> Result<()> {
        if len == total {
            Ok(())
        } else {
            Err(self.refuse(format!(
                "{what} has {len} elements but {name} add up to {total}"
            )))
        }
    }

    /// The root's buffer, which it must pass.
    fn at_root<B>(&self, what: &str, buf: Option<B>) -> Result<B> {
        buf.ok_or_else(|| self.refuse(format!("the root must pass Some({what})")))
    }

    fn as_bytes<'a, T: Pod>(&self, data: &'a [T]) -> Result<&'a [u8]> {
        if std::mem::size_of::<T>() == 0 {
            return Err(self.refuse("a zero-sized element type has no bytes to move"));
        }
        bytemuck::try_cast_slice(data).map_err(|e| self.refuse(e))
    }
}

impl Comm {
    /// The checks of collective `call` on this rank, under the stop rule of sends and receives.
    fn args(&self, call: &'static str) -> Result<Args> {
        let named = (self.world_rank(), self.index());
        let stopped = self.books.borrow().ep.stopped().map(str::to_owned);
        Args::new(call, (self.rank, self.size), named, stopped.as_deref())
    }

    /// Blocks until every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.args("barrier")?;
        self.raw.barrier();
        Ok(())
    }

    /// Broadcasts `buf` from `root` to every rank (each passes a buffer of the same length).
    pub fn broadcast<T: Equivalence>(&self, root: i32, buf: &mut [T]) -> Result<()> {
        let a = self.args("broadcast")?;
        a.root(root)?;
        a.count("a buffer", buf.len())?;
        self.raw.process_at_rank(root).broadcast_into(buf);
        Ok(())
    }

    /// [`Comm::broadcast`] of plain-old-data, as bytes.
    pub fn broadcast_pod<T: Pod>(&self, root: i32, buf: &mut [T]) -> Result<()> {
        let a = self.args("broadcast")?;
        let bytes: &mut [u8] = bytemuck::try_cast_slice_mut(buf).map_err(|e| a.refuse(e))?;
        self.broadcast(root, bytes)
    }

    /// Reduces `send` (the same length on every rank) element-wise with `op` into `recv` on
    /// `root`, which must pass `Some` of the same length; other ranks' `recv` is not touched
    /// (pass `None`).
    pub fn reduce<T: Equivalence, O: Operation>(
        &self,
        root: i32,
        send: &[T],
        recv: Option<&mut [T]>,
        op: O,
    ) -> Result<()> {
        let a = self.args("reduce")?;
        a.root(root)?;
        a.count("send", send.len())?;
        let proc = self.raw.process_at_rank(root);
        if self.rank != root {
            proc.reduce_into(send, op);
            return Ok(());
        }
        let recv = a.at_root("recv", recv)?;
        a.same_len(send.len(), recv.len())?;
        proc.reduce_into_root(send, recv, op);
        Ok(())
    }

    /// Reduces `send` element-wise with `op` into `recv` on every rank.
    pub fn all_reduce<T: Equivalence, O: Operation>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        let a = self.args("all_reduce")?;
        a.same_len(send.len(), recv.len())?;
        self.raw.all_reduce_into(send, recv, op);
        Ok(())
    }

    /// [`Comm::all_reduce`] with `buf` as both input and result. (rsmpi has no `MPI_IN_PLACE`,
    /// so the input is copied first.)
    pub fn all_reduce_in_place<T: Equivalence + Clone, O: Operation>(
        &self,
        buf: &mut [T],
        op: O,
    ) -> Result<()> {
        let a = self.args("all_reduce_in_place")?;
        a.count("buf", buf.len())?;
        let send = buf.to_vec();
        self.raw.all_reduce_into(&send[..], buf, op);
        Ok(())
    }

    /// Inclusive prefix reduction: rank `r`'s `recv` is `send` of ranks `0..=r` combined with
    /// `op`, in rank order.
    pub fn scan<T: Equivalence, O: Operation>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        let a = self.args("scan")?;
        a.same_len(send.len(), recv.len())?;
        self.raw.scan_into(send, recv, op);
        Ok(())
    }

    /// Exclusive prefix reduction: rank `r`'s `recv` is `send` of ranks `0..r` combined with
    /// `op`; rank 0's `recv` is left as it was.
    pub fn exscan<T: Equivalence + Clone, O: Operation>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: O,
    ) -> Result<()> {
        let a = self.args("exscan")?;
        a.same_len(send.len(), recv.len())?;
        if self.rank == 0 {
            // MPI leaves rank 0's result undefined: it writes into a scratch copy.
            let mut scratch = recv.to_vec();
            self.raw.exclusive_scan_into(send, &mut scratch[..], op);
        } else {
            self.raw.exclusive_scan_into(send, recv, op);
        }
        Ok(())
    }

    /// Splits `send` on `root` (`Some`, `size` blocks of `recv.len()` elements, in rank order)
    /// and hands rank `r` block `r` in `recv`. Other ranks' `send` is ignored (pass `None`).
    pub fn scatter<T: Equivalence>(
        &self,
        root: i32,
        send: Option<&[T]>,
        recv: &mut [T],
    ) -> Result<()> {
        let a = self.args("scatter")?;
        a.root(root)?;
        a.count("recv", recv.len())?;
        let proc = self.raw.process_at_rank(root);
        if self.rank != root {
            proc.scatter_into(recv);
            return Ok(());
        }
        let send = a.at_root("send", send)?;
        a.blocks("send", send.len(), recv.len())?;
        proc.scatter_into_root(send, recv);
        Ok(())
    }

    /// Splits `send` on `root` into consecutive blocks of `counts[r]` elements and hands rank
    /// `r` its block in `recv` (`counts[r]` elements). Every rank passes the same `counts`; the
    /// root passes `Some(send)` of their total, the others `None`.
    pub fn scatterv<T: Equivalence>(
        &self,
        root: i32,
        send: Option<&[T]>,
        counts: &[usize],
        recv: &mut [T],
    ) -> Result<()> {
        let a = self.args("scatterv")?;
        a.root(root)?;
        let l = a.layout("counts", counts)?;
        a.my_count("counts", counts, recv.len())?;
        let proc = self.raw.process_at_rank(root);
        if self.rank != root {
            proc.scatter_varcount_into(recv);
            return Ok(());
        }
        let send = a.at_root("send", send)?;
        a.total("send", send.len(), "counts", l.total)?;
        proc.scatter_varcount_into_root(&Partition::new(send, l.counts, l.displs), recv);
        Ok(())
    }

    /// Gathers every rank's `data` (all of the same length) at `root`, concatenated in rank
    /// order: `Some` on the root, `None` elsewhere.
    pub fn gather<T: Equivalence + Clone + Default>(
        &self,
        root: i32,
        data: &[T],
    ) -> Result<Option<Vec<T>>> {
        let a = self.args("gather")?;
        a.root(root)?;
        let n = a.times_size("the result", data.len())?;
        let proc = self.raw.process_at_rank(root);
        if self.rank != root {
            proc.gather_into(data);
            return Ok(None);
        }
        let mut out = vec![T::default(); n];
        proc.gather_into_root(data, &mut out[..]);
        Ok(Some(out))
    }

    /// [`Comm::gather`] of plain-old-data, as bytes.
    pub fn gather_pod<T: Pod>(&self, root: i32, data: &[T]) -> Result<Option<Vec<T>>> {
        let bytes = self.gather(root, self.args("gather")?.as_bytes(data)?)?;
        Ok(bytes.map(|b| bytemuck::pod_collect_to_vec(&b)))
    }

    /// Gathers rank `r`'s `data` (`counts[r]` elements) at `root`, concatenated in rank order:
    /// `Some` on the root, `None` elsewhere. Every rank passes the same `counts`.
    pub fn gatherv<T: Equivalence + Clone + Default>(
        &self,
        root: i32,
        data: &[T],
        counts: &[usize],
    ) -> Result<Option<Vec<T>>> {
        let a = self.args("gatherv")?;
        a.root(root)?;
        let l = a.layout("counts", counts)?;
        a.my_count("counts", counts, data.len())?;
        let proc = self.raw.process_at_rank(root);
        if self.rank != root {
            proc.gather_varcount_into(data);
            return Ok(None);
        }
        let mut out = vec![T::default(); l.total];
        proc.gather_varcount_into_root(
            data,
            &mut PartitionMut::new(&mut out[..], l.counts, l.displs),
        );
        Ok(Some(out))
    }

    /// Gathers every rank's `data` (all of the same length) on every rank, in rank order.
    pub fn all_gather<T: Equivalence + Clone + Default>(&self, data: &[T]) -> Result<Vec<T>> {
        let a = self.args("all_gather")?;
        let n = a.times_size("the result", data.len())?;
        let mut out = vec![T::default(); n];
        self.raw.all_gather_into(data, &mut out[..]);
        Ok(out)
    }

    /// [`Comm::all_gather`] of plain-old-data, as bytes.
    pub fn all_gather_pod<T: Pod>(&self, data: &[T]) -> Result<Vec<T>> {
        let bytes = self.all_gather(self.args("all_gather")?.as_bytes(data)?)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Gathers rank `r`'s `data` (`counts[r]` elements) on every rank, in rank order. Every
    /// rank passes the same `counts`.
    pub fn all_gatherv<T: Equivalence + Clone + Default>(
        &self,
        data: &[T],
        counts: &[usize],
    ) -> Result<Vec<T>> {
        let a = self.args("all_gatherv")?;
        let l = a.layout("counts", counts)?;
        a.my_count("counts", counts, data.len())?;
        let mut out = vec![T::default(); l.total];
        self.raw.all_gather_varcount_into(
            data,
            &mut PartitionMut::new(&mut out[..], l.counts, l.displs),
        );
        Ok(out)
    }

    /// Sends block `j` of `send` to rank `j` and receives rank `j`'s block for this rank as
    /// block `j` of `recv`; both hold `size` blocks of the same length.
    pub fn all_to_all<T: Equivalence>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let a = self.args("all_to_all")?;
        a.same_len(send.len(), recv.len())?;
        a.multiple("send and recv", send.len())?;
        self.raw.all_to_all_into(send, recv);
        Ok(())
    }

    /// Sends `send_counts[j]` elements to rank `j` (consecutive blocks of `send`) and receives
    /// `recv_counts[j]` from rank `j` (consecutive blocks of `recv`). Rank `i`'s
    /// `send_counts[j]` must equal rank `j`'s `recv_counts[i]` (MPI checks it, fatally).
    pub fn all_to_allv<T: Equivalence>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) -> Result<()> {
        let a = self.args("all_to_allv")?;
        let s = a.layout("send_counts", send_counts)?;
        let r = a.layout("recv_counts", recv_counts)?;
        a.total("send", send.len(), "send_counts", s.total)?;
        a.total("recv", recv.len(), "recv_counts", r.total)?;
        self.raw.all_to_all_varcount_into(
            &Partition::new(send, s.counts, s.displs),
            &mut PartitionMut::new(recv, r.counts, r.displs),
        );
        Ok(())
    }

    /// Starts an all-reduce of (a copy of) `send` with `op` and returns at once. The handle
    /// owns both buffers, so no MPI request points into the application's memory; it borrows
    /// the `Comm`, so it must be completed ([`AllReduceRequest::wait`] or
    /// [`AllReduceRequest::test`]) before the next `poll`. Every rank starts its non-blocking
    /// collectives in the same order as its blocking ones.
    ///
    /// ```no_run
    /// # fn f(comm: &ckpt::Comm, local: f64) -> ckpt::Result<f64> {
    /// let sum = comm.iall_reduce(&[local], ckpt::Reduce::Sum)?;
    /// // ... work that does not need the sum ...
    /// Ok(sum.wait()[0])
    /// # }
    /// ```
    pub fn iall_reduce<T: Equivalence + Clone, O: Operation>(
        &self,
        send: &[T],
        op: O,
    ) -> Result<AllReduceRequest<'_, T, O>> {
        let a = self.args("iall_reduce")?;
        let count = a.count("send", send.len())?;
        let data = send.to_vec();
        let recv: *mut [T] = Box::into_raw(data.clone().into_boxed_slice());
        let send: *mut [T] = Box::into_raw(data.into_boxed_slice());
        let datatype = T::equivalent_datatype();
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: both buffers are `count` elements of `T` described by `datatype`, owned by
        // the handle below through raw pointers (no Rust reference to them exists while MPI
        // may use them) and freed only after the request completed; `op` and `datatype` live
        // in the handle as long.
        let raw = unsafe {
            mpi::ffi::MPI_Iallreduce(
                send.cast::<T>().cast_const().cast(),
                recv.cast::<T>().cast(),
                count,
                datatype.as_raw(),
                op.as_raw(),
                self.raw.as_raw(),
                raw.as_mut_ptr(),
            );
            raw.assume_init()
        };
        Ok(AllReduceRequest {
            _comm: self,
            raw,
            send,
            recv: Some(recv),
            done: false,
            _op: op,
            _datatype: datatype,
        })
    }
}

/// A pending [`Comm::iall_reduce`]: owns its buffers and borrows the communicator. Dropping a
/// pending one waits for it (MPI cannot cancel a collective).
#[must_use = "a started all-reduce must be completed with wait or test before poll"]
pub struct AllReduceRequest<'c, T: Equivalence, O: Operation> {
    _comm: &'c Comm,
    raw: mpi::ffi::MPI_Request,
    send: *mut [T],
    recv: Option<*mut [T]>,
    done: bool,
    _op: O,
    _datatype: T::Out,
}

/// The outcome of [`AllReduceRequest::test`].
pub enum ReduceTest<'c, T: Equivalence, O: Operation> {
    /// The result; the request is finished.
    Done(Vec<T>),
    /// Not yet: the request, to test or wait for again.
    Pending(AllReduceRequest<'c, T, O>),
}

impl<T: Equivalence, O: Operation> std::fmt::Debug for AllReduceRequest<'_, T, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllReduceRequest")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'c, T: Equivalence, O: Operation> AllReduceRequest<'c, T, O> {
    /// Blocks until the reduction is complete and returns its result.
    pub fn wait(mut self) -> Vec<T> {
        self.finish();
        self.take()
    }

    /// Returns the result if the reduction is complete, else the request.
    pub fn test(mut self) -> ReduceTest<'c, T, O> {
        let mut flag = 0;
        // SAFETY: `raw` is the live request of this handle; the status is ignored.
        unsafe {
            mpi::ffi::MPI_Test(&mut self.raw, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE);
        }
        if flag == 0 {
            return ReduceTest::Pending(self);
        }
        self.done = true;
        ReduceTest::Done(self.take())
    }

    fn finish(&mut self) {
        if !self.done {
            // SAFETY: `raw` is the live request of this handle; the status is ignored.
            unsafe {
                mpi::ffi::MPI_Wait(&mut self.raw, mpi::ffi::RSMPI_STATUS_IGNORE);
            }
            self.done = true;
        }
    }

    /// The result, once the request completed.
    fn take(&mut self) -> Vec<T> {
        match self.recv.take() {
            // SAFETY: the pointer came from Box::into_raw and the request completed, so MPI
            // no longer writes it.
            Some(p) => unsafe { Box::from_raw(p) }.into_vec(),
            None => Vec::new(),
        }
    }
}

impl<T: Equivalence, O: Operation> Drop for AllReduceRequest<'_, T, O> {
    fn drop(&mut self) {
        self.finish();
        drop(self.take());
        // SAFETY: the pointer came from Box::into_raw and the request completed, so MPI no
        // longer reads it; it is freed once, here.
        drop(unsafe { Box::from_raw(self.send) });
    }
}

impl<T: Equivalence, O: Operation> std::fmt::Debug for ReduceTest<'_, T, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReduceTest::Done(v) => write!(f, "Done({} elements)", v.len()),
            ReduceTest::Pending(_) => f.write_str("Pending"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of a refusal.
    fn refused<T>(r: Result<T>) -> String {
        match r {
            Err(Error::Usage { rank: 2, what }) => what,
            Err(e) => panic!("not a usage error of rank 2: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    fn args(call: &'static str) -> Args {
        Args::new(call, (2, 4), (2, 0), None).unwrap()
    }

    #[test]
    fn a_refusal_on_a_sub_communicator_names_it_and_the_job_rank() {
        let a = Args::new("gather", (0, 4), (5, 2), None).unwrap();
        match a.root(9) {
            Err(Error::Usage { rank: 5, what }) => assert_eq!(
                what,
                "communicator #2 (rank 0 of 4): gather: root 9 does not exist (ranks 0..3)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn after_stop_every_call_is_refused_with_the_reason() {
        let why = "the job is stopping: poll() returned should_exit() (its last epoch is 3)";
        let m = refused(Args::new("all_reduce", (2, 4), (2, 0), Some(why)));
        assert_eq!(m, format!("all_reduce: refused: {why}"));
    }

    #[test]
    fn roots_outside_the_job_are_refused() {
        let a = args("broadcast");
        assert!(a.root(0).is_ok() && a.root(3).is_ok());
        assert_eq!(
            refused(a.root(4)),
            "broadcast: root 4 does not exist (ranks 0..3)"
        );
        assert!(refused(a.root(-1)).contains("root -1 does not exist"));
    }

    #[test]
    fn buffer_lengths_must_match() {
        let a = args("all_reduce");
        assert!(a.same_len(5, 5).is_ok());
        assert_eq!(
            refused(a.same_len(5, 4)),
            "all_reduce: send has 5 elements but recv 4; they must be equal"
        );
        let a = args("scatter");
        assert!(a.blocks("send", 12, 3).is_ok());
        assert_eq!(
            refused(a.blocks("send", 11, 3)),
            "scatter: send has 11 elements, but 4 ranks x 3 elements are expected"
        );
        assert!(refused(a.blocks("send", 0, usize::MAX)).contains("4 ranks x"));
        let a = args("all_to_all");
        assert!(a.multiple("send and recv", 8).is_ok());
        assert_eq!(
            refused(a.multiple("send and recv", 6)),
            "all_to_all: send and recv have 6 elements, not a multiple of the 4 ranks"
        );
        assert_eq!(
            refused(args("reduce").at_root("recv", None::<&mut [f64]>)),
            "reduce: the root must pass Some(recv)"
        );
    }

    #[test]
    fn counts_need_one_entry_per_rank_and_this_ranks_length() {
        let a = args("gatherv");
        let l = a.layout("counts", &[1, 0, 3, 2]).unwrap();
        assert_eq!(
            (l.counts, l.displs, l.total),
            (vec![1, 0, 3, 2], vec![0, 1, 1, 4], 6)
        );
        assert_eq!(
            refused(a.layout("counts", &[1, 2, 3])),
            "gatherv: counts has 3 entries; it needs one per rank (4)"
        );
        assert!(a.my_count("counts", &[1, 0, 3, 2], 3).is_ok());
        assert_eq!(
            refused(a.my_count("counts", &[1, 0, 3, 2], 2)),
            "gatherv: counts[2] is 3 but this rank's buffer has 2 elements"
        );
        let a = args("all_to_allv");
        assert_eq!(
            refused(a.total("send", 5, "send_counts", 6)),
            "all_to_allv: send has 5 elements but send_counts add up to 6"
        );
    }

    #[test]
    fn counts_beyond_what_mpi_counts_are_refused() {
        let a = args("all_gatherv");
        let big = Count::MAX as usize + 1;
        assert!(refused(a.layout("counts", &[big, 0, 0, 0])).contains("more than MPI can count"));
        // Each count fits, their total does not.
        let half = Count::MAX as usize / 2 + 1;
        assert!(refused(a.layout("counts", &[half, half, 0, 0])).contains("the sum of counts"));
        assert!(refused(a.times_size("the result", half)).contains("the result of"));
        assert!(refused(a.count("send", usize::MAX)).contains("send of"));
    }

    #[test]
    fn a_zero_sized_pod_type_cannot_travel_as_bytes() {
        assert_eq!(
            refused(args("gather").as_bytes(&[(); 3])),
            "gather: a zero-sized element type has no bytes to move"
        );
        assert_eq!(args("gather").as_bytes(&[1u16]).unwrap().len(), 2);
    }

    #[test]
    fn reductions_map_to_distinct_mpi_operations() {
        use Reduce::*;
        let all = [
            Sum, Prod, Min, Max, LogicalAnd, LogicalOr, LogicalXor, BitAnd, BitOr, BitXor,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.as_raw(), b.as_raw(), "{a:?} and {b:?}");
            }
        }
    }
}
