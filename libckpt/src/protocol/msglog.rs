//! The message log: messages taken out of the network that the application has not received
//! yet, kept in MPI's matching order, and its encoding in the snapshot.
//!
//! Messages enter the log when the quiescence drains them, when a receive refuses one (too
//! large, or not a whole number of elements: it stays for the next matching receive), or when
//! one arrives that an earlier-posted receive cannot take yet. Per sender the log keeps stream
//! order: entries restored from a snapshot (no sequence number) first, then entries in
//! sequence-number order. Across senders, a wildcard receive takes the entry that arrived
//! first.
//!
//! # Snapshot section `@ckpt/msglog`, version 2 (little-endian)
//!
//! ```text
//! 0   4  magic "CKML"
//! 4   4  version (2)
//! 8   4  ranks n
//! 12  8n next sequence number to send to each rank
//! ..  8n next sequence number expected from each rank (all below it were taken)
//! ..  8  number of messages
//! then per message, in the order receives match them:
//!     4  source rank (i32)
//!     4  tag (i32)
//!     8  payload length
//!     ..  payload
//! ```
//! Version 1 (no sequence numbers: counters restarted from zero at every checkpoint) is still
//! read: its messages, with every sequence number zero.
//!
//! # Version 3: every communicator ([`LogSet`])
//!
//! The snapshot holds the state of each communicator of the rank, in the order the
//! application created them (0: the root communicator `ck.comm()`), and each logged message
//! names its communicator:
//!
//! ```text
//! 0   4  magic "CKML"
//! 4   4  version (3)
//! 8   4  communicators c (at least 1)
//! then per communicator: 4 ranks n, 8n next to send to each rank, 8n next expected
//! ..  8  number of messages
//! then per message, communicator by communicator, each in the order receives match them:
//!     4  communicator (index above)
//!     4  source rank in that communicator
//!     4  tag
//!     8  payload length
//!     ..  payload
//! ```
//! Versions 1 and 2 read as the root communicator alone.
//!
//! # Version 4: receives pending at the cut
//!
//! As version 3, with each communicator's receives still pending at the cut after its
//! sequence numbers (the application keeps their handles in its own state and completes them
//! after a restart):
//!
//! ```text
//! then per communicator: 4 ranks n, 8n next to send, 8n next expected,
//!     8  next request id (every pending id is below it)
//!     4  pending receives p
//!     per receive, in post order (ids ascending):
//!         8  request id
//!         4  source (-1: any)        4  tag (-1: any)
//!         8  most payload bytes accepted (u64::MAX: any)    8  element size
//!         1  state: 0 waiting, 1 matched (then 4 source, 4 tag, 8 length, payload),
//!            2 refused for its size (then 8 length, the refusal's text in UTF-8)
//! ..  8  number of messages, then the messages as in version 3
//! ```
//! Version 3 reads with no pending receive.

use std::collections::{BTreeMap, VecDeque};

use super::envelope::ENVELOPE_LEN;

/// Which senders a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any rank (`MPI_ANY_SOURCE`).
    Any,
    /// This rank only.
    Rank(i32),
}

/// Which tags a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagSel {
    /// Any tag (`MPI_ANY_TAG`).
    Any,
    /// This tag only (a tag is never negative).
    Tag(i32),
}

/// Whether a message from `src` with `tag` matches the receive (`want_src`, `want_tag`).
pub fn matches(want_src: Source, want_tag: TagSel, src: i32, tag: i32) -> bool {
    (match want_src {
        Source::Any => true,
        Source::Rank(r) => r == src,
    }) && (match want_tag {
        TagSel::Any => true,
        TagSel::Tag(t) => t == tag,
    })
}

/// A message held by the library until the application receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sender.
    pub src: i32,
    /// Tag.
    pub tag: i32,
    /// Sequence number in the sender's stream, for messages taken from the network in this
    /// era; `None` for messages restored from a snapshot or left from before `restore()`.
    pub seq: Option<u64>,
    /// The frame as received: envelope (when `off` is [`ENVELOPE_LEN`]) then payload.
    frame: Vec<u8>,
    off: usize,
    /// Arrival order, for wildcard receives across senders.
    stamp: u64,
    /// Left from before `restore()` (set-up traffic): receives restored from the snapshot
    /// do not take it.
    pub early: bool,
}

impl Entry {
    /// A message taken from the network: `frame` starts with its envelope.
    pub fn from_frame(src: i32, tag: i32, seq: u64, frame: Vec<u8>) -> Entry {
        Entry {
            src,
            tag,
            seq: Some(seq),
            frame,
            off: ENVELOPE_LEN,
            stamp: 0,
            early: false,
        }
    }

    /// A message restored from a snapshot.
    pub fn restored(src: i32, tag: i32, payload: Vec<u8>) -> Entry {
        Entry {
            src,
            tag,
            seq: None,
            frame: payload,
            off: 0,
            stamp: 0,
            early: false,
        }
    }

    /// The application's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.off..]
    }
}

/// The per-rank message log (see the module documentation for its order).
#[derive(Debug, Clone, Default)]
pub struct MessageLog {
    by_src: BTreeMap<i32, VecDeque<Entry>>,
    next_stamp: u64,
    len: usize,
}

/// Where a matching entry is: its sender and its index in that sender's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// Sender.
    pub src: i32,
    /// Index in the sender's queue.
    pub index: usize,
}

impl MessageLog {
    /// Adds `e` at its place in its sender's stream.
    pub fn insert(&mut self, mut e: Entry) {
        e.stamp = self.next_stamp;
        self.next_stamp += 1;
        self.len += 1;
        let q = self.by_src.entry(e.src).or_default();
        let at = match e.seq {
            // After every restored entry and every entry with a smaller number.
            Some(s) => q.partition_point(|x| x.seq.is_none_or(|xs| xs < s)),
            None => q.partition_point(|x| x.seq.is_none()),
        };
        q.insert(at, e);
    }

    /// The first entry of each sender's stream that matches, as candidates for a receive:
    /// for `Source::Rank(p)` at most one; for `Source::Any` one per sender, oldest arrival
    /// first.
    pub fn candidates(&self, src: Source, tag: TagSel) -> Vec<(At, &Entry)> {
        self.candidates_for(src, tag, false)
    }

    /// [`MessageLog::candidates`], skipping entries left from before `restore()` if
    /// `skip_early` (for a receive restored from the snapshot).
    pub fn candidates_for(&self, src: Source, tag: TagSel, skip_early: bool) -> Vec<(At, &Entry)> {
        let first = |tag: TagSel, s: i32, q: &VecDeque<Entry>| {
            q.iter()
                .position(|e| !(skip_early && e.early) && matches(Source::Any, tag, e.src, e.tag))
                .map(|index| At { src: s, index })
        };
        let mut out: Vec<(At, &Entry)> = match src {
            Source::Rank(p) => self
                .by_src
                .get(&p)
                .and_then(|q| first(tag, p, q).map(|at| (at, &q[at.index])))
                .into_iter()
                .collect(),
            Source::Any => self
                .by_src
                .iter()
                .filter_map(|(&s, q)| first(tag, s, q).map(|at| (at, &q[at.index])))
                .collect(),
        };
        out.sort_by_key(|(_, e)| e.stamp);
        out
    }

    /// The entry at `at`.
    pub fn get(&self, at: At) -> Option<&Entry> {
        self.by_src.get(&at.src)?.get(at.index)
    }

    /// Removes the entry at `at` (from [`MessageLog::candidates`]).
    pub fn remove(&mut self, at: At) -> Option<Entry> {
        let q = self.by_src.get_mut(&at.src)?;
        let e = q.remove(at.index)?;
        if q.is_empty() {
            self.by_src.remove(&at.src);
        }
        self.len -= 1;
        Some(e)
    }

    /// Whether an entry from `src` that matches `tag` comes before sequence number `seq` in
    /// that sender's stream (so a message numbered `seq` must not overtake it).
    pub fn has_earlier(&self, src: i32, tag: TagSel, seq: u64) -> bool {
        self.by_src.get(&src).is_some_and(|q| {
            q.iter()
                .take_while(|e| e.seq.is_none_or(|s| s < seq))
                .any(|e| matches(Source::Any, tag, e.src, e.tag))
        })
    }

    /// Forgets sequence numbers (at a restore: they belonged to the previous era) and marks
    /// every entry as left from before the restore.
    pub fn forget_seqs(&mut self) {
        for q in self.by_src.values_mut() {
            for e in q.iter_mut() {
                e.seq = None;
                e.early = true;
            }
        }
    }

    /// Messages in the log.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Payload bytes in the log.
    pub fn bytes(&self) -> u64 {
        self.iter().map(|e| e.payload().len() as u64).sum()
    }

    /// Every entry in the order receives would match them: each sender's stream in order,
    /// senders interleaved by arrival.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        let mut heads: Vec<std::iter::Peekable<std::collections::vec_deque::Iter<'_, Entry>>> =
            self.by_src.values().map(|q| q.iter().peekable()).collect();
        std::iter::from_fn(move || {
            let best = heads
                .iter_mut()
                .enumerate()
                .filter_map(|(i, h)| h.peek().map(|e| (e.stamp, i)))
                .min()?;
            heads[best.1].next()
        })
    }
}

/// How a receive pending at a cut stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvState {
    /// No message yet: re-posted at a restart.
    Waiting,
    /// Its message arrived; the application has not completed the request yet.
    Matched(Entry),
    /// Refused for its size (the text says why); not completed yet.
    Refused(String),
}

/// A receive posted and not completed at a cut, as the snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecv {
    /// Its request id (the application's handle names it).
    pub id: u64,
    /// Senders it accepts.
    pub src: Source,
    /// Tags it accepts.
    pub tag: TagSel,
    /// Most payload bytes it accepts (`None`: any).
    pub max_bytes: Option<u64>,
    /// Element size the payload must be a whole number of.
    pub elem: u64,
    /// Where it stands.
    pub state: RecvState,
}

/// What the snapshot holds of one rank's communication: the sequence numbers on every pair,
/// the message log, and the receives still pending.
#[derive(Debug, Clone, Default)]
pub struct CommState {
    /// Next sequence number to send to each rank.
    pub next_send: Vec<u64>,
    /// Next sequence number expected from each rank.
    pub recv_below: Vec<u64>,
    /// Messages not yet received by the application, in matching order.
    pub log: MessageLog,
    /// Receives posted and not completed, in post order.
    pub pending: Vec<PendingRecv>,
    /// The next request id (above every pending one).
    pub next_id: u64,
}

/// Why an encoded message log cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Wrong magic or version.
    #[error("not a message log of version 1 to 4 (found magic {magic:02x?}, version {version})")]
    Header {
        /// Magic found.
        magic: Vec<u8>,
        /// Version found.
        version: u32,
    },
    /// The bytes end early, a length is impossible, or a source or tag is negative.
    #[error("message {index}: {detail}")]
    Truncated {
        /// Index of the message being decoded.
        index: u64,
        /// What is wrong.
        detail: String,
    },
    /// The sequence numbers are for another number of ranks, or cut short.
    #[error("sequence numbers: {0}")]
    Seqs(String),
    /// Bytes after the last message.
    #[error("{0} bytes after the last message")]
    Trailing(usize),
    /// A pending receive (version 4) is cut short or impossible.
    #[error("pending receives: {0}")]
    Pending(String),
}

const LOG_MAGIC: [u8; 4] = *b"CKML";
const LOG_VERSION: u32 = 2;
const LOG_VERSION_SET: u32 = 3;
const LOG_VERSION_PENDING: u32 = 4;

/// One communicator's part of a [`LogSet`] to encode.
#[derive(Debug, Clone)]
pub struct StateParts<'a> {
    /// Next sequence number to send to each rank.
    pub next_send: &'a [u64],
    /// Next expected from each rank (as long as `next_send`).
    pub recv_below: Vec<u64>,
    /// The log.
    pub log: &'a MessageLog,
    /// Receives pending, in post order.
    pub pending: Vec<PendingRecv>,
    /// The next request id.
    pub next_id: u64,
}

fn sel_code(x: Option<i32>) -> i32 {
    x.unwrap_or(-1)
}

fn put_u32(out: &mut Vec<u8>, x: u32) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn encode_pending(out: &mut Vec<u8>, p: &PendingRecv) {
    put_u64(out, p.id);
    let src = sel_code(match p.src {
        Source::Rank(r) => Some(r),
        Source::Any => None,
    });
    let tag = sel_code(match p.tag {
        TagSel::Tag(t) => Some(t),
        TagSel::Any => None,
    });
    put_u32(out, src as u32);
    put_u32(out, tag as u32);
    put_u64(out, p.max_bytes.unwrap_or(u64::MAX));
    put_u64(out, p.elem);
    match &p.state {
        RecvState::Waiting => out.push(0),
        RecvState::Matched(e) => {
            out.push(1);
            put_u32(out, e.src as u32);
            put_u32(out, e.tag as u32);
            put_u64(out, e.payload().len() as u64);
            out.extend_from_slice(e.payload());
        }
        RecvState::Refused(why) => {
            out.push(2);
            put_u64(out, why.len() as u64);
            out.extend_from_slice(why.as_bytes());
        }
    }
}

/// Decodes the pending receives of communicator `c` of `n` ranks, whose next id is `next_id`.
fn decode_pending(
    r: &mut Reader<'_>,
    c: usize,
    n: usize,
    next_id: u64,
) -> Result<Vec<PendingRecv>, LogError> {
    let bad = |what: String| LogError::Pending(format!("communicator {c}: {what}"));
    let count = r.u32().ok_or_else(|| bad("no count".into()))?;
    let mut out: Vec<PendingRecv> = Vec::new();
    for i in 0..count {
        let short = || bad(format!("receive {i}: input ends in it"));
        let id = r.u64().ok_or_else(short)?;
        let src = r.u32().ok_or_else(short)? as i32;
        let tag = r.u32().ok_or_else(short)? as i32;
        let max = r.u64().ok_or_else(short)?;
        let elem = r.u64().ok_or_else(short)?;
        let kind = r.take(1).ok_or_else(short)?[0];
        if id >= next_id || out.last().is_some_and(|p| p.id >= id) {
            return Err(bad(format!(
                "receive {i}: id {id} out of order or not below the next id {next_id}"
            )));
        }
        let src = match src {
            -1 => Source::Any,
            s if (0..n as i64).contains(&i64::from(s)) => Source::Rank(s),
            s => return Err(bad(format!("receive {i}: source {s} of {n} ranks"))),
        };
        let tag = match tag {
            -1 => TagSel::Any,
            t if t >= 0 => TagSel::Tag(t),
            t => return Err(bad(format!("receive {i}: tag {t}"))),
        };
        let bytes = |r: &mut Reader<'_>| -> Result<Vec<u8>, LogError> {
            let len = r.u64().ok_or_else(short)?;
            let len = usize::try_from(len).map_err(|_| short())?;
            Ok(r.take(len).ok_or_else(short)?.to_vec())
        };
        let state = match kind {
            0 => RecvState::Waiting,
            1 => {
                let s = r.u32().ok_or_else(short)? as i32;
                let t = r.u32().ok_or_else(short)? as i32;
                if s < 0 || t < 0 || s as usize >= n {
                    return Err(bad(format!("receive {i}: message from {s} with tag {t}")));
                }
                RecvState::Matched(Entry::restored(s, t, bytes(r)?))
            }
            2 => RecvState::Refused(
                String::from_utf8(bytes(r)?).map_err(|_| bad(format!("receive {i}: text")))?,
            ),
            k => return Err(bad(format!("receive {i}: state {k}"))),
        };
        out.push(PendingRecv {
            id,
            src,
            tag,
            max_bytes: (max != u64::MAX).then_some(max),
            elem,
            state,
        });
    }
    Ok(out)
}

/// The state of every communicator of a rank, in creation order (0: the root one): the
/// snapshot section in version 3.
#[derive(Debug, Clone, Default)]
pub struct LogSet {
    /// One state per communicator.
    pub comms: Vec<CommState>,
}

impl LogSet {
    /// Encodes the states (version 4).
    pub fn encode(&self) -> Vec<u8> {
        let parts: Vec<StateParts<'_>> = self
            .comms
            .iter()
            .map(|c| StateParts {
                next_send: &c.next_send,
                recv_below: c.recv_below.clone(),
                log: &c.log,
                pending: c.pending.clone(),
                next_id: c.next_id,
            })
            .collect();
        Self::encode_parts(&parts)
    }

    /// Encodes states from their parts (version 4).
    pub fn encode_parts(parts: &[StateParts<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&LOG_MAGIC);
        put_u32(&mut out, LOG_VERSION_PENDING);
        put_u32(&mut out, parts.len() as u32);
        for p in parts {
            put_u32(&mut out, p.next_send.len() as u32);
            for x in p.next_send.iter().chain(p.recv_below.iter()) {
                put_u64(&mut out, *x);
            }
            put_u64(&mut out, p.next_id);
            put_u32(&mut out, p.pending.len() as u32);
            for r in &p.pending {
                encode_pending(&mut out, r);
            }
        }
        let count: usize = parts.iter().map(|p| p.log.len()).sum();
        out.extend_from_slice(&(count as u64).to_le_bytes());
        for (c, p) in parts.iter().enumerate() {
            for e in p.log.iter() {
                out.extend_from_slice(&(c as u32).to_le_bytes());
                encode_entry(&mut out, e);
            }
        }
        out
    }

    /// Decodes the section of a job of `nranks` ranks (the root communicator's size): version
    /// 4 or 3, or versions 1 and 2 as the root communicator alone; empty input is one empty
    /// root state. Never allocates more than the input's length.
    pub fn decode(bytes: &[u8], nranks: usize) -> Result<LogSet, LogError> {
        let version = match bytes.get(4..8) {
            Some(v) if bytes[..4] == LOG_MAGIC => u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            _ => 0,
        };
        if version != LOG_VERSION_SET && version != LOG_VERSION_PENDING {
            return Ok(LogSet {
                comms: vec![CommState::decode(bytes, nranks)?],
            });
        }
        let mut r = Reader { bytes, pos: 8 };
        let seqs = |what: String| LogError::Seqs(what);
        let ncomms = r
            .u32()
            .ok_or_else(|| seqs("no communicator count".into()))? as usize;
        if ncomms == 0 {
            return Err(seqs("no communicator".into()));
        }
        let mut comms = Vec::new();
        for c in 0..ncomms {
            let n = r
                .u32()
                .ok_or_else(|| seqs(format!("communicator {c}: no rank count")))?
                as usize;
            if c == 0 && n != nranks {
                return Err(seqs(format!(
                    "the root communicator was written for {n} ranks, this job has {nranks}"
                )));
            }
            if (n as u64).saturating_mul(16) > (bytes.len() - r.pos) as u64 {
                return Err(seqs(format!("communicator {c}: input ends in its numbers")));
            }
            let mut next = || r.u64().unwrap_or_default();
            let next_send: Vec<u64> = (0..n).map(|_| next()).collect();
            let recv_below: Vec<u64> = (0..n).map(|_| next()).collect();
            let (pending, next_id) = if version == LOG_VERSION_PENDING {
                let next_id = r
                    .u64()
                    .ok_or_else(|| seqs(format!("communicator {c}: no next request id")))?;
                (decode_pending(&mut r, c, n, next_id)?, next_id)
            } else {
                (Vec::new(), 0)
            };
            comms.push(CommState {
                next_send,
                recv_below,
                log: MessageLog::default(),
                pending,
                next_id,
            });
        }
        let count = r.u64().ok_or(LogError::Truncated {
            index: 0,
            detail: "no message count".into(),
        })?;
        for index in 0..count {
            let short = |what: &str| LogError::Truncated {
                index,
                detail: format!("input ends in its {what}"),
            };
            let comm = r.u32().ok_or_else(|| short("communicator"))? as usize;
            let src = r.u32().ok_or_else(|| short("source"))? as i32;
            let tag = r.u32().ok_or_else(|| short("tag"))? as i32;
            let Some(state) = comms.get_mut(comm) else {
                return Err(LogError::Truncated {
                    index,
                    detail: format!("communicator {comm} of {ncomms}"),
                });
            };
            let n = state.next_send.len();
            if src < 0 || tag < 0 || src as usize >= n {
                return Err(LogError::Truncated {
                    index,
                    detail: format!(
                        "source {src} or tag {tag} impossible in communicator {comm} of {n} ranks"
                    ),
                });
            }
            let data = r.payload(index)?;
            state.log.insert(Entry::restored(src, tag, data));
        }
        if r.pos != bytes.len() {
            return Err(LogError::Trailing(bytes.len() - r.pos));
        }
        Ok(LogSet { comms })
    }
}

impl CommState {
    /// Encodes the state (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        Self::encode_parts(&self.next_send, &self.recv_below, &self.log)
    }

    /// Encodes a state from its parts (`next_send` and `recv_below` of equal length).
    pub fn encode_parts(next_send: &[u64], recv_below: &[u64], log: &MessageLog) -> Vec<u8> {
        let n = next_send.len();
        let mut out = Vec::with_capacity(24 + 16 * n + 16 * log.len() + log.bytes() as usize);
        out.extend_from_slice(&LOG_MAGIC);
        out.extend_from_slice(&LOG_VERSION.to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for x in next_send.iter().chain(recv_below) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&(log.len() as u64).to_le_bytes());
        for e in log.iter() {
            encode_entry(&mut out, e);
        }
        out
    }

    /// Decodes a state for a job of `nranks` ranks; empty input is an empty state (a
    /// snapshot may store nothing). Never allocates more than the input's length; a negative
    /// source or tag, or a source outside the job, is an error.
    pub fn decode(bytes: &[u8], nranks: usize) -> Result<CommState, LogError> {
        let zeros = CommState {
            next_send: vec![0; nranks],
            recv_below: vec![0; nranks],
            ..CommState::default()
        };
        if bytes.is_empty() {
            return Ok(zeros);
        }
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4).unwrap_or_default().to_vec();
        let version = r.u32().unwrap_or(0);
        if magic != LOG_MAGIC || !(1..=LOG_VERSION).contains(&version) {
            return Err(LogError::Header { magic, version });
        }
        let mut state = zeros;
        if version >= 2 {
            let n = r
                .u32()
                .ok_or_else(|| LogError::Seqs("no rank count".into()))?;
            if n as usize != nranks {
                return Err(LogError::Seqs(format!(
                    "written for {n} ranks, this job has {nranks}"
                )));
            }
            for i in 0..2 * nranks {
                let x = r
                    .u64()
                    .ok_or_else(|| LogError::Seqs(format!("input ends at number {i}")))?;
                if i < nranks {
                    state.next_send[i] = x;
                } else {
                    state.recv_below[i - nranks] = x;
                }
            }
        }
        let count = r.u64().ok_or(LogError::Truncated {
            index: 0,
            detail: "no message count".into(),
        })?;
        for index in 0..count {
            let short = |what: &str| LogError::Truncated {
                index,
                detail: format!("input ends in its {what}"),
            };
            let src = r.u32().ok_or_else(|| short("source"))? as i32;
            let tag = r.u32().ok_or_else(|| short("tag"))? as i32;
            // A negative rank or tag never comes from MPI (they are its wildcards); handing
            // one to the application as a status would be silently wrong data.
            if src < 0 || tag < 0 || src as usize >= nranks {
                return Err(LogError::Truncated {
                    index,
                    detail: format!(
                        "source {src} or tag {tag} impossible in a job of {nranks} ranks"
                    ),
                });
            }
            let data = r.payload(index)?;
            state.log.insert(Entry::restored(src, tag, data));
        }
        if r.pos != bytes.len() {
            return Err(LogError::Trailing(bytes.len() - r.pos));
        }
        Ok(state)
    }
}

/// One logged message: source, tag, length, payload (after its communicator, from v3 on).
fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    out.extend_from_slice(&e.src.to_le_bytes());
    out.extend_from_slice(&e.tag.to_le_bytes());
    out.extend_from_slice(&(e.payload().len() as u64).to_le_bytes());
    out.extend_from_slice(e.payload());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The length-prefixed payload of logged message `index`, checked against what is left.
    fn payload(&mut self, index: u64) -> Result<Vec<u8>, LogError> {
        let short = |what: &str| LogError::Truncated {
            index,
            detail: format!("input ends in its {what}"),
        };
        let len = self.u64().ok_or_else(|| short("length"))?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if len > remaining {
            return Err(LogError::Truncated {
                index,
                detail: format!("payload of {len} bytes, only {remaining} left"),
            });
        }
        Ok(self
            .take(len as usize)
            .ok_or_else(|| short("payload"))?
            .to_vec())
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        Some(u64::from_le_bytes(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored(src: i32, tag: i32, id: u8) -> Entry {
        Entry::restored(src, tag, vec![id])
    }

    fn take(l: &mut MessageLog, src: Source, tag: TagSel) -> Option<u8> {
        let at = l.candidates(src, tag).first().map(|(at, _)| *at)?;
        l.remove(at).map(|e| e.payload()[0])
    }

    fn log_of(entries: &[Entry]) -> MessageLog {
        let mut l = MessageLog::default();
        for e in entries {
            l.insert(e.clone());
        }
        l
    }

    #[test]
    fn matching_order() {
        let log = [
            restored(1, 5, 1),
            restored(2, 5, 2),
            restored(1, 7, 3),
            restored(1, 5, 4),
        ];
        let cases = [
            (Source::Rank(1), TagSel::Tag(5), Some(1)),
            (Source::Rank(1), TagSel::Tag(7), Some(3)),
            (Source::Rank(2), TagSel::Any, Some(2)),
            (Source::Any, TagSel::Tag(7), Some(3)),
            (Source::Any, TagSel::Any, Some(1)),
            (Source::Rank(3), TagSel::Any, None),
            (Source::Rank(2), TagSel::Tag(7), None),
        ];
        for (src, tag, want) in cases {
            assert_eq!(take(&mut log_of(&log), src, tag), want, "{src:?} {tag:?}");
        }
        assert_eq!(
            take(&mut MessageLog::default(), Source::Any, TagSel::Any),
            None
        );
    }

    #[test]
    fn per_sender_order_follows_sequence_numbers_not_arrival() {
        // Sequence 7 arrived first (a receive refused it), then the gap below it was filled.
        let frame = |id: u8| {
            let mut f = vec![0u8; ENVELOPE_LEN];
            f.push(id);
            f
        };
        let mut l = MessageLog::default();
        l.insert(restored(1, 5, 0));
        l.insert(Entry::from_frame(1, 5, 7, frame(7)));
        l.insert(Entry::from_frame(1, 5, 3, frame(3)));
        l.insert(Entry::from_frame(1, 5, 5, frame(5)));
        let got: Vec<u8> = (0..4)
            .map(|_| take(&mut l, Source::Rank(1), TagSel::Tag(5)).unwrap())
            .collect();
        assert_eq!(got, vec![0, 3, 5, 7]);
        assert!(l.is_empty());
        let l = log_of(&[Entry::from_frame(1, 5, 7, frame(7))]);
        assert!(l.has_earlier(1, TagSel::Any, 8));
        assert!(!l.has_earlier(1, TagSel::Any, 7));
        assert!(!l.has_earlier(1, TagSel::Tag(4), 8));
    }

    #[test]
    fn encoding_round_trips_in_matching_order_and_every_truncation_fails() {
        let mut l = MessageLog::default();
        l.insert(restored(0, 1, 9));
        l.insert(Entry::restored(3, i32::MAX, vec![]));
        l.insert(Entry::restored(2, 0, (0..300).map(|i| i as u8).collect()));
        l.insert(restored(0, 1, 10));
        let s = CommState {
            next_send: vec![1, 2, 3, u64::MAX],
            recv_below: vec![5, 6, 7, 8],
            log: l,
            ..CommState::default()
        };
        let bytes = s.encode();
        let back = CommState::decode(&bytes, 4).unwrap();
        assert_eq!(back.next_send, s.next_send);
        assert_eq!(back.recv_below, s.recv_below);
        let order = |l: &MessageLog| {
            l.iter()
                .map(|e| (e.src, e.tag, e.payload().to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&back.log), order(&s.log));
        assert_eq!(back.encode(), bytes);
        assert!(CommState::decode(&[], 4).unwrap().log.is_empty());
        for cut in 1..bytes.len() {
            assert!(CommState::decode(&bytes[..cut], 4).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            CommState::decode(&longer, 4),
            Err(LogError::Trailing(1))
        ));
        assert!(matches!(
            CommState::decode(&bytes, 3),
            Err(LogError::Seqs(_))
        ));
    }

    #[test]
    fn version_1_is_read_with_zero_sequence_numbers() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"CKML");
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.extend_from_slice(&1i32.to_le_bytes());
        v1.extend_from_slice(&4i32.to_le_bytes());
        v1.extend_from_slice(&2u64.to_le_bytes());
        v1.extend_from_slice(b"hi");
        let s = CommState::decode(&v1, 2).unwrap();
        assert_eq!(s.next_send, vec![0, 0]);
        assert_eq!(s.recv_below, vec![0, 0]);
        let e: Vec<_> = s.log.iter().collect();
        assert_eq!((e[0].src, e[0].tag, e[0].payload()), (1, 4, &b"hi"[..]));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"CKML");
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(
            CommState::decode(&bytes, 1),
            Err(LogError::Truncated { index: 0, .. })
        ));
    }

    #[test]
    fn impossible_source_or_tag_is_refused() {
        for (src, tag) in [(-1, 0), (0, -1), (2, 0)] {
            let s = CommState {
                next_send: vec![0, 0],
                recv_below: vec![0, 0],
                log: log_of(&[restored(src, tag, 1)]),
                ..CommState::default()
            };
            let err = CommState::decode(&s.encode(), 2).unwrap_err();
            assert!(err.to_string().contains("message 0: source"), "{err}");
        }
    }

    fn order(l: &MessageLog) -> Vec<(i32, i32, Vec<u8>)> {
        l.iter()
            .map(|e| (e.src, e.tag, e.payload().to_vec()))
            .collect()
    }

    fn three_comms() -> LogSet {
        let state = |n: usize, entries: &[Entry]| CommState {
            next_send: (0..n as u64).collect(),
            recv_below: (10..10 + n as u64).collect(),
            log: log_of(entries),
            ..CommState::default()
        };
        let mut set = LogSet {
            comms: vec![
                state(4, &[restored(1, 5, 1), restored(0, 5, 2)]),
                state(2, &[]),
                // Same source and tag as the root's messages: told apart by communicator.
                state(2, &[restored(1, 5, 3), Entry::restored(0, 7, vec![4; 100])]),
            ],
        };
        let pending = |id: u64, src: Source, tag: TagSel, state: RecvState| PendingRecv {
            id,
            src,
            tag,
            max_bytes: (id % 2 == 0).then_some(64),
            elem: 8,
            state,
        };
        set.comms[1].next_id = 9;
        set.comms[1].pending = vec![
            pending(2, Source::Any, TagSel::Any, RecvState::Waiting),
            pending(
                5,
                Source::Rank(1),
                TagSel::Tag(3),
                RecvState::Matched(Entry::restored(1, 3, vec![7; 16])),
            ),
            pending(
                8,
                Source::Rank(0),
                TagSel::Any,
                RecvState::Refused("too big".into()),
            ),
        ];
        set
    }

    #[test]
    fn version_4_keeps_each_communicators_numbers_messages_and_pending_receives() {
        let set = three_comms();
        let bytes = set.encode();
        assert_eq!(&bytes[4..8], &4u32.to_le_bytes());
        let back = LogSet::decode(&bytes, 4).unwrap();
        assert_eq!(back.comms.len(), 3);
        for (a, b) in back.comms.iter().zip(&set.comms) {
            assert_eq!(a.next_send, b.next_send);
            assert_eq!(a.recv_below, b.recv_below);
            assert_eq!(order(&a.log), order(&b.log));
            assert_eq!(a.pending, b.pending);
            assert_eq!(a.next_id, b.next_id);
        }
        assert_eq!(back.encode(), bytes);
        for cut in 1..bytes.len() {
            assert!(LogSet::decode(&bytes[..cut], 4).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            LogSet::decode(&longer, 4),
            Err(LogError::Trailing(1))
        ));
        // The root communicator's size is the job's.
        assert!(matches!(LogSet::decode(&bytes, 3), Err(LogError::Seqs(_))));
    }

    #[test]
    fn version_4_refuses_impossible_pending_receives() {
        let bad = |f: fn(&mut PendingRecv, &mut u64)| {
            let mut set = three_comms();
            let c = &mut set.comms[1];
            f(&mut c.pending[1], &mut c.next_id);
            LogSet::decode(&set.encode(), 4).unwrap_err().to_string()
        };
        let e = bad(|_, next| *next = 5);
        assert!(e.contains("communicator 1: receive 1: id 5"), "{e}");
        let e = bad(|p, _| p.id = 1);
        assert!(e.contains("out of order"), "{e}");
        let e = bad(|p, _| p.src = Source::Rank(2));
        assert!(e.contains("source 2 of 2 ranks"), "{e}");
        let e = bad(|p, _| p.state = RecvState::Matched(Entry::restored(5, 0, vec![])));
        assert!(e.contains("message from 5"), "{e}");
    }

    #[test]
    fn version_3_refuses_a_message_of_no_communicator_or_outside_its_communicator() {
        let one = |comm: u32, src: i32| {
            let mut b = Vec::new();
            b.extend_from_slice(b"CKML");
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(&2u32.to_le_bytes());
            for n in [4u32, 2] {
                b.extend_from_slice(&n.to_le_bytes());
                b.extend(std::iter::repeat_n(0u8, 16 * n as usize));
            }
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&comm.to_le_bytes());
            b.extend_from_slice(&src.to_le_bytes());
            b.extend_from_slice(&0i32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            LogSet::decode(&b, 4)
        };
        assert!(one(1, 1).is_ok());
        assert!(one(0, 3).is_ok());
        let err = one(2, 0).unwrap_err().to_string();
        assert!(err.contains("communicator 2 of 2"), "{err}");
        let err = one(1, 3).unwrap_err().to_string();
        assert!(err.contains("communicator 1 of 2 ranks"), "{err}");
        // A hostile rank count does not allocate.
        let mut b = Vec::new();
        b.extend_from_slice(b"CKML");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(LogSet::decode(&b, u32::MAX as usize).is_err());
    }

    #[test]
    fn versions_1_and_2_read_as_the_root_communicator_alone() {
        let v2 = CommState {
            next_send: vec![3, 4],
            recv_below: vec![5, 6],
            log: log_of(&[restored(1, 2, 7)]),
            ..CommState::default()
        }
        .encode();
        assert_eq!(&v2[4..8], &2u32.to_le_bytes());
        let set = LogSet::decode(&v2, 2).unwrap();
        assert_eq!(set.comms.len(), 1);
        assert_eq!(set.comms[0].next_send, vec![3, 4]);
        assert_eq!(order(&set.comms[0].log), vec![(1, 2, vec![7])]);
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"CKML");
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(LogSet::decode(&v1, 2).unwrap().comms.len(), 1);
        assert_eq!(
            LogSet::decode(&[], 2).unwrap().comms[0].next_send,
            vec![0, 0]
        );
    }
}
