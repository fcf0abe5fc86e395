//! SIGINT and SIGTERM to the launcher, and the job's checkpoint signal. The handlers only
//! record the signal in atomics (async-signal-safe); the supervisor polls with a [`Watch`].
//! SIGINT/SIGTERM are forwarded to mpirun and stop restarting. The checkpoint signal
//! (SIGUSR1 unless `CKPT_SIGNAL` says otherwise) is caught only so that it does not kill the
//! launcher when sent to its process group: mpirun, in the same group, gets it too and
//! forwards it to the ranks, so the launcher does not send it again. Nothing else in the
//! launcher touches signal dispositions, except `ckpt exec-rank` (see [`crate::exec_rank`]).

use std::io;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static LAST: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static CHECKPOINT_COUNT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record(sig: libc::c_int) {
    LAST.store(sig, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn record_checkpoint(_: libc::c_int) {
    CHECKPOINT_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Installs the recording handlers for SIGINT and SIGTERM and, unless it is one of those,
/// for the job's checkpoint signal. Children get the default dispositions back at `exec`, as
/// for any caught signal.
pub fn install(checkpoint: Option<i32>) -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        set_handler(sig, record)?;
    }
    if let Some(sig) = checkpoint.filter(|s| ![libc::SIGINT, libc::SIGTERM].contains(s)) {
        set_handler(sig, record_checkpoint)?;
    }
    Ok(())
}

fn set_handler(sig: i32, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags); we then set
    // a handler that only stores to atomics, which is async-signal-safe, and pass valid
    // pointers to sigemptyset and sigaction.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
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

/// `SIGINT`, `SIGTERM`, `SIGUSR1`, ..., else `signal N`.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        n => format!("signal {n}"),
    }
}

/// Notices signals received since it was created (or last asked).
#[derive(Debug)]
pub struct Watch {
    seen: usize,
    checkpoints_seen: usize,
}

impl Watch {
    /// Starts watching from now.
    pub fn new() -> Watch {
        Watch {
            seen: COUNT.load(Ordering::SeqCst),
            checkpoints_seen: CHECKPOINT_COUNT.load(Ordering::SeqCst),
        }
    }

    /// How many checkpoint signals arrived since the previous call.
    pub fn take_checkpoint(&mut self) -> usize {
        let count = CHECKPOINT_COUNT.load(Ordering::SeqCst);
        let new = count.wrapping_sub(self.checkpoints_seen);
        self.checkpoints_seen = count;
        new
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
