//! How a shard makes an outbound connection when it does not dial TCP itself: the test network
//! (`crate::testing`) installs a dialer that returns one end of an in-memory pipe.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Makes a node's outbound connections in place of TCP.
pub(crate) trait Dialer: Send + Sync {
    /// A connected socket to `addr`, or why not.
    fn dial(&self, addr: SocketAddr) -> io::Result<OwnedFd>;
}
