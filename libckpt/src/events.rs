//! The job's event log: one JSON object per line in `<job_dir>/events.jsonl`, appended by rank 0
//! (and by the rank that reports a stall or is stuck in IO, and by the launcher: `stop_took`).
//!
//! This is how the launcher learns what happened inside the job (epochs committed, restores,
//! fallbacks) and prints it with timings; `ckpt list` and drills read it too. Appends are
//! single `write` calls on an `O_APPEND` file, so lines never interleave. The log is opened
//! through [`durable`]: never through a link, never blocking on a FIFO.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Level;
use crate::storage::durable;

/// Something that happened in a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The job's ranks started (`launch` 0 is the first start).
    Started {
        /// Ranks in the job.
        nranks: u32,
        /// Launch number (restart count).
        launch: u32,
        /// When rank 0 logged it (Unix ms; 0 in logs of older versions).
        #[serde(default)]
        unix_ms: u64,
    },
    /// One rank started (every rank logs it, before rank 0's `started`): where it runs, so
    /// tools and drills find ranks and nodes without scanning `/proc`.
    RankStarted {
        /// The rank.
        rank: u32,
        /// Its process id.
        pid: u32,
        /// Its node (`CKPT_NODE`, else `SLURMD_NODENAME`, else the host name).
        node: String,
        /// Launch number (restart count).
        launch: u32,
    },
    /// An epoch was committed.
    Committed {
        /// Epoch.
        epoch: u64,
        /// Poll count at the checkpoint.
        poll: u64,
        /// Payload bytes over all ranks.
        bytes: u64,
        /// Messages that were in flight and went into the ranks' message logs.
        #[serde(default)]
        logged: u64,
        /// Slowest rank's write + fsync time.
        write_secs: f64,
        /// Whole checkpoint time on rank 0 from the write on, including the commit.
        total_secs: f64,
        /// Rank 0's time in the cut before the write (waiting for the other ranks, draining
        /// messages in flight): the application stopped at `total_secs + cut_secs` before the
        /// commit.
        #[serde(default)]
        cut_secs: f64,
    },
    /// An epoch could not be committed.
    CommitFailed {
        /// Epoch.
        epoch: u64,
        /// Why, per failing rank.
        reasons: Vec<String>,
    },
    /// A committed epoch could not be restored; the restore falls back to an older one.
    EpochUnusable {
        /// Epoch.
        epoch: u64,
        /// Why, per failing rank.
        reasons: Vec<String>,
        /// Whether the epoch was found damaged and quarantined (never tried again, not
        /// counted toward the retention count); otherwise later restarts try it again.
        #[serde(default)]
        quarantined: bool,
    },
    /// No committed epoch could be restored: every rank fails with `NoUsableEpoch`, and a
    /// relaunch into the same state would fail the same way (the launcher stops).
    NoUsableEpoch {
        /// Epochs tried, newest first, with why each was unusable.
        tried: Vec<(u64, String)>,
        /// The tried epochs now quarantined, newest first.
        #[serde(default)]
        quarantined: Vec<u64>,
    },
    /// An epoch was committed (its manifest is in place and used by restarts) but the fsync
    /// that makes the manifest's name durable failed: a crash of the machine or storage could
    /// lose it. Older epochs are kept until a later manifest is durable.
    NotDurable {
        /// Epoch.
        epoch: u64,
        /// The manifest.
        manifest: PathBuf,
        /// The fsync error.
        error: String,
    },
    /// The ranks were asked to stop after a checkpoint (`ckpt checkpoint --then-exit`).
    Stopping {
        /// The epoch they stop after.
        epoch: u64,
    },
    /// `ckpt checkpoint` requests up to `request` are satisfied by the committed epoch `epoch`
    /// (logged by rank 0 after the commit; see `trigger`).
    Handled {
        /// Highest request number satisfied.
        request: u64,
        /// The committed epoch that satisfies them.
        epoch: u64,
    },
    /// Ranks waited for others inside the protocol past the timeout; the job is aborted.
    Stalled {
        /// Where they waited (e.g. `checkpoint epoch 4`).
        what: String,
        /// Ranks that did not arrive.
        missing: Vec<i32>,
        /// Seconds waited.
        waited: f64,
    },
    /// A rank spent longer than `CKPT_IO_TIMEOUT` in the IO of one file; its watchdog ended
    /// it, which ends the job.
    IoStuck {
        /// The rank.
        rank: i32,
        /// What it was doing (`writing`, `reading`, `renaming`, ...).
        op: String,
        /// The file.
        path: String,
        /// Epoch of the checkpoint or restore.
        epoch: u64,
        /// Seconds it had spent when the watchdog fired.
        waited: f64,
    },
    /// The job's state was restored.
    Restored {
        /// Epoch restored.
        epoch: u64,
        /// Payload bytes over all ranks.
        bytes: u64,
        /// Slowest rank's read time.
        read_secs: f64,
        /// When rank 0 logged it, the restore done on every rank (Unix ms; 0 in logs of older
        /// versions).
        #[serde(default)]
        unix_ms: u64,
    },
    /// A background level of an epoch is complete on every rank; its manifest now records it.
    LevelComplete {
        /// Epoch.
        epoch: u64,
        /// The level (`Partner` = L2, `Parity` = L3, `Pfs` = L4).
        level: Level,
        /// Bytes that level stored over all ranks.
        bytes: u64,
        /// Seconds from the commit to the level being complete on every rank.
        secs: f64,
    },
    /// A background level of an epoch failed on some rank: the epoch keeps its other levels,
    /// and that level's copies are not trusted.
    LevelFailed {
        /// Epoch.
        epoch: u64,
        /// The level.
        level: Level,
        /// What failed, naming rank and file.
        reasons: Vec<String>,
    },
    /// A checkpoint came while an earlier epoch's background levels were still running on
    /// some ranks: it waited for them (`CKPT_LEVELS_BUSY=wait`) or went on with L1 only
    /// (`skip`).
    LevelsBusy {
        /// The new epoch.
        epoch: u64,
        /// The epoch whose levels were running.
        previous: u64,
        /// Seconds rank 0 waited (wait), or 0 (skip).
        waited: f64,
        /// Whether the new epoch got L1 only.
        skipped: bool,
    },
    /// A rank's file of the epoch being restored was missing or damaged on its node and was
    /// recovered from another level into the rank's node-local storage (made durable there
    /// after the restore, when it was received or rebuilt).
    Recovered {
        /// Epoch.
        epoch: u64,
        /// The rank.
        rank: u32,
        /// The node it runs on now.
        node: String,
        /// The level it came from.
        level: Level,
        /// Bytes recovered.
        bytes: u64,
        /// Seconds the recovery took (transfer and write-back).
        secs: f64,
    },
    /// A migrating rank's file of `epoch` reached its new node during the checkpoint that
    /// ended the previous launch, streamed by the rank it replaces (see `handoff`): logged by
    /// the receiving rank after its release; the restore reads it there.
    HandedOff {
        /// Epoch of the file.
        epoch: u64,
        /// The rank.
        rank: u32,
        /// The node it runs on now.
        node: String,
        /// The node it came from.
        from: String,
        /// Bytes received.
        bytes: u64,
        /// Seconds from the connection to the receipt.
        secs: f64,
    },
    /// The launcher asked the ranks to checkpoint and stop (exit signal, end time) and they had
    /// all exited after `epoch` this long after the request (logged by the launcher: a later
    /// run's estimate of its last checkpoint before the end time).
    StopTook {
        /// The epoch the ranks stopped after.
        epoch: u64,
        /// Seconds from the request to mpirun's exit.
        secs: f64,
    },
    /// The launcher starts launch `launch` to put a migration's placement in force, the
    /// previous launch's ranks having stopped (logged by the launcher as it starts it).
    Relaunching {
        /// Launch number (restart count) of the new launch.
        launch: u32,
        /// When (Unix ms).
        unix_ms: u64,
    },
}

/// Path of a job's event log.
pub fn path(job_dir: &Path) -> PathBuf {
    job_dir.join("events.jsonl")
}

/// Appends one event to the job's log.
pub fn append(job_dir: &Path, event: &Event) -> io::Result<()> {
    let mut line = serde_json::to_string(event).map_err(io::Error::other)?;
    line.push('\n');
    // Never through a link or into a FIFO; created with the mode of `durable::access`.
    let mut f = durable::open_append(&path(job_dir))?;
    f.write_all(line.as_bytes())
}

/// Reads events from `offset` on; returns them and the offset after the last complete line.
/// Lines that do not parse (from a newer version, or torn by a crash) are skipped.
pub fn read_from(job_dir: &Path, offset: u64) -> io::Result<(Vec<Event>, u64)> {
    let mut f = match durable::open_regular(&path(job_dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    io::Seek::seek(&mut f, io::SeekFrom::Start(offset))?;
    let mut reader = io::BufReader::new(f);
    let mut events = Vec::new();
    let mut pos = offset;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        pos += n as u64;
        if let Ok(e) = serde_json::from_str(line.trim_end()) {
            events.push(e);
        }
    }
    Ok((events, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let a = Event::Started {
            nranks: 4,
            launch: 0,
            unix_ms: 0,
        };
        let b = Event::Restored {
            epoch: 3,
            bytes: 10,
            read_secs: 0.5,
            unix_ms: 0,
        };
        append(dir.path(), &a).unwrap();
        let (ev, off) = read_from(dir.path(), 0).unwrap();
        assert_eq!(ev, vec![a]);
        append(dir.path(), &b).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .unwrap()
            .write_all(b"{\"event\":\"star")
            .unwrap();
        let (ev, off2) = read_from(dir.path(), off).unwrap();
        assert_eq!(ev, vec![b]);
        assert_eq!(read_from(dir.path(), off2).unwrap().0, vec![]);
    }

    #[test]
    fn a_link_or_fifo_at_the_log_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, path(dir.path())).unwrap();
        let ev = Event::Stopping { epoch: 1 };
        let e = append(dir.path(), &ev).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (a symbolic link)");
        assert!(read_from(dir.path(), 0).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(path(dir.path())).unwrap();
        crate::storage::durable::mkfifo(&path(dir.path()));
        assert!(append(dir.path(), &ev).is_err());
        assert!(read_from(dir.path(), 0).is_err());
    }
}
