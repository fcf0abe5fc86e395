//! Run-time configuration of a [`crate::Checkpointer`]: where files go and when to checkpoint.
//!
//! Built from the environment the launcher sets ([`Config::from_env`]) or by hand in tests and
//! applications that run without the launcher. Parsing and validation live here; the names of
//! the variables live in [`crate::env`].

use std::path::PathBuf;
use std::time::Duration;

use crate::env;
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::identity;
use crate::levels::{Busy, LevelPolicy};
use crate::protocol::agree::Stride;
use crate::storage::durable::Access;

/// Default wall time between agreement rounds. Half a millisecond keeps rounds a small share
/// of the run and bounds a request's latency after a 1000x slowdown to one second (see
/// [`crate::protocol::agree`]).
pub const AGREE_TARGET: Duration = Duration::from_micros(500);

/// Default of [`Config::io_timeout`]: ten minutes for one file, far above what a healthy
/// node-local disk needs for the few GiB a rank holds (write, fsync and rename included), and
/// short enough that a hung file system does not hold a job for hours.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(600);

/// When a checkpoint is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// Never on its own (only forced checkpoints).
    Off,
    /// Every N calls to `poll`. All ranks poll equally often, so no communication is needed.
    Polls(u64),
    /// Every so much wall-clock time, agreed between ranks at `poll`.
    Time(Duration),
}

impl Interval {
    /// Parses `N`, `Ns`, `Nms`, `Nm`, `Nh` or `off`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s == "0" {
            return Ok(Interval::Off);
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if unit.is_empty() {
            let n: u64 = num
                .parse()
                .map_err(|_| format!("{s:?} is not a whole number of polls"))?;
            return Ok(Interval::Polls(n));
        }
        let x: f64 = num
            .parse()
            .map_err(|_| format!("{s:?}: {num:?} is not a number"))?;
        let secs = match unit {
            "ms" => x / 1000.0,
            "s" => x,
            "m" | "min" => x * 60.0,
            "h" => x * 3600.0,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
        };
        if !(secs.is_finite() && secs > 0.0) {
            return Err(format!("{s:?} is not a positive duration"));
        }
        Duration::try_from_secs_f64(secs)
            .map(Interval::Time)
            .map_err(|_| format!("{s:?} is too long a duration"))
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interval::Off => write!(f, "off"),
            Interval::Polls(n) => write!(f, "{n}"),
            Interval::Time(d) => write!(f, "{}s", d.as_secs_f64()),
        }
    }
}

/// Configuration of one rank's checkpointer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared job directory (manifests, events).
    pub job_dir: PathBuf,
    /// Job identifier written into every manifest and rank file, and keying the node-local
    /// directory (see [`crate::identity`]).
    pub job_id: String,
    /// Base of node-local storage; files go to `<local_dir>/<job_id>/epoch-N/`.
    pub local_dir: PathBuf,
    /// This rank's node name.
    pub node: String,
    /// When checkpoints are due.
    pub every: Interval,
    /// Committed epochs kept on storage (at least 1).
    pub keep: usize,
    /// Launcher restarts so far (0 on the first launch).
    pub restart_count: u32,
    /// Fault to inject, if any (testing and drills).
    pub fault: Option<Fault>,
    /// Spacing of agreement rounds (time, signal and launcher triggers).
    pub agree: Stride,
    /// Signal that requests a checkpoint, if any.
    pub signal: Option<i32>,
    /// How long a rank waits for the others inside a checkpoint before giving up loudly.
    pub timeout: Duration,
    /// How long one rank may spend in the IO of one file (write or read of its rank file,
    /// fsyncs and renames included; a manifest) before its watchdog ends it. Waits that follow
    /// other ranks' IO (the commit vote, the restore vote) allow `timeout + io_timeout`.
    pub io_timeout: Duration,
    /// Who may read what this rank creates (private unless `CKPT_GROUP_ACCESS=1`).
    pub access: Access,
    /// Which levels beyond L1 the epochs get.
    pub levels: LevelPolicy,
    /// A file to wait for before the checkpointer starts (`CKPT_HOLD_UNTIL`).
    pub hold_until: Option<PathBuf>,
    /// Ranks of a held launch that move to another node and listen for their file
    /// (`CKPT_HANDOFF_RANKS`, see `handoff.rs`).
    pub handoff_ranks: Vec<u32>,
}

impl Config {
    /// A configuration for `job_dir` with defaults: the job id recorded in its `job.json`, else
    /// its base name ([`identity::id_of`]); node-local data under `<job_dir>/local/<node>`; no
    /// automatic checkpoints; keep 2 epochs.
    pub fn new(job_dir: impl Into<PathBuf>) -> Self {
        let job_dir = job_dir.into();
        let job_id = identity::id_of(&job_dir);
        Self::with_id(job_dir, job_id)
    }

    /// [`Config::new`] with the job id given.
    fn with_id(job_dir: PathBuf, job_id: String) -> Self {
        let node = default_node();
        let local_dir = job_dir.join("local").join(&node);
        Config {
            job_dir,
            job_id,
            local_dir,
            node,
            every: Interval::Off,
            keep: 2,
            restart_count: 0,
            fault: None,
            agree: Stride::Adaptive(AGREE_TARGET),
            signal: Some(libc::SIGUSR1),
            timeout: Duration::from_secs(120),
            io_timeout: DEFAULT_IO_TIMEOUT,
            access: Access::Private,
            levels: LevelPolicy::default(),
            hold_until: None,
            handoff_ranks: Vec::new(),
        }
    }

    /// Reads the configuration the launcher passes in `CKPT_*` variables (see [`crate::env`]).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(env::get)
    }

    /// [`Config::from_env`] with the variables looked up by `get` (the launcher checks the
    /// values it will pass before it launches).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let job_dir = get(env::JOB_DIR).ok_or_else(|| Error::Config {
            var: env::JOB_DIR,
            value: String::new(),
            reason: "not set; run the program under `ckpt run` or set it to a job directory".into(),
        })?;
        // The launcher always passes the id; without it, job.json (or the base name) says.
        let mut cfg = match get(env::JOB_ID) {
            Some(id) => Config::with_id(job_dir.into(), id),
            None => Config::new(job_dir),
        };
        let named = [env::NODE, env::SLURMD_NODENAME]
            .into_iter()
            .find_map(|var| get(var).map(|node| (var, node)));
        if let Some((var, node)) = named {
            check_node(var, &node)?;
            cfg.node = node;
            cfg.local_dir = cfg.job_dir.join("local").join(&cfg.node);
        }
        if let Some(dir) = get(env::LOCAL_DIR).or_else(|| get(env::NODE_LOCAL_DIR)) {
            cfg.local_dir = dir.into();
        }
        if let Some(v) = get(env::EVERY) {
            cfg.every = Interval::parse(&v).map_err(|reason| Error::Config {
                var: env::EVERY,
                value: v.clone(),
                reason,
            })?;
        }
        cfg.keep = parse_num(&get, env::KEEP, 1)?.unwrap_or(2) as usize;
        cfg.restart_count = parse_num(&get, env::RESTART_COUNT, 0)?.unwrap_or(0) as u32;
        if let Some(n) = parse_num(&get, env::AGREE_STRIDE, 1)? {
            cfg.agree = Stride::Fixed(n.min(u32::MAX as u64) as u32);
        }
        cfg.timeout = Duration::from_secs(parse_num(&get, env::TIMEOUT, 1)?.unwrap_or(120));
        if let Some(secs) = parse_num(&get, env::IO_TIMEOUT, 1)? {
            cfg.io_timeout = Duration::from_secs(secs);
        }
        cfg.hold_until = get(env::HOLD_UNTIL)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(v) = get(env::HANDOFF_RANKS) {
            cfg.handoff_ranks = v
                .split(',')
                .map(|r| r.trim().parse::<u32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::Config {
                    var: env::HANDOFF_RANKS,
                    value: v.clone(),
                    reason: "expected ranks separated by commas".into(),
                })?;
        }
        if let Some(v) = get(env::SIGNAL) {
            cfg.signal = crate::trigger::parse_signal(&v).map_err(|reason| Error::Config {
                var: env::SIGNAL,
                value: v.clone(),
                reason,
            })?;
        }
        if let Some(n) = parse_num(&get, env::L2_EVERY, 0)? {
            cfg.levels.partner_every = n;
        }
        if let Some(n) = parse_num(&get, env::L3_EVERY, 0)? {
            cfg.levels.parity_every = n;
        }
        if let Some(n) = parse_num(&get, env::L3_GROUP, 2)? {
            cfg.levels.parity_group = n as usize;
        }
        if let Some(n) = parse_num(&get, env::L3_PARITY, 1)? {
            cfg.levels.parity_k = u16::try_from(n).map_err(|_| Error::Config {
                var: env::L3_PARITY,
                value: n.to_string(),
                reason: "at most 65535".into(),
            })?;
        }
        if let Some(n) = parse_num(&get, env::L4_EVERY, 0)? {
            cfg.levels.shared_every = n;
        }
        cfg.levels.shared_dir = get(env::SHARED_DIR).map(PathBuf::from);
        if let Some(v) = get(env::LEVELS_BUSY) {
            cfg.levels.busy = Busy::parse(v.trim()).ok_or_else(|| Error::Config {
                var: env::LEVELS_BUSY,
                value: v.clone(),
                reason: "expected wait or skip".into(),
            })?;
        }
        if let Some(n) = parse_num(&get, env::KEEP_L2, 1)? {
            cfg.levels.keep_partner = n as usize;
        }
        if let Some(n) = parse_num(&get, env::KEEP_L3, 1)? {
            cfg.levels.keep_parity = n as usize;
        }
        if let Some(n) = parse_num(&get, env::KEEP_L4, 1)? {
            cfg.levels.keep_shared = n as usize;
        }
        if let Some(v) = get(env::GROUP_ACCESS) {
            cfg.access = Access::parse(&v).map_err(|reason| Error::Config {
                var: env::GROUP_ACCESS,
                value: v.clone(),
                reason,
            })?;
        }
        if let Some(v) = get(env::FAULT) {
            let fault = Fault::parse(&v).map_err(|reason| Error::Config {
                var: env::FAULT,
                value: v.clone(),
                reason,
            })?;
            cfg.fault = Some(fault);
        }
        Ok(cfg)
    }

    /// The fault to inject now: a fault fires on its launch only (the first, unless its spec
    /// says otherwise; see [`crate::fault`]), so that the relaunched job can finish.
    pub fn active_fault(&self) -> Option<&Fault> {
        self.fault
            .as_ref()
            .filter(|f| f.launch == self.restart_count)
    }

    /// Sets the checkpoint interval.
    pub fn every(mut self, every: Interval) -> Self {
        self.every = every;
        self
    }

    /// Sets the level policy.
    pub fn levels(mut self, levels: LevelPolicy) -> Self {
        self.levels = levels;
        self
    }

    /// Base of L4 storage: the policy's, else `<job_dir>/shared`.
    pub fn shared_dir(&self) -> PathBuf {
        self.levels
            .shared_dir
            .clone()
            .unwrap_or_else(|| self.job_dir.join("shared"))
    }

    /// Epochs kept per level.
    pub fn keep_per_level(&self) -> crate::retention::Keep {
        crate::retention::Keep {
            local: self.keep,
            partner: self.levels.keep_partner,
            parity: self.levels.keep_parity,
            shared: self.levels.keep_shared,
        }
    }

    /// Sets how many committed epochs are kept.
    pub fn keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }
}

fn parse_num(
    get: impl Fn(&str) -> Option<String>,
    var: &'static str,
    min: u64,
) -> Result<Option<u64>> {
    let Some(v) = get(var) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(Some(n)),
        _ => Err(Error::Config {
            var,
            value: v,
            reason: format!("expected a whole number >= {min}"),
        }),
    }
}

/// This process's node name: `$CKPT_NODE`, `$SLURMD_NODENAME`, else the hostname.
pub fn default_node() -> String {
    env::get(env::NODE)
        .or_else(|| env::get(env::SLURMD_NODENAME))
        .unwrap_or_else(hostname)
}

/// A node name becomes a directory name (`local/<node>`) and is recorded in manifests, which
/// refuse anything but one plain path component: refuse it here, before any epoch is written.
fn check_node(var: &'static str, node: &str) -> Result<()> {
    if node == "." || node == ".." || node.contains(['/', '\0']) {
        return Err(Error::Config {
            var,
            value: node.into(),
            reason: "a node name must be one plain name (no '/', not '.' or '..')".into(),
        });
    }
    Ok(())
}

/// This machine's host name (`localhost` if it cannot be read).
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a valid writable buffer of the length we pass; gethostname writes at most
    // that many bytes and we only read up to the first NUL (or the whole buffer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn check(input: &str, expected: std::result::Result<Interval, ()>) {
        assert_eq!(Interval::parse(input).map_err(|_| ()), expected, "{input}");
    }

    #[test]
    fn intervals() {
        check("100", Ok(Interval::Polls(100)));
        check("off", Ok(Interval::Off));
        check("0", Ok(Interval::Off));
        check("2s", Ok(Interval::Time(Duration::from_secs(2))));
        check("1.5s", Ok(Interval::Time(Duration::from_millis(1500))));
        check("250ms", Ok(Interval::Time(Duration::from_millis(250))));
        check("3m", Ok(Interval::Time(Duration::from_secs(180))));
        check("1h", Ok(Interval::Time(Duration::from_secs(3600))));
        check("5x", Err(()));
        check("s", Err(()));
        check("-1", Err(()));
        check("1.5", Err(()));
    }

    /// The node comes from `CKPT_NODE`, else `SLURMD_NODENAME` (both through the lookup
    /// given), else the host name; a name that is not one plain path component is refused.
    #[test]
    fn node_names() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both = vars(&[
            (env::JOB_DIR, "/j"),
            (env::NODE, "n1"),
            (env::SLURMD_NODENAME, "s1"),
        ]);
        let cfg = Config::from_vars(both).unwrap();
        assert_eq!(cfg.node, "n1");
        assert_eq!(cfg.local_dir, Path::new("/j/local/n1"));
        let slurm = vars(&[(env::JOB_DIR, "/j"), (env::SLURMD_NODENAME, "s1")]);
        let cfg = Config::from_vars(slurm).unwrap();
        assert_eq!(cfg.node, "s1");
        assert_eq!(cfg.local_dir, Path::new("/j/local/s1"));
        for bad in ["a/b", "..", ".", "/"] {
            let get = |k: &str| match k {
                env::JOB_DIR => Some("/j".to_string()),
                env::SLURMD_NODENAME => Some(bad.to_string()),
                _ => None,
            };
            let e = Config::from_vars(get).unwrap_err().to_string();
            assert!(
                e.contains("SLURMD_NODENAME") && e.contains("plain name"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_fault_fires_on_its_launch_only() {
        let mut cfg = Config::new("/j");
        cfg.fault = Fault::parse("1:poll").ok();
        let on = |cfg: &Config, launch| {
            let mut c = cfg.clone();
            c.restart_count = launch;
            c.active_fault().is_some()
        };
        assert!(on(&cfg, 0) && !on(&cfg, 1));
        cfg.fault = Fault::parse("1:restore:stop").ok();
        assert!(!on(&cfg, 0) && on(&cfg, 1) && !on(&cfg, 2));
        cfg.fault = Fault::parse("1:poll@2").ok();
        assert!(!on(&cfg, 0) && on(&cfg, 2));
    }
}
