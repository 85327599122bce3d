//! `sluice plugin test`: run a plugin on sample messages, without Redis,
//! and print what it returns. For plugin authors' edit-build-try loop. The
//! key-value store is in memory for the run (empty at start).

use crate::message::{Field, Message, Outcome};
use crate::plugin::{Chain, Engine, Stage, StageSettings};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Messages from a JSON-lines file: each line an object of fields (string
/// values as they are, other values as their JSON text).
pub fn read_jsonl(path: &Path) -> Result<Vec<Vec<Field>>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut messages = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let serde_json::Value::Object(object) = value else {
            bail!(
                "{}:{}: each line must be a JSON object of fields",
                path.display(),
                n + 1
            );
        };
        messages.push(
            object
                .into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k.into_bytes(), text.into_bytes())
                })
                .collect(),
        );
    }
    Ok(messages)
}

/// Loads `plugin`, runs its init with `config`, processes `messages` in one
/// batch, and prints one block per message. Returns whether every message
/// succeeded.
pub fn run(
    engine: &Engine,
    plugin: &Path,
    config: Vec<(String, String)>,
    messages: Vec<Vec<Field>>,
    out: &mut impl Write,
) -> Result<bool> {
    let loaded = engine.load(plugin)?;
    let settings = StageSettings::offline("plugin-test", config);
    let hash = loaded.short_hash().to_string();
    // One instance, one init: the one that then processes the batch.
    let mut chain = Chain::new(&[Arc::new(Stage::new(loaded, settings))]);
    chain
        .warm()
        .map_err(|e| anyhow::anyhow!("init failed: {e}"))?;
    writeln!(out, "# {} ({hash})", plugin.display())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let batch: Vec<Message> = messages
        .into_iter()
        .enumerate()
        .map(|(i, fields)| Message {
            id: format!("{now}-{i}"),
            source: "plugin-test".into(),
            fields,
            deliveries: 1,
            first_delivery_ms: now,
        })
        .collect();
    let outcomes = chain.process(&batch);
    let mut ok = true;
    for (msg, outcome) in batch.iter().zip(outcomes) {
        ok &= print(msg, outcome, out)?;
    }
    Ok(ok)
}

fn print(msg: &Message, outcome: Outcome, out: &mut impl Write) -> Result<bool> {
    match outcome {
        Ok(records) => {
            writeln!(out, "{}: {} record(s)", msg.id, records.len())?;
            for record in &records {
                let mut line = Vec::new();
                crate::sink::json_line(&mut line, record).map_err(anyhow::Error::msg)?;
                write!(
                    out,
                    "  -> {}: ",
                    record.to.as_deref().unwrap_or("(first sink)")
                )?;
                out.write_all(&line)?;
            }
            Ok(true)
        }
        Err(f) => {
            let kind = match f.kind {
                crate::message::FailureKind::Retry => "retry",
                crate::message::FailureKind::DeadLetter => "dead-letter",
                crate::message::FailureKind::Drop => "drop",
            };
            writeln!(
                out,
                "{}: failed ({kind}, {}): {}",
                msg.id,
                f.class.as_str(),
                f.reason
            )?;
            Ok(false)
        }
    }
}
