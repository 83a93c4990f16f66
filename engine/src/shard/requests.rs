//! Messages on request streams (`Node::request`, `Node::requests`): responses are matched to
//! the requests waiting for them here, on the shard that owns the peer, and never reach the
//! application's channels.

use std::time::Instant;

use bytes::Bytes;
use glueberry_crypto::PeerId;

use super::Shard;
use super::outbox::RequestStream;
use crate::rpc;
use crate::vocabulary::{RequestError, StreamName};

impl Shard {
    /// A message on a request stream. A response or refusal completes its request; a request
    /// on a stream this node does not serve is refused; a message without the request header
    /// is dropped. Returns whether the message was taken here (otherwise it is a request for
    /// the application).
    pub(super) fn take_rpc(
        &mut self,
        kind: RequestStream,
        peer: PeerId,
        name: &StreamName,
        data: &Bytes,
    ) -> bool {
        match rpc::decode(data) {
            Some((rpc::RESPONSE, id, body)) => {
                self.shared.rpc.complete(peer, id, Ok(body));
                true
            }
            Some((rpc::REFUSED, id, _)) => {
                self.shared
                    .rpc
                    .complete(peer, id, Err(RequestError::Refused));
                true
            }
            Some((_, id, _)) if kind == RequestStream::Call => {
                self.refuse(peer, name, id);
                true
            }
            Some(_) => false,
            None => {
                if let Some(suppressed) = self.peer_warnings.allow(Instant::now()) {
                    tracing::warn!(
                        peer = %peer,
                        stream = %name,
                        suppressed,
                        "a message without the request header on a request stream: dropped"
                    );
                }
                true
            }
        }
    }

    /// Tells `peer` its request `id` will not be answered: nothing serves `name` here. The
    /// refusal takes room on the stream's route like any message we send (it is given back
    /// when the peer confirms it), so refusals count against the peer's budget and the node's;
    /// with no room (the peer is not taking what we send) it is not sent, and the peer's own
    /// request times out.
    fn refuse(&mut self, peer: PeerId, name: &StreamName, id: u64) {
        let Some(stream) = self.core.stream_id(peer, name) else {
            return;
        };
        let refusal = rpc::encode(rpc::REFUSED, id, &[]);
        let Some(route) = self.route_named(peer, name).cloned() else {
            return;
        };
        if !route.try_reserve(1, refusal.len()) {
            return;
        }
        let len = refusal.len() as u64;
        if self.core.send(peer, stream, refusal).is_err() {
            route.release(1, len);
        }
    }
}
