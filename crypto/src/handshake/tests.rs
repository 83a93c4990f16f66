//! Handshake tests: two in-memory ends, and a network attacker between them.

use std::sync::Arc;

use super::dh::LOW_ORDER_POINTS;
use super::wire::{DH_LEN, KIND_RESPONSE, ResponsePayload};
use super::*;
use crate::Identity;
use crate::record::{HEADER_LEN, RecordError, RecordHeader};

const NET: &str = "test-chain-1";

fn config(seed: u8) -> Arc<HandshakeConfig> {
    Arc::new(HandshakeConfig::new(&Identity::from_seed(&[seed; 32]), NET).expect("config"))
}

fn peer(seed: u8) -> PeerId {
    Identity::from_seed(&[seed; 32]).peer_id()
}

/// What happened to each end after the three messages were exchanged.
struct Outcome {
    initiator: Handshake,
    responder: Handshake,
    initiator_error: Option<HandshakeError>,
    responder_error: Option<HandshakeError>,
    /// Bytes the responder sent after an error (a HelloReject), for an initiator that finished.
    late_reject: Vec<u8>,
    /// The three messages as delivered (after tampering).
    messages: Vec<Vec<u8>>,
}

/// Runs a handshake, passing each message (0: HelloRequest, 1: HelloResponse, 2: HelloFinalize)
/// through `tamper` on its way, byte by byte when `trickle` is set.
fn drive_with(
    mut initiator: Handshake,
    mut responder: Handshake,
    trickle: bool,
    mut tamper: impl FnMut(usize, &mut Vec<u8>),
) -> Outcome {
    let mut outcome_errors = [None, None];
    let mut late_reject = Vec::new();
    let mut messages = Vec::new();
    for index in 0..3 {
        let (from, to) = if index % 2 == 0 {
            (&mut initiator, &mut responder)
        } else {
            (&mut responder, &mut initiator)
        };
        let mut message = Vec::new();
        from.poll_transmit(&mut message);
        if message.is_empty() {
            break;
        }
        tamper(index, &mut message);
        messages.push(message.clone());
        let result = if trickle {
            message
                .chunks(1)
                .try_fold(0, |n, byte| to.handle_input(byte).map(|m| n + m))
        } else {
            to.handle_input(&message)
        };
        if let Err(e) = result {
            let to_index = usize::from(index % 2 == 0);
            outcome_errors[to_index] = Some(e);
            let mut reply = Vec::new();
            to.poll_transmit(&mut reply);
            if !reply.is_empty() {
                if from.is_finished() {
                    late_reject = reply;
                } else if let Err(e) = from.handle_input(&reply) {
                    outcome_errors[1 - to_index] = Some(e);
                }
            }
            break;
        }
    }
    let [initiator_error, responder_error] = outcome_errors;
    Outcome {
        initiator,
        responder,
        initiator_error,
        responder_error,
        late_reject,
        messages,
    }
}

fn drive(initiator: Handshake, responder: Handshake) -> Outcome {
    drive_with(initiator, responder, false, |_, _| {})
}

fn pair() -> (Handshake, Handshake) {
    (
        Handshake::initiator(config(1), Some(peer(2))).expect("initiator"),
        Handshake::responder(config(2)),
    )
}

/// A fresh pair after HelloRequest and HelloResponse: the responder awaits HelloFinalize.
fn request_and_response() -> (Handshake, Handshake, Vec<u8>, Vec<u8>) {
    let (mut i, mut r) = pair();
    let mut request = Vec::new();
    i.poll_transmit(&mut request);
    r.handle_input(&request).expect("request");
    let mut response = Vec::new();
    r.poll_transmit(&mut response);
    (i, r, request, response)
}

fn sessions(outcome: Outcome) -> (Session, Session) {
    assert_eq!(outcome.initiator_error, None);
    assert_eq!(outcome.responder_error, None);
    (
        outcome.initiator.into_session().expect("initiator session"),
        outcome.responder.into_session().expect("responder session"),
    )
}

/// Seals `message` with one session and opens it with the other.
fn exchange(from: &mut RecordSealer, to: &mut RecordOpener, message: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + message.len() + record::TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + message.len()].copy_from_slice(message);
    let len = from.seal_in_place(&mut buf, message.len()).expect("seal");
    to.open_in_place(&mut buf[..len]).expect("open").to_vec()
}

#[test]
fn full_handshake_authenticates_both_sides_and_keys_match() {
    let init_cfg = Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[1; 32]), NET)
            .and_then(|c| c.with_hello_payload(b"chain=test height=7".to_vec()))
            .expect("config"),
    );
    let resp_cfg = Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[2; 32]), NET)
            .and_then(|c| c.with_hello_payload(vec![0xAB; MAX_HELLO_PAYLOAD_LEN]))
            .expect("config"),
    );
    let initiator = Handshake::initiator(init_cfg, Some(peer(2))).expect("initiator");
    let responder = Handshake::responder(resp_cfg);
    let outcome = drive_with(initiator, responder, true, |_, _| {});
    let sizes: Vec<usize> = outcome.messages.iter().map(Vec::len).collect();
    let (a, b) = sessions(outcome);
    assert_eq!(a.peer_id(), peer(2));
    assert_eq!(b.peer_id(), peer(1));
    assert_eq!(a.role(), Role::Initiator);
    assert_eq!(b.role(), Role::Responder);
    assert_eq!(a.handshake_hash(), b.handshake_hash());
    // Both ends run the same CPU: the suite it prefers.
    assert_eq!(a.suite(), Suite::preferred()[0]);
    assert_eq!(b.suite(), a.suite());
    assert_eq!(a.remote_hello(), &[0xAB; MAX_HELLO_PAYLOAD_LEN][..]);
    assert_eq!(b.remote_hello(), b"chain=test height=7");
    assert_eq!(a.remote_version(), PROTOCOL_VERSION);
    assert_eq!(b.remote_version(), PROTOCOL_VERSION);
    // HelloRequest: frame 3 + preamble 7 + network id + e.
    assert_eq!(sizes[0], 3 + 7 + NET.len() + DH_LEN);
    let (mut a_seal, mut a_open) = a.into_channel();
    let (mut b_seal, mut b_open) = b.into_channel();
    assert_eq!(exchange(&mut a_seal, &mut b_open, b"ping"), b"ping");
    assert_eq!(exchange(&mut b_seal, &mut a_open, b"pong"), b"pong");
}

#[test]
fn aes_only_when_both_ends_list_it_first_else_chacha() {
    let (aes, chacha) = (Suite::Aes256Gcm, Suite::ChaCha20Poly1305);
    let ids = |s: &[Suite]| s.iter().map(|s| s.wire_id()).collect::<Vec<u8>>();
    // Both with AES hardware: AES.
    assert_eq!(
        choose_suite(&[aes, chacha], &ids(&[aes, chacha])),
        Some(aes)
    );
    // Either without: ChaCha, whichever side it is.
    assert_eq!(
        choose_suite(&[aes, chacha], &ids(&[chacha, aes])),
        Some(chacha)
    );
    assert_eq!(
        choose_suite(&[chacha, aes], &ids(&[aes, chacha])),
        Some(chacha)
    );
    assert_eq!(
        choose_suite(&[chacha, aes], &ids(&[chacha, aes])),
        Some(chacha)
    );
    // Only one in common: that one; none: no suite.
    assert_eq!(choose_suite(&[aes, chacha], &ids(&[aes])), Some(aes));
    assert_eq!(choose_suite(&[chacha], &ids(&[aes, chacha])), Some(chacha));
    assert_eq!(choose_suite(&[aes], &ids(&[chacha])), None);
    // Unknown ids in the responder's list are ignored.
    assert_eq!(choose_suite(&[aes, chacha], &[0x7f, 0x02]), Some(aes));
    assert_eq!(
        choose_suite(&[aes, chacha], &[0x7f, 0x01, 0x02]),
        Some(chacha)
    );
    // ...also when deciding what the responder lists first (its first *known* id): an unknown
    // id ahead of AES does not turn agreement on AES into ChaCha (PROTOCOL.md §3.3 step 6).
    assert_eq!(choose_suite(&[aes, chacha], &[0x7f, 0x02, 0x01]), Some(aes));
    // This machine's default order follows its CPU.
    let preferred = Suite::preferred();
    assert_eq!(preferred.len(), 2);
    assert!(preferred.contains(&aes) && preferred.contains(&chacha));
}

#[test]
fn initiator_preference_picks_the_suite_and_disjoint_sets_fail() {
    let aes_first = |seed: u8| {
        Arc::new(
            HandshakeConfig::new(&Identity::from_seed(&[seed; 32]), NET)
                .and_then(|c| c.with_suites(&[Suite::Aes256Gcm, Suite::ChaCha20Poly1305]))
                .expect("config"),
        )
    };
    let outcome = drive(
        Handshake::initiator(aes_first(1), None).expect("initiator"),
        Handshake::responder(aes_first(2)),
    );
    let (a, b) = sessions(outcome);
    assert_eq!((a.suite(), b.suite()), (Suite::Aes256Gcm, Suite::Aes256Gcm));
    let (mut seal, _) = a.into_channel();
    let (_, mut open) = b.into_channel();
    assert_eq!(exchange(&mut seal, &mut open, b"aes"), b"aes");

    let only = |seed: u8, suite: Suite| {
        Arc::new(
            HandshakeConfig::new(&Identity::from_seed(&[seed; 32]), NET)
                .and_then(|c| c.with_suites(&[suite]))
                .expect("config"),
        )
    };
    let outcome = drive(
        Handshake::initiator(only(1, Suite::Aes256Gcm), None).expect("initiator"),
        Handshake::responder(only(2, Suite::ChaCha20Poly1305)),
    );
    assert_eq!(outcome.initiator_error, Some(HandshakeError::NoCommonSuite));
    assert!(!outcome.responder.is_finished());
}

#[test]
fn capabilities_are_the_intersection() {
    let with_caps = |seed: u8, caps: u32| {
        Arc::new(
            HandshakeConfig::new(&Identity::from_seed(&[seed; 32]), NET)
                .expect("config")
                .with_capabilities(caps),
        )
    };
    let outcome = drive(
        Handshake::initiator(with_caps(1, 0b1011), None).expect("initiator"),
        Handshake::responder(with_caps(2, 0b0110)),
    );
    let (a, b) = sessions(outcome);
    assert_eq!((a.capabilities(), b.capabilities()), (0b0010, 0b0010));
}

/// Neither end may come out of a tampered handshake with a session the other shares: the
/// responder never finishes, and the initiator either fails or, when only HelloFinalize was
/// damaged, is told by the responder's HelloReject where it expects its first record. (When a
/// damaged length makes the responder wait for bytes that never come, its handshake timeout
/// closes the connection: the caller owns the clock.)
fn assert_failed_both_sides(outcome: &Outcome, what: &str) {
    assert!(
        !outcome.responder.is_finished(),
        "responder finished: {what}"
    );
    let responder_waiting =
        outcome.responder_error.is_none() && !outcome.responder.inbox.is_empty();
    if outcome.initiator.is_finished() && !responder_waiting {
        assert!(
            outcome.responder_error.is_some(),
            "no responder error: {what}"
        );
        let header: [u8; HEADER_LEN] = outcome
            .late_reject
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .unwrap_or_else(|| panic!("no HelloReject for the finished initiator: {what}"));
        assert_eq!(
            RecordHeader::decode(header),
            Err(RecordError::HandshakeRejected),
            "{what}"
        );
    }
}

#[test]
fn tampering_with_any_byte_of_any_message_fails_both_sides() {
    let mut lengths = [0usize; 3];
    for (index, length) in lengths.iter_mut().enumerate() {
        let (i, r) = pair();
        *length = drive(i, r).messages[index].len();
    }
    for (index, &len) in lengths.iter().enumerate() {
        for position in 0..len {
            for flip in [0x01u8, 0x80, 0xff] {
                let (i, r) = pair();
                let outcome = drive_with(i, r, false, |at, message| {
                    if at == index {
                        message[position] ^= flip;
                    }
                });
                let what = format!("message {index} byte {position} ^ {flip:#04x}");
                assert_failed_both_sides(&outcome, &what);
            }
        }
    }
}

#[test]
fn replayed_and_reflected_messages_fail() {
    let (i, r) = pair();
    let old = drive(i, r).messages;

    // HelloResponse of an old session replayed to a new initiator.
    let (mut i, _) = pair();
    i.poll_transmit(&mut Vec::new());
    assert_eq!(i.handle_input(&old[1]), Err(HandshakeError::Decrypt));

    // An old HelloRequest and HelloFinalize replayed to a new responder.
    let mut r = Handshake::responder(config(2));
    assert_eq!(r.handle_input(&old[0]), Ok(old[0].len()));
    assert_eq!(r.handle_input(&old[2]), Err(HandshakeError::Decrypt));
    assert!(!r.is_finished());

    // A duplicated HelloRequest.
    let mut r = Handshake::responder(config(2));
    r.handle_input(&old[0]).expect("first copy");
    assert_eq!(
        r.handle_input(&old[0]),
        Err(HandshakeError::UnexpectedMessage { kind: KIND_REQUEST })
    );

    // The initiator's own HelloRequest reflected back to it.
    let (mut i, _) = pair();
    let mut own = Vec::new();
    i.poll_transmit(&mut own);
    assert_eq!(
        i.handle_input(&own),
        Err(HandshakeError::UnexpectedMessage { kind: KIND_REQUEST })
    );

    // The responder's HelloResponse reflected back, as is and relabelled as a HelloFinalize.
    let (_, mut r, request, mut response) = request_and_response();
    let mut r2 = Handshake::responder(config(2));
    r2.handle_input(&request).expect("request");
    assert_eq!(
        r2.handle_input(&response),
        Err(HandshakeError::UnexpectedMessage {
            kind: KIND_RESPONSE
        })
    );
    response[0] = wire::KIND_FINALIZE;
    assert_eq!(r.handle_input(&response), Err(HandshakeError::Decrypt));
    // Out of order: a HelloFinalize before any HelloRequest.
    let mut r3 = Handshake::responder(config(2));
    assert_eq!(
        r3.handle_input(&old[2]),
        Err(HandshakeError::UnexpectedMessage {
            kind: wire::KIND_FINALIZE
        })
    );
    // A failed handshake stays failed.
    assert_eq!(r3.handle_input(&old[0]), Err(HandshakeError::Failed));
}

#[test]
fn low_order_ephemeral_keys_are_rejected_by_both_roles() {
    for point in LOW_ORDER_POINTS {
        // Responder: HelloRequest with a low-order e.
        let (mut i, _) = pair();
        let mut request = Vec::new();
        i.poll_transmit(&mut request);
        let e_at = request.len() - DH_LEN;
        request[e_at..].copy_from_slice(&point);
        let mut r = Handshake::responder(config(2));
        assert_eq!(
            r.handle_input(&request),
            Err(HandshakeError::LowOrderKey),
            "{point:02x?}"
        );
        // Initiator: HelloResponse with a low-order e (the rest does not matter: ee comes first).
        let (mut i, mut r) = pair();
        let mut request = Vec::new();
        i.poll_transmit(&mut request);
        r.handle_input(&request).expect("request");
        let mut response = Vec::new();
        r.poll_transmit(&mut response);
        response[3..3 + DH_LEN].copy_from_slice(&point);
        assert_eq!(i.handle_input(&response), Err(HandshakeError::LowOrderKey));
    }
}

/// A responder that speaks Noise correctly but sends the identity proof it likes.
fn rogue_response(request: &[u8], identity_key: [u8; 32], signature: [u8; 64]) -> Vec<u8> {
    let body = &request[3..];
    let prologue = &body[..body.len() - DH_LEN];
    let cfg = config(9);
    let mut noise = noise_builder(&cfg, prologue)
        .and_then(|b| b.build_responder().map_err(noise_error))
        .expect("noise");
    noise
        .read_message(&body[body.len() - DH_LEN..], &mut [0u8; 8])
        .expect("read");
    let mut payload = Vec::new();
    ResponsePayload {
        proof: IdentityProof {
            identity_key: &identity_key,
            signature: &signature,
        },
        minor: 0,
        capabilities: 0,
        suites: &[1],
        hello: &[],
    }
    .encode(&mut payload);
    let mut message = vec![0u8; MAX_HANDSHAKE_BODY_LEN];
    let len = noise.write_message(&payload, &mut message).expect("write");
    let mut framed = vec![KIND_RESPONSE];
    framed.extend_from_slice(&(len as u16).to_be_bytes());
    framed.extend_from_slice(&message[..len]);
    framed
}

#[test]
fn weak_or_unbound_identity_keys_are_rejected() {
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    // Small-order Ed25519 key: any "signature" would verify for some messages; refused outright.
    let (mut i, _) = pair();
    let mut request = Vec::new();
    i.poll_transmit(&mut request);
    let response = rogue_response(&request, identity_point, [0; 64]);
    assert_eq!(
        i.handle_input(&response),
        Err(HandshakeError::IdentityKey(PeerIdError::WeakKey))
    );
    // A real identity key whose signature is over another Noise key (a stolen proof).
    let stolen = config(2);
    let (mut i, _) = pair();
    let mut request = Vec::new();
    i.poll_transmit(&mut request);
    let response = rogue_response(&request, *peer(2).public_key(), stolen.signature);
    assert_eq!(i.handle_input(&response), Err(HandshakeError::BadSignature));
}

#[test]
fn wrong_network_gives_network_mismatch_on_both_sides() {
    let other = Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[2; 32]), "other-chain").expect("config"),
    );
    let outcome = drive(
        Handshake::initiator(config(1), None).expect("initiator"),
        Handshake::responder(other),
    );
    let expected = |ours: &str, theirs: &str| HandshakeError::NetworkMismatch {
        ours: ours.into(),
        theirs: theirs.into(),
    };
    assert_eq!(outcome.responder_error, Some(expected("other-chain", NET)));
    assert_eq!(outcome.initiator_error, Some(expected(NET, "other-chain")));
    // The in-memory helper reports the first error it meets: the responder's.
    let other = Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[2; 32]), "other-chain").expect("config"),
    );
    let initiator = Handshake::initiator(config(1), None).expect("initiator");
    assert_eq!(
        complete_in_memory(initiator, Handshake::responder(other)).err(),
        Some(expected("other-chain", NET))
    );
}

#[test]
fn wrong_major_version_gives_version_mismatch_on_both_sides() {
    let v2 = ProtocolVersion { major: 2, minor: 3 };
    let future = Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[2; 32]), NET)
            .expect("config")
            .with_protocol_version(v2),
    );
    let outcome = drive(
        Handshake::initiator(config(1), None).expect("initiator"),
        Handshake::responder(future),
    );
    assert_eq!(
        outcome.responder_error,
        Some(HandshakeError::VersionMismatch {
            ours: v2,
            theirs: PROTOCOL_VERSION
        })
    );
    assert_eq!(
        outcome.initiator_error,
        Some(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: v2
        })
    );
}

#[test]
fn another_minor_version_connects_and_is_reported() {
    let newer = ProtocolVersion { major: 1, minor: 4 };
    let cfg = Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[2; 32]), NET)
            .expect("config")
            .with_protocol_version(newer),
    );
    let (a, b) = sessions(drive(
        Handshake::initiator(config(1), None).expect("initiator"),
        Handshake::responder(cfg),
    ));
    assert_eq!(a.remote_version(), newer);
    assert_eq!(b.remote_version(), PROTOCOL_VERSION);
}

#[test]
fn man_in_the_middle_rewriting_version_or_network_breaks_the_handshake() {
    // Rewrite the initiator's minor version (a downgrade attempt) or its network id to the
    // responder's: the responder accepts the preamble, but the prologue no longer matches.
    let other = || {
        Arc::new(HandshakeConfig::new(&Identity::from_seed(&[2; 32]), "test-chain-2").expect("cfg"))
    };
    let outcome = drive_with(
        Handshake::initiator(config(1), None).expect("initiator"),
        Handshake::responder(other()),
        false,
        |at, message| {
            if at == 0 {
                let last = 3 + 7 + NET.len() - 1;
                message[last] = b'2';
            }
        },
    );
    assert_eq!(outcome.initiator_error, Some(HandshakeError::Decrypt));
    assert!(!outcome.responder.is_finished());

    let (i, r) = pair();
    let outcome = drive_with(i, r, false, |at, message| {
        if at == 0 {
            message[3 + 5] = 7; // minor version
        }
    });
    assert_eq!(outcome.initiator_error, Some(HandshakeError::Decrypt));
    assert!(!outcome.responder.is_finished());
}

#[test]
fn expected_peer_id_is_enforced() {
    let outcome = drive(
        Handshake::initiator(config(1), Some(peer(3))).expect("initiator"),
        Handshake::responder(config(2)),
    );
    assert_eq!(
        outcome.initiator_error,
        Some(HandshakeError::PeerIdMismatch {
            expected: peer(3),
            actual: peer(2)
        })
    );
    assert!(!outcome.responder.is_finished());
}

#[test]
fn connecting_to_oneself_fails() {
    // Same identity, distinct handshake configs (as after a restart, or two listeners).
    let outcome = drive(
        Handshake::initiator(config(1), None).expect("initiator"),
        Handshake::responder(config(1)),
    );
    assert_eq!(
        outcome.initiator_error,
        Some(HandshakeError::SelfConnection)
    );
    assert!(!outcome.responder.is_finished());
    // The same config on both ends.
    let cfg = config(1);
    let outcome = drive(
        Handshake::initiator(cfg.clone(), None).expect("initiator"),
        Handshake::responder(cfg),
    );
    assert_eq!(
        outcome.initiator_error,
        Some(HandshakeError::SelfConnection)
    );
}

#[test]
fn oversized_and_garbage_input_is_refused_early() {
    // A length of 0xFFFF is refused from the 3-byte header, before any body is buffered.
    let mut r = Handshake::responder(config(2));
    assert_eq!(
        r.handle_input(&[KIND_REQUEST, 0xff, 0xff]),
        Err(HandshakeError::MessageTooLarge { len: 0xffff })
    );
    assert!(r.inbox.capacity() <= 64);
    let mut r = Handshake::responder(config(2));
    assert_eq!(
        r.handle_input(b"GET / HTTP/1.1\r\n"),
        Err(HandshakeError::UnexpectedMessage { kind: b'G' })
    );
    let mut r = Handshake::responder(config(2));
    assert_eq!(
        r.handle_input(&[KIND_REQUEST, 0, 4, b'G', b'L', b'B', b'X']),
        Err(HandshakeError::BadMagic)
    );
    let mut r = Handshake::responder(config(2));
    assert_eq!(
        r.handle_input(&[KIND_REQUEST, 0, 0]),
        Err(HandshakeError::Malformed("truncated"))
    );
}

#[test]
fn hello_payload_limits() {
    let id = Identity::from_seed(&[1; 32]);
    let too_big = HandshakeConfig::new(&id, NET)
        .and_then(|c| c.with_hello_payload(vec![0; MAX_HELLO_PAYLOAD_LEN + 1]));
    assert_eq!(
        too_big.err(),
        Some(ConfigError::HelloPayload {
            len: MAX_HELLO_PAYLOAD_LEN + 1
        })
    );
    for bad in [
        "",
        "has space",
        "\u{e9}t\u{e9}",
        &"x".repeat(MAX_NETWORK_ID_LEN + 1),
    ] {
        assert_eq!(
            HandshakeConfig::new(&id, bad).err(),
            Some(ConfigError::NetworkId)
        );
    }
    assert!(
        HandshakeConfig::new(&id, NET)
            .and_then(|c| c.with_suites(&[]))
            .is_err()
    );
    assert!(
        HandshakeConfig::new(&id, NET)
            .and_then(|c| c.with_rekey_after_records(0))
            .is_err()
    );
}

#[test]
fn session_is_only_handed_out_when_complete() {
    let (mut i, mut r) = pair();
    assert!(matches!(
        Handshake::responder(config(2)).into_session(),
        Err(HandshakeError::NotFinished)
    ));
    let mut request = Vec::new();
    i.poll_transmit(&mut request);
    r.handle_input(&request).expect("request");
    let mut response = Vec::new();
    r.poll_transmit(&mut response);
    i.handle_input(&response).expect("response");
    assert!(i.is_finished());
    // HelloFinalize has not been taken yet.
    assert!(matches!(
        i.into_session(),
        Err(HandshakeError::UnsentOutput)
    ));
}

/// PROTOCOL.md §3.4: a HelloFinalize refused from its 3-byte header alone (a body over 8192
/// bytes) still gets HelloReject(3), as any failure at that step does; another kind there too.
#[test]
fn a_finalize_refused_from_its_header_gets_a_hello_reject() {
    for header in [[0x03, 0x20, 0x01], [0x01, 0x00, 0x10]] {
        let (_, mut r, _, _) = request_and_response();
        assert!(r.handle_input(&header).is_err(), "{header:?}");
        let mut reject = Vec::new();
        r.poll_transmit(&mut reject);
        assert_eq!(reject.first(), Some(&wire::KIND_REJECT), "{header:?}");
        let parsed = wire::decode_reject(&reject[3..]).expect("a HelloReject");
        assert_eq!(parsed.reason, RejectReason::HandshakeFailed);
    }
}

#[test]
fn a_responder_refuses_a_claimed_identity_it_does_not_admit_with_not_admitted() {
    let member = peer(1);
    let admit: super::Admission = Arc::new(move |claimed: &PeerId| *claimed == member);
    let responder_config = Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[2; 32]), NET)
            .expect("config")
            .with_admission(admit),
    );
    // A stranger (seed 3): refused, and told why after its HelloFinalize.
    let outcome = drive(
        Handshake::initiator(config(3), Some(peer(2))).expect("initiator"),
        Handshake::responder(responder_config.clone()),
    );
    assert_eq!(
        outcome.responder_error,
        Some(HandshakeError::NotAdmitted(peer(3)))
    );
    let reject = decode_reject(&outcome.late_reject[3..]).expect("a HelloReject");
    assert_eq!(reject.reason, RejectReason::NotAdmitted);
    assert_eq!(outcome.late_reject[0], 0x04);
    assert_eq!(
        RejectReason::NotAdmitted.wire_id(),
        0x04,
        "PROTOCOL.md §3.5"
    );
    // The member (seed 1) completes.
    let outcome = drive(
        Handshake::initiator(config(1), Some(peer(2))).expect("initiator"),
        Handshake::responder(responder_config),
    );
    assert!(outcome.responder_error.is_none() && outcome.initiator_error.is_none());
    let (_, responder) = sessions(outcome);
    assert_eq!(responder.peer_id(), member);
}
