//! Runs a plan on one Redis: every throughput case, then latency (both in
//! rounds alternating through the contestants, so slow drifts in machine
//! load hit everyone alike), then the idle footprint.

use crate::contestant::Tools;
use crate::plan::{Contestant, LatencyPlan, Plan};
use crate::redis_server::RedisServer;
use crate::report::{ByContestant, LatencyRounds, Results};
use crate::{idle, latency, throughput};
use anyhow::Result;

/// One invocation's measurements in progress.
pub struct Session {
    plan: Plan,
    tools: Tools,
    redis: RedisServer,
    log: Log,
}

/// What has been measured so far, and how many measurements failed.
struct Log {
    results: Results,
    failed: usize,
}

impl Session {
    /// A session that will record into `results`.
    pub fn new(plan: Plan, tools: Tools, redis: RedisServer, results: Results) -> Self {
        Session {
            plan,
            tools,
            redis,
            log: Log { results, failed: 0 },
        }
    }

    /// Runs everything the plan asks; returns the results and the number of
    /// failed measurements. Stops Redis at the end.
    pub fn run(mut self) -> (Results, usize) {
        self.throughput();
        self.latency();
        self.idle();
        (self.log.results, self.log.failed)
    }

    /// Every case, round by round. A contestant that cannot run a case (L,
    /// L+ and P on a partitioned family) is left out of its results, not
    /// failed: the report shows "-" there.
    fn throughput(&mut self) {
        let plan = &self.plan;
        let total = plan.runs();
        let mut done = 0;
        for case in &plan.cases {
            let (runs, skipped): (Vec<Contestant>, Vec<Contestant>) =
                plan.contestants.iter().partition(|&&c| case.runs(c));
            if !skipped.is_empty() {
                let names: Vec<&str> = skipped.iter().map(|c| c.label()).collect();
                eprintln!(
                    "{}: skipping {} (they do not read stream families)",
                    case.label(),
                    names.join(", ")
                );
            }
            let mut by: ByContestant = runs.into_iter().map(|c| (c, Vec::new())).collect();
            for round in 1..=plan.rounds {
                for (who, runs) in &mut by {
                    done += 1;
                    eprint!("[{done}/{total}] ");
                    let context = format!("{} round {round} {}", case.label(), who.label());
                    let run =
                        || throughput::run(&self.redis, *who, case, &self.tools, plan.block_ms);
                    runs.push(self.log.attempt(&context, run));
                }
            }
            self.log.results.throughput.push((case.clone(), by));
        }
    }

    /// Latency at the fixed rate, then at half of L+'s saturation
    /// throughput on the reference case (when it ran): the fixed rate says
    /// what a light load costs, the second what a busy but unsaturated one does.
    fn latency(&mut self) {
        let Some(fixed) = self.plan.latency.clone() else {
            return;
        };
        let mut points = vec![fixed.clone()];
        let saturation = self
            .log
            .results
            .median_rate(&self.plan.reference, Contestant::LPlus);
        match saturation {
            Some(rate) if self.plan.latency_half => points.push(LatencyPlan {
                rate: (rate / 2.0) as u32,
                origin: format!(", half of L+'s {:.0} msg/s", rate),
                ..fixed
            }),
            None if self.plan.latency_half => eprintln!(
                "latency: no L+ figure on {}: no point at half its saturation",
                self.plan.reference.label()
            ),
            _ => {}
        }
        for lp in points {
            let mut by: LatencyRounds = self
                .plan
                .contestants
                .iter()
                .map(|&c| (c, Vec::new()))
                .collect();
            for round in 1..=self.plan.rounds {
                for (who, rounds) in &mut by {
                    let context =
                        format!("latency at {} msg/s round {round} {}", lp.rate, who.label());
                    let run =
                        || latency::run(&self.redis, *who, &lp, &self.tools, self.plan.block_ms);
                    rounds.extend(self.log.attempt(&context, run));
                }
            }
            self.log.results.latency.push((lp, by));
        }
    }

    fn idle(&mut self) {
        let Some(many) = self.plan.idle_pipelines else {
            return;
        };
        let mut counts = vec![1, many];
        counts.dedup();
        for &who in &self.plan.contestants {
            for &pipelines in &counts {
                let context = format!("idle {} x{pipelines}", who.label());
                let run =
                    || idle::run(&self.redis, who, pipelines, &self.tools, self.plan.block_ms);
                if let Some(footprint) = self.log.attempt(&context, run) {
                    self.log.results.idle.push((who, pipelines, footprint));
                }
            }
        }
    }
}

impl Log {
    /// Runs one measurement: prints its outcome to stderr and keeps its
    /// problems as notes. A failure is counted and noted, not fatal, so one
    /// broken contestant does not lose the others' figures.
    fn attempt<T: std::fmt::Display>(
        &mut self,
        context: &str,
        run: impl FnOnce() -> Result<(T, Vec<String>)>,
    ) -> Option<T> {
        match run() {
            Ok((value, problems)) => {
                eprintln!("{context}: {value}");
                self.results.note(context, problems);
                Some(value)
            }
            Err(e) => {
                self.failed += 1;
                eprintln!("{context}: FAILED: {e:#}");
                self.results.note(context, vec![format!("FAILED: {e:#}")]);
                None
            }
        }
    }
}
