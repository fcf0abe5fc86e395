//! The application's handle: [`Checkpointer`] ties configuration, agreement, commit and restore
//! together over two private duplicates of the application's communicator (one for the
//! application's own traffic through [`Comm`], one for the library's).

use std::rc::Rc;
use std::time::Instant;

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::background::{Background, Grouping};
use crate::comm::{Comm, DrainReport};
use crate::commit::{self, EpochStats, LibState, LogSection};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::fault::{maybe_die, Phase};
use crate::format::WriteProgress;
use crate::handoff::{Handed, Receiver, Sending};
use crate::identity;
use crate::levels::Busy;
use crate::manifest::{self, Level};
use crate::placement::{self, Partners, Placement};
use crate::protocol::agree::Agreement;
use crate::region::Protect;
use crate::restore::{self, Restored};
use crate::stall::{self, Watch};
use crate::storage::copies::Places;
use crate::storage::durable;
use crate::storage::liveness::Presence;
use crate::subcomm::{Family, SubComm};
use crate::transport::{self, MpiFlagReduce};
use crate::trigger::Triggers;
use crate::watchdog::IoWatchdog;
use crate::writeback::WriteBack;
use crate::Ctx;

/// A checkpoint that waited at least this long for the previous epoch's levels is reported.
const BUSY_REPORTED: f64 = 0.05;

/// How long a starting rank waits for the launcher's instant check of `control/ranks.lock`.
const PRESENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What one call to [`Checkpointer::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Poll {
    checkpoint: Option<EpochStats>,
    exit: bool,
}

impl Poll {
    /// The epoch committed at this poll, if one was.
    pub fn checkpointed(&self) -> Option<EpochStats> {
        self.checkpoint
    }

    /// Whether the application should stop now: `ckpt checkpoint --then-exit` was agreed, and
    /// either this poll committed its epoch or an epoch committed since the request was read
    /// stands for it (then [`Poll::checkpointed`] is `None`; the job resumes from that epoch).
    pub fn should_exit(&self) -> bool {
        self.exit
    }
}

/// Coordinated checkpoint/restart for one rank. Create it on every rank with the same
/// communicator; `poll`, `checkpoint` and `restore` are collective.
pub struct Checkpointer {
    ctx: Ctx,
    /// The application's communicators: `comm()` and the sub-communicators made from it.
    family: Rc<Family>,
    agree: Agreement,
    reduce: MpiFlagReduce,
    triggers: Triggers,
    /// Committed epochs found at start-up, newest first (same on every rank).
    committed_at_start: Vec<u64>,
    next_epoch: u64,
    restored: Option<u64>,
    /// This rank's share of `control/ranks.lock`, held until the checkpointer is dropped.
    _presence: Presence,
    /// Set once `poll` told the application to stop: why further calls are refused.
    stopped: Option<String>,
    /// Checkpoints attempted in this process.
    checkpoints: u64,
    /// The background levels (L2, L4) of the newest epoch.
    bg: Background,
    /// This rank's recovered file of the restored epoch, being made durable.
    write_back: Option<WriteBack>,
    /// This rank's file handed off to it before its launch was released (see `handoff`),
    /// until the restore uses it.
    handed: Option<Handed>,
    /// The handoff of this rank's file of the launch's last epoch, waited for before the rank
    /// goes.
    sending: Option<Sending>,
}

/// Every rank's node, gathered at start-up (same key as the other start-up collectives), and
/// the L2 partners and L3 groups it allows; `None` (with a warning from rank 0 when the level
/// was asked for) when the placement cannot support the level.
fn startup_levels(
    lib: &SimpleCommunicator,
    watch: &Watch,
    cfg: &Config,
    rank: i32,
) -> Result<(Option<Partners>, Option<Grouping>)> {
    let label = || ("startup".into(), "the start-up placement exchange".into());
    let gathered = transport::gather_bytes(lib, watch, &label, 0, cfg.node.as_bytes());
    let nodes = gathered
        .map(|all| {
            let names: Vec<String> = all
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            postcard::to_stdvec(&names).unwrap_or_default()
        })
        .unwrap_or_default();
    let nodes = transport::bcast_bytes(lib, watch, &label, 0, nodes);
    let nodes: Vec<String> = postcard::from_bytes(&nodes).map_err(|e| Error::Usage {
        rank,
        what: format!("corrupt placement from rank 0: {e}"),
    })?;
    let placement = Placement::new(nodes);
    let warn = |level: &str, wanted: bool, why: String| {
        if rank == 0 && wanted {
            eprintln!("[ckpt] {level} are off for this launch: {why}");
        }
    };
    let partners = match placement.clone().and_then(|p| placement::partners(&p, 1)) {
        Ok(p) => Some(p),
        Err(e) => {
            warn(
                "L2 partner copies",
                cfg.levels.partner_every > 0,
                e.to_string(),
            );
            None
        }
    };
    let policy = &cfg.levels;
    let grouping = placement
        .and_then(|p| placement::groups(&p, policy.parity_group))
        .map_err(|e| e.to_string())
        .and_then(|g| {
            let groups = g.as_slice().to_vec();
            let k = usize::from(policy.parity_k);
            match groups.iter().find(|m| m.len() <= k) {
                Some(small) => Err(format!(
                    "{} parity shards per set need groups of at least {} ranks on distinct \
                     nodes; the placement gives a group of {} ({small:?})",
                    k,
                    k + 1,
                    small.len()
                )),
                None => Ok(Grouping {
                    groups,
                    k: policy.parity_k,
                }),
            }
        });
    let grouping = match grouping {
        Ok(g) => Some(g),
        Err(e) => {
            warn("L3 parity groups", policy.parity_every > 0, e);
            None
        }
    };
    Ok((partners, grouping))
}

/// Rank 0 at start-up: creates the job directory if needed (only a job identified by its base
/// name: `ckpt run` made its own), checks that it is this job's ([`identity::check`]) and
/// lists its epochs.
fn startup_listing(cfg: &Config) -> std::result::Result<manifest::Listing, String> {
    // Created (private) only for a job identified by its directory's name (no launcher made
    // it); otherwise it must exist, still be this job's, and be ours and closed to others.
    if cfg.job_id == identity::legacy_id(&cfg.job_dir) {
        durable::ensure_dir(&cfg.job_dir, "job directory").map_err(|e| e.to_string())?;
    }
    identity::check(&cfg.job_dir, &cfg.job_id)
        .map_err(|found| format!("it is not job {}'s: {found}", cfg.job_id))?;
    durable::check_dir(&cfg.job_dir, "job directory").map_err(|e| e.to_string())?;
    manifest::listing(&cfg.job_dir).map_err(|e| e.to_string())
}

impl Checkpointer {
    /// Sets up checkpointing for the ranks of `comm` (collective). Creates the job directory
    /// if needed and looks for committed epochs to restart from.
    pub fn new<C: Communicator>(comm: &C, cfg: Config) -> Result<Self> {
        durable::set_access(cfg.access);
        let lib: SimpleCommunicator = comm.duplicate();
        let mut receiver = None;
        if let Some(go) = &cfg.hold_until {
            // A rank that moves listens for its file from the rank it replaces, and offers the
            // port before the launch says it is ready (see `handoff`).
            let me = lib.rank() as u32;
            if cfg.handoff_ranks.contains(&me) {
                let offer = crate::hold::offer_path(go, me);
                let host = crate::config::hostname();
                let io = cfg.io_timeout;
                match Receiver::start(&offer, &host, Places::of(&cfg), me, io) {
                    Ok(r) => receiver = Some(r),
                    Err(e) => eprintln!(
                        "[ckpt rank {me}] cannot offer a handoff in {} ({e}); the file comes \
                         from the old node at the restore",
                        offer.display()
                    ),
                }
            }
            // Every rank of a launch started ahead has initialised MPI: rank 0 says so (`ckpt
            // migrate` asks for the checkpoint then), and all wait for the release.
            let label = || {
                (
                    "startup".into(),
                    "the readiness of a launch started ahead".into(),
                )
            };
            transport::all_ok(&lib, &Watch::of(&cfg), &label, true);
            if lib.rank() == 0 {
                let ready = crate::hold::ready_path(go);
                if let Err(e) = durable::write_atomic(&ready, b"") {
                    eprintln!("[ckpt rank 0] cannot write {}: {e}", ready.display());
                }
            }
            crate::hold::wait(go, cfg.timeout + cfg.io_timeout, comm.rank())?;
        }
        // The senders have exited: what was handed off is complete or never comes.
        let handed = receiver.and_then(|r| match r.finish(cfg.io_timeout) {
            Ok(h) => h,
            Err(e) => {
                eprintln!(
                    "[ckpt rank {}] {e}; the file comes from the old node",
                    lib.rank()
                );
                None
            }
        });
        let family = Family::new(comm.duplicate(), Watch::of(&cfg));
        let rank = lib.rank();
        let nranks = lib.size();
        // Both start-up collectives share one key (the root may be in the second while others
        // are in the first) and wait for rank 0's IO on the job directory, and for ranks that
        // arrive late after their own set-up: the IO deadline on top of the timeout.
        let watch = Watch::of(&cfg).after_io(Instant::now());
        let listing_label = || ("startup".into(), "the start-up epoch listing".into());
        let setup_label = || ("startup".into(), "the start-up handler vote".into());
        // Rank 0 prepares the job directory and lists committed (and quarantined) epochs;
        // everyone gets the same list, so every rank takes the same restart decision.
        let listing = if rank == 0 {
            startup_listing(&cfg)
        } else {
            Ok(manifest::Listing::default())
        };
        let listing = postcard::to_stdvec(&listing).unwrap_or_default();
        let listing = transport::bcast_bytes(&lib, &watch, &listing_label, 0, listing);
        let listing: std::result::Result<manifest::Listing, String> =
            postcard::from_bytes(&listing).map_err(|e| Error::Usage {
                rank,
                what: format!("corrupt epoch list from rank 0: {e}"),
            })?;
        let listing = listing.map_err(|e| Error::Io {
            rank: 0,
            op: "prepare job directory",
            path: cfg.job_dir.clone(),
            source: std::io::Error::other(e),
        })?;
        // Every rank handles the checkpoint signal before rank 0 says the job has started
        // (`ckpt run` starts ranks with it blocked, so an earlier one is held, not fatal) and
        // has its IO watchdog; a failure of either on any rank fails `new` on all of them.
        let io_error = |op, source| Error::Io {
            rank,
            op,
            path: cfg.job_dir.clone(),
            source,
        };
        // Each rank also holds its share of `control/ranks.lock` for its life, so no later
        // launch starts while it lives (see `storage/liveness.rs`).
        let setup = Triggers::new(cfg.signal, rank, &cfg.job_dir)
            .map_err(|e| io_error("install the checkpoint signal handler for", e))
            .and_then(|t| {
                IoWatchdog::new(rank, cfg.io_timeout, &cfg.job_dir)
                    .map(|w| (t, w))
                    .map_err(|e| io_error("start the IO watchdog thread for", e))
            })
            .and_then(|(t, w)| {
                // This node's directory of the job: created private, or ours and closed to
                // others (nothing planted in it can redirect a write).
                let local = cfg.local_dir.join(&cfg.job_id);
                durable::ensure_dir(&local, "node-local directory")
                    .map(|_| (t, w))
                    .map_err(|source| Error::Io {
                        rank,
                        op: "use",
                        path: local,
                        source,
                    })
            })
            .and_then(|(t, w)| {
                Presence::announce(
                    &cfg.job_dir,
                    cfg.restart_count,
                    rank,
                    &cfg.node,
                    PRESENCE_WAIT,
                )
                .map(|p| (t, w, p))
                .map_err(|e| io_error("record this rank's presence in", e))
            });
        if !transport::all_ok(&lib, &watch, &setup_label, setup.is_ok()) {
            return Err(setup.err().unwrap_or_else(|| Error::Usage {
                rank,
                what: "another rank could not install the checkpoint signal handler, start \
                       its IO watchdog or use its node-local directory"
                    .into(),
            }));
        }
        let (triggers, io, presence) = setup?;
        let _ = events::append(
            &cfg.job_dir,
            &Event::RankStarted {
                rank: rank as u32,
                pid: std::process::id(),
                node: cfg.node.clone(),
                launch: cfg.restart_count,
            },
        );
        if let Some(h) = &handed {
            let _ = events::append(
                &cfg.job_dir,
                &Event::HandedOff {
                    epoch: h.epoch,
                    rank: rank as u32,
                    node: cfg.node.clone(),
                    from: h.from.clone(),
                    bytes: h.bytes,
                    secs: h.secs,
                },
            );
        }
        // The placement (every rank's node, gathered once per launch) decides which background
        // levels this launch can have and who holds whose L2 copy.
        let (partners, grouping) = startup_levels(&lib, &watch, &cfg, rank)?;
        let places = Places::of(&cfg);
        let bg = Background::new(comm.duplicate(), partners, grouping, places);
        if rank == 0 {
            let _ = events::append(
                &cfg.job_dir,
                &Event::Started {
                    nranks: nranks as u32,
                    launch: cfg.restart_count,
                    unix_ms: crate::util::unix_ms(),
                },
            );
        }
        // Agreement rounds always run: a signal or a launcher request can come at any time.
        let agree = Agreement::new(cfg.every, cfg.agree, true, Instant::now());
        let reduce = MpiFlagReduce::new(&lib, Watch::of(&cfg));
        Ok(Checkpointer {
            next_epoch: listing.next_epoch(),
            committed_at_start: listing.committed,
            ctx: Ctx {
                lib,
                rank,
                nranks,
                cfg,
                io,
            },
            family,
            agree,
            reduce,
            triggers,
            restored: None,
            bg,
            write_back: None,
            handed,
            sending: None,
            _presence: presence,
            stopped: None,
            checkpoints: 0,
        })
    }

    /// This rank.
    pub fn rank(&self) -> i32 {
        self.ctx.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> i32 {
        self.ctx.nranks
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.ctx.cfg
    }

    /// The communicator for the application's own messages. It borrows the checkpointer, so
    /// it is used while the checkpointer lives:
    ///
    /// ```no_run
    /// # fn f(world: &ckpt::mpi::topology::SimpleCommunicator) -> ckpt::Result<()> {
    /// let ck = ckpt::Checkpointer::new(world, ckpt::Config::new("/tmp/job"))?;
    /// let comm = ck.comm();
    /// comm.send(0, 0, &[1u8])?;
    /// drop(ck);
    /// # Ok(()) }
    /// ```
    ///
    /// and never after it was dropped (the same code with the last two lines swapped):
    ///
    /// ```compile_fail,E0505
    /// # fn f(world: &ckpt::mpi::topology::SimpleCommunicator) -> ckpt::Result<()> {
    /// let ck = ckpt::Checkpointer::new(world, ckpt::Config::new("/tmp/job"))?;
    /// let comm = ck.comm();
    /// drop(ck);
    /// comm.send(0, 0, &[1u8])?;
    /// # Ok(()) }
    /// ```
    pub fn comm(&self) -> &Comm {
        self.family.root()
    }

    /// The communicator `h` made by [`Comm::dup`], [`Comm::split`] or [`Comm::cart`]. Like
    /// [`Checkpointer::comm`] it borrows the checkpointer; `h` itself does not, so keep the
    /// handle across `poll` and look the communicator up each time. Refuses a handle of
    /// another checkpointer.
    ///
    /// ```no_run
    /// # struct S;
    /// # impl ckpt::Protect for S { fn protect(&mut self, _: &mut ckpt::Regions<'_>) {} }
    /// # fn f(world: &ckpt::mpi::topology::SimpleCommunicator) -> ckpt::Result<()> {
    /// let mut ck = ckpt::Checkpointer::new(world, ckpt::Config::new("/tmp/job"))?;
    /// let row = ck.comm().split(0, 0)?;
    /// ck.sub(row)?.send(0, 0, &[1u8])?;
    /// ck.poll(&mut S)?;
    /// ck.sub(row)?.send(0, 0, &[2u8])?;
    /// # Ok(()) }
    /// ```
    ///
    /// A communicator held over `poll` is refused by the compiler:
    ///
    /// ```compile_fail,E0502
    /// # struct S;
    /// # impl ckpt::Protect for S { fn protect(&mut self, _: &mut ckpt::Regions<'_>) {} }
    /// # fn f(world: &ckpt::mpi::topology::SimpleCommunicator) -> ckpt::Result<()> {
    /// let mut ck = ckpt::Checkpointer::new(world, ckpt::Config::new("/tmp/job"))?;
    /// let row = ck.sub(ck.comm().split(0, 0)?)?;
    /// ck.poll(&mut S)?;
    /// row.send(0, 0, &[2u8])?;
    /// # Ok(()) }
    /// ```
    ///
    /// and so is one used after the checkpointer was dropped:
    ///
    /// ```compile_fail,E0505
    /// # fn f(world: &ckpt::mpi::topology::SimpleCommunicator) -> ckpt::Result<()> {
    /// let ck = ckpt::Checkpointer::new(world, ckpt::Config::new("/tmp/job"))?;
    /// let row = ck.sub(ck.comm().split(0, 0)?)?;
    /// drop(ck);
    /// row.send(0, 0, &[2u8])?;
    /// # Ok(()) }
    /// ```
    pub fn sub(&self, h: SubComm) -> Result<&Comm> {
        self.family.of(h)
    }

    /// Whether the job has a committed epoch to restart from (same answer on every rank).
    pub fn restarting(&self) -> bool {
        !self.committed_at_start.is_empty() && self.restored.is_none()
    }

    /// Restores `state` from the newest usable committed epoch (collective). Falls back to
    /// older epochs when a file is missing or corrupt, and reports each fallback on stderr.
    ///
    /// Call it at most once, before the first `poll` or `checkpoint`. Messages sent on
    /// [`Checkpointer::comm`] before it are fine: `restore` first makes a cut (as a checkpoint
    /// does), and those not yet received are delivered after it, before any message restored
    /// from the snapshot. Every `irecv` must be completed before it; the receives that were
    /// pending at the restored checkpoint are posted again, under the handles the application
    /// kept in its state (see [`crate::comm::RecvRequest`]).
    pub fn restore<P: Protect + ?Sized>(&mut self, state: &mut P) -> Result<Restored> {
        let rank = self.ctx.rank;
        if self.committed_at_start.is_empty() {
            return Err(Error::Usage {
                rank,
                what: format!(
                    "restore() called but {} holds no committed epoch (check restarting() first)",
                    self.ctx.cfg.job_dir.display()
                ),
            });
        }
        if self.restored.is_some() || self.agree.polls() > 0 || self.checkpoints > 0 {
            return Err(Error::Usage {
                rank,
                what: "restore() must be called once, before the first poll() or checkpoint()"
                    .into(),
            });
        }
        self.cut("restore", "the cut before restore()", None)?;
        // (Nothing runs in the background before the restore.)
        let handed = self.handed.take();
        let (mut r, unsynced) =
            restore::restore(&self.ctx, &self.committed_at_start, handed, state)?;
        self.write_back = unsynced.map(|file| WriteBack::start(r.epoch, file));
        self.family.restore(std::mem::take(&mut r.log), r.epoch)?;
        self.agree.resume_at(r.lib.polls);
        self.agree.checkpointed(Instant::now());
        self.restored = Some(r.epoch);
        Ok(r)
    }

    /// Call once per iteration on every rank. Checkpoints `state` when one is due (all ranks
    /// agree on the same poll); otherwise returns at once.
    ///
    /// Once it returned [`Poll::should_exit`], the job is stopping: later polls, checkpoints,
    /// sends and receives fail with an error saying so.
    ///
    /// An error for which [`Error::is_recoverable`] holds ([`Error::CommitFailed`]: the epoch
    /// was not committed, the same error on every rank) lets the job go on; abort on any
    /// other.
    pub fn poll<P: Protect + ?Sized>(&mut self, state: &mut P) -> Result<Poll> {
        if let Some(why) = &self.stopped {
            return Err(Error::Usage {
                rank: self.ctx.rank,
                what: why.clone(),
            });
        }
        let fault = self.ctx.cfg.active_fault();
        maybe_die(fault, self.ctx.rank, Phase::Poll, self.agree.polls() + 1);
        self.bg.progress(&self.ctx);
        self.family.reap_sends();
        let triggers = &mut self.triggers;
        let decision = self
            .agree
            .on_poll(Instant::now, || triggers.take(), &mut self.reduce);
        if !decision.checkpoint {
            if decision.exit {
                // The agreement stops without a checkpoint only when the last attempt
                // committed, at or after the poll that read the request: that epoch is the
                // newest one this run numbered, and it satisfies the request.
                let epoch = self.next_epoch.saturating_sub(1);
                // Its file goes to this rank's next node now, if it moves.
                if self.checkpoints > 0 && self.sending.is_none() {
                    self.sending = self.hand_off_written(epoch);
                }
                self.stop_after(epoch);
                self.triggers.committed(epoch, true);
            }
            return Ok(Poll {
                checkpoint: None,
                exit: decision.exit,
            });
        }
        let stats = match self.checkpoint_then(state, decision.exit) {
            Ok(s) => s,
            Err(e) => {
                // A failed checkpoint of an agreed exit: the job goes on (if the application
                // carries on after a recoverable error) and the exit is agreed again.
                self.agree.checkpoint_failed(decision, Instant::now());
                return Err(e);
            }
        };
        if decision.exit {
            self.stop_after(stats.epoch);
        }
        // Launcher requests are settled only now that an epoch satisfying them is committed.
        self.triggers.committed(stats.epoch, decision.exit);
        Ok(Poll {
            checkpoint: Some(stats),
            exit: decision.exit,
        })
    }

    /// Starts the handoff of this rank's file of `epoch`, written and committed already (see
    /// `handoff`).
    fn hand_off_written(&self, epoch: u64) -> Option<Sending> {
        let path = Places::of(&self.ctx.cfg).locate(Level::Local, epoch, self.ctx.rank as u32)?;
        commit::hand_off(&self.ctx, epoch, &path, |f| {
            let len = f.metadata().ok()?.len();
            Some(std::sync::Arc::new(WriteProgress::finished(len)))
        })
    }

    /// The ranks agreed to stop; `epoch` is the last one committed. Records it, and refuses
    /// every later poll, checkpoint, send and receive.
    fn stop_after(&mut self, epoch: u64) {
        // The last epoch gets its background levels before the job stops.
        self.bg.finish(&self.ctx);
        if self.ctx.rank == 0 {
            let _ = events::append(&self.ctx.cfg.job_dir, &Event::Stopping { epoch });
        }
        let why = format!(
            "the job is stopping: poll() returned should_exit() (its last epoch is {epoch}); \
             leave the loop without further sends, receives or polls"
        );
        self.family.stop(&why);
        self.stopped = Some(why);
    }

    /// Checkpoints `state` now (collective: every rank must call it at the same point).
    /// Messages in flight on [`Checkpointer::comm`] are drained into the snapshot first.
    pub fn checkpoint<P: Protect + ?Sized>(&mut self, state: &mut P) -> Result<EpochStats> {
        self.checkpoint_then(state, false)
    }

    /// [`Checkpointer::checkpoint`]; `last` when the launch ends after it (its file is then
    /// handed off to the rank's next node if a held rank there offers to take it).
    fn checkpoint_then<P: Protect + ?Sized>(
        &mut self,
        state: &mut P,
        last: bool,
    ) -> Result<EpochStats> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        if let Some(why) = &self.stopped {
            return Err(Error::Usage {
                rank: self.ctx.rank,
                what: why.clone(),
            });
        }
        // A file recovered at the restore is durable before any later epoch commits.
        if let Some(w) = self.write_back.take() {
            w.wait(&self.ctx);
        }
        self.agree.begin_checkpoint();
        // One epoch's levels are in flight at a time: with the policy `wait` the previous
        // epoch's complete first; with `skip`, if they still run on any rank (agreed at the
        // cut), this epoch gets L1 only.
        let previous = self.bg.epoch();
        let waited = match self.ctx.cfg.levels.busy {
            Busy::Wait => {
                let t = Instant::now();
                self.bg.finish(&self.ctx);
                previous.map(|p| (p, t.elapsed().as_secs_f64()))
            }
            Busy::Skip => None,
        };
        let t0 = Instant::now();
        let polls = self.agree.polls();
        let (_, busy) = self.cut(
            &format!("checkpoint-{epoch}"),
            &format!("the checkpoint of epoch {epoch} at poll {polls}"),
            Some(epoch),
        )?;
        let quiesce_secs = t0.elapsed().as_secs_f64();
        let lib = LibState {
            polls: self.agree.polls(),
            epoch,
        };
        let log = LogSection {
            bytes: self.family.encode_state(),
            messages: self.family.logged() as u64,
        };
        self.checkpoints += 1;
        let mut planned =
            self.ctx
                .cfg
                .levels
                .planned(epoch, self.bg.partner_ok(), self.bg.parity_ok());
        if let Some(previous) = busy {
            planned.clear();
            self.report_busy(epoch, previous, 0.0, true);
        }
        if let Some((previous, secs)) = waited.filter(|w| w.1 >= BUSY_REPORTED) {
            self.report_busy(epoch, previous, secs, false);
        }
        // With `skip`, the previous epoch's levels may still read its L1 files.
        let reading = self.bg.epoch();
        let levels = commit::Plan {
            planned: &planned,
            reading,
            cut_secs: quiesce_secs,
            hand_off: last.then_some(&mut self.sending),
        };
        let result = commit::checkpoint(&self.ctx, epoch, &lib, &log, levels, state);
        let result = result.map(|(stats, lens)| {
            self.agree.committed(Instant::now());
            self.bg.start(&self.ctx, epoch, planned, lens);
            stats
        });
        if result.is_err() {
            // A failed epoch restarts a time interval too: a full disk must not turn it into
            // a checkpoint attempt at every agreement round. It covers no exit request.
            self.agree.checkpointed(Instant::now());
        }
        let mut stats = result?;
        stats.quiesce_secs = quiesce_secs;
        Ok(stats)
    }

    /// Rank 0: records that epoch `epoch` met `previous`'s levels still running.
    fn report_busy(&self, epoch: u64, previous: u64, waited: f64, skipped: bool) {
        if self.ctx.rank == 0 {
            let _ = events::append(
                &self.ctx.cfg.job_dir,
                &Event::LevelsBusy {
                    epoch,
                    previous,
                    waited,
                    skipped,
                },
            );
        }
    }

    /// Brings communication to a consistent cut (`what` names it for people, `key` for the
    /// stall markers): one non-blocking all-to-all (waited for with the timeout, so a rank
    /// that does not come is named) carries each rank's bookmark for each peer (the next
    /// sequence number it would send) and whether it has a receive pending; then each rank
    /// takes every message numbered below its sender's bookmark out of MPI into its log.
    /// `epoch` is the checkpoint's, for fault injection at the drain.
    ///
    /// The exchange also carries whether each rank's background levels are still running
    /// (bit 1 of the flag): returns, with the drain's report, the epoch of those levels if any
    /// rank's are (the same answer on every rank; only the epoch a busy rank knows is sent).
    fn cut(
        &mut self,
        key: &str,
        what: &str,
        epoch: Option<u64>,
    ) -> Result<(DrainReport, Option<u64>)> {
        let ctx = &self.ctx;
        // Receives may be pending at a checkpoint (they go into the snapshot), not at the
        // restore cut (the snapshot's own pending receives take their place).
        let pending = if epoch.is_none() {
            self.family.pending_requests()
        } else {
            Vec::new()
        };
        // Bit 0: a receive pending; bit 1: background levels running; above: their epoch.
        let flag = u64::from(!pending.is_empty()) | self.bg.epoch().map_or(0, |e| 2 | (e << 2));
        let ncomms = self.family.len() as u64;
        let send: Vec<u64> = self
            .family
            .root()
            .bookmark()
            .iter()
            .flat_map(|&s| [s, flag, ncomms])
            .collect();
        let mut recv = vec![0u64; send.len()];
        let watch = Watch::of(&ctx.cfg);
        mpi::request::scope(|scope| {
            let req = ctx
                .lib
                .immediate_all_to_all_into(scope, &send[..], &mut recv[..]);
            let label = || (key.to_owned(), what.to_owned());
            stall::wait_request(&ctx.lib, &watch, label, req);
        });
        let offenders: Vec<usize> = recv
            .chunks(3)
            .enumerate()
            .filter(|(_, c)| c[1] & 1 != 0)
            .map(|(r, _)| r)
            .collect();
        let busy = recv
            .chunks(3)
            .filter(|c| c[1] & 2 != 0)
            .map(|c| c[1] >> 2)
            .min();
        if !offenders.is_empty() {
            let mine = if pending.is_empty() {
                String::new()
            } else {
                format!(" (here: {})", pending.join(", "))
            };
            return Err(Error::Usage {
                rank: ctx.rank,
                what: format!(
                    "receives still pending at {what} on ranks {offenders:?}{mine}; complete \
                     every irecv with Comm::wait or Comm::test before restore()"
                ),
            });
        }
        let counts: Vec<u64> = recv.chunks(3).map(|c| c[2]).collect();
        if counts.iter().any(|&n| n != ncomms) {
            return Err(Error::Communicator {
                rank: ctx.rank,
                index: ncomms as usize,
                what: format!(
                    "at {what}, the ranks hold different numbers of communicators (by rank: \
                     {counts:?}): every rank must create the same communicators before it"
                ),
            });
        }
        let to_me: Vec<u64> = recv.chunks(3).map(|c| c[0]).collect();
        if let Some(e) = epoch {
            maybe_die(ctx.cfg.active_fault(), ctx.rank, Phase::Drain, e);
        }
        let report = self.family.drain_all(&ctx.lib, &watch, key, what, &to_me);
        Ok((report, busy))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // The newest epoch's background levels complete before the ranks go (every rank drops
        // its checkpointer at the same point of a job that ends normally).
        if !std::thread::panicking() {
            self.bg.finish(&self.ctx);
        }
        if let Some(w) = self.write_back.take() {
            w.wait(&self.ctx);
        }
        // The rank's file reaches its next node before the rank goes (the release of the
        // next launch waits for this rank's exit).
        if let Some(s) = self.sending.take() {
            if let Err(e) = s.wait(self.ctx.cfg.io_timeout) {
                eprintln!(
                    "[ckpt rank {}] {e}; its new node gets the file at the restore instead",
                    self.ctx.rank
                );
            }
        }
    }
}
