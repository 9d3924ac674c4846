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
//! - a digest lock file that does not exist is taken by hard-linking `temp/<hex>.lock` to a
//!   lock file this run already holds (one per batch): anyone who opens that path locks the
//!   held inode and waits or fails, exactly as with a lock file of its own, and the name is
//!   removed before the batch lock is released. A crash leaves unlocked multi-name lock files;
//!   the deletable-lock protocol (`lock::lock_deletable`) drops such a name instead of sharing it, and the next run
//!   sweeps them;
//! - temp entries in use are held under `flock` by their owner and are skipped.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use rayon::prelude::*;

use crate::digest::{is_hex64, Digest};
use crate::error::{io_err, IoError};
use crate::fsutil;
use crate::index::file::Db;
use crate::index::{CloudEntry, Entry, OciEntry};
use crate::layout::{BackendLayout, Kind, Layout};
use crate::lock::{self, LockWait};

mod report;

#[cfg(feature = "unstable")]
pub use report::Hook;
pub use report::{Collected, GcOptions, GcReport, SkipReason, Skipped, TempRemoved};

/// Something outside the store that keeps blobs alive: VMs, snapshots, … The embedding VM
/// manager implements it. An error aborts the collection: unknown means in use.
///
/// ```
/// use imgstore::{Digest, GcOptions, PinSource, Store};
///
/// /// The disks of the VMs a manager runs, which must survive `gc` even if their image is removed.
/// struct RunningVms(Vec<Digest>);
///
/// impl PinSource for RunningVms {
///     fn name(&self) -> String {
///         "running VMs".to_owned()
///     }
///     fn pinned(&self) -> Result<Vec<Digest>, Box<dyn std::error::Error + Send + Sync>> {
///         Ok(self.0.clone())
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = tempfile::tempdir()?;
/// let store = Store::open(root.path())?;
/// let vms = RunningVms(vec![Digest::sha256_of(b"a layer in use")]);
/// let report = store.gc(&GcOptions::default(), &[&vms])?;
/// assert!(report.blobs.is_empty()); // an empty store has nothing to collect
/// # Ok(())
/// # }
/// ```
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
    /// An I/O error (listing a directory, removing an entry), with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A lock file could not be taken or removed.
    #[error("digest lock for {}: {source}", path.display())]
    Lock {
        /// The blob (or lock file) concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: lock::Error,
    },
}

/// One directory entry found by the scan.
struct Scanned {
    kind: Kind,
    digest: Digest,
    blob: Option<PathBuf>,
    boot: Option<PathBuf>,
}

impl Scanned {
    /// The path reports show for it: the blob, else the boot dir.
    fn path(&self) -> PathBuf {
        self.blob
            .clone()
            .or_else(|| self.boot.clone())
            .unwrap_or_default()
    }
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
    let scans: Vec<Result<Vec<Scanned>, Error>> = backends
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
    #[cfg(feature = "unstable")]
    if let Some(hook) = &opts.after_mark {
        (hook.0)();
    }

    // Candidates: unreferenced, old enough.
    let candidates: Vec<Scanned> = found
        .into_iter()
        .filter(|f| !live.contains(&f.digest.first32()))
        .collect();
    let grace_cut = now
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let candidates: Vec<(Scanned, u64)> = candidates
        .into_par_iter()
        .filter_map(|f| {
            let (newest, bytes) = age_and_size(&f);
            if newest > grace_cut {
                report.lock().skipped.push(Skipped {
                    path: f.path(),
                    reason: SkipReason::TooNew,
                });
                return None;
            }
            Some((f, bytes))
        })
        .collect();

    // Temp debris, also in runs where no blob is collectable; first, so that stale lock files
    // (which a crashed run may have left as several names of one inode) are gone before the
    // sweep needs those names.
    let temp_cut = now
        .checked_sub(opts.temp_grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    backends
        .par_iter()
        .try_for_each(|b| sweep_temp(b, opts, temp_cut, &report))?;

    // Sweep, a batch at a time: take digest locks (never wait), re-read the indexes, delete.
    if !opts.dry_run {
        for kind in Kind::ALL {
            if candidates.iter().any(|(f, _)| f.kind == kind) {
                fsutil::create_dir_all(&layout.backend(kind).temp_dir())?;
            }
        }
    }
    let mut swept = Ok(());
    for batch in candidates.chunks(BATCH) {
        swept = sweep_batch(layout, opts, batch, &report);
        if swept.is_err() {
            break;
        }
    }
    // One fsync per directory for the whole run, also after a failed batch: a deletion that is
    // lost in a crash only brings back an orphan, which the next run collects, so durability is
    // owed to the report, not to safety.
    if !opts.dry_run && !report.lock().blobs.is_empty() {
        for b in &backends {
            for dir in [b.blobs_dir(), b.boot_root()] {
                if dir.exists() {
                    fsutil::fsync_dir(&dir)?;
                }
            }
        }
    }
    swept?;

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
            .map_err(|e| io_err("listing", dir)(e).into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("listing", dir)(e).into()),
    }
}

fn scan_backend(b: &BackendLayout, report: &Mutex<GcReport>) -> Result<Vec<Scanned>, Error> {
    let kind = b.kind();
    let ext = format!(".{}", kind.blob_ext());
    let (blobs, boots) = rayon::join(|| list_dir(&b.blobs_dir()), || list_dir(&b.boot_root()));
    let mut by_digest: std::collections::HashMap<Digest, Scanned> =
        std::collections::HashMap::new();
    for (entries, is_blob) in [(blobs?, true), (boots?, false)] {
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // blobs/<hex>.<ext>, boot/<hex>
            let stem = if is_blob {
                name.strip_suffix(ext.as_str())
            } else {
                Some(&*name)
            };
            let digest = stem
                .filter(|stem| is_hex64(stem))
                .and_then(|stem| Digest::parse(stem).ok());
            let Some(digest) = digest else {
                report.lock().skipped.push(Skipped {
                    path: entry.path(),
                    reason: SkipReason::UnknownName,
                });
                continue;
            };
            let found = by_digest.entry(digest).or_insert_with(|| Scanned {
                kind,
                digest,
                blob: None,
                boot: None,
            });
            if is_blob {
                found.blob = Some(entry.path());
            } else {
                found.boot = Some(entry.path());
            }
        }
    }
    Ok(by_digest.into_values().collect())
}

/// Key digests named by every index (read without a lock: indexes are replaced by rename).
fn mark(layout: &Layout, opts: &GcOptions) -> Result<HashSet<[u8; 32]>, Error> {
    let quiet = |_: &Path| {};
    let oci = Db::<OciEntry>::new(&layout.backend(Kind::Oci)).read(opts.lock_wait, &quiet)?;
    let cloud =
        Db::<CloudEntry>::new(&layout.backend(Kind::CloudImg)).read(opts.lock_wait, &quiet)?;
    let mut live = HashSet::new();
    for (_, e) in oci.entries() {
        live.extend(e.files().iter().map(|f| f.key.first32()));
    }
    for (_, e) in cloud.entries() {
        live.extend(e.files().iter().map(|f| f.key.first32()));
    }
    Ok(live)
}

/// The newest mtime and the total size of a candidate's blob and boot files.
fn age_and_size(f: &Scanned) -> (SystemTime, u64) {
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

/// How the sweep holds one candidate's digest lock.
enum Held {
    /// Dry run: nobody held it when looked at; nothing is locked.
    Unlocked,
    /// `temp/<hex>.lock` was absent and is now a name of the batch lock inode, which this
    /// collection holds: anyone opening that path locks the batch lock and waits.
    Linked(PathBuf),
    /// The lock file existed (stale, or an ingest just released it): locked on its own.
    Own(lock::LockGuard),
}

/// The lock inode of one batch in one backend: every candidate without a lock file gets a
/// hard link to it, which makes one `link(2)` (and one `unlink(2)`) do what creating, locking,
/// checking and deleting a lock file per candidate would.
fn batch_lock(b: &BackendLayout) -> Result<lock::LockGuard, Error> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = b
        .temp_dir()
        .join(format!("gc.{}.{n}.lock", std::process::id()));
    lock::lock_deletable(&path, LockWait::no_wait(), &|_| {})
        .map_err(|source| Error::Lock { path, source })
}

fn sweep_batch(
    layout: &Layout,
    opts: &GcOptions,
    batch: &[(Scanned, u64)],
    report: &Mutex<GcReport>,
) -> Result<(), Error> {
    let backends: Vec<BackendLayout> = Kind::ALL.iter().map(|k| layout.backend(*k)).collect();
    let backend = |kind: Kind| {
        backends
            .iter()
            .find(|b| b.kind() == kind)
            .expect("every kind has a layout")
    };
    let mut batch_locks = Vec::new();
    if !opts.dry_run {
        for b in &backends {
            if batch.iter().any(|(f, _)| f.kind == b.kind()) {
                batch_locks.push((b.kind(), batch_lock(b)?));
            }
        }
    }
    let batch_lock_of = |kind: Kind| {
        batch_locks
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, g)| g.path())
    };

    // Take the digest locks, never waiting; busy means an ingest of that digest is in flight.
    let locked: Vec<(&Scanned, u64, Held)> = batch
        .par_iter()
        .filter_map(|(f, bytes)| {
            let lock_path = backend(f.kind).digest_lock_path(&f.digest);
            let held = match batch_lock_of(f.kind) {
                None => (!fsutil::is_held(&lock_path)).then_some(Held::Unlocked),
                Some(shared) => match fsutil::link_noclobber(shared, &lock_path) {
                    Ok(true) => Some(Held::Linked(lock_path)),
                    // Exists (or cannot be linked): the plain protocol on that file.
                    Ok(false) | Err(_) => {
                        lock::lock_deletable(&lock_path, LockWait::no_wait(), &|_| {})
                            .ok()
                            .map(Held::Own)
                    }
                },
            };
            if held.is_none() {
                report.lock().skipped.push(Skipped {
                    path: f.path(),
                    reason: SkipReason::Busy,
                });
            }
            held.map(|h| (f, *bytes, h))
        })
        .collect();

    // Re-check under the locks: an ingest that committed since the mark shows up here, and one
    // that has not cannot commit before we release. A failed re-read deletes nothing.
    let live = if locked.is_empty() {
        Ok(HashSet::new())
    } else {
        mark(layout, opts)
    };

    let swept = locked.into_par_iter().map(|(f, bytes, held)| {
        let outcome = match &live {
            Ok(live) => sweep_one(backend(f.kind), opts, f, bytes, live, report),
            Err(_) => Ok(()),
        };
        // Every name given to a lock goes before the lock is released, whatever happened:
        // removing it while held is the lock-then-check protocol (a waiter wakes on an
        // orphan, sees the path changed, and retries).
        let unlocked = match held {
            Held::Unlocked => Ok(()),
            Held::Linked(path) => fsutil::remove_file(&path).map(drop).map_err(Error::from),
            Held::Own(g) => {
                if let Err(e) = g.remove_locked_file() {
                    tracing::warn!("removing digest lock: {e}");
                }
                Ok(())
            }
        };
        outcome.and(unlocked)
    });
    let swept: Result<(), Error> = swept.collect::<Vec<_>>().into_iter().collect();
    for (_, g) in batch_locks {
        if let Err(e) = g.remove_locked_file() {
            tracing::warn!("removing batch lock: {e}");
        }
    }
    live?;
    swept
}

/// Re-check one locked candidate and delete it (or, in a dry run, report it).
fn sweep_one(
    b: &BackendLayout,
    opts: &GcOptions,
    f: &Scanned,
    bytes: u64,
    live: &HashSet<[u8; 32]>,
    report: &Mutex<GcReport>,
) -> Result<(), Error> {
    if live.contains(&f.digest.first32()) {
        report.lock().skipped.push(Skipped {
            path: f.path(),
            reason: SkipReason::Referenced,
        });
        return Ok(());
    }
    if !opts.dry_run {
        // Blob first: a crash in between leaves an orphan boot dir, which the next run collects
        // and a new ingest of the layer replaces. The other order could leave a blob without
        // its boot files, which an ingest would reuse as a layer without a kernel (ingest relies
        // on "a blob that exists has its boot dir").
        if let Some(blob) = &f.blob {
            fsutil::remove_file(blob)?;
        }
        failpoint!("gc.after_delete_blob");
        if let Some(boot) = &f.boot {
            remove_boot_dir(b, boot)?;
        }
        failpoint!("gc.after_delete_boot");
    }
    report.lock().blobs.push(Collected {
        kind: f.kind,
        digest: f.digest,
        bytes,
    });
    Ok(())
}

/// Suffix of a boot dir being deleted, moved into `temp/` first.
const TRASH_SUFFIX: &str = "gc-trash";

/// Remove a boot dir as one step: it is renamed into `temp/` (atomic), then deleted there. A
/// crash part-way through `remove_dir_all` in place would leave a boot dir missing some files,
/// which an ingest of that layer would then find "already published" and reuse.
fn remove_boot_dir(b: &BackendLayout, boot: &Path) -> Result<(), Error> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = boot
        .file_name()
        .map_or_else(|| "boot".into(), |n| n.to_string_lossy().into_owned());
    let trash = b
        .temp_dir()
        .join(format!("{name}.{}.{n}.{TRASH_SUFFIX}", std::process::id()));
    match fsutil::rename_noclobber(boot, &trash) {
        Ok(true) => {
            // The boot dir is gone from boot/ already; leftovers in temp/ are the next run's.
            if let Err(e) = fsutil::remove_dir_all(&trash) {
                tracing::warn!("{e}");
            }
            Ok(())
        }
        Ok(false) => Ok(()),
        // Not on one filesystem (or no renameat2): delete in place.
        Err(_) => fsutil::remove_dir_all(boot).map(drop).map_err(Error::from),
    }
}

fn sweep_temp(
    b: &BackendLayout,
    opts: &GcOptions,
    cut: SystemTime,
    report: &Mutex<GcReport>,
) -> Result<(), Error> {
    let entries = list_dir(&b.temp_dir())?;
    let skip = |path: PathBuf, reason| {
        report.lock().skipped.push(Skipped { path, reason });
    };
    let removed = |path: PathBuf, meta: &fs::Metadata| {
        report.lock().temp.push(TempRemoved {
            path,
            bytes: if meta.is_file() { meta.len() } else { 0 },
        });
    };
    let (locks, others): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .map(|e| e.path())
        .partition(|p| p.extension().is_some_and(|e| e == "lock"));

    // Lock files: a deletable lock nobody holds is debris at any age (taking it proves no
    // ingest uses it, and the lock-then-check protocol lets its holder delete it).
    // Sequential: the sweep may hold one and the same inode under several names.
    for path in locks {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if opts.dry_run {
            if fsutil::is_held(&path) {
                skip(path, SkipReason::InUse);
                continue;
            }
        } else {
            let Ok(g) = lock::lock_deletable(&path, LockWait::no_wait(), &|_| {}) else {
                skip(path, SkipReason::InUse);
                continue;
            };
            if let Err(e) = g.remove_locked_file() {
                tracing::warn!("removing stale lock {}: {e}", path.display());
                continue;
            }
        }
        removed(path, &meta);
    }

    others.into_par_iter().try_for_each(|path| {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return Ok(());
        };
        // A boot dir a crashed collection moved here is debris at any age; everything else
        // gets the grace period.
        let trash = path.extension().is_some_and(|e| e == TRASH_SUFFIX);
        if !trash && meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) > cut {
            return Ok(());
        }
        if fsutil::is_held(&path) {
            skip(path, SkipReason::InUse);
            return Ok(());
        }
        if !opts.dry_run {
            fsutil::remove_any(&path)?;
        }
        removed(path, &meta);
        Ok(())
    })
}
