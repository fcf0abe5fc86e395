//! `ckpt checkpoint JOB_DIR [--then-exit]`: asks a running job for a checkpoint through its
//! control file (see `ckpt::trigger`), then follows the job's event log until the epoch that
//! carries its request number is committed (with `--then-exit`, the epoch the ranks stop
//! after). A request is only written while a `ckpt run` holds the job directory, and belongs
//! to that run (see [`crate::lock`]).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ckpt::events::{self, Event};
use ckpt::storage::durable::Access;
use ckpt::trigger::{self, Request};

use crate::cli::CheckpointArgs;
use crate::lock::{self, Liveness};
use crate::report::{self, say};
use crate::{Outcome, UsageError};

/// How often the event log is read while waiting.
const POLL: Duration = Duration::from_millis(25);
/// How often the wait checks that the run is still there.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// Runs `ckpt checkpoint`.
pub fn run(args: &CheckpointArgs) -> anyhow::Result<Outcome> {
    let dir = &args.job_dir;
    let marker = dir.join(crate::jobdir::JOB_FILE);
    if !marker.exists() {
        return Err(UsageError(format!(
            "{}: not a job directory (no {}); is this the --job-dir of a running `ckpt run`?",
            dir.display(),
            marker.display()
        ))
        .into());
    }
    // The request file is as private as the job: group-readable only if the job is.
    let group = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o040 != 0);
    ckpt::storage::durable::set_access(if group {
        Access::Group
    } else {
        Access::Private
    });
    let (_, offset) = events::read_from(dir, 0)
        .with_context(|| format!("cannot read {}", events::path(dir).display()))?;
    let req = write_request(dir, args.then_exit)?;
    say(format!(
        "checkpoint{} requested (request {}) in {}",
        if req.exit { " and exit" } else { "" },
        req.seq,
        dir.display()
    ));
    if req.exit && !args.then_exit {
        say("a pending request asks the ranks to stop: they stop after this checkpoint");
    }
    if args.wait == 0 {
        return Ok(Outcome::Success);
    }
    wait(dir, req, offset, Duration::from_secs(args.wait))
}

/// Writes the request if a `ckpt run` holds `dir`; refuses otherwise.
fn write_request(dir: &Path, exit: bool) -> anyhow::Result<Request> {
    let _requests = lock::take_requests(dir)?;
    match lock::liveness(dir)? {
        Liveness::Running(_) => {}
        Liveness::Stopped(last) => {
            let last = last.map_or_else(String::new, |r| format!(" (the last one: {r})"));
            return Err(UsageError(format!(
                "{}: the job is not running: no `ckpt run` holds it{last}. A request now would \
                 not be acted on: a later run ignores requests made before it started. Resume \
                 the job with `ckpt run --job-dir {}` and ask again.",
                dir.display(),
                dir.display()
            ))
            .into());
        }
        Liveness::Unknown(e) => say(format!(
            "warning: cannot tell whether the job runs ({e}); writing the request anyway"
        )),
    }
    trigger::write_control(dir, exit, ckpt::util::unix_ms()).with_context(|| {
        format!(
            "cannot write the request {}",
            trigger::control_path(dir).display()
        )
    })
}

/// Follows the event log from `offset` until `req` is handled, the run ends without handling
/// it, or `limit` passes.
fn wait(dir: &Path, req: Request, mut offset: u64, limit: Duration) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + limit;
    let mut follow = Follow::default();
    let mut checked = Instant::now();
    loop {
        let (new, next) = events::read_from(dir, offset)
            .with_context(|| format!("cannot read {}", events::path(dir).display()))?;
        offset = next;
        if follow.feed(req.seq, new) {
            return Ok(Outcome::Success);
        }
        if Instant::now() >= deadline {
            bail!(
                "request {} not satisfied within {} s: is the job calling poll()? (it stays \
                 pending while this run of the job runs)",
                req.seq,
                limit.as_secs()
            );
        }
        if checked.elapsed() >= LIVENESS_EVERY {
            checked = Instant::now();
            // Settled without a `handled` event: a later run expired it.
            let expired = trigger::ControlState::read(dir)?.handled >= req.seq;
            if expired || matches!(lock::liveness(dir)?, Liveness::Stopped(_)) {
                // Events the ranks wrote just before the run ended.
                let (new, _) = events::read_from(dir, offset)
                    .with_context(|| format!("cannot read {}", events::path(dir).display()))?;
                if follow.feed(req.seq, new) {
                    return Ok(Outcome::Success);
                }
                bail!(
                    "the job's `ckpt run` ended before acting on request {}; a later run will \
                     not act on it (requests belong to the run they were made for)",
                    req.seq
                );
            }
        }
        std::thread::sleep(POLL);
    }
}

/// What the wait has seen of the event log.
#[derive(Debug, Default)]
struct Follow {
    /// Lines for committed epochs, kept until the request they satisfy is known.
    committed: Vec<(u64, String)>,
    stopping: Vec<(u64, String)>,
}

impl Follow {
    /// Feeds new events; returns whether request `seq` is handled (after saying by which epoch).
    fn feed(&mut self, seq: u64, new: Vec<Event>) -> bool {
        for e in new {
            match &e {
                Event::Committed { epoch, .. } => self.committed.push((*epoch, report::event(&e))),
                Event::Stopping { epoch } => self.stopping.push((*epoch, report::event(&e))),
                Event::CommitFailed { .. } => {
                    say(report::event(&e));
                    say(format!(
                        "request {seq} stays pending: a relaunch of the job takes it again"
                    ));
                }
                Event::Started { .. } => say(report::event(&e)),
                Event::Handled { request, epoch } if *request >= seq => {
                    let lines = self.committed.iter().chain(&self.stopping);
                    for (_, line) in lines.filter(|(e, _)| e == epoch) {
                        say(line);
                    }
                    say(report::event(&e));
                    return true;
                }
                _ => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(epoch: u64) -> Event {
        Event::Committed {
            epoch,
            poll: 10,
            bytes: 1,
            logged: 0,
            write_secs: 0.0,
            total_secs: 0.0,
            cut_secs: 0.0,
        }
    }

    #[test]
    fn the_wait_ends_with_the_epoch_that_carries_the_request() {
        let mut f = Follow::default();
        // An epoch committed for another reason (interval, signal, an earlier request) does
        // not end the wait for request 3.
        let handled = |request, epoch| Event::Handled { request, epoch };
        assert!(!f.feed(3, vec![committed(4), handled(2, 4)]));
        assert!(!f.feed(3, vec![committed(5)]));
        assert!(f.feed(3, vec![committed(6), handled(3, 6)]));
        // A later request satisfied by the same epoch covers it too.
        let mut f = Follow::default();
        assert!(f.feed(3, vec![committed(6), handled(5, 6)]));
    }
}
