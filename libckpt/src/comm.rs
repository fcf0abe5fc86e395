//! The application's communicator: a duplicate of the one the application passed in (so its
//! messages never match the library's), which counts messages per peer, keeps the message log
//! of the last quiescence, and serves receives from that log before MPI.
//!
//! Sends are buffered: the bytes are copied into a library-owned buffer and sent with
//! `MPI_Isend`, so `send` returns at once whatever the size, and a message can be in flight
//! when its sender reaches `poll` (the quiescence drains it at the receiver). Non-blocking
//! receives use library-owned buffers too, so no MPI request ever points into application
//! memory; an application receive still pending at `poll` is an error, reported on every rank.
//!
//! All payloads are plain-old-data slices moved as bytes (the cluster is homogeneous).
//! The matching rules (log first, then MPI; per source and tag in order) are in
//! [`crate::protocol::quiesce`]; this module only moves bytes and keeps the books.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use bytemuck::Pod;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::point_to_point::{Message, Source as _, Status as MpiStatus};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::error::{Error, Result};
use crate::protocol::quiesce::{self, Counters, Logged, MessageLog};
pub use crate::protocol::quiesce::{Source, TagSel};

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

/// What a receive got: who sent it, with which tag, and how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Sender's rank.
    pub source: i32,
    /// Message tag.
    pub tag: i32,
    /// Payload length in bytes.
    pub bytes: usize,
}

/// A non-blocking receive posted with [`Comm::irecv`]; complete it with [`Comm::wait`] or
/// [`Comm::test`] before the next `poll`.
#[must_use = "a posted receive must be completed with Comm::wait or Comm::test before poll"]
#[derive(Debug)]
pub struct RecvRequest<T> {
    id: u64,
    _t: PhantomData<T>,
}

/// A library-owned byte buffer handed to MPI for the duration of one request. Leaked while
/// MPI may write or read it, reclaimed once the request completed.
struct Owned(*mut [u8]);

impl Owned {
    fn new(bytes: Box<[u8]>) -> (Owned, &'static mut [u8]) {
        let ptr = Box::into_raw(bytes);
        // SAFETY: `ptr` comes from Box::into_raw, so it is valid and uniquely owned; the
        // 'static reference is handed to MPI and the `Owned` is kept until the request
        // completed, and only then is the box rebuilt (see `into_box`).
        (Owned(ptr), unsafe { &mut *ptr })
    }

    /// Reclaims the buffer. Call only after the request using it completed.
    fn into_box(self) -> Box<[u8]> {
        // SAFETY: the pointer came from Box::into_raw and the request that used it completed,
        // so nothing else refers to it any more.
        unsafe { Box::from_raw(self.0) }
    }
}

struct Outgoing {
    req: Request<'static, [u8], StaticScope>,
    buf: Owned,
}

enum Pending {
    /// Served from the message log when it was posted.
    Ready(Logged),
    /// Posted to MPI.
    Posted {
        req: Request<'static, [u8], StaticScope>,
        buf: Owned,
        src: Source,
        tag: TagSel,
    },
}

struct Books {
    counters: Counters,
    log: MessageLog,
    outgoing: Vec<Outgoing>,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
}

/// The wrapped communicator handed to the application by [`crate::Checkpointer::comm`].
pub struct Comm {
    raw: SimpleCommunicator,
    rank: i32,
    size: i32,
    books: RefCell<Books>,
}

fn any_tag() -> i32 {
    // SAFETY: RSMPI_ANY_TAG is a constant the C shim initialises at load time; reading it has
    // no side effects.
    unsafe { mpi::ffi::RSMPI_ANY_TAG }
}

impl Comm {
    pub(crate) fn new(raw: SimpleCommunicator) -> Self {
        let (rank, size) = (raw.rank(), raw.size());
        Comm {
            raw,
            rank,
            size,
            books: RefCell::new(Books {
                counters: Counters::new(size as usize),
                log: MessageLog::default(),
                outgoing: Vec::new(),
                pending: BTreeMap::new(),
                next_id: 0,
            }),
        }
    }

    /// This rank.
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> i32 {
        self.size
    }

    /// Messages sent to / arrived from each peer since the last checkpoint.
    pub fn counters(&self) -> Counters {
        self.books.borrow().counters.clone()
    }

    /// Messages waiting in the log (drained at the last checkpoint, not yet received).
    pub fn logged(&self) -> usize {
        self.books.borrow().log.len()
    }

    fn check_peer(&self, peer: i32, what: &str) -> Result<()> {
        if (0..self.size).contains(&peer) {
            Ok(())
        } else {
            Err(Error::Usage {
                rank: self.rank,
                what: format!(
                    "{what}: rank {peer} does not exist (ranks 0..{})",
                    self.size - 1
                ),
            })
        }
    }

    /// Sends `data` to `dest` with `tag` (a tag >= 0). Buffered: returns at once.
    pub fn send<T: Pod>(&self, dest: i32, tag: i32, data: &[T]) -> Result<()> {
        self.check_peer(dest, "send")?;
        if tag < 0 {
            return Err(Error::Usage {
                rank: self.rank,
                what: format!("send to rank {dest}: tag {tag} is negative"),
            });
        }
        let bytes: Box<[u8]> = bytemuck::cast_slice::<T, u8>(data).into();
        let (buf, view) = Owned::new(bytes);
        let req = self
            .raw
            .process_at_rank(dest)
            .immediate_send_with_tag(StaticScope, &*view, tag);
        let mut b = self.books.borrow_mut();
        b.counters.on_send(dest as usize);
        b.outgoing.push(Outgoing { req, buf });
        reap(&mut b.outgoing);
        Ok(())
    }

    /// Blocking receive into `buf`; the message may be shorter than `buf`, never longer.
    pub fn recv_into<T: Pod>(&self, src: Source, tag: TagSel, buf: &mut [T]) -> Result<Status> {
        let m = self.next_message(src, tag)?;
        let dest: &mut [u8] = bytemuck::cast_slice_mut(buf);
        if m.data.len() > dest.len() || m.data.len() % std::mem::size_of::<T>().max(1) != 0 {
            let what = format!(
                "receive from {src:?} with {tag:?}: the message from rank {} (tag {}) has {} \
                 bytes, which is not a whole number of elements or does not fit in a buffer \
                 of {} bytes",
                m.src,
                m.tag,
                m.data.len(),
                dest.len()
            );
            // Keep it for a later, larger receive rather than losing it.
            self.books.borrow_mut().log.push(m);
            return Err(Error::Usage {
                rank: self.rank,
                what,
            });
        }
        dest[..m.data.len()].copy_from_slice(&m.data);
        Ok(Status {
            source: m.src,
            tag: m.tag,
            bytes: m.data.len(),
        })
    }

    /// Blocking receive of a message of any length.
    pub fn recv_vec<T: Pod>(&self, src: Source, tag: TagSel) -> Result<(Vec<T>, Status)> {
        let m = self.next_message(src, tag)?;
        to_vec(m, self.rank)
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

    /// Posts a non-blocking receive of at most `max` elements.
    pub fn irecv<T: Pod>(&self, src: Source, tag: TagSel, max: usize) -> Result<RecvRequest<T>> {
        if let Source::Rank(r) = src {
            self.check_peer(r, "irecv")?;
        }
        let mut b = self.books.borrow_mut();
        let id = b.next_id;
        b.next_id += 1;
        let pending = match b.log.take_match(src, tag) {
            Some(m) => Pending::Ready(m),
            None => {
                let bytes = vec![0u8; max * std::mem::size_of::<T>()].into_boxed_slice();
                let (buf, view) = Owned::new(bytes);
                let t = match tag {
                    TagSel::Tag(t) => t,
                    TagSel::Any => any_tag(),
                };
                let req = match src {
                    Source::Rank(r) => self.raw.process_at_rank(r).immediate_receive_into_with_tag(
                        StaticScope,
                        view,
                        t,
                    ),
                    Source::Any => {
                        self.raw
                            .any_process()
                            .immediate_receive_into_with_tag(StaticScope, view, t)
                    }
                };
                Pending::Posted { req, buf, src, tag }
            }
        };
        b.pending.insert(id, pending);
        Ok(RecvRequest {
            id,
            _t: PhantomData,
        })
    }

    /// Completes a non-blocking receive.
    pub fn wait<T: Pod>(&self, req: RecvRequest<T>) -> Result<(Vec<T>, Status)> {
        let p = self.books.borrow_mut().pending.remove(&req.id);
        let m = match p {
            None => {
                return Err(Error::Usage {
                    rank: self.rank,
                    what: format!(
                        "receive request #{} is unknown or already completed",
                        req.id
                    ),
                })
            }
            Some(Pending::Ready(m)) => m,
            Some(Pending::Posted { req, buf, .. }) => {
                let st = req.wait();
                self.arrived(st, buf)
            }
        };
        to_vec(m, self.rank)
    }

    /// Completes a non-blocking receive if its message is there (`Some`); once it returned
    /// `Some`, the request is finished and must not be waited for again.
    pub fn test<T: Pod>(&self, req: &RecvRequest<T>) -> Result<Option<(Vec<T>, Status)>> {
        let mut b = self.books.borrow_mut();
        let Some(p) = b.pending.remove(&req.id) else {
            return Err(Error::Usage {
                rank: self.rank,
                what: format!(
                    "receive request #{} is unknown or already completed",
                    req.id
                ),
            });
        };
        let m = match p {
            Pending::Ready(m) => m,
            Pending::Posted {
                req: r,
                buf,
                src,
                tag,
            } => match r.test() {
                Ok(st) => {
                    drop(b);
                    self.arrived(st, buf)
                }
                Err(r) => {
                    b.pending.insert(
                        req.id,
                        Pending::Posted {
                            req: r,
                            buf,
                            src,
                            tag,
                        },
                    );
                    return Ok(None);
                }
            },
        };
        to_vec(m, self.rank).map(Some)
    }

    /// Reduces `send` over all ranks into `recv` on every rank.
    pub fn all_reduce<T: Equivalence>(&self, send: &[T], recv: &mut [T], op: Reduce) {
        self.raw.all_reduce_into(send, recv, op.op());
    }

    /// Broadcasts `buf` from `root` to every rank.
    pub fn broadcast<T: Equivalence>(&self, root: i32, buf: &mut [T]) {
        self.raw.process_at_rank(root).broadcast_into(buf);
    }

    /// Gathers every rank's `data` (all of the same length) at `root`, concatenated in rank
    /// order; `Some` on the root, `None` elsewhere.
    pub fn gather<T: Equivalence + Clone + Default>(
        &self,
        root: i32,
        data: &[T],
    ) -> Option<Vec<T>> {
        let proc = self.raw.process_at_rank(root);
        if self.rank == root {
            let mut out = vec![T::default(); data.len() * self.size as usize];
            proc.gather_into_root(data, &mut out[..]);
            Some(out)
        } else {
            proc.gather_into(data);
            None
        }
    }

    /// Gathers every rank's `data` (all of the same length) on every rank, in rank order.
    pub fn all_gather<T: Equivalence + Clone + Default>(&self, data: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); data.len() * self.size as usize];
        self.raw.all_gather_into(data, &mut out[..]);
        out
    }

    /// Blocks until every rank has called it.
    pub fn barrier(&self) {
        self.raw.barrier();
    }

    /// The next message for (`src`, `tag`): from the log if one matches, else from MPI.
    fn next_message(&self, src: Source, tag: TagSel) -> Result<Logged> {
        if let Source::Rank(r) = src {
            self.check_peer(r, "receive")?;
        }
        if let Some(m) = self.books.borrow_mut().log.take_match(src, tag) {
            return Ok(m);
        }
        let t = match tag {
            TagSel::Tag(t) => t,
            TagSel::Any => any_tag(),
        };
        let (msg, st) = match src {
            Source::Rank(r) => self.raw.process_at_rank(r).matched_probe_with_tag(t),
            Source::Any => self.raw.any_process().matched_probe_with_tag(t),
        };
        Ok(self.receive_matched(msg, st))
    }

    /// Receives a probed message into a new buffer and counts it.
    fn receive_matched(&self, msg: Message, st: MpiStatus) -> Logged {
        let mut data = vec![0u8; st.count(u8::equivalent_datatype()) as usize];
        msg.matched_receive_into(&mut data[..]);
        self.book(&st, data)
    }

    /// Books a completed MPI receive and takes its bytes.
    fn arrived(&self, st: MpiStatus, buf: Owned) -> Logged {
        let mut data = buf.into_box().into_vec();
        data.truncate(st.count(u8::equivalent_datatype()) as usize);
        self.book(&st, data)
    }

    /// Counts a message taken out of MPI.
    fn book(&self, st: &MpiStatus, data: Vec<u8>) -> Logged {
        let src = st.source_rank();
        self.books.borrow_mut().counters.on_arrive(src as usize);
        Logged {
            src,
            tag: st.tag(),
            data,
        }
    }

    /// Whether the application has a receive posted and not completed.
    pub(crate) fn has_pending(&self) -> bool {
        !self.books.borrow().pending.is_empty()
    }

    /// Descriptions of the application's receives still pending (for the misuse report).
    pub(crate) fn pending_requests(&self) -> Vec<String> {
        self.books
            .borrow()
            .pending
            .iter()
            .map(|(id, p)| match p {
                Pending::Ready(m) => format!(
                    "irecv #{id} (its message from rank {} with tag {} has arrived, but it was \
                     never waited for)",
                    m.src, m.tag
                ),
                Pending::Posted { src, tag, .. } => {
                    format!(
                        "irecv #{id} from {} with {}",
                        describe_src(*src),
                        describe_tag(*tag)
                    )
                }
            })
            .collect()
    }

    /// Messages sent to each peer since the last quiescence (the bookmark this rank sends).
    pub(crate) fn sent_counts(&self) -> Vec<u64> {
        self.books.borrow().counters.sent.clone()
    }

    /// Drains in-flight messages: pulls `plan[p]` messages from each peer `p` into the log,
    /// then completes this rank's own buffered sends and resets the counters. The plan comes
    /// from the bookmark exchange, so every message pulled here was sent before its sender's
    /// checkpoint; the sends complete because every receiver drains what was sent to it.
    pub(crate) fn drain(&self, plan: &[u64]) -> quiesce::DrainReport {
        let mut report = quiesce::DrainReport::default();
        for (peer, &k) in plan.iter().enumerate() {
            for _ in 0..k {
                let (msg, st) = self
                    .raw
                    .process_at_rank(peer as i32)
                    .matched_probe_with_tag(any_tag());
                let m = self.receive_matched(msg, st);
                report.record(&m);
                self.books.borrow_mut().log.push(m);
            }
        }
        let outgoing = std::mem::take(&mut self.books.borrow_mut().outgoing);
        for o in outgoing {
            o.req.wait();
            drop(o.buf.into_box());
        }
        self.books.borrow_mut().counters.reset();
        report
    }

    /// This rank's arrived counts (for the drain plan).
    pub(crate) fn arrived_counts(&self) -> Vec<u64> {
        self.books.borrow().counters.arrived.clone()
    }

    /// The message log, encoded for the snapshot.
    pub(crate) fn encode_log(&self) -> Vec<u8> {
        self.books.borrow().log.encode()
    }

    /// Replaces the message log with one restored from a snapshot.
    pub(crate) fn restore_log(&self, log: MessageLog) {
        let mut b = self.books.borrow_mut();
        b.log = log;
        b.counters.reset();
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // Buffered sends still in flight complete when their receivers take them; a send
        // whose receiver is gone (the job is failing) would block, so it is handed to MPI.
        let b = self.books.get_mut();
        for o in b.outgoing.drain(..) {
            match o.req.test() {
                Ok(_) => drop(o.buf.into_box()),
                // SAFETY: the buffer stays leaked, so MPI may still read it.
                Err(r) => {
                    let _ = unsafe { r.into_raw() };
                }
            }
        }
        for (_, p) in std::mem::take(&mut b.pending) {
            if let Pending::Posted { req, .. } = p {
                // SAFETY: as above, the receive buffer stays leaked.
                let _ = unsafe { req.into_raw() };
            }
        }
    }
}

/// Frees the buffers of completed sends at the front (sends mostly complete in order).
fn reap(outgoing: &mut Vec<Outgoing>) {
    if outgoing.len() < 16 {
        return;
    }
    let mut kept = Vec::with_capacity(outgoing.len());
    for o in outgoing.drain(..) {
        match o.req.test() {
            Ok(_) => drop(o.buf.into_box()),
            Err(req) => kept.push(Outgoing { req, buf: o.buf }),
        }
    }
    *outgoing = kept;
}

fn describe_src(s: Source) -> String {
    match s {
        Source::Any => "any rank".into(),
        Source::Rank(r) => format!("rank {r}"),
    }
}

fn describe_tag(t: TagSel) -> String {
    match t {
        TagSel::Any => "any tag".into(),
        TagSel::Tag(t) => format!("tag {t}"),
    }
}

fn to_vec<T: Pod>(m: Logged, rank: i32) -> Result<(Vec<T>, Status)> {
    let size = std::mem::size_of::<T>().max(1);
    if m.data.len() % size != 0 {
        return Err(Error::Usage {
            rank,
            what: format!(
                "message from rank {} (tag {}) has {} bytes, not a whole number of {size}-byte elements",
                m.src,
                m.tag,
                m.data.len()
            ),
        });
    }
    let st = Status {
        source: m.src,
        tag: m.tag,
        bytes: m.data.len(),
    };
    Ok((bytemuck::pod_collect_to_vec(&m.data), st))
}
