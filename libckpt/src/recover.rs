//! Recovery of lost rank files at restart, before an epoch is restored: every rank checks its
//! own L1 file; a rank whose file is missing or damaged on its node (the node was lost or
//! replaced, or the rank now runs elsewhere) gets it from the cheapest copy that exists: its
//! L1 file on the node that wrote it (a migrated rank: sent by a rank running there now), the
//! partner copy (L2, sent over MPI by its holder), a rebuild from its group (L3), else the
//! shared copy (L4). The file is written to the rank's node-local storage; the restore reads
//! it with all its checks, from its temporary file when it was received or rebuilt, and it is
//! made durable under its L1 name after the restore, while the application runs
//! (`writeback.rs`), so the next failure finds it there.
//!
//! Which copies exist is decided from what every rank found (gathered by rank 0 and
//! broadcast), so every rank takes the same plan ([`plan`], pure and table-tested). A rank
//! with no copy left anywhere is not recovered: its restore then fails as before, and the
//! ranks fall back to an older epoch together.

use std::collections::VecDeque;
use std::io::Read;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::background::{parity_header_group, TAG_SET};
use crate::events::{self, Event};
use crate::format::{FileIdentity, RankFileReader};
use crate::handoff::Handed;
use crate::inflight::{InFlight, RecvStream, SendStream};
use crate::manifest::{Level, Manifest};
use crate::stall::{self, Watch};
use crate::storage::copies::{self, CopyWriter, Places, Unsynced};
use crate::storage::durable;
use crate::storage::parity::{GroupLayout, ParityHeader, Rebuilder};
use crate::storage::parity_sets::ParitySets;
use crate::transport;
use crate::Ctx;

/// Bytes per message of a recovery transfer, and messages in flight per transfer.
const CHUNK: usize = 4 << 20;
const WINDOW: usize = 4;
/// Tag of recovery data on the library's communicator (only recovery sends there while a
/// restore runs, and each pair of ranks has at most one transfer per tag): partner copies,
/// and the shards of L3 set `p` with `TAG_REBUILD + p`.
const TAG_RECOVER: i32 = 17;
const TAG_REBUILD: i32 = TAG_SET + 100;

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
    /// L3 parity shards it holds intact: (group, set).
    pub parity: Vec<(u32, u32)>,
    /// Other ranks whose L1 files are intact in this rank's node-local directory (they were
    /// written on this node; their ranks may run elsewhere now).
    pub others: Vec<u32>,
}

/// Where a rank's file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Its own L1 file: nothing to do.
    Local,
    /// Its L1 file on the node that wrote it, sent by this rank, which runs there now.
    Moved(u32),
    /// The partner copy held by this rank.
    Partner(u32),
    /// A rebuild from the rank's L3 group.
    Parity,
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
            if let Some(h) = found.iter().position(|o| o.others.contains(&(r as u32))) {
                return Source::Moved(h as u32);
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
            if m.has(Level::Parity) && rebuildable(m, found, r as u32) {
                return Source::Parity;
            }
            if m.has(Level::Pfs) && f.shared {
                return Source::Shared;
            }
            Source::Lost
        })
        .collect()
}

/// `rank`'s L3 group in the manifest: its index, `rank`'s index among the members, the sets.
fn group_of(m: &Manifest, rank: u32) -> Option<(usize, usize, ParitySets)> {
    let g = m
        .copies
        .parity
        .iter()
        .position(|g| g.members.contains(&rank))?;
    let group = &m.copies.parity[g];
    let mi = group.members.iter().position(|&r| r == rank)?;
    let sets = ParitySets::new(group.members.clone(), group.k).ok()?;
    Some((g, mi, sets))
}

/// The shards of set `p` that are gone: data members without their L1 file, holders without
/// their intact parity shard (shard indices: data in layout order, then parity).
fn lost_shards(sets: &ParitySets, g: usize, p: usize, found: &[Found]) -> Vec<usize> {
    let members = sets.members();
    let has_l1 = |m: usize| found.get(members[m] as usize).is_some_and(|f| f.local);
    let has_shard = |h: usize| {
        found
            .get(members[h] as usize)
            .is_some_and(|f| f.parity.contains(&(g as u32, p as u32)))
    };
    let data = sets.data(p);
    let mut lost: Vec<usize> = (0..data.len()).filter(|&i| !has_l1(data[i])).collect();
    for (t, h) in sets.holders(p).into_iter().enumerate() {
        if !has_shard(h) {
            lost.push(data.len() + t);
        }
    }
    lost
}

/// Whether `rank`'s file can be rebuilt from its group: in every set covering one of its
/// segments, at most `k` shards are gone.
fn rebuildable(m: &Manifest, found: &[Found], rank: u32) -> bool {
    let Some((g, mi, sets)) = group_of(m, rank) else {
        return false;
    };
    sets.sets_with_data(mi)
        .iter()
        .all(|&(p, _)| lost_shards(&sets, g, p, found).len() <= sets.k())
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
    let parity = match group_of(m, me).filter(|_| m.has(Level::Parity)) {
        Some((g, mi, sets)) => (0..sets.count())
            .filter(|&p| sets.shard_held(mi, p).is_some())
            .filter(|&p| parity_intact(places, m, &sets, g, mi, p).is_some())
            .map(|p| (g as u32, p as u32))
            .collect(),
        None => Vec::new(),
    };
    // Files written on this node by ranks that may have moved away.
    let others = (0..m.nranks)
        .filter(|&r| r != me && m.ranks[r as usize].node == ctx.cfg.node)
        .filter(|&r| at(Level::Local, r).is_some_and(|p| intact(&p, m, r)))
        .collect();
    Found {
        manifest: true,
        local,
        shared,
        holds,
        parity,
        others,
    }
}

/// Where the parity shard this rank (member `mi`) holds of set `p` starts in its file, if the
/// file is there with the header it must have and its full length.
fn parity_intact(
    places: &Places,
    m: &Manifest,
    sets: &ParitySets,
    g: usize,
    mi: usize,
    p: usize,
) -> Option<(std::path::PathBuf, u64, GroupLayout)> {
    let path = places.parity_path(m.epoch, g as u32, p as u32);
    let lens: Vec<u64> = sets
        .members()
        .iter()
        .map(|&r| m.ranks[r as usize].len)
        .collect();
    let layout = sets.layout(p, &lens, CHUNK as u32).ok()?;
    let mut file = durable::open_regular(&path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut head = vec![0u8; 40 + 12 * layout.members().len()];
    file.read_exact(&mut head).ok()?;
    let (h, hlen) = ParityHeader::decode(&head).ok()?;
    let ok = h.epoch == m.epoch
        && h.group == parity_header_group(g, p)
        && Some(usize::from(h.index)) == sets.shard_held(mi, p)
        && h.layout == layout
        && size == hlen as u64 + layout.parity_len();
    ok.then_some((path, hlen as u64, layout))
}

/// What the recovery did for this rank.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Why no level holds this rank's file (for its restore error).
    pub lost: Option<String>,
    /// This rank's file, received or rebuilt but not yet durable: the restore reads it from
    /// its temporary file, and it is made durable under its L1 name after the restore, while
    /// the application runs (its sources stay intact until then).
    pub unsynced: Option<Unsynced>,
}

/// Recovers, on every rank that lacks it, its file of epoch `epoch` (collective; `m` is the
/// epoch's manifest, if this rank could read it). Nothing happens when every rank has its own
/// file (the common case costs one gather and one broadcast of a few bytes) or a rank could
/// not read the manifest (the restore then fails and falls back as before).
pub(crate) fn recover(
    ctx: &Ctx,
    epoch: u64,
    m: Option<&Manifest>,
    handed: &mut Option<Handed>,
    watch: &Watch,
) -> Recovery {
    let places = Places::of(&ctx.cfg);
    let armed = ctx.io.arm(
        "checking copies in",
        &places.local_dir.join(&places.job_id),
        epoch,
    );
    let mut mine = m.map(|m| look(ctx, &places, m)).unwrap_or_default();
    // A file handed off to this rank counts as its own once it passes the same checks.
    let handed = match (m, handed.take()) {
        (Some(m), Some(h)) if !mine.local && h.epoch == epoch => {
            mine.local = intact(h.file.path(), m, ctx.rank as u32);
            mine.local.then_some(h.file)
        }
        (_, h) => {
            *handed = h.filter(|h| h.epoch != epoch);
            None
        }
    };
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
    let Some(m) = m else {
        return Recovery::default();
    };
    if found.len() != ctx.nranks as usize
        || found.iter().any(|f| !f.manifest)
        || found.iter().all(|f| f.local)
    {
        return Recovery {
            lost: None,
            unsynced: handed,
        };
    }
    let sources = plan(m, &found);
    let unsynced = transfer(ctx, &places, m, &sources, &found, watch).or(handed);
    let me = ctx.rank as u32;
    Recovery {
        lost: (sources.get(me as usize) == Some(&Source::Lost)).then(|| why_lost(m, &found, me)),
        unsynced,
    }
}

/// Why no level holds `rank`'s file of the epoch: what each level lacks.
pub(crate) fn why_lost(m: &Manifest, found: &[Found], rank: u32) -> String {
    let mut why = vec![format!(
        "no level holds it: L1 is not on this rank's node (written on {})",
        m.ranks.get(rank as usize).map_or("?", |r| r.node.as_str())
    )];
    why.push(match m.copies.partner.get(rank as usize) {
        Some(h) if m.has(Level::Partner) => {
            format!("L2: its holder rank {h} has no intact copy")
        }
        _ => "L2: not complete for this epoch".into(),
    });
    why.push(match group_of(m, rank).filter(|_| m.has(Level::Parity)) {
        Some((g, mi, sets)) => {
            let worst = sets
                .sets_with_data(mi)
                .iter()
                .map(|&(p, _)| lost_shards(&sets, g, p, found).len())
                .max()
                .unwrap_or(0);
            let gone: Vec<u32> = sets
                .members()
                .iter()
                .copied()
                .filter(|&r| !found.get(r as usize).is_some_and(|f| f.local))
                .collect();
            format!(
                "L3: group {g} lost the files of ranks {gone:?} ({worst} shards of a set gone, \
                 {} tolerated)",
                sets.k()
            )
        }
        None => "L3: not complete for this epoch".into(),
    });
    why.push(match m.has(Level::Pfs) {
        true => "L4: its copy is missing or damaged".into(),
        false => "L4: not flushed for this epoch".into(),
    });
    why.join("; ")
}

/// One recovery transfer of this rank: a copy it sends, or its own file it receives.
enum Transfer {
    /// Bytes of a file this rank holds (zeros if it cannot be read: the receiver's checks
    /// fail and it reports why).
    Send(SendStream),
    /// This rank's file rebuilt from its L3 group, set by set.
    Rebuild {
        out: CopyWriter,
        sets: VecDeque<RebuildSet>,
        failed: Option<String>,
    },
    Recv {
        from: i32,
        out: CopyWriter,
        left: u64,
        posted: u64,
        recvs: VecDeque<InFlight>,
        /// Buffers of chunks already written, for the next receives.
        spare: Vec<Vec<u8>>,
    },
}

/// Runs this rank's part of the plan: sends the partner copies it holds to their ranks, and
/// receives, rebuilds or copies its own file. A file copied from L4 is durable on return; one
/// received or rebuilt is returned before its fsync (see [`Recovery::unsynced`]).
fn transfer(
    ctx: &Ctx,
    places: &Places,
    m: &Manifest,
    sources: &[Source],
    found: &[Found],
    watch: &Watch,
) -> Option<Unsynced> {
    let me = ctx.rank as u32;
    let epoch = m.epoch;
    let t0 = Instant::now();
    let mut work = Vec::new();
    let mut errors = Vec::new();
    // Whole files this rank sends: partner copies it holds, and files written on its node by
    // ranks that moved away.
    for (r, s) in sources.iter().enumerate() {
        let level = match *s {
            Source::Partner(h) if h == me => Level::Partner,
            Source::Moved(h) if h == me => Level::Local,
            _ => continue,
        };
        let path = places.locate(level, epoch, r as u32).unwrap_or_default();
        work.push(send_from(
            &path,
            r as i32,
            TAG_RECOVER,
            0..m.ranks[r].len,
            &mut errors,
        ));
    }
    parity_sends(places, m, sources, found, me, &mut work, &mut errors);
    let dest = places.locate(Level::Local, epoch, me).unwrap_or_default();
    let level = match sources[me as usize] {
        Source::Moved(h) | Source::Partner(h) => match CopyWriter::create(&dest) {
            Ok(out) => {
                work.push(Transfer::Recv {
                    from: h as i32,
                    out,
                    left: m.ranks[me as usize].len,
                    posted: 0,
                    recvs: VecDeque::new(),
                    spare: Vec::new(),
                });
                Some(match sources[me as usize] {
                    Source::Moved(_) => Level::Local,
                    _ => Level::Partner,
                })
            }
            Err(e) => {
                errors.push(format!("cannot create {}: {e}", dest.display()));
                None
            }
        },
        Source::Parity => match rebuild_of(m, found, me, &dest) {
            Ok(t) => {
                work.push(t);
                Some(Level::Parity)
            }
            Err(e) => {
                errors.push(e);
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
    let mut unsynced = None;
    for t in work {
        let out = match t {
            Transfer::Recv { out, .. } => out,
            Transfer::Rebuild { out, failed, .. } => match failed {
                Some(e) => {
                    errors.push(e);
                    continue;
                }
                None => out,
            },
            Transfer::Send(_) => continue,
        };
        match out.unsynced() {
            Ok(u) => unsynced = Some(u),
            Err(e) => errors.push(format!("cannot write back {}: {e}", dest.display())),
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
    unsynced
}

/// Bytes `range` of `path` sent to `to` with `tag`; a file that cannot be read is reported in
/// `errors` (zeros go instead, and the receiver's checks fail).
fn send_from(
    path: &std::path::Path,
    to: i32,
    tag: i32,
    range: std::ops::Range<u64>,
    errors: &mut Vec<String>,
) -> Transfer {
    let s = SendStream::open(to, tag, path, range, CHUNK, WINDOW);
    if let Some(e) = s.error() {
        errors.push(e.to_owned());
    }
    Transfer::Send(s)
}

/// Drives every transfer of this rank together (a rank may send a copy and receive its own
/// file at once), each wait under the deadline, naming the peer.
fn run(ctx: &Ctx, work: &mut [Transfer], watch: &Watch, epoch: u64, errors: &mut Vec<String>) {
    let step = |work: &mut [Transfer], errors: &mut Vec<String>| -> Option<(i32, String)> {
        let mut waiting = None;
        for t in work.iter_mut() {
            match t {
                Transfer::Send(send) => {
                    send.progress(&ctx.lib);
                    if !send.done() {
                        let to = send.dest;
                        waiting.get_or_insert((
                            to,
                            format!("the recovery of rank {to}'s file of epoch {epoch} (sending)"),
                        ));
                    }
                }
                Transfer::Rebuild { out, sets, failed } => {
                    if let Some(late) = rebuild_step(&ctx.lib, out, sets, failed) {
                        waiting.get_or_insert((
                            late,
                            format!(
                                "the rebuild of this rank's file of epoch {epoch} from its L3 \
                                 group (a shard from rank {late})"
                            ),
                        ));
                    }
                }
                Transfer::Recv {
                    from,
                    out,
                    left,
                    posted,
                    recvs,
                    spare,
                } => {
                    while *posted < *left && recvs.len() < WINDOW {
                        let n = (*left - *posted).min(CHUNK as u64) as usize;
                        let mut buf = spare.pop().unwrap_or_default();
                        buf.resize(n, 0);
                        recvs.push_back(InFlight::recv_into(&ctx.lib, *from, TAG_RECOVER, buf));
                        *posted += n as u64;
                    }
                    while let Some(chunk) = recvs.front_mut().and_then(InFlight::test) {
                        recvs.pop_front();
                        if let Err(e) = out.write(&chunk) {
                            errors.push(format!("cannot write {}: {e}", out.dest().display()));
                        }
                        spare.push(chunk);
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

/// One L3 set of the rebuild of this rank's file.
struct RebuildSet {
    layout: GroupLayout,
    rebuilder: Rebuilder,
    /// The shards' streams, data then parity; `None` for lost shards.
    inputs: Vec<Option<RecvStream>>,
    /// This rank's position among the set's data members, and among its lost shards.
    me_data: usize,
    me_lost: usize,
    next: u64,
}

/// The sends of L3 shards this rank owes the ranks rebuilt from its group: its segment of each
/// set they need (from its L1 file) and its parity shard of those sets.
fn parity_sends(
    places: &Places,
    m: &Manifest,
    sources: &[Source],
    found: &[Found],
    me: u32,
    work: &mut Vec<Transfer>,
    errors: &mut Vec<String>,
) {
    let Some((g, my_mi, sets)) = group_of(m, me) else {
        return;
    };
    let lens: Vec<u64> = sets
        .members()
        .iter()
        .map(|&r| m.ranks[r as usize].len)
        .collect();
    let mine = found.get(me as usize).cloned().unwrap_or_default();
    for (r_mi, &r) in sets.members().iter().enumerate() {
        if sources.get(r as usize) != Some(&Source::Parity) || r == me {
            continue;
        }
        for (p, _) in sets.sets_with_data(r_mi) {
            let tag = TAG_REBUILD + p as i32;
            if let (Some(j), true) = (sets.segment_of(my_mi, p), mine.local) {
                let range = sets.segment(lens[my_mi], j);
                let l1 = places.locate(Level::Local, m.epoch, me).unwrap_or_default();
                work.push(send_from(&l1, r as i32, tag, range, errors));
            }
            if mine.parity.contains(&(g as u32, p as u32)) {
                if let Some((path, at, layout)) = parity_intact(places, m, &sets, g, my_mi, p) {
                    let range = at..at + layout.parity_len();
                    work.push(send_from(&path, r as i32, tag, range, errors));
                }
            }
        }
    }
}

/// The rebuild of this rank's file into `dest`, set by set.
fn rebuild_of(
    m: &Manifest,
    found: &[Found],
    me: u32,
    dest: &std::path::Path,
) -> Result<Transfer, String> {
    let (g, mi, sets) = group_of(m, me).ok_or("not in an L3 group")?;
    let lens: Vec<u64> = sets
        .members()
        .iter()
        .map(|&r| m.ranks[r as usize].len)
        .collect();
    let mut queue = VecDeque::new();
    for (p, _) in sets.sets_with_data(mi) {
        let layout = sets
            .layout(p, &lens, CHUNK as u32)
            .map_err(|e| e.to_string())?;
        let lost = lost_shards(&sets, g, p, found);
        let data = sets.data(p);
        let me_data = data
            .iter()
            .position(|&d| d == mi)
            .ok_or("not a data member")?;
        let me_lost = lost.iter().position(|&s| s == me_data).ok_or("not lost")?;
        let rebuilder = Rebuilder::new(layout.clone(), &lost).map_err(|e| e.to_string())?;
        let tag = TAG_REBUILD + p as i32;
        let members = sets.members();
        let mut inputs: Vec<Option<RecvStream>> = data
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                (!lost.contains(&i)).then(|| {
                    let len = layout.members()[i].len;
                    RecvStream::new(members[d] as i32, tag, len, CHUNK, WINDOW)
                })
            })
            .collect();
        for (t, h) in sets.holders(p).into_iter().enumerate() {
            inputs.push((!lost.contains(&(data.len() + t))).then(|| {
                RecvStream::new(members[h] as i32, tag, layout.parity_len(), CHUNK, WINDOW)
            }));
        }
        queue.push_back(RebuildSet {
            layout,
            rebuilder,
            inputs,
            me_data,
            me_lost,
            next: 0,
        });
    }
    let out =
        CopyWriter::create(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    Ok(Transfer::Rebuild {
        out,
        sets: queue,
        failed: None,
    })
}

/// Advances the rebuild: receives the front set's shards, rebuilds the stripes that are
/// complete and appends this rank's bytes of them. Returns the rank still waited for.
fn rebuild_step(
    comm: &mpi::topology::SimpleCommunicator,
    out: &mut CopyWriter,
    sets: &mut VecDeque<RebuildSet>,
    failed: &mut Option<String>,
) -> Option<i32> {
    while let Some(set) = sets.front_mut() {
        for s in set.inputs.iter_mut().flatten() {
            s.progress(comm);
        }
        let chunk = u64::from(set.layout.chunk());
        while set.next < set.layout.stripes() {
            let at = set.next * chunk;
            let ready = set
                .inputs
                .iter()
                .flatten()
                .all(|s| s.len() <= at || !s.got.is_empty());
            if !ready {
                break;
            }
            let stripe: Vec<Option<Vec<u8>>> = set
                .inputs
                .iter_mut()
                .map(|s| {
                    s.as_mut().map(|s| match s.len() > at {
                        true => s.got.pop_front().unwrap_or_default(),
                        false => Vec::new(),
                    })
                })
                .collect();
            let i = set.next;
            set.next += 1;
            if failed.is_some() {
                continue;
            }
            let refs: Vec<Option<&[u8]>> = stripe.iter().map(|s| s.as_deref()).collect();
            let want = set.layout.member_range(set.me_data, i);
            match set.rebuilder.rebuild_stripe(i, &refs) {
                Ok(outs) => {
                    let bytes = &outs[set.me_lost][..(want.end - want.start) as usize];
                    if let Err(e) = out.write(bytes) {
                        *failed = Some(format!("cannot write {}: {e}", out.dest().display()));
                    }
                }
                Err(e) => *failed = Some(format!("rebuild of stripe {i}: {e}")),
            }
        }
        if let Some(s) = set.inputs.iter().flatten().find(|s| !s.received()) {
            return Some(s.src);
        }
        if set.next < set.layout.stripes() {
            // Everything received, so every stripe is ready: not reached.
            return None;
        }
        sets.pop_front();
    }
    None
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
            parity: Vec::new(),
            others: Vec::new(),
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

    /// One group of ranks 0-3 with XOR parity: set p is held by rank p.
    #[test]
    fn a_rebuild_needs_at_most_k_shards_gone_in_every_set() {
        use Source::*;
        let mut m = manifest(&[Level::Local, Level::Parity], &[]);
        m.copies.parity = vec![crate::manifest::ParityGroup {
            members: vec![0, 1, 2, 3],
            k: 1,
        }];
        let with_shard = |local: bool, p: u32| Found {
            parity: vec![(0, p)],
            ..found(local, false, &[])
        };
        let one_lost = vec![
            with_shard(true, 0),
            with_shard(true, 1),
            with_shard(false, 2),
            with_shard(true, 3),
        ];
        assert_eq!(plan(&m, &one_lost), [Local, Local, Parity, Local]);
        let mut two_lost = one_lost.clone();
        two_lost[3].local = false;
        assert_eq!(plan(&m, &two_lost), [Local, Local, Lost, Lost]);
        // Rank 0 lost its shard of set 0, which covers a segment of rank 2: two shards gone.
        let mut shard_gone = one_lost.clone();
        shard_gone[0].parity.clear();
        assert_eq!(plan(&m, &shard_gone), [Local, Local, Lost, Local]);
        let why = why_lost(&m, &shard_gone, 2);
        assert!(why.contains("2 shards of a set gone, 1 tolerated"), "{why}");
        // Not recorded complete: not used.
        let mut incomplete = m.clone();
        incomplete.levels = vec![Level::Local];
        assert_eq!(plan(&incomplete, &one_lost), [Local, Local, Lost, Local]);
    }
}
