//! The receive path of a connection: records opened, frames handled, messages reassembled
//! and handed out, peer streams accepted or rejected.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use glueberry_crypto::HandshakeError;
use glueberry_crypto::handshake::{MAX_HANDSHAKE_BODY_LEN, decode_reject};
use glueberry_crypto::record::{HEADER_LEN, RecordError, RecordHeader};

use crate::event::{CloseCode, CloseReason, ConnectionError, Event, StreamId};
use crate::frame::{DATA_FIRST, DATA_LAST, Frame, Settings};
use crate::stream::{LocalStream, MESSAGE_CREDIT_OVERHEAD, PeerStream, RecvState, SendState};

use super::*;

impl Connection {
    /// Takes bytes received from the peer.
    pub fn handle_input(&mut self, now: Instant, mut data: &[u8]) {
        if self.phase == Phase::Closed || data.is_empty() {
            return;
        }
        self.last_recv = now;
        self.clock = self.clock.max(now);
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
                    #[cfg(feature = "danger-null-cipher")]
                    let channel = if self.config.danger_null_cipher {
                        glueberry_crypto::record::danger_null_channel()
                    } else {
                        session.into_channel()
                    };
                    #[cfg(not(feature = "danger-null-cipher"))]
                    let channel = session.into_channel();
                    self.start_session(peer, hello, channel);
                }
                Err(e) => return self.fail(ConnectionError::Handshake(e)),
            }
        }
        if self.rx.capacity() - self.rx.len() < data.len() {
            self.rx.reserve(data.len().max(RX_CHUNK));
        }
        self.rx.extend_from_slice(data);
        self.rx_capacity = self.rx.capacity();
        if let Err(e) = self.process_records(now, usize::MAX) {
            self.fail(e);
        }
        self.check_send_stall(now);
    }

    /// Takes received bytes in a buffer the caller hands over: when no partial record is
    /// pending, the buffer becomes the receive buffer without a copy, records are opened in
    /// place in it and messages are slices of it. A caller that receives into its own buffers
    /// first takes [`Connection::take_pending_input`] and puts those bytes at the front of the
    /// next buffer, so that this never copies.
    ///
    /// At most `frames` frames are read (`usize::MAX`: all); the rest waits for
    /// [`Connection::resume_input`]. A driver serving many connections gives each a share per
    /// turn and visits every connection with input left before it reads any again, so that a
    /// peer packing its records with tiny messages gets its share of the CPU and no more (and
    /// receives nothing new meanwhile: TCP holds it back).
    pub fn handle_input_buf(&mut self, now: Instant, data: BytesMut, frames: usize) {
        if self.handshake.is_some() || !self.rx.is_empty() {
            return self.handle_input(now, &data);
        }
        if self.phase == Phase::Closed || data.is_empty() {
            return;
        }
        self.last_recv = now;
        self.clock = self.clock.max(now);
        self.rx_capacity = data.capacity();
        self.rx = data;
        if let Err(e) = self.process_records(now, frames) {
            self.fail(e);
        }
        self.check_send_stall(now);
    }

    /// Whether input taken earlier is still unread because its budget ran out (see
    /// [`Connection::handle_input_buf`]): the driver calls [`Connection::resume_input`] in its
    /// next turn, and receives nothing more on this connection until this is false.
    pub fn has_unread_input(&self) -> bool {
        if self.phase == Phase::Closed || self.handshake.is_some() {
            return false;
        }
        self.rx_open.is_some()
            || self.rx.first_chunk::<HEADER_LEN>().is_some_and(|head| {
                let len = match RecordHeader::decode(*head) {
                    Ok(h) => h.record_len(),
                    Err(RecordError::HandshakeRejected) => reject_len(&self.rx),
                    Err(_) => 0,
                };
                self.rx.len() >= len
            })
    }

    /// Bytes of the peer's messages this connection holds: received (whole messages not yet
    /// released by the application, and fragments of unfinished ones) and not yet credited
    /// back. At most our `connection_window`, whatever the peer does.
    pub fn received_held(&self) -> u64 {
        u64::from(self.config.connection_window)
            .saturating_sub(self.recv_window.saturating_add(self.recv_released))
    }

    /// Reads the next `frames` frames of the input left unread by the last call.
    pub fn resume_input(&mut self, now: Instant, frames: usize) {
        if self.phase == Phase::Closed {
            return;
        }
        if let Err(e) = self.process_records(now, frames) {
            self.fail(e);
        }
        self.check_send_stall(now);
    }

    /// Takes the received bytes not yet processed (the start of a record whose end has not
    /// arrived). The caller must hand them back, first, with the next input.
    pub fn take_pending_input(&mut self) -> BytesMut {
        if self.handshake.is_some() {
            return BytesMut::new();
        }
        std::mem::take(&mut self.rx)
    }

    /// Opens and reads the records received, `budget` frames at most (the rest waits in `rx`
    /// and `rx_open`).
    pub(super) fn process_records(
        &mut self,
        now: Instant,
        budget: usize,
    ) -> Result<(), ConnectionError> {
        self.frames_left = budget;
        if let Some((record, at, end)) = self.rx_open.take() {
            self.handle_frames(now, &record, at, end)?;
        }
        while self.frames_left > 0
            && self.phase != Phase::Closed
            && let Some(head) = self.rx.first_chunk::<HEADER_LEN>()
        {
            let record_len = match RecordHeader::decode(*head) {
                Ok(header) => header.record_len(),
                Err(RecordError::HandshakeRejected) => {
                    // The responder refused our HelloFinalize: its HelloReject says why.
                    let len = reject_len(&self.rx);
                    if self.rx.len() < len {
                        break;
                    }
                    return Err(match decode_reject(&self.rx[FRAME_HEADER..len]) {
                        Ok(reject) => {
                            ConnectionError::Handshake(HandshakeError::Rejected(reject.reason))
                        }
                        Err(_) => ConnectionError::Record(RecordError::HandshakeRejected),
                    });
                }
                Err(e) => return Err(e.into()),
            };
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

    pub(super) fn handle_frames(
        &mut self,
        now: Instant,
        record: &Bytes,
        mut at: usize,
        end: usize,
    ) -> Result<(), ConnectionError> {
        while at < end {
            if self.frames_left == 0 {
                // The budget ran out: the rest of this record is read in the next call.
                self.rx_open = Some((record.clone(), at, end));
                return Ok(());
            }
            self.frames_left -= 1;
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
                    self.finish(CloseReason::Peer(CloseCode::from_u16(code)));
                    return Ok(());
                }
            }
            at += len;
        }
        Ok(())
    }

    pub(super) fn handle_data(
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
        // DATA only once the opener could have our acceptance (PROTOCOL.md §5.2): never on a
        // stream we rejected or have not answered, nor in the input that carried its OPEN.
        let local = match peer_stream.state {
            RecvState::Accepted { local } if peer_stream.announced => local,
            RecvState::Accepted { .. } | RecvState::Pending => {
                return Err(ConnectionError::Protocol(
                    "DATA on a stream before its acceptance was sent",
                ));
            }
            RecvState::Rejected => {
                return Err(ConnectionError::Protocol("DATA on a stream we rejected"));
            }
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
        self.recv_window = self
            .recv_window
            .checked_sub(cost)
            .ok_or(ConnectionError::FlowControl)?;
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
                // A slice of the receive buffer, or, for a message small beside it, a copy.
                let data = self.message_data(record, payload);
                self.events.push_back(Event::Message { stream, data });
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
                // Grows as fragments arrive (never sized by the announced length), each paid
                // for by credit that comes back only once the application took the message.
                let mut buf = BytesMut::with_capacity(payload.len());
                buf.extend_from_slice(payload);
                peer_stream.partial = Some((buf, total));
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
                }
            }
        }
        Ok(())
    }

    pub(super) fn handle_credit(
        &mut self,
        stream: u16,
        increment: u32,
    ) -> Result<(), ConnectionError> {
        if stream == CONNECTION_CREDIT {
            self.send_window = self
                .send_window
                .checked_add(u64::from(increment))
                .filter(|c| *c <= u64::from(u32::MAX) * 4)
                .ok_or(ConnectionError::Protocol("connection credit overflow"))?;
            return Ok(());
        }
        let local = self
            .streams
            .get_mut(usize::from(stream))
            .filter(|s| !s.open_pending)
            .ok_or(ConnectionError::Protocol(
                "CREDIT for a stream we did not open",
            ))?;
        let accepted = match local.state {
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
                true
            }
            // Credit given back: the peer took what it covers (§5.4).
            SendState::Open => {
                let (messages, bytes, cost) = local.confirm(u64::from(increment));
                self.unconfirmed -= cost;
                if messages > 0 {
                    self.events.push_back(Event::Confirmed {
                        stream: StreamId(stream),
                        messages,
                        bytes,
                    });
                }
                false
            }
        };
        local.credit = local
            .credit
            .checked_add(u64::from(increment))
            .filter(|c| *c <= u64::from(u32::MAX) * 4)
            .ok_or(ConnectionError::Protocol("credit overflow"))?;
        if accepted {
            self.check_ready();
        }
        Ok(())
    }

    pub(super) fn handle_settings(&mut self, settings: Settings) -> Result<(), ConnectionError> {
        if self.peer_settings.is_some() {
            return Err(ConnectionError::Protocol("SETTINGS sent twice"));
        }
        if settings.max_streams == 0
            || settings.initial_window < crate::config::MIN_WINDOW
            || settings.max_message_size == 0
            || !crate::config::fits_windows(
                settings.max_message_size as usize,
                settings.initial_window,
                settings.connection_window,
            )
        {
            return Err(ConnectionError::Protocol("SETTINGS out of range"));
        }
        self.peer_settings = Some(settings);
        // The peer's windows say what it will take; what we send ahead of its confirmation is
        // capped by our own windows as well (the streams' `cap`, `connection_cap`), so a peer
        // advertising 2^32 - 1 cannot make us hold more than we would hold for it (§5.4).
        self.send_window = u64::from(settings.connection_window);
        if let Some(connected) = self.connected_event.take() {
            self.events.push_back(connected);
        }
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
        self.check_ready();
        Ok(())
    }

    pub(super) fn handle_open(&mut self, stream: u16, name: &[u8]) -> Result<(), ConnectionError> {
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

    pub(super) fn handle_reject(&mut self, stream: u16) -> Result<(), ConnectionError> {
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
        self.check_ready();
        Ok(())
    }

    /// Emits [`Event::Ready`] once we are Established and the peer has answered (accepted or
    /// rejected) every stream we opened: it answers only once its own application has completed
    /// the handshake (§5.2), so from then on both sides are Established.
    pub(super) fn check_ready(&mut self) {
        if self.ready || self.phase != Phase::Established {
            return;
        }
        if self.streams[1..]
            .iter()
            .all(|s| s.state != SendState::AwaitingPeer)
        {
            self.ready = true;
            self.events.push_back(Event::Ready);
        }
    }

    pub(super) fn reject_local(
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
    pub(super) fn decide(&mut self, peer_id: u16) {
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
                if let Some(limit) = self.config.rate_limit_of(&peer_stream.name) {
                    peer_stream.pace = Some(crate::stream::Pace::new(limit, self.clock));
                    self.paced = true;
                }
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
}

/// A handshake message's header: kind and body length.
const FRAME_HEADER: usize = 3;

/// The length of the HelloReject at the front of `rx` (its header read; bounded by the
/// handshake's message limit whatever the length field says).
fn reject_len(rx: &[u8]) -> usize {
    let body = rx
        .get(1..FRAME_HEADER)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    FRAME_HEADER + body.min(MAX_HANDSHAKE_BODY_LEN)
}
