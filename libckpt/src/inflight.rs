//! One non-blocking MPI transfer that owns its buffer for as long as MPI may use it.
//!
//! The buffer is leaked to MPI when the request is posted and taken back only once the request
//! completed. A transfer dropped while MPI may still use it (the job is failing) leaks its
//! buffer and hands the request to MPI, so nothing MPI reads or writes is ever freed.

use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// A posted send or receive and its buffer.
pub(crate) struct InFlight {
    req: Option<Request<'static, [u8], StaticScope>>,
    buf: *mut [u8],
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
            buf,
        }
    }

    /// Posts a receive of at most `len` bytes from `src` with `tag`.
    pub fn recv(comm: &SimpleCommunicator, src: i32, tag: i32, len: usize) -> InFlight {
        let buf = Box::into_raw(vec![0u8; len].into_boxed_slice());
        // SAFETY: as in `send`; MPI is the only user of the buffer until the request completed.
        let data: &'static mut [u8] = unsafe { &mut *buf };
        let req = comm
            .process_at_rank(src)
            .immediate_receive_into_with_tag(StaticScope, data, tag);
        InFlight {
            req: Some(req),
            buf,
        }
    }

    /// Tests the request; once it completed, returns the buffer (for a receive, the bytes
    /// received, cut to the length received).
    pub fn test(&mut self) -> Option<Vec<u8>> {
        let req = self.req.take()?;
        match req.test() {
            Ok(status) => {
                // SAFETY: the request completed, so MPI no longer uses the buffer, which came
                // from Box::into_raw and is freed only here.
                let mut v = unsafe { Box::from_raw(self.buf) }.into_vec();
                self.buf = std::ptr::slice_from_raw_parts_mut(std::ptr::null_mut(), 0);
                let n = status.count(u8::equivalent_datatype()).max(0) as usize;
                v.truncate(n.min(v.len()));
                Some(v)
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
        if let Some(req) = self.req.take() {
            match req.test() {
                Ok(_) => {
                    // SAFETY: completed: MPI is done with the buffer (see `test`).
                    drop(unsafe { Box::from_raw(self.buf) });
                }
                Err(req) => {
                    // SAFETY: the buffer stays leaked, so MPI may still use it; the request
                    // is handed over without being freed.
                    let _ = unsafe { req.into_raw() };
                }
            }
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
