//! Downloading a cloud image: a ranged probe, then N guarded ranges into one preallocated file
//! (resumable), or one stream when the server cannot do that safely; and revalidation of a
//! stored copy. The protocol is docs/design.md §3a.
//!
//! - [`probe`]: validators, `Content-Range`, HTTP dates (no I/O);
//! - `ranges`: the workers and the in-order hasher;
//! - `resume`: the resume record and its durable checkpoints.
//!
//! This module writes only the data file and the record it is given (paths chosen by the
//! caller, who also holds the data file's lock); it knows nothing of the store.

pub mod probe;
mod ranges;
mod sink;
pub mod resume;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::digest::Sums;
use crate::error::IoError;

use super::http::{self, status_error, Client, Download};
use super::{Error, Format, Limits};
use probe::Validators;
use ranges::{Failure, Job, Opened};
use resume::{RangeSet, Record, Tracker};

pub use resume::checkpoint_all;

pub use super::http::MAX_CONNECTIONS;
/// Connections per download unless told otherwise.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Bytes the probe asks for: enough to tell the format, little to waste when the server turns
/// out not to support guarded ranges and the file is fetched again as one stream.
const PROBE_LEN: u64 = 64 << 10;
/// Size of the pieces the workers take.
const PIECE: u64 = 16 << 20;
/// Times a download starts over because the file changed under it, before giving up.
const MAX_RESTARTS: u32 = 3;

/// Where a resumable download lives: the data file (opened read-write and locked by the
/// caller) and its record.
#[derive(Debug, Clone, Copy)]
pub struct Partial<'a> {
    /// The data file, locked by the caller.
    pub file: &'a File,
    /// Its path.
    pub path: &'a Path,
    /// The record beside it.
    pub record: &'a Path,
}

/// One download.
pub struct Fetch<'a> {
    /// The http(s) URL.
    pub url: &'a str,
    /// Caps and timeouts.
    pub limits: &'a Limits,
    /// Connections at once (1 ..= [`MAX_CONNECTIONS`]).
    pub connections: usize,
    /// The resumable data file and record.
    pub partial: Partial<'a>,
    /// Validators of a stored copy: ask "changed since?" first.
    pub stored: Option<&'a Validators>,
    /// Called with (bytes present, total if known).
    pub progress: &'a (dyn Fn(u64, Option<u64>) + Sync),
    /// Headers for every request to `url` (a registry's `Authorization`), not sent on after a
    /// redirect.
    pub headers: &'a [(&'a str, &'a str)],
}

/// What a fetch produced.
#[derive(Debug)]
pub enum Fetched {
    /// The stored copy is current (304, or the same strong `ETag`).
    NotModified,
    /// The whole body is in the data file (not yet fsynced), with its sums; the record is gone.
    Complete {
        /// sha256, blake3 and size of the body.
        sums: Sums,
        /// The validators to keep for revalidation.
        validators: Validators,
    },
    /// No guarded ranges here: read the body as one stream (not resumable).
    Stream {
        /// The body.
        download: Download,
        /// The validators to keep for revalidation.
        validators: Validators,
    },
}

/// Download `f.url`: resume the partial file if its record matches the server's validator,
/// else probe and fetch in ranges, or fall back to one stream.
pub fn fetch(f: &Fetch<'_>) -> Result<Fetched, Error> {
    let client = Client::new(f.url, f.limits)?.with_headers(f.headers);
    let connections = f.connections.clamp(1, MAX_CONNECTIONS);
    let mut restarts = 0;
    loop {
        let attempt = match Record::load(f.partial.record, f.url, f.partial.file) {
            Some(record) if f.stored.is_none() => resume(f, &client, connections, &record)?,
            _ => fresh(f, &client, connections)?,
        };
        match attempt {
            Attempt::Done(out) => return Ok(*out),
            Attempt::Changed => {
                restarts += 1;
                discard(f.partial)?;
                if restarts > MAX_RESTARTS {
                    return Err(Error::Unstable {
                        url: f.url.to_owned(),
                        restarts: MAX_RESTARTS,
                    });
                }
                tracing::info!("{} changed during the download; starting over", f.url);
            }
        }
    }
}

enum Attempt {
    Done(Box<Fetched>),
    Changed,
}

/// Forget the partial download: empty the data file, remove the record.
fn discard(p: Partial<'_>) -> Result<(), Error> {
    let _ = crate::fsutil::remove_file(p.record);
    p.file
        .set_len(0)
        .map_err(|source| Error::Io(IoError::new("truncating", p.path, source)))
}

/// Continue a partial download: ask for its first missing piece guarded by the recorded
/// validator; a 206 of the same length proves the resource is unchanged.
fn resume(
    f: &Fetch<'_>,
    client: &Client,
    connections: usize,
    record: &Record,
) -> Result<Attempt, Error> {
    let pieces = pieces(&record.done.missing(record.length));
    let Some(&first) = pieces.first() else {
        // Complete but not yet hashed (a crash right at the end): hash it from the file.
        return ranged(f, client, connections, record, Vec::new(), None, Validators::default());
    };
    let range = format!("bytes={}-{}", first.0, first.1 - 1);
    let response = client.get(f.url, &[("Range", &range), ("If-Range", &record.if_range)])?;
    let validators = Validators::of(response.headers());
    let same = response.status().as_u16() == 206
        && probe::still_same(&record.if_range, response.headers())
        && probe::content_range(response.headers()).is_some_and(|cr| {
            cr.first == first.0 && cr.end == first.1 && cr.length == Some(record.length)
        });
    if !same {
        if !matches!(response.status().as_u16(), 200 | 206 | 416) {
            return Err(status_error(f.url, response.status()));
        }
        return Ok(Attempt::Changed);
    }
    let opened = Opened {
        piece: first,
        response,
    };
    let rest = pieces[1..].to_vec();
    ranged(f, client, connections, record, rest, Some(opened), validators)
}

/// Probe with a small range (and the stored validators, if revalidating), then pick the way.
fn fresh(f: &Fetch<'_>, client: &Client, connections: usize) -> Result<Attempt, Error> {
    discard(f.partial)?;
    let range = format!("bytes=0-{}", PROBE_LEN - 1);
    let mut headers = vec![("Range", range.as_str())];
    if let Some(v) = f.stored {
        headers.extend(v.conditional_headers());
    }
    let response = client.get(f.url, &headers)?;
    let status = response.status().as_u16();
    let validators = Validators::of(response.headers());
    if status == 304 || (matches!(status, 200 | 206) && f.stored.is_some_and(|v| v.same_strong(&validators))) {
        return Ok(Attempt::Done(Box::new(Fetched::NotModified)));
    }
    match status {
        // No ranges: this response is the whole body.
        200 => {
            let download = http::stream(f.url, response, client.limits())?;
            return Ok(Attempt::Done(Box::new(Fetched::Stream {
                download,
                validators,
            })));
        }
        206 => {}
        _ => return Err(status_error(f.url, response.status())),
    }
    let cr = probe::content_range(response.headers());
    let guard = probe::if_range_value(response.headers());
    let (Some(cr), Some(if_range)) = (cr, guard) else {
        return single_stream(f, client);
    };
    let Some(length) = cr.length.filter(|_| cr.first == 0) else {
        return single_stream(f, client);
    };
    if length > f.limits.max_download {
        return Err(Error::TooLarge {
            url: f.url.to_owned(),
            limit: f.limits.max_download,
            content_length: Some(length),
        });
    }
    if cr.end != PROBE_LEN.min(length) {
        return Err(Error::BadRange {
            url: f.url.to_owned(),
            asked: format!("bytes 0-{}", PROBE_LEN.min(length) - 1),
            got: probe::content_range_text(response.headers()),
        });
    }
    // The probe's bytes: sniffed before any other connection opens, written at offset 0.
    let mut head = Vec::with_capacity(cr.end as usize);
    let mut body = response.into_body().into_reader();
    (&mut body)
        .take(cr.end)
        .read_to_end(&mut head)
        .map_err(|e| Error::from_io(e, f.url))?;
    // The read that finds the end hands the connection back for the ranges (see
    // `ranges::Worker::body`).
    let _ = body.read(&mut [0u8; 1]);
    drop(body);
    if (head.len() as u64) < cr.end {
        return Err(Error::Truncated {
            url: f.url.to_owned(),
            expected: cr.end,
            got: head.len() as u64,
        });
    }
    if let Format::Rejected(what) = super::sniff(&head) {
        return Err(Error::Rejected {
            source_name: f.url.to_owned(),
            format: what,
        });
    }
    preallocate(f.partial, length)?;
    std::os::unix::fs::FileExt::write_all_at(f.partial.file, &head, 0).map_err(|source| {
        Error::Sink {
            url: f.url.to_owned(),
            source,
        }
    })?;
    // The data file's name must be durable before a record can point into it.
    if let Some(dir) = f.partial.path.parent() {
        crate::fsutil::fsync_dir(dir)?;
    }
    let mut done = RangeSet::default();
    done.insert(0, cr.end);
    let record = Record {
        version: 1,
        url: f.url.to_owned(),
        if_range,
        length,
        done,
    };
    let rest = pieces(&record.done.missing(length));
    ranged(f, client, connections, &record, rest, None, validators)
}

/// The server cannot guard ranges: fetch the whole body as one plain GET.
fn single_stream(f: &Fetch<'_>, client: &Client) -> Result<Attempt, Error> {
    let response = client.get(f.url, &[])?;
    if response.status().as_u16() != 200 {
        return Err(status_error(f.url, response.status()));
    }
    let validators = Validators::of(response.headers());
    let download = http::stream(f.url, response, client.limits())?;
    Ok(Attempt::Done(Box::new(Fetched::Stream {
        download,
        validators,
    })))
}

fn preallocate(p: Partial<'_>, length: u64) -> Result<(), Error> {
    let io = |action| {
        move |source| Error::Io(IoError::new(action, p.path, source))
    };
    p.file.set_len(0).map_err(io("truncating"))?;
    // Reserve the blocks now: a full disk fails here, not after gigabytes.
    let len = i64::try_from(length).unwrap_or(i64::MAX);
    match nix::fcntl::posix_fallocate(p.file, 0, len) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate: a sparse file of the right length.
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => {
            p.file.set_len(length).map_err(io("setting the length of"))
        }
        Err(e) => Err(io("preallocating")(std::io::Error::from(e))),
    }
}

/// Split missing ranges into pieces of at most [`PIECE`] bytes.
fn pieces(missing: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut a, b) in missing {
        while a < b {
            let e = (a + PIECE).min(b);
            out.push((a, e));
            a = e;
        }
    }
    out
}

/// Fetch `pieces` of the download `record` describes with checkpoints, then hash-check done.
#[allow(clippy::too_many_arguments)]
fn ranged(
    f: &Fetch<'_>,
    client: &Client,
    connections: usize,
    record: &Record,
    pieces: Vec<(u64, u64)>,
    first: Option<Opened>,
    validators: Validators,
) -> Result<Attempt, Error> {
    let tracker = Tracker::new(
        f.partial.file,
        f.partial.path,
        f.partial.record,
        f.url,
        &record.if_range,
        record.length,
        record.done.clone(),
    )?;
    let length = record.length;
    let progress = |n: u64| (f.progress)(n, Some(length));
    progress(record.done.total());
    let workers = connections.min(pieces.len().max(1));
    let job = Job {
        client,
        url: f.url,
        source: f.url,
        if_range: &record.if_range,
        length,
        file: f.partial.file,
        data_path: f.partial.path,
        tracker: &tracker,
        connections: workers,
        progress: &progress,
    };
    // Resumable from here on: an interrupt keeps the data file (and writes its record).
    crate::fsutil::untrack_path(f.partial.path);
    let result = std::thread::scope(|s| {
        let t = Arc::clone(&tracker);
        let checkpoints = s.spawn(move || t.run());
        let r = ranges::run(&job, pieces, first);
        tracker.finish();
        let _ = checkpoints.join();
        r
    });
    crate::fsutil::track_path(f.partial.path);
    match result {
        Ok(sums) => {
            let _ = crate::fsutil::remove_file(f.partial.record);
            Ok(Attempt::Done(Box::new(Fetched::Complete {
                sums,
                validators,
            })))
        }
        Err(Failure::Changed) => Ok(Attempt::Changed),
        Err(Failure::Error(e)) => {
            // Keep what is done for the next pull.
            if let Err(c) = tracker.checkpoint() {
                tracing::warn!("saving the resume record of {}: {c}", f.url);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_missing_ranges_exactly() {
        let p = pieces(&[(0, 10), (PIECE, 3 * PIECE + 1)]);
        assert_eq!(
            p,
            vec![
                (0, 10),
                (PIECE, 2 * PIECE),
                (2 * PIECE, 3 * PIECE),
                (3 * PIECE, 3 * PIECE + 1)
            ]
        );
    }
}
