//! Which files registry credentials are looked for in, as containers-auth.json(5) says podman and
//! skopeo read them: the primary file (`$REGISTRY_AUTH_FILE` when set, else
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `/run/containers/<uid>/auth.json` without
//! `XDG_RUNTIME_DIR`), then `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/…`), then the
//! docker config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`). All share one format
//! (`auths`, `credHelpers`, `credsStore`), read by [`docker_config_credentials`]; the first file
//! with an entry for the repository wins.
#![allow(
    clippy::result_large_err,
    reason = "shares the registry Error, whose DigestMismatch is large; see registry.rs"
)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::credentials::Credentials;
use super::credhelper::docker_config_credentials;
use super::Error;

/// A non-empty environment variable.
fn non_empty(env: &impl Fn(&str) -> Option<OsString>, name: &str) -> Option<PathBuf> {
    env(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The files to search, in order, given the environment `env` and the user id `uid`.
pub(crate) fn auth_files(env: impl Fn(&str) -> Option<OsString>, uid: u32) -> Vec<PathBuf> {
    let home = non_empty(&env, "HOME");
    let mut files = Vec::new();
    if let Some(file) = non_empty(&env, "REGISTRY_AUTH_FILE") {
        files.push(file);
    } else if let Some(runtime) = non_empty(&env, "XDG_RUNTIME_DIR") {
        files.push(runtime.join("containers/auth.json"));
    } else {
        files.push(PathBuf::from(format!("/run/containers/{uid}/auth.json")));
    }
    if let Some(config) = crate::layout::user_config_dir(&env) {
        files.push(config.join("containers/auth.json"));
    }
    if let Some(dir) = non_empty(&env, "DOCKER_CONFIG") {
        files.push(dir.join("config.json"));
    } else if let Some(home) = home {
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// The files to search for this process.
pub(crate) fn default_auth_files() -> Vec<PathBuf> {
    auth_files(|name| std::env::var_os(name), nix::unistd::getuid().as_raw())
}

/// Credentials for `repository` on `host` from the first of `files` that has an entry for it;
/// a missing file is skipped, one that cannot be read or parsed is an error naming it.
pub(crate) fn credentials(
    files: &[PathBuf],
    host: &str,
    repository: &str,
) -> Result<Option<Credentials>, Error> {
    for file in files {
        if let Some(found) = docker_config_credentials(Path::new(file), host, repository)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs;

    use super::*;

    fn env<'a>(vars: &'a [(&str, &Path)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        let vars: HashMap<&str, &Path> = vars.iter().copied().collect();
        move |name| vars.get(name).map(|p| p.as_os_str().to_owned())
    }

    /// `{"auths":{host:{"auth":base64(user:pass)}}}`
    fn write_auth(path: &Path, host: &str, user_pass_base64: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let json = serde_json::json!({ "auths": { host: { "auth": user_pass_base64 } } });
        fs::write(path, json.to_string()).unwrap();
    }

    // base64 of "run:1", "cfg:2", "dock:3", "reg:4"
    const RUN: &str = "cnVuOjE=";
    const CFG: &str = "Y2ZnOjI=";
    const DOCK: &str = "ZG9jazoz";
    const REG: &str = "cmVnOjQ=";

    #[test]
    fn the_files_in_containers_auth_json_order() {
        let p = Path::new;
        let all = auth_files(
            env(&[
                ("HOME", p("/h")),
                ("REGISTRY_AUTH_FILE", p("/a/auth.json")),
                ("XDG_RUNTIME_DIR", p("/run/user/7")),
                ("XDG_CONFIG_HOME", p("/x")),
                ("DOCKER_CONFIG", p("/d")),
            ]),
            7,
        );
        let expected = ["/a/auth.json", "/x/containers/auth.json", "/d/config.json"];
        assert_eq!(all, expected.map(PathBuf::from));
        let runtime = auth_files(
            env(&[("HOME", p("/h")), ("XDG_RUNTIME_DIR", p("/run/user/7"))]),
            7,
        );
        let expected = [
            "/run/user/7/containers/auth.json",
            "/h/.config/containers/auth.json",
            "/h/.docker/config.json",
        ];
        assert_eq!(runtime, expected.map(PathBuf::from));
        let bare = auth_files(env(&[("REGISTRY_AUTH_FILE", p(""))]), 7);
        assert_eq!(bare, [PathBuf::from("/run/containers/7/auth.json")]);
    }

    #[test]
    fn the_first_file_with_an_entry_wins() {
        let td = tempfile::tempdir().unwrap();
        let (run, cfg, dock, reg) = (
            td.path().join("run/containers/auth.json"),
            td.path().join("cfg/containers/auth.json"),
            td.path().join("docker/config.json"),
            td.path().join("explicit.json"),
        );
        let found = |vars: &[(&str, &Path)], host| {
            credentials(&auth_files(env(vars), 1), host, "team/app").unwrap()
        };
        let vars = [
            ("XDG_RUNTIME_DIR", td.path().join("run")),
            ("XDG_CONFIG_HOME", td.path().join("cfg")),
            ("DOCKER_CONFIG", td.path().join("docker")),
        ];
        let vars: Vec<(&str, &Path)> = vars.iter().map(|(k, v)| (*k, v.as_path())).collect();
        // No file at all: none, and no error.
        assert_eq!(found(&vars, "reg.lan"), None);
        // The docker config alone is still used.
        write_auth(&dock, "reg.lan", DOCK);
        assert_eq!(found(&vars, "reg.lan"), Some(Credentials::new("dock", "3")));
        // An auth.json entry wins over the docker config for the same registry...
        write_auth(&cfg, "reg.lan", CFG);
        assert_eq!(found(&vars, "reg.lan"), Some(Credentials::new("cfg", "2")));
        // ...and the runtime one over the config one.
        write_auth(&run, "reg.lan", RUN);
        assert_eq!(found(&vars, "reg.lan"), Some(Credentials::new("run", "1")));
        // A file without the registry passes the search on.
        write_auth(&run, "other.lan", RUN);
        assert_eq!(found(&vars, "reg.lan"), Some(Credentials::new("cfg", "2")));
        // $REGISTRY_AUTH_FILE replaces the runtime file and comes before the XDG config one.
        write_auth(&run, "reg.lan", RUN);
        write_auth(&reg, "reg.lan", REG);
        let mut with_override = vars.clone();
        with_override.push(("REGISTRY_AUTH_FILE", reg.as_path()));
        assert_eq!(found(&with_override, "reg.lan"), Some(Credentials::new("reg", "4")));
        write_auth(&reg, "other.lan", REG);
        assert_eq!(found(&with_override, "reg.lan"), Some(Credentials::new("cfg", "2")));
    }

    #[test]
    fn a_broken_auth_json_is_an_error_naming_it() {
        let td = tempfile::tempdir().unwrap();
        let bad = td.path().join("containers/auth.json");
        fs::create_dir_all(bad.parent().unwrap()).unwrap();
        fs::write(&bad, "{\"auths\": ").unwrap();
        let docker = td.path().join("config.json");
        write_auth(&docker, "reg.lan", DOCK);
        let err = credentials(&[bad.clone(), docker], "reg.lan", "a").unwrap_err();
        assert!(matches!(&err, Error::BadDockerConfig { path, .. } if *path == bad), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
        assert!(msg.contains("EOF"), "{msg}");
    }
}
