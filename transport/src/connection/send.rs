//! The send path of a connection: application commands (open streams, send, release, close)
//! and the records `poll_transmit` fills, stream by stream in priority order.

use std::collections::VecDeque;

use bytes::Bytes;
use glueberry_crypto::record::{HEADER_LEN, TAG_LEN};

use crate::event::{
    CloseCode, CloseReason, ConnectionError, Event, SendError, StreamError, StreamId,
};
use crate::frame::{self, Frame, MAX_CONTROL_FRAME_LEN, Settings};
use crate::stream::{LocalStream, MESSAGE_CREDIT_OVERHEAD, PeerStream, SendState};

use super::*;

impl Connection {
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
            let mut stream = LocalStream::new(name, &self.config);
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
        self.check_ready();
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
    pub(super) fn check_send(&self, stream: StreamId, len: usize) -> Result<(), SendError> {
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
    pub(super) fn over_queued_bytes(&self, len: usize) -> bool {
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
        let cost = len as u64 + MESSAGE_CREDIT_OVERHEAD;
        // A paced stream's credit goes back as its pace allows (the rest later, from
        // `release_paced`); the connection's always goes back at once.
        let amount = match peer_stream.pace.as_mut() {
            Some(pace) => {
                pace.owe(cost);
                pace.take(self.clock)
            }
            None => cost,
        };
        // Credit goes back a quarter window at a time, or every `CREDIT_BATCH_MESSAGES`
        // messages, whichever comes first: the sender holds what it wrote until we confirm it
        // (its send bound counts unconfirmed messages), so many small messages must not wait
        // for a quarter window of bytes.
        peer_stream.released_messages += 1;
        let batch = if peer_stream.released_messages >= CREDIT_BATCH_MESSAGES {
            1
        } else {
            u64::from(self.config.initial_window / 4)
        };
        Self::credit_back(peer_id, peer_stream, amount, batch, &mut self.control);
        if peer_stream.released > 0 {
            self.owe_credit();
        }
        self.grant_connection_credit(cost);
    }

    /// Adds `amount` to the credit owed on a peer stream and sends it once it reaches `batch`
    /// (the caller notes a remainder in `credit_owed`).
    pub(super) fn credit_back(
        peer_id: u16,
        peer_stream: &mut PeerStream,
        amount: u64,
        batch: u64,
        control: &mut VecDeque<Control>,
    ) {
        peer_stream.released += amount;
        if peer_stream.released > 0 && peer_stream.released >= batch {
            peer_stream.released_messages = 0;
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

    pub(super) fn fail(&mut self, error: ConnectionError) {
        let code = match &error {
            ConnectionError::FlowControl => CloseCode::FlowControl,
            ConnectionError::MessageTooLarge { .. } => CloseCode::MessageTooLarge,
            ConnectionError::IdleTimeout => CloseCode::IdleTimeout,
            _ => CloseCode::ProtocolError,
        };
        if self.phase != Phase::Closed {
            self.finish(CloseReason::Error(error));
            if self.channel.is_some() {
                self.close_frame = Some(code);
            }
        }
    }

    pub(super) fn finish(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.handshake = None;
        self.control.clear();
        let unsent = self.queued_messages() as u64;
        self.queued_bytes = 0;
        self.unconfirmed = 0;
        self.oldest_unconfirmed = None;
        for (index, stream) in self.streams.iter_mut().enumerate() {
            if stream.queue.is_empty() && stream.in_flight.is_empty() {
                continue;
            }
            stream.front_offset = 0;
            stream.confirmed = 0;
            stream.unconfirmed = 0;
            stream.checkpoints.clear();
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

    /// [`Connection::poll_transmit`] at `now`: the messages written are stamped with it, so the
    /// send-stall deadline (the age of the oldest unconfirmed message) counts from when they
    /// were written. Without it they are stamped with the time of the last input or timer.
    pub fn poll_transmit_at(&mut self, now: Instant, out: &mut [u8]) -> usize {
        self.clock = self.clock.max(now);
        self.poll_transmit(out)
    }

    /// Writes what is ready to send into `out` (whole records, sealed in place) and returns how
    /// many bytes it wrote. Call until it returns 0 or the transport cannot take more.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> usize {
        let mut pos = 0;
        self.last_records = 0;
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
                Frame::Close(code.to_u16()).encode(body).unwrap_or(0)
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
                Ok(len) => {
                    pos += len;
                    self.last_records += 1;
                }
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
        if std::mem::take(&mut self.wrote_messages) {
            self.note_unconfirmed(self.clock);
        }
        pos
    }

    pub(super) fn write_control(&mut self, out: &mut [u8]) -> usize {
        let mut written = 0;
        while let Some(&control) = self.control.front() {
            let frame = match control {
                Control::Settings => Frame::Settings(Settings {
                    max_message_size: self.config.max_message_size as u32,
                    max_streams: self.config.max_streams,
                    initial_window: self.config.initial_window,
                    connection_window: self.config.connection_window,
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
            if let Control::Credit { stream, .. } = control
                && let Some(Some(peer_stream)) = self.peer_streams.get_mut(usize::from(stream))
            {
                peer_stream.announced = true;
            }
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
    pub(super) fn write_data(&mut self, out: &mut [u8]) -> usize {
        let one_only = !self.config.batching;
        let min_fragment = crate::stream::min_fragment(self.config.max_record_plaintext);
        let mut written = 0;
        let mut new_round = false;
        loop {
            let mut busy = false;
            let mut progressed = false;
            for &index in &self.order {
                let connection_credit = self.connection_credit();
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
                if connection_credit == 0 {
                    // The connection's credit is spent (the peer's grant, or our cap on what
                    // it has not confirmed): every stream waits for the peer.
                    return written;
                }
                // What this stream may take of the connection's credit: all of it but what
                // other streams' unfinished messages have reserved (PROTOCOL.md §5.4).
                let reserved_before = stream.reserved;
                let others = self.send_reserved - reserved_before;
                let available = connection_credit.saturating_sub(others);
                let mut credit = available;
                let queued = stream.queued_bytes;
                let (n, completed) = stream.write_data(
                    index,
                    &mut out[written..],
                    &mut credit,
                    stream.deficit,
                    one_only,
                    min_fragment,
                );
                self.send_window -= available - credit;
                self.unconfirmed += available - credit;
                self.send_reserved = others + stream.reserved;
                stream.deficit = stream.deficit.saturating_sub(n);
                written += n;
                self.send_progress |= n > 0;
                self.queued_bytes -= queued - stream.queued_bytes;
                self.wrote_messages |= completed > 0;
                if completed > 0
                    && stream.blocked
                    && stream.queue.len() <= self.config.low_watermark
                {
                    stream.blocked = false;
                    self.events.push_back(Event::Writable(StreamId(index)));
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
}
