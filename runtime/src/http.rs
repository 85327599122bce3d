//! `--http ADDR`: `/metrics` (Prometheus text), `/health` (the process is
//! up: plain `ok`), `/ready` (JSON: whether each pipeline consumes, and why
//! not; 503 while any cannot), `/rollouts` (plugin versions per stage, see
//! [`crate::plugin::rollout`]), `POST /pipelines/{name}/stages/{n}/promote`
//! and `.../rollback` (what `sluice plugin promote|rollback` send), and `/`,
//! a live dashboard drawn from the metrics.

use anyhow::{Context as _, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// Installs the process-wide metrics recorder. Without it the `metrics`
/// macros in the runtime record nothing and cost next to nothing.
pub fn install_metrics() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        // Counts, not seconds: powers of two up to the largest sensible batch.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("sluice_batch_size".into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ],
        )?
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ])?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// Marks plugin file `plugin` at `hash` as the version `pipeline` runs
/// (`current`) or no longer runs: the `sluice_plugin_info` gauge, 1 for
/// the version in use, which the dashboard shows.
pub fn plugin_info(pipeline: &str, plugin: &std::path::Path, hash: &str, current: bool) {
    let file = plugin
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    metrics::gauge!("sluice_plugin_info", "pipeline" => pipeline.to_string(), "plugin" => file, "hash" => hash.to_string())
        .set(if current { 1.0 } else { 0.0 });
}

/// Serves the endpoints on `addr` until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
) -> Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || std::future::ready(readiness(ready.load(Ordering::Relaxed)))),
        )
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/rollouts", get(|| async { rollouts() }))
        .route(
            "/pipelines/{pipeline}/stages/{stage}/{action}",
            axum::routing::post(control),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /health, /ready and the dashboard");
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    Ok(())
}

/// `/rollouts`: per pipeline and processor, the serving version, the one on
/// trial, the previous one, failure rates and the history of what served.
fn rollouts() -> impl IntoResponse {
    let mut pipelines: Vec<_> = crate::plugin::rollout::registered().into_iter().collect();
    pipelines.sort_by(|a, b| a.0.cmp(&b.0));
    let body: serde_json::Map<String, serde_json::Value> = pipelines
        .into_iter()
        .map(|(name, stages)| (name, stages.iter().map(|s| s.report()).collect()))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{}\n", serde_json::Value::Object(body)),
    )
}

/// `POST /pipelines/{pipeline}/stages/{stage}/promote|rollback`: what
/// `sluice plugin promote|rollback` sends. 200 with the hash that serves
/// now, or 409 (nothing to do) / 404 (no such pipeline or stage) with why.
async fn control(
    axum::extract::Path((pipeline, stage, action)): axum::extract::Path<(String, usize, String)>,
) -> impl IntoResponse {
    let act = move || {
        let s = crate::plugin::rollout::find(&pipeline, stage)
            .map_err(|e| (StatusCode::NOT_FOUND, e))?;
        match action.as_str() {
            "promote" => s.promote(crate::plugin::rollout::How::Promote),
            "rollback" => s.rollback(crate::plugin::MANUAL),
            other => {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!("no action `{other}`; valid: promote, rollback"),
                ));
            }
        }
        .map(|hash| (pipeline, hash))
        .map_err(|e| (StatusCode::CONFLICT, e))
    };
    // Off the async threads: it records the versions in Redis.
    let result = tokio::task::spawn_blocking(act)
        .await
        .unwrap_or_else(|e| Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())));
    match result {
        Ok((pipeline, hash)) => (
            StatusCode::OK,
            format!("{pipeline} stage {stage}: {hash} serves\n"),
        ),
        Err((status, why)) => (status, format!("{why}\n")),
    }
}

/// `/ready`: 200 once every pipeline found at start was started and each
/// is consuming; 503 while `started` is false or any pipeline is held up,
/// with the reasons, as JSON:
///
/// ```json
/// {"ready": false, "starting": false, "pipelines": [{"name": "orders",
///   "consuming": false, "reasons": [{"reason": "redis_unreachable",
///   "detail": "..."}]}]}
/// ```
///
/// Reasons: `redis_unreachable`, `group_missing`, `not_started` (invalid
/// file, plugin failed to load or initialise), `sink_backoff`.
fn readiness(started: bool) -> impl IntoResponse {
    let pipelines = crate::readiness::report();
    let ready = started && pipelines.iter().all(|p| p.consuming);
    let body = serde_json::json!({
        "ready": ready,
        "starting": !started,
        "pipelines": pipelines,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
}

/// The page at `/`: one card per pipeline with throughput, latency
/// percentiles, lag, pending, dead letters and errors over the last
/// minutes, its plugins' hashes, and whether it is stalled, blocked or
/// waiting on a sink in backoff. Self-contained: no CDN to reach.
const DASHBOARD: &str = include_str!("dashboard.html");
