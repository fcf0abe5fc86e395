//! Where each rank of a launch runs on real nodes, pure: [`place`] takes the job's nodes (from
//! `--nodes`, see [`crate::hostlist`]), the ranks per node, the spares and the previous
//! placement, and gives a [`Placement`] or a [`PlaceError`] naming what does not fit.
//!
//! Rules: the first `nodes - spares` nodes are the working nodes, the last `spares` hold no
//! rank; an excluded working node (down, drained) is replaced by the first spare not excluded.
//! A node's slots are `ranks_per_node` (`--ranks-per-node`); a node holding that many is
//! *full*. Without it a node has no fixed number of slots. Without a previous placement, ranks
//! go in blocks of consecutive ranks (`ranks_per_node` each, or even blocks with the first
//! `ranks % nodes` nodes one rank larger). With one, a rank whose node is still working and
//! not full stays there (its node-local files are there, and a migration put it there); the
//! others go, in rank order, to the working node with the fewest ranks that is not full (the
//! first in list order on a tie). A previous placement on none of the working nodes counts as
//! none.
//!
//! [`room`], [`check_room`] and [`spread`] are the capacity rules `ckpt migrate`, `ckpt
//! drain` and the recovery of lost nodes apply to a placement as a map (rank → node name),
//! whatever the backend.

use std::collections::BTreeMap;
use std::fmt;

/// What [`place`] needs.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Ranks of the job (at least 1).
    pub ranks: u32,
    /// The job's nodes in order, spares last (distinct names).
    pub nodes: &'a [String],
    /// Most ranks on one node (`--ranks-per-node`); `None`: the even share.
    pub ranks_per_node: Option<u32>,
    /// How many of the last nodes are spares (`--spares`).
    pub spares: u32,
    /// Nodes that must hold no rank (down or drained).
    pub excluded: &'a [String],
    /// The previous placement (rank → node), e.g. the newest epoch's; ranks stay where it
    /// put them when they can.
    pub previous: Option<&'a BTreeMap<u32, String>>,
}

/// Ranks on nodes: the result of [`place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Working nodes in order (some may hold no rank when there are more nodes than ranks).
    nodes: Vec<String>,
    /// Spare nodes left, holding no rank.
    spares: Vec<String>,
    /// Each rank's index into `nodes`.
    of_rank: Vec<usize>,
}

impl Placement {
    /// The node of `rank` (`None` past the last rank).
    pub fn node_of(&self, rank: u32) -> Option<&str> {
        let i = *self.of_rank.get(rank as usize)?;
        Some(&self.nodes[i])
    }

    /// The ranks, in order.
    pub fn ranks(&self) -> u32 {
        self.of_rank.len() as u32
    }

    /// The working nodes, in order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The spare nodes left, holding no rank.
    pub fn spares(&self) -> &[String] {
        &self.spares
    }

    /// The ranks on `node`, increasing.
    pub fn ranks_on(&self, node: &str) -> Vec<u32> {
        (0..self.ranks())
            .filter(|&r| self.node_of(r) == Some(node))
            .collect()
    }

    /// Rank → node, as a map (the form of [`Request::previous`] and of placement files).
    pub fn to_map(&self) -> BTreeMap<u32, String> {
        (0..self.ranks())
            .filter_map(|r| Some((r, self.node_of(r)?.to_owned())))
            .collect()
    }

    /// `rank R: FROM -> TO` for each rank whose node differs from `previous`.
    pub fn moves_from(&self, previous: &BTreeMap<u32, String>) -> Vec<String> {
        (0..self.ranks())
            .filter_map(|r| {
                let (from, to) = (previous.get(&r)?, self.node_of(r)?);
                (from != to).then(|| format!("rank {r}: {from} -> {to}"))
            })
            .collect()
    }
}

/// Why ranks cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceError {
    /// No node given.
    NoNodes,
    /// A node listed twice.
    Duplicate(String),
    /// `--ranks-per-node 0`.
    ZeroPerNode,
    /// Spares take every node.
    SparesTakeAll { nodes: usize, spares: u32 },
    /// Every working node is excluded and no spare is left.
    NoNodeLeft { excluded: Vec<String> },
    /// More ranks than slots on the working nodes.
    TooManyRanks {
        ranks: u32,
        nodes: usize,
        per_node: u32,
        excluded: Vec<String>,
    },
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlaceError::NoNodes => write!(f, "no node to place ranks on"),
            PlaceError::Duplicate(n) => write!(f, "node {n} is listed twice"),
            PlaceError::ZeroPerNode => write!(f, "--ranks-per-node 0: a node holds at least 1"),
            PlaceError::SparesTakeAll { nodes, spares } => write!(
                f,
                "--spares {spares} with {nodes} node{}: no node left to run ranks on",
                plural(*nodes)
            ),
            PlaceError::NoNodeLeft { excluded } => write!(
                f,
                "no working node left: {} excluded and no spare left",
                excluded.join(", ")
            ),
            PlaceError::TooManyRanks {
                ranks,
                nodes,
                per_node,
                excluded,
            } => {
                write!(
                    f,
                    "{ranks} ranks do not fit on {nodes} working node{} x {per_node} per node \
                     ({} slots)",
                    plural(*nodes),
                    *nodes as u64 * u64::from(*per_node)
                )?;
                if !excluded.is_empty() {
                    write!(f, " with {} excluded", excluded.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for PlaceError {}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Places `req.ranks` ranks (see the module's rules).
pub fn place(req: &Request<'_>) -> Result<Placement, PlaceError> {
    let working = working_nodes(req)?;
    let per_node = match req.ranks_per_node {
        Some(0) => return Err(PlaceError::ZeroPerNode),
        Some(k) => k,
        // No fixed slots: the even share always fits, and kept ranks are never moved.
        None => u32::MAX,
    };
    let excluded_here = || {
        let mut e: Vec<String> = req
            .excluded
            .iter()
            .filter(|n| req.nodes.contains(n))
            .cloned()
            .collect();
        e.dedup();
        e
    };
    if u64::from(req.ranks) > working.len() as u64 * u64::from(per_node) {
        return Err(PlaceError::TooManyRanks {
            ranks: req.ranks,
            nodes: working.len(),
            per_node,
            excluded: excluded_here(),
        });
    }
    let of_rank = match req.previous {
        None => blocks(req.ranks, working.len(), req.ranks_per_node),
        // A previous placement on other nodes (none kept) is no placement: blocks.
        Some(prev) if prev.values().any(|n| working.contains(n)) => {
            keep_previous(req.ranks, &working, per_node, prev)
        }
        Some(_) => blocks(req.ranks, working.len(), req.ranks_per_node),
    };
    let spare_part = &req.nodes[req.nodes.len() - req.spares as usize..];
    let spares = spare_part
        .iter()
        .filter(|n| !working.contains(n) && !req.excluded.contains(n))
        .cloned()
        .collect();
    Ok(Placement {
        nodes: working,
        spares,
        of_rank,
    })
}

/// The working nodes: the first `nodes - spares` not excluded, each excluded one replaced by
/// the next spare not excluded.
fn working_nodes(req: &Request<'_>) -> Result<Vec<String>, PlaceError> {
    if req.nodes.is_empty() {
        return Err(PlaceError::NoNodes);
    }
    for (i, n) in req.nodes.iter().enumerate() {
        if req.nodes[..i].contains(n) {
            return Err(PlaceError::Duplicate(n.clone()));
        }
    }
    let spares = req.spares as usize;
    if spares >= req.nodes.len() {
        return Err(PlaceError::SparesTakeAll {
            nodes: req.nodes.len(),
            spares: req.spares,
        });
    }
    let (main, spare) = req.nodes.split_at(req.nodes.len() - spares);
    let usable = |n: &&String| !req.excluded.contains(n);
    let lost = main.iter().filter(|n| !usable(n)).count();
    let mut working: Vec<String> = main.iter().filter(usable).cloned().collect();
    // Spares the previous placement put ranks on (a migration, a drain, a lost node's
    // replacement) are in use; further ones replace the excluded nodes not yet replaced.
    let holds = |n: &&String| req.previous.is_some_and(|p| p.values().any(|m| m == *n));
    let in_use: Vec<String> = spare.iter().filter(usable).filter(holds).cloned().collect();
    let more = lost.saturating_sub(in_use.len());
    working.extend(in_use);
    let idle = spare.iter().filter(usable).filter(|n| !holds(n));
    working.extend(idle.take(more).cloned());
    if working.is_empty() {
        return Err(PlaceError::NoNodeLeft {
            excluded: req.excluded.to_vec(),
        });
    }
    Ok(working)
}

/// Blocks of consecutive ranks: `per_node` each, else even blocks over `min(nodes, ranks)`
/// nodes (the first `ranks % nodes` one rank larger).
fn blocks(ranks: u32, nodes: usize, per_node: Option<u32>) -> Vec<usize> {
    match per_node {
        Some(k) => (0..ranks).map(|r| (r / k) as usize).collect(),
        None => {
            let used = (nodes as u32).min(ranks);
            (0..ranks)
                .map(|r| crate::exec_rank::node_of(r, ranks, used) as usize)
                .collect()
        }
    }
}

/// Ranks stay on their previous node while it works and has room; the others go, in rank
/// order, to the least loaded working node.
fn keep_previous(
    ranks: u32,
    working: &[String],
    per_node: u32,
    prev: &BTreeMap<u32, String>,
) -> Vec<usize> {
    let mut load = vec![0u32; working.len()];
    let mut of_rank: Vec<Option<usize>> = vec![None; ranks as usize];
    for (r, slot) in of_rank.iter_mut().enumerate() {
        let kept = prev
            .get(&(r as u32))
            .and_then(|n| working.iter().position(|w| w == n))
            .filter(|&i| load[i] < per_node);
        if let Some(i) = kept {
            load[i] += 1;
            *slot = Some(i);
        }
    }
    of_rank
        .into_iter()
        .map(|slot| {
            slot.unwrap_or_else(|| {
                // `place` checked that the slots suffice, so a node with room exists.
                let i = (0..working.len())
                    .filter(|&i| load[i] < per_node)
                    .min_by_key(|&i| load[i])
                    .unwrap_or(0);
                load[i] += 1;
                i
            })
        })
        .collect()
}

/// Free slots of `node` in `placement` with `per_node` slots a node (`None`: no limit).
pub fn room(placement: &BTreeMap<u32, String>, node: &str, per_node: Option<u32>) -> Option<u32> {
    let held = placement.values().filter(|n| *n == node).count() as u32;
    per_node.map(|k| k.saturating_sub(held))
}

/// A node that cannot take the ranks sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    /// The node.
    pub node: String,
    /// Ranks it holds now.
    pub holds: u32,
    /// Its slots.
    pub slots: u32,
    /// Ranks that were to move there.
    pub moving: u32,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let free = self.slots.saturating_sub(self.holds);
        write!(
            f,
            "{} is full: it holds {} rank{} in its {} slot{} (--ranks-per-node {}), {} free, \
             {} to move there",
            self.node,
            self.holds,
            plural(self.holds as usize),
            self.slots,
            plural(self.slots as usize),
            self.slots,
            free,
            self.moving
        )
    }
}

/// Refuses moving the ranks `moving` (rank → new node) onto a node of `current` without the
/// room for them; ranks already on their target count as staying.
pub fn check_room(
    current: &BTreeMap<u32, String>,
    moving: &BTreeMap<u32, String>,
    per_node: Option<u32>,
) -> Result<(), Full> {
    let Some(slots) = per_node else {
        return Ok(());
    };
    let mut targets: BTreeMap<&str, u32> = BTreeMap::new();
    for (r, to) in moving {
        if current.get(r) != Some(to) {
            *targets.entry(to).or_default() += 1;
        }
    }
    for (node, coming) in targets {
        // Ranks leaving `node` in the same move free their slots.
        let leaving = moving
            .iter()
            .filter(|(r, to)| current.get(r).is_some_and(|n| n == node) && *to != node)
            .count() as u32;
        let holds = current.values().filter(|n| *n == node).count() as u32;
        if holds - leaving + coming > slots {
            return Err(Full {
                node: node.to_owned(),
                holds,
                slots,
                moving: coming,
            });
        }
    }
    Ok(())
}

/// Why [`spread`] cannot place the ranks of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// The node being emptied.
    pub node: String,
    /// Its ranks.
    pub ranks: u32,
    /// Free slots on the other nodes.
    pub free: u32,
    /// Slots a node.
    pub slots: u32,
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no room for the {} rank{} of {}: the other nodes have {} free slot{} \
             (--ranks-per-node {})",
            self.ranks,
            plural(self.ranks as usize),
            self.node,
            self.free,
            plural(self.free as usize),
            self.slots
        )
    }
}

/// `current` with each rank of `node` (in rank order) moved to the node of `up` that then
/// holds the fewest ranks and is not full (the first such in `up`).
pub fn spread(
    current: &BTreeMap<u32, String>,
    node: &str,
    up: &[&String],
    per_node: Option<u32>,
) -> Result<BTreeMap<u32, String>, NoRoom> {
    let mut load: Vec<(u32, &String)> = up
        .iter()
        .map(|k| (current.values().filter(|n| n == k).count() as u32, *k))
        .collect();
    let limit = per_node.unwrap_or(u32::MAX);
    let mut next = current.clone();
    for (_, n) in next.iter_mut().filter(|(_, n)| *n == node) {
        let Some(slot) = load
            .iter_mut()
            .filter(|(count, _)| *count < limit)
            .min_by_key(|(count, _)| *count)
        else {
            let ranks = current.values().filter(|n| *n == node).count() as u32;
            let free = up.iter().filter_map(|k| room(current, k, per_node)).sum();
            return Err(NoRoom {
                node: node.to_owned(),
                ranks,
                free,
                slots: limit,
            });
        };
        slot.0 += 1;
        *n = slot.1.clone();
    }
    Ok(next)
}

/// Whether two of `names` share an address (`addresses` resolves a name): names of one
/// machine, which Open MPI folds into one node.
pub fn shares_address<A: PartialEq>(names: &[String], addresses: impl Fn(&str) -> Vec<A>) -> bool {
    let all: Vec<Vec<A>> = names.iter().map(|n| addresses(n)).collect();
    all.iter()
        .enumerate()
        .any(|(i, a)| all[..i].iter().any(|b| a.iter().any(|x| b.contains(x))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &str) -> Vec<String> {
        crate::hostlist::parse(list).unwrap()
    }

    /// `n1:0,1 n2:2,3 | spares: n3`, or the error.
    fn show(
        ranks: u32,
        nodes: &str,
        per_node: Option<u32>,
        spares: u32,
        excluded: &str,
        previous: Option<&str>,
    ) -> String {
        let nodes = names(nodes);
        let excluded: Vec<String> = excluded.split_whitespace().map(str::to_owned).collect();
        let previous: Option<BTreeMap<u32, String>> = previous.map(|p| {
            p.split_whitespace()
                .enumerate()
                .map(|(r, n)| (r as u32, n.to_owned()))
                .collect()
        });
        let req = Request {
            ranks,
            nodes: &nodes,
            ranks_per_node: per_node,
            spares,
            excluded: &excluded,
            previous: previous.as_ref(),
        };
        match place(&req) {
            Err(e) => format!("error: {e}"),
            Ok(p) => {
                let mut out: Vec<String> = p
                    .nodes()
                    .iter()
                    .map(|n| {
                        let r: Vec<String> = p.ranks_on(n).iter().map(u32::to_string).collect();
                        format!("{n}:{}", r.join(","))
                    })
                    .collect();
                if !p.spares().is_empty() {
                    out.push(format!("| spares: {}", p.spares().join(",")));
                }
                out.join(" ")
            }
        }
    }

    #[test]
    fn placements() {
        for (ranks, nodes, per, spares, excl, prev, want) in [
            // Even blocks, the first nodes one larger.
            (4, "n[1-2]", None, 0, "", None, "n1:0,1 n2:2,3"),
            (5, "n[1-2]", None, 0, "", None, "n1:0,1,2 n2:3,4"),
            (7, "n[1-3]", None, 0, "", None, "n1:0,1,2 n2:3,4 n3:5,6"),
            // More nodes than ranks: the last hold none.
            (2, "n[1-3]", None, 0, "", None, "n1:0 n2:1 n3:"),
            (1, "localhost", None, 0, "", None, "localhost:0"),
            // --ranks-per-node fills nodes in order.
            (5, "n[1-3]", Some(2), 0, "", None, "n1:0,1 n2:2,3 n3:4"),
            (4, "n[1-3]", Some(4), 0, "", None, "n1:0,1,2,3 n2: n3:"),
            // Spares hold no rank.
            (4, "n[1-3]", None, 1, "", None, "n1:0,1 n2:2,3 | spares: n3"),
            (
                4,
                "n[1-4]",
                None,
                2,
                "",
                None,
                "n1:0,1 n2:2,3 | spares: n3,n4",
            ),
            // An excluded node is replaced by the first spare; its ranks move there.
            (
                4,
                "n[1-4]",
                None,
                2,
                "n1",
                Some("n1 n1 n2 n2"),
                "n2:2,3 n3:0,1 | spares: n4",
            ),
            // A spare a migration put ranks on is in use.
            (
                4,
                "n[1-3]",
                Some(2),
                1,
                "",
                Some("n1 n3 n2 n2"),
                "n1:0 n2:2,3 n3:1",
            ),
            // A spare already replacing an excluded node is not replaced again.
            (
                4,
                "n[1-4]",
                None,
                2,
                "n1",
                Some("n3 n3 n2 n2"),
                "n2:2,3 n3:0,1 | spares: n4",
            ),
            // An excluded spare is skipped.
            (
                4,
                "n[1-4]",
                None,
                2,
                "n1 n3",
                Some("n1 n1 n2 n2"),
                "n2:2,3 n4:0,1",
            ),
            // No spare left: the survivors take the ranks when the even share allows it.
            (
                4,
                "n[1-3]",
                None,
                0,
                "n2",
                Some("n1 n1 n2 n2"),
                "n1:0,1 n3:2,3",
            ),
            // The previous placement is kept (after a migration), even when not in blocks.
            (
                4,
                "n[1-2]",
                None,
                0,
                "",
                Some("n2 n1 n1 n2"),
                "n1:1,2 n2:0,3",
            ),
            // Without --ranks-per-node no node is full: ranks stay where they were (a
            // migration put them there); a rank whose node is unknown goes to the least
            // loaded node.
            (
                4,
                "n[1-2]",
                None,
                0,
                "",
                Some("n1 n1 n1 gone"),
                "n1:0,1,2 n2:3",
            ),
            // A full node keeps only its slots' worth of its previous ranks.
            (
                4,
                "n[1-2]",
                Some(2),
                0,
                "",
                Some("n1 n1 n1 n1"),
                "n1:0,1 n2:2,3",
            ),
            (
                3,
                "n[1-3]",
                Some(2),
                0,
                "",
                Some("n1 x x"),
                "n1:0 n2:1 n3:2",
            ),
            // A previous placement on none of the nodes (a job that ran elsewhere): blocks.
            (
                5,
                "n[1-2]",
                None,
                0,
                "",
                Some("vm vm vm vm vm"),
                "n1:0,1,2 n2:3,4",
            ),
        ] {
            let got = show(ranks, nodes, per, spares, excl, prev);
            assert_eq!(
                got, want,
                "{ranks} ranks on {nodes} per {per:?} spares {spares}"
            );
        }
    }

    #[test]
    fn what_does_not_fit_is_named() {
        for (ranks, nodes, per, spares, excl, want) in [
            (
                5,
                "n[1-2]",
                Some(2),
                0,
                "",
                "5 ranks do not fit on 2 working nodes x 2 per node (4 slots)",
            ),
            (
                4,
                "n[1-3]",
                Some(2),
                1,
                "n1 n3",
                "4 ranks do not fit on 1 working node x 2 per node (2 slots) with n1, \
                 n3 excluded",
            ),
            (
                2,
                "n[1-2]",
                None,
                2,
                "",
                "--spares 2 with 2 nodes: no node left to run ranks on",
            ),
            (
                2,
                "n1",
                None,
                0,
                "n1",
                "no working node left: n1 excluded and no spare left",
            ),
            (2, "n1,n1", None, 0, "", "node n1 is listed twice"),
            (
                2,
                "n1",
                Some(0),
                0,
                "",
                "--ranks-per-node 0: a node holds at least 1",
            ),
        ] {
            assert_eq!(
                show(ranks, nodes, per, spares, excl, None),
                format!("error: {want}")
            );
        }
        let req = Request {
            ranks: 1,
            nodes: &[],
            ranks_per_node: None,
            spares: 0,
            excluded: &[],
            previous: None,
        };
        assert_eq!(place(&req), Err(PlaceError::NoNodes));
    }

    #[test]
    fn moves_and_maps() {
        let nodes = names("n[1-2]");
        let prev: BTreeMap<u32, String> =
            [(0, "n1".into()), (1, "n1".into()), (2, "n2".into())].into();
        let excluded = ["n1".to_owned()];
        let p = place(&Request {
            ranks: 3,
            nodes: &nodes,
            ranks_per_node: None,
            spares: 0,
            excluded: &excluded,
            previous: Some(&prev),
        })
        .unwrap();
        assert_eq!(
            p.moves_from(&prev),
            ["rank 0: n1 -> n2", "rank 1: n1 -> n2"]
        );
        assert_eq!(p.to_map().values().collect::<Vec<_>>(), ["n2", "n2", "n2"]);
        assert_eq!((p.node_of(2), p.node_of(3)), (Some("n2"), None));
    }

    fn map(list: &str) -> BTreeMap<u32, String> {
        list.split_whitespace()
            .enumerate()
            .map(|(r, n)| (r as u32, n.to_owned()))
            .collect()
    }

    #[test]
    fn a_node_is_full_when_it_holds_its_slots() {
        let now = map("n1 n1 n2 n3");
        assert_eq!(room(&now, "n1", Some(2)), Some(0));
        assert_eq!(room(&now, "n2", Some(2)), Some(1));
        assert_eq!(room(&now, "n4", Some(2)), Some(2));
        assert_eq!(room(&now, "n1", None), None);
        let to = |r: u32, n: &str| BTreeMap::from([(r, n.to_owned())]);
        // Onto a full node: refused, naming it, its slots and what was to move.
        let e = check_room(&now, &to(2, "n1"), Some(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "n1 is full: it holds 2 ranks in its 2 slots (--ranks-per-node 2), 0 free, 1 to \
             move there"
        );
        // Without --ranks-per-node nothing is full.
        assert_eq!(check_room(&now, &to(2, "n1"), None), Ok(()));
        assert_eq!(check_room(&now, &to(0, "n2"), Some(2)), Ok(()));
        // Two ranks onto a node with one free slot.
        let both = BTreeMap::from([(0, "n2".to_owned()), (3, "n2".to_owned())]);
        let e = check_room(&now, &both, Some(2)).unwrap_err();
        assert_eq!((e.node.as_str(), e.holds, e.moving), ("n2", 1, 2));
        // A swap frees the slots it fills.
        let swap = BTreeMap::from([(0, "n2".to_owned()), (2, "n1".to_owned())]);
        assert_eq!(check_room(&now, &swap, Some(2)), Ok(()));
        // A rank sent where it already is takes no slot.
        assert_eq!(check_room(&now, &to(0, "n1"), Some(2)), Ok(()));
    }

    #[test]
    fn spreading_uses_only_nodes_with_room() {
        let names: Vec<String> = names("n[1-4]");
        let up: Vec<&String> = names.iter().filter(|n| *n != "n1").collect();
        let now = map("n1 n1 n1 n2 n2 n3");
        // Unlimited: the least loaded first (n4, then n3/n4, ...).
        let next = spread(&now, "n1", &up, None).unwrap();
        assert_eq!(
            next.values().collect::<Vec<_>>(),
            ["n4", "n3", "n4", "n2", "n2", "n3"]
        );
        // 2 slots a node: n2 is full, n3 has 1, n4 has 2: exactly enough.
        let next = spread(&now, "n1", &up, Some(2)).unwrap();
        assert_eq!(
            next.values().collect::<Vec<_>>(),
            ["n4", "n3", "n4", "n2", "n2", "n3"]
        );
        assert!(next.values().all(|n| n != "n1"));
        // Without n4 there is one free slot for three ranks.
        let up3: Vec<&String> = up.iter().copied().filter(|n| *n != "n4").collect();
        let e = spread(&now, "n1", &up3, Some(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no room for the 3 ranks of n1: the other nodes have 1 free slot (--ranks-per-node 2)"
        );
    }

    #[test]
    fn names_of_one_machine_share_an_address() {
        let addr = |n: &str| match n {
            "localhost" | "vm" => vec![1, 2],
            "lo6" => vec![2],
            "n1" => vec![3],
            _ => vec![],
        };
        let list = |l: &str| names(l);
        assert!(shares_address(&list("localhost,vm"), addr));
        assert!(shares_address(&list("n1,localhost,lo6"), addr));
        assert!(!shares_address(&list("n1,localhost"), addr));
        assert!(
            !shares_address(&list("x,y"), addr),
            "unresolved names share nothing"
        );
    }
}
