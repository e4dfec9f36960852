//! How the store reaches Redis: one node, a Cluster through its seed nodes, or the
//! primary that Sentinel names.
//!
//! Every mode gives the rest of the store the same thing: a cheap-to-clone connection
//! ([`Conn`]) made lazily (so building the store never waits for Redis), the `PING` the
//! breaker's probe sends, and a fresh connection after a failed probe.

use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{AsyncConnectionConfig, IntoConnectionInfo};
use ::redis::{Client, Cmd, Pipeline, ProtocolVersion, PushInfo, RedisError, RedisFuture, Value};

/// URL scheme of a Cluster given by its seed nodes: `redis+cluster://h1:p1,h2:p2`.
pub(super) const CLUSTER_SCHEME: &str = "redis+cluster://";
/// URL scheme of a primary named by Sentinel:
/// `redis+sentinel://[user:pw@]s1:p1,s2:p2/master-name[/db]`.
pub(super) const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Where the store's Redis is, as the user gave it.
#[derive(Clone, Debug)]
pub(super) enum Spec {
    /// A URL: one node (`redis://`, `redis+unix://`), `redis+cluster://` or
    /// `redis+sentinel://`.
    Url(String),
    /// A Cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
    /// The primary of `master` as Sentinel names it: the sentinels' URLs, and a URL whose
    /// credentials and database apply to the primary (its host is ignored).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        node: String,
    },
}

/// Called after a new connection replaced the previous one (Sentinel mode): whatever
/// was set up on the old connection (tracking) must be set up again.
pub(super) type OnNewConnection = Arc<dyn Fn() + Send + Sync>;

/// Time limits every mode's client is built with.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) connect: Duration,
    /// A backstop for the client's own waits; every call has its own, shorter limit.
    pub(super) response: Duration,
}

/// A client that can make connections of one mode.
pub(super) enum Target {
    Single {
        client: Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        config: ClusterConfig,
        /// The first seed node's settings (credentials): a breaker's probe `PING`s one
        /// primary on a connection of its own, made from these with the primary's
        /// address (see [`Target::ping_node`]).
        probe: Box<::redis::ConnectionInfo>,
        limits: Limits,
    },
    Sentinel(Arc<SentinelTarget>),
}

/// How often a Sentinel-mode store asks Sentinel which node is the primary.
const SENTINEL_WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct SentinelTarget {
    client: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    on_new: OnNewConnection,
    /// Time limit of a background lookup of the primary.
    limit: Duration,
}

/// A connection to the primary Sentinel names, resolved on first use and again after
/// the connection fails or the node answers `READONLY` (it was demoted by a failover),
/// `LOADING` or `MASTERDOWN`, or when the once-a-second watch sees another primary.
pub(super) struct SentinelConn {
    target: Arc<SentinelTarget>,
    /// The connection and the primary's address it leads to.
    current: RwLock<Option<(MultiplexedConnection, ::redis::ConnectionAddr)>>,
    /// One resolution at a time; the others wait for its result.
    resolving: tokio::sync::Mutex<()>,
}

impl SentinelConn {
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.resolving.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let client = self.target.client.lock().await.async_get_client().await?;
        let addr = client.get_connection_info().addr().clone();
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.target.config)
            .await?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some((conn.clone(), addr));
        (self.target.on_new)();
        Ok(conn)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(c, _)| c.clone())
    }

    fn current_addr(&self) -> Option<::redis::ConnectionAddr> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, a)| a.clone())
    }

    /// Asks Sentinel every [`SENTINEL_WATCH_INTERVAL`] which node is the primary, and
    /// drops the connection when it names another one. After a forced failover the old
    /// primary keeps accepting writes until Sentinel reconfigures it (up to its 10 s
    /// `INFO` period); without this watch the store would keep writing there, and those
    /// bindings would be lost when it resyncs as a replica.
    fn watch(this: &Arc<Self>) {
        let weak = Arc::downgrade(this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SENTINEL_WATCH_INTERVAL).await;
                let Some(this) = weak.upgrade() else { return };
                let Some(current) = this.current_addr() else {
                    continue;
                };
                let named = tokio::time::timeout(this.target.limit, async {
                    this.target.client.lock().await.async_get_client().await
                })
                .await;
                if let Ok(Ok(client)) = named
                    && *client.get_connection_info().addr() != current
                {
                    tracing::info!(
                        old = %current,
                        new = %client.get_connection_info().addr(),
                        "sticky session store: Sentinel names a new Redis primary; reconnecting"
                    );
                    *this.current.write().unwrap_or_else(PoisonError::into_inner) = None;
                }
            }
        });
    }

    /// Forgets the connection after an error that says it no longer leads to the
    /// primary: the next call asks Sentinel again.
    fn check<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.code() == Some("READONLY")
                || e.code() == Some("LOADING")
                || e.code() == Some("MASTERDOWN"))
        {
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }
}

/// A connection of any mode. Clones share the underlying connection(s).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

impl Spec {
    pub(super) fn is_cluster(&self) -> bool {
        match self {
            Spec::Url(url) => url.starts_with(CLUSTER_SCHEME),
            Spec::Cluster(_) => true,
            Spec::Sentinel { .. } => false,
        }
    }

    /// The client for this spec, and how logs name the Redis (never with a password).
    ///
    /// With `push`, the connection (one node, the Sentinel-named primary, or every
    /// Cluster node) speaks RESP3 and hands every push message (tracking invalidations,
    /// disconnections) to it.
    pub(super) fn target(
        &self,
        limits: Limits,
        push: Option<impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static>,
        on_new: OnNewConnection,
    ) -> Result<(Target, String), String> {
        match self {
            Spec::Url(url) if url.starts_with(SENTINEL_SCHEME) => {
                let (sentinels, master, node) = split_sentinel_url(url)?;
                sentinel_target(&sentinels, &master, &node, limits, push, on_new)
            }
            Spec::Sentinel {
                sentinels,
                master,
                node,
            } => sentinel_target(sentinels, master, node, limits, push, on_new),
            Spec::Url(url) if url.starts_with(CLUSTER_SCHEME) => {
                cluster_target(&split_cluster_url(url)?, limits, push)
            }
            Spec::Url(url) => {
                let mut client =
                    Client::open(url.as_str()).map_err(|e| format!("invalid Redis URL: {e}"))?;
                let info = client.get_connection_info().clone();
                let addr = format!("{}/{}", info.addr(), info.redis_settings().db());
                if push.is_some() {
                    let settings = info
                        .redis_settings()
                        .clone()
                        .set_protocol(ProtocolVersion::RESP3);
                    client = Client::open(info.set_redis_settings(settings))
                        .map_err(|e| format!("invalid Redis URL: {e}"))?;
                }
                let mut config = ConnectionManagerConfig::new()
                    // One attempt per reconnect: callers never wait on a back-off schedule,
                    // and the breaker decides when to try again.
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(limits.connect))
                    .set_response_timeout(Some(limits.response));
                if let Some(push) = push {
                    config = config.set_push_sender(push);
                }
                Ok((Target::Single { client, config }, addr))
            }
            Spec::Cluster(nodes) => cluster_target(nodes, limits, push),
        }
    }
}

/// `redis+cluster://[user:pw@]h1:p1,h2:p2[/]` → `redis://[user:pw@]h1:p1/`, …
fn split_cluster_url(url: &str) -> Result<Vec<String>, String> {
    let rest = &url[CLUSTER_SCHEME.len()..];
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{userinfo}{h}/"))
        .collect();
    if nodes.is_empty() {
        return Err("invalid Redis Cluster URL: no seed node".into());
    }
    Ok(nodes)
}

/// `redis+sentinel://[user:pw@]s1:p1,s2:p2/master[/db]` → sentinel URLs, the master's
/// name, and `redis://[user:pw@]localhost/db` for the primary's settings.
fn split_sentinel_url(url: &str) -> Result<(Vec<String>, String, String), String> {
    let rest = &url[SENTINEL_SCHEME.len()..];
    let rest = rest.split('?').next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}/"))
        .collect();
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let master = parts.next().unwrap_or_default().to_owned();
    let db = parts.next().unwrap_or("0");
    if sentinels.is_empty() || master.is_empty() {
        return Err(
            "invalid Redis Sentinel URL: expected redis+sentinel://host:port[,host:port…]/master-name[/db]"
                .into(),
        );
    }
    Ok((
        sentinels,
        master,
        format!("redis://{userinfo}localhost/{db}"),
    ))
}

fn sentinel_target(
    sentinels: &[String],
    master: &str,
    node: &str,
    limits: Limits,
    push: Option<impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static>,
    on_new: OnNewConnection,
) -> Result<(Target, String), String> {
    let mut settings = node
        .into_connection_info()
        .map_err(|e| format!("invalid Redis Sentinel settings: {e}"))?
        .redis_settings()
        .clone();
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limits.connect))
        .set_response_timeout(Some(limits.response));
    if let Some(push) = push {
        settings = settings.set_protocol(ProtocolVersion::RESP3);
        config = config.set_push_sender(push);
    }
    let mut addrs = Vec::with_capacity(sentinels.len());
    for s in sentinels {
        let info = s
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("invalid Redis Sentinel URL: {e}"))?;
        addrs.push(info.addr().to_string());
    }
    let client = SentinelClient::build(
        sentinels.to_vec(),
        master.to_owned(),
        Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(settings)),
        SentinelServerType::Master,
    )
    .map_err(|e| format!("invalid Redis Sentinel settings: {e}"))?;
    let addr = format!("sentinel {} master {master}", addrs.join(","));
    Ok((
        Target::Sentinel(Arc::new(SentinelTarget {
            client: tokio::sync::Mutex::new(client),
            config,
            on_new,
            limit: limits.connect,
        })),
        addr,
    ))
}

fn cluster_target(
    nodes: &[String],
    limits: Limits,
    push: Option<impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static>,
) -> Result<(Target, String), String> {
    if nodes.is_empty() {
        return Err("invalid Redis Cluster: no seed node".into());
    }
    let mut addrs = Vec::with_capacity(nodes.len());
    let mut probe = None;
    for node in nodes {
        let info = ::redis::IntoConnectionInfo::into_connection_info(node.as_str())
            .map_err(|e| format!("invalid Redis Cluster node URL: {e}"))?;
        addrs.push(info.addr().to_string());
        probe.get_or_insert(info);
    }
    let probe = Box::new(probe.ok_or("invalid Redis Cluster: no seed node")?);
    let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str));
    let mut config = ClusterConfig::new()
        .set_connection_timeout(limits.connect)
        .set_response_timeout(limits.response);
    if let Some(push) = push {
        builder = builder.use_protocol(ProtocolVersion::RESP3);
        config = config.set_push_sender(push);
    }
    let client = builder
        // A MOVED after a failover or a resharding is one retry; more would only run
        // into the call's own time limit.
        .retries(2)
        .min_retry_wait(5)
        .max_retry_wait(50)
        .connection_timeout(limits.connect)
        .response_timeout(limits.response)
        .build()
        .map_err(|e| format!("invalid Redis Cluster settings: {e}"))?;
    Ok((
        Target::Cluster {
            client,
            config,
            probe,
            limits,
        },
        format!("cluster {}", addrs.join(",")),
    ))
}

impl Target {
    /// A new connection that connects in the background (must run inside a Tokio
    /// runtime): building the store never waits for Redis.
    pub(super) fn connect_lazy(&self) -> Result<Conn, RedisError> {
        match self {
            Target::Single { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(Conn::Single)
            }
            Target::Cluster { client, config, .. } => Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(config.clone()),
            )),
            Target::Sentinel(target) => {
                let conn = Arc::new(SentinelConn {
                    target: target.clone(),
                    current: RwLock::new(None),
                    resolving: tokio::sync::Mutex::new(()),
                });
                SentinelConn::watch(&conn);
                Ok(Conn::Sentinel(conn))
            }
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    /// `PING` one Cluster primary on a short-lived connection of its own (the seed
    /// node's credentials, the primary's address): the probe of that primary's breaker.
    /// Not through the cluster client, which would log its own warnings for each
    /// failed attempt and start a slot refresh.
    pub(super) async fn ping_node(&self, host: &str, port: u16) -> Result<(), RedisError> {
        let Target::Cluster { probe, limits, .. } = self else {
            return Err(RedisError::from((
                ::redis::ErrorKind::Client,
                "not a Cluster",
            )));
        };
        let info = (**probe)
            .clone()
            .set_addr(::redis::ConnectionAddr::Tcp(host.to_owned(), port));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limits.connect))
            .set_response_timeout(Some(limits.connect));
        let mut conn = Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut cmd = Cmd::new();
        cmd.arg("PING");
        cmd.query_async::<String>(&mut conn).await.map(drop)
    }
}

impl Conn {
    /// `PING` one node: in a Cluster, any node (the breaker guards the store as a whole;
    /// a node that is down fails the requests for its slots, which reopen the breaker).
    pub(super) async fn ping(&mut self) -> Result<(), RedisError> {
        let mut cmd = Cmd::new();
        cmd.arg("PING");
        match self {
            Conn::Cluster(c) => c
                .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                .await
                .map(drop),
            _ => cmd.query_async::<String>(self).await.map(drop),
        }
    }

    /// `CLIENT TRACKING ON NOLOOP` on every node of a Cluster (each node tracks the keys
    /// read from it), or on the one connection otherwise.
    pub(super) async fn enable_tracking(&mut self) -> Result<(), RedisError> {
        let mut cmd = Cmd::new();
        cmd.arg("CLIENT").arg("TRACKING").arg("ON").arg("NOLOOP");
        match self {
            Conn::Cluster(c) => c
                .route_command(
                    cmd,
                    RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllNodes,
                        Some(ResponsePolicy::AllSucceeded),
                    )),
                )
                .await
                .map(drop),
            _ => cmd.query_async::<()>(self).await,
        }
    }

    /// The primaries of a Cluster (`host`, `port`), from `CLUSTER SLOTS`; `None` for one
    /// node.
    pub(super) async fn primaries(&mut self) -> Result<Option<Vec<(String, u16)>>, RedisError> {
        if !matches!(self, Conn::Cluster(_)) {
            return Ok(None);
        }
        let mut out: Vec<(String, u16)> = Vec::new();
        for (_, _, host, port) in self.slot_ranges(None).await? {
            if !out.iter().any(|(h, p)| *h == host && *p == port) {
                out.push((host, port));
            }
        }
        Ok(Some(out))
    }

    /// A Cluster's slot map from `CLUSTER SLOTS`, asked of `node` (else of any node):
    /// `(first slot, last slot, primary host, primary port)` per range. Empty for one
    /// node.
    pub(super) async fn slot_ranges(
        &mut self,
        node: Option<&(String, u16)>,
    ) -> Result<Vec<(u16, u16, String, u16)>, RedisError> {
        let Conn::Cluster(c) = self else {
            return Ok(Vec::new());
        };
        let mut cmd = Cmd::new();
        cmd.arg("CLUSTER").arg("SLOTS");
        let route = match node {
            Some((host, port)) => SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            },
            None => SingleNodeRoutingInfo::Random,
        };
        let value = c.route_command(cmd, RoutingInfo::SingleNode(route)).await?;
        let mut out = Vec::new();
        if let Value::Array(ranges) = value {
            for range in ranges {
                let Value::Array(items) = range else { continue };
                // [start, end, [host, port, id, …], replicas…]
                let (Some(Value::Int(first)), Some(Value::Int(last))) =
                    (items.first(), items.get(1))
                else {
                    continue;
                };
                let Some(Value::Array(primary)) = items.get(2) else {
                    continue;
                };
                let host = match primary.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => continue,
                };
                let Some(Value::Int(port)) = primary.get(1) else {
                    continue;
                };
                let (Ok(first), Ok(last), Ok(port)) = (
                    u16::try_from(*first),
                    u16::try_from(*last),
                    u16::try_from(*port),
                ) else {
                    continue;
                };
                // `?` or empty: the node does not know its own address.
                if host.is_empty() || host == "?" {
                    continue;
                }
                out.push((first, last, host, port));
            }
        }
        Ok(out)
    }

    /// Sends `cmd` to one Cluster node by address (e.g. a `SCAN`); to the node itself for
    /// one node.
    pub(super) async fn on_node(
        &mut self,
        node: Option<&(String, u16)>,
        cmd: Cmd,
    ) -> Result<Value, RedisError> {
        match (self, node) {
            (Conn::Cluster(c), Some((host, port))) => {
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                )
                .await
            }
            (conn, _) => conn.req_packed_command(&cmd).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.connection().await?;
                let result = c.req_packed_command(cmd).await;
                s.check(result)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.connection().await?;
                let result = c.req_packed_commands(pipeline, offset, count).await;
                s.check(result)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(s) => s.current().map_or(0, |c| ConnectionLike::get_db(&c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_url_becomes_one_url_per_seed_node_with_the_credentials() {
        assert_eq!(
            split_cluster_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001/").unwrap(),
            ["redis://:pw@10.0.0.1:7000/", "redis://:pw@10.0.0.2:7001/"]
        );
        assert_eq!(
            split_cluster_url("redis+cluster://h:1").unwrap(),
            ["redis://h:1/"]
        );
        assert!(split_cluster_url("redis+cluster://").is_err());
    }

    #[test]
    fn sentinel_url_names_sentinels_master_and_the_primarys_settings() {
        let (sentinels, master, node) =
            split_sentinel_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/2")
                .unwrap();
        assert_eq!(
            sentinels,
            ["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/"]
        );
        assert_eq!(master, "mymaster");
        assert_eq!(node, "redis://:pw@localhost/2");
        let (_, master, node) = split_sentinel_url("redis+sentinel://h:26379/m").unwrap();
        assert_eq!(
            (master.as_str(), node.as_str()),
            ("m", "redis://localhost/0")
        );
        assert!(split_sentinel_url("redis+sentinel://h:26379").is_err());
        assert!(split_sentinel_url("redis+sentinel:///m").is_err());
    }
}
