//! Records through the public API: sessions from real handshakes, sealed and opened in place.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers: a failure should stop the test

use std::sync::Arc;

use glueberry_crypto::handshake::complete_in_memory;
use glueberry_crypto::record::{
    HEADER_LEN, MAX_RECORD_LEN, MAX_RECORD_PLAINTEXT_LEN, RECORD_TYPE_DATA,
    RECORD_TYPE_DATA_KEY_UPDATE, RecordHeader, TAG_LEN,
};
use glueberry_crypto::{
    Handshake, HandshakeConfig, Identity, RecordError, RecordOpener, RecordSealer, Session, Suite,
};
use proptest::prelude::*;

/// Runs a handshake between two fresh identities; returns (initiator, responder) sessions.
fn sessions(suite: Suite, rekey_after: u64) -> (Session, Session) {
    let config = |seed: u8| {
        Arc::new(
            HandshakeConfig::new(&Identity::from_seed(&[seed; 32]), "records-test")
                .and_then(|c| c.with_suites(&[suite]))
                .and_then(|c| c.with_rekey_after_records(rekey_after))
                .expect("config"),
        )
    };
    let initiator = Handshake::initiator(config(1), None).expect("initiator");
    complete_in_memory(initiator, Handshake::responder(config(2))).expect("handshake")
}

/// (initiator's sealer, responder's opener, responder's sealer, initiator's opener)
fn channels(
    suite: Suite,
    rekey_after: u64,
) -> (RecordSealer, RecordOpener, RecordSealer, RecordOpener) {
    let (a, b) = sessions(suite, rekey_after);
    let (a_seal, a_open) = a.into_channel();
    let (b_seal, b_open) = b.into_channel();
    (a_seal, b_open, b_seal, a_open)
}

fn seal(sealer: &mut RecordSealer, plaintext: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + plaintext.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    let len = sealer
        .seal_in_place(&mut buf, plaintext.len())
        .expect("seal");
    assert_eq!(len, buf.len());
    buf
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn round_trip_at_every_size_of_interest_for_both_suites() {
    for suite in Suite::ALL {
        let (mut seal_ab, mut open_ab, _, _) = channels(suite, 1 << 20);
        for len in [0, 1, 64, 16 * 1024, MAX_RECORD_PLAINTEXT_LEN] {
            let plaintext = pattern(len);
            let mut record = seal(&mut seal_ab, &plaintext);
            assert_eq!(record.len(), HEADER_LEN + len + TAG_LEN);
            // Encrypted: with 16 or more bytes a match by chance is out of the question (one
            // byte would match one time in 256).
            if len >= 16 {
                assert_ne!(&record[HEADER_LEN..HEADER_LEN + len], &plaintext[..]);
            }
            let header =
                RecordHeader::decode(record[..HEADER_LEN].try_into().expect("4")).expect("header");
            assert_eq!(header.record_len(), record.len());
            let opened = open_ab.open_in_place(&mut record).expect("open");
            assert_eq!(opened, &plaintext[..], "{suite:?} {len}");
        }
        // One byte past the maximum is refused by the sealer.
        let mut big = vec![0u8; MAX_RECORD_LEN + 1];
        assert_eq!(
            seal_ab.seal_in_place(&mut big, MAX_RECORD_PLAINTEXT_LEN + 1),
            Err(RecordError::PlaintextTooLarge {
                len: MAX_RECORD_PLAINTEXT_LEN + 1
            })
        );
        let mut small = [0u8; HEADER_LEN + 8];
        assert!(matches!(
            seal_ab.seal_in_place(&mut small, 8),
            Err(RecordError::BufferTooSmall { .. })
        ));
    }
}

#[test]
fn a_flipped_bit_anywhere_fails_to_open() {
    for suite in Suite::ALL {
        let (mut sealer, _, _, _) = channels(suite, 1 << 20);
        let record = seal(&mut sealer, &pattern(100));
        // Every bit of header, ciphertext and tag.
        for bit in 0..record.len() * 8 {
            let (mut sealer, mut opener, _, _) = channels(suite, 1 << 20);
            let mut record = seal(&mut sealer, &pattern(100));
            record[bit / 8] ^= 1 << (bit % 8);
            let result = opener.open_in_place(&mut record);
            assert!(result.is_err(), "{suite:?} bit {bit} went unnoticed");
            // The opener is then dead: the connection must close.
            let mut next = seal(&mut sealer, b"next");
            assert_eq!(opener.open_in_place(&mut next), Err(RecordError::Poisoned));
        }
    }
}

#[test]
fn replayed_reordered_and_misdirected_records_fail() {
    let (mut a_seal, mut b_open, _, mut a_open) = channels(Suite::ChaCha20Poly1305, 1 << 20);
    let first = seal(&mut a_seal, b"first");
    let mut second = seal(&mut a_seal, b"second");

    // Reordered: second before first.
    assert_eq!(b_open.open_in_place(&mut second), Err(RecordError::Decrypt));

    // Replayed: a new pair, first opened twice.
    let (mut a_seal2, mut b_open2, _, _) = channels(Suite::ChaCha20Poly1305, 1 << 20);
    let mut one = seal(&mut a_seal2, b"once");
    let mut again = one.clone();
    assert_eq!(b_open2.open_in_place(&mut one).expect("open"), b"once");
    assert_eq!(b_open2.open_in_place(&mut again), Err(RecordError::Decrypt));

    // Moved between directions: A's record given back to A.
    let mut reflected = first.clone();
    assert_eq!(
        a_open.open_in_place(&mut reflected),
        Err(RecordError::Decrypt)
    );

    // From another session between the same two identities.
    let (_, mut other_open, _, _) = channels(Suite::ChaCha20Poly1305, 1 << 20);
    let mut foreign = first.clone();
    assert_eq!(
        other_open.open_in_place(&mut foreign),
        Err(RecordError::Decrypt)
    );

    // Both directions of a session work, each on its own key.
    let (mut a_seal, mut b_open, mut b_seal, mut a_open) = channels(Suite::Aes256Gcm, 1 << 20);
    let mut there = seal(&mut a_seal, b"same");
    let mut back = seal(&mut b_seal, b"same");
    assert_ne!(there, back, "both directions share a key");
    assert_eq!(a_open.open_in_place(&mut back).expect("open"), b"same");
    assert_eq!(b_open.open_in_place(&mut there).expect("open"), b"same");
}

#[test]
fn keys_update_every_n_records_and_both_sides_follow() {
    for suite in Suite::ALL {
        let (mut sealer, mut opener, _, _) = channels(suite, 3);
        for n in 0..20u32 {
            let mut record = seal(&mut sealer, &n.to_be_bytes());
            let expected_type = if n % 3 == 2 {
                RECORD_TYPE_DATA_KEY_UPDATE
            } else {
                RECORD_TYPE_DATA
            };
            assert_eq!(record[0], expected_type, "record {n}");
            assert_eq!(
                opener.open_in_place(&mut record).expect("open"),
                n.to_be_bytes()
            );
        }
        assert_eq!(sealer.records_sealed(), 20);
        assert_eq!(opener.records_opened(), 20);
    }
}

#[test]
fn a_stripped_key_update_is_detected() {
    // Clearing the key-update flag changes the associated data: the record does not open, so
    // an attacker cannot desynchronise the keys silently.
    let (mut sealer, mut opener, _, _) = channels(Suite::ChaCha20Poly1305, 2);
    let mut first = seal(&mut sealer, b"a");
    opener.open_in_place(&mut first).expect("open");
    let mut second = seal(&mut sealer, b"b");
    assert_eq!(second[0], RECORD_TYPE_DATA_KEY_UPDATE);
    second[0] = RECORD_TYPE_DATA;
    assert_eq!(opener.open_in_place(&mut second), Err(RecordError::Decrypt));
}

#[test]
fn headers_are_checked_before_the_body_is_read() {
    let header = |bytes: [u8; 4]| RecordHeader::decode(bytes);
    assert_eq!(header([0x10, 0, 0, 15]), Err(RecordError::BadLength(15)));
    assert_eq!(
        header([0x10, 0xff, 0xff, 0xff]),
        Err(RecordError::BadLength(0xff_ffff))
    );
    let max = (MAX_RECORD_PLAINTEXT_LEN + TAG_LEN) as u32;
    let [_, a, b, c] = (max + 1).to_be_bytes();
    assert_eq!(
        header([0x10, a, b, c]),
        Err(RecordError::BadLength(max as usize + 1))
    );
    let [_, a, b, c] = max.to_be_bytes();
    assert_eq!(
        header([0x10, a, b, c]).map(|h| h.record_len()),
        Ok(MAX_RECORD_LEN)
    );
    assert_eq!(header([0x00, 0, 0, 16]), Err(RecordError::BadType(0)));
    assert_eq!(
        header([0x04, 0, 0, 16]),
        Err(RecordError::HandshakeRejected)
    );
}

#[test]
fn truncated_or_overlong_records_are_refused() {
    let (mut sealer, mut opener, _, _) = channels(Suite::ChaCha20Poly1305, 1 << 20);
    let record = seal(&mut sealer, b"0123456789");
    let mut short = record[..record.len() - 1].to_vec();
    assert_eq!(
        opener.open_in_place(&mut short),
        Err(RecordError::Truncated)
    );
    let (mut sealer, mut opener, _, _) = channels(Suite::ChaCha20Poly1305, 1 << 20);
    let mut long = seal(&mut sealer, b"0123456789");
    long.push(0);
    assert_eq!(opener.open_in_place(&mut long), Err(RecordError::Truncated));
    assert_eq!(
        opener.open_in_place(&mut [0x10, 0]),
        Err(RecordError::Poisoned)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of plaintexts round-trips in order, through a stream cut at arbitrary
    /// points and reassembled from the headers, across key updates.
    #[test]
    fn codec_round_trips_any_sequence(
        aes in any::<bool>(),
        rekey_after in 1u64..5,
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..20),
        cut in 1usize..700,
    ) {
        let suite = if aes { Suite::Aes256Gcm } else { Suite::ChaCha20Poly1305 };
        let (mut sealer, mut opener, _, _) = channels(suite, rekey_after);
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend_from_slice(&seal(&mut sealer, m));
        }
        // Reassemble from chunks of `cut` bytes, as a socket would deliver them.
        let mut pending = Vec::new();
        let mut opened = Vec::new();
        for chunk in stream.chunks(cut) {
            pending.extend_from_slice(chunk);
            while pending.len() >= HEADER_LEN {
                let header = RecordHeader::decode(pending[..HEADER_LEN].try_into().unwrap())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if pending.len() < header.record_len() {
                    break;
                }
                let mut record: Vec<u8> = pending.drain(..header.record_len()).collect();
                opened.push(opener.open_in_place(&mut record)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?.to_vec());
            }
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(opened, messages);
    }

    /// Any single-byte change to any record of a sequence is caught, at that record.
    #[test]
    fn any_corruption_is_caught(
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (mut sealer, mut opener, _, _) = channels(Suite::ChaCha20Poly1305, 2);
        let mut records: Vec<Vec<u8>> = messages.iter().map(|m| seal(&mut sealer, m)).collect();
        let which = which.index(records.len());
        let at = at.index(records[which].len());
        records[which][at] ^= xor;
        for (n, record) in records.iter_mut().enumerate() {
            let result = opener.open_in_place(record).map(|p| p.to_vec());
            if n < which {
                prop_assert_eq!(result, Ok(messages[n].clone()));
            } else {
                prop_assert!(result.is_err());
            }
        }
    }

    /// Header decoding never panics and accepts exactly the valid types and lengths.
    #[test]
    fn header_decoding_is_total(bytes in any::<[u8; 4]>()) {
        let len = u32::from_be_bytes([0, bytes[1], bytes[2], bytes[3]]) as usize;
        let valid_type = bytes[0] == RECORD_TYPE_DATA || bytes[0] == RECORD_TYPE_DATA_KEY_UPDATE;
        let valid_len = (TAG_LEN..=MAX_RECORD_PLAINTEXT_LEN + TAG_LEN).contains(&len);
        prop_assert_eq!(RecordHeader::decode(bytes).is_ok(), valid_type && valid_len);
    }
}
