//! The end-to-end test harness: finds the built binaries, runs jobs under the real `ckpt`
//! launcher and real `mpirun` with a timeout and a private job directory, kills ranks from
//! outside, damages checkpoint files, and reads back what the job printed and logged.
//!
//! MPI jobs are serialised within one test process (a 2-core CI machine oversubscribed by
//! several 4-rank jobs makes timings meaningless). If `mpirun` is missing, tests are skipped
//! with a message, unless `CKPT_REQUIRE_MPI=1` (set by `.ci/run`), which makes it a failure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use ckpt::events::Event;

/// Environment variable that turns a missing `mpirun` into a test failure.
pub const REQUIRE_MPI: &str = "CKPT_REQUIRE_MPI";

static MPI_LOCK: Mutex<()> = Mutex::new(());

/// Path of a binary built in this workspace (`ckpt`, `heat2d`, ...), next to the test binary's
/// `deps` directory. Panics with instructions if it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace binaries first (`cargo build --workspace --bins`, \
         or run the test command from README.md)",
        p.display()
    );
    p
}

/// Takes the MPI lock if `mpirun` is available; `None` means skip (after saying so).
pub fn mpi() -> Option<MutexGuard<'static, ()>> {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var(REQUIRE_MPI).is_ok_and(|v| v == "1") {
            panic!("mpirun not found and {REQUIRE_MPI}=1: install OpenMPI (scripts/setup.sh)");
        }
        eprintln!("SKIPPED: mpirun not found (set {REQUIRE_MPI}=1 to make this a failure)");
        return None;
    }
    Some(MPI_LOCK.lock().unwrap_or_else(|p| p.into_inner()))
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// The `checksum: ...` line heat2d prints at the end.
    pub fn checksum(&self) -> Option<String> {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("checksum: "))
            .map(str::to_owned)
    }

    /// Everything printed, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A command running in its own process group, so that a timeout kills the whole job tree.
pub struct Running {
    child: std::process::Child,
    started: Instant,
    timeout: Duration,
}

impl Running {
    /// Starts `cmd` with piped output.
    pub fn spawn(mut cmd: Command, timeout: Duration) -> Running {
        use std::os::unix::process::CommandExt;
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Running {
            child,
            started: Instant::now(),
            timeout,
        }
    }

    /// Process id of the command, which leads its own process group.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the command (killing its process group at the timeout) and collects output.
    pub fn wait(mut self) -> Output {
        let mut out = self.child.stdout.take().expect("piped stdout");
        let mut err = self.child.stderr.take().expect("piped stderr");
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for child") {
                break st;
            }
            if self.started.elapsed() > self.timeout {
                let st = end_tree(&mut self.child);
                let stdout = t_out.join().unwrap_or_default();
                let stderr = t_err.join().unwrap_or_default();
                panic!(
                    "timed out after {:?}\n{}",
                    self.timeout,
                    Output {
                        status: st,
                        stdout,
                        stderr
                    }
                    .dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
        }
    }
}

/// Ends a timed-out command and everything it started. SIGTERM first: `ckpt run` forwards it
/// to mpirun, which ends the ranks (Open MPI puts each rank in a process group of its own, out
/// of reach of a group kill, so SIGKILL to mpirun would leave them running). Then SIGKILL to
/// the command's process group.
fn end_tree(child: &mut std::process::Child) -> ExitStatus {
    let pid = child.id() as i32;
    signal(pid, "TERM");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // `--`: procps-ng 4 `kill -KILL -PGID` signals nothing; `-- -PGID` is the group.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
    child.wait().expect("wait after kill")
}

/// A `ckpt run` invocation being put together.
pub struct Run {
    cmd: Command,
    timeout: Duration,
}

impl Run {
    /// `ckpt run -n <n> --job-dir <job_dir> [flags] -- <prog> <args>`.
    pub fn new(job_dir: &Path, n: u32, flags: &[&str], prog: &Path, args: &[&str]) -> Run {
        let mut cmd = Command::new(bin("ckpt"));
        cmd.arg("run")
            .arg("-n")
            .arg(n.to_string())
            .arg("--job-dir")
            .arg(job_dir)
            .args(flags)
            .arg("--")
            .arg(prog)
            .args(args);
        Run {
            cmd,
            timeout: Duration::from_secs(120),
        }
    }

    /// Sets an environment variable for the launcher (and so the ranks).
    pub fn env(mut self, k: &str, v: &str) -> Run {
        self.cmd.env(k, v);
        self
    }

    /// Starts it.
    pub fn spawn(self) -> Running {
        Running::spawn(self.cmd, self.timeout)
    }

    /// Runs it to the end.
    pub fn output(self) -> Output {
        self.spawn().wait()
    }
}

/// Events logged so far in a job directory.
pub fn events(job_dir: &Path) -> Vec<Event> {
    ckpt::events::read_from(job_dir, 0)
        .map(|(e, _)| e)
        .unwrap_or_default()
}

/// Epochs restored by a job, in order.
pub fn restored_epochs(job_dir: &Path) -> Vec<u64> {
    events(job_dir)
        .into_iter()
        .filter_map(|e| match e {
            Event::Restored { epoch, .. } => Some(epoch),
            _ => None,
        })
        .collect()
}

/// Epochs committed by a job, in order.
pub fn committed_epochs(job_dir: &Path) -> Vec<u64> {
    events(job_dir)
        .into_iter()
        .filter_map(|e| match e {
            Event::Committed { epoch, .. } => Some(epoch),
            _ => None,
        })
        .collect()
}

/// PID of rank `rank` of the job using `job_dir`, found through `/proc/*/environ`
/// (`CKPT_JOB_DIR` and Open MPI's `OMPI_COMM_WORLD_RANK`).
pub fn rank_pid(job_dir: &Path, rank: u32) -> Option<i32> {
    let want_dir = format!("CKPT_JOB_DIR={}", job_dir.display());
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut has_dir = false;
        let mut has_rank = false;
        for var in env.split(|b| *b == 0) {
            has_dir |= var == want_dir.as_bytes();
            has_rank |= var == want_rank.as_bytes();
        }
        if has_dir && has_rank {
            return Some(pid);
        }
    }
    None
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Sends SIGKILL to `pid`.
pub fn kill9(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Path of rank `rank`'s L1 file of `epoch`, as recorded in the epoch's manifest.
pub fn rank_file(job_dir: &Path, epoch: u64, rank: usize) -> PathBuf {
    let m = ckpt::manifest::load(job_dir, epoch).expect("manifest of a committed epoch");
    let node = &m.ranks[rank].node;
    job_dir.join("local").join(node).join(&m.ranks[rank].file)
}

/// A small deterministic pseudo-random sequence (SplitMix64), so kill times can be varied by
/// seed and a failing seed replayed.
pub struct Rng(pub u64);

impl Rng {
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// Raw bytes of region `name` in rank `rank`'s file of `epoch` (checksum verified).
pub fn region_bytes(job_dir: &Path, epoch: u64, rank: usize, name: &str) -> Vec<u8> {
    use ckpt::format::{FileIdentity, RankFileReader};
    let m = ckpt::manifest::load(job_dir, epoch).expect("manifest of a committed epoch");
    let path = rank_file(job_dir, epoch, rank);
    let id = FileIdentity {
        job: m.job.clone(),
        epoch,
        rank: rank as u32,
        nranks: m.nranks,
    };
    let file = RankFileReader::open(&path, &id)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let (idx, _) = file
        .find(name)
        .unwrap_or_else(|| panic!("no region {name:?} in {}", path.display()));
    file.read_vec(idx)
        .unwrap_or_else(|e| panic!("cannot read {name:?} in {}: {e}", path.display()))
}

/// Sends `signal` (e.g. "USR1") to `pid`.
pub fn signal(pid: i32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// Runs `ckpt <args>` to completion (for the short subcommands: list, checkpoint).
pub fn ckpt(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("ckpt"));
    cmd.args(args);
    Running::spawn(cmd, Duration::from_secs(90)).wait()
}

/// Seeds for the random-kill tests: `CKPT_SEEDS=a,b,c` replays chosen ones.
pub fn seeds(default: &[u64]) -> Vec<u64> {
    std::env::var("CKPT_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Starts `run`, waits for its first committed epoch, waits a seeded random delay (under
/// `max_delay`), SIGKILLs a seeded random rank, and waits for the job to end (the launcher
/// restarts it). Returns the output and a description of the kill for assertion messages.
pub fn kill_at_random(
    run: Run,
    job_dir: &Path,
    ranks: u32,
    seed: u64,
    max_delay: Duration,
) -> (Output, String) {
    let mut rng = Rng(seed);
    let rank = rng.range(0, ranks as u64) as u32;
    let delay = Duration::from_millis(rng.range(0, max_delay.as_millis() as u64));
    let running = run.spawn();
    let started = wait_for(Duration::from_secs(60), || {
        !committed_epochs(job_dir).is_empty()
    });
    std::thread::sleep(delay);
    let pid = rank_pid(job_dir, rank);
    if let Some(pid) = pid {
        kill9(pid);
    }
    let out = running.wait();
    let ctx = format!(
        "seed {seed}: SIGKILL to rank {rank} (pid {pid:?}) {delay:?} after the first commit"
    );
    assert!(
        started && pid.is_some(),
        "{ctx}: the job was not caught running\n{}",
        out.dump()
    );
    (out, ctx)
}

/// Children of process `parent`: `(pid, command name)` from `/proc/*/stat`.
pub fn children(parent: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if ppid.and_then(|p| p.parse().ok()) == Some(parent) {
            if let Ok(pid) = stat[..open].trim().parse() {
                found.push((pid, stat[open + 1..close].to_owned()));
            }
        }
    }
    found
}

/// Sends `signal` (e.g. "USR1") to every process of process group `pgid`.
pub fn signal_group(pgid: i32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .status();
}

/// The write end of a pipe whose reader is gone: a write to it fails with EPIPE (a closed
/// terminal, `| head` after it exited, `| true`).
pub fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("start true");
    let write_end = reader.stdin.take().expect("piped stdin");
    reader.wait().expect("wait for true");
    Stdio::from(write_end)
}

/// Runs `cmd` with stdout and stderr both writing into [`closed_pipe`]s, to its end or
/// `timeout` (then its process group is killed and the test fails).
pub fn run_with_closed_outputs(mut cmd: Command, timeout: Duration) -> ExitStatus {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            return st;
        }
        if t0.elapsed() > timeout {
            let st = end_tree(&mut child);
            panic!("timed out after {timeout:?} ({st})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many launches a `ckpt run` made, from its `[ckpt] launch N/M` lines.
pub fn launch_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.starts_with("[ckpt] launch ") && l.contains("/"))
        .filter(|l| !l.contains(" failed after "))
        .count()
}

/// `cmd` (program, arguments and environment) run through `sh` with the file mode creation
/// mask `mask` (e.g. "000").
pub fn with_umask(cmd: &Command, mask: &str) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("umask {mask} && exec \"$@\""))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

impl Run {
    /// Runs the launcher (and so the ranks) with the file mode creation mask `mask`.
    pub fn umask(mut self, mask: &str) -> Run {
        self.cmd = with_umask(&self.cmd, mask);
        self
    }
}

/// [`ckpt`] with the file mode creation mask `mask`.
pub fn ckpt_umask(mask: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("ckpt"));
    cmd.args(args);
    Running::spawn(with_umask(&cmd, mask), Duration::from_secs(90)).wait()
}

/// Runs the shell `script` as the unprivileged user `nobody` (group `nogroup`), with
/// `setpriv`, else `runuser`. `None`, after saying why, when neither tool is installed or this
/// process cannot switch users (not root).
pub fn as_nobody(script: &str) -> Option<Output> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        eprintln!("SKIPPED: needs root to act as another user (nobody)");
        return None;
    }
    let found = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut cmd = if found("setpriv") {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        c
    } else if found("runuser") {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]);
        c
    } else {
        eprintln!("SKIPPED: neither setpriv nor runuser (util-linux) is installed");
        return None;
    };
    cmd.args(["sh", "-c", script]);
    Some(Running::spawn(cmd, Duration::from_secs(30)).wait())
}

/// Gives committed epoch `epoch` of a job (node-local files under `<job>/local/<node>`, as
/// with `--emulate-nodes`) copies beyond L1 by hand, as the background levels would: the
/// manifest plans `planned`, and for each level of `complete` every rank's L1 file is copied
/// where that level keeps it (L2 on the node of its partner, `placement::partners` at distance
/// 1; L4 under `shared`), then the manifest is republished with the level complete.
pub fn add_copies(
    job_dir: &Path,
    shared: &Path,
    epoch: u64,
    planned: &[ckpt::Level],
    complete: &[ckpt::Level],
) {
    use ckpt::placement::{partners, Placement};
    use ckpt::storage::copies::{copy_file, Places};
    let mut m = ckpt::manifest::load(job_dir, epoch).expect("manifest of a committed epoch");
    let places = |node: &str| Places {
        local_dir: job_dir.join("local").join(node),
        shared_dir: shared.to_path_buf(),
        job_id: m.job.clone(),
    };
    let placement = Placement::of_manifest(&m).expect("a valid placement");
    let holders = partners(&placement, 1).expect("partners on more than one node");
    for rank in 0..m.nranks {
        let l1 = rank_file(job_dir, epoch, rank as usize);
        for &level in complete {
            let node = match level {
                ckpt::Level::Partner => &m.ranks[holders.of(rank) as usize].node,
                _ => &m.ranks[rank as usize].node,
            };
            let copy = places(node)
                .locate(level, epoch, rank)
                .expect("a level that keeps copies");
            copy_file(&l1, &copy, 1 << 20).expect("copy of a rank file");
        }
    }
    m.copies.planned = planned.to_vec();
    m.levels.extend_from_slice(complete);
    if complete.contains(&ckpt::Level::Partner) {
        m.copies.partner = holders.as_slice().to_vec();
    }
    ckpt::manifest::publish(job_dir, &m).expect("manifest republished");
}

/// Processes whose parent is `pid` (from `/proc/*/stat`).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the command may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Runs `ckpt drill <args>` to its end (at most `timeout`), with the CKPT_* `env` it passes
/// on to its jobs.
pub fn drill(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = Command::new(bin("ckpt"));
    cmd.arg("drill").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running::spawn(cmd, timeout).wait()
}

/// Set to `1` (by `scripts/test.sh` once it brought the local Slurm cluster up) to make a
/// missing Slurm a failure instead of a skip.
pub const REQUIRE_SLURM: &str = "CKPT_REQUIRE_SLURM";

/// The local Slurm cluster (`scripts/slurm-up.sh`), if `SLURM_CONF` names one that answers:
/// the MPI lock is held too, since its jobs run mpirun. `None` (the test skips, saying so)
/// otherwise, unless [`REQUIRE_SLURM`] is `1`.
pub fn slurm() -> Option<MutexGuard<'static, ()>> {
    let up = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !up {
        if std::env::var(REQUIRE_SLURM).is_ok_and(|v| v == "1") {
            panic!("no Slurm cluster answers and {REQUIRE_SLURM}=1 (scripts/slurm-up.sh)");
        }
        eprintln!("SKIPPED: no local Slurm cluster (SLURM_CONF unset or sinfo fails)");
        return None;
    }
    mpi()
}

/// Three names of this machine that Open MPI starts ranks on locally, while ckpt takes them
/// for three nodes: `localhost`, the host name and `127.0.0.1`. `None` (saying why) when the
/// host name is `localhost` or does not resolve.
pub fn local_node_names() -> Option<[String; 3]> {
    use std::net::ToSocketAddrs;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let resolves = (host.as_str(), 0)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some());
    if host.is_empty() || host == "localhost" || host == "127.0.0.1" || !resolves {
        eprintln!(
            "SKIPPED: this machine's host name {host:?} is not a second name for it that \
             resolves; the test needs localhost, the host name and 127.0.0.1 as three nodes"
        );
        return None;
    }
    Some(["localhost".into(), host, "127.0.0.1".into()])
}

/// The pid rank `rank` logged in its `rank_started` event of launch `launch`, if it did.
pub fn started_pid(job_dir: &Path, rank: u32, launch: u32) -> Option<i32> {
    events(job_dir).into_iter().find_map(|e| match e {
        Event::RankStarted {
            rank: r,
            pid,
            launch: l,
            ..
        } if r == rank && l == launch => i32::try_from(pid).ok(),
        _ => None,
    })
}

/// Each rank's node from the `rank_started` events of launch `launch`, in rank order.
pub fn started_nodes(job_dir: &Path, launch: u32) -> Vec<(u32, String)> {
    let mut nodes: Vec<(u32, String)> = events(job_dir)
        .into_iter()
        .filter_map(|e| match e {
            Event::RankStarted {
                rank,
                node,
                launch: l,
                ..
            } if l == launch => Some((rank, node)),
            _ => None,
        })
        .collect();
    nodes.sort();
    nodes
}

/// `salloc <alloc> -- ckpt run -n <n> --job-dir <job_dir> <flags> -- <prog> <args>` on the
/// local Slurm cluster: the launcher runs inside the allocation (the srun backend), in its own
/// process group, killed past `timeout`.
pub fn salloc_run(
    alloc: &[&str],
    job_dir: &Path,
    n: u32,
    flags: &[&str],
    prog: &Path,
    args: &[&str],
    timeout: Duration,
) -> Running {
    let mut cmd = Command::new("salloc");
    cmd.args(alloc)
        .arg("--job-name=ckpt-e2e")
        .arg("--")
        .arg(bin("ckpt"))
        .arg("run")
        .arg("-n")
        .arg(n.to_string())
        .arg("--job-dir")
        .arg(job_dir)
        .args(flags)
        .arg("--")
        .arg(prog)
        .args(args);
    Running::spawn(cmd, timeout)
}

/// A node of the local Slurm cluster set down (`scontrol update nodename=N state=down`) for
/// a test, resumed when dropped (also when the test fails), so other jobs get it back.
pub struct NodeDown(pub String);

impl NodeDown {
    /// Sets `node` down with reason `ckpt-e2e`.
    pub fn set(node: &str) -> NodeDown {
        let out = Command::new("scontrol")
            .args(["update", &format!("nodename={node}"), "state=down"])
            .arg("reason=ckpt-e2e")
            .output()
            .unwrap_or_else(|e| panic!("cannot run scontrol: {e}"));
        assert!(out.status.success(), "scontrol: {out:?}");
        NodeDown(node.to_owned())
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        // The node may already be back (ReturnToService=2 with its slurmd still answering):
        // then resume is refused, which is fine.
        let _ = Command::new("scontrol")
            .args(["update", &format!("nodename={}", self.0), "state=resume"])
            .output();
    }
}

/// The node of `rank` in a job's srun hostfile (`control/hostfile`), once it is written.
pub fn hostfile_node(job_dir: &Path, rank: usize) -> Option<String> {
    let text = std::fs::read_to_string(job_dir.join("control/hostfile")).ok()?;
    text.lines().nth(rank).map(str::to_owned)
}

impl Run {
    /// Removes a variable from the launcher's environment (e.g. `SLURM_JOB_ID`).
    pub fn env_remove(mut self, k: &str) -> Run {
        self.cmd.env_remove(k);
        self
    }
}

/// Cancels the local Slurm cluster's jobs of this name when dropped: a test that times out
/// while `sbatch --wait` runs leaves no job behind holding nodes.
pub struct CancelJobs(pub &'static str);

impl Drop for CancelJobs {
    fn drop(&mut self) {
        let _ = Command::new("scancel")
            .arg(format!("--name={}", self.0))
            .output();
    }
}

/// A program (a shell script in `dir`) that runs `prog ARGS...` on every rank except rank
/// `rank` of the first launch (`CKPT_RESTART_COUNT=0`), which sleeps for `secs` instead of
/// starting: a rank that never starts. The rank is read from Open MPI's or Slurm's variable.
pub fn late_rank_wrapper(dir: &Path, rank: u32, secs: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("late-rank.sh");
    let script = format!(
        "#!/bin/sh\n\
         r=${{OMPI_COMM_WORLD_RANK:-$SLURM_PROCID}}\n\
         if [ \"$r\" = {rank} ] && [ \"$CKPT_RESTART_COUNT\" = 0 ]; then exec sleep {secs}; fi\n\
         exec \"$@\"\n"
    );
    std::fs::write(&path, script).expect("write the late-rank wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("make the late-rank wrapper executable");
    path
}
