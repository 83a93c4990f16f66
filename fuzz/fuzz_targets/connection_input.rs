//! A connected connection (fuzz-only null cipher, so records need no valid tag) fed arbitrary
//! bytes in arbitrary pieces, through either input path (the copying one and the engine's
//! owned-buffer one): frames, stream opens and rejects, credits, settings, pings, close frames.
//! Never panics; what it sends back and the events it reports stay bounded.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use glueberry_crypto::Identity;
use glueberry_crypto::record::danger_null_channel;
use glueberry_transport::{Connection, ConnectionConfig, Direction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let config = Arc::new(ConnectionConfig {
        max_message_size: 64 * 1024,
        max_streams: 8,
        ..ConnectionConfig::default()
    });
    let now = Instant::now();
    let peer = Identity::from_seed(&[3; 32]).peer_id();
    let mut conn = Connection::from_channel(config, peer, danger_null_channel(), Direction::Inbound, now);
    if control & 1 == 1 {
        let _ = conn.complete_handshake(&["consensus", "mempool"]);
    }
    let chunk = usize::from(control >> 1).max(1);
    let mut out = vec![0u8; 128 * 1024];
    let mut events = 0usize;
    // Bit 0 of the piece size picks the path: the copying `handle_input`, or the engine's
    // `handle_input_buf` (buffers handed over, the unfinished record moved to the front of the
    // next one, buffers of varying spare room so that messages are sliced or copied out, read a
    // few frames at a time and resumed until none is left unread, as the shard's shares do).
    let owned = chunk % 2 == 0;
    for (i, piece) in input.chunks(chunk).enumerate() {
        let at = now + Duration::from_millis(i as u64);
        if owned {
            let mut buf = conn.take_pending_input();
            buf.reserve(piece.len() * (1 + i % 16));
            buf.extend_from_slice(piece);
            let frames = 1 + i % 8;
            conn.handle_input_buf(at, buf, frames);
            while conn.has_unread_input() {
                while conn.poll_event().is_some() {
                    events += 1;
                }
                conn.resume_input(at, frames);
            }
        } else {
            conn.handle_input(at, piece);
        }
        while conn.poll_event().is_some() {
            events += 1;
        }
        while conn.poll_transmit(&mut out) > 0 {}
        if conn.is_closed() {
            break;
        }
    }
    conn.handle_timeout(now + Duration::from_secs(60));
    while conn.poll_event().is_some() {
        events += 1;
    }
    // Events are bounded by what came in: at most one per input byte, plus a few.
    assert!(events <= input.len() + 8, "{events} events from {} bytes", input.len());
});
