//! Two connected connections driven by an arbitrary sequence of operations: opening streams,
//! sending, consuming, partial and corrupted delivery, time passing, closing. Never panics; and
//! while the bytes between them are intact, every stream delivers in order without duplicates.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use glueberry_transport::testing::{Cipher, connected_pair};
use glueberry_transport::{CloseCode, Connection, ConnectionConfig, Event};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 3] = ["consensus", "mempool", "blocks"];

#[derive(Arbitrary, Debug)]
enum Op {
    CompleteHandshake { side: bool, streams: u8 },
    Send { side: bool, stream: u8, len: u16 },
    Deliver { from: bool, max: u16 },
    Corrupt { from: bool, at: u16, xor: u8 },
    Tick { ms: u16 },
    Close { side: bool, code: u8 },
    Eof { side: bool },
}

struct Side {
    conn: Connection,
    /// Bytes transmitted and not yet delivered to the other side.
    wire: Vec<u8>,
    /// Next sequence number to send, per stream name.
    next_send: HashMap<&'static str, u32>,
    /// Next sequence number expected, per stream name.
    next_recv: HashMap<String, u32>,
}

fuzz_target!(|ops: Vec<Op>| {
    let config = Arc::new(ConnectionConfig {
        max_message_size: 8 * 1024 - 6,
        initial_window: 8 * 1024,
        connection_window: 12 * 1024,
        high_watermark: 64,
        low_watermark: 8,
        ..ConnectionConfig::default()
    });
    let Ok((a, b)) = connected_pair(config, Cipher::DangerNull) else {
        return;
    };
    let side = |conn| Side {
        conn,
        wire: Vec::new(),
        next_send: HashMap::new(),
        next_recv: HashMap::new(),
    };
    let mut sides = [side(a), side(b)];
    let mut now = Instant::now();
    let mut intact = true;
    let mut out = vec![0u8; 256 * 1024];
    for op in ops.into_iter().take(256) {
        match op {
            Op::CompleteHandshake { side, streams } => {
                let names: Vec<&str> = NAMES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| streams & (1 << i) != 0)
                    .map(|(_, n)| *n)
                    .collect();
                let _ = sides[usize::from(side)].conn.complete_handshake(&names);
            }
            Op::Send { side, stream, len } => {
                let s = &mut sides[usize::from(side)];
                let name = NAMES[usize::from(stream) % NAMES.len()];
                let Some(id) = s.conn.stream_id(name) else {
                    continue;
                };
                let seq = *s.next_send.get(name).unwrap_or(&0);
                let mut data = vec![0u8; usize::from(len % 20_000).max(4)];
                data[..4].copy_from_slice(&seq.to_be_bytes());
                if s.conn.send(id, Bytes::from(data)).is_ok() {
                    s.next_send.insert(name, seq + 1);
                }
            }
            Op::Deliver { from, max } | Op::Corrupt { from, at: max, .. } => {
                let (i, j) = if from { (1, 0) } else { (0, 1) };
                loop {
                    let n = sides[i].conn.poll_transmit(&mut out);
                    if n == 0 {
                        break;
                    }
                    sides[i].wire.extend_from_slice(&out[..n]);
                }
                let take = usize::from(max).min(sides[i].wire.len());
                let mut piece: Vec<u8> = sides[i].wire.drain(..take).collect();
                if let Op::Corrupt { xor, .. } = op
                    && let Some(byte) = piece.last_mut()
                    && xor != 0
                {
                    *byte ^= xor;
                    intact = false;
                }
                sides[j].conn.handle_input(now, &piece);
            }
            Op::Tick { ms } => {
                now += Duration::from_millis(u64::from(ms));
                for s in &mut sides {
                    s.conn.handle_timeout(now);
                }
            }
            Op::Close { side, code } => {
                sides[usize::from(side)]
                    .conn
                    .close(CloseCode::from_u16(u16::from(code % 12)));
            }
            Op::Eof { side } => {
                sides[usize::from(side)].conn.handle_eof();
                intact = false;
            }
        }
        for s in &mut sides {
            while let Some(event) = s.conn.poll_event() {
                if let Event::Message { stream, data } = event {
                    let name = s.conn.stream_name(stream).unwrap_or("?").to_string();
                    s.conn.release(stream, data.len());
                    if !intact || data.len() < 4 {
                        continue;
                    }
                    let seq = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                    let expected = s.next_recv.entry(name.clone()).or_insert(0);
                    assert_eq!(seq, *expected, "stream {name}: out of order or duplicated");
                    *expected += 1;
                }
            }
        }
    }
});
