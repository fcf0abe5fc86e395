//! Recovery of lost rank files at restart, before an epoch is restored: every rank checks its
//! own L1 file; a rank whose file is missing or damaged on its node (the node was lost or
//! replaced, or the rank now runs elsewhere) gets it from the cheapest copy that exists: the
//! partner copy (L2, sent over MPI by its holder), else the shared copy (L4). The file is
//! written back to the rank's node-local storage (durably, like an L1 write), so the restore
//! then reads it as usual, with all its checks, and the next failure finds it there.
//!
//! Which copies exist is decided from what every rank found (gathered by rank 0 and
//! broadcast), so every rank takes the same plan ([`plan`], pure and table-tested). A rank
//! with no copy left anywhere is not recovered: its restore then fails as before, and the
//! ranks fall back to an older epoch together.

use std::collections::VecDeque;
use std::io::Read;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::events::{self, Event};
use crate::format::{FileIdentity, RankFileReader};
use crate::inflight::InFlight;
use crate::manifest::{Level, Manifest};
use crate::stall::{self, Watch};
use crate::storage::copies::{self, CopyWriter, Places};
use crate::storage::durable;
use crate::transport;
use crate::Ctx;

/// Bytes per message of a recovery transfer, and messages in flight per transfer.
const CHUNK: usize = 4 << 20;
const WINDOW: usize = 2;
/// Tag of recovery data on the library's communicator (only recovery sends there while a
/// restore runs, and each pair of ranks has at most one transfer).
const TAG_RECOVER: i32 = 17;

/// What one rank found of epoch E's copies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Found {
    /// It could read the epoch's manifest (without it, no rank recovers anything).
    pub manifest: bool,
    /// Its own L1 file is on its node and matches the manifest.
    pub local: bool,
    /// Its L4 copy is on shared storage and matches the manifest.
    pub shared: bool,
    /// Ranks whose L2 copies it holds, each matching the manifest.
    pub holds: Vec<u32>,
}

/// Where a rank's file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Its own L1 file: nothing to do.
    Local,
    /// The partner copy held by this rank.
    Partner(u32),
    /// The shared copy.
    Shared,
    /// No copy anywhere.
    Lost,
}

/// The cheapest source of each rank's file: L1, else its L2 holder's copy (if the manifest
/// records L2 complete and the holder found it intact), else L4 (if recorded and found).
pub(crate) fn plan(m: &Manifest, found: &[Found]) -> Vec<Source> {
    (0..found.len())
        .map(|r| {
            let f = &found[r];
            if f.local {
                return Source::Local;
            }
            let holder = m
                .copies
                .partner
                .get(r)
                .copied()
                .filter(|_| m.has(Level::Partner));
            if let Some(h) = holder {
                if found
                    .get(h as usize)
                    .is_some_and(|hf| hf.holds.contains(&(r as u32)))
                {
                    return Source::Partner(h);
                }
            }
            if m.has(Level::Pfs) && f.shared {
                return Source::Shared;
            }
            Source::Lost
        })
        .collect()
}

/// Whether `path` holds rank `rank`'s file of the epoch as the manifest records it (header,
/// identity, table, length and table CRC; the regions are checked when it is read).
fn intact(path: &std::path::Path, m: &Manifest, rank: u32) -> bool {
    let id = FileIdentity {
        job: m.job.clone(),
        epoch: m.epoch,
        rank,
        nranks: m.nranks,
    };
    let rec = &m.ranks[rank as usize];
    RankFileReader::open(path, &id)
        .is_ok_and(|r| r.header().file_len == rec.len && r.header().table_crc == rec.table_crc)
}

/// What this rank finds of epoch `m.epoch`'s copies.
fn look(ctx: &Ctx, places: &Places, m: &Manifest) -> Found {
    let me = ctx.rank as u32;
    let at = |level, rank| places.locate(level, m.epoch, rank);
    let local = at(Level::Local, me).is_some_and(|p| intact(&p, m, me));
    let shared =
        !local && m.has(Level::Pfs) && at(Level::Pfs, me).is_some_and(|p| intact(&p, m, me));
    let holds = if m.has(Level::Partner) {
        (0..m.nranks)
            .filter(|&r| m.copies.partner.get(r as usize) == Some(&me))
            .filter(|&r| at(Level::Partner, r).is_some_and(|p| intact(&p, m, r)))
            .collect()
    } else {
        Vec::new()
    };
    Found {
        manifest: true,
        local,
        shared,
        holds,
    }
}

/// Recovers, on every rank that lacks it, its file of epoch `epoch` (collective; `m` is the
/// epoch's manifest, if this rank could read it). Returns the plan, or `None` when every rank
/// had its own file (the common case costs one gather and one broadcast of a few bytes) or a
/// rank could not read the manifest (the restore then fails and falls back as before).
pub(crate) fn recover(
    ctx: &Ctx,
    epoch: u64,
    m: Option<&Manifest>,
    watch: &Watch,
) -> Option<Vec<Source>> {
    let places = Places::of(&ctx.cfg);
    let armed = ctx.io.arm(
        "checking copies in",
        &places.local_dir.join(&places.job_id),
        epoch,
    );
    let mine = m.map(|m| look(ctx, &places, m)).unwrap_or_default();
    drop(armed);
    let key = || format!("restore-epoch-{epoch}");
    let label = || (key(), format!("the copy census of epoch {epoch}"));
    let bytes = postcard::to_stdvec(&mine).unwrap_or_default();
    let all = transport::gather_bytes(&ctx.lib, watch, &label, 0, &bytes)
        .map(|v| {
            let found: Vec<Found> = v
                .iter()
                .map(|b| postcard::from_bytes(b).unwrap_or_default())
                .collect();
            postcard::to_stdvec(&found).unwrap_or_default()
        })
        .unwrap_or_default();
    let all = transport::bcast_bytes(&ctx.lib, watch, &label, 0, all);
    let found: Vec<Found> = postcard::from_bytes(&all).unwrap_or_default();
    let m = m?;
    if found.len() != ctx.nranks as usize
        || found.iter().any(|f| !f.manifest)
        || found.iter().all(|f| f.local)
    {
        return None;
    }
    let sources = plan(m, &found);
    transfer(ctx, &places, m, &sources, watch);
    Some(sources)
}

/// One recovery transfer of this rank: a copy it sends, or its own file it receives.
enum Transfer {
    Send {
        to: i32,
        /// `None`: the copy could not be opened.
        file: Option<std::fs::File>,
        left: u64,
        sends: VecDeque<InFlight>,
    },
    Recv {
        from: i32,
        out: CopyWriter,
        left: u64,
        posted: u64,
        recvs: VecDeque<InFlight>,
    },
}

/// Runs this rank's part of the plan: sends the partner copies it holds to their ranks,
/// receives or copies its own file, and writes it back to node-local storage.
fn transfer(ctx: &Ctx, places: &Places, m: &Manifest, sources: &[Source], watch: &Watch) {
    let me = ctx.rank as u32;
    let epoch = m.epoch;
    let t0 = Instant::now();
    let mut work = Vec::new();
    let mut errors = Vec::new();
    for (r, s) in sources.iter().enumerate() {
        if *s != Source::Partner(me) {
            continue;
        }
        let path = places
            .locate(Level::Partner, epoch, r as u32)
            .unwrap_or_default();
        let file = durable::open_regular(&path)
            .map_err(|e| errors.push(format!("cannot read {}: {e}", path.display())))
            .ok();
        work.push(Transfer::Send {
            to: r as i32,
            file,
            left: m.ranks[r].len,
            sends: VecDeque::new(),
        });
    }
    let dest = places.locate(Level::Local, epoch, me).unwrap_or_default();
    let level = match sources[me as usize] {
        Source::Partner(h) => match CopyWriter::create(&dest) {
            Ok(out) => {
                work.push(Transfer::Recv {
                    from: h as i32,
                    out,
                    left: m.ranks[me as usize].len,
                    posted: 0,
                    recvs: VecDeque::new(),
                });
                Some(Level::Partner)
            }
            Err(e) => {
                errors.push(format!("cannot create {}: {e}", dest.display()));
                None
            }
        },
        Source::Shared => {
            let src = places.locate(Level::Pfs, epoch, me).unwrap_or_default();
            let _armed = ctx.io.arm("recovering from L4", &src, epoch);
            match copies::copy_file(&src, &dest, CHUNK) {
                Ok(_) => Some(Level::Pfs),
                Err(e) => {
                    errors.push(format!(
                        "cannot copy {} to {}: {e}",
                        src.display(),
                        dest.display()
                    ));
                    None
                }
            }
        }
        Source::Local | Source::Lost => None,
    };
    run(ctx, &mut work, watch, epoch, &mut errors);
    for t in work {
        if let Transfer::Recv { out, .. } = t {
            let _armed = ctx.io.arm("writing back", out.dest(), epoch);
            if let Err(e) = out.finish() {
                errors.push(format!("cannot write back {}: {e}", dest.display()));
            }
        }
    }
    for e in &errors {
        eprintln!("[ckpt rank {me}] recovery of epoch {epoch}: {e}");
    }
    if let (Some(level), true) = (level, errors.is_empty()) {
        let bytes = m.ranks[me as usize].len;
        let _ = events::append(
            &ctx.cfg.job_dir,
            &Event::Recovered {
                epoch,
                rank: me,
                node: ctx.cfg.node.clone(),
                level,
                bytes,
                secs: t0.elapsed().as_secs_f64(),
            },
        );
    }
}

/// Reads up to `n` bytes from `file`, padded with zeros past its end, on an error, or without
/// a file (the receiver is waiting for the bytes; zeros fail its checks).
fn fill(file: &mut Option<std::fs::File>, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let Some(file) = file else { return buf };
    let mut got = 0;
    while got < n {
        match file.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    buf
}

/// Drives every transfer of this rank together (a rank may send a copy and receive its own
/// file at once), each wait under the deadline, naming the peer.
fn run(ctx: &Ctx, work: &mut [Transfer], watch: &Watch, epoch: u64, errors: &mut Vec<String>) {
    let step = |work: &mut [Transfer], errors: &mut Vec<String>| -> Option<(i32, String)> {
        let mut waiting = None;
        for t in work.iter_mut() {
            match t {
                Transfer::Send {
                    to,
                    file,
                    left,
                    sends,
                } => {
                    for s in sends.iter_mut() {
                        s.test();
                    }
                    while sends.front().is_some_and(InFlight::done) {
                        sends.pop_front();
                    }
                    while *left > 0 && sends.len() < WINDOW {
                        let n = (*left).min(CHUNK as u64) as usize;
                        sends.push_back(InFlight::send(&ctx.lib, *to, TAG_RECOVER, fill(file, n)));
                        *left -= n as u64;
                    }
                    if *left > 0 || !sends.is_empty() {
                        waiting.get_or_insert((
                            *to,
                            format!("the recovery of rank {to}'s file of epoch {epoch} (sending)"),
                        ));
                    }
                }
                Transfer::Recv {
                    from,
                    out,
                    left,
                    posted,
                    recvs,
                } => {
                    while *posted < *left && recvs.len() < WINDOW {
                        let n = (*left - *posted).min(CHUNK as u64) as usize;
                        recvs.push_back(InFlight::recv(&ctx.lib, *from, TAG_RECOVER, n));
                        *posted += n as u64;
                    }
                    while let Some(chunk) = recvs.front_mut().and_then(InFlight::test) {
                        recvs.pop_front();
                        if let Err(e) = out.write(&chunk) {
                            errors.push(format!("cannot write {}: {e}", out.dest().display()));
                        }
                    }
                    if *posted < *left || !recvs.is_empty() {
                        waiting.get_or_insert((
                            *from,
                            format!("the recovery of this rank's file of epoch {epoch} from rank {from}"),
                        ));
                    }
                }
            }
        }
        waiting
    };
    while let Some((late, what)) = step(work, errors) {
        stall::wait_on_rank(
            &ctx.lib,
            watch,
            late,
            || what.clone(),
            || step(work, errors).map(|w| w.0) != Some(late),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Copies, RankRecord};

    fn manifest(levels: &[Level], partner: &[u32]) -> Manifest {
        Manifest {
            job: "j".into(),
            epoch: 2,
            nranks: partner.len().max(4) as u32,
            created_unix_ms: 0,
            poll: 0,
            launch: 0,
            levels: levels.to_vec(),
            ranks: (0..4)
                .map(|r| RankRecord {
                    node: format!("n{}", r / 2),
                    file: format!("j/epoch-00000002/rank-{r:06}.ckpt"),
                    len: 100,
                    table_crc: 0,
                    payload: 10,
                    logged: 0,
                    write_secs: 0.0,
                })
                .collect(),
            total_secs: 0.0,
            copies: Copies {
                planned: levels
                    .iter()
                    .copied()
                    .filter(|&l| l != Level::Local)
                    .collect(),
                partner: partner.to_vec(),
                parity: Vec::new(),
            },
        }
    }

    fn found(local: bool, shared: bool, holds: &[u32]) -> Found {
        Found {
            manifest: true,
            local,
            shared,
            holds: holds.to_vec(),
        }
    }

    /// Node n1 (ranks 2, 3) lost; partners: 0,1 -> 2,3; 2,3 -> 0,1.
    #[test]
    fn the_cheapest_copy_that_exists_is_chosen() {
        use Source::*;
        let l12 = manifest(&[Level::Local, Level::Partner], &[2, 3, 0, 1]);
        let l124 = manifest(&[Level::Local, Level::Partner, Level::Pfs], &[2, 3, 0, 1]);
        let l14 = manifest(&[Level::Local, Level::Pfs], &[]);
        let lost_n1 = [
            found(true, false, &[2]),
            found(true, false, &[3]),
            found(false, true, &[]),
            found(false, true, &[]),
        ];
        let table: Vec<(&str, Manifest, Vec<Found>, Vec<Source>)> = vec![
            (
                "all local",
                l12.clone(),
                vec![
                    found(true, false, &[2]),
                    found(true, false, &[3]),
                    found(true, false, &[0]),
                    found(true, false, &[1]),
                ],
                vec![Local, Local, Local, Local],
            ),
            (
                "L2 first",
                l124.clone(),
                lost_n1.to_vec(),
                vec![Local, Local, Partner(0), Partner(1)],
            ),
            (
                "L2 without L4",
                l12.clone(),
                lost_n1.to_vec(),
                vec![Local, Local, Partner(0), Partner(1)],
            ),
            (
                "L4 only",
                l14.clone(),
                lost_n1.to_vec(),
                vec![Local, Local, Shared, Shared],
            ),
            (
                "holder lost its copy: L4",
                l124.clone(),
                vec![
                    found(true, false, &[]),
                    found(true, false, &[3]),
                    found(false, true, &[]),
                    found(false, true, &[]),
                ],
                vec![Local, Local, Shared, Partner(1)],
            ),
            (
                "L2 recorded incomplete: not used",
                manifest(&[Level::Local], &[2, 3, 0, 1]),
                lost_n1.to_vec(),
                vec![Local, Local, Lost, Lost],
            ),
            (
                "both nodes lost, no L4",
                l12.clone(),
                vec![
                    found(false, false, &[]),
                    found(false, false, &[]),
                    found(false, false, &[]),
                    found(false, false, &[]),
                ],
                vec![Lost, Lost, Lost, Lost],
            ),
        ];
        for (name, m, f, want) in table {
            assert_eq!(plan(&m, &f), want, "{name}");
        }
    }
}
