//! Delivery of received messages to the application, per shard and per stream.
//!
//! Each shard has its own channel for every destination (the default one behind
//! [`Node::messages`](crate::Node::messages), and one per stream the application asked for with
//! [`Node::messages_on`](crate::Node::messages_on)); the application's [`Messages`] reads the
//! channels of every shard. So no channel, lock or counter is written by two shards per message.
//!
//! When a destination's channel is full, the shard holds that destination's messages, in order,
//! and returns no credit for them: the peer's stream window stops that stream at the sender
//! while every other stream — of this peer and of the others — keeps flowing. What the shard
//! holds is bounded by the windows of the streams it holds for.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use glueberry_transport::{ConnId, NodeCore, StreamId};

use crate::node::Message;

/// A message waiting for room in its destination's channel, with what releases its credit.
struct Held {
    message: Message,
    conn: ConnId,
    stream: StreamId,
}

/// One destination: its channel from this shard, and what waits for room in it.
struct Outlet {
    tx: async_channel::Sender<Message>,
    held: VecDeque<Held>,
}

/// A shard's destinations.
pub(crate) struct Outbox {
    /// Index 0 is the default destination ([`crate::Node::messages`]).
    outlets: Vec<Outlet>,
    by_name: HashMap<Box<str>, usize>,
    /// The destination of the last message's stream (names are shared per connection stream,
    /// so consecutive messages of one stream skip the map by a pointer comparison).
    last: Option<(Arc<str>, usize)>,
    /// Messages held over all destinations.
    held: usize,
}

impl Outbox {
    pub(crate) fn new(default: async_channel::Sender<Message>) -> Self {
        Self {
            outlets: vec![Outlet {
                tx: default,
                held: VecDeque::new(),
            }],
            by_name: HashMap::new(),
            last: None,
            held: 0,
        }
    }

    /// Messages of stream `name` go to `tx` from now on (replacing an earlier destination).
    pub(crate) fn add(&mut self, name: &str, tx: async_channel::Sender<Message>) {
        self.last = None;
        match self.by_name.get(name) {
            Some(&index) => self.outlets[index].tx = tx,
            None => {
                self.by_name.insert(name.into(), self.outlets.len());
                self.outlets.push(Outlet {
                    tx,
                    held: VecDeque::new(),
                });
            }
        }
    }

    fn outlet_of(&mut self, name: &Arc<str>) -> usize {
        if let Some((last, index)) = &self.last
            && Arc::ptr_eq(last, name)
        {
            return *index;
        }
        let index = self.by_name.get(&**name).copied().unwrap_or(0);
        self.last = Some((name.clone(), index));
        index
    }

    /// Hands a message to its destination, or holds it (behind the ones already held there)
    /// if the channel is full. Its credit goes back to the peer once the application has it.
    pub(crate) fn deliver(
        &mut self,
        core: &mut NodeCore,
        name: &Arc<str>,
        message: Message,
        conn: ConnId,
        stream: StreamId,
    ) {
        let index = self.outlet_of(name);
        let outlet = &mut self.outlets[index];
        if !outlet.held.is_empty() {
            outlet.held.push_back(Held {
                message,
                conn,
                stream,
            });
            self.held += 1;
            return;
        }
        let len = message.data.len();
        match outlet.tx.try_send(message) {
            Ok(()) => core.release(conn, stream, len),
            Err(async_channel::TrySendError::Full(message)) => {
                outlet.held.push_back(Held {
                    message,
                    conn,
                    stream,
                });
                self.held += 1;
            }
            // Nobody reads this destination any more: the message is consumed.
            Err(async_channel::TrySendError::Closed(_)) => core.release(conn, stream, len),
        }
    }

    /// Tries again to hand over held messages, in order per destination.
    pub(crate) fn retry(&mut self, core: &mut NodeCore) {
        if self.held == 0 {
            return;
        }
        for outlet in &mut self.outlets {
            while let Some(held) = outlet.held.pop_front() {
                let len = held.message.data.len();
                match outlet.tx.try_send(held.message) {
                    Ok(()) | Err(async_channel::TrySendError::Closed(_)) => {
                        core.release(held.conn, held.stream, len);
                        self.held -= 1;
                    }
                    Err(async_channel::TrySendError::Full(message)) => {
                        outlet.held.push_front(Held { message, ..held });
                        break;
                    }
                }
            }
        }
    }

    /// Whether messages wait for room (the shard then looks again soon: the application
    /// reading a channel does not wake it).
    pub(crate) fn is_holding(&self) -> bool {
        self.held > 0
    }
}

/// Received messages: from every shard, for the default destination or for one stream. A
/// `Stream` (and `Unpin`); clones share the messages (each goes to one of them). Ends when the
/// node stops and the messages already delivered are taken.
pub struct Messages {
    receivers: Vec<Pin<Box<async_channel::Receiver<Message>>>>,
    next: usize,
}

impl Messages {
    pub(crate) fn new(receivers: &[async_channel::Receiver<Message>]) -> Self {
        Self {
            receivers: receivers.iter().map(|r| Box::pin(r.clone())).collect(),
            next: 0,
        }
    }

    /// The next message; `None` once the node stopped and none is left.
    pub async fn recv(&mut self) -> Option<Message> {
        futures::StreamExt::next(self).await
    }

    /// The next message, blocking the thread (for callers outside async code).
    pub fn recv_blocking(&mut self) -> Option<Message> {
        futures::executor::block_on(self.recv())
    }

    /// The next message if one is there.
    pub fn try_recv(&mut self) -> Option<Message> {
        let n = self.receivers.len();
        for i in 0..n {
            let index = (self.next + i) % n;
            if let Ok(message) = self.receivers[index].try_recv() {
                self.next = (index + 1) % n;
                return Some(message);
            }
        }
        None
    }

    /// Messages waiting in the channels.
    pub fn len(&self) -> usize {
        self.receivers.iter().map(|r| r.len()).sum()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for Messages {
    fn clone(&self) -> Self {
        Self {
            receivers: self
                .receivers
                .iter()
                .map(|r| Box::pin((**r).clone()))
                .collect(),
            next: 0,
        }
    }
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("shards", &self.receivers.len())
            .field("waiting", &self.len())
            .finish()
    }
}

impl futures::Stream for Messages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let n = self.receivers.len();
        let start = self.next;
        let mut ended = 0;
        for i in 0..n {
            let index = (start + i) % n;
            match self.receivers[index].as_mut().poll_next(cx) {
                Poll::Ready(Some(message)) => {
                    self.next = (index + 1) % n;
                    return Poll::Ready(Some(message));
                }
                Poll::Ready(None) => ended += 1,
                Poll::Pending => {}
            }
        }
        if ended == n {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
