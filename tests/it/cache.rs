//! The lookup cache beside each `db/images.json` (`src/index/cache/`): the same answers as the
//! JSON path, and every way a cache can be stale, foreign or damaged is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use imgstore::digest::Digest;
use imgstore::index::cache::{self, format, Cache, Rebuilt};
use imgstore::index::file::Db;
use imgstore::index::{CloudEntry, Entry, IndexFile, OciEntry};
use imgstore::lock::LockWait;
use imgstore::lookup::{Item, Lookup};
use imgstore::{Kind, Layout, Reference};

use crate::cache_fuzz_model;

#[test]
fn seeds_of_fuzz_model() {
    cache_fuzz_model::check(&[]);
    // Eleven keys over both backends and all IDs, undamaged, then damaged at various places.
    let mut all = vec![11];
    for k in 0..11u8 {
        all.extend([k << 1 | (k & 1), k]);
    }
    for flags in [0u8, 1, 2, 3] {
        let mut d = all.clone();
        d.extend([0, flags]);
        cache_fuzz_model::check(&d);
    }
    for (off, x) in [
        (0u16, 1u8),
        (9, 4),
        (100, 0x80),
        (2047, 1),
        (2048, 1),
        (3000, 2),
        (6000, 7),
    ] {
        for flags in [0b0000_1000u8, 0b0000_1010, 0b0000_1100, 0b0000_1110] {
            let mut d = all.clone();
            let [lo, hi] = off.to_le_bytes();
            d.extend([0, flags, lo, hi, 0, x]);
            cache_fuzz_model::check(&d);
        }
    }
}

fn canonical(s: &str) -> Option<String> {
    Reference::parse(s).ok().map(|r| r.canonical())
}

fn n_id(n: u64) -> Digest {
    Digest::sha256_of(&n.to_le_bytes())
}

fn oci_entry(key: &str, id: Digest, n: u64) -> OciEntry {
    serde_json::from_value(serde_json::json!({
        "ref": key, "manifest_digest": id.to_string(),
        "layers": [{"digest": id.to_string()}], "kernel_layer": id.to_string(),
        "initrd_layer": id.to_string(), "size": n, "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

fn cloud_entry(key: &str, id: Digest, n: u64) -> CloudEntry {
    serde_json::from_value(serde_json::json!({
        "ref": key, "content_sum": id.to_string(), "size": n, "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

/// A store whose indexes imgstore wrote: `n` oci images (every third with a second, cocoon-style
/// short key) and `n` cloud images, one of which shares a key with an oci image.
fn store(root: &Path, n: u64) -> Layout {
    let layout = Layout::new(root);
    Db::<OciEntry>::new(&layout.backend(Kind::Oci))
        .update(LockWait::blocking(), &|_| {}, |idx| {
            for i in 0..n {
                let key = format!("docker.io/library/app{i}:latest");
                idx.images
                    .insert(key.clone(), Some(oci_entry(&key, n_id(i), i)));
                if i % 3 == 0 {
                    let short = format!("app{i}");
                    idx.images
                        .insert(short.clone(), Some(oci_entry(&short, n_id(i), i)));
                }
            }
            Ok(())
        })
        .unwrap();
    Db::<CloudEntry>::new(&layout.backend(Kind::CloudImg))
        .update(LockWait::blocking(), &|_| {}, |idx| {
            for i in 0..n {
                let key = format!("http://x/{i}.img");
                idx.images
                    .insert(key.clone(), Some(cloud_entry(&key, n_id(n + i), i)));
            }
            idx.images
                .insert("app0".into(), Some(cloud_entry("app0", n_id(7 * n), 0)));
            Ok(())
        })
        .unwrap();
    layout
}

fn json(layout: &Layout, kind: Kind) -> PathBuf {
    layout.backend(kind).index_path()
}

/// Rebuild until the index is old enough for the racily-clean rule (a granule at most).
fn rebuild<E: Entry>(kind: Kind, json: &Path) {
    for _ in 0..300 {
        match cache::rebuild::<E>(kind, json).unwrap() {
            Rebuilt::Written(_) => return,
            Rebuilt::Racy(_) => std::thread::sleep(Duration::from_millis(10)),
            Rebuilt::Missing => panic!("no index at {}", json.display()),
            _ => panic!("unexpected rebuild outcome"),
        }
    }
    panic!("the index stayed racily clean for 3 s");
}

fn open(kind: Kind, json: &Path) -> Result<Cache, cache::Error> {
    Cache::open(kind, json, &cache::path_for(json), json.parent().unwrap()).map(Option::unwrap)
}

fn rejected(kind: Kind, json: &Path) -> String {
    match open(kind, json) {
        Err(e @ cache::Error::Rejected { .. }) => e.to_string(),
        Err(e) => panic!("not a rejection: {e}"),
        Ok(_) => panic!("a stale or bad cache of {} was used", json.display()),
    }
}

fn both(layout: &Layout) -> Vec<Cache> {
    vec![
        open(Kind::Oci, &json(layout, Kind::Oci)).unwrap(),
        open(Kind::CloudImg, &json(layout, Kind::CloudImg)).unwrap(),
    ]
}

/// Every query a user can type, answered by the cache and by the JSON path's `Lookup`: the
/// same image, keys, entry and error text. 3000 images make several blocks, levels and buckets.
#[test]
fn answers_equal_the_json_path() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = store(tmp.path(), 1500);
    rebuild::<OciEntry>(Kind::Oci, &json(&layout, Kind::Oci));
    rebuild::<CloudEntry>(Kind::CloudImg, &json(&layout, Kind::CloudImg));
    let oci: IndexFile<OciEntry> =
        serde_json::from_slice(&std::fs::read(json(&layout, Kind::Oci)).unwrap()).unwrap();
    let cloud: IndexFile<CloudEntry> =
        serde_json::from_slice(&std::fs::read(json(&layout, Kind::CloudImg)).unwrap()).unwrap();
    let mut items = Vec::new();
    for (k, e) in oci.entries() {
        items.push(Item {
            kind: Kind::Oci,
            key: k.into(),
            canonical: canonical(k),
            id: e.id(),
        });
    }
    for (k, e) in cloud.entries() {
        items.push(Item {
            kind: Kind::CloudImg,
            key: k.into(),
            canonical: None,
            id: e.id(),
        });
    }
    let lookup = Lookup::build(items.clone());
    let caches = both(&layout);
    let refs: Vec<&Cache> = caches.iter().collect();
    let mut queries: Vec<String> = Vec::new();
    for it in items.iter().step_by(7) {
        let hex = it.id.hex();
        queries.extend([
            it.key.clone(),
            it.key
                .replace("docker.io/library/", "")
                .replace(":latest", ""),
            format!("{}:latest", it.key),
            it.id.to_string(),
            hex.clone(),
            hex[..12].to_owned(),
            hex[..11].to_owned(),
            format!("sha256:{}", &hex[..13]),
        ]);
    }
    queries.extend([
        "app0".into(),
        "nope".into(),
        "0000000000000".into(),
        "abc".into(),
    ]);
    for q in &queries {
        let cq = canonical(q);
        let want = lookup.resolve(q, cq.as_deref());
        let got = cache::resolve(&refs, q, cq.as_deref()).unwrap();
        match (want, got) {
            (Ok(m), Ok(r)) => {
                assert_eq!((m.kind, m.id), (r.kind, r.id), "{q}");
                let keys: Vec<&str> = m.items.iter().map(|i| i.key.as_str()).collect();
                assert_eq!(keys, r.keys, "{q}");
                let c = refs.iter().find(|c| c.kind() == r.kind).unwrap();
                match r.kind {
                    Kind::Oci => assert_eq!(
                        &c.entry::<OciEntry>(r.image).unwrap(),
                        oci.get(keys[0]).unwrap()
                    ),
                    Kind::CloudImg => assert_eq!(
                        &c.entry::<CloudEntry>(r.image).unwrap(),
                        cloud.get(keys[0]).unwrap()
                    ),
                }
            }
            (Err(w), Err(g)) => assert_eq!(w.to_string(), g.to_string(), "{q}"),
            (w, g) => panic!("{q}: JSON path {w:?}, cache {g:?}"),
        }
    }
    // `list` from the cache: every key with its ID, size and time.
    let rows = caches[0].rows().unwrap();
    assert_eq!(rows.len(), oci.entries().count());
    for (row, (k, e)) in rows.iter().zip(oci.entries()) {
        assert_eq!(
            (row.key.as_str(), row.id, row.size, row.created_at.as_str()),
            (k, e.id(), e.size, e.created_at.as_str())
        );
    }
}

/// A fresh store (1 oci + 1 cloud image) with both caches built and in use.
fn fresh() -> (tempfile::TempDir, Layout, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = store(tmp.path(), 3);
    let oci = json(&layout, Kind::Oci);
    rebuild::<OciEntry>(Kind::Oci, &oci);
    rebuild::<CloudEntry>(Kind::CloudImg, &json(&layout, Kind::CloudImg));
    open(Kind::Oci, &oci).expect("a fresh cache is used");
    (tmp, layout, oci)
}

#[test]
fn replacing_the_index_by_rename_is_seen_even_with_a_reused_inode() {
    let (_tmp, _layout, oci) = fresh();
    let before = std::fs::metadata(&oci).unwrap();
    let bytes = std::fs::read(&oci).unwrap();
    // cocoon's way: the same bytes, a new file renamed over the old one.
    let tmp = oci.with_file_name("images.json.new");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &oci).unwrap();
    assert!(rejected(Kind::Oci, &oci).contains("stale"));
    // Delete and recreate: the filesystem may hand out the same inode number again.
    std::fs::remove_file(&oci).unwrap();
    std::fs::remove_file(oci.with_file_name("images.json.bak")).ok();
    std::fs::write(&oci, &bytes).unwrap();
    let after = std::fs::metadata(&oci).unwrap();
    eprintln!(
        "inode reused: {}",
        std::os::unix::fs::MetadataExt::ino(&before) == std::os::unix::fs::MetadataExt::ino(&after)
    );
    assert!(rejected(Kind::Oci, &oci).contains("stale"));
}

#[test]
fn in_place_edit_with_same_size_and_mtime_is_seen() {
    use std::io::{Seek, Write};
    let (_tmp, _layout, oci) = fresh();
    let meta = std::fs::metadata(&oci).unwrap();
    let bytes = std::fs::read(&oci).unwrap();
    let at = bytes.windows(7).position(|w| w == b"\"size\":").unwrap() + 7;
    let mut f = std::fs::OpenOptions::new().write(true).open(&oci).unwrap();
    f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
    f.write_all(if bytes[at] == b'9' { b"8" } else { b"9" })
        .unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
    drop(f);
    let now = std::fs::metadata(&oci).unwrap();
    assert_eq!(
        (now.len(), now.modified().unwrap()),
        (meta.len(), meta.modified().unwrap())
    );
    assert!(rejected(Kind::Oci, &oci).contains("stale"));
}

#[test]
fn truncated_index_is_seen() {
    let (_tmp, _layout, oci) = fresh();
    let f = std::fs::OpenOptions::new().write(true).open(&oci).unwrap();
    f.set_len(10).unwrap();
    assert!(rejected(Kind::Oci, &oci).contains("stale"));
}

/// Decode the header of `json`'s cache, let `edit` change it, write it back re-sealed.
fn craft(json: &Path, edit: impl FnOnce(&mut format::Header)) {
    let path = cache::path_for(json);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut h = format::Header::decode(&bytes, bytes.len() as u64).unwrap();
    edit(&mut h);
    h.encode(&mut bytes);
    format::reseal(&mut bytes);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn racily_clean_cache_is_refused() {
    let (_tmp, _layout, oci) = fresh();
    // Built at a clock reading no later than the index's mtime: a rewrite within that granule
    // would keep every stat field, so the cache cannot be trusted.
    craft(&oci, |h| h.clock = h.source.mtime);
    assert!(rejected(Kind::Oci, &oci).contains("racily clean"));
}

#[test]
fn other_generation_token_is_refused() {
    let (_tmp, _layout, oci) = fresh();
    assert!(
        format::token_of(&std::fs::read(&oci).unwrap()).is_some(),
        "imgstore writes a token"
    );
    craft(&oci, |h| h.token = Some([7; 16]));
    assert!(rejected(Kind::Oci, &oci).contains("generation"));
    craft(&oci, |h| h.token = None);
    assert!(rejected(Kind::Oci, &oci).contains("generation"));
}

#[test]
fn deleted_cache_is_missing() {
    let (_tmp, _layout, oci) = fresh();
    std::fs::remove_file(cache::path_for(&oci)).unwrap();
    assert!(rejected(Kind::Oci, &oci).contains("no cache"));
}

#[test]
fn cache_of_another_store_is_refused() {
    let (_tmp, _layout, oci) = fresh();
    let (_tmp2, _layout2, other) = fresh();
    std::fs::remove_file(cache::path_for(&oci)).unwrap();
    std::fs::copy(cache::path_for(&other), cache::path_for(&oci)).unwrap();
    assert!(rejected(Kind::Oci, &oci).contains("stale"));
    // Even one claiming this store's index file: its db/ is another directory.
    let here = format::Source::of(&std::fs::metadata(&oci).unwrap());
    craft(&oci, |h| h.source = here);
    assert!(rejected(Kind::Oci, &oci).contains("another store"));
    // And the other backend's cache.
    std::fs::remove_file(cache::path_for(&oci)).unwrap();
    let cloud = oci
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("cloudimg/db/images.json");
    std::fs::copy(cache::path_for(&cloud), cache::path_for(&oci)).unwrap();
    assert!(rejected(Kind::Oci, &oci).contains("other backend"));
}

#[test]
fn truncated_or_extended_cache_is_refused() {
    let (_tmp, _layout, oci) = fresh();
    let path = cache::path_for(&oci);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for len in [0, 100, format::HEADER_LEN, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let why = rejected(Kind::Oci, &oci);
        assert!(
            why.contains("length") || why.contains("shorter"),
            "{len}: {why}"
        );
        std::fs::remove_file(&path).unwrap();
    }
    let mut longer = bytes.clone();
    longer.push(0);
    std::fs::write(&path, &longer).unwrap();
    assert!(rejected(Kind::Oci, &oci).contains("length"));
}

#[test]
fn cache_of_another_format_version_is_refused() {
    let (_tmp, _layout, oci) = fresh();
    let path = cache::path_for(&oci);
    let mut bytes = std::fs::read(&path).unwrap();
    // A version-1 cache (the format before per-image records), otherwise well formed.
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    format::reseal(&mut bytes);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    assert!(rejected(Kind::Oci, &oci).contains("version"));
}

#[test]
fn damaged_block_is_refused_by_the_lookup_touching_it() {
    let (_tmp, layout, oci) = fresh();
    let path = cache::path_for(&oci);
    let mut bytes = std::fs::read(&path).unwrap();
    let h = format::Header::decode(&bytes, bytes.len() as u64).unwrap();
    let at = |off: u64| format::Header::file_offset(off) as usize;
    let (items, _) = h.section(format::Sec::Items);
    bytes[at(items + 8)] ^= 1; // the first item's image number (read by `list`)
    let (records, _) = h.section(format::Sec::Records);
    bytes[at(records + 16)] ^= 1; // the first image's ID in its record (read by lookups)
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let caches = both(&layout);
    let refs: Vec<&Cache> = caches.iter().collect();
    let err = cache::resolve(&refs, "app0", None).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // `list` reads the whole item table (through its own bulk path) and refuses it too.
    let err = caches[0].rows().unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn published_cache_is_read_only_and_leaves_no_temp() {
    let (_tmp, _layout, oci) = fresh();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cache::path_for(&oci))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o444);
    let names: Vec<String> = std::fs::read_dir(oci.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// cocoon's own files: a cache of them answers as the JSON does, and building it never
/// touches them; they carry no generation token.
#[test]
fn cocoon_fixtures_build_and_answer() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/cocoon-v0.3.7");
    let tmp = tempfile::tempdir().unwrap();
    for kind in Kind::ALL {
        let db = tmp.path().join(kind.name()).join("db");
        std::fs::create_dir_all(&db).unwrap();
        let from = src.join(kind.name()).join("db/images.json");
        let bytes = std::fs::read(&from)
            .unwrap_or_else(|e| panic!("cocoon fixtures not found at {}: {e}", from.display()));
        assert_eq!(format::token_of(&bytes), None);
        std::fs::write(db.join("images.json"), &bytes).unwrap();
    }
    let layout = Layout::new(tmp.path());
    let oci = json(&layout, Kind::Oci);
    let cloud = json(&layout, Kind::CloudImg);
    let before = (std::fs::read(&oci).unwrap(), std::fs::read(&cloud).unwrap());
    rebuild::<OciEntry>(Kind::Oci, &oci);
    rebuild::<CloudEntry>(Kind::CloudImg, &cloud);
    assert_eq!(
        before,
        (std::fs::read(&oci).unwrap(), std::fs::read(&cloud).unwrap())
    );
    let caches = both(&layout);
    let refs: Vec<&Cache> = caches.iter().collect();
    let idx: IndexFile<OciEntry> = serde_json::from_slice(&before.0).unwrap();
    for (key, e) in idx.entries() {
        let r = cache::resolve(&refs, key, canonical(key).as_deref())
            .unwrap()
            .unwrap();
        assert_eq!(r.id, e.id());
        assert_eq!(&caches[0].entry::<OciEntry>(r.image).unwrap(), e);
        assert_eq!(
            cache::resolve(&refs, &e.id().hex()[..12], None)
                .unwrap()
                .unwrap()
                .id,
            e.id()
        );
    }
    let idx: IndexFile<CloudEntry> = serde_json::from_slice(&before.1).unwrap();
    for (key, e) in idx.entries() {
        let r = cache::resolve(&refs, key, None).unwrap().unwrap();
        assert_eq!((r.kind, r.id), (Kind::CloudImg, e.id()));
        assert_eq!(&caches[1].entry::<CloudEntry>(r.image).unwrap(), e);
    }
}

/// The token imgstore writes first is an extra top-level key: a reader with cocoon's schema
/// (only `images`, unknown keys ignored, as Go's encoding/json does) reads the same entries,
/// and a file rewritten without it still loads in imgstore.
#[test]
fn generation_token_keeps_cocoons_schema() {
    #[derive(serde::Deserialize)]
    struct CocoonIndex {
        images: std::collections::BTreeMap<String, Option<serde_json::Value>>,
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = store(tmp.path(), 2);
    let oci = json(&layout, Kind::Oci);
    let bytes = std::fs::read(&oci).unwrap();
    assert!(
        bytes.starts_with(b"{\"imgstore_generation\":\""),
        "token first"
    );
    let cocoon: CocoonIndex = serde_json::from_slice(&bytes).unwrap();
    let ours: IndexFile<OciEntry> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(cocoon.images.len(), ours.images.len());
    assert!(ours.extra.is_empty(), "the token is not an unknown field");
    // cocoon rewrites without it: imgstore loads that, and its next write adds a new one.
    let rewritten = serde_json::to_vec(&serde_json::json!({"images": cocoon.images})).unwrap();
    std::fs::write(&oci, &rewritten).unwrap();
    let again: IndexFile<OciEntry> = serde_json::from_slice(&rewritten).unwrap();
    assert_eq!(again.images, ours.images);
    let old = format::token_of(&bytes).unwrap();
    Db::<OciEntry>::new(&layout.backend(Kind::Oci))
        .update(LockWait::blocking(), &|_| {}, |idx| {
            idx.images.remove("app0");
            Ok(())
        })
        .unwrap();
    let new = format::token_of(&std::fs::read(&oci).unwrap()).unwrap();
    assert_ne!(old, new);
    // A no-op update writes nothing, token or not.
    let m = std::fs::metadata(&oci).unwrap().modified().unwrap();
    Db::<OciEntry>::new(&layout.backend(Kind::Oci))
        .update(LockWait::blocking(), &|_| {}, |_| Ok(()))
        .unwrap();
    assert_eq!(std::fs::metadata(&oci).unwrap().modified().unwrap(), m);
}

#[test]
fn a_key_longer_than_a_cache_block_leaves_the_index_uncached() {
    // `list` borrows every string from one block, so a key that cannot fit one is not cached;
    // the JSON path still answers for it.
    let tmp = tempfile::tempdir().unwrap();
    let layout = store(tmp.path(), 2);
    let long = format!("docker.io/library/{}:latest", "a".repeat(format::PAYLOAD));
    let oci = json(&layout, Kind::Oci);
    Db::<OciEntry>::new(&layout.backend(Kind::Oci))
        .update(LockWait::blocking(), &|_| {}, |idx| {
            idx.images
                .insert(long.clone(), Some(oci_entry(&long, n_id(99), 99)));
            Ok(())
        })
        .unwrap();
    // Retried while the index is racily clean (no cache would be built yet either way).
    let err = (0..300)
        .find_map(|_| match cache::rebuild::<OciEntry>(Kind::Oci, &oci) {
            Err(e) => Some(e),
            Ok(Rebuilt::Racy(_)) => {
                std::thread::sleep(Duration::from_millis(10));
                None
            }
            Ok(_) => panic!("a cache was built for a key longer than a block"),
        })
        .expect("the index stayed racily clean for 3 s");
    assert!(
        err.to_string().contains("longer than a cache block"),
        "{err}"
    );
    assert!(rejected(Kind::Oci, &oci).contains("stale"));
    let store = imgstore::Store::open(tmp.path()).unwrap();
    assert_eq!(store.inspect(&long).unwrap().id, n_id(99));
    assert_eq!(store.inspect("app1").unwrap().id, n_id(1));
}
