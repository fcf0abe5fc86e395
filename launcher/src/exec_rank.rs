//! `ckpt exec-rank [--hold-signal SIG] [--emulate-nodes N --local-base DIR] -- PROG ARGS`: how
//! `ckpt run` starts each rank. It blocks the job's checkpoint signal, gives the rank its
//! emulated node, and `exec`s the program.
//!
//! **Emulated nodes** (`ckpt run --emulate-nodes N`): the rank's MPI rank and the job's size
//! (Open MPI's variables) place it on node `node<K>` by [`node_of`], and it gets
//! `CKPT_NODE=node<K>` and `CKPT_LOCAL_DIR=<local base>/node<K>`: each emulated node has its
//! own node identity and node-local directory, and `ckpt kill-node` finds its ranks by them.
//!
//! **The checkpoint signal**: a checkpoint signal that
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
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use crate::backend::mpirun;
use crate::cli::ExecRankArgs;

/// Blocks the signal, sets the emulated node, and replaces this process with the program;
/// returns only on failure.
pub fn run(args: &ExecRankArgs) -> anyhow::Result<crate::Outcome> {
    let (prog, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("exec-rank: no program given"))?;
    let mut cmd = Command::new(prog);
    cmd.args(rest);
    if let (Some(nodes), Some(base)) = (args.emulate_nodes, &args.local_base) {
        let (node, local) = emulated(nodes, base)?;
        cmd.env(ckpt::env::NODE, node)
            .env(ckpt::env::LOCAL_DIR, local);
    }
    if let Some(rankfile) = &args.rankfile {
        cmd.env(ckpt::env::NODE, placed(rankfile)?);
    }
    if let Some(sig) = args.hold_signal {
        block(sig)?;
        // SAFETY: the closure runs in this process just before exec (std resets the signal
        // mask first, which is why the signal is blocked again here); it makes two
        // async-signal-safe calls on a stack-allocated, initialised signal set.
        unsafe {
            cmd.pre_exec(move || block(sig));
        }
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

/// One of Open MPI's rank variables, as a number.
fn open_mpi_var(name: &str) -> anyhow::Result<u32> {
    let v = std::env::var(name).with_context(|| {
        format!("exec-rank: {name} is not set (not started by Open MPI's mpirun?)")
    })?;
    v.parse()
        .with_context(|| format!("exec-rank: {name}={v:?} is not a rank number"))
}

/// This rank's node on real nodes: its line in the launch's rankfile.
fn placed(rankfile: &Path) -> anyhow::Result<String> {
    let rank = open_mpi_var(mpirun::RANK_VAR)?;
    let text = ckpt::storage::durable::read_capped(rankfile, 64 << 20)
        .with_context(|| format!("exec-rank: cannot read {}", rankfile.display()))?;
    mpirun::host_in_rankfile(&String::from_utf8_lossy(&text), rank)
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("exec-rank: {} places no rank {rank}", rankfile.display()))
}

/// This rank's emulated node name and node-local directory, from Open MPI's rank variables.
fn emulated(nodes: u32, base: &Path) -> anyhow::Result<(String, std::path::PathBuf)> {
    let (rank, size) = (
        open_mpi_var(mpirun::RANK_VAR)?,
        open_mpi_var(mpirun::SIZE_VAR)?,
    );
    if nodes == 0 || nodes > size || rank >= size {
        anyhow::bail!(
            "exec-rank: rank {rank} of {size} cannot be placed on {nodes} emulated nodes"
        );
    }
    // A migration's placement (`control/placement` in the job directory, or the file a launch
    // started ahead of its placement names) overrides the blocks.
    let node = match (
        ckpt::env::get(ckpt::env::PLACEMENT_FILE),
        ckpt::env::get(ckpt::env::JOB_DIR),
    ) {
        (Some(file), _) => crate::migrate::node_in(Path::new(&file), rank, size, nodes),
        (None, Some(job_dir)) => crate::migrate::node_for(Path::new(&job_dir), rank, size, nodes),
        (None, None) => node_name(node_of(rank, size, nodes)),
    };
    let local = base.join(&node);
    Ok((node, local))
}

/// The emulated node of `rank` among `nranks` ranks on `nodes` nodes (`1 <= nodes <= nranks`,
/// `rank < nranks`): blocks of consecutive ranks, the first `nranks % nodes` nodes holding one
/// rank more than the others, so every node holds at least one rank.
pub fn node_of(rank: u32, nranks: u32, nodes: u32) -> u32 {
    let (per, extra) = (nranks / nodes, nranks % nodes);
    let big = extra * (per + 1);
    if rank < big {
        rank / (per + 1)
    } else {
        extra + (rank - big) / per
    }
}

/// The name of emulated node `k`: `node<k>`.
pub fn node_name(k: u32) -> String {
    format!("node{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The placement of every rank, as node indices.
    fn placement(nranks: u32, nodes: u32) -> Vec<u32> {
        (0..nranks).map(|r| node_of(r, nranks, nodes)).collect()
    }

    #[test]
    fn ranks_are_placed_in_blocks_on_every_node() {
        let table: &[(u32, u32, &[u32])] = &[
            (1, 1, &[0]),
            (4, 1, &[0, 0, 0, 0]),
            (4, 4, &[0, 1, 2, 3]),
            (8, 4, &[0, 0, 1, 1, 2, 2, 3, 3]),
            (8, 2, &[0, 0, 0, 0, 1, 1, 1, 1]),
            (8, 3, &[0, 0, 0, 1, 1, 1, 2, 2]),
            (5, 4, &[0, 0, 1, 2, 3]),
            (7, 4, &[0, 0, 1, 1, 2, 2, 3]),
            (9, 4, &[0, 0, 0, 1, 1, 2, 2, 3, 3]),
            (3, 2, &[0, 0, 1]),
        ];
        for &(nranks, nodes, expected) in table {
            assert_eq!(
                placement(nranks, nodes),
                expected,
                "{nranks} ranks on {nodes} nodes"
            );
        }
    }

    /// For every small shape: ranks are in non-decreasing node order, every node holds a
    /// rank, and node sizes differ by at most one.
    #[test]
    fn every_shape_is_balanced_and_contiguous() {
        for nranks in 1..=40 {
            for nodes in 1..=nranks {
                let p = placement(nranks, nodes);
                assert!(
                    p.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
                    "{p:?}"
                );
                assert_eq!((p[0], p[p.len() - 1]), (0, nodes - 1), "{p:?}");
                let sizes: Vec<usize> = (0..nodes)
                    .map(|k| p.iter().filter(|&&n| n == k).count())
                    .collect();
                let (min, max) = (sizes.iter().min(), sizes.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{sizes:?}");
            }
        }
        assert_eq!(node_of(u32::MAX - 1, u32::MAX, 7), 6);
    }

    #[test]
    fn node_names() {
        assert_eq!(node_name(0), "node0");
        assert_eq!(node_name(12), "node12");
    }
}
