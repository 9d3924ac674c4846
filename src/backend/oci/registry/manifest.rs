//! Manifest, index and config JSON (OCI and Docker schema 2), and platform matching.
//!
//! Parsing and choosing only; no I/O. Pull and OCI-layout import share these rules: how deep
//! indexes may nest, which index entry serves a platform, and when a config is for another one.

use std::fmt;

use crate::digest::Digest;

use super::Error;

/// Registries refuse manifests over 4 MiB; anything bigger is not a manifest.
pub(crate) const MANIFEST_LIMIT: u64 = 4 << 20;
/// An image config is small JSON; a huge one is hostile or broken.
pub(crate) const CONFIG_LIMIT: u64 = 32 << 20;
/// Index → index → manifest is legal; deeper nesting is refused rather than followed forever.
pub(crate) const MAX_INDEX_DEPTH: usize = 4;

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2) media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The `Accept` header for manifest requests: every type this client can read.
pub(crate) const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// An operating system, CPU architecture and optional variant, with OCI names (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture, OCI/Go spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// CPU variant (`v8` for arm64, `v7` for arm), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts.
    #[must_use]
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// `linux/<this machine's architecture>` in OCI names.
    #[must_use]
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Self::new("linux", arch, variant)
    }

    /// How well an index entry's platform fits this wanted one: `None` if it does not run here.
    ///
    /// An entry without a variant fits any wanted variant (arm64 lists often omit `v8`), but an
    /// exact variant wins. An entry with a variant when we want none does not fit: `amd64/v3`
    /// code does not run on every amd64 host.
    fn fit(&self, entry: &Self) -> Option<u8> {
        if entry.os != self.os || entry.architecture != self.architecture {
            return None;
        }
        match (&self.variant, &entry.variant) {
            (Some(want), Some(have)) if want == have => Some(2),
            (_, None) => Some(1),
            _ => None,
        }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::host()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A reference to a blob: its media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type (e.g. `application/vnd.oci.image.layer.v1.tar+gzip`).
    #[serde(default)]
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// One image manifest: the config blob and the layers in order (bottom first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's media type (OCI manifest or Docker schema 2).
    pub media_type: String,
    /// The image config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawManifest {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<IndexEntry>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    /// `org.opencontainers.image.ref.name` names a tag in an OCI layout's `index.json`.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// What a manifest request returned.
pub(crate) enum Parsed {
    Index(Vec<IndexEntry>),
    Image(Manifest),
}

/// Parse manifest JSON; the media type comes from the JSON's `mediaType`, else from the
/// response's `Content-Type`, else from the shape (OCI makes `mediaType` optional).
pub(crate) fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, String> {
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| c.starts_with("application/vnd."));
    let media_type = match (raw.media_type.as_deref(), content_type) {
        (Some(m), _) | (None, Some(m)) => m.to_owned(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    if raw.schema_version != Some(2) {
        return Err(format!(
            "unsupported schemaVersion {:?} (media type {media_type}); only schema 2 is supported",
            raw.schema_version
        ));
    }
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let entries = raw
                .manifests
                .ok_or_else(|| format!("{media_type} without a manifests list"))?;
            Ok(Parsed::Index(entries))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw
                .config
                .ok_or_else(|| format!("{media_type} without a config descriptor"))?;
            let layers = raw
                .layers
                .ok_or_else(|| format!("{media_type} without a layers list"))?;
            Ok(Parsed::Image(Manifest {
                media_type,
                config,
                layers,
            }))
        }
        other => Err(format!("unsupported manifest media type {other:?}")),
    }
}

/// Refuse the `depth`-th nested index of `image` past [`MAX_INDEX_DEPTH`].
pub(crate) fn check_depth(depth: usize, image: &str) -> Result<(), Error> {
    if depth > MAX_INDEX_DEPTH {
        return Err(Error::BadManifest {
            what: image.to_owned(),
            reason: format!("indexes nested deeper than {MAX_INDEX_DEPTH} levels"),
        });
    }
    Ok(())
}

/// The entry of an index that serves `want`: the best platform match, or the only entry when
/// it names no platform (its config is checked next). An index without one is an error listing
/// what it offers.
pub(crate) fn choose_entry<'a>(
    entries: &'a [IndexEntry],
    want: &Platform,
    image: &str,
) -> Result<&'a IndexEntry, Error> {
    if let [only] = entries {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    choose(entries, want).map_err(|available| Error::NoMatchingPlatform {
        image: image.to_owned(),
        wanted: want.clone(),
        available,
    })
}

/// Follow indexes from `parsed` down to the image manifest for `want`, as pull and layout import
/// both do. `fetch` returns the verified bytes of the chosen entry, the content type they came
/// with (if any) and a name for them in errors.
pub(crate) fn follow_indexes<E: From<Error>>(
    mut parsed: Parsed,
    want: &Platform,
    image: &str,
    mut fetch: impl FnMut(&IndexEntry) -> Result<(Vec<u8>, Option<String>, String), E>,
) -> Result<Manifest, E> {
    let mut depth = 0;
    loop {
        let entries = match parsed {
            Parsed::Image(m) => return Ok(m),
            Parsed::Index(entries) => entries,
        };
        depth += 1;
        check_depth(depth, image)?;
        let entry = choose_entry(&entries, want, image)?;
        let (bytes, content_type, what) = fetch(entry)?;
        // The index entry's media type is authoritative when the body omits one.
        let hint = Some(entry.media_type.as_str())
            .filter(|m| !m.is_empty())
            .or(content_type.as_deref());
        parsed = parse(&bytes, hint).map_err(|reason| Error::BadManifest { what, reason })?;
    }
}

/// Content named by a descriptor must have its size and digest; `got` is the (digest, size) of
/// what arrived. A wrong size is reported first: it needs no hashing to be sure of.
pub(crate) fn check_content(
    what: &str,
    want: (Digest, u64),
    got: (Digest, u64),
) -> Result<(), Error> {
    let what = what.to_owned();
    let ((expected, expected_size), (actual, actual_size)) = (want, got);
    if actual_size != expected_size {
        return Err(Error::SizeMismatch { what, expected: expected_size, actual: actual_size });
    }
    if actual != expected {
        return Err(Error::DigestMismatch { what, expected, actual });
    }
    Ok(())
}

/// Check that the image config `config` (JSON, named `what`) is for `want`.
pub(crate) fn check_config(
    config: &[u8],
    want: &Platform,
    what: &str,
    image: &str,
) -> Result<(), Error> {
    let found: ConfigPlatform = serde_json::from_slice(config).map_err(|e| Error::BadManifest {
        what: what.to_owned(),
        reason: format!("not an image config: {e}"),
    })?;
    if found.os != want.os || found.architecture != want.architecture {
        let mut found_text = format!("{}/{}", found.os, found.architecture);
        if let Some(v) = &found.variant {
            found_text = format!("{found_text}/{v}");
        }
        return Err(Error::WrongPlatform {
            image: image.to_owned(),
            wanted: want.clone(),
            found: found_text,
        });
    }
    Ok(())
}

/// The best entry of an index for `want`, or the list of platforms it offers.
fn choose<'a>(
    entries: &'a [IndexEntry],
    want: &Platform,
) -> Result<&'a IndexEntry, Vec<String>> {
    let best = entries
        .iter()
        .filter_map(|e| Some((want.fit(e.platform.as_ref()?)?, e)))
        // max_by_key keeps the last of equals; the first listed should win, hence rev().
        .rev()
        .max_by_key(|(score, _)| *score);
    match best {
        Some((_, entry)) => Ok(entry),
        None => Err(entries
            .iter()
            .map(|e| {
                e.platform
                    .as_ref()
                    .map_or_else(|| "(no platform)".to_owned(), ToString::to_string)
            })
            .collect()),
    }
}

/// The fields of an image config this client checks.
#[derive(serde::Deserialize)]
pub(crate) struct ConfigPlatform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: Option<Platform>, n: u8) -> IndexEntry {
        IndexEntry {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::sha256([n; 32]),
            size: 1,
            platform,
            annotations: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn chooses_exact_variant_over_missing_and_first_of_equals() {
        let arm64 = Platform::new("linux", "arm64", Some("v8"));
        let entries = [
            entry(Some(Platform::new("linux", "amd64", None)), 1),
            entry(Some(Platform::new("linux", "arm64", None)), 2),
            entry(Some(arm64.clone()), 3),
            entry(Some(arm64.clone()), 4),
            entry(None, 5),
        ];
        assert_eq!(
            choose(&entries, &arm64).unwrap().digest,
            Digest::sha256([3; 32])
        );
        assert_eq!(
            choose(&entries[..2], &arm64).unwrap().digest,
            Digest::sha256([2; 32])
        );
        let amd64 = Platform::new("linux", "amd64", None);
        assert_eq!(
            choose(&entries, &amd64).unwrap().digest,
            Digest::sha256([1; 32])
        );
        let riscv = Platform::new("linux", "riscv64", None);
        assert_eq!(
            choose(&entries, &riscv).unwrap_err(),
            vec![
                "linux/amd64",
                "linux/arm64",
                "linux/arm64/v8",
                "linux/arm64/v8",
                "(no platform)"
            ]
        );
        let v3 = [entry(Some(Platform::new("linux", "amd64", Some("v3"))), 6)];
        assert!(choose(&v3, &amd64).is_err());
    }

    #[test]
    fn media_type_from_json_header_or_shape() {
        let d = format!("sha256:{}", "a".repeat(64));
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":3}},"layers":[]}}"#
        );
        let Ok(Parsed::Image(m)) = parse(image.as_bytes(), None) else {
            panic!("not an image")
        };
        assert_eq!(m.media_type, OCI_MANIFEST);
        let Ok(Parsed::Image(m)) = parse(image.as_bytes(), Some(DOCKER_MANIFEST)) else {
            panic!("not an image")
        };
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        let index = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse(index.as_bytes(), None),
            Ok(Parsed::Index(_))
        ));
        let v1 = r#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(parse(v1.as_bytes(), None).is_err());
        assert!(parse(b"not json", None).is_err());
        let wrong = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert!(parse(wrong.as_bytes(), None).is_err());
    }
}
