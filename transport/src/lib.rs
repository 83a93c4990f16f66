//! Glueberry's sans-IO protocol core.
//!
//! **Not implemented yet.** This crate will hold the frame codec, the stream and credit state
//! machines and the connection state machine, all driven by bytes and a `now` passed in, with no
//! sockets and no clock (see `ARCHITECTURE.md`). Today it only re-exports the secure channel it
//! will be built on, so that the workspace layout is in place.
#![forbid(unsafe_code)]

pub use glueberry_crypto as crypto;
