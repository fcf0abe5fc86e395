//! Validation of `ckpt run` flags into a [`RunPlan`] the rest of the launcher trusts: numbers
//! in range, interval and fault specs parsed by libckpt, the program and mpirun resolved to
//! executable files, the job directory made absolute. Every error names the flag and value.
//!
//! This is the only module that reads the launcher's own environment (through [`Context`]),
//! so validation is a pure function of the flags and a context that tests build by hand.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ckpt::fault::Fault;
use ckpt::levels::LevelPolicy;
use ckpt::storage::durable::Access;
use ckpt::{env, Interval};

use crate::backend::mpirun;
use crate::backend::srun::{self, Allocation, SlurmEnv};
use crate::cli::{LevelArgs, RunArgs};
use crate::clock;
use crate::deadline::{self, EndSource};
use crate::placement::{self, PlaceError, Placement};
use crate::UsageError;

/// What validation needs from the outside world.
#[derive(Debug, Clone)]
pub struct Context {
    /// Working directory; relative paths are taken from here.
    pub cwd: PathBuf,
    /// `$PATH`, to resolve the program and mpirun.
    pub path: Option<OsString>,
    /// The value of [`mpirun::ARGS_VAR`], if set.
    pub mpirun_args: Option<String>,
    /// Rank-contract variables ([`ckpt::env::ALL`]) set in the launcher's environment, with
    /// their values.
    pub inherited: Vec<(&'static str, String)>,
    /// Current time, seconds since the Unix epoch (names the default job directory).
    pub now_unix_s: u64,
    /// The launcher's process id (names the default job directory).
    pub pid: u32,
    /// The value of `CKPT_SIGNAL`, if set.
    pub signal: Option<String>,
    /// The `ckpt` executable, which starts each rank (`ckpt exec-rank`); `None` if unknown.
    pub exe: Option<PathBuf>,
    /// The value of `CKPT_GROUP_ACCESS`, if set.
    pub group_access: Option<String>,
    /// Whether a host name resolves (checked for `--nodes` before anything starts).
    pub resolves: fn(&str) -> bool,
    /// Slurm's allocation, if the launcher runs inside one (the srun backend).
    pub slurm: SlurmEnv,
    /// Slurm's variables that tell the job's end time ([`deadline::SLURM_END_VAR`],
    /// [`deadline::SLURM_JOB_VAR`]) that are set, with their values.
    pub end_vars: Vec<(&'static str, String)>,
}

/// The addresses `host` resolves to here (none when it does not).
fn addresses(host: &str) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .map(|a| a.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

/// Whether `host` resolves to an address here (DNS, `/etc/hosts`).
fn resolves(host: &str) -> bool {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some())
}

impl Context {
    /// The context of this process.
    pub fn current() -> anyhow::Result<Self> {
        Ok(Context {
            cwd: std::env::current_dir().context("cannot determine the current directory")?,
            path: std::env::var_os("PATH"),
            mpirun_args: env::get(mpirun::ARGS_VAR),
            inherited: env::ALL
                .iter()
                .filter_map(|&name| env::get(name).map(|v| (name, v)))
                .collect(),
            now_unix_s: ckpt::util::unix_ms() / 1000,
            pid: std::process::id(),
            signal: env::get(env::SIGNAL),
            exe: std::env::current_exe().ok(),
            group_access: env::get(env::GROUP_ACCESS),
            resolves,
            slurm: SlurmEnv {
                job_id: env::get(srun::JOB_ID_VAR),
                nodelist: env::get(srun::NODELIST_VAR),
                cpus_per_node: env::get(srun::CPUS_VAR),
                srun: find_in_path("srun", std::env::var_os("PATH").as_deref()),
                mpi_list: srun::plugins,
            },
            end_vars: [deadline::SLURM_END_VAR, deadline::SLURM_JOB_VAR]
                .into_iter()
                .filter_map(|name| std::env::var(name).ok().map(|v| (name, v)))
                .collect(),
        })
    }
}

/// A validated `ckpt run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// Ranks (at least 1).
    pub ranks: u32,
    /// Checkpoint interval; `None` leaves it to the application (or an inherited variable).
    pub every: Option<Interval>,
    /// Committed epochs to keep (at least 1).
    pub keep: u32,
    /// Relaunches allowed after failures.
    pub max_restarts: u32,
    /// Absolute job directory.
    pub job_dir: PathBuf,
    /// Job identifier. Provisionally the job directory's name: `supervise` replaces it with the
    /// id recorded in `job.json` (`jobdir::prepare`) before any rank starts.
    pub job_id: String,
    /// Absolute base of node-local storage, if given.
    pub local_dir: Option<PathBuf>,
    /// Emulated nodes (`--emulate-nodes`, `1..=ranks`): each rank gets its node and node-local
    /// directory from `ckpt exec-rank` (see [`crate::exec_rank`]).
    pub emulate_nodes: Option<u32>,
    /// Spare emulated nodes (`--spares`, the last ones; fewer than `emulate_nodes`); given,
    /// even 0, it turns on the handling of lost nodes ([`crate::spares`]).
    pub spares: Option<u32>,
    /// `--spread-on-failure`: a lost node's ranks may go to survivors when no spare is left.
    pub spread_on_failure: bool,
    /// Real nodes (`--nodes`, `--ranks-per-node`); `None`: this machine (or, under srun,
    /// the whole allocation).
    pub nodes: Option<RealNodes>,
    /// The Slurm allocation the ranks start in with srun (`--backend`); `None`: mpirun.
    pub srun: Option<Allocation>,
    /// L2 partner copies every this many epochs (`--l2-every`, 0 = off); `None`: left to
    /// the ranks (an inherited variable, else the library's default).
    pub l2_every: Option<u64>,
    /// L4 copies on shared storage every this many epochs (`--l4-every`, 0 = off); `None`:
    /// left to the ranks.
    pub l4_every: Option<u64>,
    /// L3 and per-level retention flags (`None`: left to the ranks).
    pub level_flags: LevelFlags,
    /// Absolute base of shared (L4) storage: `--shared-dir`, else the one `job.json` records
    /// (a resume keeps it), else an inherited `CKPT_SHARED_DIR`; `None`: `<job dir>/shared`.
    pub shared_dir: Option<PathBuf>,
    /// The level policy the ranks will read (what the launcher sets, then inherited variables,
    /// then the library's defaults), for the start line.
    pub levels: LevelPolicy,
    /// Fault spec, checked by [`Fault::parse`] and against the rank count.
    pub fault: Option<String>,
    /// Say so when the job logs no event for this long (`--quiet-after`); `None`: never.
    pub quiet_after: Option<Duration>,
    /// Stop a launch whose ranks have not all started after this long (`--start-timeout`);
    /// `None`: never.
    pub start_timeout: Option<Duration>,
    /// mpirun, resolved to an executable file.
    pub mpirun: PathBuf,
    /// Extra mpirun arguments from [`mpirun::ARGS_VAR`], split on whitespace.
    pub mpirun_env_args: Vec<String>,
    /// Extra mpirun arguments from `--mpirun-arg`, in order (after the former).
    pub mpirun_args: Vec<String>,
    /// The program, resolved to an absolute executable file.
    pub program: PathBuf,
    /// The program's arguments.
    pub args: Vec<String>,
    /// Rank-contract variables inherited from the launcher's environment that the launcher
    /// does not set itself; forwarded to remote ranks unchanged.
    pub inherited: Vec<&'static str>,
    /// The job's checkpoint signal (`CKPT_SIGNAL`, default SIGUSR1; `None` when off).
    pub signal: Option<i32>,
    /// The signal that makes the launcher ask the job to checkpoint and stop
    /// (`--exit-signal`, default SIGUSR1; `None` when off).
    pub exit_signal: Option<i32>,
    /// Where the end time comes from (`--end-time`), for the last checkpoint before it.
    pub end_time: EndSource,
    /// `--end-margin`: kept free before the end time for the request and the stop.
    pub end_margin: Duration,
    /// The `ckpt` executable that starts each rank with [`RunPlan::signal`] blocked
    /// (`ckpt exec-rank`); `None` starts the program directly.
    pub exec_rank: Option<PathBuf>,
    /// Who may read the job's files (`CKPT_GROUP_ACCESS`; private by default).
    pub access: Access,
    /// Set on the plan of a launch started ahead of time (see `supervise::Held`).
    pub hold: Option<Hold>,
}

/// What a launch started ahead of a migration's relaunch waits for, and where its emulated
/// ranks find their placement (`CKPT_HOLD_UNTIL`, `CKPT_PLACEMENT_FILE`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// The file whose appearance releases the ranks.
    pub go: PathBuf,
    /// The placement the launch will have.
    pub placement: PathBuf,
    /// Ranks it moves to another node: each takes its file from the rank it replaces
    /// (`CKPT_HANDOFF_RANKS`, see `ckpt::handoff`).
    pub moving: Vec<u32>,
}

/// `--nodes` and `--ranks-per-node`, validated: distinct names that resolve, and room for
/// every rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealNodes {
    /// The hostlist as given.
    pub list: String,
    /// Its names, in order.
    pub names: Vec<String>,
    /// `--ranks-per-node`: each node's slots.
    pub ranks_per_node: Option<u32>,
    /// `--spares`: the last names hold no rank until a node is lost.
    pub spares: u32,
    /// Whether two of the names are one machine (they share an address): Open MPI folds them
    /// into one node whose slots do not add up, so the launch needs `--oversubscribe`.
    pub one_machine: bool,
}

impl RealNodes {
    /// Validates `--nodes LIST` for `ranks` ranks; each error names the flag and the list.
    fn new(
        list: &str,
        ranks_per_node: Option<u32>,
        spares: u32,
        ranks: u32,
        ctx: &Context,
        alloc: Option<&Allocation>,
    ) -> Result<RealNodes, UsageError> {
        let bad = |e: &dyn std::fmt::Display| UsageError(format!("--nodes {list}: {e}"));
        let names = crate::hostlist::parse(list).map_err(|e| bad(&e))?;
        let one_machine = placement::shares_address(&names, addresses);
        let nodes = RealNodes {
            list: list.to_owned(),
            names,
            ranks_per_node,
            spares,
            one_machine,
        };
        nodes.place(ranks, None, &[]).map_err(|e| bad(&e))?;
        if let Some(alloc) = alloc {
            // Slurm knows its nodes by these names; they need not resolve here.
            let outside: Vec<&str> = nodes
                .names
                .iter()
                .map(String::as_str)
                .filter(|n| !alloc.nodes.iter().any(|a| a == n))
                .collect();
            if !outside.is_empty() {
                return Err(bad(&format_args!(
                    "{} not in the allocation of Slurm job {} ({})",
                    outside.join(", "),
                    alloc.job_id,
                    alloc.list
                )));
            }
            return Ok(nodes);
        }
        let unknown: Vec<&str> = nodes
            .names
            .iter()
            .map(String::as_str)
            .filter(|n| !(ctx.resolves)(n))
            .collect();
        if !unknown.is_empty() {
            return Err(bad(&format_args!(
                "cannot resolve {} (no address for {} here: check the names, or /etc/hosts \
                 and DNS)",
                unknown.join(", "),
                if unknown.len() == 1 { "it" } else { "them" }
            )));
        }
        Ok(nodes)
    }

    /// The placement of `ranks` ranks off the `excluded` nodes, keeping ranks on their node
    /// in `previous` where they fit.
    pub fn place(
        &self,
        ranks: u32,
        previous: Option<&BTreeMap<u32, String>>,
        excluded: &[String],
    ) -> Result<Placement, PlaceError> {
        placement::place(&placement::Request {
            ranks,
            nodes: &self.names,
            ranks_per_node: self.ranks_per_node,
            spares: self.spares,
            excluded,
            previous,
        })
    }
}

/// `ckpt run`'s L3 and retention flags, validated; each `None` when not given (left to an
/// inherited variable, else the library's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelFlags {
    /// `--l3-every` (0 = off).
    pub l3_every: Option<u64>,
    /// `--l3-group` (at least 2).
    pub l3_group: Option<u64>,
    /// `--l3-parity` (at least 1, less than the group).
    pub l3_parity: Option<u64>,
    /// `--keep-l2` (at least 1).
    pub keep_l2: Option<u64>,
    /// `--keep-l3` (at least 1).
    pub keep_l3: Option<u64>,
    /// `--keep-l4` (at least 1).
    pub keep_l4: Option<u64>,
}

impl LevelFlags {
    /// Validates the flags as typed (bounds of each alone; parity against the group is
    /// checked on the policy the ranks will read, see [`check_parity`]).
    fn new(a: &LevelArgs) -> Result<LevelFlags, UsageError> {
        let at_least = |flag: &str, v: &Option<String>, min: u64, what: &str| {
            v.as_deref()
                .map(|s| match s.trim().parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => Err(UsageError(format!("{flag} {s}: expected {what}"))),
                })
                .transpose()
        };
        let keep = "a whole number of epochs >= 1";
        Ok(LevelFlags {
            l3_every: a
                .l3_every
                .as_deref()
                .map(|s| level_every("--l3-every", "L3", s))
                .transpose()?,
            l3_group: at_least("--l3-group", &a.l3_group, 2, "a whole number of ranks >= 2")?,
            l3_parity: at_least(
                "--l3-parity",
                &a.l3_parity,
                1,
                "a whole number of parity shards >= 1",
            )?,
            keep_l2: at_least("--keep-l2", &a.keep_l2, 1, keep)?,
            keep_l3: at_least("--keep-l3", &a.keep_l3, 1, keep)?,
            keep_l4: at_least("--keep-l4", &a.keep_l4, 1, keep)?,
        })
    }

    /// The variables these flags set for the ranks.
    fn vars(&self) -> Vec<(&'static str, String)> {
        [
            (env::L3_EVERY, self.l3_every),
            (env::L3_GROUP, self.l3_group),
            (env::L3_PARITY, self.l3_parity),
            (env::KEEP_L2, self.keep_l2),
            (env::KEEP_L3, self.keep_l3),
            (env::KEEP_L4, self.keep_l4),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v.to_string())))
        .collect()
    }

    /// The flags given, as typed, for the resume hint.
    pub fn argv(&self) -> Vec<String> {
        let flags = [
            ("--l3-every", self.l3_every),
            ("--l3-group", self.l3_group),
            ("--l3-parity", self.l3_parity),
            ("--keep-l2", self.keep_l2),
            ("--keep-l3", self.keep_l3),
            ("--keep-l4", self.keep_l4),
        ];
        flags
            .into_iter()
            .filter_map(|(f, v)| v.map(|v| [f.to_owned(), v.to_string()]))
            .flatten()
            .collect()
    }
}

/// Refuses an L3 parity count the group cannot hold (at least one data segment per set),
/// naming where each value comes from (flag, inherited variable, or default).
fn check_parity(levels: &LevelPolicy, flags: &LevelFlags) -> Result<(), UsageError> {
    let (k, g) = (usize::from(levels.parity_k), levels.parity_group);
    if k < g {
        return Ok(());
    }
    let from = |given: Option<u64>, flag: &str, var: &str| match given {
        Some(_) => flag.to_owned(),
        None => format!("{var} or the default"),
    };
    Err(UsageError(format!(
        "L3 parity {k} ({}) in groups of {g} ({}): the parity shards per set must be fewer \
         than the ranks per group (1 to {})",
        from(flags.l3_parity, "--l3-parity", env::L3_PARITY),
        from(flags.l3_group, "--l3-group", env::L3_GROUP),
        g.saturating_sub(1)
    )))
}

impl RunPlan {
    /// Validates `args` in `ctx`.
    pub fn new(args: RunArgs, ctx: &Context) -> Result<RunPlan, UsageError> {
        if args.ranks == 0 {
            return Err(UsageError("-n 0: a job needs at least one rank".into()));
        }
        if args.ranks > MAX_RANKS {
            return Err(UsageError(format!(
                "-n {}: at most {MAX_RANKS} ranks (MPI ranks are C ints)",
                args.ranks
            )));
        }
        if args.max_restarts > MAX_RESTARTS {
            return Err(UsageError(format!(
                "--max-restarts {}: at most {MAX_RESTARTS}",
                args.max_restarts
            )));
        }
        let every = args.every.as_deref().map(every).transpose()?;
        if args.keep == 0 {
            return Err(UsageError(
                "--keep 0: at least one committed epoch must be kept".into(),
            ));
        }
        if let Some(spec) = &args.fault {
            let fault =
                Fault::parse(spec).map_err(|e| UsageError(format!("--fault {spec}: {e}")))?;
            if fault.at == Some(0) {
                return Err(UsageError(format!(
                    "--fault {spec}: N counts epochs or polls from 1; 0 would never fire"
                )));
            }
            if fault.rank as u32 >= args.ranks {
                return Err(UsageError(format!(
                    "--fault {spec}: rank {} does not exist in a {}-rank job (ranks 0..{})",
                    fault.rank,
                    args.ranks,
                    args.ranks - 1
                )));
            }
        }
        let quiet_after = args
            .quiet_after
            .as_deref()
            .map(quiet_after)
            .transpose()?
            .flatten();
        let (prog, prog_args) = args.command.split_first().ok_or_else(|| {
            UsageError("no program given (ckpt run -n N -- PROG [ARGS...])".into())
        })?;
        let program = resolve("PROG", Path::new(prog), ctx)?;
        let choice = srun::Choice::parse(&args.backend)?;
        let alloc = srun::choose(choice, &ctx.slurm, args.emulate_nodes.is_some())?;
        let mpirun = match &alloc {
            None => resolve("--mpirun", &args.mpirun, ctx)?,
            Some(a) => {
                if let Some(arg) = args.mpirun_args.first() {
                    return Err(UsageError(format!(
                        "--mpirun-arg {arg}: srun starts the ranks (inside Slurm job {}); give \
                         --backend mpirun to use mpirun",
                        a.job_id
                    )));
                }
                args.mpirun.clone()
            }
        };
        if let Some(n) = args.emulate_nodes {
            if n == 0 || n > args.ranks {
                return Err(UsageError(format!(
                    "--emulate-nodes {n}: give 1 to {} nodes, so that each holds a rank",
                    args.ranks
                )));
            }
            if let Some(s) = args.spares.filter(|&s| s >= n) {
                return Err(UsageError(format!(
                    "--spares {s}: give fewer spares than the {n} emulated nodes, so that a \
                     node holds the ranks"
                )));
            }
        }
        if alloc.is_none() && args.emulate_nodes.is_none() && args.nodes.is_none() {
            let flag = match (args.spares, args.spread_on_failure) {
                (Some(_), _) => Some("--spares"),
                (None, true) => Some("--spread-on-failure"),
                (None, false) => None,
            };
            if let Some(flag) = flag {
                return Err(UsageError(format!(
                    "{flag}: needs nodes to choose from (--nodes HOSTLIST, --emulate-nodes N, or \
                     the srun backend inside a Slurm allocation)"
                )));
            }
        }
        let nodes = args
            .nodes
            .as_deref()
            .map(|list| {
                let spares = args.spares.unwrap_or(0);
                RealNodes::new(
                    list,
                    args.ranks_per_node,
                    spares,
                    args.ranks,
                    ctx,
                    alloc.as_ref(),
                )
            })
            .transpose()?;
        let local_dir = args.local_dir.as_deref().map(|d| absolute(&ctx.cwd, d));
        if let Some(dir) = &local_dir {
            check_dir_path("--local-dir", dir)?;
        }
        let l2_every = args
            .l2_every
            .as_deref()
            .map(|s| level_every("--l2-every", "L2", s))
            .transpose()?;
        let l4_every = args
            .l4_every
            .as_deref()
            .map(|s| level_every("--l4-every", "L4", s))
            .transpose()?;
        let level_flags = LevelFlags::new(&args.levels)?;

        let job_dir = match &args.job_dir {
            Some(dir) => absolute(&ctx.cwd, dir),
            None => {
                let base = program.file_name().unwrap_or_default().to_string_lossy();
                let stamp = clock::stamp(ctx.now_unix_s);
                ctx.cwd
                    .join("ckpt-jobs")
                    .join(format!("{base}-{stamp}-{}", ctx.pid))
            }
        };
        if job_dir.exists() && !job_dir.is_dir() {
            return Err(UsageError(format!(
                "--job-dir {}: exists and is not a directory",
                job_dir.display()
            )));
        }
        let job_id = job_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                UsageError(format!(
                    "--job-dir {}: needs a final component to name the job",
                    job_dir.display()
                ))
            })?;

        let shared_dir = shared_dir(args.shared_dir.as_deref(), &job_dir, ctx)?;

        let exit_signal = exit_signal(args.exit_signal.as_deref())?;
        let end_time = end_time(&args.end_time, ctx)?;
        let signal = match ctx.signal.as_deref() {
            None => Some(libc::SIGUSR1),
            Some(v) => ckpt::trigger::parse_signal(v)
                .map_err(|e| UsageError(format!("{}={v}: {e}", env::SIGNAL)))?,
        };
        let access = ctx
            .group_access
            .as_deref()
            .map(|v| {
                Access::parse(v).map_err(|e| UsageError(format!("{}={v}: {e}", env::GROUP_ACCESS)))
            })
            .transpose()?
            .unwrap_or_default();
        let mpirun_env_args = ctx
            .mpirun_args
            .iter()
            .flat_map(|s| s.split_whitespace().map(str::to_owned))
            .collect();
        let mut plan = RunPlan {
            ranks: args.ranks,
            every,
            keep: args.keep,
            max_restarts: args.max_restarts,
            job_dir,
            job_id,
            local_dir,
            emulate_nodes: args.emulate_nodes,
            spares: args.spares,
            spread_on_failure: args.spread_on_failure,
            nodes: nodes.clone(),
            srun: alloc,
            l2_every,
            l4_every,
            level_flags,
            shared_dir,
            levels: LevelPolicy::default(),
            fault: args.fault,
            quiet_after,
            start_timeout: (args.start_timeout > 0)
                .then(|| Duration::from_secs(args.start_timeout)),
            mpirun,
            mpirun_env_args,
            mpirun_args: args.mpirun_args,
            program,
            args: prog_args.to_vec(),
            inherited: Vec::new(),
            exec_rank: ctx
                .exe
                .clone()
                .filter(|_| signal.is_some() || args.emulate_nodes.is_some() || nodes.is_some()),
            signal,
            exit_signal,
            end_time,
            end_margin: Duration::from_secs(args.end_margin),
            access,
            hold: None,
        };
        let ours: Vec<&str> = plan.rank_env(0).iter().map(|(k, _)| *k).collect();
        plan.inherited = ctx
            .inherited
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !ours.contains(name))
            .collect();
        if plan.emulate_nodes.is_some() && plan.exec_rank.is_none() {
            return Err(UsageError(
                "--emulate-nodes: the ckpt executable, which places each rank on its node \
                 (ckpt exec-rank), cannot be found"
                    .into(),
            ));
        }
        if plan.nodes.is_some() && plan.srun.is_none() && plan.exec_rank.is_none() {
            return Err(UsageError(
                "--nodes: the ckpt executable, which gives each rank its node's name \
                 (ckpt exec-rank), cannot be found"
                    .into(),
            ));
        }
        if let Some(alloc) = &plan.srun {
            // A fresh job's placement must fit the allocation (a resumed one's is checked at
            // each launch, kept where its files are).
            srun::Nodes::default()
                .place(&plan, alloc, None)
                .map_err(|e| UsageError(format!("-n {}: {e}", plan.ranks)))?;
        }
        plan.levels = plan.check_rank_config(ctx)?.levels;
        check_parity(&plan.levels, &plan.level_flags)?;
        Ok(plan)
    }

    /// The base of the emulated nodes' node-local directories (`<base>/node<K>`):
    /// `--local-dir`, else `<job dir>/local` (where the ranks' default puts each node).
    pub fn local_base(&self) -> PathBuf {
        self.local_dir
            .clone()
            .unwrap_or_else(|| self.job_dir.join("local"))
    }

    /// Checks the configuration the ranks will read (what the launcher sets, then inherited
    /// `CKPT_*` variables) with the library's own parser, so that a value every rank would
    /// refuse fails here, once, instead of in every launch. Returns it.
    fn check_rank_config(&self, ctx: &Context) -> Result<ckpt::Config, UsageError> {
        let ours = self.rank_env(0);
        let get = |name: &str| {
            let set = ours.iter().find(|(k, _)| *k == name);
            let inherited = || ctx.inherited.iter().find(|(k, _)| *k == name);
            set.or_else(inherited).map(|(_, v)| v.clone())
        };
        ckpt::Config::from_vars(get).map_err(|e| {
            UsageError(format!(
                "the ranks would refuse their {e} (from the environment)"
            ))
        })
    }

    /// The variables the launcher sets for the ranks of the launch with this restart count.
    pub fn rank_env(&self, restart_count: u32) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (env::JOB_DIR, self.job_dir.to_string_lossy().into_owned()),
            (env::JOB_ID, self.job_id.clone()),
            (env::KEEP, self.keep.to_string()),
            (env::RESTART_COUNT, restart_count.to_string()),
        ];
        if let Some(every) = self.every {
            vars.push((env::EVERY, every.to_string()));
        }
        if let Some(dir) = &self.local_dir {
            vars.push((env::LOCAL_DIR, dir.to_string_lossy().into_owned()));
        }
        if let Some(fault) = &self.fault {
            vars.push((env::FAULT, fault.clone()));
        }
        if let Some(n) = self.l2_every {
            vars.push((env::L2_EVERY, n.to_string()));
        }
        if let Some(n) = self.l4_every {
            vars.push((env::L4_EVERY, n.to_string()));
        }
        vars.extend(self.level_flags.vars());
        if let Some(dir) = &self.shared_dir {
            vars.push((env::SHARED_DIR, dir.to_string_lossy().into_owned()));
        }
        if self.access == Access::Group {
            vars.push((env::GROUP_ACCESS, "1".into()));
        }
        if let Some(h) = &self.hold {
            vars.push((env::HOLD_UNTIL, h.go.to_string_lossy().into_owned()));
            vars.push((
                env::PLACEMENT_FILE,
                h.placement.to_string_lossy().into_owned(),
            ));
            if !h.moving.is_empty() {
                let ranks: Vec<String> = h.moving.iter().map(u32::to_string).collect();
                vars.push((env::HANDOFF_RANKS, ranks.join(",")));
            }
        }
        vars
    }
}

/// Most ranks `-n` accepts: MPI counts ranks in a C `int`.
pub const MAX_RANKS: u32 = i32::MAX as u32;
/// Most relaunches `--max-restarts` accepts: a job that failed this often will not recover.
pub const MAX_RESTARTS: u32 = 1000;

/// Parses `--every`. `0` is refused: the library reads it as "off", which is better said so.
fn every(s: &str) -> Result<Interval, UsageError> {
    if s.trim().parse::<u64>() == Ok(0) {
        return Err(UsageError(format!(
            "--every {s}: a checkpoint every 0 polls is no interval; for no automatic \
             checkpoints say --every off"
        )));
    }
    Interval::parse(s).map_err(|e| UsageError(format!("--every {s}: {e}")))
}

/// Parses `--l2-every` or `--l4-every`: a whole number of epochs, 0 turning the level off.
fn level_every(flag: &str, level: &str, s: &str) -> Result<u64, UsageError> {
    s.trim().parse::<u64>().map_err(|_| {
        UsageError(format!(
            "{flag} {s}: expected a whole number of epochs >= 0 (0 turns {level} off)"
        ))
    })
}

/// The base of shared (L4) storage: `--shared-dir`, else the one `job_dir`'s `job.json`
/// records (a resume keeps it), else an inherited `CKPT_SHARED_DIR`; made absolute.
fn shared_dir(
    flag: Option<&Path>,
    job_dir: &Path,
    ctx: &Context,
) -> Result<Option<PathBuf>, UsageError> {
    let inherited = || {
        let v = ctx.inherited.iter().find(|(k, _)| *k == env::SHARED_DIR);
        v.map(|(_, v)| PathBuf::from(v))
    };
    let dir = flag
        .map(Path::to_path_buf)
        .or_else(|| crate::jobdir::recorded_shared_dir(job_dir))
        .or_else(inherited)
        .map(|d| absolute(&ctx.cwd, &d));
    if let Some(d) = &dir {
        check_dir_path("--shared-dir", d)?;
    }
    Ok(dir)
}

/// Parses `--exit-signal`: a signal name or number, or `off`; not one the launcher reserves.
fn exit_signal(s: Option<&str>) -> Result<Option<i32>, UsageError> {
    let Some(s) = s else {
        return Ok(Some(libc::SIGUSR1));
    };
    let sig = ckpt::trigger::parse_signal(s)
        .map_err(|e| UsageError(format!("--exit-signal {s}: {e}")))?;
    match sig {
        Some(n) if crate::signals::RESERVED.contains(&n) => Err(UsageError(format!(
            "--exit-signal {s}: {} has its own meaning to the launcher (SIGINT/SIGTERM \
             interrupt the job, SIGHUP is ignored)",
            crate::signals::name(n)
        ))),
        sig => Ok(sig),
    }
}

/// Parses `--end-time` and resolves `auto` with the Slurm variables of `ctx`.
fn end_time(s: &str, ctx: &Context) -> Result<EndSource, UsageError> {
    let flag = deadline::parse_flag(s).map_err(|e| UsageError(format!("--end-time {s}: {e}")))?;
    let var = |name: &str| {
        let found = ctx.end_vars.iter().find(|(k, _)| *k == name);
        found.map(|(_, v)| v.clone())
    };
    deadline::source(flag, var).map_err(|e| UsageError(format!("--end-time {s}: {e}")))
}

/// Parses `--quiet-after`: a duration with a unit, or `off` (`None`).
fn quiet_after(s: &str) -> Result<Option<Duration>, UsageError> {
    match Interval::parse(s) {
        Ok(Interval::Time(d)) => Ok(Some(d)),
        Ok(Interval::Off) => Ok(None),
        Ok(Interval::Polls(_)) => Err(UsageError(format!(
            "--quiet-after {s}: give a duration with a unit (e.g. 90s, 10m, 1h)"
        ))),
        Err(e) => Err(UsageError(format!("--quiet-after {s}: {e}"))),
    }
}

/// Refuses a directory path that can never be created: one whose nearest existing ancestor (or
/// itself) is not a directory. (On other nodes the path may differ; this checks this node.)
fn check_dir_path(flag: &str, dir: &Path) -> Result<(), UsageError> {
    let existing = dir
        .ancestors()
        .find(|a| std::fs::symlink_metadata(a).is_ok());
    match existing {
        Some(a) if !a.is_dir() => Err(UsageError(format!(
            "{flag} {}: {} exists and is not a directory",
            dir.display(),
            a.display()
        ))),
        _ => Ok(()),
    }
}

/// `cwd/p` without `.` components (the directory may not exist yet, so no canonicalisation).
fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    cwd.join(p)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Resolves a program like a shell does: a name with a slash is a path, others are looked up
/// in `$PATH`. The result is absolute and an executable file.
fn resolve(flag: &str, name: &Path, ctx: &Context) -> Result<PathBuf, UsageError> {
    let shown = name.display();
    if name.as_os_str().is_empty() {
        return Err(UsageError(format!("{flag}: empty program name")));
    }
    if name.components().count() > 1 || name.is_absolute() {
        let p = absolute(&ctx.cwd, name);
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p),
            Ok(m) if m.is_file() => Err(UsageError(format!(
                "{flag} {shown}: {} is not executable",
                p.display()
            ))),
            Ok(_) => Err(UsageError(format!(
                "{flag} {shown}: {} is not a file",
                p.display()
            ))),
            Err(e) => Err(UsageError(format!("{flag} {shown}: {}: {e}", p.display()))),
        };
    }
    let dirs = ctx.path.as_deref().map(std::env::split_paths);
    dirs.into_iter()
        .flatten()
        .map(|dir| absolute(&ctx.cwd, &dir.join(name)))
        .find(|p| is_executable(p))
        .ok_or_else(|| UsageError(format!("{flag} {shown}: not found in PATH")))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable `name` in the absolute directories of `path`.
fn find_in_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, Command};

    /// A directory holding executables `prog` and `mpirun` and a non-executable `data`, used
    /// as both the working directory and `$PATH`.
    /// The plan of `ckpt run ARGS` in `ctx`; a parse or plan error as its message.
    fn run_plan(ctx: &Context, args: &str) -> Result<RunPlan, String> {
        let argv = format!("ckpt run {args}");
        let cli =
            cli::parse(argv.split_whitespace().map(OsString::from)).map_err(|e| e.to_string())?;
        let Command::Run(args) = cli.command else {
            panic!("not a run command")
        };
        RunPlan::new(args, ctx).map_err(|e| e.to_string())
    }

    fn fixture() -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("prog", 0o755), ("mpirun", 0o755), ("data", 0o644)] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let ctx = Context {
            cwd: dir.path().to_path_buf(),
            path: Some(dir.path().into()),
            mpirun_args: Some(" --bind-to  none ".into()),
            inherited: vec![(env::NODE, "n1".into()), (env::KEEP, "9".into())],
            now_unix_s: 1_776_693_792, // 2026-04-20 14:03:12 UTC
            pid: 42,
            signal: None,
            exe: Some("/opt/ckpt".into()),
            group_access: None,
            resolves: |_| true,
            slurm: SlurmEnv::none(),
            end_vars: vec![],
        };
        (dir, ctx)
    }

    /// Validates `ckpt run <argv>` and compares a one-line summary of the plan (with the
    /// fixture directory written as `D`) or the error message.
    fn check(argv: &str, expected: &str) {
        let (dir, ctx) = fixture();
        let full = format!("ckpt run {argv}");
        let cli = cli::parse(full.split_whitespace().map(OsString::from)).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not a run command")
        };
        let got = match RunPlan::new(args, &ctx) {
            Ok(p) => format!(
                "n={} every={} keep={} restarts={} fault={} job={} id={} local={} mpirun={} \
                 margs={} prog={} args={}",
                p.ranks,
                p.every.map_or("-".into(), |e| e.to_string()),
                p.keep,
                p.max_restarts,
                p.fault.as_deref().unwrap_or("-"),
                p.job_dir.display(),
                p.job_id,
                p.local_dir.map_or("-".into(), |d| d.display().to_string()),
                p.mpirun.display(),
                [p.mpirun_env_args, p.mpirun_args].concat().join(","),
                p.program.display(),
                p.args.join(","),
            ),
            Err(e) => format!("error: {e}"),
        };
        let got = got.replace(&dir.path().display().to_string(), "D");
        assert_eq!(got, expected, "ckpt run {argv}");
    }

    #[test]
    fn valid_plans() {
        check(
            "-n 4 -- prog",
            "n=4 every=- keep=2 restarts=3 fault=- job=D/ckpt-jobs/prog-20260420-140312-42 \
             id=prog-20260420-140312-42 local=- mpirun=D/mpirun margs=--bind-to,none \
             prog=D/prog args=",
        );
        check(
            "-n 2 --every 30s --keep 3 --max-restarts 0 --job-dir ./jobs/a --local-dir /l \
             --fault 1:mid-write:2 --mpirun ./mpirun --mpirun-arg --tag-output \
             --mpirun-arg -v ./prog -x --y",
            "n=2 every=30s keep=3 restarts=0 fault=1:mid-write:2 job=D/jobs/a id=a local=/l \
             mpirun=D/mpirun margs=--bind-to,none,--tag-output,-v prog=D/prog args=-x,--y",
        );
        check(
            "-n 1 --every 100 -- /bin/sh -c true",
            "n=1 every=100 keep=2 restarts=3 fault=- job=D/ckpt-jobs/sh-20260420-140312-42 \
             id=sh-20260420-140312-42 local=- mpirun=D/mpirun margs=--bind-to,none \
             prog=/bin/sh args=-c,true",
        );
    }

    #[test]
    fn invalid_plans() {
        check("-n 0 -- prog", "error: -n 0: a job needs at least one rank");
        check(
            "-n 2 --every 5x -- prog",
            "error: --every 5x: \"5x\": unknown unit \"x\" (use ms, s, m or h)",
        );
        check(
            "-n 2 --keep 0 -- prog",
            "error: --keep 0: at least one committed epoch must be kept",
        );
        check(
            "-n 4 --fault 4:poll -- prog",
            "error: --fault 4:poll: rank 4 does not exist in a 4-rank job (ranks 0..3)",
        );
        check(
            "-n 4 --fault 1:explode -- prog",
            "error: --fault 1:explode: \"1:explode\": unknown phase \"explode\" (one of poll, \
             before-write, mid-write, after-write, before-vote, before-manifest, after-commit, \
             restore, drain, enospc, publish-fsync, background)",
        );
        check("-n 4 -- nosuch", "error: PROG nosuch: not found in PATH");
        check("-n 4 -- data", "error: PROG data: not found in PATH");
        check(
            "-n 4 -- ./data",
            "error: PROG ./data: D/data is not executable",
        );
        check(
            "-n 4 -- ./nosuch",
            "error: PROG ./nosuch: D/nosuch: No such file or directory (os error 2)",
        );
        check("-n 4 -- /", "error: PROG /: / is not a file");
        check(
            "-n 4 --mpirun nompi -- prog",
            "error: --mpirun nompi: not found in PATH",
        );
        check(
            "-n 4 --job-dir data -- prog",
            "error: --job-dir D/data: exists and is not a directory",
        );
        check(
            "-n 4 --local-dir data/l1 -- prog",
            "error: --local-dir D/data/l1: D/data exists and is not a directory",
        );
        check(
            "-n 4 --local-dir data -- prog",
            "error: --local-dir D/data: D/data exists and is not a directory",
        );
        check(
            "-n 4 --job-dir / -- prog",
            "error: --job-dir /: needs a final component to name the job",
        );
        check(
            "-n 4 --emulate-nodes 5 -- prog",
            "error: --emulate-nodes 5: give 1 to 4 nodes, so that each holds a rank",
        );
        check(
            "-n 4 --emulate-nodes 0 -- prog",
            "error: --emulate-nodes 0: give 1 to 4 nodes, so that each holds a rank",
        );
        check(
            "-n 4 --emulate-nodes 2 --spares 2 -- prog",
            "error: --spares 2: give fewer spares than the 2 emulated nodes, so that a node \
             holds the ranks",
        );
        check(
            "-n 4 --spares 1 -- prog",
            "error: --spares: needs nodes to choose from (--nodes HOSTLIST, --emulate-nodes N, or \
             the srun backend inside a Slurm allocation)",
        );
        check(
            "-n 4 --spread-on-failure -- prog",
            "error: --spread-on-failure: needs nodes to choose from (--nodes HOSTLIST, \
             --emulate-nodes N, or the srun backend inside a Slurm allocation)",
        );
    }

    #[test]
    fn emulated_nodes_need_exec_rank() {
        let (_dir, mut ctx) = fixture();
        let plan = |ctx: &Context| {
            let argv = "ckpt run -n 8 --emulate-nodes 4 --job-dir /j/x -- prog";
            let Command::Run(args) = cli::parse(argv.split_whitespace().map(OsString::from))
                .unwrap()
                .command
            else {
                panic!("not a run command")
            };
            RunPlan::new(args, ctx).map_err(|e| e.to_string())
        };
        let p = plan(&ctx).unwrap();
        assert_eq!(p.emulate_nodes, Some(4));
        assert_eq!(p.local_base(), PathBuf::from("/j/x/local"));
        // Without a checkpoint signal, exec-rank still starts each rank on its node.
        ctx.signal = Some("off".into());
        assert_eq!(plan(&ctx).unwrap().exec_rank, Some("/opt/ckpt".into()));
        ctx.exe = None;
        assert!(plan(&ctx).unwrap_err().contains("cannot be found"));
    }

    /// Values that wrapped, panicked or meant something else silently: each is refused.
    #[test]
    fn limits() {
        check(
            "-n 4294967295 -- prog",
            "error: -n 4294967295: at most 2147483647 ranks (MPI ranks are C ints)",
        );
        check(
            "-n 2 --max-restarts 4294967295 -- prog",
            "error: --max-restarts 4294967295: at most 1000",
        );
        check(
            "-n 2 --every 100000000000000000000s -- prog",
            "error: --every 100000000000000000000s: \"100000000000000000000s\" is too long a \
             duration",
        );
        check(
            "-n 2 --every 0 -- prog",
            "error: --every 0: a checkpoint every 0 polls is no interval; for no automatic \
             checkpoints say --every off",
        );
        check(
            "-n 2 --fault 0:poll:0 -- prog",
            "error: --fault 0:poll:0: N counts epochs or polls from 1; 0 would never fire",
        );
        check(
            "-n 2 --quiet-after 100000000000000000000h -- prog",
            "error: --quiet-after 100000000000000000000h: \"100000000000000000000h\" is too long \
             a duration",
        );
        check(
            "-n 2 --exit-signal TERM -- prog",
            "error: --exit-signal TERM: SIGTERM has its own meaning to the launcher \
             (SIGINT/SIGTERM interrupt the job, SIGHUP is ignored)",
        );
        check(
            "-n 2 --exit-signal KILL -- prog",
            "error: --exit-signal KILL: unknown signal \"KILL\" (use USR1, USR2, TERM, INT, \
             HUP, URG, XCPU, a number, or off)",
        );
        // The largest accepted values.
        check(
            "-n 2147483647 --max-restarts 1000 --every off -- prog",
            "n=2147483647 every=off keep=2 restarts=1000 fault=- \
             job=D/ckpt-jobs/prog-20260420-140312-42 id=prog-20260420-140312-42 local=- \
             mpirun=D/mpirun margs=--bind-to,none prog=D/prog args=",
        );
    }

    #[test]
    fn exit_signal() {
        let (_dir, ctx) = fixture();
        let exit = |flags: &str| {
            run_plan(&ctx, &format!("-n 2 {flags} -- prog"))
                .map(|p| p.exit_signal)
                .unwrap()
        };
        assert_eq!(exit(""), Some(libc::SIGUSR1));
        assert_eq!(exit("--exit-signal USR2"), Some(libc::SIGUSR2));
        assert_eq!(exit("--exit-signal SIGXCPU"), Some(libc::SIGXCPU));
        assert_eq!(exit("--exit-signal off"), None);
    }

    /// `--end-time`: auto reads Slurm's variables (none outside an allocation), a value or
    /// variable that is no time fails naming it.
    #[test]
    fn end_time() {
        let (_dir, mut ctx) = fixture();
        let end = |ctx: &Context, flags: &str| {
            run_plan(ctx, &format!("-n 2 {flags} -- prog"))
                .map(|p| (p.end_time, p.end_margin.as_secs()))
        };
        assert_eq!(end(&ctx, ""), Ok((EndSource::None, 30)));
        assert_eq!(
            end(&ctx, "--end-time 1795708943 --end-margin 5"),
            Ok((EndSource::At(1_795_708_943, "--end-time"), 5))
        );
        let e = end(&ctx, "--end-time soon").unwrap_err();
        assert!(e.starts_with("--end-time soon: expected auto, off"), "{e}");
        ctx.end_vars = vec![(deadline::SLURM_JOB_VAR, "42".into())];
        assert_eq!(end(&ctx, ""), Ok((EndSource::Squeue("42".into()), 30)));
        assert_eq!(end(&ctx, "--end-time off"), Ok((EndSource::None, 30)));
        ctx.end_vars.push((deadline::SLURM_END_VAR, "x".into()));
        let e = end(&ctx, "").unwrap_err();
        assert!(
            e.starts_with("--end-time auto: SLURM_JOB_END_TIME=x: not whole"),
            "{e}"
        );
    }

    /// An inherited `CKPT_*` value every rank would refuse fails the plan, naming it; one the
    /// launcher overrides does not matter.
    #[test]
    fn inherited_rank_config_is_checked_before_launch() {
        let (_dir, mut ctx) = fixture();
        let plan =
            |ctx: &Context, flags: &str| run_plan(ctx, &format!("-n 2 {flags} -- prog")).map(drop);
        ctx.inherited = vec![(env::TIMEOUT, "soon".into()), (env::KEEP, "x".into())];
        assert_eq!(
            plan(&ctx, ""),
            Err(
                "the ranks would refuse their configuration: CKPT_TIMEOUT=\"soon\": expected \
                 a whole number >= 1 (from the environment)"
                    .into()
            )
        );
        ctx.inherited = vec![(env::EVERY, "5x".into())];
        assert!(plan(&ctx, "").unwrap_err().contains("CKPT_EVERY=\"5x\""));
        // --every replaces the inherited value.
        assert_eq!(plan(&ctx, "--every 10"), Ok(()));
        ctx.inherited = vec![(env::FAULT, "1:nowhere".into())];
        assert!(plan(&ctx, "")
            .unwrap_err()
            .contains("CKPT_FAULT=\"1:nowhere\""));
        ctx.inherited = vec![(env::IO_TIMEOUT, "0".into())];
        assert!(plan(&ctx, "")
            .unwrap_err()
            .contains("CKPT_IO_TIMEOUT=\"0\""));
        // A node name becomes `local/<node>`: one plain name only.
        ctx.inherited = vec![(env::NODE, "../n1".into())];
        assert!(plan(&ctx, "")
            .unwrap_err()
            .contains("CKPT_NODE=\"../n1\": a node name must be one plain name"));
    }

    #[test]
    fn checkpoint_signal_and_rank_start() {
        let (_dir, mut ctx) = fixture();
        let plan = |ctx: &Context| {
            let argv = "ckpt run -n 2 -- prog";
            let Command::Run(args) = cli::parse(argv.split_whitespace().map(OsString::from))
                .unwrap()
                .command
            else {
                panic!("not a run command")
            };
            RunPlan::new(args, ctx).map(|p| (p.signal, p.exec_rank))
        };
        let opt = Some(PathBuf::from("/opt/ckpt"));
        assert_eq!(plan(&ctx).unwrap(), (Some(libc::SIGUSR1), opt.clone()));
        ctx.signal = Some("USR2".into());
        assert_eq!(plan(&ctx).unwrap(), (Some(libc::SIGUSR2), opt));
        // No checkpoint signal: nothing to hold, ranks start directly.
        ctx.signal = Some("off".into());
        assert_eq!(plan(&ctx).unwrap(), (None, None));
        ctx.signal = Some("BOGUS".into());
        let e = plan(&ctx).unwrap_err().to_string();
        assert!(e.starts_with("CKPT_SIGNAL=BOGUS: unknown signal"), "{e}");
    }

    #[test]
    fn quiet_after_takes_a_duration() {
        let (_dir, ctx) = fixture();
        let quiet =
            |flags: &str| run_plan(&ctx, &format!("-n 2 {flags} -- prog")).map(|p| p.quiet_after);
        assert_eq!(quiet(""), Ok(None));
        assert_eq!(quiet("--quiet-after off"), Ok(None));
        assert_eq!(
            quiet("--quiet-after 10m"),
            Ok(Some(Duration::from_secs(600)))
        );
        assert_eq!(
            quiet("--quiet-after 100"),
            Err("--quiet-after 100: give a duration with a unit (e.g. 90s, 10m, 1h)".into())
        );
        assert!(quiet("--quiet-after 5x").is_err());
    }

    #[test]
    fn start_timeout_defaults_to_five_minutes_and_zero_turns_it_off() {
        let (_dir, ctx) = fixture();
        let start = |flags: &str| {
            run_plan(&ctx, &format!("-n 2 {flags} -- prog"))
                .map(|p| p.start_timeout)
                .unwrap()
        };
        assert_eq!(start(""), Some(Duration::from_secs(300)));
        assert_eq!(start("--start-timeout 20"), Some(Duration::from_secs(20)));
        assert_eq!(start("--start-timeout 0"), None);
    }

    #[test]
    fn rank_env() {
        let (_dir, ctx) = fixture();
        let argv = "ckpt run -n 2 --every 250ms --fault 0:poll --job-dir /j/x -- prog";
        let Command::Run(args) = cli::parse(argv.split_whitespace().map(OsString::from))
            .unwrap()
            .command
        else {
            panic!("not a run command")
        };
        let plan = RunPlan::new(args, &ctx).unwrap();
        // CKPT_KEEP is inherited but set by the launcher, so only CKPT_NODE passes through.
        assert_eq!(plan.inherited, [env::NODE]);
        let got: Vec<String> = plan
            .rank_env(3)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let expected = [
            (env::JOB_DIR, "/j/x"),
            (env::JOB_ID, "x"),
            (env::KEEP, "2"),
            (env::RESTART_COUNT, "3"),
            (env::EVERY, "0.25s"),
            (env::FAULT, "0:poll"),
        ];
        let expected: Vec<String> = expected.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(got, expected);
    }

    /// `--l2-every`, `--l4-every` and `--shared-dir` reach the ranks; the shared directory
    /// is the flag's, else the one `job.json` records (a resume), else an inherited one.
    #[test]
    fn levels_reach_the_ranks() {
        let (dir, mut ctx) = fixture();
        let plan = |ctx: &Context, flags: &str| {
            run_plan(ctx, &format!("-n 2 --job-dir job {flags} -- prog"))
        };
        let vars = |p: &RunPlan| {
            let d = dir.path().display().to_string();
            let ours = p.rank_env(0);
            [env::L2_EVERY, env::L4_EVERY, env::SHARED_DIR]
                .map(|k| {
                    let v = ours.iter().find(|(n, _)| *n == k);
                    v.map_or("-".into(), |(_, v)| v.replace(&d, "D"))
                })
                .join(" ")
        };
        let p = plan(&ctx, "").unwrap();
        assert_eq!(vars(&p), "- - -");
        assert_eq!(p.levels, LevelPolicy::default());
        let p = plan(&ctx, "--l2-every 0 --l4-every 3 --shared-dir pfs").unwrap();
        assert_eq!(vars(&p), "0 3 D/pfs");
        assert_eq!(
            (p.levels.partner_every, p.levels.shared_every),
            (0, 3),
            "the policy the ranks will read"
        );
        assert_eq!(p.levels.shared_dir, Some(dir.path().join("pfs")));
        // An inherited variable counts for the policy; the flag replaces it.
        ctx.inherited = vec![(env::L4_EVERY, "5".into()), (env::SHARED_DIR, "/s".into())];
        let p = plan(&ctx, "").unwrap();
        assert_eq!((p.levels.shared_every, vars(&p)), (5, "- - /s".into()));
        assert_eq!(
            p.inherited,
            [env::L4_EVERY],
            "set by the launcher, not inherited"
        );
        assert_eq!(plan(&ctx, "--l4-every 7").unwrap().levels.shared_every, 7);
        // A resume without the flag keeps the recorded directory, before the inherited one.
        std::fs::create_dir(dir.path().join("job")).unwrap();
        let recorded = r#"{"job_id": "x", "shared_dir": "/recorded"}"#;
        std::fs::write(dir.path().join("job/job.json"), recorded).unwrap();
        assert_eq!(vars(&plan(&ctx, "").unwrap()), "- - /recorded");
        assert_eq!(vars(&plan(&ctx, "--shared-dir /new").unwrap()), "- - /new");
        // Refused: not a whole number, a file in the way.
        for (flags, want) in [
            (
                "--l2-every -1",
                "--l2-every -1: expected a whole number of epochs >= 0 (0 turns L2 off)",
            ),
            (
                "--l4-every 1.5",
                "--l4-every 1.5: expected a whole number of epochs >= 0 (0 turns L4 off)",
            ),
            (
                "--l4-every x",
                "--l4-every x: expected a whole number of epochs >= 0 (0 turns L4 off)",
            ),
            (
                "--shared-dir data/s",
                "--shared-dir D/data/s: D/data exists and is not a directory",
            ),
        ] {
            let e = plan(&ctx, flags).unwrap_err();
            assert_eq!(e.replace(&dir.path().display().to_string(), "D"), want);
        }
    }

    /// `--l3-*` and `--keep-l*` reach the ranks and the policy; each bound is refused, naming
    /// the flag, and parity against the group is checked on the values the ranks will read
    /// (flags, else inherited variables, else defaults).
    #[test]
    fn l3_and_keeps_reach_the_ranks() {
        let (_dir, mut ctx) = fixture();
        let plan = |ctx: &Context, flags: &str| {
            run_plan(ctx, &format!("-n 8 --job-dir /j/x {flags} -- prog"))
        };
        let p = plan(&ctx, "").unwrap();
        assert_eq!(p.level_flags, LevelFlags::default());
        assert!(p.level_flags.argv().is_empty());
        let p = plan(
            &ctx,
            "--l3-every 1 --l3-group 3 --l3-parity 2 --keep-l2 2 --keep-l3 3 --keep-l4 4",
        )
        .unwrap();
        let vars: Vec<String> = p.rank_env(0)[4..]
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            vars,
            [
                "CKPT_L3_EVERY=1",
                "CKPT_L3_GROUP=3",
                "CKPT_L3_PARITY=2",
                "CKPT_KEEP_L2=2",
                "CKPT_KEEP_L3=3",
                "CKPT_KEEP_L4=4"
            ]
        );
        let l = &p.levels;
        assert_eq!(
            (l.parity_every, l.parity_group, l.parity_k),
            (1, 3, 2),
            "the policy the ranks will read"
        );
        assert_eq!((l.keep_partner, l.keep_parity, l.keep_shared), (2, 3, 4));
        assert_eq!(
            p.level_flags.argv().join(" "),
            "--l3-every 1 --l3-group 3 --l3-parity 2 --keep-l2 2 --keep-l3 3 --keep-l4 4"
        );
        assert_eq!(plan(&ctx, "--l3-every 0").unwrap().levels.parity_every, 0);
        for (flags, want) in [
            (
                "--l3-every x",
                "--l3-every x: expected a whole number of epochs >= 0 (0 turns L3 off)",
            ),
            (
                "--l3-group 1",
                "--l3-group 1: expected a whole number of ranks >= 2",
            ),
            (
                "--l3-parity 0",
                "--l3-parity 0: expected a whole number of parity shards >= 1",
            ),
            (
                "--keep-l2 0",
                "--keep-l2 0: expected a whole number of epochs >= 1",
            ),
            (
                "--keep-l3 -1",
                "--keep-l3 -1: expected a whole number of epochs >= 1",
            ),
            (
                "--keep-l4 1.5",
                "--keep-l4 1.5: expected a whole number of epochs >= 1",
            ),
            (
                "--l3-parity 4",
                "L3 parity 4 (--l3-parity) in groups of 4 (CKPT_L3_GROUP or the default): the \
                 parity shards per set must be fewer than the ranks per group (1 to 3)",
            ),
            (
                "--l3-group 2 --l3-parity 2",
                "L3 parity 2 (--l3-parity) in groups of 2 (--l3-group): the parity shards per \
                 set must be fewer than the ranks per group (1 to 1)",
            ),
        ] {
            assert_eq!(plan(&ctx, flags).unwrap_err(), want, "{flags}");
        }
        // Inherited values count; a flag replaces them.
        ctx.inherited = vec![(env::L3_PARITY, "3".into())];
        assert_eq!(
            plan(&ctx, "--l3-group 3").unwrap_err(),
            "L3 parity 3 (CKPT_L3_PARITY or the default) in groups of 3 (--l3-group): the \
             parity shards per set must be fewer than the ranks per group (1 to 2)"
        );
        assert_eq!(plan(&ctx, "").unwrap().levels.parity_k, 3);
        assert_eq!(plan(&ctx, "--l3-group 3 --l3-parity 1").map(drop), Ok(()));
    }

    #[test]
    fn group_access_reaches_the_ranks() {
        let (_dir, mut ctx) = fixture();
        let plan = |ctx: &Context| {
            let argv = "ckpt run -n 2 -- prog";
            let Command::Run(args) = cli::parse(argv.split_whitespace().map(OsString::from))
                .unwrap()
                .command
            else {
                panic!("not a run command")
            };
            RunPlan::new(args, ctx).map_err(|e| e.to_string())
        };
        let has = |p: &RunPlan| p.rank_env(0).contains(&(env::GROUP_ACCESS, "1".into()));
        let p = plan(&ctx).unwrap();
        assert_eq!((p.access, has(&p)), (Access::Private, false));
        ctx.group_access = Some("1".into());
        let p = plan(&ctx).unwrap();
        assert_eq!((p.access, has(&p)), (Access::Group, true));
        ctx.group_access = Some("0".into());
        assert_eq!(plan(&ctx).unwrap().access, Access::Private);
        ctx.group_access = Some("maybe".into());
        assert_eq!(
            plan(&ctx).unwrap_err(),
            "CKPT_GROUP_ACCESS=maybe: expected 1 (group may read) or 0 (private)"
        );
    }

    /// `--nodes`: a hostlist whose names all resolve and hold every rank; each error names the
    /// flag and the list. `--ranks-per-node` needs it, `--emulate-nodes` excludes it.
    #[test]
    fn nodes_are_checked_before_launch() {
        let (_dir, mut ctx) = fixture();
        let plan = |ctx: &Context, flags: &str| run_plan(ctx, &format!("-n 4 {flags} -- prog"));
        let e = plan(&ctx, "--nodes n[1-2] --spares 2").unwrap_err();
        assert_eq!(
            e,
            "--nodes n[1-2]: --spares 2 with 2 nodes: no node left to run ranks on"
        );
        let e = plan(&ctx, "--nodes n[1-3] --ranks-per-node 2 --spares 2").unwrap_err();
        assert!(
            e.contains("4 ranks do not fit on 1 working node x 2"),
            "{e}"
        );
        let p = plan(&ctx, "--nodes n[1-3] --spares 1").unwrap();
        assert_eq!(p.nodes.map(|n| n.spares), Some(1));
        let p = plan(&ctx, "--nodes n[1-2] --ranks-per-node 3").unwrap();
        let nodes = p.nodes.clone().unwrap();
        assert_eq!(
            (nodes.names, nodes.ranks_per_node),
            (vec!["n1".into(), "n2".into()], Some(3))
        );
        assert_eq!(
            p.exec_rank,
            Some(PathBuf::from("/opt/ckpt")),
            "exec-rank names the node"
        );
        assert_eq!(plan(&ctx, "").unwrap().nodes, None);
        ctx.resolves = |h| !h.ends_with(".invalid");
        for (flags, want) in [
            (
                "--nodes n1,x[1-2].invalid",
                "--nodes n1,x[1-2].invalid: cannot resolve x1.invalid, x2.invalid (no address \
                 for them here: check the names, or /etc/hosts and DNS)",
            ),
            (
                "--nodes y.invalid",
                "--nodes y.invalid: cannot resolve y.invalid (no address for it here: check \
                 the names, or /etc/hosts and DNS)",
            ),
            (
                "--nodes n[2-1]",
                "--nodes n[2-1]: \"n[2-1]\": range \"2-1\" runs backwards",
            ),
            (
                "--nodes n[1-2",
                "--nodes n[1-2: \"n[1-2\": unbalanced brackets",
            ),
            (
                "--nodes n1,,n2",
                "--nodes n1,,n2: \"n1,,n2\": an empty host name",
            ),
            ("--nodes n1,n1", "--nodes n1,n1: node n1 is listed twice"),
            (
                "--nodes n[1-3] --ranks-per-node 1",
                "--nodes n[1-3]: 4 ranks do not fit on 3 working nodes x 1 per node (3 slots)",
            ),
            (
                "--nodes n1 --ranks-per-node 0",
                "--nodes n1: --ranks-per-node 0: a node holds at least 1",
            ),
        ] {
            assert_eq!(plan(&ctx, flags).unwrap_err(), want, "{flags}");
        }
        let e = plan(&ctx, "--nodes n1 --emulate-nodes 2").unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = plan(&ctx, "--ranks-per-node 2").unwrap_err();
        assert!(e.contains("--nodes"), "{e}");
        // Without the ckpt executable no rank would learn its node's name.
        ctx.exe = None;
        let e = plan(&ctx, "--nodes n1").unwrap_err();
        assert!(e.starts_with("--nodes: the ckpt executable"), "{e}");
    }
}
