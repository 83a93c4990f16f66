//! The operations a shard asks of its I/O backend and the completions that come back: the one
//! interface both backends (io_uring in `ring.rs`, readiness in `poll.rs`) implement, so the
//! shard above handles completions the same way whichever runs.

use glueberry_transport::ConnId;

/// What an operation in flight owns.
#[derive(Debug)]
pub(crate) enum Op {
    /// Multishot accept on the listener.
    Accept,
    /// Connect `conn`'s socket to `addr`.
    Connect {
        conn: ConnId,
        addr: Box<socket2::SockAddr>,
    },
    /// Receive into the spare capacity of `buf` (its current contents are kept in front).
    Recv { conn: ConnId, buf: Vec<u8> },
    /// Multishot receive into buffers the kernel picks from the provided-buffer ring.
    RecvMulti { conn: ConnId },
    /// Send `start..end` of registered buffer `index`.
    SendFixed {
        conn: ConnId,
        index: u16,
        start: usize,
        end: usize,
    },
    /// Send `buf[start..end]`.
    Send {
        conn: ConnId,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    },
    /// Read the shard's eventfd (a wake-up from another thread).
    Wake { buf: Box<[u8; 8]> },
    /// Cancel the operation whose key is `target`.
    Cancel { target: u64 },
    /// Post a wake-up completion ([`WAKE_TOKEN`]) on another shard's ring (MSG_RING).
    MsgRing,
}

impl Op {
    /// A send's connection and the bytes it was given (`None` for other operations).
    pub(crate) fn send_range(&self) -> Option<(ConnId, usize, usize)> {
        match *self {
            Op::SendFixed {
                conn, start, end, ..
            }
            | Op::Send {
                conn, start, end, ..
            } => Some((conn, start, end)),
            _ => None,
        }
    }

    /// The same send, from `start` on (other operations are returned as they are).
    pub(crate) fn resumed_at(self, start: usize) -> Op {
        match self {
            Op::SendFixed {
                conn, index, end, ..
            } => Op::SendFixed {
                conn,
                index,
                start,
                end,
            },
            Op::Send { conn, buf, end, .. } => Op::Send {
                conn,
                buf,
                start,
                end,
            },
            other => other,
        }
    }
}

/// What a send's completion means for the bytes `start..end` it was given. Mapped once, here,
/// for both kinds of send (fixed and ordinary buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendProgress {
    /// Everything was sent.
    Done,
    /// Send `start..end` again: part was sent (`start` moved on), or the kernel was interrupted
    /// or had no room (EINTR, EAGAIN) and nothing was sent. The bytes are sealed records whose
    /// counters are spent: dropping them would break the stream for the peer.
    Resubmit { start: usize },
    /// The connection is broken (0 bytes for a non-empty send, or another error).
    Failed,
}

impl SendProgress {
    /// The meaning of `result` for a send of `start..end`.
    pub(crate) fn of(result: i32, start: usize, end: usize) -> Self {
        match result {
            n if n > 0 => {
                let start = start + n as usize;
                if start < end {
                    Self::Resubmit { start }
                } else {
                    Self::Done
                }
            }
            e if e == -libc::EINTR || e == -libc::EAGAIN => Self::Resubmit { start },
            _ => Self::Failed,
        }
    }
}

/// What a receive's completion means (an ordinary receive into a buffer of its own, or one shot
/// of a multishot receive into a provided buffer). Mapped once, here, for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvProgress {
    /// `n` bytes arrived.
    Data(usize),
    /// Nothing arrived and the connection is fine: cancelled (a close or a handoff asked for
    /// it), interrupted, no room yet (EAGAIN), or no provided buffer free (ENOBUFS, which also
    /// ends a multishot receive). Armed again if still wanted.
    Again,
    /// The byte stream ended: the peer's FIN (0), or a socket error.
    Ended,
}

impl RecvProgress {
    /// The meaning of a receive's `result`.
    pub(crate) fn of(result: i32) -> Self {
        match result {
            n if n > 0 => Self::Data(n as usize),
            0 => Self::Ended,
            e if matches!(
                -e,
                libc::ECANCELED | libc::EINTR | libc::EAGAIN | libc::ENOBUFS
            ) =>
            {
                Self::Again
            }
            _ => Self::Ended,
        }
    }
}

/// `user_data` of the completion another shard posts on this ring to wake it (MSG_RING); it
/// belongs to no operation of this ring.
pub(crate) const WAKE_TOKEN: u64 = u64::MAX;

/// Marks `n` more bytes of `buf` as filled after a `Recv` into its spare capacity completed
/// with result `n`.
pub(crate) fn received(buf: &mut Vec<u8>, n: usize) {
    let filled = buf.len() + n.min(buf.capacity() - buf.len());
    // SAFETY: the kernel wrote `n` bytes (the completion's result, never more than the spare
    // capacity it was given) right after the initialised prefix, so `..filled` is initialised.
    unsafe { buf.set_len(filled) };
}

/// A completion, copied out of the completion queue before it is handled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub key: usize,
    pub result: i32,
    pub more: bool,
    /// The provided buffer the kernel filled, for a multishot receive.
    pub buffer: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::{Op, RecvProgress, SendProgress};

    #[test]
    fn a_receive_is_data_a_retry_or_the_end() {
        assert_eq!(RecvProgress::of(1500), RecvProgress::Data(1500));
        for e in [libc::ECANCELED, libc::EINTR, libc::EAGAIN, libc::ENOBUFS] {
            assert_eq!(RecvProgress::of(-e), RecvProgress::Again, "errno {e}");
        }
        assert_eq!(RecvProgress::of(0), RecvProgress::Ended, "the peer's FIN");
        for e in [libc::ECONNRESET, libc::ETIMEDOUT, libc::EPIPE, libc::EBADF] {
            assert_eq!(RecvProgress::of(-e), RecvProgress::Ended, "errno {e}");
        }
    }

    #[test]
    fn interrupted_and_would_block_sends_are_resubmitted_whole() {
        assert_eq!(
            SendProgress::of(-libc::EINTR, 100, 900),
            SendProgress::Resubmit { start: 100 }
        );
        assert_eq!(
            SendProgress::of(-libc::EAGAIN, 0, 900),
            SendProgress::Resubmit { start: 0 }
        );
        assert_eq!(
            SendProgress::of(300, 100, 900),
            SendProgress::Resubmit { start: 400 }
        );
        assert_eq!(SendProgress::of(800, 100, 900), SendProgress::Done);
        assert_eq!(SendProgress::of(0, 100, 900), SendProgress::Failed);
        assert_eq!(SendProgress::of(-libc::EPIPE, 0, 9), SendProgress::Failed);
        assert_eq!(
            SendProgress::of(-libc::ECONNRESET, 0, 9),
            SendProgress::Failed
        );
    }

    #[test]
    fn a_resubmitted_send_keeps_its_buffer_and_its_end() {
        use glueberry_transport::ConnId;
        let op = Op::Send {
            conn: ConnId(7),
            buf: vec![1, 2, 3, 4],
            start: 0,
            end: 4,
        };
        assert_eq!(op.send_range(), Some((ConnId(7), 0, 4)));
        match op.resumed_at(3) {
            Op::Send {
                buf, start, end, ..
            } => {
                assert_eq!((buf, start, end), (vec![1, 2, 3, 4], 3, 4))
            }
            _ => panic!("still a send"),
        }
        let fixed = Op::SendFixed {
            conn: ConnId(1),
            index: 5,
            start: 0,
            end: 9,
        };
        assert!(matches!(
            fixed.resumed_at(2),
            Op::SendFixed {
                index: 5,
                start: 2,
                end: 9,
                ..
            }
        ));
        assert!(Op::MsgRing.send_range().is_none());
    }
}
