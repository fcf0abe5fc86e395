//! A migration's relaunch started ahead of time. On emulated nodes under mpirun, as soon as a
//! migration is pending (`control/placement.next`, written by `ckpt migrate` before its
//! checkpoint request), the supervisor starts the next launch with that placement: its ranks
//! start and initialise MPI while the running launch checkpoints and stops, then wait at the
//! start of `Checkpointer::new` for a release file (`CKPT_HOLD_UNTIL`, see `ckpt::hold`).
//! The supervisor writes that file only once the previous launch's ranks are gone and the
//! placement is in force, so no two launches ever write at once; until then the held ranks
//! have read nothing of the job and written only rank 0's readiness file and, for the ranks
//! that move (`CKPT_HANDOFF_RANKS`), their handoff offers and the files handed to them (see
//! `ckpt::hold`). A held launch whose migration is withdrawn, or
//! that is not used for any other reason, is stopped (SIGTERM, then SIGKILL).
//!
//! Not under srun (a second step would need the allocation's CPUs) nor on `--nodes` (the
//! placement of real nodes is computed at launch from what is in force).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ckpt::storage::durable;

use crate::backend::{Backend, Launch};
use crate::migrate;
use crate::plan::{Hold, RunPlan};
use crate::report::say;

/// The placement a held launch's emulated ranks are placed by, relative to the job directory.
const HELD_PLACEMENT: &str = "control/placement.held";
/// How long a stopped held launch gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Whether `plan`'s relaunches may be started ahead.
pub fn possible(plan: &RunPlan) -> bool {
    plan.emulate_nodes.is_some() && plan.nodes.is_none() && plan.srun.is_none()
}

/// The release file of the launch with restart count `restart_count`.
fn go_path(job_dir: &Path, restart_count: u32) -> PathBuf {
    ckpt::hold::release_path(job_dir, restart_count)
}

/// A launch started ahead, its ranks held.
pub struct Held {
    launch: Launch,
    child: Stopped,
    /// The placement it was started with.
    map: BTreeMap<u32, String>,
}

/// The held launch's process, stopped when dropped unless taken (its readiness file and
/// handoff offers go with it).
struct Stopped {
    child: Option<Child>,
    restart_count: u32,
    /// Its release file (its readiness file and offers are named after it).
    go: PathBuf,
}

impl Held {
    /// Starts launch `restart_count` of `plan` held, for the pending placement `map`.
    pub fn start(
        plan: &RunPlan,
        backend: &dyn Backend,
        restart_count: u32,
        map: BTreeMap<u32, String>,
        spawn: impl FnOnce(&Launch) -> anyhow::Result<Child>,
    ) -> anyhow::Result<Held> {
        let go = go_path(&plan.job_dir, restart_count);
        // Files left by a crash of an earlier run must not release this launch early, say it
        // is ready, or take a rank's file.
        remove_offers(&go);
        for stale in [go.clone(), ckpt::hold::ready_path(&go)] {
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", stale.display()))
                }
                _ => {}
            }
        }
        let placement = plan.job_dir.join(HELD_PLACEMENT);
        durable::write_atomic(&placement, migrate::render(&map).as_bytes())
            .with_context(|| format!("cannot write {}", placement.display()))?;
        // The ranks that change node take their files from the ranks they replace.
        let now = migrate::in_force(&plan.job_dir, plan.ranks, plan.emulate_nodes);
        let moving = map
            .iter()
            .filter(|(r, node)| now.get(r) != Some(node))
            .map(|(r, _)| *r)
            .collect();
        let held_plan = RunPlan {
            hold: Some(Hold {
                go: go.clone(),
                placement,
                moving,
            }),
            ..plan.clone()
        };
        let launch = backend.launch(&held_plan, restart_count, None);
        let child = spawn(&launch)?;
        Ok(Held {
            launch,
            child: Stopped {
                child: Some(child),
                restart_count,
                go: go.clone(),
            },
            map,
        })
    }

    /// Whether it was started for `map` as launch `restart_count` and still runs.
    pub fn fits(&mut self, map: &BTreeMap<u32, String>, restart_count: u32) -> bool {
        let running = self
            .child
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        running && self.map == *map && self.child.restart_count == restart_count
    }

    /// Whether it was started for the placement `map`.
    pub fn is_for(&self, map: &BTreeMap<u32, String>) -> bool {
        self.map == *map
    }

    /// Releases its ranks (the previous launch's are gone and its placement is in force).
    pub fn release(mut self) -> anyhow::Result<(Launch, Child)> {
        let go = &self.child.go;
        durable::write_atomic(go, b"").with_context(|| format!("cannot write {}", go.display()))?;
        // Its readiness told `ckpt migrate` to go on; the next migration waits for its own.
        let _ = std::fs::remove_file(ckpt::hold::ready_path(go));
        let child = self
            .child
            .child
            .take()
            .context("the launch started ahead is gone")?;
        Ok((self.launch, child))
    }
}

impl Drop for Stopped {
    /// Stops a held launch that was not released.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = crate::signals::send(child.id(), libc::SIGTERM);
            let t0 = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && t0.elapsed() < STOP_GRACE {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        let _ = std::fs::remove_file(ckpt::hold::ready_path(&self.go));
        remove_offers(&self.go);
        say(format!(
            "stopped the launch started ahead for a migration (restart count {}), unused",
            self.restart_count
        ));
    }
}

/// Removes the release and readiness files of launch `restart_count` once they are no longer
/// needed.
pub fn released(job_dir: &Path, restart_count: u32) {
    let go = go_path(job_dir, restart_count);
    let _ = std::fs::remove_file(ckpt::hold::ready_path(&go));
    remove_offers(&go);
    let _ = std::fs::remove_file(go);
}

/// Removes the handoff offers of the launch released by `go` (`ckpt::hold::offer_path`):
/// left by a held launch that was stopped or crashed, one would send a rank's file to a port
/// nobody holds.
fn remove_offers(go: &Path) {
    let prefix = ckpt::hold::offer_prefix(go);
    let prefix = prefix.to_string_lossy();
    let Some(Ok(entries)) = go.parent().map(std::fs::read_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&*prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Waits, for at most `limit`, until a launch started ahead for a pending migration of the job
/// in `job_dir` is ready (its ranks initialised MPI); returns how long it took, or `None`.
pub fn wait_ready(job_dir: &Path, limit: Duration) -> Option<Duration> {
    let control = job_dir.join("control");
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let ready = std::fs::read_dir(&control).ok()?.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("release.") && name.ends_with(".ready")
        });
        if ready {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
