//! Signals to the launcher. The handlers only record the signal in atomics
//! (async-signal-safe); the supervisor polls with a [`Watch`].
//!
//! - SIGINT/SIGTERM are forwarded to mpirun and stop restarting.
//! - The exit signal (`--exit-signal`, default SIGUSR1: what Slurm's `--signal=B:USR1@T`
//!   sends before the time limit) makes the launcher ask the job to checkpoint and stop.
//! - The job's checkpoint signal (SIGUSR1 unless `CKPT_SIGNAL` says otherwise), when it is not
//!   the exit signal, is caught only so that it does not kill the launcher when sent to its
//!   process group: mpirun, in the same group, gets it too and forwards it to the ranks, so
//!   the launcher does not send it again. (When it is the exit signal, a signal to the group
//!   makes one checkpoint, which then stops the job.)
//! - SIGHUP is caught and reported, and ignored by mpirun (see
//!   [`crate::supervise`]): a closed terminal does not end the job.
//!
//! Nothing else in the launcher touches signal dispositions, except `ckpt exec-rank` (see
//! [`crate::exec_rank`]).

use std::io;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static LAST: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static CHECKPOINT_COUNT: AtomicUsize = AtomicUsize::new(0);
static EXIT_COUNT: AtomicUsize = AtomicUsize::new(0);
static HUP_COUNT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record(sig: libc::c_int) {
    LAST.store(sig, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn record_checkpoint(_: libc::c_int) {
    CHECKPOINT_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn record_exit(_: libc::c_int) {
    EXIT_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn record_hup(_: libc::c_int) {
    HUP_COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Signals that cannot be the exit signal: they have their own meaning to the launcher.
pub const RESERVED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the recording handlers: SIGINT, SIGTERM, SIGHUP, the exit signal and the job's
/// checkpoint signal (each unless it is one of the former). Children get the default
/// dispositions back at `exec`, as for any caught signal.
pub fn install(checkpoint: Option<i32>, exit: Option<i32>) -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        set_handler(sig, record)?;
    }
    set_handler(libc::SIGHUP, record_hup)?;
    let exit = exit.filter(|s| !RESERVED.contains(s));
    if let Some(sig) = exit {
        set_handler(sig, record_exit)?;
    }
    if let Some(sig) = checkpoint.filter(|s| !RESERVED.contains(s) && Some(*s) != exit) {
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
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGURG => "SIGURG".into(),
        libc::SIGXCPU => "SIGXCPU".into(),
        n => format!("signal {n}"),
    }
}

/// Notices signals received since it was created (or last asked).
#[derive(Debug)]
pub struct Watch {
    seen: usize,
    checkpoints_seen: usize,
    exits_seen: usize,
    hups_seen: usize,
}

impl Watch {
    /// Starts watching from now.
    pub fn new() -> Watch {
        Watch {
            seen: COUNT.load(Ordering::SeqCst),
            checkpoints_seen: CHECKPOINT_COUNT.load(Ordering::SeqCst),
            exits_seen: EXIT_COUNT.load(Ordering::SeqCst),
            hups_seen: HUP_COUNT.load(Ordering::SeqCst),
        }
    }

    /// How many checkpoint signals arrived since the previous call.
    pub fn take_checkpoint(&mut self) -> usize {
        take(&CHECKPOINT_COUNT, &mut self.checkpoints_seen)
    }

    /// How many exit signals arrived since the previous call.
    pub fn take_exit(&mut self) -> usize {
        take(&EXIT_COUNT, &mut self.exits_seen)
    }

    /// How many SIGHUPs arrived since the previous call.
    pub fn take_hup(&mut self) -> usize {
        take(&HUP_COUNT, &mut self.hups_seen)
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

fn take(counter: &AtomicUsize, seen: &mut usize) -> usize {
    let count = counter.load(Ordering::SeqCst);
    let new = count.wrapping_sub(*seen);
    *seen = count;
    new
}

impl Default for Watch {
    fn default() -> Self {
        Watch::new()
    }
}
