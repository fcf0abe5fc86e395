//! `ckpt-bench`: measures ckpt against the limits of the same machine in the same run.
//!
//! Run under the launcher, e.g. `ckpt run -n 2 --every off -- ckpt-bench --mib 256 --reps 5`.
//! Each rank holds `--mib` MiB of state; each figure is the median of `--reps` runs. Reported, as aggregate GB/s over all ranks:
//! - plain `write` + `fsync` of the same bytes to the same node-local directory (the limit),
//!   then a checkpoint (write, fsync, rename, vote, manifest);
//! - plain `read` of a file of the same size, then a restore (read + CRC check into memory),
//!   both after dropping the files from the page cache (`posix_fadvise(DONTNEED)`), so both
//!   read from the device when the device is the bottleneck;
//! - the cost of `poll` when nothing is due (the pipelined non-blocking agreement round about
//!   every half millisecond or every `MAX_STRIDE` polls by default, or at every poll), next to
//!   one `MPI_Allreduce`;
//! - quiescence (wait for all ranks, count exchange, drain of in-flight messages) and a whole
//!   checkpoint of a tiny state, next to the same `MPI_Allreduce`.
//!
//! The levels benchmark (`ckpt bench --levels`, which runs the modes below as separate launches
//! on one emulated node per rank; each time is the slowest rank's):
//! - `--mode levels`: for each level policy (L1 only, + L2, + L3, + L4, all four) the time the
//!   application is blocked in `checkpoint()`, then the time from the commit until each
//!   background level is complete on every rank (`level_complete` in the event log, seen by
//!   rank 0 between polls), while every rank polls with `--step-us` of compute (or sleep,
//!   `--compute sleep`) between polls; next to plain write+fsync of the bytes each level
//!   writes (the state once for L2 or L4, one rank's parity for L3, all of them together).
//! - `--mode restart --from L1|L2|L3|L4`: a cold restore of the newest epoch (page cache
//!   dropped) next to a cold plain read of the same bytes, checking the `recovered` events
//!   name the level and the state is the one written.
//! - `--mode write`: one checkpoint under `--l2-every`/`--l3-every`/`--l4-every` (L3 over one
//!   XOR group of all ranks), for the restarts from L3 and L4.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ckpt::events::{self, Event};
use ckpt::levels::LevelPolicy;
use ckpt::mpi;
use ckpt::mpi::collective::SystemOperation;
use ckpt::mpi::point_to_point::Source as _;
use ckpt::mpi::topology::SimpleCommunicator;
use ckpt::mpi::traits::*;
use ckpt::storage::durable;
use ckpt::{Checkpointer, Config, Interval, Level, Protect, Regions, Source, TagSel};

struct State {
    data: Vec<u8>,
}

impl Protect for State {
    fn protect(&mut self, r: &mut Regions<'_>) {
        r.vec("data", &mut self.data);
    }
}

struct Opts {
    mib: usize,
    polls: u64,
    reps: usize,
    mode: Mode,
    /// `--mode levels`: microseconds of compute between two polls while the levels run.
    step_us: u64,
    /// `--mode levels`: sleep for the step instead of computing (`--compute sleep`).
    idle: bool,
    /// `--mode restart`: which launch this is (1 to `reps`).
    sample: usize,
    /// `--mode write`: the level policy of the one epoch written.
    l2_every: u64,
    l3_every: u64,
    l4_every: u64,
}

/// What the run measures.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Checkpoint and restore bandwidth, poll, quiescence, point-to-point (tables 1-3).
    Classic,
    /// Blocking time per level policy and the time until each background level is complete.
    Levels,
    /// One checkpoint with the policy of `--l2-every`/`--l3-every`/`--l4-every`, its levels
    /// completed.
    Write,
    /// A cold restart of the job, from the level given (checked against the `recovered`
    /// events), next to a cold plain read.
    Restart(Level),
}

fn parse_mode(v: &str, expect: Option<Level>) -> Result<Mode, String> {
    Ok(match v {
        "classic" => Mode::Classic,
        "levels" => Mode::Levels,
        "write" => Mode::Write,
        "restart" => Mode::Restart(expect.unwrap_or(Level::Local)),
        _ => return Err(format!("--mode {v}: use classic, levels, write or restart")),
    })
}

fn parse_level(v: &str) -> Result<Level, String> {
    Ok(match v {
        "L1" => Level::Local,
        "L2" => Level::Partner,
        "L3" => Level::Parity,
        "L4" => Level::Pfs,
        _ => return Err(format!("--from {v}: use L1, L2, L3 or L4")),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        mib: 256,
        polls: 1_000_000,
        reps: 3,
        mode: Mode::Classic,
        step_us: 1000,
        idle: false,
        sample: 1,
        l2_every: 1,
        l3_every: 1,
        l4_every: 1,
    };
    let (mut mode, mut from) = ("classic".to_string(), None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || -> Result<u64, String> {
            v.parse().map_err(|_| format!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--mib" => o.mib = num()? as usize,
            "--polls" => o.polls = num()?.max(1),
            "--reps" => o.reps = num()?.max(1) as usize,
            "--step-us" => o.step_us = num()?,
            "--sample" => o.sample = num()? as usize,
            "--l2-every" => o.l2_every = num()?,
            "--l3-every" => o.l3_every = num()?,
            "--l4-every" => o.l4_every = num()?,
            "--mode" => mode = v,
            "--from" => from = Some(parse_level(&v)?),
            "--compute" => {
                o.idle = match v.as_str() {
                    "spin" => false,
                    "sleep" => true,
                    _ => return Err(format!("--compute {v}: use spin or sleep")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown option {flag} (use --mib, --polls, --reps, --mode, --from, \
                     --step-us, --compute, --sample, --l2-every, --l3-every, --l4-every)"
                ))
            }
        }
    }
    o.mode = parse_mode(&mode, from)?;
    Ok(o)
}

/// Rank `rank`'s state of `bytes` bytes (the same in every mode, so a restart can check it).
fn pattern(bytes: usize, rank: i32) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9) as u8 ^ rank as u8)
        .collect()
}

/// The job's own node-local directory, where the baselines' files go beside its checkpoints
/// (the base may be shared with other users).
fn own_dir(cfg: &Config, rank: i32) -> Result<PathBuf, ckpt::Error> {
    durable::set_access(cfg.access);
    let own = cfg.local_dir.join(&cfg.job_id);
    durable::ensure_dir(&own, "node-local directory").map_err(|source| ckpt::Error::Io {
        rank,
        op: "create",
        path: own.clone(),
        source,
    })?;
    Ok(own)
}

/// Slowest rank's time for `f`, started together after a barrier.
fn timed(world: &SimpleCommunicator, f: impl FnOnce()) -> f64 {
    world.barrier();
    let t0 = Instant::now();
    f();
    let mine = t0.elapsed().as_secs_f64();
    let mut max = 0.0f64;
    world.all_reduce_into(&mine, &mut max, SystemOperation::max());
    max
}

/// Plain `write` + `fsync` of `bytes` to `path`: the limit a checkpoint is compared with.
fn write_fsync(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Like every file ckpt writes: never through a link, private.
    let mut f = durable::create_regular(path, true)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes `bytes` durably the way a checkpoint must: temp file, fsync, rename, fsync dir.
fn durable_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    durable::write_atomic(path, bytes)
}

fn drop_cache(path: &Path) {
    if let Ok(f) = durable::open_regular(path) {
        // SAFETY: posix_fadvise only takes an open descriptor and a range; it touches no memory
        // of ours. DONTNEED on clean (fsync'd) pages evicts them from the page cache.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
}

fn run(world: &SimpleCommunicator, o: &Opts) -> Result<(), ckpt::Error> {
    let cfg = Config::from_env()?.every(Interval::Off);
    let (rank, size) = (world.rank(), world.size());
    let bytes = o.mib << 20;
    let total = (bytes * size as usize) as f64;
    let gbs = |secs: f64| total / secs / 1e9;
    let mut state = State {
        data: pattern(bytes, rank),
    };
    let own = own_dir(&cfg, rank)?;
    let plain = own.join(format!("bench-plain-{rank}"));
    let io = |op: &'static str| {
        let path = plain.clone();
        move |source| ckpt::Error::Io {
            rank,
            op,
            path,
            source,
        }
    };

    // Each repetition: plain write + fsync, a checkpoint of the same bytes, then a cold plain
    // read and a cold restore. Medians are reported.
    let (mut w_plain, mut w_ckpt, mut r_plain, mut r_ckpt) = (vec![], vec![], vec![], vec![]);
    let mut w_new = vec![];
    let mut ck = Checkpointer::new(world, cfg.clone())?;
    for rep in 0..o.reps {
        // Two plain baselines: a new file each time (what writing a fresh checkpoint file
        // costs the file system) and rewriting one file (blocks already allocated). The order
        // of the three writes rotates, so none always follows the same one.
        let fresh = own.join(format!("bench-new-{rank}-{rep}"));
        let mut epoch = Ok(0);
        for which in 0..3 {
            let mut result = Ok(());
            match (rep + which) % 3 {
                0 => w_new.push(timed(world, || result = write_fsync(&fresh, &state.data))),
                1 => w_plain.push(timed(world, || result = write_fsync(&plain, &state.data))),
                _ => w_ckpt.push(timed(world, || {
                    epoch = ck.checkpoint(&mut state).map(|s| s.epoch)
                })),
            }
            result.map_err(io("write"))?;
        }
        let _ = std::fs::remove_file(&fresh);
        let m = ckpt::manifest::load(&cfg.job_dir, epoch?)?;
        drop_cache(&plain);
        drop_cache(&cfg.local_dir.join(&m.ranks[rank as usize].file));
        let mut buf = vec![0u8; bytes];
        let mut result = Ok(());
        r_plain.push(timed(world, || {
            result = durable::open_regular(&plain)
                .and_then(|mut f| f.read_exact(&mut buf))
                .map_err(io("read"));
        }));
        result?;
        drop(buf);
        let mut fresh = State { data: Vec::new() };
        let mut restarted = Checkpointer::new(world, cfg.clone())?;
        let mut restored = Ok(());
        r_ckpt.push(timed(world, || {
            restored = restarted.restore(&mut fresh).map(|_| ())
        }));
        restored?;
        assert!(fresh.data == state.data, "restored state differs");
    }
    let _ = std::fs::remove_file(&plain);
    if rank == 0 && std::env::var_os("CKPT_BENCH_SAMPLES").is_some() {
        println!(
            "  samples (s): new file    {w_new:.3?}\n               rewrite     {w_plain:.3?}"
        );
        println!("               checkpoint  {w_ckpt:.3?}");
        println!(
            "               read        {r_plain:.3?}\n               restore     {r_ckpt:.3?}"
        );
    }
    let t_new = median(w_new);
    let (t_plain_w, t_ckpt, t_plain_r, t_restore) = (
        median(w_plain),
        median(w_ckpt),
        median(r_plain),
        median(r_ckpt),
    );

    // Poll cost with nothing due.
    let poll_ns = |ck: &mut Checkpointer, state: &mut State| -> Result<f64, ckpt::Error> {
        world.barrier();
        let t0 = Instant::now();
        for _ in 0..o.polls {
            let _ = ck.poll(state)?;
        }
        let mine = t0.elapsed().as_secs_f64() * 1e9 / o.polls as f64;
        let mut max = 0.0f64;
        world.all_reduce_into(&mine, &mut max, SystemOperation::max());
        Ok(max)
    };
    // Default configuration (adaptive: a round about every half millisecond, here every
    // MAX_STRIDE polls since a poll takes nanoseconds), then a round at every poll.
    let mut ck_default = Checkpointer::new(world, cfg.clone())?;
    let p_default = poll_ns(&mut ck_default, &mut state)?;
    let mut every = cfg.clone();
    every.agree = ckpt::protocol::agree::Stride::Fixed(1);
    let mut ck_stride1 = Checkpointer::new(world, every)?;
    let p_stride1 = poll_ns(&mut ck_stride1, &mut state)?;
    let n_ar = 10_000u32;
    let t_ar = timed(world, || {
        let mut x = 0u32;
        for i in 0..n_ar {
            world.all_reduce_into(&i, &mut x, SystemOperation::max());
        }
    }) * 1e9
        / n_ar as f64;

    // The protocol with (almost) no data: a 4-KiB state, 4 messages of 1 KiB in flight to
    // the right neighbour at every checkpoint. Quiesce is the wait + count exchange + drain.
    let mut tiny = State {
        data: vec![7u8; 4096],
    };
    let mut ck_small = Checkpointer::new(world, cfg.clone())?;
    let (right, left) = ((rank + 1) % size, (rank + size - 1) % size);
    let (mut q, mut q0, mut c) = (vec![], vec![], vec![]);
    for rep in 0..2 * o.reps.max(5) {
        // Odd runs with nothing in flight, even runs with 4 messages per rank.
        let in_flight = if rep % 2 == 0 { 4 } else { 0 };
        for k in 0..in_flight {
            ck_small.comm().send(right, k, &[k as u8; 1024])?;
        }
        let mut stats = Ok(None);
        let t = timed(world, || stats = ck_small.checkpoint(&mut tiny).map(Some));
        let quiesce = stats?.map_or(0.0, |s| s.quiesce_secs);
        let mut max = 0.0f64;
        world.all_reduce_into(&quiesce, &mut max, SystemOperation::max());
        if in_flight > 0 {
            q.push(max);
            c.push(t);
        } else {
            q0.push(max);
        }
        let mut buf = [0u8; 1024];
        for k in 0..in_flight {
            ck_small
                .comm()
                .recv_into(Source::Rank(left), TagSel::Tag(k), &mut buf)?;
        }
    }
    let t_quiesce0 = median(q0) * 1e6;
    let (t_quiesce, t_small) = (median(q) * 1e6, median(c) * 1e6);
    // The floor for a durable small checkpoint: each rank writes 4 KiB to a temporary file,
    // fsyncs it, renames it and fsyncs the directory, then rank 0 does the same for a manifest.
    let small_plain = own.join(format!("bench-small-{rank}"));
    let mut f = vec![];
    for _ in 0..o.reps.max(5) {
        let mut result = Ok(());
        f.push(timed(world, || {
            result = durable_write(&small_plain, &tiny.data).map_err(io("write"));
            if result.is_ok() && rank == 0 {
                result = durable_write(&cfg.job_dir.join("bench-manifest"), &[0u8; 300])
                    .map_err(io("write"));
            }
        }));
        result?;
    }
    let _ = std::fs::remove_file(&small_plain);
    let _ = std::fs::remove_file(cfg.job_dir.join("bench-manifest"));
    let t_small_plain = median(f) * 1e6;
    let p2p = p2p_figures(world, &mut ck_small, o)?;

    if rank == 0 {
        println!(
            "ckpt-bench: {size} ranks x {} MiB, median of {} runs, local dir {}",
            o.mib,
            o.reps,
            cfg.local_dir.display()
        );
        println!(
            "  write+fsync, plain, new file     {:7.3} s  {:6.2} GB/s",
            t_new,
            gbs(t_new)
        );
        println!(
            "  write+fsync, plain, rewrite      {:7.3} s  {:6.2} GB/s",
            t_plain_w,
            gbs(t_plain_w)
        );
        println!(
            "  checkpoint (L1 + commit)         {:7.3} s  {:6.2} GB/s  = {:.0}% of new file, {:.0}% of rewrite",
            t_ckpt,
            gbs(t_ckpt),
            100.0 * t_new / t_ckpt,
            100.0 * t_plain_w / t_ckpt
        );
        println!(
            "  read, plain, cold                {:7.3} s  {:6.2} GB/s",
            t_plain_r,
            gbs(t_plain_r)
        );
        println!(
            "  restore (read + CRC), cold       {:7.3} s  {:6.2} GB/s  = {:.0}% of plain",
            t_restore,
            gbs(t_restore),
            100.0 * t_plain_r / t_restore
        );
        println!("  poll, nothing due (default: adaptive stride)      {p_default:9.1} ns");
        println!("  poll, nothing due (a round every poll)           {p_stride1:9.1} ns");
        println!("  MPI_Allreduce (1 x u32)                          {t_ar:9.1} ns");
        println!("  quiesce (nothing in flight)                      {t_quiesce0:9.1} us");
        println!("  quiesce (4 msgs in flight per rank)              {t_quiesce:9.1} us");
        println!("  quiesce + write + fsync + commit (4 KiB state)   {t_small:9.1} us");
        println!("  plain durable writes (4 KiB per rank + manifest) {t_small_plain:9.1} us");
        println!("  point-to-point, ranks 0 and 1, ping-pong, one way; plain = MPI_Send/MPI_Recv");
        for f in &p2p {
            if f.bytes <= 8 {
                let us = |t: f64| t * 1e6;
                println!(
                    "    {:>7} B latency     send {:6.2} us  send_vec {:6.2} us  plain {:6.2} us  (+{:.2} us)",
                    f.bytes,
                    us(f.ours),
                    us(f.owned),
                    us(f.plain),
                    us(f.ours.min(f.owned) - f.plain)
                );
            } else {
                let gbs = |t: f64| f.bytes as f64 / t / 1e9;
                println!(
                    "    {:>7} B bandwidth   send {:6.2} GB/s  send_vec {:6.2} GB/s  plain {:6.2} GB/s  = {:.0}% / {:.0}% of plain",
                    f.bytes,
                    gbs(f.ours),
                    gbs(f.owned),
                    gbs(f.plain),
                    100.0 * f.plain / f.ours,
                    100.0 * f.plain / f.owned
                );
            }
        }
    }
    Ok(())
}

/// One point-to-point figure: one-way time of a ping-pong between ranks 0 and 1, medians of
/// `--reps` runs.
struct P2p {
    bytes: usize,
    /// `ck.comm()`: `send` (copies the payload) + `recv_into`.
    ours: f64,
    /// `ck.comm()`: `send_vec` (hands the vector over) + `recv_vec`.
    owned: f64,
    /// A plain duplicate of the world communicator: `MPI_Send`/`MPI_Recv` from and into the
    /// application's buffer.
    plain: f64,
}

/// Ping-pong between ranks 0 and 1 (the others wait at the barriers): 8 B, 64 KiB, 4 MiB.
fn p2p_figures(
    world: &SimpleCommunicator,
    ck: &mut Checkpointer,
    o: &Opts,
) -> Result<Vec<P2p>, ckpt::Error> {
    let rank = world.rank();
    let plain = world.duplicate();
    let peer = 1 - rank;
    let from = Source::Rank(peer);
    let tag = TagSel::Tag(1);
    let mut out = Vec::new();
    for bytes in [8usize, 64 << 10, 4 << 20] {
        let iters = if bytes <= 8 {
            20_000
        } else if bytes <= 64 << 10 {
            5_000
        } else {
            200
        };
        let per = |t: f64| t / iters as f64 / 2.0;
        let mut buf = vec![rank as u8; bytes];
        let (mut ours, mut owned, mut mpi) = (vec![], vec![], vec![]);
        for _ in 0..o.reps.max(3) {
            let mut err = Ok(());
            let mut run = |f: &mut dyn FnMut() -> Result<(), ckpt::Error>| {
                timed(world, || {
                    if rank > 1 {
                        return;
                    }
                    for _ in 0..iters {
                        if let Err(e) = f() {
                            err = Err(e);
                            return;
                        }
                    }
                })
            };
            let comm = ck.comm();
            ours.push(per(run(&mut || {
                if rank == 0 {
                    comm.send(peer, 1, &buf)?;
                    comm.recv_into(from, tag, &mut buf)?;
                } else {
                    comm.recv_into(from, tag, &mut buf)?;
                    comm.send(peer, 1, &buf)?;
                }
                Ok(())
            })));
            let mut v = buf.clone();
            owned.push(per(run(&mut || {
                if rank == 0 {
                    comm.send_vec(peer, 1, std::mem::take(&mut v))?;
                    v = comm.recv_vec::<u8>(from, tag)?.0;
                } else {
                    let (got, _) = comm.recv_vec::<u8>(from, tag)?;
                    comm.send_vec(peer, 1, got)?;
                }
                Ok(())
            })));
            mpi.push(per(run(&mut || {
                let p = plain.process_at_rank(peer);
                if rank == 0 {
                    p.send_with_tag(&buf[..], 1);
                    p.receive_into_with_tag(&mut buf[..], 1);
                } else {
                    p.receive_into_with_tag(&mut buf[..], 1);
                    p.send_with_tag(&buf[..], 1);
                }
                Ok(())
            })));
            err?;
        }
        out.push(P2p {
            bytes,
            ours: median(ours),
            owned: median(owned),
            plain: median(mpi),
        });
    }
    Ok(out)
}

/// A failure of the levels modes: the library's, or what the benchmark checks.
type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// An IO error of rank `rank` on `path`.
fn io_error(
    rank: i32,
    op: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> ckpt::Error {
    let path = path.to_path_buf();
    move |source| ckpt::Error::Io {
        rank,
        op,
        path,
        source,
    }
}

/// The level policies `--mode levels` compares: name, L2 period, L4 period.
/// The level policies of `--mode levels`: name, and L2, L3, L4 every this many epochs.
const POLICIES: [(&str, u64, u64, u64); 5] = [
    ("L1 only", 0, 0, 0),
    ("L1 + L2", 1, 0, 0),
    ("L1 + L3", 0, 1, 0),
    ("L1 + L4", 0, 0, 1),
    ("L1+L2+L3+L4", 1, 1, 1),
];

/// Checkpoints of each policy in `--mode levels` before the counted ones: with the default
/// `--keep 2`, the first counted commit prunes an epoch of the same policy.
const WARMUP: usize = 2;

/// How long `--mode levels` waits for an epoch's levels before it gives up.
const LEVEL_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A level policy with the job's L4 base.
/// L2 and L4 every `l2`/`l4` epochs, L3 every `l3` epochs over one XOR group of all `size`
/// ranks (one per emulated node).
fn policy(cfg: &Config, size: i32, (l2, l3, l4): (u64, u64, u64)) -> LevelPolicy {
    LevelPolicy {
        partner_every: l2,
        parity_every: l3,
        parity_group: size.max(2) as usize,
        parity_k: 1,
        shared_every: l4,
        ..cfg.levels.clone()
    }
}

/// One checkpoint under one level policy.
struct LevelRun {
    /// The application's time in `checkpoint()`, slowest rank.
    block: f64,
    /// Of which the write and fsync of the rank file, slowest rank.
    write: f64,
    /// Per background level: seconds from the commit until rank 0 saw it complete on every
    /// rank (between two polls), the seconds the library logged (`level_complete`), and the
    /// seconds from the start of `checkpoint()` (all ranks enter it together).
    complete: Vec<(Level, f64, f64, f64)>,
    /// Polls the application made until every level was complete.
    polls: u64,
    /// Levels logged complete that the epoch's manifest does not record (rank 0).
    lost: Vec<Level>,
}

/// Spins for `us` microseconds reading the state (or sleeps, `idle`): the application's
/// compute between polls.
fn compute(state: &State, us: u64, idle: bool) {
    if idle {
        std::thread::sleep(std::time::Duration::from_micros(us));
        return;
    }
    let t = Instant::now();
    let n = state.data.len().max(1);
    let (mut acc, mut i) = (0u64, 0usize);
    while t.elapsed().as_micros() < u128::from(us) {
        for _ in 0..256 {
            acc = acc.wrapping_add(u64::from(state.data.get(i % n).copied().unwrap_or(0)));
            i = i.wrapping_add(4093);
        }
    }
    std::hint::black_box(acc);
}

/// Plain write + fsync of the first `len` bytes of `bytes` to each `(path, len)` in turn (new
/// files, removed after): the slowest rank's time.
fn raw_writes(
    world: &SimpleCommunicator,
    files: &[(PathBuf, usize)],
    bytes: &[u8],
) -> BenchResult<f64> {
    let mut result = Ok(());
    let t = timed(world, || {
        result = files.iter().try_for_each(|(p, len)| {
            write_fsync(p, &bytes[..(*len).min(bytes.len())]).map_err(io_error(
                world.rank(),
                "write",
                p,
            ))
        })
    });
    for (p, _) in files {
        let _ = std::fs::remove_file(p);
    }
    result?;
    Ok(t)
}

/// Rank 0: the offset of the end of the job's event log.
fn events_end(job_dir: &Path) -> BenchResult<u64> {
    let log = events::path(job_dir);
    Ok(events::read_from(job_dir, 0)
        .map_err(io_error(0, "read", &log))?
        .1)
}

/// Checkpoints `state` under `levels`, then polls (with `--step-us` of compute between polls)
/// until every level the epoch got is complete on every rank, as the application would.
fn level_run(
    world: &SimpleCommunicator,
    cfg: &Config,
    ck: &mut Checkpointer,
    state: &mut State,
    o: &Opts,
) -> BenchResult<LevelRun> {
    let rank = world.rank();
    let mut offset = if rank == 0 {
        events_end(&cfg.job_dir)?
    } else {
        0
    };
    let (mut stats, mut t0, mut start) = (None, Instant::now(), Instant::now());
    let block = timed(world, || {
        start = Instant::now();
        stats = Some(ck.checkpoint(state));
        t0 = Instant::now();
    });
    let stats = stats.ok_or("the checkpoint did not run")??;
    let epoch = stats.epoch;
    let mut write = 0.0f64;
    world.all_reduce_into(&stats.write_secs, &mut write, SystemOperation::max());
    let planned = if rank == 0 {
        ckpt::manifest::load(&cfg.job_dir, epoch)?.copies.planned
    } else {
        Vec::new()
    };
    let (mut complete, mut polls) = (Vec::new(), 0u64);
    loop {
        // Rank 0 says whether to go on (0), stop (1) or give up (2).
        let mut flag = 0u8;
        let mut failed = None;
        if rank == 0 {
            let (evs, next) = events::read_from(&cfg.job_dir, offset).map_err(io_error(
                0,
                "read",
                &events::path(&cfg.job_dir),
            ))?;
            offset = next;
            for ev in evs {
                match ev {
                    Event::LevelComplete {
                        epoch: e,
                        level,
                        secs,
                        ..
                    } if e == epoch => complete.push((
                        level,
                        t0.elapsed().as_secs_f64(),
                        secs,
                        start.elapsed().as_secs_f64(),
                    )),
                    Event::LevelFailed {
                        epoch: e,
                        level,
                        reasons,
                    } if e == epoch => {
                        failed = Some(format!("{level:?} of epoch {epoch} failed: {reasons:?}"))
                    }
                    _ => {}
                }
            }
            if failed.is_none() && t0.elapsed() > LEVEL_WAIT {
                failed = Some(format!(
                    "levels {planned:?} of epoch {epoch} not complete after {} s",
                    LEVEL_WAIT.as_secs()
                ));
            }
            flag = if failed.is_some() {
                2
            } else {
                u8::from(complete.len() >= planned.len())
            };
        }
        world.process_at_rank(0).broadcast_into(&mut flag);
        match flag {
            0 => {}
            1 => break,
            _ => {
                return Err(failed
                    .unwrap_or_else(|| format!("rank 0 gave up on the levels of epoch {epoch}"))
                    .into())
            }
        }
        let _ = ck.poll(state)?;
        polls += 1;
        compute(state, o.step_us, o.idle);
    }
    // Each level logged complete must be in the manifest (republished once per level).
    let lost = if rank == 0 {
        let recorded = ckpt::manifest::load(&cfg.job_dir, epoch)?.levels;
        complete
            .iter()
            .filter(|c| !recorded.contains(&c.0))
            .map(|c| c.0)
            .collect()
    } else {
        Vec::new()
    };
    Ok(LevelRun {
        block,
        write,
        complete,
        polls,
        lost,
    })
}

/// `--mode levels`: for each level policy, the application's blocking time in `checkpoint()`
/// (its commit prunes the copies of an older epoch of the same policy) and the time from the
/// start of the checkpoint until each background level is complete on every rank, next to a
/// plain write+fsync of all the bytes the policy writes, L1's included, on the same storage.
/// Ends with one epoch at L1 and L2, for the restarts that `ckpt bench --levels` runs next.
fn levels(world: &SimpleCommunicator, o: &Opts) -> BenchResult<()> {
    let cfg = Config::from_env()?.every(Interval::Off);
    let rank = world.rank();
    let bytes = o.mib << 20;
    let mut state = State {
        data: pattern(bytes, rank),
    };
    let own = own_dir(&cfg, rank)?;
    let shared = cfg.shared_dir().join(&cfg.job_id);
    durable::create_dir_all(&shared).map_err(io_error(rank, "create", &shared))?;
    // The plain writes the levels are compared with (see `Raw`): a rank's share of the parity
    // is that of one XOR group of all ranks.
    let parity = bytes.div_ceil((world.size() as usize).max(2) - 1);
    let file = |dir: &Path, what: &str| dir.join(format!("bench-{what}-{rank}"));
    let (l1, copy, par, pfs) = (
        file(&own, "new"),
        file(&own, "copy"),
        file(&own, "parity"),
        file(&shared, "new"),
    );
    let raw_sets: [Vec<(PathBuf, usize)>; Raw::COUNT] = [
        vec![(l1.clone(), bytes)],
        vec![(par.clone(), parity)],
        vec![(l1.clone(), bytes), (copy.clone(), bytes)],
        vec![(l1.clone(), bytes), (par.clone(), parity)],
        vec![(l1.clone(), bytes), (pfs.clone(), bytes)],
        vec![(l1, bytes), (copy, bytes), (par, parity), (pfs, bytes)],
    ];
    let mut raws: [Vec<f64>; Raw::COUNT] = Default::default();
    let mut counted = 0usize;
    let mut runs: Vec<Vec<LevelRun>> = POLICIES.iter().map(|_| Vec::new()).collect();
    // Each policy in its steady state: consecutive checkpoints, the first WARMUP not counted
    // (their commits prune epochs of the previous policy, whose copies differ). After each
    // counted one, the plain writes, in rotating order.
    for (i, &(_, l2, l3, l4)) in POLICIES.iter().enumerate() {
        let levels = policy(&cfg, world.size(), (l2, l3, l4));
        let mut ck = Checkpointer::new(world, cfg.clone().levels(levels))?;
        for it in 0..WARMUP + o.reps {
            let run = level_run(world, &cfg, &mut ck, &mut state, o)?;
            if it < WARMUP {
                continue;
            }
            runs[i].push(run);
            // One plain write set after each counted checkpoint, in turn.
            let k = counted % raw_sets.len();
            raws[k].push(raw_writes(world, &raw_sets[k], &state.data)?);
            counted += 1;
        }
    }
    // With few repetitions, a set may not have come round yet.
    for (k, set) in raw_sets.iter().enumerate() {
        if raws[k].is_empty() {
            raws[k].push(raw_writes(world, set, &state.data)?);
        }
    }
    // The newest epoch gets L2 for the restarts from L1 and L2 (dropping the checkpointer
    // completes it); the restarts from L3 and L4 use jobs of their own.
    let levels = policy(&cfg, world.size(), (1, 0, 0));
    let mut ck = Checkpointer::new(world, cfg.clone().levels(levels))?;
    let last = ck.checkpoint(&mut state)?.epoch;
    drop(ck);
    if rank == 0 {
        let levels = ckpt::manifest::load(&cfg.job_dir, last)?.levels;
        let raws = raws.map(median);
        print_levels(o, world.size(), &cfg, raws, parity, &runs);
        println!("  epoch {last} left for the restarts, complete at {levels:?}");
    }
    Ok(())
}

/// The plain write+fsync sets of `--mode levels`, by index: each rank writes the files of a
/// set one after the other, all ranks at once.
struct Raw;

impl Raw {
    const COUNT: usize = 6;
    /// The state once (L1 alone).
    const ONCE: usize = 0;
    /// One rank's share of the L3 parity.
    const PARITY: usize = 1;
    /// The state twice: L1 and a partner copy (L2).
    const TWICE: usize = 2;
    /// The state and the parity (L3).
    const STATE_PARITY: usize = 3;
    /// The state twice, the second time to the shared directory (L4).
    const STATE_SHARED: usize = 4;
    /// Everything with all four levels: the state three times and the parity.
    const ALL: usize = 5;
}

/// Rank 0's table of `--mode levels`: `raws` are the medians of the plain write sets (`Raw`),
/// `parity` the bytes of one rank's parity.
fn print_levels(
    o: &Opts,
    size: i32,
    cfg: &Config,
    raws: [f64; Raw::COUNT],
    parity: usize,
    runs: &[Vec<LevelRun>],
) {
    let block: Vec<f64> = runs
        .iter()
        .map(|r| median(r.iter().map(|x| x.block).collect()))
        .collect();
    let state = (o.mib << 20) as f64;
    let gbs = |per_rank: f64, secs: f64| per_rank * f64::from(size) / secs / 1e9;
    let parity_f = parity as f64;
    println!(
        "ckpt-bench levels: {size} ranks x {} MiB on {size} emulated nodes, median of {} runs, {} us of {} between polls",
        o.mib,
        o.reps,
        o.step_us,
        if o.idle { "sleep" } else { "compute" }
    );
    println!(
        "  {WARMUP} checkpoints of each policy first, not counted; L1 under {}, L4 under {}; L3: one XOR group of all {size} ranks",
        cfg.local_dir.display(),
        cfg.shared_dir().display()
    );
    println!(
        "  write+fsync, plain, new files, each rank one file after the other, all ranks at once:"
    );
    let rows = [
        (Raw::ONCE, "the state once", state),
        (
            Raw::PARITY,
            &*format!(
                "the L3 parity ({:.1} MiB per rank)",
                parity_f / f64::from(1 << 20)
            ),
            parity_f,
        ),
        (Raw::TWICE, "the state twice (L1 + L2)", 2.0 * state),
        (
            Raw::STATE_PARITY,
            "the state + the parity (L1 + L3)",
            state + parity_f,
        ),
        (
            Raw::STATE_SHARED,
            "the state + the state to shared (L1 + L4)",
            2.0 * state,
        ),
        (
            Raw::ALL,
            "the state 3 times + the parity (all four)",
            3.0 * state + parity_f,
        ),
    ];
    for (k, what, per_rank) in rows {
        println!(
            "    {what:<46} {:7.3} s  {:6.2} GB/s",
            raws[k],
            gbs(per_rank, raws[k])
        );
    }
    println!(
        "  application blocked in checkpoint() [of which the rank file's write+fsync; the rest: \
         quiescence, vote, manifest, pruning of the epoch before last]:"
    );
    for (i, (name, ..)) in POLICIES.iter().enumerate() {
        let write = median(runs[i].iter().map(|x| x.write).collect());
        println!(
            "    {name:<14} planned                        {:7.3} s  [{write:.3} + {:.3}]  = {:.2}x L1 only, {:.2}x plain once{}",
            block[i],
            block[i] - write,
            block[i] / block[0],
            block[i] / raws[Raw::ONCE],
            if i == POLICIES.len() - 1 { "  (target <= 1.20x L1 only)" } else { "" }
        );
    }
    // What each level must write, counted as the issue counts it: from the start of the
    // checkpoint, L1's write included.
    println!(
        "  from the start of checkpoint() until the level is complete on every rank, next to the \
         plain write of all it writes, L1 included [from the commit; as the library logged it]:"
    );
    let mut after_commit = Vec::new();
    for (i, &(name, l2, l3, l4)) in POLICIES.iter().enumerate().skip(1) {
        let several = [l2, l3, l4].iter().filter(|&&e| e > 0).count() > 1;
        for level in [Level::Partner, Level::Parity, Level::Pfs] {
            let (lv, k, alone, own) = match level {
                Level::Partner => ("L2", Raw::TWICE, Raw::ONCE, "the state once"),
                Level::Parity => ("L3", Raw::STATE_PARITY, Raw::PARITY, "the parity"),
                _ => ("L4", Raw::STATE_SHARED, Raw::ONCE, "the state once"),
            };
            let k = if several { Raw::ALL } else { k };
            let seen: Vec<&(Level, f64, f64, f64)> = runs[i]
                .iter()
                .flat_map(|r| r.complete.iter().filter(|c| c.0 == level))
                .collect();
            if seen.is_empty() {
                continue;
            }
            let at = median(seen.iter().map(|c| c.1).collect());
            let logged = median(seen.iter().map(|c| c.2).collect());
            let from_start = median(seen.iter().map(|c| c.3).collect());
            println!(
                "    {lv} of {name:<14}                  {from_start:7.3} s  [{at:.3}; {logged:.3}]  = {:.2}x plain write of {}  (target <= 1.20x)",
                from_start / raws[k],
                rows[k].1
            );
            if !several {
                after_commit.push((lv, name, at, at / raws[alone], own));
            }
        }
        let polls = median(runs[i].iter().map(|r| r.polls as f64).collect());
        println!("      polls until complete ({name}): {polls:.0}");
        let lost: Vec<&Level> = runs[i].iter().flat_map(|r| &r.lost).collect();
        if !lost.is_empty() {
            println!(
                "      WARNING: {} of {} runs logged a level complete that the manifest lost: {lost:?}",
                runs[i].iter().filter(|r| !r.lost.is_empty()).count(),
                runs[i].len()
            );
        }
    }
    println!(
        "  a stricter view, no target: from the commit until complete, next to the plain write of \
         the level's own bytes only:"
    );
    for (lv, name, at, ratio, own) in after_commit {
        println!("    {lv} of {name:<14}                  {at:7.3} s  = {ratio:.2}x plain write of {own}");
    }
}

/// Drops the page cache before a cold read: all of it (`/proc/sys/vm/drop_caches`, by rank 0)
/// when permitted, else this rank's files under `dirs` (`posix_fadvise(DONTNEED)`). Returns
/// how, for the report.
fn go_cold(world: &SimpleCommunicator, dirs: &[PathBuf]) -> &'static str {
    world.barrier();
    let mut dropped = 0u8;
    if world.rank() == 0 {
        // Not a file of ours: the kernel's switch (root only). Clean pages only, and every
        // file measured here was fsync'd.
        let done = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/vm/drop_caches")
            .and_then(|mut f| f.write_all(b"3"));
        dropped = u8::from(done.is_ok());
    }
    world.process_at_rank(0).broadcast_into(&mut dropped);
    if dropped == 1 {
        return "page cache dropped (/proc/sys/vm/drop_caches)";
    }
    for d in dirs {
        evict_tree(d);
    }
    world.barrier();
    "drop_caches not permitted: the files evicted with posix_fadvise(DONTNEED)"
}

/// Evicts every regular file under `dir` from the page cache (links are not followed).
fn evict_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => evict_tree(&e.path()),
            Ok(t) if t.is_file() => drop_cache(&e.path()),
            _ => {}
        }
    }
}

/// `--mode restart`: restores the newest epoch cold and checks that it came from `from` (no
/// rank recovered for L1; every recovered rank from `from` otherwise) and holds the state
/// written; next to a cold plain read of a file of the same size by every rank.
fn restart(world: &SimpleCommunicator, o: &Opts, from: Level) -> BenchResult<()> {
    let cfg = Config::from_env()?.every(Interval::Off);
    let rank = world.rank();
    let bytes = o.mib << 20;
    let own = own_dir(&cfg, rank)?;
    let mut ck = Checkpointer::new(world, cfg.clone())?;
    if !ck.restarting() {
        return Err(format!(
            "{}: no committed epoch to restart from",
            cfg.job_dir.display()
        )
        .into());
    }
    let offset = if rank == 0 {
        events_end(&cfg.job_dir)?
    } else {
        0
    };
    let plain = own.join(format!("bench-plain-{rank}"));
    write_fsync(&plain, &pattern(bytes, rank)).map_err(io_error(rank, "write", &plain))?;
    let dirs = [
        cfg.local_dir.join(&cfg.job_id),
        cfg.shared_dir().join(&cfg.job_id),
    ];
    let cold = go_cold(world, &dirs);
    let mut buf = vec![0u8; bytes];
    let mut read = Ok(());
    let t_read = timed(world, || {
        read = durable::open_regular(&plain).and_then(|mut f| f.read_exact(&mut buf))
    });
    read.map_err(io_error(rank, "read", &plain))?;
    drop(buf);
    let _ = std::fs::remove_file(&plain);
    go_cold(world, &dirs);
    let mut state = State { data: Vec::new() };
    let mut restored = Ok(0);
    let t = timed(world, || restored = ck.restore(&mut state).map(|r| r.epoch));
    let epoch = restored?;
    if state.data != pattern(bytes, rank) {
        return Err(format!("rank {rank}: the state restored from epoch {epoch} differs").into());
    }
    if rank == 0 {
        let (evs, _) = events::read_from(&cfg.job_dir, offset).map_err(io_error(
            0,
            "read",
            &events::path(&cfg.job_dir),
        ))?;
        let recovered: Vec<(u32, Level)> = evs
            .into_iter()
            .filter_map(|e| match e {
                Event::Recovered {
                    epoch: e,
                    rank,
                    level,
                    ..
                } if e == epoch => Some((rank, level)),
                _ => None,
            })
            .collect();
        let expected = if from == Level::Local {
            recovered.is_empty()
        } else {
            !recovered.is_empty() && recovered.iter().all(|r| r.1 == from)
        };
        if !expected {
            return Err(format!(
                "restart of epoch {epoch} expected from {from:?}, recovered: {recovered:?}"
            )
            .into());
        }
        let ranks: Vec<u32> = recovered.iter().map(|r| r.0).collect();
        println!(
            "ckpt-bench restart {} of {}: {} ranks x {} MiB, epoch {epoch}, ranks {ranks:?} \
             recovered; {cold}",
            o.sample,
            o.reps,
            world.size(),
            o.mib
        );
        report_restart(&cfg.job_dir, o, from, t_read, t)?;
    }
    Ok(())
}

/// Rank 0 of `--mode restart`: records this launch's sample (plain cold read, restart) in the
/// job directory; after the last one (`--sample` = `--reps`), prints the medians.
fn report_restart(job_dir: &Path, o: &Opts, from: Level, t_read: f64, t: f64) -> BenchResult<()> {
    let (name, short, target) = match from {
        Level::Local => ("L1 (own files)", "l1", "target <= 1.10x"),
        Level::Partner => ("L2 (node1 wiped)", "l2", "target <= 2x"),
        Level::Parity => ("L3 (rebuild, node1 wiped)", "l3", "target <= 2x"),
        Level::Pfs => ("L4 (L2 off, node1 wiped)", "l4", "no target set"),
    };
    let path = job_dir.join(format!("bench-restart-{short}.samples"));
    if o.sample <= 1 {
        let _ = std::fs::remove_file(&path);
    }
    durable::open_append(&path)
        .and_then(|mut f| writeln!(f, "{t_read} {t}"))
        .map_err(io_error(0, "append to", &path))?;
    println!("  read, plain, cold {t_read:.3} s; restart {t:.3} s");
    if o.sample < o.reps {
        return Ok(());
    }
    let text = durable::read_capped(&path, 1 << 20).map_err(io_error(0, "read", &path))?;
    let samples: Vec<(f64, f64)> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    let read = median(samples.iter().map(|s| s.0).collect());
    let restart = median(samples.iter().map(|s| s.1).collect());
    println!(
        "ckpt-bench restart from {name}, median of {} launches:",
        samples.len()
    );
    println!("  read, plain, cold                          {read:7.3} s");
    println!(
        "  restart from {name:<26}  {restart:7.3} s  = {:.2}x plain  ({target})",
        restart / read
    );
    Ok(())
}

/// `--mode write`: one checkpoint under `--l2-every`/`--l3-every`/`--l4-every`, its levels
/// completed.
fn write_epoch(world: &SimpleCommunicator, o: &Opts) -> BenchResult<()> {
    let cfg = Config::from_env()?.every(Interval::Off);
    let rank = world.rank();
    let mut state = State {
        data: pattern(o.mib << 20, rank),
    };
    let levels = policy(&cfg, world.size(), (o.l2_every, o.l3_every, o.l4_every));
    let mut ck = Checkpointer::new(world, cfg.clone().levels(levels))?;
    let epoch = ck.checkpoint(&mut state)?.epoch;
    drop(ck);
    if rank == 0 {
        let m = ckpt::manifest::load(&cfg.job_dir, epoch)?;
        if let Some(missing) = m.copies.planned.iter().find(|l| !m.levels.contains(l)) {
            return Err(format!(
                "{}: epoch {epoch}: {missing:?} planned but not complete (complete at {:?})",
                cfg.job_dir.display(),
                m.levels
            )
            .into());
        }
        println!(
            "ckpt-bench: epoch {epoch} written, complete at {:?}",
            m.levels
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ckpt-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("ckpt-bench: MPI already initialised");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    let result = match o.mode {
        Mode::Classic => run(&world, &o).map_err(Into::into),
        Mode::Levels => levels(&world, &o),
        Mode::Write => write_epoch(&world, &o),
        Mode::Restart(from) => restart(&world, &o, from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Abort rather than return: MPI_Finalize would wait for the other ranks.
            eprintln!("ckpt-bench: {e}");
            world.abort(1)
        }
    }
}
