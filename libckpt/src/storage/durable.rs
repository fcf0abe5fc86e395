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
//!
//! Every open of a data file goes through [`open_regular`] or [`create_regular`]: opening a
//! FIFO (or a device) where a file should be would block for ever, so they open without
//! blocking and refuse anything but a regular file, naming what they found.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written (`<name>.tmp` in the same directory,
/// so the rename stays within one file system).
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Opens `path` for reading. Never blocks on what the path names: a FIFO, a device, a socket
/// or a symbolic link is an error whose message says "not a regular file" and what it is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    open_checked(path, &opts)
}

/// Opens `path` for writing, creating it if it does not exist, and truncating it if
/// `truncate`. Like [`open_regular`], it never blocks and refuses anything but a regular file
/// (checked before anything is truncated).
pub fn create_regular(path: &Path, truncate: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true);
    let file = open_checked(path, &opts)?;
    if truncate {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Opens with `O_NONBLOCK | O_NOFOLLOW` (a FIFO opens at once or fails with `ENXIO`, a link
/// fails with `ELOOP`), checks the type of what was opened, then clears `O_NONBLOCK`.
fn open_checked(path: &Path, opts: &OpenOptions) -> io::Result<File> {
    let mut opts = opts.clone();
    opts.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    let file = match opts.open(path) {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ELOOP)) => {
            // Say what is there rather than "No such device or address".
            return Err(match fs::symlink_metadata(path) {
                Ok(m) if !m.file_type().is_file() => not_regular(m.file_type()),
                _ => e,
            });
        }
        Err(e) => return Err(e),
    };
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    clear_nonblock(&file)?;
    Ok(file)
}

fn not_regular(kind: fs::FileType) -> io::Error {
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "of an unknown type"
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({what})"),
    )
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the duration of both calls;
    // F_GETFL/F_SETFL only read and set its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// fsyncs a directory, making renames and creations in it durable. Something else than a
/// directory at `dir` is an error, never a blocking open.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
        .open(dir)?
        .sync_all()
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
    // Something that is not a regular file at the temporary name is not ours to remove.
    let mut f = create_regular(&tmp, true).map_err(WriteError::NotWritten)?;
    let written = (|| {
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

/// Makes a FIFO at `p` (tests: something where a file should be that blocks a plain open).
#[cfg(test)]
pub(crate) fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        p.display()
    );
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

    /// Runs `open` on `path` in a thread; fails if it blocks, or opens, or says something else
    /// than "not a regular file (`what`)".
    fn refused(open: fn(&Path) -> io::Result<File>, path: &Path, what: &str) {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(open(&p).err().map(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("open of {what} blocked"));
        assert_eq!(got, Some(format!("not a regular file ({what})")));
    }

    /// Each FIFO open here would block for ever with a plain open (no writer, or no reader).
    #[test]
    fn fifos_links_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        refused(open_regular, &fifo, "a FIFO");
        refused(|p| create_regular(p, true), &fifo, "a FIFO");
        refused(|p| create_regular(p, false), &fifo, "a FIFO");
        let file = dir.path().join("file");
        fs::write(&file, b"data").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        refused(open_regular, &link, "a symbolic link");
        refused(|p| create_regular(p, true), &link, "a symbolic link");
        assert_eq!(fs::read(&file).unwrap(), b"data", "nothing truncated");
        refused(open_regular, dir.path(), "a directory");
        assert!(write_atomic(&fifo.with_file_name("m"), b"x").is_ok());
        mkfifo(&tmp_path(&dir.path().join("n")));
        let e = write_atomic(&dir.path().join("n"), b"x").unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a FIFO)");
        assert!(fsync_dir(&fifo).is_err());
    }

    #[test]
    fn regular_files_open_blocking_and_truncate_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"0123456789").unwrap();
        let f = create_regular(&p, false).unwrap();
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        drop(f);
        assert_eq!(fs::read(&p).unwrap().len(), 10);
        drop(create_regular(&p, true).unwrap());
        assert!(fs::read(&p).unwrap().is_empty());
        assert!(open_regular(&dir.path().join("missing")).is_err());
    }
}
