//! Requests for a checkpoint from outside the application: a signal (SIGUSR1 by default;
//! Slurm's `--signal`, `mpirun` forwards SIGUSR1/2 to the ranks) and the launcher's control
//! file (`ckpt checkpoint JOB [--then-exit]`).
//!
//! Both only set request bits; the agreement (`protocol::agree`) makes every rank act on them
//! at the same poll. The signal handler stores to an atomic and nothing else. The control file
//! is read by rank 0 alone, at most every [`CONTROL_EVERY`], so a poll costs no system call.
//!
//! **Signals before the handler.** Until [`Triggers::new`] installs the handler, the signal's
//! default action would kill the rank. `ckpt run` therefore starts every rank with the signal
//! *blocked* (`ckpt exec-rank`, a blocked mask survives `exec` and `MPI_Init`); a signal that
//! arrives meanwhile stays pending, and [`Triggers::new`] installs the handler, then unblocks
//! it, so the request is taken at the first agreement poll (and said so on stderr).
//!
//! **Request lifecycle.** `<job_dir>/control/request` holds the newest request, one line
//! `SEQ EXIT CREATED_UNIX_MS` (e.g. `3 1 1776693792000`), replaced atomically by the launcher.
//! `<job_dir>/control/handled` holds the highest *settled* number: every request up to it was
//! satisfied by a committed epoch, or expired. Rank 0 takes a request whose number is above
//! both the settled number and the last one it took, and settles it only once an epoch that
//! satisfies it is committed: any committed epoch for a plain request, the epoch the ranks
//! stop after for `--then-exit`. It then appends [`Event::Handled`] naming the request and the
//! epoch. A crash before the commit leaves the request pending, so the relaunched job takes it
//! again (a crash between the commit and the settling can cost one extra checkpoint, never a
//! lost request). Numbers are `u64` and never reused: a new request gets one more than both
//! files hold. A request made while another is pending keeps the pending one's exit, so a
//! settled number always covers every request below it. Which run a request belongs to is the
//! launcher's business (`ckpt checkpoint` refuses to ask a job that no `ckpt run` runs, and a
//! new `ckpt run` expires what an earlier one left pending): see `launcher/src/lock.rs`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::events::{self, Event};
use crate::protocol::agree::{CHECKPOINT, EXIT};
use crate::storage::durable;

/// How often rank 0 looks at the control file.
pub const CONTROL_EVERY: Duration = Duration::from_millis(25);

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// Parses a signal name (`USR1`, `SIGUSR2`, `TERM`, ...) or number; `off` gives `None`.
pub fn parse_signal(s: &str) -> Result<Option<i32>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if let Ok(n) = t.parse::<i32>() {
        return if (1..64).contains(&n) && n != libc::SIGKILL && n != libc::SIGSTOP {
            Ok(Some(n))
        } else {
            Err(format!("{t:?} is not a signal that can be caught"))
        };
    }
    let name = t.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        _ => {
            return Err(format!(
            "unknown signal {t:?} (use USR1, USR2, TERM, INT, HUP, URG, XCPU, a number, or off)"
        ))
        }
    };
    Ok(Some(n))
}

/// A `ckpt checkpoint` request as stored in the control file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Request number: increases by one per request, never reused.
    pub seq: u64,
    /// Stop the ranks after the checkpoint (`--then-exit`).
    pub exit: bool,
    /// When the request was made (0 if not recorded).
    pub created_unix_ms: u64,
}

impl Request {
    /// Parses the control file's line `SEQ EXIT [CREATED_UNIX_MS]`: decimal `u64`s, `EXIT`
    /// `0` or `1`, nothing else.
    pub fn parse(text: &str) -> Result<Request, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if !(2..=3).contains(&fields.len()) {
            return Err(format!(
                "expected `SEQ EXIT [CREATED_UNIX_MS]`, found {} fields",
                fields.len()
            ));
        }
        let exit = match fields[1] {
            "0" => false,
            "1" => true,
            other => return Err(format!("EXIT must be 0 or 1, found {other:?}")),
        };
        Ok(Request {
            seq: parse_u64("SEQ", fields[0])?,
            exit,
            created_unix_ms: fields
                .get(2)
                .map_or(Ok(0), |f| parse_u64("CREATED_UNIX_MS", f))?,
        })
    }

    /// The control file's line for this request.
    pub fn line(&self) -> String {
        format!(
            "{} {} {}\n",
            self.seq,
            u8::from(self.exit),
            self.created_unix_ms
        )
    }
}

/// A decimal `u64` (digits only: no sign, no space, no overflow).
fn parse_u64(name: &str, s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name} must be a whole number, found {s:?}"));
    }
    s.parse()
        .map_err(|_| format!("{name} {s} is larger than {}", u64::MAX))
}

/// Why the control files cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A file could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("{}: {reason} (content {content:?}); fix or remove it", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its content (cut to 80 bytes).
        content: String,
        /// What is wrong.
        reason: String,
    },
    /// Request numbers are exhausted (the last one is `u64::MAX`).
    #[error("{}: request number {} is the last one; remove the control directory's files to start again", path.display(), u64::MAX)]
    Exhausted {
        /// The file.
        path: PathBuf,
    },
}

/// Path of a job's control request file.
pub fn control_path(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("request")
}

/// Path of the file holding the highest settled request number.
pub fn handled_path(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("handled")
}

/// The control files: the newest request (if any) and the highest settled number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlState {
    /// The request in the control file.
    pub request: Option<Request>,
    /// Every request up to this number is settled (0: none).
    pub handled: u64,
}

impl ControlState {
    /// Reads both files of `job_dir`; missing files mean no request and nothing settled.
    pub fn read(job_dir: &Path) -> Result<ControlState, ControlError> {
        let request = read_optional(&control_path(job_dir))?
            .map(|(path, text)| Request::parse(&text).map_err(|r| malformed(path, &text, r)))
            .transpose()?;
        let handled = read_optional(&handled_path(job_dir))?
            .map(|(path, text)| {
                let first = text.split_whitespace().next().unwrap_or("");
                parse_u64("the settled request number", first)
                    .map_err(|r| malformed(path, &text, r))
            })
            .transpose()?
            .unwrap_or(0);
        Ok(ControlState { request, handled })
    }

    /// The request, if it is not settled yet.
    pub fn pending(&self) -> Option<Request> {
        self.request.filter(|r| r.seq > self.handled)
    }
}

/// Largest control file read (they hold one short line): a larger one is refused unread.
const MAX_CONTROL_BYTES: u64 = 1 << 20;

fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>, ControlError> {
    let text = durable::read_capped(path, MAX_CONTROL_BYTES).and_then(|b| {
        String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    });
    match text {
        Ok(text) => Ok(Some((path.to_owned(), text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ControlError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

fn malformed(path: PathBuf, text: &str, reason: String) -> ControlError {
    ControlError::Malformed {
        path,
        content: text.chars().take(80).collect(),
        reason,
    }
}

/// Writes a request numbered one past everything in the control files and returns it. A
/// request still pending keeps its exit (`exit` is or-ed with it), so settling the new number
/// settles the old one correctly. The caller serialises writers (the launcher's request lock).
pub fn write_control(
    job_dir: &Path,
    exit: bool,
    created_unix_ms: u64,
) -> Result<Request, ControlError> {
    let state = ControlState::read(job_dir)?;
    let path = control_path(job_dir);
    let newest = state.request.map_or(0, |r| r.seq).max(state.handled);
    let seq = newest
        .checked_add(1)
        .ok_or_else(|| ControlError::Exhausted { path: path.clone() })?;
    let req = Request {
        seq,
        exit: exit || state.pending().is_some_and(|r| r.exit),
        created_unix_ms,
    };
    let io = |op| {
        let path = path.clone();
        move |source| ControlError::Io { op, path, source }
    };
    if let Some(dir) = path.parent() {
        durable::create_dir_all(dir).map_err(io("create the directory of"))?;
    }
    durable::write_atomic(&path, req.line().as_bytes()).map_err(io("write"))?;
    Ok(req)
}

/// Records every request up to `seq` as settled (`how`: e.g. `epoch 4` or `expired`), unless
/// a number at least as high already is. Returns whether it wrote.
pub fn settle(job_dir: &Path, seq: u64, how: &str) -> Result<bool, ControlError> {
    if ControlState::read(job_dir)?.handled >= seq {
        return Ok(false);
    }
    let path = handled_path(job_dir);
    durable::write_atomic(&path, format!("{seq} {how}\n").as_bytes()).map_err(|source| {
        ControlError::Io {
            op: "write",
            path,
            source,
        }
    })?;
    Ok(true)
}

/// Requests rank 0 has taken and that no committed epoch has satisfied yet, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Taken {
    requests: Vec<Request>,
}

impl Taken {
    /// A request was taken (its bits went into the agreement).
    pub fn push(&mut self, r: Request) {
        self.requests.push(r);
    }

    /// An epoch was committed; `stopping` says whether the ranks stop after it. Every request
    /// taken so far was taken before that checkpoint started, so it satisfies the plain ones,
    /// and the exit ones only if the ranks stop. Requests are settled in order, so this stops
    /// at the first one it does not satisfy. Returns the highest number satisfied.
    pub fn committed(&mut self, stopping: bool) -> Option<u64> {
        let n = self
            .requests
            .iter()
            .take_while(|r| stopping || !r.exit)
            .count();
        self.requests.drain(..n).next_back().map(|r| r.seq)
    }
}

/// This rank's sources of requests.
pub struct Triggers {
    signal: bool,
    control: Option<Control>,
}

/// Rank 0's view of the control files.
struct Control {
    job_dir: PathBuf,
    /// Highest request number taken or settled.
    seen: u64,
    taken: Taken,
    last_check: Option<Instant>,
    /// The last read error reported, so a broken file is reported once, not at every read.
    reported: Option<String>,
}

impl Triggers {
    /// Installs the handler for `signal` (if any), then unblocks the signal (a signal held
    /// blocked since the rank started is delivered now, and reported). On rank 0 it also
    /// watches the control file.
    pub fn new(signal: Option<i32>, rank: i32, job_dir: &Path) -> io::Result<Self> {
        if let Some(sig) = signal {
            install(sig)?;
            if SIGNALLED.load(Ordering::Relaxed) {
                eprintln!(
                    "[ckpt rank {rank}] checkpoint signal {sig} arrived while the rank was \
                     starting; it was held, and the job checkpoints at its first agreement poll"
                );
            }
        }
        let control = (rank == 0).then(|| Control {
            job_dir: job_dir.to_owned(),
            seen: 0,
            taken: Taken::default(),
            last_check: None,
            reported: None,
        });
        Ok(Triggers {
            signal: signal.is_some(),
            control,
        })
    }

    /// Request bits gathered since the last call.
    pub fn take(&mut self) -> u32 {
        let mut bits = 0;
        if self.signal && SIGNALLED.swap(false, Ordering::Relaxed) {
            bits |= CHECKPOINT;
        }
        if let Some(c) = &mut self.control {
            bits |= c.take();
        }
        bits
    }

    /// Epoch `epoch` was committed (`stopping`: the ranks stop after it). On rank 0, settles
    /// the requests it satisfies and logs [`Event::Handled`]; elsewhere does nothing.
    pub fn committed(&mut self, epoch: u64, stopping: bool) {
        let Some(c) = &mut self.control else { return };
        let Some(seq) = c.taken.committed(stopping) else {
            return;
        };
        if let Err(e) = settle(&c.job_dir, seq, &format!("epoch {epoch}")) {
            eprintln!(
                "[ckpt rank 0] warning: request {seq} was satisfied by epoch {epoch} but {e}"
            );
        }
        let _ = events::append(
            &c.job_dir,
            &Event::Handled {
                request: seq,
                epoch,
            },
        );
    }
}

impl Control {
    fn take(&mut self) -> u32 {
        if self.last_check.is_some_and(|t| t.elapsed() < CONTROL_EVERY) {
            return 0;
        }
        self.last_check = Some(Instant::now());
        let state = match ControlState::read(&self.job_dir) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                if self.reported.as_ref() != Some(&msg) {
                    eprintln!("[ckpt rank 0] warning: ignoring checkpoint requests: {msg}");
                    self.reported = Some(msg);
                }
                return 0;
            }
        };
        self.reported = None;
        self.seen = self.seen.max(state.handled);
        match state.request {
            Some(r) if r.seq > self.seen => {
                self.seen = r.seq;
                self.taken.push(r);
                CHECKPOINT | if r.exit { EXIT } else { 0 }
            }
            _ => 0,
        }
    }
}

/// Installs the recording handler for `sig`, then unblocks it in the calling thread.
fn install(sig: i32) -> io::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the sigaction
    // struct is fully initialised (zeroed, then the fields we use), and the signal set is
    // initialised by sigemptyset before use; every pointer passed is valid for the call.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above: an initialised signal set and valid pointers.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("USR1"), Ok(Some(libc::SIGUSR1)));
        assert_eq!(parse_signal("sigusr2"), Ok(Some(libc::SIGUSR2)));
        assert_eq!(parse_signal("off"), Ok(None));
        assert_eq!(parse_signal("10"), Ok(Some(10)));
        assert!(parse_signal("9").is_err());
        assert!(parse_signal("BOGUS").is_err());
    }

    #[test]
    fn request_lines_parse_strictly() {
        let ok = |seq, exit, created_unix_ms| {
            Ok(Request {
                seq,
                exit,
                created_unix_ms,
            })
        };
        assert_eq!(
            Request::parse("3 1 1776693792000\n"),
            ok(3, true, 1_776_693_792_000)
        );
        assert_eq!(Request::parse("7 0"), ok(7, false, 0));
        assert_eq!(Request::parse("4294967296 0 0"), ok(1 << 32, false, 0));
        assert_eq!(
            Request::parse("18446744073709551615 0 0"),
            ok(u64::MAX, false, 0)
        );
        for bad in [
            "",
            "3",
            "x 1",
            "-1 1",
            "+3 1",
            "3 2",
            "3 yes",
            "3 1 5 6",
            "3 1 -5",
            "18446744073709551616 0",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?} accepted");
        }
        let r = Request {
            seq: u64::MAX - 1,
            exit: true,
            created_unix_ms: 5,
        };
        assert_eq!(Request::parse(&r.line()), Ok(r));
    }

    #[test]
    fn request_numbers_never_repeat_nor_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(write_control(d, false, 1).unwrap().seq, 1);
        assert_eq!(write_control(d, false, 2).unwrap().seq, 2);
        // Past u32::MAX: no wrap.
        std::fs::write(control_path(d), "4294967295 0 0\n").unwrap();
        assert_eq!(write_control(d, false, 3).unwrap().seq, 1 << 32);
        // A settled number above the request's: one more than both.
        settle(d, (1 << 32) + 4, "expired").unwrap();
        assert_eq!(write_control(d, false, 4).unwrap().seq, (1 << 32) + 5);
        // The last number is an error, not a wrap to 0.
        std::fs::write(control_path(d), format!("{} 0 0\n", u64::MAX)).unwrap();
        let e = write_control(d, false, 5).unwrap_err();
        assert!(matches!(e, ControlError::Exhausted { .. }), "{e}");
        // A damaged file is named, not silently renumbered from 1.
        std::fs::write(control_path(d), "garbage\n").unwrap();
        let e = write_control(d, false, 6).unwrap_err().to_string();
        assert!(
            e.contains("control/request") && e.contains("garbage"),
            "{e}"
        );
        std::fs::write(control_path(d), "1 0 0\n").unwrap();
        std::fs::write(handled_path(d), "-3\n").unwrap();
        let e = write_control(d, false, 7).unwrap_err().to_string();
        assert!(e.contains("control/handled"), "{e}");
    }

    /// A control file that is a FIFO, a link or huge is named and refused: never a hang, never
    /// read through a link, never read whole.
    #[test]
    fn odd_control_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(control_path(d).parent().unwrap()).unwrap();
        let p = control_path(d).display().to_string();
        let read = |d: &Path| ControlState::read(d).unwrap_err().to_string();
        durable::mkfifo(&control_path(d));
        assert_eq!(
            read(d),
            format!("cannot read {p}: not a regular file (a FIFO)")
        );
        std::fs::remove_file(control_path(d)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", control_path(d)).unwrap();
        assert_eq!(
            read(d),
            format!("cannot read {p}: not a regular file (a symbolic link)")
        );
        std::fs::remove_file(control_path(d)).unwrap();
        std::fs::File::create(control_path(d))
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        assert_eq!(
            read(d),
            format!(
                "cannot read {p}: 2097152 bytes, more than the 1048576 bytes allowed (not read)"
            )
        );
    }

    #[test]
    fn a_pending_exit_is_kept_by_later_requests() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(write_control(d, true, 1).unwrap().exit);
        let r = write_control(d, false, 2).unwrap();
        assert!(
            r.exit,
            "request 1 (exit) is pending, so request 2 carries its exit"
        );
        assert!(settle(d, 2, "epoch 1").unwrap());
        assert!(!write_control(d, false, 3).unwrap().exit);
        // Settling never goes back.
        assert!(!settle(d, 1, "epoch 1").unwrap());
        assert_eq!(ControlState::read(d).unwrap().handled, 2);
    }

    #[test]
    fn requests_are_satisfied_in_order() {
        let req = |seq, exit| Request {
            seq,
            exit,
            created_unix_ms: 0,
        };
        let mut t = Taken::default();
        assert_eq!(t.committed(false), None);
        t.push(req(1, false));
        t.push(req(2, true));
        t.push(req(3, false));
        // An epoch the ranks go on after satisfies plain requests up to the first exit one.
        assert_eq!(t.committed(false), Some(1));
        assert_eq!(t.committed(false), None);
        // The epoch they stop after satisfies everything taken.
        assert_eq!(t.committed(true), Some(3));
        assert_eq!(t, Taken::default());
    }

    /// `take` without waiting for [`CONTROL_EVERY`].
    fn take(t: &mut Triggers) -> u32 {
        if let Some(c) = &mut t.control {
            c.last_check = None;
        }
        t.take()
    }

    fn settled(d: &Path) -> u64 {
        ControlState::read(d).unwrap().handled
    }

    #[test]
    fn a_request_is_settled_only_when_its_epoch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_control(d, false, 1).unwrap();
        let mut t = Triggers::new(None, 0, d).unwrap();
        assert_eq!(take(&mut t), CHECKPOINT);
        assert_eq!(take(&mut t), 0, "taken once per launch");
        // The job crashes before the commit: the relaunch takes the request again.
        assert_eq!(settled(d), 0);
        let mut t = Triggers::new(None, 0, d).unwrap();
        assert_eq!(take(&mut t), CHECKPOINT);
        t.committed(4, false);
        assert_eq!(settled(d), 1);
        let handled = Event::Handled {
            request: 1,
            epoch: 4,
        };
        assert_eq!(events::read_from(d, 0).unwrap().0, vec![handled]);
        // Settled: the next launch does not take it.
        let mut t = Triggers::new(None, 0, d).unwrap();
        assert_eq!(take(&mut t), 0);
        // An exit request is settled by the epoch the ranks stop after, not by an earlier one.
        write_control(d, true, 2).unwrap();
        assert_eq!(take(&mut t), CHECKPOINT | EXIT);
        t.committed(5, false);
        assert_eq!(settled(d), 1);
        t.committed(6, true);
        assert_eq!(settled(d), 2);
        // Other ranks leave the control files alone.
        write_control(d, false, 3).unwrap();
        let mut other = Triggers::new(None, 1, d).unwrap();
        assert_eq!(take(&mut other), 0);
        other.committed(7, false);
        assert_eq!(settled(d), 2);
        // A damaged request file is ignored (and reported), not misread.
        std::fs::write(control_path(d), "9 1 junk\n").unwrap();
        assert_eq!(take(&mut t), 0);
    }

    #[test]
    fn a_signal_held_blocked_before_the_handler_is_taken() {
        let sig = libc::SIGUSR2;
        // SAFETY: an initialised signal set and valid pointers; raise() sends the signal to
        // this thread, where it stays pending while blocked.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                0
            );
            assert_eq!(libc::raise(sig), 0);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut t = Triggers::new(Some(sig), 1, dir.path()).unwrap();
        assert_eq!(t.take(), CHECKPOINT);
        assert_eq!(t.take(), 0);
    }
}
