//! The lines people read: `[ckpt] ...` messages about events, launches, failures and the end
//! of a job, and the small renderings they share with `ckpt list`. Pure formatting, except
//! the output functions: [`say`] (stderr, and the job's `launcher.log` once [`log_to`] named
//! it), [`print()`] (stdout, for `list` and `verify`) and [`log_raw`].
//!
//! No output function panics: a closed stderr is ignored (the log keeps the report), and a
//! closed stdout comes back as a `BrokenPipe` error that [`crate::run`] ends quietly on.

use std::ffi::OsString;
use std::fmt::Display;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Mutex;

use ckpt::events::Event;
use ckpt::util::human_bytes;
use ckpt::{Interval, Level, Manifest};

use crate::clock;
use crate::plan::RunPlan;

/// The file [`say`] appends to besides stderr (`<job dir>/launcher.log` during `ckpt run`).
static LOG: Mutex<Option<File>> = Mutex::new(None);

/// Name of the report file in the job directory.
pub const LOG_FILE: &str = "launcher.log";

/// Prints `[ckpt] <msg>` to stderr (one write, so it does not interleave with forwarded
/// mpirun lines) and appends it to the log, if any. A closed stderr is not an error.
pub fn say(msg: impl Display) {
    let line = format!("[ckpt] {msg}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
    log_raw(line.as_bytes());
}

/// From now on, [`say`] also appends to `path` (created 0600, never through a symlink).
pub fn log_to(path: &Path) -> io::Result<()> {
    // Never through a link, never blocking, with the job's access (0600, or 0640 for a group).
    let file = ckpt::storage::durable::open_append(path)?;
    if let Ok(mut log) = LOG.lock() {
        *log = Some(file);
    }
    Ok(())
}

/// Appends `bytes` to the log, if any; a failed write is dropped (the report goes on).
pub fn log_raw(bytes: &[u8]) {
    if let Ok(mut log) = LOG.lock() {
        if let Some(f) = log.as_mut() {
            let _ = f.write_all(bytes);
        }
    }
}

/// Prints `line` and a newline to stdout. A closed stdout is a `BrokenPipe` error.
pub fn print(line: impl Display) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{line}")
}

/// Whether `e` is, or was caused by, writing to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The first line of `ckpt run`: where the job lives and how it is run.
pub fn header(plan: &RunPlan) -> String {
    let every = match plan.every {
        None => "checkpoint interval left to the application".to_owned(),
        Some(Interval::Off) => "no automatic checkpoints".to_owned(),
        Some(Interval::Polls(n)) => format!("checkpoint every {}", count(n, "poll", "polls")),
        Some(every) => format!("checkpoint every {every}"),
    };
    format!(
        "job dir {}: {} ranks, {every}, {}; {}; {}",
        plan.job_dir.display(),
        plan.ranks,
        match plan.max_restarts {
            0 => "no restarts".to_owned(),
            n => format!("up to {}", count(n as u64, "restart", "restarts")),
        },
        levels_policy(plan),
        keeps(plan)
    )
}

/// `keep 2 epochs at L1, 1 at L2, 2 at L4`: the retention of each level that is on.
pub fn keeps(plan: &RunPlan) -> String {
    let p = &plan.levels;
    let mut parts = vec![format!(
        "keep {} at L1",
        count(u64::from(plan.keep), "epoch", "epochs")
    )];
    for (every, keep, name) in [
        (p.partner_every, p.keep_partner, "L2"),
        (p.parity_every, p.keep_parity, "L3"),
        (p.shared_every, p.keep_shared, "L4"),
    ] {
        if every > 0 {
            parts.push(format!("{keep} at {name}"));
        }
    }
    parts.join(", ")
}

/// `levels L1, L2 every epoch, L4 every 10 epochs in DIR`: what the ranks will produce.
pub fn levels_policy(plan: &RunPlan) -> String {
    let p = &plan.levels;
    let every = |n: u64| match n {
        1 => "epoch".to_owned(),
        n => format!("{n} epochs"),
    };
    let mut parts = vec!["levels L1".to_owned()];
    if p.partner_every > 0 {
        parts.push(format!("L2 every {}", every(p.partner_every)));
    }
    if p.parity_every > 0 {
        let code = match p.parity_k {
            1 => "XOR".to_owned(),
            k => format!("Reed-Solomon, {k} parity"),
        };
        parts.push(format!(
            "L3 every {} (groups of {}, {code})",
            every(p.parity_every),
            p.parity_group
        ));
    }
    if p.shared_every > 0 {
        let dir = p
            .shared_dir
            .clone()
            .unwrap_or_else(|| plan.job_dir.join("shared"));
        parts.push(format!(
            "L4 every {} in {}",
            every(p.shared_every),
            dir.display()
        ));
    }
    parts.join(", ")
}

/// The job directory already holds committed epochs: the first launch is a restart.
pub fn resuming(committed: &[u64], from: Option<&Manifest>) -> String {
    let from = from.map_or_else(|| "none of their manifests loads".to_owned(), epoch_brief);
    let mut sorted = committed.to_vec();
    sorted.sort_unstable();
    format!(
        "resuming: committed epochs {} found; the first launch restores the newest usable \
         one (newest committed: {from})",
        epochs(&sorted)
    )
}

/// The launcher was interrupted (followed by [`resume_hint`]).
pub fn interrupted(signal: &str) -> String {
    format!("interrupted by {signal}; not restarting")
}

/// `to resume: ckpt run ... --job-dir DIR -- PROG ARGS`, with the flags a resume needs
/// (mpirun arguments from the environment are left to the environment).
pub fn resume_hint(plan: &RunPlan) -> String {
    let mut argv: Vec<OsString> = vec!["ckpt".into(), "run".into(), "-n".into()];
    argv.push(plan.ranks.to_string().into());
    if let Some(every) = plan.every {
        argv.extend(["--every".into(), every.to_string().into()]);
    }
    argv.extend(["--keep".into(), plan.keep.to_string().into()]);
    for (flag, n) in [("--l2-every", plan.l2_every), ("--l4-every", plan.l4_every)] {
        if let Some(n) = n {
            argv.extend([flag.into(), n.to_string().into()]);
        }
    }
    argv.extend(plan.level_flags.argv().into_iter().map(OsString::from));
    argv.extend(["--job-dir".into(), plan.job_dir.clone().into()]);
    if let Some(dir) = &plan.local_dir {
        argv.extend(["--local-dir".into(), dir.clone().into()]);
    }
    if let Some(n) = plan.emulate_nodes {
        argv.extend(["--emulate-nodes".into(), n.to_string().into()]);
    }
    if let Some(nodes) = &plan.nodes {
        argv.extend(["--nodes".into(), nodes.list.clone().into()]);
        if let Some(k) = nodes.ranks_per_node {
            argv.extend(["--ranks-per-node".into(), k.to_string().into()]);
        }
    }
    if let Some(s) = plan.spares {
        argv.extend(["--spares".into(), s.to_string().into()]);
    }
    if plan.spread_on_failure {
        argv.push("--spread-on-failure".into());
    }
    for a in &plan.mpirun_args {
        argv.push(format!("--mpirun-arg={a}").into());
    }
    if plan.exit_signal != Some(libc::SIGUSR1) {
        let sig = plan
            .exit_signal
            .map_or_else(|| "off".to_owned(), |n| n.to_string());
        argv.push(format!("--exit-signal={sig}").into());
    }
    argv.push("--".into());
    argv.push(plan.program.clone().into());
    argv.extend(plan.args.iter().map(OsString::from));
    format!("to resume: {}", shell_words(&argv))
}

/// One event from the job's log.
pub fn event(e: &Event) -> String {
    match e {
        Event::RankStarted {
            rank,
            pid,
            node,
            launch,
        } => format!("rank {rank} started on {node} (pid {pid}, launch {launch})"),
        Event::Started { nranks, launch, .. } => {
            format!("{nranks} ranks started (restart count {launch})")
        }
        Event::Committed {
            epoch,
            poll,
            bytes,
            logged,
            write_secs,
            total_secs,
            ..
        } => format!(
            "epoch {epoch} committed at poll {poll}: {}, {} drained, write {write_secs:.2} s, \
             total {total_secs:.2} s",
            human_bytes(*bytes),
            count(*logged, "message", "messages")
        ),
        Event::CommitFailed { epoch, reasons } => {
            format!("epoch {epoch} not committed: {}", reasons.join("; "))
        }
        Event::Stalled {
            what,
            missing,
            waited,
        } => format!("ranks {missing:?} did not reach {what} within {waited:.0} s; job aborted"),
        Event::IoStuck {
            rank,
            op,
            path,
            epoch,
            waited,
        } => format!(
            "rank {rank} stuck for {waited:.0} s {op} {path} (epoch {epoch}); its IO watchdog \
             ended it, job aborted"
        ),
        Event::Stopping { epoch } => {
            format!("ranks stop after epoch {epoch}, as requested")
        }
        Event::Handled { request, epoch } => {
            format!("checkpoint request {request} satisfied by epoch {epoch}")
        }
        Event::EpochUnusable {
            epoch,
            reasons,
            quarantined,
        } => format!(
            "epoch {epoch} unusable{}: {}",
            if *quarantined { " (quarantined)" } else { "" },
            reasons.join("; ")
        ),
        Event::NoUsableEpoch { tried, .. } => format!("no usable epoch: {}", tried_list(tried)),
        Event::NotDurable {
            epoch,
            manifest,
            error,
        } => format!(
            "epoch {epoch} is committed but may not be durable: its manifest {} is in place, \
             but the fsync of its directory failed ({error}); older epochs are kept until a \
             later manifest is durable",
            manifest.display()
        ),
        Event::Restored {
            epoch,
            bytes,
            read_secs,
            ..
        } => format!(
            "restored epoch {epoch} ({} in {read_secs:.2} s)",
            human_bytes(*bytes)
        ),
        Event::LevelComplete {
            epoch,
            level: l,
            bytes,
            secs,
        } => format!(
            "epoch {epoch}: {} complete on every rank ({} stored, {secs:.2} s after the commit)",
            level(*l),
            human_bytes(*bytes)
        ),
        Event::LevelFailed {
            epoch,
            level: l,
            reasons,
        } => format!(
            "epoch {epoch}: {} failed, its copies are not used: {}",
            level(*l),
            reasons.join("; ")
        ),
        Event::LevelsBusy {
            epoch,
            previous,
            waited,
            skipped,
        } => match skipped {
            true => format!(
                "epoch {epoch}: epoch {previous}'s background levels still running, so epoch \
                 {epoch} gets L1 only (CKPT_LEVELS_BUSY=skip)"
            ),
            false => format!(
                "epoch {epoch} waited {waited:.2} s for epoch {previous}'s background levels \
                 (checkpoints come faster than the levels complete)"
            ),
        },
        Event::Recovered {
            epoch,
            rank,
            node,
            level: l,
            bytes,
            secs,
        } => format!(
            "rank {rank} recovered epoch {epoch} from {} onto {node} ({} in {secs:.2} s)",
            level(*l),
            human_bytes(*bytes)
        ),
        Event::HandedOff {
            epoch,
            rank,
            node,
            from,
            bytes,
            secs,
        } => format!(
            "rank {rank}'s file of epoch {epoch} was handed off from {from} to {node} during \
             the checkpoint ({} in {secs:.2} s)",
            human_bytes(*bytes)
        ),
        Event::StopTook { epoch, secs } => format!(
            "the stop after epoch {epoch} took {secs:.2} s from the request to the ranks' exit"
        ),
        Event::Relaunching { launch, .. } => {
            format!("relaunching (restart count {launch}) with a migration's placement")
        }
    }
}

/// `epoch 6: why; epoch 5: why`.
fn tried_list(tried: &[(u64, String)]) -> String {
    tried
        .iter()
        .map(|(e, why)| format!("epoch {e}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The job failed because no committed epoch could be restored (followed by
/// [`resume_hint`]): the launcher does not relaunch into the same failure.
pub fn no_usable_epoch(tried: &[(u64, String)], quarantined: &[u64]) -> String {
    let mut epochs_tried: Vec<u64> = tried.iter().map(|(e, _)| *e).collect();
    epochs_tried.sort_unstable();
    let mut q = quarantined.to_vec();
    q.sort_unstable();
    let next = if q.len() == tried.len() {
        format!(
            "they were found damaged and are quarantined ({}), so the next `ckpt run` of this \
             job directory starts the job from the beginning",
            count_epochs(&q)
        )
    } else if q.is_empty() {
        "fix the cause, then resume".to_owned()
    } else {
        format!(
            "{} quarantined as damaged; fix the cause for the others, then resume",
            count_epochs(&q)
        )
    };
    format!(
        "no usable epoch among {}: {}; not relaunching, since every launch would fail the same \
         way; {next}",
        epochs(&epochs_tried),
        tried_list(tried)
    )
}

/// `epoch 6` or `epochs 5, 6`.
fn count_epochs(list: &[u64]) -> String {
    let word = if list.len() == 1 { "epoch" } else { "epochs" };
    format!("{word} {}", epochs(list))
}

/// Epochs an earlier restart quarantined, found when a run starts.
pub fn quarantined_at_start(quarantined: &[u64], committed: &[u64]) -> String {
    let mut q = quarantined.to_vec();
    q.sort_unstable();
    let then = if committed.is_empty() {
        "; no committed epoch is left, so the job starts from the beginning"
    } else {
        ""
    };
    format!(
        "{} quarantined (found damaged by an earlier restart; never restored, see ckpt list){then}",
        count_epochs(&q)
    )
}

/// A `ckpt checkpoint` request an earlier run left pending, which this run does not act on.
pub fn expired(r: &ckpt::trigger::Request, job_dir: &std::path::Path) -> String {
    let made = match r.created_unix_ms {
        0 => String::new(),
        ms => format!(", made {}", clock::utc(ms)),
    };
    format!(
        "ignoring checkpoint request {}{}{made}: it was made for an earlier run of this job, \
         which ended before acting on it (to checkpoint this run: ckpt checkpoint {}{})",
        r.seq,
        if r.exit { " (then exit)" } else { "" },
        job_dir.display(),
        if r.exit { " --then-exit" } else { "" },
    )
}

/// The launcher received the job's checkpoint signal (`n` times since the last report).
pub fn checkpoint_signal(name: &str, n: usize, mpirun_pid: u32) -> String {
    let times = if n == 1 {
        String::new()
    } else {
        format!(" ({n} times)")
    };
    format!(
        "received {name}{times}: not forwarded (sent to the process group, it reached mpirun \
         too, which forwards it to the ranks); to ask for a checkpoint use `ckpt checkpoint` \
         or signal mpirun (pid {mpirun_pid})"
    )
}

/// `--quiet-after`: `no progress event for 10m 0s (last: epoch 3 committed at poll 120: ...)`.
pub fn quiet(for_: std::time::Duration, last: &str) -> String {
    format!(
        "no progress event for {} (last: {last}); the job may be stuck (ranks waiting for one \
         another give up after CKPT_TIMEOUT, IO after CKPT_IO_TIMEOUT)",
        duration(for_)
    )
}

/// `45s`, `10m 0s`, `2h 5m`: a wall-clock span for people.
pub fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s / 60 % 60),
    }
}

/// `launch 1/4 (CKPT_RESTART_COUNT=0): mpirun ...`.
pub fn launch(n: u32, total: u32, restart_count: u32, argv: &[OsString]) -> String {
    format!(
        "launch {n}/{total} ({}={restart_count}): {}",
        ckpt::env::RESTART_COUNT,
        shell_words(argv)
    )
}

/// `launch 2 failed after 3.1 s: rank 2 exited on signal 9 (Killed) (mpirun exited with status 137)`.
/// `who`: mpirun's [`crate::backend::mpirun::Failure`], else what the job's events say.
/// `launcher`: the program that started the ranks (mpirun, srun).
pub fn failed(
    n: u32,
    secs: f64,
    who: Option<String>,
    launcher: &str,
    status: ExitStatus,
) -> String {
    let who = who.unwrap_or_else(|| "unknown rank".to_owned());
    format!(
        "launch {n} failed after {secs:.1} s: {who} ({})",
        exit_status(launcher, status)
    )
}

/// Who the job's `stalled` event blames, when mpirun's own message does not say.
pub fn stall_blame(missing: &[i32]) -> String {
    let ranks = missing.iter().map(i32::to_string).collect::<Vec<_>>();
    let word = if missing.len() == 1 { "rank" } else { "ranks" };
    format!(
        "{word} {} stalled (from the job's events)",
        ranks.join(", ")
    )
}

/// Who the job's `io_stuck` event blames, when mpirun's own message does not say.
pub fn io_blame(rank: i32) -> String {
    format!("rank {rank} stuck in IO (from the job's events)")
}

/// Explains Open MPI's "Primary job terminated normally" banner after a failed launch.
pub fn normal_banner() -> String {
    format!(
        "(mpirun's \"{}, but 1 process returned a non-zero exit code\" banner is its usual \
         wording for this, a rank killed by a signal included: the launch did fail as said)",
        crate::backend::mpirun::NORMAL_BANNER.replace("  ", " ")
    )
}

/// A launch that failed before any rank reported `started`: a relaunch would fail alike.
pub fn failed_before_start() -> String {
    "no rank reported the job started (no `started` event): the failure came before the \
     ranks were up (an mpirun argument, the program, its environment or a directory), and a \
     relaunch would fail the same way; not relaunching (see mpirun's message above)"
        .to_owned()
}

/// A launch that failed after the exit signal asked it to checkpoint and stop.
pub fn failed_after_exit_request(who: &str) -> String {
    format!("not relaunching: {who} asked the job to stop")
}

/// SIGHUP to the launcher (a closed terminal): ignored, as mpirun ignores it.
pub fn hangup(mpirun_pid: u32) -> String {
    format!(
        "received SIGHUP: ignored (mpirun, pid {mpirun_pid}, ignores it too); the job goes on. \
         Stop it with SIGINT/SIGTERM, or checkpoint and stop it with `ckpt checkpoint \
         --then-exit` or the exit signal"
    )
}

/// Our stdout or stderr was closed: the job goes on, its output goes to the log.
pub fn output_closed(stdout: bool) -> String {
    let which = if stdout { "stdout" } else { "stderr" };
    format!(
        "the launcher's {which} is closed: the job goes on, and its further {which} goes to \
         {LOG_FILE} in the job directory"
    )
}

/// A `restored` event; `fell_back_from`: the newer epoch the launcher expected instead.
pub fn restored(e: &Event, fell_back_from: Option<u64>) -> String {
    match fell_back_from {
        Some(x) => format!(
            "{}: the ranks fell back from epoch {x}, which they could not restore",
            event(e)
        ),
        None => event(e),
    }
}

/// `mpirun exited with status 137` or `mpirun was killed by signal 9`.
pub fn exit_status(launcher: &str, status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("{launcher} exited with status {code}"),
        (None, Some(sig)) => format!("{launcher} was killed by signal {sig}"),
        (None, None) => format!("{launcher} ended with {status}"),
    }
}

/// `epoch 4 (committed 2026-04-20 14:03:12Z, 64.0 MiB, poll 120)`.
pub fn epoch_brief(m: &Manifest) -> String {
    format!(
        "epoch {} (committed {}, {}, poll {})",
        m.epoch,
        clock::utc(m.created_unix_ms),
        human_bytes(m.payload_bytes()),
        m.poll
    )
}

/// `restarting (1/3); newest committed: epoch 4 (...)` or `restarting (1/3) from the
/// beginning (no committed epoch)`. The epoch the ranks restore is reported when they do
/// (they fall back to an older one if this one is damaged).
pub fn restarting(k: u32, max: u32, from: Option<&Manifest>) -> String {
    match from {
        Some(m) => format!(
            "restarting ({k}/{max}); newest committed: {}",
            epoch_brief(m)
        ),
        None => format!("restarting ({k}/{max}) from the beginning (no committed epoch)"),
    }
}

/// The last line of a job that finished (`migrations` of its relaunches were migrations, the
/// others restarts after failures).
pub fn finished(launches: u32, migrations: u32, committed: &[u64], secs: f64) -> String {
    let moved = match migrations {
        0 => String::new(),
        m => format!(", {}", count(m as u64, "migration", "migrations")),
    };
    format!(
        "job finished after {}, {}{moved}; epochs committed: {}; wall time {secs:.1} s",
        count(launches as u64, "launch", "launches"),
        count(
            launches.saturating_sub(1 + migrations) as u64,
            "restart",
            "restarts"
        ),
        epochs(committed)
    )
}

/// The last line of a job whose ranks stopped on request after a checkpoint.
pub fn stopped(epoch: u64, secs: f64) -> String {
    format!("job stopped on request after epoch {epoch}; wall time {secs:.1} s")
}

/// The last line of a job that failed with no restarts left.
pub fn gave_up(max_restarts: u32, committed: &[u64], secs: f64) -> String {
    format!(
        "giving up: no restarts left (--max-restarts {max_restarts}); epochs committed: {}; \
         wall time {secs:.1} s",
        epochs(committed)
    )
}

/// `1 launch`, `2 launches`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Epoch numbers as ranges, in the order given: `1-4, 6`; `none` when empty.
pub fn epochs(list: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let mut j = i;
        while j + 1 < list.len() && list[j + 1] == list[j] + 1 {
            j += 1;
        }
        parts.push(match j - i {
            0 => list[i].to_string(),
            1 => format!("{}, {}", list[i], list[j]),
            _ => format!("{}-{}", list[i], list[j]),
        });
        i = j + 1;
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `L1`, `L2`, `L3`, `L4`.
pub fn level(l: Level) -> &'static str {
    match l {
        Level::Local => "L1",
        Level::Partner => "L2",
        Level::Parity => "L3",
        Level::Pfs => "L4",
    }
}

/// Seconds with two decimals: `0.21 s`.
pub fn secs(s: f64) -> String {
    format!("{s:.2} s")
}

/// A command line a shell would accept: words quoted only when they need it.
pub fn shell_words(argv: &[OsString]) -> String {
    let quote = |a: &OsString| {
        let s = a.to_string_lossy();
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
        if plain {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::mpirun::{Cause, Failure};

    fn check(got: String, expected: &str) {
        assert_eq!(got, expected);
    }

    #[test]
    fn event_lines() {
        check(
            event(&Event::Committed {
                epoch: 3,
                poll: 120,
                bytes: 64 << 20,
                logged: 6,
                write_secs: 0.181,
                total_secs: 0.2149,
                cut_secs: 0.0,
            }),
            "epoch 3 committed at poll 120: 64.0 MiB, 6 messages drained, write 0.18 s, total \
             0.21 s",
        );
        check(
            event(&Event::EpochUnusable {
                epoch: 5,
                reasons: vec!["rank 1: bad".into(), "rank 2: worse".into()],
                quarantined: false,
            }),
            "epoch 5 unusable: rank 1: bad; rank 2: worse",
        );
        check(
            event(&Event::EpochUnusable {
                epoch: 6,
                reasons: vec!["rank 1: checksum mismatch".into()],
                quarantined: true,
            }),
            "epoch 6 unusable (quarantined): rank 1: checksum mismatch",
        );
        check(
            event(&Event::NotDurable {
                epoch: 4,
                manifest: "/j/manifests/epoch-00000004.manifest".into(),
                error: "Input/output error (os error 5)".into(),
            }),
            "epoch 4 is committed but may not be durable: its manifest \
             /j/manifests/epoch-00000004.manifest is in place, but the fsync of its directory \
             failed (Input/output error (os error 5)); older epochs are kept until a later \
             manifest is durable",
        );
        check(
            event(&Event::CommitFailed {
                epoch: 6,
                reasons: vec!["rank 0: ENOSPC".into()],
            }),
            "epoch 6 not committed: rank 0: ENOSPC",
        );
        check(
            event(&Event::Restored {
                epoch: 4,
                bytes: 64 << 20,
                read_secs: 0.05,
                unix_ms: 0,
            }),
            "restored epoch 4 (64.0 MiB in 0.05 s)",
        );
        check(
            event(&Event::Started {
                nranks: 4,
                launch: 1,
                unix_ms: 0,
            }),
            "4 ranks started (restart count 1)",
        );
        check(
            event(&Event::Handled {
                request: 1 << 33,
                epoch: 7,
            }),
            "checkpoint request 8589934592 satisfied by epoch 7",
        );
        let r = ckpt::trigger::Request {
            seq: 3,
            exit: true,
            created_unix_ms: 1_776_693_792_000,
        };
        check(
            expired(&r, std::path::Path::new("/j")),
            "ignoring checkpoint request 3 (then exit), made 2026-04-20 14:03:12Z: it was made \
             for an earlier run of this job, which ended before acting on it (to checkpoint \
             this run: ckpt checkpoint /j --then-exit)",
        );
        check(
            event(&Event::IoStuck {
                rank: 2,
                op: "writing".into(),
                path: "/l/j/epoch-00000003/rank-000002.ckpt.tmp".into(),
                epoch: 3,
                waited: 600.2,
            }),
            "rank 2 stuck for 600 s writing /l/j/epoch-00000003/rank-000002.ckpt.tmp (epoch 3); \
             its IO watchdog ended it, job aborted",
        );
    }

    #[test]
    fn quiet_lines() {
        use std::time::Duration;
        check(duration(Duration::from_millis(45_900)), "45s");
        check(duration(Duration::from_secs(600)), "10m 0s");
        check(duration(Duration::from_secs(7500)), "2h 5m");
        check(
            quiet(Duration::from_secs(90), "epoch 3 committed"),
            "no progress event for 1m 30s (last: epoch 3 committed); the job may be stuck \
             (ranks waiting for one another give up after CKPT_TIMEOUT, IO after CKPT_IO_TIMEOUT)",
        );
    }

    #[test]
    fn no_usable_epoch_lines() {
        let tried = vec![
            (6, "rank 1: bad".to_owned()),
            (5, "rank 2: worse".to_owned()),
        ];
        check(
            no_usable_epoch(&tried, &[6, 5]),
            "no usable epoch among 5, 6: epoch 6: rank 1: bad; epoch 5: rank 2: worse; not \
             relaunching, since every launch would fail the same way; they were found damaged \
             and are quarantined (epochs 5, 6), so the next `ckpt run` of this job directory \
             starts the job from the beginning",
        );
        check(
            no_usable_epoch(&tried[..1], &[]),
            "no usable epoch among 6: epoch 6: rank 1: bad; not relaunching, since every \
             launch would fail the same way; fix the cause, then resume",
        );
        check(
            no_usable_epoch(&tried, &[6]),
            "no usable epoch among 5, 6: epoch 6: rank 1: bad; epoch 5: rank 2: worse; not \
             relaunching, since every launch would fail the same way; epoch 6 quarantined as \
             damaged; fix the cause for the others, then resume",
        );
        check(
            quarantined_at_start(&[6], &[5, 4]),
            "epoch 6 quarantined (found damaged by an earlier restart; never restored, see \
             ckpt list)",
        );
        check(
            quarantined_at_start(&[6, 5], &[]),
            "epochs 5, 6 quarantined (found damaged by an earlier restart; never restored, see \
             ckpt list); no committed epoch is left, so the job starts from the beginning",
        );
    }

    #[test]
    fn job_lines() {
        let kill = Failure {
            rank: 2,
            node: None,
            cause: Cause::Signal(9, "Killed".into()),
        };
        check(
            failed(
                1,
                3.12,
                Some(kill.to_string()),
                "mpirun",
                ExitStatus::from_raw(137 << 8),
            ),
            "launch 1 failed after 3.1 s: rank 2 exited on signal 9 (Killed) (mpirun exited \
             with status 137)",
        );
        check(
            failed(2, 0.5, None, "srun", ExitStatus::from_raw(libc::SIGKILL)),
            "launch 2 failed after 0.5 s: unknown rank (srun was killed by signal 9)",
        );
        check(
            restarting(2, 3, Some(&crate::testutil::manifest(4, 2))),
            "restarting (2/3); newest committed: epoch 4 (committed 2026-04-20 14:03:12Z, 2.0 \
             MiB, poll 40)",
        );
        check(
            resuming(&[5, 4, 2], Some(&crate::testutil::manifest(5, 2))),
            "resuming: committed epochs 2, 4, 5 found; the first launch restores the newest \
             usable one (newest committed: epoch 5 (committed 2026-04-20 14:03:12Z, 2.0 MiB, \
             poll 50))",
        );
        check(
            resume_hint(&crate::testutil::plan(std::path::Path::new("/j/my job"), 4)),
            "to resume: ckpt run -n 4 --every 10 --keep 2 --job-dir '/j/my job' \
             --mpirun-arg=--bind-to --mpirun-arg=none -- /bin/true 'a b'",
        );
        let mut usr2 = crate::testutil::plan(std::path::Path::new("/j"), 2);
        usr2.exit_signal = Some(libc::SIGUSR2);
        usr2.mpirun_args.clear();
        check(
            resume_hint(&usr2),
            "to resume: ckpt run -n 2 --every 10 --keep 2 --job-dir /j --exit-signal=12 -- \
             /bin/true 'a b'",
        );
        usr2.emulate_nodes = Some(2);
        check(
            resume_hint(&usr2),
            "to resume: ckpt run -n 2 --every 10 --keep 2 --job-dir /j --emulate-nodes 2 \
             --exit-signal=12 -- /bin/true 'a b'",
        );
        usr2.l2_every = Some(0);
        usr2.l4_every = Some(3);
        check(
            resume_hint(&usr2),
            "to resume: ckpt run -n 2 --every 10 --keep 2 --l2-every 0 --l4-every 3 --job-dir \
             /j --emulate-nodes 2 --exit-signal=12 -- /bin/true 'a b'",
        );
        usr2.level_flags.l3_every = Some(1);
        usr2.level_flags.l3_parity = Some(2);
        usr2.level_flags.keep_l4 = Some(5);
        check(
            resume_hint(&usr2),
            "to resume: ckpt run -n 2 --every 10 --keep 2 --l2-every 0 --l4-every 3 --l3-every \
             1 --l3-parity 2 --keep-l4 5 --job-dir /j --emulate-nodes 2 --exit-signal=12 -- \
             /bin/true 'a b'",
        );
        let mut real = crate::testutil::plan(std::path::Path::new("/j"), 2);
        real.mpirun_args.clear();
        real.nodes = Some(crate::plan::RealNodes {
            list: "n[1-2]".into(),
            names: vec!["n1".into(), "n2".into()],
            ranks_per_node: Some(1),
            spares: 0,
            one_machine: false,
        });
        check(
            resume_hint(&real),
            "to resume: ckpt run -n 2 --every 10 --keep 2 --job-dir /j --nodes 'n[1-2]' \
             --ranks-per-node 1 -- /bin/true 'a b'",
        );
        let mut plan = crate::testutil::plan(std::path::Path::new("/j"), 4);
        check(
            header(&plan),
            "job dir /j: 4 ranks, checkpoint every 10 polls, up to 3 restarts; levels L1, L2 \
             every epoch, L3 every 4 epochs (groups of 4, XOR), L4 every 10 epochs in /j/shared; \
             keep 2 epochs at L1, 1 at L2, 1 at L3, 2 at L4",
        );
        plan.levels.parity_k = 2;
        plan.levels.parity_every = 1;
        plan.levels.parity_group = 8;
        plan.levels.keep_parity = 3;
        plan.levels.partner_every = 0;
        plan.keep = 1;
        check(
            format!("{}; {}", levels_policy(&plan), keeps(&plan)),
            "levels L1, L3 every epoch (groups of 8, Reed-Solomon, 2 parity), L4 every 10 \
             epochs in /j/shared; keep 1 epoch at L1, 3 at L3, 2 at L4",
        );
        plan.levels.parity_every = 0;
        plan.levels.shared_every = 1;
        plan.levels.shared_dir = Some("/pfs/me".into());
        check(levels_policy(&plan), "levels L1, L4 every epoch in /pfs/me");
        plan.levels.shared_every = 0;
        check(levels_policy(&plan), "levels L1");
        check(
            restarting(1, 3, None),
            "restarting (1/3) from the beginning (no committed epoch)",
        );
        check(
            finished(1, 0, &[], 2.04),
            "job finished after 1 launch, 0 restarts; epochs committed: none; wall time 2.0 s",
        );
        check(
            finished(3, 0, &[1, 2, 3, 4, 6, 7, 9], 10.0),
            "job finished after 3 launches, 2 restarts; epochs committed: 1-4, 6, 7, 9; wall \
             time 10.0 s",
        );
        check(
            finished(4, 1, &[1, 2], 1.0),
            "job finished after 4 launches, 2 restarts, 1 migration; epochs committed: 1, 2; \
             wall time 1.0 s",
        );
        check(
            shell_words(&[
                "mpirun".into(),
                "-x".into(),
                "a b".into(),
                "it's".into(),
                "".into(),
            ]),
            r"mpirun -x 'a b' 'it'\''s' ''",
        );
    }
}
