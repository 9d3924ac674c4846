//! The store's side of publishing: the per-digest lock held from the cache check to the index
//! commit, and reuse of a stored blob. Staging and the no-clobber publish itself are `ingest`'s.

use crate::digest::{Digest, Sums};
use crate::fsutil;
use crate::layout::Kind;
use crate::lock::{self, LockGuard};
use crate::verify;

use super::{file_size, Error, Store};

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
