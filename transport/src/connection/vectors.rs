//! Published test vectors for what follows the handshake: every frame type in a full exchange
//! (SETTINGS, OPEN, CREDIT, DATA whole and in fragments, an empty message, PING/PONG, CLOSE),
//! each with its fields and its bytes, so that an independent implementation can check its
//! encoder offline (`crypto/tests/interop/check_vectors.py` re-encodes them from PROTOCOL.md).
//! The initiator's frames are also fed to a real connection, which must take them all (the
//! exchange is valid, not only well-formed). Records and key updates are in the handshake
//! vectors (`crypto/tests/vectors/handshake-v1.txt`).
//!
//! `GLUEBERRY_BLESS=1 cargo test -p glueberry-transport vectors` rewrites the file after a
//! deliberate protocol change; otherwise the test checks that the bytes have not moved.

use std::fmt::Write as _;

use super::tests::{answering, events, rogue_session};
use super::*;
use crate::frame::{DATA_FIRST, DATA_LAST, Frame, Settings};

const VECTORS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/exchange-v1.txt");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

const SETTINGS: Settings = Settings {
    max_message_size: 1 << 20,
    max_streams: 32,
    initial_window: 2 << 20,
    connection_window: 4 << 20,
};

/// The exchange: (from the initiator, frame). Each frame is one record.
fn exchange() -> Vec<(bool, Frame<'static>)> {
    let data = |stream, flags, total_len, payload| Frame::Data {
        stream,
        flags,
        total_len,
        payload,
    };
    // What b gives back once it consumed the three messages on stream 1: their lengths plus 6
    // for each FIRST frame (§5.4).
    let consumed = (6 + 6) + (11 + 6);
    vec![
        (true, Frame::Settings(SETTINGS)),
        (false, Frame::Settings(SETTINGS)),
        (
            true,
            Frame::Open {
                stream: 1,
                name: b"consensus",
            },
        ),
        (
            false,
            Frame::Open {
                stream: 1,
                name: b"consensus",
            },
        ),
        (
            false,
            Frame::Credit {
                stream: 1,
                increment: SETTINGS.initial_window,
            },
        ),
        (
            true,
            Frame::Credit {
                stream: 1,
                increment: SETTINGS.initial_window,
            },
        ),
        (true, data(1, DATA_FIRST | DATA_LAST, None, b"vote 7")),
        (true, data(1, DATA_FIRST, Some(11), b"hello ")),
        (true, data(1, 0, None, b"wor")),
        (true, data(1, DATA_LAST, None, b"ld")),
        (
            false,
            Frame::Credit {
                stream: 1,
                increment: consumed,
            },
        ),
        (
            false,
            Frame::Credit {
                stream: crate::frame::CONNECTION_CREDIT,
                increment: consumed,
            },
        ),
        (true, Frame::Ping(0x0102_0304_0506_0708)),
        (false, Frame::Pong(0x0102_0304_0506_0708)),
        (true, data(0, DATA_FIRST | DATA_LAST, None, b"")),
        (
            false,
            Frame::Open {
                stream: 2,
                name: b"mempool",
            },
        ),
        (true, Frame::Reject { stream: 2 }),
        (true, Frame::Close(CloseCode::Normal.to_u16())),
    ]
}

fn describe(frame: &Frame<'_>) -> String {
    match frame {
        Frame::Settings(s) => format!(
            "SETTINGS max_message_size={} max_streams={} initial_window={} connection_window={}",
            s.max_message_size, s.max_streams, s.initial_window, s.connection_window
        ),
        Frame::Open { stream, name } => format!("OPEN stream={stream} name={}", hex(name)),
        Frame::Credit { stream, increment } => {
            format!("CREDIT stream={stream} increment={increment}")
        }
        Frame::Reject { stream } => format!("REJECT stream={stream}"),
        Frame::Data {
            stream,
            flags,
            total_len,
            payload,
        } => format!(
            "DATA stream={stream} flags={flags} total={} payload={}",
            total_len.map_or("-".to_string(), |t| t.to_string()),
            hex(payload)
        ),
        Frame::Ping(v) => format!("PING opaque={v}"),
        Frame::Pong(v) => format!("PONG opaque={v}"),
        Frame::Close(code) => format!("CLOSE code={code}"),
    }
}

fn generate() -> String {
    let mut out = String::from(
        "# Frames of a full exchange after the handshake, one record each, in order.\n\
         # frame_N = <sender> <TYPE> <fields>   (names and payloads in hex)\n\
         # frame_N_bytes = the frame as it is carried in a record's plaintext\n",
    );
    for (n, (from_initiator, frame)) in exchange().iter().enumerate() {
        let mut bytes = vec![0u8; frame.encoded_len()];
        let len = frame.encode(&mut bytes).expect("fits");
        assert_eq!(len, bytes.len());
        let (decoded, used) = Frame::decode(&bytes).expect("decodes");
        assert_eq!((&decoded, used), (frame, len), "round trip");
        let who = if *from_initiator {
            "initiator"
        } else {
            "responder"
        };
        let _ = writeln!(out, "frame_{n:02} = {who} {}", describe(frame));
        let _ = writeln!(out, "frame_{n:02}_bytes = {}", hex(&bytes));
    }
    out
}

#[test]
fn exchange_vectors_are_stable() {
    let generated = generate();
    if std::env::var_os("GLUEBERRY_BLESS").is_some() {
        std::fs::write(VECTORS_PATH, &generated).expect("write vectors");
        return;
    }
    let published = std::fs::read_to_string(VECTORS_PATH).expect("read vectors");
    assert_eq!(
        generated, published,
        "protocol bytes changed; see {VECTORS_PATH}"
    );
}

/// The initiator's side of the exchange, one record per frame, is taken by a real connection
/// (the responder, its application having opened `consensus`): every message arrives, the
/// rejection of its `mempool` is accepted, and the CLOSE ends it normally.
#[test]
fn the_initiators_frames_are_a_valid_exchange() {
    let frames: Vec<Frame<'static>> = exchange()
        .into_iter()
        .filter(|(from_initiator, _)| *from_initiator)
        .map(|(_, frame)| frame)
        .collect();
    let groups: Vec<&[Frame<'static>]> = frames.iter().map(std::slice::from_ref).collect();
    let (mut responder, records) = rogue_session(Some(&["consensus", "mempool"]), &groups);
    answering(&mut responder, &records);
    let mut messages = Vec::new();
    let mut closed = None;
    for event in events(&mut responder) {
        match event {
            Event::Message { data, .. } => messages.push(data),
            Event::Closed { reason, .. } => closed = Some(reason),
            _ => {}
        }
    }
    assert_eq!(
        messages,
        vec![
            Bytes::from_static(b"vote 7"),
            Bytes::from_static(b"hello world"),
            Bytes::new()
        ]
    );
    assert_eq!(closed, Some(CloseReason::Peer(CloseCode::Normal)));
}
