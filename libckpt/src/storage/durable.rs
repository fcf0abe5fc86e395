//! The commit order every durable write in ckpt follows: write a temporary file, fsync it,
//! rename it into place, fsync the directory. A reader that sees the final name sees the whole
//! file; a crash at any point leaves either the old state or the new one.
//!
//! The last step can fail after the rename took effect: the new name is then visible but may
//! not survive a crash of the machine or the storage. [`WriteError::NotDurable`] says exactly
//! that, so callers never report "not written" for a file readers already see.
//!
//! Directories are made durable the same way: [`create_dir_all`] fsyncs the parent of every
//! directory it creates, so a file made durable inside a new directory cannot be lost with the
//! directory's own entry.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written (`<name>.tmp` in the same directory,
/// so the rename stays within one file system).
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// How far a durable write got when it failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Nothing changed under the final name: writing, syncing or renaming the temporary file
    /// failed (the temporary file is removed).
    #[error("{0}")]
    NotWritten(#[source] io::Error),
    /// The file is in place under its final name (readers see it) but the fsync of its
    /// directory failed, so the new name may not survive a crash of the machine or storage.
    #[error("renamed into place, but the directory fsync failed: {0}")]
    NotDurable(#[source] io::Error),
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> io::Error {
        match e {
            WriteError::NotWritten(e) => e,
            WriteError::NotDurable(e) => io::Error::new(e.kind(), WriteError::NotDurable(e)),
        }
    }
}

/// Renames `tmp` to `path` and fsyncs the directory holding them.
pub fn rename_durable(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    fsync_dir(parent_of(path))
}

/// Writes `bytes` to `path` atomically and durably (temp, fsync, rename, fsync directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    Ok(write_atomic_with(path, bytes, fsync_dir)?)
}

/// [`write_atomic`] with the directory fsync supplied by the caller (fault injection and
/// tests), telling a failure before the rename from one after it.
pub fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    sync_dir: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), WriteError> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(WriteError::NotWritten(e));
    }
    sync_dir(parent_of(path)).map_err(WriteError::NotDurable)
}

/// Creates `dir` and any missing parents, fsyncing the parent of each directory it creates
/// (or finds created concurrently by another process), so the new entries are durable before
/// anything is written inside them. Directories that already existed cost one `stat`.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    create_dir_all_with(dir, &mut |p| fsync_dir(p))
}

/// [`create_dir_all`] with the fsync supplied by the caller (tests record it).
pub fn create_dir_all_with(
    dir: &Path,
    sync_dir: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    // The missing components, deepest first.
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", cur.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(cur),
            Err(e) => return Err(e),
        }
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Another rank of this node created it meanwhile: its entry may not be durable
            // yet, so sync the parent all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
        sync_dir(parent_of(d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!tmp_path(&p).exists());
    }

    #[test]
    fn a_failed_directory_fsync_is_told_from_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        let eio = |_: &Path| Err(io::Error::from_raw_os_error(libc::EIO));
        match write_atomic_with(&p, b"one", eio) {
            Err(WriteError::NotDurable(e)) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
            other => panic!("expected NotDurable, got {other:?}"),
        }
        // The rename happened: the file is visible under its final name.
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let as_io = io::Error::from(write_atomic_with(&p, b"two", eio).unwrap_err());
        assert!(as_io.to_string().contains("renamed into place"), "{as_io}");
        // A write that cannot happen (no such directory) is NotWritten and leaves nothing.
        let missing = dir.path().join("nope").join("m");
        assert!(matches!(
            write_atomic_with(&missing, b"x", fsync_dir),
            Err(WriteError::NotWritten(_))
        ));
        assert!(!tmp_path(&missing).exists());
    }

    #[test]
    fn new_directories_are_synced_in_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::create_dir(base.join("a")).unwrap();
        let target = base.join("a").join("b").join("c");
        let mut synced = Vec::new();
        create_dir_all_with(&target, &mut |p| {
            synced.push(p.to_owned());
            fsync_dir(p)
        })
        .unwrap();
        assert!(target.is_dir());
        // `a` existed: only the entries of the new `b` (in `a`) and `c` (in `b`) are synced.
        assert_eq!(synced, vec![base.join("a"), base.join("a").join("b")]);
        // Existing directories cost no fsync.
        synced.clear();
        create_dir_all_with(&target, &mut |p| {
            synced.push(p.to_owned());
            Ok(())
        })
        .unwrap();
        assert!(synced.is_empty());
        // A failed fsync is an error, not a silent success.
        let eio = &mut |_: &Path| Err(io::Error::from_raw_os_error(libc::EIO));
        assert!(create_dir_all_with(&base.join("x"), eio).is_err());
        // A file in the way is an error.
        fs::write(base.join("f"), b"").unwrap();
        let err = create_dir_all(&base.join("f")).unwrap_err();
        assert!(
            err.to_string().contains("f exists and is not a directory"),
            "{err}"
        );
        let err = create_dir_all(&base.join("f").join("g")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err}");
    }
}
