//! A model test of the lookup cache under concurrency: imgstore writers, a cocoon-like writer
//! (rewrites `images.json` by rename under the index lock, drops the generation token, never
//! touches the cache) and readers (one kept `Store`, and fresh ones) run in separate processes
//! through thousands of random additions and removals. Every version a writer commits is
//! recorded; afterwards each reader answer must equal the JSON path's answer for some pair of
//! versions the reader could have seen while it asked.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use imgstore::index::file::Db;
use imgstore::index::{CloudEntry, Entry, IndexFile, OciEntry};
use imgstore::lock::{lock_file, Mode};
use imgstore::lookup::{Item, Lookup};
use imgstore::{Digest, Kind, Layout, LockWait, Reference, Store};
use serde_json::{json, Value};

use crate::support::{self, child_args, spawn};

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Twelve IDs in pairs sharing their first 12 hex digits: prefixes are ambiguous in pairs.
fn pool_id(n: usize) -> Digest {
    let mut b = [0u8; 32];
    b[0] = (n / 2) as u8 + 1;
    b[7] = (n % 2) as u8 + 1;
    Digest::sha256(b)
}

fn keys(kind: Kind) -> Vec<String> {
    match kind {
        Kind::Oci => (0..6)
            .flat_map(|i| {
                [
                    format!("docker.io/library/app{i}:latest"),
                    format!("app{i}"),
                ]
            })
            .collect(),
        Kind::CloudImg => (0..6)
            .map(|i| format!("http://x/{i}.img"))
            .chain((0..3).map(|i| format!("app{i}")))
            .collect(),
    }
}

fn entry(kind: Kind, key: &str, id: Digest, size: u64) -> Value {
    match kind {
        Kind::Oci => json!({"ref": key, "manifest_digest": id.to_string(),
            "layers": [{"digest": id.to_string()}], "kernel_layer": id.to_string(),
            "initrd_layer": id.to_string(), "size": size, "created_at": "t"}),
        Kind::CloudImg => json!({"ref": key, "content_sum": id.to_string(), "size": size,
            "created_at": "t"}),
    }
}

fn history(dir: &Path, kind: Kind) -> PathBuf {
    dir.join("history").join(kind.name())
}

/// Record a committed version (the caller holds the exclusive index lock).
fn record(dir: &Path, kind: Kind, images: &Value) {
    let h = history(dir, kind);
    let n = std::fs::read_dir(&h).unwrap().count() + 1;
    let tmp = h.join(format!(".{n}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(images).unwrap()).unwrap();
    std::fs::rename(tmp, h.join(format!("{n:06}"))).unwrap();
}

fn versions_seen(dir: &Path, kind: Kind) -> usize {
    std::fs::read_dir(history(dir, kind))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
}

/// One random change: add or replace a key (60%), or remove one.
fn change(rng: &mut Rng, kind: Kind, images: &mut serde_json::Map<String, Value>) -> bool {
    let pool = keys(kind);
    let key = &pool[rng.below(pool.len())];
    if rng.below(10) < 6 {
        let id = pool_id(rng.below(12));
        images.insert(key.clone(), entry(kind, key, id, rng.next() % 1000));
        true
    } else {
        images.remove(key).is_some()
    }
}

fn args_of(a: &HashMap<String, String>) -> (PathBuf, u64, usize) {
    (
        PathBuf::from(&a["DIR"]),
        a["SEED"].parse().unwrap(),
        a["OPS"].parse().unwrap(),
    )
}

#[test]
fn child_imgstore_writer() {
    let Some(a) = child_args("cache_model_writer") else {
        return;
    };
    let (dir, seed, ops) = args_of(&a);
    let layout = Layout::new(dir.join("root"));
    let mut rng = Rng(seed);
    for _ in 0..ops {
        let kind = Kind::ALL[rng.below(2)];
        let mut r = Rng(rng.next());
        let edit = |images: &mut Value| {
            let map = images.as_object_mut().unwrap();
            change(&mut r, kind, map)
        };
        match kind {
            Kind::Oci => update::<OciEntry>(&dir, &layout, kind, edit),
            Kind::CloudImg => update::<CloudEntry>(&dir, &layout, kind, edit),
        }
    }
}

fn update<E: Entry>(
    dir: &Path,
    layout: &Layout,
    kind: Kind,
    edit: impl FnOnce(&mut Value) -> bool,
) {
    Db::<E>::new(&layout.backend(kind))
        .update(LockWait::blocking(), &|_| {}, |idx| {
            let mut images = serde_json::to_value(&idx.images).unwrap();
            if edit(&mut images) {
                idx.images = serde_json::from_value(images.clone()).unwrap();
                // Under the lock, before the rename: versions are numbered in commit order.
                record(dir, kind, &images);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn child_cocoon_writer() {
    let Some(a) = child_args("cache_model_cocoon") else {
        return;
    };
    let (dir, seed, ops) = args_of(&a);
    let layout = Layout::new(dir.join("root"));
    let mut rng = Rng(seed);
    for _ in 0..ops {
        let kind = Kind::ALL[rng.below(2)];
        let b = layout.backend(kind);
        std::fs::create_dir_all(b.db_dir()).unwrap();
        let _lock = lock_file(
            &b.index_lock_path(),
            Mode::Exclusive,
            LockWait::blocking(),
            &|_| {},
        )
        .unwrap();
        let mut file: Value = std::fs::read(b.index_path()).map_or(json!({"images": {}}), |raw| {
            serde_json::from_slice(&raw).unwrap()
        });
        let images = file["images"].as_object_mut().unwrap();
        if !change(&mut rng, kind, images) {
            continue;
        }
        let images = Value::Object(images.clone());
        record(&dir, kind, &images);
        // cocoon's write: only the fields it knows (no generation token), temp file, rename.
        file = json!({ "images": images });
        let tmp = b.db_dir().join(".cocoon-write.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&file).unwrap()).unwrap();
        std::fs::rename(&tmp, b.index_path()).unwrap();
    }
}

fn queries() -> Vec<String> {
    let mut q: Vec<String> = keys(Kind::Oci)
        .into_iter()
        .chain(keys(Kind::CloudImg))
        .collect();
    q.extend((0..6).map(|i| format!("app{i}:latest")));
    for n in 0..12 {
        let hex = pool_id(n).hex();
        q.extend([hex[..12].to_owned(), hex[..11].to_owned(), hex.clone()]);
    }
    q.push("nothing".into());
    q
}

fn answer(r: Result<imgstore::store::ImageInfo, imgstore::store::Error>) -> Value {
    match r {
        Ok(i) => json!({"kind": i.kind, "id": i.id.to_string(), "names": i.names, "size": i.size}),
        Err(e) => json!({"err": e.to_string()}),
    }
}

#[test]
fn child_reader() {
    let Some(a) = child_args("cache_model_reader") else {
        return;
    };
    let (dir, seed, _) = args_of(&a);
    let root = dir.join("root");
    let kept = Store::open(&root).unwrap();
    let mut rng = Rng(seed);
    let qs = queries();
    let mut log = Vec::new();
    while !dir.join("stop").exists() {
        let q = &qs[rng.below(qs.len())];
        let before = Kind::ALL.map(|k| versions_seen(&dir, k));
        let got = if rng.below(4) == 0 {
            Store::open(&root).unwrap().inspect(q)
        } else {
            kept.inspect(q)
        };
        let after = Kind::ALL.map(|k| versions_seen(&dir, k));
        log.push(json!({"q": q, "before": before, "after": after, "got": answer(got)}));
    }
    let out = dir.join(format!("reader-{seed}.json"));
    std::fs::write(out, serde_json::to_vec(&log).unwrap()).unwrap();
}

/// What the JSON path answers for `q` over one version of each index.
fn expected(oci: &Value, cloud: &Value, q: &str) -> Value {
    let o: IndexFile<OciEntry> = serde_json::from_value(json!({ "images": oci })).unwrap();
    let c: IndexFile<CloudEntry> = serde_json::from_value(json!({ "images": cloud })).unwrap();
    let canon = |s: &str| Reference::parse(s).ok().map(|r| r.canonical());
    let mut items: Vec<Item> = Vec::new();
    for (k, e) in o.entries() {
        items.push(Item {
            kind: Kind::Oci,
            key: k.into(),
            canonical: canon(k),
            id: e.id(),
        });
    }
    for (k, e) in c.entries() {
        items.push(Item {
            kind: Kind::CloudImg,
            key: k.into(),
            canonical: None,
            id: e.id(),
        });
    }
    let lookup = Lookup::build(items);
    match lookup.resolve(q, canon(q).as_deref()) {
        Ok(m) => {
            let names: Vec<&str> = m.items.iter().map(|i| i.key.as_str()).collect();
            let size = match m.kind {
                Kind::Oci => o.get(names[0]).unwrap().size,
                Kind::CloudImg => c.get(names[0]).unwrap().size,
            };
            json!({"kind": m.kind, "id": m.id.to_string(), "names": names, "size": size})
        }
        Err(e) => json!({"err": e.to_string()}),
    }
}

/// Writers and readers in six processes; every reader answer is one the JSON could give.
#[test]
fn readers_always_answer_from_a_version_they_could_see() {
    let tmp = tempfile::Builder::new()
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .unwrap();
    let dir = tmp.path();
    for k in Kind::ALL {
        std::fs::create_dir_all(history(dir, k)).unwrap();
    }
    let d = dir.to_str().unwrap();
    let test = |name: &str| format!("cache_model::{name}");
    let writers: Vec<_> = [
        ("cache_model_writer", "child_imgstore_writer", 1, "700"),
        ("cache_model_writer", "child_imgstore_writer", 2, "700"),
        ("cache_model_cocoon", "child_cocoon_writer", 3, "600"),
    ]
    .iter()
    .map(|(role, t, seed, ops)| {
        spawn(
            &test(t),
            role,
            dir,
            &[("DIR", d), ("SEED", &seed.to_string()), ("OPS", ops)],
        )
    })
    .collect();
    let readers: Vec<_> = (10..13)
        .map(|seed| {
            spawn(
                &test("child_reader"),
                "cache_model_reader",
                dir,
                &[("DIR", d), ("SEED", &seed.to_string()), ("OPS", "0")],
            )
        })
        .collect();
    for w in writers {
        w.finish();
    }
    support::signal(&dir.join("stop"), "");
    for r in readers {
        r.finish();
    }

    let load = |k: Kind| -> Vec<Value> {
        let mut v = vec![json!({})];
        let mut names: Vec<_> = std::fs::read_dir(history(dir, k))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        v.extend(
            names
                .iter()
                .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()),
        );
        v
    };
    let (oci, cloud) = (load(Kind::Oci), load(Kind::CloudImg));
    assert!(
        oci.len() + cloud.len() > 1000,
        "thousands of commits: {}",
        oci.len() + cloud.len()
    );
    let mut memo: BTreeMap<(usize, usize, String), Value> = BTreeMap::new();
    let mut checked = 0;
    for seed in 10..13 {
        let log: Vec<Value> = serde_json::from_slice(
            &std::fs::read(dir.join(format!("reader-{seed}.json"))).unwrap(),
        )
        .unwrap();
        for rec in &log {
            let q = rec["q"].as_str().unwrap();
            let range = |i: usize| {
                let b = rec["before"][i].as_u64().unwrap() as usize;
                let a = rec["after"][i].as_u64().unwrap() as usize;
                b.saturating_sub(1)..=a
            };
            let ok = range(0).any(|vo| {
                range(1).any(|vc| {
                    let want = memo
                        .entry((vo, vc, q.to_owned()))
                        .or_insert_with(|| expected(&oci[vo], &cloud[vc], q));
                    *want == rec["got"]
                })
            });
            assert!(
                ok,
                "reader {seed}: {rec} matches no version it could have seen"
            );
            checked += 1;
        }
    }
    assert!(checked > 300, "readers answered only {checked} queries");
}
