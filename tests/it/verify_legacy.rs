//! `verify` of entries written by cocoon, which record no digest of the stored bytes: the size
//! checks their fields allow, `--sha256` against a cloud entry's `content_sum`, and digests
//! recorded on first use (`--record`) in `db/legacy-sums.json`, where a cocoon rewrite of
//! `images.json` cannot drop them.

use std::path::{Path, PathBuf};

use crate::cli_support::{cocoon_root, cocoon_sizes_match, run, Run};

const UBUNTU_LAYER: &str = "95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06";
const WIN11: &str = "fd51a7f883e77fca70c0f60543eef92520996dc4402b283be8e60d767f59f29f";

fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    cocoon_root(dir.path());
    cocoon_sizes_match(dir.path());
    dir
}

fn rows(r: &Run) -> Vec<serde_json::Value> {
    r.json().as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [serde_json::Value], path_end: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["path"].as_str().unwrap().ends_with(path_end))
        .unwrap_or_else(|| panic!("no row for {path_end}: {rows:?}"))
}

fn layer(dir: &Path, hex: &str) -> PathBuf {
    dir.join(format!("oci/blobs/{hex}.erofs"))
}

fn win11(dir: &Path) -> PathBuf {
    dir.join(format!("cloudimg/blobs/{WIN11}.qcow2"))
}

/// A truncated or empty blob of a cocoon-written entry was "unverifiable" and `verify` exited 0
/// while `config` refused it. Every check the entry's fields allow now runs: a cloud blob must
/// have the recorded size, oci files must exist and not be empty and add up to the recorded
/// size; anything else is a failure (exit 1).
#[test]
fn damaged_legacy_files_fail_verify() {
    let dir = root();
    let store = dir.path();
    run(store, &["verify"]).ok();

    // cloudimg: shorter than recorded, then empty.
    std::fs::write(win11(store), b"QFI\xfb").unwrap();
    let r = run(store, &["verify", "win11", "-o", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = rows(&r);
    assert_eq!(v[0]["status"], "truncated", "{v:?}");
    assert!(v[0]["detail"]
        .as_str()
        .unwrap()
        .contains("expected 9 bytes, found 4 bytes"));
    std::fs::write(win11(store), b"").unwrap();
    let r = run(store, &["verify", "win11", "-o", "json"]);
    assert_eq!(r.code, 1);
    assert_eq!(rows(&r)[0]["status"], "truncated");
    run(store, &["config", "win11"]).fails();

    // oci: an empty layer.
    let blob = layer(store, UBUNTU_LAYER);
    let original = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, b"").unwrap();
    let r = run(store, &["verify", "ubuntu:24.04", "-o", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = rows(&r);
    let l = row(&v, &format!("{UBUNTU_LAYER}.erofs"));
    assert_eq!(l["status"], "truncated", "{v:?}");
    assert!(l["detail"].as_str().unwrap().contains("empty"), "{l}");
    std::fs::write(&blob, &original).unwrap();
    run(store, &["verify", "ubuntu:24.04"]).ok();

    // oci: a missing kernel.
    let kernel = store.join(format!("oci/boot/{UBUNTU_LAYER}/vmlinuz"));
    std::fs::rename(&kernel, store.join("kernel.away")).unwrap();
    let r = run(store, &["verify", "ubuntu:24.04", "-o", "json"]);
    assert_eq!(r.code, 1);
    assert_eq!(row(&rows(&r), "/vmlinuz")["status"], "missing");
    std::fs::rename(store.join("kernel.away"), &kernel).unwrap();

    // oci: files that no longer add up to the recorded size (a layer grew by a byte).
    let mut grown = original.clone();
    grown.push(b'!');
    std::fs::write(&blob, &grown).unwrap();
    let r = run(store, &["verify", "ubuntu:24.04", "-o", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = rows(&r);
    let image = v
        .iter()
        .find(|r| r["role"] == "image")
        .expect("an image row");
    assert_eq!(image["status"], "corrupt");
    let detail = image["detail"].as_str().unwrap();
    assert!(
        detail.contains("add up to") && detail.contains("the index records"),
        "{detail}"
    );
    assert!(
        r.stderr.contains("1 image failed verification"),
        "{}",
        r.stderr
    );

    // An entry whose size is 0 makes no claim about the sum.
    let p = store.join("oci/db/images.json");
    let mut idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    idx["images"]["ubuntu:24.04"]["size"] = 0.into();
    std::fs::write(&p, serde_json::to_vec(&idx).unwrap()).unwrap();
    run(store, &["verify", "ubuntu:24.04"]).ok();
}

/// A cloud image cocoon stored as it was downloaded (a qcow2 v3 source) hashes to its
/// `content_sum`: with `--sha256` it is `ok`. One whose blob differs (converted at import)
/// stays `unverifiable` and is not a failure.
#[test]
fn legacy_cloud_blob_stored_as_downloaded_is_ok_with_sha256() {
    let dir = root();
    let store = dir.path();
    let bytes = b"QFI\xfb stored as downloaded".to_vec();
    let sum = imgstore::Digest::sha256_of(&bytes);
    std::fs::write(
        store.join(format!("cloudimg/blobs/{}.qcow2", sum.hex())),
        &bytes,
    )
    .unwrap();
    let p = store.join("cloudimg/db/images.json");
    let mut idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    idx["images"]["plain"] = serde_json::json!({
        "ref": "plain", "content_sum": sum.to_string(), "size": bytes.len(),
        "created_at": "2026-04-20T07:00:00+08:00"
    });
    std::fs::write(&p, serde_json::to_vec(&idx).unwrap()).unwrap();

    let r = run(store, &["verify", "plain", "-o", "json"]).ok();
    assert_eq!(rows(&r)[0]["status"], "unverifiable");
    let r = run(store, &["verify", "plain", "--sha256", "-o", "json"]).ok();
    let v = rows(&r);
    assert_eq!(v[0]["status"], "ok", "{v:?}");
    assert!(v[0]["detail"].as_str().unwrap().contains("content_sum"));
    let r = run(store, &["verify", "win11", "--sha256", "-o", "json"]).ok();
    assert_eq!(rows(&r)[0]["status"], "unverifiable");
}

/// `verify --record` records the digests of cocoon-written files that pass their checks (trust
/// on first use, said in the output) in `db/legacy-sums.json`; later runs check against them,
/// also after cocoon rewrites `images.json`. Bytes changed in place are `corrupt`; a file
/// replaced since (a new inode) is `unverifiable` again, never called corrupt.
#[test]
fn recorded_digests_catch_later_damage_and_survive_a_cocoon_rewrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = root();
    let store = dir.path();
    let oci_index = store.join("oci/db/images.json");
    let cloud_index = store.join("cloudimg/db/images.json");
    let (oci_before, cloud_before) = (
        std::fs::read(&oci_index).unwrap(),
        std::fs::read(&cloud_index).unwrap(),
    );

    let r = run(store, &["verify", "--record", "-o", "json"]).ok();
    let v = rows(&r);
    assert!(v.iter().all(|r| r["status"] == "recorded"), "{v:?}");
    assert!(v
        .iter()
        .all(|r| r["detail"].as_str().unwrap().contains("trust on first use")));
    assert!(r.stderr.contains("trust on first use"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(&oci_index).unwrap(),
        oci_before,
        "images.json untouched"
    );
    assert_eq!(std::fs::read(&cloud_index).unwrap(), cloud_before);
    let sums_path = store.join("oci/db/legacy-sums.json");
    let sums: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sums_path).unwrap()).unwrap();
    assert_eq!(sums["version"], 1);
    let rec = &sums["files"][format!("blobs/{UBUNTU_LAYER}.erofs")];
    let original = std::fs::read(layer(store, UBUNTU_LAYER)).unwrap();
    assert_eq!(
        rec["sha256"],
        imgstore::Digest::sha256_of(&original).to_string()
    );
    assert_eq!(rec["size"], original.len());
    assert!(sums["files"][format!("boot/{UBUNTU_LAYER}/initrd.img")].is_object());
    assert!(store.join("cloudimg/db/legacy-sums.json").exists());
    assert_eq!(
        std::fs::metadata(&sums_path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(
        crate::cli_support::names(&store.join("oci/db"))
            .iter()
            .all(|n| !n.contains(".tmp")),
        "no temp file left in db/"
    );

    // Later runs check against the records, with either hash.
    for extra in [&[][..], &["--sha256"][..]] {
        let mut args = vec!["verify", "-o", "json"];
        args.extend_from_slice(extra);
        let v = rows(&run(store, &args).ok());
        assert!(v.iter().all(|r| r["status"] == "ok"), "{v:?}");
    }

    // cocoon rewrites images.json with only the fields it knows: the records are elsewhere.
    for p in [&oci_index, &cloud_index] {
        let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        std::fs::write(p, serde_json::to_vec(&idx).unwrap()).unwrap();
    }
    let v = rows(&run(store, &["verify", "-o", "json"]).ok());
    assert!(v.iter().all(|r| r["status"] == "ok"), "{v:?}");

    // A flipped byte in place (same inode, same size, even the old mtime back) is corrupt.
    let blob = layer(store, UBUNTU_LAYER);
    let mtime = std::fs::metadata(&blob).unwrap().modified().unwrap();
    let mut flipped = original.clone();
    flipped[0] ^= 0x20;
    let file = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &flipped, 0).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    let r = run(store, &["verify", "ubuntu:24.04", "-o", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = rows(&r);
    let l = row(&v, &format!("{UBUNTU_LAYER}.erofs"));
    assert_eq!(l["status"], "corrupt", "{v:?}");
    assert!(l["detail"]
        .as_str()
        .unwrap()
        .contains("recorded on first use"));
    std::fs::write(&blob, &original).unwrap();
    run(store, &["verify", "ubuntu:24.04"]).ok();

    // A kernel replaced by a new file (as cocoon publishes one, by rename): the record is for
    // the old file, so the new one is unverifiable again, not corrupt.
    let kernel = store.join(format!("oci/boot/{UBUNTU_LAYER}/vmlinuz"));
    let fresh = store.join("fresh-kernel");
    std::fs::write(&fresh, b"KERNEL").unwrap();
    std::fs::rename(&fresh, &kernel).unwrap();
    let v = rows(&run(store, &["verify", "ubuntu:24.04", "-o", "json"]).ok());
    let k = row(&v, "/vmlinuz");
    assert_eq!(k["status"], "unverifiable", "{v:?}");
    assert!(
        k["detail"].as_str().unwrap().contains("since replaced"),
        "{k}"
    );

    // Emptied in place: the record applies and says how big it was.
    let file = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    let r = run(store, &["verify", "ubuntu:24.04", "-o", "json"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        row(&rows(&r), &format!("{UBUNTU_LAYER}.erofs"))["status"],
        "truncated"
    );
}

/// Nothing is recorded for an image that fails a check: recording trusts only what passed.
#[test]
fn record_skips_images_that_fail_their_checks() {
    let dir = root();
    let store = dir.path();
    std::fs::write(layer(store, UBUNTU_LAYER), b"").unwrap();
    let r = run(store, &["verify", "--record", "ubuntu:24.04", "-o", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = rows(&r);
    assert!(v.iter().all(|r| r["status"] != "recorded"), "{v:?}");
    assert!(!store.join("oci/db/legacy-sums.json").exists());
}
