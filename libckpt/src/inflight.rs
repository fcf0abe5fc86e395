//! One non-blocking MPI transfer that owns its buffer for as long as MPI may use it.
//!
//! The buffer is leaked to MPI when the request is posted and taken back only once the request
//! completed. A transfer dropped while MPI may still use it (the job is failing) leaks its
//! buffer and hands the request to MPI, so nothing MPI reads or writes is ever freed. A send
//! may also come straight from a read-only mapping of a file ([`InFlight::send_mapped`]): no
//! copy in user space, and the mapping lives as long as the request.

use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::storage::durable;

/// Requests completed by this process so far (see [`completions`]).
static COMPLETIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many transfers completed in this process so far: a caller that drives transfers in
/// passes compares it before and after a pass to tell whether anything moved.
pub(crate) fn completions() -> u64 {
    COMPLETIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What MPI reads from or writes into.
enum Buf {
    /// A heap buffer from `Box::into_raw`, freed only once the request completed.
    Owned(*mut [u8]),
    /// Part of a file mapping, kept mapped while the request may read it.
    Mapped(Arc<Mmap>),
}

/// A posted send or receive and its buffer (`None` once taken back).
pub(crate) struct InFlight {
    req: Option<Request<'static, [u8], StaticScope>>,
    buf: Option<Buf>,
}

impl InFlight {
    /// Posts a send of `bytes` to `dest` with `tag`.
    pub fn send(comm: &SimpleCommunicator, dest: i32, tag: i32, bytes: Vec<u8>) -> InFlight {
        let buf = Box::into_raw(bytes.into_boxed_slice());
        // SAFETY: `buf` comes from Box::into_raw: valid and owned by this `InFlight`, which
        // frees it only after the request completed (`test`) or leaks it (`drop`).
        let data: &'static [u8] = unsafe { &*buf };
        let req = comm
            .process_at_rank(dest)
            .immediate_send_with_tag(StaticScope, data, tag);
        InFlight {
            req: Some(req),
            buf: Some(Buf::Owned(buf)),
        }
    }

    /// Posts a send of bytes `range` of the mapping `map` to `dest` with `tag`, without
    /// copying them. `range` must lie within the mapping.
    pub fn send_mapped(
        comm: &SimpleCommunicator,
        dest: i32,
        tag: i32,
        map: &Arc<Mmap>,
        range: std::ops::Range<usize>,
    ) -> InFlight {
        let map = Arc::clone(map);
        let slice: *const [u8] = &map[range];
        // SAFETY: the slice points into the mapping held by `map`, which this `InFlight`
        // keeps until the request completed (`test`) or leaks (`drop`), so the pages stay
        // mapped for as long as MPI may read them; the mapping is read-only, so nothing in
        // this process writes them meanwhile.
        let data: &'static [u8] = unsafe { &*slice };
        let req = comm
            .process_at_rank(dest)
            .immediate_send_with_tag(StaticScope, data, tag);
        InFlight {
            req: Some(req),
            buf: Some(Buf::Mapped(map)),
        }
    }

    /// Posts a receive of at most `len` bytes from `src` with `tag`.
    pub fn recv(comm: &SimpleCommunicator, src: i32, tag: i32, len: usize) -> InFlight {
        InFlight::recv_into(comm, src, tag, vec![0u8; len])
    }

    /// Posts a receive of at most `buf.len()` bytes from `src` with `tag` into `buf` (a buffer
    /// reused from an earlier receive: its pages are already in memory).
    pub fn recv_into(comm: &SimpleCommunicator, src: i32, tag: i32, buf: Vec<u8>) -> InFlight {
        let buf = Box::into_raw(buf.into_boxed_slice());
        // SAFETY: as in `send`; MPI is the only user of the buffer until the request completed.
        let data: &'static mut [u8] = unsafe { &mut *buf };
        let req = comm
            .process_at_rank(src)
            .immediate_receive_into_with_tag(StaticScope, data, tag);
        InFlight {
            req: Some(req),
            buf: Some(Buf::Owned(buf)),
        }
    }

    /// Tests the request; once it completed, returns the buffer (for a receive, the bytes
    /// received, cut to the length received; for a send from a mapping, nothing).
    pub fn test(&mut self) -> Option<Vec<u8>> {
        let req = self.req.take()?;
        match req.test() {
            Ok(status) => {
                COMPLETIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match self.buf.take() {
                    Some(Buf::Owned(raw)) => {
                        // SAFETY: the request completed, so MPI no longer uses the buffer,
                        // which came from Box::into_raw and is freed only here.
                        let mut v = unsafe { Box::from_raw(raw) }.into_vec();
                        let n = status.count(u8::equivalent_datatype()).max(0) as usize;
                        v.truncate(n.min(v.len()));
                        Some(v)
                    }
                    Some(Buf::Mapped(_)) | None => Some(Vec::new()),
                }
            }
            Err(req) => {
                self.req = Some(req);
                None
            }
        }
    }

    /// Whether the request completed (and its buffer was taken back).
    pub fn done(&self) -> bool {
        self.req.is_none()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let completed = match self.req.take() {
            None => true,
            Some(req) => match req.test() {
                Ok(_) => true,
                Err(req) => {
                    // SAFETY: the buffer stays leaked below, so MPI may still use it; the
                    // request is handed over without being freed.
                    let _ = unsafe { req.into_raw() };
                    false
                }
            },
        };
        match (self.buf.take(), completed) {
            (Some(Buf::Owned(raw)), true) => {
                // SAFETY: completed: MPI is done with the buffer, which came from
                // Box::into_raw and was not taken back (`buf` was still set).
                drop(unsafe { Box::from_raw(raw) });
            }
            // MPI may still read or write it: never freed, never unmapped.
            (Some(Buf::Mapped(map)), false) => std::mem::forget(map),
            (Some(Buf::Owned(_)), false) | (Some(Buf::Mapped(_)), true) | (None, _) => {}
        }
    }
}

/// The receiving end of a stream of `len` bytes from `src` with `tag`, in messages of at most
/// `chunk` bytes (the sender cuts the same way), at most `window` posted at once. Received
/// chunks wait in `got`, in order.
pub(crate) struct RecvStream {
    /// The sender.
    pub src: i32,
    tag: i32,
    len: u64,
    posted: u64,
    chunk: usize,
    window: usize,
    recvs: std::collections::VecDeque<InFlight>,
    /// Chunks received and not yet taken.
    pub got: std::collections::VecDeque<Vec<u8>>,
}

impl RecvStream {
    /// A stream to receive.
    pub fn new(src: i32, tag: i32, len: u64, chunk: usize, window: usize) -> RecvStream {
        RecvStream {
            src,
            tag,
            len,
            posted: 0,
            chunk,
            window,
            recvs: Default::default(),
            got: Default::default(),
        }
    }

    /// Bytes of the whole stream.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Posts receives up to the window and moves completed ones to `got`, without blocking.
    pub fn progress(&mut self, comm: &SimpleCommunicator) {
        loop {
            while self.posted < self.len && self.recvs.len() < self.window {
                let n = (self.len - self.posted).min(self.chunk as u64) as usize;
                self.recvs
                    .push_back(InFlight::recv(comm, self.src, self.tag, n));
                self.posted += n as u64;
            }
            let Some(chunk) = self.recvs.front_mut().and_then(InFlight::test) else {
                break;
            };
            self.recvs.pop_front();
            self.got.push_back(chunk);
        }
    }

    /// Whether every byte of the stream was received.
    pub fn received(&self) -> bool {
        self.posted >= self.len && self.recvs.is_empty()
    }
}

/// Bytes of a file sent to one rank straight from a read-only mapping of the file, in
/// messages of at most `chunk` bytes, at most `window` posted at once. If the file cannot be
/// mapped or is too short, zeros go instead (the receiver is waiting for the bytes; zeros fail
/// its checks) and [`SendStream::error`] says why.
pub(crate) struct SendStream {
    /// The receiver.
    pub dest: i32,
    tag: i32,
    map: Result<Arc<Mmap>, String>,
    start: u64,
    len: u64,
    sent: u64,
    chunk: usize,
    window: usize,
    sends: std::collections::VecDeque<InFlight>,
}

impl SendStream {
    /// Bytes `range` of `path` to `dest` with `tag`.
    pub fn open(
        dest: i32,
        tag: i32,
        path: &Path,
        range: std::ops::Range<u64>,
        chunk: usize,
        window: usize,
    ) -> SendStream {
        let map = map_file(path).and_then(|m| match m.len() as u64 >= range.end {
            true => Ok(Arc::new(m)),
            false => Err(format!(
                "{} ended {} bytes early",
                path.display(),
                range.end - m.len() as u64
            )),
        });
        SendStream {
            dest,
            tag,
            map,
            start: range.start,
            len: range.end.saturating_sub(range.start),
            sent: 0,
            chunk: chunk.max(1),
            window: window.max(1),
            sends: Default::default(),
        }
    }

    /// Why the file's bytes are not sent (zeros are), if they are not.
    pub fn error(&self) -> Option<&str> {
        self.map.as_ref().err().map(String::as_str)
    }

    /// Tests the sends in flight and posts more up to the window, without blocking; returns
    /// how many messages it posted.
    pub fn progress(&mut self, comm: &SimpleCommunicator) -> usize {
        for s in &mut self.sends {
            s.test();
        }
        while self.sends.front().is_some_and(InFlight::done) {
            self.sends.pop_front();
        }
        let mut posted = 0;
        while self.sent < self.len && self.sends.len() < self.window {
            let n = (self.len - self.sent).min(self.chunk as u64);
            let from = self.start + self.sent;
            let send = match &self.map {
                Ok(map) => {
                    let from = from as usize;
                    InFlight::send_mapped(comm, self.dest, self.tag, map, from..from + n as usize)
                }
                Err(_) => InFlight::send(comm, self.dest, self.tag, vec![0; n as usize]),
            };
            self.sent += n;
            self.sends.push_back(send);
            posted += 1;
        }
        posted
    }

    /// Whether every byte was sent and every send completed.
    pub fn done(&self) -> bool {
        self.sent >= self.len && self.sends.is_empty()
    }
}

/// Maps `path` (opened without following links) read-only, for sending its bytes.
fn map_file(path: &Path) -> Result<Mmap, String> {
    let file =
        durable::open_regular(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // SAFETY: the file is one of this job's own committed files (a rank file, a partner copy
    // or a parity shard) in an owner-only directory. Such files are never written again once
    // renamed into place, only removed, which leaves the mapping valid; and L1 files are not
    // recycled while a background level reads them (see `commit::checkpoint`). So the bytes
    // under the mapping neither change nor shrink.
    unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map {}: {e}", path.display()))
}
