//! The versioned on-disk layout of one rank's checkpoint file, and its writer and reader.
//!
//! This module owns the bytes of a rank file and nothing else: it does no MPI, knows nothing
//! of epochs being committed, and reports problems as [`Corruption`] without context (the
//! caller adds rank, epoch and path).
//!
//! # Layout, format version 1 (all integers little-endian)
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CKPTRANK"
//! 8       4     format version (1)
//! 12      4     header CRC-32C: bytes 0..64 with this field taken as zero
//! 16      8     epoch
//! 24      4     rank
//! 28      4     number of ranks in the job
//! 32      8     file length in bytes
//! 40      8     region table offset
//! 48      8     region table length
//! 56      4     region table CRC-32C
//! 60      4     flags (0)
//! 64..4096      zero (reserved)
//! 4096    ...   region payloads, in the order the application visits them; bulk regions
//!               start at 4096-byte boundaries (room for O_DIRECT and mmap), others at 8
//! table_off     region table: postcard encoding of [`RegionTable`] (job, node, creation
//!               time, and per region: name, kind, offset, length, CRC-32C of the payload)
//! ```
//!
//! A file is written under a temporary name, fsync'd, then renamed (see `storage::local`), so a
//! file with the final name is always complete. The header is written last, so a file whose
//! header does not check out was never finished.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Corruption;
use crate::storage::hints::Writeback;

/// Magic bytes at the start of every rank file.
pub const MAGIC: [u8; 8] = *b"CKPTRANK";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Size of the header block; payloads start here.
pub const HEADER_LEN: u64 = 4096;
/// Bytes of the header covered by its checksum.
const HEADER_FIELDS: usize = 64;
/// Alignment of bulk region payloads.
pub const BULK_ALIGN: u64 = 4096;
/// Alignment of other payloads.
const VALUE_ALIGN: u64 = 8;
/// Chunk size for checksumming while writing or reading, so data is still in cache.
const CHUNK: usize = 4 << 20;

/// What a region holds, and so how it is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionKind {
    /// Plain-old-data elements of `elem_size` bytes, stored as raw bytes.
    Bulk {
        /// Size of one element in bytes.
        elem_size: u32,
    },
    /// A small typed value, postcard-encoded.
    Value,
    /// The library's message log (messages drained at quiescence).
    MessageLog,
    /// The library's own state (counters, agreement state).
    LibState,
}

/// One entry of the region table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    /// Region name, unique within the file.
    pub name: String,
    /// What the payload holds.
    pub kind: RegionKind,
    /// Offset of the payload in the file.
    pub offset: u64,
    /// Payload length in bytes.
    pub len: u64,
    /// CRC-32C of the payload.
    pub crc: u32,
}

/// The region table, stored after the payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionTable {
    /// Job identifier.
    pub job: String,
    /// Node the file was written on.
    pub node: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Regions in payload order.
    pub regions: Vec<RegionEntry>,
}

/// The fixed header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Epoch number.
    pub epoch: u64,
    /// Rank.
    pub rank: u32,
    /// Ranks in the job.
    pub nranks: u32,
    /// Total file length.
    pub file_len: u64,
    /// Offset of the region table.
    pub table_off: u64,
    /// Length of the region table.
    pub table_len: u64,
    /// CRC-32C of the region table.
    pub table_crc: u32,
}

impl Header {
    /// Encodes the header block's checked fields.
    pub fn encode(&self) -> [u8; HEADER_FIELDS] {
        let mut b = [0u8; HEADER_FIELDS];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..28].copy_from_slice(&self.rank.to_le_bytes());
        b[28..32].copy_from_slice(&self.nranks.to_le_bytes());
        b[32..40].copy_from_slice(&self.file_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.table_off.to_le_bytes());
        b[48..56].copy_from_slice(&self.table_len.to_le_bytes());
        b[56..60].copy_from_slice(&self.table_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks the header's magic, version and checksum.
    pub fn decode(b: &[u8]) -> Result<Header, Corruption> {
        if b.len() < HEADER_FIELDS || b[0..8] != MAGIC {
            return Err(Corruption::BadMagic {
                what: "rank checkpoint file",
                found: b[..b.len().min(8)].to_vec(),
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(Corruption::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let stored = u32_at(12);
        let mut copy = [0u8; HEADER_FIELDS];
        copy.copy_from_slice(&b[..HEADER_FIELDS]);
        copy[12..16].fill(0);
        let computed = crc32c::crc32c(&copy);
        if stored != computed {
            return Err(Corruption::Checksum {
                what: "header".into(),
                stored,
                computed,
            });
        }
        Ok(Header {
            epoch: u64_at(16),
            rank: u32_at(24),
            nranks: u32_at(28),
            file_len: u64_at(32),
            table_off: u64_at(40),
            table_len: u64_at(48),
            table_crc: u32_at(56),
        })
    }
}

/// Identity of a rank file: who wrote it, for which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    /// Job identifier.
    pub job: String,
    /// Epoch.
    pub epoch: u64,
    /// Rank.
    pub rank: u32,
    /// Ranks in the job.
    pub nranks: u32,
}

/// What a finished file looks like, for the commit vote and the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    /// Total length in bytes.
    pub len: u64,
    /// CRC-32C of the region table (covers every region's checksum).
    pub table_crc: u32,
    /// Payload bytes (sum of region lengths).
    pub payload: u64,
}

/// Error from reading or writing a rank file: IO, or bytes that do not check out.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The OS refused.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The bytes are wrong.
    #[error("{0}")]
    Corrupt(#[from] Corruption),
}

/// How far a [`RankFileWriter`] got, for a reader that follows the file as it is written (the
/// handoff of a migrating rank's file): the bytes from the start of the file that are in it
/// (the header's excepted: it is written last), and the file's length once it is complete.
#[derive(Debug, Default)]
pub struct WriteProgress {
    written: AtomicU64,
    /// 0 until complete (a complete file is never empty: it has a header).
    complete: AtomicU64,
}

impl WriteProgress {
    /// The progress of a file written completely already, `len` bytes long.
    pub fn finished(len: u64) -> WriteProgress {
        WriteProgress {
            written: AtomicU64::new(len),
            complete: AtomicU64::new(len),
        }
    }

    /// Bytes from the start of the file that were handed to the OS.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// The file's length once it is complete (its header written too).
    pub fn complete(&self) -> Option<u64> {
        Some(self.complete.load(Ordering::Acquire)).filter(|&n| n > 0)
    }
}

/// Streams regions into a new rank file. Call [`RankFileWriter::finish`] to make it complete.
pub struct RankFileWriter {
    out: BufWriter<File>,
    /// Reported to a follower, if any ([`RankFileWriter::follow`]).
    progress: Option<Arc<WriteProgress>>,
    /// Writeback started as the file grows, so `finish`'s fsync waits for the tail only.
    writeback: Writeback,
    /// The file was recycled: bytes past the new end must be cut off.
    reused: bool,
    pos: u64,
    id: FileIdentity,
    node: String,
    regions: Vec<RegionEntry>,
}

impl RankFileWriter {
    /// Creates (truncating) `path` for the file `id`, written on `node`.
    pub fn create(path: &Path, id: FileIdentity, node: &str) -> io::Result<Self> {
        Self::open(path, id, node, false)
    }

    /// Opens `path`, an existing recycled file, and overwrites it in place (its blocks are
    /// already allocated); `finish` cuts whatever lies past the new end.
    pub fn overwrite(path: &Path, id: FileIdentity, node: &str) -> io::Result<Self> {
        Self::open(path, id, node, true)
    }

    fn open(path: &Path, id: FileIdentity, node: &str, reused: bool) -> io::Result<Self> {
        // Never blocks, and refuses a FIFO or link where the file should be.
        let file = crate::storage::durable::create_regular(path, !reused)?;
        Self::with_file(file, id, node, reused)
    }

    /// Writes the file `id` into `file`, opened by the caller (a new temporary file, or a
    /// recycled one when `reused`: then `finish` cuts whatever lies past the new end).
    pub fn with_file(file: File, id: FileIdentity, node: &str, reused: bool) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN as usize])?;
        Ok(RankFileWriter {
            out,
            progress: None,
            writeback: Writeback::default(),
            reused,
            pos: HEADER_LEN,
            id,
            node: node.to_owned(),
            regions: Vec::new(),
        })
    }

    /// Appends a region's payload, checksumming it on the way.
    pub fn region(&mut self, name: &str, kind: RegionKind, bytes: &[u8]) -> io::Result<()> {
        let align = match kind {
            RegionKind::Bulk { .. } => BULK_ALIGN,
            _ => VALUE_ALIGN,
        };
        self.pad_to(align)?;
        let offset = self.pos;
        let mut crc = 0u32;
        let mut at = self.pos;
        for chunk in bytes.chunks(CHUNK) {
            crc = crc32c::crc32c_append(crc, chunk);
            self.out.write_all(chunk)?;
            at += chunk.len() as u64;
            let handed = at - self.out.buffer().len() as u64;
            self.writeback.wrote(self.out.get_ref(), handed);
            if let Some(p) = &self.progress {
                p.written.store(handed, Ordering::Release);
            }
        }
        self.pos += bytes.len() as u64;
        self.regions.push(RegionEntry {
            name: name.to_owned(),
            kind,
            offset,
            len: bytes.len() as u64,
            crc,
        });
        Ok(())
    }

    /// The writer's progress, for a thread that reads the file as it is written.
    pub fn follow(&mut self) -> Arc<WriteProgress> {
        self.progress.get_or_insert_with(Default::default).clone()
    }

    /// Number of regions written so far.
    pub fn regions_written(&self) -> usize {
        self.regions.len()
    }

    /// Flushes buffered bytes to the OS (used before an injected fault, so the half-written
    /// file really is on storage).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        let pad = self.pos.next_multiple_of(align) - self.pos;
        if pad > 0 {
            const ZEROS: [u8; BULK_ALIGN as usize] = [0; BULK_ALIGN as usize];
            self.out.write_all(&ZEROS[..pad as usize])?;
            self.pos += pad;
        }
        Ok(())
    }

    /// Writes the region table and the header, then fsyncs the file. The caller renames it.
    pub fn finish(mut self) -> io::Result<FileSummary> {
        self.pad_to(VALUE_ALIGN)?;
        let table = RegionTable {
            job: self.id.job.clone(),
            node: self.node.clone(),
            created_unix_ms: crate::util::unix_ms(),
            regions: std::mem::take(&mut self.regions),
        };
        let table_bytes = postcard::to_stdvec(&table).map_err(io::Error::other)?;
        let table_off = self.pos;
        self.out.write_all(&table_bytes)?;
        self.pos += table_bytes.len() as u64;
        let header = Header {
            epoch: self.id.epoch,
            rank: self.id.rank,
            nranks: self.id.nranks,
            file_len: self.pos,
            table_off,
            table_len: table_bytes.len() as u64,
            table_crc: crc32c::crc32c(&table_bytes),
        };
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        if self.reused {
            file.set_len(self.pos)?;
        }
        file.write_all_at(&header.encode(), 0)?;
        if let Some(p) = &self.progress {
            p.written.store(header.file_len, Ordering::Release);
            p.complete.store(header.file_len, Ordering::Release);
        }
        file.sync_all()?;
        Ok(FileSummary {
            len: header.file_len,
            table_crc: header.table_crc,
            payload: table.regions.iter().map(|r| r.len).sum(),
        })
    }
}

/// Reads a rank file: checks header and table on open, then each region's checksum as it is
/// read into the caller's memory (each byte is read once).
pub struct RankFileReader {
    file: File,
    header: Header,
    table: RegionTable,
}

impl RankFileReader {
    /// Opens `path` and checks that it is a complete, intact file of `expect`.
    /// Anything but a regular file at `path` (a FIFO, a link) is refused without blocking.
    pub fn open(path: &Path, expect: &FileIdentity) -> Result<Self, FileError> {
        let file = crate::storage::durable::open_regular(path)?;
        let actual = file.metadata()?.len();
        let mut block = vec![0u8; HEADER_FIELDS];
        let n = read_up_to(&file, &mut block, 0)?;
        if n < HEADER_FIELDS {
            if n >= 8 && block[..8] == MAGIC {
                return Err(Corruption::Truncated {
                    expected: HEADER_LEN,
                    actual,
                }
                .into());
            }
            return Err(Corruption::BadMagic {
                what: "rank checkpoint file",
                found: block[..n.min(8)].to_vec(),
            }
            .into());
        }
        let header = Header::decode(&block)?;
        if header.file_len != actual {
            return Err(Corruption::Truncated {
                expected: header.file_len,
                actual,
            }
            .into());
        }
        let end = header.table_off.checked_add(header.table_len);
        if header.table_off < HEADER_LEN || end != Some(header.file_len) {
            return Err(Corruption::Malformed {
                what: "header",
                detail: format!(
                    "region table at {}+{} does not end the {}-byte file",
                    header.table_off, header.table_len, header.file_len
                ),
            }
            .into());
        }
        let mut tbytes = vec![0u8; header.table_len as usize];
        file.read_exact_at(&mut tbytes, header.table_off)?;
        let computed = crc32c::crc32c(&tbytes);
        if computed != header.table_crc {
            return Err(Corruption::Checksum {
                what: "region table".into(),
                stored: header.table_crc,
                computed,
            }
            .into());
        }
        let table: RegionTable =
            postcard::from_bytes(&tbytes).map_err(|e| Corruption::Malformed {
                what: "region table",
                detail: e.to_string(),
            })?;
        for r in &table.regions {
            if r.offset < HEADER_LEN
                || r.offset
                    .checked_add(r.len)
                    .is_none_or(|e| e > header.table_off)
            {
                return Err(Corruption::Malformed {
                    what: "region table",
                    detail: format!(
                        "region {:?} at {}+{} lies outside the payload",
                        r.name, r.offset, r.len
                    ),
                }
                .into());
            }
        }
        let found = FileIdentity {
            job: table.job.clone(),
            epoch: header.epoch,
            rank: header.rank,
            nranks: header.nranks,
        };
        check_identity(&found, expect)?;
        Ok(RankFileReader {
            file,
            header,
            table,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's region table.
    pub fn table(&self) -> &RegionTable {
        &self.table
    }

    /// Index and entry of the region called `name`.
    pub fn find(&self, name: &str) -> Option<(usize, &RegionEntry)> {
        self.table
            .regions
            .iter()
            .enumerate()
            .find(|(_, r)| r.name == name)
    }

    /// Reads region `idx` into `dest` (whose length must equal the region's) and checks its CRC.
    pub fn read_into(&self, idx: usize, dest: &mut [u8]) -> Result<(), FileError> {
        let entry = &self.table.regions[idx];
        debug_assert_eq!(entry.len, dest.len() as u64);
        let mut crc = 0u32;
        let mut off = entry.offset;
        for chunk in dest.chunks_mut(CHUNK) {
            self.file.read_exact_at(chunk, off)?;
            crc = crc32c::crc32c_append(crc, chunk);
            off += chunk.len() as u64;
        }
        check_crc(entry, crc)
    }

    /// Checks region `idx`'s CRC, reading it through `buf` (one `buf.len()` piece at a time,
    /// so memory stays bounded whatever the region's size); returns its length.
    pub fn verify_region(&self, idx: usize, buf: &mut [u8]) -> Result<u64, FileError> {
        let entry = &self.table.regions[idx];
        let mut crc = 0u32;
        let mut off = entry.offset;
        let end = entry.offset + entry.len;
        while off < end {
            let n = (end - off).min(buf.len().max(1) as u64) as usize;
            let piece = &mut buf[..n];
            self.file.read_exact_at(piece, off)?;
            crc = crc32c::crc32c_append(crc, piece);
            off += n as u64;
        }
        check_crc(entry, crc)?;
        Ok(entry.len)
    }

    /// Reads region `idx` into a new buffer and checks its CRC.
    pub fn read_vec(&self, idx: usize) -> Result<Vec<u8>, FileError> {
        let mut buf = vec![0u8; self.table.regions[idx].len as usize];
        self.read_into(idx, &mut buf)?;
        Ok(buf)
    }

    /// Reads and checks every region (what `ckpt verify` does) through one buffer of at most
    /// [`VERIFY_CHUNK`] bytes; returns the payload bytes.
    pub fn verify_all(&self) -> Result<u64, FileError> {
        let largest = self.table.regions.iter().map(|r| r.len).max().unwrap_or(0);
        let mut buf = vec![0u8; largest.min(VERIFY_CHUNK as u64) as usize];
        let mut total = 0;
        for i in 0..self.table.regions.len() {
            total += self.verify_region(i, &mut buf)?;
        }
        Ok(total)
    }
}

/// Largest piece of a region [`RankFileReader::verify_all`] holds in memory at once.
pub const VERIFY_CHUNK: usize = CHUNK;

fn check_crc(entry: &RegionEntry, crc: u32) -> Result<(), FileError> {
    if crc != entry.crc {
        return Err(Corruption::Checksum {
            what: format!("region {:?}", entry.name),
            stored: entry.crc,
            computed: crc,
        }
        .into());
    }
    Ok(())
}

fn check_identity(found: &FileIdentity, expect: &FileIdentity) -> Result<(), Corruption> {
    let foreign = |field, f: String, e: String| Corruption::Foreign {
        field,
        found: f,
        expected: e,
    };
    if found.job != expect.job {
        return Err(foreign("job", found.job.clone(), expect.job.clone()));
    }
    if found.epoch != expect.epoch {
        return Err(foreign(
            "epoch",
            found.epoch.to_string(),
            expect.epoch.to_string(),
        ));
    }
    if found.rank != expect.rank {
        return Err(foreign(
            "rank",
            found.rank.to_string(),
            expect.rank.to_string(),
        ));
    }
    if found.nranks != expect.nranks {
        return Err(foreign(
            "ranks",
            found.nranks.to_string(),
            expect.nranks.to_string(),
        ));
    }
    Ok(())
}

/// Reads as many bytes as are available up to `buf.len()` at `off`.
fn read_up_to(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs::{self, OpenOptions};
    use std::ops::Range;

    fn id() -> FileIdentity {
        FileIdentity {
            job: "job-7".into(),
            epoch: 12,
            rank: 3,
            nranks: 8,
        }
    }

    /// Deterministic bytes that are not all alike (xorshift).
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn f64s(n: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n).map(|i| (i as f64).sin() * 1e3 + i as f64).collect();
        for (i, x) in [f64::NAN, -0.0, f64::INFINITY, f64::MIN_POSITIVE]
            .into_iter()
            .enumerate()
        {
            if i < v.len() {
                v[i] = x;
            }
        }
        v
    }

    type Spec = (String, RegionKind, Vec<u8>);

    fn reg(name: &str, kind: RegionKind, bytes: Vec<u8>) -> Spec {
        (name.to_owned(), kind, bytes)
    }

    fn write(path: &Path, id: &FileIdentity, regions: &[Spec]) -> FileSummary {
        let mut w = RankFileWriter::create(path, id.clone(), "node-a").unwrap();
        for (name, kind, bytes) in regions {
            w.region(name, *kind, bytes).unwrap();
        }
        assert_eq!(w.regions_written(), regions.len());
        w.finish().unwrap()
    }

    /// Opens `path`, expecting a corruption; an IO error or a successful open fails the test.
    fn open_err(path: &Path, expect: &FileIdentity) -> Corruption {
        match RankFileReader::open(path, expect) {
            Ok(_) => panic!("{} opened but should not have", path.display()),
            Err(FileError::Corrupt(c)) => c,
            Err(FileError::Io(e)) => panic!("IO error instead of a corruption: {e}"),
        }
    }

    /// What restore does: open, then read every region. Outer error: `open` refused the file;
    /// inner: that region's read refused it. IO errors fail the test (corruption must be
    /// reported as such).
    #[allow(clippy::type_complexity)]
    fn check(
        path: &Path,
        expect: &FileIdentity,
    ) -> Result<Vec<Result<Vec<u8>, Corruption>>, Corruption> {
        let r = match RankFileReader::open(path, expect) {
            Ok(r) => r,
            Err(FileError::Corrupt(c)) => return Err(c),
            Err(FileError::Io(e)) => panic!("IO error instead of a corruption: {e}"),
        };
        Ok((0..r.table().regions.len())
            .map(|i| match r.read_vec(i) {
                Ok(b) => Ok(b),
                Err(FileError::Corrupt(c)) => Err(c),
                Err(FileError::Io(e)) => panic!("IO error instead of a corruption: {e}"),
            })
            .collect())
    }

    /// Bytes this thread has read with read calls so far (`rchar` of /proc/thread-self/io).
    fn thread_rchar() -> u64 {
        let io = fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn restoring_reads_each_byte_once() {
        // 8 MiB of bulk data and a small value: opening and reading every region straight
        // into memory reads the file once (plus this thread's read of /proc, a few hundred
        // bytes), not twice (as a read into a buffer and a second pass to check would).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        let bulk = noise(5, 8 << 20);
        let s = write(
            &path,
            &id(),
            &[
                reg("u", RegionKind::Bulk { elem_size: 8 }, bulk.clone()),
                reg("step", RegionKind::Value, vec![7; 9]),
            ],
        );
        let before = thread_rchar();
        let r = RankFileReader::open(&path, &id()).unwrap();
        let mut dest = vec![0u8; bulk.len()];
        r.read_into(0, &mut dest).unwrap();
        let small = r.read_vec(1).unwrap();
        let read = thread_rchar() - before;
        assert!(dest == bulk && small == vec![7; 9]);
        assert!(
            read >= bulk.len() as u64 && read <= s.len + 4096,
            "read {read} bytes of a {}-byte file",
            s.len
        );
    }

    /// Counts, per thread, the largest allocation made since [`largest_alloc_reset`].
    struct Counting;

    thread_local! {
        static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the thread-local
    // `Cell` is const-initialised, so recording a size allocates nothing.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
            // SAFETY: the caller's obligations are passed on unchanged.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    fn largest_alloc_reset() {
        LARGEST.with(|l| l.set(0));
    }

    fn largest_alloc() -> usize {
        LARGEST.with(|l| l.get())
    }

    #[test]
    fn verifying_a_large_region_does_not_hold_it_in_memory() {
        // A 64 MiB region is checked through one buffer of VERIFY_CHUNK bytes: the largest
        // allocation while verifying stays at that size, not the region's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.ckpt");
        let big = noise(11, 64 << 20);
        write(
            &path,
            &id(),
            &[
                reg("big", RegionKind::Bulk { elem_size: 1 }, big),
                reg("small", RegionKind::Value, vec![3; 5]),
            ],
        );
        let r = RankFileReader::open(&path, &id()).unwrap();
        largest_alloc_reset();
        assert_eq!(r.verify_all().unwrap(), (64 << 20) + 5);
        let largest = largest_alloc();
        assert!(
            largest <= VERIFY_CHUNK,
            "largest allocation while verifying: {largest} bytes"
        );
        // And a damaged byte in the middle of it is still found.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let off = r.table().regions[0].offset + (40 << 20);
        let mut b = [0u8];
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[!b[0]], off).unwrap();
        let err = RankFileReader::open(&path, &id())
            .unwrap()
            .verify_all()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("checksum mismatch in region \"big\""),
            "{err}"
        );
    }

    fn layout(path: &Path) -> (Header, RegionTable) {
        let r = RankFileReader::open(path, &id()).unwrap();
        (*r.header(), r.table().clone())
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Part {
        Header,
        Region(usize),
        Table,
    }

    /// The byte ranges a checksum covers. Not covered, by design: the reserved part of the
    /// header block (64..4096; the header CRC covers only the fields) and the zero padding
    /// before aligned payloads and before the table. Flipping bits there goes unnoticed, and
    /// does no harm, since nothing reads those bytes.
    fn covered(h: &Header, t: &RegionTable) -> Vec<(Range<u64>, Part)> {
        let mut v = vec![(0..HEADER_FIELDS as u64, Part::Header)];
        for (i, r) in t.regions.iter().enumerate() {
            v.push((r.offset..r.offset + r.len, Part::Region(i)));
        }
        v.push((h.table_off..h.table_off + h.table_len, Part::Table));
        v
    }

    /// Asserts that the file at `path`, which is `clean` with bit `bit` of byte `pos` (in
    /// `part`) flipped, is refused, and with the error that names the damaged part.
    fn assert_flip_detected(
        path: &Path,
        clean: &[u8],
        pos: u64,
        bit: u32,
        part: Part,
        t: &RegionTable,
    ) {
        let res = check(path, &id());
        let ctx = format!("bit {bit} of byte {pos} ({part:?})");
        match part {
            Part::Header => {
                let err = res.expect_err(&ctx);
                let mut hb = [0u8; HEADER_FIELDS];
                hb.copy_from_slice(&clean[..HEADER_FIELDS]);
                hb[pos as usize] ^= 1 << bit;
                let u32_at = |o: usize| u32::from_le_bytes(hb[o..o + 4].try_into().unwrap());
                let expected = match pos {
                    0..8 => Corruption::BadMagic {
                        what: "rank checkpoint file",
                        found: hb[..8].to_vec(),
                    },
                    8..12 => Corruption::UnsupportedVersion {
                        found: u32_at(8),
                        supported: 1,
                    },
                    _ => {
                        let stored = u32_at(12);
                        hb[12..16].fill(0);
                        Corruption::Checksum {
                            what: "header".into(),
                            stored,
                            computed: crc32c::crc32c(&hb),
                        }
                    }
                };
                assert_eq!(err, expected, "{ctx}");
            }
            Part::Table => {
                let err = res.expect_err(&ctx);
                assert!(
                    matches!(&err, Corruption::Checksum { what, .. } if what == "region table"),
                    "{ctx}: {err:?}"
                );
            }
            Part::Region(i) => {
                let reads = res.unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
                for (j, read) in reads.iter().enumerate() {
                    if j == i {
                        let want = format!("region {:?}", t.regions[i].name);
                        assert!(
                            matches!(read, Err(Corruption::Checksum { what, .. }) if *what == want),
                            "{ctx}: {read:?}"
                        );
                    } else {
                        assert!(
                            read.is_ok(),
                            "{ctx}: undamaged region {j} refused: {read:?}"
                        );
                    }
                }
            }
        }
    }

    /// Regions of a small file: every kind, an empty one, odd sizes.
    fn small_regions() -> Vec<Spec> {
        vec![
            reg(
                "u",
                RegionKind::Bulk { elem_size: 8 },
                bytemuck::cast_slice(&f64s(5)).to_vec(),
            ),
            reg("empty", RegionKind::Bulk { elem_size: 8 }, Vec::new()),
            reg(
                "step",
                RegionKind::Value,
                postcard::to_stdvec(&(7u64, "seven")).unwrap(),
            ),
            reg("mask", RegionKind::Bulk { elem_size: 1 }, noise(1, 13)),
            reg("log", RegionKind::MessageLog, noise(2, 21)),
            reg("lib", RegionKind::LibState, noise(3, 9)),
        ]
    }

    #[test]
    fn round_trip_preserves_every_region_and_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rank-000003.ckpt");
        let small = f64s(1000);
        // Straddles the 4 MiB checksum chunk, and not at an element boundary of a chunk.
        let big = f64s(CHUNK / 8 + 1001);
        let huge = noise(9, 2 * CHUNK + 13);
        let value = (42u64, String::from("restart here"));
        let regions = vec![
            reg("empty", RegionKind::Bulk { elem_size: 8 }, Vec::new()),
            reg(
                "small",
                RegionKind::Bulk { elem_size: 8 },
                bytemuck::cast_slice(&small).to_vec(),
            ),
            reg("one", RegionKind::Bulk { elem_size: 1 }, vec![0xa5]),
            reg(
                "step",
                RegionKind::Value,
                postcard::to_stdvec(&value).unwrap(),
            ),
            reg(
                "big",
                RegionKind::Bulk { elem_size: 8 },
                bytemuck::cast_slice(&big).to_vec(),
            ),
            reg("odd", RegionKind::Bulk { elem_size: 1 }, noise(4, 4097)),
            reg("huge", RegionKind::Bulk { elem_size: 1 }, huge.clone()),
            reg("empty value", RegionKind::Value, Vec::new()),
            reg("log", RegionKind::MessageLog, noise(5, 100)),
            reg("lib", RegionKind::LibState, noise(6, 77)),
        ];
        let before = crate::util::unix_ms();
        let summary = write(&path, &id(), &regions);
        let raw = fs::read(&path).unwrap();

        let payload: u64 = regions.iter().map(|r| r.2.len() as u64).sum();
        assert_eq!(summary.len, fs::metadata(&path).unwrap().len());
        assert_eq!(summary.len, raw.len() as u64);
        assert_eq!(summary.payload, payload);

        // Header block: magic, version, reserved zone zero.
        assert_eq!(raw[0..8], MAGIC);
        assert_eq!(raw[8..12], 1u32.to_le_bytes());
        assert!(raw[HEADER_FIELDS..HEADER_LEN as usize]
            .iter()
            .all(|&b| b == 0));

        let r = RankFileReader::open(&path, &id()).unwrap();
        let h = *r.header();
        assert_eq!(Header::decode(&raw[..HEADER_FIELDS]).unwrap(), h);
        assert_eq!((h.epoch, h.rank, h.nranks), (12, 3, 8));
        assert_eq!(h.file_len, summary.len);
        assert_eq!(h.table_crc, summary.table_crc);
        assert_eq!(h.table_off + h.table_len, h.file_len);
        let table_bytes = &raw[h.table_off as usize..];
        assert_eq!(crc32c::crc32c(table_bytes), h.table_crc);
        assert_eq!(
            &postcard::from_bytes::<RegionTable>(table_bytes).unwrap(),
            r.table()
        );

        let t = r.table();
        assert_eq!(t.job, "job-7");
        assert_eq!(t.node, "node-a");
        assert!(t.created_unix_ms >= before && t.created_unix_ms <= crate::util::unix_ms());
        assert_eq!(t.regions.len(), regions.len());
        // Payloads in visit order, each at the first suitably aligned offset after the last.
        let mut end = HEADER_LEN;
        for (i, ((name, kind, bytes), e)) in regions.iter().zip(&t.regions).enumerate() {
            assert_eq!((&e.name, e.kind, e.len), (name, *kind, bytes.len() as u64));
            let align = if matches!(kind, RegionKind::Bulk { .. }) {
                BULK_ALIGN
            } else {
                8
            };
            assert_eq!(e.offset % align, 0, "{name}");
            assert_eq!(e.offset, end.next_multiple_of(align), "{name}");
            end = e.offset + e.len;
            // The stored CRC is that of the whole payload, however it was chunked.
            assert_eq!(e.crc, crc32c::crc32c(bytes), "{name}");
            assert_eq!(&raw[e.offset as usize..end as usize], &bytes[..], "{name}");
            assert_eq!(r.find(name).map(|(j, _)| j), Some(i));
            assert_eq!(&r.read_vec(i).unwrap(), bytes, "{name}");
            let mut into = vec![0xffu8; bytes.len()];
            r.read_into(i, &mut into).unwrap();
            assert_eq!(&into, bytes, "{name}");
        }
        assert_eq!(h.table_off, end.next_multiple_of(8));
        assert!(r.find("absent").is_none());

        // Typed reads straight into application memory.
        for (name, want) in [("small", &small), ("big", &big)] {
            let (i, _) = r.find(name).unwrap();
            let mut back = vec![0f64; want.len()];
            r.read_into(i, bytemuck::cast_slice_mut(&mut back)).unwrap();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(want), "{name}");
        }
        let (i, _) = r.find("step").unwrap();
        let back: (u64, String) = postcard::from_bytes(&r.read_vec(i).unwrap()).unwrap();
        assert_eq!(back, value);

        assert_eq!(r.verify_all().unwrap(), payload);
    }

    #[test]
    fn overwrite_cuts_a_recycled_longer_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recycled");
        // A previous epoch's larger file, then this epoch written over it in place.
        let old = FileIdentity {
            job: "j".into(),
            epoch: 1,
            rank: 0,
            nranks: 1,
        };
        let mut w = RankFileWriter::create(&path, old, "n").unwrap();
        w.region(
            "big",
            RegionKind::Bulk { elem_size: 1 },
            &vec![0xAB; 3 << 20],
        )
        .unwrap();
        w.finish().unwrap();
        let id = FileIdentity {
            job: "j".into(),
            epoch: 2,
            rank: 0,
            nranks: 1,
        };
        let mut w = RankFileWriter::overwrite(&path, id.clone(), "n").unwrap();
        w.region("small", RegionKind::Bulk { elem_size: 1 }, &[7u8; 5000])
            .unwrap();
        let summary = w.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.len);
        let r = RankFileReader::open(&path, &id).unwrap();
        assert_eq!(r.table().regions.len(), 1);
        assert_eq!(r.read_vec(0).unwrap(), vec![7u8; 5000]);
    }

    #[test]
    fn create_replaces_a_longer_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        fs::write(&path, noise(1, 3 * HEADER_LEN as usize)).unwrap();
        let s = write(&path, &id(), &[reg("x", RegionKind::Value, vec![1, 2, 3])]);
        assert_eq!(s.len, fs::metadata(&path).unwrap().len());
        assert_eq!(
            RankFileReader::open(&path, &id())
                .unwrap()
                .verify_all()
                .unwrap(),
            3
        );
    }

    /// A FIFO where a rank file (or its temporary name) should be would block a plain open for
    /// ever: the reader and both writers refuse it at once, naming what they found.
    #[test]
    fn a_fifo_is_not_a_rank_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        crate::storage::durable::mkfifo(&path);
        match RankFileReader::open(&path, &id()) {
            Err(FileError::Io(e)) => assert_eq!(e.to_string(), "not a regular file (a FIFO)"),
            other => panic!("expected an IO error, got {:?}", other.err()),
        }
        for w in [
            RankFileWriter::create(&path, id(), "n"),
            RankFileWriter::overwrite(&path, id(), "n"),
        ] {
            let e = w.err().expect("a FIFO is refused");
            assert_eq!(e.to_string(), "not a regular file (a FIFO)");
        }
    }

    #[test]
    fn unfinished_file_has_no_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        let mut w = RankFileWriter::create(&path, id(), "node-a").unwrap();
        w.region("u", RegionKind::Bulk { elem_size: 1 }, &noise(1, 5000))
            .unwrap();
        w.flush().unwrap();
        drop(w);
        assert_eq!(
            open_err(&path, &id()),
            Corruption::BadMagic {
                what: "rank checkpoint file",
                found: vec![0; 8],
            }
        );
    }

    #[test]
    fn unchecked_bytes_are_only_reserved_space_and_padding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        write(&path, &id(), &small_regions());
        let raw = fs::read(&path).unwrap();
        let (h, t) = layout(&path);
        let mut ranges: Vec<Range<u64>> = covered(&h, &t).into_iter().map(|(r, _)| r).collect();
        ranges.sort_by_key(|r| (r.start, r.end));
        let mut gaps = Vec::new();
        let mut pos = 0;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            assert!(r.start >= pos, "checked ranges overlap: {ranges:?}");
            if r.start > pos {
                gaps.push(pos..r.start);
            }
            pos = r.end;
        }
        assert_eq!(pos, raw.len() as u64, "the table ends the file");
        assert_eq!(
            gaps[0],
            HEADER_FIELDS as u64..HEADER_LEN,
            "reserved header space"
        );
        for g in &gaps[1..] {
            assert!(
                g.end - g.start < BULK_ALIGN,
                "padding {g:?} longer than any alignment"
            );
        }
        for g in &gaps {
            assert!(
                raw[g.start as usize..g.end as usize]
                    .iter()
                    .all(|&b| b == 0),
                "{g:?} not zero"
            );
        }
    }

    #[test]
    fn every_covered_bit_flip_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        write(&path, &id(), &small_regions());
        let clean = fs::read(&path).unwrap();
        let (h, t) = layout(&path);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let mut flips = 0;
        for (range, part) in covered(&h, &t) {
            for pos in range {
                for bit in 0..8 {
                    f.write_all_at(&[clean[pos as usize] ^ (1 << bit)], pos)
                        .unwrap();
                    assert_flip_detected(&path, &clean, pos, bit, part, &t);
                    f.write_all_at(&[clean[pos as usize]], pos).unwrap();
                    flips += 1;
                }
            }
        }
        assert!(flips > 8 * (HEADER_FIELDS + 100), "only {flips} flips");
        assert!(check(&path, &id()).unwrap().iter().all(Result::is_ok));
    }

    #[test]
    fn every_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        let len = write(&path, &id(), &small_regions()).len;
        let clean = fs::read(&path).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        for cut in (0..len).rev() {
            f.set_len(cut).unwrap();
            let expected = if cut < 8 {
                Corruption::BadMagic {
                    what: "rank checkpoint file",
                    found: clean[..cut as usize].to_vec(),
                }
            } else if cut < HEADER_FIELDS as u64 {
                Corruption::Truncated {
                    expected: HEADER_LEN,
                    actual: cut,
                }
            } else {
                Corruption::Truncated {
                    expected: len,
                    actual: cut,
                }
            };
            assert_eq!(open_err(&path, &id()), expected, "cut at {cut}");
        }
    }

    #[test]
    fn appended_bytes_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        let len = write(&path, &id(), &small_regions()).len;
        let clean = fs::read(&path).unwrap();
        for extra in [vec![0], vec![0; 8], noise(1, 7), noise(2, 4096)] {
            let mut bytes = clean.clone();
            bytes.extend_from_slice(&extra);
            fs::write(&path, &bytes).unwrap();
            assert_eq!(
                open_err(&path, &id()),
                Corruption::Truncated {
                    expected: len,
                    actual: len + extra.len() as u64,
                }
            );
        }
    }

    /// Recomputes the header CRC after the fields were edited by hand.
    fn reseal(b: &mut [u8]) {
        b[12..16].fill(0);
        let crc = crc32c::crc32c(&b[..HEADER_FIELDS]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn other_format_version_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        write(&path, &id(), &small_regions());
        let clean = fs::read(&path).unwrap();
        for v in [0u32, 2, 0x0100_0000, u32::MAX] {
            let mut b = clean.clone();
            b[8..12].copy_from_slice(&v.to_le_bytes());
            reseal(&mut b);
            fs::write(&path, &b).unwrap();
            assert_eq!(
                open_err(&path, &id()),
                Corruption::UnsupportedVersion {
                    found: v,
                    supported: 1,
                }
            );
        }
        // The resealing itself is sound: version 1 resealed opens.
        let mut b = clean.clone();
        reseal(&mut b);
        assert_eq!(b, clean);
    }

    #[test]
    fn file_of_another_job_epoch_rank_or_size_is_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        write(&path, &id(), &small_regions());
        type Edit = fn(&mut FileIdentity);
        let cases: [(&str, Edit, &str, &str); 4] = [
            ("job", |i| i.job = "job-8".into(), "job-7", "job-8"),
            ("epoch", |i| i.epoch = 11, "12", "11"),
            ("rank", |i| i.rank = 4, "3", "4"),
            ("ranks", |i| i.nranks = 16, "8", "16"),
        ];
        for (field, edit, found, expected) in cases {
            let mut other = id();
            edit(&mut other);
            assert_eq!(
                open_err(&path, &other),
                Corruption::Foreign {
                    field,
                    found: found.into(),
                    expected: expected.into(),
                }
            );
        }
        assert!(RankFileReader::open(&path, &id()).is_ok());
    }

    /// Rewrites the header fields (and their CRC), as a hostile or buggy writer could.
    fn edit_header(path: &Path, f: impl FnOnce(&mut Header)) {
        let mut b = fs::read(path).unwrap();
        let mut h = Header::decode(&b[..HEADER_FIELDS]).unwrap();
        f(&mut h);
        b[..HEADER_FIELDS].copy_from_slice(&h.encode());
        fs::write(path, b).unwrap();
    }

    /// Replaces the region table by `table` and fixes the header to match, CRCs included.
    fn put_table(path: &Path, table: &[u8]) {
        let b = fs::read(path).unwrap();
        let h = Header::decode(&b[..HEADER_FIELDS]).unwrap();
        let mut b = b[..h.table_off as usize].to_vec();
        b.extend_from_slice(table);
        fs::write(path, &b).unwrap();
        edit_header(path, |h| {
            h.table_len = table.len() as u64;
            h.file_len = b.len() as u64;
            h.table_crc = crc32c::crc32c(table);
        });
    }

    fn edit_table(path: &Path, f: impl FnOnce(&mut RegionTable)) {
        let (_, mut t) = layout(path);
        f(&mut t);
        put_table(path, &postcard::to_stdvec(&t).unwrap());
    }

    #[test]
    fn hostile_header_fields_are_refused_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        let regions = small_regions();
        write(&path, &id(), &regions);
        let clean = fs::read(&path).unwrap();
        let (h0, _) = layout(&path);
        let len = h0.file_len;
        let malformed = |c: &Corruption| matches!(c, Corruption::Malformed { what: "header", .. });
        let cases: Vec<fn(&mut Header, u64)> = vec![
            // A table "longer than the file" must be refused before anything is allocated.
            |h, _| h.table_len = u64::MAX,
            |h, len| h.table_len = len,
            |h, _| h.table_len = 1 << 40,
            |h, _| h.table_off = u64::MAX,
            |h, len| {
                h.table_off = u64::MAX - 5;
                h.table_len = len.wrapping_sub(h.table_off);
            },
            // A table overlapping the header block.
            |h, len| {
                h.table_off = 0;
                h.table_len = len;
            },
            |h, len| {
                h.table_off = HEADER_LEN - 1;
                h.table_len = len - h.table_off;
            },
            // A table that does not reach the end of the file.
            |h, _| h.table_len -= 1,
            |h, _| h.table_off += 1,
        ];
        for (i, edit) in cases.into_iter().enumerate() {
            fs::write(&path, &clean).unwrap();
            edit_header(&path, |h| edit(h, len));
            let err = open_err(&path, &id());
            assert!(malformed(&err), "case {i}: {err:?}");
        }
        // A file length that is not the file's.
        for bad_len in [0, len - 1, len + 1, u64::MAX] {
            fs::write(&path, &clean).unwrap();
            edit_header(&path, |h| h.file_len = bad_len);
            assert_eq!(
                open_err(&path, &id()),
                Corruption::Truncated {
                    expected: bad_len,
                    actual: len,
                }
            );
        }
        // A table moved within the file: its CRC no longer matches.
        fs::write(&path, &clean).unwrap();
        edit_header(&path, |h| {
            h.table_off -= 8;
            h.table_len += 8;
        });
        assert!(matches!(
            open_err(&path, &id()),
            Corruption::Checksum { what, .. } if what == "region table"
        ));
    }

    #[test]
    fn hostile_region_table_is_refused_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        write(&path, &id(), &small_regions());
        let clean = fs::read(&path).unwrap();
        let (h, _) = layout(&path);
        let table_off = h.table_off;
        let region_malformed = |c: &Corruption| {
            matches!(
                c,
                Corruption::Malformed {
                    what: "region table",
                    ..
                }
            )
        };

        // Region entries pointing outside the payload area (table CRCs made valid).
        type Edit = Box<dyn Fn(&mut RegionEntry)>;
        let edits: Vec<Edit> = vec![
            Box::new(|e| e.offset = 0),
            Box::new(|e| e.offset = HEADER_LEN - 1),
            Box::new(|e| e.offset = 64),
            Box::new(move |e| e.offset = table_off - e.len + 1),
            Box::new(move |e| e.len = table_off - e.offset + 1),
            Box::new(|e| e.len = u64::MAX),
            Box::new(|e| e.offset = u64::MAX),
            Box::new(|e| {
                e.offset = u64::MAX - 2;
                e.len = 8;
            }),
        ];
        for (i, edit) in edits.iter().enumerate() {
            fs::write(&path, &clean).unwrap();
            edit_table(&path, |t| edit(&mut t.regions[0]));
            let err = open_err(&path, &id());
            assert!(region_malformed(&err), "case {i}: {err:?}");
        }
        // A region ending exactly at the table is fine.
        fs::write(&path, &clean).unwrap();
        edit_table(&path, |t| {
            t.regions[0].len = table_off - t.regions[0].offset
        });
        assert!(RankFileReader::open(&path, &id()).is_ok());

        // Table bytes that are not a region table, with a valid CRC.
        let huge_seq = {
            // job "", node "", created 0, then 2^40 regions: must not preallocate for them.
            let mut b = vec![0u8, 0, 0];
            let mut n: u64 = 1 << 40;
            while n >= 0x80 {
                b.push((n as u8) | 0x80);
                n >>= 7;
            }
            b.push(n as u8);
            b
        };
        let huge_string = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        for (i, table) in [vec![], vec![0xff; 3], noise(7, 40), huge_seq, huge_string]
            .iter()
            .enumerate()
        {
            fs::write(&path, &clean).unwrap();
            put_table(&path, table);
            let err = open_err(&path, &id());
            assert!(region_malformed(&err), "table {i}: {err:?}");
        }
    }

    #[test]
    fn short_and_foreign_headers_are_refused() {
        assert!(matches!(
            Header::decode(b"CKPTRAN"),
            Err(Corruption::BadMagic { found, .. }) if found == b"CKPTRAN"
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ckpt");
        fs::write(
            &path,
            b"CKPTMANI and then some more bytes to be longer than the header fields",
        )
        .unwrap();
        assert!(matches!(
            open_err(&path, &id()),
            Corruption::BadMagic { found, .. } if found == b"CKPTMANI"
        ));
    }

    fn kind_strategy() -> impl Strategy<Value = RegionKind> {
        prop_oneof![
            (0u32..3).prop_map(|k| RegionKind::Bulk {
                elem_size: 1 << (k * 2)
            }),
            Just(RegionKind::Value),
            Just(RegionKind::MessageLog),
            Just(RegionKind::LibState),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        // Files of random shape: any single bit flip in a checksummed byte is reported, by
        // `open` or by the read of the region it hit.
        #[test]
        fn random_files_detect_any_covered_bit_flip(
            shape in prop::collection::vec((kind_strategy(), prop::collection::vec(any::<u8>(), 0..300)), 1..6),
            pick in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.ckpt");
            let regions: Vec<Spec> = shape
                .into_iter()
                .enumerate()
                .map(|(i, (kind, bytes))| (format!("r{i}"), kind, bytes))
                .collect();
            write(&path, &id(), &regions);
            let reads = check(&path, &id()).unwrap();
            for (read, spec) in reads.iter().zip(&regions) {
                prop_assert_eq!(read.as_ref().unwrap(), &spec.2);
            }
            let clean = fs::read(&path).unwrap();
            let (h, t) = layout(&path);
            let ranges = covered(&h, &t);
            let bits: u64 = ranges.iter().map(|(r, _)| 8 * (r.end - r.start)).sum();
            let mut k = pick % bits;
            let (pos, bit, part) = ranges
                .iter()
                .find_map(|(r, part)| {
                    let n = 8 * (r.end - r.start);
                    if k < n {
                        Some((r.start + k / 8, (k % 8) as u32, *part))
                    } else {
                        k -= n;
                        None
                    }
                })
                .unwrap();
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[clean[pos as usize] ^ (1 << bit)], pos).unwrap();
            assert_flip_detected(&path, &clean, pos, bit, part, &t);
        }

        #[test]
        fn header_encoding_round_trips(
            epoch in any::<u64>(), rank in any::<u32>(), nranks in any::<u32>(),
            file_len in any::<u64>(), table_off in any::<u64>(), table_len in any::<u64>(),
            table_crc in any::<u32>(),
        ) {
            let h = Header { epoch, rank, nranks, file_len, table_off, table_len, table_crc };
            let b = h.encode();
            prop_assert_eq!(&b[..8], &MAGIC);
            prop_assert_eq!(&b[60..64], &[0u8; 4]);
            prop_assert_eq!(Header::decode(&b), Ok(h));
        }
    }
}
