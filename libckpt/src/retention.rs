//! Retention per level: each level keeps its own number of newest epochs (e.g. 2 at L1, 1 at
//! L2 and L3, 2 at L4), so an epoch may outlive its L1 files on shared storage.
//!
//! Rank 0 applies it after each durable commit, manifests first: an older epoch that falls out
//! of a level's window is republished without that level (atomically), and a manifest with no
//! level left is removed; only then do the ranks remove the files (each the copies it is
//! responsible for, below the per-level thresholds broadcast with the commit decision). So no
//! manifest ever records a level whose copies may be gone.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::{self, Level};

/// Epochs kept per level (each at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// L1 (`CKPT_KEEP`).
    pub local: usize,
    /// L2 (`CKPT_KEEP_L2`).
    pub partner: usize,
    /// L3 (`CKPT_KEEP_L3`).
    pub parity: usize,
    /// L4 (`CKPT_KEEP_L4`).
    pub shared: usize,
}

impl Keep {
    fn of(&self, level: Level) -> usize {
        match level {
            Level::Local => self.local,
            Level::Partner => self.partner,
            Level::Parity => self.parity,
            Level::Pfs => self.shared,
        }
        .max(1)
    }
}

/// Per level, the oldest epoch whose copies stay (`0`: keep everything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepFrom {
    /// L1.
    pub local: u64,
    /// L2.
    pub partner: u64,
    /// L3.
    pub parity: u64,
    /// L4.
    pub shared: u64,
}

impl KeepFrom {
    /// The threshold of `level`.
    pub fn of(&self, level: Level) -> u64 {
        match level {
            Level::Local => self.local,
            Level::Partner => self.partner,
            Level::Parity => self.parity,
            Level::Pfs => self.shared,
        }
    }

    /// The oldest epoch any level keeps.
    pub fn oldest(&self) -> u64 {
        [self.local, self.partner, self.parity, self.shared]
            .into_iter()
            .min()
            .unwrap_or(0)
    }
}

/// The thresholds for committed epochs `epochs` (each with the levels complete for it, newest
/// first): for each level, the `keep`-th newest epoch that has it (or the oldest that has it,
/// or `0` if none does).
pub fn thresholds(epochs: &[(u64, Vec<Level>)], keep: &Keep) -> KeepFrom {
    let at = |level: Level| {
        let with: Vec<u64> = epochs
            .iter()
            .filter(|(_, l)| l.contains(&level))
            .map(|(e, _)| *e)
            .collect();
        with.get(keep.of(level) - 1)
            .or(with.last())
            .copied()
            .unwrap_or(0)
    };
    let local = at(Level::Local);
    KeepFrom {
        local,
        partner: at(Level::Partner),
        // Parity rebuilds a lost file from the other members' L1 files: without them it
        // rebuilds nothing, so it never outlives L1.
        parity: at(Level::Parity).max(local),
        shared: at(Level::Pfs),
    }
}

/// What retention does to one epoch: the levels it keeps (empty: its manifest goes).
pub fn kept_levels(epoch: u64, levels: &[Level], from: &KeepFrom) -> Vec<Level> {
    levels
        .iter()
        .copied()
        .filter(|&l| epoch >= from.of(l))
        .collect()
}

/// Rank 0, after a durable commit and after each level completes: drops from older manifests
/// the levels that fall out of their window (republished atomically), removes the manifests
/// with no level left (and quarantine records older than every kept epoch), and returns the
/// thresholds the ranks prune their copies below (at the commit; the copies of a level dropped
/// when another completes go at the next commit). Only complete levels count: an epoch's
/// earlier copies stay until its successor's are complete, so a node lost meanwhile is still
/// recovered. Epoch `pending` (whose background levels are still running) and newer keep their
/// L1: the running levels read its files and republish its manifest.
pub fn apply(job_dir: &Path, keep: &Keep, pending: Option<u64>) -> Result<KeepFrom, String> {
    let committed = manifest::committed(job_dir).map_err(|e| e.to_string())?;
    let mut loaded = Vec::new();
    for &e in &committed {
        match manifest::load(job_dir, e) {
            Ok(m) => loaded.push(m),
            // An unreadable manifest is left alone (restore will judge it); it counts for no level.
            Err(_) => continue,
        }
    }
    let epochs: Vec<(u64, Vec<Level>)> =
        loaded.iter().map(|m| (m.epoch, m.levels.clone())).collect();
    let mut from = thresholds(&epochs, keep);
    if let Some(p) = pending {
        from.local = from.local.min(p);
    }
    let mut oldest_kept = u64::MAX;
    for m in loaded {
        let kept = kept_levels(m.epoch, &m.levels, &from);
        if kept.is_empty() {
            manifest::remove(job_dir, m.epoch)
                .map_err(|e| format!("cannot remove epoch {}'s manifest: {e}", m.epoch))?;
            continue;
        }
        oldest_kept = oldest_kept.min(m.epoch);
        if kept.len() != m.levels.len() {
            // Through `update`: a level completed since the load is kept, not lost.
            // The planned list loses the level too: `ckpt list` shows a planned level that is
            // not complete as pending.
            manifest::update(job_dir, m.epoch, |m| {
                let epoch = m.epoch;
                let keep = |l: &Level| kept.contains(l) || epoch >= from.of(*l);
                m.levels.retain(keep);
                m.copies.planned.retain(keep);
            })
            .or_else(|e| match e {
                // Removed meanwhile by another pass (rank 0's commit and a completed level
                // both apply retention): nothing left to drop.
                crate::Error::ManifestIo { ref source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(m.clone())
                }
                e => Err(format!(
                    "cannot republish epoch {}'s manifest: {e}",
                    m.epoch
                )),
            })?;
        }
    }
    if oldest_kept != u64::MAX {
        manifest::prune(job_dir, oldest_kept).map_err(|e| e.to_string())?;
    }
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Level::*;

    #[test]
    fn each_level_keeps_its_own_window() {
        let keep = Keep {
            local: 2,
            partner: 1,
            parity: 1,
            shared: 3,
        };
        // Newest first: 10 (L1 only, its levels still running), 9 (L1 L2 L3), 8 (L1 L2), 6
        // (L1 L2 L4), 3 (L1 L4), 2 (L1 L4).
        let epochs = vec![
            (10, vec![Local]),
            (9, vec![Local, Partner, Parity]),
            (8, vec![Local, Partner]),
            (6, vec![Local, Partner, Pfs]),
            (3, vec![Local, Pfs]),
            (2, vec![Local, Pfs]),
        ];
        let from = thresholds(&epochs, &keep);
        assert_eq!(
            from,
            KeepFrom {
                local: 9,
                partner: 9,
                parity: 9,
                shared: 2,
            }
        );
        let table: [(u64, &[Level], &[Level]); 6] = [
            (10, &[Local], &[Local]),
            (9, &[Local, Partner, Parity], &[Local, Partner, Parity]),
            (8, &[Local, Partner], &[]),
            (6, &[Local, Partner, Pfs], &[Pfs]),
            (3, &[Local, Pfs], &[Pfs]),
            (2, &[Local, Pfs], &[Pfs]),
        ];
        for (e, levels, want) in table {
            assert_eq!(kept_levels(e, levels, &from), want, "epoch {e}");
        }
        assert_eq!(from.oldest(), 2);
        // L3 never outlives L1 (a window of 3 at L3, 1 at L1).
        let l3 = thresholds(
            &[(9, vec![Local, Parity]), (8, vec![Local, Parity])],
            &Keep {
                local: 1,
                partner: 1,
                parity: 3,
                shared: 1,
            },
        );
        assert_eq!((l3.local, l3.parity), (9, 9));
        // Fewer epochs than the window: everything stays.
        let few = thresholds(&epochs[..1], &keep);
        assert_eq!(kept_levels(10, &[Local], &few), [Local]);
        assert_eq!(thresholds(&[], &keep), KeepFrom::default());
    }

    #[test]
    fn manifests_lose_levels_before_they_go() {
        let dir = tempfile::tempdir().unwrap();
        let m = |epoch: u64, levels: Vec<Level>| manifest::Manifest {
            job: "j".into(),
            epoch,
            nranks: 1,
            created_unix_ms: 0,
            poll: 0,
            launch: 0,
            levels,
            ranks: vec![manifest::RankRecord {
                node: "n".into(),
                file: format!("j/epoch-{epoch:08}/rank-000000.ckpt"),
                len: 1,
                table_crc: 0,
                payload: 1,
                logged: 0,
                write_secs: 0.0,
            }],
            total_secs: 0.0,
            copies: Default::default(),
        };
        for (e, l) in [
            (1, vec![Local, Pfs]),
            (2, vec![Local, Partner]),
            (3, vec![Local, Partner]),
            (4, vec![Local]),
        ] {
            manifest::publish(dir.path(), &m(e, l)).unwrap();
        }
        let keep = Keep {
            local: 2,
            partner: 1,
            parity: 1,
            shared: 1,
        };
        let from = apply(dir.path(), &keep, None).unwrap();
        assert_eq!((from.local, from.shared), (3, 1));
        assert_eq!(manifest::committed(dir.path()).unwrap(), vec![4, 3, 1]);
        assert_eq!(manifest::load(dir.path(), 1).unwrap().levels, [Pfs]);
        assert_eq!(
            manifest::load(dir.path(), 3).unwrap().levels,
            [Local, Partner]
        );
    }
}
