//! Cost of learning a Responses API id per response
//! ([`StickySessionLayer::learn_response_ids`]).
//!
//! Run: `cargo bench --bench response_id` (about 40 s). See `BENCHMARKS.md`.
//!
//! - `response_id/scan/*`: `find_response_id` on a response's first frame alone: a JSON
//!   body (`json`, 0.4 KiB) and the first SSE event `response.created` of a streaming
//!   response (`sse_created`, 4.6 KiB: the event repeats the request's instructions and
//!   tools after the id), and the first SSE event of a Chat Completions stream
//!   (`sse_chat_chunk`, a `chat.completion.chunk`, which carries no Responses API id).
//! - `response_id/request/*`: one whole request through the layer (no session id, as an
//!   OpenAI SDK app sends): `ready`, `call`, poll the future, drain the body; the inner
//!   service answers at once with the SSE stream in one frame (or, `*_split`, the first
//!   event cut in two frames inside the id) and `ServedBy`, each response with a new id.
//!   `off`: learning off (the baseline); `learn_noop_store`: learning on over a store
//!   whose operations do nothing, so `learn_noop_store − off` is the layer's own cost of
//!   learning (scan, id, key, the learner); `learn_moka`: over `MemoryStore` (the commit of
//!   a new binding into the probation segment included); `learn_noop_store_split`
//!   against `off_split`: the bounded prefix copy.
//!
//! The `request/*` cases build the response body (a new id) the same way in every case,
//! so differences are the layer's.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::stream::{self, Iter};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::StreamBody;
use tower::{Layer, Service};
use tower_sticky_session::body_session::{ResponseIdScan, find_response_id};
use tower_sticky_session::store::{BindingStore, StoreError};
use tower_sticky_session::{AuthId, BindingKey, ServedBy, StickySessionLayer, store::MemoryStore};

const INSTRUCTIONS: usize = 4096;

fn sse_created(id: &str) -> String {
    format!(
        "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{{\"id\":\"{id}\",\"object\":\"response\",\"created_at\":1764626400,\"status\":\"in_progress\",\"model\":\"gpt-5\",\"instructions\":\"{}\",\"tools\":[]}}}}\n\n",
        "x".repeat(INSTRUCTIONS)
    )
}

/// A Chat Completions stream's first event, whole: no Responses API id.
const SSE_CHAT_CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"token 1\"}}]}\n\n";

fn json_body(id: &str) -> String {
    format!(
        "{{\"id\":\"{id}\",\"object\":\"response\",\"created_at\":1764626400,\"status\":\"completed\",\"model\":\"gpt-5\",\"output\":[{{\"type\":\"message\",\"id\":\"msg_68af4c1e\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"text\":\"{}\"}}]}}],\"usage\":{{\"input_tokens\":12,\"output_tokens\":90}}}}",
        "y".repeat(200)
    )
}

fn scan(c: &mut Criterion) {
    let id = "resp_68af4c1e2b3c8190a1b2c3d4e5f60718";
    let json = json_body(id);
    let sse = sse_created(id);
    c.bench_function("response_id/scan/json", |b| {
        b.iter(|| black_box(find_response_id(black_box(json.as_bytes()))))
    });
    c.bench_function("response_id/scan/sse_created", |b| {
        b.iter(|| black_box(find_response_id(black_box(sse.as_bytes()))))
    });
    let chunk = SSE_CHAT_CHUNK.as_bytes();
    assert_eq!(find_response_id(chunk), ResponseIdScan::Absent);
    c.bench_function("response_id/scan/sse_chat_chunk", |b| {
        b.iter(|| black_box(find_response_id(black_box(chunk))))
    });
}

/// A store whose operations do nothing (the layer's own cost, without the store's).
#[derive(Clone, Copy)]
struct NoopStore;

impl BindingStore for NoopStore {
    type LookupFuture = Ready<Result<Option<AuthId>, StoreError>>;
    type CommitFuture = Ready<Result<(), StoreError>>;
    type ClearFuture = Ready<Result<bool, StoreError>>;

    fn lookup(&self, _: &BindingKey) -> Self::LookupFuture {
        ready(Ok(None))
    }
    fn commit(&self, key: &BindingKey, _: &AuthId) -> Self::CommitFuture {
        black_box(key);
        ready(Ok(()))
    }
    fn clear_if(&self, _: &BindingKey, _: &AuthId) -> Self::ClearFuture {
        ready(Ok(false))
    }
}

type Frames = Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// Answers at once with `ServedBy` and a first SSE event carrying a new id, in one
/// frame or cut in two inside the id; or the next event of a pool made beforehand.
#[derive(Clone)]
struct Upstream {
    n: u64,
    split: bool,
    account: AuthId,
    /// The event with a placeholder id of fixed length, patched per response.
    template: Vec<u8>,
    at: usize,
    pool: Option<Pool>,
}

/// 4096 first events with distinct ids, gzipped or not (compressing in the loop would
/// drown the difference measured).
#[derive(Clone)]
struct Pool {
    events: std::sync::Arc<Vec<Bytes>>,
    gzip: bool,
}

impl Pool {
    fn new(gzip: bool) -> Self {
        use std::io::Write;
        let events = (0..4096)
            .map(|i| {
                let event = sse_created(&format!("resp_{i:016x}"));
                if !gzip {
                    return Bytes::from(event);
                }
                let level = flate2::Compression::default();
                let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
                e.write_all(event.as_bytes()).unwrap();
                Bytes::from(e.finish().unwrap())
            })
            .collect();
        Self {
            events: std::sync::Arc::new(events),
            gzip,
        }
    }

    fn answer(&self, n: u64) -> Response<StreamBody<Frames>> {
        let event = self.events[n as usize % self.events.len()].clone();
        let mut res = Response::new(StreamBody::new(stream::iter(vec![Ok(Frame::data(event))])));
        if self.gzip {
            res.headers_mut().insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("gzip"),
            );
        }
        res
    }
}

impl Upstream {
    fn new(split: bool) -> Self {
        let template = sse_created("resp_0000000000000000").into_bytes();
        let at = template.windows(5).position(|w| w == b"resp_").unwrap() + 5;
        Self {
            n: 0,
            split,
            account: AuthId::from("acct-a"),
            template,
            at,
            pool: None,
        }
    }

    fn pooled(gzip: bool) -> Self {
        Self {
            pool: Some(Pool::new(gzip)),
            ..Self::new(false)
        }
    }
}

impl<B> Service<Request<B>> for Upstream {
    type Response = Response<StreamBody<Frames>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        self.n += 1;
        if let Some(pool) = &self.pool {
            let mut res = pool.answer(self.n);
            res.extensions_mut().insert(ServedBy(self.account.clone()));
            return ready(Ok(res));
        }
        let mut event = self.template.clone();
        let hex = format!("{:016x}", self.n);
        event[self.at..self.at + 16].copy_from_slice(hex.as_bytes());
        let event = Bytes::from(event);
        let frames = if self.split {
            let cut = self.at + 8;
            vec![
                Ok(Frame::data(event.slice(..cut))),
                Ok(Frame::data(event.slice(cut..))),
            ]
        } else {
            vec![Ok(Frame::data(event))]
        };
        let mut res = Response::new(StreamBody::new(stream::iter(frames)));
        res.extensions_mut().insert(ServedBy(self.account.clone()));
        ready(Ok(res))
    }
}

/// One whole request: ready, call, poll the future, drain the body.
fn drive<S, B>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = pin!(svc.call(Request::new(())));
    let Poll::Ready(Ok(res)) = fut.poll(&mut cx) else {
        panic!("answers at once")
    };
    let mut body = pin!(res.into_body());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.is_ok());
    }
}

fn request(c: &mut Criterion) {
    for split in [false, true] {
        let tail = if split { "_split" } else { "" };
        let mut off = StickySessionLayer::with_store(NoopStore).layer(Upstream::new(split));
        c.bench_function(&format!("response_id/request/off{tail}"), |b| {
            b.iter(|| drive(&mut off))
        });
        let mut noop = StickySessionLayer::with_store(NoopStore)
            .learn_response_ids(true)
            .layer(Upstream::new(split));
        c.bench_function(
            &format!("response_id/request/learn_noop_store{tail}"),
            |b| b.iter(|| drive(&mut noop)),
        );
    }
    for gzip in [false, true] {
        let tail = if gzip { "gzip" } else { "identity" };
        let mut off = StickySessionLayer::with_store(NoopStore).layer(Upstream::pooled(gzip));
        c.bench_function(&format!("response_id/request/off_{tail}"), |b| {
            b.iter(|| drive(&mut off))
        });
        let layer = StickySessionLayer::with_store(NoopStore).learn_response_ids(true);
        let mut learn = layer.layer(Upstream::pooled(gzip));
        // Checked before the run, so that a filter that skips the case does not fail it.
        drive(&mut learn);
        let s = layer.stats().snapshot();
        assert_eq!(
            (s.response_ids_learned, s.response_ids_undecodable),
            (1, 0),
            "{tail}"
        );
        c.bench_function(
            &format!("response_id/request/learn_noop_store_{tail}"),
            |b| b.iter(|| drive(&mut learn)),
        );
    }
    let store = MemoryStore::new();
    let layer = StickySessionLayer::with_store(store.clone()).learn_response_ids(true);
    let mut moka = layer.layer(Upstream::new(false));
    drive(&mut moka);
    assert_eq!(layer.stats().snapshot().response_ids_learned, 1, "learned");
    c.bench_function("response_id/request/learn_moka", |b| {
        b.iter(|| drive(&mut moka))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = scan, request
}
criterion_main!(benches);
