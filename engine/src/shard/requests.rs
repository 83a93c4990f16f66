//! Messages on request streams (`Node::request`, `Node::requests`): responses are matched to
//! the requests waiting for them here, on the shard that owns the peer, and never reach the
//! application's channels.

use std::time::Instant;

use bytes::Bytes;
use glueberry_crypto::PeerId;

use super::Shard;
use super::outbox::RequestStream;
use crate::{RequestError, StreamName, rpc};

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

    /// Tells `peer` its request `id` will not be answered: nothing serves `name` here.
    fn refuse(&mut self, peer: PeerId, name: &StreamName, id: u64) {
        if let Some(stream) = self.core.stream_id(peer, name) {
            let _ = self
                .core
                .send(peer, stream, rpc::encode(rpc::REFUSED, id, &[]));
        }
    }
}
