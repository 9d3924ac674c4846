//! What a caller gives a collection and what it gets back: options, the report, and the test
//! hook. Plain data; the work is in the parent module.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::digest::Digest;
use crate::layout::Kind;
use crate::lock::LockWait;

/// A callback run by [`collect`](super::collect) at a fixed step; tests use it to change the store at that
/// moment (deterministic races).
#[doc(hidden)]
#[derive(Clone)]
#[cfg(feature = "unstable")]
pub struct Hook(pub std::sync::Arc<dyn Fn() + Send + Sync>);

#[cfg(feature = "unstable")]
impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
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
    /// Test seam: run after the mark and before the sweep.
    #[doc(hidden)]
    #[cfg(feature = "unstable")]
    pub after_mark: Option<Hook>,
    /// Test seam: run in every batch while the leases and index locks are held, before deleting.
    #[doc(hidden)]
    #[cfg(feature = "unstable")]
    pub while_leased: Option<Hook>,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            temp_grace: Duration::from_secs(3600),
            dry_run: false,
            lock_wait: LockWait::timeout(Duration::from_secs(60)),
            #[cfg(feature = "unstable")]
            after_mark: None,
            #[cfg(feature = "unstable")]
            while_leased: None,
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

/// A temp entry that was removed, or would be in a dry run (a directory counts the files in it).
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
    /// An ingest is committing: its backend's gc lease stayed busy for the lock timeout, or
    /// cocoon holds the blob's lock.
    Busy,
    /// An index named it when re-checked under the lease and index locks.
    Referenced,
    /// The name is not `<64 hex>.<ext>`: not ours to judge.
    UnknownName,
    /// A temp entry held by a live process.
    InUse,
}

impl SkipReason {
    /// The reason in words, for people.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::TooNew => "younger than the grace period",
            SkipReason::Busy => "an ingest is committing it",
            SkipReason::Referenced => "an image added during this run uses it",
            SkipReason::UnknownName => "not a name imgstore writes; left alone",
            SkipReason::InUse => "in use by a running process",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
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
    /// Bytes freed by temp entries (files, and every file under a directory).
    pub temp_bytes_freed: u64,
    /// Entries left alone, with reasons.
    pub skipped: Vec<Skipped>,
    /// Wall time of the run in milliseconds.
    pub duration_ms: u64,
    /// Wall time of the run.
    #[serde(skip)]
    pub duration: Duration,
}
