//! Glueberry: encrypted peer-to-peer messaging for blockchain validators.
//!
//! **Not implemented yet.** This crate will be the thread-per-core io_uring engine and the `Node`
//! handle applications embed. What works today is the secure channel, re-exported here as
//! [`crypto`]: identities, the Noise XX handshake and record sealing.

pub use glueberry_crypto as crypto;
pub use glueberry_transport as transport;
