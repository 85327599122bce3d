//! Watches pipeline files and plugins for changes, debounced: editors and
//! build tools write a file in several steps (in place, by rename, by copy),
//! and one settled change should cause one reload.

use anyhow::Result;
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after the last event before a change counts as settled.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// A watcher over folders (non-recursive); reports changed paths.
pub struct Watcher {
    inner: notify::RecommendedWatcher,
    folders: HashSet<PathBuf>,
    events: mpsc::UnboundedReceiver<PathBuf>,
}

impl Watcher {
    /// A watcher watching nothing yet.
    pub fn new() -> Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            ) {
                for path in event.paths {
                    let _ = tx.send(normalize(&path));
                }
            }
        })?;
        Ok(Watcher {
            inner,
            folders: HashSet::new(),
            events,
        })
    }

    /// Watches the folder that holds `path` (or `path`, if it is a folder).
    /// Watching folders, not files, is what catches replace-by-rename.
    pub fn watch(&mut self, path: &Path) -> Result<()> {
        let folder = match path.parent() {
            _ if path.is_dir() => path,
            // A bare file name has an empty parent: the working directory.
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let folder = folder.canonicalize()?;
        if self.folders.insert(folder.clone()) {
            self.inner.watch(&folder, RecursiveMode::NonRecursive)?;
        }
        Ok(())
    }

    /// Waits for a change, then for [`DEBOUNCE`] of quiet; returns every path
    /// that changed meanwhile.
    pub async fn changed(&mut self) -> HashSet<PathBuf> {
        let mut paths = HashSet::new();
        match self.events.recv().await {
            Some(path) => paths.insert(path),
            None => return paths,
        };
        while let Ok(Some(path)) = tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
            paths.insert(path);
        }
        paths
    }
}

/// The canonical form of a path whose file may no longer exist: its
/// folder canonicalized, its name kept.
pub fn normalize(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map(|p| p.join(name))
                .unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}
