//! `collectives`: a drill of every collective of `ck.comm()` with results known in closed form.
//! Each iteration calls each collective with inputs made of the rank and the iteration, checks
//! every result against the value it must have, and folds it into a digest; the digests are
//! gathered and printed as a checksum, so a run killed and restarted must print the same one as
//! an uninterrupted run.
//!
//! ```text
//! ckpt run -n 4 --every 3 -- collectives --iters 30
//! ```
//!
//! At start-up (every launch, before `restore`), every rank makes the same refused calls
//! (a root outside the job, buffers of different lengths, counts that do not fit), each must
//! fail naming the call, and collectives must work after them. After `poll` says the job
//! stops, a barrier must be refused.
//!
//! Options: `--iters N` (30), `--step-ms MS` (0).

use std::process::ExitCode;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use ckpt::mpi;
use ckpt::mpi::collective::UserOperation;
use ckpt::mpi::datatype::{DynBuffer, DynBufferMut};
use ckpt::mpi::traits::Equivalence;
use ckpt::{Checkpointer, Comm, Config, Protect, Reduce, ReduceTest, Regions};

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

/// A user struct that travels through collectives by derived `Equivalence`.
#[derive(Equivalence, Clone, Copy, Default, Debug, PartialEq)]
#[mpi(crate = "::ckpt::mpi")]
struct Particle {
    x: [f64; 2],
    id: u32,
}

/// A plain-old-data struct that is not `Equivalence`: it uses the byte variants.
#[derive(Pod, Zeroable, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Cell {
    a: u32,
    b: f32,
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

/// `got` must equal `want`.
fn expect<T: PartialEq + std::fmt::Debug>(i: u64, what: &str, got: T, want: T) -> R<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "iteration {i}: {what} gave {got:?}, expected {want:?}"
        ))
    }
}

/// `r` must be a refusal naming `call` and saying `needle`.
fn refused<T>(r: ckpt::Result<T>, call: &str, needle: &str) -> R<()> {
    match r {
        Ok(_) => Err(format!("{call} should have been refused ({needle})")),
        Err(e)
            if e.to_string().contains(&format!("{call}: ")) && e.to_string().contains(needle) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("{call}: unexpected error: {e}")),
    }
}

/// Non-commutative: the left operand wins, so the result is rank 0's value.
fn left() -> UserOperation<'static> {
    UserOperation::associative(|x: DynBuffer, acc: DynBufferMut| {
        if let (Some(x), Some(acc)) = (x.downcast::<u64>(), acc.downcast::<u64>()) {
            acc.copy_from_slice(x);
        }
    })
}

/// Commutative: bitwise or, as a closure.
fn or() -> UserOperation<'static> {
    UserOperation::commutative(|x: DynBuffer, acc: DynBufferMut| {
        if let (Some(x), Some(acc)) = (x.downcast::<u64>(), acc.downcast::<u64>()) {
            for (a, b) in acc.iter_mut().zip(x) {
                *a |= *b;
            }
        }
    })
}

/// Every rank makes the same refused calls; none enters MPI, so none waits for another.
fn refusals(comm: &Comm) -> R<usize> {
    let n = comm.size();
    let nu = n as usize;
    let r = comm.rank() as usize;
    let mut one = [0u64; 1];
    let calls = [
        refused(comm.broadcast(n, &mut one), "broadcast", "does not exist"),
        refused(
            comm.reduce(-1, &[1u64], None, Reduce::Sum),
            "reduce",
            "root -1",
        ),
        refused(
            comm.all_reduce(&[1u64, 2], &mut one, Reduce::Sum),
            "all_reduce",
            "send has 2 elements but recv 1",
        ),
        refused(
            comm.scan(&[1u64], &mut [0u64; 2], Reduce::Sum),
            "scan",
            "must be equal",
        ),
        refused(
            comm.gatherv(0, &[1u64], &vec![1; nu + 1]),
            "gatherv",
            "one per rank",
        ),
        refused(
            comm.all_gatherv(&[1u64], &vec![2; nu]),
            "all_gatherv",
            &format!("counts[{r}] is 2 but this rank's buffer has 1"),
        ),
        refused(
            comm.all_to_all(&vec![0u64; nu + 1], &mut vec![0u64; nu + 1]),
            "all_to_all",
            "not a multiple",
        ),
        refused(
            comm.all_to_allv(&[0u64; 1], &vec![1; nu], &mut vec![0u64; nu], &vec![1; nu]),
            "all_to_allv",
            "send_counts add up to",
        ),
        refused(
            comm.scatterv(0, None::<&[u64]>, &vec![1; nu], &mut []),
            "scatterv",
            &format!("counts[{r}] is 1"),
        ),
    ];
    for c in &calls {
        c.clone()?;
    }
    // The communicator is still usable.
    ok(comm.barrier())?;
    let mut sum = [0u64];
    ok(comm.all_reduce(&[1u64], &mut sum, Reduce::Sum))?;
    expect(0, "all_reduce after refusals", sum[0], n as u64)?;
    Ok(calls.len())
}

impl Drill {
    fn absorb<T: Pod>(&mut self, data: &[T]) {
        self.digest = crc32c::crc32c_append(self.digest, bytemuck::cast_slice(data));
    }

    /// One iteration: every collective, each result checked and absorbed.
    fn step(&mut self, comm: &Comm) -> R<()> {
        self.reductions(comm)?;
        self.scans(comm)?;
        self.scatters(comm)?;
        self.gathers(comm)?;
        self.exchanges(comm)?;
        self.nonblocking(comm)
    }

    fn reductions(&mut self, comm: &Comm) -> R<()> {
        let (i, r, n) = (self.iter, comm.rank() as u64, comm.size() as u64);
        let root = (i % n) as i32;
        let mut sum = [0u64; 2];
        ok(comm.all_reduce(&[r + 1, i], &mut sum, Reduce::Sum))?;
        expect(i, "all_reduce Sum", sum, [n * (n + 1) / 2, n * i])?;
        let mut m = [r as i64 - i as i64, r as i64 - i as i64];
        ok(comm.all_reduce_in_place(&mut m[..1], Reduce::Max))?;
        ok(comm.all_reduce_in_place(&mut m[1..], Reduce::Min))?;
        expect(
            i,
            "all_reduce_in_place Max, Min",
            m,
            [(n - 1) as i64 - i as i64, -(i as i64)],
        )?;
        let mut prod = [0f64];
        let mine = if r as i32 == root {
            Some(&mut prod[..])
        } else {
            None
        };
        ok(comm.reduce(root, &[(r + 1) as f64], mine, Reduce::Prod))?;
        if r as i32 == root {
            expect(i, "reduce Prod", prod[0], (1..=n).product::<u64>() as f64)?;
        }
        let mut bits = [0u32; 3];
        ok(comm.all_reduce(
            &[(r + 1) as u32, 1 << r, !0 ^ (1 << r)],
            &mut bits,
            Reduce::BitXor,
        ))?;
        let mut want = [0u32, 0, 0];
        for k in 0..n {
            want[0] ^= (k + 1) as u32;
            want[1] ^= 1 << k;
            want[2] ^= !0 ^ (1 << k);
        }
        expect(i, "all_reduce BitXor", bits, want)?;
        let mut and_or = [0u32; 2];
        ok(comm.all_reduce(&[0xff00 | r as u32], &mut and_or[..1], Reduce::BitAnd))?;
        ok(comm.all_reduce(&[1 << r], &mut and_or[1..], Reduce::BitOr))?;
        expect(
            i,
            "all_reduce BitAnd, BitOr",
            and_or,
            [0xff00, (1 << n) - 1],
        )?;
        let mut logic = [0i32; 3];
        let is_root = i32::from(r as i32 == root);
        ok(comm.all_reduce(&[is_root], &mut logic[..1], Reduce::LogicalOr))?;
        ok(comm.all_reduce(&[is_root], &mut logic[1..2], Reduce::LogicalAnd))?;
        ok(comm.all_reduce(&[1], &mut logic[2..], Reduce::LogicalXor))?;
        expect(
            i,
            "LogicalOr, And, Xor",
            logic,
            [1, i32::from(n == 1), (n % 2) as i32],
        )?;
        let mut user = [0u64; 2];
        let (l, o) = (left(), or());
        ok(comm.all_reduce(&[r * 10 + i], &mut user[..1], &l))?;
        ok(comm.all_reduce(&[1 << r], &mut user[1..], &o))?;
        expect(i, "user operations (left, or)", user, [i, (1 << n) - 1])?;
        self.absorb(&sum);
        self.absorb(&m);
        self.absorb(&bits);
        self.absorb(&user);
        Ok(())
    }

    fn scans(&mut self, comm: &Comm) -> R<()> {
        let (i, r) = (self.iter, comm.rank() as u64);
        let mut inc = [0u64; 2];
        ok(comm.scan(&[r + 1, i], &mut inc, Reduce::Sum))?;
        expect(i, "scan Sum", inc, [(r + 1) * (r + 2) / 2, (r + 1) * i])?;
        let sentinel = 0xdead_beef;
        let mut exc = [sentinel];
        ok(comm.exscan(&[r + 1], &mut exc, Reduce::Sum))?;
        let want = if r == 0 { sentinel } else { r * (r + 1) / 2 };
        expect(i, "exscan Sum", exc[0], want)?;
        let mut first = [0u64];
        ok(comm.scan(&[r + 100 * i], &mut first, &left()))?;
        expect(
            i,
            "scan with a non-commutative operation",
            first[0],
            100 * i,
        )?;
        self.absorb(&inc);
        self.absorb(&exc);
        Ok(())
    }

    fn scatters(&mut self, comm: &Comm) -> R<()> {
        let (i, r, n) = (self.iter, comm.rank() as u64, comm.size() as u64);
        let root = ((i + 1) % n) as i32;
        let at_root = r as i32 == root;
        let all: Vec<u64> = (0..2 * n).map(|k| k * 10 + i).collect();
        let mut two = [0u64; 2];
        ok(comm.scatter(root, at_root.then_some(&all[..]), &mut two))?;
        expect(i, "scatter", two, [2 * r * 10 + i, (2 * r + 1) * 10 + i])?;
        // Rank k gets k % 3 elements: k * 1000 + j + i.
        let counts: Vec<usize> = (0..n).map(|k| (k % 3) as usize).collect();
        let flat: Vec<u64> = (0..n)
            .flat_map(|k| (0..k % 3).map(move |j| k * 1000 + j + i))
            .collect();
        let mut part = vec![0u64; counts[r as usize]];
        ok(comm.scatterv(root, at_root.then_some(&flat[..]), &counts, &mut part))?;
        let want: Vec<u64> = (0..r % 3).map(|j| r * 1000 + j + i).collect();
        expect(i, "scatterv", &part, &want)?;
        let mut b = [0u64, r];
        if at_root {
            b = [i * 7, root as u64];
        }
        ok(comm.broadcast(root, &mut b))?;
        expect(i, "broadcast", b, [i * 7, root as u64])?;
        let mut cell = [Cell {
            a: r as u32,
            b: 0.0,
        }];
        if at_root {
            cell[0] = Cell {
                a: i as u32,
                b: 0.5,
            };
        }
        ok(comm.broadcast_pod(root, &mut cell))?;
        expect(
            i,
            "broadcast_pod",
            cell[0],
            Cell {
                a: i as u32,
                b: 0.5,
            },
        )?;
        self.absorb(&two);
        self.absorb(&part);
        self.absorb(&b);
        self.absorb(&cell);
        Ok(())
    }

    fn gathers(&mut self, comm: &Comm) -> R<()> {
        let (i, r, n) = (self.iter, comm.rank() as u64, comm.size() as u64);
        let root = ((i + 2) % n) as i32;
        let ranks: Vec<u64> = (0..n).map(|k| k * i).collect();
        let g = ok(comm.gather(root, &[r * i]))?;
        expect(
            i,
            "gather",
            g.as_ref(),
            (r as i32 == root).then_some(&ranks),
        )?;
        let counts: Vec<usize> = (0..n as usize).map(|k| k + 1).collect();
        let mine = vec![r; r as usize + 1];
        let want: Vec<u64> = (0..n).flat_map(|k| vec![k; k as usize + 1]).collect();
        let gv = ok(comm.gatherv(root, &mine, &counts))?;
        expect(
            i,
            "gatherv",
            gv.as_ref(),
            (r as i32 == root).then_some(&want),
        )?;
        let p = Particle {
            x: [r as f64, i as f64 / 2.0],
            id: (r * 3) as u32,
        };
        let ps = ok(comm.all_gather(&[p]))?;
        let want_ps: Vec<Particle> = (0..n)
            .map(|k| Particle {
                x: [k as f64, i as f64 / 2.0],
                id: (k * 3) as u32,
            })
            .collect();
        expect(i, "all_gather of a derived struct", &ps, &want_ps)?;
        let agv = ok(comm.all_gatherv(&mine, &counts))?;
        expect(i, "all_gatherv", &agv, &want)?;
        let cells = ok(comm.all_gather_pod(&[Cell {
            a: r as u32,
            b: i as f32,
        }]))?;
        let want_cells: Vec<Cell> = (0..n)
            .map(|k| Cell {
                a: k as u32,
                b: i as f32,
            })
            .collect();
        expect(i, "all_gather_pod", &cells, &want_cells)?;
        let gp = ok(comm.gather_pod(root, &[Cell { a: 1, b: r as f32 }]))?;
        if let Some(gp) = &gp {
            expect(i, "gather_pod", gp.len(), n as usize)?;
            expect(i, "gather_pod last", gp[n as usize - 1].b, (n - 1) as f32)?;
        }
        self.absorb(&ranks);
        self.absorb(&want);
        self.absorb(&cells);
        Ok(())
    }

    fn exchanges(&mut self, comm: &Comm) -> R<()> {
        let (i, r, n) = (self.iter, comm.rank() as u64, comm.size() as u64);
        let send: Vec<u64> = (0..n).map(|j| r * 100 + j + i).collect();
        let mut recv = vec![0u64; n as usize];
        ok(comm.all_to_all(&send, &mut recv))?;
        let want: Vec<u64> = (0..n).map(|j| j * 100 + r + i).collect();
        expect(i, "all_to_all", &recv, &want)?;
        // To rank j: j + 1 elements r * 10 + j; from rank j: r + 1 elements j * 10 + r.
        let send_counts: Vec<usize> = (0..n as usize).map(|j| j + 1).collect();
        let recv_counts = vec![r as usize + 1; n as usize];
        let sendv: Vec<u64> = (0..n)
            .flat_map(|j| vec![r * 10 + j; j as usize + 1])
            .collect();
        let mut recvv = vec![0u64; (r as usize + 1) * n as usize];
        ok(comm.all_to_allv(&sendv, &send_counts, &mut recvv, &recv_counts))?;
        let wantv: Vec<u64> = (0..n)
            .flat_map(|j| vec![j * 10 + r; r as usize + 1])
            .collect();
        expect(i, "all_to_allv", &recvv, &wantv)?;
        ok(comm.barrier())?;
        self.absorb(&recv);
        self.absorb(&recvv);
        Ok(())
    }

    fn nonblocking(&mut self, comm: &Comm) -> R<()> {
        let (i, r, n) = (self.iter, comm.rank() as u64, comm.size() as u64);
        let mut local = [r + i, 1];
        let sum = ok(comm.iall_reduce(&local, Reduce::Sum))?;
        // The handle owns its buffers: the application's may change at once.
        local = [0, 0];
        let o = or();
        let bits = ok(comm.iall_reduce(&[1u64 << r], &o))?;
        let mut sum = sum;
        let got = loop {
            match sum.test() {
                ReduceTest::Done(v) => break v,
                ReduceTest::Pending(p) => sum = p,
            }
        };
        expect(
            i,
            "iall_reduce Sum",
            got.as_slice(),
            &[n * (n - 1) / 2 + n * i, n][..],
        )?;
        expect(
            i,
            "iall_reduce with a user operation",
            bits.wait(),
            vec![(1 << n) - 1],
        )?;
        // A handle dropped while pending waits for its reduction (on every rank alike).
        drop(ok(comm.iall_reduce(&[r], Reduce::Max))?);
        self.absorb(&got);
        self.absorb(&local);
        Ok(())
    }
}

fn run(world: &mpi::topology::SimpleCommunicator, o: &Opts) -> R<()> {
    use ckpt::mpi::traits::Communicator;
    let mut ck = ok(Config::from_env().and_then(|c| Checkpointer::new(world, c)))?;
    let rank = world.rank();
    let mut d = Drill { iter: 0, digest: 0 };
    // Before restore(): collectives are not part of any cut.
    let n = refusals(ck.comm())?;
    println!("collectives: rank {rank}: {n} refused calls, each named");
    if ck.restarting() {
        let r = ok(ck.restore(&mut d))?;
        if rank == 0 {
            println!(
                "collectives: restored epoch {} at iteration {}",
                r.epoch, d.iter
            );
        }
    }
    while d.iter < o.iters {
        d.step(ck.comm())?;
        d.iter += 1;
        if o.step_ms > 0 {
            std::thread::sleep(Duration::from_millis(o.step_ms));
        }
        if ok(ck.poll(&mut d))?.should_exit() {
            refused(ck.comm().barrier(), "barrier", "the job is stopping")?;
            println!("collectives: rank {rank}: a barrier after should_exit was refused");
            return Ok(());
        }
    }
    let all = ok(ck.comm().gather(0, &[d.digest]))?;
    if let Some(all) = all {
        for (r, x) in all.iter().enumerate() {
            println!("collectives: rank {r} digest {x:08x}");
        }
        println!(
            "checksum: {:08x}",
            crc32c::crc32c(bytemuck::cast_slice(&all))
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("collectives: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("collectives: MPI already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    match run(&world, &o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use ckpt::mpi::traits::Communicator;
            eprintln!("collectives: rank {}: {e}", world.rank());
            world.abort(1)
        }
    }
}
