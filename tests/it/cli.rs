//! The CLI on a hand-made cocoon v0.3.7 root: list, inspect, rm, config, verify, ref.

use crate::cli_support::{cocoon_root, cocoon_sizes_match, run, tree};

const UBUNTU: &str = "sha256:555bfcf20f17ef26b355b5ec0e8ebbba46752790eec7e3cb5e4d25b1349054c5";
const XFACE: &str = "sha256:426de1cc59efa1ea04a3c30e18c7f08eee7daf2ce6cdcdb93e72f7fad2487e13";
const JAMMY: &str = "sha256:68eb4dd9bf894f6eb07654d30a42f95b957e1036a87a996d443a5684c87afc46";

fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    cocoon_root(dir.path());
    dir
}

#[test]
fn ref_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["ref", "ubuntu", "-o", "json"]).ok();
    let v = r.json();
    assert_eq!(v["canonical"], "docker.io/library/ubuntu:latest");
    assert_eq!(v["familiar"], "ubuntu");
    assert_eq!(v["ok"], true);
    assert_eq!(v["input"], "ubuntu");
    assert_eq!(v["domain"], "docker.io");
    assert_eq!(v["path"], "library/ubuntu");
    assert!(v["tag"].is_null());
    assert!(v["digest"].is_null());
    assert_eq!(v["name"], "docker.io/library/ubuntu");
    assert_eq!(v["normalized"], "docker.io/library/ubuntu");
}

#[test]
fn ref_invalid_exits_1_naming_input() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &["ref", "Ubuntu"]).fails();
    assert!(r.stderr.contains("Ubuntu"), "{}", r.stderr);
    let r = run(dir.path(), &["ref", "ubuntu", "Ubuntu", "-o", "json"]);
    assert_eq!(r.code, 1);
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(lines[1]["input"], "Ubuntu");
    assert!(lines[1]["error"].as_str().unwrap().contains("lowercase"));
}

#[test]
fn usage_error_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(dir.path(), &["frobnicate"]).code, 2);
    assert_eq!(run(dir.path(), &["rm"]).code, 2);
}

#[test]
fn list_json_on_cocoon_root() {
    let dir = root();
    let v = run(dir.path(), &["list", "-o", "json"]).ok().json();
    let rows = v.as_array().unwrap();
    assert_eq!(
        rows.len(),
        4,
        "two oci + two cloudimg entries, the null one skipped: {v}"
    );
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"ubuntu:24.04"));
    assert!(names.contains(&"win11"));
    let u = rows.iter().find(|r| r["name"] == "ubuntu:24.04").unwrap();
    assert_eq!(u["id"], UBUNTU);
    assert_eq!(u["type"], "oci");
    assert_eq!(u["size"], 812_345_678);
    assert_eq!(u["created_at"], "2026-04-21T09:14:03.512883417+08:00");
    let w = rows.iter().find(|r| r["name"] == "win11").unwrap();
    assert_eq!(w["type"], "cloudimg");
}

#[test]
fn list_empty_store_is_empty_array() {
    let dir = tempfile::tempdir().unwrap();
    let v = run(dir.path(), &["ls", "-o", "json"]).ok().json();
    assert_eq!(v, serde_json::json!([]));
    assert!(!dir.path().join("oci").exists(), "a read creates nothing");
}

#[test]
fn inspect_by_prefix_digest_and_names() {
    let dir = root();
    let hex = &UBUNTU[7..];
    for q in [
        &hex[..12],
        &format!("sha256:{}", &hex[..12]),
        UBUNTU,
        hex,
        "ubuntu:24.04",
        "docker.io/library/ubuntu:24.04",
    ] {
        let v = run(dir.path(), &["inspect", q, "-o", "json"]).ok().json();
        assert_eq!(v["id"], UBUNTU, "query {q}");
        assert_eq!(v["type"], "oci");
        assert_eq!(v["names"], serde_json::json!(["ubuntu:24.04"]));
        let blobs = v["blobs"].as_array().unwrap();
        assert_eq!(blobs.iter().filter(|b| b["role"] == "layer").count(), 3);
        assert!(blobs.iter().all(|b| b["path"]
            .as_str()
            .unwrap()
            .starts_with(dir.path().to_str().unwrap())));
    }
    let v = run(dir.path(), &["inspect", "win11", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["type"], "cloudimg");
    let v = run(dir.path(), &["inspect", &JAMMY[7..19], "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        v["name"],
        "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img"
    );
}

#[test]
fn inspect_not_found_and_short_prefix() {
    let dir = root();
    let r = run(dir.path(), &["inspect", "nonexistent"]).fails();
    assert!(r.stderr.contains("nonexistent"), "{}", r.stderr);
    // 11 hex digits is below the minimum prefix length.
    run(dir.path(), &["inspect", &UBUNTU[7..18]]).fails();
}

/// Two images whose digests share a 12-digit prefix: the prefix is ambiguous, both are listed,
/// and `rm` with it changes nothing.
#[test]
fn ambiguous_prefix_lists_candidates_and_changes_nothing() {
    let dir = root();
    let idx_path = dir.path().join("cloudimg/db/images.json");
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&idx_path).unwrap()).unwrap();
    let a = format!("sha256:abcdef012345{}", "0".repeat(52));
    let b = format!("sha256:abcdef012345{}", "1".repeat(52));
    for (name, d) in [("twin-a", &a), ("twin-b", &b)] {
        idx["images"][name] = serde_json::json!({"ref": name, "content_sum": d, "size": 9, "created_at": "2026-01-01T00:00:00Z"});
        std::fs::write(
            dir.path().join(format!("cloudimg/blobs/{}.qcow2", &d[7..])),
            b"QFI\xfbabcde",
        )
        .unwrap();
    }
    std::fs::write(&idx_path, serde_json::to_vec(&idx).unwrap()).unwrap();
    let before = tree(dir.path());
    let r = run(dir.path(), &["inspect", "abcdef012345"]).fails();
    assert!(
        r.stderr.contains("ambiguous") || r.stderr.contains("matches"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&a[7..]) && r.stderr.contains(&b[7..]),
        "both candidates listed: {}",
        r.stderr
    );
    let r = run(dir.path(), &["rm", "abcdef012345"]).fails();
    assert!(r.stderr.contains(&a[7..]), "{}", r.stderr);
    assert_eq!(before, tree(dir.path()), "nothing changed");
    // One more digit makes it unique.
    let v = run(dir.path(), &["inspect", "abcdef0123450", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["name"], "twin-a");
}

#[test]
fn rm_resolves_everything_first() {
    let dir = root();
    let before = tree(dir.path());
    let r = run(dir.path(), &["rm", "win11", "no-such-image"]).fails();
    assert!(r.stderr.contains("no-such-image"), "{}", r.stderr);
    assert_eq!(
        before,
        tree(dir.path()),
        "a failing ID aborts before anything is removed"
    );
    run(
        dir.path(),
        &["rm", "win11", "docker.io/library/ubuntu:24.04"],
    )
    .ok();
    let v = run(dir.path(), &["list", "-o", "json"]).ok().json();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&"win11") && !names.contains(&"ubuntu:24.04"));
    // Blobs stay until gc.
    assert!(dir
        .path()
        .join(format!(
            "oci/blobs/{}.erofs",
            "95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06"
        ))
        .exists());
    // The rewritten index keeps cocoon's schema: still readable field for field.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("oci/db/images.json")).unwrap())
            .unwrap();
    let x = &idx["images"]["ghcr.io/cocoonstack/cocoon/ubuntu:24.04-xface"];
    assert_eq!(x["manifest_digest"], XFACE);
    assert_eq!(x["layers"].as_array().unwrap().len(), 2);
}

#[test]
fn rm_by_digest_removes_all_aliases() {
    let dir = root();
    let idx_path = dir.path().join("cloudimg/db/images.json");
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&idx_path).unwrap()).unwrap();
    idx["images"]["win11-alias"] = idx["images"]["win11"].clone();
    std::fs::write(&idx_path, serde_json::to_vec(&idx).unwrap()).unwrap();
    let v = run(dir.path(), &["inspect", "win11", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["names"], serde_json::json!(["win11", "win11-alias"]));
    let id = v["id"].as_str().unwrap().to_owned();
    run(dir.path(), &["rm", &id[..19]]).ok();
    let v = run(dir.path(), &["list", "-o", "json"]).ok().json();
    assert!(v.as_array().unwrap().iter().all(|r| r["id"] != id.as_str()));
}

#[test]
fn config_json_for_both_kinds() {
    let dir = root();
    let v = run(
        dir.path(),
        &["config", "ubuntu:24.04", "win11", "-o", "json"],
    )
    .ok()
    .json();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["image_type"], "oci");
    assert_eq!(a[0]["image_digest"], UBUNTU);
    let storage = a[0]["storage"].as_array().unwrap();
    assert_eq!(storage.len(), 3);
    for (n, d) in storage.iter().enumerate() {
        assert_eq!(d["serial"], format!("cocoon-layer{n}"));
        assert_eq!(d["ro"], true);
        assert_eq!(d["role"], "layer");
        assert!(std::path::Path::new(d["path"].as_str().unwrap()).exists());
    }
    assert!(std::path::Path::new(a[0]["boot"]["kernel_path"].as_str().unwrap()).exists());
    assert!(std::path::Path::new(a[0]["boot"]["initrd_path"].as_str().unwrap()).exists());
    assert_eq!(a[1]["image_type"], "cloudimg");
    assert_eq!(a[1]["storage"][0]["serial"], "cocoon-base");
    assert!(a[1]["boot"]["firmware_path"]
        .as_str()
        .unwrap()
        .ends_with("firmware/CLOUDHV.fd"));
}

#[test]
fn config_refuses_missing_or_empty_blob() {
    let dir = root();
    let blob = dir
        .path()
        .join("oci/blobs/95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06.erofs");
    std::fs::write(&blob, b"").unwrap();
    let r = run(dir.path(), &["config", "ubuntu:24.04"]).fails();
    assert!(r.stderr.contains("95cf1a2e"), "{}", r.stderr);
    std::fs::remove_file(&blob).unwrap();
    let r = run(dir.path(), &["config", "ubuntu:24.04"]).fails();
    assert!(r.stderr.contains("missing"), "{}", r.stderr);
    std::fs::remove_file(dir.path().join("firmware/CLOUDHV.fd")).unwrap();
    let r = run(dir.path(), &["config", "win11"]).fails();
    assert!(r.stderr.contains("CLOUDHV.fd"), "{}", r.stderr);
}

/// With sizes as cocoon records them (the fixtures' are those of real images, which
/// `cocoon_root` does not write), a sound cocoon-written entry passes its size checks and is
/// `unverifiable`, not a failure; a missing file is.
#[test]
fn verify_legacy_entries_are_unverifiable_not_failures() {
    let dir = root();
    cocoon_sizes_match(dir.path());
    let v = run(dir.path(), &["verify", "ubuntu:24.04", "-o", "json"])
        .ok()
        .json();
    let rows = v.as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["status"] == "unverifiable"), "{v}");
    std::fs::remove_file(
        dir.path().join(
            "oci/blobs/95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06.erofs",
        ),
    )
    .unwrap();
    let r = run(dir.path(), &["verify", "ubuntu:24.04", "-o", "json"]);
    assert_eq!(r.code, 1);
    assert!(r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["status"] == "missing"));
}

#[test]
fn corrupt_index_is_reported_with_offset_and_kept() {
    let dir = root();
    let p = dir.path().join("oci/db/images.json");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.truncate(100);
    std::fs::write(&p, &bytes).unwrap();
    let r = run(dir.path(), &["list"]).fails();
    assert!(r.stderr.contains("images.json"), "{}", r.stderr);
    assert!(r.stderr.contains("at byte 99"), "{}", r.stderr);
    run(dir.path(), &["rm", "win11"]).fails();
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "the corrupt file is never replaced"
    );
}

/// A stored blob damaged after ingest: a flipped byte is `corrupt` (blake3 and sha256 both catch
/// it), a truncated blob is `truncated` without hashing, and both make `verify` exit 1 while
/// `config` refuses the truncated one outright.
#[test]
fn verify_reports_flipped_byte_and_truncation() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let disk = dir.path().join("disk.raw");
    let data: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&disk, &data).unwrap();
    run(&root, &["import", "victim", disk.to_str().unwrap()]).ok();
    run(&root, &["verify", "victim"]).ok();
    let blobs = root.join("cloudimg/blobs");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&blob).unwrap();
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    for extra in [&[][..], &["--sha256"][..]] {
        let mut args = vec!["verify", "victim", "-o", "json"];
        args.extend_from_slice(extra);
        let r = run(&root, &args);
        assert_eq!(r.code, 1, "{}", r.stderr);
        let v = r.json();
        assert_eq!(v[0]["status"], "corrupt", "{v}");
        assert!(v[0]["detail"].as_str().unwrap().contains("expected"));
    }
    bytes.truncate(mid);
    std::fs::write(&blob, &bytes).unwrap();
    let r = run(&root, &["verify", "-o", "json"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.json()[0]["status"], "truncated");
    let r = run(
        &root,
        &["config", "victim", "--firmware", disk.to_str().unwrap()],
    )
    .fails();
    assert!(r.stderr.contains("expected"), "{}", r.stderr);
}
