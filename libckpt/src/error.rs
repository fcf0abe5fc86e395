//! The library's error type. Every variant carries what a user needs to act on it: the rank,
//! the epoch, the file and the cause. Formatting for people happens in `Display`; exit codes
//! are the launcher's business.

use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a checkpoint file or manifest cannot be used. Carries no context: the caller wraps it in
/// an [`Error`] that names the rank, epoch and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The file does not start with the expected magic bytes.
    #[error("not a ckpt {what} (bad magic {found:02x?})")]
    BadMagic {
        /// Which kind of file was expected.
        what: &'static str,
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// The file was written by a format version this build cannot read.
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file is shorter (or longer) than its header says.
    #[error("truncated: header says {expected} bytes, file has {actual}")]
    Truncated {
        /// Length recorded in the header.
        expected: u64,
        /// Length on storage.
        actual: u64,
    },
    /// A checksum does not match the data.
    #[error("checksum mismatch in {what}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The part of the file (header, region table, region `u`, ...).
        what: String,
        /// Checksum recorded in the file.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// A structurally invalid field (decoding failed, offsets out of range, ...).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The part of the file.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The file belongs to another job, epoch or rank than the one asked for.
    #[error("belongs to {field} {found}, expected {expected}")]
    Foreign {
        /// `job`, `epoch`, `rank` or `ranks`.
        field: &'static str,
        /// Value in the file.
        found: String,
        /// Value expected.
        expected: String,
    },
}

/// Errors of the checkpoint library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing or invalid.
    #[error("configuration: {var}={value:?}: {reason}")]
    Config {
        /// Environment variable or setting.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An IO operation failed.
    #[error("rank {rank}: cannot {op} {path}: {source}")]
    Io {
        /// Rank that hit the error.
        rank: i32,
        /// What was attempted (`create`, `write`, `fsync`, `rename`, `read`, ...).
        op: &'static str,
        /// File or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A rank's checkpoint file is unusable.
    #[error("rank {rank}, epoch {epoch}: checkpoint file {path}: {cause}")]
    Corrupt {
        /// Rank the file belongs to.
        rank: i32,
        /// Epoch of the file.
        epoch: u64,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        cause: Corruption,
    },
    /// The application's regions do not match those in the checkpoint file.
    #[error("rank {rank}, epoch {epoch}: checkpoint file {path}: region {region:?}: {cause}")]
    Region {
        /// Rank restoring.
        rank: i32,
        /// Epoch being restored.
        epoch: u64,
        /// The file.
        path: PathBuf,
        /// Region name.
        region: String,
        /// What does not match.
        cause: String,
    },
    /// The application described its regions inconsistently (e.g. one name used twice).
    #[error("rank {rank}: region {region:?}: {cause}")]
    Protect {
        /// Rank.
        rank: i32,
        /// Region name.
        region: String,
        /// What is wrong.
        cause: String,
    },
    /// An epoch manifest cannot be read (not a question of one rank: every rank reads it).
    #[error("cannot read manifest {path}: {source}")]
    ManifestIo {
        /// The manifest file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An epoch manifest is unusable.
    #[error("manifest {path}: {cause}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why it cannot be used.
        cause: Corruption,
    },
    /// Some ranks failed to write their part of an epoch; the epoch was not committed.
    #[error("epoch {epoch} not committed: {}", failed.iter().map(|(r, e)| format!("rank {r}: {e}")).collect::<Vec<_>>().join("; "))]
    CommitFailed {
        /// The epoch.
        epoch: u64,
        /// Failing ranks and their errors.
        failed: Vec<(i32, String)>,
    },
    /// Restart found committed epochs but none could be restored.
    #[error("no usable checkpoint: {}", tried.iter().map(|(e, why)| format!("epoch {e}: {why}")).collect::<Vec<_>>().join("; "))]
    NoUsableEpoch {
        /// Epochs tried, newest first, with the reason each was rejected.
        tried: Vec<(u64, String)>,
    },
    /// The job directory was deleted or replaced under the running job (its `job.json` no
    /// longer records the job's id): nothing more is written into it. Not recoverable.
    #[error(
        "rank {rank}: job directory {dir} is no longer job {job}'s: {found}; the job stops \
         without writing into it"
    )]
    JobDirGone {
        /// Rank that found it.
        rank: i32,
        /// The job directory.
        dir: PathBuf,
        /// The job's id.
        job: String,
        /// What was found instead.
        found: String,
    },
    /// The ranks disagree about a communicator: they create sub-communicators in a different
    /// order or with a different shape, hold different numbers of them at a checkpoint, or
    /// create them differently from the run whose checkpoint is restored.
    #[error("rank {rank}: communicator #{index}: {what}")]
    Communicator {
        /// Rank (in the job).
        rank: i32,
        /// The communicator's index in creation order (0: `ck.comm()`).
        index: usize,
        /// What differs.
        what: String,
    },
    /// This launch was started ahead of a migration's relaunch and the launcher did not
    /// release it in time.
    #[error(
        "rank {rank}: this launch was started ahead of a migration's relaunch and waited \
         {waited_secs} s for the launcher to release it ({} did not appear): the previous \
         launch did not stop in time",
        path.display()
    )]
    NotReleased {
        /// Rank.
        rank: i32,
        /// The file that releases the launch.
        path: PathBuf,
        /// Seconds waited.
        waited_secs: u64,
    },
    /// The API was used out of order (e.g. `restore` without a checkpoint to restore).
    #[error("rank {rank}: {what}")]
    Usage {
        /// Rank.
        rank: i32,
        /// What was wrong.
        what: String,
    },
}

impl Error {
    /// Whether the job can go on after this error (the same answer on every rank that gets
    /// it). Only [`Error::CommitFailed`] is recoverable: the epoch was not committed, but every
    /// rank got the same error at the same poll, the previous epoch is intact, and the next
    /// checkpoint is attempted as usual; an application should say so and carry on (heat2d
    /// and ring do). Every other error leaves the ranks in states that may differ, or the data
    /// unusable: abort the job (`world.abort`, since `MPI_Finalize` would wait for ranks that
    /// wait for this one) and let the launcher restart it or stop. Per variant:
    ///
    /// - [`Error::Config`]: no. A setting is invalid; every launch would fail the same way.
    /// - [`Error::Io`]: no. One rank's file operation failed outside a commit (start-up,
    ///   restore, the presence records); the others may be waiting for it in a collective.
    ///   (A failed write of an epoch is reported as [`Error::CommitFailed`].)
    /// - [`Error::Corrupt`], [`Error::Manifest`], [`Error::ManifestIo`]: no. Restore falls
    ///   back to older epochs by itself; one of these reaching the application means the ranks
    ///   could not agree on a state.
    /// - [`Error::Region`]: no. The program's regions differ from the checkpoint's (another
    ///   build or other arguments); every restart would fail the same way.
    /// - [`Error::Protect`]: no. The program describes its state inconsistently (a bug):
    ///   nothing can be saved.
    /// - [`Error::CommitFailed`]: yes (above).
    /// - [`Error::NoUsableEpoch`]: no. Nothing was restored and no older epoch is usable;
    ///   the launcher stops rather than relaunch into the same failure.
    /// - [`Error::JobDirGone`]: no. The job directory is no longer the job's; nothing more is
    ///   written into it.
    /// - [`Error::Communicator`]: no. Every rank of the communicator refused the same
    ///   creation (nothing was created), but the ranks' programs have diverged; at a
    ///   checkpoint or restore, the ranks hold communicators that do not correspond.
    /// - [`Error::NotReleased`]: no. The launch was never released.
    /// - [`Error::Usage`]: no. A call out of order or against a rule. A refused communicator
    ///   call ([`crate::Comm`] send, receive, probe or wait) changed nothing (no message is
    ///   lost; a refused message stays queued), so a program that expects the refusal may
    ///   handle it at that call; but the same variant reports a misuse of `poll` or
    ///   `restore` on one rank while the others went on, after which the ranks disagree.
    pub fn is_recoverable(&self) -> bool {
        match self {
            Error::CommitFailed { .. } => true,
            Error::Config { .. }
            | Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::Region { .. }
            | Error::Protect { .. }
            | Error::ManifestIo { .. }
            | Error::Manifest { .. }
            | Error::NoUsableEpoch { .. }
            | Error::JobDirGone { .. }
            | Error::Communicator { .. }
            | Error::NotReleased { .. }
            | Error::Usage { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_commit_is_recoverable() {
        let failed = Error::CommitFailed {
            epoch: 3,
            failed: vec![(1, "no space left on device".into())],
        };
        assert!(failed.is_recoverable());
        assert_eq!(
            failed.to_string(),
            "epoch 3 not committed: rank 1: no space left on device"
        );
        let io = || std::io::Error::other("x");
        let corruption = Corruption::Malformed {
            what: "header",
            detail: "x".into(),
        };
        let fatal = [
            Error::Config {
                var: "CKPT_EVERY",
                value: "x".into(),
                reason: "x".into(),
            },
            Error::Io {
                rank: 0,
                op: "read",
                path: "f".into(),
                source: io(),
            },
            Error::Corrupt {
                rank: 0,
                epoch: 1,
                path: "f".into(),
                cause: corruption.clone(),
            },
            Error::Region {
                rank: 0,
                epoch: 1,
                path: "f".into(),
                region: "u".into(),
                cause: "x".into(),
            },
            Error::Protect {
                rank: 0,
                region: "u".into(),
                cause: "x".into(),
            },
            Error::ManifestIo {
                path: "m".into(),
                source: io(),
            },
            Error::Manifest {
                path: "m".into(),
                cause: corruption,
            },
            Error::NoUsableEpoch {
                tried: vec![(2, "rank 0: bad".into())],
            },
            Error::JobDirGone {
                rank: 0,
                dir: "d".into(),
                job: "j".into(),
                found: "x".into(),
            },
            Error::Communicator {
                rank: 0,
                index: 1,
                what: "x".into(),
            },
            Error::Usage {
                rank: 0,
                what: "x".into(),
            },
        ];
        for e in &fatal {
            assert!(!e.is_recoverable(), "{e:?}");
        }
    }
}
