//! What a plugin instance writes: `log` calls and its stdout and stderr, as
//! tracing events tagged with the pipeline, the plugin and the entry being
//! processed, under a per-instance rate limit so a chatty plugin cannot
//! flood the log (or slow its pipeline down writing it).

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Lines per second an instance may write, sustained.
pub const LINES_PER_SEC: f64 = 50.0;
/// Lines an instance may write at once before the rate applies: room for a
/// start-up banner or a short burst of warnings.
pub const BURST: f64 = 100.0;
/// What a stderr tail keeps: enough for a panic message and its location.
const STDERR_TAIL: usize = 4096;
/// A line longer than this is written in pieces, so a guest that never
/// writes a newline cannot grow the buffer without end.
const MAX_LINE: usize = 4096;

/// Where a line came from.
#[derive(Clone, Copy, Debug)]
pub enum Origin {
    /// A `log` call, at the level it names.
    Log(Level),
    /// The guest's stdout (at info).
    Stdout,
    /// The guest's stderr (at warn: panics and tracebacks land there).
    Stderr,
}

/// `log` levels, as the WIT names them.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// For plugin authors.
    Debug,
    /// Normal operation.
    Info,
    /// Something to look at.
    Warn,
    /// Something failed.
    Error,
}

/// One instance's log: shared by its `log` import and its output streams.
#[derive(Clone)]
pub struct GuestLog(Arc<Mutex<State>>);

struct State {
    pipeline: Arc<str>,
    plugin: Arc<str>,
    /// The entry (or `first..last` entries) of the call in progress.
    entry: String,
    tokens: f64,
    refilled: Instant,
    /// Lines dropped since the last one written.
    suppressed: u64,
}

impl GuestLog {
    /// A log for one instance of `plugin` in `pipeline`.
    pub fn new(pipeline: Arc<str>, plugin: Arc<str>) -> Self {
        GuestLog(Arc::new(Mutex::new(State {
            pipeline,
            plugin,
            entry: "(init)".into(),
            tokens: BURST,
            refilled: Instant::now(),
            suppressed: 0,
        })))
    }

    /// Tags what follows with the entries of the batch about to be processed:
    /// its id if it is one message, `first..last` otherwise.
    pub fn processing(&self, first: &str, last: &str) {
        let mut state = self.lock();
        state.entry.clear();
        state.entry.push_str(first);
        if first != last {
            state.entry.push_str("..");
            state.entry.push_str(last);
        }
    }

    /// Writes one line, unless the instance is over its rate.
    pub fn line(&self, origin: Origin, text: &str) {
        self.lock().line(origin, text);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for State {
    /// Lines dropped at the very end are still counted.
    fn drop(&mut self) {
        self.report_suppressed();
    }
}

macro_rules! emit {
    ($level:expr, $state:expr, $from:expr, $text:expr) => {{
        let s = $state;
        match $level {
            Level::Trace => tracing::trace!(pipeline = %s.pipeline, plugin = %s.plugin, entry = %s.entry, from = $from, "{}", $text),
            Level::Debug => tracing::debug!(pipeline = %s.pipeline, plugin = %s.plugin, entry = %s.entry, from = $from, "{}", $text),
            Level::Info => tracing::info!(pipeline = %s.pipeline, plugin = %s.plugin, entry = %s.entry, from = $from, "{}", $text),
            Level::Warn => tracing::warn!(pipeline = %s.pipeline, plugin = %s.plugin, entry = %s.entry, from = $from, "{}", $text),
            Level::Error => tracing::error!(pipeline = %s.pipeline, plugin = %s.plugin, entry = %s.entry, from = $from, "{}", $text),
        }
    }};
}

impl State {
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * LINES_PER_SEC).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn line(&mut self, origin: Origin, text: &str) {
        if !self.admit() {
            self.suppressed += 1;
            return;
        }
        self.report_suppressed();
        let (level, from) = match origin {
            Origin::Log(level) => (level, "log"),
            Origin::Stdout => (Level::Info, "stdout"),
            Origin::Stderr => (Level::Warn, "stderr"),
        };
        emit!(level, &*self, from, text);
    }

    fn report_suppressed(&mut self) {
        if self.suppressed > 0 {
            let n = std::mem::take(&mut self.suppressed);
            tracing::warn!(
                pipeline = %self.pipeline,
                plugin = %self.plugin,
                entry = %self.entry,
                suppressed = n,
                "suppressed {n} lines from the plugin (over {LINES_PER_SEC} lines/s)"
            );
        }
    }
}

/// The guest's stdout or stderr: complete lines go to the [`GuestLog`];
/// stderr also keeps its last bytes for failure reasons. Never refuses a
/// write (a refused write makes Rust's `eprintln!` panic).
#[derive(Clone)]
pub struct GuestOutput {
    log: GuestLog,
    origin: Origin,
    /// The unfinished last line.
    partial: Arc<Mutex<Vec<u8>>>,
    tail: Option<StderrTail>,
}

impl GuestOutput {
    /// The guest's stdout.
    pub fn stdout(log: GuestLog) -> Self {
        GuestOutput {
            log,
            origin: Origin::Stdout,
            partial: Arc::default(),
            tail: None,
        }
    }

    /// The guest's stderr, also kept in `tail`.
    pub fn stderr(log: GuestLog, tail: StderrTail) -> Self {
        GuestOutput {
            log,
            origin: Origin::Stderr,
            partial: Arc::default(),
            tail: Some(tail),
        }
    }

    fn write_line(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if !text.trim().is_empty() {
            self.log.line(self.origin, text);
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if let Some(tail) = &self.tail {
            tail.push(&bytes);
        }
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            partial.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || partial.len() >= MAX_LINE {
                self.write_line(&partial);
                partial.clear();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

/// The last [`STDERR_TAIL`] bytes of the guest's stderr.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

impl StderrTail {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend(bytes.iter());
        let excess = buf.len().saturating_sub(STDERR_TAIL);
        buf.drain(..excess);
    }

    /// The last line the guest wrote that says something (a panic message, usually).
    pub fn last_message(&self) -> Option<String> {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = buf.iter().copied().collect();
        drop(buf);
        let text = String::from_utf8_lossy(&bytes);
        // Skip Rust's "note: run with `RUST_BACKTRACE=1`" hint after a panic.
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        // Rust prints "panicked at src/lib.rs:1:2:" then the message on the next line.
        let msg = match lines.as_slice() {
            [.., at, msg] if at.contains("panicked at") => format!("{at} {msg}"),
            [.., last] => last.to_string(),
            [] => return None,
        };
        Some(msg.chars().take(500).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_admits_a_burst_then_the_rate() {
        let log = GuestLog::new("p".into(), "x.wasm".into());
        let mut state = log.lock();
        let admitted = (0..1000).filter(|_| state.admit()).count();
        // A few tokens may refill while the loop runs.
        assert!(
            (BURST as usize..BURST as usize + 5).contains(&admitted),
            "{admitted}"
        );
        state.refilled -= std::time::Duration::from_secs(1);
        let admitted = (0..1000).filter(|_| state.admit()).count();
        assert!(
            (LINES_PER_SEC as usize..LINES_PER_SEC as usize + 5).contains(&admitted),
            "{admitted}"
        );
    }
}
