//! One shard's io_uring and the operations in flight on it.
//!
//! Every submitted operation is a slot in a slab and its `user_data` is the slot's key. What an
//! entry points at (a buffer, a socket address) lives in that slot and is not touched or freed
//! until the operation's final completion arrives, also when it is cancelled or the shard shuts
//! down: that is the rule that keeps this module memory-safe.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use super::bufring::{self, BufRing};
use super::op::{Completion, Op, WAKE_TOKEN};

/// A shard's ring.
pub(crate) struct Ring {
    ring: IoUring,
    ops: Slab<Op>,
    /// Registered send buffers. Their memory stays allocated (and pinned by the kernel) for the
    /// life of the ring; `SendFixed` operations borrow them by index.
    fixed: Vec<Box<[u8]>>,
    /// The provided-buffer ring for multishot receives, if enabled. Declared after `ring`, so
    /// the io_uring is closed before this memory is freed.
    provided: Option<BufRing>,
    /// Submission queue entries pushed since the ring was made.
    pushed: u64,
    /// Completions taken off a full completion queue (EBUSY) while pushing: handed out by the
    /// next `reap`, first.
    overflow: Vec<Completion>,
}

impl Ring {
    /// Whether a ring of `entries` can be set up here with every operation the shards use:
    /// `Err` says why not (EPERM from a seccomp profile or `kernel.io_uring_disabled`, ENOSYS
    /// without io_uring, EINVAL from an old kernel or a bad size).
    pub(crate) fn probe(entries: u32) -> io::Result<()> {
        // A small ring: its memory is freed by the kernel some time after it closes, and under
        // a tight locked-memory limit the shards' rings need that room.
        let ring = IoUring::new(entries.min(8))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let needed = [
            ("accept", opcode::Accept::CODE),
            ("connect", opcode::Connect::CODE),
            ("recv", opcode::Recv::CODE),
            ("send", opcode::Send::CODE),
            ("read", opcode::Read::CODE),
            ("write_fixed", opcode::WriteFixed::CODE),
            ("async_cancel", opcode::AsyncCancel::CODE),
        ];
        for (name, code) in needed {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel's io_uring lacks the {name} operation"),
                ));
            }
        }
        Ok(())
    }

    /// A ring of `entries` submission slots, with SINGLE_ISSUER | DEFER_TASKRUN where the kernel
    /// accepts them (the calling thread must be the only one to use it).
    pub(crate) fn new(entries: u32) -> io::Result<Self> {
        let tuned = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .build(entries);
        // Older kernels refuse the flags with EINVAL: run without them.
        let ring = match tuned {
            Ok(ring) => ring,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && entries > 0 => {
                IoUring::new(entries)?
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            ring,
            ops: Slab::with_capacity(entries as usize),
            fixed: Vec::new(),
            provided: None,
            pushed: 0,
            overflow: Vec::new(),
        })
    }

    /// Sets up `entries` provided receive buffers of `size` bytes for multishot receives.
    pub(crate) fn provide_receive_buffers(&mut self, entries: u16, size: usize) -> io::Result<()> {
        self.provided = Some(BufRing::new(&self.ring, entries, size)?);
        Ok(())
    }

    /// Whether receives use the provided-buffer ring.
    pub(crate) fn has_provided_buffers(&self) -> bool {
        self.provided.is_some()
    }

    /// The bytes a multishot receive put in provided buffer `bid`.
    pub(crate) fn provided_data(&self, bid: u16, len: usize) -> &[u8] {
        self.provided.as_ref().map_or(&[], |p| p.data(bid, len))
    }

    /// Gives provided buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if let Some(p) = self.provided.as_mut() {
            p.recycle(bid);
        }
    }

    /// Registers up to `count` send buffers of `size` bytes. Registration pins memory, which an
    /// unprivileged process may only do up to RLIMIT_MEMLOCK (ring memory counts too): on
    /// failure the count is halved until it fits, down to none. Returns how many were
    /// registered.
    pub(crate) fn register_send_buffers(&mut self, mut count: usize, size: usize) -> usize {
        while count >= 2 {
            let buffers: Vec<Box<[u8]>> = (0..count)
                .map(|_| vec![0u8; size].into_boxed_slice())
                .collect();
            let iovecs: Vec<libc::iovec> = buffers
                .iter()
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: each iovec describes a live heap allocation owned by `buffers`, which is
            // moved into `self.fixed` on success and kept until the ring is dropped, so the
            // kernel's pinned pages always belong to memory we own.
            let registered = unsafe { self.ring.submitter().register_buffers(&iovecs) };
            if registered.is_ok() {
                self.fixed = buffers;
                return count;
            }
            count /= 2;
        }
        0
    }

    /// Registered buffer `index`, to fill before a `SendFixed`. The caller lends each index to
    /// one operation at a time.
    pub(crate) fn fixed_mut(&mut self, index: u16) -> Option<&mut [u8]> {
        self.fixed.get_mut(usize::from(index)).map(|b| &mut b[..])
    }

    /// This ring's descriptor, for other shards' MSG_RING wake-ups.
    pub(crate) fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Operations in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Submits `op`; returns its key.
    pub(crate) fn push(&mut self, fd: RawFd, op: Op) -> io::Result<usize> {
        if let Op::SendFixed {
            index, start, end, ..
        } = &op
            && self
                .fixed
                .get(usize::from(*index))
                .is_none_or(|b| start > end || *end > b.len())
        {
            return Err(io::Error::other("registered buffer range out of bounds"));
        }
        let entry = self.ops.vacant_entry();
        let key = entry.key();
        self.pushed += 1;
        let op = entry.insert(op);
        let sqe = match op {
            Op::Accept => opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            Op::Connect { addr, .. } => {
                opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len()).build()
            }
            Op::Recv { buf, .. } => {
                let spare = buf.spare_capacity_mut();
                let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
                opcode::Recv::new(types::Fd(fd), spare.as_mut_ptr().cast(), len).build()
            }
            Op::SendFixed {
                index, start, end, ..
            } => {
                // Checked above: the index exists and the range is inside the buffer.
                let slice = &self.fixed[usize::from(*index)][*start..*end];
                let len = u32::try_from(slice.len()).unwrap_or(u32::MAX);
                opcode::WriteFixed::new(types::Fd(fd), slice.as_ptr(), len, *index).build()
            }
            Op::Send {
                buf, start, end, ..
            } => {
                let slice = &buf[*start..*end];
                let len = u32::try_from(slice.len()).unwrap_or(u32::MAX);
                opcode::Send::new(types::Fd(fd), slice.as_ptr(), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Op::RecvMulti { .. } => opcode::RecvMulti::new(types::Fd(fd), bufring::GROUP).build(),
            Op::Wake { buf } => opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 8).build(),
            Op::Cancel { target } => opcode::AsyncCancel::new(*target).build(),
            Op::MsgRing => opcode::MsgRingData::new(types::Fd(fd), 0, WAKE_TOKEN, None).build(),
        }
        .user_data(key as u64);
        self.submit_entry(&sqe)?;
        Ok(key)
    }

    /// Asks the kernel to cancel the operation `key`; its completion still arrives (with
    /// `-ECANCELED` or its real result) and only then is its slot freed.
    pub(crate) fn cancel(&mut self, key: usize) -> io::Result<()> {
        if !self.ops.contains(key) {
            return Ok(());
        }
        self.push(-1, Op::Cancel { target: key as u64 }).map(|_| ())
    }

    fn submit_entry(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer in `sqe` points into a slot of `self.ops` (a buffer or an
            // address owned by a `Vec` or `Box` whose heap memory does not move when the slab
            // grows), and that slot is freed only in `take`, after the final completion.
            let pushed = unsafe { self.ring.submission().push(sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            // A full submission queue is flushed, never dropped. The kernel refuses (EBUSY)
            // while the completion queue is full: those completions are set aside for the next
            // `reap`, which makes room.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let mut overflow = std::mem::take(&mut self.overflow);
                    self.reap_ring(&mut overflow);
                    self.overflow = overflow;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits what is queued and waits for at least one completion, or `timeout`.
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Submission queue entries pushed since the ring was made.
    pub(crate) fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Submits what is queued without waiting (nor asking for completions: with DEFER_TASKRUN
    /// none is posted by this call).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Copies the ready completions into `out`; handled afterwards, never inside the iterator.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.overflow);
        self.reap_ring(out);
    }

    fn reap_ring(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            out.push(Completion {
                key: cqe.user_data() as usize,
                result: cqe.result(),
                more: cqueue::more(cqe.flags()),
                buffer: cqueue::buffer_select(cqe.flags()),
            });
        }
    }

    /// The operation of a completion that will not be followed by more (its slot is freed).
    pub(crate) fn take(&mut self, key: usize) -> Option<Op> {
        self.ops.try_remove(key)
    }

    /// The operation of a completion that is followed by more (multishot): it stays.
    pub(crate) fn get(&self, key: usize) -> Option<&Op> {
        self.ops.get(key)
    }

    /// Cancels every pending eventfd read (at shutdown).
    pub(crate) fn cancel_all_wakes(&mut self) -> io::Result<()> {
        let keys: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, op)| matches!(op, Op::Wake { .. }))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.cancel(key)?;
        }
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.ops.is_empty() {
            // Operations whose completion never came: the kernel may still write into their
            // buffers after the ring closes, so they are leaked rather than freed.
            std::mem::forget(std::mem::take(&mut self.ops));
            std::mem::forget(self.provided.take());
            // Registered send buffers too: an abandoned fixed send may still read one.
            std::mem::forget(std::mem::take(&mut self.fixed));
        }
    }
}
