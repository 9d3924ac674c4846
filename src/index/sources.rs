//! `cloudimg/db/sources.json`: what imgstore remembers about the URLs cloud images came from —
//! the validators (`ETag`, `Last-Modified`) of the download, to revalidate a stored image
//! instead of trusting it blindly or downloading it again.
//!
//! imgstore's own file beside `images.json`: cocoon rewrites `images.json` with the fields it
//! knows and would drop anything added there. Each source names the image ID it produced, so a
//! source whose index entry has since moved to another image (re-pulled by cocoon, removed and
//! imported again) is never used: it describes bytes the store no longer names.
//!
//! Written only under the exclusive index lock of the backend, atomically (temp, fsync, rename,
//! fsync `db/`); read without a lock (a rename is atomic). A missing file is empty; a corrupt
//! one is an error naming the file and is never replaced.
//!
//! ```json
//! {"version":1,"sources":{"https://host/img.qcow2":{"id":"sha256:…","etag":"\"abc\"",
//!  "last_modified":"Tue, 01 Dec 2026 10:00:00 GMT","length":123,"checked_at":"2026-12-02T01:02:03.000000000Z"}}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::file::{corrupt, Error};
use crate::digest::Digest;
use crate::fsutil;
use crate::lock::{LockGuard, Mode};

/// Version written.
const VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// The field is named after its JSON key (`{"version": 1, "sources": {…}}`).
#[allow(clippy::struct_field_names)]
pub struct Sources {
    /// Format version.
    #[serde(default)]
    pub version: u32,
    /// By URL, verbatim as pulled (the index key).
    #[serde(default)]
    pub sources: BTreeMap<String, Source>,
    /// Fields a later version added.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The image ID (content sum) this download produced.
    pub id: Digest,
    /// The `ETag` of the response, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The `Last-Modified` of the response, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Bytes downloaded.
    pub length: u64,
    /// When the server last confirmed (or gave) these bytes (RFC 3339 UTC).
    pub checked_at: String,
    /// Fields a later version added.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Load `path`; missing is empty.
pub fn load(path: &Path) -> Result<Sources, Error> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sources::default()),
        Err(source) => {
            return Err(Error::Io(crate::error::IoError::new("reading", path, source)))
        }
    };
    serde_json::from_slice(&raw).map_err(|e| corrupt(path, &raw, &e))
}

/// Replace `path` with `s`, atomically; `guard` must be the backend's exclusive index lock.
pub fn save(path: &Path, s: &Sources, guard: &LockGuard) -> Result<(), Error> {
    assert_eq!(guard.mode(), Mode::Exclusive, "sources.json needs the index lock");
    let mut s = s.clone();
    s.version = VERSION;
    let mut bytes = serde_json::to_vec(&s).map_err(|source| Error::Serialize {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    fsutil::write_atomic(path, &bytes, 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_unknown_fields() {
        let text = r#"{"version":1,"sources":{"http://h/x":{"id":"sha256:0000000000000000000000000000000000000000000000000000000000000000","etag":"\"a\"","length":3,"checked_at":"t","later":1}},"top":true}"#;
        let s: Sources = serde_json::from_str(text).unwrap();
        assert_eq!(s.sources["http://h/x"].etag.as_deref(), Some("\"a\""));
        let back = serde_json::to_string(&s).unwrap();
        assert!(back.contains("\"later\":1") && back.contains("\"top\":true"), "{back}");
    }
}
