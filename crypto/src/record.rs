//! Records: the encrypted unit on the wire after the handshake, sealed and opened in place.
//!
//! A record is `header (4) || ciphertext || tag (16)`. The header is the record type and the
//! length of what follows; it is the AEAD's associated data, so it cannot be changed unnoticed.
//! Each direction has its own key and its own nonce counter; see `PROTOCOL.md` for the bytes.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

/// Length of a record header.
pub const HEADER_LEN: usize = 4;
/// Length of the AEAD tag that ends every record.
pub const TAG_LEN: usize = 16;
/// The most plaintext one record may carry (64 KiB). A receiver rejects a longer record from its
/// header alone, before reading its body.
pub const MAX_RECORD_PLAINTEXT_LEN: usize = 64 * 1024;
/// The longest record on the wire: header, maximum plaintext and tag.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_RECORD_PLAINTEXT_LEN + TAG_LEN;
/// The most records a sender may seal under one key; the receiver enforces it. Well inside
/// AES-256-GCM's limits for 64 KiB records.
pub const MAX_RECORDS_PER_KEY: u64 = 1 << 24;
/// How many records a sender seals under one key before it updates the key, by default.
pub const DEFAULT_REKEY_AFTER_RECORDS: u64 = 1 << 20;

/// Record type byte: a record.
pub const RECORD_TYPE_DATA: u8 = 0x10;
/// Record type byte: a record that is the last under its key; both sides update the key after it.
pub const RECORD_TYPE_DATA_KEY_UPDATE: u8 = 0x11;

/// The nonce counter value reserved for Noise's REKEY; no record is ever sealed with it.
const REKEY_NONCE: u64 = u64::MAX;

/// The AEAD that protects records, chosen inside the encrypted handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// ChaCha20-Poly1305 (RFC 8439), the default: fast everywhere, constant-time in software.
    ChaCha20Poly1305,
    /// AES-256-GCM, several times cheaper on CPUs with AES-NI/VAES.
    Aes256Gcm,
}

/// Whether this CPU runs AES-GCM in hardware.
fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl Suite {
    /// Every suite this implementation supports, ChaCha20-Poly1305 first.
    pub const ALL: [Suite; 2] = [Suite::ChaCha20Poly1305, Suite::Aes256Gcm];

    /// This machine's order of preference: AES-256-GCM first where the CPU has AES instructions
    /// (x86-64 AES-NI with carry-less multiply, ARMv8 AES), ChaCha20-Poly1305 first elsewhere.
    /// A handshake uses AES-256-GCM only when both ends list it first (PROTOCOL.md §3.4).
    pub fn preferred() -> [Suite; 2] {
        if aes_hardware() {
            [Suite::Aes256Gcm, Suite::ChaCha20Poly1305]
        } else {
            Suite::ALL
        }
    }

    /// The suite's identifier on the wire.
    pub fn wire_id(self) -> u8 {
        match self {
            Suite::ChaCha20Poly1305 => 0x01,
            Suite::Aes256Gcm => 0x02,
        }
    }

    /// The suite with this wire identifier, if this implementation supports it.
    pub fn from_wire_id(id: u8) -> Option<Suite> {
        match id {
            0x01 => Some(Suite::ChaCha20Poly1305),
            0x02 => Some(Suite::Aes256Gcm),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

/// A record header, decoded and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Whether this record is the last under the sender's current key.
    pub key_update: bool,
    /// Length of the ciphertext and tag that follow the header.
    pub body_len: usize,
}

impl RecordHeader {
    /// Decodes a header from the first [`HEADER_LEN`] bytes of a record, checking the type and
    /// that the length is within [`MAX_RECORD_LEN`]. This is all a reader needs to know how many
    /// more bytes to wait for; nothing is allocated by the length.
    pub fn decode(bytes: [u8; HEADER_LEN]) -> Result<Self, RecordError> {
        let key_update = match bytes[0] {
            RECORD_TYPE_DATA => false,
            RECORD_TYPE_DATA_KEY_UPDATE => true,
            crate::handshake::wire::KIND_REJECT => return Err(RecordError::HandshakeRejected),
            other => return Err(RecordError::BadType(other)),
        };
        let body_len = u32::from_be_bytes([0, bytes[1], bytes[2], bytes[3]]) as usize;
        if !(TAG_LEN..=MAX_RECORD_PLAINTEXT_LEN + TAG_LEN).contains(&body_len) {
            return Err(RecordError::BadLength(body_len));
        }
        Ok(Self {
            key_update,
            body_len,
        })
    }

    /// Length of the whole record: header and body.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let len = (self.body_len as u32).to_be_bytes();
        let kind = if self.key_update {
            RECORD_TYPE_DATA_KEY_UPDATE
        } else {
            RECORD_TYPE_DATA
        };
        [kind, len[1], len[2], len[3]]
    }
}

/// One direction's key. Only `ring`'s expanded key is kept; REKEY is computed with it.
struct DirectionKey {
    suite: Suite,
    /// `None` only for [`danger_null_channel`].
    aead: Option<LessSafeKey>,
}

impl DirectionKey {
    fn new(suite: Suite, raw: Zeroizing<[u8; 32]>) -> Self {
        // `raw` is wiped when it drops at the end of this function.
        let aead = match UnboundKey::new(suite.algorithm(), raw.as_slice()) {
            Ok(key) => LessSafeKey::new(key),
            // Both algorithms take exactly 32-byte keys.
            Err(_) => unreachable!("32-byte key rejected by {suite:?}"),
        };
        Self {
            suite,
            aead: Some(aead),
        }
    }

    fn seal(&self, counter: u64, header: [u8; HEADER_LEN], plaintext: &mut [u8], tag: &mut [u8]) {
        match &self.aead {
            Some(aead) => {
                match aead.seal_in_place_separate_tag(nonce(counter), Aad::from(header), plaintext)
                {
                    Ok(t) => tag.copy_from_slice(t.as_ref()),
                    // ring fails only for inputs beyond 2^38 bytes; records are at most 64 KiB.
                    Err(_) => unreachable!("record of {} bytes refused by ring", plaintext.len()),
                }
            }
            None => tag.fill(0),
        }
    }

    fn open<'a>(
        &self,
        counter: u64,
        header: [u8; HEADER_LEN],
        body: &'a mut [u8],
    ) -> Result<&'a mut [u8], RecordError> {
        match &self.aead {
            Some(aead) => aead
                .open_in_place(nonce(counter), Aad::from(header), body)
                .map_err(|_| RecordError::Decrypt),
            None => {
                let len = body.len() - TAG_LEN;
                Ok(&mut body[..len])
            }
        }
    }

    /// Noise's REKEY(k): the first 32 bytes of ENCRYPT(k, 2^64-1, "", 32 zero bytes).
    fn rekey(&mut self) {
        let Some(aead) = &self.aead else { return };
        let mut next = Zeroizing::new([0u8; 32]);
        let sealed =
            aead.seal_in_place_separate_tag(nonce(REKEY_NONCE), Aad::empty(), next.as_mut_slice());
        debug_assert!(sealed.is_ok(), "sealing 32 bytes cannot fail");
        *self = Self::new(self.suite, next);
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; aead::NONCE_LEN];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Derives the two record keys from the Noise split and the handshake hash, then builds the
/// sealer for our direction and the opener for theirs. See `PROTOCOL.md`, "Record keys".
pub(crate) fn channel(
    suite: Suite,
    initiator: bool,
    split: (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>),
    handshake_hash: &[u8; 32],
    rekey_after_records: u64,
) -> (RecordSealer, RecordOpener) {
    let derive = |ikm: &[u8; 32]| {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(handshake_hash), ikm);
        let mut okm = Zeroizing::new([0u8; 32]);
        let mut info = [0u8; RECORD_KEY_INFO.len() + 1];
        info[..RECORD_KEY_INFO.len()].copy_from_slice(RECORD_KEY_INFO);
        info[RECORD_KEY_INFO.len()] = suite.wire_id();
        if hk.expand(&info, okm.as_mut_slice()).is_err() {
            unreachable!("32 bytes is a valid HKDF-SHA256 output length");
        }
        DirectionKey::new(suite, okm)
    };
    let initiator_to_responder = derive(&split.0);
    let responder_to_initiator = derive(&split.1);
    let (ours, theirs) = if initiator {
        (initiator_to_responder, responder_to_initiator)
    } else {
        (responder_to_initiator, initiator_to_responder)
    };
    (
        RecordSealer {
            key: ours,
            counter: 0,
            records_this_key: 0,
            rekey_after: rekey_after_records.clamp(1, MAX_RECORDS_PER_KEY),
        },
        RecordOpener {
            key: theirs,
            counter: 0,
            records_this_key: 0,
            poisoned: false,
        },
    )
}

/// A sealer and opener pair that **do not encrypt or authenticate**: records keep their layout
/// (header, plaintext, a zero tag) so that everything around the AEAD can be profiled without it.
///
/// For benchmarks and profiling only. No handshake ever produces it and no wire value selects
/// it: it cannot be negotiated with a peer.
pub fn danger_null_channel() -> (RecordSealer, RecordOpener) {
    let null = || DirectionKey {
        suite: Suite::ChaCha20Poly1305,
        aead: None,
    };
    (
        RecordSealer {
            key: null(),
            counter: 0,
            records_this_key: 0,
            rekey_after: MAX_RECORDS_PER_KEY,
        },
        RecordOpener {
            key: null(),
            counter: 0,
            records_this_key: 0,
            poisoned: false,
        },
    )
}

/// HKDF info prefix for record keys; the suite's wire id follows it.
pub(crate) const RECORD_KEY_INFO: &[u8] = b"glueberry/1 record key";

/// Seals our outgoing records, in order, in place.
pub struct RecordSealer {
    key: DirectionKey,
    counter: u64,
    records_this_key: u64,
    rekey_after: u64,
}

impl RecordSealer {
    /// Seals a record in `buf`, which holds `[header space][plaintext][tag space]`:
    /// `buf[HEADER_LEN..HEADER_LEN + plaintext_len]` is the plaintext, encrypted in place; the
    /// header is written before it and the tag after it. Returns the record's length.
    ///
    /// After [`MAX_RECORDS_PER_KEY`] or the configured number of records, the record is marked
    /// as the last under its key and the key is updated. The nonce counter never wraps: once it
    /// is spent this returns [`RecordError::NonceExhausted`] and the connection must close.
    pub fn seal_in_place(
        &mut self,
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, RecordError> {
        if plaintext_len > MAX_RECORD_PLAINTEXT_LEN {
            return Err(RecordError::PlaintextTooLarge { len: plaintext_len });
        }
        let record_len = HEADER_LEN + plaintext_len + TAG_LEN;
        if buf.len() < record_len {
            return Err(RecordError::BufferTooSmall {
                needed: record_len,
                len: buf.len(),
            });
        }
        if self.counter == REKEY_NONCE {
            return Err(RecordError::NonceExhausted);
        }
        let key_update = self.records_this_key + 1 >= self.rekey_after;
        let header = RecordHeader {
            key_update,
            body_len: plaintext_len + TAG_LEN,
        }
        .encode();
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&header);
        let (plaintext, rest) = rest.split_at_mut(plaintext_len);
        self.key
            .seal(self.counter, header, plaintext, &mut rest[..TAG_LEN]);
        self.counter += 1;
        self.records_this_key += 1;
        if key_update {
            self.key.rekey();
            self.records_this_key = 0;
        }
        Ok(record_len)
    }

    /// The suite in use.
    pub fn suite(&self) -> Suite {
        self.key.suite
    }

    /// How many records have been sealed.
    pub fn records_sealed(&self) -> u64 {
        self.counter
    }

    #[cfg(test)]
    pub(crate) fn set_counter_for_test(&mut self, counter: u64) {
        self.counter = counter;
    }
}

/// Opens the peer's incoming records, in order, in place.
pub struct RecordOpener {
    key: DirectionKey,
    counter: u64,
    records_this_key: u64,
    poisoned: bool,
}

impl RecordOpener {
    /// Opens one whole record (`header || ciphertext || tag`) in place and returns its plaintext,
    /// a sub-slice of `record`.
    ///
    /// Records must be opened in the order they were sealed: a replayed, reordered, dropped or
    /// foreign record fails with [`RecordError::Decrypt`], which carries no detail. After any
    /// error the opener refuses further records; the connection must close.
    pub fn open_in_place<'a>(&mut self, record: &'a mut [u8]) -> Result<&'a mut [u8], RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        let result = self.open(record);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<&'a mut [u8], RecordError> {
        let Some((head, body)) = record.split_first_chunk_mut::<HEADER_LEN>() else {
            return Err(RecordError::Truncated);
        };
        let header = RecordHeader::decode(*head)?;
        if body.len() != header.body_len {
            return Err(RecordError::Truncated);
        }
        if self.counter == REKEY_NONCE {
            return Err(RecordError::NonceExhausted);
        }
        if self.records_this_key + 1 >= MAX_RECORDS_PER_KEY && !header.key_update {
            return Err(RecordError::KeyOveruse);
        }
        let plaintext = self.key.open(self.counter, *head, body)?;
        self.counter += 1;
        self.records_this_key += 1;
        if header.key_update {
            self.key.rekey();
            self.records_this_key = 0;
        }
        Ok(plaintext)
    }

    /// How many records have been opened.
    pub fn records_opened(&self) -> u64 {
        self.counter
    }

    #[cfg(test)]
    pub(crate) fn set_counter_for_test(&mut self, counter: u64) {
        self.counter = counter;
    }
}

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The peer sent an unknown record type.
    #[error("unknown record type {0:#04x}")]
    BadType(u8),
    /// The peer sent a HelloReject where a record was expected: it refused our last handshake
    /// message. Decode it with [`crate::handshake::decode_reject`].
    #[error("the peer rejected the handshake")]
    HandshakeRejected,
    /// The header's length is shorter than a tag or longer than [`MAX_RECORD_LEN`].
    #[error("record length {0} is out of bounds")]
    BadLength(usize),
    /// The record is shorter than its header says (or has bytes past it).
    #[error("record length does not match its header")]
    Truncated,
    /// Authentication failed: tampered, replayed, reordered, or from another key.
    #[error("record authentication failed")]
    Decrypt,
    /// The peer sealed more than [`MAX_RECORDS_PER_KEY`] records without updating its key.
    #[error("peer exceeded the records allowed under one key")]
    KeyOveruse,
    /// The 64-bit nonce counter is spent; the connection must close.
    #[error("record nonce counter exhausted; the connection must close")]
    NonceExhausted,
    /// The caller gave more than [`MAX_RECORD_PLAINTEXT_LEN`] bytes for one record.
    #[error("plaintext of {len} bytes exceeds the record maximum {MAX_RECORD_PLAINTEXT_LEN}")]
    PlaintextTooLarge {
        /// Plaintext length given.
        len: usize,
    },
    /// The caller's buffer has no room for the header and tag around the plaintext.
    #[error("buffer of {len} bytes cannot hold a {needed}-byte record")]
    BufferTooSmall {
        /// Bytes the record needs.
        needed: usize,
        /// Bytes the buffer has.
        len: usize,
    },
    /// The opener was used after an error.
    #[error("record opener used after an error; close the connection")]
    Poisoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: Suite, rekey_after: u64) -> (RecordSealer, RecordOpener) {
        let split = (Zeroizing::new([1u8; 32]), Zeroizing::new([2u8; 32]));
        let (sealer, _) = channel(suite, true, split.clone(), &[3; 32], rekey_after);
        let (_, opener) = channel(suite, false, split, &[3; 32], rekey_after);
        (sealer, opener)
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

    #[test]
    fn counter_at_its_limit_closes_instead_of_wrapping() {
        for suite in Suite::ALL {
            let (mut sealer, mut opener) = pair(suite, MAX_RECORDS_PER_KEY);
            sealer.set_counter_for_test(REKEY_NONCE - 1);
            opener.set_counter_for_test(REKEY_NONCE - 1);
            let mut last = seal(&mut sealer, b"last");
            assert_eq!(opener.open_in_place(&mut last).expect("open"), b"last");
            let mut buf = [0u8; HEADER_LEN + TAG_LEN];
            assert_eq!(
                sealer.seal_in_place(&mut buf, 0),
                Err(RecordError::NonceExhausted)
            );
            // The opener refuses too, even for a record sealed with a wrapped counter.
            let (mut wrapped, _) = pair(suite, MAX_RECORDS_PER_KEY);
            let mut record = seal(&mut wrapped, b"");
            assert_eq!(
                opener.open_in_place(&mut record),
                Err(RecordError::NonceExhausted)
            );
        }
    }

    #[test]
    fn receiver_enforces_the_per_key_record_limit() {
        let (mut sealer, mut opener) = pair(Suite::ChaCha20Poly1305, MAX_RECORDS_PER_KEY);
        // A sender that does not update its key at the limit is cut off.
        sealer.records_this_key = MAX_RECORDS_PER_KEY - 1;
        sealer.rekey_after = u64::MAX;
        opener.records_this_key = MAX_RECORDS_PER_KEY - 1;
        let mut record = seal(&mut sealer, b"x");
        assert_eq!(
            opener.open_in_place(&mut record),
            Err(RecordError::KeyOveruse)
        );
    }

    #[test]
    fn rekey_matches_noise_definition() {
        // REKEY(k) = first 32 bytes of ENCRYPT(k, maxnonce, "", zeros): check against a second,
        // independent computation with the other ring API.
        let raw = [0x42u8; 32];
        let mut key = DirectionKey::new(Suite::ChaCha20Poly1305, Zeroizing::new(raw));
        key.rekey();
        let sealing =
            LessSafeKey::new(UnboundKey::new(&aead::CHACHA20_POLY1305, &raw).expect("key"));
        let mut expected = vec![0u8; 32];
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([
                    0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ]),
                Aad::empty(),
                &mut expected,
            )
            .expect("seal");
        let from_expected = DirectionKey::new(
            Suite::ChaCha20Poly1305,
            Zeroizing::new(expected[..32].try_into().expect("32 bytes")),
        );
        // Same key: same ciphertext for the same nonce and input.
        let mut a = *b"probe";
        let mut b = *b"probe";
        let mut tag_a = [0u8; TAG_LEN];
        let mut tag_b = [0u8; TAG_LEN];
        key.seal(7, [0; HEADER_LEN], &mut a, &mut tag_a);
        from_expected.seal(7, [0; HEADER_LEN], &mut b, &mut tag_b);
        assert_eq!(a, b);
        assert_eq!(tag_a, tag_b);
    }

    #[test]
    fn null_channel_keeps_the_layout_and_refuses_nothing_it_should_not() {
        let (mut sealer, mut opener) = danger_null_channel();
        let mut buf = [0u8; HEADER_LEN + 3 + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + 3].copy_from_slice(b"abc");
        assert_eq!(sealer.seal_in_place(&mut buf, 3), Ok(buf.len()));
        assert_eq!(&buf[HEADER_LEN..HEADER_LEN + 3], b"abc");
        assert_eq!(
            opener.open_in_place(&mut buf).map(|p| p.to_vec()),
            Ok(b"abc".to_vec())
        );
        // Framing is still checked.
        assert_eq!(
            opener.open_in_place(&mut buf[..5]),
            Err(RecordError::Truncated)
        );
    }
}
