//! Opening records that are malformed in every way, with the fuzz-only null cipher (no tag
//! check, so the fuzzer reaches the length, type, counter and key-update logic behind
//! authentication). Records are cut as a connection cuts them: by the length in each header.
#![no_main]

use glueberry_crypto::record::{HEADER_LEN, RecordHeader, danger_null_channel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (_, mut opener) = danger_null_channel();
    let mut buf = data.to_vec();
    let mut at = 0;
    while let Some(head) = buf.get(at..at + HEADER_LEN) {
        let Ok(head) = <[u8; HEADER_LEN]>::try_from(head) else {
            break;
        };
        // A bad header is refused by the opener too; cut by the claimed length, or what is left.
        let len = RecordHeader::decode(head)
            .map_or(buf.len() - at, |h| h.record_len().min(buf.len() - at));
        let failed = opener.open_in_place(&mut buf[at..at + len]).is_err();
        at += len;
        if failed {
            // Poisoned: every later record is refused, including ones that would have opened
            // (the fuzzer finds those: a well-formed record with the next counter).
            poisoned(&mut opener, &mut buf[at..]);
            break;
        }
    }
});

fn poisoned(opener: &mut glueberry_crypto::record::RecordOpener, rest: &mut [u8]) {
    let mut at = 0;
    while let Some(head) = rest.get(at..at + HEADER_LEN) {
        let Ok(head) = <[u8; HEADER_LEN]>::try_from(head) else {
            break;
        };
        let len = RecordHeader::decode(head)
            .map_or(rest.len() - at, |h| h.record_len().min(rest.len() - at));
        assert!(
            opener.open_in_place(&mut rest[at..at + len]).is_err(),
            "a record opened after a failure"
        );
        at += len;
    }
}
