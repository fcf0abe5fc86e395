//! Spare nodes (`ckpt run --spares S`) and the launcher's answer to a lost node, on emulated
//! nodes (`--emulate-nodes`) and real ones (`--nodes`).
//!
//! With spares, the ranks start on the first `N - S` nodes; the last `S` hold no rank (on
//! emulated nodes the blocks are written as the job's placement, `control/placement`, before
//! the first launch; on real nodes [`crate::placement::place`] leaves them out). Node-loss
//! handling is on when `--spares` (even 0) or `--spread-on-failure` is given: after a failed
//! launch, a node whose ranks failed twice is lost (the node the failed rank logged in its
//! `rank_started` event, else the one the backend's failure report names, else the one the
//! placement gave it: [`failed_node`]); on emulated nodes so is a node holding ranks whose
//! node-local directory `<base>/<node>/<job_id>` is gone (as a crash, or `ckpt kill-node`,
//! leaves it). A lost node is excluded for the rest of the job (`control/excluded`) and its
//! ranks move to a free spare, else (with `--spread-on-failure`) over the survivors with room,
//! else the job stops with its newest epoch intact. Without handling, a lost emulated node
//! comes back empty on the relaunch (its ranks recover their files from L2/L3/L4 onto it), and
//! a real one is launched on again.

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::Failure;
use crate::exec_rank::{node_name, node_of};
use crate::migrate;
use crate::plan::RunPlan;

/// The placement with `spares` spare nodes: blocks of ranks over the first `nodes - spares`.
pub fn initial(nranks: u32, nodes: u32, spares: u32) -> BTreeMap<u32, String> {
    let used = nodes.saturating_sub(spares).max(1);
    (0..nranks)
        .map(|r| (r, node_name(node_of(r, nranks, used))))
        .collect()
}

/// The nodes of `known` that hold no rank of `placement` and are not excluded, in order.
pub fn free<'a>(
    placement: &BTreeMap<u32, String>,
    known: &'a [String],
    excluded: &[String],
) -> Vec<&'a String> {
    known
        .iter()
        .filter(|k| !excluded.contains(k) && !placement.values().any(|n| n == *k))
        .collect()
}

/// Where the ranks of the `lost` nodes go: all of a node's ranks to the first free spare,
/// else (`spread`) each to the surviving node with the fewest ranks and room (`per_node`
/// slots a node). Returns the new placement and one line per lost node, or why the job cannot
/// go on.
pub fn relocate(
    placement: &BTreeMap<u32, String>,
    known: &[String],
    excluded: &[String],
    lost: &[String],
    spread: bool,
    per_node: Option<u32>,
) -> Result<(BTreeMap<u32, String>, Vec<String>), String> {
    let gone: Vec<String> = excluded.iter().chain(lost).cloned().collect();
    let mut next = placement.clone();
    let mut lines = Vec::new();
    for node in lost {
        let ranks: Vec<String> = next
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(r, _)| r.to_string())
            .collect();
        if ranks.is_empty() {
            continue;
        }
        let ranks = ranks.join(", ");
        if let Some(spare) = free(&next, known, &gone).first().map(|s| (*s).clone()) {
            for n in next.values_mut().filter(|n| *n == node) {
                *n = spare.clone();
            }
            lines.push(format!("{node} lost: ranks {ranks} move to spare {spare}"));
            continue;
        }
        let up: Vec<&String> = known.iter().filter(|k| !gone.contains(k)).collect();
        if !spread || up.is_empty() {
            let why = if up.is_empty() {
                "no node is left".to_owned()
            } else {
                "no spare node is left and --spread-on-failure was not given".to_owned()
            };
            return Err(format!(
                "{node} lost: ranks {ranks} have nowhere to go: {why}"
            ));
        }
        next = crate::placement::spread(&next, node, &up, per_node)
            .map_err(|e| format!("{node} lost: {e}"))?;
        let names: Vec<&str> = up.iter().map(|s| s.as_str()).collect();
        lines.push(format!(
            "{node} lost: ranks {ranks} spread over {} (no spare left)",
            names.join(", ")
        ));
    }
    Ok((next, lines))
}

/// What a failed launch told about its nodes.
#[derive(Debug, Clone, Copy)]
pub struct Reported<'a> {
    /// The rank failure the backend reported, if any.
    pub failure: Option<&'a Failure>,
    /// Nodes the backend reported lost (a node-local agent gone: the node died).
    pub lost_nodes: &'a [String],
    /// Each rank's node, from its `rank_started` event of the launch.
    pub rank_nodes: &'a BTreeMap<u32, String>,
}

/// Node-loss handling of one `ckpt run`: failures counted per node.
#[derive(Default)]
pub struct Watch {
    failures: BTreeMap<String, u32>,
}

/// What the launcher does after a failed launch.
pub enum Verdict {
    /// No node was lost: relaunch as before.
    Unchanged,
    /// Nodes were lost and excluded; their ranks have a new placement (one line per node).
    Moved(Vec<String>),
    /// A lost node's ranks have nowhere to go: stop.
    Stop(String),
}

impl Watch {
    /// Writes the initial placement of a job with spares that has none yet.
    pub fn prepare(plan: &RunPlan) -> anyhow::Result<()> {
        let (Some(nodes), Some(spares)) = (plan.emulate_nodes, plan.spares) else {
            return Ok(());
        };
        if spares == 0 || migrate::placement_path(&plan.job_dir).exists() {
            return Ok(());
        }
        ckpt::storage::durable::create_dir_all(&plan.job_dir.join("control"))?;
        migrate::set_placement(&plan.job_dir, &initial(plan.ranks, nodes, spares))
    }

    /// After a failed launch whose ranks had started: finds lost nodes, excludes them and
    /// places their ranks elsewhere.
    pub fn after_failure(
        &mut self,
        plan: &RunPlan,
        reported: &Reported<'_>,
    ) -> anyhow::Result<Verdict> {
        let (failed, started) = (reported.failure, reported.rank_nodes);
        let Some((known, per_node)) = nodes_of(plan) else {
            return Ok(Verdict::Unchanged);
        };
        if plan.spares.is_none() && !plan.spread_on_failure {
            return Ok(Verdict::Unchanged);
        }
        let dir = &plan.job_dir;
        let placement = migrate::in_force(dir, plan.ranks, plan.emulate_nodes);
        let excluded = migrate::excluded(dir);
        let mut gone: Vec<String> = Vec::new();
        let mut twice = None;
        if let Some(node) = failed.and_then(|f| failed_node(f, &known, started, &placement)) {
            let count = self.failures.entry(node.clone()).or_default();
            *count += 1;
            if *count >= 2 {
                twice = Some(node);
            }
        }
        for node in known.iter().filter(|k| placement.values().any(|n| n == *k)) {
            let dir_gone = plan.emulate_nodes.is_some()
                && !plan.local_base().join(node).join(&plan.job_id).exists();
            if dir_gone || reported.lost_nodes.contains(node) {
                gone.push(node.clone());
            }
        }
        let mut lost = gone.clone();
        lost.extend(twice.filter(|t| !gone.contains(t)));
        if lost.is_empty() {
            return Ok(Verdict::Unchanged);
        }
        let spread = plan.spread_on_failure;
        let mut moved = relocate(&placement, &known, &excluded, &lost, spread, per_node);
        if moved.is_err() && lost.len() > gone.len() {
            // A node that failed twice but is still there stays when there is nowhere to go.
            lost = gone;
            if lost.is_empty() {
                return Ok(Verdict::Unchanged);
            }
            moved = relocate(&placement, &known, &excluded, &lost, spread, per_node);
        }
        match moved {
            Ok((next, lines)) => {
                for node in &lost {
                    migrate::exclude(dir, node)?;
                }
                migrate::set_placement(dir, &next)?;
                Ok(Verdict::Moved(lines))
            }
            Err(why) => Ok(Verdict::Stop(why)),
        }
    }
}

/// The job's nodes (emulated `node0..`, or the `--nodes` names with spares) and their slots,
/// `None` on this machine alone.
fn nodes_of(plan: &RunPlan) -> Option<(Vec<String>, Option<u32>)> {
    match (plan.emulate_nodes, &plan.nodes) {
        (Some(n), _) => Some(((0..n).map(node_name).collect(), None)),
        (None, Some(real)) => Some((real.names.clone(), real.ranks_per_node)),
        (None, None) => None,
    }
}

/// The node a failure happened on: the one the failed rank logged in its `rank_started`
/// event (the name the placement gave it), else the one the backend names when it is one of
/// `known`, else the rank's in the placement in force. The rank's own record comes first: a
/// backend names a machine by its own name for it, which may be another of its names (on one
/// machine, mpirun names every alias by the host name).
pub fn failed_node(
    failed: &Failure,
    known: &[String],
    started: &BTreeMap<u32, String>,
    placement: &BTreeMap<u32, String>,
) -> Option<String> {
    started
        .get(&failed.rank)
        .cloned()
        .or_else(|| failed.node.clone().filter(|n| known.contains(n)))
        .or_else(|| placement.get(&failed.rank).cloned())
}

/// For `ckpt list`: the job's free nodes and excluded nodes, when it has spares or exclusions.
pub fn summary(job_dir: &Path) -> Option<String> {
    let emulated = crate::jobdir::recorded_emulation(job_dir);
    let known: Vec<String> = match emulated {
        Some(nodes) => (0..nodes).map(node_name).collect(),
        None => crate::jobdir::recorded_nodes(job_dir)?.names,
    };
    let nranks = crate::jobdir::recorded_ranks(job_dir)?;
    let excluded = migrate::excluded(job_dir);
    if crate::jobdir::recorded_spares(job_dir) == 0 && excluded.is_empty() {
        return None;
    }
    let placement = migrate::in_force(job_dir, nranks, emulated);
    let free: Vec<&str> = free(&placement, &known, &excluded)
        .into_iter()
        .map(String::as_str)
        .collect();
    let list = |v: &[&str]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let excluded: Vec<&str> = excluded.iter().map(String::as_str).collect();
    Some(format!(
        "spare nodes (no rank): {}; excluded nodes: {}",
        list(&free),
        list(&excluded)
    ))
}

/// The launcher's words when a lost node's ranks have nowhere to go.
pub fn stop_message(why: &str, job_dir: &Path) -> String {
    let committed = ckpt::manifest::committed(job_dir).unwrap_or_default();
    let newest = match crate::jobdir::newest_loadable(job_dir, &committed) {
        Some(m) => format!(
            "the newest epoch, {}, is left intact (check it: ckpt verify {})",
            m.epoch,
            job_dir.display()
        ),
        None => "no epoch was committed".to_owned(),
    };
    format!("{why}; stopping without a relaunch: {newest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed launch's report without lost nodes.
    fn rep<'a>(
        failure: Option<&'a Failure>,
        rank_nodes: &'a BTreeMap<u32, String>,
    ) -> Reported<'a> {
        Reported {
            failure,
            lost_nodes: &[],
            rank_nodes,
        }
    }

    /// Rank `rank` killed, reported on a machine name that is none of the job's nodes.
    fn killed(rank: u32) -> Failure {
        Failure {
            rank,
            node: Some("vm".into()),
            cause: crate::backend::Cause::Signal(9, "Killed".into()),
        }
    }

    fn known(n: u32) -> Vec<String> {
        (0..n).map(node_name).collect()
    }

    #[test]
    fn spares_start_empty() {
        let p = initial(8, 4, 1);
        assert_eq!(
            migrate::render(&p),
            "0 node0\n1 node0\n2 node0\n3 node1\n4 node1\n5 node1\n6 node2\n7 node2\n"
        );
        let k = known(4);
        assert_eq!(free(&p, &k, &[]), [&"node3".to_owned()]);
        assert!(free(&p, &k, &["node3".into()]).is_empty());
    }

    #[test]
    fn a_lost_node_goes_to_a_spare_then_to_survivors_if_allowed() {
        let p = initial(8, 4, 1);
        let k = known(4);
        let (next, lines) = relocate(&p, &k, &[], &["node1".into()], false, None).unwrap();
        assert_eq!(lines, ["node1 lost: ranks 3, 4, 5 move to spare node3"]);
        assert_eq!(next[&4], "node3");
        assert_eq!(next[&0], "node0");
        let e = relocate(&next, &k, &["node1".into()], &["node0".into()], false, None).unwrap_err();
        assert!(
            e.contains("node0 lost: ranks 0, 1, 2 have nowhere to go"),
            "{e}"
        );
        assert!(e.contains("--spread-on-failure"), "{e}");
        let (spread, lines) =
            relocate(&next, &k, &["node1".into()], &["node0".into()], true, None).unwrap();
        assert!(lines[0].contains("spread over node2, node3"), "{lines:?}");
        assert_eq!(migrate::render(&spread).matches("node2").count(), 4);
        assert_eq!(migrate::render(&spread).matches("node3").count(), 4);
        let all = ["node0".into(), "node1".into(), "node2".into()];
        let e = relocate(&next, &k, &all, &["node3".into()], true, None).unwrap_err();
        assert!(e.contains("no node is left"), "{e}");
    }

    /// A job of 8 ranks on 4 emulated nodes with `spares`, its nodes' directories made.
    fn job(dir: &Path, spares: Option<u32>) -> RunPlan {
        let mut plan = crate::testutil::plan(dir, 8);
        plan.emulate_nodes = Some(4);
        plan.spares = spares;
        Watch::prepare(&plan).unwrap();
        std::fs::create_dir_all(dir.join("control")).unwrap();
        for k in 0..4 {
            std::fs::create_dir_all(plan.local_base().join(node_name(k)).join("job")).unwrap();
        }
        plan
    }

    #[test]
    fn a_gone_directory_or_a_second_failure_loses_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let plan = job(dir.path(), Some(1));
        let mut watch = Watch::default();
        assert!(matches!(
            watch.after_failure(&plan, &rep(Some(&killed(3)), &BTreeMap::new())),
            Ok(Verdict::Unchanged)
        ));
        match watch.after_failure(&plan, &rep(Some(&killed(4)), &BTreeMap::new())) {
            Ok(Verdict::Moved(lines)) => {
                assert_eq!(lines, ["node1 lost: ranks 3, 4, 5 move to spare node3"])
            }
            _ => panic!("node1 failed twice and was not moved"),
        }
        assert_eq!(migrate::excluded(dir.path()), ["node1"]);
        assert_eq!(migrate::node_for(dir.path(), 4, 8, 4), "node3");
        std::fs::remove_dir_all(plan.local_base().join("node0").join("job")).unwrap();
        match watch.after_failure(&plan, &rep(None, &BTreeMap::new())) {
            Ok(Verdict::Stop(why)) => {
                assert!(why.starts_with("node0 lost: ranks 0, 1, 2"), "{why}")
            }
            _ => panic!("node0 is gone and has nowhere to go"),
        }
    }

    #[test]
    fn without_the_flags_or_with_nowhere_to_go_a_twice_failed_node_stays() {
        let dir = tempfile::tempdir().unwrap();
        let plan = job(dir.path(), None);
        let mut watch = Watch::default();
        std::fs::remove_dir_all(plan.local_base().join("node1").join("job")).unwrap();
        assert!(matches!(
            watch.after_failure(&plan, &rep(Some(&killed(2)), &BTreeMap::new())),
            Ok(Verdict::Unchanged)
        ));
        let plan = job(dir.path(), Some(0));
        for _ in 0..3 {
            assert!(matches!(
                watch.after_failure(&plan, &rep(Some(&killed(2)), &BTreeMap::new())),
                Ok(Verdict::Unchanged)
            ));
        }
        assert!(migrate::excluded(dir.path()).is_empty());
    }

    #[test]
    fn two_nodes_lost_at_once_take_two_spares() {
        let p = initial(6, 5, 2);
        let k = known(5);
        let lost = ["node0".to_owned(), "node2".to_owned()];
        let (next, lines) = relocate(&p, &k, &[], &lost, false, None).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(next.values().all(|n| n != "node0" && n != "node2"));
        assert_eq!(next[&0], "node3");
        assert_eq!(next[&4], "node4");
    }

    /// The failed node: the rank's own record, else the backend's name when it is one of the
    /// job's, else the placement.
    #[test]
    fn the_failed_node_is_the_ranks_own_record_else_the_backends() {
        let k: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let placement: BTreeMap<u32, String> = [(0, "a".to_owned()), (1, "b".to_owned())].into();
        let started: BTreeMap<u32, String> = [(1, "a".to_owned())].into();
        let mut f = killed(1);
        assert_eq!(
            failed_node(&f, &k, &started, &placement).as_deref(),
            Some("a")
        );
        assert_eq!(
            failed_node(&f, &k, &BTreeMap::new(), &placement).as_deref(),
            Some("b")
        );
        f.node = Some("b".into());
        assert_eq!(
            failed_node(&f, &k, &started, &placement).as_deref(),
            Some("a"),
            "mpirun's name for the machine may be another alias"
        );
        f.node = Some("a".into());
        assert_eq!(
            failed_node(&f, &k, &BTreeMap::new(), &placement).as_deref(),
            Some("a")
        );
        f.rank = 7;
        f.node = None;
        assert_eq!(failed_node(&f, &k, &started, &placement), None);
    }

    /// On real nodes a node whose ranks failed twice is lost: its ranks go to the spare and
    /// the node is excluded; with --ranks-per-node the survivors take ranks only where they
    /// have room.
    #[test]
    fn a_real_node_that_failed_twice_goes_to_the_spare() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("control")).unwrap();
        let mut plan = crate::testutil::plan(dir.path(), 4);
        plan.spares = Some(1);
        plan.nodes = Some(crate::plan::RealNodes {
            list: "a,b,c".into(),
            names: k3(),
            ranks_per_node: Some(2),
            spares: 1,
            one_machine: false,
        });
        let placed: BTreeMap<u32, String> = [(0, "a"), (1, "a"), (2, "b"), (3, "b")]
            .map(|(r, n)| (r, n.to_owned()))
            .into();
        migrate::set_placement(dir.path(), &placed).unwrap();
        let started = placed.clone();
        let mut watch = Watch::default();
        let once = watch
            .after_failure(&plan, &rep(Some(&killed(3)), &started))
            .unwrap();
        assert!(matches!(once, Verdict::Unchanged));
        match watch
            .after_failure(&plan, &rep(Some(&killed(2)), &started))
            .unwrap()
        {
            Verdict::Moved(lines) => assert_eq!(lines, ["b lost: ranks 2, 3 move to spare c"]),
            _ => panic!("b failed twice and was not moved"),
        }
        assert_eq!(migrate::excluded(dir.path()), ["b"]);
        assert_eq!(
            migrate::render(&migrate::in_force(dir.path(), 4, None)),
            "0 a\n1 a\n2 c\n3 c\n"
        );
        // a fails twice next: no spare left, and c is full with --spread-on-failure.
        plan.spread_on_failure = true;
        let now = migrate::in_force(dir.path(), 4, None);
        for r in [0, 1] {
            let v = watch
                .after_failure(&plan, &rep(Some(&killed(r)), &now))
                .unwrap();
            assert!(
                matches!(v, Verdict::Unchanged),
                "a has nowhere to go: it stays"
            );
        }
        let e = relocate(&now, &k3(), &["b".into()], &["a".into()], true, Some(2)).unwrap_err();
        assert_eq!(
            e,
            "a lost: no room for the 2 ranks of a: the other nodes have 0 free slots \
             (--ranks-per-node 2)"
        );
    }

    /// A node the backend reports lost (its daemon gone) is lost at once; a name that is
    /// none of the job's is ignored.
    #[test]
    fn a_node_the_backend_lost_goes_to_the_spare_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("control")).unwrap();
        let mut plan = crate::testutil::plan(dir.path(), 4);
        plan.spares = Some(1);
        plan.nodes = Some(crate::plan::RealNodes {
            list: "a,b,c".into(),
            names: k3(),
            ranks_per_node: None,
            spares: 1,
            one_machine: false,
        });
        let placed: BTreeMap<u32, String> = [(0, "a"), (1, "a"), (2, "b"), (3, "b")]
            .map(|(r, n)| (r, n.to_owned()))
            .into();
        migrate::set_placement(dir.path(), &placed).unwrap();
        let mut watch = Watch::default();
        let none = BTreeMap::new();
        let elsewhere = ["login".to_owned()];
        let r = Reported {
            failure: None,
            lost_nodes: &elsewhere,
            rank_nodes: &none,
        };
        assert!(matches!(
            watch.after_failure(&plan, &r).unwrap(),
            Verdict::Unchanged
        ));
        let b = ["b".to_owned()];
        let r = Reported {
            lost_nodes: &b,
            ..r
        };
        match watch.after_failure(&plan, &r).unwrap() {
            Verdict::Moved(lines) => assert_eq!(lines, ["b lost: ranks 2, 3 move to spare c"]),
            _ => panic!("b was reported lost and not moved"),
        }
    }

    fn k3() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }
}
