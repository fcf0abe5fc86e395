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

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::durable;

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

/// Takes this rank's spare file (if there is one) for writing `dest`: renamed to a fresh
/// temporary name for `dest` and opened for overwriting, without following a link, and only
/// if it is a regular file of ours (see [`durable::recycle_as_tmp`]). Returns the file and its
/// temporary name, or `None` without a spare.
pub fn take_spare(
    local_dir: &Path,
    job_id: &str,
    rank: i32,
    dest: &Path,
) -> io::Result<Option<(File, PathBuf)>> {
    durable::recycle_as_tmp(&spare_path(local_dir, job_id, rank), dest)
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
        // Only a regular file becomes the spare (it is checked again when taken).
        let is_file = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        if fs::symlink_metadata(&spare).is_err() && is_file(&file) {
            if let Some(dir) = spare.parent() {
                durable::create_dir_all(dir)?;
            }
            fs::rename(&file, &spare)?;
        }
        for p in own_tmps(&entry.path(), &file).into_iter().chain([file]) {
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

/// Temporary files left in `epoch_dir` by writes of `file` that did not finish.
fn own_tmps(epoch_dir: &Path, file: &Path) -> Vec<PathBuf> {
    let Some(name) = file.file_name() else {
        return Vec::new();
    };
    fs::read_dir(epoch_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| durable::is_tmp_of(&e.file_name(), name))
        .map(|e| e.path())
        .collect()
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
        assert!(take_spare(base, "j", 0, &dest.join("t")).unwrap().is_some());
        assert!(take_spare(base, "j", 0, &dest.join("t2"))
            .unwrap()
            .is_none());
        assert!(base.join(rank_file_rel("j", 1, 1)).exists());
        assert!(base.join(rank_file_rel("j", 3, 0)).exists());
        prune(base, "j", 1, 3).unwrap();
        assert!(!base.join("j").join("epoch-00000001").exists());
        assert!(base.join("j").join("epoch-00000003").exists());
    }

    /// A link planted as the spare is not written through (nor kept), and temporary files
    /// left by unfinished writes go with their epoch.
    #[test]
    fn a_spare_that_is_a_link_is_refused_and_leftovers_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let victim = base.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let spare = spare_path(base, "j", 0);
        fs::create_dir_all(spare.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &spare).unwrap();
        let dest = base.join(rank_file_rel("j", 2, 0));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let e = take_spare(base, "j", 0, &dest).unwrap_err().to_string();
        assert!(e.contains("not a regular file (a symbolic link)"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&spare).is_err());
        assert!(take_spare(base, "j", 0, &dest).unwrap().is_none());
        // A crash left a temporary file of rank 0 (and one of rank 1) in epoch 1.
        let old = base.join(rank_file_rel("j", 1, 0));
        fs::create_dir_all(old.parent().unwrap()).unwrap();
        let left = durable::tmp_name(&old);
        fs::write(&left, b"partial").unwrap();
        let other = durable::tmp_name(&base.join(rank_file_rel("j", 1, 1)));
        fs::write(&other, b"partial").unwrap();
        assert_eq!(prune(base, "j", 0, 2).unwrap(), vec![1]);
        assert!(!left.exists());
        assert!(other.exists());
    }
}
