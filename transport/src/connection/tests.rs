//! Two connections wired back to back, in memory, on a hand-driven clock.

use std::time::Instant;

use glueberry_crypto::Identity;
use glueberry_crypto::handshake::complete_in_memory;
use proptest::prelude::*;

use super::*;
use crate::event::SendError;
use crate::frame::{DATA_FIRST, DATA_LAST, Frame};
use crate::stream::MESSAGE_CREDIT_OVERHEAD;
use glueberry_crypto::record::{HEADER_LEN, TAG_LEN};

pub(super) struct Pair {
    pub(super) a: Connection,
    pub(super) b: Connection,
    pub(super) now: Instant,
    buf: Vec<u8>,
}

fn config() -> Arc<ConnectionConfig> {
    Arc::new(ConnectionConfig::default())
}

fn handshake_config(seed: u8) -> Arc<HandshakeConfig> {
    Arc::new(
        HandshakeConfig::new(&Identity::from_seed(&[seed; 32]), "transport-test").expect("cfg"),
    )
}

impl Pair {
    /// Two connections that ran the real handshake through `handle_input`/`poll_transmit`.
    pub(super) fn connected_with(ca: Arc<ConnectionConfig>, cb: Arc<ConnectionConfig>) -> Self {
        let now = Instant::now();
        let a = Connection::outbound(ca, handshake_config(1), None, now).expect("outbound");
        let b = Connection::inbound(cb, handshake_config(2), now);
        let mut pair = Self {
            a,
            b,
            now,
            buf: vec![0u8; 1 << 20],
        };
        pair.pump();
        assert_eq!(pair.a.phase(), Phase::Connected);
        assert_eq!(pair.b.phase(), Phase::Connected);
        pair
    }

    pub(super) fn connected() -> Self {
        Self::connected_with(config(), config())
    }

    pub(super) fn established(streams: &[&str]) -> Self {
        Self::established_with(config(), config(), streams)
    }

    /// [`Pair::established`] with each side's own configuration.
    pub(super) fn established_with(
        ca: Arc<ConnectionConfig>,
        cb: Arc<ConnectionConfig>,
        streams: &[&str],
    ) -> Self {
        let mut pair = Self::connected_with(ca, cb);
        pair.a.complete_handshake(streams).expect("a");
        pair.b.complete_handshake(streams).expect("b");
        pair.pump();
        pair
    }

    /// Moves bytes both ways until neither side has anything to send.
    pub(super) fn pump(&mut self) {
        for _ in 0..100_000 {
            let n = self.a.poll_transmit(&mut self.buf);
            self.b.handle_input(self.now, &self.buf[..n]);
            let m = self.b.poll_transmit(&mut self.buf);
            self.a.handle_input(self.now, &self.buf[..m]);
            if n == 0 && m == 0 {
                return;
            }
        }
        panic!("pump did not settle");
    }

    /// Moves bytes from a to b only, in chunks of `chunk` bytes.
    fn a_to_b_chunked(&mut self, chunk: usize) -> usize {
        let n = self.a.poll_transmit(&mut self.buf);
        for piece in self.buf[..n].chunks(chunk.max(1)) {
            self.b.handle_input(self.now, piece);
        }
        n
    }
}

pub(super) fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// Messages received, per stream name, releasing each one.
fn drain_messages(conn: &mut Connection) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    while let Some(event) = conn.poll_event() {
        if let Event::Message { stream, data } = event {
            out.push((
                conn.stream_name(stream).expect("name").to_string(),
                data.clone(),
            ));
            conn.release(stream, data.len());
        }
    }
    out
}

#[test]
fn handshake_then_messages_on_several_streams_in_order() {
    let mut p = Pair::connected();
    let connected = events(&mut p.a);
    assert!(
        matches!(connected[0], Event::Connected { peer, .. } if peer == Identity::from_seed(&[2; 32]).peer_id())
    );
    assert_eq!(p.a.direction(), Direction::Outbound);
    assert_eq!(p.b.direction(), Direction::Inbound);
    events(&mut p.b);

    // The handshake stream works before complete_handshake.
    p.a.send(StreamId::HANDSHAKE, Bytes::from_static(b"HelloRequest"))
        .expect("send");
    p.pump();
    assert_eq!(
        drain_messages(&mut p.b),
        vec![("handshake".into(), Bytes::from_static(b"HelloRequest"))]
    );
    // Named streams do not, until then.
    assert_eq!(
        p.a.send(StreamId(1), Bytes::new()),
        Err(SendError::UnknownStream)
    );

    let names = ["consensus", "mempool", "blocksync"];
    p.a.complete_handshake(&names).expect("a");
    p.b.complete_handshake(&names).expect("b");
    p.pump();
    let accepted: Vec<Event> = events(&mut p.a)
        .into_iter()
        .filter(|e| matches!(e, Event::StreamAccepted(_)))
        .collect();
    assert_eq!(accepted.len(), 3);
    events(&mut p.b);
    for i in 0..300u32 {
        let name = names[i as usize % 3];
        let stream = p.a.stream_id(name).expect("stream");
        p.a.send(stream, Bytes::from(format!("{name} {i}")))
            .expect("send");
    }
    p.pump();
    let got = drain_messages(&mut p.b);
    assert_eq!(got.len(), 300);
    for name in names {
        let on_stream: Vec<u32> = got
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| {
                std::str::from_utf8(d)
                    .expect("utf8")
                    .rsplit(' ')
                    .next()
                    .expect("n")
                    .parse()
                    .expect("int")
            })
            .collect();
        assert_eq!(on_stream.len(), 100);
        assert!(
            on_stream.windows(2).all(|w| w[0] < w[1]),
            "{name} out of order"
        );
    }
}

#[test]
fn message_sizes_zero_one_max_and_max_plus_one() {
    let mut p = Pair::established(&["data"]);
    let stream = p.a.stream_id("data").expect("stream");
    let max = ConnectionConfig::default().max_message_size;
    let sizes = [0usize, 1, 64, 65_000, 65_536, 200_000, max];
    for &size in &sizes {
        let message: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        p.a.send(stream, Bytes::from(message)).expect("send");
    }
    assert_eq!(
        p.a.send(stream, Bytes::from(vec![0u8; max + 1])),
        Err(SendError::MessageTooLarge { len: max + 1, max })
    );
    p.pump();
    let got = drain_messages(&mut p.b);
    assert_eq!(got.len(), sizes.len());
    for ((_, data), &size) in got.iter().zip(&sizes) {
        assert_eq!(data.len(), size);
        assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));
    }
}

/// Seals hand-made frames from a's side, as a peer that ignores the rules would: one record
/// per frame.
pub(super) fn rogue_records(frames: &[Frame<'_>]) -> (Connection, Vec<Vec<u8>>) {
    let groups: Vec<&[Frame<'_>]> = frames.iter().map(std::slice::from_ref).collect();
    rogue_grouped(&groups)
}

/// Gives `victim` one record at a time, letting it answer between them (as when records arrive
/// in separate reads): what it sends (acceptances, credit) is written before the next arrives.
/// What it has to say after the last is left for the caller.
pub(super) fn answering(victim: &mut Connection, records: &[Vec<u8>]) {
    let mut out = vec![0u8; 1 << 20];
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            victim.poll_transmit(&mut out);
        }
        victim.handle_input(Instant::now(), record);
    }
}

/// [`rogue_records`] with several frames in one record: one record per group.
fn rogue_grouped(groups: &[&[Frame<'_>]]) -> (Connection, Vec<Vec<u8>>) {
    rogue_session(Some(&["data", "more"]), groups)
}

/// [`rogue_grouped`] against a victim whose application completed the handshake with
/// `streams`, or (with `None`) holds its decision.
pub(super) fn rogue_session(
    streams: Option<&[&str]>,
    groups: &[&[Frame<'_>]],
) -> (Connection, Vec<Vec<u8>>) {
    let (ia, ib) = (handshake_config(1), handshake_config(2));
    let (sa, sb) = complete_in_memory(
        Handshake::initiator(ia, None).expect("i"),
        Handshake::responder(ib),
    )
    .expect("handshake");
    let now = Instant::now();
    let mut victim = Connection::from_session(config(), sb, Direction::Inbound, now);
    if let Some(streams) = streams {
        victim.complete_handshake(streams).expect("complete");
    }
    let (mut sealer, _) = sa.into_channel();
    let mut wire = Vec::new();
    for group in groups {
        let body: usize = group.iter().map(Frame::encoded_len).sum();
        let mut record = vec![0u8; HEADER_LEN + body + TAG_LEN];
        let mut n = 0;
        for frame in *group {
            n += frame.encode(&mut record[HEADER_LEN + n..]).expect("fits");
        }
        let len = sealer.seal_in_place(&mut record, n).expect("seal");
        record.truncate(len);
        wire.push(record);
    }
    (victim, wire)
}

pub(super) fn settings() -> Frame<'static> {
    Frame::Settings(Settings {
        max_message_size: 1 << 29,
        max_streams: 32,
        initial_window: 1 << 30,
        connection_window: 1 << 30,
    })
}

fn close_error(conn: &mut Connection) -> Option<ConnectionError> {
    events(conn).into_iter().find_map(|e| match e {
        Event::Closed {
            reason: CloseReason::Error(e),
            ..
        } => Some(e),
        _ => None,
    })
}

#[test]
fn oversized_message_is_refused_on_receive_before_buffering() {
    let max = ConnectionConfig::default().max_message_size;
    let (mut victim, wire) = rogue_records(&[
        settings(),
        Frame::Open {
            stream: 1,
            name: b"data",
        },
        Frame::Data {
            stream: 1,
            flags: DATA_FIRST,
            total_len: Some(max as u32 + 1),
            payload: &[0; 600],
        },
    ]);
    answering(&mut victim, &wire);
    assert_eq!(
        close_error(&mut victim),
        Some(ConnectionError::MessageTooLarge {
            len: max as u64 + 1,
            max
        })
    );

    // With credit, on the handshake stream: the announced total is refused from the header.
    let (mut victim, wire) = rogue_records(&[
        settings(),
        Frame::Data {
            stream: 0,
            flags: DATA_FIRST,
            total_len: Some(max as u32 + 1),
            payload: &[0; 600],
        },
    ]);
    answering(&mut victim, &wire);
    assert_eq!(
        close_error(&mut victim),
        Some(ConnectionError::MessageTooLarge {
            len: max as u64 + 1,
            max
        })
    );
    // And a CLOSE frame with the reason goes back.
    let mut out = vec![0u8; 1024];
    assert!(victim.poll_transmit(&mut out) > 0);
}

#[test]
fn protocol_violations_close_with_typed_errors() {
    let cases: Vec<(Vec<Frame<'static>>, ConnectionError)> = vec![
        (
            vec![Frame::Ping(1)],
            ConnectionError::Protocol("the first frame must be SETTINGS"),
        ),
        (
            vec![settings(), settings()],
            ConnectionError::Protocol("SETTINGS sent twice"),
        ),
        (
            vec![
                settings(),
                Frame::Data {
                    stream: 5,
                    flags: 3,
                    total_len: None,
                    payload: b"x",
                },
            ],
            ConnectionError::Protocol("DATA on a stream that was not opened"),
        ),
        (
            vec![
                settings(),
                Frame::Data {
                    stream: 0,
                    flags: DATA_LAST,
                    total_len: None,
                    payload: b"x",
                },
            ],
            ConnectionError::Protocol("fragment without a first fragment"),
        ),
        (
            vec![
                settings(),
                Frame::Open {
                    stream: 0,
                    name: b"zero",
                },
            ],
            ConnectionError::Protocol("OPEN with a stream id out of range"),
        ),
        (
            vec![
                settings(),
                Frame::Open {
                    stream: 1,
                    name: b"handshake",
                },
            ],
            ConnectionError::Protocol("OPEN of the reserved handshake stream"),
        ),
        (
            vec![
                settings(),
                Frame::Open {
                    stream: 1,
                    name: b"x",
                },
                Frame::Open {
                    stream: 2,
                    name: b"x",
                },
            ],
            ConnectionError::Protocol("stream opened twice"),
        ),
        (
            vec![
                settings(),
                Frame::Credit {
                    stream: 9,
                    increment: 1,
                },
            ],
            ConnectionError::Protocol("CREDIT for a stream we did not open"),
        ),
    ];
    for (frames, expected) in cases {
        let (mut victim, wire) = rogue_records(&frames);
        answering(&mut victim, &wire);
        assert_eq!(close_error(&mut victim), Some(expected));
        assert!(victim.is_closed());
    }
    // More than the window on the handshake stream.
    let small = Settings {
        max_message_size: 1 << 29,
        max_streams: 32,
        initial_window: 1 << 30,
        connection_window: 1 << 30,
    };
    let payload = vec![0u8; 60_000];
    let frames: Vec<Frame<'_>> = std::iter::once(Frame::Settings(small))
        .chain((0..80).map(|_| Frame::Data {
            stream: 0,
            flags: 3,
            total_len: None,
            payload: &payload,
        }))
        .collect();
    let (mut victim, wire) = rogue_records(&frames);
    answering(&mut victim, &wire);
    assert_eq!(close_error(&mut victim), Some(ConnectionError::FlowControl));
}

#[test]
fn slow_stream_does_not_stall_another() {
    let mut p = Pair::established(&["slow", "fast"]);
    events(&mut p.a);
    events(&mut p.b);
    let slow = p.a.stream_id("slow").expect("slow");
    let fast = p.a.stream_id("fast").expect("fast");
    let message = Bytes::from(vec![7u8; 10_000]);
    // Far more than the 1 MiB window on the slow stream, which b never releases.
    for _ in 0..500 {
        let _ = p.a.send(slow, message.clone());
    }
    let mut fast_received = 0;
    let mut slow_received = 0;
    for round in 0..50 {
        for _ in 0..20 {
            p.a.send(fast, message.clone()).expect("fast never blocks");
        }
        p.pump();
        while let Some(event) = p.b.poll_event() {
            if let Event::Message { stream, data } = event {
                if p.b.stream_name(stream) == Some("fast") {
                    fast_received += 1;
                    p.b.release(stream, data.len());
                } else {
                    slow_received += 1; // never released
                }
            }
        }
        assert_eq!(
            fast_received,
            (round + 1) * 20,
            "fast stream stalled at round {round}"
        );
    }
    // The slow stream got exactly what its window allows, and its sender holds the rest.
    let window = u64::from(ConnectionConfig::default().initial_window);
    let per_message = 10_000 + MESSAGE_CREDIT_OVERHEAD;
    assert_eq!(slow_received as u64, window / per_message);
    assert!(p.a.send_credit(slow) < per_message);
    assert!(p.a.is_blocked(slow) || p.a.queued_messages() > 0);
}

#[test]
fn watermarks_block_at_high_and_resume_at_low() {
    let mut p = Pair::established(&["s"]);
    let s = p.a.stream_id("s").expect("s");
    let high = ConnectionConfig::default().high_watermark;
    for _ in 0..high {
        p.a.send(s, Bytes::from_static(b"m")).expect("below high");
    }
    assert_eq!(p.a.send(s, Bytes::from_static(b"m")), Err(SendError::Full));
    assert!(p.a.is_blocked(s));
    events(&mut p.a);
    p.pump();
    assert!(events(&mut p.a).contains(&Event::Writable(s)));
    p.a.send(s, Bytes::from_static(b"m"))
        .expect("writable again");
}

#[test]
fn simultaneous_open_and_rejected_streams_are_reported() {
    let mut p = Pair::connected();
    // Both complete before either hears from the other: OPEN frames cross.
    p.a.complete_handshake(&["shared", "only-a"]).expect("a");
    p.b.complete_handshake(&["shared", "only-b"]).expect("b");
    let only_a = p.a.stream_id("only-a").expect("only-a");
    for _ in 0..3 {
        p.a.send(only_a, Bytes::from_static(b"lost?"))
            .expect("queued");
    }
    let shared = p.a.stream_id("shared").expect("shared");
    p.a.send(shared, Bytes::from_static(b"hello"))
        .expect("queued");
    p.pump();
    let a_events = events(&mut p.a);
    assert!(a_events.contains(&Event::StreamAccepted(shared)));
    assert!(a_events.contains(&Event::StreamRejected {
        stream: only_a,
        unsent: 3
    }));
    assert_eq!(
        p.a.send(only_a, Bytes::new()),
        Err(SendError::StreamRejected)
    );
    assert_eq!(
        drain_messages(&mut p.b),
        vec![("shared".into(), Bytes::from_static(b"hello"))]
    );
    let b_only = p.b.stream_id("only-b").expect("only-b");
    assert!(events(&mut p.b).is_empty());
    assert_eq!(
        p.b.send(b_only, Bytes::new()),
        Err(SendError::StreamRejected)
    );
}

#[test]
fn ready_comes_once_the_peer_answered_every_stream_we_opened() {
    let mut p = Pair::connected();
    events(&mut p.a);
    events(&mut p.b);
    // a completes; b's application holds its decision: a's OPENs wait unanswered.
    p.a.complete_handshake(&["consensus", "only-a"]).expect("a");
    p.pump();
    let a_events = events(&mut p.a);
    assert!(a_events.contains(&Event::Established));
    assert!(!a_events.contains(&Event::Ready), "{a_events:?}");
    assert!(!events(&mut p.b).contains(&Event::Ready));
    // b completes: it accepts one stream, rejects the other, and both sides are ready.
    p.b.complete_handshake(&["consensus", "only-b"]).expect("b");
    p.pump();
    let a_events = events(&mut p.a);
    let ready = a_events.iter().position(|e| *e == Event::Ready);
    let accepted = a_events
        .iter()
        .position(|e| matches!(e, Event::StreamAccepted(_)));
    let rejected = a_events
        .iter()
        .position(|e| matches!(e, Event::StreamRejected { .. }));
    assert!(ready > accepted && ready > rejected, "{a_events:?}");
    assert_eq!(a_events.iter().filter(|e| **e == Event::Ready).count(), 1);
    assert!(events(&mut p.b).contains(&Event::Ready));
    // Credit given back later is not a second answer.
    let s = p.a.stream_id("consensus").expect("consensus");
    p.a.send(s, Bytes::from_static(b"m")).expect("send");
    p.pump();
    drain_messages(&mut p.b);
    p.pump();
    assert!(!events(&mut p.a).contains(&Event::Ready));
}

#[test]
fn ready_follows_established_when_we_open_no_named_stream() {
    let mut p = Pair::connected();
    events(&mut p.a);
    p.a.complete_handshake(&[]).expect("a");
    assert_eq!(events(&mut p.a), vec![Event::Established, Event::Ready]);
}

#[test]
fn keepalive_measures_rtt_and_idle_timeout_detects_a_silent_peer() {
    let mut p = Pair::established(&["s"]);
    events(&mut p.a);
    let cfg = ConnectionConfig::default();
    p.now += cfg.keepalive_interval;
    p.a.handle_timeout(p.now);
    p.pump();
    assert!(events(&mut p.a).iter().any(|e| matches!(e, Event::Rtt(_))));
    // b goes silent: a pings once, then gives up at the idle timeout.
    let deadline = p.a.poll_timeout().expect("deadline");
    assert_eq!(deadline, p.now + cfg.keepalive_interval);
    p.now = deadline;
    p.a.handle_timeout(p.now);
    assert!(p.a.poll_transmit(&mut p.buf) > 0, "ping sent");
    p.now += cfg.idle_timeout;
    p.a.handle_timeout(p.now);
    assert_eq!(close_error(&mut p.a), Some(ConnectionError::IdleTimeout));
}

#[test]
fn close_is_explicit_and_eof_without_it_is_a_lost_connection() {
    let mut p = Pair::established(&["s"]);
    events(&mut p.b);
    let s = p.a.stream_id("s").expect("s");
    p.a.close(CloseCode::Shutdown);
    assert_eq!(p.a.send(s, Bytes::new()), Err(SendError::Closed));
    p.pump();
    assert!(events(&mut p.b).contains(&Event::Closed {
        reason: CloseReason::Peer(CloseCode::Shutdown),
        unsent: 0
    }));

    let mut p = Pair::established(&["s"]);
    events(&mut p.b);
    p.b.handle_eof();
    assert_eq!(close_error(&mut p.b), Some(ConnectionError::ConnectionLost));
}

#[test]
fn handshake_errors_close_the_connection() {
    let now = Instant::now();
    let a_hs =
        Arc::new(HandshakeConfig::new(&Identity::from_seed(&[1; 32]), "net-a").expect("cfg"));
    let mut a = Connection::outbound(config(), a_hs, None, now).expect("a");
    let mut b = Connection::inbound(config(), handshake_config(2), now);
    let mut buf = vec![0u8; 4096];
    let n = a.poll_transmit(&mut buf);
    b.handle_input(now, &buf[..n]);
    assert!(matches!(
        close_error(&mut b),
        Some(ConnectionError::Handshake(
            HandshakeError::NetworkMismatch { .. }
        ))
    ));
    let n = b.poll_transmit(&mut buf);
    a.handle_input(now, &buf[..n]);
    assert!(matches!(
        close_error(&mut a),
        Some(ConnectionError::Handshake(
            HandshakeError::NetworkMismatch { .. }
        ))
    ));
}

#[test]
fn no_batching_sends_one_message_per_record() {
    let unbatched = Arc::new(ConnectionConfig {
        batching: false,
        ..Default::default()
    });
    let mut p = Pair::established_with(unbatched, config(), &["s"]);
    let s = p.a.stream_id("s").expect("s");
    for _ in 0..10 {
        p.a.send(s, Bytes::from_static(&[1; 64])).expect("send");
    }
    let n = p.a.poll_transmit(&mut p.buf);
    // 10 records of header + DATA header + 64 + tag.
    assert_eq!(n, 10 * (HEADER_LEN + 6 + 64 + TAG_LEN));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random sends on random streams, random releases, bytes delivered in random chunks: every
    /// message arrives once, in order per stream, and no side ever exceeds the credit it was
    /// given (the receiver would close with FlowControl).
    #[test]
    fn credits_are_never_exceeded_and_nothing_is_lost(
        ops in proptest::collection::vec((0usize..3, 0usize..70_000, any::<bool>(), 1usize..5000), 1..60),
    ) {
        // The connection's window is less than the three streams' together: both bind.
        let small = Arc::new(ConnectionConfig {
            max_message_size: 70_000,
            initial_window: 80 * 1024,
            connection_window: 128 * 1024,
            ..Default::default()
        });
        let mut p = Pair::connected_with(small.clone(), small);
        let names = ["x", "y", "z"];
        p.a.complete_handshake(&names).expect("a");
        p.b.complete_handshake(&names).expect("b");
        p.pump();
        let mut sent: Vec<Vec<usize>> = vec![Vec::new(); 3];
        let mut received: Vec<Vec<usize>> = vec![Vec::new(); 3];
        let mut held: Vec<(StreamId, usize)> = Vec::new();
        for (stream, len, release_now, chunk) in ops {
            let id = p.a.stream_id(names[stream]).expect("id");
            if p.a.send(id, Bytes::from(vec![stream as u8; len])).is_ok() {
                sent[stream].push(len);
            }
            p.a_to_b_chunked(chunk);
            let m = p.b.poll_transmit(&mut p.buf);
            p.a.handle_input(p.now, &p.buf[..m]);
            while let Some(event) = p.b.poll_event() {
                match event {
                    Event::Message { stream, data } => {
                        let i = names.iter().position(|n| Some(*n) == p.b.stream_name(stream)).expect("name");
                        received[i].push(data.len());
                        if release_now { p.b.release(stream, data.len()) } else { held.push((stream, data.len())) }
                    }
                    Event::Closed { reason, .. } => prop_assert!(false, "closed: {reason:?}"),
                    _ => {}
                }
            }
            for name in names {
                let id = p.a.stream_id(name).expect("id");
                prop_assert!(p.a.send_credit(id) <= 64 * 1024 * 2);
            }
        }
        // Release everything and drain.
        for (stream, len) in held.drain(..) { p.b.release(stream, len); }
        for _ in 0..200 {
            p.pump();
            // Credit below a batch goes out after a short delay.
            p.now += Duration::from_millis(20);
            p.b.handle_timeout(p.now);
            p.a.handle_timeout(p.now);
            p.pump();
            let mut any = false;
            while let Some(event) = p.b.poll_event() {
                if let Event::Message { stream, data } = event {
                    let i = names.iter().position(|n| Some(*n) == p.b.stream_name(stream)).expect("name");
                    received[i].push(data.len());
                    p.b.release(stream, data.len());
                    any = true;
                }
            }
            if !any && p.a.queued_messages() == 0 { break; }
        }
        prop_assert_eq!(received, sent);
    }
}

#[test]
fn owned_input_with_pending_bytes_moved_forward_delivers_everything() {
    let mut p = Pair::established(&["s"]);
    let s = p.a.stream_id("s").expect("s");
    for i in 0..500u32 {
        p.a.send(s, Bytes::from(vec![(i % 256) as u8; 300 + i as usize]))
            .expect("send");
    }
    let n = p.a.poll_transmit(&mut p.buf);
    // Deliver in owned chunks of 777 bytes, as the engine does: the pending start of a record
    // is taken out and put in front of the next chunk.
    let mut at = 0;
    while at < n {
        let end = (at + 777).min(n);
        let mut chunk = p.b.take_pending_input();
        chunk.extend_from_slice(&p.buf[at..end]);
        p.b.handle_input_buf(p.now, chunk, usize::MAX);
        at = end;
    }
    let got = drain_messages(&mut p.b);
    assert_eq!(got.len(), 500);
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(data.len(), 300 + i);
        assert!(data.iter().all(|&b| b == (i % 256) as u8));
    }
    // Owned input while bytes are pending (not taken) is appended, not lost.
    p.a.send(s, Bytes::from_static(b"tail")).expect("send");
    let n = p.a.poll_transmit(&mut p.buf);
    p.b.handle_input(p.now, &p.buf[..3]);
    p.b.handle_input_buf(p.now, BytesMut::from(&p.buf[3..n]), usize::MAX);
    assert_eq!(
        drain_messages(&mut p.b),
        vec![("s".into(), Bytes::from_static(b"tail"))]
    );
}

#[test]
fn input_read_in_shares_delivers_everything_in_order_and_no_more_than_each_share() {
    let mut p = Pair::established(&["s"]);
    let s = p.a.stream_id("s").expect("s");
    for i in 0..1000u32 {
        p.a.send(s, Bytes::copy_from_slice(&i.to_be_bytes()))
            .expect("send");
    }
    let n = p.a.poll_transmit(&mut p.buf);
    // Records of many frames: the share runs out inside them.
    p.b.handle_input_buf(p.now, BytesMut::from(&p.buf[..n]), 64);
    let mut got = drain_messages(&mut p.b);
    assert_eq!(got.len(), 64, "the first share: 64 frames, each a message");
    let mut calls = 1;
    while p.b.has_unread_input() {
        p.b.resume_input(p.now, 64);
        let share = drain_messages(&mut p.b);
        assert!(share.len() <= 64, "a share read {} messages", share.len());
        got.extend(share);
        calls += 1;
        assert!(calls < 100, "unread input never ran out");
    }
    assert_eq!(got.len(), 1000);
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(
            &data[..],
            &(i as u32).to_be_bytes(),
            "message {i} out of order"
        );
    }
    assert!(calls >= 1000 / 64, "{calls} calls");
}

#[test]
fn close_hands_back_unsent_and_unconfirmed_messages_and_forgets_confirmed_ones() {
    let config = Arc::new(ConnectionConfig {
        max_message_size: 4090,
        initial_window: 4096,
        connection_window: 8000,
        ..ConnectionConfig::default()
    });
    let mut p = Pair::connected_with(config.clone(), config);
    p.a.complete_handshake(&["s"]).expect("a");
    p.b.complete_handshake(&["s"]).expect("b");
    p.pump();
    events(&mut p.a);
    let s = p.a.stream_id("s").expect("s");
    // 10 messages of 1000 bytes: the 4096-byte window lets 4 through (1006 each), then stalls.
    let message = |i: u8| Bytes::from(vec![i; 1000]);
    for i in 0..10 {
        p.a.send(s, message(i)).expect("queued");
    }
    p.pump();
    // b takes them but its application has not consumed them: no credit back yet.
    let got: Vec<(StreamId, usize)> = events(&mut p.b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { stream, data } => Some((stream, data.len())),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 4);
    assert_eq!(p.a.unconfirmed_messages(), 4);
    assert_eq!(p.a.queued_messages(), 6);
    // Consuming two returns their 2 × 1006 bytes (over a quarter window): both confirmed.
    for &(stream, len) in &got[..2] {
        p.b.release(stream, len);
    }
    p.pump();
    // The credit let the fifth out whole and part of the sixth.
    assert_eq!(p.a.unconfirmed_messages(), 4);
    p.a.handle_eof();
    // What comes back, by each message's first byte.
    let firsts = |v: &[Bytes]| v.iter().map(|m| m[0]).collect::<Vec<u8>>();
    let undelivered: Vec<(StreamId, Vec<u8>, Vec<u8>)> = events(&mut p.a)
        .into_iter()
        .filter_map(|e| match e {
            Event::Undelivered {
                stream,
                unsent,
                unconfirmed,
            } => Some((stream, firsts(&unsent), firsts(&unconfirmed))),
            _ => None,
        })
        .collect();
    assert_eq!(
        undelivered,
        vec![(s, (6..10).collect(), (2..6).collect())],
        "(stream, unsent, unconfirmed)"
    );
}

#[test]
fn credit_below_the_batch_is_sent_after_the_delay_so_a_quiet_sender_learns_of_receipt() {
    let mut p = Pair::established(&["s"]);
    let s = p.a.stream_id("s").expect("s");
    for _ in 0..3 {
        p.a.send(s, Bytes::from_static(b"vote")).expect("queued");
    }
    p.pump();
    assert_eq!(drain_messages(&mut p.b).len(), 3);
    p.pump();
    assert_eq!(
        p.a.unconfirmed_messages(),
        3,
        "30 bytes are far below a batch"
    );
    let due = p.b.poll_timeout().expect("a timer");
    assert!(due <= p.now + Duration::from_millis(10), "{due:?}");
    p.b.handle_timeout(due);
    p.pump();
    assert_eq!(p.a.unconfirmed_messages(), 0);
}

#[test]
fn queued_bytes_over_all_streams_are_bounded() {
    let config = Arc::new(ConnectionConfig {
        max_queued_bytes: 64 * 1024,
        ..ConnectionConfig::default()
    });
    let mut p = Pair::connected_with(config.clone(), config);
    p.a.complete_handshake(&["x", "y"]).expect("a");
    p.b.complete_handshake(&["x", "y"]).expect("b");
    let (x, y) = (
        p.a.stream_id("x").expect("x"),
        p.a.stream_id("y").expect("y"),
    );
    let big = Bytes::from(vec![1u8; 30_000]);
    p.a.send(x, big.clone()).expect("first");
    p.a.send(y, big.clone()).expect("second, other stream");
    assert_eq!(p.a.send(x, big.clone()), Err(SendError::Full));
    assert_eq!(
        p.a.send(y, big.clone()),
        Err(SendError::Full),
        "the bound is the connection's, not a stream's"
    );
    p.pump();
    drain_messages(&mut p.b);
    p.pump();
    assert!(!p.a.is_blocked(x));
    p.a.send(x, big).expect("room again once written");
    // A message larger than the bound still goes when it is alone.
    p.pump();
    drain_messages(&mut p.b);
    p.pump();
    p.a.send(y, Bytes::from(vec![2u8; 100_000]))
        .expect("alone on an empty connection");
}

/// The space of one maximal record.
const RECORD: usize = HEADER_LEN + glueberry_crypto::record::MAX_RECORD_PLAINTEXT_LEN + TAG_LEN;

/// One record from a to b (a record buffer of exactly one maximal record); the messages it
/// carried, by stream name.
fn one_record(p: &mut Pair) -> Vec<(String, usize)> {
    let record = RECORD;
    let n = p.a.poll_transmit(&mut p.buf[..record]);
    p.b.handle_input(p.now, &p.buf[..n]);
    drain_messages(&mut p.b)
        .into_iter()
        .map(|(s, d)| (s, d.len()))
        .collect()
}

#[test]
fn a_high_priority_message_overtakes_a_queued_bulk_transfer_within_one_record() {
    let priorities = vec![("bulk".to_string(), 0), ("urgent".to_string(), 7)];
    let config = Arc::new(ConnectionConfig {
        priorities,
        initial_window: 64 * 1024 * 1024,
        ..ConnectionConfig::default()
    });
    let mut p = Pair::connected_with(config.clone(), config);
    p.a.complete_handshake(&["bulk", "urgent"]).expect("a");
    p.b.complete_handshake(&["bulk", "urgent"]).expect("b");
    p.pump();
    events(&mut p.a);
    events(&mut p.b);
    let bulk = p.a.stream_id("bulk").expect("bulk");
    let urgent = p.a.stream_id("urgent").expect("urgent");
    for _ in 0..8 {
        p.a.send(bulk, Bytes::from(vec![1u8; 1 << 20]))
            .expect("bulk");
    }
    // The bulk transfer is under way: a record of it is out.
    assert!(
        one_record(&mut p).is_empty(),
        "a fragment, no whole message"
    );
    assert_eq!(
        p.a.last_records(),
        1,
        "the connection counts what it sealed"
    );
    let n = p.a.poll_transmit(&mut p.buf[..3 * RECORD]);
    assert_eq!(p.a.last_records(), 3);
    p.b.handle_input(p.now, &p.buf[..n]);
    drain_messages(&mut p.b);
    // Now the urgent message: it is in the very next record, ahead of the bulk bytes.
    p.a.send(urgent, Bytes::from_static(b"vote"))
        .expect("urgent");
    let next = one_record(&mut p);
    assert_eq!(next, vec![("urgent".to_string(), 4)]);
    // Both busy: the low-priority stream still progresses (bounded starvation).
    for _ in 0..900 {
        p.a.send(urgent, Bytes::from(vec![2u8; 2000]))
            .expect("urgent");
    }
    let credit = p.a.send_credit(bulk);
    for _ in 0..8 {
        one_record(&mut p);
    }
    assert!(
        p.a.queued_messages() > 100,
        "the urgent stream is still busy"
    );
    assert!(p.a.send_credit(bulk) < credit, "the bulk stream starved");
}

#[test]
fn a_peer_that_withholds_credit_while_pinging_is_closed_at_the_send_stall_timeout() {
    let mut p = Pair::established(&["s"]);
    let stream = p.a.stream_id("s").expect("s");
    // More than the 1 MiB window: the rest waits for credit b never returns.
    for _ in 0..900 {
        p.a.send(stream, Bytes::from(vec![7u8; 6000]))
            .expect("queued");
    }
    p.pump();
    events(&mut p.b); // b takes the messages and never releases them
    assert!(p.a.queued_messages() > 0, "some wait for credit");
    let stall = ConnectionConfig::default().send_stall_timeout;
    // b keeps the connection alive (a PING every 10 s): never silent, never draining.
    let start = p.now;
    let mut t = start;
    // (The stall is counted from the first check after the last byte written: one step late.)
    let limit = start + stall + Duration::from_secs(10);
    while t < limit + Duration::from_secs(10) && !p.a.is_closed() {
        t += Duration::from_secs(10);
        p.now = t;
        p.b.handle_timeout(t); // its keepalive
        p.a.handle_timeout(t);
        p.pump();
        if p.a.is_closed() {
            break;
        }
        assert!(t < limit, "still open at {:?}", t.duration_since(start));
    }
    assert!(p.a.is_closed(), "closed");
    assert_eq!(
        p.a.close_reason(),
        Some(&CloseReason::Local(CloseCode::SendStalled))
    );
    // The queued messages came back to the application, none lost silently.
    let undelivered: usize = events(&mut p.a)
        .iter()
        .map(|e| match e {
            Event::Undelivered {
                unsent,
                unconfirmed,
                ..
            } => unsent.len() + unconfirmed.len(),
            _ => 0,
        })
        .sum();
    assert!(undelivered >= 300, "what waited came back ({undelivered})");
}

#[test]
fn a_slow_but_draining_peer_is_not_a_stall() {
    let mut p = Pair::established(&["s"]);
    let stream = p.a.stream_id("s").expect("s");
    for _ in 0..40 {
        p.a.send(stream, Bytes::from(vec![7u8; 64 * 1024]))
            .expect("queued");
    }
    let stall = ConnectionConfig::default().send_stall_timeout;
    let start = p.now;
    // b's application wakes every 30 s and takes what arrived (a window's worth, 2 MiB: slower
    // than anyone would like, but everything we wrote is confirmed within the deadline). One
    // that takes longer than the deadline to consume its window is a stall (the oldest
    // unconfirmed message's age: `budget.rs`).
    for step in 1..=8u32 {
        p.now = start + Duration::from_secs(30) * step;
        p.b.handle_timeout(p.now);
        p.a.handle_timeout(p.now);
        p.pump();
        for event in events(&mut p.b) {
            if let Event::Message { stream, data } = event {
                p.b.release(stream, data.len());
            }
        }
        p.b.handle_timeout(p.now + Duration::from_millis(100)); // owed credit goes out
        p.pump();
        assert!(
            !p.a.is_closed(),
            "closed at {:?} (stall {stall:?})",
            p.now - start
        );
    }
}

#[test]
fn more_than_the_connection_window_over_several_streams_is_a_flow_control_violation() {
    // Each stream stays within its own window (2 MiB); together they pass the connection's
    // (4 MiB): a peer cannot multiply what it makes us hold by opening streams.
    let payload = vec![0u8; 60_000];
    let mut frames = vec![
        settings(),
        Frame::Open {
            stream: 1,
            name: b"data",
        },
        Frame::Open {
            stream: 2,
            name: b"more",
        },
    ];
    for stream in [0u16, 1, 2] {
        frames.extend((0..25).map(|_| Frame::Data {
            stream,
            flags: 3,
            total_len: None,
            payload: &payload,
        }));
    }
    let (mut victim, wire) = rogue_records(&frames);
    answering(&mut victim, &wire);
    assert_eq!(close_error(&mut victim), Some(ConnectionError::FlowControl));
}

#[test]
fn what_a_connection_holds_of_what_it_received_counts_until_released() {
    let mut p = Pair::established(&["s"]);
    let s = p.a.stream_id("s").expect("s");
    assert_eq!(p.b.received_held(), 0);
    for _ in 0..10 {
        p.a.send(s, Bytes::from(vec![1u8; 1000])).expect("queued");
    }
    let n = p.a.poll_transmit(&mut p.buf);
    p.b.handle_input(p.now, &p.buf[..n]);
    let cost = 1000 + crate::stream::MESSAGE_CREDIT_OVERHEAD;
    assert_eq!(
        p.b.received_held(),
        10 * cost,
        "ten messages held, none released"
    );
    let mut released = 0;
    for event in events(&mut p.b) {
        if let Event::Message { stream, data } = event {
            p.b.release(stream, data.len());
            released += 1;
            assert_eq!(p.b.received_held(), (10 - released) * cost);
        }
    }
    assert_eq!(released, 10);
    assert_eq!(
        p.b.received_held(),
        0,
        "all released: nothing held, credit owed or sent"
    );
}
