//! A private `redis-server` per test.
//!
//! Tests run in parallel threads and each one owns its server, so no test can see another's
//! keys and no test depends on a Redis the developer happens to have running. The server is
//! started on a free port and killed when the value is dropped.
//!
//! `SLUICE_TEST_REDIS_SERVER` names another `redis-server` binary to run instead of the one on
//! PATH, to run the same tests against another Redis version (`scripts/test-redis-6.2`).

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a freshly spawned server gets to answer PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment variable naming the `redis-server` binary; default: the one on PATH.
const SERVER_ENV: &str = "SLUICE_TEST_REDIS_SERVER";

/// How many free ports to try: another test can take the port between our probe and the
/// server's bind, so one attempt is not enough.
const PORT_ATTEMPTS: usize = 10;

/// A `redis-server` child process on `127.0.0.1:<port>`.
pub struct RedisServer {
    /// `None` between [`RedisServer::stop`] and [`RedisServer::start`].
    child: Option<Child>,
    port: u16,
    /// Working directory: the log file, and the append-only file when persistent. Kept across
    /// stop and start so a persistent server comes back with its data.
    dir: TempDir,
    /// Whether data survives a stop and start (append-only file, fsync on every write).
    persistent: bool,
    /// `--key-load-delay` (microseconds per key loaded) for the next start: see
    /// [`slow_down_next_load`](Self::slow_down_next_load).
    key_load_delay_us: u64,
}

impl RedisServer {
    /// A throwaway server: nothing is written to disk (`--save "" --appendonly no`).
    pub fn new() -> Self {
        Self::spawn_on_free_port(false)
    }

    /// A server whose data survives [`stop`](Self::stop) and [`start`](Self::start): for tests
    /// where Redis goes away and comes back.
    pub fn with_persistence() -> Self {
        Self::spawn_on_free_port(true)
    }

    /// `redis://127.0.0.1:<port>`, the URL pipeline files point at.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on; the same after a restart.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new synchronous connection. Tests use the sync API: it is all they need.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("a valid redis URL")
            .get_connection()
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }

    /// Shuts the server down gracefully (SIGTERM), so a persistent one flushes its data.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while child.try_wait().expect("poll redis-server").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("redis-server on port {} ignored SIGTERM", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port and directory after [`stop`](Self::stop).
    ///
    /// Returns once the server has loaded its data: a persistent server answers PING while it
    /// still replays its append-only file, but refuses data commands with `LOADING` until it
    /// is done. (Clients that connect meanwhile, such as a running sluice, do see `LOADING`.)
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "redis-server on port {} is already running",
            self.port
        );
        let child = self.spawn(self.port);
        match self.await_ready(child) {
            Ok(child) => self.child = Some(child),
            Err(why) => panic!(
                "redis-server did not come back on port {}: {why}\n{}",
                self.port,
                self.log()
            ),
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while self.loading() {
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} still loading its data after {STARTUP_TIMEOUT:?}\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes the next [`start`](Self::start) of a persistent server replay its data slowly, as
    /// a server with a real data set does: for about `keys` × `per_key` it accepts connections
    /// but answers data commands with `LOADING`, so clients reconnect into that window.
    ///
    /// Adds `keys` small `filler:<n>` keys and rewrites the append-only file (waiting for the
    /// rewrite), so the data is loaded key by key from an RDB base, where Redis applies its
    /// `key-load-delay` setting.
    pub fn slow_down_next_load(&mut self, keys: usize, per_key: Duration) {
        assert!(
            self.persistent,
            "only a persistent server loads data on start"
        );
        let mut con = self.conn();
        let mut pipe = redis::pipe();
        for n in 0..keys {
            pipe.cmd("SET").arg(format!("filler:{n}")).arg(n).ignore();
        }
        pipe.query::<()>(&mut con)
            .unwrap_or_else(|e| panic!("SET filler keys: {e}"));
        redis::cmd("BGREWRITEAOF")
            .query::<()>(&mut con)
            .unwrap_or_else(|e| panic!("BGREWRITEAOF: {e}"));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query(&mut con)
                .unwrap_or_else(|e| panic!("INFO persistence: {e}"));
            let busy = info.lines().any(|line| {
                let line = line.trim();
                line == "aof_rewrite_in_progress:1" || line == "aof_rewrite_scheduled:1"
            });
            if !busy {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the AOF rewrite did not finish within {STARTUP_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.key_load_delay_us = u64::try_from(per_key.as_micros()).expect("a short delay");
    }

    /// Whether the server is still loading its data set (`loading:1` in INFO persistence);
    /// an unreachable server counts as loading.
    fn loading(&self) -> bool {
        let Ok(mut con) = redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
        else {
            return true;
        };
        let info: redis::RedisResult<String> =
            redis::cmd("INFO").arg("persistence").query(&mut con);
        info.map_or(true, |info| {
            info.lines().any(|line| line.trim() == "loading:1")
        })
    }

    fn spawn_on_free_port(persistent: bool) -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            persistent,
            key_load_delay_us: 0,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            let child = server.spawn(server.port);
            match server.await_ready(child) {
                Ok(child) => {
                    server.child = Some(child);
                    return server;
                }
                Err(why) => failures.push(format!("port {}: {why}", server.port)),
            }
        }
        panic!(
            "redis-server did not start:\n{}\n{}",
            failures.join("\n"),
            server.log()
        );
    }

    fn spawn(&self, port: u16) -> Child {
        let binary = std::env::var_os(SERVER_ENV).unwrap_or_else(|| "redis-server".into());
        let mut command = Command::new(&binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
            command.args(["--key-load-delay", &self.key_load_delay_us.to_string()]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "{} not found: install Redis 7 or later to run these tests, or name a \
                 redis-server binary in {SERVER_ENV}",
                binary.to_string_lossy()
            ),
            Err(e) => panic!("spawn {}: {e}", binary.to_string_lossy()),
        }
    }

    /// Waits until the server answers PING, and checks that the answer comes from *our*
    /// process: if another test grabbed the port first, our server exits and theirs would
    /// otherwise answer in its place.
    fn await_ready(&self, mut child: Child) -> Result<Child, String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("redis-server exited with {status}"));
            }
            if let Some(pid) = self.answering_pid() {
                if pid == child.id() {
                    return Ok(child);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the port is taken by another redis-server (pid {pid})"
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer to PING within {STARTUP_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `process_id` of whatever Redis answers on our port, if anything does.
    fn answering_pid(&self) -> Option<u32> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut con).ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// The server's own log, for panic messages when it misbehaves.
    fn log(&self) -> String {
        let path = self.dir.path().join("redis.log");
        match fs::read_to_string(&path) {
            Ok(log) => format!("--- {} ---\n{log}", path.display()),
            Err(_) => String::from("(no redis log)"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to a child process that has not been reaped yet.
pub(crate) fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet (we hold
    // its `Child` and have not waited on it), so the pid still names our process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// A port nothing listens on right now: bind port 0 and let the kernel pick.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}
