//! The epoch manifest: the small record whose presence makes an epoch valid.
//!
//! Rank 0 publishes it only after every rank has made its file durable (two-phase commit), with
//! the commit order of [`crate::storage::durable`]. **Invariant:** an epoch is committed if and
//! only if `<job_dir>/manifests/epoch-<E:08>.manifest` exists under its final name; everything
//! else (rank files, temporary names) is a candidate until then.
//!
//! # Layout, manifest format version 1
//!
//! ```text
//! 0   8  magic "CKPTMANI"
//! 8   4  format version (1), little-endian
//! 12  4  body length, little-endian
//! 16  4  body CRC-32C, little-endian
//! 20  .. body: postcard encoding of [`Manifest`]
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Corruption, Error, Result};
use crate::storage::durable;

/// Magic bytes of a manifest.
pub const MAGIC: [u8; 8] = *b"CKPTMANI";
/// Manifest format version this build writes and reads.
pub const VERSION: u32 = 1;
const PREFIX: usize = 20;

/// A storage level an epoch's data reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// L1: each rank's file on its node's local storage.
    Local,
    /// L2: a copy on a partner rank of another node.
    Partner,
    /// L3: XOR parity across a group of ranks on distinct nodes.
    Xor,
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
    /// Levels the epoch's data reached.
    pub levels: Vec<Level>,
    /// Per-rank records, indexed by rank.
    pub ranks: Vec<RankRecord>,
    /// Seconds from the start of the checkpoint to the manifest being durable, on rank 0.
    pub total_secs: f64,
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
        if version != VERSION {
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
        postcard::from_bytes(body).map_err(|e| Corruption::Malformed {
            what: "manifest body",
            detail: e.to_string(),
        })
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

/// Committed epochs of a job (manifests present under their final name), newest first.
/// Temporary files and unrelated names are ignored. A missing directory means no epochs.
pub fn committed(job_dir: &Path) -> io::Result<Vec<u64>> {
    let entries = match fs::read_dir(dir(job_dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut epochs = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(e) = name
            .strip_prefix("epoch-")
            .and_then(|s| s.strip_suffix(".manifest"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            epochs.push(e);
        }
    }
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(epochs)
}

/// Reads and checks epoch `epoch`'s manifest.
pub fn load(job_dir: &Path, epoch: u64) -> Result<Manifest> {
    let p = path(job_dir, epoch);
    let bytes = read_regular(&p).map_err(|source| Error::Io {
        rank: -1,
        op: "read manifest",
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
    Ok(m)
}

/// Reads a whole file without ever blocking on a FIFO where it should be.
fn read_regular(p: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut durable::open_regular(p)?, &mut bytes)?;
    Ok(bytes)
}

/// Publishes `m`: after this returns, epoch `m.epoch` is committed.
pub fn publish(job_dir: &Path, m: &Manifest) -> io::Result<PathBuf> {
    let d = dir(job_dir);
    fs::create_dir_all(&d)?;
    let p = path(job_dir, m.epoch);
    durable::write_atomic(&p, &m.encode())?;
    Ok(p)
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

/// Removes manifests of epochs older than `keep_from` (manifests first, so that no manifest
/// ever names pruned files).
pub fn prune(job_dir: &Path, keep_from: u64) -> io::Result<Vec<u64>> {
    let mut pruned = Vec::new();
    for e in committed(job_dir)? {
        if e < keep_from {
            fs::remove_file(path(job_dir, e))?;
            pruned.push(e);
        }
    }
    if !pruned.is_empty() {
        durable::fsync_dir(&dir(job_dir))?;
    }
    pruned.sort_unstable();
    Ok(pruned)
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
        fs::write(durable::tmp_path(&path(dir.path(), 7)), b"partial").unwrap();
        assert_eq!(committed(dir.path()).unwrap(), Vec::<u64>::new());
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
}
