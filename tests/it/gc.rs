//! Garbage collection on real trees: referenced and pinned blobs survive, orphans go with their
//! boot dirs, in-flight ingests (digest locks held by another process) and index entries
//! committed after the mark are honoured, temp debris is swept while live temp entries are not,
//! dry runs match real runs, and a collection killed at any moment never loses referenced data.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use imgstore::fsutil::{TempDir, TempFile};
use imgstore::gc::{self, GcOptions, GcReport, Hook, PinSource, SkipReason};
use imgstore::index::file::Db;
use imgstore::index::CloudEntry;
use imgstore::lock::{self, LockWait};
use imgstore::store::Store;
use imgstore::{Digest, Kind, Layout};

use crate::cli_support::{bin, cocoon_root, names, run, tree};
use crate::support::{self, await_signal, signal, wait_for_file};

/// Two hours ago: older than the default grace periods.
fn two_hours_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(7200)
}

/// Give `path` (file or directory) an old mtime.
fn age(path: &Path) {
    File::open(path)
        .unwrap()
        .set_modified(two_hours_ago())
        .unwrap();
}

fn key(seed: &str) -> Digest {
    Digest::sha256_of(seed.as_bytes())
}

/// An unreferenced blob `<hex>.<ext>` of `kind` (with a boot dir for oci), aged unless `fresh`.
fn orphan(root: &Path, kind: Kind, seed: &str, fresh: bool) -> Digest {
    let d = key(seed);
    let b = Layout::new(root).backend(kind);
    std::fs::create_dir_all(b.blobs_dir()).unwrap();
    let blob = b.blob_path(&d);
    std::fs::write(&blob, format!("orphan {seed}")).unwrap();
    if !fresh {
        age(&blob);
    }
    if kind == Kind::Oci {
        let boot = b.boot_dir(&d);
        std::fs::create_dir_all(&boot).unwrap();
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::write(boot.join(f), b"boot").unwrap();
            if !fresh {
                age(&boot.join(f));
            }
        }
        if !fresh {
            age(&boot);
        }
    }
    d
}

/// The files `cocoon_root` made for the images its indexes name.
fn referenced(root: &Path) -> Vec<(PathBuf, String)> {
    tree(root)
        .into_iter()
        .filter(|(p, _)| {
            let s = p.to_string_lossy();
            s.contains("/blobs/") || s.contains("/boot/") || s.contains("/db/")
        })
        .collect()
}

fn opts(grace: Duration) -> GcOptions {
    GcOptions {
        grace,
        ..GcOptions::default()
    }
}

fn collected(r: &GcReport) -> BTreeSet<Digest> {
    r.blobs.iter().map(|c| c.digest).collect()
}

fn skipped(r: &GcReport, reason: SkipReason) -> BTreeSet<PathBuf> {
    r.skipped
        .iter()
        .filter(|s| s.reason == reason)
        .map(|s| s.path.clone())
        .collect()
}

fn collect(root: &Path, o: &GcOptions) -> GcReport {
    Store::open(root).unwrap().gc(o, &[]).unwrap()
}

/// Across several sweep batches (2,048 candidates each, stat-ed a batch ahead of the deletes):
/// every old orphan goes with its exact size counted, every fresh one (one in seven, spread over
/// all batches) stays as `TooNew`, and the referenced files are untouched.
#[test]
fn grace_and_sizes_hold_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cocoon_root(root);
    let before = referenced(root);
    let b = Layout::new(root).backend(Kind::CloudImg);
    let (mut old, mut fresh, mut old_bytes) = (BTreeSet::new(), BTreeSet::new(), 0u64);
    for i in 0..2 * 2048 + 100 {
        let seed = format!("batch-{i}");
        let is_fresh = i % 7 == 3;
        let d = orphan(root, Kind::CloudImg, &seed, is_fresh);
        if is_fresh {
            fresh.insert(b.blob_path(&d));
        } else {
            old_bytes += format!("orphan {seed}").len() as u64;
            old.insert(d);
        }
    }
    let r = collect(root, &opts(Duration::from_secs(3600)));
    assert_eq!(collected(&r), old);
    assert_eq!(r.bytes_freed, old_bytes);
    assert_eq!(skipped(&r, SkipReason::TooNew), fresh);
    assert!(fresh.iter().all(|p| p.exists()));
    assert!(old.iter().all(|d| !b.blob_path(d).exists()));
    let mut expected = before;
    expected.extend(fresh.iter().map(|p| {
        let seed = (0..2 * 2048 + 100)
            .map(|i| format!("batch-{i}"))
            .find(|s| b.blob_path(&key(s)) == *p)
            .unwrap();
        (
            p.strip_prefix(root).unwrap().to_path_buf(),
            Digest::sha256_of(format!("orphan {seed}").as_bytes()).hex()[..16].to_owned(),
        )
    }));
    expected.sort();
    assert_eq!(referenced(root), expected);
}

/// Blobs named by either index survive (even with grace 0); old orphans go with their oci boot
/// dir; a fresh orphan is kept as `TooNew` under the default grace and collected by `--grace 0`.
#[test]
fn referenced_survive_orphans_collected_grace_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cocoon_root(root);
    let before = referenced(root);
    let layout = Layout::new(root);
    let oci = orphan(root, Kind::Oci, "oci-orphan", false);
    let cloud = orphan(root, Kind::CloudImg, "cloud-orphan", false);
    let fresh = orphan(root, Kind::CloudImg, "cloud-fresh", true);

    let r = collect(root, &opts(Duration::from_secs(3600)));
    assert_eq!(collected(&r), BTreeSet::from([oci, cloud]));
    let freed = "orphan oci-orphan".len() + 8 + "orphan cloud-orphan".len();
    assert_eq!(r.bytes_freed, freed as u64, "{r:?}");
    assert!(!layout.backend(Kind::Oci).blob_path(&oci).exists());
    assert!(!layout.backend(Kind::Oci).boot_dir(&oci).exists());
    assert!(!layout.backend(Kind::CloudImg).blob_path(&cloud).exists());
    let fresh_path = layout.backend(Kind::CloudImg).blob_path(&fresh);
    assert!(fresh_path.exists());
    assert_eq!(
        skipped(&r, SkipReason::TooNew),
        BTreeSet::from([fresh_path.clone()])
    );
    let mut expected = before.clone();
    expected.push((
        fresh_path.strip_prefix(root).unwrap().to_path_buf(),
        Digest::sha256_of(b"orphan cloud-fresh").hex()[..16].to_owned(),
    ));
    expected.sort();
    assert_eq!(referenced(root), expected);
    // Nothing is left in temp/: the digest locks gc took were deleted while held.
    assert!(names(&layout.backend(Kind::CloudImg).temp_dir()).is_empty());
    assert!(names(&layout.backend(Kind::Oci).temp_dir()).is_empty());

    let out = run(root, &["gc", "--grace", "0", "-o", "json"]).ok().json();
    let blobs: Vec<String> = out["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(blobs, vec![fresh.to_string()]);
    assert!(!fresh_path.exists());
    assert_eq!(referenced(root), before, "referenced files survive grace 0");
}

struct Pins(Vec<Digest>);

impl PinSource for Pins {
    fn name(&self) -> String {
        "vms".to_owned()
    }
    fn pinned(&self) -> Result<Vec<Digest>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.clone())
    }
}

struct Broken;

impl PinSource for Broken {
    fn name(&self) -> String {
        "snapshots".to_owned()
    }
    fn pinned(&self) -> Result<Vec<Digest>, Box<dyn std::error::Error + Send + Sync>> {
        Err("snapshot database unreachable".into())
    }
}

/// A pinned blob survives; a failing pin source aborts the run before anything is deleted
/// ("unknown means in use"), even with grace 0 and stale temp debris around.
#[test]
fn pins_keep_blobs_and_a_failing_pin_source_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let layout = Layout::new(root);
    let pinned = orphan(root, Kind::CloudImg, "pinned", false);
    let pinned_layer = orphan(root, Kind::Oci, "pinned-layer", false);
    let loose = orphan(root, Kind::CloudImg, "loose", false);
    let temp = layout.backend(Kind::CloudImg).temp_dir();
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::write(temp.join("stale.tmp"), b"x").unwrap();
    age(&temp.join("stale.tmp"));
    let store = Store::open(root).unwrap();

    let before = tree(root);
    let names_before = names(&temp);
    let pins = Pins(vec![pinned, pinned_layer]);
    let sources: [&dyn PinSource; 2] = [&pins, &Broken];
    let e = store.gc(&opts(Duration::ZERO), &sources).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("snapshots") && msg.contains("unreachable"),
        "{msg}"
    );
    assert_eq!(tree(root), before, "nothing deleted");
    assert_eq!(names(&temp), names_before, "no lock files or temp changes");

    let r = store.gc(&opts(Duration::ZERO), &[&pins]).unwrap();
    assert_eq!(collected(&r), BTreeSet::from([loose]));
    assert!(layout.backend(Kind::CloudImg).blob_path(&pinned).exists());
    assert!(layout.backend(Kind::Oci).blob_path(&pinned_layer).exists());
    assert!(layout.backend(Kind::Oci).boot_dir(&pinned_layer).exists());
}

/// Child role: hold the digest lock of `DIGEST` in `KIND` until told to release it, as an ingest
/// does for its whole run (an oci pull from before its downloads to its commit).
#[test]
fn child_holds_digest_lock() {
    let Some(args) = support::child_args("gc-digest-holder") else {
        return;
    };
    let layout = Layout::new(&args["ROOT"]);
    let kind = if args["KIND"] == "oci" {
        Kind::Oci
    } else {
        Kind::CloudImg
    };
    let d = Digest::parse(&args["DIGEST"]).unwrap();
    let b = layout.backend(kind);
    std::fs::create_dir_all(b.temp_dir()).unwrap();
    let g = lock::lock_deletable(&b.digest_lock_path(&d), LockWait::blocking(), &|_| {}).unwrap();
    signal(Path::new(&args["LOCKED"]), "locked");
    await_signal(Path::new(&args["RELEASE"]));
    drop(g);
}

/// Child role: hold the gc lease of `KIND` shared until told to release it, as an ingest does
/// from its reuse-or-publish decision to its index commit.
#[test]
fn child_holds_gc_lease() {
    let Some(args) = support::child_args("gc-lease-holder") else {
        return;
    };
    let kind = if args["KIND"] == "oci" {
        Kind::Oci
    } else {
        Kind::CloudImg
    };
    let lease = Layout::new(&args["ROOT"]).backend(kind).gc_lease_path();
    let g = lock::lock_file(&lease, lock::Mode::Shared, LockWait::blocking(), &|_| {}).unwrap();
    signal(Path::new(&args["LOCKED"]), "locked");
    await_signal(Path::new(&args["RELEASE"]));
    drop(g);
}

/// An ingest in its commit window in another process holds its backend's gc lease: gc (told
/// not to wait) skips that backend's orphans as Busy, collects the other backend's, and
/// collects them once the ingest is done. (Before the lease, the same guarantee came from the
/// digest lock, which gc no longer takes.)
#[test]
fn held_lease_skips_backend_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let layout = Layout::new(&root);
    let busy = orphan(&root, Kind::Oci, "busy", false);
    let free = orphan(&root, Kind::CloudImg, "free", false);
    let locked = dir.path().join("locked");
    let release = dir.path().join("release");
    let mut child = support::spawn(
        "gc::child_holds_gc_lease",
        "gc-lease-holder",
        dir.path(),
        &[
            ("ROOT", root.to_str().unwrap()),
            ("KIND", "oci"),
            ("LOCKED", locked.to_str().unwrap()),
            ("RELEASE", release.to_str().unwrap()),
        ],
    );
    wait_for_file(&locked, &mut child);

    let b = layout.backend(Kind::Oci);
    let cloud = layout.backend(Kind::CloudImg);
    for dry_run in [true, false] {
        let r = collect(
            &root,
            &GcOptions {
                dry_run,
                lock_wait: LockWait::no_wait(),
                ..opts(Duration::ZERO)
            },
        );
        assert_eq!(collected(&r), BTreeSet::from([free]), "dry_run={dry_run}");
        assert_eq!(
            skipped(&r, SkipReason::Busy),
            BTreeSet::from([b.blob_path(&busy)])
        );
        assert!(b.blob_path(&busy).exists() && b.boot_dir(&busy).exists());
    }
    assert!(!cloud.blob_path(&free).exists());

    signal(&release, "go");
    child.finish();
    let r = collect(&root, &opts(Duration::ZERO));
    assert_eq!(collected(&r), BTreeSet::from([busy]));
    assert!(!b.blob_path(&busy).exists() && !b.boot_dir(&busy).exists());
    assert!(
        names(&b.temp_dir()).is_empty(),
        "{:?}",
        names(&b.temp_dir())
    );
}

/// A download in flight holds digest locks but not the lease: gc neither waits for it nor
/// spares an unreferenced blob of that digest (the ingest decides reuse-or-publish under the
/// lease later and stores the blob again). The held lock file itself is left alone.
#[test]
fn a_download_in_flight_does_not_block_gc() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let layout = Layout::new(&root);
    let downloading = orphan(&root, Kind::Oci, "downloading", false);
    let other = orphan(&root, Kind::CloudImg, "other", false);
    let locked = dir.path().join("locked");
    let release = dir.path().join("release");
    let mut child = support::spawn(
        "gc::child_holds_digest_lock",
        "gc-digest-holder",
        dir.path(),
        &[
            ("ROOT", root.to_str().unwrap()),
            ("KIND", "oci"),
            ("DIGEST", &downloading.to_string()),
            ("LOCKED", locked.to_str().unwrap()),
            ("RELEASE", release.to_str().unwrap()),
        ],
    );
    wait_for_file(&locked, &mut child);

    let b = layout.backend(Kind::Oci);
    // Blocking waits everywhere: a gc that waited for the download would never return.
    let r = collect(
        &root,
        &GcOptions {
            lock_wait: LockWait::blocking(),
            ..opts(Duration::ZERO)
        },
    );
    assert_eq!(collected(&r), BTreeSet::from([downloading, other]));
    assert!(!b.blob_path(&downloading).exists() && !b.boot_dir(&downloading).exists());
    assert!(
        b.digest_lock_path(&downloading).exists(),
        "the held lock file is never deleted"
    );
    assert_eq!(
        skipped(&r, SkipReason::InUse),
        BTreeSet::from([b.digest_lock_path(&downloading)])
    );
    signal(&release, "go");
    child.finish();
}

/// An index entry committed after the mark (an ingest that reused an orphan blob and committed
/// between gc's mark and its sweep) is seen by the re-read under the digest lock: the blob
/// survives and is reported Referenced, while other orphans of the batch are collected.
#[test]
fn index_entry_added_after_mark_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let layout = Layout::new(&root);
    let adopted = orphan(&root, Kind::CloudImg, "adopted", false);
    let other = orphan(&root, Kind::CloudImg, "other", false);
    let hook_root = root.clone();
    let commit = move || {
        let db = Db::<CloudEntry>::new(&Layout::new(&hook_root).backend(Kind::CloudImg));
        db.update(LockWait::blocking(), &|_| {}, |idx| {
            let entry: CloudEntry = serde_json::from_value(serde_json::json!({
                "ref": "adopted",
                "content_sum": adopted.to_string(),
                "size": 14,
                "created_at": "2026-11-27T08:00:00Z",
            }))
            .unwrap();
            idx.images.insert("adopted".to_owned(), Some(entry));
            Ok(())
        })
        .unwrap();
    };
    let o = GcOptions {
        after_mark: Some(Hook(Arc::new(commit))),
        ..opts(Duration::ZERO)
    };
    let r = collect(&root, &o);
    let b = layout.backend(Kind::CloudImg);
    assert_eq!(collected(&r), BTreeSet::from([other]));
    assert_eq!(
        skipped(&r, SkipReason::Referenced),
        BTreeSet::from([b.blob_path(&adopted)])
    );
    assert!(b.blob_path(&adopted).exists());
    assert!(!b.blob_path(&other).exists());
    assert_eq!(
        Store::open(&root).unwrap().list().unwrap()[0].id,
        adopted,
        "the index is intact"
    );
}

/// Temp debris goes in a run with no collectable blob; live temp entries (held by this
/// process's `TempFile` / `TempDir`, or a lock held by another fd) stay whatever their age; stale
/// unlocked digest locks go; young debris waits for the temp grace period.
#[test]
fn temp_sweep_spares_live_entries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cocoon_root(root);
    let before = referenced(root);
    let layout = Layout::new(root);
    let temp = layout.backend(Kind::CloudImg).temp_dir();
    let oci_temp = layout.backend(Kind::Oci).temp_dir();
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::create_dir_all(&oci_temp).unwrap();

    let stale_file = temp.join("download.123.0.tmp");
    std::fs::write(&stale_file, b"partial").unwrap();
    age(&stale_file);
    let stale_dir = oci_temp.join("unpack.123.1.tmp");
    std::fs::create_dir_all(stale_dir.join("sub")).unwrap();
    std::fs::write(stale_dir.join("sub/f"), b"x").unwrap();
    age(&stale_dir);
    let young = temp.join("young.tmp");
    std::fs::write(&young, b"y").unwrap();
    let live_file = TempFile::create_in(&temp, "ingest").unwrap();
    age(live_file.path());
    let live_dir = TempDir::create_in(&oci_temp, "convert").unwrap();
    std::fs::write(live_dir.path().join("out.qcow2"), b"q").unwrap();
    age(live_dir.path());
    let held_lock = temp.join(format!("{}.lock", key("held").hex()));
    let guard = lock::lock_deletable(&held_lock, LockWait::no_wait(), &|_| {}).unwrap();
    age(&held_lock);
    let stale_lock = temp.join(format!("{}.lock", key("stale").hex()));
    std::fs::write(&stale_lock, b"").unwrap();
    let stale_old_lock = oci_temp.join(format!("{}.lock", key("old").hex()));
    std::fs::write(&stale_old_lock, b"").unwrap();
    age(&stale_old_lock);

    let r = collect(root, &GcOptions::default());
    assert!(r.blobs.is_empty(), "{r:?}");
    let removed: BTreeSet<PathBuf> = r.temp.iter().map(|t| t.path.clone()).collect();
    assert_eq!(
        removed,
        BTreeSet::from([
            stale_file.clone(),
            stale_dir.clone(),
            stale_lock.clone(),
            stale_old_lock.clone()
        ])
    );
    for p in [&stale_file, &stale_dir, &stale_lock, &stale_old_lock] {
        assert!(!p.exists(), "{} removed", p.display());
    }
    for p in [&young, live_file.path(), live_dir.path(), &held_lock] {
        assert!(p.exists(), "{} kept", p.display());
    }
    assert!(live_dir.path().join("out.qcow2").exists());
    assert_eq!(
        skipped(&r, SkipReason::InUse),
        BTreeSet::from([
            live_file.path().to_path_buf(),
            live_dir.path().to_path_buf(),
            held_lock.clone()
        ])
    );
    assert_eq!(referenced(root), before);

    // Once released, the lock is debris too; the TempFile cleans up after itself.
    drop(guard);
    drop(live_file);
    drop(live_dir);
    let r = collect(root, &GcOptions::default());
    assert_eq!(
        r.temp.iter().map(|t| t.path.clone()).collect::<Vec<_>>(),
        vec![held_lock.clone()]
    );
    assert_eq!(names(&temp), vec!["young.tmp".to_owned()]);
    assert!(names(&oci_temp).is_empty());
}

/// Stems that are not `<64 lowercase hex>.<ext>` are not gc's to judge: reported, never deleted.
#[test]
fn unknown_names_are_reported_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let layout = Layout::new(root);
    let cloud = layout.backend(Kind::CloudImg);
    let oci = layout.backend(Kind::Oci);
    std::fs::create_dir_all(cloud.blobs_dir()).unwrap();
    std::fs::create_dir_all(oci.boot_root()).unwrap();
    std::fs::create_dir_all(oci.blobs_dir()).unwrap();
    let hex = key("x").hex();
    let strange = [
        cloud.blobs_dir().join("foo.qcow2"),
        cloud.blobs_dir().join("README"),
        cloud
            .blobs_dir()
            .join(format!("{}.qcow2", hex.to_uppercase())),
        cloud.blobs_dir().join(format!("{hex}.erofs")),
        cloud.blobs_dir().join(format!("{}.qcow2", &hex[..63])),
        oci.blobs_dir().join(format!("{hex}.qcow2")),
        oci.boot_root().join("not-a-digest"),
    ];
    for p in &strange {
        std::fs::write(p, b"keep me").unwrap();
        age(p);
    }
    let real = orphan(root, Kind::CloudImg, "real", false);
    let before = tree(root);

    let r = collect(root, &opts(Duration::ZERO));
    assert_eq!(collected(&r), BTreeSet::from([real]));
    assert_eq!(
        skipped(&r, SkipReason::UnknownName),
        strange.iter().cloned().collect::<BTreeSet<_>>()
    );
    for p in &strange {
        assert!(p.exists(), "{} kept", p.display());
    }
    assert_eq!(tree(root).len(), before.len() - 1);
}

/// `gc --dry-run` reports exactly what `gc` then does, and changes nothing on disk.
#[test]
fn dry_run_reports_what_a_real_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cocoon_root(root);
    let layout = Layout::new(root);
    for i in 0..5 {
        orphan(root, Kind::CloudImg, &format!("c{i}"), false);
        orphan(root, Kind::Oci, &format!("o{i}"), false);
    }
    orphan(root, Kind::CloudImg, "fresh", true);
    std::fs::write(
        layout.backend(Kind::CloudImg).blobs_dir().join("README"),
        b"r",
    )
    .unwrap();
    let temp = layout.backend(Kind::Oci).temp_dir();
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::write(temp.join("stale.tmp"), b"stale").unwrap();
    age(&temp.join("stale.tmp"));
    std::fs::write(temp.join(format!("{}.lock", key("l").hex())), b"").unwrap();
    let before = tree(root);
    let temp_before = names(&temp);

    let dry = run(root, &["gc", "--dry-run", "--grace", "30m", "-o", "json"])
        .ok()
        .json();
    assert_eq!(tree(root), before, "a dry run changes nothing");
    assert_eq!(names(&temp), temp_before, "not even lock files");
    assert_eq!(dry["dry_run"], true);
    let real = run(root, &["gc", "--grace", "30m", "-o", "json"])
        .ok()
        .json();
    assert_eq!(real["dry_run"], false);
    assert_eq!(dry["blobs"].as_array().unwrap().len(), 10);
    for field in ["blobs", "bytes_freed", "temp", "skipped"] {
        assert_eq!(dry[field], real[field], "{field}");
    }
    assert_eq!(dry["temp"].as_array().unwrap().len(), 2);
    // 10 blobs, 5 oci boot dirs of 2 files, the stale temp file.
    assert_eq!(tree(root).len(), before.len() - 10 - 5 * 2 - 1);
    assert_eq!(
        names(&layout.backend(Kind::CloudImg).blobs_dir()).len(),
        2 + 1 + 1,
        "referenced (2), fresh, README"
    );
}

/// `imgstore gc --grace 0` killed (SIGKILL) at arbitrary moments, ten times over fresh orphans: every
/// referenced blob and boot file is still there and the indexes still parse after each kill; a
/// final run leaves only referenced blobs and an empty temp/ (stale locks and half-deleted boot
/// dirs included).
#[test]
fn killed_gc_never_loses_referenced_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cocoon_root(root);
    let before = referenced(root);
    let store = Store::open(root).unwrap();
    let listed = store.list().unwrap();
    let layout = Layout::new(root);
    for round in 0..10u64 {
        for i in 0..2000 {
            orphan(root, Kind::CloudImg, &format!("r{round}-{i}"), false);
        }
        for i in 0..20 {
            orphan(root, Kind::Oci, &format!("r{round}-oci{i}"), false);
        }
        let blobs_dir = layout.backend(Kind::CloudImg).blobs_dir();
        let blobs_before = names(&blobs_dir).len();
        let mut child = Command::new(bin())
            .arg("--root")
            .arg(root)
            .args(["gc", "--grace", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it inside the sweep, at a different step every round: even rounds once it
        // holds the cloudimg gc lease (leases and index locks taken), odd rounds once blobs
        // start to disappear (deleting), each after a delay that grows with the round.
        let lease = layout.backend(Kind::CloudImg).gc_lease_path();
        let reached = || {
            if round % 2 == 0 {
                imgstore::fsutil::is_held(&lease)
            } else {
                names(&blobs_dir).len() < blobs_before
            }
        };
        while !reached() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(round * 2));
        let _ = child.kill();
        child.wait().unwrap();
        for (rel, sum) in &before {
            let bytes = std::fs::read(root.join(rel))
                .unwrap_or_else(|e| panic!("round {round}: {} lost: {e}", rel.display()));
            assert_eq!(
                &Digest::sha256_of(&bytes).hex()[..16],
                sum,
                "{}",
                rel.display()
            );
        }
        assert_eq!(
            store.list().unwrap(),
            listed,
            "round {round}: indexes parse"
        );
        // Where the kill landed (diagnostic only: timing is not asserted).
        eprintln!(
            "round {round}: {} cloud blobs, {} temp entries left",
            names(&layout.backend(Kind::CloudImg).blobs_dir()).len(),
            names(&layout.backend(Kind::CloudImg).temp_dir()).len()
                + names(&layout.backend(Kind::Oci).temp_dir()).len()
        );
    }
    run(root, &["gc", "--grace", "0"]).ok();
    assert_eq!(referenced(root), before, "only referenced files remain");
    for kind in Kind::ALL {
        let b = layout.backend(kind);
        assert!(
            names(&b.temp_dir()).is_empty(),
            "{:?}",
            names(&b.temp_dir())
        );
    }
    assert_eq!(names(&layout.backend(Kind::CloudImg).blobs_dir()).len(), 2);
    let r = gc::collect(&layout, &opts(Duration::ZERO), &[]).unwrap();
    assert!(r.blobs.is_empty() && r.temp.is_empty(), "{r:?}");
}

/// A run killed mid-batch leaves digest lock names that are hard links to one batch lock inode.
/// Taking two such digest locks in one process (an ingest locking several layers) must not
/// self-deadlock on the shared inode: each lock drops the shared name and gets a private file.
#[test]
fn stale_batch_lock_names_are_not_shared() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let b = Layout::new(dir.path()).backend(Kind::Oci);
    std::fs::create_dir_all(b.temp_dir()).unwrap();
    let batch = b.temp_dir().join("gc.999999.0.lock");
    std::fs::write(&batch, b"").unwrap();
    let (p1, p2) = (
        b.digest_lock_path(&key("layer1")),
        b.digest_lock_path(&key("layer2")),
    );
    std::fs::hard_link(&batch, &p1).unwrap();
    std::fs::hard_link(&batch, &p2).unwrap();

    let g1 = lock::lock_deletable(&p1, LockWait::no_wait(), &|_| {}).unwrap();
    let g2 = lock::lock_deletable(&p2, LockWait::no_wait(), &|_| {})
        .expect("a second digest lock is not blocked by the first");
    for p in [&p1, &p2] {
        assert_eq!(std::fs::metadata(p).unwrap().nlink(), 1, "{}", p.display());
    }
    drop((g1, g2));
    let r = gc::collect(&Layout::new(dir.path()), &GcOptions::default(), &[]).unwrap();
    assert_eq!(r.temp.len(), 3, "{r:?}");
    assert!(names(&b.temp_dir()).is_empty());
}

/// The gc lease covers only an ingest's commit window, and gc holds it only for a batch: an
/// import started while gc holds the cloudimg lease stages and converts its whole source
/// meanwhile and waits only at the lease ("waiting for lock on …/db/gc.lock"). Its content was
/// an orphan blob, which gc deletes in that batch; the import then finds it gone under the lease
/// and stores its own copy (a qcow2, not the orphan's raw bytes), and the image verifies.
#[test]
fn an_import_during_a_sweep_waits_only_for_the_lease_and_stores_its_blob_again() {
    use std::io::{BufRead, BufReader};
    use std::sync::Mutex;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let src = dir.path().join("disk.raw");
    crate::crash::raw_image(&src, 1 << 20, 7);
    let key = Digest::parse(&crate::crash::key_of(&src)).unwrap();
    let b = Layout::new(&root).backend(Kind::CloudImg);
    std::fs::create_dir_all(b.blobs_dir()).unwrap();
    // The blob of a removed image with this content: unreferenced, old.
    std::fs::copy(&src, b.blob_path(&key)).unwrap();
    age(&b.blob_path(&key));

    let import: Arc<Mutex<Option<std::process::Child>>> = Arc::default();
    let (hook_import, hook_root, hook_src) = (import.clone(), root.clone(), src.clone());
    let lease = b.gc_lease_path();
    let while_leased = move || {
        let mut child = Command::new(bin())
            .arg("--root")
            .arg(&hook_root)
            .args(["-o", "json", "import", "again"])
            .arg(&hook_src)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let want = format!("waiting for lock on {}", lease.display());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "import ended without waiting for the lease"
            );
            if line.trim_end() == want {
                break;
            }
        }
        *hook_import.lock().unwrap() = Some(child);
    };
    let r = collect(
        &root,
        &GcOptions {
            while_leased: Some(Hook(Arc::new(while_leased))),
            ..opts(Duration::ZERO)
        },
    );
    assert_eq!(collected(&r), BTreeSet::from([key]), "{r:?}");
    let child = import.lock().unwrap().take().expect("the hook ran");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let head = std::fs::read(b.blob_path(&key)).unwrap();
    assert_eq!(
        &head[..4],
        b"QFI\xfb",
        "the import stored a new (converted) blob"
    );
    run(&root, &["verify", "again"]).ok();
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Issue 11 item 7: an import killed with SIGKILL leaves its staging file in temp/; the next
/// `gc` (whatever the grace period) removes it at once because its process is provably gone
/// (lock free, recorded pid dead), and reports the bytes. A live import's staging file stays,
/// and so does a dead process's entry that carries a resume record, until the temp grace.
#[test]
fn temp_of_a_killed_import_goes_at_once_and_is_counted() {
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let temp = Layout::new(&root).backend(Kind::CloudImg).temp_dir();
    let data = crate::oci_image::pseudo_random(5 << 20, 3);
    let start_import = |name: &str| {
        let mut child = Command::new(bin())
            .arg("--root")
            .arg(&root)
            .args(["import", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&data).unwrap();
        stdin.flush().unwrap();
        // Wait until its staging file holds the first pipeline buffer (4 MiB).
        let pid = child.id().to_string();
        let staged = loop {
            let found = names(&temp).into_iter().find(|n| {
                n.contains(&format!(".{pid}."))
                    && std::fs::metadata(temp.join(n)).is_ok_and(|m| m.len() >= 4 << 20)
            });
            if let Some(n) = found {
                break temp.join(n);
            }
            assert!(child.try_wait().unwrap().is_none(), "import {name} ended");
            std::thread::sleep(Duration::from_millis(5));
        };
        (child, stdin, staged)
    };
    let (mut killed, killed_stdin, killed_temp) = start_import("killed");
    killed.kill().unwrap();
    killed.wait().unwrap();
    drop(killed_stdin);
    let killed_bytes = std::fs::metadata(&killed_temp).unwrap().len();
    let (live, live_stdin, live_temp) = start_import("live");
    // A dead process's partial download with a resume record: kept until the temp grace.
    let resumable = temp.join(format!("download.{}.0.ab.tmp", dead_pid()));
    std::fs::write(&resumable, b"partial").unwrap();
    let record = temp.join(format!(
        "{}.resume",
        resumable.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&record, b"{}").unwrap();

    let out = run(&root, &["-o", "json", "gc", "--grace", "0"])
        .ok()
        .json();
    let removed: Vec<(String, u64)> = out["temp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap().to_owned(),
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        removed,
        vec![(killed_temp.to_string_lossy().into_owned(), killed_bytes)],
        "{out}"
    );
    assert_eq!(out["temp_bytes_freed"], killed_bytes, "{out}");
    assert!(!killed_temp.exists());
    for p in [&live_temp, &resumable, &record] {
        assert!(p.exists(), "{} kept", p.display());
    }
    // The text report counts them too.
    let text = run(&root, &["gc", "--grace", "0"]).ok().stdout;
    assert!(text.contains("0 temp entries, 0 bytes freed"), "{text}");

    drop(live_stdin);
    let status = { live }.wait().unwrap();
    assert!(status.success());
    assert!(!live_temp.exists());
}

/// cocoon keeps a lock file beside each blob (`blobs/<hex>.lock`) and never deletes it: gc
/// neither reports nor deletes these files, run after run, and spares a blob whose cocoon lock
/// is held. Reasons are printed in words, sizes and counts read like a person wrote them.
#[test]
fn cocoon_blob_locks_are_honoured_and_never_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    cocoon_root(root);
    let b = Layout::new(root).backend(Kind::CloudImg);
    let tiny = key("tiny");
    std::fs::write(b.blob_path(&tiny), b"x").unwrap();
    age(&b.blob_path(&tiny));
    let held = orphan(root, Kind::CloudImg, "held", false);
    let mut locks = Vec::new();
    for name in names(&b.blobs_dir()) {
        let hex = name.trim_end_matches(".qcow2");
        let lock = b.blobs_dir().join(format!("{hex}.lock"));
        std::fs::write(&lock, b"").unwrap();
        locks.push(lock);
    }
    let oci = Layout::new(root).backend(Kind::Oci);
    for name in names(&oci.blobs_dir()) {
        let lock = oci.blobs_dir().join(name.replace(".erofs", ".lock"));
        std::fs::write(&lock, b"").unwrap();
        locks.push(lock);
    }
    std::fs::write(b.blobs_dir().join("README"), b"r").unwrap();
    let cocoon_holds = lock::lock_file(
        &b.blobs_dir().join(format!("{}.lock", held.hex())),
        lock::Mode::Exclusive,
        LockWait::no_wait(),
        &|_| {},
    )
    .unwrap();

    let r = collect(root, &opts(Duration::ZERO));
    assert_eq!(collected(&r), BTreeSet::from([tiny]));
    assert_eq!(
        skipped(&r, SkipReason::Busy),
        BTreeSet::from([b.blob_path(&held)])
    );
    assert_eq!(
        skipped(&r, SkipReason::UnknownName),
        BTreeSet::from([b.blobs_dir().join("README")])
    );
    drop(cocoon_holds);
    std::fs::write(b.blob_path(&tiny), b"x").unwrap();
    age(&b.blob_path(&tiny));
    for round in 0..2 {
        let text = run(root, &["gc", "--grace", "0"]).ok().stdout;
        assert!(!text.contains(".lock"), "{text}");
        assert!(
            text.contains("README: not a name imgstore writes; left alone"),
            "{text}"
        );
        for bad in ["(s)", "(ies)", "UnknownName", "(1 bytes)"] {
            assert!(!text.contains(bad), "{bad:?} in {text}");
        }
        assert!(text.contains(" 1 entry skipped; took "), "{text}");
        if round == 0 {
            assert!(text.contains(&format!("{tiny} (1 byte)\n")), "{text}");
            assert!(
                text.contains("removed 2 blobs and 0 temp entries, 12 bytes freed"),
                "{text}"
            );
        }
    }
    for l in &locks {
        assert!(l.exists(), "{} kept", l.display());
    }
}
