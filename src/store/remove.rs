//! Removing index entries (blobs stay until gc).

use serde::Serialize;

use crate::digest::Digest;
use crate::layout::Kind;

use super::snapshot::{canonical_of, Snapshot};
use super::{Error, Store};

/// What [`Store::remove`] removed.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// Backend.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Image ID.
    pub id: Digest,
    /// Index keys removed.
    pub names: Vec<String>,
}

impl Store {
    /// Remove index entries. Every query is resolved first; if any fails, nothing is removed.
    /// A query naming an image by a name removes that name; one naming it by digest removes
    /// every name of that image. Blobs stay until [`Store::gc`].
    ///
    /// # Errors
    /// Not found, ambiguous, lock timeout, or an index write failure.
    pub fn remove(&self, queries: &[&str]) -> Result<Vec<Removed>, Error> {
        let w = self.on_wait();
        // Index lock order: oci before cloudimg (no digest locks are needed to remove names).
        let mut removed: Vec<Removed> = Vec::new();
        let oci_db = self.oci_db();
        let cloud_db = self.cloud_db();
        oci_db
            .update(self.opts.lock_wait, &w, |oci| {
                cloud_db
                    .update(self.opts.lock_wait, &w, |cloud| {
                        // The caches, when current, describe exactly the files just loaded:
                        // only an imgstore writer or a rebuilding reader writes a cache, each
                        // under the index lock held here, and a file cocoon replaced since has
                        // no cache. Without them, one snapshot of the loaded indexes.
                        let caches = self.caches();
                        let mut snap: Option<Snapshot> = None;
                        let mut plan: Vec<(Kind, Digest, Vec<String>)> = Vec::new();
                        for q in queries {
                            let hit = match &caches {
                                Some(c) => Self::find_cached(c, q).map_err(boxed)?,
                                None => None,
                            };
                            let f = match hit {
                                Some(f) => f,
                                None => snap
                                    .get_or_insert_with(|| {
                                        Snapshot::build(oci.clone(), cloud.clone())
                                    })
                                    .find(q)
                                    .map_err(boxed)?,
                            };
                            // Named by a name (or its canonical form): remove that name. Named by
                            // digest or prefix: remove every name of the image.
                            let wanted = canonical_of(q);
                            let by_name: Vec<String> = f
                                .keys
                                .iter()
                                .filter(|k| {
                                    k.as_str() == *q
                                        || (f.kind == Kind::Oci
                                            && wanted.is_some()
                                            && canonical_of(k) == wanted)
                                })
                                .cloned()
                                .collect();
                            let names = if by_name.is_empty() { f.keys } else { by_name };
                            plan.push((f.kind, f.id, names));
                        }
                        for (kind, id, names) in plan {
                            for n in &names {
                                match kind {
                                    Kind::Oci => oci.images.remove(n),
                                    Kind::CloudImg => cloud.images.remove(n).map(|_| None),
                                };
                            }
                            if let Some(r) =
                                removed.iter_mut().find(|r| r.kind == kind && r.id == id)
                            {
                                for n in names {
                                    if !r.names.contains(&n) {
                                        r.names.push(n);
                                    }
                                }
                            } else {
                                removed.push(Removed { kind, id, names });
                            }
                        }
                        Ok(())
                    })
                    .map_err(boxed)
            })
            .map_err(unbox)?;
        Ok(removed)
    }
}

pub(super) fn boxed(e: impl Into<Error>) -> crate::index::file::Error {
    crate::index::file::Error::Abort(Box::new(e.into()))
}

pub(super) fn unbox(e: crate::index::file::Error) -> Error {
    match e {
        crate::index::file::Error::Abort(inner) => match inner.downcast::<Error>() {
            Ok(store) => *store,
            Err(other) => Error::Index(crate::index::file::Error::Abort(other)),
        },
        other => Error::Index(other),
    }
}
