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
        spares: None,
        spread_on_failure: false,
        nodes: None,
        srun: None,
        l2_every: None,
        l4_every: None,
        level_flags: Default::default(),
        shared_dir: None,
        levels: Default::default(),
        fault: None,
        quiet_after: None,
        start_timeout: None,
        mpirun: "/usr/bin/mpirun".into(),
        mpirun_env_args: vec!["--mca".into(), "btl".into(), "self".into()],
        mpirun_args: vec!["--bind-to".into(), "none".into()],
        program: "/bin/true".into(),
        args: vec!["a b".into()],
        inherited: vec![],
        signal: Some(libc::SIGUSR1),
        exit_signal: Some(libc::SIGUSR1),
        end_time: crate::deadline::EndSource::None,
        end_margin: crate::deadline::DEFAULT_MARGIN,
        exec_rank: None,
        access: ckpt::storage::durable::Access::Private,
        hold: None,
    }
}

/// Writes real rank files for `m` in job directory `dir` as the ranks of a job without
/// `job.json` would: each rank's L1 file under `<dir>/local/<node>`, and a copy at every other
/// complete level (L2 under the holder's node, L4 under `<dir>/shared`); fills in their
/// lengths and table CRCs and publishes `m`.
pub fn write_epoch(dir: &std::path::Path, m: &mut Manifest) {
    use ckpt::format::{FileIdentity, RankFileWriter, RegionKind};
    use ckpt::storage::copies::Places;
    let places = |node: &str| Places {
        local_dir: dir.join("local").join(node),
        shared_dir: dir.join("shared"),
        job_id: m.job.clone(),
    };
    for rank in 0..m.ranks.len() {
        let node = m.ranks[rank].node.clone();
        let l1 = places(&node)
            .locate(Level::Local, m.epoch, rank as u32)
            .unwrap();
        std::fs::create_dir_all(l1.parent().unwrap()).unwrap();
        let id = FileIdentity {
            job: m.job.clone(),
            epoch: m.epoch,
            rank: rank as u32,
            nranks: m.nranks,
        };
        let mut w = RankFileWriter::create(&l1, id, &node).unwrap();
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| (i as u64 * m.epoch) as u8 ^ rank as u8)
            .collect();
        w.region("u", RegionKind::Bulk { elem_size: 1 }, &data)
            .unwrap();
        let summary = w.finish().unwrap();
        let rec = &mut m.ranks[rank];
        (rec.len, rec.table_crc, rec.payload) = (summary.len, summary.table_crc, summary.payload);
        for &level in &m.levels {
            let holder = match level {
                Level::Partner => m.ranks[m.copies.partner[rank] as usize].node.clone(),
                Level::Pfs => node.clone(),
                _ => continue,
            };
            let copy = places(&holder).locate(level, m.epoch, rank as u32).unwrap();
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            std::fs::copy(&l1, &copy).unwrap();
        }
    }
    ckpt::manifest::publish(dir, m).unwrap();
}

/// Records L3 complete in `m` (written by [`write_epoch`]) with the parity groups `groups`
/// (`k` parity shards per set) and writes every holder's parity file as the ranks would:
/// header, then the shard encoded from the members' L1 segments. Republishes `m`.
pub fn write_parity(dir: &std::path::Path, m: &mut Manifest, groups: &[Vec<u32>], k: u16) {
    use ckpt::storage::copies::Places;
    use ckpt::storage::parity::{self, ParityHeader};
    use ckpt::storage::parity_sets::{header_group, ParitySets};
    m.copies.parity = groups
        .iter()
        .map(|members| ckpt::manifest::ParityGroup {
            members: members.clone(),
            k,
        })
        .collect();
    if !m.levels.contains(&Level::Parity) {
        m.levels.push(Level::Parity);
    }
    let places = |node: &str| Places {
        local_dir: dir.join("local").join(node),
        shared_dir: dir.join("shared"),
        job_id: m.job.clone(),
    };
    for (g, members) in groups.iter().enumerate() {
        let sets = ParitySets::new(members.clone(), k).unwrap();
        let files: Vec<Vec<u8>> = members
            .iter()
            .map(|&r| {
                let node = &m.ranks[r as usize].node;
                std::fs::read(places(node).locate(Level::Local, m.epoch, r).unwrap()).unwrap()
            })
            .collect();
        let lens: Vec<u64> = files.iter().map(|f| f.len() as u64).collect();
        for p in 0..sets.count() {
            let layout = sets.layout(p, &lens, parity::DEFAULT_CHUNK).unwrap();
            let segs: Vec<&[u8]> = sets
                .data(p)
                .iter()
                .map(|&d| {
                    let r = sets.segment(lens[d], sets.segment_of(d, p).unwrap());
                    &files[d][r.start as usize..r.end as usize]
                })
                .collect();
            let shards = parity::encode(&layout, &segs).unwrap();
            for (t, h) in sets.holders(p).into_iter().enumerate() {
                let header = ParityHeader {
                    epoch: m.epoch,
                    group: header_group(g, p),
                    index: t as u16,
                    layout: layout.clone(),
                };
                let node = &m.ranks[members[h] as usize].node;
                let path = places(node).parity_path(m.epoch, g as u32, p as u32);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let mut bytes = header.encode();
                bytes.extend_from_slice(&shards[t]);
                std::fs::write(path, bytes).unwrap();
            }
        }
    }
    ckpt::manifest::publish(dir, m).unwrap();
}
