//! OCI image references (DESIGN.md §7): value type and hand-written parser; no I/O.
//!
//! The grammar is the distribution project's: `name [":" tag] ["@" digest]`, where the name is an
//! optional domain (host name, IPv4, `[IPv6]`, optional `:port`) followed by lowercase path
//! components. A [`Reference`] is always normalized (`docker.io`, `library/`) and keeps its
//! normalized text in one `String` with offsets for the parts.
//!
//! This module does no I/O and knows nothing of the store: it must not touch files, the index or
//! the network. Parsing is total: any input, multi-byte characters included, yields a value or an
//! [`Error`], never a panic.
//!
//! ```
//! use imgstore::reference::Reference;
//!
//! let r = Reference::parse("ubuntu:22.04").unwrap();
//! assert_eq!(r.domain(), "docker.io");
//! assert_eq!(r.path(), "library/ubuntu");
//! assert_eq!(r.tag(), Some("22.04"));
//! assert_eq!(r.to_string(), "docker.io/library/ubuntu:22.04");
//! assert_eq!(r.familiar(), "ubuntu:22.04");
//! assert_eq!(Reference::parse("localhost:5000/app").unwrap().canonical(), "localhost:5000/app:latest");
//! ```

use std::fmt;
use std::str::FromStr;

use crate::digest::{self, Digest};

/// The registry used when a reference names none.
const DEFAULT_DOMAIN: &str = "docker.io";
/// The legacy name of the default registry, rewritten to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Namespace of one-component names on the default registry.
const OFFICIAL_PREFIX: &str = "library/";
/// Longest path (after normalization), domain excluded.
pub const MAX_PATH_LEN: usize = 255;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 128;

/// Why a reference was rejected. Messages never repeat the input; the caller names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was empty.
    #[error("empty reference")]
    Empty,
    /// Text that fits nowhere in the grammar.
    #[error("invalid reference format")]
    InvalidFormat,
    /// Uppercase letters in the repository path.
    #[error("repository name must be lowercase")]
    Uppercase,
    /// A path component breaks `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
    #[error(
        "invalid repository path: components are lowercase letters and digits separated by \
         '.', '_', '__' or '-'"
    )]
    InvalidPath,
    /// The normalized path is longer than [`MAX_PATH_LEN`].
    #[error("repository name longer than 255 characters ({len})")]
    NameTooLong {
        /// Length of the normalized path.
        len: usize,
    },
    /// A bare 64-hex string, which would be confused with an image ID.
    #[error("invalid repository name: cannot specify 64-byte hexadecimal strings")]
    HexName,
    /// A malformed domain (host name, `[IPv6]` or port).
    #[error("invalid domain: expected host name, IPv4 or [IPv6] address, optionally with :port")]
    InvalidDomain,
    /// `name:` with nothing after the colon.
    #[error("empty tag")]
    EmptyTag,
    /// The tag is longer than [`MAX_TAG_LEN`].
    #[error("tag longer than 128 characters ({len})")]
    TagTooLong {
        /// Length of the tag.
        len: usize,
    },
    /// The tag breaks `[A-Za-z0-9_][A-Za-z0-9_.-]*`.
    #[error(
        "invalid tag: must start with a letter, digit or '_' and contain only letters, digits, \
         '_', '.' and '-'"
    )]
    InvalidTag,
    /// The part after `@` is not a supported digest.
    #[error(transparent)]
    Digest(#[from] digest::Error),
}

/// A parsed, normalized image reference (`domain/path[:tag][@digest]`).
///
/// Cheap to read: one `String` holds the normalized text; accessors slice it.
///
/// ```
/// use imgstore::Reference;
///
/// let r: Reference = "127.0.0.1:5000/team/app:v1".parse()?;
/// assert_eq!(r.domain(), "127.0.0.1:5000");
/// assert_eq!(r.path(), "team/app");
/// assert_eq!(r.tag(), Some("v1"));
/// // Familiar names are expanded the way docker does.
/// assert_eq!(Reference::parse("nginx")?.canonical(), "docker.io/library/nginx:latest");
/// assert!(Reference::parse("Upper/Case").is_err());
/// # Ok::<(), imgstore::reference::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Normalized text: `domain/path[:tag][@digest]`.
    text: String,
    /// Length of the domain; the path starts after the `/` that follows it.
    domain_end: usize,
    /// End of the path (= end of the name).
    path_end: usize,
    /// End of the tag; equal to `path_end` when there is no tag.
    tag_end: usize,
    digest: Option<Digest>,
}

impl Reference {
    /// Parse and normalize a reference (`ubuntu` → `docker.io/library/ubuntu`).
    pub fn parse(s: &str) -> Result<Self, Error> {
        parse(s)
    }

    /// The registry domain, e.g. `docker.io` or `localhost:5000`.
    #[must_use]
    pub fn domain(&self) -> &str {
        &self.text[..self.domain_end]
    }

    /// The repository path, e.g. `library/ubuntu`.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.text[self.domain_end + 1..self.path_end]
    }

    /// The tag, if one was given.
    #[must_use]
    pub fn tag(&self) -> Option<&str> {
        (self.tag_end > self.path_end).then(|| &self.text[self.path_end + 1..self.tag_end])
    }

    /// The digest, if one was given.
    #[must_use]
    pub fn digest(&self) -> Option<Digest> {
        self.digest
    }

    /// `domain/path`.
    #[must_use]
    pub fn name(&self) -> String {
        self.name_str().to_owned()
    }

    /// `domain/path[:tag][@digest]`, the same text as `Display`.
    #[must_use]
    pub fn normalized(&self) -> String {
        self.text.clone()
    }

    /// The normalized form as a borrowed string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The normalized form, plus `:latest` when there is neither tag nor digest.
    #[must_use]
    pub fn canonical(&self) -> String {
        if self.tag_end == self.path_end && self.digest.is_none() {
            let mut s = String::with_capacity(self.text.len() + 7);
            s.push_str(&self.text);
            s.push_str(":latest");
            s
        } else {
            self.text.clone()
        }
    }

    /// The short form people type: without `docker.io/`, and without `library/` when exactly one
    /// component follows it.
    ///
    /// Unlike the distribution project, parts are kept where dropping them would make the result
    /// parse to a different reference: `docker.io/` stays before a first component that would be
    /// read as a domain (`docker.io/foo.bar/baz`), and `library/` stays before a 64-hex name.
    /// So `Reference::parse(&r.familiar())` always gives back `r`.
    #[must_use]
    pub fn familiar(&self) -> String {
        let rest = &self.text[self.path_end..];
        if self.domain() != DEFAULT_DOMAIN {
            return self.text.clone();
        }
        let path = self.path();
        let short = match path.strip_prefix(OFFICIAL_PREFIX) {
            Some(one) if !one.contains('/') && !digest::is_hex64(one) => one,
            _ => path,
        };
        let keep_domain = short
            .split_once('/')
            .is_some_and(|(first, _)| looks_like_domain(first.as_bytes()));
        let mut s = String::with_capacity(self.text.len());
        if keep_domain {
            s.push_str(DEFAULT_DOMAIN);
            s.push('/');
        }
        s.push_str(short);
        s.push_str(rest);
        s
    }

    fn name_str(&self) -> &str {
        &self.text[..self.path_end]
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({})", self.text)
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        parse(s)
    }
}

impl AsRef<str> for Reference {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// The distribution project's test for "the first component names a registry".
fn looks_like_domain(first: &[u8]) -> bool {
    first == b"localhost"
        || first
            .iter()
            .any(|&c| c == b'.' || c == b':' || c.is_ascii_uppercase())
}

fn parse(s: &str) -> Result<Reference, Error> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(Error::Empty);
    }
    // One pass finds every split point. Each is at an ASCII byte, so every slice below lands on a
    // char boundary whatever the input holds.
    let mut at = b.len();
    let mut first_slash = None;
    let mut last_colon = None;
    let mut colon_is_last_separator = false;
    let mut first_looks_like_domain = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'@' => {
                at = i;
                break;
            }
            b'/' => {
                first_slash.get_or_insert(i);
                colon_is_last_separator = false;
            }
            b':' => {
                last_colon = Some(i);
                colon_is_last_separator = true;
                first_looks_like_domain |= first_slash.is_none();
            }
            b'.' | b'A'..=b'Z' => first_looks_like_domain |= first_slash.is_none(),
            _ => {}
        }
    }
    let (before_digest, digest_text) = (&s[..at], s.get(at + 1..));
    let digest = match digest_text {
        None => None,
        // A bare hex digest means sha256 elsewhere, but the reference grammar needs `algo:`.
        Some(d) if !d.is_empty() && memchr(b':', d.as_bytes()).is_none() => {
            return Err(digest::Error::MissingAlgorithm(d.chars().take(160).collect()).into())
        }
        Some(d) => Some(Digest::parse(d)?),
    };

    // The tag colon is the last one not followed by a `/` (a port's colon always is).
    let (name, tag) = match last_colon {
        Some(i) if colon_is_last_separator => (&before_digest[..i], Some(&before_digest[i + 1..])),
        _ => (before_digest, None),
    };
    if let Some(t) = tag {
        check_tag(t.as_bytes())?;
    }
    if name.is_empty() {
        return Err(if tag.is_some() || digest.is_some() {
            Error::InvalidFormat
        } else {
            Error::Empty
        });
    }

    // A tag colon has no `/` after it, so the first slash, if any, is inside the name.
    let (domain, path) = match first_slash {
        Some(i) if first_looks_like_domain || &name[..i] == "localhost" => {
            (&name[..i], &name[i + 1..])
        }
        _ => ("", name),
    };
    if !domain.is_empty() {
        check_domain(domain.as_bytes())?;
    }
    check_path(path.as_bytes())?;
    let domain = if domain.is_empty() || domain == LEGACY_DEFAULT_DOMAIN {
        if domain.is_empty() && tag.is_none() && digest.is_none() && digest::is_hex64(path) {
            return Err(Error::HexName);
        }
        DEFAULT_DOMAIN
    } else {
        domain
    };
    let official = domain == DEFAULT_DOMAIN && memchr(b'/', path.as_bytes()).is_none();
    let path_len = path.len() + if official { OFFICIAL_PREFIX.len() } else { 0 };
    if path_len > MAX_PATH_LEN {
        return Err(Error::NameTooLong { len: path_len });
    }

    let tag_len = tag.map_or(0, |t| t.len() + 1);
    let digest_len = digest_text.map_or(0, |d| d.len() + 1);
    let mut text = String::with_capacity(domain.len() + 1 + path_len + tag_len + digest_len);
    text.push_str(domain);
    text.push('/');
    if official {
        text.push_str(OFFICIAL_PREFIX);
    }
    text.push_str(path);
    let path_end = text.len();
    if let Some(t) = tag {
        text.push(':');
        text.push_str(t);
    }
    let tag_end = text.len();
    if let Some(d) = digest_text {
        // Digest::parse is strict, so the accepted text is already the canonical form.
        text.push('@');
        text.push_str(d);
    }
    Ok(Reference {
        text,
        domain_end: domain.len(),
        path_end,
        tag_end,
        digest,
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(t: &[u8]) -> Result<(), Error> {
    let Some((&first, rest)) = t.split_first() else {
        return Err(Error::EmptyTag);
    };
    if !(first.is_ascii_alphanumeric() || first == b'_')
        || !rest
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(Error::InvalidTag);
    }
    if t.len() > MAX_TAG_LEN {
        return Err(Error::TagTooLong { len: t.len() });
    }
    Ok(())
}

/// Path components `[a-z0-9]+ (sep [a-z0-9]+)*` joined by `/`, where
/// sep is `.`, `_`, `__` or one or more `-`.
fn check_path(p: &[u8]) -> Result<(), Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum At {
        /// Start of a component: an alphanumeric must come next.
        Start,
        /// Just after an alphanumeric.
        Alnum,
        /// After `.` or `__`: an alphanumeric must come next.
        Closed,
        /// After one `_`: a second `_` or an alphanumeric.
        Underscore,
        /// After `-`: more `-` or an alphanumeric.
        Dash,
    }
    let mut at = At::Start;
    let mut upper = false;
    for &c in p {
        at = match (c, at) {
            (b'a'..=b'z' | b'0'..=b'9', _) => At::Alnum,
            (b'A'..=b'Z', _) => {
                // Keep scanning as if lowercase, so a name that is wrong only in case says so.
                upper = true;
                At::Alnum
            }
            (b'/', At::Alnum) => At::Start,
            (b'.', At::Alnum) | (b'_', At::Underscore) => At::Closed,
            (b'_', At::Alnum) => At::Underscore,
            (b'-', At::Alnum | At::Dash) => At::Dash,
            _ => return Err(invalid_path_char(c)),
        };
    }
    if at != At::Alnum {
        return Err(Error::InvalidPath);
    }
    if upper {
        return Err(Error::Uppercase);
    }
    Ok(())
}

fn invalid_path_char(c: u8) -> Error {
    if matches!(c, b'/' | b'.' | b'_' | b'-') {
        Error::InvalidPath
    } else {
        Error::InvalidFormat
    }
}

/// `host [":" port]` where host is a domain name (which covers IPv4) or `[IPv6]`.
fn check_domain(d: &[u8]) -> Result<(), Error> {
    let port = if let Some(after_open) = d.strip_prefix(b"[") {
        let close = memchr(b']', after_open).ok_or(Error::InvalidDomain)?;
        if !is_ipv6(&after_open[..close]) {
            return Err(Error::InvalidDomain);
        }
        match &after_open[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(Error::InvalidDomain),
        }
    } else {
        let (host, port) = match memchr(b':', d) {
            Some(i) => (&d[..i], Some(&d[i + 1..])),
            None => (d, None),
        };
        if !host.split(|&c| c == b'.').all(is_domain_component) {
            return Err(Error::InvalidDomain);
        }
        port
    };
    match port {
        Some(p) if p.is_empty() || !p.iter().all(u8::is_ascii_digit) => Err(Error::InvalidDomain),
        _ => Ok(()),
    }
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain_component(c: &[u8]) -> bool {
    c.first().is_some_and(u8::is_ascii_alphanumeric)
        && c.last().is_some_and(u8::is_ascii_alphanumeric)
        && c.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A real IPv6 address (no zone, no embedded IPv4), as written between brackets.
fn is_ipv6(inner: &[u8]) -> bool {
    inner.iter().all(|&c| c.is_ascii_hexdigit() || c == b':')
        && std::str::from_utf8(inner)
            .ok()
            .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok())
            .is_some()
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == needle)
}

/// The property the reference fuzz target and its seed-corpus test check: parsing never panics;
/// whatever parses prints to text that parses back to the same value; the canonical and familiar
/// forms parse back consistently.
#[doc(hidden)]
pub fn fuzz_check(s: &str) {
    let Ok(r) = Reference::parse(s) else { return };
    let text = r.to_string();
    assert_eq!(
        Reference::parse(&text).as_ref(),
        Ok(&r),
        "round trip of {s:?}"
    );
    let canonical = r.canonical();
    let again = Reference::parse(&canonical).map(|c| c.canonical());
    assert_eq!(
        again.as_deref(),
        Ok(canonical.as_str()),
        "canonical of {s:?}"
    );
    assert_eq!(
        Reference::parse(&r.familiar()).as_ref(),
        Ok(&r),
        "familiar of {s:?}"
    );
    assert!(r.path().len() <= MAX_PATH_LEN);
    assert_eq!(r.name(), format!("{}/{}", r.domain(), r.path()));
}
