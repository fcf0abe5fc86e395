//! Fault injection for tests and drills: `CKPT_FAULT=RANK:PHASE[:N][:ACTION][@LAUNCH]` makes
//! one rank fail at a chosen point of the protocol.
//!
//! - `N` is an epoch number for the checkpoint and restore phases and a poll count for `poll`;
//!   without it the fault fires at the first opportunity.
//! - `ACTION` is what the rank does there: `kill` (default) sends itself SIGKILL, exactly as a
//!   crash would (no unwinding, no flushing); `stop` sends itself SIGSTOP, a rank that stops
//!   without dying (the others must name it and abort the job); `hang` blocks the rank's
//!   thread for ever where it is, the way a hung file system would (at `mid-write` this is
//!   inside the write, under the IO watchdog).
//! - `LAUNCH` is the launch (`CKPT_RESTART_COUNT`) on which the fault fires; a fault fires on
//!   that launch only, so the relaunched job can run to completion. The default is the first
//!   launch (0), except for `restore`, which needs a launch that restores: its default is 1,
//!   the first relaunch (or the first launch of a resumed job directory).
//! - Two phases inject an IO error instead of an action ([`injected_error`]; `ACTION` is
//!   ignored): `enospc` (the rank's write of its file fails with ENOSPC) and `publish-fsync`
//!   (rank 0: the fsync of the manifests directory after the manifest's rename fails with EIO).

/// A point in the protocol where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// At the start of `poll` number N (counted from 1).
    Poll,
    /// Before the rank starts writing its checkpoint file.
    BeforeWrite,
    /// Half-way through writing the rank's file (after the first region).
    MidWrite,
    /// After the rank's file is durable and renamed, before the commit vote.
    AfterWrite,
    /// Inside the commit: after the rank's write (whatever its outcome), just before it sends
    /// its vote, so the other ranks are waiting in the vote.
    BeforeVote,
    /// On rank 0, after every rank voted yes, before the manifest is published.
    BeforeManifest,
    /// After the manifest is published, before old epochs are pruned.
    AfterCommit,
    /// Inside a checkpoint's cut: after the bookmark exchange, before this rank drains the
    /// messages in flight to it, so the others wait in their drains or in the vote.
    Drain,
    /// Inside a restore: after the rank read (or failed to read) its file of the epoch tried,
    /// just before the restore vote, so the other ranks are waiting in it.
    Restore,
    /// Not a crash: the rank's write of its file fails with ENOSPC (disk full).
    Enospc,
    /// Not a crash: on rank 0, the fsync of the manifests directory after the rename fails.
    PublishFsync,
    /// In the background levels of epoch N: after the rank sent the first chunk of its L2
    /// copy, or as its L4 copy starts.
    Background,
}

impl Phase {
    const NAMES: &'static [(&'static str, Phase)] = &[
        ("poll", Phase::Poll),
        ("before-write", Phase::BeforeWrite),
        ("mid-write", Phase::MidWrite),
        ("after-write", Phase::AfterWrite),
        ("before-vote", Phase::BeforeVote),
        ("before-manifest", Phase::BeforeManifest),
        ("after-commit", Phase::AfterCommit),
        ("restore", Phase::Restore),
        ("drain", Phase::Drain),
        ("enospc", Phase::Enospc),
        ("publish-fsync", Phase::PublishFsync),
        ("background", Phase::Background),
    ];

    fn parse(s: &str) -> Option<Phase> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, p)| *p)
    }

    /// The launch a fault at this phase fires on when the spec does not say.
    pub fn default_launch(self) -> u32 {
        match self {
            Phase::Restore => 1,
            _ => 0,
        }
    }
}

/// What the faulty rank does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL to itself: a crash.
    Kill,
    /// SIGSTOP to itself: a rank that stops without dying.
    Stop,
    /// Blocks the calling thread for ever: a call that never returns (a hung file system).
    Hang,
}

impl Action {
    const NAMES: &'static [(&'static str, Action)] = &[
        ("kill", Action::Kill),
        ("stop", Action::Stop),
        ("hang", Action::Hang),
    ];

    fn parse(s: &str) -> Option<Action> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, a)| *a)
    }
}

/// A fault to inject: which rank, where, optionally at which epoch or poll, what it does, and
/// on which launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Rank that fails.
    pub rank: i32,
    /// Where it fails.
    pub phase: Phase,
    /// Epoch (checkpoint and restore phases) or poll count (`poll`); `None` = first time the
    /// phase is hit.
    pub at: Option<u64>,
    /// What it does there.
    pub action: Action,
    /// The launch (restart count) the fault fires on.
    pub launch: u32,
}

const GRAMMAR: &str = "RANK:PHASE[:N][:ACTION][@LAUNCH]";

impl Fault {
    /// Parses `RANK:PHASE[:N][:ACTION][@LAUNCH]`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let (body, launch) = match s.split_once('@') {
            Some((body, l)) => (
                body,
                Some(l.trim().parse::<u32>().map_err(|_| {
                    format!("{s:?}: launch {l:?} is not a whole number (expected {GRAMMAR})")
                })?),
            ),
            None => (s, None),
        };
        let mut parts = body.split(':');
        let rank = parts
            .next()
            .and_then(|r| r.trim().parse::<i32>().ok())
            .filter(|r| *r >= 0)
            .ok_or_else(|| format!("{s:?}: expected {GRAMMAR} with a rank >= 0"))?;
        let phase_s = parts.next().unwrap_or("");
        let phase = Phase::parse(phase_s).ok_or_else(|| {
            let names: Vec<_> = Phase::NAMES.iter().map(|(n, _)| *n).collect();
            format!(
                "{s:?}: unknown phase {phase_s:?} (one of {})",
                names.join(", ")
            )
        })?;
        let mut rest: Vec<&str> = parts.collect();
        let action = match rest.last().and_then(|a| Action::parse(a)) {
            Some(a) => {
                rest.pop();
                a
            }
            None => Action::Kill,
        };
        let at = match rest.as_slice() {
            [] => None,
            [n] => Some(n.parse::<u64>().map_err(|_| {
                let actions: Vec<_> = Action::NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "{s:?}: {n:?} is neither a whole number nor an action ({})",
                    actions.join(", ")
                )
            })?),
            _ => return Err(format!("{s:?}: too many fields (expected {GRAMMAR})")),
        };
        Ok(Fault {
            rank,
            phase,
            at,
            action,
            launch: launch.unwrap_or_else(|| phase.default_launch()),
        })
    }

    /// Whether this fault fires for `rank` at `phase` with epoch/poll `n` (on its launch; the
    /// launch is checked by [`crate::Config::active_fault`]).
    pub fn matches(&self, rank: i32, phase: Phase, n: u64) -> bool {
        self.rank == rank && self.phase == phase && self.at.is_none_or(|at| at == n)
    }
}

/// Injects `fault` if it matches: kills, stops or blocks the calling process. Returns only if
/// it does not match, or after a stopped rank is continued (SIGCONT).
#[cfg(feature = "mpi")]
pub(crate) fn maybe_die(fault: Option<&Fault>, rank: i32, phase: Phase, n: u64) {
    let Some(f) = fault.filter(|f| f.matches(rank, phase, n)) else {
        return;
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let action = match f.action {
        Action::Kill => "killing",
        Action::Stop => "stopping",
        Action::Hang => "hanging",
    };
    eprintln!("[ckpt rank {rank}] fault injection: {action} myself (pid {pid}) at {phase:?} ({n})");
    match f.action {
        Action::Kill => {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SIGKILL cannot be caught; this is unreachable in practice.
            std::process::abort();
        }
        Action::Stop => {
            // SAFETY: as above; SIGSTOP stops every thread of the process until SIGCONT.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        Action::Hang => loop {
            std::thread::park();
        },
    }
}

/// The IO error an error-injecting fault (`enospc`, `publish-fsync`) makes this rank's
/// operation at `phase` of epoch `n` return, if `fault` matches.
pub fn injected_error(
    fault: Option<&Fault>,
    rank: i32,
    phase: Phase,
    n: u64,
) -> Option<std::io::Error> {
    let errno = match phase {
        Phase::Enospc => libc::ENOSPC,
        Phase::PublishFsync => libc::EIO,
        _ => return None,
    };
    fault.filter(|f| f.matches(rank, phase, n)).map(|_| {
        eprintln!("[ckpt rank {rank}] fault injection: {phase:?} error at epoch {n}");
        std::io::Error::from_raw_os_error(errno)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<Fault>) {
        assert_eq!(Fault::parse(input).ok(), expected, "{input}");
    }

    #[test]
    fn parse_faults() {
        let f = |rank, phase, at, action, launch| {
            Some(Fault {
                rank,
                phase,
                at,
                action,
                launch,
            })
        };
        use Action::*;
        check("2:mid-write", f(2, Phase::MidWrite, None, Kill, 0));
        check(
            "0:before-manifest:3",
            f(0, Phase::BeforeManifest, Some(3), Kill, 0),
        );
        check("1:poll:40", f(1, Phase::Poll, Some(40), Kill, 0));
        check(
            "1:before-vote:3:stop",
            f(1, Phase::BeforeVote, Some(3), Stop, 0),
        );
        check("1:before-vote:stop", f(1, Phase::BeforeVote, None, Stop, 0));
        check(
            "3:mid-write:2:hang",
            f(3, Phase::MidWrite, Some(2), Hang, 0),
        );
        check("1:poll:40:kill@2", f(1, Phase::Poll, Some(40), Kill, 2));
        // A restore needs a relaunch: launch 1 unless told otherwise.
        check("2:restore:stop", f(2, Phase::Restore, None, Stop, 1));
        check("2:restore:5:stop@3", f(2, Phase::Restore, Some(5), Stop, 3));
        check("2:restore@0", f(2, Phase::Restore, None, Kill, 0));
        check("3:enospc:2", f(3, Phase::Enospc, Some(2), Kill, 0));
        check("0:publish-fsync", f(0, Phase::PublishFsync, None, Kill, 0));
        check("x:poll", None);
        check("-1:poll", None);
        check("1:explode", None);
        check("1:poll:x", None);
        check("1:poll:1:2", None);
        check("1:poll:1:stop:2", None);
        check("1:poll:stop:1", None);
        check("1:poll@x", None);
        check("1:poll@-1", None);
    }

    #[test]
    fn errors_name_the_grammar_and_the_choices() {
        let e = Fault::parse("1:poll:x").unwrap_err();
        assert!(e.contains("kill, stop, hang"), "{e}");
        let e = Fault::parse("1:explode").unwrap_err();
        assert!(e.contains("before-vote") && e.contains("restore"), "{e}");
        let e = Fault::parse("1:poll@x").unwrap_err();
        assert!(e.contains(GRAMMAR), "{e}");
    }

    #[test]
    fn matching() {
        let f = Fault::parse("1:after-write:2").unwrap();
        assert!(f.matches(1, Phase::AfterWrite, 2));
        assert!(!f.matches(1, Phase::AfterWrite, 3));
        assert!(!f.matches(0, Phase::AfterWrite, 2));
        assert!(Fault::parse("1:after-write")
            .unwrap()
            .matches(1, Phase::AfterWrite, 9));
    }

    #[test]
    fn error_phases_inject_errors_not_crashes() {
        let f = Fault::parse("2:enospc:3").unwrap();
        let e = injected_error(Some(&f), 2, Phase::Enospc, 3).unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        assert!(injected_error(Some(&f), 2, Phase::Enospc, 4).is_none());
        assert!(injected_error(Some(&f), 1, Phase::Enospc, 3).is_none());
        let crash = Fault::parse("2:after-write:3").unwrap();
        assert!(injected_error(Some(&crash), 2, Phase::AfterWrite, 3).is_none());
        let f = Fault::parse("0:publish-fsync").unwrap();
        let e = injected_error(Some(&f), 0, Phase::PublishFsync, 9).unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }
}
