//! Docker credential helpers (`credsStore`, `credHelpers` in the docker config): run
//! `docker-credential-<name> get` with the server URL on stdin and read
//! `{"ServerURL","Username","Secret"}` from stdout, as docker and skopeo do. A user name of
//! `<token>` means the secret is an identity (`OAuth2` refresh) token.
//!
//! The helper is found on `PATH`; it is the user's own program, named by the user's config.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::io::Write;
use std::process::{Command, Stdio};

use super::auth::Credentials;
use super::Error;

/// What a helper prints (exit 1) for a server it has nothing for.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// The user name a helper answers with when the secret is an identity token.
pub(crate) const IDENTITY_TOKEN_USER: &str = "<token>";

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

#[cfg(test)]
mod tests {
    use super::*;

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
