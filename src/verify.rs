//! Hashing of stored blobs through a read-only mmap; the crate's only unsafe code.
//!
//! Large published blobs are mapped and hashed in place (blake3 in parallel inside the file,
//! sha256 sequentially). Only a file that is read-only for everyone (mode 0444, as `blobs/` holds
//! them) is ever mapped: anything else (a user's file, a temp file being converted) may be
//! truncated by another process, which would kill a process reading through a map with SIGBUS,
//! so it is read with plain buffered reads, as are small files and any file that cannot be
//! mapped. Many blobs are verified in parallel across files. This module only reads: it never
//! creates, renames, changes or deletes anything, and it knows nothing of indexes or locks.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::error::{io_err, IoError};
use crate::digest::{Algorithm, Digest, Sums};

/// Files smaller than this are read, not mapped: a map costs more than it saves for them.
const MMAP_THRESHOLD: u64 = 1 << 20;
/// Buffer size of the plain-read path.
const READ_BUF: usize = 1 << 20;

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The bytes of a file: mapped when large and mappable, otherwise read on demand.
enum Contents {
    Mapped(memmap2::Mmap),
    Read(File),
}

/// Map `file` read-only.
///
/// Returns `None` when the map fails (special files, filesystems without mmap), so callers fall
/// back to plain reads.
#[allow(unsafe_code)]
fn map_readonly(file: &File) -> Option<memmap2::Mmap> {
    // SAFETY: a shared read-only map is undefined behaviour only if the file changes while the
    // slice is alive. The map never leaves this module: it is only borrowed by a hasher inside
    // `hash_file`/`sums_of_file` and dropped before they return, so no reference to it escapes.
    // `open` maps only files that no one may write (mode 0444: published blobs, never rewritten
    // or truncated in place; a blob is only ever replaced by renaming a new file over its name,
    // which leaves this mapping's inode untouched). Writable files are read instead.
    let map = unsafe { memmap2::MmapOptions::new().map(file) }.ok()?;
    // Only a hint: the sequential readahead matters when the file is not cached yet.
    let _ = map.advise(memmap2::Advice::Sequential);
    Some(map)
}

fn open(path: &Path) -> Result<Contents, Error> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("inspecting", path))?;
    // Only published blobs are read-only for everyone; see `map_readonly`.
    let read_only = meta.permissions().mode() & 0o222 == 0;
    if meta.is_file() && read_only && meta.len() >= MMAP_THRESHOLD {
        if let Some(map) = map_readonly(&file) {
            return Ok(Contents::Mapped(map));
        }
    }
    Ok(Contents::Read(file))
}

/// Feed every byte of `file` to `f` in buffered chunks; returns the number of bytes.
fn read_chunks(mut file: &File, path: &Path, mut f: impl FnMut(&[u8])) -> Result<u64, Error> {
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                f(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("reading", path)(e).into()),
        }
    }
}

/// One running hash of any supported algorithm.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    fn new(algo: Algorithm) -> Self {
        match algo {
            Algorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
            Algorithm::Blake3 => Self::Blake3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// Hash a whole in-memory input, using all cores where the algorithm allows it.
    fn update_all(&mut self, data: &[u8]) {
        match self {
            Self::Blake3(h) => {
                h.update_rayon(data);
            }
            other => other.update(data),
        }
    }

    fn finalize(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::sha256(h.finalize().into()),
            Self::Sha512(h) => Digest::from_bytes(Algorithm::Sha512, &h.finalize())
                .expect("sha512 output is 64 bytes"),
            Self::Blake3(h) => Digest::blake3(*h.finalize().as_bytes()),
        }
    }
}

/// Hash a whole file with one algorithm; returns the digest and the number of bytes hashed.
///
/// Read-only files (published blobs, mode 0444) of 1 MiB and more are memory-mapped: blake3 then
/// hashes on all cores (rayon), sha256 and sha512 sequentially. Any other file is read.
pub fn hash_file(path: &Path, algo: Algorithm) -> Result<(Digest, u64), Error> {
    let contents = open(path)?;
    let mut hasher = Hasher::new(algo);
    let len = match &contents {
        Contents::Mapped(map) => {
            hasher.update_all(map);
            map.len() as u64
        }
        Contents::Read(file) => read_chunks(file, path, |b| hasher.update(b))?,
    };
    Ok((hasher.finalize(), len))
}

/// sha256 and blake3 of a file in one pass over its bytes (used for a blob after a conversion).
///
/// On a mapped file the two hashes run side by side: sha256 on one thread, blake3 on the others.
pub fn sums_of_file(path: &Path) -> Result<Sums, Error> {
    let contents = open(path)?;
    match &contents {
        Contents::Mapped(map) => {
            let (sha, b3) = rayon::join(
                || Digest::sha256(sha2::Sha256::digest(&map[..]).into()),
                || {
                    Digest::blake3(
                        *blake3::Hasher::new()
                            .update_rayon(map)
                            .finalize()
                            .as_bytes(),
                    )
                },
            );
            Ok(Sums {
                sha256: sha,
                blake3: b3,
                size: map.len() as u64,
            })
        }
        Contents::Read(file) => {
            // Both hashes of each chunk side by side, as on the mapped path.
            let mut sha = sha2::Sha256::new();
            let mut b3 = blake3::Hasher::new();
            let size = read_chunks(file, path, |b| {
                rayon::join(|| sha.update(b), || {
                    b3.update(b);
                });
            })?;
            Ok(Sums {
                sha256: Digest::sha256(sha.finalize().into()),
                blake3: Digest::blake3(*b3.finalize().as_bytes()),
                size,
            })
        }
    }
}

/// What verification says of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The content matches the expected digest (and size, when one was given).
    Ok,
    /// The content hashes to something else.
    Corrupt {
        /// The recorded digest.
        expected: Digest,
        /// The digest of the bytes on disk.
        actual: Digest,
    },
    /// The file does not exist.
    Missing,
    /// The file's size differs from the recorded one (shorter or longer); it was not hashed.
    Truncated {
        /// The recorded size.
        expected: u64,
        /// The size on disk.
        actual: u64,
    },
    /// No digest is recorded for the blob (an index written by an older version); the size, when
    /// known, matched.
    Unverifiable,
}

/// One blob to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Where the blob is.
    pub path: PathBuf,
    /// Its recorded size, if any; checked before hashing.
    pub expected_size: Option<u64>,
    /// Its recorded digest, if any; its algorithm picks the hash.
    pub expected: Option<Digest>,
}

/// Verify one blob: existence, then size (cheap), then content.
pub fn verify_one(check: &Check) -> Result<Outcome, Error> {
    let path = check.path.as_path();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::Missing),
        Err(e) => return Err(io_err("inspecting", path)(e).into()),
    };
    if let Some(expected) = check.expected_size {
        if meta.len() != expected {
            return Ok(Outcome::Truncated {
                expected,
                actual: meta.len(),
            });
        }
    }
    let Some(expected) = check.expected else {
        return Ok(Outcome::Unverifiable);
    };
    let (actual, len) = match hash_file(path, expected.algorithm()) {
        Ok(r) => r,
        // Deleted between the size check and the open.
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Outcome::Missing)
        }
        Err(e) => return Err(e),
    };
    if let Some(size) = check.expected_size {
        if len != size {
            return Ok(Outcome::Truncated {
                expected: size,
                actual: len,
            });
        }
    }
    Ok(if actual == expected {
        Outcome::Ok
    } else {
        Outcome::Corrupt { expected, actual }
    })
}

/// Verify many blobs in parallel across files (blake3 is also parallel inside each file).
/// Results come back in input order. (The store's `verify` runs [`verify_one`] on its own
/// parallel iterator, because its rows are not all hash checks; this is for benches and tests.)
#[must_use]
#[cfg(feature = "unstable")]
pub fn verify_all(checks: &[Check]) -> Vec<Result<Outcome, Error>> {
    use rayon::prelude::*;
    checks.par_iter().map(verify_one).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_mapped_files_agree_with_one_shot() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4096, MMAP_THRESHOLD as usize + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &data).unwrap();
            assert_eq!(
                hash_file(&p, Algorithm::Sha256).unwrap(),
                (Digest::sha256_of(&data), len as u64)
            );
            assert_eq!(
                hash_file(&p, Algorithm::Blake3).unwrap(),
                (Digest::blake3_of(&data), len as u64)
            );
            let sums = sums_of_file(&p).unwrap();
            assert_eq!(sums.sha256, Digest::sha256_of(&data));
            assert_eq!(sums.blake3, Digest::blake3_of(&data));
            assert_eq!(sums.size, len as u64);
            // Read-only, as a published blob: the large one is mapped now; same answers.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
            assert_eq!(
                matches!(open(&p).unwrap(), Contents::Mapped(_)),
                len as u64 >= MMAP_THRESHOLD
            );
            assert_eq!(sums_of_file(&p).unwrap(), sums);
            assert_eq!(
                hash_file(&p, Algorithm::Blake3).unwrap(),
                (Digest::blake3_of(&data), len as u64)
            );
        }
    }

    /// A file anyone may write is never mapped: another process truncating it would kill this
    /// one with SIGBUS. It is read instead.
    #[test]
    fn writable_files_are_read_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("user.tar");
        std::fs::write(&p, vec![1u8; MMAP_THRESHOLD as usize * 2]).unwrap();
        assert!(matches!(open(&p).unwrap(), Contents::Read(_)));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(matches!(open(&p).unwrap(), Contents::Mapped(_)));
    }
}
