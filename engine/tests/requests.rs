//! Request/response as a library feature: `Node::request` against a `Node::requests` server,
//! with every way a request can end (answered, refused, timed out, peer gone, peer unknown).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use glueberry::testing::establish;
use glueberry::transport::ConnState;
use glueberry::{Node, NodeConfig, NodeSendError, RequestError};

const NET: &str = "requests-test";
const T: Duration = Duration::from_secs(10);

fn node() -> Node {
    Node::start(
        NodeConfig::new(
            glueberry::Identity::generate().unwrap(),
            NET,
            "127.0.0.1:0".parse().unwrap(),
        )
        .shards(2),
    )
    .unwrap()
}

fn waiting(node: &Node) -> u64 {
    let state: serde_json::Value =
        serde_json::from_str(&futures::executor::block_on(node.dump_state())).unwrap();
    state["requests_waiting"].as_u64().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn requests_are_answered_refused_timed_out_and_failed_with_typed_errors() {
    let (client, server) = (node(), node());
    let mut requests = server.requests("rpc").unwrap();
    establish(&client, &server, &["rpc"], T).unwrap();

    // The server: upper-cases what it gets; refuses "no"; leaves "ignore" unanswered.
    let serving = tokio::spawn(async move {
        let mut ignored = Vec::new();
        while let Some(request) = requests.recv().await {
            match &request.data[..] {
                b"no" => request.refuse().await.unwrap(),
                b"ignore" => ignored.push(request),
                data => {
                    let upper = Bytes::from(data.to_ascii_uppercase());
                    request.respond(upper).await.unwrap();
                }
            }
        }
        ignored.len()
    });

    // 200 requests at once, each answered with its own response.
    let peer = server.peer_id();
    let calls = (0..200).map(|i| {
        let client = client.clone();
        async move {
            let request = Bytes::from(format!("request {i}"));
            let response = client.request(peer, "rpc", request, T).await.unwrap();
            assert_eq!(response, Bytes::from(format!("REQUEST {i}")));
        }
    });
    futures::future::join_all(calls).await;

    let refused = client
        .request(peer, "rpc", Bytes::from_static(b"no"), T)
        .await;
    assert!(matches!(refused, Err(RequestError::Refused)), "{refused:?}");

    let timed_out = client
        .request(
            peer,
            "rpc",
            Bytes::from_static(b"ignore"),
            Duration::from_millis(200),
        )
        .await;
    assert!(
        matches!(timed_out, Err(RequestError::Timeout(_))),
        "{timed_out:?}"
    );
    assert_eq!(waiting(&client), 0, "a request that timed out is forgotten");

    // The peer goes away while a request waits: Disconnected, not a timeout.
    let pending = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(peer, "rpc", Bytes::from_static(b"ignore"), T)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(waiting(&client), 1);
    client.disconnect(peer).unwrap();
    let gone = pending.await.unwrap();
    assert!(matches!(gone, Err(RequestError::Disconnected)), "{gone:?}");
    assert_eq!(waiting(&client), 0);

    // A peer that is not connected: the send fails at once.
    let stranger = glueberry::Identity::generate().unwrap().peer_id();
    let unknown = client
        .request(stranger, "rpc", Bytes::from_static(b"x"), T)
        .await;
    assert!(
        matches!(
            unknown,
            Err(RequestError::Send(NodeSendError::NotConnected {
                state: ConnState::Disconnected
            }))
        ),
        "{unknown:?}"
    );

    server.stop().await;
    assert_eq!(
        serving.await.unwrap(),
        2,
        "two requests were left unanswered"
    );
    client.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_on_a_stream_the_peer_only_calls_on_is_refused_at_once() {
    let (a, b) = (node(), node());
    // b sends requests on "ask" but serves none there; a serves "ask".
    let mut served = a.requests("ask").unwrap();
    let _ = b
        .request(a.peer_id(), "ask", Bytes::new(), Duration::from_millis(1))
        .await; // not connected yet: registers "ask" as a stream b calls on
    establish(&a, &b, &["ask"], T).unwrap();
    let answering = tokio::spawn(async move {
        let request = served.recv().await.unwrap();
        request.respond(Bytes::from_static(b"yes")).await.unwrap();
    });
    let answer = b
        .request(a.peer_id(), "ask", Bytes::from_static(b"?"), T)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"yes");
    answering.await.unwrap();
    // a asks b on "ask": b does not serve it, so b's node refuses at once.
    let started = std::time::Instant::now();
    let refused = a
        .request(b.peer_id(), "ask", Bytes::from_static(b"?"), T)
        .await;
    assert!(matches!(refused, Err(RequestError::Refused)), "{refused:?}");
    assert!(started.elapsed() < T / 2, "refused, not timed out");
    a.stop().await;
    b.stop().await;
}
