//! One interface over the two backends a shard can run on. The shard pushes the same
//! operations ([`Op`]) and handles the same completions whichever runs; what one backend lacks
//! (registered send buffers, provided receive buffers, MSG_RING wake-ups) the other reports as
//! absent, and the shard takes its ordinary path.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::op::{Completion, Op};
use super::poll::Poller;
use super::ring::Ring;

/// A shard's I/O backend.
#[allow(clippy::large_enum_variant)] // one per shard, not moved once made: boxing would only add a hop
pub(crate) enum Io {
    /// io_uring: operations complete in the kernel, submitted in batches.
    Uring(Ring),
    /// Readiness (epoll): operations are non-blocking system calls made when ready.
    Poll(Poller),
}

impl Io {
    /// Sets up `entries` provided receive buffers of `size` bytes for multishot receives
    /// (io_uring only: the poll backend always receives into the connection's buffer).
    pub(crate) fn provide_receive_buffers(&mut self, entries: u16, size: usize) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.provide_receive_buffers(entries, size),
            Io::Poll(_) => Ok(()),
        }
    }

    /// Whether receives use provided buffers.
    pub(crate) fn has_provided_buffers(&self) -> bool {
        match self {
            Io::Uring(ring) => ring.has_provided_buffers(),
            Io::Poll(_) => false,
        }
    }

    /// The bytes a multishot receive put in provided buffer `bid`.
    pub(crate) fn provided_data(&self, bid: u16, len: usize) -> &[u8] {
        match self {
            Io::Uring(ring) => ring.provided_data(bid, len),
            Io::Poll(_) => &[],
        }
    }

    /// Gives provided buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if let Io::Uring(ring) = self {
            ring.recycle(bid);
        }
    }

    /// Registers up to `count` send buffers of `size` bytes; how many were (none on the poll
    /// backend).
    pub(crate) fn register_send_buffers(&mut self, count: usize, size: usize) -> usize {
        match self {
            Io::Uring(ring) => ring.register_send_buffers(count, size),
            Io::Poll(_) => 0,
        }
    }

    /// Registered buffer `index`.
    pub(crate) fn fixed_mut(&mut self, index: u16) -> Option<&mut [u8]> {
        match self {
            Io::Uring(ring) => ring.fixed_mut(index),
            Io::Poll(_) => None,
        }
    }

    /// The descriptor other shards post wake-ups to (MSG_RING), or -1 when they must use the
    /// eventfd.
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Io::Uring(ring) => ring.fd(),
            Io::Poll(_) => -1,
        }
    }

    /// Operations in flight.
    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Io::Uring(ring) => ring.in_flight(),
            Io::Poll(poller) => poller.in_flight(),
        }
    }

    /// Operations pushed since the backend was made.
    pub(crate) fn pushed(&self) -> u64 {
        match self {
            Io::Uring(ring) => ring.pushed(),
            Io::Poll(poller) => poller.pushed(),
        }
    }

    /// Starts `op` on `fd`; returns its key.
    pub(crate) fn push(&mut self, fd: RawFd, op: Op) -> io::Result<usize> {
        match self {
            Io::Uring(ring) => ring.push(fd, op),
            Io::Poll(poller) => poller.push(fd, op),
        }
    }

    /// Asks for operation `key` to be cancelled; its completion still arrives.
    pub(crate) fn cancel(&mut self, key: usize) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.cancel(key),
            Io::Poll(poller) => poller.cancel(key),
        }
    }

    /// Cancels every pending eventfd read (at shutdown).
    pub(crate) fn cancel_all_wakes(&mut self) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.cancel_all_wakes(),
            Io::Poll(poller) => poller.cancel_all_wakes(),
        }
    }

    /// `fd` leaves this shard (handed off or closed) with nothing in flight on it.
    pub(crate) fn release(&mut self, fd: RawFd) {
        if let Io::Poll(poller) = self {
            poller.release(fd);
        }
    }

    /// Submits what is queued without waiting.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.submit(),
            Io::Poll(poller) => poller.submit(),
        }
    }

    /// Submits what is queued and waits for a completion, or `timeout`.
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Io::Uring(ring) => ring.submit_and_wait(timeout),
            Io::Poll(poller) => poller.submit_and_wait(timeout),
        }
    }

    /// Copies the ready completions into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        match self {
            Io::Uring(ring) => ring.reap(out),
            Io::Poll(poller) => poller.reap(out),
        }
    }

    /// The operation of a final completion (its slot is freed).
    pub(crate) fn take(&mut self, key: usize) -> Option<Op> {
        match self {
            Io::Uring(ring) => ring.take(key),
            Io::Poll(poller) => poller.take(key),
        }
    }

    /// The operation of a completion followed by more.
    pub(crate) fn get(&self, key: usize) -> Option<&Op> {
        match self {
            Io::Uring(ring) => ring.get(key),
            Io::Poll(poller) => poller.get(key),
        }
    }
}
