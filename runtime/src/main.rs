//! The `sluice` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice::config::DEFAULT_REDIS_URL;
use sluice::embedded::EmbeddedRedis;
use sluice::pipeline::Context;
use sluice::plugin::Engine;
use sluice::supervisor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

// The hot path allocates per message and per field (Redis replies, guest
// records); mimalloc's thread-local free lists make that cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Stream processing on Redis with WebAssembly processors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the log (on stderr) is written: `text` for people, `json` (one
    /// object per line) for log shippers. RUST_LOG / SLUICE_LOG filter it.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: sluice::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipelines in the given files and folders until SIGINT/SIGTERM.
    Run {
        /// Pipeline files, or folders of them (*.toml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Redis for pipelines that name none: a URL, or `embedded` to start
        /// a private redis-server (from PATH) for the life of this process.
        /// Default: $SLUICE_REDIS_URL, then redis://127.0.0.1:6379.
        #[arg(long, value_name = "URL|embedded")]
        redis: Option<String>,
        /// Do not watch the files: edits to pipelines and plugins take
        /// effect only on restart.
        #[arg(long)]
        no_watch: bool,
        /// Serve /metrics (Prometheus), /health, /ready and a dashboard on this address.
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
    },
    /// Check pipeline files (and compile their plugins) without running
    /// them, and show which Redis each pipeline would use.
    Validate {
        /// Pipeline files, or folders of them (*.toml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The Redis `run --redis` would be given: pipelines that name none use it.
        /// Default: $SLUICE_REDIS_URL, then redis://127.0.0.1:6379. When given,
        /// stream pipelines are also checked against Redis: a warning when a
        /// group does not exist yet and its start would skip entries, or other
        /// groups hold a backlog.
        #[arg(long, value_name = "URL|embedded")]
        redis: Option<String>,
    },
    /// Show what is waiting and in flight: every consumer group on a Redis
    /// (lag, pending, oldest pending entry, consumers and their idle time,
    /// dead letters) and the list queues sluice consumes. Given pipeline
    /// files, show exactly their pipelines, pub/sub ones included.
    Status {
        /// Pipeline files, or folders of them (*.toml): report these pipelines,
        /// each on its own Redis.
        paths: Vec<PathBuf>,
        /// Redis URL. Default: $SLUICE_REDIS_URL, then redis://127.0.0.1:6379.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Print JSON (an array of sources: kind, source, group, lag, pending, ...)
        /// for scripts instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh every 2 s until Ctrl-C: the table redrawn in place, or
        /// with --json one array per line.
        #[arg(long)]
        watch: bool,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// List a group's pending entries; ack or claim them by hand.
    Pending {
        /// The stream.
        stream: String,
        /// The consumer group (a pipeline's `group`, default: its name).
        group: String,
        /// Only entries idle at least this long.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        older_than: u64,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Ack the listed entries: they will not be delivered again.
        #[arg(long, conflicts_with = "claim")]
        ack: bool,
        /// Give the listed entries to this consumer.
        #[arg(long, value_name = "CONSUMER")]
        claim: Option<String>,
        /// Redis URL. Default: $SLUICE_REDIS_URL, then redis://127.0.0.1:6379.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
    },
    /// Inspect, replay or purge a dead-letter stream.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        /// Redis URL. Default: $SLUICE_REDIS_URL, then redis://127.0.0.1:6379.
        #[arg(long, global = true, value_name = "URL")]
        redis: Option<String>,
    },
}

#[derive(Subcommand)]
enum PluginAction {
    /// Run a plugin on sample messages, without Redis, and print what it
    /// returns: its records (and their sink) or its failure.
    Test {
        /// The plugin's .wasm file.
        plugin: PathBuf,
        /// A `[processor.config]` entry for init (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// Messages from a JSON-lines file, one object of fields per line.
        #[arg(long, value_name = "FILE.jsonl", conflicts_with = "field")]
        input: Option<PathBuf>,
        /// One message with this field (repeatable).
        #[arg(long = "field", value_name = "NAME=VALUE", value_parser = key_value)]
        field: Vec<(String, String)>,
    },
    /// Measure what one message costs in a plugin, per batch size, without
    /// Redis: the whole processor step (the batch into the guest, its work,
    /// the outcomes back) on this thread's CPU clock.
    Bench {
        /// The plugin's .wasm file.
        plugin: PathBuf,
        /// A `[processor.config]` entry for init (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// Messages from a JSON-lines file, one object of fields per line
        /// (cycled to fill a batch). Default: a `payload` of --size bytes.
        #[arg(long, value_name = "FILE.jsonl")]
        input: Option<PathBuf>,
        /// Payload bytes of the default messages.
        #[arg(long, default_value_t = 100, conflicts_with = "input")]
        size: usize,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 512])]
        batch: Vec<usize>,
        /// CPU milliseconds measured per batch size.
        #[arg(long, value_name = "MS", default_value_t = 500)]
        ms: u64,
    },
    /// Write a new processor project that builds with one command and
    /// passes `plugin test` on its sample input as it is.
    New {
        /// The plugin's name: lowercase letters, digits and hyphens.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: sluice::scaffold::Lang,
        /// The folder to create (it must not exist, or be empty). Default: ./NAME.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Rust only: the `sdk` folder of a Sluice checkout. Default: the
        /// one this sluice was built from.
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
    },
    /// Run two versions of a plugin on the same messages and report, per
    /// message, same, different (field by field) or failing in one
    /// version. Exits 2 when any message differs or fails.
    Diff(sluice::plugin_diff::DiffArgs),
    /// Make the version on trial (shadow or canary) serve every message,
    /// in the running process at --http.
    Promote(sluice::plugin_diff::ControlArgs),
    /// Drop the version on trial or, without one, return to the version
    /// that served before, in the running process at --http.
    Rollback(sluice::plugin_diff::ControlArgs),
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

#[derive(Subcommand)]
enum DlqAction {
    /// Print dead letters, oldest first: what failed, why, and the original fields.
    List {
        /// The dead-letter stream (a pipeline's `dead_letter`, default `<stream>:dead`).
        stream: String,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Put dead letters back on their source for processing (a stream entry
    /// re-added, a list item pushed, a pub/sub message published); each is
    /// removed from the dead-letter stream only after that succeeded.
    Replay {
        /// The dead-letter stream.
        stream: String,
        /// Send to this key (or channel) instead of the one each entry came from.
        #[arg(long, value_name = "KEY")]
        to: Option<String>,
        /// Replay only these entries (dead-letter entry ids).
        #[arg(long, num_args = 1..)]
        ids: Vec<String>,
    },
    /// Delete every entry of the dead-letter stream. Asks first on a
    /// terminal; elsewhere needs `--yes`.
    Purge {
        /// The dead-letter stream.
        stream: String,
        /// Do not ask: delete.
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                paths,
                redis,
                no_watch,
                http,
            } => run(paths, redis, !no_watch, http).await,
            Command::Validate { paths, redis } => validate(paths, redis).await,
            Command::Dlq { action, redis } => dlq(action, redis).await,
            Command::Status {
                paths,
                redis,
                json,
                watch,
            } => status(paths, redis, json, watch).await,
            Command::Plugin {
                action:
                    PluginAction::Test {
                        plugin,
                        config,
                        input,
                        field,
                    },
            } => plugin_test(plugin, config, input, field).await,
            Command::Plugin {
                action:
                    PluginAction::Bench {
                        plugin,
                        config,
                        input,
                        size,
                        batch,
                        ms,
                    },
            } => plugin_bench(plugin, config, input, size, batch, ms).await,
            Command::Plugin {
                action:
                    PluginAction::New {
                        name,
                        lang,
                        dir,
                        sdk,
                    },
            } => plugin_new(&name, lang, dir, sdk.as_deref()),
            Command::Plugin {
                action: PluginAction::Diff(args),
            } => {
                let url = default_redis_url(args.redis.clone());
                sluice::plugin_diff::command(args, url).await
            }
            Command::Plugin {
                action: PluginAction::Promote(args),
            } => sluice::plugin_diff::control(args, "promote").await,
            Command::Plugin {
                action: PluginAction::Rollback(args),
            } => sluice::plugin_diff::control(args, "rollback").await,
            Command::Pending {
                stream,
                group,
                older_than,
                count,
                ack,
                claim,
                redis,
            } => pending(&stream, &group, older_than, count, ack, claim, redis).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, like `{:#}`, but each text once:
/// a Redis server error displays its reply and then returns that same
/// reply as its cause.
fn report(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

async fn run(
    paths: Vec<PathBuf>,
    redis: Option<String>,
    watch: bool,
    http: Option<std::net::SocketAddr>,
) -> Result<ExitCode> {
    // The same message as `validate`, before anything starts.
    pipeline_files(&paths)?;
    let mut embedded = None;
    let default_url = match redis.as_deref() {
        Some("embedded") => {
            let server = EmbeddedRedis::start().await?;
            // On stdout, so scripts can read it apart from the log.
            println!("redis: {}", server.url());
            let url = server.url().to_string();
            embedded = Some(server);
            url
        }
        Some(url) => url.to_string(),
        None => default_redis_url(None),
    };
    let ctx = Context {
        engine: Engine::with_fuel(sluice::plugin::default_cache_dir(), asks_for_fuel(&paths))?,
        default_url,
        ready: Default::default(),
    };
    let cancel = CancellationToken::new();
    tokio::spawn(on_signal(cancel.clone()));
    if let Some(addr) = http {
        let (metrics, ready, cancel) = (
            sluice::http::install_metrics()?,
            ctx.ready.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = sluice::http::serve(addr, metrics, ready, cancel).await {
                tracing::error!("HTTP endpoint stopped: {e:#}");
            }
        });
    }
    let result = supervisor::run(paths, ctx, cancel, watch).await;
    if let Some(server) = embedded {
        server.stop().await;
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// Whether a pipeline among `paths` sets `fuel`: only then does the engine
/// count it (a cost to every plugin call). Files that do not parse count as
/// not asking; they are reported when loaded.
fn asks_for_fuel(paths: &[PathBuf]) -> bool {
    let Ok(files) = pipeline_files(paths) else {
        return false;
    };
    files.iter().any(|file| {
        sluice::config::load_file(file, &|_| Ok(()))
            .is_ok_and(|p| p.processors.iter().any(|p| p.fuel.is_some()))
    })
}

/// First SIGINT/SIGTERM: drain and exit 0. A second one: exit at once.
async fn on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop sluice with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!(
        "signal received: stopping reads, finishing in-flight work (signal again to exit at once)"
    );
    cancel.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now; unfinished batches stay pending");
    std::process::exit(130);
}

/// The pipeline files in `paths`; an error if there are none, so that a
/// wrong folder is not mistaken for an idle one.
fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let files = sluice::config::pipeline_files(paths)?;
    if files.is_empty() {
        anyhow::bail!(
            "no pipeline files (*.toml) in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(files)
}

async fn validate(paths: Vec<PathBuf>, redis: Option<String>) -> Result<ExitCode> {
    let engine = Engine::new(sluice::plugin::default_cache_dir())?;
    let files = pipeline_files(&paths)?;
    let (valid, errors) =
        tokio::task::spawn_blocking(move || supervisor::load_all(&files, &engine)).await?;
    // Only a Redis named on the command line is checked: validate needs none.
    let check_against = redis.clone().filter(|url| url != "embedded");
    let fallback = RedisChoice::resolve(redis);
    let mut on_fallback = 0;
    let mut cluster_errors = 0;
    for p in &valid {
        let url = p.redis_url.as_deref().unwrap_or(&fallback.url);
        if sluice::conn::is_cluster_url(url) {
            let problems = sluice::config::cluster::problems(p);
            for problem in &problems {
                eprintln!(
                    "error: {} ({}): on the Redis Cluster {}: {problem}",
                    p.file.display(),
                    p.name,
                    sluice::conn::redact(url)
                );
            }
            if !problems.is_empty() {
                cluster_errors += 1;
                continue;
            }
        }
        println!("ok: {} ({})", p.file.display(), p.name);
        println!("    redis: {}", fallback.describe(p.redis_url.as_deref()));
        if p.redis_url.is_none() && fallback.is_fallback() {
            on_fallback += 1;
        }
        for sink in p.sinks.iter().filter(|s| s.url.is_some()) {
            let url = sink.url.as_deref().unwrap_or_default();
            println!(
                "    sink `{}` redis: {} (from its url)",
                sluice::config::Pipeline::sink_name(sink),
                sluice::conn::redact(url)
            );
        }
        if let Some(url) = check_against.as_deref() {
            let warnings = sluice::backlog::check_new_groups(p, url)
                .await
                .unwrap_or_else(|e| vec![format!("{e:#}")]);
            for w in warnings {
                eprintln!("warning: {} ({}): {w}", p.file.display(), p.name);
            }
        }
    }
    if on_fallback > 0 {
        eprintln!(
            "note: {on_fallback} pipeline(s) would use {DEFAULT_REDIS_URL}, which may be \
             someone else's Redis; name yours with [redis] url, --redis or $SLUICE_REDIS_URL"
        );
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok(if errors.is_empty() && cluster_errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The Redis a pipeline without `[redis] url` uses, and where that came from.
struct RedisChoice {
    url: String,
    origin: &'static str,
}

impl RedisChoice {
    /// `--redis`, else $SLUICE_REDIS_URL, else the local default: as `run` decides.
    fn resolve(flag: Option<String>) -> Self {
        match (flag, std::env::var("SLUICE_REDIS_URL").ok()) {
            (Some(url), _) => RedisChoice {
                url,
                origin: "from --redis",
            },
            (None, Some(url)) => RedisChoice {
                url,
                origin: "from $SLUICE_REDIS_URL",
            },
            (None, None) => RedisChoice {
                url: DEFAULT_REDIS_URL.to_string(),
                origin: "the fallback: no [redis] url, --redis or $SLUICE_REDIS_URL",
            },
        }
    }

    /// Whether no one named a Redis, so the local default applies.
    fn is_fallback(&self) -> bool {
        self.origin.starts_with("the fallback")
    }

    /// Which Redis a pipeline whose file says `file_url` uses, and why.
    fn describe(&self, file_url: Option<&str>) -> String {
        match (file_url, self.url.as_str()) {
            (Some(url), _) => format!("{} (from [redis] url)", sluice::conn::redact(url)),
            (None, "embedded") => {
                "embedded (a private redis-server `sluice run` starts)".to_string()
            }
            (None, url) => format!("{} ({})", sluice::conn::redact(url), self.origin),
        }
    }
}

/// `--redis`, else $SLUICE_REDIS_URL, else the local default.
fn default_redis_url(flag: Option<String>) -> String {
    RedisChoice::resolve(flag).url
}

async fn connect(redis: Option<String>) -> Result<sluice::conn::Conn> {
    let url = default_redis_url(redis);
    let client = sluice::conn::client(&url)?;
    client
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis at {}: {e}", sluice::conn::redact(&url)))
}

/// How often `status --watch` refreshes.
const STATUS_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

async fn status(
    paths: Vec<PathBuf>,
    redis: Option<String>,
    json: bool,
    watch: bool,
) -> Result<ExitCode> {
    use std::io::Write as _;
    // Plugins are not compiled: status needs only where each pipeline reads.
    let mut pipelines = Vec::new();
    if !paths.is_empty() {
        for file in pipeline_files(&paths)? {
            match sluice::config::load_file(&file, &|_| Ok(())) {
                Ok(p) => pipelines.push(p),
                Err(errors) => {
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    } else if !json {
        eprintln!(
            "pub/sub pipelines keep nothing in Redis: `sluice status PIPELINES...` includes them"
        );
    }
    let default_url = default_redis_url(redis.clone());
    let mut conn = if pipelines.is_empty() {
        Some(connect(redis).await?)
    } else {
        None
    };
    loop {
        let rows = match conn.as_mut() {
            Some(conn) => sluice::status::collect(conn).await?,
            None => sluice::status::collect_pipelines(&pipelines, &default_url).await?,
        };
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer(&mut out, &rows)?;
            writeln!(out)?;
        } else {
            if watch {
                // Clear the screen and home the cursor: a live view, not a scroll.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            sluice::status::print(&rows, &mut out)?;
        }
        out.flush()?;
        drop(out);
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_REFRESH) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn plugin_test(
    plugin: PathBuf,
    config: Vec<(String, String)>,
    input: Option<PathBuf>,
    field: Vec<(String, String)>,
) -> Result<ExitCode> {
    let messages = match input {
        Some(file) => sluice::plugin_test::read_jsonl(&file)?,
        None if field.is_empty() => {
            anyhow::bail!("give messages with --input FILE.jsonl or --field NAME=VALUE")
        }
        None => vec![
            field
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
                .collect(),
        ],
    };
    let engine = Engine::new(sluice::plugin::default_cache_dir())?;
    let ok = tokio::task::spawn_blocking(move || {
        sluice::plugin_test::run(
            &engine,
            &plugin,
            config,
            messages,
            &mut std::io::stdout().lock(),
        )
    })
    .await??;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn plugin_bench(
    plugin: PathBuf,
    config: Vec<(String, String)>,
    input: Option<PathBuf>,
    size: usize,
    batch: Vec<usize>,
    ms: u64,
) -> Result<ExitCode> {
    let messages = match input {
        Some(file) => sluice::plugin_test::read_jsonl(&file)?,
        None => sluice::plugin_bench::payloads(size, 64),
    };
    let engine = Engine::new(sluice::plugin::default_cache_dir())?;
    let report = tokio::task::spawn_blocking(move || {
        sluice::plugin_bench::run(
            &engine,
            &plugin,
            config,
            &messages,
            &batch,
            std::time::Duration::from_millis(ms),
        )
        .map(|report| report.markdown(&plugin))
    })
    .await??;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn plugin_new(
    name: &str,
    lang: sluice::scaffold::Lang,
    dir: Option<PathBuf>,
    sdk: Option<&Path>,
) -> Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let made = sluice::scaffold::create(name, lang, &dir, sdk)?;
    let dir = made.dir.display();
    println!("created {dir}");
    if let Some(setup) = &made.setup {
        println!("\nonce, if not installed yet:\n  {setup}");
    }
    println!("\nbuild:\n  cd {dir}\n  {}", made.build);
    println!(
        "\ntry it:\n  sluice plugin test {} --input sample.jsonl",
        made.wasm
    );
    Ok(ExitCode::SUCCESS)
}

async fn pending(
    stream: &str,
    group: &str,
    older_than: u64,
    count: usize,
    ack: bool,
    claim: Option<String>,
    redis: Option<String>,
) -> Result<ExitCode> {
    use sluice::pending;
    let mut conn = connect(redis).await?;
    let entries = pending::list(&mut conn, stream, group, older_than, count).await?;
    pending::print(&entries, &mut std::io::stdout().lock())?;
    if ack {
        let n = pending::ack(&mut conn, stream, group, &entries).await?;
        println!("acked {n} entries");
    } else if let Some(consumer) = claim {
        let n = pending::claim(&mut conn, stream, group, &consumer, older_than, &entries).await?;
        println!("gave {n} entries to {consumer}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq(action: DlqAction, redis: Option<String>) -> Result<ExitCode> {
    let url = default_redis_url(redis.clone());
    let mut conn = connect(redis).await?;
    match action {
        DlqAction::List { stream, count } => {
            sluice::dlq::check(&mut conn, &stream, &url).await?;
            let n =
                sluice::dlq::list(&mut conn, &stream, count, &mut std::io::stdout().lock()).await?;
            eprintln!("{} shown from {stream}", dead_letters(n));
        }
        DlqAction::Replay { stream, to, ids } => {
            let n = sluice::dlq::replay(&mut conn, &stream, to.as_deref(), &ids).await?;
            println!("replayed {} from {stream}", dead_letters(n));
        }
        DlqAction::Purge { stream, yes } => {
            let n = sluice::dlq::check(&mut conn, &stream, &url).await?;
            if n == 0 {
                println!("no dead letters in {stream}: nothing to purge");
                return Ok(ExitCode::SUCCESS);
            }
            let question = format!(
                "delete {} from {stream} on {}?",
                dead_letters(n),
                sluice::conn::redact(&url)
            );
            if !yes && !confirm(&question)? {
                eprintln!("nothing deleted");
                return Ok(ExitCode::FAILURE);
            }
            let n = sluice::dlq::purge(&mut conn, &stream).await?;
            println!("purged {} from {stream}", dead_letters(n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "1 dead letter", "2 dead letters".
fn dead_letters(n: usize) -> String {
    format!("{n} dead letter{}", if n == 1 { "" } else { "s" })
}

/// Asks `question` on the terminal; without one (a script, CI) there is
/// nobody to ask, so the caller must have said `--yes`.
fn confirm(question: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!("{question} Not without confirmation: pass --yes (stdin is not a terminal)");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
