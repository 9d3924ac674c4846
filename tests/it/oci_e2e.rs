//! End to end: `imgstore pull` / `import` / `config` / `verify` / `inspect` of OCI images, run
//! as the built binary against a real `docker-registry` on 127.0.0.1, with the layers checked
//! through the real erofs-utils. Every failure case also checks that it left nothing behind:
//! no blob, an unchanged index, no temp debris (lock files only).

use std::fs;
use std::io::{Read as _, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgstore::Digest;
use serde_json::Value;

use crate::cli_support::{run, Run};
use crate::erofs::{extract, xattr_size};
use crate::oci_image::{host_and_other_arch, BuiltImage, ImageBuilder, LayerBuilder, OciLayout};
use crate::registry_server::TestRegistry;

/// A store root and a scratch area in one temp dir.
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

    fn run(&self, args: &[&str]) -> Run {
        run(&self.root, args)
    }

    fn blobs(&self) -> Vec<String> {
        crate::cli_support::names(&self.root.join("oci/blobs"))
    }

    fn index(&self) -> Option<Vec<u8>> {
        fs::read(self.root.join("oci/db/images.json")).ok()
    }

    fn config(&self, id: &str) -> Value {
        let v = self.run(&["-o", "json", "config", id]).ok().json();
        v.as_array().unwrap()[0].clone()
    }

    fn list(&self) -> Vec<Value> {
        self.run(&["-o", "json", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Everything under oci/temp that is not a lock file.
    fn temp_debris(&self) -> Vec<String> {
        crate::cli_support::names(&self.root.join("oci/temp"))
            .into_iter()
            .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock"))
            .collect()
    }

    /// What a failed command must leave unchanged.
    fn state(&self) -> (Vec<String>, Option<Vec<u8>>) {
        (self.blobs(), self.index())
    }

    #[track_caller]
    fn assert_unchanged(&self, before: &(Vec<String>, Option<Vec<u8>>)) {
        assert_eq!(&self.blobs(), &before.0, "blobs changed");
        assert!(self.index() == before.1, "index changed");
        assert_eq!(self.temp_debris(), Vec::<String>::new(), "temp debris");
        if self.root.join("oci/boot").exists() {
            let before_boot: Vec<String> =
                before.0.iter().map(|b| b.replace(".erofs", "")).collect();
            for d in crate::cli_support::names(&self.root.join("oci/boot")) {
                assert!(before_boot.contains(&d), "new boot dir {d}");
            }
        }
    }
}

/// The sample image for this machine's architecture.
fn sample() -> ImageBuilder {
    ImageBuilder::sample(host_and_other_arch().0)
}

/// Write `image` into a fresh OCI layout under `dir` and push it as `repository:tag`.
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

fn storage_paths(config: &Value) -> Vec<PathBuf> {
    config["storage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
        .collect()
}

fn digest_of(v: &Value) -> Digest {
    Digest::parse(v.as_str().unwrap()).unwrap()
}

#[test]
fn pulled_sample_boots_checks_and_looks_up() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let (host_arch, _) = host_and_other_arch();
    let built = push(&reg, &env.path("layout"), "test/sample", "v1", &sample());
    let r = format!("{}/test/sample:v1", reg.host());
    env.run(&["pull", &r]).ok();

    let c = env.config(&r);
    assert_eq!(c["image"], r.as_str());
    assert_eq!(digest_of(&c["image_digest"]), built.manifest_digest);
    assert_eq!(c["image_type"], "oci");
    let storage = c["storage"].as_array().unwrap();
    assert_eq!(storage.len(), built.layers.len());
    for (n, (disk, layer)) in storage.iter().zip(&built.layers).enumerate() {
        assert_eq!(disk["serial"], format!("cocoon-layer{n}"));
        assert_eq!(disk["ro"], true);
        assert_eq!(disk["role"], "layer");
        let p = PathBuf::from(disk["path"].as_str().unwrap());
        assert_eq!(
            p,
            env.root
                .join(format!("oci/blobs/{}.erofs", layer.digest.hex()))
        );
        assert!(p.is_file(), "{}", p.display());
        let out = Command::new("fsck.erofs").arg(&p).output().unwrap();
        assert!(out.status.success(), "fsck.erofs {}: {out:?}", p.display());
    }
    let kernel = PathBuf::from(c["boot"]["kernel_path"].as_str().unwrap());
    let initrd = PathBuf::from(c["boot"]["initrd_path"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(&kernel).unwrap(),
        format!("fake kernel for {host_arch}\n")
    );
    assert_eq!(
        fs::read_to_string(&initrd).unwrap(),
        format!("fake initrd for {host_arch}\n")
    );
    assert!(kernel.starts_with(env.root.join("oci/boot").join(built.layers[1].digest.hex())));

    let paths = storage_paths(&c);
    // The base layer: files, the hard link, the symlink.
    let base = env.path("x0");
    extract(&paths[0], &base);
    assert_eq!(
        fs::read_to_string(base.join("etc/removed-later")).unwrap(),
        "this file is whited out by layer 3\n"
    );
    assert_eq!(
        fs::read_to_string(base.join("usr/bin/hello-again")).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        fs::read_link(base.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    // The upper layer: replaced file, whiteout as a 0/0 char device, opaque dir xattr.
    let upper = env.path("x2");
    extract(&paths[2], &upper);
    assert_eq!(
        fs::read_to_string(upper.join("etc/hostname")).unwrap(),
        "imgstore-upper\n"
    );
    assert_eq!(
        fs::read_to_string(upper.join("var/cache/b")).unwrap(),
        "new in layer 3\n"
    );
    let wh = fs::symlink_metadata(upper.join("etc/removed-later")).unwrap();
    assert!(wh.file_type().is_char_device(), "{wh:?}");
    assert_eq!(wh.rdev(), 0);
    assert!(!upper.join("etc/.wh.removed-later").exists());
    assert!(!upper.join("var/cache/.wh..wh..opq").exists());
    assert!(
        xattr_size(&paths[2], "/var/cache") > 0,
        "opaque xattr missing"
    );
    assert_eq!(xattr_size(&paths[2], "/etc"), 0);

    env.run(&["verify", &r]).ok();
    env.run(&["verify", "--sha256"]).ok();
    let prefix = &built.manifest_digest.hex()[..12];
    let info = env.run(&["-o", "json", "inspect", prefix]).ok().json();
    assert_eq!(digest_of(&info["id"]), built.manifest_digest);
    assert_eq!(info["name"], r.as_str());
    assert_eq!(env.temp_debris(), Vec::<String>::new());
}

#[test]
fn two_spellings_of_one_reference_are_one_entry() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let built = push(
        &reg,
        &env.path("layout"),
        "library/ubuntu",
        "latest",
        &sample(),
    );
    let bare = format!("{}/library/ubuntu", reg.host());
    let tagged = format!("{bare}:latest");
    env.run(&["pull", &bare]).ok();
    env.run(&["pull", &tagged]).ok();
    let list = env.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], tagged.as_str());
    assert_eq!(digest_of(&list[0]["id"]), built.manifest_digest);
    assert_eq!(
        digest_of(&env.config(&bare)["image_digest"]),
        built.manifest_digest
    );

    // docker.io is out of reach: the `ubuntu` ≡ `docker.io/library/ubuntu:latest` equivalence
    // is shown on an import under the short name.
    let other = Env::new();
    other
        .run(&["import", "ubuntu", env.path("layout").to_str().unwrap()])
        .ok();
    let info = other
        .run(&["-o", "json", "inspect", "docker.io/library/ubuntu:latest"])
        .ok()
        .json();
    assert_eq!(digest_of(&info["id"]), built.manifest_digest);
    other.run(&["inspect", "ubuntu:latest"]).ok();
    other.run(&["inspect", "library/ubuntu"]).ok();
    // A second import under another spelling replaces, never duplicates.
    other
        .run(&[
            "import",
            "docker.io/library/ubuntu",
            env.path("layout").to_str().unwrap(),
        ])
        .ok();
    let list = other.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "docker.io/library/ubuntu:latest");
}

/// Inode and mtime of every stored blob and boot file.
fn stamps(root: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    let mut out = Vec::new();
    for dir in ["oci/blobs", "oci/boot"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    out.push((e.path(), m.ino(), m.mtime(), m.mtime_nsec()));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn second_pull_downloads_nothing_and_force_re_resolves() {
    let env = Env::new();
    let mut reg = TestRegistry::start();
    let built = push(&reg, &env.path("layout"), "test/reuse", "v1", &sample());
    let r = format!("{}/test/reuse:v1", reg.host());
    env.run(&["pull", &r]).ok();
    let before = stamps(&env.root);
    assert_eq!(
        before
            .iter()
            .filter(|s| s.0.extension().is_some_and(|e| e == "erofs"))
            .count(),
        3
    );

    // The registry can no longer serve any layer: a pull that fetched one would fail.
    for l in &built.layers {
        fs::remove_file(reg.blob_data_path(&l.digest)).unwrap();
    }
    reg.restart(); // no cached blob state
    let again = env.run(&["pull", &r]).ok();
    assert!(again.stdout.contains("already stored"), "{}", again.stdout);
    let forced = env.run(&["-o", "json", "pull", "--force", &r]).ok().json();
    assert_eq!(forced[0]["reused"], false, "--force must not short-cut");
    assert_eq!(digest_of(&forced[0]["id"]), built.manifest_digest);
    assert_eq!(stamps(&env.root), before, "stored files were rewritten");
    assert_eq!(env.list().len(), 1);

    // --force resolves the tag again: moved to another image, that image is stored.
    let moved = push(
        &reg,
        &env.path("layout2"),
        "test/reuse",
        "v1",
        &sample().layer(LayerBuilder::new().file("etc/version", "2\n")),
    );
    let out = env.run(&["-o", "json", "pull", "--force", &r]).ok().json();
    assert_eq!(digest_of(&out[0]["id"]), moved.manifest_digest);
    assert_eq!(
        digest_of(&env.config(&r)["image_digest"]),
        moved.manifest_digest
    );
    assert_eq!(env.blobs().len(), 4);
}

#[test]
fn index_resolves_to_host_arch_and_foreign_manifest_is_refused() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let (host, other) = host_and_other_arch();
    let mut layout = OciLayout::create(&env.path("layout"));
    let index = layout.add_index(
        "multi",
        &[ImageBuilder::sample(other), ImageBuilder::sample(host)],
    );
    reg.push_oci_layout(&layout.dir, "test/multi", "multi");
    let r = format!("{}/test/multi:multi", reg.host());
    env.run(&["pull", &r]).ok();
    let c = env.config(&r);
    let mine = index
        .images
        .iter()
        .find(|i| i.platform["architecture"] == host)
        .unwrap();
    assert_eq!(digest_of(&c["image_digest"]), mine.manifest_digest);
    let kernel = c["boot"]["kernel_path"].as_str().unwrap();
    assert_eq!(
        fs::read_to_string(kernel).unwrap(),
        format!("fake kernel for {host}\n")
    );

    // Pinned by the index digest: the host's manifest of exactly that index.
    let pinned = format!("{}/test/multi@{}", reg.host(), index.index_digest);
    env.run(&["pull", &pinned]).ok();
    assert_eq!(
        digest_of(&env.config(&pinned)["image_digest"]),
        mine.manifest_digest
    );

    push(
        &reg,
        &env.path("foreign"),
        "test/foreign",
        "v1",
        &ImageBuilder::sample(other),
    );
    let before = env.state();
    let f = format!("{}/test/foreign:v1", reg.host());
    let out = env.run(&["pull", &f]).fails();
    assert!(out.stderr.contains(other), "{}", out.stderr);
    assert!(out.stderr.contains("test/foreign"), "{}", out.stderr);
    env.assert_unchanged(&before);
}

/// Import holds to the same rule as pull: an image built for another architecture is refused.
#[test]
fn layout_import_of_a_foreign_image_is_refused() {
    let env = Env::new();
    let (_, other) = host_and_other_arch();
    let mut layout = OciLayout::create(&env.path("foreign-layout"));
    layout.add_image("v1", &ImageBuilder::sample(other));
    let before = env.state();
    let dir = env.path("foreign-layout");
    let out = env
        .run(&["import", "foreign", dir.to_str().unwrap()])
        .fails();
    assert!(out.stderr.contains(other), "{}", out.stderr);
    env.assert_unchanged(&before);
}

#[test]
fn pinned_digest_stores_that_manifest_after_the_tag_moved() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let first = push(&reg, &env.path("a"), "test/pin", "v1", &sample());
    let second = push(
        &reg,
        &env.path("b"),
        "test/pin",
        "v1",
        &sample().layer(LayerBuilder::new().file("etc/motd", "moved\n")),
    );
    assert_ne!(first.manifest_digest, second.manifest_digest);
    let pinned = format!("{}/test/pin@{}", reg.host(), first.manifest_digest);
    env.run(&["pull", &pinned]).ok();
    let c = env.config(&pinned);
    assert_eq!(digest_of(&c["image_digest"]), first.manifest_digest);
    assert_eq!(c["storage"].as_array().unwrap().len(), 3);
    // The tag now names the other image, and gets its own entry.
    let tagged = format!("{}/test/pin:v1", reg.host());
    env.run(&["pull", &tagged]).ok();
    assert_eq!(
        digest_of(&env.config(&tagged)["image_digest"]),
        second.manifest_digest
    );
    assert_eq!(
        digest_of(&env.config(&pinned)["image_digest"]),
        first.manifest_digest
    );
    // Tag and digest together: the digest decides.
    let both = format!("{}/test/pin:v1@{}", reg.host(), first.manifest_digest);
    env.run(&["pull", &both]).ok();
    assert_eq!(
        digest_of(&env.config(&both)["image_digest"]),
        first.manifest_digest
    );
}

/// The sample image with a big incompressible layer on top (gzip level 0: quick to build).
fn sample_with_big_layer(mib: usize) -> ImageBuilder {
    sample().layer(
        LayerBuilder::new()
            .gzip_level(0)
            .random_file("opt/big", mib << 20, 7),
    )
}

#[test]
fn corrupted_layer_on_the_registry_fails_cleanly() {
    let env = Env::new();
    let reg = TestRegistry::start();
    // The damaged layer is the big one: the small layers finish first and must not be kept.
    let built = push(
        &reg,
        &env.path("layout"),
        "test/corrupt",
        "v1",
        &sample_with_big_layer(4),
    );
    let bad = built.layers.last().unwrap();
    let mut bytes = bad.gz.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let data = reg.blob_data_path(&bad.digest);
    fs::write(&data, &bytes).unwrap();
    let before = env.state();
    let r = format!("{}/test/corrupt:v1", reg.host());
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains(&r), "{}", out.stderr);
    assert!(out.stderr.contains("digest mismatch"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&bad.digest.to_string()),
        "{}",
        out.stderr
    );
    env.assert_unchanged(&before);
}

#[test]
fn missing_tag_fails_cleanly() {
    let env = Env::new();
    let reg = TestRegistry::start();
    push(&reg, &env.path("layout"), "test/sample", "v1", &sample());
    let before = env.state();
    let r = format!("{}/test/sample:nope", reg.host());
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains(&r), "{}", out.stderr);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    env.assert_unchanged(&before);
}

/// Run the binary with a docker config holding `user:password` for `host`.
fn run_with_docker_config(env: &Env, host: &str, user: &str, password: &str, args: &[&str]) -> Run {
    let dir = env.path("docker");
    fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "auths": { host: { "username": user, "password": password } }
    });
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let out = Command::new(crate::cli_support::bin())
        .arg("--root")
        .arg(&env.root)
        .args(args)
        .env("DOCKER_CONFIG", &dir)
        .env("HOME", env.path("home"))
        .env("XDG_RUNTIME_DIR", env.path("run"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run::from_output(&out)
}

#[test]
fn wrong_credentials_fail_cleanly_and_right_ones_work() {
    let env = Env::new();
    let reg = TestRegistry::start_with_auth("alice", "s3cret");
    let built = push(&reg, &env.path("layout"), "test/private", "v1", &sample());
    let r = format!("{}/test/private:v1", reg.host());
    let before = env.state();
    let out = run_with_docker_config(&env, &reg.host(), "alice", "wrong", &["pull", &r]).fails();
    assert!(out.stderr.contains(&r), "{}", out.stderr);
    assert!(out.stderr.contains("not authorized"), "{}", out.stderr);
    env.assert_unchanged(&before);
    // No credentials at all: refused the same way.
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains("not authorized"), "{}", out.stderr);
    env.assert_unchanged(&before);

    run_with_docker_config(&env, &reg.host(), "alice", "s3cret", &["pull", &r]).ok();
    assert_eq!(
        digest_of(&env.config(&r)["image_digest"]),
        built.manifest_digest
    );
}

/// A file (not a lock) anywhere under `dir` with more than 1 MiB in it: only the huge layer
/// gets there, so this is a download of it in flight.
fn has_partial_download(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.len() > 1 << 20 && e.path().extension().is_none_or(|x| x != "lock") {
                return true;
            }
        }
    }
    false
}

/// The big layer is a plain tar of one non-zero file written straight into the layout (no
/// 100 MiB buffers in memory), so the download lasts long enough to be interrupted, and the
/// image the converter streams into `oci/temp` grows while it runs (zeros would be holes).
fn push_with_huge_layer(reg: &TestRegistry, dir: &Path, repository: &str, mib: u64) {
    let mut layout = OciLayout::create(dir);
    let built = layout.add_image("tmp", &sample());
    let tar_path = dir.join("huge.tar");
    {
        let f = fs::File::create(&tar_path).unwrap();
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        let mut h = tar::Header::new_gnu();
        h.set_size(mib << 20);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "opt/huge", std::io::repeat(0x5a).take(mib << 20))
            .unwrap();
        b.into_inner().unwrap().flush().unwrap();
    }
    let (digest, size) =
        imgstore::verify::hash_file(&tar_path, imgstore::Algorithm::Sha256).unwrap();
    fs::rename(&tar_path, layout.blob_path(&digest)).unwrap();
    // Config and manifest with the extra layer, by hand.
    let mut config: Value = serde_json::from_slice(&built.config).unwrap();
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(Value::String(digest.to_string()));
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = Digest::sha256_of(&config);
    fs::write(layout.blob_path(&config_digest), &config).unwrap();
    let mut manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
    manifest["config"]["digest"] = Value::String(config_digest.to_string());
    manifest["config"]["size"] = config.len().into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest.to_string(),
            "size": size,
        }));
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = Digest::sha256_of(&manifest);
    fs::write(layout.blob_path(&manifest_digest), &manifest).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": crate::oci_image::OCI_MANIFEST,
        "digest": manifest_digest.to_string(),
        "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
    reg.push_oci_layout(dir, repository, "v1");
}

#[test]
fn registry_stopped_mid_pull_fails_cleanly() {
    let env = Env::new();
    let mut reg = TestRegistry::start();
    push_with_huge_layer(&reg, &env.path("layout"), "test/huge", 256);
    let r = format!("{}/test/huge:v1", reg.host());
    let before = env.state();
    let child = pull_until_downloading(&env, &r);
    reg.stop();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&r), "{stderr}");
    assert!(stderr.contains(&reg.host()), "{stderr}");
    env.assert_unchanged(&before);
}

#[test]
fn image_without_kernel_fails_cleanly() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let image = ImageBuilder::new(host_and_other_arch().0)
        .layer(LayerBuilder::new().file("etc/hostname", "x\n"))
        .layer(LayerBuilder::new().file("boot/initrd.img", "initrd only\n"));
    push(&reg, &env.path("layout"), "test/nokernel", "v1", &image);
    let before = env.state();
    let r = format!("{}/test/nokernel:v1", reg.host());
    let out = env.run(&["pull", &r]).fails();
    assert!(out.stderr.contains(&r), "{}", out.stderr);
    assert!(out.stderr.contains("no kernel"), "{}", out.stderr);
    env.assert_unchanged(&before);
    assert!(env.list().is_empty());
}

/// A tar written header by header, so hostile names the tar crate refuses can be written.
struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn entry(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let old = h.as_old_mut();
        assert!(name.len() < old.name.len());
        old.name.fill(0);
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            h.set_link_name_literal(link).unwrap();
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, None, data)
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Every path under `dir` whose file name is `name`.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_name() == name {
                found.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    found
}

#[test]
fn hostile_layer_tars_are_refused_and_write_nothing_outside() {
    let env = Env::new();
    let outside = env.path("outside");
    fs::create_dir(&outside).unwrap();
    let victim = env.path("victim");
    fs::write(&victim, "precious\n").unwrap();
    let outside_s = outside.to_str().unwrap();
    let victim_s = victim.to_str().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            {
                let mut t = RawTar::new();
                t.file("etc/hostname", b"x\n")
                    .file("../../../../escaped-marker", b"pwned\n");
                t.finish()
            },
            "../../../../escaped-marker",
        ),
        (
            "symlink",
            {
                let mut t = RawTar::new();
                t.entry("evil", tar::EntryType::Symlink, Some(outside_s), b"")
                    .file("evil/escaped-marker", b"pwned\n");
                t.finish()
            },
            "evil/escaped-marker",
        ),
        (
            "hardlink",
            {
                let mut t = RawTar::new();
                t.entry("escaped-marker", tar::EntryType::Link, Some(victim_s), b"");
                t.finish()
            },
            "escaped-marker",
        ),
        (
            "hardlink-via-symlink",
            {
                let mut t = RawTar::new();
                t.entry(
                    "up",
                    tar::EntryType::Symlink,
                    Some(env.td.path().to_str().unwrap()),
                    b"",
                )
                .entry(
                    "escaped-marker",
                    tar::EntryType::Link,
                    Some("up/victim"),
                    b"",
                );
                t.finish()
            },
            "escaped-marker",
        ),
    ];
    // A good image first, so "index unchanged" compares against a real index.
    let mut layout = OciLayout::create(&env.path("layout"));
    layout.add_image("v1", &sample());
    env.run(&["import", "good", env.path("layout").to_str().unwrap()])
        .ok();
    for (name, bytes, entry) in cases {
        let tar = env.path(&format!("{name}.tar"));
        fs::write(&tar, &bytes).unwrap();
        let before = env.state();
        let out = env.run(&["import", name, tar.to_str().unwrap()]).fails();
        assert!(out.stderr.contains(name), "{name}: {}", out.stderr);
        assert!(out.stderr.contains(entry), "{name}: {}", out.stderr);
        env.assert_unchanged(&before);
        assert_eq!(
            crate::cli_support::names(&outside),
            Vec::<String>::new(),
            "{name}"
        );
        let escaped: Vec<PathBuf> = find_named(env.td.path(), "escaped-marker");
        assert!(escaped.is_empty(), "{name}: {escaped:?}");
        let m = fs::metadata(&victim).unwrap();
        assert_eq!(m.nlink(), 1, "{name}: victim got a hard link");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    }
    assert_eq!(env.list().len(), 1);
}

/// Tar the layout directory as an oci-archive.
fn oci_archive(layout: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", layout).unwrap();
    b.into_inner().unwrap().sync_all().unwrap();
}

#[test]
fn import_from_layout_archive_and_layer_tars() {
    let env = Env::new();
    let mut layout = OciLayout::create(&env.path("layout"));
    let built = layout.add_image("v1", &sample());
    let out = env
        .run(&[
            "-o",
            "json",
            "import",
            "from-layout",
            env.path("layout").to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(digest_of(&out["id"]), built.manifest_digest);
    let archive = env.path("image.oci.tar");
    oci_archive(&env.path("layout"), &archive);
    let out = env
        .run(&[
            "-o",
            "json",
            "import",
            "from-archive",
            archive.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(digest_of(&out["id"]), built.manifest_digest);
    let a = env.config("from-layout");
    let b = env.config("from-archive");
    assert_eq!(a["storage"], b["storage"]);
    assert_eq!(a["boot"], b["boot"]);
    assert_eq!(env.temp_debris(), Vec::<String>::new());

    // Layer tars, gzip and plain mixed, in order.
    let files: Vec<PathBuf> = built
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = env.path(&format!("layer{i}.tar"));
            fs::write(&p, if i == 1 { &l.tar } else { &l.gz }).unwrap();
            p
        })
        .collect();
    let mut args = vec!["import", "from-tars"];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    env.run(&args).ok();
    let c = env.config("from-tars");
    let keys: Vec<Digest> = files
        .iter()
        .map(|p| Digest::sha256_of(&fs::read(p).unwrap()))
        .collect();
    let expect: Vec<PathBuf> = keys
        .iter()
        .map(|d| env.root.join(format!("oci/blobs/{}.erofs", d.hex())))
        .collect();
    assert_eq!(storage_paths(&c), expect);
    // The plain tar is another blob; the gzip ones are shared with the layout import.
    assert_eq!(env.blobs().len(), 4);
    let host = host_and_other_arch().0;
    let kernel = c["boot"]["kernel_path"].as_str().unwrap();
    assert_eq!(
        fs::read_to_string(kernel).unwrap(),
        format!("fake kernel for {host}\n")
    );
    let extracted = env.path("x-plain");
    extract(&expect[1], &extracted);
    assert_eq!(
        fs::read_to_string(extracted.join("boot/initrd.img")).unwrap(),
        format!("fake initrd for {host}\n")
    );
    env.run(&["verify"]).ok();
}

#[test]
fn the_upper_layer_boot_files_win() {
    let env = Env::new();
    let lower = LayerBuilder::new()
        .file("boot/vmlinuz", "lower kernel\n")
        .file("boot/initrd.img", "lower initrd\n")
        .build();
    let middle = LayerBuilder::new().file("etc/hostname", "m\n").build();
    let upper = LayerBuilder::new()
        .file("vmlinuz-6.9", "upper kernel\n")
        .build();
    let mut args = vec!["import".to_owned(), "boots".to_owned()];
    for (i, l) in [&lower, &middle, &upper].iter().enumerate() {
        let p = env.path(&format!("l{i}.tar.gz"));
        fs::write(&p, &l.gz).unwrap();
        args.push(p.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(&args).ok();
    let info = env.run(&["-o", "json", "inspect", "boots"]).ok().json();
    let c = env.config("boots");
    let kernel = PathBuf::from(c["boot"]["kernel_path"].as_str().unwrap());
    let initrd = PathBuf::from(c["boot"]["initrd_path"].as_str().unwrap());
    assert_eq!(fs::read_to_string(&kernel).unwrap(), "upper kernel\n");
    assert_eq!(fs::read_to_string(&initrd).unwrap(), "lower initrd\n");
    assert!(kernel.starts_with(env.root.join("oci/boot").join(upper.digest.hex())));
    assert!(initrd.starts_with(env.root.join("oci/boot").join(lower.digest.hex())));
    let index: Value = serde_json::from_slice(&env.index().unwrap()).unwrap();
    // An import name that parses as a reference is stored under its canonical form.
    let e = &index["images"]["docker.io/library/boots:latest"];
    assert_eq!(digest_of(&e["kernel_layer"]), upper.digest);
    assert_eq!(digest_of(&e["initrd_layer"]), lower.digest);
    assert_eq!(info["name"], "docker.io/library/boots:latest");
}

#[test]
fn two_processes_pulling_one_image_share_the_work() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let built = push(
        &reg,
        &env.path("layout"),
        "test/race",
        "v1",
        &sample_with_big_layer(2),
    );
    let r = format!("{}/test/race:v1", reg.host());
    let spawn = || {
        Command::new(crate::cli_support::bin())
            .arg("--root")
            .arg(&env.root)
            .args(["pull", &r])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut expect: Vec<String> = built
        .layers
        .iter()
        .map(|l| format!("{}.erofs", l.digest.hex()))
        .collect();
    expect.sort();
    assert_eq!(env.blobs(), expect);
    let list = env.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(digest_of(&list[0]["id"]), built.manifest_digest);
    assert_eq!(env.temp_debris(), Vec::<String>::new());
    env.run(&["verify"]).ok();
}

/// A gc interrupted while removing an unreferenced layer can leave its boot dir half deleted
/// (here: `vmlinuz` gone, `initrd.img` kept) without the blob. Pulling an image with that layer
/// again used to publish the new blob beside the stale boot dir (the rename of the new boot dir
/// found the old one and kept it), so the entry pointed at a kernel that was not there and
/// `config` failed. The stale boot dir is now replaced under the digest lock.
#[test]
fn half_deleted_boot_dir_is_replaced_on_the_next_pull() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let built = push(&reg, &env.path("layout"), "test/boot", "v1", &sample());
    let r = format!("{}/test/boot:v1", reg.host());
    env.run(&["pull", &r]).ok();
    env.run(&["rm", &r]).ok();
    let boot_layer = built.layers[1].digest.hex();
    let boot_dir = env.root.join("oci/boot").join(&boot_layer);
    fs::remove_file(env.root.join(format!("oci/blobs/{boot_layer}.erofs"))).unwrap();
    fs::remove_file(boot_dir.join("vmlinuz")).unwrap();

    env.run(&["pull", &r]).ok();
    let c = env.config(&r);
    let kernel = c["boot"]["kernel_path"].as_str().unwrap();
    let host = host_and_other_arch().0;
    assert_eq!(
        fs::read_to_string(kernel).unwrap(),
        format!("fake kernel for {host}\n")
    );
    env.run(&["verify", &r]).ok();
    assert_eq!(env.temp_debris(), Vec::<String>::new());
}

#[test]
fn damaged_blob_is_stored_again_by_the_next_pull() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let built = push(&reg, &env.path("layout"), "test/damaged", "v1", &sample());
    let r = format!("{}/test/damaged:v1", reg.host());
    env.run(&["pull", &r]).ok();
    let blob = env
        .root
        .join(format!("oci/blobs/{}.erofs", built.layers[0].digest.hex()));
    let len = fs::metadata(&blob).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = env.run(&["config", &r]).fails();
    assert!(out.stderr.contains("bytes, expected"), "{}", out.stderr);
    let again = env.run(&["pull", &r]).ok();
    assert!(!again.stdout.contains("already stored"), "{}", again.stdout);
    assert_eq!(fs::metadata(&blob).unwrap().len(), len);
    env.config(&r);
    env.run(&["verify", "--sha256", &r]).ok();
}

#[test]
fn gc_after_rm_reclaims_layers_and_boot_dirs_then_pull_restores() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let built = push(&reg, &env.path("layout"), "test/gc", "v1", &sample());
    let r = format!("{}/test/gc:v1", reg.host());
    env.run(&["pull", &r]).ok();
    // Still referenced: nothing is collected.
    env.run(&["gc", "--grace", "0"]).ok();
    assert_eq!(env.blobs().len(), 3);
    env.run(&["rm", &r]).ok();
    env.run(&["gc", "--grace", "0"]).ok();
    assert_eq!(env.blobs(), Vec::<String>::new());
    assert_eq!(
        crate::cli_support::names(&env.root.join("oci/boot")),
        Vec::<String>::new()
    );
    env.run(&["pull", &r]).ok();
    let c = env.config(&r);
    assert_eq!(digest_of(&c["image_digest"]), built.manifest_digest);
    env.run(&["verify", &r]).ok();
}

#[test]
fn token_auth_registry_refuses_wrong_credentials_and_accepts_right_ones() {
    let env = Env::new();
    let reg = TestRegistry::start_with_token_auth("bob", "t0ken");
    let built = push(&reg, &env.path("layout"), "test/tok", "v1", &sample());
    let r = format!("{}/test/tok:v1", reg.host());
    let before = env.state();
    let out = run_with_docker_config(&env, &reg.host(), "bob", "nope", &["pull", &r]).fails();
    assert!(out.stderr.contains(&r), "{}", out.stderr);
    assert!(out.stderr.contains("not authorized"), "{}", out.stderr);
    env.assert_unchanged(&before);
    run_with_docker_config(&env, &reg.host(), "bob", "t0ken", &["pull", &r]).ok();
    assert_eq!(
        digest_of(&env.config(&r)["image_digest"]),
        built.manifest_digest
    );
}

/// Start `imgstore pull r` and wait until its download has written bytes to oci/temp.
fn pull_until_downloading(env: &Env, r: &str) -> std::process::Child {
    let mut child = Command::new(crate::cli_support::bin())
        .arg("--root")
        .arg(&env.root)
        .args(["pull", r])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = env.root.join("oci/temp");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !has_partial_download(&temp) {
        assert!(Instant::now() < deadline, "no download started");
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "pull ended before the download started: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child
}

#[test]
fn interrupted_pull_removes_its_temp_files() {
    let env = Env::new();
    let reg = TestRegistry::start();
    push_with_huge_layer(&reg, &env.path("layout"), "test/int", 256);
    let r = format!("{}/test/int:v1", reg.host());
    let before = env.state();
    let child = pull_until_downloading(&env, &r);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 2), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    env.assert_unchanged(&before);
}

/// Images may repeat a layer (empty layers are common): one blob, one disk per occurrence.
#[test]
fn repeated_layer_is_stored_once_and_listed_twice() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let empty = LayerBuilder::new().dir("tmp");
    let image = ImageBuilder::new(host_and_other_arch().0)
        .layer(empty.clone())
        .layer(
            LayerBuilder::new()
                .file("boot/vmlinuz", "k\n")
                .file("boot/initrd.img", "i\n"),
        )
        .layer(empty);
    let built = push(&reg, &env.path("layout"), "test/repeat", "v1", &image);
    assert_eq!(built.layers[0].digest, built.layers[2].digest);
    let r = format!("{}/test/repeat:v1", reg.host());
    env.run(&["pull", &r]).ok();
    let c = env.config(&r);
    let paths = storage_paths(&c);
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[0], paths[2]);
    assert_eq!(env.blobs().len(), 2);
    env.run(&["verify", &r]).ok();
    assert_eq!(env.temp_debris(), Vec::<String>::new());
}

/// Two images sharing their base and boot layers, pulled at once by two processes: the shared
/// layers are converted once (digest locks), both entries are complete.
#[test]
fn two_processes_pulling_images_that_share_layers() {
    let env = Env::new();
    let reg = TestRegistry::start();
    let a = push(
        &reg,
        &env.path("a"),
        "test/a",
        "v1",
        &sample_with_big_layer(2),
    );
    let b = push(
        &reg,
        &env.path("b"),
        "test/b",
        "v1",
        &sample().layer(LayerBuilder::new().file("etc/b", "b\n")),
    );
    let (ra, rb) = (
        format!("{}/test/a:v1", reg.host()),
        format!("{}/test/b:v1", reg.host()),
    );
    let spawn = |r: &str| {
        Command::new(crate::cli_support::bin())
            .arg("--root")
            .arg(&env.root)
            .args(["pull", r])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(&ra), spawn(&rb)];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut expect: Vec<String> = a
        .layers
        .iter()
        .chain(&b.layers)
        .map(|l| format!("{}.erofs", l.digest.hex()))
        .collect();
    expect.sort();
    expect.dedup();
    assert_eq!(expect.len(), 5);
    assert_eq!(env.blobs(), expect);
    assert_eq!(
        digest_of(&env.config(&ra)["image_digest"]),
        a.manifest_digest
    );
    assert_eq!(
        digest_of(&env.config(&rb)["image_digest"]),
        b.manifest_digest
    );
    assert_eq!(env.list().len(), 2);
    assert_eq!(env.temp_debris(), Vec::<String>::new());
    env.run(&["verify"]).ok();
}
