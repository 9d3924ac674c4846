//! `pull` of a cloud image a registry holds as a cocoon os-image artifact: its disk layers are
//! fetched in order into one temp file, each part checked against its digest and size while it
//! streams, then handed to the one cloud ingest path (`cloud.rs`: qemu-img checks, conversion
//! to qcow2 v3, publish, commit) exactly as a URL download is.
//!
//! The key is the canonical reference. The manifest digest is remembered as the source's
//! validator (`sources.json`, as a URL's `ETag`), so pulling an unchanged manifest again
//! downloads no blob.

use std::io::{self, Seek, SeekFrom, Write};

use super::cloud::{Origin, Revalidation};
use super::{Error, Kind, PullOutcome, Store};
use crate::backend::cloudimg::download::probe::Validators;
use crate::backend::cloudimg::{self, Format};
use crate::backend::oci::registry::artifact::CloudArtifact;
use crate::backend::oci::registry::{Client, Resolved};
use crate::digest::{Digest, DualHasher};
use crate::fsutil::{self, TempFile};
use crate::index::sources;
use crate::ingest::{self, Expected};
use crate::reference::Reference;

/// Where one part's bytes go: the staging file at the part's offset, and the running hashes of
/// everything before it plus what this attempt received. A retried part starts over from a
/// fresh sink: the file is cut back to the part's offset and the hashes to their state there.
struct PartSink {
    file: std::fs::File,
    hasher: DualHasher,
}

impl Write for PartSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Pull the cloud-image artifact `art` that `resolved` (from `r`) describes, under `key`.
    pub(super) fn pull_cloud_artifact(
        &self,
        key: &str,
        client: &Client,
        r: &Reference,
        resolved: &Resolved,
        art: &CloudArtifact,
        force: bool,
    ) -> Result<PullOutcome, Error> {
        self.check_cloud_name_free(key)?;
        let manifest = resolved.manifest_digest.to_string();
        if !force {
            if let Some(id) = self.stored_artifact(key, &manifest)? {
                return Ok(PullOutcome {
                    name: key.to_owned(),
                    id,
                    kind: Kind::CloudImg,
                    reused: true,
                    revalidation: Some(Revalidation::Unchanged),
                });
            }
        }
        let source_name = format!("{key} ({} disk {manifest})", art.artifact_type);
        let cap = self.opts.cloud_limits.max_download;
        let total = art.size();
        if total > cap {
            return Err(ingest::Error::TooLarge {
                limit: cap,
                source_name,
            }
            .into());
        }
        let b = self.layout.backend(Kind::CloudImg);
        fsutil::create_dir_all(&b.temp_dir())?;
        let mut temp = TempFile::create_in(&b.temp_dir(), "artifact")?;
        let path = temp.path().to_path_buf();
        let mut hasher = DualHasher::new();
        let mut offset = 0u64;
        for part in &art.parts {
            let start = hasher.clone();
            let base = temp
                .file()
                .try_clone()
                .map_err(super::io_err("opening", &path))?;
            let open = || {
                let mut file = base.try_clone()?;
                file.set_len(offset)?;
                file.seek(SeekFrom::Start(offset))?;
                Ok(PartSink {
                    file,
                    hasher: start.clone(),
                })
            };
            let progress = |n: u64| self.progress(key, offset + n, Some(total));
            let sink = client.fetch_blob(r.domain(), r.path(), part, open, progress)?;
            hasher = sink.hasher;
            offset += part.size;
        }
        let sums = hasher.finalize();
        let head = super::cloud_pull::read_head(temp.file(), &path)?;
        let format = match cloudimg::sniff(&head) {
            Format::Rejected(what) => {
                return Err(cloudimg::Error::Rejected {
                    source_name,
                    format: what,
                }
                .into())
            }
            f => f,
        };
        if head.is_empty() {
            return Err(Error::EmptySource { source_name });
        }
        let expected = Expected {
            max_size: Some(cap),
            ..Expected::default()
        };
        let staged = ingest::stage_hashed(temp, sums, &source_name, &expected)?;
        let origin = Origin {
            validators: Validators {
                etag: Some(manifest),
                last_modified: None,
            },
        };
        self.finish_cloud(key, staged, format, &source_name, Some(&origin))
    }

    /// The image ID stored under `key` from the artifact manifest `manifest`, if its files are
    /// intact.
    fn stored_artifact(&self, key: &str, manifest: &str) -> Result<Option<Digest>, Error> {
        let Some(id) = self.stored_cloud(key)? else {
            return Ok(None);
        };
        let b = self.layout.backend(Kind::CloudImg);
        let all = sources::load(&b.sources_path())?;
        let same = all
            .sources
            .get(key)
            .is_some_and(|s| s.id == id && s.etag.as_deref() == Some(manifest));
        Ok(same.then_some(id))
    }
}
