//! images.json load/save/update on real files and across real processes: cocoon fixtures, no-op
//! saves, unknown fields, corrupt files, lost updates, torn reads, and writers killed midway.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imgstore::digest::Digest;
use imgstore::index::file::{self, Db, Error};
use imgstore::index::schema::now_rfc3339;
use imgstore::index::{CloudEntry, IndexFile, OciEntry};
use imgstore::lock::{self, LockWait, Mode};
use imgstore::{Kind, Layout};

use crate::support::{self, signal, wait_for_file};

/// The cocoon fixtures beside the repository; `IMGSTORE_FIXTURES` overrides the location (a
/// checkout elsewhere). Missing fixtures fail the test rather than skip it.
fn fixtures() -> PathBuf {
    let dir = std::env::var_os("IMGSTORE_FIXTURES").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/fixtures/cocoon-v0.3.7"
            ))
        },
        PathBuf::from,
    );
    assert!(
        dir.join("oci/db/images.json").is_file(),
        "cocoon fixtures not found in {} (set IMGSTORE_FIXTURES)",
        dir.display()
    );
    dir
}

fn db(root: &Path) -> Db<CloudEntry> {
    Db::new(&Layout::new(root).backend(Kind::CloudImg))
}

fn entry(key: &str) -> CloudEntry {
    CloudEntry {
        reference: key.to_owned(),
        content_sum: Digest::sha256_of(key.as_bytes()),
        size: key.len() as u64,
        created_at: now_rfc3339(),
        blob: None,
        extra: serde_json::Map::new(),
    }
}

fn add(db: &Db<CloudEntry>, key: &str) {
    db.update(LockWait::blocking(), &|_| {}, |idx| {
        idx.images.insert(key.to_owned(), Some(entry(key)));
        Ok(())
    })
    .unwrap();
}

fn keys(idx: &IndexFile<CloudEntry>) -> BTreeSet<String> {
    idx.entries().map(|(k, _)| k.to_owned()).collect()
}

/// Names in `dir`, sorted.
/// Names in `dir`, sorted, without the lookup cache a write refreshes when the clock allows
/// (tests/it/cache.rs covers it).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "images.idx")
        .collect();
    v.sort();
    v
}

/// Copy the cocoon fixtures of `kind` into a fresh store root, writable as cocoon leaves them.
fn root_with_fixture(kind: Kind) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let index = Layout::new(dir.path()).backend(kind).index_path();
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    std::fs::copy(fixtures().join(format!("{kind}/db/images.json")), &index).unwrap();
    std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, index)
}

#[test]
fn cocoon_fixtures_load() {
    let oci = file::load::<OciEntry>(&fixtures().join("oci/db/images.json")).unwrap();
    assert!(oci.existed());
    assert_eq!(oci.index.entries().count(), 2);
    for (key, e) in oci.index.entries() {
        assert!(!e.layers.is_empty(), "{key} has layers");
        assert!(e.layers.iter().any(|l| l.digest == e.kernel_layer));
    }
    let cloud = file::load::<CloudEntry>(&fixtures().join("cloudimg/db/images.json")).unwrap();
    assert_eq!(cloud.index.entries().count(), 2);
    assert_eq!(
        cloud.index.images.get("stale"),
        Some(&None),
        "null entry kept"
    );
    assert_eq!(cloud.index.get("win11").unwrap().size, 23_622_320_128);
}

/// cocoon rewrote its index on every no-op; an unchanged index must not be touched at all.
#[test]
fn unchanged_index_is_not_rewritten() {
    for kind in Kind::ALL {
        let (dir, index) = root_with_fixture(kind);
        let before = std::fs::metadata(&index).unwrap();
        let bytes = std::fs::read(&index).unwrap();
        let backend = Layout::new(dir.path()).backend(kind);
        let guard = lock::lock_file(
            &backend.index_lock_path(),
            Mode::Exclusive,
            LockWait::no_wait(),
            &|_| {},
        )
        .unwrap();
        let wrote = match kind {
            Kind::Oci => file::save(&file::load::<OciEntry>(&index).unwrap(), &index, &guard),
            Kind::CloudImg => {
                file::save(&file::load::<CloudEntry>(&index).unwrap(), &index, &guard)
            }
        }
        .unwrap();
        assert!(!wrote, "{kind}: load + save of an unchanged index wrote");
        drop(guard);
        if kind == Kind::CloudImg {
            let n = db(dir.path())
                .update(LockWait::no_wait(), &|_| {}, |idx| {
                    Ok(idx.entries().count())
                })
                .unwrap();
            assert_eq!(n, 2);
        }
        let after = std::fs::metadata(&index).unwrap();
        assert_eq!(after.ino(), before.ino(), "{kind}: replaced");
        assert_eq!(after.mtime_nsec(), before.mtime_nsec(), "{kind}: modified");
        assert_eq!(after.mtime(), before.mtime(), "{kind}: modified");
        assert_eq!(std::fs::read(&index).unwrap(), bytes);
        assert_eq!(
            listing(index.parent().unwrap()),
            ["images.json", "images.lock"],
            "{kind}: no backup, no temp"
        );
    }
}

/// A file formatted differently (pretty-printed by hand) but meaning the same is not rewritten
/// by a no-op update either.
#[test]
fn reformatted_index_is_not_rewritten_on_noop() {
    let (dir, index) = root_with_fixture(Kind::CloudImg);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let pretty = serde_json::to_vec_pretty(&v).unwrap();
    std::fs::write(&index, &pretty).unwrap();
    let ino = std::fs::metadata(&index).unwrap().ino();
    db(dir.path())
        .update(LockWait::no_wait(), &|_| {}, |_| Ok(()))
        .unwrap();
    assert_eq!(std::fs::read(&index).unwrap(), pretty);
    assert_eq!(std::fs::metadata(&index).unwrap().ino(), ino);
}

#[test]
fn update_writes_compact_json_and_keeps_backup() {
    let (dir, index) = root_with_fixture(Kind::CloudImg);
    let old = std::fs::read(&index).unwrap();
    let d = db(dir.path());
    add(&d, "new");
    let raw = std::fs::read_to_string(&index).unwrap();
    assert!(raw.ends_with("}\n") && !raw.contains("\n{") && !raw.contains(": "));
    let idx = d.read(LockWait::no_wait(), &|_| {}).unwrap();
    assert_eq!(
        keys(&idx),
        BTreeSet::from(
            [
                "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img",
                "new",
                "win11"
            ]
            .map(String::from)
        )
    );
    assert_eq!(idx.images.get("stale"), Some(&None), "null entry survives");
    let bak = file::backup_path(&index);
    assert_eq!(std::fs::read(&bak).unwrap(), old, "previous version kept");
    let mode = std::fs::metadata(&index).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    add(&d, "newer");
    assert_eq!(std::fs::read_to_string(&bak).unwrap(), raw);
    assert_eq!(
        listing(index.parent().unwrap()),
        ["images.json", "images.json.bak", "images.lock"]
    );
}

#[test]
fn unknown_fields_survive_update() {
    let dir = tempfile::tempdir().unwrap();
    let d = db(dir.path());
    std::fs::create_dir_all(d.index_path().parent().unwrap()).unwrap();
    let a = Digest::sha256_of(b"a");
    std::fs::write(
        d.index_path(),
        format!(
            r#"{{"images":{{"a":{{"ref":"a","content_sum":"{a}","size":1,"created_at":"t","from_the_future":{{"x":[1,2.5,"y"]}}}}}},"format":3,"owner":{{"name":"z"}}}}"#
        ) + "\n",
    )
    .unwrap();
    add(&d, "b");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.index_path()).unwrap()).unwrap();
    assert_eq!(v["format"], 3);
    assert_eq!(v["owner"]["name"], "z");
    assert_eq!(
        v["images"]["a"]["from_the_future"],
        serde_json::json!({"x": [1, 2.5, "y"]})
    );
    assert_eq!(v["images"]["b"]["ref"], "b");
}

/// A corrupt index is reported with the file and byte offset and never replaced; the backup of
/// the last good version is not clobbered by the failed attempts.
#[test]
fn corrupt_index_is_reported_and_left_alone() {
    let (dir, index) = root_with_fixture(Kind::CloudImg);
    let d = db(dir.path());
    add(&d, "x");
    let bak = file::backup_path(&index);
    let bak_bytes = std::fs::read(&bak).unwrap();
    let corrupt = b"{\"images\":{\n  \"a\": {\"ref\": \"a\",, \"size\": 1}\n}}\n";
    let bad_at = corrupt.windows(2).position(|w| w == b",,").unwrap() + 1;
    std::fs::write(&index, corrupt).unwrap();
    let check = |e: Error| match e {
        Error::Corrupt {
            ref path,
            offset,
            line,
            ..
        } => {
            assert_eq!(path, &index);
            assert_eq!(offset, bad_at as u64, "{e}");
            assert_eq!(line, 2);
            let msg = e.to_string();
            assert!(msg.contains(&index.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("byte {bad_at}")), "{msg}");
        }
        e => panic!("expected Corrupt, got {e}"),
    };
    check(file::load::<CloudEntry>(&index).unwrap_err());
    check(d.read(LockWait::no_wait(), &|_| {}).unwrap_err());
    let mut ran = false;
    check(
        d.update(LockWait::no_wait(), &|_| {}, |_| {
            ran = true;
            Ok(())
        })
        .unwrap_err(),
    );
    assert!(!ran, "no edit on a corrupt index");
    assert_eq!(std::fs::read(&index).unwrap(), corrupt);
    assert_eq!(std::fs::read(&bak).unwrap(), bak_bytes);
    assert!(file::load::<CloudEntry>(&bak).is_ok(), "backup is good");

    // Valid JSON that breaks the schema (a malformed digest) is corrupt too.
    std::fs::write(
        &index,
        br#"{"images":{"a":{"ref":"a","content_sum":"sha256:XYZ","size":1,"created_at":"t"}}}"#,
    )
    .unwrap();
    assert!(matches!(
        file::load::<CloudEntry>(&index),
        Err(Error::Corrupt { .. })
    ));
    std::fs::write(&index, b"").unwrap();
    assert!(matches!(
        file::load::<CloudEntry>(&index),
        Err(Error::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn missing_index_is_empty_and_reads_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = file::load::<CloudEntry>(&dir.path().join("images.json")).unwrap();
    assert!(!loaded.existed());
    assert_eq!(loaded.index, IndexFile::default());
    let root = dir.path().join("root");
    let d = db(&root);
    assert_eq!(
        d.read(LockWait::no_wait(), &|_| {}).unwrap(),
        IndexFile::default()
    );
    assert!(!root.exists(), "a read created the store");
    // A no-op update takes the lock (creating db/) but writes no index.
    d.update(LockWait::no_wait(), &|_| {}, |_| Ok(())).unwrap();
    assert!(!d.index_path().exists());
    let lock_mode = std::fs::metadata(d.lock_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(lock_mode, 0o600);
    add(&d, "first");
    assert_eq!(
        keys(&d.read(LockWait::no_wait(), &|_| {}).unwrap()),
        BTreeSet::from(["first".to_owned()])
    );
    assert_eq!(
        listing(d.index_path().parent().unwrap()),
        ["images.json", "images.lock"],
        "nothing to back up the first time"
    );
}

#[derive(Debug, thiserror::Error)]
#[error("already present: {0}")]
struct AlreadyThere(String);

#[test]
fn aborted_update_writes_nothing() {
    let (dir, index) = root_with_fixture(Kind::CloudImg);
    let before = std::fs::read(&index).unwrap();
    let e = db(dir.path())
        .update(LockWait::no_wait(), &|_| {}, |idx| -> Result<(), Error> {
            idx.images.clear();
            Err(Error::abort(AlreadyThere("win11".into())))
        })
        .unwrap_err();
    let Error::Abort(cause) = e else {
        panic!("expected Abort, got {e}")
    };
    assert_eq!(cause.downcast::<AlreadyThere>().unwrap().0, "win11");
    assert_eq!(std::fs::read(&index).unwrap(), before);
    assert!(!file::backup_path(&index).exists());
}

#[test]
fn update_waits_for_the_lock_and_honours_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = db(dir.path());
    add(&d, "a");
    let held = lock::lock_file(d.lock_path(), Mode::Shared, LockWait::no_wait(), &|_| {}).unwrap();
    // Readers share.
    d.read(LockWait::no_wait(), &|_| {}).unwrap();
    let announced = std::cell::Cell::new(false);
    let e = d
        .update(
            LockWait::timeout(Duration::from_millis(30)),
            &|p| announced.set(p == d.lock_path()),
            |_| Ok(()),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Lock(lock::Error::Timeout { .. })), "{e}");
    assert!(announced.get());
    drop(held);
}

// ---- several processes ----

const ADDER: &str = "index::child_adder";

/// Child role: `COUNT` updates of the cloudimg index under `ROOT`, each adding `<PREFIX>-<i>`.
#[test]
fn child_adder() {
    let Some(args) = support::child_args("adder") else {
        return;
    };
    let d = db(Path::new(&args["ROOT"]));
    let count: usize = args["COUNT"].parse().unwrap();
    for i in 0..count {
        add(&d, &format!("{}-{i:03}", args["PREFIX"]));
    }
}

/// Child role: load the index (without any lock) until `STOP` appears; every load must parse and
/// never show fewer entries than the one before. Writes `loads=<n>` to `OUT`.
#[test]
fn child_reader() {
    let Some(args) = support::child_args("reader") else {
        return;
    };
    let index = PathBuf::from(&args["INDEX"]);
    let stop = PathBuf::from(&args["STOP"]);
    let (mut loads, mut last) = (0u64, 0usize);
    loop {
        // Checked before the load so that the last load sees the writers' final state.
        let stopping = stop.exists();
        let loaded =
            file::load::<CloudEntry>(&index).unwrap_or_else(|e| panic!("load {loads} failed: {e}"));
        let n = loaded.index.entries().count();
        assert!(n >= last, "went back from {last} to {n} entries");
        last = n;
        loads += 1;
        if stopping {
            break;
        }
    }
    signal(
        Path::new(&args["OUT"]),
        &format!("loads={loads} last={last}"),
    );
}

/// Child role: update forever, each time adding `k<n>` where n is the number of entries; signals
/// `READY` after its first update. Stops on its own only after a long while (parent gone).
#[test]
fn child_endless_adder() {
    let Some(args) = support::child_args("endless") else {
        return;
    };
    let d = db(Path::new(&args["ROOT"]));
    let start = Instant::now();
    let mut first = true;
    while start.elapsed() < Duration::from_secs(120) {
        d.update(LockWait::blocking(), &|_| {}, |idx| {
            let k = format!("k{:06}", idx.images.len());
            idx.images.insert(k.clone(), Some(entry(&k)));
            Ok(())
        })
        .unwrap();
        if first {
            signal(Path::new(&args["READY"]), "");
            first = false;
        }
    }
}

fn spawn_adder(root: &Path, prefix: &str, count: usize) -> support::Proc {
    support::spawn(
        ADDER,
        "adder",
        root,
        &[
            ("ROOT", root.to_str().unwrap()),
            ("PREFIX", prefix),
            ("COUNT", &count.to_string()),
        ],
    )
}

fn expected_keys(prefixes: &[&str], count: usize) -> BTreeSet<String> {
    prefixes
        .iter()
        .flat_map(|p| (0..count).map(move |i| format!("{p}-{i:03}")))
        .collect()
}

/// Two processes doing read-modify-write on one index must not lose each other's entries.
#[test]
fn concurrent_updates_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = (spawn_adder(root, "a", 50), spawn_adder(root, "b", 50));
    a.finish();
    b.finish();
    let d = db(root);
    let idx = d.read(LockWait::no_wait(), &|_| {}).unwrap();
    assert_eq!(keys(&idx), expected_keys(&["a", "b"], 50));
    assert_eq!(
        listing(d.index_path().parent().unwrap()),
        ["images.json", "images.json.bak", "images.lock"],
        "no temp files left"
    );
}

/// A reader that takes no lock at all still never sees a partial index: writes are renames.
#[test]
fn readers_never_see_a_partial_index() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let d = db(root);
    add(&d, "seed");
    let (stop, out) = (root.join("stop"), root.join("reader.out"));
    let mut reader = support::spawn(
        "index::child_reader",
        "reader",
        root,
        &[
            ("INDEX", d.index_path().to_str().unwrap()),
            ("STOP", stop.to_str().unwrap()),
            ("OUT", out.to_str().unwrap()),
        ],
    );
    let (a, b) = (spawn_adder(root, "a", 40), spawn_adder(root, "b", 40));
    a.finish();
    b.finish();
    signal(&stop, "");
    wait_for_file(&out, &mut reader);
    reader.finish();
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(report.ends_with(" last=81"), "{report}");
}

/// Tiny xorshift: random kill delays without a dependency; the seed is printed to replay.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A writer killed with SIGKILL at any moment leaves an index that loads and holds the state
/// before or after its last update: never a torn or truncated file, never a lost older entry.
#[test]
fn killed_writer_leaves_a_loadable_index() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let d = db(root);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill delays seed: {seed}");
    let mut known = 0usize;
    for round in 0..25 {
        let ready = root.join(format!("ready.{round}"));
        let mut proc = support::spawn(
            "index::child_endless_adder",
            "endless",
            root,
            &[
                ("ROOT", root.to_str().unwrap()),
                ("READY", ready.to_str().unwrap()),
            ],
        );
        wait_for_file(&ready, &mut proc);
        std::thread::sleep(Duration::from_micros(rng(&mut seed) % 20_000));
        proc.kill();
        for path in [
            d.index_path().to_path_buf(),
            file::backup_path(d.index_path()),
        ] {
            let idx = file::load::<CloudEntry>(&path)
                .unwrap_or_else(|e| panic!("round {round}: {e}"))
                .index;
            let n = idx.images.len();
            let want: BTreeSet<String> = (0..n).map(|i| format!("k{i:06}")).collect();
            assert_eq!(
                keys(&idx),
                want,
                "round {round}: {} not a prefix",
                path.display()
            );
            if path == d.index_path() {
                assert!(n > known, "round {round}: went from {known} to {n} entries");
                known = n;
            }
        }
    }
    // A clean update afterwards sweeps what the killed writers left in db/.
    add(&d, "after");
    assert_eq!(
        d.read(LockWait::no_wait(), &|_| {}).unwrap().images.len(),
        known + 1
    );
    assert_eq!(
        listing(d.index_path().parent().unwrap()),
        ["images.json", "images.json.bak", "images.lock"]
    );
}
