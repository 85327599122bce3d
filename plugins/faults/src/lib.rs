//! A test and diagnostic processor: each message says how to behave.

use std::time::Duration;

use sluice_sdk::{Config, Failure, Message, Outcome, Processor, Record};

/// Stamped on every record as `plugin_version`, so tests can tell two builds
/// apart: `SLUICE_PLUGIN_VERSION` at build time, default `1`.
const VERSION: &str = match option_env!("SLUICE_PLUGIN_VERSION") {
    Some(version) => version,
    None => "1",
};

struct Faults {
    /// The field naming the action: config `field`, default `action`.
    field: String,
    /// Slept once per batch: config `sleep_ms`, default 0.
    sleep: Duration,
    /// Whether records carry `plugin_version`: config `stamp`, default `true`.
    /// Off, two builds give the same output unless a message asks otherwise.
    stamp: bool,
    /// A build whose version is this one fails every message (`retry`):
    /// config `fail_version`, default none. A bad new version on demand.
    fail_version: Option<String>,
}

impl Processor for Faults {
    fn init(config: Config) -> Result<Self, String> {
        if config.get("fail_init") == Some("true") {
            return Err("asked to fail init".to_owned());
        }
        if config.get("log_init") == Some("true") {
            sluice_sdk::log::info("faults init");
        }
        let field = config.get_or("field", "action").to_owned();
        let sleep = Duration::from_millis(config.parse_or("sleep_ms", 0)?);
        let stamp = config.get("stamp") != Some("false");
        let fail_version = config.get("fail_version").map(str::to_owned);
        Ok(Faults {
            field,
            sleep,
            stamp,
            fail_version,
        })
    }

    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        batch.into_iter().map(|msg| self.process(msg)).collect()
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Record>, Failure> {
        if self.fail_version.as_deref() == Some(VERSION) {
            return Err(Failure::retry(format!(
                "asked to fail as version {VERSION}"
            )));
        }
        let mut action = msg.get_str(&self.field).unwrap_or("ok").to_owned();
        // `changed:<action>`: `ok` in version 1, `<action>` in any other.
        if let Some(changed) = action.strip_prefix("changed:") {
            action = if VERSION == "1" { "ok" } else { changed }.to_owned();
        }
        let mut record = msg.into_record();
        if self.stamp {
            record = record.set("plugin_version", VERSION);
        }
        match action.as_str() {
            "ok" => Ok(vec![record]),
            "fail" => Err(Failure::retry("asked to fail")),
            "poison" => Err(Failure::dead_letter("asked to dead-letter")),
            "drop" => Err(Failure::drop("asked to drop")),
            "trap" => panic!("asked to trap"),
            "loop" => loop {
                std::hint::spin_loop();
            },
            "oom" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => match action.split_once(':') {
                Some(("route", sink)) => Ok(vec![record.to(sink)]),
                // The sandbox: what the plugin can see of the environment and files.
                Some(("env", name)) => match std::env::var(name) {
                    Ok(value) => Ok(vec![record.set("env", value)]),
                    Err(e) => Err(Failure::dead_letter(format!("env {name}: {e}"))),
                },
                Some(("read", path)) => match std::fs::read(path) {
                    Ok(bytes) => Ok(vec![record.set("file", bytes)]),
                    Err(e) => Err(Failure::dead_letter(format!("read {path}: {e}"))),
                },
                // n lines each through `log`, stdout and stderr, then the record.
                Some(("chatty", n)) => {
                    let n: usize = n
                        .parse()
                        .map_err(|e| Failure::dead_letter(format!("chatty count `{n}`: {e}")))?;
                    for i in 0..n {
                        sluice_sdk::log::info(format!("chatty log {i}"));
                        println!("chatty stdout {i}");
                        eprintln!("chatty stderr {i}");
                    }
                    Ok(vec![record])
                }
                Some(("fanout", n)) => {
                    let n: usize = n
                        .parse()
                        .map_err(|e| Failure::dead_letter(format!("fanout count `{n}`: {e}")))?;
                    Ok(vec![record; n])
                }
                // One record per listed action, in field `then`, for a next stage.
                Some(("split", actions)) => Ok(actions
                    .split('|')
                    .map(|then| record.clone().set("then", then))
                    .collect()),
                _ => Err(Failure::dead_letter(format!("unknown action `{action}`"))),
            },
        }
    }
}

sluice_sdk::export_processor!(Faults);
