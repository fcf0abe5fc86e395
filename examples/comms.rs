//! `comms`: a drill of sub-communicator creation's rules. Each case makes every rank of a
//! communicator refuse a creation (or a checkpoint) with the same error, and checks that the
//! communicators still work afterwards. Rank 0 prints `refused <case>: <error>` for each case
//! and `comms: all cases refused as expected` at the end; any surprise aborts with exit code 3.
//!
//! ```text
//! ckpt run -n 4 -- comms
//! ```
//!
//! With `--different-parents`, after those cases rank 0 creates a communicator from the root
//! communicator while the others create one from another: they wait for each other until
//! `CKPT_TIMEOUT` names the ranks that did not come, and the job is aborted.
//!
//! Cases: ranks creating in a different order (`dup` on rank 0, `split` elsewhere); a `cart`
//! with another periodicity on rank 0; a negative color on the last rank; `coords` on a
//! communicator that is not Cartesian; a collective's root that a sub-communicator does not
//! have; a checkpoint while rank 0 holds one communicator more.

use std::process::ExitCode;

use ckpt::mpi;
use ckpt::mpi::traits::Communicator;
use ckpt::{Checkpointer, Comm, Config, Error, Protect, Reduce, Regions, Source, TagSel};

/// The drill's state: none.
struct Nothing;

impl Protect for Nothing {
    fn protect(&mut self, _: &mut Regions<'_>) {}
}

/// What the drill found wrong.
struct Surprise(String);

impl From<Error> for Surprise {
    fn from(e: Error) -> Surprise {
        Surprise(format!("unexpected error: {e}"))
    }
}

/// Checks that `got` is an error on every rank of `comm` (whose rank 0 prints it under
/// `case`) and that it is not recoverable.
fn refused<T>(comm: &Comm, case: &str, got: ckpt::Result<T>) -> Result<(), Surprise> {
    let err = match got {
        Ok(_) => return Err(Surprise(format!("{case}: accepted"))),
        Err(e) => e,
    };
    if err.is_recoverable() {
        return Err(Surprise(format!("{case}: recoverable: {err}")));
    }
    let mut all = [0u8];
    comm.all_reduce(&[1u8], &mut all, Reduce::Min)?;
    if comm.rank() == 0 {
        println!("refused {case}: {err}");
    }
    Ok(())
}

/// One message round on `comm`: each rank sends its rank to the next, receives from the
/// previous, and checks it.
fn round(comm: &Comm) -> Result<(), Surprise> {
    let (r, n) = (comm.rank(), comm.size());
    comm.send((r + 1) % n, 5, &[r])?;
    let mut got = [0i32];
    comm.recv_into(Source::Rank((r + n - 1) % n), TagSel::Tag(5), &mut got)?;
    if got[0] != (r + n - 1) % n {
        return Err(Surprise(format!("round: got {} on rank {r}", got[0])));
    }
    Ok(())
}

fn run(world: &mpi::topology::SimpleCommunicator) -> Result<(), Surprise> {
    let mut ck = Checkpointer::new(world, Config::from_env()?)?;
    let (rank, size) = (ck.rank(), ck.size());
    let root = ck.comm();
    let got = if rank == 0 {
        root.dup()
    } else {
        root.split(0, rank)
    };
    refused(root, "different order", got)?;
    let got = root.cart(&[size], &[rank == 0]);
    refused(root, "different shape", got)?;
    let color = if rank == size - 1 { -1 } else { 0 };
    refused(root, "negative color", root.split(color, 0))?;
    refused(root, "coords off a grid", root.coords())?;
    // The refusals created nothing: the next communicator is #1 on every rank.
    let ring = root.cart(&[size], &[true])?;
    let ringc = ck.sub(ring)?;
    if ring.index() != 1
        || ringc.shift(0, 1)? != (Some((rank + size - 1) % size), Some((rank + 1) % size))
    {
        return Err(Surprise(format!(
            "ring: index {} or shift wrong",
            ring.index()
        )));
    }
    round(ringc)?;
    refused(
        ringc,
        "a collective's root on a sub-communicator",
        ringc.gather(size, &[rank]),
    )?;
    round(ck.comm())?;
    // One communicator more on rank 0 alone (a dup of its own single-rank split).
    let own = ck.sub(ck.comm().split(rank, 0)?)?;
    if rank == 0 {
        own.dup()?;
    }
    let got = ck.checkpoint(&mut Nothing);
    refused(ck.comm(), "a checkpoint with different communicators", got)?;
    round(ck.comm())?;
    if rank == 0 {
        println!("comms: all cases refused as expected");
    }
    if std::env::args().any(|a| a == "--different-parents") {
        // Rank 0 creates from the root communicator, the others from the ring: each waits
        // for the others until the deadline names them and the job is aborted.
        let parent = if rank == 0 { ck.comm() } else { ck.sub(ring)? };
        parent.dup()?;
        return Err(Surprise(
            "creations on different parents went through".into(),
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("comms: MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    match run(&world) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Surprise(m)) => {
            eprintln!("comms: rank {}: {m}", world.rank());
            world.abort(3)
        }
    }
}
