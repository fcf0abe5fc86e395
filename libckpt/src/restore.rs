//! Restart: find the newest committed epoch that every rank can restore, and restore it.
//!
//! Epochs are tried newest first. Each rank opens its own file (header, table and every
//! region checksum are verified while reading straight into the application's memory), then
//! all ranks vote; if any rank failed, every rank falls back to the previous epoch together
//! and rank 0 says which file failed and why. Restoring an older epoch overwrites every region
//! again, so a partly restored newer epoch never leaks into the result.

use std::time::Instant;

use crate::commit::{LibState, LIB_REGION, LOG_REGION};
use crate::error::{Corruption, Error, Result};
use crate::events::{self, Event};
use crate::fault::{maybe_die, Phase};
use crate::format::{FileIdentity, RankFileReader, RegionKind};
use crate::manifest::{self, Manifest};
use crate::protocol::msglog::CommState;
use crate::region::{file_error, Protect, Regions, Site};
use crate::stall::Watch;
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
    pub(crate) log: CommState,
}

/// Restores the newest usable epoch among `candidates` (newest first). Collective.
pub(crate) fn restore<P: Protect + ?Sized>(
    ctx: &Ctx,
    candidates: &[u64],
    state: &mut P,
) -> Result<Restored> {
    let mut skipped = Vec::new();
    for &epoch in candidates {
        let t0 = Instant::now();
        // A failing rank's error reaches rank 0, which reports every reason in one line.
        let local = restore_epoch(ctx, epoch, state);
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
                    },
                );
            }
            return Ok(Restored {
                epoch,
                skipped,
                bytes,
                read_secs,
                lib,
                log,
            });
        }
        let reason = local.err().map(|e| e.to_string()).unwrap_or_default();
        let why = || {
            (
                key(),
                format!("the fallback from epoch {epoch} (failure reasons)"),
            )
        };
        let reasons = transport::gather_bytes(&ctx.lib, &watch, &why, 0, reason.as_bytes());
        let joined = match reasons {
            Some(all) => {
                let list: Vec<String> = all
                    .into_iter()
                    .filter(|r| !r.is_empty())
                    .map(|r| String::from_utf8_lossy(&r).into_owned())
                    .collect();
                let _ = events::append(
                    &ctx.cfg.job_dir,
                    &Event::EpochUnusable {
                        epoch,
                        reasons: list.clone(),
                    },
                );
                let next = candidates.iter().find(|&&e| e < epoch);
                let then = match next {
                    Some(e) => format!("falling back to epoch {e}"),
                    None => "no older epoch left".into(),
                };
                eprintln!(
                    "[ckpt] epoch {epoch} is unusable, {then}: {}",
                    list.join("; ")
                );
                list.join("; ").into_bytes()
            }
            None => Vec::new(),
        };
        let joined = transport::bcast_bytes(&ctx.lib, &watch, &why, 0, joined);
        skipped.push((epoch, String::from_utf8_lossy(&joined).into_owned()));
    }
    Err(Error::NoUsableEpoch { tried: skipped })
}

/// This rank's part of restoring `epoch`: manifest, file checks, regions.
fn restore_epoch<P: Protect + ?Sized>(
    ctx: &Ctx,
    epoch: u64,
    state: &mut P,
) -> Result<(LibState, CommState, u64, Manifest)> {
    let armed = ctx
        .io
        .arm("reading", &manifest::path(&ctx.cfg.job_dir, epoch), epoch);
    let m = manifest::load(&ctx.cfg.job_dir, epoch)?;
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
    let path = ctx.cfg.local_dir.join(&rec.file);
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
    let log = CommState::decode(&log_bytes, ctx.nranks as usize).map_err(|e| Error::Corrupt {
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
