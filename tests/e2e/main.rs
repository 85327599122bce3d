//! End-to-end tests: the real `sluice` binary against real `redis-server` processes.
//!
//! Needs `redis-server` (7+) on PATH and the example plugins built (`scripts/build-plugins`).
//! Run with `cargo test -p sluice --test e2e`. Each test owns its Redis on a free port, so
//! tests run in parallel; `support` explains the harness.
//!
//! - `delivery`: what reaches the sink and what is acked.
//! - `shutdown`: SIGTERM drains, a restart resumes, nothing is lost or duplicated.
//! - `validate`: config errors as `.toml` → `.err` snapshots (`SLUICE_BLESS=1` rewrites them).

#[allow(
    dead_code,
    reason = "the harness also serves tests that only some issues need"
)]
mod support;

mod delivery;
mod shutdown;
mod validate;
