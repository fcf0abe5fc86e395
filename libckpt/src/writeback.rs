//! The write-back of a recovered rank file. A rank whose file of the restored epoch was
//! received or rebuilt at the restart (a migrated rank, a rank of a lost node) restores from
//! the file before it is durable; then a thread makes it durable under its L1 name (fsync,
//! rename, directory fsyncs: no MPI) while the application runs. Until then the copies it
//! came from are intact, and a crash leaves only a temporary file (pruned with its epoch),
//! never a torn file under the L1 name. The next checkpoint, and the end of the job, wait for
//! it under the IO deadline.

use std::io;
use std::path::PathBuf;
use std::thread::JoinHandle;

use crate::storage::copies::Unsynced;
use crate::Ctx;

/// A recovered file being made durable.
pub(crate) struct WriteBack {
    epoch: u64,
    dest: PathBuf,
    thread: io::Result<JoinHandle<io::Result<PathBuf>>>,
}

impl WriteBack {
    /// Starts making `file` (this rank's file of `epoch`) durable.
    pub(crate) fn start(epoch: u64, file: Unsynced) -> WriteBack {
        let dest = file.dest().to_owned();
        let thread = std::thread::Builder::new()
            .name("ckpt-writeback".into())
            .spawn(move || file.finish());
        WriteBack {
            epoch,
            dest,
            thread,
        }
    }

    /// Waits until the file is durable (under this rank's IO deadline). A failure is reported
    /// but not returned: the copies the file came from remain, and the next checkpoint
    /// writes a new file.
    pub(crate) fn wait(self, ctx: &Ctx) {
        let outcome = self.thread.and_then(|t| {
            let _armed = ctx.io.arm("writing back", &self.dest, self.epoch);
            t.join()
                .unwrap_or_else(|_| Err(io::Error::other("the write-back thread panicked")))
        });
        if let Err(e) = outcome {
            eprintln!(
                "[ckpt rank {}] the recovered file of epoch {} could not be made durable at {}: \
                 {e}; the copies it came from remain",
                ctx.rank,
                self.epoch,
                self.dest.display()
            );
        }
    }
}
