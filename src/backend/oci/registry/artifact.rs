//! OCI artifacts: telling a cloud-image artifact (cocoon's `os-image`) from a container image,
//! and the ordered disk parts it is reassembled from.
//!
//! Classification reads the manifest bytes only (no I/O): `artifactType` (OCI 1.1), else the
//! config's media type (what ORAS writes for registries without 1.1 support). Disk layers are
//! kept, other layers (a `text/plain` checksum file, a README) are skipped; `.part` layers are
//! concatenated in byte order of their `org.opencontainers.image.title` annotation, as cocoon
//! writes and reads them. Other cocoon artifact types are refused by name.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::collections::BTreeMap;

use super::manifest::Descriptor;
use super::Error;


/// cocoon's cloud (OS) image artifact type.
pub const OS_IMAGE: &str = "application/vnd.cocoonstack.os-image.v1+json";
/// The older name of [`OS_IMAGE`], from when only Windows images were published this way.
pub const WINDOWS_IMAGE: &str = "application/vnd.cocoonstack.windows-image.v1+json";
/// cocoon's VM snapshot artifact: not an image this store can hold.
pub const SNAPSHOT: &str = "application/vnd.cocoonstack.snapshot.v1+json";
/// The annotation naming a layer's file; parts are ordered by it.
pub const TITLE: &str = "org.opencontainers.image.title";
/// Every cocoon media type starts with this.
const COCOON_PREFIX: &str = "application/vnd.cocoonstack.";

/// The disk layer media types, as (media type, format, is a part of a split disk).
const DISK_TYPES: [(&str, DiskFormat, bool); 8] = [
    ("application/vnd.cocoonstack.disk.qcow2", DiskFormat::Qcow2, false),
    ("application/vnd.cocoonstack.disk.qcow2.part", DiskFormat::Qcow2, true),
    ("application/vnd.cocoonstack.disk.raw", DiskFormat::Raw, false),
    ("application/vnd.cocoonstack.disk.raw.part", DiskFormat::Raw, true),
    ("application/vnd.cocoonstack.windows.disk.qcow2", DiskFormat::Qcow2, false),
    ("application/vnd.cocoonstack.windows.disk.qcow2.part", DiskFormat::Qcow2, true),
    ("application/vnd.cocoonstack.windows.disk.raw", DiskFormat::Raw, false),
    ("application/vnd.cocoonstack.windows.disk.raw.part", DiskFormat::Raw, true),
];

/// How a disk is encoded (what the artifact says; the store sniffs the bytes anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// qcow2.
    Qcow2,
    /// Raw.
    Raw,
}

impl DiskFormat {
    /// The media type of a whole disk (`part == false`) or of one part of a split one.
    #[must_use]
    pub fn media_type(self, part: bool) -> &'static str {
        DISK_TYPES
            .iter()
            .find(|(_, f, p)| *f == self && *p == part)
            .map_or("", |(m, _, _)| m)
    }
}

/// A cloud-image artifact: its disk, as the blobs to concatenate in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudArtifact {
    /// The artifact type it was recognised by.
    pub artifact_type: String,
    /// The disk's format as the layers name it.
    pub format: DiskFormat,
    /// The disk layers in concatenation order.
    pub parts: Vec<Descriptor>,
}

impl CloudArtifact {
    /// The disk's size: the sum of its parts.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// What a manifest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A container image (or anything not recognised as an artifact): the image path handles it.
    Image,
    /// A cloud-image artifact.
    Cloud(CloudArtifact),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArtifact {
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: crate::digest::Digest,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The artifact type of a manifest: `artifactType`, else the config's media type when it is
/// not an image config's.
#[must_use]
pub fn artifact_type(raw: &[u8]) -> Option<String> {
    let m: RawArtifact = serde_json::from_slice(raw).ok()?;
    m.artifact_type
        .filter(|t| !t.is_empty())
        .or_else(|| m.config.map(|c| c.media_type))
}

/// Whether the manifest is a cocoon artifact (so its config is not an image config and names
/// no platform).
#[must_use]
pub fn is_cocoon_artifact(raw: &[u8]) -> bool {
    artifact_type(raw).is_some_and(|t| t.starts_with(COCOON_PREFIX))
}

/// Classify the manifest `raw` (named `what` in errors).
///
/// # Errors
/// A cocoon artifact this store cannot hold (a snapshot, an unknown type), or an os-image
/// artifact without a disk, with both whole and split disk layers, with parts of two formats, or
/// with parts lacking or sharing a title.
pub fn classify(raw: &[u8], what: &str) -> Result<Classified, Error> {
    let bad = |reason: String| Error::BadManifest {
        what: what.to_owned(),
        reason,
    };
    let m: RawArtifact =
        serde_json::from_slice(raw).map_err(|e| bad(format!("not a manifest: {e}")))?;
    let kind = m
        .artifact_type
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| m.config.as_ref().map(|c| c.media_type.clone()))
        .unwrap_or_default();
    if kind != OS_IMAGE && kind != WINDOWS_IMAGE {
        if kind == SNAPSHOT || kind.starts_with(COCOON_PREFIX) {
            return Err(Error::UnsupportedArtifact {
                what: what.to_owned(),
                artifact_type: kind,
            });
        }
        return Ok(Classified::Image);
    }
    let mut whole = Vec::new();
    let mut parts = Vec::new();
    for layer in m.layers {
        let Some((_, format, is_part)) = DISK_TYPES.iter().find(|(t, _, _)| *t == layer.media_type)
        else {
            continue;
        };
        let title = layer.annotations.get(TITLE).cloned();
        let desc = Descriptor {
            media_type: layer.media_type,
            digest: layer.digest,
            size: layer.size,
        };
        if *is_part {
            parts.push((title, *format, desc));
        } else {
            whole.push((title, *format, desc));
        }
    }
    let chosen = match (whole.len(), parts.is_empty()) {
        (0, true) => return Err(bad(format!("{kind} artifact without a disk layer"))),
        (1, true) => whole,
        (0, false) => parts,
        _ => {
            return Err(bad(format!(
                "{kind} artifact with {} whole disk layers and {} parts: one disk expected",
                whole.len(),
                parts.len()
            )))
        }
    };
    let format = chosen[0].1;
    if chosen.iter().any(|(_, f, _)| *f != format) {
        return Err(bad("disk parts of both raw and qcow2 formats".to_owned()));
    }
    if chosen.len() > 1 {
        if let Some((_, _, desc)) = chosen.iter().find(|(t, _, _)| t.is_none()) {
            return Err(bad(format!(
                "disk part {} has no {TITLE} annotation to order it by",
                desc.digest
            )));
        }
    }
    let mut titled: Vec<(String, Descriptor)> = chosen
        .into_iter()
        .map(|(t, _, desc)| (t.unwrap_or_default(), desc))
        .collect();
    // Byte order of the titles (`disk.qcow2.part.000` < `.001`): what cocoon sorts by.
    titled.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if let Some(w) = titled.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(bad(format!("two disk parts titled {:?}", w[0].0)));
    }
    Ok(Classified::Cloud(CloudArtifact {
        artifact_type: kind,
        format,
        parts: titled.into_iter().map(|(_, d)| d).collect(),
    }))
}

/// One endpoint a blob can come from (a mirror or the registry), in the order
/// [`super::Client::fetch_blob`] tries them.
#[derive(Debug, Clone)]
pub struct BlobEndpoint(super::mirrors::Endpoint);

impl std::fmt::Display for BlobEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where to fetch a blob with plain GETs (ranges included), outside the registry client: its
/// URL at one endpoint and the `Authorization` that endpoint asked for (Bearer or Basic, as
/// [`super::Client::fetch_blob`] would send it). The registry may redirect the GET to storage;
/// the header must not follow (ureq drops it on redirects).
#[derive(Debug, Clone)]
pub struct BlobSource {
    /// `…/v2/<repository>/blobs/<digest>`.
    pub url: String,
    /// The `Authorization` value, if the endpoint asked for one.
    pub authorization: Option<String>,
    /// The blob as messages name it (`blob sha256:… of host/repository`).
    pub what: String,
}

impl super::Client {
    /// The endpoints a blob of `repository` on `host` comes from, in order: the mirrors, then
    /// the registry (the route of the last resolve of that repository).
    ///
    /// # Errors
    /// A blocked or malformed name (as for a resolve).
    pub fn blob_endpoints(
        &self,
        host: &str,
        repository: &str,
        blob: &Descriptor,
    ) -> Result<Vec<BlobEndpoint>, Error> {
        let route = self.blob_route(host, repository, &blob.digest.to_string())?;
        Ok(route.iter().cloned().map(BlobEndpoint).collect())
    }

    /// Ask `endpoint` for `blob` with a HEAD (answering a 401 as a GET would, with retries on
    /// transient failures), and say where and with which `Authorization` to GET it.
    ///
    /// # Errors
    /// Not found, refused auth, a `Content-Length` other than the descriptor's size, transport
    /// failures.
    pub fn blob_source(
        &self,
        endpoint: &BlobEndpoint,
        blob: &Descriptor,
    ) -> Result<BlobSource, Error> {
        let repo = self.repo_at(&endpoint.0)?;
        let reference = blob.digest.to_string();
        let what = repo.what("blob", &reference);
        let url = repo.url("blobs", &reference);
        self.with_retries(|| {
            let response = self.head_authed(&repo, &url, &what)?;
            match response.status().as_u16() {
                200 => {}
                404 => return Err(super::transport::not_found(&repo, &reference)),
                s => {
                    super::transport::check_status(&repo, &what, s, b"")?;
                    return Err(super::transport::status_error(&repo.api_host, &what, s, b""));
                }
            }
            let len = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match len {
                Some(l) if l != blob.size => Err(Error::SizeMismatch {
                    what: what.clone(),
                    expected: blob.size,
                    actual: l,
                }),
                _ => Ok(()),
            }
        })?;
        Ok(BlobSource {
            authorization: self.pull_authorization(&repo),
            url,
            what,
        })
    }

    /// Fetch and verify an artifact's config blob, without the image-config platform check.
    pub(super) fn fetch_artifact_config(
        &self,
        repo: &super::transport::Repo<'_>,
        manifest: &super::Manifest,
    ) -> Result<Vec<u8>, Error> {
        let what = repo.what("config", &manifest.config.digest.to_string());
        if manifest.config.size > super::manifest::CONFIG_LIMIT {
            return Err(Error::TooLarge {
                what,
                limit: super::manifest::CONFIG_LIMIT,
            });
        }
        let cap = usize::try_from(manifest.config.size).unwrap_or(0);
        self.fetch_blob_inner(repo, &manifest.config, &what, || Ok(Vec::with_capacity(cap)), |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn layer(media: &str, n: u8, title: Option<&str>) -> String {
        let ann = title.map_or(String::new(), |t| {
            format!(r#","annotations":{{"{TITLE}":"{t}"}}"#)
        });
        format!(r#"{{"mediaType":"{media}","digest":"{}","size":{n}{ann}}}"#, d(n))
    }

    fn manifest(artifact: Option<&str>, config: &str, layers: &[String]) -> Vec<u8> {
        let at = artifact.map_or(String::new(), |a| format!(r#""artifactType":"{a}","#));
        format!(
            r#"{{"schemaVersion":2,{at}"config":{{"mediaType":"{config}","digest":"{}","size":2}},"layers":[{}]}}"#,
            d(0),
            layers.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn parts_in_title_byte_order_and_others_skipped() {
        let part = "application/vnd.cocoonstack.disk.qcow2.part";
        let m = manifest(
            Some(OS_IMAGE),
            "application/vnd.oci.empty.v1+json",
            &[
                layer(part, 3, Some("disk.qcow2.part.002")),
                layer("text/plain", 9, Some("SHA256SUMS")),
                layer(part, 1, Some("disk.qcow2.part.000")),
                layer(part, 2, Some("disk.qcow2.part.001")),
            ],
        );
        let Classified::Cloud(a) = classify(&m, "m").unwrap() else {
            panic!("not a cloud artifact")
        };
        let sizes: Vec<u64> = a.parts.iter().map(|p| p.size).collect();
        assert_eq!(sizes, [1, 2, 3]);
        assert_eq!(a.format, DiskFormat::Qcow2);
    }

    #[test]
    fn config_media_type_fallback_alias_and_refusals() {
        let raw = "application/vnd.cocoonstack.windows.disk.raw";
        let m = manifest(None, WINDOWS_IMAGE, &[layer(raw, 1, None)]);
        assert!(matches!(classify(&m, "m"), Ok(Classified::Cloud(a)) if a.format == DiskFormat::Raw));
        let m = manifest(Some(SNAPSHOT), "application/vnd.oci.empty.v1+json", &[]);
        let e = classify(&m, "m").unwrap_err().to_string();
        assert!(e.contains(SNAPSHOT), "{e}");
        let m = manifest(None, "application/vnd.oci.image.config.v1+json", &[]);
        assert_eq!(classify(&m, "m").unwrap(), Classified::Image);
        let m = manifest(Some(OS_IMAGE), "x", &[layer("text/plain", 1, None)]);
        assert!(classify(&m, "m").is_err());
        let part = "application/vnd.cocoonstack.disk.raw.part";
        let m = manifest(
            Some(OS_IMAGE),
            "x",
            &[layer(part, 1, Some("a")), layer(part, 2, Some("a"))],
        );
        assert!(classify(&m, "m").is_err());
    }
}
