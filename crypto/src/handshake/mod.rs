//! The handshake: Noise XX with Ed25519 identity binding, as a sans-IO state machine.
//!
//! Feed received bytes to [`Handshake::handle_input`], send what [`Handshake::poll_transmit`]
//! hands back, and when [`Handshake::is_finished`] turn it into a [`Session`] with
//! [`Handshake::into_session`]. No sockets, no clock: the caller owns both, and the timeout.

mod config;
mod dh;
pub(crate) mod wire;

use std::sync::Arc;

use ed25519_dalek::Signature;
use zeroize::Zeroizing;

pub use config::{Admission, ConfigError, HandshakeConfig, PROTOCOL_VERSION, ProtocolVersion};
use wire::{
    FRAME_HEADER_LEN, FinalizePayload, IdentityProof, KIND_FINALIZE, KIND_REJECT, KIND_REQUEST,
    KIND_RESPONSE, Preamble, Reader, ResponsePayload,
};
pub use wire::{
    MAGIC, MAX_HANDSHAKE_BODY_LEN, MAX_HELLO_PAYLOAD_LEN, MAX_NETWORK_ID_LEN, Reject, RejectReason,
    decode_reject,
};
#[doc(hidden)]
pub use wire::{PayloadKind, decode_payload};

use crate::record::{self, RecordOpener, RecordSealer, Suite};
use crate::{PeerId, PeerIdError};

/// The Noise protocol name; Glueberry's handshake is exactly this, plus the payloads.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// Which end of the handshake this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The dialler: sends HelloRequest and HelloFinalize.
    Initiator,
    /// The listener: sends HelloResponse.
    Responder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitRequest,
    AwaitResponse,
    AwaitFinalize,
    Finished,
    Failed,
}

/// One handshake in progress.
pub struct Handshake {
    config: Arc<HandshakeConfig>,
    role: Role,
    expected_peer: Option<PeerId>,
    state: State,
    noise: Option<snow::HandshakeState>,
    /// A partly received message (frame header and body), never longer than one message.
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    session: Option<Box<Session>>,
    /// Only ever set by test-vector generation.
    fixed_ephemeral: Option<[u8; 32]>,
}

impl Handshake {
    /// Starts a handshake as the dialler. If `expected_peer` is given, a responder with another
    /// identity fails it with [`HandshakeError::PeerIdMismatch`]. HelloRequest is ready in
    /// [`Handshake::poll_transmit`] at once.
    pub fn initiator(
        config: Arc<HandshakeConfig>,
        expected_peer: Option<PeerId>,
    ) -> Result<Self, HandshakeError> {
        Self::initiator_with(config, expected_peer, None)
    }

    /// As [`Handshake::initiator`]; `fixed_ephemeral` is for test vectors only.
    pub(crate) fn initiator_with(
        config: Arc<HandshakeConfig>,
        expected_peer: Option<PeerId>,
        fixed_ephemeral: Option<&[u8; 32]>,
    ) -> Result<Self, HandshakeError> {
        let mut preamble = Vec::with_capacity(7 + config.network_id.len());
        Preamble {
            major: config.version.major,
            minor: config.version.minor,
            network_id: &config.network_id,
        }
        .encode(&mut preamble);
        let mut builder = noise_builder(&config, &preamble)?;
        if let Some(key) = fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(key);
        }
        let mut noise = builder.build_initiator().map_err(noise_error)?;
        // snow wants room for a tag even where message 1 has none.
        let mut message = [0u8; wire::DH_LEN + record::TAG_LEN];
        let len = noise
            .write_message(&[], &mut message)
            .map_err(noise_error)?;
        let mut this = Self::new(config, Role::Initiator, expected_peer, State::AwaitResponse);
        this.noise = Some(noise);
        this.push_frame(KIND_REQUEST, &[&preamble, &message[..len]]);
        Ok(this)
    }

    /// Starts a handshake as the listener; it waits for HelloRequest.
    pub fn responder(config: Arc<HandshakeConfig>) -> Self {
        Self::new(config, Role::Responder, None, State::AwaitRequest)
    }

    /// As [`Handshake::responder`], with a fixed ephemeral key: for test vectors only.
    #[cfg(test)]
    pub(crate) fn responder_with(config: Arc<HandshakeConfig>, fixed_ephemeral: [u8; 32]) -> Self {
        let mut this = Self::responder(config);
        this.fixed_ephemeral = Some(fixed_ephemeral);
        this
    }

    fn new(
        config: Arc<HandshakeConfig>,
        role: Role,
        expected_peer: Option<PeerId>,
        state: State,
    ) -> Self {
        Self {
            config,
            role,
            expected_peer,
            state,
            noise: None,
            inbox: Vec::new(),
            outbox: Vec::new(),
            session: None,
            fixed_ephemeral: None,
        }
    }

    /// Takes bytes received from the peer and returns how many were consumed. It stops after the
    /// handshake's last message, so bytes that follow (the peer's first records) are left to the
    /// caller. Partial messages are buffered, up to one message's bounded length.
    ///
    /// On error the handshake is over and the connection should close, after sending what
    /// [`Handshake::poll_transmit`] still holds (a HelloReject telling the peer why).
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let mut consumed = 0;
        while consumed < input.len() {
            let expected: &[u8] = match self.state {
                State::AwaitRequest => &[KIND_REQUEST],
                State::AwaitResponse => &[KIND_RESPONSE, KIND_REJECT],
                State::AwaitFinalize => &[KIND_FINALIZE],
                State::Finished => break,
                State::Failed => return Err(HandshakeError::Failed),
            };
            match self.buffer(&input[consumed..], expected) {
                Ok(n) => consumed += n,
                Err(e) => return Err(self.fail(e)),
            }
            if self.inbox.len() >= FRAME_HEADER_LEN && self.inbox.len() == self.frame_len() {
                let message = std::mem::take(&mut self.inbox);
                let result = self.handle_message(message[0], &message[FRAME_HEADER_LEN..]);
                self.inbox = message;
                self.inbox.clear();
                if let Err(e) = result {
                    return Err(self.fail(e));
                }
            }
        }
        Ok(consumed)
    }

    /// Moves bytes of the current message from `input` into the inbox; checks the kind and the
    /// length as soon as the frame header is complete, before buffering the body.
    fn buffer(&mut self, input: &[u8], expected: &[u8]) -> Result<usize, HandshakeError> {
        let mut consumed = 0;
        if self.inbox.len() < FRAME_HEADER_LEN {
            let n = (FRAME_HEADER_LEN - self.inbox.len()).min(input.len());
            self.inbox.extend_from_slice(&input[..n]);
            consumed = n;
            if self.inbox.len() < FRAME_HEADER_LEN {
                return Ok(consumed);
            }
            if !expected.contains(&self.inbox[0]) {
                return Err(HandshakeError::UnexpectedMessage {
                    kind: self.inbox[0],
                });
            }
            let body_len = self.frame_len() - FRAME_HEADER_LEN;
            if body_len > MAX_HANDSHAKE_BODY_LEN {
                return Err(HandshakeError::MessageTooLarge { len: body_len });
            }
        }
        let n = (self.frame_len() - self.inbox.len()).min(input.len() - consumed);
        self.inbox.extend_from_slice(&input[consumed..consumed + n]);
        Ok(consumed + n)
    }

    fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + u16::from_be_bytes([self.inbox[1], self.inbox[2]]) as usize
    }

    fn fail(&mut self, error: HandshakeError) -> HandshakeError {
        // The initiator already believes the handshake done; tell it, so that it does not wait
        // for records that will never come. Earlier failures are told by the reject or the close.
        if self.state == State::AwaitFinalize {
            let reason = match error {
                HandshakeError::NotAdmitted(_) => RejectReason::NotAdmitted,
                _ => RejectReason::HandshakeFailed,
            };
            self.push_reject(reason);
        }
        self.state = State::Failed;
        self.noise = None;
        error
    }

    fn handle_message(&mut self, kind: u8, body: &[u8]) -> Result<(), HandshakeError> {
        match (self.state, kind) {
            (State::AwaitRequest, KIND_REQUEST) => self.handle_request(body),
            (State::AwaitResponse, KIND_RESPONSE) => self.handle_response(body),
            (State::AwaitResponse, KIND_REJECT) => Err(self.handle_reject(body)),
            (State::AwaitFinalize, KIND_FINALIZE) => self.handle_finalize(body),
            _ => Err(HandshakeError::UnexpectedMessage { kind }),
        }
    }

    /// Responder: HelloRequest in, HelloResponse out.
    fn handle_request(&mut self, body: &[u8]) -> Result<(), HandshakeError> {
        let mut reader = Reader::new(body);
        let theirs = Preamble::decode(&mut reader)?;
        let prologue = &body[..reader.consumed_from(body)];
        let ours = &self.config;
        if theirs.major != ours.version.major {
            self.push_reject(RejectReason::VersionMismatch);
            return Err(HandshakeError::VersionMismatch {
                ours: self.config.version,
                theirs: ProtocolVersion {
                    major: theirs.major,
                    minor: theirs.minor,
                },
            });
        }
        if theirs.network_id != ours.network_id.as_slice() {
            self.push_reject(RejectReason::NetworkMismatch);
            return Err(HandshakeError::NetworkMismatch {
                ours: wire::sanitize(&self.config.network_id),
                theirs: wire::sanitize(theirs.network_id),
            });
        }
        let remote_version = ProtocolVersion {
            major: theirs.major,
            minor: theirs.minor,
        };
        let mut builder = noise_builder(&self.config, prologue)?;
        if let Some(key) = &self.fixed_ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(key);
        }
        let mut noise = builder.build_responder().map_err(noise_error)?;
        let mut payload = [0u8; record::TAG_LEN];
        let len = noise
            .read_message(reader.rest(), &mut payload)
            .map_err(noise_error)?;
        if len != 0 {
            return Err(HandshakeError::Malformed("HelloRequest carries a payload"));
        }
        let mut plaintext = Vec::with_capacity(MAX_HANDSHAKE_BODY_LEN);
        ResponsePayload {
            proof: self.proof(),
            minor: self.config.version.minor,
            capabilities: self.config.capabilities,
            suites: &self.config.suite_ids,
            hello: &self.config.hello_payload,
        }
        .encode(&mut plaintext);
        let mut message = vec![0u8; MAX_HANDSHAKE_BODY_LEN];
        let len = noise
            .write_message(&plaintext, &mut message)
            .map_err(noise_error)?;
        self.push_frame(KIND_RESPONSE, &[&message[..len]]);
        self.noise = Some(noise);
        self.state = State::AwaitFinalize;
        // Kept until HelloFinalize arrives; the session needs it.
        self.session = Some(Box::new(Session::pending(remote_version)));
        Ok(())
    }

    /// Initiator: HelloResponse in, HelloFinalize out, done.
    fn handle_response(&mut self, body: &[u8]) -> Result<(), HandshakeError> {
        let mut noise = self.noise.take().ok_or(HandshakeError::Failed)?;
        let mut plaintext = vec![0u8; MAX_HANDSHAKE_BODY_LEN];
        let len = noise
            .read_message(body, &mut plaintext)
            .map_err(noise_error)?;
        let payload = ResponsePayload::decode(&plaintext[..len])?;
        let peer_id = self.verify(&noise, payload.proof)?;
        if let Some(expected) = self.expected_peer
            && expected != peer_id
        {
            return Err(HandshakeError::PeerIdMismatch {
                expected,
                actual: peer_id,
            });
        }
        let suite = choose_suite(&self.config.suites, payload.suites)
            .ok_or(HandshakeError::NoCommonSuite)?;
        let capabilities = self.config.capabilities & payload.capabilities;
        let remote_version = ProtocolVersion {
            major: self.config.version.major,
            minor: payload.minor,
        };
        let remote_hello = payload.hello.to_vec();
        let mut finalize = Vec::with_capacity(MAX_HANDSHAKE_BODY_LEN);
        FinalizePayload {
            proof: self.proof(),
            capabilities: self.config.capabilities,
            suite: suite.wire_id(),
            hello: &self.config.hello_payload,
        }
        .encode(&mut finalize);
        let len = noise
            .write_message(&finalize, &mut plaintext)
            .map_err(noise_error)?;
        self.push_frame(KIND_FINALIZE, &[&plaintext[..len]]);
        self.finish(
            noise,
            Session {
                peer_id: Some(peer_id),
                remote_version,
                suite,
                capabilities,
                remote_hello,
                channel: None,
                handshake_hash: [0; 32],
                role: Role::Initiator,
            },
        )
    }

    /// Responder: HelloFinalize in, done.
    fn handle_finalize(&mut self, body: &[u8]) -> Result<(), HandshakeError> {
        let mut noise = self.noise.take().ok_or(HandshakeError::Failed)?;
        let mut session = self.session.take().ok_or(HandshakeError::Failed)?;
        let mut plaintext = vec![0u8; MAX_HANDSHAKE_BODY_LEN];
        let len = noise
            .read_message(body, &mut plaintext)
            .map_err(noise_error)?;
        let payload = FinalizePayload::decode(&plaintext[..len])?;
        if let Some(admit) = &self.config.admission {
            // The claim is checked before the proof: a refused stranger costs no signature check.
            let claimed = PeerId::from_public_key(payload.proof.identity_key)
                .map_err(HandshakeError::IdentityKey)?;
            if !admit(&claimed) {
                return Err(HandshakeError::NotAdmitted(claimed));
            }
        }
        let peer_id = self.verify(&noise, payload.proof)?;
        let suite = Suite::from_wire_id(payload.suite)
            .filter(|s| self.config.suites.contains(s))
            .ok_or(HandshakeError::NoCommonSuite)?;
        session.peer_id = Some(peer_id);
        session.suite = suite;
        session.capabilities = self.config.capabilities & payload.capabilities;
        session.remote_hello = payload.hello.to_vec();
        session.role = Role::Responder;
        self.finish(noise, *session)
    }

    fn handle_reject(&mut self, body: &[u8]) -> HandshakeError {
        let reject = match decode_reject(body) {
            Ok(reject) => reject,
            Err(e) => return e,
        };
        let theirs = ProtocolVersion {
            major: reject.major,
            minor: reject.minor,
        };
        match reject.reason {
            RejectReason::VersionMismatch => HandshakeError::VersionMismatch {
                ours: self.config.version,
                theirs,
            },
            RejectReason::NetworkMismatch => HandshakeError::NetworkMismatch {
                ours: wire::sanitize(&self.config.network_id),
                theirs: reject.network_id,
            },
            reason => HandshakeError::Rejected(reason),
        }
    }

    /// Checks the peer's identity proof against the Noise static key the handshake authenticated.
    fn verify(
        &self,
        noise: &snow::HandshakeState,
        proof: IdentityProof<'_>,
    ) -> Result<PeerId, HandshakeError> {
        let (peer_id, verifying_key) = PeerId::from_public_key_with_key(proof.identity_key)
            .map_err(HandshakeError::IdentityKey)?;
        let remote_static = noise
            .get_remote_static()
            .ok_or(HandshakeError::Malformed("no remote static key"))?;
        let mut signed = [0u8; wire::SIGNATURE_CONTEXT.len() + wire::DH_LEN];
        let (context, key) = signed.split_at_mut(wire::SIGNATURE_CONTEXT.len());
        context.copy_from_slice(wire::SIGNATURE_CONTEXT);
        key.copy_from_slice(
            remote_static
                .get(..wire::DH_LEN)
                .ok_or(HandshakeError::Malformed("remote static key length"))?,
        );
        verifying_key
            .verify_strict(&signed, &Signature::from_bytes(proof.signature))
            .map_err(|_| HandshakeError::BadSignature)?;
        if peer_id == self.config.peer_id {
            return Err(HandshakeError::SelfConnection);
        }
        Ok(peer_id)
    }

    fn finish(
        &mut self,
        mut noise: snow::HandshakeState,
        mut session: Session,
    ) -> Result<(), HandshakeError> {
        if !noise.is_handshake_finished() {
            return Err(HandshakeError::Malformed("handshake not finished"));
        }
        let hash: [u8; 32] = noise
            .get_handshake_hash()
            .try_into()
            .map_err(|_| HandshakeError::Malformed("handshake hash length"))?;
        let (initiator_key, responder_key) = noise.dangerously_get_raw_split();
        let split = (Zeroizing::new(initiator_key), Zeroizing::new(responder_key));
        session.handshake_hash = hash;
        session.channel = Some(record::channel(
            session.suite,
            self.role == Role::Initiator,
            split,
            &hash,
            self.config.rekey_after_records,
        ));
        self.session = Some(Box::new(session));
        self.state = State::Finished;
        Ok(())
    }

    fn proof(&self) -> IdentityProof<'_> {
        IdentityProof {
            identity_key: self.config.peer_id.public_key(),
            signature: &self.config.signature,
        }
    }

    fn push_frame(&mut self, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.outbox.push(kind);
        self.outbox.extend_from_slice(&(len as u16).to_be_bytes());
        for part in parts {
            self.outbox.extend_from_slice(part);
        }
    }

    fn push_reject(&mut self, reason: RejectReason) {
        let preamble = Preamble {
            major: self.config.version.major,
            minor: self.config.version.minor,
            network_id: &self.config.network_id,
        };
        wire::encode_reject(&preamble, reason, &mut self.outbox);
    }

    /// Appends the bytes to send to the peer to `out` and returns how many there were.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.outbox.len();
        out.append(&mut self.outbox);
        n
    }

    /// Whether the handshake completed; [`Handshake::into_session`] then succeeds.
    ///
    /// The initiator finishes when it has read HelloResponse; its HelloFinalize is then in
    /// [`Handshake::poll_transmit`] and must be sent before any record.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The authenticated session, once [`Handshake::is_finished`].
    pub fn into_session(self) -> Result<Session, HandshakeError> {
        match (self.state, self.session) {
            (State::Finished, Some(session)) if self.outbox.is_empty() => Ok(*session),
            (State::Finished, Some(_)) => Err(HandshakeError::UnsentOutput),
            _ => Err(HandshakeError::NotFinished),
        }
    }
}

/// Runs a handshake to completion between two ends in the same process, passing each message
/// straight across. For tests, benchmarks and simulations (the in-memory network); a real
/// connection drives [`Handshake::handle_input`] and [`Handshake::poll_transmit`] itself.
///
/// Returns the initiator's and the responder's sessions, or the first error either end hit.
pub fn complete_in_memory(
    mut initiator: Handshake,
    mut responder: Handshake,
) -> Result<(Session, Session), HandshakeError> {
    let mut wire = Vec::with_capacity(512);
    // Three messages; the bound keeps a misbehaving pair from looping.
    for _ in 0..3 {
        if initiator.poll_transmit(&mut wire) > 0 {
            responder.handle_input(&wire)?;
            wire.clear();
        }
        if responder.poll_transmit(&mut wire) > 0 {
            initiator.handle_input(&wire)?;
            wire.clear();
        }
    }
    Ok((initiator.into_session()?, responder.into_session()?))
}

fn noise_builder<'a>(
    config: &'a HandshakeConfig,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, HandshakeError> {
    // Parsed once per process, not once per handshake.
    static PARAMS: std::sync::OnceLock<Option<snow::params::NoiseParams>> =
        std::sync::OnceLock::new();
    let params = PARAMS
        .get_or_init(|| NOISE_PARAMS.parse().ok())
        .clone()
        .ok_or(HandshakeError::Malformed("noise parameters"))?;
    let resolver = dh::resolver(config.noise_static.clone());
    snow::Builder::with_resolver(params, resolver)
        .local_private_key(config.noise_static.private.as_slice())
        .and_then(|b| b.prologue(prologue))
        .map_err(noise_error)
}

fn noise_error(error: snow::Error) -> HandshakeError {
    match error {
        snow::Error::Decrypt => HandshakeError::Decrypt,
        snow::Error::Dh => HandshakeError::LowOrderKey,
        _ => HandshakeError::Malformed("noise message"),
    }
}

/// The result of a completed handshake: who the peer is, what was agreed, and the record keys.
pub struct Session {
    peer_id: Option<PeerId>,
    remote_version: ProtocolVersion,
    suite: Suite,
    capabilities: u32,
    remote_hello: Vec<u8>,
    handshake_hash: [u8; 32],
    channel: Option<(RecordSealer, RecordOpener)>,
    role: Role,
}

impl Session {
    fn pending(remote_version: ProtocolVersion) -> Self {
        Self {
            peer_id: None,
            remote_version,
            suite: Suite::ChaCha20Poly1305,
            capabilities: 0,
            remote_hello: Vec::new(),
            handshake_hash: [0; 32],
            channel: None,
            role: Role::Responder,
        }
    }

    /// The peer's authenticated identity.
    pub fn peer_id(&self) -> PeerId {
        match self.peer_id {
            Some(id) => id,
            None => unreachable!("a session is only handed out once the peer is verified"),
        }
    }

    /// The peer's protocol version (its major always equals ours).
    pub fn remote_version(&self) -> ProtocolVersion {
        self.remote_version
    }

    /// The record suite chosen.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The capability bits both sides offered.
    pub fn capabilities(&self) -> u32 {
        self.capabilities
    }

    /// The application hello payload the peer sent inside the handshake.
    pub fn remote_hello(&self) -> &[u8] {
        &self.remote_hello
    }

    /// The Noise handshake hash: a unique, authenticated identifier of this session, the same on
    /// both ends (for channel binding).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Which end we were.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The record sealer for our direction and opener for the peer's.
    pub fn into_channel(self) -> (RecordSealer, RecordOpener) {
        match self.channel {
            Some(channel) => channel,
            None => unreachable!("a session is only handed out with its keys"),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer_id", &self.peer_id)
            .field("role", &self.role)
            .field("suite", &self.suite)
            .field("remote_version", &self.remote_version)
            .finish_non_exhaustive()
    }
}

/// Why a handshake failed.
///
/// Everything but the last group is the peer's doing (or a network attacker's): close the
/// connection, never panic. Decryption failures say nothing more than that they failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The first message does not start with the Glueberry magic: not a Glueberry peer.
    #[error("not a Glueberry handshake (bad magic)")]
    BadMagic,
    /// The peer speaks another major protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: ProtocolVersion,
        /// The peer's version.
        theirs: ProtocolVersion,
    },
    /// The peer is on another network (chain id).
    #[error("network mismatch: ours {ours:?}, theirs {theirs:?}")]
    NetworkMismatch {
        /// Our network id.
        ours: String,
        /// The peer's network id, with non-printable bytes escaped.
        theirs: String,
    },
    /// A message of the wrong kind for this point of the handshake (out of order, replayed,
    /// reflected).
    #[error("unexpected handshake message kind {kind:#04x}")]
    UnexpectedMessage {
        /// The kind byte received.
        kind: u8,
    },
    /// A message longer than the protocol allows; refused from its header.
    #[error("handshake message of {len} bytes is too large")]
    MessageTooLarge {
        /// The length it claimed.
        len: usize,
    },
    /// A message that does not parse.
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// Authentication failed: the message was tampered with, replayed, or is from another
    /// session or network.
    #[error("handshake authentication failed")]
    Decrypt,
    /// The peer sent a low-order X25519 key.
    #[error("peer sent a low-order X25519 key")]
    LowOrderKey,
    /// The peer's identity key is invalid or weak.
    #[error("peer identity key rejected: {0}")]
    IdentityKey(PeerIdError),
    /// The peer's identity signature over its Noise key does not verify.
    #[error("peer identity signature does not verify")]
    BadSignature,
    /// The responder is not the peer that was dialled.
    #[error("dialled {expected} but reached {actual}")]
    PeerIdMismatch {
        /// The peer id we dialled.
        expected: PeerId,
        /// The peer id that answered.
        actual: PeerId,
    },
    /// The peer has our own identity: we connected to ourselves.
    #[error("connected to ourselves")]
    SelfConnection,
    /// No record suite both sides accept.
    #[error("no record suite in common")]
    NoCommonSuite,
    /// The peer's hello payload is larger than the protocol allows.
    #[error("peer hello payload of {len} bytes is too large")]
    HelloPayloadTooLarge {
        /// Its length.
        len: usize,
    },
    /// The responder refused our HelloFinalize.
    #[error("the peer rejected the handshake: {0:?}")]
    Rejected(RejectReason),
    /// Responder: the identity the initiator claims is not admitted
    /// ([`HandshakeConfig::with_admission`]); not verified, so only a claim.
    #[error("identity {0} not admitted")]
    NotAdmitted(PeerId),
    /// The handshake was used after it failed.
    #[error("handshake already failed")]
    Failed,
    /// [`Handshake::into_session`] was called before the handshake finished.
    #[error("handshake not finished")]
    NotFinished,
    /// [`Handshake::into_session`] was called before the last message was taken with
    /// [`Handshake::poll_transmit`].
    #[error("take the last handshake message with poll_transmit before into_session")]
    UnsentOutput,
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

/// The initiator's choice of record suite (PROTOCOL.md §3.4): the suite both ends list first;
/// if their first choices differ, ChaCha20-Poly1305 when both accept it (a node lists
/// AES-256-GCM first only when its CPU has AES instructions, so AES is used only when both
/// ends run it in hardware); otherwise the first of `ours` that `theirs` (wire ids, in the
/// responder's order) lists.
pub fn choose_suite(ours: &[Suite], theirs: &[u8]) -> Option<Suite> {
    let listed = |s: &Suite| theirs.contains(&s.wire_id());
    // Their first choice is the first id this version knows: unknown ids are skipped.
    let their_first = theirs.iter().copied().find_map(Suite::from_wire_id);
    if let Some(&first) = ours.first()
        && their_first == Some(first)
    {
        return Some(first);
    }
    if ours.contains(&Suite::ChaCha20Poly1305) && listed(&Suite::ChaCha20Poly1305) {
        return Some(Suite::ChaCha20Poly1305);
    }
    ours.iter().copied().find(listed)
}
