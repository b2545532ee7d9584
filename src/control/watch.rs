//! The watchers: the config file's (reloads it when its content changes, [`watch`]) and the
//! certificate files' (reloads the TLS listeners' certificates, [`spawn_cert_watcher`]).
//!
//! The config watcher watches the file's *folder*, not the file: an editor that saves by
//! rename, a `mv` into place, and a Kubernetes ConfigMap update (the `..data` symlink flipped
//! to a new folder) all replace the file's inode, which a watch on the file itself would miss.
//! Events are debounced and the content is hashed, so a burst of events or a rewrite with the
//! same text does nothing.

use super::reload::{read, reload_locked, Trigger};
use super::Control;
use crate::config::Config;
use crate::config::ConfigErrors;
use arc_swap::ArcSwap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Quiet time after the last file event before the file is read: editors and `kubectl`
/// produce bursts of events for one logical change.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watch the config file and reload it when its content changes, until shutdown.
pub async fn watch(rt: Arc<Control>, path: PathBuf) {
    let path = std::path::absolute(&path).unwrap_or(path);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    // The folders watched may hold other busy files (logs, say): only events on the paths
    // that lead to the config wake the reloader.
    let wanted = Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
    let seen = wanted.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if relevant(&ev.kind) && concerns(&ev, &seen) => {
            // Full means a wake-up is already pending: that one will read the file.
            let _ = tx.try_send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "config file watch error"),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; polling it every second instead");
            None
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(w) = watcher.as_mut() {
        rewatch(w, &path, &mut watched, &wanted);
    }
    // Check once at start: the file may have changed since it was loaded. The same bytes
    // as the live config was parsed from need no second parse (issue 15: at scale a parse
    // is most of start-up's CPU, and its scratch memory stays with the allocator).
    let mut last: Option<u64> = None;
    {
        let _lock = rt.change_lock.lock().await;
        let h = hash(&read(&path));
        if rt.config().source.0 == Some(h) {
            last = Some(h);
        }
    }
    if last.is_none() {
        check(&rt, &path, &mut last).await;
    }
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            ev = rx.recv(), if watcher.is_some() => if ev.is_none() { return },
            _ = poll.tick(), if watcher.is_none() => {}
        }
        // Debounce: wait for a quiet spell.
        loop {
            tokio::select! {
                _ = rt.shutdown.cancelled() => return,
                r = tokio::time::timeout(DEBOUNCE, rx.recv()) => match r {
                    Ok(Some(())) => continue,
                    Ok(None) | Err(_) => break,
                },
            }
        }
        check(&rt, &path, &mut last).await;
        if let Some(w) = watcher.as_mut() {
            rewatch(w, &path, &mut watched, &wanted);
        }
    }
}

/// Reading a file produces open/close events; only changes matter (and reacting to our own
/// reads would loop).
fn relevant(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Does the event touch a path that leads to the config (see [`leads_to`])?
fn concerns(ev: &notify::Event, wanted: &std::sync::Mutex<Vec<PathBuf>>) -> bool {
    let wanted = wanted.lock().unwrap_or_else(|p| p.into_inner());
    // Nothing known yet, or an event without paths (an overflow): better read once too often.
    wanted.is_empty() || ev.paths.is_empty() || ev.paths.iter().any(|p| wanted.contains(p))
}

/// The paths whose change can change what `path` reads: the path itself, each link on the
/// way to the file (a ConfigMap's `..data`, swapped on every update, is one), and the file.
fn leads_to(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut at = path.to_path_buf();
    // A link, and a link inside its target, and so on (a short, finite chain).
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&at) else {
            break;
        };
        let dir = at.parent().map(Path::to_path_buf).unwrap_or_default();
        let next = dir.join(&target);
        // The first step of a relative target (`..data` of `..data/veer.toml`) is itself
        // a link that tools swap.
        if let Some(first) = target.components().next() {
            out.push(dir.join(first));
        }
        out.push(next.clone());
        at = next;
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        out.push(real);
    }
    out
}

/// Watch the folder of the path and, when it is a symlink, the folder of its target too (the
/// target of a ConfigMap's `..data` link moves on every update, so this is redone each time).
fn rewatch(
    w: &mut notify::RecommendedWatcher,
    path: &Path,
    watched: &mut Vec<PathBuf>,
    wanted: &std::sync::Mutex<Vec<PathBuf>>,
) {
    use notify::Watcher;
    *wanted.lock().unwrap_or_else(|p| p.into_inner()) = leads_to(path);
    let mut want: Vec<PathBuf> = Vec::new();
    if let Some(d) = path.parent() {
        want.push(d.to_path_buf());
    }
    if let Some(d) = std::fs::canonicalize(path)
        .ok()
        .and_then(|r| r.parent().map(Path::to_path_buf))
    {
        if !want.contains(&d) {
            want.push(d);
        }
    }
    watched.retain(|d| {
        let keep = want.contains(d);
        if !keep {
            // Fails harmlessly when the folder is already gone (its watch went with it).
            let _ = w.unwatch(d);
        }
        keep
    });
    for d in want {
        if watched.contains(&d) {
            continue;
        }
        match w.watch(&d, notify::RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(d),
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot watch config folder"),
        }
    }
}

/// The content's digest, as [`crate::config::SourceDigest`] takes it of the text a config
/// was parsed from.
fn hash(text: &Result<String, ConfigErrors>) -> u64 {
    match text {
        Ok(t) => crate::config::SourceDigest::of(t).0.unwrap_or_default(),
        // Unreadable counts as one content, so a missing file is reported once.
        Err(_) => {
            let mut h = std::hash::DefaultHasher::new();
            u64::MAX.hash(&mut h);
            h.finish()
        }
    }
}

/// Reload when the content differs from what this watcher saw last and the config it
/// describes differs from the live one (a write-back by the API changes the text but not
/// the config, and is not reloaded again).
async fn check(rt: &Arc<Control>, path: &Path, last: &mut Option<u64>) {
    let lock = rt.change_lock.lock().await;
    let text = read(path);
    let h = hash(&text);
    if *last == Some(h) {
        return;
    }
    *last = Some(h);
    if text.is_err() && !path.exists() {
        // Deleted, or mid-replacement by a tool that unlinks first: not a config to judge.
        // The event that brings the file back reloads it.
        tracing::warn!(file = %path.display(), "config file is gone; the live config stays");
        return;
    }
    let origin = super::audit::Origin::of(super::audit::Source::File);
    let _ = reload_locked(rt, path, text, Trigger::File, true, &lock, &origin);
}

/// How often the watcher looks at the certificate files.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What the watcher compares: each certificate and key file's path and content hash (`None`
/// when unreadable). Content, not mtime, so a rename or symlink swap is seen too.
fn fingerprint(config: &Config, config_file: &Path) -> Vec<(PathBuf, Option<u64>)> {
    crate::tls::cert_paths(&config.tls, config_file)
        .into_iter()
        .flat_map(|(c, k)| [c, k])
        .map(|p| {
            let h = std::fs::read(&p).ok().map(|data| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                data.hash(&mut h);
                h.finish()
            });
            (p, h)
        })
        .collect()
}

/// Watch the configured certificate files and reload them on change. A change is applied
/// once it has been stable for one poll, so a cert and key written one after the other are
/// loaded as a pair. `current` gives the certificate set the TLS listeners use (`None` while
/// there are none). A config reload that names other files loads them itself; the watcher
/// then just follows the new paths.
pub fn spawn_cert_watcher<F>(
    rt: Arc<Control>,
    current: F,
    tasks: &TaskTracker,
    stop: CancellationToken,
) where
    F: Fn() -> Option<Arc<ArcSwap<rustls::ServerConfig>>> + Send + 'static,
{
    let file = rt.config_path.clone().unwrap_or_default();
    let mut loaded = fingerprint(&rt.config(), &file);
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seen = loaded.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let Some(swap) = current() else { continue };
            let config = rt.config();
            let (cfg, f) = (config.clone(), file.clone());
            // File reads stay off the async workers.
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&cfg, &f)).await else {
                continue;
            };
            let same_paths =
                now.len() == loaded.len() && now.iter().zip(&loaded).all(|(a, b)| a.0 == b.0);
            if now == loaded || !same_paths {
                loaded = now.clone();
                seen = now;
                continue;
            }
            if now != seen {
                seen = now;
                continue;
            }
            let (cfg, f) = (config.clone(), file.clone());
            let result =
                tokio::task::spawn_blocking(move || crate::tls::reload(&swap, &cfg, &f)).await;
            match result {
                Ok(Ok(())) => {
                    tracing::info!("TLS certificates reloaded");
                    rt.metrics.reloads.with_label_values(&["success"]).inc();
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "TLS certificate reload failed; old ones stay");
                    rt.metrics.reloads.with_label_values(&["failure"]).inc();
                }
                Err(_) => continue,
            }
            // A failed pair is not retried until the files change again.
            loaded = now;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(paths: &[PathBuf]) -> notify::Event {
        let mut ev = notify::Event::new(notify::EventKind::Modify(notify::event::ModifyKind::Any));
        ev.paths = paths.to_vec();
        ev
    }

    #[test]
    fn only_events_on_the_way_to_the_config_wake_the_reloader() {
        // A Kubernetes ConfigMap: veer.toml -> ..data/veer.toml, ..data -> ..2026_11_28.
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(d.join("..2026_11_28")).unwrap();
        std::fs::write(d.join("..2026_11_28/veer.toml"), "").unwrap();
        std::os::unix::fs::symlink("..2026_11_28", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/veer.toml", d.join("veer.toml")).unwrap();
        let path = d.join("veer.toml");
        let wanted = std::sync::Mutex::new(leads_to(&path));
        for p in [
            path.clone(),
            d.join("..data"),
            d.join("..2026_11_28/veer.toml"),
        ] {
            assert!(
                concerns(&event(std::slice::from_ref(&p)), &wanted),
                "{}",
                p.display()
            );
        }
        // The swap renames a new link over ..data: the event names both.
        assert!(concerns(
            &event(&[d.join("..data_tmp"), d.join("..data")]),
            &wanted
        ));
        // A busy neighbour (a log file, an editor's swap file) does not.
        for other in ["access.log", ".veer.toml.swp", "4913"] {
            assert!(!concerns(&event(&[d.join(other)]), &wanted), "{other}");
        }
        // Overflow events carry no path: read the file to be safe.
        assert!(concerns(&event(&[]), &wanted));
    }
}
