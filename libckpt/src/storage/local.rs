//! Level 1: each rank's file on node-local storage.
//!
//! Layout: `<local_dir>/<job_id>/epoch-<E:08>/rank-<R:06>.ckpt`, keyed by the job's random id
//! ([`crate::identity`]), so jobs sharing a local directory never touch each other's files. The
//! manifest records the path relative to `<local_dir>`, so a restart on the same node finds it
//! whatever the base path.
//! Each rank creates and prunes only its own files; several ranks of a node share the epoch
//! directory.
//!
//! Pruned files are recycled: the first one a prune releases becomes the rank's *spare*
//! (`<local_dir>/<job_id>/spare/rank-<R:06>.ckpt`), which the next checkpoint renames to its
//! temporary name and overwrites in place. Overwriting blocks a file already owns avoids the
//! allocation cost of a new file: about 5x faster on this project's virtual disks (table 4 of
//! BENCHMARKS.md). A spare is never named by a manifest: its epoch's manifest was pruned first.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Relative path of a rank's file under the local base directory.
pub fn rank_file_rel(job_id: &str, epoch: u64, rank: i32) -> PathBuf {
    Path::new(job_id)
        .join(epoch_dir_name(epoch))
        .join(format!("rank-{rank:06}.ckpt"))
}

fn epoch_dir_name(epoch: u64) -> String {
    format!("epoch-{epoch:08}")
}

fn parse_epoch_dir(name: &str) -> Option<u64> {
    name.strip_prefix("epoch-")?.parse().ok()
}

/// Path of this rank's spare file.
pub fn spare_path(local_dir: &Path, job_id: &str, rank: i32) -> PathBuf {
    local_dir
        .join(job_id)
        .join("spare")
        .join(format!("rank-{rank:06}.ckpt"))
}

/// Moves this rank's spare file (if there is one) to `dest`; returns whether it did.
pub fn take_spare(local_dir: &Path, job_id: &str, rank: i32, dest: &Path) -> bool {
    fs::rename(spare_path(local_dir, job_id, rank), dest).is_ok()
}

/// Removes this rank's files of every epoch older than `keep_from`, and the epoch directories
/// that become empty; the first file released becomes the spare if there is none. Errors are
/// returned only for files that exist but cannot be removed.
pub fn prune(local_dir: &Path, job_id: &str, rank: i32, keep_from: u64) -> io::Result<Vec<u64>> {
    let job = local_dir.join(job_id);
    let entries = match fs::read_dir(&job) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut pruned = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(epoch) = entry.file_name().to_str().and_then(parse_epoch_dir) else {
            // `spare/` and anything else that is not an epoch directory.
            continue;
        };
        if epoch >= keep_from {
            continue;
        }
        let file = local_dir.join(rank_file_rel(job_id, epoch, rank));
        let spare = spare_path(local_dir, job_id, rank);
        if !spare.exists() && file.exists() {
            if let Some(dir) = spare.parent() {
                super::durable::create_dir_all(dir)?;
            }
            fs::rename(&file, &spare)?;
        }
        for p in [super::durable::tmp_path(&file), file] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Other ranks of this node may still have files here; only an empty directory goes.
        let _ = fs::remove_dir(entry.path());
        pruned.push(epoch);
    }
    pruned.sort_unstable();
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_only_own_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        for epoch in 1..=4 {
            for rank in 0..2 {
                let p = base.join(rank_file_rel("j", epoch, rank));
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, b"x").unwrap();
            }
        }
        let pruned = prune(base, "j", 0, 3).unwrap();
        assert_eq!(pruned, vec![1, 2]);
        assert!(!base.join(rank_file_rel("j", 1, 0)).exists());
        // One released file is kept as the spare, and taken by the next checkpoint.
        assert!(spare_path(base, "j", 0).exists());
        let dest = base.join("j").join("epoch-00000005");
        fs::create_dir_all(&dest).unwrap();
        assert!(take_spare(base, "j", 0, &dest.join("t")));
        assert!(!take_spare(base, "j", 0, &dest.join("t2")));
        assert!(base.join(rank_file_rel("j", 1, 1)).exists());
        assert!(base.join(rank_file_rel("j", 3, 0)).exists());
        prune(base, "j", 1, 3).unwrap();
        assert!(!base.join("j").join("epoch-00000001").exists());
        assert!(base.join("j").join("epoch-00000003").exists());
    }
}
