//! `ckpt verify JOB_DIR [--local-dir DIR]`: applies restore's checks to every committed epoch
//! reachable from here, reading every byte: the job's identity (the id recorded in `job.json`,
//! as the ranks get it), each manifest's identity and rank records (one per rank, each naming
//! the file where that job's rank writes it), each rank file's header, table, identity and
//! region checksums, and that the file is the one the manifest names (length and table CRC).
//! Rank files are looked for where the ranks look: under `--local-dir`, else the local
//! directory recorded in `job.json`, else `$CKPT_LOCAL_DIR` or `$NODE_LOCAL_DIR`, else
//! `<job dir>/local/<node>` of the node that wrote each file. A job run with emulated nodes
//! (recorded in `job.json`) has them under `<base>/<node>`, base `--local-dir`, else the
//! recorded one, else `<job dir>/local`. Regions are checked in pieces
//! of at most 4 MiB, so memory stays bounded whatever their size.
//!
//! Prints one line per epoch, and one per damaged file naming it and the cause; exits 1 if
//! anything is damaged or missing. Quarantined epochs (found damaged by a restart, never
//! restored again) are listed as such with the reasons, not read again, and do not fail the
//! check: restarts no longer depend on them.

use std::path::{Path, PathBuf};

use ckpt::format::{FileIdentity, RankFileReader};
use ckpt::manifest::{self, Manifest};
use ckpt::util::human_bytes;

use crate::{jobdir, list, Outcome};

/// Where rank files are looked for: one base for every node, or `<job dir>/local/<node>`.
#[derive(Debug, Clone, PartialEq)]
enum LocalBase {
    Given(PathBuf),
    PerNode(PathBuf),
}

impl LocalBase {
    /// The base as the ranks of `dir` saw it (see the module doc).
    fn of(dir: &Path, given: Option<&Path>) -> LocalBase {
        let env = || {
            ckpt::env::get(ckpt::env::LOCAL_DIR)
                .or_else(|| ckpt::env::get(ckpt::env::NODE_LOCAL_DIR))
        };
        let given = given
            .map(Path::to_path_buf)
            .or_else(|| jobdir::recorded_local_dir(dir));
        if jobdir::recorded_emulation(dir).is_some() {
            return LocalBase::PerNode(given.unwrap_or_else(|| dir.join("local")));
        }
        match given.or_else(|| env().map(PathBuf::from)) {
            Some(base) => LocalBase::Given(base),
            None => LocalBase::PerNode(dir.join("local")),
        }
    }

    /// The base of the files written on `node`.
    fn for_node(&self, node: &str) -> PathBuf {
        match self {
            LocalBase::Given(base) => base.clone(),
            LocalBase::PerNode(local) => local.join(node),
        }
    }
}

/// Runs `ckpt verify`.
pub fn run(dir: &Path, local_dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let entries = list::entries(dir)?;
    if entries.is_empty() {
        outln!("no committed epochs in {}", dir.display());
        return Ok(Outcome::Success);
    }
    let newest = entries
        .iter()
        .find_map(|e| match (&e.quarantine, &e.manifest) {
            (None, Ok(m)) => Some(m),
            _ => None,
        });
    let job = jobdir::recorded_id(dir, newest).unwrap_or_else(|| ckpt::identity::legacy_id(dir));
    let base = LocalBase::of(dir, local_dir);
    match &base {
        LocalBase::Given(b) => outln!("job {job}: rank files under {}", b.display()),
        LocalBase::PerNode(l) => outln!("job {job}: rank files under {}/<node>", l.display()),
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
        if let Err(cause) = m.check_identity(&job) {
            let path = manifest::path(dir, epoch);
            outln!(
                "epoch {epoch}: DAMAGED: manifest {}: {cause}",
                path.display()
            );
            damaged += 1;
            continue;
        }
        let problems = check_epoch(&base, &job, &m);
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

/// The problems of one epoch's rank files, each naming the rank, the file and the cause.
fn check_epoch(base: &LocalBase, job: &str, m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    for (rank, rec) in m.ranks.iter().enumerate() {
        let path = base.for_node(&rec.node).join(&rec.file);
        let id = FileIdentity {
            job: job.to_owned(),
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
