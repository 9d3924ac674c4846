//! Mirrors from containers-registries.conf: `imgstore pull` as the built binary against two
//! real `docker-registry` instances on 127.0.0.1 (the registry and a mirror). Each case ends
//! with the right content (checked through `config` and `verify`) or a clear error that left
//! nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imgstore::Digest;
use serde_json::Value;

use crate::cli_support::{bin, names, Run};
use crate::oci_image::{host_and_other_arch, BuiltImage, ImageBuilder, LayerBuilder, OciLayout};
use crate::registry_server::TestRegistry;

/// A store root, a scratch area, and a private config home (no host config leaks in).
struct Env {
    td: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let td = tempfile::tempdir().unwrap();
        let root = td.path().join("root");
        Self { td, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.td.path().join(name)
    }

    /// Write `text` as a registries.conf and return its path.
    fn conf(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// Run the binary with `$XDG_CONFIG_HOME`, `$HOME` and `$DOCKER_CONFIG` inside the temp dir.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None)
    }

    /// [`Env::run`] with `$CONTAINERS_REGISTRIES_CONF` set to `conf`, or unset.
    fn run_with(&self, args: &[&str], conf: Option<&Path>) -> Run {
        let mut cmd = Command::new(bin());
        match conf {
            Some(c) => cmd.env("CONTAINERS_REGISTRIES_CONF", c),
            None => cmd.env_remove("CONTAINERS_REGISTRIES_CONF"),
        };
        let out = cmd
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env("XDG_CONFIG_HOME", self.path("xdg"))
            .env("HOME", self.path("home"))
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run::from_output(&out)
    }

    fn pull(&self, conf: &Path, reference: &str) -> Run {
        self.run(&[
            "--registries-conf",
            conf.to_str().unwrap(),
            "pull",
            reference,
        ])
    }

    fn image_digest(&self, id: &str) -> Digest {
        let v = self.run(&["-o", "json", "config", id]).ok().json();
        Digest::parse(v[0]["image_digest"].as_str().unwrap()).unwrap()
    }

    /// `verify` passes and names every stored layer `ok`.
    fn verify_ok(&self, id: &str) {
        let v: Value = self.run(&["-o", "json", "verify", id]).ok().json();
        let text = v.to_string();
        assert!(!text.contains("corrupt"), "{text}");
        assert!(text.contains("ok"), "{text}");
    }

    fn blobs(&self) -> Vec<String> {
        names(&self.root.join("oci/blobs"))
    }

    /// A failed pull stored nothing: no blob, no index entry, no temp debris.
    #[track_caller]
    fn assert_nothing_stored(&self) {
        assert_eq!(self.blobs(), Vec::<String>::new(), "blobs stored");
        let index = fs::read_to_string(self.root.join("oci/db/images.json")).unwrap_or_default();
        assert!(!index.contains("\"ref\""), "index has an entry: {index}");
        let debris: Vec<String> = names(&self.root.join("oci/temp"))
            .into_iter()
            .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock"))
            .collect();
        assert_eq!(debris, Vec::<String>::new(), "temp debris");
    }
}

/// The sample image for this machine, with `tag_line` making its content (and digests) unique.
fn image(tag_line: &str) -> ImageBuilder {
    ImageBuilder::sample(host_and_other_arch().0)
        .layer(LayerBuilder::new().file("etc/which", format!("{tag_line}\n")))
}

fn push(
    reg: &TestRegistry,
    dir: &Path,
    repository: &str,
    tag: &str,
    image: &ImageBuilder,
) -> BuiltImage {
    let mut layout = OciLayout::create(dir);
    let built = layout.add_image(tag, image);
    reg.push_oci_layout(&layout.dir, repository, tag);
    built
}

/// A registries.conf giving `upstream` one mirror.
fn mirror_conf(upstream: &TestRegistry, mirror: &str, pull_from: Option<&str>) -> String {
    let mut conf = format!(
        "[[registry]]\nlocation = \"{}\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\n",
        upstream.host()
    );
    if let Some(p) = pull_from {
        conf = format!("{conf}pull-from-mirror = \"{p}\"\n");
    }
    conf
}

#[test]
fn a_mirror_that_has_the_image_serves_it_without_the_registry() {
    let env = Env::new();
    let mut upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let built = push(&upstream, &env.path("a"), "team/app", "v1", &image("one"));
    push(&mirror, &env.path("b"), "team/app", "v1", &image("one"));
    let conf = env.conf("r.conf", &mirror_conf(&upstream, &mirror.host(), None));
    // The registry is gone: only the mirror can answer.
    upstream.stop();
    let r = format!("{}/team/app:v1", upstream.host());
    env.pull(&conf, &r).ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);
    env.verify_ok(&r);
}

#[test]
fn a_mirror_that_is_down_falls_back_to_the_registry() {
    let env = Env::new();
    let upstream = TestRegistry::start();
    let mut mirror = TestRegistry::start();
    let built = push(&upstream, &env.path("a"), "team/app", "v1", &image("one"));
    let conf = env.conf("r.conf", &mirror_conf(&upstream, &mirror.host(), None));
    mirror.stop();
    let r = format!("{}/team/app:v1", upstream.host());
    env.pull(&conf, &r).ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);
    env.verify_ok(&r);
}

#[test]
fn a_mirror_serving_a_corrupt_layer_is_a_digest_mismatch_that_moves_on() {
    let env = Env::new();
    let mut upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let built = push(&upstream, &env.path("a"), "team/app", "v1", &image("one"));
    push(&mirror, &env.path("b"), "team/app", "v1", &image("one"));
    // Same size, one byte flipped: only the digest can tell.
    let bad = &built.layers[0];
    let mut bytes = bad.gz.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(mirror.blob_data_path(&bad.digest), &bytes).unwrap();
    let conf = env.conf("r.conf", &mirror_conf(&upstream, &mirror.host(), None));
    let r = format!("{}/team/app:v1", upstream.host());

    // With the registry up, the bad layer comes from it instead and everything verifies.
    env.pull(&conf, &r).ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);
    env.verify_ok(&r);
    let sha256: Value = env
        .run(&["-o", "json", "verify", "--sha256", &r])
        .ok()
        .json();
    assert!(!sha256.to_string().contains("corrupt"), "{sha256}");

    // With the registry down, only the corrupt copy is left: a clear error, nothing stored.
    let env = Env::new();
    upstream.stop();
    let out = env.pull(&conf, &r).fails();
    assert!(out.stderr.contains("digest mismatch"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&bad.digest.to_string()),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mirror 1: "), "{}", out.stderr);
    assert!(out.stderr.contains(&mirror.host()), "{}", out.stderr);
    env.assert_nothing_stored();
}

#[test]
fn a_mirror_without_the_tag_falls_back_to_the_registry() {
    let env = Env::new();
    let upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let built = push(&upstream, &env.path("a"), "team/app", "v2", &image("two"));
    push(&mirror, &env.path("b"), "team/app", "v1", &image("one"));
    let conf = env.conf("r.conf", &mirror_conf(&upstream, &mirror.host(), None));
    let r = format!("{}/team/app:v2", upstream.host());
    env.pull(&conf, &r).ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);
    env.verify_ok(&r);

    // A tag neither has: the error names both answers.
    let env = Env::new();
    let r = format!("{}/team/app:v3", upstream.host());
    let out = env.pull(&conf, &r).fails();
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("mirror 1: {}", mirror.host())),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("registry: {}", upstream.host())),
        "{}",
        out.stderr
    );
    env.assert_nothing_stored();
}

/// The mirror's `v1` is another image than the registry's `v1`: which one a pull gets shows
/// who answered the tag.
#[test]
fn pull_from_mirror_decides_whether_a_mirror_answers_tags_or_digests() {
    let td = Env::new();
    let upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let up = push(
        &upstream,
        &td.path("a"),
        "team/app",
        "v1",
        &image("upstream"),
    );
    let mine = push(&mirror, &td.path("b"), "team/app", "v1", &image("mirror"));
    let by_tag = format!("{}/team/app:v1", upstream.host());
    let pinned = format!("{}/team/app@{}", upstream.host(), mine.manifest_digest);

    for (mode, tag_from, digest_ok) in [
        (None, &mine, true),
        (Some("all"), &mine, true),
        (Some("digest-only"), &up, true),
        (Some("tag-only"), &mine, false),
    ] {
        let env = Env::new();
        let conf = env.conf("r.conf", &mirror_conf(&upstream, &mirror.host(), mode));
        env.pull(&conf, &by_tag).ok();
        assert_eq!(
            env.image_digest(&by_tag),
            tag_from.manifest_digest,
            "{mode:?}"
        );
        // The mirror's image exists only there: a pull by its digest needs the mirror.
        let out = env.pull(&conf, &pinned);
        if digest_ok {
            out.ok();
            assert_eq!(env.image_digest(&pinned), mine.manifest_digest, "{mode:?}");
        } else {
            let out = out.fails();
            assert!(out.stderr.contains("not found"), "{mode:?}: {}", out.stderr);
        }
    }

    // mirror-by-digest-only on the table: tags from the registry, digests from the mirror.
    let env = Env::new();
    let conf = env.conf(
        "r.conf",
        &format!(
            "[[registry]]\nlocation = \"{}\"\nmirror-by-digest-only = true\n\n\
             [[registry.mirror]]\nlocation = \"{}\"\n",
            upstream.host(),
            mirror.host()
        ),
    );
    env.pull(&conf, &by_tag).ok();
    assert_eq!(env.image_digest(&by_tag), up.manifest_digest);
    env.pull(&conf, &pinned).ok();
}

#[test]
fn a_prefix_is_remapped_to_its_location() {
    let env = Env::new();
    let upstream = TestRegistry::start();
    let built = push(
        &upstream,
        &env.path("a"),
        "real/team/app",
        "v1",
        &image("one"),
    );
    let conf = env.conf(
        "r.conf",
        &format!(
            "[[registry]]\nprefix = \"example.invalid/team\"\nlocation = \"{}/real/team\"\n",
            upstream.host()
        ),
    );
    let r = "example.invalid/team/app:v1";
    env.pull(&conf, r).ok();
    assert_eq!(env.image_digest(r), built.manifest_digest);
    env.verify_ok(r);
}

#[test]
fn a_blocked_registry_is_refused_before_anything_is_fetched() {
    let env = Env::new();
    let upstream = TestRegistry::start();
    push(&upstream, &env.path("a"), "team/app", "v1", &image("one"));
    let conf = env.conf(
        "r.conf",
        &format!(
            "[[registry]]\nlocation = \"{}/team\"\nblocked = true\n",
            upstream.host()
        ),
    );
    let r = format!("{}/team/app:v1", upstream.host());
    let out = env.pull(&conf, &r).fails();
    assert!(out.stderr.contains("blocked"), "{}", out.stderr);
    assert!(
        out.stderr.contains(conf.to_str().unwrap()),
        "{}",
        out.stderr
    );
    env.assert_nothing_stored();
    // Another repository of the same registry is not under the prefix.
    push(&upstream, &env.path("b"), "other/app", "v1", &image("two"));
    env.pull(&conf, &format!("{}/other/app:v1", upstream.host()))
        .ok();
}

/// Without `--registries-conf` the file under `$XDG_CONFIG_HOME` applies, after
/// `$CONTAINERS_REGISTRIES_CONF`; the flag wins over both; a broken file is an error naming it.
#[test]
fn the_config_file_is_found_as_podman_finds_it() {
    let env = Env::new();
    let upstream = TestRegistry::start();
    push(&upstream, &env.path("a"), "team/app", "v1", &image("one"));
    let r = format!("{}/team/app:v1", upstream.host());
    let user_conf = env.path("xdg/containers/registries.conf");
    fs::create_dir_all(user_conf.parent().unwrap()).unwrap();
    fs::write(
        &user_conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\nblocked = true\n",
            upstream.host()
        ),
    )
    .unwrap();
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains("blocked"), "{}", out.stderr);
    assert!(
        out.stderr.contains(user_conf.to_str().unwrap()),
        "{}",
        out.stderr
    );

    // $CONTAINERS_REGISTRIES_CONF comes first (here: no rules, so the pull works).
    let empty = env.conf("empty.conf", "# no rules\n");
    let env3 = Env::new();
    env3.run_with(&["pull", &r], Some(&empty)).ok();
    // The flag wins over everything.
    let out = env3
        .run_with(
            &[
                "--registries-conf",
                user_conf.to_str().unwrap(),
                "pull",
                "--force",
                &r,
            ],
            Some(&empty),
        )
        .fails();
    assert!(out.stderr.contains("blocked"), "{}", out.stderr);
    env.pull(&empty, &r).ok();

    let broken = env.conf("broken.conf", "[[registry]]\nprefix = 3\n");
    let env2 = Env::new();
    let out = env2.pull(&broken, &r).fails();
    assert!(
        out.stderr.contains(broken.to_str().unwrap()),
        "{}",
        out.stderr
    );
    let missing = env.path("missing.conf");
    let out = env2.pull(&missing, &r).fails();
    assert!(
        out.stderr.contains(missing.to_str().unwrap()),
        "{}",
        out.stderr
    );
    env2.assert_nothing_stored();
}

/// Drop-ins (containers-registries.conf.d(5)) beside the user's file: a drop-in's table
/// replaces the file's table with the same prefix, another adds a registry, names not ending
/// with `.conf` are skipped, one that does not parse is an error naming it;
/// `$CONTAINERS_REGISTRIES_CONF` keeps the drop-ins, `--registries-conf FILE` reads none.
#[test]
fn drop_ins_replace_and_add_tables_and_an_explicit_file_reads_none() {
    let mut upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let work = Env::new();
    let built = push(&upstream, &work.path("a"), "team/app", "v1", &image("one"));
    push(&mirror, &work.path("b"), "team/app", "v1", &image("one"));
    let r = format!("{}/team/app:v1", upstream.host());
    let blocked = format!(
        "[[registry]]\nlocation = \"{}\"\nblocked = true\n",
        upstream.host()
    );
    let with_mirror = mirror_conf(&upstream, &mirror.host(), None);
    let added = format!(
        "[[registry]]\nprefix = \"example.invalid/team\"\nlocation = \"{}/team\"\n",
        mirror.host()
    );
    // The user's file blocks the registry; its drop-ins give it a mirror instead and add a
    // prefix served by the mirror.
    let setup = |env: &Env| {
        let user_conf = env.path("xdg/containers/registries.conf");
        let dir = env.path("xdg/containers/registries.conf.d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&user_conf, &blocked).unwrap();
        fs::write(dir.join("50-mirror.conf"), &with_mirror).unwrap();
        fs::write(dir.join("70-new.conf"), &added).unwrap();
        fs::write(dir.join("README"), "not [ toml").unwrap();
        fs::write(dir.join("90-off.conf.disabled"), &blocked).unwrap();
        (user_conf, dir)
    };
    let env = Env::new();
    let (user_conf, dir) = setup(&env);
    // Only the mirror can answer.
    upstream.stop();
    env.run(&["pull", &r]).ok();
    assert_eq!(env.image_digest(&r), built.manifest_digest);
    env.verify_ok(&r);
    env.run(&["pull", "example.invalid/team/app:v1"]).ok();
    assert_eq!(
        env.image_digest("example.invalid/team/app:v1"),
        built.manifest_digest
    );

    // The flag's file alone: blocked, naming it.
    let flag = ["--registries-conf", user_conf.to_str().unwrap()];
    let out = env
        .run(&[&flag[..], &["pull", "--force", &r]].concat())
        .fails();
    assert!(out.stderr.contains("blocked"), "{}", out.stderr);
    assert!(
        out.stderr.contains(user_conf.to_str().unwrap()),
        "{}",
        out.stderr
    );

    // $CONTAINERS_REGISTRIES_CONF: that file, then the drop-ins; a drop-in that blocks is named.
    let late = dir.join("80-block.conf");
    fs::write(&late, &blocked).unwrap();
    let empty = env.conf("empty.conf", "# no rules\n");
    let out = env.run_with(&["pull", "--force", &r], Some(&empty)).fails();
    assert!(out.stderr.contains("blocked"), "{}", out.stderr);
    assert!(
        out.stderr.contains(late.to_str().unwrap()),
        "{}",
        out.stderr
    );

    // A drop-in that does not parse: an error naming it, nothing stored.
    let env = Env::new();
    let (_, dir) = setup(&env);
    let broken = dir.join("60-broken.conf");
    fs::write(&broken, "[[registry]]\nprefix = 3\n").unwrap();
    let out = env.run(&["pull", &r]).fails();
    assert!(
        out.stderr.contains(broken.to_str().unwrap()),
        "{}",
        out.stderr
    );
    env.assert_nothing_stored();
}

/// The library client: a mirror whose manifest was damaged in storage (same length, valid JSON)
/// is a digest mismatch by tag and by digest, and the registry answers instead; with the
/// registry down the error carries each endpoint's failure, the mirror's a `DigestMismatch`.
#[test]
fn a_mirror_serving_a_corrupt_manifest_is_passed_over() {
    use imgstore::backend::oci::registry::{Client, ClientOptions, Error, RegistriesConf};

    let env = Env::new();
    let mut upstream = TestRegistry::start();
    let mirror = TestRegistry::start();
    let built = push(&upstream, &env.path("a"), "app", "v1", &image("one"));
    push(&mirror, &env.path("b"), "app", "v1", &image("one"));
    let data = mirror.blob_data_path(&built.manifest_digest);
    let text = fs::read_to_string(&data).unwrap();
    let damaged = text.replacen("config.v1+json", "config.v1+jsoN", 1);
    assert_ne!(damaged, text);
    fs::write(&data, &damaged).unwrap();
    let conf = env.conf("r.conf", &mirror_conf(&upstream, &mirror.host(), None));
    let client = Client::new(ClientOptions {
        docker_config: Some(env.path("no-docker-config.json")),
        registries_conf: RegistriesConf::File(conf),
        retries: 0,
        ..ClientOptions::default()
    });
    let pinned = built.manifest_digest.to_string();
    for reference in ["v1", pinned.as_str()] {
        let resolved = client.resolve(&upstream.host(), "app", reference).unwrap();
        assert_eq!(
            resolved.manifest_digest, built.manifest_digest,
            "{reference}"
        );
        assert_eq!(resolved.raw, built.manifest, "{reference}");
    }

    upstream.stop();
    let err = client
        .resolve(&upstream.host(), "app", &pinned)
        .unwrap_err();
    let Error::Endpoints { failures, .. } = &err else {
        panic!("expected Endpoints, got {err:?}");
    };
    assert_eq!(failures.len(), 2, "{err}");
    assert_eq!(failures[0].endpoint, "mirror 1");
    let mismatch = match &*failures[0].error {
        Error::DigestMismatch { expected, .. } => Some(*expected),
        _ => None,
    };
    assert_eq!(mismatch, Some(built.manifest_digest), "{err}");
    assert_eq!(failures[1].endpoint, "registry");
    assert!(
        matches!(*failures[1].error, Error::Transport { .. }),
        "{err}"
    );
}
