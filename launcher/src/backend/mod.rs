//! How jobs are started. A [`Backend`] has three duties: the command of one launch (with the
//! files it needs, written into the job's control directory before it starts), the reading of
//! its failure reports (which rank, which node, why), and giving each rank its node identity.
//!
//! [`mpirun::Mpirun`]: ranks get their node identity from `ckpt exec-rank`, which sets
//! `CKPT_NODE` (and, on emulated nodes, `CKPT_LOCAL_DIR`) before the program starts: on real
//! nodes (`--nodes`) the name the placement gave the rank's node, so that manifests record the
//! names placements are made of. [`srun::Srun`], inside a Slurm allocation: ranks start with
//! `SLURM_HOSTFILE` and `--distribution=arbitrary` from the same
//! [`crate::placement::Placement`], failures come from srun's reports, and the node identity
//! is `SLURMD_NODENAME`, which the library reads.
//!
//! Everything here is pure: [`Launch::command`] builds a [`Command`] but never spawns it.

pub mod mpirun;
pub mod srun;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::placement::Placement;
use crate::plan::RunPlan;

/// What the supervisor needs of a way to start ranks.
pub trait Backend {
    /// The launch of `plan` with this restart count: on `placement` when the job runs on real
    /// nodes (`--nodes`), else on this machine (emulated nodes as the plan says).
    fn launch(&self, plan: &RunPlan, restart_count: u32, placement: Option<&Placement>) -> Launch;

    /// A reader of the failure reports the launch prints on its stderr.
    fn failure_reader(&self) -> Box<dyn FailureReader + Send>;

    /// The signal to send the launch when the launcher receives `sig` (SIGINT, SIGTERM).
    fn forwarded(&self, sig: i32) -> i32 {
        sig
    }
}

/// Reads a launch's stderr line by line and keeps the first failure it reports.
pub trait FailureReader {
    /// Feeds one line (with or without its newline).
    fn feed(&mut self, line: &str);
    /// The first failure reported, if any.
    fn failure(&self) -> Option<&Failure>;
    /// Whether the backend printed a banner that reads like success after a failure (Open
    /// MPI's "Primary job terminated normally"), which the report explains.
    fn normal_banner(&self) -> bool;
    /// Nodes the backend reported lost or failed (its agent there gone, or the node down: not
    /// only a rank on them), by the backend's names for them, in order.
    fn lost_nodes(&self) -> &[String] {
        &[]
    }
}

/// One launch: the command line, the variables set for it, and the files to write first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The launcher program first (never empty), then its arguments.
    argv: Vec<OsString>,
    /// Variables set on the launcher program (and forwarded to the ranks).
    env: Vec<(&'static str, String)>,
    /// Files (absolute path in the job's control directory, contents) the command reads.
    files: Vec<(PathBuf, String)>,
    /// Variables of the launcher's environment the launcher program must not see.
    unset: Vec<&'static str>,
}

impl Launch {
    /// The full command line, program first.
    pub fn argv(&self) -> &[OsString] {
        &self.argv
    }

    /// The variables set for the launch, in the order the ranks get them.
    pub fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }

    /// The files to write (privately, atomically) before the command runs.
    pub fn files(&self) -> &[(PathBuf, String)] {
        &self.files
    }

    /// The command to spawn: stdout and stderr piped, for the supervisor to forward (and keep
    /// when our own outputs are closed) and scan.
    pub fn command(&self) -> Command {
        // Backends always put the program first: an empty argv is a broken invariant.
        let (prog, args) = self
            .argv
            .split_first()
            .expect("argv starts with the program");
        let mut cmd = Command::new(prog);
        for name in &self.unset {
            cmd.env_remove(name);
        }
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Why a rank ended the job, as the backend reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Killed by a signal: number and the backend's name for it.
    Signal(i32, String),
    /// Exited with a non-zero status.
    Exit(i32),
    /// Called `MPI_Abort`, with the error code if it was printed.
    Abort(Option<i32>),
    /// Exited (even with status 0) after `MPI_Init` without calling `MPI_Finalize`.
    NoFinalize,
    /// Ended because its node failed (Slurm's report).
    NodeFailure,
}

/// The rank that ended the job, its node when the report names it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Rank in `MPI_COMM_WORLD`.
    pub rank: u32,
    /// The node the report names (its host name), if any.
    pub node: Option<String>,
    /// What happened to it.
    pub cause: Cause,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} ", self.rank)?;
        match &self.cause {
            Cause::Signal(n, name) => write!(f, "exited on signal {n} ({name})"),
            Cause::Exit(code) => write!(f, "exited with code {code}"),
            Cause::Abort(Some(code)) => write!(f, "called MPI_Abort with error code {code}"),
            Cause::Abort(None) => write!(f, "called MPI_Abort"),
            Cause::NoFinalize => write!(f, "exited without calling MPI_Finalize"),
            Cause::NodeFailure => write!(f, "was lost with its node (Slurm: node failure)"),
        }?;
        match &self.node {
            Some(node) => write!(f, " on node {node}"),
            None => Ok(()),
        }
    }
}
