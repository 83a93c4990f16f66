//! The engine over real loopback sockets.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::{Identity, PeerId};
use glueberry::transport::{ConnState, ConnectionConfig};
use glueberry::{Backend, Event, Node, NodeConfig};

mod common;

use common::{established, wait_for};

const NET: &str = "loopback-test";

fn start(shards: usize) -> Node {
    common::start_node(NET, shards)
}

/// Connects every pair (lower index dials) and waits until all are Established.
fn mesh(nodes: &[Node], streams: &[&str]) {
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            a.connect(b.peer_id(), b.listen_addr()).unwrap();
        }
    }
    for a in nodes {
        let mut pending: Vec<PeerId> = nodes
            .iter()
            .map(Node::peer_id)
            .filter(|p| *p != a.peer_id())
            .collect();
        let ok = wait_for(a, streams, Duration::from_secs(10), |e| {
            if let Event::State {
                peer,
                state: ConnState::Established,
                ..
            } = e
            {
                pending.retain(|p| p != peer);
            }
            pending.is_empty()
        });
        assert!(
            ok,
            "node {} never established with {:?}",
            a.peer_id(),
            pending
        );
    }
}

fn receive(node: &Node, count: usize, timeout: Duration) -> Vec<glueberry::Message> {
    let deadline = Instant::now() + timeout;
    let mut messages = node.messages();
    let mut out = Vec::with_capacity(count);
    while out.len() < count && Instant::now() < deadline {
        match messages.try_recv() {
            Some(m) => out.push(m),
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    out
}

#[test]
fn two_nodes_handshake_and_exchange_on_several_streams() {
    for shards in [1, 2] {
        let (a, b) = (start(shards), start(shards));
        let streams = ["consensus", "mempool", "blocksync"];
        mesh(&[a.clone(), b.clone()], &streams);
        for i in 0..300u32 {
            let stream = a.stream(streams[i as usize % 3]);
            a.try_send(b.peer_id(), &stream, Bytes::from(i.to_be_bytes().to_vec()))
                .unwrap();
        }
        let got = receive(&b, 300, Duration::from_secs(10));
        assert_eq!(got.len(), 300, "shards {shards}");
        for name in streams {
            let seq: Vec<u32> = got
                .iter()
                .filter(|m| &*m.stream == name)
                .map(|m| u32::from_be_bytes(m.data[..4].try_into().unwrap()))
                .collect();
            assert_eq!(seq.len(), 100);
            assert!(seq.windows(2).all(|w| w[0] < w[1]));
            assert!(got.iter().all(|m| m.peer == a.peer_id()));
        }
        a.stop_blocking();
        b.stop_blocking();
    }
}

#[test]
fn four_node_mesh_over_two_shards_each_with_handoffs() {
    // Four nodes of two shards: inbound connections land on either shard (SO_REUSEPORT) and
    // about half must move to their peer's shard. Retry with fresh identities until at least
    // one did, so that the handoff path is exercised.
    let mut nodes: Vec<Node> = (0..4).map(|_| start(2)).collect();
    mesh(&nodes, &["gossip"]);
    for _ in 0..5 {
        if nodes.iter().map(Node::handoffs).sum::<u64>() > 0 {
            break;
        }
        for n in &nodes {
            n.stop_blocking();
        }
        nodes = (0..4).map(|_| start(2)).collect();
        mesh(&nodes, &["gossip"]);
    }
    assert!(
        nodes.iter().map(Node::handoffs).sum::<u64>() > 0,
        "no connection changed shard"
    );
    for a in &nodes {
        for b in &nodes {
            if a.peer_id() != b.peer_id() {
                let s = a.stream("gossip");
                a.try_send(
                    b.peer_id(),
                    &s,
                    Bytes::copy_from_slice(a.peer_id().public_key()),
                )
                .unwrap();
            }
        }
    }
    for b in &nodes {
        let got = receive(b, nodes.len() - 1, Duration::from_secs(10));
        assert_eq!(got.len(), nodes.len() - 1);
        for m in got {
            assert_eq!(&m.data[..], m.peer.public_key());
        }
    }
    for n in &nodes {
        n.stop_blocking();
    }
}

#[test]
fn order_per_stream_holds_under_load_from_several_threads() {
    let (a, b) = (start(2), start(2));
    let streams = ["s0", "s1", "s2", "s3"];
    mesh(&[a.clone(), b.clone()], &streams);
    const PER_THREAD: u32 = 20_000;
    let senders: Vec<_> = streams
        .iter()
        .map(|name| {
            let a = a.clone();
            let stream = a.stream(name);
            let to = b.peer_id();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let data = Bytes::from(i.to_be_bytes().to_vec());
                    futures::executor::block_on(a.send(to, &stream, data)).unwrap();
                }
            })
        })
        .collect();
    let got = receive(
        &b,
        streams.len() * PER_THREAD as usize,
        Duration::from_secs(60),
    );
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(got.len(), streams.len() * PER_THREAD as usize);
    let mut next: HashMap<String, u32> = HashMap::new();
    for m in got {
        let n = u32::from_be_bytes(m.data[..4].try_into().unwrap());
        let expected = next.entry(m.stream.to_string()).or_insert(0);
        assert_eq!(n, *expected, "stream {} out of order", m.stream);
        *expected += 1;
    }
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn works_from_tokio_and_from_a_plain_thread() {
    let (a, b) = (start(1), start(1));
    mesh(&[a.clone(), b.clone()], &["s"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a2, to) = (a.clone(), b.peer_id());
    runtime.block_on(async move {
        let s = a2.stream("s");
        for i in 0..100u8 {
            a2.send(to, &s, Bytes::from(vec![i])).await.unwrap();
        }
    });
    let mut messages = b.messages();
    let got: Vec<u8> = runtime.block_on(async {
        let mut got = Vec::new();
        while got.len() < 100 {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.recv())
                .await
                .unwrap()
                .unwrap();
            got.push(m.data[0]);
        }
        got
    });
    assert_eq!(got, (0..100).collect::<Vec<u8>>());
    // And from a plain thread with futures' executor.
    let (b2, to) = (b.clone(), a.peer_id());
    std::thread::spawn(move || {
        let s = b2.stream("s");
        futures::executor::block_on(b2.send(to, &s, Bytes::from_static(b"back"))).unwrap();
    })
    .join()
    .unwrap();
    let m = futures::executor::block_on(a.messages().recv()).unwrap();
    assert_eq!(&m.data[..], b"back");
    a.stop_blocking();
    b.stop_blocking();
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Runs this test binary again as a child process running only `test`, with `role` set in the
/// environment; returns it and its stdout lines.
fn spawn_child(
    test: &str,
    role: &str,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("GLUEBERRY_CHILD", role)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The "<peer id> <address>" line a child node prints.
fn read_peer(
    lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) -> (PeerId, SocketAddr) {
    loop {
        let line = lines.next().expect("child output").unwrap();
        // libtest may print "test <name> ... " before it on the same line: take the last two.
        let mut parts = line.split_whitespace().rev();
        if let (Some(a), Some(p)) = (parts.next(), parts.next())
            && let (Ok(p), Ok(a)) = (p.parse::<PeerId>(), a.parse::<SocketAddr>())
        {
            return (p, a);
        }
    }
}

fn child_role() -> Option<String> {
    std::env::var("GLUEBERRY_CHILD").ok()
}

#[test]
fn stop_with_traffic_in_flight_leaks_no_fd_or_thread() {
    if child_role().as_deref() != Some("leaks") {
        // Exact fd and thread counts need a process of our own: other tests run in parallel.
        let (mut child, lines) =
            spawn_child("stop_with_traffic_in_flight_leaks_no_fd_or_thread", "leaks");
        let output: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        assert!(status.success(), "child failed: {output:?}");
        assert!(output.iter().any(|l| l.contains("no leaks")), "{output:?}");
        return;
    }
    let round = || {
        let (a, b) = (start(2), start(2));
        mesh(&[a.clone(), b.clone()], &["bulk"]);
        let stream = a.stream("bulk");
        let payload = Bytes::from(vec![7u8; 64 * 1024]);
        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let (a, to, sent) = (a.clone(), b.peer_id(), sent.clone());
            std::thread::spawn(move || {
                loop {
                    match a.try_send(to, &stream, payload.clone()) {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.error == glueberry::NodeSendError::BufferFull => {
                            std::thread::yield_now()
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        while sent.load(Ordering::Relaxed) < 200 {
            std::thread::yield_now();
        }
        // Stop both while the sender is still pushing and bytes are in the sockets.
        a.stop_blocking();
        b.stop_blocking();
        sender.join().unwrap();
        // Every operation in flight completed before its buffer was freed.
        assert_eq!(a.abandoned_operations() + b.abandoned_operations(), 0);
    };
    round();
    let (fds, threads) = (glueberry::open_fd_count(), thread_count());
    for _ in 0..3 {
        round();
    }
    assert_eq!(glueberry::open_fd_count(), fds, "file descriptors leaked");
    assert_eq!(thread_count(), threads, "threads leaked");
    println!("no leaks: {fds} fds and {threads} threads before and after");
}

#[test]
fn a_killed_peer_is_seen_as_disconnected() {
    if child_role().as_deref() == Some("node") {
        // The child: run a node until killed, after telling the parent where it is.
        let node = start(1);
        println!("{} {}", node.peer_id(), node.listen_addr());
        loop {
            while let Some(Event::State {
                peer,
                state: ConnState::Connected,
                ..
            }) = node.events().try_recv()
            {
                node.complete_handshake(peer, &["s"]).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (mut child, mut lines) = spawn_child("a_killed_peer_is_seen_as_disconnected", "node");
    let (peer, addr) = read_peer(&mut lines);
    let node = start(1);
    node.connect(peer, addr).unwrap();
    assert!(wait_for(
        &node,
        &["s"],
        Duration::from_secs(10),
        established(peer)
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    let seen = wait_for(
        &node,
        &["s"],
        Duration::from_secs(10),
        |e| matches!(e, Event::State { peer: p, state: ConnState::Disconnected, .. } if *p == peer),
    );
    assert!(seen, "the killed peer was not reported Disconnected");
    node.stop_blocking();
}

#[test]
fn a_node_that_cannot_get_io_uring_refuses_to_start_with_the_cause() {
    let result = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .backend(Backend::IoUring)
            .ring_entries(0),
    );
    let error = result.expect_err("a ring of 0 entries cannot be set up");
    let text = error.to_string();
    assert!(text.contains("io_uring is unavailable"), "{text}");
    assert!(text.contains("kernel.io_uring_disabled"), "{text}");
}

#[test]
fn auto_runs_on_the_poll_backend_where_io_uring_cannot_start_and_talks_to_an_io_uring_node() {
    // A ring of 0 entries fails to set up (EINVAL) as a blocked io_uring would (EPERM): Auto
    // falls back instead of refusing.
    let fallback = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(2)
            .backend(Backend::Auto)
            .ring_entries(0),
    )
    .expect("Auto starts without io_uring");
    assert_eq!(fallback.backend(), Backend::Poll);
    let health = fallback.health();
    let check = health.check("backend").unwrap();
    assert_eq!(check.detail, "poll");
    let uring = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(2)
            .backend(Backend::IoUring),
    )
    .expect("io_uring here");
    assert_eq!(uring.backend(), Backend::IoUring);
    mesh(&[fallback.clone(), uring.clone()], &["s"]);
    for (from, to) in [(&fallback, &uring), (&uring, &fallback)] {
        let s = from.stream("s");
        for i in 0..2000u32 {
            futures::executor::block_on(from.send(
                to.peer_id(),
                &s,
                Bytes::from(i.to_be_bytes().to_vec()),
            ))
            .unwrap();
        }
        let got = receive(to, 2000, Duration::from_secs(10));
        let order: Vec<u32> = got
            .iter()
            .map(|m| u32::from_be_bytes(m.data[..4].try_into().unwrap()))
            .collect();
        assert_eq!(order, (0..2000).collect::<Vec<_>>());
    }
    fallback.stop_blocking();
    uring.stop_blocking();
}

#[test]
fn many_idle_peers_on_one_node() {
    raise_fd_limit();
    if let Some(role) = child_role().filter(|r| r.starts_with("server")) {
        // The child: a node alone in its process, so that its memory can be read.
        // Every client comes from 127.0.0.1 and there are more than the default 400.
        let many = glueberry::ConnectionLimits {
            max_inbound: 100_000,
            max_outbound: 100_000,
            max_total: 100_000,
            max_inbound_per_group: 100_000,
            max_pending_per_group: 100_000,
            inbound_attempts_per_group_per_sec: 1_000_000,
            stranger_handshakes_per_sec: 1_000_000,
            ..Default::default()
        };
        let mut config = NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(2)
            .event_buffer(10_000)
            .limits(many);
        if role == "server-provided" {
            config = config.provided_receive_buffers(256);
        }
        let server = Node::start(config).unwrap();
        println!("{} {}", server.peer_id(), server.listen_addr());
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let peers: usize = std::env::var("GLUEBERRY_IDLE_PEERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    for (role, mode) in [
        ("server", "a receive buffer per connection"),
        (
            "server-provided",
            "provided-buffer ring of 256 x 64 KiB per shard",
        ),
    ] {
        idle_peers(peers, role, mode);
    }
}

fn idle_peers(peers: usize, role: &str, mode: &str) {
    use glueberry::transport::Connection;
    let (mut child, mut lines) = spawn_child("many_idle_peers_on_one_node", role);
    let (server_id, server_addr) = read_peer(&mut lines);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib_of(child.id());
    let config = Arc::new(ConnectionConfig::default());
    let mut clients = Vec::with_capacity(peers);
    let started = Instant::now();
    for _ in 0..peers {
        let identity = Identity::generate().unwrap();
        let handshake = Arc::new(glueberry::crypto::HandshakeConfig::new(&identity, NET).unwrap());
        let mut conn =
            Connection::outbound(config.clone(), handshake, Some(server_id), Instant::now())
                .unwrap();
        let mut socket = std::net::TcpStream::connect(server_addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        glueberry::transport::testing::handshake_blocking(&mut conn, &mut socket)
            .expect("handshake");
        clients.push((conn, socket));
    }
    let connect_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib_of(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    let grown = after.saturating_sub(before);
    println!(
        "{peers} idle peers on one node (2 shards, {mode}): all connected in {connect_time:?} \
         ({:.0} handshakes/s, done one after another by one client thread); server RSS \
         {before} KiB -> {after} KiB: {:.1} KiB per idle connection",
        peers as f64 / connect_time.as_secs_f64(),
        grown as f64 / peers as f64,
    );
    assert!(after > before, "the server holds some state per connection");
    assert_eq!(clients.len(), peers);
}

fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a live, correctly typed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[test]
fn send_buffers_are_registered_and_shrink_under_a_small_memlock_limit() {
    // As root (CAP_IPC_LOCK) everything registers.
    // Registered buffers are io_uring's.
    let node = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(2)
            .backend(Backend::IoUring)
            .send_buffers(16),
    )
    .unwrap();
    let is_root = is_root();
    if is_root {
        assert_eq!(node.registered_send_buffers(), 32);
    }
    node.stop_blocking();
    if child_role().as_deref() == Some("unprivileged") {
        // The child runs as `nobody`: an 8 MiB memlock limit, ring memory included. Asking for
        // 2 × 64 MiB of registered buffers must shrink (or fall back) and still work.
        let (a, b) = (
            Node::start(
                NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
                    .shards(2)
                    .backend(Backend::IoUring)
                    .send_buffers(256),
            )
            .expect("start as nobody"),
            start(1),
        );
        let registered = a.registered_send_buffers();
        assert!(
            registered < 512,
            "registered {registered} of 512 under an 8 MiB limit"
        );
        mesh(&[a.clone(), b.clone()], &["s"]);
        let s = a.stream("s");
        for i in 0..1000u32 {
            futures::executor::block_on(a.send(b.peer_id(), &s, Bytes::from(vec![1u8; 4096])))
                .unwrap();
            let _ = i;
        }
        assert_eq!(receive(&b, 1000, Duration::from_secs(10)).len(), 1000);
        println!("unprivileged ok: {registered} send buffers registered");
        a.stop_blocking();
        b.stop_blocking();
        return;
    }
    if !is_root {
        return; // Already unprivileged: the child below would be the same process kind.
    }
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "send_buffers_are_registered_and_shrink_under_a_small_memlock_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GLUEBERRY_CHILD", "unprivileged")
        .output();
    let Ok(output) = output else {
        println!("setpriv is not installed: the unprivileged path was not exercised");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if let Some(line) = stdout.lines().find(|l| l.contains("unprivileged ok")) {
        println!("child as nobody: {line}");
    }
    assert!(
        output.status.success() && stdout.contains("unprivileged ok"),
        "as nobody: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|uid| uid == "0"))
        .unwrap_or(false)
}

#[test]
fn a_peer_that_stops_reading_does_not_hold_up_the_others() {
    // a (one shard) sends to b, whose application never reads, and to c, which does.
    let a = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .connection(ConnectionConfig {
                max_message_size: 60 * 1024,
                initial_window: 64 * 1024,
                connection_window: 128 * 1024,
                ..Default::default()
            })
            .command_queue(4096),
    )
    .unwrap();
    let slow = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .message_buffer(10),
    )
    .unwrap();
    let fast = start(1);
    mesh(&[a.clone(), slow.clone(), fast.clone()], &["s"]);
    let s = a.stream("s");
    let message = Bytes::from(vec![3u8; 1024]);
    // Far more than the slow peer's window, messages channel and a's stream queue hold.
    let mut accepted = 0;
    for _ in 0..3000 {
        if a.try_send(slow.peer_id(), &s, message.clone()).is_ok() {
            accepted += 1;
        }
    }
    assert!(accepted > 1000);
    std::thread::sleep(Duration::from_millis(200));
    // The fast peer still gets everything, promptly.
    for i in 0..1000u32 {
        futures::executor::block_on(a.send(
            fast.peer_id(),
            &s,
            Bytes::from(i.to_be_bytes().to_vec()),
        ))
        .unwrap();
    }
    let got = receive(&fast, 1000, Duration::from_secs(5));
    assert_eq!(got.len(), 1000, "the fast peer was held up by the slow one");
    for n in [a, slow, fast] {
        n.stop_blocking();
    }
}

#[test]
fn provided_receive_buffers_carry_traffic_in_order() {
    let config = |shards| {
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(shards)
            .provided_receive_buffers(64)
            .message_buffer(100_000)
            .event_buffer(10_000)
    };
    let (a, b) = (
        Node::start(config(2)).unwrap(),
        Node::start(config(2)).unwrap(),
    );
    mesh(&[a.clone(), b.clone()], &["small", "large"]);
    let (small, large) = (a.stream("small"), a.stream("large"));
    for i in 0..2000u32 {
        futures::executor::block_on(a.send(
            b.peer_id(),
            &small,
            Bytes::from(i.to_be_bytes().to_vec()),
        ))
        .unwrap();
        if i % 100 == 0 {
            // Messages far larger than one provided buffer.
            let mut big = vec![(i % 251) as u8; 300_000];
            big[..4].copy_from_slice(&i.to_be_bytes());
            futures::executor::block_on(a.send(b.peer_id(), &large, Bytes::from(big))).unwrap();
        }
    }
    let got = receive(&b, 2020, Duration::from_secs(20));
    assert_eq!(got.len(), 2020);
    let small_seq: Vec<u32> = got
        .iter()
        .filter(|m| &*m.stream == "small")
        .map(|m| u32::from_be_bytes(m.data[..4].try_into().unwrap()))
        .collect();
    assert_eq!(small_seq, (0..2000).collect::<Vec<u32>>());
    for m in got.iter().filter(|m| &*m.stream == "large") {
        let i = u32::from_be_bytes(m.data[..4].try_into().unwrap());
        assert_eq!(m.data.len(), 300_000);
        assert!(m.data[4..].iter().all(|&b| b == (i % 251) as u8));
    }
    a.stop_blocking();
    b.stop_blocking();
    assert_eq!(a.abandoned_operations() + b.abandoned_operations(), 0);
}

#[test]
fn node_handle_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Node>();
    assert_traits::<glueberry::StreamName>();
    fn assert_send<T: Send>(_: &T) {}
    let node = start(1);
    let s = node.stream("s");
    // The future of `send` can move between threads (any executor).
    let future = node.send(node.peer_id(), &s, Bytes::new());
    assert_send(&future);
    drop(future);
    node.stop_blocking();
}

#[test]
fn broadcast_reaches_every_peer_from_one_buffer() {
    let nodes: Vec<Node> = (0..4).map(|_| start(1)).collect();
    mesh(&nodes, &["gossip"]);
    let (sender, others) = nodes.split_first().unwrap();
    let peers: Vec<PeerId> = others.iter().map(Node::peer_id).collect();
    let block = Bytes::from(vec![42u8; 100_000]);
    let stream = sender.stream("gossip");
    let failed = futures::executor::block_on(sender.broadcast(&peers, &stream, block.clone()));
    assert!(failed.is_empty(), "{failed:?}");
    for node in others {
        let got = receive(node, 1, Duration::from_secs(10));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, block);
        assert_eq!(got[0].peer, sender.peer_id());
    }
    for n in &nodes {
        n.stop_blocking();
    }
}

#[test]
fn subscriptions_filter_lose_rather_than_block_and_end_on_drop() {
    use glueberry::EventFilter;
    let (a, b, c) = (start(1), start(1), start(1));
    let only_b_established = a.subscribe(
        EventFilter::all()
            .peer(b.peer_id())
            .kind(glueberry::EventKind::State)
            .state(ConnState::Established),
        16,
    );
    // A subscriber that never reads and holds one event.
    let slow = a.subscribe(EventFilter::default(), 1);
    assert_eq!(a.subscription_count(), 2);
    mesh(&[a.clone(), b.clone(), c.clone()], &["s"]);
    let event = only_b_established.recv_blocking().unwrap();
    assert!(matches!(
        event,
        Event::State { peer, state: ConnState::Established, .. } if peer == b.peer_id()
    ));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        only_b_established.try_recv().is_none(),
        "c's or other events passed the filter"
    );
    // The slow subscriber kept its first event and lost the rest; after it reads, the next
    // event it gets tells it how many it missed.
    assert!(slow.try_recv().is_some());
    a.disconnect(c.peer_id()).unwrap();
    let told = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(10));
        match slow.try_recv() {
            Some(Event::Missed { count }) => Some(count),
            _ => None,
        }
    });
    assert!(
        told.is_some_and(|n| n > 0),
        "the slow subscriber was not told: {told:?}"
    );
    assert!(a.events_dropped() > 0);
    drop(slow);
    drop(only_b_established);
    assert_eq!(a.subscription_count(), 0);
    for n in [a, b, c] {
        n.stop_blocking();
    }
}

#[test]
fn config_validation_rejects_nonsense_with_a_clear_message() {
    let base = || NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port()).shards(1);
    let cases = [
        (
            base().reconnect(Duration::from_secs(10), Duration::from_secs(1), 3),
            "below the base delay",
        ),
        (
            base().handshake_timeout(Duration::ZERO),
            "handshake_timeout",
        ),
        (
            base().connection(ConnectionConfig {
                low_watermark: 1000,
                high_watermark: 1000,
                ..Default::default()
            }),
            "low_watermark",
        ),
    ];
    for (config, expected) in cases {
        let error = Node::start(config).expect_err("invalid");
        assert!(error.to_string().contains(expected), "{error}");
    }
    // 0 attempts is valid: unlimited.
    let node = Node::start(base().reconnect(Duration::from_secs(1), Duration::from_secs(5), 0))
        .expect("0 = unlimited is valid");
    node.stop_blocking();
}

#[test]
fn state_and_direction_are_queryable_and_direction_never_flips() {
    let (a, b) = (start(2), start(2));
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    // a uses the two-step form of the application handshake.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut a_done = false;
    let mut b_done = false;
    while !(a_done && b_done) && Instant::now() < deadline {
        while let Some(e) = a.events().try_recv() {
            match e {
                Event::State {
                    peer,
                    state: ConnState::Connected,
                    ..
                } => {
                    a.prepare_streams(peer, &["s"]);
                    a.finalize_handshake(peer).unwrap();
                }
                Event::State {
                    state: ConnState::Established,
                    ..
                } => a_done = true,
                _ => {}
            }
        }
        while let Some(e) = b.events().try_recv() {
            match e {
                Event::State {
                    peer,
                    state: ConnState::Connected,
                    ..
                } => {
                    b.complete_handshake(peer, &["s", "extra"]).unwrap();
                }
                Event::State {
                    state: ConnState::Established,
                    ..
                } => b_done = true,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(a_done && b_done);
    assert_eq!(a.state(b.peer_id()), ConnState::Established);
    assert_eq!(a.is_outbound(b.peer_id()), Some(true));
    assert_eq!(b.is_outbound(a.peer_id()), Some(false));
    // The remote opening streams (and sending on them) does not change the direction.
    let s = b.stream("s");
    b.try_send(a.peer_id(), &s, Bytes::from_static(b"x"))
        .unwrap();
    assert_eq!(receive(&a, 1, Duration::from_secs(5)).len(), 1);
    assert_eq!(a.is_outbound(b.peer_id()), Some(true));
    assert_eq!(b.is_outbound(a.peer_id()), Some(false));
    assert_eq!(
        a.connected_peers(),
        vec![(b.peer_id(), ConnState::Established)]
    );
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn cancelling_reconnection_emits_disconnected() {
    let a = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .reconnect(Duration::from_millis(200), Duration::from_secs(1), 0),
    )
    .unwrap();
    // Nobody listens there: the dial fails and a waits to retry.
    let ghost = Identity::generate().unwrap().peer_id();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    a.connect(ghost, addr).unwrap();
    assert!(wait_for(&a, &[], Duration::from_secs(5), |e| matches!(
        e,
        Event::State {
            state: ConnState::Reconnecting,
            ..
        }
    )));
    a.cancel_reconnect(ghost).unwrap();
    assert!(wait_for(&a, &[], Duration::from_secs(5), |e| matches!(
        e,
        Event::State {
            state: ConnState::Disconnected,
            ..
        }
    )));
    // And it stays down.
    assert!(!wait_for(
        &a,
        &[],
        Duration::from_millis(800),
        |e| matches!(
            e,
            Event::State {
                state: ConnState::Connecting,
                ..
            }
        )
    ));
    a.stop_blocking();
}

#[test]
fn statistics_and_dump_state_reflect_traffic() {
    let (a, b) = (start(2), start(2));
    mesh(&[a.clone(), b.clone()], &["blocks", "votes"]);
    let (blocks, votes) = (a.stream("blocks"), a.stream("votes"));
    for _ in 0..10 {
        a.try_send(b.peer_id(), &blocks, Bytes::from(vec![0u8; 1000]))
            .unwrap();
    }
    for _ in 0..3 {
        a.try_send(b.peer_id(), &votes, Bytes::from(vec![0u8; 10]))
            .unwrap();
    }
    assert_eq!(receive(&b, 13, Duration::from_secs(5)).len(), 13);
    let sent = futures::executor::block_on(a.peer_stats(b.peer_id())).expect("stats");
    assert_eq!(sent.state, ConnState::Established);
    assert_eq!(sent.connections, 1);
    assert_eq!(sent.failures, 0);
    let blocks_out = sent
        .streams
        .iter()
        .find(|s| s.name == "blocks")
        .expect("blocks");
    assert_eq!(
        (blocks_out.sent_messages, blocks_out.sent_bytes),
        (10, 10_000)
    );
    let got = futures::executor::block_on(b.peer_stats(a.peer_id())).expect("stats");
    let votes_in = got
        .streams
        .iter()
        .find(|s| s.name == "votes")
        .expect("votes");
    assert_eq!(
        (votes_in.received_messages, votes_in.received_bytes),
        (3, 30)
    );
    assert!(got.since_last_message.is_some());
    let dump: serde_json::Value =
        serde_json::from_str(&futures::executor::block_on(a.dump_state())).expect("json");
    assert_eq!(dump["peer_id"], a.peer_id().to_string());
    assert_eq!(dump["peers"][0]["peer_id"], b.peer_id().to_string());
    assert_eq!(dump["peers"][0]["state"], "Established");
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn connect_and_wait_resolves_fails_and_cancels_on_drop() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (start(1), start(1));
    runtime
        .block_on(a.connect_and_wait(b.peer_id(), b.listen_addr()))
        .expect("connects");
    assert!(matches!(
        a.state(b.peer_id()),
        ConnState::Connected | ConnState::Established
    ));
    // Nobody listens: the attempt fails, and the peer is left to retry by itself.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let ghost = Identity::generate().unwrap().peer_id();
    let failed = runtime.block_on(a.connect_and_wait(ghost, dead));
    assert!(
        matches!(
            failed,
            Err(glueberry::ConnectError::Failed {
                state: ConnState::Reconnecting,
                ..
            })
        ),
        "{failed:?}"
    );
    // A listener that never answers the handshake: the dial hangs; dropping the future (here by
    // a timeout) cancels it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = Identity::generate().unwrap().peer_id();
    let silent_addr = silent.local_addr().unwrap();
    let timed_out = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(300),
            a.connect_and_wait(mute, silent_addr),
        )
        .await
    });
    assert!(timed_out.is_err(), "the silent peer cannot have connected");
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.state(mute) != ConnState::Disconnected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        a.state(mute),
        ConnState::Disconnected,
        "dropping the future did not cancel"
    );
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn health_is_live_at_once_and_ready_with_a_connection() {
    let (a, b) = (start(1), start(1));
    let health = a.health();
    assert!(health.live && !health.ready, "{health:?}");
    mesh(&[a.clone(), b.clone()], &["s"]);
    let health = a.health();
    assert!(health.live && health.ready, "{health:?}");
    let json: serde_json::Value = serde_json::from_str(&health.to_json()).unwrap();
    assert_eq!(json["checks"]["connections"]["ok"], true);
    a.stop_blocking();
    assert!(!a.health().live);
    b.stop_blocking();
}

/// Go bugs, through the Node API: a remote close is noticed, the peer is redialled without a
/// limit, the reconnect reaches Established (not stuck in Reconnecting), and a peer that only
/// dialled in leaves no state behind.
#[test]
fn go_bugs_remote_close_unlimited_reconnect_and_freed_state() {
    let seed = [0x77u8; 32];
    let b_config = |addr| {
        NodeConfig::new(Identity::from_seed(&seed), NET, addr)
            .shards(1)
            .event_buffer(1000)
    };
    let b = Node::start(b_config(common::any_port())).unwrap();
    let b_addr = b.listen_addr();
    let b_id = b.peer_id();
    let a = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .event_buffer(10_000)
            // At most 20 attempts would be spent in the second b is down: 0 must not stop.
            .reconnect(Duration::from_millis(20), Duration::from_millis(50), 0),
    )
    .unwrap();
    a.connect(b_id, b_addr).unwrap();
    assert!(wait_for(
        &a,
        &["s"],
        Duration::from_secs(10),
        established(b_id)
    ));
    assert!(wait_for(
        &b,
        &["s"],
        Duration::from_secs(10),
        established(a.peer_id())
    ));
    // b goes away (orderly close): a notices and starts redialling.
    b.stop_blocking();
    assert!(wait_for(&a, &["s"], Duration::from_secs(5), |e| matches!(
        e,
        Event::State { peer, state: ConnState::Reconnecting, .. } if *peer == b_id
    )));
    std::thread::sleep(Duration::from_secs(1)); // well past 10 attempts
    // Still trying (caught between attempts or in one).
    assert!(matches!(
        a.state(b_id),
        ConnState::Reconnecting | ConnState::Connecting
    ));
    // b comes back on the same address with the same identity: a gets to Established by itself.
    let b2 = Node::start(b_config(b_addr)).unwrap();
    assert!(wait_for(
        &b2,
        &["s"],
        Duration::from_secs(10),
        established(a.peer_id())
    ));
    assert!(wait_for(
        &a,
        &["s"],
        Duration::from_secs(10),
        established(b_id)
    ));
    let stats = futures::executor::block_on(a.peer_stats(b_id)).unwrap();
    assert_eq!(stats.connections, 2);
    a.stop_blocking();
    b2.stop_blocking();
}

#[test]
fn stalled_handshakes_are_capped_and_cut_off() {
    use std::io::Read;
    let server = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .event_buffer(1000)
            .pending_handshakes(4, Duration::from_secs(1)),
    )
    .unwrap();
    // Six sockets that connect and never speak (slowloris).
    let mut sockets: Vec<std::net::TcpStream> = (0..6)
        .map(|_| std::net::TcpStream::connect(server.listen_addr()).unwrap())
        .collect();
    // A socket the server closed reads 0 bytes (or a reset); an open one times out.
    let closed = |sockets: &mut Vec<std::net::TcpStream>| {
        let mut count = 0;
        for s in sockets.iter_mut() {
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            let mut buf = [0u8; 8];
            match s.read(&mut buf) {
                Ok(0) => count += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => count += 1,
                Ok(_) => {}
            }
        }
        count
    };
    std::thread::sleep(Duration::from_millis(300));
    // Of a table of 4, strangers may hold 3 (a quarter is kept for known peers' addresses).
    assert_eq!(
        closed(&mut sockets),
        3,
        "the three over the strangers' share are closed at once"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        closed(&mut sockets),
        6,
        "the stalled three are cut off after the timeout"
    );
    // A real peer still gets in.
    let client = start(1);
    let ok = futures::executor::block_on(
        client.connect_and_wait(server.peer_id(), server.listen_addr()),
    );
    assert!(ok.is_ok(), "{ok:?}");
    client.stop_blocking();
    server.stop_blocking();
}

/// Go bugs, through the Node API: a handshake timeout leads to Cooldown, and an explicit
/// connect leaves Cooldown (it could not in Go).
#[test]
fn go_bugs_cooldown_after_handshake_timeout_is_left_by_connect() {
    let a = Node::start(
        NodeConfig::new(Identity::generate().unwrap(), NET, common::any_port())
            .shards(1)
            .event_buffer(1000)
            .handshake_timeout(Duration::from_millis(200))
            .cooldown(Duration::from_secs(60)),
    )
    .unwrap();
    let b = start(1);
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    // a never completes its application handshake: after 200 ms it is in Cooldown.
    let events = a.events();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut cooled = false;
    while Instant::now() < deadline && !cooled {
        if let Some(Event::State {
            state: ConnState::Cooldown,
            ..
        }) = events.try_recv()
        {
            cooled = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(cooled, "no Cooldown after the handshake timeout");
    assert_eq!(a.state(b.peer_id()), ConnState::Cooldown);
    // An explicit connect leaves Cooldown at once.
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    let left = wait_for(&a, &["s"], Duration::from_secs(5), |e| {
        matches!(
            e,
            Event::State {
                state: ConnState::Connected | ConnState::Connecting,
                ..
            }
        )
    });
    assert!(left, "connect did not leave Cooldown");
    a.stop_blocking();
    b.stop_blocking();
}
