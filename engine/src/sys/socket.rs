//! Sockets and the small system calls around them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// A listening TCP socket that other shards can bind too (SO_REUSEPORT): the kernel spreads
/// incoming connections over the shards' listeners.
pub(crate) fn listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // IPv6 only: an IPv4 listener on the same port is a separate socket.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Fails with `AddrInUse` when anything listens on `addr` already (another node, another
/// process, this node's own listeners): the shards' listeners share their port with
/// SO_REUSEPORT, which would let a second node of the same user join the group silently and
/// take part of the first one's connections. A socket without SO_REUSEPORT cannot bind beside
/// a listener; SO_REUSEADDR keeps connections in TIME_WAIT from a node that just stopped from
/// refusing its restart. Port 0 needs no claim (the kernel picks a free port).
pub(crate) fn claim_port(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    match socket.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address in use: another node or process listens on this port",
        )),
        other => other,
    }
}

/// The address a socket is bound to (the real port when port 0 was asked for).
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// A TCP socket ready to be connected by io_uring.
pub(crate) fn connecting(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// Tunes an accepted or connected socket: no Nagle delay (records are already batched).
pub(crate) fn tune(fd: &OwnedFd) {
    let _ = SockRef::from(fd).set_tcp_nodelay(true);
}

/// Takes ownership of a descriptor the kernel returned (an accepted socket).
pub(crate) fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by accept (an io_uring completion result >= 0), so it is
    // an open descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A non-blocking eventfd, for waking a shard from other threads.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; a negative result is an error.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(own(fd))
}

/// Adds one to an eventfd (wakes the shard reading it).
pub(crate) fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an open descriptor. EAGAIN (counter full)
    // means a wake-up is already pending, which is all we need.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Pins the calling thread to `cpu`. Best effort: a cgroup may forbid it.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set`, which is large enough for CPU_SETSIZE cpus;
    // `cpu` is reduced modulo that size.
    unsafe { libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set) };
    // SAFETY: passes a pointer to a live, correctly sized cpu_set_t for the calling thread (0).
    let result = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes a pointer to a live, correctly sized cpu_set_t to be filled in.
    let result = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if result != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: reads one bit of a live cpu_set_t, index below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// How many descriptors this process has open (for leak checks).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// Whether this process ignores SIGPIPE (Rust's runtime sets that before `main`; a C host may
/// not). Registered-buffer sends (`WriteFixed`) cannot pass `MSG_NOSIGNAL`: a peer that resets
/// the connection during one would raise SIGPIPE, which by default kills the process, so they
/// are used only when it is ignored. Read only, never changed: the host's signals are its own.
pub(crate) fn sigpipe_ignored() -> bool {
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null `act` only reads the current disposition into `current`, which is a valid,
    // zeroed `sigaction` that outlives the call.
    let read = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), current.as_mut_ptr()) };
    if read != 0 {
        return false;
    }
    // SAFETY: `sigaction` succeeded and filled it.
    let current = unsafe { current.assume_init() };
    current.sa_sigaction == libc::SIG_IGN
}

/// Makes `fd` non-blocking (the poll backend's system calls must never wait).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number with integer arguments only; an invalid descriptor
    // is reported as EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
