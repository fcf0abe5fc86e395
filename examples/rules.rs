//! `rules`: a drill of the communicator's rules, as an outside user would try them. Every
//! refused call must fail at once with an error, and the message it refused must still be
//! delivered afterwards, in order, from MPI or from a snapshot's message log. A run killed and
//! restarted any number of times must print the same checksum as an uninterrupted one.
//!
//! ```text
//! ckpt run -n 3 --every 5 -- rules --iters 40 --setup-bytes 131072
//! ```
//!
//! Before `restore()`, every rank sends its right neighbour a set-up message (`--setup-bytes`,
//! past the eager limit if large) and receives its left neighbour's only after `restore()`.
//! Iteration `i` receives what its left neighbour sent at `i - 1`, then sends the right
//! neighbour 100, 10 and 10 bytes on tag 7 and 13 bytes on tag 8, then polls (so all four are
//! in flight at every checkpoint). The receives, from the left:
//! a 10-byte `recv_into` (refused: 100 bytes come first), three receives that must get 100, 10
//! and 10 bytes in that order; a `u64` receive of the 13 bytes (refused), an `irecv` of at
//! most 5 bytes (refused), an `irecv` + `test` loop that gets the 13 bytes. Iteration 0 also
//! tries a negative tag (refused). After `poll` says the job stops, a send must be refused.
//!
//! Options: `--iters N` (40), `--setup-bytes B` (64), `--step-ms MS` (0).

use std::process::ExitCode;
use std::time::Duration;

use ckpt::mpi;
use ckpt::{Checkpointer, Comm, Config, Protect, Regions, Source, TagSel, Test};

struct Opts {
    iters: u64,
    setup_bytes: usize,
    step_ms: u64,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        iters: 40,
        setup_bytes: 64,
        step_ms: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = v.parse().map_err(|_| format!("{flag} {v}: not a number"))?;
        match flag.as_str() {
            "--iters" => o.iters = n,
            "--setup-bytes" => o.setup_bytes = n as usize,
            "--step-ms" => o.step_ms = n,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

struct Drill {
    iter: u64,
    digest: u32,
    refused: u64,
}

impl Protect for Drill {
    fn protect(&mut self, r: &mut Regions<'_>) {
        r.value("iter", &mut self.iter);
        r.value("digest", &mut self.digest);
        r.value("refused", &mut self.refused);
    }
}

fn bytes(src: i32, iter: u64, k: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|j| (src as u64 * 31 + iter * 7 + k * 3 + j) as u8)
        .collect()
}

type R<T> = Result<T, String>;

fn ok<T>(r: ckpt::Result<T>) -> R<T> {
    r.map_err(|e| e.to_string())
}

/// `r` must be an error saying `needle`; counted.
fn refused<T>(d: &mut Drill, what: &str, r: ckpt::Result<T>, needle: &str) -> R<()> {
    match r {
        Ok(_) => Err(format!("{what} should have been refused")),
        Err(e) if e.to_string().contains(needle) => {
            d.refused += 1;
            Ok(())
        }
        Err(e) => Err(format!("{what}: unexpected error: {e}")),
    }
}

impl Drill {
    fn absorb(&mut self, data: &[u8]) {
        self.digest = crc32c::crc32c_append(self.digest, data);
    }

    fn send(&self, comm: &Comm, i: u64) -> R<()> {
        let (r, n) = (comm.rank(), comm.size());
        let right = (r + 1) % n;
        for (k, len) in [100, 10, 10].into_iter().enumerate() {
            ok(comm.send(right, 7, &bytes(r, i, k as u64, len)))?;
        }
        ok(comm.send(right, 8, &bytes(r, i, 9, 13)))
    }

    fn receive(&mut self, comm: &Comm, i: u64) -> R<()> {
        let (r, n) = (comm.rank(), comm.size());
        let left = (r + n - 1) % n;
        let from = Source::Rank(left);
        if i == 0 {
            let e = comm.recv_vec::<u8>(Source::Any, TagSel::Tag(-1));
            refused(self, "a negative tag", e, "tags are 0 or more")?;
        }
        let mut small = [0u8; 10];
        let e = comm.recv_into(from, TagSel::Tag(7), &mut small);
        refused(self, "recv_into 10 bytes", e, "has 100 bytes")?;
        for (k, len) in [100, 10, 10].into_iter().enumerate() {
            let (got, st) = ok(comm.recv_vec::<u8>(from, TagSel::Tag(7)))?;
            if got != bytes(left, i, k as u64, len) || st.bytes != len {
                return Err(format!(
                    "iteration {i}: message {k} on tag 7 from rank {left}: got {} bytes, \
                     expected {len} (order lost?)",
                    got.len()
                ));
            }
            self.absorb(&got);
        }
        let e = comm.recv_vec::<u64>(Source::Any, TagSel::Tag(8));
        refused(self, "13 bytes as u64", e, "not a whole number of 8-byte")?;
        let req = ok(comm.irecv::<u8>(from, TagSel::Tag(8), 5))?;
        refused(
            self,
            "irecv of 5 bytes",
            comm.wait(req),
            "more than the 5 bytes",
        )?;
        let mut req = ok(comm.irecv::<u8>(from, TagSel::Tag(8), 64))?;
        let got = loop {
            match ok(comm.test(req))? {
                Test::Done(v, _) => break v,
                Test::Pending(r) => req = r,
            }
        };
        if got != bytes(left, i, 9, 13) {
            return Err(format!("iteration {i}: the 13-byte message differs"));
        }
        self.absorb(&got);
        Ok(())
    }
}

fn run(world: &mpi::topology::SimpleCommunicator, o: &Opts) -> R<()> {
    use ckpt::mpi::traits::Communicator;
    let mut ck = ok(Config::from_env().and_then(|c| Checkpointer::new(world, c)))?;
    let (rank, size) = (world.rank(), world.size());
    let (right, left) = ((rank + 1) % size, (rank + size - 1) % size);
    let mut d = Drill {
        iter: 0,
        digest: 0,
        refused: 0,
    };
    // Set-up data exchanged around restore(): sent before, received after.
    ok(ck
        .comm()
        .send_vec(right, 50, bytes(rank, 0, 50, o.setup_bytes)))?;
    if ck.restarting() {
        let r = ok(ck.restore(&mut d))?;
        if rank == 0 {
            println!("rules: restored epoch {} at iteration {}", r.epoch, d.iter);
        }
    }
    let (setup, _) = ok(ck
        .comm()
        .recv_vec::<u8>(Source::Rank(left), TagSel::Tag(50)))?;
    if setup != bytes(left, 0, 50, o.setup_bytes) {
        return Err("the set-up message differs".into());
    }
    // Iteration i receives what was sent at i - 1, then sends: the poll at its end has the
    // four messages of iteration i in flight, and a snapshot taken there resumes at i + 1.
    while d.iter < o.iters {
        let i = d.iter;
        if i > 0 {
            d.receive(ck.comm(), i - 1)?;
        }
        d.send(ck.comm(), i)?;
        d.iter += 1;
        if o.step_ms > 0 {
            std::thread::sleep(Duration::from_millis(o.step_ms));
        }
        if ok(ck.poll(&mut d))?.should_exit() {
            let e = ck.comm().send(right, 7, &[0u8]);
            refused(&mut d, "a send after should_exit", e, "the job is stopping")?;
            println!("rules: rank {rank}: a send after should_exit was refused");
            return Ok(());
        }
    }
    if o.iters > 0 {
        d.receive(ck.comm(), o.iters - 1)?;
    }
    let all = ok(ck.comm().gather(0, &[d.digest]))?;
    if let Some(all) = all {
        for (r, x) in all.iter().enumerate() {
            println!("rules: rank {r} digest {x:08x}");
        }
        println!(
            "checksum: {:08x}",
            crc32c::crc32c(ckpt::bytemuck::cast_slice(&all))
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rules: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("rules: MPI already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    match run(&world, &o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use ckpt::mpi::traits::Communicator;
            eprintln!("rules: rank {}: {e}", world.rank());
            world.abort(1)
        }
    }
}
