//! `ckpt drill`: a fault-tolerance drill as one command. It runs the program once without
//! faults (or takes the reference result from `--reference-line`), then `--runs` times with
//! faults drawn from `--faults` by a seeded generator, each in a fresh job directory under
//! `--drill-dir`, and compares each run's result with the reference. It prints a table (or
//! JSON) of the faults, restarts, recovery levels, time lost and whether the result is
//! identical, and exits 1 if any run differs, fails or hangs.
//!
//! [`DrillPlan`] validates the flags (pure); [`schedule`] draws the faults (pure); [`job`]
//! runs one `ckpt run` and injects the faults from outside.

pub mod job;
pub mod schedule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ckpt::events::Event;
use ckpt::Level;
use serde::Serialize;

use crate::cli::DrillArgs;
use crate::{clock, report, Outcome, UsageError};
use job::{End, Finished, Job};
use schedule::{Fault, FaultKind, Shape};

/// Most bytes of a `--result-file` read.
const RESULT_FILE_CAP: u64 = 16 << 20;

/// A validated drill.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillPlan {
    /// Ranks.
    pub ranks: u32,
    /// Emulated nodes.
    pub nodes: Option<u32>,
    /// Faulty runs.
    pub runs: u32,
    /// Seed of the fault draw.
    pub seed: u64,
    /// Fault kinds to draw from.
    pub kinds: Vec<FaultKind>,
    /// Faults per run.
    pub per_run: u32,
    /// Result line prefixes, in order.
    pub result_lines: Vec<String>,
    /// A file the program writes as its result.
    pub result_file: Option<PathBuf>,
    /// The reference result given instead of a reference run (values after the prefixes).
    pub reference: Option<Vec<String>>,
    /// `--every` for the faulty runs.
    pub every: Option<String>,
    /// JSON instead of the table.
    pub json: bool,
    /// Per-run deadline.
    pub timeout: Duration,
    /// Where the runs' job directories go (absolute).
    pub dir: PathBuf,
    /// The program and its arguments.
    pub command: Vec<String>,
}

impl DrillPlan {
    /// Validates `args`; `cwd`, `now_unix_s` and `random_seed` make the defaults.
    pub fn new(
        args: DrillArgs,
        cwd: &Path,
        now_unix_s: u64,
        random_seed: u64,
    ) -> Result<DrillPlan, UsageError> {
        let bad = |m: String| Err(UsageError(m));
        if args.ranks == 0 {
            return bad("-n 0: a drill needs at least one rank".into());
        }
        if let Some(k) = args.emulate_nodes {
            if k == 0 || k > args.ranks {
                return bad(format!(
                    "--emulate-nodes {k}: must be between 1 and the rank count ({})",
                    args.ranks
                ));
            }
        }
        if !(1..=1000).contains(&args.runs) {
            return bad(format!("--runs {}: must be between 1 and 1000", args.runs));
        }
        if !(1..=10).contains(&args.faults_per_run) {
            return bad(format!(
                "--faults-per-run {}: must be between 1 and 10",
                args.faults_per_run
            ));
        }
        if args.timeout == 0 {
            return bad("--timeout 0: give the seconds a run may take".into());
        }
        let kinds = FaultKind::parse_list(&args.faults).map_err(UsageError)?;
        if kinds.contains(&FaultKind::KillNode) && args.emulate_nodes.unwrap_or(1) < 2 {
            return bad(
                "--faults kill-node: needs --emulate-nodes 2 or more (a job on one node does \
                 not survive losing it)"
                    .into(),
            );
        }
        if kinds.contains(&FaultKind::Migrate) && args.emulate_nodes.unwrap_or(1) < 2 {
            return bad(
                "--faults migrate: needs --emulate-nodes 2 or more (a rank moves to another \
                 emulated node)"
                    .into(),
            );
        }
        if args.faults_per_run > 1 && kinds == [FaultKind::Phase] {
            return bad(format!(
                "--faults-per-run {} with only phase faults: a run takes one --fault; add \
                 kill-rank or kill-node",
                args.faults_per_run
            ));
        }
        if args.result_lines.is_empty() && args.result_file.is_none() {
            return bad(
                "no result to compare: give --result-line PREFIX (e.g. \"checksum: \") or \
                 --result-file PATH"
                    .into(),
            );
        }
        if let Some(p) = args.result_lines.iter().find(|p| p.is_empty()) {
            return bad(format!(
                "--result-line {p:?}: an empty prefix matches every line"
            ));
        }
        let reference = if args.reference_lines.is_empty() {
            None
        } else if args.result_file.is_some() {
            return bad(
                "--reference-line with --result-file: the file's reference needs a reference \
                 run (leave out --reference-line)"
                    .into(),
            );
        } else if args.reference_lines.len() != args.result_lines.len() {
            return bad(format!(
                "--reference-line given {} times for {} --result-line: one value per prefix",
                args.reference_lines.len(),
                args.result_lines.len()
            ));
        } else {
            Some(args.reference_lines)
        };
        if args.every.as_deref() == Some("off") {
            return bad("--every off: the faulty runs must checkpoint to recover".into());
        }
        let Some(prog) = args.command.first() else {
            return bad("no program given: ckpt drill [OPTIONS] -n N -- PROG [ARGS]".into());
        };
        let dir = match &args.drill_dir {
            Some(d) => cwd.join(d),
            None => {
                let base = Path::new(prog).file_name().unwrap_or_default();
                cwd.join("ckpt-drills").join(format!(
                    "{}-{}",
                    base.to_string_lossy(),
                    clock::stamp(now_unix_s)
                ))
            }
        };
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            return bad(format!(
                "--drill-dir {}: exists and is not empty; each drill starts its runs in fresh \
                 job directories",
                dir.display()
            ));
        }
        Ok(DrillPlan {
            ranks: args.ranks,
            nodes: args.emulate_nodes,
            runs: args.runs,
            seed: args.seed.unwrap_or(random_seed),
            kinds,
            per_run: args.faults_per_run,
            result_lines: args.result_lines,
            result_file: args.result_file.map(|f| cwd.join(f)),
            reference,
            every: args.every,
            json: args.json,
            timeout: Duration::from_secs(args.timeout),
            dir,
            command: args.command,
        })
    }

    /// `ckpt run` flags shared by every job of the drill.
    fn run_flags(&self, every: Option<&str>, max_restarts: usize) -> Vec<String> {
        let mut f = vec!["-n".to_string(), self.ranks.to_string()];
        if let Some(k) = self.nodes {
            f.extend(["--emulate-nodes".into(), k.to_string()]);
        }
        if let Some(e) = every {
            f.extend(["--every".into(), e.to_string()]);
        }
        f.extend(["--max-restarts".into(), max_restarts.to_string()]);
        f
    }

    /// What the fault draw needs; timed faults fall within half the reference run's time.
    fn shape(&self, reference_secs: Option<f64>) -> Shape {
        Shape {
            ranks: self.ranks,
            nodes: self.nodes,
            every_polls: self.every.as_deref().and_then(|e| e.parse().ok()),
            window_ms: reference_secs.map_or(1000, |s| ((s * 500.0) as u64).max(1)),
        }
    }
}

/// How a faulty run turned out.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Run number, from 1.
    pub run: u32,
    /// Its faults as the table shows them.
    pub faults: Vec<String>,
    /// For each fault injected from outside, whether it hit (a rank killed); phase faults
    /// fire inside the job (`null`).
    pub fired: Vec<Option<bool>>,
    /// `identical`, `differs`, `no result`, `failed (exit N)` or `hung`.
    pub status: String,
    /// Whether the result equals the reference.
    pub identical: bool,
    /// Relaunches (launches after the first).
    pub restarts: u32,
    /// Ranks recovered from another level, per level (`L2`: [2, 3]); empty: all from L1.
    pub recovered: BTreeMap<String, Vec<u32>>,
    /// Wall time of the run.
    pub secs: f64,
    /// Wall time minus the reference run's, when there was one.
    pub lost_secs: Option<f64>,
    /// Its job directory.
    pub job_dir: PathBuf,
}

/// The whole drill, as `--json` prints it.
#[derive(Debug, Serialize)]
struct DrillReport<'a> {
    seed: u64,
    reference_secs: Option<f64>,
    reference: &'a [String],
    runs: &'a [RunReport],
    ok: bool,
}

/// Runs `ckpt drill`.
pub fn run(args: DrillArgs) -> anyhow::Result<Outcome> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = ckpt::identity::new_id().context("cannot draw a seed")?;
    let random_seed = u64::from_str_radix(&id[..16], 16).unwrap_or(now);
    let plan = DrillPlan::new(args, &cwd, now, random_seed)?;
    // SIGINT/SIGTERM end the job under way (in its own process group) before the drill.
    crate::signals::install(None, None).context("cannot install signal handlers")?;
    ckpt::storage::durable::create_dir_all(&plan.dir)
        .with_context(|| format!("cannot create {}", plan.dir.display()))?;
    report::say(format!(
        "drill of {} runs in {} (seed {}; replay with --seed {})",
        plan.runs,
        plan.dir.display(),
        plan.seed,
        plan.seed
    ));

    let (reference, reference_secs) = reference(&plan)?;
    let schedule = schedule::draw(
        plan.seed,
        plan.runs,
        plan.per_run,
        &plan.kinds,
        &plan.shape(reference_secs),
    );
    let mut reports = Vec::new();
    for (i, faults) in schedule.iter().enumerate() {
        let (r, end) = faulty_run(&plan, i as u32 + 1, faults, &reference, reference_secs)?;
        if let End::Interrupted(sig) = end {
            report::say(format!(
                "drill interrupted by {} during run {}; its job was killed",
                crate::signals::name(sig),
                r.run
            ));
            return Ok(Outcome::Interrupted(sig));
        }
        report::say(format!(
            "run {}/{}: {}: {}",
            r.run,
            plan.runs,
            r.faults.join(", "),
            r.status
        ));
        reports.push(r);
    }
    let ok = reports.iter().all(|r| r.identical);
    if plan.json {
        let shown: Vec<String> = reference.iter().map(|r| lossy(r)).collect();
        let out = DrillReport {
            seed: plan.seed,
            reference_secs,
            reference: &shown,
            runs: &reports,
            ok,
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for line in table(&reports) {
            outln!("{line}");
        }
        let bad = reports.iter().filter(|r| !r.identical).count();
        outln!(
            "seed {}: {} of {} runs identical{}",
            plan.seed,
            reports.len() - bad,
            reports.len(),
            if bad > 0 { " (exit 1)" } else { "" }
        );
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::JobFailed
    })
}

/// The reference result and, when measured, the reference run's time.
fn reference(plan: &DrillPlan) -> anyhow::Result<(Vec<Vec<u8>>, Option<f64>)> {
    if let Some(values) = &plan.reference {
        return Ok((values.iter().map(|v| v.as_bytes().to_vec()).collect(), None));
    }
    let dir = plan.dir.join("reference");
    report::say(format!(
        "reference run (no checkpoints) in {}",
        dir.display()
    ));
    clear_result_file(plan)?;
    let job = Job::start(&dir, &plan.run_flags(Some("off"), 0), &plan.command)?;
    let done = job.finish(plan.timeout);
    if let End::Interrupted(sig) = done.end {
        return Err(anyhow::anyhow!(
            "interrupted by {} during the reference run; its job was killed",
            crate::signals::name(sig)
        ));
    }
    if done.end != End::Exited(Some(0)) {
        anyhow::bail!(
            "the reference run {}: {}\n{}",
            end_text(&done.end, plan.timeout),
            dir.display(),
            tail(&done.stderr, 15)
        );
    }
    let result = result_of(plan, &done.stdout)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the reference run printed no result ({}); its output:\n{}",
            wanted(plan),
            tail(&done.stdout, 15)
        )
    })?;
    report::say(format!(
        "reference: {} in {}",
        result
            .iter()
            .map(|r| lossy(r))
            .collect::<Vec<_>>()
            .join(" | "),
        report::secs(done.secs)
    ));
    Ok((result, Some(done.secs)))
}

/// One faulty run.
fn faulty_run(
    plan: &DrillPlan,
    n: u32,
    faults: &[Fault],
    reference: &[Vec<u8>],
    reference_secs: Option<f64>,
) -> anyhow::Result<(RunReport, End)> {
    let dir = plan.dir.join(format!("run-{n:03}"));
    let mut flags = plan.run_flags(plan.every.as_deref(), faults.len() + 2);
    if let Some(f) = faults.iter().find_map(Fault::fault_flag) {
        flags.extend(["--fault".into(), f]);
    }
    clear_result_file(plan)?;
    let mut job = Job::start(&dir, &flags, &plan.command)?;
    let mut fired = Vec::new();
    let mut mark = 0;
    for f in faults {
        if f.timed().is_none() {
            fired.push(None);
            continue;
        }
        match job.inject(f, mark, plan.timeout) {
            Some((hit, next)) => {
                fired.push(Some(hit));
                mark = next;
            }
            None => fired.push(Some(false)),
        }
    }
    let done = job.finish(plan.timeout);
    let result = match &done.end {
        End::Exited(Some(0)) => result_of(plan, &done.stdout)?,
        _ => None,
    };
    let identical = result.as_deref() == Some(reference);
    let status = match (&done.end, &result) {
        (End::Exited(Some(0)), Some(_)) if identical => "identical".to_string(),
        (End::Exited(Some(0)), Some(_)) => "differs".to_string(),
        (End::Exited(Some(0)), None) => "no result".to_string(),
        (end, _) => end_text(end, plan.timeout),
    };
    if !identical {
        report::say(format!(
            "run {n}: {status}; see {} ({})",
            dir.display(),
            report::LOG_FILE
        ));
    }
    let events = job::events(&dir);
    let report = RunReport {
        run: n,
        faults: faults.iter().map(ToString::to_string).collect(),
        fired,
        status,
        identical,
        restarts: restarts(&events),
        recovered: recovered(&events),
        secs: done.secs,
        lost_secs: reference_secs.map(|r| done.secs - r),
        job_dir: dir,
    };
    keep_output(&report, &done);
    Ok((report, done.end))
}

/// Keeps what a run that went wrong printed, beside its job directory (`run-NNN.stdout`).
fn keep_output(r: &RunReport, done: &Finished) {
    if !r.identical {
        let path = r.job_dir.with_extension("stdout");
        let _ = ckpt::storage::durable::write_atomic(&path, done.stdout.as_bytes());
    }
}

fn end_text(end: &End, timeout: Duration) -> String {
    match end {
        End::Exited(Some(c)) => format!("failed (exit {c})"),
        End::Exited(None) => "failed (killed by a signal)".into(),
        End::Hung => format!("hung (killed after {} s)", timeout.as_secs()),
        End::Interrupted(sig) => format!("interrupted by {}", crate::signals::name(*sig)),
    }
}

/// The result of a run: the value after each prefix on the last line starting with it, then
/// the result file's bytes. `None` if a prefix matched no line or the file is missing.
fn result_of(plan: &DrillPlan, stdout: &str) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
    let Some(mut values) = result_lines(stdout, &plan.result_lines) else {
        return Ok(None);
    };
    if let Some(path) = &plan.result_file {
        match ckpt::storage::durable::read_capped(path, RESULT_FILE_CAP) {
            Ok(bytes) => values.push(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read result file {}", path.display()))
            }
        }
    }
    Ok(Some(values))
}

/// For each prefix, what follows it on the last line of `stdout` that starts with it.
pub fn result_lines(stdout: &str, prefixes: &[String]) -> Option<Vec<Vec<u8>>> {
    prefixes
        .iter()
        .map(|p| {
            stdout
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix(p.as_str()))
                .map(|v| v.trim_end().as_bytes().to_vec())
        })
        .collect()
}

/// Removes the result file before a run, so a run that writes none is not credited with the
/// previous one's.
fn clear_result_file(plan: &DrillPlan) -> anyhow::Result<()> {
    match &plan.result_file {
        Some(p) => match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove result file {}", p.display()))
            }
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

fn wanted(plan: &DrillPlan) -> String {
    let mut w: Vec<String> = plan
        .result_lines
        .iter()
        .map(|p| format!("a line starting with {p:?}"))
        .collect();
    if let Some(f) = &plan.result_file {
        w.push(format!("the file {}", f.display()));
    }
    w.join(", ")
}

/// Relaunches: launches after the first.
pub fn restarts(events: &[Event]) -> u32 {
    let started = events
        .iter()
        .filter(|e| matches!(e, Event::Started { .. }))
        .count() as u32;
    started.saturating_sub(1)
}

/// Ranks recovered from a level other than L1, by level.
pub fn recovered(events: &[Event]) -> BTreeMap<String, Vec<u32>> {
    let mut by: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in events {
        if let Event::Recovered { rank, level, .. } = e {
            let ranks = by.entry(report::level(*level).to_string()).or_default();
            if !ranks.contains(rank) {
                ranks.push(*rank);
                ranks.sort_unstable();
            }
        }
    }
    by
}

/// `L1`, or `L2: 2,3; L4: 5`.
fn levels_text(by: &BTreeMap<String, Vec<u32>>) -> String {
    if by.is_empty() {
        return report::level(Level::Local).to_string();
    }
    by.iter()
        .map(|(l, ranks)| {
            let r: Vec<String> = ranks.iter().map(u32::to_string).collect();
            format!("{l}: {}", r.join(","))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The table: a header and one line per run.
pub fn table(reports: &[RunReport]) -> Vec<String> {
    let head = [
        "run",
        "faults",
        "restarts",
        "levels",
        "time lost",
        "identical",
    ];
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            let faults: Vec<String> = r
                .faults
                .iter()
                .zip(&r.fired)
                .map(|(f, fired)| match fired {
                    Some(false) => format!("{f} (missed)"),
                    _ => f.clone(),
                })
                .collect();
            [
                r.run.to_string(),
                faults.join(", "),
                r.restarts.to_string(),
                levels_text(&r.recovered),
                r.lost_secs.map_or("-".into(), |s| format!("{s:+.2} s")),
                if r.identical {
                    "yes".into()
                } else {
                    format!("NO: {}", r.status)
                },
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    std::iter::once(line(head))
        .chain(rows.iter().map(|r| line(r.each_ref().map(String::as_str))))
        .collect()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    fn args(line: &str) -> DrillArgs {
        let argv = std::iter::once("ckpt drill")
            .chain(line.split(' '))
            .flat_map(|w| w.split_once(' ').map_or(vec![w], |(a, b)| vec![a, b]));
        match parse(argv.map(Into::into)) {
            Ok(cli) => match cli.command {
                Command::Drill(a) => a,
                other => panic!("{other:?}"),
            },
            Err(e) => panic!("{line}: {e}"),
        }
    }

    fn plan(line: &str) -> Result<DrillPlan, String> {
        DrillPlan::new(args(line), Path::new("/w"), 0, 99).map_err(|e| e.0)
    }

    const PROG: &str = "-- ./heat2d --steps 10";

    #[test]
    fn a_full_drill_line_parses_into_its_plan() {
        let p = plan(&format!(
            "-n 8 --emulate-nodes 4 --runs 10 --seed 7 --faults kill-rank,kill-node,phase \
             --result-line checksum: --every 40 --json --timeout 300 --drill-dir d {PROG}"
        ))
        .unwrap();
        assert_eq!((p.ranks, p.nodes, p.runs, p.seed), (8, Some(4), 10, 7));
        assert_eq!(p.kinds.len(), 3);
        assert_eq!(p.result_lines, ["checksum:"]);
        assert_eq!(p.every.as_deref(), Some("40"));
        assert!(p.json && p.reference.is_none());
        assert_eq!(p.timeout, Duration::from_secs(300));
        assert_eq!(p.dir, Path::new("/w/d"));
        assert_eq!(p.command, ["./heat2d", "--steps", "10"]);
        assert_eq!(
            p.run_flags(Some("off"), 0),
            [
                "-n",
                "8",
                "--emulate-nodes",
                "4",
                "--every",
                "off",
                "--max-restarts",
                "0"
            ]
        );
    }

    #[test]
    fn defaults_seed_dir_and_reference_lines() {
        let p = plan(&format!("-n 2 --result-line x= {PROG}")).unwrap();
        assert_eq!((p.runs, p.seed, p.per_run), (10, 99, 1));
        assert_eq!(p.kinds, [FaultKind::KillRank]);
        assert_eq!(p.dir, Path::new("/w/ckpt-drills/heat2d-19700101-000000"));
        let p = plan(&format!(
            "-n 2 --result-line a= --result-line b= --reference-line 1 --reference-line 2 {PROG}"
        ))
        .unwrap();
        assert_eq!(p.reference, Some(vec!["1".to_string(), "2".to_string()]));
    }

    #[test]
    fn bad_drills_are_refused_naming_the_flag() {
        for (line, says) in [
            ("-n 0 --result-line x", "-n 0"),
            (
                "-n 4 --emulate-nodes 5 --result-line x",
                "--emulate-nodes 5",
            ),
            ("-n 4 --runs 0 --result-line x", "--runs 0"),
            (
                "-n 4 --faults-per-run 0 --result-line x",
                "--faults-per-run 0",
            ),
            ("-n 4 --timeout 0 --result-line x", "--timeout 0"),
            (
                "-n 4 --faults kill-node --result-line x",
                "needs --emulate-nodes 2",
            ),
            (
                "-n 4 --emulate-nodes 1 --faults kill-node --result-line x",
                "needs --emulate-nodes 2",
            ),
            (
                "-n 4 --faults kill-rank,bogus --result-line x",
                "bogus: unknown fault",
            ),
            (
                "-n 4 --faults migrate --result-line x",
                "--faults migrate: needs --emulate-nodes 2 or more",
            ),
            (
                "-n 4 --faults phase --faults-per-run 2 --result-line x",
                "one --fault",
            ),
            ("-n 4", "no result to compare"),
            (
                "-n 4 --result-line x --reference-line 1 --reference-line 2",
                "one value per prefix",
            ),
            (
                "-n 4 --result-line x --result-file f --reference-line 1",
                "--reference-line with --result-file",
            ),
            ("-n 4 --result-line x --every off", "--every off"),
        ] {
            let e = plan(&format!("{line} {PROG}")).unwrap_err();
            assert!(e.contains(says), "{line}: {e}");
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("old"), b"").unwrap();
        let line = format!(
            "-n 2 --result-line x --drill-dir {} {PROG}",
            tmp.path().display()
        );
        assert!(plan(&line).unwrap_err().contains("is not empty"));
    }

    #[test]
    fn clap_refuses_missing_ranks_and_program() {
        for line in [
            "ckpt drill --result-line x -- p",
            "ckpt drill -n 2 --result-line x",
        ] {
            let e = parse(line.split(' ').map(Into::into)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{line}: {e}");
        }
    }

    #[test]
    fn results_are_the_last_lines_after_each_prefix() {
        let out = "checksum: 1\nrank 0: a\nchecksum: 2  \nrank 1: b\n";
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            result_lines(out, &p(&["checksum: ", "rank 1: ", "rank 0: "])),
            Some(vec![b"2".to_vec(), b"b".to_vec(), b"a".to_vec()])
        );
        assert_eq!(result_lines(out, &p(&["checksum: ", "rank 2: "])), None);
    }

    #[test]
    fn a_result_file_is_read_after_the_lines_and_cleared_before_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let line = format!("-n 2 --result-line c= --result-file out.txt {PROG}");
        let mut p = DrillPlan::new(args(&line), tmp.path(), 0, 1).unwrap();
        assert_eq!(
            p.result_file.as_deref(),
            Some(tmp.path().join("out.txt").as_path())
        );
        assert_eq!(result_of(&p, "c=1\n").unwrap(), None, "no file yet");
        std::fs::write(tmp.path().join("out.txt"), b"state").unwrap();
        assert_eq!(
            result_of(&p, "c=1\n").unwrap(),
            Some(vec![b"1".to_vec(), b"state".to_vec()])
        );
        assert_eq!(result_of(&p, "other\n").unwrap(), None, "no line");
        clear_result_file(&p).unwrap();
        assert!(!tmp.path().join("out.txt").exists());
        clear_result_file(&p).unwrap();
        // A link is not read through.
        std::os::unix::fs::symlink("/etc/hostname", tmp.path().join("out.txt")).unwrap();
        assert!(result_of(&p, "c=1\n").is_err());
        p.result_lines.clear();
        clear_result_file(&p).unwrap();
        assert!(tmp.path().join("out.txt").symlink_metadata().is_err());
    }

    #[test]
    fn events_give_restarts_and_levels_and_the_table_shows_them() {
        let rec = |rank, level| Event::Recovered {
            epoch: 2,
            rank,
            node: "node1".into(),
            level,
            bytes: 1,
            secs: 0.0,
        };
        let ev = [
            Event::Started {
                nranks: 8,
                launch: 0,
                unix_ms: 0,
            },
            Event::Started {
                nranks: 8,
                launch: 1,
                unix_ms: 0,
            },
            rec(3, Level::Partner),
            rec(2, Level::Partner),
            rec(5, Level::Pfs),
            rec(3, Level::Partner),
        ];
        assert_eq!(restarts(&ev), 1);
        assert_eq!(restarts(&[]), 0);
        let by = recovered(&ev);
        assert_eq!(levels_text(&by), "L2: 2,3; L4: 5");
        assert_eq!(levels_text(&BTreeMap::new()), "L1");
        let row = |run, identical, status: &str, fired| RunReport {
            run,
            faults: vec!["kill-node node1 +5ms".into(), "phase 1:drain:1".into()],
            fired: vec![Some(fired), None],
            status: status.into(),
            identical,
            restarts: 2,
            recovered: by.clone(),
            secs: 3.0,
            lost_secs: Some(1.25),
            job_dir: "/d".into(),
        };
        let t = table(&[
            row(1, true, "identical", true),
            row(2, false, "hung (killed after 9 s)", false),
        ]);
        assert_eq!(t.len(), 3);
        assert!(t[0].starts_with("run  faults"), "{t:?}");
        let cells = |l: &str| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(&t[1]),
            [
                "1",
                "kill-node node1 +5ms, phase 1:drain:1",
                "2",
                "L2: 2,3; L4: 5",
                "+1.25 s",
                "yes"
            ]
        );
        assert!(t[2].contains("node1 +5ms (missed)"), "{t:?}");
        assert!(t[2].ends_with("NO: hung (killed after 9 s)"), "{t:?}");
    }
}
