//! Re-hashing stored files against their recorded digests, and for entries written by cocoon
//! (which record no digest of the stored bytes) the checks their fields allow (docs/design.md §6):
//!
//! - cloudimg: the blob's size equals the entry's `size`; with sha256, a blob stored as it was
//!   downloaded (qcow2 v3) hashes to the entry's `content_sum` and is `ok`;
//! - oci: every layer blob, kernel and initrd exists and is not empty, and their sizes add up
//!   to the entry's `size` when it is not 0 (cocoon sums exactly those files).
//!
//! Files that pass can have their digests recorded (`VerifyOptions::record`, trust on first
//! use) in `db/legacy-sums.json`, which later runs check them against.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::digest::{Algorithm, Digest, Sums};
use crate::human::bytes;
use crate::index::legacy::{self, FileId, LegacySums, Record};
use crate::layout::{Kind, Role};
use crate::verify::{self, Check, Outcome};

use super::snapshot::ImageInfo;
use super::{Error, Store};
use crate::error::io_err;

/// The verdict on one stored file; serialized as `ok`, `corrupt`, `missing`, `truncated`,
/// `unverifiable`, `recorded`.
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
    /// No digest is recorded (an entry written by cocoon) and none could be checked; its size
    /// passed the checks the entry allows.
    Unverifiable,
    /// An entry written by cocoon: its digests were recorded now (trust on first use), after
    /// its size checks passed; later runs check it against them.
    Recorded,
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
            Status::Recorded => "recorded",
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
    /// The file (for a whole-image finding, the index that records the image).
    pub path: PathBuf,
    /// `layer`, `kernel`, `initrd`, or `image` for a finding about the image as a whole.
    pub role: Role,
    /// What was found.
    pub status: Status,
    /// Details: what differs, or how the file was (or could not be) checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How [`Store::verify_with`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The hash to check: blake3 (fast, the default) or sha256.
    pub algorithm: Algorithm,
    /// Record the digests of cocoon-written files that pass their size checks and have none
    /// recorded yet, in `db/legacy-sums.json` (trust on first use: the record says what the file
    /// holds now; later runs check against it). Their rows say `recorded`.
    pub record: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Blake3,
            record: false,
        }
    }
}

/// What to do for one row.
enum Plan {
    /// Decided without hashing.
    Done(Status, Option<String>),
    /// Hash and compare with a recorded digest; `first_use` when the record is from
    /// `legacy-sums.json` rather than the index.
    Check { check: Check, first_use: bool },
    /// A cocoon-written file whose size checked out and that has no record that applies.
    Legacy {
        /// cloudimg: the source digest, which the blob has when it was stored unconverted.
        content_sum: Option<Digest>,
        /// The file as it was when planned.
        id: FileId,
        /// Its path in the backend directory, the record's key.
        rel: String,
        /// Whether its image passed every check (only then is it recorded).
        image_ok: bool,
        /// A record exists but was taken from a file since replaced.
        stale: bool,
    },
}

/// A record to add to `legacy-sums.json`: the backend, the file's path in it, the record.
type NewRecord = (Kind, String, Record);

/// A row's status and detail.
type Finding = (Status, Option<String>);

struct Row {
    image: String,
    path: PathBuf,
    role: Role,
    kind: Kind,
    plan: Plan,
}

const UNRECORDED: &str = "entry written by cocoon: size checked, no digest recorded \
                          (`verify --record` records one)";

impl Store {
    /// Re-hash stored files of the given images (all images if `queries` is empty) with
    /// `algorithm`. Sizes are compared first, so a truncated file is reported without hashing.
    ///
    /// # Errors
    /// Not found, ambiguous, or an unreadable index; bad content is reported, not an error.
    pub fn verify(
        &self,
        queries: &[&str],
        algorithm: Algorithm,
    ) -> Result<Vec<VerifyEntry>, Error> {
        self.verify_with(
            queries,
            &VerifyOptions {
                algorithm,
                ..VerifyOptions::default()
            },
        )
    }

    /// [`Store::verify`] with options: the hash, and whether to record the digests of
    /// cocoon-written files (trust on first use).
    ///
    /// # Errors
    /// Not found, ambiguous, an unreadable index or `legacy-sums.json`, or (recording) a lock
    /// timeout; bad content is reported, not an error.
    pub fn verify_with(
        &self,
        queries: &[&str],
        opts: &VerifyOptions,
    ) -> Result<Vec<VerifyEntry>, Error> {
        let VerifyOptions { algorithm, record } = *opts;
        let mut infos: Vec<ImageInfo> = Vec::new();
        if queries.is_empty() {
            let snap = self.snapshot()?;
            // One pass groups every key under its image (asking `aliases` per image would scan
            // all entries once per image: quadratic in the store's size).
            let mut order: Vec<(Kind, Digest)> = Vec::new();
            let mut keys_of: std::collections::HashMap<(Kind, Digest), Vec<&str>> =
                std::collections::HashMap::new();
            for item in snap.lookup().items() {
                let keys = keys_of.entry((item.kind, item.id)).or_insert_with(|| {
                    order.push((item.kind, item.id));
                    Vec::new()
                });
                keys.push(item.key.as_str());
            }
            for image in &order {
                let mut keys = keys_of.remove(image).unwrap_or_default();
                keys.sort_unstable();
                infos.push(self.describe(&snap, image.0, keys.into_iter()));
            }
        } else {
            // Named images resolve as `config` does: through the caches when they are fresh.
            for (f, e) in self.resolve_all(queries)? {
                infos.push(self.describe_entry(f.keys, &e));
            }
        }
        let mut sidecars = Sidecars::default();
        let mut rows = Vec::new();
        for info in &infos {
            self.plan_image(info, algorithm, &mut sidecars, &mut rows)?;
        }
        let results: Vec<(VerifyEntry, Option<NewRecord>)> = rows
            .into_par_iter()
            .map(|row| run_row(row, algorithm, record))
            .collect::<Result<_, Error>>()?;
        let mut out = Vec::with_capacity(results.len());
        let mut new_records: [Vec<(String, Record)>; 2] = [Vec::new(), Vec::new()];
        for (entry, rec) in results {
            if let Some((kind, rel, r)) = rec {
                new_records[kind_slot(kind)].push((rel, r));
            }
            out.push(entry);
        }
        for kind in Kind::ALL {
            let recs = std::mem::take(&mut new_records[kind_slot(kind)]);
            if !recs.is_empty() {
                let w = self.on_wait();
                legacy::record(&self.layout.backend(kind), recs, self.opts.lock_wait, &w)?;
            }
        }
        Ok(out)
    }

    /// The rows of one image: one per file, plus one for the image when its files do not add up.
    fn plan_image(
        &self,
        info: &ImageInfo,
        algorithm: Algorithm,
        sidecars: &mut Sidecars,
        rows: &mut Vec<Row>,
    ) -> Result<(), Error> {
        let backend = self.layout.backend(info.kind);
        let legacy_entry = info.blobs.iter().any(|b| b.size.is_none());
        let first_row = rows.len();
        let mut total = 0u64;
        let mut all_present = true;
        let mut image_ok = true;
        for b in &info.blobs {
            let meta = match std::fs::metadata(&b.path) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(io_err("inspecting", &b.path)(source).into()),
            };
            let plan = match meta {
                None => {
                    all_present = false;
                    image_ok = false;
                    Plan::Done(Status::Missing, None)
                }
                Some(meta) => {
                    total = total.saturating_add(meta.len());
                    let recorded = match (b.size, b.sha256, b.blake3) {
                        (Some(size), Some(sha256), Some(blake3)) => Some(Sums {
                            sha256,
                            blake3,
                            size,
                        }),
                        _ => None,
                    };
                    if let Some(sums) = recorded {
                        Plan::Check {
                            check: check_of(&b.path, sums, algorithm),
                            first_use: false,
                        }
                    } else {
                        let plan = plan_legacy(info, b, &meta, &backend, sidecars, algorithm)?;
                        if matches!(plan, Plan::Done(..)) {
                            image_ok = false;
                        }
                        plan
                    }
                }
            };
            rows.push(Row {
                image: info.name.clone(),
                path: b.path.clone(),
                role: b.role,
                kind: info.kind,
                plan,
            });
        }
        if info.kind == Kind::Oci
            && legacy_entry
            && all_present
            && info.size > 0
            && total != info.size
        {
            image_ok = false;
            rows.push(Row {
                image: info.name.clone(),
                path: backend.index_path(),
                role: Role::Image,
                kind: info.kind,
                plan: Plan::Done(
                    Status::Corrupt,
                    Some(format!(
                        "its layers, kernel and initrd add up to {}; the index records {}",
                        bytes(total),
                        bytes(info.size)
                    )),
                ),
            });
        }
        if !image_ok {
            for row in &mut rows[first_row..] {
                if let Plan::Legacy { image_ok, .. } = &mut row.plan {
                    *image_ok = false;
                }
            }
        }
        Ok(())
    }
}

/// The plan for a file of a cocoon-written entry that exists.
fn plan_legacy(
    info: &ImageInfo,
    b: &super::snapshot::BlobInfo,
    meta: &std::fs::Metadata,
    backend: &crate::layout::BackendLayout,
    sidecars: &mut Sidecars,
    algorithm: Algorithm,
) -> Result<Plan, Error> {
    let id = FileId::of(meta);
    let rel = b
        .path
        .strip_prefix(backend.dir())
        .unwrap_or(&b.path)
        .to_string_lossy()
        .into_owned();
    let record = sidecars.get(info.kind, backend)?.files.get(&rel);
    if let Some(r) = record.filter(|r| r.applies_to(&id)) {
        return Ok(Plan::Check {
            check: check_of(&b.path, r.sums(), algorithm),
            first_use: true,
        });
    }
    let cloud = info.kind == Kind::CloudImg;
    if cloud && id.size != info.size {
        return Ok(Plan::Done(
            Status::Truncated,
            Some(format!(
                "expected {}, found {} (entry written by cocoon)",
                bytes(info.size),
                bytes(id.size)
            )),
        ));
    }
    if !cloud && id.size == 0 {
        return Ok(Plan::Done(
            Status::Truncated,
            Some("the file is empty (entry written by cocoon)".to_owned()),
        ));
    }
    Ok(Plan::Legacy {
        content_sum: cloud.then_some(b.key),
        id,
        rel,
        image_ok: true,
        stale: record.is_some(),
    })
}

fn check_of(path: &Path, sums: Sums, algorithm: Algorithm) -> Check {
    Check {
        path: path.to_path_buf(),
        expected_size: Some(sums.size),
        expected: Some(match algorithm {
            Algorithm::Blake3 => sums.blake3,
            _ => sums.sha256,
        }),
    }
}

fn kind_slot(kind: Kind) -> usize {
    match kind {
        Kind::Oci => 0,
        Kind::CloudImg => 1,
    }
}

/// `legacy-sums.json` of each backend, read on first need.
#[derive(Default)]
struct Sidecars([Option<LegacySums>; 2]);

impl Sidecars {
    fn get(
        &mut self,
        kind: Kind,
        backend: &crate::layout::BackendLayout,
    ) -> Result<&LegacySums, Error> {
        let slot = &mut self.0[kind_slot(kind)];
        if slot.is_none() {
            *slot = Some(legacy::load(&legacy::path(backend))?);
        }
        Ok(slot.get_or_insert_with(LegacySums::default))
    }
}

/// Hash what a row needs; returns its entry and, when recording, the record to add.
fn run_row(
    row: Row,
    algorithm: Algorithm,
    record: bool,
) -> Result<(VerifyEntry, Option<NewRecord>), Error> {
    let mut new_record = None;
    let (status, detail) = match row.plan {
        Plan::Done(status, detail) => (status, detail),
        Plan::Check { check, first_use } => {
            let (status, detail) = outcome(verify::verify_one(&check)?);
            let detail = match (first_use, status) {
                (true, Status::Ok) => Some("matches the digest recorded on first use".to_owned()),
                (true, _) => detail.map(|d| format!("{d} (digest recorded on first use)")),
                (false, _) => detail,
            };
            (status, detail)
        }
        Plan::Legacy {
            content_sum,
            id,
            rel,
            image_ok,
            stale,
        } => {
            if record && image_ok {
                let (finding, rec) = record_legacy(&row.path, content_sum, id)?;
                new_record = rec.map(|r| (row.kind, rel, r));
                finding
            } else {
                check_legacy(&row.path, content_sum, id, algorithm, stale)?
            }
        }
    };
    Ok((
        VerifyEntry {
            image: row.image,
            path: row.path,
            role: row.role,
            status,
            detail,
        },
        new_record,
    ))
}

/// Hash a cocoon-written file that passed its checks and make the record of it (trust on first
/// use), unless it changed while it was hashed.
fn record_legacy(
    path: &Path,
    content_sum: Option<Digest>,
    id: FileId,
) -> Result<(Finding, Option<Record>), Error> {
    let sums = match verify::sums_of_file(path) {
        Ok(sums) => sums,
        Err(e) if is_not_found(&e) => return Ok(((Status::Missing, None), None)),
        Err(e) => return Err(e.into()),
    };
    let now = std::fs::metadata(path).map(|m| FileId::of(&m));
    if now.as_ref().ok() != Some(&id) || sums.size != id.size {
        let why = "the file changed while it was hashed; nothing recorded";
        return Ok(((Status::Unverifiable, Some(why.to_owned())), None));
    }
    let finding = if content_sum == Some(sums.sha256) {
        let why = "matches its content_sum (stored as downloaded); digests recorded";
        (Status::Ok, Some(why.to_owned()))
    } else {
        (
            Status::Recorded,
            Some(format!(
                "trust on first use: no digest was recorded for this cocoon-written file; \
                 recorded {} of it as it is now, later runs check against it",
                sums.sha256
            )),
        )
    };
    Ok((finding, Some(Record::new(sums, id))))
}

/// What can be said of a cocoon-written file that passed its size checks, without recording:
/// with sha256, a cloud blob stored as downloaded matches its `content_sum`.
fn check_legacy(
    path: &Path,
    content_sum: Option<Digest>,
    id: FileId,
    algorithm: Algorithm,
    stale: bool,
) -> Result<Finding, Error> {
    let stale_note = if stale {
        "; its recorded digest was taken from a file since replaced"
    } else {
        ""
    };
    let (Some(sum), Algorithm::Sha256) = (content_sum, algorithm) else {
        return Ok((
            Status::Unverifiable,
            Some(format!("{UNRECORDED}{stale_note}")),
        ));
    };
    let check = Check {
        path: path.to_path_buf(),
        expected_size: Some(id.size),
        expected: Some(sum),
    };
    Ok(match verify::verify_one(&check)? {
        Outcome::Ok => (
            Status::Ok,
            Some("matches its content_sum (stored as downloaded)".to_owned()),
        ),
        o @ (Outcome::Missing | Outcome::Truncated { .. }) => outcome(o),
        _ => (
            Status::Unverifiable,
            Some(format!(
                "entry written by cocoon: size checked; the blob differs from its content_sum, \
                 as a blob converted at import does, and no digest of it is recorded \
                 (`verify --record` records one){stale_note}"
            )),
        ),
    })
}

fn is_not_found(e: &verify::Error) -> bool {
    match e {
        verify::Error::Io(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Status and detail of a hash comparison.
fn outcome(o: Outcome) -> Finding {
    match o {
        Outcome::Ok => (Status::Ok, None),
        Outcome::Corrupt { expected, actual } => (
            Status::Corrupt,
            Some(format!("expected {expected}, found {actual}")),
        ),
        Outcome::Missing => (Status::Missing, None),
        Outcome::Truncated { expected, actual } => (
            Status::Truncated,
            Some(format!(
                "expected {}, found {}",
                bytes(expected),
                bytes(actual)
            )),
        ),
        Outcome::Unverifiable => (
            Status::Unverifiable,
            Some("no recorded digest (entry written by an older store)".to_owned()),
        ),
    }
}
