//! The storage seam: where each level keeps a rank's copy of an epoch, how a copy is stored
//! (streamed into a fresh temporary file, fsync'd, renamed, directories fsync'd) and removed.
//! Commit, restore, recovery, `ckpt verify` and `ckpt list` ask [`Places::locate`] instead of
//! building paths by hand.
//!
//! ```text
//! L1  <local_dir>/<job_id>/epoch-<E:08>/rank-<R:06>.ckpt          on the rank's node
//! L2  <local_dir>/<job_id>/partner/epoch-<E:08>/rank-<R:06>.ckpt  on the holder's node
//! L3  <local_dir>/<job_id>/parity/epoch-<E:08>/group-<G:06>-set-<P:04>.prty   on the holder's node
//! L4  <shared_dir>/<job_id>/epoch-<E:08>/rank-<R:06>.ckpt         shared by every node
//! ```
//!
//! A copy is byte-identical to the L1 file, so every level is checked by the same reader
//! (`format.rs`) against the manifest's length and table CRC.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::hints::Writeback;
use super::{durable, local};
use crate::manifest::Level;

/// Where the levels of one job keep their copies, as seen from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    /// Base of this node's local storage (L1, and the L2 copies this node holds).
    pub local_dir: PathBuf,
    /// Base of shared storage (L4).
    pub shared_dir: PathBuf,
    /// The job's id (every level keys its directory by it).
    pub job_id: String,
}

/// Directory of a rank's partner copies under the node-local base.
const PARTNER_DIR: &str = "partner";
/// Directory of the parity shards a node holds, under the node-local base.
const PARITY_DIR: &str = "parity";

impl Places {
    /// The places of the job a rank's configuration describes.
    pub fn of(cfg: &crate::Config) -> Places {
        Places {
            local_dir: cfg.local_dir.clone(),
            shared_dir: cfg.shared_dir(),
            job_id: cfg.job_id.clone(),
        }
    }

    /// Where `level` keeps rank `rank`'s copy of epoch `epoch` (for L2: on the holder's node;
    /// `None` for L3, whose parity files are not copies of one rank's file).
    pub fn locate(&self, level: Level, epoch: u64, rank: u32) -> Option<PathBuf> {
        let rel = local::rank_file_rel(&self.job_id, epoch, rank as i32);
        match level {
            Level::Local => Some(self.local_dir.join(rel)),
            Level::Partner => {
                let name = rel.file_name()?;
                Some(self.partner_epoch_dir(epoch).join(name))
            }
            Level::Pfs => Some(self.shared_dir.join(rel)),
            Level::Parity => None,
        }
    }

    /// Where a holder keeps its parity shard of set `set` of group `group` (L3), on its node.
    pub fn parity_path(&self, epoch: u64, group: u32, set: u32) -> PathBuf {
        self.local_dir
            .join(&self.job_id)
            .join(PARITY_DIR)
            .join(format!("epoch-{epoch:08}"))
            .join(format!("group-{group:06}-set-{set:04}.prty"))
    }

    fn partner_epoch_dir(&self, epoch: u64) -> PathBuf {
        self.local_dir
            .join(&self.job_id)
            .join(PARTNER_DIR)
            .join(format!("epoch-{epoch:08}"))
    }

    /// Removes the copies `level` keeps here of epochs older than `keep_from`: for L2 every
    /// partner copy this node holds (several holders of a node may do it, each removal of a
    /// file already gone is fine), for L4 rank `rank`'s files. L1 has its own pruning
    /// ([`local::prune`], which recycles a spare). Returns the epochs whose copies went.
    pub fn remove_before(&self, level: Level, rank: u32, keep_from: u64) -> io::Result<Vec<u64>> {
        match level {
            Level::Partner => remove_epochs(
                &self.local_dir.join(&self.job_id).join(PARTNER_DIR),
                keep_from,
                None,
            ),
            Level::Pfs => remove_epochs(&self.shared_dir.join(&self.job_id), keep_from, Some(rank)),
            Level::Local | Level::Parity => Ok(Vec::new()),
        }
    }
}

/// Removes, in `base`, the `epoch-E` directories' files (all, or those of `rank`) for every
/// `E < keep_from`, temporaries included, and the directories that become empty.
fn remove_epochs(base: &Path, keep_from: u64, rank: Option<u32>) -> io::Result<Vec<u64>> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(epoch) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if epoch >= keep_from || !entry.file_type()?.is_dir() {
            continue;
        }
        let mine = rank.map(|r| format!("rank-{r:06}.ckpt"));
        for f in fs::read_dir(entry.path())? {
            let f = f?;
            let name = f.file_name();
            let ours = match &mine {
                None => true,
                Some(m) => name.to_str() == Some(m) || durable::is_tmp_of(&name, m.as_ref()),
            };
            if ours {
                match fs::remove_file(f.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        // Other ranks' files may remain; only an empty directory goes.
        let _ = fs::remove_dir(entry.path());
        removed.push(epoch);
    }
    removed.sort_unstable();
    Ok(removed)
}

/// A copy being stored: bytes are appended to a fresh temporary file beside `dest`
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`, private mode); [`CopyWriter::finish`] makes it durable under
/// its final name. Dropped unfinished, the temporary file is removed.
pub struct CopyWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    written: u64,
    /// `None`: no writeback started while writing ([`CopyWriter::create_lazy`]).
    writeback: Option<Writeback>,
}

impl CopyWriter {
    /// Starts a copy to `dest`, creating its directories durably.
    pub fn create(dest: &Path) -> io::Result<CopyWriter> {
        if let Some(dir) = dest.parent() {
            durable::create_dir_all(dir)?;
        }
        let (file, tmp) = durable::create_tmp(dest)?;
        Ok(CopyWriter {
            file: Some(file),
            tmp,
            dest: dest.to_owned(),
            written: 0,
            writeback: Some(Writeback::default()),
        })
    }

    /// [`CopyWriter::create`] without writeback started as it grows: the bytes stay in the
    /// page cache until the copy is made durable (a file received while other files are being
    /// synced, to be read back soon).
    pub fn create_lazy(dest: &Path) -> io::Result<CopyWriter> {
        let mut w = CopyWriter::create(dest)?;
        w.writeback = None;
        Ok(w)
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("copy finished"))?;
        f.write_all(bytes)?;
        self.written += bytes.len() as u64;
        // The fsync in `finish` then waits only for the last few MiB.
        if let Some(wb) = &mut self.writeback {
            wb.wrote(f, self.written);
        }
        Ok(())
    }

    /// Writes `bytes` at the start of the copy, over what was appended there (a header
    /// written last).
    pub fn write_at_start(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("copy finished"))?
            .write_all_at(bytes, 0)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The final name.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Fsyncs the file, renames it to its final name and fsyncs the directory and its parent
    /// (the epoch directory may be new).
    pub fn finish(self) -> io::Result<PathBuf> {
        self.unsynced()?.finish()
    }

    /// Ends the writing without making the copy durable yet: its bytes are readable in the
    /// temporary file ([`Unsynced::path`]) until [`Unsynced::finish`] makes them durable under
    /// the final name (and dropping it removes them).
    pub fn unsynced(mut self) -> io::Result<Unsynced> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("copy finished"))?;
        Ok(Unsynced {
            file: Some(file),
            tmp: std::mem::take(&mut self.tmp),
            dest: std::mem::take(&mut self.dest),
        })
    }
}

impl Drop for CopyWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A copy written but not yet durable (see [`CopyWriter::unsynced`]). It never carries its
/// final name before it is durable: a crash leaves a temporary file, never a torn copy.
#[derive(Debug)]
pub struct Unsynced {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Unsynced {
    /// Where its bytes can be read now (the temporary file).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final name.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Fsyncs the file, renames it to its final name and fsyncs the directory and its parent
    /// (the epoch directory may be new).
    pub fn finish(mut self) -> io::Result<PathBuf> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("copy finished"))?;
        file.sync_all()?;
        drop(file);
        durable::rename_durable(&self.tmp, &self.dest)?;
        if let Some(parent) = self.dest.parent().and_then(Path::parent) {
            durable::fsync_dir(parent)?;
        }
        Ok(std::mem::take(&mut self.dest))
    }
}

impl Drop for Unsynced {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Copies the file `src` to `dest` durably (see [`CopyWriter`]) through one buffer of `chunk`
/// bytes; returns the bytes copied.
pub fn copy_file(src: &Path, dest: &Path, chunk: usize) -> io::Result<u64> {
    use std::io::Read;
    let mut from = durable::open_regular(src)?;
    let mut to = CopyWriter::create(dest)?;
    let mut buf = vec![0u8; chunk.max(4096)];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        to.write(&buf[..n])?;
    }
    let n = to.written();
    to.finish()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(dir: &Path) -> Places {
        Places {
            local_dir: dir.join("local"),
            shared_dir: dir.join("shared"),
            job_id: "j".into(),
        }
    }

    #[test]
    fn each_level_has_its_place() {
        let p = places(Path::new("/b"));
        let at = |l| p.locate(l, 3, 7).map(|p| p.display().to_string());
        assert_eq!(
            at(Level::Local).as_deref(),
            Some("/b/local/j/epoch-00000003/rank-000007.ckpt")
        );
        assert_eq!(
            at(Level::Partner).as_deref(),
            Some("/b/local/j/partner/epoch-00000003/rank-000007.ckpt")
        );
        assert_eq!(
            at(Level::Pfs).as_deref(),
            Some("/b/shared/j/epoch-00000003/rank-000007.ckpt")
        );
        assert_eq!(at(Level::Parity), None);
    }

    #[test]
    fn copies_are_durable_exact_and_leave_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = places(dir.path());
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        fs::write(&src, &data).unwrap();
        let dest = p.locate(Level::Pfs, 2, 1).unwrap();
        assert_eq!(copy_file(&src, &dest, 4096).unwrap(), data.len() as u64);
        assert_eq!(fs::read(&dest).unwrap(), data);
        // An unfinished copy leaves no file, temporary or final.
        let other = p.locate(Level::Partner, 2, 0).unwrap();
        let mut w = CopyWriter::create(&other).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        let left: Vec<_> = fs::read_dir(other.parent().unwrap()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        // A link at the destination's temporary name cannot be planted (random names), and a
        // finished copy replaces nothing but its own name.
        assert!(!other.exists());
    }

    #[test]
    fn removal_takes_old_epochs_of_the_level_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = places(dir.path());
        for epoch in 1..=3 {
            for rank in 0..2 {
                for level in [Level::Local, Level::Partner, Level::Pfs] {
                    let f = p.locate(level, epoch, rank).unwrap();
                    fs::create_dir_all(f.parent().unwrap()).unwrap();
                    fs::write(&f, b"x").unwrap();
                }
            }
        }
        assert_eq!(p.remove_before(Level::Pfs, 0, 3).unwrap(), vec![1, 2]);
        assert!(!p.locate(Level::Pfs, 1, 0).unwrap().exists());
        assert!(
            p.locate(Level::Pfs, 1, 1).unwrap().exists(),
            "another rank's L4 file"
        );
        assert!(p.locate(Level::Pfs, 3, 0).unwrap().exists());
        assert_eq!(p.remove_before(Level::Partner, 0, 2).unwrap(), vec![1]);
        assert!(!p.locate(Level::Partner, 1, 1).unwrap().exists());
        assert!(p.locate(Level::Partner, 2, 1).unwrap().exists());
        assert!(
            p.locate(Level::Local, 1, 0).unwrap().exists(),
            "L1 is not touched"
        );
    }

    #[test]
    fn an_unsynced_copy_is_read_from_its_temporary_file_and_named_only_when_durable() {
        let dir = tempfile::tempdir().unwrap();
        let p = places(dir.path());
        let dest = p.locate(Level::Local, 4, 2).unwrap();
        let mut w = CopyWriter::create(&dest).unwrap();
        w.write(b"the rank's bytes").unwrap();
        let u = w.unsynced().unwrap();
        assert_eq!(fs::read(u.path()).unwrap(), b"the rank's bytes");
        assert_ne!(u.path(), dest.as_path());
        assert!(!dest.exists(), "named before it is durable");
        assert_eq!(u.finish().unwrap(), dest);
        assert_eq!(fs::read(&dest).unwrap(), b"the rank's bytes");
        // Dropped before it is durable: nothing is left, temporary or final.
        let other = p.locate(Level::Local, 4, 3).unwrap();
        let mut w = CopyWriter::create(&other).unwrap();
        w.write(b"x").unwrap();
        let u = w.unsynced().unwrap();
        let tmp = u.path().to_owned();
        drop(u);
        assert!(!tmp.exists() && !other.exists());
    }
}
