//! End-to-end tests: the real `sluice` binary against real `redis-server` processes.
//!
//! Needs `redis-server` (7+) on PATH and the example plugins built (`scripts/build-plugins`).
//! Run with `cargo test -p sluice --test e2e`. Each test owns its Redis on a free port, so
//! tests run in parallel; `support` explains the harness.
//!
//! - `bytes`: every byte value in names and values, empty ones and MiB-sized ones come out
//!   byte for byte, or are dead-lettered with the reason where they cannot.
//! - `cluster`: stream and list pipelines, dead letters, `atomic`, the key-value store,
//!   `status`/`pending`/`dlq`, `CLUSTER FAILOVER` and a killed master on a six-node Redis
//!   Cluster; what `validate` refuses there; partitioned stream families on one Redis and on
//!   a cluster with two processes, one killed mid-run.
//! - `cli`: the inspection commands (`validate`, `status`, `dlq`, `pending`) and their errors.
//! - `delivery`: what reaches the sink and what is acked.
//! - `sinks`: pubsub, list, file and stdout sinks, `id_field`, routing by `to` and `route = "all"`.
//! - `guarantees`: the delivery promises under crashes, outages, poison and runaway plugins.
//! - `holes`: the paths where a message could be lost, written twice or dead-lettered early:
//!   out-of-order `id_field` ids, killed connections, Redis restarted empty, retries under a
//!   backlog, transient write refusals, trimmed pending entries, dead consumers, fan-out
//!   children, a slow plugin compile.
//! - `dlq_replay`: `sluice dlq replay` back onto a list, a channel or a stream.
//! - `group_change`: an edit that changes the consumer group warns about the backlog left.
//! - `list_recovery`: list sources through crashes, failed settles and take-overs.
//! - `operations`: `/metrics` counts exactly what was sent; group gauges; `/ready` with
//!   reasons; the dashboard in headless Chromium (screenshot in target/test-artifacts/).
//! - `pubsub_keepalive`: a silent or killed subscription is noticed and renewed.
//! - `plugins`: core-module plugins (WAT, C) in real pipelines, and their sandbox limits.
//! - `reload`: plugin swaps and pipeline file edits while messages flow; the compile cache.
//! - `scaffold`: `plugin new` in every language builds with the command it prints and passes
//!   `plugin test`.
//! - `rollout`: `plugin diff` on live traffic, shadow and canary rollouts, rollback, promote.
//! - `shutdown`: SIGTERM drains, a restart resumes, nothing is lost or duplicated.
//! - `sources`: pub/sub and list sources, several streams, a Python plugin, the bridge
//!   pipelines in `pipelines/`.
//! - `validate`: config errors as `.toml` → `.err` snapshots (`SLUICE_BLESS=1` rewrites them).

#[allow(
    dead_code,
    reason = "the harness also serves tests that only some issues need"
)]
mod support;

mod bytes;
mod cli;
mod cluster;
mod delivery;
mod dlq_replay;
mod group_change;
mod guarantees;
mod holes;
mod list_recovery;
mod operations;
mod plugins;
mod pubsub_keepalive;
mod reload;
mod rollout;
mod scaffold;
mod shutdown;
mod sinks;
mod sources;
mod validate;
