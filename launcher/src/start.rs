//! The start deadline of a launch (`ckpt run --start-timeout SECS`): a launch whose ranks have
//! not all logged `rank_started` that long after it began (a Slurm step that hangs before the
//! ranks run, a rank whose program never reaches `Checkpointer::new`) is stopped and counted as
//! a failed launch. Pure: the supervisor feeds it the time and the ranks that logged.

use std::collections::BTreeMap;
use std::time::Duration;

/// The default of `--start-timeout`, in seconds: far above a healthy MPI start-up, short
/// enough that a hung step is noticed within minutes.
pub const DEFAULT_SECS: u64 = 300;

/// The ranks of `0..nranks` that have not logged `rank_started` (`started`: rank → node)
/// once `elapsed` reached `timeout`; `None` before the deadline, without one, or when every
/// rank started.
pub fn overdue(
    nranks: u32,
    started: &BTreeMap<u32, String>,
    elapsed: Duration,
    timeout: Option<Duration>,
) -> Option<Vec<u32>> {
    if elapsed < timeout? {
        return None;
    }
    let missing: Vec<u32> = (0..nranks).filter(|r| !started.contains_key(r)).collect();
    (!missing.is_empty()).then_some(missing)
}

/// `ranks 2, 3 on n2; rank 0 on n1 did not start within 300 s (--start-timeout) ...`: the
/// ranks by node (`node_of`: where the launch placed each; `None`: not known), nodes in the
/// order of their lowest rank.
pub fn message(
    missing: &[u32],
    node_of: impl Fn(u32) -> Option<String>,
    timeout: Duration,
    prog: &str,
) -> String {
    let mut by_node: Vec<(Option<String>, Vec<u32>)> = Vec::new();
    for &r in missing {
        let node = node_of(r);
        match by_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, ranks)) => ranks.push(r),
            None => by_node.push((node, vec![r])),
        }
    }
    let parts: Vec<String> = by_node
        .iter()
        .map(|(node, ranks)| {
            let list: Vec<String> = ranks.iter().map(u32::to_string).collect();
            let word = if ranks.len() == 1 { "rank" } else { "ranks" };
            match node {
                Some(n) => format!("{word} {} on {n}", list.join(", ")),
                None => format!("{word} {}", list.join(", ")),
            }
        })
        .collect();
    format!(
        "{} never started: no rank_started within {} s of the launch (--start-timeout; MPI's \
         start-up waits for every rank, so one rank that does not start holds back the \
         others); stopping {prog} and counting the launch as failed",
        parts.join("; "),
        timeout.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(ranks: &[u32]) -> BTreeMap<u32, String> {
        ranks.iter().map(|&r| (r, format!("n{r}"))).collect()
    }

    #[test]
    fn only_ranks_missing_past_the_deadline_are_overdue() {
        let t = Some(Duration::from_secs(10));
        let s = Duration::from_secs;
        assert_eq!(overdue(4, &started(&[0, 1]), s(9), t), None);
        assert_eq!(overdue(4, &started(&[0, 1]), s(10), t), Some(vec![2, 3]));
        assert_eq!(overdue(4, &started(&[]), s(11), t), Some(vec![0, 1, 2, 3]));
        assert_eq!(overdue(4, &started(&[0, 1, 2, 3]), s(99), t), None);
        assert_eq!(overdue(4, &started(&[]), s(99_999), None), None, "off");
    }

    #[test]
    fn the_message_names_ranks_by_node() {
        let node = |r: u32| match r {
            0 | 1 => Some("n1".to_owned()),
            5 => None,
            _ => Some("n2".to_owned()),
        };
        let m = message(&[0, 2, 3, 5], node, Duration::from_secs(300), "srun");
        assert!(
            m.starts_with(
                "rank 0 on n1; ranks 2, 3 on n2; rank 5 never started: no rank_started within \
                 300 s of the launch (--start-timeout;"
            ),
            "{m}"
        );
        assert!(
            m.ends_with("stopping srun and counting the launch as failed"),
            "{m}"
        );
    }
}
