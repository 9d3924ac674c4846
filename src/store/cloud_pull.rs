//! `pull` of a cloud image by URL: revalidate a stored copy, resume or start a ranged download,
//! then hand the bytes to the one cloud ingest path (`cloud.rs`).
//!
//! The partial download of a URL is `temp/<sha256 of URL>.download` with its resume record
//! beside it (docs/design.md §3a). A pull holds the data file's `flock` (lock-then-check, as
//! for digest locks, because GC deletes stale temp entries) from before its first byte until
//! the file is published or removed, so two pulls of one URL never write into it at once: the
//! second waits, then finds the image stored.

use std::os::unix::fs::FileExt;

use sha2::Digest as _;

use super::cloud::{Origin, Revalidation};
use super::config::check_files;
use super::{Error, Kind, PullOutcome, Store};
use crate::backend::cloudimg::download::{self, probe::Validators, Fetch, Fetched, Partial};
use crate::backend::cloudimg::{self, Format};
use crate::digest::Digest;
use crate::fsutil::{self, TempFile};
use crate::index::sources;
use crate::lock;

/// How a cloud image pull treats a URL already stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloudPull {
    /// Download again even if stored (the partial download, if any, is still resumed).
    pub force: bool,
    /// Never touch the network: use the stored copy, fail if there is none.
    pub offline: bool,
}

impl Store {
    /// Pull a cloud image from an http(s) URL. A URL already stored with intact files is
    /// revalidated (one conditional request) and downloaded again only if it changed, or if
    /// `force`.
    ///
    /// # Errors
    /// HTTP failures (status, timeout, truncated body, over the size cap), refused formats or
    /// images, a full disk, a lock timeout.
    pub fn pull_cloud(&self, url: &str, force: bool) -> Result<PullOutcome, Error> {
        self.pull_cloud_with(
            url,
            CloudPull {
                force,
                offline: false,
            },
        )
    }

    /// [`Store::pull_cloud`] with every option.
    ///
    /// # Errors
    /// As [`Store::pull_cloud`]; offline, a URL that is not stored.
    pub fn pull_cloud_with(&self, url: &str, how: CloudPull) -> Result<PullOutcome, Error> {
        let stored = if how.force {
            None
        } else {
            self.stored_cloud(url)?
        };
        let reused = |id, r| PullOutcome {
            name: url.to_owned(),
            id,
            kind: Kind::CloudImg,
            reused: true,
            revalidation: Some(r),
        };
        let b = self.layout.backend(Kind::CloudImg);
        let known = match stored {
            Some(id) if how.offline => return Ok(reused(id, Revalidation::Offline)),
            Some(id) => {
                let all = sources::load(&b.sources_path())?;
                let v = all
                    .sources
                    .get(url)
                    .filter(|s| s.id == id)
                    .map(|s| Validators {
                        etag: s.etag.clone(),
                        last_modified: s.last_modified.clone(),
                    })
                    .filter(|v| !v.is_empty());
                match v {
                    Some(v) => Some((id, v)),
                    None => return Ok(reused(id, Revalidation::NoValidator)),
                }
            }
            None if how.offline => {
                return Err(Error::NotStoredOffline {
                    url: url.to_owned(),
                })
            }
            None => None,
        };

        fsutil::create_dir_all(&b.temp_dir())?;
        let url_key = Digest::sha256(sha2::Sha256::digest(url.as_bytes()).into());
        let data_path = b.download_path(&url_key);
        let record_path = b.download_record_path(&url_key);
        let w = self.on_wait();
        let guard = lock::lock_deletable(&data_path, self.opts.lock_wait, &w)?;
        if known.is_none() && !how.force {
            // Another pull of this URL may have finished while this one waited for the lock.
            if let Some(id) = self.stored_cloud(url)? {
                if !record_path.exists() {
                    let _ = guard.remove_locked_file();
                }
                return Ok(PullOutcome {
                    revalidation: None,
                    ..reused(id, Revalidation::Unchanged)
                });
            }
        }
        // Until the download has a resume record, an interrupt removes the data file.
        fsutil::track_path(&data_path);
        let result = self.fetch_and_store(url, &guard, &data_path, &record_path, known);
        fsutil::untrack_path(&data_path);
        // Without a record nothing is resumable: the (empty or abandoned) data file goes, under
        // its lock. With one, both stay for the next pull (and GC keeps them for the temp grace).
        if !record_path.exists() {
            if let Err(e) = guard.remove_locked_file() {
                tracing::warn!("removing {}: {e}", data_path.display());
            }
        }
        result
    }

    fn fetch_and_store(
        &self,
        url: &str,
        guard: &lock::LockGuard,
        data_path: &std::path::Path,
        record_path: &std::path::Path,
        known: Option<(Digest, Validators)>,
    ) -> Result<PullOutcome, Error> {
        let reused = |id, r| PullOutcome {
            name: url.to_owned(),
            id,
            kind: Kind::CloudImg,
            reused: true,
            revalidation: Some(r),
        };
        let connections = self.opts.download_connections;
        let label = |n: usize| {
            if n > 1 {
                format!("{url} ({n} connections)")
            } else {
                url.to_owned()
            }
        };
        let shown = label(connections);
        let progress = |done: u64, total: Option<u64>| self.progress(&shown, done, total);
        let fetched = download::fetch(&Fetch {
            url,
            limits: &self.opts.cloud_limits,
            connections,
            partial: Partial {
                file: guard.file(),
                path: data_path,
                record: record_path,
            },
            stored: known.as_ref().map(|(_, v)| v),
            progress: &progress,
            headers: &[],
        })?;
        let changed = known.as_ref().map(|_| Revalidation::Changed);
        let cap = self.opts.cloud_limits.max_download;
        let mut out = match fetched {
            Fetched::NotModified => {
                // A 304 to a request without a condition: the server is broken.
                let (id, _) = known.ok_or_else(|| cloudimg::Error::Status {
                    url: url.to_owned(),
                    status: 304,
                    reason: "Not Modified (to an unconditional request)".to_owned(),
                })?;
                return Ok(reused(id, Revalidation::Unchanged));
            }
            Fetched::Stream {
                download,
                validators,
            } => {
                let origin = Origin { validators };
                let total = download.content_length();
                self.ingest_cloud(url, download, url, total, Some(cap), Some(&origin))?
            }
            Fetched::Complete {
                sums, validators, ..
            } => {
                let head = read_head(guard.file(), data_path)?;
                let temp = TempFile::adopt(data_path.to_path_buf())?;
                let expected = crate::ingest::Expected {
                    max_size: Some(cap),
                    ..crate::ingest::Expected::default()
                };
                let staged = crate::ingest::stage_hashed(temp, sums, url, &expected)?;
                let format = match cloudimg::sniff(&head) {
                    Format::Rejected(what) => {
                        return Err(cloudimg::Error::Rejected {
                            source_name: url.to_owned(),
                            format: what,
                        }
                        .into())
                    }
                    f => f,
                };
                let origin = Origin { validators };
                self.finish_cloud(url, staged, format, url, Some(&origin))?
            }
        };
        out.revalidation = changed;
        Ok(out)
    }

    /// The image ID stored under `url`, if its files are intact.
    pub(super) fn stored_cloud(&self, url: &str) -> Result<Option<Digest>, Error> {
        let snap = self.snapshot()?;
        let Some(e) = snap.cloud.get(url) else {
            return Ok(None);
        };
        let info = self.describe(&snap, Kind::CloudImg, std::iter::once(url));
        Ok(check_files(&info).is_ok().then_some(e.content_sum))
    }
}

/// The first bytes of a finished download, to tell its format.
pub(super) fn read_head(file: &std::fs::File, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(super::io_err("reading", path)(e).into()),
        }
    }
    head.truncate(n);
    Ok(head)
}
