//! Cloud image downloads against the range server (`range_server.rs`): parallel guarded ranges,
//! the one-stream fallback in every server mode, a file changing mid-download, resume after
//! SIGINT and SIGKILL, and revalidation of a stored URL. Every test runs the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli_support::{bin, run};
use crate::cloud_e2e::fixture;
use crate::cloudimg::qemu_img;
use crate::range_server::{Mode, RangeServer, Ranges, Validators};

const MIB: usize = 1 << 20;

/// A qcow2 v3 image (stored as it is, so the blob must equal the served bytes) of `mib` MiB
/// of a pattern varied by `seed`.
fn image(dir: &Path, mib: usize, seed: usize) -> Vec<u8> {
    let raw = dir.join(format!("src-{seed}.raw"));
    let data: Vec<u8> = (0..mib * MIB)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&raw, data).unwrap();
    let out = dir.join(format!("img-{seed}.qcow2"));
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        dir,
    );
    std::fs::read(out).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    imgstore::Digest::sha256_of(bytes).hex()
}

fn blob(root: &Path, bytes_hex: &str) -> PathBuf {
    root.join("cloudimg/blobs")
        .join(format!("{bytes_hex}.qcow2"))
}

fn pull(root: &Path, url: &str, extra: &[&str]) -> crate::cli_support::Run {
    let mut args = vec!["-o", "json", "pull"];
    args.extend_from_slice(extra);
    args.push(url);
    run(root, &args)
}

/// The stored image ID of `url` and the blob's bytes.
fn stored(root: &Path, url: &str) -> (String, Vec<u8>) {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("cloudimg/db/images.json")).unwrap())
            .unwrap();
    let id = idx["images"][url]["content_sum"]
        .as_str()
        .unwrap()
        .to_owned();
    let hex = id.trim_start_matches("sha256:").to_owned();
    let bytes = std::fs::read(blob(root, &hex)).unwrap();
    (hex, bytes)
}

fn temp_files(root: &Path) -> Vec<String> {
    crate::cli_support::names(&root.join("cloudimg/temp"))
        .into_iter()
        .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock"))
        .collect()
}

/// In every server mode the stored blob is exactly the served file, byte for byte, as a
/// one-stream download stores it; modes that allow guarded ranges are fetched in several
/// ranges, the others in one stream after the probe.
#[test]
fn every_server_mode_stores_the_served_bytes() {
    let f = fixture();
    let body = image(&f.files, 40, 1);
    let want = hex(&body);
    let cases: &[(&str, Mode, bool)] = &[
        ("ranges, strong ETag", Mode::default(), true),
        (
            "ranges, Last-Modified only",
            Mode {
                validators: Validators::LastModified,
                ..Mode::default()
            },
            true,
        ),
        (
            "capped at 8 MiB/s per connection",
            Mode {
                rate: 8 << 20,
                ..Mode::default()
            },
            true,
        ),
        (
            // Not a multiple of 4 KiB: the resumed buffer starts mid-block (written buffered,
            // the next one direct again).
            "connections dropped every 3 MiB + 1000 bytes",
            Mode {
                drop_after: Some((3 << 20) + 1000),
                ..Mode::default()
            },
            true,
        ),
        (
            "Range ignored",
            Mode {
                ranges: Ranges::Ignore,
                ..Mode::default()
            },
            false,
        ),
        (
            "Range answered with 200",
            Mode {
                ranges: Ranges::Answer200,
                ..Mode::default()
            },
            false,
        ),
        (
            "weak ETag only",
            Mode {
                validators: Validators::Weak,
                ..Mode::default()
            },
            false,
        ),
        (
            "no validators",
            Mode {
                validators: Validators::None,
                ..Mode::default()
            },
            false,
        ),
    ];
    for (what, mode, ranged) in cases {
        let server = RangeServer::start(body.clone(), mode.clone());
        let root = f.root.join(what.replace([' ', ',', '/'], "_"));
        let url = server.url("/img.qcow2");
        pull(&root, &url, &["--connections", "4"]).ok();
        let (id, bytes) = stored(&root, &url);
        assert_eq!(id, want, "{what}: image ID");
        assert!(
            bytes == body,
            "{what}: the blob differs from the served file"
        );
        let reqs = server.requests();
        assert!(reqs.iter().all(|r| r.method == "GET"), "{what}: {reqs:?}");
        let ranges_206 = reqs.iter().filter(|r| r.status == 206).count();
        if *ranged {
            assert!(ranges_206 > 2, "{what}: expected several ranges: {reqs:?}");
        } else {
            assert!(
                ranges_206 <= 1,
                "{what}: ranges without a strong validator: {reqs:?}"
            );
        }
        assert_eq!(
            temp_files(&root),
            Vec::<String>::new(),
            "{what}: temp debris"
        );
    }
}

/// A ranged download keeps its connections alive: the probe's and each worker's connection
/// carry piece after piece, so the server sees no more connections than the pull uses (ureq
/// pools a connection only once its body is read to the end; a new connection per piece costs
/// a handshake and a cold receive window).
#[test]
fn ranged_pieces_reuse_the_connections() {
    let f = fixture();
    // 40 MiB: the probe and three pieces.
    let body = image(&f.files, 40, 7);
    for connections in [1u64, 2] {
        let server = RangeServer::start(body.clone(), Mode::default());
        let root = f.root.join(format!("c{connections}"));
        let url = server.url("/img.qcow2");
        pull(&root, &url, &["--connections", &connections.to_string()]).ok();
        let (id, _) = stored(&root, &url);
        assert_eq!(id, hex(&body));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 4, "the probe and three pieces: {reqs:?}");
        assert!(
            server.connections() <= connections,
            "{connections} connection(s) asked for, {} opened for {} requests",
            server.connections(),
            reqs.len()
        );
    }
}

/// A file replaced on the server mid-download never yields a blob mixing both versions: the
/// guarded ranges fail (`If-Range`), or the `ETag` of a 206 differs (a server ignoring
/// `If-Range`), and the download starts over; the stored blob is the new version entirely.
/// Two connections and three pieces: the third piece is asked for after the change.
#[test]
fn a_file_changed_mid_download_is_never_mixed() {
    let f = fixture();
    let v1 = image(&f.files, 40, 2);
    let v2 = image(&f.files, 40, 3);
    assert_ne!(v1, v2);
    for ranges in [Ranges::Honour, Ranges::IgnoreIfRange] {
        let server = RangeServer::start(
            v1.clone(),
            Mode {
                ranges,
                change_after: Some(8 << 20),
                ..Mode::default()
            },
        );
        server.then_serve(v2.clone());
        let root = f.root.join(format!("{ranges:?}"));
        let url = server.url("/img.qcow2");
        pull(&root, &url, &["--connections", "2"]).ok();
        let (id, bytes) = stored(&root, &url);
        assert_eq!(id, hex(&v2), "{ranges:?}: not the new version");
        assert!(bytes == v2, "{ranges:?}: the blob mixes versions");
        let probes = server
            .requests()
            .iter()
            .filter(|r| r.range.as_deref() == Some("bytes=0-65535"))
            .count();
        assert_eq!(
            probes,
            2,
            "{ranges:?}: one restart: {:?}",
            server.requests()
        );
    }
}

/// Start a throttled pull, wait until its resume record says some ranges are durable, signal
/// it, and return the bytes the record then holds.
fn interrupt_midway(root: &Path, url: &str, signal: nix::sys::signal::Signal) -> u64 {
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(["pull", "--connections", "2", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = root.join("cloudimg/temp");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |root: &Path| -> Option<u64> {
        let _ = root;
        let rec = crate::cli_support::names(&temp)
            .into_iter()
            .find(|n| n.ends_with(".download.resume"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(temp.join(rec)).ok()?).ok()?;
        Some(
            v["done"]
                .as_array()?
                .iter()
                .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap())
                .sum(),
        )
    };
    // More than the probe's 64 KiB: at least one whole piece is durable.
    while done(root).is_none_or(|d| d <= 64 << 10) {
        assert!(Instant::now() < deadline, "no progress recorded");
        assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    done(root).unwrap()
}

/// A pull interrupted by Ctrl-C or killed outright resumes: the next pull downloads only the
/// bytes the resume record does not hold (counted by the server), and stores the same blob.
#[test]
fn resume_after_sigint_and_sigkill_fetches_only_the_missing_bytes() {
    use nix::sys::signal::Signal;
    let f = fixture();
    let body = image(&f.files, 48, 4);
    for signal in [Signal::SIGINT, Signal::SIGKILL] {
        let server = RangeServer::start(
            body.clone(),
            Mode {
                rate: 6 << 20,
                ..Mode::default()
            },
        );
        let root = f.root.join(format!("{signal:?}"));
        let url = server.url("/img.qcow2");
        let held = interrupt_midway(&root, &url, signal);
        assert!(
            held < body.len() as u64,
            "{signal:?}: finished before the signal"
        );
        server.set(Mode::default());
        server.quiesce();
        server.reset_counts();
        pull(&root, &url, &["--connections", "4"]).ok();
        assert_eq!(
            server.served(),
            body.len() as u64 - held,
            "{signal:?}: bytes served on resume"
        );
        let (id, bytes) = stored(&root, &url);
        assert_eq!(id, hex(&body));
        assert!(bytes == body, "{signal:?}: the resumed blob differs");
        assert_eq!(
            temp_files(&root),
            Vec::<String>::new(),
            "{signal:?}: temp debris"
        );
    }
}

/// A resume record whose validator no longer matches (the file changed while no pull ran) is
/// not used: the download starts over and stores the new file.
#[test]
fn a_changed_file_is_not_resumed() {
    use nix::sys::signal::Signal;
    let f = fixture();
    let v1 = image(&f.files, 40, 5);
    let v2 = image(&f.files, 40, 6);
    let server = RangeServer::start(
        v1,
        Mode {
            rate: 6 << 20,
            ..Mode::default()
        },
    );
    let url = server.url("/img.qcow2");
    interrupt_midway(&f.root, &url, Signal::SIGKILL);
    server.set(Mode::default());
    server.replace(v2.clone());
    pull(&f.root, &url, &[]).ok();
    let (id, bytes) = stored(&f.root, &url);
    assert_eq!(id, hex(&v2));
    assert!(bytes == v2);
}

/// Pulling a stored URL again costs one conditional request and no body when it is unchanged;
/// when it changed, the new file is downloaded and the name moves to it.
#[test]
fn a_stored_url_is_revalidated() {
    let f = fixture();
    let v1 = image(&f.files, 8, 7);
    let v2 = image(&f.files, 8, 8);
    for validators in [Validators::Strong, Validators::LastModified] {
        let server = RangeServer::start(
            v1.clone(),
            Mode {
                validators,
                ..Mode::default()
            },
        );
        let root = f.root.join(format!("{validators:?}"));
        let url = server.url("/img.qcow2");
        pull(&root, &url, &[]).ok();
        server.reset_counts();
        let out = pull(&root, &url, &[]).ok().json();
        assert_eq!(out[0]["revalidation"], "unchanged", "{validators:?}");
        assert_eq!(out[0]["reused"], true);
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1, "{validators:?}: {reqs:?}");
        assert!(reqs[0].conditional && reqs[0].status == 304, "{reqs:?}");
        assert_eq!(server.served(), 0, "{validators:?}: a body was sent");

        server.replace(v2.clone());
        let out = pull(&root, &url, &[]).ok().json();
        assert_eq!(out[0]["revalidation"], "changed");
        assert_eq!(out[0]["id"], format!("sha256:{}", hex(&v2)));
        let (id, bytes) = stored(&root, &url);
        assert_eq!(id, hex(&v2));
        assert!(bytes == v2);
    }
}

/// A stored URL whose server gave no validator is kept and said to be unchecked, without a
/// request; `--force` downloads it again; `--offline` never asks the server.
#[test]
fn no_validator_keeps_the_entry_force_and_offline() {
    let f = fixture();
    let v1 = image(&f.files, 8, 9);
    let v2 = image(&f.files, 8, 10);
    let server = RangeServer::start(
        v1.clone(),
        Mode {
            validators: Validators::None,
            ..Mode::default()
        },
    );
    let url = server.url("/img.qcow2");
    pull(&f.root, &url, &[]).ok();
    server.replace(v2.clone());
    server.reset_counts();
    let r = run(&f.root, &["pull", &url]).ok();
    assert!(
        r.stdout.contains("not checked") && r.stdout.contains("--force"),
        "{}",
        r.stdout
    );
    let out = pull(&f.root, &url, &["--offline"]).ok().json();
    assert_eq!(out[0]["revalidation"], "offline");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_eq!(stored(&f.root, &url).0, hex(&v1));
    pull(&f.root, &url, &["--force"]).ok();
    assert_eq!(stored(&f.root, &url).0, hex(&v2));
    let r = run(&f.root, &["pull", "--offline", &server.url("/other.qcow2")]);
    let r = r.fails();
    assert!(r.stderr.contains("offline"), "{}", r.stderr);
}
