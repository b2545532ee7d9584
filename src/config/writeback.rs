//! Writing changes back into the config file with `toml_edit`, keeping comments and layout:
//! read → edit the document → validate the result → temp file + fsync + rename.
//! If any step fails, the file and the live config are unchanged.

use super::{Config, ConfigErrors};
use std::io::Write;
use std::path::{Path, PathBuf};
use toml_edit::DocumentMut;

/// Errors writing the config file back.
#[derive(Debug, thiserror::Error)]
pub enum WritebackError {
    #[error("no config file to write to")]
    NoFile,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml_edit::TomlError,
    },
    #[error("{0}")]
    Edit(String),
    #[error("the change would make the config invalid:\n{0}")]
    Invalid(#[from] ConfigErrors),
}

/// Edit the config file at `path` with `f`, validate, and atomically replace it.
/// Returns the new validated config (not yet applied).
pub fn edit_file<F>(path: &Path, f: F) -> Result<Config, WritebackError>
where
    F: FnOnce(&mut DocumentMut) -> Result<(), WritebackError>,
{
    let edit = prepare_edit(path, f)?;
    edit.write()?;
    Ok(edit.config)
}

/// An edit computed and validated but not yet written, so a caller can check that the new
/// config can be applied (listeners bind, TLS loads) before the file changes.
#[derive(Debug)]
pub struct PreparedEdit {
    /// The path as configured (used in messages).
    pub path: PathBuf,
    /// The file actually replaced (the symlink target, if any).
    pub real: PathBuf,
    /// The text before the edit, to put back if applying fails after the write.
    pub original: String,
    pub text: String,
    /// The validated config of the edited text.
    pub config: Config,
}

impl PreparedEdit {
    /// Atomically replace the file with the edited text.
    pub fn write(&self) -> Result<(), WritebackError> {
        write_atomic(&self.real, self.text.as_bytes()).map_err(|e| WritebackError::Write {
            path: self.path.clone(),
            source: e,
        })
    }

    /// Put the original text back (after a write whose config could not be applied).
    pub fn restore(&self) -> Result<(), WritebackError> {
        write_atomic(&self.real, self.original.as_bytes()).map_err(|e| WritebackError::Write {
            path: self.path.clone(),
            source: e,
        })
    }
}

/// Read the config file, edit it with `f` and validate the result, writing nothing.
pub fn prepare_edit<F>(path: &Path, f: F) -> Result<PreparedEdit, WritebackError>
where
    F: FnOnce(&mut DocumentMut) -> Result<(), WritebackError>,
{
    // Follow a symlink (Kubernetes-style) so we replace the real file, not the link.
    let real = std::fs::canonicalize(path).map_err(|e| WritebackError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let original = std::fs::read_to_string(&real).map_err(|e| WritebackError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut doc: DocumentMut = original.parse().map_err(|e| WritebackError::Parse {
        path: path.to_path_buf(),
        source: e,
    })?;
    f(&mut doc)?;
    let text = doc.to_string();
    let config = Config::parse(path, &text)?;
    Ok(PreparedEdit {
        path: path.to_path_buf(),
        real,
        original,
        text,
        config,
    })
}

/// Replace `path` with `data`: write a temp file beside it, fsync, rename, fsync the folder.
/// The file must exist (a config file); its permissions are kept.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    write_replacing(path, data, Some(meta.permissions()))
}

/// [`write_atomic`] for a file veer owns (the state file): created when missing. Its folder
/// must exist.
pub fn write_atomic_create(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let perms = match std::fs::metadata(path) {
        Ok(m) => Some(m.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    write_replacing(path, data, perms)
}

/// A file whose mode has no write bit is not written, even by root (who could): whoever made
/// it read-only meant it.
fn refuse_read_only(perms: &std::fs::Permissions) -> std::io::Result<()> {
    if perms.readonly() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the file is read-only",
        ));
    }
    Ok(())
}

/// Can `path` (an existing file) be replaced the way [`write_atomic`] does it? Found out by
/// trying, since only that is sure (a read-only mount, an immutable file, another owner, a
/// folder without write permission): the file is opened for writing (nothing is written) and
/// a temp file is created and removed beside it.
pub fn probe_writable(path: &Path) -> std::io::Result<()> {
    let real = std::fs::canonicalize(path)?;
    refuse_read_only(&std::fs::metadata(&real)?.permissions())?;
    std::fs::OpenOptions::new().append(true).open(&real)?;
    probe_folder(&real)
}

/// [`probe_writable`] for a file that may not exist yet: then its folder must exist and take
/// a new file.
pub fn probe_writable_or_creatable(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(_) => probe_writable(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir {
                if !d.is_dir() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("its folder {} does not exist", d.display()),
                    ));
                }
            }
            probe_folder(path)
        }
        Err(e) => Err(e),
    }
}

fn probe_folder(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("veer");
    let tmp = dir.join(format!(".{name}.veer-probe-{}", std::process::id()));
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

fn write_replacing(
    path: &Path,
    data: &[u8],
    perms: Option<std::fs::Permissions>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    // Fail early (and leave nothing behind) when the file itself is read-only.
    if let Some(p) = &perms {
        refuse_read_only(p)?;
    }
    // Unique per process and call, so concurrent writers never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.veer-tmp-{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Some(p) = perms {
            f.set_permissions(p)?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The `[[routes]]` table named `route`, for editing.
pub fn route_table<'a>(
    doc: &'a mut DocumentMut,
    route: &str,
) -> Result<&'a mut toml_edit::Table, WritebackError> {
    let routes = doc
        .get_mut("routes")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| WritebackError::Edit("the config has no [[routes]]".into()))?;
    routes
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(route))
        .ok_or_else(|| WritebackError::Edit(format!("no route named {route:?}")))
}

/// Set a route's split, keeping the inline-table style when the file uses it.
pub fn set_split(
    doc: &mut DocumentMut,
    route: &str,
    split: &[(String, u32)],
) -> Result<(), WritebackError> {
    let t = route_table(doc, route)?;
    let mut inline = toml_edit::InlineTable::new();
    for (p, w) in split {
        inline.insert(p, toml_edit::Value::from(*w as i64));
    }
    match t.get_mut("split") {
        Some(toml_edit::Item::Table(tab)) => {
            tab.clear();
            for (p, w) in split {
                tab.insert(p, toml_edit::value(*w as i64));
            }
        }
        Some(item) => {
            // Keep the comment that trails the value.
            let decor = item.as_value().map(|v| v.decor().clone());
            let mut v = toml_edit::Value::InlineTable(inline);
            if let Some(d) = decor {
                *v.decor_mut() = d;
            }
            *item = toml_edit::Item::Value(v);
        }
        None => {
            t.insert(
                "split",
                toml_edit::Item::Value(toml_edit::Value::InlineTable(inline)),
            );
        }
    }
    Ok(())
}

/// Set `state` and `step` in a route's `[routes.rollout]` (table or inline), keeping the
/// comments that trail the values, and the progress written beside them (`step_started_ms`,
/// `approval_deadline_ms`, `fingerprint`, `mode`; a key whose value is unset is removed).
pub fn set_rollout_progress(
    doc: &mut DocumentMut,
    route: &str,
    state: super::RolloutState,
    step: usize,
    meta: &super::ProgressMeta,
) -> Result<(), WritebackError> {
    let t = route_table(doc, route)?;
    let ms = |v: Option<u64>| v.map(|v| toml_edit::Value::from(v.min(i64::MAX as u64) as i64));
    let pairs: [(&str, Option<toml_edit::Value>); 6] = [
        ("state", Some(state.as_str().into())),
        ("step", Some((step as i64).into())),
        ("step_started_ms", ms(meta.step_started_ms)),
        ("approval_deadline_ms", ms(meta.approval_deadline_ms)),
        ("fingerprint", meta.fingerprint.as_deref().map(Into::into)),
        ("mode", meta.hotfix.then(|| "hotfix".into())),
    ];
    match t.get_mut("rollout") {
        Some(toml_edit::Item::Table(r)) => {
            for (k, v) in pairs {
                match v {
                    Some(v) => set_value(r.entry(k), v),
                    None => {
                        r.remove(k);
                    }
                }
            }
        }
        Some(toml_edit::Item::Value(toml_edit::Value::InlineTable(r))) => {
            for (k, v) in pairs {
                match v {
                    Some(v) => {
                        r.insert(k, v);
                    }
                    None => {
                        r.remove(k);
                    }
                }
            }
        }
        _ => {
            return Err(WritebackError::Edit(format!(
                "route {route:?} has no [routes.rollout] table"
            )))
        }
    }
    Ok(())
}

/// Replace a value, keeping the comment that trails it.
fn set_value(entry: toml_edit::Entry<'_>, v: toml_edit::Value) {
    match entry {
        toml_edit::Entry::Occupied(mut o) => {
            let item = o.get_mut();
            let mut v = v;
            if let Some(old) = item.as_value() {
                *v.decor_mut() = old.decor().clone();
            }
            *item = toml_edit::Item::Value(v);
        }
        toml_edit::Entry::Vacant(e) => {
            e.insert(toml_edit::Item::Value(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# top\n[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9002\"]\n\n[[routes]]\nname = \"web\"\n[routes.split]  # as a table\nblue = 9  # most\ngreen = 1\n";

    #[test]
    fn set_split_keeps_a_split_table_and_comments() {
        let mut doc: DocumentMut = TEXT.parse().unwrap();
        set_split(&mut doc, "web", &[("blue".into(), 1), ("green".into(), 9)]).unwrap();
        let out = doc.to_string();
        assert!(out.starts_with("# top\n"), "{out}");
        assert!(out.contains("[routes.split]  # as a table"), "{out}");
        let c = Config::parse(Path::new("t.toml"), &out).unwrap();
        assert_eq!(
            c.routes[0].split,
            vec![("blue".into(), 1), ("green".into(), 9)]
        );
    }

    #[test]
    fn prepare_writes_nothing_until_asked_and_restore_puts_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("veer.toml");
        std::fs::write(&path, TEXT).unwrap();
        let edit = prepare_edit(&path, |d| {
            set_split(d, "web", &[("blue".into(), 0), ("green".into(), 1)])
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TEXT);
        edit.write().unwrap();
        assert_ne!(std::fs::read_to_string(&path).unwrap(), TEXT);
        edit.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TEXT);
        // An edit that breaks the config is refused before anything is written.
        let bad = prepare_edit(&path, |d| set_split(d, "web", &[("red".into(), 1)]));
        assert!(matches!(bad, Err(WritebackError::Invalid(_))));
        let missing = prepare_edit(&path, |d| set_split(d, "nope", &[("blue".into(), 1)]));
        assert!(matches!(missing, Err(WritebackError::Edit(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TEXT);
    }
}
