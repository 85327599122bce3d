//! L+, the stronger limit: the best loop we know how to write by hand for the
//! same job (`sluice-bench limit-plus ...`). Same delivery rule as L and
//! sluice: a message is acked only after its output XADD was confirmed.
//!
//! Per consumer, two threads on two connections, speaking RESP directly:
//!
//! ```text
//! reader:  [XACK finished batches, XREADGROUP COUNT batch BLOCK ms] -> batch buffer
//! worker:  batch buffer -> [XADD x batch], uppercased while encoding -> back to reader
//! ```
//!
//! The reader reads batch k+1 while the worker writes batch k (read-ahead
//! of one batch), and acks a batch in the same write as a later read, once
//! the worker handed it back confirmed. Batches live in a few reused
//! buffers (ids and fields are spans into one byte buffer), commands are
//! encoded into reused byte buffers, so the steady state allocates nothing
//! per message.

use crate::limit::ConsumerArgs;
use crate::workload::FIELD;
use anyhow::{Context as _, Result, anyhow, bail};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// Set by SIGTERM: readers stop reading, workers finish, the last acks go out.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Runs one reader and one worker thread per (pipeline, consumer) until SIGTERM.
pub fn run(args: &ConsumerArgs) -> Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
    let addr = address(&args.redis)?;
    let pid = std::process::id();
    std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for p in 0..args.pipelines {
            for c in 0..args.consumers {
                let source = format!("{}:{p}", args.source_prefix);
                let sink = format!("{}:{p}", args.sink_prefix);
                let consumer = format!("limit-plus-{pid}-{p}-{c}");
                // Depth 1: one batch waits while the worker writes another.
                let (to_worker, batches) = mpsc::sync_channel::<Batch>(1);
                let (done, finished) = mpsc::channel::<Batch>();
                let reader = Reader {
                    conn: Resp::connect(&addr)?,
                    source: source.clone(),
                    group: args.group.clone(),
                    consumer,
                    batch: args.batch,
                    block_ms: args.block_ms,
                };
                let worker = Worker {
                    conn: Resp::connect(&addr)?,
                    sink,
                };
                threads.push(scope.spawn(move || reader.run(to_worker, finished)));
                threads.push(scope.spawn(move || worker.run(batches, done)));
            }
        }
        threads.into_iter().try_for_each(|t| {
            t.join()
                .map_err(|_| anyhow!("a consumer thread panicked"))?
        })
    })
}

/// `redis://host:port[/db]` without credentials: the bench's own server.
fn address(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow!("L+ speaks plain TCP RESP: {url} is not redis://host:port"))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    if host_port.contains('@') {
        bail!("L+ does not authenticate: {url}");
    }
    Ok(host_port.to_string())
}

/// One read batch: every id, field name and value as a span of `data`.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    /// Per entry: its id, and its range in `fields`.
    entries: Vec<(Range<usize>, Range<usize>)>,
    /// (name, value) spans, entry after entry.
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Batch {
    fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
        self.fields.clear();
    }
}

struct Reader {
    conn: Resp,
    source: String,
    group: String,
    consumer: String,
    batch: u32,
    block_ms: u64,
}

impl Reader {
    fn run(
        mut self,
        to_worker: mpsc::SyncSender<Batch>,
        finished: mpsc::Receiver<Batch>,
    ) -> Result<()> {
        let mut free: Vec<Batch> = Vec::new();
        let mut acks: Vec<Batch> = Vec::new();
        // Batches handed to the worker and not yet back.
        let mut in_flight = 0usize;
        let (count, block) = (self.batch.to_string(), self.block_ms.to_string());
        loop {
            // Batches the worker wrote and confirmed: ack them with this read.
            let waiting = acks.len();
            acks.extend(finished.try_iter());
            in_flight -= acks.len() - waiting;
            if STOP.load(Ordering::Relaxed) {
                drop(to_worker);
                // The worker drains what it holds, then hangs up.
                acks.extend(finished.iter());
                if self.encode_ack(&acks) {
                    self.conn.flush()?;
                    self.conn.integer()?;
                }
                return Ok(());
            }
            let acked = self.encode_ack(&acks);
            free.append(&mut acks);
            let mut batch = free.pop().unwrap_or_default();
            batch.clear();
            // Block only with nothing in flight: a blocked read would hold
            // the acks of batches the worker finishes meanwhile for up to
            // block_ms, as sluice does not.
            let read: &[&[u8]] = &[
                b"XREADGROUP",
                b"GROUP",
                self.group.as_bytes(),
                self.consumer.as_bytes(),
                b"COUNT",
                count.as_bytes(),
                b"BLOCK",
                block.as_bytes(),
                b"STREAMS",
                self.source.as_bytes(),
                b">",
            ];
            if in_flight == 0 {
                self.conn.command(read);
            } else {
                self.conn.command(&[&read[..6], &read[8..]].concat());
            }
            self.conn.flush()?;
            if acked {
                self.conn.integer()?;
            }
            self.conn.read_entries(&mut batch)?;
            if batch.entries.is_empty() {
                free.push(batch);
                if in_flight > 0 {
                    // Nothing new: wait for the worker, then ack with the next read.
                    match finished.recv() {
                        Ok(done) => {
                            in_flight -= 1;
                            acks.push(done);
                        }
                        Err(_) => bail!("the worker of {} stopped", self.consumer),
                    }
                }
            } else if to_worker.send(batch).is_err() {
                bail!("the worker of {} stopped", self.consumer);
            } else {
                in_flight += 1;
            }
        }
    }

    /// Encodes one XACK for every id of `batches`; false when there is none.
    fn encode_ack(&mut self, batches: &[Batch]) -> bool {
        let n: usize = batches.iter().map(|b| b.entries.len()).sum();
        if n == 0 {
            return false;
        }
        let out = &mut self.conn.out;
        array_header(out, 3 + n);
        bulk(out, b"XACK");
        bulk(out, self.source.as_bytes());
        bulk(out, self.group.as_bytes());
        for b in batches {
            for (id, _) in &b.entries {
                bulk(out, &b.data[id.clone()]);
            }
        }
        true
    }
}

struct Worker {
    conn: Resp,
    sink: String,
}

impl Worker {
    fn run(mut self, batches: mpsc::Receiver<Batch>, done: mpsc::Sender<Batch>) -> Result<()> {
        for mut batch in batches {
            for (_, fields) in &batch.entries {
                let out = &mut self.conn.out;
                array_header(out, 3 + 2 * fields.len());
                bulk(out, b"XADD");
                bulk(out, self.sink.as_bytes());
                bulk(out, b"*");
                for (name, value) in &batch.fields[fields.clone()] {
                    let name = &batch.data[name.clone()];
                    bulk(out, name);
                    let start = out.len();
                    bulk(out, &batch.data[value.clone()]);
                    if name == FIELD.as_bytes() {
                        // The bulk's header and CRLF have no lowercase letters.
                        out[start..].make_ascii_uppercase();
                    }
                }
            }
            self.conn.flush()?;
            for _ in 0..batch.entries.len() {
                // Errors surface here; then nothing of this batch is acked.
                self.conn.skip_bulk()?;
            }
            batch.data.shrink_to(1 << 22);
            if done.send(batch).is_err() {
                return Ok(()); // the reader is gone: stopping
            }
        }
        Ok(())
    }
}

fn array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    push_int(out, n);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    push_int(out, bytes.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn push_int(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A RESP2 connection with reused buffers for both directions.
struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Resp {
    fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            reader: BufReader::with_capacity(1 << 16, stream.try_clone()?),
            writer: stream,
            out: Vec::with_capacity(1 << 16),
            line: Vec::with_capacity(64),
        })
    }

    fn command(&mut self, args: &[&[u8]]) {
        array_header(&mut self.out, args.len());
        for arg in args {
            bulk(&mut self.out, arg);
        }
    }

    /// Sends what was encoded.
    fn flush(&mut self) -> Result<()> {
        self.writer.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// One reply header: its type byte and the number after it.
    fn header(&mut self) -> Result<(u8, i64)> {
        self.line.clear();
        self.reader.read_until(b'\n', &mut self.line)?;
        let line = self
            .line
            .strip_suffix(b"\r\n")
            .ok_or_else(|| anyhow!("connection closed"))?;
        let (&kind, rest) = line.split_first().ok_or_else(|| anyhow!("empty reply"))?;
        if kind == b'-' {
            bail!("redis: {}", String::from_utf8_lossy(rest));
        }
        let n = std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad reply line {:?}", String::from_utf8_lossy(line)))?;
        Ok((kind, n))
    }

    fn expect(&mut self, kind: u8) -> Result<i64> {
        let (got, n) = self.header()?;
        if got != kind {
            bail!("expected reply type {}, got {}", kind as char, got as char);
        }
        Ok(n)
    }

    fn integer(&mut self) -> Result<i64> {
        self.expect(b':')
    }

    /// Appends a bulk string's bytes to `data`; returns its span.
    fn bulk_into(&mut self, data: &mut Vec<u8>) -> Result<Range<usize>> {
        let len = usize::try_from(self.expect(b'$')?).map_err(|_| anyhow!("nil bulk"))?;
        let start = data.len();
        data.resize(start + len + 2, 0);
        self.reader.read_exact(&mut data[start..])?;
        data.truncate(start + len);
        Ok(start..start + len)
    }

    fn skip_bulk(&mut self) -> Result<()> {
        let len = usize::try_from(self.expect(b'$')?).map_err(|_| anyhow!("nil bulk"))?;
        let mut left = len + 2;
        while left > 0 {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                bail!("connection closed");
            }
            let n = buf.len().min(left);
            self.reader.consume(n);
            left -= n;
        }
        Ok(())
    }

    /// An XREADGROUP reply of one stream (nil when BLOCK timed out) into `batch`.
    fn read_entries(&mut self, batch: &mut Batch) -> Result<()> {
        let streams = self.expect(b'*')?;
        if streams < 0 {
            return Ok(());
        }
        for _ in 0..streams {
            self.expect(b'*')?; // [key, entries]
            self.skip_bulk()?;
            let entries = self.expect(b'*')?;
            for _ in 0..entries {
                self.expect(b'*')?; // [id, fields]
                let id = self.bulk_into(&mut batch.data)?;
                let flat = self.expect(b'*')?.max(0);
                let first = batch.fields.len();
                for _ in 0..flat / 2 {
                    let name = self.bulk_into(&mut batch.data)?;
                    let value = self.bulk_into(&mut batch.data)?;
                    batch.fields.push((name, value));
                }
                batch.entries.push((id, first..batch.fields.len()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_resp() {
        let mut out = Vec::new();
        array_header(&mut out, 2);
        bulk(&mut out, b"GET");
        bulk(&mut out, b"");
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n");
        out.clear();
        push_int(&mut out, 1_234_567_890);
        push_int(&mut out, 0);
        assert_eq!(out, b"12345678900");
    }

    #[test]
    fn addresses() {
        assert_eq!(address("redis://127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(
            address("redis://127.0.0.1:7000/0").unwrap(),
            "127.0.0.1:7000"
        );
        assert!(address("rediss://x:1").is_err());
        assert!(address("redis://u:p@x:1").is_err());
    }
}
