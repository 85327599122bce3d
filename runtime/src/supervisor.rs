//! Owns the running pipelines: loads and validates their files, runs them,
//! applies edits while they run, and drains them on shutdown.
//!
//! Edits are applied per file, building the new before stopping the old:
//! - a new valid file starts its pipeline;
//! - a deleted file drains and stops its pipeline;
//! - a changed file whose only change is `[processor.config]` re-inits the
//!   plugins in place; any other change builds the new pipeline, then drains
//!   the old one and starts the new;
//! - an invalid edit is reported and the last good version keeps running;
//! - a changed plugin file is compiled off the async threads, initialised,
//!   and swapped in between batches, or, under `rollout = "shadow"` or
//!   `"canary"`, put on trial beside the serving version
//!   ([`crate::plugin::Stage::offer`]);
//! - a change that moves a stream pipeline to another group (its `group`,
//!   `stream`, name or Redis) warns with the backlog the old group keeps
//!   and nobody reads any more ([`crate::backlog`]).
//!
//! Other pipelines never pause for any of this.

use crate::backlog;
use crate::config::{self, ConfigError, Pipeline};
use crate::pipeline::{self, Context};
use crate::plugin::{Engine, Offered, Stage, Version};
use crate::watch::{self, Watcher};
use anyhow::{Result, bail};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long shutdown waits for pipelines to finish their in-flight batches.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// Loads and validates pipeline `files` (see [`config::pipeline_files`];
/// plugins compiled and link-checked). Returns the valid pipelines and the
/// errors of the rest.
pub fn load_all(files: &[PathBuf], engine: &Engine) -> (Vec<Pipeline>, Vec<ConfigError>) {
    let check = |path: &Path| engine.load(path).map(drop).map_err(|e| format!("{e:#}"));
    load_all_with(files, &check)
}

/// [`load_all`] with `check` judging each plugin file.
fn load_all_with(
    files: &[PathBuf],
    check: &dyn Fn(&Path) -> Result<(), String>,
) -> (Vec<Pipeline>, Vec<ConfigError>) {
    let mut valid: Vec<Pipeline> = Vec::new();
    let mut errors = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match config::load_file(file, check) {
            Ok(p) => {
                if let Some(other) = names.get(&p.name) {
                    errors.push(ConfigError {
                        file: file.clone(),
                        line: 1,
                        col: 1,
                        key: "name".into(),
                        message: format!(
                            "pipeline `{}` is already defined by {}; pipeline names must be unique (set `name`)",
                            p.name,
                            other.display()
                        ),
                    });
                    continue;
                }
                names.insert(p.name.clone(), file.clone());
                valid.push(p);
            }
            Err(errs) => errors.extend(errs),
        }
    }
    (valid, errors)
}

/// A pipeline that is running.
struct Running {
    pipeline: Pipeline,
    stages: Vec<Arc<Stage>>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Asks it to stop and waits until its in-flight batches are settled.
    async fn drain(self) {
        self.stop.cancel();
        if let Err(e) = self.done.await {
            error!(pipeline = %self.pipeline.name, "pipeline task failed: {e}");
        }
        crate::readiness::stopped(&self.pipeline.name);
        crate::plugin::rollout::unregister(&self.pipeline.name);
    }
}

struct Supervisor {
    paths: Vec<PathBuf>,
    ctx: Context,
    /// By pipeline file (normalized path).
    running: HashMap<PathBuf, Running>,
    /// Watches the pipeline paths and the plugins' folders (`--no-watch`: none).
    watcher: Option<Watcher>,
    /// Files whose pipeline could not start, with its name: reported by
    /// `/ready` until the file is fixed or removed.
    not_started: HashMap<PathBuf, String>,
}

/// Runs every valid pipeline under `paths` until `cancel`, then drains.
/// With `watch`, applies edits to pipeline files and plugins as they happen.
/// Fails if no pipeline is valid at start.
pub async fn run(
    paths: Vec<PathBuf>,
    ctx: Context,
    cancel: CancellationToken,
    watch: bool,
) -> Result<()> {
    let mut sup = Supervisor {
        paths,
        ctx,
        running: HashMap::new(),
        // Watching starts before any pipeline does: an edit made as soon
        // as output appears must not be missed.
        watcher: if watch { Some(Watcher::new()?) } else { None },
        not_started: HashMap::new(),
    };
    sup.reload_pipelines().await?;
    if sup.running.is_empty() {
        bail!("no valid pipeline to run");
    }
    sup.ctx
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        let changed = tokio::select! {
            _ = cancel.cancelled() => break,
            changed = next_change(sup.watcher.as_mut()) => changed,
        };
        sup.swap_plugins(&changed).await;
        if changed
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "toml"))
            && let Err(e) = sup.reload_pipelines().await
        {
            error!("cannot reload pipelines: {e:#}");
        }
    }
    info!(
        pipelines = sup.running.len(),
        "shutting down: finishing in-flight batches"
    );
    let names: Vec<String> = sup
        .running
        .values()
        .map(|r| r.pipeline.name.clone())
        .collect();
    let drains = futures::future::join_all(sup.running.into_values().map(Running::drain));
    if tokio::time::timeout(DRAIN_DEADLINE, drains).await.is_err() {
        warn!(
            pipelines = ?names,
            "drain deadline of {}s passed; exiting with their batches pending (they will be redelivered)",
            DRAIN_DEADLINE.as_secs()
        );
    }
    Ok(())
}

async fn next_change(watcher: Option<&mut Watcher>) -> HashSet<PathBuf> {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// Watches the pipeline paths and the plugin folders of `pipelines`.
    fn watch(&mut self, pipelines: &[Pipeline]) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let plugins = pipelines
            .iter()
            .flat_map(|p| p.processors.iter().map(|p| p.plugin.clone()));
        for path in self.paths.iter().cloned().chain(plugins) {
            if let Err(e) = watcher.watch(&path) {
                warn!(path = %path.display(), "cannot watch for changes: {e}");
            }
        }
    }

    /// Loads every pipeline file and brings the running set in line with it.
    async fn reload_pipelines(&mut self) -> Result<()> {
        let (paths, engine) = (&self.paths, self.ctx.engine.clone());
        let files = config::pipeline_files(paths)?;
        // Consumer groups first: compiling a plugin can take seconds, and a
        // group created after that (at `$`) would skip what arrived meanwhile.
        let listed = files.clone();
        let (parsed, _) =
            tokio::task::spawn_blocking(move || load_all_with(&listed, &|_| Ok(()))).await?;
        for pipeline in &parsed {
            let file = watch::normalize(&pipeline.file);
            if !self.running.contains_key(&file) {
                pipeline::prepare_groups(pipeline, &self.ctx).await;
            }
        }
        let listed = files.clone();
        let (valid, errors) =
            tokio::task::spawn_blocking(move || load_all(&listed, &engine)).await?;
        let invalid: HashSet<PathBuf> = errors.iter().map(|e| watch::normalize(&e.file)).collect();
        let names: HashMap<PathBuf, String> = parsed
            .iter()
            .map(|p| (watch::normalize(&p.file), p.name.clone()))
            .collect();
        for e in &errors {
            let file = watch::normalize(&e.file);
            if let Some(running) = self.running.get(&file) {
                error!("invalid edit, keeping the running version: {e}");
                metrics::counter!("sluice_pipeline_reloads_total", "pipeline" => running.pipeline.name.clone(), "result" => "invalid")
                    .increment(1);
            } else {
                error!("invalid pipeline file, not started: {e}");
                let name = names.get(&file).cloned().unwrap_or_else(|| {
                    file.file_stem()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
                });
                self.set_not_started(file, name, e.to_string());
            }
        }
        let present: HashSet<PathBuf> = files.iter().map(|f| watch::normalize(f)).collect();
        let gone: Vec<PathBuf> = self
            .running
            .keys()
            .filter(|f| !present.contains(*f))
            .cloned()
            .collect();
        for file in gone {
            let running = self.running.remove(&file).expect("listed above");
            info!(pipeline = %running.pipeline.name, file = %file.display(), "pipeline file removed: draining and stopping");
            let name = running.pipeline.name.clone();
            running.drain().await;
            metrics::counter!("sluice_pipeline_reloads_total", "pipeline" => name, "result" => "removed").increment(1);
        }
        // Before they start, so no change to their plugins goes unseen.
        self.watch(&valid);
        let gone: Vec<PathBuf> = self
            .not_started
            .keys()
            .filter(|f| !present.contains(*f))
            .cloned()
            .collect();
        for file in gone {
            self.clear_not_started(&file);
        }
        for pipeline in valid {
            let file = watch::normalize(&pipeline.file);
            if invalid.contains(&file) {
                continue;
            }
            self.apply(file, pipeline).await;
        }
        Ok(())
    }

    /// Reports `file`'s pipeline `name` as not started, for `/ready`.
    fn set_not_started(&mut self, file: PathBuf, name: String, error: String) {
        self.clear_not_started(&file);
        crate::readiness::not_started(&name, error);
        self.not_started.insert(file, name);
    }

    fn clear_not_started(&mut self, file: &Path) {
        if let Some(name) = self.not_started.remove(file) {
            crate::readiness::stopped(&name);
        }
    }

    /// Starts, restarts or re-inits the pipeline of `file`, as its change needs.
    async fn apply(&mut self, file: PathBuf, pipeline: Pipeline) {
        let name = pipeline.name.clone();
        let Some(old) = self.running.get(&file) else {
            self.clear_not_started(&file);
            match self.start(pipeline).await {
                Ok(running) => {
                    self.running.insert(file, running);
                }
                Err(error) => self.set_not_started(file, name, error),
            }
            return;
        };
        if old.pipeline == pipeline {
            return;
        }
        if only_plugin_config_changed(&old.pipeline, &pipeline) {
            match reinit(old, &pipeline).await {
                Ok(()) => {
                    info!(pipeline = %name, "processor config changed: plugins re-initialised, consumers kept running");
                    metrics::counter!("sluice_pipeline_reloads_total", "pipeline" => name.clone(), "result" => "reinit")
                        .increment(1);
                    self.running.get_mut(&file).expect("present").pipeline = pipeline;
                }
                Err(e) => {
                    error!(pipeline = %name, "processor config change refused, keeping the running version: {e}");
                    metrics::counter!("sluice_pipeline_reloads_total", "pipeline" => name.clone(), "result" => "error")
                        .increment(1);
                }
            }
            return;
        }
        // Build the new version before touching the old: a failure keeps it.
        let started = Instant::now();
        let built = match pipeline::build(pipeline.clone(), &self.ctx).await {
            Ok(built) => built,
            Err(e) => {
                error!(pipeline = %name, "changed pipeline cannot start, keeping the running version: {e:#}");
                metrics::counter!("sluice_pipeline_reloads_total", "pipeline" => name.clone(), "result" => "error")
                    .increment(1);
                return;
            }
        };
        let old = self.running.remove(&file).expect("present");
        let left = backlog::left_behind(&old.pipeline, &pipeline, &self.ctx.default_url);
        info!(pipeline = %name, "pipeline file changed: draining the running version");
        old.drain().await;
        for g in &left {
            warn_left_behind(&name, &pipeline, g).await;
        }
        self.running.insert(file, spawn(built, pipeline));
        info!(pipeline = %name, ms = started.elapsed().as_millis() as u64, "pipeline restarted with the new config");
        metrics::counter!("sluice_pipeline_reloads_total", "pipeline" => name.clone(), "result" => "restarted").increment(1);
    }

    /// Builds and spawns `pipeline`; on failure, the error.
    async fn start(&self, pipeline: Pipeline) -> Result<Running, String> {
        let name = pipeline.name.clone();
        match pipeline::build(pipeline.clone(), &self.ctx).await {
            Ok(built) => Ok(spawn(built, pipeline)),
            Err(e) => {
                error!(pipeline = %name, "pipeline not started: {e:#}");
                Err(format!("{e:#}"))
            }
        }
    }

    /// Swaps in new versions of changed plugin files, stage by stage.
    async fn swap_plugins(&self, changed: &HashSet<PathBuf>) {
        for running in self.running.values() {
            for stage in &running.stages {
                let current = stage.current();
                if changed.contains(&watch::normalize(current.plugin.path())) {
                    swap_plugin(&self.ctx.engine, &running.pipeline.name, stage).await;
                }
            }
        }
    }
}

/// Warns that the edit of `pipeline` leaves group `g` behind, with the
/// backlog nobody will read (see [`backlog`]).
async fn warn_left_behind(name: &str, pipeline: &Pipeline, g: &backlog::GroupRef) {
    let group = (pipeline.source.kind == config::SourceType::Stream).then(|| pipeline.group());
    match backlog::describe(g).await {
        Ok(Some(b)) => warn!(
            pipeline = %name,
            stream = %g.stream,
            old_group = %g.group,
            group = %group.unwrap_or("none"),
            pending = b.pending,
            lag = %backlog::lag_text(b.lag),
            start = %pipeline.source.start,
            "the edit leaves the old consumer group behind: nothing reads it any more, its pending entries are never retried and its lag is never read (the new group starts at `start`); to keep them, restore the old group, or process them with `sluice pending`"
        ),
        Ok(None) => info!(
            pipeline = %name,
            stream = %g.stream,
            old_group = %g.group,
            "the edit moves the pipeline off this group, which no longer exists"
        ),
        Err(e) => warn!(
            pipeline = %name,
            stream = %g.stream,
            old_group = %g.group,
            "the edit leaves the old consumer group behind, and its backlog could not be read: {e:#}"
        ),
    }
}

fn spawn(built: pipeline::Built, pipeline: Pipeline) -> Running {
    let stop = CancellationToken::new();
    let stages = built.stages();
    let name = pipeline.name.clone();
    let token = stop.clone();
    crate::readiness::running(&name);
    crate::plugin::rollout::register(&name, &stages);
    let published = name.clone();
    tokio::task::spawn_blocking(move || crate::plugin::rollout::publish(&published));
    let done = tokio::spawn(async move {
        if let Err(e) = built.run(token).await {
            error!(pipeline = %name, "pipeline failed: {e:#}");
            crate::readiness::not_started(&name, format!("{e:#}"));
        }
    });
    Running {
        pipeline,
        stages,
        stop,
        done,
    }
}

/// Compiles the plugin file of `stage` again and, if it compiles and its
/// init accepts the stage's config, makes it the version for new batches.
async fn swap_plugin(engine: &Engine, pipeline: &str, stage: &Arc<Stage>) {
    let current = stage.current();
    let path = current.plugin.path().to_path_buf();
    let started = Instant::now();
    let (engine, settings) = (engine.clone(), current.settings.clone());
    let loaded = tokio::task::spawn_blocking(move || -> Result<_> {
        let plugin = engine.load(&path)?;
        Stage::check_init(&plugin, &settings).map_err(|e| anyhow::anyhow!("init failed: {e}"))?;
        Ok(plugin)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    let path = current.plugin.path();
    let candidate = stage.candidate();
    match loaded {
        Ok(plugin) if plugin.hash() == current.plugin.hash() => {}
        Ok(plugin)
            if candidate
                .as_ref()
                .is_some_and(|c| c.plugin.hash() == plugin.hash()) => {}
        Ok(plugin) => {
            let new_hash = plugin.short_hash().to_string();
            let offered = stage.offer(Version {
                plugin,
                settings: current.settings.clone(),
            });
            let published = pipeline.to_string();
            tokio::task::spawn_blocking(move || crate::plugin::rollout::publish(&published));
            let ms = started.elapsed().as_millis() as u64;
            match offered {
                Offered::Swapped(_) => {
                    crate::http::plugin_info(pipeline, path, current.plugin.short_hash(), false);
                    crate::http::plugin_info(pipeline, path, &new_hash, true);
                    info!(
                        pipeline = %pipeline,
                        plugin = %path.display(),
                        old = %current.plugin.short_hash(),
                        new = %new_hash,
                        ms,
                        "plugin swapped; new batches use the new version"
                    );
                    metrics::counter!("sluice_plugin_swaps_total", "pipeline" => pipeline.to_string(), "result" => "ok").increment(1);
                }
                Offered::OnTrial => {
                    info!(
                        pipeline = %pipeline,
                        plugin = %path.display(),
                        serving = %current.plugin.short_hash(),
                        candidate = %new_hash,
                        rollout = ?stage.policy().mode,
                        ms,
                        "new plugin version on trial; the serving version keeps serving until it is promoted"
                    );
                    metrics::counter!("sluice_plugin_swaps_total", "pipeline" => pipeline.to_string(), "result" => "trial").increment(1);
                }
                Offered::Refused => {
                    warn!(pipeline = %pipeline, plugin = %path.display(), hash = %new_hash, "this plugin version was rolled back; not rolling it out again until the file changes");
                }
            }
        }
        Err(e) => {
            error!(pipeline = %pipeline, plugin = %path.display(), "new plugin version refused, keeping {}: {e:#}", current.plugin.short_hash());
            metrics::counter!("sluice_plugin_swaps_total", "pipeline" => pipeline.to_string(), "result" => "error").increment(1);
        }
    }
}

/// True when `new` differs from `old` only in `[processor.config]` tables.
fn only_plugin_config_changed(old: &Pipeline, new: &Pipeline) -> bool {
    let strip = |p: &Pipeline| {
        let mut p = p.clone();
        p.processors.iter_mut().for_each(|proc| proc.config.clear());
        p
    };
    old.processors.len() == new.processors.len() && strip(old) == strip(new)
}

/// Re-initialises each stage of `running` with the config of `new`: all
/// stages' inits must accept before any is swapped.
async fn reinit(running: &Running, new: &Pipeline) -> Result<()> {
    let mut next = Vec::new();
    for (stage, proc) in running.stages.iter().zip(&new.processors) {
        let current = stage.current();
        let mut settings = current.settings.clone();
        settings.config = config::plugin_config(&proc.config);
        let (plugin, check) = (current.plugin.clone(), settings.clone());
        tokio::task::spawn_blocking(move || Stage::check_init(&plugin, &check))
            .await?
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: init refused the new config: {e}",
                    proc.plugin.display()
                )
            })?;
        next.push(Version {
            plugin: current.plugin.clone(),
            settings,
        });
    }
    for (stage, version) in running.stages.iter().zip(next) {
        stage.swap(version);
    }
    Ok(())
}
