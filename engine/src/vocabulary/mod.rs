//! The words every room speaks: the events and messages the node hands out, its errors and why
//! each call failed, the I/O backend. They sit below the shard and the API so that a shard can
//! publish an event or fail a call without importing the API that applications call.

mod backend;
mod call_errors;
mod error;
mod event;

pub use backend::Backend;
pub(crate) use backend::choose as choose_backend;
pub use call_errors::{
    ConfigError, ConnectError, DialFailure, NodeError, NodeSendError, RequestError, ResolveError,
    StartError, TrySendError, WaitError,
};
pub use error::{Error, ErrorKind};
pub(crate) use event::Subscribers;
pub use event::{
    Event, EventFilter, EventKind, Handler, Message, Refusal, SUBSCRIPTION_BYTES_PER_SLOT,
    StreamName, Subscription,
};
