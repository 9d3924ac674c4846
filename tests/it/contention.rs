//! Contention: many processes importing, removing, collecting and reading one store at once,
//! and how fast `config` (the VM manager's boot path) answers while a big import runs and on an
//! index of 10,000 images. Latencies are printed as a report, never asserted.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imgstore::store::Store;
use imgstore::Digest;

use crate::cli_support::{bin, run, Run};
use crate::crash::{assert_consistent, new_root, raw_image, SplitMix};

fn cli(root: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running imgstore");
    Run::from_output(&out)
}

/// p50 and p99 of `samples` in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_sign_loss,
            clippy::cast_possible_truncation
        )]
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

/// A `config` failure that means the store broke a promise (as opposed to "no such image").
fn broken_promise(r: &Run) -> bool {
    r.code != 0
        && (r.stderr.contains("is missing")
            || r.stderr.contains("bytes, expected")
            || !r.stderr.contains("error: "))
}

/// Eight workers, each running one CLI process after another for 20 s: three importers (1–4
/// MiB raw images, the same content under several names), two removers (names that may not
/// exist), one `gc --grace 0` loop and two `config` readers. Every import succeeds, no reader
/// ever sees an image whose files are missing or the wrong size, and afterwards the store is
/// consistent and every image left verifies and configures.
#[test]
fn importers_removers_gc_and_readers_at_once() {
    const RUN_FOR: Duration = Duration::from_secs(20);
    const NAMES: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let root = new_root(dir.path());
    let raws: Vec<PathBuf> = (0..4u64)
        .map(|i| {
            let p = dir.path().join(format!("disk{i}.raw"));
            raw_image(&p, ((i + 1) as usize) << 20, 500 + i);
            p
        })
        .collect();
    let problems = Mutex::new(Vec::<String>::new());
    let counts: [AtomicU32; 4] = Default::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..8u64 {
            let (root, raws, problems, counts) = (&root, &raws, &problems, &counts);
            s.spawn(move || {
                let mut rng = SplitMix(worker);
                while started.elapsed() < RUN_FOR {
                    let name = format!("img-{}", rng.below(NAMES));
                    let (role, r) = match worker {
                        0..=2 => {
                            let raw = &raws[rng.below(4) as usize];
                            (0, cli(root, &["import", &name, raw.to_str().unwrap()]))
                        }
                        3 | 4 => (1, cli(root, &["rm", &name])),
                        5 => (2, cli(root, &["gc", "--grace", "0"])),
                        _ => (3, cli(root, &["-o", "json", "config", &name])),
                    };
                    counts[role].fetch_add(1, Ordering::Relaxed);
                    let bad = match role {
                        0 | 2 => r.code != 0,
                        1 => r.code != 0 && !r.stderr.contains("no image"),
                        _ => broken_promise(&r),
                    };
                    if bad {
                        problems.lock().unwrap().push(format!(
                            "worker {worker} ({name}): exit {}: {}",
                            r.code, r.stderr
                        ));
                    }
                }
            });
        }
    });
    let [imports, removes, gcs, configs] = counts.map(AtomicU32::into_inner);
    eprintln!(
        "contention: {imports} imports, {removes} rm, {gcs} gc, {configs} config in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let problems = problems.into_inner().unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(imports > 0 && removes > 0 && gcs > 0 && configs > 0);
    assert_consistent(&root, &HashSet::new());
    run(&root, &["verify"]).ok();
    let listed = run(&root, &["-o", "json", "list"]).ok().json();
    for e in listed.as_array().unwrap() {
        run(&root, &["config", e["name"].as_str().unwrap()]).ok();
    }
}

/// `config` keeps answering while a 256 MiB import stages, checks, converts and commits: the
/// import holds no lock a reader needs except for its final index write. Reports p50/p99 of
/// the CLI (process start included) and of the library call an embedder makes.
#[test]
fn config_answers_during_a_large_import() {
    let dir = tempfile::tempdir().unwrap();
    let root = new_root(dir.path());
    let small = dir.path().join("small.raw");
    raw_image(&small, 1 << 20, 7);
    run(&root, &["import", "small", small.to_str().unwrap()]).ok();
    let big = dir.path().join("big.raw");
    {
        let mut out = std::fs::File::create(&big).unwrap();
        let mut rnd = std::fs::File::open("/dev/urandom").unwrap().take(256 << 20);
        std::io::copy(&mut rnd, &mut out).unwrap();
    }

    let mut import = Command::new(bin())
        .arg("--root")
        .arg(&root)
        .args(["import", "big"])
        .arg(&big)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let store = Store::open(&root).unwrap();
    let (mut cli_times, mut lib_times) = (Vec::new(), Vec::new());
    let mut during = 0u32;
    let import_time = Instant::now();
    let mut import_done = None;
    while cli_times.len() < 50 || import_done.is_none() {
        let t = Instant::now();
        cli(&root, &["config", "small"]).ok();
        cli_times.push(t.elapsed());
        let t = Instant::now();
        store.config(&["small"]).unwrap();
        lib_times.push(t.elapsed());
        match import.try_wait().unwrap() {
            None => during += 1,
            Some(status) if import_done.is_none() => {
                let mut err = String::new();
                import
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(status.success(), "big import failed: {err}");
                import_done = Some(import_time.elapsed());
            }
            Some(_) => {}
        }
    }
    let _ = import.wait();
    let (c50, c99) = percentiles(&mut cli_times);
    let (l50, l99) = percentiles(&mut lib_times);
    eprintln!(
        "config during a 256 MiB import ({:.1} s): {} calls, {during} while it ran; \
         CLI p50 {c50:.2} ms p99 {c99:.2} ms; library p50 {l50:.3} ms p99 {l99:.3} ms",
        import_done.unwrap_or_default().as_secs_f64(),
        cli_times.len()
    );
    assert!(
        during > 0,
        "no config call completed while the import was in flight"
    );
    run(&root, &["verify", "big"]).ok();
}

/// An index of 10,000 cloud images (written directly, with 10,000 small blob files): how long
/// `config` takes by name and by digest prefix. A report, not an assertion, beyond success.
#[test]
fn config_latency_at_10000_images() {
    const IMAGES: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let root = new_root(dir.path());
    let blobs = root.join("cloudimg/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(root.join("cloudimg/db")).unwrap();
    let mut images = serde_json::Map::new();
    let mut ids = Vec::with_capacity(IMAGES);
    for i in 0..IMAGES {
        let content = format!("QFI\u{fb} fake blob {i}");
        let key = Digest::sha256_of(format!("source {i}").as_bytes());
        std::fs::write(blobs.join(format!("{}.qcow2", key.hex())), &content).unwrap();
        let name = format!("image-{i}");
        images.insert(
            name.clone(),
            serde_json::json!({
                "ref": name,
                "content_sum": key.to_string(),
                "size": content.len(),
                "created_at": "2026-01-01T00:00:00Z",
                "blob": {
                    "sha256": Digest::sha256_of(content.as_bytes()).to_string(),
                    "blake3": Digest::blake3_of(content.as_bytes()).to_string(),
                    "size": content.len(),
                },
            }),
        );
        ids.push(key);
    }
    let index = serde_json::json!({ "images": images });
    std::fs::write(root.join("cloudimg/db/images.json"), format!("{index}\n")).unwrap();

    let mut rng = SplitMix(10_000);
    let mut by_name = Vec::new();
    let mut by_prefix = Vec::new();
    // Few samples: a debug build parses a 3 MB index slowly, and CI time matters more.
    for _ in 0..15 {
        let i = rng.below(IMAGES as u64) as usize;
        let t = Instant::now();
        cli(&root, &["config", &format!("image-{i}")]).ok();
        by_name.push(t.elapsed());
        let t = Instant::now();
        cli(&root, &["config", &ids[i].hex()[..12]]).ok();
        by_prefix.push(t.elapsed());
    }
    let store = Store::open(&root).unwrap();
    let mut lib = Vec::new();
    for _ in 0..20 {
        let i = rng.below(IMAGES as u64) as usize;
        let t = Instant::now();
        let c = store.config(&[&format!("image-{i}")]).unwrap();
        lib.push(t.elapsed());
        assert_eq!(c[0].image_digest, ids[i]);
    }
    let (n50, n99) = percentiles(&mut by_name);
    let (p50, p99) = percentiles(&mut by_prefix);
    let (l50, l99) = percentiles(&mut lib);
    eprintln!(
        "config at {IMAGES} images: CLI by name p50 {n50:.1} ms p99 {n99:.1} ms; CLI by \
         12-digit prefix p50 {p50:.1} ms p99 {p99:.1} ms; library by name p50 {l50:.1} ms \
         p99 {l99:.1} ms"
    );
}
