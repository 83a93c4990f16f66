//! The bounded queue from application threads (and other shards) to a shard.
//!
//! Senders that find it full wait, and are woken **in batches**: the shard signals space only
//! once it has drained the queue to half its capacity, not after every message it takes (which
//! is what a general-purpose channel does, and costs a cross-core wake-up per message). The
//! capacity is the senders' credit; the shard returns half of it at a time.
//!
//! Control commands (connect, disconnect, complete the handshake, ...) go in the same queue as
//! messages, so that a thread's order is kept — except when it is full: then they wait in a
//! small queue of their own (`CONTROL_BACKLOG`), taken once the messages before them are, and
//! messages are refused until it is empty. A queue full of messages never refuses a connect,
//! and a message push costs no more than before (no length check on the shared queue).

use std::sync::atomic::{AtomicBool, Ordering};

use concurrent_queue::{ConcurrentQueue, PushError};
use event_listener::Event;

/// Control commands that may wait behind a full queue.
const CONTROL_BACKLOG: usize = 256;

/// A bounded multi-producer queue with one consumer (the shard).
pub(crate) struct CommandQueue<T> {
    queue: ConcurrentQueue<T>,
    /// Control commands that found `queue` full, in order; taken after everything in `queue`.
    backlog: ConcurrentQueue<T>,
    capacity: usize,
    space: Event,
    waiting: AtomicBool,
}

/// Why a push failed.
pub(crate) enum Refused<T> {
    Full(T),
    Closed(T),
}

/// A full command queue refuses as `BufferFull`; a closed one (the node stopped) as `Stopped`.
impl<T> From<Refused<T>> for crate::vocabulary::NodeSendError {
    fn from(refused: Refused<T>) -> Self {
        match refused {
            Refused::Full(_) => Self::BufferFull,
            Refused::Closed(_) => Self::Stopped,
        }
    }
}

impl<T> CommandQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        Self {
            queue: ConcurrentQueue::bounded(capacity),
            backlog: ConcurrentQueue::bounded(CONTROL_BACKLOG),
            capacity,
            space: Event::new(),
            waiting: AtomicBool::new(false),
        }
    }

    /// Pushes a message without waiting.
    pub(crate) fn try_push(&self, item: T) -> Result<(), Refused<T>> {
        // Control commands are waiting behind a full queue: messages go after them.
        if !self.backlog.is_empty() {
            return Err(Refused::Full(item));
        }
        self.queue.push(item).map_err(|e| match e {
            PushError::Full(item) => Refused::Full(item),
            PushError::Closed(item) => Refused::Closed(item),
        })
    }

    /// Pushes a control command without waiting: refused only when the backlog is full too.
    pub(crate) fn try_push_control(&self, item: T) -> Result<(), Refused<T>> {
        let item = if self.backlog.is_empty() {
            match self.queue.push(item) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(item)) => return Err(Refused::Closed(item)),
                Err(PushError::Full(item)) => item,
            }
        } else {
            item
        };
        self.backlog.push(item).map_err(|e| match e {
            PushError::Full(item) => Refused::Full(item),
            PushError::Closed(item) => Refused::Closed(item),
        })
    }

    /// Pushes, waiting while the queue is full. `Err` gives the item back if the queue closed.
    pub(crate) async fn push(&self, mut item: T) -> Result<(), T> {
        loop {
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(back)) => return Err(back),
                Err(Refused::Full(back)) => item = back,
            }
            let listener = self.space.listen();
            self.waiting.store(true, Ordering::SeqCst);
            // The shard may have drained between the failed push and `listen`: try once more.
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(back)) => return Err(back),
                Err(Refused::Full(back)) => item = back,
            }
            listener.await;
        }
    }

    /// Takes the next item (the shard).
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.pop().or_else(|_| self.backlog.pop()).ok()
    }

    /// Called by the shard after it took a batch: wakes waiting senders once the queue is at
    /// most half full.
    pub(crate) fn release_space(&self) {
        if self.waiting.load(Ordering::SeqCst) && self.queue.len() <= self.capacity / 2 {
            self.waiting.store(false, Ordering::SeqCst);
            self.space.notify(usize::MAX);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.backlog.is_empty()
    }

    /// Refuses further pushes and wakes every waiting sender (the node is stopping).
    pub(crate) fn close(&self) {
        self.queue.close();
        self.backlog.close();
        self.space.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_queue_refuses_then_senders_wake_in_a_batch() {
        let q = Arc::new(CommandQueue::new(4));
        for i in 0..4 {
            assert!(q.try_push(i).is_ok());
        }
        assert!(matches!(q.try_push(9), Err(Refused::Full(9))));
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || futures::executor::block_on(q.push(5)))
        };
        // Let it find the queue full and park.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!sender.is_finished());
        // One pop leaves it 3/4 full: no wake-up yet, the parked sender stays blocked.
        assert_eq!(q.pop(), Some(0));
        q.release_space();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!sender.is_finished());
        // Half empty: the sender is released.
        assert_eq!(q.pop(), Some(1));
        q.release_space();
        assert!(sender.join().expect("join").is_ok());
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(2), Some(3), Some(5)));
        q.close();
        assert!(matches!(q.try_push(1), Err(Refused::Closed(1))));
    }

    #[test]
    fn a_queue_full_of_messages_still_takes_control_commands_in_order() {
        let q = CommandQueue::new(4);
        for i in 0..4 {
            assert!(q.try_push(i).is_ok());
        }
        assert!(matches!(q.try_push(4), Err(Refused::Full(4))));
        assert!(
            q.try_push_control(100).is_ok(),
            "control refused by messages"
        );
        let order: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 100]);
        // Full of messages: control waits in the backlog, messages wait for it.
        for i in 0..4 {
            assert!(q.try_push(i).is_ok());
        }
        assert!(q.try_push_control(100).is_ok());
        assert_eq!(q.pop(), Some(0));
        assert!(
            matches!(q.try_push(5), Err(Refused::Full(5))),
            "a message overtook control"
        );
        let order: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![1, 2, 3, 100]);
        assert!(q.try_push(5).is_ok());
        assert_eq!(q.pop(), Some(5));
        for i in 0..4 {
            assert!(q.try_push(i).is_ok());
        }
        for i in 0..CONTROL_BACKLOG as i32 {
            assert!(q.try_push_control(i).is_ok());
        }
        assert!(matches!(q.try_push_control(-1), Err(Refused::Full(-1))));
    }
}
