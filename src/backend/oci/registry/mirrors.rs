//! Mirror, remapping, blocking and insecure rules from containers-registries.conf(5) version 2
//! (the file podman, skopeo and CRI-O read), and the list of endpoints a pull tries.
//!
//! Parsing and choosing only: the one file read is the configuration itself (once per client),
//! and nothing here talks to a registry. Rules, as those tools apply them:
//! - the `[[registry]]` table whose `prefix` is the longest match of the image name
//!   (`host/repository:tag` or `host/repository@digest`) applies; a prefix matches when the
//!   name starts with it and goes on with `/` (or `:`/`@` after a repository), or is equal.
//!   `*.example.com` matches any host below `example.com` (any port), and rewrites nothing;
//! - `location` replaces the matched prefix for the primary endpoint (default: the prefix);
//! - `[[registry.mirror]]` entries are tried in order, then the primary; a mirror's
//!   `pull-from-mirror` (`all`, `digest-only`, `tag-only`) or the table's
//!   `mirror-by-digest-only` decide whether it serves pulls by tag, by digest, or both;
//! - `blocked = true` refuses the pull; `insecure = true` reaches that endpoint over plain http.
//!
//! Version 1 files (`[registries.insecure]`, `[registries.block]`) are read as the equivalent
//! host-wide tables. The `*.conf` files of the drop-in directories (`registries.conf.d`) are
//! read after the main file, see [`dropin`].
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use self::dropin::{Sources, SYSTEM_DIR};
use super::Error;

/// Where a client's containers-registries.conf comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistriesConf {
    /// As podman looks: `$CONTAINERS_REGISTRIES_CONF`, else
    /// `$XDG_CONFIG_HOME/containers/registries.conf` (`~/.config/…` without it) when it exists,
    /// else `/etc/containers/registries.conf` when it exists, else no main file; then the
    /// drop-in directories that go with that choice (see `docs/design.md` §3b).
    #[default]
    Search,
    /// This file, which must exist, and no drop-in directory.
    File(PathBuf),
    /// No rules: every image comes from the registry its name names.
    None,
}

/// When a mirror serves pulls (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

/// How a `[[registry]]` prefix matches image names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prefix {
    /// `host[:port][/path][:tag|@digest]`, matched from the start.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: a host ending with it.
    Subdomain(String),
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(p) => f.write_str(p),
            Self::Subdomain(s) => write!(f, "*{s}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFrom,
}

#[derive(Debug, Clone)]
struct Rule {
    prefix: Prefix,
    /// `None` for a wildcard prefix: the name is used as it is.
    location: Option<String>,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<Mirror>,
    /// The file the table came from (for messages).
    file: PathBuf,
}

/// The parsed rules of one containers-registries.conf and its drop-ins.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    rules: Vec<Rule>,
}

/// One place to try for an image: a registry host, repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) repository: String,
    pub(crate) reference: String,
    /// Reach it over plain http (`insecure = true`), besides the client's own list.
    pub(crate) insecure: bool,
    /// A mirror (as opposed to the primary location).
    pub(crate) mirror: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = if self.mirror { "mirror" } else { "registry" };
        write!(f, "{role} {}/{}", self.host, self.repository)
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawFile {
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    registries: Option<RawV1>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    pull_from_mirror: Option<String>,
    #[serde(default)]
    mirror: Vec<RawMirror>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(serde::Deserialize)]
struct RawV1 {
    #[serde(default)]
    insecure: Option<RawV1List>,
    #[serde(default)]
    block: Option<RawV1List>,
}

#[derive(serde::Deserialize)]
struct RawV1List {
    #[serde(default)]
    registries: Vec<String>,
}

/// Top-level keys of the format that do not concern pulling by full name.
const OTHER_KEYS: &[&str] = &[
    "unqualified-search-registries",
    "short-name-mode",
    "aliases",
    "credential-helpers",
    "additional-layer-store-auth-helper",
];

impl Registries {
    /// Read the rules `conf` names, drop-ins included; no file (when searching) means no rules.
    pub fn load(conf: &RegistriesConf) -> Result<Self, Error> {
        let sources = Sources::of(conf, |k| std::env::var_os(k), Path::new(SYSTEM_DIR));
        Self::load_sources(&sources)
    }

    /// Parse the text of a containers-registries.conf read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        Self::parse_file(text, path, false)
    }

    /// [`Registries::parse`]; a `drop_in` must be version 2.
    fn parse_file(text: &str, path: &Path, drop_in: bool) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadRegistriesConf {
            path: path.to_owned(),
            reason,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for key in raw.other.keys().filter(|k| !OTHER_KEYS.contains(&k.as_str())) {
            tracing::warn!(file = %path.display(), key, "unknown key in registries.conf ignored");
        }
        let mut rules = Vec::new();
        if let Some(v1) = raw.registries {
            if drop_in {
                return Err(bad(
                    "a drop-in must be version 2: [registries.*] tables are version 1".to_owned(),
                ));
            }
            if !raw.registry.is_empty() {
                return Err(bad(
                    "mixes the version 1 [registries.*] tables with version 2 [[registry]] tables"
                        .to_owned(),
                ));
            }
            let hosts = |l: Option<RawV1List>| l.map(|l| l.registries).unwrap_or_default();
            for (host, blocked) in hosts(v1.block)
                .into_iter()
                .map(|h| (h, true))
                .chain(hosts(v1.insecure).into_iter().map(|h| (h, false)))
            {
                let host = location(&host).map_err(|r| bad(format!("registry {host:?}: {r}")))?;
                if let Some(rule) = rules.iter_mut().find(|r: &&mut Rule| {
                    r.prefix == Prefix::Exact(host.clone())
                }) {
                    rule.blocked |= blocked;
                    rule.insecure |= !blocked;
                    continue;
                }
                rules.push(Rule {
                    prefix: Prefix::Exact(host.clone()),
                    location: Some(host),
                    insecure: !blocked,
                    blocked,
                    mirror_by_digest_only: false,
                    mirrors: Vec::new(),
                    file: path.to_owned(),
                });
            }
        }
        for (i, r) in raw.registry.into_iter().enumerate() {
            let rule = Self::rule(r, path)
                .map_err(|reason| bad(format!("[[registry]] #{}: {reason}", i + 1)))?;
            if let Some(other) = rules.iter().find(|o| o.prefix == rule.prefix) {
                return Err(bad(format!(
                    "prefix {} is defined more than once",
                    other.prefix
                )));
            }
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    fn rule(r: RawRegistry, file: &Path) -> Result<Rule, String> {
        for key in r.other.keys() {
            tracing::warn!(key, "unknown key in a [[registry]] table ignored");
        }
        if r.pull_from_mirror.is_some() {
            return Err("pull-from-mirror belongs in [[registry.mirror]] tables".to_owned());
        }
        let location = r.location.as_deref().map(location).transpose()?;
        let prefix = match (r.prefix.as_deref(), &location) {
            (Some(p), _) => match p.trim().strip_prefix("*.") {
                Some(domain) => {
                    if domain.is_empty() || domain.contains(['/', ':', '@', '*']) {
                        return Err(format!(
                            "prefix {p:?}: a wildcard prefix is *.domain and nothing more"
                        ));
                    }
                    if location.is_some() {
                        return Err(format!(
                            "prefix {p:?}: a wildcard prefix takes no location"
                        ));
                    }
                    Prefix::Subdomain(format!(".{domain}"))
                }
                None => Prefix::Exact(self::location(p)?),
            },
            (None, Some(l)) => Prefix::Exact(l.clone()),
            (None, None) => return Err("has neither prefix nor location".to_owned()),
        };
        // The documented default: the location is the prefix.
        let location = match (&prefix, location) {
            (Prefix::Exact(p), None) => Some(p.clone()),
            (_, l) => l,
        };
        let mut mirrors = Vec::with_capacity(r.mirror.len());
        for m in r.mirror {
            for key in m.other.keys() {
                tracing::warn!(key, "unknown key in a [[registry.mirror]] table ignored");
            }
            let Some(loc) = m.location.as_deref() else {
                return Err("a [[registry.mirror]] has no location".to_owned());
            };
            let loc = self::location(loc)?;
            let pull_from = match m.pull_from_mirror.as_deref() {
                None | Some("" | "all") => PullFrom::All,
                Some(_) if r.mirror_by_digest_only => {
                    return Err(format!(
                        "mirror {loc:?}: pull-from-mirror cannot be set together with the \
                         table's mirror-by-digest-only"
                    ))
                }
                Some("digest-only") => PullFrom::DigestOnly,
                Some("tag-only") => PullFrom::TagOnly,
                Some(other) => {
                    return Err(format!(
                        "mirror {loc:?}: pull-from-mirror {other:?} is not all, digest-only or \
                         tag-only"
                    ))
                }
            };
            mirrors.push(Mirror {
                location: loc,
                insecure: m.insecure,
                pull_from,
            });
        }
        Ok(Rule {
            prefix,
            location,
            insecure: r.insecure,
            blocked: r.blocked,
            mirror_by_digest_only: r.mirror_by_digest_only,
            mirrors,
            file: file.to_owned(),
        })
    }

    /// The endpoints to try, in order, for `reference` (a tag, or a digest with `:`) of
    /// `repository` on `host`: the mirrors that serve this kind of pull, then the primary.
    /// A blocked name is an error.
    pub(crate) fn endpoints(
        &self,
        host: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Vec<Endpoint>, Error> {
        let by_digest = reference.contains(':');
        let sep = if by_digest { '@' } else { ':' };
        let name = format!("{host}/{repository}{sep}{reference}");
        let primary = Endpoint {
            host: host.to_owned(),
            repository: repository.to_owned(),
            reference: reference.to_owned(),
            insecure: false,
            mirror: false,
        };
        // The longest prefix (as written, `*.` included) wins; the first of equals.
        let mut best: Option<(&Rule, usize)> = None;
        for rule in &self.rules {
            if let Some(matched) = rule.prefix.matches(&name, host.len()) {
                if best.is_none_or(|(b, _)| rule.prefix.len() > b.prefix.len()) {
                    best = Some((rule, matched));
                }
            }
        }
        let Some((rule, matched)) = best else {
            return Ok(vec![primary]);
        };
        if rule.blocked {
            return Err(Error::Blocked {
                image: name,
                prefix: rule.prefix.to_string(),
                path: rule.file.clone(),
            });
        }
        let rest = &name[matched..];
        let rewrite = |location: &str, insecure: bool, mirror: bool| {
            let full = format!("{location}{rest}");
            split_name(&full)
                .map(|(host, repository, reference)| Endpoint {
                    host: host.to_owned(),
                    repository: repository.to_owned(),
                    reference: reference.to_owned(),
                    insecure,
                    mirror,
                })
                .ok_or_else(|| Error::BadRegistriesConf {
                    path: rule.file.clone(),
                    reason: format!(
                        "prefix {} rewrites {name} to {full:?}, which is not host/repository \
                         with a tag or digest",
                        rule.prefix
                    ),
                })
        };
        let mut out = Vec::with_capacity(rule.mirrors.len() + 1);
        for m in &rule.mirrors {
            let serves = match m.pull_from {
                _ if rule.mirror_by_digest_only => by_digest,
                PullFrom::All => true,
                PullFrom::DigestOnly => by_digest,
                PullFrom::TagOnly => !by_digest,
            };
            if serves {
                out.push(rewrite(&m.location, m.insecure, true)?);
            }
        }
        out.push(match &rule.location {
            Some(l) => rewrite(l, rule.insecure, false)?,
            None => Endpoint {
                insecure: rule.insecure,
                ..primary
            },
        });
        Ok(out)
    }
}

impl Prefix {
    /// The length of the prefix as written in the file.
    fn len(&self) -> usize {
        match self {
            Self::Exact(p) => p.len(),
            Self::Subdomain(s) => s.len() + 1,
        }
    }

    /// How many bytes of `name` (`host/repository` then `:tag` or `@digest`; the host is its
    /// first `host_len` bytes) this prefix matches, if it matches.
    fn matches(&self, name: &str, host_len: usize) -> Option<usize> {
        match self {
            Self::Exact(p) => {
                let rest = name.strip_prefix(p.as_str())?;
                // A host-only prefix must not match another port of the same host.
                let seps: &[char] = if p.contains('/') { &['/', ':', '@'] } else { &['/'] };
                (rest.is_empty() || rest.starts_with(seps)).then_some(p.len())
            }
            Self::Subdomain(suffix) => {
                let bare = host_without_port(&name[..host_len]);
                (bare.len() > suffix.len() && bare.ends_with(suffix.as_str())).then_some(host_len)
            }
        }
    }
}

/// A `location` or `prefix` value: trimmed, no scheme, no trailing `/`.
fn location(value: &str) -> Result<String, String> {
    let v = value.trim().trim_end_matches('/');
    if v.is_empty() {
        return Err(format!("location {value:?} is empty"));
    }
    if v.contains("://") {
        return Err(format!(
            "location {value:?} has a URL scheme; write host[:port][/path]"
        ));
    }
    if v.contains(char::is_whitespace) {
        return Err(format!("location {value:?} contains white space"));
    }
    Ok(v.to_owned())
}

/// `host/repository:tag` or `host/repository@digest` into its three parts.
fn split_name(full: &str) -> Option<(&str, &str, &str)> {
    let (host, rest) = full.split_once('/')?;
    let (repository, reference) = match rest.split_once('@') {
        Some(parts) => parts,
        None => rest.rsplit_once(':')?,
    };
    (!host.is_empty() && !repository.is_empty() && !reference.is_empty()
        && !repository.contains(':'))
    .then_some((host, repository, reference))
}

mod dropin;
/// `host` without its `:port` (an IPv6 literal keeps its brackets).
pub(super) fn host_without_port(host: &str) -> &str {
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

#[cfg(test)]
mod tests;
