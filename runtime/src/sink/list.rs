//! List sink: pipelined LPUSH or RPUSH, one round trip per batch.

use super::{SinkError, round_trip};
use crate::config::ListSide;
use crate::conn::Conn;
use crate::message::Record;

/// Pushes one field of each record onto a list.
pub struct ListSink {
    conn: Conn,
    list: String,
    side: ListSide,
    payload_field: String,
}

impl ListSink {
    /// A sink pushing the `payload_field` of each record onto `side` of `list` on `url`.
    pub fn new(url: &str, list: &str, side: ListSide, payload_field: &str) -> anyhow::Result<Self> {
        Ok(ListSink {
            conn: super::connect(url)?,
            list: list.to_string(),
            side,
            payload_field: payload_field.to_string(),
        })
    }

    /// The push for `record`, or why it cannot be sent.
    fn push(&self, record: &Record) -> Result<redis::Cmd, SinkError> {
        let value = super::field(record, &self.payload_field).ok_or_else(|| {
            SinkError::refused(format!(
                "the record has no field `{}` to push (payload_field)",
                self.payload_field
            ))
        })?;
        let mut cmd = redis::cmd(match self.side {
            ListSide::Left => "LPUSH",
            ListSide::Right => "RPUSH",
        });
        cmd.arg(&self.list).arg(value);
        Ok(cmd)
    }

    /// Pushes `records`, in order, with one pipelined round trip.
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let commands = records.iter().map(|r| self.push(r)).collect();
        round_trip(&self.conn, &self.list, commands, |answer| {
            answer
                .map(drop)
                .map_err(|e| SinkError::from_redis(&self.list, &e))
        })
        .await
    }
}
