//! Reading an OCI image layout (a directory, or an oci-archive tar unpacked into one): the
//! manifest for the host platform and its layers, whose bytes are verified when stored.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::oci::registry::Descriptor;
use crate::digest::Digest;
use crate::fsutil;
use crate::verify;

use super::oci::{Layer, LayerFrom};
use super::{io_err, Error};

#[derive(Deserialize)]
struct LayoutIndex {
    manifests: Vec<LayoutDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutDescriptor {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    #[serde(default)]
    platform: Option<LayoutPlatform>,
}

#[derive(Deserialize)]
struct LayoutPlatform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct LayoutManifest {
    #[serde(default)]
    manifests: Option<Vec<LayoutDescriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    limit: u64,
) -> Result<(Vec<u8>, T), Error> {
    let f = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let mut bytes = Vec::new();
    f.take(limit)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    let v = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Other(format!(
            "{} is not a valid OCI document: {e}",
            path.display()
        ))
    })?;
    Ok((bytes, v))
}

pub(super) fn blob_in(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().name()).join(d.hex())
}

/// Pick the manifest for `platform` from an OCI layout and list its layers (verified later).
pub(super) fn read_layout<'a>(
    dir: &Path,
    platform: &crate::backend::oci::registry::Platform,
) -> Result<(Digest, Vec<Layer<'a>>), Error> {
    if !dir.join("oci-layout").is_file() {
        return Err(Error::Other(format!(
            "{} is not an OCI image layout (no oci-layout file)",
            dir.display()
        )));
    }
    let (_, index): (_, LayoutIndex) = read_json(&dir.join("index.json"), 4 << 20)?;
    let mut candidates = index.manifests;
    // Follow one level of nested index (an image index inside index.json).
    for _ in 0..2 {
        let pick = if candidates.len() == 1 {
            candidates.pop()
        } else {
            candidates.into_iter().find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
            })
        };
        let Some(desc) = pick else {
            return Err(Error::Other(format!(
                "{}: no manifest for {}/{}",
                dir.display(),
                platform.os,
                platform.architecture
            )));
        };
        let path = blob_in(dir, &desc.digest);
        let (bytes, m): (_, LayoutManifest) = read_json(&path, 4 << 20)?;
        let actual = Digest::sha256_of(&bytes);
        if actual != desc.digest {
            return Err(Error::Other(format!(
                "{}: manifest digest mismatch: expected {}, found {actual}",
                path.display(),
                desc.digest
            )));
        }
        let _ = &desc.media_type;
        if let Some(layers) = m.layers {
            if let Some(config) = &m.config {
                check_platform(dir, config, platform)?;
            }
            let mut out = Vec::new();
            for l in layers {
                let p = blob_in(dir, &l.digest);
                let (got, size) = verify::hash_file(&p, l.digest.algorithm())?;
                if got != l.digest || size != l.size {
                    return Err(Error::Other(format!(
                        "{}: layer digest mismatch: expected {} ({} bytes), found {got} ({size} bytes)",
                        p.display(),
                        l.digest,
                        l.size
                    )));
                }
                out.push(Layer {
                    digest: l.digest,
                    from: LayerFrom::File(p),
                });
            }
            return Ok((desc.digest, out));
        }
        candidates = m.manifests.unwrap_or_default();
    }
    Err(Error::Other(format!(
        "{}: index nesting too deep",
        dir.display()
    )))
}

/// An image's config names the platform it was built for: importing it for another one is an
/// error, as pulling it is (a layout chosen from an index was matched by platform already).
pub(super) fn check_platform(
    dir: &Path,
    config: &Descriptor,
    platform: &crate::backend::oci::registry::Platform,
) -> Result<(), Error> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
    }
    let (_, c): (_, Config) = read_json(&blob_in(dir, &config.digest), 32 << 20)?;
    if !c.architecture.is_empty()
        && (c.architecture != platform.architecture || (!c.os.is_empty() && c.os != platform.os))
    {
        return Err(Error::Other(format!(
            "{}: the image is for {}/{}, this host needs {}/{}",
            dir.display(),
            c.os,
            c.architecture,
            platform.os,
            platform.architecture
        )));
    }
    Ok(())
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
            return Err(Error::Other(format!(
                "{}: unsafe entry {}",
                tar.display(),
                path.display()
            )));
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
