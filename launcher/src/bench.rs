//! `ckpt bench`: runs the `ckpt-bench` rank program (built next to `ckpt`, from `examples/`)
//! as ordinary `ckpt run` jobs with checkpoints off and no restarts. The figures and what
//! they are compared with are described in `examples/bench.rs` and `BENCHMARKS.md`.
//!
//! `--levels` runs the levels benchmark on one emulated node per rank, as separate launches: the blocking
//! and completion times of each level policy (one launch, which leaves an epoch at L1 and L2),
//! a second job (L2 off, L4 every epoch) that writes one epoch, then `--reps` cold restarts of
//! each kind: the first job from its own L1 files, the first job from L2 after `node1` was
//! wiped, the second job from L4 after `node1` was wiped. Each restart checks which level its
//! ranks recovered from; the last of each kind prints the medians.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cli::{self, BenchArgs, Command, RunArgs};
use crate::plan::{Context, RunPlan};
use crate::{kill_node, supervise, Outcome, UsageError};

/// Name of the rank program.
pub const PROGRAM: &str = "ckpt-bench";

/// The node `--levels` wipes before the restarts from L2 and L4.
const WIPED: &str = "node1";

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
    let l4_job = PathBuf::from(format!("{}-l4", job.display()));
    let outcome = supervise::run(&plan)?;
    if outcome != Outcome::Success {
        return Ok(outcome);
    }
    let write = [
        "--mode",
        "write",
        "--l2-every",
        "0",
        "--l4-every",
        "1",
        "--mib",
        &mib,
    ];
    let outcome = supervise::run(&RunPlan::new(
        levels_args(b, &prog, Some(&l4_job), &write)?,
        &ctx,
    )?)?;
    if outcome != Outcome::Success {
        return Ok(outcome);
    }
    // Each restart `--reps` times, one launch each, the node lost before each from L2 or L4.
    for (dir, from) in [(&job, "L1"), (&job, "L2"), (&l4_job, "L4")] {
        for sample in 1..=b.reps.max(1) {
            if from != "L1" {
                kill_node::run(dir, WIPED)?;
            }
            let sample = sample.to_string();
            let args = [
                "--mode", "restart", "--from", from, "--mib", &mib, "--sample", &sample, "--reps",
                &reps,
            ];
            let plan = RunPlan::new(levels_args(b, &prog, Some(dir), &args)?, &ctx)?;
            let outcome = supervise::run(&plan)?;
            if outcome != Outcome::Success {
                return Ok(outcome);
            }
        }
    }
    Ok(Outcome::Success)
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
