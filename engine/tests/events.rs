//! What the application is told, and that it is told everything it did not filter out: the
//! `Ready` event (both sides Established), typed reasons, filters by kind and state, and
//! `Missed` when a subscriber falls behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use glueberry::transport::ConnectionConfig;
use glueberry::{
    CloseCode, ConnState, ErrorKind, Event, EventFilter, EventKind, Node, NodeConfig, PeerId,
    Subscription,
};

const NET: &str = "events-test";
const T: Duration = Duration::from_secs(10);

fn node(config: impl FnOnce(NodeConfig) -> NodeConfig) -> Node {
    Node::start(config(
        NodeConfig::new(
            glueberry::Identity::generate().unwrap(),
            NET,
            "127.0.0.1:0".parse().unwrap(),
        )
        .shards(1),
    ))
    .unwrap()
}

/// The next event of `events` that `want` picks, within `T`; the others are skipped.
fn next<R>(events: &Subscription, mut want: impl FnMut(Event) -> Option<R>) -> R {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        match events.try_recv() {
            Some(event) => {
                if let Some(found) = want(event) {
                    return found;
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    panic!("event not seen within {T:?}");
}

fn state(events: &Subscription, peer: PeerId, state: ConnState) {
    next(events, |e| match e {
        Event::State {
            peer: p, state: s, ..
        } if p == peer && s == state => Some(()),
        _ => None,
    })
}

#[test]
fn ready_comes_when_the_remote_application_completes_its_handshake() {
    let (a, b) = (node(|c| c), node(|c| c));
    let (ea, eb) = (a.events(), b.events());
    a.connect(b.peer_id(), b.listen_addr()).unwrap();
    state(&ea, b.peer_id(), ConnState::Connected);
    state(&eb, a.peer_id(), ConnState::Connected);

    // a completes; b's application has not decided yet: a is Established, not Ready.
    a.complete_handshake(b.peer_id(), &["consensus", "mempool"])
        .unwrap();
    state(&ea, b.peer_id(), ConnState::Established);
    std::thread::sleep(Duration::from_millis(200));
    while let Some(event) = ea.try_recv() {
        assert!(!matches!(event, Event::Ready { .. }), "ready too early");
    }

    // b completes (one stream in common): both are told, a after its streams were answered.
    b.complete_handshake(a.peer_id(), &["consensus", "other"])
        .unwrap();
    let mut rejected = false;
    let ready = next(&ea, |e| match e {
        Event::StreamRejected { stream, .. } => {
            assert_eq!(&*stream, "mempool");
            rejected = true;
            None
        }
        Event::Ready { peer } => Some(peer),
        _ => None,
    });
    assert_eq!(ready, b.peer_id());
    assert!(rejected, "the rejected stream is reported before Ready");
    let ready = next(&eb, |e| match e {
        Event::Ready { peer } => Some(peer),
        _ => None,
    });
    assert_eq!(ready, a.peer_id());
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn a_state_filter_does_not_drop_other_kinds_and_errors_are_typed() {
    // b accepts messages of at most 1 KiB; a accepts more, so a's `send` takes a 4 KiB message
    // and the connection refuses it: it comes back as SendFailed with a typed error.
    let small = ConnectionConfig {
        max_message_size: 1024,
        ..ConnectionConfig::default()
    };
    let (a, b) = (node(|c| c), node(|c| c.connection(small)));
    // Only disconnections among state changes; every other kind still passes.
    let lost = a.subscribe(EventFilter::all().state(ConnState::Disconnected), 64);
    let only_ready = a.subscribe(EventFilter::all().kind(EventKind::Ready), 64);
    glueberry::testing::establish(&a, &b, &["s"], T).unwrap();
    futures::executor::block_on(a.send(b.peer_id(), "s", Bytes::from(vec![7u8; 4096]))).unwrap();

    let (error, data) = next(&lost, |e| match e {
        Event::State { state, .. } => panic!("state {state:?} passed a Disconnected filter"),
        Event::SendFailed { error, data, .. } => Some((error, data)),
        _ => None,
    });
    assert_eq!(error.kind(), ErrorKind::MessageTooLarge);
    assert_eq!(error.peer(), Some(b.peer_id()));
    assert_eq!(error.stream(), Some("s"));
    assert_eq!(data.len(), 4096, "the message comes back");

    let ready = only_ready.recv_blocking().unwrap();
    assert!(matches!(ready, Event::Ready { peer } if peer == b.peer_id()));
    assert!(only_ready.try_recv().is_none(), "only Ready passes");

    // The peer closes: the reason names its code.
    b.stop_blocking();
    let reason = next(&lost, |e| match e {
        Event::State {
            state: ConnState::Disconnected,
            reason,
            ..
        } => Some(reason),
        Event::State { state, .. } => panic!("state {state:?} passed a Disconnected filter"),
        _ => None,
    });
    let reason = format!("{reason:?}");
    assert!(reason.contains("Shutdown"), "{reason}");
    a.stop_blocking();
}

#[test]
fn a_subscriber_that_falls_behind_is_told_what_it_missed() {
    let small = ConnectionConfig {
        max_message_size: 1024,
        ..ConnectionConfig::default()
    };
    let (a, b) = (node(|c| c.event_buffer(4)), node(|c| c.connection(small)));
    glueberry::testing::establish(&a, &b, &["s"], T).unwrap();
    // Nobody reads `events()` while 50 messages come back.
    let events = a.events();
    while events.try_recv().is_some() {}
    let before = a.events_dropped();
    for _ in 0..50 {
        futures::executor::block_on(a.send(b.peer_id(), "s", Bytes::from(vec![1u8; 2048])))
            .unwrap();
    }
    let deadline = Instant::now() + T;
    while a.events_dropped() < before + 46 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut failed = 0;
    let mut missed = 0;
    while let Some(event) = events.try_recv() {
        match event {
            Event::SendFailed { .. } => failed += 1,
            Event::Missed { count } => missed += count,
            _ => {}
        }
    }
    assert_eq!(failed, 4, "the queue held four");
    // The next event is preceded by the count of those lost.
    a.disconnect(b.peer_id()).unwrap();
    let lost = next(&events, |e| match e {
        Event::Missed { count } => Some(count),
        _ => None,
    });
    assert_eq!(missed + lost, 46);
    assert_eq!(a.events_dropped() - before, 46);
    a.stop_blocking();
    b.stop_blocking();
}

#[test]
fn close_codes_print_their_names() {
    assert_eq!(format!("{:?}", CloseCode::Blacklisted), "Blacklisted");
    assert_eq!(CloseCode::Blacklisted.to_string(), "Blacklisted (7)");
    for code in 0..=20u16 {
        assert_eq!(CloseCode::from_u16(code).to_u16(), code);
    }
    assert_eq!(CloseCode::from_u16(99), CloseCode::Other(99));
    assert_eq!(CloseCode::from_u16(99).to_string(), "code 99");
}

#[tokio::test(flavor = "current_thread")]
async fn a_sink_sends_everything_in_order_waiting_when_the_stream_is_full() {
    use futures::{SinkExt, StreamExt};
    // A stream queue of 4 messages: the sink has to wait for room most of the time.
    let (a, b) = (node(|c| c.stream_queue(4, 1 << 20)), node(|c| c));
    let mut received = b.messages_on("s").unwrap();
    glueberry::testing::establish(&a, &b, &["s"], T).unwrap();
    let mut sink = a.sink(b.peer_id(), "s");
    let mut messages =
        futures::stream::iter((0..2000u32).map(|i| Ok(Bytes::from(i.to_be_bytes().to_vec()))));
    let sending = async {
        sink.send_all(&mut messages).await.unwrap();
        sink.close().await.unwrap();
    };
    let receiving = async {
        for i in 0..2000u32 {
            let message = received.next().await.unwrap();
            assert_eq!(&message.data[..], &i.to_be_bytes(), "message {i}");
        }
    };
    tokio::time::timeout(T, futures::future::join(sending, receiving))
        .await
        .unwrap();
    // A sink to a peer that is not connected refuses at once, with the reason.
    let mut nowhere = a.sink(glueberry::Identity::generate().unwrap().peer_id(), "s");
    let refused = nowhere.send(Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(
        refused,
        glueberry::NodeSendError::NotConnected {
            state: ConnState::Disconnected
        }
    );
    a.stop().await;
    b.stop().await;
}
