//! Uppercases one field of every message and passes the rest through.

use sluice_sdk::{Config, Failure, Message, Processor, Record};

struct Uppercase {
    /// The field to uppercase: config `field`, default `payload`.
    field: String,
}

impl Processor for Uppercase {
    fn init(config: Config) -> Result<Self, String> {
        let field = config.get_or("field", "payload").to_owned();
        Ok(Uppercase { field })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
        let value = msg
            .get(&self.field)
            .ok_or_else(|| Failure::dead_letter(format!("missing field `{}`", self.field)))?;
        // ASCII (the common case) byte by byte; other UTF-8 by Unicode rules
        // (`ß` becomes `SS`); bytes that are not UTF-8 only in their ASCII part.
        let upper = if value.is_ascii() {
            value.to_ascii_uppercase()
        } else {
            match std::str::from_utf8(value) {
                Ok(text) => text.to_uppercase().into_bytes(),
                Err(_) => value.to_ascii_uppercase(),
            }
        };
        Ok(vec![msg.into_record().set(&self.field, upper)])
    }
}

sluice_sdk::export_processor!(Uppercase);
