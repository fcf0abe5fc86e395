//! L3 of `ckpt verify`: the parity files of every group and set the manifest records
//! (`copies.parity`), found on each holder's node (`Places::parity_path`).
//!
//! Each file must exist with the header the holder wrote (epoch, group and set, shard index,
//! the layout built from the manifest's lengths) and the header's length plus one parity shard
//! (`GroupLayout::parity_len`). Where every data member of a set has a good L1 file, the set's
//! parity is recomputed from those files, stripe by stripe (`parity::Encoder`, a few 4 MiB
//! stripes in memory), and compared with each stored shard. A rank whose L1 file is bad is
//! rebuildable from L3 when, in every set covering one of its segments, at most `k` shards are
//! gone (data members without a good L1 file, holders without a good shard): the rule restart
//! applies (`recover.rs`).

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use ckpt::manifest::{Level, Manifest};
use ckpt::storage::durable;
use ckpt::storage::parity::{self, Encoder, GroupLayout, ParityHeader};
use ckpt::storage::parity_sets::{header_group, ParitySets};
use serde::Serialize;

use crate::verify::Where;

/// A parity file that is missing or fails a check.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BadParity {
    pub(crate) group: u32,
    pub(crate) set: u32,
    pub(crate) shard: u16,
    /// The rank holding it, and its node.
    pub(crate) holder: u32,
    pub(crate) node: String,
    pub(crate) path: PathBuf,
    pub(crate) error: String,
}

/// What the check of one epoch's L3 found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct L3Check {
    /// Parity files the manifest's groups call for.
    pub(crate) files: usize,
    /// Those missing or bad.
    pub(crate) bad: Vec<BadParity>,
    /// Sets whose parity was recomputed from the members' files and compared.
    pub(crate) recomputed_sets: usize,
    /// Sets not recomputed: a data member's L1 file is bad (only headers and lengths checked).
    pub(crate) unrecomputed_sets: usize,
    /// Ranks whose L1 file is bad and that L3 can rebuild.
    pub(crate) rebuildable: Vec<u32>,
    /// What makes a group unusable (a manifest record that makes no group, a failed read).
    pub(crate) errors: Vec<String>,
}

/// One parity file that passed its header and length checks.
struct Shard {
    index: u16,
    file: File,
    /// Where the parity bytes start (the header's length).
    at: u64,
}

/// Checks L3 of `m` (recorded complete), given which ranks' L1 files are good.
pub(crate) fn check(at: &Where, m: &Manifest, l1_good: &[bool]) -> L3Check {
    let mut out = L3Check::default();
    if m.copies.parity.is_empty() {
        out.errors
            .push("the manifest records L3 complete but no parity group".into());
        return out;
    }
    for (g, group) in m.copies.parity.iter().enumerate() {
        if let Some(&r) = group.members.iter().find(|&&r| r >= m.nranks) {
            out.errors
                .push(format!("group {g}: rank {r} is not a rank of this job"));
            continue;
        }
        match ParitySets::new(group.members.clone(), group.k) {
            Ok(sets) => check_group(at, m, g, &sets, l1_good, &mut out),
            Err(e) => out.errors.push(format!("group {g}: {e}")),
        }
    }
    out.rebuildable.sort_unstable();
    out
}

/// Checks every set of group `g`, then which of its members L3 can rebuild.
fn check_group(
    at: &Where,
    m: &Manifest,
    g: usize,
    sets: &ParitySets,
    l1_good: &[bool],
    out: &mut L3Check,
) {
    let members = sets.members();
    let lens: Vec<u64> = members.iter().map(|&r| m.ranks[r as usize].len).collect();
    let good_l1 = |mi: usize| l1_good.get(members[mi] as usize).copied().unwrap_or(false);
    // Per set, the shard indices found good.
    let mut intact: Vec<Vec<u16>> = vec![Vec::new(); sets.count()];
    for (p, good) in intact.iter_mut().enumerate() {
        let layout = match sets.layout(p, &lens, parity::DEFAULT_CHUNK) {
            Ok(l) => l,
            Err(e) => {
                out.errors.push(format!("group {g} set {p}: {e}"));
                continue;
            }
        };
        let mut shards = Vec::new();
        for (t, h) in sets.holders(p).into_iter().enumerate() {
            out.files += 1;
            let holder = members[h];
            let node = m.ranks[holder as usize].node.clone();
            let path = at.places(&node).parity_path(m.epoch, g as u32, p as u32);
            let expected = ParityHeader {
                epoch: m.epoch,
                group: header_group(g, p),
                index: t as u16,
                layout: layout.clone(),
            };
            match open_shard(&path, &expected) {
                Ok(shard) => shards.push(shard),
                Err(error) => out.bad.push(BadParity {
                    group: g as u32,
                    set: p as u32,
                    shard: t as u16,
                    holder,
                    node,
                    path,
                    error,
                }),
            }
        }
        let data = sets.data(p);
        if !data.iter().all(|&d| good_l1(d)) {
            out.unrecomputed_sets += 1;
        } else if !shards.is_empty() {
            match recompute(at, m, sets, p, &layout, &shards) {
                Ok(wrong) => {
                    out.recomputed_sets += 1;
                    for (t, error) in wrong {
                        let h = sets.holders(p)[usize::from(t)];
                        shards.retain(|s| s.index != t);
                        let holder = members[h];
                        let node = m.ranks[holder as usize].node.clone();
                        out.bad.push(BadParity {
                            group: g as u32,
                            set: p as u32,
                            shard: t,
                            holder,
                            node: node.clone(),
                            path: at.places(&node).parity_path(m.epoch, g as u32, p as u32),
                            error,
                        });
                    }
                }
                Err(e) => out.errors.push(format!("group {g} set {p}: {e}")),
            }
        }
        *good = shards.iter().map(|s| s.index).collect();
    }
    for (mi, &rank) in members.iter().enumerate() {
        if good_l1(mi) {
            continue;
        }
        let ok = sets.sets_with_data(mi).iter().all(|&(p, _)| {
            let data_gone = sets.data(p).into_iter().filter(|&d| !good_l1(d)).count();
            let parity_gone = sets.k() - intact[p].len();
            data_gone + parity_gone <= sets.k()
        });
        if ok {
            out.rebuildable.push(rank);
        }
    }
}

/// Opens a parity file and checks its header against `expected` and its length.
fn open_shard(path: &Path, expected: &ParityHeader) -> Result<Shard, String> {
    let mut file = durable::open_regular(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(expected.encoded_len() as u64)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let (h, hlen) = ParityHeader::decode(&head).map_err(|e| e.to_string())?;
    let (g, p) = (expected.group >> 16, expected.group & 0xffff);
    if h.epoch != expected.epoch || h.group != expected.group {
        return Err(format!(
            "header is for epoch {} group {} set {}, expected epoch {} group {g} set {p}",
            h.epoch,
            h.group >> 16,
            h.group & 0xffff,
            expected.epoch
        ));
    }
    if h.index != expected.index {
        return Err(format!(
            "header says parity shard {}, expected shard {}",
            h.index, expected.index
        ));
    }
    if h.layout != expected.layout {
        return Err(format!(
            "header's layout ({}) differs from the manifest's ({})",
            shape(&h.layout),
            shape(&expected.layout)
        ));
    }
    let want = hlen as u64 + expected.layout.parity_len();
    if size != want {
        return Err(format!(
            "{size} bytes, expected {want} ({hlen} of header and {} of parity)",
            expected.layout.parity_len()
        ));
    }
    Ok(Shard {
        index: h.index,
        file,
        at: hlen as u64,
    })
}

/// `ranks 1:100 3:80, k 1, stripes of 4194304`: a layout in messages.
fn shape(l: &GroupLayout) -> String {
    let members: Vec<String> = l
        .members()
        .iter()
        .map(|m| format!("{}:{}", m.rank, m.len))
        .collect();
    format!(
        "ranks:lengths {}, k {}, stripes of {} bytes",
        members.join(" "),
        l.parity_count(),
        l.chunk()
    )
}

/// Recomputes set `p`'s parity from its data members' L1 files and compares it with each
/// shard. Returns the shards that differ, each with where. An L1 file that cannot be read is an
/// error (it passed its checks a moment ago).
fn recompute(
    at: &Where,
    m: &Manifest,
    sets: &ParitySets,
    p: usize,
    layout: &GroupLayout,
    shards: &[Shard],
) -> Result<Vec<(u16, String)>, String> {
    let data = sets.data(p);
    let mut inputs = Vec::new();
    for &d in &data {
        let rank = sets.members()[d];
        let (path, _) = at.copy(m, Level::Local, rank as usize)?;
        let file = durable::open_regular(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let j = sets.segment_of(d, p).unwrap_or(0);
        let start = sets.segment(m.ranks[rank as usize].len, j).start;
        inputs.push((file, start, path));
    }
    let mut enc = Encoder::new(layout.clone()).map_err(|e| e.to_string())?;
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); inputs.len()];
    let mut stored = Vec::new();
    let mut wrong: Vec<(u16, String)> = Vec::new();
    let chunk = u64::from(layout.chunk());
    for i in 0..layout.stripes() {
        for (li, ((file, start, path), buf)) in inputs.iter().zip(&mut bufs).enumerate() {
            let r = layout.member_range(li, i);
            buf.resize((r.end - r.start) as usize, 0);
            file.read_exact_at(buf, start + r.start)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        }
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        let parity = enc.encode_stripe(i, &refs).map_err(|e| e.to_string())?;
        for s in shards {
            if wrong.iter().any(|(t, _)| *t == s.index) {
                continue;
            }
            let want = &parity[usize::from(s.index)];
            stored.resize(want.len(), 0);
            let off = s.at + i * chunk;
            if let Err(e) = s.file.read_exact_at(&mut stored, off) {
                wrong.push((s.index, format!("cannot read stripe {i}: {e}")));
                continue;
            }
            if let Some(pos) = stored.iter().zip(want).position(|(a, b)| a != b) {
                let ranks: Vec<String> = layout
                    .members()
                    .iter()
                    .map(|m| m.rank.to_string())
                    .collect();
                wrong.push((
                    s.index,
                    format!(
                        "parity differs from the parity recomputed from the L1 files of ranks \
                         {} at byte {} (stripe {i})",
                        ranks.join(", "),
                        off + pos as u64
                    ),
                ));
            }
        }
        if wrong.len() == shards.len() {
            break;
        }
    }
    Ok(wrong)
}
