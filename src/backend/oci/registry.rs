//! A blocking client for OCI / Docker v2 registries: resolve a tag or digest to one image
//! manifest for a platform, and stream blobs with size and digest verification.
//!
//! This module talks HTTP and hashes what it receives; it never touches the store (no files, no
//! index, no locks). Blob bytes go to a sink the caller opens, so staging, fsync and publishing
//! stay with `ingest`. It does not parse image references either: host, repository and tag or
//! digest come in as separate strings.
//!
//! Auth: requests go out anonymously first; a 401 with a `Bearer` challenge fetches a token from
//! the realm (with basic credentials when known), a `Basic` challenge sends the credentials.
//! Credentials come from [`ClientOptions::credentials`] or the docker `config.json` (`auths`).
//! Tokens are cached per registry and repository for the client's lifetime.

#![allow(
    clippy::result_large_err,
    reason = "DigestMismatch carries two 65-byte digests by value that callers match on; an \
              error happens at most once per network request, so its size costs nothing"
)]

mod auth;
pub(crate) mod manifest;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::Digest as _;

use crate::digest::{Algorithm, Digest};

pub use auth::Credentials;
pub use manifest::{Descriptor, Manifest, Platform};
#[cfg(feature = "unstable")]
pub use manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

use manifest::{CONFIG_LIMIT, MANIFEST_LIMIT};

const READ_BUF: usize = 256 << 10;

/// Why a registry operation failed. Every variant names the registry and what was being fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A host, repository or reference argument is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Connecting or sending the request failed (refused, reset, timed out, TLS, DNS).
    #[error("{what}: request to {host} failed: {source}")]
    Transport {
        /// The registry (or token server) host.
        host: String,
        /// What was being fetched.
        what: String,
        /// The HTTP client's error.
        source: Box<ureq::Error>,
    },
    /// The connection broke while the response body was being read.
    #[error("{what}: reading the response from {host} failed: {source}")]
    Read {
        /// The registry host.
        host: String,
        /// What was being fetched.
        what: String,
        /// The read error.
        source: io::Error,
    },
    /// The registry refused access: no credentials, wrong credentials, or no pull permission.
    #[error("{host}: not authorized to pull {repository}: {detail}")]
    Unauthorized {
        /// The registry host as given.
        host: String,
        /// The repository.
        repository: String,
        /// What happened (which challenge, whether credentials were sent).
        detail: String,
    },
    /// The tag, digest or repository does not exist.
    #[error("{host}/{repository}: {reference} not found")]
    NotFound {
        /// The registry host as given.
        host: String,
        /// The repository.
        repository: String,
        /// The tag or digest asked for.
        reference: String,
    },
    /// The registry answered with an unexpected HTTP status.
    #[error("{what}: {host} answered HTTP {status}: {body}")]
    Status {
        /// The registry host.
        host: String,
        /// What was being fetched.
        what: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (the registry's error JSON, usually).
        body: String,
    },
    /// Content did not hash to the digest that names it.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was verified.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// Content had another size than its descriptor says.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was verified.
        what: String,
        /// The size in the descriptor.
        expected: u64,
        /// Bytes received (or announced), at the point the mismatch was seen.
        actual: u64,
    },
    /// A manifest or config exceeded the size this client accepts.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// What was being fetched.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A manifest, index or config that cannot be used.
    #[error("{what}: {reason}")]
    BadManifest {
        /// Which document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An index has no manifest for the wanted platform.
    #[error("{image} has no image for {wanted}; available: {}", available.join(", "))]
    NoMatchingPlatform {
        /// host/repository:reference.
        image: String,
        /// The platform asked for.
        wanted: Platform,
        /// The platforms the index lists.
        available: Vec<String>,
    },
    /// A single-platform image for another platform.
    #[error("{image} is an image for {found}, not {wanted}")]
    WrongPlatform {
        /// host/repository:reference.
        image: String,
        /// The platform asked for.
        wanted: Platform,
        /// The platform the image config names.
        found: String,
    },
    /// A digest algorithm registries do not use (only sha256 and sha512 are fetched).
    #[error("{what}: unsupported digest algorithm {algorithm}")]
    UnsupportedDigest {
        /// What was to be fetched.
        what: String,
        /// The algorithm.
        algorithm: Algorithm,
    },
    /// Opening, writing or flushing the caller's sink failed.
    #[error("{what}: writing to the destination failed: {source}")]
    Sink {
        /// What was being fetched.
        what: String,
        /// The sink's error.
        source: io::Error,
    },
    /// The docker config file exists but could not be read.
    #[error("reading docker config {}: {source}", path.display())]
    DockerConfig {
        /// The config file.
        path: PathBuf,
        /// The read error.
        source: io::Error,
    },
    /// The docker config file is not valid.
    #[error("docker config {}: {reason}", path.display())]
    BadDockerConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Whether trying again may succeed: connection failures, broken reads, timeouts, HTTP 5xx
    /// and 429. Digest and size mismatches are not transient: the registry served those bytes.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { source, .. } => matches!(
                **source,
                ureq::Error::Io(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Timeout(_)
                    | ureq::Error::Protocol(_)
            ),
            Self::Read { .. } => true,
            Self::Status { status, .. } => *status == 429 || (500..=599).contains(status),
            _ => false,
        }
    }
}

/// How a registry client connects, authenticates and chooses platforms.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Hosts (`name` or `name:port`) allowed over plain http. Loopback hosts always are.
    pub insecure: Vec<String>,
    /// Credentials for every registry this client talks to; overrides the docker config.
    pub credentials: Option<Credentials>,
    /// The docker config file; `None` means `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// The platform manifest lists are resolved to.
    pub platform: Platform,
    /// How many times a transient failure is retried (so `retries + 1` attempts in all).
    pub retries: u32,
    /// Limit for DNS plus TCP (and TLS) connection setup.
    pub connect_timeout: Duration,
    /// Limit for each wait on the network while sending or receiving (not for a whole blob).
    pub read_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            credentials: None,
            docker_config: None,
            platform: Platform::host(),
            retries: 3,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// An image manifest chosen for the client's platform, with its verified config.
#[derive(Clone)]
pub struct Resolved {
    /// Digest of [`Resolved::raw`]: the platform manifest's identity.
    pub manifest_digest: Digest,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The manifest bytes exactly as served.
    pub raw: Vec<u8>,
    /// The config blob, verified against the manifest's config descriptor.
    pub config: Vec<u8>,
    /// Digest of the index or manifest list the reference pointed at, when it was one.
    pub index_digest: Option<Digest>,
}

impl std::fmt::Debug for Resolved {
    // Byte arrays as numbers are unreadable in test failures and logs; sizes say enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("manifest_digest", &self.manifest_digest)
            .field("manifest", &self.manifest)
            .field("raw", &format_args!("<{} bytes>", self.raw.len()))
            .field("config", &format_args!("<{} bytes>", self.config.len()))
            .field("index_digest", &self.index_digest)
            .finish()
    }
}

/// A blocking registry client; share it between threads to fetch layers concurrently.
pub struct Client {
    agent: ureq::Agent,
    insecure: Vec<String>,
    credentials: Option<Credentials>,
    docker_config: Option<PathBuf>,
    platform: Platform,
    retries: u32,
    /// `Authorization` values that worked, per (API host, repository).
    auth: Mutex<HashMap<(String, String), String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.insecure)
            .field("credentials", &self.credentials)
            .field("docker_config", &self.docker_config)
            .field("platform", &self.platform)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// A token server's answer (Docker uses `token`, `OAuth2` servers `access_token`).
#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// A manifest response.
struct FetchedManifest {
    body: Vec<u8>,
    content_type: Option<String>,
    /// The `Docker-Content-Digest` header, when it names a digest this client can compute.
    announced: Option<Digest>,
}

/// One repository on one registry, with the URL base to reach it.
struct Repo<'a> {
    /// As the caller wrote it (`docker.io`); used in messages and credential lookup.
    host: &'a str,
    /// What goes into URLs (`registry-1.docker.io`, `[::1]:5000`).
    api_host: String,
    repository: &'a str,
    base: String,
}

impl Repo<'_> {
    fn what(&self, kind: &str, reference: &str) -> String {
        format!("{kind} {reference} of {}/{}", self.host, self.repository)
    }

    fn image(&self, reference: &str) -> String {
        let sep = if reference.contains(':') { '@' } else { ':' };
        format!("{}/{}{sep}{reference}", self.host, self.repository)
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}/v2/{}/{kind}/{reference}", self.base, self.repository)
    }
}

/// Sha256 or sha512, whichever a descriptor names.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Option<Self> {
        match algorithm {
            Algorithm::Sha256 => Some(Self::Sha256(sha2::Sha256::new())),
            Algorithm::Sha512 => Some(Self::Sha512(sha2::Sha512::new())),
            Algorithm::Blake3 => None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::sha256(h.finalize().into()),
            Self::Sha512(h) => Digest::from_bytes(Algorithm::Sha512, &h.finalize())
                .expect("sha512 output is 64 bytes"),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

fn check_tag_or_digest(reference: &str) -> Result<Option<Digest>, Error> {
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

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

impl Client {
    /// A client; nothing is contacted or read until the first request.
    #[must_use]
    pub fn new(opts: ClientOptions) -> Self {
        let ClientOptions {
            insecure,
            credentials,
            docker_config,
            platform,
            retries,
            connect_timeout,
            read_timeout,
        } = opts;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Blob GETs often redirect to object storage, which must not see the registry token
            // (S3 rejects a request carrying two auth mechanisms); same-host redirects keep it.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("imgstore/", env!("CARGO_PKG_VERSION")))
            .timeout_resolve(Some(connect_timeout))
            .timeout_connect(Some(connect_timeout))
            .timeout_send_request(Some(read_timeout))
            .timeout_recv_response(Some(read_timeout))
            .timeout_per_read(Some(read_timeout))
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            insecure,
            credentials,
            docker_config: docker_config.or_else(auth::default_docker_config),
            platform,
            retries,
            auth: Mutex::new(HashMap::new()),
        }
    }

    /// The platform this client resolves manifest lists to.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    fn repo<'a>(&self, host: &'a str, repository: &'a str) -> Result<Repo<'a>, Error> {
        let bad_host = host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'));
        if bad_host {
            return Err(Error::InvalidArgument {
                what: "registry host",
                value: host.to_owned(),
                reason: "must be a host name or address with an optional :port",
            });
        }
        let bad_repo = repository.is_empty()
            || repository
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
        if bad_repo {
            return Err(Error::InvalidArgument {
                what: "repository",
                value: repository.to_owned(),
                reason: "must be lowercase path components of [a-z0-9._-] joined by /",
            });
        }
        let api_host = match host {
            "docker.io" | "index.docker.io" => "registry-1.docker.io".to_owned(),
            // A bare IPv6 address needs brackets in a URL.
            h if h.parse::<Ipv6Addr>().is_ok() => format!("[{h}]"),
            h => h.to_owned(),
        };
        let plain = is_loopback(&api_host)
            || self
                .insecure
                .iter()
                .any(|i| i == host || i == host_without_port(host));
        let scheme = if plain { "http" } else { "https" };
        Ok(Repo {
            host,
            base: format!("{scheme}://{api_host}"),
            api_host,
            repository,
        })
    }

    fn with_retries<T>(&self, mut op: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            match op() {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    tracing::warn!(error = %e, attempt, "transient registry error, retrying");
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn credentials_for(&self, repo: &Repo<'_>) -> Result<Option<Credentials>, Error> {
        if let Some(c) = &self.credentials {
            return Ok(Some(c.clone()));
        }
        let Some(path) = &self.docker_config else {
            return Ok(None);
        };
        auth::docker_config_credentials(path, repo.host)
    }

    fn send(
        host: &str,
        what: &str,
        request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        request.call().map_err(|e| Error::Transport {
            host: host.to_owned(),
            what: what.to_owned(),
            source: Box::new(e),
        })
    }

    /// One GET with whatever auth the registry asks for; 401 handling included, no retries.
    fn get_authed(
        &self,
        repo: &Repo<'_>,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let key = (repo.api_host.clone(), repo.repository.to_owned());
        let build = |authorization: Option<&str>| {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(a) = authorization {
                req = req.header("Authorization", a);
            }
            req
        };
        let cached = self.auth.lock().get(&key).cloned();
        let response = Self::send(&repo.api_host, what, build(cached.as_deref()))?;
        if response.status() != 401 {
            return Ok(response);
        }
        let unauthorized = |detail: String| Error::Unauthorized {
            host: repo.host.to_owned(),
            repository: repo.repository.to_owned(),
            detail,
        };
        let challenge = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge);
        let credentials = self.credentials_for(repo)?;
        let authorization = match challenge {
            None => {
                return Err(unauthorized(
                    "HTTP 401 without a Basic or Bearer challenge".to_owned(),
                ))
            }
            Some(auth::Challenge::Basic) => match &credentials {
                Some(c) => c.basic_header(),
                None => {
                    return Err(unauthorized(
                        "the registry requires credentials and none are configured".to_owned(),
                    ))
                }
            },
            Some(auth::Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", repo.repository));
                let token = self.with_retries(|| {
                    self.token(
                        repo,
                        &realm,
                        service.as_deref(),
                        &scope,
                        credentials.as_ref(),
                    )
                })?;
                format!("Bearer {token}")
            }
        };
        if cached.as_deref() == Some(authorization.as_str()) {
            return Err(unauthorized(
                "the registry rejected the authorization it asked for".to_owned(),
            ));
        }
        let response = Self::send(&repo.api_host, what, build(Some(&authorization)))?;
        if response.status() == 401 {
            let detail = match (&credentials, authorization.starts_with("Basic")) {
                (Some(c), true) => format!("credentials for user {:?} were rejected", c.username),
                (Some(c), false) => format!(
                    "the token obtained as user {:?} was not accepted",
                    c.username
                ),
                (None, _) => {
                    "the anonymous token was not accepted (credentials needed, or no such repository)"
                        .to_owned()
                }
            };
            return Err(unauthorized(detail));
        }
        self.auth.lock().insert(key, authorization);
        Ok(response)
    }

    fn token(
        &self,
        repo: &Repo<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<String, Error> {
        let what = format!(
            "token for {} from {realm}",
            repo.image("").trim_end_matches(':')
        );
        let mut req = self.agent.get(realm).query("scope", scope);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = credentials {
            req = req.header("Authorization", c.basic_header());
        }
        let response = Self::send(realm, &what, req)?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(Error::Unauthorized {
                host: repo.host.to_owned(),
                repository: repo.repository.to_owned(),
                detail: match credentials {
                    Some(c) => format!(
                        "token server {realm} rejected the credentials of user {:?}",
                        c.username
                    ),
                    None => format!("token server {realm} refused an anonymous token"),
                },
            });
        }
        let body = Self::read_limited(repo, response, 1 << 20, &what)?;
        if status != 200 {
            return Err(status_error(realm, &what, status, &body));
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::BadManifest {
                what: what.clone(),
                reason: format!("token response is not JSON: {e}"),
            })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::BadManifest {
                what,
                reason: "token response has neither token nor access_token".to_owned(),
            })
    }

    /// Read a whole small body, refusing more than `limit` bytes.
    fn read_limited(
        repo: &Repo<'_>,
        response: ureq::http::Response<ureq::Body>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|source| Error::Read {
                host: repo.api_host.clone(),
                what: what.to_owned(),
                source,
            })?;
        if body.len() as u64 > limit {
            return Err(Error::TooLarge {
                what: what.to_owned(),
                limit,
            });
        }
        Ok(body)
    }

    /// GET a manifest by tag or digest: its bytes, Content-Type and `Docker-Content-Digest`.
    fn get_manifest(&self, repo: &Repo<'_>, reference: &str) -> Result<FetchedManifest, Error> {
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
    /// pinned by digest must hash to that digest.
    pub fn resolve(
        &self,
        host: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Resolved, Error> {
        let pinned = check_tag_or_digest(reference)?;
        let repo = self.repo(host, repository)?;
        let image = repo.image(reference);

        let FetchedManifest {
            body: mut raw,
            content_type,
            announced,
        } = self.get_manifest(&repo, reference)?;
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
            } = self.get_manifest(&repo, &child)?;
            let actual = digest_bytes(entry.digest.algorithm(), &body, &what)?;
            let got = (actual, body.len() as u64);
            manifest::check_content(&what, (entry.digest, entry.size), got)?;
            index_digest.get_or_insert(digest);
            digest = actual;
            raw.clone_from(&body);
            Ok((body, content_type, what))
        })?;

        let config = self.fetch_config(&repo, &image, &manifest)?;
        Ok(Resolved {
            manifest_digest: digest,
            manifest,
            raw,
            config,
            index_digest,
        })
    }

    /// Fetch and verify the config blob, and check it is for this client's platform.
    fn fetch_config(
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

    /// Download `blob` of `repository` on `host` into a sink, verifying size and digest while
    /// streaming, and return the sink.
    ///
    /// `open_sink` is called once per attempt: a transient failure (connection refused or
    /// reset, timeout, HTTP 5xx or 429) restarts the download from byte 0 into a fresh sink, and
    /// the previous sink is dropped, so a sink should be something that can be thrown away
    /// (a new temp file, a cleared buffer). `progress` receives the bytes received so far in the
    /// current attempt; it goes back to 0 when an attempt restarts. On a digest or size
    /// mismatch the sink holds unverified bytes and is dropped; nothing is returned.
    pub fn fetch_blob<W: Write>(
        &self,
        host: &str,
        repository: &str,
        blob: &Descriptor,
        open_sink: impl FnMut() -> io::Result<W>,
        progress: impl FnMut(u64),
    ) -> Result<W, Error> {
        let repo = self.repo(host, repository)?;
        let what = repo.what("blob", &blob.digest.to_string());
        self.fetch_blob_inner(&repo, blob, &what, open_sink, progress)
    }

    fn fetch_blob_inner<W: Write>(
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

fn digest_bytes(algorithm: Algorithm, bytes: &[u8], what: &str) -> Result<Digest, Error> {
    let mut hasher = Hasher::new(algorithm).ok_or_else(|| Error::UnsupportedDigest {
        what: what.to_owned(),
        algorithm,
    })?;
    hasher.update(bytes);
    Ok(hasher.finish())
}

fn not_found(repo: &Repo<'_>, reference: &str) -> Error {
    Error::NotFound {
        host: repo.host.to_owned(),
        repository: repo.repository.to_owned(),
        reference: reference.to_owned(),
    }
}

fn status_error(host: &str, what: &str, status: u16, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    Error::Status {
        host: host.to_owned(),
        what: what.to_owned(),
        status,
        body: text.trim().to_owned(),
    }
}

fn check_status(repo: &Repo<'_>, what: &str, status: u16, body: &[u8]) -> Result<(), Error> {
    match status {
        200 => Ok(()),
        403 => Err(Error::Unauthorized {
            host: repo.host.to_owned(),
            repository: repo.repository.to_owned(),
            detail: format!(
                "HTTP 403 denied: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
            ),
        }),
        _ => Err(status_error(&repo.api_host, what, status, body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_use_http() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.com",
            "example.com:5000",
            "10.0.0.1",
            "[::2]:1",
            "localhost.com",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
        let client = Client::new(ClientOptions {
            insecure: vec!["reg.lan".into(), "other:5000".into()],
            ..ClientOptions::default()
        });
        let base = |h| client.repo(h, "a/b").unwrap().base;
        assert_eq!(base("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(base("::1"), "http://[::1]");
        assert_eq!(base("reg.lan:443"), "http://reg.lan:443");
        assert_eq!(base("other:5000"), "http://other:5000");
        assert_eq!(base("other:5001"), "https://other:5001");
        assert_eq!(base("docker.io"), "https://registry-1.docker.io");
        assert!(client.repo("a/b", "x").is_err());
        assert!(client.repo("h", "Upper").is_err());
        assert!(client.repo("h", "a//b").is_err());
        assert!(client.repo("h", "../x").is_err());
    }

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

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
