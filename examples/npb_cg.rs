//! `npb-cg`: the NAS Parallel Benchmarks CG kernel, written from the benchmark's
//! specification, on `ck.comm()`, checkpointed through ckpt.
//!
//! ```text
//! ckpt run -n 4 --every 5 -- npb-cg --class S
//! ```
//!
//! It estimates the eigenvalue nearest the class's shift of a random sparse symmetric matrix
//! by inverse power iteration, each outer iteration solving with 25 conjugate gradient
//! iterations, and checks the result against the benchmark's published value. The ranks form
//! the benchmark's 2-D process grid (`nprows` x `npcols`, the most square with `nprows <=
//! npcols`; a `cart` communicator with row and column sub-communicators): rank `(i, j)` holds
//! the block of the matrix in row block `i` and column block `j`, and the vectors' row block
//! `i` (the same on every rank of a grid row). A product all-gathers the vector over the
//! column (whose ranks hold every row block), multiplies the block, and sums the row's
//! partial products from an all-gather over the row in column order; every sum over rows is
//! formed from an all-gather over the column in rank order. So a run killed and restarted
//! with as many ranks ends bit-identical to an uninterrupted one.
//!
//! Options: `--class S|W|A` (default S), `--iter-ms MS` (sleep per outer iteration, to slow
//! the run down for kill drills; default 0), `--poll-cg` (also poll after each of the 25 CG
//! iterations of an outer iteration, so checkpoints fall inside a solve; `--every N` counts
//! those polls too), `--plain` (the same computation on plain rsmpi without ckpt, started with
//! `mpirun` alone: the benchmark's baseline).
//!
//! Output (rank 0): a line per outer iteration (iteration, residual norm, zeta), then
//! `zeta = <13 decimals>`, `result: <the f64 bits of zeta in hex>` and last `verified: yes`
//! or `verified: no`. The exit code is 0 either way unless an error occurred.

#[path = "npb_cg/matrix.rs"]
mod matrix;
#[path = "npb_cg/randlc.rs"]
mod randlc;
#[path = "npb_cg/solver.rs"]
mod solver;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ckpt::mpi;
use ckpt::{Checkpointer, Comm, Config, Protect, Regions, SubComm};

use matrix::Rows;
use solver::{Solve, Team, CG_ITERATIONS};

/// Relative tolerance of the verification, as the benchmark's.
const EPSILON: f64 = 1e-10;

/// A problem class: size, nonzeros per random vector, outer iterations, shift, and the
/// published zeta.
#[derive(Debug, Clone, Copy)]
struct Class {
    name: char,
    na: usize,
    nonzer: usize,
    niter: u64,
    shift: f64,
    zeta: f64,
}

const CLASSES: [Class; 3] = [
    Class {
        name: 'S',
        na: 1400,
        nonzer: 7,
        niter: 15,
        shift: 10.0,
        zeta: 8.597_177_507_864_8,
    },
    Class {
        name: 'W',
        na: 7000,
        nonzer: 8,
        niter: 15,
        shift: 12.0,
        zeta: 10.362_595_087_124,
    },
    Class {
        name: 'A',
        na: 14000,
        nonzer: 11,
        niter: 15,
        shift: 20.0,
        zeta: 17.130_235_054_029,
    },
];

impl Class {
    /// Whether `zeta` matches the published value within the benchmark's relative tolerance.
    fn verifies(&self, zeta: f64) -> bool {
        ((zeta - self.zeta) / self.zeta).abs() <= EPSILON
    }
}

#[derive(Debug, Clone, Copy)]
struct Opts {
    class: Class,
    iter_ms: u64,
    /// Plain rsmpi, no ckpt (the benchmark's baseline).
    plain: bool,
    /// Also poll after every CG iteration.
    poll_cg: bool,
}

/// Parses the options (the program name already skipped).
fn parse_opts(mut args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut o = Opts {
        class: CLASSES[0],
        iter_ms: 0,
        plain: false,
        poll_cg: false,
    };
    while let Some(flag) = args.next() {
        if flag == "--plain" || flag == "--poll-cg" {
            o.plain |= flag == "--plain";
            o.poll_cg |= flag == "--poll-cg";
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--class" => {
                o.class = CLASSES
                    .iter()
                    .find(|c| value.len() == 1 && value.starts_with(c.name))
                    .copied()
                    .ok_or_else(|| format!("--class {value}: expected S, W or A"))?
            }
            "--iter-ms" => {
                o.iter_ms = value
                    .parse()
                    .map_err(|_| format!("--iter-ms {value}: not a whole number"))?
            }
            _ => {
                return Err(format!(
                    "unknown option {flag} (use --class --iter-ms --plain --poll-cg)"
                ))
            }
        }
    }
    Ok(o)
}

/// What a checkpoint holds: this rank's rows of `x`, the outer iterations done, the last zeta,
/// and the solve in progress (empty at the end of an outer iteration; with `--poll-cg` a
/// checkpoint may fall inside one). The matrix is regenerated at start.
struct State {
    x: Vec<f64>,
    it: u64,
    zeta: f64,
    solve: Solve,
}

impl Protect for State {
    fn protect(&mut self, r: &mut Regions<'_>) {
        r.vec("x", &mut self.x);
        r.value("iteration", &mut self.it);
        r.value("zeta", &mut self.zeta);
        r.value("cg done", &mut self.solve.done);
        r.value("cg rho", &mut self.solve.rho);
        r.vec("cg z", &mut self.solve.z);
        r.vec("cg r", &mut self.solve.r);
        r.vec("cg p", &mut self.solve.p);
    }
}

/// An all-gather of `f64` blocks of one length, in rank order: `ck.comm()`'s, or plain
/// rsmpi's for the `--plain` baseline.
trait AllGather {
    /// Every rank's `local` (all of one length), concatenated in rank order.
    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<f64>, ckpt::Error>;
}

impl AllGather for Comm {
    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<f64>, ckpt::Error> {
        self.all_gather(local)
    }
}

impl AllGather for mpi::topology::SimpleCommunicator {
    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<f64>, ckpt::Error> {
        use ckpt::mpi::traits::{Communicator, CommunicatorCollectives};
        let mut out = vec![0.0; local.len() * self.size() as usize];
        self.all_gather_into(local, &mut out[..]);
        Ok(out)
    }
}

/// The 2-D process grid's shape for `size` ranks: the most square `nprows` x `npcols`,
/// `nprows <= npcols`.
fn grid_dims(size: usize) -> [usize; 2] {
    let rows = (1..=size)
        .filter(|p| size % p == 0 && p * p <= size)
        .max()
        .unwrap_or(1);
    [rows, size / rows]
}

/// This rank's row and column communicators on the process grid, each holding a block of
/// `block` rows of the vectors (the last ones fewer).
struct GridTeam<'a, C> {
    row: &'a C,
    col: &'a C,
    na: usize,
    block: usize,
}

impl<'a, C> GridTeam<'a, C> {
    fn new(row: &'a C, col: &'a C, na: usize, block: usize) -> Self {
        GridTeam {
            row,
            col,
            na,
            block,
        }
    }
}

impl<C: AllGather> Team for GridTeam<'_, C> {
    type Error = ckpt::Error;

    fn sums<const N: usize>(&self, local: [f64; N]) -> Result<[f64; N], ckpt::Error> {
        // The ranks of a column hold every row block once.
        let all = self.col.all_gather_f64(&local)?;
        let mut total = [0.0; N];
        for part in all.chunks_exact(N) {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        Ok(total)
    }

    fn whole(&self, local: &[f64]) -> Result<Vec<f64>, ckpt::Error> {
        // All-gather needs blocks of one length: the short last blocks are padded.
        let mut padded = local.to_vec();
        padded.resize(self.block, 0.0);
        let mut all = self.col.all_gather_f64(&padded)?;
        all.truncate(self.na);
        Ok(all)
    }

    fn product(&self, a: &Rows, v: &[f64], out: &mut [f64]) -> Result<(), ckpt::Error> {
        let mut partial = vec![0.0; out.len()];
        a.mul(&self.whole(v)?, &mut partial);
        // Every rank of the row holds the same rows: partial products of one length.
        let all = self.row.all_gather_f64(&partial)?;
        out.fill(0.0);
        for part in all.chunks_exact(out.len().max(1)) {
            for (o, x) in out.iter_mut().zip(part) {
                *o += x;
            }
        }
        Ok(())
    }
}

/// This rank's part of the problem: its rows of the matrix, the block length, and the state
/// at the start.
struct Problem {
    a: Rows,
    block: usize,
    st: State,
}

/// Generates the block of the class's matrix of `rank` (row-major on the process grid
/// `dims`); rank 0 prints the header.
fn set_up(c: &Class, rank: usize, size: usize) -> Problem {
    let dims = grid_dims(size);
    let (i, j) = (rank / dims[1], rank % dims[1]);
    let block = c.na.div_ceil(dims[0]);
    let lo = (i * block).min(c.na);
    let cblock = c.na.div_ceil(dims[1]);
    let clo = (j * cblock).min(c.na);
    let a = matrix::generate(c.na, c.nonzer, c.shift, lo, (lo + block).min(c.na))
        .columns(clo, (clo + cblock).min(c.na));
    if rank == 0 {
        println!(
            "npb-cg: NAS CG class {}: size {}, {} nonzeros per random vector, {} iterations, \
             shift {}, {size} ranks on a {}x{} process grid",
            c.name, c.na, c.nonzer, c.niter, c.shift, dims[0], dims[1]
        );
    }
    let st = State {
        x: vec![1.0; a.len()],
        it: 0,
        zeta: 0.0,
        solve: Solve::default(),
    };
    Problem { a, block, st }
}

/// Ends an outer iteration over `team` (the solve done); rank 0 prints its line. Then sleeps
/// `--iter-ms`.
fn end_iteration<C: AllGather>(
    p: &mut Problem,
    c: &Class,
    o: &Opts,
    team: &GridTeam<'_, C>,
    rank: i32,
) -> Result<(), ckpt::Error> {
    let (zeta, rnorm) = p.st.solve.finish(&p.a, c.shift, &mut p.st.x, team)?;
    p.st.it += 1;
    p.st.zeta = zeta;
    if rank == 0 {
        println!("{:5}   ||r|| = {rnorm:.14e}   zeta = {zeta:.13}", p.st.it);
    }
    if o.iter_ms > 0 {
        std::thread::sleep(Duration::from_millis(o.iter_ms));
    }
    Ok(())
}

/// Polls; whether the job is to stop. A recoverable error (the epoch was not committed, the
/// same error on every rank, the previous epoch intact) is a warning and the job goes on.
fn poll(ck: &mut Checkpointer, st: &mut State, rank: i32) -> Result<bool, ckpt::Error> {
    match ck.poll(st) {
        Ok(q) => Ok(q.should_exit()),
        Err(e) if e.is_recoverable() => {
            warn(&format!("npb-cg: rank {rank}: warning: {e}; carrying on"));
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Rank 0 prints the times, zeta, its bits and the verdict (the last line).
fn report(c: &Class, st: &State, size: i32, setup: Duration, iterations: Duration) {
    println!(
        "npb-cg: class {} on {size} ranks: matrix in {:.3} s, iterations in {:.3} s",
        c.name,
        setup.as_secs_f64(),
        iterations.as_secs_f64()
    );
    println!("zeta = {:.13}", st.zeta);
    println!("result: {:016x}", st.zeta.to_bits());
    let verdict = if c.verifies(st.zeta) { "yes" } else { "no" };
    println!("verified: {verdict}");
}

fn run(world: &mpi::topology::SimpleCommunicator, o: Opts) -> Result<(), ckpt::Error> {
    use ckpt::mpi::traits::Communicator;
    let c = o.class;
    let cfg = Config::from_env()?;
    let mut ck = Checkpointer::new(world, cfg)?;
    let (rank, size) = (world.rank(), world.size());
    let t0 = Instant::now();
    let mut p = set_up(&c, rank as usize, size as usize);
    let (row, col) = grid_comms(&ck)?;
    let setup = t0.elapsed();
    if ck.restarting() {
        let r = ck.restore(&mut p.st)?;
        if rank == 0 {
            let inside = if p.st.solve.started() {
                format!(", {} CG iterations into the next", p.st.solve.done)
            } else {
                String::new()
            };
            println!(
                "npb-cg: restored epoch {} at iteration {}{inside}",
                r.epoch, p.st.it
            );
        }
    }
    let t1 = Instant::now();
    while p.st.it < c.niter {
        let block = p.block;
        if !p.st.solve.started() {
            p.st.solve
                .start(&p.st.x, &grid_team(&ck, (row, col), c.na, block)?)?;
        }
        while p.st.solve.done < CG_ITERATIONS {
            p.st.solve
                .step(&p.a, &grid_team(&ck, (row, col), c.na, block)?)?;
            if o.poll_cg && poll(&mut ck, &mut p.st, rank)? {
                return Ok(());
            }
        }
        end_iteration(
            &mut p,
            &c,
            &o,
            &grid_team(&ck, (row, col), c.na, block)?,
            rank,
        )?;
        if poll(&mut ck, &mut p.st, rank)? {
            return Ok(());
        }
    }
    if rank == 0 {
        report(&c, &p.st, size, setup, t1.elapsed());
    }
    Ok(())
}

/// The team of the grid's row and column communicators `rc`.
fn grid_team(
    ck: &Checkpointer,
    rc: (SubComm, SubComm),
    na: usize,
    block: usize,
) -> Result<GridTeam<'_, Comm>, ckpt::Error> {
    Ok(GridTeam::new(ck.sub(rc.0)?, ck.sub(rc.1)?, na, block))
}

/// The grid's row and column communicators (collective; the same order in every run).
fn grid_comms(ck: &Checkpointer) -> Result<(SubComm, SubComm), ckpt::Error> {
    let dims = grid_dims(ck.size() as usize).map(|d| d as i32);
    let grid = ck.comm().cart(&dims, &[false, false])?;
    let g = ck.sub(grid)?;
    let at = g.coords()?;
    Ok((g.split(at[0], at[1])?, g.split(at[1], at[0])?))
}

/// The `--plain` baseline: the same computation on plain rsmpi, without ckpt.
fn run_plain(world: &mpi::topology::SimpleCommunicator, o: Opts) -> Result<(), ckpt::Error> {
    use ckpt::mpi::topology::Color;
    use ckpt::mpi::traits::Communicator;
    let c = o.class;
    let (rank, size) = (world.rank(), world.size());
    let t0 = Instant::now();
    let mut p = set_up(&c, rank as usize, size as usize);
    let setup = t0.elapsed();
    let t1 = Instant::now();
    let dims = grid_dims(size as usize);
    let (i, j) = (rank / dims[1] as i32, rank % dims[1] as i32);
    let split = |color: i32, key: i32| {
        world
            .split_by_color_with_key(Color::with_value(color), key)
            .ok_or_else(|| ckpt::Error::Usage {
                rank,
                what: "MPI gave no communicator for a grid row or column".into(),
            })
    };
    let (row, col) = (split(i, j)?, split(j, i)?);
    let team = GridTeam::new(&row, &col, c.na, p.block);
    while p.st.it < c.niter {
        p.st.solve.start(&p.st.x, &team)?;
        while p.st.solve.done < CG_ITERATIONS {
            p.st.solve.step(&p.a, &team)?;
        }
        end_iteration(&mut p, &c, &o, &team, rank)?;
    }
    if rank == 0 {
        report(&c, &p.st, size, setup, t1.elapsed());
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
    let o = match parse_opts(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("npb-cg: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("npb-cg: MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    let result = if o.plain {
        run_plain(&world, o)
    } else {
        run(&world, o)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error names the rank. Abort rather than return: MPI_Finalize waits for every
            // rank, and the others may be blocked waiting for this one.
            eprintln!("npb-cg: {e}");
            use ckpt::mpi::traits::Communicator;
            world.abort(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One process, no MPI.
    struct Solo;

    use std::convert::Infallible;

    impl Team for Solo {
        type Error = Infallible;
        fn sums<const N: usize>(&self, local: [f64; N]) -> Result<[f64; N], Infallible> {
            Ok(local)
        }
        fn whole(&self, local: &[f64]) -> Result<Vec<f64>, Infallible> {
            Ok(local.to_vec())
        }
    }

    fn zeta(c: &Class) -> f64 {
        let a = matrix::generate(c.na, c.nonzer, c.shift, 0, c.na);
        let mut x = vec![1.0; c.na];
        let mut s = Solve::default();
        let mut zeta = 0.0;
        for _ in 0..c.niter {
            let Ok(()) = s.start(&x, &Solo);
            while s.done < CG_ITERATIONS {
                let Ok(()) = s.step(&a, &Solo);
            }
            let Ok((z, _)) = s.finish(&a, c.shift, &mut x, &Solo);
            zeta = z;
        }
        zeta
    }

    #[test]
    fn class_s_verifies_on_one_process() {
        let z = zeta(&CLASSES[0]);
        assert!(CLASSES[0].verifies(z), "zeta {z:.13}");
    }

    fn parse(args: &[&str]) -> Result<Opts, String> {
        parse_opts(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn options_are_parsed_and_bad_ones_named() {
        let o = parse(&["--class", "W", "--iter-ms", "7", "--plain"]).unwrap();
        assert_eq!(
            (o.class.name, o.iter_ms, o.plain, o.poll_cg),
            ('W', 7, true, false)
        );
        assert!(parse(&["--poll-cg"]).unwrap().poll_cg);
        assert_eq!(parse(&[]).unwrap().class.name, 'S');
        for (args, needle) in [
            (&["--class", "B"][..], "--class B: expected S, W or A"),
            (&["--class", "SW"][..], "--class SW: expected S, W or A"),
            (&["--class"][..], "--class needs a value"),
            (&["--iter-ms", "x"][..], "--iter-ms x: not a whole number"),
            (&["--nx", "1"][..], "unknown option --nx"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_wrong_zeta_does_not_verify() {
        let c = CLASSES[0];
        assert!(!c.verifies(c.zeta * (1.0 + 2.0 * EPSILON)));
        assert!(c.verifies(c.zeta * (1.0 + 0.5 * EPSILON)));
    }
}
