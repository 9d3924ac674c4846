//! Reading an OCI image layout (a directory, or an oci-archive tar unpacked into one): the
//! manifest for the host platform and its layers, whose bytes are verified when stored.
//!
//! The rules are the registry client's (`registry::manifest`): the same document limits, index
//! nesting depth, platform choice and config check, and the same errors.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::backend::oci::registry::manifest::{self, CONFIG_LIMIT, MANIFEST_LIMIT};
use crate::backend::oci::registry::{Error as RegistryError, Platform};
use crate::digest::Digest;
use crate::fsutil;
use crate::verify;

use super::oci::{Layer, LayerFrom};
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

/// Pick the manifest for `platform` from an OCI layout and list its layers (verified later).
pub(super) fn read_layout<'a>(
    dir: &Path,
    platform: &Platform,
) -> Result<(Digest, Vec<Layer<'a>>), Error> {
    if !dir.join("oci-layout").is_file() {
        return Err(Error::NotOciLayout {
            path: dir.to_path_buf(),
        });
    }
    let image = dir.display().to_string();
    let index_path = dir.join("index.json");
    let bytes = read_limited(&index_path, MANIFEST_LIMIT)?;
    let bad = |path: &Path| {
        let what = path.display().to_string();
        move |reason| RegistryError::BadManifest { what, reason }
    };
    let parsed = manifest::parse(&bytes, None).map_err(bad(&index_path))?;
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
    let mut out = Vec::new();
    for l in m.layers {
        let p = blob_in(dir, &l.digest);
        let got = verify::hash_file(&p, l.digest.algorithm())?;
        manifest::check_content(&p.display().to_string(), (l.digest, l.size), got)?;
        out.push(Layer {
            digest: l.digest,
            from: LayerFrom::File(p),
        });
    }
    Ok((digest, out))
}

/// Unpack an oci-archive tar: only `oci-layout`, `index.json` and regular files under `blobs/`
/// with safe relative names are taken; anything else is refused.
pub(super) fn unpack_layout_archive(tar: &Path, dest: &Path) -> Result<(), Error> {
    let f = std::fs::File::open(tar).map_err(io_err("opening", tar))?;
    let mut archive = tar::Archive::new(f);
    let entries = archive.entries().map_err(io_err("reading", tar))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading", tar))?;
        let path = entry.path().map_err(io_err("reading", tar))?.into_owned();
        let rel: PathBuf = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let ok_name = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !ok_name {
            return Err(Error::UnsafeArchiveEntry {
                archive: tar.to_path_buf(),
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
