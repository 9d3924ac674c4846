//! The resume record of a partial download, and the durable checkpoints that write it.
//!
//! A ranged download writes into one preallocated file (`<temp>/<sha256 of URL>.download`) and
//! keeps beside it a small JSON record (`….download.resume`): the URL, the `If-Range` validator,
//! the length and the byte ranges completed. A range enters the record only after an
//! `fdatasync` of the data file that began after its last byte was written, so a record never
//! claims bytes a power loss could turn into zeros. The record is replaced atomically
//! ([`fsutil::write_atomic`]), and it only ever grows, so an older copy is always safe too.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::error::IoError;
use crate::fsutil;

use super::super::Error;

/// Version of the record format.
const RECORD_VERSION: u32 = 1;
/// Checkpoint at least this often while ranges complete ...
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// ... or as soon as this many completed bytes are not yet in the record.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Byte ranges `[start, end)`, sorted, disjoint and never adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Add `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < s || a > e {
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        out.push((s, e));
        out.sort_unstable();
        self.0 = out;
    }

    /// Bytes covered.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    /// The ranges, in order.
    #[must_use]
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// What `[0, length)` still lacks.
    #[must_use]
    pub fn missing(&self, length: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for &(a, b) in &self.0 {
            if a > at {
                out.push((at, a.min(length)));
            }
            at = at.max(b);
        }
        if at < length {
            out.push((at, length));
        }
        out.retain(|(a, b)| a < b);
        out
    }

    /// Whether the ranges are well formed for a file of `length` bytes.
    fn valid(&self, length: u64) -> bool {
        self.0.windows(2).all(|w| w[0].1 < w[1].0)
            && self.0.iter().all(|&(a, b)| a < b && b <= length)
    }
}

/// The resume record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    pub version: u32,
    /// The URL asked for (the key of the partial file is its sha256).
    pub url: String,
    /// The `If-Range` value every range of this download was guarded with.
    pub if_range: String,
    /// The whole length, as every `Content-Range` stated it.
    pub length: u64,
    /// Ranges whose bytes are durable in the data file.
    pub done: RangeSet,
}

impl Record {
    /// Read the record at `path` if it is one for `url` and a data file of its length; any
    /// other state (missing, unreadable, another version, another URL) is "no record".
    #[must_use]
    pub fn load(path: &Path, url: &str, data: &File) -> Option<Record> {
        let bytes = std::fs::read(path).ok()?;
        let r: Record = serde_json::from_slice(&bytes).ok()?;
        let len = data.metadata().ok()?.len();
        (r.version == RECORD_VERSION && r.url == url && r.length == len && r.done.valid(len))
            .then_some(r)
    }
}

struct State {
    done: RangeSet,
    /// Completed bytes not yet in the record.
    unsynced: u64,
    last: Instant,
    finished: bool,
}

/// Tracks completed ranges of one download and writes checkpoints: from its own thread as
/// ranges complete, and from [`checkpoint_all`] when the process is interrupted.
pub struct Tracker {
    file: File,
    data_path: PathBuf,
    record_path: PathBuf,
    url: String,
    if_range: String,
    length: u64,
    state: Mutex<State>,
    wake: Condvar,
    /// Serializes checkpoints (the thread's and an interrupt's).
    writing: Mutex<()>,
}

/// Downloads in flight in this process, for [`checkpoint_all`].
static ACTIVE: Mutex<Vec<Weak<Tracker>>> = Mutex::new(Vec::new());

/// Make every download in flight durable as far as it got and write its record: for a signal
/// handler about to exit, so the next pull resumes instead of starting over.
pub fn checkpoint_all() {
    let live: Vec<Arc<Tracker>> = ACTIVE.lock().iter().filter_map(Weak::upgrade).collect();
    for t in live {
        if let Err(e) = t.checkpoint() {
            tracing::warn!("saving the resume record of {}: {e}", t.url);
        }
    }
}

impl Tracker {
    /// Track a download of `length` bytes into `file`, resuming from `done`.
    pub fn new(
        file: &File,
        data_path: &Path,
        record_path: &Path,
        url: &str,
        if_range: &str,
        length: u64,
        done: RangeSet,
    ) -> Result<Arc<Tracker>, Error> {
        let file = file.try_clone().map_err(|source| {
            Error::Io(IoError::new("duplicating the descriptor of", data_path, source))
        })?;
        let t = Arc::new(Tracker {
            file,
            data_path: data_path.to_path_buf(),
            record_path: record_path.to_path_buf(),
            url: url.to_owned(),
            if_range: if_range.to_owned(),
            length,
            state: Mutex::new(State {
                done,
                unsynced: 0,
                last: Instant::now(),
                finished: false,
            }),
            wake: Condvar::new(),
            writing: Mutex::new(()),
        });
        let mut active = ACTIVE.lock();
        active.retain(|w| w.strong_count() > 0);
        active.push(Arc::downgrade(&t));
        Ok(t)
    }

    /// The ranges completed so far (durable or not).
    pub fn done(&self) -> RangeSet {
        self.state.lock().done.clone()
    }

    /// `[start, end)` is written in full.
    pub fn complete(&self, start: u64, end: u64) {
        let mut s = self.state.lock();
        s.done.insert(start, end);
        s.unsynced += end - start;
        if s.unsynced >= CHECKPOINT_BYTES {
            self.wake.notify_one();
        }
    }

    /// Make the completed ranges durable, then record them.
    pub fn checkpoint(&self) -> Result<(), Error> {
        let _one = self.writing.lock();
        let (done, counted) = {
            let s = self.state.lock();
            (s.done.clone(), s.unsynced)
        };
        // The snapshot is taken before the sync starts: every range in it was fully written
        // by then, so the sync covers it.
        self.file
            .sync_data()
            .map_err(|source| Error::Io(IoError::new("syncing", &self.data_path, source)))?;
        let record = Record {
            version: RECORD_VERSION,
            url: self.url.clone(),
            if_range: self.if_range.clone(),
            length: self.length,
            done,
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        fsutil::write_atomic(&self.record_path, &bytes, 0o600)?;
        let mut s = self.state.lock();
        s.unsynced -= counted.min(s.unsynced);
        s.last = Instant::now();
        Ok(())
    }

    /// Run checkpoints until [`Tracker::finish`]; the download's own thread for it.
    pub fn run(&self) {
        loop {
            let due = {
                let mut s = self.state.lock();
                if s.finished {
                    return;
                }
                let wait = CHECKPOINT_EVERY.saturating_sub(s.last.elapsed());
                if s.unsynced < CHECKPOINT_BYTES && !wait.is_zero() {
                    self.wake.wait_for(&mut s, wait);
                }
                if s.finished {
                    return;
                }
                s.unsynced > 0
                    && (s.unsynced >= CHECKPOINT_BYTES || s.last.elapsed() >= CHECKPOINT_EVERY)
            };
            if due {
                if let Err(e) = self.checkpoint() {
                    // The download goes on; only its resumability suffers.
                    tracing::warn!("checkpoint of {}: {e}", self.url);
                }
            }
        }
    }

    /// Stop the checkpoint thread.
    pub fn finish(&self) {
        self.state.lock().finished = true;
        self.wake.notify_all();
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        ACTIVE.lock().retain(|w| w.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_complement() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 30);
        assert_eq!(r.ranges(), &[(10, 40)]);
        r.insert(0, 5);
        assert_eq!(r.total(), 35);
        assert_eq!(r.missing(50), vec![(5, 10), (40, 50)]);
        assert!(r.valid(40) && !r.valid(39));
        assert_eq!(RangeSet::default().missing(7), vec![(0, 7)]);
    }
}
