//! Loading and saving `images.json`: atomic, durable, no rewrite on no-op, corrupt files reported.
//!
//! A missing index is an empty one. A corrupt one is an error naming the file and byte offset and
//! is never replaced. Every write keeps the previous good file as `images.json.bak`, then replaces
//! `images.json` through [`fsutil::write_atomic`]. This module touches only `db/` of one backend
//! (the index, its `.bak`, its lock file and leftovers of its own interrupted writes); it never
//! looks at blobs, boot files or `temp/`.

use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::IoError;
use crate::fsutil;
use crate::index::cache;
use crate::index::schema::{Entry, IndexFile};
use crate::layout::BackendLayout;
use crate::lock::{self, LockGuard, LockWait, Mode};

/// Mode of `images.json`, as cocoon writes it.
const INDEX_MODE: u32 = 0o644;

/// An index load, save or update failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The index file is not valid JSON or does not match the schema. It was left untouched.
    #[error(
        "corrupt index {} at byte {offset} (line {line}, column {column}): {message}; \
         it was left untouched (the previous good version, if any, is images.json.bak beside it)",
        path.display()
    )]
    Corrupt {
        /// The index file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based byte column of the error (0: before the line's first byte).
        column: usize,
        /// Byte offset of the error from the start of the file.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The index could not be serialized (an entry's own `Serialize` failed).
    #[error("serializing index {}: {source}", path.display())]
    Serialize {
        /// The index file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Taking the index lock failed.
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// The closure given to `Db::update` gave up; nothing was written. Build it with
    /// [`Error::abort`] and get the cause back with `downcast` on the box.
    #[error("index update aborted: {0}")]
    Abort(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Abort a `Db::update` with a domain error; the index is not written.
    pub fn abort(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Abort(e.into())
    }
}

/// A loaded index plus the exact bytes it came from (`None` if the file was missing).
#[derive(Debug, Clone)]
pub struct Loaded<E> {
    /// The parsed index; edit it, then [`save`].
    pub index: IndexFile<E>,
    raw: Option<Vec<u8>>,
}

impl<E> Loaded<E> {
    /// Whether the file existed when loaded.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn existed(&self) -> bool {
        self.raw.is_some()
    }
}

/// Load `path`; a missing file is an empty index, a corrupt one is [`Error::Corrupt`].
/// Never modifies anything.
pub fn load<E: Entry>(path: &Path) -> Result<Loaded<E>, Error> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                index: IndexFile::default(),
                raw: None,
            })
        }
        Err(source) => {
            return Err(Error::Io(IoError::new("reading index", path, source)))
        }
    };
    let index = serde_json::from_slice(&raw).map_err(|e| corrupt(path, &raw, &e))?;
    Ok(Loaded {
        index,
        raw: Some(raw),
    })
}

pub(super) fn corrupt(path: &Path, raw: &[u8], e: &serde_json::Error) -> Error {
    let (line, column) = (e.line(), e.column());
    let line_start = if line <= 1 {
        0
    } else {
        raw.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .nth(line - 2)
            .map_or(raw.len(), |(i, _)| i + 1)
    };
    // serde_json counts columns in bytes, 1-based, pointing at the byte that failed.
    let offset = (line_start + column.saturating_sub(1)).min(raw.len());
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    Error::Corrupt {
        path: path.to_path_buf(),
        line,
        column,
        offset: offset as u64,
        message,
    }
}

/// The index without its generation token, as every imgstore version serializes it.
#[derive(serde::Serialize)]
#[serde(bound = "")]
struct Plain<'a, E: Entry> {
    images: &'a std::collections::BTreeMap<String, Option<E>>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

fn serialize<E: Entry>(index: &IndexFile<E>, path: &Path) -> Result<Vec<u8>, Error> {
    let plain = Plain {
        images: &index.images,
        extra: &index.extra,
    };
    let mut bytes = serde_json::to_vec(&plain).map_err(|source| Error::Serialize {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// `plain` with a fresh generation token as its first key (see [`cache`]).
fn with_token(plain: &[u8]) -> Vec<u8> {
    let token = cache::new_token();
    let mut out = Vec::with_capacity(plain.len() + 64);
    out.extend_from_slice(format!("{{\"{}\":\"{token}\",", cache::format::TOKEN_KEY).as_bytes());
    out.extend_from_slice(plain.get(1..).unwrap_or_default());
    out
}

/// `raw` without a leading generation token.
fn without_token(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let probe = cache::format::TOKEN_PROBE;
    match (cache::format::token_of(raw), raw.get(probe)) {
        (Some(_), Some(b',')) => {
            let mut out = Vec::with_capacity(raw.len());
            out.push(b'{');
            out.extend_from_slice(&raw[probe + 1..]);
            out.into()
        }
        _ => raw.into(),
    }
}

/// Whether writing `new` would change what `loaded` came from (generation tokens aside).
fn changed<E: Entry>(loaded: &Loaded<E>, new: &[u8], path: &Path) -> Result<bool, Error> {
    let Some(raw) = &loaded.raw else {
        // A missing file and an empty index mean the same: do not create the file for nothing.
        return Ok(!(loaded.index.images.is_empty() && loaded.index.extra.is_empty()));
    };
    if *without_token(raw) == *new {
        return Ok(false);
    }
    // Formatted differently (hand-edited, other writer)? Compare what it means to us.
    let Ok(before) = serde_json::from_slice::<IndexFile<E>>(raw) else {
        return Ok(true);
    };
    Ok(serialize(&before, path)? != new)
}

/// Save `loaded.index` to `path` if it differs from what was loaded; returns whether it wrote.
/// `guard` must be the exclusive index lock, held since the load. The previous file is kept as
/// `images.json.bak`; the new one replaces it atomically and durably (mode 0644).
#[cfg(feature = "unstable")]
pub fn save<E: Entry>(loaded: &Loaded<E>, path: &Path, guard: &LockGuard) -> Result<bool, Error> {
    Ok(save_bytes(loaded, path, guard)?.is_some())
}

/// [`save`], returning the bytes written (`None`: nothing to write).
fn save_bytes<E: Entry>(
    loaded: &Loaded<E>,
    path: &Path,
    guard: &LockGuard,
) -> Result<Option<Vec<u8>>, Error> {
    assert_eq!(
        guard.mode(),
        Mode::Exclusive,
        "saving {} needs the exclusive index lock",
        path.display()
    );
    let plain = serialize(&loaded.index, path)?;
    if !changed(loaded, &plain, path)? {
        return Ok(None);
    }
    let bytes = with_token(&plain);
    if loaded.raw.is_some() {
        let backup = backup_path(path);
        // A writer killed between these two steps leaves the backup linked to the current file;
        // linking again would be a no-op rename that strands its temp link.
        if !same_inode(path, &backup) {
            match fsutil::link_replace(path, &backup) {
                Ok(()) => {}
                // Removed behind our back since the load: nothing to keep.
                Err(e) if e.io().kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    failpoint!("index.before_write");
    fsutil::write_atomic(path, &bytes, INDEX_MODE)?;
    failpoint!("index.after_rename");
    Ok(Some(bytes))
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `images.json.bak` beside `images.json`.
#[must_use]
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    path.with_file_name(name)
}

/// Whether `name` is a temp file left in `db/` by an interrupted write of `index_name`
/// (see [`fsutil::write_atomic`] and [`fsutil::link_replace`]).
fn is_stale_temp(name: &str, index_name: &str) -> bool {
    let Some(rest) = name.strip_suffix(".tmp") else {
        return false;
    };
    rest.strip_prefix('.')
        .and_then(|r| r.strip_prefix(index_name))
        .is_some_and(|r| r.starts_with('.'))
        || rest.starts_with(".link.")
}

/// The index of one backend: `db/images.json` guarded by `db/images.lock`.
#[derive(Debug, Clone)]
pub struct Db<E> {
    kind: crate::Kind,
    dir: PathBuf,
    index_path: PathBuf,
    lock_path: PathBuf,
    entry: PhantomData<fn() -> E>,
}

impl<E: Entry> Db<E> {
    /// The index of `backend` (nothing is opened or created).
    #[must_use]
    pub fn new(backend: &BackendLayout) -> Self {
        Self {
            kind: backend.kind(),
            dir: backend.db_dir(),
            index_path: backend.index_path(),
            lock_path: backend.index_lock_path(),
            entry: PhantomData,
        }
    }

    /// `db/images.json`.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// `db/images.lock`.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// `db/images.idx`.
    #[must_use]
    pub fn cache_path(&self) -> PathBuf {
        cache::path_for(&self.index_path)
    }

    /// Read the index. No lock is taken: every writer (imgstore and cocoon) replaces the file by
    /// an atomic rename, so a reader sees one whole version, and a read-only store or a lock
    /// file the caller may not open does not stop it. A store without `db/` is empty.
    pub fn read(&self, _wait: LockWait, _on_wait: &dyn Fn(&Path)) -> Result<IndexFile<E>, Error> {
        Ok(load(&self.index_path)?.index)
    }

    /// The cache of this index, if it exists and is fresh (see [`cache::Cache::open`]);
    /// `Ok(None)` if there is no index file.
    pub fn cache(&self) -> Result<Option<cache::Cache>, cache::Error> {
        cache::Cache::open(self.kind, &self.index_path, &self.cache_path(), &self.dir)
    }

    /// Read the index for a lookup: with `rebuild`, a reader that finds the cache missing or
    /// stale rebuilds it as [`Db::read_rebuilding`] does.
    pub fn read_for_lookup(&self, rebuild: bool) -> Result<IndexFile<E>, Error> {
        if rebuild && self.cache().is_err() {
            return self.read_rebuilding();
        }
        Ok(load(&self.index_path)?.index)
    }

    /// Read the index for a reader that found no usable cache, and rebuild the cache from the
    /// same bytes if this process can: it must win the index lock without waiting (one
    /// rebuilder; a busy lock, a lock file it may not open or a read-only `db/` just skip the
    /// rebuild). Never waits.
    pub fn read_rebuilding(&self) -> Result<IndexFile<E>, Error> {
        let quiet = |_: &Path| {};
        if let Ok(_guard) = lock::lock_file(
            &self.lock_path,
            Mode::Exclusive,
            LockWait::no_wait(),
            &quiet,
        ) {
            match cache::rebuild::<E>(self.kind, &self.index_path) {
                Ok(cache::Rebuilt::Written(index) | cache::Rebuilt::Racy(index)) => {
                    return Ok(index)
                }
                Ok(cache::Rebuilt::Missing) => return Ok(IndexFile::default()),
                // Not writable, or not parseable: the plain load says what is wrong, if anything.
                Err(_) => {}
            }
        }
        Ok(load(&self.index_path)?.index)
    }

    /// Read-modify-write under the exclusive lock: load, run `f`, save if anything changed.
    /// If `f` fails (use [`Error::abort`] for domain errors) nothing is written.
    pub fn update<T>(
        &self,
        wait: LockWait,
        on_wait: &dyn Fn(&Path),
        f: impl FnOnce(&mut IndexFile<E>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.update_locked(wait, on_wait, |idx, _| f(idx))
    }

    /// [`Db::update`] whose closure also gets the held lock, to update a file the same lock
    /// guards (`db/sources.json`) in the same critical section.
    pub fn update_locked<T>(
        &self,
        wait: LockWait,
        on_wait: &dyn Fn(&Path),
        f: impl FnOnce(&mut IndexFile<E>, &LockGuard) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let guard = lock::lock_file(&self.lock_path, Mode::Exclusive, wait, on_wait)?;
        self.remove_stale_temps()?;
        let mut loaded = load(&self.index_path)?;
        let out = f(&mut loaded.index, &guard)?;
        if let Some(bytes) = save_bytes(&loaded, &self.index_path, &guard)? {
            // The index is committed; a cache that cannot be refreshed is only slower reads.
            if let Err(e) =
                cache::refresh_after_write(self.kind, &self.index_path, &bytes, &loaded.index)
            {
                tracing::debug!("{e}");
            }
        }
        drop(guard);
        Ok(out)
    }

    /// Remove temp files of writes killed midway. Safe only under the exclusive lock: every
    /// writer of this index holds it while its temp file exists.
    fn remove_stale_temps(&self) -> Result<(), Error> {
        let index_name = self
            .index_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Io(IoError::new("listing index directory", self.dir.clone(), source)))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if is_stale_temp(&name.to_string_lossy(), &index_name) {
                fsutil::remove_file(&entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temp_names() {
        assert!(is_stale_temp(".images.json.123.4.ab.tmp", "images.json"));
        assert!(is_stale_temp(".link.123.4.ab.tmp", "images.json"));
        assert!(!is_stale_temp("images.json", "images.json"));
        assert!(!is_stale_temp("images.json.bak", "images.json"));
        assert!(!is_stale_temp("images.lock", "images.json"));
        assert!(!is_stale_temp(".images.jsonx.tmp", "images.json"));
    }

    #[test]
    fn offsets_count_bytes_across_lines() {
        let raw = b"{\"images\":\n{\"a\":@}}\n";
        let e = serde_json::from_slice::<serde_json::Value>(raw).unwrap_err();
        let Error::Corrupt { offset, line, .. } = corrupt(Path::new("x"), raw, &e) else {
            panic!("not corrupt");
        };
        assert_eq!(line, 2);
        assert_eq!(raw[offset as usize], b'@');
    }
}
