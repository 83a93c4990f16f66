//! Why the `Node` API refused: one enum per call family, each variant one cause.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use glueberry_transport::ConnState;

use crate::address_book::BookError;
use crate::shard::Refused;

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// io_uring could not be set up; the node refuses to run without it.
    #[error(
        "io_uring is unavailable ({0}); check `sysctl kernel.io_uring_disabled` (must be 0) and \
         any seccomp profile that blocks io_uring_setup"
    )]
    IoUringUnavailable(io::Error),
    /// The address book could not be opened (corrupt, locked by another node, unreadable).
    #[error(transparent)]
    AddressBook(#[from] BookError),
    /// Binding the listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Another system call failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Why `connect_and_wait` did not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The attempt failed; the peer is now in `state` (Reconnecting: it will retry by itself).
    #[error("connection failed; peer is now {state:?} ({})", reason.as_deref().unwrap_or("no reason"))]
    Failed {
        /// The peer's state after the failure.
        state: ConnState,
        /// Why, when known.
        reason: Option<String>,
    },
    /// The peer authenticated us and refused the connection with `code`: `BLACKLISTED` (7,
    /// permanent: the peer is not redialled), `TOO_MANY_CONNECTIONS` (9; redialled with
    /// backoff), `HANDSHAKE_TIMEOUT` (8: its cooldown for us runs).
    #[error("the peer refused the connection: {code}")]
    Refused {
        /// The peer's close code.
        code: glueberry_transport::CloseCode,
    },
    /// The command could not be queued.
    #[error(transparent)]
    Send(#[from] NodeSendError),
}

/// A host name did not resolve (`Node::connect_to` with a DNS name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve {host}: {message}")]
pub struct ResolveError {
    /// The name.
    pub host: String,
    /// What the resolver said.
    pub message: String,
}

/// Why an address book command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The address book refused or could not write.
    #[error(transparent)]
    AddressBook(#[from] BookError),
    /// The shards could not take the command.
    #[error(transparent)]
    Send(#[from] NodeSendError),
}

/// Why `send` refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeSendError {
    /// The shard's queue is full: `try_send` does not wait (`send` would).
    #[error("buffer full: the peer's shard has no room; retry or use send()")]
    BufferFull,
    /// The message is longer than `max_message_size`.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The node stopped.
    #[error("node stopped")]
    Stopped,
    /// The peer is not Established with this stream open: not connected (yet, or any more),
    /// unknown, blacklisted, or the stream was not among those opened.
    #[error("the peer is not Established with this stream open")]
    NotEstablished,
    /// The peer did not open this stream on its side.
    #[error("the peer rejected this stream")]
    StreamRejected,
    /// No room came on the stream within the time allowed
    /// ([`Node::send_timeout`](crate::Node::send_timeout), or a response past its
    /// `respond_timeout`): the peer is not taking what it was sent. The message was not
    /// accepted.
    #[error("no room on the peer's stream in the time allowed: it is not taking its messages")]
    TimedOut,
}

/// A full command queue refuses as `BufferFull`; a closed one (the node stopped) as `Stopped`.
impl<T> From<Refused<T>> for NodeSendError {
    fn from(refused: Refused<T>) -> Self {
        match refused {
            Refused::Full(_) => NodeSendError::BufferFull,
            Refused::Closed(_) => NodeSendError::Stopped,
        }
    }
}

/// [`Node::try_send`](crate::Node::try_send) refused: why, and the message, which is still the
/// caller's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct TrySendError {
    /// Why.
    pub error: NodeSendError,
    /// The message, untouched.
    pub data: Bytes,
}

impl TrySendError {
    /// The message back.
    pub fn into_inner(self) -> Bytes {
        self.data
    }
}

impl From<TrySendError> for NodeSendError {
    fn from(e: TrySendError) -> Self {
        e.error
    }
}

/// Why a [`Node::request`](crate::Node::request) got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No response within the timeout.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    /// The peer's connection ended before it responded.
    #[error("the peer disconnected before responding")]
    Disconnected,
    /// The peer will not respond: nothing serves requests on that stream there, or the
    /// responder refused this one.
    #[error("the peer refused the request")]
    Refused,
    /// Too many requests to this peer wait for their response.
    #[error("{0} requests to this peer already wait for a response")]
    TooManyInFlight(usize),
    /// The request could not be sent (the peer is not Established with the stream open, the
    /// node stopped, the message is too large).
    #[error(transparent)]
    Send(#[from] NodeSendError),
}
