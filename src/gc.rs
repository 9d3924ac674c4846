//! Garbage collection (DESIGN.md §9): scan, mark, sweep.
//!
//! Deleting an image only removes index entries; this module reclaims the blobs, boot dirs and
//! temp debris nothing refers to. It never edits an index, never takes a digest lock, and never
//! waits for a download or a conversion.
//!
//! Why it cannot delete live data:
//! - a blob is a candidate only if no index and no pin source names it at mark time, and it is
//!   older than the grace period;
//! - an ingest holds its backend's gc lease (`db/gc.lock`) shared from its reuse-or-publish
//!   decision to its index commit (`store::publish`); cocoon publishes under `images.lock`.
//!   The sweep, one batch at a time, takes the lease of every backend in the batch exclusively
//!   and every index lock (shared: it excludes every writer), re-reads the indexes that changed
//!   since the mark, and only then deletes, without per-blob locks. An ingest that decided
//!   before has committed (the re-read sees it); one that decides after finds the blob gone
//!   and stores it again;
//! - a blob beside which cocoon keeps its lock file (`blobs/<hex>.lock`) is deleted only while
//!   gc holds that lock;
//! - temp entries in use are held under `flock` by their owner and are skipped.
//!
//! A lease still busy after the lock timeout (an ingest stuck in its commit) makes the
//! candidates of that backend `busy` for the rest of the run; nothing waits on a download.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use rayon::prelude::*;

use crate::digest::Digest;
use crate::error::IoError;
use crate::fsutil;
use crate::index::file::{load, Db};
use crate::index::{CloudEntry, Entry, IndexFile, OciEntry};
use crate::layout::{BackendLayout, Kind, Layout};
use crate::lock::{self, LockGuard, Mode};

mod report;
mod scan;
mod temp;

use scan::Scanned;

#[cfg(feature = "unstable")]
pub use report::Hook;
pub use report::{Collected, GcOptions, GcReport, SkipReason, Skipped, TempRemoved};
pub use temp::RESUME_SUFFIX;

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
    /// A lock (gc lease, index lock, cocoon's blob lock) could not be taken.
    #[error("{source}")]
    Lock {
        /// The lock file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: lock::Error,
    },
}

/// How many candidates one batch re-checks and deletes under the leases: an ingest's commit
/// waits for at most one batch.
const BATCH: usize = 2048;

/// Run one collection over `layout`.
pub fn collect(
    layout: &Layout,
    opts: &GcOptions,
    pins: &[&dyn PinSource],
) -> Result<GcReport, Error> {
    let started = Instant::now();
    let now = SystemTime::now();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };

    // Scan: every backend's blobs/ and boot/, in parallel, without locks.
    let backends: Vec<BackendLayout> = Kind::ALL.iter().map(|k| layout.backend(*k)).collect();
    let scans: Vec<Result<_, Error>> = backends.par_iter().map(scan::scan_backend).collect();
    let mut found = Vec::new();
    for s in scans {
        let (f, unknown) = s?;
        found.extend(f);
        report.skipped.extend(unknown);
    }

    // Mark.
    let mut live = Live::mark(layout, opts)?;
    for pin in pins {
        let digests = pin.pinned().map_err(|source| Error::Pin {
            name: pin.name(),
            source,
        })?;
        live.pinned.extend(digests.into_iter().map(|d| d.first32()));
    }
    #[cfg(feature = "unstable")]
    if let Some(hook) = &opts.after_mark {
        (hook.0)();
    }

    // Each backend's blobs/, opened once: one `fstatat` and one `unlinkat` per blob.
    let blob_dirs = backends
        .iter()
        .map(|b| fsutil::Dir::open(&b.blobs_dir()))
        .collect::<Result<Vec<_>, _>>()?;

    // Unreferenced at mark time, in scan order (see `scan::scan_backend`).
    let unreferenced: Vec<Scanned> = found
        .into_iter()
        .filter(|f| !live.contains(&f.digest.first32()))
        .collect();

    // Temp debris, also in runs where no blob is collectable.
    let temp_cut = now
        .checked_sub(opts.temp_grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let temps: Vec<Result<_, Error>> = backends
        .par_iter()
        .map(|b| temp::sweep_temp(b, opts, temp_cut))
        .collect();
    for t in temps {
        let t = t?;
        report.temp.extend(t.removed);
        report.skipped.extend(t.skipped);
    }

    // Judge and sweep, a batch at a time: stat, leases and index locks, re-check, delete.
    let grace_cut = now
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut sweep = Sweep {
        layout,
        opts,
        live,
        busy: Vec::new(),
        blob_dirs: &blob_dirs,
    };
    let swept = sweep.all(&unreferenced, grace_cut, &mut report);
    // One fsync per directory for the whole run, also after a failed batch: a deletion that is
    // lost in a crash only brings back an orphan, which the next run collects, so durability is
    // owed to the report, not to safety.
    if !opts.dry_run && !report.blobs.is_empty() {
        for b in &backends {
            for dir in [b.blobs_dir(), b.boot_root()] {
                if dir.exists() {
                    fsutil::fsync_dir(&dir)?;
                }
            }
        }
    }
    swept?;

    report.blobs.sort();
    report.temp.sort();
    report.skipped.sort();
    report.bytes_freed = report.blobs.iter().map(|c| c.bytes).sum();
    report.temp_bytes_freed = report.temp.iter().map(|t| t.bytes).sum();
    report.duration = started.elapsed();
    report.duration_ms = u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// What an index file was when it was read: a replaced file (every writer renames a new one into
/// place) has another inode, an edited one another size or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn seen(path: &Path) -> Option<Seen> {
    std::fs::metadata(path).ok().map(|m| Seen {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Key digests of every file the entries of one index need.
fn keys_of<E: Entry>(idx: &IndexFile<E>, out: &mut HashSet<[u8; 32]>) {
    for (_, e) in idx.entries() {
        out.extend(e.files().iter().map(|f| f.key.first32()));
    }
}

/// The live set: key digests named by each index (with what each file was when read) and by
/// the pin sources.
struct Live {
    pinned: HashSet<[u8; 32]>,
    /// Per backend, in `Kind::ALL` order.
    indexed: Vec<(Option<Seen>, HashSet<[u8; 32]>)>,
}

impl Live {
    /// Read every index (without a lock: indexes are replaced by rename).
    fn mark(layout: &Layout, opts: &GcOptions) -> Result<Self, Error> {
        let quiet = |_: &Path| {};
        let mut indexed = Vec::new();
        for kind in Kind::ALL {
            let b = layout.backend(kind);
            // Seen before the read: a file replaced in between reads as changed later.
            let before = seen(&b.index_path());
            let mut keys = HashSet::new();
            match kind {
                Kind::Oci => keys_of(
                    &Db::<OciEntry>::new(&b).read(opts.lock_wait, &quiet)?,
                    &mut keys,
                ),
                Kind::CloudImg => keys_of(
                    &Db::<CloudEntry>::new(&b).read(opts.lock_wait, &quiet)?,
                    &mut keys,
                ),
            }
            indexed.push((before, keys));
        }
        Ok(Self {
            pinned: HashSet::new(),
            indexed,
        })
    }

    /// Re-read the indexes that changed since they were last read. The caller holds every index
    /// lock, so no writer is between its load and its rename.
    fn refresh(&mut self, layout: &Layout) -> Result<(), Error> {
        for (kind, (was, keys)) in Kind::ALL.iter().zip(&mut self.indexed) {
            let b = layout.backend(*kind);
            let now = seen(&b.index_path());
            if now.is_some() && now == *was {
                continue;
            }
            keys.clear();
            match kind {
                Kind::Oci => keys_of(&load::<OciEntry>(&b.index_path())?.index, keys),
                Kind::CloudImg => keys_of(&load::<CloudEntry>(&b.index_path())?.index, keys),
            }
            *was = now;
        }
        Ok(())
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.pinned.contains(key) || self.indexed.iter().any(|(_, k)| k.contains(key))
    }
}

/// The state of the sweep across batches.
struct Sweep<'a> {
    layout: &'a Layout,
    opts: &'a GcOptions,
    live: Live,
    /// Backends whose lease stayed busy: their candidates are skipped for the rest of the run.
    busy: Vec<Kind>,
    /// `blobs/` of each backend, in `Kind::ALL` order.
    blob_dirs: &'a [Option<fsutil::Dir>],
}

/// Position of `kind` in `Kind::ALL`.
fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

/// What became of one candidate.
enum Outcome {
    Collected(Collected),
    Skipped(Skipped),
}

impl Sweep<'_> {
    /// Judge and sweep `unreferenced` in batches (see `collect`): one `fstatat` per candidate
    /// (age and size), read for a batch just before its leases, in two halves on two threads
    /// (lookups share the directory's lock); then the batch's leases, and its deletes in two
    /// halves (see `batch`). Stats overlapping the deletes (a stat thread a batch ahead)
    /// were measured slower (docs/design.md §10).
    fn all(
        &mut self,
        unreferenced: &[Scanned],
        grace_cut: SystemTime,
        report: &mut GcReport,
    ) -> Result<(), Error> {
        let dirs = self.blob_dirs;
        for chunk in unreferenced.chunks(BATCH) {
            let judged: Vec<(SystemTime, u64)> = chunk
                .par_iter()
                .with_min_len(BATCH / 2)
                .map(|f| scan::age_and_size(f, dirs[kind_index(f.kind)].as_ref()))
                .collect();
            let mut candidates = Vec::with_capacity(chunk.len());
            for (f, (newest, bytes)) in chunk.iter().zip(judged) {
                if newest <= grace_cut {
                    candidates.push((f, bytes));
                } else {
                    report.skipped.push(Skipped {
                        path: f.path(),
                        reason: SkipReason::TooNew,
                    });
                }
            }
            self.batch(&candidates, report)?;
        }
        Ok(())
    }

    /// Take the gc lease of `kind` exclusively (dry run: only look whether it is free).
    fn lease(&mut self, kind: Kind) -> Result<Option<LockGuard>, Error> {
        let path = self.layout.backend(kind).gc_lease_path();
        if self.opts.dry_run {
            if fsutil::is_held(&path) {
                self.busy.push(kind);
            }
            return Ok(None);
        }
        match lock::lock_file(&path, Mode::Exclusive, self.opts.lock_wait, &|_| {}) {
            Ok(g) => Ok(Some(g)),
            Err(lock::Error::WouldBlock { .. } | lock::Error::Timeout { .. }) => {
                self.busy.push(kind);
                Ok(None)
            }
            Err(source) => Err(Error::Lock { path, source }),
        }
    }

    fn batch(&mut self, batch: &[(&Scanned, u64)], report: &mut GcReport) -> Result<(), Error> {
        // Leases first, then every index lock (the lock order of docs/design.md §2).
        let mut held = Vec::new();
        for kind in Kind::ALL {
            if !self.busy.contains(&kind) && batch.iter().any(|(f, _)| f.kind == kind) {
                held.extend(self.lease(kind)?);
            }
        }
        if !self.opts.dry_run {
            for kind in Kind::ALL {
                let path = self.layout.backend(kind).index_lock_path();
                let g = lock::lock_file(&path, Mode::Shared, self.opts.lock_wait, &|_| {})
                    .map_err(|source| Error::Lock { path, source })?;
                held.push(g);
            }
        }
        self.live.refresh(self.layout)?;
        #[cfg(feature = "unstable")]
        if let Some(hook) = &self.opts.while_leased {
            (hook.0)();
        }
        let (live, busy, opts, dirs) = (&self.live, &self.busy, self.opts, self.blob_dirs);
        // Two halves of the batch on two threads: an unlink holds the directory's lock only
        // while it edits the directory; freeing the inode (evict) runs after it, so a second
        // thread overlaps that work (gc_compare.sh on an idle machine: 1.00 s against 1.73 s
        // on one thread, 100,000 blobs; docs/design.md §10). The outcomes keep batch order.
        let outcomes: Vec<Result<Outcome, Error>> = batch
            .par_iter()
            .with_min_len(BATCH / 2)
            .map(|(f, bytes)| {
                let skip = |reason| {
                    Ok(Outcome::Skipped(Skipped {
                        path: f.path(),
                        reason,
                    }))
                };
                if busy.contains(&f.kind) {
                    return skip(SkipReason::Busy);
                }
                if live.contains(&f.digest.first32()) {
                    return skip(SkipReason::Referenced);
                }
                // cocoon's lock beside the blob: held while cocoon publishes or pins it.
                let _cocoon = match &f.cocoon_lock {
                    Some(p) => match lock::try_existing(p) {
                        Ok(Some(g)) => Some(g),
                        Ok(None) => None,
                        Err(lock::Error::WouldBlock { .. }) => return skip(SkipReason::Busy),
                        Err(source) => {
                            return Err(Error::Lock {
                                path: p.clone(),
                                source,
                            })
                        }
                    },
                    None => None,
                };
                if !opts.dry_run {
                    delete(self.layout, f, dirs[kind_index(f.kind)].as_ref())?;
                }
                Ok(Outcome::Collected(Collected {
                    kind: f.kind,
                    digest: f.digest,
                    bytes: *bytes,
                }))
            })
            .collect();
        drop(held);
        for o in outcomes {
            match o? {
                Outcome::Collected(c) => report.blobs.push(c),
                Outcome::Skipped(s) => report.skipped.push(s),
            }
        }
        Ok(())
    }
}

/// Delete one candidate: blob first, then its boot dir. A crash in between leaves an orphan boot
/// dir, which the next run collects and a new ingest of the layer replaces; the other order could
/// leave a blob without its boot files, which an ingest would reuse as a layer without a kernel
/// (ingest relies on "a blob that exists has its boot dir").
fn delete(layout: &Layout, f: &Scanned, blobs: Option<&fsutil::Dir>) -> Result<(), Error> {
    if let Some(name) = &f.blob {
        match blobs {
            Some(dir) => dir.remove_file(name)?,
            None => fsutil::remove_file(&f.path())?,
        };
    }
    failpoint!("gc.after_delete_blob");
    if let Some(boot) = &f.boot {
        remove_boot_dir(&layout.backend(f.kind), boot)?;
    }
    failpoint!("gc.after_delete_boot");
    Ok(())
}

/// Remove a boot dir as one step: it is renamed into `temp/` (atomic), then deleted there. A
/// crash part-way through `remove_dir_all` in place would leave a boot dir missing some files,
/// which an ingest of that layer would then find "already published" and reuse.
fn remove_boot_dir(b: &BackendLayout, boot: &Path) -> Result<(), Error> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = boot
        .file_name()
        .map_or_else(|| "boot".into(), |n| n.to_string_lossy().into_owned());
    let trash = b.temp_dir().join(format!(
        "{name}.{}.{n}.{}",
        std::process::id(),
        temp::TRASH_SUFFIX
    ));
    let _ = fsutil::create_dir_all(&b.temp_dir());
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
