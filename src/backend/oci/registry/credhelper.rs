//! Credentials from the docker config (`config.json`): inline `auths`, and the credential
//! helpers of `credHelpers` / `credsStore`: run `docker-credential-<name> get` with the server
//! URL on stdin and read `{"ServerURL","Username","Secret"}` from stdout, as docker and skopeo
//! do. A user name of `<token>` means the secret is an identity (`OAuth2` refresh) token.
//!
//! The helper is found on `PATH`; it is the user's own program, named by the user's config.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::credentials::{base64_decode, Credentials, IDENTITY_TOKEN_USER};
use super::Error;

/// What a helper prints (exit 1) for a server it has nothing for.
const NOT_FOUND: &str = "credentials not found in native keychain";


#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// The server URL docker hands helpers for a registry host.
pub(crate) fn server_url(host: &str) -> String {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_owned()
        }
        h => h.to_owned(),
    }
}

/// Ask helper `name` for the credentials of `server`; `None` when it has none.
pub(crate) fn get(name: &str, server: &str) -> Result<Option<Credentials>, Error> {
    let program = format!("docker-credential-{name}");
    let failed = |reason: String| Error::CredentialHelper {
        program: program.clone(),
        server: server.to_owned(),
        reason,
    };
    if name.is_empty() || name.contains(['/', '\0']) || name.contains(char::is_whitespace) {
        return Err(failed(format!("{name:?} is not a credential helper name")));
    }
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::CredentialHelperSpawn {
            program: program.clone(),
            server: server.to_owned(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its exit status.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| Error::CredentialHelperSpawn {
            program: program.clone(),
            server: server.to_owned(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.trim() == NOT_FOUND {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = [stderr.trim(), stdout.trim()]
            .into_iter()
            .find(|m| !m.is_empty())
            .unwrap_or("no message");
        let message: String = message.chars().take(512).collect();
        return Err(failed(format!("{}: {message}", out.status)));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|e| {
        failed(format!(
            "its answer is not {{\"ServerURL\",\"Username\",\"Secret\"}} JSON: {e}"
        ))
    })?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::new(answer.username, answer.secret)))
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
    /// Helper names per registry (`docker-credential-<name>`).
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    /// The helper for every registry without its own.
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// An `OAuth2` refresh token (what `docker login` keeps for some registries).
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The keys under `auths` that may hold credentials for `repository` on `host`, most specific
/// first: `host/a/b/c`, `host/a/b`, `host/a` (containers-auth.json(5) namespace keys), then the
/// host in the spellings docker writes.
fn auths_keys(host: &str, repository: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut namespace = repository.trim_matches('/');
    while !namespace.is_empty() {
        keys.push(format!("{host}/{namespace}"));
        namespace = namespace.rsplit_once('/').map_or("", |(parent, _)| parent);
    }
    keys.extend(config_keys(host));
    keys
}

/// The keys that may name `host` itself (docker writes several spellings).
fn config_keys(host: &str) -> Vec<String> {
    let mut keys = vec![
        host.to_owned(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("https://{host}/v1/"),
        format!("https://{host}/v2/"),
    ];
    if matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        for alias in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ] {
            keys.push(alias.to_owned());
        }
    }
    keys
}

/// Credentials for `repository` on `host` from a docker `config.json` or a containers
/// `auth.json` (one format); a missing file means none.
///
/// As docker does: a `credHelpers` entry for the host runs that helper (its answer is final);
/// else `credsStore` runs that helper; when it has nothing (or there is no helper), the inline
/// `auths` entry is used (`auth`, `username`/`password`, or `identitytoken`), the most specific
/// key first ([`auths_keys`]).
pub(crate) fn docker_config_credentials(
    path: &Path,
    host: &str,
    repository: &str,
) -> Result<Option<Credentials>, Error> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::DockerConfig {
                path: path.to_owned(),
                source,
            })
        }
    };
    let config: DockerConfig =
        serde_json::from_slice(&text).map_err(|e| Error::BadDockerConfig {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let keys = config_keys(host);
    let server = server_url(host);
    if let Some(helper) = keys.iter().find_map(|k| config.cred_helpers.get(k)) {
        return get(helper, &server);
    }
    if let Some(store) = config.creds_store.as_deref().filter(|s| !s.is_empty()) {
        if let Some(found) = get(store, &server)? {
            return Ok(Some(found));
        }
    }
    for key in auths_keys(host, repository) {
        let Some(entry) = config.auths.get(&key) else {
            continue;
        };
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::new(IDENTITY_TOKEN_USER, token)));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |reason: &str| Error::BadDockerConfig {
                path: path.to_owned(),
                reason: format!("auths.{key:?}.auth {reason}"),
            };
            let raw = base64_decode(auth).ok_or_else(|| bad("is not valid base64"))?;
            let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| bad("is not of the form user:password"))?;
            return Ok(Some(Credentials::new(user, pass)));
        }
        if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials::new(user.clone(), pass.clone())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert_eq!(docker_config_credentials(&path, "x", "r").unwrap(), None);
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
                "127.0.0.1:5000":{"auth":"YTpiOmM="}}}"#,
        )
        .unwrap();
        assert_eq!(
            docker_config_credentials(&path, "docker.io", "library/alpine").unwrap(),
            Some(Credentials::new("user", "pass"))
        );
        assert_eq!(
            docker_config_credentials(&path, "127.0.0.1:5000", "a/b").unwrap(),
            Some(Credentials::new("a", "b:c"))
        );
        assert_eq!(docker_config_credentials(&path, "quay.io", "a").unwrap(), None);
        std::fs::write(&path, r#"{"auths":{"q":{"auth":"!!"}}}"#).unwrap();
        assert!(matches!(
            docker_config_credentials(&path, "q", "r"),
            Err(Error::BadDockerConfig { .. })
        ));
    }

    #[test]
    fn the_most_specific_namespace_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // u1:p1, u2:p2, u3:p3
        std::fs::write(
            &path,
            r#"{"auths":{"reg.lan":{"auth":"dTE6cDE="},"reg.lan/team":{"auth":"dTI6cDI="},
                "reg.lan/team/app":{"auth":"dTM6cDM="}}}"#,
        )
        .unwrap();
        let creds = |repository| docker_config_credentials(&path, "reg.lan", repository).unwrap();
        assert_eq!(creds("team/app"), Some(Credentials::new("u3", "p3")));
        assert_eq!(creds("team/app/sub"), Some(Credentials::new("u3", "p3")));
        assert_eq!(creds("team/other"), Some(Credentials::new("u2", "p2")));
        assert_eq!(creds("team"), Some(Credentials::new("u2", "p2")));
        assert_eq!(creds("teamx/app"), Some(Credentials::new("u1", "p1")));
        assert_eq!(
            docker_config_credentials(&path, "other.lan", "team/app").unwrap(),
            None
        );
    }

    #[test]
    fn a_missing_helper_is_an_error_naming_it() {
        let err = get("imgstore-test-no-such-helper", "reg.lan").unwrap_err();
        assert!(matches!(err, Error::CredentialHelperSpawn { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("docker-credential-imgstore-test-no-such-helper"), "{msg}");
        assert!(msg.contains("reg.lan"), "{msg}");
        assert!(matches!(
            get("../x", "reg.lan"),
            Err(Error::CredentialHelper { .. })
        ));
    }

    #[test]
    fn docker_hub_has_the_v1_url() {
        assert_eq!(server_url("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(server_url("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
