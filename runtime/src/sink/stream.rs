//! Stream sink: pipelined XADD, one round trip per batch.
//!
//! With `id_field`, the entry id comes from the record, and an id Redis
//! already has (equal to or below the stream's last id) counts as written:
//! redelivering a message after a crash between XADD and XACK then adds
//! nothing twice, so a stream copied with its ids is copied exactly once.

use super::{SinkError, round_trip};
use crate::message::{Field, Record};
use redis::aio::ConnectionManager;

/// What Redis says when an XADD id is not above the stream's last id.
const ID_NOT_ABOVE_TOP: &str = "equal or smaller than the target stream top item";

/// Writes records to one stream.
pub struct StreamSink {
    conn: ConnectionManager,
    stream: String,
    maxlen: Option<u64>,
    id_field: Option<String>,
}

impl StreamSink {
    /// A sink writing to `stream` on `url`, trimming to about `maxlen`
    /// entries, taking entry ids from `id_field` if given.
    pub fn new(
        url: &str,
        stream: &str,
        maxlen: Option<u64>,
        id_field: Option<&str>,
    ) -> anyhow::Result<Self> {
        Ok(StreamSink {
            conn: super::connect(url)?,
            stream: stream.to_string(),
            maxlen,
            id_field: id_field.map(str::to_string),
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

    /// The XADD for `record`, or why it cannot be written.
    fn xadd(&self, record: &Record) -> Result<redis::Cmd, SinkError> {
        let (id, fields) = entry(record, self.id_field.as_deref())?;
        // Sized up front: growing the buffers arg by arg costs more
        // allocations than the rest of the write.
        let (count, bytes) = fields.clone().fold((0, 0), |(count, bytes), (n, v)| {
            (count + 1, bytes + n.len() + v.len())
        });
        let mut cmd = redis::Cmd::with_capacity(6 + 2 * count, self.stream.len() + 32 + bytes);
        cmd.arg("XADD").arg(&self.stream);
        if let Some(maxlen) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg(id);
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
        Ok(cmd)
    }

    /// Writes `records` with one pipelined round trip. A record with no
    /// fields to write, or without its `id_field`, is refused.
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let commands = records.iter().map(|r| self.xadd(r)).collect();
        let with_ids = self.id_field.is_some();
        round_trip(&self.conn, &self.stream, commands, |answer| match answer {
            Ok(_) => Ok(()),
            Err(e) if with_ids && already_written(&e.to_string()) => Ok(()),
            Err(e) => Err(SinkError::from_redis(&self.stream, &e)),
        })
        .await
    }
}

/// The entry id and fields to write for `record`: with an `id_field`, its
/// value is the id and the field is left out; otherwise Redis picks (`*`).
fn entry<'a>(
    record: &'a Record,
    id_field: Option<&'a str>,
) -> Result<(&'a [u8], impl Iterator<Item = &'a Field> + Clone), SinkError> {
    let id: &[u8] = match id_field {
        None => b"*",
        Some(name) => super::field(record, name).ok_or_else(|| {
            SinkError::refused(format!(
                "the record has no field `{name}` to take the entry id from (id_field)"
            ))
        })?,
    };
    let fields = record
        .fields
        .iter()
        .filter(move |(n, _)| Some(n.as_str()) != id_field);
    if fields.clone().next().is_none() {
        return Err(SinkError::refused(
            "a record with no fields cannot be written to a stream",
        ));
    }
    Ok((id, fields))
}

/// Whether an XADD error means the entry is already in the stream: its id
/// is not above the stream's last one.
fn already_written(error: &str) -> bool {
    error.contains(ID_NOT_ABOVE_TOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[(&str, &str)]) -> Record {
        Record {
            fields: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            to: None,
        }
    }

    fn names<'a>(fields: impl Iterator<Item = &'a Field>) -> Vec<&'a str> {
        fields.map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn without_id_field_redis_picks_the_id() {
        let r = record(&[("id", "5-1"), ("a", "1")]);
        let (id, fields) = entry(&r, None).unwrap();
        assert_eq!(id, b"*");
        assert_eq!(names(fields), ["id", "a"]);
    }

    #[test]
    fn id_field_gives_the_id_and_is_not_written() {
        let r = record(&[("a", "1"), ("src_id", "5-1"), ("b", "2")]);
        let (id, fields) = entry(&r, Some("src_id")).unwrap();
        assert_eq!(id, b"5-1");
        assert_eq!(names(fields), ["a", "b"]);
    }

    #[test]
    fn missing_id_field_or_nothing_else_is_refused() {
        let e = entry(&record(&[("a", "1")]), Some("src_id")).err().unwrap();
        assert!(!e.outage);
        assert!(e.message.contains("no field `src_id`"), "{}", e.message);
        let e = entry(&record(&[("src_id", "5-1")]), Some("src_id"))
            .err()
            .unwrap();
        assert!(e.message.contains("no fields"), "{}", e.message);
        assert!(entry(&record(&[]), None).is_err());
    }

    #[test]
    fn an_id_not_above_the_top_counts_as_written() {
        assert!(already_written(
            "An error was signalled by the server - ResponseError: The ID specified in XADD is equal or smaller than the target stream top item"
        ));
        assert!(!already_written(
            "ERR The ID specified in XADD must be greater than 0-0"
        ));
        assert!(!already_written(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ));
    }
}
