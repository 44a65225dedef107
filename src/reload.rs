//! Hot reload: read the endpoint file, validate it, build a whole new routing table off the hot
//! path and publish it with one store. An invalid file never replaces the running table.
//!
//! The watcher listens to the file's directory, not the file: editors save by writing a temp file
//! and renaming it over the original, and Kubernetes updates a ConfigMap volume by swapping a
//! symlink, and both replace the inode a file watch would be attached to. A slow poll backs the
//! events up: it reads only files left unmodified for [`POLL_QUIET`], so a missed event delays a
//! reload by at most that plus [`POLL_INTERVAL`]. A file written in place is read once its
//! writer has closed it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::auth::Keys;
use crate::config::{AuthMode, Change, ConfigError, EndpointConfig, diff, read_file};
use crate::metrics::Metrics;
use crate::applied::{Applied, SharedTable};
use crate::routing::RoutingTable;
use crate::upstream::Deployment;
use crate::upstream::probe::Prober;
use crate::upstream::resolve::{Resolve, Resolved};

/// Quiet time after the last file event before reloading, so that a burst of events from one
/// save (truncate, write, close, rename) causes one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(25);
/// A steady stream of events still reloads at least this often.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(250);
/// How often the file is re-read even without events.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often instance host names are resolved again.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(10);

/// Builds what applying `config` serves with. Deployments `previous` already had, with the
/// same instances, are carried over as they are.
fn build(
    config: Arc<EndpointConfig>,
    generation: u64,
    previous: Option<&Applied>,
    keys: Option<Keys>,
    resolved: Resolved,
    metrics: &Metrics,
) -> Applied {
    let before = previous.map_or(&[][..], |applied| applied.routes.deployments());
    let deployments = Deployment::build_all(&config, before, metrics, &resolved);
    Applied {
        routes: RoutingTable::build(config, generation, deployments, resolved),
        keys,
    }
}

/// Publishes the settings of newly applied `applied`; `previous` is the config it replaces.
/// Then starts the readiness probes of instances it brought in: those it kept from `previous`
/// go on with theirs.
fn publish(applied: &Applied, previous: Option<&Applied>, metrics: &Metrics, prober: &Arc<Prober>) {
    let routes = &applied.routes;
    let instances: Vec<usize> = routes
        .deployments()
        .iter()
        .map(|deployment| deployment.instances().len())
        .collect();
    metrics.config_applied(
        routes.config(),
        &instances,
        routes.generation(),
        previous.map(|applied| applied.routes.config().as_ref()),
    );
    routes.start_probes(prober);
}

/// Owns the path of the endpoint file and the table built from it.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    table: SharedTable,
    metrics: Arc<Metrics>,
    resolver: Arc<dyn Resolve>,
    /// Starts the readiness probes of each table's new instances.
    prober: Arc<Prober>,
    state: Mutex<ReloadState>,
}

/// What the reloader remembers between reloads.
#[derive(Debug)]
struct ReloadState {
    /// The files behind the serving table, to skip reloads that change nothing.
    applied: Sources,
    applied_at: SystemTime,
    /// The files and error of the last rejection, so that a poll does not log it again.
    rejected: Option<(Sources, Arc<ConfigError>)>,
}

/// The text of the files a config is built from; `None` where a file was unreadable or, for the
/// keys file, not used.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sources {
    endpoint: Option<String>,
    keys: Option<String>,
}

/// A config ready to apply.
struct Loaded {
    config: EndpointConfig,
    keys: Option<Keys>,
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
    /// config to fall back on. `prober` probes the instances that configure a readiness probe.
    pub fn load(
        path: &Path,
        metrics: Arc<Metrics>,
        resolver: Arc<dyn Resolve>,
        prober: Arc<Prober>,
    ) -> Result<Reloader, ConfigError> {
        let (sources, loaded) = read_sources(path);
        let loaded = loaded?;
        let resolved = Resolved::lookup(&loaded.config, &*resolver);
        let applied = build(
            Arc::new(loaded.config),
            1,
            None,
            loaded.keys,
            resolved,
            &metrics,
        );
        publish(&applied, None, &metrics, &prober);
        Ok(Reloader {
            path: path.to_path_buf(),
            table: Arc::new(ArcSwap::from_pointee(applied)),
            metrics,
            resolver,
            prober,
            state: Mutex::new(ReloadState {
                applied: sources,
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

    /// The files the serving config was read from: the endpoint file and any keys file.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let applied = self.table.load();
        let config = applied.routes.config();
        let mut files = vec![self.path.clone()];
        if let (AuthMode::Key, Some(keys_file)) = (config.auth_mode, &config.keys_file) {
            files.push(keys_path(&self.path, keys_file));
        }
        files
    }

    /// Reloads now, reporting a rejection even if the same text was rejected before.
    pub fn reload(&self) -> ReloadOutcome {
        self.reload_with(true, || true)
    }

    /// Reloads if the file's text differs from both the applied and the last rejected text.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        self.reload_with(false, || true)
    }

    /// [`Reloader::reload_if_changed`], but what was read is used only if `still()` holds
    /// once it was read: the watcher's word that the files did not move under the read.
    fn reload_if_still(&self, still: impl Fn() -> bool) -> Option<ReloadOutcome> {
        let mut moved = false;
        let outcome = self.reload_with(false, || {
            let held = still();
            moved = !held;
            held
        });
        (!moved).then_some(outcome)
    }

    /// Where the reloader stands.
    pub fn status(&self) -> ReloadStatus {
        let state = self.lock();
        ReloadStatus {
            path: self.path.clone(),
            generation: self.table.load().routes.generation(),
            applied_at: state.applied_at,
            last_error: state.rejected.as_ref().map(|(_, error)| Arc::clone(error)),
        }
    }

    fn reload_with(&self, report_repeats: bool, mut still: impl FnMut() -> bool) -> ReloadOutcome {
        // One reload at a time: the watcher, SIGHUP and an operator may all ask at once.
        let mut state = self.lock();
        let current = self.table.load_full();
        let generation = current.routes.generation();

        let (sources, loaded) = read_sources(&self.path);
        if !still() {
            // Read while being written: the next event or poll reads it whole.
            return ReloadOutcome::Unchanged { generation };
        }
        if sources == state.applied {
            // Back to the applied files: a rejection since is no longer relevant.
            state.rejected = None;
            self.metrics.reload_unchanged();
            return ReloadOutcome::Unchanged { generation };
        }
        if let (Some((rejected, error)), false) = (&state.rejected, report_repeats) {
            if *rejected == sources {
                return ReloadOutcome::Rejected {
                    generation,
                    error: Arc::clone(error),
                };
            }
        }
        let Loaded { config, keys } = match loaded {
            Ok(loaded) => loaded,
            Err(error) => return self.reject(&mut state, generation, error, sources),
        };

        if **current.routes.config() == config && current.keys == keys {
            // Only comments or layout changed: nothing to apply, and no new generation.
            state.applied = sources;
            state.rejected = None;
            self.metrics.reload_unchanged();
            return ReloadOutcome::Unchanged { generation };
        }
        let changes = diff(current.routes.config(), &config);
        let generation = generation + 1;
        let resolved = Resolved::lookup(&config, &*self.resolver);
        let applied = Arc::new(build(
            Arc::new(config),
            generation,
            Some(&current),
            keys,
            resolved,
            &self.metrics,
        ));
        self.table.store(Arc::clone(&applied));
        publish(&applied, Some(&current), &self.metrics, &self.prober);
        if current.keys != applied.keys && applied.keys.is_some() {
            tracing::info!(generation, "endpoint keys changed");
        }
        state.applied = sources;
        state.applied_at = SystemTime::now();
        state.rejected = None;
        let summary: Vec<String> = changes.iter().map(ToString::to_string).collect();
        tracing::info!(generation, changes = %summary.join("; "), "endpoint config applied");
        ReloadOutcome::Applied {
            generation,
            changes,
        }
    }

    /// Resolves the instances' host names again; if their addresses changed, rebuilds the table
    /// from the same config (same generation) with the new instances. Returns whether it did.
    pub fn refresh_addresses(&self) -> bool {
        let _state = self.lock();
        let current = self.table.load_full();
        let routes = &current.routes;
        if routes.resolved().is_empty() {
            return false;
        }
        let resolved = Resolved::lookup(routes.config(), &*self.resolver);
        if resolved == *routes.resolved() {
            return false;
        }
        let applied = Arc::new(build(
            Arc::clone(routes.config()),
            routes.generation(),
            Some(&current),
            current.keys.clone(),
            resolved,
            &self.metrics,
        ));
        self.table.store(Arc::clone(&applied));
        publish(&applied, Some(&current), &self.metrics, &self.prober);
        let instances: Vec<String> = applied
            .routes
            .deployments()
            .iter()
            .map(|d| format!("{} {}", d.name(), d.instances().len()))
            .collect();
        tracing::info!(instances = %instances.join(", "), "instance addresses changed");
        true
    }

    /// Logs and remembers a rejected file; the serving table is left alone.
    fn reject(
        &self,
        state: &mut ReloadState,
        generation: u64,
        error: ConfigError,
        sources: Sources,
    ) -> ReloadOutcome {
        tracing::error!(
            serving_generation = generation,
            "endpoint config rejected, the last good config keeps serving: {error}"
        );
        self.metrics.reload_rejected();
        let error = Arc::new(error);
        state.rejected = Some((sources, Arc::clone(&error)));
        ReloadOutcome::Rejected { generation, error }
    }

    fn lock(&self) -> MutexGuard<'_, ReloadState> {
        // The state stays consistent even if a holder panicked: every field is written last.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads the endpoint file and, for `auth_mode: key`, its keys file, and validates both.
fn read_sources(path: &Path) -> (Sources, Result<Loaded, ConfigError>) {
    let endpoint = match read_file(path) {
        Ok(text) => text,
        Err(error) => {
            return (
                Sources {
                    endpoint: None,
                    keys: None,
                },
                Err(error),
            );
        }
    };
    let config = match EndpointConfig::parse_file(&endpoint, path) {
        Ok(config) => config,
        Err(error) => {
            let sources = Sources {
                endpoint: Some(endpoint),
                keys: None,
            };
            return (sources, Err(error));
        }
    };
    let keys_path = match (config.auth_mode, &config.keys_file) {
        (AuthMode::Key, Some(keys_file)) => keys_path(path, keys_file),
        _ => {
            let sources = Sources {
                endpoint: Some(endpoint),
                keys: None,
            };
            return (sources, Ok(Loaded { config, keys: None }));
        }
    };
    let keys_text = read_file(&keys_path);
    let sources = Sources {
        endpoint: Some(endpoint),
        keys: keys_text.as_ref().ok().cloned(),
    };
    let loaded = keys_text
        .and_then(|text| Keys::parse(&text).map_err(|error| error.in_file(&keys_path)))
        .map(|keys| Loaded {
            config,
            keys: Some(keys),
        });
    (sources, loaded)
}

/// Reads and checks the endpoint file at `path` as applying it would, its keys file included:
/// the one check behind `validate`, `diff` and every reload, so they cannot disagree. Only the
/// instances are not reached.
pub fn check_files(path: &Path) -> Result<EndpointConfig, ConfigError> {
    read_sources(path).1.map(|loaded| loaded.config)
}

/// `keys_file` as written, relative to the endpoint file's directory.
pub fn keys_path(endpoint: &Path, keys_file: &Path) -> PathBuf {
    if keys_file.is_absolute() {
        keys_file.to_path_buf()
    } else {
        parent_dir(endpoint).join(keys_file)
    }
}

/// Watches the endpoint file and reloads on change, on SIGHUP if asked, and on a slow poll.
/// Every `resolve_interval`, it also resolves the instances' host names again.
pub fn spawn_watcher(
    reloader: Arc<Reloader>,
    on_sighup: bool,
    resolve_interval: Duration,
) -> Result<JoinHandle<()>, notify::Error> {
    let wake = Arc::new(Notify::new());
    let writing = Arc::new(Writing::default());
    let watcher = watch_directories(
        &reloader.source_files(),
        Arc::clone(&wake),
        Arc::clone(&writing),
    )?;
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
        let mut resolve = tokio::time::interval(resolve_interval);
        resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resolve.tick().await;
        // What the files looked like at the last poll: a poll reloads only files that have
        // stood still since, so it never reads one half written.
        let mut last_seen = files_seen(&reloader.source_files());
        loop {
            let forced = tokio::select! {
                _ = resolve.tick() => {
                    let reloader = Arc::clone(&reloader);
                    let _ = tokio::task::spawn_blocking(move || reloader.refresh_addresses()).await;
                    continue;
                }
                () = wake.notified() => {
                    settle(&wake).await;
                    last_seen = files_seen(&reloader.source_files());
                    false
                }
                _ = poll.tick() => {
                    let seen = files_seen(&reloader.source_files());
                    let still = seen == last_seen && quiet_for(&seen, POLL_QUIET);
                    last_seen = seen;
                    if !still {
                        continue;
                    }
                    false
                }
                Some(()) = next_hangup(&mut hangups) => {
                    tracing::info!("SIGHUP received, reloading the endpoint config");
                    true
                }
            };
            if !forced && writing.is_open() {
                // Written in place and not closed yet: its close wakes the loop again.
                continue;
            }
            let reloader = Arc::clone(&reloader);
            let writing = Arc::clone(&writing);
            // The files as they were before the read (for a poll, as it found them standing
            // still): a read they changed under is not used.
            let before = last_seen.clone();
            let reload = tokio::task::spawn_blocking(move || {
                if forced {
                    reloader.reload();
                } else {
                    let files = reloader.source_files();
                    let _ = reloader
                        .reload_if_still(|| !writing.is_open() && files_seen(&files) == before);
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

/// Whether a watched file is being written in place: from its first write until its writer
/// closes it. A `cp` over the file or a slow writer leaves a prefix on disk for a while, and a
/// prefix of a valid file can itself be valid (cut after the first deployment, it deletes the
/// second). Writers that never report a close (some network file systems) are trusted again
/// after [`WRITE_PATIENCE`].
#[derive(Debug, Default)]
struct Writing {
    since: std::sync::Mutex<Option<Instant>>,
}

/// How long a file written in place may stay open before it is read anyway.
pub const WRITE_PATIENCE: Duration = Duration::from_secs(30);

impl Writing {
    fn opened(&self) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        since.get_or_insert_with(Instant::now);
    }

    fn closed(&self) {
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn is_open(&self) -> bool {
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|since| since.elapsed() < WRITE_PATIENCE)
    }
}

/// How long a file must have gone unmodified before a poll reads it: the poll stands in for
/// events that were missed or are late, and must not read a file whose writer only paused.
pub const POLL_QUIET: Duration = Duration::from_secs(5);

/// Whether every file was last modified at least `quiet` ago.
fn quiet_for(seen: &[Option<(u64, Option<std::time::SystemTime>)>], quiet: Duration) -> bool {
    seen.iter().all(|file| {
        file.and_then(|(_, modified)| modified)
            .and_then(|modified| modified.elapsed().ok())
            .is_none_or(|age| age >= quiet)
    })
}

/// Size and modification time of each file, to tell one that stood still.
fn files_seen(files: &[PathBuf]) -> Vec<Option<(u64, Option<std::time::SystemTime>)>> {
    files
        .iter()
        .map(|file| {
            std::fs::metadata(file)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        })
        .collect()
}

/// Watches the directory holding each file and, when a file is a symlink, the directory of its
/// target, so that edits through either name are seen.
fn watch_directories(
    files: &[PathBuf],
    wake: Arc<Notify>,
    writing: Arc<Writing>,
) -> Result<RecommendedWatcher, notify::Error> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|file| file.file_name().map(ToOwned::to_owned))
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| names.iter().any(|n| n == name))
        });
        match event.kind {
            // Written in place: read once the writer has closed it.
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) if ours => writing.opened(),
            EventKind::Access(AccessKind::Close(AccessMode::Write)) if ours => {
                writing.closed();
                wake.notify_one();
            }
            // Opening and reading a file is an event too, and the reload itself reads the
            // file: waking on those would reload forever.
            EventKind::Access(_) => {}
            _ => wake.notify_one(),
        }
    })?;
    let mut directories: Vec<PathBuf> = Vec::new();
    for file in files {
        let target = std::fs::canonicalize(file).ok();
        for directory in [Some(parent_dir(file)), target.as_deref().map(parent_dir)]
            .into_iter()
            .flatten()
        {
            if !directories.contains(&directory) {
                directories.push(directory);
            }
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
