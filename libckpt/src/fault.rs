//! Fault injection for tests and drills: `CKPT_FAULT=RANK:PHASE[:N]` makes one rank kill itself
//! with SIGKILL at a chosen point of the protocol, exactly as a crash would (no unwinding, no
//! flushing). Faults fire on the first launch only (`CKPT_RESTART_COUNT=0`), so the restarted
//! job can run to completion.
//!
//! `N` is an epoch number for the checkpoint phases and a poll count for `poll`; without it the
//! fault fires at the first opportunity.
//!
//! Two phases inject an IO error instead of a crash ([`injected_error`]): `enospc` (the rank's
//! write of its file fails with ENOSPC) and `publish-fsync` (rank 0: the fsync of the manifests
//! directory after the manifest's rename fails with EIO).

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
    /// On rank 0, after every rank voted yes, before the manifest is published.
    BeforeManifest,
    /// After the manifest is published, before old epochs are pruned.
    AfterCommit,
    /// Not a crash: the rank's write of its file fails with ENOSPC (disk full).
    Enospc,
    /// Not a crash: on rank 0, the fsync of the manifests directory after the rename fails.
    PublishFsync,
}

impl Phase {
    const NAMES: &'static [(&'static str, Phase)] = &[
        ("poll", Phase::Poll),
        ("before-write", Phase::BeforeWrite),
        ("mid-write", Phase::MidWrite),
        ("after-write", Phase::AfterWrite),
        ("before-manifest", Phase::BeforeManifest),
        ("after-commit", Phase::AfterCommit),
        ("enospc", Phase::Enospc),
        ("publish-fsync", Phase::PublishFsync),
    ];

    fn parse(s: &str) -> Option<Phase> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, p)| *p)
    }
}

/// A fault to inject: which rank, where, and optionally at which epoch or poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Rank that dies.
    pub rank: i32,
    /// Where it dies.
    pub phase: Phase,
    /// Epoch (checkpoint phases) or poll count (`poll`); `None` = first time the phase is hit.
    pub at: Option<u64>,
}

impl Fault {
    /// Parses `RANK:PHASE[:N]`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let mut parts = s.split(':');
        let rank = parts
            .next()
            .and_then(|r| r.trim().parse::<i32>().ok())
            .filter(|r| *r >= 0)
            .ok_or_else(|| format!("{s:?}: expected RANK:PHASE[:N] with a rank >= 0"))?;
        let phase_s = parts.next().unwrap_or("");
        let phase = Phase::parse(phase_s).ok_or_else(|| {
            let names: Vec<_> = Phase::NAMES.iter().map(|(n, _)| *n).collect();
            format!(
                "{s:?}: unknown phase {phase_s:?} (one of {})",
                names.join(", ")
            )
        })?;
        let at = match parts.next() {
            None => None,
            Some(n) => Some(
                n.parse::<u64>()
                    .map_err(|_| format!("{s:?}: {n:?} is not a whole number"))?,
            ),
        };
        if parts.next().is_some() {
            return Err(format!("{s:?}: too many fields (expected RANK:PHASE[:N])"));
        }
        Ok(Fault { rank, phase, at })
    }

    /// Whether this fault fires for `rank` at `phase` with epoch/poll `n`.
    pub fn matches(&self, rank: i32, phase: Phase, n: u64) -> bool {
        self.rank == rank && self.phase == phase && self.at.is_none_or(|at| at == n)
    }
}

/// Kills the calling process with SIGKILL if `fault` matches; never returns in that case.
#[cfg(feature = "mpi")]
pub(crate) fn maybe_die(fault: Option<&Fault>, rank: i32, phase: Phase, n: u64) {
    if let Some(f) = fault {
        if f.matches(rank, phase, n) {
            eprintln!("[ckpt rank {rank}] fault injection: killing myself at {phase:?} ({n})");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // SIGKILL cannot be caught; this is unreachable in practice.
            std::process::abort();
        }
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
        let f = |rank, phase, at| Some(Fault { rank, phase, at });
        check("2:mid-write", f(2, Phase::MidWrite, None));
        check("0:before-manifest:3", f(0, Phase::BeforeManifest, Some(3)));
        check("1:poll:40", f(1, Phase::Poll, Some(40)));
        check("3:enospc:2", f(3, Phase::Enospc, Some(2)));
        check("0:publish-fsync", f(0, Phase::PublishFsync, None));
        check("x:poll", None);
        check("-1:poll", None);
        check("1:explode", None);
        check("1:poll:x", None);
        check("1:poll:1:2", None);
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
