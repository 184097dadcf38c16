//! The files source's thread: a [`Tailer`](super::Tailer) woken by inotify and by the periodic
//! rescan, handing batches to the pipeline over the bounded channel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Tailer;
use crate::checkpoint::FileCheckpoint;
use crate::config::FilesConfig;
use crate::source::ReaderContext;
use crate::source::{Batch, SourceError};

/// Settings for one files reader thread.
pub struct FilesReader {
    /// Which source, its name, its batch bounds and its counters.
    pub cx: ReaderContext,
    /// The source's config.
    pub config: FilesConfig,
    /// The source's checkpoint entries with their keys (`None`: it never ran).
    pub saved: Option<Vec<(u64, FileCheckpoint)>>,
}

/// Longest sleep between checks when inotify works (events wake us sooner) and when it does
/// not (then this is the latency).
pub(super) const POLL_WATCHED: Duration = Duration::from_secs(1);

pub(super) const POLL_UNWATCHED: Duration = Duration::from_millis(250);

impl FilesReader {
    /// Starts the reader thread.
    pub fn spawn(
        self,
        tx: mpsc::Sender<Batch>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, SourceError> {
        let name = self.cx.name.clone();
        std::thread::Builder::new()
            .name(format!("files:{name}"))
            .spawn(move || self.run(&tx, &stop))
            .map_err(|e| SourceError::Open {
                source_name: name,
                reason: format!("cannot start reader thread: {e}"),
            })
    }

    pub(super) fn run(self, tx: &mpsc::Sender<Batch>, stop: &AtomicBool) {
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let rescan = Arc::new(AtomicBool::new(false));
        let watcher = watch(&self.cx.name, &self.config.include, wake_tx, rescan.clone());
        let poll = if watcher.is_some() {
            POLL_WATCHED
        } else {
            POLL_UNWATCHED
        };
        let mut tailer = Tailer::new(
            &self.cx.name,
            self.config.clone(),
            self.saved.clone(),
            self.cx.stats.clone(),
        );
        let mut next_scan = Instant::now();
        let mut batch = Vec::with_capacity(self.cx.batch_entries);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_scan || rescan.swap(false, Ordering::Relaxed) {
                tailer.scan();
                next_scan = now + self.config.rescan_interval;
            }
            let progressed =
                tailer.read(&mut batch, self.cx.batch_entries, self.cx.batch_bytes, now);
            tailer.tick(now, &mut batch);
            let events = tailer.take_events();
            if !batch.is_empty() || !events.is_empty() {
                let records =
                    std::mem::replace(&mut batch, Vec::with_capacity(self.cx.batch_entries));
                self.cx.stats.read(&self.cx.name, records.len() as u64);
                let sent = tx.blocking_send(Batch {
                    source: self.cx.index,
                    events,
                    records,
                });
                if sent.is_err() {
                    return;
                }
            }
            if progressed {
                continue;
            }
            let now = Instant::now();
            let until = tailer
                .next_deadline()
                .map_or(next_scan, |d| d.min(next_scan))
                .min(now + poll);
            // A wake-up (or its absence) only shortens the sleep; the loop re-checks everything.
            let _ = wake_rx.recv_timeout(until.saturating_duration_since(now));
        }
        drop(watcher);
    }
}

/// Watches the directories the globs start from; events wake the reader (creations, renames
/// and removals also ask for a rescan). `None` if inotify is unavailable: polling then.
pub(super) fn watch(
    name: &str,
    include: &[String],
    wake: std::sync::mpsc::SyncSender<()>,
    rescan: Arc<AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let handler = move |event: notify::Result<notify::Event>| {
        let structural = match &event {
            Ok(e) => matches!(
                e.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Name(_))
            ),
            Err(_) => true, // overflow: rescan to be safe
        };
        if structural {
            rescan.store(true, Ordering::Relaxed);
        }
        let _ = wake.try_send(());
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(source = %name, error = %e,
                "inotify is unavailable; polling files every 250 ms instead");
            return None;
        }
    };
    for pattern in include {
        let (dir, recursive) = watch_root(pattern);
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = watcher.watch(&dir, mode) {
            tracing::info!(source = %name, %pattern, dir = %dir.display(), error = %e,
                "Cannot watch the directory of a glob; it is rescanned every rescan_interval instead");
        }
    }
    Some(watcher)
}

/// The directory a glob starts from (its components before the first wildcard, or the nearest
/// existing ancestor), and whether wildcards span more than the last component.
pub(super) fn watch_root(pattern: &str) -> (PathBuf, bool) {
    let path = Path::new(pattern);
    let mut root = PathBuf::new();
    let mut components = path.components().peekable();
    let mut recursive = false;
    while let Some(c) = components.next() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            recursive = components.peek().is_some();
            break;
        }
        if components.peek().is_none() {
            break; // the last component names the file itself
        }
        root.push(c);
    }
    while !root.as_os_str().is_empty() && !root.is_dir() {
        if !root.pop() {
            break;
        }
        recursive = false;
    }
    if root.as_os_str().is_empty() {
        root.push("/");
    }
    (root, recursive)
}
