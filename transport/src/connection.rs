//! One connection's protocol logic, sans-IO: the secure handshake, then records of frames.
//!
//! Inputs are `handle_*` (bytes received, end of stream, timer fired) and application commands
//! (`send`, `release`, `complete_handshake`, `close`); outputs are `poll_*` (bytes to send,
//! events, the next deadline). Time is passed in; nothing here reads a clock or touches a socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glueberry_crypto::record::{HEADER_LEN, RecordHeader, TAG_LEN};
use glueberry_crypto::{
    Handshake, HandshakeConfig, HandshakeError, PeerId, RecordOpener, RecordSealer, Session,
};

use crate::config::ConnectionConfig;
use crate::event::{
    CloseCode, CloseReason, ConnectionError, Direction, Event, SendError, StreamError, StreamId,
};
use crate::frame::{self, DATA_FIRST, DATA_LAST, Frame, MAX_CONTROL_FRAME_LEN, Settings};
use crate::stream::{LocalStream, MESSAGE_CREDIT_OVERHEAD, PeerStream, RecvState, SendState};

/// Traffic on one stream of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// The stream's name.
    pub name: String,
    /// Messages written into records.
    pub sent_messages: u64,
    /// Their payload bytes.
    pub sent_bytes: u64,
    /// Messages received.
    pub received_messages: u64,
    /// Their payload bytes.
    pub received_bytes: u64,
    /// Messages accepted by `send` and not yet written.
    pub queued_messages: u64,
    /// Messages written whose receipt the peer has not yet confirmed.
    pub unconfirmed_messages: u64,
}

/// The name of the reserved stream open from Connected on.
pub const HANDSHAKE_STREAM: &str = "handshake";

/// How long after the last input credit below the batch size waits before it is sent anyway.
const CREDIT_DELAY: Duration = Duration::from_millis(10);

/// Receive buffer growth step: one allocation per this many bytes received, not per message.
const RX_CHUNK: usize = 64 * 1024;
/// Initial capacity of a connection's event queue and of each stream's send queue.
const INITIAL_QUEUE: usize = 16;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The secure handshake is running.
    Handshaking,
    /// The peer is authenticated; the `handshake` stream is open.
    Connected,
    /// The application completed its handshake; its named streams are open on our side.
    Established,
    /// Closed; at most a CLOSE frame is left to send.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Settings,
    Credit { stream: u16, increment: u32 },
    Reject { stream: u16 },
    Ping(u64),
    Pong(u64),
}

/// One connection's protocol state.
pub struct Connection {
    config: Arc<ConnectionConfig>,
    direction: Direction,
    phase: Phase,
    handshake: Option<Box<Handshake>>,
    handshake_out: Vec<u8>,
    channel: Option<(RecordSealer, RecordOpener)>,
    peer: Option<PeerId>,
    peer_settings: Option<Settings>,
    streams: Vec<LocalStream>,
    peer_streams: Vec<Option<PeerStream>>,
    control: VecDeque<Control>,
    events: VecDeque<Event>,
    rx: BytesMut,
    /// Stream indices, highest priority first: the order the record scheduler visits them.
    order: Vec<u16>,
    /// Some stream wrote messages the driver has not yet collected with `take_written`.
    written: bool,
    last_recv: Instant,
    /// Credit released below the batch size and not yet sent; sent `CREDIT_DELAY` after the
    /// last input at the latest, so that a quiet sender learns its messages arrived.
    credit_owed: bool,
    /// Payload bytes queued on all streams (the sum of their `queued_bytes`).
    queued_bytes: u64,
    ping: Option<(u64, Instant)>,
    ping_seq: u64,
    close_frame: Option<CloseCode>,
    close_reason: Option<CloseReason>,
    rtt: Option<Duration>,
}

impl Connection {
    /// A connection we dialled. If `expected_peer` is given, a different peer fails the handshake.
    pub fn outbound(
        config: Arc<ConnectionConfig>,
        handshake: Arc<HandshakeConfig>,
        expected_peer: Option<PeerId>,
        now: Instant,
    ) -> Result<Self, HandshakeError> {
        let mut handshake = Handshake::initiator(handshake, expected_peer)?;
        let mut this = Self::new(config, Direction::Outbound, now);
        handshake.poll_transmit(&mut this.handshake_out);
        this.handshake = Some(Box::new(handshake));
        Ok(this)
    }

    /// A connection the peer dialled.
    pub fn inbound(
        config: Arc<ConnectionConfig>,
        handshake: Arc<HandshakeConfig>,
        now: Instant,
    ) -> Self {
        let mut this = Self::new(config, Direction::Inbound, now);
        this.handshake = Some(Box::new(Handshake::responder(handshake)));
        this
    }

    /// A connection over a session whose handshake ran elsewhere (tests, benchmarks, or a
    /// runtime that moves a connection between threads after the handshake).
    pub fn from_session(
        config: Arc<ConnectionConfig>,
        session: Session,
        direction: Direction,
        now: Instant,
    ) -> Self {
        let mut this = Self::new(config, direction, now);
        let peer = session.peer_id();
        let hello = Bytes::copy_from_slice(session.remote_hello());
        this.start_session(peer, hello, session.into_channel());
        this
    }

    /// A connection over an already keyed channel and a known peer: for benchmarks with
    /// [`glueberry_crypto::record::danger_null_channel`].
    pub fn from_channel(
        config: Arc<ConnectionConfig>,
        peer: PeerId,
        channel: (RecordSealer, RecordOpener),
        direction: Direction,
        now: Instant,
    ) -> Self {
        let mut this = Self::new(config, direction, now);
        this.start_session(peer, Bytes::new(), channel);
        this
    }

    fn new(config: Arc<ConnectionConfig>, direction: Direction, now: Instant) -> Self {
        // Queues start small and grow to what the traffic needs (then keep that capacity), so
        // an idle connection costs little.
        let queue = INITIAL_QUEUE.min(config.high_watermark);
        let mut streams = Vec::with_capacity(usize::from(config.max_streams));
        streams.push(LocalStream::new(
            HANDSHAKE_STREAM,
            SendState::AwaitingPeer,
            queue,
            crate::config::MAX_PRIORITY,
        ));
        let mut peer_streams = Vec::with_capacity(usize::from(config.max_streams));
        peer_streams.push(Some(PeerStream::new(
            HANDSHAKE_STREAM.as_bytes(),
            RecvState::Accepted { local: 0 },
            u64::from(config.initial_window),
        )));
        streams[0].peer_id = Some(0);
        Self {
            direction,
            phase: Phase::Handshaking,
            handshake: None,
            handshake_out: Vec::new(),
            channel: None,
            peer: None,
            peer_settings: None,
            streams,
            peer_streams,
            control: VecDeque::with_capacity(8),
            events: VecDeque::with_capacity(INITIAL_QUEUE),
            rx: BytesMut::new(),
            order: vec![0],
            written: false,
            last_recv: now,
            credit_owed: false,
            queued_bytes: 0,
            ping: None,
            ping_seq: 0,
            close_frame: None,
            close_reason: None,
            rtt: None,
            config,
        }
    }

    fn start_session(&mut self, peer: PeerId, hello: Bytes, channel: (RecordSealer, RecordOpener)) {
        self.peer = Some(peer);
        self.channel = Some(channel);
        self.phase = Phase::Connected;
        self.control.push_back(Control::Settings);
        self.events.push_back(Event::Connected {
            peer,
            remote_hello: hello,
        });
    }

    // ---- inputs ----

    /// Takes bytes received from the peer.
    pub fn handle_input(&mut self, now: Instant, mut data: &[u8]) {
        if self.phase == Phase::Closed || data.is_empty() {
            return;
        }
        self.last_recv = now;
        if let Some(handshake) = self.handshake.as_mut() {
            let result = handshake.handle_input(data);
            handshake.poll_transmit(&mut self.handshake_out);
            match result {
                Err(e) => return self.fail(ConnectionError::Handshake(e)),
                Ok(n) => data = &data[n..],
            }
            if !handshake.is_finished() {
                return;
            }
            let Some(handshake) = self.handshake.take() else {
                return;
            };
            match handshake.into_session() {
                Ok(session) => {
                    let peer = session.peer_id();
                    let hello = Bytes::copy_from_slice(session.remote_hello());
                    let channel = if self.config.danger_null_cipher {
                        glueberry_crypto::record::danger_null_channel()
                    } else {
                        session.into_channel()
                    };
                    self.start_session(peer, hello, channel);
                }
                Err(e) => return self.fail(ConnectionError::Handshake(e)),
            }
        }
        if self.rx.capacity() - self.rx.len() < data.len() {
            self.rx.reserve(data.len().max(RX_CHUNK));
        }
        self.rx.extend_from_slice(data);
        if let Err(e) = self.process_records(now) {
            self.fail(e);
        }
    }

    /// Takes received bytes in a buffer the caller hands over: when no partial record is
    /// pending, the buffer becomes the receive buffer without a copy, records are opened in
    /// place in it and messages are slices of it. A caller that receives into its own buffers
    /// first takes [`Connection::take_pending_input`] and puts those bytes at the front of the
    /// next buffer, so that this never copies.
    pub fn handle_input_buf(&mut self, now: Instant, data: BytesMut) {
        if self.handshake.is_some() || !self.rx.is_empty() {
            return self.handle_input(now, &data);
        }
        if self.phase == Phase::Closed || data.is_empty() {
            return;
        }
        self.last_recv = now;
        self.rx = data;
        if let Err(e) = self.process_records(now) {
            self.fail(e);
        }
    }

    /// Takes the received bytes not yet processed (the start of a record whose end has not
    /// arrived). The caller must hand them back, first, with the next input.
    pub fn take_pending_input(&mut self) -> BytesMut {
        if self.handshake.is_some() {
            return BytesMut::new();
        }
        std::mem::take(&mut self.rx)
    }

    /// The peer closed its sending side (TCP FIN) or the socket failed. Without a CLOSE frame
    /// first, this is a lost connection.
    pub fn handle_eof(&mut self) {
        if self.phase != Phase::Closed {
            self.fail(ConnectionError::ConnectionLost);
            self.close_frame = None;
        }
    }

    /// Time passed: sends credit owed, keepalive pings, and declares a silent peer dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.credit_owed && now >= self.last_recv + CREDIT_DELAY {
            self.credit_owed = false;
            for (id, peer_stream) in self.peer_streams.iter_mut().enumerate() {
                if let Some(peer_stream) = peer_stream
                    && peer_stream.released > 0
                {
                    Self::credit_back(id as u16, peer_stream, 0, 0, &mut self.control);
                }
            }
        }
        let silent = now.saturating_duration_since(self.last_recv);
        if silent >= self.config.idle_timeout {
            self.fail(ConnectionError::IdleTimeout);
        } else if silent >= self.config.keepalive_interval
            && self.ping.is_none()
            && self.channel.is_some()
        {
            self.ping_seq += 1;
            self.control.push_back(Control::Ping(self.ping_seq));
            self.ping = Some((self.ping_seq, now));
        }
    }

    fn process_records(&mut self, now: Instant) -> Result<(), ConnectionError> {
        while let Some(head) = self.rx.first_chunk::<HEADER_LEN>() {
            let record_len = RecordHeader::decode(*head)?.record_len();
            if self.rx.len() < record_len {
                break;
            }
            let mut record = self.rx.split_to(record_len);
            let Some((_, opener)) = self.channel.as_mut() else {
                return Err(ConnectionError::Protocol("record before the handshake"));
            };
            let plaintext_len = opener.open_in_place(&mut record)?.len();
            let record = record.freeze();
            self.handle_frames(now, &record, HEADER_LEN, HEADER_LEN + plaintext_len)?;
            if self.phase == Phase::Closed {
                break;
            }
        }
        Ok(())
    }

    fn handle_frames(
        &mut self,
        now: Instant,
        record: &Bytes,
        mut at: usize,
        end: usize,
    ) -> Result<(), ConnectionError> {
        while at < end {
            let (frame, len) = Frame::decode(&record[at..end])?;
            // A peer may close before it sent anything else (a refused connection).
            if self.peer_settings.is_none()
                && !matches!(frame, Frame::Settings(_) | Frame::Close(_))
            {
                return Err(ConnectionError::Protocol(
                    "the first frame must be SETTINGS",
                ));
            }
            match frame {
                Frame::Data {
                    stream,
                    flags,
                    total_len,
                    payload,
                } => self.handle_data(record, stream, flags, total_len, payload)?,
                Frame::Credit { stream, increment } => self.handle_credit(stream, increment)?,
                Frame::Settings(settings) => self.handle_settings(settings)?,
                Frame::Open { stream, name } => self.handle_open(stream, name)?,
                Frame::Reject { stream } => self.handle_reject(stream)?,
                Frame::Ping(value) => {
                    // One answer pending is enough: a peer that pings without reading gets one.
                    self.control.retain(|c| !matches!(c, Control::Pong(_)));
                    self.control.push_back(Control::Pong(value));
                }
                Frame::Pong(value) => {
                    if let Some((seq, sent)) = self.ping
                        && seq == value
                    {
                        let rtt = now.saturating_duration_since(sent);
                        self.rtt = Some(rtt);
                        self.ping = None;
                        self.events.push_back(Event::Rtt(rtt));
                    }
                }
                Frame::Close(code) => {
                    self.finish(CloseReason::Peer(CloseCode(code)));
                    return Ok(());
                }
            }
            at += len;
        }
        Ok(())
    }

    fn handle_data(
        &mut self,
        record: &Bytes,
        stream: u16,
        flags: u8,
        total_len: Option<u32>,
        payload: &[u8],
    ) -> Result<(), ConnectionError> {
        let max = self.config.max_message_size;
        let peer_stream = self
            .peer_streams
            .get_mut(usize::from(stream))
            .and_then(Option::as_mut)
            .ok_or(ConnectionError::Protocol(
                "DATA on a stream that was not opened",
            ))?;
        let RecvState::Accepted { local } = peer_stream.state else {
            return Err(ConnectionError::FlowControl);
        };
        let overhead = if flags & DATA_FIRST != 0 {
            MESSAGE_CREDIT_OVERHEAD
        } else {
            0
        };
        let cost = payload.len() as u64 + overhead;
        peer_stream.window = peer_stream
            .window
            .checked_sub(cost)
            .ok_or(ConnectionError::FlowControl)?;
        let peer_id = stream;
        let stream = StreamId(local);
        match flags {
            f if f == DATA_FIRST | DATA_LAST => {
                if peer_stream.partial.is_some() {
                    return Err(ConnectionError::Protocol(
                        "new message before the last ended",
                    ));
                }
                if payload.len() > max {
                    return Err(ConnectionError::MessageTooLarge {
                        len: payload.len() as u64,
                        max,
                    });
                }
                if let Some(s) = self.streams.get_mut(usize::from(local)) {
                    s.received_messages += 1;
                    s.received_bytes += payload.len() as u64;
                }
                self.events.push_back(Event::Message {
                    stream,
                    data: record.slice_ref(payload),
                });
            }
            DATA_FIRST => {
                let total = total_len.unwrap_or(0) as usize;
                if total > max {
                    return Err(ConnectionError::MessageTooLarge {
                        len: total as u64,
                        max,
                    });
                }
                if peer_stream.partial.is_some() {
                    return Err(ConnectionError::Protocol(
                        "new message before the last ended",
                    ));
                }
                if total <= payload.len() {
                    return Err(ConnectionError::Protocol(
                        "first fragment is the whole message",
                    ));
                }
                // Bounded by `max_message_size`, checked above, and paid for by credit as it fills.
                let mut buf = BytesMut::with_capacity(total);
                buf.extend_from_slice(payload);
                peer_stream.partial = Some((buf, total));
                peer_stream.prereleased += cost;
                let batch = u64::from(self.config.initial_window / 4);
                Self::credit_back(peer_id, peer_stream, cost, batch, &mut self.control);
                self.credit_owed |= peer_stream.released > 0;
            }
            _ => {
                let Some((buf, total)) = peer_stream.partial.as_mut() else {
                    return Err(ConnectionError::Protocol(
                        "fragment without a first fragment",
                    ));
                };
                if buf.len() + payload.len() > *total {
                    return Err(ConnectionError::Protocol(
                        "fragments exceed the message length",
                    ));
                }
                buf.extend_from_slice(payload);
                let complete = buf.len() == *total;
                if flags & DATA_LAST != 0 {
                    if !complete {
                        return Err(ConnectionError::Protocol("message shorter than announced"));
                    }
                    if let Some((buf, _)) = peer_stream.partial.take() {
                        if let Some(s) = self.streams.get_mut(usize::from(local)) {
                            s.received_messages += 1;
                            s.received_bytes += buf.len() as u64;
                        }
                        self.events.push_back(Event::Message {
                            stream,
                            data: buf.freeze(),
                        });
                    }
                } else if complete {
                    return Err(ConnectionError::Protocol("a message must end with LAST"));
                } else {
                    peer_stream.prereleased += cost;
                    let batch = u64::from(self.config.initial_window / 4);
                    Self::credit_back(peer_id, peer_stream, cost, batch, &mut self.control);
                    self.credit_owed |= peer_stream.released > 0;
                    self.credit_owed |= peer_stream.released > 0;
                }
            }
        }
        Ok(())
    }

    fn handle_credit(&mut self, stream: u16, increment: u32) -> Result<(), ConnectionError> {
        let local = self
            .streams
            .get_mut(usize::from(stream))
            .filter(|s| !s.open_pending)
            .ok_or(ConnectionError::Protocol(
                "CREDIT for a stream we did not open",
            ))?;
        match local.state {
            SendState::Rejected => {
                return Err(ConnectionError::Protocol("CREDIT for a rejected stream"));
            }
            SendState::AwaitingPeer => {
                // The initial window: the peer accepted the stream.
                local.state = SendState::Open;
                if stream != 0 {
                    self.events
                        .push_back(Event::StreamAccepted(StreamId(stream)));
                }
            }
            // Credit given back: the peer took what it covers (§5.4).
            SendState::Open => local.confirm(u64::from(increment)),
        }
        local.credit = local
            .credit
            .checked_add(u64::from(increment))
            .filter(|c| *c <= u64::from(u32::MAX) * 4)
            .ok_or(ConnectionError::Protocol("credit overflow"))?;
        Ok(())
    }

    fn handle_settings(&mut self, settings: Settings) -> Result<(), ConnectionError> {
        if self.peer_settings.is_some() {
            return Err(ConnectionError::Protocol("SETTINGS sent twice"));
        }
        if settings.max_streams == 0
            || settings.initial_window < crate::config::MIN_WINDOW
            || settings.max_message_size == 0
        {
            return Err(ConnectionError::Protocol("SETTINGS out of range"));
        }
        self.peer_settings = Some(settings);
        // The handshake stream opens with the peer's initial window.
        let handshake = &mut self.streams[0];
        handshake.state = SendState::Open;
        handshake.credit = u64::from(settings.initial_window);
        // Streams opened before we knew the peer's limit and above it can never be accepted.
        for (index, stream) in self.streams.iter_mut().enumerate().skip(1) {
            if index >= usize::from(settings.max_streams) {
                Self::reject_local(
                    stream,
                    StreamId(index as u16),
                    &mut self.events,
                    &mut self.queued_bytes,
                );
            }
        }
        Ok(())
    }

    fn handle_open(&mut self, stream: u16, name: &[u8]) -> Result<(), ConnectionError> {
        let index = usize::from(stream);
        if stream == 0 || index >= usize::from(self.config.max_streams) {
            return Err(ConnectionError::Protocol(
                "OPEN with a stream id out of range",
            ));
        }
        if name == HANDSHAKE_STREAM.as_bytes() {
            return Err(ConnectionError::Protocol(
                "OPEN of the reserved handshake stream",
            ));
        }
        if self.peer_streams.get(index).is_some_and(Option::is_some)
            || self
                .peer_streams
                .iter()
                .flatten()
                .any(|p| p.name.as_ref() == name)
        {
            return Err(ConnectionError::Protocol("stream opened twice"));
        }
        if self.peer_streams.len() <= index {
            self.peer_streams.resize_with(index + 1, || None);
        }
        self.peer_streams[index] = Some(PeerStream::new(name, RecvState::Pending, 0));
        if self.phase == Phase::Established {
            self.decide(stream);
        }
        Ok(())
    }

    fn handle_reject(&mut self, stream: u16) -> Result<(), ConnectionError> {
        let local = self
            .streams
            .get_mut(usize::from(stream))
            .filter(|s| stream != 0 && !s.open_pending && s.state == SendState::AwaitingPeer)
            .ok_or(ConnectionError::Protocol(
                "REJECT of a stream not awaiting an answer",
            ))?;
        Self::reject_local(
            local,
            StreamId(stream),
            &mut self.events,
            &mut self.queued_bytes,
        );
        Ok(())
    }

    fn reject_local(
        stream: &mut LocalStream,
        id: StreamId,
        events: &mut VecDeque<Event>,
        queued_bytes: &mut u64,
    ) {
        stream.state = SendState::Rejected;
        let unsent = stream.queue.len() as u64;
        if unsent > 0 {
            // Accepted messages are never dropped: they go back to the application.
            events.push_back(Event::Undelivered {
                stream: id,
                unsent: stream.queue.drain(..).collect(),
                unconfirmed: Vec::new(),
            });
        }
        *queued_bytes -= stream.queued_bytes;
        stream.queued_bytes = 0;
        stream.front_offset = 0;
        stream.blocked = false;
        events.push_back(Event::StreamRejected { stream: id, unsent });
    }

    /// Accepts or rejects a stream the peer opened, now that our own set is final.
    fn decide(&mut self, peer_id: u16) {
        let Some(Some(peer_stream)) = self.peer_streams.get_mut(usize::from(peer_id)) else {
            return;
        };
        if peer_stream.state != RecvState::Pending {
            return;
        }
        let local = self
            .streams
            .iter()
            .position(|s| s.name.as_bytes() == peer_stream.name.as_ref());
        match local {
            Some(local) if local != 0 => {
                peer_stream.state = RecvState::Accepted {
                    local: local as u16,
                };
                peer_stream.window = u64::from(self.config.initial_window);
                self.streams[local].peer_id = Some(peer_id);
                self.control.push_back(Control::Credit {
                    stream: peer_id,
                    increment: self.config.initial_window,
                });
            }
            _ => {
                peer_stream.state = RecvState::Rejected;
                self.control.push_back(Control::Reject { stream: peer_id });
            }
        }
    }

    // ---- application commands ----

    /// Opens the application's named streams and makes the connection Established (Glueberry's
    /// prepare-streams and finalize-handshake in one). Streams the peer opens under the same
    /// names are accepted; the others it opens are rejected, and it is told.
    pub fn complete_handshake(&mut self, names: &[&str]) -> Result<(), StreamError> {
        match self.phase {
            Phase::Connected => {}
            Phase::Established => return Err(StreamError::AlreadyEstablished),
            Phase::Handshaking | Phase::Closed => return Err(StreamError::NotConnected),
        }
        let mut unique: Vec<&str> = Vec::with_capacity(names.len());
        for name in names {
            if name == &HANDSHAKE_STREAM || !frame::is_valid_stream_name(name.as_bytes()) {
                return Err(StreamError::InvalidName(name.escape_debug().to_string()));
            }
            if !unique.contains(name) {
                unique.push(name);
            }
        }
        let max = self.peer_settings.map_or(self.config.max_streams, |s| {
            s.max_streams.min(self.config.max_streams)
        });
        if unique.len() + 1 > usize::from(max) {
            return Err(StreamError::TooMany { max });
        }
        for name in unique {
            let mut stream = LocalStream::new(
                name,
                SendState::AwaitingPeer,
                INITIAL_QUEUE.min(self.config.high_watermark),
                self.config.priority_of(name),
            );
            stream.open_pending = true;
            self.streams.push(stream);
        }
        // Highest priority first; equal priorities in the order the application named them.
        self.order = (0..self.streams.len() as u16).collect();
        let streams = &self.streams;
        self.order
            .sort_by_key(|&i| std::cmp::Reverse(streams[usize::from(i)].priority));
        self.phase = Phase::Established;
        self.events.push_back(Event::Established);
        for peer_id in 1..self.peer_streams.len() {
            self.decide(peer_id as u16);
        }
        Ok(())
    }

    /// Queues a message on a stream. Never blocks: at the stream's high watermark it returns
    /// [`SendError::Full`] until [`Event::Writable`].
    pub fn send(&mut self, stream: StreamId, data: Bytes) -> Result<(), SendError> {
        self.send_or_return(stream, data).map_err(|(e, _)| e)
    }

    /// [`Connection::send`] that gives the message back when it refuses it.
    pub fn send_or_return(
        &mut self,
        stream: StreamId,
        data: Bytes,
    ) -> Result<(), (SendError, Bytes)> {
        if let Err(e) = self.check_send(stream, data.len()) {
            return Err((e, data));
        }
        let local = &mut self.streams[usize::from(stream.0)];
        local.queued_bytes += data.len() as u64;
        self.queued_bytes += data.len() as u64;
        local.queue.push_back(data);
        if local.queue.len() >= self.config.high_watermark {
            local.blocked = true;
        }
        Ok(())
    }

    /// Why a message of `len` bytes on `stream` would be refused, if it would.
    fn check_send(&self, stream: StreamId, len: usize) -> Result<(), SendError> {
        match self.phase {
            Phase::Handshaking => return Err(SendError::NotEstablished),
            Phase::Closed => return Err(SendError::Closed),
            Phase::Connected | Phase::Established => {}
        }
        let max = self
            .peer_settings
            .map_or(self.config.max_message_size, |s| {
                s.max_message_size as usize
            });
        let local = self
            .streams
            .get(usize::from(stream.0))
            .ok_or(SendError::UnknownStream)?;
        if local.state == SendState::Rejected {
            return Err(SendError::StreamRejected);
        }
        if len > max {
            return Err(SendError::MessageTooLarge { len, max });
        }
        if local.blocked || self.over_queued_bytes(len) {
            return Err(SendError::Full);
        }
        Ok(())
    }

    /// Whether `len` more bytes would take the connection's queues past `max_queued_bytes` (a
    /// message alone in an empty connection always fits).
    fn over_queued_bytes(&self, len: usize) -> bool {
        self.queued_bytes > 0
            && self.queued_bytes + len as u64 > self.config.max_queued_bytes as u64
    }

    /// The application consumed a message of `len` bytes from `stream`: its credit goes back to
    /// the peer (batched, a quarter window at a time).
    pub fn release(&mut self, stream: StreamId, len: usize) {
        let Some(peer_id) = self
            .streams
            .get(usize::from(stream.0))
            .and_then(|s| s.peer_id)
        else {
            return;
        };
        let Some(Some(peer_stream)) = self.peer_streams.get_mut(usize::from(peer_id)) else {
            return;
        };
        let amount = len as u64 + MESSAGE_CREDIT_OVERHEAD;
        let already = peer_stream.prereleased.min(amount);
        peer_stream.prereleased -= already;
        let batch = u64::from(self.config.initial_window / 4);
        Self::credit_back(
            peer_id,
            peer_stream,
            amount - already,
            batch,
            &mut self.control,
        );
        self.credit_owed |= peer_stream.released > 0;
    }

    /// Adds `amount` to the credit owed on a peer stream and sends it once it reaches `batch`
    /// (the caller notes a remainder in `credit_owed`).
    fn credit_back(
        peer_id: u16,
        peer_stream: &mut PeerStream,
        amount: u64,
        batch: u64,
        control: &mut VecDeque<Control>,
    ) {
        peer_stream.released += amount;
        if peer_stream.released > 0 && peer_stream.released >= batch {
            let increment = peer_stream.released.min(u64::from(u32::MAX)) as u32;
            peer_stream.released -= u64::from(increment);
            peer_stream.window += u64::from(increment);
            control.push_back(Control::Credit {
                stream: peer_id,
                increment,
            });
        }
    }

    /// Closes the connection with `code`: a CLOSE frame is sent next, and messages still queued
    /// are reported unsent. To flush first, wait until [`Connection::queued_messages`] is 0.
    pub fn close(&mut self, code: CloseCode) {
        if self.phase != Phase::Closed {
            self.finish(CloseReason::Local(code));
            if self.channel.is_some() {
                self.close_frame = Some(code);
            }
        }
    }

    fn fail(&mut self, error: ConnectionError) {
        let code = match &error {
            ConnectionError::FlowControl => CloseCode::FLOW_CONTROL,
            ConnectionError::MessageTooLarge { .. } => CloseCode::MESSAGE_TOO_LARGE,
            ConnectionError::IdleTimeout => CloseCode::IDLE_TIMEOUT,
            _ => CloseCode::PROTOCOL_ERROR,
        };
        if self.phase != Phase::Closed {
            self.finish(CloseReason::Error(error));
            if self.channel.is_some() {
                self.close_frame = Some(code);
            }
        }
    }

    fn finish(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.handshake = None;
        self.control.clear();
        let unsent = self.queued_messages() as u64;
        self.queued_bytes = 0;
        for (index, stream) in self.streams.iter_mut().enumerate() {
            if stream.queue.is_empty() && stream.in_flight.is_empty() {
                continue;
            }
            stream.front_offset = 0;
            stream.confirmed = 0;
            stream.queued_bytes = 0;
            self.events.push_back(Event::Undelivered {
                stream: StreamId(index as u16),
                unsent: stream.queue.drain(..).collect(),
                unconfirmed: stream.in_flight.drain(..).collect(),
            });
        }
        self.close_reason = Some(reason.clone());
        self.events.push_back(Event::Closed { reason, unsent });
    }

    // ---- outputs ----

    /// Writes what is ready to send into `out` (whole records, sealed in place) and returns how
    /// many bytes it wrote. Call until it returns 0 or the transport cannot take more.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> usize {
        let mut pos = 0;
        if !self.handshake_out.is_empty() {
            let n = self.handshake_out.len().min(out.len());
            out[..n].copy_from_slice(&self.handshake_out[..n]);
            self.handshake_out.drain(..n);
            pos = n;
            if !self.handshake_out.is_empty() {
                return pos;
            }
        }
        if self.channel.is_none() {
            return pos;
        }
        loop {
            let available = out.len() - pos;
            if available < HEADER_LEN + TAG_LEN + MAX_CONTROL_FRAME_LEN {
                break;
            }
            let capacity = self
                .config
                .max_record_plaintext
                .min(available - HEADER_LEN - TAG_LEN);
            let body = &mut out[pos + HEADER_LEN..pos + HEADER_LEN + capacity];
            let written = if let Some(code) = self.close_frame.take() {
                Frame::Close(code.0).encode(body).unwrap_or(0)
            } else if self.phase == Phase::Closed {
                0
            } else {
                let control = self.write_control(body);
                control + self.write_data(&mut body[control..])
            };
            if written == 0 {
                break;
            }
            let Some((sealer, _)) = self.channel.as_mut() else {
                break;
            };
            match sealer.seal_in_place(&mut out[pos..], written) {
                Ok(len) => pos += len,
                Err(e) => {
                    // The nonce counter is spent: nothing more can be sent on this connection.
                    self.fail(ConnectionError::Record(e));
                    self.close_frame = None;
                    break;
                }
            }
            if self.phase == Phase::Closed {
                break;
            }
        }
        pos
    }

    fn write_control(&mut self, out: &mut [u8]) -> usize {
        let mut written = 0;
        while let Some(&control) = self.control.front() {
            let frame = match control {
                Control::Settings => Frame::Settings(Settings {
                    max_message_size: self.config.max_message_size as u32,
                    max_streams: self.config.max_streams,
                    initial_window: self.config.initial_window,
                }),
                Control::Credit { stream, increment } => Frame::Credit { stream, increment },
                Control::Reject { stream } => Frame::Reject { stream },
                Control::Ping(v) => Frame::Ping(v),
                Control::Pong(v) => Frame::Pong(v),
            };
            let Some(n) = frame.encode(&mut out[written..]) else {
                return written;
            };
            written += n;
            self.control.pop_front();
        }
        // OPEN frames go out once the peer's limits are known (ids must be below them).
        if self.peer_settings.is_some() {
            for (index, stream) in self.streams.iter_mut().enumerate() {
                if !stream.open_pending || stream.state == SendState::Rejected {
                    continue;
                }
                let frame = Frame::Open {
                    stream: index as u16,
                    name: stream.name.as_bytes(),
                };
                let Some(n) = frame.encode(&mut out[written..]) else {
                    return written;
                };
                written += n;
                stream.open_pending = false;
            }
        }
        written
    }

    /// Fills `out` with DATA frames: a deficit round robin over the streams that have messages
    /// and credit, visited highest priority first. Each round gives every busy stream its
    /// quantum (16 KiB × (priority + 1)); a stream that goes idle starts its next busy period
    /// with a full quantum, so a message on a quiet high-priority stream is written before the
    /// next fragment of a bulk transfer on a lower one.
    fn write_data(&mut self, out: &mut [u8]) -> usize {
        let one_only = !self.config.batching;
        let min_fragment = crate::stream::min_fragment(self.config.max_record_plaintext);
        let mut written = 0;
        let mut new_round = false;
        loop {
            let mut busy = false;
            let mut progressed = false;
            for &index in &self.order {
                let stream = &mut self.streams[usize::from(index)];
                if !stream.sendable() {
                    if stream.queue.is_empty() {
                        stream.deficit = crate::stream::quantum(stream.priority);
                    }
                    continue;
                }
                busy = true;
                if stream.deficit == 0 {
                    continue;
                }
                if written >= out.len() {
                    return written;
                }
                let queued = stream.queued_bytes;
                let (n, completed) = stream.write_data(
                    index,
                    &mut out[written..],
                    stream.deficit,
                    one_only,
                    min_fragment,
                );
                stream.deficit = stream.deficit.saturating_sub(n);
                written += n;
                self.queued_bytes -= queued - stream.queued_bytes;
                if completed > 0 {
                    self.written = true;
                    if stream.blocked && stream.queue.len() <= self.config.low_watermark {
                        stream.blocked = false;
                        self.events.push_back(Event::Writable(StreamId(index)));
                    }
                }
                if n == 0 {
                    // Data and credit but no progress (the record is out of room for it, or
                    // its credit is below a frame): its turn ends with this round.
                    stream.deficit = 0;
                    continue;
                }
                progressed = true;
                if one_only {
                    return written;
                }
            }
            if !busy {
                return written;
            }
            if !progressed {
                if new_round {
                    return written;
                }
                // Every busy stream spent its quantum: the next round.
                new_round = true;
                for stream in &mut self.streams {
                    if stream.sendable() {
                        stream.deficit += crate::stream::quantum(stream.priority);
                    }
                }
            } else {
                new_round = false;
            }
        }
    }

    /// Reports, per stream, the messages and payload bytes fully written into records since the
    /// last call (the driver's queue accounting), and resets the counts.
    pub fn take_written(&mut self, mut report: impl FnMut(StreamId, u64, u64)) {
        if !std::mem::take(&mut self.written) {
            return;
        }
        for (index, stream) in self.streams.iter_mut().enumerate() {
            if stream.written_messages > 0 {
                report(
                    StreamId(index as u16),
                    std::mem::take(&mut stream.written_messages),
                    std::mem::take(&mut stream.written_bytes),
                );
            }
        }
    }

    /// Our streams' ids and names.
    pub fn streams(&self) -> impl Iterator<Item = (StreamId, &std::sync::Arc<str>)> {
        self.streams
            .iter()
            .enumerate()
            .map(|(i, s)| (StreamId(i as u16), &s.name))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Puts taken events back at the front, in order (a connection handed between threads
    /// keeps the events its new owner has not seen).
    pub fn requeue_events(&mut self, events: Vec<Event>) {
        for event in events.into_iter().rev() {
            self.events.push_front(event);
        }
    }

    /// When [`Connection::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        let mut at = self.last_recv + self.config.idle_timeout;
        if self.ping.is_none() && self.channel.is_some() {
            at = at.min(self.last_recv + self.config.keepalive_interval);
        }
        if self.credit_owed {
            at = at.min(self.last_recv + CREDIT_DELAY);
        }
        Some(at)
    }

    // ---- state ----

    /// Whether `poll_transmit` has something to write.
    pub fn has_pending_output(&self) -> bool {
        !self.handshake_out.is_empty()
            || self.close_frame.is_some()
            || (self.phase != Phase::Closed
                && self.channel.is_some()
                && (!self.control.is_empty()
                    || self
                        .streams
                        .iter()
                        .any(|s| s.sendable() || (s.open_pending && self.peer_settings.is_some()))))
    }

    /// The connection's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the connection is closed (a CLOSE frame may still be pending in `poll_transmit`).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// Who dialled.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The authenticated peer, once Connected.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// The latest keepalive round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Our stream of this name, if open.
    pub fn stream_id(&self, name: &str) -> Option<StreamId> {
        self.streams
            .iter()
            .position(|s| &*s.name == name)
            .map(|i| StreamId(i as u16))
    }

    /// The name of one of our streams.
    /// The name of one of our streams, shared (a reference count, no copy).
    pub fn stream_name_shared(&self, stream: StreamId) -> Option<std::sync::Arc<str>> {
        self.streams
            .get(usize::from(stream.0))
            .map(|s| s.name.clone())
    }

    /// The name of one of our streams.
    pub fn stream_name(&self, stream: StreamId) -> Option<&str> {
        self.streams.get(usize::from(stream.0)).map(|s| &*s.name)
    }

    /// Per-stream traffic counters, for statistics.
    pub fn stream_stats(&self) -> Vec<StreamStats> {
        self.streams
            .iter()
            .map(|s| StreamStats {
                name: s.name.to_string(),
                sent_messages: s.sent_messages,
                sent_bytes: s.sent_bytes,
                received_messages: s.received_messages,
                received_bytes: s.received_bytes,
                queued_messages: s.queue.len() as u64,
                unconfirmed_messages: s.in_flight.len() as u64,
            })
            .collect()
    }

    /// Messages accepted by `send` and not yet fully transmitted, over all streams.
    pub fn queued_messages(&self) -> usize {
        self.streams.iter().map(|s| s.queue.len()).sum()
    }

    /// Messages written on all streams whose receipt the peer has not yet confirmed.
    pub fn unconfirmed_messages(&self) -> usize {
        self.streams.iter().map(|s| s.in_flight.len()).sum()
    }

    /// Whether `send` on `stream` would be refused with [`SendError::Full`].
    pub fn is_blocked(&self, stream: StreamId) -> bool {
        self.streams
            .get(usize::from(stream.0))
            .is_some_and(|s| s.blocked)
            || self.over_queued_bytes(0)
    }

    /// Bytes we may still send on `stream` before the peer grants more.
    pub fn send_credit(&self, stream: StreamId) -> u64 {
        self.streams
            .get(usize::from(stream.0))
            .map_or(0, |s| s.credit)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("direction", &self.direction)
            .field("phase", &self.phase)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
