//! Streaming GET of an http(s) URL with a size cap, timeouts and length checks.

use std::fmt;
use std::io::{self, Read};

use ureq::http::Uri;
use ureq::ResponseExt;

use super::{Error, Limits, MAX_REDIRECTS};

/// Most connections one download opens (the client keeps as many idle for reuse).
pub const MAX_CONNECTIONS: usize = 16;

/// An open download: the body of a 200 response, read through the cap and length checks.
///
/// `Read` fails with an `io::Error` that carries an [`Error`] ([`Error::TooLarge`],
/// [`Error::Truncated`], [`Error::Http`]); recover it with [`Error::from_io`]. After an error
/// every further read fails.
pub struct Download {
    url: String,
    final_url: String,
    reader: ureq::BodyReader<'static>,
    content_length: Option<u64>,
    limit: u64,
    received: u64,
    failed: bool,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("url", &self.url)
            .field("final_url", &self.final_url)
            .field("content_length", &self.content_length)
            .field("limit", &self.limit)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// The URL that was asked for.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL the body actually comes from, after redirects.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn final_url(&self) -> &str {
        &self.final_url
    }

    /// The announced body length, when the server sent a Content-Length.
    #[must_use]
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Bytes delivered so far.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Copy the whole body into `sink`; returns the byte count.
    #[cfg(feature = "unstable")]
    pub fn copy_to(&mut self, sink: &mut impl std::io::Write) -> Result<u64, Error> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match self.read(&mut buf) {
                Ok(0) => return Ok(self.received),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from_io(e, &self.url)),
            };
            sink.write_all(&buf[..n]).map_err(|source| Error::Sink {
                url: self.url.clone(),
                source,
            })?;
        }
    }

    fn fail(&mut self, e: Error) -> io::Error {
        self.failed = true;
        io::Error::other(e)
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(Error::Http {
                url: self.url.clone(),
                cause: "read after a failed read".to_owned(),
                transient: false,
            }));
        }
        match self.reader.read(buf) {
            Ok(0) => match self.content_length {
                Some(expected) if self.received < expected => {
                    let e = Error::Truncated {
                        url: self.url.clone(),
                        expected,
                        got: self.received,
                    };
                    Err(self.fail(e))
                }
                _ => Ok(0),
            },
            Ok(n) => {
                self.received += n as u64;
                if self.received > self.limit {
                    let e = Error::TooLarge {
                        url: self.url.clone(),
                        limit: self.limit,
                        content_length: self.content_length,
                    };
                    return Err(self.fail(e));
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let dropped = matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                );
                let err = match self.content_length {
                    Some(expected) if dropped && self.received < expected => Error::Truncated {
                        url: self.url.clone(),
                        expected,
                        got: self.received,
                    },
                    _ => Error::Http {
                        url: self.url.clone(),
                        cause: format!(
                            "reading the body after {}: {}",
                            crate::human::bytes(self.received),
                            describe_io(&e)
                        ),
                        transient: io_is_transient(&e),
                    },
                };
                Err(self.fail(err))
            }
        }
    }
}

fn check_url(url: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(bad("scheme must be http or https")),
        None => return Err(bad("no scheme (expected http:// or https://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(())
}

fn agent(limits: &Limits, https: bool) -> ureq::Agent {
    ureq::Agent::config_builder()
        // Statuses are checked here so the error can name the URL and the reason phrase.
        .http_status_as_error(false)
        .max_redirects(MAX_REDIRECTS)
        // A ranged download keeps one connection per worker alive between its ranges.
        .max_idle_connections_per_host(MAX_CONNECTIONS)
        // Bodies are copied out of this buffer: 1 MiB (default 128 KiB) means 8x fewer
        // receive calls and passes through the body reader per GiB.
        .input_buffer_size(1 << 20)
        // A download that starts over TLS never continues in clear text through a redirect.
        .https_only(https)
        .timeout_resolve(Some(limits.connect_timeout))
        .timeout_connect(Some(limits.connect_timeout))
        .timeout_per_read(Some(limits.read_timeout))
        .timeout_per_write(Some(limits.read_timeout))
        // The stored bytes must be the served bytes: never ask for a transfer encoding that
        // ureq would silently decode.
        .accept_encoding(ureq::config::AutoHeaderValue::None)
        .user_agent(concat!("imgstore/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// An agent for one download: the redirect, TLS, timeout and encoding policy of this module,
/// shared by every request of a ranged download (so connections are kept alive and reused).
#[derive(Clone)]
pub(super) struct Client {
    agent: ureq::Agent,
    limits: Limits,
    https: bool,
    /// Sent with every request (a registry's `Authorization`; never across a redirect: ureq
    /// drops it there, so presigned storage URLs do not see it).
    headers: Vec<(String, String)>,
}

impl Client {
    /// A client for `url`, which must be an http(s) URL.
    pub(super) fn new(url: &str, limits: &Limits) -> Result<Client, Error> {
        check_url(url)?;
        let https = url
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        Ok(Client {
            agent: agent(limits, https),
            limits: limits.clone(),
            https,
            headers: Vec::new(),
        })
    }

    /// This client, sending `headers` with every request.
    pub(super) fn with_headers(mut self, headers: &[(&str, &str)]) -> Client {
        self.headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        self
    }

    /// The limits this client enforces.
    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// GET `url` with extra request headers. Redirects are followed; any status comes back as a
    /// response; an unrequested `Content-Encoding` is refused (the stored bytes must be the
    /// served bytes).
    pub(super) fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let mut req = self.agent.get(url);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let response = req.call().map_err(|e| Error::Http {
            url: url.to_owned(),
            cause: describe(&e, &self.limits, self.https),
            transient: is_transient(&e),
        })?;
        if let Some(enc) = response.headers().get("content-encoding") {
            let enc = enc.to_str().unwrap_or("(not text)");
            if !enc.eq_ignore_ascii_case("identity") {
                return Err(Error::Http {
                    url: url.to_owned(),
                    cause: format!("unrequested Content-Encoding {enc:?}"),
                    transient: false,
                });
            }
        }
        Ok(response)
    }
}

/// The error for a final status the caller did not expect.
pub(super) fn status_error(url: &str, status: ureq::http::StatusCode) -> Error {
    Error::Status {
        url: url.to_owned(),
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_owned(),
    }
}

/// Wrap the body of a 200 (or a 206 covering the whole file) as a capped, length-checked stream.
/// A Content-Length over [`Limits::max_download`] is refused before any body byte is read.
pub(super) fn stream(
    url: &str,
    response: ureq::http::Response<ureq::Body>,
    limits: &Limits,
) -> Result<Download, Error> {
    let final_url = response.get_uri().to_string();
    let body = response.into_body();
    let content_length = body.content_length();
    if let Some(len) = content_length {
        if len > limits.max_download {
            return Err(Error::TooLarge {
                url: url.to_owned(),
                limit: limits.max_download,
                content_length,
            });
        }
    }
    Ok(Download {
        url: url.to_owned(),
        final_url,
        reader: body.into_reader(),
        content_length,
        limit: limits.max_download,
        received: 0,
        failed: false,
    })
}

/// Start a GET of `url` (http or https): redirects are followed (at most [`MAX_REDIRECTS`]), the
/// final status must be 200, and a Content-Length over [`Limits::max_download`] is refused
/// before any body byte is read. The returned reader enforces the cap and the announced length.
#[cfg(feature = "unstable")]
pub fn open(url: &str, limits: &Limits) -> Result<Download, Error> {
    let client = Client::new(url, limits)?;
    let response = client.get(url, &[])?;
    let status = response.status();
    if status != ureq::http::StatusCode::OK {
        return Err(status_error(url, status));
    }
    stream(url, response, limits)
}

/// [`open`] `url` and copy its whole body into `sink`; returns the byte count.
#[cfg(feature = "unstable")]
pub fn download(url: &str, limits: &Limits, sink: &mut impl std::io::Write) -> Result<u64, Error> {
    open(url, limits)?.copy_to(sink)
}

fn describe(e: &ureq::Error, limits: &Limits, https: bool) -> String {
    use ureq::Timeout;
    match e {
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => {
            format!("timed out connecting (limit {:?})", limits.connect_timeout)
        }
        ureq::Error::Timeout(Timeout::PerRead) => {
            format!("timed out: no data for {:?}", limits.read_timeout)
        }
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        // rustls errors reach us as bare `InvalidData` I/O errors whose text alone ("received
        // corrupt message of type InvalidContentType") does not say TLS; on an https request,
        // before any response, that is what they are (typically: the server speaks plain http).
        ureq::Error::Io(io) if https && io.kind() == io::ErrorKind::InvalidData => {
            format!("TLS error: {}", describe_io(io))
        }
        ureq::Error::Io(io) => describe_io(io),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::Rustls(e) => format!("TLS error: {e}"),
        ureq::Error::Tls(e) => format!("TLS error: {e}"),
        ureq::Error::TooManyRedirects => format!("more than {MAX_REDIRECTS} redirects"),
        other => other.to_string(),
    }
}

fn is_transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
        ureq::Error::Io(io) => io_is_transient(io),
        _ => false,
    }
}

/// Whether an I/O error from a transfer is worth retrying.
pub(super) fn io_is_transient(e: &io::Error) -> bool {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        return is_transient(inner);
    }
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
    )
}

fn describe_io(e: &io::Error) -> String {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        return match inner {
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            ureq::Error::Rustls(e) => format!("TLS error: {e}"),
            ureq::Error::Tls(e) => format!("TLS error: {e}"),
            other => other.to_string(),
        };
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
        io::ErrorKind::UnexpectedEof => "connection closed early".to_owned(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!("timed out ({e})"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Download>();
    }
}
