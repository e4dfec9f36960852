//! A real Redis Cluster for tests: three primaries (and optionally one replica each),
//! `redis-server --cluster-enabled yes` on free loopback ports, joined by
//! `redis-cli --cluster create`. Stopped on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::RedisServer;

pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three primaries (no replicas) and waits until every node reports
    /// `cluster_state:ok`. `node_timeout_ms` is `cluster-node-timeout`: how long a dead
    /// primary takes to be declared failed.
    pub(crate) fn start(node_timeout_ms: u64) -> Self {
        Self::start_with(node_timeout_ms, 0, &[])
    }

    /// Starts three primaries with `replicas` replicas each (`--cluster-replicas`), every
    /// node with the `extra` arguments (e.g. `["--cluster-require-full-coverage", "no"]`),
    /// and waits until every node reports `cluster_state:ok` and every replica is in sync.
    pub(crate) fn start_with(node_timeout_ms: u64, replicas: usize, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tss-cluster-{}-{}",
            std::process::id(),
            RedisServer::unused_port()
        ));
        std::fs::create_dir_all(&dir).expect("cluster temp dir");
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let port = RedisServer::unused_port();
            let bus = RedisServer::unused_port();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let bus = bus.to_string();
            let timeout = node_timeout_ms.to_string();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.to_str().expect("utf-8 temp dir"),
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                &timeout,
            ];
            args.extend_from_slice(extra);
            nodes.push(RedisServer::start_with(port, &args));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `redis-cli --cluster create` ({e}): the Redis Cluster tests need \
                     `redis-cli` on PATH (Debian/Ubuntu: `apt-get install -y redis-tools`, which \
                     `redis-server` pulls in; `.ci/run` installs both)."
                )
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}; nodes: {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            nodes
                .iter()
                .map(|n| (
                    n.port(),
                    n.command(&["CLUSTER", "NODES"]),
                    n.command(&["DBSIZE"])
                ))
                .collect::<Vec<_>>()
        );
        let cluster = Self { nodes, dir };
        cluster.wait_ok(Duration::from_secs(20));
        if replicas > 0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !cluster.nodes.iter().all(|n| {
                let role = n.command(&["ROLE"]);
                // A replica: `slave`, primary's host, port, `connected`, offset.
                !role.starts_with("slave") || role.contains("connected")
            }) {
                assert!(Instant::now() < deadline, "replicas not in sync");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Indices (into `nodes`) of the running nodes that are primaries now.
    pub(crate) fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].pid().is_some()
                    && self.nodes[i].command(&["ROLE"]).starts_with("master")
            })
            .collect()
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub(crate) fn wait_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self
                .nodes
                .iter()
                .filter(|n| n.pid().is_some())
                .all(|n| n.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "cluster not ok within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed-node URLs, one per node.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`
    pub(crate) fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Keys held by each node.
    pub(crate) fn dbsizes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                n.command(&["DBSIZE"])
                    .trim_start_matches(':')
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
