//! The harness: real processes, no mocks.
//!
//! Every test starts its own `redis-server` on a free port ([`RedisServer`]) and the real
//! `sluice` binary that cargo built for this test target ([`Sluice`]), then asserts on what
//! landed in Redis ([`streams`]). Waiting is always a poll against a deadline ([`wait_until`],
//! [`wait_for`]), never a sleep-and-hope, so a slow debug build on a small machine only makes
//! tests slower, not flaky. While a runtime is up, wait through [`Sluice::wait_for`]: it also
//! fails the moment the process exits, instead of waiting out the deadline for a dead process.
//!
//! Map:
//! - [`redis_server`]: spawn, stop and restart `redis-server`, killed on drop.
//! - [`cluster`]: a six-node Redis Cluster (three masters, three replicas), killed on drop;
//!   failover of one master.
//! - [`sluice`]: spawn the binary with its stderr captured to a file; signals; drop kills it
//!   and, when the test is failing, prints the captured log.
//! - [`pipeline`]: pipeline files in a temp dir, and the stream → plugin → stream shape most
//!   tests share.
//! - [`streams`]: the Redis reads and writes tests assert on (XADD in bulk, XRANGE, XPENDING).
//! - [`keys`]: the same for lists, key scans and pub/sub subscriber counts.
//! - [`flow`]: a background [`flow::Producer`] that keeps a stream busy, and the timing of
//!   output (entry ids are Redis timestamps): the longest pause in a sink stream.
//! - [`launch`]: `sluice run` with a compiled-plugin cache of the test's own, watching files,
//!   or with `--redis`; waiting for log lines.
//! - [`proxy`]: a TCP proxy that can turn the connections through it half-open.
//! - [`logs`]: log lines, their `key=value` fields and timestamps.

pub mod browser;
pub mod cluster;
pub mod flow;
pub mod http;
pub mod keys;
pub mod launch;
pub mod logs;
pub mod pipeline;
pub mod proxy;
pub mod redis_server;
pub mod sluice;
pub mod streams;

use std::fmt::{Debug, Display};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use pipeline::Pipeline;
pub use redis_server::RedisServer;
pub use sluice::Sluice;

/// How long a test waits for the runtime to get through its work.
///
/// Generous on purpose: CI runs a debug build on two cores while other tests run in parallel,
/// and the first batch also pays for compiling the plugin.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// How often [`wait_for`] looks again. Short enough that tests are not slowed down by the
/// polling, long enough that polling Redis does not compete with the runtime for the CPU.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// The repository root: the runtime package's manifest lives one level below it.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .join("..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The absolute path of a built example plugin, `plugins/<name>/<name>.wasm`.
///
/// Plugins are built by a separate script (they need the wasm32-wasip2 target), so a missing
/// file is a setup problem: the panic says how to fix it instead of letting the runtime fail
/// later with a less obvious error.
pub fn plugin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("plugins")
        .join(name)
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "plugin {} is not built: run scripts/build-plugins first",
        path.display()
    );
    path
}

/// Polls `condition` until it holds, panicking with `what` once `timeout` has passed.
pub fn wait_until(timeout: Duration, what: impl Display, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, &mut condition, |done| *done);
}

/// Polls `probe` until `done` accepts its value and returns that value; past `timeout` it
/// panics with `what` and the last value seen, which usually tells how far the runtime got.
pub fn wait_for<T: Debug>(
    timeout: Duration,
    what: impl Display,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe();
        if done(&value) {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {value:?}");
        }
        std::thread::sleep(POLL_EVERY);
    }
}
