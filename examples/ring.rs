//! `ring`: every rank keeps several messages in flight in both directions around a ring,
//! across iterations and so across checkpoints, and receives them with wildcards. It prints a
//! digest of the messages each rank received; a run killed and restarted any number of times
//! must print the same digests as an uninterrupted run.
//!
//! ```text
//! ckpt run -n 4 --every 25 -- ring --iters 200 --lag 3
//! ```
//!
//! Iteration `i` on rank `r`: send a message to the right neighbour (tag `i % 3`) and one to
//! the left (tag `100 + i % 2`); then receive the messages its neighbours sent at iteration
//! `i - lag`: from the left with a non-blocking receive from *any* source (only the left
//! neighbour uses tags 0..2), from the right with a blocking receive of *any* tag. So `lag`
//! iterations' worth of messages are always on the wire when `poll` runs. Every 7th message
//! is 64 KiB (past Open MPI's eager limit), the rest are small.
//!
//! Options: `--iters N` (200), `--lag L` (3), `--step-ms MS` (0).

use std::process::ExitCode;
use std::time::Duration;

use ckpt::mpi;
use ckpt::{Checkpointer, Comm, Config, Protect, Regions, Source, TagSel};

struct Opts {
    iters: u64,
    lag: u64,
    step_ms: u64,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        iters: 200,
        lag: 3,
        step_ms: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = v.parse().map_err(|_| format!("{flag} {v}: not a number"))?;
        match flag.as_str() {
            "--iters" => o.iters = n,
            "--lag" => o.lag = n.max(1),
            "--step-ms" => o.step_ms = n,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// The state: the next iteration, and per source a running CRC of what arrived from it.
struct Ring {
    iter: u64,
    digests: Vec<u32>,
    received: Vec<u64>,
}

impl Protect for Ring {
    fn protect(&mut self, r: &mut Regions<'_>) {
        r.value("iter", &mut self.iter);
        r.vec("digests", &mut self.digests);
        r.vec("received", &mut self.received);
    }
}

fn payload(src: i32, dst: i32, iter: u64) -> Vec<u64> {
    let len = if iter % 7 == 3 {
        8192
    } else {
        1 + (iter % 5) as usize
    };
    (0..len as u64)
        .map(|k| (src as u64) << 48 ^ (dst as u64) << 40 ^ iter << 16 ^ k)
        .collect()
}

impl Ring {
    fn absorb(&mut self, src: i32, data: &[u64]) {
        let s = src as usize;
        self.digests[s] = crc32c::crc32c_append(self.digests[s], ckpt::bytemuck::cast_slice(data));
        self.received[s] += 1;
    }

    fn send(&self, comm: &Comm, i: u64) -> Result<(), ckpt::Error> {
        let (r, n) = (comm.rank(), comm.size());
        let (right, left) = ((r + 1) % n, (r + n - 1) % n);
        // To the right the vector is handed over (no copy for the 64 KiB ones); to the left
        // it is copied.
        comm.send_vec(right, (i % 3) as i32, payload(r, right, i))?;
        comm.send(left, 100 + (i % 2) as i32, &payload(r, left, i))?;
        Ok(())
    }

    /// Receives what the neighbours sent at iteration `i`.
    fn receive(&mut self, comm: &Comm, i: u64) -> Result<(), ckpt::Error> {
        let (r, n) = (comm.rank(), comm.size());
        let (right, left) = ((r + 1) % n, (r + n - 1) % n);
        let from_left = comm.irecv::<u64>(Source::Any, TagSel::Tag((i % 3) as i32), 8192)?;
        let (data, st) = comm.recv_vec::<u64>(Source::Rank(right), TagSel::Any)?;
        assert_eq!(
            st.tag,
            100 + (i % 2) as i32,
            "rank {r}: message order from the right"
        );
        assert_eq!(
            data,
            payload(right, r, i),
            "rank {r}: payload from the right, iteration {i}"
        );
        self.absorb(right, &data);
        let (data, st) = comm.wait(from_left)?;
        assert_eq!(
            st.source, left,
            "rank {r}: only the left neighbour uses tags 0..2"
        );
        assert_eq!(
            data,
            payload(left, r, i),
            "rank {r}: payload from the left, iteration {i}"
        );
        self.absorb(left, &data);
        Ok(())
    }
}

fn run(world: &mpi::topology::SimpleCommunicator, o: &Opts) -> Result<(), ckpt::Error> {
    use ckpt::mpi::traits::Communicator;
    let mut ck = Checkpointer::new(world, Config::from_env()?)?;
    let (rank, size) = (world.rank(), world.size());
    let mut ring = Ring {
        iter: 0,
        digests: vec![0; size as usize],
        received: vec![0; size as usize],
    };
    if ck.restarting() {
        let r = ck.restore(&mut ring)?;
        if rank == 0 {
            println!(
                "ring: restored epoch {} at iteration {}",
                r.epoch, ring.iter
            );
        }
    }
    while ring.iter < o.iters {
        let i = ring.iter;
        ring.send(ck.comm(), i)?;
        if i >= o.lag {
            ring.receive(ck.comm(), i - o.lag)?;
        }
        ring.iter += 1;
        if o.step_ms > 0 {
            std::thread::sleep(Duration::from_millis(o.step_ms));
        }
        match ck.poll(&mut ring) {
            Ok(p) if p.should_exit() => return Ok(()),
            Ok(_) => {}
            // The epoch was not committed, but every rank got this same error and the previous
            // epoch is intact: the job can go on, and the next checkpoint is tried as usual.
            Err(e) if e.is_recoverable() => {
                warn(&format!("ring: rank {rank}: warning: {e}; carrying on"))
            }
            Err(e) => return Err(e),
        }
    }
    // The last `lag` iterations' messages are still on the wire.
    for i in o.iters.saturating_sub(o.lag)..o.iters {
        ring.receive(ck.comm(), i)?;
    }
    let mine = crc32c::crc32c(ckpt::bytemuck::cast_slice(&ring.digests));
    let all = ck.comm().gather(0, &[mine])?;
    let counts = ck.comm().gather(0, &[ring.received.iter().sum::<u64>()])?;
    if let (Some(all), Some(counts)) = (all, counts) {
        for (r, (d, c)) in all.iter().zip(&counts).enumerate() {
            println!("ring: rank {r} received {c} messages, digest {d:08x}");
        }
        println!(
            "checksum: {:08x}",
            crc32c::crc32c(ckpt::bytemuck::cast_slice(&all))
        );
    }
    Ok(())
}

/// Prints `line` to stderr in one write, so that mpirun does not interleave it with other
/// ranks' output.
fn warn(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ring: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("ring: MPI already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    match run(&world, &o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error names the rank. Abort rather than return: MPI_Finalize waits for every
            // rank, and the others may be blocked waiting for this one.
            eprintln!("ring: {e}");
            use ckpt::mpi::traits::Communicator;
            world.abort(1)
        }
    }
}
