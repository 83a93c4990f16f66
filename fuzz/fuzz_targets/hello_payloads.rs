//! The handshake payload decoders that sit behind Noise (a fuzzer cannot forge its way through
//! the handshake to reach them): HelloRequest's cleartext head, HelloResponse's and
//! HelloFinalize's encrypted payloads. Never panics; what decodes re-encodes to the same bytes.
#![no_main]

use glueberry_crypto::handshake::{PayloadKind, decode_payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let kind = match which % 3 {
        0 => PayloadKind::Preamble,
        1 => PayloadKind::Response,
        _ => PayloadKind::Finalize,
    };
    if let Ok(same) = decode_payload(kind, bytes) {
        assert!(same, "{kind:?} decoded but did not re-encode to the same bytes");
    }
});
