//! Pub/sub sink: pipelined PUBLISH (or SPUBLISH with `sharded = true`),
//! one round trip per batch.
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
    /// SPUBLISH (sharded pub/sub) rather than PUBLISH.
    sharded: bool,
    /// Names the destination in errors and logs.
    label: String,
}

impl PubsubSink {
    /// A sink publishing the `payload_field` of each record to `channel` on
    /// `url`, with SPUBLISH if `sharded`.
    pub fn new(
        url: &str,
        channel: Channel,
        payload_field: &str,
        sharded: bool,
    ) -> anyhow::Result<Self> {
        let label = match &channel {
            Channel::Fixed(c) => format!("channel {c}"),
            Channel::Field(f) => format!("the channel in field `{f}`"),
        };
        Ok(PubsubSink {
            conn: super::connect(url)?,
            channel,
            payload_field: payload_field.to_string(),
            sharded,
            label,
        })
    }

    /// The channel `record` goes to, or why it has none.
    fn channel<'a>(&'a self, record: &'a Record) -> Result<&'a [u8], SinkError> {
        match &self.channel {
            Channel::Fixed(c) => Ok(c.as_bytes()),
            Channel::Field(f) => super::field(record, f).ok_or_else(|| {
                SinkError::refused(format!(
                    "the record has no field `{f}` to take the channel from (channel_field)"
                ))
            }),
        }
    }

    /// The PUBLISH (or SPUBLISH) for `record`, or why it cannot be sent.
    fn publish(&self, record: &Record) -> Result<redis::Cmd, SinkError> {
        let channel = self.channel(record)?;
        let payload = super::field(record, &self.payload_field).ok_or_else(|| {
            SinkError::refused(format!(
                "the record has no field `{}` to publish (payload_field)",
                self.payload_field
            ))
        })?;
        let mut cmd = redis::cmd(if self.sharded { "SPUBLISH" } else { "PUBLISH" });
        cmd.arg(channel).arg(payload);
        Ok(cmd)
    }

    /// Publishes `records` with one pipelined round trip; on a cluster, one
    /// per channel slot, concurrently (the cluster client sends a pipeline
    /// to one node, chosen by its first channel's slot: for SPUBLISH, the
    /// slot's owner, as it must be).
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        if !self.conn.is_cluster() || matches!(self.channel, Channel::Fixed(_)) {
            return self.write_one_trip(records).await;
        }
        let mut results: Vec<Option<Result<(), SinkError>>> = vec![None; records.len()];
        let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, record) in records.iter().enumerate() {
            match self.channel(record) {
                Ok(channel) => by_slot
                    .entry(crate::config::cluster::slot(channel))
                    .or_default()
                    .push(i),
                Err(why) => results[i] = Some(Err(why)),
            }
        }
        let trips = by_slot.into_values().map(|indexes| async move {
            let batch: Vec<&Record> = indexes.iter().map(|i| records[*i]).collect();
            (indexes, self.write_one_trip(&batch).await)
        });
        for (indexes, written) in futures::future::join_all(trips).await {
            for (i, result) in indexes.into_iter().zip(written) {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SinkError::refused("not published"))))
            .collect()
    }

    async fn write_one_trip(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let commands = records.iter().map(|r| self.publish(r)).collect();
        round_trip(&self.conn, &self.label, commands, |answer| {
            answer
                .map(drop)
                .map_err(|e| SinkError::from_redis(&self.label, &e))
        })
        .await
    }
}
