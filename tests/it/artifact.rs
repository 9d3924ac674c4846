//! `imgstore pull` of cloud images a registry holds as cocoon os-image artifacts, against a
//! real `docker-registry` on 127.0.0.1. The artifacts are uploaded here with the plain
//! distribution API (monolithic blob uploads, manifest PUT), parts in shuffled order, as
//! cocoon's tooling or ORAS would leave them. Every refusal also checks nothing was stored.

use std::path::{Path, PathBuf};
use std::process::Command;

use imgstore::Digest;
use serde_json::{json, Value};

use crate::cli_support::{names, run, Run};
use crate::registry_server::TestRegistry;

const MIB: usize = 1 << 20;
const OS_IMAGE: &str = "application/vnd.cocoonstack.os-image.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const TITLE: &str = "org.opencontainers.image.title";

/// Upload `bytes` as a blob of `repo` (POST, then one PUT with the digest) and describe it.
pub fn upload_blob(host: &str, repo: &str, media_type: &str, bytes: &[u8]) -> Value {
    let digest = Digest::sha256_of(bytes);
    let start = ureq::post(format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .send_empty()
        .expect("start upload");
    assert_eq!(start.status().as_u16(), 202);
    let location = start.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        format!("http://{host}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = ureq::put(format!("{location}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .send(bytes)
        .expect("finish upload");
    assert_eq!(done.status().as_u16(), 201);
    json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
}

/// PUT `manifest` as `repo:tag`; returns its digest.
pub fn put_manifest(host: &str, repo: &str, tag: &str, manifest: &Value) -> Digest {
    let bytes = serde_json::to_vec(manifest).unwrap();
    let media = manifest["mediaType"].as_str().unwrap().to_owned();
    let r = ureq::put(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", &media)
        .send(&bytes[..])
        .expect("put manifest");
    assert_eq!(r.status().as_u16(), 201);
    Digest::sha256_of(&bytes)
}

/// `len` bytes with a recognisable non-zero pattern varied by `seed`.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// `raw` converted to qcow2 v3.
fn qcow2_of(raw: &[u8], dir: &Path) -> Vec<u8> {
    let src = dir.join("src.raw");
    let out = dir.join("src.qcow2");
    std::fs::write(&src, raw).unwrap();
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

/// An artifact whose disk is `disk` cut into `parts` pieces of layer type `disk_type`
/// (`.part` added when there are several), plus a checksum layer; parts uploaded and listed in
/// shuffled order. `kind: None` puts the type in the config's media type instead.
struct Artifact<'a> {
    kind: Option<&'a str>,
    config_type: &'a str,
    disk_type: &'a str,
    parts: usize,
}

impl Artifact<'_> {
    fn push(&self, reg: &TestRegistry, repo: &str, tag: &str, disk: &[u8]) -> (Digest, Vec<Value>) {
        let host = reg.host();
        let config = upload_blob(&host, repo, self.config_type, b"{}");
        let chunk = disk.len().div_ceil(self.parts);
        let mut parts: Vec<(usize, &[u8])> = disk.chunks(chunk).enumerate().collect();
        // Shuffled: uploaded last-first-middle, listed in that order too.
        parts.rotate_left(self.parts / 2);
        parts.reverse();
        let mut layers = Vec::new();
        for (i, bytes) in parts {
            let (media, title) = if self.parts > 1 {
                (
                    format!("{}.part", self.disk_type),
                    format!("disk.part.{i:03}"),
                )
            } else {
                (self.disk_type.to_owned(), "disk.img".to_owned())
            };
            let mut d = upload_blob(&host, repo, &media, bytes);
            d["annotations"] = json!({ TITLE: title });
            layers.push(d);
        }
        let mut sums = upload_blob(&host, repo, "text/plain", b"0000  disk.img\n");
        sums["annotations"] = json!({ TITLE: "SHA256SUMS" });
        layers.insert(1.min(layers.len()), sums);
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        if let Some(t) = self.kind {
            m["artifactType"] = json!(t);
        }
        (put_manifest(&host, repo, tag, &m), layers)
    }
}

fn cloud_blobs(root: &Path) -> Vec<String> {
    names(&root.join("cloudimg/blobs"))
}

fn stored_blob(root: &Path, id: &str) -> PathBuf {
    root.join("cloudimg/blobs")
        .join(format!("{}.qcow2", id.trim_start_matches("sha256:")))
}

fn debris(root: &Path) -> Vec<String> {
    names(&root.join("cloudimg/temp"))
        .into_iter()
        .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock"))
        .collect()
}

fn pull(root: &Path, reference: &str) -> Run {
    run(root, &["-o", "json", "pull", reference])
}

/// Whether the guest sees the same bytes in `stored` (qcow2) as in `raw`.
fn same_disk(stored: &Path, raw: &[u8], dir: &Path) -> bool {
    let src = dir.join("expected.raw");
    std::fs::write(&src, raw).unwrap();
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(stored)
        .arg(&src)
        .status()
        .unwrap()
        .success()
}

#[test]
fn one_part_qcow2_artifact_pulls_as_a_cloud_image_and_again_downloads_nothing() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let raw = pattern(3 * MIB, 1);
    let qcow2 = qcow2_of(&raw, td.path());
    let art = Artifact {
        kind: Some(OS_IMAGE),
        config_type: EMPTY,
        disk_type: "application/vnd.cocoonstack.disk.qcow2",
        parts: 1,
    };
    let (_, layers) = art.push(&reg, "os/ubuntu", "24.04", &qcow2);
    let reference = format!("{}/os/ubuntu:24.04", reg.host());

    let out = pull(&root, &reference).ok().json();
    assert_eq!(out[0]["type"], "cloudimg", "{out}");
    assert_eq!(out[0]["reused"], false);
    let id = out[0]["id"].as_str().unwrap().to_owned();
    // A qcow2 v3 is stored as it is: the very bytes of the layer.
    assert_eq!(std::fs::read(stored_blob(&root, &id)).unwrap(), qcow2);
    let fw = td.path().join("CLOUDHV.fd");
    std::fs::write(&fw, b"firmware").unwrap();
    let fw = fw.to_str().unwrap();
    let config = run(
        &root,
        &["-o", "json", "config", &reference, "--firmware", fw],
    )
    .ok()
    .json();
    assert_eq!(config[0]["image_type"], "cloudimg", "{config}");
    assert_eq!(config[0]["image_digest"], id.as_str());
    assert_eq!(
        config[0]["storage"][0]["path"],
        stored_blob(&root, &id).to_str().unwrap()
    );
    run(&root, &["verify", &reference]).ok();

    // With the disk blob gone from the registry, a second pull can only succeed by
    // downloading nothing.
    for l in &layers {
        let d = Digest::parse(l["digest"].as_str().unwrap()).unwrap();
        std::fs::write(reg.blob_data_path(&d), b"gone").unwrap();
    }
    let again = pull(&root, &reference).ok().json();
    assert_eq!(again[0]["reused"], true, "{again}");
    assert_eq!(again[0]["id"], id.as_str());
}

#[test]
fn three_raw_parts_uploaded_shuffled_reassemble_in_title_order() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let raw = pattern(3 * MIB + 4096, 2);
    let art = Artifact {
        kind: Some(OS_IMAGE),
        config_type: EMPTY,
        disk_type: "application/vnd.cocoonstack.disk.raw",
        parts: 3,
    };
    art.push(&reg, "os/debian", "12", &raw);
    let reference = format!("{}/os/debian:12", reg.host());
    let out = pull(&root, &reference).ok().json();
    let id = out[0]["id"].as_str().unwrap();
    // The key is the sha256 of the reassembled disk; the stored blob is its qcow2 v3 form.
    assert_eq!(id, Digest::sha256_of(&raw).to_string());
    assert!(same_disk(&stored_blob(&root, id), &raw, td.path()));
    let list = run(&root, &["-o", "json", "list"]).ok().json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str().or(e["reference"].as_str()))
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("os/debian:12")),
        "canonical reference is the key: {list}"
    );
}

#[test]
fn windows_alias_in_the_config_media_type_is_a_cloud_image() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let raw = pattern(2 * MIB, 3);
    let qcow2 = qcow2_of(&raw, td.path());
    let art = Artifact {
        kind: None,
        config_type: "application/vnd.cocoonstack.windows-image.v1+json",
        disk_type: "application/vnd.cocoonstack.windows.disk.qcow2",
        parts: 3,
    };
    art.push(&reg, "win/server", "2022", &qcow2);
    let out = pull(&root, &format!("{}/win/server:2022", reg.host()))
        .ok()
        .json();
    let id = out[0]["id"].as_str().unwrap();
    assert_eq!(std::fs::read(stored_blob(&root, id)).unwrap(), qcow2);
}

#[test]
fn snapshot_artifact_is_refused_by_name_and_nothing_stored() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let art = Artifact {
        kind: Some("application/vnd.cocoonstack.snapshot.v1+json"),
        config_type: EMPTY,
        disk_type: "application/vnd.cocoonstack.disk.raw",
        parts: 1,
    };
    art.push(&reg, "vm/snap", "1", &pattern(MIB, 4));
    let r = pull(&root, &format!("{}/vm/snap:1", reg.host())).fails();
    assert!(
        r.stderr
            .contains("application/vnd.cocoonstack.snapshot.v1+json"),
        "{}",
        r.stderr
    );
    assert!(cloud_blobs(&root).is_empty());
    assert!(names(&root.join("oci/blobs")).is_empty());
}

#[test]
fn corrupted_part_is_a_digest_mismatch_and_stores_nothing() {
    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("root");
    let raw = pattern(3 * MIB, 5);
    let art = Artifact {
        kind: Some(OS_IMAGE),
        config_type: EMPTY,
        disk_type: "application/vnd.cocoonstack.disk.raw",
        parts: 3,
    };
    let (_, layers) = art.push(&reg, "os/bad", "1", &raw);
    // The middle part by title: same size, other bytes.
    let middle = layers
        .iter()
        .find(|l| l["annotations"][TITLE] == "disk.part.001")
        .unwrap();
    let d = Digest::parse(middle["digest"].as_str().unwrap()).unwrap();
    let path = reg.blob_data_path(&d);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let r = pull(&root, &format!("{}/os/bad:1", reg.host())).fails();
    assert!(r.stderr.contains("digest mismatch"), "{}", r.stderr);
    assert!(r.stderr.contains(&d.to_string()), "{}", r.stderr);
    assert!(cloud_blobs(&root).is_empty());
    assert!(
        !root.join("cloudimg/db/images.json").exists() || {
            let idx: Value = serde_json::from_slice(
                &std::fs::read(root.join("cloudimg/db/images.json")).unwrap(),
            )
            .unwrap();
            idx["images"]
                .as_object()
                .is_none_or(serde_json::Map::is_empty)
        }
    );
    assert_eq!(debris(&root), Vec::<String>::new());
}

/// A TCP forwarder from a free 127.0.0.1 port to the registry, keeping every byte clients send
/// it: the request heads of a pull (its GETs and HEADs have no bodies).
struct Recorder {
    port: u16,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(to: u16) -> Recorder {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let mut up = TcpStream::connect(("127.0.0.1", to)).unwrap();
                let (mut client_r, mut up_w) =
                    (client.try_clone().unwrap(), up.try_clone().unwrap());
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = client_r.read(&mut buf) {
                        if n == 0 || up_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = up_w.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up, &mut client);
                    let _ = client.shutdown(Shutdown::Write);
                });
            }
        });
        Recorder { port, sent }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request heads sent so far, lowercased.
    fn requests(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.sent.lock().unwrap()).to_lowercase();
        text.split("\r\n\r\n")
            .filter(|r| !r.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A disk part larger than one range (16 MiB) comes through the ranged downloader of URL
/// pulls: a 64 KiB probe, then guarded ranges (`If-Range`), each carrying the registry's
/// `Authorization` (basic auth here), counted by a forwarder in front of the registry.
#[test]
fn a_large_part_is_fetched_in_guarded_ranges_with_the_registry_auth() {
    let reg = TestRegistry::start_with_auth("alice", "s3cret");
    let td = tempfile::tempdir().unwrap();
    let (a, b) = (td.path().join("a"), td.path().join("b"));
    let disk = td.path().join("disk.qcow2");
    std::fs::write(&disk, qcow2_of(&pattern(40 * MIB, 11), td.path())).unwrap();
    let imported = run(
        &a,
        &["-o", "json", "import", "disk", disk.to_str().unwrap()],
    )
    .ok()
    .json();
    let id = imported["id"].as_str().unwrap().to_owned();
    let creds = Some(("alice", "s3cret"));
    let pushed = format!("{}/os/big:1", reg.host());
    crate::push::run_as(
        &a,
        td.path(),
        &reg.host(),
        creds,
        &["push", "disk", &pushed],
    )
    .ok();

    let proxy = Recorder::start(reg.port());
    let reference = format!("{}/os/big:1", proxy.host());
    let out = crate::push::run_as(
        &b,
        td.path(),
        &proxy.host(),
        creds,
        &["-o", "json", "pull", &reference],
    )
    .ok()
    .json();
    assert_eq!(out[0]["type"], "cloudimg", "{out}");
    assert_eq!(out[0]["id"].as_str(), Some(id.as_str()), "{out}");
    assert_eq!(
        std::fs::read(stored_blob(&b, &id)).unwrap(),
        std::fs::read(stored_blob(&a, &id)).unwrap()
    );
    let ranged: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains("\r\nrange: bytes="))
        .collect();
    assert!(
        ranged.len() >= 4,
        "a probe and at least 3 ranges: {ranged:#?}"
    );
    assert!(
        ranged.iter().any(|r| r.contains("range: bytes=0-65535")),
        "{ranged:#?}"
    );
    for r in &ranged {
        assert!(r.starts_with("get /v2/os/big/blobs/sha256:"), "{r}");
        assert!(r.contains("\r\nauthorization: basic "), "{r}");
    }
    assert!(
        ranged[1..].iter().all(|r| r.contains("\r\nif-range: ")),
        "every range after the probe is guarded: {ranged:#?}"
    );
    assert_eq!(debris(&b), Vec::<String>::new());
}
