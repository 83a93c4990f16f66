//! Frame and record-header decoding: never panics, never reads past its input, and what decodes
//! encodes back to the same frame.
#![no_main]

use glueberry_crypto::record::{HEADER_LEN, RecordHeader};
use glueberry_transport::frame::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..HEADER_LEN)
        && let Ok(header) = <[u8; HEADER_LEN]>::try_from(header)
        && let Ok(decoded) = RecordHeader::decode(header)
    {
        assert!(decoded.record_len() > HEADER_LEN);
    }
    let mut rest = data;
    while !rest.is_empty() {
        let Ok((frame, used)) = Frame::decode(rest) else {
            break;
        };
        assert!(used > 0 && used <= rest.len());
        let mut out = vec![0u8; frame.encoded_len()];
        let written = frame.encode(&mut out).expect("room for the encoding");
        let (again, again_used) = Frame::decode(&out[..written]).expect("re-decodes");
        assert_eq!(again, frame);
        assert_eq!(again_used, written);
        rest = &rest[used..];
    }
});
