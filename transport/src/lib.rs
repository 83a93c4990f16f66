//! Glueberry's sans-IO protocol core: one connection's protocol logic (and, next, a node's set
//! of connections), with no sockets and no clock.
//!
//! A [`Connection`] runs the secure handshake, then carries application messages on named
//! streams inside records, with per-stream credit flow control, batching of many messages per
//! record, fragmentation of large ones, keepalive and an explicit close. The caller moves bytes
//! and time in and out:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use bytes::Bytes;
//! use glueberry_crypto::{HandshakeConfig, Identity};
//! use glueberry_transport::{Connection, ConnectionConfig, Event, StreamId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = Instant::now();
//! let config = Arc::new(ConnectionConfig::default());
//! let (alice, bob) = (Identity::generate()?, Identity::generate()?);
//! let mut a = Connection::outbound(
//!     config.clone(),
//!     Arc::new(HandshakeConfig::new(&alice, "chain-1")?),
//!     Some(bob.peer_id()),
//!     now,
//! )?;
//! let mut b = Connection::inbound(config, Arc::new(HandshakeConfig::new(&bob, "chain-1")?), now);
//!
//! // Shuttle bytes both ways until both are quiet (a socket pair would do the same).
//! let mut buf = vec![0u8; 256 * 1024];
//! let mut pump = |a: &mut Connection, b: &mut Connection| loop {
//!     let n = a.poll_transmit(&mut buf);
//!     b.handle_input(now, &buf[..n]);
//!     let m = b.poll_transmit(&mut buf);
//!     a.handle_input(now, &buf[..m]);
//!     if n == 0 && m == 0 { break; }
//! };
//! pump(&mut a, &mut b);
//! a.complete_handshake(&["consensus"])?;
//! b.complete_handshake(&["consensus"])?;
//! let stream = a.stream_id("consensus").ok_or("no stream")?;
//! a.send(stream, Bytes::from_static(b"block 1"))?;
//! pump(&mut a, &mut b);
//! while let Some(event) = b.poll_event() {
//!     if let Event::Message { stream, data } = event {
//!         assert_eq!(b.stream_name(stream), Some("consensus"));
//!         assert_eq!(&data[..], b"block 1");
//!         b.release(stream, data.len()); // credit back to the sender
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod connection;
mod event;
pub mod frame;
mod node;
mod peer;
mod stream;
pub mod testing;

pub use config::{
    ConfigError, ConnectionConfig, DEFAULT_PRIORITY, MAX_MESSAGE_SIZE_LIMIT, MAX_PRIORITY,
    MAX_STREAMS_LIMIT, MAX_TIMEOUT, MIN_WINDOW, RateLimit,
};
pub use connection::{Connection, HANDSHAKE_STREAM, Phase, StreamStats};
pub use event::{
    CloseCode, CloseReason, ConnectionError, DialError, Direction, Event, SendError, StreamError,
    StreamId,
};
pub use glueberry_crypto as crypto;
pub use node::{
    Action, Admission, ConnId, NodeConfig, NodeCore, NodeError, NodeEvent, PeerStats, Shard, Slots,
    StreamNames, shard_of,
};
pub use peer::{Backoff, ConnState, InvalidTransition, Jitter, PERSISTENT_MAX_DELAY};
