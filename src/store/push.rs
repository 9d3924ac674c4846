//! `push ID REF`: a stored image to a registry, in the form other hosts pull without work.
//!
//! - A cloud image goes as a cocoon os-image artifact: its qcow2 blob as one
//!   `…disk.qcow2` layer, or as `…disk.qcow2.part` layers of [`PushOptions::part_size`] bytes
//!   titled `disk.qcow2.part.000`, `.001`, … (the order a pull concatenates them in).
//! - An OCI image goes as an EROFS-native image, as containerd's `ctr images convert --erofs`
//!   publishes one: every layer its stored EROFS blob (`application/vnd.erofs.layer.v1`, the
//!   blob's sha256 both digest and diff ID, as for any uncompressed layer) and an OCI image
//!   config naming the store's platform.
//!
//! Blobs the registry has are not sent (HEAD), blobs of an image pulled from another repository
//! of the same registry are mounted, the rest uploaded; the manifest goes last. Reads only:
//! the store is not changed and no lock is held beyond the lookup (a blob a collection removes
//! meanwhile fails the push with the path named).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;
use sha2::Digest as _;

use super::snapshot::ImageEntry;
use super::{Error, Kind, Store};
use crate::backend::oci::registry::artifact::{DiskFormat, OS_IMAGE, TITLE};
use crate::backend::oci::registry::manifest::OCI_MANIFEST;
use crate::backend::oci::registry::push::{BlobPush, Upload, DEFAULT_CHUNK};
use crate::backend::oci::registry::{Client, Descriptor};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::verify;

/// Media type of an EROFS-native layer (containerd's, and what a pull stores as it is).
pub const EROFS_LAYER: &str = "application/vnd.erofs.layer.v1";
/// Media type of an OCI image config.
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The OCI empty descriptor's media type and content (`{}`), an artifact's config.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Parts of a split cloud image are at most this big unless told otherwise: 1 GiB keeps every
/// part far under the per-layer limits of the common registries (10 GB on Docker Hub and GHCR,
/// the request-size caps of CDN-fronted ones are met by chunked upload), bounds what a failed
/// part costs to send again, and keeps a 100 GiB disk to a 100-layer manifest.
pub const DEFAULT_PART_SIZE: u64 = 1 << 30;

/// How `push` splits and uploads.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// A cloud image bigger than this is pushed as parts of this size.
    pub part_size: u64,
    /// Blobs up to this size are uploaded in one request, bigger ones in chunks of it.
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_PART_SIZE,
            chunk_size: DEFAULT_CHUNK,
        }
    }
}

/// One blob of a push.
#[derive(Debug, Clone, Serialize)]
pub struct PushedBlob {
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// What was done.
    pub result: BlobPush,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushOutcome {
    /// The reference pushed to (canonical).
    pub reference: String,
    /// The image ID pushed.
    pub id: Digest,
    /// Backend.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Digest of the manifest pushed.
    pub manifest_digest: Digest,
    /// Every blob: config first, then layers in manifest order.
    pub blobs: Vec<PushedBlob>,
}

impl PushOutcome {
    /// How many blobs were uploaded (not present, not mounted).
    #[must_use]
    pub fn uploaded(&self) -> usize {
        self.blobs
            .iter()
            .filter(|b| b.result == BlobPush::Uploaded)
            .count()
    }
}

/// A blob to push: in memory (a config) or a byte range of a stored file.
enum Body {
    Bytes(Vec<u8>),
    File { path: PathBuf, offset: u64 },
}

struct Blob {
    desc: Descriptor,
    title: Option<String>,
    body: Body,
}

impl Store {
    /// Push the image `query` names (ID, prefix or name) to `reference`.
    ///
    /// # Errors
    /// An unknown or ambiguous image, a reference that is not a tag, a stored blob that cannot
    /// be read, registry failures (auth, refused upload or manifest).
    pub fn push(
        &self,
        query: &str,
        reference: &str,
        opts: &PushOptions,
    ) -> Result<PushOutcome, Error> {
        let r = Reference::parse(reference).map_err(|source| Error::Reference {
            input: reference.to_owned(),
            source,
        })?;
        if r.digest().is_some() {
            return Err(Error::InvalidName {
                name: reference.to_owned(),
                reason: "push to a tag: the manifest's digest is known only once it is written",
            });
        }
        let tag = r.tag().unwrap_or("latest").to_owned();
        let mut found = self.resolve_all(&[query])?;
        let (found, entry) = found.pop().ok_or(Error::NoInput { what: "image" })?;
        let (kind, blobs, config, manifest) = match &entry {
            ImageEntry::Cloud(e) => {
                let path = self
                    .layout
                    .backend(Kind::CloudImg)
                    .blob_path(&e.content_sum);
                let (config, layers) = cloud_blobs(&path, e.blob.map(|s| s.sha256), opts)?;
                let manifest = manifest_json(Some(OS_IMAGE), &config, &layers);
                (Kind::CloudImg, layers, config, manifest)
            }
            ImageEntry::Oci(e) => {
                let (config, layers) = self.oci_blobs(e)?;
                let manifest = manifest_json(None, &config, &layers);
                (Kind::Oci, layers, config, manifest)
            }
        };
        let mount_from = Reference::parse(entry_source(&entry))
            .ok()
            .filter(|src| src.domain() == r.domain())
            .map(|src| src.path().to_owned());

        let client = Client::new(self.opts.registry.clone());
        let total: u64 = blobs.iter().map(|b| b.desc.size).sum::<u64>() + config.desc.size;
        let label = format!("pushing {}", r.canonical());
        let mut done = 0u64;
        let mut pushed = Vec::with_capacity(blobs.len() + 1);
        for blob in std::iter::once(&config).chain(&blobs) {
            let open = || -> std::io::Result<Box<dyn Read>> {
                match &blob.body {
                    Body::Bytes(b) => Ok(Box::new(std::io::Cursor::new(b.clone()))),
                    Body::File { path, offset } => {
                        // The registry error names the blob; this names the stored file.
                        let named = |e: std::io::Error| {
                            std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                        };
                        let mut f = File::open(path).map_err(named)?;
                        f.seek(SeekFrom::Start(*offset)).map_err(named)?;
                        Ok(Box::new(f.take(blob.desc.size)))
                    }
                }
            };
            let base = done;
            let result = client.push_blob(
                r.domain(),
                r.path(),
                &blob.desc,
                Upload {
                    mount_from: mount_from.as_deref(),
                    chunk: opts.chunk_size,
                },
                open,
                |n| self.progress(&label, base + n, Some(total)),
            )?;
            done += blob.desc.size;
            self.progress(&label, done, Some(total));
            pushed.push(PushedBlob {
                media_type: blob.desc.media_type.clone(),
                digest: blob.desc.digest,
                size: blob.desc.size,
                result,
            });
        }
        let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        client.push_manifest(r.domain(), r.path(), &tag, OCI_MANIFEST, &bytes)?;
        Ok(PushOutcome {
            reference: r.canonical(),
            id: found.id,
            kind,
            manifest_digest: Digest::sha256_of(&bytes),
            blobs: pushed,
        })
    }
}

impl Store {
    /// The EROFS layers of an OCI image and an image config naming them.
    fn oci_blobs(&self, e: &crate::index::OciEntry) -> Result<(Blob, Vec<Blob>), Error> {
        let b = self.layout.backend(Kind::Oci);
        let mut layers = Vec::with_capacity(e.layers.len());
        for l in &e.layers {
            // A layer with a chain image is pushed as that image: the one VMs get, and the one
            // that shows the right implied directories over the layers pushed with it.
            let (path, sums) = match (l.chain, l.blob) {
                (Some(c), _) => (b.blob_path(&c.digest), c.blob),
                (None, Some(s)) => (b.blob_path(&l.digest), s),
                (None, None) => {
                    let path = b.blob_path(&l.digest);
                    let sums = verify::sums_of_file(&path)?;
                    (path, sums)
                }
            };
            layers.push(Blob {
                desc: Descriptor {
                    media_type: EROFS_LAYER.to_owned(),
                    digest: sums.sha256,
                    size: sums.size,
                },
                title: None,
                body: Body::File { path, offset: 0 },
            });
        }
        let platform = &self.opts.registry.platform;
        let diff_ids: Vec<String> = layers.iter().map(|l| l.desc.digest.to_string()).collect();
        let mut cfg = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        if let Some(v) = &platform.variant {
            cfg["variant"] = json!(v);
        }
        let config = bytes_blob(IMAGE_CONFIG, serde_json::to_vec(&cfg).unwrap_or_default());
        Ok((config, layers))
    }
}

/// The key an image was pulled under, to mount its blobs from when pushing to the same
/// registry.
fn entry_source(entry: &ImageEntry) -> &str {
    match entry {
        ImageEntry::Oci(e) => &e.reference,
        ImageEntry::Cloud(e) => &e.reference,
    }
}

fn bytes_blob(media_type: &str, bytes: Vec<u8>) -> Blob {
    Blob {
        desc: Descriptor {
            media_type: media_type.to_owned(),
            digest: Digest::sha256_of(&bytes),
            size: bytes.len() as u64,
        },
        title: None,
        body: Body::Bytes(bytes),
    }
}

/// The artifact's empty config and the disk layers of the qcow2 at `path` (sha256 `known`
/// when the index records it), cut into parts of `opts.part_size`.
fn cloud_blobs(
    path: &Path,
    known: Option<Digest>,
    opts: &PushOptions,
) -> Result<(Blob, Vec<Blob>), Error> {
    let config = bytes_blob(EMPTY_CONFIG, b"{}".to_vec());
    let size = std::fs::metadata(path)
        .map_err(super::io_err("inspecting", path))?
        .len();
    let part = opts.part_size.max(1);
    if size <= part {
        let digest = match known {
            Some(d) => d,
            None => verify::sums_of_file(path)?.sha256,
        };
        let layer = Blob {
            desc: Descriptor {
                media_type: DiskFormat::Qcow2.media_type(false).to_owned(),
                digest,
                size,
            },
            title: Some("disk.qcow2".to_owned()),
            body: Body::File {
                path: path.to_path_buf(),
                offset: 0,
            },
        };
        return Ok((config, vec![layer]));
    }
    let count = size.div_ceil(part);
    let width = count.to_string().len().max(3);
    let mut file = File::open(path).map_err(super::io_err("opening", path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut layers = Vec::new();
    for i in 0..count {
        let offset = i * part;
        let len = part.min(size - offset);
        let mut h = sha2::Sha256::new();
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = file
                .read(&mut buf[..want])
                .map_err(super::io_err("reading", path))?;
            if n == 0 {
                return Err(super::io_err("reading", path)(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob shrank while it was read",
                ))
                .into());
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        layers.push(Blob {
            desc: Descriptor {
                media_type: DiskFormat::Qcow2.media_type(true).to_owned(),
                digest: Digest::sha256(h.finalize().into()),
                size: len,
            },
            title: Some(format!("disk.qcow2.part.{i:0width$}")),
            body: Body::File {
                path: path.to_path_buf(),
                offset,
            },
        });
    }
    Ok((config, layers))
}

fn descriptor_json(b: &Blob) -> serde_json::Value {
    let mut d = json!({
        "mediaType": b.desc.media_type,
        "digest": b.desc.digest.to_string(),
        "size": b.desc.size,
    });
    if let Some(t) = &b.title {
        d["annotations"] = json!({ TITLE: t });
    }
    d
}

fn manifest_json(artifact_type: Option<&str>, config: &Blob, layers: &[Blob]) -> serde_json::Value {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor_json(config),
        "layers": layers.iter().map(descriptor_json).collect::<Vec<_>>(),
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    m
}
