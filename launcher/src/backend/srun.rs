//! Slurm's `srun` as a [`Backend`], inside an allocation: the nodes come from
//! `SLURM_JOB_NODELIST`, each launch's placement goes to a private hostfile
//! (`control/hostfile`, one node per rank) that `srun --distribution=arbitrary` reads through
//! `SLURM_HOSTFILE`, and Open MPI's ranks wire up through Slurm's PMIx plugin (`--mpi=pmix`:
//! Debian's Open MPI 4.1 has no Slurm PMI-2 support). A rank's node identity is
//! `SLURMD_NODENAME`, which the library reads; its node-local base `NODE_LOCAL_DIR` when the
//! site sets it, else `<job dir>/local/<node>`.
//!
//! srun's own reports say which task failed on which node (`srun: error: n2: task 3:
//! Killed`) and which node failed (`srun: error: Node failure on n2`); [`Scanner`] reads them.
//! With `--no-kill` on the allocation a failed node leaves it and the job goes on: [`Nodes`]
//! excludes the nodes that left (or whose ranks failed twice), moves their ranks to a spare
//! node of the allocation or, with `--spread-on-failure`, over the survivors.
//!
//! Everything here is pure except [`Nodes::current`] and [`plugins`], which ask Slurm.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Backend, Cause, Failure, FailureReader, Launch};
use crate::placement::{self, Placement};
use crate::plan::RunPlan;
use crate::spares::Verdict;
use crate::UsageError;

/// Slurm's job id, set inside an allocation (`sbatch`, `salloc`).
pub const JOB_ID_VAR: &str = "SLURM_JOB_ID";
/// The allocation's nodes, a hostlist.
pub const NODELIST_VAR: &str = "SLURM_JOB_NODELIST";
/// CPUs allocated per node, `4(x2),2`, in the order of [`NODELIST_VAR`].
pub const CPUS_VAR: &str = "SLURM_JOB_CPUS_PER_NODE";
/// The file srun reads the node of each task from, with `--distribution=arbitrary`.
pub const HOSTFILE_VAR: &str = "SLURM_HOSTFILE";
/// The job's tasks per node, which srun would try to honour beside the hostfile.
pub const TASKS_PER_NODE_VAR: &str = "SLURM_NTASKS_PER_NODE";
/// The launch's hostfile, relative to the job directory.
pub const HOSTFILE: &str = "control/hostfile";
/// The MPI plugin Open MPI's ranks need under srun.
pub const MPI_PLUGIN: &str = "pmix";

/// Which backend `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// mpirun, always.
    Mpirun,
    /// srun; an error outside an allocation.
    Srun,
    /// srun inside an allocation (`SLURM_JOB_ID` set and srun found), unless the ranks run on
    /// emulated nodes of this machine; else mpirun.
    Auto,
}

impl Choice {
    /// Parses `--backend`.
    pub fn parse(s: &str) -> Result<Choice, UsageError> {
        match s {
            "mpirun" => Ok(Choice::Mpirun),
            "srun" => Ok(Choice::Srun),
            "auto" => Ok(Choice::Auto),
            _ => Err(UsageError(format!(
                "--backend {s}: expected mpirun, srun or auto"
            ))),
        }
    }
}

/// What the launcher's environment says about Slurm.
#[derive(Debug, Clone)]
pub struct SlurmEnv {
    /// [`JOB_ID_VAR`].
    pub job_id: Option<String>,
    /// [`NODELIST_VAR`].
    pub nodelist: Option<String>,
    /// [`CPUS_VAR`].
    pub cpus_per_node: Option<String>,
    /// srun, found in `PATH`.
    pub srun: Option<PathBuf>,
    /// What `srun --mpi=list` printed, or why it could not run.
    pub mpi_list: fn(&Path) -> Result<String, String>,
}

impl SlurmEnv {
    /// Outside Slurm: nothing set, no srun.
    pub fn none() -> SlurmEnv {
        SlurmEnv {
            job_id: None,
            nodelist: None,
            cpus_per_node: None,
            srun: None,
            mpi_list: |_| Err("not inside Slurm".into()),
        }
    }
}

/// The allocation the srun backend runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Slurm's job id.
    pub job_id: String,
    /// The hostlist as Slurm gave it.
    pub list: String,
    /// Its nodes, in order.
    pub nodes: Vec<String>,
    /// CPUs allocated on each node (same order); empty when Slurm did not say.
    pub cpus: Vec<u32>,
    /// The srun program.
    pub srun: PathBuf,
}

/// Chooses the backend: `Some` allocation for srun, `None` for mpirun. `emulated`: the ranks
/// run on emulated nodes of this machine (`--emulate-nodes`), which only mpirun does.
pub fn choose(
    choice: Choice,
    env: &SlurmEnv,
    emulated: bool,
) -> Result<Option<Allocation>, UsageError> {
    let inside = env.job_id.is_some() && env.srun.is_some();
    match choice {
        Choice::Mpirun => return Ok(None),
        Choice::Auto if !inside || emulated => return Ok(None),
        Choice::Srun if emulated => {
            return Err(UsageError(
                "--backend srun with --emulate-nodes: emulated nodes are this machine's; \
                 srun runs the ranks on the allocation's nodes (drop one of them)"
                    .into(),
            ))
        }
        _ => {}
    }
    let Some(job_id) = env.job_id.clone() else {
        return Err(UsageError(format!(
            "--backend srun: not inside a Slurm allocation ({JOB_ID_VAR} is not set): run ckpt \
             in a job script (sbatch) or under salloc, or use --backend mpirun"
        )));
    };
    let Some(srun) = env.srun.clone() else {
        return Err(UsageError(format!(
            "--backend srun: srun not found in PATH (inside Slurm job {job_id}): install \
             Slurm's client commands, or use --backend mpirun"
        )));
    };
    let list = env.nodelist.clone().ok_or_else(|| {
        UsageError(format!(
            "--backend srun: {NODELIST_VAR} is not set in Slurm job {job_id}, so its nodes \
             are unknown"
        ))
    })?;
    let nodes = crate::hostlist::parse(&list)
        .map_err(|e| UsageError(format!("{NODELIST_VAR}={list}: {e}")))?;
    let cpus = match &env.cpus_per_node {
        Some(v) => {
            cpus_per_node(v, nodes.len()).map_err(|e| UsageError(format!("{CPUS_VAR}={v}: {e}")))?
        }
        None => Vec::new(),
    };
    let offered = (env.mpi_list)(&srun).map(|out| mpi_plugins(&out));
    match offered {
        Ok(p) if p.iter().any(|p| p == MPI_PLUGIN) => {}
        Ok(p) => {
            return Err(UsageError(format!(
                "--backend srun: Slurm's {MPI_PLUGIN} MPI plugin is not available here (srun \
                 --mpi=list offers: {}); Open MPI's ranks need it to start under srun: \
                 install it (Debian: slurm-wlm-basic-plugins), or use --backend mpirun",
                if p.is_empty() {
                    "nothing".to_owned()
                } else {
                    p.join(", ")
                }
            )))
        }
        Err(e) => {
            return Err(UsageError(format!(
                "--backend srun: cannot list Slurm's MPI plugins ({} --mpi=list): {e}",
                srun.display()
            )))
        }
    }
    Ok(Some(Allocation {
        job_id,
        list,
        nodes,
        cpus,
        srun,
    }))
}

/// Runs `srun --mpi=list` and returns its output (Slurm prints the list on stdout or stderr
/// depending on its version).
pub fn plugins(srun: &Path) -> Result<String, String> {
    let out = Command::new(srun)
        .arg("--mpi=list")
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}: {}", out.status, text.trim()))
    }
}

/// The plugin names in `srun --mpi=list`'s output: the indented lines after `MPI plugin types
/// are...`; versioned lines (`specific pmix plugin versions available: pmix_v4`) are not
/// plugin types.
pub fn mpi_plugins(output: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|l| !l.contains("MPI plugin types are"))
        .skip(1)
        .map(|l| l.trim().trim_start_matches("srun:").trim())
        .filter(|l| !l.is_empty() && !l.contains(' ') && !l.contains(':'))
        .map(str::to_owned)
        .collect()
}

/// Expands `SLURM_JOB_CPUS_PER_NODE` (`4(x2),2`) to one count per node.
pub fn cpus_per_node(value: &str, nodes: usize) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in value.split(',') {
        let (n, times) = match part.split_once("(x") {
            Some((n, rest)) => {
                let t = rest
                    .strip_suffix(')')
                    .and_then(|t| t.parse::<usize>().ok())
                    .ok_or_else(|| format!("cannot read {part:?}"))?;
                (n, t)
            }
            None => (part, 1),
        };
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("cannot read {part:?}"))?;
        if out.len() + times > nodes {
            return Err(format!("more counts than the {nodes} nodes"));
        }
        out.extend(std::iter::repeat_n(n, times));
    }
    if out.len() != nodes {
        return Err(format!("{} counts for {nodes} nodes", out.len()));
    }
    Ok(out)
}

impl Allocation {
    /// Checks that `p` fits the allocation: every node with ranks is one of its nodes, with no
    /// more ranks than the CPUs Slurm allocated there.
    pub fn check(&self, p: &Placement) -> Result<(), String> {
        let outside: Vec<&str> = p
            .nodes()
            .iter()
            .filter(|n| !p.ranks_on(n).is_empty() && !self.nodes.contains(n))
            .map(String::as_str)
            .collect();
        if !outside.is_empty() {
            return Err(format!(
                "the placement names {} outside the allocation of Slurm job {} ({})",
                outside.join(", "),
                self.job_id,
                self.list
            ));
        }
        for (node, &cpus) in self.nodes.iter().zip(&self.cpus) {
            let ranks = p.ranks_on(node).len();
            if ranks > cpus as usize {
                return Err(format!(
                    "the allocation of Slurm job {} is too small for the placement: {node} \
                     would hold {ranks} ranks but has {cpus} CPU{} allocated ({CPUS_VAR}); ask \
                     for more CPUs per node (e.g. --ntasks-per-node={ranks}) or more nodes",
                    self.job_id,
                    if cpus == 1 { "" } else { "s" }
                ));
            }
        }
        Ok(())
    }
}

impl Allocation {
    /// Checks that the placement `map` (rank → node) fits the allocation: its nodes are the
    /// allocation's, each holding no more ranks than its CPUs.
    pub fn check_map(&self, map: &BTreeMap<u32, String>) -> Result<(), String> {
        let outside: Vec<&str> = unique(map.values())
            .into_iter()
            .filter(|n| !self.nodes.contains(n))
            .map(String::as_str)
            .collect();
        if !outside.is_empty() {
            return Err(format!(
                "{} outside the allocation of Slurm job {} ({})",
                outside.join(", "),
                self.job_id,
                self.list
            ));
        }
        for (node, &cpus) in self.nodes.iter().zip(&self.cpus) {
            let ranks = map.values().filter(|n| *n == node).count();
            if ranks > cpus as usize {
                return Err(format!(
                    "{node} would hold {ranks} ranks but has {cpus} CPU{} allocated in Slurm \
                     job {} ({CPUS_VAR})",
                    if cpus == 1 { "" } else { "s" },
                    self.job_id
                ));
            }
        }
        Ok(())
    }
}

fn unique<'a>(names: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut out: Vec<&String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The allocation of the running `ckpt run` under srun, relative to the job directory: what
/// `ckpt migrate` and `ckpt drain` check a request against.
pub const ALLOCATION: &str = "control/allocation";

/// What [`ALLOCATION`] holds: the allocation's Slurm job, nodes and CPUs, and the nodes lost
/// in it so far.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    /// Slurm's job id.
    pub job_id: String,
    /// The allocation's hostlist.
    pub list: String,
    /// CPUs on each node, in the hostlist's order (empty: unknown).
    pub cpus: Vec<u32>,
    /// Nodes excluded after a failure (they left the allocation, failed, or failed twice).
    pub lost: Vec<String>,
}

impl Recorded {
    /// The record of `alloc` with `lost` nodes.
    pub fn of(alloc: &Allocation, lost: &[String]) -> Recorded {
        Recorded {
            job_id: alloc.job_id.clone(),
            list: alloc.list.clone(),
            cpus: alloc.cpus.clone(),
            lost: lost.to_vec(),
        }
    }

    /// Writes it into `job_dir` (privately, atomically).
    pub fn write(&self, job_dir: &Path) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let path = job_dir.join(ALLOCATION);
        let text = serde_json::to_string(self)?;
        ckpt::storage::durable::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The record in `job_dir`, if a run under srun wrote one that reads.
    pub fn read(job_dir: &Path) -> Option<Recorded> {
        let bytes = ckpt::storage::durable::read_capped(&job_dir.join(ALLOCATION), 1 << 20).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The allocation it records (`srun` is not needed to check placements).
    pub fn allocation(&self) -> Result<Allocation, String> {
        let nodes =
            crate::hostlist::parse(&self.list).map_err(|e| format!("{}: {e}", self.list))?;
        if !self.cpus.is_empty() && self.cpus.len() != nodes.len() {
            return Err(format!(
                "{} CPU counts for the {} nodes of {}",
                self.cpus.len(),
                nodes.len(),
                self.list
            ));
        }
        Ok(Allocation {
            job_id: self.job_id.clone(),
            list: self.list.clone(),
            nodes,
            cpus: self.cpus.clone(),
            srun: PathBuf::new(),
        })
    }
}

/// The hostfile of a placement: each rank's node on its own line, in rank order.
pub fn hostfile_text(p: &Placement) -> String {
    (0..p.ranks())
        .filter_map(|r| Some(format!("{}\n", p.node_of(r)?)))
        .collect()
}

/// Slurm's `srun` inside `alloc`.
#[derive(Debug, Clone)]
pub struct Srun {
    /// The allocation.
    pub alloc: Allocation,
}

impl Backend for Srun {
    fn launch(&self, plan: &RunPlan, restart_count: u32, placement: Option<&Placement>) -> Launch {
        build(plan, &self.alloc.srun, restart_count, placement)
    }

    fn failure_reader(&self) -> Box<dyn FailureReader + Send> {
        Box::new(Scanner::default())
    }

    fn forwarded(&self, sig: i32) -> i32 {
        // srun only reports its tasks' states on a single SIGINT; SIGTERM ends them.
        if sig == libc::SIGINT {
            libc::SIGTERM
        } else {
            sig
        }
    }
}

/// The srun launch of `plan` on `placement` (always given for this backend; without one srun
/// places the ranks itself).
fn build(plan: &RunPlan, srun: &Path, restart_count: u32, placement: Option<&Placement>) -> Launch {
    let mut env = plan.rank_env(restart_count);
    let mut argv: Vec<OsString> = vec![srun.into()];
    argv.push(format!("--mpi={MPI_PLUGIN}").into());
    let mut files = Vec::new();
    argv.push(format!("--ntasks={}", plan.ranks).into());
    if let Some(p) = placement {
        let hostfile = plan.job_dir.join(HOSTFILE);
        let used = p.nodes().iter().filter(|n| !p.ranks_on(n).is_empty());
        argv.push(format!("--nodes={}", used.count()).into());
        argv.push("--distribution=arbitrary".into());
        env.push((HOSTFILE_VAR, hostfile.to_string_lossy().into_owned()));
        files.push((hostfile, hostfile_text(p)));
    }
    // A rank that exits with an error ends the step (a killed one does already, through
    // PMIx), so the launcher sees the failure at once.
    argv.push("--kill-on-bad-exit=1".into());
    if let Some(exe) = &plan.exec_rank {
        // The checkpoint signal stays blocked until the library handles it (see `exec_rank`).
        argv.push(exe.clone().into());
        argv.push("exec-rank".into());
        if let Some(sig) = plan.signal {
            argv.push(format!("--hold-signal={sig}").into());
        }
        argv.push("--".into());
    }
    argv.push(plan.program.clone().into());
    argv.extend(plan.args.iter().map(OsString::from));
    Launch {
        argv,
        env,
        files,
        // The job script's task layout (`--ntasks-per-node`) is not this launch's: the
        // hostfile is.
        unset: vec![TASKS_PER_NODE_VAR],
    }
}

/// Reads srun's stderr: the first task failure (`srun: error: n2: task 3: Killed`, `...:
/// tasks 0-1: Exited with exit code 3`) and the nodes that failed (`srun: error: Node failure
/// on n2`). A task failure on a failed node is a [`Cause::NodeFailure`].
#[derive(Debug, Default)]
pub struct Scanner {
    found: Option<Failure>,
    failed_nodes: Vec<String>,
}

impl FailureReader for Scanner {
    fn feed(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("srun: error: ") else {
            return;
        };
        if let Some(node) = rest.strip_prefix("Node failure on ") {
            let node = node.trim().to_owned();
            if let Some(f) = self
                .found
                .as_mut()
                .filter(|f| f.node.as_ref() == Some(&node))
            {
                f.cause = Cause::NodeFailure;
            }
            if !self.failed_nodes.contains(&node) {
                self.failed_nodes.push(node);
            }
            return;
        }
        if self.found.is_some() {
            return;
        }
        if let Some(mut f) = task_failure(rest) {
            if f.node
                .as_ref()
                .is_some_and(|n| self.failed_nodes.contains(n))
            {
                f.cause = Cause::NodeFailure;
            }
            self.found = Some(f);
        }
    }

    fn failure(&self) -> Option<&Failure> {
        self.found.as_ref()
    }

    fn normal_banner(&self) -> bool {
        false
    }

    fn lost_nodes(&self) -> &[String] {
        &self.failed_nodes
    }
}

/// Who a failed launch is blamed on when srun reported failed nodes: `node n2 failed
/// (Slurm's report)`, with the first task failure when it was on another node (the ranks the
/// step's end killed). `None` when no node failed.
pub fn blame(failed_nodes: &[String], failure: Option<&Failure>) -> Option<String> {
    if failed_nodes.is_empty() {
        return None;
    }
    let word = if failed_nodes.len() == 1 {
        "node"
    } else {
        "nodes"
    };
    let nodes = format!("{word} {} failed (Slurm's report)", failed_nodes.join(", "));
    Some(match failure {
        Some(f) if f.cause == Cause::NodeFailure => f.to_string(),
        Some(f) => format!("{nodes}; then {f}"),
        None => nodes,
    })
}

/// `n2: task 3: Killed`, `n1: tasks 0-1,4: Exited with exit code 3`: the first task named.
fn task_failure(rest: &str) -> Option<Failure> {
    let (node, rest) = rest.split_once(": task")?;
    let rest = rest.strip_prefix('s').unwrap_or(rest).trim_start();
    let (tasks, what) = rest.split_once(": ")?;
    let end = tasks
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(tasks.len());
    let rank = tasks[..end].parse().ok()?;
    let what = what.trim();
    let cause = match what.strip_prefix("Exited with exit code ") {
        Some(code) => Cause::Exit(code.trim().parse().ok()?),
        None => Cause::Signal(signal_number(what)?, what.to_owned()),
    };
    Some(Failure {
        rank,
        node: Some(node.trim().to_owned()),
        cause,
    })
}

/// The number of a signal by the description srun prints (`strsignal`'s).
fn signal_number(name: &str) -> Option<i32> {
    const NAMES: &[(&str, i32)] = &[
        ("Hangup", 1),
        ("Interrupt", 2),
        ("Quit", 3),
        ("Illegal instruction", 4),
        ("Trace/breakpoint trap", 5),
        ("Aborted", 6),
        ("Bus error", 7),
        ("Floating point exception", 8),
        ("Killed", 9),
        ("User defined signal 1", 10),
        ("Segmentation fault", 11),
        ("User defined signal 2", 12),
        ("Broken pipe", 13),
        ("Alarm clock", 14),
        ("Terminated", 15),
    ];
    NAMES.iter().find(|(n, _)| *n == name).map(|&(_, s)| s)
}

/// Node-loss handling of one `ckpt run` under srun: the nodes excluded so far (they left the
/// allocation, failed, or their ranks failed twice) and the failures counted per node.
#[derive(Debug, Default)]
pub struct Nodes {
    excluded: Vec<String>,
    failures: BTreeMap<String, u32>,
}

impl Nodes {
    /// The nodes excluded so far in this allocation.
    pub fn excluded(&self) -> &[String] {
        &self.excluded
    }

    /// Excludes `nodes` (drained by `ckpt drain`) from the next placements.
    pub fn exclude(&mut self, nodes: &[String]) {
        for n in nodes {
            if !self.excluded.contains(n) {
                self.excluded.push(n.clone());
            }
        }
    }

    /// The placement of the next launch: the allocation's nodes (or `--nodes`, a subset),
    /// the last `--spares` of them spare, excluded nodes replaced by spares, ranks kept on the
    /// nodes of `previous` (the epoch they will restore) where they fit; checked against the
    /// allocation.
    pub fn place(
        &self,
        plan: &RunPlan,
        alloc: &Allocation,
        previous: Option<&BTreeMap<u32, String>>,
    ) -> Result<Placement, String> {
        let (nodes, per_node) = match &plan.nodes {
            Some(n) => (&n.names, n.ranks_per_node),
            None => (&alloc.nodes, None),
        };
        let p = placement::place(&placement::Request {
            ranks: plan.ranks,
            nodes,
            ranks_per_node: per_node,
            spares: plan.spares.unwrap_or(0),
            excluded: &self.excluded,
            previous,
        })
        .map_err(|e| format!("Slurm job {} ({}): {e}", alloc.job_id, alloc.list))?;
        alloc.check(&p)?;
        Ok(p)
    }

    /// After a failed launch on `used`: the nodes that left the allocation (`current`: its
    /// nodes now, if Slurm said), that srun reported failed, or (with `--spares` or
    /// `--spread-on-failure`) whose ranks failed twice, are excluded and their ranks placed
    /// elsewhere: a spare, else the survivors if allowed, else the job stops.
    pub fn after_failure(
        &mut self,
        plan: &RunPlan,
        alloc: &Allocation,
        used: &Placement,
        failure: Option<&Failure>,
        failed_nodes: &[String],
        current: Option<&[String]>,
    ) -> Verdict {
        let holding: Vec<&String> = used
            .nodes()
            .iter()
            .filter(|n| !used.ranks_on(n).is_empty())
            .collect();
        let mut lost: Vec<(String, &str)> = Vec::new();
        for node in &holding {
            if current.is_some_and(|c| !c.contains(node)) {
                lost.push(((*node).clone(), "left the allocation"));
            } else if failed_nodes.contains(node) {
                lost.push(((*node).clone(), "failed"));
            }
        }
        let handling = plan.spares.is_some() || plan.spread_on_failure;
        let mut twice = None;
        // When a node failed, the other ranks srun names were killed with the step: their
        // nodes are not to blame.
        let counted = failure.filter(|_| failed_nodes.is_empty());
        if let Some(node) = counted.and_then(|f| f.node.as_ref()) {
            let count = self.failures.entry(node.clone()).or_default();
            *count += 1;
            if *count >= 2 && handling && !lost.iter().any(|(n, _)| n == node) {
                twice = Some(node.clone());
            }
        }
        let gone = lost.len();
        lost.extend(twice.map(|n| (n, "its ranks failed twice")));
        if lost.is_empty() {
            return Verdict::Unchanged;
        }
        let mut moved = self.relocate(plan, alloc, used, &lost);
        if moved.is_err() && lost.len() > gone {
            // A node that failed twice but is still there stays when there is nowhere to go.
            lost.truncate(gone);
            if lost.is_empty() {
                return Verdict::Unchanged;
            }
            moved = self.relocate(plan, alloc, used, &lost);
        }
        match moved {
            Ok((lines, _)) => {
                self.excluded.extend(lost.into_iter().map(|(n, _)| n));
                Verdict::Moved(lines)
            }
            Err(why) => Verdict::Stop(why),
        }
    }

    /// Where the ranks of `lost` go from `used`, one line per node, or why they cannot.
    fn relocate(
        &self,
        plan: &RunPlan,
        alloc: &Allocation,
        used: &Placement,
        lost: &[(String, &str)],
    ) -> Result<(Vec<String>, Placement), String> {
        let spares_left = used
            .spares()
            .iter()
            .filter(|s| !lost.iter().any(|(n, _)| n == *s))
            .count();
        let need = lost.len();
        if need > spares_left && !plan.spread_on_failure {
            let (node, why) = &lost[spares_left.min(need - 1)];
            let ranks = list(&used.ranks_on(node));
            return Err(format!(
                "{node} {why} (Slurm job {}): ranks {ranks} have nowhere to go: no spare node \
                 is left and --spread-on-failure was not given",
                alloc.job_id
            ));
        }
        let mut next = Nodes {
            excluded: self.excluded.clone(),
            failures: BTreeMap::new(),
        };
        next.excluded.extend(lost.iter().map(|(n, _)| n.clone()));
        let p = next.place(plan, alloc, Some(&used.to_map()))?;
        let lines = lost
            .iter()
            .map(|(node, why)| {
                let ranks = used.ranks_on(node);
                let to: Vec<&str> = ranks.iter().filter_map(|&r| p.node_of(r)).collect();
                let mut to_nodes: Vec<&str> = Vec::new();
                for n in to {
                    if !to_nodes.contains(&n) {
                        to_nodes.push(n);
                    }
                }
                let spare = to_nodes.len() == 1 && !used.nodes().iter().any(|n| n == to_nodes[0]);
                let target = if spare {
                    format!("move to spare {}", to_nodes[0])
                } else {
                    format!("spread over {} (no spare left)", to_nodes.join(", "))
                };
                format!("{node} {why}: ranks {} {target}", list(&ranks))
            })
            .collect();
        Ok((lines, p))
    }

    /// The allocation's nodes now (`squeue -h -j JOB -o %N`): with `--no-kill`, a failed
    /// node leaves the allocation and the job goes on. `None` when Slurm does not answer.
    pub fn current(alloc: &Allocation) -> Option<Vec<String>> {
        let squeue = alloc.srun.with_file_name("squeue");
        let out = Command::new(&squeue)
            .args(["-h", "-j", &alloc.job_id, "-o", "%N"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let list = text.trim();
        if !out.status.success() || list.is_empty() {
            return None;
        }
        crate::hostlist::parse(list).ok()
    }
}

fn list(ranks: &[u32]) -> String {
    let v: Vec<String> = ranks.iter().map(u32::to_string).collect();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of `srun --mpi=list` (Slurm 22.05.8, Debian 12, slurm-wlm-basic-plugins).
    const LIST: &str = "MPI plugin types are...\n\tpmix\n\tnone\n\tcray_shasta\n\tpmi2\n\
                        specific pmix plugin versions available: pmix_v4\n";

    #[test]
    fn mpi_plugins_from_real_output() {
        assert_eq!(mpi_plugins(LIST), ["pmix", "none", "cray_shasta", "pmi2"]);
        assert_eq!(
            mpi_plugins("srun: MPI types are...\nMPI plugin types are...\n\tnone\n"),
            ["none"]
        );
        assert!(mpi_plugins("").is_empty());
    }

    #[test]
    fn cpus_per_node_expands_repeats() {
        assert_eq!(cpus_per_node("2(x3)", 3).unwrap(), [2, 2, 2]);
        assert_eq!(cpus_per_node("4(x2),1", 3).unwrap(), [4, 4, 1]);
        assert_eq!(cpus_per_node("8", 1).unwrap(), [8]);
        assert!(cpus_per_node("2(x3)", 2).is_err());
        assert!(cpus_per_node("2,x", 2).is_err());
        assert!(cpus_per_node("2(x", 2).is_err());
        assert!(cpus_per_node("2", 2).is_err());
    }

    /// Real stderr of srun (Slurm 22.05.8) for a rank killed by SIGKILL, and for a node set
    /// down (`scontrol update nodename=n2 state=down`) in a `--no-kill` allocation.
    const KILLED: &str = "\
srun: error: n2: task 3: Killed
slurmstepd-n2: error:  mpi/pmix_v4: _errhandler: n2 [1]: pmixp_client_v2.c:211: Error handler invoked: status = -61, source = [slurm.pmix.7.0:3]
slurmstepd-n1: error: *** STEP 7.0 ON n1 CANCELLED AT 2026-11-26T15:25:17 ***
srun: Job step aborted: Waiting up to 7 seconds for job step to finish.
srun: error: n2: task 2: Killed
srun: error: n1: tasks 0-1: Killed
";
    const NODE_DOWN: &str = "\
srun: error: Node failure on n2
srun: error: n2: tasks 2-3: Killed
srun: error: n1: tasks 0-1: Killed
srun: Force Terminated StepId=8.0
";

    fn scan(text: &str) -> Scanner {
        let mut s = Scanner::default();
        text.lines().for_each(|l| s.feed(l));
        s
    }

    #[test]
    fn failures_from_real_messages() {
        let s = scan(KILLED);
        assert_eq!(
            s.failure().map(ToString::to_string).as_deref(),
            Some("rank 3 exited on signal 9 (Killed) on node n2")
        );
        assert!(s.lost_nodes().is_empty());
        let s = scan(NODE_DOWN);
        assert_eq!(
            s.failure().map(ToString::to_string).as_deref(),
            Some("rank 2 was lost with its node (Slurm: node failure) on node n2")
        );
        assert_eq!(s.lost_nodes(), ["n2"]);
        assert_eq!(
            blame(s.lost_nodes(), s.failure()).as_deref(),
            Some("rank 2 was lost with its node (Slurm: node failure) on node n2")
        );
        // The failed node's own tasks not reported: the node first, then what srun said.
        let s = scan(
            "srun: error: Node failure on n2
srun: error: n1: tasks 0-1: Killed
",
        );
        assert_eq!(
            blame(s.lost_nodes(), s.failure()).as_deref(),
            Some("node n2 failed (Slurm's report); then rank 0 exited on signal 9 (Killed) on node n1")
        );
        assert_eq!(blame(&[], s.failure()), None);
        // The node failure reported after the task's: still the node's.
        let s = scan("srun: error: n4: task 5: Killed\nsrun: error: Node failure on n4\n");
        assert_eq!(s.failure().unwrap().cause, Cause::NodeFailure);
        let s = scan("srun: error: n1: tasks 0,2: Exited with exit code 3\n");
        assert_eq!(
            s.failure().map(ToString::to_string).as_deref(),
            Some("rank 0 exited with code 3 on node n1")
        );
        let s = scan("srun: error: n3: task 1: Segmentation fault\n");
        assert_eq!(
            s.failure().unwrap().cause,
            Cause::Signal(11, "Segmentation fault".into())
        );
        // Lines that only look alike.
        for text in [
            "srun: error: n3: task x: Killed",
            "heat2d: srun: error: n2: task 3: Killed",
            "srun: error: Unable to create step for job 6: More processors requested",
            "srun: error: n3: task 1: Something new",
        ] {
            assert!(scan(text).failure().is_none(), "{text}");
        }
    }

    fn env() -> SlurmEnv {
        SlurmEnv {
            job_id: Some("12".into()),
            nodelist: Some("n[1-3]".into()),
            cpus_per_node: Some("2(x3)".into()),
            srun: Some("/usr/bin/srun".into()),
            mpi_list: |_| Ok(LIST.into()),
        }
    }

    #[test]
    fn the_backend_is_chosen_from_the_environment() {
        let alloc = choose(Choice::Auto, &env(), false).unwrap().unwrap();
        assert_eq!(alloc.nodes, ["n1", "n2", "n3"]);
        assert_eq!(alloc.cpus, [2, 2, 2]);
        assert_eq!(choose(Choice::Auto, &env(), true).unwrap(), None);
        assert_eq!(choose(Choice::Mpirun, &env(), false).unwrap(), None);
        let outside = SlurmEnv {
            job_id: None,
            ..env()
        };
        assert_eq!(choose(Choice::Auto, &outside, false).unwrap(), None);
        let no_srun = SlurmEnv {
            srun: None,
            ..env()
        };
        assert_eq!(choose(Choice::Auto, &no_srun, false).unwrap(), None);
        let err = |c, e: &SlurmEnv, emulated| choose(c, e, emulated).unwrap_err().0;
        assert!(
            err(Choice::Srun, &outside, false).contains("not inside a Slurm allocation"),
            "{}",
            err(Choice::Srun, &outside, false)
        );
        assert!(err(Choice::Srun, &no_srun, false).contains("srun not found in PATH"));
        assert!(err(Choice::Srun, &env(), true).contains("--emulate-nodes"));
        let no_pmix = SlurmEnv {
            mpi_list: |_| Ok("MPI plugin types are...\n\tnone\n\tpmi2\n".into()),
            ..env()
        };
        assert_eq!(
            err(Choice::Srun, &no_pmix, false),
            "--backend srun: Slurm's pmix MPI plugin is not available here (srun --mpi=list \
             offers: none, pmi2); Open MPI's ranks need it to start under srun: install it \
             (Debian: slurm-wlm-basic-plugins), or use --backend mpirun"
        );
        let failing = SlurmEnv {
            mpi_list: |_| Err("exit status: 1: no controller".into()),
            ..env()
        };
        assert!(err(Choice::Auto, &failing, false).contains("cannot list Slurm's MPI plugins"));
        let bad_list = SlurmEnv {
            nodelist: Some("n[3-1]".into()),
            ..env()
        };
        assert!(err(Choice::Srun, &bad_list, false).starts_with("SLURM_JOB_NODELIST=n[3-1]: "));
        let bad_cpus = SlurmEnv {
            cpus_per_node: Some("2(x2)".into()),
            ..env()
        };
        assert!(err(Choice::Srun, &bad_cpus, false).starts_with("SLURM_JOB_CPUS_PER_NODE=2(x2): "));
    }

    fn placed(nodes: &[&str], spares: u32, excluded: &[&str], ranks: u32) -> Placement {
        let nodes: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        let excluded: Vec<String> = excluded.iter().map(|s| s.to_string()).collect();
        placement::place(&placement::Request {
            ranks,
            nodes: &nodes,
            ranks_per_node: None,
            spares,
            excluded: &excluded,
            previous: None,
        })
        .unwrap()
    }

    #[test]
    fn placements_are_checked_against_the_allocation() {
        let alloc = choose(Choice::Srun, &env(), false).unwrap().unwrap();
        let p = placed(&["n1", "n3"], 0, &[], 4);
        assert_eq!(alloc.check(&p), Ok(()));
        assert_eq!(hostfile_text(&p), "n1\nn1\nn3\nn3\n");
        assert_eq!(
            alloc.check(&placed(&["n1", "n2"], 0, &[], 5)).unwrap_err(),
            "the allocation of Slurm job 12 is too small for the placement: n1 would hold 3 \
             ranks but has 2 CPUs allocated (SLURM_JOB_CPUS_PER_NODE); ask for more CPUs per \
             node (e.g. --ntasks-per-node=3) or more nodes"
        );
        assert_eq!(
            alloc
                .check(&placed(&["n1", "n5", "n7"], 0, &[], 3))
                .unwrap_err(),
            "the placement names n5, n7 outside the allocation of Slurm job 12 (n[1-3])"
        );
        // A node outside the allocation without ranks is no harm.
        assert_eq!(alloc.check(&placed(&["n1", "n9"], 0, &[], 1)), Ok(()));
    }

    fn alloc() -> Allocation {
        choose(Choice::Srun, &env(), false).unwrap().unwrap()
    }

    /// What `ckpt migrate` checks a new placement against: the recorded allocation (read
    /// back as written), its nodes and its CPUs.
    #[test]
    fn migrations_are_checked_against_the_recorded_allocation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("control")).unwrap();
        assert_eq!(Recorded::read(dir.path()), None);
        let rec = Recorded::of(&alloc(), &["n2".into()]);
        rec.write(dir.path()).unwrap();
        let back = Recorded::read(dir.path()).unwrap();
        assert_eq!(back, rec);
        let a = back.allocation().unwrap();
        assert_eq!(a.nodes, ["n1", "n2", "n3"]);
        let map = |pairs: &[(u32, &str)]| -> BTreeMap<u32, String> {
            pairs.iter().map(|&(r, n)| (r, n.to_owned())).collect()
        };
        assert_eq!(
            a.check_map(&map(&[(0, "n1"), (1, "n1"), (2, "n3")])),
            Ok(())
        );
        assert_eq!(
            a.check_map(&map(&[(0, "n1"), (1, "n1"), (2, "n1")])),
            Err(
                "n1 would hold 3 ranks but has 2 CPUs allocated in Slurm job 12 \
                 (SLURM_JOB_CPUS_PER_NODE)"
                    .into()
            )
        );
        assert_eq!(
            a.check_map(&map(&[(0, "n4"), (1, "n1"), (2, "n4")])),
            Err("n4 outside the allocation of Slurm job 12 (n[1-3])".into())
        );
        let bad = Recorded {
            cpus: vec![2],
            ..rec
        };
        assert!(bad
            .allocation()
            .unwrap_err()
            .contains("1 CPU counts for the 3 nodes"));
    }

    fn shown(p: &Placement) -> String {
        let nodes: Vec<String> = p
            .nodes()
            .iter()
            .map(|n| format!("{n}:{}", list(&p.ranks_on(n))))
            .collect();
        format!("{} | spares {}", nodes.join(" "), p.spares().join(","))
    }

    fn kill(rank: u32, node: &str) -> Failure {
        Failure {
            rank,
            node: Some(node.into()),
            cause: Cause::Signal(9, "Killed".into()),
        }
    }

    /// A node that left the allocation: its ranks go to the spare, and it is never used
    /// again; with no spare left the job stops naming the node, unless spreading is allowed.
    #[test]
    fn a_node_that_left_the_allocation_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = crate::testutil::plan(dir.path(), 4);
        plan.spares = Some(1);
        let a = alloc();
        let mut nodes = Nodes::default();
        let used = nodes.place(&plan, &a, None).unwrap();
        assert_eq!(shown(&used), "n1:0, 1 n2:2, 3 | spares n3");
        // A rank killed on a node still in the allocation: relaunch in place.
        let n1_n2_n3: Vec<String> = a.nodes.clone();
        let v = nodes.after_failure(&plan, &a, &used, Some(&kill(2, "n2")), &[], Some(&n1_n2_n3));
        assert!(matches!(v, Verdict::Unchanged));
        // n2 left the allocation (set down in a --no-kill job).
        let left = ["n1".to_string(), "n3".to_string()];
        let v = nodes.after_failure(&plan, &a, &used, None, &["n2".into()], Some(&left));
        let Verdict::Moved(lines) = v else {
            panic!("not moved")
        };
        assert_eq!(
            lines,
            ["n2 left the allocation: ranks 2, 3 move to spare n3"]
        );
        let prev = used.to_map();
        let next = nodes.place(&plan, &a, Some(&prev)).unwrap();
        assert_eq!(shown(&next), "n1:0, 1 n3:2, 3 | spares ");
        // Then n3 fails too: no spare is left.
        let v = nodes.after_failure(&plan, &a, &next, None, &["n3".into()], Some(&left));
        let Verdict::Stop(why) = v else {
            panic!("not stopped")
        };
        assert_eq!(
            why,
            "n3 failed (Slurm job 12): ranks 2, 3 have nowhere to go: no spare node is left \
             and --spread-on-failure was not given"
        );
        // With --spread-on-failure they go over the survivors (2 CPUs each: n1 is full).
        plan.spread_on_failure = true;
        plan.ranks = 2;
        let used = nodes.place(&plan, &a, None).unwrap();
        assert_eq!(shown(&used), "n1:0 n3:1 | spares ");
        let v = nodes.after_failure(&plan, &a, &used, None, &["n3".into()], Some(&left));
        let Verdict::Moved(lines) = v else {
            panic!("not moved")
        };
        assert_eq!(lines, ["n3 failed: ranks 1 spread over n1 (no spare left)"]);
        assert_eq!(
            shown(&nodes.place(&plan, &a, None).unwrap()),
            "n1:0, 1 | spares "
        );
    }

    /// A node whose ranks failed twice is excluded when lost nodes are handled (--spares or
    /// --spread-on-failure), and kept when there is nowhere to go.
    #[test]
    fn a_node_whose_ranks_failed_twice_is_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = crate::testutil::plan(dir.path(), 4);
        let a = alloc();
        let all = a.nodes.clone();
        let mut nodes = Nodes::default();
        let used = nodes.place(&plan, &a, None).unwrap();
        assert_eq!(shown(&used), "n1:0, 1 n2:2 n3:3 | spares ");
        for _ in 0..3 {
            let v = nodes.after_failure(&plan, &a, &used, Some(&kill(3, "n3")), &[], Some(&all));
            assert!(
                matches!(v, Verdict::Unchanged),
                "no handling without the flags"
            );
        }
        plan.spares = Some(1);
        let mut nodes = Nodes::default();
        let used = nodes.place(&plan, &a, None).unwrap();
        let f = kill(2, "n2");
        let v = nodes.after_failure(&plan, &a, &used, Some(&f), &[], Some(&all));
        assert!(matches!(v, Verdict::Unchanged), "once is no pattern");
        let v = nodes.after_failure(&plan, &a, &used, Some(&f), &[], Some(&all));
        let Verdict::Moved(lines) = v else {
            panic!("not moved")
        };
        assert_eq!(
            lines,
            ["n2 its ranks failed twice: ranks 2, 3 move to spare n3"]
        );
        // Twice again on n3, no spare left and no spreading: it stays.
        let used = nodes.place(&plan, &a, Some(&used.to_map())).unwrap();
        let f = kill(2, "n3");
        for _ in 0..2 {
            let v = nodes.after_failure(&plan, &a, &used, Some(&f), &[], Some(&all));
            assert!(matches!(v, Verdict::Unchanged));
        }
        // Ranks killed with the step of a failed node do not count against their node.
        let mut nodes = Nodes::default();
        let used = nodes.place(&plan, &a, None).unwrap();
        let f = kill(2, "n2");
        for _ in 0..2 {
            let v = nodes.after_failure(&plan, &a, &used, Some(&f), &["n9".into()], Some(&all));
            assert!(matches!(v, Verdict::Unchanged));
        }
        // Slurm did not answer: only srun's reports count.
        let v = nodes.after_failure(&plan, &a, &used, None, &["n1".into()], None);
        let Verdict::Moved(lines) = v else {
            panic!("not moved")
        };
        assert_eq!(lines, ["n1 failed: ranks 0, 1 move to spare n3"]);
    }

    /// `ckpt run` flags under srun, validated against an allocation of n[1-3].
    fn run(argv: &str) -> Result<RunPlan, String> {
        use crate::cli::{self, Command as Cmd};
        use crate::plan::Context;
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context {
            cwd: dir.path().to_path_buf(),
            path: Some("/bin:/usr/bin".into()),
            mpirun_args: None,
            inherited: vec![],
            now_unix_s: 0,
            pid: 1,
            signal: None,
            exe: Some("/opt/ckpt".into()),
            group_access: None,
            resolves: |_| false,
            slurm: env(),
            end_vars: vec![],
        };
        let full = format!("ckpt run {argv}");
        let Cmd::Run(args) = cli::parse(full.split_whitespace().map(OsString::from))
            .unwrap()
            .command
        else {
            panic!("not a run command")
        };
        RunPlan::new(args, &ctx).map_err(|e| e.0)
    }

    #[test]
    fn run_flags_under_srun() {
        let p = run("-n 4 --spares 1 --job-dir j -- /bin/true").unwrap();
        assert_eq!(p.srun.as_ref().map(|a| a.nodes.len()), Some(3));
        // The placement must fit the CPUs Slurm allocated (2 per node here).
        assert_eq!(
            run("-n 7 --job-dir j -- /bin/true").unwrap_err(),
            "-n 7: the allocation of Slurm job 12 is too small for the placement: n1 would \
             hold 3 ranks but has 2 CPUs allocated (SLURM_JOB_CPUS_PER_NODE); ask for more \
             CPUs per node (e.g. --ntasks-per-node=3) or more nodes"
        );
        assert_eq!(
            run("-n 4 --spares 2 --job-dir j -- /bin/true").unwrap_err(),
            "-n 4: the allocation of Slurm job 12 is too small for the placement: n1 would \
             hold 4 ranks but has 2 CPUs allocated (SLURM_JOB_CPUS_PER_NODE); ask for more \
             CPUs per node (e.g. --ntasks-per-node=4) or more nodes"
        );
        // mpirun need not exist; --mpirun-arg is refused.
        let p = run("-n 4 --mpirun /no/mpirun --job-dir j -- /bin/true").unwrap();
        assert!(p.srun.is_some());
        assert_eq!(
            run("-n 4 --mpirun-arg --oversubscribe --job-dir j -- /bin/true").unwrap_err(),
            "--mpirun-arg --oversubscribe: srun starts the ranks (inside Slurm job 12); give \
             --backend mpirun to use mpirun"
        );
        // --nodes: a subset of the allocation (Slurm's names need not resolve here).
        let p = run("-n 4 --nodes n[2-3] --job-dir j -- /bin/true").unwrap();
        assert_eq!(p.nodes.unwrap().names, ["n2", "n3"]);
        assert_eq!(
            run("-n 4 --nodes n[3-5] --job-dir j -- /bin/true").unwrap_err(),
            "--nodes n[3-5]: n4, n5 not in the allocation of Slurm job 12 (n[1-3])"
        );
        // Emulated nodes stay with mpirun (auto), and --backend srun refuses them.
        let p = run("-n 4 --emulate-nodes 2 --mpirun /bin/true --job-dir j -- /bin/true");
        assert!(p.unwrap().srun.is_none());
        assert!(
            run("-n 4 --backend srun --emulate-nodes 2 --job-dir j -- /bin/true")
                .unwrap_err()
                .contains("--emulate-nodes")
        );
        assert_eq!(
            run("-n 4 --backend slurm --job-dir j -- /bin/true").unwrap_err(),
            "--backend slurm: expected mpirun, srun or auto"
        );
        // mpirun chosen: spares need nodes to choose from.
        assert_eq!(
            run("-n 4 --backend mpirun --mpirun /bin/true --spares 1 --job-dir j -- /bin/true")
                .unwrap_err(),
            "--spares: needs nodes to choose from (--nodes HOSTLIST, --emulate-nodes N, or the \
             srun backend inside a Slurm allocation)"
        );
    }

    /// The srun command line: the hostfile in the control directory, passed through
    /// SLURM_HOSTFILE, the job script's tasks per node unset.
    #[test]
    fn the_srun_command_line() {
        let p = run("-n 3 --job-dir j -- /bin/true").unwrap();
        let a = p.srun.clone().unwrap();
        let placement = Nodes::default().place(&p, &a, None).unwrap();
        let l = Srun { alloc: a }.launch(&p, 2, Some(&placement));
        let d = p.job_dir.parent().unwrap().display().to_string();
        let argv: Vec<String> = l
            .argv()
            .iter()
            .map(|s| s.to_string_lossy().replace(&d, "D"))
            .collect();
        assert_eq!(
            argv.join(" "),
            "/usr/bin/srun --mpi=pmix --ntasks=3 --nodes=3 --distribution=arbitrary \
             --kill-on-bad-exit=1 /opt/ckpt exec-rank --hold-signal=10 -- /bin/true"
        );
        let hostfile = p.job_dir.join(HOSTFILE);
        assert_eq!(l.files(), [(hostfile.clone(), "n1\nn2\nn3\n".to_owned())]);
        assert!(l
            .env()
            .contains(&(HOSTFILE_VAR, hostfile.display().to_string())));
        assert!(l.env().contains(&(ckpt::env::RESTART_COUNT, "2".into())));
        let cmd = l.command();
        let removed: Vec<_> = cmd.get_envs().filter(|(_, v)| v.is_none()).collect();
        assert_eq!(removed, [(std::ffi::OsStr::new(TASKS_PER_NODE_VAR), None)]);
    }
}
