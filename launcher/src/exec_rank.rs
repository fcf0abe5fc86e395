//! `ckpt exec-rank --hold-signal SIG -- PROG ARGS`: how `ckpt run` starts each rank. It
//! blocks the job's checkpoint signal and `exec`s the program, so a checkpoint signal that
//! arrives before the rank's `Checkpointer::new` installs its handler is held pending instead
//! of killing the rank; `Checkpointer::new` unblocks it and the job checkpoints at its first
//! agreement poll.
//!
//! A blocked signal mask survives `exec` and `MPI_Init` (checked with Open MPI 4.1), while an
//! ignored disposition set on mpirun does not reach the ranks: mpirun catches SIGUSR1 to
//! forward it, and a caught signal is reset at `exec`. mpirun's children start with every
//! signal unblocked, hence this step inside the rank's own process. The window left is the
//! rank's `exec` of this program until its first instructions (about a millisecond).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::cli::ExecRankArgs;

/// Blocks the signal and replaces this process with the program; returns only on failure.
pub fn run(args: &ExecRankArgs) -> anyhow::Result<crate::Outcome> {
    let sig = args.hold_signal;
    block(sig)?;
    let (prog, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("exec-rank: no program given"))?;
    let mut cmd = Command::new(prog);
    cmd.args(rest);
    // SAFETY: the closure runs in this process just before exec (std resets the signal mask
    // first, which is why the signal is blocked again here); it makes two async-signal-safe
    // calls on a stack-allocated, initialised signal set.
    unsafe {
        cmd.pre_exec(move || block(sig));
    }
    let e = cmd.exec();
    Err(anyhow::anyhow!(
        "exec-rank: cannot run {}: {e}",
        prog.to_string_lossy()
    ))
}

/// Blocks `sig` in the calling thread.
fn block(sig: i32) -> io::Result<()> {
    // SAFETY: the signal set is initialised by sigemptyset before use and every pointer passed
    // is valid for the call.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigaddset(&mut set, sig) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
