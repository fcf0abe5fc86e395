//! `ckpt bench`: runs the `ckpt-bench` rank program (built next to `ckpt`, from `examples/`)
//! as ordinary `ckpt run` jobs with checkpoints off and no restarts. The figures and what
//! they are compared with are described in `examples/bench.rs` and `BENCHMARKS.md`.
//!
//! `--levels` runs the levels benchmark on one emulated node per rank, as separate launches:
//! the blocking and completion times of each level policy (one launch, which leaves an epoch
//! at L1 and L2); a job `<job>-l3` (L2 off, L3 over one XOR group of all ranks) and a job
//! `<job>-l4` (L2 off, L4) that write one epoch each; then `--reps` cold restarts of each
//! kind (see [`RESTARTS`]): the first job from its own L1 files, then, each after `node1` was
//! wiped, the first job from L2, the `-l3` job from a rebuild (L3) and the `-l4` job from L4.
//! Each restart checks which level its ranks recovered from; the last of each kind prints the
//! medians.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cli::{self, BenchArgs, Command, RunArgs};
use crate::plan::{Context, RunPlan};
use crate::{kill_node, supervise, Outcome, UsageError};

/// Name of the rank program.
pub const PROGRAM: &str = "ckpt-bench";

/// The node `--levels` wipes before the restarts from L2, L3 and L4.
const WIPED: &str = "node1";

/// The restarts of `--levels`, in the order run: the level restarted from and, for a level
/// the levels launch's last epoch lacks, the L2, L3 and L4 periods of the one epoch a job of
/// its own (`<job>-<level>`) writes first.
const RESTARTS: [(&str, Option<[&str; 3]>); 4] = [
    ("L1", None),
    ("L2", None),
    ("L3", Some(["0", "1", "0"])),
    ("L4", Some(["0", "0", "1"])),
];

/// Runs `ckpt bench`.
pub fn run(b: &BenchArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::current()?;
    if !b.levels {
        return supervise::run(&RunPlan::new(run_args(b)?, &ctx)?);
    }
    if b.ranks < 2 {
        return Err(UsageError(format!(
            "-n {}: --levels needs at least 2 ranks (one per emulated node)",
            b.ranks
        ))
        .into());
    }
    let prog = program()?;
    let mib = b.mib.to_string();
    let reps = b.reps.to_string();
    let step = b.step_us.to_string();
    let compute = if b.idle { "sleep" } else { "spin" };
    let measure = [
        "--mode",
        "levels",
        "--mib",
        &mib,
        "--reps",
        &reps,
        "--step-us",
        &step,
        "--compute",
        compute,
    ];
    let plan = RunPlan::new(levels_args(b, &prog, b.job_dir.as_deref(), &measure)?, &ctx)?;
    let job = plan.job_dir.clone();
    let outcome = supervise::run(&plan)?;
    if outcome != Outcome::Success {
        return Ok(outcome);
    }
    for (from, every) in RESTARTS {
        let Some([l2, l3, l4]) = every else { continue };
        let write = [
            "--mode",
            "write",
            "--l2-every",
            l2,
            "--l3-every",
            l3,
            "--l4-every",
            l4,
            "--mib",
            &mib,
        ];
        let dir = restart_job(&job, from, every);
        let outcome = supervise::run(&RunPlan::new(
            levels_args(b, &prog, Some(&dir), &write)?,
            &ctx,
        )?)?;
        if outcome != Outcome::Success {
            return Ok(outcome);
        }
    }
    // Each restart `--reps` times, one launch each, the node lost before each but from L1.
    for (from, every) in RESTARTS {
        let dir = restart_job(&job, from, every);
        for sample in 1..=b.reps.max(1) {
            if from != "L1" {
                kill_node::run(&dir, WIPED)?;
            }
            let sample = sample.to_string();
            let args = [
                "--mode", "restart", "--from", from, "--mib", &mib, "--sample", &sample, "--reps",
                &reps,
            ];
            let plan = RunPlan::new(levels_args(b, &prog, Some(&dir), &args)?, &ctx)?;
            let outcome = supervise::run(&plan)?;
            if outcome != Outcome::Success {
                return Ok(outcome);
            }
        }
    }
    Ok(Outcome::Success)
}

/// The job a restart from `from` of [`RESTARTS`] restarts: the levels launch's `job`, or the
/// job of its own that wrote an epoch under the periods `every`.
fn restart_job(job: &Path, from: &str, every: Option<[&str; 3]>) -> PathBuf {
    match every {
        None => job.to_path_buf(),
        Some(_) => PathBuf::from(format!("{}-{}", job.display(), from.to_lowercase())),
    }
}

/// Locates the rank program next to the running `ckpt`.
fn program() -> Result<PathBuf, UsageError> {
    let exe = std::env::current_exe()
        .map_err(|e| UsageError(format!("cannot locate the ckpt executable: {e}")))?;
    let program = exe.with_file_name(PROGRAM);
    if !program.exists() {
        return Err(UsageError(format!(
            "{} not found next to {}: build it with `cargo build --release --bins`",
            program.display(),
            exe.display()
        )));
    }
    Ok(program)
}

/// `ckpt run` arguments parsed as if typed, so flags `ckpt run` gains keep their defaults.
fn parse_run(flags: Vec<String>) -> Result<RunArgs, UsageError> {
    let argv = ["ckpt".to_string(), "run".to_string()]
        .into_iter()
        .chain(flags)
        .map(OsString::from);
    match cli::parse(argv) {
        Ok(cli::Cli {
            command: Command::Run(args),
        }) => Ok(args),
        Ok(_) => Err(UsageError("internal: not a `ckpt run` command line".into())),
        Err(e) => Err(UsageError(format!(
            "the benchmark's `ckpt run` arguments: {e}"
        ))),
    }
}

/// The flags every benchmark launch shares: ranks, checkpoints off, no restart, directories.
fn common_flags(b: &BenchArgs, job_dir: Option<&Path>) -> Vec<String> {
    let mut flags: Vec<String> = ["-n", &b.ranks.to_string(), "--every", "off"]
        .iter()
        .chain(&["--max-restarts", "0"])
        .map(|s| s.to_string())
        .collect();
    for (flag, dir) in [
        ("--job-dir", job_dir),
        ("--local-dir", b.local_dir.as_deref()),
    ] {
        if let Some(d) = dir {
            flags.push(flag.into());
            flags.push(d.display().to_string());
        }
    }
    flags
}

/// The `ckpt run` arguments that run the classic benchmark.
pub fn run_args(b: &BenchArgs) -> Result<RunArgs, UsageError> {
    let mut flags = common_flags(b, b.job_dir.as_deref());
    flags.push("--".into());
    flags.push(program()?.display().to_string());
    for (flag, v) in [("--mib", b.mib), ("--reps", b.reps), ("--polls", b.polls)] {
        flags.push(flag.into());
        flags.push(v.to_string());
    }
    parse_run(flags)
}

/// The `ckpt run` arguments of one `--levels` launch: one emulated node per rank (so one L3
/// group can hold every rank), `program` with `args`.
fn levels_args(
    b: &BenchArgs,
    program: &Path,
    job_dir: Option<&Path>,
    args: &[&str],
) -> Result<RunArgs, UsageError> {
    let mut flags = common_flags(b, job_dir);
    flags.extend(["--emulate-nodes".into(), b.ranks.to_string(), "--".into()]);
    flags.push(program.display().to_string());
    flags.extend(args.iter().map(|s| s.to_string()));
    parse_run(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench_args(argv: &[&str]) -> BenchArgs {
        let argv = ["ckpt", "bench"].iter().chain(argv).map(OsString::from);
        match cli::parse(argv) {
            Ok(cli::Cli {
                command: Command::Bench(b),
            }) => b,
            other => panic!("not a bench command line: {other:?}"),
        }
    }

    #[test]
    fn a_levels_launch_runs_one_node_per_rank_without_checkpoints_or_restarts() {
        let b = bench_args(&["--levels", "--ranks", "4", "--local-dir", "/l"]);
        let args = ["--mode", "restart", "--from", "L2"];
        let run = levels_args(
            &b,
            Path::new("/bin/ckpt-bench"),
            Some(Path::new("/j")),
            &args,
        )
        .unwrap();
        assert_eq!(run.ranks, 4);
        assert_eq!(run.emulate_nodes, Some(4));
        assert_eq!(run.every.as_deref(), Some("off"));
        assert_eq!(run.max_restarts, 0);
        assert_eq!(run.job_dir.as_deref(), Some(Path::new("/j")));
        assert_eq!(run.local_dir.as_deref(), Some(Path::new("/l")));
        let mut command = vec!["/bin/ckpt-bench"];
        command.extend(args);
        assert_eq!(run.command, command);
    }

    #[test]
    fn each_level_is_restarted_once_from_a_job_that_wrote_it_with_l2_off() {
        let froms: Vec<&str> = RESTARTS.iter().map(|r| r.0).collect();
        assert_eq!(froms, ["L1", "L2", "L3", "L4"]);
        let job = Path::new("/j/bench");
        for (i, (from, every)) in RESTARTS.into_iter().enumerate() {
            let dir = restart_job(job, from, every);
            match every {
                None => assert_eq!(dir, job, "{from}"),
                Some(periods) => {
                    // Only this level is on (periods of L2, L3, L4; RESTARTS[i] is L(i+1)),
                    // so the restart can come from nothing else.
                    let on: Vec<usize> = (0..3).filter(|&l| periods[l] != "0").collect();
                    assert_eq!(on, [i - 1], "{from}: {periods:?}");
                    let own = format!("/j/bench-{}", from.to_lowercase());
                    assert_eq!(dir, Path::new(&own));
                }
            }
        }
    }

    #[test]
    fn the_levels_flags_need_levels() {
        let b = bench_args(&["-n", "3"]);
        assert!(!b.levels && !b.idle);
        assert_eq!((b.ranks, b.step_us), (3, 1000));
        for flags in [&["--step-us", "10"][..], &["--idle"]] {
            let argv = ["ckpt", "bench"].iter().chain(flags).map(OsString::from);
            assert!(
                cli::parse(argv).is_err(),
                "{flags:?} accepted without --levels"
            );
        }
    }
}
