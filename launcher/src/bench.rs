//! `ckpt bench`: runs the `ckpt-bench` rank program (built next to `ckpt`, from `examples/`)
//! as an ordinary `ckpt run` job with checkpoints off and no restarts. The figures and what
//! they are compared with are described in `examples/bench.rs` and `BENCHMARKS.md`.

use crate::cli::{BenchArgs, RunArgs};
use crate::UsageError;

/// Name of the rank program.
pub const PROGRAM: &str = "ckpt-bench";

/// The `ckpt run` arguments that run the benchmark.
pub fn run_args(b: &BenchArgs) -> Result<RunArgs, UsageError> {
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
    Ok(RunArgs {
        ranks: b.ranks,
        every: Some("off".into()),
        keep: 2,
        max_restarts: 0,
        job_dir: b.job_dir.clone(),
        local_dir: b.local_dir.clone(),
        emulate_nodes: None,
        l2_every: None,
        l4_every: None,
        levels: Default::default(),
        shared_dir: None,
        fault: None,
        quiet_after: None,
        exit_signal: None,
        mpirun: "mpirun".into(),
        mpirun_args: Vec::new(),
        command: vec![
            program.display().to_string(),
            "--mib".into(),
            b.mib.to_string(),
            "--reps".into(),
            b.reps.to_string(),
            "--polls".into(),
            b.polls.to_string(),
        ],
    })
}
