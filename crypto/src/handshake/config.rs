//! What a node brings to every handshake: keys, network, version, suites, hello payload.

use zeroize::Zeroizing;

use super::wire::{
    MAX_HELLO_PAYLOAD_LEN, MAX_NETWORK_ID_LEN, MAX_OFFERED_SUITES, SIGNATURE_CONTEXT,
};
use crate::record::{DEFAULT_REKEY_AFTER_RECORDS, MAX_RECORDS_PER_KEY, Suite};
use crate::{Identity, PeerId};

/// A protocol version. Nodes talk only when the major versions are equal; the minor version
/// is exchanged so that later minor versions can turn on compatible additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this.
    pub major: u8,
    /// Compatible additions bump this.
    pub minor: u8,
}

/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A node's handshake settings, made once at start and shared (in an `Arc`) by every handshake.
///
/// It holds a fresh X25519 static key for Noise, made when the config is built and never
/// written to disk, and the identity key's signature over it; the identity key itself is not
/// kept here.
pub struct HandshakeConfig {
    pub(crate) peer_id: PeerId,
    /// The Noise static key pair (its public half derived once, here).
    pub(crate) noise_static: super::dh::StaticKey,
    pub(crate) signature: [u8; 64],
    pub(crate) network_id: Vec<u8>,
    pub(crate) version: ProtocolVersion,
    pub(crate) suites: Vec<Suite>,
    pub(crate) suite_ids: Vec<u8>,
    pub(crate) hello_payload: Vec<u8>,
    pub(crate) capabilities: u32,
    pub(crate) rekey_after_records: u64,
    /// A responder's admission check on the identity an initiator claims, asked before its
    /// signature is verified (see [`HandshakeConfig::with_admission`]).
    pub(crate) admission: Option<Admission>,
}

/// Whether a responder admits the identity an initiator claims (a node that admits only the
/// members of its peer sets). Asked on the shard's thread for every HelloFinalize: it must be
/// quick and never block.
pub type Admission = std::sync::Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

impl HandshakeConfig {
    /// Settings for `identity` on the network `network_id` (the chain id: 1 to 64 printable
    /// ASCII characters), with both suites in this machine's order ([`Suite::preferred`]:
    /// AES-256-GCM first where the CPU has AES instructions), no hello payload and the default
    /// rekey interval.
    pub fn new(identity: &Identity, network_id: &str) -> Result<Self, ConfigError> {
        let mut noise_private = Zeroizing::new([0u8; 32]);
        getrandom::fill(noise_private.as_mut_slice())
            .map_err(|e| ConfigError::Random(e.to_string()))?;
        Self::with_noise_key(identity, network_id, noise_private)?.with_suites(&Suite::preferred())
    }

    /// As [`HandshakeConfig::new`], with a given Noise static key (for test vectors).
    pub(crate) fn with_noise_key(
        identity: &Identity,
        network_id: &str,
        noise_private: Zeroizing<[u8; 32]>,
    ) -> Result<Self, ConfigError> {
        let valid = (1..=MAX_NETWORK_ID_LEN).contains(&network_id.len())
            && network_id.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(ConfigError::NetworkId);
        }
        let noise_static = super::dh::StaticKey::new(noise_private);
        let mut signed = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 32);
        signed.extend_from_slice(SIGNATURE_CONTEXT);
        signed.extend_from_slice(&noise_static.public);
        let suites = Suite::ALL.to_vec();
        Ok(Self {
            peer_id: identity.peer_id(),
            signature: identity.sign(&signed),
            noise_static,
            network_id: network_id.as_bytes().to_vec(),
            version: PROTOCOL_VERSION,
            suite_ids: suites.iter().map(|s| s.wire_id()).collect(),
            suites,
            hello_payload: Vec::new(),
            capabilities: 0,
            rekey_after_records: DEFAULT_REKEY_AFTER_RECORDS,
            admission: None,
        })
    }

    /// The record suites this node accepts, most preferred first. A handshake uses the suite
    /// both ends list first, or ChaCha20-Poly1305 if their first choices differ
    /// ([`choose_suite`](crate::handshake::choose_suite)).
    pub fn with_suites(mut self, suites: &[Suite]) -> Result<Self, ConfigError> {
        let mut unique = Vec::with_capacity(suites.len());
        for suite in suites {
            if !unique.contains(suite) {
                unique.push(*suite);
            }
        }
        if unique.is_empty() || unique.len() > MAX_OFFERED_SUITES {
            return Err(ConfigError::Suites);
        }
        self.suite_ids = unique.iter().map(|s| s.wire_id()).collect();
        self.suites = unique;
        Ok(self)
    }

    /// Application bytes sent inside the encrypted handshake (at most
    /// [`MAX_HELLO_PAYLOAD_LEN`]): the responder's in HelloResponse, the initiator's in
    /// HelloFinalize. The peer's arrive in [`crate::Session::remote_hello`].
    pub fn with_hello_payload(mut self, payload: Vec<u8>) -> Result<Self, ConfigError> {
        if payload.len() > MAX_HELLO_PAYLOAD_LEN {
            return Err(ConfigError::HelloPayload { len: payload.len() });
        }
        self.hello_payload = payload;
        Ok(self)
    }

    /// How many records to seal under one key before updating it (1 to
    /// [`MAX_RECORDS_PER_KEY`]).
    pub fn with_rekey_after_records(mut self, records: u64) -> Result<Self, ConfigError> {
        if !(1..=MAX_RECORDS_PER_KEY).contains(&records) {
            return Err(ConfigError::RekeyInterval { records });
        }
        self.rekey_after_records = records;
        Ok(self)
    }

    /// A responder asks `admit` about the identity an initiator claims in its HelloFinalize,
    /// before verifying the signature that proves it: one it refuses gets HelloReject with
    /// reason 0x04 (`NotAdmitted`, PROTOCOL.md §3.5) and the connection ends, so a stranger
    /// costs the responder its first flight and one Diffie-Hellman, not the signature check,
    /// the session or any frame. (A claim is not a proof: a refusal is safe on it, an admission
    /// is decided again on the verified identity.)
    pub fn with_admission(mut self, admit: Admission) -> Self {
        self.admission = Some(admit);
        self
    }

    /// Capability bits to offer; the session gets those both sides offered. None are defined in
    /// protocol 1.0.
    pub fn with_capabilities(mut self, capabilities: u32) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Announces another protocol version than [`PROTOCOL_VERSION`]. For compatibility tests
    /// only: a node that announces a version it does not speak will fail its handshakes.
    pub fn with_protocol_version(mut self, version: ProtocolVersion) -> Self {
        self.version = version;
        self
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The network id, as given.
    pub fn network_id(&self) -> &[u8] {
        &self.network_id
    }
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("peer_id", &self.peer_id)
            .field("network_id", &self.network_id.escape_ascii().to_string())
            .field("version", &self.version)
            .field("suites", &self.suites)
            .field("admission", &self.admission.is_some())
            .finish_non_exhaustive()
    }
}

/// A handshake setting the caller gave is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The network id is empty, too long, or not printable ASCII.
    #[error("network id must be 1 to {MAX_NETWORK_ID_LEN} printable ASCII characters")]
    NetworkId,
    /// No suite, or too many.
    #[error("give between 1 and {MAX_OFFERED_SUITES} record suites")]
    Suites,
    /// The hello payload is too large.
    #[error("hello payload of {len} bytes exceeds {MAX_HELLO_PAYLOAD_LEN}")]
    HelloPayload {
        /// Its length.
        len: usize,
    },
    /// The rekey interval is out of range.
    #[error("rekey interval {records} must be between 1 and {MAX_RECORDS_PER_KEY} records")]
    RekeyInterval {
        /// The interval given.
        records: u64,
    },
    /// The OS random source failed.
    #[error("the OS random source failed: {0}")]
    Random(String),
}
