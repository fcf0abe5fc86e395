//! Advice to the kernel about IO we are doing. Hints never change what is written, and their
//! failures are ignored: `fsync` reports real errors.
//!
//! [`start_writeback`] starts writing a range of dirty pages to the device now, so the `fsync`
//! at the end of a long stream of writes waits for the tail only, not for all of it.
//!
//! Reads get no advice: `POSIX_FADV_WILLNEED` 64 MiB ahead of each reader made a cold restart
//! of 4 ranks reading their files at once 1.4x slower than the kernel's own read-ahead
//! (3 launches each of `ckpt-bench --mode restart --from L1`, 4 x 256 MiB: 0.76-0.79 s with
//! the advice, 0.56-0.61 s without, a plain cold read 0.51-0.56 s).

use std::fs::File;
use std::os::fd::AsRawFd;

/// Starts writeback of bytes `offset..offset + len` of `file` without waiting for it.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; a closed or unsuitable fd
    // makes it fail with an error code, which is ignored (the later fsync reports errors).
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Writes are accumulated this far before [`Writeback`] starts their writeback.
pub const WRITEBACK_STEP: u64 = 8 << 20;

/// Tracks how much of a file being written sequentially has had its writeback started.
#[derive(Debug, Default)]
pub struct Writeback {
    started: u64,
}

impl Writeback {
    /// After the file grew to `written` bytes: starts writeback of what accumulated since the
    /// last start, once that is at least [`WRITEBACK_STEP`].
    pub fn wrote(&mut self, file: &File, written: u64) {
        if written >= self.started + WRITEBACK_STEP {
            start_writeback(file, self.started, written - self.started);
            self.started = written;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Hints leave the bytes alone: a file written with writeback started every step reads
    /// back exactly.
    #[test]
    fn writeback_hints_change_nothing_that_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        let mut wb = Writeback::default();
        let data: Vec<u8> = (0..(3 * WRITEBACK_STEP as usize + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut written = 0u64;
        for piece in data.chunks(1 << 20) {
            f.write_all(piece).unwrap();
            written += piece.len() as u64;
            wb.wrote(&f, written);
        }
        assert_eq!(wb.started, 3 * WRITEBACK_STEP);
        f.sync_all().unwrap();
        let mut r = File::open(&path).unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }
}
