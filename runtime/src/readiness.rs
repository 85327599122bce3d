//! Why each pipeline can or cannot make progress right now, for `/ready`.
//!
//! The code that meets an obstacle reports it where it meets it: it takes a
//! [`Blocker`] (Redis unreachable, group cannot be created, sink in
//! backoff) and drops it once past. The supervisor says which pipelines
//! run and which could not start. Process-wide, like the metrics recorder,
//! so that a report is one call and needs no plumbing through the delivery
//! code.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a pipeline is not consuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its Redis does not answer; the pipeline retries with backoff.
    RedisUnreachable,
    /// Its consumer group does not exist and cannot be created.
    GroupMissing,
    /// It did not start: its file is invalid, or a plugin failed to load
    /// or initialise.
    NotStarted,
    /// A sink refuses writes for now; its consumers read nothing new
    /// (intake paused) until it recovers.
    SinkBackoff,
}

/// One obstacle, with what it is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Obstacle {
    /// What kind.
    pub reason: Reason,
    /// The error or the name of what failed, for the operator.
    pub detail: String,
}

/// One pipeline's state, as `/ready` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineReadiness {
    /// Pipeline name.
    pub name: String,
    /// Running with nothing in its way.
    pub consuming: bool,
    /// Why not, when not.
    pub reasons: Vec<Obstacle>,
}

#[derive(Default)]
struct Entry {
    /// None: not known to the supervisor (never started, or stopped).
    state: Option<State>,
    /// Live blockers by id; the same reason may be held by several consumers.
    blockers: BTreeMap<u64, Obstacle>,
}

enum State {
    Running,
    NotStarted(String),
}

static PIPELINES: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn with<T>(f: impl FnOnce(&mut BTreeMap<String, Entry>) -> T) -> T {
    // A panic while holding the lock cannot leave the map half-updated.
    let mut map = PIPELINES.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut map)
}

/// `pipeline` runs.
pub fn running(pipeline: &str) {
    with(|m| m.entry(pipeline.to_string()).or_default().state = Some(State::Running));
}

/// `pipeline` could not start, because of `error`.
pub fn not_started(pipeline: &str, error: String) {
    with(|m| m.entry(pipeline.to_string()).or_default().state = Some(State::NotStarted(error)));
}

/// `pipeline` was stopped (its file removed): it is no longer reported.
pub fn stopped(pipeline: &str) {
    with(|m| {
        if let Some(e) = m.get_mut(pipeline) {
            e.state = None;
        }
        m.retain(|_, e| e.state.is_some() || !e.blockers.is_empty());
    });
}

/// Held while `pipeline` cannot make progress for `reason`.
#[must_use = "the obstacle lasts as long as the Blocker"]
pub struct Blocker {
    pipeline: String,
    id: u64,
}

/// Reports an obstacle; it lasts until the returned [`Blocker`] is dropped.
pub fn block(pipeline: &str, reason: Reason, detail: String) -> Blocker {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    with(|m| {
        m.entry(pipeline.to_string())
            .or_default()
            .blockers
            .insert(id, Obstacle { reason, detail })
    });
    Blocker {
        pipeline: pipeline.to_string(),
        id,
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        with(|m| {
            if let Some(e) = m.get_mut(&self.pipeline) {
                e.blockers.remove(&self.id);
                if e.state.is_none() && e.blockers.is_empty() {
                    m.remove(&self.pipeline);
                }
            }
        });
    }
}

/// Every pipeline the supervisor knows, by name; obstacles of the same
/// reason and detail (one per consumer) are reported once.
pub fn report() -> Vec<PipelineReadiness> {
    with(|m| {
        m.iter()
            .filter_map(|(name, e)| {
                let mut reasons: Vec<Obstacle> = Vec::new();
                match e.state.as_ref()? {
                    State::Running => {}
                    State::NotStarted(error) => reasons.push(Obstacle {
                        reason: Reason::NotStarted,
                        detail: error.clone(),
                    }),
                }
                for o in e.blockers.values() {
                    if !reasons.contains(o) {
                        reasons.push(o.clone());
                    }
                }
                Some(PipelineReadiness {
                    name: name.clone(),
                    consuming: reasons.is_empty(),
                    reasons,
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocker_holds_until_dropped_and_repeats_are_reported_once() {
        running("readiness-unit");
        let find = || {
            report()
                .into_iter()
                .find(|p| p.name == "readiness-unit")
                .expect("reported")
        };
        assert!(find().consuming);
        let a = block("readiness-unit", Reason::SinkBackoff, "sink `out`".into());
        let b = block("readiness-unit", Reason::SinkBackoff, "sink `out`".into());
        assert_eq!(find().reasons.len(), 1);
        drop(a);
        assert!(!find().consuming, "the second consumer still waits");
        drop(b);
        assert!(find().consuming);
        stopped("readiness-unit");
        assert!(report().iter().all(|p| p.name != "readiness-unit"));
    }
}
