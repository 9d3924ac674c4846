//! The store's side of publishing: the per-digest lock, the gc lease, and reuse of a stored
//! blob. Staging and the no-clobber publish itself are `ingest`'s.
//!
//! An ingest holds its digest lock(s) for its whole run (ingest against ingest), and the backend's
//! gc lease (`db/gc.lock`, shared) only from its reuse-or-publish decision to its index commit:
//! the decision is checked again under the lease ([`Store::lease_reuse`]), so the expensive
//! part (hashing a blob no index describes) happens before it, and a download or a conversion
//! never holds it.

use std::os::unix::fs::MetadataExt;

use crate::digest::{Digest, Sums};
use crate::error::io_err;
use crate::fsutil;
use crate::layout::Kind;
use crate::lock::{self, LockGuard, Mode};
use crate::verify;

use super::{Error, Store};

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

    /// Take the gc lease of backend `kind`, shared: from now until it is dropped, no collection
    /// deletes anything in that backend (docs/design.md §2). Take it after the digest locks and
    /// drop it after the index commit; never hold it across a download or a conversion.
    pub(super) fn lease(&self, kind: Kind) -> Result<LockGuard, Error> {
        let w = self.on_wait();
        Ok(lock::lock_file(
            &self.layout.backend(kind).gc_lease_path(),
            Mode::Shared,
            self.opts.lock_wait,
            &w,
        )?)
    }

    /// Whether the blob `key` is still the file `reuse` found (same inode): gc deleted nothing
    /// of it since. Only meaningful under the lease.
    pub(super) fn still_there(&self, kind: Kind, key: &Digest, reuse: &Reusable) -> bool {
        std::fs::metadata(self.layout.backend(kind).blob_path(key))
            .is_ok_and(|m| (m.dev(), m.ino()) == reuse.inode)
    }

    /// Confirm a reuse decision under the gc lease: take the lease and check the blob is still
    /// the one [`Store::usable_blob`] looked at. `None` (lease released) if a collection deleted
    /// it in between: the caller stores it again.
    pub(super) fn lease_reuse(
        &self,
        kind: Kind,
        key: &Digest,
        reuse: &Reusable,
    ) -> Result<Option<LockGuard>, Error> {
        let lease = self.lease(kind)?;
        Ok(self.still_there(kind, key, reuse).then_some(lease))
    }

    /// The sums of the stored blob `key`, if it is there and usable: its size must match what
    /// an index records for it; a blob no index describes (left by a removed image, or stored by
    /// cocoon) is hashed now. A blob whose size contradicts the record is damaged: it is removed
    /// so the caller stores a fresh copy. The caller must hold the digest lock of `key`, not the
    /// gc lease: the answer is confirmed under it with [`Store::lease_reuse`].
    pub(super) fn usable_blob(
        &self,
        kind: Kind,
        key: &Digest,
        recorded: Option<Sums>,
    ) -> Result<Option<Reusable>, Error> {
        let path = self.layout.backend(kind).blob_path(key);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("inspecting", &path)(e).into()),
        };
        let (size, inode) = (meta.len(), (meta.dev(), meta.ino()));
        let reuse = |sums| Ok(Some(Reusable { sums, inode }));
        match recorded {
            Some(s) if s.size == size => reuse(s),
            Some(_) => {
                tracing::warn!("{} has the wrong size; storing it again", path.display());
                fsutil::remove_file(&path)?;
                Ok(None)
            }
            None if size == 0 => {
                fsutil::remove_file(&path)?;
                Ok(None)
            }
            None => reuse(verify::sums_of_file(&path)?),
        }
    }
}

/// A stored blob an ingest means to reuse: its sums and the inode they describe.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reusable {
    pub(super) sums: Sums,
    inode: (u64, u64),
}
