//! Quiescence bookkeeping, free of MPI: per-peer message counters, the drain plan that the
//! bookmark exchange yields, and the message log with MPI's matching order.
//!
//! At a checkpoint, every rank tells every peer how many messages it sent to it since the
//! last checkpoint; each rank then pulls `sent - arrived` messages from each peer out of MPI
//! into its log. After that, on every pair, arrived == sent, so the counters restart at zero.
//! Receives are served from the log first: all logged messages from a sender were sent before
//! any message of that sender still inside MPI, so "log first, then MPI" keeps MPI's
//! non-overtaking order, provided the log is searched in arrival order.
//!
//! # Message log encoding, version 1 (little-endian)
//!
//! ```text
//! 0   4  magic "CKML"
//! 4   4  version (1)
//! 8   8  number of messages
//! then per message:
//!     4  source rank (i32)
//!     4  tag (i32)
//!     8  payload length
//!     ..  payload
//! ```

use std::collections::VecDeque;

/// Which senders a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any rank (`MPI_ANY_SOURCE`).
    Any,
    /// This rank only.
    Rank(i32),
}

/// Which tags a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagSel {
    /// Any tag (`MPI_ANY_TAG`).
    Any,
    /// This tag only.
    Tag(i32),
}

/// Whether a message from `src` with `tag` matches the receive (`want_src`, `want_tag`).
pub fn matches(want_src: Source, want_tag: TagSel, src: i32, tag: i32) -> bool {
    (match want_src {
        Source::Any => true,
        Source::Rank(r) => r == src,
    }) && (match want_tag {
        TagSel::Any => true,
        TagSel::Tag(t) => t == tag,
    })
}

/// A message held by the library until the application receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Sender.
    pub src: i32,
    /// Tag.
    pub tag: i32,
    /// Payload.
    pub data: Vec<u8>,
}

/// The per-rank message log, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageLog {
    entries: VecDeque<Logged>,
}

/// Why an encoded message log cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Wrong magic or version.
    #[error("not a message log of version 1 (found magic {magic:02x?}, version {version})")]
    Header {
        /// Magic found.
        magic: Vec<u8>,
        /// Version found.
        version: u32,
    },
    /// The bytes end early, a length is impossible, or a source or tag is negative.
    #[error("message {index}: {detail}")]
    Truncated {
        /// Index of the message being decoded.
        index: u64,
        /// What is wrong.
        detail: String,
    },
    /// Bytes after the last message.
    #[error("{0} bytes after the last message")]
    Trailing(usize),
}

const LOG_MAGIC: [u8; 4] = *b"CKML";
const LOG_VERSION: u32 = 1;

impl MessageLog {
    /// Appends a drained message.
    pub fn push(&mut self, m: Logged) {
        self.entries.push_back(m);
    }

    /// Removes and returns the first message (in arrival order) that matches.
    pub fn take_match(&mut self, src: Source, tag: TagSel) -> Option<Logged> {
        if self.entries.is_empty() {
            return None;
        }
        let i = self
            .entries
            .iter()
            .position(|m| matches(src, tag, m.src, m.tag))?;
        self.entries.remove(i)
    }

    /// The first message that matches, without removing it (for probes).
    pub fn peek_match(&self, src: Source, tag: TagSel) -> Option<&Logged> {
        self.entries
            .iter()
            .find(|m| matches(src, tag, m.src, m.tag))
    }

    /// Messages in the log.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes in the log.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|m| m.data.len() as u64).sum()
    }

    /// Encodes the log (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 16 + self.bytes() as usize);
        out.extend_from_slice(&LOG_MAGIC);
        out.extend_from_slice(&LOG_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for m in &self.entries {
            out.extend_from_slice(&m.src.to_le_bytes());
            out.extend_from_slice(&m.tag.to_le_bytes());
            out.extend_from_slice(&(m.data.len() as u64).to_le_bytes());
            out.extend_from_slice(&m.data);
        }
        out
    }

    /// Decodes a log; empty input is an empty log (a snapshot taken with nothing in flight
    /// may store nothing). Never allocates more than the input's length; a negative source or
    /// tag is an error.
    pub fn decode(bytes: &[u8]) -> Result<MessageLog, LogError> {
        if bytes.is_empty() {
            return Ok(MessageLog::default());
        }
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4).unwrap_or_default().to_vec();
        let version = r.u32().unwrap_or(0);
        if magic != LOG_MAGIC || version != LOG_VERSION {
            return Err(LogError::Header { magic, version });
        }
        let count = r.u64().ok_or(LogError::Truncated {
            index: 0,
            detail: "no message count".into(),
        })?;
        let mut log = MessageLog::default();
        for index in 0..count {
            let short = |what: &str| LogError::Truncated {
                index,
                detail: format!("input ends in its {what}"),
            };
            let src = r.u32().ok_or_else(|| short("source"))? as i32;
            let tag = r.u32().ok_or_else(|| short("tag"))? as i32;
            // A negative rank or tag never comes from MPI (they are its wildcards); handing
            // one to the application as a status would be silently wrong data.
            if src < 0 || tag < 0 {
                return Err(LogError::Truncated {
                    index,
                    detail: format!("negative source {src} or tag {tag}"),
                });
            }
            let len = r.u64().ok_or_else(|| short("length"))?;
            let remaining = (bytes.len() - r.pos) as u64;
            if len > remaining {
                return Err(LogError::Truncated {
                    index,
                    detail: format!("payload of {len} bytes, only {remaining} left"),
                });
            }
            let data = r
                .take(len as usize)
                .ok_or_else(|| short("payload"))?
                .to_vec();
            log.push(Logged { src, tag, data });
        }
        if r.pos != bytes.len() {
            return Err(LogError::Trailing(bytes.len() - r.pos));
        }
        Ok(log)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        Some(u64::from_le_bytes(x))
    }
}

/// Messages sent to and arrived from each peer since the last checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// `sent[p]`: messages this rank sent to rank `p`.
    pub sent: Vec<u64>,
    /// `arrived[p]`: messages from rank `p` taken out of MPI (by the application or a drain).
    pub arrived: Vec<u64>,
}

impl Counters {
    /// Zero counters for `nranks` peers.
    pub fn new(nranks: usize) -> Self {
        Counters {
            sent: vec![0; nranks],
            arrived: vec![0; nranks],
        }
    }

    /// Counts a message sent to `dst`.
    pub fn on_send(&mut self, dst: usize) {
        self.sent[dst] += 1;
    }

    /// Counts a message from `src` taken out of MPI.
    pub fn on_arrive(&mut self, src: usize) {
        self.arrived[src] += 1;
    }

    /// Back to zero (after a drain, when arrived == sent on every pair).
    pub fn reset(&mut self) {
        self.sent.iter_mut().for_each(|x| *x = 0);
        self.arrived.iter_mut().for_each(|x| *x = 0);
    }
}

/// A broken counting invariant found by the drain plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuiesceError {
    /// More messages arrived from a peer than it says it sent: one was counted twice.
    #[error(
        "rank {peer} sent {sent} messages here but {arrived} arrived: a message was counted twice"
    )]
    OverArrived {
        /// The peer.
        peer: usize,
        /// What the peer says it sent.
        sent: u64,
        /// What arrived here.
        arrived: u64,
    },
    /// The count vectors do not cover the same ranks.
    #[error("count vectors of different lengths ({sent} sent, {arrived} arrived)")]
    Lengths {
        /// Length of the sent vector.
        sent: usize,
        /// Length of the arrived vector.
        arrived: usize,
    },
}

/// How many messages to pull from each peer: `sent_to_me[p] - arrived[p]`.
pub fn drain_plan(sent_to_me: &[u64], arrived: &[u64]) -> Result<Vec<u64>, QuiesceError> {
    if sent_to_me.len() != arrived.len() {
        return Err(QuiesceError::Lengths {
            sent: sent_to_me.len(),
            arrived: arrived.len(),
        });
    }
    sent_to_me
        .iter()
        .zip(arrived)
        .enumerate()
        .map(|(peer, (&sent, &arrived))| {
            sent.checked_sub(arrived).ok_or(QuiesceError::OverArrived {
                peer,
                sent,
                arrived,
            })
        })
        .collect()
}

/// What a drain pulled, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Messages drained.
    pub messages: u64,
    /// Payload bytes drained.
    pub bytes: u64,
}

impl DrainReport {
    /// Counts one drained message.
    pub fn record(&mut self, m: &Logged) {
        self.messages += 1;
        self.bytes += m.data.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(src: i32, tag: i32, id: u8) -> Logged {
        Logged {
            src,
            tag,
            data: vec![id],
        }
    }

    fn check(log: &[Logged], src: Source, tag: TagSel, expected: Option<u8>) {
        let mut l = MessageLog::default();
        for m in log {
            l.push(m.clone());
        }
        let got = l.take_match(src, tag).map(|m| m.data[0]);
        assert_eq!(got, expected, "{src:?} {tag:?} in {log:?}");
    }

    #[test]
    fn log_matching_order() {
        let log = [msg(1, 5, 1), msg(2, 5, 2), msg(1, 7, 3), msg(1, 5, 4)];
        check(&log, Source::Rank(1), TagSel::Tag(5), Some(1));
        check(&log, Source::Rank(1), TagSel::Tag(7), Some(3));
        check(&log, Source::Rank(2), TagSel::Any, Some(2));
        check(&log, Source::Any, TagSel::Tag(7), Some(3));
        check(&log, Source::Any, TagSel::Any, Some(1));
        check(&log, Source::Rank(3), TagSel::Any, None);
        check(&log, Source::Rank(2), TagSel::Tag(7), None);
        check(&[], Source::Any, TagSel::Any, None);
    }

    #[test]
    fn same_source_and_tag_come_out_in_order() {
        let mut l = MessageLog::default();
        for i in 0..5 {
            l.push(msg(1, 5, i));
        }
        let got: Vec<u8> = (0..5)
            .map(|_| l.take_match(Source::Rank(1), TagSel::Tag(5)).unwrap().data[0])
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(l.is_empty());
    }

    #[test]
    fn encoding_round_trips_and_every_truncation_fails() {
        let mut l = MessageLog::default();
        l.push(msg(0, 1, 9));
        l.push(Logged {
            src: 3,
            tag: i32::MAX,
            data: vec![],
        });
        l.push(Logged {
            src: 2,
            tag: 0,
            data: (0..300).map(|i| i as u8).collect(),
        });
        let bytes = l.encode();
        assert_eq!(MessageLog::decode(&bytes).unwrap(), l);
        assert_eq!(MessageLog::decode(&[]).unwrap(), MessageLog::default());
        for cut in 1..bytes.len() {
            assert!(MessageLog::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(MessageLog::decode(&longer), Err(LogError::Trailing(1)));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"CKML");
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(
            MessageLog::decode(&bytes),
            Err(LogError::Truncated { index: 0, .. })
        ));
    }

    #[test]
    fn negative_source_or_tag_is_refused() {
        for (src, tag) in [(-1, 0), (0, -1)] {
            let mut l = MessageLog::default();
            l.push(Logged {
                src,
                tag,
                data: vec![1],
            });
            let err = MessageLog::decode(&l.encode()).unwrap_err();
            assert!(err.to_string().contains("message 0: negative"), "{err}");
        }
    }

    #[test]
    fn drain_plans() {
        assert_eq!(drain_plan(&[3, 0, 2], &[1, 0, 2]), Ok(vec![2, 0, 0]));
        assert_eq!(
            drain_plan(&[1, 0], &[2, 0]),
            Err(QuiesceError::OverArrived {
                peer: 0,
                sent: 1,
                arrived: 2
            })
        );
        assert!(drain_plan(&[1], &[1, 0]).is_err());
    }
}
