//! Drops a message whose key was already seen within a time window.
//!
//! The first message with a given key passes; later ones within `window_ms`
//! are filtered (acked, written nowhere). The window lives in the pipeline's
//! key-value store as a key with a TTL, claimed atomically, so it holds
//! across every consumer and process of the pipeline and survives restarts.
//! The key remembers which message claimed it, so a redelivery of that same
//! message (after a failed write or a crash) passes again instead of being
//! lost as its own duplicate.

use sluice_sdk::{Config, Failure, Message, Processor, Record, kv};
use std::time::Duration;

struct Dedup {
    /// The field whose value identifies a message: config `key`, default `id`.
    field: String,
    /// How long a key stays seen: config `window_ms`, default 60000.
    window: Duration,
}

impl Processor for Dedup {
    fn init(config: Config) -> Result<Self, String> {
        let field = config.get_or("key", "id").to_owned();
        let window_ms: u64 = config.parse_or("window_ms", 60_000)?;
        if window_ms == 0 {
            return Err("window_ms must be at least 1".into());
        }
        Ok(Dedup {
            field,
            window: Duration::from_millis(window_ms),
        })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
        let key = msg
            .get(&self.field)
            .ok_or_else(|| Failure::dead_letter(format!("missing field `{}`", self.field)))?;
        // Keys are text in the store; a key that is not UTF-8 is spelled in hex.
        let seen = match std::str::from_utf8(key) {
            Ok(text) => format!("seen:{text}"),
            Err(_) => format!(
                "seen-hex:{}",
                key.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        };
        // The store failing is transient: retry rather than let a duplicate through.
        let first = kv::set_new(&seen, msg.id(), Some(self.window)).map_err(Failure::retry)?;
        // A redelivery of the message that claimed the key (its sink write
        // failed, or the process died before the ack) is not a duplicate.
        let ours = first
            || kv::get(&seen).map_err(Failure::retry)?.as_deref() == Some(msg.id().as_bytes());
        Ok(if ours {
            vec![msg.into_record()]
        } else {
            Vec::new()
        })
    }
}

sluice_sdk::export_processor!(Dedup);
