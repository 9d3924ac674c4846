//! `pull` of a cloud image a registry holds as a cocoon os-image artifact. Each disk layer is
//! fetched like a URL pull (`cloud_pull.rs`, docs/design.md §3a): by the ranged, resumable
//! downloader, from the blob URL of the first endpoint that has it (mirrors, then the registry),
//! with the `Authorization` the registry asked for (a HEAD answers its challenge first; the
//! header is not sent on after a redirect to storage), into `temp/<sha256 of URL>.download`,
//! and checked against the layer's digest and size; a mismatch removes the file and moves on to
//! the next endpoint. One part is the disk and is staged as it is; several are concatenated in
//! title order through `ingest::stage`, each removed once read. Then the one cloud ingest path
//! (`cloud.rs`: qemu-img checks, conversion to qcow2 v3, publish, commit) as for a URL.
//!
//! The key is the canonical reference. The manifest digest is remembered as the source's
//! validator (`sources.json`, as a URL's `ETag`), so pulling an unchanged manifest again
//! downloads no blob.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::Digest as _;

use super::cloud::{Origin, Revalidation};
use super::{Error, Kind, PullOutcome, Store};
use crate::backend::cloudimg::download::{self, probe::Validators, Fetch, Fetched, Partial};
use crate::backend::cloudimg::{self, Format};
use crate::backend::oci::registry::artifact::{BlobSource, CloudArtifact};
use crate::backend::oci::registry::manifest::{check_content, Descriptor};
use crate::backend::oci::registry::{Client, Resolved};
use crate::digest::{Algorithm, Digest, DualHasher, Sums};
use crate::fsutil::{self, TempFile};
use crate::index::sources;
use crate::ingest::{self, Expected};
use crate::lock::LockGuard;
use crate::reference::Reference;

/// One part, downloaded and checked against its descriptor: its own file (the partial
/// download's, adopted), still locked, with the sums of its bytes.
struct PartFile {
    temp: TempFile,
    sums: Sums,
    _lock: LockGuard,
}

/// The parts read one after the other; each is removed once read to its end, so assembling a
/// split disk needs room for one part more than the disk, not twice the disk.
struct Concat(VecDeque<PartFile>);

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(part) = self.0.front_mut() {
            match part.temp.file().read(buf)? {
                0 if !buf.is_empty() => drop(self.0.pop_front()),
                n => return Ok(n),
            }
        }
        Ok(0)
    }
}

/// One part to fetch, and where it sits in the disk (for progress).
#[derive(Clone, Copy)]
struct PartJob<'a> {
    key: &'a str,
    client: &'a Client,
    r: &'a Reference,
    part: &'a Descriptor,
    offset: u64,
    total: u64,
}

/// A part's bytes written to its file as they stream, and hashed (for a registry that does not
/// serve guarded ranges, or a part whose digest is not sha256).
struct HashingFile<'a> {
    file: &'a std::fs::File,
    hasher: DualHasher,
}

impl Write for HashingFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &*self.file).write_all(buf)?;
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
        let mut parts = VecDeque::with_capacity(art.parts.len());
        let mut offset = 0u64;
        for part in &art.parts {
            let job = PartJob {
                key,
                client,
                r,
                part,
                offset,
                total,
            };
            parts.push_back(self.fetch_part(&job)?);
            offset += part.size;
        }
        let head = match parts.front_mut() {
            Some(first) => {
                let path = first.temp.path().to_path_buf();
                super::cloud_pull::read_head(first.temp.file(), &path)?
            }
            None => Vec::new(),
        };
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
        // A single part's lock is held until it is published, so no other pull of the same blob
        // URL starts over in that file meanwhile.
        let mut part_lock = None;
        let staged = if parts.len() == 1 {
            // The part is the disk: its file is staged as it is, with the sums taken while it
            // downloaded.
            let Some(part) = parts.pop_front() else {
                unreachable!("one part")
            };
            let PartFile {
                temp,
                sums,
                _lock: lock,
            } = part;
            part_lock = Some(lock);
            ingest::stage_hashed(temp, sums, &source_name, &expected)?
        } else {
            // Several: concatenated through the one ingest path (hashed and written once more).
            let label = format!("assembling {key}");
            let progress = |done: u64| self.progress(&label, done, Some(total));
            ingest::stage(
                &b.temp_dir(),
                Concat(parts),
                &source_name,
                &expected,
                &progress,
            )?
        };
        let origin = Origin {
            validators: Validators {
                etag: Some(manifest),
                last_modified: None,
            },
        };
        let out = self.finish_cloud(key, staged, format, &source_name, Some(&origin));
        drop(part_lock);
        out
    }

    /// Download one part with the ranged, resumable downloader of URL pulls, from the first
    /// endpoint (mirrors, then the registry) that serves it with the right digest and size.
    fn fetch_part(&self, job: &PartJob<'_>) -> Result<PartFile, Error> {
        let PartJob {
            client, r, part, ..
        } = *job;
        let endpoints = client.blob_endpoints(r.domain(), r.path(), part)?;
        let mut last = None;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let attempt = client
                .blob_source(endpoint, part)
                .map_err(Error::from)
                .and_then(|source| self.fetch_part_from(job, &source));
            match attempt {
                Ok(p) => return Ok(p),
                Err(e) => {
                    if i + 1 < endpoints.len() {
                        tracing::warn!(%endpoint, error = %e, "disk part failed, trying the next endpoint");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::from(crate::backend::oci::registry::Error::NotFound {
                host: r.domain().to_owned(),
                repository: r.path().to_owned(),
                reference: part.digest.to_string(),
            })
        }))
    }

    /// Download `part` from `source` into `temp/<sha256 of its URL>.download` (locked, resumable
    /// as a URL pull is) and check it. On a mismatch or any other failure without a resume
    /// record the file goes; a failure with one keeps both for the next pull.
    fn fetch_part_from(&self, job: &PartJob<'_>, source: &BlobSource) -> Result<PartFile, Error> {
        let b = self.layout.backend(Kind::CloudImg);
        let url_key = Digest::sha256(sha2::Sha256::digest(source.url.as_bytes()).into());
        let data_path = b.download_path(&url_key);
        let record_path = b.download_record_path(&url_key);
        let w = self.on_wait();
        let guard = crate::lock::lock_deletable(&data_path, self.opts.lock_wait, &w)?;
        fsutil::track_path(&data_path);
        let result = self.download_part(job, source, &guard, (&data_path, &record_path));
        fsutil::untrack_path(&data_path);
        match result {
            Ok(sums) => Ok(PartFile {
                temp: TempFile::adopt(data_path)?,
                sums,
                _lock: guard,
            }),
            Err(e) => {
                if !record_path.exists() {
                    if let Err(e) = guard.remove_locked_file() {
                        tracing::warn!("removing {}: {e}", data_path.display());
                    }
                }
                Err(e)
            }
        }
    }

    fn download_part(
        &self,
        job: &PartJob<'_>,
        source: &BlobSource,
        guard: &LockGuard,
        (data_path, record): (&std::path::Path, &std::path::Path),
    ) -> Result<Sums, Error> {
        let PartJob {
            key,
            client,
            r,
            part,
            offset,
            total,
        } = *job;
        let file = guard.file();
        let progress = |done: u64, _: Option<u64>| self.progress(key, offset + done, Some(total));
        let stream_into = || -> io::Result<HashingFile<'_>> {
            file.set_len(0)?;
            (&mut &*file).seek(SeekFrom::Start(0))?;
            Ok(HashingFile {
                file,
                hasher: DualHasher::new(),
            })
        };
        if part.digest.algorithm() != Algorithm::Sha256 {
            // The ranged downloader hashes sha256 and blake3 only: the registry client streams
            // (and checks) any other digest.
            let sink = client.fetch_blob(r.domain(), r.path(), part, stream_into, |n| {
                progress(n, None);
            })?;
            return Ok(sink.hasher.finalize());
        }
        let authorization = source.authorization.as_deref();
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let fetched = download::fetch(&Fetch {
            url: &source.url,
            limits: &self.opts.cloud_limits,
            connections: self.opts.download_connections,
            partial: Partial {
                file,
                path: data_path,
                record,
            },
            stored: None,
            progress: &progress,
            headers: &headers,
        })?;
        let sums = match fetched {
            Fetched::Complete { sums, .. } => sums,
            Fetched::Stream { mut download, .. } => {
                let mut sink = stream_into().map_err(super::io_err("writing", data_path))?;
                io::copy(&mut download, &mut sink).map_err(|e| {
                    Error::from(crate::backend::cloudimg::Error::from_io(e, &source.url))
                })?;
                sink.hasher.finalize()
            }
            Fetched::NotModified => {
                return Err(cloudimg::Error::Status {
                    url: source.url.clone(),
                    status: 304,
                    reason: "Not Modified (to an unconditional request)".to_owned(),
                }
                .into())
            }
        };
        check_content(
            &source.what,
            (part.digest, part.size),
            (sums.sha256, sums.size),
        )?;
        Ok(sums)
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
