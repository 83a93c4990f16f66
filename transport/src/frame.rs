//! Frames: what a record's plaintext is made of (`PROTOCOL.md` §5).
//!
//! A record carries one or more whole frames; a frame never spans records. Decoding borrows
//! from the record and checks every length against what is left before reading it.

/// Frame type: (a fragment of) an application message.
pub const FRAME_DATA: u8 = 0x01;
/// Frame type: more flow-control credit for one of the peer's streams.
pub const FRAME_CREDIT: u8 = 0x02;
/// Frame type: the sender's limits; the first frame each side sends.
pub const FRAME_SETTINGS: u8 = 0x03;
/// Frame type: the sender opens a named stream under an id of its choosing.
pub const FRAME_OPEN: u8 = 0x04;
/// Frame type: the receiver has not opened the stream the peer opened under this id.
pub const FRAME_REJECT: u8 = 0x05;
/// Frame type: keepalive request.
pub const FRAME_PING: u8 = 0x06;
/// Frame type: keepalive answer.
pub const FRAME_PONG: u8 = 0x07;
/// Frame type: the sender closes the connection; nothing follows.
pub const FRAME_CLOSE: u8 = 0x08;

/// DATA flag: the first fragment of a message.
pub const DATA_FIRST: u8 = 0x01;
/// DATA flag: the last fragment of a message.
pub const DATA_LAST: u8 = 0x02;

/// Header length of a DATA frame carrying a whole message.
pub const DATA_HEADER_LEN: usize = 6;
/// Header length of a DATA frame that starts a multi-fragment message (adds the total length).
pub const DATA_FIRST_HEADER_LEN: usize = 10;
/// The longest stream name.
pub const MAX_STREAM_NAME_LEN: usize = 64;
/// Length of the longest control frame (OPEN with a 64-byte name).
pub const MAX_CONTROL_FRAME_LEN: usize = 4 + MAX_STREAM_NAME_LEN;

/// A decoded frame, borrowing from the record it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message, or a fragment of one.
    Data {
        /// The sender's stream id.
        stream: u16,
        /// [`DATA_FIRST`] and/or [`DATA_LAST`].
        flags: u8,
        /// The whole message's length: present only on a first fragment that is not also last.
        total_len: Option<u32>,
        /// The fragment's bytes.
        payload: &'a [u8],
    },
    /// The receiver of this frame may send `increment` more bytes on its stream `stream`.
    Credit {
        /// The stream id, in the id space of the side that receives this frame.
        stream: u16,
        /// Bytes of credit added.
        increment: u32,
    },
    /// The sender's limits.
    Settings(Settings),
    /// A stream opened by the sender.
    Open {
        /// The id the sender will use for it.
        stream: u16,
        /// Its name.
        name: &'a [u8],
    },
    /// The sender refuses the stream the receiver opened under `stream`.
    Reject {
        /// The stream id, in the id space of the side that receives this frame.
        stream: u16,
    },
    /// Keepalive request.
    Ping(u64),
    /// Keepalive answer.
    Pong(u64),
    /// The connection is closing.
    Close(u16),
}

/// Limits a node announces to its peer in its SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The longest message it accepts.
    pub max_message_size: u32,
    /// How many streams (ids `0..max_streams`) it accepts, the `handshake` stream included.
    pub max_streams: u16,
    /// The credit every stream starts with, the `handshake` stream (id 0) included.
    pub initial_window: u32,
    /// The credit all streams share: every DATA frame costs against its stream's credit and
    /// this one (PROTOCOL.md §5.4).
    pub connection_window: u32,
}

/// The stream id a CREDIT frame names to add to the connection's credit rather than one
/// stream's (no stream has it: ids are below `max_streams` ≤ 1024).
pub const CONNECTION_CREDIT: u16 = u16::MAX;

/// A frame that does not decode. The peer broke the protocol; the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Unknown frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame runs past the end of its record.
    #[error("frame truncated")]
    Truncated,
    /// A field has a value the protocol forbids.
    #[error("invalid frame field: {0}")]
    Invalid(&'static str),
}

impl<'a> Frame<'a> {
    /// Decodes the frame at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &'a [u8]) -> Result<(Frame<'a>, usize), FrameError> {
        let (&kind, rest) = bytes.split_first().ok_or(FrameError::Truncated)?;
        let mut r = Reader { bytes: rest };
        let frame = match kind {
            FRAME_DATA => {
                let stream = r.u16()?;
                let flags = r.u8()?;
                if flags & !(DATA_FIRST | DATA_LAST) != 0 {
                    return Err(FrameError::Invalid("DATA flags"));
                }
                let len = r.u16()? as usize;
                let total_len = if flags == DATA_FIRST {
                    Some(r.u32()?)
                } else {
                    None
                };
                let payload = r.take(len)?;
                Frame::Data {
                    stream,
                    flags,
                    total_len,
                    payload,
                }
            }
            FRAME_CREDIT => Frame::Credit {
                stream: r.u16()?,
                increment: r.u32()?,
            },
            FRAME_SETTINGS => Frame::Settings(Settings {
                max_message_size: r.u32()?,
                max_streams: r.u16()?,
                initial_window: r.u32()?,
                connection_window: r.u32()?,
            }),
            FRAME_OPEN => {
                let stream = r.u16()?;
                let len = r.u8()? as usize;
                let name = r.take(len)?;
                if !is_valid_stream_name(name) {
                    return Err(FrameError::Invalid("stream name"));
                }
                Frame::Open { stream, name }
            }
            FRAME_REJECT => Frame::Reject { stream: r.u16()? },
            FRAME_PING => Frame::Ping(r.u64()?),
            FRAME_PONG => Frame::Pong(r.u64()?),
            FRAME_CLOSE => Frame::Close(r.u16()?),
            other => return Err(FrameError::UnknownType(other)),
        };
        Ok((frame, bytes.len() - r.bytes.len()))
    }

    /// The encoded length of this frame.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Frame::Data {
                total_len, payload, ..
            } => 5 + if total_len.is_some() { 4 } else { 0 } + payload.len(),
            Frame::Credit { .. } => 6,
            Frame::Settings(_) => 14,
            Frame::Open { name, .. } => 3 + name.len(),
            Frame::Reject { .. } => 2,
            Frame::Ping(_) | Frame::Pong(_) => 8,
            Frame::Close(_) => 2,
        }
    }

    /// Encodes the frame at the start of `out`, which must hold [`Frame::encoded_len`] bytes;
    /// returns that length, or `None` (writing nothing useful) if it does not fit.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.encoded_len();
        let mut w = Writer {
            out: out.get_mut(..len)?,
            pos: 0,
        };
        match *self {
            Frame::Data {
                stream,
                flags,
                total_len,
                payload,
            } => {
                w.put(&[FRAME_DATA]);
                w.put(&stream.to_be_bytes());
                w.put(&[flags]);
                w.put(&(payload.len() as u16).to_be_bytes());
                if let Some(total) = total_len {
                    w.put(&total.to_be_bytes());
                }
                w.put(payload);
            }
            Frame::Credit { stream, increment } => {
                w.put(&[FRAME_CREDIT]);
                w.put(&stream.to_be_bytes());
                w.put(&increment.to_be_bytes());
            }
            Frame::Settings(s) => {
                w.put(&[FRAME_SETTINGS]);
                w.put(&s.max_message_size.to_be_bytes());
                w.put(&s.max_streams.to_be_bytes());
                w.put(&s.initial_window.to_be_bytes());
                w.put(&s.connection_window.to_be_bytes());
            }
            Frame::Open { stream, name } => {
                w.put(&[FRAME_OPEN]);
                w.put(&stream.to_be_bytes());
                w.put(&[name.len() as u8]);
                w.put(name);
            }
            Frame::Reject { stream } => {
                w.put(&[FRAME_REJECT]);
                w.put(&stream.to_be_bytes());
            }
            Frame::Ping(v) => {
                w.put(&[FRAME_PING]);
                w.put(&v.to_be_bytes());
            }
            Frame::Pong(v) => {
                w.put(&[FRAME_PONG]);
                w.put(&v.to_be_bytes());
            }
            Frame::Close(code) => {
                w.put(&[FRAME_CLOSE]);
                w.put(&code.to_be_bytes());
            }
        }
        Some(len)
    }
}

/// Writes the header of a DATA frame (no payload) at the start of `out`; returns its length.
/// The hot path uses this to copy the payload straight from the message into the record.
#[inline]
pub(crate) fn encode_data_header(
    out: &mut [u8],
    stream: u16,
    flags: u8,
    fragment_len: usize,
    total_len: Option<u32>,
) -> usize {
    let [s0, s1] = stream.to_be_bytes();
    let [l0, l1] = (fragment_len as u16).to_be_bytes();
    match total_len {
        None => {
            out[..DATA_HEADER_LEN].copy_from_slice(&[FRAME_DATA, s0, s1, flags, l0, l1]);
            DATA_HEADER_LEN
        }
        Some(total) => {
            let [t0, t1, t2, t3] = total.to_be_bytes();
            out[..DATA_FIRST_HEADER_LEN]
                .copy_from_slice(&[FRAME_DATA, s0, s1, flags, l0, l1, t0, t1, t2, t3]);
            DATA_FIRST_HEADER_LEN
        }
    }
}

/// Whether `name` is a valid stream name: 1 to 64 bytes of ASCII letters, digits, `-`, `_`.
pub fn is_valid_stream_name(name: &[u8]) -> bool {
    (1..=MAX_STREAM_NAME_LEN).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < len {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(FrameError::Truncated)?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_be_bytes)
    }
}

struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_strategy() -> impl Strategy<Value = (u8, u16, u8, u32, u64, Vec<u8>, Vec<u8>)> {
        (
            0u8..8,
            any::<u16>(),
            0u8..=3,
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..3000),
            proptest::string::string_regex("[A-Za-z0-9_-]{1,64}")
                .expect("regex")
                .prop_map(String::into_bytes),
        )
    }

    fn build<'a>(
        (kind, stream, flags, word, long, payload, name): &'a (
            u8,
            u16,
            u8,
            u32,
            u64,
            Vec<u8>,
            Vec<u8>,
        ),
    ) -> Frame<'a> {
        match kind {
            0 => Frame::Data {
                stream: *stream,
                flags: *flags,
                total_len: (*flags == DATA_FIRST).then_some(*word),
                payload,
            },
            1 => Frame::Credit {
                stream: *stream,
                increment: *word,
            },
            2 => Frame::Settings(Settings {
                max_message_size: *word,
                max_streams: *stream,
                initial_window: word.rotate_left(7),
                connection_window: word.rotate_left(13),
            }),
            3 => Frame::Open {
                stream: *stream,
                name,
            },
            4 => Frame::Reject { stream: *stream },
            5 => Frame::Ping(*long),
            6 => Frame::Pong(*long),
            _ => Frame::Close(*stream),
        }
    }

    proptest! {
        #[test]
        fn any_sequence_of_frames_round_trips(frames in proptest::collection::vec(frame_strategy(), 1..12)) {
            let built: Vec<Frame<'_>> = frames.iter().map(build).collect();
            let total: usize = built.iter().map(Frame::encoded_len).sum();
            let mut buf = vec![0u8; total];
            let mut at = 0;
            for frame in &built {
                at += frame.encode(&mut buf[at..]).expect("fits");
            }
            prop_assert_eq!(at, total);
            let mut at = 0;
            for frame in &built {
                let (decoded, len) = Frame::decode(&buf[at..]).expect("decodes");
                prop_assert_eq!(&decoded, frame);
                prop_assert_eq!(len, frame.encoded_len());
                at += len;
            }
        }

        #[test]
        fn decoding_never_panics_and_never_reads_past_the_input(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok((frame, len)) = Frame::decode(&bytes) {
                prop_assert!(len <= bytes.len());
                prop_assert_eq!(frame.encoded_len(), len);
            }
        }

        #[test]
        fn every_truncation_is_detected(frame in frame_strategy()) {
            let built = build(&frame);
            let mut buf = vec![0u8; built.encoded_len()];
            built.encode(&mut buf).expect("fits");
            for cut in 0..buf.len() {
                prop_assert_eq!(Frame::decode(&buf[..cut]), Err(FrameError::Truncated));
            }
        }
    }

    #[test]
    fn header_helper_matches_the_codec() {
        let mut a = [0u8; 16];
        let n = encode_data_header(&mut a, 7, DATA_FIRST, 3, Some(1000));
        let mut b = [0u8; 16];
        let frame = Frame::Data {
            stream: 7,
            flags: DATA_FIRST,
            total_len: Some(1000),
            payload: &[0, 0, 0],
        };
        frame.encode(&mut b).expect("fits");
        assert_eq!(a[..n], b[..n]);
        assert_eq!(n, DATA_FIRST_HEADER_LEN);
        let n = encode_data_header(&mut a, 7, DATA_FIRST | DATA_LAST, 3, None);
        assert_eq!(n, DATA_HEADER_LEN);
    }

    #[test]
    fn stream_names() {
        assert!(is_valid_stream_name(b"consensus"));
        assert!(is_valid_stream_name(b"block-sync_2"));
        assert!(is_valid_stream_name(&[b'a'; 64]));
        assert!(!is_valid_stream_name(&[b'a'; 65]));
        assert!(!is_valid_stream_name(b""));
        assert!(!is_valid_stream_name(b"has space"));
        assert!(!is_valid_stream_name(b"dot.ted"));
        assert!(!is_valid_stream_name("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(Frame::decode(&[0x00]), Err(FrameError::UnknownType(0)));
        assert_eq!(
            Frame::decode(&[0x99, 1, 2]),
            Err(FrameError::UnknownType(0x99))
        );
        assert_eq!(
            Frame::decode(&[FRAME_DATA, 0, 1, 0x04, 0, 0]),
            Err(FrameError::Invalid("DATA flags"))
        );
        assert_eq!(
            Frame::decode(&[FRAME_OPEN, 0, 1, 3, b'a', b' ', b'b']),
            Err(FrameError::Invalid("stream name"))
        );
        // A DATA length past the record's end.
        assert_eq!(
            Frame::decode(&[FRAME_DATA, 0, 1, 3, 0xff, 0xff, 1, 2]),
            Err(FrameError::Truncated)
        );
    }
}
