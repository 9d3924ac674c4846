//! Cloud images end to end through the `imgstore` binary: import, pull, config, verify, against
//! the real `qemu-img` and a real HTTP server on 127.0.0.1.
//!
//! Every failure case checks the same four things: exit status 1 with a message naming the
//! input and the cause, no blob under `cloudimg/blobs/`, the index unchanged (or still absent),
//! and no temp file left in `cloudimg/temp/` (digest lock files are allowed).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cli_support::{bin, cocoon_root, cocoon_sizes_match, names, run, run_stdin, Run};
use crate::cloudimg::qemu_img;
use crate::http_server::{refused_url, Route, Server};

// ---------------------------------------------------------------------------------------------
// helpers

const MIB: usize = 1 << 20;

/// `len` bytes with a recognisable non-zero pattern, varied by `seed` so images differ.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A raw image of `mib` MiB at `dir/name`.
fn raw_image(dir: &Path, name: &str, mib: usize, seed: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pattern(mib * MIB, seed)).unwrap();
    p
}

/// `src` (raw) converted to qcow2 with `compat` ("0.10" = v2, "1.1" = v3) at `dir/name`.
fn qcow2_of(src: &Path, dir: &Path, name: &str, compat: &str) -> PathBuf {
    let out = dir.join(name);
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            src.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        dir,
    );
    out
}

/// `qemu-img info --output=json -f qcow2`.
fn qcow2_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `qemu-img compare` exit status 0 means the guest sees the same bytes.
fn same_content(a: &Path, a_fmt: &str, b: &Path, b_fmt: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", a_fmt, "-F", b_fmt])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

fn sha256_hex(bytes: &[u8]) -> String {
    imgstore::Digest::sha256_of(bytes).hex()
}

fn blobs_dir(root: &Path) -> PathBuf {
    root.join("cloudimg/blobs")
}

fn index_path(root: &Path) -> PathBuf {
    root.join("cloudimg/db/images.json")
}

fn blob_path(root: &Path, id: &str) -> PathBuf {
    let hex = id.trim_start_matches("sha256:");
    blobs_dir(root).join(format!("{hex}.qcow2"))
}

/// Entries in `cloudimg/temp/` other than lock files.
fn temp_leftovers(root: &Path) -> Vec<String> {
    names(&root.join("cloudimg/temp"))
        .into_iter()
        .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock"))
        .collect()
}

fn index_json(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(index_path(root)).unwrap()).unwrap()
}

/// The state a failed command must leave untouched.
#[derive(Debug, PartialEq, Eq)]
struct Snap {
    index: Option<Vec<u8>>,
    blobs: Vec<String>,
}

fn snap(root: &Path) -> Snap {
    Snap {
        index: std::fs::read(index_path(root)).ok(),
        blobs: names(&blobs_dir(root)),
    }
}

/// Exit 1, stderr names every one of `mentions`, and nothing changed or was left behind.
#[track_caller]
fn assert_failed_cleanly(root: &Path, before: &Snap, r: Run, mentions: &[&str]) -> Run {
    let r = r.fails();
    // Shown with --nocapture, to read the messages as a user would.
    eprintln!("{}", r.stderr.trim_end());
    for m in mentions {
        assert!(
            r.stderr.contains(m),
            "stderr should mention {m:?}: {}",
            r.stderr
        );
    }
    assert!(
        !r.stderr.contains("/temp/"),
        "the message names a temp path the user never gave: {}",
        r.stderr
    );
    assert_eq!(&snap(root), before, "a failure changed the store");
    assert_eq!(temp_leftovers(root), Vec::<String>::new(), "temp debris");
    r
}

/// A store root (not yet created) and a directory for input files, in one temp dir.
pub(crate) struct Fixture {
    _dir: TempDir,
    pub(crate) root: PathBuf,
    pub(crate) files: PathBuf,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    Fixture {
        _dir: dir,
        root,
        files,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `import NAME FILES... -o json` → the stored ID.
#[track_caller]
fn import_ok(root: &Path, name: &str, files: &[&Path]) -> serde_json::Value {
    let mut args = vec!["-o", "json", "import", name];
    args.extend(files.iter().map(|p| s(p)));
    run(root, &args).ok().json()
}

// ---------------------------------------------------------------------------------------------
// import

#[test]
fn import_raw_is_converted_to_qcow2_v3_and_leaves_the_file_alone() {
    let f = fixture();
    let src = raw_image(&f.files, "disk.raw", 4, 1);
    let bytes = std::fs::read(&src).unwrap();
    let mtime = std::fs::metadata(&src).unwrap().modified().unwrap();

    let out = import_ok(&f.root, "raw-disk", &[&src]);
    let id = out["id"].as_str().unwrap();
    assert_eq!(
        id,
        format!("sha256:{}", sha256_hex(&bytes)),
        "ID = sha256 of source"
    );
    assert_eq!(out["reused"], false);

    let blob = blob_path(&f.root, id);
    let info = qcow2_info(&blob);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
    assert!(same_content(&src, "raw", &blob, "qcow2"), "content differs");
    assert_eq!(
        std::fs::metadata(&blob).unwrap().mode() & 0o777,
        0o444,
        "blobs are read-only"
    );

    assert_eq!(std::fs::read(&src).unwrap(), bytes, "user's file modified");
    assert_eq!(std::fs::metadata(&src).unwrap().modified().unwrap(), mtime);
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new());
    run(&f.root, &["verify", "raw-disk"]).ok();
}

#[test]
fn import_qcow2_v2_is_converted_to_v3() {
    let f = fixture();
    let raw = raw_image(&f.files, "disk.raw", 4, 2);
    let v2 = qcow2_of(&raw, &f.files, "v2.qcow2", "0.10");
    assert_eq!(qcow2_info(&v2)["format-specific"]["data"]["compat"], "0.10");
    let bytes = std::fs::read(&v2).unwrap();

    let out = import_ok(&f.root, "v2", &[&v2]);
    let id = out["id"].as_str().unwrap();
    assert_eq!(id, format!("sha256:{}", sha256_hex(&bytes)));
    let blob = blob_path(&f.root, id);
    assert_eq!(
        qcow2_info(&blob)["format-specific"]["data"]["compat"],
        "1.1"
    );
    assert!(same_content(&v2, "qcow2", &blob, "qcow2"));
    assert_eq!(std::fs::read(&v2).unwrap(), bytes, "user's file modified");
}

#[test]
fn import_qcow2_v3_is_stored_as_is() {
    let f = fixture();
    let raw = raw_image(&f.files, "disk.raw", 4, 3);
    let v3 = qcow2_of(&raw, &f.files, "v3.qcow2", "1.1");
    let bytes = std::fs::read(&v3).unwrap();
    let mtime = std::fs::metadata(&v3).unwrap().modified().unwrap();

    let out = import_ok(&f.root, "v3", &[&v3]);
    let blob = blob_path(&f.root, out["id"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        bytes,
        "stored bytes = source bytes"
    );
    assert_eq!(std::fs::read(&v3).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&v3).unwrap().modified().unwrap(), mtime);
    run(&f.root, &["verify", "--sha256"]).ok();
}

#[test]
fn import_split_parts_equal_the_whole_file() {
    let f = fixture();
    let whole = raw_image(&f.files, "whole.raw", 3, 4);
    let bytes = std::fs::read(&whole).unwrap();
    // Uneven cuts, not on sector boundaries.
    let cuts = [0, 1_000_003, 2_500_001, bytes.len()];
    let parts: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = f.files.join(format!("part.{i}"));
            std::fs::write(&p, &bytes[cuts[i]..cuts[i + 1]]).unwrap();
            p
        })
        .collect();

    let by_parts = import_ok(&f.root, "parts", &[&parts[0], &parts[1], &parts[2]]);
    let by_whole = import_ok(&f.root, "whole", &[&whole]);
    assert_eq!(by_parts["id"], by_whole["id"]);
    assert_eq!(by_whole["reused"], true, "same content, same blob");
    assert_eq!(names(&blobs_dir(&f.root)).len(), 1);

    // Parts in another order are another image.
    let swapped = import_ok(&f.root, "swapped", &[&parts[1], &parts[0], &parts[2]]);
    assert_ne!(swapped["id"], by_whole["id"]);
}

#[test]
fn import_from_stdin() {
    let f = fixture();
    let bytes = pattern(2 * MIB, 5);
    let r = run_stdin(&f.root, &["-o", "json", "import", "piped"], &bytes).ok();
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(id, format!("sha256:{}", sha256_hex(&bytes)));
    let listed = run(&f.root, &["-o", "json", "list"]).ok().json();
    assert_eq!(listed[0]["name"], "piped");
    assert_eq!(listed[0]["type"], "cloudimg");

    // Empty stdin is refused without leaving anything.
    let before = snap(&f.root);
    let r = run_stdin(&f.root, &["import", "nothing"], b"");
    assert_failed_cleanly(&f.root, &before, r, &["stdin", "empty"]);
}

#[test]
fn second_import_of_the_same_content_is_a_cache_hit() {
    let f = fixture();
    let src = raw_image(&f.files, "disk.raw", 2, 6);
    let first = import_ok(&f.root, "first", &[&src]);
    let id = first["id"].as_str().unwrap().to_owned();
    let blob = blob_path(&f.root, &id);
    let m1 = std::fs::metadata(&blob).unwrap();

    let copy = f.files.join("copy.raw");
    std::fs::copy(&src, &copy).unwrap();
    let second = import_ok(&f.root, "second", &[&copy]);
    assert_eq!(second["id"], id.as_str());
    assert_eq!(second["reused"], true);
    let m2 = std::fs::metadata(&blob).unwrap();
    assert_eq!(
        (m1.ino(), m1.mtime(), m1.mtime_nsec()),
        (m2.ino(), m2.mtime(), m2.mtime_nsec())
    );
    assert_eq!(names(&blobs_dir(&f.root)).len(), 1);

    let info = run(&f.root, &["-o", "json", "inspect", &id]).ok().json();
    assert_eq!(info["names"], serde_json::json!(["first", "second"]));
    let r = run(&f.root, &["inspect", "second"]).ok();
    assert!(r.stdout.contains("first, second"), "{}", r.stdout);
}

#[test]
fn type_override_routes_to_cloudimg() {
    let f = fixture();
    // A tar is detected as an OCI layer; forced to cloudimg, the cloud checks refuse it by name.
    let tar_path = f.files.join("layer.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let data = vec![7u8; 4096];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/file", &data[..]).unwrap();
        b.finish().unwrap();
    }
    let before = snap(&f.root);
    let detected = run(&f.root, &["import", "t", s(&tar_path)]).fails();
    assert!(
        !detected.stderr.contains("not a qcow2 or raw disk image"),
        "a tar is detected as OCI: {}",
        detected.stderr
    );
    let forced = run(
        &f.root,
        &["import", "t", s(&tar_path), "--type", "cloudimg"],
    );
    assert_failed_cleanly(&f.root, &before, forced, &[s(&tar_path), "tar"]);

    // A raw image given --type cloudimg explicitly is stored as usual.
    let src = raw_image(&f.files, "disk.raw", 1, 7);
    let out = run(
        &f.root,
        &[
            "-o",
            "json",
            "import",
            "forced",
            s(&src),
            "--type",
            "cloudimg",
        ],
    )
    .ok()
    .json();
    assert_eq!(out["type"], "cloudimg");
    assert!(blob_path(&f.root, out["id"].as_str().unwrap()).exists());
}

// ---------------------------------------------------------------------------------------------
// pull

#[test]
fn pull_then_list_inspect_config_verify() {
    let f = fixture();
    let raw = raw_image(&f.files, "disk.raw", 2, 8);
    let v3 = qcow2_of(&raw, &f.files, "img.qcow2", "1.1");
    let server = Server::start();
    server.route("/img.qcow2", Route::File(v3.clone()));
    let url = server.url("/img.qcow2");

    let out = run(&f.root, &["-o", "json", "pull", &url]).ok().json();
    let id = out[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(out[0]["name"], url.as_str());
    assert_eq!(
        id,
        format!("sha256:{}", sha256_hex(&std::fs::read(&v3).unwrap()))
    );

    let list = run(&f.root, &["-o", "json", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["name"], url.as_str());
    assert_eq!(list[0]["type"], "cloudimg");

    let info = run(&f.root, &["-o", "json", "inspect", &id[7..19]])
        .ok()
        .json();
    assert_eq!(info["names"], serde_json::json!([url]));
    assert_eq!(info["blobs"][0]["path"], s(&blob_path(&f.root, &id)));

    let fw = f.files.join("CLOUDHV.fd");
    std::fs::write(&fw, b"firmware").unwrap();
    let cfg = run(
        &f.root,
        &["-o", "json", "config", &url, "--firmware", s(&fw)],
    )
    .ok()
    .json();
    let c = &cfg[0];
    assert_eq!(c["image"], url.as_str());
    assert_eq!(c["image_digest"], id.as_str());
    assert_eq!(c["image_type"], "cloudimg");
    let disk = &c["storage"][0];
    assert!(Path::new(disk["path"].as_str().unwrap()).is_file());
    assert_eq!(disk["serial"], "cocoon-base");
    assert_eq!(disk["ro"], true);
    assert_eq!(disk["role"], "layer");
    assert_eq!(c["storage"].as_array().unwrap().len(), 1);
    assert_eq!(c["boot"]["firmware_path"], s(&fw));

    let v = run(&f.root, &["-o", "json", "verify"]).ok().json();
    assert_eq!(v[0]["status"], "ok");
}

#[test]
fn pull_follows_a_redirect_chain() {
    let f = fixture();
    let body = pattern(MIB, 9);
    let server = Server::start();
    server
        .route("/a", Route::redirect("/b"))
        .route("/b", Route::redirect(&server.url("/c")))
        .route("/c", Route::bytes(body.clone()));
    let url = server.url("/a");
    let out = run(&f.root, &["-o", "json", "pull", &url]).ok().json();
    assert_eq!(
        out[0]["id"],
        format!("sha256:{}", sha256_hex(&body)).as_str()
    );
    assert_eq!(
        out[0]["name"],
        url.as_str(),
        "stored under the URL asked for"
    );
    assert_eq!(server.requests(), ["GET /a", "GET /b", "GET /c"]);
}

#[test]
fn same_url_is_not_downloaded_again_unless_forced() {
    let f = fixture();
    let server = Server::start();
    server.route("/x.img", Route::bytes(pattern(MIB, 10)));
    let url = server.url("/x.img");
    run(&f.root, &["pull", &url]).ok();
    let id = index_json(&f.root)["images"][&url]["content_sum"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = blob_path(&f.root, &id);
    let ino = std::fs::metadata(&blob).unwrap().ino();
    let index = std::fs::read(index_path(&f.root)).unwrap();

    let again = run(&f.root, &["-o", "json", "pull", &url]).ok().json();
    assert_eq!(again[0]["reused"], true);
    assert_eq!(server.requests().len(), 1, "pulled twice");
    assert_eq!(
        std::fs::read(index_path(&f.root)).unwrap(),
        index,
        "no-op rewrote the index"
    );

    let forced = run(&f.root, &["-o", "json", "pull", "--force", &url])
        .ok()
        .json();
    assert_eq!(server.requests().len(), 2, "--force downloads again");
    assert_eq!(forced[0]["id"], id.as_str());
    assert_eq!(
        std::fs::metadata(&blob).unwrap().ino(),
        ino,
        "blob replaced"
    );
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new());
}

/// A stored blob that was deleted or truncated behind the store's back is not trusted because
/// its name exists (a cocoon bug): pulling the URL again fetches and republishes it.
#[test]
fn damaged_blob_is_fetched_again() {
    use std::os::unix::fs::PermissionsExt;

    let f = fixture();
    let server = Server::start();
    server.route("/x.img", Route::bytes(pattern(MIB, 19)));
    let url = server.url("/x.img");
    let id = run(&f.root, &["-o", "json", "pull", &url]).ok().json()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = blob_path(&f.root, &id);
    let good = std::fs::read(&blob).unwrap();

    // Truncated: config refuses it, a plain pull repairs it.
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    file.set_len(4096).unwrap();
    drop(file);
    run(&f.root, &["config", &url, "--firmware", s(&blob)]).fails();
    let again = run(&f.root, &["-o", "json", "pull", &url]).ok().json();
    assert_eq!(again[0]["reused"], false);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(std::fs::read(&blob).unwrap(), good);
    run(&f.root, &["verify"]).ok();

    // Deleted: the same.
    std::fs::remove_file(&blob).unwrap();
    run(&f.root, &["pull", &url]).ok();
    assert_eq!(server.requests().len(), 3);
    assert_eq!(std::fs::read(&blob).unwrap(), good);
    run(&f.root, &["verify"]).ok();
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new());
}

#[test]
fn pull_http_errors_name_url_and_status() {
    let f = fixture();
    let server = Server::start();
    server.route("/boom", Route::Status(500));
    let before = snap(&f.root);

    let missing = server.url("/missing.img");
    let r = run(&f.root, &["pull", &missing]);
    let r = assert_failed_cleanly(&f.root, &before, r, &[&missing, "HTTP 404 Not Found"]);
    assert!(r.stderr.starts_with("error: pulling "), "{}", r.stderr);

    let boom = server.url("/boom");
    let r = run(&f.root, &["pull", &boom]);
    assert_failed_cleanly(
        &f.root,
        &before,
        r,
        &[&boom, "HTTP 500 Internal Server Error"],
    );

    // https to a plain-http server (one that answers the ClientHello with a 400, as most do):
    // the handshake fails, and the message says so.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = format!("https://{}/x.img", plain.local_addr().unwrap());
    let answer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = plain.accept().unwrap();
        let mut hello = [0u8; 512];
        let _ = conn.read(&mut hello);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let r = run(&f.root, &["pull", &tls]);
    answer.join().unwrap();
    assert_failed_cleanly(&f.root, &before, r, &[&tls, "TLS error"]);

    let refused = refused_url("/x.img");
    let r = run(&f.root, &["pull", &refused]);
    assert_failed_cleanly(&f.root, &before, r, &[&refused, "connection refused"]);
}

#[test]
fn pull_short_body_is_refused() {
    let f = fixture();
    let server = Server::start();
    server.route(
        "/short",
        Route::Short {
            declared: MIB as u64,
            body: pattern(300_000, 11).into(),
        },
    );
    let url = server.url("/short");
    let before = snap(&f.root);
    let r = run(&f.root, &["pull", &url]);
    let r = assert_failed_cleanly(
        &f.root,
        &before,
        r,
        &[&url, "truncated", "of 1048576 bytes"],
    );
    assert_eq!(
        r.stderr.matches(&url).count(),
        2,
        "URL named by the context and the GET, not more: {}",
        r.stderr
    );
}

#[test]
fn pull_over_the_size_cap_is_refused() {
    let f = fixture();
    let server = Server::start();
    let body: Arc<[u8]> = pattern(2 * MIB, 12).into();
    server
        .route(
            "/announced",
            Route::Bytes {
                body: Arc::clone(&body),
                content_type: "application/octet-stream",
            },
        )
        .route(
            "/chunked",
            Route::Chunked {
                body,
                chunk: 64 * 1024,
            },
        );
    let before = snap(&f.root);
    for path in ["/announced", "/chunked"] {
        let url = server.url(path);
        let r = run(&f.root, &["pull", "--max-size", "1M", &url]);
        assert_failed_cleanly(&f.root, &before, r, &[&url, "download limit of 1 MiB"]);
    }
    // Under a cap it fits, it is stored.
    run(
        &f.root,
        &["pull", "--max-size", "3M", &server.url("/chunked")],
    )
    .ok();
}

#[test]
fn pull_refuses_html_and_gzip_by_name() {
    let f = fixture();
    let server = Server::start();
    server.route(
        "/page",
        Route::html("<!DOCTYPE html>\n<html><body>Sign in to download</body></html>\n"),
    );
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&pattern(MIB, 13)).unwrap();
        e.finish().unwrap()
    };
    server.route("/disk.img.gz", Route::bytes(gz));
    let before = snap(&f.root);

    let page = server.url("/page");
    let r = run(&f.root, &["pull", &page]);
    assert_failed_cleanly(&f.root, &before, r, &[&page, "HTML"]);

    let gzip = server.url("/disk.img.gz");
    let r = run(&f.root, &["pull", &gzip]);
    assert_failed_cleanly(&f.root, &before, r, &[&gzip, "gzip"]);
}

// ---------------------------------------------------------------------------------------------
// hygiene

#[test]
fn qcow2_with_a_backing_file_is_refused() {
    let f = fixture();
    qemu_img(
        &["create", "-q", "-f", "qcow2", "base.qcow2", "16M"],
        &f.files,
    );
    qemu_img(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "over.qcow2",
        ],
        &f.files,
    );
    let over = f.files.join("over.qcow2");
    let before = snap(&f.root);
    let r = run(&f.root, &["import", "over", s(&over)]);
    assert_failed_cleanly(
        &f.root,
        &before,
        r,
        &[s(&over), "backing file", "base.qcow2"],
    );

    // The same image served over http is named by its URL.
    let server = Server::start();
    server.route("/over.qcow2", Route::File(over));
    let url = server.url("/over.qcow2");
    let r = run(&f.root, &["pull", &url]);
    assert_failed_cleanly(&f.root, &before, r, &[&url, "backing file"]);
}

#[test]
fn qcow2_with_an_external_data_file_is_refused() {
    let f = fixture();
    qemu_img(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "ext.qcow2",
            "16M",
        ],
        &f.files,
    );
    let ext = f.files.join("ext.qcow2");
    let before = snap(&f.root);
    let r = run(&f.root, &["import", "ext", s(&ext)]);
    assert_failed_cleanly(
        &f.root,
        &before,
        r,
        &[s(&ext), "external data file", "data.raw"],
    );
}

#[test]
fn huge_virtual_size_is_refused() {
    let f = fixture();
    qemu_img(
        &["create", "-q", "-f", "qcow2", "huge.qcow2", "100T"],
        &f.files,
    );
    let huge = f.files.join("huge.qcow2");
    let before = snap(&f.root);
    let r = run(&f.root, &["import", "huge", s(&huge)]);
    assert_failed_cleanly(
        &f.root,
        &before,
        r,
        &[s(&huge), "virtual size 100 TiB", "limit of 2 TiB"],
    );
}

#[test]
fn truncated_qcow2_header_is_refused() {
    let f = fixture();
    let raw = raw_image(&f.files, "disk.raw", 1, 14);
    let v3 = qcow2_of(&raw, &f.files, "v3.qcow2", "1.1");
    let cut = f.files.join("cut.qcow2");
    std::fs::write(&cut, &std::fs::read(&v3).unwrap()[..60]).unwrap();
    let before = snap(&f.root);
    let r = run(&f.root, &["import", "cut", s(&cut)]);
    assert_failed_cleanly(&f.root, &before, r, &[s(&cut), "header"]);
}

// ---------------------------------------------------------------------------------------------
// concurrency and interrupts

/// Two processes pulling one URL at once must share one blob and one index entry: neither fails
/// on the other's file, neither clobbers the other's publish, and the URL is downloaded once
/// (the partial download's lock makes the second wait for the first).
#[test]
fn concurrent_pulls_of_one_url_share_one_blob() {
    let f = fixture();
    let server = Server::start();
    // The pause before the body keeps both downloads in flight together; raw, so both get as
    // far as the conversion step.
    server.route(
        "/slow.img",
        Route::Slow {
            body: pattern(2 * MIB, 15).into(),
            delay: Duration::from_millis(400),
        },
    );
    let url = server.url("/slow.img");
    let spawn = || {
        Command::new(bin())
            .arg("--root")
            .arg(&f.root)
            .args(["pull", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn();
    let b = spawn();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The second pull waits for the first one's lock on the partial download of this URL, then
    // finds the image stored: one download, not two writers.
    assert_eq!(server.requests().len(), 1);
    assert_eq!(names(&blobs_dir(&f.root)).len(), 1);
    let idx = index_json(&f.root);
    assert_eq!(idx["images"].as_object().unwrap().len(), 1);
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new());
    run(&f.root, &["verify"]).ok();
}

/// Two imports of the same bytes under different names at once: one conversion wins, the other
/// reuses its blob; both names end up on one image.
#[test]
fn concurrent_imports_of_one_content_share_one_blob() {
    let f = fixture();
    let a = raw_image(&f.files, "a.raw", 4, 21);
    let b = f.files.join("b.raw");
    std::fs::copy(&a, &b).unwrap();
    let spawn = |name: &str, file: &Path| {
        Command::new(bin())
            .arg("--root")
            .arg(&f.root)
            .args(["import", name])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn("a", &a), spawn("b", &b)];
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(names(&blobs_dir(&f.root)).len(), 1);
    let info = run(&f.root, &["-o", "json", "inspect", "a"]).ok().json();
    assert_eq!(info["names"], serde_json::json!(["a", "b"]));
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new());
    run(&f.root, &["verify"]).ok();
}

/// A pull in progress holds no index lock (cocoon held it for the whole download): `list` and
/// `config` of other images work meanwhile, even with a short lock timeout.
#[test]
fn a_pull_in_flight_blocks_no_reader() {
    use nix::sys::signal::{kill, Signal};

    let f = fixture();
    let src = raw_image(&f.files, "disk.raw", 1, 22);
    import_ok(&f.root, "ready", &[&src]);
    let fw = f.files.join("fw.fd");
    std::fs::write(&fw, b"fw").unwrap();

    let server = Server::start();
    server.route("/endless", Route::Endless);
    let child = Command::new(bin())
        .arg("--root")
        .arg(&f.root)
        .args(["pull", "--max-size", "4G", &server.url("/endless")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while temp_leftovers(&f.root).is_empty() {
        assert!(Instant::now() < deadline, "no temp file appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = run(
        &f.root,
        &[
            "--lock-timeout",
            "5s",
            "-o",
            "json",
            "config",
            "ready",
            "--firmware",
            s(&fw),
        ],
    )
    .ok()
    .json();
    assert_eq!(cfg[0]["image"], "ready");
    run(&f.root, &["--lock-timeout", "5s", "list"]).ok();
    // Another import commits its index entry while the pull is still downloading.
    let other = raw_image(&f.files, "other.raw", 1, 23);
    run(
        &f.root,
        &["--lock-timeout", "5s", "import", "other", s(&other)],
    )
    .ok();

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new());
    assert_eq!(names(&blobs_dir(&f.root)).len(), 2);
}

/// Start `imgstore --root ROOT ARGS`, wait until its temp file appears, send `signal`, and
/// check it exits 128 + signal leaving no temp file, no blob and no index. The process exits
/// without running destructors, so the CLI's signal handler must remove its temp files.
/// `feed` is written to the child's stdin, which is then held open until the child is gone.
fn interrupt_leaves_nothing(args: &[&str], feed: Option<&[u8]>, signal: nix::sys::signal::Signal) {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;

    let f = fixture();
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(&f.root)
        .args(args)
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take();
    if let (Some(pipe), Some(bytes)) = (&mut stdin, feed) {
        pipe.write_all(bytes).unwrap();
        pipe.flush().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while temp_leftovers(&f.root).is_empty() {
        assert!(Instant::now() < deadline, "no temp file appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let sig = signal as i32;
    assert!(
        out.status.code() == Some(128 + sig) || out.status.signal() == Some(sig),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new(), "temp debris");
    assert_eq!(names(&blobs_dir(&f.root)), Vec::<String>::new());
    assert!(!index_path(&f.root).exists());
}

/// Ctrl-C (and a plain `kill`) during a download removes the partial file.
#[test]
fn interrupted_pull_leaves_nothing_behind() {
    let server = Server::start();
    server.route("/endless", Route::Endless);
    let url = server.url("/endless");
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        interrupt_leaves_nothing(&["pull", "--max-size", "4G", &url], None, signal);
    }
}

/// Ctrl-C during an import from a pipe that is still open.
#[test]
fn interrupted_stdin_import_leaves_nothing_behind() {
    interrupt_leaves_nothing(
        &["import", "piped"],
        Some(&pattern(MIB, 18)),
        nix::sys::signal::Signal::SIGINT,
    );
}

/// `gc` running while an import is in flight must not sweep its temp file, however old the
/// file looks: the import then completes as if nothing happened.
#[test]
fn gc_spares_an_import_in_flight() {
    use std::io::Write;

    let f = fixture();
    let bytes = pattern(3 * MIB, 20);
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(&f.root)
        .args(["-o", "json", "import", "inflight"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Less than one pipeline buffer: the import stages it and waits for more.
    stdin.write_all(&bytes[..MIB / 2]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let temp = loop {
        if let Some(n) = temp_leftovers(&f.root).pop() {
            break f.root.join("cloudimg/temp").join(n);
        }
        assert!(Instant::now() < deadline, "no temp file appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 3600);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let report = run(&f.root, &["-o", "json", "gc", "--grace", "0"]).ok();
    assert!(
        temp.exists(),
        "gc removed a temp file in use: {}",
        report.stdout
    );

    stdin.write_all(&bytes[MIB / 2..]).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(id["id"], format!("sha256:{}", sha256_hex(&bytes)).as_str());
    run(&f.root, &["verify", "inflight"]).ok();
    assert_eq!(temp_leftovers(&f.root), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// cocoon compatibility and firmware

#[test]
fn import_into_a_cocoon_root_keeps_cocoon_entries() {
    let f = fixture();
    cocoon_root(&f.root);
    // Sizes as cocoon records them for the files the helper wrote, so its entries pass verify's
    // size checks.
    cocoon_sizes_match(&f.root);
    let original = index_json(&f.root);
    let src = raw_image(&f.files, "disk.raw", 1, 16);
    let out = import_ok(&f.root, "fresh", &[&src]);

    let now = index_json(&f.root);
    let images = now["images"].as_object().unwrap();
    for (k, v) in original["images"].as_object().unwrap() {
        assert_eq!(images.get(k), Some(v), "cocoon entry {k} changed");
    }
    assert!(images["stale"].is_null(), "the null entry is kept");
    assert_eq!(
        images.len(),
        original["images"].as_object().unwrap().len() + 1
    );
    // cocoon's Go struct: ref, content_sum, size, created_at with these types.
    for (k, e) in images {
        if e.is_null() {
            continue;
        }
        assert_eq!(e["ref"].as_str(), Some(k.as_str()), "{k}");
        let sum = e["content_sum"].as_str().unwrap();
        let hex = sum.strip_prefix("sha256:").unwrap();
        assert!(imgstore::digest::is_hex64(hex), "{k}: {sum}");
        assert!(e["size"].is_u64(), "{k}");
        assert!(
            e["created_at"].as_str().is_some_and(|t| t.len() >= 20),
            "{k}"
        );
    }
    assert_eq!(images["fresh"]["content_sum"], out["id"]);
    assert_eq!(images["fresh"]["ref"], "fresh");

    // cocoon's own entries verify as "unverifiable" (no recorded digests), the new one as ok.
    let v = run(&f.root, &["-o", "json", "verify"]).ok().json();
    for row in v.as_array().unwrap() {
        let want = if row["image"] == "fresh" {
            "ok"
        } else {
            "unverifiable"
        };
        assert_eq!(row["status"], want, "{row}");
    }
    let cfg = run(&f.root, &["-o", "json", "config", "fresh"]).ok().json();
    assert_eq!(
        cfg[0]["boot"]["firmware_path"],
        s(&f.root.join("firmware/CLOUDHV.fd"))
    );
    let list = run(&f.root, &["-o", "json", "list"]).ok().json();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "fresh"));
}

#[test]
fn config_needs_firmware() {
    let f = fixture();
    let src = raw_image(&f.files, "disk.raw", 1, 17);
    import_ok(&f.root, "img", &[&src]);
    let r = run(&f.root, &["config", "img"]).fails();
    assert!(r.stderr.contains("CLOUDHV.fd"), "{}", r.stderr);
    assert!(r.stderr.contains("--firmware"), "{}", r.stderr);

    let fw = f.files.join("my.fd");
    std::fs::write(&fw, b"fw").unwrap();
    let cfg = run(
        &f.root,
        &["-o", "json", "config", "img", "--firmware", s(&fw)],
    )
    .ok()
    .json();
    assert_eq!(cfg[0]["boot"]["firmware_path"], s(&fw));

    // Installed at the default place, it is found without the flag.
    std::fs::create_dir_all(f.root.join("firmware")).unwrap();
    std::fs::write(f.root.join("firmware/CLOUDHV.fd"), b"fw").unwrap();
    let cfg = run(&f.root, &["-o", "json", "config", "img"]).ok().json();
    assert_eq!(
        cfg[0]["boot"]["firmware_path"],
        s(&f.root.join("firmware/CLOUDHV.fd"))
    );
}
