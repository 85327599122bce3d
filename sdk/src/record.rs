use crate::bindings::sluice::processor::types as wit;

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
pub struct Record(wit::Output);

impl Record {
    /// A record with no fields, for the pipeline's first sink.
    pub fn new() -> Self {
        Self::from_fields(Vec::new())
    }

    pub(crate) fn from_fields(fields: Vec<wit::Field>) -> Self {
        Record(wit::Output { fields, to: None })
    }

    /// Appends a field, even if one with that name exists.
    pub fn field(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.0.fields.push(wit::Field {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Replaces the value of the first field called `name`, keeping its
    /// position, or appends the field when there is none.
    pub fn set(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        let value = value.into();
        match self.0.fields.iter_mut().find(|f| f.name == name) {
            Some(field) => field.value = value,
            None => self.0.fields.push(wit::Field { name, value }),
        }
        self
    }

    /// Removes every field called `name`.
    pub fn remove(mut self, name: &str) -> Self {
        self.0.fields.retain(|f| f.name != name);
        self
    }

    /// Sends the record to the sink with this `name` in the pipeline file
    /// instead of the first sink. An unknown name fails the message.
    pub fn to(mut self, sink: impl Into<String>) -> Self {
        self.0.to = Some(sink.into());
        self
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        get(&self.0.fields, name)
    }

    /// The value of the first field called `name`, if it is UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every field as `(name, value)`, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_slice()))
    }

    /// The sink set with [`to`](Self::to); `None` means the first sink.
    pub fn sink(&self) -> Option<&str> {
        self.0.to.as_deref()
    }

    pub(crate) fn into_output(self) -> wit::Output {
        self.0
    }
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

/// The value of the first field called `name`.
pub(crate) fn get<'a>(fields: &'a [wit::Field], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_slice())
}
