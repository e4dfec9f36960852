//! Property test: random interleavings of requests against a model of the behaviour table
//! in the crate docs.
//!
//! Each case is a sequence of operations over a few in-flight request slots: start a
//! request (valid, invalid or no session; a scope; maybe an explicit pin; a status, the
//! account that served it, a streaming or known-empty body, or an inner error), feed one
//! frame to a request's body (data, empty data, trailers, error, end; trailers are a
//! body's last frame, so the stream ends right after them), or drop a request's body. The
//! same operations drive a straightforward model — a `HashMap` from `(scope, session)` to
//! account that applies the table — and after every operation the
//! store must hold exactly the model's bindings, the inner service must have seen exactly
//! the pin the model predicts, every frame must come out as it went in, and the layer's
//! commit and clear counters must match the model's.
//!
//! Everything is polled with `now_or_never` (the in-memory store answers at once), so an
//! interleaving is a deterministic sequence of steps and a failing case shrinks well.
//! CI runs proptest's default 256 cases; `PROPTEST_CASES=10000 cargo test --release
//! --test reliability model::` (see `scripts/soak.sh`) runs more.

use crate::support::scripted;

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Request};
use http_body::Frame;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::{Service, ServiceExt};
use tower_sticky_session::store::MemoryStore;
use tower_sticky_session::*;

use scripted::*;

const SESSIONS: [&str; 3] = ["sess-0", "sess-1", "sess-2"];
const SCOPES: [Option<&str>; 3] = [None, Some("openai"), Some("anthropic")];
const ACCOUNTS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];
const SLOTS: usize = 4;
const STATUSES: [u16; 10] = [200, 201, 204, 304, 400, 404, 429, 500, 502, 503];

#[derive(Clone, Copy, Debug)]
enum Sess {
    Valid(usize),
    /// A header that is present but invalid (a space in it).
    Invalid,
    /// No session header.
    Absent,
}

#[derive(Clone, Copy, Debug)]
enum Served {
    /// The account the request was pinned to (account 0 if it was not pinned).
    Pinned,
    Account(usize),
    /// No `ServedBy` on the response.
    Absent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    /// Channel-fed: frames come from `Op::Frame`.
    Streaming,
    /// `is_end_stream()` from the start.
    KnownEmpty,
}

#[derive(Clone, Copy, Debug)]
enum ReplyKind {
    Response {
        status: u16,
        served: Served,
        body: BodyKind,
    },
    InnerError,
}

#[derive(Clone, Copy, Debug)]
enum FrameKind {
    Data,
    EmptyData,
    Trailers,
    Error,
    End,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Start {
        slot: usize,
        sess: Sess,
        scope: usize,
        explicit_pin: Option<usize>,
        reply: ReplyKind,
    },
    Frame {
        slot: usize,
        kind: FrameKind,
    },
    Drop {
        slot: usize,
    },
}

fn sess() -> impl Strategy<Value = Sess> {
    prop_oneof![
        8 => (0..SESSIONS.len()).prop_map(Sess::Valid),
        1 => Just(Sess::Invalid),
        1 => Just(Sess::Absent),
    ]
}

fn served() -> impl Strategy<Value = Served> {
    prop_oneof![
        4 => Just(Served::Pinned),
        4 => (0..ACCOUNTS.len()).prop_map(Served::Account),
        1 => Just(Served::Absent),
    ]
}

fn reply() -> impl Strategy<Value = ReplyKind> {
    prop_oneof![
        9 => (
            proptest::sample::select(&STATUSES[..]),
            served(),
            prop_oneof![4 => Just(BodyKind::Streaming), 1 => Just(BodyKind::KnownEmpty)],
        )
            .prop_map(|(status, served, body)| ReplyKind::Response { status, served, body }),
        1 => Just(ReplyKind::InnerError),
    ]
}

fn frame_kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        5 => Just(FrameKind::Data),
        2 => Just(FrameKind::EmptyData),
        1 => Just(FrameKind::Trailers),
        1 => Just(FrameKind::Error),
        2 => Just(FrameKind::End),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            0..SLOTS,
            sess(),
            0..SCOPES.len(),
            proptest::option::weighted(0.2, 0..ACCOUNTS.len()),
            reply(),
        )
            .prop_map(|(slot, sess, scope, explicit_pin, reply)| Op::Start {
                slot,
                sess,
                scope,
                explicit_pin,
                reply,
            }),
        5 => (0..SLOTS, frame_kind()).prop_map(|(slot, kind)| Op::Frame { slot, kind }),
        1 => (0..SLOTS).prop_map(|slot| Op::Drop { slot }),
    ]
}

/// The behaviour table in the crate docs, over a plain map.
#[derive(Default)]
struct Model {
    bindings: HashMap<(usize, usize), usize>,
    commits: u64,
    cleared: u64,
}

impl Model {
    fn commit(&mut self, k: (usize, usize), account: usize) {
        self.bindings.insert(k, account);
        self.commits += 1;
    }

    /// Compare-and-delete.
    fn clear_if(&mut self, k: (usize, usize), account: usize) {
        if self.bindings.get(&k) == Some(&account) {
            self.bindings.remove(&k);
            self.cleared += 1;
        }
    }
}

/// The model's view of one in-flight response body.
enum Watch {
    /// Success with `ServedBy`: commit on the first data frame, clear on a premature end.
    AwaitFirst { k: (usize, usize), served: usize },
    /// Nothing left to decide.
    Passthrough,
}

struct InFlight {
    body: ResponseBody<TestBody>,
    tx: Option<Frames>,
    watch: Watch,
}

fn class(status: u16) -> ResponseClass {
    StatusClassifier::new().classify(
        http::StatusCode::from_u16(status).unwrap(),
        &HeaderMap::new(),
    )
}

fn auth(i: usize) -> AuthId {
    AuthId::from(ACCOUNTS[i])
}

fn account_index(a: &AuthId) -> usize {
    ACCOUNTS
        .iter()
        .position(|n| *n == a.as_str())
        .expect("a known account")
}

struct Harness {
    svc: StickySession<Scripted>,
    store: MemoryStore,
    stats: Stats,
    model: Model,
    slots: Vec<Option<InFlight>>,
}

impl Harness {
    fn new() -> Self {
        // Far more room than the 9 keys the cases use: eviction never interferes.
        let store = MemoryStore::builder().max_bindings(10_000).build();
        let layer = StickySessionLayer::with_store(store.clone()).scope_fn(scope_from_header);
        Self {
            svc: tower::Layer::layer(&layer, Scripted),
            stats: layer.stats(),
            store,
            model: Model::default(),
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }

    fn check_store(&self) -> Result<(), TestCaseError> {
        for (si, session) in SESSIONS.iter().enumerate() {
            for (ci, scope) in SCOPES.iter().enumerate() {
                let actual = self.store.get(&key(*scope, session)).map(|b| b.auth);
                let expected = self.model.bindings.get(&(ci, si)).map(|&a| auth(a));
                prop_assert_eq!(actual, expected, "binding of scope {} session {}", ci, si);
            }
        }
        let s = self.stats.snapshot();
        prop_assert_eq!(s.commits, self.model.commits, "commit count");
        prop_assert_eq!(s.cleared, self.model.cleared, "clear count");
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Start {
                slot,
                sess,
                scope,
                explicit_pin,
                reply,
            } => self.start(slot, sess, scope, explicit_pin, reply),
            Op::Frame { slot, kind } => self.frame(slot, kind),
            Op::Drop { slot } => {
                // The client went away: nothing happens to the binding.
                self.slots[slot] = None;
                Ok(())
            }
        }
    }

    fn start(
        &mut self,
        slot: usize,
        sess: Sess,
        scope: usize,
        explicit_pin: Option<usize>,
        reply: ReplyKind,
    ) -> Result<(), TestCaseError> {
        // A new request in an occupied slot: the old one's client goes away first.
        self.slots[slot] = None;

        let mut req = match sess {
            Sess::Valid(i) => request(SCOPES[scope], SESSIONS[i]),
            Sess::Invalid => request(SCOPES[scope], "has space"),
            Sess::Absent => Request::new(()),
        };
        if let Some(p) = explicit_pin {
            req.extensions_mut().insert(PinnedAuth(auth(p)));
        }
        let tracked_key = match sess {
            Sess::Valid(i) => Some((scope, i)),
            _ => None,
        };
        // The pin the inner service must see: an explicit pin always wins; otherwise
        // the store's binding (only for a valid session).
        let expected_pin =
            explicit_pin.or_else(|| tracked_key.and_then(|k| self.model.bindings.get(&k).copied()));

        let (answer, tx, served_idx) = match reply {
            ReplyKind::InnerError => (Err(io::Error::other("inner failed")), None, None),
            ReplyKind::Response {
                status,
                served,
                body,
            } => {
                let served_idx = match served {
                    Served::Pinned => Some(expected_pin.unwrap_or(0)),
                    Served::Account(a) => Some(a),
                    Served::Absent => None,
                };
                let (tx, body) = match body {
                    BodyKind::Streaming => {
                        let (tx, body) = streaming();
                        (Some(tx), body)
                    }
                    BodyKind::KnownEmpty => (None, empty()),
                };
                let served_auth = served_idx.map(auth);
                (
                    Ok(respond(status, served_auth.as_ref(), body)),
                    tx,
                    served_idx,
                )
            }
        };
        let plan = Plan::now(answer);
        let req = plan.clone().attach(req);

        let svc = ServiceExt::<Request<()>>::ready(&mut self.svc)
            .now_or_never()
            .expect("always ready")
            .expect("never fails readiness");
        let result = svc
            .call(req)
            .now_or_never()
            .expect("in-memory store and scripted reply resolve at once");

        let seen = plan.seen_pin().expect("the inner service was called");
        prop_assert_eq!(
            seen,
            expected_pin.map(auth),
            "pin seen by the inner service"
        );

        // The table, for the response head.
        let watch = match (reply, tracked_key) {
            (ReplyKind::InnerError, k) => {
                prop_assert!(result.is_err(), "the inner error is passed on");
                if let (Some(k), Some(p)) = (k, expected_pin) {
                    self.model.clear_if(k, p);
                }
                return Ok(());
            }
            (ReplyKind::Response { .. }, None) => Watch::Passthrough,
            (ReplyKind::Response { status, body, .. }, Some(k)) => match class(status) {
                ResponseClass::Failure => {
                    if let Some(failed) = served_idx.or(expected_pin) {
                        self.model.clear_if(k, failed);
                    }
                    Watch::Passthrough
                }
                ResponseClass::Neutral => Watch::Passthrough,
                ResponseClass::Success => match (served_idx, body) {
                    (None, _) => Watch::Passthrough,
                    // Known to carry no body (the status says so, or the body type):
                    // committed at once, whatever the body type.
                    (Some(s), _) if body == BodyKind::KnownEmpty || matches!(status, 204 | 304) => {
                        self.model.commit(k, s);
                        Watch::Passthrough
                    }
                    (Some(served), _) => Watch::AwaitFirst { k, served },
                },
            },
        };
        let ReplyKind::Response { status, .. } = reply else {
            unreachable!("inner errors returned above")
        };
        let res = result.map_err(|e| TestCaseError::fail(format!("unexpected error {e}")))?;
        prop_assert_eq!(res.status().as_u16(), status);
        self.slots[slot] = Some(InFlight {
            body: res.into_body(),
            tx,
            watch,
        });
        Ok(())
    }

    fn frame(&mut self, slot: usize, kind: FrameKind) -> Result<(), TestCaseError> {
        let Some(inflight) = self.slots[slot].as_mut() else {
            return Ok(());
        };
        let Some(tx) = inflight.tx.as_ref() else {
            // A known-empty body: it only ever ends.
            let next = inflight
                .body
                .frame()
                .now_or_never()
                .expect("empty body is ready");
            prop_assert!(next.is_none(), "a known-empty body yields no frame");
            self.slots[slot] = None;
            return Ok(());
        };
        let sent = match kind {
            FrameKind::Data => Some(Ok(Frame::data(Bytes::from_static(b"data: chunk\n\n")))),
            FrameKind::EmptyData => Some(Ok(Frame::data(Bytes::new()))),
            FrameKind::Trailers => Some(Ok(Frame::trailers(HeaderMap::new()))),
            FrameKind::Error => Some(Err(io::Error::other("upstream reset"))),
            FrameKind::End => None,
        };
        match sent {
            Some(frame) => tx.try_send(frame).expect("one frame at a time fits"),
            None => inflight.tx = None,
        }
        let out = inflight
            .body
            .frame()
            .now_or_never()
            .expect("a sent frame is ready at once");
        if matches!(kind, FrameKind::Trailers) {
            // Trailers are the last frame of a body: the stream ends after them, and the
            // client reads that end.
            inflight.tx = None;
            let end = inflight.body.frame().now_or_never().expect("ended at once");
            prop_assert!(end.is_none(), "nothing after the trailers");
        }

        // What came out is what went in.
        match (kind, &out) {
            (FrameKind::Data, Some(Ok(f))) => {
                prop_assert_eq!(f.data_ref().map(|d| &d[..]), Some(&b"data: chunk\n\n"[..]))
            }
            (FrameKind::EmptyData, Some(Ok(f))) => {
                prop_assert!(f.data_ref().is_some_and(|d| d.is_empty()))
            }
            (FrameKind::Trailers, Some(Ok(f))) => prop_assert!(f.is_trailers()),
            (FrameKind::Error, Some(Err(e))) => prop_assert_eq!(e.to_string(), "upstream reset"),
            (FrameKind::End, None) => {}
            (kind, out) => {
                return Err(TestCaseError::fail(format!(
                    "sent {kind:?}, got {:?}",
                    out.as_ref()
                        .map(|r| r.as_ref().map(|_| "frame").map_err(|e| e.to_string()))
                )));
            }
        }

        // The table, for the body.
        if let Watch::AwaitFirst { k, served } = inflight.watch {
            match kind {
                FrameKind::Data => {
                    self.model.commit(k, served);
                    inflight.watch = Watch::Passthrough;
                }
                FrameKind::EmptyData => {}
                // Trailers are not a first chunk, and they end the stream: no data came.
                FrameKind::Trailers | FrameKind::Error | FrameKind::End => {
                    self.model.clear_if(k, served);
                    inflight.watch = Watch::Passthrough;
                }
            }
        }
        if matches!(
            kind,
            FrameKind::Trailers | FrameKind::Error | FrameKind::End
        ) {
            // The stream is over; the client lets go of the body.
            self.slots[slot] = None;
        }
        Ok(())
    }
}

/// Runs one case; returns the layer's final counters.
fn run(ops: &[Op]) -> Result<StatsSnapshot, TestCaseError> {
    let mut h = Harness::new();
    for op in ops {
        h.apply(*op)?;
        h.check_store()?;
    }
    // Every body left in flight is dropped (clients gone): nothing changes.
    h.slots.iter_mut().for_each(|s| *s = None);
    h.check_store()?;
    Ok(h.stats.snapshot())
}

#[test]
fn store_always_matches_the_table_model() {
    // `Config::default()` reads `PROPTEST_CASES` (default 256).
    let config = ProptestConfig::default();
    let cases = config.cases;
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let totals = std::cell::Cell::new([0u64; 5]);
    let result = runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
        let s = run(&ops)?;
        let [runs, n, commits, cleared, requests] = totals.get();
        totals.set([
            runs + 1,
            n + ops.len() as u64,
            commits + s.commits,
            cleared + s.cleared,
            requests + s.requests,
        ]);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let [runs, ops, commits, cleared, requests] = totals.get();
    println!(
        "model: {cases} cases passed ({runs} runs), {ops} operations, {requests} requests, \
         {commits} commits, {cleared} compare-and-deletes that removed a binding; \
         store matched the model after every operation"
    );
    assert!(runs >= u64::from(cases));
}

/// The model catches a wrong table: a hand-written interleaving of failure mode 5 (an old
/// request's late failure after a newer commit) checked step by step.
#[test]
fn model_replays_late_failure_after_newer_commit() {
    let ops = [
        // Old request on account 0 starts streaming, commits, a new one pinned to it waits.
        Op::Start {
            slot: 0,
            sess: Sess::Valid(0),
            scope: 1,
            explicit_pin: None,
            reply: ReplyKind::Response {
                status: 200,
                served: Served::Account(0),
                body: BodyKind::Streaming,
            },
        },
        Op::Frame {
            slot: 0,
            kind: FrameKind::Data,
        },
        Op::Start {
            slot: 1,
            sess: Sess::Valid(0),
            scope: 1,
            explicit_pin: None,
            reply: ReplyKind::Response {
                status: 200,
                served: Served::Pinned,
                body: BodyKind::Streaming,
            },
        },
        // A third request is served by account 1 and commits it.
        Op::Start {
            slot: 2,
            sess: Sess::Valid(0),
            scope: 1,
            explicit_pin: Some(1),
            reply: ReplyKind::Response {
                status: 200,
                served: Served::Pinned,
                body: BodyKind::Streaming,
            },
        },
        Op::Frame {
            slot: 2,
            kind: FrameKind::Data,
        },
        // The request pinned to account 0 now fails before its first chunk.
        Op::Frame {
            slot: 1,
            kind: FrameKind::Error,
        },
    ];
    let mut h = Harness::new();
    for op in ops {
        h.apply(op).unwrap();
        h.check_store().unwrap();
    }
    let bound = h.store.get(&key(SCOPES[1], SESSIONS[0])).map(|b| b.auth);
    assert_eq!(bound.as_ref().map(account_index), Some(1));
    assert_eq!(h.stats.snapshot().commits, 2);
}
