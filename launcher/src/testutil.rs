//! Fixtures shared by unit tests: manifests as rank 0 would publish them.

use ckpt::manifest::RankRecord;
use ckpt::{Level, Manifest};

/// A manifest of `epoch` for `nranks` ranks of 1 MiB each, committed at 2026-04-20 14:03:12Z.
pub fn manifest(epoch: u64, nranks: u32) -> Manifest {
    Manifest {
        job: "job".into(),
        epoch,
        nranks,
        created_unix_ms: 1_776_693_792_000,
        poll: epoch * 10,
        launch: 1,
        levels: vec![Level::Local],
        ranks: (0..nranks)
            .map(|r| RankRecord {
                node: "n0".into(),
                file: format!("job/epoch-{epoch:08}/rank-{r:06}.ckpt"),
                len: (1 << 20) + 100,
                table_crc: r,
                payload: 1 << 20,
                logged: 0,
                write_secs: 0.1,
            })
            .collect(),
        total_secs: 0.25,
        copies: Default::default(),
    }
}

/// [`manifest`] of ranks placed in blocks on `nodes` nodes `node0`, `node1`, ..., with the
/// levels beyond L1 `planned`, of which `complete` are complete on every rank (after L1). L2's
/// holder of each rank is the rank at the same position on the next node.
pub fn manifest_v2(
    epoch: u64,
    nranks: u32,
    nodes: u32,
    planned: &[Level],
    complete: &[Level],
) -> Manifest {
    let mut m = manifest(epoch, nranks);
    let per = nranks / nodes;
    for (rank, rec) in m.ranks.iter_mut().enumerate() {
        rec.node = format!("node{}", rank as u32 / per);
    }
    m.levels.extend_from_slice(complete);
    m.copies.planned = planned.to_vec();
    if complete.contains(&Level::Partner) {
        m.copies.partner = (0..nranks).map(|r| (r + per) % nranks).collect();
    }
    m
}

/// A plan for `ranks` ranks of `/bin/true` in `job_dir`, with defaults elsewhere.
pub fn plan(job_dir: &std::path::Path, ranks: u32) -> crate::plan::RunPlan {
    crate::plan::RunPlan {
        ranks,
        every: Some(ckpt::Interval::Polls(10)),
        keep: 2,
        max_restarts: 3,
        job_dir: job_dir.to_path_buf(),
        job_id: "job".into(),
        local_dir: None,
        emulate_nodes: None,
        l2_every: None,
        l4_every: None,
        shared_dir: None,
        levels: Default::default(),
        fault: None,
        quiet_after: None,
        mpirun: "/usr/bin/mpirun".into(),
        mpirun_env_args: vec!["--mca".into(), "btl".into(), "self".into()],
        mpirun_args: vec!["--bind-to".into(), "none".into()],
        program: "/bin/true".into(),
        args: vec!["a b".into()],
        inherited: vec![],
        signal: Some(libc::SIGUSR1),
        exit_signal: Some(libc::SIGUSR1),
        exec_rank: None,
        access: ckpt::storage::durable::Access::Private,
    }
}
