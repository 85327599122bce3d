//! {{name}}: a Sluice processor. Passes every message on with one field
//! added, `processed_by` (config `tag`, default "{{name}}"), and
//! dead-letters a message without a `payload` field.

use sluice_sdk::{Config, Failure, Message, Processor, Record};

struct Plugin {
    tag: String,
}

impl Processor for Plugin {
    fn init(config: Config) -> Result<Self, String> {
        let tag = config.get_or("tag", "{{name}}").to_owned();
        Ok(Plugin { tag })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
        if msg.get("payload").is_none() {
            return Err(Failure::dead_letter("missing field `payload`"));
        }
        Ok(vec![msg.into_record().set("processed_by", self.tag.as_bytes())])
    }
}

sluice_sdk::export_processor!(Plugin);
