//! Sinks: where records go. A sink reports, per record, whether the
//! destination accepted it; only then may the message behind it be acked.
//!
//! ```text
//! stream   XADD (MAXLEN ~, optional id from a field), pipelined per batch
//! pubsub   PUBLISH one field's value, pipelined per batch (fire-and-forget)
//! list     LPUSH/RPUSH one field's value, pipelined per batch
//! stdout   JSON lines, written and flushed per batch
//! file     JSON lines appended, flushed (optionally fsynced) per batch
//! ```
//!
//! "Accepted" means Redis answered the command, or the bytes reached the
//! kernel (and the disk, with `fsync = true`): whatever a sink reports as
//! success survives a crash of sluice right after the ack.

mod file;
mod json;
mod list;
mod pubsub;
mod stdout;
mod stream;

pub use file::FileSink;
pub use json::json_line;
pub use list::ListSink;
pub use pubsub::PubsubSink;
pub use stdout::StdoutSink;
pub use stream::StreamSink;

use crate::config::{Pipeline, SinkConfig, SinkType};
use crate::conn::Conn;
use crate::message::Record;

/// A configured sink.
pub enum Sink {
    /// XADD to a stream.
    Stream(StreamSink),
    /// PUBLISH to a channel.
    Pubsub(PubsubSink),
    /// LPUSH/RPUSH to a list.
    List(ListSink),
    /// JSON lines on standard output.
    Stdout(StdoutSink),
    /// JSON lines appended to a file.
    File(FileSink),
}

impl Sink {
    /// Builds the sink described by `config` (validated: the keys its type
    /// needs are set); `default_url` is the pipeline's Redis. Redis sinks
    /// connect lazily; a file sink opens its file here, so a path that
    /// cannot be written fails the pipeline before it reads anything.
    pub fn build(config: &SinkConfig, default_url: &str) -> anyhow::Result<Self> {
        let url = config.url.as_deref().unwrap_or(default_url);
        let payload_field = config.payload_field.as_deref().unwrap_or(DEFAULT_PAYLOAD);
        Ok(match config.kind {
            SinkType::Stream => {
                let mut sink = StreamSink::new(
                    url,
                    config.stream.as_deref().unwrap_or_default(),
                    config.maxlen,
                    config.id_field.as_deref(),
                )?;
                if let (Some(n), Some(field)) = (config.partitions, &config.partition_by) {
                    sink = sink.partitioned(n, field);
                }
                Sink::Stream(sink)
            }
            SinkType::Pubsub => {
                let channel = match (&config.channel, &config.channel_field) {
                    (_, Some(field)) => pubsub::Channel::Field(field.clone()),
                    (Some(channel), None) => pubsub::Channel::Fixed(channel.clone()),
                    (None, None) => {
                        anyhow::bail!("a pubsub sink needs `channel` or `channel_field`")
                    }
                };
                Sink::Pubsub(PubsubSink::new(
                    url,
                    channel,
                    payload_field,
                    config.sharded.unwrap_or(false),
                )?)
            }
            SinkType::List => Sink::List(ListSink::new(
                url,
                config.list.as_deref().unwrap_or_default(),
                config.side.unwrap_or_default(),
                payload_field,
            )?),
            SinkType::Stdout => Sink::Stdout(StdoutSink),
            SinkType::File => Sink::File(FileSink::open(
                config.path.as_deref().unwrap_or(std::path::Path::new("")),
                config.fsync.unwrap_or(false),
            )?),
        })
    }

    /// Writes `records` in order; one result per record.
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        match self {
            Sink::Stream(s) => s.write(records).await,
            Sink::Pubsub(s) => s.write(records).await,
            Sink::List(s) => s.write(records).await,
            Sink::Stdout(s) => s.write(records).await,
            Sink::File(s) => s.write(records).await,
        }
    }
}

/// The field pub/sub and list sinks send when `payload_field` is not set:
/// the one pub/sub and list sources fill.
pub const DEFAULT_PAYLOAD: &str = "payload";

/// Why a write failed, and whether trying again soon can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// The destination is unreachable (connection refused, dropped, timed
    /// out; a full disk): the write is retried with backoff and intake
    /// pauses meanwhile. Otherwise the destination refused this record
    /// (e.g. WRONGTYPE, a missing field) and the message fails.
    pub outage: bool,
    /// Retrying cannot help (e.g. an `id_field` id below the stream's top
    /// that the stream does not hold): dead-letter the message at once.
    pub dead_letter: bool,
    /// The record cannot be written without altering it (a field name that
    /// a JSON line cannot carry): no retry can help, so its message is
    /// dead-lettered at once, with its bytes intact.
    pub unrepresentable: bool,
    /// What happened.
    pub message: String,
}

impl SinkError {
    /// The destination refused the record.
    pub fn refused(message: impl Into<String>) -> Self {
        SinkError {
            outage: false,
            dead_letter: false,
            unrepresentable: false,
            message: message.into(),
        }
    }

    /// The record cannot be written faithfully by this sink.
    pub fn unrepresentable(message: impl Into<String>) -> Self {
        SinkError {
            unrepresentable: true,
            ..SinkError::refused(message)
        }
    }

    /// From a Redis error on a write to `key`.
    pub fn from_redis(key: &str, e: &redis::RedisError) -> Self {
        SinkError {
            outage: crate::conn::is_outage(e),
            dead_letter: false,
            unrepresentable: false,
            message: format!("write to {key}: {e}"),
        }
    }
}

/// The value of the first field of `record` named `name`.
fn field<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
    record
        .fields
        .iter()
        .find(|(n, _)| n == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// Sends one command per record in one pipelined round trip. `commands`
/// holds, per record, its command or why it is refused without being sent;
/// `reply` judges each answer. A failure of the round trip itself (Redis
/// unreachable) fails every record with the same error.
async fn round_trip(
    conn: &Conn,
    key: &str,
    commands: Vec<Result<redis::Cmd, SinkError>>,
    reply: impl Fn(redis::RedisResult<redis::Value>) -> Result<(), SinkError>,
) -> Vec<Result<(), SinkError>> {
    let mut pipe = redis::Pipeline::with_capacity(commands.len());
    // One refused record must not fail its neighbours.
    pipe.ignore_errors();
    let mut unsent = Vec::with_capacity(commands.len());
    for cmd in commands {
        match cmd {
            Ok(cmd) => {
                pipe.add_command(cmd);
                unsent.push(None);
            }
            Err(why) => unsent.push(Some(why)),
        }
    }
    let replies: Vec<redis::RedisResult<redis::Value>> = if unsent.iter().all(Option::is_some) {
        Vec::new()
    } else {
        match pipe.query_async(&mut conn.clone()).await {
            Ok(replies) => replies,
            Err(e) => return vec![Err(SinkError::from_redis(key, &e)); unsent.len()],
        }
    };
    merge(key, unsent, replies, reply)
}

/// Per record: why it was not sent (`unsent`), or its reply (in order,
/// one per record sent) as `reply` judges it.
fn merge<T>(
    key: &str,
    unsent: Vec<Option<SinkError>>,
    replies: Vec<redis::RedisResult<T>>,
    reply: impl Fn(redis::RedisResult<T>) -> Result<(), SinkError>,
) -> Vec<Result<(), SinkError>> {
    let mut replies = replies.into_iter();
    unsent
        .into_iter()
        .map(|unsent| match unsent {
            Some(why) => Err(why),
            None => match replies.next() {
                Some(answer) => reply(answer),
                None => Err(SinkError::refused(format!("write to {key}: no reply"))),
            },
        })
        .collect()
}

/// Opens a reconnecting connection for a Redis sink.
fn connect(url: &str) -> anyhow::Result<Conn> {
    let client = crate::conn::client(url)?;
    Ok(crate::conn::manager(&client, crate::conn::COMMAND_TIMEOUT)?)
}

/// The pipeline's sinks, with the routing rules: a record goes to the sink
/// its `to` names (the first sink when it names none) and to every sink
/// declared with `route = "all"`.
pub struct Sinks {
    /// The pipeline they belong to, for metrics.
    pub pipeline: String,
    /// Sink names, in file order.
    pub names: Vec<String>,
    /// The sinks, same order.
    pub sinks: Vec<Sink>,
    /// Indexes of `route = "all"` sinks.
    all: Vec<usize>,
}

impl Sinks {
    /// Builds every sink of `pipeline`.
    pub fn build(pipeline: &Pipeline, default_url: &str) -> anyhow::Result<Self> {
        let mut sinks = Vec::new();
        let mut names = Vec::new();
        let mut all = Vec::new();
        for (i, s) in pipeline.sinks.iter().enumerate() {
            let name = Pipeline::sink_name(s);
            sinks.push(
                Sink::build(s, default_url).map_err(|e| e.context(format!("sink `{name}`")))?,
            );
            if s.kind == SinkType::Pubsub {
                tracing::info!(
                    pipeline = %pipeline.name,
                    sink = name,
                    "pub/sub sink is fire-and-forget: a message published while nobody is subscribed is acked and gone"
                );
            }
            names.push(name.to_string());
            if s.route.as_deref() == Some("all") {
                all.push(i);
            }
        }
        Ok(Sinks {
            pipeline: pipeline.name.clone(),
            names,
            sinks,
            all,
        })
    }

    /// The sinks a record goes to, or `Err` with the unknown name it gave.
    pub fn route(&self, to: Option<&str>) -> Result<impl Iterator<Item = usize> + '_, String> {
        let target = match to {
            None => 0,
            Some(name) => self.names.iter().position(|n| n == name).ok_or_else(|| {
                format!(
                    "record names sink `{name}`, which this pipeline does not have (sinks: {})",
                    self.names.join(", ")
                )
            })?,
        };
        Ok(std::iter::once(target).chain(self.all.iter().copied().filter(move |&i| i != target)))
    }
}
