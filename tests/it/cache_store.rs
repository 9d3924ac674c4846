//! The lookup cache through the Store and the CLI: reads take no lock, a read-only root or an
//! unreadable lock file still serves, a kept `Store` follows every change, a crash while writing
//! the cache loses nothing, and a filesystem with one-second timestamps never serves a stale
//! cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imgstore::index::cache::{self, Cache, Rebuilt};
use imgstore::index::file::Db;
use imgstore::index::{CloudEntry, OciEntry};
use imgstore::lock::{lock_file, Mode};
use imgstore::{Kind, Layout, LockWait, Store, StoreOptions};

use crate::cli_support::{bin, cocoon_root, run};

const UBUNTU: &str = "ghcr.io/cocoonstack/cocoon/ubuntu:24.04-xface";

fn no_wait(root: &Path) -> Store {
    Store::open_opts(
        root,
        StoreOptions {
            lock_wait: LockWait::no_wait(),
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

fn idx(root: &Path, kind: &str) -> PathBuf {
    root.join(kind).join("db/images.idx")
}

/// Wait until a read has rebuilt both caches (the index must be a clock granule old).
fn warm(store: &Store, root: &Path) {
    for _ in 0..300 {
        store.list().unwrap();
        if idx(root, "oci").exists() && idx(root, "cloudimg").exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no cache was built under {}", root.display());
}

/// Issue 11 item 3: `list`, `config` and `inspect` answer while another process holds both
/// index locks exclusively (cocoon holds them for a whole pull), with or without caches.
#[test]
fn reads_take_no_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    cocoon_root(root);
    let layout = Layout::new(root);
    let _held: Vec<_> = Kind::ALL
        .iter()
        .map(|&k| {
            let p = layout.backend(k).index_lock_path();
            lock_file(&p, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap()
        })
        .collect();
    for round in ["JSON path", "cache path"] {
        let store = no_wait(root);
        assert_eq!(store.list().unwrap().len(), 4, "{round}");
        assert_eq!(store.config(&[UBUNTU]).unwrap()[0].image, UBUNTU, "{round}");
        assert_eq!(
            store.inspect("ubuntu:24.04").unwrap().names.len(),
            1,
            "{round}"
        );
        // A busy lock also means no rebuild: build the caches as a writer would, then retry.
        if round == "JSON path" {
            assert!(
                !idx(root, "oci").exists(),
                "a rebuild never waits for the lock"
            );
            rebuild_all(root);
        }
    }
    let cli = run(
        root,
        &["--lock-timeout", "0s", "-o", "json", "config", UBUNTU],
    )
    .ok();
    assert!(cli.stdout.contains("cocoon-layer0"), "{}", cli.stdout);
}

fn rebuild_all(root: &Path) {
    let l = Layout::new(root);
    for _ in 0..300 {
        let a = cache::rebuild::<OciEntry>(Kind::Oci, &l.backend(Kind::Oci).index_path()).unwrap();
        let b =
            cache::rebuild::<CloudEntry>(Kind::CloudImg, &l.backend(Kind::CloudImg).index_path())
                .unwrap();
        if matches!((a, b), (Rebuilt::Written(_), Rebuilt::Written(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("indexes stayed racily clean");
}

/// Mounts `src` read-only at a new directory for the guard's life.
struct RoMount(tempfile::TempDir);

impl RoMount {
    fn new(src: &Path) -> RoMount {
        let dir = tempfile::tempdir().unwrap();
        let ok = |args: &[&str]| {
            let s = Command::new("mount").args(args).status().unwrap();
            assert!(s.success(), "mount {args:?}");
        };
        let (src, dst) = (src.to_str().unwrap(), dir.path().to_str().unwrap());
        ok(&["--bind", src, dst]);
        ok(&["-o", "remount,bind,ro", dst]);
        RoMount(dir)
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Issue 11 item 3: a store on a read-only mount (a `mount --bind -o ro`, as a store baked
/// into a VM image) serves `list`, `config`, `inspect` and `verify`, without a cache (nothing
/// can be rebuilt, nothing is tried twice) and with one built before the mount.
#[test]
fn read_only_root_serves_reads() {
    let tmp = tempfile::tempdir().unwrap();
    cocoon_root(tmp.path());
    for round in ["no cache", "with caches"] {
        if round == "with caches" {
            rebuild_all(tmp.path());
        }
        let ro = RoMount::new(tmp.path());
        let root = ro.0.path();
        assert!(
            std::fs::write(root.join("probe"), b"x").is_err(),
            "mount is read-only"
        );
        let store = no_wait(root);
        assert_eq!(store.list().unwrap().len(), 4, "{round}");
        let cfg = store.config(&[UBUNTU, "ubuntu:24.04"]).unwrap();
        assert_eq!(cfg.len(), 2, "{round}");
        assert!(cfg[0].storage[0].path.starts_with(root), "{round}");
        let id = store.inspect(UBUNTU).unwrap().id;
        assert_eq!(store.inspect(&id.hex()[..12]).unwrap().id, id, "{round}");
        run(root, &["-o", "json", "list"]).ok();
        run(root, &["config", UBUNTU]).ok();
        assert_eq!(
            idx(root, "oci").exists(),
            round == "with caches",
            "{round}: nothing is created on a read-only root"
        );
    }
}

/// Issue 11 item 3: a user who may read the root but not open the 0600 lock files (another
/// user than the store's owner) lists and configures all the same.
#[test]
fn other_user_without_lock_access_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    cocoon_root(&root);
    // A write creates the lock files (0600) and refreshes the caches.
    Store::open(&root).unwrap().remove(&["win11"]).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(tmp.path())
        .status()
        .unwrap();
    for k in ["oci", "cloudimg"] {
        let lock = root.join(k).join("db/images.lock");
        std::fs::set_permissions(&lock, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };
    let probe = as_nobody(&["--version"]);
    assert!(
        probe.status.success(),
        "nobody can run the binary: {probe:?}"
    );
    for args in [
        &["-o", "json", "list"][..],
        &["-o", "json", "config", UBUNTU][..],
    ] {
        let out = as_nobody(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `Store` kept across many boots answers from its open caches and follows every change:
/// an imgstore write, a cocoon-style rewrite by rename (no token, cache untouched) and a
/// deleted cache.
#[test]
fn kept_store_follows_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    cocoon_root(root);
    let store = Store::open(root).unwrap();
    warm(&store, root);
    assert_eq!(store.config(&[UBUNTU]).unwrap()[0].image, UBUNTU);
    // imgstore removes a name (another Store, as another process would).
    Store::open(root)
        .unwrap()
        .remove(&["ubuntu:24.04"])
        .unwrap();
    let err = store.inspect("ubuntu:24.04").unwrap_err().to_string();
    assert!(err.contains("no image matches"), "{err}");
    // cocoon adds it back: its own JSON, renamed over images.json, the cache left alone.
    let json = root.join("oci/db/images.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let entry = v["images"][UBUNTU].clone();
    v["images"]["ubuntu:24.04"] = entry;
    let v = serde_json::json!({"images": v["images"]});
    std::fs::write(
        root.join("oci/db/.cocoon.tmp"),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    std::fs::rename(root.join("oci/db/.cocoon.tmp"), &json).unwrap();
    assert_eq!(
        store.inspect("ubuntu:24.04").unwrap().names,
        [UBUNTU, "ubuntu:24.04"]
    );
    warm(&store, root);
    std::fs::remove_file(idx(root, "oci")).unwrap();
    assert_eq!(store.inspect("ubuntu:24.04").unwrap().names.len(), 2);
}

/// A crash between writing the cache's temp file and renaming it: the index commit stands,
/// reads answer from it, and the next write sweeps the temp file.
#[test]
fn crash_while_writing_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    cocoon_root(root);
    let out = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(["rm", "ubuntu:24.04"])
        .env("IMGSTORE_FAILPOINT", "cache.before_rename")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failpoint cache.before_rename"), "{stderr}");
    let db = crate::cli_support::names(&root.join("oci/db"));
    assert!(
        db.iter().any(|n| n.starts_with(".images.json.idx.")),
        "{db:?}"
    );
    let listed = run(root, &["-o", "json", "list"]).ok().json();
    assert!(!listed.to_string().contains("\"ubuntu:24.04\""), "{listed}");
    run(root, &["inspect", "ubuntu:24.04"]).fails();
    run(root, &["rm", "win11"]).ok();
    let db = crate::cli_support::names(&root.join("oci/db"));
    assert!(db.iter().all(|n| !crate::crash::is_tmp(n)), "{db:?}");
}

/// An ext4 image with 128-byte inodes (one-second timestamps), loop-mounted for the guard's life.
struct CoarseFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl CoarseFs {
    fn new() -> CoarseFs {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let ok = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{cmd:?}: {err}");
        };
        ok(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-I", "128"])
            .arg(&image));
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        CoarseFs { _dir: dir, mnt }
    }
}

impl Drop for CoarseFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn stat_key(m: &std::fs::Metadata) -> (u64, u64, i64, i64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// The size a reader sees for cloud image `a`: through a fresh cache if there is one, else
/// through the Store (JSON).
fn size_seen(root: &Path, json: &Path) -> u64 {
    let c = Cache::open(
        Kind::CloudImg,
        json,
        &cache::path_for(json),
        json.parent().unwrap(),
    );
    if let Ok(Some(c)) = c {
        let r = cache::resolve(&[&c], "a", None).unwrap().unwrap();
        return c.entry::<CloudEntry>(r.image).unwrap().size;
    }
    let store = Store::open(root).unwrap();
    store
        .list()
        .unwrap()
        .iter()
        .find(|e| e.name == "a")
        .unwrap()
        .size
}

/// A filesystem with one-second timestamps: a rewrite of the same size within the second the
/// cache would be built in changes no stat field, so no cache of an index that young is ever
/// trusted, and the rewrite is seen. Once the index is older than the clock, a read rebuilds a
/// cache that is used.
#[test]
fn coarse_timestamps_never_serve_a_racy_cache() {
    let fs = CoarseFs::new();
    let root = fs.mnt.join("store");
    let layout = Layout::new(&root);
    let db = Db::<CloudEntry>::new(&layout.backend(Kind::CloudImg));
    let json = layout.backend(Kind::CloudImg).index_path();
    let put = |size: u64| {
        db.update(LockWait::blocking(), &|_| {}, |i| {
            let e = serde_json::json!({"ref": "a", "content_sum": format!("sha256:{}", "ab".repeat(32)),
                "size": size, "created_at": "t"});
            i.images.insert("a".into(), Some(serde_json::from_value(e).unwrap()));
            Ok(())
        })
        .unwrap();
    };
    let mut checked = 0;
    for attempt in 0..20 {
        put(1000 + attempt);
        let before = stat_key(&std::fs::metadata(&json).unwrap());
        // A reader right away, in the same second as the write: it must not trust a cache.
        let rebuilt = cache::rebuild::<CloudEntry>(Kind::CloudImg, &json).unwrap();
        let racy = matches!(rebuilt, Rebuilt::Racy(_));
        // Same size, rewritten in place, within that second if the clock allows.
        let text = std::fs::read_to_string(&json).unwrap();
        let (old, new) = (
            format!("\"size\":{}", 1000 + attempt),
            format!("\"size\":{}", 2000 + attempt),
        );
        std::fs::write(&json, text.replace(&old, &new)).unwrap();
        if stat_key(&std::fs::metadata(&json).unwrap()) == before {
            assert!(racy, "a cache built in its index's second was trusted");
            assert_eq!(
                size_seen(&root, &json),
                2000 + attempt,
                "the rewrite is seen"
            );
            checked += 1;
            if checked >= 3 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checked > 0, "never managed a same-second rewrite");
    std::thread::sleep(Duration::from_millis(1100));
    Store::open(&root).unwrap().list().unwrap();
    let c = Cache::open(
        Kind::CloudImg,
        &json,
        &cache::path_for(&json),
        json.parent().unwrap(),
    );
    assert!(
        c.unwrap().is_some(),
        "a cache of an old enough index is used"
    );
}
