//! The in-memory store's fast path for a hit's commit, kept inside the crate.
//!
//! [`BindingStore`](super::BindingStore) carries two hidden methods, `lookup_hinted` and
//! `commit_hinted`, with defaults that call `lookup` and `commit`. Their last argument
//! is a [`CrateOnly`]: a public type in this private module, so code outside the crate
//! can neither name it (and so cannot write an implementation of either method) nor make
//! one (and so cannot call them). A third-party store implements `lookup`, `commit` and
//! `clear_if` only, and the layer's calls of the hidden methods reach those through the
//! defaults; [`MemoryStore`](super::MemoryStore) overrides both.
//!
//! Outside the crate neither compiles:
//!
//! ```compile_fail
//! use tower_sticky_session::store::BindingStore;
//! use tower_sticky_session::{BindingKey, store::MemoryStore, SessionId};
//!
//! let key = BindingKey::new(None, SessionId::new("s").unwrap());
//! // The hint module is private: its token cannot be named, nor made.
//! let _ = MemoryStore::new().lookup_hinted(&key, tower_sticky_session::store::hint::CrateOnly::TOKEN);
//! ```
//!
//! ```compile_fail
//! use tower_sticky_session::store::{boxed, BindingStore, BoxStoreFuture};
//! use tower_sticky_session::{AuthId, BindingKey};
//!
//! struct Mine;
//! impl BindingStore for Mine {
//!     type LookupFuture = BoxStoreFuture<Option<AuthId>>;
//!     type CommitFuture = BoxStoreFuture<()>;
//!     type ClearFuture = BoxStoreFuture<bool>;
//!     fn lookup(&self, _: &BindingKey) -> Self::LookupFuture { boxed(async { Ok(None) }) }
//!     fn commit(&self, _: &BindingKey, _: &AuthId) -> Self::CommitFuture { boxed(async { Ok(()) }) }
//!     fn clear_if(&self, _: &BindingKey, _: &AuthId) -> Self::ClearFuture { boxed(async { Ok(false) }) }
//!     // An override must name the hint's and the token's types: they are private.
//!     fn commit_hinted(
//!         &self,
//!         _: &BindingKey,
//!         _: &AuthId,
//!         _: tower_sticky_session::store::CommitHint,
//!         _: tower_sticky_session::store::CrateOnly,
//!     ) -> Self::CommitFuture {
//!         boxed(async { Ok(()) })
//!     }
//! }
//! ```
//!
//! The token is a zero-sized value and the methods are resolved statically, as the plain
//! ones are: the layer's hit path costs the same instructions as when they were public
//! trait methods (`benches/hit_instructions.sh`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::StoreError;
use crate::types::AuthId;

/// The argument that keeps the hidden methods of `BindingStore` inside the crate.
#[derive(Clone, Copy, Debug)]
#[allow(unreachable_pub)] // Reachable only as a hidden method's argument, by design.
pub struct CrateOnly(());

impl CrateOnly {
    /// The token, for the layer's calls.
    pub(crate) const TOKEN: Self = Self(());
}

/// What a store's `lookup_hinted` learned about a binding, for the `commit_hinted` of the
/// same key: small, `Copy`, opaque. [`CommitHint::NONE`] says nothing (the commit does all
/// its work).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(unreachable_pub)] // As `CrateOnly`.
pub struct CommitHint {
    /// The store's own data (for `MemoryStore`: key digest, binding, stripe generation).
    pub(crate) a: u64,
    pub(crate) b: u64,
    pub(crate) c: u32,
    /// `false`: no hint.
    pub(crate) valid: bool,
}

impl CommitHint {
    /// No hint: a commit given it does all its work.
    pub(crate) const NONE: Self = Self {
        a: 0,
        b: 0,
        c: 0,
        valid: false,
    };
}

/// The future of `lookup_hinted`: either a store's plain lookup (no hint) or an answer
/// that is already there.
#[derive(Debug)]
#[allow(unreachable_pub)] // As `CrateOnly`.
pub struct HintedLookup<F> {
    inner: Hinted<F>,
}

type HintedOutput = Result<Option<(AuthId, CommitHint)>, StoreError>;

#[derive(Debug)]
enum Hinted<F> {
    Plain(F),
    Ready(Option<HintedOutput>),
}

impl<F> HintedLookup<F> {
    /// A plain lookup's future; it resolves with [`CommitHint::NONE`].
    pub(crate) fn plain(lookup: F) -> Self {
        Self {
            inner: Hinted::Plain(lookup),
        }
    }

    /// An answer that is already there (it resolves on the first poll).
    pub(crate) fn ready(result: HintedOutput) -> Self {
        Self {
            inner: Hinted::Ready(Some(result)),
        }
    }

    /// The plain lookup inside, if this is one (only a plain lookup can be pending).
    pub(crate) fn into_plain(self) -> Option<F> {
        match self.inner {
            Hinted::Plain(f) => Some(f),
            Hinted::Ready(_) => None,
        }
    }
}

impl<F> Future for HintedLookup<F>
where
    F: Future<Output = Result<Option<AuthId>, StoreError>> + Unpin,
{
    type Output = HintedOutput;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Hinted::Plain(f) => Pin::new(f)
                .poll(cx)
                .map(|r| r.map(|a| a.map(|a| (a, CommitHint::NONE)))),
            Hinted::Ready(r) => {
                Poll::Ready(r.take().expect("HintedLookup polled after completion"))
            }
        }
    }
}
