//! What a plugin instance sees of the host: a sandboxed WASI (no files,
//! network or environment beyond `[processor.grants]`), the `log` and `kv`
//! imports, and its limits.

use super::bindings::sluice::processor::{kv, log, types};
use super::guest_log::{GuestLog, GuestOutput, Level, Origin, StderrTail};
use super::memory_kv::MemoryKv;
use crate::config::Grants;
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

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
    /// `log` calls, stdout and stderr, tagged and rate-limited.
    pub log: GuestLog,
}

impl Host {
    pub fn new(
        pipeline: Arc<str>,
        plugin: Arc<str>,
        memory_bytes: usize,
        kv: Option<crate::conn::Client>,
        grants: &Grants,
    ) -> Result<Self> {
        let stderr = StderrTail::default();
        let guest_log = GuestLog::new(pipeline.clone(), plugin);
        let mut builder = WasiCtx::builder();
        // Granted folders appear at their own paths, read-only.
        for dir in &grants.dirs {
            builder
                .preopened_dir(dir, dir, FsPerms::ReadOnly)
                .map_err(|e| anyhow::anyhow!("cannot open granted folder {dir}: {e}"))?;
        }
        for name in &grants.env {
            if let Ok(value) = std::env::var(name) {
                builder.env(name, value);
            }
        }
        builder.stdout(GuestOutput::stdout(guest_log.clone()));
        builder.stderr(GuestOutput::stderr(guest_log.clone(), stderr.clone()));
        Ok(Host {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limits: Limits {
                max_bytes: memory_bytes,
                hit: false,
            },
            stderr,
            kv: Kv {
                memory: kv.is_none().then(MemoryKv::default),
                client: kv,
                conn: None,
                prefix: format!("sluice:kv:{{{pipeline}}}:"),
            },
            log: guest_log,
        })
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
        let level = match level {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        self.log.line(Origin::Log(level), &message);
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
    /// Used instead when there is no Redis (`plugin test`).
    memory: Option<MemoryKv>,
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
        if let Some(memory) = &mut self.kv.memory {
            return Ok(memory.get(&key));
        }
        let key = self.kv.key(&key);
        self.kv.run(redis::cmd("GET").arg(key))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), String> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.kv.key(&key)).arg(&value);
        with_ttl(&mut cmd, ttl_ms)?;
        if let Some(memory) = &mut self.kv.memory {
            memory.set(key, value, ttl_ms);
            return Ok(());
        }
        self.kv.run(&mut cmd)
    }

    fn set_new(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.kv.key(&key)).arg(&value).arg("NX");
        with_ttl(&mut cmd, ttl_ms)?;
        if let Some(memory) = &mut self.kv.memory {
            return Ok(memory.set_new(key, value, ttl_ms));
        }
        // OK when stored, nil when the key was already there.
        self.kv.run::<Option<String>>(&mut cmd).map(|r| r.is_some())
    }

    fn delete(&mut self, key: String) -> Result<(), String> {
        if let Some(memory) = &mut self.kv.memory {
            memory.delete(&key);
            return Ok(());
        }
        let key = self.kv.key(&key);
        self.kv.run::<i64>(redis::cmd("DEL").arg(key)).map(drop)
    }

    fn incr(&mut self, key: String, by: i64) -> Result<i64, String> {
        if let Some(memory) = &mut self.kv.memory {
            return memory.incr(&key, by);
        }
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
