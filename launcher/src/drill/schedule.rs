//! The drill's fault schedule, pure: which faults exist, how a seeded generator draws each
//! run's faults, and how a fault reads in the table. Same seed, same plan: same faults.

use std::fmt;

/// A kind of fault `--faults` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL one random rank at a random moment after a commit.
    KillRank,
    /// `ckpt kill-node` of a random emulated node at a random moment after a commit.
    KillNode,
    /// `ckpt run --fault RANK:PHASE:N`: a rank killed at a protocol point.
    Phase,
    /// `ckpt migrate` of a random rank to another emulated node at a random moment after a
    /// commit.
    Migrate,
}

impl FaultKind {
    /// Parses one `--faults` item.
    pub fn parse(s: &str) -> Result<FaultKind, String> {
        match s {
            "kill-rank" => Ok(FaultKind::KillRank),
            "kill-node" => Ok(FaultKind::KillNode),
            "phase" => Ok(FaultKind::Phase),
            "migrate" => Ok(FaultKind::Migrate),
            other => Err(format!(
                "--faults {other}: unknown fault (use kill-rank, kill-node, phase, migrate)"
            )),
        }
    }

    /// Parses `--faults`, a comma-separated list without repeats.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = Vec::new();
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!("--faults {s:?}: empty item (e.g. kill-rank,phase)"));
            }
            let kind = FaultKind::parse(item)?;
            if kinds.contains(&kind) {
                return Err(format!("--faults {s}: {item} given twice"));
            }
            kinds.push(kind);
        }
        Ok(kinds)
    }
}

/// Protocol phases a `phase` fault draws from, all counted in epochs except `poll`.
pub const PHASES: &[&str] = &[
    "poll",
    "before-write",
    "mid-write",
    "after-write",
    "before-vote",
    "after-commit",
    "drain",
    "background",
];

/// One drawn fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL rank `rank`, `after_ms` after the run's first commit (after the previous
    /// timed fault's relaunch committed, for a later one).
    KillRank { rank: u32, after_ms: u64 },
    /// `ckpt kill-node` of `node<node>`, timed as `KillRank`.
    KillNode { node: u32, after_ms: u64 },
    /// `--fault RANK:PHASE:N` (kill) on the first launch.
    Phase {
        rank: u32,
        phase: &'static str,
        n: u64,
    },
    /// `ckpt migrate --rank RANK` to the node `shift` nodes further (1 to nodes-1) from
    /// wherever the rank runs then, timed as `KillRank`.
    Migrate {
        rank: u32,
        shift: u32,
        after_ms: u64,
    },
}

impl Fault {
    /// The `ckpt run --fault` value of a phase fault.
    pub fn fault_flag(&self) -> Option<String> {
        match self {
            Fault::Phase { rank, phase, n } => Some(format!("{rank}:{phase}:{n}")),
            _ => None,
        }
    }

    /// Delay after a commit, for the faults the drill injects from outside.
    pub fn timed(&self) -> Option<u64> {
        match self {
            Fault::KillRank { after_ms, .. }
            | Fault::KillNode { after_ms, .. }
            | Fault::Migrate { after_ms, .. } => Some(*after_ms),
            Fault::Phase { .. } => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillRank { rank, after_ms } => write!(f, "kill-rank {rank} +{after_ms}ms"),
            Fault::KillNode { node, after_ms } => write!(f, "kill-node node{node} +{after_ms}ms"),
            Fault::Phase { rank, phase, n } => write!(f, "phase {rank}:{phase}:{n}"),
            Fault::Migrate {
                rank,
                shift,
                after_ms,
            } => write!(f, "migrate rank {rank} +{shift} nodes +{after_ms}ms"),
        }
    }
}

/// What the draw needs to know of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Ranks.
    pub ranks: u32,
    /// Emulated nodes (`None`: one node; no `kill-node`, no `background` phase).
    pub nodes: Option<u32>,
    /// `--every N` in polls, when given as a poll count (the `poll` phase draws after it).
    pub every_polls: Option<u64>,
    /// Timed faults fire within this many milliseconds after their commit.
    pub window_ms: u64,
}

/// A small deterministic generator (SplitMix64): a seed gives one sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}

/// Draws the faults of `runs` runs, `per_run` each, from `kinds` (validated: not empty,
/// `kill-node` only with nodes, at most one phase per run possible). A run gets at most one
/// `phase` fault (`ckpt run` takes one `--fault`): a second draw of it takes another kind.
pub fn draw(
    seed: u64,
    runs: u32,
    per_run: u32,
    kinds: &[FaultKind],
    shape: &Shape,
) -> Vec<Vec<Fault>> {
    let mut rng = Rng::new(seed);
    (0..runs)
        .map(|_| {
            let mut faults: Vec<Fault> = Vec::new();
            for _ in 0..per_run {
                let has_phase = faults.iter().any(|f| matches!(f, Fault::Phase { .. }));
                let open: Vec<FaultKind> = kinds
                    .iter()
                    .copied()
                    .filter(|k| !(has_phase && *k == FaultKind::Phase))
                    .collect();
                if open.is_empty() {
                    break;
                }
                let kind = open[rng.range(0, open.len() as u64) as usize];
                faults.push(draw_one(&mut rng, kind, shape));
            }
            faults
        })
        .collect()
}

fn draw_one(rng: &mut Rng, kind: FaultKind, shape: &Shape) -> Fault {
    match kind {
        FaultKind::KillRank => Fault::KillRank {
            rank: rng.range(0, u64::from(shape.ranks)) as u32,
            after_ms: rng.range(0, shape.window_ms),
        },
        FaultKind::KillNode => Fault::KillNode {
            node: rng.range(0, u64::from(shape.nodes.unwrap_or(1))) as u32,
            after_ms: rng.range(0, shape.window_ms),
        },
        FaultKind::Migrate => Fault::Migrate {
            rank: rng.range(0, u64::from(shape.ranks)) as u32,
            shift: rng.range(1, u64::from(shape.nodes.unwrap_or(2).max(2))) as u32,
            after_ms: rng.range(0, shape.window_ms),
        },
        FaultKind::Phase => {
            let phases: Vec<&'static str> = PHASES
                .iter()
                .copied()
                .filter(|p| *p != "background" || shape.nodes.is_some_and(|n| n > 1))
                .collect();
            let phase = phases[rng.range(0, phases.len() as u64) as usize];
            let rank = rng.range(0, u64::from(shape.ranks)) as u32;
            let n = match (phase, shape.every_polls) {
                // After the first checkpoint, before the third.
                ("poll", Some(k)) => rng.range(k + 1, 3 * k + 1),
                ("poll", None) => rng.range(1, 101),
                // Epoch 1 or 2: reached by any run that checkpoints twice.
                _ => rng.range(1, 3),
            };
            Fault::Phase { rank, phase, n }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            ranks: 8,
            nodes: Some(4),
            every_polls: Some(40),
            window_ms: 500,
        }
    }

    #[test]
    fn fault_lists_parse_with_clear_errors() {
        assert_eq!(
            FaultKind::parse_list("kill-rank, kill-node,phase").unwrap(),
            vec![FaultKind::KillRank, FaultKind::KillNode, FaultKind::Phase]
        );
        for (bad, says) in [
            ("", "empty item"),
            ("kill-rank,,phase", "empty item"),
            ("kill", "kill: unknown fault"),
            ("phase,phase", "phase given twice"),
            ("explode", "unknown fault"),
        ] {
            let e = FaultKind::parse_list(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn same_seed_same_faults_other_seed_other_faults() {
        let kinds = [FaultKind::KillRank, FaultKind::KillNode, FaultKind::Phase];
        let a = draw(7, 10, 2, &kinds, &shape());
        assert_eq!(a, draw(7, 10, 2, &kinds, &shape()));
        assert_ne!(a, draw(8, 10, 2, &kinds, &shape()));
        assert_eq!(a.len(), 10);
        for run in &a {
            assert_eq!(run.len(), 2);
            let phases = run.iter().filter(|f| f.fault_flag().is_some()).count();
            assert!(phases <= 1, "{run:?}");
        }
    }

    #[test]
    fn drawn_faults_stay_within_the_job() {
        let kinds = [
            FaultKind::KillRank,
            FaultKind::KillNode,
            FaultKind::Phase,
            FaultKind::Migrate,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for run in draw(1, 300, 1, &kinds, &shape()) {
            match &run[0] {
                Fault::KillRank { rank, after_ms } => {
                    assert!(*rank < 8 && *after_ms < 500);
                    seen.insert("kill-rank");
                }
                Fault::KillNode { node, after_ms } => {
                    assert!(*node < 4 && *after_ms < 500);
                    seen.insert("kill-node");
                }
                Fault::Phase { rank, phase, n } => {
                    assert!(*rank < 8 && PHASES.contains(phase));
                    if *phase == "poll" {
                        assert!((41..=120).contains(n), "{n}");
                    } else {
                        assert!((1..=2).contains(n), "{n}");
                    }
                    seen.insert(phase);
                }
                Fault::Migrate {
                    rank,
                    shift,
                    after_ms,
                } => {
                    assert!(*rank < 8 && (1..4).contains(shift) && *after_ms < 500);
                    seen.insert("migrate");
                }
            }
        }
        // Every kind and every phase comes up in 300 draws.
        assert_eq!(seen.len(), 3 + PHASES.len(), "{seen:?}");
    }

    #[test]
    fn one_node_has_no_background_phase_and_only_phase_gives_one_fault() {
        let one = Shape {
            nodes: None,
            ..shape()
        };
        for run in draw(3, 200, 3, &[FaultKind::Phase], &one) {
            assert_eq!(run.len(), 1, "a run takes one --fault");
            assert!(!matches!(
                run[0],
                Fault::Phase {
                    phase: "background",
                    ..
                }
            ));
        }
    }

    #[test]
    fn faults_read_as_the_table_shows_them() {
        let f = Fault::Phase {
            rank: 2,
            phase: "mid-write",
            n: 1,
        };
        assert_eq!(f.to_string(), "phase 2:mid-write:1");
        assert_eq!(f.fault_flag().as_deref(), Some("2:mid-write:1"));
        let k = Fault::KillNode {
            node: 1,
            after_ms: 30,
        };
        assert_eq!(k.to_string(), "kill-node node1 +30ms");
        assert_eq!(k.timed(), Some(30));
    }
}
