//! Registry authentication: `WWW-Authenticate` challenges, base64, credentials from the auth files,
//! and the authenticated GET every request goes through (anonymous first; on a 401, a bearer
//! token from the realm or basic credentials, as the challenge asks). Tokens are cached in the
//! client per registry and repository.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use super::authfile;
use super::credentials::Credentials;
use super::transport::{status_error, Repo};
use super::{Client, Error};


/// What a registry asked for in a 401's `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Token auth: GET `realm?service=…&scope=…`, then send `Bearer <token>`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// Send the credentials themselves.
    Basic,
}

/// Parse the first challenge we understand from a `WWW-Authenticate` value.
///
/// Parameters are `key=value` or `key="quoted, value"` separated by commas (RFC 7235); scopes
/// contain commas and colons, so quoting must be honoured.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], header[i..].trim_start()),
        None => (header, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service, mut scope) = (None, None, None);
    for (key, value) in auth_params(rest) {
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

fn auth_params(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some(eq) = s.find('=') else { break };
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start();
        let value = if let Some(quoted) = s.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => value.push(c),
                }
            }
            s = &quoted[end..];
            value
        } else {
            let end = s.find(',').unwrap_or(s.len());
            let value = s[..end].trim().to_owned();
            s = &s[end..];
            value
        };
        out.push((key, value));
    }
    out
}

/// `application/x-www-form-urlencoded` for one value: unreserved bytes kept, the rest `%XX`.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let hex = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(hex[usize::from(b >> 4)]));
            out.push(char::from(hex[usize::from(b & 15)]));
        }
    }
    out
}

/// A token server's answer (Docker uses `token`, `OAuth2` servers `access_token`).
#[derive(serde::Deserialize)]
pub(super) struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// A 401 the client could not answer, for `repo`.
fn unauthorized(repo: &Repo<'_>, detail: String) -> Error {
    Error::Unauthorized {
        host: repo.host.to_owned(),
        repository: repo.repository.to_owned(),
        detail,
    }
}

impl Client {

    pub(super) fn credentials_for(&self, repo: &Repo<'_>) -> Result<Option<Credentials>, Error> {
        if let Some(c) = &self.credentials {
            return Ok(Some(c.clone()));
        }
        // A credential helper may prompt or be slow: ask once per repository and client.
        let key = (repo.host.to_owned(), repo.repository.to_owned());
        if let Some(known) = self.host_credentials.lock().get(&key) {
            return Ok(known.clone());
        }
        let found = authfile::credentials(&self.auth_files, repo.host, repo.repository)?;
        self.host_credentials.lock().insert(key, found.clone());
        Ok(found)
    }


    /// The `Authorization` value that answers a 401's challenge: Basic from the configured
    /// credentials, or a Bearer token for `scope` (the challenge's own scope, else pull, when
    /// `scope` is `None`). `none_configured` is the error detail when credentials are needed and
    /// there are none. Shared by pulls (GET) and pushes (HEAD/POST/PUT/PATCH).
    pub(super) fn answer_challenge(
        &self,
        repo: &Repo<'_>,
        response: &ureq::http::Response<ureq::Body>,
        scope: Option<String>,
        credentials: Option<&Credentials>,
        none_configured: &str,
    ) -> Result<String, Error> {
        let challenge = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge);
        match challenge {
            None => Err(unauthorized(
                repo,
                "HTTP 401 without a Basic or Bearer challenge".to_owned(),
            )),
            Some(Challenge::Basic) => match credentials {
                Some(c) if c.is_identity_token() => Err(unauthorized(
                    repo,
                    "the registry asks for Basic credentials and only an identity token is \
                     configured"
                        .to_owned(),
                )),
                Some(c) => Ok(c.basic_header()),
                None => Err(unauthorized(repo, none_configured.to_owned())),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                let scope = scope
                    .or(asked)
                    .unwrap_or_else(|| format!("repository:{}:pull", repo.repository));
                let token = self.with_retries(|| {
                    self.token(repo, &realm, service.as_deref(), &scope, credentials)
                })?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// One GET with whatever auth the registry asks for; 401 handling included, no retries.
    pub(super) fn get_authed(
        &self,
        repo: &Repo<'_>,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        self.pull_authed(repo, url, accept, what, false)
    }

    /// [`Client::get_authed`] as a HEAD: the same auth, answered and cached the same way.
    pub(super) fn head_authed(
        &self,
        repo: &Repo<'_>,
        url: &str,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        self.pull_authed(repo, url, None, what, true)
    }

    /// The `Authorization` a GET or HEAD of `repo` carries now (the one its last 401 asked for).
    pub(super) fn pull_authorization(&self, repo: &Repo<'_>) -> Option<String> {
        let key = (repo.api_host.clone(), repo.repository.to_owned());
        self.auth.lock().get(&key).cloned()
    }

    fn pull_authed(
        &self,
        repo: &Repo<'_>,
        url: &str,
        accept: Option<&str>,
        what: &str,
        head: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let key = (repo.api_host.clone(), repo.repository.to_owned());
        let build = |authorization: Option<&str>| {
            let mut req = if head {
                self.agent.head(url)
            } else {
                self.agent.get(url)
            };
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
        let unauthorized = |detail: String| unauthorized(repo, detail);
        let credentials = self.credentials_for(repo)?;
        let authorization = self.answer_challenge(
            repo,
            &response,
            None,
            credentials.as_ref(),
            "the registry requires credentials and none are configured",
        )?;
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


    pub(super) fn token(
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
        let response = if let Some(token) = credentials.filter(|c| c.is_identity_token()) {
            // OAuth2 refresh-token grant, as docker does with an identity token.
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token.password.as_str()),
                ("client_id", "imgstore"),
                ("scope", scope),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", form_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            self.agent
                .post(realm)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(body)
                .map_err(|e| Error::Transport {
                    host: realm.to_owned(),
                    what: what.clone(),
                    source: Box::new(e),
                })?
        } else {
            let mut req = self.agent.get(realm).query("scope", scope);
            if let Some(s) = service {
                req = req.query("service", s);
            }
            if let Some(c) = credentials {
                req = req.header("Authorization", c.basic_header());
            }
            Self::send(realm, &what, req)?
        };
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(Error::Unauthorized {
                host: repo.host.to_owned(),
                repository: repo.repository.to_owned(),
                detail: match credentials {
                    Some(c) if c.is_identity_token() => {
                        format!("token server {realm} rejected the identity token")
                    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

}
