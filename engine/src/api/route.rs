//! Routes: the application's handle on one (peer, stream), resolved once.

use std::sync::Arc;

use glueberry_crypto::PeerId;

use super::handle::Node;
use crate::route_table::RouteShared;
use crate::vocabulary::StreamName;

/// A resolved (peer, stream) to send on: see [`Node::route`].
#[derive(Clone, Debug)]
pub struct Route(pub(super) Arc<RouteShared>);

impl Route {
    /// The peer.
    pub fn peer(&self) -> PeerId {
        self.0.peer
    }

    /// The stream.
    pub fn stream(&self) -> &StreamName {
        &self.0.name
    }

    /// Messages and bytes accepted on it and not yet written.
    pub fn queued(&self) -> (u64, u64) {
        self.0.queued()
    }
}

/// What names a stream for [`Node::send`]: a `&str`, a [`StreamName`] or a [`Route`].
pub trait StreamRef {
    /// The route for `peer` on this stream.
    fn route_for(&self, node: &Node, peer: PeerId) -> Route;
}

impl StreamRef for str {
    fn route_for(&self, node: &Node, peer: PeerId) -> Route {
        node.route(peer, self)
    }
}

impl StreamRef for String {
    fn route_for(&self, node: &Node, peer: PeerId) -> Route {
        node.route(peer, self)
    }
}

impl StreamRef for StreamName {
    fn route_for(&self, node: &Node, peer: PeerId) -> Route {
        node.route(peer, self)
    }
}

/// A route names its own peer; the `peer` argument must be the same (it is not checked).
impl StreamRef for Route {
    fn route_for(&self, _node: &Node, _peer: PeerId) -> Route {
        self.clone()
    }
}
