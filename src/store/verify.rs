//! Re-hashing stored files against their recorded digests.

use std::path::PathBuf;

use serde::Serialize;

use crate::digest::Algorithm;
use crate::verify::{self, Check, Outcome};

use super::snapshot::ImageInfo;
use super::{Error, Store};

/// What verify found for one stored file.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyEntry {
    /// The image (first name).
    pub image: String,
    /// The file.
    pub path: PathBuf,
    /// `layer`, `kernel` or `initrd`.
    pub role: &'static str,
    /// ok / corrupt / missing / truncated / unverifiable.
    pub status: &'static str,
    /// Details for corrupt / truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Store {
    /// Re-hash stored files of the given images (all images if `queries` is empty).
    /// Sizes are compared first, so a truncated file is reported without hashing.
    ///
    /// # Errors
    /// Not found, ambiguous, or an unreadable index; bad content is reported, not an error.
    pub fn verify(
        &self,
        queries: &[&str],
        algorithm: Algorithm,
    ) -> Result<Vec<VerifyEntry>, Error> {
        let snap = self.snapshot()?;
        let mut infos: Vec<ImageInfo> = Vec::new();
        if queries.is_empty() {
            let mut seen = std::collections::HashSet::new();
            for item in snap.lookup().items() {
                if seen.insert((item.kind, item.id)) {
                    let keys = snap.aliases(item.kind, &item.id);
                    infos.push(self.describe(&snap, item.kind, keys.iter().map(String::as_str)));
                }
            }
        } else {
            for q in queries {
                let f = snap.find(q)?;
                infos.push(self.describe(&snap, f.kind, f.keys.iter().map(String::as_str)));
            }
        }
        let mut rows = Vec::new();
        let mut checks = Vec::new();
        for info in &infos {
            for b in &info.blobs {
                let expected = match algorithm {
                    Algorithm::Blake3 => b.blake3,
                    _ => b.sha256,
                };
                checks.push(Check {
                    path: b.path.clone(),
                    expected_size: b.size,
                    expected,
                });
                rows.push((info.name.clone(), b.path.clone(), b.role));
            }
        }
        let results = verify::verify_all(&checks);
        rows.into_iter()
            .zip(results)
            .map(|((image, path, role), r)| {
                let (status, detail) = match r? {
                    Outcome::Ok => ("ok", None),
                    Outcome::Corrupt { expected, actual } => (
                        "corrupt",
                        Some(format!("expected {expected}, found {actual}")),
                    ),
                    Outcome::Missing => ("missing", None),
                    Outcome::Truncated { expected, actual } => (
                        "truncated",
                        Some(format!("expected {expected} bytes, found {actual}")),
                    ),
                    Outcome::Unverifiable => (
                        "unverifiable",
                        Some("no recorded digest (entry written by an older store)".to_owned()),
                    ),
                    #[allow(unreachable_patterns)]
                    _ => ("unknown", None),
                };
                Ok(VerifyEntry {
                    image,
                    path,
                    role,
                    status,
                    detail,
                })
            })
            .collect()
    }
}
