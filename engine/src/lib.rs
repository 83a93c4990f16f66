//! Glueberry: encrypted peer-to-peer messaging for blockchain validators.
//!
//! A [`Node`] runs one shard per CPU, each a pinned thread with its own io_uring (or epoll where
//! io_uring is not allowed), driving the
//! sans-IO protocol core ([`transport`]) over real TCP sockets. Peers are split between shards by
//! peer id; an inbound connection is handed to its peer's shard once the handshake names the
//! peer. The application talks to the shards through bounded queues and receives messages and
//! events on bounded channels; the `Node` handle is `Send + Sync + Clone` and its async methods
//! work from any executor.
//!
//! # Where it runs
//!
//! Linux. io_uring needs Linux 5.19+ and must be allowed (`kernel.io_uring_disabled = 0`, no
//! seccomp profile blocking `io_uring_setup`: Docker's default profile and containerd's
//! `RuntimeDefault` block it). Where it is not, the default [`Backend::Auto`] runs the same
//! shards on epoll and logs why; [`Backend::IoUring`] refuses to start instead, and
//! [`Node::backend`] says which runs:
//!
//! ```no_run
//! use glueberry::{Backend, Node, NodeConfig};
//! use glueberry::crypto::Identity;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = NodeConfig::new(Identity::generate()?, "chain-1", "0.0.0.0:26656".parse()?)
//!     .backend(Backend::Auto);
//! let node = Node::start(config)?;
//! println!("running on {}", node.backend()); // "io_uring", or "poll" in a default container
//! # node.stop_blocking();
//! # Ok(())
//! # }
//! ```
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
//!     while let Some(event) = node.events().recv_blocking() {
//!         if matches!(event, Event::State { state: ConnState::Connected, .. }) {
//!             node.complete_handshake(peer, &["consensus"])?;
//!             break;
//!         }
//!     }
//! }
//! // Both sides Established once each peer answered the other's streams.
//! for node in [&a, &b] {
//!     while !matches!(node.events().recv_blocking(), Some(Event::Ready { .. }) | None) {}
//! }
//! futures::executor::block_on(a.send(b.peer_id(), "consensus", Bytes::from_static(b"vote")))?;
//! let message = b.messages().recv_blocking().ok_or("node stopped")?;
//! assert_eq!(&message.data[..], b"vote");
//! a.stop_blocking();
//! b.stop_blocking();
//! # Ok(())
//! # }
//! ```
//!
//! # The API by group
//!
//! Each example compiles (they are doctests); they assume a running `node` and a `peer`.
//!
//! **Lifecycle and identity** — start, stop, who we are:
//! ```no_run
//! # use glueberry::{Node, NodeConfig, crypto::Identity};
//! # fn main() -> Result<(), glueberry::Error> {
//! let config = NodeConfig::new(Identity::generate().expect("rng"), "chain-1", "0.0.0.0:26656".parse().expect("addr"))
//!     .address_book("/var/lib/node/peers.json")
//!     .handshake_timeout(std::time::Duration::from_secs(30));
//! let node = Node::start(config)?; // dials every non-blacklisted peer in the book
//! println!("{} listening on {}", node.peer_id(), node.listen_addr());
//! node.stop_blocking(); // CLOSE frames, threads joined, address book flushed
//! # Ok(()) }
//! ```
//!
//! **Address book**:
//! ```no_run
//! # use glueberry::Node; use glueberry::crypto::PeerId;
//! # fn f(node: &Node, peer: PeerId) -> Result<(), glueberry::Error> {
//! node.add_peer(peer, vec!["10.0.0.7:26656".parse().expect("addr")], Default::default())?; // and dials
//! node.blacklist(peer)?; // disconnected now, refused from now on
//! node.unblacklist(peer)?;
//! for entry in node.peers() { println!("{} {:?}", entry.peer_id, entry.addresses); }
//! # Ok(()) }
//! ```
//!
//! **Connections**:
//! ```no_run
//! # use glueberry::Node; use glueberry::crypto::PeerId;
//! # async fn f(node: &Node, peer: PeerId) -> Result<(), glueberry::Error> {
//! node.connect_and_wait(peer, "10.0.0.7:26656".parse().expect("addr")).await?; // drop to cancel
//! println!("{:?}, outbound: {:?}", node.state(peer), node.is_outbound(peer));
//! node.disconnect(peer)?;
//! # Ok(()) }
//! ```
//!
//! **Application handshake** — on `Connected`, open the streams:
//! ```no_run
//! # use glueberry::{Event, Node}; use glueberry::transport::ConnState;
//! # use futures::StreamExt;
//! # async fn f(node: &Node) -> Result<(), glueberry::Error> {
//! let mut events = node.events(); // a `futures::Stream` too
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::State { peer, state: ConnState::Connected, .. } => {
//!             // (exchange hellos on the "handshake" stream here if the application has any)
//!             node.complete_handshake(peer, &["consensus", "mempool"])?; // → Established
//!         }
//!         // The peer completed its side too: what we send on the streams it opened flows.
//!         Event::Ready { peer } => println!("{peer} ready"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! **Messaging** — `send` waits while that stream of that peer is full (only that one), and
//! fails at once if the peer is not Established with the stream open; `try_send` never waits
//! and gives the message back when it refuses. A [`Route`] resolves (peer, stream) once for the
//! hot path; `send_batch` queues many messages with one wake-up:
//! ```no_run
//! # use bytes::Bytes; use glueberry::Node; use glueberry::crypto::PeerId;
//! # async fn f(node: &Node, peer: PeerId, others: &[PeerId]) -> Result<(), glueberry::Error> {
//! node.send(peer, "consensus", Bytes::from_static(b"vote")).await?; // waits for room
//! if let Err(refused) = node.try_send(peer, "consensus", Bytes::from_static(b"vote")) {
//!     let _still_mine: Bytes = refused.into_inner(); // BufferFull: retry later
//! }
//! let blocks = node.route(peer, "blocksync"); // resolved once, kept across reconnections
//! node.send_on(&blocks, Bytes::from(vec![0u8; 64 * 1024])).await?;
//! node.send_batch(&blocks, (0..100).map(|_| Bytes::from_static(b"tx"))).await?;
//! node.broadcast(others, "consensus", Bytes::from_static(b"block")).await; // no copy per peer
//! let mut messages = node.messages(); // every stream without a receiver of its own
//! let message = messages.recv().await.expect("running");
//! println!("{} bytes on {} from {}", message.data.len(), message.stream, message.peer);
//! # Ok(()) }
//! ```
//!
//! **Priorities and per-stream receivers** — set before the streams open. Records are filled
//! from higher priorities first (a queued vote goes into the next record, ahead of block chunks;
//! what was already sealed and sent still goes first, see `NodeConfig::stream_priority`), and a
//! stream with a receiver of its own never waits for a slow consumer of another:
//! ```no_run
//! # use glueberry::{Node, NodeConfig, crypto::Identity};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = NodeConfig::new(Identity::generate()?, "chain-1", "0.0.0.0:26656".parse()?)
//!     .stream_priority("consensus", 7)
//!     .stream_priority("blocksync", 0);
//! let node = Node::start(config)?;
//! let mut blocks = node.messages_on("blocksync")?; // read at its own pace
//! let mut votes = node.messages_on("consensus")?;
//! # let _ = (&mut blocks, &mut votes);
//! # Ok(()) }
//! ```
//!
//! **Delivery** — every message `send` accepted reaches the peer's node or comes back
//! (ARCHITECTURE.md, "Delivery"):
//! ```no_run
//! # use glueberry::{Event, Node};
//! # fn f(node: &Node) {
//! while let Some(event) = node.events().recv_blocking() {
//!     match event {
//!         // The connection closed first: `unsent` never left, `unconfirmed` may have arrived.
//!         Event::Undelivered { peer, stream, unsent, unconfirmed } => {
//!             println!("{peer} {stream}: {} unsent, {} unconfirmed", unsent.len(), unconfirmed.len());
//!         }
//!         // Refused at the shard (not connected, stream not open, too large).
//!         // `error` is a `glueberry::Error`: its `kind()` says what to do.
//!         Event::SendFailed { peer, error, data, .. } => println!("{peer}: {error} ({} B)", data.len()),
//!         _ => {}
//!     }
//! }
//! // In async code: `node.drain(timeout).await` then `node.stop().await`.
//! node.drain_blocking(std::time::Duration::from_secs(5)); // wait until the peers confirmed everything
//! node.stop_blocking(); // hands back whatever is left
//! # }
//! ```
//!
//! **Events** — one mechanism: `events()` (everything since the start) and filtered
//! subscriptions, all `futures::Stream`s that never slow the node; a filter drops only what it
//! names (filtering states leaves the other kinds), and a subscriber that falls behind is told
//! how many it lost:
//! ```no_run
//! # use glueberry::{Event, EventFilter, EventKind, Node}; use glueberry::transport::ConnState;
//! # async fn f(node: &Node) {
//! let lost = node.subscribe(
//!     EventFilter::all().kind(EventKind::State).state(ConnState::Disconnected),
//!     100,
//! );
//! while let Some(event) = lost.recv().await {
//!     match event {
//!         // The close code has a name: `Peer(Blacklisted)`, `Local(IdleTimeout)`, ...
//!         Event::State { peer, reason, .. } => eprintln!("{peer} lost: {reason:?}"),
//!         Event::Missed { count } => eprintln!("fell behind by {count} events"),
//!         _ => {}
//!     }
//! }
//! # }
//! ```
//!
//! **Statistics, state and health**:
//! ```no_run
//! # use glueberry::Node; use glueberry::crypto::PeerId;
//! # async fn f(node: &Node, peer: PeerId) {
//! if let Some(stats) = node.peer_stats(peer).await { println!("rtt {:?}, {:?}", stats.rtt, stats.streams); }
//! println!("{}", node.dump_state().await);
//! let health = node.health();
//! let status = if health.ready { 200 } else { 503 };
//! println!("{status} {}", health.to_json());
//! # }
//! ```
//!
//! **Logs and metrics** — `tracing` events (install any subscriber) and `metrics` counters,
//! recorded per node and rendered in the Prometheus text format for the application's own HTTP
//! server:
//! ```no_run
//! # use glueberry::{Node, NodeConfig, crypto::Identity};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = NodeConfig::new(Identity::generate()?, "my-chain", "0.0.0.0:26656".parse()?)
//!     .record_metrics(true);
//! let node = Node::start(config)?;
//! let exposition = node.render_metrics().ok_or("not recording")?; // your GET /metrics
//! let health = node.health(); // your GET /healthz (health.live) and /readyz (health.ready)
//! # let _ = (exposition, health);
//! # Ok(()) }
//! ```
//! With the `http` cargo feature the node serves them itself: `NodeConfig::metrics(addr)` opens
//! `/metrics`, `/healthz` and `/readyz` (bounded in connections, per-IP connections, request
//! size and time), and `debug_state_endpoint(true)` adds `/debug/state`.
//!
//! **Testing applications** — [`testing::TestNetwork`]: real nodes over in-memory pipes, with
//! partitions and assertion helpers (example in the module).
//!
//! **Errors** — one type, with Glueberry's kinds:
//! ```no_run
//! # use bytes::Bytes; use glueberry::{ErrorKind, Node}; use glueberry::crypto::PeerId;
//! # fn f(node: &Node, peer: PeerId) {
//! if let Err(e) = node.try_send(peer, "consensus", Bytes::new()).map_err(glueberry::Error::from) {
//!     if e.kind() == ErrorKind::BufferFull && e.is_retriable() { /* retry later */ }
//!     eprintln!("{e}; hint: {:?}", e.hint());
//! }
//! # }
//! ```

#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod address_book;
mod api;
mod budget;
mod channel;
mod limits;
mod members;
pub mod metrics;
mod observe;
mod resolve;
mod route_table;
mod rpc;
mod shard;
#[allow(unsafe_code)] // the system layer: io_uring, registered buffers, sockets
mod sys;
pub mod testing;
mod vocabulary;

#[doc(inline)]
pub use api::{
    Backend, ConfigError, ConnectError, ConnectionSettings, DialFailure, Error, ErrorKind, Event,
    EventFilter, EventKind, Handler, Health, HealthCheck, Host, MembersSettings, Message, Node,
    NodeConfig, NodeError, NodeSendError, NodeSettings, PeerAddr, PeerAddrError, QueueSettings,
    Refusal, Request, RequestError, Requests, ResolveError, Route, SUBSCRIPTION_BYTES_PER_SLOT,
    StartError, StreamName, StreamRateLimit, StreamRef, StreamSink, Subscription, TrySendError,
    WaitError,
};
#[doc(inline)]
pub use channel::Messages;
pub use glueberry_crypto as crypto;
/// The identity and cipher types an application names, shown here with their variants and
/// methods (they live in `glueberry_crypto`).
#[doc(inline)]
pub use glueberry_crypto::{Identity, PeerId, Suite};
pub use glueberry_transport as transport;
/// The state, statistics and close types an application matches on, shown here with their
/// variants and fields (they live in `glueberry_transport`).
#[doc(inline)]
pub use glueberry_transport::{
    CloseCode, CloseReason, ConnState, ConnectionConfig, ConnectionError, Direction, PeerStats,
    StreamStats,
};
#[doc(inline)]
pub use limits::ConnectionLimits;
pub use members::{
    AddressSource, MEMBERS_STREAM, Member, MemberInfo, MembersConfig, MembershipPolicy, TrackError,
};
pub use sys::socket::open_fd_count;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
