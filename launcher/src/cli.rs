//! The command line as typed: clap definitions and nothing else. Values stay raw strings
//! here; [`crate::plan`] validates them and names the flag in every error.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::backend::mpirun;

/// Run, watch, restart and inspect checkpointed MPI jobs.
#[derive(Debug, Parser)]
#[command(name = "ckpt", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size of the `run` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an MPI program under mpirun, restarting it from its last checkpoint when a rank dies.
    #[command(override_usage = "ckpt run [OPTIONS] -n <N> [--] <PROG> [ARGS]...")]
    Run(RunArgs),
    /// List a job's committed epochs, newest first.
    List(ListArgs),
    /// Ask a running job to checkpoint now (and optionally stop), and wait for the epoch.
    Checkpoint(CheckpointArgs),
    /// Read and check every copy of every committed epoch at every level.
    ///
    /// Manifests, rank files and their copies (L1, L2, L4), every region's checksum, and the
    /// L3 parity files (headers, and the parity recomputed from the members' files). Exit
    /// status 0 when every epoch is restorable from some level, 1 when an epoch has a rank
    /// with no good copy at any level (or a bad manifest).
    Verify(VerifyArgs),
    /// Remove all but the N newest committed epochs, at every level.
    ///
    /// Each level keeps its own number of epochs (--keep-l2/-l3/-l4, default --keep): a level
    /// is dropped from older manifests before its files go, a manifest with no level left is
    /// removed. Files go at every level (L1, L2 and L3 under every node-local base reachable
    /// from here, L4). Refused while a `ckpt run` holds the job directory.
    Prune(PruneArgs),
    /// Measure checkpoint and restore bandwidth against plain write+fsync and read of the same
    /// bytes on the same storage, and the cost of poll and quiescence against MPI_Allreduce;
    /// with --levels, the storage levels (blocking time, time to complete, restarts).
    Bench(BenchArgs),
    /// Kill an emulated node of a job run with --emulate-nodes: SIGKILL its ranks and remove
    /// its node-local directory, as a node crash would.
    KillNode(KillNodeArgs),
    /// Move ranks of a running job (emulated or real nodes) to another node: an agreed
    /// checkpoint, a stop, a relaunch with the new placement; the moved ranks get their data
    /// from the cheapest copy. Prints each phase with its time.
    Migrate(MigrateArgs),
    /// Move every rank off a node of a running job (to the nodes with the fewest ranks and
    /// room), as `ckpt migrate` does; the node is then excluded for the rest of the job.
    Drain(DrainArgs),
    /// A fault-tolerance drill: run the program once without faults, then N times with
    /// seeded random faults, and compare each run's result with the reference.
    ///
    /// Exit status 0 when every run's result is identical, 1 when any differs, fails or hangs.
    #[command(
        override_usage = "ckpt drill [OPTIONS] -n <N> --result-line <PREFIX> [--] <PROG> \
                      [ARGS]..."
    )]
    Drill(DrillArgs),
    /// How `ckpt run` starts each rank: block the checkpoint signal, give the rank its
    /// emulated node, then exec the program.
    #[command(hide = true)]
    ExecRank(ExecRankArgs),
}

/// `ckpt kill-node` flags.
#[derive(Debug, Args)]
pub struct KillNodeArgs {
    /// The job directory of a job run with --emulate-nodes.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// The emulated node (node0, node1, ...).
    #[arg(value_name = "NODE")]
    pub node: String,
}

/// `ckpt migrate` flags.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The job directory of a running job run with --emulate-nodes or --nodes.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// The ranks to move: `2` or `2,3`.
    #[arg(long = "rank", value_name = "R[,R2..]")]
    pub ranks: String,
    /// The node to move them to (node0, node1, ... or one of --nodes); refused when full
    /// (holding --ranks-per-node ranks).
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Seconds to wait for the checkpoint, and again for the relaunch to restore.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub wait: u64,
}

/// `ckpt drain` flags.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The job directory of a running job run with --emulate-nodes or --nodes.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// The node to empty (node0, node1, ... or one of --nodes).
    #[arg(long, value_name = "NODE")]
    pub node: String,
    /// Seconds to wait for the checkpoint, and again for the relaunch to restore.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub wait: u64,
}

/// `ckpt drill` flags, unvalidated ([`crate::drill::DrillPlan`] checks them).
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "np", value_name = "N")]
    pub ranks: u32,
    /// Run the ranks on N emulated nodes (as `ckpt run --emulate-nodes`); needed by kill-node.
    #[arg(long, value_name = "N")]
    pub emulate_nodes: Option<u32>,
    /// Faulty runs after the reference run.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub runs: u32,
    /// Seed of the fault draw: the same seed draws the same faults [default: random, printed].
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
    /// Faults to draw from, comma-separated: kill-rank (SIGKILL a random rank at a random
    /// moment after a commit), kill-node (`ckpt kill-node` of a random emulated node, likewise),
    /// phase (`--fault RANK:PHASE:N` at a random protocol phase and epoch).
    #[arg(long, value_name = "LIST", default_value = "kill-rank")]
    pub faults: String,
    /// Faults per run (at most one phase fault each).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub faults_per_run: u32,
    /// The result: what follows PREFIX on the last stdout line starting with it (repeatable,
    /// e.g. one prefix per rank's digest).
    #[arg(
        long = "result-line",
        value_name = "PREFIX",
        allow_hyphen_values = true
    )]
    pub result_lines: Vec<String>,
    /// The result: a file the program writes (removed before each run, read after it).
    #[arg(long, value_name = "PATH")]
    pub result_file: Option<PathBuf>,
    /// The reference result, one value per --result-line, instead of a reference run.
    #[arg(
        long = "reference-line",
        value_name = "VALUE",
        allow_hyphen_values = true
    )]
    pub reference_lines: Vec<String>,
    /// Checkpoint interval of the faulty runs (as `ckpt run --every`) [default: the
    /// application's own].
    #[arg(long, value_name = "SPEC")]
    pub every: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds a run may take; a run still going is killed and reported as hung.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Directory for the runs' job directories [default: ./ckpt-drills/<prog>-<UTC time>].
    #[arg(long, value_name = "DIR")]
    pub drill_dir: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(
        value_name = "PROG",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// `ckpt exec-rank` flags (internal: mpirun runs it on every rank).
#[derive(Debug, Args)]
pub struct ExecRankArgs {
    /// Signal number to block before the exec.
    #[arg(long, value_name = "SIG")]
    pub hold_signal: Option<i32>,
    /// Emulated nodes: the rank runs on node `node<K>` of this many (block placement by its
    /// MPI rank), with its node-local directory `<local base>/node<K>`.
    #[arg(long, value_name = "N", requires = "local_base")]
    pub emulate_nodes: Option<u32>,
    /// Base of the emulated nodes' node-local directories.
    #[arg(long, value_name = "DIR", requires = "emulate_nodes")]
    pub local_base: Option<PathBuf>,
    /// Real nodes: the launch's rankfile, whose line for this rank names its node (set as
    /// CKPT_NODE).
    #[arg(long, value_name = "FILE", conflicts_with = "emulate_nodes")]
    pub rankfile: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(
        value_name = "PROG",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

/// `ckpt bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of ranks (use no more than the cores for timing).
    #[arg(
        short = 'n',
        long = "np",
        visible_alias = "ranks",
        value_name = "N",
        default_value_t = 2
    )]
    pub ranks: u32,
    /// The levels benchmark instead: blocking time per level policy, time until L2, L3 and
    /// L4 are complete, restarts from L1, L2, L3 and L4, on one emulated node per rank (see
    /// BENCHMARKS.md).
    #[arg(long)]
    pub levels: bool,
    /// With --levels: microseconds of compute between two polls while the levels run.
    #[arg(long, value_name = "US", default_value_t = 1000, requires = "levels")]
    pub step_us: u64,
    /// With --levels: the ranks sleep between polls instead of computing (an idle CPU).
    #[arg(long, requires = "levels")]
    pub idle: bool,
    /// State per rank, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub mib: u64,
    /// Repetitions; each figure is the median.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub reps: u64,
    /// Polls timed for the poll cost.
    #[arg(long, value_name = "N", default_value_t = 2_000_000)]
    pub polls: u64,
    /// Storage to measure (the node-local checkpoint directory) [default: <job dir>/local/<node>].
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
    /// Job directory for the benchmark run [default: ./ckpt-jobs/ckpt-bench-<time>-<pid>];
    /// --levels also uses <job dir>-l3 and <job dir>-l4 for the restarts from L3 and L4.
    #[arg(long, value_name = "DIR")]
    pub job_dir: Option<PathBuf>,
}

/// `ckpt verify` flags.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The job directory.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// Base of node-local storage [default: the --local-dir recorded in job.json, else
    /// $CKPT_LOCAL_DIR or $NODE_LOCAL_DIR, else <job dir>/local/<node>].
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
    /// Base of shared storage (L4) [default: the --shared-dir recorded in job.json, else
    /// $CKPT_SHARED_DIR, else <job dir>/shared].
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ckpt prune` flags.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The job directory.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// Committed epochs to keep (the newest) at L1, and at every level not given below.
    #[arg(long, value_name = "N")]
    pub keep: u32,
    /// Epochs to keep with their L2 copies [default: --keep].
    #[arg(long = "keep-l2", value_name = "N")]
    pub keep_l2: Option<u32>,
    /// Epochs to keep with their L3 parity [default: --keep].
    #[arg(long = "keep-l3", value_name = "N")]
    pub keep_l3: Option<u32>,
    /// Epochs to keep with their L4 copies [default: --keep].
    #[arg(long = "keep-l4", value_name = "N")]
    pub keep_l4: Option<u32>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Base of node-local storage [default: as for `ckpt verify`].
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
    /// Base of shared storage (L4) [default: as for `ckpt verify`].
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,
}

/// `ckpt checkpoint` flags.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// The job directory of the running job.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// Stop the ranks after the checkpoint (resume later with `ckpt run --job-dir`).
    #[arg(long)]
    pub then_exit: bool,
    /// Seconds to wait for the epoch to commit; 0 returns as soon as the request is made.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub wait: u64,
}

/// `ckpt run` flags, unvalidated.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "np", value_name = "N")]
    pub ranks: u32,
    /// Checkpoint interval: N polls (N >= 1), or a time such as 30s, 500ms, 5m, 1h; "off" for
    /// none [default: the application's own setting].
    #[arg(long, value_name = "SPEC")]
    pub every: Option<String>,
    /// Committed epochs to keep on node-local storage (L1).
    #[arg(long, value_name = "K", default_value_t = 2)]
    pub keep: u32,
    /// Relaunches allowed after failures (at most 1000).
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub max_restarts: u32,
    /// Job directory (manifests, events, job.json). If it holds committed epochs, the first
    /// launch restarts from them [default: ./ckpt-jobs/<prog>-<UTC time>-<pid>].
    #[arg(long, value_name = "DIR")]
    pub job_dir: Option<PathBuf>,
    /// Base of node-local (L1) checkpoint storage [default: <job dir>/local/<node>].
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
    /// Run the ranks on N emulated nodes of this machine, node0..node<N-1>, in blocks of
    /// consecutive ranks; each node has its own node-local directory <local base>/node<K>
    /// (local base: --local-dir, else <job dir>/local). `ckpt kill-node` crashes one.
    #[arg(long, value_name = "N")]
    pub emulate_nodes: Option<u32>,
    /// Keep the last S nodes (--emulate-nodes or --nodes, or under srun nodes of the
    /// allocation) as spares: ranks start on the others, and the ranks of a node lost in a
    /// failure move to a spare before the relaunch. Giving it (even 0) turns on the handling of
    /// lost nodes.
    #[arg(long, value_name = "S")]
    pub spares: Option<u32>,
    /// When a node is lost and no spare is left, spread its ranks over the surviving nodes
    /// with room (else the job stops).
    #[arg(long)]
    pub spread_on_failure: bool,
    /// How to start the ranks: mpirun, srun (inside a Slurm allocation: its nodes, a hostfile
    /// per launch, --mpi=pmix), or auto: srun when SLURM_JOB_ID is set and srun is found,
    /// unless --emulate-nodes is given; else mpirun.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    pub backend: String,
    /// Run the ranks on these nodes, a hostlist in Slurm's syntax (n[1-4,7], rack[1-2]-n[01-08],
    /// a,b); every name must resolve. Ranks go in blocks of consecutive ranks (see
    /// --ranks-per-node); a resumed job's ranks stay on the nodes of its newest epoch where
    /// they can. mpirun gets a rankfile in <job dir>/control/rankfile.
    #[arg(long, value_name = "HOSTLIST", conflicts_with = "emulate_nodes")]
    pub nodes: Option<String>,
    /// With --nodes: at most K ranks on one node, filled in order [default: the even share].
    #[arg(long, value_name = "K", requires = "nodes")]
    pub ranks_per_node: Option<u32>,
    /// Partner copies (L2: each rank's file also on another node) every N epochs; 0 for none
    /// [default: 1].
    #[arg(long = "l2-every", value_name = "N")]
    pub l2_every: Option<String>,
    /// Copies on shared storage (L4) every N epochs; 0 for none [default: 10].
    #[arg(long = "l4-every", value_name = "N")]
    pub l4_every: Option<String>,
    /// L3 and the retention of each level.
    #[command(flatten)]
    pub levels: LevelArgs,
    /// Base of shared storage for L4 copies, created private if missing; recorded in job.json
    /// [default: the one job.json records, else <job dir>/shared].
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,
    /// Inject a fault: rank RANK kills itself at PHASE (poll, before-write, mid-write,
    /// after-write, before-vote, before-manifest, after-commit, restore, drain, background: in
    /// the background levels), optionally at epoch/poll N; ACTION stop (SIGSTOP) or hang instead of kill; on the first launch, or
    /// launch L (restore: launch 1 by default). Or, instead of a crash, its write fails with
    /// ENOSPC (enospc) or rank 0's manifest directory fsync fails (publish-fsync).
    #[arg(long, value_name = "RANK:PHASE[:N][:ACTION][@L]")]
    pub fault: Option<String>,
    /// Say so each time the job logs no progress event (start, commit, restore, ...) for this
    /// long, e.g. 90s, 10m, 1h [default: off].
    #[arg(long, value_name = "DURATION")]
    pub quiet_after: Option<String>,
    /// Stop a launch whose ranks have not all logged `rank_started` (in `Checkpointer::new`)
    /// within this many seconds, name them and their nodes, and count it as a failed launch
    /// (relaunched within --max-restarts); 0: wait for ever.
    #[arg(long, value_name = "SECS", default_value_t = crate::start::DEFAULT_SECS)]
    pub start_timeout: u64,
    /// Signal to the launcher that asks the job to checkpoint and stop, as `ckpt checkpoint
    /// --then-exit` does (for Slurm's `--signal=B:USR1@T`); a name, a number, or off.
    #[arg(long, value_name = "SIG", default_value = "USR1")]
    pub exit_signal: Option<String>,
    /// When the job must end, to checkpoint and stop before it (as the exit signal does) at
    /// END - --end-margin - 2 x the slowest checkpoint or stop so far (10 s before any): auto
    /// (inside a Slurm allocation, SLURM_JOB_END_TIME, else squeue's end time; elsewhere
    /// none), whole seconds since 1970, or off.
    #[arg(long, value_name = "auto|UNIX_SECONDS|off", default_value = "auto")]
    pub end_time: String,
    /// Seconds kept free before the end time for the request to reach the ranks and for the
    /// stop (see --end-time).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub end_margin: u64,
    /// mpirun to use.
    #[arg(long, value_name = "PATH", default_value = "mpirun")]
    pub mpirun: PathBuf,
    /// Extra argument for mpirun, placed before the program (repeatable, kept in order).
    #[arg(long = "mpirun-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub mpirun_args: Vec<String>,
    /// The program and its arguments.
    #[arg(
        value_name = "PROG",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// `ckpt run` flags of L3 and of each level's retention, unvalidated.
#[derive(Debug, Default, Args)]
pub struct LevelArgs {
    /// Parity over groups of ranks on distinct nodes (L3) every N epochs; 0 for none
    /// [default: 4].
    #[arg(long = "l3-every", value_name = "N")]
    pub l3_every: Option<String>,
    /// Ranks per L3 group, at least 2 [default: 4].
    #[arg(long = "l3-group", value_name = "G")]
    pub l3_group: Option<String>,
    /// Parity shards per L3 set: lost members per group tolerated, 1 (XOR) to G-1
    /// (Reed-Solomon) [default: 1].
    #[arg(long = "l3-parity", value_name = "K")]
    pub l3_parity: Option<String>,
    /// Epochs kept with their L2 copies [default: 1].
    #[arg(long = "keep-l2", value_name = "N")]
    pub keep_l2: Option<String>,
    /// Epochs kept with their L3 parity [default: 1].
    #[arg(long = "keep-l3", value_name = "N")]
    pub keep_l3: Option<String>,
    /// Epochs kept with their L4 copies [default: 2].
    #[arg(long = "keep-l4", value_name = "N")]
    pub keep_l4: Option<String>,
}

/// `ckpt list` flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The job directory.
    #[arg(value_name = "JOB_DIR")]
    pub job_dir: PathBuf,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also show each rank: its node and where its copies beyond L1 are (the L2 holder, the
    /// L3 group).
    #[arg(long)]
    pub ranks: bool,
}

/// Parses the command line. Help and version requests come back as `Err` too (clap's
/// convention); the caller prints them and uses their exit code.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let mut matches = Cli::command()
        .mut_subcommand("run", |run| run.after_help(run_after_help()))
        .try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// The environment section of `ckpt run --help`, built from the constants so the names
/// cannot drift from the rank contract.
fn run_after_help() -> String {
    use ckpt::env;
    format!(
        "Usage example:\n  ckpt run -n 4 --every 50 -- heat2d --steps 400\n\n\
         Environment:\n  {args}  extra mpirun arguments, split on whitespace, placed before \
         the --mpirun-arg values\n\n\
         Ranks get {dir}, {id}, {keep}, {count} (0 on the first launch, +1 per restart) and, \
         when given, {every}, {local}, {fault}, {l2}, {l3}, {l3g}, {l3k}, {l4}, {keep2}, {keep3}, {keep4}, {shared}. Each is forwarded with `mpirun -x`, as is any \
         other CKPT_* variable already set ({node}, {stride}, {timeout}, {io_timeout}). Inside a \
         Slurm allocation (--backend auto or srun) srun starts the ranks instead, passing the \
         whole environment.\n\n\
         mpirun starts each rank as `ckpt exec-rank ... -- PROG`, which keeps the checkpoint \
         signal ({signal}, default SIGUSR1) blocked until the library handles it, so a signal \
         during start-up does not kill a rank.\n\n\
         To resume a job after the launcher itself died, run again with --job-dir DIR: the \
         first launch restarts from the newest committed epoch in DIR. A `ckpt checkpoint` \
         request an earlier run left pending is ignored, and reported.\n\n\
         Signals to the launcher: SIGINT/SIGTERM are forwarded to mpirun (no restart); the \
         exit signal (--exit-signal, default SIGUSR1, as Slurm's --signal=B:USR1@T sends) asks \
         the job to checkpoint and stop, like `ckpt checkpoint --then-exit`; SIGHUP is ignored \
         (by mpirun too). The report is also appended to launcher.log in the job directory, \
         and the job's output goes there once the launcher's stdout or stderr is closed.\n\n\
         Exit status: 0 the job finished (or stopped on request); 1 it failed and no restarts \
         remained, it failed before any rank started, or a launcher error; 2 invalid usage; \
         130/143 interrupted by SIGINT/SIGTERM (forwarded to mpirun, no restart).",
        args = mpirun::ARGS_VAR,
        dir = env::JOB_DIR,
        id = env::JOB_ID,
        keep = env::KEEP,
        count = env::RESTART_COUNT,
        every = env::EVERY,
        local = env::LOCAL_DIR,
        fault = env::FAULT,
        l2 = env::L2_EVERY,
        l3 = env::L3_EVERY,
        l3g = env::L3_GROUP,
        l3k = env::L3_PARITY,
        l4 = env::L4_EVERY,
        keep2 = env::KEEP_L2,
        keep3 = env::KEEP_L3,
        keep4 = env::KEEP_L4,
        shared = env::SHARED_DIR,
        node = env::NODE,
        stride = env::AGREE_STRIDE,
        signal = env::SIGNAL,
        timeout = env::TIMEOUT,
        io_timeout = env::IO_TIMEOUT,
    )
}
