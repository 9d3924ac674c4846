//! The property the `cache` fuzz target checks, shared with the seed test (the fuzz target
//! includes this file with `#[path]`, so it uses only std and the public `imgstore` API).
//!
//! Two indexes are generated from the input (keys that collide across backends, aliases,
//! canonical spellings, IDs that share 12-hex prefixes, a sha512 ID), their caches are built,
//! then damaged as the input says. For every query, a cache that loads must either refuse
//! (the caller falls back to the JSON) or give exactly the JSON path's answer: the same image,
//! keys, error text and entry. When the damage is re-sealed with valid checksums (a
//! hand-crafted cache), the loader must still never panic and never return an entry that the
//! JSON does not hold under that ID.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use imgstore::digest::Digest;
use imgstore::index::cache::{self, format, Cache, Origin, Source, Time};
use imgstore::index::{CloudEntry, Entry, IndexFile, OciEntry};
use imgstore::lookup::{Item, Lookup};
use imgstore::{Kind, Reference};

fn work_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
    })
}

/// Keys an item can take: plain and canonical spellings of one reference, digest-shaped keys,
/// a key that is not a reference, URLs.
pub const KEYS: [&str; 16] = [
    "ubuntu",
    "docker.io/library/ubuntu:latest",
    "ubuntu:latest",
    "library/ubuntu",
    "alpine:3.20",
    "docker.io/library/alpine:3.20",
    "abababababab",
    "sha256:abababababab",
    "Bad Name",
    "http://x/a.img",
    "http://x/b.img",
    "ubuntu:24.04",
    "ghcr.io/o/app:1",
    "ab",
    "ababababab00",
    "app",
];

/// Extra queries besides keys and ID spellings.
const QUERIES: [&str; 6] = [
    "docker.io/library/ubuntu",
    "library/alpine:3.20",
    "sha256:",
    "",
    "ABABABABABAB",
    "zzzzzzzzzzzzzzzz",
];

/// One of eight IDs: all share their first 6 bytes (12-hex prefixes collide), byte 6 separates
/// pairs (13th/14th digit), the last byte separates within a pair; number 7 is a sha512.
pub fn id(n: u8) -> Digest {
    let n = n % 8;
    if n == 7 {
        return Digest::parse(&format!("sha512:{}", "ab".repeat(64))).expect("valid sha512");
    }
    let mut b = [0xab; 32];
    b[6] = n >> 1;
    b[31] = n & 1;
    Digest::sha256(b)
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

fn oci_entry(key: &str, id: Digest, n: u64) -> OciEntry {
    serde_json::from_value(serde_json::json!({
        "ref": key, "manifest_digest": id.to_string(),
        "layers": [{"digest": id.to_string()}], "kernel_layer": id.to_string(),
        "initrd_layer": id.to_string(), "size": n, "created_at": format!("t{n}")
    }))
    .expect("valid oci entry")
}

fn cloud_entry(key: &str, id: Digest, n: u64) -> CloudEntry {
    serde_json::from_value(serde_json::json!({
        "ref": key, "content_sum": id.to_string(), "size": n, "created_at": format!("t{n}")
    }))
    .expect("valid cloud entry")
}

fn canonical(s: &str) -> Option<String> {
    Reference::parse(s).ok().map(|r| r.canonical())
}

/// Write `index` (with a generation token first when `token`) and a cache built from it.
fn write<E: Entry>(db: &Path, kind: Kind, index: &IndexFile<E>, token: bool) -> PathBuf {
    std::fs::create_dir_all(db).expect("creating db/");
    let json = db.join("images.json");
    let mut raw = serde_json::to_vec(index).expect("serializing");
    if token {
        let lead = format!("{{\"{}\":\"{}\",", format::TOKEN_KEY, "0f".repeat(16));
        raw.splice(..1, lead.into_bytes());
    }
    raw.push(b'\n');
    std::fs::write(&json, &raw).expect("writing index");
    let meta = std::fs::metadata(&json).expect("stat index");
    let origin = Origin {
        kind,
        source: Source::of(&meta),
        // A clock far ahead: the loader is under test here, not the racily-clean rule.
        clock: Time {
            sec: i64::MAX / 2,
            nsec: 0,
        },
        db: cache::db_identity(db).expect("stat db/"),
    };
    let bytes = cache::build(&origin, &raw, index).expect("building cache");
    std::fs::write(cache::path_for(&json), bytes).expect("writing cache");
    json
}

/// What the JSON path answers, or what a usable cache answered.
#[derive(Debug, PartialEq)]
enum Answer {
    Found(Kind, Digest, Vec<String>, serde_json::Value),
    Error(String),
}

/// Check the property for one input.
pub fn check(data: &[u8]) {
    let thread =
        format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_digit(), "");
    let dir = work_base().join(format!(
        "imgstore-cache-fuzz.{}.{thread}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    check_in(&dir, data);
    let _ = std::fs::remove_dir_all(&dir);
}

type Generated = (IndexFile<OciEntry>, IndexFile<CloudEntry>, Vec<Item>);

/// Both indexes and the JSON path's items, from the input's first bytes.
fn generate(input: &mut Cursor<'_>) -> Generated {
    let mut oci = IndexFile::<OciEntry>::default();
    let mut cloud = IndexFile::<CloudEntry>::default();
    let mut items = Vec::new();
    for n in 0..u64::from(input.next() % 12) {
        let a = input.next();
        let key = KEYS[usize::from(a >> 1 & 0xf)];
        let d = id(input.next());
        let (kind, fresh) = if a & 1 == 0 {
            (
                Kind::Oci,
                oci.images
                    .insert(key.into(), Some(oci_entry(key, d, n)))
                    .is_none(),
            )
        } else {
            let e = cloud_entry(key, d, n);
            (
                Kind::CloudImg,
                cloud.images.insert(key.into(), Some(e)).is_none(),
            )
        };
        if !fresh {
            items.retain(|i: &Item| !(i.kind == kind && i.key == key));
        }
        items.push(Item {
            kind,
            key: key.to_owned(),
            canonical: if kind == Kind::Oci {
                canonical(key)
            } else {
                None
            },
            id: d,
        });
    }
    (oci, cloud, items)
}

/// Damage the cache at `victim` as the input says; whether anything was changed.
fn damage(victim: &Path, input: &mut Cursor<'_>, flags: u8, reseal: bool) -> bool {
    let mut bytes = std::fs::read(victim).expect("reading cache");
    let mutations = usize::from(flags >> 3 & 7);
    let mut truncate = None;
    for _ in 0..mutations {
        let (lo, mid, hi, x) = (input.next(), input.next(), input.next(), input.next());
        let off = usize::from(lo) | usize::from(mid) << 8 | usize::from(hi & 0x7f) << 16;
        if hi & 0x80 != 0 {
            truncate = Some(off % (bytes.len() + 1));
        } else if !bytes.is_empty() {
            let at = off % bytes.len();
            bytes[at] ^= x.max(1);
        }
    }
    if let Some(len) = truncate {
        bytes.truncate(len);
    }
    if reseal {
        format::reseal(&mut bytes);
    }
    let damaged = mutations > 0 || truncate.is_some();
    std::fs::write(victim, &bytes).expect("writing damaged cache");
    damaged
}

/// Every key, some other references and junk, and each ID in every spelling and length.
fn queries() -> Vec<String> {
    let mut queries: Vec<String> = KEYS
        .iter()
        .chain(&QUERIES)
        .map(|s| (*s).to_owned())
        .collect();
    for n in 0..8 {
        let d = id(n);
        let hex = d.hex();
        for len in [11, 12, 13, 14, 64] {
            queries.push(hex[..len.min(hex.len())].to_owned());
            queries.push(format!("sha256:{}", &hex[..len.min(hex.len())]));
        }
        queries.push(d.to_string());
    }

    queries
}

fn check_in(dir: &Path, data: &[u8]) {
    let mut input = Cursor(data);
    let (mut oci, cloud, items) = generate(&mut input);
    if input.next() & 1 == 1 {
        oci.images.insert("gone".into(), None);
    }
    let flags = input.next();
    let token = flags & 1 == 1;
    let reseal = flags & 2 == 2;
    let target = usize::from(flags >> 2 & 1);
    let oci_json = write(&dir.join("oci/db"), Kind::Oci, &oci, token);
    let cloud_json = write(&dir.join("cloudimg/db"), Kind::CloudImg, &cloud, !token);

    let victim = cache::path_for(if target == 0 { &oci_json } else { &cloud_json });
    let damaged = damage(&victim, &mut input, flags, reseal);
    let lookup = Lookup::build(items);
    let queries = queries();

    let open = |kind, json: &Path| {
        Cache::open(
            kind,
            json,
            &cache::path_for(json),
            json.parent().unwrap_or(dir),
        )
    };
    let caches = match (
        open(Kind::Oci, &oci_json),
        open(Kind::CloudImg, &cloud_json),
    ) {
        (Ok(Some(a)), Ok(Some(b))) => vec![a, b],
        (a, b) => {
            assert!(
                damaged,
                "an undamaged cache is used: {:?} {:?}",
                a.err(),
                b.err()
            );
            // A rejected cache: the caller answers from the JSON, nothing to compare.
            return;
        }
    };
    let refs: Vec<&Cache> = caches.iter().collect();
    for q in &queries {
        let cq = canonical(q);
        let want = match lookup.resolve(q, cq.as_deref()) {
            Ok(m) => {
                let keys: Vec<String> = m.items.iter().map(|i| i.key.clone()).collect();
                let entry = match m.kind {
                    Kind::Oci => serde_json::to_value(oci.get(&keys[0])),
                    Kind::CloudImg => serde_json::to_value(cloud.get(&keys[0])),
                }
                .expect("entry to value");
                Answer::Found(m.kind, m.id, keys, entry)
            }
            Err(e) => Answer::Error(e.to_string()),
        };
        let got = match cache::resolve(&refs, q, cq.as_deref()) {
            Err(_) => continue,
            Ok(Err(e)) => Answer::Error(e.to_string()),
            Ok(Ok(r)) => {
                let c = refs
                    .iter()
                    .find(|c| c.kind() == r.kind)
                    .expect("cache of kind");
                let entry = match r.kind {
                    Kind::Oci => c.entry::<OciEntry>(r.image).map(serde_json::to_value),
                    Kind::CloudImg => c.entry::<CloudEntry>(r.image).map(serde_json::to_value),
                };
                let Ok(entry) = entry else { continue };
                let entry = entry.expect("entry to value");
                if reseal && damaged {
                    // Hand-crafted: the entry must still be one the JSON holds under that ID.
                    let held = match r.kind {
                        Kind::Oci => oci.entries().any(|(_, e)| {
                            e.id() == r.id && serde_json::to_value(e).ok() == Some(entry.clone())
                        }),
                        Kind::CloudImg => cloud.entries().any(|(_, e)| {
                            e.id() == r.id && serde_json::to_value(e).ok() == Some(entry.clone())
                        }),
                    };
                    assert!(held, "query {q:?}: a crafted cache invented entry {entry}");
                    continue;
                }
                Answer::Found(r.kind, r.id, r.keys, entry)
            }
        };
        if reseal && damaged {
            continue;
        }
        assert_eq!(got, want, "query {q:?}");
    }
}
