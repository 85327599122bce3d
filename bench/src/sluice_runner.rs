//! S and S0: pipeline files for the case, and the `sluice run` command.

use crate::plan::Case;
use crate::workload::{self, FIELD, GROUP};
use anyhow::{Context as _, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// Writes one pipeline file per pipeline of `case` into `dir`. With
/// `plugin`, each pipeline runs it on [`FIELD`]; without, it passes
/// messages through (S0).
pub fn write_pipelines(
    dir: &Path,
    case: &Case,
    plugin: Option<&Path>,
    block_ms: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..case.pipelines {
        let file = dir.join(format!("bench-{i}.toml"));
        std::fs::write(&file, pipeline_toml(i, case, plugin, block_ms))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// The pipeline file of pipeline `i`. `start = "0"` reads the preloaded
/// backlog (the group already exists; sluice finds it and starts there).
/// In a partitioned case the stream is the family's name and `partitions`
/// makes sluice read every `bench:in:<i>:{k}`, each with `consumers`
/// consumers of its own.
fn pipeline_toml(i: u32, case: &Case, plugin: Option<&Path>, block_ms: u64) -> String {
    let partitions = if case.partitions > 0 {
        format!("partitions = {}\n", case.partitions)
    } else {
        String::new()
    };
    let mut toml = format!(
        "name = \"bench-{i}\"\n\n\
         [source]\n\
         type = \"stream\"\n\
         stream = \"{source}\"\n\
         {partitions}\
         group = \"{GROUP}\"\n\
         consumers = {consumers}\n\
         batch = {batch}\n\
         block_ms = {block_ms}\n\
         start = \"0\"\n",
        source = workload::source_key(i),
        consumers = case.consumers,
        batch = case.batch,
    );
    if let Some(plugin) = plugin {
        // Debug-quoting escapes the path as a TOML basic string would.
        let _ = write!(
            toml,
            "\n[[processor]]\nplugin = {:?}\n[processor.config]\nfield = \"{FIELD}\"\n",
            plugin.display().to_string()
        );
    }
    let _ = write!(
        toml,
        "\n[[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{}\"\n",
        workload::sink_key(i)
    );
    toml
}

/// `sluice run DIR --redis URL`: runs every pipeline file in `dir`.
pub fn command(sluice: &Path, dir: &Path, redis_url: &str) -> Command {
    let mut cmd = Command::new(sluice);
    cmd.arg("run").arg(dir).args(["--redis", redis_url]);
    // Lifecycle at info, nothing per message: logging costs nothing measurable.
    cmd.env_remove("RUST_LOG").env_remove("SLUICE_LOG");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_file_names_the_keys() {
        let case = Case {
            size: 100,
            consumers: 4,
            batch: 16,
            pipelines: 10,
            processes: 1,
            partitions: 0,
            n: 1,
        };
        let with = pipeline_toml(3, &case, Some(Path::new("/p/up.wasm")), 100);
        assert!(with.contains("stream = \"bench:in:3\""));
        assert!(with.contains("consumers = 4\nbatch = 16\n"));
        assert!(with.contains("plugin = \"/p/up.wasm\""));
        assert!(with.contains("stream = \"bench:out:3\""));
        let without = pipeline_toml(0, &case, None, 100);
        assert!(!without.contains("[[processor]]"));
        assert!(!without.contains("partitions"));
    }

    #[test]
    fn a_family_case_reads_the_partitions() {
        let case = Case {
            size: 100,
            consumers: 1,
            batch: 256,
            pipelines: 1,
            processes: 2,
            partitions: 8,
            n: 1,
        };
        let toml = pipeline_toml(0, &case, None, 100);
        assert!(toml.contains("stream = \"bench:in:0\"\npartitions = 8\ngroup = \"bench\"\n"));
        assert!(toml.contains("stream = \"bench:out:0\""));
    }
}
