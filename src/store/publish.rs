//! Publishing blobs: the per-digest lock, no-clobber publish, and reuse of a stored blob.

use std::path::Path;

use crate::digest::{Digest, Sums};
use crate::fsutil;
use crate::layout::Kind;
use crate::lock::{self, LockGuard};
use crate::verify;

use super::{file_size, io_err, BlobConflict, Error, Store};

impl Store {
    /// Take the per-digest ingest lock of `key` in backend `kind` (creating temp/ if needed).
    pub(super) fn lock_digest(&self, kind: Kind, key: &Digest) -> Result<LockGuard, Error> {
        let b = self.layout.backend(kind);
        fsutil::create_dir_all(&b.temp_dir())?;
        let w = self.on_wait();
        Ok(lock::lock_deletable(
            &b.digest_lock_path(key),
            self.opts.lock_wait,
            &w,
        )?)
    }

    /// Publish a finished temp file at `src` as `blobs/<key>.<ext>` unless one is already there.
    /// The caller must hold the digest lock of `key`, and keeps owning the temp file (its drop
    /// cleans up whatever was not moved). Returns the sums of the blob now in place.
    pub(super) fn publish_blob(
        &self,
        kind: Kind,
        key: &Digest,
        src: &Path,
        sums: Sums,
    ) -> Result<Sums, Error> {
        let b = self.layout.backend(kind);
        fsutil::create_dir_all(&b.blobs_dir())?;
        let dest = b.blob_path(key);
        std::fs::File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", src))?;
        failpoint!("publish.before_rename");
        match fsutil::publish_noclobber(src, &dest)? {
            fsutil::Published::New => Ok(sums),
            fsutil::Published::Existing => {
                // Only possible if something outside the digest-lock protocol wrote it: keep it
                // if it holds the same bytes, never overwrite it.
                let existing = verify::sums_of_file(&dest)?;
                if existing.sha256 == sums.sha256 {
                    Ok(existing)
                } else {
                    Err(Error::BlobConflict(Box::new(BlobConflict {
                        path: dest,
                        expected: sums.sha256,
                        actual: existing.sha256,
                    })))
                }
            }
        }
    }

    /// The sums of the stored blob `key`, if it is there and usable: its size must match what
    /// an index records for it; a blob no index describes (left by a removed image, or stored by
    /// cocoon) is hashed now. A blob whose size contradicts the record is damaged: it is removed
    /// so the caller stores a fresh copy. The caller must hold the digest lock of `key`.
    pub(super) fn usable_blob(
        &self,
        kind: Kind,
        key: &Digest,
        recorded: Option<Sums>,
    ) -> Result<Option<Sums>, Error> {
        let path = self.layout.backend(kind).blob_path(key);
        let Some(size) = file_size(&path)? else {
            return Ok(None);
        };
        match recorded {
            Some(s) if s.size == size => Ok(Some(s)),
            Some(_) => {
                tracing::warn!("{} has the wrong size; storing it again", path.display());
                fsutil::remove_file(&path)?;
                Ok(None)
            }
            None if size == 0 => {
                fsutil::remove_file(&path)?;
                Ok(None)
            }
            None => Ok(Some(verify::sums_of_file(&path)?)),
        }
    }
}
