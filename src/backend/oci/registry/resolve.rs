//! Resolving a tag or digest to one image manifest for the client's platform (following
//! indexes with the rules of `manifest`), and fetching and checking its config.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use crate::digest::{Algorithm, Digest};

use super::manifest::{self, Manifest, CONFIG_LIMIT, MANIFEST_LIMIT};
use super::blob::Hasher;
use super::transport::{check_status, not_found, Repo};
use super::{Client, Error, Resolved};

/// A manifest response.
pub(super) struct FetchedManifest {
    body: Vec<u8>,
    content_type: Option<String>,
    /// The `Docker-Content-Digest` header, when it names a digest this client can compute.
    announced: Option<Digest>,
}

pub(super) fn check_tag_or_digest(reference: &str) -> Result<Option<Digest>, Error> {
    let invalid = |reason| Error::InvalidArgument {
        what: "tag or digest",
        value: reference.to_owned(),
        reason,
    };
    if reference.contains(':') {
        return Digest::parse(reference)
            .map(Some)
            .map_err(|_| invalid("not a valid digest"));
    }
    let ok = !reference.is_empty()
        && reference.len() <= 128
        && !reference.starts_with(['.', '-'])
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(None)
    } else {
        Err(invalid(
            "a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -",
        ))
    }
}

impl Client {

    /// GET a manifest by tag or digest: its bytes, Content-Type and `Docker-Content-Digest`.
    pub(super) fn get_manifest(&self, repo: &Repo<'_>, reference: &str) -> Result<FetchedManifest, Error> {
        let what = repo.what("manifest", reference);
        let url = repo.url("manifests", reference);
        self.with_retries(|| {
            let response = self.get_authed(repo, &url, Some(manifest::ACCEPT_MANIFESTS), &what)?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let content_type = header("content-type");
            // Ignored unless it is a digest we can check: it is a hint, the bytes are the truth.
            let announced = header("docker-content-digest")
                .and_then(|d| Digest::parse(d.trim()).ok())
                .filter(|d| Hasher::new(d.algorithm()).is_some());
            if status == 404 {
                return Err(not_found(repo, reference));
            }
            let body = Self::read_limited(repo, response, MANIFEST_LIMIT, &what)?;
            check_status(repo, &what, status, &body)?;
            Ok(FetchedManifest {
                body,
                content_type,
                announced,
            })
        })
    }


    /// Resolve `reference` (a tag or a digest) of `repository` on `host` to one image manifest
    /// for the client's platform, and fetch and verify its config.
    ///
    /// Scheme: https, except http for loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`, any
    /// port) and hosts listed in [`ClientOptions::insecure`]. `docker.io` means
    /// `registry-1.docker.io`. An index or manifest list is resolved to the platform's entry; a
    /// single manifest whose config names another os/architecture is an error. A reference
    /// pinned by digest must hash to that digest. With a registries.conf, the mirrors that serve
    /// this kind of reference are tried first, then the registry (see `mirrors`); a blocked
    /// name is [`Error::Blocked`].
    pub fn resolve(
        &self,
        host: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Resolved, Error> {
        check_tag_or_digest(reference)?;
        let repo = self.repo(host, repository)?;
        let route = self.endpoints(host, repository, reference)?;
        let resolved = self.on_endpoints(
            &route,
            &repo.what("manifest", reference),
            |repo, endpoint| self.resolve_at(repo, &endpoint.reference),
        )?;
        self.remember_route(host, repository, route);
        Ok(resolved)
    }

    /// [`Client::resolve`] at one endpoint.
    fn resolve_at(&self, repo: &Repo<'_>, reference: &str) -> Result<Resolved, Error> {
        let pinned = check_tag_or_digest(reference)?;
        let image = repo.image(reference);

        let FetchedManifest {
            body: mut raw,
            content_type,
            announced,
        } = self.get_manifest(repo, reference)?;
        // By tag, the registry's Docker-Content-Digest is what the tag points at: bytes that
        // do not hash to it were damaged in storage or on the way.
        let expected = pinned.or(announced);
        let algorithm = expected.map_or(Algorithm::Sha256, |d| d.algorithm());
        let mut digest = digest_bytes(algorithm, &raw, &repo.what("manifest", reference))?;
        if let Some(expected) = expected {
            if digest != expected {
                return Err(Error::DigestMismatch {
                    what: repo.what("manifest", reference),
                    expected,
                    actual: digest,
                });
            }
        }
        let parsed = manifest::parse(&raw, content_type.as_deref()).map_err(|reason| {
            Error::BadManifest {
                what: repo.what("manifest", reference),
                reason,
            }
        })?;
        let mut index_digest = None;
        let manifest = manifest::follow_indexes(parsed, &self.platform, &image, |entry| {
            let child = entry.digest.to_string();
            let what = repo.what("manifest", &child);
            let FetchedManifest {
                body, content_type, ..
            } = self.get_manifest(repo, &child)?;
            let actual = digest_bytes(entry.digest.algorithm(), &body, &what)?;
            let got = (actual, body.len() as u64);
            manifest::check_content(&what, (entry.digest, entry.size), got)?;
            index_digest.get_or_insert(digest);
            digest = actual;
            raw.clone_from(&body);
            Ok((body, content_type, what))
        })?;

        // An artifact's config is no image config and names no platform (classified later).
        let config = if super::artifact::is_cocoon_artifact(&raw) {
            self.fetch_artifact_config(repo, &manifest)?
        } else {
            self.fetch_config(repo, &image, &manifest)?
        };
        Ok(Resolved {
            manifest_digest: digest,
            manifest,
            raw,
            config,
            index_digest,
        })
    }


    /// Fetch and verify the config blob, and check it is for this client's platform.
    pub(super) fn fetch_config(
        &self,
        repo: &Repo<'_>,
        image: &str,
        manifest: &Manifest,
    ) -> Result<Vec<u8>, Error> {
        let config_what = repo.what("config", &manifest.config.digest.to_string());
        if manifest.config.size > CONFIG_LIMIT {
            return Err(Error::TooLarge {
                what: config_what,
                limit: CONFIG_LIMIT,
            });
        }
        let config = self.fetch_blob_inner(
            repo,
            &manifest.config,
            &config_what,
            || Ok(Vec::with_capacity(manifest.config.size as usize)),
            |_| {},
        )?;
        manifest::check_config(&config, &self.platform, &config_what, image)?;
        Ok(config)
    }
}

pub(super) fn digest_bytes(algorithm: Algorithm, bytes: &[u8], what: &str) -> Result<Digest, Error> {
    let mut hasher = Hasher::new(algorithm).ok_or_else(|| Error::UnsupportedDigest {
        what: what.to_owned(),
        algorithm,
    })?;
    hasher.update(bytes);
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests() {
        assert_eq!(check_tag_or_digest("latest").unwrap(), None);
        assert_eq!(check_tag_or_digest("v1.2_3-x").unwrap(), None);
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            check_tag_or_digest(&d).unwrap(),
            Some(Digest::parse(&d).unwrap())
        );
        for bad in ["", ".x", "-x", "a/b", "sha256:abc", &"x".repeat(129)] {
            assert!(check_tag_or_digest(bad).is_err(), "{bad}");
        }
    }

}
