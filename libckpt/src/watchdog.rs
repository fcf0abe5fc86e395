//! The IO watchdog: a deadline on the IO of one file.
//!
//! Writing or reading a rank file can legitimately take long, so it is not bounded by
//! `CKPT_TIMEOUT` but by its own `CKPT_IO_TIMEOUT`, and a call that never returns (a hung file
//! system) cannot be interrupted from inside. Each rank therefore has one watchdog thread.
//! The IO code arms it around the IO of one file ([`IoWatchdog::arm`]) and disarms it by
//! dropping the guard. If the guard is still there when the deadline passes, the thread prints
//! `[ckpt rank R] error: stuck for N s writing FILE (epoch E)`, records an `io_stuck` event
//! and ends the process (`_exit`), which ends the job; the launcher restarts it from the last
//! committed epoch. The other ranks, waiting for this one in a collective, allow
//! `CKPT_TIMEOUT + CKPT_IO_TIMEOUT`, so the stuck rank names itself first.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::events::{self, Event};

/// Exit status of a rank ended by its watchdog (the status of a stall abort, too).
pub(crate) const EXIT_STUCK: i32 = 3;

/// How long the watchdog gives the `io_stuck` event before ending the rank anyway (the job
/// directory may be on the file system that hangs).
const EVENT_GRACE: Duration = Duration::from_secs(2);

/// What a rank was doing when its watchdog fired.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stuck {
    /// The rank.
    pub rank: i32,
    /// `writing`, `reading`, `renaming`, ...
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Epoch of the checkpoint or restore.
    pub epoch: u64,
    /// Time since the watchdog was armed.
    pub waited: Duration,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stuck for {} s {} {} (epoch {})",
            self.waited.as_secs(),
            self.op,
            self.path.display(),
            self.epoch
        )
    }
}

/// What the watchdog does on expiry. Called on the watchdog thread; may not return.
pub(crate) type OnExpiry = Box<dyn FnOnce(Stuck) + Send>;

struct Task {
    since: Instant,
    op: &'static str,
    path: PathBuf,
    epoch: u64,
}

#[derive(Default)]
struct State {
    armed: Option<Task>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One rank's IO watchdog (see the module documentation).
pub(crate) struct IoWatchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl IoWatchdog {
    /// The watchdog of `rank`: on expiry it reports on stderr and in the events of `job_dir`,
    /// then ends the process.
    pub fn new(rank: i32, timeout: Duration, job_dir: &Path) -> std::io::Result<IoWatchdog> {
        let job_dir = job_dir.to_owned();
        Self::with_action(
            rank,
            timeout,
            Box::new(move |s| report_and_exit(&job_dir, s)),
        )
    }

    /// A watchdog that calls `on_expiry` when an armed deadline passes.
    pub fn with_action(
        rank: i32,
        timeout: Duration,
        on_expiry: OnExpiry,
    ) -> std::io::Result<IoWatchdog> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("ckpt-io-watchdog-{rank}"))
            .spawn(move || watch(&theirs, rank, timeout, on_expiry))?;
        Ok(IoWatchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Starts the deadline: this rank is now doing `op` on `path` for `epoch`. The deadline
    /// holds until the guard is dropped. Do not nest guards.
    pub fn arm(&self, op: &'static str, path: &Path, epoch: u64) -> Armed<'_> {
        let mut st = self.shared.lock();
        debug_assert!(st.armed.is_none(), "IO watchdog armed twice");
        st.armed = Some(Task {
            since: Instant::now(),
            op,
            path: path.to_owned(),
            epoch,
        });
        drop(st);
        self.shared.wake.notify_one();
        Armed { dog: self }
    }
}

impl Drop for IoWatchdog {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An armed deadline; dropping it disarms the watchdog.
pub(crate) struct Armed<'a> {
    dog: &'a IoWatchdog,
}

impl Armed<'_> {
    /// The rank moved on to `op` on `path` within the same deadline (the clock keeps running),
    /// so that a report names the step that hangs.
    pub fn now(&self, op: &'static str, path: &Path) {
        if let Some(t) = self.dog.shared.lock().armed.as_mut() {
            t.op = op;
            t.path = path.to_owned();
        }
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.dog.shared.lock().armed = None;
    }
}

/// The watchdog thread: sleeps while disarmed, wakes at the deadline while armed.
fn watch(shared: &Shared, rank: i32, timeout: Duration, on_expiry: OnExpiry) {
    let mut st = shared.lock();
    loop {
        if st.shutdown {
            return;
        }
        let Some(task) = &st.armed else {
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let waited = task.since.elapsed();
        if waited >= timeout {
            let stuck = Stuck {
                rank,
                op: task.op,
                path: task.path.clone(),
                epoch: task.epoch,
                waited,
            };
            drop(st);
            on_expiry(stuck);
            return;
        }
        st = shared
            .wake
            .wait_timeout(st, timeout - waited)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// The default action: say which rank is stuck on which file, record it, end the process.
fn report_and_exit(job_dir: &Path, s: Stuck) {
    eprintln!(
        "[ckpt rank {}] error: {s}; ending this rank so that the job restarts from its last \
         committed epoch (the limit is CKPT_IO_TIMEOUT)",
        s.rank
    );
    let event = Event::IoStuck {
        rank: s.rank,
        op: s.op.to_owned(),
        path: s.path.display().to_string(),
        epoch: s.epoch,
        waited: s.waited.as_secs_f64(),
    };
    let (done, wait) = mpsc::channel();
    let dir = job_dir.to_owned();
    // The append may hang on the same file system: it gets its own thread and a bounded wait.
    let _ = thread::Builder::new().spawn(move || {
        let _ = events::append(&dir, &event);
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(EVENT_GRACE);
    // SAFETY: _exit ends the process at once from any thread; it runs no destructors or
    // atexit handlers, which is what we want while another thread is blocked in IO.
    unsafe { libc::_exit(EXIT_STUCK) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dog(timeout_ms: u64) -> (IoWatchdog, mpsc::Receiver<Stuck>) {
        let (tx, rx) = mpsc::channel();
        let d = IoWatchdog::with_action(
            2,
            Duration::from_millis(timeout_ms),
            Box::new(move |s| {
                let _ = tx.send(s);
            }),
        )
        .unwrap();
        (d, rx)
    }

    #[test]
    fn an_armed_deadline_that_passes_names_the_rank_file_and_operation() {
        let (d, rx) = dog(50);
        let _armed = d.arm("writing", Path::new("/l/rank-2.ckpt.tmp"), 7);
        let s = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("watchdog fired");
        assert_eq!(
            (s.rank, s.op, s.path.as_path(), s.epoch),
            (2, "writing", Path::new("/l/rank-2.ckpt.tmp"), 7)
        );
        assert!(s.waited >= Duration::from_millis(50));
        assert_eq!(
            Stuck {
                waited: Duration::from_secs(600),
                ..s
            }
            .to_string(),
            "stuck for 600 s writing /l/rank-2.ckpt.tmp (epoch 7)"
        );
    }

    #[test]
    fn the_report_names_the_step_in_progress_with_the_clock_of_the_whole_file() {
        let (d, rx) = dog(100);
        let armed = d.arm("writing", Path::new("/l/f.tmp"), 1);
        armed.now("renaming", Path::new("/l/f"));
        let s = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("watchdog fired");
        assert_eq!((s.op, s.path.as_path()), ("renaming", Path::new("/l/f")));
    }

    #[test]
    fn a_disarmed_watchdog_never_fires_and_stops_cleanly() {
        let (d, rx) = dog(20);
        for epoch in 0..50 {
            drop(d.arm("reading", Path::new("/f"), epoch));
        }
        // Disarmed: nothing to fire on, however long we wait.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(d);
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}
