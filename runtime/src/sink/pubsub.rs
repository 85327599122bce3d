//! Pub/sub sink: pipelined PUBLISH, one round trip per batch.
//!
//! Pub/sub is fire-and-forget: Redis accepts a PUBLISH (and the message is
//! acked) even when nobody is subscribed, and keeps nothing for subscribers
//! that connect later. Use a stream or list sink when the output must wait
//! for its reader.

use super::{SinkError, round_trip};
use crate::conn::Conn;
use crate::message::Record;

/// Where a record is published.
pub enum Channel {
    /// Always this channel (`channel`).
    Fixed(String),
    /// The channel named by this record field (`channel_field`).
    Field(String),
}

/// Publishes one field of each record.
pub struct PubsubSink {
    conn: Conn,
    channel: Channel,
    payload_field: String,
    /// Names the destination in errors and logs.
    label: String,
}

impl PubsubSink {
    /// A sink publishing the `payload_field` of each record to `channel` on `url`.
    pub fn new(url: &str, channel: Channel, payload_field: &str) -> anyhow::Result<Self> {
        let label = match &channel {
            Channel::Fixed(c) => format!("channel {c}"),
            Channel::Field(f) => format!("the channel in field `{f}`"),
        };
        Ok(PubsubSink {
            conn: super::connect(url)?,
            channel,
            payload_field: payload_field.to_string(),
            label,
        })
    }

    /// The PUBLISH for `record`, or why it cannot be sent.
    fn publish(&self, record: &Record) -> Result<redis::Cmd, SinkError> {
        let channel: &[u8] = match &self.channel {
            Channel::Fixed(c) => c.as_bytes(),
            Channel::Field(f) => super::field(record, f).ok_or_else(|| {
                SinkError::refused(format!(
                    "the record has no field `{f}` to take the channel from (channel_field)"
                ))
            })?,
        };
        let payload = super::field(record, &self.payload_field).ok_or_else(|| {
            SinkError::refused(format!(
                "the record has no field `{}` to publish (payload_field)",
                self.payload_field
            ))
        })?;
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        Ok(cmd)
    }

    /// Publishes `records` with one pipelined round trip.
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let commands = records.iter().map(|r| self.publish(r)).collect();
        round_trip(&self.conn, &self.label, commands, |answer| {
            answer
                .map(drop)
                .map_err(|e| SinkError::from_redis(&self.label, &e))
        })
        .await
    }
}
