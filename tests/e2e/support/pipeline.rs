//! Pipeline files for tests.
//!
//! The runtime reads pipelines from files, so tests write real files into a temp dir that
//! lives as long as the [`Pipeline`] value.

use std::fs;
use std::path::{Path, PathBuf};

use redis::ConnectionLike;
use tempfile::TempDir;

use super::streams::{group_exists, pending_count, xlen};
use super::{RedisServer, Sluice, plugin};

/// The input stream of [`Pipeline::stream_to_stream`].
pub const IN: &str = "in";
/// The output stream of [`Pipeline::stream_to_stream`].
pub const OUT: &str = "out";
/// The consumer group of [`Pipeline::stream_to_stream`].
pub const GROUP: &str = "e2e";

/// The `[redis]` and `[source]` tables every stream test pipeline starts
/// with: stream [`IN`], group [`GROUP`], read from the start of the stream
/// (so preloaded messages are read), a short `block_ms` so shutdown is
/// quick; `source` adds lines to `[source]`.
pub fn stream_source(redis: &RedisServer, source: &str) -> String {
    format!(
        "[redis]\nurl = \"{url}\"\n\n[source]\ntype = \"stream\"\nstream = \"{IN}\"\ngroup = \"{GROUP}\"\nstart = \"0\"\nblock_ms = 100\n{source}\n",
        url = redis.url()
    )
}

/// The file of [`Pipeline::stream_to_stream`], with extra `[[processor]]` lines
/// (`timeout_ms`, ...) and extra lines for the sink (`url`, ...).
pub fn stream_to_stream_toml(
    redis: &RedisServer,
    plugin_name: &str,
    source: &str,
    processor: &str,
    config: &str,
    sink: &str,
) -> String {
    format!(
        r#"{head}
[[processor]]
plugin = '{plugin}'
{processor}

[processor.config]
{config}

[[sink]]
name = "out"
type = "stream"
stream = "{OUT}"
{sink}
"#,
        head = stream_source(redis, source),
        plugin = plugin(plugin_name).display(),
    )
}

/// A pipeline file in its own temp dir.
pub struct Pipeline {
    _dir: TempDir,
    path: PathBuf,
}

impl Pipeline {
    /// Writes `toml` to `<tempdir>/<name>.toml`; `name` is also the default pipeline name.
    pub fn write(name: &str, toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir for the pipeline");
        let path = dir.path().join(format!("{name}.toml"));
        fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        Pipeline { _dir: dir, path }
    }

    /// The shape most tests need: stream [`IN`] (group [`GROUP`], from the start of the
    /// stream so preloaded messages are read) → plugin `plugin_name` → stream [`OUT`].
    ///
    /// `source` holds extra `[source]` lines (`consumers`, `batch`, ...) and `config` the
    /// `[processor.config]` lines. `block_ms` is short so that shutdown is quick.
    pub fn stream_to_stream(
        redis: &RedisServer,
        plugin_name: &str,
        source: &str,
        config: &str,
    ) -> Self {
        Self::write(
            "e2e",
            &stream_to_stream_toml(redis, plugin_name, source, "", config, ""),
        )
    }

    /// The file's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Waits until a [`Pipeline::stream_to_stream`] pipeline run by `sluice` has written `out`
/// entries to [`OUT`] while `pending` entries of [`IN`] are unacknowledged, both at once.
///
/// Checking both matters: output appears before its ack, so "all written" alone does not mean
/// the group is settled.
pub fn wait_settled(
    con: &mut impl ConnectionLike,
    sluice: &mut Sluice,
    out: usize,
    pending: usize,
) {
    sluice.wait_for(
        &format!("{out} entries in `{OUT}` and {pending} pending in group `{GROUP}` (seen: (out, pending))"),
        |_| {
            let pending = group_exists(con, IN, GROUP).then(|| pending_count(con, IN, GROUP));
            (xlen(con, OUT), pending)
        },
        |seen| *seen == (out, Some(pending)),
    );
}

/// A list → plugin → stream pipeline on `redis`: list `jobs`, sink stream `jobs:out`, dead
/// letters in `jobs:dead` (the default for a list source). `source` adds `[source]` lines;
/// `processor` is the whole `[[processor]]` table.
pub fn list_to_stream(redis: &RedisServer, source: &str, processor: &str) -> Pipeline {
    list_to_stream_at(&redis.url(), source, processor)
}

/// [`list_to_stream`] on the Redis at `url` (a single server or a cluster).
pub fn list_to_stream_at(url: &str, source: &str, processor: &str) -> Pipeline {
    Pipeline::write(
        "jobs",
        &format!(
            r#"[redis]
url = "{url}"

[source]
type = "list"
list = "jobs"
block_ms = 100
{source}

{processor}
[[sink]]
type = "stream"
stream = "jobs:out"
"#,
        ),
    )
}

/// A pub/sub → stream pipeline on the Redis at `url` (a single server or a cluster): a
/// `pubsub` source with the `source` lines (`channels`, `sharded`, ...), no processor, every
/// message written as it came (fields `payload` and `channel`) to stream `sink`.
pub fn pubsub_to_stream_at(url: &str, source: &str, sink: &str) -> Pipeline {
    Pipeline::write(
        "capture",
        &format!(
            r#"[redis]
url = "{url}"

[source]
type = "pubsub"
{source}

[[sink]]
type = "stream"
stream = "{sink}"
"#,
        ),
    )
}

/// A stream → pub/sub pipeline on the Redis at `url` (a single server or a cluster): stream
/// `orders` (group `g`, from the start), no processor, to a `pubsub` sink with the `sink`
/// lines (`channel` or `channel_field`, `sharded`, ...).
pub fn stream_to_pubsub_at(url: &str, sink: &str) -> Pipeline {
    Pipeline::write(
        "publish",
        &format!(
            r#"[redis]
url = "{url}"

[source]
type = "stream"
stream = "orders"
group = "g"
start = "0"
block_ms = 100

[[sink]]
type = "pubsub"
{sink}
"#,
        ),
    )
}
