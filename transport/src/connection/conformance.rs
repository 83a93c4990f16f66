//! The points a second implementation found unsettled in PROTOCOL.md, each as the node now
//! behaves (issue 18): CLOSE after a record fails, DATA before acceptance, stream credit.

use super::tests::{Pair, answering, events, rogue_records, rogue_session, settings};
use super::*;
use crate::frame::{DATA_FIRST, DATA_LAST, Frame};
use crate::stream::MESSAGE_CREDIT_OVERHEAD;

const EARLY: &str = "DATA on a stream before its acceptance was sent";

fn open(stream: u16, name: &'static [u8]) -> Frame<'static> {
    Frame::Open { stream, name }
}

fn data(stream: u16, payload: &'static [u8]) -> Frame<'static> {
    Frame::Data {
        stream,
        flags: DATA_FIRST | DATA_LAST,
        total_len: None,
        payload,
    }
}

fn closed_with(conn: &mut Connection) -> Option<CloseReason> {
    events(conn).into_iter().find_map(|e| match e {
        Event::Closed { reason, .. } => Some(reason),
        _ => None,
    })
}

/// §4.6: a record that fails to open is answered with CLOSE(ProtocolError) under our own key,
/// then nothing more; the peer can open that CLOSE.
#[test]
fn a_record_that_fails_to_open_gets_an_authenticated_close_protocol_error() {
    let mut p = Pair::established(&["s"]);
    let s = p.a.stream_id("s").expect("s");
    p.a.send(s, Bytes::from_static(b"to be tampered with"))
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = p.a.poll_transmit(&mut buf);
    assert!(n > 0);
    buf[n - 1] ^= 1; // the tag
    p.b.handle_input(p.now, &buf[..n]);
    assert!(matches!(
        closed_with(&mut p.b),
        Some(CloseReason::Error(ConnectionError::Record(_)))
    ));
    let m = p.b.poll_transmit(&mut buf);
    assert!(m > 0, "a CLOSE frame is sent");
    p.a.handle_input(p.now, &buf[..m]);
    assert_eq!(
        closed_with(&mut p.a),
        Some(CloseReason::Peer(CloseCode::ProtocolError))
    );
    assert_eq!(p.b.poll_transmit(&mut buf), 0, "then nothing more");
}

/// §5.2: with the application's decision held, OPEN and DATA in one record is refused with
/// ProtocolError — every time, whatever the timing (it used to be FlowControl, sometimes).
#[test]
fn early_data_with_the_decision_held_is_a_protocol_error_every_time() {
    for _ in 0..50 {
        let (mut victim, wire) = rogue_session(
            None,
            &[&[settings()], &[open(1, b"data"), data(1, b"early")]],
        );
        answering(&mut victim, &wire);
        assert_eq!(
            closed_with(&mut victim),
            Some(CloseReason::Error(ConnectionError::Protocol(EARLY)))
        );
    }
    // Separate records, read together: the same.
    let (mut victim, wire) = rogue_session(
        None,
        &[&[settings()], &[open(1, b"data")], &[data(1, b"early")]],
    );
    victim.handle_input(Instant::now(), &wire.concat());
    assert_eq!(
        closed_with(&mut victim),
        Some(CloseReason::Error(ConnectionError::Protocol(EARLY)))
    );
}

/// §5.2: the same when the application had already decided: the acceptance cannot have reached
/// the opener before the OPEN arrived.
#[test]
fn early_data_after_the_decision_is_a_protocol_error_too() {
    let (mut victim, wire) = rogue_session(
        Some(&["data"]),
        &[&[settings()], &[open(1, b"data"), data(1, b"early")]],
    );
    answering(&mut victim, &wire);
    assert_eq!(
        closed_with(&mut victim),
        Some(CloseReason::Error(ConnectionError::Protocol(EARLY)))
    );
}

/// §5.2: DATA once the acceptance was sent is delivered; DATA on a stream we rejected is a
/// ProtocolError (code 1).
#[test]
fn data_after_acceptance_flows_and_on_a_rejected_stream_is_a_protocol_error() {
    let (mut victim, wire) = rogue_records(&[settings(), open(1, b"data"), data(1, b"in time")]);
    answering(&mut victim, &wire);
    let got: Vec<Bytes> = events(&mut victim)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![Bytes::from_static(b"in time")]);

    let (mut victim, wire) = rogue_records(&[settings(), open(1, b"unknown"), data(1, b"no")]);
    answering(&mut victim, &wire);
    assert_eq!(
        closed_with(&mut victim),
        Some(CloseReason::Error(ConnectionError::Protocol(
            "DATA on a stream we rejected"
        )))
    );
    let mut buf = vec![0u8; 1024];
    assert!(victim.poll_transmit(&mut buf) > 0, "CLOSE(1) goes back");
}

/// §5.1/§5.4: an opener's credit on a stream is the acceptance's increment (the acceptor's
/// `initial_window`), not that plus its own initial window: with nothing released, the
/// receiver gets exactly what that window covers.
#[test]
fn the_acceptance_increment_is_the_whole_initial_credit_of_a_stream() {
    let window = 16 * 1024;
    let small = Arc::new(ConnectionConfig {
        max_message_size: 1000,
        initial_window: window,
        connection_window: 1 << 20,
        ..ConnectionConfig::default()
    });
    let mut p = Pair::connected_with(small.clone(), small);
    p.a.complete_handshake(&["s"]).expect("a");
    p.b.complete_handshake(&["s"]).expect("b");
    p.pump();
    let s = p.a.stream_id("s").expect("s");
    for _ in 0..40 {
        p.a.send(s, Bytes::from(vec![0u8; 1000])).expect("queued");
    }
    p.pump();
    // b never releases: no credit comes back.
    let received = events(&mut p.b)
        .into_iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .count() as u64;
    let per_message = 1000 + MESSAGE_CREDIT_OVERHEAD;
    assert_eq!(received, u64::from(window) / per_message);
    assert!(p.a.queued_messages() > 0, "the rest waits for credit");
}

/// §4.3: an empty record (the tag alone) is valid and carries nothing.
#[test]
fn an_empty_record_is_accepted_and_carries_nothing() {
    let (mut victim, wire) =
        rogue_session(Some(&["data"]), &[&[settings()], &[], &[open(1, b"data")]]);
    answering(&mut victim, &wire);
    assert_eq!(closed_with(&mut victim), None);
    assert_eq!(victim.phase(), Phase::Established);
}

/// §6: any `max_streams` from 1 to 65535 is valid in a peer's SETTINGS (this implementation
/// only announces at most 1024 itself); 0 is out of range.
#[test]
fn a_peer_may_announce_more_than_1024_streams_but_not_zero() {
    let with = |max_streams: u16| {
        Frame::Settings(crate::frame::Settings {
            max_message_size: 1 << 20,
            max_streams,
            initial_window: 1 << 21,
            connection_window: 1 << 22,
        })
    };
    for max in [1, 1025, u16::MAX] {
        let (mut victim, wire) = rogue_session(Some(&["data"]), &[&[with(max)]]);
        answering(&mut victim, &wire);
        assert_eq!(closed_with(&mut victim), None, "max_streams {max}");
    }
    let (mut victim, wire) = rogue_session(Some(&["data"]), &[&[with(0)]]);
    answering(&mut victim, &wire);
    assert_eq!(
        closed_with(&mut victim),
        Some(CloseReason::Error(ConnectionError::Protocol(
            "SETTINGS out of range"
        )))
    );
}

/// §5.5: CLOSE is not answered: the side that receives it sends nothing back.
#[test]
fn a_close_is_not_answered() {
    let (mut victim, wire) = rogue_records(&[settings(), Frame::Close(0)]);
    answering(&mut victim, &wire);
    assert_eq!(
        closed_with(&mut victim),
        Some(CloseReason::Peer(CloseCode::Normal))
    );
    let mut buf = vec![0u8; 1024];
    assert_eq!(victim.poll_transmit(&mut buf), 0, "no CLOSE goes back");
}

/// §5.5: a peer that authenticates and then sends nothing, not even SETTINGS, is cut by the
/// idle timeout (45 s by default; PINGed at 15 s), with CLOSE(4).
#[test]
fn a_peer_that_never_sends_settings_is_cut_by_the_idle_timeout() {
    let (mut victim, _) = rogue_session(Some(&["data"]), &[]);
    let start = Instant::now();
    let config = ConnectionConfig::default();
    let mut buf = vec![0u8; 4096];
    victim.poll_transmit(&mut buf); // its SETTINGS
    victim.handle_timeout(start + config.idle_timeout - Duration::from_secs(1));
    assert_eq!(
        closed_with(&mut victim),
        None,
        "not before the idle timeout"
    );
    victim.handle_timeout(start + config.idle_timeout + Duration::from_millis(1));
    assert_eq!(
        closed_with(&mut victim),
        Some(CloseReason::Error(ConnectionError::IdleTimeout))
    );
    assert!(victim.poll_transmit(&mut buf) > 0, "CLOSE(4) goes out");
    assert_eq!(config.idle_timeout, Duration::from_secs(45));
    assert_eq!(config.keepalive_interval, Duration::from_secs(15));
}
