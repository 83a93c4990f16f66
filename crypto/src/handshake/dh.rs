//! X25519 for `snow`, with the check `snow`'s own 25519 leaves out: a Diffie-Hellman whose
//! result is all zeros (the peer sent a low-order point) fails the handshake. Two costs are
//! cut from what a plain X25519 would spend per handshake: the static key's public half is
//! computed once per node, not once per handshake, and the shared secret is computed on the
//! Edwards form of the peer's point, where `curve25519-dalek` multiplies with its vector
//! backend (about 30 % faster here than the Montgomery ladder; BENCHMARKS.md, "Handshakes").

use curve25519_dalek::montgomery::MontgomeryPoint;
use snow::params::DHChoice;
use snow::resolvers::{BoxedCryptoResolver, CryptoResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// A node's Noise static key pair: the public half derived once, when the node's handshake
/// configuration is made.
#[derive(Clone)]
pub(crate) struct StaticKey {
    pub(crate) private: Zeroizing<[u8; 32]>,
    pub(crate) public: [u8; 32],
}

impl StaticKey {
    pub(crate) fn new(private: Zeroizing<[u8; 32]>) -> Self {
        let public = PublicKey::from(&StaticSecret::from(*private)).to_bytes();
        Self { private, public }
    }
}

/// The resolver every Glueberry handshake uses: our X25519 (knowing the node's static key
/// pair, so that `snow` setting it costs no scalar multiplication); SHA-256, ChaChaPoly and the
/// RNG from `ring` (through `snow`'s ring resolver), the same `ring` that seals records.
pub(crate) fn resolver(static_key: StaticKey) -> BoxedCryptoResolver {
    Box::new(FallbackResolver::new(
        Box::new(ContributoryResolver { static_key }),
        Box::new(RingResolver),
    ))
}

struct ContributoryResolver {
    static_key: StaticKey,
}

impl CryptoResolver for ContributoryResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(ContributoryX25519 {
                known: Some(self.static_key.clone()),
                ..Default::default()
            })),
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

/// X25519 (RFC 7748); the private key is wiped on drop.
#[derive(Default)]
pub(crate) struct ContributoryX25519 {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    /// The node's static key pair: `set` with its private half takes the public half from here.
    known: Option<StaticKey>,
}

impl ContributoryX25519 {
    fn derive_public(&mut self) {
        let is_static = |k: &&StaticKey| bool::from(k.private.ct_eq(&*self.private));
        if let Some(known) = self.known.as_ref().filter(is_static) {
            self.public = known.public;
            return;
        }
        let secret = StaticSecret::from(*self.private);
        self.public = PublicKey::from(&secret).to_bytes();
    }
}

/// X25519(`private`, `theirs`): the u-coordinate of the clamped scalar times the peer's point.
/// Computed on the Edwards form of the point (either sign: u(−P) = u(P)), which is the same
/// value the Montgomery ladder gives; a u that has no point on the curve (u = −1, or a point of
/// the twist, which no honest peer sends) takes the ladder, so every input gets exactly RFC
/// 7748's answer. Constant time in the private scalar; the decompression's timing depends only
/// on the peer's public key.
pub(crate) fn x25519(private: &[u8; 32], theirs: &[u8; 32]) -> [u8; 32] {
    let point = MontgomeryPoint(*theirs);
    match point.to_edwards(0) {
        Some(edwards) => edwards.mul_clamped(*private).to_montgomery().to_bytes(),
        None => point.mul_clamped(*private).to_bytes(),
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
        let shared = Zeroizing::new(x25519(&self.private, theirs));
        // All zeros: the peer's point has small order (contributes nothing). Compared in
        // constant time: the result is a secret.
        if bool::from(shared.ct_eq(&[0u8; 32])) {
            return Err(snow::Error::Dh);
        }
        out.copy_from_slice(shared.as_slice());
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

    /// The Edwards path gives the ladder's answer: for real keys, for u values that are not
    /// on the curve (the twist, which takes the ladder), and for non-canonical encodings.
    #[test]
    fn x25519_on_the_edwards_form_agrees_with_the_ladder() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            let mut bytes = [0u8; 32];
            for chunk in bytes.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            bytes
        };
        let (mut on_curve, mut twist) = (0, 0);
        for _ in 0..200 {
            let private = next();
            let theirs = next();
            let ladder = MontgomeryPoint(theirs).mul_clamped(private).to_bytes();
            assert_eq!(x25519(&private, &theirs), ladder, "u = {theirs:02x?}");
            if MontgomeryPoint(theirs).to_edwards(0).is_some() {
                on_curve += 1;
            } else {
                twist += 1;
            }
            // A real public key: always on the curve.
            let public = PublicKey::from(&StaticSecret::from(next())).to_bytes();
            let ladder = MontgomeryPoint(public).mul_clamped(private).to_bytes();
            assert_eq!(x25519(&private, &public), ladder);
        }
        // Random u values fall on the curve and on the twist about half each: both paths ran.
        assert!(
            on_curve > 50 && twist > 50,
            "{on_curve} on the curve, {twist} on the twist"
        );
        for point in LOW_ORDER_POINTS {
            let ladder = MontgomeryPoint(point).mul_clamped([0x42; 32]).to_bytes();
            assert_eq!(x25519(&[0x42; 32], &point), ladder);
        }
    }

    #[test]
    fn the_static_key_s_public_half_is_taken_not_derived_again() {
        let key = StaticKey::new(Zeroizing::new([0x33; 32]));
        let mut dh = ContributoryX25519 {
            known: Some(key.clone()),
            ..Default::default()
        };
        dh.set(&[0x33; 32]);
        assert_eq!(dh.pubkey(), &key.public[..]);
        // Another private key (a test's fixed ephemeral) is derived as usual.
        dh.set(&[0x44; 32]);
        let derived = PublicKey::from(&StaticSecret::from([0x44; 32])).to_bytes();
        assert_eq!(dh.pubkey(), &derived[..]);
    }
}
