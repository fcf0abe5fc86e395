//! Whether a job is running, and which run a checkpoint request belongs to.
//!
//! `ckpt run` holds an exclusive `flock` on `<job_dir>/control/run.lock` for its whole life;
//! the kernel drops it when the process ends, even by SIGKILL, so a held lock means a live
//! `ckpt run` (the file also records its pid, host and start time, for messages). A second
//! `ckpt run` of the same directory is refused.
//!
//! **The rule for requests.** A `ckpt checkpoint` request belongs to the `ckpt run` that is
//! running when it is made: `ckpt checkpoint` refuses to write one when no run holds the lock,
//! and a run expires (settles without acting on, and reports) any request still pending when
//! it starts, since that one was made for an earlier run that ended before acting on it.
//! Relaunches within one run keep the request pending. `<job_dir>/control/request.lock`
//! makes this race-free: `ckpt checkpoint` holds it while it checks the run lock and writes
//! the request, and `ckpt run` holds it while it takes the run lock and expires old requests.
//!
//! On a file system without `flock` the launcher says so and goes on without the locks: then
//! `ckpt checkpoint` cannot tell whether the job runs, and concurrent runs are not refused.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ckpt::storage::liveness::{flock, Flock};

use crate::report::say;
use crate::{clock, UsageError};

/// The lock `ckpt run` holds while it runs.
pub fn run_lock_path(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("run.lock")
}

fn request_lock_path(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("request.lock")
}

fn open_lock(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        // Durably, like every directory ckpt creates: `control/` also holds the request files.
        ckpt::storage::durable::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Never through a link; created with the job's access mode.
    ckpt::storage::durable::create_regular(path, false)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Held by `ckpt run` for its lifetime; dropping it releases the job directory.
#[derive(Debug)]
pub struct RunLock {
    _file: Option<File>,
}

/// Takes the run lock of `job_dir` and records this process in it. Another live run is a
/// [`UsageError`] naming it.
pub fn take_run(job_dir: &Path, now_ms: u64) -> anyhow::Result<RunLock> {
    take(job_dir, now_ms, "", |who| {
        format!(
            "--job-dir {}: in use by a running `ckpt run` ({who})",
            job_dir.display()
        )
    })
}

/// Takes the run lock of `job_dir` for `ckpt prune`, so that no run starts while it removes
/// files (its record says `(ckpt prune)`). A live run is a [`UsageError`] naming it.
pub fn take_for_prune(job_dir: &Path, now_ms: u64) -> anyhow::Result<RunLock> {
    take(job_dir, now_ms, " (ckpt prune)", |who| {
        format!(
            "refusing to prune {}: a `ckpt run` holds it ({who}); prune once it has ended",
            job_dir.display()
        )
    })
}

/// Takes the run lock, recording this process with `note`; `held` words the refusal.
fn take(
    job_dir: &Path,
    now_ms: u64,
    note: &str,
    held: impl FnOnce(String) -> String,
) -> anyhow::Result<RunLock> {
    let path = run_lock_path(job_dir);
    let mut file = open_lock(&path)?;
    let op = libc::LOCK_EX | libc::LOCK_NB;
    match flock(&file, op).with_context(|| format!("cannot lock {}", path.display()))? {
        Flock::Taken => {}
        Flock::Held => return Err(UsageError(held(record(&mut file))).into()),
        Flock::Unsupported(e) => {
            say(format!(
                "warning: cannot lock {} ({e}): concurrent runs of this job directory are not \
                 refused, and `ckpt checkpoint` cannot tell whether the job runs",
                path.display()
            ));
            return Ok(RunLock { _file: None });
        }
    }
    let line = format!(
        "pid {} on {}, started {}{note}\n",
        std::process::id(),
        ckpt::config::default_node(),
        clock::utc(now_ms)
    );
    file.set_len(0)
        .and_then(|_| file.write_all(line.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(RunLock { _file: Some(file) })
}

/// Whether a `ckpt run` holds a job directory.
#[derive(Debug)]
pub enum Liveness {
    /// A run holds the lock; its record (`pid P on HOST, started T`).
    Running(String),
    /// No run holds it; the last run's record, if any.
    Stopped(Option<String>),
    /// Cannot tell (the file system has no `flock`).
    Unknown(io::Error),
}

/// Checks whether a `ckpt run` holds `job_dir` (without blocking).
pub fn liveness(job_dir: &Path) -> anyhow::Result<Liveness> {
    let path = run_lock_path(job_dir);
    let mut file = match ckpt::storage::durable::open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Liveness::Stopped(None)),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let op = libc::LOCK_SH | libc::LOCK_NB;
    Ok(
        match flock(&file, op).with_context(|| format!("cannot lock {}", path.display()))? {
            // Dropping the file releases the shared lock at once.
            Flock::Taken => Liveness::Stopped(Some(record(&mut file)).filter(|r| !r.is_empty())),
            Flock::Held => Liveness::Running(record(&mut file)),
            Flock::Unsupported(e) => Liveness::Unknown(e),
        },
    )
}

fn record(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut s));
    s.trim().to_owned()
}

/// Serialises the writers of requests with the start of runs (held until dropped).
#[derive(Debug)]
pub struct RequestLock {
    _file: Option<File>,
}

/// Takes the request lock of `job_dir`, waiting for the holder (held only for moments).
pub fn take_requests(job_dir: &Path) -> anyhow::Result<RequestLock> {
    let path = request_lock_path(job_dir);
    let file = open_lock(&path)?;
    match flock(&file, libc::LOCK_EX).with_context(|| format!("cannot lock {}", path.display()))? {
        Flock::Taken | Flock::Held => Ok(RequestLock { _file: Some(file) }),
        Flock::Unsupported(_) => Ok(RequestLock { _file: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(matches!(liveness(d).unwrap(), Liveness::Stopped(None)));
        let run = take_run(d, 1_776_693_792_000).unwrap();
        let Liveness::Running(who) = liveness(d).unwrap() else {
            panic!("the run lock is held")
        };
        let me = format!("pid {} on ", std::process::id());
        assert!(
            who.starts_with(&me) && who.ends_with("started 2026-04-20 14:03:12Z"),
            "{who}"
        );
        let e = take_run(d, 0).unwrap_err().to_string();
        assert!(
            e.contains("in use by a running `ckpt run`") && e.contains(&me),
            "{e}"
        );
        drop(run);
        let Liveness::Stopped(Some(last)) = liveness(d).unwrap() else {
            panic!("released on drop")
        };
        assert_eq!(last, who);
        // The request lock can be taken again once dropped.
        drop(take_requests(d).unwrap());
        drop(take_requests(d).unwrap());
    }
}
