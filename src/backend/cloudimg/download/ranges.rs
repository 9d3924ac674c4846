//! N connections fetching ranges into one file at their offsets, the writer behind them, and
//! the hasher that follows the contiguous prefix behind the writer.
//!
//! Workers take the lowest piece not yet taken, so the completed prefix advances about N times
//! as fast as one connection and the out-of-order window stays near N pieces. Each buffer a
//! worker reads goes to the writer thread ([`super::sink`]: direct I/O at its offset), which
//! marks a piece complete once all its bytes are written and passes the buffers on to the
//! hasher: it hashes buffers that arrive in order at once, keeps those ahead of the prefix in
//! memory up to [`WINDOW`] bytes, and reads back from the file only what it could not keep.
//! sha256 and blake3 need the bytes in order; they run on two threads.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use sha2::Digest as _;

use crate::digest::{Digest, Sums};

use super::super::http::{status_error, Client};
use super::super::Error;
use super::probe;
use super::resume::Tracker;
use super::sink::{self, Buf, Chunk, Written, ALIGN, WRITERS};

/// Bytes read from the network per buffer (per write and per hasher message). 1 MiB buffers
/// handed between four threads on 2 cores cost more in wake-ups than 4 MiB ones (as measured
/// for `ingest::stage`).
const BUF: usize = 4 << 20;
/// Buffers queued for the writers before the connections wait for them (the disk's pace).
const QUEUED: usize = 8;
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
    pub file: &'a std::fs::File,
    /// Its path, for messages.
    pub data_path: &'a std::path::Path,
    /// Completed ranges and checkpoints.
    pub tracker: &'a Tracker,
    /// Connections at once.
    pub connections: usize,
    /// Called with the bytes present so far (done before plus fetched now).
    pub progress: &'a (dyn Fn(u64) + Sync),
}

/// What the hasher holds for a stretch ahead of the prefix.
enum Ahead {
    /// The bytes, in memory.
    Mem(Chunk),
    /// Bytes at `[offset, offset + len)` are in the file; read them back.
    OnDisk(u64),
}

/// Fetch `pieces` (the first may already be open in `first`) while hashing `[0, length)`.
/// Ranges the tracker already holds are hashed from the file.
pub fn run(job: &Job<'_>, pieces: Vec<(u64, u64)>, first: Option<Opened>) -> Result<Sums, Failure> {
    let queue = Mutex::new(pieces.into_iter().collect::<VecDeque<_>>());
    let first = Mutex::new(first);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Failure>> = Mutex::new(None);
    let resumed = job.tracker.done();
    let present = AtomicU64::new(resumed.total());
    let (write_tx, write_rx) = crossbeam_channel::bounded::<Chunk>(QUEUED);
    let written = Written::default();
    // Bounded too: the hasher never waits for anything but blake3, which waits for nothing.
    let (hash_tx, hash_rx) = crossbeam_channel::bounded::<Chunk>(QUEUED);
    let (pool_tx, pool_rx) = crossbeam_channel::unbounded::<Buf>();
    std::thread::scope(|s| {
        let (stop, failure) = (&stop, &failure);
        let hasher = s.spawn(|| hash_in_order(job, resumed.ranges(), &hash_rx, &pool_tx, stop));
        let mut writers = Vec::with_capacity(WRITERS);
        for _ in 0..WRITERS {
            let (rx, tx, written) = (write_rx.clone(), hash_tx.clone(), &written);
            writers.push(s.spawn(move || {
                if let Err(e) = sink::run(job.file, job.url, job.tracker, written, &rx, &tx) {
                    stop.store(true, Ordering::SeqCst);
                    failure.lock().get_or_insert(Failure::Error(e));
                }
                // Its channel ends close here: once every writer is gone the connections find
                // no one to send to, and the hasher sees the end.
            }));
        }
        drop((write_rx, hash_tx));
        let workers = job.connections.max(1);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let tx = write_tx.clone();
            let (queue, first, present, pool_rx) = (&queue, &first, &present, &pool_rx);
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
        drop(write_tx);
        for h in handles {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        for w in writers {
            if let Err(p) = w.join() {
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
    tx: Sender<Chunk>,
    pool: &'a Receiver<Buf>,
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
            let result = response.and_then(|r| self.body(r, &mut at, (start, end)));
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
        // Complete once the writers have written every byte of it (`sink::Written`).
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

    /// Read a checked 206 body from `*at` to `end` and send it to the writer.
    fn body(
        &self,
        response: ureq::http::Response<ureq::Body>,
        at: &mut u64,
        (start, end): (u64, u64),
    ) -> Result<(), Failure> {
        let job = self.job;
        let mut reader = response.into_body().into_reader();
        while *at < end {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            // A buffer that starts mid-block (after a dropped connection) ends on a block
            // boundary, so the next one can be written directly again.
            let misaligned = (*at % ALIGN as u64) as usize;
            let want = usize::try_from(end - *at).unwrap_or(BUF).min(BUF - misaligned);
            let mut chunk = Chunk::new(self.pool, BUF, *at, (start, end));
            let mut n = 0;
            let mut error = None;
            {
                let room = chunk.room(want);
                while n < want {
                    match reader.read(&mut room[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
            }
            chunk.filled(n);
            self.keep(chunk, at);
            if let Some(e) = error {
                return Err(Error::from_io(e, job.url).into());
            }
            if n < want {
                return Err(Error::Truncated {
                    url: job.url.to_owned(),
                    expected: end,
                    got: *at,
                }
                .into());
            }
        }
        // ureq hands the connection back to its pool only on the read that finds the body
        // ended; without it every piece opened a new connection (a handshake, a resolver
        // thread, a cold receive window). Nothing should follow the range; a body longer
        // than it is simply dropped with its connection.
        let _ = reader.read(&mut [0u8; 1]);
        Ok(())
    }

    /// Send the bytes of `chunk` (read at `*at`) to the writer.
    fn keep(&self, chunk: Chunk, at: &mut u64) {
        let n = chunk.len();
        if n == 0 {
            return;
        }
        self.send(chunk);
        *at += n as u64;
        let total = self.present.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        (self.job.progress)(total);
    }

    /// Hand `msg` to the writer; if it is gone (a write failed and said why), stop.
    fn send(&self, msg: Chunk) {
        if self.tx.send(msg).is_err() {
            self.stop.store(true, Ordering::SeqCst);
        }
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

/// Hash `[0, length)` in order from the written buffers (or the file: `resumed` ranges, and
/// buffers too far ahead to keep), on this thread (sha256) and one more (blake3). Returns
/// early, with an error, when the download stops.
fn hash_in_order(
    job: &Job<'_>,
    resumed: &[(u64, u64)],
    rx: &Receiver<Chunk>,
    pool: &Sender<Buf>,
    stop: &AtomicBool,
) -> Result<Sums, Error> {
    let (b3_tx, b3_rx) = crossbeam_channel::bounded::<Chunk>(8);
    std::thread::scope(|s| {
        let b3 = s.spawn(move || {
            let mut h = blake3::Hasher::new();
            for chunk in b3_rx {
                h.update(chunk.bytes());
                // Back to a worker: sha256 is done with it too.
                let _ = pool.send(chunk.into_buf());
            }
            Digest::blake3(*h.finalize().as_bytes())
        });
        let mut sha = sha2::Sha256::new();
        let mut next = 0u64;
        let mut pending: BTreeMap<u64, Ahead> = resumed
            .iter()
            .map(|&(a, b)| (a, Ahead::OnDisk(b - a)))
            .collect();
        let mut held = 0usize;
        let mut feed = |chunk: Chunk, next: &mut u64| {
            sha.update(chunk.bytes());
            *next += chunk.len() as u64;
            let _ = b3_tx.send(chunk);
        };
        let result = 'hashing: loop {
            // Everything that now continues the prefix.
            while let Some(entry) = pending.first_entry() {
                if *entry.key() > next {
                    break;
                }
                let (off, ahead) = entry.remove_entry();
                match ahead {
                    Ahead::Mem(mut chunk) => {
                        held -= chunk.len();
                        chunk.skip((next - off) as usize);
                        if chunk.len() > 0 {
                            feed(chunk, &mut next);
                        }
                    }
                    Ahead::OnDisk(len) => {
                        let end = off + len;
                        while next < end {
                            let n = (end - next).min(BUF as u64) as usize;
                            match Chunk::read_back(job.file, next, n) {
                                Ok(c) => feed(c, &mut next),
                                Err(source) => {
                                    break 'hashing Err(Some(Error::Io(
                                        crate::error::IoError::new(
                                            "reading back",
                                            job.data_path,
                                            source,
                                        ),
                                    )))
                                }
                            }
                        }
                    }
                }
            }
            if next >= job.length {
                break Ok(());
            }
            let Ok(chunk) = rx.recv() else {
                break Err(None);
            };
            let len = chunk.len();
            if chunk.at == next {
                feed(chunk, &mut next);
            } else if held + len <= WINDOW {
                held += len;
                pending.insert(chunk.at, Ahead::Mem(chunk));
            } else {
                pending.insert(chunk.at, Ahead::OnDisk(len as u64));
                let _ = pool.send(chunk.into_buf());
            }
        };
        drop(b3_tx);
        let blake3 = b3.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        match result {
            Ok(()) => Ok(Sums {
                sha256: Digest::sha256(sha.finalize().into()),
                blake3,
                size: job.length,
            }),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                Err(e.unwrap_or_else(|| Error::Http {
                    url: job.url.to_owned(),
                    cause: "the download stopped early".to_owned(),
                    transient: true,
                }))
            }
        }
    })
}
