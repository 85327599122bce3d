//! What one invocation runs: the contestants, the workload shapes (cases)
//! and the presets that pick them.

use clap::ValueEnum;

/// Who processes the workload. Every contestant is a child process, so all
/// are measured the same way from outside (/proc CPU and memory, Redis state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Contestant {
    /// The limit as people write it: a plain blocking redis-rs loop
    /// (`sluice-bench limit`).
    L,
    /// The stronger limit: read-ahead, raw RESP, no per-message allocation
    /// (`sluice-bench limit-plus`).
    #[value(name = "L+", alias = "lplus")]
    LPlus,
    /// sluice running the uppercase Wasm plugin.
    S,
    /// sluice with no processor (passthrough): the runtime without Wasm.
    S0,
    /// The hand-written Python redis-py loop (bench/python_consumer.py).
    P,
}

impl Contestant {
    /// Every contestant, in the order rounds alternate through them.
    pub const ALL: [Contestant; 5] = [
        Contestant::L,
        Contestant::LPlus,
        Contestant::S,
        Contestant::S0,
        Contestant::P,
    ];

    /// The short name used in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Contestant::L => "L",
            Contestant::LPlus => "L+",
            Contestant::S => "S",
            Contestant::S0 => "S0",
            Contestant::P => "P",
        }
    }

    /// Whether it can read a partitioned stream family. Only sluice can:
    /// L, L+ and P read one key per pipeline, and teaching them families
    /// would measure our loops, not the question the partitioned cases ask
    /// (does sluice scale over a family).
    pub fn reads_families(self) -> bool {
        matches!(self, Contestant::S | Contestant::S0)
    }

    /// One line for the report's legend.
    pub fn describe(self) -> &'static str {
        match self {
            Contestant::L => {
                "limit: hand-written Rust loop (redis-rs, one thread per consumer, native uppercase)"
            }
            Contestant::LPlus => {
                "stronger limit: hand-written Rust loop, read-ahead on its own connection, raw RESP, acks riding with reads, no per-message allocation"
            }
            Contestant::S => "sluice release build with the uppercase Wasm plugin",
            Contestant::S0 => "sluice release build, no processor (passthrough)",
            Contestant::P => "hand-written Python loop (redis-py, one thread per consumer)",
        }
    }

    /// Series colour in the plots.
    pub fn colour(self) -> &'static str {
        match self {
            Contestant::L => "#1f77b4",
            Contestant::LPlus => "#17becf",
            Contestant::S => "#d62728",
            Contestant::S0 => "#ff7f0e",
            Contestant::P => "#2ca02c",
        }
    }
}

/// One workload shape. Every contestant runs the same case on the same data.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// Payload bytes per message.
    pub size: usize,
    /// Consumers per pipeline per process.
    pub consumers: u32,
    /// XREADGROUP COUNT.
    pub batch: u32,
    /// Independent pipelines (own source and sink streams) in one process.
    pub pipelines: u32,
    /// Processes joining the same consumer groups.
    pub processes: u32,
    /// Partitions of each pipeline's source family (`bench:in:<i>:{0}` ..);
    /// 0 = one plain stream per pipeline, the default.
    pub partitions: u32,
    /// Messages in total, split evenly across the pipelines (and round-robin
    /// across a family's partitions).
    pub n: u64,
}

impl Case {
    /// A human label, e.g. `100 B, c1, b256` or `100 B, c1, b256, 10 pipelines`.
    pub fn label(&self) -> String {
        let mut label = format!(
            "{}, c{}, b{}",
            size_label(self.size),
            self.consumers,
            self.batch
        );
        if self.pipelines > 1 {
            label += &format!(", {} pipelines", self.pipelines);
        }
        if self.processes > 1 {
            label += &format!(", {} processes", self.processes);
        }
        if self.partitions > 0 {
            // Said even for 1 process: it tells the family cases apart
            // from the one-stream case of the same shape.
            if self.processes == 1 {
                label += ", 1 process";
            }
            label += &format!(", {} partitions", self.partitions);
        }
        label
    }

    /// A file-name-safe form of [`Case::label`].
    pub fn slug(&self) -> String {
        format!(
            "s{}-c{}-b{}-p{}-x{}-k{}",
            self.size, self.consumers, self.batch, self.pipelines, self.processes, self.partitions
        )
    }

    /// Whether `who` runs this case: everyone on plain streams, only the
    /// contestants that read families (S, S0) on a partitioned one.
    pub fn runs(&self, who: Contestant) -> bool {
        self.partitions == 0 || who.reads_families()
    }
}

/// `100 B`, `4 KiB`.
pub fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The latency measurement: a paced producer at a rate below saturation.
#[derive(Clone, Debug)]
pub struct LatencyPlan {
    /// Offered messages per second.
    pub rate: u32,
    /// Measured seconds per round (after a warm-up that is not counted).
    pub secs: f64,
    /// The shape the consumers run with (its `n` is unused).
    pub case: Case,
    /// How the rate was chosen, for the report: empty for a fixed rate.
    pub origin: String,
}

/// Everything one invocation runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Preset name, for the report.
    pub preset: &'static str,
    /// Throughput cases, in run order.
    pub cases: Vec<Case>,
    /// Rounds per case; each round runs every contestant once, alternating.
    pub rounds: usize,
    /// Who runs.
    pub contestants: Vec<Contestant>,
    /// Latency at a fixed rate, if asked.
    pub latency: Option<LatencyPlan>,
    /// Also measure latency at half of L+'s saturation throughput on the
    /// reference case (known once that case has run).
    pub latency_half: bool,
    /// Pipelines of the idle-memory measurement, if asked.
    pub idle_pipelines: Option<u32>,
    /// XREADGROUP BLOCK of every contestant. It only matters when a consumer
    /// is idle; a short one bounds how long a SIGTERM takes to be noticed.
    pub block_ms: u64,
    /// The case that batch and consumer sweeps pivot on.
    pub reference: Case,
}

impl Plan {
    /// Timed throughput runs: rounds x the contestants each case runs.
    pub fn runs(&self) -> usize {
        let per_round: usize = self
            .cases
            .iter()
            .map(|case| self.contestants.iter().filter(|&&c| case.runs(c)).count())
            .sum();
        per_round * self.rounds
    }
}

/// The knobs a preset sets; command-line flags override them one by one.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Payload sizes.
    pub sizes: Vec<usize>,
    /// Consumer counts; the first is the reference.
    pub consumers: Vec<u32>,
    /// Batch sizes; 256 is the reference if listed, else the first.
    pub batches: Vec<u32>,
    /// Messages per run; `None` picks per size (see [`default_n`]).
    pub n: Option<u64>,
    /// Rounds per case.
    pub rounds: usize,
    /// Pipelines of the multi-pipeline variant (1 = off).
    pub pipelines: u32,
    /// Processes of the multi-process variant (1 = off).
    pub processes: u32,
    /// Process counts of the scale-out cases (empty = off): per count, the
    /// reference case on one stream and on a family of `partitions`.
    pub scale: Vec<u32>,
    /// Partitions of the scale-out family cases (0 = one stream only).
    pub partitions: u32,
    /// Payload sizes run at the reference consumers and batch only, for the
    /// cost-against-size curves (sizes in `sizes` are covered already).
    pub size_sweep: Vec<usize>,
    /// Latency offered rate (0 = off).
    pub latency_rate: u32,
    /// Latency measured seconds.
    pub latency_secs: f64,
    /// Latency also at half of L+'s saturation throughput.
    pub latency_half: bool,
    /// Idle-memory pipelines (0 = off).
    pub idle_pipelines: u32,
    /// XREADGROUP BLOCK.
    pub block_ms: u64,
    /// Contestants.
    pub contestants: Vec<Contestant>,
}

impl Knobs {
    /// About 2 minutes on 2 cores: the reference case at 1 and 4 consumers,
    /// latency and idle memory. Enough for the headline ratios.
    pub fn quick() -> Self {
        Knobs {
            sizes: vec![100],
            consumers: vec![1, 4],
            batches: vec![256],
            n: None,
            rounds: 5,
            pipelines: 1,
            processes: 1,
            scale: Vec::new(),
            partitions: DEFAULT_PARTITIONS,
            size_sweep: Vec::new(),
            latency_rate: 5_000,
            latency_secs: 2.0,
            latency_half: true,
            idle_pipelines: 10,
            block_ms: 100,
            contestants: Contestant::ALL.to_vec(),
        }
    }

    /// Every variant, scale-out included; 10 to 30 minutes on 2 cores.
    pub fn full() -> Self {
        Knobs {
            sizes: vec![100, 4096],
            consumers: vec![1, 2, 4],
            batches: vec![16, 256, 1024],
            n: None,
            rounds: 5,
            pipelines: 10,
            processes: 2,
            scale: vec![1, 2, 4],
            partitions: DEFAULT_PARTITIONS,
            size_sweep: Vec::new(),
            latency_rate: 5_000,
            latency_secs: 3.0,
            latency_half: true,
            idle_pipelines: 10,
            block_ms: 100,
            contestants: Contestant::ALL.to_vec(),
        }
    }

    /// The cases: per size, a batch sweep at the reference consumer count
    /// and a consumer sweep at the reference batch (a star around the
    /// reference, not the full cross product, to keep the run short); the
    /// size sweep at the reference consumers and batch; then the
    /// multi-pipeline and multi-process variants and the scale-out cases at
    /// the reference. A case asked for twice (scale 2 and `processes = 2`)
    /// runs once.
    pub fn plan(self, preset: &'static str) -> Plan {
        let ref_consumers = self.consumers[0];
        let ref_batch = if self.batches.contains(&256) {
            256
        } else {
            self.batches[0]
        };
        let n_for = |size: usize| {
            self.n
                .map_or_else(|| default_n(size), |n| n.min(default_n(size)))
        };
        let case = |size, consumers, batch| Case {
            size,
            consumers,
            batch,
            pipelines: 1,
            processes: 1,
            partitions: 0,
            n: n_for(size),
        };
        let mut cases = Vec::new();
        let mut add = |case: Case| {
            if !cases.contains(&case) {
                cases.push(case);
            }
        };
        for &size in &self.sizes {
            for &batch in &self.batches {
                add(case(size, ref_consumers, batch));
            }
            for &consumers in &self.consumers[1..] {
                add(case(size, consumers, ref_batch));
            }
        }
        for &size in &self.size_sweep {
            add(case(size, ref_consumers, ref_batch));
        }
        let reference = case(self.sizes[0], ref_consumers, ref_batch);
        if self.pipelines > 1 {
            add(Case {
                pipelines: self.pipelines,
                ..reference.clone()
            });
        }
        if self.processes > 1 {
            add(Case {
                processes: self.processes,
                ..reference.clone()
            });
        }
        for &processes in self.scale.iter().filter(|&&p| p > 0) {
            add(Case {
                processes,
                ..reference.clone()
            });
            if self.partitions > 0 {
                add(Case {
                    processes,
                    partitions: self.partitions,
                    ..reference.clone()
                });
            }
        }
        Plan {
            preset,
            cases,
            rounds: self.rounds.max(1),
            latency_half: self.latency_half
                && self.latency_rate > 0
                && self.contestants.contains(&Contestant::LPlus),
            contestants: self.contestants,
            latency: (self.latency_rate > 0).then(|| LatencyPlan {
                rate: self.latency_rate,
                secs: self.latency_secs,
                case: reference.clone(),
                origin: String::new(),
            }),
            idle_pipelines: (self.idle_pipelines > 0).then_some(self.idle_pipelines),
            block_ms: self.block_ms,
            reference,
        }
    }
}

/// Partitions of the scale-out family cases: enough that every process of
/// the largest scale-out (4) reads more than one.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// Messages per run for a payload size: 200k (the fastest contestant
/// needs about half a second, long against the 10 ms CPU tick), fewer for
/// large payloads so one stream stays under ~160 MiB (4 KiB -> 40k).
pub fn default_n(size: usize) -> u64 {
    const BYTES_PER_RUN: u64 = 160 << 20;
    (BYTES_PER_RUN / size.max(1) as u64).clamp(1_000, 200_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_preset_is_a_star_around_the_reference() {
        let plan = Knobs::full().plan("full");
        let labels: Vec<String> = plan.cases.iter().map(Case::label).collect();
        assert_eq!(
            labels,
            [
                "100 B, c1, b16",
                "100 B, c1, b256",
                "100 B, c1, b1024",
                "100 B, c2, b256",
                "100 B, c4, b256",
                "4 KiB, c1, b16",
                "4 KiB, c1, b256",
                "4 KiB, c1, b1024",
                "4 KiB, c2, b256",
                "4 KiB, c4, b256",
                "100 B, c1, b256, 10 pipelines",
                "100 B, c1, b256, 2 processes",
                // Scale-out: 1 and 2 processes on one stream ran already.
                "100 B, c1, b256, 1 process, 8 partitions",
                "100 B, c1, b256, 2 processes, 8 partitions",
                "100 B, c1, b256, 4 processes",
                "100 B, c1, b256, 4 processes, 8 partitions",
            ]
        );
        assert_eq!(plan.cases[0].n, 200_000);
        assert_eq!(plan.cases[5].n, 40_960);
    }

    #[test]
    fn the_curves_knobs_compose_with_the_full_preset() {
        // --full --consumers 1,2,4,8 --size-sweep 100,1024,4096,16384,65536 --scale 1,2,4
        let knobs = Knobs {
            consumers: vec![1, 2, 4, 8],
            size_sweep: vec![100, 1024, 4096, 16384, 65536],
            scale: vec![1, 2, 4],
            ..Knobs::full()
        };
        let plan = knobs.plan("full");
        let labels: Vec<String> = plan.cases.iter().map(Case::label).collect();
        // The star per size, now with c8; the sweep adds only the sizes
        // the star did not cover, each at the reference c1, b256.
        assert_eq!(
            labels[..15],
            [
                "100 B, c1, b16",
                "100 B, c1, b256",
                "100 B, c1, b1024",
                "100 B, c2, b256",
                "100 B, c4, b256",
                "100 B, c8, b256",
                "4 KiB, c1, b16",
                "4 KiB, c1, b256",
                "4 KiB, c1, b1024",
                "4 KiB, c2, b256",
                "4 KiB, c4, b256",
                "4 KiB, c8, b256",
                "1 KiB, c1, b256",
                "16 KiB, c1, b256",
                "64 KiB, c1, b256",
            ]
        );
        assert_eq!(plan.cases.len(), 15 + 2 + 4);
        // 18 plain cases x 5 contestants + 3 family cases x S, S0; 5 rounds.
        assert_eq!(plan.runs(), (18 * 5 + 3 * 2) * 5);
        let n = |label: &str| plan.cases[labels.iter().position(|l| l == label).unwrap()].n;
        assert_eq!(n("64 KiB, c1, b256"), 2_560);
        assert_eq!(n("16 KiB, c1, b256"), 10_240);
        let families: Vec<&Case> = plan.cases.iter().filter(|c| c.partitions > 0).collect();
        assert_eq!(families.len(), 3);
        assert!(families.iter().all(|c| c.partitions == 8 && c.size == 100));
    }

    #[test]
    fn partitioned_cases_run_only_the_family_readers() {
        let knobs = Knobs {
            scale: vec![1, 4],
            partitions: 16,
            ..Knobs::quick()
        };
        let plan = knobs.plan("quick");
        let labels: Vec<String> = plan.cases.iter().map(Case::label).collect();
        assert_eq!(
            labels,
            [
                "100 B, c1, b256",
                "100 B, c4, b256",
                "100 B, c1, b256, 1 process, 16 partitions",
                "100 B, c1, b256, 4 processes",
                "100 B, c1, b256, 4 processes, 16 partitions",
            ]
        );
        let family = &plan.cases[2];
        let runs: Vec<&str> = Contestant::ALL
            .iter()
            .filter(|&&c| family.runs(c))
            .map(|c| c.label())
            .collect();
        assert_eq!(runs, ["S", "S0"]);
        assert!(Contestant::ALL.iter().all(|&c| plan.cases[3].runs(c)));
        assert_ne!(family.slug(), plan.cases[0].slug());
    }

    #[test]
    fn zero_partitions_scale_one_stream_only() {
        let knobs = Knobs {
            scale: vec![0, 2],
            partitions: 0,
            ..Knobs::quick()
        };
        let plan = knobs.plan("quick");
        assert_eq!(plan.cases.len(), 3);
        assert_eq!(plan.cases[2].label(), "100 B, c1, b256, 2 processes");
    }

    #[test]
    fn quick_preset_covers_the_headline_cases() {
        let plan = Knobs::quick().plan("quick");
        let labels: Vec<String> = plan.cases.iter().map(Case::label).collect();
        assert_eq!(labels, ["100 B, c1, b256", "100 B, c4, b256"]);
        assert!(plan.latency.is_some() && plan.idle_pipelines == Some(10));
    }
}
