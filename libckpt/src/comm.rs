//! The application's communicator: a thin MPI adapter over the exactly-once accounting of
//! [`crate::protocol::accounting`], on a duplicate of the communicator the application passed
//! in (so its messages never match the library's).
//!
//! Sends are buffered: the envelope and the payload are copied into a library-owned buffer
//! (or `send_vec` hands the application's vector over) and sent with `MPI_Isend`, so `send`
//! returns at once whatever the size, and a message can be in flight when its sender reaches
//! `poll` (the quiescence drains it at the receiver).
//! Receives take messages out of MPI with matched probes (`MPI_Improbe`/`MPI_Mprobe` and
//! `MPI_Mrecv`) into library-owned buffers: no MPI request ever points into application
//! memory, a message is checked against the receive before the application sees it, and a
//! refused one stays queued.
//!
//! # Rules
//! - Every call either works with exactly-once delivery or fails at that call with
//!   [`Error::Usage`] naming the rule; no message is lost or reordered by a failed call.
//! - A receive too small for its message, or whose element size does not divide it, fails;
//!   the message stays first in line for the next matching receive.
//! - Tags are 0 or more; `TagSel::Any` is the wildcard.
//! - A receive request may stay pending over `poll` and over a checkpoint (see
//!   [`RecvRequest`]): the library owns the buffer, the request is a plain handle. At the cut,
//!   a pending receive that a drained message satisfies gets it then; the others are recorded
//!   in the snapshot and posted again by `restore()`, so a handle kept in the application's
//!   state completes after a restart with the message it would have got without one. Only
//!   `restore()` refuses receives pending (posted before it in this run).
//!   [`Comm::wait_any`], [`Comm::test_any`] and [`Comm::wait_all`] take a list of requests
//!   and remove each one they complete (so none is completed twice); a request refused for its
//!   size is removed alone, the others stay usable; a request of another `Comm` refuses the
//!   call and leaves the list as it was.
//! - [`Comm::probe`]/[`Comm::iprobe`] report the message the next receive with the same
//!   selector (or the status's source and tag) gets: receives already posted come first, the
//!   library's log before MPI. The probed message is moved into the log (for a large message,
//!   one copy more than a receive without a probe).
//! - Sends complete on their own: a [`SendRequest`] (from `isend`, `isend_vec`) only lets the
//!   application wait for that. It may be kept over `poll`: the cut completes every send (its
//!   receiver drains it). Memory: the sends in flight, each held until MPI is done with it,
//!   plus the reuse pool of completed sends' buffers, at most 8 MiB or 4 buffers, whichever is
//!   more (and 64 buffers); completed sends are taken back at every send, receive, probe,
//!   wait, test and poll with one `MPI_Testsome` ([`Comm::send_buffers`] shows both).
//! - Traffic before `Checkpointer::restore` is allowed: `restore` makes a cut; messages sent
//!   before it and not yet received are delivered after it, before any restored message.
//! - Once `poll` returned `should_exit()`, sends, receives and probes fail: the job is
//!   stopping and its last epoch is already written. Collectives fail too (see
//!   [`crate::collective`]).
//! - A `Comm` lives inside its `Checkpointer`: it cannot outlive it (the borrow checker
//!   refuses it), and a request from another `Comm` is refused.
//!
//! All payloads are plain-old-data slices moved as bytes (the cluster is homogeneous).

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::rc::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytemuck::Pod;
use mpi::datatype::{address_of, Equivalence, UserDatatype};
use mpi::point_to_point::{Message, Source as _, Status as MpiStatus};
use mpi::raw::{AsRaw, AsRawMut};
use mpi::request::StaticScope;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::cart::Grid;
use crate::error::{Error, Result};
use crate::protocol::accounting::{
    Completion, Endpoint, Fatal, Fit, Misuse, Network, Peek, Probed, Raw,
};
use crate::protocol::envelope::ENVELOPE_LEN;
use crate::protocol::msglog::{CommState, Entry};
pub use crate::protocol::msglog::{Source, TagSel};
use crate::stall::{self, Watch};
use crate::subcomm::Family;

/// What a receive got, or a probe found: who sent it, with which tag, and how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Sender's rank.
    pub source: i32,
    /// Message tag.
    pub tag: i32,
    /// Payload length in bytes.
    pub bytes: usize,
}

impl Status {
    /// The payload's length in elements of `T`; `None` if it is not a whole number of them
    /// (a receive of `T` would refuse it).
    pub fn count<T: Pod>(&self) -> Option<usize> {
        let size = std::mem::size_of::<T>();
        (size > 0 && self.bytes % size == 0).then(|| self.bytes / size)
    }
}

/// A non-blocking receive posted with [`Comm::irecv`]; complete it with [`Comm::wait`] or
/// [`Comm::test`] (or the list calls). Both take it by value, so a completed request cannot
/// be completed again.
///
/// Ownership: the library owns the receive's buffer, so the request is only a handle (the
/// communicator's index and the request's number) that borrows nothing: it may be kept over
/// `poll` and over checkpoints. It is serializable: keep it in the state given to
/// [`crate::Regions::value`] (`Vec<RecvRequest<T>>` or `Option<RecvRequest<T>>`), and after a
/// restart `restore()` posts the receive again under the same handle, which completes with
/// the message it would have got without the restart. A restored handle is checked by its
/// communicator's index only. A handle dropped while pending leaves its receive posted: it
/// takes its message, which no one ever receives (as a leaked MPI request).
///
/// ```no_run
/// # fn f(world: &ckpt::mpi::topology::SimpleCommunicator) -> ckpt::Result<()> {
/// use ckpt::{RecvRequest, Regions, Source, TagSel};
/// struct Halo {
///     next: Option<RecvRequest<f64>>,
/// }
/// impl ckpt::Protect for Halo {
///     fn protect(&mut self, r: &mut Regions<'_>) {
///         r.value("next", &mut self.next);
///     }
/// }
/// let mut ck = ckpt::Checkpointer::new(world, ckpt::Config::new("/tmp/job"))?;
/// let mut h = Halo { next: None };
/// if ck.restarting() {
///     ck.restore(&mut h)?; // h.next is posted again
/// } else {
///     h.next = Some(ck.comm().irecv(Source::Rank(0), TagSel::Tag(1), 64)?);
/// }
/// ck.poll(&mut h)?; // may checkpoint with the receive pending
/// if let Some(req) = h.next.take() {
///     let (row, _status) = ck.comm().wait(req)?;
/// #   drop(row);
/// }
/// # Ok(()) }
/// ```
#[must_use = "a posted receive takes a message: complete it with Comm::wait or Comm::test"]
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "")]
pub struct RecvRequest<T> {
    id: u64,
    /// The communicator's index in creation order.
    index: usize,
    /// The communicator's process-wide number (0 in a handle restored from a snapshot).
    #[serde(skip)]
    comm: u64,
    #[serde(skip)]
    _t: PhantomData<T>,
}

/// The outcome of [`Comm::test`].
#[derive(Debug)]
pub enum Test<T> {
    /// The message, its status; the request is finished.
    Done(Vec<T>, Status),
    /// Not yet: the request, to test or wait for again.
    Pending(RecvRequest<T>),
}

/// A send started with [`Comm::isend`] or [`Comm::isend_vec`]: wait for it with
/// [`Comm::wait_send`] or test it with [`Comm::test_send`] (both take it by value). The send
/// completes whether or not it is waited for, so dropping the handle is harmless; it may be
/// outstanding at `poll`, whose checkpoint cut completes it (its receiver drains it).
#[derive(Debug)]
pub struct SendRequest {
    id: u64,
    comm: u64,
}

/// The outcome of [`Comm::test_send`].
#[derive(Debug)]
pub enum SendTest {
    /// MPI is done with the message (the receiver has it, or MPI buffered it).
    Done,
    /// Not yet: the request, to test or wait for again.
    Pending(SendRequest),
}

/// Memory held by a rank's sends, from [`Comm::send_buffers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendBuffers {
    /// Sends not known to be complete.
    pub in_flight: usize,
    /// Their bytes (envelopes included).
    pub in_flight_bytes: usize,
    /// Bytes of completed sends' buffers kept for reuse: at most 8 MiB or 4 buffers,
    /// whichever is more.
    pub pooled_bytes: usize,
}

/// A library-owned byte buffer handed to MPI for the duration of one send. Leaked while MPI
/// may read it, reclaimed once the request completed.
struct Owned(*mut [u8]);

impl Owned {
    fn new(bytes: Box<[u8]>) -> (Owned, &'static [u8]) {
        let ptr = Box::into_raw(bytes);
        // SAFETY: `ptr` comes from Box::into_raw, so it is valid and uniquely owned; the
        // 'static reference is handed to MPI and the `Owned` is kept until the request
        // completed, and only then is the box rebuilt (see `reclaim`).
        (Owned(ptr), unsafe { &*ptr })
    }

    /// Takes the buffer back. Call only after the request using it completed.
    fn reclaim(self) -> Box<[u8]> {
        // SAFETY: the pointer came from Box::into_raw and the request that used it completed,
        // so nothing else refers to it any more.
        unsafe { Box::from_raw(self.0) }
    }
}

/// What an outgoing send reads from until it completes: a copy in a library buffer, or a
/// vector the application handed over, with its envelope beside it.
enum Payload {
    Copied(Owned),
    Given {
        env: Box<[u8; ENVELOPE_LEN]>,
        data: Box<dyn Any>,
    },
}

impl Payload {
    /// The send completed: back to the pool, or freed.
    fn release(self, pool: &mut Pool) {
        match self {
            Payload::Copied(o) => pool.give(o.reclaim()),
            Payload::Given { env, data } => drop((env, data)),
        }
    }

    /// The send may never complete (the job is failing): leave its memory to MPI.
    fn leak(self) {
        match self {
            // An `Owned` frees nothing when dropped: its buffer stays leaked.
            Payload::Copied(_) => {}
            Payload::Given { env, data } => std::mem::forget((env, data)),
        }
    }
}

/// Send buffers whose sends completed, kept for the next sends (no allocation, no page
/// faults on the hot path). The bound: [`POOL_MIN_BUFFERS`] buffers whatever their size, more
/// only while all of them together stay within [`POOL_BYTES`], and never more than
/// [`POOL_MAX_BUFFERS`]; so at most `max(POOL_BYTES, POOL_MIN_BUFFERS x the largest message)`.
#[derive(Default)]
struct Pool {
    free: Vec<Box<[u8]>>,
    bytes: usize,
}

const POOL_MIN_BUFFERS: usize = 4;
const POOL_MAX_BUFFERS: usize = 64;
const POOL_BYTES: usize = 8 << 20;

impl Pool {
    /// A buffer of at least `n` bytes: the smallest pooled one that fits, or a new one.
    fn take(&mut self, n: usize) -> Box<[u8]> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= n)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let b = self.free.swap_remove(i);
                self.bytes -= b.len();
                b
            }
            None => vec![0u8; n].into_boxed_slice(),
        }
    }

    /// Whether `count` buffers of `bytes` in all are within the bound.
    fn within(count: usize, bytes: usize) -> bool {
        count <= POOL_MAX_BUFFERS && (count <= POOL_MIN_BUFFERS || bytes <= POOL_BYTES)
    }

    /// Keeps `b`, freeing the smallest kept buffers while the pool is beyond its bound (`b`
    /// itself if it is the smallest).
    fn give(&mut self, b: Box<[u8]>) {
        self.bytes += b.len();
        self.free.push(b);
        while !Self::within(self.free.len(), self.bytes) {
            let Some(i) = (0..self.free.len()).min_by_key(|&i| self.free[i].len()) else {
                break;
            };
            self.bytes -= self.free.swap_remove(i).len();
        }
    }
}

/// One send in flight.
struct Outgoing {
    id: u64,
    buf: Payload,
    dest: i32,
    bytes: usize,
}

/// The rank's sends in flight (raw requests beside what each reads from, for
/// `MPI_Testsome`) and the pool of completed sends' buffers.
#[derive(Default)]
struct Sends {
    reqs: Vec<mpi::ffi::MPI_Request>,
    out: Vec<Outgoing>,
    next_id: u64,
    pool: Pool,
    /// Scratch for `MPI_Testsome`'s indices.
    done: Vec<i32>,
}

impl Sends {
    /// Records a send posted as `req`; returns its id.
    fn push(&mut self, req: mpi::ffi::MPI_Request, buf: Payload, dest: i32, bytes: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.reqs.push(req);
        self.out.push(Outgoing {
            id,
            buf,
            dest,
            bytes,
        });
        id
    }

    /// Completes every send MPI is done with (one `MPI_Testsome` over all of them) and takes
    /// their buffers back. Cheap when nothing is in flight.
    fn reap(&mut self) {
        if self.reqs.is_empty() {
            return;
        }
        self.done.resize(self.reqs.len(), 0);
        let mut n = 0;
        // SAFETY: `reqs` holds `reqs.len()` active requests and `done` room for as many
        // indices; statuses are ignored. Completed requests are set to MPI_REQUEST_NULL and
        // removed below, with what they read from.
        unsafe {
            mpi::ffi::MPI_Testsome(
                self.reqs.len() as i32,
                self.reqs.as_mut_ptr(),
                &mut n,
                self.done.as_mut_ptr(),
                mpi::ffi::RSMPI_STATUSES_IGNORE,
            );
        }
        let mut done: Vec<usize> = self.done[..n.max(0) as usize]
            .iter()
            .map(|&i| i as usize)
            .collect();
        done.sort_unstable_by(|a, b| b.cmp(a));
        for i in done {
            self.remove(i);
        }
    }

    /// Forgets completed send `i` and takes its buffer back.
    fn remove(&mut self, i: usize) {
        self.reqs.swap_remove(i);
        self.out.swap_remove(i).buf.release(&mut self.pool);
    }

    fn index(&self, id: u64) -> Option<usize> {
        self.out.iter().position(|o| o.id == id)
    }

    /// Tests send `i` once; completes it if MPI is done with it.
    fn test(&mut self, i: usize) -> bool {
        let mut flag = 0;
        // SAFETY: `reqs[i]` is an active request; MPI_Test sets it to MPI_REQUEST_NULL when it
        // completes, and it is then removed with what it read from.
        unsafe {
            mpi::ffi::MPI_Test(&mut self.reqs[i], &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE);
        }
        if flag != 0 {
            self.remove(i);
        }
        flag != 0
    }

    /// Blocks until send `id` completed (nothing if it already did).
    fn wait(&mut self, id: u64) {
        let Some(i) = self.index(id) else { return };
        // SAFETY: as in `test`; MPI_Wait returns once the request completed.
        unsafe {
            mpi::ffi::MPI_Wait(&mut self.reqs[i], mpi::ffi::RSMPI_STATUS_IGNORE);
        }
        self.remove(i);
    }

    fn usage(&self) -> SendBuffers {
        SendBuffers {
            in_flight: self.out.len(),
            in_flight_bytes: self.out.iter().map(|o| o.bytes).sum(),
            pooled_bytes: self.pool.bytes,
        }
    }
}

pub(crate) struct Books {
    pub(crate) ep: Endpoint,
    sends: Sends,
}

/// Receives of at least this many bytes land straight in the application's buffer (the
/// envelope in a separate one, through an MPI datatype): one copy less, at the price of
/// building a datatype.
const DIRECT_MIN: usize = 32 << 10;

/// The wrapped communicator handed to the application by [`crate::Checkpointer::comm`].
pub struct Comm {
    pub(crate) raw: SimpleCommunicator,
    pub(crate) rank: i32,
    pub(crate) size: i32,
    id: u64,
    pub(crate) books: RefCell<Books>,
    /// The checkpointer's communicators, this one among them (see [`crate::subcomm`]).
    family: Weak<Family>,
    /// Index in creation order (0: the root communicator).
    index: usize,
    /// The job rank of each rank of this communicator.
    members: Vec<i32>,
    /// The grid of a Cartesian communicator.
    grid: Option<Grid>,
}

fn any_tag() -> i32 {
    // SAFETY: RSMPI_ANY_TAG is a constant the C shim initialises at load time; reading it has
    // no side effects.
    unsafe { mpi::ffi::RSMPI_ANY_TAG }
}

fn mpi_tag(t: TagSel) -> i32 {
    match t {
        TagSel::Tag(t) => t,
        TagSel::Any => any_tag(),
    }
}

/// Receives a matched message into a new buffer.
fn receive(msg: Message, st: MpiStatus) -> Raw {
    let mut frame = vec![0u8; st.count(u8::equivalent_datatype()).max(0) as usize];
    let st2 = msg.matched_receive_into(&mut frame[..]);
    Raw {
        src: st2.source_rank(),
        tag: st2.tag(),
        frame,
    }
}

/// MPI as the accounting's network: matched, non-blocking probes.
struct Mpi<'a>(&'a SimpleCommunicator);

impl Network for Mpi<'_> {
    fn take(&mut self, src: Source, tag: TagSel) -> Option<Raw> {
        let t = mpi_tag(tag);
        let (msg, st) = match src {
            Source::Rank(r) => self
                .0
                .process_at_rank(r)
                .immediate_matched_probe_with_tag(t)?,
            Source::Any => self.0.any_process().immediate_matched_probe_with_tag(t)?,
        };
        Some(receive(msg, st))
    }
}

/// Spins politely: after the first thousand tries, leave the core to ranks that share it.
struct Backoff(u32);

impl Backoff {
    fn pause(&mut self) {
        self.0 += 1;
        if self.0 > 1000 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

static NEXT_COMM: AtomicU64 = AtomicU64::new(1);

impl Comm {
    /// Communicator `index` of `family` over `raw`, whose ranks are the job's ranks `members`.
    pub(crate) fn new(
        raw: SimpleCommunicator,
        family: Weak<Family>,
        index: usize,
        members: Vec<i32>,
        grid: Option<Grid>,
    ) -> Self {
        let (rank, size) = (raw.rank(), raw.size());
        Comm {
            raw,
            rank,
            size,
            id: NEXT_COMM.fetch_add(1, Ordering::Relaxed),
            books: RefCell::new(Books {
                ep: Endpoint::new(rank, size as usize),
                sends: Sends::default(),
            }),
            family,
            index,
            members,
            grid,
        }
    }

    /// Its index in creation order (0: `ck.comm()`).
    pub fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn family(&self) -> &Weak<Family> {
        &self.family
    }

    /// The job rank of each of its ranks.
    pub(crate) fn members(&self) -> &[i32] {
        &self.members
    }

    pub(crate) fn grid(&self) -> Option<&Grid> {
        self.grid.as_ref()
    }

    /// This rank's rank in the job.
    pub(crate) fn world_rank(&self) -> i32 {
        self.members
            .get(self.rank as usize)
            .copied()
            .unwrap_or(self.rank)
    }

    /// This rank.
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> i32 {
        self.size
    }

    /// Messages waiting in the library (drained at a checkpoint, or refused by a receive),
    /// not yet received.
    pub fn logged(&self) -> usize {
        self.books.borrow().ep.logged()
    }

    fn usage(&self, m: Misuse) -> Error {
        let what = match self.index {
            0 => m.0,
            i => format!(
                "communicator #{i} (rank {} of {}): {}",
                self.rank, self.size, m.0
            ),
        };
        Error::Usage {
            rank: self.world_rank(),
            what,
        }
    }

    /// A broken accounting invariant: going on could lose or double a message.
    fn fatal(&self, e: Fatal) -> ! {
        eprintln!(
            "[ckpt rank {}] internal error in message accounting: {e}; aborting the job rather \
             than risking a lost or doubled message",
            self.rank
        );
        self.raw.abort(4)
    }

    /// Sends `data` to `dest` with `tag` (a tag >= 0). Buffered: returns at once.
    pub fn send<T: Pod>(&self, dest: i32, tag: i32, data: &[T]) -> Result<()> {
        self.isend(dest, tag, data).map(drop)
    }

    /// Sends `data` to `dest` with `tag` (a tag >= 0), buffered like [`Comm::send`]; the
    /// handle says when MPI is done with the message ([`Comm::wait_send`],
    /// [`Comm::test_send`]). `data` may be reused at once.
    pub fn isend<T: Pod>(&self, dest: i32, tag: i32, data: &[T]) -> Result<SendRequest> {
        let payload: &[u8] = bytemuck::cast_slice(data);
        let mut b = self.books.borrow_mut();
        let b = &mut *b;
        b.sends.reap();
        let env = b.ep.send(dest, tag).map_err(|m| self.usage(m))?;
        let bytes = env.len() + payload.len();
        let mut frame = b.sends.pool.take(bytes);
        frame[..env.len()].copy_from_slice(&env);
        frame[env.len()..bytes].copy_from_slice(payload);
        let (buf, view) = Owned::new(frame);
        let req = self.raw.process_at_rank(dest).immediate_send_with_tag(
            StaticScope,
            &view[..bytes],
            tag,
        );
        // SAFETY: the request reads the leaked buffer `buf`, kept in `sends` until the
        // request completed.
        let (req, _, _) = unsafe { req.into_raw() };
        let id = b.sends.push(req, Payload::Copied(buf), dest, bytes);
        Ok(self.send_request(id))
    }

    /// Sends `data` to `dest` with `tag` (a tag >= 0), handing the vector to the library:
    /// large payloads (32 KiB and more) go to MPI without a copy, and the vector is freed once
    /// MPI is done with it. Returns at once, like [`Comm::send`].
    pub fn send_vec<T: Pod>(&self, dest: i32, tag: i32, data: Vec<T>) -> Result<()> {
        self.isend_vec(dest, tag, data).map(drop)
    }

    /// [`Comm::send_vec`] with a handle, as [`Comm::isend`].
    pub fn isend_vec<T: Pod>(&self, dest: i32, tag: i32, data: Vec<T>) -> Result<SendRequest> {
        let len = std::mem::size_of_val(&data[..]);
        if len < DIRECT_MIN {
            return self.isend(dest, tag, &data);
        }
        let mut b = self.books.borrow_mut();
        let b = &mut *b;
        b.sends.reap();
        let env = Box::new(b.ep.send(dest, tag).map_err(|m| self.usage(m))?);
        let payload: &[u8] = bytemuck::cast_slice(&data[..]);
        let displs = [address_of(&env[0]) - address_of(&payload[0]), 0];
        let dt = UserDatatype::heterogeneous_indexed(
            &[ENVELOPE_LEN as mpi::Count, len as mpi::Count],
            &displs,
            &u8::equivalent_datatype(),
        );
        let mut raw_req = MaybeUninit::uninit();
        // SAFETY: the datatype maps the 16 bytes of the boxed envelope and the `len` bytes of
        // the vector's heap buffer, both moved into `sends` below (moving a box or a vector
        // does not move its heap memory) and kept until the request completed. Freeing the
        // datatype right after the send is posted is allowed by MPI.
        let req = unsafe {
            mpi::ffi::MPI_Isend(
                payload.as_ptr().cast(),
                1,
                dt.as_raw(),
                dest,
                tag,
                self.raw.as_raw(),
                raw_req.as_mut_ptr(),
            );
            raw_req.assume_init()
        };
        let buf = Payload::Given {
            env,
            data: Box::new(data),
        };
        let id = b.sends.push(req, buf, dest, len + ENVELOPE_LEN);
        Ok(self.send_request(id))
    }

    fn send_request(&self, id: u64) -> SendRequest {
        SendRequest { id, comm: self.id }
    }

    fn check_send(&self, req: &SendRequest) -> Result<()> {
        if req.comm == self.id {
            Ok(())
        } else {
            Err(self.usage(Misuse(format!(
                "send request #{} belongs to another communicator",
                req.id
            ))))
        }
    }

    /// Blocks until MPI is done with the message of `req` (as `MPI_Wait`: until its receiver
    /// takes it, or MPI buffered it). Not bounded by a deadline: the receiver must receive.
    pub fn wait_send(&self, req: SendRequest) -> Result<()> {
        self.check_send(&req)?;
        let mut b = self.books.borrow_mut();
        b.sends.reap();
        b.sends.wait(req.id);
        Ok(())
    }

    /// Whether MPI is done with the message of `req`.
    pub fn test_send(&self, req: SendRequest) -> Result<SendTest> {
        self.check_send(&req)?;
        let mut b = self.books.borrow_mut();
        b.sends.reap();
        Ok(match b.sends.index(req.id) {
            None => SendTest::Done,
            Some(_) => SendTest::Pending(req),
        })
    }

    /// The memory this rank's sends hold now. Completed sends are taken back at every send,
    /// receive, probe, wait, test and poll; this call itself takes nothing back.
    pub fn send_buffers(&self) -> SendBuffers {
        self.books.borrow().sends.usage()
    }

    /// Takes back the buffers of completed sends (at `poll`).
    pub(crate) fn reap_sends(&self) {
        self.books.borrow_mut().sends.reap();
    }

    /// Blocking receive into `buf`; the message may be shorter than `buf`, never longer.
    pub fn recv_into<T: Pod>(&self, src: Source, tag: TagSel, buf: &mut [T]) -> Result<Status> {
        let size = std::mem::size_of::<T>();
        let fit = Fit {
            max_bytes: Some(std::mem::size_of_val(buf)),
            elem: size,
        };
        let id = self.post(src, tag, fit)?;
        let dest: &mut [u8] = bytemuck::cast_slice_mut(buf);
        if dest.len() >= DIRECT_MIN {
            // SAFETY: bytes viewed as possibly-uninitialised bytes; only initialised bytes are
            // ever written through the view (MPI's received data).
            let view = unsafe {
                std::slice::from_raw_parts_mut(
                    dest.as_mut_ptr().cast::<MaybeUninit<u8>>(),
                    dest.len(),
                )
            };
            if let Some(st) = self.direct(id, fit, |_| Some(view)) {
                return Ok(st);
            }
        }
        let e = self.wait_for(id)?;
        let p = e.payload();
        dest[..p.len()].copy_from_slice(p);
        Ok(status(&e))
    }

    /// Blocking receive of a message of any length.
    pub fn recv_vec<T: Pod>(&self, src: Source, tag: TagSel) -> Result<(Vec<T>, Status)> {
        let size = std::mem::size_of::<T>();
        let fit = Fit::any(size);
        let id = self.post(src, tag, fit)?;
        let mut v: Vec<T> = Vec::new();
        let direct = self.direct(id, fit, |len| {
            (len >= DIRECT_MIN && size > 0).then(|| {
                v = Vec::with_capacity(len / size);
                let spare = v.spare_capacity_mut();
                // SAFETY: the spare capacity is `len` bytes of uninitialised memory owned by
                // `v`; viewing it as bytes (alignment 1) that may stay uninitialised is sound.
                unsafe {
                    std::slice::from_raw_parts_mut(
                        spare.as_mut_ptr().cast::<MaybeUninit<u8>>(),
                        len,
                    )
                }
            })
        });
        if let Some(st) = direct {
            // SAFETY: the receive wrote all `st.bytes` (a whole number of elements, checked by
            // the fit) into the capacity, and any bytes are a valid `T` (`Pod`).
            unsafe { v.set_len(st.bytes / size) };
            return Ok((v, st));
        }
        Ok(to_vec(&self.wait_for(id)?))
    }

    /// The fast path of a blocking receive: when receive `id` is the only one waiting and
    /// nothing queued can serve it, waits in MPI for its message and, if `land(len)` gives a
    /// buffer of `len` bytes for it (and it fits), receives the payload straight into it.
    /// `None` when the fast path does not apply; the receive is then still posted (and may
    /// already hold its message), to be completed by [`Comm::wait_for`].
    fn direct<'a>(
        &self,
        id: u64,
        fit: Fit,
        land: impl FnOnce(usize) -> Option<&'a mut [MaybeUninit<u8>]>,
    ) -> Option<Status> {
        let mut b = self.books.borrow_mut();
        let (src, tag) = b.ep.blocking_selector(id)?;
        let t = mpi_tag(tag);
        let (msg, st) = match src {
            Source::Rank(r) => self.raw.process_at_rank(r).matched_probe_with_tag(t),
            Source::Any => self.raw.any_process().matched_probe_with_tag(t),
        };
        let count = st.count(u8::equivalent_datatype()).max(0) as usize;
        let len = count.saturating_sub(ENVELOPE_LEN);
        let dest = if count >= ENVELOPE_LEN && fit.accepts(len) {
            land(len)
        } else {
            None
        };
        let Some(dest) = dest.filter(|d| d.len() >= len && len > 0) else {
            // The usual path, where a refusal keeps the message queued.
            if let Err(f) = b.ep.accept(receive(msg, st), (src, tag)) {
                self.fatal(f)
            }
            return None;
        };
        // MPI writes the envelope through a displacement the compiler cannot see: it is
        // reached through a raw pointer only, and read back with a volatile read.
        let mut env = [0u8; ENVELOPE_LEN];
        let env_ptr: *mut [u8; ENVELOPE_LEN] = &mut env;
        // SAFETY: `env_ptr` points to the live local array; the shared reference only serves
        // to ask MPI for its address.
        let displs = [address_of(unsafe { &*env_ptr }) - address_of(&dest[0]), 0];
        let dt = UserDatatype::heterogeneous_indexed(
            &[ENVELOPE_LEN as mpi::Count, len as mpi::Count],
            &displs,
            &u8::equivalent_datatype(),
        );
        let mut msg = msg;
        let mut status = MaybeUninit::uninit();
        // SAFETY: the datatype maps the 16 bytes of `env` (a live local array, reached through
        // its displacement from `dest`) and the first `len` bytes of `dest` (`len <=
        // dest.len()`), which MPI may write whatever they held; both stay borrowed until the
        // receive returns. MPI_Mrecv sets the message handle to MPI_MESSAGE_NULL.
        unsafe {
            mpi::ffi::MPI_Mrecv(
                dest.as_mut_ptr().cast(),
                1,
                dt.as_raw(),
                msg.as_raw_mut(),
                status.as_mut_ptr(),
            );
        }
        drop(msg);
        // The probe's status names the message's sender and tag.
        let (source, tag) = (st.source_rank(), st.tag());
        // SAFETY: `env_ptr` points to the live, initialised local array MPI wrote into.
        let env = unsafe { std::ptr::read_volatile(env_ptr) };
        if let Err(f) = b.ep.deliver_direct(id, source, tag, &env) {
            self.fatal(f)
        }
        Some(Status {
            source,
            tag,
            bytes: len,
        })
    }

    /// Sends `send` to `dest` and receives into `recv` from `src`, both with `tag`. `None`
    /// skips a side (e.g. at the edge of a domain).
    pub fn sendrecv<T: Pod>(
        &self,
        send: &[T],
        dest: Option<i32>,
        recv: &mut [T],
        src: Option<i32>,
        tag: i32,
    ) -> Result<()> {
        if let Some(d) = dest {
            self.send(d, tag, send)?;
        }
        if let Some(s) = src {
            self.recv_into(Source::Rank(s), TagSel::Tag(tag), recv)?;
        }
        Ok(())
    }

    /// Posts a non-blocking receive of at most `max` elements. Receives are matched in the
    /// order they are posted, blocking ones included.
    pub fn irecv<T: Pod>(&self, src: Source, tag: TagSel, max: usize) -> Result<RecvRequest<T>> {
        let size = std::mem::size_of::<T>();
        let fit = Fit {
            max_bytes: Some(max.saturating_mul(size)),
            elem: size,
        };
        Ok(RecvRequest {
            id: self.post(src, tag, fit)?,
            index: self.index,
            comm: self.id,
            _t: PhantomData,
        })
    }

    /// Completes a non-blocking receive.
    pub fn wait<T: Pod>(&self, req: RecvRequest<T>) -> Result<(Vec<T>, Status)> {
        self.check_mine(&req)?;
        self.reap_sends();
        Ok(to_vec(&self.wait_for(req.id)?))
    }

    /// Completes a non-blocking receive if its message is there.
    pub fn test<T: Pod>(&self, req: RecvRequest<T>) -> Result<Test<T>> {
        self.check_mine(&req)?;
        let mut b = self.books.borrow_mut();
        b.sends.reap();
        if let Err(f) = b.ep.progress(&mut Mpi(&self.raw)) {
            self.fatal(f)
        }
        match b.ep.complete(req.id) {
            Completion::Pending => Ok(Test::Pending(req)),
            Completion::Done(e) => {
                let (v, st) = to_vec(&e);
                Ok(Test::Done(v, st))
            }
            Completion::Failed(m) => Err(self.usage(m)),
        }
    }

    /// Completes whichever of `reqs` finishes first (the first in `reqs` if several have):
    /// removes it from `reqs` and returns its former index with its message. A request
    /// refused for its size is removed too and its error returned (its message stays
    /// queued); the others stay in `reqs`, usable. Refuses an empty list, and a request of
    /// another communicator (leaving `reqs` as it was).
    pub fn wait_any<T: Pod>(
        &self,
        reqs: &mut Vec<RecvRequest<T>>,
    ) -> Result<(usize, Vec<T>, Status)> {
        if reqs.is_empty() {
            return Err(self.usage(Misuse("wait_any: no receive requests to wait for".into())));
        }
        self.check_all(reqs)?;
        self.reap_sends();
        self.wait_until(|ep| reqs.iter().any(|r| !ep.is_waiting(r.id)));
        let (i, v, st) = self
            .take_first(reqs)
            .ok_or_else(|| self.lost("wait_any"))??;
        Ok((i, v, st))
    }

    /// Like [`Comm::wait_any`], without blocking: `None` if none of `reqs` has finished
    /// (or `reqs` is empty).
    pub fn test_any<T: Pod>(
        &self,
        reqs: &mut Vec<RecvRequest<T>>,
    ) -> Result<Option<(usize, Vec<T>, Status)>> {
        self.check_all(reqs)?;
        {
            let mut b = self.books.borrow_mut();
            b.sends.reap();
            if let Err(f) = b.ep.progress(&mut Mpi(&self.raw)) {
                self.fatal(f)
            }
        }
        self.take_first(reqs).transpose()
    }

    /// Completes every request of `reqs`, emptying it; the messages in the order of `reqs`.
    /// If one is refused for its size, it alone is removed and its error returned once all
    /// have finished (its message stays queued): the others stay in `reqs` with their
    /// messages, to wait for again. Refuses a request of another communicator (leaving `reqs`
    /// as it was).
    pub fn wait_all<T: Pod>(
        &self,
        reqs: &mut Vec<RecvRequest<T>>,
    ) -> Result<Vec<(Vec<T>, Status)>> {
        self.check_all(reqs)?;
        self.reap_sends();
        self.wait_until(|ep| reqs.iter().all(|r| !ep.is_waiting(r.id)));
        let mut b = self.books.borrow_mut();
        let mut out = Vec::with_capacity(reqs.len());
        let ids: Vec<u64> = reqs.iter().map(|r| r.id).collect();
        if let Some(i) = ids.iter().position(|&id| b.ep.refused(id)) {
            let req = reqs.remove(i);
            return match b.ep.complete(req.id) {
                Completion::Failed(m) => Err(self.usage(m)),
                _ => Err(self.lost("wait_all")),
            };
        }
        for req in reqs.drain(..) {
            match b.ep.complete(req.id) {
                Completion::Done(e) => out.push(to_vec(&e)),
                _ => return Err(self.lost("wait_all")),
            }
        }
        Ok(out)
    }

    /// Removes and completes the first of `reqs` that has its outcome.
    fn take_first<T: Pod>(
        &self,
        reqs: &mut Vec<RecvRequest<T>>,
    ) -> Option<Result<(usize, Vec<T>, Status)>> {
        let mut b = self.books.borrow_mut();
        let i = reqs.iter().position(|r| !b.ep.is_waiting(r.id))?;
        let req = reqs.remove(i);
        Some(match b.ep.complete(req.id) {
            Completion::Done(e) => {
                let (v, st) = to_vec(&e);
                Ok((i, v, st))
            }
            Completion::Failed(m) => Err(self.usage(m)),
            Completion::Pending => Err(self.lost("a request")),
        })
    }

    /// An outcome that vanished between the wait and the completion: a bug.
    fn lost(&self, what: &str) -> Error {
        self.usage(Misuse(format!(
            "{what}: a finished receive lost its outcome"
        )))
    }

    fn check_all<T>(&self, reqs: &[RecvRequest<T>]) -> Result<()> {
        reqs.iter().try_for_each(|r| self.check_mine(r))
    }

    /// Advances the posted receives until `done` holds: blocks in MPI while a single receive
    /// waits and nothing queued can serve it, otherwise polls politely.
    fn wait_until(&self, mut done: impl FnMut(&Endpoint) -> bool) {
        let mut backoff = Backoff(0);
        loop {
            let mut b = self.books.borrow_mut();
            let ep = &mut b.ep;
            if done(ep) {
                return;
            }
            let step = match ep.sole_waiting() {
                Some((_, src, tag)) => {
                    let (msg, st) = self.matched_probe(src, tag);
                    ep.accept(receive(msg, st), (src, tag))
                }
                None => ep.progress(&mut Mpi(&self.raw)),
            };
            if let Err(f) = step {
                self.fatal(f)
            }
            if done(ep) {
                return;
            }
            drop(b);
            backoff.pause();
        }
    }

    /// A blocking matched probe in MPI.
    fn matched_probe(&self, src: Source, tag: TagSel) -> (Message, MpiStatus) {
        let t = mpi_tag(tag);
        match src {
            Source::Rank(r) => self.raw.process_at_rank(r).matched_probe_with_tag(t),
            Source::Any => self.raw.any_process().matched_probe_with_tag(t),
        }
    }

    /// Blocks until a message matching (`src`, `tag`) can be received, and says what it is
    /// without receiving it: the next receive of the same selector, or of its source and tag,
    /// gets it (receives already posted come first, in post order; a message in the library's
    /// log comes before MPI's). The message is taken out of MPI into the log, so a following
    /// large receive is copied once more than without the probe. Refuses a negative tag, an
    /// unknown rank, and any probe after `should_exit()`.
    pub fn probe(&self, src: Source, tag: TagSel) -> Result<Status> {
        let mut backoff = Backoff(0);
        loop {
            let mut b = self.books.borrow_mut();
            b.sends.reap();
            b.ep.check_probe(src, tag).map_err(|m| self.usage(m))?;
            let sel = match b.ep.probe(src, tag, &mut Mpi(&self.raw)) {
                Ok(Peek::Found(p)) => return Ok(probed(&p)),
                Ok(Peek::Wait(s, t)) => (s, t),
                Err(f) => self.fatal(f),
            };
            if b.ep.any_waiting() {
                // Posted receives must advance too: poll.
                drop(b);
                backoff.pause();
                continue;
            }
            let (msg, st) = self.matched_probe(sel.0, sel.1);
            if let Err(f) = b.ep.accept(receive(msg, st), sel) {
                self.fatal(f)
            }
        }
    }

    /// [`Comm::probe`] without blocking: `None` if no such message can be received yet.
    pub fn iprobe(&self, src: Source, tag: TagSel) -> Result<Option<Status>> {
        let mut b = self.books.borrow_mut();
        b.sends.reap();
        b.ep.check_probe(src, tag).map_err(|m| self.usage(m))?;
        match b.ep.probe(src, tag, &mut Mpi(&self.raw)) {
            Ok(Peek::Found(p)) => Ok(Some(probed(&p))),
            Ok(Peek::Wait(..)) => Ok(None),
            Err(f) => self.fatal(f),
        }
    }

    /// Refuses a request of another communicator (a restored one by its index).
    fn check_mine<T>(&self, req: &RecvRequest<T>) -> Result<()> {
        let restored = req.comm == 0 && req.index == self.index;
        if req.comm == self.id || restored {
            Ok(())
        } else {
            Err(self.usage(Misuse(format!(
                "receive request #{} belongs to another communicator (#{})",
                req.id, req.index
            ))))
        }
    }

    fn post(&self, src: Source, tag: TagSel, fit: Fit) -> Result<u64> {
        let mut b = self.books.borrow_mut();
        b.sends.reap();
        b.ep.post(src, tag, fit).map_err(|m| self.usage(m))
    }

    /// Waits for receive `id`: blocks in MPI when it is the only receive waiting and nothing
    /// queued can serve it, otherwise advances every posted receive in order.
    fn wait_for(&self, id: u64) -> Result<Entry> {
        self.wait_until(|ep| !ep.is_waiting(id));
        match self.books.borrow_mut().ep.complete(id) {
            Completion::Done(e) => Ok(e),
            Completion::Failed(m) => Err(self.usage(m)),
            Completion::Pending => Err(self.lost("a receive")),
        }
    }

    /// Descriptions of the application's receives still pending (for the misuse report).
    pub(crate) fn pending_requests(&self) -> Vec<String> {
        self.books.borrow().ep.posted_descriptions()
    }

    /// This rank's bookmarks: the next sequence number it would send to each rank.
    pub(crate) fn bookmark(&self) -> Vec<u64> {
        self.books.borrow().ep.bookmark().to_vec()
    }

    /// Refuses sends and receives from now on, with `why`.
    pub(crate) fn stop(&self, why: String) {
        self.books.borrow_mut().ep.stop(why);
    }

    /// The drain of a cut: takes every message numbered below its sender's bookmark
    /// (`sent_to_me`) out of MPI into the log, then completes this rank's own buffered sends
    /// (they complete: every receiver drains what was sent to it). Each wait has the deadline
    /// of `watch` and names the rank it waits for. `what` names the cut for people.
    pub(crate) fn drain(&self, sent_to_me: &[u64], watch: &Watch, what: &str) -> DrainReport {
        let mut report = DrainReport::default();
        let mut b = self.books.borrow_mut();
        let before = (b.ep.logged(), b.ep.logged_bytes());
        for (peer, &bookmark) in sent_to_me.iter().enumerate() {
            loop {
                let missing = match b.ep.missing(peer, bookmark) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(f) => self.fatal(f),
                };
                let mut got = None;
                stall::wait_on_rank(
                    &self.raw,
                    watch,
                    peer as i32,
                    || {
                        format!(
                            "{what}: {missing} messages sent by rank {peer} before its \
                             bookmark have not arrived"
                        )
                    },
                    || {
                        got = Mpi(&self.raw).take(Source::Rank(peer as i32), TagSel::Any);
                        got.is_some()
                    },
                );
                if let Some(raw) = got {
                    if let Err(f) = b.ep.drained(raw, bookmark) {
                        self.fatal(f)
                    }
                }
            }
        }
        if let Err(f) = b.ep.end_cut(sent_to_me).and_then(|()| b.ep.settle()) {
            self.fatal(f)
        }
        report.messages = (b.ep.logged() - before.0) as u64;
        report.bytes = b.ep.logged_bytes() - before.1;
        let sends = &mut b.sends;
        while let Some(o) = sends.out.last() {
            let (dest, bytes) = (o.dest, o.bytes);
            let i = sends.out.len() - 1;
            stall::wait_on_rank(
                &self.raw,
                watch,
                dest,
                || format!("{what}: a {bytes}-byte message sent to rank {dest} was not taken"),
                || sends.test(i),
            );
        }
        report
    }

    /// Takes over the state restored from a snapshot (after the restore cut).
    pub(crate) fn restore_state(&self, state: CommState) {
        self.books.borrow_mut().ep.restore(state);
    }
}

/// What a drain pulled, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DrainReport {
    /// Messages drained.
    pub messages: u64,
    /// Payload bytes drained.
    pub bytes: u64,
}

impl Drop for Comm {
    fn drop(&mut self) {
        // Buffered sends still in flight complete when their receivers take them; a send
        // whose receiver is gone (the job is failing) would block, so its request and memory
        // are left to MPI.
        let sends = &mut self.books.get_mut().sends;
        sends.reap();
        for o in sends.out.drain(..) {
            o.buf.leak();
        }
        sends.reqs.clear();
    }
}

fn probed(p: &Probed) -> Status {
    Status {
        source: p.src,
        tag: p.tag,
        bytes: p.len,
    }
}

fn status(e: &Entry) -> Status {
    Status {
        source: e.src,
        tag: e.tag,
        bytes: e.payload().len(),
    }
}

/// The payload as elements (the accounting checked that the size divides it).
fn to_vec<T: Pod>(e: &Entry) -> (Vec<T>, Status) {
    (bytemuck::pod_collect_to_vec(e.payload()), status(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(n: usize) -> Box<[u8]> {
        vec![0u8; n].into_boxed_slice()
    }

    #[test]
    fn the_send_pool_keeps_8_mib_or_4_buffers_whichever_is_more() {
        const MIB: usize = 1 << 20;
        let mut p = Pool::default();
        // A burst of 32 completed 1 MiB sends: 8 MiB kept, the rest freed.
        for _ in 0..32 {
            p.give(buf(MIB));
        }
        assert_eq!((p.free.len(), p.bytes), (8, 8 * MIB));
        // 4 MiB halos: four are kept whatever their size; the smaller ones go first.
        for _ in 0..10 {
            p.give(buf(4 * MIB));
        }
        assert_eq!((p.free.len(), p.bytes), (4, 16 * MIB));
        // Small messages: at most 64 buffers.
        let mut p = Pool::default();
        for _ in 0..1000 {
            p.give(buf(1024));
        }
        assert_eq!((p.free.len(), p.bytes), (POOL_MAX_BUFFERS, 64 * 1024));
        // A send takes the smallest buffer that fits, or a new one.
        p.give(buf(MIB));
        assert_eq!(p.take(2000).len(), MIB);
        assert_eq!(p.take(100).len(), 1024);
        assert_eq!(p.take(3 * MIB).len(), 3 * MIB);
        assert_eq!(p.bytes, 62 * 1024);
    }
}
