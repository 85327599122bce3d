//! Pipeline files: what users write, parsed strictly and validated before
//! anything connects or runs.
//!
//! Parsing is in two steps. Serde reads the file into the structs below
//! (unknown keys and wrong types are rejected with their line); then
//! [`load::validate`] checks what serde cannot (required keys per source
//! type, unique sink names, plugin files that exist and compile). Every error
//! is a [`ConfigError`] naming the file, line, key and what would be valid.

pub mod cluster;
mod load;

pub use load::{ConfigError, load_file, load_str, partition_key, partition_keys, pipeline_files};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Default Redis when neither the pipeline, `--redis` nor `$SLUICE_REDIS_URL` names one.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// One pipeline file, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Pipeline name: the consumer group default, the key-value scope and the
    /// label on every log line and metric. Default: the file's stem.
    pub name: Option<String>,
    /// Where the source (and by default the sinks) live.
    #[serde(default)]
    pub redis: RedisConfig,
    /// Where messages come from.
    pub source: SourceConfig,
    /// Plugins applied in order; none means records pass through unchanged.
    #[serde(default, rename = "processor")]
    pub processors: Vec<ProcessorConfig>,
    /// Where records go. The first one receives records that name no sink.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    /// Write a batch's output and its XACK in one MULTI/EXEC, so a crash
    /// never leaves output without ack or ack without output. Only for a
    /// stream source whose sinks are all streams on the same Redis.
    #[serde(default)]
    pub atomic: bool,
}

/// The `[redis]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Default: `--redis`, then `$SLUICE_REDIS_URL`, then [`DEFAULT_REDIS_URL`].
    pub url: Option<String>,
}

/// Kinds of source.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// A stream read through a consumer group: at-least-once, acked after success.
    Stream,
    /// Pub/sub channels and patterns: at-most-once, Redis keeps nothing.
    Pubsub,
    /// A list used as a reliable queue.
    List,
}

/// The `[source]` table. Flat rather than one struct per type so that serde
/// reports every unknown key with its own line; [`load::validate`] checks
/// that each key fits the chosen type.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `stream`, `pubsub` or `list`.
    #[serde(rename = "type")]
    pub kind: SourceType,
    /// Stream key (stream sources).
    pub stream: Option<String>,
    /// Several stream keys read by the same group (stream sources): each
    /// stream gets its own consumers, so the keys need not share a cluster
    /// slot. After validation it holds every stream, also for `stream`.
    pub streams: Option<Vec<String>>,
    /// A partitioned stream family (stream sources): `stream = "orders"`
    /// with `partitions = 16` reads `orders:{0}` .. `orders:{15}`, each
    /// partition its own hash tag (so they spread over a cluster's nodes)
    /// and its own lane, as with `streams`. After validation `streams`
    /// holds the partition keys.
    pub partitions: Option<u32>,
    /// Consumer group; default: the pipeline name.
    pub group: Option<String>,
    /// Concurrent consumers in this process, each with its own name and
    /// warm plugin instances. Default 1.
    #[serde(default = "defaults::consumers")]
    pub consumers: u32,
    /// Messages per read (XREADGROUP COUNT) and per plugin call. Default 256.
    #[serde(default = "defaults::batch")]
    pub batch: u32,
    /// How long one read waits for new messages. Also bounds how long
    /// shutdown waits for an idle consumer. Default 1000.
    #[serde(default = "defaults::block_ms")]
    pub block_ms: u64,
    /// Where a newly created group starts: `$` (new messages only), `0`
    /// (the whole stream) or an entry id. Default `$`.
    #[serde(default = "defaults::start")]
    pub start: String,
    /// Entries pending longer than this are taken from their consumer and
    /// delivered again. Default 30000.
    #[serde(default = "defaults::claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Deliveries before a message is dead-lettered. Default 5.
    #[serde(default = "defaults::max_deliveries")]
    pub max_deliveries: u32,
    /// Consumers of the group idle longer than this that own no pending
    /// entries are removed from it: every process that dies leaves its
    /// consumers behind. 0 keeps them. Default 3600000 (an hour).
    #[serde(default = "defaults::remove_consumers_idle_ms")]
    pub remove_consumers_idle_ms: u64,
    /// Dead-letter stream. Default `<stream>:dead` (per stream), `<list>:dead`,
    /// or `<pipeline>:dead` for pub/sub.
    pub dead_letter: Option<String>,
    /// Pub/sub: messages held between the subscriber and the consumers; when
    /// full, new messages are dropped and counted. Default 10000.
    pub buffer: Option<usize>,
    /// Pub/sub channels (pubsub sources).
    pub channels: Option<Vec<String>>,
    /// Pub/sub patterns (pubsub sources).
    pub patterns: Option<Vec<String>>,
    /// Sharded pub/sub (pubsub sources; Redis 7): SSUBSCRIBE to `channels`,
    /// on a cluster on the master owning each channel's slot, so messages
    /// stay on that shard instead of crossing the cluster bus. Publishers
    /// must SPUBLISH. Not with `patterns`. Default false (SUBSCRIBE).
    pub sharded: Option<bool>,
    /// List key (list sources).
    pub list: Option<String>,
}

/// One `[[processor]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Path to the plugin's .wasm; a relative path is relative to the
    /// pipeline file's folder, so a pipeline runs from any working directory.
    pub plugin: PathBuf,
    /// Longest one `process` call may run before it is stopped (the batch's
    /// messages are then retried). Default 1000.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Most linear memory one instance may grow to. Default 64.
    #[serde(default = "defaults::memory_mb")]
    pub memory_mb: u32,
    /// Most fuel (roughly, Wasm instructions) one call may use: a limit
    /// that, unlike `timeout_ms`, does not depend on the machine's load.
    /// Default: none. Counting fuel slows every plugin of the process, so
    /// it is on only when some pipeline sets it at start.
    pub fuel: Option<u64>,
    /// Handed to the plugin's `init`, values as text.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// What the sandbox lets the plugin see beyond its own memory, the
    /// clocks and random numbers. Default: nothing.
    #[serde(default)]
    pub grants: Grants,
    /// What happens when the plugin file changes while running: swap it in
    /// (default), run it beside the serving one (shadow), or serve a share
    /// of messages with it (canary).
    #[serde(default)]
    pub rollout: Rollout,
    /// Canary only (required there): the share of messages, 0 to 100, the
    /// new version serves.
    pub canary_percent: Option<f64>,
    /// Canary only: the field whose value picks the version, so one key
    /// always meets the same one. Default: the entry id.
    pub canary_key: Option<String>,
    /// Shadow and canary: how far (0 to 1) the new version's failure rate
    /// may exceed the serving one's before it is rolled back. Default 0.05.
    #[serde(default = "defaults::rollback_margin")]
    pub rollback_margin: f64,
    /// Shadow and canary: how many of each version's most recent messages
    /// the failure rates are taken over. Default 100.
    #[serde(default = "defaults::rollback_window")]
    pub rollback_window: u32,
    /// Shadow and canary: promote the new version once it has run this
    /// long without being rolled back. Default 0: only by hand.
    #[serde(default)]
    pub promote_after_ms: u64,
}

/// `[processor.grants]`: files and environment a plugin may read. Nothing
/// is granted unless named here; the network never is.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Folders the plugin may read (never write), each under its own path
    /// inside the plugin; `"path"` or `"path:ro"`. A relative path is
    /// relative to the pipeline file's folder.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Environment variables passed through by name, with the runtime's
    /// values (a variable the runtime does not have is left out).
    #[serde(default)]
    pub env: Vec<String>,
}

/// How a new version of a plugin file reaches traffic.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Rollout {
    /// Replaces the serving version between batches.
    #[default]
    Swap,
    /// Runs on the same batches as the serving version; its output is
    /// compared and discarded.
    Shadow,
    /// Serves `canary_percent` of the messages.
    Canary,
}

/// Kinds of sink.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// XADD to a stream.
    Stream,
    /// PUBLISH to a channel.
    Pubsub,
    /// LPUSH/RPUSH to a list.
    List,
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File,
}

impl SinkType {
    /// The name users write in `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkType::Stream => "stream",
            SinkType::Pubsub => "pubsub",
            SinkType::List => "list",
            SinkType::Stdout => "stdout",
            SinkType::File => "file",
        }
    }
}

/// One `[[sink]]` entry (flat for the same reason as [`SourceConfig`]):
/// [`load::validate`] checks that each key fits the chosen type.
///
/// Every sink reports success only once its destination accepted the write
/// (Redis answered, or the bytes reached the kernel), so a message is acked
/// only after all its records are safe.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Name that records use in `to`. Default: `out` for the first sink.
    pub name: Option<String>,
    #[serde(rename = "type")]
    /// `stream`, `pubsub`, `list`, `stdout` or `file`.
    pub kind: SinkType,
    /// Stream key (stream sinks); with `partitions`, the family's name.
    pub stream: Option<String>,
    /// Write a partitioned stream family (stream sinks): each record goes
    /// to `<stream>:{<n>}`, n = FNV-1a hash of its `partition_by` field
    /// mod `partitions`, so one key always lands in one partition and its
    /// order holds. Default: one stream.
    pub partitions: Option<u32>,
    /// The record field whose value picks the partition (with
    /// `partitions`); a record without it is dead-lettered.
    pub partition_by: Option<String>,
    /// Approximate cap on the stream's length (XADD MAXLEN ~), so an output
    /// stream nobody trims cannot fill Redis' memory. Default: no cap
    /// (stream sinks).
    pub maxlen: Option<u64>,
    /// Use the value of this record field as the entry id (XADD with that
    /// id; the field itself is not written) instead of letting Redis choose
    /// one, e.g. to copy a stream to another Redis with its ids. An id equal
    /// to or smaller than the stream's last entry counts as already written,
    /// so redelivering a message after a crash writes nothing twice: a
    /// replication bridge built this way is idempotent. Default: none, Redis
    /// assigns ids (stream sinks).
    pub id_field: Option<String>,
    /// Redis for this sink; default: the pipeline's (stream, pubsub and list
    /// sinks).
    pub url: Option<String>,
    /// Channel every record is published to (pubsub sinks; give this or
    /// `channel_field`).
    pub channel: Option<String>,
    /// Publish each record to the channel named by this record field, so a
    /// processor can pick the channel per record; a record without the field
    /// is refused (pubsub sinks; give this or `channel`).
    pub channel_field: Option<String>,
    /// SPUBLISH instead of PUBLISH (pubsub sinks; Redis 7): on a cluster
    /// the message goes to the shard owning the channel and only sharded
    /// (SSUBSCRIBE) subscribers receive it. Default false.
    pub sharded: Option<bool>,
    /// The record field whose value is published or pushed; the other fields
    /// are not sent, since a pub/sub message or list item is one value. A
    /// record without it is refused. Default `payload`, the field pub/sub
    /// and list sources fill (pubsub and list sinks).
    pub payload_field: Option<String>,
    /// List key (list sinks).
    pub list: Option<String>,
    /// Which end of the list records are pushed to: `left` (LPUSH) or
    /// `right` (RPUSH). Default `left`, so a consumer popping from the right
    /// (RPOP, BLMOVE ... RIGHT LEFT, or a list source) gets them in order
    /// (list sinks).
    pub side: Option<ListSide>,
    /// File that JSON lines are appended to, created if missing (with its
    /// folder); relative to the pipeline file's folder, like plugins (file
    /// sinks).
    pub path: Option<PathBuf>,
    /// Also `fsync` the file's data after each batch before reporting
    /// success, so acked records survive a power loss or kernel crash, not
    /// only a crash of sluice. Costs a disk flush per batch. Default false
    /// (file sinks).
    pub fsync: Option<bool>,
    /// `all`: this sink receives every record, whatever its `to`.
    pub route: Option<String>,
}

/// The end of a list a list sink pushes to.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListSide {
    /// LPUSH: newest at the head; pop from the right for FIFO.
    #[default]
    Left,
    /// RPUSH: newest at the tail; pop from the left for FIFO.
    Right,
}

mod defaults {
    pub fn consumers() -> u32 {
        1
    }
    pub fn batch() -> u32 {
        256
    }
    pub fn block_ms() -> u64 {
        1000
    }
    pub fn start() -> String {
        "$".into()
    }
    pub fn claim_idle_ms() -> u64 {
        30_000
    }
    pub fn max_deliveries() -> u32 {
        5
    }
    pub fn remove_consumers_idle_ms() -> u64 {
        3_600_000
    }
    pub fn timeout_ms() -> u64 {
        1000
    }
    pub fn memory_mb() -> u32 {
        64
    }
    pub fn rollback_margin() -> f64 {
        0.05
    }
    pub fn rollback_window() -> u32 {
        100
    }
}

/// A validated pipeline, with every default filled in and paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Redis URL as written in the file, if any (the runtime's default applies otherwise).
    pub redis_url: Option<String>,
    /// The source, as written, with `group` and `dead_letter` defaulted.
    pub source: SourceConfig,
    /// Processors with absolute plugin paths.
    pub processors: Vec<ProcessorConfig>,
    /// Sinks with names filled in.
    pub sinks: Vec<SinkConfig>,
    /// See [`PipelineFile::atomic`].
    pub atomic: bool,
}

impl Pipeline {
    /// The stream key of a stream source (the first, if several).
    pub fn stream(&self) -> &str {
        self.source.stream.as_deref().unwrap_or_default()
    }

    /// Every stream a stream source reads.
    pub fn streams(&self) -> &[String] {
        self.source.streams.as_deref().unwrap_or_default()
    }

    /// The dead-letter stream for messages from `source`.
    pub fn dead_letter_for(&self, source: &str) -> String {
        match &self.source.dead_letter {
            Some(explicit) => explicit.clone(),
            None => format!("{source}:dead"),
        }
    }

    /// The consumer group (always set after validation).
    pub fn group(&self) -> &str {
        self.source.group.as_deref().unwrap_or(&self.name)
    }

    /// The dead-letter stream named in the file, or defaulted for a pub/sub
    /// or list source (stream sources: see [`Pipeline::dead_letter_for`]).
    pub fn dead_letter(&self) -> &str {
        self.source.dead_letter.as_deref().unwrap_or_default()
    }

    /// A sink's name (always set after validation).
    pub fn sink_name(sink: &SinkConfig) -> &str {
        sink.name.as_deref().unwrap_or("out")
    }
}

/// Turns a `[processor.config]` table into the text pairs `init` receives:
/// strings as they are, other values as TOML writes them.
pub fn plugin_config(config: &BTreeMap<String, toml::Value>) -> Vec<(String, String)> {
    config
        .iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}
