//! Request/response between nodes with `Node::request` and `Node::requests`: a key-value
//! service, callers with timeouts, and a server that dies in the middle of a request.
//!
//! - `server` serves `kv` requests (`get KEY`, `put KEY VALUE`) and refuses anything else.
//! - `client` sends requests concurrently and gets each answer matched to its request.
//! - A slow request times out on the client's clock; a refused one fails at once.
//! - The server's process "dies" (its node stops) while a request waits: the client's request
//!   fails with `Disconnected` at once instead of hanging until its timeout.
//!
//! Run: `cargo run -p glueberry-examples --example rpc`. It checks its own results.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::crypto::Identity;
use glueberry::testing::establish;
use glueberry::{Node, NodeConfig, RequestError};

const NETWORK: &str = "rpc-example";

fn start() -> Result<Node, Box<dyn std::error::Error>> {
    let config = NodeConfig::new(Identity::generate()?, NETWORK, "127.0.0.1:0".parse()?).shards(1);
    Ok(Node::start(config)?)
}

/// The server's loop: a tiny key-value store. It serves every peer from one loop, so it
/// answers with `try_respond`/`try_refuse`, which never wait: a client that stops taking its
/// answers loses them (its requests time out on its side) and no other client waits for it.
async fn serve(mut requests: glueberry::Requests) {
    let mut store: HashMap<String, String> = HashMap::new();
    let mut unanswered = Vec::new();
    while let Some(request) = requests.recv().await {
        let text = String::from_utf8_lossy(&request.data).to_string();
        let mut words = text.splitn(3, ' ');
        let answer = match (words.next(), words.next(), words.next()) {
            (Some("get"), Some(key), None) => store.get(key).cloned().unwrap_or_default(),
            (Some("put"), Some(key), Some(value)) => {
                store.insert(key.to_string(), value.to_string());
                "ok".to_string()
            }
            (Some("slow"), _, _) => {
                // Takes longer than the caller waits.
                tokio::time::sleep(Duration::from_millis(500)).await;
                "late".to_string()
            }
            (Some("hang"), _, _) => {
                // Never answered: the server dies with it pending.
                unanswered.push(request);
                continue;
            }
            _ => {
                let _ = request.try_refuse();
                continue;
            }
        };
        let _ = request.try_respond(Bytes::from(answer));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, server) = (start()?, start()?);
    // Serve before the stream opens, so that no request arrives before anyone listens.
    let requests = server.requests("kv")?;
    establish(&client, &server, &["kv"], Duration::from_secs(10))?;
    let serving = tokio::spawn(serve(requests));
    let peer = server.peer_id();
    let timeout = Duration::from_secs(2);

    // Ten puts at once, then ten gets: each answer belongs to its own request.
    let puts =
        (0..10).map(|i| client.request(peer, "kv", Bytes::from(format!("put k{i} v{i}")), timeout));
    for answer in futures::future::join_all(puts).await {
        assert_eq!(&answer?[..], b"ok");
    }
    let gets =
        (0..10).map(|i| client.request(peer, "kv", Bytes::from(format!("get k{i}")), timeout));
    for (i, answer) in futures::future::join_all(gets)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(answer?, Bytes::from(format!("v{i}")));
    }
    println!("10 puts and 10 gets answered, each to its own request");

    let started = Instant::now();
    let slow = client
        .request(
            peer,
            "kv",
            Bytes::from_static(b"slow"),
            Duration::from_millis(100),
        )
        .await;
    println!("slow request: {slow:?} after {:?}", started.elapsed());
    assert!(matches!(slow, Err(RequestError::Timeout(_))));

    let refused = client
        .request(
            peer,
            "kv",
            Bytes::from_static(b"delete everything"),
            timeout,
        )
        .await;
    println!("unknown command: {refused:?}");
    assert!(matches!(refused, Err(RequestError::Refused)));

    // The server dies with a request pending.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = client
                .request(
                    peer,
                    "kv",
                    Bytes::from_static(b"hang"),
                    Duration::from_secs(30),
                )
                .await;
            (result, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop().await;
    let (result, after) = waiting.await?;
    println!("request pending when the server died: {result:?} after {after:?}");
    assert!(matches!(result, Err(RequestError::Disconnected)));
    assert!(
        after < Duration::from_secs(10),
        "failed at once, not at its timeout"
    );

    serving.await?;
    client.stop().await;
    println!("rpc example: every outcome as expected");
    Ok(())
}
