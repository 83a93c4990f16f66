//! Protocol scenarios on the in-memory network. Each prints its seed when it fails; rerun one
//! seed with `GLUEBERRY_SIM_SEED=<seed>`.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::time::Duration;

use bytes::Bytes;
use glueberry_bench_harness::sim::{AppConfig, LinkConfig, SimNetwork};
use glueberry_transport::{Backoff, ConnState, ConnectionConfig, NodeConfig};

const MS: Duration = Duration::from_millis(1);

fn app(streams: &[&str]) -> AppConfig {
    AppConfig {
        streams: Some(streams.iter().map(|s| s.to_string()).collect()),
        hold: Vec::new(),
    }
}

/// Short timers so that scenarios run in little virtual time.
fn fast_timers(config: NodeConfig) -> NodeConfig {
    NodeConfig {
        dial_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(5),
        cooldown: Duration::from_secs(10),
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 0,
        },
        ..config
    }
}

fn fast_connection() -> ConnectionConfig {
    ConnectionConfig {
        keepalive_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

fn numbered(i: u32, len: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; len.max(4)];
    v[..4].copy_from_slice(&i.to_be_bytes());
    v.truncate(len.max(4));
    Bytes::from(v)
}

fn number(b: &Bytes) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn all_established(net: &SimNetwork, nodes: &[usize]) -> bool {
    nodes.iter().all(|&a| {
        nodes
            .iter()
            .filter(|&&b| b != a)
            .all(|&b| net.state(a, b) == ConnState::Established)
    })
}

#[test]
fn two_nodes_handshake_and_exchange_on_several_streams_in_order() {
    let streams = ["consensus", "mempool", "blocksync"];
    let mut net = SimNetwork::new(7, LinkConfig::default());
    let a = net.add_node(ConnectionConfig::default(), app(&streams));
    let b = net.add_node(ConnectionConfig::default(), app(&streams));
    net.connect(a, b);
    assert!(net.run_until(Duration::from_secs(1), MS, |n| all_established(n, &[a, b])));
    for i in 0..600u32 {
        let stream = streams[i as usize % 3];
        assert!(net.send(a, b, stream, numbered(i, 10 + i as usize)));
        assert!(net.send(b, a, stream, numbered(i, 3)));
    }
    net.run_for(Duration::from_millis(50), MS);
    for stream in streams {
        for (from, to) in [(a, b), (b, a)] {
            let got: Vec<u32> = net.received(from, to, stream).iter().map(number).collect();
            let want: Vec<u32> = (0..600)
                .filter(|i| streams[*i as usize % 3] == stream)
                .collect();
            assert_eq!(got, want, "{stream} {from}->{to}");
        }
    }
    // Direction is fixed at creation and carried in the peer's state.
    let b_id = net.nodes[b].peer_id;
    assert_eq!(
        net.nodes[a].core.direction(b_id),
        Some(glueberry_transport::Direction::Outbound)
    );
}

#[test]
fn ten_nodes_full_mesh_with_simultaneous_dials() {
    let mut net = SimNetwork::new(10, LinkConfig::default());
    let nodes: Vec<usize> = (0..10)
        .map(|_| net.add_node_with(fast_connection(), app(&["gossip"]), fast_timers))
        .collect();
    // Every node dials every other: each pair dials both ways at once.
    for &a in &nodes {
        for &b in &nodes {
            if a != b {
                net.connect(a, b);
            }
        }
    }
    assert!(
        net.run_until(Duration::from_secs(5), MS, |n| all_established(n, &nodes)),
        "seed {}",
        net.seed
    );
    net.run_for(Duration::from_millis(100), MS);
    // Exactly one connection per pair survived.
    for &a in &nodes {
        assert_eq!(net.nodes[a].core.connections().count(), 9, "node {a}");
    }
    for &a in &nodes {
        for &b in &nodes {
            if a != b {
                assert!(net.send(a, b, "gossip", numbered(a as u32 * 100 + b as u32, 8)));
            }
        }
    }
    net.run_for(Duration::from_millis(20), MS);
    for &a in &nodes {
        for &b in &nodes {
            if a != b {
                let got: Vec<u32> = net.received(a, b, "gossip").iter().map(number).collect();
                assert_eq!(got, vec![a as u32 * 100 + b as u32]);
            }
        }
    }
}

#[test]
fn partition_and_heal_reconnects_everyone() {
    let mut net = SimNetwork::new(11, LinkConfig::default());
    let nodes: Vec<usize> = (0..5)
        .map(|_| net.add_node_with(fast_connection(), app(&["s"]), fast_timers))
        .collect();
    for &a in &nodes {
        for &b in &nodes {
            if a < b {
                net.connect(a, b);
                net.know(b, a);
            }
        }
    }
    assert!(net.run_until(Duration::from_secs(3), MS, |n| all_established(n, &nodes)));
    net.partition(&[0, 1], &[2, 3, 4]);
    // Keepalive notices within the idle timeout; everyone across the cut reconnects (and fails).
    net.run_for(Duration::from_secs(5), 10 * MS);
    for a in [0, 1] {
        for b in [2, 3, 4] {
            let state = net.state(a, b);
            assert!(
                matches!(state, ConnState::Reconnecting | ConnState::Connecting),
                "{a}->{b} {state:?}"
            );
        }
    }
    assert_eq!(net.state(0, 1), ConnState::Established);
    assert_eq!(net.state(2, 4), ConnState::Established);
    net.heal();
    // Back to Established within the backoff bound (2 s cap, plus handshakes).
    assert!(
        net.run_until(Duration::from_secs(4), 10 * MS, |n| all_established(
            n, &nodes
        )),
        "seed {}",
        net.seed
    );
    for &a in &nodes {
        assert_eq!(
            net.nodes[a].core.connections().count(),
            4,
            "node {a}: {:#?}",
            net.nodes[a].core.connection_summary()
        );
        assert_eq!(net.nodes[a].core.invalid_transitions(), 0);
    }
}

#[test]
fn silent_peer_is_detected_by_keepalive() {
    let mut net = SimNetwork::new(12, LinkConfig::default());
    let a = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    let b = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    net.connect(a, b);
    assert!(net.run_until(Duration::from_secs(1), MS, |n| all_established(n, &[a, b])));
    let silent_since = net.elapsed();
    // b stops sending anything, without closing: only keepalive can tell.
    net.stall(b, a);
    assert!(
        net.run_until(Duration::from_secs(10), 10 * MS, |n| n.state(a, b)
            != ConnState::Established)
    );
    let noticed = net.elapsed() - silent_since;
    let idle = fast_connection().idle_timeout;
    assert!(
        noticed >= idle && noticed <= idle + Duration::from_millis(100),
        "{noticed:?}"
    );
    let b_id = net.nodes[b].peer_id;
    assert!(
        net.nodes[a]
            .states
            .iter()
            .any(|(_, p, s)| *p == b_id && *s == ConnState::Disconnected)
    );
}

#[test]
fn remote_close_is_noticed_and_the_peer_reconnects() {
    let mut net = SimNetwork::new(13, LinkConfig::default());
    let a = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    let b = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    net.connect(a, b);
    assert!(net.run_until(Duration::from_secs(1), MS, |n| all_established(n, &[a, b])));
    net.drop_connections(a, b);
    net.run_for(10 * MS, MS);
    let b_id = net.nodes[b].peer_id;
    let after_drop: Vec<ConnState> = net.nodes[a]
        .states
        .iter()
        .filter(|(_, p, _)| *p == b_id)
        .map(|(_, _, s)| *s)
        .collect();
    assert!(
        after_drop.ends_with(&[ConnState::Disconnected, ConnState::Reconnecting])
            || after_drop.contains(&ConnState::Reconnecting),
        "{after_drop:?}"
    );
    // And the reconnect completes: never stuck in Reconnecting.
    assert!(net.run_until(Duration::from_secs(2), MS, |n| all_established(n, &[a, b])));
}

/// The states node `a` reported for node `b`, with the second (of simulated time) of each.
fn states_seen(net: &SimNetwork, a: usize, b: usize) -> Vec<(u64, ConnState)> {
    let b_id = net.nodes[b].peer_id;
    net.nodes[a]
        .states
        .iter()
        .filter(|(_, p, _)| *p == b_id)
        .map(|(t, _, s)| (t.as_secs(), *s))
        .collect()
}

#[test]
fn handshake_timeout_cooldown_then_reconnect() {
    let mut net = SimNetwork::new(14, LinkConfig::default());
    // a never completes its application handshake (its peer's HelloFinalize never came).
    let a = net.add_node_with(fast_connection(), AppConfig::default(), fast_timers);
    let b = net.add_node_with(fast_connection(), app(&["s"]), |c| NodeConfig {
        handshake_timeout: Duration::from_secs(60),
        ..fast_timers(c)
    });
    net.connect(a, b);
    net.run_for(Duration::from_secs(17), 10 * MS);
    let seen = states_seen(&net, a, b);
    let states: Vec<ConnState> = seen.iter().map(|(_, s)| *s).collect();
    use ConnState::*;
    assert_eq!(
        &states[..7],
        &[
            Connecting,
            Connected,
            Cooldown,
            Disconnected,
            Reconnecting,
            Connecting,
            Connected
        ],
        "{seen:?}"
    );
    // Cooldown lasted the configured 10 s, entered after the 5 s handshake timeout.
    assert_eq!(seen[2].0, 5);
    assert_eq!(seen[3].0, 15);
}

#[test]
fn cooldown_can_be_left_by_an_explicit_connect() {
    let mut net = SimNetwork::new(15, LinkConfig::default());
    let a = net.add_node_with(fast_connection(), AppConfig::default(), fast_timers);
    let b = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    net.connect(a, b);
    assert!(
        net.run_until(Duration::from_secs(7), 10 * MS, |n| n.state(a, b)
            == ConnState::Cooldown)
    );
    let b_id = net.nodes[b].peer_id;
    let now = net.now();
    net.nodes[a].core.connect(b_id, now).expect("connect");
    assert_eq!(net.state(a, b), ConnState::Connecting);
}

#[test]
fn slow_consumer_on_one_stream_does_not_stall_another() {
    let mut net = SimNetwork::new(16, LinkConfig::default());
    let a = net.add_node(ConnectionConfig::default(), app(&["slow", "fast"]));
    let b = net.add_node(
        ConnectionConfig::default(),
        AppConfig {
            streams: Some(vec!["slow".into(), "fast".into()]),
            hold: vec!["slow".into()],
        },
    );
    net.connect(a, b);
    assert!(net.run_until(Duration::from_secs(1), MS, |n| all_established(n, &[a, b])));
    let mut slow_sent = 0;
    for i in 0..2000u32 {
        if net.send(a, b, "slow", numbered(i, 4096)) {
            slow_sent += 1;
        }
    }
    for round in 0..20u32 {
        for i in 0..100 {
            assert!(net.send(a, b, "fast", numbered(round * 100 + i, 4096)));
        }
        net.run_for(5 * MS, MS);
        assert_eq!(net.received(a, b, "fast").len(), (round as usize + 1) * 100);
    }
    let slow = net.received(a, b, "slow").len();
    let window = ConnectionConfig::default().initial_window as usize;
    assert_eq!(
        slow,
        window / (4096 + 6),
        "slow stream got exactly its window"
    );
    assert!(slow < slow_sent);
}

#[test]
fn message_sizes_zero_one_max_and_max_plus_one() {
    let mut net = SimNetwork::new(17, LinkConfig::default());
    let a = net.add_node(ConnectionConfig::default(), app(&["s"]));
    let b = net.add_node(ConnectionConfig::default(), app(&["s"]));
    net.connect(a, b);
    assert!(net.run_until(Duration::from_secs(1), MS, |n| all_established(n, &[a, b])));
    let max = ConnectionConfig::default().max_message_size;
    for len in [0, 1, max] {
        assert!(net.send(a, b, "s", Bytes::from(vec![9u8; len])));
    }
    let b_id = net.nodes[b].peer_id;
    let stream = net.stream_id(a, b, "s").unwrap();
    assert!(matches!(
        net.nodes[a]
            .core
            .send(b_id, stream, Bytes::from(vec![0u8; max + 1])),
        Err(glueberry_transport::NodeError::Send(
            glueberry_transport::SendError::MessageTooLarge { .. }
        ))
    ));
    net.run_for(Duration::from_millis(50), MS);
    let lens: Vec<usize> = net.received(a, b, "s").iter().map(Bytes::len).collect();
    assert_eq!(lens, vec![0, 1, max]);
}

/// One seed of the mixed workload: random links (latency, jitter, bandwidth, chunking, a
/// stall), random sizes on random streams both ways. Returns an error naming the seed.
fn mixed_workload(seed: u64) -> Result<(), String> {
    let mut net = SimNetwork::new(seed, LinkConfig::default());
    let r = net.random();
    let link = LinkConfig {
        latency: Duration::from_micros(50 + r % 5000),
        jitter: Duration::from_micros((r >> 16) % 500),
        bandwidth: if r & 1 == 0 {
            None
        } else {
            Some(10_000_000 + (r >> 20) % 1_000_000_000)
        },
        max_chunk: 1 + ((r >> 40) % 70_000) as usize,
    };
    net = SimNetwork::new(seed, link);
    let streams = ["a", "b", "c"];
    let window = [4096u32, 65_536, 1 << 20][(r >> 8) as usize % 3];
    // Messages up to the window (a message waits for all of its credit); the connection's
    // window is twice a stream's, so that three streams contend for it.
    let max_message = window as usize - 6;
    let connection = ConnectionConfig {
        initial_window: window,
        connection_window: window * 2,
        max_message_size: max_message,
        max_record_plaintext: [256usize, 4096, 65_536][(r >> 12) as usize % 3],
        ..Default::default()
    };
    let x = net.add_node(connection.clone(), app(&streams));
    let y = net.add_node(connection, app(&streams));
    net.connect(x, y);
    if !net.run_until(Duration::from_secs(2), MS, |n| all_established(n, &[x, y])) {
        return Err(format!("seed {seed}: not established"));
    }
    let mut sent: Vec<Vec<Bytes>> = vec![Vec::new(); 6];
    for i in 0..40u32 {
        let r = net.random();
        let (from, to) = if r & 1 == 0 { (x, y) } else { (y, x) };
        let s = (r >> 1) as usize % 3;
        let len = match (r >> 8) % 10 {
            0 => 0,
            1..=6 => ((r >> 16) % 200) as usize,
            7 | 8 => ((r >> 16) % 5000) as usize,
            _ => ((r >> 16) % 150_000) as usize,
        }
        .min(max_message);
        let mut data = vec![(i % 256) as u8; len];
        if len >= 4 {
            data[..4].copy_from_slice(&i.to_be_bytes());
        }
        let data = Bytes::from(data);
        if net.send(from, to, streams[s], data.clone()) {
            sent[from * 3 + s].push(data);
        }
        if r >> 60 == 0 {
            net.stall(from, to);
            net.run_for(3 * MS, MS);
            net.unstall(from, to);
        }
        if (r >> 32).is_multiple_of(4) {
            net.step(MS);
        }
    }
    net.run_for(Duration::from_secs(2), MS);
    for (from, to) in [(x, y), (y, x)] {
        for (s, stream) in streams.iter().enumerate() {
            let got = net.received(from, to, stream);
            let want = &sent[from * 3 + s];
            if &got != want {
                let lens = |v: &[Bytes]| v.iter().map(Bytes::len).collect::<Vec<_>>();
                return Err(format!(
                    "seed {seed}: {from}->{to} on {stream}: sent {:?}, received {:?}; states {:?}",
                    lens(want),
                    lens(&got),
                    net.nodes[to].states,
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn ten_thousand_seeds_of_mixed_workload_lose_duplicate_and_reorder_nothing() {
    if let Ok(seed) = std::env::var("GLUEBERRY_SIM_SEED") {
        let seed: u64 = seed.parse().expect("seed");
        mixed_workload(seed).unwrap();
        return;
    }
    let seeds: u64 = std::env::var("GLUEBERRY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    for seed in 1..=seeds {
        if let Err(e) = mixed_workload(seed) {
            panic!("{e} (replay: GLUEBERRY_SIM_SEED={seed})");
        }
    }
}

/// One seed of the delivery guarantee: traffic both ways on three streams while connections
/// are dropped, partitioned and stalled at random. Every message `send` accepted is received
/// (in order, once) or handed back; one handed back as never sent was not received.
fn delivery_under_drops(seed: u64) -> Result<[usize; 4], String> {
    let mut net = SimNetwork::new(seed, LinkConfig::default());
    let r = net.random();
    let link = LinkConfig {
        latency: Duration::from_micros(100 + r % 3000),
        max_chunk: 1 + ((r >> 40) % 20_000) as usize,
        ..LinkConfig::default()
    };
    net = SimNetwork::new(seed, link);
    let streams = ["a", "b", "c"];
    let window = [4096u32, 65_536][(r >> 8) as usize % 2];
    let max_message = window as usize - 6;
    let connection = ConnectionConfig {
        initial_window: window,
        connection_window: window * 2,
        max_message_size: max_message,
        ..fast_connection()
    };
    let x = net.add_node_with(connection.clone(), app(&streams), fast_timers);
    let y = net.add_node_with(connection, app(&streams), fast_timers);
    net.connect(x, y);
    net.know(y, x);
    let mut sent: Vec<Vec<Bytes>> = vec![Vec::new(); 6];
    let mut next = 0u32;
    for _ in 0..30 {
        if !net.run_until(Duration::from_secs(10), MS, |n| all_established(n, &[x, y])) {
            return Err(format!("seed {seed}: not established again"));
        }
        for _ in 0..(net.random() % 60) {
            let r = net.random();
            let (from, to) = if r & 1 == 0 { (x, y) } else { (y, x) };
            let s = (r >> 1) as usize % 3;
            let len = if (r >> 8).is_multiple_of(8) {
                20_000.min(max_message)
            } else {
                4 + (r >> 16) as usize % 300
            };
            let data = numbered(next, len);
            next += 1;
            if net.send(from, to, streams[s], data.clone()) {
                sent[from * 3 + s].push(data);
            }
            if (r >> 32).is_multiple_of(4) {
                net.step(MS);
            }
        }
        let r = net.random();
        net.run_for(Duration::from_micros(r % 5000), MS);
        match (r >> 16) % 3 {
            0 => net.drop_connections(x, y),
            1 => {
                net.partition(&[x], &[y]);
                net.run_for(Duration::from_secs(4), 10 * MS);
                net.heal();
            }
            _ => net.run_for(Duration::from_millis(50), MS),
        }
    }
    net.run_for(Duration::from_secs(3), MS);
    // Accepted, received, handed back unsent, handed back unconfirmed.
    let mut tally = [0usize; 4];
    for (from, to) in [(x, y), (y, x)] {
        for (s, stream) in streams.iter().enumerate() {
            let got: Vec<u32> = net.received(from, to, stream).iter().map(number).collect();
            let (unsent, unconfirmed) = net.undelivered(from, to, stream);
            let unsent: Vec<u32> = unsent.iter().map(number).collect();
            let unconfirmed: Vec<u32> = unconfirmed.iter().map(number).collect();
            tally[0] += sent[from * 3 + s].len();
            tally[1] += got.len();
            tally[2] += unsent.len();
            tally[3] += unconfirmed.len();
            if !got.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!(
                    "seed {seed}: {from}->{to} {stream}: out of order or duplicated: {got:?}"
                ));
            }
            if let Some(n) = unsent.iter().find(|n| got.binary_search(n).is_ok()) {
                return Err(format!(
                    "seed {seed}: {from}->{to} {stream}: {n} handed back as unsent but received"
                ));
            }
            for n in sent[from * 3 + s].iter().map(number) {
                if got.binary_search(&n).is_err()
                    && !unsent.contains(&n)
                    && !unconfirmed.contains(&n)
                {
                    return Err(format!(
                        "seed {seed}: {from}->{to} {stream}: {n} neither received nor handed back \
                         (received {got:?}, unsent {unsent:?}, unconfirmed {unconfirmed:?}, states {:?})",
                        net.nodes[from].states
                    ));
                }
            }
        }
    }
    Ok(tally)
}

#[test]
fn every_accepted_message_is_received_or_handed_back_under_drops() {
    if let Ok(seed) = std::env::var("GLUEBERRY_SIM_SEED") {
        delivery_under_drops(seed.parse().expect("seed")).unwrap();
        return;
    }
    let seeds: u64 = std::env::var("GLUEBERRY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut total = [0usize; 4];
    for seed in 1..=seeds {
        match delivery_under_drops(seed) {
            Ok(tally) => total.iter_mut().zip(tally).for_each(|(t, n)| *t += n),
            Err(e) => panic!("{e} (replay: GLUEBERRY_SIM_SEED={seed})"),
        }
    }
    println!(
        "{seeds} seeds: {} accepted, {} received, {} handed back unsent, {} unconfirmed",
        total[0], total[1], total[2], total[3]
    );
    assert!(
        total[2] + total[3] > 0,
        "the drops never caught a message in flight"
    );
}

#[test]
fn a_peer_that_never_answers_our_streams_is_cut_at_the_handshake_timeout() {
    // b authenticates and answers PINGs but its application never completes: a's streams wait
    // unanswered. a is Established on its side, never Ready, and cuts b with code 8 at its 5 s
    // application handshake timeout (it used to stay forever).
    let mut net = SimNetwork::new(17, LinkConfig::default());
    let a = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    let b = net.add_node_with(fast_connection(), AppConfig::default(), |c| NodeConfig {
        handshake_timeout: Duration::from_secs(600),
        ..fast_timers(c)
    });
    net.connect(a, b);
    net.run_for(Duration::from_secs(7), 10 * MS);
    let seen = states_seen(&net, a, b);
    use ConnState::*;
    let states: Vec<ConnState> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        &states[..4],
        &[Connecting, Connected, Established, Cooldown],
        "{seen:?}"
    );
    assert_eq!(seen[3].0, 5, "cut at the handshake timeout: {seen:?}");
    assert!(net.nodes[a].ready.is_empty());
}

#[test]
fn ready_clears_the_handshake_deadline() {
    let mut net = SimNetwork::new(18, LinkConfig::default());
    let a = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    let b = net.add_node_with(fast_connection(), app(&["s"]), fast_timers);
    net.connect(a, b);
    net.run_for(Duration::from_secs(8), 10 * MS);
    assert_eq!(net.state(a, b), ConnState::Established);
    assert_eq!(net.state(b, a), ConnState::Established);
    assert_eq!(net.nodes[a].ready.len(), 1);
    assert_eq!(net.nodes[b].ready.len(), 1);
}
