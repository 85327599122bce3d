//! `--http ADDR`: `/metrics` (Prometheus text), `/health` (the process is
//! up: plain `ok`), `/ready` (JSON: whether each pipeline consumes, and why
//! not; 503 while any cannot), and `/`, a live dashboard drawn from the
//! metrics.

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
        .route("/", get(|| async { Html(DASHBOARD) }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /health, /ready and the dashboard");
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    Ok(())
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

/// A page that polls `/metrics` and shows per-pipeline counts and rates.
const DASHBOARD: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>sluice</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 4px 12px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; } .dim { color: #888; }
</style></head>
<body><h1>sluice</h1><p class="dim" id="at">loading…</p>
<table><thead><tr><th>pipeline</th><th>delivered</th><th>dropped</th><th>retried</th><th>dead-lettered</th><th>reclaimed</th><th>msgs/s</th></tr></thead>
<tbody id="rows"></tbody></table>
<script>
let last = {}, lastAt = 0;
function parse(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^(sluice_\w+)\{([^}]*)\} ([0-9.e+-]+)$/);
    if (!m) continue;
    const labels = Object.fromEntries([...m[2].matchAll(/(\w+)="([^"]*)"/g)].map(x => [x[1], x[2]]));
    const p = labels.pipeline; if (!p) continue;
    const row = out[p] = out[p] || {};
    const key = m[1] === "sluice_messages_total" ? labels.status : m[1];
    row[key] = (row[key] || 0) + Number(m[3]);
  }
  return out;
}
async function tick() {
  const now = Date.now(), rows = parse(await (await fetch("/metrics")).text());
  const dt = (now - lastAt) / 1000;
  document.getElementById("rows").innerHTML = Object.keys(rows).sort().map(p => {
    const r = rows[p], total = ["delivered", "dropped", "dead_lettered"].reduce((a, k) => a + (r[k] || 0), 0);
    const prev = last[p] || total, rate = lastAt ? Math.max(0, (total - prev) / dt) : 0;
    last[p] = total;
    return `<tr><td>${p}</td><td>${r.delivered||0}</td><td>${r.dropped||0}</td><td>${r.retried||0}</td>` +
      `<td>${r.dead_lettered||0}</td><td>${r.sluice_reclaimed_total||0}</td><td>${rate.toFixed(0)}</td></tr>`;
  }).join("");
  lastAt = now;
  document.getElementById("at").textContent = "updated " + new Date(now).toLocaleTimeString();
}
tick(); setInterval(tick, 2000);
</script></body></html>
"#;
