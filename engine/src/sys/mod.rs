//! The system layer: the I/O backends (io_uring, readiness), sockets, eventfd, CPU pinning. The
//! only place with `unsafe`.

pub(crate) mod bufring;
pub(crate) mod dial;
pub(crate) mod io;
pub(crate) mod op;
pub(crate) mod poll;
pub(crate) mod ring;
pub(crate) mod socket;
