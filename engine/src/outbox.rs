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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use glueberry_transport::{ConnId, NodeCore, StreamId};

use crate::node::Message;

/// A message waiting for room in its destination's channel, with what releases its credit.
struct Held {
    message: Message,
    conn: ConnId,
    stream: StreamId,
}

/// One shard's channel to one destination, with the bytes in it: the channel is bounded in
/// messages (`message_buffer`) and in bytes (`message_buffer_bytes`), the second kept by the
/// shard (adding) and the receiver (subtracting as it takes messages).
#[derive(Clone)]
pub(crate) struct Channel {
    tx: async_channel::Sender<Message>,
    rx: async_channel::Receiver<Message>,
    bytes: Arc<AtomicUsize>,
}

impl Channel {
    pub(crate) fn bounded(messages: usize) -> Self {
        let (tx, rx) = async_channel::bounded(messages.max(1));
        Self {
            tx,
            rx,
            bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// No more messages go in; what is in it can still be taken.
    pub(crate) fn close(&self) {
        self.rx.close();
    }
}

/// One destination: its channel from this shard, and what waits for room in it.
struct Outlet {
    channel: Channel,
    held: VecDeque<Held>,
}

impl Outlet {
    /// Hands `message` to the channel if it has room in messages and in bytes (an empty
    /// channel takes any message); gives it back if not, `None` if nobody reads the channel.
    fn try_send(&self, message: Message, max_bytes: usize) -> Result<(), Option<Message>> {
        let len = message.data.len();
        let queued = self.channel.bytes.load(Ordering::Acquire);
        if queued > 0 && queued + len > max_bytes {
            return Err(Some(message));
        }
        self.channel.bytes.fetch_add(len, Ordering::AcqRel);
        match self.channel.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(async_channel::TrySendError::Full(message)) => {
                self.channel.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(Some(message))
            }
            Err(async_channel::TrySendError::Closed(_)) => {
                self.channel.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(None)
            }
        }
    }
}

/// A shard's destinations.
pub(crate) struct Outbox {
    /// Index 0 is the default destination ([`crate::Node::messages`]).
    outlets: Vec<Outlet>,
    by_name: HashMap<Box<str>, usize>,
    /// The destination of the last message's stream (names are shared per connection stream,
    /// so consecutive messages of one stream skip the map by a pointer comparison).
    last: Option<(Arc<str>, usize)>,
    /// Messages held, over all destinations.
    held: usize,
    /// The byte bound of each channel.
    max_bytes: usize,
}

impl Outbox {
    pub(crate) fn new(default: Channel, max_bytes: usize) -> Self {
        Self {
            outlets: vec![Outlet {
                channel: default,
                held: VecDeque::new(),
            }],
            by_name: HashMap::new(),
            last: None,
            held: 0,
            max_bytes,
        }
    }

    /// Messages of stream `name` go to `tx` from now on (replacing an earlier destination).
    pub(crate) fn add(&mut self, name: &str, channel: Channel) {
        self.last = None;
        match self.by_name.get(name) {
            Some(&index) => self.outlets[index].channel = channel,
            None => {
                self.by_name.insert(name.into(), self.outlets.len());
                self.outlets.push(Outlet {
                    channel,
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
        match outlet.try_send(message, self.max_bytes) {
            // Taken, or nobody reads this destination any more (the message is consumed).
            Ok(()) | Err(None) => core.release(conn, stream, len),
            Err(Some(message)) => {
                outlet.held.push_back(Held {
                    message,
                    conn,
                    stream,
                });
                self.held += 1;
            }
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
                match outlet.try_send(held.message, self.max_bytes) {
                    Ok(()) | Err(None) => {
                        core.release(held.conn, held.stream, len);
                        self.held -= 1;
                    }
                    Err(Some(message)) => {
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

/// One shard's channel, pinned so that it can be polled as a `Stream` from an `Unpin` owner.
type Receiver = Pin<Box<async_channel::Receiver<Message>>>;

/// Received messages: from every shard, for the default destination or for one stream. A
/// `Stream` (and `Unpin`); clones share the messages (each goes to one of them). Ends when the
/// node stops and the messages already delivered are taken.
pub struct Messages {
    receivers: Vec<(Receiver, Arc<AtomicUsize>)>,
    next: usize,
}

impl Messages {
    pub(crate) fn new(channels: &[Channel]) -> Self {
        Self {
            receivers: channels
                .iter()
                .map(|c| (Box::pin(c.rx.clone()), c.bytes.clone()))
                .collect(),
            next: 0,
        }
    }

    /// The message leaves its channel: its bytes no longer count against the channel's bound.
    fn took(bytes: &AtomicUsize, message: Message) -> Message {
        bytes.fetch_sub(message.data.len(), Ordering::AcqRel);
        message
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
            let (receiver, bytes) = &self.receivers[index];
            if let Ok(message) = receiver.try_recv() {
                self.next = (index + 1) % n;
                return Some(Self::took(bytes, message));
            }
        }
        None
    }

    /// Messages waiting in the channels.
    pub fn len(&self) -> usize {
        self.receivers.iter().map(|(r, _)| r.len()).sum()
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
                .map(|(r, bytes)| (Box::pin((**r).clone()), bytes.clone()))
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
            let (receiver, bytes) = &mut self.receivers[index];
            match receiver.as_mut().poll_next(cx) {
                Poll::Ready(Some(message)) => {
                    let message = Self::took(bytes, message);
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
