//! File sink: JSON lines (see [`super::json`]) appended to a file.
//!
//! Each batch is one append: encoded first, then written and flushed under
//! the sink's lock on a blocking thread (file I/O never runs on the async
//! runtime), and with `fsync = true` also synced to the disk, before any of
//! its records reports success. So a message is acked only once its lines
//! are in the kernel: a `kill -9` right after the ack loses nothing, and
//! with `fsync` neither does a power loss. With `fsync`, opening also syncs
//! the folder of the file (and of each folder) it creates, since syncing a
//! file does not make its name durable.
//!
//! A batch is all or nothing: if the append fails halfway (a full disk),
//! the bytes it wrote are cut off again, so a retry does not leave half a
//! line or a duplicate behind. A full disk (or quota) is an outage, retried
//! with backoff until space is freed; any other I/O error refuses the batch.
//!
//! The file is opened once, in append mode, and kept open: rotate it by
//! copying and truncating (logrotate's `copytruncate`) or restart the
//! pipeline. One sink should own a file; two writers could interleave.

use super::SinkError;
use crate::message::Record;
use anyhow::Context as _;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Appends records to one file.
pub struct FileSink {
    file: Arc<Mutex<File>>,
    path: PathBuf,
    fsync: bool,
}

impl FileSink {
    /// Opens `path` for appending (creating it and its folder if missing);
    /// with `fsync`, every batch is synced to the disk before success.
    pub fn open(path: &Path, fsync: bool) -> anyhow::Result<Self> {
        let created = missing(path);
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create folder {}", folder.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        if fsync {
            sync_created(&created)
                .with_context(|| format!("cannot sync the folder entries of {}", path.display()))?;
        }
        Ok(FileSink {
            file: Arc::new(Mutex::new(file)),
            path: path.to_path_buf(),
            fsync,
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` as JSON lines in one write, flushed (and synced
    /// with `fsync`) before returning. Every record gets the batch's result,
    /// except records refused before writing (see [`super::json`]).
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let (buf, encoded) = super::json::json_lines(records);
        if buf.is_empty() {
            return encoded;
        }
        let (file, fsync) = (self.file.clone(), self.fsync);
        let appended = tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another append panicked; the file
            // itself is still usable.
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            append(&mut file, &buf, fsync)
        })
        .await;
        let result = match appended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError {
                outage: is_outage(&e),
                ..SinkError::refused(format!("append to {}: {e}", self.path.display()))
            }),
            Err(e) => Err(SinkError::refused(format!(
                "append to {}: {e}",
                self.path.display()
            ))),
        };
        encoded
            .into_iter()
            .map(|e| e.and_then(|()| result.clone()))
            .collect()
    }
}

/// Appends `buf` to `file`, then flushes (and syncs). On failure, cuts off
/// whatever part of `buf` reached the file, so the file still ends with a
/// whole line.
fn append(file: &mut File, buf: &[u8], fsync: bool) -> std::io::Result<()> {
    let start = file.metadata()?.len();
    let mut written = 0;
    let result = (|| {
        while written < buf.len() {
            match file.write(&buf[written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        file.flush()?;
        if fsync {
            file.sync_data()?;
        }
        Ok(())
    })();
    if result.is_err() && written > 0 {
        // Only if nobody else appended meanwhile: never cut another writer's data.
        if file
            .metadata()
            .is_ok_and(|m| m.len() == start + written as u64)
        {
            let _ = file.set_len(start);
        }
    }
    result
}

/// `path` and those of its folders that do not exist yet, outermost first:
/// what opening it creates.
fn missing(path: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

/// Makes the creation of `created` (from [`missing`]) durable: syncing a
/// file's data does not sync the folder entry that names it, so after a
/// power loss a new file could be gone with everything acked into it. Syncs
/// the folder holding each created entry. Returns the folders synced.
fn sync_created(created: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut synced = Vec::new();
    for entry in created {
        let folder = match entry.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(folder)?.sync_all()?;
        synced.push(folder.to_path_buf());
    }
    Ok(synced)
}

/// A full disk or an exhausted quota heal without touching the pipeline:
/// wait for them (backpressure) instead of failing message after message.
fn is_outage(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_whole_lines_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("out.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"old\":\"1\"}\n").unwrap();
        let sink = FileSink::open(&path, true).unwrap();
        let mut file = sink.file.lock().unwrap();
        append(&mut file, b"{\"a\":\"2\"}\n", true).unwrap();
        append(&mut file, b"{\"a\":\"3\"}\n", false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":\"1\"}\n{\"a\":\"2\"}\n{\"a\":\"3\"}\n"
        );
    }

    #[test]
    fn creates_missing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("b").join("out.jsonl");
        FileSink::open(&path, false).unwrap();
        assert!(path.is_file());
    }

    #[test]
    fn fsync_syncs_the_folders_of_what_opening_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let path = root.join("a").join("b").join("out.jsonl");
        let created = missing(&path);
        assert_eq!(
            created,
            [root.join("a"), root.join("a").join("b"), path.clone()]
        );
        FileSink::open(&path, true).unwrap();
        assert!(path.is_file());
        assert_eq!(
            sync_created(&created).unwrap(),
            [root.clone(), root.join("a"), root.join("a").join("b")],
            "each new entry's folder is synced"
        );
        assert_eq!(missing(&path), Vec::<PathBuf>::new(), "nothing new to sync");

        let next = root.join("a").join("next.jsonl");
        assert_eq!(
            sync_created(&missing(&next)).unwrap(),
            [root.join("a")],
            "a new file in an existing folder syncs that folder"
        );
        assert!(
            sync_created(&[root.join("gone").join("x")]).is_err(),
            "a folder that cannot be synced is an error, not ignored"
        );
    }

    #[test]
    fn full_disk_is_an_outage_other_errors_are_refusals() {
        assert!(is_outage(&ErrorKind::StorageFull.into()));
        assert!(!is_outage(&ErrorKind::PermissionDenied.into()));
    }
}
