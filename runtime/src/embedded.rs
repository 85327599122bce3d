//! `--redis embedded`: a redis-server child for demos and development,
//! on a free port, stopped when sluice exits.

use anyhow::{Context, Result, bail};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A redis-server owned by this process. Killed on drop.
pub struct EmbeddedRedis {
    child: Child,
    url: String,
}

impl EmbeddedRedis {
    /// Starts `redis-server` from PATH on a free loopback port, keeping
    /// nothing on disk, and waits until it answers.
    pub async fn start() -> Result<Self> {
        let mut last_error = None;
        // A free port can be taken between finding it and binding it: retry.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start redis-server (is it installed and on PATH?)")?;
            let url = format!("redis://127.0.0.1:{port}");
            let mut redis = EmbeddedRedis { child, url };
            match redis.wait_ready().await {
                Ok(()) => return Ok(redis),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = redis::Client::open(self.url.as_str())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("redis-server exited at start ({status})");
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
