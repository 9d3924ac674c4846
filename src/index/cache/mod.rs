//! `db/images.idx`: a checksummed lookup cache derived from `db/images.json`, read block by block.
//!
//! The JSON stays the source of truth (and the only file cocoon knows); the cache lets the boot
//! path resolve a query with a few hash probes or a binary search over the cache's blocks and decode
//! one entry, instead of parsing every entry (docs/design.md §4). It holds sorted and hashed
//! tables of keys, canonical references and binary image IDs; each key points at its entry's
//! bytes inside the JSON file, which a lookup reads with one `pread` and checks against the ID.
//!
//! Using it can never change an answer: [`Cache::open`] rejects a cache unless the index file
//! it holds open has exactly the `fstat` the cache was built from (device, inode, size, mtime and
//! ctime in ns), those times are older than a filesystem-clock reading taken before the index
//! was read (git's racily-clean rule), the generation token at the start of the file is the one
//! it saw, and the header (magic, version, kind, `db/` identity, section bounds, checksum) is
//! sound. Every later read is bounds-checked and verifies the checksums of the blocks it
//! touches. Any failure is an [`Error`] and the caller answers from the JSON.
//!
//! This module reads and writes only `images.idx` and its temp files in one `db/` directory
//! and reads `images.json`; it takes no locks (callers hold or try the index lock).

pub mod build;
pub mod format;
pub mod read;
pub mod resolve;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::IoError;

pub use build::{build, Clock, Origin};
pub use format::Source;
#[cfg(feature = "unstable")]
pub use format::Time;
pub use read::Cache;
#[cfg(feature = "unstable")]
pub use read::Record;
#[cfg(feature = "unstable")]
pub use read::Row;
pub use resolve::resolve;
#[cfg(feature = "unstable")]
pub use resolve::Resolved;

/// The cache file beside an index file.
pub const FILE_NAME: &str = "images.idx";

/// Why a cache was not built or not used. None of these is an error for the user: the caller
/// answers from the JSON.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cache is missing, stale, racily clean, foreign or malformed.
    #[error("index cache {} not used: {reason}", path.display())]
    Rejected {
        /// The cache file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A cache could not be built from these bytes.
    #[error("index cache not built: {0}")]
    Build(&'static str),
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// `db/images.idx` beside `index_path`.
#[must_use]
pub fn path_for(index_path: &Path) -> PathBuf {
    index_path.with_file_name(FILE_NAME)
}

/// Read a whole index file through one descriptor, with the `fstat` of that descriptor taken
/// before and after the read; retried while they differ (a writer editing it in place).
/// `Ok(None)` if the file does not exist.
pub fn read_source(path: &Path) -> Result<Option<(Vec<u8>, Source)>, Error> {
    let io = |action: &'static str| {
        move |source| Error::Io(IoError::new(action, path.to_path_buf(), source))
    };
    for _ in 0..8 {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("opening index")(e)),
        };
        let before = Source::of(&f.metadata().map_err(io("inspecting index"))?);
        let mut raw = Vec::with_capacity(before.size as usize);
        f.read_to_end(&mut raw).map_err(io("reading index"))?;
        let after = Source::of(&f.metadata().map_err(io("inspecting index"))?);
        if before == after && after.size == raw.len() as u64 {
            return Ok(Some((raw, after)));
        }
    }
    Err(Error::Build("the index kept changing while it was read"))
}

/// Device and inode of `db/`, the store identity a cache records.
pub fn db_identity(db: &Path) -> Result<(u64, u64), Error> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(db).map_err(|source| Error::Io(IoError::new("inspecting", db.to_path_buf(), source)))?;
    Ok((m.dev(), m.ino()))
}

/// A fresh generation token for the start of an index file: 32 lowercase hex digits, unique
/// per write (process, time, counter).
#[must_use]
pub fn new_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let hex = h.finalize().to_hex();
    hex[..32].to_owned()
}

/// What [`rebuild`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rebuilt<E> {
    /// The cache was written; here is the index it describes.
    Written(crate::index::IndexFile<E>),
    /// The index changed within the clock granule before it was read, so a cache of it could
    /// not be trusted and none was written; here is the index as read.
    Racy(crate::index::IndexFile<E>),
    /// There is no index file (an empty index needs no cache).
    Missing,
}

/// Read the index at `json` and rebuild its cache from exactly those bytes and their `fstat`.
///
/// The caller must hold the exclusive index lock (held or won by a try-lock), so that no other
/// imgstore process replaces the cache meanwhile. Fails without writing anything when `db/` is
/// not writable or the index does not parse.
pub fn rebuild<E: crate::index::Entry>(
    kind: crate::Kind,
    json: &Path,
) -> Result<Rebuilt<E>, Error> {
    let db = json.parent().unwrap_or(Path::new("."));
    // The clock is read before the index is: a later change gets a later time.
    let clock = Clock::take(db)?;
    let Some((raw, source)) = read_source(json)? else {
        return Ok(Rebuilt::Missing);
    };
    let index: crate::index::IndexFile<E> =
        serde_json::from_slice(&raw).map_err(|_| Error::Build("the index does not parse"))?;
    if source.racy(clock.now) {
        return Ok(Rebuilt::Racy(index));
    }
    let origin = Origin {
        kind,
        source,
        clock: clock.now,
        db: db_identity(db)?,
    };
    let bytes = build(&origin, &raw, &index)?;
    clock.publish(&bytes, &path_for(json))?;
    Ok(Rebuilt::Written(index))
}

/// Longest a writer waits for the filesystem clock to pass its own write (one granule on a
/// filesystem with fine timestamps); on a coarser one the next reader rebuilds instead.
const WRITER_CLOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(25);

/// Refresh the cache right after a writer replaced the index at `json` with `written`, which
/// is `index` serialized. The caller holds the exclusive index lock.
///
/// Returns whether a cache was published. None is when `db/` is not writable, or the clock did
/// not pass the write within `WRITER_CLOCK_WAIT`, or the file no longer holds `written`
/// (someone outside the lock changed it): a reader rebuilds the cache later.
pub fn refresh_after_write<E: crate::index::Entry>(
    kind: crate::Kind,
    json: &Path,
    written: &[u8],
    index: &crate::index::IndexFile<E>,
) -> Result<bool, Error> {
    let db = json.parent().unwrap_or(Path::new("."));
    let mut clock = Clock::take(db)?;
    let start = std::time::Instant::now();
    loop {
        let now = std::fs::metadata(json).map_err(|source| Error::Io(IoError::new("inspecting index", json.to_path_buf(), source)))?;
        if !Source::of(&now).racy(clock.now) {
            break;
        }
        if start.elapsed() > WRITER_CLOCK_WAIT {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        clock.retake()?;
    }
    // Read back after the clock: the bytes and the fstat then belong together.
    let Some((raw, source)) = read_source(json)? else {
        return Ok(false);
    };
    if raw != written || source.racy(clock.now) {
        return Ok(false);
    }
    let origin = Origin {
        kind,
        source,
        clock: clock.now,
        db: db_identity(db)?,
    };
    let bytes = build(&origin, &raw, index)?;
    clock.publish(&bytes, &path_for(json))?;
    Ok(true)
}
