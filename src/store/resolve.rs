//! Resolution for `config`, `inspect`, `verify ID` and `rm`: through the lookup caches
//! (`db/images.idx`, see `crate::index::cache`) when both are fresh, else through the JSON.
//!
//! Both paths give the same answer: the cache's tables are checked against the index file they
//! were built from on every use, and the entry itself is read from that file. A `Store` keeps
//! its open caches, so a process that boots many VMs pays one `stat` per backend and a lookup.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::index::cache::{self, Cache};
use crate::layout::Kind;

use super::snapshot::{canonical_of, Found, ImageEntry, Snapshot};
use super::{Error, Store};

/// The open caches of one store, reused while their index files do not change.
#[derive(Default)]
pub(super) struct Caches {
    slots: [Mutex<Option<Arc<Cache>>>; 2],
}

/// A backend's cache for a lookup: fresh, or the index file is absent (empty backend).
type Fresh = Option<Arc<Cache>>;

impl Store {
    /// The fresh cache of `kind`, reusing the open one while its index is unchanged.
    fn fresh_cache(&self, kind: Kind) -> Result<Fresh, cache::Error> {
        let slot = &self.caches.slots[usize::from(kind == Kind::CloudImg)];
        if let Some(c) = slot.lock().as_ref().filter(|c| c.is_current()) {
            return Ok(Some(Arc::clone(c)));
        }
        let opened = match kind {
            Kind::Oci => self.oci_db().cache(),
            Kind::CloudImg => self.cloud_db().cache(),
        }?
        .map(Arc::new);
        slot.lock().clone_from(&opened);
        Ok(opened)
    }

    /// Both backends' fresh caches, or `None` if either is missing, stale or bad (the caller
    /// answers from the JSON) or the store was opened without caches.
    pub(super) fn caches(&self) -> Option<Vec<Arc<Cache>>> {
        if !self.opts.index_cache {
            return None;
        }
        let mut out = Vec::with_capacity(2);
        for kind in Kind::ALL {
            match self.fresh_cache(kind) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("{e}");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Resolve `query` to its image and names through `caches`, without reading its entry
    /// (`rm`); `Ok(None)` when a cache turns out unusable.
    pub(super) fn find_cached(caches: &[Arc<Cache>], query: &str) -> Result<Option<Found>, Error> {
        let refs: Vec<&Cache> = caches.iter().map(AsRef::as_ref).collect();
        let canonical = canonical_of(query);
        match cache::resolve(&refs, query, canonical.as_deref()) {
            Ok(Ok(r)) => Ok(Some(Found {
                kind: r.kind,
                id: r.id,
                keys: r.keys,
            })),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => {
                tracing::debug!("{e}");
                Ok(None)
            }
        }
    }

    /// Resolve `query` through `caches`; `Ok(None)` when a cache turns out unusable.
    fn resolve_cached(
        caches: &[Arc<Cache>],
        query: &str,
    ) -> Result<Option<(Found, ImageEntry)>, Error> {
        let refs: Vec<&Cache> = caches.iter().map(AsRef::as_ref).collect();
        let canonical = canonical_of(query);
        let attempt =
            || -> Result<Result<(Found, ImageEntry), crate::lookup::Error>, cache::Error> {
                let r = match cache::resolve(&refs, query, canonical.as_deref())? {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e)),
                };
                let c = refs
                    .iter()
                    .find(|c| c.kind() == r.kind)
                    .expect("a resolved image comes from one of the caches");
                let entry = match r.kind {
                    Kind::Oci => ImageEntry::Oci(c.record_entry(&r.record)?),
                    Kind::CloudImg => ImageEntry::Cloud(c.record_entry(&r.record)?),
                };
                let found = Found {
                    kind: r.kind,
                    id: r.id,
                    keys: r.keys,
                };
                Ok(Ok((found, entry)))
            };
        match attempt() {
            Ok(Ok(hit)) => Ok(Some(hit)),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => {
                tracing::debug!("{e}");
                Ok(None)
            }
        }
    }

    /// Resolve each query (DESIGN.md §6) to its image, names and entry: through the caches
    /// when they are fresh, otherwise through one JSON snapshot shared by the queries.
    pub(super) fn resolve_all(&self, queries: &[&str]) -> Result<Vec<(Found, ImageEntry)>, Error> {
        let caches = self.caches();
        let mut snap: Option<Snapshot> = None;
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            if let Some(c) = &caches {
                if let Some(hit) = Self::resolve_cached(c, q)? {
                    out.push(hit);
                    continue;
                }
            }
            if snap.is_none() {
                snap = Some(self.snapshot()?);
            }
            let s = snap.as_ref().expect("just read");
            let f = s.find(q)?;
            out.push(s.entry_of(f));
        }
        Ok(out)
    }
}
