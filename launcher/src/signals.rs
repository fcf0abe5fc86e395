//! SIGINT and SIGTERM to the launcher. The handler only records the signal in atomics
//! (async-signal-safe); the supervisor polls with a [`Watch`], forwards the signal to mpirun
//! and stops restarting. Nothing else in the launcher touches signal dispositions.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static LAST: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record(sig: libc::c_int) {
    LAST.store(sig, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Installs the recording handler for SIGINT and SIGTERM. Children get the default
/// dispositions back at `exec`, as for any caught signal.
pub fn install() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags); we then set
        // a handler that only stores to atomics, which is async-signal-safe, and pass valid
        // pointers to sigemptyset and sigaction.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `sig` to process `pid`.
pub fn send(pid: u32, sig: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SIGINT`, `SIGTERM`, else `signal N`.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        n => format!("signal {n}"),
    }
}

/// Notices signals received since it was created (or last asked).
#[derive(Debug)]
pub struct Watch {
    seen: usize,
}

impl Watch {
    /// Starts watching from now.
    pub fn new() -> Watch {
        Watch {
            seen: COUNT.load(Ordering::SeqCst),
        }
    }

    /// The last signal received since the previous call, if any.
    pub fn take(&mut self) -> Option<i32> {
        let count = COUNT.load(Ordering::SeqCst);
        if count == self.seen {
            return None;
        }
        self.seen = count;
        Some(LAST.load(Ordering::SeqCst))
    }
}

impl Default for Watch {
    fn default() -> Self {
        Watch::new()
    }
}
