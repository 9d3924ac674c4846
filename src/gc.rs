//! Garbage collection (DESIGN.md §9): scan, mark, sweep.
//!
//! Deleting an image only removes index entries; this module reclaims the blobs, boot dirs and
//! temp debris nothing refers to. It never edits an index and never blocks an ingest: digest
//! locks are only tried, never waited for.
//!
//! Why it cannot delete live data:
//! - a blob is a candidate only if no index and no pin source names it at mark time, and it is
//!   older than the grace period;
//! - before deleting, the sweep holds the blob's digest lock (an ingest holds it from "check
//!   cache" to "commit"), then re-reads every index: an ingest that committed after the mark is
//!   seen there, and one that has not committed cannot start its commit while the lock is held;
//! - temp entries in use are held under `flock` by their owner and are skipped.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rayon::prelude::*;
use serde::Serialize;

use crate::digest::{is_hex64, Digest};
use crate::fsutil;
use crate::index::file::Db;
use crate::index::{CloudEntry, OciEntry};
use crate::lock::{self, LockWait};
use crate::store::{BackendLayout, Kind, Layout};

/// Something outside the store that keeps blobs alive: VMs, snapshots, … The embedding VM
/// manager implements it. An error aborts the collection: unknown means in use.
pub trait PinSource: Sync {
    /// A short name for reports and errors.
    fn name(&self) -> String;
    /// Key digests of blobs in use (layer digests for oci, content sums for cloudimg).
    fn pinned(&self) -> Result<Vec<Digest>, Box<dyn std::error::Error + Send + Sync>>;
}

/// Why a collection failed; nothing was deleted before the failure was known, except what the
/// report of an earlier batch lists.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pin source failed, so nothing is collected.
    #[error("pin source {name} failed, nothing collected: {source}")]
    Pin {
        /// The pin source.
        name: String,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An index could not be read.
    #[error(transparent)]
    Index(#[from] crate::index::file::Error),
    /// Listing a directory failed.
    #[error("listing {}: {source}", path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A filesystem change failed.
    #[error(transparent)]
    Fs(#[from] fsutil::Error),
}

/// Options of one collection.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced blobs younger than this (by mtime) are kept. Default: 1 hour.
    pub grace: Duration,
    /// Temp entries younger than this are kept. Default: 1 hour.
    pub temp_grace: Duration,
    /// Report only; delete nothing.
    pub dry_run: bool,
    /// How long to wait for the index locks while marking.
    pub lock_wait: LockWait,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            temp_grace: Duration::from_secs(3600),
            dry_run: false,
            lock_wait: LockWait::timeout(Duration::from_secs(60)),
        }
    }
}

/// A blob (and its boot dir) that was collected, or would be in a dry run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Collected {
    /// Backend.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Key digest.
    pub digest: Digest,
    /// Bytes freed (blob plus boot files).
    pub bytes: u64,
}

/// A temp entry that was removed, or would be in a dry run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct TempRemoved {
    /// The entry.
    pub path: PathBuf,
    /// Bytes freed.
    pub bytes: u64,
}

/// Why an entry was left alone.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Younger than the grace period.
    TooNew,
    /// Its digest lock is held: an ingest is in flight.
    Busy,
    /// An index named it when re-checked under the digest lock.
    Referenced,
    /// The name is not `<64 hex>.<ext>`: not ours to judge.
    UnknownName,
    /// A temp entry held by a live process.
    InUse,
}

/// An entry left alone, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// The entry.
    pub path: PathBuf,
    /// Why.
    pub reason: SkipReason,
}

/// What a collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// True if nothing was deleted.
    pub dry_run: bool,
    /// Blobs collected.
    pub blobs: Vec<Collected>,
    /// Bytes freed by blobs and their boot files.
    pub bytes_freed: u64,
    /// Temp entries removed.
    pub temp: Vec<TempRemoved>,
    /// Entries left alone, with reasons.
    pub skipped: Vec<Skipped>,
    /// Wall time of the run in milliseconds.
    pub duration_ms: u64,
}

/// One directory entry found by the scan.
struct Found {
    kind: Kind,
    digest: Digest,
    blob: Option<PathBuf>,
    boot: Option<PathBuf>,
}

/// How many candidates are locked and re-checked against a fresh index read at once.
const BATCH: usize = 2048;

/// Run one collection over `layout`.
pub fn collect(
    layout: &Layout,
    opts: &GcOptions,
    pins: &[&dyn PinSource],
) -> Result<GcReport, Error> {
    let started = Instant::now();
    let now = SystemTime::now();
    let report = Mutex::new(GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    });

    // Scan: every backend's blobs/, boot/ and temp/, in parallel, without locks.
    let backends: Vec<BackendLayout> = Kind::ALL.iter().map(|k| layout.backend(*k)).collect();
    let scans: Vec<Result<Vec<Found>, Error>> = backends
        .par_iter()
        .map(|b| scan_backend(b, &report))
        .collect();
    let mut found = Vec::new();
    for s in scans {
        found.extend(s?);
    }

    // Mark.
    let mut live = mark(layout, opts)?;
    for pin in pins {
        let digests = pin.pinned().map_err(|source| Error::Pin {
            name: pin.name(),
            source,
        })?;
        live.extend(digests.into_iter().map(|d| d.first32()));
    }

    // Candidates: unreferenced, old enough.
    let candidates: Vec<Found> = found
        .into_iter()
        .filter(|f| !live.contains(&f.digest.first32()))
        .collect();
    let grace_cut = now
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let candidates: Vec<(Found, u64)> = candidates
        .into_par_iter()
        .filter_map(|f| {
            let (newest, bytes) = age_and_size(&f);
            if newest > grace_cut {
                report.lock().skipped.push(Skipped {
                    path: f
                        .blob
                        .clone()
                        .or_else(|| f.boot.clone())
                        .unwrap_or_default(),
                    reason: SkipReason::TooNew,
                });
                return None;
            }
            Some((f, bytes))
        })
        .collect();

    // Sweep, a batch at a time: take digest locks (never wait), re-read the indexes, delete.
    for batch in candidates.chunks(BATCH) {
        sweep_batch(layout, opts, batch, &report)?;
    }

    // Temp debris, also in runs where no blob is collectable.
    let temp_cut = now
        .checked_sub(opts.temp_grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    backends
        .par_iter()
        .try_for_each(|b| sweep_temp(b, opts, temp_cut, &report))?;

    let mut report = report.into_inner();
    report.blobs.sort();
    report.temp.sort();
    report.skipped.sort();
    report.bytes_freed = report.blobs.iter().map(|c| c.bytes).sum();
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

fn list_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, Error> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::List {
                path: dir.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::List {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn scan_backend(b: &BackendLayout, report: &Mutex<GcReport>) -> Result<Vec<Found>, Error> {
    let kind = b.kind();
    let ext = format!(".{}", kind.blob_ext());
    let (blobs, boots) = rayon::join(|| list_dir(&b.blobs_dir()), || list_dir(&b.boot_root()));
    let mut by_digest: std::collections::HashMap<Digest, Found> = std::collections::HashMap::new();
    for entry in blobs? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let digest = name
            .strip_suffix(&ext)
            .filter(|stem| is_hex64(stem))
            .and_then(|stem| Digest::parse(stem).ok());
        let Some(digest) = digest else {
            report.lock().skipped.push(Skipped {
                path: entry.path(),
                reason: SkipReason::UnknownName,
            });
            continue;
        };
        by_digest
            .entry(digest)
            .or_insert_with(|| Found {
                kind,
                digest,
                blob: None,
                boot: None,
            })
            .blob = Some(entry.path());
    }
    for entry in boots? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(digest) = is_hex64(&name).then(|| Digest::parse(&name).ok()).flatten() else {
            report.lock().skipped.push(Skipped {
                path: entry.path(),
                reason: SkipReason::UnknownName,
            });
            continue;
        };
        by_digest
            .entry(digest)
            .or_insert_with(|| Found {
                kind,
                digest,
                blob: None,
                boot: None,
            })
            .boot = Some(entry.path());
    }
    Ok(by_digest.into_values().collect())
}

/// Key digests named by every index, read under shared locks.
fn mark(layout: &Layout, opts: &GcOptions) -> Result<HashSet<[u8; 32]>, Error> {
    let quiet = |_: &Path| {};
    let oci = Db::<OciEntry>::new(&layout.backend(Kind::Oci)).read(opts.lock_wait, &quiet)?;
    let cloud =
        Db::<CloudEntry>::new(&layout.backend(Kind::CloudImg)).read(opts.lock_wait, &quiet)?;
    let mut live = HashSet::new();
    for (_, e) in oci.entries() {
        live.extend(e.layers.iter().map(|l| l.digest.first32()));
        live.insert(e.kernel_layer.first32());
        live.insert(e.initrd_layer.first32());
    }
    for (_, e) in cloud.entries() {
        live.insert(e.content_sum.first32());
    }
    Ok(live)
}

/// The newest mtime and the total size of a candidate's blob and boot files.
fn age_and_size(f: &Found) -> (SystemTime, u64) {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut bytes = 0;
    let mut visit = |m: &fs::Metadata| {
        newest = newest.max(m.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        if m.is_file() {
            bytes += m.len();
        }
    };
    if let Some(Ok(m)) = f.blob.as_deref().map(fs::symlink_metadata) {
        visit(&m);
    }
    if let Some(boot) = &f.boot {
        if let Ok(m) = fs::symlink_metadata(boot) {
            visit(&m);
        }
        for e in fs::read_dir(boot).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                visit(&m);
            }
        }
    }
    (newest, bytes)
}

fn sweep_batch(
    layout: &Layout,
    opts: &GcOptions,
    batch: &[(Found, u64)],
    report: &Mutex<GcReport>,
) -> Result<(), Error> {
    // Take the digest locks; busy means an ingest of that digest is in flight.
    let locked: Vec<(&Found, u64, Option<lock::LockGuard>)> = batch
        .par_iter()
        .filter_map(|(f, bytes)| {
            let b = layout.backend(f.kind);
            let lock_path = b.digest_lock_path(&f.digest);
            let guard = if opts.dry_run {
                if fsutil::is_held(&lock_path) {
                    None
                } else {
                    return Some((f, *bytes, None));
                }
            } else {
                if let Err(e) = fsutil::create_dir_all(&b.temp_dir()) {
                    tracing::warn!("{e}");
                }
                lock::lock_deletable(&lock_path, LockWait::no_wait(), &|_| {}).ok()
            };
            if let Some(g) = guard {
                Some((f, *bytes, Some(g)))
            } else {
                report.lock().skipped.push(Skipped {
                    path: f
                        .blob
                        .clone()
                        .or_else(|| f.boot.clone())
                        .unwrap_or_default(),
                    reason: SkipReason::Busy,
                });
                None
            }
        })
        .collect();
    if locked.is_empty() {
        return Ok(());
    }

    // Re-check under the locks: an ingest that committed since the mark shows up here.
    let live = mark(layout, opts)?;

    let results: Vec<Result<(), Error>> = locked
        .into_par_iter()
        .map(|(f, bytes, guard)| {
            let path = f
                .blob
                .clone()
                .or_else(|| f.boot.clone())
                .unwrap_or_default();
            if live.contains(&f.digest.first32()) {
                report.lock().skipped.push(Skipped {
                    path,
                    reason: SkipReason::Referenced,
                });
                return Ok(());
            }
            if !opts.dry_run {
                // Boot files first: a crash in between leaves an orphan blob, which the next
                // run collects, never a blob whose boot files vanished while referenced.
                if let Some(boot) = &f.boot {
                    fsutil::remove_dir_all(boot)?;
                }
                crate::failpoint::hit("gc.after_delete_boot");
                if let Some(blob) = &f.blob {
                    fsutil::remove_file(blob)?;
                }
            }
            crate::failpoint::hit("gc.after_delete_blob");
            report.lock().blobs.push(Collected {
                kind: f.kind,
                digest: f.digest,
                bytes,
            });
            if let Some(g) = guard {
                if let Err(e) = g.remove_locked_file() {
                    tracing::warn!("removing digest lock: {e}");
                }
            }
            Ok(())
        })
        .collect();
    if !opts.dry_run {
        for kind in Kind::ALL {
            let b = layout.backend(kind);
            for dir in [b.blobs_dir(), b.boot_root()] {
                if dir.exists() {
                    fsutil::fsync_dir(&dir)?;
                }
            }
        }
    }
    results.into_iter().collect()
}

fn sweep_temp(
    b: &BackendLayout,
    opts: &GcOptions,
    cut: SystemTime,
    report: &Mutex<GcReport>,
) -> Result<(), Error> {
    let entries = list_dir(&b.temp_dir())?;
    entries.par_iter().try_for_each(|entry| {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return Ok(());
        };
        if meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) > cut {
            return Ok(());
        }
        let is_lock = path.extension().is_some_and(|e| e == "lock");
        let skip = |reason| {
            report.lock().skipped.push(Skipped {
                path: path.clone(),
                reason,
            });
        };
        if is_lock {
            // A digest lock nobody holds: take it (never wait) and delete it while held.
            if opts.dry_run {
                if fsutil::is_held(&path) {
                    skip(SkipReason::InUse);
                    return Ok(());
                }
            } else {
                let Ok(g) = lock::lock_deletable(&path, LockWait::no_wait(), &|_| {}) else {
                    skip(SkipReason::InUse);
                    return Ok(());
                };
                if let Err(e) = g.remove_locked_file() {
                    tracing::warn!("removing stale lock {}: {e}", path.display());
                    return Ok(());
                }
            }
        } else {
            if fsutil::is_held(&path) {
                skip(SkipReason::InUse);
                return Ok(());
            }
            if !opts.dry_run {
                fsutil::remove_any(&path)?;
            }
        }
        report.lock().temp.push(TempRemoved {
            path,
            bytes: if meta.is_file() { meta.len() } else { 0 },
        });
        Ok(())
    })
}
