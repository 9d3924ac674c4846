//! The index file schema (DESIGN.md §3), field for field as cocoon v0.3.7 writes it, plus the
//! fields imgstore adds. Unknown fields are kept in `extra` so a rewrite never drops them.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::{Digest, Sums};
use crate::layout::Role;

/// A stored file an entry needs: the role it plays, the key digest naming it, and the sums
/// recorded for it (none for entries cocoon wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// Layer (the blob) or a boot file.
    pub role: Role,
    /// The digest that names the file: a layer digest or a content sum.
    pub key: Digest,
    /// Recorded sha256, blake3 and size of the stored bytes.
    pub sums: Option<Sums>,
}

/// Anything that can be an index entry.
pub trait Entry: Serialize + DeserializeOwned + Clone {
    /// The reference the entry was stored under (`ref`).
    #[cfg(feature = "unstable")]
    fn reference(&self) -> &str;
    /// The image ID: manifest digest (oci) or content sum (cloudimg).
    fn id(&self) -> Digest;
    /// Every stored file the entry needs, in order (oci: layers bottom first, each followed by
    /// its chain blob if it has one, then kernel and initrd). The one place that says what an entry references: gc keeps these, the store
    /// describes, checks and verifies them.
    fn files(&self) -> Vec<FileRef>;
    /// Bytes stored (`size`).
    fn size(&self) -> u64;
    /// When it was stored (`created_at`, RFC 3339 as written).
    fn created_at(&self) -> &str;
}

/// A whole `images.json`: `{"images": {"<ref>": <entry> | null, ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(bound = "E: Entry")]
pub struct IndexFile<E> {
    /// imgstore: a token written first in the file and renewed on every write, so a reader can
    /// tell with one small read whether the file is the one a cache was built from. cocoon does
    /// not know the field and drops it when it rewrites the file.
    #[serde(
        rename = "imgstore_generation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub generation: Option<String>,
    /// Entries by key (the ref as typed). `None` is a `null` entry: skipped, but kept on rewrite.
    #[serde(default)]
    pub images: BTreeMap<String, Option<E>>,
    /// Top-level fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl<E> Default for IndexFile<E> {
    fn default() -> Self {
        Self {
            generation: None,
            images: BTreeMap::new(),
            extra: Map::new(),
        }
    }
}

impl<E: Entry> IndexFile<E> {
    /// Present (non-null) entries with their keys.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &E)> {
        self.images
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|e| (k.as_str(), e)))
    }

    /// The entry under exactly `key`, if present and not null.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&E> {
        self.images.get(key).and_then(Option::as_ref)
    }
}

/// One layer of an oci image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerEntry {
    /// sha256 of the compressed layer: the blob's key (`blobs/<hex>.erofs`).
    pub digest: Digest,
    /// imgstore: sums of the stored EROFS blob. Absent in cocoon-written entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<Sums>,
    /// imgstore: the layer's image that depends on its parents (its implied directories carry
    /// the lower layers' attributes), which VMs get instead of `blobs/<digest>.erofs`; absent
    /// when the layer's image does not depend on them (docs/design.md §11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainBlob>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A layer's chain-keyed EROFS blob (`blobs/<chain hex>.erofs`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChainBlob {
    /// The layer's chain ID: the blob's key.
    pub digest: Digest,
    /// Sums of the stored blob.
    pub blob: Sums,
}

/// An oci image entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OciEntry {
    /// The reference as stored (cocoon keeps what the user typed).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Digest of the image manifest: the image ID.
    pub manifest_digest: Digest,
    /// Layers, base first.
    pub layers: Vec<LayerEntry>,
    /// Layer whose boot dir holds `vmlinuz`.
    pub kernel_layer: Digest,
    /// Layer whose boot dir holds `initrd.img`.
    pub initrd_layer: Digest,
    /// Total bytes of the stored blobs.
    pub size: u64,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// imgstore: sums of the stored kernel file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Sums>,
    /// imgstore: sums of the stored initrd file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Sums>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Entry for OciEntry {
    #[cfg(feature = "unstable")]
    fn reference(&self) -> &str {
        &self.reference
    }
    fn id(&self) -> Digest {
        self.manifest_digest
    }
    fn files(&self) -> Vec<FileRef> {
        let file = |role, key, sums| FileRef { role, key, sums };
        let mut files: Vec<FileRef> = Vec::with_capacity(self.layers.len() + 2);
        for l in &self.layers {
            files.push(file(Role::Layer, l.digest, l.blob));
            if let Some(c) = l.chain {
                files.push(file(Role::Chain, c.digest, Some(c.blob)));
            }
        }
        files.push(file(Role::Kernel, self.kernel_layer, self.kernel));
        files.push(file(Role::Initrd, self.initrd_layer, self.initrd));
        files
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn created_at(&self) -> &str {
        &self.created_at
    }
}

/// A cloud image entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CloudEntry {
    /// The URL it was pulled from, or the import name.
    #[serde(rename = "ref")]
    pub reference: String,
    /// sha256 of the source bytes: the image ID and the blob's key (`blobs/<hex>.qcow2`).
    pub content_sum: Digest,
    /// Size of the stored blob in bytes.
    pub size: u64,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// imgstore: sums of the stored qcow2 blob (differs from `content_sum` after conversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<Sums>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Entry for CloudEntry {
    #[cfg(feature = "unstable")]
    fn reference(&self) -> &str {
        &self.reference
    }
    fn id(&self) -> Digest {
        self.content_sum
    }
    fn files(&self) -> Vec<FileRef> {
        vec![FileRef {
            role: Role::Layer,
            key: self.content_sum,
            sums: self.blob,
        }]
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn created_at(&self) -> &str {
        &self.created_at
    }
}

/// The current time in RFC 3339 with nanoseconds, UTC (`2026-04-21T09:14:03.512883417Z`).
#[must_use]
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339_utc(now.as_secs(), now.subsec_nanos())
}

/// Format seconds since the epoch (UTC) as RFC 3339 with nanoseconds.
#[must_use]
pub fn rfc3339_utc(secs: u64, nanos: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), valid for every u64 day count we can meet.
    let z = days.cast_signed() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_utc(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_utc(1_709_251_199, 5),
            "2024-02-29T23:59:59.000000005Z"
        );
        assert_eq!(
            rfc3339_utc(951_782_400, 0),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn cocoon_fixtures_parse_and_round_trip() {
        // The fixtures live in shared/ beside the repository; IMGSTORE_FIXTURES points
        // elsewhere (e.g. from a worktree).
        let root = std::env::var("IMGSTORE_FIXTURES").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/fixtures/cocoon-v0.3.7"
            )
            .to_owned()
        });
        let oci = std::fs::read_to_string(format!("{root}/oci/db/images.json"))
            .unwrap_or_else(|e| panic!("cocoon fixtures not found under {root}: {e}"));
        let idx: IndexFile<OciEntry> = serde_json::from_str(&oci).unwrap();
        assert_eq!(idx.entries().count(), 2);
        let out = serde_json::to_string(&idx).unwrap() + "\n";
        assert_eq!(
            out, oci,
            "an untouched cocoon oci index re-serializes byte for byte"
        );
        let cloud = std::fs::read_to_string(format!("{root}/cloudimg/db/images.json")).unwrap();
        let idx: IndexFile<CloudEntry> = serde_json::from_str(&cloud).unwrap();
        assert_eq!(idx.entries().count(), 2);
        assert!(idx.images.contains_key("stale"));
        let out = serde_json::to_string(&idx).unwrap() + "\n";
        assert_eq!(out, cloud);
    }

    #[test]
    fn unknown_fields_survive() {
        let json = r#"{"images":{"a":{"ref":"a","content_sum":"sha256:68eb4dd9bf894f6eb07654d30a42f95b957e1036a87a996d443a5684c87afc46","size":1,"created_at":"x","future":{"k":[1,2]}}},"version":7}"#;
        let idx: IndexFile<CloudEntry> = serde_json::from_str(json).unwrap();
        let out = serde_json::to_string(&idx).unwrap();
        assert_eq!(out, json);
    }
}
