//! Signed address records: where a peer says it can be reached, signed by its identity, so that
//! members of a peer set can pass each other's addresses on without trusting whoever passes
//! them (PROTOCOL.md §9).
//!
//! ```text
//! record:
//!   identity_key  [32]  the subject's Ed25519 public key (its peer id)
//!   sequence      u64   big-endian; a higher one replaces a lower one
//!   count         u8    1..=8 addresses
//!   count × address:
//!     family      u8    4 or 6
//!     ip          [4] or [16]
//!     port        u16   big-endian, never 0
//!   signature     [64]  Ed25519(identity secret, signature input)
//!
//! signature input = "glueberry/1 address record:" || network_id_len u8 || network_id
//!                   || record without its signature
//! ```
//!
//! The network id in the signature input keeps a record signed for one network from being
//! replayed in another. Decoding never allocates more than [`MAX_RECORD_ADDRESSES`] addresses,
//! whatever the bytes say.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ed25519_dalek::Signature;

use crate::{Identity, PeerId};

/// What the signature covers first (domain separation from every other Glueberry signature).
pub const ADDRESS_RECORD_DOMAIN: &[u8] = b"glueberry/1 address record:";
/// The most addresses a record carries.
pub const MAX_RECORD_ADDRESSES: usize = 8;
/// The longest encoded record: eight IPv6 addresses.
pub const MAX_ADDRESS_RECORD_LEN: usize = 32 + 8 + 1 + MAX_RECORD_ADDRESSES * 19 + 64;

const SIGNATURE_LEN: usize = 64;

/// The kind byte of a message of records on the members' stream (PROTOCOL.md §9.3).
pub const RECORDS_MESSAGE: u8 = 0x01;
/// The most records one message carries.
pub const MAX_RECORDS_PER_MESSAGE: usize = 32;
/// The longest message of records.
pub const MAX_RECORDS_MESSAGE_LEN: usize = 2 + MAX_RECORDS_PER_MESSAGE * MAX_ADDRESS_RECORD_LEN;

/// Encodes `records` (at most [`MAX_RECORDS_PER_MESSAGE`]; more are left out) as one message
/// for the members' stream: `kind 0x01 || count u8 || records`.
pub fn encode_records_message(records: &[AddressRecord]) -> Vec<u8> {
    let records = &records[..records.len().min(MAX_RECORDS_PER_MESSAGE)];
    let mut out = Vec::with_capacity(2 + records.iter().map(|r| r.encoded_len()).sum::<usize>());
    out.push(RECORDS_MESSAGE);
    out.push(records.len() as u8);
    for record in records {
        record.encode(&mut out);
    }
    out
}

/// Reads a message of records (signatures not checked). `Ok(None)` for a message of another
/// kind (a later version's: ignored); an error for a malformed one, which is dropped whole.
pub fn decode_records_message(
    message: &[u8],
) -> Result<Option<Vec<AddressRecord>>, AddressRecordError> {
    match message.first() {
        Some(&RECORDS_MESSAGE) => {}
        Some(_) => return Ok(None),
        None => return Err(AddressRecordError::Truncated),
    }
    let count = usize::from(*message.get(1).ok_or(AddressRecordError::Truncated)?);
    if count == 0 || count > MAX_RECORDS_PER_MESSAGE {
        return Err(AddressRecordError::RecordCount(count));
    }
    let mut records = Vec::with_capacity(count);
    let mut at = 2;
    for _ in 0..count {
        let (record, used) = AddressRecord::decode(&message[at..])?;
        records.push(record);
        at += used;
    }
    if at != message.len() {
        return Err(AddressRecordError::TrailingBytes);
    }
    Ok(Some(records))
}

/// A peer's signed statement of where it listens.
#[derive(Clone, PartialEq, Eq)]
pub struct AddressRecord {
    peer: PeerId,
    sequence: u64,
    addresses: Vec<SocketAddr>,
    signature: [u8; SIGNATURE_LEN],
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressRecordError {
    /// The bytes end before the record does.
    #[error("address record truncated")]
    Truncated,
    /// No address, or more than [`MAX_RECORD_ADDRESSES`].
    #[error("address record with {0} addresses (1 to 8 allowed)")]
    AddressCount(usize),
    /// An address family other than 4 or 6.
    #[error("address record with address family {0}")]
    Family(u8),
    /// Port 0, or an unspecified, multicast or broadcast address: nothing to dial.
    #[error("address record with an address that cannot be dialled")]
    Undialable,
    /// The identity key is not a valid Ed25519 key (or a weak one).
    #[error("address record with an invalid identity key")]
    InvalidKey,
    /// The signature does not verify for this network.
    #[error("address record signature does not verify")]
    BadSignature,
    /// A message of records with no record, or more than [`MAX_RECORDS_PER_MESSAGE`].
    #[error("message with {0} records (1 to 32 allowed)")]
    RecordCount(usize),
    /// Bytes after the last record of a message.
    #[error("bytes after the last record")]
    TrailingBytes,
    /// The network id is empty or longer than 64 bytes.
    #[error("network id must be 1 to 64 bytes")]
    NetworkId,
}

impl AddressRecord {
    /// Signs a record for `identity` in network `network_id`.
    pub fn sign(
        identity: &Identity,
        network_id: &str,
        sequence: u64,
        addresses: &[SocketAddr],
    ) -> Result<Self, AddressRecordError> {
        check_addresses(addresses)?;
        let mut record = Self {
            peer: identity.peer_id(),
            sequence,
            addresses: addresses.to_vec(),
            signature: [0; SIGNATURE_LEN],
        };
        let input = record.signature_input(network_id)?;
        record.signature = identity.sign(&input);
        Ok(record)
    }

    /// Reads one record from the front of `bytes` without checking its signature (that is
    /// [`AddressRecord::verify`], the expensive part, done only for a record that would be
    /// kept); returns it and the bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), AddressRecordError> {
        let mut reader = Reader { bytes, at: 0 };
        let key: [u8; 32] = reader.take_array()?;
        let peer = PeerId::from_public_key(&key).map_err(|_| AddressRecordError::InvalidKey)?;
        let sequence = u64::from_be_bytes(reader.take_array()?);
        let count = usize::from(reader.take_array::<1>()?[0]);
        if count == 0 || count > MAX_RECORD_ADDRESSES {
            return Err(AddressRecordError::AddressCount(count));
        }
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let ip = match reader.take_array::<1>()?[0] {
                4 => IpAddr::V4(Ipv4Addr::from(reader.take_array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(reader.take_array::<16>()?)),
                family => return Err(AddressRecordError::Family(family)),
            };
            let port = u16::from_be_bytes(reader.take_array()?);
            addresses.push(SocketAddr::new(ip, port));
        }
        check_addresses(&addresses)?;
        let signature = reader.take_array()?;
        Ok((
            Self {
                peer,
                sequence,
                addresses,
                signature,
            },
            reader.at,
        ))
    }

    /// Checks the signature for network `network_id`.
    pub fn verify(&self, network_id: &str) -> Result<(), AddressRecordError> {
        let input = self.signature_input(network_id)?;
        let (_, key) = PeerId::from_public_key_with_key(self.peer.public_key())
            .map_err(|_| AddressRecordError::InvalidKey)?;
        key.verify_strict(&input, &Signature::from_bytes(&self.signature))
            .map_err(|_| AddressRecordError::BadSignature)
    }

    /// Appends the encoded record (signature included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_unsigned(out);
        out.extend_from_slice(&self.signature);
    }

    /// The encoded record's length.
    pub fn encoded_len(&self) -> usize {
        let addresses: usize = self
            .addresses
            .iter()
            .map(|a| if a.is_ipv4() { 7 } else { 19 })
            .sum();
        32 + 8 + 1 + addresses + SIGNATURE_LEN
    }

    /// Whose record it is.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Its sequence number: a higher one replaces a lower one.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Where the peer says it listens, in its order of preference.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// The bytes the signature covers.
    pub fn signature_input(&self, network_id: &str) -> Result<Vec<u8>, AddressRecordError> {
        let network = network_id.as_bytes();
        if network.is_empty() || network.len() > 64 {
            return Err(AddressRecordError::NetworkId);
        }
        let mut input = Vec::with_capacity(ADDRESS_RECORD_DOMAIN.len() + 1 + network.len() + 200);
        input.extend_from_slice(ADDRESS_RECORD_DOMAIN);
        input.push(network.len() as u8);
        input.extend_from_slice(network);
        self.encode_unsigned(&mut input);
        Ok(input)
    }

    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.peer.public_key());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.push(self.addresses.len() as u8);
        for address in &self.addresses {
            match address.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&address.port().to_be_bytes());
        }
    }
}

impl std::fmt::Debug for AddressRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressRecord")
            .field("peer", &self.peer)
            .field("sequence", &self.sequence)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

fn check_addresses(addresses: &[SocketAddr]) -> Result<(), AddressRecordError> {
    if addresses.is_empty() || addresses.len() > MAX_RECORD_ADDRESSES {
        return Err(AddressRecordError::AddressCount(addresses.len()));
    }
    let dialable = |a: &SocketAddr| {
        a.port() != 0
            && !a.ip().is_unspecified()
            && !a.ip().is_multicast()
            && a.ip() != IpAddr::V4(Ipv4Addr::BROADCAST)
    };
    if addresses.iter().all(dialable) {
        Ok(())
    } else {
        Err(AddressRecordError::Undialable)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], AddressRecordError> {
        let end = self
            .at
            .checked_add(N)
            .ok_or(AddressRecordError::Truncated)?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(AddressRecordError::Truncated)?;
        self.at = end;
        let mut array = [0; N];
        array.copy_from_slice(slice);
        Ok(array)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(byte: u8) -> Identity {
        Identity::from_seed(&[byte; 32])
    }

    fn addrs() -> Vec<SocketAddr> {
        vec![
            "192.0.2.7:26656".parse().unwrap(),
            "[2001:db8::7]:26656".parse().unwrap(),
        ]
    }

    #[test]
    fn a_signed_record_decodes_and_verifies_and_its_length_is_what_it_encodes() {
        let record = AddressRecord::sign(&identity(1), "chain-1", 42, &addrs()).unwrap();
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        assert_eq!(bytes.len(), record.encoded_len());
        bytes.extend_from_slice(b"next");
        let (decoded, used) = AddressRecord::decode(&bytes).unwrap();
        assert_eq!(used, record.encoded_len());
        assert_eq!(decoded, record);
        decoded.verify("chain-1").unwrap();
    }

    #[test]
    fn a_record_is_refused_in_another_network_or_with_any_byte_changed() {
        let record = AddressRecord::sign(&identity(2), "chain-1", 7, &addrs()).unwrap();
        assert_eq!(
            record.verify("chain-2"),
            Err(AddressRecordError::BadSignature)
        );
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        // Every byte after the key (the key changes whose record it is: another key's check).
        for at in 32..bytes.len() {
            let mut changed = bytes.clone();
            changed[at] ^= 0x01;
            if let Ok((r, _)) = AddressRecord::decode(&changed) {
                assert!(r.verify("chain-1").is_err(), "byte {at}");
            }
        }
    }

    const VECTORS_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/address-record-v1.txt"
    );

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// PROTOCOL.md §9's vectors: `GLUEBERRY_BLESS=1 cargo test -p glueberry-crypto vectors`
    /// rewrites the file after a deliberate change; otherwise the bytes must not move.
    /// `crypto/tests/interop/check_vectors.py` reproduces them from PROTOCOL.md alone.
    #[test]
    fn address_record_vectors() {
        let network = "glueberry-vectors-1";
        let mut out = format!("network_id = \"{network}\"\n");
        let cases: [(u8, u64, Vec<SocketAddr>); 2] = [
            (0x55, 1, vec!["192.0.2.10:26656".parse().unwrap()]),
            (
                0x66,
                1_764_633_600_000,
                vec![
                    "[2001:db8::1]:9000".parse().unwrap(),
                    "198.51.100.3:9001".parse().unwrap(),
                ],
            ),
        ];
        let mut records = Vec::new();
        for (n, (seed, sequence, addresses)) in cases.iter().enumerate() {
            let record =
                AddressRecord::sign(&identity(*seed), network, *sequence, addresses).expect("sign");
            record.verify(network).expect("verify");
            let text: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
            out += &format!("record_{n}_identity_seed = {}\n", hex(&[*seed; 32]));
            out += &format!("record_{n}_sequence = {sequence}\n");
            out += &format!("record_{n}_addresses = {}\n", text.join(","));
            out += &format!(
                "record_{n}_signature_input = {}\n",
                hex(&record.signature_input(network).expect("input"))
            );
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            out += &format!("record_{n} = {}\n", hex(&bytes));
            records.push(record);
        }
        // The first record with one signature bit flipped: must not verify.
        let mut bad = Vec::new();
        records[0].encode(&mut bad);
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let (tampered, _) = AddressRecord::decode(&bad).expect("decodes");
        assert_eq!(
            tampered.verify(network),
            Err(AddressRecordError::BadSignature)
        );
        out += &format!("bad_signature_record = {}\n", hex(&bad));
        out += &format!(
            "records_message = {}\n",
            hex(&encode_records_message(&records))
        );
        let decoded = decode_records_message(&encode_records_message(&records)).unwrap();
        assert_eq!(decoded, Some(records));
        if std::env::var_os("GLUEBERRY_BLESS").is_some() {
            std::fs::write(VECTORS_PATH, &out).expect("write vectors");
            return;
        }
        let published = std::fs::read_to_string(VECTORS_PATH).expect("read vectors");
        assert_eq!(out, published, "record bytes changed; see {VECTORS_PATH}");
    }

    #[test]
    fn a_message_of_records_refuses_bad_counts_and_trailing_bytes_and_ignores_other_kinds() {
        let record = AddressRecord::sign(&identity(4), "n", 1, &addrs()).unwrap();
        let message = encode_records_message(std::slice::from_ref(&record));
        let mut trailing = message.clone();
        trailing.push(0);
        assert_eq!(
            decode_records_message(&trailing).unwrap_err(),
            AddressRecordError::TrailingBytes
        );
        let mut zero = message.clone();
        zero[1] = 0;
        assert_eq!(
            decode_records_message(&zero).unwrap_err(),
            AddressRecordError::RecordCount(0)
        );
        let mut short = message.clone();
        short[1] = 2;
        assert_eq!(
            decode_records_message(&short).unwrap_err(),
            AddressRecordError::Truncated
        );
        assert_eq!(decode_records_message(&[0x7f, 1, 2]).unwrap(), None);
        let many = vec![record; 40];
        let capped = decode_records_message(&encode_records_message(&many)).unwrap();
        assert_eq!(capped.map(|r| r.len()), Some(MAX_RECORDS_PER_MESSAGE));
    }

    #[test]
    fn malformed_records_get_typed_errors_and_no_allocation_from_their_count() {
        let record = AddressRecord::sign(&identity(3), "n", 1, &addrs()[..1]).unwrap();
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        for len in 0..bytes.len() {
            assert_eq!(
                AddressRecord::decode(&bytes[..len]).unwrap_err(),
                AddressRecordError::Truncated
            );
        }
        let mut many = bytes.clone();
        many[40] = 255;
        assert_eq!(
            AddressRecord::decode(&many).unwrap_err(),
            AddressRecordError::AddressCount(255)
        );
        let mut family = bytes.clone();
        family[41] = 5;
        assert_eq!(
            AddressRecord::decode(&family).unwrap_err(),
            AddressRecordError::Family(5)
        );
        let unspecified: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert_eq!(
            AddressRecord::sign(&identity(3), "n", 1, &[unspecified]).unwrap_err(),
            AddressRecordError::Undialable
        );
        let port0: SocketAddr = "192.0.2.1:0".parse().unwrap();
        assert_eq!(
            AddressRecord::sign(&identity(3), "n", 1, &[port0]).unwrap_err(),
            AddressRecordError::Undialable
        );
        assert_eq!(
            AddressRecord::sign(&identity(3), "n", 1, &[]).unwrap_err(),
            AddressRecordError::AddressCount(0)
        );
    }
}
