use std::ops::Range;
use std::sync::Arc;

use crate::bindings::sluice::processor::types as wit;
use crate::message::{Batch, Span};
use crate::wire;

/// One output record: ordered fields, and the sink to write them to.
///
/// ```
/// use sluice_sdk::Record;
///
/// let record = Record::new()
///     .field("user", "ada")
///     .field("count", 1.to_string())
///     .set("count", "2")
///     .to("audit");
/// assert_eq!(record.get_str("count"), Some("2"));
/// assert_eq!(record.fields().count(), 2);
/// assert_eq!(record.sink(), Some("audit"));
/// ```
#[derive(Debug, Clone)]
pub struct Record {
    /// The encoded batch the fields it did not replace still point into.
    batch: Option<Arc<Batch>>,
    fields: Vec<(Name, Value)>,
    to: Option<String>,
}

/// A field name: in the batch, or set by the processor.
#[derive(Debug, Clone)]
enum Name {
    Batch(Span),
    Owned(String),
}

/// A field value: in the batch, or set by the processor.
#[derive(Debug, Clone)]
enum Value {
    Batch(Span),
    Owned(Vec<u8>),
}

impl Record {
    /// A record with no fields, for the pipeline's first sink.
    pub fn new() -> Self {
        Self::from_fields(Vec::new())
    }

    pub(crate) fn from_fields(fields: Vec<wit::Field>) -> Self {
        Record {
            batch: None,
            fields: fields
                .into_iter()
                .map(|f| (Name::Owned(f.name), Value::Owned(f.value)))
                .collect(),
            to: None,
        }
    }

    /// The fields `range` of `batch`, without copying them.
    pub(crate) fn from_batch(batch: Arc<Batch>, range: Range<usize>) -> Self {
        let fields = batch
            .fields(range)
            .iter()
            .map(|&(name, value)| (Name::Batch(name), Value::Batch(value)))
            .collect();
        Record {
            batch: Some(batch),
            fields,
            to: None,
        }
    }

    /// Appends a field, even if one with that name exists.
    pub fn field(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.fields
            .push((Name::Owned(name.into()), Value::Owned(value.into())));
        self
    }

    /// Replaces the value of the first field called `name`, keeping its
    /// position, or appends the field when there is none.
    pub fn set(mut self, name: impl AsRef<str>, value: impl Into<Vec<u8>>) -> Self {
        let name = name.as_ref();
        let value = Value::Owned(value.into());
        match self.position(name) {
            Some(i) => self.fields[i].1 = value,
            None => self.fields.push((Name::Owned(name.to_owned()), value)),
        }
        self
    }

    /// Removes every field called `name`.
    pub fn remove(mut self, name: &str) -> Self {
        let batch = self.batch.as_deref();
        self.fields
            .retain(|(n, _)| name_bytes(batch, n) != name.as_bytes());
        self
    }

    /// Sends the record to the sink with this `name` in the pipeline file
    /// instead of the first sink. An unknown name fails the message.
    pub fn to(mut self, sink: impl Into<String>) -> Self {
        self.to = Some(sink.into());
        self
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let i = self.position(name)?;
        Some(value_of(self.batch.as_deref(), &self.fields[i].1))
    }

    /// The value of the first field called `name`, if it is UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every field as `(name, value)`, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let batch = self.batch.as_deref();
        self.fields
            .iter()
            .map(move |(n, v)| (name_of(batch, n), value_of(batch, v)))
    }

    /// The sink set with [`to`](Self::to); `None` means the first sink.
    pub fn sink(&self) -> Option<&str> {
        self.to.as_deref()
    }

    fn position(&self, name: &str) -> Option<usize> {
        let batch = self.batch.as_deref();
        self.fields
            .iter()
            .position(|(n, _)| name_bytes(batch, n) == name.as_bytes())
    }

    pub(crate) fn into_output(self) -> wit::Output {
        let batch = self.batch.as_deref();
        let fields = self
            .fields
            .into_iter()
            .map(|(name, value)| wit::Field {
                name: match name {
                    Name::Owned(name) => name,
                    name => name_of(batch, &name).to_owned(),
                },
                value: match value {
                    Value::Owned(value) => value,
                    value => value_of(batch, &value).to_vec(),
                },
            })
            .collect();
        wit::Output {
            fields,
            to: self.to,
        }
    }

    /// Appends the record as `process-encoded` returns it.
    pub(crate) fn encode(&self, w: &mut wire::Writer<'_>) {
        let batch = self.batch.as_deref();
        w.len(self.fields.len());
        // As bytes: names from the batch were checked when it was decoded.
        for (name, value) in &self.fields {
            w.bytes(name_bytes(batch, name));
            w.bytes(value_of(batch, value));
        }
        match &self.to {
            Some(to) => {
                w.u8(1);
                w.bytes(to.as_bytes());
            }
            None => w.u8(0),
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

/// Compared as bytes: a lookup need not check the batch's UTF-8 again.
fn name_bytes<'a>(batch: Option<&'a Batch>, name: &'a Name) -> &'a [u8] {
    match name {
        Name::Owned(name) => name.as_bytes(),
        Name::Batch(span) => batch.expect("a batch span has its batch").bytes(*span),
    }
}

fn name_of<'a>(batch: Option<&'a Batch>, name: &'a Name) -> &'a str {
    match name {
        Name::Owned(name) => name,
        Name::Batch(span) => batch.expect("a batch span has its batch").str(*span),
    }
}

fn value_of<'a>(batch: Option<&'a Batch>, value: &'a Value) -> &'a [u8] {
    match value {
        Value::Owned(value) => value,
        Value::Batch(span) => batch.expect("a batch span has its batch").bytes(*span),
    }
}

/// The value of the first field called `name`.
pub(crate) fn get<'a>(fields: &'a [wit::Field], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_slice())
}
