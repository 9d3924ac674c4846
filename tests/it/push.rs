//! `imgstore push` against a real `docker-registry` on 127.0.0.1, and back: push from one store
//! root, pull into another, and the two agree (`verify`, `config`, the blobs byte for byte). A
//! second push of the same image uploads no blob.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::cli_support::{run, Run};
use crate::oci_image::{host_and_other_arch, ImageBuilder, OciLayout};
use crate::registry_server::TestRegistry;

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn push(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json", "push"];
    all.extend_from_slice(args);
    run(root, &all).ok().json()
}

fn results(out: &Value) -> Vec<String> {
    out["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["result"].as_str().unwrap().to_owned())
        .collect()
}

/// `config` JSON with the store root taken out of the paths, to compare two roots.
fn config(root: &Path, id: &str, fw: &Path) -> Value {
    let r: Run = run(
        root,
        &[
            "-o",
            "json",
            "config",
            id,
            "--firmware",
            fw.to_str().unwrap(),
        ],
    )
    .ok();
    let text = r.stdout.replace(root.to_str().unwrap(), "<root>");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    // The name it is stored under differs by design (a file name vs the pushed reference).
    v[0]["image"] = Value::Null;
    v
}

#[test]
fn cloud_image_round_trips_in_parts_and_a_second_push_uploads_nothing() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let (a, b) = (td.path().join("a"), td.path().join("b"));
    let raw = td.path().join("disk.raw");
    std::fs::write(&raw, pattern(3 * MIB + 12345, 7)).unwrap();
    let qcow2 = td.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(st.success());
    let imported = run(
        &a,
        &["-o", "json", "import", "disk", qcow2.to_str().unwrap()],
    )
    .ok()
    .json();
    let id = imported["id"].as_str().unwrap().to_owned();
    let reference = format!("{}/vm/disk:v1", reg.host());

    // Parts of 1 MiB, each uploaded in chunks of 256 KiB.
    let args = [
        "disk",
        &reference,
        "--part-size",
        "1M",
        "--chunk-size",
        "256K",
    ];
    let first = push(&a, &args);
    assert_eq!(first["type"], "cloudimg");
    let layers = &first["blobs"].as_array().unwrap()[1..];
    assert!(layers.len() >= 3, "{first}");
    assert!(layers
        .iter()
        .all(|l| l["media_type"] == "application/vnd.cocoonstack.disk.qcow2.part"));
    assert!(results(&first).iter().all(|r| r == "uploaded"), "{first}");

    let second = push(&a, &args);
    assert!(results(&second).iter().all(|r| r == "present"), "{second}");
    assert_eq!(second["manifest_digest"], first["manifest_digest"]);

    let pulled = run(&b, &["-o", "json", "pull", &reference]).ok().json();
    assert_eq!(pulled[0]["type"], "cloudimg");
    assert_eq!(pulled[0]["id"], id.as_str());
    let blob = |root: &Path| {
        std::fs::read(
            root.join("cloudimg/blobs")
                .join(format!("{}.qcow2", &id[7..])),
        )
        .unwrap()
    };
    assert_eq!(blob(&a), blob(&b));
    assert_eq!(blob(&b), std::fs::read(&qcow2).unwrap());
    run(&b, &["verify", &reference]).ok();
    let fw = td.path().join("CLOUDHV.fd");
    std::fs::write(&fw, b"firmware").unwrap();
    assert_eq!(config(&a, &id, &fw), config(&b, &id, &fw));

    // From the root that pulled it, to another repository of the same registry: every blob is
    // mounted from the repository it came from, none uploaded.
    let copy = format!("{}/vm/copy:v1", reg.host());
    let mounted = push(&b, &[&reference, &copy, "--part-size", "1M"]);
    assert!(
        results(&mounted).iter().all(|r| r == "mounted"),
        "{mounted}"
    );
    assert_eq!(mounted["manifest_digest"], first["manifest_digest"]);
}

/// The files a `config` names (layers, kernel, initrd), read, in order.
fn config_files(c: &Value) -> Vec<Vec<u8>> {
    let mut paths: Vec<String> = c["storage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect();
    paths.push(c["boot"]["kernel_path"].as_str().unwrap().to_owned());
    paths.push(c["boot"]["initrd_path"].as_str().unwrap().to_owned());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn oci_image_round_trips_as_erofs_native_layers_stored_as_they_are() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let (a, b) = (td.path().join("a"), td.path().join("b"));
    let mut layout = OciLayout::create(&td.path().join("layout"));
    layout.add_image("v1", &ImageBuilder::sample(host_and_other_arch().0));
    reg.push_oci_layout(&layout.dir, "src/app", "v1");
    let source = format!("{}/src/app:v1", reg.host());
    run(&a, &["pull", &source]).ok();

    let target = format!("{}/dst/app:erofs", reg.host());
    let first = push(&a, &[&source, &target]);
    assert_eq!(first["type"], "oci");
    let blobs = first["blobs"].as_array().unwrap();
    assert_eq!(
        blobs[0]["media_type"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert!(blobs[1..]
        .iter()
        .all(|l| l["media_type"] == "application/vnd.erofs.layer.v1"));
    assert!(results(&first).iter().all(|r| r == "uploaded"), "{first}");
    let second = push(&a, &[&source, &target]);
    assert!(results(&second).iter().all(|r| r == "present"), "{second}");

    let pulled = run(&b, &["-o", "json", "pull", &target]).ok().json();
    assert_eq!(pulled[0]["type"], "oci");
    // Stored exactly as pushed: every layer file of b is named by, and hashes to, the digest
    // the manifest gives it.
    for l in &blobs[1..] {
        let d = l["digest"].as_str().unwrap();
        let stored = std::fs::read(b.join("oci/blobs").join(format!("{}.erofs", &d[7..]))).unwrap();
        assert_eq!(imgstore::Digest::sha256_of(&stored).to_string(), d);
    }
    run(&a, &["verify"]).ok();
    run(&b, &["verify"]).ok();
    let cfg = |root: &Path, r: &str| run(root, &["-o", "json", "config", r]).ok().json()[0].clone();
    let (ca, cb) = (cfg(&a, &source), cfg(&b, &target));
    assert_eq!(config_files(&ca), config_files(&cb));
    assert_eq!(ca["storage"].as_array().unwrap().len(), 3);
}

/// `imgstore ARGS` with a docker config granting `user`/`password` on `host`.
pub(crate) fn run_as(
    root: &Path,
    dir: &Path,
    host: &str,
    creds: Option<(&str, &str)>,
    args: &[&str],
) -> Run {
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auths = creds.map_or(
        serde_json::json!({}),
        |(u, p)| serde_json::json!({ host: { "username": u, "password": p } }),
    );
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({ "auths": auths }).to_string(),
    )
    .unwrap();
    let out = Command::new(crate::cli_support::bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("DOCKER_CONFIG", &docker)
        .env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn push_authenticates_with_token_and_basic_auth_and_refuses_without() {
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let disk = td.path().join("disk.raw");
    std::fs::write(&disk, pattern(MIB, 9)).unwrap();
    run(&root, &["import", "disk", disk.to_str().unwrap()]).ok();
    for reg in [
        TestRegistry::start_with_token_auth("alice", "s3cret"),
        TestRegistry::start_with_auth("alice", "s3cret"),
    ] {
        let host = reg.host();
        let target = format!("{host}/team/disk:v1");
        let r = run_as(&root, td.path(), &host, None, &["push", "disk", &target]).fails();
        assert!(r.stderr.contains("not authorized"), "{}", r.stderr);
        let creds = Some(("alice", "s3cret"));
        run_as(&root, td.path(), &host, creds, &["push", "disk", &target]).ok();
        let other = td.path().join(format!("pulled-{}", reg.port()));
        let pulled = run_as(
            &other,
            td.path(),
            &host,
            creds,
            &["-o", "json", "pull", &target],
        )
        .ok()
        .json();
        assert_eq!(pulled[0]["type"], "cloudimg");
    }
}
