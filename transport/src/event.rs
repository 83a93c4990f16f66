//! What a connection reports, and why it fails.

use std::time::Duration;

use bytes::Bytes;
use glueberry_crypto::{HandshakeError, PeerId, RecordError};

use crate::frame::FrameError;

/// A stream of one connection, as the application sees it: an index into the connection's
/// stream table. [`StreamId::HANDSHAKE`] is always 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub(crate) u16);

impl StreamId {
    /// The reserved `handshake` stream, open from Connected on.
    pub const HANDSHAKE: StreamId = StreamId(0);

    /// The index of this stream in its connection's table.
    pub fn index(self) -> u16 {
        self.0
    }

    /// The stream at `index` of a connection's table (a driver that stored [`StreamId::index`];
    /// an index the connection does not have is refused by it as an unknown stream).
    pub fn from_index(index: u16) -> StreamId {
        StreamId(index)
    }
}

/// Who opened the connection. Fixed when the connection is made; never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Direction {
    /// We dialled.
    Outbound,
    /// The peer dialled.
    Inbound,
}

/// Something the application should know about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The secure handshake finished: the peer is authenticated and the `handshake` stream open.
    Connected {
        /// The peer's authenticated identity.
        peer: PeerId,
        /// The hello bytes the peer sent inside the secure handshake.
        remote_hello: Bytes,
    },
    /// [`crate::Connection::complete_handshake`] took effect: the named streams are open on our
    /// side.
    Established,
    /// The peer opened one of our streams too: messages queued on it start flowing.
    StreamAccepted(StreamId),
    /// The peer has answered every stream we opened (each one [`Event::StreamAccepted`] or
    /// [`Event::StreamRejected`] before this): it answers only once its own application has
    /// completed the handshake, so both sides are now Established. Comes once, after
    /// [`Event::Established`] (right after it when we opened no named stream).
    Ready,
    /// The peer has not opened this stream: its queued messages were not sent (`unsent` of them),
    /// and sends on it fail from now on.
    StreamRejected {
        /// Our stream.
        stream: StreamId,
        /// Messages accepted by `send` that will not be delivered.
        unsent: u64,
    },
    /// A stream that reached its high watermark drained to its low watermark: `send` accepts
    /// again.
    Writable(StreamId),
    /// A message arrived. Call [`crate::Connection::release`] once it is consumed, to return its
    /// credit to the peer.
    Message {
        /// The stream it arrived on.
        stream: StreamId,
        /// Its bytes.
        data: Bytes,
    },
    /// The connection closed with messages accepted by `send` that the peer did not confirm
    /// (one event per stream that has any, just before [`Event::Closed`]).
    Undelivered {
        /// Our stream.
        stream: StreamId,
        /// Never written, in whole or at all: the peer did not get them.
        unsent: Vec<Bytes>,
        /// Written, but the peer had not returned their credit: it may or may not have them.
        unconfirmed: Vec<Bytes>,
    },
    /// The peer returned credit that confirms `messages` of our messages on `stream` (`bytes` of
    /// payload) whole: they are let go. A driver that counts what it accepted and not yet had
    /// confirmed (a send bound that covers written-but-unconfirmed messages) gives their room
    /// back here. Comes at most once per CREDIT frame, so it is rare (credit is batched).
    Confirmed {
        /// Our stream.
        stream: StreamId,
        /// Messages confirmed.
        messages: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// A keepalive round trip completed.
    Rtt(Duration),
    /// The connection is over; nothing more will happen on it.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Messages accepted by `send` that were not (fully) transmitted.
        unsent: u64,
    },
}

/// Close codes carried in CLOSE frames (`PROTOCOL.md` §5.8), by name. A code this version does
/// not define is kept as [`CloseCode::Other`]; [`CloseCode::from_u16`] never puts a defined code
/// there, so equal codes compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum CloseCode {
    /// 0: orderly close by the application.
    Normal,
    /// 1: the other side broke the protocol.
    ProtocolError,
    /// 2: the other side sent more than its credit.
    FlowControl,
    /// 3: the other side sent a message above the announced limit.
    MessageTooLarge,
    /// 4: nothing was heard for the idle timeout.
    IdleTimeout,
    /// 5: the node is shutting down.
    Shutdown,
    /// 6: another connection to the same peer won (simultaneous dial), or replaced this one.
    Duplicate,
    /// 7: the peer is blacklisted.
    Blacklisted,
    /// 8: the application handshake did not complete in time.
    HandshakeTimeout,
    /// 9: connection limits were reached (or this inbound peer was evicted to make room).
    TooManyConnections,
    /// 10: the peer took none of our data (zero TCP window, or credit withheld while we had
    /// data for it) for the send-stall timeout.
    SendStalled,
    /// 11: the node's budget for what it holds for its peers was reached, and this peer held
    /// the most of it (messages sent to it and not confirmed, queued for it).
    OverBudget,
    /// 12: the peer is not a member of any peer set this node tracks (it admits members only),
    /// or it left every tracked set and its grace ran out.
    NotMember,
    /// A code this version does not define (received from a newer peer).
    Other(u16),
}

impl CloseCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolError => 1,
            CloseCode::FlowControl => 2,
            CloseCode::MessageTooLarge => 3,
            CloseCode::IdleTimeout => 4,
            CloseCode::Shutdown => 5,
            CloseCode::Duplicate => 6,
            CloseCode::Blacklisted => 7,
            CloseCode::HandshakeTimeout => 8,
            CloseCode::TooManyConnections => 9,
            CloseCode::SendStalled => 10,
            CloseCode::OverBudget => 11,
            CloseCode::NotMember => 12,
            CloseCode::Other(code) => code,
        }
    }

    /// The code a number on the wire names.
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::ProtocolError,
            2 => CloseCode::FlowControl,
            3 => CloseCode::MessageTooLarge,
            4 => CloseCode::IdleTimeout,
            5 => CloseCode::Shutdown,
            6 => CloseCode::Duplicate,
            7 => CloseCode::Blacklisted,
            8 => CloseCode::HandshakeTimeout,
            9 => CloseCode::TooManyConnections,
            10 => CloseCode::SendStalled,
            11 => CloseCode::OverBudget,
            12 => CloseCode::NotMember,
            other => CloseCode::Other(other),
        }
    }

    /// The code's name, as PROTOCOL.md §5.8 lists it; `None` for a code this version does not
    /// define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            CloseCode::Normal => "Normal",
            CloseCode::ProtocolError => "ProtocolError",
            CloseCode::FlowControl => "FlowControl",
            CloseCode::MessageTooLarge => "MessageTooLarge",
            CloseCode::IdleTimeout => "IdleTimeout",
            CloseCode::Shutdown => "Shutdown",
            CloseCode::Duplicate => "Duplicate",
            CloseCode::Blacklisted => "Blacklisted",
            CloseCode::HandshakeTimeout => "HandshakeTimeout",
            CloseCode::TooManyConnections => "TooManyConnections",
            CloseCode::SendStalled => "SendStalled",
            CloseCode::OverBudget => "OverBudget",
            CloseCode::NotMember => "NotMember",
            CloseCode::Other(_) => return None,
        })
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self::from_u16(code)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.to_u16()),
            None => write!(f, "code {}", self.to_u16()),
        }
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it, with this code.
    Local(CloseCode),
    /// The peer closed it, with this code.
    Peer(CloseCode),
    /// It failed.
    Error(ConnectionError),
}

/// Why a connection failed. Every variant but the last group is the peer's doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The secure handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A record failed to parse or authenticate.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// A frame failed to parse.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A frame that is not allowed at this point.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The peer sent more than the credit it was given on a stream.
    #[error("peer exceeded its flow-control credit")]
    FlowControl,
    /// The peer sent a message longer than we announced we accept.
    #[error("peer sent a message of {len} bytes, above the limit of {max}")]
    MessageTooLarge {
        /// Its length.
        len: u64,
        /// Our limit.
        max: usize,
    },
    /// Nothing was heard from the peer for the idle timeout.
    #[error("peer silent for the idle timeout")]
    IdleTimeout,
    /// The byte stream ended without a CLOSE frame: the connection broke or was cut.
    #[error("connection lost (no close frame)")]
    ConnectionLost,
    /// Our dial did not give a TCP connection.
    #[error("dial failed: {0}")]
    Dial(DialError),
    /// Our dial did not give an authenticated connection within the dial timeout.
    #[error("no authenticated connection within the dial timeout")]
    DialTimeout,
}

impl ConnectionError {
    /// Whether dialling the same peer at the same address again cannot help: it is on another
    /// network, speaks another protocol version, or is not the peer that was dialled. Such a
    /// dial is not retried (a persistent peer is, at the longest backoff).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnectionError::Handshake(
                HandshakeError::NetworkMismatch { .. }
                    | HandshakeError::VersionMismatch { .. }
                    | HandshakeError::PeerIdMismatch { .. }
                    | HandshakeError::SelfConnection
            )
        )
    }
}

/// Why a dial did not give a TCP connection: what the driver reports with
/// [`NodeCore::handle_dial_result`](crate::NodeCore::handle_dial_result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The connect failed: `ConnectionRefused` (nothing listens there), `HostUnreachable`,
    /// `NetworkUnreachable`, `TimedOut` (the SYN went unanswered), or another kind.
    #[error("connect: {0}")]
    Connect(std::io::ErrorKind),
    /// The peer's host name did not resolve.
    #[error("host name did not resolve: {0}")]
    Resolve(String),
}

impl From<&std::io::Error> for DialError {
    fn from(e: &std::io::Error) -> Self {
        DialError::Connect(e.kind())
    }
}

/// Why `send` refused a message. The caller's to handle; the connection is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The stream is at its high watermark; wait for [`Event::Writable`].
    #[error("stream is full (high watermark); wait until it is writable")]
    Full,
    /// The message is longer than the peer accepts.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No such stream on this connection.
    #[error("no such stream")]
    UnknownStream,
    /// Named streams open with `complete_handshake`; only `handshake` is open before.
    #[error("stream not open yet: call complete_handshake first")]
    NotEstablished,
    /// The peer did not open this stream.
    #[error("the peer has not opened this stream")]
    StreamRejected,
    /// The connection is closing or closed.
    #[error("connection closed")]
    Closed,
}

/// Why `complete_handshake` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A name is empty, longer than 64 bytes, or has characters other than letters, digits, `-`
    /// and `_`; or it is the reserved `handshake`.
    #[error("invalid stream name {0:?}: use 1-64 letters, digits, '-' or '_' (not 'handshake')")]
    InvalidName(String),
    /// More streams than `max_streams` allows.
    #[error("too many streams: at most {max} including 'handshake'")]
    TooMany {
        /// The limit.
        max: u16,
    },
    /// The secure handshake has not finished, or the connection is closed.
    #[error("connection not in the Connected state")]
    NotConnected,
    /// `complete_handshake` was already called on this connection.
    #[error("handshake already completed")]
    AlreadyEstablished,
}
