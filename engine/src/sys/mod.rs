//! The system layer: io_uring, sockets, eventfd, CPU pinning. The only place with `unsafe`.

pub(crate) mod bufring;
pub(crate) mod dial;
pub(crate) mod ring;
pub(crate) mod socket;
