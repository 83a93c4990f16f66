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
