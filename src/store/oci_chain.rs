//! Chain-keyed layer images (docs/design.md §11 "Implied directories and the chain rule"): after
//! every layer of an image is converted or found in the store, each layer's view
//! (`boot/<layer>/layer.view`, written by the conversion and published with its boot dir) says
//! which directories it only implies; where the layers below show another mode, owner or
//! xattrs for one, the layer gets a second image, `blobs/<chain>.erofs`: a copy of its
//! parent-independent image (kept under the layer digest for cocoon) with those inodes patched
//! (`erofs::patch_dirs`), staged and published through ingest like any blob.
//!
//! Locking: a chain ID is a function of the digests of the layer and all layers below it, so
//! every ingest that can produce `blobs/<chain>.erofs` holds the digest lock of its top layer,
//! which serializes them. Reuse is confirmed under the gc lease as for layers.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;

use crate::backend::oci::chain;
use crate::backend::oci::layer::VIEW_FILE;
use crate::digest::{Digest, Sums};
use crate::erofs::{self, View};
use crate::error::io_err;
use crate::fsutil::TempFile;
use crate::index::ChainBlob;
use crate::ingest::{self, Expected, Staged};

use super::oci_layer::{Layer, Prepared};
use super::publish::Reusable;
use super::{Error, Kind, Store};

/// A layer's chain image, ready to publish (`staged`) or already stored (`reuse`).
pub(super) struct Chain {
    pub(super) key: Digest,
    pub(super) sums: Sums,
    pub(super) staged: Option<Staged>,
    pub(super) reuse: Option<Reusable>,
}

impl Chain {
    /// What the index records.
    pub(super) fn entry(&self) -> ChainBlob {
        ChainBlob {
            digest: self.key,
            blob: self.sums,
        }
    }
}

impl Store {
    /// The chain images `layers` need (one slot per layer), reused from the store or made now
    /// from the layers' images. The caller holds every layer's digest lock, not the gc lease.
    pub(super) fn prepare_chains(
        &self,
        layers: &[Layer<'_>],
        prepared: &[Prepared],
        recorded: &HashMap<Digest, Sums>,
    ) -> Result<Vec<Option<Chain>>, Error> {
        if layers.len() < 2 {
            // A single layer has nothing below it: its view is not even read.
            return Ok(layers.iter().map(|_| None).collect());
        }
        let views: Vec<Option<View>> = layers
            .iter()
            .zip(prepared)
            .map(|(l, p)| self.layer_view(l, p))
            .collect::<Result<_, _>>()?;
        let digests: Vec<Digest> = layers.iter().map(|l| l.digest).collect();
        let ids = chain::chain_ids(&digests);
        let mut out = Vec::with_capacity(layers.len());
        for (i, (layer, p)) in layers.iter().zip(prepared).enumerate() {
            let patches = chain::patches(&views, i);
            if patches.is_empty() {
                out.push(None);
                continue;
            }
            let key = ids[i];
            if let Some(reuse) = self.usable_blob(Kind::Oci, &key, recorded.get(&key).copied())? {
                out.push(Some(Chain {
                    key,
                    sums: reuse.sums,
                    staged: None,
                    reuse: Some(reuse),
                }));
                continue;
            }
            let source = match &p.staged {
                Some(c) => c.blob.temp.path().to_path_buf(),
                None => self.layout.backend(Kind::Oci).blob_path(&layer.digest),
            };
            let made = self.make_chain(&source, &layer.digest, &key, &patches)?;
            out.push(made.map(|staged| Chain {
                key,
                sums: staged.sums,
                staged: Some(staged),
                reuse: None,
            }));
        }
        Ok(out)
    }

    /// A layer's view: from its staged boot dir, or from the store for a reused layer. `None`
    /// for layers stored without one (by cocoon, by an older imgstore, EROFS-native layers):
    /// nothing is assumed of them.
    fn layer_view(&self, layer: &Layer<'_>, p: &Prepared) -> Result<Option<View>, Error> {
        let path: PathBuf = match &p.staged {
            Some(c) => c.boot.path.join(VIEW_FILE),
            None => self
                .layout
                .backend(Kind::Oci)
                .boot_dir(&layer.digest)
                .join(VIEW_FILE),
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading layer view", &path)(e).into()),
        };
        match View::decode(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                // Verify reports a damaged boot dir; the layer is just not chained.
                tracing::warn!("ignoring {}: {e}", path.display());
                Ok(None)
            }
        }
    }

    /// Copy the layer image at `source` into the backend's temp dir, patch its implied
    /// directories, and stage it (hashed, fsynced) for `blobs/<key>.erofs`. `None` (with a
    /// warning) if the image does not have the inodes its view names (a view that does not
    /// belong to the stored image): the layer then stays parent-independent, as before the rule.
    fn make_chain(
        &self,
        source: &std::path::Path,
        layer: &Digest,
        key: &Digest,
        patches: &[(u64, erofs::ViewDir)],
    ) -> Result<Option<Staged>, Error> {
        let b = self.layout.backend(Kind::Oci);
        let mut temp = TempFile::create_in(&b.temp_dir(), "chain")?;
        let mut from = File::open(source).map_err(io_err("opening layer image", source))?;
        // `io::copy` between files uses copy_file_range: a reflink where the filesystem can.
        io::copy(&mut from, temp.file()).map_err(io_err("copying layer image to", temp.path()))?;
        match erofs::patch_dirs(temp.file(), patches) {
            Ok(0) => {}
            Ok(lost) => tracing::warn!(
                "layer {layer}: the lower layers' xattrs of {lost} implied directories do not \
                 fit in its chain image; mode, owner and mtime are carried"
            ),
            Err(e @ erofs::Error::Corrupt { .. }) => {
                tracing::warn!(
                    "layer {layer}: its view does not match {}: {e}; no chain image",
                    source.display()
                );
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::LayerFrom {
                    source_name: format!("layer {layer}"),
                    source: e.into(),
                })
            }
        }
        let what = format!("layer {layer} over its parents (chain {key})");
        Ok(Some(ingest::stage_filled(
            temp,
            &what,
            &Expected::default(),
            &|_| {},
        )?))
    }
}
