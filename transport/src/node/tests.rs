//! Two node cores wired back to back in memory: admission, persistent peers and retries.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use glueberry_crypto::Identity;

use crate::{DialError, PERSISTENT_MAX_DELAY};

use super::*;

/// Refuses every connection in one direction while `refuse` is set; counts what it admitted.
#[derive(Debug, Default)]
struct TestLimits {
    refuse_outbound: AtomicBool,
    admitted: AtomicUsize,
    released: AtomicUsize,
    asked: Mutex<Vec<(PeerId, Direction)>>,
}

impl Admission for TestLimits {
    fn admit(
        &self,
        peer: &PeerId,
        direction: Direction,
        _remote: Option<std::net::IpAddr>,
    ) -> Result<(), CloseCode> {
        self.asked.lock().unwrap().push((*peer, direction));
        if direction == Direction::Outbound && self.refuse_outbound.load(Ordering::Relaxed) {
            return Err(CloseCode::TooManyConnections);
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, _peer: &PeerId, _direction: Direction) {
        self.released.fetch_add(1, Ordering::Relaxed);
    }
}

fn core(seed: u8, limits: Option<Arc<TestLimits>>, backoff: Backoff) -> NodeCore {
    let identity = Identity::from_seed(&[seed; 32]);
    let handshake =
        Arc::new(glueberry_crypto::HandshakeConfig::new(&identity, "node-tests").unwrap());
    let mut config = NodeConfig::new(Arc::new(ConnectionConfig::default()), handshake);
    config.backoff = backoff;
    config.admission = limits.map(|l| l as Arc<dyn Admission>);
    NodeCore::new(config)
}

const ADDR: &str = "10.0.0.2:26656";

/// Carries `a`'s dials to `b` and the bytes both ways until nothing moves; returns the
/// connection pairs made (a's id, b's id).
fn pump(a: &mut NodeCore, b: &mut NodeCore, links: &mut Vec<(ConnId, ConnId)>, now: Instant) {
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..64 {
        let mut moved = false;
        while let Some(action) = a.poll_action() {
            match action {
                Action::Dial { conn, .. } => {
                    let theirs = b.handle_accepted(None, now).expect("accepted");
                    a.handle_dial_result(conn, Ok(()), now);
                    links.push((conn, theirs));
                    moved = true;
                }
                Action::Close { conn, .. } => {
                    if let Some(&(_, theirs)) = links.iter().find(|(ours, _)| *ours == conn) {
                        b.handle_eof(theirs, now);
                    }
                }
                Action::Handoff { .. } => unreachable!("one shard"),
            }
        }
        while let Some(action) = b.poll_action() {
            if let Action::Close { conn, .. } = action
                && let Some(&(ours, _)) = links.iter().find(|(_, theirs)| *theirs == conn)
            {
                a.handle_eof(ours, now);
            }
        }
        for &(ours, theirs) in links.iter() {
            let n = a.poll_transmit(ours, &mut buf);
            if n > 0 {
                b.handle_input(theirs, &buf[..n], now);
                moved = true;
            }
            let n = b.poll_transmit(theirs, &mut buf);
            if n > 0 {
                a.handle_input(ours, &buf[..n], now);
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_dial_our_own_limits_refuse_is_retried_and_a_persistent_peer_is_not_counted() {
    let limits = Arc::new(TestLimits::default());
    limits.refuse_outbound.store(true, Ordering::Relaxed);
    let mut a = core(1, Some(limits.clone()), Backoff::default());
    let mut b = core(2, None, Backoff::default());
    let bob = b.peer_id();
    let mut links = Vec::new();
    let now = Instant::now();
    a.add_peer(bob, Some(ADDR.parse().unwrap()), true);
    a.connect(bob, now).unwrap();
    pump(&mut a, &mut b, &mut links, now);
    // Refused by our own (full) limits: a failed attempt, retried, not given up.
    assert_eq!(a.state(bob), ConnState::Reconnecting);
    let refused = std::iter::from_fn(|| a.poll_event())
        .filter(|e| {
            matches!(
                e,
                NodeEvent::Refused {
                    direction: Direction::Outbound,
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 1);

    // Persistent: the retry is admitted without asking the limits.
    a.set_persistent(bob, true);
    let asked = limits.asked.lock().unwrap().len();
    let retry = a.poll_timeout().expect("a retry is scheduled");
    a.handle_timeout(retry);
    pump(&mut a, &mut b, &mut links, retry);
    assert_eq!(a.state(bob), ConnState::Connected);
    assert_eq!(
        limits.asked.lock().unwrap().len(),
        asked,
        "limits not asked"
    );
    assert_eq!(limits.admitted.load(Ordering::Relaxed), 0);

    // And its end gives back no slot it never took.
    a.disconnect(bob, retry).unwrap();
    assert_eq!(limits.released.load(Ordering::Relaxed), 0);
}

#[test]
fn a_persistent_peer_is_redialled_past_the_attempt_limit_with_a_capped_delay() {
    let backoff = Backoff {
        max_attempts: 2,
        ..Backoff::default()
    };
    let mut a = core(1, None, backoff);
    let ordinary = Identity::from_seed(&[3; 32]).peer_id();
    let validator = Identity::from_seed(&[4; 32]).peer_id();
    let mut now = Instant::now();
    for peer in [ordinary, validator] {
        a.add_peer(peer, Some(ADDR.parse().unwrap()), true);
    }
    a.set_persistent(validator, true);
    for peer in [ordinary, validator] {
        a.connect(peer, now).unwrap();
    }
    // Every dial fails (a partition); run 20 rounds of retries.
    for _ in 0..20 {
        while let Some(action) = a.poll_action() {
            if let Action::Dial { conn, .. } = action {
                a.handle_dial_result(
                    conn,
                    Err(DialError::Connect(std::io::ErrorKind::HostUnreachable)),
                    now,
                );
            }
        }
        let Some(next) = a.poll_timeout() else { break };
        assert!(
            next <= now + PERSISTENT_MAX_DELAY + PERSISTENT_MAX_DELAY / 10,
            "a persistent peer waits at most the cap"
        );
        now = next;
        a.handle_timeout(now);
    }
    assert_eq!(a.state(ordinary), ConnState::Disconnected, "gave up");
    assert_ne!(
        a.state(validator),
        ConnState::Disconnected,
        "never gives up"
    );
}

#[test]
fn an_inbound_peer_that_let_its_handshake_time_out_is_forgotten_after_its_cooldown() {
    let mut a = core(1, None, Backoff::default());
    let mut b = core(2, None, Backoff::default());
    let (alice, bob) = (a.peer_id(), b.peer_id());
    let mut links = Vec::new();
    let now = Instant::now();
    // b dials a; a's application never completes the handshake.
    b.add_peer(alice, Some(ADDR.parse().unwrap()), false);
    b.connect(alice, now).unwrap();
    pump(&mut b, &mut a, &mut links, now);
    assert_eq!(a.state(bob), ConnState::Connected);
    let timed_out = now + Duration::from_secs(31); // the handshake timeout is 30 s
    a.handle_timeout(timed_out);
    assert_eq!(a.state(bob), ConnState::Cooldown);
    assert!(a.knows(bob), "remembered during its cooldown");
    a.handle_timeout(timed_out + Duration::from_secs(61)); // the cooldown is 1 min
    assert_eq!(a.state(bob), ConnState::Disconnected);
    assert!(!a.knows(bob), "an inbound-only peer leaves no entry");
    assert_eq!(a.peer_count(), 0);
}

/// A core that dialled the star's centre, with its links (its id, the centre's).
type Client = (NodeCore, Vec<(ConnId, ConnId)>);

/// `count` cores dialled into one (`b`), each Connected; returns them with their links.
fn star(count: u8, now: Instant) -> (NodeCore, Vec<Client>) {
    let mut b = core(200, None, Backoff::default());
    let bob = b.peer_id();
    let mut clients = Vec::new();
    for seed in 0..count {
        let mut a = core(seed + 1, None, Backoff::default());
        let mut links = Vec::new();
        a.add_peer(bob, Some(ADDR.parse().unwrap()), false);
        a.connect(bob, now).unwrap();
        pump(&mut a, &mut b, &mut links, now);
        assert_eq!(b.state(a.peer_id()), ConnState::Connected);
        clients.push((a, links));
    }
    (b, clients)
}

#[test]
fn a_turn_looks_only_at_the_connections_with_work() {
    let now = Instant::now();
    let (mut b, mut clients) = star(20, now);
    let mut ready = Vec::new();
    b.take_ready(&mut ready);
    assert!(ready.is_empty(), "idle connections have nothing to send");
    let next = b.poll_timeout().expect("keepalive deadlines");
    assert!(next > now, "nothing is due");

    // One client pings (its keepalive is due): only its connection has output at b.
    let (a, links) = &mut clients[7];
    let (ours, theirs) = links[0];
    let later = now + Duration::from_secs(16);
    a.handle_timeout(later);
    let mut buf = vec![0u8; 64 * 1024];
    let n = a.poll_transmit(ours, &mut buf);
    assert!(n > 0, "a keepalive PING");
    b.handle_input(theirs, &buf[..n], now);
    b.take_ready(&mut ready);
    assert_eq!(ready, vec![theirs], "the PONG's connection, and only it");
    ready.clear();
    b.take_ready(&mut ready);
    assert!(ready.is_empty(), "taken once");

    // Traffic does not grow the timer heap: a deadline that moves later keeps its entry.
    let (alice, bob) = (a.peer_id(), b.peer_id());
    a.complete_handshake(bob, &["s"], now).unwrap();
    b.complete_handshake(alice, &["s"], now).unwrap();
    pump(a, &mut b, links, now);
    let stream = a.stream_id(bob, "s").expect("opened");
    let mut delivered = 0;
    for i in 0..1000 {
        let at = now + Duration::from_millis(i);
        a.send(bob, stream, Bytes::from_static(b"vote")).unwrap();
        pump(a, &mut b, links, at);
        while let Some(event) = b.poll_event() {
            if let NodeEvent::Message {
                conn, stream, data, ..
            } = event
            {
                b.release(conn, stream, data.len());
                delivered += 1;
            }
        }
        // Credit goes back 10 ms after it is owed: the busy connection's deadline moves
        // earlier and later all the time.
        if b.poll_timeout().is_some_and(|t| t <= at) {
            b.handle_timeout(at);
        }
        pump(a, &mut b, links, at);
    }
    assert_eq!(delivered, 1000);
    assert!(
        b.conn_timers.len() <= 20,
        "{} timer entries for 20 connections after 1,000 messages",
        b.conn_timers.len()
    );
}

#[test]
fn a_closed_connections_id_does_not_reach_the_one_that_takes_its_slot() {
    let now = Instant::now();
    let (mut b, mut clients) = star(2, now);
    let (a, links) = &mut clients.remove(0);
    let theirs = links[0].1;
    b.disconnect(a.peer_id(), now).unwrap();
    while b.poll_action().is_some() {}
    let (c, _) = &mut clients[0];
    let bob = b.peer_id();
    let mut more = Vec::new();
    let mut d = core(99, None, Backoff::default());
    d.add_peer(bob, Some(ADDR.parse().unwrap()), false);
    d.connect(bob, now).unwrap();
    pump(&mut d, &mut b, &mut more, now);
    let reused = more[0].1;
    assert_eq!(
        reused.slot(),
        theirs.slot(),
        "the freed slot is taken again"
    );
    assert_ne!(reused, theirs);
    let refused = b.send_on(
        theirs,
        crate::StreamId::from_index(0),
        Bytes::from_static(b"x"),
    );
    assert!(
        matches!(refused, Err((NodeError::NotConnected, _))),
        "the stale id is refused"
    );
    assert_eq!(b.state(c.peer_id()), ConnState::Connected);
    assert_eq!(b.state(d.peer_id()), ConnState::Connected);
}
