//! The launcher <-> rank contract: every `CKPT_*` environment variable, in one place.
//!
//! The launcher sets these for each rank; [`crate::Config::from_env`] reads them. Nothing else in
//! the project spells a variable name: the launcher imports the constants from here.

/// Shared job directory: manifests, events, control requests. Required.
pub const JOB_DIR: &str = "CKPT_JOB_DIR";
/// Job identifier written into manifests and rank files and keying node-local paths (`ckpt run`
/// passes the random id of `job.json`). Default: the id in `<job dir>/job.json`, else the job
/// directory's name; see [`crate::identity`].
pub const JOB_ID: &str = "CKPT_JOB_ID";
/// Base of node-local (L1) storage. Default: `$NODE_LOCAL_DIR`, else `<job dir>/local/<node>`.
pub const LOCAL_DIR: &str = "CKPT_LOCAL_DIR";
/// Node-local directory set by the site or the lab scripts (not ours; read as a fallback).
pub const NODE_LOCAL_DIR: &str = "NODE_LOCAL_DIR";
/// This rank's node name. Default: `$SLURMD_NODENAME`, else the hostname.
pub const NODE: &str = "CKPT_NODE";
/// Slurm's node name for the task (not ours; read as a fallback for [`NODE`]).
pub const SLURMD_NODENAME: &str = "SLURMD_NODENAME";
/// Checkpoint interval: `N` (every N polls), `Ns`/`Nm`/`Nh` (seconds, minutes, hours) or `off`.
pub const EVERY: &str = "CKPT_EVERY";
/// Number of committed epochs kept (older ones are pruned). Default 2.
pub const KEEP: &str = "CKPT_KEEP";
/// How many times the launcher has restarted this job (0 on the first launch).
pub const RESTART_COUNT: &str = "CKPT_RESTART_COUNT";
/// Fault injection, `RANK:PHASE[:N][:ACTION][@LAUNCH]`; see [`crate::fault`]. Honoured on one
/// launch only (the first, unless the spec says otherwise).
pub const FAULT: &str = "CKPT_FAULT";
/// Polls between two agreement rounds (time, signal and launcher triggers). Default: adaptive,
/// about one round per half millisecond of wall time.
pub const AGREE_STRIDE: &str = "CKPT_AGREE_STRIDE";
/// Signal that requests a checkpoint (`USR1`, `USR2`, ..., or `off`). Default `USR1`.
pub const SIGNAL: &str = "CKPT_SIGNAL";
/// Seconds a rank waits for the others (in a checkpoint, a restore, at start-up) before
/// reporting the ranks that did not arrive and aborting the job. Default 120.
pub const TIMEOUT: &str = "CKPT_TIMEOUT";
/// Seconds one rank may spend writing or reading one of its files (a rank file with its fsyncs
/// and renames, a manifest) before its IO watchdog names the file and ends the rank. Waits that
/// follow other ranks' IO get this much on top of [`TIMEOUT`]. Default 600.
pub const IO_TIMEOUT: &str = "CKPT_IO_TIMEOUT";
/// `1`: the files and directories ckpt creates are readable by the group (`0640`/`0750`) and
/// existing job and node-local directories may be group-writable; `0` or unset: private
/// (`0600`/`0700`).
pub const GROUP_ACCESS: &str = "CKPT_GROUP_ACCESS";
/// A file whose appearance releases this launch: the launcher starts a migration's relaunch
/// while the previous launch still checkpoints and stops, and writes the file once that launch's
/// ranks are gone. `Checkpointer::new` waits for it before anything else (see
/// [`crate::hold`]). Unset: no wait.
pub const HOLD_UNTIL: &str = "CKPT_HOLD_UNTIL";
/// Ranks of a launch started ahead that move to another node (`3,5`): each listens for the
/// file its predecessor writes in the last checkpoint before the release (see
/// `handoff.rs`). Unset: none.
pub const HANDOFF_RANKS: &str = "CKPT_HANDOFF_RANKS";
/// The placement file `ckpt exec-rank` places emulated ranks by (lines `RANK NODE`), for a
/// launch started before its placement is put in force. Unset: `<job dir>/control/placement`.
pub const PLACEMENT_FILE: &str = "CKPT_PLACEMENT_FILE";
/// L2 partner copies every this many epochs (`0` = off). Default 1.
pub const L2_EVERY: &str = "CKPT_L2_EVERY";
/// L3 parity every this many epochs (`0` = off). Default 4.
pub const L3_EVERY: &str = "CKPT_L3_EVERY";
/// L3 group size: ranks (on distinct nodes) sharing parity. Default 4.
pub const L3_GROUP: &str = "CKPT_L3_GROUP";
/// L3 parity shards per set, the losses per group it survives (1 = XOR; more = Reed-Solomon).
/// Default 1.
pub const L3_PARITY: &str = "CKPT_L3_PARITY";
/// L4 copies on shared storage every this many epochs (`0` = off). Default 10.
pub const L4_EVERY: &str = "CKPT_L4_EVERY";
/// Epochs kept with their L2 copies (`CKPT_KEEP` is L1's). Default 1.
pub const KEEP_L2: &str = "CKPT_KEEP_L2";
/// Epochs kept with their L3 parity. Default 1.
pub const KEEP_L3: &str = "CKPT_KEEP_L3";
/// Epochs kept on shared storage (L4). Default 2.
pub const KEEP_L4: &str = "CKPT_KEEP_L4";
/// What a checkpoint does while the previous epoch's background levels still run: `wait`
/// (complete them first; default) or `skip` (the new epoch gets L1 only).
pub const LEVELS_BUSY: &str = "CKPT_LEVELS_BUSY";
/// Base of L4 (shared) storage. Default `<job dir>/shared`.
pub const SHARED_DIR: &str = "CKPT_SHARED_DIR";

/// Read by the launcher only (not forwarded): seconds to wait, before a launch, for ranks of
/// an earlier launch to exit before killing them (see `storage/liveness.rs`). Default 30.
pub const RANK_EXIT_WAIT: &str = "CKPT_RANK_EXIT_WAIT";

/// Read by the launcher only (not forwarded): the exit status of a `ckpt run` whose job
/// stopped on request after a checkpoint (the exit signal, `ckpt checkpoint --then-exit`), so
/// a job script can tell "resume me" from "finished" (e.g. requeue itself). Default 0.
pub const STOPPED_EXIT: &str = "CKPT_STOPPED_EXIT";

/// Every variable above that ranks read, for `ckpt` to print and forward (`mpirun -x`).
pub const ALL: &[&str] = &[
    JOB_DIR,
    JOB_ID,
    LOCAL_DIR,
    NODE,
    EVERY,
    KEEP,
    RESTART_COUNT,
    FAULT,
    AGREE_STRIDE,
    SIGNAL,
    TIMEOUT,
    IO_TIMEOUT,
    GROUP_ACCESS,
    L2_EVERY,
    L3_EVERY,
    L3_GROUP,
    L3_PARITY,
    L4_EVERY,
    SHARED_DIR,
    KEEP_L2,
    KEEP_L3,
    KEEP_L4,
    LEVELS_BUSY,
];

/// Reads a variable, treating an empty value as unset.
pub fn get(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
