//! Numbers messages with a counter shared by the whole pipeline: each
//! message passes with a field `count` holding the counter's new value.
//!
//! The counter lives in the pipeline's key-value store, so every consumer
//! and process of the pipeline counts together, and another pipeline with a
//! key of the same name counts on its own.

use sluice_sdk::{Config, Failure, Message, Processor, Record, kv};

struct Counter {
    /// The counter's key: config `key`, default `count`.
    key: String,
    /// The output field: config `field`, default `count`.
    field: String,
}

impl Processor for Counter {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Counter {
            key: config.get_or("key", "count").to_owned(),
            field: config.get_or("field", "count").to_owned(),
        })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
        let n = kv::incr(&self.key, 1).map_err(Failure::retry)?;
        Ok(vec![msg.into_record().set(&self.field, n.to_string())])
    }
}

sluice_sdk::export_processor!(Counter);
