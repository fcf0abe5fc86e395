//! `ckpt verify JOB_DIR [--local-dir DIR]`: reads every byte of every committed epoch that is
//! reachable from here and checks it: the manifest, each rank file's header, table and region
//! checksums, and that the file is the one the manifest names (length and table CRC). Prints
//! one line per epoch, and one per damaged file naming it and the cause; exits 1 if anything
//! is damaged or missing. Quarantined epochs (found damaged by a restart, never restored again)
//! are listed as such with the reasons, not read again, and do not fail the check: restarts
//! no longer depend on them.

use std::path::{Path, PathBuf};

use ckpt::format::{FileIdentity, RankFileReader};
use ckpt::manifest::Manifest;
use ckpt::util::human_bytes;

use crate::{list, Outcome};

/// Runs `ckpt verify`.
pub fn run(dir: &Path, local_dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let entries = list::entries(dir)?;
    if entries.is_empty() {
        outln!("no committed epochs in {}", dir.display());
        return Ok(Outcome::Success);
    }
    let mut damaged = 0;
    for entry in entries {
        let epoch = entry.epoch;
        if let Some(q) = &entry.quarantine {
            outln!(
                "epoch {epoch}: QUARANTINED (not verified; restarts skip it): {}",
                list::quarantine_note(q)
            );
            continue;
        }
        let m = match entry.manifest {
            Ok(m) => m,
            Err(e) => {
                outln!("epoch {epoch}: DAMAGED: {e}");
                damaged += 1;
                continue;
            }
        };
        let problems = check_epoch(dir, local_dir, &m);
        if problems.is_empty() {
            outln!(
                "epoch {epoch}: ok ({} ranks, {} verified)",
                m.nranks,
                human_bytes(m.payload_bytes())
            );
        } else {
            outln!(
                "epoch {epoch}: DAMAGED ({} of {} rank files)",
                problems.len(),
                m.nranks
            );
            for p in &problems {
                outln!("  {p}");
            }
            damaged += 1;
        }
    }
    Ok(if damaged == 0 {
        Outcome::Success
    } else {
        Outcome::JobFailed
    })
}

/// Where rank files of `node` live as seen from here.
fn local_base(dir: &Path, local_dir: Option<&Path>, node: &str) -> PathBuf {
    local_dir.map_or_else(|| dir.join("local").join(node), Path::to_path_buf)
}

/// The problems of one epoch's rank files, each naming the rank, the file and the cause.
fn check_epoch(dir: &Path, local_dir: Option<&Path>, m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    for (rank, rec) in m.ranks.iter().enumerate() {
        let path = local_base(dir, local_dir, &rec.node).join(&rec.file);
        let id = FileIdentity {
            job: m.job.clone(),
            epoch: m.epoch,
            rank: rank as u32,
            nranks: m.nranks,
        };
        let result = RankFileReader::open(&path, &id).and_then(|f| {
            let h = *f.header();
            if h.file_len != rec.len || h.table_crc != rec.table_crc {
                return Err(ckpt::Corruption::Foreign {
                    field: "file",
                    found: format!("{} bytes, table crc {:#010x}", h.file_len, h.table_crc),
                    expected: format!("{} bytes, table crc {:#010x}", rec.len, rec.table_crc),
                }
                .into());
            }
            f.verify_all()
        });
        if let Err(e) = result {
            problems.push(format!(
                "rank {rank} (node {}): {}: {e}",
                rec.node,
                path.display()
            ));
        }
    }
    problems
}
