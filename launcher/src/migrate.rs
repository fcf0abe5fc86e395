//! Rank migration: `ckpt migrate JOB --rank R[,R2..] --to NODE` and `ckpt drain JOB --node
//! NODE`, on emulated nodes (`--emulate-nodes`), on real nodes (`--nodes`), and under srun
//! inside a Slurm allocation (the allocation the run records in `control/allocation`: a node
//! outside it, lost in it, or without a free CPU is refused).
//!
//! The placement in force is `control/placement`: one line `RANK NODE` per rank. On real nodes
//! the launcher writes it before every launch (the placement the backend starts the ranks
//! with). On emulated nodes it is written by a migration (or `--spares`); without it ranks sit
//! in blocks of consecutive ranks ([`exec_rank::node_of`]). `ckpt exec-rank` and `ckpt
//! kill-node` place emulated ranks with [`node_for`], so they always agree.
//!
//! A migration: the command checks the request (a run holds the job, the ranks exist, the
//! node is one of the job's, not excluded and not full: see
//! [`crate::placement::check_room`]), writes the new placement to `control/placement.next`,
//! and asks the job for a checkpoint-and-exit (the same request as `ckpt checkpoint
//! --then-exit`). When the ranks have stopped after that epoch, the running `ckpt run` finds
//! the pending placement ([`take_pending`]), puts it in force and relaunches: ranks that did
//! not move restore from their own node-local files; a moved rank's file is not on its new
//! node, so the restart recovers it from the cheapest copy (its old node, through a rank
//! running there; its partner's; its group's parity; shared storage) and writes it to the new
//! node. The command follows the job's events and prints each phase with its time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ckpt::events::{self, Event};
use ckpt::storage::durable;

use crate::backend::srun::{self, Allocation};
use crate::cli::{CheckpointArgs, DrainArgs, MigrateArgs};
use crate::exec_rank::{node_name, node_of};
use crate::placement;
use crate::{jobdir, request, Outcome, UsageError};

/// The placement in force, relative to the job directory.
const PLACEMENT: &str = "control/placement";
/// A placement waiting for the ranks to stop.
const PENDING: &str = "control/placement.next";
/// Nodes excluded for the rest of the job (drained or lost), one name a line.
const EXCLUDED: &str = "control/excluded";
/// How long `ckpt migrate` waits for the relaunch started ahead before it asks for the
/// checkpoint anyway.
const READY_WAIT: Duration = Duration::from_secs(10);
/// Largest placement file read.
const MAX_BYTES: u64 = 16 << 20;

/// The emulated node of `rank` among `nranks` ranks on `nodes` nodes: the job's placement
/// file if it names the rank, else blocks ([`node_of`]).
pub fn node_for(job_dir: &Path, rank: u32, nranks: u32, nodes: u32) -> String {
    node_in(&job_dir.join(PLACEMENT), rank, nranks, nodes)
}

/// The emulated node of `rank` by the placement file `file` if it names the rank, else blocks.
pub fn node_in(file: &Path, rank: u32, nranks: u32, nodes: u32) -> String {
    read(file)
        .ok()
        .and_then(|p| p.get(&rank).cloned())
        .unwrap_or_else(|| node_name(node_of(rank, nranks, nodes)))
}

/// Parses a placement file: lines `RANK NODE`, a node being one plain name.
pub fn parse(text: &str) -> Result<BTreeMap<u32, String>, String> {
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(rank), Some(node), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "line {}: expected `RANK NODE`, found {line:?}",
                i + 1
            ));
        };
        let rank: u32 = rank
            .parse()
            .map_err(|_| format!("line {}: {rank:?} is not a rank", i + 1))?;
        if !plain(node) {
            return Err(format!("line {}: {node:?} is not a node name", i + 1));
        }
        if map.insert(rank, node.to_owned()).is_some() {
            return Err(format!("line {}: rank {rank} placed twice", i + 1));
        }
    }
    Ok(map)
}

fn plain(node: &str) -> bool {
    !node.is_empty()
        && node != "."
        && node != ".."
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub fn render(map: &BTreeMap<u32, String>) -> String {
    map.iter().map(|(r, n)| format!("{r} {n}\n")).collect()
}

fn read(path: &Path) -> anyhow::Result<BTreeMap<u32, String>> {
    let bytes = durable::read_capped(path, MAX_BYTES)?;
    parse(&String::from_utf8_lossy(&bytes)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The placement in force of a job of `nranks` ranks: on `emulated` nodes every rank by
/// [`node_for`]; on real nodes `control/placement` as the last launch wrote it (empty before
/// the first launch).
pub fn in_force(job_dir: &Path, nranks: u32, emulated: Option<u32>) -> BTreeMap<u32, String> {
    match emulated {
        Some(nodes) => (0..nranks)
            .map(|r| (r, node_for(job_dir, r, nranks, nodes)))
            .collect(),
        None => read(&job_dir.join(PLACEMENT)).unwrap_or_default(),
    }
}

/// The placement a pending migration waits to put in force, if one does.
pub fn pending(job_dir: &Path) -> Option<BTreeMap<u32, String>> {
    read(&job_dir.join(PENDING)).ok()
}

/// The placement file as written, if there is one that parses.
pub fn placement_file(job_dir: &Path) -> Option<BTreeMap<u32, String>> {
    read(&job_dir.join(PLACEMENT)).ok()
}

/// The launcher, after the ranks stopped: puts a pending placement in force. Returns the moves
/// (`rank: from -> to`) it made from `current`, or `None` without a pending placement.
pub fn take_pending(
    job_dir: &Path,
    current: &BTreeMap<u32, String>,
) -> anyhow::Result<Option<String>> {
    let pending = job_dir.join(PENDING);
    if !pending.exists() {
        return Ok(None);
    }
    let next = read(&pending)?;
    let moves: Vec<String> = next
        .iter()
        .filter_map(|(&r, to)| {
            let from = current.get(&r).map_or("?", String::as_str);
            (from != to).then(|| format!("rank {r} {from} -> {to}"))
        })
        .collect();
    durable::rename_durable(&pending, &job_dir.join(PLACEMENT))
        .with_context(|| format!("cannot put {} in force", pending.display()))?;
    Ok(Some(moves.join(", ")))
}

/// A job open for a placement change.
struct Job {
    dir: PathBuf,
    nranks: u32,
    /// The job's nodes: `node0..` when emulated, else the `--nodes` names (spares included).
    known: Vec<String>,
    /// Each node's slots (`--ranks-per-node`); `None`: no limit.
    per_node: Option<u32>,
    /// The placement in force, every rank named.
    current: BTreeMap<u32, String>,
    /// Under srun: the allocation the running `ckpt run` records, and the nodes lost in it.
    srun: Option<(Allocation, Vec<String>)>,
    /// Whether it runs on emulated nodes (where its relaunch is started ahead).
    emulated: bool,
}

impl Job {
    /// Checks that `job_dir` is a job of `ckpt run` on emulated or real nodes, and reads its
    /// placement.
    fn open(job_dir: &Path, what: &str) -> anyhow::Result<Job> {
        let dir = std::path::absolute(job_dir)
            .with_context(|| format!("cannot resolve {}", job_dir.display()))?;
        let Some(nranks) = jobdir::recorded_ranks(&dir) else {
            return Err(UsageError(format!(
                "{}: not a job directory of `ckpt run` (no job.json with its ranks)",
                dir.display()
            ))
            .into());
        };
        let emulated = jobdir::recorded_emulation(&dir);
        let srun = match (emulated, srun::Recorded::read(&dir)) {
            (None, Some(r)) => {
                let alloc = r.allocation().map_err(|e| {
                    anyhow::anyhow!("{}: {e}", dir.join(srun::ALLOCATION).display())
                })?;
                Some((alloc, r.lost))
            }
            _ => None,
        };
        let (known, per_node) = match (emulated, jobdir::recorded_nodes(&dir), &srun) {
            (Some(n), _, _) => ((0..n).map(node_name).collect(), None),
            (None, Some(real), _) => (real.names, real.ranks_per_node),
            (None, None, Some((alloc, _))) => (alloc.nodes.clone(), None),
            (None, None, None) => {
                return Err(UsageError(format!(
                    "{}: {what} needs a job run on nodes (`ckpt run --nodes HOSTLIST`, \
                     `--emulate-nodes N`, or srun inside a Slurm allocation); this one runs on \
                     this machine only",
                    dir.display()
                ))
                .into())
            }
        };
        let current = in_force(&dir, nranks, emulated);
        if (0..nranks).any(|r| !current.contains_key(&r)) {
            return Err(UsageError(format!(
                "{}: no placement of every rank in {} yet (the job has not been launched)",
                dir.display(),
                PLACEMENT
            ))
            .into());
        }
        Ok(Job {
            dir,
            nranks,
            known,
            per_node,
            current,
            srun,
            emulated: emulated.is_some(),
        })
    }

    /// Nodes no placement may use: drained ones (`control/excluded`) and, under srun, those
    /// lost in the allocation.
    fn excluded(&self) -> Vec<String> {
        let mut all = excluded(&self.dir);
        for n in self.srun.iter().flat_map(|(_, lost)| lost) {
            if !all.contains(n) {
                all.push(n.clone());
            }
        }
        all
    }

    /// Under srun, refuses a placement that does not fit the allocation (a node outside it,
    /// or more ranks on a node than its CPUs).
    fn check_allocation(&self, next: &BTreeMap<u32, String>) -> Result<(), String> {
        match &self.srun {
            Some((alloc, _)) => alloc.check_map(next),
            None => Ok(()),
        }
    }

    /// Refuses a node that is not one of the job's: under srun, one outside the allocation.
    fn check_node(&self, node: &str) -> Result<(), UsageError> {
        if let Some((alloc, _)) = &self.srun {
            if !alloc.nodes.iter().any(|n| n == node) {
                return Err(UsageError(format!(
                    "{node} is outside the allocation of Slurm job {} ({}) the job runs in",
                    alloc.job_id, alloc.list
                )));
            }
        }
        self.check_known(node)
    }

    /// Refuses a node that is not one of the job's.
    fn check_known(&self, node: &str) -> Result<(), UsageError> {
        if self.known.iter().any(|k| k == node) {
            return Ok(());
        }
        Err(UsageError(format!(
            "unknown node {node:?}: the job's nodes are {}",
            crate::hostlist::compress(&self.known)
        )))
    }
}

/// `ckpt migrate`.
pub fn run(args: &MigrateArgs) -> anyhow::Result<Outcome> {
    let job = Job::open(&args.job_dir, "migration")?;
    job.check_node(&args.to)?;
    if job.excluded().contains(&args.to) {
        return Err(UsageError(format!(
            "{} is excluded for the rest of the job (drained or lost)",
            args.to
        ))
        .into());
    }
    let ranks = parse_ranks(&args.ranks, job.nranks).map_err(UsageError)?;
    let mut next = job.current.clone();
    let mut moved = Vec::new();
    for &r in &ranks {
        let from = next.insert(r, args.to.clone()).unwrap_or_default();
        if from == args.to {
            return Err(UsageError(format!("rank {r} already runs on {}", args.to)).into());
        }
        moved.push(format!("rank {r} {from} -> {}", args.to));
    }
    let moving: BTreeMap<u32, String> = ranks.iter().map(|&r| (r, args.to.clone())).collect();
    placement::check_room(&job.current, &moving, job.per_node)
        .map_err(|full| UsageError(format!("cannot move rank(s) {}: {full}", args.ranks)))?;
    job.check_allocation(&next)
        .map_err(|e| UsageError(format!("cannot move rank(s) {}: {e}", args.ranks)))?;
    check_reachable(&job.dir, &job.current, &next)?;
    outln!("migrating {}", moved.join(", "));
    change(&job, &next, &ranks, args.wait, None)
}

/// `ckpt drain`: every rank of the node moves, then the node is excluded.
pub fn drain(args: &DrainArgs) -> anyhow::Result<Outcome> {
    let job = Job::open(&args.job_dir, "draining")?;
    job.check_node(&args.node)?;
    let current = &job.current;
    let next = plan_drain(
        current,
        &job.known,
        &job.excluded(),
        &args.node,
        job.per_node,
    )
    .map_err(UsageError)?;
    job.check_allocation(&next)
        .map_err(|e| UsageError(format!("cannot drain {}: {e}", args.node)))?;
    let ranks: Vec<u32> = current
        .iter()
        .filter(|(_, n)| **n == args.node)
        .map(|(&r, _)| r)
        .collect();
    let moved: Vec<String> = ranks
        .iter()
        .map(|r| format!("rank {r} {} -> {}", args.node, next[r]))
        .collect();
    check_reachable(&job.dir, current, &next)?;
    outln!("draining {}: {}", args.node, moved.join(", "));
    change(&job, &next, &ranks, args.wait, Some(&args.node))
}

/// The placement after draining `node`: each of its ranks (in order) goes to the node that
/// then has the fewest ranks and room (`per_node` slots a node; the first such in `known`),
/// never to `node` or an excluded node. Refused when `node` is excluded, has no rank, no
/// other node is up, or the others lack the room.
pub fn plan_drain(
    current: &BTreeMap<u32, String>,
    known: &[String],
    excluded: &[String],
    node: &str,
    per_node: Option<u32>,
) -> Result<BTreeMap<u32, String>, String> {
    if excluded.iter().any(|e| e == node) {
        return Err(format!(
            "{node} is already excluded for the rest of the job"
        ));
    }
    if !current.values().any(|n| n == node) {
        return Err(format!("{node} has no rank of the job"));
    }
    let up: Vec<&String> = known
        .iter()
        .filter(|k| *k != node && !excluded.contains(k))
        .collect();
    if up.is_empty() {
        return Err(format!(
            "no node other than {node} is up (excluded: {})",
            excluded.join(", ")
        ));
    }
    placement::spread(current, node, &up, per_node).map_err(|e| e.to_string())
}

/// The nodes excluded for the rest of the job (`control/excluded`, one name a line).
pub fn excluded(job_dir: &Path) -> Vec<String> {
    durable::read_capped(&job_dir.join(EXCLUDED), MAX_BYTES)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::trim)
                .filter(|l| plain(l))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Adds `node` to the job's excluded nodes.
pub fn exclude(job_dir: &Path, node: &str) -> anyhow::Result<()> {
    let mut all = excluded(job_dir);
    if !all.iter().any(|e| e == node) {
        all.push(node.to_owned());
    }
    let path = job_dir.join(EXCLUDED);
    let text: String = all.iter().map(|n| format!("{n}\n")).collect();
    durable::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot record {node} as excluded in {}", path.display()))
}

/// Writes the pending placement `next`, asks the job for a checkpoint-and-exit, records
/// `exclude` once the job acknowledged, and follows the relaunch.
fn change(
    job: &Job,
    next: &BTreeMap<u32, String>,
    ranks: &[u32],
    wait: u64,
    exclude_node: Option<&str>,
) -> anyhow::Result<Outcome> {
    let dir = &job.dir;
    let pending = dir.join(PENDING);
    if pending.exists() {
        bail!(
            "a migration is already pending ({}); wait for it to take effect",
            pending.display()
        );
    }
    let (_, offset) = events::read_from(dir, 0).unwrap_or_default();
    durable::write_atomic(&pending, render(next).as_bytes())
        .with_context(|| format!("cannot write {}", pending.display()))?;
    // On emulated nodes the running `ckpt run` starts the relaunch now: the checkpoint is
    // asked for once its ranks have initialised MPI, so that stays out of the freeze.
    if job.emulated {
        match crate::ahead::wait_ready(dir, READY_WAIT) {
            Some(took) => outln!(
                "prepared     {:>8.2} s  (the relaunch started ahead; the application runs)",
                took.as_secs_f64()
            ),
            None => outln!(
                "(the relaunch started ahead was not ready after {} s: checkpointing anyway)",
                READY_WAIT.as_secs()
            ),
        }
    }
    let t0 = Instant::now();
    let asked_at = ckpt::util::unix_ms();
    // The checkpoint and the stop: `ckpt checkpoint --then-exit` (refused without a run).
    let asked = request::run(&CheckpointArgs {
        job_dir: dir.clone(),
        then_exit: true,
        wait,
    });
    match asked {
        Ok(Outcome::Success) => {}
        other => {
            let _ = std::fs::remove_file(&pending);
            return other.map_err(|e| e.context("the migration's checkpoint failed"));
        }
    }
    if let Some(node) = exclude_node {
        exclude(dir, node)?;
        outln!("{node} is excluded for the rest of the job");
    }
    follow(dir, offset, ranks, t0, asked_at, Duration::from_secs(wait))
}

/// Refuses a placement that empties a node when the newest committed epoch has no level
/// beyond L1: the files written there could then reach no one (no rank left on that node to
/// send them, no copy elsewhere), and the relaunch could not restore.
fn check_reachable(
    dir: &Path,
    now: &BTreeMap<u32, String>,
    next: &BTreeMap<u32, String>,
) -> anyhow::Result<()> {
    let emptied: Vec<&String> = now
        .values()
        .filter(|n| !next.values().any(|m| m == *n))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if emptied.is_empty() {
        return Ok(());
    }
    // The relaunch restores the migration's own epoch, whose planned levels complete before
    // the ranks stop, or falls back to an older one that has them: enough if any epoch plans
    // or has a level beyond L1.
    let committed = ckpt::manifest::committed(dir).unwrap_or_default();
    let newest = jobdir::newest_loadable(dir, &committed);
    let beyond = |l: &ckpt::manifest::Level| !matches!(l, ckpt::manifest::Level::Local);
    let redundant = committed.iter().any(|&e| {
        ckpt::manifest::load(dir, e)
            .is_ok_and(|m| m.levels.iter().any(beyond) || m.copies.planned.iter().any(beyond))
    });
    if redundant {
        return Ok(());
    }
    let names: Vec<&str> = emptied.iter().map(|s| s.as_str()).collect();
    Err(UsageError(format!(
        "this would leave {} without a rank while the job's epochs (newest{}) exist only there \
         (L1, no other level planned): nothing could send its files to their ranks' new \
         nodes; move fewer ranks, or run the job with L2, L3 or L4 (`ckpt run --l2-every 1`)",
        names.join(", "),
        newest.map_or(String::new(), |m| format!(" {}", m.epoch))
    ))
    .into())
}

/// Ranks `2` or `2,3`: each below `nranks`, no repeats.
pub fn parse_ranks(s: &str, nranks: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let r: u32 = part
            .trim()
            .parse()
            .map_err(|_| format!("--rank {s}: {part:?} is not a rank"))?;
        if r >= nranks {
            return Err(format!(
                "--rank {s}: rank {r} does not exist (ranks 0-{})",
                nranks - 1
            ));
        }
        if out.contains(&r) {
            return Err(format!("--rank {s}: rank {r} given twice"));
        }
        out.push(r);
    }
    Ok(out)
}

/// The moments of a migration, in Unix ms, from the job's events and the epoch's manifest.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Moments {
    /// `ckpt migrate` asked for the checkpoint.
    pub asked: u64,
    /// Rank 0 stopped for the checkpoint: the commit time its manifest records, less the
    /// checkpoint's own time (the cut and the commit).
    pub stopped: u64,
    /// The manifest was published.
    pub committed: u64,
    /// The launcher started the new launch (the old one's ranks all gone).
    pub relaunched: u64,
    /// Rank 0 of the new launch logged `started` (MPI and the library initialised).
    pub started: u64,
    /// Rank 0 logged `restored`: every rank's state is back.
    pub restored: u64,
}

impl Moments {
    /// The phases printed by `ckpt migrate`, in seconds: waiting for the next poll,
    /// checkpoint, stop, relaunch, restore, and the total freeze (from `stopped` to
    /// `restored`).
    pub fn phases(&self) -> [f64; 6] {
        let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e3;
        [
            secs(self.asked, self.stopped),
            secs(self.stopped, self.committed),
            secs(self.committed, self.relaunched),
            secs(self.relaunched, self.started),
            secs(self.started, self.restored),
            secs(self.stopped, self.restored),
        ]
    }
}

/// Follows the events of the relaunch and prints the phases: the wait for the ranks' next poll
/// (the application runs), the checkpoint (the cut and the commit), the stop (until the
/// launcher starts the new launch), the relaunch (until its ranks started), the restore (with
/// the moved ranks' transfers), and the total freeze, from the moment rank 0 stopped for the
/// checkpoint until every rank's state is back. The moments come from rank 0's and the
/// launcher's clocks (one machine for emulated nodes). `asked` is when the request was made.
fn follow(
    dir: &Path,
    mut offset: u64,
    ranks: &[u32],
    t0: Instant,
    asked: u64,
    limit: Duration,
) -> anyhow::Result<Outcome> {
    let mut at = Moments {
        asked,
        ..Moments::default()
    };
    let mut commit = None;
    let mut transfer: Vec<(u32, String, f64)> = Vec::new();
    // Files handed off during the checkpoint: rank, from, to, seconds.
    let mut handed: Vec<(u32, String, String, f64)> = Vec::new();
    let mut restored = None;
    while restored.is_none() {
        if t0.elapsed() > limit {
            bail!(
                "the job did not restore within {} s after the migration's checkpoint; see {}",
                limit.as_secs(),
                dir.join(crate::report::LOG_FILE).display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        let (new, off) = events::read_from(dir, offset)?;
        offset = off;
        for e in new {
            let relaunched = at.relaunched > 0;
            match e {
                Event::Committed {
                    epoch,
                    total_secs,
                    cut_secs,
                    ..
                } if !relaunched => commit = Some((epoch, total_secs + cut_secs)),
                Event::Relaunching { unix_ms, .. } => at.relaunched = unix_ms,
                Event::Started { unix_ms, .. } if relaunched => at.started = unix_ms,
                Event::Recovered {
                    rank, level, secs, ..
                } if relaunched => transfer.push((rank, format!("{level:?}"), secs)),
                Event::HandedOff {
                    rank,
                    from,
                    node,
                    secs,
                    ..
                } if relaunched => handed.push((rank, from, node, secs)),
                Event::Restored {
                    epoch,
                    read_secs,
                    unix_ms,
                    ..
                } if relaunched => {
                    at.restored = unix_ms;
                    restored = Some((epoch, read_secs));
                }
                Event::NoUsableEpoch { .. } => bail!("the relaunch found no usable epoch"),
                _ => {}
            }
        }
    }
    let (epoch, read_secs) = restored.unwrap_or_default();
    let (committed, checkpoint_secs) = commit.unwrap_or((epoch, 0.0));
    // Only if the manifest went (pruned or damaged) before this read: no checkpoint phase.
    at.committed = ckpt::manifest::load(dir, committed)
        .map(|m| m.created_unix_ms)
        .unwrap_or(at.relaunched);
    at.stopped = at.committed.saturating_sub((checkpoint_secs * 1e3) as u64);
    let [waiting, checkpoint, stop, relaunch, restore, freeze] = at.phases();
    outln!("waiting      {waiting:>8.2} s  (until the ranks' next poll; the application runs)");
    outln!("checkpoint   {checkpoint:>8.2} s  (epoch {committed}: the cut and the commit)");
    outln!("stop         {stop:>8.2} s  (until the ranks exited and the launcher relaunched)");
    outln!("relaunch     {relaunch:>8.2} s  (until the new ranks started: MPI and ckpt ready)");
    for (rank, from, to, secs) in &handed {
        outln!(
            "  handoff    {secs:>8.2} s  rank {rank}'s file streamed from {from} to {to} during \
             the checkpoint and stop"
        );
    }
    outln!(
        "restore      {restore:>8.2} s  (until every rank's state is back; reading epoch {epoch} \
         took {read_secs:.2} s on the slowest rank{})",
        if transfer.is_empty() {
            ""
        } else {
            ", of which:"
        }
    );
    for (rank, level, secs) in &transfer {
        let level = match level.as_str() {
            "Partner" => "its partner (L2)",
            "Parity" => "its group's parity (L3)",
            "Pfs" => "shared storage (L4)",
            _ => "its old node (L1)",
        };
        outln!("  transfer   {secs:>8.2} s  rank {rank} from {level}, received on its new node");
    }
    outln!(
        "total freeze {freeze:>8.2} s  (from the checkpoint's start to the restore's end; {:.2} s \
         since the request)",
        waiting + freeze
    );
    let missing: Vec<&u32> = ranks
        .iter()
        .filter(|r| !transfer.iter().any(|t| t.0 == **r) && !handed.iter().any(|h| h.0 == **r))
        .collect();
    if !missing.is_empty() {
        outln!("(ranks {missing:?} found their files on their new node already)");
    }
    Ok(Outcome::Success)
}

/// Puts `map` in force as the job's placement (the ranks of the job must be stopped).
pub fn set_placement(job_dir: &Path, map: &BTreeMap<u32, String>) -> anyhow::Result<()> {
    let path = job_dir.join(PLACEMENT);
    durable::write_atomic(&path, render(map).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Where the placement file of a job is.
pub fn placement_path(job_dir: &Path) -> PathBuf {
    job_dir.join(PLACEMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phases_of_a_migration_add_up_to_its_freeze() {
        let at = Moments {
            asked: 1_000,
            stopped: 1_300,
            committed: 1_900,
            relaunched: 2_050,
            started: 2_400,
            restored: 2_900,
        };
        let [waiting, checkpoint, stop, relaunch, restore, freeze] = at.phases();
        assert_eq!(
            [waiting, checkpoint, stop, relaunch, restore],
            [0.3, 0.6, 0.15, 0.35, 0.5]
        );
        assert!((checkpoint + stop + relaunch + restore - freeze).abs() < 1e-9);
        assert_eq!(freeze, 1.6);
        // A moment missing from an older log never makes a phase negative.
        let old = Moments { started: 0, ..at };
        assert_eq!(old.phases()[3], 0.0);
    }

    #[test]
    fn placement_files_parse_strictly() {
        let p = parse("0 node0\n1 node3\n\n2   node1 \n").unwrap();
        assert_eq!(p.get(&1).map(String::as_str), Some("node3"));
        assert_eq!(render(&p), "0 node0\n1 node3\n2 node1\n");
        for (bad, why) in [
            ("0", "expected `RANK NODE`"),
            ("0 a b", "expected `RANK NODE`"),
            ("x node0", "is not a rank"),
            ("0 ../x", "is not a node name"),
            ("0 a\n0 b", "placed twice"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    fn nodes(n: u32) -> Vec<String> {
        (0..n).map(node_name).collect()
    }

    #[test]
    fn drains_go_to_the_fewest_ranks_first_and_skip_excluded_nodes() {
        let blocks: BTreeMap<u32, String> =
            (0..8).map(|r| (r, node_name(node_of(r, 8, 4)))).collect();
        let next = plan_drain(&blocks, &nodes(4), &[], "node1", None).unwrap();
        assert_eq!(next[&2], "node0");
        assert_eq!(next[&3], "node2");
        assert!(!next.values().any(|n| n == "node1"));
        assert_eq!(next[&0], "node0", "ranks of other nodes stay");
        let next = plan_drain(&next, &nodes(4), &["node1".into()], "node0", None).unwrap();
        assert_eq!(
            render(&next),
            "0 node3\n1 node2\n2 node3\n3 node2\n4 node2\n5 node2\n6 node3\n7 node3\n"
        );
        assert!(!next.values().any(|n| n == "node1" || n == "node0"));
    }

    #[test]
    fn drains_are_refused_with_a_reason() {
        let two: BTreeMap<u32, String> = (0..4).map(|r| (r, node_name(node_of(r, 4, 2)))).collect();
        for (excl, node, why) in [
            (vec![], "node0", None),
            (
                vec!["node1".to_owned()],
                "node0",
                Some("no node other than node0 is up"),
            ),
            (vec!["node0".to_owned()], "node0", Some("already excluded")),
        ] {
            let got = plan_drain(&two, &nodes(2), &excl, node, None);
            match why {
                None => assert!(got.is_ok(), "{got:?}"),
                Some(why) => assert!(got.unwrap_err().contains(why)),
            }
        }
        let empty = plan_drain(&two, &nodes(3), &[], "node2", None).unwrap_err();
        assert!(empty.contains("has no rank"), "{empty}");
    }

    /// With `--ranks-per-node` a drain spreads only onto nodes with room, and is refused when
    /// the others lack it.
    #[test]
    fn drains_spread_only_onto_nodes_with_room() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let now: BTreeMap<u32, String> = [(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "c")]
            .map(|(r, n)| (r, n.to_owned()))
            .into();
        let next = plan_drain(&now, &names, &[], "a", Some(3)).unwrap();
        assert_eq!(render(&next), "0 c\n1 b\n2 b\n3 b\n4 c\n");
        let e = plan_drain(&now, &names, &[], "a", Some(2)).unwrap_err();
        assert_eq!(
            e,
            "no room for the 2 ranks of a: the other nodes have 1 free slot (--ranks-per-node 2)"
        );
    }

    #[test]
    fn exclusions_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("control")).unwrap();
        assert!(excluded(dir.path()).is_empty());
        exclude(dir.path(), "node1").unwrap();
        exclude(dir.path(), "node3").unwrap();
        exclude(dir.path(), "node1").unwrap();
        assert_eq!(excluded(dir.path()), ["node1", "node3"]);
    }

    #[test]
    fn ranks_are_checked() {
        assert_eq!(parse_ranks("2,3", 8), Ok(vec![2, 3]));
        assert!(parse_ranks("8", 8).unwrap_err().contains("does not exist"));
        assert!(parse_ranks("1,1", 8).unwrap_err().contains("twice"));
        assert!(parse_ranks("a", 8).unwrap_err().contains("not a rank"));
    }

    #[test]
    fn the_file_overrides_the_blocks_and_pending_placements_take_effect() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("control")).unwrap();
        assert_eq!(node_for(dir.path(), 2, 8, 4), "node1");
        std::fs::write(dir.path().join(PENDING), "0 node0\n2 node3\n").unwrap();
        assert_eq!(
            node_for(dir.path(), 2, 8, 4),
            "node1",
            "pending is not in force"
        );
        let moves = take_pending(dir.path(), &in_force(dir.path(), 8, Some(4))).unwrap();
        assert_eq!(moves.as_deref(), Some("rank 2 node1 -> node3"));
        assert_eq!(node_for(dir.path(), 2, 8, 4), "node3");
        assert_eq!(
            node_for(dir.path(), 5, 8, 4),
            "node2",
            "a rank the file omits"
        );
        assert_eq!(take_pending(dir.path(), &BTreeMap::new()).unwrap(), None);
    }
}
