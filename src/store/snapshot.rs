//! Reading: both indexes read once, and the list / inspect / find verbs over them.

use std::path::PathBuf;

use serde::Serialize;

use crate::digest::{Digest, Sums};
use crate::index::{CloudEntry, Entry, IndexFile, OciEntry};
use crate::layout::{BackendLayout, Kind, Role};
use crate::lookup::{Item, Lookup};
use crate::reference::Reference;

use super::{Error, Store};

/// The entry a query resolved to, owned. (One per query and short-lived, so the size
/// difference between the variants does not matter.)
#[allow(clippy::large_enum_variant)]
pub(super) enum ImageEntry {
    Oci(OciEntry),
    Cloud(CloudEntry),
}

/// One row of [`Store::list`]: an index key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListEntry {
    /// Image ID (manifest digest or content sum).
    pub id: Digest,
    /// The index key.
    pub name: String,
    /// Backend.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Bytes stored.
    pub size: u64,
    /// When it was stored (RFC 3339).
    pub created_at: String,
}

/// One row of [`Store::list_with`], borrowed from the index or its cache; serializes as
/// [`ListEntry`] does.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ListRow<'a> {
    /// Image ID (manifest digest or content sum).
    pub id: Digest,
    /// The index key.
    pub name: &'a str,
    /// Backend.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Bytes stored.
    pub size: u64,
    /// When it was stored (RFC 3339).
    pub created_at: &'a str,
}

/// A stored file of an image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlobInfo {
    /// Where it is.
    pub path: PathBuf,
    /// `layer`, `kernel` or `initrd`.
    pub role: Role,
    /// Key digest (layer digest / content sum); the file is named after it.
    pub key: Digest,
    /// Recorded size, if known.
    pub size: Option<u64>,
    /// Recorded sha256 of the stored bytes (absent for entries written by cocoon).
    pub sha256: Option<Digest>,
    /// Recorded blake3 of the stored bytes.
    pub blake3: Option<Digest>,
}

/// Everything known about one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Image ID.
    pub id: Digest,
    /// The first name (sorted).
    pub name: String,
    /// All index keys naming this image in its backend.
    pub names: Vec<String>,
    /// Backend.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Bytes stored.
    pub size: u64,
    /// When it was stored.
    pub created_at: String,
    /// Stored files.
    pub blobs: Vec<BlobInfo>,
}

/// Both indexes, read once. The lookup structure is built on first need: a query that is an
/// exact key of one backend (the boot path's usual case) never pays for it.
pub struct Snapshot {
    pub(super) oci: IndexFile<OciEntry>,
    pub(super) cloud: IndexFile<CloudEntry>,
    lookup: std::sync::OnceLock<Lookup>,
}

/// An image a query resolved to.
#[derive(Debug, Clone)]
pub struct Found {
    /// Backend.
    pub kind: Kind,
    /// Image ID.
    pub id: Digest,
    /// Every key naming the image in its backend, sorted.
    pub keys: Vec<String>,
}

pub(super) fn canonical_of(s: &str) -> Option<String> {
    Reference::parse(s).ok().map(|r| r.canonical())
}

impl Snapshot {
    pub(super) fn build(oci: IndexFile<OciEntry>, cloud: IndexFile<CloudEntry>) -> Self {
        Self {
            oci,
            cloud,
            lookup: std::sync::OnceLock::new(),
        }
    }

    pub(super) fn lookup(&self) -> &Lookup {
        self.lookup.get_or_init(|| {
            let mut items = Vec::with_capacity(self.oci.images.len() + self.cloud.images.len());
            for (key, e) in self.oci.entries() {
                items.push(Item {
                    kind: Kind::Oci,
                    key: key.to_owned(),
                    canonical: canonical_of(key),
                    id: e.id(),
                });
            }
            for (key, e) in self.cloud.entries() {
                items.push(Item {
                    kind: Kind::CloudImg,
                    key: key.to_owned(),
                    canonical: None,
                    id: e.id(),
                });
            }
            Lookup::build(items)
        })
    }

    /// Every key of `kind` whose entry has image ID `id`, sorted.
    pub(super) fn aliases(&self, kind: Kind, id: &Digest) -> Vec<String> {
        // BTreeMap iteration is already in key order.
        match kind {
            Kind::Oci => self
                .oci
                .entries()
                .filter(|(_, e)| e.id() == *id)
                .map(|(k, _)| k.to_owned())
                .collect(),
            Kind::CloudImg => self
                .cloud
                .entries()
                .filter(|(_, e)| e.id() == *id)
                .map(|(k, _)| k.to_owned())
                .collect(),
        }
    }

    /// The entry of the first (sorted) name of a found image.
    pub(super) fn entry_of(&self, f: Found) -> (Found, ImageEntry) {
        let first = f.keys.iter().min().expect("a found image has a name");
        let e = match f.kind {
            Kind::Oci => ImageEntry::Oci(self.oci.get(first).expect("resolved keys exist").clone()),
            Kind::CloudImg => {
                ImageEntry::Cloud(self.cloud.get(first).expect("resolved keys exist").clone())
            }
        };
        (f, e)
    }

    /// Resolve an ID (DESIGN.md §6) to its backend, image ID and all its names.
    ///
    /// # Errors
    /// Not found, or ambiguous (the error lists the candidates).
    pub fn find(&self, query: &str) -> Result<Found, Error> {
        // Step 1 of the precedence without building the lookup: an exact key of exactly one
        // backend. Anything else (a key in both, a reference, a digest, a prefix) goes through it.
        let in_oci = self.oci.get(query).map(Entry::id);
        let in_cloud = self.cloud.get(query).map(Entry::id);
        let (kind, id) = match (in_oci, in_cloud) {
            (Some(id), None) => (Kind::Oci, id),
            (None, Some(id)) => (Kind::CloudImg, id),
            _ => {
                let canonical = canonical_of(query);
                let m = self.lookup().resolve(query, canonical.as_deref())?;
                return Ok(Found {
                    kind: m.kind,
                    id: m.id,
                    keys: m.items.iter().map(|i| i.key.clone()).collect(),
                });
            }
        };
        Ok(Found {
            kind,
            id,
            keys: self.aliases(kind, &id),
        })
    }
}

impl Store {
    /// Read both indexes (no lock: they are replaced by rename) and build the lookup.
    ///
    /// # Errors
    /// A corrupt index, or a lock timeout.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        // No lock: both writers replace an index by rename. A reader that finds a cache missing
        // or stale rebuilds it from what it reads when it can (never waiting for that).
        let rebuild = self.opts.index_cache;
        let oci = self.oci_db().read_for_lookup(rebuild)?;
        let cloud = self.cloud_db().read_for_lookup(rebuild)?;
        Ok(Snapshot::build(oci, cloud))
    }

    /// Every index key of both backends, oci first, sorted by name.
    ///
    /// # Errors
    /// A corrupt index, or a lock timeout.
    pub fn list(&self) -> Result<Vec<ListEntry>, Error> {
        let mut out = Vec::new();
        self.list_with(|r| {
            out.push(ListEntry {
                id: r.id,
                name: r.name.to_owned(),
                kind: r.kind,
                size: r.size,
                created_at: r.created_at.to_owned(),
            });
            Ok::<(), Error>(())
        })?;
        Ok(out)
    }

    /// [`Store::list`] as a stream of borrowed rows, for a caller that prints them: read from
    /// the lookup caches when they are fresh (no per-key allocation), else from the JSON. Rows
    /// are handed out only once the whole answer is read and checked, so `f` sees all or none.
    ///
    /// # Errors
    /// A corrupt index, a lock timeout, or the first error of `f`.
    pub fn list_with<E: From<Error>>(
        &self,
        mut f: impl FnMut(ListRow<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(caches) = self.caches() {
            let tables: Option<Vec<_>> = caches
                .iter()
                .map(|c| {
                    c.tables()
                        .map(|t| (c.kind(), t))
                        .map_err(|e| tracing::debug!("{e}"))
                        .ok()
                })
                .collect();
            let all: Option<Vec<_>> = tables.as_ref().and_then(|tables| {
                tables
                    .iter()
                    .map(|(kind, t)| {
                        t.rows()
                            .map(|rows| (*kind, rows))
                            .map_err(|e| tracing::debug!("{e}"))
                            .ok()
                    })
                    .collect()
            });
            if let Some(all) = all {
                for (kind, rows) in all {
                    for r in rows {
                        f(ListRow {
                            id: r.id,
                            name: r.key,
                            kind,
                            size: r.size,
                            created_at: r.created_at,
                        })?;
                    }
                }
                return Ok(());
            }
        }
        let snap = self.snapshot()?;
        for (k, e) in snap.oci.entries() {
            f(ListRow {
                id: e.id(),
                name: k,
                kind: Kind::Oci,
                size: e.size,
                created_at: &e.created_at,
            })?;
        }
        for (k, e) in snap.cloud.entries() {
            f(ListRow {
                id: e.id(),
                name: k,
                kind: Kind::CloudImg,
                size: e.size,
                created_at: &e.created_at,
            })?;
        }
        Ok(())
    }

    /// Resolve `query` and describe the image.
    ///
    /// # Errors
    /// Not found, ambiguous, or an unreadable index.
    pub fn inspect(&self, query: &str) -> Result<ImageInfo, Error> {
        let (f, e) = self
            .resolve_all(&[query])?
            .pop()
            .expect("one answer per query");
        Ok(self.describe_entry(f.keys, &e))
    }

    /// Describe the image named by `names` (any order) whose first name's entry is `entry`.
    pub(super) fn describe_entry(&self, mut names: Vec<String>, entry: &ImageEntry) -> ImageInfo {
        names.sort();
        let first = names[0].clone();
        let (kind, id, size, created_at, blobs) = match entry {
            ImageEntry::Oci(e) => {
                let b = self.layout.backend(Kind::Oci);
                (
                    Kind::Oci,
                    e.id(),
                    e.size,
                    e.created_at.clone(),
                    blobs_of(&b, e),
                )
            }
            ImageEntry::Cloud(e) => {
                let b = self.layout.backend(Kind::CloudImg);
                (
                    Kind::CloudImg,
                    e.id(),
                    e.size,
                    e.created_at.clone(),
                    blobs_of(&b, e),
                )
            }
        };
        ImageInfo {
            id,
            name: first,
            names,
            kind,
            size,
            created_at,
            blobs,
        }
    }

    pub(super) fn describe<'a>(
        &self,
        snap: &Snapshot,
        kind: Kind,
        keys: impl Iterator<Item = &'a str>,
    ) -> ImageInfo {
        let mut names: Vec<String> = keys.map(str::to_owned).collect();
        names.sort();
        let first = names[0].clone();
        let b = self.layout.backend(kind);
        let (id, size, created_at, blobs) = match kind {
            Kind::Oci => {
                let e = snap.oci.get(&first).expect("resolved keys exist");
                (e.id(), e.size, e.created_at.clone(), blobs_of(&b, e))
            }
            Kind::CloudImg => {
                let e = snap.cloud.get(&first).expect("resolved keys exist");
                (e.id(), e.size, e.created_at.clone(), blobs_of(&b, e))
            }
        };
        ImageInfo {
            id,
            name: first,
            names,
            kind,
            size,
            created_at,
            blobs,
        }
    }
}

/// `list` from both caches; `None` if one turns out unusable (the caller reads the JSON).
/// The stored files of an entry, with their paths.
fn blobs_of(b: &BackendLayout, e: &impl Entry) -> Vec<BlobInfo> {
    e.files()
        .into_iter()
        .map(|f| BlobInfo::new(b.file_path(f.role, &f.key), f.role, f.key, f.sums))
        .collect()
}

impl BlobInfo {
    pub(super) fn new(path: PathBuf, role: Role, key: Digest, sums: Option<Sums>) -> Self {
        Self {
            path,
            role,
            key,
            size: sums.map(|s| s.size),
            sha256: sums.map(|s| s.sha256),
            blake3: sums.map(|s| s.blake3),
        }
    }
}
