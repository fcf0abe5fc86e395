//! Where L3 parity lives: a group's files cut into segments, and which member holds the parity
//! of which segments. Pure (no IO, no MPI); the coding itself is [`super::parity`].
//!
//! Parity cannot sit with the data it protects: a node's loss would take both. So, as in
//! SCR's XOR scheme but for any `k`, a group of `n` members (ranks on distinct nodes) has `n`
//! *parity sets*. Set `p` is held by the `k` members `p, p+1, .., p+k-1` (mod `n`; holder `t`
//! keeps parity shard `t`) and covers one segment of each of the other `n-k` members. Each
//! member's file is cut into `n-k` segments of `ceil(len / (n-k))` bytes (the last shorter, some
//! maybe empty); its `j`-th segment goes to the `j`-th set, counting up from `p = 0`, in which
//! it is not a holder. Every set's `n` shards (`n-k` data, `k` parity) are on `n` distinct
//! members, so losing any `k` members loses at most `k` shards of every set: each lost
//! member's segments are rebuilt from its sets' survivors. Parity costs `k/(n-k)` of the data
//! (`1/(n-1)` for XOR), spread evenly over the members.

use std::ops::Range;

use super::parity::{GroupLayout, Member, ParityError};

/// The `group` field of the parity header of set `p` of group `g` (`(g << 16) | p`), as the
/// holders write it and restart and `ckpt verify` check it.
pub fn header_group(g: usize, p: usize) -> u32 {
    ((g as u32) << 16) | p as u32
}

/// The parity sets of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParitySets {
    members: Vec<u32>,
    k: usize,
}

impl ParitySets {
    /// The sets of a group of `members` (ranks, in group order) with `k` parity shards per set.
    /// Needs `1 <= k < members.len()`.
    pub fn new(members: Vec<u32>, k: u16) -> Result<Self, ParityError> {
        let k = usize::from(k);
        if k == 0 || k >= members.len() {
            return Err(ParityError::InvalidGroup(format!(
                "{k} parity shards per set in a group of {} (1 to {} allowed)",
                members.len(),
                members.len().saturating_sub(1)
            )));
        }
        Ok(ParitySets { members, k })
    }

    /// The members' ranks, in group order.
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// Parity shards per set.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of sets (one per member).
    pub fn count(&self) -> usize {
        self.members.len()
    }

    fn n(&self) -> usize {
        self.members.len()
    }

    /// Whether member index `m` holds parity of set `p`, and which shard.
    pub fn shard_held(&self, m: usize, p: usize) -> Option<usize> {
        let t = (m + self.n() - p) % self.n();
        (t < self.k).then_some(t)
    }

    /// The member indices holding set `p`'s parity shards, shard order.
    pub fn holders(&self, p: usize) -> Vec<usize> {
        (0..self.k).map(|t| (p + t) % self.n()).collect()
    }

    /// The member indices whose segments set `p` covers, in shard order.
    pub fn data(&self, p: usize) -> Vec<usize> {
        (0..self.n())
            .filter(|&m| self.shard_held(m, p).is_none())
            .collect()
    }

    /// Which segment of member `m` set `p` covers (`None` if `m` holds parity of `p`).
    pub fn segment_of(&self, m: usize, p: usize) -> Option<usize> {
        if self.shard_held(m, p).is_some() {
            return None;
        }
        Some((0..p).filter(|&q| self.shard_held(m, q).is_none()).count())
    }

    /// The sets member `m` has data in, with the segment each covers.
    pub fn sets_with_data(&self, m: usize) -> Vec<(usize, usize)> {
        (0..self.n())
            .filter_map(|p| self.segment_of(m, p).map(|j| (p, j)))
            .collect()
    }

    /// Byte range of segment `j` of a file of `len` bytes.
    pub fn segment(&self, len: u64, j: usize) -> Range<u64> {
        let parts = (self.n() - self.k) as u64;
        let seg = len.div_ceil(parts);
        let start = (j as u64 * seg).min(len);
        start..(start + seg).min(len)
    }

    /// The coding layout of set `p`, given every member's file length (group order).
    pub fn layout(&self, p: usize, lens: &[u64], chunk: u32) -> Result<GroupLayout, ParityError> {
        let members = self
            .data(p)
            .into_iter()
            .map(|m| {
                let j = self.segment_of(m, p).unwrap_or(0);
                let r = self.segment(lens.get(m).copied().unwrap_or(0), j);
                Member {
                    rank: self.members[m],
                    len: r.end - r.start,
                }
            })
            .collect();
        GroupLayout::new(members, self.k as u16, chunk)
    }

    /// Whether the members `lost` (indices; their data and parity gone) can all be rebuilt:
    /// every member has one shard in every set, so each set lost `lost.len()` shards.
    pub fn recoverable(&self, lost: &[usize]) -> bool {
        let mut l = lost.to_vec();
        l.sort_unstable();
        l.dedup();
        l.len() <= self.k
    }
}

#[cfg(test)]
mod tests {
    use super::super::parity::{encode, rebuild};
    use super::*;

    /// Every set has n distinct members' shards; each member has data in n-k sets with
    /// segments 0..n-k in order and holds parity of k sets.
    #[test]
    fn sets_cover_every_segment_once_on_distinct_members() {
        for n in 2..=7usize {
            for k in 1..n {
                let s = ParitySets::new((0..n as u32).map(|r| r * 10).collect(), k as u16).unwrap();
                for p in 0..n {
                    let mut all = s.holders(p);
                    all.extend(s.data(p));
                    all.sort_unstable();
                    assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} k {k} set {p}");
                }
                for m in 0..n {
                    let segs: Vec<usize> = s.sets_with_data(m).iter().map(|x| x.1).collect();
                    assert_eq!(
                        segs,
                        (0..n - k).collect::<Vec<_>>(),
                        "n {n} k {k} member {m}"
                    );
                    let held = (0..n).filter(|&p| s.shard_held(m, p).is_some()).count();
                    assert_eq!(held, k);
                }
            }
        }
        assert!(ParitySets::new(vec![1, 2], 2).is_err());
        assert!(ParitySets::new(vec![1, 2], 0).is_err());
    }

    #[test]
    fn segments_tile_the_file() {
        let s = ParitySets::new(vec![0, 1, 2, 3], 1).unwrap();
        for len in [0u64, 1, 2, 3, 5, 4096, 10_001] {
            let parts: Vec<Range<u64>> = (0..3).map(|j| s.segment(len, j)).collect();
            assert_eq!(parts[0].start, 0);
            for w in parts.windows(2) {
                assert_eq!(w[0].end, w[1].start, "len {len}");
            }
            assert_eq!(parts[2].end, len);
        }
    }

    /// For small groups and every loss pattern of at most k members: encode every set from
    /// real bytes, drop the lost members' segments and their parity shards, rebuild, and get
    /// the lost files back exactly. More than k losses is refused.
    #[test]
    fn every_loss_of_up_to_k_members_is_rebuilt_exactly() {
        let chunk = 64u32;
        // Reed-Solomon is slow to set up in debug builds: groups of up to 5 for XOR, 4 for RS.
        for n in 2..=5usize {
            for k in (1..n).filter(|&k| k == 1 || n <= 4) {
                let s = ParitySets::new((0..n as u32).collect(), k as u16).unwrap();
                let lens: Vec<u64> = (0..n).map(|m| 150 + 37 * m as u64).collect();
                let files: Vec<Vec<u8>> = (0..n)
                    .map(|m| {
                        (0..lens[m])
                            .map(|i| (i as u8).wrapping_mul(31) ^ m as u8)
                            .collect()
                    })
                    .collect();
                // Parity of every set, per holder shard.
                let parity: Vec<Vec<Vec<u8>>> = (0..n)
                    .map(|p| {
                        let layout = s.layout(p, &lens, chunk).unwrap();
                        let segs: Vec<&[u8]> = s
                            .data(p)
                            .iter()
                            .map(|&m| {
                                let r = s.segment(lens[m], s.segment_of(m, p).unwrap());
                                &files[m][r.start as usize..r.end as usize]
                            })
                            .collect();
                        encode(&layout, &segs).unwrap()
                    })
                    .collect();
                for mask in 1u32..(1 << n) {
                    let lost: Vec<usize> = (0..n).filter(|m| mask & (1 << m) != 0).collect();
                    if lost.len() > k {
                        assert!(!s.recoverable(&lost), "n {n} k {k} lost {lost:?}");
                        continue;
                    }
                    assert!(s.recoverable(&lost));
                    for &m in &lost {
                        let mut rebuilt = vec![0u8; lens[m] as usize];
                        for (p, j) in s.sets_with_data(m) {
                            let layout = s.layout(p, &lens, chunk).unwrap();
                            let data = s.data(p);
                            let mut shards: Vec<Option<&[u8]>> = data
                                .iter()
                                .map(|&d| {
                                    let r = s.segment(lens[d], s.segment_of(d, p).unwrap());
                                    (!lost.contains(&d))
                                        .then(|| &files[d][r.start as usize..r.end as usize])
                                })
                                .collect();
                            for (t, &h) in s.holders(p).iter().enumerate() {
                                shards.push((!lost.contains(&h)).then(|| &parity[p][t][..]));
                            }
                            let out = rebuild(&layout, &shards).unwrap();
                            let pos = data.iter().position(|&d| d == m).unwrap();
                            let lost_before =
                                data[..pos].iter().filter(|d| lost.contains(d)).count();
                            let r = s.segment(lens[m], j);
                            rebuilt[r.start as usize..r.end as usize]
                                .copy_from_slice(&out[lost_before][..(r.end - r.start) as usize]);
                        }
                        assert_eq!(rebuilt, files[m], "n {n} k {k} lost {lost:?} member {m}");
                    }
                }
            }
        }
    }
}
