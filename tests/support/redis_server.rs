//! A real `redis-server` for tests and benchmarks: started on a free loopback port with
//! no persistence, stopped (killed) on drop.
//!
//! `redis-server` must be on `PATH` (`.ci/run` installs it on a fresh machine). Without
//! it, starting a server panics with a message saying how to install it: the Redis tests
//! fail rather than skip.
//!
//! Part of the `tests/support` tree, and also included on its own by
//! `benches/redis_lookup.rs` (hence its own `allow`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1:port`.
pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments (kept for restarts).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub(crate) fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` (e.g. to restart one on the port a store knows).
    pub(crate) fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts a server on `port` with extra command-line arguments, e.g.
    /// `["--maxmemory", "1mb"]` or `["--replicaof", "127.0.0.1", "6379"]`.
    pub(crate) fn start_with(port: u16, extra: &[&str]) -> Self {
        let mut server = Self {
            port,
            child: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    /// A free loopback port nothing listens on (for "Redis is down" cases).
    pub(crate) fn unused_port() -> u16 {
        free_port()
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server is not running");
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Sends one command in RESP and returns the raw reply (for checks that must not go
    /// through the code under test).
    pub(crate) fn command(&self, args: &[&str]) -> String {
        command_on(self.port, args)
    }

    /// Like [`command`](Self::command), on a connection that first authenticates with
    /// `password` (for a server with `requirepass`).
    pub(crate) fn command_with_auth(&self, password: &str, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(&resp(&["AUTH", password])).expect("write");
        let auth = read_reply(&mut stream);
        assert_eq!(auth, "+OK\n", "AUTH failed");
        stream.write_all(&resp(args)).expect("write");
        read_reply(&mut stream)
    }

    /// The server's working directory: its own, so that nothing it writes (a replica's
    /// copy of the primary's data, `dump.rdb`) lands in the crate and is loaded by the
    /// next server started there.
    fn dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tss-redis-{}-{}", std::process::id(), self.port))
    }

    fn spawn(&mut self) {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let child = Command::new("redis-server")
            .args([
                "--dir",
                dir.to_str().expect("utf-8 temp dir"),
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): the Redis store tests need a real Redis. \
                     Install it (Debian/Ubuntu: `apt-get install -y redis-server`; `.ci/run` does) \
                     so that `redis-server` is on PATH."
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server exited at start-up ({status}); port {} may be taken",
                    self.port
                );
            }
            if ping(self.port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) server.
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

/// Sends one command in RESP to `127.0.0.1:port` and returns the raw reply (arrays
/// flattened, one element a line).
pub(crate) fn command_on(port: u16, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(&resp(args)).expect("write");
    read_reply(&mut stream)
}

/// Whether `127.0.0.1:port` answers `PING`.
pub(crate) fn answers_ping(port: u16) -> bool {
    ping(port)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one complete RESP2 reply and returns it as text (arrays flattened, one element
/// a line; nil as `(nil)`).
fn read_reply(stream: &mut TcpStream) -> String {
    let mut reader = std::io::BufReader::new(stream);
    let mut out = String::new();
    read_value(&mut reader, &mut out);
    out
}

fn read_line(r: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read reply");
    line.trim_end_matches("\r\n").to_owned()
}

fn read_value(r: &mut impl std::io::BufRead, out: &mut String) {
    let line = read_line(r);
    let (tag, rest) = line.split_at(1);
    match tag {
        "+" | "-" | ":" => {
            out.push_str(&line);
            out.push('\n');
        }
        "$" => {
            let n: i64 = rest.parse().expect("bulk length");
            if n < 0 {
                out.push_str("(nil)\n");
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf).expect("bulk");
                out.push_str(&String::from_utf8_lossy(&buf[..n as usize]));
                out.push('\n');
            }
        }
        "*" => {
            let n: i64 = rest.parse().expect("array length");
            for _ in 0..n.max(0) {
                read_value(r, out);
            }
        }
        other => panic!("unexpected RESP reply tag {other:?}"),
    }
}
