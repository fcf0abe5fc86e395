//! `ckpt prune JOB_DIR --keep N [--keep-l2 N] [--keep-l3 N] [--keep-l4 N] [--dry-run]`: each
//! level keeps its own number of newest epochs (`--keep` for L1, and for any level whose flag
//! is not given), through `retention::thresholds` as rank 0 applies it. Manifests first: a
//! level that falls out of its window is dropped from older manifests (republished), a manifest
//! with no level left is removed ([`manifest::remove`]), and [`manifest::prune`] takes the
//! quarantine records and unloadable manifests older than every kept epoch; then each level's
//! files below its threshold: L1 (`<base>/<job>/epoch-E`), L2 (`<base>/<job>/partner/epoch-E`)
//! and L3 (`<base>/<job>/parity/epoch-E`) under every node-local base reachable from here, and
//! L4 (`<shared>/<job>/epoch-E`). L3 goes with L1: its parity rebuilds nothing without the
//! other members' L1 files. Epoch directories older than the oldest kept epoch that no manifest
//! names (a commit that failed, a crash before the manifest) go too: epoch numbers only
//! increase, so no later epoch can be one of them.
//!
//! The bases are found as `ckpt verify` finds them ([`crate::verify`]): `--local-dir`, else
//! the recorded one, else the environment; with the default `<job dir>/local/<node>` (and with
//! emulated nodes, `<base>/<node>`) every node directory there. Node-local storage of other
//! machines is out of reach: the ranks prune their own older files at their next commit.
//!
//! Refused while a `ckpt run` holds the job directory ([`lock`]); holding its run lock
//! meanwhile, so no run starts while files go; refused too while ranks of an earlier launch
//! live. Nothing is followed through a link: an epoch directory or a job's node directory that
//! is a link is left alone, and a file that is a link is removed, never its target.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ckpt::manifest::{self, Level, Manifest};
use ckpt::retention::{self, Keep, KeepFrom};
use ckpt::util::human_bytes;

use crate::cli::PruneArgs;
use crate::lock::{self, Liveness};
use crate::report::{self, level};
use crate::verify::{LocalBase, Where};
use crate::{jobdir, Outcome, UsageError};

/// An epoch directory of one level to remove, with its entries.
#[derive(Debug, Clone, PartialEq)]
struct EpochDir {
    level: Level,
    epoch: u64,
    dir: PathBuf,
    /// Files (rank files, temporaries) and their sizes.
    files: Vec<(PathBuf, u64)>,
}

/// A manifest that stays with fewer levels: republished without `dropped`.
#[derive(Debug, Clone, PartialEq)]
struct Drop {
    dropped: Vec<Level>,
    /// The manifest with the levels kept.
    manifest: Manifest,
}

/// What `ckpt prune` removes.
#[derive(Debug, Default)]
struct Plan {
    /// Committed epochs kept (with at least one level), newest first.
    kept: Vec<u64>,
    /// Epochs whose manifest (or quarantine record) goes.
    epochs: Vec<u64>,
    /// The oldest epoch kept: every record and file older goes.
    keep_from: u64,
    /// Per level, the oldest epoch whose files stay (at least `keep_from`).
    level_from: KeepFrom,
    /// Manifests that stay with fewer levels, republished before any file goes.
    drops: Vec<Drop>,
    /// Manifests and quarantine records that go.
    records: Vec<PathBuf>,
    /// Epoch directories that go, level by level.
    dirs: Vec<EpochDir>,
}

/// Epochs to keep per level: `--keep` for L1, and for each other level its flag, else `--keep`.
fn keep_of(args: &PruneArgs) -> Result<Keep, UsageError> {
    if args.keep == 0 {
        return Err(UsageError(
            "--keep 0: at least one committed epoch must be kept".into(),
        ));
    }
    let given = [
        ("--keep-l2", "L2", args.keep_l2),
        ("--keep-l3", "L3", args.keep_l3),
        ("--keep-l4", "L4", args.keep_l4),
    ];
    for (flag, level, n) in given {
        if n == Some(0) {
            return Err(UsageError(format!(
                "{flag} 0: at least one committed epoch must be kept at {level}"
            )));
        }
    }
    let or_keep = |n: Option<u32>| n.unwrap_or(args.keep) as usize;
    Ok(Keep {
        local: args.keep as usize,
        partner: or_keep(args.keep_l2),
        parity: or_keep(args.keep_l3),
        shared: or_keep(args.keep_l4),
    })
}

/// `--keep 2 --keep-l4 3`: the retention flags given.
fn keep_flags(args: &PruneArgs) -> String {
    let mut out = format!("--keep {}", args.keep);
    for (flag, n) in [
        ("--keep-l2", args.keep_l2),
        ("--keep-l3", args.keep_l3),
        ("--keep-l4", args.keep_l4),
    ] {
        if let Some(n) = n {
            out.push_str(&format!(" {flag} {n}"));
        }
    }
    out
}

/// Runs `ckpt prune`.
pub fn run(args: &PruneArgs) -> anyhow::Result<Outcome> {
    let dir = &args.job_dir;
    let keep = keep_of(args)?;
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("{} is not a directory", dir.display()),
        Err(e) => return Err(e).with_context(|| format!("job directory {}", dir.display())),
    }
    // Held until the end: no run starts while files go. A dry run only looks.
    let _lock = if args.dry_run {
        if let Liveness::Running(who) = lock::liveness(dir)? {
            return Err(UsageError(format!(
                "refusing to prune {}: a `ckpt run` holds it ({who}); prune once it has ended",
                dir.display()
            ))
            .into());
        }
        None
    } else {
        Some(lock::take_for_prune(dir, ckpt::util::unix_ms())?)
    };
    if ckpt::storage::liveness::ranks_alive(dir).unwrap_or(false) {
        return Err(UsageError(format!(
            "refusing to prune {}: ranks of an earlier launch are still alive (they hold {})",
            dir.display(),
            ckpt::storage::liveness::lock_path(dir).display()
        ))
        .into());
    }
    let at = locate(dir, args);
    let plan = plan(dir, &at, &keep)?;
    if plan.epochs.is_empty() && plan.dirs.is_empty() && plan.drops.is_empty() {
        outln!(
            "nothing to prune in {}: {} kept ({})",
            dir.display(),
            count_epochs(&plan.kept),
            keep_flags(args)
        );
        return Ok(Outcome::Success);
    }
    outln!(
        "{}: keeping {} ({}); pruning everything older than epoch {}{}",
        dir.display(),
        count_epochs(&plan.kept),
        keep_flags(args),
        plan.keep_from,
        level_note(&plan)
    );
    let failed = if args.dry_run {
        show(&plan, "would remove");
        false
    } else {
        execute(dir, &plan)?
    };
    Ok(if failed {
        Outcome::JobFailed
    } else {
        Outcome::Success
    })
}

/// `epochs 5, 6` (or `no epochs`).
fn count_epochs(list: &[u64]) -> String {
    let mut sorted = list.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => "no epochs".into(),
        1 => format!("epoch {}", sorted[0]),
        _ => format!("epochs {}", report::epochs(&sorted)),
    }
}

/// Where the job's copies are, as `ckpt verify` finds them.
fn locate(dir: &Path, args: &PruneArgs) -> Where {
    let committed = manifest::committed(dir).unwrap_or_default();
    let newest = jobdir::newest_loadable(dir, &committed);
    let job =
        jobdir::recorded_id(dir, newest.as_ref()).unwrap_or_else(|| ckpt::identity::legacy_id(dir));
    Where {
        base: LocalBase::of(dir, args.local_dir.as_deref()),
        shared: jobdir::shared_base(dir, args.shared_dir.as_deref()),
        job,
    }
}

/// `; L3 files older than epoch 6` for each level pruned beyond `keep_from`, or nothing.
fn level_note(plan: &Plan) -> String {
    let later: Vec<String> = LEVELS
        .iter()
        .filter(|&&l| plan.level_from.of(l) > plan.keep_from)
        .map(|&l| {
            format!(
                "{} files older than epoch {}",
                level(l),
                plan.level_from.of(l)
            )
        })
        .collect();
    match later.is_empty() {
        true => String::new(),
        false => format!("; {}", later.join(", ")),
    }
}

/// Every level, in order.
const LEVELS: [Level; 4] = [Level::Local, Level::Partner, Level::Parity, Level::Pfs];

/// What goes when each level keeps `keep` of its epochs (`retention::thresholds` over the
/// levels the manifests record): a manifest left with no level goes, one left with fewer
/// levels is republished without them, and each level's files older than its threshold go.
/// L3 goes with L1 (its parity rebuilds nothing without the other members' L1 files).
/// A manifest that does not load is kept unless older than every kept epoch.
fn plan(dir: &Path, at: &Where, keep: &Keep) -> anyhow::Result<Plan> {
    let listed = manifest::listing(dir)
        .with_context(|| format!("cannot list manifests in {}", dir.display()))?;
    if listed.committed.is_empty() {
        // Nothing committed: nothing older than a kept epoch, and files may still be needed
        // (a job that never committed restarts from the beginning anyway).
        return Ok(Plan::default());
    }
    let mut loaded = Vec::new();
    let mut unreadable = Vec::new();
    for &e in &listed.committed {
        match manifest::load(dir, e) {
            Ok(m) => loaded.push(m),
            Err(_) => unreadable.push(e),
        }
    }
    let epochs: Vec<(u64, Vec<Level>)> =
        loaded.iter().map(|m| (m.epoch, m.levels.clone())).collect();
    let from = retention::thresholds(&epochs, keep);
    let mut plan = Plan::default();
    // The levels each kept epoch keeps.
    let mut after: Vec<(u64, Vec<Level>)> = Vec::new();
    for m in loaded {
        let mut kept = retention::kept_levels(m.epoch, &m.levels, &from);
        // L3 rebuilds a rank from the other members' L1 files: without L1 it restores nothing.
        if !kept.contains(&Level::Local) {
            kept.retain(|&l| l != Level::Parity);
        }
        if kept.is_empty() {
            plan.epochs.push(m.epoch);
            plan.records.push(manifest::path(dir, m.epoch));
            continue;
        }
        plan.kept.push(m.epoch);
        after.push((m.epoch, kept.clone()));
        if kept.len() != m.levels.len() {
            let dropped = m.levels.iter().filter(|l| !kept.contains(l)).copied();
            let dropped = dropped.collect();
            let mut manifest = m;
            manifest.levels = kept;
            plan.drops.push(Drop { dropped, manifest });
        }
    }
    // With no manifest loading, keep what a plain `--keep` keeps.
    let keep_from = match plan.kept.iter().min() {
        Some(&e) => e,
        None => manifest::keep_from(&listed.committed, keep.local),
    };
    for &e in unreadable.iter().filter(|&&e| e < keep_from) {
        plan.epochs.push(e);
        plan.records.push(manifest::path(dir, e));
    }
    plan.kept
        .extend(unreadable.iter().filter(|&&e| e >= keep_from));
    plan.kept.sort_unstable_by(|a, b| b.cmp(a));
    plan.drops.sort_by_key(|d| d.manifest.epoch);
    plan.keep_from = keep_from;
    // Each level's files stay from the oldest epoch that keeps it (else from its threshold),
    // never above a kept manifest that does not load (its levels are unknown).
    let cap = unreadable.iter().copied().filter(|&e| e >= keep_from).min();
    let level_from = |l: Level| {
        let keeping = after
            .iter()
            .filter(|(_, ls)| ls.contains(&l))
            .map(|(e, _)| *e);
        let from = keeping.min().unwrap_or(from.of(l)).max(keep_from);
        cap.map_or(from, |c| from.min(c))
    };
    plan.level_from = KeepFrom {
        local: level_from(Level::Local),
        partner: level_from(Level::Partner),
        parity: level_from(Level::Parity),
        shared: level_from(Level::Pfs),
    };
    for &e in listed.quarantined.iter().filter(|&&e| e < keep_from) {
        plan.epochs.push(e);
        let m = manifest::path(dir, e);
        if fs::symlink_metadata(&m).is_ok() {
            plan.records.push(m);
        }
        plan.records.push(manifest::quarantine_path(dir, e));
    }
    plan.epochs.sort_unstable();
    // By name: by epoch, a manifest before its quarantine record.
    plan.records.sort();
    for (level, root) in roots(at) {
        let found = epoch_dirs(&root, level, plan.level_from.of(level))
            .with_context(|| format!("cannot list {}", root.display()))?;
        plan.dirs.extend(found);
    }
    Ok(plan)
}

/// The directories holding each level's `epoch-E` directories: L1 and L2 under every
/// node-local base reachable from here, then L4.
fn roots(at: &Where) -> Vec<(Level, PathBuf)> {
    let nodes: Vec<String> = match &at.base {
        LocalBase::Given(_) => vec![String::new()],
        LocalBase::PerNode(local) => node_dirs(local),
    };
    let root = |node: &str, level: Level| {
        let places = at.places(node);
        let copy = places.locate(level, 0, 0)?;
        Some(copy.parent()?.parent()?.to_path_buf())
    };
    let mut out = Vec::new();
    for level in [Level::Local, Level::Partner, Level::Parity] {
        for node in &nodes {
            if level == Level::Parity {
                // Parity files are not copies of a rank's file: `<base>/<job>/parity`.
                let shard = at.places(node).parity_path(0, 0, 0);
                let dir = shard.parent().and_then(Path::parent);
                out.extend(dir.map(|r| (level, r.to_path_buf())));
            } else {
                out.extend(root(node, level).map(|r| (level, r)));
            }
        }
    }
    out.extend(root("", Level::Pfs).map(|r| (Level::Pfs, r)));
    out
}

/// The node directories under a per-node base (real directories only, sorted).
fn node_dirs(local: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(local) else {
        return Vec::new();
    };
    let mut nodes: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

/// The `epoch-E` directories under `root` with `E < keep_from`, with their files; nothing if
/// `root`, or for L2 and L3 the job's directory holding it, is missing or a link.
fn epoch_dirs(root: &Path, level: Level, keep_from: u64) -> io::Result<Vec<EpochDir>> {
    let nested = matches!(level, Level::Partner | Level::Parity);
    let job_dir_ok = !nested || root.parent().is_some_and(is_real_dir);
    if !is_real_dir(root) || !job_dir_ok {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(epoch) = name
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if epoch >= keep_from || !entry.file_type()?.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        for f in fs::read_dir(entry.path())? {
            let f = f?;
            let meta = f.metadata()?;
            if !meta.is_dir() {
                files.push((f.path(), meta.len()));
            }
        }
        files.sort();
        out.push(EpochDir {
            level,
            epoch,
            dir: entry.path(),
            files,
        });
    }
    out.sort_by_key(|d| d.epoch);
    Ok(out)
}

/// A directory, not a link to one.
fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Prints the plan, each line starting with `verb`.
fn show(plan: &Plan, verb: &str) {
    for line in lines(plan, verb) {
        // A closed stdout only ends the listing of a dry run.
        if report::print(line).is_err() {
            return;
        }
    }
}

/// The report of `plan`: one line per record and per epoch directory, then a total.
fn lines(plan: &Plan, verb: &str) -> Vec<String> {
    let mut out: Vec<String> = plan
        .records
        .iter()
        .map(|p| format!("{verb} {}", p.display()))
        .collect();
    let drop_verb = if verb == "removed" {
        "dropped"
    } else {
        "would drop"
    };
    for d in &plan.drops {
        let names = |ls: &[Level]| ls.iter().map(|&l| level(l)).collect::<Vec<_>>().join(" ");
        out.push(format!(
            "{drop_verb} {} from epoch {}'s manifest (keeping {})",
            names(&d.dropped),
            d.manifest.epoch,
            names(&d.manifest.levels)
        ));
    }
    for d in &plan.dirs {
        let bytes: u64 = d.files.iter().map(|(_, n)| n).sum();
        out.push(format!(
            "{verb} {} epoch {} {} ({}, {})",
            level(d.level),
            d.epoch,
            d.dir.display(),
            report::count(d.files.len() as u64, "file", "files"),
            human_bytes(bytes)
        ));
    }
    let files: usize = plan.dirs.iter().map(|d| d.files.len()).sum();
    let bytes: u64 = plan
        .dirs
        .iter()
        .flat_map(|d| &d.files)
        .map(|(_, n)| n)
        .sum();
    let drops = match plan.drops.len() {
        0 => String::new(),
        n => format!(
            ", levels of {}",
            report::count(n as u64, "manifest", "manifests")
        ),
    };
    out.push(format!(
        "{}: {} manifest{} or record{}{drops}, {} in {} epoch director{}, {}",
        if verb == "removed" {
            "pruned"
        } else {
            "would prune"
        },
        plan.records.len(),
        if plan.records.len() == 1 { "" } else { "s" },
        if plan.records.len() == 1 { "" } else { "s" },
        report::count(files as u64, "file", "files"),
        plan.dirs.len(),
        if plan.dirs.len() == 1 { "y" } else { "ies" },
        human_bytes(bytes)
    ));
    out
}

/// Removes what `plan` names, manifests first; prints what went. Returns whether anything
/// could not be removed (each named).
fn execute(dir: &Path, plan: &Plan) -> anyhow::Result<bool> {
    for d in &plan.drops {
        let m = &d.manifest;
        manifest::publish(dir, m)
            .with_context(|| format!("cannot republish epoch {}'s manifest", m.epoch))?;
    }
    // Manifests left with no level, newer than the oldest kept epoch.
    for &e in plan.epochs.iter().filter(|&&e| e >= plan.keep_from) {
        manifest::remove(dir, e).with_context(|| format!("cannot remove epoch {e}'s manifest"))?;
    }
    manifest::prune(dir, plan.keep_from)
        .with_context(|| format!("cannot prune the manifests in {}", dir.display()))?;
    let mut failed = false;
    for d in &plan.dirs {
        for (f, _) in &d.files {
            match fs::remove_file(f) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    outln!("cannot remove {}: {e}", f.display());
                    failed = true;
                }
                _ => {}
            }
        }
        match fs::remove_dir(&d.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                outln!("cannot remove {}: {e}", d.dir.display());
                failed = true;
            }
            _ => {}
        }
    }
    show(plan, "removed");
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;
    use Level::{Partner, Pfs};

    fn args(dir: &Path, keep: u32, dry_run: bool) -> PruneArgs {
        PruneArgs {
            job_dir: dir.to_path_buf(),
            keep,
            keep_l2: None,
            keep_l3: None,
            keep_l4: None,
            dry_run,
            local_dir: None,
            shared_dir: None,
        }
    }

    /// `n` epochs kept at every level.
    fn keep(n: usize) -> Keep {
        Keep {
            local: n,
            partner: n,
            parity: n,
            shared: n,
        }
    }

    /// Every file under `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    /// Epochs 1, 3, 4 and 5 committed with L1, L2 and L4 copies; 2 quarantined; an
    /// uncommitted epoch 6's L1 files; a temporary file and a link in epoch 1, a link posing
    /// as epoch 0's directory.
    fn job() -> (tempfile::TempDir, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for e in 1..=5 {
            let mut m = testutil::manifest_v2(e, 4, 2, &[Partner, Pfs], &[Partner, Pfs]);
            testutil::write_epoch(d, &mut m);
        }
        let q = manifest::Quarantine {
            epoch: 2,
            unix_ms: 1,
            launch: 1,
            reasons: vec!["rank 1: bad".into()],
        };
        manifest::quarantine(d, &q).unwrap();
        let node0 = d.join("local/node0/job");
        fs::create_dir_all(node0.join("epoch-00000006")).unwrap();
        fs::write(node0.join("epoch-00000006/rank-000000.ckpt"), b"new").unwrap();
        fs::write(
            node0.join("epoch-00000001/rank-000000.ckpt.0123456789abcdef.tmp"),
            b"t",
        )
        .unwrap();
        let victim = tempfile::tempdir().unwrap();
        fs::write(victim.path().join("precious"), b"keep me").unwrap();
        std::os::unix::fs::symlink(
            victim.path().join("precious"),
            node0.join("epoch-00000001/rank-000009.ckpt"),
        )
        .unwrap();
        std::os::unix::fs::symlink(victim.path(), node0.join("epoch-00000000")).unwrap();
        (dir, victim)
    }

    #[test]
    fn old_epochs_go_at_every_level_manifests_first() {
        let (dir, victim) = job();
        let d = dir.path();
        let before = tree(d);
        // A dry run removes nothing and says what would go.
        let at = locate(d, &args(d, 2, true));
        let p = plan(d, &at, &keep(2)).unwrap();
        assert_eq!(
            (p.kept.clone(), p.epochs.clone(), p.keep_from),
            (vec![5, 4], vec![1, 2, 3], 4)
        );
        let said: Vec<String> = lines(&p, "would remove")
            .iter()
            .map(|l| l.replace(&d.display().to_string(), "D"))
            .collect();
        // 4 records, 3 epochs x (L1 and L2 on 2 nodes, L4), the total.
        assert_eq!(said.len(), 4 + 3 * 5 + 1, "{said:#?}");
        assert_eq!(
            &said[..5],
            [
                "would remove D/manifests/epoch-00000001.manifest",
                "would remove D/manifests/epoch-00000002.manifest",
                "would remove D/manifests/epoch-00000002.quarantined",
                "would remove D/manifests/epoch-00000003.manifest",
                "would remove L1 epoch 1 D/local/node0/job/epoch-00000001 (4 files, 27.6 KiB)",
            ]
        );
        for line in [
            "would remove L2 epoch 3 D/local/node1/job/partner/epoch-00000003 (2 files, 27.6 KiB)",
            "would remove L4 epoch 2 D/shared/job/epoch-00000002 (4 files, 55.2 KiB)",
        ] {
            assert!(said.contains(&line.to_owned()), "{line}: {said:#?}");
        }
        assert_eq!(
            said.last().unwrap(),
            "would prune: 4 manifests or records, 38 files in 15 epoch directories, 496.6 KiB"
        );
        assert_eq!(run(&args(d, 2, true)).unwrap(), Outcome::Success);
        assert_eq!(tree(d), before, "a dry run removes nothing");

        assert_eq!(run(&args(d, 2, false)).unwrap(), Outcome::Success);
        let after = tree(d);
        let epoch = |e: u64| format!("epoch-{e:08}");
        for e in [1, 2, 3] {
            assert!(
                !after.iter().any(|f| f.contains(&epoch(e))),
                "epoch {e}: {after:#?}"
            );
        }
        for e in [4, 5] {
            for l in [
                "local/node0/job/",
                "local/node1/job/partner/",
                "shared/job/",
            ] {
                let n = after
                    .iter()
                    .filter(|f| f.starts_with(&format!("{l}{}", epoch(e))));
                assert_eq!(n.count(), 2 + 2 * (l == "shared/job/") as usize, "{l} {e}");
            }
        }
        assert!(after.contains(&"local/node0/job/epoch-00000006/rank-000000.ckpt".to_owned()));
        assert_eq!(manifest::committed(d).unwrap(), [5, 4]);
        assert!(manifest::quarantined(d).unwrap().is_empty());
        // Links were removed or left, never followed.
        assert_eq!(
            fs::read(victim.path().join("precious")).unwrap(),
            b"keep me"
        );
        assert!(fs::symlink_metadata(d.join("local/node0/job/epoch-00000000")).is_ok());
        // Nothing more to do.
        assert_eq!(run(&args(d, 2, false)).unwrap(), Outcome::Success);
        assert_eq!(tree(d), after);
        assert_eq!(plan(d, &at, &keep(2)).unwrap().dirs, []);
    }

    #[test]
    fn a_running_job_is_refused() {
        let (dir, _victim) = job();
        let d = dir.path();
        let held = lock::take_run(d, 1_776_693_792_000).unwrap();
        let before = tree(d);
        for dry_run in [false, true] {
            let e = run(&args(d, 1, dry_run)).unwrap_err();
            assert!(e.downcast_ref::<UsageError>().is_some());
            let e = e.to_string();
            let want = format!(
                "refusing to prune {}: a `ckpt run` holds it (pid ",
                d.display()
            );
            assert!(
                e.starts_with(&want) && e.ends_with("prune once it has ended"),
                "{e}"
            );
        }
        assert_eq!(tree(d), before);
        drop(held);
        let e = run(&args(d, 0, false)).unwrap_err().to_string();
        assert_eq!(e, "--keep 0: at least one committed epoch must be kept");
        assert_eq!(run(&args(d, 1, false)).unwrap(), Outcome::Success);
        assert_eq!(manifest::committed(d).unwrap(), [5]);
    }

    /// Each level keeps its own epochs: with `--keep 2 --keep-l3 1 --keep-l4 3` over epochs 1
    /// to 5 (L1, L3 and L4 each), epoch 3 keeps only L4 and 4 drops L3 (their manifests
    /// republished first), 1 and 2 go entirely, and each level's files go below its own
    /// threshold: L1 below 4, L3's parity directories below 5, L4 below 3.
    #[test]
    fn each_level_keeps_its_own_epochs_and_l3_parity_goes_with_its_epochs() {
        use Level::{Local, Parity};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for e in 1..=5 {
            let mut m = testutil::manifest_v2(e, 4, 4, &[Parity, Pfs], &[Pfs]);
            testutil::write_epoch(d, &mut m);
            testutil::write_parity(d, &mut m, &[vec![0, 1, 2, 3]], 1);
        }
        let mut a = args(d, 2, true);
        (a.keep_l3, a.keep_l4) = (Some(1), Some(3));
        let at = locate(d, &a);
        let p = plan(d, &at, &keep_of(&a).unwrap()).unwrap();
        assert_eq!(
            (p.kept.clone(), p.epochs.clone(), p.keep_from),
            (vec![5, 4, 3], vec![1, 2], 3)
        );
        assert_eq!(
            level_note(&p),
            "; L1 files older than epoch 4, L3 files older than epoch 5"
        );
        let said: Vec<String> = lines(&p, "would remove")
            .iter()
            .map(|l| l.replace(&d.display().to_string(), "D"))
            .collect();
        assert_eq!(
            &said[..4],
            [
                "would remove D/manifests/epoch-00000001.manifest",
                "would remove D/manifests/epoch-00000002.manifest",
                "would drop L1 L3 from epoch 3's manifest (keeping L4)",
                "would drop L3 from epoch 4's manifest (keeping L1 L4)",
            ]
        );
        for line in [
            "would remove L3 epoch 4 D/local/node2/job/parity/epoch-00000004 (1 file, 4.7 KiB)",
            "would remove L1 epoch 3 D/local/node0/job/epoch-00000003 (1 file, 13.8 KiB)",
            "would remove L4 epoch 2 D/shared/job/epoch-00000002 (4 files, 55.2 KiB)",
        ] {
            assert!(said.contains(&line.to_owned()), "{line}: {said:#?}");
        }
        assert!(!said.iter().any(|l| l.contains("L4 epoch 3")), "{said:#?}");
        assert!(
            !said.iter().any(|l| l.contains("parity/epoch-00000005")),
            "{said:#?}"
        );

        a.dry_run = false;
        assert_eq!(run(&a).unwrap(), Outcome::Success);
        assert_eq!(manifest::committed(d).unwrap(), [5, 4, 3]);
        let levels = |e| manifest::load(d, e).unwrap().levels;
        assert_eq!(levels(5), [Local, Pfs, Parity]);
        assert_eq!(levels(4), [Local, Pfs]);
        assert_eq!(levels(3), [Pfs]);
        let after = tree(d);
        let has = |prefix: &str| after.iter().any(|f| f.starts_with(prefix));
        for node in 0..4 {
            let base = format!("local/node{node}/job/");
            assert!(!has(&format!("{base}epoch-00000003")), "{after:#?}");
            assert!(has(&format!("{base}epoch-00000004")), "{after:#?}");
            assert!(!has(&format!("{base}parity/epoch-00000004")), "{after:#?}");
            assert!(has(&format!("{base}parity/epoch-00000005")), "{after:#?}");
        }
        assert!(!has("shared/job/epoch-00000002") && has("shared/job/epoch-00000003"));
        // Verify agrees: every kept epoch is whole at the levels it records.
        let out = crate::verify::run(d, None, None, false).unwrap();
        assert_eq!(out, Outcome::Success);
        let e = run(&PruneArgs {
            keep_l4: Some(0),
            ..args(d, 1, false)
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--keep-l4 0: at least one committed epoch must be kept at L4"
        );
    }

    /// L3 is dropped with L1 (parity without the members' L1 files rebuilds nothing), and its
    /// parity files go with it even where its own window would keep them: `--keep 1 --keep-l3
    /// 2 --keep-l4 3` leaves epoch 4 at L4 only, without parity files.
    #[test]
    fn l3_goes_with_l1() {
        use Level::{Local, Parity};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for e in 3..=5 {
            let mut m = testutil::manifest_v2(e, 4, 4, &[Parity, Pfs], &[Pfs]);
            testutil::write_epoch(d, &mut m);
            testutil::write_parity(d, &mut m, &[vec![0, 1, 2, 3]], 1);
        }
        let mut a = args(d, 1, false);
        (a.keep_l3, a.keep_l4) = (Some(2), Some(3));
        assert_eq!(run(&a).unwrap(), Outcome::Success);
        let levels = |e| manifest::load(d, e).unwrap().levels;
        assert_eq!(levels(5), [Local, Pfs, Parity]);
        assert_eq!(levels(4), [Pfs]);
        assert_eq!(levels(3), [Pfs]);
        let after = tree(d);
        assert!(
            !after.iter().any(|f| f.contains("parity/epoch-00000004")),
            "{after:#?}"
        );
        assert!(after.iter().any(|f| f.contains("parity/epoch-00000005")));
    }
}
