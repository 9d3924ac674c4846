//! The Store facade: open, list, inspect, config, remove, verify, gc, and (in `cloud` and `oci`)
//! import and pull.
//!
//! This is what a VM manager embeds. The boot path is [`Store::open`] → [`Store::config`]: two
//! index reads under shared locks, a lookup, and a size check of every file the VM will use; no
//! hashing, no writes, no waiting on any pull in flight (pulls hold the index lock only for their
//! final commit).

mod cloud;
mod oci;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::digest::{Algorithm, Digest, Sums};
use crate::fsutil;
use crate::gc::{self, GcOptions, GcReport, PinSource};
use crate::index::file::Db;
use crate::index::{CloudEntry, Entry, IndexFile, OciEntry};
use crate::lock::{self, LockGuard, LockWait};
use crate::lookup::{self, Item, Lookup};
use crate::reference::Reference;
use crate::verify::{self, Check, Outcome};

pub use crate::layout::{default_root, BackendLayout, Kind, Layout};
pub use cloud::{CloudSource, PullOutcome};
pub use oci::OciSource;

/// Errors of the Store facade. Each names the image, file or URL involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No image matches, or several do (the message lists them).
    #[error(transparent)]
    Lookup(#[from] lookup::Error),
    /// An index file could not be read or written.
    #[error(transparent)]
    Index(#[from] crate::index::file::Error),
    /// A lock could not be taken.
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// Bytes could not be brought into the store (boxed: digest mismatches are large).
    #[error(transparent)]
    Ingest(Box<crate::ingest::Error>),
    /// Hashing a stored file failed.
    #[error(transparent)]
    Verify(#[from] verify::Error),
    /// A filesystem change failed.
    #[error(transparent)]
    Fs(#[from] fsutil::Error),
    /// A cloud image was refused or could not be fetched or converted.
    #[error(transparent)]
    Cloud(#[from] crate::backend::cloudimg::Error),
    /// An oci layer could not be converted.
    #[error(transparent)]
    Layer(#[from] crate::backend::oci::erofs::Error),
    /// A registry operation failed (boxed: digest mismatches are large).
    #[error(transparent)]
    Registry(Box<crate::backend::oci::registry::Error>),
    /// Garbage collection failed.
    #[error(transparent)]
    Gc(#[from] gc::Error),
    /// An image reference that does not parse.
    #[error("invalid reference {input:?}: {source}")]
    Reference {
        /// What was given.
        input: String,
        /// Why it is invalid.
        #[source]
        source: crate::reference::Error,
    },
    /// A name that cannot be used as an index key.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// What was given.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A file an image needs is not there.
    #[error("image {image}: {} is missing", path.display())]
    Missing {
        /// The image (its key).
        image: String,
        /// The file.
        path: PathBuf,
    },
    /// A file an image needs has the wrong size (truncated or replaced).
    #[error("image {image}: {} has {actual} bytes, expected {expected}", path.display())]
    WrongSize {
        /// The image (its key).
        image: String,
        /// The file.
        path: PathBuf,
        /// Recorded size.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The UEFI firmware for cloud images is not installed.
    #[error("firmware {} not found (install it there or pass --firmware)", path.display())]
    FirmwareMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// An oci image without a kernel or initrd.
    #[error(
        "image {image} has no {what} (vmlinuz* / initrd.img* in boot/ or the root of a layer)"
    )]
    NoBootFiles {
        /// The image.
        image: String,
        /// "kernel" or "initrd".
        what: &'static str,
    },
    /// An I/O error, with what was being done and where.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("opening", "reading", …).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure with its context.
    #[error("{0}")]
    Other(String),
}

impl From<crate::backend::oci::registry::Error> for Error {
    fn from(e: crate::backend::oci::registry::Error) -> Self {
        Error::Registry(Box::new(e))
    }
}

impl From<crate::ingest::Error> for Error {
    fn from(e: crate::ingest::Error) -> Self {
        Error::Ingest(Box::new(e))
    }
}

/// Wrap an I/O error with the action and path, for `map_err`.
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Called with the lock path when a lock is contended ("waiting for lock on …").
pub type OnWait = Arc<dyn Fn(&Path) + Send + Sync>;
/// Called with (bytes done, bytes total if known) during long work.
pub type Progress = Arc<dyn Fn(&str, u64, Option<u64>) + Send + Sync>;

/// Options for [`Store::open_opts`].
#[derive(Clone)]
pub struct StoreOptions {
    /// How long to wait for index and digest locks.
    pub lock_wait: LockWait,
    /// Told when a lock is contended.
    pub on_wait: Option<OnWait>,
    /// Told about progress of downloads, conversions and hashing.
    pub progress: Option<Progress>,
    /// Limits for cloud images (download cap, virtual size cap, timeouts).
    pub cloud_limits: crate::backend::cloudimg::Limits,
    /// Registry client options (insecure hosts, credentials, platform).
    pub registry: crate::backend::oci::registry::ClientOptions,
    /// Firmware for cloud image boots; default `<root>/firmware/CLOUDHV.fd`.
    pub firmware: Option<PathBuf>,
    /// How many layers of one oci image are fetched and converted at once (at least 1).
    pub layer_jobs: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            lock_wait: LockWait::timeout(Duration::from_secs(600)),
            on_wait: None,
            progress: None,
            cloud_limits: crate::backend::cloudimg::Limits::default(),
            registry: crate::backend::oci::registry::ClientOptions::default(),
            firmware: None,
            layer_jobs: 3,
        }
    }
}

/// An image store rooted at one directory.
pub struct Store {
    layout: Layout,
    opts: StoreOptions,
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

/// A stored file of an image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlobInfo {
    /// Where it is.
    pub path: PathBuf,
    /// `layer`, `kernel` or `initrd`.
    pub role: &'static str,
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

/// One disk of a VM configuration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Disk {
    /// Path of the blob.
    pub path: PathBuf,
    /// Always read-only.
    pub ro: bool,
    /// Serial the guest sees (`cocoon-layer<N>` / `cocoon-base`).
    pub serial: String,
    /// Role (`layer`).
    pub role: &'static str,
}

/// How a VM boots.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Boot {
    /// Direct kernel boot (oci).
    Kernel {
        /// vmlinuz.
        kernel_path: PathBuf,
        /// initrd.img.
        initrd_path: PathBuf,
    },
    /// UEFI firmware boot (cloudimg).
    Firmware {
        /// CLOUDHV.fd.
        firmware_path: PathBuf,
    },
}

/// The VM disk and boot configuration of one image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VmConfig {
    /// The image's name (index key).
    pub image: String,
    /// Its ID.
    pub image_digest: Digest,
    /// Backend.
    pub image_type: Kind,
    /// Disks in order (oci: base layer first).
    pub storage: Vec<Disk>,
    /// Boot files.
    pub boot: Boot,
}

/// What verify found for one stored file.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyEntry {
    /// The image (first name).
    pub image: String,
    /// The file.
    pub path: PathBuf,
    /// `layer`, `kernel` or `initrd`.
    pub role: &'static str,
    /// ok / corrupt / missing / truncated / unverifiable.
    pub status: &'static str,
    /// Details for corrupt / truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

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

/// Both indexes, read once. The lookup structure is built on first need: a query that is an
/// exact key of one backend (the boot path's usual case) never pays for it.
pub struct Snapshot {
    oci: IndexFile<OciEntry>,
    cloud: IndexFile<CloudEntry>,
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

fn canonical_of(s: &str) -> Option<String> {
    Reference::parse(s).ok().map(|r| r.canonical())
}

impl Snapshot {
    fn build(oci: IndexFile<OciEntry>, cloud: IndexFile<CloudEntry>) -> Self {
        Self {
            oci,
            cloud,
            lookup: std::sync::OnceLock::new(),
        }
    }

    fn lookup(&self) -> &Lookup {
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
    fn aliases(&self, kind: Kind, id: &Digest) -> Vec<String> {
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

/// Size of a file, `None` if it does not exist.
fn file_size(path: &Path) -> Result<Option<u64>, Error> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_err("inspecting", path)(source)),
    }
}

impl Store {
    /// Open the store at `root` with default options. Nothing is created until something is
    /// written.
    ///
    /// # Errors
    /// None today; the signature leaves room for checks of the root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::open_opts(root, StoreOptions::default())
    }

    /// Open the store at `root` with `opts`.
    ///
    /// # Errors
    /// A relative root that cannot be made absolute (the working directory is gone).
    pub fn open_opts(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<Self, Error> {
        // Paths handed to a VM manager must not depend on its working directory.
        let root = root.into();
        let root = std::path::absolute(&root).map_err(io_err("resolving store root", &root))?;
        Ok(Self {
            layout: Layout::new(root),
            opts,
        })
    }

    /// The layout of this store.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn on_wait(&self) -> impl Fn(&Path) + '_ {
        move |p: &Path| {
            if let Some(f) = &self.opts.on_wait {
                f(p);
            }
        }
    }

    fn progress(&self, what: &str, done: u64, total: Option<u64>) {
        if let Some(p) = &self.opts.progress {
            p(what, done, total);
        }
    }

    fn oci_db(&self) -> Db<OciEntry> {
        Db::new(&self.layout.backend(Kind::Oci))
    }

    fn cloud_db(&self) -> Db<CloudEntry> {
        Db::new(&self.layout.backend(Kind::CloudImg))
    }

    /// Read both indexes (shared locks, one at a time) and build the lookup.
    ///
    /// # Errors
    /// A corrupt index, or a lock timeout.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let w = self.on_wait();
        let oci = self.oci_db().read(self.opts.lock_wait, &w)?;
        let cloud = self.cloud_db().read(self.opts.lock_wait, &w)?;
        Ok(Snapshot::build(oci, cloud))
    }

    /// Every index key of both backends, oci first, sorted by name.
    ///
    /// # Errors
    /// A corrupt index, or a lock timeout.
    pub fn list(&self) -> Result<Vec<ListEntry>, Error> {
        let snap = self.snapshot()?;
        let mut out: Vec<ListEntry> = snap
            .oci
            .entries()
            .map(|(k, e)| ListEntry {
                id: e.id(),
                name: k.to_owned(),
                kind: Kind::Oci,
                size: e.size,
                created_at: e.created_at.clone(),
            })
            .collect();
        out.extend(snap.cloud.entries().map(|(k, e)| ListEntry {
            id: e.id(),
            name: k.to_owned(),
            kind: Kind::CloudImg,
            size: e.size,
            created_at: e.created_at.clone(),
        }));
        Ok(out)
    }

    /// Resolve `query` and describe the image.
    ///
    /// # Errors
    /// Not found, ambiguous, or an unreadable index.
    pub fn inspect(&self, query: &str) -> Result<ImageInfo, Error> {
        let snap = self.snapshot()?;
        let f = snap.find(query)?;
        Ok(self.describe(&snap, f.kind, f.keys.iter().map(String::as_str)))
    }

    fn describe<'a>(
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
                (e.id(), e.size, e.created_at.clone(), oci_blobs(&b, e))
            }
            Kind::CloudImg => {
                let e = snap.cloud.get(&first).expect("resolved keys exist");
                let blob =
                    BlobInfo::new(b.blob_path(&e.content_sum), "layer", e.content_sum, e.blob);
                (e.id(), e.size, e.created_at.clone(), vec![blob])
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

    /// The VM configuration of each image, in order. Every file is checked to exist with its
    /// recorded size (a truncated blob is never handed to a VM); content is checked by `verify`.
    ///
    /// # Errors
    /// Not found, ambiguous, a missing or wrong-sized file, missing firmware.
    pub fn config(&self, queries: &[&str]) -> Result<Vec<VmConfig>, Error> {
        let snap = self.snapshot()?;
        queries
            .iter()
            .map(|q| {
                let f = snap.find(q)?;
                let info = self.describe(&snap, f.kind, f.keys.iter().map(String::as_str));
                check_files(&info)?;
                self.vm_config(&snap, info)
            })
            .collect()
    }

    fn vm_config(&self, snap: &Snapshot, info: ImageInfo) -> Result<VmConfig, Error> {
        let layers: Vec<&BlobInfo> = info.blobs.iter().filter(|b| b.role == "layer").collect();
        let (storage, boot) = match info.kind {
            Kind::Oci => {
                let storage = layers
                    .iter()
                    .enumerate()
                    .map(|(n, b)| Disk {
                        path: b.path.clone(),
                        ro: true,
                        serial: format!("cocoon-layer{n}"),
                        role: "layer",
                    })
                    .collect();
                let e = snap.oci.get(&info.name).expect("resolved keys exist");
                let b = self.layout.backend(Kind::Oci);
                let boot = Boot::Kernel {
                    kernel_path: b.kernel_path(&e.kernel_layer),
                    initrd_path: b.initrd_path(&e.initrd_layer),
                };
                (storage, boot)
            }
            Kind::CloudImg => {
                let firmware = self
                    .opts
                    .firmware
                    .clone()
                    .unwrap_or_else(|| self.layout.firmware_path());
                if file_size(&firmware)?.is_none() {
                    return Err(Error::FirmwareMissing { path: firmware });
                }
                let storage = vec![Disk {
                    path: layers[0].path.clone(),
                    ro: true,
                    serial: "cocoon-base".to_owned(),
                    role: "layer",
                }];
                (
                    storage,
                    Boot::Firmware {
                        firmware_path: firmware,
                    },
                )
            }
        };
        Ok(VmConfig {
            image: info.name,
            image_digest: info.id,
            image_type: info.kind,
            storage,
            boot,
        })
    }

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
                        let snap = Snapshot::build(oci.clone(), cloud.clone());
                        let mut plan: Vec<(Kind, Digest, Vec<String>)> = Vec::new();
                        for q in queries {
                            let f = snap.find(q).map_err(boxed)?;
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

    /// Re-hash stored files of the given images (all images if `queries` is empty).
    /// Sizes are compared first, so a truncated file is reported without hashing.
    ///
    /// # Errors
    /// Not found, ambiguous, or an unreadable index; bad content is reported, not an error.
    pub fn verify(
        &self,
        queries: &[&str],
        algorithm: Algorithm,
    ) -> Result<Vec<VerifyEntry>, Error> {
        let snap = self.snapshot()?;
        let mut infos: Vec<ImageInfo> = Vec::new();
        if queries.is_empty() {
            let mut seen = std::collections::HashSet::new();
            for item in snap.lookup().items() {
                if seen.insert((item.kind, item.id)) {
                    let keys = snap.aliases(item.kind, &item.id);
                    infos.push(self.describe(&snap, item.kind, keys.iter().map(String::as_str)));
                }
            }
        } else {
            for q in queries {
                let f = snap.find(q)?;
                infos.push(self.describe(&snap, f.kind, f.keys.iter().map(String::as_str)));
            }
        }
        let mut rows = Vec::new();
        let mut checks = Vec::new();
        for info in &infos {
            for b in &info.blobs {
                let expected = match algorithm {
                    Algorithm::Blake3 => b.blake3,
                    _ => b.sha256,
                };
                checks.push(Check {
                    path: b.path.clone(),
                    expected_size: b.size,
                    expected,
                });
                rows.push((info.name.clone(), b.path.clone(), b.role));
            }
        }
        let results = verify::verify_all(&checks);
        rows.into_iter()
            .zip(results)
            .map(|((image, path, role), r)| {
                let (status, detail) = match r? {
                    Outcome::Ok => ("ok", None),
                    Outcome::Corrupt { expected, actual } => (
                        "corrupt",
                        Some(format!("expected {expected}, found {actual}")),
                    ),
                    Outcome::Missing => ("missing", None),
                    Outcome::Truncated { expected, actual } => (
                        "truncated",
                        Some(format!("expected {expected} bytes, found {actual}")),
                    ),
                    Outcome::Unverifiable => (
                        "unverifiable",
                        Some("no recorded digest (entry written by an older store)".to_owned()),
                    ),
                    #[allow(unreachable_patterns)]
                    _ => ("unknown", None),
                };
                Ok(VerifyEntry {
                    image,
                    path,
                    role,
                    status,
                    detail,
                })
            })
            .collect()
    }

    /// Collect garbage (§9): unreferenced blobs older than the grace period, stale temp entries.
    ///
    /// # Errors
    /// A failing pin source (nothing is deleted), an unreadable index, an I/O failure.
    pub fn gc(&self, opts: &GcOptions, pins: &[&dyn PinSource]) -> Result<GcReport, Error> {
        Ok(gc::collect(&self.layout, opts, pins)?)
    }

    /// Take the per-digest ingest lock of `key` in backend `kind` (creating temp/ if needed).
    fn lock_digest(&self, kind: Kind, key: &Digest) -> Result<LockGuard, Error> {
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
    fn publish_blob(
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
        crate::failpoint::hit("publish.before_rename");
        match fsutil::publish_noclobber(src, &dest)? {
            fsutil::Published::New => Ok(sums),
            fsutil::Published::Existing => {
                // Only possible if something outside the digest-lock protocol wrote it: keep it
                // if it holds the same bytes, never overwrite it.
                let existing = verify::sums_of_file(&dest)?;
                if existing.sha256 == sums.sha256 {
                    Ok(existing)
                } else {
                    Err(Error::Other(format!(
                        "{} exists with different content ({}, expected {}); run `imgstore verify`",
                        dest.display(),
                        existing.sha256,
                        sums.sha256
                    )))
                }
            }
        }
    }

    /// The sums of the stored blob `key`, if it is there and usable: its size must match what
    /// an index records for it; a blob no index describes (left by a removed image, or stored by
    /// cocoon) is hashed now. A blob whose size contradicts the record is damaged: it is removed
    /// so the caller stores a fresh copy. The caller must hold the digest lock of `key`.
    fn usable_blob(
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

fn oci_blobs(b: &BackendLayout, e: &OciEntry) -> Vec<BlobInfo> {
    let mut blobs: Vec<BlobInfo> = e
        .layers
        .iter()
        .map(|l| BlobInfo::new(b.blob_path(&l.digest), "layer", l.digest, l.blob))
        .collect();
    blobs.push(BlobInfo::new(
        b.kernel_path(&e.kernel_layer),
        "kernel",
        e.kernel_layer,
        e.kernel,
    ));
    blobs.push(BlobInfo::new(
        b.initrd_path(&e.initrd_layer),
        "initrd",
        e.initrd_layer,
        e.initrd,
    ));
    blobs
}

impl BlobInfo {
    fn new(path: PathBuf, role: &'static str, key: Digest, sums: Option<Sums>) -> Self {
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

/// Every file exists with its recorded size (or, for legacy entries, exists and is not empty).
fn check_files(info: &ImageInfo) -> Result<(), Error> {
    for b in &info.blobs {
        match (file_size(&b.path)?, b.size) {
            (None, _) => {
                return Err(Error::Missing {
                    image: info.name.clone(),
                    path: b.path.clone(),
                })
            }
            (Some(actual), Some(expected)) if actual != expected => {
                return Err(Error::WrongSize {
                    image: info.name.clone(),
                    path: b.path.clone(),
                    expected,
                    actual,
                })
            }
            (Some(0), None) => {
                return Err(Error::WrongSize {
                    image: info.name.clone(),
                    path: b.path.clone(),
                    expected: 1,
                    actual: 0,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

fn boxed(e: impl Into<Error>) -> crate::index::file::Error {
    crate::index::file::Error::Abort(Box::new(e.into()))
}

fn unbox(e: crate::index::file::Error) -> Error {
    match e {
        crate::index::file::Error::Abort(inner) => match inner.downcast::<Error>() {
            Ok(store) => *store,
            Err(other) => Error::Other(other.to_string()),
        },
        other => Error::Index(other),
    }
}
