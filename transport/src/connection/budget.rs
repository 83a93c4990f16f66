//! What a peer can make us hold in messages we sent: our own windows, not the ones it
//! advertises, and not for longer than the send-stall deadline (issue 24).

use super::tests::{Pair, events};
use super::*;
use crate::stream::MESSAGE_CREDIT_OVERHEAD;

/// A peer whose SETTINGS grant the largest windows the wire allows.
fn greedy_peer() -> Arc<ConnectionConfig> {
    Arc::new(ConnectionConfig {
        initial_window: u32::MAX,
        connection_window: u32::MAX,
        ..ConnectionConfig::default()
    })
}

/// Queues `count` messages of `len` bytes on `stream` (all accepted: the queue bounds are
/// larger).
fn queue(p: &mut Pair, stream: StreamId, count: usize, len: usize) {
    for _ in 0..count {
        p.a.send(stream, Bytes::from(vec![1u8; len]))
            .expect("queued");
    }
}

fn undelivered(conn: &mut Connection) -> usize {
    events(conn)
        .iter()
        .map(|e| match e {
            Event::Undelivered {
                unsent,
                unconfirmed,
                ..
            } => unsent.len() + unconfirmed.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn a_peer_granting_the_largest_windows_gets_only_our_windows_ahead_of_confirmation() {
    let ours = ConnectionConfig::default();
    let mut p = Pair::established_with(Arc::new(ours.clone()), greedy_peer(), &["s", "t"]);
    let (s, t) = (
        p.a.stream_id("s").expect("s"),
        p.a.stream_id("t").expect("t"),
    );
    // 12 MiB on two streams, far more than our windows; the peer reads it all and confirms none.
    queue(&mut p, s, 1000, 6000);
    queue(&mut p, t, 1000, 6000);
    p.pump();
    events(&mut p.b);
    let held = p.a.unconfirmed_bytes();
    let cost = 6000 + MESSAGE_CREDIT_OVERHEAD;
    // Both streams took what our windows allow (each its 2 MiB, but for a message that did not
    // fit), and no more.
    assert!(
        held <= u64::from(ours.connection_window)
            && held + 2 * cost > u64::from(ours.connection_window),
        "written ahead of confirmation: {held} bytes (our connection window {})",
        ours.connection_window
    );
    // Each stream alone stays within our stream window too.
    for stream in [s, t] {
        let local = &p.a.streams[usize::from(stream.0)];
        assert!(local.unconfirmed <= u64::from(ours.initial_window));
    }
    assert!(p.a.queued_messages() > 0, "the rest waits, queued");
    // The peer's grant is not what stopped us: it still has almost all of its credit.
    assert!(p.a.send_credit(s) > u64::from(u32::MAX) / 2);
}

#[test]
fn confirmations_free_what_they_cover_and_are_reported_per_stream() {
    let mut p = Pair::established(&["s"]);
    let s = p.a.stream_id("s").expect("s");
    queue(&mut p, s, 10, 100);
    p.pump();
    // b takes and releases every message; its credit comes back after the delay.
    for event in events(&mut p.b) {
        if let Event::Message { stream, data } = event {
            p.b.release(stream, data.len());
        }
    }
    p.now += Duration::from_millis(20);
    p.b.handle_timeout(p.now);
    p.pump();
    let confirmed: Vec<(StreamId, u64, u64)> = events(&mut p.a)
        .into_iter()
        .filter_map(|e| match e {
            Event::Confirmed {
                stream,
                messages,
                bytes,
            } => Some((stream, messages, bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(confirmed.iter().map(|c| c.1).sum::<u64>(), 10);
    assert_eq!(confirmed.iter().map(|c| c.2).sum::<u64>(), 1000);
    assert!(confirmed.iter().all(|c| c.0 == s));
    assert_eq!(p.a.unconfirmed_bytes(), 0);
    assert_eq!(p.a.unconfirmed_messages(), 0);
}

/// Credit returned a few bytes at a time (one message every 20 s) does not reset the
/// send-stall deadline: the oldest unconfirmed message's age does, and it keeps growing.
#[test]
fn credit_trickled_back_does_not_keep_a_stalled_connection_alive() {
    let mut p = Pair::established_with(config_default(), greedy_peer(), &["s"]);
    let s = p.a.stream_id("s").expect("s");
    queue(&mut p, s, 900, 4000);
    p.pump();
    let mut held: VecDeque<(StreamId, usize)> = events(&mut p.b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { stream, data } => Some((stream, data.len())),
            _ => None,
        })
        .collect();
    assert!(held.len() > 100);
    let stall = ConnectionConfig::default().send_stall_timeout;
    let start = p.now;
    while !p.a.is_closed() {
        p.now += Duration::from_secs(20);
        assert!(
            p.now <= start + stall + Duration::from_secs(20),
            "still open after {:?}",
            p.now - start
        );
        // One message's worth of credit: the oldest unconfirmed is let go, the next is as old.
        if let Some((stream, len)) = held.pop_front() {
            p.b.release(stream, len);
        }
        p.b.handle_timeout(p.now); // flushes the owed credit, and pings
        p.pump();
        p.a.handle_timeout(p.now);
        for event in events(&mut p.b) {
            if let Event::Message { stream, data } = event {
                held.push_back((stream, data.len()));
            }
        }
    }
    assert_eq!(
        p.a.close_reason(),
        Some(&CloseReason::Local(CloseCode::SendStalled))
    );
    assert!(p.now - start >= stall, "not before the deadline");
    // Nothing accepted is lost silently: queued and unconfirmed come back.
    let sent = p.a.streams[usize::from(s.0)].sent_messages as usize;
    let confirmed_before_close = 900 - undelivered(&mut p.a);
    assert!(confirmed_before_close <= sent);
}

fn config_default() -> Arc<ConnectionConfig> {
    Arc::new(ConnectionConfig::default())
}

/// Padding (PINGs, which cost no credit) around 1-byte messages in one large receive buffer:
/// each message is copied out, so a held one does not keep the buffer alive; a message that is
/// a good part of the buffer is still a slice of it (no copy).
#[test]
fn a_held_small_message_does_not_pin_the_receive_buffer_it_arrived_in() {
    use super::tests::{answering, rogue_session, settings};
    use crate::frame::{DATA_FIRST, DATA_LAST, Frame};
    fn data(payload: &'static [u8]) -> Frame<'static> {
        Frame::Data {
            stream: 1,
            flags: DATA_FIRST | DATA_LAST,
            total_len: None,
            payload,
        }
    }
    let big: &'static [u8] = Box::leak(vec![9u8; 40 * 1024].into_boxed_slice());
    let padded: Vec<Frame<'static>> = (0..2000).map(Frame::Ping).chain([data(b"x")]).collect();
    let mut groups: Vec<&[Frame<'_>]> = vec![&[], &[]];
    let head = [settings()];
    let open = [Frame::Open {
        stream: 1,
        name: b"data",
    }];
    groups[0] = &head;
    groups[1] = &open;
    for _ in 0..8 {
        groups.push(&padded);
    }
    let tail = [data(big)];
    groups.push(&tail);
    let (mut victim, wire) = rogue_session(Some(&["data", "more"]), &groups);
    answering(&mut victim, &wire[..2]);
    let mut out = vec![0u8; 1 << 16];
    victim.poll_transmit(&mut out); // the acceptance goes out: DATA may follow
    events(&mut victim);
    let mut input = BytesMut::with_capacity(256 * 1024);
    for record in &wire[2..] {
        input.extend_from_slice(record);
    }
    assert!(input.len() > 160 * 1024, "mostly padding: {}", input.len());
    let start = input.as_ptr() as usize;
    let inside = start..start + input.capacity();
    victim.handle_input_buf(Instant::now(), input, usize::MAX);
    let messages: Vec<Bytes> = events(&mut victim)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 9, "{:?}", victim.close_reason());
    for small in &messages[..8] {
        assert_eq!(small.as_ref(), b"x");
        assert!(
            !inside.contains(&(small.as_ptr() as usize)),
            "a small one was sliced"
        );
    }
    assert_eq!(messages[8].len(), big.len());
    assert!(
        inside.contains(&(messages[8].as_ptr() as usize)),
        "a large one is a slice, not a copy"
    );
}

/// A peer that grants the largest windows and then says nothing at all (no credit, no PING):
/// the deadline still comes, from when the messages were written, with only timers driving.
#[test]
fn a_silent_peer_that_never_confirms_is_cut_by_the_timer_alone() {
    let stall = Duration::from_secs(5);
    let ours = Arc::new(ConnectionConfig {
        send_stall_timeout: stall,
        ..ConnectionConfig::default()
    });
    let mut p = Pair::established_with(ours, greedy_peer(), &["s"]);
    let s = p.a.stream_id("s").expect("s");
    queue(&mut p, s, 100, 64 * 1024);
    let start = p.now + Duration::from_secs(1);
    let mut buf = vec![0u8; 1 << 20];
    // a writes; b reads and answers nothing.
    loop {
        let n = p.a.poll_transmit_at(start, &mut buf);
        if n == 0 {
            break;
        }
        p.b.handle_input(start, &buf[..n]);
    }
    events(&mut p.b);
    assert!(p.a.unconfirmed_bytes() > 0);
    let deadline = p.a.poll_timeout().expect("a deadline");
    assert_eq!(
        deadline,
        start + stall,
        "the deadline counts from the write"
    );
    p.a.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!p.a.is_closed(), "not before");
    p.a.handle_timeout(deadline);
    assert_eq!(
        p.a.close_reason(),
        Some(&CloseReason::Local(CloseCode::SendStalled))
    );
}

/// Messages received per second of virtual time on a stream whose receiver is paced by
/// `limit`, with the sender keeping its queue full and the receiver consuming everything at
/// once: `(in the first second, in the next two)`.
fn paced_rate(limit: Option<crate::RateLimit>, size: usize) -> (usize, usize) {
    let receiver = Arc::new(ConnectionConfig {
        initial_window: 64 * 1024,
        max_message_size: 32 * 1024,
        rate_limits: limit.into_iter().map(|l| ("s".to_string(), l)).collect(),
        ..ConnectionConfig::default()
    });
    let mut p = Pair::established_with(config_default(), receiver, &["s"]);
    let s = p.a.stream_id("s").expect("s");
    let start = p.now;
    let (mut first, mut next) = (0, 0);
    while p.now < start + Duration::from_secs(3) {
        while p.a.send(s, Bytes::from(vec![3u8; size])).is_ok() {}
        p.a.handle_timeout(p.now);
        p.b.handle_timeout(p.now);
        p.pump();
        for event in events(&mut p.b) {
            if let Event::Message { stream, data } = event {
                p.b.release(stream, data.len());
                if p.now < start + Duration::from_secs(1) {
                    first += 1;
                } else {
                    next += 1;
                }
            }
        }
        p.pump();
        p.now += Duration::from_millis(5);
    }
    assert!(
        !p.a.is_closed() && !p.b.is_closed(),
        "{:?}",
        p.a.close_reason()
    );
    (first, next)
}

/// A receive rate limit paces the credit we return: a peer sending as fast as it can gets
/// about the limit, in messages a second for small messages and in bytes a second for large
/// ones, and nothing is dropped (every message sent arrives; the sender waits for credit).
#[test]
fn a_rate_limited_stream_paces_the_sender_by_credit_without_dropping() {
    let unpaced = paced_rate(None, 64);
    // 1,000 messages a second (and 10 MB/s, not the bound here).
    let by_messages = paced_rate(Some(crate::RateLimit::new(10_000_000, 1000)), 64);
    // 100 KB a second of 16 KiB messages (1,000 messages a second is not the bound).
    let by_bytes = paced_rate(Some(crate::RateLimit::new(100_000, 1000)), 16 * 1024);
    println!(
        "64 B unpaced: {unpaced:?}; 1,000 msg/s: {by_messages:?}; 100 KB/s of 16 KiB: {by_bytes:?} \
         (first second, next two)"
    );
    assert!(unpaced.1 > 20 * 2000, "unpaced {unpaced:?}");
    // The next two seconds: the sustained rate (the first also holds the window and the burst).
    assert!(
        (1700..=2300).contains(&by_messages.1),
        "1,000 msg/s paced to {by_messages:?}"
    );
    let bytes = by_bytes.1 * (16 * 1024 + 6);
    assert!(
        (170_000..=230_000).contains(&bytes),
        "100 KB/s paced to {bytes} bytes in 2 s ({by_bytes:?})"
    );
}
