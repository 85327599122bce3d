use crate::Record;
use crate::bindings::sluice::processor::types as wit;

/// A message read from the pipeline's source.
#[derive(Debug, Clone)]
pub struct Message(wit::Message);

impl Message {
    /// The stream entry id (`1700000000000-0`); synthetic and unique for
    /// pub/sub and list items.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The stream key, channel or list key the message came from.
    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// 1 on the first delivery, 2 on the first redelivery, and so on.
    pub fn deliveries(&self) -> u32 {
        self.0.deliveries
    }

    /// When the message was first delivered, in milliseconds since the Unix
    /// epoch.
    pub fn first_delivery_ms(&self) -> u64 {
        self.0.first_delivery_ms
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        crate::record::get(&self.0.fields, name)
    }

    /// The value of the first field called `name`, if it is UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every field as `(name, value)`, in the order Redis stored them.
    /// Pub/sub and list payloads arrive as one field named `payload`.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_slice()))
    }

    /// A record with this message's fields, in order, for the first sink.
    pub fn into_record(self) -> Record {
        Record::from(self)
    }
}

impl From<wit::Message> for Message {
    fn from(message: wit::Message) -> Self {
        Message(message)
    }
}

impl From<Message> for Record {
    fn from(message: Message) -> Self {
        Record::from_fields(message.0.fields)
    }
}
