//! Pulls of EROFS-native layers (`application/vnd.erofs.layer.v1`) from a real
//! `docker-registry` on 127.0.0.1: mixed with tar layers they work; a layer a Linux 5.15 guest
//! could not mount (compressed, or an unknown feature bit) is refused by name and nothing is
//! stored.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::artifact::{put_manifest, upload_blob};
use crate::cli_support::{names, run};
use crate::oci_image::{host_and_other_arch, ImageBuilder, LayerBuilder, OciLayout};
use crate::registry_server::TestRegistry;

const EROFS: &str = "application/vnd.erofs.layer.v1";

/// `mkfs.erofs` of a directory holding `boot/vmlinuz`, `boot/initrd.img` and a file, with
/// `extra` options (e.g. `-zlz4`).
fn mkfs(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz"), "native kernel\n".repeat(500)).unwrap();
    std::fs::write(tree.join("boot/initrd.img"), "native initrd\n".repeat(500)).unwrap();
    std::fs::write(tree.join("hello"), "hello from an EROFS layer\n").unwrap();
    let img = dir.join(format!("layer{}.erofs", extra.len()));
    let out = Command::new("mkfs.erofs")
        .args(extra)
        .arg(&img)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(img).unwrap()
}

/// Push an image whose layers are `tars` (gzip tar layers) then `erofs` (EROFS-native).
fn push_image(reg: &TestRegistry, repo: &str, tag: &str, tars: &[Vec<u8>], erofs: &[Vec<u8>]) {
    let host = reg.host();
    let mut layers: Vec<Value> = tars
        .iter()
        .map(|t| {
            upload_blob(
                &host,
                repo,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                t,
            )
        })
        .collect();
    layers.extend(erofs.iter().map(|e| upload_blob(&host, repo, EROFS, e)));
    let config = json!({
        "architecture": host_and_other_arch().0,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let config = upload_blob(
        &host,
        repo,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let m = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    put_manifest(&host, repo, tag, &m);
}

#[test]
fn mixed_tar_and_erofs_layers_pull_and_boot_files_come_from_the_erofs_layer() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let base = LayerBuilder::new()
        .dir("etc")
        .file("etc/hostname", "mixed\n")
        .build();
    let erofs = mkfs(td.path(), &[]);
    push_image(
        &reg,
        "mix/app",
        "v1",
        std::slice::from_ref(&base.gz),
        std::slice::from_ref(&erofs),
    );
    let reference = format!("{}/mix/app:v1", reg.host());
    run(&root, &["pull", &reference]).ok();
    let c = run(&root, &["-o", "json", "config", &reference])
        .ok()
        .json()[0]
        .clone();
    assert_eq!(c["storage"].as_array().unwrap().len(), 2);
    let upper = c["storage"][1]["path"].as_str().unwrap();
    assert_eq!(
        std::fs::read(upper).unwrap(),
        erofs,
        "stored as it was pushed"
    );
    let kernel = c["boot"]["kernel_path"].as_str().unwrap();
    assert_eq!(
        std::fs::read(kernel).unwrap(),
        "native kernel\n".repeat(500).as_bytes()
    );
    let initrd = c["boot"]["initrd_path"].as_str().unwrap();
    assert_eq!(
        std::fs::read(initrd).unwrap(),
        "native initrd\n".repeat(500).as_bytes()
    );
    run(&root, &["verify"]).ok();
}

fn assert_refused(reg: &TestRegistry, td: &Path, repo: &str, layer: Vec<u8>, says: &str) {
    let root = td.join(repo.replace('/', "-"));
    // A valid tar base below, so the refusal is the EROFS layer's own.
    let mut layout = OciLayout::create(&td.join(format!("{}-layout", repo.replace('/', "-"))));
    let built = layout.add_image("v1", &ImageBuilder::sample(host_and_other_arch().0));
    let tars: Vec<Vec<u8>> = built.layers.iter().map(|l| l.gz.clone()).collect();
    push_image(reg, repo, "v1", &tars, &[layer]);
    let r = run(&root, &["pull", &format!("{}/{repo}:v1", reg.host())]).fails();
    assert!(r.stderr.contains(says), "{}", r.stderr);
    assert!(names(&root.join("oci/blobs")).is_empty(), "nothing stored");
    assert!(
        !root.join("oci/db/images.json").exists() || {
            let v: Value =
                serde_json::from_slice(&std::fs::read(root.join("oci/db/images.json")).unwrap())
                    .unwrap();
            v["images"]
                .as_object()
                .is_none_or(serde_json::Map::is_empty)
        }
    );
}

#[test]
fn compressed_erofs_layer_is_refused_by_name() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let compressed = mkfs(td.path(), &["-zlz4"]);
    assert_refused(&reg, td.path(), "z/app", compressed, "compression");
}

#[test]
fn unknown_feature_bit_is_refused_by_name() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let mut img = mkfs(td.path(), &[]);
    // feature_incompat is at byte 80 of the superblock (offset 1024).
    img[1024 + 80 + 1] |= 0x40; // bit 0x4000
    assert_refused(
        &reg,
        td.path(),
        "u/app",
        img,
        "unknown incompatible feature bit 0x4000",
    );
}

#[test]
fn erofs_layer_with_an_xattr_on_many_files_pulls() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let tree = td.path().join("tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz"), "k\n").unwrap();
    std::fs::write(tree.join("boot/initrd.img"), "i\n").unwrap();
    // mkfs.erofs shares an xattr value more files carry than its tolerance (`-x`, default 2).
    for i in 0..8 {
        let f = tree.join(format!("f{i}"));
        std::fs::write(&f, format!("{i}\n")).unwrap();
        xattr::set(&f, "user.note", b"the same value everywhere").unwrap();
    }
    let img = td.path().join("x.erofs");
    let out = Command::new("mkfs.erofs")
        .arg(&img)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = std::fs::read(img).unwrap();
    push_image(&reg, "x/app", "v1", &[], std::slice::from_ref(&img));
    let reference = format!("{}/x/app:v1", reg.host());
    run(&root, &["pull", &reference]).ok();
    let c = run(&root, &["-o", "json", "config", &reference])
        .ok()
        .json()[0]
        .clone();
    let stored = c["storage"][0]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(stored).unwrap(), img);
}
