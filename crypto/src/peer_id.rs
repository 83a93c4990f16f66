//! `PeerId`: who a node is, derived from its Ed25519 identity key.

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};
use ed25519_dalek::VerifyingKey;

/// The human-readable prefix of a peer id's text form.
pub const PEER_ID_HRP: &str = "gbp";

/// Length of a peer id's text form: the prefix, the `1` separator, 52 data and 6 checksum
/// characters.
pub const PEER_ID_TEXT_LEN: usize = PEER_ID_HRP.len() + 1 + 52 + 6;

const HRP: Hrp = Hrp::parse_unchecked(PEER_ID_HRP);

/// A node's identity on the network: its Ed25519 public key, checked to be a valid, non-weak
/// point.
///
/// The text form is bech32m (BIP-350) with the prefix `gbp`, e.g.
/// `gbp1…` (63 characters, lowercase): case-insensitive on input, checksummed so a mistyped
/// character is caught, and free of look-alike characters. `Display` and `FromStr` round-trip.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The peer id of an Ed25519 public key given as 32 bytes.
    ///
    /// Rejects encodings that are not a curve point and the small-order ("weak") keys, for which
    /// a signature proves nothing about who made it.
    pub fn from_public_key(bytes: &[u8; 32]) -> Result<Self, PeerIdError> {
        Self::from_public_key_with_key(bytes).map(|(peer_id, _)| peer_id)
    }

    /// [`PeerId::from_public_key`] and the decompressed key it checked, to verify with (a
    /// handshake decompresses the peer's key once, not twice).
    pub(crate) fn from_public_key_with_key(
        bytes: &[u8; 32],
    ) -> Result<(Self, VerifyingKey), PeerIdError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| PeerIdError::InvalidKey)?;
        if key.is_weak() {
            return Err(PeerIdError::WeakKey);
        }
        Ok((Self(*bytes), key))
    }

    /// The Ed25519 public key this peer id stands for.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        bech32::encode_lower_to_fmt::<Bech32m, _>(f, HRP, &self.0).map_err(|_| fmt::Error)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Checked before decoding so that no work or allocation depends on a long input.
        if s.len() != PEER_ID_TEXT_LEN {
            return Err(PeerIdError::Length { len: s.len() });
        }
        let checked = CheckedHrpstring::new::<Bech32m>(s).map_err(|_| PeerIdError::Encoding)?;
        if checked.hrp() != HRP {
            return Err(PeerIdError::Prefix);
        }
        let mut key = [0u8; 32];
        let mut len = 0;
        for byte in checked.byte_iter() {
            let slot = key.get_mut(len).ok_or(PeerIdError::Encoding)?;
            *slot = byte;
            len += 1;
        }
        if len != key.len() {
            return Err(PeerIdError::Encoding);
        }
        Self::from_public_key(&key)
    }
}

/// Why a peer id could not be made or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerIdError {
    /// The text has the wrong length.
    #[error("a peer id is {PEER_ID_TEXT_LEN} characters long (`gbp1…`), this text has {len}")]
    Length {
        /// Length of the text that was given.
        len: usize,
    },
    /// The text does not start with `gbp1`.
    #[error("a peer id starts with `gbp1`")]
    Prefix,
    /// The text is not valid bech32m (a mistyped character, mixed case, a bad checksum).
    #[error("not a valid peer id: bad character or checksum")]
    Encoding,
    /// The bytes are not an Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// The key is one of the small-order Ed25519 points, which cannot identify anyone.
    #[error("weak (small-order) Ed25519 public key")]
    WeakKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn text_form_round_trips_and_is_lowercase() {
        let id = Identity::generate().expect("rng").peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), PEER_ID_TEXT_LEN);
        assert!(text.starts_with("gbp1"));
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<PeerId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<PeerId>(), Ok(id));
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        let id = Identity::from_seed(&[7; 32]).peer_id().to_string();
        assert_eq!("".parse::<PeerId>(), Err(PeerIdError::Length { len: 0 }));
        assert_eq!(
            "gbp1".parse::<PeerId>(),
            Err(PeerIdError::Length { len: 4 })
        );
        // One character changed: the checksum catches it.
        let mut typo = id.clone().into_bytes();
        typo[10] = if typo[10] == b'q' { b'p' } else { b'q' };
        let typo = String::from_utf8(typo).expect("ascii");
        assert_eq!(typo.parse::<PeerId>(), Err(PeerIdError::Encoding));
        // Another prefix with a valid checksum.
        let other =
            bech32::encode_lower::<Bech32m>(Hrp::parse_unchecked("xyz"), &[1; 32]).expect("encode");
        assert_eq!(other.len(), PEER_ID_TEXT_LEN);
        assert_eq!(other.parse::<PeerId>(), Err(PeerIdError::Prefix));
        // Mixed case is not bech32.
        let mut mixed = id.into_bytes();
        mixed[5] = mixed[5].to_ascii_uppercase();
        if mixed[5].is_ascii_uppercase() {
            let mixed = String::from_utf8(mixed).expect("ascii");
            assert_eq!(mixed.parse::<PeerId>(), Err(PeerIdError::Encoding));
        }
        // Multi-byte UTF-8 of the right byte length.
        let unicode = "é".repeat(PEER_ID_TEXT_LEN / 2) + "a";
        assert!(unicode.parse::<PeerId>().is_err());
    }

    #[test]
    fn rejects_weak_keys_in_text_form() {
        // The identity point (small order) encoded with a valid checksum.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let text = bech32::encode_lower::<Bech32m>(HRP, &identity_point).expect("encode");
        assert_eq!(text.parse::<PeerId>(), Err(PeerIdError::WeakKey));
    }
}
