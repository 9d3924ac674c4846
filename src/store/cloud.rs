//! Cloud images into the store: import from files or stdin, pull by URL (DESIGN.md §8).
//!
//! Order of work, so that a crash or a failure anywhere leaves the old state plus temp debris:
//! stage the source (hashing while writing) → take the digest lock → reuse a stored blob or
//! check, convert and publish a new one → commit the index entry (short exclusive lock). The gc
//! lease covers only "reuse or publish" → commit.

use std::io::Read;
use std::path::PathBuf;

use serde::Serialize;

use super::import::{check_name, check_pinned, open_inputs, same_reference};
use super::remove::{boxed, unbox};
use super::{Error, Kind, Store};
use crate::backend::cloudimg::{self, Format, Plan};
use crate::digest::{Digest, Sums};
use crate::fsutil::{self, TempDir, TempFile};
use crate::index::{sources, CloudEntry};
use crate::ingest::{self, Expected};
use crate::input::{Concat, Input};

/// Where a cloud image comes from.
#[derive(Debug, Clone)]
pub enum CloudSource {
    /// One file, or split parts concatenated in order. Never moved or modified.
    Files(Vec<PathBuf>),
    /// Standard input.
    Stdin,
}

/// What a pull or import stored.
#[derive(Debug, Clone, Serialize)]
pub struct PullOutcome {
    /// The index key.
    pub name: String,
    /// Image ID.
    pub id: Digest,
    /// Backend.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// True if nothing new was downloaded or written except the index entry.
    pub reused: bool,
    /// For a cloud image pulled again: what the server was asked and said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revalidation: Option<Revalidation>,
}

/// What a pull of a URL already stored found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Revalidation {
    /// The server confirmed the stored copy (304, or the same strong `ETag`): nothing downloaded.
    Unchanged,
    /// The server has other bytes now: they were downloaded and the name moved to them.
    Changed,
    /// Nothing recorded to ask the server with (stored by cocoon or an older imgstore, or the
    /// server sent no validator): the stored copy was kept unchecked.
    NoValidator,
    /// Offline: the stored copy was used without asking.
    Offline,
}

/// What imgstore records of a download, for revalidating it later.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub validators: cloudimg::download::probe::Validators,
}

/// Reads the first [`cloudimg::SNIFF_LEN`] bytes of a stream for sniffing, then hands them back
/// ahead of the rest.
fn sniffed(mut r: impl Read, source_name: &str) -> Result<(Vec<u8>, impl Read), Error> {
    let mut head = Vec::with_capacity(cloudimg::SNIFF_LEN);
    if let Err(e) = (&mut r)
        .take(cloudimg::SNIFF_LEN as u64)
        .read_to_end(&mut head)
    {
        if cloudimg::Error::from_io_ref(&e).is_some() {
            return Err(cloudimg::Error::from_io(e, source_name).into());
        }
        return Err(crate::ingest::Error::Read {
            source_name: source_name.to_owned(),
            source: e,
        }
        .into());
    }
    let chained = std::io::Cursor::new(head.clone()).chain(r);
    Ok((head, chained))
}

impl Store {
    /// Import a cloud image under `name` from files (split parts in order) or stdin.
    ///
    /// # Errors
    /// A refused format or image (backing file, external data file, huge virtual size, failing
    /// `qemu-img check`), an unreadable source, a full disk, a lock timeout.
    pub fn import_cloud(&self, name: &str, source: &CloudSource) -> Result<PullOutcome, Error> {
        check_name(name)?;
        let inputs = match source {
            CloudSource::Stdin => vec![Input::stdin()?],
            CloudSource::Files(parts) if parts.is_empty() => {
                return Err(Error::NoInput { what: "files" })
            }
            CloudSource::Files(parts) => open_inputs(parts)?,
        };
        self.import_cloud_inputs(name, inputs)
    }

    /// Import opened sources (the parts of one image, in order) as a cloud image.
    pub(super) fn import_cloud_inputs(
        &self,
        name: &str,
        inputs: Vec<Input>,
    ) -> Result<PullOutcome, Error> {
        check_name(name)?;
        self.check_cloud_name_free(name)?;
        let parts = Concat::new(inputs);
        if parts.is_empty() {
            return Err(Error::NoInput { what: "files" });
        }
        let source_name = parts.name();
        let total = parts.len();
        self.ingest_cloud(name, parts, &source_name, total, None, None)
    }

    /// Stage `reader` and store it under `name`; `origin` is what the server said of a download.
    pub(super) fn ingest_cloud(
        &self,
        name: &str,
        reader: impl Read + Send,
        source_name: &str,
        total: Option<u64>,
        max_size: Option<u64>,
        origin: Option<&Origin>,
    ) -> Result<PullOutcome, Error> {
        let b = self.layout.backend(Kind::CloudImg);
        let (head, reader) = sniffed(reader, source_name)?;
        let format = match cloudimg::sniff(&head) {
            Format::Rejected(what) => {
                return Err(cloudimg::Error::Rejected {
                    source_name: source_name.to_owned(),
                    format: what,
                }
                .into())
            }
            f => f,
        };
        if head.is_empty() {
            return Err(Error::EmptySource {
                source_name: source_name.to_owned(),
            });
        }
        fsutil::create_dir_all(&b.temp_dir())?;
        let expected = Expected {
            // The download cap guards against endless or hostile servers; a local file or pipe
            // is the operator's own choice (cocoon stores imported images above 20 GiB).
            max_size,
            ..Expected::default()
        };
        let label = name.to_owned();
        let progress = |done: u64| self.progress(&label, done, total);
        let staged = ingest::stage(&b.temp_dir(), reader, source_name, &expected, &progress)
            .map_err(download_error)?;
        check_pinned(name, &staged.sums.sha256)?;
        self.finish_cloud(name, staged, format, source_name, origin)
    }

    /// Check, convert if needed, publish and commit a staged cloud image (whose head sniffed
    /// as `format`) under `name`. A name pinned by digest is the caller's to check (a file's
    /// sha256, or an artifact's manifest digest).
    pub(super) fn finish_cloud(
        &self,
        name: &str,
        staged: ingest::Staged,
        format: Format,
        source_name: &str,
        origin: Option<&Origin>,
    ) -> Result<PullOutcome, Error> {
        let b = self.layout.backend(Kind::CloudImg);
        let key = staged.sums.sha256;
        let size = staged.sums.size;

        let guard = self.lock_digest(Kind::CloudImg, &key)?;
        let recorded = self.recorded_cloud_sums(&key)?;
        let reuse = match self.usable_blob(Kind::CloudImg, &key, recorded)? {
            Some(r) => self
                .lease_reuse(Kind::CloudImg, &key, &r)?
                .map(|lease| (r.sums, lease)),
            None => None,
        };
        // The gc lease is held from here to the commit; checking and converting a new blob
        // happen before it is taken.
        let (sums, reused, lease) = if let Some((sums, lease)) = reuse {
            drop(staged);
            (sums, true, lease)
        } else {
            let fmt = match format {
                Format::Qcow2 => "qcow2",
                _ => "raw",
            };
            let info = cloudimg::check_untrusted(staged.temp.path(), fmt, &self.opts.cloud_limits)
                .map_err(|e| e.relabel(staged.temp.path(), source_name))?;
            let dest = b.blob_path(&key);
            match cloudimg::plan(&info) {
                Plan::StoreAsIs => {
                    let lease = self.lease(Kind::CloudImg)?;
                    (ingest::publish(staged, &dest)?, false, lease)
                }
                Plan::Convert { from } => {
                    let work = TempDir::create_in(&b.temp_dir(), "convert")?;
                    let out = work.path().join("out.qcow2");
                    self.progress(&format!("converting {name}"), 0, None);
                    cloudimg::convert(staged.temp.path(), from, &out)?;
                    drop(staged);
                    let converted = format!("{source_name} (converted to qcow2)");
                    cloudimg::check_untrusted(&out, "qcow2", &self.opts.cloud_limits)
                        .map_err(|e| e.relabel(&out, &converted))?;
                    let out = TempFile::adopt(out)?;
                    let staged =
                        ingest::stage_filled(out, &converted, &Expected::default(), &|_| {})?;
                    let lease = self.lease(Kind::CloudImg)?;
                    (ingest::publish(staged, &dest)?, false, lease)
                }
            }
        };

        failpoint!("cloud.before_commit");
        // The oci index lock first (the one lock order), held so no oci image takes this name
        // between the check and the commit.
        let w = self.on_wait();
        let sources_path = b.sources_path();
        self.oci_db()
            .update(self.opts.lock_wait, &w, |oci| {
                if let Some(key) = same_reference(name, oci.entries().map(|(k, _)| k)) {
                    return Err(boxed(Error::NameTaken {
                        name: name.to_owned(),
                        kind: Kind::Oci,
                        key,
                    }));
                }
                self.cloud_db()
                    .update_locked(self.opts.lock_wait, &w, |idx, guard| {
                        if let Some(o) = origin {
                            record_origin(&sources_path, guard, name, key, size, o)?;
                        }
                        let entry = match idx.get(name) {
                            Some(old) if old.content_sum == key && old.blob == Some(sums) => {
                                old.clone()
                            }
                            old => CloudEntry {
                                reference: name.to_owned(),
                                content_sum: key,
                                size: sums.size,
                                created_at: crate::index::schema::now_rfc3339(),
                                blob: Some(sums),
                                extra: old.map(|o| o.extra.clone()).unwrap_or_default(),
                            },
                        };
                        idx.images.insert(name.to_owned(), Some(entry));
                        Ok(())
                    })
                    .map_err(boxed)
            })
            .map_err(unbox)?;
        drop(lease);
        drop(guard);
        Ok(PullOutcome {
            name: name.to_owned(),
            id: key,
            kind: Kind::CloudImg,
            reused,
            revalidation: None,
        })
    }

    /// The sums any cloud entry records for blob `key`.
    fn recorded_cloud_sums(&self, key: &Digest) -> Result<Option<Sums>, Error> {
        let w = self.on_wait();
        let idx = self.cloud_db().read(self.opts.lock_wait, &w)?;
        let sums = idx
            .entries()
            .filter(|(_, e)| e.content_sum == *key)
            .find_map(|(_, e)| e.blob);
        Ok(sums)
    }
}

/// Remember (or forget, when the server gave none) the validators of the download of `url`.
fn record_origin(
    path: &std::path::Path,
    guard: &crate::lock::LockGuard,
    url: &str,
    id: Digest,
    length: u64,
    o: &Origin,
) -> Result<(), crate::index::file::Error> {
    let mut all = sources::load(path)?;
    let before = all.sources.get(url).cloned();
    if o.validators.is_empty() {
        all.sources.remove(url);
    } else {
        let extra = before.as_ref().map(|s| s.extra.clone()).unwrap_or_default();
        all.sources.insert(
            url.to_owned(),
            sources::Source {
                id,
                etag: o.validators.etag.clone(),
                last_modified: o.validators.last_modified.clone(),
                length,
                checked_at: crate::index::schema::now_rfc3339(),
                extra,
            },
        );
    }
    if all.sources.get(url) == before.as_ref() {
        return Ok(());
    }
    sources::save(path, &all, guard)
}

/// A download failure surfaces from staging as a read error wrapping the [`cloudimg::Error`];
/// unwrap it so the message says "GET <url>: HTTP …" once rather than "reading <url>: GET <url>: …".
fn download_error(e: ingest::Error) -> Error {
    match e {
        ingest::Error::Read {
            source,
            source_name,
        } if cloudimg::Error::from_io_ref(&source).is_some() => {
            cloudimg::Error::from_io(source, &source_name).into()
        }
        other => other.into(),
    }
}
