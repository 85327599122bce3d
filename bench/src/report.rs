//! The results of one invocation, as markdown (stdout and BENCHMARKS.md)
//! and SVG plots (bench/plots/).

use crate::idle::Idle;
use crate::latency::Latency;
use crate::machine::Machine;
use crate::plan::{Case, Contestant, LatencyPlan, Plan, size_label};
use crate::stats::median;
use crate::svg::{self, Series};
use crate::throughput::Throughput;
use anyhow::{Context as _, Result};
use std::fmt::Write as _;
use std::path::Path;

/// Per contestant, its rounds of one case in order (`None`: that round failed).
pub type ByContestant = Vec<(Contestant, Vec<Option<Throughput>>)>;

/// Every measurement of one invocation.
pub struct Results {
    /// The machine.
    pub machine: Machine,
    /// What was asked.
    pub plan: Plan,
    /// The command line, to reproduce the run.
    pub command: String,
    /// Per case, per contestant: the rounds.
    pub throughput: Vec<(Case, ByContestant)>,
    /// Per latency point (offered rate), per contestant, its successful rounds.
    pub latency: Vec<(LatencyPlan, LatencyRounds)>,
    /// Per contestant and pipeline count.
    pub idle: Vec<(Contestant, u32, Idle)>,
    /// Failures and anything suspicious, for the reader to weigh.
    pub notes: Vec<String>,
}

/// Per contestant, its successful latency rounds at one offered rate.
pub type LatencyRounds = Vec<(Contestant, Vec<Latency>)>;

/// The median of one contestant's rounds in one case.
struct Summary {
    rate: f64,
    low: f64,
    high: f64,
    consumer_cpu: f64,
    redis_cpu: f64,
    peak_kib: u64,
    rounds: usize,
}

fn summarise(rounds: &[Option<Throughput>]) -> Option<Summary> {
    let runs: Vec<&Throughput> = rounds.iter().flatten().collect();
    if runs.is_empty() {
        return None;
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    Some(Summary {
        rate: median(&rates),
        low: rates.iter().copied().fold(f64::INFINITY, f64::min),
        high: rates.iter().copied().fold(0.0, f64::max),
        consumer_cpu: median(&runs.iter().map(|r| r.consumer_cpu).collect::<Vec<_>>()),
        redis_cpu: median(&runs.iter().map(|r| r.redis_cpu).collect::<Vec<_>>()),
        peak_kib: runs.iter().map(|r| r.peak_kib).max().unwrap_or(0),
        rounds: runs.len(),
    })
}

impl Results {
    /// No measurements yet.
    pub fn new(machine: Machine, plan: Plan, command: String) -> Self {
        Results {
            machine,
            plan,
            command,
            throughput: Vec::new(),
            latency: Vec::new(),
            idle: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records `problems` of the measurement named `context`.
    pub fn note(&mut self, context: &str, problems: Vec<String>) {
        self.notes
            .extend(problems.into_iter().map(|p| format!("{context}: {p}")));
    }

    fn rounds(&self, case: &Case, who: Contestant) -> Option<&[Option<Throughput>]> {
        self.throughput
            .iter()
            .find(|(c, _)| c == case)
            .and_then(|(_, by)| by.iter().find(|(w, _)| *w == who))
            .map(|(_, rounds)| rounds.as_slice())
    }

    /// `who`'s median throughput on `case`, if it ran.
    pub fn median_rate(&self, case: &Case, who: Contestant) -> Option<f64> {
        self.summary(case, who).map(|s| s.rate)
    }

    fn summary(&self, case: &Case, who: Contestant) -> Option<Summary> {
        self.rounds(case, who).and_then(summarise)
    }

    /// `who`'s throughput over the limit's, as the median of the per-round
    /// ratios: a round's runs are adjacent in time, so pairing them cancels
    /// most of the drift in machine load that a ratio of medians would keep.
    /// A round's limit is the better of L and L+ in that round.
    fn ratio_to_limit(&self, case: &Case, who: Contestant) -> Option<f64> {
        let runs = self.rounds(case, who)?;
        let ratios: Vec<f64> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some(r.as_ref()?.rate / self.limit_rate(case, i)?))
            .collect();
        (!ratios.is_empty()).then(|| median(&ratios))
    }

    /// The better of L's and L+'s throughput in round `round`.
    fn limit_rate(&self, case: &Case, round: usize) -> Option<f64> {
        LIMITS
            .iter()
            .filter_map(|&l| self.rounds(case, l)?.get(round)?.as_ref().map(|t| t.rate))
            .reduce(f64::max)
    }

    /// The limit contestant of `case`: of L and L+, the one with the higher
    /// median throughput.
    fn limit(&self, case: &Case) -> Option<(Contestant, Summary)> {
        LIMITS
            .iter()
            .filter_map(|&l| Some((l, self.summary(case, l)?)))
            .max_by(|a, b| a.1.rate.total_cmp(&b.1.rate))
    }

    /// Writes the plots into `plots_dir` and returns the markdown, with
    /// plot links relative to `link_base`.
    pub fn render(&self, plots_dir: &Path, link_base: &str) -> Result<String> {
        let mut md = String::new();
        self.header(&mut md);
        self.ratios(&mut md);
        self.throughput_table(&mut md);
        self.scale_table(&mut md);
        self.latency_table(&mut md);
        self.idle_table(&mut md);
        let plots = self.plots(plots_dir)?;
        if !plots.is_empty() {
            md.push_str("\n## Plots\n\n");
            for (title, file) in plots {
                let _ = writeln!(md, "![{title}]({link_base}/{file})\n");
            }
        }
        md.push_str("\n## Notes\n\n");
        if self.notes.is_empty() {
            md.push_str(
                "- nothing suspicious: every run finished, exited cleanly and logged no warnings\n",
            );
        }
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        Ok(md)
    }

    fn header(&self, md: &mut String) {
        let p = &self.plan;
        let _ = write!(
            md,
            "# Sluice benchmarks\n\n\
             Generated by `{}` (preset `{}`). See bench/README.md for what is measured and how to read it.\n\n\
             ## Machine\n\n{}\n\
             ## Method\n\n\
             - Contestants:\n",
            self.command,
            p.preset,
            self.machine.markdown()
        );
        for c in &p.contestants {
            let _ = writeln!(md, "  - **{}**: {}", c.label(), c.describe());
        }
        let _ = write!(
            md,
            "- Workload: a preloaded stream of N messages with one field `payload` (random lowercase ASCII); \
             read with XREADGROUP, `payload` uppercased, XADD to an output stream, XACK. \
             A fresh redis-server (`--save \"\" --appendonly no`), emptied and preloaded before every run.\n\
             - Timing rule, the same for every contestant: the clock starts when the first output entry appears \
             (process start-up, plugin compilation and imports excluded) and stops when all N outputs exist \
             and nothing is pending; messages already out at the start are not counted. \
             CPU (utime+stime from /proc) is sampled at the same two instants.\n\
             - {} rounds per case; contestants alternate within each round; figures are medians over rounds, \
             ratios to the limit (the better of L and L+ each round) medians of per-round ratios. \
             XREADGROUP BLOCK {} ms for everyone.\n\
             - Peak RSS is VmHWM of the largest contestant process (start-up included).\n",
            p.rounds, p.block_ms
        );
    }

    fn ratios(&self, md: &mut String) {
        md.push_str(
            "\n## Throughput relative to the limit\n\n\
             The limit is the better of L and L+ in each round.\n\n\
             | case | N | limit msg/s |",
        );
        let others = &self.plan.contestants;
        for c in others {
            let _ = write!(md, " {}/limit |", c.label());
        }
        md.push_str("\n|---|---:|---:|");
        md.push_str(&"---:|".repeat(others.len()));
        md.push('\n');
        for (case, _) in &self.throughput {
            let limit = self.limit(case);
            let _ = write!(
                md,
                "| {} | {} | {} |",
                case.label(),
                thousands(case.n as f64),
                limit.as_ref().map_or("-".into(), |(who, l)| format!(
                    "{} ({})",
                    thousands(l.rate),
                    who.label()
                ))
            );
            for &c in others {
                let ratio = self
                    .ratio_to_limit(case, c)
                    .map_or("-".into(), |r| format!("{r:.2}"));
                let _ = write!(md, " {ratio} |");
            }
            md.push('\n');
        }
    }

    fn throughput_table(&self, md: &mut String) {
        md.push_str(
            "\n## Throughput, CPU and memory\n\n\
             `vs limit` is the median of per-round throughput ratios to the better of L and L+; \
             `CPU vs limit` compares consumer CPU per message with the limit contestant's (the one of L and L+ \
             with the higher median throughput).\n\n\
             | case | who | msg/s (median) | min-max | vs limit | CPU s/M msgs (consumer) | CPU vs limit | CPU s/M msgs (redis) | peak RSS MiB | rounds |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for (case, by) in &self.throughput {
            let limit = self.limit(case).map(|(_, s)| s);
            for (who, _) in by {
                let Some(s) = self.summary(case, *who) else {
                    let _ = writeln!(
                        md,
                        "| {} | {} | failed | | | | | | | 0 |",
                        case.label(),
                        who.label()
                    );
                    continue;
                };
                let vs = self
                    .ratio_to_limit(case, *who)
                    .map_or("-".into(), |r| format!("{r:.2}"));
                // A limit under one CPU tick measures 0 s: no ratio, not NaN.
                let cpu_vs = limit
                    .as_ref()
                    .filter(|l| l.consumer_cpu > 0.0)
                    .map_or("-".into(), |l| {
                        format!("{:.2}", s.consumer_cpu / l.consumer_cpu)
                    });
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {}-{} | {vs} | {:.2} | {cpu_vs} | {:.2} | {:.1} | {} |",
                    case.label(),
                    who.label(),
                    thousands(s.rate),
                    thousands(s.low),
                    thousands(s.high),
                    s.consumer_cpu,
                    s.redis_cpu,
                    s.peak_kib as f64 / 1024.0,
                    s.rounds
                );
            }
        }
    }

    fn latency_table(&self, md: &mut String) {
        for (plan, by) in &self.latency {
            self.latency_point(md, plan, by);
        }
    }

    fn latency_point(&self, md: &mut String, plan: &LatencyPlan, by: &LatencyRounds) {
        let _ = write!(
            md,
            "\n## End-to-end latency at {} msg/s ({}{})\n\n\
             A paced producer XADDs with a µs wall-clock stamp; a reader XREADs the output and records now - stamp. \
             {:.0} s measured after a 0.5 s warm-up, per round; contestants alternate round by round. \
             Percentiles are medians over the rounds (tails on a shared machine are noisy); max is the worst message of all rounds.\n\n\
             | who | p50 ms | p90 ms | p99 ms | max ms | received/sent | rounds |\n|---|---:|---:|---:|---:|---:|---:|\n",
            thousands(f64::from(plan.rate)),
            plan.case.label(),
            plan.origin,
            plan.secs
        );
        for (who, rounds) in by {
            if rounds.is_empty() {
                let _ = writeln!(md, "| {} | failed | | | | |", who.label());
                continue;
            }
            // Median of the rounds' percentiles; the worst single message.
            let ms = |pick: fn(&Latency) -> u64| {
                let v: Vec<f64> = rounds.iter().map(|l| pick(l) as f64).collect();
                format!("{:.2}", median(&v) / 1000.0)
            };
            let worst = rounds.iter().map(|l| l.max).max().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {}/{} | {} |",
                who.label(),
                ms(|l| l.p50),
                ms(|l| l.p90),
                ms(|l| l.p99),
                worst as f64 / 1000.0,
                rounds.iter().map(|l| l.received).sum::<u64>(),
                rounds.iter().map(|l| l.sent).sum::<u64>(),
                rounds.len()
            );
        }
    }

    fn idle_table(&self, md: &mut String) {
        if self.idle.is_empty() {
            return;
        }
        md.push_str(
            "\n## One idle process\n\n\
             Pipelines with 1 consumer each that have passed one message and wait on empty streams \
             (XREADGROUP BLOCK as above). Idle CPU: milliseconds of CPU per second over 3 s, from per-thread schedstat.\n\n\
             | who | pipelines | RSS MiB | peak RSS MiB | idle CPU ms/s |\n|---|---:|---:|---:|---:|\n",
        );
        for (who, pipelines, idle) in &self.idle {
            let _ = writeln!(
                md,
                "| {} | {pipelines} | {:.1} | {:.1} | {:.2} |",
                who.label(),
                idle.memory.rss_kib as f64 / 1024.0,
                idle.memory.peak_kib as f64 / 1024.0,
                idle.cpu_ms_per_s
            );
        }
    }

    /// The reference shape on one pipeline at every process count and
    /// layout that ran, ordered one stream first, then by partitions and
    /// processes. Empty when nothing was scaled (only the reference ran).
    fn scale_cases(&self) -> Vec<&Case> {
        let r = &self.plan.reference;
        let mut cases: Vec<&Case> = self
            .throughput
            .iter()
            .map(|(c, _)| c)
            .filter(|c| {
                (c.size, c.consumers, c.batch, c.pipelines) == (r.size, r.consumers, r.batch, 1)
            })
            .collect();
        cases.sort_by_key(|c| (c.partitions, c.processes));
        if cases.iter().all(|c| c.processes == 1 && c.partitions == 0) {
            return Vec::new();
        }
        cases
    }

    fn scale_table(&self, md: &mut String) {
        let cases = self.scale_cases();
        if cases.is_empty() {
            return;
        }
        let _ = write!(
            md,
            "\n## Scale-out: processes on one group\n\n\
             The reference case ({}) run by 1 or more processes joining the same consumer group, on one stream \
             and on a family of partitioned streams (`stream` + `partitions`, each partition read by its own \
             consumers in every process). L, L+ and P do not read families, so partitioned rows have S and S0 only. \
             `vs 1 process` is the contestant's median over its own median with 1 process in the same layout. \
             CPU is consumer CPU s per M messages, all processes together. All processes share the machine's cores \
             with redis-server: more processes cannot add CPU, only overlap more round trips to Redis.\n\n\
             | layout | processes | L+ msg/s | S msg/s | S0 msg/s | S vs 1 process | S0 vs 1 process | CPU L+ | CPU S | CPU S0 |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.plan.reference.label()
        );
        for case in &cases {
            let one = cases
                .iter()
                .find(|c| c.partitions == case.partitions && c.processes == 1);
            let rate = |who| self.summary(case, who).map(|s| s.rate);
            let rate_cell = |who| rate(who).map_or("-".into(), thousands);
            let relative = |who| {
                let base = self.summary(one?, who)?.rate;
                let this = rate(who)?;
                (base > 0.0).then_some(this / base)
            };
            let relative_cell = |who| relative(who).map_or("-".into(), |r| format!("{r:.2}"));
            let cpu_cell = |who| {
                self.summary(case, who)
                    .map_or("-".into(), |s| format!("{:.2}", s.consumer_cpu))
            };
            let layout = match case.partitions {
                0 => "one stream".to_string(),
                n => format!("{n} partitions"),
            };
            let (lp, s, s0) = (Contestant::LPlus, Contestant::S, Contestant::S0);
            let _ = writeln!(
                md,
                "| {layout} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                case.processes,
                rate_cell(lp),
                rate_cell(s),
                rate_cell(s0),
                relative_cell(s),
                relative_cell(s0),
                cpu_cell(lp),
                cpu_cell(s),
                cpu_cell(s0),
            );
        }
    }

    /// The curves to plot: per payload size, against batch and against
    /// consumers with the other knob at the reference; and against payload
    /// size at the reference consumers and batch. Only one-process,
    /// one-pipeline, one-stream cases, so a curve moves one knob. A curve
    /// needs two points.
    fn curves(&self) -> Vec<Curve<'_>> {
        let reference = &self.plan.reference;
        let plain = || {
            self.throughput
                .iter()
                .map(|(c, _)| c)
                .filter(|c| c.pipelines == 1 && c.processes == 1 && c.partitions == 0)
        };
        let mut sizes: Vec<usize> = plain().map(|c| c.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut curves = Vec::new();
        for &size in &sizes {
            for axis in &AXES {
                let mut cases: Vec<&Case> = plain()
                    .filter(|c| c.size == size && (axis.held)(c) == (axis.held)(reference))
                    .collect();
                cases.sort_by_key(|c| (axis.x)(c));
                curves.push(Curve {
                    name: axis.name,
                    file: format!("{}-{}", axis.name, size_label(size).replace(' ', "")),
                    held: format!(
                        "{}, {} {}",
                        size_label(size),
                        axis.held_name,
                        (axis.held)(reference)
                    ),
                    x_label: axis.label,
                    xs: cases.iter().map(|c| (axis.x)(c).to_string()).collect(),
                    cases,
                });
            }
        }
        let mut cases: Vec<&Case> = plain()
            .filter(|c| (c.consumers, c.batch) == (reference.consumers, reference.batch))
            .collect();
        cases.sort_by_key(|c| c.size);
        curves.push(Curve {
            name: "payload size",
            file: "size".into(),
            held: format!(
                "consumers {}, batch {}",
                reference.consumers, reference.batch
            ),
            // Categories, evenly spaced: the sweep's sizes grow about 4x a
            // step, so this reads as a log axis.
            x_label: "payload size (log scale)",
            xs: cases.iter().map(|c| size_label(c.size)).collect(),
            cases,
        });
        curves.retain(|c| c.cases.len() >= 2);
        curves
    }

    /// Writes, per curve, throughput and its twin, consumer CPU per
    /// message, for every contestant (a gap where one did not run).
    /// Returns (title, file).
    fn plots(&self, dir: &Path) -> Result<Vec<(String, String)>> {
        let mut written = Vec::new();
        for curve in self.curves() {
            for metric in &METRICS {
                let title = format!("{} vs {}, {}", metric.title, curve.name, curve.held);
                let series: Vec<Series> = self
                    .plan
                    .contestants
                    .iter()
                    .map(|&who| Series {
                        name: who.label(),
                        colour: who.colour(),
                        values: curve
                            .cases
                            .iter()
                            .map(|c| self.summary(c, who).map(|s| (metric.value)(&s)))
                            .collect(),
                    })
                    .collect();
                let file = format!("{}-vs-{}.svg", metric.file, curve.file);
                std::fs::create_dir_all(dir)?;
                let path = dir.join(&file);
                std::fs::write(
                    &path,
                    svg::line_chart(&title, curve.x_label, &curve.xs, metric.y_label, &series),
                )
                .with_context(|| format!("writing {}", path.display()))?;
                written.push((title, file));
            }
        }
        Ok(written)
    }
}

/// A set of cases that differ in one knob, for a plot.
struct Curve<'a> {
    /// The knob on x, for the title.
    name: &'static str,
    /// The file name's part after `<metric>-vs-`.
    file: String,
    /// What is held fixed, for the title.
    held: String,
    /// The x axis label.
    x_label: &'static str,
    /// The cases in x order.
    cases: Vec<&'a Case>,
    /// Their x categories.
    xs: Vec<String>,
}

/// What a plot shows on y.
struct Metric {
    title: &'static str,
    file: &'static str,
    y_label: &'static str,
    value: fn(&Summary) -> f64,
}

/// Throughput, and what each message costs the consumer in CPU (CPU s per
/// M messages is µs per message).
const METRICS: [Metric; 2] = [
    Metric {
        title: "Throughput",
        file: "throughput",
        y_label: "messages / s",
        value: |s| s.rate,
    },
    Metric {
        title: "Consumer CPU per message",
        file: "cpu",
        y_label: "consumer CPU µs / message",
        value: |s| s.consumer_cpu,
    },
];

/// One plot axis: the knob on x, and the knob held at the reference.
struct Axis {
    name: &'static str,
    label: &'static str,
    x: fn(&Case) -> u32,
    held_name: &'static str,
    held: fn(&Case) -> u32,
}

const AXES: [Axis; 2] = [
    Axis {
        name: "batch",
        label: "batch size (XREADGROUP COUNT)",
        x: |c| c.batch,
        held_name: "consumers",
        held: |c| c.consumers,
    },
    Axis {
        name: "consumers",
        label: "consumers per pipeline",
        x: |c| c.consumers,
        held_name: "batch",
        held: |c| c.batch,
    },
];

/// The contestants the others are measured against.
const LIMITS: [Contestant; 2] = [Contestant::L, Contestant::LPlus];

/// `165432.1` -> `165,432`.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Knobs;

    fn run(rate: f64) -> Option<Throughput> {
        Some(Throughput {
            rate,
            consumer_cpu: 1.0,
            redis_cpu: 1.0,
            peak_kib: 1024,
        })
    }

    fn results() -> Results {
        let machine = Machine {
            nproc: 2,
            cpu: "cpu".into(),
            memory_gib: 1.0,
            redis: "7".into(),
            rustc: "rustc".into(),
            python: "py".into(),
            kernel: "k".into(),
            date: "d".into(),
            sluice_built: "b".into(),
        };
        let mut plan = crate::plan::Knobs::quick().plan("quick");
        plan.contestants = vec![Contestant::L, Contestant::S];
        let mut results = Results::new(machine, plan.clone(), "cmd".into());
        for case in &plan.cases {
            // The machine slows down by half in round 2; S is half of L throughout.
            let l = vec![run(100.0), run(50.0), None];
            let s = vec![run(50.0), run(25.0), run(40.0)];
            results
                .throughput
                .push((case.clone(), vec![(Contestant::L, l), (Contestant::S, s)]));
        }
        results
    }

    #[test]
    fn ratios_pair_rounds() {
        let r = results();
        let case = &r.plan.cases[0];
        // Paired: 0.5 and 0.5 (round 3 has no L). A ratio of medians would say 40/75.
        assert_eq!(r.ratio_to_limit(case, Contestant::S), Some(0.5));
    }

    #[test]
    fn the_limit_is_the_better_loop_per_round() {
        let mut r = results();
        let case = r.plan.cases[0].clone();
        // Per round the limit is 200 (L+), 100 (L+), 80 (L+ alone): S's
        // ratios 0.25, 0.25, 0.5. Against L alone they were 0.5, 0.5.
        r.throughput[0]
            .1
            .push((Contestant::LPlus, vec![run(200.0), run(100.0), run(80.0)]));
        r.plan.contestants.push(Contestant::LPlus);
        assert_eq!(r.ratio_to_limit(&case, Contestant::S), Some(0.25));
        let (who, summary) = r.limit(&case).unwrap();
        assert_eq!((who, summary.rate), (Contestant::LPlus, 100.0));
    }

    #[test]
    fn renders_one_plot_per_axis_and_size() {
        let dir = std::env::temp_dir().join(format!("sluice-bench-test-{}", std::process::id()));
        let md = results().render(&dir, "plots").unwrap();
        assert_eq!(md.matches("![Throughput vs consumers, 100 B").count(), 1);
        assert_eq!(
            md.matches("![Consumer CPU per message vs consumers, 100 B")
                .count(),
            1
        );
        assert!(md.contains("| 100 B, c1, b256 | 200,000 | 75 (L) | 1.00 | 0.50 |"));
        assert!(dir.join("throughput-vs-consumers-100B.svg").is_file());
        assert!(dir.join("cpu-vs-consumers-100B.svg").is_file());
        // Nothing scaled, one size: no scale-out section, no size curve.
        assert!(!md.contains("## Scale-out"));
        assert!(!md.contains("vs payload size"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Results of `knobs` where every contestant that runs a case has the
    /// same rounds: `rate(case, who)`, CPU 2.0 s/M.
    fn filled(knobs: Knobs, rate: impl Fn(&Case, Contestant) -> f64) -> Results {
        let mut r = results();
        r.plan = knobs.plan("test");
        r.throughput.clear();
        for case in &r.plan.cases {
            let by = r
                .plan
                .contestants
                .iter()
                .filter(|&&who| case.runs(who))
                .map(|&who| {
                    let t = Throughput {
                        rate: rate(case, who),
                        consumer_cpu: 2.0,
                        redis_cpu: 1.0,
                        peak_kib: 1024,
                    };
                    (who, vec![Some(t.clone()), Some(t)])
                })
                .collect();
            r.throughput.push((case.clone(), by));
        }
        r
    }

    #[test]
    fn scale_out_rows_compare_each_layout_with_its_own_one_process() {
        let knobs = Knobs {
            scale: vec![1, 2],
            partitions: 4,
            contestants: Contestant::ALL.to_vec(),
            latency_rate: 0,
            idle_pipelines: 0,
            ..Knobs::quick()
        };
        // One stream: 100 per process; a family: 150 per process.
        let r = filled(knobs, |c, _| {
            let per = if c.partitions > 0 { 150.0 } else { 100.0 };
            per * f64::from(c.processes)
        });
        let dir = std::env::temp_dir().join(format!("sluice-bench-scale-{}", std::process::id()));
        let md = r.render(&dir, "plots").unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let section = &md[md.find("## Scale-out: processes on one group").unwrap()..];
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| one stream") || l.starts_with("| 4 partitions"))
            .collect();
        assert_eq!(
            rows,
            [
                "| one stream | 1 | 100 | 100 | 100 | 1.00 | 1.00 | 2.00 | 2.00 | 2.00 |",
                "| one stream | 2 | 200 | 200 | 200 | 2.00 | 2.00 | 2.00 | 2.00 | 2.00 |",
                "| 4 partitions | 1 | - | 150 | 150 | 1.00 | 1.00 | - | 2.00 | 2.00 |",
                "| 4 partitions | 2 | - | 300 | 300 | 2.00 | 2.00 | - | 2.00 | 2.00 |",
            ]
        );
        // A family case has no limit: every ratio is "-", not a crash.
        assert!(!md.contains("NaN") && !md.contains("inf"));
        assert!(md.contains(
            "| 100 B, c1, b256, 1 process, 4 partitions | 200,000 | - | - | - | - | - | - |"
        ));
    }

    #[test]
    fn curves_against_consumers_and_size_leave_scaled_cases_out() {
        let knobs = Knobs {
            consumers: vec![1, 2, 4, 8],
            size_sweep: vec![100, 1024, 4096, 16384, 65536],
            scale: vec![1, 2],
            ..Knobs::full()
        };
        let r = filled(knobs, |c, _| 1e6 / c.size as f64);
        let curves = r.curves();
        let names: Vec<String> = curves
            .iter()
            .map(|c| format!("{} {}: {}", c.name, c.held, c.xs.join(",")))
            .collect();
        assert_eq!(
            names,
            [
                "batch 100 B, consumers 1: 16,256,1024",
                "consumers 100 B, batch 256: 1,2,4,8",
                "batch 4 KiB, consumers 1: 16,256,1024",
                "consumers 4 KiB, batch 256: 1,2,4,8",
                "payload size consumers 1, batch 256: 100 B,1 KiB,4 KiB,16 KiB,64 KiB",
            ]
        );
        let dir = std::env::temp_dir().join(format!("sluice-bench-curves-{}", std::process::id()));
        let md = r.render(&dir, "plots").unwrap();
        assert!(dir.join("throughput-vs-size.svg").is_file());
        assert!(dir.join("cpu-vs-size.svg").is_file());
        assert_eq!(md.matches("![").count(), 2 * names.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_limit_below_one_cpu_tick_gives_no_cpu_ratio() {
        let mut r = results();
        for (_, by) in &mut r.throughput {
            for t in by[0].1.iter_mut().flatten() {
                t.consumer_cpu = 0.0;
            }
        }
        let mut md = String::new();
        r.throughput_table(&mut md);
        assert!(!md.contains("NaN"));
        assert!(md.contains("| 100 B, c1, b256 | S | 40 | 25-50 | 0.50 | 1.00 | - |"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(165_432.4), "165,432");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000.0), "1,000");
    }
}
