//! Owns the running pipelines: loads and validates their files, builds them,
//! runs them until shutdown, and drains them within a deadline.

use crate::config::{self, ConfigError, Pipeline};
use crate::pipeline::{self, Context};
use anyhow::{Result, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// How long shutdown waits for pipelines to finish their in-flight batches.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// Loads and validates the pipeline files under `paths` (plugins compiled
/// and link-checked). Returns the valid pipelines and the errors of the rest.
pub fn load_all(
    paths: &[PathBuf],
    engine: &crate::plugin::Engine,
) -> Result<(Vec<Pipeline>, Vec<ConfigError>)> {
    let files = config::pipeline_files(paths)?;
    if files.is_empty() {
        bail!(
            "no pipeline files (*.toml) in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let check = |path: &Path| engine.load(path).map(drop).map_err(|e| format!("{e:#}"));
    let mut valid: Vec<Pipeline> = Vec::new();
    let mut errors = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match config::load_file(&file, &check) {
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
                names.insert(p.name.clone(), file);
                valid.push(p);
            }
            Err(errs) => errors.extend(errs),
        }
    }
    Ok((valid, errors))
}

/// Runs every valid pipeline under `paths` until `cancel`, then drains.
/// Invalid files are reported and not started; if none is valid, fails.
pub async fn run(paths: Vec<PathBuf>, ctx: Context, cancel: CancellationToken) -> Result<()> {
    let engine = ctx.engine.clone();
    let (pipelines, errors) =
        tokio::task::spawn_blocking(move || load_all(&paths, &engine)).await??;
    for e in &errors {
        error!("invalid pipeline file, not started: {e}");
    }
    if pipelines.is_empty() {
        bail!("no valid pipeline to run");
    }
    let tracker = TaskTracker::new();
    let mut started = 0;
    for p in pipelines {
        let name = p.name.clone();
        match pipeline::build(p, &ctx).await {
            Ok(built) => {
                started += 1;
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    if let Err(e) = built.run(cancel).await {
                        error!(pipeline = %name, "pipeline failed: {e:#}");
                    }
                });
            }
            Err(e) => error!(pipeline = %name, "pipeline not started: {e:#}"),
        }
    }
    tracker.close();
    if started == 0 {
        bail!("no pipeline could be started");
    }
    cancel.cancelled().await;
    info!(
        pipelines = started,
        "shutting down: finishing in-flight batches"
    );
    if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            still_running = tracker.len(),
            "drain deadline of {}s passed; exiting with their batches pending (they will be redelivered)",
            DRAIN_DEADLINE.as_secs()
        );
    }
    Ok(())
}
