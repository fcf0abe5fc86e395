//! Background levels: after an epoch committed at L1, its L2 partner copies travel over MPI
//! and its L4 copies go to shared storage while the application computes.
//!
//! MPI is driven from [`crate::Checkpointer::poll`] only (most codes initialise MPI
//! single-threaded; non-blocking requests on the library's own duplicate communicator, tested
//! at each poll), and file IO runs on helper threads that never call MPI (writing a received
//! copy, copying to shared storage, rank 0's republishing of the manifest); sends come straight
//! from a read-only mapping of the rank's L1 file. So a poll costs a few `MPI_Test`s while a
//! level is in progress, and the application blocks only for L1.
//!
//! One epoch's levels are in flight at a time. A checkpoint due while the previous epoch's
//! levels are still running first completes them (policy *wait*: each wait under a deadline
//! that names the rank waited for), so neither epoch is ever corrupted and L1 files are pruned
//! only once no level reads them; a stop does the same, so the last epoch gets its levels.
//!
//! Completion: each L2 holder and each rank's L4 copy reports to rank 0 (a small message); when
//! every rank's copy of a level is durable, rank 0 republishes the manifest with that level
//! (see [`crate::manifest`]) and logs `level_complete`. A copy that failed is reported, the
//! level is not recorded (`level_failed`), and its copies are never used. A crash in the middle
//! leaves the level unrecorded: partial copies are temporary files, pruned with their epoch.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::time::Instant;

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use crate::events::{self, Event};
use crate::fault::{maybe_die, Phase};
use crate::format::{FileIdentity, RankFileReader};
use crate::inflight::{self, InFlight, RecvStream, SendStream};
use crate::manifest::{self, Level};
use crate::placement::Partners;
use crate::retention;
use crate::stall::{self, Watch};
use crate::storage::copies::{self, CopyWriter, Places};
use crate::storage::parity::{Encoder, GroupLayout, ParityHeader};
use crate::storage::parity_sets::ParitySets;
use crate::Ctx;

/// Bytes per L2 message.
const CHUNK: usize = 4 << 20;
/// Chunks of one stream in MPI at once (and as many queued to or from its IO thread).
const WINDOW: usize = 2;
/// Chunks of one incoming L2 stream posted or waiting for its writer thread.
const RECV_WINDOW: usize = 8;
/// Chunks of one incoming L3 segment stream posted at once.
const SET_WINDOW: usize = 4;
/// Longest a poll keeps moving background transfers while they complete.
const PROGRESS_BUDGET: std::time::Duration = std::time::Duration::from_millis(2);
/// Chunks sent from a mapped file at once per stream (they cost no memory: the pages are the
/// file's); a poll moves up to this many to the receiver.
const SEND_WINDOW: usize = 8;
/// Tags on the background communicator.
const TAG_HEADER: i32 = 1;
const TAG_DATA: i32 = 2;
const TAG_REPORT: i32 = 3;
/// L3 segments of parity set `p` use tag `TAG_SET + p`.
pub(crate) const TAG_SET: i32 = 16;

/// What a rank tells rank 0 when one copy of a level is durable (or failed).
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    epoch: u64,
    level: Level,
    /// Whose copy.
    rank: u32,
    /// Bytes stored, or what failed.
    result: Result<u64, String>,
}

/// Work on a helper thread; its result is taken without blocking.
struct Task<T> {
    rx: Receiver<T>,
}

impl<T: Send + 'static> Task<T> {
    fn spawn(f: impl FnOnce() -> T + Send + 'static) -> Task<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        Task { rx }
    }

    /// The result if the thread finished; a thread that died (it cannot: the closures here
    /// return errors) counts as finished with `gone`.
    fn try_take(&self, gone: impl FnOnce() -> T) -> Option<T> {
        match self.rx.try_recv() {
            Ok(v) => Some(v),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(gone()),
        }
    }
}

/// Bytes of this rank's L1 file going to another rank: the whole file to its partner (L2), or
/// a segment to a parity holder (L3).
struct OutStream {
    /// The length header (L2 only), then the bytes.
    header: Option<InFlight>,
    data: SendStream,
    reported: bool,
}

/// A partner's file coming to this rank.
struct InStream {
    src: i32,
    dest: PathBuf,
    /// What the copy must be (checked once it is durable).
    id: FileIdentity,
    state: InState,
}

enum InState {
    /// Waiting for the length.
    Header,
    Receiving {
        len: u64,
        posted: u64,
        recvs: VecDeque<InFlight>,
        /// Received chunks not yet taken by the writer.
        queued: VecDeque<Vec<u8>>,
        to_writer: Option<SyncSender<Vec<u8>>>,
        writer: Task<Result<u64, String>>,
        /// The writer's error, once it stopped early: the rest is received and discarded, so
        /// the sender's requests complete.
        failed: Option<String>,
    },
    Done,
}

/// Rank 0's count of the reports of one level.
#[derive(Default)]
struct Tally {
    copies: BTreeMap<u32, Result<u64, String>>,
    publishing: Option<Task<Result<(), String>>>,
    closed: bool,
}

/// One epoch's background levels on this rank.
struct Flight {
    epoch: u64,
    t0: Instant,
    levels: Vec<Level>,
    out: Option<OutStream>,
    ins: Vec<InStream>,
    /// L3: this rank's segments on their way to the holders of their sets.
    set_outs: Vec<OutStream>,
    /// L3: the sets this rank holds parity of.
    set_ins: Vec<SetIn>,
    /// L3: this rank has not reported its sets yet.
    parity_pending: bool,
    shared: Option<Task<Result<u64, String>>>,
    /// Reports this rank has to deliver to rank 0 (sends in flight).
    reports: Vec<InFlight>,
    /// Rank 0: reports per level.
    tallies: BTreeMap<u8, Tally>,
}

/// The L3 groups of a launch: every group's members (ranks on distinct nodes, each group at
/// least `k + 1`) and the parity shards per set.
#[derive(Debug, Clone)]
pub(crate) struct Grouping {
    pub groups: Vec<Vec<u32>>,
    pub k: u16,
}

impl Grouping {
    /// `rank`'s group index, its index among the members, and the group's parity sets.
    pub fn of(&self, rank: u32) -> Option<(usize, usize, ParitySets)> {
        let g = self.groups.iter().position(|m| m.contains(&rank))?;
        let members = self.groups[g].clone();
        let mi = members.iter().position(|&r| r == rank)?;
        let sets = ParitySets::new(members, self.k).ok()?;
        Some((g, mi, sets))
    }
}

/// The `group` field of an L3 parity file's header: group index and set.
pub(crate) fn parity_header_group(g: usize, p: usize) -> u32 {
    crate::storage::parity_sets::header_group(g, p)
}

/// The background levels of this rank: at most one epoch in flight.
pub(crate) struct Background {
    comm: SimpleCommunicator,
    partners: Option<Partners>,
    grouping: Option<Grouping>,
    places: Places,
    flight: Option<Flight>,
}

fn level_key(l: Level) -> u8 {
    match l {
        Level::Local => 1,
        Level::Partner => 2,
        Level::Parity => 3,
        Level::Pfs => 4,
    }
}

impl Background {
    /// The background levels over `comm` (a duplicate of their own). `partners` is `None` when
    /// the placement cannot support L2.
    pub fn new(
        comm: SimpleCommunicator,
        partners: Option<Partners>,
        grouping: Option<Grouping>,
        places: Places,
    ) -> Self {
        Background {
            comm,
            partners,
            grouping,
            places,
            flight: None,
        }
    }

    /// Whether the placement supports L2 partner copies.
    pub fn partner_ok(&self) -> bool {
        self.partners.is_some()
    }

    /// The epoch whose levels are in flight.
    pub fn epoch(&self) -> Option<u64> {
        self.flight.as_ref().map(|f| f.epoch)
    }

    /// Whether the placement supports L3 parity groups.
    pub fn parity_ok(&self) -> bool {
        self.grouping.is_some()
    }

    /// Starts the background levels of `epoch`, just committed (collective in effect: every
    /// rank calls it with the same epoch and levels). `levels` are those the policy chose.
    pub fn start(&mut self, ctx: &Ctx, epoch: u64, levels: Vec<Level>, lens: Vec<u64>) {
        if levels.is_empty() {
            return;
        }
        let me = ctx.rank as u32;
        let l1 = self.places.locate(Level::Local, epoch, me);
        let mut f = Flight {
            epoch,
            t0: Instant::now(),
            levels: levels.clone(),
            out: None,
            ins: Vec::new(),
            set_outs: Vec::new(),
            set_ins: Vec::new(),
            parity_pending: false,
            shared: None,
            reports: Vec::new(),
            tallies: BTreeMap::new(),
        };
        if ctx.rank == 0 {
            for &l in &levels {
                f.tallies.insert(level_key(l), Tally::default());
            }
        }
        if levels.contains(&Level::Partner) {
            if let (Some(p), Some(l1)) = (&self.partners, &l1) {
                f.out = Some(OutStream::start(&self.comm, p.of(me) as i32, l1.clone()));
                for src in p.held_by(me) {
                    let dest = self.places.locate(Level::Partner, epoch, src);
                    f.ins.push(InStream {
                        src: src as i32,
                        dest: dest.unwrap_or_default(),
                        id: FileIdentity {
                            job: ctx.cfg.job_id.clone(),
                            epoch,
                            rank: src,
                            nranks: ctx.nranks as u32,
                        },
                        state: InState::Header,
                    });
                }
            }
        }
        if levels.contains(&Level::Parity) {
            if let (Some(gr), Some(l1)) = (&self.grouping, &l1) {
                self.start_parity(ctx, &mut f, gr, l1, &lens);
            }
        }
        if levels.contains(&Level::Pfs) {
            if let (Some(src), Some(dest)) = (l1, self.places.locate(Level::Pfs, epoch, me)) {
                let fault = ctx.cfg.active_fault().copied();
                let rank = ctx.rank;
                let id = FileIdentity {
                    job: ctx.cfg.job_id.clone(),
                    epoch,
                    rank: me,
                    nranks: ctx.nranks as u32,
                };
                f.shared = Some(Task::spawn(move || {
                    maybe_die(fault.as_ref(), rank, Phase::Background, epoch);
                    flush(&src, &dest, &id)
                }));
            }
        }
        self.flight = Some(f);
    }

    /// L3 of `f.epoch`: this rank's segments go to their sets' holders, and for each set it
    /// holds, a receiver feeds an encoder thread that writes the parity shard.
    fn start_parity(&self, ctx: &Ctx, f: &mut Flight, gr: &Grouping, l1: &Path, lens: &[u64]) {
        let me = ctx.rank as u32;
        let Some((g, mi, sets)) = gr.of(me) else {
            return;
        };
        let members = sets.members().to_vec();
        let group_lens: Vec<u64> = members
            .iter()
            .map(|&r| lens.get(r as usize).copied().unwrap_or(0))
            .collect();
        for (p, j) in sets.sets_with_data(mi) {
            let range = sets.segment(group_lens[mi], j);
            for h in sets.holders(p) {
                f.set_outs.push(OutStream::range(
                    members[h] as i32,
                    l1.to_owned(),
                    range.clone(),
                    TAG_SET + p as i32,
                ));
            }
        }
        for p in 0..sets.count() {
            let Some(t) = sets.shard_held(mi, p) else {
                continue;
            };
            let layout = match sets.layout(p, &group_lens, CHUNK as u32) {
                Ok(l) => l,
                Err(e) => {
                    f.set_ins
                        .push(SetIn::failed(format!("group {g} set {p}: {e}")));
                    continue;
                }
            };
            let header = ParityHeader {
                epoch: f.epoch,
                group: parity_header_group(g, p),
                index: t as u16,
                layout: layout.clone(),
            };
            let srcs: Vec<(i32, u64)> = layout
                .members()
                .iter()
                .map(|m| (m.rank as i32, m.len))
                .collect();
            let path = self.places.parity_path(f.epoch, g as u32, p as u32);
            f.set_ins
                .push(SetIn::start(TAG_SET + p as i32, &srcs, header, path));
        }
        f.parity_pending = true;
    }

    /// Advances the levels in flight without blocking; called at every poll.
    pub fn progress(&mut self, ctx: &Ctx) {
        // Passes while transfers complete, for at most PROGRESS_BUDGET: a poll moves what its
        // peers already posted (many chunks when polls are rare) instead of one step per
        // poll, and costs one pass when nothing moves.
        let t0 = Instant::now();
        loop {
            let done = inflight::completions();
            self.progress_once(ctx);
            if self.flight.is_none()
                || inflight::completions() == done
                || t0.elapsed() >= PROGRESS_BUDGET
            {
                return;
            }
        }
    }

    fn progress_once(&mut self, ctx: &Ctx) {
        let Background {
            comm,
            partners,
            grouping,
            flight,
            ..
        } = self;
        let Some(f) = flight.as_mut() else {
            return;
        };
        let me = ctx.rank as u32;
        let mut reports = Vec::new();
        if let Some(o) = f.out.as_mut() {
            o.progress(comm, ctx, f.epoch);
        }
        for o in &mut f.set_outs {
            o.progress(comm, ctx, f.epoch);
        }
        for s in &mut f.set_ins {
            s.progress(comm);
        }
        if f.parity_pending && f.set_ins.iter().all(SetIn::done) {
            f.parity_pending = false;
            let failures: Vec<String> = f
                .set_ins
                .iter()
                .filter_map(|s| s.result.as_ref().and_then(|r| r.as_ref().err().cloned()))
                .collect();
            let bytes = f
                .set_ins
                .iter()
                .filter_map(|s| s.result.as_ref().and_then(|r| r.as_ref().ok().copied()))
                .sum();
            reports.push(Report {
                epoch: f.epoch,
                level: Level::Parity,
                rank: me,
                result: match failures.is_empty() {
                    true => Ok(bytes),
                    false => Err(format!("rank {me}: {}", failures.join("; "))),
                },
            });
        }
        for s in &mut f.ins {
            if let Some(result) = s.progress(comm) {
                reports.push(Report {
                    epoch: f.epoch,
                    level: Level::Partner,
                    rank: s.src as u32,
                    result,
                });
            }
        }
        if let Some(t) = &f.shared {
            if let Some(result) = t.try_take(|| Err("the L4 copy's thread died".into())) {
                f.shared = None;
                reports.push(Report {
                    epoch: f.epoch,
                    level: Level::Pfs,
                    rank: me,
                    result: result.map_err(|e| format!("rank {me}: {e}")),
                });
            }
        }
        for r in reports {
            if ctx.rank == 0 {
                f.record(r);
            } else {
                let bytes = postcard::to_stdvec(&r).unwrap_or_default();
                f.reports.push(InFlight::send(comm, 0, TAG_REPORT, bytes));
            }
        }
        for r in &mut f.reports {
            r.test();
        }
        f.reports.retain(|r| !r.done());
        if ctx.rank == 0 {
            while let Some((msg, st)) = comm
                .any_process()
                .immediate_matched_probe_with_tag(TAG_REPORT)
            {
                let mut buf = vec![0u8; st.count(u8::equivalent_datatype()).max(0) as usize];
                msg.matched_receive_into(&mut buf[..]);
                if let Ok(r) = postcard::from_bytes::<Report>(&buf) {
                    if r.epoch == f.epoch {
                        f.record(r);
                    }
                }
            }
            f.settle(ctx, ctx.nranks as u32, partners.as_ref(), grouping.as_ref());
        }
        if f.finished() {
            *flight = None;
        }
    }

    /// Completes the levels in flight (before the next checkpoint, and at a stop). Each wait is
    /// under `CKPT_TIMEOUT + CKPT_IO_TIMEOUT` from now and names the rank waited for.
    pub fn finish(&mut self, ctx: &Ctx) {
        let watch = Watch::of(&ctx.cfg).after_io(Instant::now());
        loop {
            self.progress(ctx);
            let Some((late, what)) = self.waiting_on(ctx) else {
                return;
            };
            stall::wait_on_rank(
                &ctx.lib,
                &watch,
                late,
                || what.clone(),
                || {
                    self.progress(ctx);
                    self.waiting_on(ctx).map(|w| w.0) != Some(late)
                },
            );
        }
    }

    /// The rank this rank's levels wait for, and what for; `None` when nothing is in flight.
    fn waiting_on(&self, ctx: &Ctx) -> Option<(i32, String)> {
        let f = self.flight.as_ref()?;
        let e = f.epoch;
        if let Some(o) = f.out.as_ref().filter(|o| !o.done()) {
            return Some((
                o.data.dest,
                format!("the L2 copy of epoch {e} sent to rank {}", o.data.dest),
            ));
        }
        if let Some(s) = f.ins.iter().find(|s| !matches!(s.state, InState::Done)) {
            return Some((
                s.src,
                format!("the L2 copy of epoch {e} from rank {}", s.src),
            ));
        }
        if let Some(o) = f.set_outs.iter().find(|o| !o.done()) {
            return Some((
                o.data.dest,
                format!("an L3 segment of epoch {e} sent to rank {}", o.data.dest),
            ));
        }
        if let Some(src) = f.set_ins.iter().find_map(SetIn::waiting_for) {
            return Some((src, format!("an L3 segment of epoch {e} from rank {src}")));
        }
        if f.parity_pending {
            return Some((ctx.rank, format!("the L3 parity of epoch {e}")));
        }
        if f.shared.is_some() || !f.reports.is_empty() {
            return Some((ctx.rank, format!("the L4 copy of epoch {e}")));
        }
        for (key, t) in &f.tallies {
            if t.closed {
                continue;
            }
            let missing = (0..ctx.nranks as u32).find(|r| !t.copies.contains_key(r));
            let level = f.levels.iter().find(|&&l| level_key(l) == *key);
            let name = level.map_or("a level", |&l| level_name(l));
            return Some(match missing {
                // The report of an L2 copy comes from its holder.
                Some(r) if *key == level_key(Level::Partner) => {
                    let holder = self.partners.as_ref().map_or(r, |p| p.of(r));
                    (
                        holder as i32,
                        format!("the report of {name} of epoch {e} for rank {r}"),
                    )
                }
                Some(r) => (
                    r as i32,
                    format!("the report of {name} of epoch {e} for rank {r}"),
                ),
                None => (0, format!("the republication of epoch {e}'s manifest")),
            });
        }
        None
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Requests still in flight leak their buffers (see `InFlight`), never free them.
        self.flight = None;
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Local => "L1",
        Level::Partner => "L2",
        Level::Parity => "L3",
        Level::Pfs => "L4",
    }
}

impl Flight {
    fn record(&mut self, r: Report) {
        if let Some(t) = self.tallies.get_mut(&level_key(r.level)) {
            t.copies.entry(r.rank).or_insert(r.result);
        }
    }

    /// Rank 0: a level with every report in is republished (all good) or failed.
    fn settle(
        &mut self,
        ctx: &Ctx,
        nranks: u32,
        partners: Option<&Partners>,
        grouping: Option<&Grouping>,
    ) {
        let epoch = self.epoch;
        for (&key, t) in self.tallies.iter_mut() {
            if t.closed {
                continue;
            }
            let Some(level) = self.levels.iter().copied().find(|&l| level_key(l) == key) else {
                t.closed = true;
                continue;
            };
            if let Some(p) = &t.publishing {
                if let Some(result) = p.try_take(|| Err("the publishing thread died".into())) {
                    t.publishing = None;
                    t.closed = true;
                    let secs = self.t0.elapsed().as_secs_f64();
                    let bytes = t.copies.values().filter_map(|c| c.as_ref().ok()).sum();
                    let event = match result {
                        Ok(()) => Event::LevelComplete {
                            epoch,
                            level,
                            bytes,
                            secs,
                        },
                        Err(e) => Event::LevelFailed {
                            epoch,
                            level,
                            reasons: vec![e],
                        },
                    };
                    let _ = events::append(&ctx.cfg.job_dir, &event);
                }
                continue;
            }
            if t.copies.len() < nranks as usize {
                continue;
            }
            let failures: Vec<String> = t
                .copies
                .values()
                .filter_map(|c| c.as_ref().err().cloned())
                .collect();
            if !failures.is_empty() {
                t.closed = true;
                eprintln!(
                    "[ckpt rank 0] epoch {epoch}: {} failed, its copies are not used: {}",
                    level_name(level),
                    failures.join("; ")
                );
                let _ = events::append(
                    &ctx.cfg.job_dir,
                    &Event::LevelFailed {
                        epoch,
                        level,
                        reasons: failures,
                    },
                );
                continue;
            }
            let job_dir = ctx.cfg.job_dir.clone();
            let mut copies = manifest::Copies::default();
            match level {
                Level::Partner => {
                    copies.partner = partners.map(|p| p.as_slice().to_vec()).unwrap_or_default()
                }
                Level::Parity => {
                    copies.parity = grouping
                        .map(|g| {
                            g.groups
                                .iter()
                                .map(|m| manifest::ParityGroup {
                                    members: m.clone(),
                                    k: g.k,
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                }
                _ => {}
            }
            let keep = ctx.cfg.keep_per_level();
            t.publishing = Some(Task::spawn(move || {
                republish(&job_dir, epoch, level, copies)?;
                // The level now counts for retention: an older epoch may lose it (its copies
                // go at the next commit).
                if let Err(e) = retention::apply(&job_dir, &keep, None) {
                    eprintln!("[ckpt rank 0] warning: cannot apply retention: {e}");
                }
                Ok(())
            }));
        }
    }

    fn finished(&self) -> bool {
        self.out.as_ref().is_none_or(OutStream::done)
            && self.set_outs.iter().all(OutStream::done)
            && !self.parity_pending
            && self.ins.iter().all(|s| matches!(s.state, InState::Done))
            && self.shared.is_none()
            && self.reports.is_empty()
            && self.tallies.values().all(|t| t.closed)
    }
}

/// Rank 0: adds `level` to epoch `epoch`'s manifest and publishes it again atomically.
fn republish(
    job_dir: &Path,
    epoch: u64,
    level: Level,
    copies: manifest::Copies,
) -> Result<(), String> {
    manifest::update(job_dir, epoch, |m| {
        if !m.levels.contains(&level) {
            m.levels.push(level);
        }
        match level {
            Level::Partner => m.copies.partner = copies.partner,
            Level::Parity => m.copies.parity = copies.parity,
            _ => {}
        }
    })
    .map(|_| ())
    .map_err(|e| format!("cannot republish epoch {epoch}'s manifest: {e}"))
}

/// Copies the L1 file `src` to shared storage at `dest` and reads the copy back through the
/// format's checks: the L4 copy is trusted only if it reads back whole.
fn flush(src: &Path, dest: &Path, id: &FileIdentity) -> Result<u64, String> {
    let n = copies::copy_file(src, dest, CHUNK)
        .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dest.display()))?;
    verify_copy(dest, id)?;
    Ok(n)
}

/// Reads a stored copy back through the rank file's checks (header, identity, table, every
/// region's CRC, streamed through a bounded buffer); a copy that fails is removed.
fn verify_copy(path: &Path, id: &FileIdentity) -> Result<(), String> {
    let checked = RankFileReader::open(path, id).and_then(|r| r.verify_all());
    checked.map(|_| ()).map_err(|e| {
        let _ = std::fs::remove_file(path);
        format!("the copy {} does not read back: {e}", path.display())
    })
}

impl OutStream {
    /// The whole L1 file `l1` to `dest`, after a header with its length (L2).
    fn start(comm: &SimpleCommunicator, dest: i32, l1: PathBuf) -> OutStream {
        let len = std::fs::metadata(&l1).map(|m| m.len()).unwrap_or(0);
        let mut header = len.to_le_bytes().to_vec();
        header.extend_from_slice(&[0u8; 8]);
        let first = InFlight::send(comm, dest, TAG_HEADER, header);
        let mut out = OutStream::range(dest, l1, 0..len, TAG_DATA);
        out.header = Some(first);
        out
    }

    /// Bytes `range` of `path` to `dest` with `tag`, no header (the receiver knows the length).
    fn range(dest: i32, path: PathBuf, range: std::ops::Range<u64>, tag: i32) -> OutStream {
        OutStream {
            header: None,
            data: SendStream::open(dest, tag, &path, range, CHUNK, SEND_WINDOW),
            reported: false,
        }
    }

    fn progress(&mut self, comm: &SimpleCommunicator, ctx: &Ctx, epoch: u64) {
        if let Some(h) = &mut self.header {
            h.test();
        }
        if self.header.as_ref().is_some_and(InFlight::done) {
            self.header = None;
        }
        for _ in 0..self.data.progress(comm) {
            maybe_die(ctx.cfg.active_fault(), ctx.rank, Phase::Background, epoch);
        }
        if let (Some(e), false) = (self.data.error(), self.reported) {
            // The holder gets zeros instead: its check of the copy fails, and it reports the
            // copy as failed.
            eprintln!("[ckpt rank {}] L2 copy of epoch {epoch}: {e}", ctx.rank);
            self.reported = true;
        }
    }

    fn done(&self) -> bool {
        self.header.is_none() && self.data.done()
    }
}

impl InStream {
    /// Advances the stream; returns its result once, when it is done.
    fn progress(&mut self, comm: &SimpleCommunicator) -> Option<Result<u64, String>> {
        if let InState::Header = self.state {
            let got = comm
                .process_at_rank(self.src)
                .immediate_matched_probe_with_tag(TAG_HEADER)?;
            let mut header = [0u8; 16];
            got.0.matched_receive_into(&mut header[..]);
            let mut len = [0u8; 8];
            len.copy_from_slice(&header[..8]);
            let len = u64::from_le_bytes(len);
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(WINDOW);
            let dest = self.dest.clone();
            let id = self.id.clone();
            let writer = Task::spawn(move || write_copy(&dest, len, &id, rx));
            self.state = InState::Receiving {
                len,
                posted: 0,
                recvs: VecDeque::new(),
                queued: VecDeque::new(),
                to_writer: Some(tx),
                writer,
                failed: None,
            };
        }
        let src = self.src;
        let InState::Receiving {
            len,
            posted,
            recvs,
            queued,
            to_writer,
            writer,
            failed,
        } = &mut self.state
        else {
            return None;
        };
        loop {
            // Received chunks wait for the writer within the same window: memory per
            // incoming stream stays under (RECV_WINDOW + WINDOW + 1) chunks.
            while *posted < *len && recvs.len() + queued.len() < RECV_WINDOW {
                let n = (*len - *posted).min(CHUNK as u64) as usize;
                recvs.push_back(InFlight::recv(comm, src, TAG_DATA, n));
                *posted += n as u64;
            }
            let Some(chunk) = recvs.front_mut().and_then(InFlight::test) else {
                break;
            };
            recvs.pop_front();
            if failed.is_none() {
                queued.push_back(chunk);
            }
        }
        while let Some(tx) = to_writer.as_ref() {
            let Some(chunk) = queued.pop_front() else {
                break;
            };
            match tx.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(c)) => {
                    queued.push_front(c);
                    break;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    // The writer stopped on an error (it returns it): discard the rest.
                    *to_writer = None;
                    queued.clear();
                }
            }
        }
        if *posted >= *len && recvs.is_empty() && queued.is_empty() {
            *to_writer = None;
        }
        if failed.is_none() {
            if let Some(r) = writer.try_take(|| Err("the writer thread died".into())) {
                let total = *len;
                *failed = Some(match r {
                    Ok(_) if *posted >= total && recvs.is_empty() => {
                        self.state = InState::Done;
                        return Some(Ok(total));
                    }
                    Ok(n) => format!("the writer stopped after {n} of {total} bytes"),
                    Err(e) => e,
                });
                *to_writer = None;
                queued.clear();
            }
        }
        if let Some(e) = failed.clone() {
            if *posted >= *len && recvs.is_empty() {
                self.state = InState::Done;
                return Some(Err(e));
            }
        }
        None
    }
}

/// Writes a received copy: chunks from `rx` into a fresh temporary file, then durable under
/// `dest`; fails unless exactly `len` bytes came.
fn write_copy(
    dest: &Path,
    len: u64,
    id: &FileIdentity,
    rx: Receiver<Vec<u8>>,
) -> Result<u64, String> {
    let name = dest.display();
    let mut w = CopyWriter::create(dest).map_err(|e| format!("cannot create {name}: {e}"))?;
    for chunk in rx {
        w.write(&chunk)
            .map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    if w.written() != len {
        return Err(format!("{name}: {} bytes received of {len}", w.written()));
    }
    w.finish().map_err(|e| format!("cannot sync {name}: {e}"))?;
    verify_copy(dest, id)?;
    Ok(len)
}

/// A parity set this rank holds: the data members' segments arrive stripe by stripe and go to
/// an encoder thread, which writes this rank's parity shard.
struct SetIn {
    segs: Vec<RecvStream>,
    stripes: u64,
    next: u64,
    ready: Option<Vec<Vec<u8>>>,
    to_encoder: Option<SyncSender<Vec<Vec<u8>>>>,
    encoder: Option<Task<Result<u64, String>>>,
    result: Option<Result<u64, String>>,
}

impl SetIn {
    fn start(tag: i32, srcs: &[(i32, u64)], header: ParityHeader, path: PathBuf) -> SetIn {
        let stripes = header.layout.stripes();
        let (tx, rx) = mpsc::sync_channel(WINDOW);
        let encoder = Task::spawn(move || encode_set(&path, header, rx));
        SetIn {
            segs: srcs
                .iter()
                .map(|&(src, len)| RecvStream::new(src, tag, len, CHUNK, SET_WINDOW))
                .collect(),
            stripes,
            next: 0,
            ready: None,
            to_encoder: Some(tx),
            encoder: Some(encoder),
            result: None,
        }
    }

    fn failed(e: String) -> SetIn {
        SetIn {
            segs: Vec::new(),
            stripes: 0,
            next: 0,
            ready: None,
            to_encoder: None,
            encoder: None,
            result: Some(Err(e)),
        }
    }

    fn received(&self) -> bool {
        self.segs.iter().all(RecvStream::received)
    }

    fn done(&self) -> bool {
        self.result.is_some() && self.received()
    }

    /// The data member whose segment this set still waits for.
    fn waiting_for(&self) -> Option<i32> {
        self.segs.iter().find(|s| !s.received()).map(|s| s.src)
    }

    fn progress(&mut self, comm: &SimpleCommunicator) {
        for s in &mut self.segs {
            s.progress(comm);
        }
        loop {
            if self.ready.is_none() && self.next < self.stripes {
                let at = self.next * CHUNK as u64;
                // Stripe `next` is ready when every segment that reaches it has its chunk.
                if self.segs.iter().any(|s| s.len() > at && s.got.is_empty()) {
                    break;
                }
                let stripe = self
                    .segs
                    .iter_mut()
                    .map(|s| match s.len() > at {
                        true => s.got.pop_front().unwrap_or_default(),
                        false => Vec::new(),
                    })
                    .collect();
                self.ready = Some(stripe);
                self.next += 1;
            }
            let Some(stripe) = self.ready.take() else {
                break;
            };
            match self.to_encoder.as_ref().map(|tx| tx.try_send(stripe)) {
                Some(Ok(())) => {}
                Some(Err(mpsc::TrySendError::Full(st))) => {
                    self.ready = Some(st);
                    break;
                }
                // The encoder stopped on an error (it returns it); the rest is discarded.
                Some(Err(mpsc::TrySendError::Disconnected(_))) | None => {
                    self.to_encoder = None;
                }
            }
        }
        if self.next >= self.stripes && self.ready.is_none() {
            self.to_encoder = None;
        }
        if self.result.is_none() {
            if let Some(r) = self
                .encoder
                .as_ref()
                .and_then(|t| t.try_take(|| Err("the encoder thread died".into())))
            {
                self.result = Some(r);
                self.to_encoder = None;
                self.encoder = None;
            }
        }
    }
}

/// Writes one parity shard: the header, then shard `header.index` of every stripe's parity,
/// as the stripes come from `rx`; durable once all came.
fn encode_set(
    path: &Path,
    header: ParityHeader,
    rx: Receiver<Vec<Vec<u8>>>,
) -> Result<u64, String> {
    let name = path.display();
    let layout: GroupLayout = header.layout.clone();
    let t = usize::from(header.index);
    let mut enc = Encoder::new(layout.clone()).map_err(|e| format!("{name}: {e}"))?;
    let mut w = CopyWriter::create(path).map_err(|e| format!("cannot create {name}: {e}"))?;
    let io = |e: std::io::Error| format!("cannot write {name}: {e}");
    w.write(&header.encode()).map_err(io)?;
    let mut i = 0;
    for stripe in rx {
        let refs: Vec<&[u8]> = stripe.iter().map(Vec::as_slice).collect();
        let parity = enc
            .encode_stripe(i, &refs)
            .map_err(|e| format!("{name}: stripe {i}: {e}"))?;
        w.write(&parity[t]).map_err(io)?;
        i += 1;
    }
    if i != layout.stripes() {
        return Err(format!("{name}: {i} of {} stripes came", layout.stripes()));
    }
    let n = w.written();
    w.finish().map_err(|e| format!("cannot sync {name}: {e}"))?;
    Ok(n)
}
