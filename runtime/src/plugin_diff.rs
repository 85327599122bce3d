//! `sluice plugin diff`: run two versions of a plugin on the same messages
//! (the newest entries of a live stream, read-only, or a JSON-lines file)
//! and report, message by message, where their outcomes part.
//!
//! Reading the stream uses XREVRANGE only: no consumer group is created,
//! nothing is acked, nothing is written. A deploy can run it against
//! production traffic and gate on its exit status.

use crate::message::{Failure, FailureKind, Field, Message, Outcome, Record, escape};
use crate::plugin::{Chain, Engine, Stage, StageSettings};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `sluice plugin diff OLD NEW (--from STREAM [--count N] | --input FILE.jsonl)`.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// The version running now (.wasm).
    pub old: PathBuf,
    /// The candidate (.wasm).
    pub new: PathBuf,
    /// Read the newest entries of this stream (read-only: no group, no ack).
    #[arg(long, value_name = "STREAM", required_unless_present = "input")]
    pub from: Option<String>,
    /// How many of the newest entries to read.
    #[arg(long, default_value_t = 100, requires = "from")]
    pub count: usize,
    /// Messages from a JSON-lines file instead, one object of fields per line.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "from")]
    pub input: Option<PathBuf>,
    /// A `[processor.config]` entry for both inits (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
    pub config: Vec<(String, String)>,
    /// Redis URL. Default: $SLUICE_REDIS_URL, then redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// Runs the diff `args` describes, reading from Redis at `url`; exit status
/// 0 when every message had the same outcome, 2 when not.
pub async fn command(args: DiffArgs, url: String) -> Result<ExitCode> {
    let messages = match (&args.input, &args.from) {
        (Some(file), _) => read_file(file)?,
        (None, Some(stream)) => read_recent(&url, stream, args.count).await?,
        (None, None) => anyhow::bail!("give messages with --from STREAM or --input FILE.jsonl"),
    };
    let engine = Engine::new(crate::plugin::default_cache_dir())?;
    let summary = tokio::task::spawn_blocking(move || {
        run(
            &engine,
            &args.old,
            &args.new,
            args.config,
            &messages,
            &mut std::io::stdout().lock(),
        )
    })
    .await??;
    Ok(if summary.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// `sluice plugin promote|rollback PIPELINE [STAGE] --http ADDR`.
#[derive(clap::Args)]
pub struct ControlArgs {
    /// The pipeline's name.
    pub pipeline: String,
    /// The processor, counted from 1 in the pipeline file's order.
    #[arg(default_value_t = 1)]
    pub stage: usize,
    /// The `--http` address of the running `sluice run`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub http: String,
}

/// Asks the process listening on `args.http` to `action` (promote or
/// rollback) a stage; prints its answer. Exit 0 when it did, 2 when it
/// had nothing to do (no candidate, no previous version).
pub async fn control(args: ControlArgs, action: &str) -> Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = format!(
        "/pipelines/{}/stages/{}/{action}",
        percent_encode(&args.pipeline),
        args.stage
    );
    let mut stream = tokio::net::TcpStream::connect(&args.http)
        .await
        .with_context(|| format!("cannot reach sluice at {} (its --http address)", args.http))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        args.http
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer from {}", args.http))?;
    match status {
        200 => {
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        409 => {
            eprintln!("{action}: {}", body.trim_end());
            Ok(ExitCode::from(2))
        }
        _ => anyhow::bail!("{action}: {} (HTTP {status})", body.trim_end()),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `count` newest entries of `stream`, oldest first, read with
/// XREVRANGE (no group, nothing acked).
pub async fn read_recent(url: &str, stream: &str, count: usize) -> Result<Vec<Message>> {
    let client = crate::conn::client(url)?;
    let mut conn = client
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", crate::conn::redact(url)))?;
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut conn)
        .await
        .with_context(|| format!("cannot read {stream}"))?;
    let source: Arc<str> = stream.into();
    Ok(entries
        .into_iter()
        .rev()
        .map(|(id, flat)| {
            let mut it = flat.into_iter();
            let mut fields = Vec::new();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                fields.push((name, value));
            }
            Message {
                first_delivery_ms: crate::message::stream_id_ms(&id),
                id,
                source: source.clone(),
                fields,
                deliveries: 1,
            }
        })
        .collect())
}

/// Messages from a JSON-lines file (see [`crate::plugin_test::read_jsonl`]),
/// with ids `1-0`, `2-0`, ... by line.
pub fn read_file(path: &Path) -> Result<Vec<Message>> {
    let source: Arc<str> = path.display().to_string().into();
    Ok(crate::plugin_test::read_jsonl(path)?
        .into_iter()
        .enumerate()
        .map(|(i, fields)| Message {
            id: format!("{}-0", i + 1),
            source: source.clone(),
            fields,
            deliveries: 1,
            first_delivery_ms: 0,
        })
        .collect())
}

/// What two versions did with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same records, or the same kind of failure.
    Same,
    /// Both succeeded, with different records.
    Different,
    /// One version failed where the other did not, or failed differently.
    Failing,
}

/// Counts of a diff, by verdict.
#[derive(Debug, Default)]
pub struct Summary {
    /// Messages compared.
    pub messages: usize,
    /// Same outcome in both versions.
    pub same: usize,
    /// Different records.
    pub different: usize,
    /// Failing in one version (or differently in both).
    pub failing: usize,
}

impl Summary {
    /// True when every message had the same outcome.
    pub fn clean(&self) -> bool {
        self.different == 0 && self.failing == 0
    }
}

/// Loads `old` and `new`, runs each init with `config`, processes
/// `messages` with both, and prints one line per message (with the field
/// differences below it) and a summary.
pub fn run(
    engine: &Engine,
    old: &Path,
    new: &Path,
    config: Vec<(String, String)>,
    messages: &[Message],
    out: &mut impl Write,
) -> Result<Summary> {
    let mut chains = Vec::new();
    for (label, path) in [("old", old), ("new", new)] {
        let plugin = engine.load(path)?;
        writeln!(
            out,
            "# {label}: {} ({})",
            path.display(),
            plugin.short_hash()
        )?;
        let settings = StageSettings::offline("plugin-diff", config.clone());
        let mut chain = Chain::new(&[Arc::new(Stage::new(plugin, settings))]);
        chain
            .warm()
            .map_err(|e| anyhow::anyhow!("{}: init failed: {e}", path.display()))?;
        chains.push(chain);
    }
    let before = chains[0].process(messages);
    let after = chains[1].process(messages);
    let mut summary = Summary {
        messages: messages.len(),
        ..Summary::default()
    };
    for ((msg, a), b) in messages.iter().zip(&before).zip(&after) {
        let (verdict, lines) = compare(a, b);
        match verdict {
            Verdict::Same => summary.same += 1,
            Verdict::Different => summary.different += 1,
            Verdict::Failing => summary.failing += 1,
        }
        writeln!(out, "{}: {}", msg.id, lines[0])?;
        for line in &lines[1..] {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(
        out,
        "summary: {} messages: {} same, {} different, {} failing in one version",
        summary.messages, summary.same, summary.different, summary.failing
    )?;
    Ok(summary)
}

/// The verdict on one message and its report: a headline, then details.
pub fn compare(old: &Outcome, new: &Outcome) -> (Verdict, Vec<String>) {
    match (old, new) {
        (Ok(a), Ok(b)) if a == b => (Verdict::Same, vec!["same".into()]),
        (Ok(a), Ok(b)) => {
            let mut lines = vec!["different".to_string()];
            if a.len() != b.len() {
                lines.push(format!("records: {} -> {}", a.len(), b.len()));
            }
            for (i, (ra, rb)) in a.iter().zip(b).enumerate() {
                record_diff(i + 1, ra, rb, &mut lines);
            }
            (Verdict::Different, lines)
        }
        (Err(a), Err(b)) if a.kind == b.kind && a.class == b.class => (
            Verdict::Same,
            vec![format!("same (fails in both: {})", describe(a))],
        ),
        (Err(a), Err(b)) => (
            Verdict::Failing,
            vec![
                "fails differently".into(),
                format!("old: {}", describe(a)),
                format!("new: {}", describe(b)),
            ],
        ),
        (Ok(_), Err(f)) => (
            Verdict::Failing,
            vec![format!("fails in new only: {}", describe(f))],
        ),
        (Err(f), Ok(_)) => (
            Verdict::Failing,
            vec![format!("fails in old only: {}", describe(f))],
        ),
    }
}

/// `kind, class: reason`, the way a failure is named in the report.
pub fn describe(f: &Failure) -> String {
    format!("{}, {}: {}", kind_name(f.kind), f.class.as_str(), f.reason)
}

/// The name of a failure kind as plugins spell it.
pub fn kind_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Retry => "retry",
        FailureKind::DeadLetter => "dead-letter",
        FailureKind::Drop => "drop",
    }
}

fn record_diff(n: usize, a: &Record, b: &Record, lines: &mut Vec<String>) {
    if a.to != b.to {
        lines.push(format!(
            "record {n}: to {} -> {}",
            a.to.as_deref().unwrap_or("(first sink)"),
            b.to.as_deref().unwrap_or("(first sink)")
        ));
    }
    let find = |fields: &[Field], name: &[u8]| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for (name, va) in &a.fields {
        match find(&b.fields, name) {
            Some(vb) if &vb == va => {}
            Some(vb) => lines.push(format!(
                "record {n}: field `{}`: \"{}\" -> \"{}\"",
                escape(name),
                escape(va),
                escape(&vb)
            )),
            None => lines.push(format!(
                "record {n}: field `{}` only in old: \"{}\"",
                escape(name),
                escape(va)
            )),
        }
    }
    for (name, vb) in &b.fields {
        if find(&a.fields, name).is_none() {
            lines.push(format!(
                "record {n}: field `{}` only in new: \"{}\"",
                escape(name),
                escape(vb)
            ));
        }
    }
    let order = |fields: &[Field]| fields.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    if lines.len() == 1 && order(&a.fields) != order(&b.fields) {
        lines.push(format!("record {n}: same fields in another order"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::FailureClass;

    fn rec(fields: &[(&str, &str)]) -> Record {
        Record {
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            to: None,
        }
    }

    #[test]
    fn names_each_changed_field() {
        let (v, lines) = compare(
            &Ok(vec![rec(&[("a", "1"), ("b", "2")])]),
            &Ok(vec![rec(&[("a", "1"), ("b", "3"), ("c", "4")])]),
        );
        assert_eq!(v, Verdict::Different);
        assert_eq!(
            lines[1..],
            [
                "record 1: field `b`: \"2\" -> \"3\"",
                "record 1: field `c` only in new: \"4\""
            ]
        );
    }

    #[test]
    fn failure_in_one_version_names_its_kind() {
        let f = Failure::retry(FailureClass::Trap, "process trapped: boom");
        let (v, lines) = compare(&Ok(vec![]), &Err(f));
        assert_eq!(v, Verdict::Failing);
        assert_eq!(
            lines[0],
            "fails in new only: retry, trap: process trapped: boom"
        );
    }
}
