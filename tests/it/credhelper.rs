//! Docker credential helpers: `imgstore pull` as the built binary, a `docker-credential-*`
//! shell script on `PATH`, and real `docker-registry` instances on 127.0.0.1 with htpasswd
//! (basic) and token auth.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imgstore::Digest;

use crate::cli_support::{bin, names, Run};
use crate::oci_image::{host_and_other_arch, BuiltImage, ImageBuilder, OciLayout};
use crate::registry_server::TestRegistry;

struct Env {
    td: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let td = tempfile::tempdir().unwrap();
        let root = td.path().join("root");
        fs::create_dir_all(td.path().join("bin")).unwrap();
        fs::create_dir_all(td.path().join("docker")).unwrap();
        Self { td, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.td.path().join(name)
    }

    /// Install `docker-credential-<name>` running `body` (sh); what it read on stdin is
    /// saved as `<name>.stdin`.
    fn helper(&self, name: &str, body: &str) {
        let path = self.path(&format!("bin/docker-credential-{name}"));
        let log = self.path(&format!("{name}.stdin"));
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = get ] || {{ echo \"unexpected verb $1\" >&2; exit 3; }}\n\
             cat > '{}'\n{body}\n",
            log.display()
        );
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// What helper `name` was given on stdin.
    fn asked(&self, name: &str) -> String {
        fs::read_to_string(self.path(&format!("{name}.stdin"))).unwrap_or_default()
    }

    fn docker_config(&self, config: &serde_json::Value) {
        fs::write(self.path("docker/config.json"), config.to_string()).unwrap();
    }

    /// Write `auths` as the containers `auth.json` at `rel` (relative to the temp dir).
    fn auth_json(&self, rel: &str, auths: &serde_json::Value) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, serde_json::json!({ "auths": auths }).to_string()).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// [`Env::run`] with `extra` environment variables (`$REGISTRY_AUTH_FILE` is unset unless
    /// given here; `$XDG_RUNTIME_DIR` is `run/` in the temp dir).
    fn run_env(&self, args: &[&str], extra: &[(&str, &Path)]) -> Run {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(bin())
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("PATH", path)
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("CONTAINERS_REGISTRIES_CONF")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run::from_output(&out)
    }

    fn image_digest(&self, id: &str) -> Digest {
        let v = self.run(&["-o", "json", "config", id]).ok().json();
        Digest::parse(v[0]["image_digest"].as_str().unwrap()).unwrap()
    }

    #[track_caller]
    fn assert_nothing_stored(&self) {
        assert_eq!(names(&self.root.join("oci/blobs")), Vec::<String>::new());
        let index = fs::read_to_string(self.root.join("oci/db/images.json")).unwrap_or_default();
        assert!(!index.contains("\"ref\""), "{index}");
    }
}

fn push(reg: &TestRegistry, dir: &Path, repository: &str) -> BuiltImage {
    let mut layout = OciLayout::create(dir);
    let built = layout.add_image("v1", &ImageBuilder::sample(host_and_other_arch().0));
    reg.push_oci_layout(&layout.dir, repository, "v1");
    built
}

/// A helper body printing the answer for `user` / `secret`.
fn answer(server: &str, user: &str, secret: &str) -> String {
    let json = serde_json::json!({ "ServerURL": server, "Username": user, "Secret": secret });
    format!("printf '%s' '{json}'")
}

#[test]
fn cred_helpers_and_creds_store_give_basic_credentials() {
    let env = Env::new();
    let reg = TestRegistry::start_with_auth("alice", "s3cret pass");
    let built = push(&reg, &env.path("layout"), "team/private");
    let r = format!("{}/team/private:v1", reg.host());
    env.helper("imgtest", &answer(&reg.host(), "alice", "s3cret pass"));

    // credHelpers names the helper for this registry.
    env.docker_config(&serde_json::json!({ "credHelpers": { reg.host(): "imgtest" } }));
    env.run(&["pull", &r]).ok();
    assert_eq!(env.asked("imgtest"), reg.host());
    assert_eq!(env.image_digest(&r), built.manifest_digest);

    // credsStore serves every registry.
    let env2 = Env::new();
    env2.helper(
        "imgstore-store",
        &answer(&reg.host(), "alice", "s3cret pass"),
    );
    env2.docker_config(&serde_json::json!({ "credsStore": "imgstore-store" }));
    env2.run(&["pull", &r]).ok();
    assert_eq!(env2.asked("imgstore-store"), reg.host());
    assert_eq!(env2.image_digest(&r), built.manifest_digest);
}

/// base64 of `alice:s3cret pass` and of `alice:wrong`, as `podman login` writes them.
const RIGHT: &str = "YWxpY2U6czNjcmV0IHBhc3M=";
const WRONG: &str = "YWxpY2U6d3Jvbmc=";

#[test]
fn auth_json_is_read_before_the_docker_config() {
    let reg = TestRegistry::start_with_auth("alice", "s3cret pass");
    let host = reg.host();
    let env = Env::new();
    let built = push(&reg, &env.path("layout"), "team/private");
    let r = format!("{host}/team/private:v1");
    let wrong = serde_json::json!({ &host: { "auth": WRONG } });

    // The XDG config auth.json wins over the docker config; its namespace key over its host key.
    env.docker_config(&serde_json::json!({ "auths": wrong }));
    let key = format!("{host}/team/private");
    env.auth_json(
        "xdg/containers/auth.json",
        &serde_json::json!({ &host: { "auth": WRONG }, key: { "auth": RIGHT } }),
    );
    env.run(&["pull", &r]).ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);

    // $REGISTRY_AUTH_FILE replaces the runtime file, which otherwise comes first.
    let env = Env::new();
    env.auth_json("run/containers/auth.json", &wrong);
    let file = env.auth_json(
        "elsewhere.json",
        &serde_json::json!({ &host: { "auth": RIGHT } }),
    );
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains("not authorized"), "{}", out.stderr);
    env.assert_nothing_stored();
    env.run_env(&["pull", &r], &[("REGISTRY_AUTH_FILE", &file)])
        .ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);

    // A broken auth.json is an error naming it, even with good docker credentials behind it.
    let env = Env::new();
    env.docker_config(&serde_json::json!({ "auths": { &host: { "auth": RIGHT } } }));
    env.run(&["pull", &r]).ok();
    let broken = env.path("xdg/containers/auth.json");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::write(&broken, "{\"auths\": {").unwrap();
    let out = env
        .run(&["pull", &format!("{host}/team/private:v2")])
        .fails();
    assert!(
        out.stderr.contains(&broken.display().to_string()),
        "{}",
        out.stderr
    );
}

#[test]
fn an_identity_token_from_a_helper_is_exchanged_for_a_registry_token() {
    let env = Env::new();
    let reg = TestRegistry::start_with_token_auth("carol", "t0ken-pass");
    let built = push(&reg, &env.path("layout"), "team/private");
    let r = format!("{}/team/private:v1", reg.host());
    let token = reg.identity_token().unwrap();
    env.helper("imgtest", &answer(&reg.host(), "<token>", &token));
    env.docker_config(&serde_json::json!({ "credHelpers": { reg.host(): "imgtest" } }));
    env.run(&["pull", &r]).ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);

    // A wrong identity token is refused by the token server, and said so.
    let env = Env::new();
    env.helper("imgtest", &answer(&reg.host(), "<token>", "not-the-token"));
    env.docker_config(&serde_json::json!({ "credHelpers": { reg.host(): "imgtest" } }));
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains("identity token"), "{}", out.stderr);
    env.assert_nothing_stored();
}

#[test]
fn a_failing_or_missing_helper_is_an_error_naming_it() {
    let env = Env::new();
    let reg = TestRegistry::start_with_auth("alice", "pw");
    push(&reg, &env.path("layout"), "team/private");
    let r = format!("{}/team/private:v1", reg.host());

    env.helper("broken", "echo 'keychain is locked' >&2; exit 2");
    env.docker_config(&serde_json::json!({ "credHelpers": { reg.host(): "broken" } }));
    let out = env.run(&["pull", &r]).fails();
    assert!(
        out.stderr.contains("docker-credential-broken"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("keychain is locked"), "{}", out.stderr);
    env.assert_nothing_stored();

    env.docker_config(&serde_json::json!({ "credsStore": "imgstore-not-installed" }));
    let out = env.run(&["pull", &r]).fails();
    assert!(
        out.stderr
            .contains("docker-credential-imgstore-not-installed"),
        "{}",
        out.stderr
    );
    env.assert_nothing_stored();

    env.helper("garbage", "echo 'not json'");
    env.docker_config(&serde_json::json!({ "credsStore": "garbage" }));
    let out = env.run(&["pull", &r]).fails();
    assert!(
        out.stderr.contains("docker-credential-garbage"),
        "{}",
        out.stderr
    );
    env.assert_nothing_stored();

    // "Not found" is no error: the pull goes on anonymously and the registry refuses it.
    env.helper(
        "empty",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    env.docker_config(&serde_json::json!({ "credsStore": "empty" }));
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains("not authorized"), "{}", out.stderr);
    env.assert_nothing_stored();
}
