//! The library envelope at the head of every application message.
//!
//! Every message sent through [`crate::Comm`] carries 16 bytes before its payload, so that the
//! receiver knows, from the message itself, where it stands in its sender's stream: the drain
//! plan, duplicate detection and the message log's order all follow from these numbers rather
//! than from counters kept beside the messages.
//!
//! # Layout (little-endian)
//!
//! ```text
//! 0   2  marker 0xC7 0x4B
//! 2   2  envelope version (1)
//! 4   4  era: how many restores the sending process had made (0 before restore(), 1 after)
//! 8   8  seq: this message's number in the sender's stream to this receiver, from 0
//! 16  ..  payload
//! ```

/// Bytes of the envelope in front of every payload.
pub const ENVELOPE_LEN: usize = 16;

const MARKER: [u8; 2] = [0xC7, 0x4B];
const VERSION: u16 = 1;

/// Where a message stands in its sender's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// Restores the sender had made when it sent the message.
    pub era: u32,
    /// Per (sender, receiver) sequence number, from 0.
    pub seq: u64,
}

/// Why a frame does not start with a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Fewer bytes than an envelope.
    #[error("{0} bytes, shorter than the {ENVELOPE_LEN}-byte envelope")]
    Short(usize),
    /// Wrong marker or version: not sent through the library.
    #[error("no ckpt envelope (found {0:02x?})")]
    Foreign(Vec<u8>),
}

impl Envelope {
    /// The envelope's bytes.
    pub fn encode(self) -> [u8; ENVELOPE_LEN] {
        let mut b = [0u8; ENVELOPE_LEN];
        b[0..2].copy_from_slice(&MARKER);
        b[2..4].copy_from_slice(&VERSION.to_le_bytes());
        b[4..8].copy_from_slice(&self.era.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// Reads the envelope at the head of `frame`.
    pub fn decode(frame: &[u8]) -> Result<Envelope, EnvelopeError> {
        let head = frame
            .get(..ENVELOPE_LEN)
            .ok_or(EnvelopeError::Short(frame.len()))?;
        if head[0..2] != MARKER || u16::from_le_bytes([head[2], head[3]]) != VERSION {
            return Err(EnvelopeError::Foreign(head[0..4].to_vec()));
        }
        let mut era = [0u8; 4];
        era.copy_from_slice(&head[4..8]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[8..16]);
        Ok(Envelope {
            era: u32::from_le_bytes(era),
            seq: u64::from_le_bytes(seq),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let e = Envelope {
            era: 1,
            seq: u64::MAX - 3,
        };
        let mut frame = e.encode().to_vec();
        frame.extend_from_slice(b"payload");
        assert_eq!(Envelope::decode(&frame), Ok(e));
        assert_eq!(
            Envelope::decode(&frame[..15]),
            Err(EnvelopeError::Short(15))
        );
        let mut foreign = frame.clone();
        foreign[0] = 0;
        assert!(matches!(
            Envelope::decode(&foreign),
            Err(EnvelopeError::Foreign(_))
        ));
        let mut newer = frame;
        newer[2] = 2;
        assert!(matches!(
            Envelope::decode(&newer),
            Err(EnvelopeError::Foreign(_))
        ));
    }
}
