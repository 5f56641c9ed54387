//! gRPC message framing on a response body, read without trusting the sender: each message
//! is a 5-byte prefix (compressed flag, big-endian length) and its bytes. A message longer
//! than the limit is skipped as its bytes arrive and reported once as [`Incoming::Oversize`],
//! so memory stays bounded by the limit whatever the worker sends, and the stream goes on.
//! (tonic's own decoder ends the whole stream on an oversize message, after the caller has
//! chosen a limit it must also be willing to buffer.)

use bytes::{Buf, Bytes, BytesMut};

/// One message read from the body.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The bytes of one message (not yet decoded).
    Message(Bytes),
    /// A message over the limit: its bytes were discarded.
    Oversize,
    /// A message marked compressed: this client never asks for compression, so it cannot be
    /// decoded; its bytes were discarded.
    Compressed,
}

const PREFIX: usize = 5;

enum ReadState {
    /// Reading the 5-byte prefix; `have` bytes of it so far.
    Prefix { bytes: [u8; PREFIX], have: usize },
    /// Collecting a message of `len` bytes.
    Body { len: usize, parts: BytesMut },
    /// Discarding `remaining` bytes of a message that will not be delivered.
    Skip { remaining: usize },
}

/// Splits a byte stream into gRPC messages; feed it the body's data chunks in order.
pub struct MessageReader {
    max_message: usize,
    state: ReadState,
}

impl MessageReader {
    pub fn new(max_message: usize) -> MessageReader {
        MessageReader { max_message, state: ReadState::Prefix { bytes: [0; PREFIX], have: 0 } }
    }

    /// Consumes `chunk`, appending every message it completes to `out`. What is kept between
    /// calls is at most one message under the limit.
    pub fn feed(&mut self, mut chunk: Bytes, out: &mut Vec<Incoming>) {
        while chunk.has_remaining() {
            match &mut self.state {
                ReadState::Prefix { bytes, have } => {
                    let take = (PREFIX - *have).min(chunk.len());
                    bytes[*have..*have + take].copy_from_slice(&chunk[..take]);
                    chunk.advance(take);
                    *have += take;
                    if *have == PREFIX {
                        let compressed = bytes[0] != 0;
                        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                        self.start_message(compressed, len, out);
                    }
                }
                ReadState::Body { len, parts } => {
                    let missing = *len - parts.len();
                    if parts.is_empty() && chunk.len() >= missing {
                        // The whole message is in this chunk: no copy.
                        out.push(Incoming::Message(chunk.split_to(missing)));
                    } else {
                        let take = missing.min(chunk.len());
                        parts.extend_from_slice(&chunk[..take]);
                        chunk.advance(take);
                        if parts.len() < *len {
                            continue;
                        }
                        out.push(Incoming::Message(std::mem::take(parts).freeze()));
                    }
                    self.state = ReadState::Prefix { bytes: [0; PREFIX], have: 0 };
                }
                ReadState::Skip { remaining } => {
                    let take = (*remaining).min(chunk.len());
                    chunk.advance(take);
                    *remaining -= take;
                    if *remaining == 0 {
                        self.state = ReadState::Prefix { bytes: [0; PREFIX], have: 0 };
                    }
                }
            }
        }
    }

    fn start_message(&mut self, compressed: bool, len: usize, out: &mut Vec<Incoming>) {
        let rejected = if compressed {
            Some(Incoming::Compressed)
        } else if len > self.max_message {
            Some(Incoming::Oversize)
        } else {
            None
        };
        self.state = match rejected {
            Some(reason) => {
                out.push(reason);
                if len == 0 {
                    ReadState::Prefix { bytes: [0; PREFIX], have: 0 }
                } else {
                    ReadState::Skip { remaining: len }
                }
            }
            None if len == 0 => {
                out.push(Incoming::Message(Bytes::new()));
                ReadState::Prefix { bytes: [0; PREFIX], have: 0 }
            }
            // Reserved once (len is within the limit), not grown by doubling.
            None => ReadState::Body { len, parts: BytesMut::with_capacity(len) },
        };
    }

    /// Bytes held for an unfinished message (for tests and bounds).
    pub fn held_bytes(&self) -> usize {
        match &self.state {
            ReadState::Prefix { have, .. } => *have,
            ReadState::Body { parts, .. } => parts.len(),
            ReadState::Skip { .. } => 0,
        }
    }
}

/// Frames one message for sending.
pub fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(PREFIX + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed_frame(message: &[u8]) -> Vec<u8> {
        let mut framed = frame(message).to_vec();
        framed[0] = 1;
        framed
    }

    fn read_in_chunks(bytes: &[u8], chunk: usize, max: usize) -> (Vec<Incoming>, usize) {
        let mut reader = MessageReader::new(max);
        let mut out = Vec::new();
        let mut most_held = 0;
        for piece in bytes.chunks(chunk.max(1)) {
            reader.feed(Bytes::copy_from_slice(piece), &mut out);
            most_held = most_held.max(reader.held_bytes());
        }
        (out, most_held)
    }

    #[test]
    fn messages_survive_any_chunking() {
        let mut stream = Vec::new();
        let messages: Vec<Vec<u8>> = vec![b"a".to_vec(), Vec::new(), vec![7; 300], b"last".to_vec()];
        for m in &messages {
            stream.extend_from_slice(&frame(m));
        }
        for chunk in [1, 2, 5, 6, 7, 64, 10_000] {
            let (out, _) = read_in_chunks(&stream, chunk, 1024);
            let expected: Vec<Incoming> =
                messages.iter().map(|m| Incoming::Message(Bytes::copy_from_slice(m))).collect();
            assert_eq!(out, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn oversize_messages_are_skipped_without_being_held() {
        let mut stream = frame(b"before").to_vec();
        stream.extend_from_slice(&frame(&vec![1; 100_000]));
        stream.extend_from_slice(&frame(b"after"));
        for chunk in [3, 1000, 16_384, 200_000] {
            let (out, most_held) = read_in_chunks(&stream, chunk, 4096);
            assert_eq!(
                out,
                vec![
                    Incoming::Message(Bytes::from_static(b"before")),
                    Incoming::Oversize,
                    Incoming::Message(Bytes::from_static(b"after")),
                ],
                "chunk size {chunk}"
            );
            assert!(most_held <= 4096, "held {most_held} bytes with chunk size {chunk}");
        }
    }

    #[test]
    fn a_message_at_the_limit_passes_and_one_byte_more_does_not() {
        let mut stream = frame(&[2; 64]).to_vec();
        stream.extend_from_slice(&frame(&[3; 65]));
        let (out, _) = read_in_chunks(&stream, 7, 64);
        assert_eq!(out, vec![Incoming::Message(Bytes::from(vec![2; 64])), Incoming::Oversize]);
    }

    #[test]
    fn compressed_messages_are_reported_and_skipped() {
        let mut stream = compressed_frame(b"zipped");
        stream.extend_from_slice(&frame(b"plain"));
        let (out, _) = read_in_chunks(&stream, 4, 1024);
        assert_eq!(out, vec![Incoming::Compressed, Incoming::Message(Bytes::from_static(b"plain"))]);
    }

    #[test]
    fn a_length_prefix_claiming_4_gib_holds_nothing() {
        let mut stream = vec![0, 0xff, 0xff, 0xff, 0xff];
        stream.extend_from_slice(&[9; 50_000]);
        let (out, most_held) = read_in_chunks(&stream, 1000, 1024);
        assert_eq!(out, vec![Incoming::Oversize]);
        assert!(most_held <= PREFIX);
    }
}
