//! Adds the configured keys to a JSON object carried in one field.

use serde_json::{Map, Value};
use sluice_sdk::{Config, Failure, Message, Processor, Record};

struct JsonEnrich {
    /// The field holding the JSON object: config `field`, default `payload`.
    field: String,
    /// Every other config key, added to the object as a JSON string.
    extra: Map<String, Value>,
}

impl Processor for JsonEnrich {
    fn init(config: Config) -> Result<Self, String> {
        let field = config.get_or("field", "payload").to_owned();
        let extra = config
            .iter()
            .filter(|(key, _)| *key != "field")
            .map(|(key, value)| (key.to_owned(), Value::from(value)))
            .collect();
        Ok(JsonEnrich { field, extra })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
        let value = msg
            .get(&self.field)
            .ok_or_else(|| Failure::dead_letter(format!("missing field `{}`", self.field)))?;
        let mut object: Map<String, Value> = serde_json::from_slice(value).map_err(|e| {
            Failure::dead_letter(format!("field `{}` is not a JSON object: {e}", self.field))
        })?;
        object.extend(self.extra.clone());
        let json = Value::Object(object).to_string();
        Ok(vec![msg.into_record().set(&self.field, json)])
    }
}

sluice_sdk::export_processor!(JsonEnrich);
