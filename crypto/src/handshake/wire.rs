//! Byte layouts of the handshake messages and of the payloads inside them (see `PROTOCOL.md`).

use super::HandshakeError;

/// Handshake message kind: HelloRequest (Noise message 1).
pub(crate) const KIND_REQUEST: u8 = 0x01;
/// Handshake message kind: HelloResponse (Noise message 2).
pub(crate) const KIND_RESPONSE: u8 = 0x02;
/// Handshake message kind: HelloFinalize (Noise message 3).
pub(crate) const KIND_FINALIZE: u8 = 0x03;
/// Handshake message kind: HelloReject (cleartext refusal).
pub(crate) const KIND_REJECT: u8 = 0x04;

/// `kind (1) || body length (2, big-endian)`.
pub(crate) const FRAME_HEADER_LEN: usize = 3;
/// The longest handshake message body accepted or sent.
pub const MAX_HANDSHAKE_BODY_LEN: usize = 8192;
/// The protocol magic that starts every HelloRequest and HelloReject body.
pub const MAGIC: [u8; 4] = *b"GLBY";
/// The longest network id (chain id).
pub const MAX_NETWORK_ID_LEN: usize = 64;
/// The most application hello bytes that may ride in HelloResponse or HelloFinalize.
pub const MAX_HELLO_PAYLOAD_LEN: usize = 4096;
/// The most suites a HelloResponse may offer.
pub(crate) const MAX_OFFERED_SUITES: usize = 8;
/// Domain separation for the identity signature over the Noise static key.
pub(crate) const SIGNATURE_CONTEXT: &[u8] = b"glueberry/1 noise static key:";

/// Length of a Noise public key.
pub(crate) const DH_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub(crate) const SIGNATURE_LEN: usize = 64;

/// Why a responder refused a handshake, as carried in HelloReject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The protocol major versions differ.
    VersionMismatch,
    /// The network ids differ.
    NetworkMismatch,
    /// The HelloFinalize failed to authenticate or verify.
    HandshakeFailed,
    /// The responder does not admit the identity the HelloFinalize claims (it admits only the
    /// members of its peer sets).
    NotAdmitted,
}

impl RejectReason {
    pub(crate) fn wire_id(self) -> u8 {
        match self {
            RejectReason::VersionMismatch => 0x01,
            RejectReason::NetworkMismatch => 0x02,
            RejectReason::HandshakeFailed => 0x03,
            RejectReason::NotAdmitted => 0x04,
        }
    }

    fn from_wire_id(id: u8) -> Option<Self> {
        match id {
            0x01 => Some(RejectReason::VersionMismatch),
            0x02 => Some(RejectReason::NetworkMismatch),
            0x03 => Some(RejectReason::HandshakeFailed),
            0x04 => Some(RejectReason::NotAdmitted),
            _ => None,
        }
    }
}

/// The cleartext head of a HelloRequest (and of a HelloReject): magic, version, network id.
/// In a HelloRequest these exact bytes are the Noise prologue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Preamble<'a> {
    pub major: u8,
    pub minor: u8,
    pub network_id: &'a [u8],
}

impl<'a> Preamble<'a> {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(self.major);
        out.push(self.minor);
        out.push(self.network_id.len() as u8);
        out.extend_from_slice(self.network_id);
    }

    pub(crate) fn decode(reader: &mut Reader<'a>) -> Result<Self, HandshakeError> {
        if reader.array::<4>()? != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let major = reader.u8()?;
        let minor = reader.u8()?;
        let len = reader.u8()? as usize;
        if len == 0 || len > MAX_NETWORK_ID_LEN {
            return Err(HandshakeError::Malformed("network id length"));
        }
        let network_id = reader.bytes(len)?;
        Ok(Self {
            major,
            minor,
            network_id,
        })
    }
}

/// The identity proof inside HelloResponse and HelloFinalize.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdentityProof<'a> {
    pub identity_key: &'a [u8; 32],
    pub signature: &'a [u8; SIGNATURE_LEN],
}

/// The encrypted payload of HelloResponse.
#[derive(Debug)]
pub(crate) struct ResponsePayload<'a> {
    pub proof: IdentityProof<'a>,
    pub minor: u8,
    pub capabilities: u32,
    pub suites: &'a [u8],
    pub hello: &'a [u8],
}

impl<'a> ResponsePayload<'a> {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.proof.identity_key);
        out.extend_from_slice(self.proof.signature);
        out.push(self.minor);
        out.extend_from_slice(&self.capabilities.to_be_bytes());
        out.push(self.suites.len() as u8);
        out.extend_from_slice(self.suites);
        out.extend_from_slice(&(self.hello.len() as u16).to_be_bytes());
        out.extend_from_slice(self.hello);
    }

    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, HandshakeError> {
        let mut r = Reader::new(bytes);
        let proof = IdentityProof::decode(&mut r)?;
        let minor = r.u8()?;
        let capabilities = r.u32()?;
        let count = r.u8()? as usize;
        if count == 0 || count > MAX_OFFERED_SUITES {
            return Err(HandshakeError::Malformed("suite count"));
        }
        let suites = r.bytes(count)?;
        let hello = decode_hello(&mut r)?;
        r.finish()?;
        Ok(Self {
            proof,
            minor,
            capabilities,
            suites,
            hello,
        })
    }
}

/// The encrypted payload of HelloFinalize.
#[derive(Debug)]
pub(crate) struct FinalizePayload<'a> {
    pub proof: IdentityProof<'a>,
    pub capabilities: u32,
    pub suite: u8,
    pub hello: &'a [u8],
}

impl<'a> FinalizePayload<'a> {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.proof.identity_key);
        out.extend_from_slice(self.proof.signature);
        out.extend_from_slice(&self.capabilities.to_be_bytes());
        out.push(self.suite);
        out.extend_from_slice(&(self.hello.len() as u16).to_be_bytes());
        out.extend_from_slice(self.hello);
    }

    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, HandshakeError> {
        let mut r = Reader::new(bytes);
        let proof = IdentityProof::decode(&mut r)?;
        let capabilities = r.u32()?;
        let suite = r.u8()?;
        let hello = decode_hello(&mut r)?;
        r.finish()?;
        Ok(Self {
            proof,
            capabilities,
            suite,
            hello,
        })
    }
}

impl<'a> IdentityProof<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, HandshakeError> {
        Ok(Self {
            identity_key: r.array_ref::<32>()?,
            signature: r.array_ref::<SIGNATURE_LEN>()?,
        })
    }
}

fn decode_hello<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], HandshakeError> {
    let len = r.u16()? as usize;
    if len > MAX_HELLO_PAYLOAD_LEN {
        return Err(HandshakeError::HelloPayloadTooLarge { len });
    }
    r.bytes(len)
}

/// A decoded HelloReject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Why the responder refused.
    pub reason: RejectReason,
    /// The responder's protocol major version.
    pub major: u8,
    /// The responder's protocol minor version.
    pub minor: u8,
    /// The responder's network id, with any byte that is not printable ASCII escaped.
    pub network_id: String,
}

pub(crate) fn encode_reject(preamble: &Preamble<'_>, reason: RejectReason, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[KIND_REJECT, 0, 0]);
    preamble.encode(out);
    out.push(reason.wire_id());
    let body_len = (out.len() - start - FRAME_HEADER_LEN) as u16;
    out[start + 1..start + 3].copy_from_slice(&body_len.to_be_bytes());
}

/// Decodes the body of a HelloReject (everything after its 3-byte frame header).
pub fn decode_reject(body: &[u8]) -> Result<Reject, HandshakeError> {
    let mut r = Reader::new(body);
    let preamble = Preamble::decode(&mut r)?;
    let reason =
        RejectReason::from_wire_id(r.u8()?).ok_or(HandshakeError::Malformed("reject reason"))?;
    r.finish()?;
    Ok(Reject {
        reason,
        major: preamble.major,
        minor: preamble.minor,
        network_id: sanitize(preamble.network_id),
    })
}

/// A peer-supplied identifier made safe to print and log.
pub(crate) fn sanitize(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// A bounds-checked cursor over a message: every read fails with `Malformed` instead of
/// panicking, and nothing is allocated.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<&'a [u8], HandshakeError> {
        if self.bytes.len() < len {
            return Err(HandshakeError::Malformed("truncated"));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array_ref<const N: usize>(&mut self) -> Result<&'a [u8; N], HandshakeError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(HandshakeError::Malformed("truncated"))?;
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HandshakeError> {
        self.array_ref::<N>().copied()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, HandshakeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, HandshakeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, HandshakeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn consumed_from(&self, start: &'a [u8]) -> usize {
        start.len() - self.bytes.len()
    }

    pub(crate) fn finish(&self) -> Result<(), HandshakeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(HandshakeError::Malformed("trailing bytes"))
        }
    }
}

/// Which payload [`decode_payload`] reads.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// The cleartext head of a HelloRequest or HelloReject.
    Preamble,
    /// The encrypted payload of HelloResponse.
    Response,
    /// The encrypted payload of HelloFinalize.
    Finalize,
}

/// Decodes one of the payloads that sit behind Noise (which a fuzzer cannot forge its way
/// through) and re-encodes what decoded; returns whether the bytes came back the same. For the
/// `hello_payloads` fuzz target and the tests; not a stable API.
#[doc(hidden)]
pub fn decode_payload(kind: PayloadKind, bytes: &[u8]) -> Result<bool, HandshakeError> {
    let mut out = Vec::new();
    match kind {
        PayloadKind::Preamble => {
            let mut r = Reader::new(bytes);
            let preamble = Preamble::decode(&mut r)?;
            let used = r.consumed_from(bytes);
            preamble.encode(&mut out);
            Ok(out == bytes[..used])
        }
        PayloadKind::Response => {
            ResponsePayload::decode(bytes)?.encode(&mut out);
            Ok(out == bytes)
        }
        PayloadKind::Finalize => {
            FinalizePayload::decode(bytes)?.encode(&mut out);
            Ok(out == bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(suites: &[u8], hello: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ResponsePayload {
            proof: IdentityProof {
                identity_key: &[7; 32],
                signature: &[9; SIGNATURE_LEN],
            },
            minor: 0,
            capabilities: 0,
            suites,
            hello,
        }
        .encode(&mut out);
        out
    }

    fn finalize(hello: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FinalizePayload {
            proof: IdentityProof {
                identity_key: &[7; 32],
                signature: &[9; SIGNATURE_LEN],
            },
            capabilities: 0,
            suite: 1,
            hello,
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn payloads_round_trip_and_every_truncation_or_extension_is_refused() {
        for (kind, bytes) in [
            (PayloadKind::Response, response(&[1, 2], b"app hello")),
            (PayloadKind::Finalize, finalize(b"app hello")),
        ] {
            assert_eq!(decode_payload(kind, &bytes), Ok(true));
            for cut in 0..bytes.len() {
                assert!(
                    decode_payload(kind, &bytes[..cut]).is_err(),
                    "{kind:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                decode_payload(kind, &longer),
                Err(HandshakeError::Malformed("trailing bytes"))
            );
        }
    }

    #[test]
    fn payload_limits_are_checked_before_reading() {
        assert_eq!(
            decode_payload(PayloadKind::Response, &response(&[], b"")),
            Err(HandshakeError::Malformed("suite count"))
        );
        assert_eq!(
            decode_payload(PayloadKind::Response, &response(&[1; 9], b"")),
            Err(HandshakeError::Malformed("suite count"))
        );
        // A hello length over the limit is refused from the length alone (the bytes are absent).
        let mut bytes = finalize(b"");
        let at = bytes.len() - 2;
        bytes[at..].copy_from_slice(&((MAX_HELLO_PAYLOAD_LEN + 1) as u16).to_be_bytes());
        assert_eq!(
            decode_payload(PayloadKind::Finalize, &bytes),
            Err(HandshakeError::HelloPayloadTooLarge {
                len: MAX_HELLO_PAYLOAD_LEN + 1
            })
        );
        let mut preamble = MAGIC.to_vec();
        preamble.extend_from_slice(&[1, 0, 0]);
        assert_eq!(
            decode_payload(PayloadKind::Preamble, &preamble),
            Err(HandshakeError::Malformed("network id length"))
        );
        preamble[6] = 3;
        preamble.extend_from_slice(b"abc");
        assert_eq!(decode_payload(PayloadKind::Preamble, &preamble), Ok(true));
        preamble[0] = b'X';
        assert_eq!(
            decode_payload(PayloadKind::Preamble, &preamble),
            Err(HandshakeError::BadMagic)
        );
    }
}
