//! verify: the crate's file hashing against the bare hash crates on the same memory map, and
//! many-blob sha256 in parallel against one thread.
//!
//! Files live under the target dir (not /tmp, which may be tmpfs) and are created once, then
//! reused by later runs. Run: `cargo bench --bench verify`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use imgstore::digest::Algorithm;
use imgstore::verify::{self, Check, Outcome};
use sha2::Digest as _;

const MIB: u64 = 1 << 20;

fn bench_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-verify");
    std::fs::create_dir_all(&dir).expect("creating bench dir");
    dir
}

/// A file of `len` pseudo-random bytes at `path`, reused if it already has that size. Made
/// read-only (0444), as published blobs are: only those are ever mapped.
fn data_file(path: &Path, len: u64, seed: u64) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == len) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
            .expect("making bench file read-only");
        return path.to_path_buf();
    }
    // A file from an earlier run of another size: make it writable again to replace it.
    let _ = std::fs::remove_file(path);
    let mut x = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    let mut f = File::create(path).expect("creating bench file");
    for _ in 0..len / MIB {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).expect("writing bench file");
    }
    f.sync_all().expect("syncing bench file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .expect("making bench file read-only");
    path.to_path_buf()
}

/// The baseline's map: the same thing the crate does, written out plainly.
#[allow(unsafe_code)]
fn map(path: &Path) -> memmap2::Mmap {
    let f = File::open(path).expect("opening bench file");
    // SAFETY: the bench file is created above and not modified while the map is alive.
    unsafe { memmap2::Mmap::map(&f) }.expect("mapping bench file")
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, bytes: u64) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(bytes));
}

fn one_big_file(c: &mut Criterion) {
    let path = data_file(&bench_dir().join("1g.bin"), 1024 * MIB, 1);

    let mut g = c.benchmark_group("blake3 1GiB");
    configure(&mut g, 1024 * MIB);
    g.bench_function("verify::hash_file", |b| {
        b.iter(|| verify::hash_file(&path, Algorithm::Blake3).expect("hashing"));
    });
    g.bench_function("bare blake3 update_rayon on mmap", |b| {
        b.iter(|| {
            let m = map(&path);
            *blake3::Hasher::new().update_rayon(&m).finalize().as_bytes()
        });
    });
    g.finish();

    let mut g = c.benchmark_group("sha256 1GiB");
    configure(&mut g, 1024 * MIB);
    g.bench_function("verify::hash_file", |b| {
        b.iter(|| verify::hash_file(&path, Algorithm::Sha256).expect("hashing"));
    });
    g.bench_function("bare sha2 on mmap", |b| {
        b.iter(|| {
            let m = map(&path);
            sha2::Sha256::digest(&m[..])
        });
    });
    g.finish();
}

fn many_files(c: &mut Criterion) {
    let dir = bench_dir();
    let checks: Vec<Check> = (0..8u64)
        .map(|i| {
            let path = data_file(&dir.join(format!("64m-{i}.bin")), 64 * MIB, 100 + i);
            let (digest, size) = verify::hash_file(&path, Algorithm::Sha256).expect("hashing");
            Check {
                path,
                expected_size: Some(size),
                expected: Some(digest),
            }
        })
        .collect();
    let all_ok = |r: Vec<Result<Outcome, verify::Error>>| {
        assert!(r.iter().all(|o| matches!(o, Ok(Outcome::Ok))));
    };

    let mut g = c.benchmark_group("sha256 8x64MiB");
    configure(&mut g, 8 * 64 * MIB);
    g.bench_function("verify_all (parallel)", |b| {
        b.iter(|| all_ok(verify::verify_all(&checks)));
    });
    g.bench_function("verify_one loop (one thread)", |b| {
        b.iter(|| all_ok(checks.iter().map(verify::verify_one).collect()));
    });
    g.finish();
}

criterion_group!(benches, one_big_file, many_files);
criterion_main!(benches);
