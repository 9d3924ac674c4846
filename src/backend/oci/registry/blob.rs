//! Blobs: streaming one into a caller's sink while hashing it, with size and digest checks.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::io::{self, Read, Write};

use sha2::Digest as _;

use crate::digest::{Algorithm, Digest};

use super::manifest::{self, Descriptor};
use super::transport::{check_status, not_found, status_error, Repo};
use super::{Client, Error};

const READ_BUF: usize = 256 << 10;

/// Sha256 or sha512, whichever a descriptor names.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: Algorithm) -> Option<Self> {
        match algorithm {
            Algorithm::Sha256 => Some(Self::Sha256(sha2::Sha256::new())),
            Algorithm::Sha512 => Some(Self::Sha512(sha2::Sha512::new())),
            Algorithm::Blake3 => None,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::sha256(h.finalize().into()),
            Self::Sha512(h) => Digest::from_bytes(Algorithm::Sha512, &h.finalize())
                .expect("sha512 output is 64 bytes"),
        }
    }
}

impl Client {

    /// Download `blob` of `repository` on `host` into a sink, verifying size and digest while
    /// streaming, and return the sink.
    ///
    /// `open_sink` is called once per attempt: a transient failure (connection refused or
    /// reset, timeout, HTTP 5xx or 429) restarts the download from byte 0 into a fresh sink, and
    /// the previous sink is dropped, so a sink should be something that can be thrown away
    /// (a new temp file, a cleared buffer). `progress` receives the bytes received so far in the
    /// current attempt; it goes back to 0 when an attempt restarts. On a digest or size
    /// mismatch the sink holds unverified bytes and is dropped; nothing is returned. The blob
    /// comes from the endpoints the last [`Client::resolve`] of this repository used (mirrors,
    /// then the registry), the next one tried after any failure, mismatches included.
    pub fn fetch_blob<W: Write>(
        &self,
        host: &str,
        repository: &str,
        blob: &Descriptor,
        mut open_sink: impl FnMut() -> io::Result<W>,
        mut progress: impl FnMut(u64),
    ) -> Result<W, Error> {
        let reference = blob.digest.to_string();
        let repo = self.repo(host, repository)?;
        let route = self.blob_route(host, repository, &reference)?;
        self.on_endpoints(&route, &repo.what("blob", &reference), |repo, _| {
            let what = repo.what("blob", &reference);
            self.fetch_blob_inner(repo, blob, &what, &mut open_sink, &mut progress)
        })
    }


    pub(super) fn fetch_blob_inner<W: Write>(
        &self,
        repo: &Repo<'_>,
        blob: &Descriptor,
        what: &str,
        mut open_sink: impl FnMut() -> io::Result<W>,
        mut progress: impl FnMut(u64),
    ) -> Result<W, Error> {
        if Hasher::new(blob.digest.algorithm()).is_none() {
            return Err(Error::UnsupportedDigest {
                what: what.to_owned(),
                algorithm: blob.digest.algorithm(),
            });
        }
        let reference = blob.digest.to_string();
        let url = repo.url("blobs", &reference);
        self.with_retries(|| {
            let response = self.get_authed(repo, &url, None, what)?;
            let status = response.status().as_u16();
            if status == 404 {
                return Err(not_found(repo, &reference));
            }
            if status != 200 {
                let body = Self::read_limited(repo, response, 4096, what)?;
                check_status(repo, what, status, &body)?;
                return Err(status_error(&repo.api_host, what, status, &body));
            }
            // A wrong Content-Length means the registry holds other bytes; no point reading.
            // With a Content-Encoding the length is of the encoded form (ureq decodes gzip).
            let encoded = response
                .headers()
                .get("content-encoding")
                .is_some_and(|v| v.as_bytes() != b"identity");
            let announced = response
                .headers()
                .get("content-length")
                .filter(|_| !encoded)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(len) = announced.filter(|&len| len != blob.size) {
                return Err(Error::SizeMismatch {
                    what: what.to_owned(),
                    expected: blob.size,
                    actual: len,
                });
            }
            let mut sink = open_sink().map_err(|source| Error::Sink {
                what: what.to_owned(),
                source,
            })?;
            let mut hasher = Hasher::new(blob.digest.algorithm()).expect("algorithm checked above");
            let mut reader = response.into_body().into_reader();
            let mut buf = vec![0u8; READ_BUF];
            let mut received = 0u64;
            progress(0);
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(Error::Read {
                            host: repo.api_host.clone(),
                            what: what.to_owned(),
                            source,
                        })
                    }
                };
                received += n as u64;
                if received > blob.size {
                    return Err(Error::SizeMismatch {
                        what: what.to_owned(),
                        expected: blob.size,
                        actual: received,
                    });
                }
                hasher.update(&buf[..n]);
                sink.write_all(&buf[..n]).map_err(|source| Error::Sink {
                    what: what.to_owned(),
                    source,
                })?;
                progress(received);
            }
            let got = (hasher.finish(), received);
            manifest::check_content(what, (blob.digest, blob.size), got)?;
            sink.flush().map_err(|source| Error::Sink {
                what: what.to_owned(),
                source,
            })?;
            Ok(sink)
        })
    }
}
