//! Writing one epoch: every rank writes its file durably, votes, and rank 0 publishes the
//! manifest only if every vote is yes (two-phase commit), then old epochs are pruned.
//!
//! Every rank reaches the vote even when its own write failed, so a failure on one rank
//! becomes a clean "epoch not committed" on all of them instead of a hang.
//!
//! A job directory deleted or replaced under the job (see [`crate::identity::check`]) is found
//! by rank 0 before it publishes, and by every rank whose node-local files live inside the job
//! directory before it writes: then nothing is written into it (no manifest, no event, no rank
//! file) and every rank returns [`Error::JobDirGone`], which is not recoverable.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::fault::{maybe_die, Phase};
use crate::format::{FileIdentity, RankFileWriter, RegionKind, WriteProgress};
use crate::handoff::{self, Sending};
use crate::identity;
use crate::manifest::{self, Level, Manifest, RankRecord};
use crate::region::{Protect, Regions, Site};
use crate::retention::{self, KeepFrom};
use crate::stall::Watch;
use crate::storage::copies::Places;
use crate::storage::{durable, local};
use crate::transport;
use crate::Ctx;

/// Name of the library's own state section in every rank file.
pub(crate) const LIB_REGION: &str = "@ckpt/lib";
/// Name of the message log section (messages drained at quiescence, not yet received).
pub(crate) const LOG_REGION: &str = "@ckpt/msglog";

/// The library's per-rank state saved with each epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LibState {
    /// Polls made before this checkpoint.
    pub polls: u64,
    /// Epoch of this checkpoint.
    pub epoch: u64,
}

/// The message log as it goes into the snapshot.
pub(crate) struct LogSection {
    /// Encoded log.
    pub bytes: Vec<u8>,
    /// Messages in it.
    pub messages: u64,
}

#[derive(Serialize, Deserialize)]
struct Vote {
    result: std::result::Result<RankRecord, String>,
}

#[derive(Serialize, Deserialize)]
struct Decision {
    committed: bool,
    keep_from: KeepFrom,
    failures: Vec<(i32, String)>,
    /// What rank 0 found instead of the job's directory, if it was deleted or replaced.
    job_dir_gone: Option<String>,
    /// Every rank's file length, when committed (the background levels need them).
    lens: Vec<u64>,
}

/// What a committed epoch cost, as seen by this rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// The epoch.
    pub epoch: u64,
    /// Bytes this rank wrote (payload).
    pub bytes: u64,
    /// Seconds this rank spent writing and syncing its file.
    pub write_secs: f64,
    /// Seconds this rank spent in quiescence (waiting for all ranks, exchanging counts,
    /// draining in-flight messages) before writing.
    pub quiesce_secs: f64,
    /// Seconds from the start of the checkpoint (after quiescence) to the commit decision.
    pub total_secs: f64,
}

/// What the checkpointer knows of an epoch being committed besides its state.
pub(crate) struct Plan<'a> {
    /// The levels the epoch plans beyond L1.
    pub planned: &'a [Level],
    /// An earlier epoch whose background levels still run (policy `skip`): its L1 files and
    /// manifest, and those of later epochs, are not pruned.
    pub reading: Option<u64>,
    /// This rank's time in the cut before the commit (rank 0's goes into `committed`).
    pub cut_secs: f64,
    /// Set for the checkpoint that ends the launch: where the handoff of this rank's file to
    /// its next node goes, if a held rank there offers to take it (see `handoff`).
    pub hand_off: Option<&'a mut Option<Sending>>,
}

/// Writes epoch `epoch` on every rank and commits it. Collective.
pub(crate) fn checkpoint<P: Protect + ?Sized>(
    ctx: &Ctx,
    epoch: u64,
    lib: &LibState,
    msglog: &LogSection,
    mut levels: Plan<'_>,
    state: &mut P,
) -> Result<(EpochStats, Vec<u64>)> {
    let t0 = Instant::now();
    let fault = ctx.cfg.active_fault();
    maybe_die(fault, ctx.rank, Phase::BeforeWrite, epoch);
    let sending = levels.hand_off.take();
    let local = write_rank_file(ctx, epoch, lib, msglog, state, sending, t0);
    if local.is_ok() {
        maybe_die(fault, ctx.rank, Phase::AfterWrite, epoch);
    }
    let vote = Vote {
        result: local.as_ref().map(|r| r.clone()).map_err(|e| e.to_string()),
    };
    let vote_bytes = postcard::to_stdvec(&vote).unwrap_or_default();
    maybe_die(fault, ctx.rank, Phase::BeforeVote, epoch);
    // The vote waits for every rank's write (each under its IO watchdog), so its deadline
    // allows the IO time on top of the timeout, from the common start of the checkpoint. The
    // gather and the broadcast share a key: non-roots wait in the broadcast while the root
    // still waits in the gather.
    let watch = Watch::of(&ctx.cfg).after_io(t0);
    let key = || format!("vote-epoch-{epoch}");
    let vote_label = || (key(), format!("the commit vote of epoch {epoch}"));
    let votes = transport::gather_bytes(&ctx.lib, &watch, &vote_label, 0, &vote_bytes);

    let decision = match votes {
        Some(votes) => decide_and_publish(ctx, epoch, lib, &levels, votes, t0, fault),
        None => Vec::new(),
    };
    let decision_label = || (key(), format!("the commit decision of epoch {epoch}"));
    let decision = transport::bcast_bytes(&ctx.lib, &watch, &decision_label, 0, decision);
    let decision: Decision = postcard::from_bytes(&decision).map_err(|e| Error::Usage {
        rank: ctx.rank,
        what: format!("corrupt commit decision from rank 0: {e}"),
    })?;
    maybe_die(fault, ctx.rank, Phase::AfterCommit, epoch);
    if let Some(found) = decision.job_dir_gone {
        return Err(job_dir_gone(ctx, found));
    }
    if !decision.committed {
        return Err(Error::CommitFailed {
            epoch,
            failed: decision.failures,
        });
    }
    let record = local?;
    let job_local = ctx.cfg.local_dir.join(&ctx.cfg.job_id);
    let _armed = ctx.io.arm("pruning old epochs in", &job_local, epoch);
    // Never the L1 files that an earlier epoch's background levels still send or copy.
    let prune_before = levels.reading.map_or(decision.keep_from.local, |r| {
        r.min(decision.keep_from.local)
    });
    if let Err(e) = local::prune(&ctx.cfg.local_dir, &ctx.cfg.job_id, ctx.rank, prune_before) {
        eprintln!(
            "[ckpt rank {}] warning: cannot prune epochs before {} in {}: {e}",
            ctx.rank,
            prune_before,
            ctx.cfg.local_dir.display()
        );
    }
    // The copies of other levels this rank is responsible for, each level by its own window,
    // on a thread: removing large files can take the file system a while, and the manifests
    // no longer name them, so the application need not wait (a removal cut short by the end
    // of the process is finished by a later commit). Only epochs older than every level's newest are touched,
    // never the ones the background levels are writing.
    let places = Places::of(&ctx.cfg);
    let (rank, keep_from) = (ctx.rank, decision.keep_from);
    std::thread::spawn(move || {
        for level in [Level::Partner, Level::Parity, Level::Pfs] {
            let from = keep_from.of(level);
            if let Err(e) = places.remove_before(level, rank as u32, from) {
                eprintln!(
                    "[ckpt rank {rank}] warning: cannot prune {level:?} copies of epochs \
                     before {from}: {e}"
                );
            }
        }
    });
    let stats = EpochStats {
        epoch,
        bytes: record.payload,
        write_secs: record.write_secs,
        quiesce_secs: 0.0,
        total_secs: t0.elapsed().as_secs_f64(),
    };
    Ok((stats, decision.lens))
}

/// Starts streaming this rank's file of `epoch` at `path` to its next node, as `progress` says
/// it is written, if a held rank there offers to take it (see `handoff`).
pub(crate) fn hand_off(
    ctx: &Ctx,
    epoch: u64,
    path: &Path,
    progress: impl FnOnce(&File) -> Option<Arc<WriteProgress>>,
) -> Option<Sending> {
    let me = ctx.rank as u32;
    let go = crate::hold::release_path(&ctx.cfg.job_dir, ctx.cfg.restart_count.saturating_add(1));
    let offer = handoff::Offer::read(&crate::hold::offer_path(&go, me))?;
    // Its own handle for reading (a writer's is write-only).
    let file = durable::open_regular(path).ok()?;
    let src = handoff::Source {
        progress: progress(&file)?,
        file,
        epoch,
        rank: me,
        node: ctx.cfg.node.clone(),
    };
    Sending::start(offer, &crate::config::hostname(), src, ctx.cfg.io_timeout)
}

/// Writes this rank's file: temp name, regions, table, header, fsync, rename, fsync dirs.
fn write_rank_file<P: Protect + ?Sized>(
    ctx: &Ctx,
    epoch: u64,
    lib: &LibState,
    msglog: &LogSection,
    state: &mut P,
    sending: Option<&mut Option<Sending>>,
    t0: Instant,
) -> Result<RankRecord> {
    if ctx.cfg.local_dir.starts_with(&ctx.cfg.job_dir) {
        // Files under a deleted or replaced job directory would land in the new one.
        let _armed = ctx.io.arm("checking", &ctx.cfg.job_dir, epoch);
        check_job_dir(ctx).map_err(|found| job_dir_gone(ctx, found))?;
    }
    let rel = local::rank_file_rel(&ctx.cfg.job_id, epoch, ctx.rank);
    let path = ctx.cfg.local_dir.join(&rel);
    let io = |op, p: &std::path::Path| {
        let p = p.to_owned();
        move |source| Error::Io {
            rank: ctx.rank,
            op,
            path: p,
            source,
        }
    };
    let epoch_dir = path.parent().unwrap_or(&ctx.cfg.local_dir).to_owned();
    // Every IO of the file, up to the last directory fsync, is under one IO deadline.
    let armed = ctx.io.arm("writing", &path, epoch);
    durable::create_dir_all(&epoch_dir).map_err(io("create directory", &epoch_dir))?;
    let id = FileIdentity {
        job: ctx.cfg.job_id.clone(),
        epoch,
        rank: ctx.rank as u32,
        nranks: ctx.nranks as u32,
    };
    // A fresh temporary file (random name, O_EXCL|O_NOFOLLOW), or the recycled spare.
    let spare = local::spare_path(&ctx.cfg.local_dir, &ctx.cfg.job_id, ctx.rank);
    let (file, tmp, recycled) =
        match local::take_spare(&ctx.cfg.local_dir, &ctx.cfg.job_id, ctx.rank, &path) {
            Ok(Some((f, tmp))) => (f, tmp, true),
            Ok(None) => {
                let (f, tmp) = durable::create_tmp(&path).map_err(io("create", &path))?;
                (f, tmp, false)
            }
            Err(e) => return Err(io("recycle the spare file", &spare)(e)),
        };
    armed.now("writing", &tmp);
    let mut out = RankFileWriter::with_file(file, id, &ctx.cfg.node, recycled).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io("write", &tmp)(e)
    })?;
    if let Some(sending) = sending {
        *sending = hand_off(ctx, epoch, &tmp, |_| Some(out.follow()));
    }
    let fault = ctx.cfg.active_fault().copied();
    let rank = ctx.rank;
    let mut mid_write = |w: &mut RankFileWriter| {
        if fault.is_some_and(|f| f.matches(rank, Phase::MidWrite, epoch)) {
            // Make the half-written file real before dying, as a crash mid-write would leave it.
            let _ = w.flush();
            maybe_die(fault.as_ref(), rank, Phase::MidWrite, epoch);
        }
    };
    let site = Site {
        rank: ctx.rank,
        epoch,
        path: &tmp,
    };
    let saved = {
        let mut regions = Regions::saving(&mut out, site, Some(&mut mid_write));
        state.protect(&mut regions);
        let mut lib_bytes = postcard::to_stdvec(lib).unwrap_or_default();
        regions.internal(LIB_REGION, RegionKind::LibState, &mut lib_bytes);
        let mut log_bytes = msglog.bytes.clone();
        regions.internal(LOG_REGION, RegionKind::MessageLog, &mut log_bytes);
        regions.finish()
    };
    let result = saved
        .and_then(|_| out.finish().map_err(io("write and sync", &tmp)))
        .and_then(|s| inject_write_error(ctx, epoch, &tmp).map(|_| s));
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    armed.now("renaming", &tmp);
    durable::rename_durable(&tmp, &path).map_err(io("rename", &tmp))?;
    if let Some(job_local) = epoch_dir.parent() {
        armed.now("syncing the directory", job_local);
        durable::fsync_dir(job_local).map_err(io("fsync directory", job_local))?;
    }
    Ok(RankRecord {
        node: ctx.cfg.node.clone(),
        file: rel.to_string_lossy().into_owned(),
        len: summary.len,
        table_crc: summary.table_crc,
        payload: summary.payload,
        logged: msglog.messages,
        write_secs: t0.elapsed().as_secs_f64(),
    })
}

/// Whether the job directory is still this job's (see [`identity::check`]).
fn check_job_dir(ctx: &Ctx) -> std::result::Result<(), String> {
    identity::check(&ctx.cfg.job_dir, &ctx.cfg.job_id)
}

fn job_dir_gone(ctx: &Ctx, found: String) -> Error {
    Error::JobDirGone {
        rank: ctx.rank,
        dir: ctx.cfg.job_dir.clone(),
        job: ctx.cfg.job_id.clone(),
        found,
    }
}

/// Rank 0: counts the votes; if all are yes, publishes the manifest and prunes old manifests.
/// Returns the encoded decision to broadcast. A job directory that is no longer the job's
/// gets nothing: no manifest, no event.
fn decide_and_publish(
    ctx: &Ctx,
    epoch: u64,
    lib: &LibState,
    levels: &Plan<'_>,
    votes: Vec<Vec<u8>>,
    t0: Instant,
    fault: Option<&crate::fault::Fault>,
) -> Vec<u8> {
    let checked = {
        let _armed = ctx.io.arm("checking", &ctx.cfg.job_dir, epoch);
        check_job_dir(ctx)
    };
    if let Err(found) = checked {
        eprintln!(
            "[ckpt rank 0] epoch {epoch} not published: {}",
            job_dir_gone(ctx, found.clone())
        );
        let d = Decision {
            committed: false,
            keep_from: KeepFrom::default(),
            failures: Vec::new(),
            job_dir_gone: Some(found),
            lens: Vec::new(),
        };
        return postcard::to_stdvec(&d).unwrap_or_default();
    }
    let mut records = Vec::with_capacity(votes.len());
    let mut failures = Vec::new();
    for (rank, bytes) in votes.iter().enumerate() {
        match postcard::from_bytes::<Vote>(bytes) {
            Ok(Vote { result: Ok(r) }) => records.push(r),
            Ok(Vote { result: Err(e) }) => {
                // The error usually names the rank already; the decision names it once.
                let prefix = format!("rank {rank}: ");
                let e = e.strip_prefix(&prefix).map(str::to_owned).unwrap_or(e);
                failures.push((rank as i32, e))
            }
            Err(e) => failures.push((rank as i32, format!("unreadable vote: {e}"))),
        }
    }
    let mut keep_from = KeepFrom::default();
    let lens: Vec<u64> = records.iter().map(|r| r.len).collect();
    if failures.is_empty() {
        maybe_die(fault, ctx.rank, Phase::BeforeManifest, epoch);
        let write_secs = records.iter().map(|r| r.write_secs).fold(0.0, f64::max);
        let mut m = Manifest {
            job: ctx.cfg.job_id.clone(),
            epoch,
            nranks: ctx.nranks as u32,
            created_unix_ms: crate::util::unix_ms(),
            poll: lib.polls,
            launch: ctx.cfg.restart_count,
            levels: vec![Level::Local],
            ranks: records,
            total_secs: 0.0,
            copies: manifest::Copies {
                planned: levels.planned.to_vec(),
                ..Default::default()
            },
        };
        m.total_secs = t0.elapsed().as_secs_f64();
        let _armed = ctx.io.arm(
            "publishing",
            &manifest::path(&ctx.cfg.job_dir, epoch),
            epoch,
        );
        match publish_manifest(ctx, &m, fault) {
            Ok(not_durable) => {
                let _ = events::append(
                    &ctx.cfg.job_dir,
                    &Event::Committed {
                        epoch,
                        poll: lib.polls,
                        bytes: m.payload_bytes(),
                        logged: m.ranks.iter().map(|r| r.logged).sum(),
                        write_secs,
                        total_secs: t0.elapsed().as_secs_f64(),
                        cut_secs: levels.cut_secs,
                    },
                );
                match not_durable {
                    None => keep_from = prune_manifests(ctx, levels.reading),
                    Some(e) => report_not_durable(ctx, epoch, e),
                }
            }
            Err(e) => failures.push((0, e)),
        }
    }
    if !failures.is_empty() {
        let _ = events::append(
            &ctx.cfg.job_dir,
            &Event::CommitFailed {
                epoch,
                reasons: failures
                    .iter()
                    .map(|(r, e)| format!("rank {r}: {e}"))
                    .collect(),
            },
        );
    }
    let d = Decision {
        committed: failures.is_empty(),
        keep_from,
        failures,
        job_dir_gone: None,
        lens,
    };
    postcard::to_stdvec(&d).unwrap_or_default()
}

/// Applies retention per level to the manifests (see [`crate::retention`]); returns the
/// thresholds below which the ranks remove their copies (`0`s: keep all, after an error).
fn prune_manifests(ctx: &Ctx, reading: Option<u64>) -> KeepFrom {
    let keep = ctx.cfg.keep_per_level();
    retention::apply(&ctx.cfg.job_dir, &keep, reading).unwrap_or_else(|e| {
        eprintln!("[ckpt rank 0] warning: cannot apply retention: {e}");
        KeepFrom::default()
    })
}

/// Rank 0: publishes `m`. `Ok(None)`: committed and durable. `Ok(Some(e))`: committed (the
/// manifest is in place and restarts use it) but the fsync of its directory failed with `e`,
/// so it may not survive a crash of the machine or storage. `Err`: not committed (nothing
/// visible under the manifest's name), with the reason.
fn publish_manifest(
    ctx: &Ctx,
    m: &Manifest,
    fault: Option<&crate::fault::Fault>,
) -> std::result::Result<Option<std::io::Error>, String> {
    let sync = |dir: &std::path::Path| match crate::fault::injected_error(
        fault,
        ctx.rank,
        Phase::PublishFsync,
        m.epoch,
    ) {
        Some(e) => Err(e),
        None => durable::fsync_dir(dir),
    };
    match manifest::publish_with(&ctx.cfg.job_dir, m, sync) {
        Ok(manifest::Published::Durable(_)) => Ok(None),
        Ok(manifest::Published::NotDurable { source, .. }) => Ok(Some(source)),
        Err(e) => Err(format!(
            "cannot publish manifest {}: {e}",
            manifest::path(&ctx.cfg.job_dir, m.epoch).display()
        )),
    }
}

/// Rank 0: epoch `epoch` is committed but its manifest's directory fsync failed with `e`.
/// Says so on stderr and in the event log. Nothing is pruned: if the manifest were lost, the
/// older epochs are what a restart would use.
fn report_not_durable(ctx: &Ctx, epoch: u64, e: std::io::Error) {
    let path = manifest::path(&ctx.cfg.job_dir, epoch);
    eprintln!(
        "[ckpt rank 0] warning: epoch {epoch} is committed (its manifest {} is in place and \
         restarts use it) but may not be durable: fsync of {} failed: {e}; a crash of the \
         machine or storage could lose it, so older epochs are kept until a later epoch's \
         manifest is durable",
        path.display(),
        manifest::dir(&ctx.cfg.job_dir).display()
    );
    let _ = events::append(
        &ctx.cfg.job_dir,
        &Event::NotDurable {
            epoch,
            manifest: path,
            error: e.to_string(),
        },
    );
}

/// The error an injected `enospc` fault makes this rank's write of `tmp` return (the write
/// itself went through, so the temporary file exists and must be cleaned up like after a real
/// ENOSPC).
fn inject_write_error(ctx: &Ctx, epoch: u64, tmp: &std::path::Path) -> Result<()> {
    let fault = ctx.cfg.active_fault();
    match crate::fault::injected_error(fault, ctx.rank, Phase::Enospc, epoch) {
        Some(source) => Err(Error::Io {
            rank: ctx.rank,
            op: "write and sync",
            path: tmp.to_owned(),
            source,
        }),
        None => Ok(()),
    }
}
