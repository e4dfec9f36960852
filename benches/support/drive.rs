//! The request driver the request-path benches share (`benches/layer.rs`,
//! `benches/hit_instructions.rs`): one whole request driven synchronously, UUID-shaped
//! session ids, and an in-memory store's future resolved at once.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Request, Response};
use http_body::Body;
use tower::Service;

/// One whole request: ready, call, poll the future, drain the body.
#[inline]
pub(crate) fn drive<S, B>(svc: &mut S, req: Request<()>)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("trivial service is always ready"),
    }
    let fut = pin!(svc.call(req));
    let res = match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        _ => panic!("trivial service answers at once"),
    };
    let (parts, body) = res.into_parts();
    black_box(&parts);
    let mut body = pin!(body);
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.is_ok());
    }
}

/// A new 36-byte session id per call (`n` in a UUID-shaped frame).
pub(crate) fn fresh_id(n: u64) -> HeaderValue {
    let mut buf = *b"00000000-0000-4000-8000-000000000000";
    let mut n = n;
    let mut i = buf.len();
    while n > 0 && i > 0 {
        i -= 1;
        if buf[i] == b'-' {
            continue;
        }
        buf[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("visible ASCII")
}

/// The output of a future that an in-memory store answers at once.
pub(crate) fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("in-memory store answers at once"),
    }
}
