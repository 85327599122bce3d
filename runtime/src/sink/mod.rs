//! Sinks: where records go. A sink reports, per record, whether the
//! destination accepted it; only then may the message behind it be acked.

mod stream;

pub use stream::StreamSink;

use crate::config::{Pipeline, SinkConfig, SinkType};
use crate::message::Record;

/// A configured sink.
pub enum Sink {
    /// XADD to a stream.
    Stream(StreamSink),
}

impl Sink {
    /// Builds the sink described by `config`; `default_url` is the pipeline's Redis.
    pub fn build(config: &SinkConfig, default_url: &str) -> anyhow::Result<Self> {
        let url = config.url.as_deref().unwrap_or(default_url);
        match config.kind {
            SinkType::Stream => Ok(Sink::Stream(StreamSink::new(
                url,
                config.stream.as_deref().unwrap_or_default(),
                config.maxlen,
            )?)),
            other => anyhow::bail!("sink type {other:?} is not available in this version"),
        }
    }

    /// Writes `records` in order; one result per record.
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        match self {
            Sink::Stream(s) => s.write(records).await,
        }
    }
}

/// Why a write failed, and whether trying again soon can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// The destination is unreachable (connection refused, dropped, timed
    /// out): the write is retried with backoff and intake pauses meanwhile.
    /// Otherwise the destination refused this record (e.g. WRONGTYPE) and
    /// the message fails.
    pub outage: bool,
    /// What happened.
    pub message: String,
}

impl SinkError {
    /// The destination refused the record.
    pub fn refused(message: impl Into<String>) -> Self {
        SinkError {
            outage: false,
            message: message.into(),
        }
    }

    /// From a Redis error on a write to `key`.
    pub fn from_redis(key: &str, e: &redis::RedisError) -> Self {
        SinkError {
            outage: crate::conn::is_outage(e),
            message: format!("write to {key}: {e}"),
        }
    }
}

/// The pipeline's sinks, with the routing rules: a record goes to the sink
/// its `to` names (the first sink when it names none) and to every sink
/// declared with `route = "all"`.
pub struct Sinks {
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
            sinks.push(Sink::build(s, default_url)?);
            names.push(Pipeline::sink_name(s).to_string());
            if s.route.as_deref() == Some("all") {
                all.push(i);
            }
        }
        Ok(Sinks { names, sinks, all })
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
