//! Restart: find the newest committed epoch that every rank can restore, and restore it.
//!
//! Epochs are tried newest first. Each rank opens its own file (header, table and every
//! region checksum are verified while reading straight into the application's memory), then
//! all ranks vote; if any rank failed, every rank falls back to the previous epoch together
//! and rank 0 says which file failed and why. Restoring an older epoch overwrites every region
//! again, so a partly restored newer epoch never leaks into the result.
//!
//! An epoch some rank found damaged (see `shows_damage`) is quarantined by rank 0 before the
//! fallback ([`crate::manifest::Quarantine`]): later restarts never try it and retention does
//! not count it. When no epoch is usable, rank 0 logs `no_usable_epoch` so the launcher stops
//! instead of relaunching into the same failure.

use std::time::Instant;

use crate::commit::{LibState, LIB_REGION, LOG_REGION};
use crate::error::{Corruption, Error, Result};
use crate::events::{self, Event};
use crate::fault::{maybe_die, Phase};
use crate::format::{FileIdentity, RankFileReader, RegionKind};
use crate::handoff::Handed;
use crate::manifest::{self, Manifest};
use crate::protocol::msglog::LogSet;
use crate::recover;
use crate::region::{file_error, Protect, Regions, Site};
use crate::stall::Watch;
use crate::storage::copies::Unsynced;
use crate::transport;
use crate::Ctx;

/// What a successful restore brought back.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The epoch restored.
    pub epoch: u64,
    /// Newer committed epochs that could not be used, with the reasons.
    pub skipped: Vec<(u64, String)>,
    /// Bytes this rank read.
    pub bytes: u64,
    /// Seconds this rank spent restoring.
    pub read_secs: f64,
    pub(crate) lib: LibState,
    pub(crate) log: LogSet,
}

/// Restores the newest usable epoch among `candidates` (newest first). Collective. With it
/// comes this rank's file as recovered for the restore, when it was, to be made durable (see
/// [`recover::Recovery::unsynced`]). `handed` is this rank's file handed off to it before the
/// launch was released, if any: used if it is of the epoch restored.
pub(crate) fn restore<P: Protect + ?Sized>(
    ctx: &Ctx,
    candidates: &[u64],
    mut handed: Option<Handed>,
    state: &mut P,
) -> Result<(Restored, Option<Unsynced>)> {
    let mut skipped = Vec::new();
    for &epoch in candidates {
        let t0 = Instant::now();
        // A rank whose file is not on its node gets it from another level first.
        let m = {
            let _armed = ctx
                .io
                .arm("reading", &manifest::path(&ctx.cfg.job_dir, epoch), epoch);
            manifest::load(&ctx.cfg.job_dir, epoch).ok().filter(|m| {
                m.check_identity(&ctx.cfg.job_id).is_ok() && m.nranks == ctx.nranks as u32
            })
        };
        let census = Watch::of(&ctx.cfg).after_io(t0);
        let recovery = recover::recover(ctx, epoch, m.as_ref(), &mut handed, &census);
        let (lost, unsynced) = (recovery.lost, recovery.unsynced);
        let from = unsynced.as_ref().map(Unsynced::path);
        // A failing rank's error reaches rank 0, which reports every reason in one line.
        let local = restore_epoch(ctx, epoch, state, from).map_err(|e| match (e, &lost) {
            (
                Error::Io {
                    rank,
                    op,
                    path,
                    source,
                },
                Some(why),
            ) => Error::Io {
                rank,
                op,
                path,
                source: std::io::Error::new(source.kind(), format!("{source}; {why}")),
            },
            (e, _) => e,
        });
        maybe_die(ctx.cfg.active_fault(), ctx.rank, Phase::Restore, epoch);
        // Every collective of this epoch's restore waits for the others' reads (each under its
        // IO watchdog), and shares one key: whichever of them a rank waits in, a rank that
        // stopped anywhere in this epoch's restore is the one named.
        let watch = Watch::of(&ctx.cfg).after_io(t0);
        let key = || format!("restore-epoch-{epoch}");
        let vote = || (key(), format!("the restore vote of epoch {epoch}"));
        if transport::all_ok(&ctx.lib, &watch, &vote, local.is_ok()) {
            let (lib, log, bytes, m) = local?;
            let read_secs = t0.elapsed().as_secs_f64();
            let timing = || (key(), format!("the restore of epoch {epoch} (read times)"));
            let micros = (read_secs * 1e6) as u64;
            let slowest = transport::max_u64(&ctx.lib, &watch, &timing, micros) as f64 / 1e6;
            if ctx.rank == 0 {
                let _ = events::append(
                    &ctx.cfg.job_dir,
                    &Event::Restored {
                        epoch,
                        bytes: m.payload_bytes(),
                        read_secs: slowest,
                        unix_ms: crate::util::unix_ms(),
                    },
                );
            }
            let restored = Restored {
                epoch,
                skipped,
                bytes,
                read_secs,
                lib,
                log,
            };
            return Ok((restored, unsynced));
        }
        let reason = failure_vote(ctx, epoch, local.err());
        // The fallback follows more IO (a rank checking where its missing file was written,
        // rank 0 writing a quarantine record), each under its IO watchdog: its own deadline
        // allows for that IO from the moment this rank enters it.
        let fallback = Watch::of(&ctx.cfg).after_io(Instant::now());
        let why = || {
            (
                key(),
                format!("the fallback from epoch {epoch} (failure reasons)"),
            )
        };
        let reasons = transport::gather_bytes(&ctx.lib, &fallback, &why, 0, &reason);
        let joined = match reasons {
            Some(all) => {
                let joined = report_unusable(ctx, epoch, candidates, all);
                if candidates.last() == Some(&epoch) {
                    // Logged before the broadcast releases the other ranks: once they return
                    // the error, the application may abort the job at once (killing rank 0),
                    // and the launcher must still learn that no epoch is usable.
                    let mut tried = skipped.clone();
                    tried.push((epoch, String::from_utf8_lossy(&joined).into_owned()));
                    report_no_usable(ctx, &tried);
                }
                joined
            }
            None => Vec::new(),
        };
        let joined = transport::bcast_bytes(&ctx.lib, &fallback, &why, 0, joined);
        skipped.push((epoch, String::from_utf8_lossy(&joined).into_owned()));
    }
    if ctx.rank == 0 && candidates.is_empty() {
        report_no_usable(ctx, &skipped);
    }
    Err(Error::NoUsableEpoch { tried: skipped })
}

/// This rank's part of the vote on an unusable epoch: a damage flag byte (1 if its error
/// proves the epoch's data damaged or lost, see [`shows_damage`]) and the error's text; empty
/// if this rank had no error.
fn failure_vote(ctx: &Ctx, epoch: u64, err: Option<Error>) -> Vec<u8> {
    let Some(e) = err else { return Vec::new() };
    let mut vote = vec![u8::from(shows_damage(ctx, epoch, &e))];
    vote.extend_from_slice(e.to_string().as_bytes());
    vote
}

/// Whether `e`, met by this rank restoring `epoch`, proves the epoch damaged (see
/// [`proves_damage`]).
fn shows_damage(ctx: &Ctx, epoch: u64, e: &Error) -> bool {
    proves_damage(e, || {
        let path = manifest::path(&ctx.cfg.job_dir, epoch);
        let _armed = ctx.io.arm("reading", &path, epoch);
        manifest::load(&ctx.cfg.job_dir, epoch).is_ok_and(|m| {
            m.ranks
                .get(ctx.rank as usize)
                .is_some_and(|r| r.node == ctx.cfg.node)
        })
    })
}

/// Whether a restore error proves the epoch damaged: bytes that fail a check (checksum,
/// length, magic, identity of a rank file, a manifest's rank records), an unreadable manifest, or the rank's file missing on the node
/// that wrote it (`written_here`). Not damage, so not quarantined: a format version this build
/// cannot read (a newer build can), a transient or permission error, a file written on another
/// node (placement), regions or a rank count that differ from the program's (a different
/// program or launch, not bad data), a manifest of another job (not this job's data).
fn proves_damage(e: &Error, written_here: impl FnOnce() -> bool) -> bool {
    match e {
        // A manifest of another job is not this job's data, damaged or not.
        Error::Manifest {
            cause: Corruption::Foreign { field: "job", .. },
            ..
        } => false,
        Error::Corrupt { cause, .. } | Error::Manifest { cause, .. } => {
            !matches!(cause, Corruption::UnsupportedVersion { .. })
        }
        Error::Io { op, source, .. }
            if *op == "open checkpoint file" && source.kind() == std::io::ErrorKind::NotFound =>
        {
            written_here()
        }
        _ => false,
    }
}

/// Rank 0, once every rank voted on unusable `epoch` (`votes` from [`failure_vote`]):
/// quarantines the epoch if any rank found it damaged, logs [`Event::EpochUnusable`], says
/// which epoch it falls back to, and returns the joined reasons to broadcast.
fn report_unusable(ctx: &Ctx, epoch: u64, candidates: &[u64], votes: Vec<Vec<u8>>) -> Vec<u8> {
    let mut damaged = false;
    let mut list = Vec::new();
    for v in votes.iter().filter(|v| !v.is_empty()) {
        damaged |= v[0] == 1;
        list.push(String::from_utf8_lossy(&v[1..]).into_owned());
    }
    let quarantined = damaged && quarantine(ctx, epoch, &list);
    let _ = events::append(
        &ctx.cfg.job_dir,
        &Event::EpochUnusable {
            epoch,
            reasons: list.clone(),
            quarantined,
        },
    );
    let then = match candidates.iter().find(|&&e| e < epoch) {
        Some(e) => format!("falling back to epoch {e}"),
        None => "no older epoch left".into(),
    };
    let status = if quarantined { " (quarantined)" } else { "" };
    // Formatted first: one write, not interleaved with other ranks' output.
    let line = format!(
        "[ckpt] epoch {epoch} is unusable{status}, {then}: {}",
        list.join("; ")
    );
    eprintln!("{line}");
    list.join("; ").into_bytes()
}

/// Rank 0: records durably that `epoch` is damaged, so no later restart tries it or keeps it
/// in place of a good epoch. Returns whether the record was written (a failure is reported,
/// and the epoch is merely skipped this time).
fn quarantine(ctx: &Ctx, epoch: u64, reasons: &[String]) -> bool {
    let q = manifest::Quarantine {
        epoch,
        unix_ms: crate::util::unix_ms(),
        launch: ctx.cfg.restart_count,
        reasons: reasons.to_vec(),
    };
    let path = manifest::quarantine_path(&ctx.cfg.job_dir, epoch);
    let _armed = ctx.io.arm("writing", &path, epoch);
    match manifest::quarantine(&ctx.cfg.job_dir, &q) {
        Ok(_) => true,
        // In place (so in force) though maybe not durable: say so, and count it.
        Err(e) if path.exists() => {
            eprintln!("[ckpt rank 0] warning: epoch {epoch} is quarantined, but {e}");
            true
        }
        Err(e) => {
            eprintln!(
                "[ckpt rank 0] warning: epoch {epoch} is damaged but cannot be quarantined \
                 ({}: {e}); a later restart will try it again",
                path.display()
            );
            false
        }
    }
}

/// Rank 0, when no epoch could be restored: logs [`Event::NoUsableEpoch`] so the launcher
/// stops instead of relaunching into the same failure.
fn report_no_usable(ctx: &Ctx, tried: &[(u64, String)]) {
    let dir = manifest::dir(&ctx.cfg.job_dir);
    let tried_epoch = tried.first().map_or(0, |(e, _)| *e);
    let armed = ctx.io.arm("listing", &dir, tried_epoch);
    let quarantined = manifest::quarantined(&ctx.cfg.job_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| tried.iter().any(|(t, _)| t == e))
        .collect();
    drop(armed);
    let _ = events::append(
        &ctx.cfg.job_dir,
        &Event::NoUsableEpoch {
            tried: tried.to_vec(),
            quarantined,
        },
    );
}

/// This rank's part of restoring `epoch`: manifest, file checks, regions; its file read from
/// its L1 name, or from `from` (a recovered file not yet durable under that name).
fn restore_epoch<P: Protect + ?Sized>(
    ctx: &Ctx,
    epoch: u64,
    state: &mut P,
    from: Option<&std::path::Path>,
) -> Result<(LibState, LogSet, u64, Manifest)> {
    let armed = ctx
        .io
        .arm("reading", &manifest::path(&ctx.cfg.job_dir, epoch), epoch);
    let m = manifest::load(&ctx.cfg.job_dir, epoch)?;
    m.check_identity(&ctx.cfg.job_id)
        .map_err(|cause| Error::Manifest {
            path: manifest::path(&ctx.cfg.job_dir, epoch),
            cause,
        })?;
    if m.nranks != ctx.nranks as u32 || m.ranks.len() != m.nranks as usize {
        return Err(Error::Usage {
            rank: ctx.rank,
            what: format!(
                "epoch {epoch} was written by {} ranks, this job has {}",
                m.nranks, ctx.nranks
            ),
        });
    }
    let rec = &m.ranks[ctx.rank as usize];
    let path = from.map_or_else(|| ctx.cfg.local_dir.join(&rec.file), ToOwned::to_owned);
    let site = Site {
        rank: ctx.rank,
        epoch,
        path: &path,
    };
    let id = FileIdentity {
        job: ctx.cfg.job_id.clone(),
        epoch,
        rank: ctx.rank as u32,
        nranks: ctx.nranks as u32,
    };
    armed.now("reading", &path);
    let reader = RankFileReader::open(&path, &id).map_err(|e| {
        let err = file_error(e, site, "open checkpoint file");
        match err {
            Error::Io { source, .. } if rec.node != ctx.cfg.node => Error::Io {
                rank: ctx.rank,
                op: "open checkpoint file",
                path: path.clone(),
                source: std::io::Error::new(
                    source.kind(),
                    format!(
                        "{source} (the file was written on node {}, this rank runs on {}; no other level holds it yet)",
                        rec.node, ctx.cfg.node
                    ),
                ),
            },
            other => other,
        }
    })?;
    let h = reader.header();
    if h.file_len != rec.len || h.table_crc != rec.table_crc {
        return Err(Error::Corrupt {
            rank: ctx.rank,
            epoch,
            path,
            cause: Corruption::Foreign {
                field: "file",
                found: format!("{} bytes, table crc {:#010x}", h.file_len, h.table_crc),
                expected: format!(
                    "{} bytes, table crc {:#010x} (from the manifest)",
                    rec.len, rec.table_crc
                ),
            },
        });
    }
    let mut lib_bytes = Vec::new();
    let mut log_bytes = Vec::new();
    let bytes = {
        let mut regions = Regions::restoring(&reader, site);
        state.protect(&mut regions);
        regions.internal(LIB_REGION, RegionKind::LibState, &mut lib_bytes);
        regions.internal(LOG_REGION, RegionKind::MessageLog, &mut log_bytes);
        regions.finish()?
    };
    let lib: LibState = postcard::from_bytes(&lib_bytes).map_err(|e| Error::Corrupt {
        rank: ctx.rank,
        epoch,
        path: path.clone(),
        cause: Corruption::Malformed {
            what: "library state",
            detail: e.to_string(),
        },
    })?;
    let log = LogSet::decode(&log_bytes, ctx.nranks as usize).map_err(|e| Error::Corrupt {
        rank: ctx.rank,
        epoch,
        path: path.clone(),
        cause: Corruption::Malformed {
            what: "message log",
            detail: e.to_string(),
        },
    })?;
    Ok((lib, log, bytes, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corrupt(cause: Corruption) -> Error {
        Error::Corrupt {
            rank: 1,
            epoch: 6,
            path: PathBuf::from("f"),
            cause,
        }
    }

    fn io(op: &'static str, kind: std::io::ErrorKind) -> Error {
        Error::Io {
            rank: 1,
            op,
            path: PathBuf::from("f"),
            source: kind.into(),
        }
    }

    #[test]
    fn only_bad_or_lost_data_is_damage() {
        let here = || true;
        let checksum = Corruption::Checksum {
            what: "region u".into(),
            stored: 1,
            computed: 2,
        };
        assert!(proves_damage(&corrupt(checksum.clone()), here));
        let truncated = Corruption::Truncated {
            expected: 9,
            actual: 3,
        };
        assert!(proves_damage(&corrupt(truncated), here));
        let manifest = Error::Manifest {
            path: PathBuf::from("m"),
            cause: checksum,
        };
        assert!(proves_damage(&manifest, here));
        let foreign = Error::Manifest {
            path: PathBuf::from("m"),
            cause: Corruption::Foreign {
                field: "job",
                found: "a".into(),
                expected: "b".into(),
            },
        };
        assert!(!proves_damage(&foreign, here));
        let newer = Corruption::UnsupportedVersion {
            found: 2,
            supported: 1,
        };
        assert!(!proves_damage(&corrupt(newer), here));
        // A missing file is lost data only on the node that wrote it.
        let missing = io("open checkpoint file", std::io::ErrorKind::NotFound);
        assert!(proves_damage(&missing, || true));
        assert!(!proves_damage(&missing, || false));
        let denied = io("open checkpoint file", std::io::ErrorKind::PermissionDenied);
        assert!(!proves_damage(&denied, here));
        let no_manifest = Error::ManifestIo {
            path: PathBuf::from("m"),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert!(!proves_damage(&no_manifest, here));
        let region = Error::Region {
            rank: 1,
            epoch: 6,
            path: PathBuf::from("f"),
            region: "u".into(),
            cause: "size differs".into(),
        };
        assert!(!proves_damage(&region, here));
        let ranks = Error::Usage {
            rank: 1,
            what: "epoch 6 was written by 4 ranks, this job has 2".into(),
        };
        assert!(!proves_damage(&ranks, here));
    }
}
