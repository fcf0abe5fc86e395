//! `cart2d`: explicit 2-D heat equation on an `nx` x `ny` grid cut into blocks over a 2-D
//! process grid (a `cart` communicator), with row and column sub-communicators. It prints a
//! checksum that is bit-identical however often the run was killed and restarted.
//!
//! ```text
//! ckpt run -n 4 --every 20 -- cart2d --nx 256 --ny 256 --steps 200
//! ```
//!
//! Options: `--nx N` `--ny N` (grid, default 256 x 256), `--steps N` (default 200),
//! `--step-ms MS` (sleep per step, for kill drills; default 0), `--late-comms` (create the
//! sub-communicators after `restore()` instead of before it).
//!
//! Each step, after its halo exchange on the grid communicator (neighbours from `shift`),
//! every rank sends its block's sum to the first rank of its row on the row communicator,
//! to the first rank of its column on the column communicator, and to the world rank of its
//! row's first rank on the root communicator, all with tag 0 (so the three streams share
//! tags and, on the first row, rank numbers), before `poll`: at a checkpoint, messages of
//! four communicators are in flight. Every message carries which communicator it was sent on
//! and its step, and the receiver checks both: a message received on another communicator
//! than its own, or twice, or out of order, stops the run with `crossed:` and exit code 3.
//! The column communicator also does an `all_reduce` (the column's maximum) every step.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ckpt::mpi;
use ckpt::{Checkpointer, Comm, Config, Protect, Reduce, Regions, Source, SubComm, TagSel};

const ALPHA: f64 = 0.2;
/// The tag of every row, column and root-communicator sum message.
const TAG_SUM: i32 = 0;
/// Halo tags, by direction of travel.
const TAG_HALO: [i32; 4] = [1, 2, 3, 4];
/// Which communicator a sum message was sent on.
const ON_ROW: f64 = 1.0;
const ON_COL: f64 = 2.0;
const ON_ROOT: f64 = 3.0;
/// Indices of `Heat::acc`.
const ROW: usize = 0;
const ROOT: usize = 1;
const COL: usize = 2;
const COL_MAX: usize = 3;

#[derive(Debug, Clone, Copy)]
struct Opts {
    nx: usize,
    ny: usize,
    steps: u64,
    step_ms: u64,
    late_comms: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        nx: 256,
        ny: 256,
        steps: 200,
        step_ms: 0,
        late_comms: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--late-comms" {
            o.late_comms = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag} {value}: not a whole number"))?;
        match flag.as_str() {
            "--nx" => o.nx = n as usize,
            "--ny" => o.ny = n as usize,
            "--steps" => o.steps = n,
            "--step-ms" => o.step_ms = n,
            _ => {
                return Err(format!(
                    "unknown option {flag} (use --nx --ny --steps --step-ms --late-comms)"
                ))
            }
        }
    }
    Ok(o)
}

/// The process grid's shape for `size` ranks: the most square `px` x `py`, `px <= py`.
fn grid_dims(size: i32) -> [i32; 2] {
    let px = (1..=size)
        .filter(|p| size % p == 0 && p * p <= size)
        .max()
        .unwrap_or(1);
    [px, size / px]
}

/// The communicators of the process grid (handles: kept across `poll`).
#[derive(Debug, Clone, Copy)]
struct Comms {
    grid: SubComm,
    row: SubComm,
    col: SubComm,
}

impl Comms {
    /// Creates them, collectively, in the same order on every rank (and in every run).
    fn create(ck: &Checkpointer) -> Result<Comms, ckpt::Error> {
        let grid = ck.comm().cart(&grid_dims(ck.size()), &[false, false])?;
        let g = ck.sub(grid)?;
        let c = g.coords()?;
        let row = g.split(c[0], c[1])?;
        let col = g.split(c[1], c[0])?;
        Ok(Comms { grid, row, col })
    }
}

/// One rank's block: `rows` x `cols` interior points with a halo all round, and the sums its
/// row, column and root-communicator messages brought in.
struct Heat {
    rows: usize,
    cols: usize,
    /// Global row and column of the block's first interior point.
    at: (usize, usize),
    size: (usize, usize),
    u: Vec<f64>,
    next: Vec<f64>,
    step: u64,
    /// Sums received by the first rank of a row (on the row and root communicators) or of a
    /// column ([`ROW`], [`ROOT`], [`COL`]), and the sum over steps of the column's maximum (an
    /// all_reduce on the column communicator, [`COL_MAX`]).
    acc: [f64; 4],
}

impl Protect for Heat {
    fn protect(&mut self, r: &mut Regions<'_>) {
        r.vec("u", &mut self.u);
        r.value("step", &mut self.step);
        r.value("acc", &mut self.acc);
    }
}

/// A run that found a message on the wrong communicator, twice, or out of order.
#[derive(Debug)]
struct Crossed(String);

#[derive(Debug)]
enum Fail {
    Ckpt(ckpt::Error),
    Crossed(Crossed),
}

impl From<ckpt::Error> for Fail {
    fn from(e: ckpt::Error) -> Fail {
        Fail::Ckpt(e)
    }
}

impl Heat {
    fn new(o: &Opts, coords: &[i32], dims: [i32; 2]) -> Heat {
        let span = |n: usize, c: i32, d: i32| {
            let a = n * c as usize / d as usize;
            (a, n * (c as usize + 1) / d as usize - a)
        };
        let (r0, rows) = span(o.ny, coords[0], dims[0]);
        let (c0, cols) = span(o.nx, coords[1], dims[1]);
        let len = (rows + 2) * (cols + 2);
        let mut h = Heat {
            rows,
            cols,
            at: (r0, c0),
            size: (o.ny, o.nx),
            u: vec![0.0; len],
            next: vec![0.0; len],
            step: 0,
            acc: [0.0; 4],
        };
        for i in 0..rows {
            for j in 0..cols {
                let (gy, gx) = (r0 + i, c0 + j);
                let (dx, dy) = (gx as f64 - o.nx as f64 * 0.3, gy as f64 - o.ny as f64 * 0.6);
                let r2 = (dx * dx + dy * dy) / (o.nx.min(o.ny) as f64 * 0.15).powi(2);
                let mut v = if r2 < 1.0 { 0.5 * (1.0 - r2) } else { 0.0 };
                if gy == 0 {
                    v = 1.0;
                }
                let w = cols + 2;
                h.u[(i + 1) * w + j + 1] = v;
            }
        }
        h
    }

    fn w(&self) -> usize {
        self.cols + 2
    }

    /// The halo lines: (the interior line sent, the halo line received) for each direction
    /// (up, down, left, right), as index lists into `u`.
    fn lines(&self, dir: usize) -> (Vec<usize>, Vec<usize>) {
        let (w, r, c) = (self.w(), self.rows, self.cols);
        let row = |i: usize| (1..=c).map(move |j| i * w + j).collect::<Vec<_>>();
        let col = |j: usize| (1..=r).map(move |i| i * w + j).collect::<Vec<_>>();
        match dir {
            0 => (row(1), row(0)),
            1 => (row(r), row(r + 1)),
            2 => (col(1), col(0)),
            _ => (col(c), col(c + 1)),
        }
    }

    /// Neighbour in direction `dir` (up, down, left, right) on the grid.
    fn neighbour(grid: &Comm, dir: usize) -> Result<Option<i32>, ckpt::Error> {
        let (before, after) = grid.shift(dir / 2, 1)?;
        Ok(if dir % 2 == 0 { before } else { after })
    }

    fn block_sum(&self) -> f64 {
        let w = self.w();
        (1..=self.rows)
            .flat_map(|i| (1..=self.cols).map(move |j| i * w + j))
            .map(|k| self.u[k])
            .sum()
    }

    /// Everything sent for the next step: halos, and the block's sum on three communicators.
    fn send(&self, ck: &Checkpointer, c: Comms) -> Result<(), ckpt::Error> {
        let grid = ck.sub(c.grid)?;
        for (dir, &tag) in TAG_HALO.iter().enumerate() {
            if let Some(n) = Self::neighbour(grid, dir)? {
                let line: Vec<f64> = self.lines(dir).0.iter().map(|&k| self.u[k]).collect();
                grid.send_vec(n, tag, line)?;
            }
        }
        let sum = self.block_sum();
        let step = self.step as f64;
        ck.sub(c.row)?.send(0, TAG_SUM, &[ON_ROW, step, sum])?;
        ck.sub(c.col)?.send(0, TAG_SUM, &[ON_COL, step, sum])?;
        let row_head = grid.rank_of(&[grid.coords()?[0], 0])?.unwrap_or(0);
        ck.comm().send(row_head, TAG_SUM, &[ON_ROOT, step, -sum])?;
        Ok(())
    }

    /// Receives what the neighbours and the row's and column's ranks sent after the previous
    /// step, checking each sum message's communicator and step.
    fn receive(&mut self, ck: &Checkpointer, c: Comms) -> Result<(), Fail> {
        let grid = ck.sub(c.grid)?;
        for dir in 0..4 {
            // The neighbour in direction `dir` sent its line travelling the other way.
            let from = dir ^ 1;
            if let Some(n) = Self::neighbour(grid, dir)? {
                let (line, _) =
                    grid.recv_vec::<f64>(Source::Rank(n), TagSel::Tag(TAG_HALO[from]))?;
                for (k, v) in self.lines(dir).1.into_iter().zip(line) {
                    self.u[k] = v;
                }
            }
        }
        let step = self.step as f64;
        let row = ck.sub(c.row)?;
        if row.rank() == 0 {
            self.acc[ROW] += gather_sums(row, ON_ROW, step, (0..row.size()).collect())?;
            // The same process on the root communicator: the ranks of this row, by job rank.
            let members = (0..row.size())
                .map(|r| {
                    grid.rank_of(&[grid.coords()?[0], r])
                        .map(|x| x.unwrap_or(0))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.acc[ROOT] += gather_sums(ck.comm(), ON_ROOT, step, members)?;
        }
        let col = ck.sub(c.col)?;
        if col.rank() == 0 {
            self.acc[COL] += gather_sums(col, ON_COL, step, (0..col.size()).collect())?;
        }
        Ok(())
    }

    fn step(&mut self, ck: &Checkpointer, c: Comms) -> Result<(), Fail> {
        self.receive(ck, c)?;
        let w = self.w();
        self.next.copy_from_slice(&self.u);
        for i in 1..=self.rows {
            let gy = self.at.0 + i - 1;
            if gy == 0 || gy == self.size.0 - 1 {
                continue;
            }
            for j in 1..=self.cols {
                let gx = self.at.1 + j - 1;
                if gx == 0 || gx == self.size.1 - 1 {
                    continue;
                }
                let k = i * w + j;
                let lap =
                    self.u[k - w] + self.u[k + w] + self.u[k - 1] + self.u[k + 1] - 4.0 * self.u[k];
                self.next[k] = self.u[k] + ALPHA * lap;
            }
        }
        std::mem::swap(&mut self.u, &mut self.next);
        let local = self.u.iter().cloned().fold(f64::MIN, f64::max);
        let mut max = [0.0];
        ck.sub(c.col)?.all_reduce(&[local], &mut max, Reduce::Max)?;
        self.acc[COL_MAX] += max[0];
        self.step += 1;
        Ok(())
    }

    /// CRC-32C of the interior's bits and of the accumulators.
    fn digest(&self) -> u32 {
        let w = self.w();
        let mut bytes = Vec::new();
        for i in 1..=self.rows {
            let line = &self.u[i * w + 1..i * w + 1 + self.cols];
            bytes.extend_from_slice(ckpt::bytemuck::cast_slice(line));
        }
        for a in self.acc {
            bytes.extend_from_slice(&a.to_le_bytes());
        }
        crc32c::crc32c(&bytes)
    }
}

/// Receives one sum message from each of `from` (in order) on `comm`, each of which must say
/// it was sent on `on` at step `step`; returns their sum.
fn gather_sums(comm: &Comm, on: f64, step: f64, from: Vec<i32>) -> Result<f64, Fail> {
    let mut total = 0.0;
    for r in from {
        let mut m = [0.0f64; 3];
        comm.recv_into(Source::Rank(r), TagSel::Tag(TAG_SUM), &mut m)?;
        if m[0] != on || m[1] != step {
            return Err(Fail::Crossed(Crossed(format!(
                "communicator #{} received from rank {r} a message sent on {} at step {}, \
                 expected one sent on {} at step {step}",
                comm.index(),
                name(m[0]),
                m[1],
                name(on)
            ))));
        }
        total += m[2];
    }
    Ok(total)
}

fn name(on: f64) -> &'static str {
    match on as i32 {
        1 => "a row communicator",
        2 => "a column communicator",
        3 => "the root communicator",
        _ => "no communicator",
    }
}

fn run(world: &mpi::topology::SimpleCommunicator, o: Opts) -> Result<(), Fail> {
    let cfg = Config::from_env()?;
    let mut ck = Checkpointer::new(world, cfg)?;
    let early = if o.late_comms {
        None
    } else {
        Some(Comms::create(&ck)?)
    };
    let dims = grid_dims(ck.size());
    let coords = {
        let g = ck.comm().rank();
        [g / dims[1], g % dims[1]]
    };
    let mut heat = Heat::new(&o, &coords, dims);
    let t0 = Instant::now();
    let restarting = ck.restarting();
    if restarting {
        let r = ck.restore(&mut heat)?;
        if ck.rank() == 0 {
            println!("cart2d: restored epoch {} at step {}", r.epoch, heat.step);
        }
    }
    let comms = match early {
        Some(c) => c,
        None => Comms::create(&ck)?,
    };
    if ck.sub(comms.grid)?.coords()? != coords {
        return Err(Fail::Crossed(Crossed(
            "the grid's coordinates are not row-major".into(),
        )));
    }
    if !restarting && heat.step < o.steps {
        heat.send(&ck, comms)?;
    }
    while heat.step < o.steps {
        heat.step(&ck, comms)?;
        if heat.step < o.steps {
            heat.send(&ck, comms)?;
        }
        if o.step_ms > 0 {
            std::thread::sleep(Duration::from_millis(o.step_ms));
        }
        match ck.poll(&mut heat) {
            Ok(p) if p.should_exit() => return Ok(()),
            Ok(_) => {}
            Err(e) if e.is_recoverable() => {
                eprintln!("cart2d: rank {}: warning: {e}; carrying on", ck.rank())
            }
            Err(e) => return Err(e.into()),
        }
    }
    let crcs = ck.comm().gather(0, &[heat.digest()])?;
    if let Some(crcs) = crcs {
        println!(
            "cart2d: {}x{} grid, {} steps on a {}x{} process grid in {:.2} s",
            o.nx,
            o.ny,
            o.steps,
            dims[0],
            dims[1],
            t0.elapsed().as_secs_f64()
        );
        let bytes: &[u8] = ckpt::bytemuck::cast_slice(&crcs);
        println!("checksum: {:08x}", crc32c::crc32c(bytes));
    }
    Ok(())
}

fn main() -> ExitCode {
    use ckpt::mpi::traits::Communicator;
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cart2d: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("cart2d: MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    match run(&world, o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Ckpt(e)) => {
            eprintln!("cart2d: {e}");
            world.abort(1)
        }
        Err(Fail::Crossed(Crossed(m))) => {
            eprintln!("crossed: rank {}: {m}", world.rank());
            world.abort(3)
        }
    }
}
