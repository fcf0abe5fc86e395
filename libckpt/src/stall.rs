//! Waiting for the other ranks with a deadline, and naming the ranks that did not come.
//!
//! A rank that stops calling `poll` (or polls less often than the others, or stops, or hangs)
//! would leave the rest blocked in a collective for ever. Instead, every wait of the protocol
//! on other ranks is a non-blocking MPI operation tested until a deadline (`CKPT_TIMEOUT`, plus
//! `CKPT_IO_TIMEOUT` for waits that follow other ranks' IO: [`Watch::after_io`]). Each wait
//! has a key that names it identically on every rank waiting in it, also when those ranks
//! wait in different collectives of one exchange (a rooted gather and the broadcast after it
//! share a key, since the non-roots move on to the broadcast). When the deadline passes, each
//! waiting rank leaves a marker file `<job_dir>/stall/<what>/rank-R` on the shared job
//! directory; after a grace period the lowest waiting rank lists the ranks without a marker,
//! prints them, records a `stalled` event, and aborts the job (a hang cannot be recovered in
//! process; the launcher's restart takes over).

use std::time::{Duration, Instant};

use mpi::traits::*;

use crate::events::{self, Event};

/// Grace period for the other waiting ranks to leave their markers.
const GRACE: Duration = Duration::from_secs(2);

/// Where a wait happens: the job directory for markers, the timeout, and names.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    /// Shared job directory.
    pub job_dir: std::path::PathBuf,
    /// How long to wait.
    pub timeout: Duration,
    /// Launch number, so markers of an earlier launch never count.
    pub launch: u32,
    /// `CKPT_IO_TIMEOUT`, for [`Watch::after_io`].
    pub io_timeout: Duration,
    /// When the clock started; `None`: when the wait starts.
    pub since: Option<Instant>,
}

impl Watch {
    /// The watch for a rank with configuration `cfg`.
    pub fn of(cfg: &crate::Config) -> Watch {
        Watch {
            job_dir: cfg.job_dir.clone(),
            timeout: cfg.timeout,
            launch: cfg.restart_count,
            io_timeout: cfg.io_timeout,
            since: None,
        }
    }

    /// The watch of a wait for ranks that do IO first (each under its own IO watchdog):
    /// `timeout + io_timeout`, counted from `since`, a moment every rank passes at about the
    /// same time (the start of the checkpoint after quiescence, the start of a restore). A
    /// common start keeps the ranks' deadlines together however long each one's own IO took,
    /// and a rank stuck in IO is ended by its watchdog before the others give up on it.
    pub fn after_io(&self, since: Instant) -> Watch {
        Watch {
            timeout: self.timeout + self.io_timeout,
            since: Some(since),
            ..self.clone()
        }
    }
}

/// Spins on `test` (which returns true once the operation completed) until it completes or
/// the timeout passes; in the second case reports the missing ranks and aborts the job.
/// `label` gives a key naming the wait identically on every rank (a directory name) and a
/// description for people; it is called only on a timeout, so the fast path allocates nothing.
pub(crate) fn wait_or_abort(
    comm: &mpi::topology::SimpleCommunicator,
    watch: &Watch,
    label: impl Fn() -> (String, String),
    mut test: impl FnMut() -> bool,
) {
    let timeout = watch.timeout;
    let t0 = watch.since.unwrap_or_else(Instant::now);
    let mut spins = 0u32;
    while !test() {
        if t0.elapsed() >= timeout {
            let (key, what) = label();
            report_and_abort(comm, watch, &key, &what);
        }
        spins += 1;
        if spins > 1000 {
            // Past the fast path, leave the core to ranks that share it (oversubscription).
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn report_and_abort(
    comm: &mpi::topology::SimpleCommunicator,
    watch: &Watch,
    key: &str,
    what: &str,
) -> ! {
    let (job_dir, timeout) = (watch.job_dir.as_path(), watch.timeout);
    let rank = comm.rank();
    let size = comm.size();
    let dir = job_dir
        .join("stall")
        .join(format!("launch-{}", watch.launch))
        .join(key);
    let _ = crate::storage::durable::create_dir_all(&dir);
    let _ = crate::storage::durable::create_regular(&dir.join(format!("rank-{rank}")), false);
    std::thread::sleep(GRACE);
    let waiting: Vec<i32> = (0..size)
        .filter(|r| dir.join(format!("rank-{r}")).exists())
        .collect();
    let missing: Vec<i32> = (0..size).filter(|r| !waiting.contains(r)).collect();
    if waiting.first() == Some(&rank) {
        let msg = format!(
            "ranks {missing:?} did not reach {what} within {} s (ranks {waiting:?} waited); \
             they stopped, hang, or call poll() less often than the others: every rank must \
             call poll() equally often and must not wait in poll() for a message that another \
             rank sends only after its own poll()",
            timeout.as_secs()
        );
        eprintln!("[ckpt rank {rank}] error: {msg}");
        let _ = events::append(
            job_dir,
            &Event::Stalled {
                what: what.to_owned(),
                missing,
                waited: timeout.as_secs_f64(),
            },
        );
        // Reported: the other waiting ranks may abort now.
        let _ = crate::storage::durable::create_regular(&dir.join(REPORTED), false);
    } else {
        eprintln!(
            "[ckpt rank {rank}] error: timed out after {} s waiting in {what}",
            timeout.as_secs()
        );
        // The abort wakes stopped ranks (mpirun sends SIGCONT first), which then time out
        // here too and leave their marker: the reporting rank must have listed the markers
        // before that, so the others abort only once it reported (or after a while).
        let t0 = Instant::now();
        while !dir.join(REPORTED).exists() && t0.elapsed() < 4 * GRACE {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    comm.abort(3)
}

/// Marker the reporting rank of a stall leaves once it has named the missing ranks.
const REPORTED: &str = "reported";

/// Waits for `req` with [`wait_or_abort`].
pub(crate) fn wait_request<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
    comm: &mpi::topology::SimpleCommunicator,
    watch: &Watch,
    label: impl Fn() -> (String, String),
    req: mpi::request::Request<'a, D, S>,
) {
    let mut req = Some(req);
    wait_or_abort(comm, watch, label, || match req.take() {
        Some(r) => match r.test() {
            Ok(_) => true,
            Err(r) => {
                req = Some(r);
                false
            }
        },
        None => true,
    });
}

/// Spins on `test` until it returns true or the timeout passes; in the second case `late` is
/// the rank this one waited for (known here, unlike in a collective): it is named with
/// `describe()`, a `stalled` event is recorded, and the job is aborted.
pub(crate) fn wait_on_rank(
    comm: &mpi::topology::SimpleCommunicator,
    watch: &Watch,
    late: i32,
    describe: impl Fn() -> String,
    mut test: impl FnMut() -> bool,
) {
    let t0 = Instant::now();
    let mut spins = 0u32;
    while !test() {
        if t0.elapsed() >= watch.timeout {
            let what = describe();
            let rank = comm.rank();
            eprintln!(
                "[ckpt rank {rank}] error: waited {} s for rank {late}: {what}",
                watch.timeout.as_secs()
            );
            let _ = events::append(
                &watch.job_dir,
                &Event::Stalled {
                    what: format!("rank {rank}: {what}"),
                    missing: vec![late],
                    waited: watch.timeout.as_secs_f64(),
                },
            );
            comm.abort(3)
        }
        spins += 1;
        if spins > 1000 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}
