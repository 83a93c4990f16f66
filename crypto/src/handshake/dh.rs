//! X25519 for `snow`, with the check `snow`'s own 25519 leaves out: a Diffie-Hellman whose
//! result is all zeros (the peer sent a low-order point) fails the handshake.

use snow::params::DHChoice;
use snow::resolvers::{BoxedCryptoResolver, CryptoResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The resolver every Glueberry handshake uses: our X25519; SHA-256, ChaChaPoly and the RNG from
/// `ring` (through `snow`'s ring resolver), the same `ring` that seals records.
pub(crate) fn resolver() -> BoxedCryptoResolver {
    Box::new(FallbackResolver::new(
        Box::new(ContributoryResolver),
        Box::new(RingResolver),
    ))
}

struct ContributoryResolver;

impl CryptoResolver for ContributoryResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::<ContributoryX25519>::default()),
            _ => None,
        }
    }

    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        None
    }

    fn resolve_cipher(&self, _: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

/// X25519 (RFC 7748) via `x25519-dalek`; the private key is wiped on drop.
#[derive(Default)]
pub(crate) struct ContributoryX25519 {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl ContributoryX25519 {
    fn derive_public(&mut self) {
        let secret = StaticSecret::from(*self.private);
        self.public = PublicKey::from(&secret).to_bytes();
    }
}

impl Dh for ContributoryX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        if let Some(key) = privkey.first_chunk::<32>() {
            self.private.copy_from_slice(key);
        }
        self.derive_public();
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(self.private.as_mut_slice())?;
        self.derive_public();
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.private.as_slice()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let (Some(theirs), Some(out)) = (pubkey.first_chunk::<32>(), out.first_chunk_mut::<32>())
        else {
            return Err(snow::Error::Dh);
        };
        let shared = StaticSecret::from(*self.private).diffie_hellman(&PublicKey::from(*theirs));
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        out.copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// The X25519 public keys of small order (and their non-canonical encodings) that make every
/// Diffie-Hellman result all zeros; libsodium keeps the same list.
#[cfg(test)]
pub(crate) const LOW_ORDER_POINTS: [[u8; 32]; 7] = {
    let mut p_minus_1 = [0xff; 32];
    p_minus_1[0] = 0xec;
    p_minus_1[31] = 0x7f;
    let mut p = p_minus_1;
    p[0] = 0xed;
    let mut p_plus_1 = p_minus_1;
    p_plus_1[0] = 0xee;
    let mut one = [0; 32];
    one[0] = 1;
    [
        [0; 32],
        one,
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ],
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ],
        p_minus_1,
        p,
        p_plus_1,
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_order_points_are_refused_and_real_keys_agree() {
        let mut a = ContributoryX25519::default();
        a.set(&[0x11; 32]);
        let mut b = ContributoryX25519::default();
        b.set(&[0x22; 32]);
        let mut ab = [0u8; 32];
        let mut ba = [0u8; 32];
        a.dh(b.pubkey(), &mut ab).expect("dh");
        b.dh(a.pubkey(), &mut ba).expect("dh");
        assert_eq!(ab, ba);
        for point in LOW_ORDER_POINTS {
            let mut out = [0u8; 32];
            assert!(a.dh(&point, &mut out).is_err(), "accepted {point:02x?}");
        }
        assert!(a.dh(&[1; 31], &mut [0; 32]).is_err());
    }
}
