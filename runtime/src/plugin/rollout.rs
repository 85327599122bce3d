//! Rolling out a new plugin version: shadow runs, canaries, automatic
//! rollback, promotion, and the history of what served.
//!
//! A [`super::Stage`] serves one version and may hold a candidate beside it
//! (`rollout = "shadow"` or `"canary"`). This module holds the parts that
//! need no wasmtime: the policy from the pipeline file, which messages a
//! canary serves, the failure windows that decide a rollback, the history,
//! and the process-wide registry that `/rollouts` and the promote and
//! rollback endpoints reach stages through.

use super::Stage;
use crate::config::{ProcessorConfig, Rollout};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fewest messages a candidate must have handled before its failure
/// rate decides anything (fewer if the window is smaller).
pub const MIN_SAMPLES: usize = 20;

/// Mismatch samples written to `<pipeline>:shadow` per batch at most.
pub const SHADOW_SAMPLES_PER_BATCH: usize = 10;

/// Approximate length the `<pipeline>:shadow` stream is capped at.
pub const SHADOW_MAXLEN: usize = 1000;

/// A stage's rollout settings, from its `[[processor]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How a changed plugin file reaches traffic.
    pub mode: Rollout,
    /// Canary: the share of messages (0-100) the candidate serves.
    pub canary_percent: f64,
    /// Canary: the field that picks the version; `None`: the entry id.
    pub canary_key: Option<String>,
    /// How far the candidate's failure rate may exceed the serving one's.
    pub margin: f64,
    /// Messages per version the rates are taken over.
    pub window: usize,
    /// Promote after this long on trial without a rollback; `None`: by hand.
    pub promote_after: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Rollout::Swap,
            canary_percent: 0.0,
            canary_key: None,
            margin: 0.05,
            window: 100,
            promote_after: None,
        }
    }
}

impl Policy {
    /// The policy a `[[processor]]` asks for.
    pub fn from_config(p: &ProcessorConfig) -> Self {
        Policy {
            mode: p.rollout,
            canary_percent: p.canary_percent.unwrap_or(0.0),
            canary_key: p.canary_key.clone(),
            margin: p.rollback_margin,
            window: p.rollback_window as usize,
            promote_after: (p.promote_after_ms > 0)
                .then(|| Duration::from_millis(p.promote_after_ms)),
        }
    }

    /// Whether the canary serves the message with entry id `id` and
    /// `fields`: a hash of the `canary_key` field's value (of the id when
    /// the message lacks the field) falls in the first `canary_percent` of
    /// 10,000 buckets. Deterministic, so a redelivery, and every message of
    /// one key, meets the same version.
    pub fn canary_serves(&self, id: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> bool {
        let key = self
            .canary_key
            .as_ref()
            .and_then(|k| fields.iter().find(|(n, _)| n == k.as_bytes()))
            .map_or(id.as_bytes(), |(_, v)| v.as_slice());
        (fnv1a(key) % 10_000) < (self.canary_percent * 100.0).round() as u64
    }
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike std's
/// hasher), so every process of a fleet routes a key the same way.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits mix poorly for short keys.
    hash ^ (hash >> 32)
}

/// The last `cap` outcomes of one version: failed or not.
#[derive(Debug, Default)]
pub struct Window {
    outcomes: VecDeque<bool>,
    failed: usize,
}

impl Window {
    /// Adds an outcome, forgetting the oldest beyond `cap`.
    pub fn push(&mut self, failed: bool, cap: usize) {
        self.outcomes.push_back(failed);
        self.failed += usize::from(failed);
        while self.outcomes.len() > cap {
            if self.outcomes.pop_front() == Some(true) {
                self.failed -= 1;
            }
        }
    }

    /// Outcomes held.
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Share of failures; 0 when empty.
    pub fn rate(&self) -> f64 {
        if self.outcomes.is_empty() {
            0.0
        } else {
            self.failed as f64 / self.outcomes.len() as f64
        }
    }
}

/// What a failure-rate check concluded.
#[derive(Debug, PartialEq)]
pub enum Judgement {
    /// Not enough evidence, or the candidate does as well.
    Keep,
    /// The candidate fails too often: the text says how often.
    RollBack(String),
}

/// Compares the windows of the serving version and the candidate.
pub fn judge(serving: &Window, candidate: &Window, policy: &Policy) -> Judgement {
    if candidate.len() < MIN_SAMPLES.min(policy.window) {
        return Judgement::Keep;
    }
    let (old, new) = (serving.rate(), candidate.rate());
    if new > old + policy.margin {
        Judgement::RollBack(format!(
            "failure rate {:.1}% over its last {} messages, against {:.1}% for the serving version (rollback_margin {})",
            new * 100.0,
            candidate.len(),
            old * 100.0,
            policy.margin
        ))
    } else {
        Judgement::Keep
    }
}

/// How a version came to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// Loaded when the pipeline started.
    Start,
    /// The plugin file changed (`rollout = "swap"`).
    FileChange,
    /// Promoted from shadow or canary, by hand.
    Promote,
    /// Promoted from shadow or canary after `promote_after_ms` clean.
    PromoteAfter,
    /// Restored by `sluice plugin rollback`.
    Rollback,
}

/// One version that served, for `/rollouts` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    /// SHA-256 of the .wasm, hex.
    pub hash: String,
    /// When it started serving, ms since the Unix epoch.
    pub since_ms: u64,
    /// How it came to serve.
    pub how: How,
}

impl Served {
    /// `hash` serving from now on, because of `how`.
    pub fn now(hash: &str, how: How) -> Self {
        Served {
            hash: hash.to_string(),
            since_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            how,
        }
    }
}

/// Stages by pipeline name, for the control endpoints. Weak: a drained
/// pipeline's stages go away with it.
static REGISTRY: Mutex<Vec<(String, Vec<Weak<Stage>>)>> = Mutex::new(Vec::new());

/// Makes `stages` reachable as pipeline `name`'s (replacing an earlier run).
pub fn register(name: &str, stages: &[Arc<Stage>]) {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|(n, _)| n != name);
    reg.push((
        name.to_string(),
        stages.iter().map(Arc::downgrade).collect(),
    ));
}

/// Forgets pipeline `name`.
pub fn unregister(name: &str) {
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|(n, _)| n != name);
}

/// The stages of every registered pipeline, by name.
pub fn registered() -> HashMap<String, Vec<Arc<Stage>>> {
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.iter()
        .map(|(n, s)| (n.clone(), s.iter().filter_map(Weak::upgrade).collect()))
        .collect()
}

/// The Redis key holding pipeline `name`'s versions, for `sluice status`.
pub fn versions_key(name: &str) -> String {
    format!("{name}:versions")
}

/// Writes pipeline `name`'s stage reports (see [`Stage::report`]) to
/// [`versions_key`], so `sluice status` shows what serves without asking
/// the process. Blocking (one SET): call it off the async threads. Best
/// effort: a failure costs only a stale status.
pub fn publish(name: &str) {
    let Some(stages) = registered().remove(name) else {
        return;
    };
    let Some(client) = stages.first().and_then(|s| s.current().settings.kv.clone()) else {
        return;
    };
    let body = serde_json::Value::Array(stages.iter().map(|s| s.report()).collect());
    let written = client
        .blocking(Duration::from_secs(2))
        .and_then(|mut conn| {
            conn.query::<()>(
                redis::cmd("SET")
                    .arg(versions_key(name))
                    .arg(body.to_string()),
            )
        });
    if let Err(e) = written {
        tracing::debug!(
            pipeline = name,
            "cannot record plugin versions for status: {e}"
        );
    }
}

/// Stage `stage` (1-based) of pipeline `name`, or why there is none.
pub fn find(name: &str, stage: usize) -> Result<Arc<Stage>, String> {
    let all = registered();
    let stages = all
        .get(name)
        .ok_or_else(|| format!("no running pipeline `{name}`"))?;
    stage
        .checked_sub(1)
        .and_then(|i| stages.get(i))
        .cloned()
        .ok_or_else(|| {
            format!(
                "pipeline `{name}` has {} processor(s); no stage {stage}",
                stages.len()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_share_and_keys_are_stable() {
        let policy = Policy {
            mode: Rollout::Canary,
            canary_percent: 10.0,
            canary_key: Some("user".into()),
            ..Policy::default()
        };
        let served = (0..100_000)
            .filter(|i| policy.canary_serves(&format!("{i}-0"), &[]))
            .count();
        // 10% of 100,000: sigma = 95; 5 sigma.
        assert!((10_000 - 475..=10_000 + 475).contains(&served), "{served}");
        let fields = vec![(b"user".to_vec(), b"alice".to_vec())];
        let first = policy.canary_serves("1-0", &fields);
        assert!((2..200).all(|i| policy.canary_serves(&format!("{i}-0"), &fields) == first));
    }

    #[test]
    fn rolls_back_only_past_the_margin_with_enough_samples() {
        let policy = Policy::default();
        let (mut old, mut new) = (Window::default(), Window::default());
        for i in 0..100 {
            old.push(i % 10 == 0, policy.window);
        }
        for _ in 0..(MIN_SAMPLES - 1) {
            new.push(true, policy.window);
        }
        assert_eq!(judge(&old, &new, &policy), Judgement::Keep);
        new.push(true, policy.window);
        assert!(matches!(judge(&old, &new, &policy), Judgement::RollBack(_)));
        let mut fine = Window::default();
        for i in 0..100 {
            fine.push(i % 7 == 0, policy.window);
        }
        assert_eq!(judge(&old, &fine, &policy), Judgement::Keep);
    }
}
