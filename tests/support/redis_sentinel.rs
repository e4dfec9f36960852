//! A real Redis Sentinel for tests: `redis-server <conf> --sentinel` on a free loopback
//! port, monitoring one primary under the name given. Killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, answers_ping, command_on};

pub(crate) struct RedisSentinel {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl RedisSentinel {
    /// Starts a sentinel (quorum 1) watching `master` at `127.0.0.1:primary_port`.
    pub(crate) fn start(master: &str, primary_port: u16) -> Self {
        let port = RedisServer::unused_port();
        let dir = std::env::temp_dir().join(format!("tss-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\nloglevel warning\n\
                 sentinel monitor {master} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n",
                dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server --sentinel");
        let sentinel = Self { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_ping(port) {
            assert!(Instant::now() < deadline, "sentinel did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:port/`
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn command(&self, args: &[&str]) -> String {
        command_on(self.port, args)
    }

    /// The port of the primary this sentinel names for `master`.
    pub(crate) fn primary_port(&self, master: &str) -> u16 {
        let reply = self.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master]);
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no primary for {master}: {reply:?}"))
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
