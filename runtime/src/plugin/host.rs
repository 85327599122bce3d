//! What a plugin instance sees of the host: a sandboxed WASI (no files,
//! network or environment), the `log` and `kv` imports, and its limits.

use super::bindings::sluice::processor::{kv, log, types};
use anyhow::Result;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What a stderr tail keeps: enough for a panic message and its location.
const STDERR_TAIL: usize = 4096;

/// How long a key-value call may wait on Redis before it fails (the plugin
/// sees an error it can handle; the call's own timeout still applies).
const KV_TIMEOUT: Duration = Duration::from_secs(2);

/// Store data of one plugin instance.
pub struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: Limits,
    /// The last bytes the guest wrote to stderr: Rust panics print there,
    /// and the text goes into the failure reason.
    pub stderr: StderrTail,
    kv: Kv,
    /// Log target fields.
    pipeline: Arc<str>,
    plugin: Arc<str>,
}

impl Host {
    pub fn new(
        pipeline: Arc<str>,
        plugin: Arc<str>,
        memory_bytes: usize,
        kv: Option<crate::conn::Client>,
    ) -> Self {
        let stderr = StderrTail::default();
        let mut builder = WasiCtx::builder();
        builder.stderr(stderr.clone());
        Host {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limits: Limits {
                max_bytes: memory_bytes,
                hit: false,
            },
            stderr,
            kv: Kv {
                client: kv,
                conn: None,
                prefix: format!("sluice:kv:{{{pipeline}}}:"),
            },
            pipeline,
            plugin,
        }
    }
}

pub fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    super::bindings::Processor::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    Ok(())
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Host {}

impl log::Host for Host {
    fn log(&mut self, level: log::Level, message: String) {
        let (pipeline, plugin) = (&*self.pipeline, &*self.plugin);
        match level {
            log::Level::Trace => {
                tracing::trace!(pipeline = %pipeline, plugin = %plugin, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(pipeline = %pipeline, plugin = %plugin, "{message}")
            }
            log::Level::Info => tracing::info!(pipeline = %pipeline, plugin = %plugin, "{message}"),
            log::Level::Warn => tracing::warn!(pipeline = %pipeline, plugin = %plugin, "{message}"),
            log::Level::Error => {
                tracing::error!(pipeline = %pipeline, plugin = %plugin, "{message}")
            }
        }
    }
}

/// The pipeline-scoped key-value store: keys live under
/// `sluice:kv:{<pipeline>}:` (one hash slot per pipeline on a cluster).
/// The guest call is synchronous and runs on a blocking thread, so a plain
/// blocking connection, opened on first use, fits.
struct Kv {
    client: Option<crate::conn::Client>,
    conn: Option<crate::conn::BlockingConn>,
    prefix: String,
}

impl Kv {
    fn run<T: redis::FromRedisValue>(&mut self, cmd: &mut redis::Cmd) -> Result<T, String> {
        let client = self
            .client
            .as_ref()
            .ok_or("the key-value store is not available here")?;
        if self.conn.is_none() {
            let conn = client.blocking(KV_TIMEOUT).map_err(|e| e.to_string())?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.query(cmd).map_err(|e| {
            // A broken connection is replaced on the next call.
            self.conn = None;
            e.to_string()
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl kv::Host for Host {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let key = self.kv.key(&key);
        self.kv.run(redis::cmd("GET").arg(key))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), String> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.kv.key(&key)).arg(value);
        with_ttl(&mut cmd, ttl_ms)?;
        self.kv.run(&mut cmd)
    }

    fn set_new(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.kv.key(&key)).arg(value).arg("NX");
        with_ttl(&mut cmd, ttl_ms)?;
        // OK when stored, nil when the key was already there.
        self.kv.run::<Option<String>>(&mut cmd).map(|r| r.is_some())
    }

    fn delete(&mut self, key: String) -> Result<(), String> {
        let key = self.kv.key(&key);
        self.kv.run::<i64>(redis::cmd("DEL").arg(key)).map(drop)
    }

    fn incr(&mut self, key: String, by: i64) -> Result<i64, String> {
        let key = self.kv.key(&key);
        self.kv.run(redis::cmd("INCRBY").arg(key).arg(by))
    }
}

/// `PX ttl`: Redis refuses 0, and a zero window means "expire now", which
/// is no use to anyone; say so rather than store forever.
fn with_ttl(cmd: &mut redis::Cmd, ttl_ms: Option<u64>) -> Result<(), String> {
    match ttl_ms {
        None => Ok(()),
        Some(0) => Err("ttl-ms must be at least 1".into()),
        Some(ms) => {
            cmd.arg("PX").arg(ms);
            Ok(())
        }
    }
}

/// Caps linear memory at `memory_mb`; remembers that it refused, so a trap
/// that follows is reported as a memory failure rather than a plain trap.
pub struct Limits {
    max_bytes: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Guest stderr: keeps the last [`STDERR_TAIL`] bytes and never refuses a
/// write (a refused write makes Rust's `eprintln!` panic).
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

impl StderrTail {
    /// The last line the guest wrote that says something (a panic message, usually).
    pub fn last_message(&self) -> Option<String> {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = buf.iter().copied().collect();
        drop(buf);
        let text = String::from_utf8_lossy(&bytes);
        // Skip Rust's "note: run with `RUST_BACKTRACE=1`" hint after a panic.
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        // Rust prints "panicked at src/lib.rs:1:2:" then the message on the next line.
        let msg = match lines.as_slice() {
            [.., at, msg] if at.contains("panicked at") => format!("{at} {msg}"),
            [.., last] => last.to_string(),
            [] => return None,
        };
        Some(msg.chars().take(500).collect())
    }
}

impl wasmtime_wasi::cli::IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend(bytes.iter());
        let excess = buf.len().saturating_sub(STDERR_TAIL);
        buf.drain(..excess);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}
