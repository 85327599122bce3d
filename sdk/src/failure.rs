use std::fmt;

use crate::bindings::sluice::processor::types as wit;

pub use wit::FailureKind;

/// Why a message could not be processed, and what the runtime should do
/// with it.
///
/// Every constructor takes anything printable, so errors convert directly:
///
/// ```
/// use sluice_sdk::{Failure, FailureKind};
///
/// let failure = "x".parse::<u32>().map_err(Failure::dead_letter).unwrap_err();
/// assert_eq!(failure.kind(), FailureKind::DeadLetter);
/// assert_eq!(failure.reason(), "invalid digit found in string");
/// ```
#[derive(Debug, Clone)]
pub struct Failure(wit::Failure);

impl Failure {
    /// A transient failure: leave the message pending and deliver it again
    /// later, until the pipeline's `max_deliveries` is reached.
    pub fn retry(reason: impl fmt::Display) -> Self {
        Self::new(FailureKind::Retry, reason)
    }

    /// A poison message: send it to the dead-letter stream now.
    pub fn dead_letter(reason: impl fmt::Display) -> Self {
        Self::new(FailureKind::DeadLetter, reason)
    }

    /// Discard the message: acked and counted, written nowhere.
    pub fn drop(reason: impl fmt::Display) -> Self {
        Self::new(FailureKind::Drop, reason)
    }

    /// A failure of any kind.
    pub fn new(kind: FailureKind, reason: impl fmt::Display) -> Self {
        Failure(wit::Failure {
            kind,
            reason: reason.to_string(),
        })
    }

    /// What the runtime does with the message.
    pub fn kind(&self) -> FailureKind {
        self.0.kind
    }

    /// Why, for logs and the dead-letter entry.
    pub fn reason(&self) -> &str {
        &self.0.reason
    }

    pub(crate) fn into_wit(self) -> wit::Failure {
        self.0
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind() {
            FailureKind::Retry => "retry",
            FailureKind::DeadLetter => "dead-letter",
            FailureKind::Drop => "drop",
        };
        write!(f, "{kind}: {}", self.reason())
    }
}

impl std::error::Error for Failure {}
