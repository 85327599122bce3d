//! Stream sink: pipelined XADD, one round trip per batch.

use super::SinkError;
use crate::conn;
use crate::message::Record;
use redis::aio::ConnectionManager;

/// Writes records to one stream.
pub struct StreamSink {
    conn: ConnectionManager,
    stream: String,
    maxlen: Option<u64>,
}

impl StreamSink {
    /// A sink writing to `stream` on `url`, trimming to about `maxlen` entries.
    pub fn new(url: &str, stream: &str, maxlen: Option<u64>) -> anyhow::Result<Self> {
        let client = conn::client(url)?;
        let conn = conn::manager(&client, conn::COMMAND_TIMEOUT)?;
        Ok(StreamSink {
            conn,
            stream: stream.to_string(),
            maxlen,
        })
    }

    /// The stream key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The approximate length cap, if any.
    pub fn maxlen(&self) -> Option<u64> {
        self.maxlen
    }

    /// Adds the XADD for `record` to `pipe` (shared with atomic mode, which
    /// wraps the same commands and the XACK in MULTI/EXEC).
    pub fn add_xadd(&self, pipe: &mut redis::Pipeline, record: &Record) {
        let cmd = pipe.cmd("XADD").arg(&self.stream);
        if let Some(maxlen) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*");
        for (name, value) in &record.fields {
            cmd.arg(name).arg(value);
        }
    }

    /// Writes `records` with one pipelined round trip. A record with no
    /// fields cannot be an entry and is refused.
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(records.len());
        for record in records {
            if record.fields.is_empty() {
                sent.push(false);
                continue;
            }
            self.add_xadd(&mut pipe, record);
            sent.push(true);
        }
        let replies: Vec<redis::RedisResult<redis::Value>> = if sent.iter().any(|s| *s) {
            match pipe.query_async(&mut self.conn.clone()).await {
                Ok(replies) => replies,
                Err(e) => return vec![Err(SinkError::from_redis(&self.stream, &e)); records.len()],
            }
        } else {
            Vec::new()
        };
        let mut replies = replies.into_iter();
        sent.into_iter()
            .map(|sent| {
                if !sent {
                    return Err(SinkError::refused(
                        "a record with no fields cannot be written to a stream",
                    ));
                }
                match replies.next() {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(SinkError::from_redis(&self.stream, &e)),
                    None => Err(SinkError::refused(format!(
                        "XADD to {}: no reply",
                        self.stream
                    ))),
                }
            })
            .collect()
    }
}
