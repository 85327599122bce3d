//! Traffic that keeps flowing while a test changes things, and the timing of what came out.
//!
//! [`Producer`] appends numbered entries to a stream from a background thread until it is
//! stopped, so a pipeline is under load for as long as a test needs, however slow the machine.
//! Redis assigns stream entry ids from its clock in milliseconds, so the ids of a sink stream
//! say when each record was written: [`largest_gap`] finds the longest pause in an output.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use redis::Connection;

use super::RedisServer;
use super::streams::{Entry, xadd_many};

/// A background thread appending `{i: <n>}` entries to a stream, `n` counting from 0.
pub struct Producer {
    stream: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl Producer {
    /// Appends `chunk` entries to `stream` (one pipelined round trip), then pauses `every`,
    /// again and again until [`stop`](Self::stop).
    pub fn start(redis: &RedisServer, stream: &str, chunk: usize, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut con = redis.conn();
        let (name, flag) = (stream.to_owned(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("producer {stream}"))
            .spawn(move || {
                let mut written = 0;
                while !flag.load(Ordering::Relaxed) {
                    xadd_many(&mut con, &name, chunk, |k| {
                        vec![("i", (written + k).to_string())]
                    });
                    written += chunk;
                    std::thread::sleep(every);
                }
                written
            })
            .expect("spawn a producer thread");
        Producer {
            stream: stream.to_owned(),
            stop,
            thread: Some(thread),
        }
    }

    /// Stops appending and returns how many entries were written (indexes `0..n`).
    pub fn stop(mut self) -> usize {
        self.finish()
    }

    fn finish(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| panic!("the producer of `{}` panicked", self.stream)),
            None => 0,
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // A panicking test must not hang on a producer, nor leave it writing.
        if std::thread::panicking() {
            self.stop.store(true, Ordering::Relaxed);
        } else {
            self.finish();
        }
    }
}

/// The millisecond timestamp of a stream entry id (`<ms>-<seq>`).
pub fn entry_ms(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or_else(|| panic!("`{id}` is not a stream entry id"))
}

/// The longest pause between consecutive entries: `ms` long, ending at entry `after`
/// (whose predecessor is at `after - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub ms: u64,
    pub after: usize,
}

/// The longest pause between consecutive `entries` (stream order), or `None` for fewer than
/// two entries.
pub fn largest_gap(entries: &[Entry]) -> Option<Gap> {
    entries
        .windows(2)
        .enumerate()
        .map(|(k, pair)| Gap {
            ms: entry_ms(&pair[1].id).saturating_sub(entry_ms(&pair[0].id)),
            after: k + 1,
        })
        .max_by_key(|gap| gap.ms)
}

/// The longest time without an entry of `entries` (stream order) between `from_ms` and
/// `to_ms` (Unix milliseconds): the gaps between consecutive entries inside the window, and
/// from each edge of the window to the nearest entry, so a pause that spans an edge counts.
pub fn longest_silence(entries: &[Entry], from_ms: u64, to_ms: u64) -> u64 {
    let inside: Vec<u64> = entries
        .iter()
        .map(|entry| entry_ms(&entry.id))
        .filter(|ms| (from_ms..=to_ms).contains(ms))
        .collect();
    let mut edges = Vec::with_capacity(inside.len() + 2);
    edges.push(from_ms);
    edges.extend(inside);
    edges.push(to_ms);
    edges
        .windows(2)
        .map(|pair| pair[1].saturating_sub(pair[0]))
        .max()
        .unwrap_or(0)
}

/// The newest entry of `stream`, if it has any.
pub fn last_entry(con: &mut Connection, stream: &str) -> Option<Entry> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)
        .unwrap_or_else(|e| panic!("XREVRANGE {stream} + - COUNT 1: {e}"));
    entries
        .into_iter()
        .next()
        .map(|(id, fields)| Entry { id, fields })
}

/// Every entry of `stream` after entry id `after` (exclusive), oldest first; all of them for
/// `None`.
pub fn xrange_after(con: &mut Connection, stream: &str, after: Option<&str>) -> Vec<Entry> {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(&start)
        .arg("+")
        .query(con)
        .unwrap_or_else(|e| panic!("XRANGE {stream} {start} +: {e}"));
    entries
        .into_iter()
        .map(|(id, fields)| Entry { id, fields })
        .collect()
}

/// The current time in Unix milliseconds, comparable with stream entry ids (Redis and the
/// tests share the machine's clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis()
        .try_into()
        .expect("milliseconds fit in u64")
}
