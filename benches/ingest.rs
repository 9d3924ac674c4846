//! ingest: `stage()` of a 1 GiB file (sha256 + blake3 + copy + fsync, pipelined) against its two
//! halves alone: sha256 over the same file, and a plain copy + fsync. DESIGN.md §12 wants stage
//! within 1.15× of the slower half.
//!
//! The source lives under the target dir (not /tmp, which may be tmpfs) and is reused by later
//! runs. Only the work is timed; deleting each iteration's output is not. Run:
//! `cargo bench --bench ingest`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use imgstore::ingest::{self, Expected};
use sha2::Digest as _;

const MIB: u64 = 1 << 20;
const LEN: u64 = 1024 * MIB;

fn source(dir: &Path) -> PathBuf {
    let path = dir.join("src-1g.bin");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == LEN) {
        return path;
    }
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block = vec![0u8; MIB as usize];
    let mut f = File::create(&path).expect("creating bench source");
    for _ in 0..LEN / MIB {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).expect("writing bench source");
    }
    f.sync_all().expect("syncing bench source");
    path
}

fn ingest_1g(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-ingest");
    let temp = dir.join("temp");
    std::fs::create_dir_all(&temp).expect("creating bench dirs");
    let src = source(&dir);

    let mut g = c.benchmark_group("ingest 1GiB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(LEN));

    g.bench_function("stage (sha256+blake3+copy+fsync)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let input = File::open(&src).expect("opening source");
                let start = Instant::now();
                let staged = ingest::stage(&temp, input, "bench", &Expected::default(), &|_| {})
                    .expect("staging");
                total += start.elapsed();
                drop(staged);
            }
            total
        });
    });
    g.bench_function("sha256 alone (read loop)", |b| {
        b.iter_custom(|iters| {
            let mut buf = vec![0u8; MIB as usize];
            let start = Instant::now();
            for _ in 0..iters {
                let mut input = File::open(&src).expect("opening source");
                let mut h = sha2::Sha256::new();
                loop {
                    let n = input.read(&mut buf).expect("reading source");
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                std::hint::black_box(h.finalize());
            }
            start.elapsed()
        });
    });
    g.bench_function("copy+fsync alone", |b| {
        b.iter_custom(|iters| {
            let out = temp.join("copy.bin");
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut input = File::open(&src).expect("opening source");
                let start = Instant::now();
                let mut copy = File::create(&out).expect("creating copy");
                std::io::copy(&mut input, &mut copy).expect("copying");
                copy.sync_all().expect("syncing copy");
                total += start.elapsed();
                drop(copy);
                std::fs::remove_file(&out).expect("removing copy");
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, ingest_1g);
criterion_main!(benches);
