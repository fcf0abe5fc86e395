//! Requests for a checkpoint from outside the application: a signal (SIGUSR1 by default;
//! Slurm's `--signal`, `mpirun` forwards SIGUSR1/2 to the ranks) and the launcher's control
//! file (`ckpt checkpoint JOB [--then-exit]`).
//!
//! Both only set request bits; the agreement (`protocol::agree`) makes every rank act on them
//! at the same poll. The signal handler stores to an atomic and nothing else. The control file
//! is read by rank 0 alone, at most every [`CONTROL_EVERY`], so a poll costs no system call.
//!
//! Control file: `<job_dir>/control/request`, one line `SEQ EXIT` (e.g. `3 1`), replaced
//! atomically by the launcher. Rank 0 records the last request it acted on in
//! `<job_dir>/control/handled`; a request is new when its sequence number is higher. So a
//! request made while the job starts (or restarts) is taken, and none is ever taken twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::agree::{CHECKPOINT, EXIT};

/// How often rank 0 looks at the control file.
pub const CONTROL_EVERY: Duration = Duration::from_millis(100);

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

/// Path of a job's control request file.
pub fn control_path(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("request")
}

fn handled_path(job_dir: &Path) -> PathBuf {
    job_dir.join("control").join("handled")
}

/// Reads a control request: `(seq, exit)`; `None` if absent or unreadable.
pub fn read_control(job_dir: &Path) -> Option<(u64, bool)> {
    parse_request(&std::fs::read_to_string(control_path(job_dir)).ok()?)
}

fn parse_request(text: &str) -> Option<(u64, bool)> {
    let mut words = text.split_whitespace();
    let seq = words.next()?.parse().ok()?;
    let exit = words.next().is_some_and(|w| w == "1");
    Some((seq, exit))
}

/// Writes a control request with the next sequence number; returns it. Used by the launcher.
pub fn write_control(job_dir: &Path, exit: bool) -> std::io::Result<u64> {
    let seq = read_control(job_dir).map_or(1, |(s, _)| s + 1);
    let path = control_path(job_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::storage::durable::write_atomic(&path, format!("{seq} {}\n", u8::from(exit)).as_bytes())?;
    Ok(seq)
}

/// This rank's sources of requests.
pub struct Triggers {
    signal: bool,
    control: Option<Control>,
}

struct Control {
    job_dir: PathBuf,
    seen: u64,
    last_check: Instant,
}

impl Triggers {
    /// Installs the handler for `signal` (if any) and, on rank 0, watches the control file.
    pub fn new(signal: Option<i32>, rank0: bool, job_dir: &Path) -> std::io::Result<Self> {
        if let Some(sig) = signal {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
            // sigaction struct is fully initialised (zeroed, then the fields we use).
            let rc = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let control = rank0.then(|| Control {
            job_dir: job_dir.to_owned(),
            seen: std::fs::read_to_string(handled_path(job_dir))
                .ok()
                .and_then(|t| parse_request(&t))
                .map_or(0, |(s, _)| s),
            last_check: Instant::now(),
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
            if c.last_check.elapsed() >= CONTROL_EVERY {
                c.last_check = Instant::now();
                if let Some((seq, exit)) = read_control(&c.job_dir) {
                    if seq > c.seen {
                        c.seen = seq;
                        let line = format!("{seq} {}\n", u8::from(exit));
                        if let Err(e) = crate::storage::durable::write_atomic(
                            &handled_path(&c.job_dir),
                            line.as_bytes(),
                        ) {
                            eprintln!("[ckpt rank 0] warning: cannot record request {seq} as handled: {e}");
                        }
                        bits |= CHECKPOINT | if exit { EXIT } else { 0 };
                    }
                }
            }
        }
        bits
    }
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
    fn control_requests_are_seen_once() {
        let dir = tempfile::tempdir().unwrap();
        // A request made while the job starts is taken once, and not again after a restart.
        assert_eq!(write_control(dir.path(), false).unwrap(), 1);
        let mut t = Triggers::new(None, true, dir.path()).unwrap();
        std::thread::sleep(CONTROL_EVERY);
        assert_eq!(t.take(), CHECKPOINT);
        let mut t = Triggers::new(None, true, dir.path()).unwrap();
        std::thread::sleep(CONTROL_EVERY);
        assert_eq!(t.take(), 0);
        assert_eq!(write_control(dir.path(), true).unwrap(), 2);
        std::thread::sleep(CONTROL_EVERY);
        assert_eq!(t.take(), CHECKPOINT | EXIT);
        std::thread::sleep(CONTROL_EVERY);
        assert_eq!(t.take(), 0);
    }
}
