//! The level policy: which storage levels beyond L1 each epoch gets. Pure (no IO, no MPI).
//!
//! Every epoch is written to L1 (node-local storage) while the application waits; the other
//! levels are produced in the background afterwards (see `background.rs`). An epoch gets level
//! L when its number is a multiple of L's period (`0` turns L off): every rank computes the
//! same answer from the same epoch number, so no communication is needed.
//!
//! Defaults, as an HPC user would pick them: L2 (partner copy) every epoch, L3 (XOR parity
//! over groups of 4 ranks on distinct nodes) every 4th, L4 (shared storage) every 10th. A placement that cannot support a level (one node, for L2) turns that level off
//! for the launch, with a warning naming why (see [`crate::placement::PlacementError`]): one
//! node for L2; for L3, one node, a node with more than half the ranks, or a group smaller
//! than `parity_k + 1`.

use std::path::PathBuf;

use crate::manifest::Level;

/// Default period of L2 partner copies, in epochs.
pub const DEFAULT_PARTNER_EVERY: u64 = 1;
/// Default period of L3 parity, in epochs.
pub const DEFAULT_PARITY_EVERY: u64 = 4;
/// Default L3 group size (ranks on distinct nodes).
pub const DEFAULT_PARITY_GROUP: usize = 4;
/// Default parity shards per L3 set (losses of a group tolerated; 1 = XOR).
pub const DEFAULT_PARITY_K: u16 = 1;
/// Default period of L4 flushes to shared storage, in epochs.
pub const DEFAULT_SHARED_EVERY: u64 = 10;

/// What a checkpoint does when the previous epoch's background levels are still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Complete them first (the application waits); every epoch gets its levels.
    Wait,
    /// Go on: the new epoch gets L1 only (on every rank, agreed at the cut), the earlier
    /// epoch's levels go on in the background.
    Skip,
}

impl Busy {
    /// `wait` or `skip`.
    pub fn parse(s: &str) -> Option<Busy> {
        match s {
            "wait" => Some(Busy::Wait),
            "skip" => Some(Busy::Skip),
            _ => None,
        }
    }
}

/// Which levels beyond L1 the epochs get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelPolicy {
    /// L2 (a copy on a partner rank of another node) every this many epochs; 0 = off.
    pub partner_every: u64,
    /// L3 (parity over groups of ranks on distinct nodes) every this many epochs; 0 = off.
    pub parity_every: u64,
    /// L3 group size.
    pub parity_group: usize,
    /// L3 parity shards per set: losses per group tolerated (1: XOR, more: Reed-Solomon).
    pub parity_k: u16,
    /// L4 (a copy on shared storage) every this many epochs; 0 = off.
    pub shared_every: u64,
    /// Base of L4 storage; `None`: `<job_dir>/shared`.
    pub shared_dir: Option<PathBuf>,
    /// Epochs kept with their L2 copies (L1 keeps `Config::keep`).
    pub keep_partner: usize,
    /// Epochs kept with their L3 parity.
    pub keep_parity: usize,
    /// Epochs kept on shared storage.
    pub keep_shared: usize,
    /// A checkpoint while the previous epoch's levels run.
    pub busy: Busy,
}

impl Default for LevelPolicy {
    fn default() -> Self {
        LevelPolicy {
            partner_every: DEFAULT_PARTNER_EVERY,
            parity_every: DEFAULT_PARITY_EVERY,
            parity_group: DEFAULT_PARITY_GROUP,
            parity_k: DEFAULT_PARITY_K,
            shared_every: DEFAULT_SHARED_EVERY,
            shared_dir: None,
            keep_partner: 1,
            keep_parity: 1,
            keep_shared: 2,
            busy: Busy::Wait,
        }
    }
}

impl LevelPolicy {
    /// Only L1: no background levels.
    pub fn local_only() -> Self {
        LevelPolicy {
            partner_every: 0,
            parity_every: 0,
            shared_every: 0,
            ..LevelPolicy::default()
        }
    }

    /// The levels beyond L1 that epoch `epoch` gets, in the order they are produced, given
    /// which levels the placement supports (`partner_ok`, `parity_ok`).
    pub fn planned(&self, epoch: u64, partner_ok: bool, parity_ok: bool) -> Vec<Level> {
        let due = |every: u64| every > 0 && epoch % every == 0;
        let mut levels = Vec::new();
        if partner_ok && due(self.partner_every) {
            levels.push(Level::Partner);
        }
        if parity_ok && due(self.parity_every) {
            levels.push(Level::Parity);
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
            parity_every: 4,
            shared_every: 3,
            ..LevelPolicy::default()
        };
        use Level::*;
        let table: [(u64, bool, bool, &[Level]); 8] = [
            (1, true, true, &[]),
            (2, true, true, &[Partner]),
            (3, true, true, &[Pfs]),
            (4, true, true, &[Partner, Parity]),
            (4, true, false, &[Partner]),
            (12, true, true, &[Partner, Parity, Pfs]),
            (6, false, true, &[Pfs]),
            (4, false, false, &[]),
        ];
        for (epoch, l2, l3, want) in table {
            assert_eq!(
                p.planned(epoch, l2, l3),
                want,
                "epoch {epoch}, L2 {l2}, L3 {l3}"
            );
        }
        assert!(LevelPolicy::local_only().planned(40, true, true).is_empty());
        let d = LevelPolicy::default();
        assert_eq!(d.planned(1, true, true), [Partner]);
        assert_eq!(d.planned(4, true, true), [Partner, Parity]);
        assert_eq!(d.planned(20, true, true), [Partner, Parity, Pfs]);
    }
}
