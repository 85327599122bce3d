//! Ways to start `sluice run` beyond [`Sluice::run`]: with a compiled-plugin cache of the
//! test's own, watching files, or against a Redis given on the command line.
//!
//! The runtime caches compiled plugins on disk (`$SLUICE_CACHE_DIR`, else `~/.cache/sluice`).
//! A test that wants to be independent of every other test, and of what the developer ran
//! before, gives each process a cache folder inside its own temp dir; a test about the cache
//! shares one on purpose.

use std::ffi::OsStr;
use std::path::Path;

use super::Sluice;

impl Sluice {
    /// `sluice run PIPELINE --no-watch` with its compiled-plugin cache in `cache`.
    pub fn run_cached(pipeline: &Path, cache: &Path) -> Self {
        Self::run_with(pipeline, |command| {
            command.env("SLUICE_CACHE_DIR", cache);
        })
    }

    /// `sluice run PATHS...` *watching* them: edits to the pipeline files and their plugins
    /// apply while it runs. Compiled-plugin cache in `cache`.
    pub fn watch(paths: &[&Path], cache: &Path) -> Self {
        let args = std::iter::once(OsStr::new("run")).chain(paths.iter().map(|p| p.as_os_str()));
        Self::spawn_with(args, |command| {
            command.env("SLUICE_CACHE_DIR", cache);
        })
    }

    /// `sluice run PIPELINE --redis URL --no-watch`, as a user runs a pipeline file that names
    /// no Redis (the example files in `pipelines/`). Compiled-plugin cache in `cache`.
    pub fn run_on(pipeline: &Path, redis_url: &str, cache: &Path) -> Self {
        let args = [
            OsStr::new("run"),
            pipeline.as_os_str(),
            OsStr::new("--redis"),
            OsStr::new(redis_url),
            OsStr::new("--no-watch"),
        ];
        Self::spawn_with(args, |command| {
            command.env("SLUICE_CACHE_DIR", cache);
        })
    }

    /// Waits (see [`Sluice::wait_for`]) until the log holds at least `count` lines that contain
    /// every one of `needles`, and returns those lines.
    pub fn wait_for_log(&mut self, needles: &[&str], count: usize) -> Vec<String> {
        let what = format!("{count} log line(s) containing {needles:?}");
        self.wait_for(
            &what,
            |sluice| {
                super::logs::lines_with_all(&sluice.log(), needles)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            },
            |lines| lines.len() >= count,
        )
    }
}
