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
//! Every open of a data file goes through this module: opening a FIFO (or a device) where a
//! file should be would block for ever, and a planted symbolic link would redirect the write,
//! so files are opened without blocking and without following a link, and anything but a
//! regular file is refused, naming what was found. Temporary files get a fresh random name and
//! are created with `O_CREAT|O_EXCL|O_NOFOLLOW` ([`create_tmp`]): nothing planted at a
//! predictable name is ever written through.
//!
//! **Private by default.** Every directory and file created here gets its mode set explicitly,
//! whatever the umask: `0700`/`0600`, or `0750`/`0640` for [`Access::Group`] (the process-wide
//! [`set_access`], from `CKPT_GROUP_ACCESS`). An existing directory ckpt keeps its data in must
//! be owned by the user and not writable by others ([`check_dir`]).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Who may read the files and directories ckpt creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// The owner only: directories `0700`, files `0600` (the default).
    #[default]
    Private,
    /// The owner, and the group reads: directories `0750`, files `0640`; existing directories
    /// may also be group-writable.
    Group,
}

impl Access {
    /// Parses the value of `CKPT_GROUP_ACCESS`: `1`/`yes`/`true` or `0`/`no`/`false`.
    pub fn parse(s: &str) -> Result<Access, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "yes" | "true" => Ok(Access::Group),
            "0" | "no" | "false" => Ok(Access::Private),
            _ => Err("expected 1 (group may read) or 0 (private)".into()),
        }
    }

    /// Mode of a new directory.
    pub fn dir_mode(self) -> u32 {
        match self {
            Access::Private => 0o700,
            Access::Group => 0o750,
        }
    }

    /// Mode of a new file.
    pub fn file_mode(self) -> u32 {
        match self {
            Access::Private => 0o600,
            Access::Group => 0o640,
        }
    }
}

static GROUP_ACCESS: AtomicBool = AtomicBool::new(false);

/// Sets the access of everything this process creates from now on (a process-wide policy:
/// the launcher sets it from its plan, a rank from its configuration).
pub fn set_access(access: Access) {
    GROUP_ACCESS.store(access == Access::Group, Ordering::Relaxed);
}

/// The access set by [`set_access`] ([`Access::Private`] unless changed).
pub fn access() -> Access {
    if GROUP_ACCESS.load(Ordering::Relaxed) {
        Access::Group
    } else {
        Access::Private
    }
}

/// A fresh temporary name for writing `path`: `<name>.<16 random hex digits>.tmp` in the same
/// directory (so the rename stays within one file system). Unpredictable, so nobody can plant
/// anything at it in advance.
pub fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{:016x}.tmp", random_u64()));
    path.with_file_name(name)
}

/// Whether `name` is a temporary name [`tmp_name`] gives for a file named `final_name`.
pub fn is_tmp_of(name: &OsStr, final_name: &OsStr) -> bool {
    let (Some(name), Some(final_name)) = (name.to_str(), final_name.to_str()) else {
        return false;
    };
    name.strip_prefix(final_name)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// 64 bits from the kernel's random source; if that fails, a mix of time, pid and a counter
/// (still unique in this process, and O_EXCL refuses anything already there).
fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom(2) writes at most `buf.len()` bytes into `buf`, which we own.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return u64::from_le_bytes(buf);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    (t ^ (u64::from(std::process::id()) << 32) ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Creates a new temporary file for writing `path` (see [`tmp_name`]) with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` and the mode of [`access`]; returns it and its name.
pub fn create_tmp(path: &Path) -> io::Result<(File, PathBuf)> {
    let mut tries = 0;
    loop {
        let tmp = tmp_name(path);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(access().file_mode())
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp);
        match opened {
            Ok(f) => {
                // Exactly this mode, whatever the umask.
                if let Err(e) = set_mode(&f, access().file_mode()) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                return Ok((f, tmp));
            }
            // Only a collision of random names (or something planted at one) gets here.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Renames the file at `spare` (a pruned file kept for recycling) to a fresh temporary name
/// for writing `path`, and opens it for overwriting in place. `Ok(None)`: there is no spare.
/// The spare must be a regular file owned by this user with no other link: a link or anything
/// else found there is removed (only the entry: nothing is followed) and is an error that
/// says what it was.
pub fn recycle_as_tmp(spare: &Path, path: &Path) -> io::Result<Option<(File, PathBuf)>> {
    let tmp = tmp_name(path);
    match fs::rename(spare, &tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let checked = create_regular(&tmp, false).and_then(|f| {
        let m = f.metadata()?;
        if m.uid() != euid() || m.nlink() != 1 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "owned by {} with {} links, not a file of ours to overwrite",
                    user_name(m.uid()),
                    m.nlink()
                ),
            ));
        }
        Ok(f)
    });
    if checked.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    checked.map(|f| Some((f, tmp)))
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
/// (checked before anything is truncated). A file it creates gets the mode of [`access`], and
/// so does an existing one of ours.
pub fn create_regular(path: &Path, truncate: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true);
    let file = open_created(path, &opts)?;
    if truncate {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Opens `path` for appending (creating it if needed), like [`create_regular`]: never blocks,
/// never follows a link, refuses anything but a regular file.
pub fn open_append(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    open_created(path, &opts)
}

/// [`open_checked`] for a file that may be created: sets the mode of [`access`] (a file of
/// ours whose mode differs, e.g. created under an older umask, gets it too).
fn open_created(path: &Path, opts: &OpenOptions) -> io::Result<File> {
    let mut opts = opts.clone();
    opts.mode(access().file_mode());
    let file = open_checked(path, &opts)?;
    let m = file.metadata()?;
    if m.uid() == euid() && m.mode() & 0o7777 != access().file_mode() {
        set_mode(&file, access().file_mode())?;
    }
    Ok(file)
}

/// Sets the permission bits of an open file or directory exactly (`fchmod`: the umask plays
/// no part). A set-group-ID bit on a directory (a site's shared group) is kept.
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    let m = file.metadata()?;
    let keep = if m.is_dir() {
        m.mode() & libc::S_ISGID
    } else {
        0
    };
    // SAFETY: fchmod(2) on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::fchmod(file.as_raw_fd(), (mode | keep) as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the whole of `path`, a regular file (see [`open_regular`]) of at most `cap` bytes:
/// a larger one is refused from its size, before anything is read.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    let too_big = |len: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {cap} bytes allowed (not read)"),
        )
    };
    if len > cap {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
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

/// Opens the directory `dir` itself (not what a link there points to).
fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(dir)
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// `name (uid N)`, or `uid N` when the user database has no name for it.
pub fn user_name(uid: u32) -> String {
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf` (of the length given), both ours and
    // alive for the call, and sets `found` to `pwd` or to null.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: on success `found` points at `pwd`, whose `pw_name` is a NUL-terminated string
    // inside `buf`, both still alive.
    let name = unsafe { std::ffi::CStr::from_ptr((*found).pw_name) };
    format!("{} (uid {uid})", name.to_string_lossy())
}

/// Refuses an existing directory that others could plant files or links in: `dir` (the
/// directory itself, or what a link of ours or root's there points to) must be owned by this
/// user and not writable by others, nor by the group unless [`access`] is [`Access::Group`];
/// its parent must not be writable by others unless it has the sticky bit (like `/tmp`), so
/// nobody else can replace `dir`. `what` names the directory in the message ("job directory").
pub fn check_dir(dir: &Path, what: &str) -> io::Result<()> {
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing {what} {}: {why}", dir.display()),
        )
    };
    let me = euid();
    let link = fs::symlink_metadata(dir)?;
    if link.file_type().is_symlink() && link.uid() != me && link.uid() != 0 {
        return Err(refuse(format!(
            "it is a symbolic link owned by {}",
            user_name(link.uid())
        )));
    }
    let m = fs::metadata(dir)?;
    if !m.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    let mode = m.mode() & 0o7777;
    let group_ok = access() == Access::Group;
    if m.uid() != me || mode & 0o002 != 0 || (mode & 0o020 != 0 && !group_ok) {
        return Err(refuse(format!(
            "owned by {} with mode {mode:04o}; it must be owned by you ({}) and not writable by \
             others{}",
            user_name(m.uid()),
            user_name(me),
            if group_ok {
                String::new()
            } else {
                format!(
                    " or the group (group-writable only with {}=1)",
                    crate::env::GROUP_ACCESS
                )
            }
        )));
    }
    let parent = parent_of(dir);
    if let Ok(p) = fs::metadata(parent) {
        if p.mode() & 0o002 != 0 && p.mode() & libc::S_ISVTX == 0 {
            return Err(refuse(format!(
                "its parent {} (mode {:04o}) is writable by others without the sticky bit, so \
                 anyone could replace it",
                parent.display(),
                p.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents, each private, see [`create_dir_all`]) or, if it exists,
/// checks it with [`check_dir`]: the way into a directory ckpt keeps its data in.
pub fn ensure_dir(dir: &Path, what: &str) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir_all(dir),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }?;
    check_dir(dir, what)
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
    let (mut f, tmp) = create_tmp(path).map_err(WriteError::NotWritten)?;
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
        match fs::DirBuilder::new().mode(access().dir_mode()).create(d) {
            // Exactly this mode, whatever the umask.
            Ok(()) => set_mode(&open_dir(d)?, access().dir_mode())?,
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
    use std::os::unix::fs::PermissionsExt;

    /// Tests that set the process-wide access or umask, or check modes, take this.
    static MODES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    use crate::util::isolated_test as isolated;

    fn modes() -> std::sync::MutexGuard<'static, ()> {
        MODES.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn umask(m: u32) -> u32 {
        // SAFETY: umask(2) only swaps the process's file mode creation mask.
        unsafe { libc::umask(m as libc::mode_t) as u32 }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["m"]);
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
        assert!(!missing.parent().unwrap().exists());
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
        // A FIFO at the old fixed temporary name is neither opened nor removed.
        mkfifo(&dir.path().join("n.tmp"));
        write_atomic(&dir.path().join("n"), b"x").unwrap();
        assert!(fs::symlink_metadata(dir.path().join("n.tmp"))
            .unwrap()
            .file_type()
            .is_fifo());
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

    /// Links planted at the names the old code used (`X.tmp`) and at the final name are not
    /// followed: their targets stay as they were.
    #[test]
    fn planted_links_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let m = dir.path().join("m");
        std::os::unix::fs::symlink(&victim, dir.path().join("m.tmp")).unwrap();
        write_atomic(&m, b"data").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&m).unwrap(), b"data");
        // A link at the final name is replaced by the rename, its target untouched.
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&victim, &l).unwrap();
        write_atomic(&l, b"data").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&l).unwrap().is_file());
        // Appends and creations refuse a link.
        let e = open_append(&dir.path().join("m.tmp")).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a symbolic link)");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        // Temporary names are fresh each time and recognised.
        let (a, b) = (tmp_name(&m), tmp_name(&m));
        assert_ne!(a, b);
        assert!(is_tmp_of(a.file_name().unwrap(), OsStr::new("m")));
        assert!(!is_tmp_of(OsStr::new("m.tmp"), OsStr::new("m")));
        assert!(!is_tmp_of(a.file_name().unwrap(), OsStr::new("n")));
    }

    #[test]
    fn a_spare_is_recycled_only_if_it_is_a_plain_file_of_ours() {
        let _g = modes();
        let dir = tempfile::tempdir().unwrap();
        let (spare, dest) = (dir.path().join("spare"), dir.path().join("f"));
        assert!(recycle_as_tmp(&spare, &dest).unwrap().is_none());
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &spare).unwrap();
        let e = recycle_as_tmp(&spare, &dest).unwrap_err().to_string();
        assert_eq!(e, "not a regular file (a symbolic link)");
        // A second name of the victim's file (a hard link) is not ours to overwrite either.
        fs::hard_link(&victim, &spare).unwrap();
        let e = recycle_as_tmp(&spare, &dest).unwrap_err().to_string();
        let me = user_name(euid());
        assert_eq!(
            e,
            format!("owned by {me} with 2 links, not a file of ours to overwrite")
        );
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        // Only the victim is left: the refused entries were removed, nothing else created.
        assert_eq!(names(dir.path()), ["victim"]);
        fs::write(&spare, b"old data").unwrap();
        fs::set_permissions(&spare, fs::Permissions::from_mode(0o644)).unwrap();
        let (mut f, tmp) = recycle_as_tmp(&spare, &dest).unwrap().unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(fs::read(&tmp).unwrap(), b"new data");
        assert_eq!(
            mode_of(&tmp),
            0o600,
            "a recycled file gets the private mode"
        );
        assert!(!spare.exists());
    }

    #[test]
    fn reads_are_capped_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        File::create(&big).unwrap().set_len(1 << 30).unwrap(); // sparse: costs no space
        let t0 = std::time::Instant::now();
        let e = read_capped(&big, 16 << 20).unwrap_err().to_string();
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            e,
            "1073741824 bytes, more than the 16777216 bytes allowed (not read)"
        );
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_capped(&zero, 16).unwrap_err().to_string();
        assert_eq!(e, "not a regular file (a symbolic link)");
        refused(
            |p| read_capped(p, 16).map(|_| File::open("/").unwrap()),
            Path::new("/dev/zero"),
            "a device",
        );
        fs::write(&big, b"0123456789").unwrap();
        assert_eq!(read_capped(&big, 10).unwrap(), b"0123456789");
        assert!(read_capped(&big, 9).is_err());
    }

    /// Directories and files are created 0700/0600 (0750/0640 with group access) whatever the
    /// umask.
    #[test]
    fn modes_are_exact_whatever_the_umask() {
        isolated(
            "storage::durable::tests::modes_are_exact_whatever_the_umask",
            || {
                let _g = modes();
                for (mask, acc, d, f) in [
                    (0o000, Access::Private, 0o700, 0o600),
                    (0o022, Access::Private, 0o700, 0o600),
                    (0o000, Access::Group, 0o750, 0o640),
                    (0o077, Access::Group, 0o750, 0o640),
                ] {
                    let dir = tempfile::tempdir().unwrap();
                    let old = umask(mask);
                    set_access(acc);
                    let sub = dir.path().join("a").join("b");
                    let made = (|| {
                        create_dir_all(&sub)?;
                        write_atomic(&sub.join("w"), b"x")?;
                        drop(create_regular(&sub.join("c"), false)?);
                        drop(open_append(&sub.join("e"))?);
                        drop(create_tmp(&sub.join("t"))?);
                        io::Result::Ok(())
                    })();
                    set_access(Access::Private);
                    umask(old);
                    made.unwrap();
                    let ctx = format!("umask {mask:03o}, {acc:?}");
                    assert_eq!(mode_of(&dir.path().join("a")), d, "{ctx}");
                    assert_eq!(mode_of(&sub), d, "{ctx}");
                    for e in fs::read_dir(&sub).unwrap() {
                        assert_eq!(mode_of(&e.unwrap().path()), f, "{ctx}");
                    }
                }
                // A file of ours left with a wider mode is narrowed when opened for writing.
                let dir = tempfile::tempdir().unwrap();
                let p = dir.path().join("old");
                fs::write(&p, b"").unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
                drop(open_append(&p).unwrap());
                assert_eq!(mode_of(&p), 0o600);
            },
        );
    }

    #[test]
    fn directories_others_can_write_are_refused() {
        isolated(
            "storage::durable::tests::directories_others_can_write_are_refused",
            || {
                let _g = modes();
                let dir = tempfile::tempdir().unwrap();
                let d = dir.path().join("job");
                ensure_dir(&d, "job directory").unwrap();
                assert_eq!(mode_of(&d), 0o700);
                let me = user_name(euid());
                for (mode, refused_private, refused_group) in [
                    (0o755, false, false),
                    (0o770, true, false),
                    (0o777, true, true),
                    (0o1777, true, true),
                ] {
                    fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
                    let private = check_dir(&d, "job directory");
                    set_access(Access::Group);
                    let group = check_dir(&d, "job directory");
                    set_access(Access::Private);
                    assert_eq!(private.is_err(), refused_private, "{mode:o}: {private:?}");
                    assert_eq!(group.is_err(), refused_group, "{mode:o}: {group:?}");
                }
                fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
                let e = ensure_dir(&d, "job directory").unwrap_err().to_string();
                assert_eq!(
                    e,
                    format!(
                    "refusing job directory {}: owned by {me} with mode 0777; it must be owned by \
                     you ({me}) and not writable by others or the group (group-writable only with \
                     CKPT_GROUP_ACCESS=1)",
                    d.display()
                )
                );
                fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
                // A parent anyone may write to, without the sticky bit.
                fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
                let e = check_dir(&d, "job directory").unwrap_err().to_string();
                assert!(e.contains("without the sticky bit"), "{e}");
                fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
                check_dir(&d, "job directory").unwrap();
                // Owned by another user (only root can make one here).
                if euid() == 0 {
                    std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
                    let e = check_dir(&d, "job directory").unwrap_err().to_string();
                    assert!(
                        e.contains("owned by nobody (uid 65534) with mode 0700"),
                        "{e}"
                    );
                }
            },
        );
    }
}
