//! The level policy: which storage levels beyond L1 each epoch gets. Pure (no IO, no MPI).
//!
//! Every epoch is written to L1 (node-local storage) while the application waits; the other
//! levels are produced in the background afterwards (see `background.rs`). An epoch gets level
//! L when its number is a multiple of L's period (`0` turns L off): every rank computes the
//! same answer from the same epoch number, so no communication is needed.
//!
//! Defaults, as an HPC user would pick them: L2 (partner copy) every epoch, L4 (shared storage)
//! every 10th. A placement that cannot support a level (one node, for L2) turns that level off
//! for the launch, with a warning naming why (see [`crate::placement::PlacementError`]).

use std::path::PathBuf;

use crate::manifest::Level;

/// Default period of L2 partner copies, in epochs.
pub const DEFAULT_PARTNER_EVERY: u64 = 1;
/// Default period of L4 flushes to shared storage, in epochs.
pub const DEFAULT_SHARED_EVERY: u64 = 10;

/// Which levels beyond L1 the epochs get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelPolicy {
    /// L2 (a copy on a partner rank of another node) every this many epochs; 0 = off.
    pub partner_every: u64,
    /// L4 (a copy on shared storage) every this many epochs; 0 = off.
    pub shared_every: u64,
    /// Base of L4 storage; `None`: `<job_dir>/shared`.
    pub shared_dir: Option<PathBuf>,
}

impl Default for LevelPolicy {
    fn default() -> Self {
        LevelPolicy {
            partner_every: DEFAULT_PARTNER_EVERY,
            shared_every: DEFAULT_SHARED_EVERY,
            shared_dir: None,
        }
    }
}

impl LevelPolicy {
    /// Only L1: no background levels.
    pub fn local_only() -> Self {
        LevelPolicy {
            partner_every: 0,
            shared_every: 0,
            shared_dir: None,
        }
    }

    /// The levels beyond L1 that epoch `epoch` gets, in the order they are produced, given
    /// which levels the placement supports (`partner_ok`).
    pub fn planned(&self, epoch: u64, partner_ok: bool) -> Vec<Level> {
        let due = |every: u64| every > 0 && epoch % every == 0;
        let mut levels = Vec::new();
        if partner_ok && due(self.partner_every) {
            levels.push(Level::Partner);
        }
        if due(self.shared_every) {
            levels.push(Level::Pfs);
        }
        levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_pick_the_levels_of_each_epoch() {
        let p = LevelPolicy {
            partner_every: 2,
            shared_every: 3,
            shared_dir: None,
        };
        let table: [(u64, bool, &[Level]); 6] = [
            (1, true, &[]),
            (2, true, &[Level::Partner]),
            (3, true, &[Level::Pfs]),
            (6, true, &[Level::Partner, Level::Pfs]),
            (6, false, &[Level::Pfs]),
            (4, false, &[]),
        ];
        for (epoch, ok, want) in table {
            assert_eq!(p.planned(epoch, ok), want, "epoch {epoch}, partner_ok {ok}");
        }
        assert!(LevelPolicy::local_only().planned(10, true).is_empty());
        let d = LevelPolicy::default();
        assert_eq!(d.planned(1, true), [Level::Partner]);
        assert_eq!(d.planned(10, true), [Level::Partner, Level::Pfs]);
    }
}
