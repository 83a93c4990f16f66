//! Why the `Node` API refused: one enum per call family, each variant one cause.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use glueberry_crypto::{HandshakeError, PeerId};
use glueberry_transport::{CloseCode, CloseReason, ConnState, ConnectionError, DialError};

use crate::address_book::BookError;

/// A setting that is invalid, named as the settings file names it (`network_id`,
/// `connection.initial_window`, `rate_limits.mempool`; for a [`NodeConfig`](crate::NodeConfig)
/// built in code, the method that sets it), and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The setting.
    pub key: String,
    /// What is wrong, and what to set instead.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
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

/// Why [`Node::connect_and_wait`](crate::Node::connect_and_wait) (or
/// [`Node::connect_ready`](crate::Node::connect_ready)) did not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The attempt failed, for `cause`; the peer is now in `state` (Reconnecting: it is
    /// redialled by itself; Disconnected: it is not, as after a wrong network or peer id).
    #[error("{cause}; the peer is now {state:?}")]
    Failed {
        /// The peer's state after the failure.
        state: ConnState,
        /// Why.
        cause: DialFailure,
    },
    /// The command could not be queued.
    #[error(transparent)]
    Send(#[from] NodeSendError),
}

impl ConnectError {
    /// Whether trying again can connect (see [`DialFailure::is_retriable`]).
    pub fn is_retriable(&self) -> bool {
        match self {
            ConnectError::Failed { cause, .. } => cause.is_retriable(),
            ConnectError::Send(e) => matches!(e, NodeSendError::BufferFull),
        }
    }
}

/// Why a dial did not end in an authenticated connection: what
/// [`Event::State`](crate::Event::State)'s reason says, as one typed cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialFailure {
    /// Nothing accepts connections at the address (TCP connection refused).
    #[error("connection refused: nothing listens at the address")]
    Refused,
    /// The address cannot be reached (`kind`: no route, host or network unreachable, the TCP
    /// handshake unanswered).
    #[error("unreachable: {0}")]
    Unreachable(io::ErrorKind),
    /// No authenticated connection within the node's dial timeout.
    #[error("no authenticated connection within the dial timeout")]
    TimedOut,
    /// The peer's host name did not resolve.
    #[error("host name did not resolve: {0}")]
    NameNotResolved(String),
    /// The peer is on another network (chain id).
    #[error("the peer is on another network: ours {ours:?}, theirs {theirs:?}")]
    WrongNetwork {
        /// Our network id.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol version {theirs}, we speak {ours}")]
    WrongVersion {
        /// Ours.
        ours: glueberry_crypto::handshake::ProtocolVersion,
        /// The peer's.
        theirs: glueberry_crypto::handshake::ProtocolVersion,
    },
    /// The address answered with another identity than the peer id dialled.
    #[error("dialled {expected} but {actual} answered")]
    WrongPeer {
        /// The peer id dialled.
        expected: PeerId,
        /// The identity that answered.
        actual: PeerId,
    },
    /// The peer authenticated us and closed the connection with `code`: `BLACKLISTED` (7,
    /// permanent), `TOO_MANY_CONNECTIONS` (9), `HANDSHAKE_TIMEOUT` (8: its cooldown for us
    /// runs), ...
    #[error("the peer refused the connection: {0}")]
    RefusedByPeer(CloseCode),
    /// This node closed it with `code` (a `disconnect`, its own connection limits).
    #[error("closed by this node: {0}")]
    ClosedLocally(CloseCode),
    /// The peer admits only the members of its peer sets and this node is not one (refused in
    /// the handshake with HelloReject 0x04, or after it with close code 12). Retried with
    /// backoff: the peer may not have tracked the epoch that names us yet.
    #[error("the peer admits only members of its peer sets, and this node is not one")]
    NotMember,
    /// The connection broke, or the secure handshake failed for another reason.
    #[error(transparent)]
    Failed(ConnectionError),
}

impl DialFailure {
    /// Whether dialling again can succeed: not for a wrong network, version or peer id, nor
    /// for a peer that blacklisted us (or a handshake that failed authentication).
    pub fn is_retriable(&self) -> bool {
        match self {
            DialFailure::Refused
            | DialFailure::Unreachable(_)
            | DialFailure::TimedOut
            | DialFailure::NameNotResolved(_)
            | DialFailure::NotMember => true,
            DialFailure::WrongNetwork { .. }
            | DialFailure::WrongVersion { .. }
            | DialFailure::WrongPeer { .. } => false,
            DialFailure::RefusedByPeer(code) => *code != CloseCode::Blacklisted,
            DialFailure::ClosedLocally(code) => *code != CloseCode::Blacklisted,
            DialFailure::Failed(e) => matches!(
                e,
                ConnectionError::ConnectionLost | ConnectionError::IdleTimeout
            ),
        }
    }

    /// A short stable name for the cause, for logs, metrics and JSON: `refused`,
    /// `unreachable`, `timed_out`, `name_not_resolved`, `wrong_network`, `wrong_version`,
    /// `wrong_peer`, `refused_by_peer`, `closed_locally`, `not_member`, `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            DialFailure::Refused => "refused",
            DialFailure::Unreachable(_) => "unreachable",
            DialFailure::TimedOut => "timed_out",
            DialFailure::NameNotResolved(_) => "name_not_resolved",
            DialFailure::WrongNetwork { .. } => "wrong_network",
            DialFailure::WrongVersion { .. } => "wrong_version",
            DialFailure::WrongPeer { .. } => "wrong_peer",
            DialFailure::RefusedByPeer(_) => "refused_by_peer",
            DialFailure::ClosedLocally(_) => "closed_locally",
            DialFailure::NotMember => "not_member",
            DialFailure::Failed(_) => "failed",
        }
    }

    /// The cause a failed dial's close reason names (`None`: the connection ended without a
    /// reason, as lost).
    pub fn from_reason(reason: Option<&CloseReason>) -> Self {
        match reason {
            None => DialFailure::Failed(ConnectionError::ConnectionLost),
            Some(CloseReason::Peer(CloseCode::NotMember)) => DialFailure::NotMember,
            Some(CloseReason::Peer(code)) => DialFailure::RefusedByPeer(*code),
            Some(CloseReason::Local(code)) => DialFailure::ClosedLocally(*code),
            Some(CloseReason::Error(e)) => match e {
                ConnectionError::Dial(DialError::Connect(io::ErrorKind::ConnectionRefused)) => {
                    DialFailure::Refused
                }
                ConnectionError::Dial(DialError::Connect(kind)) => DialFailure::Unreachable(*kind),
                ConnectionError::Dial(DialError::Resolve(message)) => {
                    DialFailure::NameNotResolved(message.clone())
                }
                ConnectionError::DialTimeout => DialFailure::TimedOut,
                ConnectionError::Handshake(HandshakeError::Rejected(
                    glueberry_crypto::handshake::RejectReason::NotAdmitted,
                )) => DialFailure::NotMember,
                ConnectionError::Handshake(HandshakeError::NetworkMismatch { ours, theirs }) => {
                    DialFailure::WrongNetwork {
                        ours: ours.clone(),
                        theirs: theirs.clone(),
                    }
                }
                ConnectionError::Handshake(HandshakeError::VersionMismatch { ours, theirs }) => {
                    DialFailure::WrongVersion {
                        ours: *ours,
                        theirs: *theirs,
                    }
                }
                ConnectionError::Handshake(HandshakeError::PeerIdMismatch { expected, actual }) => {
                    DialFailure::WrongPeer {
                        expected: *expected,
                        actual: *actual,
                    }
                }
                other => DialFailure::Failed(other.clone()),
            },
        }
    }
}

/// Why [`Node::ready`](crate::Node::ready) or [`Node::connected`](crate::Node::connected)
/// stopped waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The peer's connection ended first (`reason`, when known). It may be redialled: wait
    /// again to wait for the next connection.
    #[error("the peer disconnected ({})", reason.as_ref().map_or("no reason".to_string(), |r| format!("{r:?}")))]
    Disconnected {
        /// Why its connection ended.
        reason: Option<CloseReason>,
    },
    /// The node stopped.
    #[error("node stopped")]
    Stopped,
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
    /// The peer has no authenticated connection: it is unknown, or `state` (Disconnected,
    /// Connecting, Reconnecting, Cooldown). Connect it, or wait for it
    /// ([`Node::ready`](crate::Node::ready)).
    #[error("the peer is not connected (it is {state:?})")]
    NotConnected {
        /// Its state (Disconnected for a peer the node does not know).
        state: ConnState,
    },
    /// The peer is blacklisted ([`Node::unblacklist`](crate::Node::unblacklist) it first).
    #[error("the peer is blacklisted")]
    Blacklisted,
    /// The peer is connected but this side has not opened the stream: name it in
    /// [`Node::complete_handshake`](crate::Node::complete_handshake).
    #[error("the stream is not open with this peer: name it in complete_handshake")]
    StreamNotOpen,
    /// The peer did not open this stream on its side.
    #[error("the peer rejected this stream")]
    StreamRejected,
    /// The stream name is the node's own (`glueberry-members`, for discovery among members):
    /// an application cannot open it.
    #[error("the stream name glueberry-members is the node's own")]
    ReservedStream,
    /// No room came on the stream within the time allowed
    /// ([`Node::send_timeout`](crate::Node::send_timeout), or a response past its
    /// `respond_timeout`): the peer is not taking what it was sent. The message was not
    /// accepted.
    #[error("no room on the peer's stream in the time allowed: it is not taking its messages")]
    TimedOut,
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
