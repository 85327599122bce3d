use std::ops::Range;
use std::sync::Arc;

use crate::Record;
use crate::bindings::sluice::processor::types as wit;
use crate::wire;

/// A message read from the pipeline's source.
///
/// Messages of a batch share the buffer it arrived in, and so do the
/// records made from them: a processor that keeps a message or record past
/// its batch keeps that whole buffer alive. Keep the values you need
/// (`msg.get(name).map(<[u8]>::to_vec)`) instead.
#[derive(Debug, Clone)]
pub struct Message(Repr);

/// A message from the typed `process` call owns its strings; one from
/// `process-encoded` points into the batch buffer it arrived in, so decoding
/// a batch allocates per batch, not per id, source, name and value.
#[derive(Debug, Clone)]
enum Repr {
    Typed(wit::Message),
    Encoded {
        batch: Arc<Batch>,
        id: Span,
        source: Span,
        /// Indexes into `batch.fields`.
        fields: Range<usize>,
        deliveries: u32,
        first_delivery_ms: u64,
    },
}

/// An encoded batch (sdk/README.md, "The encoded batch") and where each
/// field's name and value lie in it. Names and ids were checked to be UTF-8
/// when the batch was decoded.
#[derive(Debug)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    fields: Vec<(Span, Span)>,
}

/// A byte range of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Batch {
    /// The name and value spans of `range`'s fields.
    pub(crate) fn fields(&self, range: Range<usize>) -> &[(Span, Span)] {
        &self.fields[range]
    }

    pub(crate) fn bytes(&self, span: Span) -> &[u8] {
        &self.bytes[span.start as usize..span.end as usize]
    }

    /// A span that was checked to be UTF-8 when decoded.
    pub(crate) fn str(&self, span: Span) -> &str {
        std::str::from_utf8(self.bytes(span)).expect("checked when the batch was decoded")
    }

    /// Splits an encoded batch into messages that share its buffer. Every
    /// length is checked; a batch that does not decode yields an error.
    pub(crate) fn decode(bytes: Vec<u8>) -> Result<Vec<Message>, wire::Malformed> {
        struct Head {
            id: Span,
            source: Span,
            fields: Range<usize>,
            deliveries: u32,
            first_delivery_ms: u64,
        }
        let base = bytes.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = (s.as_ptr() as usize - base) as u32;
            Span {
                start,
                end: start + s.len() as u32,
            }
        };
        // Ids, sources and names are ASCII but for rare names: checking that
        // first is several times cheaper than a UTF-8 check of short text.
        let text = |s: &[u8]| match s.is_ascii() || std::str::from_utf8(s).is_ok() {
            true => Ok(span(s)),
            false => Err(wire::Malformed("text is not UTF-8")),
        };
        let mut r = wire::Reader::new(&bytes);
        // A message is at least 28 bytes: id, source, deliveries, first ms, count.
        let n = r.count(28)?;
        let mut heads = Vec::with_capacity(n);
        let mut fields = Vec::new();
        for _ in 0..n {
            let id = text(r.bytes()?)?;
            let source = text(r.bytes()?)?;
            let deliveries = r.u32()?;
            let first_delivery_ms = r.u64()?;
            let count = r.count(8)?;
            let start = fields.len();
            for _ in 0..count {
                let name = text(r.bytes()?)?;
                fields.push((name, span(r.bytes()?)));
            }
            heads.push(Head {
                id,
                source,
                fields: start..fields.len(),
                deliveries,
                first_delivery_ms,
            });
        }
        let batch = Arc::new(Batch { bytes, fields });
        Ok(heads
            .into_iter()
            .map(|h| {
                Message(Repr::Encoded {
                    batch: batch.clone(),
                    id: h.id,
                    source: h.source,
                    fields: h.fields,
                    deliveries: h.deliveries,
                    first_delivery_ms: h.first_delivery_ms,
                })
            })
            .collect())
    }
}

impl Message {
    /// The stream entry id (`1700000000000-0`); synthetic and unique for
    /// pub/sub and list items.
    pub fn id(&self) -> &str {
        match &self.0 {
            Repr::Typed(m) => &m.id,
            Repr::Encoded { batch, id, .. } => batch.str(*id),
        }
    }

    /// The stream key, channel or list key the message came from.
    pub fn source(&self) -> &str {
        match &self.0 {
            Repr::Typed(m) => &m.source,
            Repr::Encoded { batch, source, .. } => batch.str(*source),
        }
    }

    /// 1 on the first delivery, 2 on the first redelivery, and so on.
    pub fn deliveries(&self) -> u32 {
        match &self.0 {
            Repr::Typed(m) => m.deliveries,
            Repr::Encoded { deliveries, .. } => *deliveries,
        }
    }

    /// When the message was first delivered, in milliseconds since the Unix
    /// epoch.
    pub fn first_delivery_ms(&self) -> u64 {
        match &self.0 {
            Repr::Typed(m) => m.first_delivery_ms,
            Repr::Encoded {
                first_delivery_ms, ..
            } => *first_delivery_ms,
        }
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match &self.0 {
            Repr::Typed(m) => crate::record::get(&m.fields, name),
            Repr::Encoded { batch, fields, .. } => batch.fields[fields.clone()]
                .iter()
                .find(|(n, _)| batch.bytes(*n) == name.as_bytes())
                .map(|(_, v)| batch.bytes(*v)),
        }
    }

    /// The value of the first field called `name`, if it is UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every field as `(name, value)`, in the order Redis stored them.
    /// Pub/sub and list payloads arrive as one field named `payload`.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let (typed, encoded) = match &self.0 {
            Repr::Typed(m) => (&m.fields[..], None),
            Repr::Encoded { batch, fields, .. } => (&[][..], Some((batch, fields.clone()))),
        };
        let typed = typed.iter().map(|f| (f.name.as_str(), f.value.as_slice()));
        let encoded = encoded.into_iter().flat_map(|(batch, fields)| {
            batch.fields[fields]
                .iter()
                .map(|(n, v)| (batch.str(*n), batch.bytes(*v)))
        });
        typed.chain(encoded)
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
        Message(Repr::Typed(wit::Message {
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
        }))
    }

    /// The same message with entry id `id`.
    pub fn with_id(self, id: impl Into<String>) -> Self {
        let mut m = self.into_typed();
        m.id = id.into();
        Message(Repr::Typed(m))
    }

    /// The same message from `source` (stream key, channel or list).
    pub fn with_source(self, source: impl Into<String>) -> Self {
        let mut m = self.into_typed();
        m.source = source.into();
        Message(Repr::Typed(m))
    }

    /// The same message on its `n`th delivery.
    pub fn with_deliveries(self, n: u32) -> Self {
        let mut m = self.into_typed();
        m.deliveries = n;
        Message(Repr::Typed(m))
    }

    fn into_typed(self) -> wit::Message {
        match self.0 {
            Repr::Typed(m) => m,
            Repr::Encoded { .. } => wit::Message {
                id: self.id().to_owned(),
                source: self.source().to_owned(),
                fields: self
                    .fields()
                    .map(|(name, value)| wit::Field {
                        name: name.to_owned(),
                        value: value.to_vec(),
                    })
                    .collect(),
                deliveries: self.deliveries(),
                first_delivery_ms: self.first_delivery_ms(),
            },
        }
    }
}

impl From<wit::Message> for Message {
    fn from(message: wit::Message) -> Self {
        Message(Repr::Typed(message))
    }
}

impl From<Message> for Record {
    fn from(message: Message) -> Self {
        match message.0 {
            Repr::Typed(m) => Record::from_fields(m.fields),
            Repr::Encoded { batch, fields, .. } => Record::from_batch(batch, fields),
        }
    }
}
