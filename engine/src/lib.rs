//! Glueberry: encrypted peer-to-peer messaging for blockchain validators.
//!
//! A [`Node`] runs one shard per CPU, each a pinned thread with its own io_uring, driving the
//! sans-IO protocol core ([`transport`]) over real TCP sockets. Peers are split between shards by
//! peer id; an inbound connection is handed to its peer's shard once the handshake names the
//! peer. The application talks to the shards through bounded queues and receives messages and
//! events on bounded channels; the `Node` handle is `Send + Sync + Clone` and its async methods
//! work from any executor.
//!
//! ```no_run
//! use bytes::Bytes;
//! use glueberry::{Event, Node, NodeConfig};
//! use glueberry::crypto::Identity;
//! use glueberry::transport::ConnState;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = Node::start(NodeConfig::new(Identity::generate()?, "chain-1", "127.0.0.1:0".parse()?))?;
//! let b = Node::start(NodeConfig::new(Identity::generate()?, "chain-1", "127.0.0.1:0".parse()?))?;
//! a.connect(b.peer_id(), b.listen_addr())?;
//! // Each side completes the application handshake when the peer is Connected.
//! for (node, peer) in [(&a, b.peer_id()), (&b, a.peer_id())] {
//!     while let Ok(event) = node.events().recv_blocking() {
//!         if matches!(event, Event::State { state: ConnState::Connected, .. }) {
//!             node.complete_handshake(peer, &["consensus"])?;
//!             break;
//!         }
//!     }
//! }
//! let consensus = a.stream("consensus");
//! // (wait for Established on both sides in real code)
//! a.try_send(b.peer_id(), &consensus, Bytes::from_static(b"vote"))?;
//! let message = b.messages().recv_blocking()?;
//! assert_eq!(&message.data[..], b"vote");
//! a.stop();
//! b.stop();
//! # Ok(())
//! # }
//! ```

pub mod address_book;
mod error;
mod limits;
mod node;
mod queue;
mod shard;
mod sys;

pub use error::{Error, ErrorKind};
pub use glueberry_crypto as crypto;
pub use glueberry_transport as transport;
pub use limits::ConnectionLimits;
pub use node::{
    ConnectError, Event, EventFilter, Handler, Health, HealthCheck, Message, Node, NodeConfig,
    NodeError, NodeSendError, StartError, StreamName, Subscription,
};
pub use sys::socket::open_fd_count;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
