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
//! Each layer is converted in one streaming pass (`oci_layer.rs`); imported files are converted
//! before the locks, since their digest is known only once they are read.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::backend::oci::layer::Compression;
use crate::backend::oci::registry::artifact::{self, Classified};
use crate::backend::oci::registry::Client;
use crate::digest::Digest;
use crate::fsutil::{self, TempDir};
use crate::index::{ChainBlob, LayerEntry, OciEntry};
use crate::ingest;
use crate::input::Input;
use crate::reference::Reference;

use super::cloud::PullOutcome;
use super::config::check_files;
use super::import::{
    check_name, check_pinned, describe, is_oci_archive, open_inputs, same_reference, sniff,
    Content, SNIFF,
};
use super::oci_chain::Chain;
use super::oci_layer::{Layer, LayerFrom, Prepared, Stored};
use super::oci_layout::{read_layout, unpack_layout_archive};
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

    /// Import opened sources as an OCI image: one oci-archive, or layer tars in order. Each
    /// layer tar is read once, as a stream, straight into its EROFS image (before any lock: its
    /// digest names it). Only a plain tar that starts like an oci-archive is copied into the
    /// store's `temp/` first (its blobs are read in the order its index names them).
    pub(super) fn import_oci_inputs(
        &self,
        name: &str,
        mut inputs: Vec<Input>,
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
        let progress = |n: u64| {
            let d = done.fetch_add(n, Ordering::Relaxed) + n;
            self.progress(&label, d, total);
        };
        let mut names = Vec::with_capacity(inputs.len());
        let mut archive_like = false;
        for input in &mut inputs {
            let source_name = input.name().to_owned();
            let head = input.peek(SNIFF)?;
            let Content::Tar(compression) = sniff(head) else {
                return Err(Error::NotALayer {
                    name: source_name,
                    found: describe(head),
                });
            };
            archive_like = compression == Compression::None && may_be_oci_archive(head);
            names.push(source_name);
        }
        if let ([input], true) = (&mut inputs[..], archive_like) {
            let source_name = names[0].clone();
            let copy = ingest::stage_scratch(
                &b.temp_dir(),
                input,
                &source_name,
                &ingest::Expected::default(),
                &|n| self.progress(&label, n, total),
            )?;
            if is_oci_archive(copy.temp.path()) {
                let dir = TempDir::create_in(&b.temp_dir(), "archive")?;
                unpack_layout_archive(copy.temp.path(), &source_name, dir.path())?;
                let (id, layers) =
                    read_layout(dir.path(), &source_name, None, &self.opts.registry.platform)?;
                check_pinned(name, &id)?;
                return self.store_oci(&key, id, &layers);
            }
            // A layer whose first entries look like a layout's: convert the copy (its second
            // and last read; the input itself was read once).
            let mut copy_input = Input::open(copy.temp.path())?;
            let (digest, size, converted) = self.convert_input(&mut copy_input, &|_| {})?;
            return self.import_converted(name, &key, vec![(source_name, digest, size, converted)]);
        }
        let converted = self.convert_inputs(inputs, &progress)?;
        let with_names = names
            .into_iter()
            .zip(converted)
            .map(|(n, (d, s, c))| (n, d, s, c))
            .collect();
        self.import_converted(name, &key, with_names)
    }

    /// Convert layer inputs, up to `layer_jobs` at a time; results in input order.
    fn convert_inputs(
        &self,
        inputs: Vec<Input>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<(Digest, u64, super::oci_layer::Converted)>, Error> {
        let n = inputs.len();
        let queue = Mutex::new(inputs.into_iter().enumerate());
        let results: Mutex<Vec<Option<Result<_, Error>>>> =
            Mutex::new((0..n).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.opts.layer_jobs.clamp(1, n.max(1)) {
                s.spawn(|| loop {
                    let Some((i, mut input)) = queue.lock().next() else {
                        break;
                    };
                    let r = self.convert_input(&mut input, progress);
                    let failed = r.is_err();
                    results.lock()[i] = Some(r);
                    if failed {
                        // Stop handing out inputs; those in flight finish on their own.
                        queue.lock().by_ref().for_each(drop);
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(n);
        for r in results.into_inner().into_iter().flatten() {
            out.push(r?);
        }
        Ok(out)
    }

    /// Store layers converted from the user's files, in order, under `name`.
    fn import_converted(
        &self,
        name: &str,
        key: &str,
        converted: Vec<(String, Digest, u64, super::oci_layer::Converted)>,
    ) -> Result<PullOutcome, Error> {
        let mut layers = Vec::with_capacity(converted.len());
        let mut descs = Vec::with_capacity(converted.len());
        for (source_name, digest, size, c) in converted {
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest.to_string(),
                "size": size,
            }));
            layers.push(Layer {
                digest,
                from: LayerFrom::Converted {
                    name: source_name,
                    done: Mutex::new(Some(Box::new(c))),
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
        self.store_oci(key, id, &layers)
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
        let mut chains = None;
        // The gc lease, from the reuse-or-publish decision to the commit: every layer (and chain
        // image) found in the store must still be there under it; one a collection deleted
        // meanwhile is stored again, without the lease.
        let lease = loop {
            // Refuse an image without boot files before anything of it reaches blobs/.
            let stored: Vec<Stored> = prepared.iter().map(|p| p.stored).collect();
            oci_entry(key, id, layers, &stored, &[])?;
            if chains.is_none() {
                let recorded = self.recorded_layer_sums()?;
                chains = Some(self.prepare_chains(layers, &prepared, &recorded)?);
            }
            let lease = self.lease(Kind::Oci)?;
            let gone: Vec<usize> = (0..layers.len())
                .filter(|&i| {
                    prepared[i]
                        .reuse
                        .is_some_and(|r| !self.still_there(Kind::Oci, &layers[i].digest, &r))
                })
                .collect();
            let chain_gone = chains.iter().flatten().flatten().any(|c| {
                c.reuse
                    .is_some_and(|r| !self.still_there(Kind::Oci, &c.key, &r))
            });
            if gone.is_empty() && !chain_gone {
                break lease;
            }
            drop(lease);
            // The views of gone layers went with them: every chain is decided again.
            chains = None;
            for (i, p) in gone.iter().zip(self.store_layers(key, layers, &gone)?) {
                prepared[*i] = p;
            }
        };
        let mut chains = chains.unwrap_or_default();
        let mut stored: Vec<Stored> = prepared.iter().map(|p| p.stored).collect();
        for (((layer, p), s), chain) in layers
            .iter()
            .zip(prepared)
            .zip(&mut stored)
            .zip(&mut chains)
        {
            if let Some(c) = p.staged {
                let dest = b.blob_path(&layer.digest);
                let boot_dest = b.boot_dir(&layer.digest);
                s.sums = ingest::publish_layer(c.blob, &c.boot, &dest, &boot_dest)?;
            }
            if let Some(c) = chain {
                if let Some(staged) = c.staged.take() {
                    c.sums = ingest::publish(staged, &b.blob_path(&c.key))?;
                }
            }
        }
        let chain_entries: Vec<_> = chains
            .iter()
            .map(|c| c.as_ref().map(Chain::entry))
            .collect();
        let entry = oci_entry(key, id, layers, &stored, &chain_entries)?;
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
                LayerFrom::Converted { .. } | LayerFrom::LayoutBlob { .. } => 0,
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

/// Whether a plain tar's first entries are those of an oci-archive (`oci-layout`, `index.json`,
/// `blobs/`) rather than a layer's.
fn may_be_oci_archive(head: &[u8]) -> bool {
    let mut a = tar::Archive::new(head);
    let Ok(entries) = a.entries() else {
        return false;
    };
    for e in entries.take(16) {
        let Ok(e) = e else { break };
        let path = e.path_bytes();
        let first = path
            .split(|&b| b == b'/')
            .find(|c| !c.is_empty() && *c != b".")
            .unwrap_or_default();
        if matches!(first, b"oci-layout" | b"index.json" | b"blobs") {
            return true;
        }
    }
    false
}

/// The index key of an oci image imported as `name`: its canonical reference when it is one.
fn oci_key(name: &str) -> String {
    Reference::parse(name).map_or_else(|_| name.to_owned(), |r| r.canonical())
}

/// The index entry for stored layers and their chain images (`chains`: one slot per layer, or
/// empty): kernel and initrd from the last layer providing each.
fn oci_entry(
    key: &str,
    id: Digest,
    layers: &[Layer<'_>],
    stored: &[Stored],
    chains: &[Option<ChainBlob>],
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
            .enumerate()
            .map(|(i, (l, s))| LayerEntry {
                digest: l.digest,
                blob: Some(s.sums),
                chain: chains.get(i).copied().flatten(),
                extra: serde_json::Map::new(),
            })
            .collect(),
        kernel_layer: kl.digest,
        initrd_layer: il.digest,
        size: stored.iter().map(|s| s.sums.size).sum::<u64>()
            + chains.iter().flatten().map(|c| c.blob.size).sum::<u64>(),
        created_at: crate::index::schema::now_rfc3339(),
        kernel: ks.kernel,
        initrd: is.initrd,
        extra: serde_json::Map::new(),
    };
    Ok(entry)
}
