//! Staging what a caller filled itself: a temp file written out of order (a tool's output, an
//! EROFS image whose superblock comes last, a download written in ranges) or a directory of such
//! files. Ingest reads them back with `read()` — they are not published, so another process
//! could still change them and they are never mapped — through the same hashing threads as a
//! stream, checks what the caller expected, and fsyncs them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::digest::Sums;
use crate::error::io_err;
use crate::fsutil::{self, TempFile};

use super::{checked, pipeline, Error, Expected, NamedReader, Staged};

/// Hash the file at `path` by reading it, and check it against `expected`.
fn hash_file(
    path: &Path,
    source_name: &str,
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Sums, Error> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let mut src = NamedReader {
        reader: file,
        name: source_name,
    };
    let hashed = pipeline(&mut src, None, source_name, expected, progress)?;
    checked(hashed, source_name, expected)
}

/// Stage `temp`, which its caller has filled: hash it, check `expected`, fsync it. `progress`
/// gets the bytes hashed so far. On failure the temp file is removed (dropped).
pub fn stage_filled(
    temp: TempFile,
    source_name: &str,
    expected: &Expected,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged, Error> {
    let sums = hash_file(temp.path(), source_name, expected, progress)?;
    temp.sync()?;
    Ok(Staged { temp, sums })
}

/// Stage `temp`, which its caller filled and hashed in order while filling it (a ranged
/// download hashes the contiguous prefix behind its connections, so the bytes are not read a
/// second time): check `sums` against `expected`, fsync it. On failure the temp file is removed.
pub fn stage_hashed(
    temp: TempFile,
    sums: Sums,
    source_name: &str,
    expected: &Expected,
) -> Result<Staged, Error> {
    if let Some(want) = expected.size.filter(|&w| w != sums.size) {
        return Err(Error::SizeMismatch {
            expected: want,
            actual: sums.size,
            source_name: source_name.to_owned(),
        });
    }
    if let Some(max) = expected.max_size.filter(|&m| sums.size > m) {
        return Err(Error::TooLarge {
            limit: max,
            source_name: source_name.to_owned(),
        });
    }
    if let Some(want) = expected.digest {
        let actual = match want.algorithm() {
            crate::digest::Algorithm::Blake3 => sums.blake3,
            _ => sums.sha256,
        };
        if actual != want {
            return Err(Error::Mismatch {
                expected: want,
                actual,
                source_name: source_name.to_owned(),
            });
        }
    }
    temp.sync()?;
    Ok(Staged { temp, sums })
}

/// A directory of files its caller filled (a layer's boot files), hashed, to be published as a
/// whole by [`super::publish_layer`]. It lives inside a temp directory the caller holds, which
/// removes it if it is never published.
#[derive(Debug)]
pub struct StagedDir {
    /// The directory.
    pub path: PathBuf,
    /// Sums of each regular file, by name.
    pub files: BTreeMap<String, Sums>,
}

/// Stage the files of `dir` (regular files at its top level; the directory is fsynced with its
/// files when it is published).
pub fn stage_dir(dir: &Path) -> Result<StagedDir, Error> {
    let mut files = BTreeMap::new();
    for name in fsutil::names_in(dir)? {
        let path = dir.join(&name);
        let what = path.display().to_string();
        files.insert(name, hash_file(&path, &what, &Expected::default(), &|_| {})?);
    }
    Ok(StagedDir {
        path: dir.to_path_buf(),
        files,
    })
}
