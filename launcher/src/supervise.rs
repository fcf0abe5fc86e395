//! The launch / watch / restart loop of `ckpt run`, and all process handling: spawning
//! mpirun, forwarding its stderr (scanning it for the rank that died), tailing the job's
//! event log, forwarding SIGINT/SIGTERM, and deciding whether to relaunch.
//!
//! Decisions are simple on purpose: a launch that exits 0 ends the job; any other exit is a
//! failure and is relaunched (the ranks restore the newest committed epoch themselves) while
//! restarts remain, unless its ranks reported that no epoch is usable (`no_usable_epoch`: a
//! relaunch would fail the same way); a signal to the launcher is forwarded and never leads to
//! a restart. With `--quiet-after`, a job that logs no event for that long is reported (not
//! stopped: the ranks' own deadlines end a job that waits on a rank that stopped).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ckpt::events::{self, Event};
use ckpt::manifest::{self, Manifest};
use ckpt::storage::durable;

use crate::ahead::{self, Held};
use crate::backend::mpirun::{self, Mpirun};
use crate::backend::srun::{self, Srun};
use crate::backend::{Backend, Failure, Launch};
use crate::deadline::{self, EndSource, Schedule};
use crate::placement::Placement;
use crate::plan::RunPlan;
use crate::report::{self, say};
use crate::spares::{self, Reported, Verdict};
use crate::{jobdir, lock, migrate, ranks, signals, start, Outcome};

/// How often the supervisor checks mpirun, signals and the event log.
const POLL: Duration = Duration::from_millis(50);
/// The same while a launch started ahead waits for this one to end.
const POLL_HELD: Duration = Duration::from_millis(5);
/// Pause between a failed launch and the next one.
const PAUSE: Duration = Duration::from_millis(200);
/// How long mpirun may take to exit after a forwarded signal before it is killed.
const GRACE: Duration = Duration::from_secs(10);
/// How long to wait, once mpirun exited, for the rest of its stderr.
const STDERR_DRAIN: Duration = Duration::from_secs(2);

/// Runs the job of `plan` to completion, failure or interruption.
pub fn run(plan: &RunPlan) -> anyhow::Result<Outcome> {
    let job = jobdir::prepare(plan, ckpt::util::unix_ms())?;
    let plan = &RunPlan {
        job_id: job.job_id.clone(),
        ..plan.clone()
    };
    let log = plan.job_dir.join(report::LOG_FILE);
    if let Err(e) = report::log_to(&log) {
        say(format!(
            "warning: cannot append the report to {}: {e}",
            log.display()
        ));
    }
    signals::install(plan.signal, plan.exit_signal)
        .context("cannot install the launcher's signal handlers")?;
    let mut watch = signals::Watch::new();
    let tail = Arc::new(Mutex::new(Tail::new(
        &plan.job_dir,
        job.events_offset,
        plan.quiet_after,
    )));
    let mut exit_requested: Option<ExitRequest> = None;
    let backend: Box<dyn Backend> = match &plan.srun {
        Some(alloc) => Box::new(Srun {
            alloc: alloc.clone(),
        }),
        None => Box::new(Mpirun {
            as_root: mpirun::running_as_root(),
        }),
    };
    // Under srun: the nodes lost so far inside the allocation, recorded for `ckpt migrate`.
    let mut srun_nodes = srun::Nodes::default();
    record_allocation(plan, &srun_nodes)?;
    // The epoch the next launch restores: on real nodes, its ranks stay where its files are.
    let mut from = job.resume_from.clone();
    let total = plan.max_restarts + 1;
    let start = Instant::now();

    say(report::header(plan));
    if let Some(r) = &job.expired {
        say(report::expired(r, &plan.job_dir));
    }
    if !job.committed.is_empty() {
        say(report::resuming(&job.committed, job.resume_from.as_ref()));
        with(&tail, |t| {
            t.expected = job.resume_from.as_ref().map(|m| m.epoch)
        });
    }
    if !job.quarantined.is_empty() {
        say(report::quarantined_at_start(
            &job.quarantined,
            &job.committed,
        ));
    }
    let mut schedule = end_schedule(plan);
    spares::Watch::prepare(plan)?;
    let mut nodes_watch = spares::Watch::default();
    let rank_exit_wait = ranks::wait_from_env()?;
    let mut n = 1;
    // Relaunches for migrations, which do not count against --max-restarts.
    let mut migrations = 0;
    // Whether the next launch puts a migration's placement in force (`ckpt migrate` times it).
    let mut relaunching = false;
    // The next launch, started ahead for a pending migration (see `ahead`).
    let mut held: Option<Held> = None;
    loop {
        // Ranks of an earlier launch (of this run, or of a run whose launcher died) must be
        // gone before new ones write.
        ranks::ensure_gone(&plan.job_dir, rank_exit_wait)?;
        let restart_count = job.first_restart_count + n - 1;
        let placement = place(plan, from.as_ref(), &mut srun_nodes)?;
        if let Some(p) = &placement {
            say(report_placement(p));
        }
        // A launch started ahead for this placement is used if it still runs; any other is
        // stopped (dropped).
        let ready = match held.take() {
            Some(mut h) if placement.is_none() => {
                let in_force = migrate::in_force(&plan.job_dir, plan.ranks, plan.emulate_nodes);
                h.fits(&in_force, restart_count).then_some(h)
            }
            _ => None,
        };
        let t0 = Instant::now();
        with(&tail, |t| t.launched(t0, n));
        if std::mem::take(&mut relaunching) {
            let at = Event::Relaunching {
                launch: restart_count,
                unix_ms: ckpt::util::unix_ms(),
            };
            if let Err(e) = events::append(&plan.job_dir, &at) {
                say(format!("warning: cannot log the relaunch: {e}"));
            }
        }
        let (launch, child, how) = match ready {
            Some(h) => {
                let (launch, child) = h.release()?;
                (launch, child, " (started ahead; released now)")
            }
            None => {
                let launch = backend.launch(plan, restart_count, placement.as_ref());
                for (path, text) in launch.files() {
                    durable::write_atomic(path, text.as_bytes())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                let child = spawn(&launch)?;
                (launch, child, "")
            }
        };
        let line = report::launch(n, total + migrations, restart_count, launch.argv());
        say(format!("{line}{how}"));
        let ended = run_once(
            Running {
                launch: &launch,
                child,
            },
            backend.as_ref(),
            placement.as_ref(),
            plan,
            &mut watch,
            &tail,
            Stops {
                requested: &mut exit_requested,
                schedule: schedule.as_mut(),
                ahead: Ahead {
                    held: &mut held,
                    restart_count: restart_count + 1,
                    failed: false,
                },
            },
        )?;
        ahead::released(&plan.job_dir, restart_count);
        // Only a migration's stop uses a launch started ahead.
        if !matches!(&ended, Ended::Exited(status, ..) if status.success()) {
            held = None;
        }
        // Events written just before mpirun exited are reported before its outcome.
        let tail_now = with(&tail, |t| {
            t.drain();
            t.summary()
        });
        let (status, failure, banner, lost_nodes, not_started) = match ended {
            Ended::Interrupted(sig) => {
                say(report::interrupted(&signals::name(sig)));
                say(report::resume_hint(plan));
                return Ok(Outcome::Interrupted(sig));
            }
            Ended::Exited(status, ..) if status.success() => {
                // A migration stopped the ranks: relaunch them with its placement.
                let on_nodes =
                    plan.emulate_nodes.is_some() || plan.nodes.is_some() || plan.srun.is_some();
                if let (Some(epoch), true) = (tail_now.stopped, on_nodes) {
                    let current = migrate::in_force(&plan.job_dir, plan.ranks, plan.emulate_nodes);
                    match migrate::take_pending(&plan.job_dir, &current) {
                        Ok(Some(moves)) => {
                            say(format!(
                                "migrating after epoch {epoch}: {moves}; relaunching with the \
                                 new placement"
                            ));
                            relaunching = true;
                            migrations += 1;
                            n += 1;
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => say(format!("warning: the pending migration failed: {e:#}")),
                    }
                }
                if let Some(epoch) = tail_now.stopped {
                    if let Some(req) = &exit_requested {
                        record_stop(&plan.job_dir, &tail, epoch, secs(req.at));
                    }
                    say(report::stopped(epoch, secs(start)));
                    say(report::resume_hint(plan));
                    return Ok(Outcome::Stopped);
                } else {
                    say(report::finished(
                        n,
                        migrations,
                        &tail_now.committed,
                        secs(start),
                    ));
                }
                return Ok(Outcome::Success);
            }
            Ended::Exited(status, failure, banner, lost) => (status, failure, banner, lost, None),
            // What srun or mpirun says of the ranks it was told to stop is no failure of theirs.
            Ended::NotStarted(status, why, lost) => (status, None, false, lost, Some(why)),
        };
        let blame = not_started
            .clone()
            .or_else(|| {
                plan.srun
                    .as_ref()
                    .and_then(|_| srun::blame(&lost_nodes, failure.as_ref()))
            })
            .or_else(|| failure.as_ref().map(|f| f.to_string()))
            .or(tail_now.blame);
        let blame = blame.or_else(|| (!tail_now.started).then(|| "no rank started".to_owned()));
        let launcher = if plan.srun.is_some() {
            "srun"
        } else {
            "mpirun"
        };
        say(report::failed(n, secs(t0), blame, launcher, status));
        if banner {
            say(report::normal_banner());
        }
        if let Err(found) = ckpt::identity::check(&plan.job_dir, &plan.job_id) {
            say(format!(
                "job directory {} is no longer this job's (job {}): {found}; not relaunching \
                 into it",
                plan.job_dir.display(),
                plan.job_id
            ));
            return Ok(Outcome::JobFailed);
        }
        if let Some((tried, quarantined)) = &tail_now.no_usable {
            say(report::no_usable_epoch(tried, quarantined));
            say(report::resume_hint(plan));
            return Ok(Outcome::JobFailed);
        }
        // A launch stopped by its start deadline is relaunched: its step never ran the ranks.
        if !tail_now.started && not_started.is_none() {
            say(report::failed_before_start());
            say(report::resume_hint(plan));
            return Ok(Outcome::JobFailed);
        }
        if let Some(req) = &exit_requested {
            say(report::failed_after_exit_request(&req.who));
            say(report::resume_hint(plan));
            return Ok(Outcome::JobFailed);
        }
        let reported = Reported {
            failure: failure.as_ref(),
            lost_nodes: &lost_nodes,
            rank_nodes: &tail_now.rank_nodes,
        };
        let verdict = match (&plan.srun, &placement) {
            (Some(alloc), Some(used)) => srun_nodes.after_failure(
                plan,
                alloc,
                used,
                failure.as_ref(),
                &lost_nodes,
                srun::Nodes::current(alloc).as_deref(),
            ),
            _ => nodes_watch.after_failure(plan, &reported)?,
        };
        match verdict {
            Verdict::Unchanged => {}
            Verdict::Moved(lines) => {
                for line in lines {
                    say(format!(
                        "{line}; the node is excluded for the rest of the job"
                    ));
                }
                record_allocation(plan, &srun_nodes)?;
            }
            Verdict::Stop(why) => {
                say(spares::stop_message(&why, &plan.job_dir));
                say(report::resume_hint(plan));
                return Ok(Outcome::JobFailed);
            }
        }
        if n == total + migrations {
            say(report::gave_up(
                plan.max_restarts,
                &tail_now.committed,
                secs(start),
            ));
            say(report::resume_hint(plan));
            return Ok(Outcome::JobFailed);
        }
        if let Some(s) = schedule.as_ref().filter(|s| s.due(ckpt::util::unix_ms())) {
            say(format!(
                "{}: no time left for a relaunch; stopping, to resume from the newest epoch",
                s.firing(ckpt::util::unix_ms())
            ));
            say(report::resume_hint(plan));
            return Ok(Outcome::Stopped);
        }
        thread::sleep(PAUSE);
        if let Some(sig) = watch.take() {
            say(report::interrupted(&signals::name(sig)));
            say(report::resume_hint(plan));
            return Ok(Outcome::Interrupted(sig));
        }
        let committed = manifest::committed(&plan.job_dir).unwrap_or_default();
        from = jobdir::newest_loadable(&plan.job_dir, &committed);
        with(&tail, |t| t.expected = from.as_ref().map(|m| m.epoch));
        say(report::restarting(
            n - migrations,
            plan.max_restarts,
            from.as_ref(),
        ));
        n += 1;
    }
}

/// The schedule of the last checkpoint before the job's end time (`--end-time`), said; `None`
/// when there is no end time (one too close already never fires). The estimate starts from the
/// slowest checkpoint in the job's whole event log (earlier runs of a requeued job included).
fn end_schedule(plan: &RunPlan) -> Option<Schedule> {
    let (end, source) = match &plan.end_time {
        EndSource::None => return None,
        EndSource::At(end, source) => (*end, *source),
        EndSource::Squeue(id) => match deadline::query_squeue(id) {
            Ok(Some(end)) => (end, "squeue"),
            Ok(None) => return None,
            Err(e) => {
                say(format!(
                    "warning: cannot read Slurm job {id}'s end time: {e}; no last checkpoint \
                     is scheduled (--end-time UNIX_SECONDS gives it)"
                ));
                return None;
            }
        },
    };
    let slowest = events::read_from(&plan.job_dir, 0)
        .ok()
        .and_then(|(all, _)| deadline::slowest_of(&all));
    let now = ckpt::util::unix_ms();
    let (schedule, line) = Schedule::start(end, source, plan.end_margin, slowest, now);
    say(line);
    Some(schedule)
}

/// The placement of a launch on real nodes or under srun (`None` on this machine), put in
/// force as `control/placement` on real nodes: ranks stay where the placement in force put them
/// (the last launch, a migration, a lost node's replacement), else on the nodes where `from`,
/// the epoch they will restore, put them, where they fit and their node is not excluded.
fn place(
    plan: &RunPlan,
    from: Option<&Manifest>,
    srun_nodes: &mut srun::Nodes,
) -> anyhow::Result<Option<Placement>> {
    let restored = || -> Option<std::collections::BTreeMap<u32, String>> {
        from.map(|m| (0..).zip(m.ranks.iter().map(|r| r.node.clone())).collect())
    };
    let dir = &plan.job_dir;
    let previous = || {
        migrate::placement_file(dir)
            .filter(|p| !p.is_empty())
            .or_else(restored)
    };
    if let Some(alloc) = &plan.srun {
        // Drained nodes (`ckpt drain`) are excluded like lost ones.
        srun_nodes.exclude(&migrate::excluded(dir));
        let p = srun_nodes
            .place(plan, alloc, previous().as_ref())
            .map_err(anyhow::Error::msg)?;
        durable::create_dir_all(&dir.join("control"))?;
        migrate::set_placement(dir, &p.to_map())?;
        return Ok(Some(p));
    }
    let Some(nodes) = &plan.nodes else {
        return Ok(None);
    };
    let previous = previous();
    let placement = nodes
        .place(plan.ranks, previous.as_ref(), &migrate::excluded(dir))
        .map_err(|e| anyhow::anyhow!("--nodes {}: {e}", nodes.list))?;
    durable::create_dir_all(&dir.join("control"))?;
    migrate::set_placement(dir, &placement.to_map())?;
    Ok(Some(placement))
}

/// Under srun, records the allocation and the nodes lost in it (`control/allocation`, read by
/// `ckpt migrate` and `ckpt drain`); otherwise removes a record an earlier run left.
fn record_allocation(plan: &RunPlan, nodes: &srun::Nodes) -> anyhow::Result<()> {
    let dir = &plan.job_dir;
    match &plan.srun {
        Some(alloc) => {
            durable::create_dir_all(&dir.join("control"))?;
            srun::Recorded::of(alloc, nodes.excluded()).write(dir)
        }
        None => match std::fs::remove_file(dir.join(srun::ALLOCATION)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(anyhow::Error::from(e).context(
                format!("cannot remove {}", dir.join(srun::ALLOCATION).display()),
            )),
            _ => Ok(()),
        },
    }
}

/// The node a launch put `rank` on: the placement's, else its emulated node; `None` on this
/// machine alone.
fn rank_node(plan: &RunPlan, placement: Option<&Placement>, rank: u32) -> Option<String> {
    if let Some(p) = placement {
        return p.node_of(rank).map(str::to_owned);
    }
    let nodes = plan.emulate_nodes?;
    Some(migrate::node_for(&plan.job_dir, rank, plan.ranks, nodes))
}

/// `ranks on nodes: n1 (0, 1), n2 (2, 3)` (nodes without a rank left out).
fn report_placement(p: &Placement) -> String {
    let nodes: Vec<String> = p
        .nodes()
        .iter()
        .filter_map(|n| {
            let ranks: Vec<String> = p.ranks_on(n).iter().map(u32::to_string).collect();
            (!ranks.is_empty()).then(|| format!("{n} ({})", ranks.join(", ")))
        })
        .collect();
    format!("ranks on nodes: {}", nodes.join(", "))
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// How one launch ended.
enum Ended {
    /// mpirun (or srun) exited on its own, with the failure its stderr reported (if any),
    /// whether it printed Open MPI's "Primary job terminated normally" banner, and the nodes
    /// it reported lost or failed.
    Exited(ExitStatus, Option<Failure>, bool, Vec<String>),
    /// The launcher received this signal and forwarded it; mpirun has exited since.
    Interrupted(i32),
    /// Stopped by the start deadline (`--start-timeout`): the exit status, which ranks never
    /// started (for the report), and the nodes the backend reported lost.
    NotStarted(ExitStatus, String, Vec<String>),
}

/// Runs `f` on the shared tail (a poisoned lock still holds a usable tail).
fn with<T>(tail: &Mutex<Tail>, f: impl FnOnce(&mut Tail) -> T) -> T {
    f(&mut tail.lock().unwrap_or_else(|p| p.into_inner()))
}

/// What `run_once` tends besides the launch: what may stop it on request (the
/// checkpoint-and-exit asked so far, by the exit signal or the end time, and the end-time
/// schedule), and the next launch started ahead for a pending migration.
struct Stops<'a> {
    requested: &'a mut Option<ExitRequest>,
    schedule: Option<&'a mut Schedule>,
    ahead: Ahead<'a>,
}

/// The next launch started ahead (see `ahead`), with the restart count it would have.
struct Ahead<'a> {
    held: &'a mut Option<Held>,
    restart_count: u32,
    /// Starting it failed once in this launch: not tried again.
    failed: bool,
}

impl Ahead<'_> {
    /// Starts the next launch ahead when a migration is pending, and stops it when the
    /// migration is withdrawn or changed.
    fn tend(&mut self, plan: &RunPlan, backend: &dyn Backend) {
        if !ahead::possible(plan) {
            return;
        }
        let pending = migrate::pending(&plan.job_dir);
        if let (Some(h), pending) = (self.held.as_ref(), &pending) {
            if pending.as_ref().is_some_and(|m| h.is_for(m)) {
                return;
            }
            // Withdrawn (its migration failed) or replaced: stopped as it is dropped.
            *self.held = None;
        }
        let (Some(map), false) = (pending, self.failed) else {
            return;
        };
        match Held::start(plan, backend, self.restart_count, map, spawn) {
            Ok(h) => {
                say(
                    "a migration is pending: started the next launch ahead (its ranks wait \
                     until these have stopped)",
                );
                *self.held = Some(h);
            }
            Err(e) => {
                self.failed = true;
                say(format!(
                    "warning: cannot start the next launch ahead ({e:#}); it starts after the \
                     stop"
                ));
            }
        }
    }
}

/// A launch's command and its process.
struct Running<'a> {
    launch: &'a Launch,
    child: Child,
}

/// Spawns the launch's command, tied to the launcher's life.
fn spawn(launch: &Launch) -> anyhow::Result<Child> {
    let mut cmd = launch.command();
    die_with_parent(&mut cmd);
    cmd.spawn()
        .with_context(|| format!("cannot start {}", launch.argv()[0].to_string_lossy()))
}

/// Watches a launch until it exits.
fn run_once(
    running: Running<'_>,
    backend: &dyn Backend,
    placement: Option<&Placement>,
    plan: &RunPlan,
    watch: &mut signals::Watch,
    tail: &Arc<Mutex<Tail>>,
    stops: Stops<'_>,
) -> anyhow::Result<Ended> {
    let Stops {
        requested: exit_requested,
        mut schedule,
        mut ahead,
    } = stops;
    let Running { launch, mut child } = running;
    let scanner = Arc::new(Mutex::new(backend.failure_reader()));
    // mpirun or srun, as reports name it.
    let prog = Path::new(&launch.argv()[0])
        .file_name()
        .map_or_else(|| "mpirun".into(), |n| n.to_string_lossy().into_owned());
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let tail = Arc::clone(tail);
        readers.push(thread::spawn(move || {
            forward(stdout, Stream::Stdout, &tail, |_| {});
        }));
    }
    if let Some(stderr) = child.stderr.take() {
        let (tail, scanner) = (Arc::clone(tail), Arc::clone(&scanner));
        readers.push(thread::spawn(move || {
            forward(stderr, Stream::Stderr, &tail, |line| {
                if let Ok(mut s) = scanner.lock() {
                    s.feed(&String::from_utf8_lossy(line));
                }
            });
        }));
    }
    let mut signalled: Option<(i32, Instant)> = None;
    // Set when the start deadline stopped the launch: which ranks never started, and when.
    let mut not_started: Option<(String, Instant)> = None;
    let launched = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("cannot wait for {prog}"))?
        {
            break status;
        }
        if let Some(sig) = watch.take() {
            let to = backend.forwarded(sig);
            let alias = if to == sig {
                String::new()
            } else {
                format!(" as {}", signals::name(to))
            };
            say(format!(
                "received {}: forwarding it to {prog} (pid {}){alias}; no restart will follow",
                signals::name(sig),
                child.id()
            ));
            if let Err(e) = signals::send(child.id(), to) {
                say(format!("warning: cannot signal {prog}: {e}"));
            }
            signalled.get_or_insert((sig, Instant::now()));
        }
        if let (n @ 1.., Some(sig)) = (watch.take_exit(), plan.exit_signal) {
            if exit_requested.is_none() {
                let name = signals::name(sig);
                let times = if n == 1 {
                    String::new()
                } else {
                    format!(" ({n} times)")
                };
                say(request_exit(
                    &plan.job_dir,
                    &format!("received {name}{times}"),
                ));
                *exit_requested = Some(ExitRequest::now(name));
            }
        }
        if let Some(s) = schedule.as_deref_mut() {
            if let Some(sample) = with(tail, |t| t.slowest) {
                s.measured(sample);
            }
            let now = ckpt::util::unix_ms();
            if exit_requested.is_some() {
                s.done();
            } else if s.due(now) {
                s.done();
                say(request_exit(&plan.job_dir, &s.firing(now)));
                *exit_requested = Some(ExitRequest::now("the end time".into()));
            }
        }
        if watch.take_hup() > 0 {
            say(report::hangup(child.id()));
        }
        if let (n @ 1.., Some(sig)) = (watch.take_checkpoint(), plan.signal) {
            say(report::checkpoint_signal(
                &signals::name(sig),
                n,
                child.id(),
            ));
        }
        if not_started.is_none() && signalled.is_none() {
            // Without a readable event log nothing tells that ranks started: no deadline.
            let missing = with(tail, |t| {
                let elapsed = if t.warned {
                    Duration::ZERO
                } else {
                    launched.elapsed()
                };
                start::overdue(plan.ranks, &t.rank_nodes, elapsed, plan.start_timeout)
            });
            if let (Some(missing), Some(timeout)) = (missing, plan.start_timeout) {
                let node_of = |r| rank_node(plan, placement, r);
                say(start::message(&missing, node_of, timeout, &prog));
                if let Err(e) = signals::send(child.id(), backend.forwarded(libc::SIGTERM)) {
                    say(format!("warning: cannot signal {prog}: {e}"));
                }
                let ranks: Vec<String> = missing.iter().map(u32::to_string).collect();
                let why = format!(
                    "rank{} {} never started within {} s (--start-timeout)",
                    if missing.len() == 1 { "" } else { "s" },
                    ranks.join(", "),
                    timeout.as_secs()
                );
                not_started = Some((why, Instant::now()));
            }
        }
        let stopped_at = signalled
            .map(|(_, at)| at)
            .or(not_started.as_ref().map(|n| n.1));
        if let Some(at) = stopped_at {
            if !killed && at.elapsed() > GRACE {
                say(format!(
                    "{prog} still running {} s after the signal: killing it",
                    GRACE.as_secs()
                ));
                let _ = child.kill();
                killed = true;
            }
        }
        if let Some(msg) = with(tail, |t| {
            t.drain();
            t.quiet.check(Instant::now())
        }) {
            say(msg);
        }
        if signalled.is_none() && not_started.is_none() {
            ahead.tend(plan, backend);
        }
        // A launch held for a migration is released as soon as this one is gone.
        thread::sleep(if ahead.held.is_some() {
            POLL_HELD
        } else {
            POLL
        });
    };
    // Ranks orphaned by a dying mpirun may hold the pipes open: wait for the readers only so
    // long.
    let t0 = Instant::now();
    while readers.iter().any(|r| !r.is_finished()) && t0.elapsed() < STDERR_DRAIN {
        thread::sleep(Duration::from_millis(2));
    }
    let (failure, banner, lost) = scanner
        .lock()
        .map(|s| {
            (
                s.failure().cloned(),
                s.normal_banner(),
                s.lost_nodes().to_vec(),
            )
        })
        .unwrap_or_default();
    Ok(match (signalled, not_started) {
        (Some((sig, _)), _) => Ended::Interrupted(sig),
        (None, Some((why, _))) => Ended::NotStarted(status, why, lost),
        (None, None) => Ended::Exited(status, failure, banner, lost),
    })
}

/// A request to checkpoint and stop this launcher made: who asked (the exit signal's name,
/// the end time), and when.
struct ExitRequest {
    who: String,
    at: Instant,
}

impl ExitRequest {
    fn now(who: String) -> Self {
        ExitRequest {
            who,
            at: Instant::now(),
        }
    }
}

/// Logs, and reports, how long the stop after `epoch` took from this launcher's request to the
/// ranks' exit: a later run's estimate of its last checkpoint (see [`deadline`]).
fn record_stop(job_dir: &Path, tail: &Mutex<Tail>, epoch: u64, secs: f64) {
    match events::append(job_dir, &Event::StopTook { epoch, secs }) {
        Ok(()) => with(tail, Tail::drain),
        Err(e) => say(format!(
            "warning: cannot log the stop's time ({secs:.2} s) in {}: {e}",
            events::path(job_dir).display()
        )),
    }
}

/// Asks the job in `job_dir` to checkpoint and stop (`why`: the exit signal arrived, the end
/// time is near), through its control file as `ckpt checkpoint --then-exit` does. Returns the
/// line to report.
fn request_exit(job_dir: &Path, why: &str) -> String {
    let written = lock::take_requests(job_dir).and_then(|_requests| {
        ckpt::trigger::write_control(job_dir, true, ckpt::util::unix_ms()).map_err(Into::into)
    });
    match written {
        Ok(req) => format!(
            "{why}: asking the job to checkpoint and stop (request {}); no restart will follow",
            req.seq
        ),
        Err(e) => {
            format!("{why}, but cannot ask the job to checkpoint and stop: {e:#}; the job goes on")
        }
    }
}

/// Makes the kernel send SIGTERM to mpirun if the launcher dies (even by SIGKILL), so a job
/// never runs on unsupervised, and a resumed run never shares its job directory with it.
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes the prctl, signal and getppid calls and
    // builds an `io::Error` from an errno, none of which allocates or takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // A hang-up of the launcher's terminal does not end the job (see `signals`); the
            // ignored disposition survives exec.
            if libc::signal(libc::SIGHUP, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
            // The launcher may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Which of the launcher's outputs a forwarded stream goes to.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Copies one of mpirun's outputs to ours line by line, unchanged, after reporting the events
/// logged so far (so an event appears before output the ranks wrote after logging it), and
/// passes each line to `inspect`. When our output is closed, the rest goes to the report log:
/// the job is never stopped by a reader going away.
fn forward(input: impl Read, to: Stream, tail: &Mutex<Tail>, mut inspect: impl FnMut(&[u8])) {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    let mut closed = false;
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                with(tail, Tail::drain);
                let written = match to {
                    _ if closed => Ok(()),
                    Stream::Stdout => io::stdout().lock().write_all(&line),
                    Stream::Stderr => io::stderr().lock().write_all(&line),
                };
                if closed || written.is_err() {
                    if !closed {
                        closed = true;
                        say(report::output_closed(matches!(to, Stream::Stdout)));
                    }
                    report::log_raw(&line);
                }
                inspect(&line);
            }
        }
    }
}

/// The epochs a launch tried, with why each was unusable, and those quarantined.
type NoUsable = (Vec<(u64, String)>, Vec<u64>);

/// Follows `events.jsonl` from an offset and reports each new event.
struct Tail {
    dir: PathBuf,
    offset: u64,
    /// Whether rank 0 reported the current launch as started.
    started: bool,
    /// The rank the job's own events blame for the current launch's end, if any.
    blame: Option<String>,
    /// The epoch the launcher expects the current launch to restore (newest committed).
    expected: Option<u64>,
    /// Epochs committed since the launcher started, in order.
    committed: Vec<u64>,
    /// Epoch after which the ranks stopped on request, if they did.
    stopped: Option<u64>,
    /// The slowest checkpoint committed, or stop, since the launcher started.
    slowest: deadline::Slowest,
    /// What the ranks of the current launch reported when no epoch was usable.
    no_usable: Option<NoUsable>,
    /// Each rank's node, from its `rank_started` event of the current launch.
    rank_nodes: BTreeMap<u32, String>,
    warned: bool,
    /// When the job last showed progress (`--quiet-after`).
    quiet: Quiet,
}

/// What a launch's events said, for the decision after it ended.
struct Summary {
    /// Whether rank 0 logged `started` (or the log could not be read).
    started: bool,
    blame: Option<String>,
    committed: Vec<u64>,
    stopped: Option<u64>,
    no_usable: Option<NoUsable>,
    /// Each rank's node, as it logged it.
    rank_nodes: BTreeMap<u32, String>,
}

impl Tail {
    fn new(dir: &Path, offset: u64, quiet_after: Option<Duration>) -> Self {
        Tail {
            dir: dir.to_path_buf(),
            offset,
            started: false,
            blame: None,
            expected: None,
            committed: Vec::new(),
            stopped: None,
            slowest: None,
            no_usable: None,
            rank_nodes: BTreeMap::new(),
            warned: false,
            quiet: Quiet::new(quiet_after, Instant::now()),
        }
    }

    /// A new launch: forget what the previous one reported.
    fn launched(&mut self, now: Instant, n: u32) {
        self.no_usable = None;
        self.started = false;
        // A stop of an earlier launch (a migration's) says nothing about this one.
        self.stopped = None;
        self.blame = None;
        self.rank_nodes.clear();
        self.quiet.launched(now, n);
    }

    fn summary(&self) -> Summary {
        Summary {
            // An unreadable event log says nothing: the launch is taken as started.
            started: self.started || self.warned,
            blame: self.blame.clone(),
            committed: self.committed.clone(),
            stopped: self.stopped,
            no_usable: self.no_usable.clone(),
            rank_nodes: self.rank_nodes.clone(),
        }
    }

    /// Reports events appended since the last call. A read error is reported once; the
    /// job goes on without event reports rather than failing.
    fn drain(&mut self) {
        match events::read_from(&self.dir, self.offset) {
            Ok((new, offset)) => {
                self.offset = offset;
                for e in new {
                    self.quiet.event(Instant::now(), report::event(&e));
                    if let Some(sample) = deadline::sample(&e) {
                        self.slowest = deadline::slower(self.slowest, sample);
                    }
                    match &e {
                        Event::Started { .. } => self.started = true,
                        Event::Stalled { missing, .. } => {
                            self.blame
                                .get_or_insert_with(|| report::stall_blame(missing));
                        }
                        Event::IoStuck { rank, .. } => {
                            self.blame.get_or_insert_with(|| report::io_blame(*rank));
                        }
                        Event::Restored { epoch, .. } => {
                            let expected = self.expected.take();
                            say(report::restored(&e, expected.filter(|x| x != epoch)));
                            continue;
                        }
                        Event::Committed { epoch, .. } => self.committed.push(*epoch),
                        Event::Stopping { epoch } => self.stopped = Some(*epoch),
                        // Rank 0 prints this itself, with the fallback it takes; repeating it
                        // here would only double the line.
                        Event::EpochUnusable { .. } => continue,
                        // One line per rank per launch: for tools (and `ckpt drill`), not
                        // for the report.
                        Event::RankStarted { rank, node, .. } => {
                            self.rank_nodes.insert(*rank, node.clone());
                            continue;
                        }
                        // The launcher's own, said when it relaunches.
                        Event::Relaunching { .. } => continue,
                        // Reported once the launch has failed, with what the launcher does.
                        Event::NoUsableEpoch { tried, quarantined } => {
                            self.no_usable = Some((tried.clone(), quarantined.clone()));
                            continue;
                        }
                        _ => {}
                    }
                    say(report::event(&e));
                }
            }
            Err(e) if !self.warned => {
                self.warned = true;
                say(format!(
                    "warning: cannot read {}: {e}",
                    events::path(&self.dir).display()
                ));
            }
            Err(_) => {}
        }
    }
}

/// `--quiet-after`: says when the job has logged no event for that long, and again after each
/// further such period. A launch restarts the clock.
struct Quiet {
    after: Option<Duration>,
    /// The last sign of progress: an event, or the start of a launch.
    since: Instant,
    /// What it was.
    last: String,
    /// Warnings given since then.
    warned: u32,
}

impl Quiet {
    fn new(after: Option<Duration>, now: Instant) -> Self {
        Quiet {
            after,
            since: now,
            last: "none yet".into(),
            warned: 0,
        }
    }

    fn launched(&mut self, now: Instant, n: u32) {
        self.progress(now, format!("launch {n} started"));
    }

    fn event(&mut self, now: Instant, what: String) {
        self.progress(now, what);
    }

    fn progress(&mut self, now: Instant, what: String) {
        self.since = now;
        self.last = what;
        self.warned = 0;
    }

    /// The line to print now, if the job has been quiet for one more period.
    fn check(&mut self, now: Instant) -> Option<String> {
        let after = self.after?;
        let quiet = now.saturating_duration_since(self.since);
        if quiet < after * (self.warned + 1) {
            return None;
        }
        self.warned += 1;
        Some(report::quiet(quiet, &self.last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A launch whose mpirun message names no rank (garbled, cut short) is still blamed on the
    /// rank the job's own events name; a new launch forgets it. Restores are reported with
    /// the epoch expected when the ranks fell back.
    #[test]
    fn the_events_name_the_rank_when_mpirun_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut tail = Tail::new(dir.path(), 0, None);
        tail.launched(Instant::now(), 1);
        let started = Event::Started {
            nranks: 4,
            launch: 0,
            unix_ms: 0,
        };
        let stalled = Event::Stalled {
            what: "checkpoint epoch 4".into(),
            missing: vec![2, 3],
            waited: 120.0,
        };
        let stuck = Event::IoStuck {
            rank: 1,
            op: "writing".into(),
            path: "/x".into(),
            epoch: 4,
            waited: 600.0,
        };
        for e in [&started, &stalled, &stuck] {
            events::append(dir.path(), e).unwrap();
        }
        tail.drain();
        let s = tail.summary();
        assert!(s.started);
        assert_eq!(
            s.blame.as_deref(),
            Some("ranks 2, 3 stalled (from the job's events)"),
            "the first event that names a rank wins"
        );
        tail.launched(Instant::now(), 2);
        let s = tail.summary();
        assert!(!s.started && s.blame.is_none());
        events::append(dir.path(), &stuck).unwrap();
        tail.drain();
        assert_eq!(
            tail.summary().blame.as_deref(),
            Some("rank 1 stuck in IO (from the job's events)")
        );
    }

    #[test]
    fn quiet_warns_once_per_period_and_progress_restarts_the_clock() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut q = Quiet::new(Some(Duration::from_secs(60)), t0);
        q.launched(t0, 1);
        assert_eq!(q.check(at(59)), None);
        let first = q.check(at(60)).expect("quiet for a period");
        assert!(
            first.starts_with("no progress event for 1m 0s (last: launch 1 started)"),
            "{first}"
        );
        assert_eq!(q.check(at(61)), None, "once per period");
        assert!(q.check(at(120)).is_some());
        q.event(at(130), "epoch 3 committed".into());
        assert_eq!(q.check(at(189)), None);
        let again = q.check(at(190)).expect("quiet again");
        assert!(again.contains("(last: epoch 3 committed)"), "{again}");
        let mut off = Quiet::new(None, t0);
        assert_eq!(off.check(at(100_000)), None);
    }
}
