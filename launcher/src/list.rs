//! `ckpt list JOB_DIR [--json] [--ranks]`: a job's committed epochs, newest first, read from
//! their manifests. A manifest that does not load is listed with its error (which names the
//! file) and the listing goes on: a damaged epoch is exactly what a user runs this to find.
//! Epochs a restart quarantined (found damaged; never restored again) are listed too, marked as
//! such with the reasons. Each epoch shows the levels complete on every rank and the planned
//! ones not (yet) complete (`L1 L2 L3 (L4 pending)`); `--ranks` adds each rank's node, the
//! node holding its L2 copy and its L3 group; `--json` has the L3 groups (`parity_groups`).

use std::path::Path;

use anyhow::{bail, Context as _};
use ckpt::manifest::{self, Level, Manifest, ParityGroup, Quarantine};
use ckpt::util::human_bytes;
use serde::Serialize;

use crate::report::{level, secs};
use crate::{clock, Outcome};

/// One epoch of the listing.
#[derive(Debug)]
pub struct Entry {
    /// The epoch.
    pub epoch: u64,
    /// Its manifest, or why it cannot be read.
    pub manifest: Result<Manifest, String>,
    /// For a quarantined epoch: its quarantine record, or why the record cannot be read.
    pub quarantine: Option<Result<Quarantine, String>>,
}

/// Prints the listing of `dir` to stdout (with `ranks`, each rank's node and copies).
pub fn run(dir: &Path, as_json: bool, ranks: bool) -> anyhow::Result<Outcome> {
    let entries = entries(dir)?;
    if as_json {
        outln!(
            "{}",
            json(&entries, ranks).context("cannot encode the listing as JSON")?
        );
    } else if entries.is_empty() {
        outln!("no committed epochs in {}", dir.display());
    } else if entries.iter().all(|e| e.quarantine.is_some()) {
        outln!("no committed epochs in {}; quarantined:", dir.display());
        for l in table(&entries, ranks) {
            outln!("{l}");
        }
    } else {
        for l in table(&entries, ranks) {
            outln!("{l}");
        }
    }
    if !as_json {
        if let Some(nodes) = crate::spares::summary(dir) {
            outln!("{nodes}");
        }
    }
    Ok(Outcome::Success)
}

/// The committed and quarantined epochs of `dir`, newest first.
pub fn entries(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("job directory {} does not exist", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
    let listed = manifest::listing(dir)
        .with_context(|| format!("cannot list manifests in {}", dir.display()))?;
    let mut all: Vec<(u64, bool)> = listed.committed.iter().map(|&e| (e, false)).collect();
    all.extend(listed.quarantined.iter().map(|&e| (e, true)));
    all.sort_unstable_by_key(|&(epoch, _)| std::cmp::Reverse(epoch));
    Ok(all
        .into_iter()
        .map(|(epoch, quarantined)| Entry {
            epoch,
            manifest: manifest::load(dir, epoch).map_err(|err| err.to_string()),
            quarantine: quarantined.then(|| {
                manifest::load_quarantine(dir, epoch).map_err(|err| {
                    let p = manifest::quarantine_path(dir, epoch);
                    format!("cannot read {}: {err}", p.display())
                })
            }),
        })
        .collect())
}

/// `quarantined 2026-04-20 14:03:12Z by launch 2: reasons`, or why the record is unreadable.
pub fn quarantine_note(q: &Result<Quarantine, String>) -> String {
    match q {
        Ok(q) => format!(
            "quarantined {} by launch {}: {}",
            clock::utc(q.unix_ms),
            q.launch,
            q.reasons.join("; ")
        ),
        Err(e) => format!("quarantined ({e})"),
    }
}

/// The ranks of each node, nodes in order of their lowest rank.
fn placement(m: &Manifest) -> Vec<(&str, Vec<u32>)> {
    let mut nodes: Vec<(&str, Vec<u32>)> = Vec::new();
    for (rank, rec) in m.ranks.iter().enumerate() {
        match nodes.iter_mut().find(|(n, _)| *n == rec.node) {
            Some((_, ranks)) => ranks.push(rank as u32),
            None => nodes.push((&rec.node, vec![rank as u32])),
        }
    }
    nodes
}

/// Ranks per node: `node0:2 node1:2` for up to [`NAMED_NODES`] nodes, else `N nodes, A-B
/// ranks each`.
fn placement_summary(m: &Manifest) -> String {
    let nodes = placement(m);
    if nodes.len() <= NAMED_NODES {
        let named: Vec<String> = nodes
            .iter()
            .map(|(n, r)| format!("{n}:{}", r.len()))
            .collect();
        return named.join(" ");
    }
    let sizes = nodes.iter().map(|(_, r)| r.len());
    let (lo, hi) = (sizes.clone().min(), sizes.max());
    match (lo, hi) {
        (Some(1), Some(1)) => format!("{} nodes, 1 rank each", nodes.len()),
        (Some(lo), Some(hi)) if lo == hi => format!("{} nodes, {lo} ranks each", nodes.len()),
        (Some(lo), Some(hi)) => format!("{} nodes, {lo}-{hi} ranks each", nodes.len()),
        _ => String::new(),
    }
}

/// Most nodes the table names one by one.
const NAMED_NODES: usize = 4;

/// The levels complete on every rank, then, for the newest epoch, the planned ones not (yet)
/// complete: `L1 L2 (L4 pending)`.
pub fn levels(m: &Manifest, newest: bool) -> String {
    let mut text = m
        .levels
        .iter()
        .map(|&l| level(l))
        .collect::<Vec<_>>()
        .join(" ");
    let pending = pending(m, newest);
    if !pending.is_empty() {
        let names: Vec<&str> = pending.iter().map(|&l| level(l)).collect();
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&format!("({} pending)", names.join(" ")));
    }
    text
}

/// The levels planned for `m`'s epoch that are not complete on every rank, if it is the
/// `newest` committed epoch. Only that one can have levels in progress (a job completes an
/// epoch's levels before the next epoch's); in an older epoch a planned level not recorded
/// failed or was dropped by retention.
pub fn pending(m: &Manifest, newest: bool) -> Vec<Level> {
    if !newest {
        return Vec::new();
    }
    let planned = m.copies.planned.iter().copied();
    planned.filter(|&l| !m.has(l)).collect()
}

/// The newest committed epoch whose manifest loads, not quarantined.
pub fn newest(entries: &[Entry]) -> Option<u64> {
    entries
        .iter()
        .filter(|e| e.quarantine.is_none() && e.manifest.is_ok())
        .map(|e| e.epoch)
        .max()
}

/// The rank holding `rank`'s L2 copy and its node, once L2 is complete (`None` otherwise, or
/// when the manifest names no such rank).
pub fn partner_of(m: &Manifest, rank: usize) -> Option<(u32, &str)> {
    if !m.has(Level::Partner) {
        return None;
    }
    let holder = *m.copies.partner.get(rank)?;
    let node = &m.ranks.get(holder as usize)?.node;
    Some((holder, node))
}

/// `rank`'s L3 group once L3 is complete: its index and the group.
pub fn group_of(m: &Manifest, rank: usize) -> Option<(usize, &ParityGroup)> {
    if !m.has(Level::Parity) {
        return None;
    }
    let mut groups = m.copies.parity.iter().enumerate();
    groups.find(|(_, g)| g.members.contains(&(rank as u32)))
}

/// `L3 group 0 (ranks 0, 2, 4, 6)`, or nothing.
fn group_text(m: &Manifest, rank: usize) -> String {
    match group_of(m, rank) {
        Some((g, group)) => {
            let ranks: Vec<String> = group.members.iter().map(u32::to_string).collect();
            format!("L3 group {g} (ranks {})", ranks.join(", "))
        }
        None if m.has(Level::Parity) => "L3 group not recorded".to_owned(),
        None => String::new(),
    }
}

/// Per-rank lines under an epoch's row: `  rank 0  node0  L2 on node1 (rank 2)  L3 group 0
/// (ranks 0, 2, 4, 6)`.
fn rank_lines(m: &Manifest) -> Vec<String> {
    let rank_w = m.ranks.len().saturating_sub(1).to_string().len();
    let node_w = m.ranks.iter().map(|r| r.node.len()).max().unwrap_or(0);
    let l2 = m.has(Level::Partner);
    m.ranks
        .iter()
        .enumerate()
        .map(|(rank, rec)| {
            let copy = match partner_of(m, rank) {
                Some((h, node)) => format!("L2 on {node} (rank {h})"),
                None if l2 => "L2 holder not recorded".to_owned(),
                None => String::new(),
            };
            let copies = [copy, group_text(m, rank)];
            let copies: Vec<&str> = copies
                .iter()
                .map(String::as_str)
                .filter(|c| !c.is_empty())
                .collect();
            let line = format!(
                "  rank {rank:<rank_w$}  {:<node_w$}  {}",
                rec.node,
                copies.join("  ")
            );
            line.trim_end().to_owned()
        })
        .collect()
}

/// One epoch in `--json` output; fields in this order.
#[derive(Serialize)]
struct JsonEntry<'a> {
    epoch: u64,
    #[serde(flatten)]
    body: JsonBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<JsonQuarantine<'a>>,
}

/// A quarantined epoch's record in `--json` output.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonQuarantine<'a> {
    Record {
        unix_ms: u64,
        utc: String,
        launch: u32,
        reasons: &'a [String],
    },
    Error {
        error: &'a str,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonBody<'a> {
    Manifest {
        job: &'a str,
        committed_unix_ms: u64,
        committed_utc: String,
        launch: u32,
        poll: u64,
        ranks: u32,
        payload_bytes: u64,
        file_bytes: u64,
        total_secs: f64,
        /// Levels complete on every rank.
        levels: Vec<&'static str>,
        /// Levels beyond L1 planned for the epoch, complete or not.
        planned: Vec<&'static str>,
        /// Each node's ranks.
        nodes: std::collections::BTreeMap<&'a str, Vec<u32>>,
        /// The L3 groups, once L3 is complete (empty otherwise).
        parity_groups: Vec<JsonGroup<'a>>,
        /// With `--ranks`: each rank's node and L2 holder.
        #[serde(skip_serializing_if = "Option::is_none")]
        per_rank: Option<Vec<JsonRank<'a>>>,
    },
    Error {
        error: &'a str,
    },
}

/// One L3 group in `--json` output.
#[derive(Serialize)]
struct JsonGroup<'a> {
    group: usize,
    /// The members' ranks, in group order.
    members: &'a [u32],
    /// Parity shards per set (lost members tolerated).
    k: u16,
}

fn json_groups(m: &Manifest) -> Vec<JsonGroup<'_>> {
    if !m.has(Level::Parity) {
        return Vec::new();
    }
    let groups = m.copies.parity.iter().enumerate();
    groups
        .map(|(group, g)| JsonGroup {
            group,
            members: &g.members,
            k: g.k,
        })
        .collect()
}

/// One rank in `--json --ranks` output.
#[derive(Serialize)]
struct JsonRank<'a> {
    rank: u32,
    node: &'a str,
    /// The rank whose node holds this rank's L2 copy, once L2 is complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    l2_holder: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    l2_node: Option<&'a str>,
    /// Its L3 group, once L3 is complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    l3_group: Option<usize>,
}

fn json_ranks(m: &Manifest) -> Vec<JsonRank<'_>> {
    let ranks = m.ranks.iter().enumerate();
    ranks
        .map(|(rank, rec)| {
            let holder = partner_of(m, rank);
            JsonRank {
                rank: rank as u32,
                node: &rec.node,
                l2_holder: holder.map(|(h, _)| h),
                l2_node: holder.map(|(_, n)| n),
                l3_group: group_of(m, rank).map(|(g, _)| g),
            }
        })
        .collect()
}

/// The listing as a pretty JSON array, one object per epoch (`epoch` and `error` only when
/// its manifest does not load; `quarantined` only for a quarantined epoch; `per_rank` only
/// with `ranks`).
pub fn json(entries: &[Entry], ranks: bool) -> serde_json::Result<String> {
    let all: Vec<JsonEntry> = entries.iter().map(|e| json_entry(e, ranks)).collect();
    serde_json::to_string_pretty(&all)
}

fn json_entry(entry: &Entry, ranks: bool) -> JsonEntry<'_> {
    JsonEntry {
        epoch: entry.epoch,
        quarantined: entry.quarantine.as_ref().map(|q| match q {
            Ok(q) => JsonQuarantine::Record {
                unix_ms: q.unix_ms,
                utc: clock::utc(q.unix_ms),
                launch: q.launch,
                reasons: &q.reasons,
            },
            Err(e) => JsonQuarantine::Error { error: e },
        }),
        body: match &entry.manifest {
            Ok(m) => JsonBody::Manifest {
                job: &m.job,
                committed_unix_ms: m.created_unix_ms,
                committed_utc: clock::utc(m.created_unix_ms),
                launch: m.launch,
                poll: m.poll,
                ranks: m.nranks,
                payload_bytes: m.payload_bytes(),
                file_bytes: m.file_bytes(),
                total_secs: m.total_secs,
                levels: m.levels.iter().map(|&l| level(l)).collect(),
                planned: m.copies.planned.iter().map(|&l| level(l)).collect(),
                nodes: placement(m).into_iter().collect(),
                parity_groups: json_groups(m),
                per_rank: ranks.then(|| json_ranks(m)),
            },
            Err(e) => JsonBody::Error { error: e },
        },
    }
}

/// The listing as aligned text lines with a header (with `ranks`, each epoch's rank lines
/// under its row).
pub fn table(entries: &[Entry], ranks: bool) -> Vec<String> {
    const HEAD: [&str; 9] = [
        "EPOCH",
        "COMMITTED",
        "LAUNCH",
        "POLL",
        "RANKS",
        "PAYLOAD",
        "TOTAL",
        "LEVELS",
        "RANKS PER NODE",
    ];
    let newest = newest(entries);
    let rows: Vec<Result<[String; 9], String>> = entries
        .iter()
        .map(|e| (e.epoch, &e.manifest, &e.quarantine))
        .map(|(epoch, m, q)| match (m, q) {
            (_, Some(q)) => Err(format!(
                "{epoch:<w$}  {}",
                quarantine_note(q),
                w = HEAD[0].len()
            )),
            (Ok(m), None) => Ok([
                epoch.to_string(),
                clock::utc(m.created_unix_ms),
                m.launch.to_string(),
                m.poll.to_string(),
                m.nranks.to_string(),
                human_bytes(m.payload_bytes()),
                secs(m.total_secs),
                levels(m, Some(epoch) == newest),
                placement_summary(m),
            ]),
            (Err(e), None) => Err(format!("{epoch:<w$}  error: {e}", w = HEAD[0].len())),
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for row in rows.iter().flatten() {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String; 9]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(&HEAD.map(String::from))];
    for (row, entry) in rows.iter().zip(entries) {
        match row {
            Ok(cells) => out.push(line(cells)),
            Err(text) => out.push(text.clone()),
        }
        if let (true, Ok(m), Ok(_)) = (ranks, &entry.manifest, row) {
            out.extend(rank_lines(m));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    /// A job directory with epochs 3 and 4 published, epoch 5's manifest corrupted, and
    /// epoch 6 quarantined.
    fn job() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for e in [3, 4, 5, 6] {
            manifest::publish(dir.path(), &testutil::manifest(e, 4)).unwrap();
        }
        let q = Quarantine {
            epoch: 6,
            unix_ms: 1_776_693_792_000,
            launch: 2,
            reasons: vec!["rank 1: checksum mismatch".into()],
        };
        manifest::quarantine(dir.path(), &q).unwrap();
        let bad = manifest::path(dir.path(), 5);
        let mut bytes = std::fs::read(&bad).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&bad, bytes).unwrap();
        dir
    }

    fn check(lines: Vec<String>, dir: &Path, expected: &[&str]) {
        let got: Vec<String> = lines
            .iter()
            .map(|l| l.replace(&dir.display().to_string(), "D"))
            // The checksums themselves depend on libckpt's encoding, not on the listing.
            .map(|l| l.split(": stored").next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn table_lists_newest_first_with_errors() {
        let dir = job();
        check(
            table(&entries(dir.path()).unwrap(), false),
            dir.path(),
            &[
                "EPOCH  COMMITTED             LAUNCH  POLL  RANKS  PAYLOAD  TOTAL   LEVELS  \
                 RANKS PER NODE",
                "6      quarantined 2026-04-20 14:03:12Z by launch 2: rank 1: checksum mismatch",
                "5      error: manifest D/manifests/epoch-00000005.manifest: checksum mismatch \
                 in manifest body",
                "4      2026-04-20 14:03:12Z  1       40    4      4.0 MiB  0.25 s  L1      n0:4",
                "3      2026-04-20 14:03:12Z  1       30    4      4.0 MiB  0.25 s  L1      n0:4",
            ],
        );
    }

    #[test]
    fn json_lists_every_epoch() {
        let dir = job();
        let text = json(&entries(dir.path()).unwrap(), false).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let all = v.as_array().unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0]["epoch"], 6);
        assert_eq!(all[0]["poll"], 60);
        assert_eq!(all[0]["quarantined"]["launch"], 2);
        assert_eq!(
            all[0]["quarantined"]["reasons"],
            serde_json::json!(["rank 1: checksum mismatch"])
        );
        let all = &all[1..];
        assert!(all[1]["quarantined"].is_null());
        assert!(all[0]["error"]
            .as_str()
            .unwrap()
            .contains("epoch-00000005.manifest"));
        assert_eq!(all[0].as_object().unwrap().len(), 2);
        assert_eq!(all[1]["epoch"], 4);
        assert_eq!(all[1]["payload_bytes"], 4 << 20);
        assert_eq!(all[1]["levels"], serde_json::json!(["L1"]));
        assert_eq!(all[1]["committed_utc"], "2026-04-20 14:03:12Z");
        assert_eq!(all[1]["nodes"], serde_json::json!({"n0": [0, 1, 2, 3]}));
    }

    #[test]
    fn levels_complete_and_pending() {
        use Level::*;
        let m = |planned: &[Level], complete: &[Level]| {
            levels(&testutil::manifest_v2(1, 4, 2, planned, complete), true)
        };
        assert_eq!(m(&[], &[]), "L1");
        assert_eq!(m(&[Partner, Pfs], &[Partner]), "L1 L2 (L4 pending)");
        assert_eq!(m(&[Partner, Pfs], &[]), "L1 (L2 L4 pending)");
        assert_eq!(m(&[Partner, Pfs], &[Partner, Pfs]), "L1 L2 L4");
        // L1 pruned before the L4 copy: only L4 remains.
        let mut only4 = testutil::manifest_v2(1, 4, 2, &[Pfs], &[Pfs]);
        only4.levels.retain(|&l| l != Local);
        assert_eq!(levels(&only4, true), "L4");
        only4.levels.clear();
        assert_eq!(levels(&only4, true), "(L4 pending)");
        // An older epoch has nothing in progress: a planned level not recorded failed, or
        // retention dropped it (L2 kept for fewer epochs than L1).
        let older = testutil::manifest_v2(1, 4, 2, &[Partner, Pfs], &[Pfs]);
        assert_eq!(levels(&older, false), "L1 L4");
    }

    #[test]
    fn ranks_show_their_l2_holder() {
        use Level::*;
        let dir = tempfile::tempdir().unwrap();
        let both = testutil::manifest_v2(2, 4, 2, &[Partner, Pfs], &[Partner]);
        manifest::publish(dir.path(), &both).unwrap();
        manifest::publish(dir.path(), &testutil::manifest_v2(1, 4, 2, &[Pfs], &[])).unwrap();
        let all = entries(dir.path()).unwrap();
        // An older epoch shows no level pending.
        let older = format!(
            "1      2026-04-20 14:03:12Z  1       10    4      4.0 MiB  0.25 s  L1{}node0:2 node1:2",
            " ".repeat(18)
        );
        check(
            table(&all, true),
            dir.path(),
            &[
                "EPOCH  COMMITTED             LAUNCH  POLL  RANKS  PAYLOAD  TOTAL   LEVELS              \
                 RANKS PER NODE",
                "2      2026-04-20 14:03:12Z  1       20    4      4.0 MiB  0.25 s  L1 L2 (L4 \
                 pending)  node0:2 node1:2",
                "  rank 0  node0  L2 on node1 (rank 2)",
                "  rank 1  node0  L2 on node1 (rank 3)",
                "  rank 2  node1  L2 on node0 (rank 0)",
                "  rank 3  node1  L2 on node0 (rank 1)",
                older.as_str(),
                "  rank 0  node0",
                "  rank 1  node0",
                "  rank 2  node1",
                "  rank 3  node1",
            ],
        );
        assert_eq!(table(&all, false).len(), 3, "no rank lines without --ranks");
        let v: serde_json::Value = serde_json::from_str(&json(&all, true).unwrap()).unwrap();
        assert_eq!(v[0]["levels"], serde_json::json!(["L1", "L2"]));
        assert_eq!(v[0]["planned"], serde_json::json!(["L2", "L4"]));
        assert_eq!(
            v[0]["per_rank"][1],
            serde_json::json!({"rank": 1, "node": "node0", "l2_holder": 3, "l2_node": "node1"})
        );
        assert_eq!(
            v[1]["per_rank"][3],
            serde_json::json!({"rank": 3, "node": "node1"})
        );
        assert_eq!(v[1]["planned"], serde_json::json!(["L4"]));
        let v: serde_json::Value = serde_json::from_str(&json(&all, false).unwrap()).unwrap();
        assert!(v[0].get("per_rank").is_none());
    }

    #[test]
    fn placement_is_summarised_per_node() {
        let mut m = testutil::manifest(1, 8);
        for (rank, rec) in m.ranks.iter_mut().enumerate() {
            rec.node = format!("node{}", rank / 2);
        }
        assert_eq!(placement_summary(&m), "node0:2 node1:2 node2:2 node3:2");
        m.ranks[7].node = "node4".into();
        assert_eq!(placement_summary(&m), "5 nodes, 1-2 ranks each");
        for (rank, rec) in m.ranks.iter_mut().enumerate() {
            rec.node = format!("n{rank}");
        }
        assert_eq!(placement_summary(&m), "8 nodes, 1 rank each");
        // Nodes in order of their lowest rank; a node's ranks need not be consecutive.
        for (rank, rec) in m.ranks.iter_mut().enumerate() {
            rec.node = ["b", "a"][rank % 2].into();
        }
        assert_eq!(placement_summary(&m), "b:4 a:4");
        assert_eq!(placement(&m)[1], ("a", vec![1, 3, 5, 7]));
    }

    #[test]
    fn empty_and_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(entries(dir.path()).unwrap().is_empty());
        let missing = dir.path().join("nope");
        let err = entries(&missing).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("job directory {} does not exist", missing.display())
        );
    }

    /// L3 shows among the levels (complete or pending); `--ranks` gives each rank's group and
    /// `--json` the groups.
    #[test]
    fn ranks_show_their_l3_group() {
        use Level::*;
        let dir = tempfile::tempdir().unwrap();
        let mut both = testutil::manifest_v2(1, 4, 4, &[Partner, Parity], &[Partner, Parity]);
        both.copies.parity = vec![ParityGroup {
            members: vec![0, 1, 2, 3],
            k: 1,
        }];
        manifest::publish(dir.path(), &both).unwrap();
        let pending = testutil::manifest_v2(2, 4, 4, &[Parity], &[]);
        manifest::publish(dir.path(), &pending).unwrap();
        let all = entries(dir.path()).unwrap();
        let t = table(&all, true);
        assert!(t[1].contains(" L1 (L3 pending) "), "{t:#?}");
        assert_eq!(t[2], "  rank 0  node0");
        assert!(t[6].contains(" L1 L2 L3 "), "{t:#?}");
        assert_eq!(
            t[7],
            "  rank 0  node0  L2 on node1 (rank 1)  L3 group 0 (ranks 0, 1, 2, 3)"
        );
        let v: serde_json::Value = serde_json::from_str(&json(&all, true).unwrap()).unwrap();
        assert_eq!(
            v[1]["parity_groups"],
            serde_json::json!([{"group": 0, "members": [0, 1, 2, 3], "k": 1}])
        );
        assert_eq!(v[1]["per_rank"][3]["l3_group"], 0);
        assert_eq!(v[0]["parity_groups"], serde_json::json!([]));
        assert!(v[0]["per_rank"][3].get("l3_group").is_none());
    }
}
