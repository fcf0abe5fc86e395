//! Exactly-once accounting of one rank's application messages, free of MPI: envelopes, posted
//! receives, the message log and the cuts (checkpoint quiescence, restore).
//!
//! [`crate::Comm`] is a thin MPI adapter over an [`Endpoint`]; `protocol/sim.rs` drives the
//! same `Endpoint` over a simulated network with random delays and crashes.
//!
//! # How a message is accounted
//! Every message carries an [`Envelope`] with its number in the sender's stream to this
//! receiver. The receiver keeps, per sender, a [`Window`]: every number below `below` has been
//! taken out of the network, and `above` holds the numbers taken beyond it (messages with
//! different tags may be received out of order). A number taken twice is a duplicate and stops
//! the job; "how many messages of sender p are still in the network before its bookmark b" is
//! `b - below - |above ∩ [below, b)|`, computed from the messages themselves.
//!
//! # Matching order
//! Receives are matched in the order they were posted (MPI's rule for posted receives): a
//! message taken out of the network goes to the earliest waiting receive it matches. A receive
//! takes from the log first, then from the network. Per sender, a message never overtakes an
//! earlier one that matches the same receive (MPI's non-overtaking rule): a logged message
//! numbered `s` is not handed out while a message of its sender numbered below `s` is still in
//! the network (it might match too); that gap is filled first, from the network, in order.
//!
//! # Size errors keep the message
//! A receive whose buffer is too small, or whose element size does not divide the message,
//! fails with [`Misuse`]; the message stays at its place for the next matching receive.
//!
//! # Cuts
//! At a checkpoint every rank sends each peer its bookmark (the next number it would send to
//! it); each rank takes every message numbered below the bookmark out of the network into its
//! log ([`Endpoint::missing`], [`Endpoint::drained`], [`Endpoint::end_cut`]). The same cut is
//! made at `restore()` for the traffic sent before it: those messages stay in the log, ahead of
//! the restored ones (they belong to this run's set-up, which comes before the restored
//! iterations), and the restored sequence numbers take over, in a new era.

use std::collections::{BTreeMap, BTreeSet};

use super::envelope::{Envelope, EnvelopeError, ENVELOPE_LEN};
use super::msglog::{
    matches, At, CommState, Entry, MessageLog, PendingRecv, RecvState, Source, StateParts, TagSel,
};

/// A message as the network hands it over: sender, tag, and its frame (envelope, payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    /// Sender.
    pub src: i32,
    /// Tag.
    pub tag: i32,
    /// Envelope and payload.
    pub frame: Vec<u8>,
}

/// The point-to-point network under the accounting: MPI in `comm.rs`, simulated in `sim.rs`.
pub trait Network {
    /// Takes the first message that matches (`src`, `tag`) out of the network if one has
    /// arrived, in MPI's order (per sender, the earliest sent that matches). Never blocks.
    fn take(&mut self, src: Source, tag: TagSel) -> Option<Raw>;
}

/// What a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// At most this many payload bytes (`None`: any length).
    pub max_bytes: Option<usize>,
    /// The payload must be a whole number of elements of this size.
    pub elem: usize,
}

impl Fit {
    /// Any length, whole elements of `elem` bytes.
    pub fn any(elem: usize) -> Fit {
        Fit {
            max_bytes: None,
            elem,
        }
    }

    /// Whether a payload of `len` bytes fits.
    pub fn accepts(&self, len: usize) -> bool {
        self.refuses(len).is_none()
    }

    fn refuses(&self, len: usize) -> Option<String> {
        let elem = self.elem.max(1);
        if let Some(max) = self.max_bytes.filter(|&m| len > m) {
            Some(format!("more than the {max} bytes this receive accepts"))
        } else if len % elem != 0 {
            Some(format!("not a whole number of {elem}-byte elements"))
        } else {
            None
        }
    }
}

/// A call against one of the communicator's rules. The call fails; no message is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Misuse(pub String);

/// A broken invariant of the accounting (a bug, or bytes that did not come from the library):
/// the job cannot go on without risking a lost or doubled message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// The frame has no valid envelope.
    #[error("message from rank {src} (tag {tag}): {err}")]
    Envelope {
        /// Sender.
        src: i32,
        /// Tag.
        tag: i32,
        /// What is wrong.
        err: EnvelopeError,
    },
    /// The sender is not a rank of the job.
    #[error("message from rank {0}, which is not in the job")]
    Source(i32),
    /// Sent in another era than the receiver's (across a `restore()` cut).
    #[error("message {seq} from rank {src} was sent in era {found}, this rank is in era {era}")]
    Era {
        /// Sender.
        src: i32,
        /// Its number.
        seq: u64,
        /// Era in the envelope.
        found: u32,
        /// This rank's era.
        era: u32,
    },
    /// A number taken twice.
    #[error("message {seq} from rank {src} was taken out of the network twice")]
    Duplicate {
        /// Sender.
        src: i32,
        /// Its number.
        seq: u64,
    },
    /// A message numbered at or beyond its sender's bookmark was taken before or during a cut.
    #[error(
        "message {seq} from rank {src} was taken, but rank {src} sent only {bookmark} \
         messages here before the cut"
    )]
    BeyondBookmark {
        /// Sender.
        src: i32,
        /// Its number.
        seq: u64,
        /// The sender's bookmark.
        bookmark: u64,
    },
    /// A cut ended with messages of a sender still missing.
    #[error("cut ended with {missing} messages from rank {src} still in the network")]
    Incomplete {
        /// Sender.
        src: i32,
        /// How many.
        missing: u64,
    },
}

/// How a posted receive stands.
#[derive(Debug)]
pub enum Completion {
    /// No message yet.
    Pending,
    /// Its message (the request is finished).
    Done(Entry),
    /// It failed (the request is finished; its message, if any, stays queued).
    Failed(Misuse),
}

/// A message found by [`Endpoint::probe`], still queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// Sender.
    pub src: i32,
    /// Tag.
    pub tag: i32,
    /// Payload bytes.
    pub len: usize,
    /// Its number in the sender's stream (`None` if restored or from before `restore()`).
    pub seq: Option<u64>,
}

/// What [`Endpoint::probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// The message the next matching receive gets.
    Found(Probed),
    /// Nothing yet: the next message needed is one matching this selector (the adapter may
    /// block on it in the network and hand it to [`Endpoint::accept`] with the selector).
    Wait(Source, TagSel),
}

/// What advancing receives did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advance {
    /// Nothing taken from the network.
    Idle,
    /// Took messages from the network.
    Took,
    /// Stopped: the message found belongs to an earlier waiting receive.
    Yield,
}

/// No network (passes over the log only).
enum N0 {}

impl Network for N0 {
    fn take(&mut self, _: Source, _: TagSel) -> Option<Raw> {
        match *self {}
    }
}

/// Numbers taken from one sender: all below `below`, and those in `above`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Window {
    below: u64,
    above: BTreeSet<u64>,
}

impl Window {
    fn at(below: u64) -> Window {
        Window {
            below,
            above: BTreeSet::new(),
        }
    }

    /// Records `seq`; false if it was already taken.
    fn insert(&mut self, seq: u64) -> bool {
        if seq < self.below || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&self.below) {
            self.below += 1;
        }
        true
    }

    /// Numbers below `bound` not taken yet.
    fn missing_below(&self, bound: u64) -> u64 {
        if bound <= self.below {
            return 0;
        }
        (bound - self.below) - self.above.range(self.below..bound).count() as u64
    }
}

#[derive(Debug)]
enum State {
    Waiting,
    Matched(Entry),
    Failed(Misuse),
}

#[derive(Debug)]
struct Posted {
    src: Source,
    tag: TagSel,
    fit: Fit,
    state: State,
    /// Re-posted from a snapshot: it does not take messages left from before `restore()`.
    restored: bool,
}

impl Posted {
    fn waiting(&self) -> bool {
        matches!(self.state, State::Waiting)
    }

    /// Whether it is waiting and would take `e`.
    fn wants(&self, e: &Entry) -> bool {
        self.waiting() && !(self.restored && e.early) && matches(self.src, self.tag, e.src, e.tag)
    }

    /// As the snapshot keeps it.
    fn snapshot(&self, id: u64) -> PendingRecv {
        PendingRecv {
            id,
            src: self.src,
            tag: self.tag,
            max_bytes: self.fit.max_bytes.map(|m| m as u64),
            elem: self.fit.elem as u64,
            state: match &self.state {
                State::Waiting => RecvState::Waiting,
                State::Matched(e) => RecvState::Matched(e.clone()),
                State::Failed(m) => RecvState::Refused(m.0.clone()),
            },
        }
    }

    /// Re-posted from the snapshot.
    fn restored(p: PendingRecv) -> Posted {
        Posted {
            src: p.src,
            tag: p.tag,
            fit: Fit {
                max_bytes: p
                    .max_bytes
                    .map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
                elem: usize::try_from(p.elem).unwrap_or(usize::MAX),
            },
            state: match p.state {
                RecvState::Waiting => State::Waiting,
                RecvState::Matched(e) => State::Matched(e),
                RecvState::Refused(why) => State::Failed(Misuse(why)),
            },
            restored: true,
        }
    }
}

/// One rank's accounting (see the module documentation).
#[derive(Debug)]
pub struct Endpoint {
    rank: i32,
    nranks: usize,
    era: u32,
    next_send: Vec<u64>,
    windows: Vec<Window>,
    log: MessageLog,
    posted: BTreeMap<u64, Posted>,
    next_id: u64,
    stopped: Option<String>,
}

/// Whether every message that (`inner_src`, `inner_tag`) accepts is also accepted by
/// (`outer_src`, `outer_tag`).
fn covers(outer: (Source, TagSel), inner: (Source, TagSel)) -> bool {
    let src = match (outer.0, inner.0) {
        (Source::Any, _) => true,
        (Source::Rank(a), Source::Rank(b)) => a == b,
        (Source::Rank(_), Source::Any) => false,
    };
    let tag = match (outer.1, inner.1) {
        (TagSel::Any, _) => true,
        (TagSel::Tag(a), TagSel::Tag(b)) => a == b,
        (TagSel::Tag(_), TagSel::Any) => false,
    };
    src && tag
}

impl Endpoint {
    /// The accounting of rank `rank` in a job of `nranks`, before any message.
    pub fn new(rank: i32, nranks: usize) -> Endpoint {
        Endpoint {
            rank,
            nranks,
            era: 0,
            next_send: vec![0; nranks],
            windows: vec![Window::default(); nranks],
            log: MessageLog::default(),
            posted: BTreeMap::new(),
            next_id: 0,
            stopped: None,
        }
    }

    /// Refuses every later send and receive with `why` (after `poll` said the job stops).
    pub fn stop(&mut self, why: String) {
        self.stopped = Some(why);
    }

    /// Why the endpoint was stopped, if it was.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    fn check_open(&self) -> Result<(), Misuse> {
        match &self.stopped {
            Some(why) => Err(Misuse(why.clone())),
            None => Ok(()),
        }
    }

    fn check_rank(&self, r: i32, what: &str) -> Result<usize, Misuse> {
        if (0..self.nranks as i64).contains(&i64::from(r)) {
            Ok(r as usize)
        } else {
            Err(Misuse(format!(
                "{what}: rank {r} does not exist (ranks 0..{})",
                self.nranks - 1
            )))
        }
    }

    /// Accounts a message to `dst` with `tag` and returns the envelope to put before its
    /// payload. Fails (and accounts nothing) on a bad rank, a negative tag, or after `stop`.
    pub fn send(&mut self, dst: i32, tag: i32) -> Result<[u8; ENVELOPE_LEN], Misuse> {
        self.check_open()?;
        let d = self.check_rank(dst, "send")?;
        if tag < 0 {
            return Err(Misuse(format!(
                "send to rank {dst}: tag {tag} is negative (tags are 0 or more)"
            )));
        }
        let seq = self.next_send[d];
        self.next_send[d] += 1;
        Ok(Envelope { era: self.era, seq }.encode())
    }

    /// Refuses a bad rank, a negative tag, or any receive or probe after `stop`.
    fn check_selector(&self, src: Source, tag: TagSel, what: &str) -> Result<(), Misuse> {
        self.check_open()?;
        if let Source::Rank(r) = src {
            self.check_rank(r, what)?;
        }
        match tag {
            TagSel::Tag(t) if t < 0 => Err(Misuse(format!(
                "{what} with tag {t}: tags are 0 or more (use TagSel::Any for any tag)"
            ))),
            _ => Ok(()),
        }
    }

    /// Posts a receive; returns its id. Fails on a bad rank, a negative tag, or after `stop`.
    pub fn post(&mut self, src: Source, tag: TagSel, fit: Fit) -> Result<u64, Misuse> {
        self.check_selector(src, tag, "receive")?;
        let id = self.next_id;
        self.next_id += 1;
        self.posted.insert(
            id,
            Posted {
                src,
                tag,
                fit,
                state: State::Waiting,
                restored: false,
            },
        );
        Ok(id)
    }

    /// Takes the outcome of receive `id` if it has one.
    pub fn complete(&mut self, id: u64) -> Completion {
        match self.posted.get(&id).map(|p| p.waiting()) {
            None => Completion::Failed(Misuse(format!(
                "receive request #{id} is unknown or already completed"
            ))),
            Some(true) => Completion::Pending,
            Some(false) => match self.posted.remove(&id).map(|p| p.state) {
                Some(State::Matched(e)) => Completion::Done(e),
                Some(State::Failed(m)) => Completion::Failed(m),
                _ => Completion::Pending,
            },
        }
    }

    /// If receive `id` is the only one waiting and nothing in the log could serve it, the
    /// selector to block on in the network (the adapter may then wait in MPI and hand the
    /// message to [`Endpoint::accept`]).
    pub fn blocking_selector(&self, id: u64) -> Option<(Source, TagSel)> {
        self.sole_waiting()
            .filter(|&(only, _, _)| only == id)
            .map(|(_, src, tag)| (src, tag))
    }

    /// Whether receive `id` is posted and still has no outcome (no message, no refusal).
    pub fn is_waiting(&self, id: u64) -> bool {
        self.posted.get(&id).is_some_and(|p| p.waiting())
    }

    /// Whether receive `id` was refused (for its size) and waits to be completed.
    pub fn refused(&self, id: u64) -> bool {
        self.posted
            .get(&id)
            .is_some_and(|p| matches!(p.state, State::Failed(_)))
    }

    /// Whether any posted receive still has no outcome.
    pub fn any_waiting(&self) -> bool {
        self.posted.values().any(|p| p.waiting())
    }

    /// If exactly one receive waits and nothing in the log could serve it: its selector, to
    /// block on in the network (see [`Endpoint::blocking_selector`]).
    pub fn sole_waiting(&self) -> Option<(u64, Source, TagSel)> {
        let mut waiting = self.posted.iter().filter(|(_, p)| p.waiting());
        let (&id, p) = waiting.next()?;
        if waiting.next().is_some() || !self.log.candidates_for(p.src, p.tag, p.restored).is_empty()
        {
            return None;
        }
        Some((id, p.src, p.tag))
    }

    /// Refuses a probe with a bad rank or a negative tag, or after `stop`.
    pub fn check_probe(&self, src: Source, tag: TagSel) -> Result<(), Misuse> {
        self.check_selector(src, tag, "probe")
    }

    /// The message a receive of (`src`, `tag`) posted now would get, without receiving it:
    /// the waiting receives are advanced first (they come earlier in post order), then the
    /// first logged candidate is taken as a receive would take it, once nothing of its sender
    /// is missing below it. What is taken out of the network for it stays in the log, so the
    /// next receive that matches it (with the same selector, or its source and tag) gets it.
    /// [`Peek::Wait`] names what to take from the network next.
    pub fn probe(
        &mut self,
        src: Source,
        tag: TagSel,
        net: &mut impl Network,
    ) -> Result<Peek, Fatal> {
        loop {
            self.progress(net)?;
            let first = self.log.candidates(src, tag).first().map(|&(at, e)| {
                let gap = e
                    .seq
                    .is_some_and(|s| self.windows[e.src as usize].missing_below(s) > 0);
                (at, e.src, gap)
            });
            let sel = match first {
                Some((at, _, false)) if !self.earlier_wants(None, at) => {
                    let Some(e) = self.log.get(at) else { continue };
                    return Ok(Peek::Found(Probed {
                        src: e.src,
                        tag: e.tag,
                        len: e.payload().len(),
                        seq: e.seq,
                    }));
                }
                // Settled receives never want it; if one does, let it take it first.
                Some((_, _, false)) => continue,
                Some((_, p, true)) => (Source::Rank(p), TagSel::Any),
                None => (src, tag),
            };
            match net.take(sel.0, sel.1) {
                Some(raw) => self.accept(raw, sel)?,
                None => return Ok(Peek::Wait(sel.0, sel.1)),
            }
        }
    }

    /// Advances every waiting receive, in the order they were posted, from the log and then
    /// the network. On return the receives are settled: none still waiting could take a
    /// logged message (so a receive or probe that comes next sees what they left).
    pub fn progress(&mut self, net: &mut impl Network) -> Result<(), Fatal> {
        let mut with_net = true;
        loop {
            let pass = if with_net {
                self.pass(Some(&mut *net))?
            } else {
                self.pass(None::<&mut N0>)?
            };
            match pass {
                // The earlier receive takes its message in the next pass.
                Advance::Yield => continue,
                Advance::Idle => return Ok(()),
                // A message taken for a later receive may have filled the gap an earlier one
                // waits on: once more, from the log only.
                Advance::Took => with_net = false,
            }
        }
    }

    /// One pass over the waiting receives in post order: `Yield` as soon as one finds that
    /// its message belongs to an earlier one, else `Took` if any took from the network.
    fn pass<N: Network>(&mut self, mut net: Option<&mut N>) -> Result<Advance, Fatal> {
        let ids: Vec<u64> = self
            .posted
            .iter()
            .filter(|(_, p)| p.waiting())
            .map(|(&id, _)| id)
            .collect();
        let mut took = false;
        for id in ids {
            match self.advance(id, net.as_deref_mut())? {
                Advance::Yield => return Ok(Advance::Yield),
                Advance::Took => took = true,
                Advance::Idle => {}
            }
        }
        Ok(if took { Advance::Took } else { Advance::Idle })
    }

    /// The first logged candidate for (`src`, `tag`) with nothing of its sender still in the
    /// network below it, or else the sender of the first one blocked by such a gap. A receive
    /// restored from the snapshot (`restored`) skips messages left from before `restore()`.
    fn ready_candidate(
        &self,
        src: Source,
        tag: TagSel,
        restored: bool,
    ) -> (Option<At>, Option<i32>) {
        let mut blocked = None;
        for (at, e) in self.log.candidates_for(src, tag, restored) {
            match e.seq {
                Some(s) if self.windows[e.src as usize].missing_below(s) > 0 => {
                    blocked.get_or_insert(e.src);
                }
                _ => return (Some(at), blocked),
            }
        }
        (None, blocked)
    }

    /// Whether a waiting receive posted before `id` (all of them for `None`) matches the
    /// logged entry at `at`.
    fn earlier_wants(&self, id: Option<u64>, at: At) -> bool {
        let Some(e) = self.log.get(at) else {
            return false;
        };
        self.posted
            .iter()
            .take_while(|(&q, _)| id.is_none_or(|id| q < id))
            .any(|(_, p)| p.wants(e))
    }

    /// Advances receive `id`: from the log, then (given `net`) from the network.
    fn advance<N: Network>(&mut self, id: u64, mut net: Option<&mut N>) -> Result<Advance, Fatal> {
        let mut took = false;
        while let Some(p) = self.posted.get(&id).filter(|p| p.waiting()) {
            let (src, tag) = (p.src, p.tag);
            let (ready, blocked) = self.ready_candidate(src, tag, p.restored);
            if let Some(at) = ready {
                if self.earlier_wants(Some(id), at) {
                    return Ok(Advance::Yield);
                }
                self.give(id, at);
                break;
            }
            // Fill the first blocking gap, or take from the network.
            let sel = match blocked {
                Some(p) => (Source::Rank(p), TagSel::Any),
                None => (src, tag),
            };
            let Some(n) = net.as_deref_mut() else { break };
            match n.take(sel.0, sel.1) {
                Some(raw) => {
                    self.accept(raw, sel)?;
                    took = true;
                }
                None => break,
            }
        }
        Ok(if took { Advance::Took } else { Advance::Idle })
    }

    /// Hands the logged entry at `at` to receive `id`, or fails the receive if the entry does
    /// not fit (the entry stays).
    fn give(&mut self, id: u64, at: At) {
        let Some(p) = self.posted.get_mut(&id) else {
            return;
        };
        let Some((len, tag)) = self.log.get(at).map(|e| (e.payload().len(), e.tag)) else {
            return;
        };
        if let Some(why) = p.fit.refuses(len) {
            p.state = State::Failed(refused(at.src, tag, len, &why));
        } else if let Some(e) = self.log.remove(at) {
            p.state = State::Matched(e);
        }
    }

    /// Accounts a message that went straight into the application's buffer: the caller took
    /// it with the selector [`Endpoint::blocking_selector`] gave for receive `id` (so it is
    /// that receive's message, as [`Endpoint::accept`] would decide) and checked that it fits.
    /// `env` is its envelope. Completes the receive.
    pub fn deliver_direct(&mut self, id: u64, src: i32, tag: i32, env: &[u8]) -> Result<(), Fatal> {
        let raw = Raw {
            src,
            tag,
            frame: env.to_vec(),
        };
        self.account(raw)?;
        self.posted.remove(&id);
        Ok(())
    }

    /// Accounts a message taken out of the network with selector `taken_with` and hands it to
    /// the earliest waiting receive it matches, or keeps it in the log.
    pub fn accept(&mut self, raw: Raw, taken_with: (Source, TagSel)) -> Result<(), Fatal> {
        let e = self.account(raw)?;
        let seq = e.seq.unwrap_or(0);
        let gap = self.windows[e.src as usize].missing_below(seq) > 0;
        let len = e.payload().len();
        for p in self.posted.values_mut() {
            if !p.wants(&e) {
                continue;
            }
            // An earlier message of the same sender may match this receive: it must go first.
            let earlier_logged = self.log.has_earlier(e.src, p.tag, seq);
            let earlier_unseen = gap && !covers(taken_with, (p.src, p.tag));
            if earlier_logged || earlier_unseen {
                break;
            }
            if let Some(why) = p.fit.refuses(len) {
                p.state = State::Failed(refused(e.src, e.tag, len, &why));
                continue;
            }
            p.state = State::Matched(e);
            return Ok(());
        }
        self.log.insert(e);
        Ok(())
    }

    /// Checks a message's envelope and records its number.
    fn account(&mut self, raw: Raw) -> Result<Entry, Fatal> {
        if raw.src < 0 || raw.src as usize >= self.nranks {
            return Err(Fatal::Source(raw.src));
        }
        let env = Envelope::decode(&raw.frame).map_err(|err| Fatal::Envelope {
            src: raw.src,
            tag: raw.tag,
            err,
        })?;
        if env.era != self.era {
            return Err(Fatal::Era {
                src: raw.src,
                seq: env.seq,
                found: env.era,
                era: self.era,
            });
        }
        if !self.windows[raw.src as usize].insert(env.seq) {
            return Err(Fatal::Duplicate {
                src: raw.src,
                seq: env.seq,
            });
        }
        Ok(Entry::from_frame(raw.src, raw.tag, env.seq, raw.frame))
    }

    /// This rank's bookmarks: the next number it would send to each rank.
    pub fn bookmark(&self) -> &[u64] {
        &self.next_send
    }

    /// Messages from `peer` numbered below its `bookmark` still in the network. Fails if a
    /// message numbered at or beyond the bookmark was already taken.
    pub fn missing(&self, peer: usize, bookmark: u64) -> Result<u64, Fatal> {
        let w = &self.windows[peer];
        let beyond = w
            .above
            .last()
            .copied()
            .filter(|&s| s >= bookmark)
            .or((w.below > bookmark).then(|| w.below - 1));
        if let Some(seq) = beyond {
            return Err(Fatal::BeyondBookmark {
                src: peer as i32,
                seq,
                bookmark,
            });
        }
        Ok(w.missing_below(bookmark))
    }

    /// Keeps a message drained from `peer` during a cut (taken with any tag from `peer`).
    pub fn drained(&mut self, raw: Raw, bookmark: u64) -> Result<(), Fatal> {
        let e = self.account(raw)?;
        let seq = e.seq.unwrap_or(0);
        if seq >= bookmark {
            return Err(Fatal::BeyondBookmark {
                src: e.src,
                seq,
                bookmark,
            });
        }
        self.log.insert(e);
        Ok(())
    }

    /// Ends a cut: every message below every sender's bookmark (`sent_to_me`) was taken.
    pub fn end_cut(&self, sent_to_me: &[u64]) -> Result<(), Fatal> {
        for (peer, &b) in sent_to_me.iter().enumerate() {
            let missing = self.missing(peer, b)?;
            if missing > 0 {
                return Err(Fatal::Incomplete {
                    src: peer as i32,
                    missing,
                });
            }
        }
        Ok(())
    }

    /// The state a snapshot holds (after a cut: every window is complete).
    pub fn encode_state(&self) -> Vec<u8> {
        let below: Vec<u64> = self.windows.iter().map(|w| w.below).collect();
        CommState::encode_parts(&self.next_send, &below, &self.log)
    }

    /// Hands logged messages to the waiting receives that take them, in post order, without
    /// the network (after a cut's drain: a pending receive that a drained or logged message
    /// satisfies gets it now, once, and the snapshot records it with its message).
    pub fn settle(&mut self) -> Result<(), Fatal> {
        while self.pass(None::<&mut N0>)? == Advance::Yield {}
        Ok(())
    }

    /// What a snapshot holds of this endpoint (after a cut): the next sequence number to send
    /// to each rank, the next expected from each, the log, the receives pending (waiting, or
    /// with their outcome not yet taken) and the next request id.
    pub fn state(&self) -> StateParts<'_> {
        StateParts {
            next_send: &self.next_send,
            recv_below: self.windows.iter().map(|w| w.below).collect(),
            log: &self.log,
            pending: self.posted.iter().map(|(&id, p)| p.snapshot(id)).collect(),
            next_id: self.next_id,
        }
    }

    /// Takes over a restored state after the restore cut: what is left in the log from before
    /// comes first, then the restored messages; the receives pending in the snapshot are
    /// re-posted under their ids (they take none of the messages left from before); a new era
    /// starts. No receive of this run may be posted (the restore cut refuses them).
    pub fn restore(&mut self, state: CommState) {
        self.log.forget_seqs();
        for e in state.log.iter() {
            self.log.insert(e.clone());
        }
        self.next_send = state.next_send;
        self.windows = state.recv_below.into_iter().map(Window::at).collect();
        self.next_id = self.next_id.max(state.next_id);
        for p in state.pending {
            self.posted.insert(p.id, Posted::restored(p));
        }
        self.era += 1;
    }

    /// Messages in the log.
    pub fn logged(&self) -> usize {
        self.log.len()
    }

    /// Payload bytes in the log.
    pub fn logged_bytes(&self) -> u64 {
        self.log.bytes()
    }

    /// This rank.
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// Whether a receive is posted and not completed.
    pub fn has_posted(&self) -> bool {
        !self.posted.is_empty()
    }

    /// Descriptions of the receives posted and not completed.
    pub fn posted_descriptions(&self) -> Vec<String> {
        self.posted
            .iter()
            .map(|(id, p)| match &p.state {
                State::Matched(e) => format!(
                    "irecv #{id} (its message from rank {} with tag {} has arrived, but it \
                     was never waited for)",
                    e.src, e.tag
                ),
                State::Failed(_) => format!("irecv #{id} (failed, never waited for)"),
                State::Waiting => format!(
                    "irecv #{id} from {} with {}",
                    describe_src(p.src),
                    describe_tag(p.tag)
                ),
            })
            .collect()
    }
}

fn refused(src: i32, tag: i32, len: usize, why: &str) -> Misuse {
    Misuse(format!(
        "the message from rank {src} (tag {tag}) has {len} bytes, {why}; it stays queued for \
         the next matching receive"
    ))
}

/// "rank 3" or "any rank".
pub fn describe_src(s: Source) -> String {
    match s {
        Source::Any => "any rank".into(),
        Source::Rank(r) => format!("rank {r}"),
    }
}

/// "tag 5" or "any tag".
pub fn describe_tag(t: TagSel) -> String {
    match t {
        TagSel::Any => "any tag".into(),
        TagSel::Tag(t) => format!("tag {t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A network where everything sent has arrived: per sender, messages in send order.
    #[derive(Default)]
    struct Wire(Vec<VecDeque<Raw>>);

    impl Network for Wire {
        fn take(&mut self, src: Source, tag: TagSel) -> Option<Raw> {
            for (s, q) in self.0.iter_mut().enumerate() {
                if matches!(src, Source::Rank(r) if r as usize != s) {
                    continue;
                }
                if let Some(i) = q.iter().position(|m| matches(Source::Any, tag, 0, m.tag)) {
                    return q.remove(i);
                }
            }
            None
        }
    }

    /// Rank 0 sends to rank 1 messages of these lengths with `tag`.
    fn send_all(from: &mut Endpoint, wire: &mut Wire, tag: i32, lens: &[usize]) {
        for (i, &len) in lens.iter().enumerate() {
            let mut frame = from.send(1, tag).unwrap().to_vec();
            frame.extend(std::iter::repeat_n(i as u8, len));
            wire.0[0].push_back(Raw { src: 0, tag, frame });
        }
    }

    fn pair() -> (Endpoint, Endpoint, Wire) {
        (
            Endpoint::new(0, 2),
            Endpoint::new(1, 2),
            Wire(vec![VecDeque::new(), VecDeque::new()]),
        )
    }

    /// Receives one message on `ep`; its payload length, or the refusal.
    fn recv(
        ep: &mut Endpoint,
        wire: &mut impl Network,
        sel: (Source, TagSel),
        fit: Fit,
    ) -> Result<usize, String> {
        let id = ep.post(sel.0, sel.1, fit).map_err(|m| m.0)?;
        ep.progress(wire).unwrap();
        match ep.complete(id) {
            Completion::Done(e) => Ok(e.payload().len()),
            Completion::Failed(m) => Err(m.0),
            Completion::Pending => Err("pending".into()),
        }
    }

    /// A cut between rank 0 (sender) and rank 1, then a restart of rank 1 from its state.
    fn checkpoint_and_restart(tx: &Endpoint, rx: &mut Endpoint, wire: &mut Wire) -> Endpoint {
        let b = tx.bookmark()[1];
        while rx.missing(0, b).unwrap() > 0 {
            let raw = wire.take(Source::Rank(0), TagSel::Any).unwrap();
            rx.drained(raw, b).unwrap();
        }
        rx.end_cut(&[b, 0]).unwrap();
        let state = CommState::decode(&rx.encode_state(), 2).unwrap();
        let mut fresh = Endpoint::new(1, 2);
        fresh.restore(state);
        fresh
    }

    const ANY: Fit = Fit {
        max_bytes: None,
        elem: 1,
    };

    #[test]
    fn a_receive_too_small_leaves_the_message_first_in_line() {
        for via_log in [false, true] {
            let (mut tx, mut rx, mut wire) = pair();
            send_all(&mut tx, &mut wire, 5, &[100, 10, 10]);
            if via_log {
                rx = checkpoint_and_restart(&tx, &mut rx, &mut wire);
            }
            let sel = (Source::Rank(0), TagSel::Tag(5));
            let small = Fit {
                max_bytes: Some(10),
                elem: 1,
            };
            let err = recv(&mut rx, &mut wire, sel, small).unwrap_err();
            assert!(err.contains("has 100 bytes, more than the 10"), "{err}");
            assert!(err.contains("stays queued"), "{err}");
            // And after a checkpoint and restart, still first.
            let mut rx = checkpoint_and_restart(&tx, &mut rx, &mut wire);
            let got: Vec<usize> = (0..3)
                .map(|_| recv(&mut rx, &mut wire, sel, ANY).unwrap())
                .collect();
            assert_eq!(got, vec![100, 10, 10], "via log: {via_log}");
        }
    }

    #[test]
    fn a_wrong_element_size_keeps_the_message() {
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 1, &[13, 8]);
        let sel = (Source::Any, TagSel::Any);
        let err = recv(&mut rx, &mut wire, sel, Fit::any(8)).unwrap_err();
        assert!(
            err.contains("13 bytes, not a whole number of 8-byte"),
            "{err}"
        );
        // A request posted with irecv and completed later fails the same way.
        let id = rx.post(sel.0, sel.1, Fit::any(8)).unwrap();
        rx.progress(&mut wire).unwrap();
        assert!(matches!(rx.complete(id), Completion::Failed(_)));
        assert!(matches!(rx.complete(id), Completion::Failed(Misuse(m)) if m.contains("unknown")));
        assert_eq!(recv(&mut rx, &mut wire, sel, ANY), Ok(13));
        assert_eq!(recv(&mut rx, &mut wire, sel, Fit::any(8)), Ok(8));
        assert_eq!(rx.logged(), 0);
    }

    #[test]
    fn negative_tags_and_unknown_ranks_are_refused_at_the_call() {
        let (mut tx, mut rx, _) = pair();
        let e = rx.post(Source::Any, TagSel::Tag(-1), ANY).unwrap_err();
        assert!(e.0.contains("tag -1") && e.0.contains("TagSel::Any"), "{e}");
        assert!(tx.send(1, -3).is_err());
        assert!(tx
            .send(2, 0)
            .unwrap_err()
            .0
            .contains("rank 2 does not exist"));
        assert!(rx.post(Source::Rank(-1), TagSel::Any, ANY).is_err());
        // Nothing was accounted by the refused calls.
        assert_eq!(tx.bookmark(), &[0, 0]);
        assert!(!rx.has_posted());
    }

    #[test]
    fn after_stop_sends_and_receives_fail() {
        let (mut tx, _, _) = pair();
        tx.stop("the job is stopping".into());
        assert_eq!(tx.send(1, 0).unwrap_err().0, "the job is stopping");
        assert!(tx.post(Source::Any, TagSel::Any, ANY).is_err());
    }

    #[test]
    fn receives_are_matched_in_post_order() {
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 3, &[1, 2]);
        let first = rx.post(Source::Any, TagSel::Tag(3), ANY).unwrap();
        let second = rx.post(Source::Rank(0), TagSel::Any, ANY).unwrap();
        // Completing the later one first must not take the earlier one's message.
        rx.progress(&mut wire).unwrap();
        let Completion::Done(b) = rx.complete(second) else {
            panic!("second pending")
        };
        let Completion::Done(a) = rx.complete(first) else {
            panic!("first pending")
        };
        assert_eq!((a.payload().len(), b.payload().len()), (1, 2));
    }

    #[test]
    fn a_refused_message_does_not_overtake_an_earlier_one_still_in_the_network() {
        // Rank 0 sends seq 0 with tag 7, then seq 1 with tag 5. A receive for tag 5 refuses
        // seq 1 (taking it out of the network first); an any-tag receive must then get seq 0.
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 7, &[3]);
        send_all(&mut tx, &mut wire, 5, &[4]);
        let small = Fit {
            max_bytes: Some(0),
            elem: 1,
        };
        assert!(recv(&mut rx, &mut wire, (Source::Rank(0), TagSel::Tag(5)), small).is_err());
        assert_eq!(
            recv(&mut rx, &mut wire, (Source::Rank(0), TagSel::Any), ANY),
            Ok(3)
        );
        assert_eq!(
            recv(&mut rx, &mut wire, (Source::Rank(0), TagSel::Any), ANY),
            Ok(4)
        );
    }

    #[test]
    fn traffic_before_restore_comes_before_the_restored_messages() {
        // A snapshot in which rank 1 had one message of rank 0 in its log.
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 2, &[7]);
        let snap = checkpoint_and_restart(&tx, &mut rx, &mut wire).encode_state();
        let tx_snap = tx.bookmark().to_vec();
        // The restarted job: rank 0 sends set-up data with the same tag before restore().
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 2, &[1, 2]);
        let b = tx.bookmark()[1];
        while rx.missing(0, b).unwrap() > 0 {
            let raw = wire.take(Source::Rank(0), TagSel::Any).unwrap();
            rx.drained(raw, b).unwrap();
        }
        rx.end_cut(&[b, 0]).unwrap();
        rx.restore(CommState::decode(&snap, 2).unwrap());
        tx.restore(CommState {
            next_send: tx_snap,
            recv_below: vec![0, 0],
            ..CommState::default()
        });
        // After restore, rank 0's sends continue the restored numbering, in a new era.
        send_all(&mut tx, &mut wire, 2, &[9]);
        let sel = (Source::Rank(0), TagSel::Tag(2));
        let got: Vec<usize> = (0..4)
            .map(|_| recv(&mut rx, &mut wire, sel, ANY).unwrap())
            .collect();
        assert_eq!(got, vec![1, 2, 7, 9]);
    }

    #[test]
    fn broken_envelopes_and_plans_stop_the_job() {
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 0, &[1, 1]);
        let m = wire.0[0][0].clone();
        assert_eq!(
            recv(&mut rx, &mut wire, (Source::Any, TagSel::Any), ANY),
            Ok(1)
        );
        // The same message again: a duplicate.
        assert_eq!(
            rx.accept(m.clone(), (Source::Any, TagSel::Any)),
            Err(Fatal::Duplicate { src: 0, seq: 0 })
        );
        // Another era.
        let mut other_era = m.clone();
        other_era.frame[4] = 1;
        assert!(matches!(
            rx.accept(other_era, (Source::Any, TagSel::Any)),
            Err(Fatal::Era { .. })
        ));
        // No envelope.
        let foreign = Raw {
            src: 0,
            tag: 0,
            frame: vec![1, 2, 3],
        };
        assert!(matches!(
            rx.accept(foreign, (Source::Any, TagSel::Any)),
            Err(Fatal::Envelope { .. })
        ));
        // A drain plan that asks for less than was taken, or takes beyond the bookmark.
        assert!(matches!(
            rx.missing(0, 0),
            Err(Fatal::BeyondBookmark { .. })
        ));
        let second = wire.take(Source::Any, TagSel::Any).unwrap();
        assert!(matches!(
            rx.drained(second, 1),
            Err(Fatal::BeyondBookmark { .. })
        ));
        assert!(matches!(rx.end_cut(&[3, 0]), Err(Fatal::Incomplete { .. })));
    }

    /// A network in which one message arrives only after `after` takes.
    struct Late {
        wire: Wire,
        held: Option<Raw>,
        takes: usize,
        after: usize,
    }

    impl Network for Late {
        fn take(&mut self, src: Source, tag: TagSel) -> Option<Raw> {
            self.takes += 1;
            if self.takes > self.after {
                if let Some(m) = self.held.take() {
                    self.wire.0[m.src as usize].push_front(m);
                }
            }
            self.wire.take(src, tag)
        }
    }

    #[test]
    fn a_message_arriving_mid_progress_still_goes_to_the_earliest_receive() {
        // Rank 0 sends g (seq 0, tag 7) then m (seq 1, tag 5); m comes first and waits in the
        // log (a refused receive took it), g arrives while two receives for tag 5 advance.
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 7, &[1]);
        send_all(&mut tx, &mut wire, 5, &[2]);
        let g = wire.0[0].pop_front();
        let mut net = Late {
            wire,
            held: g,
            takes: 0,
            after: 2,
        };
        let sel = (Source::Rank(0), TagSel::Tag(5));
        let none = Fit {
            max_bytes: Some(0),
            elem: 1,
        };
        assert!(recv(&mut rx, &mut net, sel, none).is_err());
        let first = rx.post(sel.0, sel.1, ANY).unwrap();
        let second = rx.post(sel.0, sel.1, ANY).unwrap();
        // The first receive finds the gap before m and nothing in the network; g arrives
        // before the second one looks.
        rx.progress(&mut net).unwrap();
        assert!(net.takes > 2, "g never arrived");
        let Completion::Done(e) = rx.complete(first) else {
            panic!("the first receive did not get m")
        };
        assert_eq!(e.seq, Some(1));
        assert!(matches!(rx.complete(second), Completion::Pending));
        assert_eq!(
            recv(&mut rx, &mut net, (Source::Any, TagSel::Any), ANY),
            Ok(1)
        );
    }

    fn found(ep: &mut Endpoint, net: &mut impl Network, src: Source, tag: TagSel) -> Probed {
        match ep.probe(src, tag, net).unwrap() {
            Peek::Found(p) => p,
            Peek::Wait(..) => panic!("probe found nothing"),
        }
    }

    #[test]
    fn a_probe_shows_what_the_next_matching_receive_gets_and_takes_nothing() {
        let (mut tx, mut rx, mut wire) = pair();
        // Nothing sent yet: the probe says what to wait for.
        let sel = (Source::Rank(0), TagSel::Tag(5));
        assert_eq!(
            rx.probe(sel.0, sel.1, &mut wire),
            Ok(Peek::Wait(sel.0, sel.1))
        );
        send_all(&mut tx, &mut wire, 7, &[1]);
        send_all(&mut tx, &mut wire, 5, &[2, 3]);
        // Tag 5 first: seq 1, taken out of the network into the log.
        let p = found(&mut rx, &mut wire, sel.0, sel.1);
        assert_eq!((p.src, p.tag, p.len, p.seq), (0, 5, 2, Some(1)));
        // Taken with the tag 7 message before it (the gap), tag 5's next still in the network.
        assert_eq!(rx.logged(), 2);
        // Probing again shows the same message; any tag shows the earlier one.
        assert_eq!(found(&mut rx, &mut wire, sel.0, sel.1), p);
        let any = (Source::Any, TagSel::Any);
        assert_eq!(found(&mut rx, &mut wire, any.0, any.1).seq, Some(0));
        assert_eq!(recv(&mut rx, &mut wire, any, ANY), Ok(1));
        // A receive by the probed source and tag gets the probed message.
        let p = found(&mut rx, &mut wire, any.0, any.1);
        let exact = (Source::Rank(p.src), TagSel::Tag(p.tag));
        assert_eq!(recv(&mut rx, &mut wire, exact, ANY), Ok(p.len));
        assert_eq!(recv(&mut rx, &mut wire, sel, ANY), Ok(3));
        assert_eq!(rx.logged(), 0);
    }

    #[test]
    fn a_probe_comes_after_the_receives_already_posted_and_sees_the_log_first() {
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 5, &[1, 2]);
        // Restored from a snapshot: both in the log; one more in the network.
        let mut rx2 = checkpoint_and_restart(&tx, &mut rx, &mut wire);
        tx.restore(CommState {
            next_send: tx.bookmark().to_vec(),
            recv_below: vec![0, 0],
            ..CommState::default()
        });
        send_all(&mut tx, &mut wire, 5, &[3]);
        let sel = (Source::Rank(0), TagSel::Tag(5));
        let first = rx2.post(sel.0, sel.1, ANY).unwrap();
        // The posted receive gets the first message; the probe shows the second.
        let p = found(&mut rx2, &mut wire, sel.0, sel.1);
        assert_eq!((p.len, p.seq), (2, None));
        assert!(!rx2.is_waiting(first));
        let Completion::Done(e) = rx2.complete(first) else {
            panic!("the posted receive did not get the first message")
        };
        assert_eq!(e.payload().len(), 1);
        assert_eq!(recv(&mut rx2, &mut wire, sel, ANY), Ok(2));
        assert_eq!(found(&mut rx2, &mut wire, sel.0, sel.1).len, 3);
        assert_eq!(recv(&mut rx2, &mut wire, sel, ANY), Ok(3));
    }

    #[test]
    fn a_probe_waits_for_an_earlier_message_of_the_same_sender() {
        // g (seq 0, tag 7) is still on its way when m (seq 1, tag 5) waits in the log: a
        // probe of any tag from rank 0 must not report m, which the receive would not get.
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 7, &[1]);
        send_all(&mut tx, &mut wire, 5, &[2]);
        let g = wire.0[0].pop_front();
        let mut net = Late {
            wire,
            held: g,
            takes: 0,
            after: 2,
        };
        let none = Fit {
            max_bytes: Some(0),
            elem: 1,
        };
        let tag5 = (Source::Rank(0), TagSel::Tag(5));
        assert!(recv(&mut rx, &mut net, tag5, none).is_err());
        let any = (Source::Rank(0), TagSel::Any);
        assert_eq!(
            rx.probe(any.0, any.1, &mut net),
            Ok(Peek::Wait(Source::Rank(0), TagSel::Any))
        );
        assert_eq!(found(&mut rx, &mut net, any.0, any.1).seq, Some(0));
        assert_eq!(recv(&mut rx, &mut net, any, ANY), Ok(1));
    }

    #[test]
    fn a_probe_with_a_bad_selector_or_after_stop_is_refused() {
        let (_, mut rx, _) = pair();
        let e = rx.check_probe(Source::Any, TagSel::Tag(-2)).unwrap_err();
        assert!(e.0.contains("probe with tag -2"), "{e}");
        let e = rx.check_probe(Source::Rank(5), TagSel::Any).unwrap_err();
        assert!(e.0.contains("rank 5 does not exist"), "{e}");
        assert!(rx.check_probe(Source::Rank(1), TagSel::Tag(0)).is_ok());
        rx.stop("stopping".into());
        assert_eq!(
            rx.check_probe(Source::Any, TagSel::Any).unwrap_err().0,
            "stopping"
        );
    }

    /// Rank 1's snapshot after a cut against rank 0, through the version 4 encoding.
    fn snapshot_of(tx: &Endpoint, rx: &mut Endpoint, wire: &mut Wire) -> CommState {
        let b = tx.bookmark()[1];
        while rx.missing(0, b).unwrap() > 0 {
            let raw = wire.take(Source::Rank(0), TagSel::Any).unwrap();
            rx.drained(raw, b).unwrap();
        }
        rx.end_cut(&[b, 0]).unwrap();
        rx.settle().unwrap();
        let bytes = super::super::msglog::LogSet::encode_parts(&[rx.state()]);
        let mut set = super::super::msglog::LogSet::decode(&bytes, 2).unwrap();
        set.comms.remove(0)
    }

    fn payload_of(c: Completion) -> Vec<u8> {
        match c {
            Completion::Done(e) => e.payload().to_vec(),
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn receives_pending_at_a_cut_complete_after_a_restart_as_without_it() {
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 5, &[1, 2, 3]);
        // Posted before the cut, never advanced: each is settled from the drained messages
        // at the cut (the refused message stays first in line for the wildcard).
        let a = rx.post(Source::Rank(0), TagSel::Tag(5), ANY).unwrap();
        let none = Fit {
            max_bytes: Some(0),
            elem: 1,
        };
        let c = rx.post(Source::Rank(0), TagSel::Tag(5), none).unwrap();
        let b = rx.post(Source::Any, TagSel::Any, ANY).unwrap();
        let snap = snapshot_of(&tx, &mut rx, &mut wire);
        assert_eq!(snap.pending.len(), 3);
        assert_eq!(snap.log.len(), 1, "each message went to one receive, once");
        let tx_next = tx.bookmark().to_vec();
        // The restarted job: rank 0 sends set-up traffic (tag 7) before restore().
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 7, &[40]);
        let b0 = tx.bookmark()[1];
        while rx.missing(0, b0).unwrap() > 0 {
            let raw = wire.take(Source::Rank(0), TagSel::Any).unwrap();
            rx.drained(raw, b0).unwrap();
        }
        rx.end_cut(&[b0, 0]).unwrap();
        rx.restore(snap);
        tx.restore(CommState {
            next_send: tx_next,
            recv_below: vec![0, 0],
            ..CommState::default()
        });
        send_all(&mut tx, &mut wire, 7, &[9]);
        rx.progress(&mut wire).unwrap();
        // The handles complete as they would have without the restart.
        assert_eq!(payload_of(rx.complete(a)), vec![0]);
        assert!(matches!(rx.complete(c), Completion::Failed(m) if m.0.contains("2 bytes")));
        let got_b = payload_of(rx.complete(b));
        assert_eq!(got_b.len(), 2, "the wildcard gets the refused message");
        // New receives come after the restored ones: the set-up message, the rest.
        let next = rx.post(Source::Rank(0), TagSel::Tag(7), ANY).unwrap();
        assert!(next > b);
        rx.progress(&mut wire).unwrap();
        assert_eq!(payload_of(rx.complete(next)).len(), 40);
        assert_eq!(
            recv(&mut rx, &mut wire, (Source::Any, TagSel::Any), ANY),
            Ok(3)
        );
        assert_eq!(
            recv(&mut rx, &mut wire, (Source::Any, TagSel::Any), ANY),
            Ok(9)
        );
        assert_eq!(rx.logged(), 0);
    }

    #[test]
    fn a_restored_receive_does_not_take_set_up_traffic_from_before_restore() {
        let (tx, mut rx, mut wire) = pair();
        let b = rx.post(Source::Any, TagSel::Tag(7), ANY).unwrap();
        let snap = snapshot_of(&tx, &mut rx, &mut wire);
        let tx_next = tx.bookmark().to_vec();
        let (mut tx, mut rx, mut wire) = pair();
        send_all(&mut tx, &mut wire, 7, &[40]);
        let b0 = tx.bookmark()[1];
        while rx.missing(0, b0).unwrap() > 0 {
            let raw = wire.take(Source::Rank(0), TagSel::Any).unwrap();
            rx.drained(raw, b0).unwrap();
        }
        rx.end_cut(&[b0, 0]).unwrap();
        rx.restore(snap);
        tx.restore(CommState {
            next_send: tx_next,
            recv_below: vec![0, 0],
            ..CommState::default()
        });
        rx.progress(&mut wire).unwrap();
        assert!(rx.is_waiting(b), "it took the set-up message");
        assert!(rx.blocking_selector(b).is_some());
        send_all(&mut tx, &mut wire, 7, &[9]);
        rx.progress(&mut wire).unwrap();
        assert_eq!(payload_of(rx.complete(b)).len(), 9);
        assert_eq!(
            recv(&mut rx, &mut wire, (Source::Any, TagSel::Any), ANY),
            Ok(40)
        );
    }

    #[test]
    fn windows_count_what_is_missing_from_the_numbers() {
        let mut w = Window::default();
        for s in [3, 0, 5] {
            assert!(w.insert(s));
        }
        assert!(!w.insert(0) && !w.insert(3));
        assert_eq!(w.below, 1);
        assert_eq!(w.missing_below(6), 3); // 1, 2, 4
        assert_eq!(w.missing_below(1), 0);
        for s in [1, 2, 4] {
            assert!(w.insert(s));
        }
        assert_eq!(w, Window::at(6));
    }
}
