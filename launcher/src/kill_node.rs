//! `ckpt kill-node JOB_DIR NODE`: crashes an emulated node of a job run with
//! `ckpt run --emulate-nodes`: its ranks are SIGKILLed and its node-local directory of the job
//! (`<local base>/<node>/<job_id>`) is removed, as if the machine and its disk were lost.
//!
//! A process is taken for one of the node's ranks only if its environment proves it: the job's
//! directory (`CKPT_JOB_DIR`) and id (`CKPT_JOB_ID`), the node (`CKPT_NODE`), and an Open MPI
//! rank whose block placement ([`exec_rank::node_of`]) is that node. Nothing else is touched.
//!
//! Order: the node's ranks are stopped (SIGSTOP) first, the directory removed, then the ranks
//! killed. A stopped rank writes nothing more, and mpirun notices nothing before the kill, so
//! neither a rank of the node nor a relaunch can write into the directory while it goes. Ranks
//! that appear while this runs (a rank between its start and its `exec`) are looked for again
//! before the removal.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use ckpt::env;

use crate::backend::mpirun;
use crate::exec_rank::node_name;
use crate::{jobdir, Outcome, UsageError};

/// A rank process of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Victim {
    pid: i32,
    rank: u32,
}

/// Runs `ckpt kill-node`.
pub fn run(job_dir: &Path, node: &str) -> anyhow::Result<Outcome> {
    let dir = std::path::absolute(job_dir)
        .with_context(|| format!("cannot resolve {}", job_dir.display()))?;
    let nodes = jobdir::recorded_emulation(&dir).ok_or_else(|| {
        UsageError(format!(
            "{}: no job run with --emulate-nodes recorded there (job.json); kill-node only \
             acts on emulated nodes",
            dir.display()
        ))
    })?;
    if !(0..nodes).any(|k| node_name(k) == node) {
        return Err(UsageError(format!(
            "{node}: not a node of this job (its nodes are node0 to {})",
            node_name(nodes - 1)
        ))
        .into());
    }
    let job_id = match ckpt::identity::read_id(&dir) {
        Ok(Some(id)) => id,
        Ok(None) => bail!("{}: job.json records no job id", dir.display()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the job id in {}", dir.display()))
        }
    };
    let proof = Proof {
        job_dir: dir.clone(),
        job_id: job_id.clone(),
        node: node.to_owned(),
        nodes,
    };
    let base = jobdir::recorded_local_dir(&dir).unwrap_or_else(|| dir.join("local"));
    let target = base.join(node).join(&job_id);

    let victims = stop_all(&proof);
    let removed = remove(&target);
    for v in &victims {
        signal(v.pid, libc::SIGKILL);
    }
    if victims.is_empty() {
        outln!("no live rank of job {job_id} on {node}");
    } else {
        let named: Vec<String> = victims
            .iter()
            .map(|v| format!("rank {} (pid {})", v.rank, v.pid))
            .collect();
        outln!("killed on {node}: {}", named.join(", "));
    }
    match removed {
        Ok(true) => outln!("removed {}", target.display()),
        Ok(false) => outln!("nothing to remove: {} does not exist", target.display()),
        Err(e) => return Err(e),
    }
    Ok(Outcome::Success)
}

/// What a process's environment must show to be one of the node's ranks.
#[derive(Debug)]
struct Proof {
    job_dir: PathBuf,
    job_id: String,
    node: String,
    nodes: u32,
}

impl Proof {
    /// The rank, if the environment `environ` (NUL-separated `NAME=value`) proves a rank of
    /// this job on this node.
    fn rank_of(&self, environ: &[u8]) -> Option<u32> {
        let get = |name: &str| {
            environ.split(|b| *b == 0).find_map(|var| {
                var.strip_prefix(name.as_bytes())?
                    .strip_prefix(b"=")
                    .map(OsStr::from_bytes)
            })
        };
        let num = |name: &str| get(name)?.to_str()?.parse::<u32>().ok();
        let rank = num(mpirun::RANK_VAR)?;
        let size = num(mpirun::SIZE_VAR)?;
        let placed = self.nodes <= size
            && rank < size
            && crate::migrate::node_for(&self.job_dir, rank, size, self.nodes) == self.node;
        let same_dir = get(env::JOB_DIR).is_some_and(|d| same_dir(Path::new(d), &self.job_dir));
        (placed
            && same_dir
            && get(env::JOB_ID) == Some(OsStr::new(&self.job_id))
            && get(env::NODE) == Some(OsStr::new(&self.node)))
        .then_some(rank)
    }
}

/// Whether two paths name the same directory (equal, or the same once resolved).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Stops every rank process of the node, looking again until a pass finds no new one (at
/// most a few passes); returns them, by rank.
fn stop_all(proof: &Proof) -> Vec<Victim> {
    let mut all: Vec<Victim> = Vec::new();
    for _ in 0..5 {
        let new: Vec<Victim> = scan(proof)
            .into_iter()
            .filter(|v| !all.contains(v))
            .collect();
        if new.is_empty() {
            break;
        }
        for v in &new {
            signal(v.pid, libc::SIGSTOP);
        }
        all.extend(new);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    all.sort_by_key(|v| (v.rank, v.pid));
    all
}

/// The processes of this machine that `proof` accepts.
fn scan(proof: &Proof) -> Vec<Victim> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            proof.rank_of(&environ).map(|rank| Victim { pid, rank })
        })
        .collect()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Removes the node's directory of the job, refusing a link at it or at its parent (the node
/// directory) and a directory not ours; `Ok(false)` if it does not exist. `remove_dir_all`
/// does not follow links inside it.
fn remove(target: &Path) -> anyhow::Result<bool> {
    let node_dir = target.parent().unwrap_or(target);
    for p in [node_dir, target] {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                bail!(
                    "not removing {}: {} is a symbolic link",
                    target.display(),
                    p.display()
                )
            }
            Ok(m) if !m.is_dir() => {
                bail!(
                    "not removing {}: {} is not a directory",
                    target.display(),
                    p.display()
                )
            }
            Ok(m) if m.uid() != ckpt::storage::durable::euid() => bail!(
                "not removing {}: {} is owned by {}, not by you",
                target.display(),
                p.display(),
                ckpt::storage::durable::user_name(m.uid())
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
    std::fs::remove_dir_all(target)
        .with_context(|| format!("cannot remove {}", target.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof() -> Proof {
        Proof {
            job_dir: "/j/job".into(),
            job_id: "abc".into(),
            node: "node1".into(),
            nodes: 4,
        }
    }

    fn environ(vars: &[&str]) -> Vec<u8> {
        vars.join("\0").into_bytes()
    }

    const RANK3: &[&str] = &[
        "PATH=/bin",
        "CKPT_JOB_DIR=/j/job",
        "CKPT_JOB_ID=abc",
        "CKPT_NODE=node1",
        "OMPI_COMM_WORLD_RANK=3",
        "OMPI_COMM_WORLD_SIZE=8",
    ];

    #[test]
    fn only_a_proven_rank_of_the_node_is_a_victim() {
        let p = proof();
        assert_eq!(p.rank_of(&environ(RANK3)), Some(3));
        // Each proof element missing or different: not a victim.
        for (i, other) in [
            (1, "CKPT_JOB_DIR=/j/other"),
            (2, "CKPT_JOB_ID=abd"),
            (3, "CKPT_NODE=node2"),
            (4, "OMPI_COMM_WORLD_RANK=4"), // rank 4 of 8 is on node2
            (5, "OMPI_COMM_WORLD_SIZE=4"), // rank 3 of 4 is on node3
            (4, "OMPI_COMM_WORLD_RANK=x"),
        ] {
            let mut vars = RANK3.to_vec();
            vars[i] = other;
            assert_eq!(p.rank_of(&environ(&vars)), None, "{other}");
            vars.remove(i);
            assert_eq!(p.rank_of(&environ(&vars)), None, "without {i}");
        }
        // A prefix of a name is not the name.
        let mut vars = RANK3.to_vec();
        vars[3] = "CKPT_NODEX=node1";
        assert_eq!(p.rank_of(&environ(&vars)), None);
    }

    #[test]
    fn removal_refuses_links_and_reports_absence() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let target = base.join("node1").join("abc");
        assert!(!remove(&target).unwrap());
        std::fs::create_dir_all(target.join("epoch-00000001")).unwrap();
        std::fs::write(target.join("epoch-00000001/rank-000002.ckpt"), b"x").unwrap();
        // A link inside is removed, not followed.
        let outside = base.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, target.join("link")).unwrap();
        assert!(remove(&target).unwrap());
        assert!(!target.exists());
        assert!(outside.join("keep").exists());
        // A link at the node directory or at the job's directory is refused.
        std::fs::create_dir_all(outside.join("abc")).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("node2")).unwrap();
        let e = remove(&base.join("node2").join("abc")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        std::fs::create_dir(base.join("node3")).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("node3").join("abc")).unwrap();
        let e = remove(&base.join("node3").join("abc")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(outside.join("abc").exists() && outside.join("keep").exists());
    }
}
