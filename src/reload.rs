//! Hot reload: read the endpoint file, validate it, build a whole new routing table off the hot
//! path and publish it with one store. An invalid file never replaces the running table.
//!
//! The watcher listens to the file's directory, not the file: editors save by writing a temp file
//! and renaming it over the original, and Kubernetes updates a ConfigMap volume by swapping a
//! symlink, and both replace the inode a file watch would be attached to. A slow poll backs the
//! events up, so a missed event delays a reload by at most [`POLL_INTERVAL`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{Change, ConfigError, EndpointConfig, diff, read_file};
use crate::metrics::Metrics;
use crate::proxy::SharedTable;
use crate::routing::RoutingTable;

/// Quiet time after the last file event before reloading, so that a burst of events from one
/// save (truncate, write, close, rename) causes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(25);
/// A steady stream of events still reloads at least this often.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(250);
/// How often the file is re-read even without events.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Owns the path of the endpoint file and the table built from it.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    table: SharedTable,
    metrics: Arc<Metrics>,
    state: Mutex<ReloadState>,
}

/// What the reloader remembers between reloads.
#[derive(Debug)]
struct ReloadState {
    /// Text of the applied file, to skip reloads that change nothing.
    applied_text: String,
    applied_at: SystemTime,
    /// Text (`None`: unreadable) and error of the last rejected file, so that a poll does not
    /// log the same error again.
    rejected: Option<(Option<String>, Arc<ConfigError>)>,
}

/// The result of one reload attempt.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// A new table is serving.
    Applied {
        /// Its generation.
        generation: u64,
        /// What changed against the previous config.
        changes: Vec<Change>,
    },
    /// The file has the same text as the applied one; nothing was done.
    Unchanged {
        /// The generation still serving.
        generation: u64,
    },
    /// The file is invalid or unreadable; the previous table keeps serving.
    Rejected {
        /// The generation still serving.
        generation: u64,
        /// Why.
        error: Arc<ConfigError>,
    },
}

/// A snapshot of the reloader's state, for status displays.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// The config file.
    pub path: PathBuf,
    /// Generation of the table serving now.
    pub generation: u64,
    /// When that generation was applied.
    pub applied_at: SystemTime,
    /// The error of the last rejected file, if the file has been invalid since.
    pub last_error: Option<Arc<ConfigError>>,
}

// === impl Reloader ===

impl Reloader {
    /// Loads `path` for the first time; fails if it is invalid, since there is no last good
    /// config to fall back on.
    pub fn load(path: &Path, metrics: Arc<Metrics>) -> Result<Reloader, ConfigError> {
        let text = read_file(path)?;
        let config = EndpointConfig::parse_file(&text, path)?;
        let table = RoutingTable::build(Arc::new(config), 1, None, &metrics);
        metrics.table_applied(&table, None);
        Ok(Reloader {
            path: path.to_path_buf(),
            table: Arc::new(ArcSwap::from_pointee(table)),
            metrics,
            state: Mutex::new(ReloadState {
                applied_text: text,
                applied_at: SystemTime::now(),
                rejected: None,
            }),
        })
    }

    /// The table requests read.
    pub fn table(&self) -> &SharedTable {
        &self.table
    }

    /// The config file this reloader reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads now, reporting a rejection even if the same text was rejected before.
    pub fn reload(&self) -> ReloadOutcome {
        self.reload_with(true)
    }

    /// Reloads if the file's text differs from both the applied and the last rejected text.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        self.reload_with(false)
    }

    /// Where the reloader stands.
    pub fn status(&self) -> ReloadStatus {
        let state = self.lock();
        ReloadStatus {
            path: self.path.clone(),
            generation: self.table.load().generation(),
            applied_at: state.applied_at,
            last_error: state.rejected.as_ref().map(|(_, error)| Arc::clone(error)),
        }
    }

    fn reload_with(&self, report_repeats: bool) -> ReloadOutcome {
        // One reload at a time: the watcher, SIGHUP and an operator may all ask at once.
        let mut state = self.lock();
        let current = self.table.load_full();
        let generation = current.generation();

        let read = read_file(&self.path);
        if let (Some((rejected_text, error)), false) = (&state.rejected, report_repeats) {
            if read.as_ref().ok() == rejected_text.as_ref() {
                return ReloadOutcome::Rejected {
                    generation,
                    error: Arc::clone(error),
                };
            }
        }
        let text = match read {
            Ok(text) => text,
            Err(error) => return self.reject(&mut state, generation, error, None),
        };
        if text == state.applied_text {
            // Back to the applied text: a rejection since is no longer relevant.
            state.rejected = None;
            return ReloadOutcome::Unchanged { generation };
        }
        let config = match EndpointConfig::parse_file(&text, &self.path) {
            Ok(config) => config,
            Err(error) => return self.reject(&mut state, generation, error, Some(text)),
        };

        let changes = diff(current.config(), &config);
        let generation = generation + 1;
        let table = Arc::new(RoutingTable::build(
            Arc::new(config),
            generation,
            Some(&current),
            &self.metrics,
        ));
        self.table.store(Arc::clone(&table));
        self.metrics.table_applied(&table, Some(&current));
        state.applied_text = text;
        state.applied_at = SystemTime::now();
        state.rejected = None;
        let summary: Vec<String> = changes.iter().map(ToString::to_string).collect();
        tracing::info!(generation, changes = %summary.join("; "), "endpoint config applied");
        ReloadOutcome::Applied {
            generation,
            changes,
        }
    }

    /// Logs and remembers a rejected file; the serving table is left alone.
    fn reject(
        &self,
        state: &mut ReloadState,
        generation: u64,
        error: ConfigError,
        text: Option<String>,
    ) -> ReloadOutcome {
        tracing::error!(
            serving_generation = generation,
            "endpoint config rejected, the last good config keeps serving: {error}"
        );
        self.metrics.reload_rejected();
        let error = Arc::new(error);
        state.rejected = Some((text, Arc::clone(&error)));
        ReloadOutcome::Rejected { generation, error }
    }

    fn lock(&self) -> MutexGuard<'_, ReloadState> {
        // The state stays consistent even if a holder panicked: every field is written last.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Watches the endpoint file and reloads on change, on SIGHUP if asked, and on a slow poll.
pub fn spawn_watcher(
    reloader: Arc<Reloader>,
    on_sighup: bool,
) -> Result<JoinHandle<()>, notify::Error> {
    let wake = Arc::new(Notify::new());
    let watcher = watch_directories(reloader.path(), Arc::clone(&wake))?;
    let mut hangups = if on_sighup {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(notify::Error::io)?,
        )
    } else {
        None
    };

    Ok(tokio::spawn(async move {
        // Dropping the watcher stops the events; it lives as long as this task.
        let _watcher = watcher;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = wake.notified() => {
                    settle(&wake).await;
                    false
                }
                _ = poll.tick() => false,
                Some(()) = next_hangup(&mut hangups) => {
                    tracing::info!("SIGHUP received, reloading the endpoint config");
                    true
                }
            };
            let reloader = Arc::clone(&reloader);
            let reload = tokio::task::spawn_blocking(move || {
                if forced {
                    reloader.reload()
                } else {
                    reloader.reload_if_changed()
                }
            });
            if let Err(error) = reload.await {
                tracing::error!(%error, "reload task failed");
            }
        }
    }))
}

async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits until events have been quiet for [`DEBOUNCE`], or [`DEBOUNCE_MAX`] has passed.
async fn settle(wake: &Notify) {
    let started = Instant::now();
    while started.elapsed() < DEBOUNCE_MAX {
        if tokio::time::timeout(DEBOUNCE, wake.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Watches the directory holding `path` and, when `path` is a symlink, the directory of its
/// target, so that edits through either name are seen.
fn watch_directories(path: &Path, wake: Arc<Notify>) -> Result<RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            wake.notify_one();
        }
    })?;
    let mut directories = vec![parent_dir(path)];
    if let Ok(target) = std::fs::canonicalize(path) {
        let target_dir = parent_dir(&target);
        if !directories.contains(&target_dir) {
            directories.push(target_dir);
        }
    }
    for directory in &directories {
        watcher.watch(directory, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
