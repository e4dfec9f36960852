//! [`AccountSlot`] and the task-local functions.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::types::AuthId;

tokio::task_local! {
    /// The request whose inner future is being polled.
    pub(super) static CURRENT: AccountSlot;
}

/// Request extension: the request's pin, and where the account that served it is
/// reported. Cheap to clone; every clone is the same slot.
///
/// Inserted by [`AccountContext`](super::AccountContext). Take a clone into a task the
/// handler spawns to report from there; in the handler's own task,
/// [`report_served`](super::report_served) does the same without it.
#[derive(Clone)]
pub struct AccountSlot(Arc<Inner>);

struct Inner {
    pin: Option<AuthId>,
    hard: bool,
    served: OnceLock<AuthId>,
}

impl AccountSlot {
    pub(crate) fn new(pin: Option<AuthId>, hard: bool) -> Self {
        Self(Arc::new(Inner {
            pin,
            hard,
            served: OnceLock::new(),
        }))
    }

    /// The account the request is pinned to, if any (see
    /// [`PinnedAuth`](crate::PinnedAuth)).
    pub fn pin(&self) -> Option<&AuthId> {
        self.0.pin.as_ref()
    }

    /// Whether the pin is a hard one: only that account can serve the request (see
    /// [`HardPin`](crate::HardPin)).
    pub fn is_hard_pin(&self) -> bool {
        self.0.hard
    }

    /// Records that `account` served the request. The first report wins (a request is
    /// served once); `false` when an account was already reported.
    pub fn report(&self, account: AuthId) -> bool {
        self.0.served.set(account).is_ok()
    }

    /// The reported account.
    pub fn served(&self) -> Option<AuthId> {
        self.0.served.get().cloned()
    }
}

impl fmt::Debug for AccountSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountSlot")
            .field("pin", &self.0.pin)
            .field("hard", &self.0.hard)
            .field("served", &self.0.served.get())
            .finish()
    }
}

/// The current request's pin: the account the sticky layer (or an explicit
/// [`PinnedAuth`](crate::PinnedAuth)) pinned it to. `None` without a pin, or outside a
/// call made through [`AccountContext`](super::AccountContext) (see the
/// [module docs](super) for what "inside" means).
///
/// Use it as a strong hint: serve with that account if it can serve the request, else
/// pick normally — unless [`is_hard_pin`] says only that account can.
pub fn current_pin() -> Option<AuthId> {
    CURRENT.try_with(|slot| slot.pin().cloned()).ok().flatten()
}

/// Whether the current request's pin is a hard one (a learned `previous_response_id`).
pub fn is_hard_pin() -> bool {
    CURRENT.try_with(AccountSlot::is_hard_pin).unwrap_or(false)
}

/// Records that `account` served the current request: its response then carries
/// [`ServedBy`](crate::ServedBy) of `account` unless the handler set one itself. Call it
/// where the upstream call succeeded or failed with that account (a failure status
/// clears the binding only if it still points at the reported account). `false` outside
/// a call made through [`AccountContext`](super::AccountContext), or when an account was
/// already reported for this request.
pub fn report_served(account: impl Into<AuthId>) -> bool {
    let account = account.into();
    CURRENT
        .try_with(|slot| slot.report(account))
        .unwrap_or(false)
}
