//! The hold of a launch started ahead of time. To take MPI's start-up out of a migration's
//! freeze, `ckpt run` starts the relaunch while the previous launch still checkpoints and
//! stops; its ranks initialise MPI, then wait here, at the start of `Checkpointer::new` and
//! before they read or write anything of the job, until the launcher writes the file named by
//! `CKPT_HOLD_UNTIL` (it does once the previous launch's ranks are gone). Before they wait,
//! rank 0 writes [`ready_path`], once every rank has initialised MPI: `ckpt migrate` asks for
//! the checkpoint only then, so MPI's start-up is out of the freeze even when the checkpoint
//! is short. Their only other writes are those of a handoff (`handoff.rs`): the offer of each
//! rank that moves ([`offer_path`]) and the temporary file of what it receives, a file no rank
//! of the running launch writes. The wait has a deadline (`CKPT_TIMEOUT + CKPT_IO_TIMEOUT`:
//! the previous launch's checkpoint and exit) and sleeps between looks, so held ranks leave
//! the cores to the ranks still checkpointing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The release file of the launch with restart count `launch` in the job directory
/// `job_dir` (the launcher writes it; the ranks of the launch before it find the handoff
/// offers next to it, see `handoff.rs`).
pub fn release_path(job_dir: &Path, launch: u32) -> PathBuf {
    job_dir.join(format!("control/release.{launch}"))
}

/// The file rank 0 of a held launch writes once all its ranks have initialised MPI: the
/// release file's name with `.ready` appended.
pub fn ready_path(go: &Path) -> PathBuf {
    let mut name = go.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(".ready");
    go.with_file_name(name)
}

/// Where held rank `rank` of the launch released by `go` offers to take its file (see
/// `handoff`): `go` with `.offer-RANK` appended.
pub fn offer_path(go: &Path, rank: u32) -> PathBuf {
    let mut name = offer_prefix(go);
    name.push(rank.to_string());
    go.with_file_name(name)
}

/// The start of the names of the offers of the launch released by `go`.
pub fn offer_prefix(go: &Path) -> std::ffi::OsString {
    let mut name = go.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(".offer-");
    name
}

/// How often a held rank looks for the file.
const LOOK_EVERY: Duration = Duration::from_millis(2);

/// Waits until `path` exists (it is never opened: only its presence counts), for at most
/// `deadline`; `rank` names the rank in the error.
pub fn wait(path: &Path, deadline: Duration, rank: i32) -> Result<()> {
    let t0 = Instant::now();
    while std::fs::symlink_metadata(path).is_err() {
        if t0.elapsed() >= deadline {
            return Err(Error::NotReleased {
                rank,
                path: path.to_owned(),
                waited_secs: t0.elapsed().as_secs(),
            });
        }
        std::thread::sleep(LOOK_EVERY);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_rank_goes_once_the_file_appears_and_names_it_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go-3");
        let writer = {
            let go = go.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                std::fs::write(go, b"").unwrap();
            })
        };
        let t0 = Instant::now();
        wait(&go, Duration::from_secs(10), 2).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(30));
        writer.join().unwrap();
        let never = dir.path().join("go-4");
        let e = wait(&never, Duration::from_millis(20), 5).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("rank 5: this launch was started ahead"),
            "{text}"
        );
        assert!(text.contains("go-4 did not appear"), "{text}");
        assert_eq!(
            ready_path(Path::new("/j/control/release.3")),
            Path::new("/j/control/release.3.ready")
        );
        assert_eq!(
            offer_path(Path::new("/j/control/release.3"), 5),
            Path::new("/j/control/release.3.offer-5")
        );
        assert_eq!(
            release_path(Path::new("/j"), 3),
            Path::new("/j/control/release.3")
        );
    }
}
