//! Re-hashing stored files against their recorded digests.

use std::path::PathBuf;

use serde::Serialize;

use crate::digest::Algorithm;
use crate::verify::{self, Check, Outcome};

use crate::layout::Role;

use super::snapshot::ImageInfo;
use super::{Error, Store};

/// The verdict on one stored file; serialized as `ok`, `corrupt`, `missing`, `truncated`,
/// `unverifiable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// The bytes hash to the recorded digest.
    Ok,
    /// The bytes hash to something else.
    Corrupt,
    /// The file is not there.
    Missing,
    /// The file has another size than recorded.
    Truncated,
    /// No digest is recorded (an entry written by cocoon); only its existence was checked.
    Unverifiable,
}

impl Status {
    /// The name shown to users and written in JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Corrupt => "corrupt",
            Status::Missing => "missing",
            Status::Truncated => "truncated",
            Status::Unverifiable => "unverifiable",
        }
    }

    /// Whether the file is damaged or gone (what makes `verify` fail).
    #[must_use]
    pub const fn is_failure(self) -> bool {
        matches!(self, Status::Corrupt | Status::Missing | Status::Truncated)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What verify found for one stored file.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyEntry {
    /// The image (first name).
    pub image: String,
    /// The file.
    pub path: PathBuf,
    /// `layer`, `kernel` or `initrd`.
    pub role: Role,
    /// What was found.
    pub status: Status,
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
                    Outcome::Ok => (Status::Ok, None),
                    Outcome::Corrupt { expected, actual } => (
                        Status::Corrupt,
                        Some(format!("expected {expected}, found {actual}")),
                    ),
                    Outcome::Missing => (Status::Missing, None),
                    Outcome::Truncated { expected, actual } => (
                        Status::Truncated,
                        Some(format!("expected {expected} bytes, found {actual}")),
                    ),
                    Outcome::Unverifiable => (
                        Status::Unverifiable,
                        Some("no recorded digest (entry written by an older store)".to_owned()),
                    ),
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
