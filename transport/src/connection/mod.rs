//! One connection's protocol logic, sans-IO: the secure handshake, then records of frames.
//!
//! Inputs are `handle_*` (bytes received, end of stream, timer fired) and application commands
//! (`send`, `release`, `complete_handshake`, `close`); outputs are `poll_*` (bytes to send,
//! events, the next deadline). Time is passed in; nothing here reads a clock or touches a socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glueberry_crypto::{
    Handshake, HandshakeConfig, HandshakeError, PeerId, RecordOpener, RecordSealer, Session,
};

use crate::config::ConnectionConfig;
use crate::event::{CloseCode, CloseReason, ConnectionError, Direction, Event, StreamId};
use crate::frame::{CONNECTION_CREDIT, Settings};
use crate::stream::{LocalStream, PeerStream, RecvState};

pub use crate::stream::HANDSHAKE_STREAM;

mod recv;
mod send;

/// Traffic on one stream of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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
    /// Payload bytes of the queued messages.
    pub queued_bytes: u64,
    /// Credit (payload plus 6 per message) written and not yet confirmed: what we hold for the
    /// peer in sent messages, at most our `initial_window` per stream whatever the peer grants.
    pub unconfirmed_bytes: u64,
}

/// Credit for this many consumed messages goes back even below a quarter window (PROTOCOL.md
/// §5.4): a sender's bound on what it holds unconfirmed is often counted in messages.
pub(crate) const CREDIT_BATCH_MESSAGES: u32 = 256;

/// How long after the last input credit below the batch size waits before it is sent anyway.
const CREDIT_DELAY: Duration = Duration::from_millis(10);

/// Receive buffer growth step: one allocation per this many bytes received, not per message.
const RX_CHUNK: usize = 64 * 1024;

/// A received message smaller than this fraction of the buffer it arrived in is copied out of
/// it (into `small`) rather than sliced, so that a held message keeps at most about
/// `COPY_OUT_RATIO` times its own size alive, never a whole receive buffer.
const COPY_OUT_RATIO: usize = 8;
/// The chunk that small received messages are copied into, back to back: one allocation per
/// this many bytes of them, not one per message.
const SMALL_CHUNK: usize = 64 * 1024;

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
    /// For an outbound connection: the `Connected` event, held until the peer's SETTINGS shows
    /// it admitted us (a refusing peer sends CLOSE instead; PROTOCOL.md §4.5).
    connected_event: Option<Event>,
    streams: Vec<LocalStream>,
    peer_streams: Vec<Option<PeerStream>>,
    control: VecDeque<Control>,
    events: VecDeque<Event>,
    rx: BytesMut,
    /// A record opened and read up to its first unread frame (`record`, from, to): the input
    /// budget ran out inside it (see [`Connection::handle_input_buf`]).
    rx_open: Option<(Bytes, usize, usize)>,
    /// Frames this call may still read before it leaves the rest for the next one.
    frames_left: usize,
    /// Stream indices, highest priority first: the order the record scheduler visits them.
    order: Vec<u16>,
    /// Records sealed by the last `poll_transmit`.
    last_records: usize,
    /// Capacity of the buffer the input being processed lies in: a message smaller than
    /// 1/[`COPY_OUT_RATIO`] of it is copied out (see [`Connection::message_data`]), so that
    /// what the application holds, or a reply it sends that is a slice of it, does not keep a
    /// mostly unrelated receive buffer alive. Decided per message: padding a peer puts around
    /// small messages cannot make each of them pin the whole buffer.
    rx_capacity: usize,
    /// Where small received messages are copied, back to back.
    small: BytesMut,
    /// Message bytes were written since the send-stall check last ran.
    send_progress: bool,
    /// Since when messages have waited with no byte of them written (see
    /// [`ConnectionConfig::send_stall_timeout`]).
    stalled_since: Option<Instant>,
    last_recv: Instant,
    /// Credit released below the batch size and not yet sent; sent `CREDIT_DELAY` after it
    /// became owed at the latest (`credit_owed_since`), so that a sender learns its messages
    /// arrived within that, however its traffic flows: it holds them until then, and cuts a
    /// peer whose oldest unconfirmed message is too old.
    credit_owed: bool,
    credit_owed_since: Instant,
    /// Connection credit: what we may still send on all streams together (from the peer's
    /// SETTINGS and its CREDIT frames for [`CONNECTION_CREDIT`]).
    send_window: u64,
    /// Connection credit reserved for the rest of messages already begun (the sum of the
    /// streams' `reserved`): a message once started can always finish.
    send_reserved: u64,
    /// Credit written on all streams and not yet confirmed (the sum of the streams'
    /// `unconfirmed`): at most our own `connection_window`, whatever the peer grants.
    unconfirmed: u64,
    /// When the oldest unconfirmed message was written (no later than), as the last stall
    /// check found it.
    oldest_unconfirmed: Option<Instant>,
    /// The latest time we were given (inputs, timers, [`Connection::poll_transmit_at`]): what
    /// messages written now are stamped with.
    clock: Instant,
    /// `poll_transmit` wrote whole messages (they are stamped when it returns).
    wrote_messages: bool,
    /// Some peer stream's credit is paced by a rate limit.
    paced: bool,
    /// What the peer may still send us on all streams together.
    recv_window: u64,
    /// Connection credit the application released and we have not yet granted back.
    recv_released: u64,
    /// Payload bytes queued on all streams (the sum of their `queued_bytes`).
    queued_bytes: u64,
    ping: Option<(u64, Instant)>,
    ping_seq: u64,
    close_frame: Option<CloseCode>,
    close_reason: Option<CloseReason>,
    rtt: Option<Duration>,
    /// [`Event::Ready`] was emitted: the peer answered every stream we opened.
    ready: bool,
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
        // Room for the handshake stream only: an idle connection (a peer that never opens a
        // stream) costs its one stream, not `max_streams` (224 + 152 bytes each); the tables
        // grow as streams open.
        let mut streams = vec![LocalStream::new(HANDSHAKE_STREAM, &config)];
        let peer_streams = vec![Some(PeerStream::new(
            HANDSHAKE_STREAM.as_bytes(),
            RecvState::Accepted { local: 0 },
            u64::from(config.initial_window),
        ))];
        streams[0].peer_id = Some(0);
        Self {
            direction,
            phase: Phase::Handshaking,
            handshake: None,
            handshake_out: Vec::new(),
            channel: None,
            peer: None,
            peer_settings: None,
            connected_event: None,
            streams,
            peer_streams,
            control: VecDeque::with_capacity(8),
            events: VecDeque::new(),
            rx: BytesMut::new(),
            rx_open: None,
            frames_left: 0,
            order: vec![0],
            last_records: 0,
            rx_capacity: 0,
            small: BytesMut::new(),
            send_progress: false,
            stalled_since: None,
            last_recv: now,
            credit_owed: false,
            credit_owed_since: now,
            send_window: 0,
            send_reserved: 0,
            unconfirmed: 0,
            oldest_unconfirmed: None,
            clock: now,
            wrote_messages: false,
            paced: false,
            recv_window: u64::from(config.connection_window),
            recv_released: 0,
            queued_bytes: 0,
            ping: None,
            ping_seq: 0,
            close_frame: None,
            close_reason: None,
            rtt: None,
            ready: false,
            config,
        }
    }

    fn start_session(&mut self, peer: PeerId, hello: Bytes, channel: (RecordSealer, RecordOpener)) {
        self.peer = Some(peer);
        self.channel = Some(channel);
        self.phase = Phase::Connected;
        self.control.push_back(Control::Settings);
        let connected = Event::Connected {
            peer,
            remote_hello: hello,
        };
        match self.direction {
            // The dialler is Connected once the peer admitted it (its SETTINGS arrive).
            Direction::Outbound => self.connected_event = Some(connected),
            // The listener decides admission itself, on this event.
            Direction::Inbound => self.events.push_back(connected),
        }
    }

    // ---- inputs ----

    /// The peer closed its sending side (TCP FIN) or the socket failed. Without a CLOSE frame
    /// first, this is a lost connection.
    pub fn handle_eof(&mut self) {
        self.abort(ConnectionError::ConnectionLost);
    }

    /// The driver gave up on the connection (its dial failed or timed out): it is closed with
    /// `error` and sends nothing more.
    pub fn abort(&mut self, error: ConnectionError) {
        if self.phase != Phase::Closed {
            self.fail(error);
            self.close_frame = None;
        }
    }

    /// Time passed: sends credit owed, keepalive pings, and declares a silent peer dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.clock = self.clock.max(now);
        if self.paced {
            self.release_paced(now);
        }
        if self.credit_owed && now >= self.credit_owed_since + CREDIT_DELAY {
            self.credit_owed = false;
            self.grant_connection_credit(0);
            for (id, peer_stream) in self.peer_streams.iter_mut().enumerate() {
                if let Some(peer_stream) = peer_stream
                    && peer_stream.released > 0
                {
                    Self::credit_back(id as u16, peer_stream, 0, 0, &mut self.control);
                }
            }
        }
        self.check_send_stall(now);
        if self.phase == Phase::Closed {
            return;
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

    /// Adds `amount` to the connection credit released and grants it back once it reaches a
    /// quarter of `connection_window` (or, with `amount` 0, whatever is owed: the delayed
    /// flush).
    pub(super) fn grant_connection_credit(&mut self, amount: u64) {
        self.recv_released += amount;
        let batch = if amount == 0 {
            1
        } else {
            u64::from(self.config.connection_window / 4)
        };
        if self.recv_released > 0 && self.recv_released >= batch {
            let increment = self.recv_released.min(u64::from(u32::MAX)) as u32;
            self.recv_released -= u64::from(increment);
            self.recv_window += u64::from(increment);
            self.control.push_back(Control::Credit {
                stream: CONNECTION_CREDIT,
                increment,
            });
        }
        if self.recv_released > 0 {
            self.owe_credit();
        }
    }

    /// Paced streams: what their pace allows of the credit they owe goes back now.
    fn release_paced(&mut self, now: Instant) {
        let batch = u64::from(self.config.initial_window / 4);
        let mut owed = false;
        for (id, peer_stream) in self.peer_streams.iter_mut().enumerate() {
            let Some(peer_stream) = peer_stream else {
                continue;
            };
            let Some(grant) = peer_stream.pace.as_mut().map(|p| p.take(now)) else {
                continue;
            };
            if grant > 0 {
                Self::credit_back(id as u16, peer_stream, grant, batch, &mut self.control);
            }
            owed |= peer_stream.released > 0;
        }
        if owed {
            self.owe_credit();
        }
    }

    /// Credit below a batch is now owed: it goes out `CREDIT_DELAY` from the first of it.
    pub(super) fn owe_credit(&mut self) {
        if !self.credit_owed {
            self.credit_owed = true;
            self.credit_owed_since = self.clock;
        }
    }

    /// A received message's bytes: a slice of the receive buffer when the message is a good
    /// part of it, otherwise a copy into the connection's chunk of small messages (so a held
    /// message pins about its own size, at most 1/[`COPY_OUT_RATIO`] of a receive buffer).
    pub(super) fn message_data(&mut self, record: &Bytes, payload: &[u8]) -> Bytes {
        if payload.len().saturating_mul(COPY_OUT_RATIO) >= self.rx_capacity {
            return record.slice_ref(payload);
        }
        if self.small.capacity() < payload.len() {
            self.small = BytesMut::with_capacity(SMALL_CHUNK.max(payload.len()));
        }
        self.small.extend_from_slice(payload);
        self.small.split().freeze()
    }

    /// Closes the connection with [`CloseCode::SendStalled`] if messages have waited
    /// `send_stall_timeout` with none of their bytes written, or if the oldest message written
    /// and not confirmed was written `send_stall_timeout` ago. Run on every input and timeout:
    /// a peer that pings us but withholds credit, lets its TCP window fall to zero, or returns
    /// credit a few bytes at a time is noticed even though it is not silent.
    pub(super) fn check_send_stall(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.clock = self.clock.max(now);
        self.note_unconfirmed(now);
        if self
            .oldest_unconfirmed
            .is_some_and(|at| now.saturating_duration_since(at) >= self.config.send_stall_timeout)
        {
            self.close(CloseCode::SendStalled);
            return;
        }
        let waiting = self.queued_messages() > 0;
        if std::mem::take(&mut self.send_progress) || !waiting {
            self.stalled_since = waiting.then_some(now);
            return;
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.config.send_stall_timeout {
            self.close(CloseCode::SendStalled);
        }
    }

    /// Stamps messages written since the last stamp with `now` and finds when the oldest
    /// unconfirmed one was written.
    pub(super) fn note_unconfirmed(&mut self, now: Instant) {
        self.oldest_unconfirmed = self
            .streams
            .iter_mut()
            .filter_map(|s| s.oldest_unconfirmed(now))
            .min();
    }

    /// Our streams' ids and names.
    pub fn streams(&self) -> impl Iterator<Item = (StreamId, &std::sync::Arc<str>)> {
        self.streams
            .iter()
            .enumerate()
            .map(|(i, s)| (StreamId(i as u16), &s.name))
    }

    /// Records the last [`Connection::poll_transmit`] sealed (handshake messages are not
    /// records): the driver's records-per-send figure without parsing what it sends.
    pub fn last_records(&self) -> usize {
        self.last_records
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
            at = at.min(self.credit_owed_since + CREDIT_DELAY);
        }
        if let Some(since) = self.stalled_since {
            at = at.min(since + self.config.send_stall_timeout);
        }
        if let Some(oldest) = self.oldest_unconfirmed {
            at = at.min(oldest + self.config.send_stall_timeout);
        }
        if self.paced {
            let paced = self.peer_streams.iter().flatten();
            if let Some(next) = paced.filter_map(|p| p.pace.as_ref()?.next()).min() {
                at = at.min(next);
            }
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
                    || self.streams.iter().any(|s| {
                        (s.sendable() && self.connection_credit() > 0)
                            || (s.open_pending && self.peer_settings.is_some())
                    })))
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
                queued_bytes: s.queued_bytes,
                unconfirmed_bytes: s.unconfirmed,
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

    /// Credit (message bytes plus 6 per message) written on all streams and not yet confirmed:
    /// what this connection holds in sent messages. At most our `connection_window` (plus, on
    /// each stream, the rest of one message begun), whatever the peer advertised.
    pub fn unconfirmed_bytes(&self) -> u64 {
        self.unconfirmed
    }

    /// Connection credit we may still spend: the peer's grant, and our cap on what is written
    /// and not yet confirmed.
    pub(super) fn connection_credit(&self) -> u64 {
        self.send_window
            .min(u64::from(self.config.connection_window).saturating_sub(self.unconfirmed))
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
mod budget;
#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
