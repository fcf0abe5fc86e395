//! The application's handle: [`Checkpointer`] ties configuration, agreement, commit and restore
//! together over two private duplicates of the application's communicator (one for the
//! application's own traffic through [`Comm`], one for the library's).

use std::fs;
use std::time::Instant;

use mpi::topology::{Communicator, SimpleCommunicator};

use crate::comm::Comm;
use crate::commit::{self, EpochStats, LibState};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::fault::{maybe_die, Phase};
use crate::manifest;
use crate::protocol::agree::Agreement;
use crate::region::Protect;
use crate::restore::{self, Restored};
use crate::stall::Watch;
use crate::transport::{self, MpiFlagReduce};
use crate::trigger::Triggers;
use crate::Ctx;

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

    /// Whether the application should stop now (after a checkpoint requested with exit).
    pub fn should_exit(&self) -> bool {
        self.exit
    }
}

/// Coordinated checkpoint/restart for one rank. Create it on every rank with the same
/// communicator; `poll`, `checkpoint` and `restore` are collective.
pub struct Checkpointer {
    ctx: Ctx,
    comm: Comm,
    agree: Agreement,
    reduce: MpiFlagReduce,
    triggers: Triggers,
    /// Committed epochs found at start-up, newest first (same on every rank).
    committed_at_start: Vec<u64>,
    next_epoch: u64,
    restored: Option<u64>,
}

impl Checkpointer {
    /// Sets up checkpointing for the ranks of `comm` (collective). Creates the job directory
    /// if needed and looks for committed epochs to restart from.
    pub fn new<C: Communicator>(comm: &C, cfg: Config) -> Result<Self> {
        let lib: SimpleCommunicator = comm.duplicate();
        let app = Comm::new(comm.duplicate());
        let rank = lib.rank();
        let nranks = lib.size();
        // Rank 0 prepares the job directory and lists committed epochs; everyone gets the
        // same list, so every rank takes the same restart decision.
        let listing = if rank == 0 {
            match fs::create_dir_all(&cfg.job_dir).and_then(|_| manifest::committed(&cfg.job_dir)) {
                Ok(epochs) => Ok(epochs),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Ok(Vec::new())
        };
        let listing =
            transport::bcast_bytes(&lib, 0, postcard::to_stdvec(&listing).unwrap_or_default());
        let listing: std::result::Result<Vec<u64>, String> = postcard::from_bytes(&listing)
            .map_err(|e| Error::Usage {
                rank,
                what: format!("corrupt epoch list from rank 0: {e}"),
            })?;
        let committed = listing.map_err(|e| Error::Io {
            rank: 0,
            op: "prepare job directory",
            path: cfg.job_dir.clone(),
            source: std::io::Error::other(e),
        })?;
        if rank == 0 {
            let _ = events::append(
                &cfg.job_dir,
                &Event::Started {
                    nranks: nranks as u32,
                    launch: cfg.restart_count,
                },
            );
        }
        let triggers =
            Triggers::new(cfg.signal, rank == 0, &cfg.job_dir).map_err(|source| Error::Io {
                rank,
                op: "install the checkpoint signal handler for",
                path: cfg.job_dir.clone(),
                source,
            })?;
        // Agreement rounds always run: a signal or a launcher request can come at any time.
        let agree = Agreement::new(cfg.every, cfg.agree_stride, true, Instant::now());
        let watch = Watch {
            job_dir: cfg.job_dir.clone(),
            timeout: cfg.timeout,
            launch: cfg.restart_count,
        };
        let reduce = MpiFlagReduce::new(&lib, watch);
        Ok(Checkpointer {
            next_epoch: committed.first().map_or(1, |e| e + 1),
            committed_at_start: committed,
            ctx: Ctx {
                lib,
                rank,
                nranks,
                cfg,
            },
            comm: app,
            agree,
            reduce,
            triggers,
            restored: None,
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

    /// The communicator for the application's own messages.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// Whether the job has a committed epoch to restart from (same answer on every rank).
    pub fn restarting(&self) -> bool {
        !self.committed_at_start.is_empty() && self.restored.is_none()
    }

    /// Restores `state` from the newest usable committed epoch (collective). Falls back to
    /// older epochs when a file is missing or corrupt, and reports each fallback on stderr.
    pub fn restore<P: Protect + ?Sized>(&mut self, state: &mut P) -> Result<Restored> {
        if self.committed_at_start.is_empty() {
            return Err(Error::Usage {
                rank: self.ctx.rank,
                what: format!(
                    "restore() called but {} holds no committed epoch (check restarting() first)",
                    self.ctx.cfg.job_dir.display()
                ),
            });
        }
        let r = restore::restore(&self.ctx, &self.committed_at_start, state)?;
        self.agree.resume_at(r.lib.polls);
        self.agree.checkpointed(Instant::now());
        self.restored = Some(r.epoch);
        Ok(r)
    }

    /// Call once per iteration on every rank. Checkpoints `state` when one is due (all ranks
    /// agree on the same poll); otherwise returns at once.
    pub fn poll<P: Protect + ?Sized>(&mut self, state: &mut P) -> Result<Poll> {
        let fault = self
            .ctx
            .cfg
            .fault
            .as_ref()
            .filter(|_| self.ctx.cfg.restart_count == 0);
        maybe_die(fault, self.ctx.rank, Phase::Poll, self.agree.polls() + 1);
        let triggers = &mut self.triggers;
        let decision = self
            .agree
            .on_poll(Instant::now, || triggers.take(), &mut self.reduce);
        if !decision.checkpoint {
            return Ok(Poll {
                checkpoint: None,
                exit: false,
            });
        }
        let stats = self.checkpoint(state)?;
        if decision.exit && self.ctx.rank == 0 {
            let _ = events::append(
                &self.ctx.cfg.job_dir,
                &Event::Stopping { epoch: stats.epoch },
            );
        }
        Ok(Poll {
            checkpoint: Some(stats),
            exit: decision.exit,
        })
    }

    /// Checkpoints `state` now (collective: every rank must call it at the same point).
    pub fn checkpoint<P: Protect + ?Sized>(&mut self, state: &mut P) -> Result<EpochStats> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let lib = LibState {
            polls: self.agree.polls(),
            epoch,
        };
        let stats = commit::checkpoint(&self.ctx, epoch, &lib, state)?;
        self.agree.checkpointed(Instant::now());
        Ok(stats)
    }
}
