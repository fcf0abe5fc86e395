//! Nodes and placement as data: which node each rank runs on ([`Placement`]), and the pure
//! rules that derive the redundancy layout from it: L2 [`partners`] and L3 [`groups`]. No IO,
//! no MPI; every rank computes the same answer from the same placement (a manifest's records,
//! or a gather of the ranks' [`crate::Config::node`]).
//!
//! Both rules order nodes by first appearance (the node of rank 0 first) and the ranks of a
//! node by rank number; the *position* of a rank is its index among its node's ranks.

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

use crate::manifest::{Level, Manifest};

/// Why a placement cannot support a redundancy level.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    /// No ranks: nothing to place.
    #[error("the placement has no ranks")]
    Empty,
    /// Every rank runs on one node: losing it loses every copy.
    #[error(
        "{} need ranks on at least 2 nodes: all {ranks} ranks are on node {node}, whose loss \
         would take every rank together with its redundancy",
        level_name(*.level)
    )]
    OneNode {
        /// The level asked for.
        level: Level,
        /// The only node.
        node: String,
        /// Ranks on it.
        ranks: usize,
    },
    /// An L2 partner distance that is 0 or reaches round the ring of nodes.
    #[error(
        "L2 partner distance {distance} must be between 1 and {} with {} nodes ({}): any \
         other distance puts a rank's copy on its own node or wraps round the ring",
        .nodes.len() - 1,
        .nodes.len(),
        Counts(.nodes)
    )]
    PartnerDistance {
        /// The distance asked for.
        distance: usize,
        /// Nodes (in first-appearance order) and their rank counts.
        nodes: Vec<(String, usize)>,
    },
    /// An L3 group size below 2.
    #[error(
        "L3 group size {size} is too small: a group needs at least 2 ranks, so that a lost \
         member can be rebuilt from the others"
    )]
    GroupSize {
        /// The size asked for.
        size: usize,
    },
    /// One node holds more than half of the ranks: some of its ranks cannot share a group
    /// with a rank of another node.
    #[error(
        "L3 groups need at least 2 ranks on distinct nodes each: node {node} holds {on_node} \
         of the {ranks} ranks, more than half, so {} of its ranks would have no group \
         member on another node (nodes: {})",
        2 * .on_node - .ranks,
        Counts(.nodes)
    )]
    GroupCrowded {
        /// The most crowded node.
        node: String,
        /// Ranks on it.
        on_node: usize,
        /// Ranks in the job.
        ranks: usize,
        /// Nodes (in first-appearance order) and their rank counts.
        nodes: Vec<(String, usize)>,
    },
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Local => "L1 local copies",
        Level::Partner => "L2 partner copies",
        Level::Parity => "L3 erasure-coded groups",
        Level::Pfs => "L4 shared-storage copies",
    }
}

/// `a:3, b:2, c:1`, the first few nodes only on a large job.
struct Counts<'a>(&'a [(String, usize)]);

impl fmt::Display for Counts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        for (i, (node, n)) in self.0.iter().take(SHOWN).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{node}:{n}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, ", ... ({} nodes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Which node each rank runs on (index = rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    nodes: Vec<String>,
}

impl Placement {
    /// The placement of ranks `0..nodes.len()`, rank `r` on `nodes[r]`.
    pub fn new(nodes: Vec<String>) -> Result<Self, PlacementError> {
        if nodes.is_empty() {
            return Err(PlacementError::Empty);
        }
        Ok(Placement { nodes })
    }

    /// The placement a manifest records (each rank's [`crate::manifest::RankRecord::node`]).
    pub fn of_manifest(m: &Manifest) -> Result<Self, PlacementError> {
        Self::new(m.ranks.iter().map(|r| r.node.clone()).collect())
    }

    /// Ranks placed.
    pub fn nranks(&self) -> usize {
        self.nodes.len()
    }

    /// The node of `rank`, if it is one of the placement's ranks.
    pub fn node_of(&self, rank: u32) -> Option<&str> {
        self.nodes.get(rank as usize).map(String::as_str)
    }

    /// The distinct nodes, in order of first appearance (the node of rank 0 first).
    pub fn nodes(&self) -> Vec<&str> {
        self.ranks_per_node().into_iter().map(|(n, _)| n).collect()
    }

    /// Each node (first-appearance order) with its ranks, ascending.
    pub fn ranks_per_node(&self) -> Vec<(&str, Vec<u32>)> {
        let mut out: Vec<(&str, Vec<u32>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (rank, node) in (0u32..).zip(&self.nodes) {
            let i = *index.entry(node).or_insert_with(|| {
                out.push((node, Vec::new()));
                out.len() - 1
            });
            out[i].1.push(rank);
        }
        out
    }

    /// Each node (first-appearance order) with its rank count, for error messages.
    fn counts(&self) -> Vec<(String, usize)> {
        let per_node = self.ranks_per_node();
        per_node
            .into_iter()
            .map(|(n, r)| (n.to_owned(), r.len()))
            .collect()
    }
}

/// Each rank's L2 partner: the rank whose node-local storage holds its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partners {
    of: Vec<u32>,
}

impl Partners {
    /// The partner of `rank` (the rank that holds `rank`'s copy).
    ///
    /// # Panics
    /// If `rank` is not a rank of the placement.
    pub fn of(&self, rank: u32) -> u32 {
        self.of[rank as usize]
    }

    /// Every rank's partner, indexed by rank.
    pub fn as_slice(&self) -> &[u32] {
        &self.of
    }

    /// The ranks whose copies `rank` holds, ascending (none, one, or several when nodes have
    /// different rank counts).
    pub fn held_by(&self, rank: u32) -> Vec<u32> {
        (0u32..)
            .zip(&self.of)
            .filter(|&(_, &p)| p == rank)
            .map(|(r, _)| r)
            .collect()
    }
}

/// L2 partners in a ring of nodes: with the nodes `N0..Nk-1` in first-appearance order, the
/// rank at position `j` on node `Ni` has as partner the rank at position `j mod c` on node
/// `N((i + distance) mod k)`, where `c` is that node's rank count.
///
/// So a partner is always on another node and losing one node never loses a rank together
/// with its copy (the copies of `Ni`'s ranks are all on `Ni+distance`). With equal rank counts
/// every rank holds exactly one copy; when counts differ, the ranks of a smaller node hold
/// the copies of several ranks of the node before it (position `j mod c`), and ranks of a
/// larger node past the previous node's count hold none.
///
/// Errors: all ranks on one node ([`PlacementError::OneNode`]); `distance` 0 or not below the
/// node count ([`PlacementError::PartnerDistance`]).
pub fn partners(placement: &Placement, distance: usize) -> Result<Partners, PlacementError> {
    let per_node = placement.ranks_per_node();
    let k = per_node.len();
    if k == 1 {
        return Err(PlacementError::OneNode {
            level: Level::Partner,
            node: per_node[0].0.to_owned(),
            ranks: placement.nranks(),
        });
    }
    if distance == 0 || distance >= k {
        return Err(PlacementError::PartnerDistance {
            distance,
            nodes: placement.counts(),
        });
    }
    let mut of = vec![0u32; placement.nranks()];
    for (i, (_, ranks)) in per_node.iter().enumerate() {
        let target = &per_node[(i + distance) % k].1;
        for (j, &rank) in ranks.iter().enumerate() {
            of[rank as usize] = target[j % target.len()];
        }
    }
    Ok(Partners { of })
}

/// L3 groups: which ranks share parity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    members: Vec<Vec<u32>>,
    of: Vec<usize>,
    size: usize,
}

impl Groups {
    /// Every group's members, ascending; groups in the order of their first member.
    pub fn as_slice(&self) -> &[Vec<u32>] {
        &self.members
    }

    /// The index of `rank`'s group in [`Groups::as_slice`].
    ///
    /// # Panics
    /// If `rank` is not a rank of the placement.
    pub fn group_of(&self, rank: u32) -> usize {
        self.of[rank as usize]
    }

    /// The members of `rank`'s group, `rank` included.
    ///
    /// # Panics
    /// If `rank` is not a rank of the placement.
    pub fn members_with(&self, rank: u32) -> &[u32] {
        &self.members[self.group_of(rank)]
    }

    /// Whether the placement made the groups smaller than the size asked for (the degraded
    /// mode of [`groups`]: a node holds more ranks than `ranks / size` rounded up).
    pub fn limited_by_nodes(&self) -> bool {
        let n = self.of.len();
        self.members.len() > n.div_ceil(self.size).min(n / 2)
    }
}

/// L3 groups of at most `size` ranks, every group on distinct nodes, covering every rank
/// exactly once.
///
/// Rule: with `n` ranks and `m` ranks on the most crowded node, there are
/// `G = max(ceil(n / size), m)` groups (at most `n / 2`, so no group is a singleton). List the
/// ranks node by node (nodes in first-appearance order, ranks ascending) and deal them out in
/// turn: the `i`-th rank of that list joins group `i mod G`. A node's ranks are consecutive in
/// the list and at most `G` of them, so they land in distinct groups; group sizes differ by at
/// most one (the remainder is spread, never a tiny last group).
///
/// - Enough nodes (`m <= ceil(n / size)`): the fewest groups of at most `size` (e.g. 8 ranks
///   on 4 nodes, size 4: 4, 4; 9 ranks on 9 nodes: 3, 3, 3; 5 ranks on 5 nodes: 3, 2).
/// - Degraded mode, when a node holds more ranks than `ceil(n / size)` (in particular fewer
///   nodes than `size` with equal counts): more, smaller groups, as many as that node has
///   ranks; each group still survives the loss of any one node, parity just costs more
///   ([`Groups::limited_by_nodes`] says so). E.g. 2 nodes x 4 ranks, size 4: 4 groups of 2.
/// - `size` 2 and an odd rank count: one group of 3 (no singleton).
///
/// Errors: `size` below 2 ([`PlacementError::GroupSize`]); all ranks on one node
/// ([`PlacementError::OneNode`]); a node with more than half of the ranks
/// ([`PlacementError::GroupCrowded`]): then no grouping of at least 2 ranks on distinct nodes
/// exists, since each of that node's ranks needs a partner from the fewer others.
pub fn groups(placement: &Placement, size: usize) -> Result<Groups, PlacementError> {
    if size < 2 {
        return Err(PlacementError::GroupSize { size });
    }
    let per_node = placement.ranks_per_node();
    let n = placement.nranks();
    if per_node.len() == 1 {
        return Err(PlacementError::OneNode {
            level: Level::Parity,
            node: per_node[0].0.to_owned(),
            ranks: n,
        });
    }
    let (crowded, m) = per_node
        .iter()
        .map(|(node, ranks)| (*node, ranks.len()))
        .fold(("", 0), |best, cur| if cur.1 > best.1 { cur } else { best });
    if 2 * m > n {
        return Err(PlacementError::GroupCrowded {
            node: crowded.to_owned(),
            on_node: m,
            ranks: n,
            nodes: placement.counts(),
        });
    }
    let count = n.div_ceil(size).max(m).min(n / 2);
    let mut members = vec![Vec::new(); count];
    let listed = per_node.iter().flat_map(|(_, ranks)| ranks.iter().copied());
    for (i, rank) in listed.enumerate() {
        members[i % count].push(rank);
    }
    for g in &mut members {
        g.sort_unstable();
    }
    members.sort_unstable_by_key(|g| g[0]);
    let mut of = vec![0; n];
    for (gi, g) in members.iter().enumerate() {
        for &r in g {
            of[r as usize] = gi;
        }
    }
    Ok(Groups { members, of, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A placement from one node name per rank.
    fn place(nodes: &[&str]) -> Placement {
        Placement::new(nodes.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    /// Block order: `per_node` ranks on each of the nodes, consecutive ranks together.
    fn block(names: &[&str], per_node: usize) -> Placement {
        place(
            &names
                .iter()
                .flat_map(|n| std::iter::repeat_n(*n, per_node))
                .collect::<Vec<_>>(),
        )
    }

    /// Round-robin order: rank `r` on node `r mod k`.
    fn round_robin(names: &[&str], per_node: usize) -> Placement {
        place(
            &(0..names.len() * per_node)
                .map(|r| names[r % names.len()])
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn placement_helpers() {
        let p = place(&["b", "a", "b", "c", "a", "b"]);
        assert_eq!(p.nranks(), 6);
        assert_eq!(p.nodes(), ["b", "a", "c"]);
        assert_eq!(
            p.ranks_per_node(),
            [("b", vec![0, 2, 5]), ("a", vec![1, 4]), ("c", vec![3])]
        );
        assert_eq!(p.node_of(3), Some("c"));
        assert_eq!(p.node_of(6), None);
        assert_eq!(Placement::new(vec![]), Err(PlacementError::Empty));
    }

    #[test]
    fn placement_of_a_manifest() {
        use crate::manifest::RankRecord;
        let rec = |node: &str| RankRecord {
            node: node.into(),
            file: "f".into(),
            len: 0,
            table_crc: 0,
            payload: 0,
            logged: 0,
            write_secs: 0.0,
        };
        let m = Manifest {
            job: "j".into(),
            epoch: 1,
            nranks: 3,
            created_unix_ms: 0,
            poll: 0,
            launch: 0,
            levels: vec![Level::Local],
            ranks: vec![rec("x"), rec("y"), rec("x")],
            total_secs: 0.0,
            copies: Default::default(),
        };
        assert_eq!(Placement::of_manifest(&m).unwrap(), place(&["x", "y", "x"]));
    }

    /// The partner table (index = rank) for each placement and distance, or the error's text.
    #[test]
    fn partner_table() {
        type Want = Result<Vec<u32>, &'static str>;
        let cases: Vec<(&str, Placement, usize, Want)> = vec![
            (
                "1 node",
                block(&["a"], 3),
                1,
                Err("L2 partner copies need ranks on at least 2 nodes: all 3 ranks are on node a"),
            ),
            ("2 nodes x 1", block(&["a", "b"], 1), 1, Ok(vec![1, 0])),
            (
                "2 nodes, distance 2 wraps",
                block(&["a", "b"], 1),
                2,
                Err("L2 partner distance 2 must be between 1 and 1 with 2 nodes (a:1, b:1)"),
            ),
            (
                "distance 0",
                block(&["a", "b"], 2),
                0,
                Err("L2 partner distance 0 must be between 1 and 1"),
            ),
            (
                "4 nodes x 2, block",
                block(&["a", "b", "c", "d"], 2),
                1,
                Ok(vec![2, 3, 4, 5, 6, 7, 0, 1]),
            ),
            (
                "4 nodes x 2, block, distance 2",
                block(&["a", "b", "c", "d"], 2),
                2,
                Ok(vec![4, 5, 6, 7, 0, 1, 2, 3]),
            ),
            (
                "4 nodes x 2, round-robin",
                round_robin(&["a", "b", "c", "d"], 2),
                1,
                Ok(vec![1, 2, 3, 0, 5, 6, 7, 4]),
            ),
            (
                "2 nodes x 2, round-robin (ranks 0,2 on a)",
                round_robin(&["a", "b"], 2),
                1,
                Ok(vec![1, 0, 3, 2]),
            ),
            (
                "2 nodes x 2, block (ranks 0,1 on a)",
                block(&["a", "b"], 2),
                1,
                Ok(vec![2, 3, 0, 1]),
            ),
            (
                // a:{0,1,2} b:{3,4} c:{5}: a's third rank wraps to b's first; c holds both
                // of b's copies; a holds c's copy on rank 0, and ranks 1, 2 hold none.
                "3 nodes with 3/2/1 ranks",
                place(&["a", "a", "a", "b", "b", "c"]),
                1,
                Ok(vec![3, 4, 3, 5, 5, 0]),
            ),
            (
                "8 nodes x 1",
                block(&["a", "b", "c", "d", "e", "f", "g", "h"], 1),
                3,
                Ok(vec![3, 4, 5, 6, 7, 0, 1, 2]),
            ),
        ];
        for (name, p, distance, want) in cases {
            match (partners(&p, distance), want) {
                (Ok(got), Ok(want)) => assert_eq!(got.as_slice(), want, "{name}"),
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn partner_copies_held() {
        let p = place(&["a", "a", "a", "b", "b", "c"]);
        let parts = partners(&p, 1).unwrap();
        assert_eq!(parts.held_by(3), [0, 2]);
        assert_eq!(parts.held_by(5), [3, 4]);
        assert_eq!(parts.held_by(4), [1]);
        assert_eq!(parts.held_by(0), [5]);
        assert!(parts.held_by(1).is_empty() && parts.held_by(2).is_empty());
        assert_eq!(parts.of(5), 0);
    }

    /// The groups for each placement and size, or the error's text.
    #[test]
    fn group_table() {
        type Want = Result<(Vec<Vec<u32>>, bool), &'static str>;
        let cases: Vec<(&str, Placement, usize, Want)> = vec![
            (
                "1 node",
                block(&["a"], 4),
                2,
                Err(
                    "L3 erasure-coded groups need ranks on at least 2 nodes: all 4 ranks are \
                     on node a",
                ),
            ),
            (
                "size 1",
                block(&["a", "b"], 1),
                1,
                Err("L3 group size 1 is too small"),
            ),
            (
                "2 nodes x 1",
                block(&["a", "b"], 1),
                2,
                Ok((vec![vec![0, 1]], false)),
            ),
            (
                "2 nodes x 1, size 4 (fewer ranks than size)",
                block(&["a", "b"], 1),
                4,
                Ok((vec![vec![0, 1]], false)),
            ),
            (
                "2 nodes x 4, size 4: degraded to 4 groups of 2",
                block(&["a", "b"], 4),
                4,
                Ok((vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]], true)),
            ),
            (
                "4 nodes x 2, block, size 4",
                block(&["a", "b", "c", "d"], 2),
                4,
                Ok((vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]], false)),
            ),
            (
                "4 nodes x 2, round-robin, size 4",
                round_robin(&["a", "b", "c", "d"], 2),
                4,
                Ok((vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]], false)),
            ),
            (
                "4 nodes x 2, block, size 2",
                block(&["a", "b", "c", "d"], 2),
                2,
                Ok((vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]], false)),
            ),
            (
                "4 nodes x 2, block, size 3: 3 groups of 3,3,2",
                block(&["a", "b", "c", "d"], 2),
                3,
                Ok((vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]], false)),
            ),
            (
                "3 nodes with 3/2/1 ranks, size 3: node a forces 3 groups",
                place(&["a", "a", "a", "b", "b", "c"]),
                3,
                Ok((vec![vec![0, 3], vec![1, 4], vec![2, 5]], true)),
            ),
            (
                "3 nodes with 3/2/1 ranks, size 2",
                place(&["a", "a", "a", "b", "b", "c"]),
                2,
                Ok((vec![vec![0, 3], vec![1, 4], vec![2, 5]], false)),
            ),
            (
                "3 nodes with 4/1/1 ranks: a holds more than half",
                place(&["a", "a", "a", "a", "b", "c"]),
                2,
                Err(
                    "node a holds 4 of the 6 ranks, more than half, so 2 of its ranks would \
                     have no group member on another node (nodes: a:4, b:1, c:1)",
                ),
            ),
            (
                "8 nodes x 1, size 4",
                block(&["a", "b", "c", "d", "e", "f", "g", "h"], 1),
                4,
                Ok((vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]], false)),
            ),
            (
                "8 nodes x 1, size 3: remainder spread (3,3,2)",
                block(&["a", "b", "c", "d", "e", "f", "g", "h"], 1),
                3,
                Ok((vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]], false)),
            ),
            (
                "3 nodes x 1, size 2: the odd rank joins a group of 3",
                block(&["a", "b", "c"], 1),
                2,
                Ok((vec![vec![0, 1, 2]], false)),
            ),
            (
                "5 nodes x 1, size 2",
                block(&["a", "b", "c", "d", "e"], 1),
                2,
                Ok((vec![vec![0, 2, 4], vec![1, 3]], false)),
            ),
        ];
        for (name, p, size, want) in cases {
            match (groups(&p, size), want) {
                (Ok(got), Ok((want, limited))) => {
                    assert_eq!(got.as_slice(), want, "{name}");
                    assert_eq!(got.limited_by_nodes(), limited, "{name}");
                }
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn group_lookup() {
        let g = groups(&block(&["a", "b", "c", "d"], 2), 4).unwrap();
        assert_eq!(g.group_of(5), 1);
        assert_eq!(g.members_with(5), [1, 3, 5, 7]);
    }

    #[test]
    fn long_node_lists_are_cut_in_messages() {
        let names: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let e = partners(&block(&refs, 1), 25).unwrap_err().to_string();
        assert!(e.contains("n7:1, ... (20 nodes)"), "{e}");
        assert!(!e.contains("n8:"), "{e}");
    }

    /// A placement of 1..24 ranks over up to 6 nodes, in any order and with any counts.
    fn any_placement() -> impl Strategy<Value = Placement> {
        prop::collection::vec(0usize..6, 1..24)
            .prop_map(|idx| Placement::new(idx.iter().map(|i| format!("n{i}")).collect()).unwrap())
    }

    proptest! {
        /// Partners exist exactly when there are 2+ nodes and the distance is below their
        /// count; then losing any one node never loses a rank together with its partner.
        #[test]
        fn partners_survive_any_node_loss(p in any_placement(), distance in 0usize..8) {
            let k = p.nodes().len();
            match partners(&p, distance) {
                Ok(parts) => {
                    prop_assert!(k >= 2 && (1..k).contains(&distance));
                    for lost in p.nodes() {
                        for r in 0..p.nranks() as u32 {
                            let partner = parts.of(r);
                            prop_assert!((partner as usize) < p.nranks());
                            prop_assert!(
                                !(p.node_of(r) == Some(lost) && p.node_of(partner) == Some(lost)),
                                "node {lost} takes rank {r} and its partner {partner}"
                            );
                        }
                    }
                }
                Err(_) => prop_assert!(k < 2 || !(1..k).contains(&distance)),
            }
        }

        /// Groups exist exactly when no node holds more than half of the ranks (and 2+
        /// nodes); then they cover every rank once, with 2+ members on distinct nodes, sizes
        /// within one of each other, and losing any one node loses at most one member of each.
        #[test]
        fn groups_survive_any_node_loss(p in any_placement(), size in 0usize..7) {
            let n = p.nranks();
            let per_node = p.ranks_per_node();
            let m = per_node.iter().map(|(_, r)| r.len()).max().unwrap();
            match groups(&p, size) {
                Ok(g) => {
                    prop_assert!(size >= 2 && per_node.len() >= 2 && 2 * m <= n);
                    let mut seen = vec![0; n];
                    for (gi, members) in g.as_slice().iter().enumerate() {
                        prop_assert!(members.len() >= 2);
                        prop_assert!(members.len() <= size.max(3));
                        for &r in members {
                            seen[r as usize] += 1;
                            prop_assert_eq!(g.group_of(r), gi);
                        }
                        for lost in p.nodes() {
                            let on_lost = members.iter().filter(|&&r| p.node_of(r) == Some(lost));
                            prop_assert!(on_lost.count() <= 1, "node {} twice in {:?}", lost, members);
                        }
                    }
                    prop_assert!(seen.iter().all(|&c| c == 1), "cover {:?}", seen);
                    let sizes = g.as_slice().iter().map(Vec::len);
                    prop_assert!(sizes.clone().max().unwrap() - sizes.min().unwrap() <= 1);
                    prop_assert_eq!(g.as_slice().len(), n.div_ceil(size).max(m).min(n / 2));
                }
                Err(_) => prop_assert!(size < 2 || per_node.len() < 2 || 2 * m > n),
            }
        }
    }
}
