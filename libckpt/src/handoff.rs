//! The handoff of a migrating rank's file to its new node during the migration's checkpoint.
//!
//! A migration's relaunch is started ahead (see [`crate::hold`]); each held rank that moves to
//! another node (`CKPT_HANDOFF_RANKS`) listens on a TCP port before its launch says it is
//! ready, and offers it in `control/release.N.offer-R` (owner-only, like the whole control
//! directory): host, port and two random tokens. When the running launch's rank R writes its
//! file in the checkpoint that ends the launch, it finds the offer, and a thread streams the
//! file to that port as it is written (following the writer's progress and reading what is
//! already in the page cache), then the header, written last; so the transfer runs while the
//! ranks write, sync and vote. The rank waits for the receipt before it exits. The held rank
//! writes the bytes into a temporary file in its new node's storage (page cache only: nothing
//! is synced while the checkpoint writes), and its restore, after the release, reads them from
//! there with every check, as it reads a file received over MPI at a restart, then makes it
//! durable under its L1 name while the application runs (`writeback.rs`). So the moved rank's
//! transfer leaves the freeze.
//!
//! Nothing depends on it: a missing or stale offer, a refused or broken connection, a file
//! whose header, length or table does not match the epoch's manifest, or a handoff still
//! unfinished at the release only means the file is sent at the restart as before
//! (`recover.rs`), by a rank on its old node.
//!
//! The exchange, after the sender connects: `MAGIC`, version, the sender's token (so the
//! receiver knows its peer read the offer); the receiver's token (so the sender never sends a
//! rank's state to a process that merely took over a stale offer's port); epoch, rank and the
//! sending node's name; the file after its header as records (length, bytes) in order, sent
//! from the page cache (`sendfile`), ended by an empty one; the file's length and its header;
//! one byte of receipt (1: kept). Integers are little-endian. The bytes carry no checksum of
//! their own (TCP's aside): the restore checks the file against the manifest and every
//! region's CRC-32C, as it checks a file received over MPI. Each read and write has a deadline
//! (`CKPT_IO_TIMEOUT`; 2 s for a peer to introduce itself).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::format::{WriteProgress, HEADER_LEN};
use crate::manifest::Level;
use crate::storage::copies::{CopyWriter, Places, Unsynced};
use crate::storage::durable;

/// First bytes a sender writes.
const MAGIC: &[u8; 8] = b"CKPTHAND";
/// Version of the exchange.
const VERSION: u32 = 1;
/// Bytes per read and write of the file.
const CHUNK: usize = 4 << 20;
/// How long a peer has to introduce itself (magic, version, token), so one that says nothing
/// does not keep the real sender waiting.
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// How long the sender tries to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How often the receiver looks for a connection.
const LOOK_EVERY: Duration = Duration::from_millis(2);
/// How often the sender looks for more of the file.
const FOLLOW_EVERY: Duration = Duration::from_millis(1);
/// Longest node name carried.
const MAX_NODE: usize = 255;

/// What an offer says: where to connect and the two tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    host: String,
    port: u16,
    /// The sender shows this one: 32 hex digits (`identity::new_id`).
    from_sender: String,
    /// The receiver shows this one.
    from_receiver: String,
}

/// Bytes of a token on the wire (its hex digits).
const TOKEN_LEN: usize = 32;

impl Offer {
    /// The offer at `path`, if there is one that parses (a regular file, read capped).
    pub(crate) fn read(path: &Path) -> Option<Offer> {
        let text = durable::read_capped(path, 4096).ok()?;
        Offer::parse(&String::from_utf8_lossy(&text))
    }

    fn render(&self) -> String {
        format!(
            "ckpt-handoff v{VERSION}\n{} {} {} {}\n",
            self.host, self.port, self.from_sender, self.from_receiver
        )
    }

    fn parse(text: &str) -> Option<Offer> {
        let mut lines = text.lines();
        if lines.next()? != format!("ckpt-handoff v{VERSION}") {
            return None;
        }
        let token = |t: &str| {
            (t.len() == TOKEN_LEN && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_owned())
        };
        let mut f = lines.next()?.split(' ');
        let offer = Offer {
            host: f.next().filter(|h| !h.is_empty())?.to_owned(),
            port: f.next()?.parse().ok()?,
            from_sender: token(f.next()?)?,
            from_receiver: token(f.next()?)?,
        };
        f.next().is_none().then_some(offer)
    }
}

/// Compares a token shown with the one expected, without stopping at the first difference.
fn same(shown: &[u8], token: &str) -> bool {
    shown.len() == token.len()
        && shown
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A rank's file of one epoch, received before the release and not yet durable.
#[derive(Debug)]
pub(crate) struct Handed {
    /// The epoch of the file.
    pub epoch: u64,
    /// Its bytes, in a temporary file under its L1 name's directory.
    pub file: Unsynced,
    /// Its length.
    pub bytes: u64,
    /// From the connection to the receipt.
    pub secs: f64,
    /// The node it came from.
    pub from: String,
}

/// A held rank listening for its file.
pub(crate) struct Receiver {
    offer: PathBuf,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<Handed>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens for rank `rank`'s file and offers the port in `offer` (written atomically,
    /// private). Files go under `places` (this node's storage); `io_timeout` bounds each read
    /// and write of a transfer.
    pub(crate) fn start(
        offer: &Path,
        host: &str,
        places: Places,
        rank: u32,
        io_timeout: Duration,
    ) -> io::Result<Receiver> {
        let listener = TcpListener::bind(("0.0.0.0", 0))?;
        listener.set_nonblocking(true)?;
        let o = Offer {
            host: host.to_owned(),
            port: listener.local_addr()?.port(),
            from_sender: crate::identity::new_id()?,
            from_receiver: crate::identity::new_id()?,
        };
        durable::write_atomic(offer, o.render().as_bytes())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ckpt-handoff-recv".into())
                .spawn(move || listen(listener, &o, &places, rank, io_timeout, &stop, &tx))?
        };
        Ok(Receiver {
            offer: offer.to_owned(),
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// Stops listening and returns the newest file received intact, waiting at most `limit`
    /// for a transfer under way (none should be: the release comes after the senders exited).
    /// `Err` says the transfer did not end in time.
    pub(crate) fn finish(mut self, limit: Duration) -> Result<Option<Handed>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let finished = loop {
            match self.thread.as_ref() {
                Some(t) if !t.is_finished() => {}
                _ => break true,
            }
            if t0.elapsed() >= limit {
                break false;
            }
            std::thread::sleep(LOOK_EVERY);
        };
        if !finished {
            // Left to end with the process; its temporary file goes with its writer.
            self.thread = None;
            return Err(format!(
                "the handoff of this rank's file did not end within {} s",
                limit.as_secs()
            ));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(self.done.try_iter().last())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.offer);
    }
}

/// Accepts connections until told to stop; each good transfer is sent on `tx` (a later one
/// replaces an earlier: a retried exit checkpoint sends a newer epoch).
fn listen(
    listener: TcpListener,
    offer: &Offer,
    places: &Places,
    rank: u32,
    io_timeout: Duration,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Handed>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => match receive(conn, offer, places, rank, io_timeout) {
                Ok(h) => {
                    let _ = tx.send(h);
                }
                Err(e) => eprintln!("[ckpt rank {rank}] handoff refused or broken: {e}"),
            },
            // Nothing yet (or a failed accept): look again.
            Err(_) => std::thread::sleep(LOOK_EVERY),
        }
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// One connection on the receiving side.
fn receive(
    mut conn: TcpStream,
    offer: &Offer,
    places: &Places,
    rank: u32,
    io_timeout: Duration,
) -> io::Result<Handed> {
    let t0 = Instant::now();
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(HELLO_WAIT))?;
    conn.set_write_timeout(Some(io_timeout))?;
    let mut magic = [0u8; 8];
    conn.read_exact(&mut magic)?;
    let version = read_u32(&mut conn)?;
    let mut shown = [0u8; TOKEN_LEN];
    conn.read_exact(&mut shown)?;
    if &magic != MAGIC || version != VERSION || !same(&shown, &offer.from_sender) {
        return Err(refused("a peer without this offer's token".into()));
    }
    conn.write_all(offer.from_receiver.as_bytes())?;
    conn.set_read_timeout(Some(io_timeout))?;
    let epoch = read_u64(&mut conn)?;
    let for_rank = read_u32(&mut conn)?;
    let mut n = [0u8; 1];
    conn.read_exact(&mut n)?;
    let mut from = vec![0u8; usize::from(n[0])];
    conn.read_exact(&mut from)?;
    let from = String::from_utf8_lossy(&from).into_owned();
    if for_rank != rank {
        return Err(refused(format!(
            "rank {for_rank}'s file offered to rank {rank}"
        )));
    }
    let dest = places
        .locate(Level::Local, epoch, rank)
        .ok_or_else(|| refused("no L1 place".into()))?;
    let mut out = CopyWriter::create_lazy(&dest)?;
    out.write(&[0u8; HEADER_LEN as usize])?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_u32(&mut conn)? as usize;
        if n == 0 {
            break;
        }
        if n > CHUNK {
            return Err(refused(format!("a record of {n} bytes")));
        }
        conn.read_exact(&mut buf[..n])?;
        out.write(&buf[..n])?;
    }
    let len = read_u64(&mut conn)?;
    let head = &mut buf[..HEADER_LEN as usize];
    conn.read_exact(head)?;
    let ok = len == out.written();
    if ok {
        out.write_at_start(head)?;
    }
    conn.write_all(&[u8::from(ok)])?;
    if !ok {
        return Err(refused(format!(
            "epoch {epoch}'s file from {from}: {} bytes received of {len}",
            out.written()
        )));
    }
    Ok(Handed {
        epoch,
        file: out.unsynced()?,
        bytes: len,
        secs: t0.elapsed().as_secs_f64(),
        from,
    })
}

/// A file being handed off by the rank writing it.
pub(crate) struct Sending {
    to: String,
    result: mpsc::Receiver<io::Result<u64>>,
}

/// What is handed off: this rank's file of an epoch, being written.
pub(crate) struct Source {
    /// A handle on the file (read with positioned reads only).
    pub file: File,
    /// How far its writer got.
    pub progress: Arc<WriteProgress>,
    /// The file's epoch.
    pub epoch: u64,
    /// This rank.
    pub rank: u32,
    /// This rank's node.
    pub node: String,
}

impl Sending {
    /// Starts streaming `src` as it is written to the held rank that made offer `o`.
    /// `this_host` is this rank's host (an offer from the same host is reached over the
    /// loopback).
    pub(crate) fn start(
        o: Offer,
        this_host: &str,
        src: Source,
        io_timeout: Duration,
    ) -> Option<Sending> {
        let host = if o.host == this_host {
            "127.0.0.1".to_owned()
        } else {
            o.host.clone()
        };
        let to = format!("{}:{}", o.host, o.port);
        let (tx, result) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("ckpt-handoff-send".into())
            .spawn(move || {
                let r = send(&host, &o, &src, io_timeout);
                let _ = tx.send(r);
            });
        spawned.ok().map(|_| Sending { to, result })
    }

    /// Waits, at most `limit`, until the receiver kept the file; returns the bytes sent, or
    /// why not (naming the receiver).
    pub(crate) fn wait(self, limit: Duration) -> Result<u64, String> {
        match self.result.recv_timeout(limit) {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(format!("handing the file off to {}: {e}", self.to)),
            Err(_) => Err(format!(
                "handing the file off to {}: not done within {} s",
                self.to,
                limit.as_secs()
            )),
        }
    }
}

/// Sends bytes `at..at + n` of `file` on `conn` from the page cache (`sendfile`: no copy
/// through this process).
fn send_range(conn: &TcpStream, file: &File, at: u64, n: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut off = at as libc::off_t;
    let end = at + n as u64;
    while (off as u64) < end {
        let left = (end - off as u64) as usize;
        // SAFETY: both descriptors are open for the call (borrowed), and `off` is a valid
        // offset variable the kernel advances by the bytes sent.
        let r = unsafe { libc::sendfile(conn.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
        match r {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The sending side of one transfer.
fn send(host: &str, o: &Offer, src: &Source, io_timeout: Duration) -> io::Result<u64> {
    let addr = (host, o.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| refused(format!("{host} has no address")))?;
    let mut conn = TcpStream::connect_timeout(&addr, CONNECT_WAIT)?;
    conn.set_read_timeout(Some(io_timeout))?;
    conn.set_write_timeout(Some(io_timeout))?;
    let mut hello = Vec::with_capacity(12 + TOKEN_LEN);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(o.from_sender.as_bytes());
    conn.write_all(&hello)?;
    let mut shown = [0u8; TOKEN_LEN];
    conn.read_exact(&mut shown)?;
    if !same(&shown, &o.from_receiver) {
        return Err(refused(
            "the listener does not hold the offer's token".into(),
        ));
    }
    let name = &src.node.as_bytes()[..src.node.len().min(MAX_NODE)];
    let mut head = Vec::with_capacity(13 + name.len());
    head.extend_from_slice(&src.epoch.to_le_bytes());
    head.extend_from_slice(&src.rank.to_le_bytes());
    head.push(name.len() as u8);
    head.extend_from_slice(name);
    conn.write_all(&head)?;
    // The file after its header, as the writer hands it to the OS.
    let mut sent = HEADER_LEN;
    let t0 = Instant::now();
    let len = loop {
        let complete = src.progress.complete();
        let upto = complete.unwrap_or_else(|| src.progress.written());
        while sent < upto {
            let n = (upto - sent).min(CHUNK as u64) as usize;
            conn.write_all(&(n as u32).to_le_bytes())?;
            send_range(&conn, &src.file, sent, n)?;
            sent += n as u64;
        }
        if let Some(len) = complete {
            break len;
        }
        // The writer gave up (its handle on the progress is gone without completing it; it
        // may also have completed it since `complete` was read), or stalled.
        if Arc::strong_count(&src.progress) == 1 {
            std::sync::atomic::fence(Ordering::Acquire);
            if src.progress.complete().is_none() {
                return Err(refused("the file was not completed".into()));
            }
            continue;
        }
        if t0.elapsed() > io_timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the writer stalled",
            ));
        }
        std::thread::sleep(FOLLOW_EVERY);
    };
    let mut head = [0u8; HEADER_LEN as usize];
    src.file.read_exact_at(&mut head, 0)?;
    conn.write_all(&0u32.to_le_bytes())?;
    conn.write_all(&len.to_le_bytes())?;
    conn.write_all(&head)?;
    let mut kept = [0u8; 1];
    conn.read_exact(&mut kept)?;
    let _ = conn.shutdown(Shutdown::Both);
    if kept[0] != 1 {
        return Err(refused("the receiver did not get every byte".into()));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{FileIdentity, RankFileReader, RankFileWriter, RegionKind};

    fn places(dir: &Path) -> Places {
        Places {
            local_dir: dir.join("node0"),
            shared_dir: dir.join("shared"),
            job_id: "j".into(),
        }
    }

    const T: Duration = Duration::from_secs(10);

    /// The handoff of `src` to the offer at `offer`, if there is one.
    fn start(offer: &Path, src: Source) -> Option<Sending> {
        Offer::read(offer).and_then(|o| Sending::start(o, "here", src, T))
    }

    fn id(rank: u32) -> FileIdentity {
        FileIdentity {
            job: "j".into(),
            epoch: 9,
            rank,
            nranks: 4,
        }
    }

    /// A rank file being written at `path` for `rank`, with what a handoff follows.
    fn writing(path: &Path, rank: u32) -> (RankFileWriter, Source) {
        let mut w = RankFileWriter::create(path, id(rank), "node1").unwrap();
        let src = Source {
            file: durable::open_regular(path).unwrap(),
            progress: w.follow(),
            epoch: 9,
            rank,
            node: "node1".into(),
        };
        (w, src)
    }

    #[test]
    fn offers_round_trip_and_refuse_anything_else() {
        let o = Offer {
            host: "n3".into(),
            port: 4711,
            from_sender: "07".repeat(16),
            from_receiver: "a5".repeat(16),
        };
        assert_eq!(Offer::parse(&o.render()), Some(o.clone()));
        let text = o.render();
        for bad in [
            text.replace("v1", "v2"),
            text.replace("4711", "x"),
            text.replace(&"07".repeat(16), "07"),
            text.replace(&"a5".repeat(16), &"x5".repeat(16)),
            text.replace('\n', " extra\n"),
            String::new(),
        ] {
            assert_eq!(Offer::parse(&bad), None, "{bad:?}");
        }
    }

    /// A file streamed while it is written (several records, the header last) arrives byte
    /// for byte in a temporary file of the new node's epoch directory, reads as the rank's
    /// file, and carries its L1 name only once made durable.
    #[test]
    fn a_file_handed_off_as_it_is_written_arrives_whole_and_unnamed() {
        let dir = tempfile::tempdir().unwrap();
        let offer = dir.path().join("release.2.offer-3");
        let rx = Receiver::start(&offer, "here", places(dir.path()), 3, T).unwrap();
        let src_path = dir.path().join("src.ckpt");
        let (mut w, src) = writing(&src_path, 3);
        let s = start(&offer, src).unwrap();
        let grid: Vec<u8> = (0..(CHUNK * 3 + 1234))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for part in grid.chunks(CHUNK / 2 + 7) {
            w.region("grid", RegionKind::Bulk { elem_size: 1 }, part)
                .unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        w.region("step", RegionKind::Value, &[42]).unwrap();
        let len = w.finish().unwrap().len;
        assert_eq!(s.wait(T), Ok(len));
        let h = rx.finish(T).unwrap().unwrap();
        assert_eq!((h.epoch, h.bytes, h.from.as_str()), (9, len, "node1"));
        let written = std::fs::read(&src_path).unwrap();
        assert_eq!(std::fs::read(h.file.path()).unwrap(), written);
        let r = RankFileReader::open(h.file.path(), &id(3)).unwrap();
        assert_eq!(r.verify_all().unwrap(), grid.len() as u64 + 1);
        let l1 = places(dir.path()).locate(Level::Local, 9, 3).unwrap();
        assert_eq!(h.file.dest(), l1);
        assert!(!l1.exists());
        // The offer goes with the receiver.
        assert!(!offer.exists());
    }

    /// A file written completely before the handoff starts (the launch's last epoch came from
    /// an interval checkpoint) goes whole too.
    #[test]
    fn a_file_written_already_is_handed_off_whole() {
        let dir = tempfile::tempdir().unwrap();
        let offer = dir.path().join("release.4.offer-2");
        let rx = Receiver::start(&offer, "here", places(dir.path()), 2, T).unwrap();
        let path = dir.path().join("done.ckpt");
        let mut w = RankFileWriter::create(&path, id(2), "node1").unwrap();
        w.region("grid", RegionKind::Bulk { elem_size: 1 }, &[7; 100_000])
            .unwrap();
        let len = w.finish().unwrap().len;
        let src = Source {
            file: durable::open_regular(&path).unwrap(),
            progress: Arc::new(WriteProgress::finished(len)),
            epoch: 9,
            rank: 2,
            node: "node1".into(),
        };
        assert_eq!(start(&offer, src).unwrap().wait(T), Ok(len));
        let h = rx.finish(T).unwrap().unwrap();
        assert_eq!(
            std::fs::read(h.file.path()).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }

    /// A writer that gives up: the sender stops, the receiver keeps nothing.
    #[test]
    fn a_file_never_completed_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let offer = dir.path().join("release.2.offer-0");
        let rx = Receiver::start(&offer, "here", places(dir.path()), 0, T).unwrap();
        let (mut w, src) = writing(&dir.path().join("src.ckpt"), 0);
        let s = start(&offer, src).unwrap();
        w.region("grid", RegionKind::Bulk { elem_size: 1 }, &[1; 5000])
            .unwrap();
        drop(w);
        let e = s.wait(T).unwrap_err();
        assert!(e.contains("not completed"), "{e}");
        assert!(rx.finish(T).unwrap().is_none());
    }

    /// A peer without the sender's token is turned away and the real sender still gets
    /// through; a sender facing a listener without the receiver's token sends nothing; a file
    /// for another rank is refused.
    #[test]
    fn only_holders_of_the_offer_exchange_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let offer = dir.path().join("release.2.offer-1");
        let rx = Receiver::start(&offer, "here", places(dir.path()), 1, T).unwrap();
        let o = Offer::parse(&std::fs::read_to_string(&offer).unwrap()).unwrap();
        let mut intruder = TcpStream::connect(("127.0.0.1", o.port)).unwrap();
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&[b'0'; TOKEN_LEN]);
        intruder.write_all(&hello).unwrap();
        let mut reply = [0u8; TOKEN_LEN];
        assert!(intruder.read_exact(&mut reply).is_err(), "the token leaked");
        // Rank 2's file offered to rank 1.
        let (w, src) = writing(&dir.path().join("two.ckpt"), 2);
        let wrong = start(&offer, src).unwrap();
        w.finish().unwrap();
        assert!(wrong.wait(T).is_err());
        let (mut w, src) = writing(&dir.path().join("one.ckpt"), 1);
        let s = start(&offer, src).unwrap();
        w.region("state", RegionKind::Value, b"state").unwrap();
        let len = w.finish().unwrap().len;
        assert_eq!(s.wait(T), Ok(len));
        let h = rx.finish(T).unwrap().unwrap();
        let r = RankFileReader::open(h.file.path(), &id(1)).unwrap();
        assert_eq!(r.read_vec(0).unwrap(), b"state");

        // A listener that took the port of a stale offer cannot show the receiver's token.
        let squatter = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let stale = Offer {
            port: squatter.local_addr().unwrap().port(),
            ..o
        };
        let stale_path = dir.path().join("release.5.offer-1");
        std::fs::write(&stale_path, stale.render()).unwrap();
        let got = std::thread::spawn(move || {
            let (mut c, _) = squatter.accept().unwrap();
            let mut hello = [0u8; 12 + TOKEN_LEN];
            c.read_exact(&mut hello).unwrap();
            c.write_all(&[b'9'; TOKEN_LEN]).unwrap();
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            rest
        });
        let (w, src) = writing(&dir.path().join("again.ckpt"), 1);
        let s = start(&stale_path, src).unwrap();
        w.finish().unwrap();
        let e = s.wait(T).unwrap_err();
        assert!(e.contains("does not hold the offer's token"), "{e}");
        assert!(got.join().unwrap().is_empty(), "state sent to a squatter");
    }

    /// No offer: nothing to do. An offer nobody listens on: an error soon, naming where.
    /// A receiver nobody sent to returns nothing.
    #[test]
    fn without_a_live_offer_nothing_is_handed() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("release.1.offer-0");
        let (_w, src) = writing(&dir.path().join("a.ckpt"), 0);
        assert!(start(&none, src).is_none());
        let closed = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let o = Offer {
            host: "here".into(),
            port,
            from_sender: "01".repeat(16),
            from_receiver: "02".repeat(16),
        };
        std::fs::write(&none, o.render()).unwrap();
        let (_w, src) = writing(&dir.path().join("b.ckpt"), 0);
        let e = start(&none, src).unwrap().wait(T).unwrap_err();
        assert!(e.contains(&format!("here:{port}")), "{e}");
        let rx = Receiver::start(
            &dir.path().join("release.1.offer-2"),
            "here",
            places(dir.path()),
            2,
            T,
        )
        .unwrap();
        assert!(rx.finish(T).unwrap().is_none());
    }
}
