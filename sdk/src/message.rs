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

/// Building messages by hand: for a processor's unit tests, which run
/// natively with `cargo test`, no Wasm involved (see the crate docs).
impl Message {
    /// A first delivery of `fields`, with id `1-0` from source `test`.
    pub fn new<N, V>(fields: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<String>,
        V: Into<Vec<u8>>,
    {
        Message(wit::Message {
            id: "1-0".into(),
            source: "test".into(),
            fields: fields
                .into_iter()
                .map(|(name, value)| wit::Field {
                    name: name.into(),
                    value: value.into(),
                })
                .collect(),
            deliveries: 1,
            first_delivery_ms: 1,
        })
    }

    /// The same message with entry id `id`.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.0.id = id.into();
        self
    }

    /// The same message from `source` (stream key, channel or list).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.0.source = source.into();
        self
    }

    /// The same message on its `n`th delivery.
    pub fn with_deliveries(mut self, n: u32) -> Self {
        self.0.deliveries = n;
        self
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
