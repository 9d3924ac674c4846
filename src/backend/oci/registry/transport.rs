//! Transport: which URL reaches a repository (https, or http for loopback and insecure hosts),
//! sending a request, retrying transient failures with backoff, reading bounded bodies, and
//! turning HTTP statuses into errors. No auth (see `auth`) and no content checks.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::io::Read;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use super::mirrors::{host_without_port, Endpoint};
use super::{Client, Error};

/// One repository on one registry, with the URL base to reach it.
pub(super) struct Repo<'a> {
    /// As the caller wrote it (`docker.io`); used in messages and credential lookup.
    pub(super) host: &'a str,
    /// What goes into URLs (`registry-1.docker.io`, `[::1]:5000`).
    pub(super) api_host: String,
    pub(super) repository: &'a str,
    pub(super) base: String,
}

impl Repo<'_> {
    pub(super) fn what(&self, kind: &str, reference: &str) -> String {
        format!("{kind} {reference} of {}/{}", self.host, self.repository)
    }

    pub(super) fn image(&self, reference: &str) -> String {
        let sep = if reference.contains(':') { '@' } else { ':' };
        format!("{}/{}{sep}{reference}", self.host, self.repository)
    }

    pub(super) fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}/v2/{}/{kind}/{reference}", self.base, self.repository)
    }
}

pub(super) fn is_loopback(host: &str) -> bool {
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

pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

impl Client {
    pub(super) fn repo<'a>(&self, host: &'a str, repository: &'a str) -> Result<Repo<'a>, Error> {
        self.repo_with(host, repository, false)
    }

    /// The repository at one endpoint of a route (its own `insecure` flag included).
    pub(super) fn repo_at<'a>(&self, endpoint: &'a Endpoint) -> Result<Repo<'a>, Error> {
        self.repo_with(&endpoint.host, &endpoint.repository, endpoint.insecure)
    }

    fn repo_with<'a>(
        &self,
        host: &'a str,
        repository: &'a str,
        insecure: bool,
    ) -> Result<Repo<'a>, Error> {
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
        let plain = insecure
            || is_loopback(&api_host)
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


    pub(super) fn with_retries<T>(&self, mut op: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
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


    pub(super) fn send(
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


    /// Read a whole small body, refusing more than `limit` bytes.
    pub(super) fn read_limited(
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
}

pub(super) fn not_found(repo: &Repo<'_>, reference: &str) -> Error {
    Error::NotFound {
        host: repo.host.to_owned(),
        repository: repo.repository.to_owned(),
        reference: reference.to_owned(),
    }
}

pub(super) fn status_error(host: &str, what: &str, status: u16, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    Error::Status {
        host: host.to_owned(),
        what: what.to_owned(),
        status,
        body: text.trim().to_owned(),
    }
}

pub(super) fn check_status(repo: &Repo<'_>, what: &str, status: u16, body: &[u8]) -> Result<(), Error> {
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
    use crate::backend::oci::registry::ClientOptions;

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
        // An endpoint from registries.conf with `insecure = true` is reached over http.
        let endpoint = |insecure| Endpoint {
            host: "mirror.lan:5000".into(),
            repository: "a/b".into(),
            reference: "v1".into(),
            insecure,
            mirror: true,
        };
        assert_eq!(client.repo_at(&endpoint(true)).unwrap().base, "http://mirror.lan:5000");
        assert_eq!(client.repo_at(&endpoint(false)).unwrap().base, "https://mirror.lan:5000");
        assert!(client.repo("a/b", "x").is_err());
        assert!(client.repo("h", "Upper").is_err());
        assert!(client.repo("h", "a//b").is_err());
        assert!(client.repo("h", "../x").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
