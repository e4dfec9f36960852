//! The binding's decision table, as one pure function: [`decide`].
//!
//! The response future asks it about the inner service's answer (an error, or the
//! response head) and the body about each frame it yields until the first data frame;
//! both only carry out the [`Action`] it returns (the store operation, the span's
//! outcome, the body's next state). It is the table in the [crate docs](crate), row by
//! row; two rows need no decision at all: after its first data frame the body is a
//! pass-through (a later error keeps the binding), and dropping a future or a body
//! before anything was decided runs no code for the binding.

use crate::classify::ResponseClass;
use crate::stats::ClearReason;

/// What happened to a request with a session, as far as its binding is concerned.
/// `A` is an account (`&AuthId` in the layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen<A> {
    /// The inner service returned an error.
    InnerError,
    /// Account `A` accepted an upgrade (`101`, or a 2xx to a `CONNECT`, with
    /// `ServedBy`). The classifier is not asked: no body will ever come through this
    /// response.
    Upgraded(A),
    /// The response head: the classifier's verdict and, for a success, whether its body
    /// is known to carry no data (a response to `HEAD`, 204, 304, `Content-Length: 0`, a
    /// body whose `is_end_stream()` is already true).
    Head {
        class: ResponseClass,
        known_empty: bool,
    },
    /// What the body yielded while the binding awaited its first data frame.
    Body(Polled),
}

/// What a body's `poll_frame` gave before its first data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Polled {
    /// A data frame with at least one byte: the first chunk.
    Data,
    /// An empty data frame; `end`: the body reports its end right after it (a server
    /// may never poll it again).
    Empty { end: bool },
    /// Trailers: they end the stream.
    Trailers,
    /// The end of the stream.
    End,
    /// An error.
    Error,
}

/// What to do with the binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action<A> {
    /// Commit the binding to the account (before the response, or the frame, is handed
    /// on).
    Commit(A),
    /// Compare-and-delete: remove the binding if it still points at the account.
    Clear(A, ClearReason),
    /// Wait for the body's first data frame, then ask again; the account is the one a
    /// commit would go to.
    AwaitFirstChunk(A),
    /// Leave the binding alone: none is created, an existing one is kept.
    Keep,
}

/// The decision table. `served`: the account the inner service reported
/// ([`ServedBy`](crate::ServedBy)); `pinned`: the account the request was pinned to;
/// `blame_unserved`: [`StickySessionLayer::blame_unserved_failures`](crate::StickySessionLayer::blame_unserved_failures)
/// (a failure that names no account, and an inner error, are the pinned account's).
#[inline]
pub(crate) fn decide<A: Copy>(
    seen: Seen<A>,
    served: Option<A>,
    pinned: Option<A>,
    blame_unserved: bool,
) -> Action<A> {
    // The account a failure that names none is blamed on.
    let unserved = pinned.filter(|_| blame_unserved);
    let clear = |account: Option<A>, reason| match account {
        Some(account) => Action::Clear(account, reason),
        None => Action::Keep,
    };
    match seen {
        Seen::InnerError => clear(unserved, ClearReason::InnerError),
        Seen::Upgraded(account) => Action::Commit(account),
        Seen::Head { class, known_empty } => match (class, served) {
            (ResponseClass::Failure, _) => clear(served.or(unserved), ClearReason::FailureStatus),
            (ResponseClass::Success, Some(served)) if known_empty => Action::Commit(served),
            (ResponseClass::Success, Some(served)) => Action::AwaitFirstChunk(served),
            // A success nobody reports having served commits nothing.
            (ResponseClass::Success, None) | (ResponseClass::Neutral, _) => Action::Keep,
        },
        Seen::Body(polled) => match (polled, served) {
            (_, None) => Action::Keep,
            (Polled::Data, Some(served)) => Action::Commit(served),
            // Empty data frames are not the first chunk.
            (Polled::Empty { end: false }, Some(served)) => Action::AwaitFirstChunk(served),
            (Polled::Empty { end: true } | Polled::Trailers | Polled::End, Some(served)) => {
                Action::Clear(served, ClearReason::EmptyStream)
            }
            (Polled::Error, Some(served)) => Action::Clear(served, ClearReason::StreamError),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClearReason::{EmptyStream, FailureStatus, InnerError, StreamError};
    use ResponseClass::{Failure, Neutral, Success};

    const S: Option<&str> = Some("served");
    const P: Option<&str> = Some("pinned");
    const NONE: Option<&str> = None;

    fn head(class: ResponseClass) -> Seen<&'static str> {
        Seen::Head {
            class,
            known_empty: false,
        }
    }

    fn empty_head(class: ResponseClass) -> Seen<&'static str> {
        Seen::Head {
            class,
            known_empty: true,
        }
    }

    /// `(row, seen, served, pinned, blame_unserved, action)`.
    type Row = (
        &'static str,
        Seen<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        bool,
        Action<&'static str>,
    );

    /// Every row of the crate docs' table (in its order), each with the inputs that
    /// change its answer.
    #[test]
    fn decision_table_matches_the_crate_docs() {
        use Action::{AwaitFirstChunk, Clear, Commit, Keep};
        #[rustfmt::skip]
        let table: &[Row] = &[
            // response classified as failure: compare-and-delete of ServedBy, else the
            // pinned account (with blame_unserved), else nothing.
            ("failure, served",                      head(Failure), S,    P,    true,  Clear("served", FailureStatus)),
            ("failure, served, not pinned",          head(Failure), S,    NONE, true,  Clear("served", FailureStatus)),
            ("failure, served, blame off",           head(Failure), S,    P,    false, Clear("served", FailureStatus)),
            ("failure, unserved: the pinned one",    head(Failure), NONE, P,    true,  Clear("pinned", FailureStatus)),
            ("failure, unserved, blame off",         head(Failure), NONE, P,    false, Keep),
            ("failure, unserved, not pinned",        head(Failure), NONE, NONE, true,  Keep),
            ("failure, known empty",                 empty_head(Failure), S, P, true,  Clear("served", FailureStatus)),
            // inner service returns Err: compare-and-delete of the pinned account.
            ("inner error, pinned",                  Seen::InnerError, NONE, P,    true,  Clear("pinned", InnerError)),
            ("inner error, pinned, blame off",       Seen::InnerError, NONE, P,    false, Keep),
            ("inner error, not pinned",              Seen::InnerError, NONE, NONE, true,  Keep),
            // success with a body: wait for the first data frame, which commits.
            ("success, served: await first chunk",   head(Success), S,    P,    true,  AwaitFirstChunk("served")),
            ("success, served, not pinned",          head(Success), S,    NONE, false, AwaitFirstChunk("served")),
            ("success, unserved: nothing committed", head(Success), NONE, P,    true,  Keep),
            ("first non-empty data frame commits",   Seen::Body(Polled::Data), S, P, true, Commit("served")),
            ("empty data frame is not the first",    Seen::Body(Polled::Empty { end: false }), S, P, true, AwaitFirstChunk("served")),
            // success, body ends without a data frame.
            ("end of stream before data",            Seen::Body(Polled::End), S, P, true, Clear("served", EmptyStream)),
            ("trailers before data",                 Seen::Body(Polled::Trailers), S, P, true, Clear("served", EmptyStream)),
            ("empty data frame, then the end",       Seen::Body(Polled::Empty { end: true }), S, P, true, Clear("served", EmptyStream)),
            // success, body errors before the first data frame.
            ("body error before data",               Seen::Body(Polled::Error), S, P, true, Clear("served", StreamError)),
            // (body errors after the first data frame; body dropped before it: no
            // decision is asked, see the module docs; tests/layer/behaviour.rs
            // error_after_first_frame_keeps_binding, drop_before_first_frame_neither_commits_nor_clears.)
            // success known to carry no body: committed at once.
            ("success, known empty",                 empty_head(Success), S,    P,    true,  Commit("served")),
            ("success, known empty, not pinned",     empty_head(Success), S,    NONE, true,  Commit("served")),
            ("success, known empty, unserved",       empty_head(Success), NONE, P,    true,  Keep),
            // other responses: nothing.
            ("neutral, served",                      head(Neutral), S,    P,    true,  Keep),
            ("neutral, unserved",                    head(Neutral), NONE, P,    true,  Keep),
            ("neutral, known empty",                 empty_head(Neutral), S, P, true,  Keep),
            // an accepted upgrade: committed at once to the account that accepted it.
            ("upgrade accepted",                     Seen::Upgraded("upgraded"), S,    P, true,  Commit("upgraded")),
            ("upgrade accepted, blame off",          Seen::Upgraded("upgraded"), NONE, P, false, Commit("upgraded")),
        ];
        for &(row, seen, served, pinned, blame, expected) in table {
            assert_eq!(decide(seen, served, pinned, blame), expected, "{row}");
        }
    }

    /// The body asks only with the account it awaits; without one it never acts.
    #[test]
    fn body_without_an_account_keeps_the_binding() {
        for polled in [
            Polled::Data,
            Polled::Empty { end: false },
            Polled::Empty { end: true },
            Polled::Trailers,
            Polled::End,
            Polled::Error,
        ] {
            assert_eq!(
                decide(Seen::Body(polled), NONE, P, true),
                Action::Keep,
                "{polled:?}"
            );
        }
    }
}
