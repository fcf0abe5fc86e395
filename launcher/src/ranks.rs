//! Before a launch, the ranks of earlier launches must be gone: a SIGKILLed launcher or an
//! mpirun that died can leave ranks running for a while, and a resumed run or a relaunch that
//! started next to them would commit epochs twice. Every rank holds a share of
//! `control/ranks.lock` for its life (`ckpt::storage::liveness`); here the launcher waits for
//! the lock to be free, then kills the ranks it can prove are this job's on this machine, and
//! refuses to launch if any is left, naming them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ckpt::storage::liveness::{self, RankRecord};

use crate::report::say;

/// How long to wait by default (`CKPT_RANK_EXIT_WAIT` seconds overrides it).
pub const WAIT: Duration = Duration::from_secs(30);
/// How long killed ranks get to go.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// The wait from the environment, or [`WAIT`].
pub fn wait_from_env() -> anyhow::Result<Duration> {
    match ckpt::env::get(ckpt::env::RANK_EXIT_WAIT) {
        None => Ok(WAIT),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|&s| s <= 86_400)
            .map(Duration::from_secs)
            .with_context(|| {
                format!(
                    "{}={v:?}: expected whole seconds, at most 86400",
                    ckpt::env::RANK_EXIT_WAIT
                )
            }),
    }
}

/// Returns once no rank of an earlier launch holds the lock: at once, after they exit within
/// `wait`, or after killing them; fails naming the ranks that are still there.
pub fn ensure_gone(job_dir: &Path, wait: Duration) -> anyhow::Result<()> {
    let alive = || {
        liveness::ranks_alive(job_dir)
            .with_context(|| format!("cannot check {}", liveness::lock_path(job_dir).display()))
    };
    if !alive()? {
        let _ = liveness::clear_records(job_dir);
        return Ok(());
    }
    let t0 = Instant::now();
    say(format!(
        "waiting up to {} s for ranks of an earlier launch to exit: {}",
        wait.as_secs(),
        describe(&liveness::records(job_dir))
    ));
    if wait_free(&alive, wait)? {
        say(format!(
            "the earlier ranks are gone after {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        let _ = liveness::clear_records(job_dir);
        return Ok(());
    }
    let records = liveness::records(job_dir);
    let killed: Vec<&RankRecord> = records
        .iter()
        .filter(|r| is_this_jobs(r.pid, job_dir) && kill(r.pid))
        .collect();
    if !killed.is_empty() {
        say(format!(
            "killed ranks of an earlier launch still running after {} s: {}",
            wait.as_secs(),
            describe_refs(&killed)
        ));
    }
    if wait_free(&alive, AFTER_KILL)? {
        let _ = liveness::clear_records(job_dir);
        return Ok(());
    }
    let left: Vec<&RankRecord> = records
        .iter()
        .filter(|r| !killed.iter().any(|k| k.pid == r.pid && k.host == r.host))
        .collect();
    bail!(
        "ranks of an earlier launch still hold {} after {} s: {}; stop them (they may run on \
         another node) and run again",
        liveness::lock_path(job_dir).display(),
        (wait + AFTER_KILL).as_secs(),
        if left.is_empty() {
            "(no record names them)".to_owned()
        } else {
            describe_refs(&left)
        }
    )
}

/// Polls until the lock is free (`true`) or `wait` passed (`false`).
fn wait_free(alive: &dyn Fn() -> anyhow::Result<bool>, wait: Duration) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    loop {
        if !alive()? {
            return Ok(true);
        }
        if t0.elapsed() >= wait {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `pid` on this machine is a rank of the job in `job_dir` (its environment says so),
/// so killing it cannot hit an unrelated process that reused the pid.
fn is_this_jobs(pid: i32, job_dir: &Path) -> bool {
    let want = format!("{}={}", ckpt::env::JOB_DIR, job_dir.display());
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        .unwrap_or(false)
}

fn kill(pid: i32) -> bool {
    // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
    unsafe { libc::kill(pid, libc::SIGKILL) == 0 }
}

fn describe(records: &[RankRecord]) -> String {
    describe_refs(&records.iter().collect::<Vec<_>>())
}

fn describe_refs(records: &[&RankRecord]) -> String {
    if records.is_empty() {
        return "no record names them".into();
    }
    records
        .iter()
        .map(|r| {
            format!(
                "rank {} of launch {} (pid {} on {})",
                r.rank, r.launch, r.pid, r.host
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt::storage::liveness::Presence;

    #[test]
    fn free_at_once_and_refused_while_a_foreign_holder_stays() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path();
        ensure_gone(job, Duration::from_millis(10)).unwrap();
        // A holder that is not a rank of this job (its environment does not name the job
        // directory: this test process) is never killed: the launch is refused, naming it.
        let _p = Presence::announce(job, 3, 1, "n9", Duration::from_secs(1)).unwrap();
        let e = ensure_gone(job, Duration::from_millis(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("still hold"), "{e}");
        assert!(
            e.contains(&format!(
                "rank 1 of launch 3 (pid {} on n9)",
                std::process::id()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_rank_of_this_job_that_outlives_the_wait_is_killed() {
        // A process that holds a share of the lock, as a rank does, with the job directory
        // in its environment, and a record naming it: a rank whose launcher and mpirun died.
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path();
        let lock = liveness::lock_path(job);
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec 9<>"$LOCK"; flock -s 9 && exec sleep 120"#)
            .env("LOCK", &lock)
            .env(ckpt::env::JOB_DIR, job)
            .spawn()
            .unwrap();
        let pid = holder.id() as i32;
        let t0 = Instant::now();
        while !liveness::ranks_alive(job).unwrap() {
            assert!(t0.elapsed() < Duration::from_secs(10), "no lock taken");
            std::thread::sleep(Duration::from_millis(20));
        }
        let rec = liveness::records_dir(job).join("launch-0");
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::write(rec.join("rank-2"), format!("{pid} here\n")).unwrap();
        let t0 = Instant::now();
        ensure_gone(job, Duration::from_millis(300)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        let status = holder.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!liveness::ranks_alive(job).unwrap());
        assert!(liveness::records(job).is_empty(), "records cleared");
    }
}
