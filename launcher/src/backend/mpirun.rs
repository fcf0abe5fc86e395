//! Open MPI's `mpirun` as a [`Backend`]: the command line for one launch (with a rankfile on
//! real nodes), and the parsing of the messages mpirun prints on stderr when it aborts a job
//! because a rank died.
//!
//! Everything here is pure: the [`Launch`] is spawned by the supervisor, and [`Scanner`] is
//! fed lines by whoever reads the pipe.

use std::ffi::OsString;

use super::{Backend, FailureReader};
pub use super::{Cause, Failure, Launch};
use crate::placement::Placement;
use crate::plan::RunPlan;

/// Environment variable with extra mpirun arguments, split on whitespace. The user's knob for
/// the launcher (e.g. site-wide `--mca` settings), not part of the rank contract.
pub const ARGS_VAR: &str = "CKPT_MPIRUN_ARGS";

/// Open MPI's variable holding a rank's number in `MPI_COMM_WORLD` (set for every rank).
pub const RANK_VAR: &str = "OMPI_COMM_WORLD_RANK";
/// Open MPI's variable holding the number of ranks in `MPI_COMM_WORLD`.
pub const SIZE_VAR: &str = "OMPI_COMM_WORLD_SIZE";

/// The rankfile of a job on real nodes, relative to the job directory.
pub const RANKFILE: &str = "control/rankfile";

/// Open MPI's `mpirun`.
#[derive(Debug, Clone, Copy)]
pub struct Mpirun {
    /// Adds `--allow-run-as-root`, without which Open MPI refuses to start as root.
    pub as_root: bool,
}

impl Backend for Mpirun {
    fn launch(&self, plan: &RunPlan, restart_count: u32, placement: Option<&Placement>) -> Launch {
        build(plan, restart_count, self.as_root, placement)
    }

    fn failure_reader(&self) -> Box<dyn FailureReader + Send> {
        Box::new(Scanner::default())
    }
}

/// The mpirun launch of `plan`. On real nodes each rank goes where `placement` says, through
/// a rankfile; on this machine mpirun maps the ranks, oversubscribing its cores if need be.
fn build(
    plan: &RunPlan,
    restart_count: u32,
    as_root: bool,
    placement: Option<&Placement>,
) -> Launch {
    let env = plan.rank_env(restart_count);
    let mut argv: Vec<OsString> = vec![plan.mpirun.clone().into()];
    if as_root {
        argv.push("--allow-run-as-root".into());
    }
    let mut files = Vec::new();
    let rankfile = plan.job_dir.join(RANKFILE);
    match placement {
        Some(p) => {
            argv.push("--rankfile".into());
            argv.push(rankfile.clone().into());
            files.push((rankfile.clone(), rankfile_text(p)));
            // Names of one machine are one node to Open MPI, whose slots then do not hold
            // the ranks given to each name.
            if plan.nodes.as_ref().is_some_and(|n| n.one_machine) {
                argv.push("--oversubscribe".into());
            }
        }
        None => argv.push("--oversubscribe".into()),
    }
    argv.push("-n".into());
    argv.push(plan.ranks.to_string().into());
    let extra = plan.mpirun_env_args.iter().chain(&plan.mpirun_args);
    argv.extend(extra.map(OsString::from));
    let forwarded = env
        .iter()
        .map(|(k, _)| *k)
        .chain(plan.inherited.iter().copied());
    for name in forwarded {
        argv.push("-x".into());
        argv.push(name.into());
    }
    if let Some(exe) = &plan.exec_rank {
        // Each rank starts with the checkpoint signal blocked and with its node identity (see
        // `exec_rank`).
        argv.push(exe.clone().into());
        argv.push("exec-rank".into());
        if let Some(sig) = plan.signal {
            argv.push(format!("--hold-signal={sig}").into());
        }
        if let Some(nodes) = plan.emulate_nodes {
            argv.push(format!("--emulate-nodes={nodes}").into());
            let mut base = OsString::from("--local-base=");
            base.push(plan.local_base());
            argv.push(base);
        }
        if placement.is_some() {
            let mut arg = OsString::from("--rankfile=");
            arg.push(&rankfile);
            argv.push(arg);
        }
        argv.push("--".into());
    }
    argv.push(plan.program.clone().into());
    argv.extend(plan.args.iter().map(OsString::from));
    Launch {
        argv,
        env,
        files,
        unset: Vec::new(),
    }
}

/// An Open MPI rankfile: `rank R=HOST slot=*:*` per rank. Open MPI binds the ranks of a
/// rankfile to their slot's cores; `*:*` (every core of every socket) leaves the scheduler to
/// spread them, whatever the node's cores and however many ranks it holds (a numbered slot
/// that does not exist on the node fails the launch).
pub fn rankfile_text(p: &Placement) -> String {
    (0..p.ranks())
        .filter_map(|r| Some(format!("rank {r}={} slot=*:*\n", p.node_of(r)?)))
        .collect()
}

/// The host of `rank` in a rankfile's text (`rank R=HOST ...`).
pub fn host_in_rankfile(text: &str, rank: u32) -> Option<&str> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("rank ")?;
        let (r, rest) = rest.split_once('=')?;
        (r.trim().parse::<u32>().ok()? == rank).then(|| rest.split_whitespace().next())?
    })
}

/// Whether the launcher runs as root (`geteuid() == 0`).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Reads mpirun's stderr line by line and keeps the first failure it reports. Messages span
/// several lines (`Process name:` then `Exit code:`), hence the state.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Rank of a `Process name:` line waiting for its `Exit code:` line.
    pending_exit: Option<u32>,
    found: Option<Failure>,
    normal_banner: bool,
    /// Nodes whose daemon mpirun lost (`Remote daemon: [[J,0],D] on node NODE`).
    lost: Vec<String>,
}

impl FailureReader for Scanner {
    fn feed(&mut self, line: &str) {
        let line = line.trim();
        if line.starts_with(NORMAL_BANNER) {
            self.normal_banner = true;
        }
        if let Some(node) = lost_daemon_node(line) {
            if !self.lost.contains(&node) {
                self.lost.push(node);
            }
            return;
        }
        match &mut self.found {
            // `MPI_ABORT was invoked on rank R ...` is followed by `with errorcode E.`
            Some(Failure {
                cause: Cause::Abort(code @ None),
                ..
            }) => {
                if let Some(e) = after(line, "with errorcode ").and_then(leading_int) {
                    *code = Some(e as i32);
                }
                return;
            }
            Some(_) => return,
            None => {}
        }
        if let Some(rank) = self.pending_exit {
            if let Some(code) = after(line, "Exit code:").and_then(|s| leading_int(s.trim())) {
                self.found = Some(Failure {
                    rank,
                    node: None,
                    cause: Cause::Exit(code as i32),
                });
                return;
            }
        }
        if let Some(rank) = process_name_rank(line) {
            self.pending_exit = Some(rank);
        } else if let Some(f) = parse_line(line) {
            self.found = Some(f);
        }
    }

    /// Whether mpirun printed its "Primary job terminated normally, but ..." banner, which
    /// it prints after a rank was killed too.
    fn normal_banner(&self) -> bool {
        self.normal_banner
    }

    fn failure(&self) -> Option<&Failure> {
        self.found.as_ref()
    }

    /// Nodes whose daemon mpirun lost: Open MPI 4 says `ORTE has lost communication with a
    /// remote daemon`, then names the node on a `Remote daemon:` line.
    fn lost_nodes(&self) -> &[String] {
        &self.lost
    }
}

/// The node of a `Remote daemon: [[40219,0],2] on node n02` line.
fn lost_daemon_node(line: &str) -> Option<String> {
    let rest = after(line, "Remote daemon:")?;
    let node = after(rest, " on node ")?.split_whitespace().next()?;
    Some(node.to_owned())
}

/// The start of the banner Open MPI 4 prints when a rank of a job ends with a non-zero status
/// or a signal (two spaces are in the original).
pub const NORMAL_BANNER: &str = "Primary job  terminated normally";

/// Parses the one-line failure messages of Open MPI 4:
///
/// - `mpirun noticed that process rank 2 with PID 0 on node vm exited on signal 9 (Killed).`
/// - `MPI_ABORT was invoked on rank 2 in communicator MPI_COMM_WORLD` (error code unknown
///   until the next line)
/// - `mpirun has exited due to process rank 1 with PID 0 on` (no `MPI_Finalize`)
pub fn parse_line(line: &str) -> Option<Failure> {
    if let Some(rest) = after(line, "mpirun noticed that process rank ") {
        let rank = leading_int(rest)? as u32;
        let sig = after(rest, " exited on signal ")?;
        let n = leading_int(sig)? as i32;
        let name = sig
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map_or_else(|| format!("signal {n}"), |(name, _)| name.to_owned());
        let node = after(rest, " on node ")
            .and_then(|n| n.split_whitespace().next())
            .map(str::to_owned);
        return Some(Failure {
            rank,
            node,
            cause: Cause::Signal(n, name),
        });
    }
    if let Some(rest) = after(line, "MPI_ABORT was invoked on rank ") {
        return Some(Failure {
            rank: leading_int(rest)? as u32,
            node: None,
            cause: Cause::Abort(None),
        });
    }
    if let Some(rest) = after(line, "mpirun has exited due to process rank ") {
        return Some(Failure {
            rank: leading_int(rest)? as u32,
            node: None,
            cause: Cause::NoFinalize,
        });
    }
    None
}

/// The rank in `Process name: [[29290,1],2]` (the process's vpid, which is its rank).
fn process_name_rank(line: &str) -> Option<u32> {
    let name = after(line, "Process name:")?.trim();
    let inner = name.strip_prefix("[[")?.strip_suffix(']')?;
    let (_, vpid) = inner.rsplit_once(',')?;
    vpid.trim().parse().ok()
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

fn leading_int(s: &str) -> Option<i64> {
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(s.len(), |(i, _)| i);
    s[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::cli::{self, Command as Cmd};
    use crate::plan::{Context, RunPlan};
    use ckpt::env;

    /// Real stderr of Open MPI 4.1.4 for a rank killed by SIGKILL (`raise(SIGKILL)`).
    const SIGKILL: &str = "\
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
mpirun noticed that process rank 2 with PID 0 on node vm exited on signal 9 (Killed).
--------------------------------------------------------------------------
";

    /// A node gone (Open MPI 4.1's `node-died` message, from help-errmgr-base.txt).
    const NODE_DIED: &str = "\
--------------------------------------------------------------------------
ORTE has lost communication with a remote daemon.

  HNP daemon   : [[40219,0],0] on node login
  Remote daemon: [[40219,0],2] on node n02

This is usually due to either a failure of the TCP network
connection to the node, or possibly an internal failure of
the daemon itself. We cannot recover from this failure, and
therefore will terminate the job.
--------------------------------------------------------------------------
";

    /// A segfault: the rank's own backtrace first, then mpirun's notice.
    const SEGV: &str = "\
[vm:07800] *** Process received signal ***
[vm:07800] Signal: Segmentation fault (11)
[vm:07800] Signal code: Address not mapped (1)
[vm:07800] Failing at address: (nil)
[vm:07800] [ 0] /lib/x86_64-linux-gnu/libc.so.6(+0x3c050)[0x7f88f25a9050]
[vm:07800] *** End of error message ***
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
mpirun noticed that process rank 3 with PID 0 on node vm exited on signal 11 (Segmentation fault).
--------------------------------------------------------------------------
";

    /// `exit(3)` on rank 2.
    const EXIT3: &str = "\
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[29290,1],2]
  Exit code:    3
--------------------------------------------------------------------------
";

    /// `MPI_Abort(MPI_COMM_WORLD, 7)` on rank 2.
    const ABORT: &str = "\
--------------------------------------------------------------------------
MPI_ABORT was invoked on rank 2 in communicator MPI_COMM_WORLD
with errorcode 7.

NOTE: invoking MPI_ABORT causes Open MPI to kill all MPI processes.
You may or may not see output from other processes, depending on
exactly when Open MPI kills them.
--------------------------------------------------------------------------
";

    /// `exit(0)` on rank 1 between `MPI_Init` and `MPI_Finalize`.
    const NO_FINALIZE: &str = "\
--------------------------------------------------------------------------
mpirun has exited due to process rank 1 with PID 0 on
node vm exiting improperly. There are three reasons this could occur:

1. this process did not call \"init\" before exiting, but others in
the job did. This can cause a job to hang indefinitely while it waits
--------------------------------------------------------------------------
";

    fn check(stderr: &str, expected: Option<&str>) {
        let mut s = Scanner::default();
        stderr.lines().for_each(|l| s.feed(l));
        assert_eq!(
            s.failure().map(|f| f.to_string()).as_deref(),
            expected,
            "{stderr}"
        );
    }

    #[test]
    fn failures_from_real_messages() {
        check(
            SIGKILL,
            Some("rank 2 exited on signal 9 (Killed) on node vm"),
        );
        check(
            SEGV,
            Some("rank 3 exited on signal 11 (Segmentation fault) on node vm"),
        );
        check(EXIT3, Some("rank 2 exited with code 3"));
        check(ABORT, Some("rank 2 called MPI_Abort with error code 7"));
        check(
            NO_FINALIZE,
            Some("rank 1 exited without calling MPI_Finalize"),
        );
        check("", None);
        // The banner Open MPI prints after a SIGKILL too (explained, not believed).
        for (text, banner) in [(SIGKILL, true), (SEGV, true), (ABORT, false), ("", false)] {
            let mut s = Scanner::default();
            text.lines().for_each(|l| s.feed(l));
            assert_eq!(s.normal_banner(), banner, "{text}");
        }
        check(
            "hello from rank 2\nPrimary job  terminated normally, but 1 process\n",
            None,
        );
        // The first failure wins; a truncated abort message still names the rank.
        check(
            &format!("{EXIT3}{SIGKILL}"),
            Some("rank 2 exited with code 3"),
        );
        check(
            "MPI_ABORT was invoked on rank 5 in communicator MPI_COMM_WORLD\n",
            Some("rank 5 called MPI_Abort"),
        );
        // Unknown signal names fall back to the number; garbage ranks are ignored.
        check(
            "mpirun noticed that process rank 0 with PID 9 on node a exited on signal 64.",
            Some("rank 0 exited on signal 64 (signal 64) on node a"),
        );
        check("mpirun noticed that process rank x with PID 9", None);
        check("  Process name: [[1,1],x]\n  Exit code: 3\n", None);
    }

    /// A node whose daemon mpirun lost (a node that died) is named, once, beside any rank
    /// failure; nothing else names a node lost.
    #[test]
    fn lost_daemons_name_their_node() {
        let mut s = Scanner::default();
        for l in NODE_DIED
            .lines()
            .chain(SIGKILL.lines())
            .chain(NODE_DIED.lines())
        {
            s.feed(l);
        }
        assert_eq!(s.lost_nodes(), ["n02"]);
        assert_eq!(
            s.failure().map(|f| f.rank),
            Some(2),
            "a rank failure is still read"
        );
        let mut s = Scanner::default();
        SIGKILL.lines().for_each(|l| s.feed(l));
        assert!(s.lost_nodes().is_empty());
    }

    fn launch(argv: &str, ctx: &Context, restart_count: u32, as_root: bool) -> String {
        let full = format!("ckpt run {argv}");
        let Cmd::Run(args) = cli::parse(full.split_whitespace().map(OsString::from))
            .unwrap()
            .command
        else {
            panic!("not a run command")
        };
        let plan = RunPlan::new(args, ctx).unwrap();
        let l = build(&plan, restart_count, as_root, None);
        // Every variable on the command line is also set on the mpirun process.
        let cmd = l.command();
        let mut set: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        let mut expected: Vec<_> = l.env.iter().map(|(k, _)| OsString::from(k)).collect();
        set.sort();
        expected.sort();
        assert_eq!(set, expected);
        let text: Vec<String> = l.argv.iter().map(|a| a.to_string_lossy().into()).collect();
        text.join(" ")
            .replace(&ctx.cwd.display().to_string(), "D")
            .replace("CKPT_", "")
    }

    #[test]
    fn command_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mpirun = dir.path().join("mpirun");
        std::fs::write(&mpirun, "").unwrap();
        std::fs::set_permissions(&mpirun, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut ctx = Context {
            cwd: dir.path().to_path_buf(),
            path: Some(dir.path().into()),
            mpirun_args: None,
            inherited: vec![],
            now_unix_s: 0,
            pid: 1,
            signal: Some("off".into()),
            exe: Some("/opt/ckpt".into()),
            group_access: None,
            resolves: |_| true,
            slurm: crate::backend::srun::SlurmEnv::none(),
            end_vars: vec![],
        };
        let check = |ctx: &Context, argv: &str, count: u32, root: bool, expected: &str| {
            assert_eq!(launch(argv, ctx, count, root), expected, "{argv}");
        };
        check(
            &ctx,
            "-n 4 --job-dir j -- /bin/echo hi",
            0,
            false,
            "D/mpirun --oversubscribe -n 4 -x JOB_DIR -x JOB_ID -x KEEP -x RESTART_COUNT \
             /bin/echo hi",
        );
        ctx.mpirun_args = Some("--mca btl self,vader".into());
        ctx.inherited = vec![(env::NODE, "n1".into())];
        check(
            &ctx,
            "-n 2 --job-dir j --every 10 --local-dir /l --fault 1:poll \
             --mpirun-arg --tag-output -- /bin/echo -n hi",
            2,
            true,
            "D/mpirun --allow-run-as-root --oversubscribe -n 2 --mca btl self,vader \
             --tag-output -x JOB_DIR -x JOB_ID -x KEEP -x RESTART_COUNT -x EVERY -x LOCAL_DIR \
             -x FAULT -x NODE /bin/echo -n hi",
        );
        // With a checkpoint signal, each rank starts through `ckpt exec-rank`, which holds it.
        ctx.signal = Some("USR2".into());
        check(
            &ctx,
            "-n 2 --job-dir j -- /bin/echo hi",
            0,
            false,
            "D/mpirun --oversubscribe -n 2 --mca btl self,vader -x JOB_DIR -x JOB_ID -x KEEP \
             -x RESTART_COUNT -x NODE /opt/ckpt exec-rank --hold-signal=12 -- /bin/echo hi",
        );
        ctx.signal = None;
        let plain = launch("-n 1 --job-dir j -- /bin/echo", &ctx, 0, false);
        assert!(
            plain.ends_with("exec-rank --hold-signal=10 -- /bin/echo"),
            "{plain}"
        );
        // Emulated nodes: exec-rank places each rank, under the job's local base by default
        // and under --local-dir when given; also without a checkpoint signal.
        let nodes = launch(
            "-n 8 --job-dir j --emulate-nodes 4 -- /bin/echo",
            &ctx,
            0,
            false,
        );
        assert!(
            nodes.ends_with(
                "exec-rank --hold-signal=10 --emulate-nodes=4 --local-base=D/j/local -- /bin/echo"
            ),
            "{nodes}"
        );
        ctx.signal = Some("off".into());
        let nodes = launch(
            "-n 8 --job-dir j --local-dir /l --emulate-nodes 3 -- /bin/echo",
            &ctx,
            0,
            false,
        );
        assert!(
            nodes.ends_with("/opt/ckpt exec-rank --emulate-nodes=3 --local-base=/l -- /bin/echo"),
            "{nodes}"
        );
    }

    /// Real nodes: a rankfile in the control directory, passed to mpirun and to exec-rank, and
    /// no `--oversubscribe` (each rank has its slot).
    #[test]
    fn real_nodes_get_a_rankfile() {
        let dir = tempfile::tempdir().unwrap();
        let mpirun = dir.path().join("mpirun");
        std::fs::write(&mpirun, "").unwrap();
        std::fs::set_permissions(&mpirun, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let ctx = Context {
            cwd: dir.path().to_path_buf(),
            path: Some(dir.path().into()),
            mpirun_args: None,
            inherited: vec![],
            now_unix_s: 0,
            pid: 1,
            signal: Some("off".into()),
            exe: Some("/opt/ckpt".into()),
            group_access: None,
            resolves: |_| true,
            slurm: crate::backend::srun::SlurmEnv::none(),
            end_vars: vec![],
        };
        let argv = "ckpt run -n 5 --job-dir j --nodes n[1-2],login --ranks-per-node 2 -- /bin/echo";
        let Cmd::Run(args) = cli::parse(argv.split_whitespace().map(OsString::from))
            .unwrap()
            .command
        else {
            panic!("not a run command")
        };
        let plan = RunPlan::new(args, &ctx).unwrap();
        let placement = plan.nodes.as_ref().unwrap().place(5, None, &[]).unwrap();
        let l = Mpirun { as_root: false }.launch(&plan, 0, Some(&placement));
        let d = ctx.cwd.display().to_string();
        let text: Vec<String> = l
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().replace(&d, "D").replace("CKPT_", ""))
            .collect();
        assert_eq!(
            text.join(" "),
            "D/mpirun --rankfile D/j/control/rankfile -n 5 -x JOB_DIR -x JOB_ID -x KEEP \
             -x RESTART_COUNT /opt/ckpt exec-rank --rankfile=D/j/control/rankfile -- /bin/echo"
        );
        let rankfile = "rank 0=n1 slot=*:*\nrank 1=n1 slot=*:*\nrank 2=n2 slot=*:*\n\
                        rank 3=n2 slot=*:*\nrank 4=login slot=*:*\n";
        assert_eq!(
            l.files(),
            [(dir.path().join("j/control/rankfile"), rankfile.into())]
        );
        // exec-rank reads each rank's node back from it.
        let hosts: Vec<_> = (0..6).map(|r| host_in_rankfile(rankfile, r)).collect();
        assert_eq!(
            hosts,
            [
                Some("n1"),
                Some("n1"),
                Some("n2"),
                Some("n2"),
                Some("login"),
                None
            ]
        );
        assert_eq!(
            host_in_rankfile("rank 10=a slot=0\nrank 1=b slot=0", 1),
            Some("b")
        );
        assert_eq!(host_in_rankfile("rank x=a\nrank 1=", 1), None);
        // A previous placement (after a migration) is kept.
        let prev = [(0, "n2".into()), (1, "n1".into())].into();
        let p = plan
            .nodes
            .as_ref()
            .unwrap()
            .place(2, Some(&prev), &[])
            .unwrap();
        assert_eq!(
            rankfile_text(&p),
            "rank 0=n2 slot=*:*\nrank 1=n1 slot=*:*\n"
        );
        // Names of one machine (localhost and its host name): one node to Open MPI, so the
        // rankfile's ranks need --oversubscribe.
        let mut aliases = plan.clone();
        if let Some(n) = aliases.nodes.as_mut() {
            n.one_machine = true;
        }
        let l = Mpirun { as_root: false }.launch(&aliases, 0, Some(&placement));
        let argv: Vec<_> = l.argv().iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(argv[1..4], ["--rankfile", &*argv[2], "--oversubscribe"]);
        // The same plan on this machine: no files, --oversubscribe as before.
        let local = Mpirun { as_root: false }.launch(&plan, 0, None);
        assert!(local.files().is_empty());
        assert_eq!(local.argv()[1], "--oversubscribe");
    }
}
