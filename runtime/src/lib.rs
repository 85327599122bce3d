//! Sluice: stream processing on Redis with WebAssembly processors.
//!
//! A pipeline file binds a Redis source through processor plugins to sinks.
//! The runtime owns delivery; plugins are pure functions over batches.
//!
//! ```text
//! config      parse + validate pipeline files (errors name file, line, key)
//! supervisor  loads pipelines, runs them, applies edits (diff, build new, swap), drains
//! watch       debounced file watching for pipeline files and plugins
//! pipeline    per pipeline: N consumers, each read -> process -> deliver -> settle
//! source      stream: XREADGROUP (own pending first), group creation, XACK
//! plugin      the only module that knows wasmtime: compile, instances, limits
//! sink        where records go (pipelined writes), routing by `to`
//! ack         delivery status per message decides ack, retry or dead letter
//! atomic      `atomic = true`: output, dead letters and XACK in one script
//! backlog     what a group left behind by an edit still holds (pending, lag)
//! logging     `--log-format text|json`, RUST_LOG
//! message     the message model shared by all of the above
//! conn        Redis connections with timeouts that fit their use
//! resp        the hot paths (a stream source's reads, a stream sink's XADDs) on plain RESP connections
//! embedded    `--redis embedded`: a private redis-server
//! dlq         `sluice dlq`: list, replay and purge dead letters
//! http        `--http`: /metrics, /health, /ready and a dashboard
//! group_stats per-group gauges (lag, pending, oldest pending, dead letters) polled for /metrics
//! readiness   why each pipeline is or is not consuming, for /ready
//! status      `sluice status`: lag, pending and dead letters per group, list and pub/sub source
//! pending     `sluice pending`: inspect, ack or claim pending entries by hand
//! plugin_test `sluice plugin test`: run a plugin on sample messages, no Redis
//! plugin_bench `sluice plugin bench`: a plugin's cost per message by batch size
//! scaffold    `sluice plugin new`: a processor project per language, from templates
//! plugin_diff `sluice plugin diff`: two plugin versions on the same messages, compared
//! progress    progress bars for long command-line work, on a terminal only
//! ```
//!
//! Data flow for one batch:
//!
//! ```text
//! XREADGROUP -> Chain::process (blocking thread, one call per stage)
//!   -> ack::deliver (XADD per sink, pipelined) -> dead letters -> XACK
//! ```
#![warn(missing_docs)]

pub mod ack;
pub mod atomic;
pub mod backlog;
pub mod config;
pub mod conn;
pub mod dlq;
pub mod embedded;
pub mod group_stats;
pub mod http;
pub mod logging;
pub mod message;
pub mod pending;
pub mod pipeline;
pub mod plugin;
pub mod plugin_bench;
pub mod plugin_diff;
pub mod plugin_test;
pub mod progress;
pub mod readiness;
pub(crate) mod resp;
pub mod scaffold;
pub mod sink;
pub mod source;
pub mod status;
pub mod supervisor;
pub mod watch;
