//! # launcher: the `ckpt` command
//!
//! `ckpt run` starts an MPI job under `mpirun` with the `CKPT_*` environment the ranks read,
//! watches it (mpirun's stderr for the rank that died, the job's `events.jsonl` for
//! checkpoints), and relaunches it from the newest committed epoch when it fails. `ckpt list`
//! shows a job's committed epochs.
//!
//! ## Code map
//!
//! - [`cli`]: raw flags (clap). [`plan`]: validates them into a [`plan::RunPlan`] that the
//!   rest of the program trusts; the only module that reads the launcher's own environment.
//! - [`jobdir`]: creates the job directory, writes `job.json`, detects a job to resume.
//! - [`backend`]: the [`backend::Backend`] interface (a launch on a placement, a reader of its
//!   failures); [`backend::mpirun`] its mpirun implementation (command line, rankfile on real
//!   nodes, failure messages). Pure functions; it spawns nothing.
//! - [`hostlist`]: Slurm hostlists expanded and compressed. [`placement`]: ranks on real
//!   nodes (ranks per node, spares, excluded nodes, the previous placement). Both pure.
//! - [`supervise`]: the launch / watch / restart loop; all process handling lives here.
//! - [`deadline`]: `--end-time`, the last checkpoint scheduled from the job's end time
//!   (Slurm's, or given); parsing and the firing time are pure.
//! - [`signals`]: handlers that only record the signal: SIGINT/SIGTERM, the exit signal
//!   (checkpoint-and-exit), SIGHUP (ignored) and the checkpoint signal.
//! - [`report`]: the `[ckpt] ...` lines people read, and the only printing: stderr and
//!   `launcher.log` ([`report::say`]), stdout ([`report::print()`], `outln!`); a closed pipe is
//!   never a panic.
//! - [`bench`]: `ckpt bench`, which runs the `ckpt-bench` rank program under `ckpt run`.
//! - [`request`]: `ckpt checkpoint`, a request to the running job through its control file.
//!   [`lock`]: whether a `ckpt run` holds a job directory; which run a request belongs to.
//! - [`exec_rank`]: `ckpt exec-rank`, how each rank is started (checkpoint signal held,
//!   emulated node set). [`kill_node`]: `ckpt kill-node`, an emulated node's crash.
//! - [`drill`]: `ckpt drill`, a reference run and seeded faulty runs compared with it.
//! - [`list`]: `ckpt list`. [`verify`]: `ckpt verify`, every byte of every copy of every
//!   committed epoch. [`prune`]: `ckpt prune`, old epochs removed level by level, manifests
//!   first. [`clock`]: UTC date formatting without a date library.
//!
//! **Invariants.** No module spells a `CKPT_*` variable of the rank contract: the names come
//! from [`ckpt::env`]. Exit codes and the formatting of errors are decided in one place,
//! [`run`], from [`Outcome`] and [`UsageError`].

// Output goes through `report` (`say`, `print`, `outln!`): a closed pipe is never a panic.
#![deny(clippy::print_stdout, clippy::print_stderr)]

/// `println!` for command output: a closed stdout returns a `BrokenPipe` error from the
/// enclosing function (which [`run`] ends quietly on) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::report::print(format_args!($($arg)*))?
    };
}

pub mod ahead;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod deadline;
pub mod drill;
pub mod exec_rank;
pub mod hostlist;
pub mod jobdir;
pub mod kill_node;
pub mod list;
pub mod lock;
pub mod migrate;
pub mod placement;
pub mod plan;
pub mod prune;
pub mod ranks;
pub mod report;
pub mod request;
pub mod signals;
pub mod spares;
pub mod start;
pub mod supervise;
pub mod verify;
mod verify_l3;

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;

/// A usage or validation error: the command line (or the job directory it names) cannot work.
/// Exits with status 2; its message names the flag and the value.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// How a command ended when it did not fail with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (the job finished, the listing was printed).
    Success,
    /// The job failed and no restarts remained.
    JobFailed,
    /// The launcher was interrupted by this signal, forwarded to the job.
    Interrupted(i32),
    /// The job stopped on request after a checkpoint, to be resumed: exit status
    /// `CKPT_STOPPED_EXIT` (default 0).
    Stopped,
}

/// The exit status of a run whose job stopped on request (`CKPT_STOPPED_EXIT`, 0 to 255;
/// anything else is 0, said on stderr).
fn stopped_exit() -> u8 {
    match ckpt::env::get(ckpt::env::STOPPED_EXIT).map(|v| v.trim().parse::<u8>()) {
        None => 0,
        Some(Ok(code)) => code,
        Some(Err(_)) => {
            report::say(format!(
                "warning: {} is not an exit status (0 to 255); exiting 0",
                ckpt::env::STOPPED_EXIT
            ));
            0
        }
    }
}

/// Entry point of the `ckpt` binary.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs `ckpt` with `args` (including the program name) and returns its exit status:
/// 0 success, 1 job failure or runtime error, 2 usage or validation error, 128+N when
/// interrupted by signal N, 141 (128+SIGPIPE, without a message) when stdout was closed.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with status 0, errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match dispatch(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::JobFailed) => ExitCode::from(1),
        Ok(Outcome::Interrupted(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        Ok(Outcome::Stopped) => ExitCode::from(stopped_exit()),
        // The reader went away (`ckpt list | head -1`): nothing more to say, as for SIGPIPE.
        Err(e) if report::is_broken_pipe(&e) => ExitCode::from(128 + libc::SIGPIPE as u8),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn dispatch(cli: cli::Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        cli::Command::Run(args) => {
            let plan = plan::RunPlan::new(args, &plan::Context::current()?)?;
            supervise::run(&plan)
        }
        cli::Command::List(args) => list::run(&args.job_dir, args.json, args.ranks),
        cli::Command::Checkpoint(args) => request::run(&args),
        cli::Command::Verify(args) => verify::run(
            &args.job_dir,
            args.local_dir.as_deref(),
            args.shared_dir.as_deref(),
            args.json,
        ),
        cli::Command::Prune(args) => prune::run(&args),
        cli::Command::KillNode(args) => kill_node::run(&args.job_dir, &args.node),
        cli::Command::Migrate(args) => migrate::run(&args),
        cli::Command::Drain(args) => migrate::drain(&args),
        cli::Command::Drill(args) => drill::run(args),
        cli::Command::ExecRank(args) => exec_rank::run(&args),
        cli::Command::Bench(args) => bench::run(&args),
    }
}

#[cfg(test)]
mod testutil;
