//! Sources: where messages come from. The Redis protocol of each kind of
//! source; the consumer loops that drive them are in [`crate::pipeline`].

pub mod list;
pub mod stream;
