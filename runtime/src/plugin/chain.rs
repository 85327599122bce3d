//! A consumer's processors: warm instances, one `process` call per batch,
//! faults contained to the messages that caused them.

use super::bindings::sluice::processor::types as wit;
use super::host::Host;
use super::{EPOCH_TICK, Plugin, bindings};
use crate::message::{Failure, FailureClass, FailureKind, Message, Outcome, Record, escape};
use arc_swap::ArcSwap;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
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
/// instantiates the new one, so in-flight batches finish on the old.
pub struct Stage {
    current: ArcSwap<Version>,
}

impl Stage {
    /// A stage running `plugin` with `settings`.
    pub fn new(plugin: Arc<Plugin>, settings: StageSettings) -> Self {
        Stage {
            current: ArcSwap::from_pointee(Version { plugin, settings }),
        }
    }

    /// The version new batches use.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Makes `next` the version for new batches; returns the one it replaces.
    pub fn swap(&self, next: Version) -> Arc<Version> {
        self.current.swap(Arc::new(next))
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
}

/// A live instance: a store and the bindings into it. Dropped after a trap,
/// since a component instance that trapped cannot be entered again.
struct Instance {
    store: Store<Host>,
    bindings: bindings::Processor,
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
        );
        let mut store = Store::new(plugin.pre.engine(), host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(deadline_ticks(settings.timeout));
        let _ticking = plugin.ticker.running();
        let bindings = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store, settings, "instantiate"))?;
        let config: Vec<(&str, &str)> = settings
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match bindings.call_init(&mut store, &config) {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
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

/// One consumer's view of a stage: the shared stage and this consumer's instance.
struct Slot {
    stage: Arc<Stage>,
    instance: Option<Instance>,
}

impl Slot {
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
        let _ticking = version.plugin.ticker.running();
        match inst.bindings.call_process(&mut inst.store, batch) {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                Ok(outcomes.into_iter().map(from_wit).collect())
            }
            Ok(outcomes) => Err(Failure::retry(
                FailureClass::Plugin,
                format!(
                    "process returned {} outcomes for {} messages",
                    outcomes.len(),
                    batch.len()
                ),
            )),
            Err(e) => {
                let failure = classify(e, &inst.store, settings, "process");
                self.instance = None;
                Err(failure)
            }
        }
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
                    instance: None,
                })
                .collect(),
        }
    }

    /// Instantiates every stage now, running each plugin's `init` once, and
    /// keeps the instances for the batches to come: a caller that must see
    /// init fail before processing (`plugin test`) need not run it twice.
    pub fn warm(&mut self) -> Result<(), String> {
        for slot in &mut self.slots {
            if slot.instance.is_none() {
                let version = slot.stage.current();
                slot.instance = Some(Instance::new(version).map_err(|f| f.reason)?);
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
        let stages = self.slots.len();
        for (k, (slot, version)) in self.slots.iter_mut().zip(&versions).enumerate() {
            let started = std::time::Instant::now();
            let results = slot.call(version, &msgs);
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
