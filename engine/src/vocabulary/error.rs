//! One error type for applications: every error the node's API returns converts into it (with
//! `?`), keeping a kind from Glueberry's list of codes, the peer and stream involved when
//! known, the cause, whether retrying can help, and a hint for API misuse.

use std::fmt;

use glueberry_crypto::{HandshakeError, PeerId};
use glueberry_transport::{ConnectionError, SendError, StreamError};

use super::call_errors::{
    ConnectError, DialFailure, NodeError, NodeSendError, ResolveError, StartError, TrySendError,
    WaitError,
};
use crate::address_book::BookError;

/// What went wrong, as Glueberry's error codes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A dial or a connection failed.
    ConnectionFailed,
    /// The secure handshake failed (authentication, protocol).
    HandshakeFailed,
    /// The application handshake did not complete in time.
    HandshakeTimeout,
    /// The stream is closed, not opened on this side, or the peer did not open it.
    StreamClosed,
    /// The peer has no authenticated connection now (unknown, connecting, reconnecting).
    NotConnected,
    /// Encryption failed (the connection's nonce space is spent).
    EncryptionFailed,
    /// A record failed to authenticate.
    DecryptionFailed,
    /// The peer is not known.
    PeerNotFound,
    /// The peer is blacklisted.
    PeerBlacklisted,
    /// A queue is full; retry later or wait.
    BufferFull,
    /// The operation was cancelled.
    Canceled,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The peer is on another network.
    NetworkMismatch,
    /// A message is larger than allowed.
    MessageTooLarge,
    /// A setting or argument is invalid.
    InvalidConfig,
    /// The address book failed (corrupt, locked, unwritable).
    AddressBook,
    /// The node is stopped.
    NodeStopped,
    /// A system call failed.
    Io,
}

/// An error from Glueberry. Cloning it shares its cause.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    peer: Option<PeerId>,
    stream: Option<String>,
    /// Whether retrying can help, when the cause knows better than the kind.
    retriable: Option<bool>,
    source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
}

impl Error {
    fn new(kind: ErrorKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            kind,
            peer: None,
            stream: None,
            retriable: None,
            source: std::sync::Arc::new(source),
        }
    }

    /// Names the peer involved.
    pub fn with_peer(mut self, peer: PeerId) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Names the stream involved.
    pub fn with_stream(mut self, stream: &str) -> Self {
        self.stream = Some(stream.to_string());
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The peer involved, when known.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// The stream involved, when known.
    pub fn stream(&self) -> Option<&str> {
        self.stream.as_deref()
    }

    /// Whether trying again later can succeed (a full queue, a dropped connection, a dial that
    /// found nothing listening; not a wrong network or peer id, nor a peer that blacklisted us).
    pub fn is_retriable(&self) -> bool {
        if let Some(retriable) = self.retriable {
            return retriable;
        }
        matches!(
            self.kind,
            ErrorKind::ConnectionFailed
                | ErrorKind::NotConnected
                | ErrorKind::BufferFull
                | ErrorKind::HandshakeTimeout
                | ErrorKind::Canceled
                | ErrorKind::Io
        )
    }

    /// Whether the same operation will fail again whatever the timing (a bad setting, another
    /// network, a blacklisted peer).
    pub fn is_permanent(&self) -> bool {
        if self.retriable == Some(false) {
            return true;
        }
        matches!(
            self.kind,
            ErrorKind::InvalidConfig
                | ErrorKind::VersionMismatch
                | ErrorKind::NetworkMismatch
                | ErrorKind::PeerBlacklisted
                | ErrorKind::MessageTooLarge
                | ErrorKind::AddressBook
                | ErrorKind::NodeStopped
        )
    }

    /// What to do about it, for errors that come from using the API wrongly.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self.kind {
            ErrorKind::BufferFull => "use `send().await`, which waits for room, or retry later",
            ErrorKind::MessageTooLarge => {
                "split the message, or raise `max_message_size` on both nodes"
            }
            ErrorKind::StreamClosed => {
                "name the stream in `complete_handshake` on both nodes before sending on it"
            }
            ErrorKind::NotConnected => {
                "connect the peer, or wait until it is: `ready(peer).await` (or the Ready event)"
            }
            ErrorKind::PeerNotFound => "add the peer with `add_peer` or `connect` first",
            ErrorKind::PeerBlacklisted => "`unblacklist` the peer first",
            ErrorKind::NodeStopped => "the node was stopped; start a new one",
            ErrorKind::InvalidConfig => "see the message for the setting to change",
            ErrorKind::AddressBook => {
                "repair or move away the address book file, or stop the node that holds it"
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.source)?;
        if let Some(peer) = &self.peer {
            write!(f, " (peer {peer})")?;
        }
        if let Some(stream) = &self.stream {
            write!(f, " (stream {stream})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        let kind = match e {
            HandshakeError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
            HandshakeError::NetworkMismatch { .. } => ErrorKind::NetworkMismatch,
            HandshakeError::Decrypt => ErrorKind::DecryptionFailed,
            _ => ErrorKind::HandshakeFailed,
        };
        Error::new(kind, e)
    }
}

impl From<ConnectionError> for Error {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Handshake(h) => h.into(),
            ConnectionError::Record(glueberry_crypto::RecordError::NonceExhausted) => {
                Error::new(ErrorKind::EncryptionFailed, e)
            }
            ConnectionError::Record(_) => Error::new(ErrorKind::DecryptionFailed, e),
            ConnectionError::MessageTooLarge { .. } => Error::new(ErrorKind::MessageTooLarge, e),
            _ => Error::new(ErrorKind::ConnectionFailed, e),
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        let kind = match e {
            SendError::Full => ErrorKind::BufferFull,
            SendError::MessageTooLarge { .. } => ErrorKind::MessageTooLarge,
            SendError::Closed => ErrorKind::ConnectionFailed,
            _ => ErrorKind::StreamClosed,
        };
        Error::new(kind, e)
    }
}

impl From<glueberry_transport::NodeError> for Error {
    fn from(e: glueberry_transport::NodeError) -> Self {
        use glueberry_transport::NodeError as E;
        match e {
            E::Send(e) => e.into(),
            E::Stream(e) => e.into(),
            E::UnknownPeer => Error::new(ErrorKind::PeerNotFound, e),
            E::Blacklisted => Error::new(ErrorKind::PeerBlacklisted, e),
            _ => Error::new(ErrorKind::ConnectionFailed, e),
        }
    }
}

impl From<ResolveError> for Error {
    fn from(e: ResolveError) -> Self {
        Error::new(ErrorKind::ConnectionFailed, e)
    }
}

impl From<StreamError> for Error {
    fn from(e: StreamError) -> Self {
        let kind = match e {
            StreamError::NotConnected => ErrorKind::ConnectionFailed,
            _ => ErrorKind::InvalidConfig,
        };
        Error::new(kind, e)
    }
}

impl From<NodeSendError> for Error {
    fn from(e: NodeSendError) -> Self {
        let kind = match e {
            NodeSendError::BufferFull => ErrorKind::BufferFull,
            NodeSendError::MessageTooLarge { .. } => ErrorKind::MessageTooLarge,
            NodeSendError::NotConnected { .. } => ErrorKind::NotConnected,
            NodeSendError::Blacklisted => ErrorKind::PeerBlacklisted,
            NodeSendError::StreamNotOpen | NodeSendError::StreamRejected => ErrorKind::StreamClosed,
            NodeSendError::TimedOut => ErrorKind::BufferFull,
            NodeSendError::ReservedStream => ErrorKind::InvalidConfig,
            _ => ErrorKind::NodeStopped,
        };
        Error::new(kind, e)
    }
}

impl From<TrySendError> for Error {
    fn from(e: TrySendError) -> Self {
        e.error.into()
    }
}

impl From<BookError> for Error {
    fn from(e: BookError) -> Self {
        let kind = match e {
            BookError::UnknownPeer => ErrorKind::PeerNotFound,
            BookError::MetadataTooLarge { .. } | BookError::TooManyAddresses => {
                ErrorKind::InvalidConfig
            }
            _ => ErrorKind::AddressBook,
        };
        Error::new(kind, e)
    }
}

impl From<NodeError> for Error {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::AddressBook(b) => b.into(),
            NodeError::Send(s) => s.into(),
        }
    }
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Self {
        let cause = match &e {
            ConnectError::Send(s) => return s.clone().into(),
            ConnectError::Failed { cause, .. } => cause,
        };
        let kind = match cause {
            DialFailure::WrongNetwork { .. } => ErrorKind::NetworkMismatch,
            DialFailure::WrongVersion { .. } => ErrorKind::VersionMismatch,
            DialFailure::WrongPeer { .. } | DialFailure::Failed(ConnectionError::Handshake(_)) => {
                ErrorKind::HandshakeFailed
            }
            _ => ErrorKind::ConnectionFailed,
        };
        let retriable = cause.is_retriable();
        let mut error = Error::new(kind, e);
        error.retriable = Some(retriable);
        error
    }
}

impl From<WaitError> for Error {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Disconnected { .. } => Error::new(ErrorKind::NotConnected, e),
            WaitError::Stopped => Error::new(ErrorKind::NodeStopped, e),
        }
    }
}

impl From<StartError> for Error {
    fn from(e: StartError) -> Self {
        match e {
            StartError::AddressBook(b) => b.into(),
            StartError::Config(_) => Error::new(ErrorKind::InvalidConfig, e),
            _ => Error::new(ErrorKind::Io, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glueberry_transport::{CloseCode, CloseReason, ConnState, DialError};
    use std::io;

    #[test]
    fn kinds_classify_and_hint() {
        let full: Error = NodeSendError::BufferFull.into();
        assert_eq!(full.kind(), ErrorKind::BufferFull);
        assert!(full.is_retriable() && !full.is_permanent());
        assert!(full.hint().is_some_and(|h| h.contains("send().await")));
        let network: Error = HandshakeError::NetworkMismatch {
            ours: "a".into(),
            theirs: "b".into(),
        }
        .into();
        assert_eq!(network.kind(), ErrorKind::NetworkMismatch);
        assert!(network.is_permanent() && !network.is_retriable());
        let peer = glueberry_crypto::Identity::from_seed(&[1; 32]).peer_id();
        let named = Error::from(SendError::StreamRejected)
            .with_peer(peer)
            .with_stream("consensus");
        assert_eq!(named.kind(), ErrorKind::StreamClosed);
        assert_eq!(named.peer(), Some(peer));
        assert!(named.to_string().contains("consensus"));
        assert!(std::error::Error::source(&named).is_some());
    }

    /// Every close reason a failed dial can end with maps to its own cause, and only the
    /// causes that retrying can fix say so.
    #[test]
    fn each_close_reason_is_one_cause_with_its_retriability() {
        let peer = |seed| glueberry_crypto::Identity::from_seed(&[seed; 32]).peer_id();
        let error = |e: ConnectionError| Some(CloseReason::Error(e));
        let connect = |kind| error(ConnectionError::Dial(DialError::Connect(kind)));
        let handshake = |e| error(ConnectionError::Handshake(e));
        let version = glueberry_crypto::handshake::PROTOCOL_VERSION;
        let cases: Vec<(Option<CloseReason>, DialFailure, bool)> = vec![
            (
                connect(io::ErrorKind::ConnectionRefused),
                DialFailure::Refused,
                true,
            ),
            (
                connect(io::ErrorKind::HostUnreachable),
                DialFailure::Unreachable(io::ErrorKind::HostUnreachable),
                true,
            ),
            (
                error(ConnectionError::DialTimeout),
                DialFailure::TimedOut,
                true,
            ),
            (
                error(ConnectionError::Dial(DialError::Resolve("nxdomain".into()))),
                DialFailure::NameNotResolved("nxdomain".into()),
                true,
            ),
            (
                handshake(HandshakeError::NetworkMismatch {
                    ours: "a".into(),
                    theirs: "b".into(),
                }),
                DialFailure::WrongNetwork {
                    ours: "a".into(),
                    theirs: "b".into(),
                },
                false,
            ),
            (
                handshake(HandshakeError::VersionMismatch {
                    ours: version,
                    theirs: version,
                }),
                DialFailure::WrongVersion {
                    ours: version,
                    theirs: version,
                },
                false,
            ),
            (
                handshake(HandshakeError::PeerIdMismatch {
                    expected: peer(1),
                    actual: peer(2),
                }),
                DialFailure::WrongPeer {
                    expected: peer(1),
                    actual: peer(2),
                },
                false,
            ),
            (
                Some(CloseReason::Peer(CloseCode::Blacklisted)),
                DialFailure::RefusedByPeer(CloseCode::Blacklisted),
                false,
            ),
            (
                Some(CloseReason::Peer(CloseCode::TooManyConnections)),
                DialFailure::RefusedByPeer(CloseCode::TooManyConnections),
                true,
            ),
            (
                error(ConnectionError::ConnectionLost),
                DialFailure::Failed(ConnectionError::ConnectionLost),
                true,
            ),
            (
                None,
                DialFailure::Failed(ConnectionError::ConnectionLost),
                true,
            ),
            (
                handshake(HandshakeError::BadSignature),
                DialFailure::Failed(ConnectionError::Handshake(HandshakeError::BadSignature)),
                false,
            ),
        ];
        let mut names = std::collections::HashSet::new();
        for (reason, cause, retriable) in cases {
            let got = DialFailure::from_reason(reason.as_ref());
            assert_eq!(got, cause, "{reason:?}");
            assert_eq!(got.is_retriable(), retriable, "{got:?}");
            let error = Error::from(ConnectError::Failed {
                state: ConnState::Reconnecting,
                cause: got.clone(),
            });
            assert_eq!(error.is_retriable(), retriable, "{got:?}");
            names.insert(got.name());
        }
        // Nine causes (all but ClosedLocally), nine names.
        assert_eq!(names.len(), 9, "{names:?}");
    }
}
