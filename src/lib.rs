//! Sticky session routing for multi-account API proxies.
#![doc(html_root_url = "https://docs.rs/tower-sticky-session/0.1.0")]

mod body;
mod classify;
mod core;
mod extract;
mod future;
mod layer;
mod service;
mod stats;
pub mod store;
mod types;

pub use crate::body::ResponseBody;
pub use crate::classify::{ClassifyResponse, ResponseClass, StatusClassifier};
pub use crate::extract::{
    DEFAULT_MAX_SESSION_ID_LEN, DEFAULT_SESSION_HEADER, InvalidSessionId, Redacted, SessionId,
};
pub use crate::future::ResponseFuture;
pub use crate::layer::StickySessionLayer;
pub use crate::service::StickySession;
pub use crate::stats::{ClearReason, Stats, StatsSnapshot};
#[cfg(feature = "redis")]
pub use crate::store::RedisStore;
pub use crate::store::{BindingStore, MokaStore, StoreError};
pub use crate::types::{AuthId, BindingKey, PinnedAuth, Scope, ServedBy};
