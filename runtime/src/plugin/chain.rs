//! A consumer's processors: warm instances, one `process` call per batch,
//! faults contained to the messages that caused them.

use super::bindings::sluice::processor::types as wit;
use super::host::Host;
use super::rollout::{
    How, Judgement, MIN_SAMPLES, Policy, SHADOW_MAXLEN, SHADOW_SAMPLES_PER_BATCH, Served, Window,
    judge,
};
use super::{EPOCH_TICK, Plugin, bindings};
use crate::config::Rollout;
use crate::message::{Failure, FailureClass, FailureKind, Message, Outcome, Record, escape};
use crate::plugin_diff::Verdict;
use arc_swap::{ArcSwap, ArcSwapOption};
use sluice_sdk::wire::{self, Malformed, Reader, Writer};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Func, TypedFunc};
use wasmtime::{Store, Trap};

/// Settings of one `[[processor]]`, fixed for the life of its instances.
#[derive(Clone)]
pub struct StageSettings {
    /// Pipeline name: log field and key-value scope.
    pub pipeline: Arc<str>,
    /// Longest one call may run.
    pub timeout: Duration,
    /// Most linear memory one instance may have.
    pub memory_bytes: usize,
    /// Handed to `init`.
    pub config: Vec<(String, String)>,
    /// Redis behind the `kv` import.
    pub kv: Option<crate::conn::Client>,
    /// Folders and environment variables the sandbox lets through.
    pub grants: crate::config::Grants,
    /// Most fuel one call may use, if set (the engine must count fuel).
    pub fuel: Option<u64>,
}

impl StageSettings {
    /// Settings for running a plugin outside a pipeline (`plugin test`,
    /// `diff`, `bench`): generous limits, no Redis, no grants.
    pub fn offline(pipeline: &str, config: Vec<(String, String)>) -> Self {
        StageSettings {
            pipeline: pipeline.into(),
            timeout: Duration::from_secs(10),
            memory_bytes: 256 << 20,
            config,
            kv: None,
            grants: Default::default(),
            fuel: None,
        }
    }
}

/// A plugin and the settings its instances run with: what a consumer
/// instantiates. Replaced whole, so a consumer sees either the old pair or
/// the new one.
pub struct Version {
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Its settings.
    pub settings: StageSettings,
}

/// One processor of a pipeline, shared by its consumers. The version can be
/// replaced while consumers run: each consumer notices between batches and
/// instantiates the new one, so in-flight batches finish on the old. Under
/// `rollout = "shadow"` or `"canary"` a changed file becomes a candidate
/// beside the serving version instead (see [`rollout`]).
pub struct Stage {
    current: ArcSwap<Version>,
    /// The version on trial, if any (shadow or canary).
    candidate: ArcSwapOption<Version>,
    policy: Policy,
    /// 1-based position in the pipeline: a label for logs and metrics.
    number: usize,
    trial: Mutex<Trial>,
    /// Where shadow mismatches are sampled to, opened on first use.
    shadow_out: Mutex<Option<crate::conn::BlockingConn>>,
}

/// What a stage remembers about its versions.
#[derive(Default)]
struct Trial {
    /// The version that served before the current one: `rollback` returns to it.
    previous: Option<Arc<Version>>,
    /// A content hash rolled back: not rolled out again until the file
    /// holds something else.
    refused: Option<String>,
    /// Recent outcomes of the serving version and of the candidate.
    serving: Window,
    candidate: Window,
    /// When the candidate arrived.
    since: Option<Instant>,
    history: Vec<Served>,
}

/// What [`Stage::offer`] did with a new version.
pub enum Offered {
    /// It serves now (swap); the version it replaced.
    Swapped(Arc<Version>),
    /// It runs beside the serving version (shadow or canary).
    OnTrial,
    /// It was rolled back before and the file has not changed since.
    Refused,
}

impl Stage {
    /// A stage running `plugin` with `settings`, swapping in new versions.
    pub fn new(plugin: Arc<Plugin>, settings: StageSettings) -> Self {
        let trial = Trial {
            history: vec![Served::now(plugin.hash(), How::Start)],
            ..Trial::default()
        };
        Stage {
            current: ArcSwap::from_pointee(Version { plugin, settings }),
            candidate: ArcSwapOption::empty(),
            policy: Policy::default(),
            number: 1,
            trial: Mutex::new(trial),
            shadow_out: Mutex::new(None),
        }
    }

    /// The same stage, as processor `number` (1-based) rolling out new
    /// versions by `policy`.
    pub fn with_rollout(self, policy: Policy, number: usize) -> Self {
        Stage {
            policy,
            number,
            ..self
        }
    }

    /// The version new batches use.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// The version on trial, if any.
    pub fn candidate(&self) -> Option<Arc<Version>> {
        self.candidate.load_full()
    }

    /// Its rollout policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Makes `next` the version for new batches; returns the one it replaces.
    pub fn swap(&self, next: Version) -> Arc<Version> {
        self.current.swap(Arc::new(next))
    }

    fn trial(&self) -> std::sync::MutexGuard<'_, Trial> {
        self.trial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new version of the plugin file, compiled and initialised: swapped
    /// in, or put on trial, as the policy says.
    pub fn offer(&self, next: Version) -> Offered {
        let mut trial = self.trial();
        let hash = next.plugin.hash().to_string();
        if trial.refused.as_deref() == Some(hash.as_str()) {
            return Offered::Refused;
        }
        trial.refused = None;
        if self.policy.mode == Rollout::Swap {
            let old = self.swap(next);
            trial.previous = Some(old.clone());
            trial.history.push(Served::now(&hash, How::FileChange));
            return Offered::Swapped(old);
        }
        trial.serving = Window::default();
        trial.candidate = Window::default();
        trial.since = Some(Instant::now());
        self.candidate.store(Some(Arc::new(next)));
        Offered::OnTrial
    }

    /// Makes the candidate the serving version; returns its hash. Blocking
    /// (records the versions in Redis for `sluice status`).
    pub fn promote(&self, how: How) -> Result<String, String> {
        let mut trial = self.trial();
        let next = self
            .candidate
            .swap(None)
            .ok_or_else(|| "no new version on trial to promote".to_string())?;
        let hash = next.plugin.hash().to_string();
        let old = self.current.swap(next.clone());
        self.published(&old, &next);
        trial.previous = Some(old);
        trial.since = None;
        trial.history.push(Served::now(&hash, how));
        let (pipeline, stage) = self.labels();
        tracing::info!(pipeline = %pipeline, stage, hash = %&hash[..12], how = ?how, "new plugin version promoted: it serves every message now");
        metrics::counter!("sluice_plugin_promotions_total", "pipeline" => pipeline.clone(), "stage" => stage.to_string()).increment(1);
        drop(trial);
        super::rollout::publish(&pipeline);
        Ok(hash)
    }

    /// Drops the candidate, or without one returns to the version that
    /// served before; the version left is refused until the file changes.
    /// Returns the hash that serves now. Blocking, like [`Stage::promote`].
    pub fn rollback(&self, why: &str) -> Result<String, String> {
        let mut trial = self.trial();
        let (pipeline, stage) = self.labels();
        let (left, serving) = if let Some(candidate) = self.candidate.swap(None) {
            trial.since = None;
            (candidate, self.current())
        } else {
            let previous = trial
                .previous
                .take()
                .ok_or_else(|| "no previous version to return to".to_string())?;
            let left = self.current.swap(previous.clone());
            self.published(&left, &previous);
            trial
                .history
                .push(Served::now(previous.plugin.hash(), How::Rollback));
            (left, previous)
        };
        trial.refused = Some(left.plugin.hash().to_string());
        tracing::warn!(
            pipeline = %pipeline,
            stage,
            rolled_back = %left.plugin.short_hash(),
            serving = %serving.plugin.short_hash(),
            "plugin version rolled back: {why}; it is not rolled out again until the file changes"
        );
        metrics::counter!("sluice_plugin_rollbacks_total", "pipeline" => pipeline.clone(), "stage" => stage.to_string(), "reason" => if why == MANUAL { "manual" } else { "failure_rate" }).increment(1);
        drop(trial);
        super::rollout::publish(&pipeline);
        Ok(serving.plugin.hash().to_string())
    }

    /// The dashboard's gauge moves from `old` to `new`.
    fn published(&self, old: &Version, new: &Version) {
        let pipeline = &new.settings.pipeline;
        crate::http::plugin_info(pipeline, old.plugin.path(), old.plugin.short_hash(), false);
        crate::http::plugin_info(pipeline, new.plugin.path(), new.plugin.short_hash(), true);
    }

    fn labels(&self) -> (String, usize) {
        (self.current().settings.pipeline.to_string(), self.number)
    }

    /// Records which messages each version failed, and rolls the candidate
    /// back or promotes it when the windows say so.
    fn judge(&self, candidate: &Arc<Version>, serving: &[bool], tried: &[bool]) {
        let verdict = {
            let mut trial = self.trial();
            // Another consumer may have promoted or rolled it back meanwhile.
            if !self
                .candidate
                .load()
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, candidate))
            {
                return;
            }
            let cap = self.policy.window;
            serving.iter().for_each(|f| trial.serving.push(*f, cap));
            tried.iter().for_each(|f| trial.candidate.push(*f, cap));
            match judge(&trial.serving, &trial.candidate, &self.policy) {
                Judgement::RollBack(why) => Some(Err(why)),
                Judgement::Keep => {
                    let clean = self.policy.promote_after.is_some_and(|after| {
                        trial.since.is_some_and(|s| s.elapsed() >= after)
                            && trial.candidate.len() >= MIN_SAMPLES.min(cap)
                    });
                    clean.then_some(Ok(()))
                }
            }
        };
        match verdict {
            Some(Err(why)) => drop(self.rollback(&why)),
            Some(Ok(())) => drop(self.promote(How::PromoteAfter)),
            None => {}
        }
    }

    /// The stage as `/rollouts` shows it.
    pub fn report(&self) -> serde_json::Value {
        let trial = self.trial();
        let current = self.current();
        let candidate = self.candidate();
        serde_json::json!({
            "stage": self.number,
            "plugin": current.plugin.path().display().to_string(),
            "rollout": format!("{:?}", self.policy.mode).to_lowercase(),
            "serving": current.plugin.hash(),
            "candidate": candidate.as_ref().map(|c| c.plugin.hash().to_string()),
            "previous": trial.previous.as_ref().map(|p| p.plugin.hash().to_string()),
            "refused": trial.refused,
            "failure_rate": {
                "serving": trial.serving.rate(),
                "candidate": (!trial.candidate.is_empty()).then(|| trial.candidate.rate()),
            },
            "history": trial.history,
        })
    }

    /// Makes one instance and runs its `init`: proves the plugin and its
    /// config work before a pipeline starts or a new version is swapped in.
    pub fn check_init(plugin: &Arc<Plugin>, settings: &StageSettings) -> Result<(), String> {
        let version = Arc::new(Version {
            plugin: plugin.clone(),
            settings: settings.clone(),
        });
        Instance::new(version).map(drop).map_err(|f| f.reason)
    }

    /// Compares the serving version's outcomes with the shadow's, counts
    /// them, and samples mismatches to `<pipeline>:shadow`.
    fn shadowed(
        &self,
        serving: &Arc<Version>,
        shadow: &Arc<Version>,
        msgs: &[Message],
        served: &[Outcome],
        shadowed: &[Outcome],
    ) {
        let pipeline = serving.settings.pipeline.to_string();
        let stage = self.number.to_string();
        let mut samples = Vec::new();
        let (mut different, mut failing) = (0u64, 0u64);
        for ((msg, a), b) in msgs.iter().zip(served).zip(shadowed) {
            let (verdict, lines) = crate::plugin_diff::compare(a, b);
            match verdict {
                Verdict::Same => continue,
                Verdict::Different => different += 1,
                Verdict::Failing => failing += 1,
            }
            if samples.len() < SHADOW_SAMPLES_PER_BATCH {
                samples.push((msg.id.clone(), lines.join("; ")));
            }
        }
        let labels = [("pipeline", pipeline.clone()), ("stage", stage.clone())];
        metrics::counter!("sluice_shadow_messages_total", &labels).increment(msgs.len() as u64);
        metrics::counter!("sluice_shadow_mismatches_total", &labels).increment(different);
        metrics::counter!("sluice_shadow_failures_total", &labels).increment(failing);
        if !samples.is_empty() {
            self.sample(&pipeline, serving, shadow, &samples);
        }
        let failed = |o: &[Outcome]| o.iter().map(Result::is_err).collect::<Vec<_>>();
        self.judge(shadow, &failed(served), &failed(shadowed));
    }

    /// Best effort: a sample that cannot be written costs nothing but the sample.
    fn sample(
        &self,
        pipeline: &str,
        serving: &Version,
        shadow: &Version,
        samples: &[(String, String)],
    ) {
        let Some(client) = &serving.settings.kv else {
            return;
        };
        let mut out = self.shadow_out.lock().unwrap_or_else(|e| e.into_inner());
        if out.is_none() {
            *out = client
                .blocking(Duration::from_secs(2))
                .inspect_err(|e| tracing::debug!(pipeline, "cannot sample shadow mismatches: {e}"))
                .ok();
        }
        let Some(conn) = out.as_mut() else { return };
        let key = format!("{pipeline}:shadow");
        // One XADD each (a batch samples at most a few): a blocking cluster
        // connection runs single commands only.
        for (id, detail) in samples {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(SHADOW_MAXLEN)
                .arg("*")
                .arg("id")
                .arg(id)
                .arg("stage")
                .arg(self.number)
                .arg("serving")
                .arg(serving.plugin.hash())
                .arg("shadow")
                .arg(shadow.plugin.hash())
                .arg("detail")
                .arg(detail);
            if let Err(e) = conn.query::<()>(&xadd) {
                tracing::debug!(pipeline, "cannot sample shadow mismatches: {e}");
                *out = None;
                return;
            }
        }
    }
}

/// The reason [`Stage::rollback`] is given when an operator asks.
pub const MANUAL: &str = "asked by an operator";

/// A live instance: a store and the bindings into it. Dropped after a trap,
/// since a component instance that trapped cannot be entered again.
struct Instance {
    store: Store<Host>,
    bindings: bindings::Processor,
    /// `process-encoded`, when the plugin exports it (the `batch-processor`
    /// world): called instead of `process`.
    encoded: Option<Func>,
    /// The encoded batch, reused from call to call.
    buffer: Vec<u8>,
    version: Arc<Version>,
}

impl Instance {
    fn new(version: Arc<Version>) -> Result<Self, Failure> {
        let (plugin, settings) = (&version.plugin, &version.settings);
        let host = Host::new(
            settings.pipeline.clone(),
            plugin.path.display().to_string().into(),
            settings.memory_bytes,
            settings.kv.clone(),
            &settings.grants,
        )
        .map_err(|e| Failure::retry(FailureClass::Plugin, format!("cannot grant: {e:#}")))?;
        let mut store = Store::new(plugin.pre.engine(), host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(deadline_ticks(settings.timeout));
        refuel(&mut store, settings)?;
        let _ticking = plugin.ticker.running();
        let instance = plugin
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store, settings, "instantiate"))?;
        let bindings = bindings::Processor::new(&mut store, &instance)
            .map_err(|e| classify(e, &store, settings, "instantiate"))?;
        // The fast path only when the export has exactly the WIT's type.
        let encoded = plugin
            .encoded
            .then(|| instance.get_func(&mut store, "process-encoded"))
            .flatten()
            .filter(|f| f.typed::<(&[u8],), (Vec<u8>,)>(&store).is_ok());
        let config: Vec<(&str, &str)> = settings
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match bindings.call_init(&mut store, &config) {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
                encoded,
                buffer: Vec::new(),
                version: version.clone(),
            }),
            Ok(Err(why)) => Err(Failure::retry(
                FailureClass::Plugin,
                format!("init refused: {why}"),
            )),
            Err(e) => Err(classify(e, &store, settings, "init")),
        }
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64).div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

/// Gives a call its `fuel`; on an engine that counts fuel, a processor
/// without a `fuel` setting gets all there is.
fn refuel(store: &mut Store<Host>, settings: &StageSettings) -> Result<(), Failure> {
    let counting = store.get_fuel().is_ok();
    let fuel = match (settings.fuel, counting) {
        (Some(fuel), _) => fuel,
        (None, true) => u64::MAX,
        (None, false) => return Ok(()),
    };
    store
        .set_fuel(fuel)
        .map_err(|e| Failure::retry(FailureClass::Plugin, format!("cannot set fuel: {e}")))
}

/// Names a trap by its cause: the deadline, the memory cap, or the guest's own panic.
fn classify(
    e: wasmtime::Error,
    store: &Store<Host>,
    settings: &StageSettings,
    during: &str,
) -> Failure {
    let host = store.data();
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return Failure::retry(
            FailureClass::Timeout,
            format!(
                "{during} ran longer than timeout_ms = {}",
                settings.timeout.as_millis()
            ),
        );
    }
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
        return Failure::retry(
            FailureClass::Timeout,
            format!(
                "{during} used more than fuel = {}",
                settings.fuel.unwrap_or_default()
            ),
        );
    }
    if host.limits.hit {
        return Failure::retry(
            FailureClass::Memory,
            format!(
                "{during} needed more than memory_mb = {}",
                settings.memory_bytes >> 20
            ),
        );
    }
    let detail = host.stderr.last_message().unwrap_or_else(|| {
        format!("{e:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    });
    Failure::retry(FailureClass::Trap, format!("{during} trapped: {detail}"))
}

/// One consumer's view of a stage: the shared stage and this consumer's
/// instances of the serving version and of a candidate.
struct Slot {
    stage: Arc<Stage>,
    serving: Runner,
    trial: Runner,
}

impl Slot {
    /// Processes `msgs` at stage `self.stage` with the serving `version`,
    /// and with `candidate` as the rollout policy says: beside it (shadow,
    /// outcomes compared and discarded) or on its share of the messages
    /// (canary).
    fn run(
        &mut self,
        version: &Arc<Version>,
        candidate: Option<&Arc<Version>>,
        msgs: &[Message],
    ) -> Vec<Outcome> {
        let Some(candidate) = candidate else {
            self.trial.instance = None;
            return self.serving.call(version, msgs);
        };
        match self.stage.policy.mode {
            Rollout::Swap => self.serving.call(version, msgs),
            Rollout::Shadow => {
                let served = self.serving.call(version, msgs);
                let shadowed = self.trial.call(candidate, msgs);
                self.stage
                    .shadowed(version, candidate, msgs, &served, &shadowed);
                served
            }
            Rollout::Canary => {
                let policy = &self.stage.policy;
                let canary: Vec<bool> = msgs
                    .iter()
                    .map(|m| policy.canary_serves(&m.id, &m.fields))
                    .collect();
                let pick = |want: bool| -> Vec<Message> {
                    msgs.iter()
                        .zip(&canary)
                        .filter(|(_, c)| **c == want)
                        .map(|(m, _)| m.clone())
                        .collect()
                };
                let (old, new) = (pick(false), pick(true));
                let mut old_out = self.serving.call(version, &old).into_iter();
                let mut new_out = self.trial.call(candidate, &new).into_iter();
                let pipeline = version.settings.pipeline.to_string();
                let stage = self.stage.number.to_string();
                metrics::counter!("sluice_canary_messages_total", "pipeline" => pipeline.clone(), "stage" => stage.clone(), "version" => "serving").increment(old.len() as u64);
                metrics::counter!("sluice_canary_messages_total", "pipeline" => pipeline, "stage" => stage, "version" => "candidate").increment(new.len() as u64);
                let (mut old_failed, mut new_failed) = (Vec::new(), Vec::new());
                let outcomes: Vec<Outcome> = canary
                    .iter()
                    .map(|c| {
                        let (out, failed) = if *c {
                            (&mut new_out, &mut new_failed)
                        } else {
                            (&mut old_out, &mut old_failed)
                        };
                        let o = out.next().expect("one outcome per message");
                        failed.push(o.is_err());
                        o
                    })
                    .collect();
                self.stage.judge(candidate, &old_failed, &new_failed);
                outcomes
            }
        }
    }
}

/// One instance slot of a consumer: made on first use, remade when the
/// version it runs changes or after a trap.
#[derive(Default)]
struct Runner {
    instance: Option<Instance>,
}

impl Runner {
    /// Processes `msgs` with `version` (pinned for the whole batch, so a swap
    /// never splits one), one outcome each. If the batch call traps, each
    /// message is tried alone so that only the culprit fails. A message the
    /// plugin cannot be given unaltered (see [`field_params`]) fails as a
    /// dead letter without a call.
    fn call(&mut self, version: &Arc<Version>, msgs: &[Message]) -> Vec<Outcome> {
        if msgs.is_empty() {
            return Vec::new();
        }
        let fields = field_params(msgs);
        let batch: Vec<wit::Message<'_>> = msgs
            .iter()
            .zip(&fields)
            .filter_map(|(m, f)| f.as_deref().ok().map(|f| to_wit(m, f)))
            .collect();
        let mut outcomes = match self.call_batch(version, &batch) {
            Ok(outcomes) => outcomes,
            Err(failure) if batch.len() == 1 => vec![Err(failure)],
            Err(failure) => {
                tracing::warn!(
                    pipeline = %version.settings.pipeline,
                    plugin = %version.plugin.path.display(),
                    batch = batch.len(),
                    "{failure}; retrying the batch's messages one by one to find the culprit"
                );
                batch
                    .iter()
                    .map(
                        |m| match self.call_batch(version, std::slice::from_ref(m)) {
                            Ok(mut one) => one.pop().unwrap_or_else(|| Ok(Vec::new())),
                            Err(f) => Err(f),
                        },
                    )
                    .collect()
            }
        };
        let hash: Arc<str> = version.plugin.hash().into();
        for failure in outcomes.iter_mut().filter_map(|o| o.as_mut().err()) {
            failure.plugin.get_or_insert_with(|| hash.clone());
        }
        let mut called = outcomes.into_iter();
        fields
            .into_iter()
            .map(|f| match f {
                Ok(_) => called.next().expect("one outcome per message called"),
                Err(refused) => Err(refused),
            })
            .collect()
    }

    fn call_batch(
        &mut self,
        version: &Arc<Version>,
        batch: &[wit::Message<'_>],
    ) -> Result<Vec<Outcome>, Failure> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if self
            .instance
            .as_ref()
            .is_none_or(|i| !Arc::ptr_eq(&i.version, version))
        {
            // Drop the old instance first: its memory can be large.
            self.instance = None;
            self.instance = Some(Instance::new(version.clone())?);
        }
        let inst = self.instance.as_mut().expect("instance set above");
        let settings = &version.settings;
        inst.store
            .set_epoch_deadline(deadline_ticks(settings.timeout));
        refuel(&mut inst.store, settings)?;
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            inst.store.data().log.processing(first.id, last.id);
        }
        let _ticking = version.plugin.ticker.running();
        let called = match inst.encoded.filter(|_| encoded_pays(batch)) {
            Some(func) => inst.call_encoded(func, batch),
            None => inst
                .bindings
                .call_process(&mut inst.store, batch)
                .map(|outcomes| Ok(outcomes.into_iter().map(from_wit).collect())),
        };
        match called {
            Ok(Ok(outcomes)) if outcomes.len() == batch.len() => Ok(outcomes),
            Ok(Ok(outcomes)) => Err(Failure::retry(
                FailureClass::Plugin,
                format!(
                    "process returned {} outcomes for {} messages",
                    outcomes.len(),
                    batch.len()
                ),
            )),
            Ok(Err(malformed)) => Err(Failure::retry(
                FailureClass::Plugin,
                format!("process-encoded returned {malformed}"),
            )),
            Err(e) => {
                let failure = classify(e, &inst.store, settings, "process");
                self.instance = None;
                Err(failure)
            }
        }
    }
}

impl Instance {
    /// One `process-encoded` call: the batch in one buffer, the outcomes in
    /// another (encoding in sdk/README.md, "The encoded batch").
    fn call_encoded(
        &mut self,
        func: Func,
        batch: &[wit::Message<'_>],
    ) -> wasmtime::Result<Result<Vec<Outcome>, Malformed>> {
        self.buffer.clear();
        encode_batch(batch, &mut self.buffer);
        // SAFETY: `func`'s type was checked against exactly these parameters
        // and results when the instance was made (see `Instance::new`); this
        // skips repeating that check on every batch, as bindgen's own calls do.
        let typed = unsafe { TypedFunc::<(&[u8],), (Vec<u8>,)>::new_unchecked(func) };
        let (out,) = typed.call(&mut self.store, (&self.buffer[..],))?;
        Ok(decode_outcomes(&out))
    }
}

/// A consumer's processors, applied in order. Not shared: each consumer
/// owns one and moves it onto a blocking thread for each batch.
pub struct Chain {
    slots: Vec<Slot>,
}

impl Chain {
    /// A chain over `stages`; instances are made on first use.
    pub fn new(stages: &[Arc<Stage>]) -> Self {
        Chain {
            slots: stages
                .iter()
                .map(|s| Slot {
                    stage: s.clone(),
                    serving: Runner::default(),
                    trial: Runner::default(),
                })
                .collect(),
        }
    }

    /// Instantiates every stage now, running each plugin's `init` once, and
    /// keeps the instances for the batches to come: a caller that must see
    /// init fail before processing (`plugin test`) need not run it twice.
    pub fn warm(&mut self) -> Result<(), String> {
        for slot in &mut self.slots {
            if slot.serving.instance.is_none() {
                let version = slot.stage.current();
                slot.serving.instance = Some(Instance::new(version).map_err(|f| f.reason)?);
            }
        }
        Ok(())
    }

    /// One outcome per message. A message fans out through the stages: each
    /// record of stage k is a message for stage k+1 (same id, source and
    /// deliveries). The input message is the unit of delivery (one ack), so:
    /// - a record a later stage drops is discarded alone: its siblings go on;
    /// - a record a later stage fails (retry or dead-letter) fails the whole
    ///   message, and none of its records is written: a retry produces them
    ///   all again, a dead letter keeps the original, and its reason says
    ///   which stage failed and that the siblings were not written.
    pub fn process(&mut self, batch: &[Message]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = vec![Ok(Vec::new()); batch.len()];
        let Some(last) = self.slots.len().checked_sub(1) else {
            return batch
                .iter()
                .map(|m| Ok(vec![Record::from_message(m)]))
                .collect();
        };
        // (index of the input message, message for this stage, `to` so far)
        let mut items: Vec<(usize, Option<String>)> = (0..batch.len()).map(|i| (i, None)).collect();
        // The first stage reads the batch as it is; later ones read records.
        let mut msgs: Cow<'_, [Message]> = Cow::Borrowed(batch);
        let versions: Vec<Arc<Version>> = self.slots.iter().map(|s| s.stage.current()).collect();
        let candidates: Vec<Option<Arc<Version>>> =
            self.slots.iter().map(|s| s.stage.candidate()).collect();
        let stages = self.slots.len();
        for (k, ((slot, version), candidate)) in self
            .slots
            .iter_mut()
            .zip(&versions)
            .zip(&candidates)
            .enumerate()
        {
            let started = std::time::Instant::now();
            let results = slot.run(version, candidate.as_ref(), &msgs);
            // Per stage, so a chain shows which processor costs the time.
            metrics::histogram!(
                "sluice_stage_seconds",
                "pipeline" => version.settings.pipeline.to_string(),
                "stage" => (k + 1).to_string()
            )
            .record(started.elapsed().as_secs_f64());
            // How many records of each input message this stage received.
            let mut siblings = vec![0usize; batch.len()];
            for (idx, _) in &items {
                siblings[*idx] += 1;
            }
            let mut next_items = Vec::new();
            let mut next_msgs = Vec::new();
            for ((idx, to), (msg, result)) in items.into_iter().zip(msgs.iter().zip(results)) {
                if outcomes[idx].is_err() {
                    continue;
                }
                match result {
                    // A record dropped after a fan-out: only that record.
                    Err(failure) if k > 0 && failure.kind == FailureKind::Drop => {
                        tracing::debug!(id = %msg.id, stage = k + 1, "record dropped: {failure}");
                    }
                    Err(mut failure) if k > 0 => {
                        failure.reason = format!(
                            "{} (stage {} of {stages}, on one of {} records the message had become; none of them was written)",
                            failure.reason,
                            k + 1,
                            siblings[idx]
                        );
                        outcomes[idx] = Err(failure)
                    }
                    Err(failure) => outcomes[idx] = Err(failure),
                    Ok(records) if k == last => {
                        let out = outcomes[idx].as_mut().expect("checked above");
                        out.extend(records.into_iter().map(|r| Record {
                            to: r.to.or_else(|| to.clone()),
                            ..r
                        }));
                    }
                    Ok(records) => {
                        for r in records {
                            next_items.push((idx, r.to.or_else(|| to.clone())));
                            next_msgs.push(Message {
                                id: msg.id.clone(),
                                source: msg.source.clone(),
                                fields: r.fields,
                                deliveries: msg.deliveries,
                                first_delivery_ms: msg.first_delivery_ms,
                            });
                        }
                    }
                }
            }
            items = next_items;
            msgs = Cow::Owned(next_msgs);
        }
        outcomes
    }
}

/// Borrowed views of a batch for lowering into the guest: the one copy of
/// the data is the copy into guest memory. A field name is a string in the
/// WIT, so a message with a name that is not UTF-8 cannot be lowered without
/// altering it: it gets a dead-letter failure naming the field instead
/// (retrying cannot help; the dead letter keeps the original bytes).
fn field_params(msgs: &[Message]) -> Vec<Result<Vec<wit::FieldParam<'_>>, Failure>> {
    msgs.iter()
        .map(|m| {
            m.fields
                .iter()
                .map(|(name, value)| match std::str::from_utf8(name) {
                    Ok(name) => Ok(wit::FieldParam { name, value }),
                    Err(_) => Err(Failure {
                        kind: FailureKind::DeadLetter,
                        ..Failure::retry(
                            FailureClass::Encoding,
                            format!(
                                "field name \"{}\" is not UTF-8: a plugin cannot be given it unaltered (field names are WIT strings)",
                                escape(name)
                            ),
                        )
                    }),
                })
                .collect()
        })
        .collect()
}

fn to_wit<'a>(m: &'a Message, fields: &'a [wit::FieldParam<'a>]) -> wit::Message<'a> {
    wit::Message {
        id: &m.id,
        source: &m.source,
        fields,
        deliveries: m.deliveries,
        first_delivery_ms: m.first_delivery_ms,
    }
}

/// Messages up to this size (field names and values, on average over the
/// batch) go through `process-encoded`. The encoded batch saves a guest
/// allocation per string and list but copies each value a few more times,
/// so past about 4 KiB per message the typed call is cheaper (`sluice plugin
/// bench --size` of the uppercase example, batch 256: encoded 0.64 against
/// typed 0.84 us at 1.1 KB, even at 4 KiB, 8.1 against 5.7 at 16 KiB).
const ENCODED_MAX_AVERAGE: usize = 4096;

/// Whether `batch` is cheaper to pass encoded than typed.
fn encoded_pays(batch: &[wit::Message<'_>]) -> bool {
    let bytes: usize = batch
        .iter()
        .flat_map(|m| m.fields)
        .map(|f| f.name.len() + f.value.len())
        .sum();
    bytes <= ENCODED_MAX_AVERAGE * batch.len()
}

/// Encodes a batch for `process-encoded`: a count, then per message id,
/// source, deliveries, first delivery ms and the fields.
fn encode_batch(batch: &[wit::Message<'_>], buf: &mut Vec<u8>) {
    let size: usize = batch
        .iter()
        .map(|m| {
            32 + m.id.len()
                + m.source.len()
                + m.fields
                    .iter()
                    .map(|f| 8 + f.name.len() + f.value.len())
                    .sum::<usize>()
        })
        .sum();
    buf.reserve(4 + size);
    let mut w = Writer(buf);
    w.len(batch.len());
    for m in batch {
        w.bytes(m.id.as_bytes());
        w.bytes(m.source.as_bytes());
        w.u32(m.deliveries);
        w.u64(m.first_delivery_ms);
        w.len(m.fields.len());
        for f in m.fields {
            w.bytes(f.name.as_bytes());
            w.bytes(f.value);
        }
    }
}

/// Decodes `process-encoded`'s outcomes. Untrusted: every length is
/// checked, and a malformed buffer fails the batch, never the runtime.
fn decode_outcomes(buf: &[u8]) -> Result<Vec<Outcome>, Malformed> {
    let mut r = Reader::new(buf);
    let mut outcomes = Vec::new();
    while !r.is_empty() {
        let outcome = match r.u8()? {
            wire::OK => {
                let n = r.count(5)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let fields = (0..r.count(8)?)
                        .map(|_| Ok((r.bytes()?.to_vec(), r.bytes()?.to_vec())))
                        .collect::<Result<_, Malformed>>()?;
                    let to = match r.u8()? {
                        0 => None,
                        1 => Some(r.str()?.to_owned()),
                        _ => return Err(Malformed("unknown sink tag")),
                    };
                    records.push(Record { fields, to });
                }
                Ok(records)
            }
            wire::FAILED => {
                let kind = match r.u8()? {
                    0 => FailureKind::Retry,
                    1 => FailureKind::DeadLetter,
                    2 => FailureKind::Drop,
                    _ => return Err(Malformed("unknown failure kind")),
                };
                Err(Failure {
                    kind,
                    class: FailureClass::Plugin,
                    reason: String::from_utf8_lossy(r.bytes()?).into_owned(),
                    plugin: None,
                })
            }
            _ => return Err(Malformed("unknown outcome tag")),
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn from_wit(outcome: Result<Vec<wit::Output>, wit::Failure>) -> Outcome {
    match outcome {
        Ok(records) => Ok(records
            .into_iter()
            .map(|r| Record {
                fields: r
                    .fields
                    .into_iter()
                    .map(|f| (f.name.into_bytes(), f.value))
                    .collect(),
                to: r.to,
            })
            .collect()),
        Err(f) => Err(Failure {
            kind: match f.kind {
                wit::FailureKind::Retry => FailureKind::Retry,
                wit::FailureKind::DeadLetter => FailureKind::DeadLetter,
                wit::FailureKind::Drop => FailureKind::Drop,
            },
            class: FailureClass::Plugin,
            reason: f.reason,
            plugin: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::{Config, Processor};

    /// Uppercases `body` and routes by it, as a plugin built with the SDK would.
    struct Upper;

    impl Processor for Upper {
        fn init(_: Config) -> Result<Self, String> {
            Ok(Upper)
        }

        fn process(
            &mut self,
            msg: sluice_sdk::Message,
        ) -> Result<Vec<sluice_sdk::Record>, sluice_sdk::Failure> {
            let body = msg.get("body").unwrap_or_default().to_ascii_uppercase();
            match &body[..] {
                b"POISON" => Err(sluice_sdk::Failure::dead_letter("poison")),
                b"SKIP" => Ok(vec![]),
                _ => {
                    let to = format!("{}@{}", msg.source(), msg.deliveries());
                    Ok(vec![msg.into_record().set("body", body).to(to)])
                }
            }
        }
    }

    #[test]
    fn the_encoded_batch_round_trips_through_the_sdk() {
        let fields: Vec<Vec<wit::FieldParam<'_>>> = ["a\u{e9}", "poison", "skip", ""]
            .iter()
            .map(|body| {
                vec![
                    wit::FieldParam {
                        name: "body",
                        value: body.as_bytes(),
                    },
                    wit::FieldParam {
                        name: "bin",
                        value: &[0, 255, 10],
                    },
                ]
            })
            .collect();
        let batch: Vec<wit::Message<'_>> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| wit::Message {
                id: "1-0",
                source: "in",
                fields: f,
                deliveries: i as u32 + 1,
                first_delivery_ms: u64::MAX,
            })
            .collect();
        let mut buf = Vec::new();
        encode_batch(&batch, &mut buf);
        sluice_sdk::__private::init::<Upper>(Vec::new()).unwrap();
        let outcomes = decode_outcomes(&sluice_sdk::__private::process_encoded::<Upper>(buf))
            .expect("well formed");
        assert_eq!(outcomes.len(), 4);
        let first = outcomes[0].as_ref().unwrap();
        assert_eq!(
            first[0].fields,
            [
                (b"body".to_vec(), "A\u{e9}".as_bytes().to_vec()),
                (b"bin".to_vec(), vec![0, 255, 10])
            ]
        );
        assert_eq!(first[0].to.as_deref(), Some("in@1"));
        let poison = outcomes[1].as_ref().unwrap_err();
        assert_eq!(
            (poison.kind, poison.reason.as_str()),
            (FailureKind::DeadLetter, "poison")
        );
        assert!(outcomes[2].as_ref().unwrap().is_empty());
        assert_eq!(outcomes[3].as_ref().unwrap()[0].to.as_deref(), Some("in@4"));
    }

    #[test]
    fn large_messages_take_the_typed_call() {
        let (small, large) = ([0u8; 100], [0u8; 16384]);
        let small = [wit::FieldParam {
            name: "payload",
            value: &small,
        }];
        let large = [wit::FieldParam {
            name: "payload",
            value: &large,
        }];
        let message = |fields| wit::Message {
            id: "1-0",
            source: "in",
            fields,
            deliveries: 1,
            first_delivery_ms: 1,
        };
        assert!(encoded_pays(&[message(&small), message(&small)]));
        assert!(!encoded_pays(&[message(&large), message(&large)]));
        // The average decides: one large message among many small ones stays encoded.
        let mut mixed = vec![message(&large)];
        mixed.extend((0..40).map(|_| message(&small)));
        assert!(encoded_pays(&mixed));
    }

    #[test]
    fn malformed_outcomes_are_refused() {
        // An unknown tag, a truncated record, a count larger than the buffer.
        assert!(decode_outcomes(&[7]).is_err());
        assert!(decode_outcomes(&[wire::OK, 1, 0, 0, 0, 1, 0, 0, 0]).is_err());
        assert!(decode_outcomes(&[wire::OK, 255, 255, 255, 255]).is_err());
        assert!(decode_outcomes(&[wire::FAILED, 9, 0, 0, 0, 0]).is_err());
        assert_eq!(decode_outcomes(&[]).map(|o| o.len()), Ok(0));
    }
}
