//! Request/response on a stream: `Node::request` waits for the peer's answer; `Node::requests`
//! is where a node's requests on a stream arrive, each answered with `Request::respond`. The
//! messages carry a kind and a correlation id (PROTOCOL.md §7); the node matches answers to
//! requests on the shard that owns the peer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use glueberry_crypto::PeerId;

use super::handle::{Node, push_command};
use crate::channel::{Channel, Messages};
use crate::rpc;
use crate::shard::Command;
use crate::vocabulary::StreamName;
use crate::vocabulary::{NodeSendError, RequestError};

/// A request from a peer, to answer with [`Request::respond`] (or [`Request::refuse`]). A
/// request dropped without an answer leaves the peer to its timeout.
#[derive(Debug)]
pub struct Request {
    /// Who asked.
    pub peer: PeerId,
    /// On which stream.
    pub stream: StreamName,
    /// The request's bytes.
    pub data: Bytes,
    id: u64,
    node: Node,
    /// The longest an answer may wait for room (`NodeConfig::respond_timeout` after arrival).
    deadline: std::time::Instant,
}

impl Request {
    /// Sends `data` back as the response, waiting for room on the requester's stream as `send`
    /// does, but no later than `NodeConfig::respond_timeout` after the request arrived: a
    /// requester that stops taking its answers gets [`NodeSendError::TimedOut`], and a server
    /// loop that awaits this waits on it no longer than that. A loop that must never wait on
    /// one peer answers with [`Request::try_respond`].
    pub async fn respond(self, data: Bytes) -> Result<(), NodeSendError> {
        let message = rpc::encode(rpc::RESPONSE, self.id, &data);
        let route = self.node.route(self.peer, &self.stream);
        self.node.send_until(&route, message, self.deadline).await
    }

    /// Sends `data` back as the response if the requester's stream has room now; never waits.
    /// Refused (`BufferFull`) only when the requester is not taking what it was sent: its own
    /// request then times out on its side, and no other peer is kept waiting.
    pub fn try_respond(self, data: Bytes) -> Result<(), crate::TrySendError> {
        let message = rpc::encode(rpc::RESPONSE, self.id, &data);
        self.node.try_send(self.peer, &self.stream, message)
    }

    /// [`Request::refuse`] if the requester's stream has room now; never waits.
    pub fn try_refuse(self) -> Result<(), crate::TrySendError> {
        let message = rpc::encode(rpc::REFUSED, self.id, &[]);
        self.node.try_send(self.peer, &self.stream, message)
    }

    /// Tells the peer this request will not be answered: its `request` returns
    /// [`RequestError::Refused`] at once instead of waiting for its timeout. Waits for room no
    /// longer than [`Request::respond`].
    pub async fn refuse(self) -> Result<(), NodeSendError> {
        let message = rpc::encode(rpc::REFUSED, self.id, &[]);
        let route = self.node.route(self.peer, &self.stream);
        self.node.send_until(&route, message, self.deadline).await
    }
}

/// The requests peers send this node on one stream, from every shard: a `Stream` (and
/// `Unpin`) of [`Request`]s. Ends when the node stops.
#[derive(Debug)]
pub struct Requests {
    messages: Messages,
    node: Node,
}

impl Requests {
    /// The next request; `None` once the node stopped.
    pub async fn recv(&mut self) -> Option<Request> {
        futures::StreamExt::next(self).await
    }

    fn parse(&self, message: crate::Message) -> Option<Request> {
        let (kind, id, data) = rpc::decode(&message.data)?;
        (kind == rpc::REQUEST).then(|| Request {
            peer: message.peer,
            stream: message.stream,
            data,
            id,
            node: self.node.clone(),
            deadline: std::time::Instant::now() + self.node.inner.shared.respond_timeout,
        })
    }
}

impl futures::Stream for Requests {
    type Item = Request;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        loop {
            match Pin::new(&mut self.messages).poll_next(cx) {
                Poll::Ready(Some(message)) => {
                    // (The shard passes on only well-formed requests.)
                    if let Some(request) = self.parse(message) {
                        return Poll::Ready(Some(request));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Forgets a request whose caller stopped waiting (timed out, or its future was dropped).
struct Waiting<'a> {
    node: &'a Node,
    peer: PeerId,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.node.inner.shared.rpc.cancel(self.peer, self.id);
    }
}

impl Node {
    /// Sends `data` to `peer` on `stream` as a request and waits for its response, at most
    /// `timeout`. Typed failures: [`RequestError::Disconnected`] when the connection ends
    /// first, [`RequestError::Refused`] when the peer serves no requests on the stream or
    /// refuses, [`RequestError::Send`] when the peer is unknown or not Established,
    /// [`RequestError::TooManyInFlight`] past 1,024 waiting requests to one peer. Both nodes
    /// use the stream for requests only (see [`Node::requests`]).
    pub async fn request(
        &self,
        peer: PeerId,
        stream: &str,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        self.request_stream(stream, None)?;
        let (id, answer) = self.inner.shared.rpc.start(peer)?;
        let _waiting = Waiting {
            node: self,
            peer,
            id,
        };
        self.send(peer, stream, rpc::encode(rpc::REQUEST, id, &data))
            .await?;
        let timer = futures_timer::Delay::new(timeout);
        match futures::future::select(answer, timer).await {
            futures::future::Either::Left((Ok(result), _)) => result,
            // The node stopped: its shards dropped what waited.
            futures::future::Either::Left((Err(_), _)) => {
                Err(RequestError::Send(NodeSendError::Stopped))
            }
            futures::future::Either::Right(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// The requests peers send on `stream`, to answer with [`Request::respond`]. Ask before
    /// the stream opens (before [`Node::complete_handshake`]). Requests on a stream nobody
    /// serves are refused at once (the caller gets [`RequestError::Refused`]). Asking again
    /// for the same stream returns a receiver of the same requests.
    pub fn requests(&self, stream: &str) -> Result<Requests, NodeSendError> {
        let channels = self.request_stream(stream, Some(()))?;
        Ok(Requests {
            messages: Messages::new(&channels.unwrap_or_default()),
            node: self.clone(),
        })
    }

    /// Makes `name` a request stream on every shard (once): with channels for its requests if
    /// `serve`, else only for matching responses. Returns the channels when serving.
    fn request_stream(
        &self,
        name: &str,
        serve: Option<()>,
    ) -> Result<Option<Vec<Channel>>, NodeSendError> {
        let mut streams = self
            .inner
            .request_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (streams.get(name), serve) {
            (Some(Some(channels)), _) => return Ok(Some(channels.clone())),
            (Some(None), None) => return Ok(None),
            _ => {}
        }
        let channels = serve.map(|()| {
            (0..self.inner.shared.shards.len())
                .map(|_| Channel::bounded(self.inner.message_buffer))
                .collect::<Vec<_>>()
        });
        for (index, handle) in self.inner.shared.shards.iter().enumerate() {
            let command = Command::RequestOutlet {
                name: name.to_string(),
                channel: channels.as_ref().and_then(|c| c.get(index).cloned()),
            };
            push_command(handle, command)?;
        }
        streams.insert(name.to_string(), channels.clone());
        Ok(channels)
    }
}
