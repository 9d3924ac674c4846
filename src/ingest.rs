//! Temp file → hashed → fsynced → published: the only place blobs are created. Never edits the
//! index and takes no locks (the caller holds the digest lock from its cache check to its index
//! commit).
//!
//! Every stored file enters here, in one of two ways:
//! - [`stage`] streams a source into a temp file under the backend's `temp/`, computing sha256
//!   and blake3 in the same pass (a cloud image being imported or downloaded);
//! - [`stage_filled`] takes a temp file its caller filled itself, in any order (a converted
//!   qcow2, an EROFS image whose superblock is written last, a download written in ranges at
//!   offsets) and hashes it by reading it back: it is not published yet, so it is never mapped.
//!   [`stage_dir`] does the same for a directory of files published as a whole (a layer's boot
//!   files); [`stage_hashed`] takes one its caller also hashed in order while filling it (a
//!   ranged download whose hasher follows the contiguous prefix), so it is not read again.
//!
//! Either way the bytes are fsynced and checked against what the caller expected; a failure at any
//! step leaves nothing behind. `publish` then moves a staged file into `blobs/` read-only
//! without ever replacing one, and [`publish_layer`] publishes a layer's boot directory before its
//! blob, so a blob that exists always has its boot files.
#![allow(
    clippy::result_large_err,
    reason = "Mismatch carries two 65-byte digests by value; the Ok side (Staged, with its Sums) \
              is as large, so boxing the error would save no copying"
)]

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use sha2::Digest as _;

use crate::digest::{Algorithm, Digest, Sums};
use crate::error::IoError;
use crate::fsutil::TempFile;

mod filled;
mod publish;
mod writer;

use writer::Writer;

pub use filled::{stage_dir, stage_filled, stage_hashed, StagedDir};
pub use publish::{publish, publish_layer};

/// Size of one pipeline buffer. With 1 MiB buffers and 8 of them the four threads handed work
/// to each other so often on 2 cores that staging 1 GiB took 1.43x sha256 alone; 4 MiB x 16
/// (64 MiB per ingest) brought it to 1.00-1.07x (`cargo bench --bench ingest`).
const CHUNK: usize = 4 << 20;
/// Buffers in flight: enough that reading, hashing and writing each have work queued.
const POOL: usize = 16;
/// Alignment of buffers and chunk lengths for direct I/O (the largest logical block size in use).
const ALIGN: usize = 4096;

/// Why staging (or ingesting) failed. The temp file is gone by the time this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The content does not hash to the expected digest.
    #[error("digest mismatch for {source_name}: expected {expected}, got {actual}")]
    Mismatch {
        /// The digest the caller expected.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
        /// The input (path or URL).
        source_name: String,
    },
    /// The content is not of the expected size.
    #[error(
        "size mismatch for {source_name}: expected {}, got {}{}",
        crate::human::bytes(*expected),
        if actual > expected { "at least " } else { "" },
        crate::human::bytes(*actual)
    )]
    SizeMismatch {
        /// The size the caller expected.
        expected: u64,
        /// Bytes received; reading stops at `expected + 1`, so a larger value means "more".
        actual: u64,
        /// The input (path or URL).
        source_name: String,
    },
    /// The input is larger than the configured cap; reading stopped there.
    #[error("{source_name} is larger than the limit of {}", crate::human::bytes(*limit))]
    TooLarge {
        /// The cap.
        limit: u64,
        /// The input (path or URL).
        source_name: String,
    },
    /// A blob is already published under the key with other content (written outside the
    /// digest-lock protocol); it is never overwritten.
    #[error("{} exists with different content ({actual}, expected {expected}); run `imgstore verify`", path.display())]
    Conflict {
        /// The published blob.
        path: std::path::PathBuf,
        /// The sha256 of the bytes that were to be published.
        expected: Digest,
        /// The sha256 of the blob in place.
        actual: Digest,
    },
    /// Hashing an already published blob failed.
    #[error(transparent)]
    Verify(#[from] crate::verify::Error),
    /// Reading the input failed.
    #[error("reading {source_name}: {source}")]
    Read {
        /// The input (path or URL).
        source_name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What the caller knows of the input in advance. `Default` expects nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected {
    /// The input's digest (sha256, sha512 or blake3); a mismatch fails the staging.
    pub digest: Option<Digest>,
    /// The input's exact size.
    pub size: Option<u64>,
    /// A cap on the size: reading stops as soon as the input exceeds it.
    pub max_size: Option<u64>,
}

/// A fully written, fsynced temp file with its sums. Dropping it deletes the file.
#[derive(Debug)]
pub struct Staged {
    /// The temp file, under the backend's `temp/`.
    pub temp: TempFile,
    /// sha256, blake3 and size of its bytes.
    pub sums: Sums,
}

/// A filled pipeline buffer shared by the consumer threads; when the last one drops it, the
/// buffer goes back to the pool so the reader never allocates after start-up.
struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    pool: Sender<Vec<u8>>,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let _ = self.pool.send(std::mem::take(&mut self.buf));
    }
}

/// Where the `ALIGN`-aligned part of a pool buffer starts (direct I/O needs aligned memory).
fn aligned_start(buf: &[u8]) -> usize {
    (ALIGN - buf.as_ptr() as usize % ALIGN) % ALIGN
}

/// Tells the reader that a consumer thread ended, however it ended (return, error or panic).
struct ExitSignal(Sender<()>);

impl Drop for ExitSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Where bytes come from, with errors already naming the source.
trait Source {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error>;
}

struct NamedReader<'a, R> {
    reader: R,
    name: &'a str,
}

impl<R: Read> Source for NamedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            match self.reader.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        source_name: self.name.to_owned(),
                        source,
                    })
                }
            }
        }
    }
}

/// Parts read one after the other; a read error names the part.
#[cfg(feature = "unstable")]
struct Parts<'a> {
    paths: &'a [std::path::PathBuf],
    files: Vec<File>,
    current: usize,
}

#[cfg(feature = "unstable")]
impl Source for Parts<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        while let Some(file) = self.files.get_mut(self.current) {
            match file.read(buf) {
                Ok(0) => self.current += 1,
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        source_name: self.paths[self.current].display().to_string(),
                        source,
                    })
                }
            }
        }
        Ok(0)
    }
}

/// How the reading side ended.
enum ReadEnd {
    /// End of input after this many bytes.
    Eof,
    /// A consumer went away (error or panic); its own result says why.
    ConsumerGone,
    /// Reading failed or the input overran a limit.
    Failed(Error),
}

/// Stream `reader` into a new temp file in `temp_dir`, hashing sha256 and blake3 in the same pass.
///
/// The work is pipelined: this thread reads into a small pool of reusable buffers; one thread runs
/// sha256 and another blake3 plus the write, so reading, hashing and writing overlap. The file is
/// fsynced before this returns. `progress` gets the cumulative number of bytes written; it is
/// called from a worker thread. `source_name` names the input (a path or URL) in errors.
/// On any failure, including a panic in a worker, the temp file is removed.
pub fn stage(
    temp_dir: &Path,
    reader: impl Read + Send,
    source_name: &str,
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged, Error> {
    let mut src = NamedReader {
        reader,
        name: source_name,
    };
    stage_source(temp_dir, &mut src, source_name, expected, progress)
}

/// Like [`stage`] over several files concatenated in order (split cloud images).
#[cfg(feature = "unstable")]
pub fn stage_files(
    temp_dir: &Path,
    parts: &[std::path::PathBuf],
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged, Error> {
    let files = parts
        .iter()
        .map(|p| {
            File::open(p).map_err(|source| Error::Io(IoError::new("opening part", p.clone(), source)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = parts
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let mut src = Parts {
        paths: parts,
        files,
        current: 0,
    };
    stage_source(temp_dir, &mut src, &name, expected, progress)
}

/// Like [`stage`], for a copy that is read back at once and never published (a user's layer
/// tar, converted right after): written through the page cache, which then serves the
/// converter's reads, and not fsynced (a crash loses only temp debris).
pub fn stage_scratch(
    temp_dir: &Path,
    reader: impl Read + Send,
    source_name: &str,
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged, Error> {
    let mut src = NamedReader {
        reader,
        name: source_name,
    };
    stage_with(
        temp_dir,
        &mut src,
        source_name,
        expected,
        progress,
        Durability::Scratch,
    )
}

/// Whether a staged file will be published (direct writes, fsync) or only read back once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    Publish,
    Scratch,
}

fn stage_source(
    temp_dir: &Path,
    src: &mut dyn Source,
    source_name: &str,
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged, Error> {
    stage_with(
        temp_dir,
        src,
        source_name,
        expected,
        progress,
        Durability::Publish,
    )
}

fn stage_with(
    temp_dir: &Path,
    src: &mut dyn Source,
    source_name: &str,
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
    durability: Durability,
) -> Result<Staged, Error> {
    let mut temp = TempFile::create_in(temp_dir, ".ingest")?;
    let path = temp.path().to_path_buf();
    let direct = durability == Durability::Publish;
    let out = Some((&*temp.file(), path.as_path(), direct));
    let hashed = pipeline(src, out, source_name, expected, progress)?;
    let sums = checked(hashed, source_name, expected)?;
    // Checked before the fsync so a bad download costs no disk flush; the temp file is not
    // trusted by anyone until `Staged` is returned.
    if durability == Durability::Publish {
        temp.sync()?;
    }
    failpoint!("ingest.staged");
    Ok(Staged { temp, sums })
}

/// The sums of what the pipeline read, once they match what the caller expected.
fn checked(
    (sha, b3, size): (ShaOut, Digest, u64),
    source_name: &str,
    expected: &Expected,
) -> Result<Sums, Error> {
    let sums = Sums {
        sha256: sha.sha256,
        blake3: b3,
        size,
    };
    if let Some(want) = expected.size {
        if want != size {
            return Err(Error::SizeMismatch {
                expected: want,
                actual: size,
                source_name: source_name.to_owned(),
            });
        }
    }
    if let Some(want) = expected.digest {
        let actual = match want.algorithm() {
            Algorithm::Sha256 => sums.sha256,
            Algorithm::Blake3 => sums.blake3,
            Algorithm::Sha512 => sha.sha512.unwrap_or(sums.sha256),
        };
        if actual != want {
            return Err(Error::Mismatch {
                expected: want,
                actual,
                source_name: source_name.to_owned(),
            });
        }
    }
    Ok(sums)
}

/// The sha thread's result: sha256, plus sha512 when the expected digest asks for it.
struct ShaOut {
    sha256: Digest,
    sha512: Option<Digest>,
}

/// Read `src` to the end through the hashing and writing threads (no writing when `out` is
/// `None`: the bytes are already in place). Returns the sha results, blake3 and the number of
/// bytes. All threads are joined before this returns, whatever happens.
fn pipeline(
    src: &mut dyn Source,
    out: Option<(&File, &Path, bool)>,
    source_name: &str,
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(ShaOut, Digest, u64), Error> {
    let want_sha512 = expected
        .digest
        .is_some_and(|d| d.algorithm() == Algorithm::Sha512);
    std::thread::scope(|s| {
        // Every channel end lives inside the scope: however this closure exits (return or a
        // panic in a spawn or in the caller's reader), the senders drop before the scope joins
        // the threads, so the consumers end instead of waiting forever.
        let (pool_tx, pool_rx) = crossbeam_channel::bounded::<Vec<u8>>(POOL);
        for _ in 0..POOL {
            pool_tx
                .send(vec![0u8; CHUNK + ALIGN])
                .expect("pool channel has room for POOL buffers");
        }
        // Unbounded: the pool alone bounds what is in flight, so the reader only ever blocks on it.
        let (sha_tx, sha_rx) = crossbeam_channel::unbounded::<Arc<Chunk>>();
        let (b3_tx, b3_rx) = crossbeam_channel::unbounded::<Arc<Chunk>>();
        let (write_tx, write_rx) = crossbeam_channel::unbounded::<Arc<Chunk>>();
        let (exit_tx, exit_rx) = crossbeam_channel::unbounded::<()>();
        let exit = ExitSignal(exit_tx.clone());
        let sha_thread = s.spawn(move || {
            let _exit = exit;
            let mut h256 = sha2::Sha256::new();
            let mut h512 = want_sha512.then(sha2::Sha512::new);
            for chunk in sha_rx {
                h256.update(chunk.bytes());
                if let Some(h) = &mut h512 {
                    h.update(chunk.bytes());
                }
            }
            ShaOut {
                sha256: Digest::sha256(h256.finalize().into()),
                sha512: h512.and_then(|h| Digest::from_bytes(Algorithm::Sha512, &h.finalize())),
            }
        });
        let exit = ExitSignal(exit_tx.clone());
        let b3_thread = s.spawn(move || {
            let _exit = exit;
            let mut hasher = blake3::Hasher::new();
            for chunk in b3_rx {
                hasher.update(chunk.bytes());
            }
            Digest::blake3(*hasher.finalize().as_bytes())
        });
        let exit = ExitSignal(exit_tx);
        let write_thread = s.spawn(move || -> Result<u64, Error> {
            let _exit = exit;
            let mut writer = out.map(|(file, path, direct)| Writer::new(file, path, direct));
            let mut written = 0u64;
            for chunk in write_rx {
                if let Some(w) = &mut writer {
                    w.write(chunk.bytes())?;
                }
                written += chunk.len as u64;
                progress(written);
            }
            // The descriptor goes back to the caller inside `Staged`: leave it an ordinary one,
            // so later unaligned reads through it do not fail with EINVAL.
            if let Some(w) = &mut writer {
                w.set_direct(false);
            }
            Ok(written)
        });

        let end = read_loop(
            src,
            source_name,
            expected,
            &pool_rx,
            &pool_tx,
            [&sha_tx, &b3_tx, &write_tx],
            &exit_rx,
        );
        drop((sha_tx, b3_tx, write_tx));
        let sha = sha_thread.join();
        let b3 = b3_thread.join();
        let written = write_thread.join();
        // A worker panic is a bug, not an input problem: re-raise it once every thread is joined,
        // so the temp file is removed while unwinding.
        let sha = sha.unwrap_or_else(|p| std::panic::resume_unwind(p));
        let b3 = b3.unwrap_or_else(|p| std::panic::resume_unwind(p));
        let written = written.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        match end {
            ReadEnd::Failed(e) => Err(e),
            ReadEnd::ConsumerGone => unreachable!("consumers only leave early on error or panic"),
            ReadEnd::Eof => Ok((sha, b3, written)),
        }
    })
}

/// The reading side of the pipeline: fill pooled buffers and hand each to every consumer.
fn read_loop(
    src: &mut dyn Source,
    source_name: &str,
    expected: &Expected,
    pool_rx: &Receiver<Vec<u8>>,
    pool_tx: &Sender<Vec<u8>>,
    consumers: [&Sender<Arc<Chunk>>; 3],
    exited: &Receiver<()>,
) -> ReadEnd {
    // Read at most one byte past a limit: enough to know it was exceeded.
    let limit = match (expected.max_size, expected.size) {
        (Some(m), Some(s)) => Some(m.min(s)),
        (m, s) => m.or(s),
    };
    let mut total = 0u64;
    loop {
        let mut buf = crossbeam_channel::select! {
            recv(pool_rx) -> b => match b {
                Ok(b) => b,
                Err(_) => return ReadEnd::ConsumerGone,
            },
            // Consumers only end before the reader on error or panic.
            recv(exited) -> _ => return ReadEnd::ConsumerGone,
        };
        let room = match limit {
            Some(l) => {
                (l.saturating_add(1) - total.min(l.saturating_add(1))).min(CHUNK as u64) as usize
            }
            None => CHUNK,
        };
        let start = aligned_start(&buf);
        let mut len = 0;
        let mut eof = false;
        // Fill the whole buffer: network readers return small pieces, each chunk has a fixed
        // cost in the consumers, and only whole aligned chunks can be written directly.
        while len < room {
            match src.read(&mut buf[start + len..start + room]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) => return ReadEnd::Failed(e),
            }
        }
        total += len as u64;
        if let Some(max) = expected.max_size {
            if total > max {
                return ReadEnd::Failed(Error::TooLarge {
                    limit: max,
                    source_name: source_name.to_owned(),
                });
            }
        }
        if let Some(size) = expected.size {
            if total > size {
                return ReadEnd::Failed(Error::SizeMismatch {
                    expected: size,
                    actual: total,
                    source_name: source_name.to_owned(),
                });
            }
        }
        if len > 0 {
            let chunk = Arc::new(Chunk {
                buf,
                start,
                len,
                pool: pool_tx.clone(),
            });
            for tx in consumers {
                if tx.send(Arc::clone(&chunk)).is_err() {
                    return ReadEnd::ConsumerGone;
                }
            }
        }
        if eof {
            return ReadEnd::Eof;
        }
    }
}
