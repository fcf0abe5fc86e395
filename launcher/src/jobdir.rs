//! The job directory from the launcher's side: creating it, writing `job.json`, and reading
//! what an earlier run left there (committed epochs to resume from, launches already made,
//! the end of the event log). The ranks own `manifests/`, `events.jsonl` and `local/`; the
//! launcher only reads them.
//!
//! `job.json` (written atomically on every `ckpt run`) records the job's identity (`job_id`,
//! see [`ckpt::identity`]) and how the job was started, for people and for `ckpt list`-style
//! tools. Read back: the id (kept for ever: a resumed, copied or renamed directory keeps it),
//! `created_unix_ms`, `local_dir` and `emulate_nodes` (where `ckpt verify` looks for rank
//! files, and which nodes `ckpt kill-node` knows), and `shared_dir` (`--shared-dir`, absent for
//! the default `<job dir>/shared`: where L4 copies are for a resume, `verify` and `prune`).
//!
//! The id of a new job is random. A directory whose `job.json` records none (made by the
//! library alone) keeps the id its newest committed epoch carries, so its epochs still restore.
//!
//! `prepare` also takes the run lock (a second `ckpt run` of the directory is refused) and
//! expires a `ckpt checkpoint` request an earlier run left pending (see [`crate::lock`]).

use std::path::Path;

use anyhow::Context as _;
use ckpt::events::{self, Event};
use ckpt::manifest::{self, Manifest};
use ckpt::trigger::{self, ControlState, Request};
use serde::{Deserialize, Serialize};

use crate::lock::{self, RunLock};
use crate::plan::RunPlan;
use crate::{clock, UsageError};

/// Name of the launcher's record of the job, inside the job directory.
pub const JOB_FILE: &str = ckpt::identity::JOB_FILE;

/// What the launcher found in (and wrote to) the job directory before the first launch.
#[derive(Debug)]
pub struct JobDir {
    /// The newest committed epoch whose manifest loads, if any: the first launch restarts from
    /// it (or from an older one, if the ranks find it unusable).
    pub resume_from: Option<Manifest>,
    /// All committed epochs found, newest first.
    pub committed: Vec<u64>,
    /// Epochs an earlier restart found damaged and quarantined, newest first (never restored).
    pub quarantined: Vec<u64>,
    /// Restart count of the first launch: 0 for a new job, one past the last launch an
    /// earlier run made for a resumed one (so faults do not fire again and manifests'
    /// `launch` numbers keep increasing).
    pub first_restart_count: u32,
    /// End of `events.jsonl`: events before it belong to earlier runs and are not reported.
    pub events_offset: u64,
    /// A request an earlier run left pending, now expired (settled without acting on it).
    pub expired: Option<Request>,
    /// This run's hold on the directory; released when dropped.
    pub run_lock: RunLock,
    /// The job's id, as recorded in `job.json` (the ranks get it in `CKPT_JOB_ID`).
    pub job_id: String,
}

/// The contents of `job.json`.
#[derive(Debug, Serialize, Deserialize)]
struct JobFile {
    version: u32,
    job_id: String,
    command: Vec<String>,
    ranks: u32,
    every: Option<String>,
    keep: u32,
    max_restarts: u32,
    local_dir: Option<String>,
    /// `--emulate-nodes` (absent in files of older versions, and without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emulate_nodes: Option<u32>,
    /// `--spares`: the last emulated nodes start without ranks (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spares: Option<u32>,
    /// `--nodes` as given (a hostlist; absent without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nodes: Option<String>,
    /// `--ranks-per-node`: the slots of each of `nodes` (absent without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ranks_per_node: Option<u32>,
    /// Base of shared (L4) storage when not the default `<job dir>/shared` (absent in files
    /// of older versions, and for the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared_dir: Option<String>,
    fault: Option<String>,
    mpirun: String,
    mpirun_args: Vec<String>,
    created_unix_ms: u64,
    created_utc: String,
    last_run_unix_ms: u64,
}

/// Creates the job directory, takes its run lock, expires requests left by an earlier run,
/// inspects it and writes `job.json`. A directory in use by another run, or whose newest
/// epoch was written by a different number of ranks, is a [`UsageError`].
pub fn prepare(plan: &RunPlan, now_ms: u64) -> anyhow::Result<JobDir> {
    let dir = &plan.job_dir;
    secure_dirs(plan)?;
    let (run_lock, expired) = {
        // Held while the run lock is taken and old requests expire: a `ckpt checkpoint`
        // either wrote before (for the earlier run) or writes after (for this one).
        let _requests = lock::take_requests(dir)?;
        (lock::take_run(dir, now_ms)?, expire_requests(dir)?)
    };
    let manifest::Listing {
        committed,
        quarantined,
    } = manifest::listing(dir)
        .with_context(|| format!("cannot list manifests in {}", dir.display()))?;
    let resume_from = newest_loadable(dir, &committed);
    if let Some(m) = &resume_from {
        if m.nranks != plan.ranks {
            return Err(UsageError(format!(
                "--job-dir {}: epoch {} was written by {} ranks; resume it with -n {}",
                dir.display(),
                m.epoch,
                m.nranks,
                m.nranks
            ))
            .into());
        }
    }
    let (past, events_offset) = events::read_from(dir, 0)
        .with_context(|| format!("cannot read {}", events::path(dir).display()))?;
    let first_restart_count = if committed.is_empty() && quarantined.is_empty() {
        0
    } else {
        let started = past.iter().filter_map(|e| match e {
            Event::Started { launch, .. } => Some(*launch),
            _ => None,
        });
        started
            .chain(resume_from.iter().map(|m| m.launch))
            .max()
            .map_or(1, |l| l + 1)
    };
    let job_id = job_id(dir, resume_from.as_ref())?;
    if let Some(shared) = &plan.shared_dir {
        let mine = shared.join(&job_id);
        if std::fs::symlink_metadata(&mine).is_ok() {
            durable_check(&mine, "shared directory of the job")?;
        }
    }
    write_job_file(plan, &job_id, now_ms)?;
    Ok(JobDir {
        resume_from,
        committed,
        quarantined,
        first_restart_count,
        events_offset,
        expired,
        run_lock,
        job_id,
    })
}

/// The job's id: [`recorded_id`], else (a new job) a new random one.
fn job_id(dir: &Path, newest: Option<&Manifest>) -> anyhow::Result<String> {
    match recorded_id(dir, newest) {
        Some(id) => Ok(id),
        None => ckpt::identity::new_id().context("cannot make a job id"),
    }
}

/// The id of the job in `dir` whose newest committed epoch is `newest`: the one its `job.json`
/// records, else the one that epoch carries.
pub fn recorded_id(dir: &Path, newest: Option<&Manifest>) -> Option<String> {
    match ckpt::identity::read_id(dir) {
        Ok(Some(id)) => Some(id),
        _ => newest.map(|m| m.job.clone()),
    }
}

/// The local directory recorded in `dir`'s `job.json` (`--local-dir` of the run that wrote it),
/// if any.
pub fn recorded_local_dir(dir: &Path) -> Option<std::path::PathBuf> {
    let bytes = ckpt::identity::read_job_file(dir).ok()??;
    let job: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    job.get("local_dir")?.as_str().map(Into::into)
}

/// The base of shared (L4) storage recorded in `dir`'s `job.json` (`--shared-dir` of the run
/// that wrote it), if any; `None` means the default, `<job dir>/shared`.
pub fn recorded_shared_dir(dir: &Path) -> Option<std::path::PathBuf> {
    let bytes = ckpt::identity::read_job_file(dir).ok()??;
    let job: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    job.get("shared_dir")?.as_str().map(Into::into)
}

/// The base of shared (L4) storage of the job in `dir`: `given`, else the one `job.json`
/// records, else `$CKPT_SHARED_DIR`, else `<dir>/shared` (where the ranks put it).
pub fn shared_base(dir: &Path, given: Option<&Path>) -> std::path::PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| recorded_shared_dir(dir))
        .or_else(|| ckpt::env::get(ckpt::env::SHARED_DIR).map(Into::into))
        .unwrap_or_else(|| dir.join("shared"))
}

/// The rank count recorded in `dir`'s `job.json`.
pub fn recorded_ranks(dir: &Path) -> Option<u32> {
    let bytes = ckpt::identity::read_job_file(dir).ok()??;
    let job: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    u32::try_from(job.get("ranks")?.as_u64()?).ok()
}

/// The number of emulated nodes recorded in `dir`'s `job.json` (`--emulate-nodes` of the run
/// that wrote it), if any.
pub fn recorded_emulation(dir: &Path) -> Option<u32> {
    let bytes = ckpt::identity::read_job_file(dir).ok()??;
    let job: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let n = job.get("emulate_nodes")?.as_u64()?;
    u32::try_from(n).ok().filter(|&n| n > 0)
}

/// The real nodes of a job run with `--nodes`, as its `job.json` records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedNodes {
    /// The names, in order (spares last).
    pub names: Vec<String>,
    /// `--ranks-per-node`: each node's slots.
    pub ranks_per_node: Option<u32>,
}

/// The real nodes recorded in `dir`'s `job.json` (`--nodes`, `--ranks-per-node`), if any.
pub fn recorded_nodes(dir: &Path) -> Option<RecordedNodes> {
    let bytes = ckpt::identity::read_job_file(dir).ok()??;
    let job: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let names = crate::hostlist::parse(job.get("nodes")?.as_str()?).ok()?;
    let ranks_per_node = job
        .get("ranks_per_node")
        .and_then(serde_json::Value::as_u64)
        .and_then(|k| u32::try_from(k).ok());
    Some(RecordedNodes {
        names,
        ranks_per_node,
    })
}

/// The number of spare nodes recorded in `dir`'s `job.json` (`--spares`), 0 if none.
pub fn recorded_spares(dir: &Path) -> u32 {
    ckpt::identity::read_job_file(dir)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|job| job.get("spares")?.as_u64())
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// Creates the job directory (durably and private: the ranks' manifests, made durable inside
/// it, must not lose their directory), or checks an existing one: it, and this node's
/// `<local_dir>/<job_id>` if it exists, must be ours and closed to others, else nobody could
/// tell what another user planted there. Sets the access of everything this run creates.
fn secure_dirs(plan: &RunPlan) -> anyhow::Result<()> {
    use ckpt::storage::durable;
    durable::set_access(plan.access);
    let dir = &plan.job_dir;
    if std::fs::symlink_metadata(dir).is_err() {
        durable::create_dir_all(dir)
            .with_context(|| format!("cannot create job directory {}", dir.display()))?;
    }
    durable::check_dir(dir, "job directory").map_err(|e| UsageError(e.to_string()))?;
    let bases: Vec<std::path::PathBuf> = match plan.emulate_nodes {
        Some(n) => (0..n)
            .map(|k| plan.local_base().join(crate::exec_rank::node_name(k)))
            .collect(),
        None => plan.local_dir.iter().cloned().collect(),
    };
    for local in bases {
        let mine = local.join(&plan.job_id);
        if std::fs::symlink_metadata(&mine).is_ok() {
            durable_check(&mine, "node-local directory")?;
        }
    }
    if let Some(shared) = &plan.shared_dir {
        // Created like the job directory (durably, private); an existing one must be ours.
        durable::ensure_dir(shared, "shared directory").map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => UsageError(e.to_string()),
            _ => UsageError(format!(
                "--shared-dir {}: cannot create it: {e}",
                shared.display()
            )),
        })?;
    }
    Ok(())
}

/// [`ckpt::storage::durable::check_dir`], a refusal being a [`UsageError`].
fn durable_check(dir: &Path, what: &str) -> anyhow::Result<()> {
    ckpt::storage::durable::check_dir(dir, what).map_err(|e| UsageError(e.to_string()).into())
}

/// Largest `job.json` read back (a few KiB in practice).
const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// Settles, without acting on it, the request an earlier run left pending.
fn expire_requests(dir: &Path) -> anyhow::Result<Option<Request>> {
    let pending = ControlState::read(dir)?.pending();
    if let Some(r) = pending {
        trigger::settle(dir, r.seq, "expired")?;
    }
    Ok(pending)
}

/// The newest of `committed` (newest first) whose manifest loads.
pub fn newest_loadable(job_dir: &Path, committed: &[u64]) -> Option<Manifest> {
    committed
        .iter()
        .find_map(|&e| manifest::load(job_dir, e).ok())
}

fn write_job_file(plan: &RunPlan, job_id: &str, now_ms: u64) -> anyhow::Result<()> {
    let path = plan.job_dir.join(JOB_FILE);
    // A resumed job keeps its creation time; an unreadable old file is simply replaced.
    let created_unix_ms = ckpt::storage::durable::read_capped(&path, MAX_JOB_FILE_BYTES)
        .ok()
        .and_then(|b| serde_json::from_slice::<JobFile>(&b).ok())
        .map_or(now_ms, |old| old.created_unix_ms);
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    let job = JobFile {
        version: 1,
        job_id: job_id.to_owned(),
        command: std::iter::once(lossy(&plan.program))
            .chain(plan.args.iter().cloned())
            .collect(),
        ranks: plan.ranks,
        every: plan.every.map(|e| e.to_string()),
        keep: plan.keep,
        max_restarts: plan.max_restarts,
        local_dir: plan.local_dir.as_deref().map(lossy),
        emulate_nodes: plan.emulate_nodes,
        spares: plan.spares,
        nodes: plan.nodes.as_ref().map(|n| n.list.clone()),
        ranks_per_node: plan.nodes.as_ref().and_then(|n| n.ranks_per_node),
        shared_dir: plan.shared_dir.as_deref().map(lossy),
        fault: plan.fault.clone(),
        mpirun: lossy(&plan.mpirun),
        mpirun_args: [plan.mpirun_env_args.as_slice(), &plan.mpirun_args].concat(),
        created_unix_ms,
        created_utc: clock::utc(created_unix_ms),
        last_run_unix_ms: now_ms,
    };
    let mut text = serde_json::to_string_pretty(&job).context("cannot encode job.json")?;
    text.push('\n');
    ckpt::storage::durable::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    /// Prepares `dir` for a `ranks`-rank plan and summarises what was found, or the error.
    fn check(dir: &Path, ranks: u32, expected: &str) {
        let got = match prepare(&testutil::plan(dir, ranks), 1_000) {
            Ok(j) => format!(
                "resume_from={:?} committed={:?} quarantined={:?} first={} offset={}",
                j.resume_from.map(|m| m.epoch),
                j.committed,
                j.quarantined,
                j.first_restart_count,
                j.events_offset
            ),
            Err(e) => {
                let tmp = dir.parent().unwrap().display().to_string();
                format!("error: {e:#}").replace(&tmp, "D")
            }
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn new_and_resumed_jobs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        check(
            &dir,
            4,
            "resume_from=None committed=[] quarantined=[] first=0 offset=0",
        );
        let job: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(JOB_FILE)).unwrap()).unwrap();
        assert_eq!(job["command"], serde_json::json!(["/bin/true", "a b"]));
        assert_eq!(job["ranks"], 4);
        assert_eq!(job["created_unix_ms"], 1_000);

        // Launches 0 and 1 ran; epoch 2 (written by launch 1) is committed, epoch 3's
        // manifest is damaged: the resume restarts from 2 with restart count 2.
        for launch in [0, 1] {
            events::append(
                &dir,
                &Event::Started {
                    nranks: 4,
                    launch,
                    unix_ms: 0,
                },
            )
            .unwrap();
        }
        manifest::publish(&dir, &testutil::manifest(2, 4)).unwrap();
        manifest::publish(&dir, &testutil::manifest(3, 4)).unwrap();
        std::fs::write(manifest::path(&dir, 3), b"garbage").unwrap();
        let offset = std::fs::metadata(events::path(&dir)).unwrap().len();
        check(
            &dir,
            4,
            &format!("resume_from=Some(2) committed=[3, 2] quarantined=[] first=2 offset={offset}"),
        );
        // A restart found epoch 3 damaged and quarantined it: it is no longer committed.
        let q = manifest::Quarantine {
            epoch: 3,
            unix_ms: 1,
            launch: 1,
            reasons: vec!["rank 0: bad".into()],
        };
        manifest::quarantine(&dir, &q).unwrap();
        check(
            &dir,
            4,
            &format!("resume_from=Some(2) committed=[2] quarantined=[3] first=2 offset={offset}"),
        );
        check(
            &dir,
            8,
            "error: --job-dir D/job: epoch 2 was written by 4 ranks; resume it with -n 4",
        );
        // While a run holds the directory, another is refused.
        let held = prepare(&testutil::plan(&dir, 4), 1_000).unwrap();
        check(
            &dir,
            4,
            &format!(
                "error: --job-dir D/job: in use by a running `ckpt run` (pid {} on {}, \
                 started 1970-01-01 00:00:01Z)",
                std::process::id(),
                ckpt::config::default_node()
            ),
        );
        drop(held);
        // A regular file where a parent directory should be.
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        check(
            &file.join("job"),
            1,
            "error: cannot create job directory D/job: Not a directory (os error 20)",
        );
    }

    #[test]
    fn the_job_id_is_made_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        let id = |dir: &Path| prepare(&testutil::plan(dir, 2), 1_000).unwrap().job_id;
        let first = id(&dir);
        assert_eq!(first.len(), 32, "{first}");
        assert_eq!(ckpt::identity::read_id(&dir).unwrap(), Some(first.clone()));
        // A resume, a copy and a renamed directory keep it; a new directory gets another.
        assert_eq!(id(&dir), first);
        let copy = tmp.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        std::fs::copy(dir.join(JOB_FILE), copy.join(JOB_FILE)).unwrap();
        assert_eq!(id(&copy), first);
        assert_ne!(id(&tmp.path().join("other")), first);
        // Without a recorded id (made by the library alone), the newest epoch's id is kept.
        std::fs::remove_file(dir.join(JOB_FILE)).unwrap();
        manifest::publish(&dir, &testutil::manifest(2, 2)).unwrap();
        assert_eq!(id(&dir), "job");
        assert_eq!(ckpt::identity::read_id(&dir).unwrap(), Some("job".into()));
    }

    #[test]
    fn a_request_left_by_an_earlier_run_expires() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        std::fs::create_dir_all(&dir).unwrap();
        let left = trigger::write_control(&dir, true, 5).unwrap();
        let job = prepare(&testutil::plan(&dir, 2), 1_000).unwrap();
        assert_eq!(job.expired, Some(left));
        assert_eq!(ControlState::read(&dir).unwrap().pending(), None);
        // A request made while this run holds the directory is this run's: not expired by it.
        let mine = trigger::write_control(&dir, false, 6).unwrap();
        drop(job);
        // The run ended without acting on it: the next run expires it, and only it.
        let job = prepare(&testutil::plan(&dir, 2), 1_000).unwrap();
        assert_eq!(job.expired, Some(mine));
        drop(job);
        let job = prepare(&testutil::plan(&dir, 2), 1_000).unwrap();
        assert_eq!(job.expired, None);
    }

    /// `--shared-dir` is created private if missing and recorded in `job.json`; one others
    /// can write to, or a job directory in it that is not ours alone, is refused.
    #[test]
    fn the_shared_directory_is_created_private_recorded_and_checked() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        let mut plan = testutil::plan(&dir, 2);
        let shared = tmp.path().join("pfs/me");
        plan.shared_dir = Some(shared.clone());
        let job = prepare(&plan, 1_000).unwrap();
        let mode = std::fs::metadata(&shared).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        assert_eq!(recorded_shared_dir(&dir), Some(shared.clone()));
        assert_eq!(shared_base(&dir, None), shared);
        assert_eq!(shared_base(&dir, Some(Path::new("/x"))), Path::new("/x"));
        let id = job.job_id.clone();
        drop(job);
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let mine = shared.join(&id);
        std::fs::create_dir(&mine).unwrap();
        set(&mine, 0o757);
        let e = format!("{:#}", prepare(&plan, 1_000).unwrap_err());
        let want = format!(
            "refusing shared directory of the job {}: owned by ",
            mine.display()
        );
        assert!(e.starts_with(&want) && e.contains("mode 0757"), "{e}");
        set(&mine, 0o700);
        set(&shared, 0o777);
        let e = format!("{:#}", prepare(&plan, 1_000).unwrap_err());
        let want = format!("refusing shared directory {}: owned by ", shared.display());
        assert!(e.starts_with(&want) && e.contains("mode 0777"), "{e}");
        // Without the flag the default is recorded as nothing.
        set(&shared, 0o700);
        drop(prepare(&testutil::plan(&dir, 2), 1_000).unwrap());
        assert_eq!(recorded_shared_dir(&dir), None);
        assert_eq!(shared_base(&dir, None), dir.join("shared"));
    }

    /// A job directory, or this node's `<local>/<job_id>`, that others can write to is refused
    /// before anything is written in it; a new job directory and its files are private.
    #[test]
    fn directories_others_can_write_are_refused_and_new_ones_are_private() {
        isolated(
            "jobdir::tests::directories_others_can_write_are_refused_and_new_ones_are_private",
            || {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("job");
                std::fs::create_dir(&dir).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
                let e = format!(
                    "{:#}",
                    prepare(&testutil::plan(&dir, 2), 1_000).unwrap_err()
                );
                let want = format!("refusing job directory {}: owned by ", dir.display());
                assert!(e.starts_with(&want) && e.contains("mode 0777"), "{e}");
                assert!(
                    std::fs::read_dir(&dir).unwrap().next().is_none(),
                    "nothing written"
                );
                std::fs::remove_dir(&dir).unwrap();
                let mut plan = testutil::plan(&dir, 2);
                plan.local_dir = Some(tmp.path().join("local"));
                let mine = tmp.path().join("local").join(&plan.job_id);
                std::fs::create_dir_all(&mine).unwrap();
                std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o757)).unwrap();
                let e = format!("{:#}", prepare(&plan, 1_000).unwrap_err());
                let want = format!(
                    "refusing node-local directory {}: owned by ",
                    mine.display()
                );
                assert!(e.starts_with(&want) && e.contains("mode 0757"), "{e}");
                std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
                // Created again under umask 000: still private.
                std::fs::remove_dir_all(&dir).unwrap();
                let old = unsafe_umask(0);
                let job = prepare(&plan, 1_000);
                unsafe_umask(old);
                drop(job.unwrap());
                assert_eq!(mode(&dir), 0o700);
                assert_eq!(mode(&dir.join(JOB_FILE)), 0o600);
                assert_eq!(mode(&dir.join("control")), 0o700);
                assert_eq!(mode(&lock::run_lock_path(&dir)), 0o600);
                assert_eq!(
                    std::fs::metadata(&dir).unwrap().uid(),
                    ckpt::storage::durable::euid()
                );
            },
        );
    }

    use ckpt::util::isolated_test as isolated;

    fn unsafe_umask(m: u32) -> u32 {
        // SAFETY: umask(2) only swaps the process's file mode creation mask.
        unsafe { libc::umask(m as libc::mode_t) as u32 }
    }
}
