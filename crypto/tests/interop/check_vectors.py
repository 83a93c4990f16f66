#!/usr/bin/env python3
"""An independent implementation of the Glueberry 1.0 handshake and record layer, written from
PROTOCOL.md and the Noise specification (revision 34) alone, with the `cryptography` package.

It recomputes every message, the handshake hash and the records of the published test vectors
from their fixed inputs and fails loudly on the first byte that differs. It shares no code with
the Rust implementation: if PROTOCOL.md is wrong or incomplete, this fails.

It also re-encodes, from the frame table of PROTOCOL.md §5, every frame of the published
exchange after the handshake (SETTINGS, OPEN, CREDIT, DATA whole and fragmented, PING, PONG,
REJECT, CLOSE) and checks the fragments add up as §5.3 requires.

And it builds the signed address records of PROTOCOL.md §9 (encoding, signature input, the
message that carries them) from their seeds, sequences and addresses, and checks that a record
with a flipped signature bit does not verify.

Usage: check_vectors.py crypto/tests/vectors/handshake-v1.txt [transport/tests/vectors/exchange-v1.txt
       [crypto/tests/vectors/address-record-v1.txt]]
"""

import hashlib
import hmac
import ipaddress
import struct
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

RAW = serialization.Encoding.Raw
RAW_PUB = serialization.PublicFormat.Raw


def sha256(data):
    return hashlib.sha256(data).digest()


def hmac_sha256(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def noise_hkdf(ck, ikm):
    """Noise section 4.3 HKDF with two outputs."""
    temp = hmac_sha256(ck, ikm)
    out1 = hmac_sha256(temp, b"\x01")
    out2 = hmac_sha256(temp, out1 + b"\x02")
    return out1, out2


def x25519(private, public):
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public))
    if shared == bytes(32):
        raise ValueError("low-order point")
    return shared


def x25519_public(private):
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(RAW, RAW_PUB)


class SymmetricState:
    """Noise section 5.2, with ChaChaPoly (nonce: 4 zero bytes || n little-endian)."""

    def __init__(self, protocol_name, prologue):
        name = protocol_name.encode()
        self.h = name.ljust(32, b"\0") if len(name) <= 32 else sha256(name)
        self.ck = self.h
        self.k = None
        self.n = 0
        self.mix_hash(prologue)

    def mix_hash(self, data):
        self.h = sha256(self.h + data)

    def mix_key(self, ikm):
        self.ck, temp_k = noise_hkdf(self.ck, ikm)
        self.k, self.n = temp_k, 0

    def encrypt_and_hash(self, plaintext):
        if self.k is None:
            ciphertext = plaintext
        else:
            nonce = bytes(4) + struct.pack("<Q", self.n)
            ciphertext = ChaCha20Poly1305(self.k).encrypt(nonce, plaintext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext):
        nonce = bytes(4) + struct.pack("<Q", self.n)
        plaintext = ChaCha20Poly1305(self.k).decrypt(nonce, ciphertext, self.h)
        self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self):
        return noise_hkdf(self.ck, b"")


SIGNATURE_CONTEXT = b"glueberry/1 noise static key:"
RECORD_KEY_INFO = b"glueberry/1 record key"


def frame(kind, body):
    return bytes([kind]) + struct.pack(">H", len(body)) + body


def identity_proof(seed, noise_static_public):
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(RAW, RAW_PUB)
    return public + key.sign(SIGNATURE_CONTEXT + noise_static_public)


def hkdf_rfc5869(salt, ikm, info, length=32):
    prk = hmac_sha256(salt, ikm)
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac_sha256(prk, block + info + bytes([counter]))
        okm += block
        counter += 1
    return okm[:length]


class RecordSealer:
    def __init__(self, suite, key, rekey_after):
        self.suite, self.key, self.rekey_after = suite, key, rekey_after
        self.n = 0
        self.records_this_key = 0

    def aead(self, key):
        return ChaCha20Poly1305(key) if self.suite == 0x01 else AESGCM(key)

    def seal(self, plaintext):
        key_update = self.records_this_key + 1 >= self.rekey_after
        length = len(plaintext) + 16
        header = bytes([0x11 if key_update else 0x10]) + length.to_bytes(3, "big")
        nonce = bytes(4) + struct.pack(">Q", self.n)
        record = header + self.aead(self.key).encrypt(nonce, plaintext, header)
        self.n += 1
        self.records_this_key += 1
        if key_update:
            rekey_nonce = bytes(4) + b"\xff" * 8
            self.key = self.aead(self.key).encrypt(rekey_nonce, bytes(32), b"")[:32]
            self.records_this_key = 0
        return record


def load(path):
    vectors = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(" = ")
            vectors[key] = value
    return vectors


def quoted(value):
    assert value.startswith('"') and value.endswith('"'), value
    return value[1:-1].encode()


def check(name, expected_hex, actual):
    if actual.hex() != expected_hex:
        sys.exit(f"MISMATCH {name}\n  vector: {expected_hex}\n  python: {actual.hex()}")
    print(f"ok {name} ({len(actual)} bytes)")


def main(path, exchange_path=None):
    v = load(path)
    network = v["network_id"].encode()
    i_seed = bytes.fromhex(v["initiator_identity_seed"])
    r_seed = bytes.fromhex(v["responder_identity_seed"])
    i_s = bytes.fromhex(v["initiator_noise_static_private"])
    r_s = bytes.fromhex(v["responder_noise_static_private"])
    i_e = bytes.fromhex(v["initiator_noise_ephemeral_private"])
    r_e = bytes.fromhex(v["responder_noise_ephemeral_private"])
    i_hello, r_hello = quoted(v["initiator_hello"]), quoted(v["responder_hello"])
    i_suites, r_suites = [0x01, 0x02], [0x02, 0x01]
    i_caps, r_caps = 0x03, 0x01

    # HelloRequest: preamble (= prologue) || e.
    preamble = b"GLBY" + bytes([1, 0, len(network)]) + network
    i_state = SymmetricState(v["protocol"], preamble)
    r_state = SymmetricState(v["protocol"], preamble)
    i_e_pub = x25519_public(i_e)
    i_state.mix_hash(i_e_pub)
    i_state.encrypt_and_hash(b"")
    request = frame(0x01, preamble + i_e_pub)
    check("hello_request", v["hello_request"], request)

    # HelloResponse, written by the responder: e, ee, s, es, payload.
    r_state.mix_hash(i_e_pub)
    r_state.encrypt_and_hash(b"")
    r_e_pub, r_s_pub = x25519_public(r_e), x25519_public(r_s)
    body = r_e_pub
    r_state.mix_hash(r_e_pub)
    r_state.mix_key(x25519(r_e, i_e_pub))
    body += r_state.encrypt_and_hash(r_s_pub)
    r_state.mix_key(x25519(r_s, i_e_pub))
    payload = (identity_proof(r_seed, r_s_pub) + bytes([0]) + struct.pack(">I", r_caps)
               + bytes([len(r_suites)]) + bytes(r_suites)
               + struct.pack(">H", len(r_hello)) + r_hello)
    body += r_state.encrypt_and_hash(payload)
    response = frame(0x02, body)
    check("hello_response", v["hello_response"], response)

    # The initiator reads it back (checks our reading of the layout).
    i_state.mix_hash(body[:32])
    i_state.mix_key(x25519(i_e, body[:32]))
    seen_static = i_state.decrypt_and_hash(body[32:80])
    i_state.mix_key(x25519(i_e, seen_static))
    seen = i_state.decrypt_and_hash(body[80:])
    assert seen == payload and seen_static == r_s_pub
    suite = next(s for s in i_suites if s in seen[102:102 + seen[101]])

    # HelloFinalize: s, se, payload.
    i_s_pub = x25519_public(i_s)
    body = i_state.encrypt_and_hash(i_s_pub)
    i_state.mix_key(x25519(i_s, r_e_pub))
    payload = (identity_proof(i_seed, i_s_pub) + struct.pack(">I", i_caps) + bytes([suite])
               + struct.pack(">H", len(i_hello)) + i_hello)
    body += i_state.encrypt_and_hash(payload)
    finalize = frame(0x03, body)
    check("hello_finalize", v["hello_finalize"], finalize)
    check("handshake_hash", v["handshake_hash"], i_state.h)
    check("suite", v["suite"], bytes([suite]))
    check("capabilities", v["capabilities"], struct.pack(">I", i_caps & r_caps))

    # Records: keys from Split, HKDF with the handshake hash as salt.
    k1, k2 = i_state.split()
    info = RECORD_KEY_INFO + bytes([suite])
    rekey_after = int(v["initiator_rekey_after_records"])
    i_sealer = RecordSealer(suite, hkdf_rfc5869(i_state.h, k1, info), rekey_after)
    r_sealer = RecordSealer(suite, hkdf_rfc5869(i_state.h, k2, info), 1 << 20)
    n = 0
    while f"initiator_record_{n}" in v:
        plaintext = quoted(v[f"initiator_record_{n}_plaintext"])
        check(f"initiator_record_{n}", v[f"initiator_record_{n}"], i_sealer.seal(plaintext))
        n += 1
    assert n >= 3, "vectors should cover a key update"
    check("responder_record_0", v["responder_record_0"],
          r_sealer.seal(quoted(v["responder_record_0_plaintext"])))

    # The exchange after the handshake: each frame sealed by its sender, continuing the
    # counters and keys above (the initiator updates its key every 2 records).
    if exchange_path:
        x = load(exchange_path)
        n = 0
        while f"frame_{n:02}" in x:
            sealer = i_sealer if x[f"frame_{n:02}"].startswith("initiator ") else r_sealer
            plaintext = bytes.fromhex(x[f"frame_{n:02}_bytes"])
            check(f"exchange_record_{n:02}", v[f"exchange_record_{n:02}"], sealer.seal(plaintext))
            n += 1
        assert n >= 10
    print("all vectors reproduced from PROTOCOL.md")


FRAME_TYPES = {"DATA": 0x01, "CREDIT": 0x02, "SETTINGS": 0x03, "OPEN": 0x04, "REJECT": 0x05,
               "PING": 0x06, "PONG": 0x07, "CLOSE": 0x08}
FIRST, LAST = 0x01, 0x02


def encode_frame(kind, f):
    """One frame, as the table of PROTOCOL.md §5 lays it out (big-endian integers)."""
    out = bytes([FRAME_TYPES[kind]])
    if kind == "SETTINGS":
        return out + struct.pack(">IHII", int(f["max_message_size"]), int(f["max_streams"]),
                                 int(f["initial_window"]), int(f["connection_window"]))
    if kind == "OPEN":
        name = bytes.fromhex(f["name"])
        assert 1 <= len(name) <= 64 and name != b"handshake"
        return out + struct.pack(">HB", int(f["stream"]), len(name)) + name
    if kind == "CREDIT":
        return out + struct.pack(">HI", int(f["stream"]), int(f["increment"]))
    if kind == "REJECT":
        return out + struct.pack(">H", int(f["stream"]))
    if kind in ("PING", "PONG"):
        return out + struct.pack(">Q", int(f["opaque"]))
    if kind == "CLOSE":
        return out + struct.pack(">H", int(f["code"]))
    if kind == "DATA":
        flags, payload = int(f["flags"]), bytes.fromhex(f["payload"])
        out += struct.pack(">HBH", int(f["stream"]), flags, len(payload))
        if flags == FIRST:  # the total only for FIRST without LAST
            out += struct.pack(">I", int(f["total"]))
        else:
            assert f["total"] == "-"
        return out + payload
    raise ValueError(kind)


def check_exchange(path):
    v = load(path)
    n = 0
    partial = {}  # (sender, stream) -> (total, bytes so far)
    while f"frame_{n:02}" in v:
        sender, kind, *fields = v[f"frame_{n:02}"].split(" ")
        f = dict(field.split("=", 1) for field in fields)
        check(f"frame_{n:02} {sender} {kind}", v[f"frame_{n:02}_bytes"], encode_frame(kind, f))
        if kind == "DATA":
            key, flags = (sender, f["stream"]), int(f["flags"])
            payload = bytes.fromhex(f["payload"])
            if flags == FIRST:
                partial[key] = (int(f["total"]), payload)
            elif flags in (0, LAST):
                total, got = partial[key]
                got += payload
                assert len(got) <= total, "fragments overrun the total"
                if flags == LAST:
                    assert len(got) == total, "LAST leaves the message short"
                    del partial[key]
                else:
                    partial[key] = (total, got)
        n += 1
    assert n >= 10 and not partial, "the exchange ends every message it begins"
    print(f"all {n} exchange frames re-encoded from PROTOCOL.md")


ADDRESS_RECORD_DOMAIN = b"glueberry/1 address record:"


def encode_address(text):
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        return bytes([6]) + ipaddress.IPv6Address(host[1:-1]).packed + struct.pack(">H", int(port))
    return bytes([4]) + ipaddress.IPv4Address(host).packed + struct.pack(">H", int(port))


def check_address_records(path):
    v = load(path)
    network = quoted(v["network_id"])
    records = []
    n = 0
    while f"record_{n}" in v:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v[f"record_{n}_identity_seed"]))
        public = key.public_key().public_bytes(RAW, RAW_PUB)
        addresses = v[f"record_{n}_addresses"].split(",")
        unsigned = (public + struct.pack(">Q", int(v[f"record_{n}_sequence"]))
                    + bytes([len(addresses)]) + b"".join(encode_address(a) for a in addresses))
        signature_input = ADDRESS_RECORD_DOMAIN + bytes([len(network)]) + network + unsigned
        check(f"record_{n}_signature_input", v[f"record_{n}_signature_input"], signature_input)
        record = unsigned + key.sign(signature_input)
        check(f"record_{n}", v[f"record_{n}"], record)
        records.append(record)
        n += 1
    assert n >= 2
    check("records_message", v["records_message"], bytes([0x01, len(records)]) + b"".join(records))
    bad = bytes.fromhex(v["bad_signature_record"])
    public, rest = bad[:32], bad[32:]
    count = rest[8]
    at = 9
    for _ in range(count):
        at += 1 + (4 if rest[at] == 4 else 16) + 2
    signed = ADDRESS_RECORD_DOMAIN + bytes([len(network)]) + network + bad[:32 + at]
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(rest[at:], signed)
        sys.exit("MISMATCH bad_signature_record: it verifies")
    except InvalidSignature:
        print("ok bad_signature_record (refused)")
    print(f"all {n} address records reproduced from PROTOCOL.md")


if __name__ == "__main__":
    exchange = sys.argv[2] if len(sys.argv) > 2 else None
    main(sys.argv[1], exchange)
    if exchange:
        check_exchange(exchange)
    if len(sys.argv) > 3:
        check_address_records(sys.argv[3])
