//! The readiness backend: the operations of `op.rs`, carried out with non-blocking system calls
//! when epoll (through `mio`; kqueue elsewhere) says their descriptor is ready. It runs where
//! io_uring may not: under Docker's and containerd's default seccomp profiles, with
//! `kernel.io_uring_disabled` set, on older kernels.
//!
//! An operation is tried when it is pushed, unless its descriptor is known not to be ready. If
//! the kernel says it would block, the operation waits on its descriptor, which is registered
//! edge-triggered, and is tried again when epoll reports it ready. Every result becomes a
//! [`Completion`] handed out by the next `reap`, as a ring's would be, so the shard above cannot
//! tell the backends apart. The same batching holds: a receive reads as much as the
//! connection's buffer takes, a send writes a whole buffer of records.
//!
//! A descriptor is known not to be ready after `EAGAIN` and after a short read or write (the
//! kernel signals an edge for every arrival and for room made after a short write), so a
//! connection that keeps up costs one system call per receive or send, plus the wait.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;

use super::op::{Completion, Op};

/// Connections accepted per readiness of the listener before other descriptors get a turn.
const ACCEPTS_PER_TURN: usize = 256;
/// Events taken per wait.
const EVENTS: usize = 1024;

/// An operation and the descriptor it is for.
struct Pending {
    fd: RawFd,
    op: Op,
    /// A connect already started (`EINPROGRESS`): readiness now means it finished.
    started: bool,
}

/// Whose socket a descriptor number is, and what waits on it.
#[derive(Default)]
struct FdState {
    /// The owner it is registered with epoll for (`None`: not registered). A number a new
    /// socket reuses (the old one closed, which removed it from epoll) registers again.
    owner: Option<u64>,
    /// Whether a read or write may succeed without blocking.
    readable: bool,
    writable: bool,
    /// The operation waiting for each direction.
    reader: Option<usize>,
    writer: Option<usize>,
}

/// What trying an operation came to.
enum Attempt {
    /// Finished with this result (`-errno` for an error), as a ring's completion reports it.
    Done(i32),
    /// The kernel would block: wait for readiness.
    Wait,
}

/// A shard's readiness-based backend.
pub(crate) struct Poller {
    poll: mio::Poll,
    events: Events,
    ops: Slab<Pending>,
    /// By descriptor number (descriptors are small integers).
    fds: Vec<FdState>,
    /// Completions not yet reaped.
    ready: Vec<Completion>,
    /// Descriptors to try again at the next wait without waiting (the listener after a full
    /// batch of accepts).
    again: Vec<RawFd>,
    /// Descriptors epoll reported, copied out before they are handled.
    woken: Vec<(RawFd, bool, bool)>,
    pushed: u64,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            poll: mio::Poll::new()?,
            events: Events::with_capacity(EVENTS),
            ops: Slab::with_capacity(1024),
            fds: Vec::new(),
            ready: Vec::with_capacity(1024),
            again: Vec::new(),
            woken: Vec::with_capacity(EVENTS),
            pushed: 0,
        })
    }

    /// Operations not yet completed.
    pub(crate) fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Operations pushed since the backend was made.
    pub(crate) fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Starts `op` on `fd`; returns its key. Its completion comes from a later `reap`.
    pub(crate) fn push(&mut self, fd: RawFd, op: Op) -> io::Result<usize> {
        let owner = match &op {
            Op::Accept | Op::Wake { .. } => u64::MAX,
            Op::Connect { conn, .. } | Op::Recv { conn, .. } | Op::Send { conn, .. } => conn.0,
            Op::Cancel { target } => {
                let target = *target as usize;
                let key = self.ops.insert(Pending {
                    fd: -1,
                    op,
                    started: false,
                });
                self.pushed += 1;
                let result = if self.cancel_parked(target) {
                    0
                } else {
                    -libc::ENOENT
                };
                self.complete(key, result);
                return Ok(key);
            }
            Op::RecvMulti { .. } | Op::SendFixed { .. } | Op::MsgRing => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "an io_uring operation on the poll backend",
                ));
            }
        };
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.register(fd, owner)?;
        let key = self.ops.insert(Pending {
            fd,
            op,
            started: false,
        });
        self.pushed += 1;
        let state = &self.fds[fd as usize];
        let ready = if self.ops[key].op.reads() {
            state.readable
        } else {
            state.writable
        };
        if ready {
            self.attempt(key);
        } else {
            self.park(key);
        }
        Ok(key)
    }

    /// Asks for `key` to be cancelled: an operation still waiting completes with `-ECANCELED`;
    /// one that already finished keeps its result.
    pub(crate) fn cancel(&mut self, key: usize) -> io::Result<()> {
        if !self.ops.contains(key) {
            return Ok(());
        }
        self.push(-1, Op::Cancel { target: key as u64 }).map(|_| ())
    }

    /// Cancels every waiting eventfd read (at shutdown).
    pub(crate) fn cancel_all_wakes(&mut self) -> io::Result<()> {
        let keys: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, p)| matches!(p.op, Op::Wake { .. }))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.cancel(key)?;
        }
        Ok(())
    }

    /// Forgets `fd` before it leaves this shard (handed to another shard, or closed): no more
    /// readiness from it reaches this one.
    pub(crate) fn release(&mut self, fd: RawFd) {
        let Some(state) = usize::try_from(fd).ok().and_then(|i| self.fds.get_mut(i)) else {
            return;
        };
        if state.owner.take().is_some() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        *state = FdState::default();
    }

    /// Tries what is ready now without waiting.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        self.wait(Some(Duration::ZERO))
    }

    /// Waits until something completes, or `timeout`. Returns at once if completions wait to
    /// be reaped.
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if self.ready.is_empty() && self.again.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        self.wait(timeout)
    }

    /// Moves the completions so far into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.ready);
    }

    /// The operation of a completion that will not be followed by more (its slot is freed).
    pub(crate) fn take(&mut self, key: usize) -> Option<Op> {
        self.ops.try_remove(key).map(|p| p.op)
    }

    /// The operation of a completion that is followed by more (the listener's accept).
    pub(crate) fn get(&self, key: usize) -> Option<&Op> {
        self.ops.get(key).map(|p| &p.op)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        for fd in std::mem::take(&mut self.again) {
            self.woke(fd, true, false);
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.woken.clear();
        for event in self.events.iter() {
            // An error or a hang-up makes both directions "ready": the next try reports it.
            let broken = event.is_error();
            self.woken.push((
                event.token().0 as RawFd,
                event.is_readable() || event.is_read_closed() || broken,
                event.is_writable() || event.is_write_closed() || broken,
            ));
        }
        for i in 0..self.woken.len() {
            let (fd, readable, writable) = self.woken[i];
            self.woke(fd, readable, writable);
        }
        Ok(())
    }

    /// `fd` became ready: try what waits on it.
    fn woke(&mut self, fd: RawFd, readable: bool, writable: bool) {
        let Some(state) = self.fds.get_mut(fd as usize) else {
            return;
        };
        if state.owner.is_none() {
            return;
        }
        state.readable |= readable;
        state.writable |= writable;
        let reader = if readable { state.reader.take() } else { None };
        let writer = if writable { state.writer.take() } else { None };
        for key in [reader, writer].into_iter().flatten() {
            self.attempt(key);
        }
    }

    /// Registers `fd` for `owner` unless it already is, non-blocking, both directions.
    fn register(&mut self, fd: RawFd, owner: u64) -> io::Result<()> {
        let index = fd as usize;
        if self.fds.len() <= index {
            self.fds.resize_with(index + 1, FdState::default);
        }
        if self.fds[index].owner == Some(owner) {
            return Ok(());
        }
        if self.fds[index].owner.is_some() {
            // The number was reused by another socket: the old registration went with the old
            // socket, or (a socket handed back without release) is replaced here.
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        super::socket::set_nonblocking(fd)?;
        self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.fds[index] = FdState {
            owner: Some(owner),
            readable: true,
            writable: true,
            reader: None,
            writer: None,
        };
        Ok(())
    }

    /// Tries operation `key` now.
    fn attempt(&mut self, key: usize) {
        if matches!(self.ops.get(key).map(|p| &p.op), Some(Op::Accept)) {
            return self.accept(key);
        }
        let Some(pending) = self.ops.get_mut(key) else {
            return;
        };
        let fd = pending.fd;
        let (attempt, short) = match &mut pending.op {
            Op::Recv { buf, .. } => recv(fd, buf),
            Op::Send {
                buf, start, end, ..
            } => send(fd, &buf[*start..*end]),
            Op::Wake { buf } => (read(fd, &mut buf[..]), false),
            Op::Connect { addr, .. } => {
                let first = !pending.started;
                pending.started = true;
                (connect(fd, addr, first), false)
            }
            // Not waited for (cancel completes at once; the rest are refused at push).
            _ => (Attempt::Done(-libc::EINVAL), false),
        };
        match attempt {
            Attempt::Done(result) => {
                if short {
                    // Drained (or full): the next edge says when to try again, so the next
                    // operation on it waits without a system call.
                    self.not_ready(key);
                }
                self.complete(key, result);
            }
            Attempt::Wait => {
                self.not_ready(key);
                self.park(key);
            }
        }
    }

    /// Accepts what is waiting on the listener; each connection is a completion that is
    /// followed by more.
    fn accept(&mut self, key: usize) {
        let fd = self.ops[key].fd;
        for _ in 0..ACCEPTS_PER_TURN {
            match accept(fd) {
                Ok(Some(socket)) => self.ready.push(Completion {
                    key,
                    result: socket,
                    more: true,
                    buffer: None,
                }),
                Ok(None) => {
                    self.not_ready(key);
                    self.park(key);
                    return;
                }
                // The connection was reset before it was taken: the next one.
                Err(e) if e == libc::ECONNABORTED || e == libc::EINTR => {}
                // Out of descriptors or memory: wait for the next arrival rather than spin.
                Err(_) => {
                    self.not_ready(key);
                    self.park(key);
                    return;
                }
            }
        }
        // A full batch: the rest at the next wait, after other descriptors had their turn.
        self.park(key);
        self.again.push(fd);
    }

    /// The direction of `key` would block until the next readiness.
    fn not_ready(&mut self, key: usize) {
        let pending = &self.ops[key];
        let reads = pending.op.reads();
        if let Some(state) = self.fds.get_mut(pending.fd as usize) {
            if reads {
                state.readable = false;
            } else {
                state.writable = false;
            }
        }
    }

    /// `key` waits for its descriptor.
    fn park(&mut self, key: usize) {
        let pending = &self.ops[key];
        let reads = pending.op.reads();
        if let Some(state) = self.fds.get_mut(pending.fd as usize) {
            if reads {
                state.reader = Some(key);
            } else {
                state.writer = Some(key);
            }
        }
    }

    /// Takes `target` off its descriptor if it waits there; whether it did.
    fn cancel_parked(&mut self, target: usize) -> bool {
        let Some(pending) = self.ops.get(target) else {
            return false;
        };
        let Some(state) = self.fds.get_mut(pending.fd as usize) else {
            return false;
        };
        let slot = if pending.op.reads() {
            &mut state.reader
        } else {
            &mut state.writer
        };
        if *slot != Some(target) {
            return false;
        }
        *slot = None;
        self.complete(target, -libc::ECANCELED);
        true
    }

    fn complete(&mut self, key: usize, result: i32) {
        self.ready.push(Completion {
            key,
            result,
            more: false,
            buffer: None,
        });
    }
}

impl Op {
    /// Whether the operation waits for its descriptor to be readable (otherwise writable).
    fn reads(&self) -> bool {
        matches!(
            self,
            Op::Accept | Op::Recv { .. } | Op::RecvMulti { .. } | Op::Wake { .. }
        )
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Makes a non-blocking system call (again if interrupted): its result, or `Wait`.
fn nonblocking(mut call: impl FnMut() -> isize) -> Attempt {
    loop {
        let n = call();
        if n >= 0 {
            return Attempt::Done(i32::try_from(n).unwrap_or(i32::MAX));
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Attempt::Wait,
            e => return Attempt::Done(-e),
        }
    }
}

/// Whether an attempt moved fewer bytes than asked (the socket is drained, or full).
fn short(attempt: &Attempt, asked: usize) -> bool {
    matches!(*attempt, Attempt::Done(n) if n >= 0 && (n as usize) < asked)
}

/// Receives into the spare capacity of `buf`; also whether the read was short.
fn recv(fd: RawFd, buf: &mut Vec<u8>) -> (Attempt, bool) {
    let spare = buf.spare_capacity_mut();
    let (ptr, len) = (spare.as_mut_ptr(), spare.len());
    // SAFETY: the kernel writes at most `len` bytes at `ptr`, the spare capacity of a buffer
    // this operation owns and nothing else touches; `received` marks only what it wrote as
    // initialised.
    let attempt = nonblocking(|| unsafe { libc::recv(fd, ptr.cast(), len, 0) });
    let short = short(&attempt, len);
    (attempt, short)
}

/// Sends `data` (never raising SIGPIPE); also whether the write was short.
fn send(fd: RawFd, data: &[u8]) -> (Attempt, bool) {
    // SAFETY: the kernel reads `data.len()` bytes of a live slice.
    let attempt = nonblocking(|| unsafe {
        libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL)
    });
    let short = short(&attempt, data.len());
    (attempt, short)
}

/// Reads an eventfd's counter.
fn read(fd: RawFd, buf: &mut [u8]) -> Attempt {
    // SAFETY: the kernel writes at most `buf.len()` bytes into a live, owned buffer.
    nonblocking(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Starts a connect (`first`), or learns how the one started ended.
fn connect(fd: RawFd, addr: &socket2::SockAddr, first: bool) -> Attempt {
    if first {
        // SAFETY: `addr` is a valid socket address of `addr.len()` bytes, alive for the call.
        let result = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) };
        if result == 0 {
            return Attempt::Done(0);
        }
        return match errno() {
            libc::EINPROGRESS | libc::EINTR | libc::EALREADY => Attempt::Wait,
            e => Attempt::Done(-e),
        };
    }
    let raw = BorrowedRaw(fd);
    let socket = socket2::SockRef::from(&raw);
    match socket.take_error() {
        Ok(Some(e)) => Attempt::Done(-e.raw_os_error().unwrap_or(libc::ECONNREFUSED)),
        Err(e) => Attempt::Done(-e.raw_os_error().unwrap_or(libc::EIO)),
        // No error yet: connected if it has a peer, still under way if not (a readiness
        // reported before the handshake finished).
        Ok(None) => match socket.peer_addr() {
            Ok(_) => Attempt::Done(0),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Attempt::Wait,
            Err(e) => Attempt::Done(-e.raw_os_error().unwrap_or(libc::EIO)),
        },
    }
}

/// Takes a connection from the listener `fd`: `Ok(None)` when none waits, `Err(errno)`.
fn accept(fd: RawFd) -> Result<Option<i32>, i32> {
    // SAFETY: null address pointers ask for no peer address; no memory is passed.
    let socket = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if socket >= 0 {
        return Ok(Some(socket));
    }
    match errno() {
        libc::EAGAIN => Ok(None),
        e => Err(e),
    }
}

/// A descriptor borrowed for a `SockRef`.
struct BorrowedRaw(RawFd);

impl std::os::fd::AsFd for BorrowedRaw {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to an operation in flight, whose socket the shard keeps
        // open until the operation's completion.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}
