//! Erasure coding of a redundancy group (level 3): parity over the rank files of a group, and
//! the rebuild of lost members from the others. Pure: byte slices in, byte slices out; no MPI,
//! no file IO (the caller reads and writes the files and moves the bytes).
//!
//! # Model
//!
//! A group has `n` data shards (the members' rank files, of any lengths, 0 included) and `k`
//! parity shards. The bytes are cut into *stripes* of `chunk` bytes (a multiple of 64, e.g.
//! 4 MiB): stripe `i` holds bytes `i*chunk ..` of every member, zero-padded to the stripe's
//! shard size, which is `chunk` except in the last stripe, where it is the longest member's
//! remainder rounded up to a multiple of 64. A parity shard is as long as the longest member
//! rounded up to a multiple of 64. Members' lengths are recorded, so a rebuilt member is cut
//! back to its exact length.
//!
//! [`Encoder`] and [`Rebuilder`] take one stripe at a time, so memory stays at a few `chunk`s
//! per shard whatever the file sizes; [`encode`] and [`rebuild`] do whole buffers.
//!
//! Codes: [`Code::Xor`] (`k = 1`, as SCR's XOR scheme: parity is the XOR of the members) and
//! [`Code::ReedSolomon`] (any `k`; Leopard-RS over GF(2^16) from the `reed-solomon-simd`
//! crate: its shards must be of even size, and those of a multiple of 64 bytes are coded alike
//! by all its versions, 2 and 3, hence our 64). Up to `k` lost shards of a group (members or
//! parity) are rebuilt; more is [`ParityError::TooManyLost`], naming the lost shards.
//!
//! # Parity header, format version 1 (all integers little-endian)
//!
//! A parity file starts with this header, then holds one parity shard's bytes.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CKPTPRTY"
//! 8       4     format version (1)
//! 12      4     header CRC-32C: the whole header (member table included) with this field zero
//! 16      8     epoch
//! 24      4     group index
//! 28      2     n, data members in the group (>= 1)
//! 30      2     k, parity shards in the group (>= 1)
//! 32      2     index of the parity shard this file holds (< k)
//! 34      1     code: 1 = XOR (k = 1), 2 = Reed-Solomon (Leopard, GF(2^16))
//! 35      1     reserved (0)
//! 36      4     chunk: shard bytes of a full stripe (a positive multiple of 64)
//! 40      12*n  members in shard order: rank (u32), length in bytes (u64)
//! ```
//!
//! Decoding refuses a short header (`Truncated`), a wrong magic, another version, a CRC
//! mismatch, and fields that make no group (`Malformed`), so every truncation and bit flip of
//! a header is detected.

use std::fmt;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::error::Corruption;

/// Magic bytes at the start of every parity file.
pub const MAGIC: [u8; 8] = *b"CKPTPRTY";
/// The parity header version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the header before the member table.
const FIXED_LEN: usize = 40;
/// Bytes of one member table entry.
const MEMBER_LEN: usize = 12;
/// A good stripe size for rank files: large enough for the codecs' speed, small enough to stay
/// in memory for every shard of a group.
pub const DEFAULT_CHUNK: u32 = 4 << 20;
/// Shard sizes are multiples of this (see the module doc).
const SHARD_ALIGN: u32 = 64;

/// The erasure code of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// One parity shard, the XOR of the members.
    Xor,
    /// `k` parity shards, Reed-Solomon (Leopard-RS over GF(2^16)).
    ReedSolomon,
}

impl Code {
    fn to_byte(self) -> u8 {
        match self {
            Code::Xor => 1,
            Code::ReedSolomon => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Code> {
        match b {
            1 => Some(Code::Xor),
            2 => Some(Code::ReedSolomon),
            _ => None,
        }
    }
}

/// One data member of a group: its rank and the length of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The member's rank.
    pub rank: u32,
    /// Length of its bytes.
    pub len: u64,
}

/// A shard of a group, named for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardId {
    /// The data of the member with this rank.
    Member {
        /// The member's rank.
        rank: u32,
    },
    /// Parity shard number `index`.
    Parity {
        /// Index among the group's parity shards.
        index: u16,
    },
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardId::Member { rank } => write!(f, "rank {rank}"),
            ShardId::Parity { index } => write!(f, "parity shard {index}"),
        }
    }
}

/// A list of shards, displayed as "rank 2, parity shard 0".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards(pub Vec<ShardId>);

impl fmt::Display for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Why a group cannot be encoded or rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParityError {
    /// The group's parameters make no group.
    #[error("invalid parity group: {0}")]
    InvalidGroup(String),
    /// More shards are lost than the group has parity for.
    #[error("cannot rebuild: {} shards lost ({lost}), the group tolerates {tolerated}", lost.0.len())]
    TooManyLost {
        /// The lost shards.
        lost: Shards,
        /// Losses the group tolerates (its parity count).
        tolerated: u16,
    },
    /// A shard's bytes for a stripe have the wrong length.
    #[error("{shard}: stripe {stripe} has {got} bytes, expected {expected}")]
    ChunkLength {
        /// The shard.
        shard: ShardId,
        /// The stripe.
        stripe: u64,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A stripe index past the end of the group.
    #[error("stripe {stripe} out of range: the group has {stripes} stripes")]
    NoSuchStripe {
        /// The stripe asked for.
        stripe: u64,
        /// Stripes of the group.
        stripes: u64,
    },
    /// A shard the rebuild was told is present is missing, or one told lost is given.
    #[error("{shard} is {detail}")]
    Presence {
        /// The shard.
        shard: ShardId,
        /// What is wrong.
        detail: &'static str,
    },
    /// The Reed-Solomon codec refused (a bug here: the layout is checked first).
    #[error("reed-solomon codec: {0}")]
    Codec(String),
}

impl From<reed_solomon_simd::Error> for ParityError {
    fn from(e: reed_solomon_simd::Error) -> Self {
        ParityError::Codec(e.to_string())
    }
}

/// The shape of a group: its members, its parity count and code, its stripe size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLayout {
    members: Vec<Member>,
    k: u16,
    code: Code,
    chunk: u32,
    max_len: u64,
}

impl GroupLayout {
    /// A group of `members` with `k` parity shards and stripes of `chunk` bytes, coded with XOR
    /// when `k = 1`, else Reed-Solomon.
    pub fn new(members: Vec<Member>, k: u16, chunk: u32) -> Result<Self, ParityError> {
        let code = if k == 1 { Code::Xor } else { Code::ReedSolomon };
        Self::with_code(members, k, chunk, code)
    }

    /// A group with an explicit code.
    pub fn with_code(
        members: Vec<Member>,
        k: u16,
        chunk: u32,
        code: Code,
    ) -> Result<Self, ParityError> {
        let bad = |s: String| Err(ParityError::InvalidGroup(s));
        let n = members.len();
        if n == 0 || n > usize::from(u16::MAX) {
            return bad(format!("{n} members (1 to {} allowed)", u16::MAX));
        }
        if k == 0 {
            return bad("no parity shard (k = 0)".into());
        }
        if chunk == 0 || chunk % SHARD_ALIGN != 0 {
            return bad(format!(
                "stripe size {chunk} is not a positive multiple of {SHARD_ALIGN}"
            ));
        }
        match code {
            Code::Xor if k != 1 => return bad(format!("XOR gives one parity shard, not {k}")),
            Code::ReedSolomon if !ReedSolomonEncoder::supports(n, usize::from(k)) => {
                return bad(format!(
                    "Reed-Solomon cannot code {n} members with {k} parity"
                ));
            }
            _ => {}
        }
        for (i, m) in members.iter().enumerate() {
            if members[..i].iter().any(|o| o.rank == m.rank) {
                return bad(format!("rank {} appears twice", m.rank));
            }
        }
        let max_len = members.iter().map(|m| m.len).max().unwrap_or(0);
        Ok(GroupLayout {
            members,
            k,
            code,
            chunk,
            max_len,
        })
    }

    /// The data members, in shard order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Parity shards of the group (losses it tolerates).
    pub fn parity_count(&self) -> u16 {
        self.k
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// Shard bytes of a full stripe.
    pub fn chunk(&self) -> u32 {
        self.chunk
    }

    /// Data plus parity shards.
    pub fn shard_count(&self) -> usize {
        self.members.len() + usize::from(self.k)
    }

    /// The name of shard `s` (members first, then parity).
    pub fn shard_id(&self, s: usize) -> ShardId {
        match self.members.get(s) {
            Some(m) => ShardId::Member { rank: m.rank },
            None => ShardId::Parity {
                index: u16::try_from(s - self.members.len()).unwrap_or(u16::MAX),
            },
        }
    }

    /// Number of stripes (0 when every member is empty).
    pub fn stripes(&self) -> u64 {
        self.max_len.div_ceil(u64::from(self.chunk))
    }

    /// Length of one parity shard: the longest member rounded up to a multiple of 64.
    pub fn parity_len(&self) -> u64 {
        self.max_len.next_multiple_of(u64::from(SHARD_ALIGN))
    }

    /// Shard bytes of stripe `i` (what a parity shard holds of it).
    pub fn stripe_len(&self, i: u64) -> usize {
        let chunk = u64::from(self.chunk);
        let rest = self.max_len.saturating_sub(i.saturating_mul(chunk));
        // At most `chunk`, a u32.
        rest.next_multiple_of(u64::from(SHARD_ALIGN)).min(chunk) as usize
    }

    /// Byte range of member `m`'s data in stripe `i` (empty past its end).
    pub fn member_range(&self, m: usize, i: u64) -> std::ops::Range<u64> {
        let len = self.members[m].len;
        let start = i.saturating_mul(u64::from(self.chunk)).min(len);
        let end = start.saturating_add(u64::from(self.chunk)).min(len);
        start..end
    }

    /// Bytes shard `s` holds of stripe `i`: a member's real bytes, or a parity stripe.
    pub fn shard_stripe_len(&self, s: usize, i: u64) -> usize {
        if s < self.members.len() {
            let r = self.member_range(s, i);
            // At most `chunk`, a u32.
            (r.end - r.start) as usize
        } else {
            self.stripe_len(i)
        }
    }

    fn check_stripe(&self, i: u64) -> Result<(), ParityError> {
        if i >= self.stripes() {
            return Err(ParityError::NoSuchStripe {
                stripe: i,
                stripes: self.stripes(),
            });
        }
        Ok(())
    }

    fn check_len(&self, s: usize, i: u64, got: usize) -> Result<(), ParityError> {
        let expected = self.shard_stripe_len(s, i);
        if got != expected {
            return Err(ParityError::ChunkLength {
                shard: self.shard_id(s),
                stripe: i,
                expected,
                got,
            });
        }
        Ok(())
    }
}

/// `dst ^= src` over `src`'s length (`dst` at least as long), 8 bytes at a time.
fn xor_into(dst: &mut [u8], src: &[u8]) {
    let dst = &mut dst[..src.len()];
    let mut d = dst.chunks_exact_mut(64);
    let mut s = src.chunks_exact(64);
    for (dc, sc) in (&mut d).zip(&mut s) {
        for (dw, sw) in dc.chunks_exact_mut(8).zip(sc.chunks_exact(8)) {
            // Both are 8 bytes long (chunks_exact), so the conversions cannot fail.
            let x = u64::from_ne_bytes(dw.try_into().unwrap_or_default())
                ^ u64::from_ne_bytes(sw.try_into().unwrap_or_default());
            dw.copy_from_slice(&x.to_ne_bytes());
        }
    }
    for (db, sb) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *db ^= *sb;
    }
}

/// `bytes` zero-padded to `len` in `buf`, or `bytes` itself when already that long.
fn padded<'a>(bytes: &'a [u8], len: usize, buf: &'a mut Vec<u8>) -> &'a [u8] {
    if bytes.len() == len {
        return bytes;
    }
    buf.clear();
    buf.extend_from_slice(bytes);
    buf.resize(len, 0);
    buf
}

/// Computes a group's parity one stripe at a time.
pub struct Encoder {
    layout: GroupLayout,
    rs: Option<ReedSolomonEncoder>,
    pad: Vec<u8>,
    parity: Vec<Vec<u8>>,
}

impl Encoder {
    /// An encoder for `layout`.
    pub fn new(layout: GroupLayout) -> Result<Self, ParityError> {
        let rs = match layout.code {
            Code::Xor => None,
            Code::ReedSolomon => Some(ReedSolomonEncoder::new(
                layout.members.len(),
                usize::from(layout.k),
                2,
            )?),
        };
        let parity = vec![Vec::new(); usize::from(layout.k)];
        Ok(Encoder {
            layout,
            rs,
            pad: Vec::new(),
            parity,
        })
    }

    /// The group's layout.
    pub fn layout(&self) -> &GroupLayout {
        &self.layout
    }

    /// The parity of stripe `i`, given each member's bytes of it (`data[m]` is member `m`'s
    /// [`GroupLayout::member_range`]). Returns the `k` parity shards' bytes of the stripe.
    pub fn encode_stripe(&mut self, i: u64, data: &[&[u8]]) -> Result<&[Vec<u8>], ParityError> {
        let l = &self.layout;
        l.check_stripe(i)?;
        if data.len() != l.members.len() {
            return Err(ParityError::InvalidGroup(format!(
                "{} members' bytes given to a group of {}",
                data.len(),
                l.members.len()
            )));
        }
        for (m, d) in data.iter().enumerate() {
            l.check_len(m, i, d.len())?;
        }
        let slen = l.stripe_len(i);
        match &mut self.rs {
            None => xor_parity(&mut self.parity[0], slen, data.iter().copied()),
            Some(rs) => {
                rs.reset(data.len(), usize::from(l.k), slen)?;
                for d in data {
                    rs.add_original_shard(padded(d, slen, &mut self.pad))?;
                }
                let out = rs.encode()?;
                for (p, buf) in self.parity.iter_mut().enumerate() {
                    buf.clear();
                    buf.extend_from_slice(out.recovery(p).unwrap_or_default());
                }
            }
        }
        Ok(&self.parity)
    }
}

/// `out` = XOR of `shards`, each zero-padded to `len`; block by block, so that `out`'s block
/// stays in cache while every shard is folded in.
fn xor_parity<'a>(out: &mut Vec<u8>, len: usize, shards: impl Iterator<Item = &'a [u8]>) {
    const BLOCK: usize = 32 << 10;
    let shards: Vec<&[u8]> = shards.collect();
    out.clear();
    out.resize(len, 0);
    for (b, block) in out.chunks_mut(BLOCK).enumerate() {
        let start = b * BLOCK;
        for s in &shards {
            let piece = s.get(start..).unwrap_or_default();
            xor_into(block, &piece[..piece.len().min(block.len())]);
        }
    }
}

/// Rebuilds a group's lost shards one stripe at a time.
pub struct Rebuilder {
    layout: GroupLayout,
    /// Lost shard indices, ascending.
    lost: Vec<usize>,
    rs: Option<(ReedSolomonDecoder, ReedSolomonEncoder)>,
    pads: Vec<Vec<u8>>,
    out: Vec<Vec<u8>>,
}

impl Rebuilder {
    /// A rebuilder of the shards at indices `lost` (members first, then parity; see
    /// [`GroupLayout::shard_id`]). More than `k` lost is [`ParityError::TooManyLost`].
    pub fn new(layout: GroupLayout, lost: &[usize]) -> Result<Self, ParityError> {
        let mut lost = lost.to_vec();
        lost.sort_unstable();
        lost.dedup();
        if let Some(&s) = lost.iter().find(|&&s| s >= layout.shard_count()) {
            return Err(ParityError::InvalidGroup(format!(
                "shard {s} lost from a group of {} shards",
                layout.shard_count()
            )));
        }
        if lost.len() > usize::from(layout.k) {
            return Err(ParityError::TooManyLost {
                lost: Shards(lost.iter().map(|&s| layout.shard_id(s)).collect()),
                tolerated: layout.k,
            });
        }
        let (n, k) = (layout.members.len(), usize::from(layout.k));
        let rs = match layout.code {
            Code::Xor => None,
            Code::ReedSolomon => Some((
                ReedSolomonDecoder::new(n, k, 2)?,
                ReedSolomonEncoder::new(n, k, 2)?,
            )),
        };
        Ok(Rebuilder {
            out: vec![Vec::new(); lost.len()],
            pads: vec![Vec::new(); n],
            layout,
            lost,
            rs,
        })
    }

    /// The lost shard indices, ascending: the order of [`Rebuilder::rebuild_stripe`]'s output.
    pub fn lost(&self) -> &[usize] {
        &self.lost
    }

    /// Rebuilds stripe `i` of the lost shards from `shards`: one entry per shard of the group,
    /// `None` exactly for the lost ones, `Some` with the shard's bytes of stripe `i` (a
    /// member's [`GroupLayout::member_range`], a parity shard's [`GroupLayout::stripe_len`])
    /// for the others. Returns the lost shards' bytes of the stripe, in [`Rebuilder::lost`]
    /// order, members cut to their exact length.
    pub fn rebuild_stripe(
        &mut self,
        i: u64,
        shards: &[Option<&[u8]>],
    ) -> Result<Vec<&[u8]>, ParityError> {
        self.check_shards(i, shards)?;
        let l = &self.layout;
        let slen = l.stripe_len(i);
        match &mut self.rs {
            None => {
                if let Some(out) = self.out.first_mut() {
                    xor_parity(out, slen, shards.iter().flatten().copied());
                }
            }
            Some((dec, enc)) => rs_rebuild(
                l,
                &self.lost,
                dec,
                enc,
                shards,
                slen,
                &mut self.pads,
                &mut self.out,
            )?,
        }
        let l = &self.layout;
        Ok(self
            .lost
            .iter()
            .zip(&self.out)
            .map(|(&s, o)| &o[..l.shard_stripe_len(s, i)])
            .collect())
    }

    fn check_shards(&self, i: u64, shards: &[Option<&[u8]>]) -> Result<(), ParityError> {
        let l = &self.layout;
        l.check_stripe(i)?;
        if shards.len() != l.shard_count() {
            return Err(ParityError::InvalidGroup(format!(
                "{} shards given to a group of {}",
                shards.len(),
                l.shard_count()
            )));
        }
        for (s, sh) in shards.iter().enumerate() {
            let lost = self.lost.binary_search(&s).is_ok();
            match (sh, lost) {
                (Some(b), false) => l.check_len(s, i, b.len())?,
                (None, false) => {
                    return Err(ParityError::Presence {
                        shard: l.shard_id(s),
                        detail: "missing but was not declared lost",
                    })
                }
                (Some(_), true) => {
                    return Err(ParityError::Presence {
                        shard: l.shard_id(s),
                        detail: "given but was declared lost",
                    })
                }
                (None, true) => {}
            }
        }
        Ok(())
    }
}

/// Reed-Solomon rebuild of one stripe: lost members from the decoder, then lost parity from
/// the (completed) members.
#[allow(clippy::too_many_arguments)]
fn rs_rebuild(
    l: &GroupLayout,
    lost: &[usize],
    dec: &mut ReedSolomonDecoder,
    enc: &mut ReedSolomonEncoder,
    shards: &[Option<&[u8]>],
    slen: usize,
    pads: &mut [Vec<u8>],
    out: &mut [Vec<u8>],
) -> Result<(), ParityError> {
    let (n, k) = (l.members.len(), usize::from(l.k));
    let lost_members = lost.iter().take_while(|&&s| s < n).count();
    if lost_members > 0 {
        dec.reset(n, k, slen)?;
        for (s, sh) in shards.iter().enumerate() {
            if let Some(b) = sh {
                if s < n {
                    dec.add_original_shard(s, padded(b, slen, &mut pads[s]))?;
                } else {
                    dec.add_recovery_shard(s - n, b)?;
                }
            }
        }
        let res = dec.decode()?;
        for (&s, o) in lost.iter().zip(out.iter_mut()).take(lost_members) {
            let r = res
                .restored_original(s)
                .ok_or_else(|| ParityError::Codec(format!("member {s} not restored")))?;
            o.clear();
            o.extend_from_slice(r);
        }
    }
    if lost_members < lost.len() {
        enc.reset(n, k, slen)?;
        for (s, sh) in shards.iter().take(n).enumerate() {
            match sh {
                Some(b) => enc.add_original_shard(padded(b, slen, &mut pads[s]))?,
                None => {
                    let j = lost.iter().position(|&x| x == s).unwrap_or(0);
                    enc.add_original_shard(&out[j])?;
                }
            }
        }
        let res = enc.encode()?;
        for (&s, o) in lost.iter().zip(out.iter_mut()).skip(lost_members) {
            o.clear();
            o.extend_from_slice(res.recovery(s - n).unwrap_or_default());
        }
    }
    Ok(())
}

/// The `k` parity shards of whole members (`members[m]` is member `m`'s bytes).
pub fn encode(layout: &GroupLayout, members: &[&[u8]]) -> Result<Vec<Vec<u8>>, ParityError> {
    let mut enc = Encoder::new(layout.clone())?;
    let plen = usize::try_from(layout.parity_len()).unwrap_or(usize::MAX);
    let mut parity = vec![Vec::with_capacity(plen); usize::from(layout.k)];
    for i in 0..layout.stripes() {
        let data: Vec<&[u8]> = stripe_of(layout, members, i);
        for (p, bytes) in parity.iter_mut().zip(enc.encode_stripe(i, &data)?) {
            p.extend_from_slice(bytes);
        }
    }
    Ok(parity)
}

/// The lost shards (`None` in `shards`, one entry per shard, members then parity) rebuilt
/// whole from the others, in shard order.
pub fn rebuild(
    layout: &GroupLayout,
    shards: &[Option<&[u8]>],
) -> Result<Vec<Vec<u8>>, ParityError> {
    let lost: Vec<usize> = (0..shards.len()).filter(|&s| shards[s].is_none()).collect();
    let mut reb = Rebuilder::new(layout.clone(), &lost)?;
    let mut out = vec![Vec::new(); lost.len()];
    for i in 0..layout.stripes() {
        let stripe: Vec<Option<&[u8]>> = shards
            .iter()
            .enumerate()
            .map(|(s, sh)| sh.map(|b| shard_stripe(layout, b, s, i)))
            .collect();
        for (o, bytes) in out.iter_mut().zip(reb.rebuild_stripe(i, &stripe)?) {
            o.extend_from_slice(bytes);
        }
    }
    Ok(out)
}

/// Each member's bytes of stripe `i` (short members give what they have).
fn stripe_of<'a>(layout: &GroupLayout, members: &[&'a [u8]], i: u64) -> Vec<&'a [u8]> {
    (0..members.len())
        .map(|m| shard_stripe(layout, members[m], m, i))
        .collect()
}

/// Shard `s`'s bytes of stripe `i`, clipped to what `bytes` has (lengths are checked later).
fn shard_stripe<'a>(layout: &GroupLayout, bytes: &'a [u8], s: usize, i: u64) -> &'a [u8] {
    let start = i.saturating_mul(u64::from(layout.chunk));
    let len = layout.shard_stripe_len(s, i) as u64;
    let clip = |x: u64| usize::try_from(x).unwrap_or(usize::MAX).min(bytes.len());
    &bytes[clip(start)..clip(start + len)]
}

/// The header of a parity file: which group, epoch and parity shard it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityHeader {
    /// Epoch of the members' files.
    pub epoch: u64,
    /// Index of the group in the job's grouping.
    pub group: u32,
    /// Which parity shard follows the header.
    pub index: u16,
    /// The group.
    pub layout: GroupLayout,
}

impl ParityHeader {
    /// Length of the encoded header.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + MEMBER_LEN * self.layout.members.len()
    }

    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let l = &self.layout;
        let mut b = Vec::with_capacity(self.encoded_len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.extend_from_slice(&self.group.to_le_bytes());
        // At most u16::MAX members: checked by the layout.
        b.extend_from_slice(&(l.members.len() as u16).to_le_bytes());
        b.extend_from_slice(&l.k.to_le_bytes());
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&[l.code.to_byte(), 0]);
        b.extend_from_slice(&l.chunk.to_le_bytes());
        for m in &l.members {
            b.extend_from_slice(&m.rank.to_le_bytes());
            b.extend_from_slice(&m.len.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header from the start of `b` (parity bytes may follow). Returns it and its
    /// length.
    pub fn decode(b: &[u8]) -> Result<(ParityHeader, usize), Corruption> {
        let short = |expected: usize| Corruption::Truncated {
            expected: expected as u64,
            actual: b.len() as u64,
        };
        if b.len() < 8 || b[..8] != MAGIC {
            return Err(Corruption::BadMagic {
                what: "parity file",
                found: b[..b.len().min(8)].to_vec(),
            });
        }
        if b.len() < FIXED_LEN {
            return Err(short(FIXED_LEN));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
        let version = u32_at(8);
        if version != VERSION {
            return Err(Corruption::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let n = usize::from(u16_at(28));
        let len = FIXED_LEN + MEMBER_LEN * n;
        if b.len() < len {
            return Err(short(len));
        }
        let mut copy = b[..len].to_vec();
        copy[12..16].fill(0);
        let (stored, computed) = (u32_at(12), crc32c::crc32c(&copy));
        if stored != computed {
            return Err(Corruption::Checksum {
                what: "parity header".into(),
                stored,
                computed,
            });
        }
        let malformed = |detail: String| Corruption::Malformed {
            what: "parity header",
            detail,
        };
        let code = Code::from_byte(b[34]).ok_or_else(|| malformed(format!("code {}", b[34])))?;
        if b[35] != 0 {
            return Err(malformed(format!("reserved byte {}", b[35])));
        }
        let members = (0..n)
            .map(|m| {
                let o = FIXED_LEN + MEMBER_LEN * m;
                Member {
                    rank: u32_at(o),
                    len: u64_at(o + 4),
                }
            })
            .collect();
        let layout = GroupLayout::with_code(members, u16_at(30), u32_at(36), code)
            .map_err(|e| malformed(e.to_string()))?;
        let index = u16_at(32);
        if index >= layout.k {
            return Err(malformed(format!("parity shard {index} of {}", layout.k)));
        }
        let header = ParityHeader {
            epoch: u64_at(16),
            group: u32_at(24),
            index,
            layout,
        };
        Ok((header, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    /// Deterministic noise (xorshift).
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn layout(lens: &[usize], k: u16, chunk: u32, code: Code) -> GroupLayout {
        let members = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| Member {
                rank: 10 + 3 * i as u32,
                len: len as u64,
            })
            .collect();
        GroupLayout::with_code(members, k, chunk, code).unwrap()
    }

    /// All subsets of `0..n` of size `size`.
    fn subsets(n: usize, size: usize) -> Vec<Vec<usize>> {
        (0u32..1 << n)
            .filter(|m| m.count_ones() as usize == size)
            .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
            .collect()
    }

    /// Encodes `data`, then rebuilds every loss pattern of up to `k` shards and checks each
    /// rebuilt shard byte for byte; every pattern of `k + 1` losses is refused, naming them.
    fn check_every_loss(data: &[Vec<u8>], k: u16, chunk: u32, code: Code) {
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let l = layout(&lens, k, chunk, code);
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let parity = encode(&l, &refs).unwrap();
        assert_eq!(parity.len(), usize::from(k));
        for p in &parity {
            assert_eq!(p.len() as u64, l.parity_len());
        }
        let all: Vec<&[u8]> = refs
            .iter()
            .copied()
            .chain(parity.iter().map(Vec::as_slice))
            .collect();
        let ctx = format!("{code:?} k={k} chunk={chunk} lens={lens:?}");
        for size in 1..=usize::from(k) {
            for lost in subsets(all.len(), size) {
                let shards: Vec<Option<&[u8]>> = (0..all.len())
                    .map(|s| (!lost.contains(&s)).then_some(all[s]))
                    .collect();
                let got = rebuild(&l, &shards).unwrap_or_else(|e| panic!("{ctx} {lost:?}: {e}"));
                assert_eq!(got.len(), lost.len());
                for (s, bytes) in lost.iter().zip(&got) {
                    assert!(bytes == all[*s], "{ctx} lost {lost:?}: shard {s} differs");
                }
            }
        }
        for lost in subsets(all.len(), usize::from(k) + 1) {
            let shards: Vec<Option<&[u8]>> = (0..all.len())
                .map(|s| (!lost.contains(&s)).then_some(all[s]))
                .collect();
            let err = rebuild(&l, &shards).unwrap_err();
            let names: Vec<ShardId> = lost.iter().map(|&s| l.shard_id(s)).collect();
            assert_eq!(
                err,
                ParityError::TooManyLost {
                    lost: Shards(names.clone()),
                    tolerated: k
                },
                "{ctx}"
            );
            let msg = err.to_string();
            for name in &names {
                assert!(msg.contains(&name.to_string()), "{msg}");
            }
        }
    }

    /// Lengths for a group of `n`: empty, one byte, odd, exactly a chunk, several chunks
    /// with an odd tail, mixed by `seed`.
    fn lengths(n: usize, seed: usize, chunk: usize) -> Vec<usize> {
        let pool = [0, 1, 7, chunk, 2 * chunk + 1, 3 * chunk + 33, chunk - 1, 2];
        (0..n)
            .map(|m| pool[(m * 3 + seed * 5) % pool.len()])
            .collect()
    }

    #[test]
    fn every_loss_pattern_of_small_groups_rebuilds_exactly() {
        let chunk = 64;
        for n in 2..=6 {
            for seed in 0..3 {
                let data: Vec<Vec<u8>> = lengths(n, seed, chunk as usize)
                    .iter()
                    .enumerate()
                    .map(|(m, &len)| noise((n * 100 + seed * 10 + m) as u64, len))
                    .collect();
                check_every_loss(&data, 1, chunk, Code::Xor);
                check_every_loss(&data, 1, chunk, Code::ReedSolomon);
                check_every_loss(&data, 2, chunk, Code::ReedSolomon);
            }
        }
    }

    #[test]
    fn all_empty_and_all_equal_members() {
        for code in [Code::Xor, Code::ReedSolomon] {
            check_every_loss(&[vec![], vec![], vec![]], 1, 64, code);
            check_every_loss(&[vec![7; 128], vec![9; 128]], 1, 64, code);
        }
        check_every_loss(&[vec![], vec![], vec![]], 2, 64, Code::ReedSolomon);
        let l = layout(&[0, 0], 1, 64, Code::Xor);
        assert_eq!((l.stripes(), l.parity_len()), (0, 0));
    }

    #[test]
    fn xor_parity_is_the_xor_of_the_padded_members() {
        // Small stripes, and stripes larger than the XOR's cache block.
        for (lens, chunk) in [
            (vec![300, 17, 0, 299], 64),
            (vec![300_001, 70_000, 0, 131_072], 1 << 17),
        ] {
            let data: Vec<Vec<u8>> = lens.iter().map(|&n| noise(n as u64, n)).collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let l = layout(&lens, 1, chunk, Code::Xor);
            let mut want = vec![0u8; l.parity_len() as usize];
            for d in &data {
                for (w, b) in want.iter_mut().zip(d) {
                    *w ^= b;
                }
            }
            assert_eq!(encode(&l, &refs).unwrap(), vec![want], "{lens:?}");
            check_every_loss(&data, 1, chunk, Code::Xor);
        }
    }

    #[test]
    fn stripes_cover_each_member_once_and_are_multiples_of_64() {
        let l = layout(&[0, 1, 129, 256, 257], 2, 64, Code::ReedSolomon);
        assert_eq!(l.stripes(), 5);
        assert_eq!(
            (0..5).map(|i| l.stripe_len(i)).collect::<Vec<_>>(),
            [64, 64, 64, 64, 64]
        );
        assert_eq!(l.parity_len(), 320);
        assert_eq!(l.member_range(2, 2), 128..129);
        assert_eq!(l.member_range(2, 3), 129..129);
        assert_eq!(l.member_range(4, 4), 256..257);
        let l = layout(&[1, 0], 1, 128, Code::Xor);
        assert_eq!((l.stripes(), l.stripe_len(0), l.parity_len()), (1, 64, 64));
    }

    #[test]
    fn streaming_by_stripe_matches_whole_buffers() {
        let data = [noise(5, 1000), noise(6, 333), noise(7, 64)];
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let l = layout(&[1000, 333, 64], 2, 128, Code::ReedSolomon);
        let whole = encode(&l, &refs).unwrap();
        let mut enc = Encoder::new(l.clone()).unwrap();
        let mut streamed = vec![Vec::new(); 2];
        for i in 0..l.stripes() {
            let stripe: Vec<&[u8]> = (0..3)
                .map(|m| {
                    let r = l.member_range(m, i);
                    &refs[m][r.start as usize..r.end as usize]
                })
                .collect();
            for (s, p) in streamed
                .iter_mut()
                .zip(enc.encode_stripe(i, &stripe).unwrap())
            {
                s.extend_from_slice(p);
            }
        }
        assert_eq!(streamed, whole);
    }

    #[test]
    fn misuse_is_refused_naming_the_shard() {
        let l = layout(&[100, 50], 1, 64, Code::Xor);
        let mut enc = Encoder::new(l.clone()).unwrap();
        let a = noise(1, 100);
        assert_eq!(
            enc.encode_stripe(0, &[&a[..64], &a[..49]]).unwrap_err(),
            ParityError::ChunkLength {
                shard: ShardId::Member { rank: 13 },
                stripe: 0,
                expected: 50,
                got: 49
            }
        );
        assert_eq!(
            enc.encode_stripe(2, &[&a[..0], &a[..0]]).unwrap_err(),
            ParityError::NoSuchStripe {
                stripe: 2,
                stripes: 2
            }
        );
        let mut reb = Rebuilder::new(l.clone(), &[0]).unwrap();
        let p = vec![0u8; 64];
        let err = reb.rebuild_stripe(0, &[None, None, Some(&p)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rank 13 is missing but was not declared lost"
        );
        let err = reb
            .rebuild_stripe(0, &[Some(&a[..64]), Some(&a[..50]), Some(&p)])
            .unwrap_err();
        assert_eq!(err.to_string(), "rank 10 is given but was declared lost");
        let bad = |k, chunk, code, ranks: &[u32]| {
            let m = ranks.iter().map(|&rank| Member { rank, len: 1 }).collect();
            GroupLayout::with_code(m, k, chunk, code).unwrap_err()
        };
        assert!(matches!(
            bad(1, 63, Code::Xor, &[1, 2]),
            ParityError::InvalidGroup(_)
        ));
        assert!(matches!(
            bad(1, 66, Code::Xor, &[1, 2]),
            ParityError::InvalidGroup(_)
        ));
        assert!(matches!(
            bad(1, 0, Code::Xor, &[1, 2]),
            ParityError::InvalidGroup(_)
        ));
        assert!(matches!(
            bad(0, 64, Code::ReedSolomon, &[1, 2]),
            ParityError::InvalidGroup(_)
        ));
        assert!(matches!(
            bad(2, 64, Code::Xor, &[1, 2]),
            ParityError::InvalidGroup(_)
        ));
        assert!(matches!(
            bad(1, 64, Code::Xor, &[1, 1]),
            ParityError::InvalidGroup(_)
        ));
        assert!(matches!(
            bad(1, 64, Code::Xor, &[]),
            ParityError::InvalidGroup(_)
        ));
    }

    #[test]
    fn too_many_losses_name_the_lost_members() {
        let l = layout(&[10, 20, 30, 40], 2, 64, Code::ReedSolomon);
        let err = Rebuilder::new(l, &[3, 0, 5]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "cannot rebuild: 3 shards lost (rank 10, rank 19, parity shard 1), the group \
             tolerates 2"
        );
    }

    fn header() -> ParityHeader {
        ParityHeader {
            epoch: 0x0102_0304_0506_0708,
            group: 7,
            index: 1,
            layout: GroupLayout::with_code(
                vec![
                    Member { rank: 3, len: 0 },
                    Member {
                        rank: 1,
                        len: (5 << 32) + 11,
                    },
                    Member { rank: 8, len: 1 },
                ],
                2,
                DEFAULT_CHUNK,
                Code::ReedSolomon,
            )
            .unwrap(),
        }
    }

    #[test]
    fn header_round_trips_with_parity_bytes_after_it() {
        let h = header();
        let mut b = h.encode();
        assert_eq!(b.len(), h.encoded_len());
        assert_eq!(b.len(), 40 + 3 * 12);
        assert_eq!(b[..8], MAGIC);
        b.extend_from_slice(&[0xAB; 100]);
        assert_eq!(ParityHeader::decode(&b).unwrap(), (h, 76));
    }

    #[test]
    fn every_header_truncation_is_detected() {
        let b = header().encode();
        for len in 0..b.len() {
            let err = ParityHeader::decode(&b[..len]).unwrap_err();
            let ok = match len {
                0..8 => matches!(err, Corruption::BadMagic { .. }),
                _ => matches!(err, Corruption::Truncated { .. }),
            };
            assert!(ok, "cut at {len}: {err:?}");
        }
    }

    #[test]
    fn every_header_bit_flip_is_detected() {
        let clean = header().encode();
        for pos in 0..clean.len() {
            for bit in 0..8 {
                let mut b = clean.clone();
                b[pos] ^= 1 << bit;
                let err = ParityHeader::decode(&b).expect_err(&format!("byte {pos} bit {bit}"));
                let ok = match pos {
                    0..8 => matches!(err, Corruption::BadMagic { .. }),
                    8..12 => matches!(err, Corruption::UnsupportedVersion { .. }),
                    // The member count: a larger one reads past the end, a smaller one
                    // leaves the checksum over other bytes.
                    28..30 => matches!(
                        err,
                        Corruption::Truncated { .. } | Corruption::Checksum { .. }
                    ),
                    _ => matches!(err, Corruption::Checksum { .. }),
                };
                assert!(ok, "byte {pos} bit {bit}: {err:?}");
            }
        }
    }

    #[test]
    fn headers_with_a_valid_crc_but_no_group_are_malformed() {
        let mut h = header();
        let reseal = |b: &mut Vec<u8>| {
            b[12..16].fill(0);
            let crc = crc32c::crc32c(b);
            b[12..16].copy_from_slice(&crc.to_le_bytes());
        };
        h.index = 2;
        let mut b = h.encode();
        reseal(&mut b);
        assert!(matches!(
            ParityHeader::decode(&b),
            Err(Corruption::Malformed { .. })
        ));
        for (pos, val) in [(34, 9u8), (35, 1), (36, 3), (30, 0)] {
            let mut b = header().encode();
            b[pos] = val;
            reseal(&mut b);
            let err = ParityHeader::decode(&b).unwrap_err();
            assert!(
                matches!(err, Corruption::Malformed { .. }),
                "{pos}: {err:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_groups_rebuild_exactly(
            lens in prop::collection::vec(0usize..700, 1..=6),
            k in 1u16..=3,
            chunk_64s in 1u32..=4,
            seed in any::<u64>(),
            pick in any::<u64>(),
            rs_for_one in any::<bool>(),
        ) {
            let code = if k == 1 && !rs_for_one { Code::Xor } else { Code::ReedSolomon };
            let l = layout(&lens, k, 64 * chunk_64s, code);
            let data: Vec<Vec<u8>> =
                lens.iter().enumerate().map(|(m, &n)| noise(seed ^ m as u64, n)).collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let parity = encode(&l, &refs).unwrap();
            let all: Vec<&[u8]> =
                refs.iter().copied().chain(parity.iter().map(Vec::as_slice)).collect();
            let mut order: Vec<usize> = (0..all.len()).collect();
            order.sort_by_key(|&s| noise(pick ^ s as u64, 1)[0]);
            let lost = &order[..(pick as usize % (usize::from(k) + 1))];
            let shards: Vec<Option<&[u8]>> =
                (0..all.len()).map(|s| (!lost.contains(&s)).then_some(all[s])).collect();
            let got = rebuild(&l, &shards).unwrap();
            let mut sorted = lost.to_vec();
            sorted.sort_unstable();
            for (s, bytes) in sorted.iter().zip(&got) {
                prop_assert!(bytes == all[*s], "shard {} differs", s);
            }
        }
    }

    /// Throughput of encode and rebuild, 4 members of 64 MiB, 4 MiB stripes. Prints MB/s of
    /// member data (best of 3); asserts nothing about time. Run with
    /// `cargo test -p libckpt --release --lib parity::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        const LEN: usize = 64 << 20;
        let data: Vec<Vec<u8>> = (0..4).map(|m| noise(m, LEN)).collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let total = (4 * LEN) as f64 / 1e6;
        for (name, k, code) in [
            ("XOR k=1", 1, Code::Xor),
            ("RS  k=1", 1, Code::ReedSolomon),
            ("RS  k=2", 2, Code::ReedSolomon),
        ] {
            let l = layout(&[LEN; 4], k, DEFAULT_CHUNK, code);
            let best = |f: &mut dyn FnMut()| {
                (0..3)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        total / t.elapsed().as_secs_f64()
                    })
                    .fold(0.0, f64::max)
            };
            let mut parity = Vec::new();
            let enc = best(&mut || parity = encode(&l, &refs).unwrap());
            let mut shards: Vec<Option<&[u8]>> = refs
                .iter()
                .copied()
                .chain(parity.iter().map(Vec::as_slice))
                .map(Some)
                .collect();
            for s in shards.iter_mut().take(usize::from(k)) {
                *s = None;
            }
            let mut got = Vec::new();
            let reb = best(&mut || got = rebuild(&l, &shards).unwrap());
            assert!(got.iter().zip(&data).all(|(g, d)| g == d));
            println!("{name}: encode {enc:.0} MB/s, rebuild of {k} member(s) {reb:.0} MB/s");
        }
    }
}
