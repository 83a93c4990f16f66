//! Peer id text parsing: never panics, and what parses prints back the same (lower case).
#![no_main]

use glueberry_crypto::PeerId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<PeerId>() {
        assert_eq!(id.to_string(), text.to_ascii_lowercase());
        assert_eq!(id.to_string().parse::<PeerId>().ok(), Some(id));
    }
});
