//! OCI images into the store: pull from a registry, import layer tars, an OCI layout directory
//! or an oci-archive tar (DESIGN.md §8).
//!
//! Order of work: resolve the manifest (no locks) → take the digest locks of all layers, sorted
//! (so two pulls sharing layers wait for each other instead of deadlocking) → fetch and convert
//! missing layers concurrently into held temp dirs → check the image has a kernel and an initrd
//! → publish each new layer's boot dir before its blob (a blob that exists is always complete)
//! → commit the index entry under a short exclusive lock → release. Nothing is published until
//! every layer is ready, so a failed pull or import leaves no blob behind. The gc lease is held
//! only from "every reused layer is still there" to the commit.
//! (Slightly over 600 lines on purpose: one verb, read top to bottom; the per-layer conversion at
//! its end is rewritten when the streaming EROFS writer of `src/erofs/` replaces unpack + mkfs.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::backend::oci::erofs;
use crate::backend::oci::registry::artifact::{self, Classified};
use crate::backend::oci::registry::{Client, Descriptor};
use crate::backend::oci::unpack::Compression;
use crate::digest::{Digest, Sums};
use crate::fsutil::{self, TempDir, TempFile};
use crate::index::{LayerEntry, OciEntry};
use crate::ingest::{self, Expected, Staged, StagedDir};
use crate::input::Input;
use crate::reference::Reference;
use crate::verify;

use super::cloud::PullOutcome;
use super::config::check_files;
use super::import::{
    check_name, check_pinned, describe, is_oci_archive, open_inputs, same_reference, sniff,
    Content, SNIFF,
};
use super::oci_layout::{read_layout, unpack_layout_archive};
use super::publish::Reusable;
use super::remove::{boxed, unbox};
use super::{Error, Kind, Store};

/// Where an OCI image comes from, for [`Store::import_oci`].
#[derive(Debug, Clone)]
pub enum OciSource {
    /// Layer tars (plain, gzip or zstd), base layer first.
    LayerTars(Vec<PathBuf>),
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`), and the tag
    /// (`org.opencontainers.image.ref.name`) of the image to take when it holds several.
    Layout {
        /// The directory.
        dir: PathBuf,
        /// The tag, as skopeo's `oci:DIR:TAG` names it.
        tag: Option<String>,
    },
    /// A tar of an OCI image layout (`oci-archive`).
    Archive(PathBuf),
}

/// Where one layer's compressed bytes come from.
pub(super) enum LayerFrom<'a> {
    Registry {
        client: &'a Client,
        host: &'a str,
        repository: &'a str,
        desc: Descriptor,
    },
    /// A user's layer tar, already read once into the store's `temp/` (hashed on the way).
    Staged {
        /// The file as the user named it.
        name: String,
        /// The copy.
        staged: ingest::Staged,
    },
    /// A blob of an OCI layout: read only if the store lacks the layer, and checked against
    /// the manifest's digest and size while it is read.
    LayoutBlob { path: PathBuf, size: u64 },
}

impl LayerFrom<'_> {
    /// The layer's source for messages.
    fn label(&self, digest: &Digest) -> String {
        match self {
            LayerFrom::Registry { .. } => format!("layer {digest}"),
            LayerFrom::Staged { name, .. } => name.clone(),
            LayerFrom::LayoutBlob { path, .. } => path.display().to_string(),
        }
    }
}

pub(super) struct Layer<'a> {
    pub(super) digest: Digest,
    pub(super) from: LayerFrom<'a>,
}

/// What one stored layer provides.
#[derive(Clone, Copy)]
struct Stored {
    sums: Sums,
    kernel: Option<Sums>,
    initrd: Option<Sums>,
}

/// A layer ready to publish: already in the store (`reuse`), or converted into a held temp dir.
struct Prepared {
    stored: Stored,
    staged: Option<Converted>,
    reuse: Option<Reusable>,
}

/// A converted layer, staged by ingest in its held temp dir (dropping it removes everything).
struct Converted {
    blob: Staged,
    boot: StagedDir,
    _work: TempDir,
}

impl Store {
    /// Pull `reference` from its registry. `ubuntu` and `docker.io/library/ubuntu:latest` are
    /// the same image and the same index entry (keys are canonical references).
    ///
    /// # Errors
    /// An invalid reference, registry failures (auth, not found, digest mismatch, unreachable),
    /// layer conversion failures, an image without kernel or initrd, a lock timeout.
    pub fn pull_oci(&self, reference: &str, force: bool) -> Result<PullOutcome, Error> {
        let r = Reference::parse(reference).map_err(|source| Error::Reference {
            input: reference.to_owned(),
            source,
        })?;
        let key = r.canonical();
        let client = Client::new(self.opts.registry.clone());
        let tag_or_digest = r
            .digest()
            .map(|d| d.to_string())
            .or_else(|| r.tag().map(str::to_owned))
            .unwrap_or_else(|| "latest".to_owned());
        let resolved = client.resolve(r.domain(), r.path(), &tag_or_digest)?;
        // A cloud image kept in the registry as an artifact goes to the cloud backend.
        if let Classified::Cloud(a) = artifact::classify(&resolved.raw, &key)? {
            return self.pull_cloud_artifact(&key, &client, &r, &resolved, &a, force);
        }
        self.check_oci_name_free(&key)?;
        if !force {
            if let Some(done) = self.already_stored(&key, &resolved.manifest_digest)? {
                return Ok(done);
            }
        }
        let layers: Vec<Layer<'_>> = resolved
            .manifest
            .layers
            .iter()
            .map(|d| Layer {
                digest: d.digest,
                from: LayerFrom::Registry {
                    client: &client,
                    host: r.domain(),
                    repository: r.path(),
                    desc: d.clone(),
                },
            })
            .collect();
        self.store_oci(&key, resolved.manifest_digest, &layers)
    }

    /// Import an OCI image under `name`.
    ///
    /// # Errors
    /// Unreadable or malformed sources, layer conversion failures (including hostile tar
    /// entries), an image without kernel or initrd, a lock timeout.
    pub fn import_oci(&self, name: &str, source: &OciSource) -> Result<PullOutcome, Error> {
        check_name(name)?;
        match source {
            OciSource::LayerTars(files) => {
                if files.is_empty() {
                    return Err(Error::NoInput { what: "layer tars" });
                }
                self.import_oci_inputs(name, open_inputs(files)?)
            }
            OciSource::Archive(tar) => self.import_oci_inputs(name, vec![Input::open(tar)?]),
            OciSource::Layout { dir, tag } => {
                let key = oci_key(name);
                self.check_oci_name_free(&key)?;
                let label = dir.display().to_string();
                let (id, layers) =
                    read_layout(dir, &label, tag.as_deref(), &self.opts.registry.platform)?;
                check_pinned(name, &id)?;
                self.store_oci(&key, id, &layers)
            }
        }
    }

    /// Import opened sources as an OCI image: one oci-archive, or layer tars in order. Each is
    /// read once, into the store's `temp/`, before any lock is taken.
    pub(super) fn import_oci_inputs(
        &self,
        name: &str,
        inputs: Vec<Input>,
    ) -> Result<PullOutcome, Error> {
        check_name(name)?;
        if inputs.is_empty() {
            return Err(Error::NoInput { what: "layer tars" });
        }
        let key = oci_key(name);
        self.check_oci_name_free(&key)?;
        let b = self.layout.backend(Kind::Oci);
        fsutil::create_dir_all(&b.temp_dir())?;
        let label = format!("importing {key}");
        let total: Option<u64> = inputs.iter().map(Input::size).sum();
        let done = AtomicU64::new(0);
        let mut staged = Vec::with_capacity(inputs.len());
        for mut input in inputs {
            let source_name = input.name().to_owned();
            let head = input.peek(SNIFF)?;
            let Content::Tar(compression) = sniff(head) else {
                return Err(Error::NotALayer {
                    name: source_name,
                    found: describe(head),
                });
            };
            let base = done.load(Ordering::Relaxed);
            let copy = ingest::stage_scratch(
                &b.temp_dir(),
                &mut input,
                &source_name,
                &ingest::Expected::default(),
                &|n| {
                    done.store(base + n, Ordering::Relaxed);
                    self.progress(&label, base + n, total);
                },
            )?;
            staged.push((source_name, compression, copy));
        }
        if let [(source_name, Compression::None, copy)] = &staged[..] {
            if is_oci_archive(copy.temp.path()) {
                let dir = TempDir::create_in(&b.temp_dir(), "archive")?;
                unpack_layout_archive(copy.temp.path(), source_name, dir.path())?;
                let (id, layers) =
                    read_layout(dir.path(), source_name, None, &self.opts.registry.platform)?;
                check_pinned(name, &id)?;
                return self.store_oci(&key, id, &layers);
            }
        }
        let mut layers = Vec::with_capacity(staged.len());
        let mut descs = Vec::with_capacity(staged.len());
        for (source_name, _, copy) in staged {
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": copy.sums.sha256.to_string(),
                "size": copy.sums.size,
            }));
            layers.push(Layer {
                digest: copy.sums.sha256,
                from: LayerFrom::Staged {
                    name: source_name,
                    staged: copy,
                },
            });
        }
        // A stable ID: the digest of a manifest made only from the layers.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "layers": descs,
        });
        let id = Digest::sha256_of(manifest.to_string().as_bytes());
        check_pinned(name, &id)?;
        self.store_oci(&key, id, &layers)
    }

    fn already_stored(&self, key: &str, id: &Digest) -> Result<Option<PullOutcome>, Error> {
        let snap = self.snapshot()?;
        let Some(e) = snap.oci.get(key) else {
            return Ok(None);
        };
        if e.manifest_digest != *id {
            return Ok(None);
        }
        let info = self.describe(&snap, Kind::Oci, std::iter::once(key));
        Ok(check_files(&info).is_ok().then(|| PullOutcome {
            name: key.to_owned(),
            id: *id,
            kind: Kind::Oci,
            reused: true,
            revalidation: None,
        }))
    }

    fn store_oci(&self, key: &str, id: Digest, layers: &[Layer<'_>]) -> Result<PullOutcome, Error> {
        let b = self.layout.backend(Kind::Oci);
        fsutil::create_dir_all(&b.temp_dir())?;
        fsutil::create_dir_all(&b.blobs_dir())?;
        fsutil::create_dir_all(&b.boot_root())?;

        // Digest locks, sorted: the one lock order every ingest follows.
        let unique: BTreeSet<Digest> = layers.iter().map(|l| l.digest).collect();
        let mut guards = Vec::with_capacity(unique.len());
        for d in &unique {
            guards.push(self.lock_digest(Kind::Oci, d)?);
        }
        let all: Vec<usize> = (0..layers.len()).collect();
        let mut prepared = self.store_layers(key, layers, &all)?;
        // The gc lease, from the reuse-or-publish decision to the commit: every layer found in
        // the store must still be there under it; one a collection deleted meanwhile is fetched
        // and converted again, without the lease.
        let lease = loop {
            // Refuse an image without boot files before anything of it reaches blobs/.
            let stored: Vec<Stored> = prepared.iter().map(|p| p.stored).collect();
            oci_entry(key, id, layers, &stored)?;
            let lease = self.lease(Kind::Oci)?;
            let gone: Vec<usize> = (0..layers.len())
                .filter(|&i| {
                    prepared[i]
                        .reuse
                        .is_some_and(|r| !self.still_there(Kind::Oci, &layers[i].digest, &r))
                })
                .collect();
            if gone.is_empty() {
                break lease;
            }
            drop(lease);
            for (i, p) in gone.iter().zip(self.store_layers(key, layers, &gone)?) {
                prepared[*i] = p;
            }
        };
        let mut stored: Vec<Stored> = prepared.iter().map(|p| p.stored).collect();
        for ((layer, p), s) in layers.iter().zip(prepared).zip(&mut stored) {
            if let Some(c) = p.staged {
                let dest = b.blob_path(&layer.digest);
                let boot_dest = b.boot_dir(&layer.digest);
                s.sums = ingest::publish_layer(c.blob, &c.boot, &dest, &boot_dest)?;
            }
        }
        let entry = oci_entry(key, id, layers, &stored)?;
        self.commit_oci(key, &entry)?;
        drop(lease);
        drop(guards);
        Ok(PullOutcome {
            name: key.to_owned(),
            id,
            kind: Kind::Oci,
            reused: false,
            revalidation: None,
        })
    }

    /// Fetch (if needed) and convert the layers `which` (indices into `layers`), a few at a
    /// time, without publishing any; results in the order of `which`. The caller holds every
    /// layer's digest lock, not the gc lease.
    fn store_layers(
        &self,
        key: &str,
        layers: &[Layer<'_>],
        which: &[usize],
    ) -> Result<Vec<Prepared>, Error> {
        let recorded = self.recorded_layer_sums()?;
        let total: u64 = which
            .iter()
            .map(|&i| match &layers[i].from {
                LayerFrom::Registry { desc, .. } => desc.size,
                LayerFrom::Staged { .. } | LayerFrom::LayoutBlob { .. } => 0,
            })
            .sum();
        let done = AtomicU64::new(0);
        let label = format!("pulling {key}");
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Prepared, Error>>>> =
            Mutex::new(which.iter().map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.opts.layer_jobs.clamp(1, which.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = which.get(i).map(|&l| &layers[l]) else {
                        break;
                    };
                    let r = self.store_layer(layer, &recorded, &|n| {
                        let d = done.fetch_add(n, Ordering::Relaxed) + n;
                        self.progress(&label, d, (total > 0).then_some(total));
                    });
                    let failed = r.is_err();
                    results.lock()[i] = Some(r);
                    if failed {
                        // Stop handing out work; layers in flight finish or fail on their own.
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                    }
                });
            }
        });
        let mut stored = Vec::with_capacity(layers.len());
        for r in results.into_inner() {
            match r {
                Some(Ok(p)) => stored.push(p),
                Some(Err(e)) => return Err(e),
                // Workers take layers in index order and stop taking new ones only after a
                // failure, which the loop returned above before reaching an untaken layer.
                None => unreachable!("a layer after a failed one is never left untaken"),
            }
        }
        Ok(stored)
    }

    /// Insert `entry` under `key` (short exclusive index lock).
    fn commit_oci(&self, key: &str, entry: &OciEntry) -> Result<(), Error> {
        let canonical = Reference::parse(key).ok().map(|r| r.canonical());
        let w = self.on_wait();
        self.oci_db()
            .update(self.opts.lock_wait, &w, |idx| {
                // One reference names one image across both backends. The cloud index is read under
                // this lock (oci before cloudimg, the one lock order), and cloud commits hold it too.
                let cloud = self.cloud_db().read(self.opts.lock_wait, &w)?;
                if let Some(other) = same_reference(key, cloud.entries().map(|(k, _)| k)) {
                    return Err(boxed(Error::NameTaken {
                        name: key.to_owned(),
                        kind: Kind::CloudImg,
                        key: other,
                    }));
                }
                // Keys cocoon stored verbatim (`ubuntu:24.04`) name the same image as the canonical
                // key: replace them rather than keep two entries for one name.
                if let Some(c) = &canonical {
                    let stale: Vec<String> = idx
                        .images
                        .keys()
                        .filter(|k| k.as_str() != key)
                        .filter(|k| Reference::parse(k).is_ok_and(|r| r.canonical() == *c))
                        .cloned()
                        .collect();
                    for k in stale {
                        idx.images.remove(&k);
                    }
                }
                let keep_time = idx.get(key).filter(|old| {
                    old.manifest_digest == entry.manifest_digest && old.layers == entry.layers
                });
                let mut entry = entry.clone();
                if let Some(old) = keep_time {
                    entry.created_at.clone_from(&old.created_at);
                    entry.extra.clone_from(&old.extra);
                }
                idx.images.insert(key.to_owned(), Some(entry));
                Ok(())
            })
            .map_err(unbox)?;
        Ok(())
    }
}

/// The index key of an oci image imported as `name`: its canonical reference when it is one.
fn oci_key(name: &str) -> String {
    Reference::parse(name).map_or_else(|_| name.to_owned(), |r| r.canonical())
}

/// The index entry for stored layers: kernel and initrd from the last layer providing each.
fn oci_entry(
    key: &str,
    id: Digest,
    layers: &[Layer<'_>],
    stored: &[Stored],
) -> Result<OciEntry, Error> {
    let kernel = layers
        .iter()
        .zip(stored)
        .rev()
        .find(|(_, s)| s.kernel.is_some());
    let initrd = layers
        .iter()
        .zip(stored)
        .rev()
        .find(|(_, s)| s.initrd.is_some());
    let (Some((kl, ks)), Some((il, is))) = (kernel, initrd) else {
        return Err(Error::NoBootFiles {
            image: key.to_owned(),
            what: if kernel.is_none() { "kernel" } else { "initrd" },
        });
    };
    let entry = OciEntry {
        reference: key.to_owned(),
        manifest_digest: id,
        layers: layers
            .iter()
            .zip(stored)
            .map(|(l, s)| LayerEntry {
                digest: l.digest,
                blob: Some(s.sums),
                extra: serde_json::Map::new(),
            })
            .collect(),
        kernel_layer: kl.digest,
        initrd_layer: il.digest,
        size: stored.iter().map(|s| s.sums.size).sum(),
        created_at: crate::index::schema::now_rfc3339(),
        kernel: ks.kernel,
        initrd: is.initrd,
        extra: serde_json::Map::new(),
    };
    Ok(entry)
}

impl Store {
    /// Layer sums recorded by any oci entry, to reuse stored blobs without re-hashing them.
    fn recorded_layer_sums(&self) -> Result<std::collections::HashMap<Digest, Sums>, Error> {
        let w = self.on_wait();
        let idx = self.oci_db().read(self.opts.lock_wait, &w)?;
        Ok(idx
            .entries()
            .flat_map(|(_, e)| e.layers.iter())
            .filter_map(|l| l.blob.map(|s| (l.digest, s)))
            .collect())
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one layer read top to bottom; the EROFS-writer rework of this step splits it"
    )]
    fn store_layer(
        &self,
        layer: &Layer<'_>,
        recorded: &std::collections::HashMap<Digest, Sums>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Prepared, Error> {
        let b = self.layout.backend(Kind::Oci);
        let file_sums = |p: PathBuf| -> Result<Option<Sums>, Error> {
            if p.exists() {
                Ok(Some(verify::sums_of_file(&p)?))
            } else {
                Ok(None)
            }
        };
        if let Some(reuse) = self.usable_blob(
            Kind::Oci,
            &layer.digest,
            recorded.get(&layer.digest).copied(),
        )? {
            return Ok(Prepared {
                stored: Stored {
                    sums: reuse.sums,
                    kernel: file_sums(b.kernel_path(&layer.digest))?,
                    initrd: file_sums(b.initrd_path(&layer.digest))?,
                },
                staged: None,
                reuse: Some(reuse),
            });
        }
        // Everything for this layer happens in one held temp dir: GC leaves it alone while we
        // live, and dropping it cleans up whatever was not published.
        let work = TempDir::create_in(&b.temp_dir(), "layer")?;
        let fetched;
        let src: &Path = match &layer.from {
            LayerFrom::Staged { staged, .. } => staged.temp.path(),
            LayerFrom::LayoutBlob { path, size } => {
                let mut input = Input::open(path)?;
                let name = path.display().to_string();
                let expected = ingest::Expected {
                    digest: Some(layer.digest),
                    size: Some(*size),
                    max_size: None,
                };
                // `stage` reports a running total; the layer progress adds increments.
                let last = AtomicU64::new(0);
                fetched = ingest::stage_scratch(work.path(), &mut input, &name, &expected, &|n| {
                    progress(n.saturating_sub(last.swap(n, Ordering::Relaxed)));
                })?
                .temp;
                fetched.path()
            }
            LayerFrom::Registry {
                client,
                host,
                repository,
                desc,
            } => {
                let last = AtomicU64::new(0);
                fetched = client.fetch_blob(
                    host,
                    repository,
                    desc,
                    || {
                        last.store(0, Ordering::Relaxed);
                        TempFile::create_in(work.path(), "blob")
                            .map_err(|e| std::io::Error::other(e.to_string()))
                    },
                    |n| {
                        let prev = last.swap(n, Ordering::Relaxed);
                        progress(n.saturating_sub(prev));
                    },
                )?;
                fetched.path()
            }
        };
        let blob = work.path().join("layer.erofs");
        let boot = work.path().join("boot");
        if !super::native::adopt(layer, src, &blob, &boot)? {
            let source_name = layer.from.label(&layer.digest);
            erofs::convert_layer(src, &layer.digest, work.path(), &blob, &boot).map_err(
                |source| Error::LayerFrom {
                    source_name,
                    source,
                },
            )?;
        }
        // mkfs.erofs wrote the image out of order (superblock last): ingest hashes it now.
        let what = format!("layer {} (EROFS)", layer.digest);
        let blob =
            ingest::stage_filled(TempFile::adopt(blob)?, &what, &Expected::default(), &|_| {})?;
        let boot = ingest::stage_dir(&boot)?;
        // The boot dir is named like the published one: the same file names inside.
        let in_boot = |published: PathBuf| {
            published
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| boot.files.get(n))
                .copied()
        };
        let stored = Stored {
            sums: blob.sums,
            kernel: in_boot(b.kernel_path(&layer.digest)),
            initrd: in_boot(b.initrd_path(&layer.digest)),
        };
        Ok(Prepared {
            stored,
            staged: Some(Converted {
                blob,
                boot,
                _work: work,
            }),
            reuse: None,
        })
    }
}
