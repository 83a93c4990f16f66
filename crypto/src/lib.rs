//! Glueberry's secure channel: who a node is, how two nodes authenticate, and how records are
//! protected on the wire.
//!
//! - [`Identity`] and [`PeerId`]: a node's Ed25519 key pair and the id derived from it.
//! - [`Handshake`]: `Noise_XX_25519_ChaChaPoly_SHA256` with the identity bound to a fresh X25519
//!   key, a prologue that binds network and version, and an optional application hello payload.
//!   Sans-IO: bytes in, bytes out, a [`Session`] when done.
//! - [`AddressRecord`]: a peer's addresses signed by its identity, for discovery among the
//!   members of a peer set.
//! - [`RecordSealer`] / [`RecordOpener`]: records sealed and opened in place in buffers the
//!   caller owns, one key and nonce counter per direction, rekeyed as they go.
//!
//! The byte layouts are in `PROTOCOL.md` at the repository root.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use glueberry_crypto::{Handshake, HandshakeConfig, Identity, record};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let alice = Identity::generate()?;
//! let bob = Identity::generate()?;
//! let alice_config = Arc::new(HandshakeConfig::new(&alice, "my-chain-1")?);
//! let bob_config = Arc::new(HandshakeConfig::new(&bob, "my-chain-1")?);
//!
//! // Alice dials Bob and insists on talking to him.
//! let mut dialler = Handshake::initiator(alice_config, Some(bob.peer_id()))?;
//! let mut listener = Handshake::responder(bob_config);
//! let (mut to_bob, mut to_alice) = (Vec::new(), Vec::new());
//! while !(dialler.is_finished() && listener.is_finished()) {
//!     dialler.poll_transmit(&mut to_bob);
//!     let n = listener.handle_input(&to_bob)?;
//!     to_bob.drain(..n);
//!     listener.poll_transmit(&mut to_alice);
//!     let n = dialler.handle_input(&to_alice)?;
//!     to_alice.drain(..n);
//! }
//! dialler.poll_transmit(&mut to_bob); // HelloFinalize, if not sent yet
//! let alice_session = dialler.into_session()?;
//! let bob_session = listener.into_session()?;
//! assert_eq!(bob_session.peer_id(), alice.peer_id());
//!
//! // Records are sealed in place: [header][plaintext][tag space].
//! let (mut seal, _) = alice_session.into_channel();
//! let (_, mut open) = bob_session.into_channel();
//! let message = b"hello, bob";
//! let mut buf = vec![0u8; record::HEADER_LEN + message.len() + record::TAG_LEN];
//! buf[record::HEADER_LEN..][..message.len()].copy_from_slice(message);
//! let len = seal.seal_in_place(&mut buf, message.len())?;
//! assert_eq!(open.open_in_place(&mut buf[..len])?, message);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
pub mod file;
pub mod handshake;
mod identity;
mod peer_id;
pub mod record;

pub use address::{AddressRecord, AddressRecordError};
pub use handshake::{Handshake, HandshakeConfig, HandshakeError, Role, Session};
pub use identity::{Identity, IdentityError, SEED_LEN};
pub use peer_id::{PEER_ID_HRP, PEER_ID_TEXT_LEN, PeerId, PeerIdError};
pub use record::{RecordError, RecordOpener, RecordSealer, Suite};
