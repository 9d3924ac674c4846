//! Pushing: blobs (skipped when the registry has them, mounted from another repository when it
//! offers, else uploaded monolithically or in chunks) and manifests, per the distribution spec.
//!
//! Like the rest of the client this never touches the store: a blob's bytes come from a reader
//! the caller opens (once per attempt), and the registry checks the digest given at the end of
//! every upload, so bytes that do not match their descriptor are refused there.
//!
//! Auth: every write starts with a bodyless request (HEAD, POST), so a 401 is met before any
//! body is sent; a Bearer token is asked for with `pull,push` on the repository (a challenge to
//! a HEAD names only `pull`), and reused for the uploads that follow.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::io::{self, Read};

use super::manifest::Descriptor;
use super::transport::{check_status, status_error, Repo};
use super::{Client, Error};

/// Blobs up to this size go up in one PUT unless told otherwise; bigger ones in chunks of it.
pub const DEFAULT_CHUNK: u64 = 32 << 20;

/// How one blob is uploaded.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// Another repository of the same registry that may have the blob, to mount it from.
    pub mount_from: Option<&'a str>,
    /// Blobs up to this size go in one request, bigger ones in chunks of it.
    pub chunk: u64,
}

/// What became of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobPush {
    /// The registry had it already (HEAD answered 200): nothing sent.
    Present,
    /// Mounted from another repository of the same registry: nothing sent.
    Mounted,
    /// Its bytes were uploaded.
    Uploaded,
}

/// An HTTP method this module sends.
#[derive(Clone, Copy)]
enum Method {
    Head,
    Post,
}

impl Client {
    /// The `Authorization` to push to `repo`, if one is cached.
    fn push_auth(&self, repo: &Repo<'_>) -> Option<String> {
        self.auth
            .lock()
            .get(&(repo.api_host.clone(), push_key(repo)))
            .cloned()
    }

    /// One bodyless request, with auth for pushing: a 401 is answered once (token with
    /// `pull,push`, or basic credentials) and the request sent again.
    fn send_bodyless(
        &self,
        repo: &Repo<'_>,
        method: Method,
        url: &str,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let send = |authorization: Option<&str>| {
            let r = match method {
                Method::Head => {
                    let mut req = self.agent.head(url);
                    if let Some(a) = authorization {
                        req = req.header("Authorization", a);
                    }
                    req.call()
                }
                Method::Post => {
                    let mut req = self.agent.post(url);
                    if let Some(a) = authorization {
                        req = req.header("Authorization", a);
                    }
                    req.send_empty()
                }
            };
            r.map_err(|e| transport(repo, what, e))
        };
        let cached = self.push_auth(repo);
        let response = send(cached.as_deref())?;
        if response.status() != 401 {
            return Ok(response);
        }
        let unauthorized = |detail: String| Error::Unauthorized {
            host: repo.host.to_owned(),
            repository: repo.repository.to_owned(),
            detail,
        };
        let credentials = self.credentials_for(repo)?;
        let authorization = self.answer_challenge(
            repo,
            &response,
            Some(format!("repository:{}:pull,push", repo.repository)),
            credentials.as_ref(),
            "pushing needs credentials and none are configured",
        )?;
        let response = send(Some(&authorization))?;
        if response.status() == 401 {
            return Err(unauthorized(match &credentials {
                Some(c) => format!("user {:?} may not push here", c.username),
                None => "pushing needs credentials and none are configured".to_owned(),
            }));
        }
        self.auth
            .lock()
            .insert((repo.api_host.clone(), push_key(repo)), authorization);
        Ok(response)
    }

    /// Whether `repo` has `blob` (HEAD; a size that differs counts as not).
    fn has_blob_in(&self, repo: &Repo<'_>, blob: &Descriptor) -> Result<bool, Error> {
        let what = repo.what("blob", &blob.digest.to_string());
        let url = repo.url("blobs", &blob.digest.to_string());
        self.with_retries(|| {
            let r = self.send_bodyless(repo, Method::Head, &url, &what)?;
            match r.status().as_u16() {
                200 => {
                    let len = r
                        .headers()
                        .get("content-length")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    Ok(len.is_none_or(|l| l == blob.size))
                }
                404 => Ok(false),
                s => Err(status_error(&repo.api_host, &what, s, b"")),
            }
        })
    }

    /// Make `blob` present in `repository` on `host`: nothing if it is there, a mount from
    /// `how.mount_from` (another repository of the same registry) if the registry does it, else an
    /// upload of the bytes `open` reads (called once per attempt): one PUT when the blob is at
    /// most `how.chunk` bytes, else PATCH requests of `chunk` bytes then the closing PUT. `progress` gets
    /// the bytes sent so far in the current attempt.
    ///
    /// # Errors
    /// Transport failures, refused auth, a reader failing, the registry refusing the upload
    /// (among others when the bytes do not hash to the descriptor's digest).
    pub fn push_blob<R: Read>(
        &self,
        host: &str,
        repository: &str,
        blob: &Descriptor,
        how: Upload<'_>,
        mut open: impl FnMut() -> io::Result<R>,
        progress: impl Fn(u64),
    ) -> Result<BlobPush, Error> {
        let Upload { mount_from, chunk } = how;
        let repo = self.repo(host, repository)?;
        if self.has_blob_in(&repo, blob)? {
            return Ok(BlobPush::Present);
        }
        let what = repo.what("blob upload", &blob.digest.to_string());
        let digest = blob.digest.to_string();
        self.with_retries(|| {
            let mut url = repo.url("blobs", "uploads/");
            if let Some(from) = mount_from.filter(|f| *f != repository) {
                url = format!("{url}?mount={digest}&from={from}");
            }
            let r = self.send_bodyless(&repo, Method::Post, &url, &what)?;
            let status = r.status().as_u16();
            if status == 201 && mount_from.is_some() {
                return Ok(BlobPush::Mounted);
            }
            let mut location = location(&repo, &r, &what)?;
            if status != 202 {
                let body = Self::read_limited(&repo, r, 4096, &what)?;
                check_status(&repo, &what, status, &body)?;
                return Err(status_error(&repo.api_host, &what, status, &body));
            }
            let mut reader = open().map_err(|source| Error::UploadRead {
                what: what.clone(),
                source,
            })?;
            let chunk = chunk.max(1);
            let mut buf = Vec::new();
            let mut read = |want: u64, buf: &mut Vec<u8>, sent: u64| {
                buf.clear();
                (&mut reader)
                    .take(want)
                    .read_to_end(buf)
                    .map_err(|source| Error::UploadRead {
                        what: what.clone(),
                        source,
                    })?;
                if (buf.len() as u64) < want {
                    return Err(Error::SizeMismatch {
                        what: what.clone(),
                        expected: blob.size,
                        actual: sent + buf.len() as u64,
                    });
                }
                Ok(())
            };
            progress(0);
            if blob.size <= chunk {
                // Monolithic: the whole blob goes with the closing PUT.
                read(blob.size, &mut buf, 0)?;
            } else {
                // Chunked: PATCHes of `chunk` bytes, each continuing at the Location the
                // previous one answered with, then an empty closing PUT.
                let mut sent = 0u64;
                while sent < blob.size {
                    let want = chunk.min(blob.size - sent);
                    read(want, &mut buf, sent)?;
                    let end = sent + want - 1;
                    let patch = self
                        .agent
                        .patch(&location)
                        .header("Content-Type", "application/octet-stream")
                        .header("Content-Range", format!("{sent}-{end}"));
                    let r = self
                        .with_push_auth(&repo, patch)
                        .send(&buf[..])
                        .map_err(|e| transport(&repo, &what, e))?;
                    let status = r.status().as_u16();
                    let next = location_opt(&repo, &r);
                    if status != 202 {
                        let body = Self::read_limited(&repo, r, 4096, &what)?;
                        return Err(status_error(&repo.api_host, &what, status, &body));
                    }
                    location = next.ok_or_else(|| Error::BadManifest {
                        what: what.clone(),
                        reason: "chunk accepted without a Location to continue at".to_owned(),
                    })?;
                    sent += want;
                    progress(sent);
                }
                buf.clear();
            }
            let sep = if location.contains('?') { '&' } else { '?' };
            let put = self
                .agent
                .put(format!("{location}{sep}digest={digest}"))
                .header("Content-Type", "application/octet-stream");
            let r = self
                .with_push_auth(&repo, put)
                .send(&buf[..])
                .map_err(|e| transport(&repo, &what, e))?;
            let status = r.status().as_u16();
            if status != 201 {
                let body = Self::read_limited(&repo, r, 4096, &what)?;
                return Err(status_error(&repo.api_host, &what, status, &body));
            }
            progress(blob.size);
            Ok(BlobPush::Uploaded)
        })
    }

    /// PUT `bytes` (a manifest of `media_type`) as `reference` (a tag or its digest).
    ///
    /// # Errors
    /// Transport failures, refused auth, the registry refusing the manifest (a blob it names is
    /// missing, a media type it does not take).
    pub fn push_manifest(
        &self,
        host: &str,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), Error> {
        super::resolve::check_tag_or_digest(reference)?;
        let repo = self.repo(host, repository)?;
        let what = repo.what("manifest upload", reference);
        // Authenticate with a bodyless request first (the manifest's digest need not exist).
        let probe = repo.url("manifests", reference);
        self.send_bodyless(&repo, Method::Head, &probe, &what)?;
        self.with_retries(|| {
            let put = self
                .agent
                .put(&probe)
                .header("Content-Type", media_type);
            let r = self
                .with_push_auth(&repo, put)
                .send(bytes)
                .map_err(|e| transport(&repo, &what, e))?;
            let status = r.status().as_u16();
            if status == 201 || status == 200 {
                return Ok(());
            }
            let body = Self::read_limited(&repo, r, 4096, &what)?;
            Err(status_error(&repo.api_host, &what, status, &body))
        })
    }

    fn with_push_auth(
        &self,
        repo: &Repo<'_>,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        match self.push_auth(repo) {
            Some(a) => req.header("Authorization", a),
            None => req,
        }
    }
}

/// The auth cache key for pushing to `repo` (kept apart from the pull tokens of the same one).
fn push_key(repo: &Repo<'_>) -> String {
    format!("{} (push)", repo.repository)
}

fn transport(repo: &Repo<'_>, what: &str, e: ureq::Error) -> Error {
    Error::Transport {
        host: repo.api_host.clone(),
        what: what.to_owned(),
        source: Box::new(e),
    }
}

/// The `Location` of an upload session, made absolute.
fn location_opt(repo: &Repo<'_>, r: &ureq::http::Response<ureq::Body>) -> Option<String> {
    let l = r.headers().get("location")?.to_str().ok()?;
    Some(if l.starts_with('/') {
        format!("{}{l}", repo.base)
    } else {
        l.to_owned()
    })
}

fn location(
    repo: &Repo<'_>,
    r: &ureq::http::Response<ureq::Body>,
    what: &str,
) -> Result<String, Error> {
    if r.status().as_u16() != 202 {
        return Ok(String::new());
    }
    location_opt(repo, r).ok_or_else(|| Error::BadManifest {
        what: what.to_owned(),
        reason: "upload started without a Location".to_owned(),
    })
}
