//! Stdout sink: JSON lines (see [`super::json`]) on standard output.
//!
//! A batch is written with stdout locked, so batches from concurrent
//! consumers (and pipelines) never interleave mid-line, then flushed: when
//! the write returns, the lines are with the reader (pipe) or the kernel
//! (file), and only then are the messages acked. Logs go to stderr, so
//! stdout carries nothing but records.

use super::SinkError;
use crate::message::Record;
use std::io::Write;

/// Writes records to standard output.
pub struct StdoutSink;

impl StdoutSink {
    /// Writes `records` as JSON lines and flushes. The write runs on a
    /// blocking thread: a slow reader of the pipe must not stall the async
    /// runtime. Either every record of the batch succeeds or none does,
    /// except records refused before writing (see [`super::json`]).
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let (buf, encoded) = super::json::json_lines(records);
        if buf.is_empty() {
            return encoded;
        }
        let written = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        })
        .await;
        let result = match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::refused(format!("write to stdout: {e}"))),
            Err(e) => Err(SinkError::refused(format!("write to stdout: {e}"))),
        };
        encoded
            .into_iter()
            .map(|e| e.and_then(|()| result.clone()))
            .collect()
    }
}
