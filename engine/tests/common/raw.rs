//! An authenticated peer that speaks the wire protocol by hand (records sealed with its own
//! session keys, frames of its choosing): the attacker of the hostile-peer tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glueberry::Node;
use glueberry::crypto::handshake::Handshake;
use glueberry::crypto::record::{HEADER_LEN, RecordHeader, RecordOpener, RecordSealer, TAG_LEN};
use glueberry::crypto::{HandshakeConfig, Identity, PeerId};
use glueberry::transport::frame::{Frame, Settings};
use glueberry::transport::{ConnState, ConnectionConfig};

const T: Duration = Duration::from_secs(10);

/// The SETTINGS an honest peer with the default configuration sends.
pub(crate) fn default_settings() -> Settings {
    let defaults = ConnectionConfig::default();
    Settings {
        max_message_size: defaults.max_message_size as u32,
        max_streams: defaults.max_streams,
        initial_window: defaults.initial_window,
        connection_window: defaults.connection_window,
    }
}

/// A peer that authenticated and then writes frames of its choosing.
pub(crate) struct Raw {
    pub peer: PeerId,
    pub socket: TcpStream,
    sealer: RecordSealer,
    opener: RecordOpener,
    inbox: Vec<u8>,
}

impl Raw {
    /// Runs the secure handshake with `node` (network "pinning-test") over a fresh socket and
    /// sends SETTINGS (the default windows) and OPEN for `streams` (ids 1..).
    pub(crate) fn connect(node: &Node, streams: &[&str]) -> Raw {
        Self::connect_with(node, "pinning-test", streams, default_settings())
    }

    /// [`Raw::connect`] on `network` with the SETTINGS given.
    pub(crate) fn connect_with(
        node: &Node,
        network: &str,
        streams: &[&str],
        settings: Settings,
    ) -> Raw {
        let identity = Identity::generate().unwrap();
        let config = Arc::new(HandshakeConfig::new(&identity, network).unwrap());
        let mut handshake = Handshake::initiator(config, Some(node.peer_id())).unwrap();
        let mut socket = TcpStream::connect(node.listen_addr()).unwrap();
        socket.set_nodelay(true).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while !handshake.is_finished() {
            out.clear();
            handshake.poll_transmit(&mut out);
            socket.write_all(&out).unwrap();
            if handshake.is_finished() {
                break;
            }
            let n = socket.read(&mut buf).unwrap();
            assert!(n > 0, "the node closed during the handshake");
            handshake.handle_input(&buf[..n]).unwrap();
        }
        out.clear();
        handshake.poll_transmit(&mut out);
        socket.write_all(&out).unwrap();
        let (sealer, opener) = handshake.into_session().unwrap().into_channel();
        let mut raw = Raw {
            peer: identity.peer_id(),
            socket,
            sealer,
            opener,
            inbox: Vec::new(),
        };
        let mut frames = vec![Frame::Settings(settings)];
        for (i, name) in streams.iter().enumerate() {
            frames.push(Frame::Open {
                stream: i as u16 + 1,
                name: name.as_bytes(),
            });
        }
        raw.send(&frames).unwrap();
        raw
    }

    /// Seals `frames` into one record and writes it.
    pub(crate) fn send(&mut self, frames: &[Frame<'_>]) -> std::io::Result<()> {
        let len: usize = frames.iter().map(Frame::encoded_len).sum();
        let mut record = vec![0u8; HEADER_LEN + len + TAG_LEN];
        let mut at = HEADER_LEN;
        for frame in frames {
            at += frame.encode(&mut record[at..]).unwrap();
        }
        let n = self.sealer.seal_in_place(&mut record, len).unwrap();
        self.socket.write_all(&record[..n])
    }

    /// Reads what the node sends for up to `wait` (less once `done` says so), handing each
    /// frame to `on_frame`; returns false once the node closed the socket.
    pub(crate) fn read_frames(
        &mut self,
        wait: Duration,
        mut on_frame: impl FnMut(&Frame<'_>) -> bool,
    ) -> bool {
        let end = Instant::now() + wait;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            let n = match self.socket.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return true;
                }
                Err(_) => return false,
            };
            self.inbox.extend_from_slice(&buf[..n]);
            while self.inbox.len() >= HEADER_LEN {
                let header =
                    RecordHeader::decode(self.inbox[..HEADER_LEN].try_into().unwrap()).unwrap();
                let len = header.record_len();
                if self.inbox.len() < len {
                    break;
                }
                let mut record: Vec<u8> = self.inbox.drain(..len).collect();
                let Ok(plain) = self.opener.open_in_place(&mut record) else {
                    return false;
                };
                let mut plain = &*plain;
                while !plain.is_empty() {
                    let (frame, used) = Frame::decode(plain).unwrap();
                    if !on_frame(&frame) {
                        return true;
                    }
                    plain = &plain[used..];
                }
            }
        }
    }

    /// Reads the node's records until it has accepted streams 1..=`count` (a CREDIT for each):
    /// DATA may go on them from then on (PROTOCOL.md §5.2).
    pub(crate) fn wait_accepted(&mut self, count: u16) {
        let mut accepted = vec![false; usize::from(count)];
        let deadline = Instant::now() + T;
        while accepted.contains(&false) {
            assert!(Instant::now() < deadline, "the streams were not accepted");
            let open = self.read_frames(Duration::from_millis(100), |frame| {
                if let Frame::Credit { stream, .. } = frame
                    && (1..=count).contains(stream)
                {
                    accepted[usize::from(*stream - 1)] = true;
                }
                true
            });
            assert!(open, "the node closed before accepting the streams");
        }
    }

    /// Answers nothing, reads and drops whatever the node sends (keeps its window open).
    pub(crate) fn drain(&mut self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = self.socket.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        self.socket.set_nonblocking(false).unwrap();
    }
}

/// Accepts `raw`'s streams on `node` (the application handshake), waits for Established and
/// for the acceptances to reach `raw`.
pub(crate) fn accept(node: &Node, raw: &mut Raw, streams: &[&str]) {
    let deadline = Instant::now() + T;
    while node.state(raw.peer) != ConnState::Connected {
        assert!(
            Instant::now() < deadline,
            "not Connected: {:?}",
            node.state(raw.peer)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    node.complete_handshake(raw.peer, streams).unwrap();
    while node.state(raw.peer) != ConnState::Established {
        assert!(Instant::now() < deadline, "not Established");
        std::thread::sleep(Duration::from_millis(2));
    }
    raw.wait_accepted(streams.len() as u16);
}
