//! The epoch manifest: the small record whose presence makes an epoch valid.
//!
//! Rank 0 publishes it only after every rank has made its file durable (two-phase commit), with
//! the commit order of [`crate::storage::durable`]. **Invariant:** an epoch is committed if and
//! only if `<job_dir>/manifests/epoch-<E:08>.manifest` exists under its final name and no
//! quarantine record `epoch-<E:08>.quarantined` sits beside it; everything else (rank files,
//! temporary names) is a candidate until then.
//!
//! # Quarantine
//!
//! An epoch that a restart found damaged (see [`Quarantine`]) is set aside by a durable record
//! next to its manifest, written by rank 0 before the ranks fall back past it. From then on it
//! is not committed: never restored again, never counted toward the retention count, and its
//! number is never reused ([`Listing::next_epoch`]). The record and the manifest are pruned
//! once the epoch is older than everything retention keeps. Deleting the record by hand puts
//! the epoch back.
//!
//! # Levels
//!
//! Rank 0 publishes the manifest when every rank's L1 file is durable; the levels that
//! complete in the background afterwards (L2 partner copies, L3 parity, L4 shared storage) are
//! added by republishing it (same name, atomically: temp, fsync, rename, fsync directory), so a
//! reader sees the epoch either without a level or with it complete on every rank. A level
//! whose copies are pruned is removed from the manifest before its files.
//!
//! # Layout, manifest format version 2
//!
//! ```text
//! 0   8  magic "CKPTMANI"
//! 8   4  format version (2; 1 is still read), little-endian
//! 12  4  body length, little-endian
//! 16  4  body CRC-32C, little-endian
//! 20  .. body: postcard encoding of [`Manifest`] (version 1: the same without `copies`)
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Corruption, Error, Result};
use crate::storage::{durable, local};

/// Magic bytes of a manifest.
pub const MAGIC: [u8; 8] = *b"CKPTMANI";
/// Manifest format version this build writes (it reads this one and version 1).
pub const VERSION: u32 = 2;
/// The oldest manifest format version this build reads.
pub const OLDEST_READ: u32 = 1;
const PREFIX: usize = 20;

/// A storage level an epoch's data reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// L1: each rank's file on its node's local storage.
    Local,
    /// L2: a copy on a partner rank of another node.
    Partner,
    /// L3: parity (XOR or Reed-Solomon) across a group of ranks on distinct nodes.
    Parity,
    /// L4: the shared (parallel) file system.
    Pfs,
}

/// What the manifest knows of one rank's part of the epoch. Its position in
/// [`Manifest::ranks`] is the rank; `node` is the placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    /// Node the rank ran on, where its L1 file lives.
    pub node: String,
    /// Path of the L1 file relative to the node-local base directory.
    pub file: String,
    /// File length in bytes.
    pub len: u64,
    /// CRC-32C of the file's region table (identifies this exact file).
    pub table_crc: u32,
    /// Payload bytes in the file.
    pub payload: u64,
    /// Messages in flight to this rank at the checkpoint, kept in its message log.
    pub logged: u64,
    /// Seconds this rank spent writing and syncing its file.
    pub write_secs: f64,
}

/// Where an epoch's copies beyond L1 are (manifest format version 2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Copies {
    /// Levels beyond L1 the level policy chose for this epoch, complete or not.
    pub planned: Vec<Level>,
    /// L2, once complete on every rank: for each rank, the rank whose node holds its partner
    /// copy (under that rank's node-local base, see `storage::partner`). Empty otherwise.
    pub partner: Vec<u32>,
    /// L3, once complete: the parity groups. Empty otherwise.
    pub parity: Vec<ParityGroup>,
}

/// One L3 group as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityGroup {
    /// The members' ranks.
    pub members: Vec<u32>,
    /// Parity shards per parity set (losses the group tolerates).
    pub k: u16,
}

/// The record of one committed epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Job identifier.
    pub job: String,
    /// Epoch number (1, 2, ...; increasing over the whole job, across restarts).
    pub epoch: u64,
    /// Ranks in the job.
    pub nranks: u32,
    /// When rank 0 published it, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Number of `poll` calls made before this checkpoint (the application's iteration).
    pub poll: u64,
    /// Launch (0 = first, 1 = after the first restart, ...) that wrote this epoch.
    pub launch: u32,
    /// Levels complete on every rank (L1 until its files are pruned).
    pub levels: Vec<Level>,
    /// Per-rank records, indexed by rank.
    pub ranks: Vec<RankRecord>,
    /// Seconds from the start of the checkpoint to the manifest being durable, on rank 0.
    pub total_secs: f64,
    /// Where the copies beyond L1 are (version 2; empty when read from version 1).
    pub copies: Copies,
}

/// The body of manifest format version 1: [`Manifest`] without `copies`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ManifestV1 {
    job: String,
    epoch: u64,
    nranks: u32,
    created_unix_ms: u64,
    poll: u64,
    launch: u32,
    levels: Vec<Level>,
    ranks: Vec<RankRecord>,
    total_secs: f64,
}

impl From<ManifestV1> for Manifest {
    fn from(v: ManifestV1) -> Manifest {
        Manifest {
            job: v.job,
            epoch: v.epoch,
            nranks: v.nranks,
            created_unix_ms: v.created_unix_ms,
            poll: v.poll,
            launch: v.launch,
            levels: v.levels,
            ranks: v.ranks,
            total_secs: v.total_secs,
            copies: Copies::default(),
        }
    }
}

impl Manifest {
    /// Payload bytes across all ranks.
    pub fn payload_bytes(&self) -> u64 {
        self.ranks.iter().map(|r| r.payload).sum()
    }

    /// File bytes across all ranks.
    pub fn file_bytes(&self) -> u64 {
        self.ranks.iter().map(|r| r.len).sum()
    }

    /// Checks that this is a manifest of job `job` with a record for every rank, each naming
    /// the file where that job's rank writes it ([`local::rank_file_rel`]): restore and
    /// `ckpt verify` read nothing else.
    pub fn check_identity(&self, job: &str) -> std::result::Result<(), Corruption> {
        if self.job != job {
            return Err(Corruption::Foreign {
                field: "job",
                found: self.job.clone(),
                expected: job.to_owned(),
            });
        }
        if self.ranks.len() != self.nranks as usize {
            return Err(Corruption::Malformed {
                what: "manifest",
                detail: format!(
                    "{} rank records for {} ranks{}",
                    self.ranks.len(),
                    self.nranks,
                    match self.ranks.len() < self.nranks as usize {
                        true => format!(" (none for rank {})", self.ranks.len()),
                        false => String::new(),
                    }
                ),
            });
        }
        for (rank, r) in self.ranks.iter().enumerate() {
            let expected = local::rank_file_rel(job, self.epoch, rank as i32);
            if Path::new(&r.file) != expected {
                return Err(Corruption::Malformed {
                    what: "rank record",
                    detail: format!(
                        "rank {rank}'s file is {:?}, expected {:?}",
                        r.file,
                        expected.display().to_string()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Encodes the manifest with its framing.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain owned data into a Vec cannot fail.
        let body = postcard::to_stdvec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(PREFIX + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks a framed manifest.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Manifest, Corruption> {
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(Corruption::BadMagic {
                what: "manifest",
                found: bytes[..bytes.len().min(8)].to_vec(),
            });
        }
        if bytes.len() < PREFIX {
            return Err(Corruption::Truncated {
                expected: PREFIX as u64,
                actual: bytes.len() as u64,
            });
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let version = u32_at(8);
        if !(OLDEST_READ..=VERSION).contains(&version) {
            return Err(Corruption::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let len = u32_at(12) as usize;
        if bytes.len() != PREFIX + len {
            return Err(Corruption::Truncated {
                expected: (PREFIX + len) as u64,
                actual: bytes.len() as u64,
            });
        }
        let body = &bytes[PREFIX..];
        let computed = crc32c::crc32c(body);
        let stored = u32_at(16);
        if computed != stored {
            return Err(Corruption::Checksum {
                what: "manifest body".into(),
                stored,
                computed,
            });
        }
        let malformed = |e: postcard::Error| Corruption::Malformed {
            what: "manifest body",
            detail: e.to_string(),
        };
        match version {
            1 => postcard::from_bytes::<ManifestV1>(body)
                .map(Manifest::from)
                .map_err(malformed),
            _ => postcard::from_bytes(body).map_err(malformed),
        }
    }

    /// Whether `level` is complete for this epoch on every rank.
    pub fn has(&self, level: Level) -> bool {
        self.levels.contains(&level)
    }
}

/// Directory holding a job's manifests.
pub fn dir(job_dir: &Path) -> PathBuf {
    job_dir.join("manifests")
}

/// Path of epoch `epoch`'s manifest.
pub fn path(job_dir: &Path, epoch: u64) -> PathBuf {
    dir(job_dir).join(format!("epoch-{epoch:08}.manifest"))
}

/// Path of epoch `epoch`'s quarantine record.
pub fn quarantine_path(job_dir: &Path, epoch: u64) -> PathBuf {
    dir(job_dir).join(format!("epoch-{epoch:08}.quarantined"))
}

/// What the manifests directory holds, each list newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Committed epochs: a manifest under its final name and no quarantine record.
    pub committed: Vec<u64>,
    /// Quarantined epochs: a quarantine record (with or without its manifest).
    pub quarantined: Vec<u64>,
}

impl Listing {
    /// The number the next epoch written gets: above every committed and quarantined epoch, so
    /// a skipped epoch's number is never reused for different data.
    pub fn next_epoch(&self) -> u64 {
        let newest = self.committed.iter().chain(&self.quarantined).max();
        newest.map_or(1, |e| e + 1)
    }
}

/// Lists a job's manifests and quarantine records. Temporary files and unrelated names are
/// ignored. A missing directory means no epochs.
pub fn listing(job_dir: &Path) -> io::Result<Listing> {
    let entries = match fs::read_dir(dir(job_dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listing::default()),
        Err(e) => return Err(e),
    };
    let mut manifests = Vec::new();
    let mut quarantined = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((epoch, ext)) = name.strip_prefix("epoch-").and_then(|s| s.split_once('.')) else {
            continue;
        };
        let Ok(epoch) = epoch.parse::<u64>() else {
            continue;
        };
        match ext {
            "manifest" => manifests.push(epoch),
            "quarantined" => quarantined.push(epoch),
            _ => {}
        }
    }
    manifests.retain(|e| !quarantined.contains(e));
    manifests.sort_unstable_by(|a, b| b.cmp(a));
    quarantined.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Listing {
        committed: manifests,
        quarantined,
    })
}

/// Committed epochs of a job (manifests present under their final name, not quarantined),
/// newest first. A missing directory means no epochs.
pub fn committed(job_dir: &Path) -> io::Result<Vec<u64>> {
    Ok(listing(job_dir)?.committed)
}

/// Quarantined epochs of a job, newest first.
pub fn quarantined(job_dir: &Path) -> io::Result<Vec<u64>> {
    Ok(listing(job_dir)?.quarantined)
}

/// Why an epoch was set aside: a restart found its data damaged or lost (a checksum, length
/// or identity mismatch, an unreadable manifest, a rank file missing on the node that wrote
/// it). Stored as JSON in `manifests/epoch-<E:08>.quarantined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    /// The epoch.
    pub epoch: u64,
    /// When rank 0 quarantined it, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Launch (restart count) whose restore found the damage.
    pub launch: u32,
    /// What each failing rank found, naming its file.
    pub reasons: Vec<String>,
}

/// Records `q` durably (temp, fsync, rename, fsync directory): from then on its epoch is not
/// committed. Returns the record's path.
pub fn quarantine(job_dir: &Path, q: &Quarantine) -> io::Result<PathBuf> {
    let p = quarantine_path(job_dir, q.epoch);
    let mut text = serde_json::to_string_pretty(q).map_err(io::Error::other)?;
    text.push('\n');
    durable::write_atomic(&p, text.as_bytes())?;
    Ok(p)
}

/// Largest manifest (or quarantine record) read: far above what a job of 100,000 ranks
/// writes; anything larger is refused from its size, unread.
pub const MAX_BYTES: u64 = 16 << 20;

/// Reads epoch `epoch`'s quarantine record.
pub fn load_quarantine(job_dir: &Path, epoch: u64) -> io::Result<Quarantine> {
    let bytes = durable::read_capped(&quarantine_path(job_dir, epoch), MAX_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads and checks epoch `epoch`'s manifest.
pub fn load(job_dir: &Path, epoch: u64) -> Result<Manifest> {
    let p = path(job_dir, epoch);
    let bytes = durable::read_capped(&p, MAX_BYTES).map_err(|source| Error::ManifestIo {
        path: p.clone(),
        source,
    })?;
    let m = Manifest::decode(&bytes).map_err(|cause| Error::Manifest {
        path: p.clone(),
        cause,
    })?;
    if m.epoch != epoch {
        return Err(Error::Manifest {
            path: p,
            cause: Corruption::Foreign {
                field: "epoch",
                found: m.epoch.to_string(),
                expected: epoch.to_string(),
            },
        });
    }
    confined(&m).map_err(|detail| Error::Manifest {
        path: p,
        cause: Corruption::Malformed {
            what: "manifest body",
            detail,
        },
    })?;
    Ok(m)
}

/// Checks that the places `m` records stay inside the job's own directories: each rank's
/// node is one plain name (it names `local/<node>`) and each file a relative path of plain
/// names (under the node-local base): no absolute path, no `..` or `.`.
fn confined(m: &Manifest) -> std::result::Result<(), String> {
    use std::path::Component;
    for (rank, r) in m.ranks.iter().enumerate() {
        let file = Path::new(&r.file);
        let plain = |p: &Path| {
            !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
        };
        // `components` drops inner `.` and a trailing `/`: look at the raw parts too.
        let raw_ok = |s: &str| {
            s.split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
        };
        if !plain(file) || !raw_ok(&r.file) {
            return Err(format!(
                "rank {rank}'s file {:?} is not a relative path inside the job's node-local \
                 directory (refused, not opened)",
                r.file
            ));
        }
        if r.node.contains('/') || !plain(Path::new(&r.node)) || !raw_ok(&r.node) {
            return Err(format!(
                "rank {rank}'s node {:?} is not a plain name (refused, not opened)",
                r.node
            ));
        }
    }
    Ok(())
}

/// A published manifest: its epoch is committed either way.
#[derive(Debug)]
pub enum Published {
    /// The manifest is durable.
    Durable(PathBuf),
    /// The manifest is in place and readers use it, but the fsync of its directory failed:
    /// a crash of the machine or storage may lose it (the epochs before it are then used).
    NotDurable {
        /// The manifest.
        path: PathBuf,
        /// Why the directory fsync failed.
        source: io::Error,
    },
}

/// Publishes `m`. `Ok` means epoch `m.epoch` is committed (visible to every reader), durably
/// or not; `Err` means it is not (nothing visible under the manifest's name).
pub fn publish(job_dir: &Path, m: &Manifest) -> io::Result<Published> {
    publish_with(job_dir, m, durable::fsync_dir)
}

/// [`publish`] with the final directory fsync supplied by the caller (fault injection).
pub fn publish_with(
    job_dir: &Path,
    m: &Manifest,
    sync_dir: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<Published> {
    durable::create_dir_all(&dir(job_dir))?;
    let p = path(job_dir, m.epoch);
    match durable::write_atomic_with(&p, &m.encode(), sync_dir) {
        Ok(()) => Ok(Published::Durable(p)),
        Err(durable::WriteError::NotDurable(source)) => {
            Ok(Published::NotDurable { path: p, source })
        }
        Err(durable::WriteError::NotWritten(e)) => Err(e),
    }
}

/// The oldest epoch to keep so that `keep` committed epochs remain, given the committed epochs
/// newest first. Everything older may be pruned.
pub fn keep_from(committed_newest_first: &[u64], keep: usize) -> u64 {
    committed_newest_first
        .get(keep.max(1) - 1)
        .or(committed_newest_first.last())
        .copied()
        .unwrap_or(0)
}

/// Removes manifests and quarantine records of epochs older than `keep_from` (manifests
/// first, so that no manifest ever names pruned files; of a quarantined epoch the manifest
/// before the record, so that it never becomes committed again). Returns the epochs pruned.
pub fn prune(job_dir: &Path, keep_from: u64) -> io::Result<Vec<u64>> {
    let mut pruned = Vec::new();
    let listed = listing(job_dir)?;
    for e in listed.committed {
        if e < keep_from {
            fs::remove_file(path(job_dir, e))?;
            pruned.push(e);
        }
    }
    for e in listed.quarantined {
        if e < keep_from {
            remove_if_present(&path(job_dir, e))?;
            fs::remove_file(quarantine_path(job_dir, e))?;
            pruned.push(e);
        }
    }
    let leftovers = remove_old_tmps(job_dir, keep_from)?;
    if !pruned.is_empty() || leftovers {
        durable::fsync_dir(&dir(job_dir))?;
    }
    pruned.sort_unstable();
    Ok(pruned)
}

/// Serialises read-modify-republish cycles of manifests within a process (rank 0's
/// background levels add levels while its retention drops others).
static UPDATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Loads epoch `epoch`'s manifest, applies `f`, and republishes it atomically (temp, fsync,
/// rename, fsync directory), under a process-wide lock so two updates never lose each other's
/// change. Returns the manifest as published.
pub fn update(job_dir: &Path, epoch: u64, f: impl FnOnce(&mut Manifest)) -> Result<Manifest> {
    let _one_at_a_time = UPDATE.lock().unwrap_or_else(|p| p.into_inner());
    let mut m = load(job_dir, epoch)?;
    f(&mut m);
    publish(job_dir, &m).map_err(|source| Error::ManifestIo {
        path: path(job_dir, epoch),
        source,
    })?;
    Ok(m)
}

/// Removes epoch `epoch`'s manifest (nothing if it is gone) durably: from then on the epoch is
/// not committed.
pub fn remove(job_dir: &Path, epoch: u64) -> io::Result<()> {
    remove_if_present(&path(job_dir, epoch))?;
    durable::fsync_dir(&dir(job_dir))
}

/// Removes temporary files left by publications of epochs older than `keep_from` that did not
/// finish (a crash between create and rename); returns whether there were any.
fn remove_old_tmps(job_dir: &Path, keep_from: u64) -> io::Result<bool> {
    let mut removed = false;
    for entry in fs::read_dir(dir(job_dir))? {
        let name = entry?.file_name();
        let epoch = name
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.split_once('.'))
            .and_then(|(e, _)| e.parse::<u64>().ok());
        let Some(e) = epoch.filter(|&e| e < keep_from) else {
            continue;
        };
        let of = |p: PathBuf| p.file_name().is_some_and(|f| durable::is_tmp_of(&name, f));
        if of(path(job_dir, e)) || of(quarantine_path(job_dir, e)) {
            remove_if_present(&dir(job_dir).join(&name))?;
            removed = true;
        }
    }
    Ok(removed)
}

fn remove_if_present(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(epoch: u64, nranks: u32) -> Manifest {
        Manifest {
            job: "job-1".into(),
            epoch,
            nranks,
            created_unix_ms: 1_700_000_000_000,
            poll: 40,
            launch: 1,
            levels: vec![Level::Local],
            ranks: (0..nranks)
                .map(|r| RankRecord {
                    node: format!("n{}", r % 2),
                    file: format!("job-1/epoch-{epoch:08}/rank-{r:06}.ckpt"),
                    len: 8192 + r as u64,
                    table_crc: 0xdead_0000 + r,
                    payload: 4000,
                    logged: r as u64,
                    write_secs: 0.25,
                })
                .collect(),
            total_secs: 0.5,
            copies: Copies::default(),
        }
    }

    /// A manifest of format version 1 (without `copies`) is still read, with no copies.
    #[test]
    fn version_1_is_still_read() {
        let m = sample(4, 3);
        let v1 = ManifestV1 {
            job: m.job.clone(),
            epoch: m.epoch,
            nranks: m.nranks,
            created_unix_ms: m.created_unix_ms,
            poll: m.poll,
            launch: m.launch,
            levels: m.levels.clone(),
            ranks: m.ranks.clone(),
            total_secs: m.total_secs,
        };
        let body = postcard::to_stdvec(&v1).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        assert_eq!(Manifest::decode(&bytes), Ok(m.clone()));
        let mut v2 = m;
        v2.levels.push(Level::Partner);
        v2.copies.planned = vec![Level::Partner, Level::Pfs];
        v2.copies.partner = vec![1, 2, 0];
        v2.copies.parity = vec![ParityGroup {
            members: vec![0, 1, 2],
            k: 1,
        }];
        assert_eq!(Manifest::decode(&v2.encode()), Ok(v2.clone()));
        assert!(v2.has(Level::Partner) && !v2.has(Level::Pfs));
    }

    #[test]
    fn identity_is_the_job_id_every_rank_and_the_paths_of_that_job() {
        let m = sample(3, 4);
        assert_eq!(m.check_identity("job-1"), Ok(()));
        let err = |m: &Manifest| m.check_identity("job-1").unwrap_err().to_string();
        assert_eq!(
            m.check_identity("job-2").unwrap_err().to_string(),
            "belongs to job job-1, expected job-2"
        );
        let mut missing = m.clone();
        missing.ranks.pop();
        assert_eq!(
            err(&missing),
            "malformed manifest: 3 rank records for 4 ranks (none for rank 3)"
        );
        let mut extra = m.clone();
        extra.nranks = 3;
        assert_eq!(
            err(&extra),
            "malformed manifest: 4 rank records for 3 ranks"
        );
        for forged in [
            "/etc/shadow",
            "job-1/../../x",
            "job-2/epoch-00000003/rank-000001.ckpt",
        ] {
            let mut f = m.clone();
            f.ranks[1].file = forged.into();
            assert_eq!(
                err(&f),
                format!(
                    "malformed rank record: rank 1's file is {forged:?}, expected \
                     \"job-1/epoch-00000003/rank-000001.ckpt\""
                )
            );
        }
    }

    #[test]
    fn round_trip_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        for e in [1, 2, 3, 5] {
            publish(dir.path(), &sample(e, 4)).unwrap();
        }
        assert_eq!(committed(dir.path()).unwrap(), vec![5, 3, 2, 1]);
        assert_eq!(load(dir.path(), 3).unwrap(), sample(3, 4));
        assert_eq!(keep_from(&[5, 3, 2, 1], 2), 3);
        assert_eq!(keep_from(&[5], 2), 5);
        assert_eq!(prune(dir.path(), 3).unwrap(), vec![1, 2]);
        assert_eq!(committed(dir.path()).unwrap(), vec![5, 3]);
    }

    #[test]
    fn temporary_names_are_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(super::dir(dir.path())).unwrap();
        let left = durable::tmp_name(&path(dir.path(), 7));
        fs::write(&left, b"partial").unwrap();
        assert_eq!(committed(dir.path()).unwrap(), Vec::<u64>::new());
        // Left by a crash: removed once its epoch is older than everything kept.
        publish(dir.path(), &sample(8, 1)).unwrap();
        prune(dir.path(), 7).unwrap();
        assert!(left.exists());
        prune(dir.path(), 8).unwrap();
        assert!(!left.exists());
        assert_eq!(committed(dir.path()).unwrap(), vec![8]);
    }

    fn quarantine_epoch(dir: &Path, epoch: u64) {
        let q = Quarantine {
            epoch,
            unix_ms: 1,
            launch: 1,
            reasons: vec![format!("rank 1: epoch {epoch}: checksum mismatch")],
        };
        quarantine(dir, &q).unwrap();
        assert_eq!(load_quarantine(dir, epoch).unwrap(), q);
    }

    /// After a fallback from damaged epoch 6 to epoch 5, epoch 6 is neither committed nor
    /// counted toward the retention count, and its number is not reused.
    #[test]
    fn a_quarantined_epoch_is_not_committed_nor_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for e in [4, 5, 6] {
            publish(d, &sample(e, 2)).unwrap();
        }
        quarantine_epoch(d, 6);
        // A record being written is not a record yet.
        fs::write(durable::tmp_name(&quarantine_path(d, 5)), b"{").unwrap();
        let l = listing(d).unwrap();
        assert_eq!(
            (l.committed.as_slice(), l.quarantined.as_slice()),
            (&[5, 4][..], &[6][..])
        );
        assert_eq!(l.next_epoch(), 7);
        assert_eq!(committed(d).unwrap(), vec![5, 4]);
        // Epoch 7 commits; keeping 2 keeps 7 and 5, not 7 and 6.
        publish(d, &sample(7, 2)).unwrap();
        let keep = keep_from(&committed(d).unwrap(), 2);
        assert_eq!(keep, 5);
        assert_eq!(prune(d, keep).unwrap(), vec![4]);
        assert_eq!(committed(d).unwrap(), vec![7, 5]);
        assert_eq!(quarantined(d).unwrap(), vec![6]);
        // Epoch 8 commits: 5 goes, and with it the record of 6 (manifest first).
        publish(d, &sample(8, 2)).unwrap();
        let keep = keep_from(&committed(d).unwrap(), 2);
        assert_eq!(prune(d, keep).unwrap(), vec![5, 6]);
        assert!(!path(d, 6).exists() && !quarantine_path(d, 6).exists());
        assert_eq!(listing(d).unwrap().next_epoch(), 9);
    }

    #[test]
    fn a_quarantine_record_alone_still_reserves_its_number() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(super::dir(dir.path())).unwrap();
        quarantine_epoch(dir.path(), 3);
        let l = listing(dir.path()).unwrap();
        assert_eq!((l.committed.len(), l.quarantined.as_slice()), (0, &[3][..]));
        assert_eq!(l.next_epoch(), 4);
        assert_eq!(Listing::default().next_epoch(), 1);
    }

    #[test]
    fn a_publish_whose_directory_fsync_fails_is_visible_but_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let eio = |_: &Path| Err(io::Error::from_raw_os_error(libc::EIO));
        match publish_with(dir.path(), &sample(2, 1), eio).unwrap() {
            Published::NotDurable { path: p, source } => {
                assert_eq!(p, path(dir.path(), 2));
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("expected NotDurable, got {other:?}"),
        }
        assert_eq!(committed(dir.path()).unwrap(), vec![2]);
        assert!(matches!(
            publish(dir.path(), &sample(3, 1)).unwrap(),
            Published::Durable(_)
        ));
    }

    #[test]
    fn manifest_for_wrong_epoch_is_foreign() {
        let dir = tempfile::tempdir().unwrap();
        publish(dir.path(), &sample(2, 1)).unwrap();
        fs::rename(path(dir.path(), 2), path(dir.path(), 9)).unwrap();
        let err = load(dir.path(), 9).unwrap_err().to_string();
        assert!(
            err.contains("epoch-00000009.manifest") && err.contains("epoch 2"),
            "{err}"
        );
    }

    #[test]
    fn wrong_version_and_magic_are_named() {
        let mut bytes = sample(1, 2).encode();
        bytes[8] = 9;
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(Corruption::UnsupportedVersion { found: 9, .. })
        ));
        assert!(matches!(
            Manifest::decode(b"hello world, not a manifest"),
            Err(Corruption::BadMagic { .. })
        ));
    }

    proptest! {
        // Every single-bit flip and every truncation of an encoded manifest is detected.
        #[test]
        fn every_bit_flip_is_detected(nranks in 1u32..6, bit in 0usize..10_000) {
            let bytes = sample(3, nranks).encode();
            let bit = bit % (bytes.len() * 8);
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Manifest::decode(&bad).is_err());
        }

        #[test]
        fn every_truncation_is_detected(nranks in 1u32..6, cut in 0usize..10_000) {
            let bytes = sample(3, nranks).encode();
            let cut = cut % bytes.len();
            prop_assert!(Manifest::decode(&bytes[..cut]).is_err());
        }
    }

    /// A forged manifest naming a file outside the job's directories is refused at load,
    /// naming the manifest; an oversized one is refused unread.
    #[test]
    fn paths_outside_the_job_and_huge_manifests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases = [
            ("/etc/shadow", "n0", "file \"/etc/shadow\""),
            ("../../../etc/shadow", "n0", "file \"../../../etc/shadow\""),
            ("job-1/../../x", "n0", "file \"job-1/../../x\""),
            ("job-1/./x", "n0", "file \"job-1/./x\""),
            ("", "n0", "file \"\""),
            ("job-1/x", "..", "node \"..\""),
            ("job-1/x", "a/b", "node \"a/b\""),
        ];
        for (file, node, needle) in cases {
            let mut m = sample(3, 2);
            m.ranks[1].file = file.into();
            m.ranks[1].node = node.into();
            publish(d, &m).unwrap();
            let e = load(d, 3).unwrap_err().to_string();
            let p = path(d, 3).display().to_string();
            assert!(
                e.starts_with(&format!("manifest {p}: malformed manifest body: rank 1's")),
                "{e}"
            );
            assert!(e.contains(needle), "{e}");
        }
        let p = path(d, 3);
        fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
        let e = load(d, 3).unwrap_err().to_string();
        assert!(
            e.contains("1073741824 bytes, more than the 16777216 bytes allowed"),
            "{e}"
        );
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let e = load(d, 3).unwrap_err().to_string();
        assert!(e.contains("not a regular file (a symbolic link)"), "{e}");
    }
}
