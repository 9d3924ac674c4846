//! Digests recorded for the files of entries written by cocoon: `db/legacy-sums.json`.
//!
//! cocoon's index records no digest of the stored bytes, and cocoon rewrites `images.json`
//! dropping every field it does not know, so what `verify --record` learns about those files
//! lives in a file of imgstore's own beside the index, which cocoon never opens. A record is
//! trust on first use: it says what the file held when it was recorded, not that it was right
//! then. Each record carries the identity of the file it was taken from (inode and birth time,
//! or mtime where the filesystem keeps no birth time): a file replaced since (cocoon pulling the
//! layer again after a gc, which may even reuse the inode number) no longer matches its record
//! and is unverifiable again instead of being called corrupt, while bytes changed in place (bit
//! rot, a stray write) are still checked against it. Written like the index: under the
//! exclusive index lock, temp file, fsync, rename, fsync `db/` (docs/design.md §1).
//!
//! This module touches only `db/legacy-sums.json` and its own temp files; it never opens a blob.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Sums;
use crate::error::{io_err, IoError};
use crate::fsutil;
use crate::layout::BackendLayout;
use crate::lock::{self, LockWait, Mode};

/// The file name in `db/`.
pub const FILE_NAME: &str = "legacy-sums.json";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Mode of the file, as the index's.
const MODE: u32 = 0o644;

/// A failure reading or writing the records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is not valid JSON or does not match the format; it was left untouched.
    #[error("corrupt {}: {message}; it was left untouched", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file was written by a newer imgstore, in a format this one does not know.
    #[error(
        "{} has format version {version}; this imgstore knows version {VERSION} (upgrade imgstore)",
        path.display()
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u64,
    },
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Taking the index lock failed.
    #[error(transparent)]
    Lock(#[from] lock::Error),
}

/// Which file a record was taken from: it applies only while the file is still this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Size in bytes (not part of the identity: a file truncated in place is still the file).
    pub size: u64,
    /// Inode number.
    pub ino: u64,
    /// Birth time in nanoseconds since the epoch, where the filesystem keeps one.
    pub born_ns: Option<i128>,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileId {
    /// The identity of the file `meta` describes.
    #[must_use]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let born_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i128::try_from(d.as_nanos()).ok());
        Self {
            size: meta.len(),
            ino: meta.ino(),
            born_ns,
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// What was recorded for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// sha256 of the file's bytes.
    pub sha256: crate::digest::Digest,
    /// blake3 of the file's bytes.
    pub blake3: crate::digest::Digest,
    /// Its size.
    pub size: u64,
    /// Its inode number when recorded.
    pub ino: u64,
    /// Its birth time when recorded (nanoseconds since the epoch), if the filesystem keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_ns: Option<i128>,
    /// Its mtime when recorded (nanoseconds since the epoch); the identity where there is no
    /// birth time.
    pub mtime_ns: i128,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
}

impl Record {
    /// A record of `sums`, taken from the file `id`, now.
    #[must_use]
    pub fn new(sums: Sums, id: FileId) -> Self {
        Self {
            sha256: sums.sha256,
            blake3: sums.blake3,
            size: sums.size,
            ino: id.ino,
            born_ns: id.born_ns,
            mtime_ns: id.mtime_ns,
            recorded_at: crate::index::schema::now_rfc3339(),
        }
    }

    /// Whether the record was taken from the file `id`: the same inode, born at the same time
    /// (or, without birth times, last modified at the same time).
    #[must_use]
    pub fn applies_to(&self, id: &FileId) -> bool {
        self.ino == id.ino
            && match (self.born_ns, id.born_ns) {
                (Some(a), Some(b)) => a == b,
                _ => self.mtime_ns == id.mtime_ns,
            }
    }

    /// The recorded sums.
    #[must_use]
    pub fn sums(&self) -> Sums {
        Sums {
            sha256: self.sha256,
            blake3: self.blake3,
            size: self.size,
        }
    }
}

/// The whole file: `{"version": 1, "files": {"<path in the backend dir>": record}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacySums {
    /// Format version.
    pub version: u64,
    /// Records by the file's path relative to the backend directory (`blobs/<hex>.erofs`,
    /// `boot/<hex>/vmlinuz`, `blobs/<hex>.qcow2`).
    #[serde(default)]
    pub files: BTreeMap<String, Record>,
    /// Top-level fields this version does not know, kept through rewrites.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for LegacySums {
    fn default() -> Self {
        Self {
            version: u64::from(VERSION),
            files: BTreeMap::new(),
            extra: Map::new(),
        }
    }
}

/// `db/legacy-sums.json` of `backend`.
#[must_use]
pub fn path(backend: &BackendLayout) -> PathBuf {
    backend.db_dir().join(FILE_NAME)
}

/// Read the records; a missing file has none. Takes no lock: the file is only ever replaced by
/// rename.
pub fn load(path: &Path) -> Result<LegacySums, Error> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LegacySums::default()),
        Err(source) => return Err(io_err("reading", path)(source).into()),
    };
    // The version first, so a newer format is named as such rather than as corrupt.
    let value: Value = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    match value.get("version").and_then(Value::as_u64) {
        Some(v) if v > u64::from(VERSION) => {
            return Err(Error::Newer {
                path: path.to_path_buf(),
                version: v,
            })
        }
        _ => {}
    }
    serde_json::from_value(value).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Add `records` (replacing older ones of the same files) and drop records of files that no
/// longer exist, under the exclusive index lock of `backend`; the file is replaced atomically
/// and durably, and not written when nothing changed.
pub fn record(
    backend: &BackendLayout,
    records: impl IntoIterator<Item = (String, Record)>,
    wait: LockWait,
    on_wait: &dyn Fn(&Path),
) -> Result<(), Error> {
    let file = path(backend);
    let _guard = lock::lock_file(&backend.index_lock_path(), Mode::Exclusive, wait, on_wait)?;
    remove_stale_temps(&backend.db_dir())?;
    let before = load(&file)?;
    let mut sums = before.clone();
    sums.version = u64::from(VERSION);
    sums.files.extend(records);
    sums.files
        .retain(|rel, _| is_plain_relative(rel) && backend.dir().join(rel).exists());
    if sums == before {
        return Ok(());
    }
    let mut bytes = serde_json::to_vec_pretty(&sums).map_err(|e| Error::Corrupt {
        path: file.clone(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    fsutil::write_atomic(&file, &bytes, MODE)?;
    Ok(())
}

/// A path inside the backend directory: relative, no `..`, no empty components.
fn is_plain_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Remove temp files of writes of this file killed midway ([`fsutil::write_atomic`] names them
/// `.legacy-sums.json.<unique>.tmp`). Safe only under the exclusive index lock, which every
/// writer holds while its temp file exists.
fn remove_stale_temps(db: &Path) -> Result<(), Error> {
    let prefix = format!(".{FILE_NAME}.");
    let entries = match std::fs::read_dir(db) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_err("listing", db)(source).into()),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            fsutil::remove_file(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_apply_to_their_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("blob");
        std::fs::write(&f, b"abc").unwrap();
        let id = FileId::of(&std::fs::metadata(&f).unwrap());
        let mut h = crate::digest::DualHasher::new();
        h.update(b"abc");
        let rec = Record::new(h.finalize(), id);
        let mut sums = LegacySums::default();
        sums.files.insert("blobs/x".into(), rec.clone());
        let text = serde_json::to_string(&sums).unwrap();
        let back: LegacySums = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sums);
        assert!(rec.applies_to(&id));
        // Replaced by rename (a new inode): the record no longer applies.
        let g = dir.path().join("new");
        std::fs::write(&g, b"abc").unwrap();
        std::fs::rename(&g, &f).unwrap();
        assert!(!rec.applies_to(&FileId::of(&std::fs::metadata(&f).unwrap())));
    }

    #[test]
    fn plain_relative_paths() {
        assert!(is_plain_relative("blobs/ab.erofs"));
        assert!(is_plain_relative("boot/ab/vmlinuz"));
        for bad in ["", "/etc/passwd", "../x", "blobs/../../x", "blobs//x", "./x"] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }
}
