//! Write Sluice stream processors in Rust.
//!
//! A processor is one function from a message to records: the runtime owns
//! reading, acking, retrying, dead-lettering and routing. Implement
//! [`Processor`] for a type, export it with [`export_processor!`], and build
//! the crate as a `cdylib` for `wasm32-wasip2`.
//!
//! ```no_run
//! use sluice_sdk::{Config, Failure, Message, Processor, Record};
//!
//! /// Tags every message with the configured team and routes errors.
//! struct Tag {
//!     team: String,
//! }
//!
//! impl Processor for Tag {
//!     fn init(config: Config) -> Result<Self, String> {
//!         Ok(Tag { team: config.get_or("team", "core").to_owned() })
//!     }
//!
//!     fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
//!         let Some(level) = msg.get_str("level") else {
//!             return Err(Failure::dead_letter("missing field `level`"));
//!         };
//!         let sink = if level == "error" { "alerts" } else { "events" };
//!         let record = msg.into_record().set("team", self.team.as_str());
//!         Ok(vec![record.to(sink)])
//!     }
//! }
//!
//! sluice_sdk::export_processor!(Tag);
//! ```
//!
//! ```toml
//! # the plugin's Cargo.toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! sluice-sdk = { path = "../sluice/sdk" }
//! ```
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2
//! # -> target/wasm32-wasip2/release/<crate>.wasm, a component ready for a pipeline's `plugin = ...`
//! ```
//!
//! # Testing a processor
//!
//! A processor is plain Rust: its unit tests run natively with `cargo test`,
//! no Wasm target or runtime needed. Build its [`Config`] from pairs and its
//! input with [`Message::new`], call `init` and `process`, and look at the
//! records:
//!
//! ```
//! # use sluice_sdk::{Config, Failure, Message, Processor, Record};
//! # struct Tag { team: String }
//! # impl Processor for Tag {
//! #     fn init(config: Config) -> Result<Self, String> {
//! #         Ok(Tag { team: config.get_or("team", "core").to_owned() })
//! #     }
//! #     fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
//! #         let Some(level) = msg.get_str("level") else {
//! #             return Err(Failure::dead_letter("missing field `level`"));
//! #         };
//! #         let sink = if level == "error" { "alerts" } else { "events" };
//! #         Ok(vec![msg.into_record().set("team", self.team.as_str()).to(sink)])
//! #     }
//! # }
//! let mut tag = Tag::init([("team", "web")].into_iter().collect()).unwrap();
//!
//! let records = tag.process(Message::new([("level", "error")])).unwrap();
//! assert_eq!(records[0].get_str("team"), Some("web"));
//! assert_eq!(records[0].sink(), Some("alerts"));
//!
//! let failure = tag.process(Message::new([("msg", "hi")])).unwrap_err();
//! assert_eq!(failure.kind(), sluice_sdk::FailureKind::DeadLetter);
//! ```
//!
//! [`log`] and [`kv`] call into the runtime, so they exist only inside
//! Wasm: keep them out of the logic under test, or test that logic through
//! `sluice plugin test`, which runs the built plugin with an in-memory
//! key-value store.
//!
//! # Map
//!
//! - [`Processor`] and [`export_processor!`]: what a plugin implements and how it is exported.
//! - [`Config`]: the pipeline's `[processor.config]` table, handed to [`Processor::init`].
//! - [`Message`] in, [`Record`]s out, or a [`Failure`] saying what to do with the message.
//! - [`log`]: write to the runtime's log. [`kv`]: small state shared by the pipeline, kept in Redis.
//!
//! Data flow: the runtime calls the component's `process-encoded` with a
//! batch in one buffer (or the typed `process`; the SDK exports both, see
//! the `batch-processor` world in sdk/wit); the SDK hands each message to
//! [`Processor::process`] (through [`Processor::process_batch`]) and returns
//! exactly one outcome per message, in order.

#![deny(missing_docs)]

mod config;
mod failure;
pub mod kv;
pub mod log;
mod message;
mod record;
#[doc(hidden)]
pub mod wire;

pub use config::Config;
pub use failure::{Failure, FailureKind};
pub use message::Message;
pub use record::Record;

/// Bindings generated from `wit/sluice.wit`. Used by [`export_processor!`];
/// not part of the SDK's API.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "batch-processor",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk::bindings",
    });
}

/// The result of processing one message: zero records (filtered), one (map),
/// many (fan-out), or a failure.
pub type Outcome = Result<Vec<Record>, Failure>;

/// A stream processor: built once per instance from its config, then called
/// for every message.
///
/// Wasm instances are single-threaded, so `process` takes `&mut self` and the
/// processor may keep state between messages. That state is per instance:
/// the runtime may run several instances and replace them at any time, so
/// anything that must be shared or survive belongs in [`kv`].
pub trait Processor: Sized + 'static {
    /// Builds the processor from the pipeline's `[processor.config]` table.
    ///
    /// An error refuses the plugin: at startup the pipeline does not start;
    /// on hot swap the old version keeps running.
    fn init(config: Config) -> Result<Self, String>;

    /// Processes one message: `Ok(vec![])` filters it out, one record maps it,
    /// several fan it out; a [`Failure`] says whether to retry, dead-letter or
    /// drop it.
    ///
    /// A panic traps the instance: the runtime replaces it and retries the
    /// batch one message at a time, so only the message that panics fails.
    fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure>;

    /// Processes a whole batch. The default calls [`process`](Self::process)
    /// for each message; override it to do work once per batch.
    ///
    /// Must return exactly one outcome per message, in order; otherwise every
    /// message of the batch fails with [`FailureKind::Retry`].
    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        batch.into_iter().map(|msg| self.process(msg)).collect()
    }
}

/// Exports a [`Processor`] as the component's `init` and `process`.
///
/// Use it once per plugin crate, with the name of the processor type:
///
/// ```no_run
/// use sluice_sdk::{Config, Failure, Message, Processor, Record};
///
/// struct Passthrough;
///
/// impl Processor for Passthrough {
///     fn init(_config: Config) -> Result<Self, String> {
///         Ok(Passthrough)
///     }
///
///     fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
///         Ok(vec![msg.into_record()])
///     }
/// }
///
/// sluice_sdk::export_processor!(Passthrough);
/// ```
#[macro_export]
macro_rules! export_processor {
    ($processor:ident) => {
        impl $crate::bindings::Guest for $processor {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::init::<$processor>(config)
            }

            fn process(
                batch: ::std::vec::Vec<$crate::bindings::Message>,
            ) -> ::std::vec::Vec<$crate::bindings::Outcome> {
                $crate::__private::process::<$processor>(batch)
            }

            fn process_encoded(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                $crate::__private::process_encoded::<$processor>(batch)
            }
        }

        $crate::bindings::export!($processor with_types_in $crate::bindings);
    };
}

/// The glue [`export_processor!`] expands to. Not part of the SDK's API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    use crate::bindings::sluice::processor::types as wit;
    use crate::message::Batch;
    use crate::{Config, Failure, Message, Outcome, Processor, Record, wire};

    thread_local! {
        /// The instance's processor, set by a successful `init`. Wasm is
        /// single-threaded, so this is the one processor of the component.
        static PROCESSOR: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// Builds `P` from the config and keeps it for `process`.
    pub fn init<P: Processor>(config: Vec<(String, String)>) -> Result<(), String> {
        PROCESSOR.with_borrow_mut(|slot| {
            *slot = None;
            *slot = Some(Box::new(P::init(Config::from(config))?));
            Ok(())
        })
    }

    /// The fast path: the same as [`process`] over the encoded batch
    /// (sdk/README.md, "The encoded batch"). Messages and the records made
    /// from them point into `batch` instead of copying it, and outcomes are
    /// written straight into the one buffer returned. A batch that does not
    /// decode yields no outcomes, which the runtime reports as a plugin failure.
    pub fn process_encoded<P: Processor>(batch: Vec<u8>) -> Vec<u8> {
        // The outcomes are about the size of the batch for a map.
        let mut out = Vec::with_capacity(batch.len() + batch.len() / 8 + 64);
        let Ok(batch) = Batch::decode(batch) else {
            return out;
        };
        let mut w = wire::Writer(&mut out);
        for outcome in run::<P>(batch) {
            match outcome {
                Ok(records) => {
                    w.u8(wire::OK);
                    w.len(records.len());
                    for record in &records {
                        record.encode(&mut w);
                    }
                }
                Err(failure) => {
                    w.u8(wire::FAILED);
                    w.u8(match failure.kind() {
                        wit::FailureKind::Retry => 0,
                        wit::FailureKind::DeadLetter => 1,
                        wit::FailureKind::Drop => 2,
                    });
                    w.bytes(failure.reason().as_bytes());
                }
            }
        }
        out
    }

    /// Runs the batch through the processor built by `init`: one outcome per
    /// message, in order.
    pub fn process<P: Processor>(batch: Vec<wit::Message>) -> Vec<wit::Outcome> {
        run::<P>(batch.into_iter().map(Message::from).collect())
            .into_iter()
            .map(|outcome| match outcome {
                Ok(records) => Ok(records.into_iter().map(Record::into_output).collect()),
                Err(failure) => Err(failure.into_wit()),
            })
            .collect()
    }

    fn run<P: Processor>(batch: Vec<Message>) -> Vec<Outcome> {
        let len = batch.len();
        PROCESSOR.with_borrow_mut(|slot| {
            let Some(processor) = slot.as_mut().and_then(|p| p.downcast_mut::<P>()) else {
                return fail_all(
                    len,
                    "processor is not initialized: init was not called or failed",
                );
            };
            let outcomes = processor.process_batch(batch);
            if outcomes.len() != len {
                let reason = format!(
                    "process_batch returned {} outcomes for {len} messages",
                    outcomes.len()
                );
                return fail_all(len, &reason);
            }
            outcomes
        })
    }

    fn fail_all(len: usize, reason: &str) -> Vec<Outcome> {
        (0..len).map(|_| Err(Failure::retry(reason))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::__private::{init, process};
    use super::*;
    use crate::bindings::sluice::processor::types as wit;

    /// Filters `skip`, fails `bad`, fans `twice` out and maps the rest.
    struct Echo {
        tag: String,
    }

    impl Processor for Echo {
        fn init(config: Config) -> Result<Self, String> {
            let tag = config.require("tag")?.to_owned();
            Ok(Echo { tag })
        }

        fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
            let record = msg.into_record().set("tag", self.tag.as_str());
            match record.get_str("body") {
                Some("skip") => Ok(vec![]),
                Some("bad") => Err(Failure::dead_letter("bad body")),
                Some("twice") => Ok(vec![record.clone(), record.to("other")]),
                _ => Ok(vec![record]),
            }
        }
    }

    /// Returns one outcome too few.
    struct Short;

    impl Processor for Short {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Short)
        }

        fn process(&mut self, _: Message) -> Result<Vec<Record>, Failure> {
            Ok(vec![])
        }

        fn process_batch(&mut self, mut batch: Vec<Message>) -> Vec<Outcome> {
            batch.pop();
            batch.into_iter().map(|msg| self.process(msg)).collect()
        }
    }

    fn message(body: &str) -> wit::Message {
        let field = wit::Field {
            name: "body".into(),
            value: body.into(),
        };
        wit::Message {
            id: "1-0".into(),
            source: "in".into(),
            fields: vec![field],
            deliveries: 1,
            first_delivery_ms: 1,
        }
    }

    fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn is_retry(outcome: &wit::Outcome) -> bool {
        matches!(outcome, Err(f) if f.kind == FailureKind::Retry)
    }

    #[test]
    fn one_outcome_per_message_in_order() {
        init::<Echo>(config(&[("tag", "t")])).unwrap();
        let batch = ["a", "skip", "bad", "twice"].map(message).to_vec();
        let outcomes = process::<Echo>(batch);
        assert_eq!(outcomes.len(), 4);

        let first = outcomes[0].as_ref().unwrap();
        let fields: Vec<_> = first[0].fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(fields, ["body", "tag"]);
        assert!(outcomes[1].as_ref().unwrap().is_empty());
        assert!(matches!(&outcomes[2], Err(f) if f.kind == FailureKind::DeadLetter));
        let twice = outcomes[3].as_ref().unwrap();
        assert_eq!(twice.len(), 2);
        assert_eq!(twice[1].to.as_deref(), Some("other"));
    }

    #[test]
    fn retries_everything_until_init_succeeds() {
        assert!(
            process::<Echo>(vec![message("a"), message("b")])
                .iter()
                .all(is_retry)
        );

        let err = init::<Echo>(config(&[])).unwrap_err();
        assert_eq!(err, "missing config key `tag`");
        assert!(process::<Echo>(vec![message("a")]).iter().all(is_retry));

        init::<Echo>(config(&[("tag", "t")])).unwrap();
        assert!(process::<Echo>(vec![message("a")])[0].is_ok());
    }

    #[test]
    fn the_encoded_path_gives_the_typed_outcomes() {
        init::<Echo>(config(&[("tag", "t")])).unwrap();
        let mut buf = Vec::new();
        let mut w = wire::Writer(&mut buf);
        w.len(2);
        for body in ["twice", "bad"] {
            w.bytes(b"1-0");
            w.bytes(b"in");
            w.u32(1);
            w.u64(1);
            w.len(1);
            w.bytes(b"body");
            w.bytes(body.as_bytes());
        }
        let out = super::__private::process_encoded::<Echo>(buf);
        let mut r = wire::Reader::new(&out);
        // "twice": two records of body + tag, the second to "other".
        assert_eq!(r.u8(), Ok(wire::OK));
        assert_eq!(r.u32(), Ok(2));
        for to in [None, Some("other")] {
            assert_eq!(r.u32(), Ok(2));
            assert_eq!((r.str(), r.bytes()), (Ok("body"), Ok(&b"twice"[..])));
            assert_eq!((r.str(), r.bytes()), (Ok("tag"), Ok(&b"t"[..])));
            match to {
                Some(to) => assert_eq!((r.u8(), r.str()), (Ok(1), Ok(to))),
                None => assert_eq!(r.u8(), Ok(0)),
            }
        }
        // "bad": a dead letter with its reason.
        assert_eq!(
            (r.u8(), r.u8(), r.str()),
            (Ok(wire::FAILED), Ok(1), Ok("bad body"))
        );
        assert!(r.is_empty());

        // A batch that does not decode: no outcomes, which the runtime
        // reports as a plugin failure.
        assert!(super::__private::process_encoded::<Echo>(vec![9, 0, 0, 0]).is_empty());
    }

    #[test]
    fn a_short_batch_result_retries_every_message() {
        init::<Short>(config(&[])).unwrap();
        let outcomes = process::<Short>(vec![message("a"), message("b")]);
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(is_retry));
    }
}
