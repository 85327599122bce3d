//! Parse and validate pipeline files; errors that point at the line.

use super::{
    Pipeline, PipelineFile, ProcessorConfig, Rollout, SinkConfig, SinkType, SourceConfig,
    SourceType,
};
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A problem in a pipeline file, located so an editor can jump to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given on the command line.
    pub file: PathBuf,
    /// 1-based line and column of the key (or of its table when the key is missing).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Key path such as `source.batch` or `sink[1].name`; empty for the whole file.
    pub key: String,
    /// What is wrong, then what would be valid.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Pipeline files named by `paths`: files as they are, folders by their `*.toml`
/// (not recursive), sorted so runs are repeatable.
pub fn pipeline_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no such file or folder", path.display()),
            ));
        }
    }
    Ok(files)
}

/// Reads, parses and validates one pipeline file. `check_plugin` is asked
/// about every plugin file that exists (the runtime compiles it); its error
/// text is reported at that processor's `plugin` key.
pub fn load_file(
    file: &Path,
    check_plugin: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<Pipeline, Vec<ConfigError>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![ConfigError {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }]
    })?;
    load_str(file, &text, check_plugin)
}

/// [`load_file`] for text already read.
pub fn load_str(
    file: &Path,
    text: &str,
    check_plugin: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<Pipeline, Vec<ConfigError>> {
    let doc = Doc { file, text };
    let table = DeTable::parse(text).map_err(|e| vec![doc.toml_error(&e, String::new())])?;
    let de = toml::de::Deserializer::from(table.clone());
    let parsed: PipelineFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        vec![doc.toml_error(e.inner(), key)]
    })?;
    let mut errors = Errors {
        doc,
        table: &table,
        list: Vec::new(),
    };
    let pipeline = validate(parsed, &mut errors, check_plugin);
    if errors.list.is_empty() {
        Ok(pipeline)
    } else {
        Err(errors.list)
    }
}

struct Doc<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Doc<'_> {
    fn at(&self, span: Range<usize>, key: String, message: String) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            key,
            message,
        }
    }

    fn toml_error(&self, e: &toml::de::Error, key: String) -> ConfigError {
        let message = explain(e.message().trim());
        self.at(e.span().unwrap_or(0..0), key, message)
    }
}

/// Makes serde's wording say what would be valid, and suggests the nearest
/// key for a typo.
fn explain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((unknown, expected)) = rest.split_once('`')
    {
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let nearest = candidates
            .iter()
            .map(|c| (edit_distance(unknown, c), *c))
            .filter(|(d, _)| *d <= 2)
            .min();
        let valid = candidates
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return match nearest {
            Some((_, c)) => {
                format!("unknown key `{unknown}`; did you mean `{c}`? valid keys here: {valid}")
            }
            None => format!("unknown key `{unknown}`; valid keys here: {valid}"),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(name) = rest.strip_suffix('`')
    {
        return format!("missing required key `{name}`");
    }
    let mut text = message
        .replace("unknown variant", "unknown value")
        .replace("invalid type: ", "wrong type: ");
    for int in ["u32", "u64", "usize", "i64"] {
        text = text.replace(&format!("expected {int}"), "expected a whole number");
    }
    text
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Collects semantic errors, locating each key in the parsed document.
struct Errors<'a> {
    doc: Doc<'a>,
    table: &'a Spanned<DeTable<'a>>,
    list: Vec<ConfigError>,
}

/// One step of a key path.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl Errors<'_> {
    /// Records an error at `path` (the deepest part of it that exists in the file).
    fn add(&mut self, path: &[Seg], message: impl Into<String>) {
        let span = self.locate(path);
        let key = path.iter().fold(String::new(), |mut acc, seg| {
            match seg {
                Seg::Key(k) if acc.is_empty() => acc.push_str(k),
                Seg::Key(k) => {
                    acc.push('.');
                    acc.push_str(k);
                }
                Seg::Index(i) => acc.push_str(&format!("[{i}]")),
            }
            acc
        });
        let err = self.doc.at(span, key, message.into());
        self.list.push(err);
    }

    fn locate(&self, path: &[Seg]) -> Range<usize> {
        let mut span = 0..0;
        let mut value: Option<&DeValue> = None;
        let mut table: Option<&DeTable> = Some(self.table.get_ref());
        for seg in path {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => {
                    t.iter()
                        .find(|(name, _)| name.get_ref() == k)
                        .map(|(name, v)| {
                            span = name.span();
                            v
                        })
                }
                (Seg::Index(i), _, Some(DeValue::Array(items))) => {
                    items.get(*i).inspect(|v| span = v.span())
                }
                _ => None,
            };
            let Some(next) = next else { break };
            value = Some(next.get_ref());
            table = next.get_ref().as_table();
        }
        span
    }
}

fn validate(
    file: PipelineFile,
    errors: &mut Errors,
    check_plugin: &dyn Fn(&Path) -> Result<(), String>,
) -> Pipeline {
    let path = errors.doc.file;
    let name = file.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    if !valid_name(&name) {
        errors.add(
            &[Seg::Key("name")],
            format!(
                "`{name}` is not a usable pipeline name; use letters, digits, `-`, `_`, `.` or `:`"
            ),
        );
    }
    let source = validate_source(file.source, &name, errors);
    let base = path.parent().unwrap_or(Path::new("."));
    let processors = file
        .processors
        .into_iter()
        .enumerate()
        .map(|(i, p)| validate_processor(i, p, base, errors, check_plugin))
        .collect();
    let sinks = validate_sinks(file.sinks, base, file.atomic, errors);
    check_in_order_ids(&source, &sinks, errors);
    if file.atomic {
        let same_redis = sinks
            .iter()
            .all(|s| s.url.is_none() || s.url == file.redis.url);
        let all_streams = sinks.iter().all(|s| s.kind == SinkType::Stream);
        if source.kind != SourceType::Stream || !all_streams || !same_redis {
            errors.add(
                &[Seg::Key("atomic")],
                "`atomic = true` needs a stream source and only stream sinks on the pipeline's own Redis \
                 (one MULTI/EXEC cannot span other sink types or servers); remove it or the other sinks",
            );
        }
    }
    Pipeline {
        name,
        file: path.to_path_buf(),
        redis_url: file.redis.url,
        source,
        processors,
        sinks,
        atomic: file.atomic,
    }
}

/// `id_field` copies ids, and Redis takes an explicit id only above the
/// stream's top: an id that arrives after a higher one can never be written
/// (it is dead-lettered). Several writers (consumers, streams) interleave
/// their batches, so they would dead-letter a share of everything.
fn check_in_order_ids(source: &SourceConfig, sinks: &[SinkConfig], errors: &mut Errors) {
    let writers = source.consumers as usize * source.streams.as_ref().map_or(1, Vec::len);
    if source.kind != SourceType::Stream || writers <= 1 {
        return;
    }
    for (i, s) in sinks.iter().enumerate() {
        if s.kind == SinkType::Stream && s.id_field.is_some() {
            errors.add(
                &[Seg::Key("sink"), Seg::Index(i), Seg::Key("id_field")],
                "`id_field` needs one writer, so that ids reach the sink in order: set consumers = 1 \
                 and read one stream (Redis refuses an id below the stream's top, so with several \
                 writers those entries could only be dead-lettered)",
            );
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// Most partitions a stream family may have.
const MAX_PARTITIONS: u32 = 1024;

/// The keys of stream family `family` with `n` partitions: `family:{0}` ..
/// `family:{n-1}`.
pub fn partition_keys(family: &str, n: u32) -> Vec<String> {
    (0..n).map(|i| partition_key(family, i)).collect()
}

/// Partition `i` of stream family `family`.
pub fn partition_key(family: &str, i: u32) -> String {
    format!("{family}:{{{i}}}")
}

fn validate_source(mut s: SourceConfig, name: &str, errors: &mut Errors) -> SourceConfig {
    let key = |k| [Seg::Key("source"), Seg::Key(k)];
    // Keys that belong to other source types, with the type they belong to.
    let foreign: Vec<(&str, bool, &str)> = match s.kind {
        SourceType::Stream => {
            match (s.stream.take(), s.streams.take()) {
                (Some(one), None) if !one.is_empty() => s.streams = Some(vec![one]),
                (None, Some(many)) if !many.is_empty() && many.iter().all(|k| !k.is_empty()) => s.streams = Some(many),
                (Some(_), Some(_)) => errors.add(&key("streams"), "give `stream` (one key) or `streams` (several), not both"),
                _ => errors.add(
                    &key("stream"),
                    "a stream source needs `stream`, the key to read (e.g. stream = \"orders\"), or `streams = [...]`",
                ),
            }
            if let Some(n) = s.partitions {
                match s.streams.as_deref() {
                    _ if !(1..=MAX_PARTITIONS).contains(&n) => errors.add(
                        &key("partitions"),
                        format!("partitions must be 1 to {MAX_PARTITIONS}, not {n}"),
                    ),
                    Some([family]) if s.stream.is_none() => {
                        s.streams = Some(partition_keys(family, n));
                    }
                    _ => errors.add(
                        &key("partitions"),
                        "`partitions` needs `stream`, the family's name (e.g. stream = \"orders\" reads orders:{0}, orders:{1}, ...), not `streams`",
                    ),
                }
            }
            s.stream = s.streams.as_ref().and_then(|v| v.first().cloned());
            vec![
                ("channels", s.channels.is_some(), "pubsub"),
                ("patterns", s.patterns.is_some(), "pubsub"),
                ("buffer", s.buffer.is_some(), "pubsub"),
                ("sharded", s.sharded.is_some(), "pubsub"),
                ("list", s.list.is_some(), "list"),
            ]
        }
        SourceType::Pubsub => {
            let subscribed = s.channels.iter().chain(&s.patterns).flatten().count();
            if subscribed == 0 {
                errors.add(
                    &key("channels"),
                    "a pubsub source needs `channels = [...]` and/or `patterns = [...]`, not empty",
                );
            }
            if s.dead_letter.is_none() {
                s.dead_letter = Some(format!("{name}:dead"));
            }
            if s.sharded == Some(true) && s.patterns.is_some() {
                errors.add(
                    &key("sharded"),
                    "`sharded = true` subscribes with SSUBSCRIBE, which takes channels, not patterns \
                     (a pattern cannot be sharded: its channels may live in any slot); \
                     move `patterns` to a pipeline without `sharded`",
                );
            }
            s.sharded.get_or_insert(false);
            vec![
                ("stream", s.stream.is_some(), "stream"),
                ("streams", s.streams.is_some(), "stream"),
                ("partitions", s.partitions.is_some(), "stream"),
                ("group", s.group.is_some(), "stream"),
                ("list", s.list.is_some(), "list"),
            ]
        }
        SourceType::List => {
            match s.list.as_deref() {
                None | Some("") => errors.add(
                    &key("list"),
                    "a list source needs `list`, the key to pop from (e.g. list = \"jobs\")",
                ),
                Some(list) if s.dead_letter.is_none() => {
                    s.dead_letter = Some(format!("{list}:dead"))
                }
                Some(_) => {}
            }
            vec![
                ("stream", s.stream.is_some(), "stream"),
                ("streams", s.streams.is_some(), "stream"),
                ("partitions", s.partitions.is_some(), "stream"),
                ("group", s.group.is_some(), "stream"),
                ("channels", s.channels.is_some(), "pubsub"),
                ("patterns", s.patterns.is_some(), "pubsub"),
                ("buffer", s.buffer.is_some(), "pubsub"),
                ("sharded", s.sharded.is_some(), "pubsub"),
            ]
        }
    };
    for (k, set, belongs) in foreign {
        if set {
            errors.add(
                &key(k),
                format!(
                    "`{k}` is not a key of this source type; it belongs to type = \"{belongs}\""
                ),
            );
        }
    }
    if s.buffer == Some(0) {
        errors.add(&key("buffer"), "a buffer of 0 messages; valid: 1 or more");
    }
    if s.group.is_none() {
        s.group = Some(name.to_string());
    }
    if s.consumers == 0 || s.consumers > 1024 {
        errors.add(
            &key("consumers"),
            format!("{} consumers; valid: 1 to 1024", s.consumers),
        );
    }
    if s.batch == 0 || s.batch > 100_000 {
        errors.add(
            &key("batch"),
            format!("batch {}; valid: 1 to 100000", s.batch),
        );
    }
    if s.max_deliveries == 0 {
        errors.add(&key("max_deliveries"), "0 deliveries; valid: 1 or more");
    }
    if s.claim_idle_ms < 100 {
        errors.add(
            &key("claim_idle_ms"),
            format!("{} ms; valid: 100 or more", s.claim_idle_ms),
        );
    }
    if !(s.start == "$" || s.start == "0" || is_stream_id(&s.start)) {
        errors.add(
            &key("start"),
            format!("`{}` is not a start position; valid: \"$\" (new entries), \"0\" (whole stream) or an entry id like \"1700000000000-0\"", s.start),
        );
    }
    s
}

fn is_stream_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().unwrap_or_default();
    let seq = parts.next();
    !ms.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && seq.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

fn validate_processor(
    i: usize,
    mut p: ProcessorConfig,
    base: &Path,
    errors: &mut Errors,
    check_plugin: &dyn Fn(&Path) -> Result<(), String>,
) -> ProcessorConfig {
    let key = |k| [Seg::Key("processor"), Seg::Index(i), Seg::Key(k)];
    if p.plugin.is_relative() {
        p.plugin = base.join(&p.plugin);
    }
    if !p.plugin.is_file() {
        errors.add(
            &key("plugin"),
            format!(
                "plugin file {} not found; give the path to a .wasm file, relative to this pipeline file's folder",
                p.plugin.display()
            ),
        );
    } else if let Err(why) = check_plugin(&p.plugin) {
        errors.add(
            &key("plugin"),
            format!("{} is not a usable plugin: {why}", p.plugin.display()),
        );
    }
    if p.timeout_ms == 0 {
        errors.add(&key("timeout_ms"), "0 ms; valid: 1 or more");
    }
    if p.fuel == Some(0) {
        errors.add(&key("fuel"), "0; valid: 1 or more (or leave it out)");
    }
    match (p.rollout, p.canary_percent) {
        (Rollout::Canary, None) => errors.add(
            &key("rollout"),
            "\"canary\" needs `canary_percent` (0 to 100): the share of messages the new version serves",
        ),
        (Rollout::Canary, Some(pct)) if !(0.0..=100.0).contains(&pct) => errors.add(
            &key("canary_percent"),
            format!("{pct}; valid: 0 to 100"),
        ),
        (Rollout::Canary, Some(_)) => {}
        (_, Some(_)) => errors.add(
            &key("canary_percent"),
            "only for rollout = \"canary\"",
        ),
        (_, None) => {}
    }
    if p.canary_key.is_some() && p.rollout != Rollout::Canary {
        errors.add(&key("canary_key"), "only for rollout = \"canary\"");
    }
    if !(0.0..=1.0).contains(&p.rollback_margin) {
        errors.add(
            &key("rollback_margin"),
            format!(
                "{}; valid: 0 to 1 (a difference of failure rates)",
                p.rollback_margin
            ),
        );
    }
    if p.rollback_window == 0 {
        errors.add(&key("rollback_window"), "0 messages; valid: 1 or more");
    }
    if p.memory_mb == 0 || p.memory_mb > 4096 {
        errors.add(
            &key("memory_mb"),
            format!("{} MiB; valid: 1 to 4096", p.memory_mb),
        );
    }
    validate_grants(i, &mut p.grants, base, errors);
    for (k, v) in &p.config {
        if matches!(v, toml::Value::Table(_) | toml::Value::Array(_)) {
            errors.add(
                &[
                    Seg::Key("processor"),
                    Seg::Index(i),
                    Seg::Key("config"),
                    Seg::Key(k),
                ],
                "plugin config values must be strings, numbers or booleans",
            );
        }
    }
    p
}

/// Checks `[processor.grants]` and makes its folders absolute.
fn validate_grants(i: usize, grants: &mut super::Grants, base: &Path, errors: &mut Errors) {
    let key = |k| {
        [
            Seg::Key("processor"),
            Seg::Index(i),
            Seg::Key("grants"),
            Seg::Key(k),
        ]
    };
    for dir in &mut grants.dirs {
        let path = match dir.rsplit_once(':') {
            Some((path, "ro")) => path.to_string(),
            Some((_, mode)) if !mode.contains('/') => {
                errors.add(
                    &key("dirs"),
                    format!(
                        "`{dir}`: mode `{mode}`; folders are granted read-only: write `path` or `path:ro`"
                    ),
                );
                continue;
            }
            _ => dir.clone(),
        };
        let full = base.join(&path);
        if !full.is_dir() {
            errors.add(
                &key("dirs"),
                format!(
                    "`{dir}`: {} is not a folder; give folders to grant read access to, relative to this pipeline file's folder",
                    full.display()
                ),
            );
            continue;
        }
        *dir = full.to_string_lossy().into_owned();
    }
    for name in &grants.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            errors.add(
                &key("env"),
                format!("`{name}` is not an environment variable name; give names such as `TZ`"),
            );
        }
    }
}

/// Every sink type, for messages that list where a key belongs.
const SINK_TYPES: [SinkType; 5] = [
    SinkType::Stream,
    SinkType::Pubsub,
    SinkType::List,
    SinkType::Stdout,
    SinkType::File,
];

/// The keys a sink type takes besides `name`, `type` and `route`.
fn sink_keys(kind: SinkType) -> &'static [&'static str] {
    match kind {
        SinkType::Stream => &[
            "stream",
            "maxlen",
            "id_field",
            "url",
            "partitions",
            "partition_by",
        ],
        SinkType::Pubsub => &[
            "channel",
            "channel_field",
            "payload_field",
            "sharded",
            "url",
        ],
        SinkType::List => &["list", "side", "payload_field", "url"],
        SinkType::Stdout => &[],
        SinkType::File => &["path", "fsync"],
    }
}

/// The type-specific keys `s` sets.
fn sink_keys_set(s: &SinkConfig) -> Vec<&'static str> {
    [
        ("stream", s.stream.is_some()),
        ("maxlen", s.maxlen.is_some()),
        ("id_field", s.id_field.is_some()),
        ("url", s.url.is_some()),
        ("partitions", s.partitions.is_some()),
        ("partition_by", s.partition_by.is_some()),
        ("channel", s.channel.is_some()),
        ("channel_field", s.channel_field.is_some()),
        ("sharded", s.sharded.is_some()),
        ("payload_field", s.payload_field.is_some()),
        ("list", s.list.is_some()),
        ("side", s.side.is_some()),
        ("path", s.path.is_some()),
        ("fsync", s.fsync.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect()
}

fn validate_sinks(
    sinks: Vec<SinkConfig>,
    base: &Path,
    atomic: bool,
    errors: &mut Errors,
) -> Vec<SinkConfig> {
    if sinks.is_empty() {
        errors.add(&[], "no [[sink]]; a pipeline needs at least one, e.g. [[sink]] type = \"stream\" stream = \"out\"");
    }
    let mut seen = HashSet::new();
    sinks
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let key = |k| [Seg::Key("sink"), Seg::Index(i), Seg::Key(k)];
            let name = s.name.clone().unwrap_or_else(|| if i == 0 { "out".into() } else { String::new() });
            if name.is_empty() {
                errors.add(&key("name"), "every sink after the first needs a `name` (records pick a sink with `to`)");
            } else if !seen.insert(name.clone()) {
                errors.add(&key("name"), format!("a sink named `{name}` is already declared; sink names must be unique"));
            }
            s.name = Some(name);
            let kind = s.kind.as_str();
            let takes = sink_keys(s.kind);
            for k in sink_keys_set(&s).into_iter().filter(|k| !takes.contains(k)) {
                let belongs = SINK_TYPES
                    .iter()
                    .filter(|t| sink_keys(**t).contains(&k))
                    .map(|t| format!("\"{}\"", t.as_str()))
                    .collect::<Vec<_>>()
                    .join(" or ");
                let valid = ["name", "type", "route"]
                    .iter()
                    .chain(takes)
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.add(
                    &key(k),
                    format!("`{k}` is not a key of a {kind} sink (it belongs to type = {belongs}); a {kind} sink takes {valid}"),
                );
            }
            for (k, value) in [
                ("id_field", &s.id_field),
                ("channel", &s.channel),
                ("channel_field", &s.channel_field),
                ("payload_field", &s.payload_field),
            ] {
                if value.as_deref() == Some("") {
                    errors.add(&key(k), format!("`{k}` is empty; give a name or leave the key out"));
                }
            }
            match s.kind {
                SinkType::Stream => {
                    if s.stream.as_deref().is_none_or(str::is_empty) {
                        errors.add(&key("stream"), "a stream sink needs `stream`, the key to write to (e.g. stream = \"orders:out\")");
                    }
                    if s.maxlen == Some(0) {
                        errors.add(&key("maxlen"), "maxlen 0 would trim every entry away; valid: 1 or more, or leave it out (no trimming)");
                    }
                    match (s.partitions, s.partition_by.as_deref()) {
                        (None, None) => {}
                        (Some(n), Some(field)) if (1..=MAX_PARTITIONS).contains(&n) && !field.is_empty() => {
                            if atomic || s.id_field.is_some() {
                                errors.add(
                                    &key("partitions"),
                                    "a partitioned stream sink does not work with `atomic = true` or `id_field` (each needs one stream); remove one of them",
                                );
                            }
                        }
                        (Some(n), Some(_)) if !(1..=MAX_PARTITIONS).contains(&n) => errors.add(
                            &key("partitions"),
                            format!("partitions must be 1 to {MAX_PARTITIONS}, not {n}"),
                        ),
                        _ => errors.add(
                            &key("partition_by"),
                            "a partitioned stream sink needs both `partitions` (how many) and `partition_by` (the record field whose value picks one)",
                        ),
                    }
                    if atomic && s.id_field.is_some() {
                        errors.add(
                            &key("id_field"),
                            "`id_field` does not work with `atomic = true` (the atomic commit lets Redis pick entry ids); remove one of them",
                        );
                    }
                }
                SinkType::Pubsub => {
                    match (&s.channel, &s.channel_field) {
                        (Some(_), Some(_)) => errors.add(
                            &key("channel_field"),
                            "give `channel` (one channel for every record) or `channel_field` (the record field naming the channel), not both",
                        ),
                        (None, None) => errors.add(
                            &key("channel"),
                            "a pubsub sink needs `channel` (e.g. channel = \"alerts\") or `channel_field` (the record field naming the channel)",
                        ),
                        _ => {}
                    }
                    s.payload_field.get_or_insert_with(|| crate::sink::DEFAULT_PAYLOAD.into());
                    s.sharded.get_or_insert(false);
                }
                SinkType::List => {
                    if s.list.as_deref().is_none_or(str::is_empty) {
                        errors.add(&key("list"), "a list sink needs `list`, the key to push to (e.g. list = \"jobs\")");
                    }
                    s.payload_field.get_or_insert_with(|| crate::sink::DEFAULT_PAYLOAD.into());
                    s.side.get_or_insert_default();
                }
                SinkType::Stdout => {}
                SinkType::File => {
                    match s.path.as_mut() {
                        None => errors.add(&key("path"), "a file sink needs `path`, the file to append JSON lines to (e.g. path = \"out.jsonl\")"),
                        Some(p) if p.as_os_str().is_empty() => errors.add(&key("path"), "`path` is empty; give the file to append to"),
                        Some(p) => {
                            if p.is_relative() {
                                *p = base.join(&*p);
                            }
                            if p.is_dir() {
                                errors.add(&key("path"), format!("{} is a folder; give the path of a file to append to", p.display()));
                            }
                        }
                    }
                    s.fsync.get_or_insert(false);
                }
            }
            if let Some(route) = s.route.as_deref()
                && route != "all"
            {
                errors.add(
                    &key("route"),
                    format!("unknown route `{route}`; valid: \"all\" (every record goes here too), or leave it out (records whose `to` names this sink)"),
                );
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Pipeline, Vec<ConfigError>> {
        load_str(Path::new("p.toml"), text, &|_| Ok(()))
    }

    const MINIMAL: &str = "[source]\ntype = \"stream\"\nstream = \"in\"\n\n[[sink]]\ntype = \"stream\"\nstream = \"out\"\n";

    #[test]
    fn defaults_are_filled_in() {
        let p = load(MINIMAL).unwrap();
        assert_eq!(p.name, "p");
        assert_eq!(p.group(), "p");
        assert_eq!(p.dead_letter_for("in"), "in:dead");
        assert_eq!(p.streams(), ["in".to_string()]);
        assert_eq!(p.source.batch, 256);
        assert_eq!(Pipeline::sink_name(&p.sinks[0]), "out");
    }

    #[test]
    fn unknown_key_names_line_and_suggests() {
        let text = MINIMAL.replace("stream = \"in\"", "stream = \"in\"\nbach = 10");
        let e = &load(&text).unwrap_err()[0];
        assert_eq!((e.line, e.key.as_str()), (4, "source.bach"));
        assert!(e.message.contains("did you mean `batch`"), "{}", e.message);
    }

    #[test]
    fn semantic_errors_are_located() {
        let text =
            format!("{MINIMAL}\n[[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"x\"\n");
        let e = &load(&text).unwrap_err()[0];
        assert_eq!((e.line, e.key.as_str()), (10, "sink[1].name"));
    }

    /// MINIMAL's source with `sinks` as the sink tables.
    fn with_sinks(sinks: &str) -> Result<Pipeline, Vec<ConfigError>> {
        load_str(
            Path::new("/pipes/p.toml"),
            &format!("[source]\ntype = \"stream\"\nstream = \"in\"\n{sinks}"),
            &|_| Ok(()),
        )
    }

    #[test]
    fn sink_defaults_and_paths() {
        let p = with_sinks(
            "[[sink]]\ntype = \"list\"\nlist = \"q\"\n\
             [[sink]]\nname = \"f\"\ntype = \"file\"\npath = \"out/x.jsonl\"\n\
             [[sink]]\nname = \"p\"\ntype = \"pubsub\"\nchannel_field = \"ch\"\npayload_field = \"body\"\n\
             [[sink]]\nname = \"s\"\ntype = \"stdout\"\nroute = \"all\"\n",
        )
        .unwrap();
        assert_eq!(p.sinks[0].payload_field.as_deref(), Some("payload"));
        assert_eq!(p.sinks[0].side, Some(crate::config::ListSide::Left));
        assert_eq!(
            p.sinks[1].path.as_deref(),
            Some(Path::new("/pipes/out/x.jsonl"))
        );
        assert_eq!(p.sinks[1].fsync, Some(false));
        assert_eq!(p.sinks[2].payload_field.as_deref(), Some("body"));
    }

    #[test]
    fn sink_keys_must_fit_the_type() {
        let errors =
            with_sinks("[[sink]]\ntype = \"stdout\"\nstream = \"x\"\nfsync = true\n").unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            (errors[0].line, errors[0].key.as_str()),
            (6, "sink[0].stream")
        );
        assert!(
            errors[0].message.contains("belongs to type = \"stream\"")
                && errors[0].message.contains("takes `name`, `type`, `route`"),
            "{}",
            errors[0].message
        );
        let e = &with_sinks("[[sink]]\ntype = \"list\"\nlist = \"q\"\nchannel = \"c\"\n")
            .unwrap_err()[0];
        assert!(
            e.message.contains("belongs to type = \"pubsub\"") && e.message.contains("`side`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn sink_required_keys() {
        let cases = [
            ("type = \"pubsub\"", "sink[0].channel"),
            (
                "type = \"pubsub\"\nchannel = \"a\"\nchannel_field = \"b\"",
                "sink[0].channel_field",
            ),
            ("type = \"list\"", "sink[0].list"),
            ("type = \"file\"", "sink[0].path"),
            ("type = \"stream\"", "sink[0].stream"),
            (
                "type = \"stream\"\nstream = \"o\"\nid_field = \"\"",
                "sink[0].id_field",
            ),
        ];
        for (sink, key) in cases {
            let errors = with_sinks(&format!("[[sink]]\n{sink}\n")).unwrap_err();
            assert_eq!(errors.len(), 1, "{sink}: {errors:?}");
            assert_eq!(errors[0].key, key, "{sink}: {}", errors[0].message);
        }
    }

    #[test]
    fn atomic_rejects_id_field() {
        let text = format!("atomic = true\n{MINIMAL}id_field = \"src\"\n");
        let e = &load(&text).unwrap_err()[0];
        assert_eq!(e.key, "sink[0].id_field");
        assert!(e.message.contains("atomic"), "{}", e.message);
    }

    #[test]
    fn stream_ids() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(is_stream_id("17"));
        assert!(!is_stream_id("17-"));
        assert!(!is_stream_id("abc"));
    }
}
