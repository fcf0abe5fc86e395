//! Advice to the kernel about IO we are about to do. Hints never change what is read or
//! written, and their failures are ignored: `fsync` and `read` report real errors.
//!
//! - [`start_writeback`] starts writing a range of dirty pages to the device now, so the
//!   `fsync` at the end of a long stream of writes waits for the tail only, not for all of it.
//! - [`will_read`] starts reading a range into the page cache in the background, so a reader
//!   that checksums what it reads keeps the device busy meanwhile; [`ReadAhead`] keeps that
//!   window a bounded distance ahead of a sequential reader.

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

/// Asks the kernel to read bytes `offset..offset + len` of `file` ahead, in the background.
pub fn will_read(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; errors are ignored (advice).
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off, n, libc::POSIX_FADV_WILLNEED);
    }
}

/// How far ahead of a sequential reader [`ReadAhead`] keeps the kernel reading.
pub const READ_AHEAD: u64 = 64 << 20;

/// Keeps the kernel reading up to [`READ_AHEAD`] bytes ahead of a sequential reader, so the
/// page cache never holds much more than that of a large file ahead of its use.
#[derive(Debug, Default)]
pub struct ReadAhead {
    asked: u64,
}

impl ReadAhead {
    /// The reader is at `pos` of a range that ends at `end`: asks for what lies ahead, in
    /// steps of a quarter of the window.
    pub fn at(&mut self, file: &File, pos: u64, end: u64) {
        let want = pos.saturating_add(READ_AHEAD).min(end);
        let from = self.asked.max(pos);
        if want > from && (want - from >= READ_AHEAD / 4 || want == end) {
            will_read(file, from, want - from);
            self.asked = want;
        }
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
    /// back exactly, and read-ahead advice (even past the end) changes nothing.
    #[test]
    fn hints_change_nothing_that_is_read_or_written() {
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
        will_read(&r, 0, u64::MAX);
        will_read(&r, 10, 1 << 40);
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    /// The read-ahead window follows the reader: asked once per quarter window, never past
    /// the end, never twice for the same bytes.
    #[test]
    fn read_ahead_follows_the_reader() {
        let f = tempfile::tempfile().unwrap();
        let mut ra = ReadAhead::default();
        ra.at(&f, 0, 10 * READ_AHEAD);
        assert_eq!(ra.asked, READ_AHEAD);
        ra.at(&f, 1, 10 * READ_AHEAD);
        assert_eq!(
            ra.asked, READ_AHEAD,
            "less than a quarter window more: not asked"
        );
        ra.at(&f, READ_AHEAD / 4, 10 * READ_AHEAD);
        assert_eq!(ra.asked, READ_AHEAD + READ_AHEAD / 4);
        ra.at(&f, 9 * READ_AHEAD + 5, 10 * READ_AHEAD);
        assert_eq!(
            ra.asked,
            10 * READ_AHEAD,
            "the end is asked for even when close"
        );
        ra.at(&f, 10 * READ_AHEAD, 10 * READ_AHEAD);
        assert_eq!(ra.asked, 10 * READ_AHEAD);
    }
}
