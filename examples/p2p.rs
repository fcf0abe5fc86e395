//! `p2p`: a drill of the communicator's point-to-point calls beyond send and receive: probes,
//! `wait_any`/`test_any`/`wait_all`, send handles, and the memory completed sends keep. A run
//! killed and restarted any number of times must print the same checksum as an uninterrupted
//! one.
//!
//! ```text
//! ckpt run -n 3 --every 4 -- p2p --iters 30
//! ```
//!
//! Iteration `i`: every rank sends its right neighbour three messages with `isend` (tags 1-3,
//! lengths varying with `i`) and a 64 KiB one with `isend_vec` (tag 4), whose handle it keeps
//! over `poll` (the message is received at the next iteration, so it is in flight at every
//! checkpoint, and the cut completes it); it receives from its left neighbour by three
//! `irecv`s completed with `wait_any`/`test_any` (even `i`) or `wait_all` (odd `i`), then sizes
//! its buffer for the left's tag 4 message of `i - 1` with `probe` and `Status::count`. Every
//! fifth iteration the tag 2 receive is posted too small: the list call returns its refusal,
//! the other requests stay usable, and a new receive gets the message. Refused calls are
//! checked: a negative tag, an unknown rank, an empty `wait_any`. Iteration 0 also sends a
//! burst of 24 messages of 1 MiB to the right and receives the left's; once they completed,
//! the rank must hold at most the pool's bound (8 MiB) in send buffers, which it prints.
//!
//! Options: `--iters N` (30), `--step-ms MS` (0).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ckpt::mpi;
use ckpt::{Checkpointer, Comm, Config, Protect, Regions, SendTest, Source, TagSel};

struct Opts {
    iters: u64,
    step_ms: u64,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        iters: 30,
        step_ms: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = v.parse().map_err(|_| format!("{flag} {v}: not a number"))?;
        match flag.as_str() {
            "--iters" => o.iters = n,
            "--step-ms" => o.step_ms = n,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

struct Drill {
    iter: u64,
    digest: u32,
}

impl Protect for Drill {
    fn protect(&mut self, r: &mut Regions<'_>) {
        r.value("iter", &mut self.iter);
        r.value("digest", &mut self.digest);
    }
}

type R<T> = Result<T, String>;

fn ok<T>(r: ckpt::Result<T>) -> R<T> {
    r.map_err(|e| e.to_string())
}

/// `r` must be an error saying `needle`.
fn refused<T>(r: ckpt::Result<T>, needle: &str) -> R<()> {
    match r {
        Err(e) if e.to_string().contains(needle) => Ok(()),
        Err(e) => Err(format!("expected a refusal saying {needle:?}, got: {e}")),
        Ok(_) => Err(format!(
            "expected a refusal saying {needle:?}, the call worked"
        )),
    }
}

fn words(src: i32, iter: u64, tag: i32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|j| (src as u32) << 24 ^ (iter as u32) << 8 ^ (tag as u32) << 4 ^ j)
        .collect()
}

fn len_of(iter: u64, tag: i32) -> usize {
    1 + ((iter as usize * 7 + tag as usize * 13) % 40)
}

fn mix(digest: u32, tag: i32, data: &[u32]) -> u32 {
    let d = crc32c::crc32c_append(digest, &tag.to_le_bytes());
    crc32c::crc32c_append(d, ckpt::bytemuck::cast_slice(data))
}

const BIG: usize = 16 << 10; // u32s: 64 KiB
const BURST: usize = 24;
const MIB: usize = 1 << 20;

/// A refusal of the too-small tag 2 receive: its message stays queued.
fn requeued(e: ckpt::Error) -> R<()> {
    refused(Err::<(), _>(e), "stays queued")
}

/// Receives the three small messages of iteration `iter` from `left`, into the digest in tag
/// order whatever order they complete in. With `refuse`, the tag 2 receive is posted too
/// small first.
fn small(comm: &Comm, left: i32, iter: u64, digest: u32, refuse: bool) -> R<u32> {
    let post = |tag: i32, max: usize| comm.irecv::<u32>(Source::Rank(left), TagSel::Tag(tag), max);
    let mut reqs = (1..=3)
        .map(|tag| post(tag, if refuse && tag == 2 { 0 } else { 64 }))
        .collect::<ckpt::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let mut got: Vec<(i32, Vec<u32>)> = Vec::new();
    let mut refusals = 0;
    if iter % 2 == 0 {
        while !reqs.is_empty() {
            let done = match comm.test_any(&mut reqs) {
                Ok(Some(d)) => Ok(d),
                Ok(None) => comm.wait_any(&mut reqs),
                Err(e) => Err(e),
            };
            match done {
                Ok((_, v, st)) => got.push((st.tag, v)),
                Err(e) => {
                    requeued(e)?;
                    refusals += 1;
                    reqs.push(ok(post(2, 64))?);
                }
            }
        }
    } else {
        let all = match comm.wait_all(&mut reqs) {
            Ok(all) => all,
            Err(e) => {
                requeued(e)?;
                refusals += 1;
                if reqs.len() != 2 {
                    return Err(format!("wait_all kept {} requests, not 2", reqs.len()));
                }
                reqs.push(ok(post(2, 64))?);
                ok(comm.wait_all(&mut reqs))?
            }
        };
        for (v, st) in all {
            got.push((st.tag, v));
        }
        if !reqs.is_empty() {
            return Err("wait_all left requests".into());
        }
    }
    if refusals != usize::from(refuse) {
        return Err(format!("iteration {iter}: {refusals} refusals"));
    }
    got.sort_by_key(|g| g.0);
    let mut d = digest;
    for (tag, v) in got {
        if v != words(left, iter, tag, len_of(iter, tag)) {
            return Err(format!(
                "iteration {iter}: tag {tag} from rank {left} differs"
            ));
        }
        d = mix(d, tag, &v);
    }
    Ok(d)
}

/// Receives the left's tag 4 message of iteration `iter`, sized by a probe.
fn probed(comm: &Comm, left: i32, iter: u64, digest: u32) -> R<u32> {
    let st = ok(comm.probe(Source::Rank(left), TagSel::Tag(4)))?;
    let n = st.count::<u32>().ok_or("tag 4: not whole u32s")?;
    let mut buf = vec![0u32; n];
    let got = ok(comm.recv_into(Source::Rank(st.source), TagSel::Tag(st.tag), &mut buf))?;
    if got != st || buf != words(left, iter, 4, BIG) {
        return Err(format!("iteration {iter}: the probed message differs"));
    }
    Ok(mix(digest, 4, &buf))
}

/// Sends a burst of 1 MiB messages right, receives the left's, and checks what the rank's
/// sends hold once they completed: nothing in flight, at most 8 MiB pooled.
fn burst(comm: &Comm, left: i32, right: i32) -> R<()> {
    let data = vec![7u8; MIB];
    for _ in 0..BURST {
        ok(comm.send(right, 5, &data))?;
    }
    let mut buf = vec![0u8; MIB];
    for _ in 0..BURST {
        ok(comm.recv_into(Source::Rank(left), TagSel::Tag(5), &mut buf))?;
    }
    ok(comm.barrier())?;
    // Every call takes completed sends back; MPI may need a few calls to see them complete.
    let t0 = Instant::now();
    while comm.send_buffers().in_flight > 0 && t0.elapsed() < Duration::from_secs(30) {
        ok(comm.iprobe(Source::Any, TagSel::Tag(9)))?;
    }
    let held = comm.send_buffers();
    println!(
        "p2p: rank {}: after a burst of {BURST} x 1 MiB sends: {} bytes held ({} in flight, \
         {} pooled)",
        comm.rank(),
        held.in_flight_bytes + held.pooled_bytes,
        held.in_flight,
        held.pooled_bytes
    );
    if held.in_flight > 0 || held.pooled_bytes > 8 * MIB {
        return Err(format!("send buffers beyond the bound: {held:?}"));
    }
    Ok(())
}

fn run(world: &mpi::topology::SimpleCommunicator, o: &Opts) -> R<()> {
    let mut ck = ok(Config::from_env().and_then(|c| Checkpointer::new(world, c)))?;
    let mut d = Drill { iter: 0, digest: 0 };
    if ck.restarting() {
        let r = ok(ck.restore(&mut d))?;
        if ck.comm().rank() == 0 {
            println!("p2p: restored epoch {} at iteration {}", r.epoch, d.iter);
        }
    }
    let (rank, size) = (ck.comm().rank(), ck.comm().size());
    let (left, right) = ((rank + size - 1) % size, (rank + 1) % size);
    // The handle of the last tag 4 send, kept over `poll`.
    let mut kept = None;
    while d.iter < o.iters {
        let comm = ck.comm();
        let i = d.iter;
        if i == 0 {
            burst(comm, left, right)?;
            refused(
                comm.probe(Source::Any, TagSel::Tag(-1)),
                "tags are 0 or more",
            )?;
            refused(
                comm.iprobe(Source::Rank(size), TagSel::Any),
                "does not exist",
            )?;
            refused(comm.wait_any::<u8>(&mut Vec::new()), "no receive requests")?;
        }
        for tag in 1..=3 {
            let h = ok(comm.isend(right, tag, &words(rank, i, tag, len_of(i, tag))))?;
            if let SendTest::Pending(h) = ok(comm.test_send(h))? {
                if tag == 1 {
                    ok(comm.wait_send(h))?;
                }
            }
        }
        let big = ok(comm.isend_vec(right, 4, words(rank, i, 4, BIG)))?;
        d.digest = small(comm, left, i, d.digest, i % 5 == 3 || i % 10 == 0)?;
        if i > 0 {
            d.digest = probed(comm, left, i - 1, d.digest)?;
        }
        // The handle kept over the last poll (none after a restart: the message was in the
        // snapshot); its receiver has just received it.
        if let Some(h) = kept.replace(big) {
            ok(comm.wait_send(h))?;
        }
        if ok(comm.iprobe(Source::Any, TagSel::Tag(9)))?.is_some() {
            return Err("iprobe found a message nobody sent".into());
        }
        d.iter += 1;
        std::thread::sleep(Duration::from_millis(o.step_ms));
        if ok(ck.poll(&mut d))?.should_exit() {
            return Ok(());
        }
    }
    if o.iters > 0 {
        d.digest = probed(ck.comm(), left, o.iters - 1, d.digest)?;
    }
    if let Some(h) = kept.take() {
        ok(ck.comm().wait_send(h))?;
    }
    let all = ok(ck.comm().gather(0, &[d.digest]))?;
    if let Some(all) = all {
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
            eprintln!("p2p: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("p2p: MPI already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    match run(&world, &o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use ckpt::mpi::traits::Communicator;
            eprintln!("p2p: rank {}: {e}", world.rank());
            world.abort(1)
        }
    }
}
