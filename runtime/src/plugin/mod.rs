//! Processor plugins: the only module that knows wasmtime.
//!
//! - [`Engine`]: one per process; compiles plugins, owns the epoch ticker that
//!   enforces `timeout_ms`.
//! - [`Plugin`]: one compiled and link-checked .wasm, identified by the
//!   SHA-256 of its bytes.
//! - [`Chain`]: one per consumer; the pipeline's processors as warm
//!   instances, called once per batch on a blocking thread.
//!
//! Plugins implement the `processor` world of `sdk/wit/sluice.wit`.

mod chain;
mod host;

pub use chain::{Chain, Stage, StageSettings};

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
}

impl Engine {
    /// Builds the engine and starts the epoch ticker thread (it ends when
    /// the engine is dropped).
    pub fn new() -> Result<Self> {
        let mut config = wasmtime::Config::new();
        // Epochs, not fuel: timeouts cost ~5-12% per call instead of up to 60%.
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)?;
        let inner = Arc::new(EngineInner {
            engine,
            linker,
            compiled: Mutex::default(),
        });
        let weak: Weak<EngineInner> = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(inner) = weak.upgrade() {
                    inner.engine.increment_epoch();
                    drop(inner);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Engine { inner })
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
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| anyhow::anyhow!("{}", first_line(&e)))
            .context("not a WebAssembly component")?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("it imports something sluice does not provide")?;
        let pre = bindings::ProcessorPre::new(pre)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("it does not export the sluice:processor world (init and process)")?;
        Ok(Plugin {
            pre,
            hash,
            path: path.to_path_buf(),
        })
    }
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
    hash: String,
    path: PathBuf,
}

impl Plugin {
    /// SHA-256 of the .wasm bytes, hex: names the exact version in logs and dead letters.
    pub fn hash(&self) -> &str {
        &self.hash
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
