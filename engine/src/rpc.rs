//! Request/response on a stream: the 9-byte header every message of a request stream carries
//! (PROTOCOL.md §7), and the requests this node waits on, by peer and correlation id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use glueberry_crypto::PeerId;

use crate::vocabulary::RequestError;

/// A request: the responder answers with `RESPONSE` or `REFUSED` and the same id.
pub(crate) const REQUEST: u8 = 1;
/// The answer to the request with the same id.
pub(crate) const RESPONSE: u8 = 2;
/// The request with the same id will not be answered (no responder on the stream, or the
/// responder said no).
pub(crate) const REFUSED: u8 = 3;
/// Kind (1 byte) and correlation id (8 bytes, big-endian).
pub(crate) const HEADER: usize = 9;

/// Requests in flight to one peer, at most (more are refused with `TooManyInFlight`).
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// `kind`, `id` and `body` as one message.
pub(crate) fn encode(kind: u8, id: u64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + body.len());
    out.put_u8(kind);
    out.put_u64(id);
    out.put_slice(body);
    out.freeze()
}

/// A message's kind, id and body (a slice of it, no copy); `None` if it is shorter than the
/// header or of an unknown kind.
pub(crate) fn decode(data: &Bytes) -> Option<(u8, u64, Bytes)> {
    let kind = *data.first()?;
    if !(REQUEST..=REFUSED).contains(&kind) {
        return None;
    }
    let id = u64::from_be_bytes(data.get(1..HEADER)?.try_into().ok()?);
    Some((kind, id, data.slice(HEADER..)))
}

type Reply = oneshot::Sender<Result<Bytes, RequestError>>;

/// The requests this node waits on.
#[derive(Default)]
pub(crate) struct Pending {
    waiting: Mutex<HashMap<PeerId, HashMap<u64, Reply>>>,
    next_id: AtomicU64,
}

impl Pending {
    /// A new request to `peer`: its id and where its answer will come.
    pub(crate) fn start(
        &self,
        peer: PeerId,
    ) -> Result<(u64, oneshot::Receiver<Result<Bytes, RequestError>>), RequestError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let of_peer = waiting.entry(peer).or_default();
        if of_peer.len() >= MAX_IN_FLIGHT {
            return Err(RequestError::TooManyInFlight(MAX_IN_FLIGHT));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        of_peer.insert(id, tx);
        Ok((id, rx))
    }

    /// The answer to request `id` from `peer` (ignored if nobody waits for it any more: it timed
    /// out, or the peer made the id up).
    pub(crate) fn complete(&self, peer: PeerId, id: u64, result: Result<Bytes, RequestError>) {
        let reply = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let Some(of_peer) = waiting.get_mut(&peer) else {
                return;
            };
            let reply = of_peer.remove(&id);
            if of_peer.is_empty() {
                waiting.remove(&peer);
            }
            reply
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Forgets request `id` (its caller gave up).
    pub(crate) fn cancel(&self, peer: PeerId, id: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(of_peer) = waiting.get_mut(&peer) {
            of_peer.remove(&id);
            if of_peer.is_empty() {
                waiting.remove(&peer);
            }
        }
    }

    /// Every request to `peer` fails with `Disconnected` (its connection ended).
    pub(crate) fn fail_peer(&self, peer: PeerId) {
        let of_peer = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.remove(&peer)
        };
        for (_, reply) in of_peer.into_iter().flatten() {
            let _ = reply.send(Err(RequestError::Disconnected));
        }
    }

    /// Every request fails: the node stopped.
    pub(crate) fn fail_all(&self) {
        let waiting = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *waiting)
        };
        for (_, reply) in waiting.into_values().flatten() {
            let _ = reply.send(Err(RequestError::Send(
                crate::vocabulary::NodeSendError::Stopped,
            )));
        }
    }

    /// Requests waiting, over all peers.
    pub(crate) fn len(&self) -> usize {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_junk_is_refused() {
        let message = encode(RESPONSE, 0x0102_0304_0506_0708, b"body");
        assert_eq!(&message[..HEADER], &[2, 1, 2, 3, 4, 5, 6, 7, 8]);
        let (kind, id, body) = decode(&message).unwrap();
        assert_eq!(
            (kind, id, &body[..]),
            (RESPONSE, 0x0102_0304_0506_0708, &b"body"[..])
        );
        assert!(decode(&Bytes::from_static(&[1, 0, 0])).is_none(), "short");
        assert!(
            decode(&Bytes::from_static(&[9; 9])).is_none(),
            "unknown kind"
        );
        assert!(decode(&Bytes::new()).is_none());
    }

    #[test]
    fn in_flight_is_bounded_per_peer_and_disconnect_fails_them_all() {
        let pending = Pending::default();
        let a = glueberry_crypto::Identity::from_seed(&[1; 32]).peer_id();
        let b = glueberry_crypto::Identity::from_seed(&[2; 32]).peer_id();
        let mut answers = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            answers.push(pending.start(a).unwrap().1);
        }
        assert!(matches!(
            pending.start(a),
            Err(RequestError::TooManyInFlight(MAX_IN_FLIGHT))
        ));
        assert!(pending.start(b).is_ok(), "another peer is not held up");
        pending.fail_peer(a);
        for answer in answers {
            let result = futures::executor::block_on(answer).unwrap();
            assert!(matches!(result, Err(RequestError::Disconnected)));
        }
        assert_eq!(pending.len(), 1);
    }
}
