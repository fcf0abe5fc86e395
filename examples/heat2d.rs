//! `heat2d`: explicit 2-D heat equation on an `nx` x `ny` grid, split into horizontal strips
//! over the ranks, with a halo exchange every step. It checkpoints through ckpt and prints a
//! checksum of the final field that is bit-identical however often the run was killed and
//! restarted.
//!
//! ```text
//! ckpt run -n 4 --every 50 -- heat2d --nx 1024 --ny 1024 --steps 400
//! ```
//!
//! Options: `--nx N` `--ny N` (grid, default 1024 x 1024), `--steps N` (default 400),
//! `--step-ms MS` (sleep per step, to slow the run down for kill drills; default 0),
//! `--slow-after STEP --slow-ms MS` (also sleep MS per step after step STEP: a fast set-up
//! phase followed by slow steps, for the agreement latency test),
//! `--stall RANK:STEP` (that rank stops polling after that step: a misuse drill),
//! `--forget-state` (deliberately broken: a heat source whose strength counts the steps this
//! process ran, kept outside the registered regions, so a restarted run ends differently; the
//! drill test's application that `ckpt drill` must report as differing).
//!
//! Each rank sends its boundary rows for the next step *before* `poll`, so checkpoints happen
//! with halo messages in flight; the library drains them into the snapshot.
//!
//! `--early-recv` turns it around: each rank posts the receives of the next step's halos
//! (`irecv`) *before* `poll` and keeps their handles in its checkpointed state, and sends its
//! own rows after `poll`. So at every checkpoint receives are pending for messages not sent
//! yet: the snapshot records them, a restart posts them again, and the restored handles
//! complete with the rows sent after the restart. The result is the same bits as without the
//! option.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ckpt::mpi;
use ckpt::{Checkpointer, Comm, Config, Protect, RecvRequest, Regions, Source, TagSel};

/// Diffusion coefficient times dt/dx^2; below 0.25 for stability.
const ALPHA: f64 = 0.2;
const TAG_UP: i32 = 1;
const TAG_DOWN: i32 = 2;

#[derive(Debug, Clone, Copy)]
struct Opts {
    nx: usize,
    ny: usize,
    steps: u64,
    step_ms: u64,
    /// Steps after this one also sleep `slow_ms`.
    slow_after: u64,
    slow_ms: u64,
    /// `(rank, step)`: that rank stops polling after that step (misuse drill).
    stall: Option<(u64, u64)>,
    /// Keep part of the state outside the registered regions (a broken application).
    forget_state: bool,
    /// Post the next step's halo receives before `poll`, send after it.
    early_recv: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        nx: 1024,
        ny: 1024,
        steps: 400,
        step_ms: 0,
        slow_after: 0,
        slow_ms: 0,
        stall: None,
        forget_state: false,
        early_recv: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--forget-state" {
            o.forget_state = true;
            continue;
        }
        if flag == "--early-recv" {
            o.early_recv = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--stall" {
            let (r, at) = value
                .split_once(':')
                .and_then(|(r, a)| Some((r.parse().ok()?, a.parse().ok()?)))
                .ok_or_else(|| format!("--stall {value}: expected RANK:STEP"))?;
            o.stall = Some((r, at));
            continue;
        }
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag} {value}: not a whole number"))?;
        match flag.as_str() {
            "--nx" => o.nx = n as usize,
            "--ny" => o.ny = n as usize,
            "--steps" => o.steps = n,
            "--step-ms" => o.step_ms = n,
            "--slow-after" => o.slow_after = n,
            "--slow-ms" => o.slow_ms = n,
            _ => {
                return Err(format!(
                    "unknown option {flag} (use --nx --ny --steps --step-ms --slow-after \
                     --slow-ms --stall --forget-state --early-recv)"
                ))
            }
        }
    }
    if o.nx < 3 || o.ny < 3 {
        return Err("the grid needs at least 3 x 3 points".into());
    }
    Ok(o)
}

/// One rank's strip: rows `row0 .. row0 + rows` of the global grid plus a halo row above and
/// below. Only `u` and `step` are state; `next` is scratch, rebuilt every step.
struct Heat {
    nx: usize,
    rows: usize,
    row0: usize,
    ny: usize,
    u: Vec<f64>,
    next: Vec<f64>,
    step: u64,
    /// Steps run by this process: state the broken `--forget-state` mode uses but does not
    /// register, so a restart resets it.
    forgotten: u64,
    /// `--early-recv`: the next step's halo receives, posted before `poll` (from the rank
    /// below, from the rank above). State: a restart completes them.
    early: Option<[Option<RecvRequest<f64>>; 2]>,
}

impl Protect for Heat {
    fn protect(&mut self, r: &mut Regions<'_>) {
        r.vec("u", &mut self.u);
        r.value("step", &mut self.step);
        if let Some(early) = &mut self.early {
            r.value("halo_requests", early);
        }
    }
}

impl Heat {
    fn new(o: &Opts, rank: usize, size: usize) -> Heat {
        let row0 = o.ny * rank / size;
        let rows = o.ny * (rank + 1) / size - row0;
        let mut h = Heat {
            nx: o.nx,
            rows,
            row0,
            ny: o.ny,
            u: vec![0.0; (rows + 2) * o.nx],
            next: vec![0.0; (rows + 2) * o.nx],
            step: 0,
            forgotten: 0,
            early: o.early_recv.then_some([None, None]),
        };
        // Initial field: a hot top edge (fixed boundary) and a warm off-centre disc.
        for i in 0..rows {
            let gy = row0 + i;
            for j in 0..o.nx {
                let (dx, dy) = (j as f64 - o.nx as f64 * 0.3, gy as f64 - o.ny as f64 * 0.6);
                let r2 = (dx * dx + dy * dy) / (o.nx.min(o.ny) as f64 * 0.15).powi(2);
                let mut v = if r2 < 1.0 { 0.5 * (1.0 - r2) } else { 0.0 };
                if gy == 0 {
                    v = 1.0;
                }
                h.u[(i + 1) * o.nx + j] = v;
            }
        }
        h
    }

    fn neighbours(comm: &Comm) -> (Option<i32>, Option<i32>) {
        let (rank, size) = (comm.rank(), comm.size());
        (
            (rank > 0).then(|| rank - 1),
            (rank + 1 < size).then(|| rank + 1),
        )
    }

    /// Sends this strip's first interior row up and its last one down, for the next step.
    /// Called before `poll`, so at a checkpoint these messages are in flight: the library
    /// drains them into the receivers' snapshots.
    fn send_halos(&self, comm: &Comm) -> Result<(), ckpt::Error> {
        let (up, down) = Self::neighbours(comm);
        let nx = self.nx;
        if let Some(up) = up {
            comm.send(up, TAG_UP, &self.u[nx..2 * nx])?;
        }
        if let Some(down) = down {
            comm.send(
                down,
                TAG_DOWN,
                &self.u[self.rows * nx..(self.rows + 1) * nx],
            )?;
        }
        Ok(())
    }

    /// `--early-recv`: posts the receives of the next step's halo rows (before `poll`).
    fn post_halos(&mut self, comm: &Comm) -> Result<(), ckpt::Error> {
        let (up, down) = Self::neighbours(comm);
        let nx = self.nx;
        let below = down
            .map(|d| comm.irecv(Source::Rank(d), TagSel::Tag(TAG_UP), nx))
            .transpose()?;
        let above = up
            .map(|u| comm.irecv(Source::Rank(u), TagSel::Tag(TAG_DOWN), nx))
            .transpose()?;
        self.early = Some([below, above]);
        Ok(())
    }

    /// Receives the halo rows sent by the neighbours at the end of their previous step (or,
    /// with `--early-recv`, completes the receives posted before `poll`).
    fn recv_halos(&mut self, comm: &Comm) -> Result<(), ckpt::Error> {
        let (up, down) = Self::neighbours(comm);
        let nx = self.nx;
        let rows = self.rows;
        if let Some([below, above]) = &mut self.early {
            let (below, above) = (below.take(), above.take());
            if let Some(req) = below {
                let (row, _) = comm.wait(req)?;
                self.u[(rows + 1) * nx..(rows + 2) * nx].copy_from_slice(&row);
            }
            if let Some(req) = above {
                let (row, _) = comm.wait(req)?;
                self.u[..nx].copy_from_slice(&row);
            }
            return Ok(());
        }
        if let Some(down) = down {
            let halo = &mut self.u[(rows + 1) * nx..(rows + 2) * nx];
            comm.recv_into(Source::Rank(down), TagSel::Tag(TAG_UP), halo)?;
        }
        if let Some(up) = up {
            comm.recv_into(Source::Rank(up), TagSel::Tag(TAG_DOWN), &mut self.u[..nx])?;
        }
        Ok(())
    }

    /// One explicit step on the interior; the global boundary stays fixed. The halos were
    /// sent by the neighbours after their previous step.
    fn step(&mut self, comm: &Comm) -> Result<(), ckpt::Error> {
        self.recv_halos(comm)?;
        let nx = self.nx;
        self.next.copy_from_slice(&self.u);
        for i in 1..=self.rows {
            let gy = self.row0 + i - 1;
            if gy == 0 || gy == self.ny - 1 {
                continue;
            }
            for j in 1..nx - 1 {
                let c = i * nx + j;
                let lap = self.u[c - nx] + self.u[c + nx] + self.u[c - 1] + self.u[c + 1]
                    - 4.0 * self.u[c];
                self.next[c] = self.u[c] + ALPHA * lap;
            }
        }
        std::mem::swap(&mut self.u, &mut self.next);
        self.step += 1;
        Ok(())
    }

    /// CRC-32C of this rank's interior rows (the bits, not a rounded value) and their sum.
    fn digest(&self) -> (u32, f64) {
        let interior = &self.u[self.nx..(self.rows + 1) * self.nx];
        let bytes: &[u8] = ckpt::bytemuck::cast_slice(interior);
        (crc32c::crc32c(bytes), interior.iter().sum())
    }
}

fn run(world: &mpi::topology::SimpleCommunicator, o: Opts) -> Result<(), ckpt::Error> {
    use ckpt::mpi::traits::Communicator;
    let cfg = Config::from_env()?;
    let (rank, size) = (world.rank(), world.size());
    // The state is set up before the checkpointer: a migration's relaunch, started ahead and
    // held in `Checkpointer::new`, then does this while the job still runs.
    let mut heat = Heat::new(&o, rank as usize, size as usize);
    let mut ck = Checkpointer::new(world, cfg)?;
    let t0 = Instant::now();
    if ck.restarting() {
        // The halos for the next step were in flight at the checkpoint; they come back from
        // the snapshot's message log, so they are not sent again.
        let r = ck.restore(&mut heat)?;
        if rank == 0 {
            println!("heat2d: restored epoch {} at step {}", r.epoch, heat.step);
        }
    } else if heat.step < o.steps {
        if o.early_recv {
            heat.post_halos(ck.comm())?;
        } else {
            heat.send_halos(ck.comm())?;
        }
    }
    while heat.step < o.steps {
        if o.early_recv {
            // The receives were posted before the last poll (or restored with the state).
            heat.send_halos(ck.comm())?;
        }
        heat.step(ck.comm())?;
        if o.forget_state {
            // Broken on purpose: a source term from a counter no checkpoint holds.
            heat.forgotten += 1;
            heat.u[heat.nx + 1] += 1e-6 * heat.forgotten as f64;
        }
        if heat.step < o.steps {
            if o.early_recv {
                heat.post_halos(ck.comm())?;
            } else {
                heat.send_halos(ck.comm())?;
            }
        }
        let slow = if heat.step > o.slow_after {
            o.slow_ms
        } else {
            0
        };
        if o.step_ms + slow > 0 {
            std::thread::sleep(Duration::from_millis(o.step_ms + slow));
        }
        if o.stall
            .is_some_and(|(r, at)| r == rank as u64 && at == heat.step)
        {
            // Misbehave on purpose (for the stall test): stop polling for a long time.
            std::thread::sleep(Duration::from_secs(3600));
        }
        match ck.poll(&mut heat) {
            Ok(p) if p.should_exit() => return Ok(()),
            Ok(_) => {}
            // The epoch was not committed, but every rank got this same error and the previous
            // epoch is intact: the job can go on, and the next checkpoint is tried as usual.
            Err(e) if e.is_recoverable() => {
                warn(&format!("heat2d: rank {rank}: warning: {e}; carrying on"))
            }
            Err(e) => return Err(e),
        }
    }
    let (crc, sum) = heat.digest();
    let crcs = ck.comm().gather(0, &[crc])?;
    let sums = ck.comm().gather(0, &[sum])?;
    if let (Some(crcs), Some(sums)) = (crcs, sums) {
        let bytes: &[u8] = ckpt::bytemuck::cast_slice(&crcs);
        let total: f64 = sums.iter().sum();
        println!(
            "heat2d: {}x{} grid, {} steps on {} ranks in {:.2} s",
            o.nx,
            o.ny,
            o.steps,
            size,
            t0.elapsed().as_secs_f64()
        );
        println!(
            "heat2d: mean temperature {:.15e}",
            total / (o.nx * o.ny) as f64
        );
        println!("checksum: {:08x}", crc32c::crc32c(bytes));
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
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("heat2d: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("heat2d: MPI was already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    match run(&world, o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error names the rank. Abort rather than return: MPI_Finalize waits for every
            // rank, and the others may be blocked waiting for this one.
            eprintln!("heat2d: {e}");
            use ckpt::mpi::traits::Communicator;
            world.abort(1)
        }
    }
}
