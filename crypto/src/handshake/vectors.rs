//! Published test vectors: a complete handshake and the first records, from fixed keys, so an
//! independent implementation can check itself byte for byte (`PROTOCOL.md`, "Test vectors").
//!
//! `GLUEBERRY_BLESS=1 cargo test -p glueberry-crypto vectors` rewrites the file after a
//! deliberate protocol change; otherwise the test checks that the bytes have not moved.

use std::fmt::Write as _;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::*;
use crate::Identity;
use crate::record::{HEADER_LEN, TAG_LEN};

const VECTORS_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/handshake-v1.txt"
);

/// The frames of a full exchange after the handshake (written by the transport crate's
/// vectors test): sealed here, in order, each by its sender, as the records that carry them.
const EXCHANGE_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../transport/tests/vectors/exchange-v1.txt"
);

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn generate() -> String {
    let network = "glueberry-vectors-1";
    let init_identity = Identity::from_seed(&[0x11; 32]);
    let resp_identity = Identity::from_seed(&[0x22; 32]);
    let init_config = Arc::new(
        HandshakeConfig::with_noise_key(&init_identity, network, Zeroizing::new([0x33; 32]))
            .and_then(|c| c.with_hello_payload(b"initiator hello".to_vec()))
            .and_then(|c| c.with_rekey_after_records(2))
            .expect("config")
            .with_capabilities(0x0000_0003),
    );
    let resp_config = Arc::new(
        HandshakeConfig::with_noise_key(&resp_identity, network, Zeroizing::new([0x44; 32]))
            .and_then(|c| c.with_hello_payload(b"responder hello".to_vec()))
            .and_then(|c| c.with_suites(&[Suite::Aes256Gcm, Suite::ChaCha20Poly1305]))
            .expect("config")
            .with_capabilities(0x0000_0001),
    );
    let mut i = Handshake::initiator_with(
        init_config,
        Some(resp_identity.peer_id()),
        Some(&[0x55; 32]),
    )
    .expect("initiator");
    let mut r = Handshake::responder_with(resp_config, [0x66; 32]);
    let mut request = Vec::new();
    i.poll_transmit(&mut request);
    r.handle_input(&request).expect("request");
    let mut response = Vec::new();
    r.poll_transmit(&mut response);
    i.handle_input(&response).expect("response");
    let mut finalize = Vec::new();
    i.poll_transmit(&mut finalize);
    r.handle_input(&finalize).expect("finalize");
    let a = i.into_session().expect("session");
    let b = r.into_session().expect("session");
    assert_eq!(a.handshake_hash(), b.handshake_hash());

    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key} = {value}");
    };
    line("protocol", NOISE_PARAMS.to_string());
    line("network_id", network.to_string());
    line("initiator_identity_seed", hex(&[0x11; 32]));
    line("initiator_identity_public", hex(init_identity.public_key()));
    line("initiator_peer_id", init_identity.peer_id().to_string());
    line("initiator_noise_static_private", hex(&[0x33; 32]));
    line("initiator_noise_ephemeral_private", hex(&[0x55; 32]));
    line("initiator_hello", "\"initiator hello\"".to_string());
    line(
        "initiator_suites",
        "01 02 (ChaCha20-Poly1305, AES-256-GCM)".to_string(),
    );
    line("initiator_capabilities", "00000003".to_string());
    line("initiator_rekey_after_records", "2".to_string());
    line("responder_identity_seed", hex(&[0x22; 32]));
    line("responder_identity_public", hex(resp_identity.public_key()));
    line("responder_peer_id", resp_identity.peer_id().to_string());
    line("responder_noise_static_private", hex(&[0x44; 32]));
    line("responder_noise_ephemeral_private", hex(&[0x66; 32]));
    line("responder_hello", "\"responder hello\"".to_string());
    line(
        "responder_suites",
        "02 01 (AES-256-GCM, ChaCha20-Poly1305)".to_string(),
    );
    line("responder_capabilities", "00000001".to_string());
    line("hello_request", hex(&request));
    line("hello_response", hex(&response));
    line("hello_finalize", hex(&finalize));
    line("handshake_hash", hex(a.handshake_hash()));
    line("suite", format!("{:02x}", a.suite().wire_id()));
    line("capabilities", format!("{:08x}", a.capabilities()));

    let (mut a_seal, _) = a.into_channel();
    let (mut b_seal, _) = b.into_channel();
    let seal = |sealer: &mut RecordSealer, text: &[u8]| {
        let mut buf = vec![0u8; HEADER_LEN + text.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + text.len()].copy_from_slice(text);
        let len = sealer.seal_in_place(&mut buf, text.len()).expect("seal");
        hex(&buf[..len])
    };
    // The initiator rekeys after every 2 records: record 1 carries the key update.
    for (n, text) in [&b"record zero"[..], b"record one", b"", b"record three"]
        .iter()
        .enumerate()
    {
        line(
            &format!("initiator_record_{n}_plaintext"),
            format!("{:?}", String::from_utf8_lossy(text)),
        );
        line(&format!("initiator_record_{n}"), seal(&mut a_seal, text));
    }
    line("responder_record_0_plaintext", "\"reply\"".to_string());
    line("responder_record_0", seal(&mut b_seal, b"reply"));

    // The exchange's frames, one record each, continuing both directions' counters and keys
    // (the initiator's key updates every 2 records).
    let exchange = std::fs::read_to_string(EXCHANGE_PATH).expect("read exchange vectors");
    let mut from_initiator = true;
    for entry in exchange.lines().filter(|l| l.starts_with("frame_")) {
        let (key, value) = entry.split_once(" = ").expect("key = value");
        match key.strip_suffix("_bytes") {
            None => from_initiator = value.starts_with("initiator "),
            Some(frame) => {
                let sealer = if from_initiator {
                    &mut a_seal
                } else {
                    &mut b_seal
                };
                let n = frame.trim_start_matches("frame_");
                line(&format!("exchange_record_{n}"), seal(sealer, &unhex(value)));
            }
        }
    }
    out
}

#[test]
fn handshake_and_record_vectors_are_stable() {
    let generated = generate();
    // Deterministic: the same twice in one process.
    assert_eq!(generated, generate());
    if std::env::var_os("GLUEBERRY_BLESS").is_some() {
        std::fs::write(VECTORS_PATH, &generated).expect("write vectors");
        return;
    }
    let published = std::fs::read_to_string(VECTORS_PATH).expect("read vectors");
    assert_eq!(
        generated, published,
        "protocol bytes changed; see {VECTORS_PATH}"
    );
}
