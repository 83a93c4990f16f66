//! Budgets (issue 24): what one authenticated peer can make the node hold is bounded by the
//! node's own limits, not by what the peer advertises, and an honest peer beside it keeps being
//! served. Each attacker speaks the wire protocol by hand with a valid identity
//! (`common::raw`); each test prints the node's resident memory and what it accounts to the
//! attacker, and an honest peer's request round trips before and during the attack.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

mod common;
use common::raw::{Raw, default_settings};
use common::rss_kib;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::PeerId;
use glueberry::transport::frame::{DATA_FIRST, DATA_LAST, Frame, Settings};
use glueberry::transport::{CloseCode, CloseReason, ConnState, ConnectionConfig};
use glueberry::{Event, EventFilter, Node, NodeSendError};

const NET: &str = "budget-test";
/// The send-stall deadline of the node under attack (60 s by default; short here).
const STALL: Duration = Duration::from_secs(2);
const T: Duration = Duration::from_secs(10);
/// The node's streams: it feeds peers on `feed`, echoes `echo`, answers `kv` requests and only
/// calls on `calls`.
const STREAMS: &[&str] = &["feed", "echo", "kv", "calls"];

/// The node under attack and the threads that serve it as an application would: every
/// handshake completed, echoes and answers sent with the calls that never wait on one peer.
struct Server {
    node: Node,
}

impl Server {
    fn start() -> Server {
        Self::start_with(STALL, 1 << 30)
    }

    /// With this send-stall deadline and node-wide send budget.
    fn start_with(stall: Duration, send_budget: u64) -> Server {
        Self::from_config(
            common::loopback_config(NET)
                .connection(ConnectionConfig {
                    send_stall_timeout: stall,
                    ..ConnectionConfig::default()
                })
                .message_buffer(10_000)
                .send_budget(send_budget),
        )
    }

    /// Like `start`, but echoing on the shard's thread (a message handler answering with
    /// `try_send`, as `glueberry-perf server` does), not on a thread of the application's.
    fn start_inline() -> Server {
        let node: Arc<std::sync::OnceLock<Node>> = Arc::default();
        let handler: glueberry::Handler = {
            let node = node.clone();
            Arc::new(move |peer, stream, data| {
                if stream == "echo"
                    && let Some(node) = node.get()
                {
                    let _ = node.try_send(*peer, "echo", data.clone());
                }
            })
        };
        let config = common::loopback_config(NET)
            .connection(ConnectionConfig {
                send_stall_timeout: STALL,
                ..ConnectionConfig::default()
            })
            .message_buffer(10_000)
            .handler(handler);
        let server = Self::from_config(config);
        node.set(server.node.clone()).ok().unwrap();
        server
    }

    fn from_config(config: glueberry::NodeConfig) -> Server {
        let node = Node::start(config).unwrap();
        let events = node.subscribe(EventFilter::default(), 10_000);
        let n = node.clone();
        std::thread::spawn(move || {
            while let Some(event) = events.recv_blocking() {
                if let Event::State {
                    peer,
                    state: ConnState::Connected,
                    ..
                } = event
                {
                    let _ = n.complete_handshake(peer, STREAMS);
                }
            }
        });
        let mut echo = node.messages_on("echo").unwrap();
        let n = node.clone();
        std::thread::spawn(move || {
            while let Some(m) = echo.recv_blocking() {
                let _ = n.try_send(m.peer, "echo", m.data);
            }
        });
        let mut requests = node.requests("kv").unwrap();
        std::thread::spawn(move || {
            futures::executor::block_on(async {
                while let Some(request) = requests.recv().await {
                    let data = request.data.clone();
                    let _ = request.try_respond(data);
                }
            });
        });
        Server { node }
    }
}

/// An honest peer of the server, Established and Ready on every stream.
fn honest(server: &Server) -> Node {
    let node = Node::start(common::loopback_config(NET)).unwrap();
    let peer = server.node.peer_id();
    let events = node.subscribe(EventFilter::all().peer(peer), 100);
    node.connect(peer, server.node.listen_addr()).unwrap();
    let deadline = Instant::now() + T;
    loop {
        assert!(Instant::now() < deadline, "the honest peer is not Ready");
        match events.recv_blocking() {
            Some(Event::State {
                state: ConnState::Connected,
                ..
            }) => node.complete_handshake(peer, STREAMS).unwrap(),
            Some(Event::Ready { .. }) => return node,
            _ => {}
        }
    }
}

/// Round trips of `kv` requests from `honest` for `duration` (at least `min` of them), and
/// how many failed.
fn round_trips(honest: &Node, server: PeerId, duration: Duration, min: usize) -> Samples {
    let end = Instant::now() + duration;
    let mut samples = Samples::default();
    while Instant::now() < end || samples.times.len() + samples.failed < min {
        let start = Instant::now();
        let answer = futures::executor::block_on(honest.request(
            server,
            "kv",
            Bytes::from_static(b"get height"),
            Duration::from_secs(2),
        ));
        match answer {
            Ok(_) => samples.times.push(start.elapsed()),
            Err(e) => {
                if samples.failed == 0 {
                    println!("an honest request failed: {e:?}");
                }
                samples.failed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    samples
}

/// None of the honest peer's requests failed, before or during.
fn served(before: &Samples, during: &Samples) {
    println!("honest before: {}", before.describe());
    println!("honest during: {}", during.describe());
    assert_eq!(before.failed + during.failed, 0, "honest requests failed");
    assert!(!during.times.is_empty());
}

#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    failed: usize,
}

impl Samples {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.times.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!(
            "{} round trips, p50 {:?}, p99 {:?}, {} failed",
            self.times.len(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.failed
        )
    }
}

/// The honest peer was served during the attack: none of its requests failed, and (where the
/// attack is on memory, not CPU) its p99 stayed within 3× the p99 before, plus a floor for a
/// noisy machine. (A flood that costs the node CPU is not yet shared fairly between peers:
/// SECURITY.md, "Open".)
fn served_alike(before: &Samples, during: &Samples) {
    served(before, during);
    let limit = before.percentile(0.99) * 3 + Duration::from_millis(20);
    assert!(
        during.percentile(0.99) <= limit,
        "honest p99 {:?} during the attack, {:?} before",
        during.percentile(0.99),
        before.percentile(0.99)
    );
}

/// The start every attack shares: the honest peer's round trips before it, then a greedy
/// attacker connected, and the node's RSS once it is.
fn before_attack(server: &Server, honest: &Node) -> (Samples, Raw, HashMap<String, u16>, u64) {
    let before = round_trips(
        honest,
        server.node.peer_id(),
        Duration::from_millis(500),
        50,
    );
    let (raw, ids) = attacker(server, greedy());
    (before, raw, ids, rss_kib())
}

/// SETTINGS granting the largest windows the wire allows.
fn greedy() -> Settings {
    Settings {
        initial_window: u32::MAX,
        connection_window: u32::MAX,
        ..default_settings()
    }
}

/// Connects an attacker that opens every stream, waits until the node is Established with it
/// and has accepted its streams, and accepts each of the node's streams with `increment` of
/// credit. Returns the node's stream ids by name.
fn attacker(server: &Server, settings: Settings) -> (Raw, HashMap<String, u16>) {
    let mut raw = Raw::connect_with(&server.node, NET, STREAMS, settings);
    let mut node_streams = HashMap::new();
    let mut accepted = 0;
    let mut answers = Vec::new();
    let deadline = Instant::now() + T;
    while node_streams.len() < STREAMS.len() || accepted < STREAMS.len() {
        assert!(
            Instant::now() < deadline,
            "the node did not open its streams"
        );
        let open = raw.read_frames(Duration::from_millis(50), |frame| {
            match frame {
                Frame::Open { stream, name } => {
                    node_streams.insert(String::from_utf8_lossy(name).to_string(), *stream);
                    answers.push(*stream);
                }
                Frame::Credit { stream, .. } if (1..=STREAMS.len() as u16).contains(stream) => {
                    accepted += 1;
                }
                _ => {}
            }
            true
        });
        assert!(
            open,
            "the node closed the attacker's connection during setup"
        );
        for stream in answers.drain(..) {
            raw.send(&[Frame::Credit {
                stream,
                increment: settings.initial_window,
            }])
            .unwrap();
        }
    }
    (raw, node_streams)
}

/// What the node accounts to `peer` on `stream`: queued and written-but-unconfirmed bytes.
fn held(node: &Node, peer: PeerId, stream: &str) -> (u64, u64) {
    futures::executor::block_on(node.peer_stats(peer))
        .and_then(|stats| stats.streams.into_iter().find(|s| s.name == stream))
        .map_or((0, 0), |s| (s.queued_bytes, s.unconfirmed_bytes))
}

/// Feeds `peer` 64 KiB messages on `feed` as fast as the node takes them (`send` waits for
/// room), until `stop`; returns how many were accepted.
fn feed(node: &Node, peer: PeerId, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let node = node.clone();
    std::thread::spawn(move || {
        let block = Bytes::from(vec![7u8; 64 * 1024]);
        let mut accepted = 0;
        while !stop.load(Ordering::Relaxed) {
            let sent = futures::executor::block_on(node.send_timeout(
                peer,
                "feed",
                block.clone(),
                Duration::from_millis(100),
            ));
            match sent {
                Ok(()) => accepted += 1,
                Err(NodeSendError::TimedOut) => {}
                Err(_) => break,
            }
        }
        accepted
    })
}

/// Runs an attack until the node cuts the attacker (or `limit` passes), sampling the node's
/// memory and what it holds for the attacker; the honest peer asks meanwhile.
struct Watch {
    peak_rss: u64,
    peak_held: (u64, u64),
    cut_after: Option<Duration>,
    honest: Samples,
}

fn watch(server: &Server, peer: PeerId, honest: &Node, limit: Duration) -> Watch {
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (node, done) = (server.node.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut peak_rss, mut peak_held) = (0u64, (0u64, 0u64));
            while !done.load(Ordering::Relaxed) {
                peak_rss = peak_rss.max(rss_kib());
                let (q, u) = held(&node, peer, "feed");
                let (eq, eu) = held(&node, peer, "echo");
                let (cq, cu) = held(&node, peer, "calls");
                let (kq, ku) = held(&node, peer, "kv");
                peak_held.0 = peak_held.0.max(q + eq + cq + kq);
                peak_held.1 = peak_held.1.max(u + eu + cu + ku);
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak_rss, peak_held)
        })
    };
    // The cut is seen here (between round trips), not by the sampler, which may stop first.
    let mut cut_after = None;
    let mut samples = Samples::default();
    while start.elapsed() < limit {
        if server.node.state(peer) != ConnState::Established {
            cut_after = Some(start.elapsed());
            break;
        }
        let more = round_trips(honest, server.node.peer_id(), Duration::from_millis(20), 1);
        samples.times.extend(more.times);
        samples.failed += more.failed;
    }
    done.store(true, Ordering::Relaxed);
    let (peak_rss, peak_held) = sampler.join().unwrap();
    Watch {
        peak_rss,
        peak_held,
        cut_after,
        honest: samples,
    }
}

/// (a) and (b): a peer that grants 2^32 - 1 windows, reads everything and never confirms (or
/// returns 7 bytes of credit every 300 ms): the node holds at most our windows for it, however
/// much the application wants to send, and cuts it at the send-stall deadline.
fn never_confirms(trickle: bool) {
    let _alone = common::alone();
    let server = Server::start();
    let honest = honest(&server);
    let (before, mut raw, ids, rss_before) = before_attack(&server, &honest);
    let peer = raw.peer;
    let feed_id = ids["feed"];
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed(&server.node, peer, stop.clone());
    // The attacker reads everything (its TCP window stays open) and confirms nothing, or a
    // trickle.
    let reader = std::thread::spawn(move || {
        let mut last = Instant::now();
        while raw.read_frames(Duration::from_millis(50), |_| true) {
            if trickle && last.elapsed() >= Duration::from_millis(300) {
                last = Instant::now();
                let credit = Frame::Credit {
                    stream: feed_id,
                    increment: 7,
                };
                if raw.send(&[credit]).is_err() {
                    break;
                }
            }
        }
    });
    let seen = watch(&server, peer, &honest, STALL * 4);
    stop.store(true, Ordering::Relaxed);
    let accepted = feeder.join().unwrap();
    reader.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = rss_kib();
    let window = ConnectionConfig::default().initial_window;
    println!(
        "{}: node RSS {rss_before} KiB -> peak {} KiB -> {rss_after} KiB after; held for the \
         attacker at most {} KiB queued, {} KiB written and unconfirmed (our stream window {} \
         KiB, the attacker's {} KiB); {accepted} messages of 64 KiB accepted; cut after {:?} \
         (send-stall deadline {STALL:?})",
        if trickle {
            "credit trickled (7 B every 300 ms)"
        } else {
            "no credit returned"
        },
        seen.peak_rss,
        seen.peak_held.0 / 1024,
        seen.peak_held.1 / 1024,
        window / 1024,
        u32::MAX / 1024,
        seen.cut_after
    );
    assert!(
        seen.peak_held.1 <= u64::from(window) + 64 * 1024,
        "written ahead of confirmation beyond our window"
    );
    let cut = seen.cut_after.expect("the attacker was never cut");
    assert!(cut >= STALL / 2 && cut <= STALL + Duration::from_secs(2));
    // The route bound (16 MiB of queued and unconfirmed messages) and our window, with slack
    // for the honest peer's node in the same process and the allocator.
    assert!(
        seen.peak_rss < rss_before + 64 * 1024,
        "the node grew by {} KiB",
        seen.peak_rss - rss_before
    );
    // (j) The attacker gone, the node is back within the documented slack of where it was
    // (SECURITY.md: 16 MiB, what the allocator may keep of freed queues).
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_after} KiB after the attacker left, {rss_before} KiB before"
    );
    served_alike(&before, &seen.honest);
    honest.stop_blocking();
    server.node.stop_blocking();
}

#[test]
fn a_peer_granting_the_largest_windows_that_never_confirms_is_held_to_our_window_and_cut() {
    never_confirms(false);
}

#[test]
fn credit_trickled_back_does_not_keep_a_non_confirming_peer_alive() {
    never_confirms(true);
}

/// (c) and (e): 1-byte messages the node echoes, each in a record padded with PINGs and sent
/// alone (so each arrives in a receive of its own), echoes never confirmed: each held echo
/// pins about its own size, not a receive buffer; closing the connection then costs little.
#[test]
fn padded_tiny_echoes_are_held_at_about_their_size_and_the_close_is_cheap() {
    let _alone = common::alone();
    let server = Server::start();
    let honest = honest(&server);
    let (before, mut raw, _, rss_before) = before_attack(&server, &honest);
    let peer = raw.peer;
    let echo_stream = 2; // the attacker's id for "echo" (its second OPEN)
    let pings: Vec<Frame<'_>> = (0..1500u64).map(Frame::Ping).collect();
    const ECHOES: usize = 2000;
    let start = Instant::now();
    for i in 0..ECHOES {
        let mut frames = pings.clone();
        frames.push(Frame::Data {
            stream: echo_stream,
            flags: DATA_FIRST | DATA_LAST,
            total_len: None,
            payload: b"x",
        });
        raw.send(&frames).unwrap();
        if i % 64 == 0 {
            raw.drain(); // read what the node sends (PONGs, echoes), confirm nothing
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    raw.drain();
    let sent_in = start.elapsed();
    // All echoed and held unconfirmed (the stall deadline has not come yet).
    let deadline = Instant::now() + T;
    let mut unconfirmed = 0;
    while Instant::now() < deadline {
        raw.drain();
        let stats = futures::executor::block_on(server.node.peer_stats(peer));
        unconfirmed = stats
            .and_then(|s| s.streams.into_iter().find(|s| s.name == "echo"))
            .map_or(0, |s| s.unconfirmed_messages);
        if unconfirmed as usize >= ECHOES || server.node.state(peer) != ConnState::Established {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let rss_held = rss_kib();
    let during = round_trips(
        &honest,
        server.node.peer_id(),
        Duration::from_millis(300),
        20,
    );
    // (e) The close of a connection at its budget: cheap, no spike.
    let closed = server.node.subscribe(EventFilter::all().peer(peer), 100);
    let close_start = Instant::now();
    server.node.disconnect(peer).unwrap();
    let mut handed_back = 0;
    let mut closed_in = None;
    while let Some(event) = closed.recv_blocking() {
        match event {
            Event::Undelivered {
                unsent,
                unconfirmed,
                ..
            } => handed_back += unsent.len() + unconfirmed.len(),
            Event::State {
                state: ConnState::Disconnected,
                ..
            } => {
                closed_in = Some(close_start.elapsed());
                break;
            }
            _ => {}
        }
        assert!(close_start.elapsed() < T, "the connection did not close");
    }
    let rss_closed = rss_kib();
    let closed_in = closed_in.unwrap();
    println!(
        "{ECHOES} 1-byte echoes, each in a record of 1,500 PINGs (13.5 KB) sent alone in {:?}: \
         {unconfirmed} held unconfirmed; node RSS {rss_before} KiB -> {rss_held} KiB ({:+} KiB; \
         a 256 KiB receive buffer pinned by each would be {} MiB); closed in {closed_in:?}, \
         {handed_back} handed back, RSS then {rss_closed} KiB",
        sent_in,
        rss_held as i64 - rss_before as i64,
        ECHOES / 4
    );
    assert!(unconfirmed > 0, "the node echoed nothing");
    assert!(
        rss_held < rss_before + 32 * 1024,
        "held echoes pinned receive buffers"
    );
    assert!(rss_closed < rss_held + 8 * 1024, "the close spiked memory");
    assert!(
        closed_in < Duration::from_millis(500),
        "the close took {closed_in:?}"
    );
    served_alike(&before, &during);
    honest.stop_blocking();
    server.node.stop_blocking();
}

/// (d): REQUESTs on a stream the node only calls on are answered REFUSED by its shard (no
/// application code involved); a peer that floods them and never confirms the refusals is
/// held to our budget and cut at the deadline.
#[test]
fn a_flood_of_requests_on_a_call_only_stream_is_held_to_our_budget() {
    let _alone = common::alone();
    let server = Server::start();
    let honest = honest(&server);
    // The node calls on `calls`, which makes it a stream it only calls on (the honest peer
    // serves nothing there and does not answer: the call times out).
    let called = futures::executor::block_on(server.node.request(
        honest.peer_id(),
        "calls",
        Bytes::from_static(b"?"),
        Duration::from_millis(100),
    ));
    assert!(called.is_err(), "{called:?}");
    // The attacker's id for "calls" is 4.
    let (sent, seen, rss_before) =
        flood_requests(&server, &honest, 4, "a call-only stream (refusals)");
    assert!(sent > 40_000, "the flood did not get going");
    let window = ConnectionConfig::default().initial_window;
    assert!(seen.peak_held.1 <= u64::from(window));
    assert!(seen.cut_after.is_some(), "the attacker was never cut");
    assert!(
        seen.peak_rss < rss_before + 64 * 1024,
        "the node grew by {} KiB",
        seen.peak_rss - rss_before
    );
    honest.stop_blocking();
    server.node.stop_blocking();
}

/// Sends one record of 2,000 REQUESTs on `stream` (the attacker's id), ids from `first`.
fn send_requests(raw: &mut Raw, stream: u16, first: u64) -> std::io::Result<()> {
    let mut request = [0u8; 9];
    request[0] = 1; // REQUEST (PROTOCOL.md §7)
    let ids: Vec<[u8; 9]> = (0..2000u64)
        .map(|i| {
            request[1..].copy_from_slice(&(first + i).to_be_bytes());
            request
        })
        .collect();
    let frames: Vec<Frame<'_>> = ids
        .iter()
        .map(|id| Frame::Data {
            stream,
            flags: DATA_FIRST | DATA_LAST,
            total_len: None,
            payload: id,
        })
        .collect();
    raw.send(&frames)
}

/// A flood of REQUESTs on the attacker's stream `stream` (2,000 a record), reading what the node
/// sends and confirming none of it, watched until the node cuts it (at most four stall
/// deadlines): how many were sent, what the node held meanwhile, and its RSS before (KiB). Paced by the reads (20 ms
/// between records): enough to fill what the node will hold for it many times over before the
/// deadline.
fn flood_requests(server: &Server, honest: &Node, stream: u16, what: &str) -> (u64, Watch, u64) {
    let (before, mut raw, _, rss_before) = before_attack(server, honest);
    let peer = raw.peer;
    let flood = std::thread::spawn(move || {
        let mut sent = 0u64;
        while send_requests(&mut raw, stream, sent).is_ok() {
            sent += 2000;
            if !raw.read_frames(Duration::from_millis(20), |_| true) {
                break;
            }
        }
        sent
    });
    let seen = watch(server, peer, honest, STALL * 4);
    let sent = flood.join().unwrap();
    println!(
        "{sent} REQUESTs on {what}, never confirmed: node RSS {rss_before} KiB -> peak {} KiB; \
         held for the attacker at most {} KiB queued, {} KiB unconfirmed; cut after {:?}",
        seen.peak_rss,
        seen.peak_held.0 / 1024,
        seen.peak_held.1 / 1024,
        seen.cut_after
    );
    served(&before, &seen.honest);
    (sent, seen, rss_before)
}

/// `rounds` rounds of one `kv` request from each honest peer in turn: the round trips, and how
/// many failed.
fn request_rounds(honest: &[Node], server: PeerId, rounds: usize) -> Samples {
    let mut samples = Samples::default();
    for _ in 0..rounds {
        for peer in honest {
            let start = Instant::now();
            let answer = futures::executor::block_on(peer.request(
                server,
                "kv",
                Bytes::from_static(b"get height"),
                Duration::from_secs(2),
            ));
            match answer {
                Ok(_) => samples.times.push(start.elapsed()),
                Err(_) => samples.failed += 1,
            }
        }
    }
    samples
}

/// (f), the request server: one requester that withholds the credit for its answers (20,000
/// requests, more answers than its route holds, none confirmed, nothing read) beside ten honest
/// requesters. The server answers with `try_respond` on one application thread, as
/// `examples/rpc.rs` does, so nothing waits on the staller: every honest request is answered,
/// the p99 within 3× of before.
#[test]
fn a_requester_withholding_credit_leaves_ten_honest_requesters_served() {
    let _alone = common::alone();
    // A long stall deadline: the staller stays connected while the honest peers are measured.
    let server = Server::start_with(Duration::from_secs(60), 1 << 30);
    let honest: Vec<Node> = (0..10).map(|_| honest(&server)).collect();
    let before = request_rounds(&honest, server.node.peer_id(), 20);
    let rss_before = rss_kib();
    let (mut raw, _) = attacker(&server, greedy());
    let peer = raw.peer;
    for batch in 0..10u64 {
        send_requests(&mut raw, 3, batch * 2000).unwrap(); // 3: the attacker's id for "kv"
    }
    // Until the server has answered (or refused to queue answers for) all of them.
    let mut last = (u64::MAX, u64::MAX);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = held(&server.node, peer, "kv");
        if now == last {
            break;
        }
        last = now;
    }
    // Every request answered in each measurement; the p99 within 3x of before in one of three
    // (two cores shared by the server, eleven nodes and the test are noisy).
    let mut ratios = Vec::new();
    for attempt in 1..=3 {
        let during = request_rounds(&honest, server.node.peer_id(), 20);
        println!(
            "attempt {attempt}: a requester withholding credit ({} KiB queued, {} KiB unconfirmed \
             for it; RSS {rss_before} -> {} KiB), still {:?}; ten honest requesters before: {}; \
             beside it: {}",
            last.0 / 1024,
            last.1 / 1024,
            rss_kib(),
            server.node.state(peer),
            before.describe(),
            during.describe()
        );
        assert!(last.0 + last.1 > 0, "the staller's answers were not held");
        served(&before, &during);
        ratios.push(during.percentile(0.99).as_secs_f64() / before.percentile(0.99).as_secs_f64());
        if ratios[ratios.len() - 1] <= 3.0 {
            break;
        }
    }
    assert!(
        ratios.iter().any(|&r| r <= 3.0),
        "honest p99 beside the staller ÷ before, three times: {ratios:.2?}"
    );
    drop(raw);
    for node in honest {
        node.stop_blocking();
    }
    server.node.stop_blocking();
}

/// (f), the request server: a requester that floods a served stream and never confirms the
/// answers fills only its own route (the server answers with `try_respond`, as
/// `examples/rpc.rs` does, so its loop never waits on it) and is cut at the deadline; the
/// honest requester beside it is answered throughout.
#[test]
fn a_requester_that_never_confirms_answers_does_not_stop_the_server_answering_others() {
    let _alone = common::alone();
    let server = Server::start();
    let honest = honest(&server);
    // The attacker's id for "kv" is 3.
    let (sent, seen, _) = flood_requests(&server, &honest, 3, "a served stream (answers)");
    assert!(sent > 40_000, "the flood did not get going");
    assert!(seen.cut_after.is_some(), "the attacker was never cut");
    honest.stop_blocking();
    server.node.stop_blocking();
}

/// Waits for the first peer the node disconnects (seen on `events`), with the honest peer's
/// round trips meanwhile: which peer, why, and the round trips.
fn first_cut(
    server: &Server,
    honest: &Node,
    events: &glueberry::Subscription,
) -> ((PeerId, Option<CloseReason>), Samples) {
    let deadline = Instant::now() + T;
    let mut honest_during = Samples::default();
    loop {
        assert!(Instant::now() < deadline, "no peer was cut over the budget");
        let more = round_trips(honest, server.node.peer_id(), Duration::from_millis(50), 1);
        honest_during.times.extend(more.times);
        honest_during.failed += more.failed;
        while let Some(event) = events.try_recv() {
            if let Event::State {
                peer,
                state: ConnState::Disconnected,
                reason,
                ..
            } = event
            {
                return ((peer, reason), honest_during);
            }
        }
    }
}

/// Sends on each of `streams` the first 992 KiB of a 1 MiB message and never its end: the node
/// holds them in reassembly (paid for by the attacker's credit, within our windows). Fails
/// once the node closes the connection (the budget cuts a peer while it sends).
fn begin_and_never_finish(raw: &mut Raw, streams: &[u16]) -> std::io::Result<()> {
    let piece = vec![7u8; 32 * 1024];
    for &stream in streams {
        raw.send(&[Frame::Data {
            stream,
            flags: DATA_FIRST,
            total_len: Some(1 << 20),
            payload: &piece,
        }])?;
        for _ in 0..30 {
            raw.send(&[Frame::Data {
                stream,
                flags: 0,
                total_len: None,
                payload: &piece,
            }])?;
        }
    }
    Ok(())
}

/// The node-wide receive budget: two peers that begin messages and never finish them, one on
/// four streams (3.9 MiB held), one on one (1 MiB), beside an honest one. Past the budget (3 MiB
/// here) the one whose messages the node holds most is cut with `OverBudget` — not the smaller
/// one, not the honest one — and what the node holds falls back within the budget.
#[test]
fn over_the_node_receive_budget_the_peer_holding_the_most_is_cut() {
    let _alone = common::alone();
    const BUDGET: u64 = 3 << 20;
    let server = Server::from_config(
        common::loopback_config(NET)
            .message_buffer(10_000)
            .receive_budget(BUDGET),
    );
    let honest = honest(&server);
    let before = round_trips(
        &honest,
        server.node.peer_id(),
        Duration::from_millis(300),
        30,
    );
    let (mut small, _) = attacker(&server, greedy());
    let (mut large, _) = attacker(&server, greedy());
    let (small_peer, large_peer) = (small.peer, large.peer);
    let events = server.node.subscribe(EventFilter::default(), 10_000);
    begin_and_never_finish(&mut small, &[1]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        server.node.state(small_peer),
        ConnState::Established,
        "1 MiB held is within the budget"
    );
    let started = Instant::now();
    // Cut on the way, most likely (3.9 MiB against a budget of 3 with 1 held): its sends may
    // fail, which is the point.
    let _ = begin_and_never_finish(&mut large, &[1, 2, 3, 4]);
    let (cut, honest_during) = first_cut(&server, &honest, &events);
    let (peer, reason) = cut;
    println!(
        "node receive budget {} MiB: cut {:.0?} after the large peer began: {} with {:?}; the \
         small one (1 MiB held) {:?}, the honest one {:?}",
        BUDGET >> 20,
        started.elapsed(),
        if peer == large_peer {
            "the large peer"
        } else {
            "ANOTHER peer"
        },
        reason,
        server.node.state(small_peer),
        server.node.state(honest.peer_id()),
    );
    assert_eq!(peer, large_peer, "the peer holding the most is the one cut");
    assert_eq!(reason, Some(CloseReason::Local(CloseCode::OverBudget)));
    assert_eq!(server.node.state(small_peer), ConnState::Established);
    assert_eq!(server.node.state(honest.peer_id()), ConnState::Established);
    served(&before, &honest_during);
    drop(small);
    drop(large);
    honest.stop_blocking();
    server.node.stop_blocking();
}

/// The node-wide budget: two peers that never confirm, one fed far more than the other, beside
/// an honest one. When what the node holds for them all passes its budget (8 MiB here), the
/// one holding the most is cut with `OverBudget` — not the smaller one, not the honest one.
#[test]
fn over_the_node_budget_the_peer_holding_the_most_is_cut() {
    let _alone = common::alone();
    const BUDGET: u64 = 8 << 20;
    let server = Server::start_with(Duration::from_secs(60), BUDGET);
    let honest = honest(&server);
    let before = round_trips(
        &honest,
        server.node.peer_id(),
        Duration::from_millis(300),
        30,
    );
    let (small, _) = attacker(&server, greedy());
    let (large, _) = attacker(&server, greedy());
    let (small_peer, large_peer) = (small.peer, large.peer);
    let events = server.node.subscribe(EventFilter::default(), 10_000);
    // The small one gets 1 MiB and keeps it unconfirmed.
    for _ in 0..16 {
        futures::executor::block_on(server.node.send(
            small_peer,
            "feed",
            Bytes::from(vec![1u8; 64 * 1024]),
        ))
        .unwrap();
    }
    let readers: Vec<_> = [small, large]
        .into_iter()
        .map(|mut raw| {
            std::thread::spawn(
                move || while raw.read_frames(Duration::from_millis(50), |_| true) {},
            )
        })
        .collect();
    // The large one is fed as fast as its route allows (16 MiB, twice the node's budget).
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed(&server.node, large_peer, stop.clone());
    let (cut, honest_during) = first_cut(&server, &honest, &events);
    stop.store(true, Ordering::Relaxed);
    let accepted = feeder.join().unwrap();
    let (peer, reason) = cut;
    println!(
        "node budget {} MiB: {accepted} × 64 KiB accepted for the large peer; cut: {} with {:?}; \
         the small one (1 MiB held) {:?}, the honest one {:?}",
        BUDGET >> 20,
        if peer == large_peer {
            "the large peer"
        } else {
            "ANOTHER peer"
        },
        reason,
        server.node.state(small_peer),
        server.node.state(honest.peer_id()),
    );
    assert_eq!(peer, large_peer, "the peer holding the most is the one cut");
    assert_eq!(reason, Some(CloseReason::Local(CloseCode::OverBudget)));
    assert_eq!(server.node.state(small_peer), ConnState::Established);
    assert_eq!(server.node.state(honest.peer_id()), ConnState::Established);
    served(&before, &honest_during);
    server.node.disconnect(small_peer).unwrap();
    for reader in readers {
        reader.join().unwrap();
    }
    honest.stop_blocking();
    server.node.stop_blocking();
}

/// (h) A handshake flood from many network groups (one half-open socket from each of 100 /24s,
/// the kind that costs an attacker nothing) fills what the node lets strangers have of its
/// pending-handshake table; a known peer (its address is a persistent peer's) that connects
/// during the flood still gets a slot and is Established at once. (Before the table kept room
/// for known peers, the flood filled all of it and the known peer was refused until the
/// flood's handshakes timed out, 10 s later.)
#[test]
fn a_handshake_flood_from_many_networks_does_not_keep_a_known_peer_out() {
    let _alone = common::alone();
    const TABLE: usize = 64;
    let server = Server::from_config(
        common::loopback_config(NET).pending_handshakes(TABLE, Duration::from_secs(10)),
    );
    // The validator's address is known to the node (a persistent peer it dials: nothing
    // listens there yet, so those dials fail; what matters is that 127.0.0.1 is known).
    let identity = glueberry::crypto::Identity::generate().unwrap();
    let validator_id = identity.peer_id();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    server
        .node
        .add_persistent_peer(validator_id, closed_addr)
        .unwrap();
    // The flood: one socket from each of 100 /24s (127.2.i.1), connected and silent.
    let target = server.node.listen_addr();
    let mut flood = Vec::new();
    for i in 0..100u8 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let source = std::net::SocketAddr::from(([127, 2, i, 1], 0));
        socket.bind(&source.into()).unwrap();
        if socket.connect(&target.into()).is_ok() {
            flood.push(socket);
        }
    }
    // Let the node accept them all.
    std::thread::sleep(Duration::from_millis(300));
    // The validator connects from 127.0.0.1 during the flood.
    let validator =
        Node::start(glueberry::NodeConfig::new(identity, NET, common::any_port()).shards(1))
            .unwrap();
    let events = validator.subscribe(EventFilter::all().peer(server.node.peer_id()), 100);
    let start = Instant::now();
    validator
        .connect(server.node.peer_id(), server.node.listen_addr())
        .unwrap();
    let mut established = None;
    while established.is_none() && start.elapsed() < Duration::from_secs(5) {
        match events.try_recv() {
            Some(Event::State {
                state: ConnState::Connected,
                ..
            }) => validator
                .complete_handshake(server.node.peer_id(), STREAMS)
                .unwrap(),
            Some(Event::Ready { .. }) => established = Some(start.elapsed()),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    println!(
        "{} half-open sockets from 100 /24s against a table of {TABLE} pending handshakes: \
         the known peer Established and Ready after {established:?}",
        flood.len()
    );
    let established = established.expect("the known peer never got in during the flood");
    assert!(established < Duration::from_secs(1), "{established:?}");
    drop(flood);
    validator.stop_blocking();
    server.node.stop_blocking();
}

/// (g) Four connections flooding packed 1-byte messages (each record 4,000 of them) that the
/// application consumes (echoes it cannot send back are refused by `try_send`, so the
/// attackers' credit keeps coming back): the node's CPU goes to them, and the honest peer's
/// requests are still all answered.
/// Puts the calling thread at the lowest scheduling priority (nice 19). An attacker runs on its
/// own machine; here it shares this one's two cores with the node and the honest peer, and at
/// the same priority what the test would measure is how the kernel shares CPUs between busy
/// threads (a woken honest thread waiting up to a few ms behind flooding ones: `perf sched
/// latency`), not how the node shares its shard between connections. The node itself runs at
/// normal priority: what it spends on the attacker is still spent beside the honest peer.
fn attacker_cpu_is_not_ours() {
    // SAFETY: gettid and setpriority take no pointers; on Linux PRIO_PROCESS with a thread id
    // sets that thread's nice value.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    assert_eq!(
        result,
        0,
        "setpriority: {}",
        std::io::Error::last_os_error()
    );
}

/// Floods the node's `feed` stream (the attacker's stream 1; the node takes its messages and
/// answers nothing) with records of 4,000 1-byte messages as fast as the node's credit allows:
/// a peer that breaks no rule, so it is never cut, and costs the node the most per byte it
/// sends. Returns how many messages it sent.
fn flood_within_credit(raw: &mut Raw, stop: &AtomicBool) -> u64 {
    const BATCH: u64 = 4000;
    const FEED: u16 = 1;
    // A message's cost: its byte and its DATA header (PROTOCOL.md §5.4).
    let cost = BATCH * (1 + glueberry::transport::frame::DATA_HEADER_LEN as u64);
    let defaults = ConnectionConfig::default();
    let mut stream = u64::from(defaults.initial_window);
    let mut connection = u64::from(defaults.connection_window);
    let frames: Vec<Frame<'_>> = (0..BATCH)
        .map(|_| Frame::Data {
            stream: FEED,
            flags: DATA_FIRST | DATA_LAST,
            total_len: None,
            payload: b"x",
        })
        .collect();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        while stream < cost || connection < cost {
            let open = raw.read_frames(Duration::from_millis(1), |frame| {
                match frame {
                    Frame::Credit {
                        stream: FEED,
                        increment,
                    } => stream += u64::from(*increment),
                    Frame::Credit {
                        stream: 0xFFFF,
                        increment,
                    } => connection += u64::from(*increment),
                    _ => {}
                }
                stream < cost || connection < cost
            });
            if !open || stop.load(Ordering::Relaxed) {
                return sent;
            }
        }
        if raw.send(&frames).is_err() {
            return sent;
        }
        stream -= cost;
        connection -= cost;
        sent += BATCH;
    }
    sent
}

#[test]
fn four_connections_flooding_tiny_messages_leave_an_honest_peer_served() {
    let _alone = common::alone();
    let server = Server::start_inline();
    let honest = honest(&server);
    // Two cores shared by the node, the honest peer and four attackers are noisy: the bound is
    // asked of one of three measurements (each a before and a during). Read whole, as the shard
    // did before it gave each connection a share of its turns, the p99 was ×8–200 in every one.
    let mut ratios = Vec::new();
    for attempt in 1..=3 {
        let before = round_trips(
            &honest,
            server.node.peer_id(),
            Duration::from_millis(500),
            50,
        );
        let rss_before = rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let floods: Vec<_> = (0..4)
            .map(|_| {
                let (mut raw, _) = attacker(&server, greedy());
                let stop = stop.clone();
                std::thread::spawn(move || {
                    attacker_cpu_is_not_ours();
                    flood_within_credit(&mut raw, &stop)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let during = round_trips(&honest, server.node.peer_id(), Duration::from_secs(2), 50);
        let rss_during = rss_kib();
        stop.store(true, Ordering::Relaxed);
        let sent: u64 = floods.into_iter().map(|f| f.join().unwrap()).sum();
        println!(
            "attempt {attempt}: four flooding connections sent {sent} 1-byte messages in ~2.2 s; \
             RSS {rss_before} KiB before, {rss_during} KiB at the end of the flood"
        );
        served(&before, &during);
        let ratio = during.percentile(0.99).as_secs_f64() / before.percentile(0.99).as_secs_f64();
        println!("attempt {attempt}: honest p99 during / before: {ratio:.2}");
        ratios.push(ratio);
        if ratio <= 3.0 {
            break;
        }
    }
    assert!(
        ratios.iter().any(|&r| r <= 3.0),
        "an honest peer's p99 beside four flooding connections was not within 3x of before \
         in any of three measurements: {ratios:.2?}"
    );
    honest.stop_blocking();
    server.node.stop_blocking();
}
