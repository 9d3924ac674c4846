//! Reading an OCI image layout (a directory, or an oci-archive tar unpacked into one): the
//! manifest for the host platform and its layers, whose bytes are verified when stored.
//!
//! The rules are the registry client's (`registry::manifest`): the same document limits, index
//! nesting depth, platform choice and config check, and the same errors.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::backend::oci::registry::manifest::{
    self, IndexEntry, Parsed, CONFIG_LIMIT, MANIFEST_LIMIT,
};
use crate::backend::oci::registry::{Error as RegistryError, Platform};
use crate::digest::Digest;
use crate::fsutil;

use super::oci_layer::{Layer, LayerFrom};
use super::{io_err, Error};

/// Read at most `limit` bytes of `path` (a document of the layout).
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let f = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    if bytes.len() as u64 > limit {
        return Err(RegistryError::TooLarge {
            what: path.display().to_string(),
            limit,
        }
        .into());
    }
    Ok(bytes)
}

/// `blobs/<algorithm>/<hex>` of the layout at `dir`.
fn blob_in(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().name()).join(d.hex())
}

/// Read the blob `d` of `size` bytes named by a descriptor, checking both.
fn read_blob(dir: &Path, d: &Digest, size: u64, limit: u64) -> Result<Vec<u8>, Error> {
    let path = blob_in(dir, d);
    let bytes = read_limited(&path, limit)?;
    let got = (Digest::sha256_of(&bytes), bytes.len() as u64);
    manifest::check_content(&path.display().to_string(), (*d, size), got)?;
    Ok(bytes)
}

/// The annotation naming a tag in an OCI layout's `index.json`, as skopeo's `oci:DIR:TAG` reads it.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn tag_of(e: &IndexEntry) -> Option<&str> {
    e.annotations.get(REF_NAME).map(String::as_str)
}

/// The top-level entries of a layout tagged `tag`; with no tag, all of them, unless they carry
/// several tags (then the caller must choose, as with skopeo's `oci:DIR:TAG`).
fn select_tag(
    entries: Vec<IndexEntry>,
    label: &str,
    tag: Option<&str>,
) -> Result<Vec<IndexEntry>, Error> {
    let mut tags: Vec<String> = entries
        .iter()
        .filter_map(|e| tag_of(e).map(str::to_owned))
        .collect();
    tags.sort();
    tags.dedup();
    match tag {
        Some(t) => {
            let chosen: Vec<_> = entries
                .into_iter()
                .filter(|e| tag_of(e) == Some(t))
                .collect();
            if chosen.is_empty() {
                return Err(Error::LayoutTagMissing {
                    layout: label.to_owned(),
                    tag: t.to_owned(),
                    tags,
                });
            }
            Ok(chosen)
        }
        None if tags.len() > 1 => Err(Error::LayoutTagNeeded {
            layout: label.to_owned(),
            tags,
        }),
        None => Ok(entries),
    }
}

/// Pick the manifest for `platform` (and `tag`, when given) from an OCI layout and list its
/// layers. Layer blobs are not read here: each is read once, checked against its digest and
/// size while it is staged, and only if the store lacks it. `label` names the layout in
/// messages (an unpacked archive's directory is the store's).
pub(super) fn read_layout<'a>(
    dir: &Path,
    label: &str,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<(Digest, Vec<Layer<'a>>), Error> {
    if !dir.join("oci-layout").is_file() {
        return Err(Error::NotOciLayout {
            path: dir.to_path_buf(),
        });
    }
    let image = label.to_owned();
    let index_path = dir.join("index.json");
    let bytes = read_limited(&index_path, MANIFEST_LIMIT)?;
    let bad = |path: &Path| {
        let what = path.display().to_string();
        move |reason| RegistryError::BadManifest { what, reason }
    };
    let parsed = match manifest::parse(&bytes, None).map_err(bad(&index_path))? {
        Parsed::Index(entries) => Parsed::Index(select_tag(entries, label, tag)?),
        image @ Parsed::Image(_) => image,
    };
    let mut digest = None;
    let m = manifest::follow_indexes(parsed, platform, &image, |entry| {
        let bytes = read_blob(dir, &entry.digest, entry.size, MANIFEST_LIMIT)?;
        digest = Some(entry.digest);
        let what = blob_in(dir, &entry.digest).display().to_string();
        Ok::<_, Error>((bytes, None, what))
    })?;
    // index.json is always an index, so the loop went through it at least once.
    let digest = digest.ok_or_else(|| RegistryError::BadManifest {
        what: index_path.display().to_string(),
        reason: "not an image index".to_owned(),
    })?;
    let config = read_blob(dir, &m.config.digest, m.config.size, CONFIG_LIMIT)?;
    let config_what = blob_in(dir, &m.config.digest).display().to_string();
    manifest::check_config(&config, platform, &config_what, &image)?;
    let out = m
        .layers
        .into_iter()
        .map(|l| Layer {
            digest: l.digest,
            from: LayerFrom::LayoutBlob {
                path: blob_in(dir, &l.digest),
                size: l.size,
            },
        })
        .collect();
    Ok((digest, out))
}

/// Unpack an oci-archive tar: only `oci-layout`, `index.json` and regular files under `blobs/`
/// with safe relative names are taken; anything else is refused.
/// `label` names the archive in messages (`tar` is the store's copy of it).
pub(super) fn unpack_layout_archive(tar: &Path, label: &str, dest: &Path) -> Result<(), Error> {
    let tar_label = Path::new(label);
    let f = std::fs::File::open(tar).map_err(io_err("opening", tar))?;
    let mut archive = tar::Archive::new(f);
    let entries = archive.entries().map_err(io_err("reading", tar_label))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading", tar_label))?;
        let path = entry
            .path()
            .map_err(io_err("reading", tar_label))?
            .into_owned();
        let rel: PathBuf = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let ok_name = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !ok_name {
            return Err(Error::UnsafeArchiveEntry {
                archive: tar_label.to_path_buf(),
                entry: path,
            });
        }
        let et = entry.header().entry_type();
        if et.is_dir() {
            continue;
        }
        let allowed = rel == Path::new("oci-layout")
            || rel == Path::new("index.json")
            || rel.starts_with("blobs");
        if !et.is_file() || !allowed {
            continue;
        }
        let out = dest.join(&rel);
        if let Some(parent) = out.parent() {
            fsutil::create_dir_all(parent)?;
        }
        let mut w = std::fs::File::create(&out).map_err(io_err("writing", &out))?;
        std::io::copy(&mut entry, &mut w).map_err(io_err("extracting", &path))?;
    }
    Ok(())
}
