//! Proof that the ranks of a launch are gone.
//!
//! The launcher's own lock (`control/run.lock`) dies with the launcher, but its ranks may
//! outlive it (a SIGKILLed launcher, an mpirun that died before its ranks): a resumed run or a
//! relaunch must not start writing while they are alive. So every rank holds a *shared*
//! `flock` on `<job_dir>/control/ranks.lock` for its whole life (the kernel drops it when the
//! process ends, even by SIGKILL), and records its pid and host in
//! `<job_dir>/control/ranks/launch-<L>/rank-<R>`. Before each launch the launcher takes the
//! lock *exclusively* for an instant: if it cannot, ranks of an earlier launch still live, and
//! the records say which.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock every rank holds shared.
pub fn lock_path(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("ranks.lock")
}

/// Where the ranks of every launch record themselves.
pub fn records_dir(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("ranks")
}

fn open_lock(job_dir: &Path) -> io::Result<File> {
    let path = lock_path(job_dir);
    if let Some(dir) = path.parent() {
        super::durable::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(file_mode())
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    private(&f)?;
    Ok(f)
}

/// The mode of the job's files (0600, or 0640 with group access).
fn file_mode() -> u32 {
    super::durable::access().file_mode()
}

/// A regular file, with exactly the job's mode whatever the umask.
fn private(f: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    f.set_permissions(std::fs::Permissions::from_mode(file_mode()))
}

/// What a `flock` attempt found.
#[derive(Debug)]
pub enum Flock {
    /// The lock is ours.
    Taken,
    /// Another holder prevents it (only with `LOCK_NB`).
    Held,
    /// The file system has no `flock`: nobody can be told apart.
    Unsupported(io::Error),
}

/// `flock(2)` with `op` (`LOCK_SH`/`LOCK_EX`, with `LOCK_NB` not to wait) on `file`.
pub fn flock(file: &File, op: libc::c_int) -> io::Result<Flock> {
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(Flock::Taken);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(Flock::Held),
        Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
            Ok(Flock::Unsupported(e))
        }
        _ => Err(e),
    }
}

/// `flock(op | LOCK_NB)`: `Ok(true)` if taken, or if the file system has no `flock` (then
/// the locks prove nothing, as the launcher's run lock says when it starts); `Ok(false)` if
/// another holder prevents it.
fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    match flock(file, op | libc::LOCK_NB)? {
        Flock::Taken | Flock::Unsupported(_) => Ok(true),
        Flock::Held => Ok(false),
    }
}

/// Held by a rank for its lifetime: its share of `ranks.lock`.
#[derive(Debug)]
pub struct Presence {
    _lock: File,
}

impl Presence {
    /// Takes this rank's share of the lock (the launcher holds it exclusively only for an
    /// instant; waits at most `timeout` for it) and records `pid host` for launch `launch`.
    pub fn announce(
        job_dir: &Path,
        launch: u32,
        rank: i32,
        host: &str,
        timeout: Duration,
    ) -> io::Result<Presence> {
        let lock = open_lock(job_dir)?;
        let t0 = Instant::now();
        while !try_flock(&lock, libc::LOCK_SH)? {
            if t0.elapsed() >= timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} stayed locked exclusively for {} s: only a launcher checking for \
                         ranks of an earlier launch takes it so, and only for an instant \
                         (another `ckpt` process of this job directory is stuck holding it)",
                        lock_path(job_dir).display(),
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let dir = records_dir(job_dir).join(format!("launch-{launch}"));
        super::durable::create_dir_all(&dir)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file_mode())
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(dir.join(format!("rank-{rank}")))?;
        private(&f)?;
        writeln!(f, "{} {host}", std::process::id())?;
        Ok(Presence { _lock: lock })
    }
}

/// A rank as it recorded itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankRecord {
    /// Launch number (`CKPT_RESTART_COUNT`).
    pub launch: u32,
    /// Rank.
    pub rank: i32,
    /// Process id.
    pub pid: i32,
    /// Host it ran on.
    pub host: String,
}

/// Whether any rank of any launch still holds its share of the lock.
pub fn ranks_alive(job_dir: &Path) -> io::Result<bool> {
    if !lock_path(job_dir).exists() {
        return Ok(false);
    }
    let lock = open_lock(job_dir)?;
    let free = try_flock(&lock, libc::LOCK_EX)?;
    // Dropping `lock` releases it at once if taken.
    Ok(!free)
}

/// Every rank record left in the job directory (oldest launch first).
pub fn records(job_dir: &Path) -> Vec<RankRecord> {
    let mut out = Vec::new();
    let Ok(launches) = std::fs::read_dir(records_dir(job_dir)) else {
        return out;
    };
    for l in launches.flatten() {
        let name = l.file_name().to_string_lossy().into_owned();
        let Some(launch) = name.strip_prefix("launch-").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(ranks) = std::fs::read_dir(l.path()) else {
            continue;
        };
        for r in ranks.flatten() {
            let name = r.file_name().to_string_lossy().into_owned();
            let Some(rank) = name.strip_prefix("rank-").and_then(|n| n.parse().ok()) else {
                continue;
            };
            // Never through a link, never blocking, never more than a line.
            let Ok(bytes) = super::durable::read_capped(&r.path(), 4096) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let mut words = text.split_whitespace();
            if let (Some(Ok(pid)), Some(host)) = (words.next().map(str::parse), words.next()) {
                out.push(RankRecord {
                    launch,
                    rank,
                    pid,
                    host: host.to_owned(),
                });
            }
        }
    }
    out.sort_by_key(|r| (r.launch, r.rank));
    out
}

/// Removes every record (when no rank holds the lock any more).
pub fn clear_records(job_dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(records_dir(job_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_holding_its_share_is_seen_until_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path();
        assert!(!ranks_alive(job).unwrap());
        let a = Presence::announce(job, 2, 0, "n1", Duration::from_secs(1)).unwrap();
        let b = Presence::announce(job, 2, 1, "n1", Duration::from_secs(1)).unwrap();
        assert!(ranks_alive(job).unwrap());
        let recs = records(job);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (
                recs[1].launch,
                recs[1].rank,
                recs[1].pid,
                recs[1].host.as_str()
            ),
            (2, 1, std::process::id() as i32, "n1")
        );
        drop(a);
        assert!(ranks_alive(job).unwrap(), "rank 1 still holds its share");
        drop(b);
        assert!(!ranks_alive(job).unwrap());
        clear_records(job).unwrap();
        assert!(records(job).is_empty());
    }

    #[test]
    fn a_rank_waits_for_the_launchers_instant_and_gives_up_after_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path();
        let held = open_lock(job).unwrap();
        assert!(try_flock(&held, libc::LOCK_EX).unwrap());
        let e = Presence::announce(job, 0, 0, "n1", Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(held);
        assert!(Presence::announce(job, 0, 0, "n1", Duration::from_millis(50)).is_ok());
    }
}
