//! The boot path (issue 12): `Store::open` + `config` of one image by exact name, by a short
//! reference (canonical match) and by a 12-hex prefix, through the lookup caches and through
//! the JSON on the same root (`StoreOptions::index_cache = false`), at 1k to 1M images; a
//! `Store` kept across calls; and the cost of one index write (JSON plus cache) at each size.
//!
//! Roots are generated once under `$BOOT_PATH_DIR` (default `target/boot-path`);
//! `BOOT_PATH_SIZES=1000,100000` picks sizes; `BOOT_PATH_JSON_MAX=100000` skips the JSON path
//! above that size (about 3 s a call at 1M). Run: `nice cargo bench --bench boot_path`.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use imgstore::index::cache;
use imgstore::index::file::Db;
use imgstore::index::OciEntry;
use imgstore::{Kind, Layout, LockWait, Store, StoreOptions};

#[path = "support/boot_root.rs"]
mod boot_root;

fn sizes() -> Vec<usize> {
    std::env::var("BOOT_PATH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BOOT_PATH_SIZES: numbers"))
        .collect()
}

fn base() -> std::path::PathBuf {
    std::env::var_os("BOOT_PATH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/boot-path"),
        Into::into,
    )
}

fn json_max() -> usize {
    std::env::var("BOOT_PATH_JSON_MAX").map_or(usize::MAX, |s| s.parse().expect("a number"))
}

fn opts(cache: bool) -> StoreOptions {
    StoreOptions {
        lock_wait: LockWait::no_wait(),
        index_cache: cache,
        ..StoreOptions::default()
    }
}

/// Build both caches (a read rebuilds them once the indexes are a clock granule old).
fn warm(root: &Path) {
    for _ in 0..500 {
        Store::open(root).unwrap().list().unwrap();
        if ["oci", "cloudimg"]
            .iter()
            .all(|k| root.join(k).join("db/images.idx").exists())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("caches of {} were never built", root.display());
}

fn boot_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("boot_path");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for n in sizes() {
        let (root, q) = boot_root::root(&base(), n);
        warm(&root);
        let cases = [
            ("name", &q.name),
            ("ref", &q.reference),
            ("prefix12", &q.prefix),
        ];
        for (what, query) in cases {
            for (path, cache) in [("cache", true), ("json", false)] {
                if !cache && n > json_max() {
                    continue;
                }
                if !cache && n >= 1_000_000 {
                    g.sample_size(10);
                }
                g.bench_with_input(BenchmarkId::new(format!("{what}/{path}"), n), &n, |b, _| {
                    b.iter(|| {
                        let store = Store::open_opts(&root, opts(cache)).unwrap();
                        store.config(&[query.as_str()]).unwrap()
                    });
                });
                g.sample_size(20);
            }
        }
        let kept = Store::open_opts(&root, opts(true)).unwrap();
        g.bench_with_input(BenchmarkId::new("name/kept_store", n), &n, |b, _| {
            b.iter(|| kept.config(&[q.name.as_str()]).unwrap());
        });
    }
    g.finish();
}

/// One index write at each size: load, insert one entry, serialize, write, and refresh the
/// cache (read back, build, fsync, rename), as every import's commit does.
fn write_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("index_write");
    g.warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for n in sizes().into_iter().filter(|&n| n <= 100_000) {
        let (root, _) = boot_root::root(&base(), n);
        let scratch = base().join(format!("write-{n}"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(scratch.join("oci/db")).unwrap();
        std::fs::copy(
            root.join("oci/db/images.json"),
            scratch.join("oci/db/images.json"),
        )
        .unwrap();
        let db = Db::<OciEntry>::new(&Layout::new(&scratch).backend(Kind::Oci));
        let template = serde_json::json!({"ref": "x", "manifest_digest": format!("sha256:{}", "ab".repeat(32)),
            "layers": [], "kernel_layer": format!("sha256:{}", "ab".repeat(32)),
            "initrd_layer": format!("sha256:{}", "ab".repeat(32)), "size": 1, "created_at": "t"});
        let entry: OciEntry = serde_json::from_value(template).unwrap();
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("insert_one", n), &n, |b, _| {
            b.iter(|| {
                i += 1;
                db.update(LockWait::blocking(), &|_| {}, |idx| {
                    idx.images
                        .insert(format!("zz-bench-{i}"), Some(entry.clone()));
                    Ok(())
                })
                .unwrap();
            });
        });
        // The cache's share: read back the committed index, build, fsync and rename.
        let json = scratch.join("oci/db/images.json");
        let bytes = std::fs::read(&json).unwrap();
        let index = serde_json::from_slice(&bytes).unwrap();
        g.bench_with_input(BenchmarkId::new("cache_refresh_only", n), &n, |b, _| {
            b.iter(|| {
                assert!(
                    cache::refresh_after_write::<OciEntry>(Kind::Oci, &json, &bytes, &index)
                        .unwrap()
                );
            });
        });
        let _ = std::fs::remove_dir_all(&scratch);
    }
    g.finish();
}

fn selected(c: &mut Criterion) {
    // `BOOT_PATH_ONLY=write` runs the write cost alone, `=read` the boot path alone.
    match std::env::var("BOOT_PATH_ONLY").as_deref() {
        Ok("write") => write_cost(c),
        Ok("read") => boot_path(c),
        _ => {
            boot_path(c);
            write_cost(c);
        }
    }
}

criterion_group!(benches, selected);
criterion_main!(benches);
