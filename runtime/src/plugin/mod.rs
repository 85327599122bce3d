//! Processor plugins: the only module that knows wasmtime.
//!
//! - [`Engine`]: one per process; compiles plugins, owns the epoch ticker that
//!   enforces `timeout_ms`.
//! - [`Plugin`]: one compiled and link-checked .wasm, identified by the
//!   SHA-256 of its bytes.
//! - [`Chain`]: one per consumer; the pipeline's processors as warm
//!   instances, called once per batch on a blocking thread.
//! - [`Stage`]: one processor shared by a pipeline's consumers: the version
//!   that serves and, under `rollout = "shadow"|"canary"`, a candidate
//!   beside it ([`rollout`]: policy, rollback judgement, history).
//!
//! Plugins implement the `processor` world of `sdk/wit/sluice.wit`, as a
//! component or as a plain core module that [`core_module`] wraps at load.

mod chain;
mod core_module;
mod guest_log;
mod host;
mod memory_kv;
pub mod rollout;

pub use chain::{Chain, MANUAL, Offered, Stage, StageSettings, Version};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wasmtime::component::{Component, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "processor",
        // Lower messages into the guest from borrowed host data: no copy of
        // every id, source and field before the one copy into guest memory.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// How often the epoch advances; a plugin call overruns `timeout_ms` by at most this.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The wasmtime engine and linker shared by every plugin of the process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: wasmtime::Engine,
    linker: Linker<host::Host>,
    /// Compiled plugins by content hash: validating and then running a
    /// pipeline, or several pipelines sharing a plugin, compile it once.
    compiled: Mutex<HashMap<String, Arc<Plugin>>>,
    /// Where compiled code is kept across runs, by content hash; `None` for
    /// no disk cache.
    cache_dir: Option<PathBuf>,
    /// Drives the epoch while plugin calls run.
    ticker: Arc<Ticker>,
    /// Whether it counts fuel (see [`Engine::with_fuel`]).
    fuel: bool,
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while at least one
/// plugin call is running, and sleeps otherwise: an idle process pays no
/// wake-ups for timeouts it does not need.
#[derive(Default)]
pub(crate) struct Ticker {
    running: std::sync::atomic::AtomicUsize,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Ticker {
    /// Marks a call as running until the guard is dropped.
    pub(crate) fn running(&self) -> Running<'_> {
        if self
            .running
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            == 0
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Running(self)
    }

    fn idle(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}

/// A running plugin call, as far as the epoch ticker knows.
pub(crate) struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Engine {
    /// Builds the engine and starts the epoch ticker thread (it ends when
    /// the engine is dropped). Compiled plugins are cached in `cache_dir`
    /// (see [`default_cache_dir`]) so restarts do not recompile.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self> {
        Self::with_fuel(cache_dir, false)
    }

    /// [`Engine::new`], counting fuel if `fuel`: only then can a processor
    /// set `fuel`. Counting costs every call of every plugin (~7-60%
    /// depending on the guest, against ~5-12% for the epoch that enforces
    /// `timeout_ms`), so it is on only when some pipeline asks for it.
    pub fn with_fuel(cache_dir: Option<PathBuf>, fuel: bool) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        // Epochs for timeouts: they cost ~5-12% per call instead of up to 60%.
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)?;
        let inner = Arc::new(EngineInner {
            engine,
            linker,
            compiled: Mutex::default(),
            cache_dir,
            ticker: Arc::default(),
            fuel,
        });
        let weak: Weak<EngineInner> = Arc::downgrade(&inner);
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(inner) = weak.upgrade() {
                    if inner.ticker.idle() {
                        drop(inner);
                        // Woken by the next call; the timeout only notices a dropped engine.
                        std::thread::park_timeout(std::time::Duration::from_secs(1));
                        continue;
                    }
                    inner.engine.increment_epoch();
                    drop(inner);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        let _ = inner.ticker.thread.set(thread.thread().clone());
        Ok(Engine { inner })
    }

    /// Whether processors may set `fuel` (see [`Engine::with_fuel`]).
    pub fn counts_fuel(&self) -> bool {
        self.inner.fuel
    }

    /// Reads, compiles and link-checks a plugin. Blocking and CPU-heavy
    /// (tens of ms for Rust, seconds for Python): call it off the async runtime.
    pub fn load(&self, path: &Path) -> Result<Arc<Plugin>> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.load_bytes(path, &bytes)
    }

    /// [`Engine::load`] for bytes already read.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<Plugin>> {
        let hash = hex::encode(Sha256::digest(bytes));
        if let Some(plugin) = self.cached(&hash) {
            return Ok(plugin);
        }
        let plugin = Arc::new(self.compile(path, bytes, hash.clone())?);
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, plugin.clone());
        Ok(plugin)
    }

    fn cached(&self, hash: &str) -> Option<Arc<Plugin>> {
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    fn compile(&self, path: &Path, bytes: &[u8], hash: String) -> Result<Plugin> {
        let component = match self.cached_on_disk(&hash) {
            Some(component) => component,
            None => {
                // Seconds for Python or JavaScript: say so, or a first run looks hung.
                let started = std::time::Instant::now();
                tracing::info!(plugin = %path.display(), "compiling {} (first run; cached afterwards)", path.display());
                // The hash stays that of the file, so the disk cache holds
                // the wrapped module and a restart skips the wrapping too.
                let wrapped;
                let bytes = if core_module::is_core_module(bytes) {
                    wrapped = core_module::componentize(bytes)?;
                    &wrapped[..]
                } else {
                    bytes
                };
                let component = Component::new(&self.inner.engine, bytes)
                    .map_err(|e| anyhow::anyhow!("{}", first_line(&e)))
                    .context("cannot compile it; a plugin is a WebAssembly component of the sluice:processor world (see sdk/wit), e.g. built with sluice-sdk or componentize-py")?;
                self.cache_on_disk(&hash, &component);
                tracing::info!(plugin = %path.display(), ms = started.elapsed().as_millis() as u64, "compiled");
                component
            }
        };
        check_imports(&self.inner.engine, &component)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("it imports something sluice does not provide")?;
        let pre = bindings::ProcessorPre::new(pre)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("it does not export the sluice:processor world (init and process)")?;
        let encoded = component
            .component_type()
            .get_export(&self.inner.engine, "process-encoded")
            .is_some();
        Ok(Plugin {
            pre,
            encoded,
            hash,
            path: path.to_path_buf(),
            ticker: self.inner.ticker.clone(),
        })
    }
}

impl Engine {
    fn cache_file(&self, hash: &str) -> Option<PathBuf> {
        self.inner
            .cache_dir
            .as_ref()
            // Code that counts fuel differs: keep both kinds side by side.
            .map(|d| {
                d.join(format!(
                    "{hash}{}.cwasm",
                    if self.inner.fuel { "-fuel" } else { "" }
                ))
            })
    }

    /// A component compiled earlier, if the cache has one this engine accepts
    /// (wasmtime refuses code from another version or configuration).
    fn cached_on_disk(&self, hash: &str) -> Option<Component> {
        let file = self.cache_file(hash)?;
        if !file.exists() {
            return None;
        }
        // SAFETY: the file is machine code that this program wrote for this
        // hash into its own cache folder; wasmtime checks that it was made
        // by a compatible engine. A file that fails the check is recompiled.
        match unsafe { Component::deserialize_file(&self.inner.engine, &file) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::debug!(file = %file.display(), "compiled-plugin cache entry not usable, recompiling: {e}");
                None
            }
        }
    }

    /// Stores compiled code for the next run. Best effort: a read-only or
    /// full disk only costs a recompile later.
    fn cache_on_disk(&self, hash: &str, component: &Component) {
        let Some(file) = self.cache_file(hash) else {
            return;
        };
        let write = || -> Result<()> {
            std::fs::create_dir_all(file.parent().expect("cache file has a folder"))?;
            let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
            // Write then rename, so a concurrent reader never sees half a file.
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &file)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!(file = %file.display(), "cannot cache the compiled plugin: {e:#}");
        }
    }
}

/// The compiled-plugin cache: `$SLUICE_CACHE_DIR` (empty: no cache), else
/// `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sluice"))
}

/// Refuses a component that imports an interface the host does not provide,
/// naming the import and the grant that would allow it, if any; the linker
/// then checks the provided ones' shapes.
fn check_imports(engine: &wasmtime::Engine, component: &Component) -> Result<()> {
    for (name, _) in component.component_type().imports(engine) {
        let package = name.split('/').next().unwrap_or(name);
        let package = package.split('@').next().unwrap_or(package);
        match package {
            // The world's own imports, and the WASI every language runtime
            // links against. Files, environment and sockets are there to
            // link, but empty unless granted (`dirs`, `env`; no network).
            "sluice:processor" | "wasi:io" | "wasi:clocks" | "wasi:random" | "wasi:cli"
            | "wasi:filesystem" | "wasi:sockets" => {}
            "wasi:http" => anyhow::bail!(
                "it imports `{name}`, which sluice does not provide and no grant allows (plugins get no network); \
                 build without it (componentize-js: `-d http fetch-event`)"
            ),
            _ => anyhow::bail!(
                "it imports `{name}`, which sluice does not provide and no grant allows; \
                 a plugin may import the sluice:processor world's `log` and `kv`, and WASI's \
                 io, clocks, random, cli, filesystem (folders in [processor.grants] dirs) and sockets (always refused)"
            ),
        }
    }
    Ok(())
}

fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A compiled, link-checked plugin. Cheap to share; instances are made from it.
pub struct Plugin {
    pre: bindings::ProcessorPre<host::Host>,
    /// Whether it exports `process-encoded` (the `batch-processor` world).
    encoded: bool,
    hash: String,
    path: PathBuf,
    /// The engine's epoch ticker: calls into this plugin keep it running.
    ticker: Arc<Ticker>,
}

impl Plugin {
    /// SHA-256 of the .wasm bytes, hex: names the exact version in logs and dead letters.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The call path its batches take: `encoded` when it exports
    /// `process-encoded`, else `typed`.
    pub fn call_path(&self) -> &'static str {
        if self.encoded { "encoded" } else { "typed" }
    }

    /// The first 12 hex digits of [`Plugin::hash`], for log lines.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("hash", &self.short_hash())
            .finish()
    }
}
