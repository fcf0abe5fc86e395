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

use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStderr, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ckpt::events::{self, Event};
use ckpt::manifest;

use crate::backend::mpirun::{self, Failure, Launch, Scanner};
use crate::plan::RunPlan;
use crate::report::{self, say};
use crate::{jobdir, ranks, signals, Outcome};

/// How often the supervisor checks mpirun, signals and the event log.
const POLL: Duration = Duration::from_millis(200);
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
    signals::install(plan.signal).context("cannot install the launcher's signal handlers")?;
    let mut watch = signals::Watch::new();
    let mut tail = Tail::new(&plan.job_dir, job.events_offset, plan.quiet_after);
    let as_root = mpirun::running_as_root();
    let total = plan.max_restarts + 1;
    let start = Instant::now();

    say(report::header(plan));
    if let Some(r) = &job.expired {
        say(report::expired(r, &plan.job_dir));
    }
    if !job.committed.is_empty() {
        say(report::resuming(&job.committed, job.resume_from.as_ref()));
    }
    if !job.quarantined.is_empty() {
        say(report::quarantined_at_start(
            &job.quarantined,
            &job.committed,
        ));
    }
    let rank_exit_wait = ranks::wait_from_env()?;
    let mut n = 1;
    loop {
        // Ranks of an earlier launch (of this run, or of a run whose launcher died) must be
        // gone before new ones write.
        ranks::ensure_gone(&plan.job_dir, rank_exit_wait)?;
        let restart_count = job.first_restart_count + n - 1;
        let launch = Launch::new(plan, restart_count, as_root);
        say(report::launch(n, total, restart_count, launch.argv()));
        let t0 = Instant::now();
        tail.no_usable = None;
        tail.quiet.launched(t0, n);
        let ended = run_once(&launch, plan.signal, &mut watch, &mut tail)?;
        // Events written just before mpirun exited are reported before its outcome.
        tail.drain();
        let (status, failure) = match ended {
            Ended::Interrupted(sig) => {
                say(report::interrupted(&signals::name(sig)));
                say(report::resume_hint(plan));
                return Ok(Outcome::Interrupted(sig));
            }
            Ended::Exited(status, _) if status.success() => {
                if let Some(epoch) = tail.stopped {
                    say(report::stopped(epoch, secs(start)));
                    say(report::resume_hint(plan));
                } else {
                    say(report::finished(n, &tail.committed, secs(start)));
                }
                return Ok(Outcome::Success);
            }
            Ended::Exited(status, failure) => (status, failure),
        };
        say(report::failed(n, secs(t0), failure.as_ref(), status));
        if let Err(found) = ckpt::identity::check(&plan.job_dir, &plan.job_id) {
            say(format!(
                "job directory {} is no longer this job's (job {}): {found}; not relaunching \
                 into it",
                plan.job_dir.display(),
                plan.job_id
            ));
            return Ok(Outcome::JobFailed);
        }
        if let Some((tried, quarantined)) = &tail.no_usable {
            say(report::no_usable_epoch(tried, quarantined));
            say(report::resume_hint(plan));
            return Ok(Outcome::JobFailed);
        }
        if n == total {
            say(report::gave_up(
                plan.max_restarts,
                &tail.committed,
                secs(start),
            ));
            say(report::resume_hint(plan));
            return Ok(Outcome::JobFailed);
        }
        thread::sleep(PAUSE);
        if let Some(sig) = watch.take() {
            say(report::interrupted(&signals::name(sig)));
            say(report::resume_hint(plan));
            return Ok(Outcome::Interrupted(sig));
        }
        let committed = manifest::committed(&plan.job_dir).unwrap_or_default();
        let from = jobdir::newest_loadable(&plan.job_dir, &committed);
        say(report::restarting(n, plan.max_restarts, from.as_ref()));
        n += 1;
    }
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// How one launch ended.
enum Ended {
    /// mpirun exited on its own, with the failure its stderr reported (if any).
    Exited(ExitStatus, Option<Failure>),
    /// The launcher received this signal and forwarded it; mpirun has exited since.
    Interrupted(i32),
}

/// Spawns mpirun for `launch` and watches it until it exits.
fn run_once(
    launch: &Launch,
    checkpoint_signal: Option<i32>,
    watch: &mut signals::Watch,
    tail: &mut Tail,
) -> anyhow::Result<Ended> {
    let mut cmd = launch.command();
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", launch.argv()[0].to_string_lossy()))?;
    let scanner = Arc::new(Mutex::new(Scanner::default()));
    let reader = match child.stderr.take() {
        Some(stderr) => {
            let scanner = Arc::clone(&scanner);
            Some(thread::spawn(move || forward_stderr(stderr, &scanner)))
        }
        None => None,
    };
    let mut signalled: Option<(i32, Instant)> = None;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for mpirun")? {
            break status;
        }
        if let Some(sig) = watch.take() {
            say(format!(
                "received {}: forwarding it to mpirun (pid {}); no restart will follow",
                signals::name(sig),
                child.id()
            ));
            if let Err(e) = signals::send(child.id(), sig) {
                say(format!("warning: cannot signal mpirun: {e}"));
            }
            signalled.get_or_insert((sig, Instant::now()));
        }
        if let (n @ 1.., Some(sig)) = (watch.take_checkpoint(), checkpoint_signal) {
            say(report::checkpoint_signal(
                &signals::name(sig),
                n,
                child.id(),
            ));
        }
        if let Some((_, at)) = signalled {
            if !killed && at.elapsed() > GRACE {
                say(format!(
                    "mpirun still running {} s after the signal: killing it",
                    GRACE.as_secs()
                ));
                let _ = child.kill();
                killed = true;
            }
        }
        tail.drain();
        if let Some(msg) = tail.quiet.check(Instant::now()) {
            say(msg);
        }
        thread::sleep(POLL);
    };
    // Ranks orphaned by a dying mpirun may hold the pipe open: wait for the reader only so long.
    if let Some(reader) = reader {
        let t0 = Instant::now();
        while !reader.is_finished() && t0.elapsed() < STDERR_DRAIN {
            thread::sleep(Duration::from_millis(20));
        }
    }
    let failure = scanner.lock().ok().and_then(|s| s.failure().cloned());
    Ok(match signalled {
        Some((sig, _)) => Ended::Interrupted(sig),
        None => Ended::Exited(status, failure),
    })
}

/// Makes the kernel send SIGTERM to mpirun if the launcher dies (even by SIGKILL), so a job
/// never runs on unsupervised, and a resumed run never shares its job directory with it.
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes the prctl and getppid system calls and
    // builds an `io::Error` from an errno, none of which allocates or takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
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

/// Copies mpirun's stderr to ours line by line, unchanged, feeding each line to `scanner`.
fn forward_stderr(stderr: ChildStderr, scanner: &Mutex<Scanner>) {
    let mut input = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                // Our own stderr going away is no reason to stop draining mpirun's.
                let _ = io::stderr().lock().write_all(&line);
                if let Ok(mut s) = scanner.lock() {
                    s.feed(&String::from_utf8_lossy(&line));
                }
            }
        }
    }
}

/// The epochs a launch tried, with why each was unusable, and those quarantined.
type NoUsable = (Vec<(u64, String)>, Vec<u64>);

/// Follows `events.jsonl` from an offset and reports each new event.
struct Tail<'a> {
    dir: &'a Path,
    offset: u64,
    /// Epochs committed since the launcher started, in order.
    committed: Vec<u64>,
    /// Epoch after which the ranks stopped on request, if they did.
    stopped: Option<u64>,
    /// What the ranks of the current launch reported when no epoch was usable.
    no_usable: Option<NoUsable>,
    warned: bool,
    /// When the job last showed progress (`--quiet-after`).
    quiet: Quiet,
}

impl<'a> Tail<'a> {
    fn new(dir: &'a Path, offset: u64, quiet_after: Option<Duration>) -> Self {
        Tail {
            dir,
            offset,
            committed: Vec::new(),
            stopped: None,
            no_usable: None,
            warned: false,
            quiet: Quiet::new(quiet_after, Instant::now()),
        }
    }

    /// Reports events appended since the last call. A read error is reported once; the
    /// job goes on without event reports rather than failing.
    fn drain(&mut self) {
        match events::read_from(self.dir, self.offset) {
            Ok((new, offset)) => {
                self.offset = offset;
                for e in new {
                    self.quiet.event(Instant::now(), report::event(&e));
                    match e {
                        Event::Committed { epoch, .. } => self.committed.push(epoch),
                        Event::Stopping { epoch } => self.stopped = Some(epoch),
                        // Rank 0 prints this itself, with the fallback it takes; repeating it
                        // here would only double the line.
                        Event::EpochUnusable { .. } => continue,
                        // Reported once the launch has failed, with what the launcher does.
                        Event::NoUsableEpoch { tried, quarantined } => {
                            self.no_usable = Some((tried, quarantined));
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
                    events::path(self.dir).display()
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
