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

use serde::{Deserialize, Serialize};

use crate::error::Corruption;

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

/// Streams regions into a new rank file. Call [`RankFileWriter::finish`] to make it complete.
pub struct RankFileWriter {
    out: BufWriter<File>,
    pos: u64,
    id: FileIdentity,
    node: String,
    regions: Vec<RegionEntry>,
}

impl RankFileWriter {
    /// Creates (truncating) `path` for the file `id`, written on `node`.
    pub fn create(path: &Path, id: FileIdentity, node: &str) -> io::Result<Self> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN as usize])?;
        Ok(RankFileWriter {
            out,
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
        for chunk in bytes.chunks(CHUNK) {
            crc = crc32c::crc32c_append(crc, chunk);
            self.out.write_all(chunk)?;
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
        file.write_all_at(&header.encode(), 0)?;
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
    pub fn open(path: &Path, expect: &FileIdentity) -> Result<Self, FileError> {
        let file = File::open(path)?;
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
            if r.offset < HEADER_LEN || r.offset.checked_add(r.len).is_none_or(|e| e > header.table_off) {
                return Err(Corruption::Malformed {
                    what: "region table",
                    detail: format!("region {:?} at {}+{} lies outside the payload", r.name, r.offset, r.len),
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
        self.table.regions.iter().enumerate().find(|(_, r)| r.name == name)
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

    /// Reads region `idx` into a new buffer and checks its CRC.
    pub fn read_vec(&self, idx: usize) -> Result<Vec<u8>, FileError> {
        let mut buf = vec![0u8; self.table.regions[idx].len as usize];
        self.read_into(idx, &mut buf)?;
        Ok(buf)
    }

    /// Reads and checks every region (what `ckpt verify` does); returns the payload bytes.
    pub fn verify_all(&self) -> Result<u64, FileError> {
        let mut total = 0;
        for i in 0..self.table.regions.len() {
            total += self.read_vec(i)?.len() as u64;
        }
        Ok(total)
    }
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
        return Err(foreign("epoch", found.epoch.to_string(), expect.epoch.to_string()));
    }
    if found.rank != expect.rank {
        return Err(foreign("rank", found.rank.to_string(), expect.rank.to_string()));
    }
    if found.nranks != expect.nranks {
        return Err(foreign("ranks", found.nranks.to_string(), expect.nranks.to_string()));
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
