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

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use ckpt::mpi;
use ckpt::mpi::collective::SystemOperation;
use ckpt::mpi::point_to_point::Source as _;
use ckpt::mpi::topology::SimpleCommunicator;
use ckpt::mpi::traits::*;
use ckpt::storage::durable;
use ckpt::{Checkpointer, Config, Interval, Protect, Regions, Source, TagSel};

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
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = v.parse().map_err(|_| format!("{flag} {v}: not a number"))?;
        match flag.as_str() {
            "--mib" => o.mib = n as usize,
            "--polls" => o.polls = n.max(1),
            "--reps" => o.reps = n.max(1) as usize,
            _ => {
                return Err(format!(
                    "unknown option {flag} (use --mib, --polls, --reps)"
                ))
            }
        }
    }
    Ok(o)
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
        data: (0..bytes)
            .map(|i| (i as u64).wrapping_mul(0x9E37_79B9) as u8 ^ rank as u8)
            .collect(),
    };
    // The baselines' files go in the job's own node-local directory, beside its checkpoints
    // (the base may be shared with other users).
    durable::set_access(cfg.access);
    let own = cfg.local_dir.join(&cfg.job_id);
    durable::ensure_dir(&own, "node-local directory").map_err(|source| ckpt::Error::Io {
        rank,
        op: "create",
        path: own.clone(),
        source,
    })?;
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
    match run(&world, &o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Abort rather than return: MPI_Finalize would wait for the other ranks.
            eprintln!("ckpt-bench: {e}");
            world.abort(1)
        }
    }
}
