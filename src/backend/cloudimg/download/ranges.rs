//! N connections fetching ranges into one file at their offsets, and the hasher that follows
//! the contiguous prefix behind them.
//!
//! Workers take the lowest piece not yet taken, so the completed prefix advances about N times
//! as fast as one connection and the out-of-order window stays near N pieces. Each buffer a
//! worker writes goes on to the hasher: it hashes buffers that arrive in order at once, keeps
//! those ahead of the prefix in memory up to [`WINDOW`] bytes, and reads back from the file
//! (the page cache, just written) only what it could not keep. sha256 and blake3 need the bytes
//! in order; they run on two threads.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use sha2::Digest as _;

use crate::digest::{Digest, Sums};

use super::super::http::{status_error, Client};
use super::super::Error;
use super::probe;
use super::resume::Tracker;

/// Bytes read from the network per write and per hasher message.
const BUF: usize = 1 << 20;
/// Bytes of out-of-order buffers the hasher keeps in memory before it reads them back instead.
const WINDOW: usize = 64 << 20;
/// Failed attempts in a row (without a byte of progress) before a piece fails the download.
const ATTEMPTS: u32 = 5;

/// Why the ranged download stopped.
#[derive(Debug)]
pub enum Failure {
    /// The resource changed under the download (`If-Range` failed, or another `ETag` came back).
    Changed,
    /// Anything else; the partial file and its record stay for a resume.
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Error(e)
    }
}

/// A response already open for the first piece (the probe's).
pub struct Opened {
    /// The piece it answers.
    pub piece: (u64, u64),
    /// The response (206, checked).
    pub response: ureq::http::Response<ureq::Body>,
}

/// One ranged download.
pub struct Job<'a> {
    /// The client (shared keep-alive pool).
    pub client: &'a Client,
    /// The URL as given, for messages.
    pub url: &'a str,
    /// The URL ranges are asked from (after the probe's redirects).
    pub source: &'a str,
    /// The `If-Range` guard of every request.
    pub if_range: &'a str,
    /// The whole length.
    pub length: u64,
    /// The preallocated data file.
    pub file: &'a File,
    /// Its path, for messages.
    pub data_path: &'a std::path::Path,
    /// Completed ranges and checkpoints.
    pub tracker: &'a Tracker,
    /// Connections at once.
    pub connections: usize,
    /// Called with the bytes present so far (done before plus fetched now).
    pub progress: &'a (dyn Fn(u64) + Sync),
}

enum Msg {
    /// Bytes at this offset, already written to the file.
    Mem(u64, Vec<u8>),
    /// Bytes at `[offset, offset + len)` are in the file; read them back.
    OnDisk(u64, u64),
}

/// Fetch `pieces` (the first may already be open in `first`) while hashing `[0, length)`.
/// Ranges the tracker already holds are hashed from the file.
pub fn run(job: &Job<'_>, pieces: Vec<(u64, u64)>, first: Option<Opened>) -> Result<Sums, Failure> {
    let queue = Mutex::new(pieces.into_iter().collect::<VecDeque<_>>());
    let first = Mutex::new(first);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Failure>> = Mutex::new(None);
    let present = AtomicU64::new(job.tracker.done().total());
    let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
    let (pool_tx, pool_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    for &(a, b) in job.tracker.done().ranges() {
        let _ = tx.send(Msg::OnDisk(a, b - a));
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(|| hash_in_order(job, &rx, &pool_tx, &stop));
        let workers = job.connections.max(1);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let tx = tx.clone();
            let (queue, first, stop, failure, present, pool_rx) =
                (&queue, &first, &stop, &failure, &present, &pool_rx);
            handles.push(s.spawn(move || {
                let w = Worker {
                    job,
                    tx,
                    pool: pool_rx,
                    stop,
                    present,
                };
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let opened = first.lock().take();
                    let piece = match &opened {
                        Some(o) => o.piece,
                        None => match queue.lock().pop_front() {
                            Some(p) => p,
                            None => return,
                        },
                    };
                    if let Err(f) = w.piece(piece, opened.map(|o| o.response)) {
                        stop.store(true, Ordering::SeqCst);
                        failure.lock().get_or_insert(f);
                        return;
                    }
                }
            }));
        }
        drop(tx);
        for h in handles {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        let sums = hasher.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        if let Some(f) = failure.lock().take() {
            return Err(f);
        }
        sums.map_err(Failure::Error)
    })
}

struct Worker<'a, 'j> {
    job: &'a Job<'j>,
    tx: Sender<Msg>,
    pool: &'a Receiver<Vec<u8>>,
    stop: &'a AtomicBool,
    present: &'a AtomicU64,
}

impl Worker<'_, '_> {
    /// Fetch `[start, end)`, resuming inside the piece after a dropped connection.
    fn piece(
        &self,
        (start, end): (u64, u64),
        mut opened: Option<ureq::http::Response<ureq::Body>>,
    ) -> Result<(), Failure> {
        let job = self.job;
        let mut at = start;
        let mut failures = 0u32;
        while at < end {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let response = match opened.take() {
                Some(r) => Ok(r),
                None => self.request(at, end),
            };
            let before = at;
            let result = response.and_then(|r| self.body(r, &mut at, end));
            match result {
                Ok(()) => {}
                Err(Failure::Error(e)) if e.is_transient() => {
                    failures = if at > before { 1 } else { failures + 1 };
                    if failures >= ATTEMPTS {
                        return Err(Failure::Error(e));
                    }
                    tracing::debug!("range {at}-{end} of {}: {e}; retrying", job.url);
                    std::thread::sleep(Duration::from_millis(100 << failures.min(6)));
                }
                Err(f) => return Err(f),
            }
        }
        job.tracker.complete(start, end);
        Ok(())
    }

    /// Ask for `[at, end)` guarded by `If-Range`; a 206 for exactly that range is the only
    /// acceptable answer.
    fn request(&self, at: u64, end: u64) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let job = self.job;
        let range = format!("bytes={at}-{}", end - 1);
        let response = job
            .client
            .get(job.source, &[("Range", &range), ("If-Range", job.if_range)])?;
        check_piece(job, &response, at, end)?;
        Ok(response)
    }

    /// Copy a checked 206 body into the file at `*at`, feeding the hasher.
    fn body(
        &self,
        response: ureq::http::Response<ureq::Body>,
        at: &mut u64,
        end: u64,
    ) -> Result<(), Failure> {
        let job = self.job;
        let mut reader = response.into_body().into_reader();
        while *at < end {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let want = usize::try_from(end - *at).unwrap_or(BUF).min(BUF);
            let mut buf = self.pool.try_recv().unwrap_or_default();
            buf.resize(want, 0);
            let mut n = 0;
            while n < want {
                match reader.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.keep(&mut buf, n, at)?;
                        return Err(Error::from_io(e, job.url).into());
                    }
                }
            }
            let short = n < want;
            self.keep(&mut buf, n, at)?;
            if short {
                return Err(Error::Truncated {
                    url: job.url.to_owned(),
                    expected: end,
                    got: *at,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Write the first `n` bytes of `buf` at `*at` and hand them to the hasher.
    fn keep(&self, buf: &mut Vec<u8>, n: usize, at: &mut u64) -> Result<(), Failure> {
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        self.job
            .file
            .write_all_at(buf, *at)
            .map_err(|source| Error::Sink {
                url: self.job.url.to_owned(),
                source,
            })?;
        let _ = self.tx.send(Msg::Mem(*at, std::mem::take(buf)));
        *at += n as u64;
        let total = self.present.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        (self.job.progress)(total);
        Ok(())
    }
}

/// A range response must be a 206 for exactly `[at, end)` of a resource of the same length
/// and validator; a 200 means `If-Range` failed: the resource changed.
fn check_piece(
    job: &Job<'_>,
    response: &ureq::http::Response<ureq::Body>,
    at: u64,
    end: u64,
) -> Result<(), Failure> {
    let status = response.status().as_u16();
    match status {
        206 => {}
        // If-Range failed (a new representation), or the length shrank under us.
        200 | 416 => return Err(Failure::Changed),
        _ => return Err(status_error(job.url, response.status()).into()),
    }
    if !probe::still_same(job.if_range, response.headers()) {
        return Err(Failure::Changed);
    }
    match probe::content_range(response.headers()) {
        Some(cr) if cr.first == at && cr.end == end && cr.length == Some(job.length) => Ok(()),
        Some(cr) if cr.length.is_some_and(|l| l != job.length) => Err(Failure::Changed),
        _ => Err(Error::BadRange {
            url: job.url.to_owned(),
            asked: format!("bytes {at}-{}/{}", end - 1, job.length),
            got: probe::content_range_text(response.headers()),
        }
        .into()),
    }
}

/// Hash `[0, length)` in order from the workers' buffers (or the file), on this thread (sha256)
/// and one more (blake3). Returns early, with an error, when the workers stop.
fn hash_in_order(
    job: &Job<'_>,
    rx: &Receiver<Msg>,
    pool: &Sender<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<Sums, Error> {
    let (b3_tx, b3_rx) = crossbeam_channel::bounded::<Arc<Vec<u8>>>(8);
    std::thread::scope(|s| {
        let b3 = s.spawn(move || {
            let mut h = blake3::Hasher::new();
            for chunk in b3_rx {
                h.update(&chunk);
                // Back to a worker once sha256 is done with it too.
                if let Ok(buf) = Arc::try_unwrap(chunk) {
                    let _ = pool.send(buf);
                }
            }
            Digest::blake3(*h.finalize().as_bytes())
        });
        let mut sha = sha2::Sha256::new();
        let mut next = 0u64;
        let mut pending: BTreeMap<u64, Msg> = BTreeMap::new();
        let mut held = 0usize;
        let mut feed = |bytes: Vec<u8>, next: &mut u64| {
            sha.update(&bytes);
            *next += bytes.len() as u64;
            let _ = b3_tx.send(Arc::new(bytes));
        };
        let read_back = |from: u64, len: u64| -> Result<Vec<u8>, Error> {
            let mut buf = vec![0u8; len as usize];
            job.file
                .read_exact_at(&mut buf, from)
                .map_err(|source| {
                    Error::Io(crate::error::IoError::new("reading back", job.data_path, source))
                })?;
            Ok(buf)
        };
        let result = loop {
            if next >= job.length {
                break Ok(());
            }
            // Everything that now continues the prefix.
            while let Some(entry) = pending.first_entry() {
                if *entry.key() > next {
                    break;
                }
                let (off, msg) = entry.remove_entry();
                match msg {
                    Msg::Mem(_, bytes) => {
                        held -= bytes.len();
                        let skip = (next - off) as usize;
                        if skip < bytes.len() {
                            feed(bytes[skip..].to_vec(), &mut next);
                        }
                    }
                    Msg::OnDisk(_, len) => {
                        let end = off + len;
                        while next < end {
                            let n = (end - next).min(4 << 20);
                            match read_back(next, n) {
                                Ok(b) => feed(b, &mut next),
                                Err(e) => return Err(e),
                            }
                        }
                    }
                }
            }
            if next >= job.length {
                break Ok(());
            }
            let Ok(msg) = rx.recv() else {
                break Err(());
            };
            match msg {
                Msg::Mem(off, bytes) if off == next => feed(bytes, &mut next),
                Msg::Mem(off, bytes) if held + bytes.len() <= WINDOW => {
                    held += bytes.len();
                    pending.insert(off, Msg::Mem(off, bytes));
                }
                Msg::Mem(off, bytes) => {
                    let len = bytes.len() as u64;
                    pending.insert(off, Msg::OnDisk(off, len));
                }
                Msg::OnDisk(off, len) => {
                    pending.insert(off, Msg::OnDisk(off, len));
                }
            }
        };
        drop(b3_tx);
        let blake3 = b3.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        if result.is_err() {
            stop.store(true, Ordering::SeqCst);
            return Err(Error::Http {
                url: job.url.to_owned(),
                cause: "the download stopped early".to_owned(),
                transient: true,
            });
        }
        Ok(Sums {
            sha256: Digest::sha256(sha.finalize().into()),
            blake3,
            size: job.length,
        })
    })
}
