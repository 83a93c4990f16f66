//! A message handler that answers inline, on its shard thread, with `try_send` through a handle
//! to its own node: every message is echoed, nothing waits for an application thread.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::{Handler, Node, StreamName};

mod common;

const NET: &str = "inline-test";

#[test]
fn a_handler_answers_inline_on_its_shard_thread() {
    let server: Arc<OnceLock<(Node, StreamName)>> = Arc::default();
    let threads: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let handler: Handler = {
        let (server, threads, answered) = (server.clone(), threads.clone(), answered.clone());
        Arc::new(move |peer, _stream, data| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            let mut seen = threads.lock().unwrap();
            if !seen.contains(&name) {
                seen.push(name);
            }
            drop(seen);
            if let Some((node, stream)) = server.get()
                && node.try_send(*peer, stream, data.clone()).is_ok()
            {
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let b = Node::start(common::loopback_config(NET).handler(handler)).unwrap();
    let a = common::start_node(NET, 1);
    let timeout = Duration::from_secs(10);
    glueberry::testing::establish(&a, &b, &["echo"], timeout).unwrap();
    server.set((b.clone(), b.stream("echo"))).ok().unwrap();
    let stream = a.stream("echo");
    let mut replies = a.messages();
    let deadline = Instant::now() + timeout;
    for i in 0..200u32 {
        a.try_send(
            b.peer_id(),
            &stream,
            Bytes::copy_from_slice(&i.to_be_bytes()),
        )
        .unwrap();
        let reply = loop {
            if let Some(reply) = replies.try_recv() {
                break reply;
            }
            assert!(Instant::now() < deadline, "no echo of {i}");
            std::thread::yield_now();
        };
        assert_eq!(&reply.data[..], &i.to_be_bytes(), "echo {i}");
    }
    assert_eq!(answered.load(Ordering::Relaxed), 200);
    // Every answer came from the shard thread that received the message.
    let threads = threads.lock().unwrap().clone();
    assert!(
        threads.len() == 1 && threads[0].starts_with("glueberry-shard"),
        "{threads:?}"
    );
    a.stop_blocking();
    b.stop_blocking();
}

/// A node with a message handler still serves its request streams through `Node::requests`:
/// a request goes to the `Requests` the application took, not to the handler (which used to
/// swallow it, so the request timed out).
#[test]
fn requests_reach_their_server_beside_a_handler() {
    let handled = Arc::new(AtomicUsize::new(0));
    let handler: Handler = {
        let handled = handled.clone();
        Arc::new(move |_, _, _| {
            handled.fetch_add(1, Ordering::Relaxed);
        })
    };
    let b = Node::start(common::loopback_config(NET).handler(handler)).unwrap();
    let a = common::start_node(NET, 1);
    let timeout = Duration::from_secs(10);
    let mut requests = b.requests("kv").unwrap();
    glueberry::testing::establish(&a, &b, &["kv", "echo"], timeout).unwrap();
    let server = std::thread::spawn(move || {
        futures::executor::block_on(async {
            let request = requests.recv().await.expect("a request");
            let answer = Bytes::from([&b"answer to "[..], &request.data[..]].concat());
            request.try_respond(answer).unwrap();
        })
    });
    let answer = futures::executor::block_on(a.request(
        b.peer_id(),
        "kv",
        Bytes::from_static(b"height"),
        timeout,
    ))
    .expect("the request is answered");
    assert_eq!(&answer[..], b"answer to height");
    server.join().unwrap();
    // Other streams still go to the handler.
    a.try_send(b.peer_id(), "echo", Bytes::from_static(b"x"))
        .unwrap();
    let deadline = Instant::now() + timeout;
    while handled.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the handler got nothing");
        std::thread::sleep(Duration::from_millis(2));
    }
    a.stop_blocking();
    b.stop_blocking();
}
