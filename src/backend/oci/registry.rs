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
//! Credentials come from [`ClientOptions::credentials`] or the docker `config.json` (`auths`,
//! and the credential helpers of `credHelpers` / `credsStore`). Tokens are cached per registry
//! and repository for the client's lifetime.
//!
//! Mirrors: a containers-registries.conf ([`ClientOptions::registries_conf`]) may send a pull to
//! mirrors first and remap or block names; every request then falls through the endpoints until
//! one answers with content that verifies.
//!
//! Files: `transport` (URLs, sending, retries, statuses), `auth` (challenges, credentials,
//! tokens), `authfile` (which credentials files, in order), `credhelper` (one credentials file
//! and docker credential helpers), `mirrors` (registries.conf rules),
//! `route` (trying endpoints in turn), `resolve` (tag or digest to a platform manifest and its
//! config), `blob` (streaming and checking blobs), `manifest` (documents and the rules pull and
//! layout import share).

#![allow(
    clippy::result_large_err,
    reason = "DigestMismatch carries two 65-byte digests by value that callers match on; an \
              error happens at most once per network request, so its size costs nothing"
)]

pub mod artifact;
mod auth;
mod authfile;
mod blob;
mod credentials;
mod credhelper;
pub mod push;
pub(crate) mod manifest;
mod mirrors;
mod resolve;
mod route;
mod transport;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::digest::{Algorithm, Digest};

pub use credentials::Credentials;
pub(crate) use blob::Hasher;
pub use manifest::{Descriptor, Manifest, Platform};
pub use mirrors::{Registries, RegistriesConf};
#[cfg(feature = "unstable")]
pub use manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

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
    #[error(
        "{what}: size mismatch: expected {}, got {actual}",
        crate::human::bytes(*expected)
    )]
    SizeMismatch {
        /// What was verified.
        what: String,
        /// The size in the descriptor.
        expected: u64,
        /// Bytes received (or announced), at the point the mismatch was seen.
        actual: u64,
    },
    /// A manifest or config exceeded the size this client accepts.
    #[error("{what} is larger than {}", crate::human::bytes(*limit))]
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
    /// A cocoon artifact that is not an image this store holds (a VM snapshot, an unknown type).
    #[error("{what}: artifact type {artifact_type} is not an image imgstore can store")]
    UnsupportedArtifact {
        /// Which manifest.
        what: String,
        /// Its artifact type.
        artifact_type: String,
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
    /// Reading the bytes of a blob being pushed failed (a stored file gone or unreadable).
    #[error("{what}: reading the bytes to upload failed: {source}")]
    UploadRead {
        /// What was being pushed.
        what: String,
        /// The read error.
        source: io::Error,
    },
    /// A credentials file (containers `auth.json` or docker config) exists but could not be read.
    #[error("reading registry credentials file {}: {source}", path.display())]
    DockerConfig {
        /// The config file.
        path: PathBuf,
        /// The read error.
        source: io::Error,
    },
    /// A credentials file (containers `auth.json` or docker config) is not valid.
    #[error("registry credentials file {}: {reason}", path.display())]
    BadDockerConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The containers-registries.conf file could not be read.
    #[error("reading registries config {}: {source}", path.display())]
    RegistriesConf {
        /// The config file.
        path: PathBuf,
        /// The read error.
        source: io::Error,
    },
    /// The containers-registries.conf file is not valid.
    #[error("registries config {}: {reason}", path.display())]
    BadRegistriesConf {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `[[registry]]` table with `blocked = true` covers the image.
    #[error("{image} is blocked by {} (prefix {prefix})", path.display())]
    Blocked {
        /// host/repository:tag or host/repository@digest.
        image: String,
        /// The prefix of the blocking table.
        prefix: String,
        /// The config file.
        path: PathBuf,
    },
    /// Every endpoint (mirrors, then the registry) failed; each failure in the order tried.
    #[error("{what}: every endpoint failed: {}", failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Endpoints {
        /// What was being fetched.
        what: String,
        /// What each endpoint answered.
        failures: Vec<EndpointFailure>,
    },
    /// A docker credential helper could not be run.
    #[error("credential helper {program} (for {server}) could not be run: {source}")]
    CredentialHelperSpawn {
        /// `docker-credential-<name>`.
        program: String,
        /// The server URL asked about.
        server: String,
        /// Why (not found on PATH, not executable, …).
        source: io::Error,
    },
    /// A docker credential helper failed or answered something that is not credentials.
    #[error("credential helper {program} (for {server}) failed: {reason}")]
    CredentialHelper {
        /// `docker-credential-<name>`.
        program: String,
        /// The server URL asked about.
        server: String,
        /// Its exit status and message, or what is wrong with its answer.
        reason: String,
    },
}

/// One endpoint's failure inside [`Error::Endpoints`].
#[derive(Debug)]
pub struct EndpointFailure {
    /// `mirror N` (its place in the route, from 1) or `registry`; the error names the host.
    pub endpoint: String,
    /// What it answered.
    pub error: Box<Error>,
}

impl std::fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.error)
    }
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
    /// Credentials for every registry this client talks to; overrides the credentials files.
    pub credentials: Option<Credentials>,
    /// The only credentials file to read (docker `config.json` format: `auths`, `credHelpers`,
    /// `credsStore`). `None` means containers-auth.json(5)'s search: `$REGISTRY_AUTH_FILE` or
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, then `$XDG_CONFIG_HOME/containers/auth.json`,
    /// then `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`; the first file with an entry
    /// for the repository wins.
    pub docker_config: Option<PathBuf>,
    /// Mirrors, remapping, blocked and insecure registries (containers-registries.conf v2 and,
    /// when searching, its `registries.conf.d` drop-ins); read at the client's first request.
    pub registries_conf: RegistriesConf,
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
            registries_conf: RegistriesConf::default(),
            platform: Platform::host(),
            retries: 3,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// The endpoints of one pull, in the order they are tried.
type Route = Arc<Vec<mirrors::Endpoint>>;

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
    /// The credentials files, searched in order.
    auth_files: Vec<PathBuf>,
    platform: Platform,
    retries: u32,
    /// `Authorization` values that worked, per (API host, repository).
    auth: Mutex<HashMap<(String, String), String>>,
    registries_conf: RegistriesConf,
    /// What the credentials files (and their helpers) gave per (host, repository), once asked.
    host_credentials: Mutex<HashMap<(String, String), Option<Credentials>>>,
    /// The rules of `registries_conf`, once read.
    registries: Mutex<Option<Arc<Registries>>>,
    /// The endpoints `resolve` chose for (host, repository), which its blobs follow.
    routes: Mutex<HashMap<(String, String), Route>>,
    /// Mirrors (API hosts) that could not be reached: not tried again by this client.
    down: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.insecure)
            .field("credentials", &self.credentials)
            .field("auth_files", &self.auth_files)
            .field("registries_conf", &self.registries_conf)
            .field("platform", &self.platform)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client; nothing is contacted or read until the first request.
    #[must_use]
    pub fn new(opts: ClientOptions) -> Self {
        let ClientOptions {
            insecure,
            credentials,
            docker_config,
            registries_conf,
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
            auth_files: docker_config.map_or_else(authfile::default_auth_files, |f| vec![f]),
            platform,
            retries,
            auth: Mutex::new(HashMap::new()),
            registries_conf,
            host_credentials: Mutex::new(HashMap::new()),
            registries: Mutex::new(None),
            routes: Mutex::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
        }
    }


    /// The platform this client resolves manifest lists to.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn platform(&self) -> &Platform {
        &self.platform
    }
}
