//! The application a new user wrote first (issue 17), against the API as it is now: three
//! nodes in one tokio process on a current-thread runtime — a hello on the handshake stream,
//! RPC, mempool gossip, a 20 MB file, a blacklisted peer, drain and stop. Everything here is
//! what the application means; nothing is glue around the library.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use glueberry::transport::{CloseCode, ConnState};
use glueberry::{
    ConnectError, DialFailure, Event, EventFilter, Identity, Node, NodeConfig, PeerId, RequestError,
};

const NET: &str = "user-scenario";
const STREAMS: [&str; 3] = ["rpc", "mempool", "files"];
const T: Duration = Duration::from_secs(20);
const FILE: usize = 20 * 1024 * 1024;
const CHUNK: usize = 512 * 1024;

fn start(name: &str) -> Node {
    let config = NodeConfig::new(
        Identity::generate().unwrap(),
        NET,
        "127.0.0.1:0".parse().unwrap(),
    )
    .shards(1)
    .stream_priority("rpc", 7)
    .stream_priority("files", 0);
    let node = Node::start(config).unwrap();
    println!("{name}: {}", node.peer_id());
    node
}

/// What the application listens to on a node, asked for before it connects to anyone (an
/// event or a hello that comes earlier would go elsewhere).
struct Listening {
    events: glueberry::Subscription,
    hellos: glueberry::Messages,
    requests: glueberry::Requests,
}

fn listen(node: &Node) -> Listening {
    Listening {
        events: node.subscribe(EventFilter::default(), 1024),
        hellos: node.messages_on("handshake").unwrap(),
        requests: node.requests("rpc").unwrap(),
    }
}

/// The application's side of a node: hellos, the handshake, RPC answers. Runs until the node
/// stops.
async fn run_app(node: Node, height: u64, listening: Listening) {
    let Listening {
        events,
        mut hellos,
        mut requests,
    } = listening;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::State { peer, state: ConnState::Connected, .. }) => {
                    let hello = Bytes::from(format!("hello, height {height}"));
                    let _ = node.send(peer, "handshake", hello).await;
                }
                Some(_) => {}
                None => return,
            },
            Some(hello) = hellos.recv() => {
                if hello.data.starts_with(b"hello") {
                    let _ = node.complete_handshake(hello.peer, &STREAMS);
                }
            }
            Some(request) = requests.recv() => {
                let answer = match &request.data[..] {
                    b"height?" => Bytes::from(format!("height {height}")),
                    _ => Bytes::from_static(b"?"),
                };
                let _ = request.respond(answer).await;
            }
        }
    }
}

/// Waits for `node`'s `Ready` about each of `peers`: both sides Established, streams answered.
async fn ready(node: &Node, peers: &[PeerId]) {
    let events = node.events();
    let mut waiting = peers.to_vec();
    while !waiting.is_empty() {
        match tokio::time::timeout(T, events.recv()).await {
            Ok(Some(Event::Ready { peer })) => waiting.retain(|p| *p != peer),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the node stopped"),
            Err(_) => panic!("not ready with {waiting:?}"),
        }
    }
}

/// FNV-1a over the bytes: the file's checksum.
fn checksum(chunks: impl IntoIterator<Item = Bytes>) -> (usize, u64) {
    let (mut len, mut hash) = (0, 0xcbf2_9ce4_8422_2325u64);
    for chunk in chunks {
        len += chunk.len();
        for &b in chunk.iter() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    (len, hash)
}

#[tokio::test(flavor = "current_thread")]
async fn three_nodes_hello_rpc_gossip_a_20_mb_file_blacklist_drain_and_stop() {
    let (a, b, c) = (start("a"), start("b"), start("c"));
    // Receivers before any stream opens.
    let mut files_at_b = b.messages_on("files").unwrap();
    let mut mempool = [a.messages(), b.messages(), c.messages()];
    let apps: Vec<_> = [(&a, 7), (&b, 8), (&c, 9)]
        .into_iter()
        .map(|(node, height)| tokio::spawn(run_app(node.clone(), height, listen(node))))
        .collect();

    // A full mesh.
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    b.connect(c.peer_id(), c.listen_addr()).unwrap();
    c.connect(a.peer_id(), a.listen_addr()).unwrap();
    for (x, y, z) in [(&a, &b, &c), (&b, &c, &a), (&c, &a, &b)] {
        ready(x, &[y.peer_id(), z.peer_id()]).await;
    }

    // RPC: an answer, matched to its request.
    let answer = a
        .request(b.peer_id(), "rpc", Bytes::from_static(b"height?"), T)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"height 8");

    // Gossip: c announces 100 transactions to everyone it knows.
    for i in 0..100u32 {
        for peer in [a.peer_id(), b.peer_id()] {
            c.send(peer, "mempool", Bytes::from(format!("tx {i}")))
                .await
                .unwrap();
        }
    }
    for inbox in &mut mempool[..2] {
        let mut seen = HashSet::new();
        while seen.len() < 100 {
            let message = tokio::time::timeout(T, inbox.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&*message.stream, "mempool");
            seen.insert(message.data);
        }
    }

    // A 20 MB file from a to b, in chunks, while RPC keeps answering beside it.
    let file: Vec<Bytes> = (0..FILE / CHUNK)
        .map(|i| Bytes::from(vec![(i * 7 % 251) as u8; CHUNK]))
        .collect();
    let sent = checksum(file.iter().cloned());
    let sender = {
        let (a, b_id) = (a.clone(), b.peer_id());
        tokio::spawn(async move {
            for chunk in file {
                a.send(b_id, "files", chunk).await.unwrap();
            }
        })
    };
    let rpc_beside = a
        .request(b.peer_id(), "rpc", Bytes::from_static(b"height?"), T)
        .await;
    assert!(
        rpc_beside.is_ok(),
        "RPC answers during the transfer: {rpc_beside:?}"
    );
    let mut received = Vec::new();
    while received.iter().map(Bytes::len).sum::<usize>() < FILE {
        let chunk = tokio::time::timeout(T, files_at_b.recv())
            .await
            .unwrap()
            .unwrap();
        received.push(chunk.data);
    }
    sender.await.unwrap();
    assert_eq!(
        checksum(received),
        sent,
        "the file arrived whole and in order"
    );

    // b blacklists c: c is cut off, and its next dial is refused with the reason.
    b.blacklist(c.peer_id()).unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while c.state(b.peer_id()) == ConnState::Established {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = c.connect_and_wait(b.peer_id(), b.listen_addr()).await;
    assert!(
        matches!(refused, Err(ConnectError::Failed {
            cause: DialFailure::RefusedByPeer(code),
            ..
        }) if code == CloseCode::Blacklisted),
        "{refused:?}"
    );
    let to_blacklisted = c
        .request(b.peer_id(), "rpc", Bytes::from_static(b"height?"), T)
        .await;
    assert!(
        matches!(to_blacklisted, Err(RequestError::Send(_))),
        "{to_blacklisted:?}"
    );

    // Drain, then stop: everything a sent is delivered.
    for i in 0..1000u32 {
        a.send(b.peer_id(), "mempool", Bytes::from(format!("late {i}")))
            .await
            .unwrap();
    }
    assert!(a.drain(T).await, "a's messages all confirmed");
    let mut late = 0;
    while late < 1000 {
        let message = tokio::time::timeout(T, mempool[1].recv())
            .await
            .unwrap()
            .unwrap();
        if message.data.starts_with(b"late") {
            late += 1;
        }
    }
    for node in [&a, &b, &c] {
        node.stop().await;
    }
    for app in apps {
        app.await.unwrap();
    }
}
