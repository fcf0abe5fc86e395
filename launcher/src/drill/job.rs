//! One job of a drill: `ckpt run` started in its own process group with its output captured,
//! faults injected from outside (a rank's SIGKILL, `ckpt kill-node`), and its end awaited
//! under a deadline past which the whole tree is killed.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ckpt::env;
use ckpt::events::Event;

use super::schedule::Fault;
use crate::backend::mpirun;
use crate::exec_rank::node_name;
use crate::signals::Watch;

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// `ckpt run` exited with this code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// Still running at the deadline: killed with its process group.
    Hung,
    /// The drill got this signal (SIGINT, SIGTERM): the job was killed with its group.
    Interrupted(i32),
}

/// What a finished job left.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub end: End,
    /// Seconds from the start to the end.
    pub secs: f64,
    /// The launcher's stdout (the ranks' output).
    pub stdout: String,
    /// The launcher's stderr (its report and the ranks' errors).
    pub stderr: String,
}

/// A `ckpt run` under way.
pub struct Job {
    child: Child,
    started: Instant,
    dir: PathBuf,
    out: JoinHandle<String>,
    err: JoinHandle<String>,
    /// SIGINT/SIGTERM to the drill (its handlers are installed by the caller).
    watch: Watch,
    interrupted: Option<i32>,
}

impl Job {
    /// Starts `ckpt run <flags> --job-dir DIR -- <command>` (this binary) in its own process
    /// group. `dir` must be absolute: ranks are found by it.
    pub fn start(dir: &Path, flags: &[String], command: &[String]) -> anyhow::Result<Job> {
        let watch = Watch::new();
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .args(flags)
            .arg("--job-dir")
            .arg(dir)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        Ok(Job {
            child,
            started: Instant::now(),
            dir: dir.to_path_buf(),
            out,
            err,
            watch,
            interrupted: None,
        })
    }

    /// Whether the launcher has exited.
    pub fn done(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Whether the drill was interrupted (looked at now).
    fn interrupted(&mut self) -> bool {
        if let Some(sig) = self.watch.take() {
            self.interrupted = Some(sig);
        }
        self.interrupted.is_some()
    }

    /// Waits for the end; past `deadline` (from the start), or when the drill is interrupted,
    /// the job is killed: SIGTERM to the launcher (forwarded to mpirun), then SIGKILL to its
    /// process group and to every rank still alive (Open MPI gives ranks process groups of
    /// their own).
    pub fn finish(mut self, deadline: Duration) -> Finished {
        let end = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break End::Exited(st.code()),
                Ok(None) if self.interrupted() => {
                    self.kill_tree();
                    break End::Interrupted(self.interrupted.unwrap_or(libc::SIGINT));
                }
                Ok(None) if self.started.elapsed() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    self.kill_tree();
                    break End::Hung;
                }
            }
        };
        let secs = self.started.elapsed().as_secs_f64();
        Finished {
            end,
            secs,
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
        }
    }

    fn kill_tree(&mut self) {
        let pid = self.child.id() as i32;
        signal(pid, libc::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(-pid, libc::SIGKILL);
        for (pid, _) in rank_pids(&self.dir) {
            signal(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Injects a timed fault: waits until the job committed an epoch after `mark` events
    /// (and, when `mark > 0`, started again after it), then `after_ms`, then acts. A node is
    /// lost only once an epoch has a level beyond L1 complete (`level_complete`): before that
    /// nothing could bring its ranks' files back. Returns
    /// whether the fault hit something and the event count to wait past for the next fault;
    /// `None` when the job ended (or `deadline` passed) first.
    pub fn inject(
        &mut self,
        fault: &Fault,
        mark: usize,
        deadline: Duration,
    ) -> Option<(bool, usize)> {
        let after_ms = fault.timed()?;
        loop {
            if self.done() || self.interrupted() || self.started.elapsed() > deadline {
                return None;
            }
            let node = matches!(fault, Fault::KillNode { .. });
            if committed_since(&events(&self.dir), mark, node) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(after_ms) {
            if self.interrupted() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10).min(Duration::from_millis(after_ms)));
        }
        let hit = match fault {
            Fault::KillRank { rank, .. } => self.kill_rank(*rank),
            Fault::KillNode { node, .. } => kill_node(&self.dir, &node_name(*node)),
            Fault::Migrate { rank, shift, .. } => self.migrate(*rank, *shift),
            Fault::Phase { .. } => false,
        };
        Some((hit, events(&self.dir).len()))
    }

    /// `ckpt migrate` of `rank` to the node `shift` nodes after its current one; whether the
    /// migration went through (its command waits for the relaunch's restore).
    fn migrate(&mut self, rank: u32, shift: u32) -> bool {
        let (Some(ranks), Some(nodes)) = (
            crate::jobdir::recorded_ranks(&self.dir),
            crate::jobdir::recorded_emulation(&self.dir),
        ) else {
            return false;
        };
        let from = crate::migrate::node_for(&self.dir, rank, ranks, nodes);
        let k: u32 = from.trim_start_matches("node").parse().unwrap_or(0);
        let to = node_name((k + shift) % nodes);
        let Ok(exe) = std::env::current_exe() else {
            return false;
        };
        Command::new(exe)
            .arg("migrate")
            .arg(&self.dir)
            .args(["--rank", &rank.to_string(), "--to", &to])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// SIGKILLs rank `rank` (looking for it for up to 2 s: it may be between launches).
    fn kill_rank(&mut self, rank: u32) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) && !self.done() {
            if let Some(pid) = rank_pids(&self.dir)
                .into_iter()
                .find_map(|(pid, r)| (r == rank).then_some(pid))
            {
                signal(pid, libc::SIGKILL);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Reads a pipe to its end on a thread.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        s
    })
}

/// The job's events so far (none if the log cannot be read yet).
pub fn events(dir: &Path) -> Vec<Event> {
    ckpt::events::read_from(dir, 0)
        .map(|(e, _)| e)
        .unwrap_or_default()
}

/// Whether an epoch was committed (with `beyond_l1`: got a level beyond L1) after the first
/// `mark` events, and (for `mark > 0`) after a launch that started after them: a timed fault
/// hits a job that has a checkpoint to restart from.
pub fn committed_since(events: &[Event], mark: usize, beyond_l1: bool) -> bool {
    let rest = events.get(mark..).unwrap_or_default();
    let from = if mark == 0 {
        Some(0)
    } else {
        rest.iter().position(|e| matches!(e, Event::Started { .. }))
    };
    from.is_some_and(|i| {
        rest[i..].iter().any(|e| match e {
            Event::Committed { .. } => !beyond_l1,
            Event::LevelComplete { .. } => beyond_l1,
            _ => false,
        })
    })
}

/// The live rank processes of the job in `dir`, `(pid, rank)`: those of the newest launch that
/// logged `rank_started`, each checked to be still that job's process (its environment names
/// the job directory: a pid reused by another process is never signalled). Ranks that have not
/// logged yet (still in `MPI_Init`) are found through `/proc/*/environ`, as a fallback, when
/// the events name none.
pub fn rank_pids(dir: &Path) -> Vec<(i32, u32)> {
    let started: Vec<(i32, u32, u32)> = events(dir)
        .iter()
        .filter_map(|e| match e {
            Event::RankStarted {
                rank, pid, launch, ..
            } => Some((*pid as i32, *rank, *launch)),
            _ => None,
        })
        .collect();
    let newest = started.iter().map(|s| s.2).max();
    let from_events: Vec<(i32, u32)> = started
        .iter()
        .filter(|s| Some(s.2) == newest)
        .filter(|s| is_rank_of(s.0, dir) == Some(s.1))
        .map(|s| (s.0, s.1))
        .collect();
    if !from_events.is_empty() {
        return from_events;
    }
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| is_rank_of(pid, dir).map(|rank| (pid, rank)))
        .collect()
}

/// The Open MPI rank of process `pid` if its environment proves it a rank of the job in `dir`.
fn is_rank_of(pid: i32, dir: &Path) -> Option<u32> {
    let want_dir = format!("{}={}", env::JOB_DIR, dir.display());
    let rank_var = format!("{}=", mpirun::RANK_VAR);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    if !vars.contains(&want_dir.as_bytes()) {
        return None;
    }
    vars.iter().find_map(|v| {
        std::str::from_utf8(v.strip_prefix(rank_var.as_bytes())?)
            .ok()?
            .parse()
            .ok()
    })
}

/// Runs `ckpt kill-node DIR NODE`; whether it killed a rank.
fn kill_node(dir: &Path, node: &str) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    Command::new(exe)
        .arg("kill-node")
        .arg(dir)
        .arg(node)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"killed on "))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid (or a negated process group) and a signal; no memory passed.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(launch: u32) -> Event {
        Event::Started {
            nranks: 2,
            launch,
            unix_ms: 0,
        }
    }

    fn committed(epoch: u64) -> Event {
        Event::Committed {
            epoch,
            poll: 1,
            bytes: 1,
            logged: 0,
            write_secs: 0.0,
            total_secs: 0.0,
            cut_secs: 0.0,
        }
    }

    #[test]
    fn a_timed_fault_waits_for_a_commit_of_the_launch_after_the_previous_one() {
        assert!(!committed_since(&[], 0, false));
        assert!(!committed_since(&[started(0)], 0, false));
        let mut one = vec![started(0), committed(1)];
        assert!(committed_since(&one, 0, false));
        // A node waits for a level beyond L1.
        assert!(!committed_since(&one, 0, true));
        one.push(Event::LevelComplete {
            epoch: 1,
            level: ckpt::Level::Partner,
            bytes: 1,
            secs: 0.0,
        });
        assert!(committed_since(&one, 0, true));
        // After a fault at event 2: the old launch's commits do not count...
        let mut ev = vec![started(0), committed(1), committed(2)];
        assert!(!committed_since(&ev, 2, false));
        ev.push(committed(3)); // a commit of the launch being killed, before it died
        assert!(!committed_since(&ev, 2, false));
        ev.push(started(1));
        assert!(!committed_since(&ev, 2, false));
        ev.push(committed(4));
        assert!(committed_since(&ev, 2, false));
        assert!(!committed_since(&ev, 99, false));
    }
}
