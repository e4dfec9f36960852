//! Steady request load on two proxy replicas sharing one `RedisStore` deployment, for the
//! failover tests (`tests/redis/cluster.rs`, `sentinel.rs`, `cluster_failover.rs`):
//! [`replicas`] builds the two replicas' sticky services, [`request`] sends one session's
//! request through one of them, and [`Load`] keeps eight sessions busy on both until it is
//! finished.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt};
use tower_sticky_session::store::RedisStore;
use tower_sticky_session::{
    AuthId, DEFAULT_SESSION_HEADER, PinnedAuth, ResponseBody, ServedBy, StickySessionLayer,
};

/// A replica's response: the sticky layer's body over the inner service's.
pub(crate) type ReplicaResponse = Response<ResponseBody<Full<Bytes>, RedisStore>>;

/// One proxy replica per store, each an inner service that honours the pin and otherwise
/// picks its own account (`acct-r0`, `acct-r1`, ...: the replicas' accounts differ on
/// purpose). A response carries `ServedBy`, and `PinnedAuth` when the request was pinned.
pub(crate) fn replicas(
    stores: &[RedisStore],
) -> Vec<
    impl Service<
        Request<Full<Bytes>>,
        Response = ReplicaResponse,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static,
> {
    stores
        .iter()
        .enumerate()
        .map(|(r, s)| {
            let inner = tower::service_fn(move |req: Request<Full<Bytes>>| {
                let pinned = req.extensions().get::<PinnedAuth>().map(|p| p.0.clone());
                let auth = pinned
                    .clone()
                    .unwrap_or_else(|| AuthId::from(format!("acct-r{r}")));
                async move {
                    let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
                    // Reported back so the test can see whether the request was pinned.
                    if let Some(p) = pinned {
                        res.extensions_mut().insert(PinnedAuth(p));
                    }
                    res.extensions_mut().insert(ServedBy(auth));
                    Ok::<_, Infallible>(res)
                }
            });
            StickySessionLayer::with_store(s.clone()).layer(inner)
        })
        .collect()
}

/// Sends one request of `session` through `svc` and reads its body to the end:
/// (the pin the request carried, the account that served it).
pub(crate) async fn request<S>(svc: &S, session: &str) -> (Option<AuthId>, AuthId)
where
    S: Service<Request<Full<Bytes>>, Response = ReplicaResponse, Error = Infallible> + Clone,
{
    let req = Request::get("/v1/responses")
        .header(DEFAULT_SESSION_HEADER, session)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    let served = res.extensions().get::<ServedBy>().unwrap().0.clone();
    let pinned = res.extensions().get::<PinnedAuth>().map(|p| p.0.clone());
    res.into_body().collect().await.unwrap();
    (pinned, served)
}

/// Eight sessions (`load-0`..`load-7`), each sending one request after the other,
/// alternating between the first two services, 5 ms apart. A request that takes longer
/// than the hang bound panics its task, which [`Load::finish`] reports.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    slowest: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the load on `services[0]` and `services[1]`; a request hangs after `hang`.
    pub(crate) fn start<S>(services: &[S], hang: Duration) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = ReplicaResponse, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let slowest = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (services, stop, sent, slowest) = (
                services.to_vec(),
                stop.clone(),
                sent.clone(),
                slowest.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let session = format!("load-{w}");
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let _ = tokio::time::timeout(hang, request(&services[n % 2], &session))
                        .await
                        .expect("request hung");
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    slowest.fetch_max(us, Ordering::Relaxed);
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Self {
            stop,
            sent,
            slowest,
            tasks,
        }
    }

    /// Stops the load and waits for every session's task: (requests sent, slowest one).
    /// Panics if a task panicked (a request failed or hung).
    pub(crate) async fn finish(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await
                .expect("a load task panicked (a request failed or hung)");
        }
        (
            self.sent.load(Ordering::Relaxed),
            Duration::from_micros(self.slowest.load(Ordering::Relaxed)),
        )
    }
}
