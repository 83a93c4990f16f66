//! Submissions that keep a shard fed (receives, accept, wake-ups), and what each completion
//! means for its connection.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use glueberry_transport::{ConnId, DialError};

use super::*;
use crate::sys::op::{Completion, Op, RecvProgress, SendProgress, WAKE_TOKEN, received};
use crate::sys::socket;

impl Shard {
    /// Arms a receive on each connection on the re-arm list (new connections, and those whose
    /// receive completed) that still wants one.
    pub(super) fn arm_recvs(&mut self) -> io::Result<()> {
        let provided = self.backend.has_provided_buffers();
        let mut rearm = std::mem::take(&mut self.rearm);
        self.touched += rearm.len();
        for id in rearm.drain(..) {
            let Some(io) = self.conns.get_mut(id) else {
                continue;
            };
            if !io.connected || io.recv.is_some() || io.closing.is_some() || io.handoff {
                continue;
            }
            if self.core.has_unread_input(id) {
                // Its last receive is not all read yet: no more until it is (TCP holds the
                // peer back meanwhile).
                self.unread.push(id);
                continue;
            }
            if provided {
                // One multishot receive per connection; the kernel takes a buffer from the
                // shard's ring only when data arrives.
                let key = self
                    .backend
                    .push(io.fd.as_raw_fd(), Op::RecvMulti { conn: id })?;
                io.recv = Some(key);
                continue;
            }
            // The start of a record still in flight goes first; the kernel writes after it, so
            // the connection gets whole records without copying them again.
            let pending = self.core.take_pending_input(id);
            let size = if io.busy || !pending.is_empty() {
                RECV_BUF.max(pending.len() + RECV_BUF / 2)
            } else {
                QUIET_RECV_BUF
            };
            let mut buf = Vec::with_capacity(size);
            buf.extend_from_slice(&pending);
            self.receive_armed += buf.capacity() as i64;
            let key = self
                .backend
                .push(io.fd.as_raw_fd(), Op::Recv { conn: id, buf })?;
            io.recv = Some(key);
        }
        self.rearm = rearm;
        Ok(())
    }

    /// Arms the accept of listener `index`.
    pub(super) fn arm_accept(&mut self, index: usize) -> io::Result<()> {
        let fd = self.listeners[index].as_raw_fd();
        self.accepts[index] = Some(self.backend.push(fd, Op::Accept)?);
        Ok(())
    }

    pub(super) fn arm_wake(&mut self) -> io::Result<()> {
        let buf = Box::new([0u8; 8]);
        self.backend
            .push(self.wake_fd.as_raw_fd(), Op::Wake { buf })?;
        Ok(())
    }

    pub(super) fn handle_completions(&mut self, now: Instant) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        self.backend.reap(&mut completions);
        if !completions.is_empty() {
            self.last_work = now;
        }
        self.metrics.completions.increment(completions.len() as u64);
        for c in completions.drain(..) {
            self.handle_completion(c, now)?;
        }
        self.completions = completions;
        self.settle_idle_conns()
    }

    pub(super) fn handle_completion(&mut self, c: Completion, now: Instant) -> io::Result<()> {
        if c.key as u64 == WAKE_TOKEN {
            // Another shard woke us (MSG_RING): its command is taken in the next turn.
            return Ok(());
        }
        if let Some(index) = self.accepts.iter().position(|&a| a == Some(c.key)) {
            if c.result >= 0 {
                self.handle_accept(socket::own(c.result), now);
            }
            if !c.more {
                self.backend.take(c.key);
                self.accepts[index] = None;
                if !self.shared.stop.load(Ordering::Acquire) {
                    self.arm_accept(index)?;
                }
            }
            return Ok(());
        }
        if c.more {
            // A multishot operation that stays armed.
            if let Some(Op::RecvMulti { conn }) = self.backend.get(c.key) {
                let conn = *conn;
                self.handle_provided_recv(conn, c, now);
            }
            return Ok(());
        }
        let Some(op) = self.backend.take(c.key) else {
            return Ok(());
        };
        match op {
            Op::Accept | Op::Cancel { .. } | Op::MsgRing => {}
            Op::Wake { .. } => {
                if !self.shared.stop.load(Ordering::Acquire) {
                    self.arm_wake()?;
                }
            }
            Op::Connect { conn, .. } => {
                if let Some(io) = self.conns.get_mut(conn) {
                    io.connect = None;
                    if c.result != 0 && io.closing.is_none() && !io.alternatives.is_empty() {
                        // The next address the name resolved to, on a new socket.
                        let rest = std::mem::take(&mut io.alternatives);
                        self.backend.release(io.fd.as_raw_fd());
                        self.conns.remove(conn);
                        self.dial(conn, rest, now);
                        return Ok(());
                    }
                }
                let result = if c.result == 0 {
                    if let Some(io) = self.conns.get_mut(conn) {
                        io.connected = true;
                        self.rearm.push(conn);
                    }
                    Ok(())
                } else {
                    Err(DialError::from(&io::Error::from_raw_os_error(-c.result)))
                };
                self.core.handle_dial_result(conn, result, now);
            }
            Op::RecvMulti { conn } => {
                if let Some(io) = self.conns.get_mut(conn) {
                    io.recv = None;
                    self.rearm.push(conn);
                }
                // Its last completion: it may still carry data; re-armed by the next turn.
                self.handle_provided_recv(conn, c, now);
            }
            Op::Recv { conn, mut buf } => {
                self.receive_armed -= buf.capacity() as i64;
                let Some(io) = self.conns.get_mut(conn) else {
                    return Ok(());
                };
                io.recv = None;
                self.rearm.push(conn);
                let quiet = io.handoff || io.closing.is_some();
                match RecvProgress::of(c.result) {
                    RecvProgress::Data(n) => {
                        received(&mut buf, n);
                        io.busy = buf.len() == buf.capacity() || n > QUIET_RECV;
                        // A first chunk now; the rest, if any, in the turns' shares.
                        let buf = BytesMut::from(Bytes::from(buf));
                        self.core.handle_input_buf(conn, buf, INPUT_CHUNK, now);
                        self.note_handshake(conn);
                    }
                    // Cancelled (close, handoff) or interrupted, or a connection that is going
                    // anyway: give back the pending bytes taken for this receive; the next turn
                    // resubmits if still wanted.
                    RecvProgress::Again => {
                        self.core.handle_input_buf(
                            conn,
                            BytesMut::from(Bytes::from(buf)),
                            usize::MAX,
                            now,
                        );
                    }
                    RecvProgress::Ended if quiet => {
                        self.core.handle_input_buf(
                            conn,
                            BytesMut::from(Bytes::from(buf)),
                            usize::MAX,
                            now,
                        );
                    }
                    RecvProgress::Ended => self.core.handle_eof(conn, now),
                }
            }
            op @ (Op::SendFixed { .. } | Op::Send { .. }) => self.handle_send(op, c.result, now)?,
        }
        Ok(())
    }

    /// A send completed: resubmit what is left (a partial send, EINTR, EAGAIN), or let the
    /// buffer go and, on failure, the connection.
    fn handle_send(&mut self, op: Op, result: i32, now: Instant) -> io::Result<()> {
        let Some((conn, start, end)) = op.send_range() else {
            return Ok(());
        };
        if let Some(io) = self.conns.get_mut(conn) {
            io.send = None;
            match SendProgress::of(result, start, end) {
                SendProgress::Resubmit { start } => {
                    io.send = Some(self.backend.push(io.fd.as_raw_fd(), op.resumed_at(start))?);
                    return Ok(());
                }
                SendProgress::Done => {}
                SendProgress::Failed => self.core.handle_eof(conn, now),
            }
        }
        // The connection may have more to write: the core looks at it again.
        self.core.touch(conn);
        match op {
            Op::SendFixed { index, .. } => self.fixed_free.push(index),
            Op::Send { buf, .. } => {
                let Some(io) = self.conns.get_mut(conn) else {
                    return Ok(());
                };
                if io.closing.as_ref().is_some_and(Vec::is_empty) && io.idle() {
                    // The CLOSE frame went out: done.
                    self.backend.release(io.fd.as_raw_fd());
                    self.conns.remove(conn);
                } else if self.core.has_pending_output(conn) {
                    io.send_buf = Some(buf);
                } else if buf.len() == SEND_BUF && self.send_pool.len() < SEND_POOL {
                    // Idle: the buffer goes back to the pool.
                    self.send_pool.push(buf);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An inbound socket whose secure handshake just finished no longer counts against its
    /// network group's unfinished handshakes (node-wide).
    fn note_handshake(&mut self, conn: ConnId) {
        if let Some(slot) = self.conns.get_mut(conn).and_then(|io| io.ip_slot.as_mut())
            && slot.is_pending()
            && !self.core.is_pending(conn)
        {
            slot.handshake_done();
        }
    }

    /// A multishot receive completed into a provided buffer (or ended).
    pub(super) fn handle_provided_recv(&mut self, conn: ConnId, c: Completion, now: Instant) {
        let quiet = self
            .conns
            .get(conn)
            .is_none_or(|io| io.handoff || io.closing.is_some());
        let progress = RecvProgress::of(c.result);
        if let RecvProgress::Data(n) = progress {
            if let Some(bid) = c.buffer {
                let data = self.backend.provided_data(bid, n);
                self.core.handle_input(conn, data, now);
                self.backend.recycle(bid);
                self.note_handshake(conn);
            }
            return;
        }
        if let Some(bid) = c.buffer {
            self.backend.recycle(bid);
        }
        if progress == RecvProgress::Ended && !quiet && !c.more {
            self.core.handle_eof(conn, now);
        }
    }
}
