//! `ckpt checkpoint JOB_DIR [--then-exit]`: asks a running job for a checkpoint through its
//! control file (see `ckpt::trigger`), then follows the job's event log until the epoch is
//! committed (and, with `--then-exit`, until the ranks announce that they stop).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ckpt::events::{self, Event};

use crate::cli::CheckpointArgs;
use crate::report::{self, say};
use crate::{Outcome, UsageError};

/// How often the event log is read while waiting.
const POLL: Duration = Duration::from_millis(100);

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
    let (_, mut offset) = events::read_from(dir, 0)
        .with_context(|| format!("cannot read {}", events::path(dir).display()))?;
    let seq = ckpt::trigger::write_control(dir, args.then_exit).with_context(|| {
        format!(
            "cannot write the request {}",
            ckpt::trigger::control_path(dir).display()
        )
    })?;
    say(format!(
        "checkpoint{} requested (request {seq}) in {}",
        if args.then_exit { " and exit" } else { "" },
        dir.display()
    ));
    if args.wait == 0 {
        return Ok(Outcome::Success);
    }
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let mut committed = None;
    while Instant::now() < deadline {
        let (new, next) = events::read_from(dir, offset)
            .with_context(|| format!("cannot read {}", events::path(dir).display()))?;
        offset = next;
        for e in new {
            match &e {
                Event::Committed { epoch, .. } if committed.is_none() => {
                    committed = Some(*epoch);
                    say(report::event(&e));
                    if !args.then_exit {
                        return Ok(Outcome::Success);
                    }
                }
                Event::CommitFailed { .. } => {
                    say(report::event(&e));
                    bail!("the requested checkpoint failed");
                }
                Event::Stopping { .. } if args.then_exit => {
                    say(report::event(&e));
                    return Ok(Outcome::Success);
                }
                _ => {}
            }
        }
        std::thread::sleep(POLL);
    }
    bail!(
        "no {} within {} s: is the job running and calling poll()? (the request stays \
         pending and is taken at the job's next agreement poll)",
        if committed.is_some() {
            "stop"
        } else {
            "checkpoint"
        },
        args.wait
    )
}
