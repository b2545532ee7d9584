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
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    // Fail early (and leave nothing behind) when the file itself is read-only.
    let meta = std::fs::metadata(path)?;
    if meta.permissions().readonly() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "config file is read-only",
        ));
    }
    // Unique per process and call, so concurrent writers never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.veer-tmp-{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(meta.permissions())?;
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
