//! A private redis-server for the whole invocation: on a free port, no
//! persistence (so no fork or disk I/O disturbs a run), killed on drop.

use crate::process::Child;
use anyhow::{Context as _, Result, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server owned by the bench.
pub struct RedisServer {
    child: Child,
    url: String,
}

impl RedisServer {
    /// Starts `redis-server` from PATH and waits until it answers PING.
    pub fn start() -> Result<Self> {
        // The port is free when asked; the tiny race with another process
        // grabbing it is caught by the PING below.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Child::spawn(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null()),
            "redis-server",
        )?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = server
                .connect()
                .and_then(|mut c| Ok(redis::cmd("PING").query::<String>(&mut c)?));
            match ping {
                Ok(_) => return Ok(server),
                Err(e) if Instant::now() > deadline => {
                    bail!("redis-server on port {port} did not answer: {e:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's pid, for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// A new blocking connection.
    pub fn connect(&self) -> Result<redis::Connection> {
        let client = redis::Client::open(self.url.as_str())?;
        client
            .get_connection()
            .with_context(|| format!("connecting to {}", self.url))
    }
}

/// `redis-server --version`, e.g. `7.0.15`.
pub fn version() -> String {
    let out = Command::new("redis-server").arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("unknown")
        .to_string()
}
