//! Crash consistency: the CLI is killed at every failpoint (`IMGSTORE_FAILPOINT`, an abort with
//! no cleanup) and at random moments (SIGKILL), and after each death the store must hold the old
//! or the new state plus debris that GC removes — never a half-written blob or index.

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgstore::gc::GcOptions;
use imgstore::store::Store;
use imgstore::{Kind, Layout};

use crate::cli_support::{bin, run, Run};
use crate::oci_image::{pseudo_random, LayerBuilder};

// ---------------------------------------------------------------------------------------------
// inputs

/// A raw disk image of `size` bytes of incompressible data drawn from `seed`.
pub fn raw_image(path: &Path, size: usize, seed: u64) {
    std::fs::write(path, pseudo_random(size, seed)).unwrap();
}

/// A layer tar with a few files; with `boot`, it also carries a kernel and an initrd.
pub fn layer_tar(path: &Path, seed: u64, boot: bool) {
    let mut l = LayerBuilder::new()
        .dir("etc")
        .file("etc/hostname", format!("host-{seed}\n"))
        .random_file("data.bin", 64 << 10, seed);
    if boot {
        l = l
            .dir("boot")
            .random_file("boot/vmlinuz-6.1.0", 8 << 10, seed ^ 0x6b)
            .random_file("boot/initrd.img-6.1.0", 8 << 10, seed ^ 0x69);
    }
    std::fs::write(path, l.build().tar).unwrap();
}

/// sha256 hex of a file (the key a layer tar or a cloud source is stored under).
pub fn key_of(path: &Path) -> String {
    imgstore::Digest::sha256_of(&std::fs::read(path).unwrap()).hex()
}

/// A store root with the firmware cloud images boot from, so `config` works on them.
pub fn new_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("firmware")).unwrap();
    std::fs::write(root.join("firmware/CLOUDHV.fd"), b"firmware").unwrap();
    root
}

/// Run the CLI with `IMGSTORE_FAILPOINT=point`; return how it ended.
fn run_at(root: &Path, cwd: &Path, point: &str, args: &[&str]) -> (std::process::ExitStatus, Run) {
    let out = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("IMGSTORE_FAILPOINT", point)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("running imgstore");
    let r = Run::from_output(&out);
    (out.status, r)
}

// ---------------------------------------------------------------------------------------------
// invariants

/// Whether a file name ends in `.tmp` (a temp file of an interrupted write).
pub fn is_tmp(name: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e == "tmp")
}

fn is_blob_name(name: &str, ext: &str) -> Option<String> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    imgstore::digest::is_hex64(stem).then(|| stem.to_owned())
}

fn tool_ok(tool: &str, args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| format!("running {tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} rejects {}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every invariant a store must satisfy after any crash, as a list of violations (empty: fine).
///
/// - both indexes (and their `.bak`) parse, `list` and `verify` succeed;
/// - `db/` holds only the index, its backup, its lock, the gc lease and leftovers of interrupted
///   writes;
/// - every file in `blobs/` is named `<64 hex>.<ext>`, non-empty, read-only, and a complete
///   image (`qemu-img check` for qcow2, `fsck.erofs` for EROFS) — referenced or orphan;
/// - every oci blob of a layer in `boot_layers` has its kernel and initrd (boot files are
///   published before the blob);
/// - every `boot/` entry is a `<64 hex>` directory of read-only files.
pub fn violations(root: &Path, boot_layers: &HashSet<String>) -> Vec<String> {
    let mut v = Vec::new();
    let list = run(root, &["-o", "json", "list"]);
    if list.code != 0 {
        v.push(format!("list failed: {}", list.stderr));
    } else if serde_json::from_str::<serde_json::Value>(&list.stdout).is_err() {
        v.push(format!("list printed no JSON: {}", list.stdout));
    }
    let verify = run(root, &["verify"]);
    if verify.code != 0 {
        v.push(format!(
            "verify failed: {}\n{}",
            verify.stdout, verify.stderr
        ));
    }
    for (kind, ext) in [("cloudimg", "qcow2"), ("oci", "erofs")] {
        let b = root.join(kind);
        for name in crate::cli_support::names(&b.join("db")) {
            let ok = matches!(
                name.as_str(),
                "images.json" | "images.json.bak" | "images.lock" | "images.idx" | "gc.lock"
            ) || (is_tmp(&name)
                && (name.starts_with(".images.json.") || name.starts_with(".link.")));
            if !ok {
                v.push(format!("unexpected file {kind}/db/{name}"));
            }
            if name == "images.json.bak" {
                let raw = std::fs::read(b.join("db").join(&name)).unwrap_or_default();
                if serde_json::from_slice::<serde_json::Value>(&raw).is_err() {
                    v.push(format!("{kind}/db/images.json.bak does not parse"));
                }
            }
        }
        for name in crate::cli_support::names(&b.join("blobs")) {
            let p = b.join("blobs").join(&name);
            let Some(hex) = is_blob_name(&name, ext) else {
                v.push(format!("foreign or partial file {}", p.display()));
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if !meta.is_file() || meta.len() == 0 {
                v.push(format!("{} is empty or not a file", p.display()));
                continue;
            }
            if meta.permissions().mode() & 0o777 != 0o444 {
                v.push(format!("{} is not read-only", p.display()));
            }
            let check = if ext == "qcow2" {
                tool_ok("qemu-img", &["check", "-q", "-f", "qcow2"], &p)
            } else {
                tool_ok("fsck.erofs", &[], &p)
            };
            if let Err(e) = check {
                v.push(e);
            }
            if ext == "erofs" && boot_layers.contains(&hex) {
                for f in ["vmlinuz", "initrd.img"] {
                    if !b.join("boot").join(&hex).join(f).is_file() {
                        v.push(format!("blob {hex} exists without boot/{hex}/{f}"));
                    }
                }
            }
        }
        for name in crate::cli_support::names(&b.join("boot")) {
            let p = b.join("boot").join(&name);
            if !imgstore::digest::is_hex64(&name) || !p.is_dir() {
                v.push(format!("foreign or partial boot entry {}", p.display()));
                continue;
            }
            for f in crate::cli_support::names(&p) {
                let mode = std::fs::metadata(p.join(&f)).map_or(0, |m| m.permissions().mode());
                if mode & 0o777 != 0o444 {
                    v.push(format!("boot file {}/{f} is not read-only", p.display()));
                }
            }
        }
    }
    v
}

#[track_caller]
pub fn assert_consistent(root: &Path, boot_layers: &HashSet<String>) {
    let v = violations(root, boot_layers);
    assert!(v.is_empty(), "store invariants violated:\n{}", v.join("\n"));
}

/// Key digests (hex) every index entry refers to: cloud content sums, oci layers and boot layers.
pub fn referenced(root: &Path) -> BTreeSet<(Kind, String)> {
    let store = Store::open(root).unwrap();
    let mut out = BTreeSet::new();
    for e in store.list().unwrap() {
        let info = store.inspect(&e.name).unwrap();
        for b in info.blobs {
            out.insert((e.kind, b.key.hex()));
        }
    }
    out
}

/// Collect with no grace at all (blobs and temp entries), then check that only referenced
/// blobs are left and `temp/` is empty.
pub fn collect_all_and_check(root: &Path) {
    let report = imgstore::gc::collect(
        &Layout::new(root.to_path_buf()),
        &GcOptions {
            grace: Duration::ZERO,
            temp_grace: Duration::ZERO,
            ..GcOptions::default()
        },
        &[],
    )
    .unwrap();
    let refs = referenced(root);
    for kind in Kind::ALL {
        let b = Layout::new(root.to_path_buf()).backend(kind);
        let temp = crate::cli_support::names(&b.temp_dir());
        assert!(
            temp.is_empty(),
            "temp/ of {kind} not emptied by gc: {temp:?}\n{report:?}"
        );
        for name in crate::cli_support::names(&b.blobs_dir()) {
            let hex = is_blob_name(&name, kind.blob_ext()).unwrap_or_default();
            assert!(
                refs.contains(&(kind, hex.clone())),
                "unreferenced blob {name} survived gc --grace 0: {report:?}"
            );
        }
        for name in crate::cli_support::names(&b.boot_root()) {
            assert!(
                refs.contains(&(kind, name.clone())),
                "unreferenced boot dir {name} survived gc"
            );
        }
    }
}

/// Temp entries (other than lock files) and unreferenced blobs and boot dirs.
fn debris(root: &Path) -> Vec<String> {
    let refs = referenced(root);
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let b = Layout::new(root.to_path_buf()).backend(kind);
        out.extend(
            crate::cli_support::names(&b.temp_dir())
                .into_iter()
                .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock")),
        );
        for name in crate::cli_support::names(&b.blobs_dir()) {
            let hex = is_blob_name(&name, kind.blob_ext()).unwrap_or_default();
            if !refs.contains(&(kind, hex)) {
                out.push(name);
            }
        }
        for name in crate::cli_support::names(&b.boot_root()) {
            if !refs.contains(&(kind, name.clone())) {
                out.push(name);
            }
        }
    }
    out
}

fn names_in_index(root: &Path) -> BTreeSet<String> {
    run(root, &["-o", "json", "list"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// every failpoint

struct Inputs {
    dir: tempfile::TempDir,
    base_raw: PathBuf,
    raw: PathBuf,
    base_layer: PathBuf,
    boot_layer: PathBuf,
    boot_layers: HashSet<String>,
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let base_raw = dir.path().join("base.raw");
    let raw = dir.path().join("disk.raw");
    raw_image(&base_raw, 1 << 20, 1);
    raw_image(&raw, 1 << 20, 2);
    let base_layer = dir.path().join("base.tar");
    let boot_layer = dir.path().join("boot.tar");
    layer_tar(&base_layer, 3, false);
    layer_tar(&boot_layer, 4, true);
    let boot_layers = std::iter::once(key_of(&boot_layer)).collect();
    Inputs {
        dir,
        base_raw,
        raw,
        base_layer,
        boot_layer,
        boot_layers,
    }
}

/// Die at `point` while running `args` on a store that already holds one image of each type,
/// check the invariants and whether the new index key `key` is there (`committed`), collect the
/// debris, then run `args` again without the failpoint: it must succeed and verify.
fn crash_at(inp: &Inputs, point: &str, name: &str, key: &str, args: &[&str], committed: bool) {
    let case = tempfile::tempdir().unwrap();
    let root = new_root(case.path());
    let base_raw = inp.base_raw.to_str().unwrap();
    let base_layer = inp.base_layer.to_str().unwrap();
    let boot_layer = inp.boot_layer.to_str().unwrap();
    run(&root, &["import", "base-cloud", base_raw]).ok();
    run(&root, &["import", "base-oci", base_layer, boot_layer]).ok();
    let before = names_in_index(&root);

    let (status, out) = run_at(&root, case.path(), point, args);
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGABRT as i32),
        "{point}: expected an abort, got {status}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains(point), "{point}: {}", out.stderr);

    assert_consistent(&root, &inp.boot_layers);
    let after = names_in_index(&root);
    let mut expected = before.clone();
    if committed {
        expected.insert(key.to_owned());
    }
    assert_eq!(after, expected, "{point}: index is neither old nor new");
    if !committed {
        // The abort ran no cleanup: what it was working on is still there for gc to find.
        assert!(
            !debris(&root).is_empty(),
            "{point}: the crash left no debris"
        );
    }

    collect_all_and_check(&root);
    assert_consistent(&root, &inp.boot_layers);
    assert_eq!(
        names_in_index(&root),
        expected,
        "{point}: gc changed the index"
    );

    run(&root, args).ok();
    run(&root, &["verify"]).ok();
    run(&root, &["config", name]).ok();
    assert_consistent(&root, &inp.boot_layers);
    let db = crate::cli_support::names(&root.join("cloudimg/db"));
    assert!(
        db.iter().all(|n| !is_tmp(n)),
        "{point}: a later index write leaves no temp file: {db:?}"
    );
}

/// Each failpoint of a cloud import: the store holds the old state (or, once the index rename
/// happened, the new one), its debris is collectable, and the import then succeeds.
#[test]
fn cloud_import_survives_every_failpoint() {
    let inp = inputs();
    let raw = inp.raw.to_str().unwrap();
    let args = ["import", "new-cloud", raw];
    for (point, committed) in [
        ("ingest.staged", false),
        ("publish.before_rename", false),
        ("cloud.before_commit", false),
        ("index.before_write", false),
        ("index.after_rename", true),
    ] {
        crash_at(&inp, point, "new-cloud", "new-cloud", &args, committed);
    }
}

/// Each failpoint of an oci layer-tar import, including the window between a layer's boot
/// files and its blob.
#[test]
fn oci_import_survives_every_failpoint() {
    let inp = inputs();
    let dir = inp.dir.path();
    // New layers, so the import publishes rather than reuses.
    let l1 = dir.join("new-base.tar");
    let l2 = dir.join("new-boot.tar");
    layer_tar(&l1, 13, false);
    layer_tar(&l2, 14, true);
    let mut inp = inp;
    inp.boot_layers.insert(key_of(&l2));
    let args = [
        "import",
        "new-oci",
        l1.to_str().unwrap(),
        l2.to_str().unwrap(),
    ];
    for (point, committed) in [
        ("oci.after_boot_publish", false),
        ("publish.before_rename", false),
        ("publish.after_rename", false),
        ("index.before_write", false),
        ("index.after_rename", true),
    ] {
        crash_at(
            &inp,
            point,
            "new-oci",
            "docker.io/library/new-oci:latest",
            &args,
            committed,
        );
    }
}

/// GC killed between deleting a layer's boot dir and its blob, or right after the blob: the
/// indexes are untouched, the next collection finishes the job, and the image can be imported
/// again.
#[test]
fn gc_survives_every_failpoint() {
    let inp = inputs();
    let boot_layer = inp.boot_layer.to_str().unwrap();
    let raw = inp.raw.to_str().unwrap();
    for point in ["gc.after_delete_boot", "gc.after_delete_blob"] {
        let case = tempfile::tempdir().unwrap();
        let root = new_root(case.path());
        run(&root, &["import", "doomed-oci", boot_layer]).ok();
        run(&root, &["import", "kept", inp.base_raw.to_str().unwrap()]).ok();
        run(&root, &["rm", "doomed-oci"]).ok();

        let (status, out) = run_at(&root, case.path(), point, &["gc", "--grace", "0"]);
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGABRT as i32),
            "{point}: {status} {}",
            out.stderr
        );
        // gc deletes a layer's blob before its boot dir, so at every point of a collection an
        // existing blob still has its boot files: the check holds for orphans too.
        let boot_layers = inp.boot_layers.clone();
        assert_consistent(&root, &boot_layers);
        assert_eq!(
            names_in_index(&root),
            BTreeSet::from(["kept".to_owned()]),
            "{point}"
        );
        collect_all_and_check(&root);
        run(&root, &["import", "doomed-oci", boot_layer]).ok();
        run(&root, &["import", "doomed-cloud", raw]).ok();
        run(&root, &["verify"]).ok();
        run(&root, &["config", "doomed-oci", "doomed-cloud", "kept"]).ok();
        assert_consistent(&root, &inp.boot_layers);
    }
}

// ---------------------------------------------------------------------------------------------
// random kills

/// A small deterministic PRNG (splitmix64): the same run every time, no rand crate.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Start `imgstore ARGS` in its own process group, so a kill takes any `qemu-img` or
/// `mkfs.erofs` child with it (as a crash of the machine would).
fn spawn_group(root: &Path, cwd: &Path, args: &[String]) -> std::process::Child {
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawning imgstore")
}

fn kill_group(child: &mut std::process::Child) {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// What round `i` of the random-kill harness runs: an import (cloud or oci), an `rm`, or a gc.
fn round_args(i: u64, raws: &[PathBuf], ocis: &[(PathBuf, PathBuf)]) -> Vec<String> {
    let mut round = SplitMix(i);
    match round.below(5) {
        0 | 1 => {
            let n = round.below(4) as usize;
            vec![
                "import".into(),
                format!("cloud-{}", round.below(6)),
                raws[n].display().to_string(),
            ]
        }
        2 | 3 => {
            let (base, boot) = &ocis[round.below(3) as usize];
            vec![
                "import".into(),
                format!("oci-{}", round.below(6)),
                base.display().to_string(),
                boot.display().to_string(),
            ]
        }
        _ => {
            if round.below(2) == 0 {
                vec!["rm".into(), format!("cloud-{}", round.below(6))]
            } else {
                vec!["gc".into(), "--grace".into(), "0".into()]
            }
        }
    }
}

/// 300 imports (cloud and oci, new and repeated content), removals and collections, each
/// `SIGKILL`ed after a random 0–30 ms; the invariants hold every 20 kills and at the end, and a final round of
/// imports without kills succeeds.
#[test]
fn random_kills_leave_a_consistent_store() {
    const ROUNDS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let root = new_root(dir.path());
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    // Four cloud images and three oci images; names and contents repeat across rounds.
    let mut raws = Vec::new();
    for i in 0..4u64 {
        let p = dir.path().join(format!("disk{i}.raw"));
        raw_image(&p, (1 << 20) + (i as usize) * (256 << 10), 100 + i);
        raws.push(p);
    }
    let mut boot_layers = HashSet::new();
    let mut ocis = Vec::new();
    for i in 0..3u64 {
        let base = dir.path().join(format!("base{i}.tar"));
        let boot = dir.path().join(format!("boot{i}.tar"));
        layer_tar(&base, 200 + i % 2, false);
        layer_tar(&boot, 300 + i, true);
        boot_layers.insert(key_of(&boot));
        ocis.push((base, boot));
    }

    let started = Instant::now();
    let mut landed = 0u32;
    let mut finished = 0u32;
    let mut rng = SplitMix(0x5eed);
    for i in 0..ROUNDS {
        let args = round_args(i, &raws, &ocis);
        let mut child = spawn_group(&root, &cwd, &args);
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        if child.try_wait().unwrap().is_none() {
            landed += 1;
        } else {
            finished += 1;
        }
        kill_group(&mut child);
        if (i + 1) % 20 == 0 {
            // Every oci blob, referenced or orphan, must still have its boot files.
            let v = violations(&root, &boot_layers);
            assert!(
                v.is_empty(),
                "after {} rounds (last: {args:?}):\n{}",
                i + 1,
                v.join("\n")
            );
        }
    }
    eprintln!(
        "random kills: {ROUNDS} rounds, {landed} killed mid-operation, {finished} had already \
         finished, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        landed > ROUNDS as u32 / 4,
        "most kills should land mid-operation"
    );
    assert_consistent(&root, &boot_layers);
    collect_all_and_check(&root);
    // Everything can still be stored and used.
    for (i, raw) in raws.iter().enumerate() {
        let name = format!("final-cloud-{i}");
        run(&root, &["import", &name, raw.to_str().unwrap()]).ok();
        run(&root, &["config", &name]).ok();
    }
    for (i, (base, boot)) in ocis.iter().enumerate() {
        let name = format!("final-oci-{i}");
        run(
            &root,
            &[
                "import",
                &name,
                base.to_str().unwrap(),
                boot.to_str().unwrap(),
            ],
        )
        .ok();
        run(&root, &["config", &name]).ok();
    }
    run(&root, &["verify"]).ok();
    assert_consistent(&root, &boot_layers);
}
