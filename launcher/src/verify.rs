//! `ckpt verify JOB_DIR [--local-dir DIR] [--shared-dir DIR] [--json]`: applies restore's
//! checks to every copy of every committed epoch reachable from here, reading every byte: the
//! job's identity (the id recorded in `job.json`, as the ranks get it), each manifest's
//! identity and rank records (one per rank, each naming the file where that job's rank writes
//! it), and for every level complete on every rank (the manifest's `levels`) each rank's copy:
//! its header, table, identity and region checksums, and that it is the file the manifest
//! names (length and table CRC). A copy of any level is byte-identical to the rank's L1 file,
//! so every level gets the same checks. Regions are checked in pieces of at most 4 MiB, so
//! memory stays bounded whatever their size.
//!
//! Where the copies are (through [`Places::locate`]):
//! - L1 on the rank's node, L2 on the node of the rank holding it (`copies.partner`), each
//!   under that node's local base: `--local-dir`, else the local directory recorded in
//!   `job.json`, else `$CKPT_LOCAL_DIR` or `$NODE_LOCAL_DIR`, else `<job dir>/local/<node>`.
//!   A job run with emulated nodes (recorded in `job.json`) has them under `<base>/<node>`,
//!   base `--local-dir`, else the recorded one, else `<job dir>/local`.
//! - L4 under the shared directory: `--shared-dir`, else the one recorded in `job.json`, else
//!   `$CKPT_SHARED_DIR`, else `<job dir>/shared`.
//! - L3 parity files on each holder's node, under the same bases: each file's header and
//!   length, and where every data member of a set has a good L1 file, the parity recomputed
//!   from them and compared (see `verify_l3.rs`); a rank whose L1 file is bad counts as
//!   recoverable from L3 when restart could rebuild it.
//!
//! Per epoch: `ok` when every copy is good; `RECOVERABLE` when some copy is bad or missing but
//! every rank has a good copy at some level (each bad copy is named with the levels it is
//! recoverable from); `DAMAGED` when a rank has no good copy at any level, or the manifest
//! does not load or is not the job's. Quarantined epochs (found damaged by a restart, never
//! restored again) are listed with the reasons, not read again, and do not fail the check.
//!
//! Exit status: 0 every committed epoch is restorable from some level (bad copies may have
//! been reported); 1 some epoch is DAMAGED; 2 usage errors; 141 stdout closed.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ckpt::format::{FileIdentity, RankFileReader};
use ckpt::manifest::{self, Level, Manifest};
use ckpt::storage::copies::Places;
use ckpt::util::human_bytes;
use serde::Serialize;

use crate::report::{self, level};
use crate::verify_l3::{self, L3Check};
use crate::{jobdir, list, Outcome};

/// Where rank files are looked for: one base for every node, or `<local>/<node>`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LocalBase {
    /// The same base on every node.
    Given(PathBuf),
    /// `<this>/<node>` for each node.
    PerNode(PathBuf),
}

impl LocalBase {
    /// The base as the ranks of `dir` saw it (see the module doc).
    pub(crate) fn of(dir: &Path, given: Option<&Path>) -> LocalBase {
        let env = || {
            ckpt::env::get(ckpt::env::LOCAL_DIR)
                .or_else(|| ckpt::env::get(ckpt::env::NODE_LOCAL_DIR))
        };
        let given = given
            .map(Path::to_path_buf)
            .or_else(|| jobdir::recorded_local_dir(dir));
        if jobdir::recorded_emulation(dir).is_some() {
            return LocalBase::PerNode(given.unwrap_or_else(|| dir.join("local")));
        }
        match given.or_else(|| env().map(PathBuf::from)) {
            Some(base) => LocalBase::Given(base),
            None => LocalBase::PerNode(dir.join("local")),
        }
    }

    /// The base of the files on `node`.
    pub(crate) fn for_node(&self, node: &str) -> PathBuf {
        match self {
            LocalBase::Given(base) => base.clone(),
            LocalBase::PerNode(local) => local.join(node),
        }
    }

    /// How the base reads in messages: `/b` or `/b/<node>`.
    fn shown(&self) -> String {
        match self {
            LocalBase::Given(b) => b.display().to_string(),
            LocalBase::PerNode(l) => format!("{}/<node>", l.display()),
        }
    }
}

/// Where one job's copies are, as seen from here.
#[derive(Debug, Clone)]
pub(crate) struct Where {
    /// Node-local bases (L1, L2).
    pub(crate) base: LocalBase,
    /// Base of shared storage (L4).
    pub(crate) shared: PathBuf,
    /// The job's id.
    pub(crate) job: String,
}

impl Where {
    /// The places of the levels as seen from `node`.
    pub(crate) fn places(&self, node: &str) -> Places {
        Places {
            local_dir: self.base.for_node(node),
            shared_dir: self.shared.clone(),
            job_id: self.job.clone(),
        }
    }

    /// Where `level` keeps rank `rank`'s copy of `m`'s epoch and the node holding it (none
    /// for shared storage), or why that is unknown.
    pub(crate) fn copy<'m>(
        &self,
        m: &'m Manifest,
        level: Level,
        rank: usize,
    ) -> Result<(PathBuf, Option<&'m str>), String> {
        let node = match level {
            Level::Local => Some(m.ranks[rank].node.as_str()),
            Level::Partner => match list::partner_of(m, rank) {
                Some((_, node)) => Some(node),
                None => return Err("the manifest records no rank holding its L2 copy".into()),
            },
            Level::Pfs => None,
            Level::Parity => return Err("L3 holds parity, not copies (see verify_l3)".into()),
        };
        let places = self.places(node.unwrap_or_default());
        let path = places.locate(level, m.epoch, rank as u32);
        path.map(|p| (p, node))
            .ok_or_else(|| "no place for this level".into())
    }
}

/// A copy that is missing or fails a check.
#[derive(Debug, Serialize)]
struct BadCopy {
    level: &'static str,
    rank: u32,
    /// The node the copy is on (none for shared storage).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    error: String,
    /// Levels at which this rank's copy is good.
    recoverable_from: Vec<&'static str>,
}

/// What the check of one epoch's copies found.
#[derive(Debug)]
struct Checked {
    /// Levels whose copies were read (complete ones).
    checked: Vec<Level>,
    /// Every bad copy of a rank's file, by level then rank.
    bad: Vec<BadCopy>,
    /// L3, when complete.
    l3: Option<L3Check>,
    /// Ranks with no good copy at any level.
    lost: Vec<u32>,
}

impl Checked {
    /// Bad copies and parity files, and problems with the L3 record.
    fn bad_count(&self) -> usize {
        let l3 = self.l3.as_ref().map_or(0, |c| c.bad.len() + c.errors.len());
        self.bad.len() + l3
    }

    /// Copies of rank files and parity files checked.
    fn copy_count(&self, nranks: usize) -> usize {
        let rank_levels = self.checked.iter().filter(|&&l| l != Level::Parity).count();
        nranks * rank_levels + self.l3.as_ref().map_or(0, |c| c.files)
    }
}

/// The result for one epoch.
#[derive(Debug)]
enum Verdict {
    Quarantined(String),
    Unreadable(String),
    Checked(Box<Manifest>, Checked),
}

impl Verdict {
    /// Whether the epoch cannot be restored from any level.
    fn damaged(&self) -> bool {
        match self {
            Verdict::Quarantined(_) => false,
            Verdict::Unreadable(_) => true,
            Verdict::Checked(_, c) => !c.lost.is_empty(),
        }
    }
}

/// Runs `ckpt verify`.
pub fn run(
    dir: &Path,
    local_dir: Option<&Path>,
    shared_dir: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<Outcome> {
    let entries = list::entries(dir)?;
    let newest = entries
        .iter()
        .find_map(|e| match (&e.quarantine, &e.manifest) {
            (None, Ok(m)) => Some(m),
            _ => None,
        });
    let job = jobdir::recorded_id(dir, newest).unwrap_or_else(|| ckpt::identity::legacy_id(dir));
    let at = Where {
        base: LocalBase::of(dir, local_dir),
        shared: jobdir::shared_base(dir, shared_dir),
        job,
    };
    let verdicts: Vec<(u64, Verdict)> = entries
        .into_iter()
        .map(|e| (e.epoch, verdict(dir, &at, e)))
        .collect();
    if as_json {
        let text = json(&at, &verdicts).context("cannot encode the result as JSON")?;
        outln!("{text}");
    } else if verdicts.is_empty() {
        outln!("no committed epochs in {}", dir.display());
    } else {
        outln!(
            "job {}: rank files under {}, shared copies under {}",
            at.job,
            at.base.shown(),
            at.shared.display()
        );
        let newest = newest_epoch(&verdicts);
        for (epoch, v) in &verdicts {
            for line in text(*epoch, v, Some(*epoch) == newest) {
                outln!("{line}");
            }
        }
    }
    Ok(if verdicts.iter().any(|(_, v)| v.damaged()) {
        Outcome::JobFailed
    } else {
        Outcome::Success
    })
}

/// Checks one listed epoch.
fn verdict(dir: &Path, at: &Where, entry: list::Entry) -> Verdict {
    if let Some(q) = &entry.quarantine {
        return Verdict::Quarantined(list::quarantine_note(q));
    }
    let m = match entry.manifest {
        Ok(m) => m,
        Err(e) => return Verdict::Unreadable(e),
    };
    if let Err(cause) = m.check_identity(&at.job) {
        let path = manifest::path(dir, entry.epoch);
        return Verdict::Unreadable(format!("manifest {}: {cause}", path.display()));
    }
    let checked = check_epoch(at, &m);
    Verdict::Checked(Box::new(m), checked)
}

/// Reads every copy of every complete level of `m`, and checks its L3 parity.
fn check_epoch(at: &Where, m: &Manifest) -> Checked {
    let mut checked: Vec<Level> = Vec::new();
    for &l in &m.levels {
        if !checked.contains(&l) {
            checked.push(l);
        }
    }
    let mut good: Vec<Vec<&'static str>> = vec![Vec::new(); m.ranks.len()];
    let mut bad = Vec::new();
    for &lvl in checked.iter().filter(|&&l| l != Level::Parity) {
        for (rank, ok) in good.iter_mut().enumerate() {
            let found = at.copy(m, lvl, rank);
            let result = found
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|(path, _)| check_copy(path, &at.job, m, rank));
            match result {
                Ok(()) => ok.push(level(lvl)),
                Err(error) => bad.push(BadCopy {
                    level: level(lvl),
                    rank: rank as u32,
                    node: found.as_ref().ok().and_then(|(_, n)| n.map(str::to_owned)),
                    path: found.ok().map(|(p, _)| p),
                    error,
                    recoverable_from: Vec::new(),
                }),
            }
        }
    }
    let l3 = checked.contains(&Level::Parity).then(|| {
        let l1_good: Vec<bool> = good.iter().map(|g| g.contains(&"L1")).collect();
        verify_l3::check(at, m, &l1_good)
    });
    for &r in l3.iter().flat_map(|c| &c.rebuildable) {
        if let Some(g) = good.get_mut(r as usize) {
            g.push(level(Level::Parity));
            g.sort_unstable();
        }
    }
    for b in &mut bad {
        b.recoverable_from = good[b.rank as usize].clone();
    }
    let lost = (0..m.ranks.len() as u32)
        .filter(|&r| good[r as usize].is_empty())
        .collect();
    Checked {
        checked,
        bad,
        l3,
        lost,
    }
}

/// Restore's checks of one copy of rank `rank`'s file of `m`'s epoch, every byte read.
fn check_copy(path: &Path, job: &str, m: &Manifest, rank: usize) -> Result<(), String> {
    let rec = &m.ranks[rank];
    let id = FileIdentity {
        job: job.to_owned(),
        epoch: m.epoch,
        rank: rank as u32,
        nranks: m.nranks,
    };
    let result = RankFileReader::open(path, &id).and_then(|f| {
        let h = *f.header();
        if h.file_len != rec.len || h.table_crc != rec.table_crc {
            return Err(ckpt::Corruption::Foreign {
                field: "file",
                found: format!("{} bytes, table crc {:#010x}", h.file_len, h.table_crc),
                expected: format!("{} bytes, table crc {:#010x}", rec.len, rec.table_crc),
            }
            .into());
        }
        f.verify_all()
    });
    result.map(drop).map_err(|e| e.to_string())
}

/// `rank 2` or `ranks 1-3, 6`.
fn ranks(list: &[u32]) -> String {
    let wide: Vec<u64> = list.iter().map(|&r| r as u64).collect();
    let s = if list.len() == 1 { "" } else { "s" };
    format!("rank{s} {}", report::epochs(&wide))
}

/// The newest committed epoch whose manifest was read (the one whose levels may be pending).
fn newest_epoch(verdicts: &[(u64, Verdict)]) -> Option<u64> {
    let checked = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Checked(..)));
    checked.map(|(e, _)| *e).max()
}

/// The lines of one epoch (`newest`: the newest committed epoch).
fn text(epoch: u64, v: &Verdict, newest: bool) -> Vec<String> {
    let (m, c) = match v {
        Verdict::Quarantined(note) => {
            return vec![format!(
                "epoch {epoch}: QUARANTINED (not verified; restarts skip it): {note}"
            )]
        }
        Verdict::Unreadable(e) => return vec![format!("epoch {epoch}: DAMAGED: {e}")],
        Verdict::Checked(m, c) => (m, c),
    };
    let levels = list::levels(m, newest);
    let head = if !c.lost.is_empty() {
        format!(
            "epoch {epoch}: DAMAGED ({} of {} rank files): no good copy of {} at any level; \
             levels {levels}",
            c.lost.len(),
            m.nranks,
            ranks(&c.lost)
        )
    } else if c.bad_count() > 0 {
        format!(
            "epoch {epoch}: RECOVERABLE ({} of {} copies bad, every rank has a good one); \
             levels {levels}",
            c.bad_count(),
            c.copy_count(m.ranks.len())
        )
    } else {
        let rank_levels = c.checked.iter().filter(|&&l| l != Level::Parity).count();
        let l3 = c.l3.as_ref().map_or_else(String::new, |l3| {
            format!(
                ", {} L3 parity files good, parity of {} sets recomputed",
                l3.files, l3.recomputed_sets
            )
        });
        format!(
            "epoch {epoch}: ok ({} ranks, {} verified{l3}); levels {levels}",
            m.nranks,
            human_bytes(m.payload_bytes() * rank_levels as u64)
        )
    };
    let details = c.bad.iter().map(|b| {
        let at = match (&b.node, b.level) {
            (Some(n), "L1") => format!(" (node {n})"),
            (Some(n), _) => format!(" (copy on node {n})"),
            (None, _) => String::new(),
        };
        let path = b
            .path
            .as_ref()
            .map_or_else(String::new, |p| format!("{}: ", p.display()));
        let fate = match b.recoverable_from.as_slice() {
            [] => "no good copy at any level".to_owned(),
            from => format!("recoverable from {}", from.join("/")),
        };
        format!(
            "  {} rank {}{at}: {path}{}; {fate}",
            b.level, b.rank, b.error
        )
    });
    let l3 = c.l3.iter().flat_map(l3_lines);
    std::iter::once(head).chain(details).chain(l3).collect()
}

/// The lines naming what is wrong with an epoch's L3.
fn l3_lines(c: &L3Check) -> Vec<String> {
    let mut out: Vec<String> = c.errors.iter().map(|e| format!("  L3: {e}")).collect();
    out.extend(c.bad.iter().map(|b| {
        format!(
            "  L3 group {} set {} shard {} (rank {} on node {}): {}: {}",
            b.group,
            b.set,
            b.shard,
            b.holder,
            b.node,
            b.path.display(),
            b.error
        )
    }));
    if c.unrecomputed_sets > 0 {
        out.push(format!(
            "  L3: parity of {} sets not recomputed (a data member's L1 file is bad; their \
             headers and lengths were checked)",
            c.unrecomputed_sets
        ));
    }
    out
}

/// The whole result as `--json`.
#[derive(Serialize)]
struct JsonReport<'a> {
    job: &'a str,
    local_base: String,
    shared_dir: &'a Path,
    /// Every committed epoch is restorable from some level (the exit status is 0).
    restorable: bool,
    epochs: Vec<JsonEpoch<'a>>,
}

/// One epoch in `--json` output.
#[derive(Serialize)]
struct JsonEpoch<'a> {
    epoch: u64,
    /// `ok`, `recoverable`, `damaged` or `quarantined`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<&'a str>,
    /// Levels complete on every rank; `checked`: those whose copies were read.
    levels: Vec<&'static str>,
    pending: Vec<&'static str>,
    checked: Vec<&'static str>,
    bad: &'a [BadCopy],
    /// L3's parity files, when L3 is complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    l3: Option<&'a L3Check>,
    /// Ranks with no good copy at any level.
    lost_ranks: &'a [u32],
}

fn json(at: &Where, verdicts: &[(u64, Verdict)]) -> serde_json::Result<String> {
    let newest = newest_epoch(verdicts);
    let names = |ls: &[Level]| ls.iter().map(|&l| level(l)).collect::<Vec<_>>();
    let epochs = verdicts
        .iter()
        .map(|(epoch, v)| {
            let mut e = JsonEpoch {
                epoch: *epoch,
                status: "damaged",
                error: None,
                quarantined: None,
                levels: Vec::new(),
                pending: Vec::new(),
                checked: Vec::new(),
                bad: &[],
                l3: None,
                lost_ranks: &[],
            };
            match v {
                Verdict::Quarantined(note) => {
                    e.status = "quarantined";
                    e.quarantined = Some(note);
                }
                Verdict::Unreadable(err) => e.error = Some(err),
                Verdict::Checked(m, c) => {
                    e.status = match (c.lost.is_empty(), c.bad_count() == 0) {
                        (false, _) => "damaged",
                        (true, false) => "recoverable",
                        (true, true) => "ok",
                    };
                    e.l3 = c.l3.as_ref();
                    e.levels = names(&m.levels);
                    e.pending = names(&list::pending(m, Some(*epoch) == newest));
                    e.checked = names(&c.checked);
                    e.bad = &c.bad;
                    e.lost_ranks = &c.lost;
                }
            }
            e
        })
        .collect();
    serde_json::to_string_pretty(&JsonReport {
        job: &at.job,
        local_base: at.base.shown(),
        shared_dir: &at.shared,
        restorable: !verdicts.iter().any(|(_, v)| v.damaged()),
        epochs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use Level::{Partner, Pfs};

    /// A job directory with epoch 3 (4 ranks on 2 nodes, L1 L2 L4 complete) and epoch 2 (L1,
    /// L4 pending), every copy written.
    fn job() -> (tempfile::TempDir, Where) {
        let dir = tempfile::tempdir().unwrap();
        let mut m = testutil::manifest_v2(3, 4, 2, &[Partner, Pfs], &[Partner, Pfs]);
        testutil::write_epoch(dir.path(), &mut m);
        let mut m = testutil::manifest_v2(2, 4, 2, &[Pfs], &[]);
        testutil::write_epoch(dir.path(), &mut m);
        let at = Where {
            base: LocalBase::of(dir.path(), None),
            shared: jobdir::shared_base(dir.path(), None),
            job: "job".into(),
        };
        (dir, at)
    }

    /// Each epoch's lines, newest first, with the job directory written as `D`.
    fn lines(dir: &Path, at: &Where) -> Vec<String> {
        let d = dir.display().to_string();
        let entries = list::entries(dir).unwrap();
        let all = entries.into_iter().map(|e| (e.epoch, verdict(dir, at, e)));
        let all: Vec<_> = all.collect();
        let newest = newest_epoch(&all);
        all.iter()
            .flat_map(|(epoch, v)| text(*epoch, v, Some(*epoch) == newest))
            .map(|l| l.replace(&d, "D"))
            .collect()
    }

    fn copy(dir: &Path, level: Level, epoch: u64, rank: u32, node: &str) -> PathBuf {
        let places = Places {
            local_dir: dir.join("local").join(node),
            shared_dir: dir.join("shared"),
            job_id: "job".into(),
        };
        places.locate(level, epoch, rank).unwrap()
    }

    fn flip(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[5000] ^= 1;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn every_copy_of_every_complete_level_is_read() {
        let (dir, at) = job();
        assert_eq!(at.base, LocalBase::PerNode(dir.path().join("local")));
        assert_eq!(
            lines(dir.path(), &at),
            [
                "epoch 3: ok (4 ranks, 117.2 KiB verified); levels L1 L2 L4",
                "epoch 2: ok (4 ranks, 39.1 KiB verified); levels L1",
            ]
        );
        let outcome = run(dir.path(), None, None, false).unwrap();
        assert_eq!(outcome, Outcome::Success);
    }

    /// A missing or damaged copy is named; while every rank has a good copy somewhere the
    /// epoch is recoverable (exit 0), and only a rank with none damages it (exit 1).
    #[test]
    fn a_lost_l1_file_is_recoverable_from_another_level() {
        let (dir, at) = job();
        let d = dir.path();
        // Rank 1 (node0) loses its L1 file; its L2 copy is on node1 (rank 3's node).
        std::fs::remove_file(copy(d, Level::Local, 3, 1, "node0")).unwrap();
        // Rank 2's L2 copy (held on node0) is damaged; its L1 file is fine.
        flip(&copy(d, Partner, 3, 2, "node0"));
        let got = lines(d, &at);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(
            got[0],
            "epoch 3: RECOVERABLE (2 of 12 copies bad, every rank has a good one); levels L1 L2 L4"
        );
        assert_eq!(
            got[1],
            "  L1 rank 1 (node node0): D/local/node0/job/epoch-00000003/rank-000001.ckpt: \
             No such file or directory (os error 2); recoverable from L2/L4"
        );
        assert!(
            got[2].starts_with(
                "  L2 rank 2 (copy on node node0): \
                 D/local/node0/job/partner/epoch-00000003/rank-000002.ckpt: checksum mismatch"
            ) && got[2].ends_with("; recoverable from L1/L4"),
            "{}",
            got[2]
        );
        assert_eq!(run(d, None, None, false).unwrap(), Outcome::Success);

        // Rank 1's other copies go too: nothing left to restore it from.
        flip(&copy(d, Partner, 3, 1, "node1"));
        std::fs::remove_file(copy(d, Pfs, 3, 1, "-")).unwrap();
        let got = lines(d, &at);
        assert_eq!(
            got[0],
            "epoch 3: DAMAGED (1 of 4 rank files): no good copy of rank 1 at any level; levels \
             L1 L2 L4"
        );
        assert!(
            got[1].ends_with("; no good copy at any level"),
            "{}",
            got[1]
        );
        assert!(
            got[4].starts_with("  L4 rank 1: D/shared/job/epoch-00000003/rank-000001.ckpt: No"),
            "{}",
            got[4]
        );
        assert_eq!(
            got[5],
            "epoch 2: ok (4 ranks, 39.1 KiB verified); levels L1"
        );
        assert_eq!(run(d, None, None, false).unwrap(), Outcome::JobFailed);

        let v: serde_json::Value = {
            let entries = list::entries(d).unwrap();
            let all: Vec<_> = entries
                .into_iter()
                .map(|e| (e.epoch, verdict(d, &at, e)))
                .collect();
            serde_json::from_str(&json(&at, &all).unwrap()).unwrap()
        };
        assert_eq!(v["restorable"], false);
        assert_eq!(v["epochs"][0]["status"], "damaged");
        assert_eq!(v["epochs"][0]["lost_ranks"], serde_json::json!([1]));
        assert_eq!(
            v["epochs"][0]["checked"],
            serde_json::json!(["L1", "L2", "L4"])
        );
        let bad = &v["epochs"][0]["bad"];
        assert_eq!(bad.as_array().unwrap().len(), 4);
        assert_eq!(bad[1]["level"], "L2");
        assert_eq!(bad[1]["rank"], 1);
        assert_eq!(bad[1]["node"], "node1");
        assert_eq!(bad[1]["recoverable_from"], serde_json::json!([]));
        assert_eq!(bad[2]["rank"], 2);
        assert_eq!(bad[2]["recoverable_from"], serde_json::json!(["L1", "L4"]));
        assert_eq!(v["epochs"][1]["status"], "ok");
        // Only the newest epoch's levels can be in progress.
        assert_eq!(v["epochs"][1]["pending"], serde_json::json!([]));
    }

    /// Copies are looked for where `job.json` says: under the recorded shared directory, and
    /// an L2 holder that the manifest does not record is a bad copy, not a crash.
    #[test]
    fn the_shared_directory_comes_from_job_json_and_holders_from_the_manifest() {
        let (dir, _) = job();
        let d = dir.path();
        let moved = d.join("pfs");
        std::fs::rename(d.join("shared"), &moved).unwrap();
        let at = |given: Option<&Path>| Where {
            base: LocalBase::of(d, None),
            shared: jobdir::shared_base(d, given),
            job: "job".into(),
        };
        assert!(lines(d, &at(None))[0].contains("RECOVERABLE (4 of 12"));
        assert!(lines(d, &at(Some(&moved)))[0].starts_with("epoch 3: ok"));
        let record = format!(
            r#"{{"job_id": "job", "shared_dir": "{}"}}"#,
            moved.display()
        );
        std::fs::write(d.join(jobdir::JOB_FILE), record).unwrap();
        assert!(lines(d, &at(None))[0].starts_with("epoch 3: ok"));

        let mut m = manifest::load(d, 3).unwrap();
        m.copies.partner.truncate(3);
        manifest::publish(d, &m).unwrap();
        let got = lines(d, &at(None));
        assert_eq!(
            got[1],
            "  L2 rank 3: the manifest records no rank holding its L2 copy; recoverable from L1/L4"
        );
    }

    /// Epoch 3 of 4 ranks on 4 nodes with L1 and L3 (one group of the 4, `k` parity shards
    /// per set), every file written; the parity file of `set` held by shard `t`'s holder.
    fn l3_job(k: u16) -> (tempfile::TempDir, Where) {
        let dir = tempfile::tempdir().unwrap();
        let mut m = testutil::manifest_v2(3, 4, 4, &[Level::Parity], &[]);
        testutil::write_epoch(dir.path(), &mut m);
        testutil::write_parity(dir.path(), &mut m, &[vec![0, 1, 2, 3]], k);
        let at = Where {
            base: LocalBase::of(dir.path(), None),
            shared: jobdir::shared_base(dir.path(), None),
            job: "job".into(),
        };
        (dir, at)
    }

    fn parity_file(dir: &Path, set: u32, holder: u32) -> PathBuf {
        Places {
            local_dir: dir.join("local").join(format!("node{holder}")),
            shared_dir: dir.join("shared"),
            job_id: "job".into(),
        }
        .parity_path(3, 0, set)
    }

    /// Every parity file is found on its holder's node, its header checked and its parity
    /// recomputed from the members' L1 files; a flipped parity byte and a damaged header are
    /// each named with the file and the cause (the epoch stays restorable: exit 0).
    #[test]
    fn l3_parity_is_recomputed_and_a_bad_shard_named() {
        let (dir, at) = l3_job(1);
        let d = dir.path();
        let got = lines(d, &at);
        assert_eq!(
            got,
            [
                "epoch 3: ok (4 ranks, 39.1 KiB verified, 4 L3 parity files good, parity of 4 \
              sets recomputed); levels L1 L3"
            ]
        );
        // Set 1's shard (held by rank 1): one parity byte flipped.
        let p1 = parity_file(d, 1, 1);
        let mut bytes = std::fs::read(&p1).unwrap();
        let at_byte = bytes.len() - 10;
        bytes[at_byte] ^= 4;
        std::fs::write(&p1, bytes).unwrap();
        // Set 2's shard (rank 2): header damaged.
        let p2 = parity_file(d, 2, 2);
        let mut bytes = std::fs::read(&p2).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&p2, bytes).unwrap();
        let got = lines(d, &at);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert_eq!(
            got[0],
            "epoch 3: RECOVERABLE (2 of 8 copies bad, every rank has a good one); levels L1 L3"
        );
        assert_eq!(
            got[1],
            format!(
                "  L3 group 0 set 1 shard 0 (rank 1 on node node1): \
                 D/local/node1/job/parity/epoch-00000003/group-000000-set-0001.prty: parity \
                 differs from the parity recomputed from the L1 files of ranks 0, 2, 3 at \
                 byte {at_byte} (stripe 0)"
            )
        );
        assert!(
            got[2].starts_with(
                "  L3 group 0 set 2 shard 0 (rank 2 on node node2): \
                 D/local/node2/job/parity/epoch-00000003/group-000000-set-0002.prty: checksum \
                 mismatch in parity header"
            ),
            "{}",
            got[2]
        );
        assert_eq!(run(d, None, None, false).unwrap(), Outcome::Success);
    }

    /// A rank whose L1 file is gone is recoverable from L3 while every set covering it lost at
    /// most k shards (its node's parity file gone too: a lost node); one more lost member is
    /// too many for XOR: no good copy (exit 1), where Reed-Solomon with k = 2 still rebuilds.
    #[test]
    fn a_lost_member_is_recoverable_from_l3_up_to_k() {
        for k in [1u16, 2] {
            let (dir, at) = l3_job(k);
            let d = dir.path();
            let l1 = |r: u32| copy(d, Level::Local, 3, r, &format!("node{r}"));
            std::fs::remove_dir_all(d.join("local/node2")).unwrap();
            let got = lines(d, &at);
            assert_eq!(
                got[0],
                format!(
                    "epoch 3: RECOVERABLE ({} of {} copies bad, every rank has a good one); \
                     levels L1 L3",
                    1 + k,
                    4 + 4 * k
                )
            );
            assert_eq!(
                got[1],
                format!(
                    "  L1 rank 2 (node node2): {}: No such file or directory (os error 2); \
                     recoverable from L3",
                    l1(2)
                        .display()
                        .to_string()
                        .replace(&d.display().to_string(), "D")
                )
            );
            let note = format!("parity of {} sets not recomputed", 4 - k);
            assert!(got.last().unwrap().contains(&note), "{got:#?}");
            assert_eq!(run(d, None, None, false).unwrap(), Outcome::Success);

            std::fs::remove_file(l1(3)).unwrap();
            let got = lines(d, &at);
            let want = if k == 1 {
                "epoch 3: DAMAGED (2 of 4 rank files): no good copy of ranks 2, 3 at any level; \
                 levels L1 L3"
            } else {
                "epoch 3: RECOVERABLE (4 of 12 copies bad, every rank has a good one); levels \
                 L1 L3"
            };
            assert_eq!(got[0], want, "k {k}: {got:#?}");
            let want = if k == 1 {
                Outcome::JobFailed
            } else {
                Outcome::Success
            };
            assert_eq!(run(d, None, None, false).unwrap(), want, "k {k}");
        }
        let (dir, at) = l3_job(1);
        let v: serde_json::Value = {
            std::fs::remove_file(parity_file(dir.path(), 0, 0)).unwrap();
            let entries = list::entries(dir.path()).unwrap();
            let all: Vec<_> = entries
                .into_iter()
                .map(|e| (e.epoch, verdict(dir.path(), &at, e)))
                .collect();
            serde_json::from_str(&json(&at, &all).unwrap()).unwrap()
        };
        let e = &v["epochs"][0];
        assert_eq!(e["status"], "recoverable");
        assert_eq!(e["checked"], serde_json::json!(["L1", "L3"]));
        assert_eq!(e["l3"]["files"], 4);
        assert_eq!(e["l3"]["recomputed_sets"], 3);
        assert_eq!(e["l3"]["bad"][0]["set"], 0);
        assert_eq!(e["l3"]["bad"][0]["holder"], 0);
        assert!(e["l3"]["bad"][0]["error"]
            .as_str()
            .unwrap()
            .contains("No such file"));
    }
}
