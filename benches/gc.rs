//! gc scan + sweep of N orphan blobs against `find blobs -name '*.qcow2' -delete` on an
//! identical tree (DESIGN.md §12: ≤ 1.5 × find at 100,000 blobs), and rayon's default pool
//! against one thread. Trees live on disk under the target dir (not tmpfs); building them is not
//! timed. N is `IMGSTORE_GC_BENCH_BLOBS` (default 20,000 to keep a run short on a busy machine;
//! `benches/gc_compare.sh` runs 100,000 through the CLI).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use imgstore::gc::{self, GcOptions};
use imgstore::Layout;
use rayon::prelude::*;

fn blob_count() -> usize {
    std::env::var("IMGSTORE_GC_BENCH_BLOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// `<target>/tmp/gc-bench`: the bench binary is `<target>/<profile>/deps/gc-<hash>`.
fn work_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("bench binary lives under <target>/<profile>/deps");
    target.join("tmp").join("gc-bench")
}

/// A store root holding `n` empty orphan blobs `<64 hex>.qcow2` and nothing else.
fn build_tree(n: usize) -> tempfile::TempDir {
    let base = work_dir();
    std::fs::create_dir_all(&base).expect("creating bench dir");
    let root = tempfile::tempdir_in(&base).expect("creating bench root");
    let blobs = root.path().join("cloudimg").join("blobs");
    std::fs::create_dir_all(&blobs).expect("creating blobs/");
    (0..n).into_par_iter().for_each(|i| {
        File::create(blobs.join(format!("{i:064x}.qcow2"))).expect("creating blob");
    });
    root
}

fn opts() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    }
}

/// Time `f` over a fresh tree per iteration.
fn timed(n: usize, iters: u64, f: impl Fn(&Path)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let root = build_tree(n);
        let start = Instant::now();
        f(root.path());
        total += start.elapsed();
        assert!(
            std::fs::read_dir(root.path().join("cloudimg/blobs"))
                .expect("listing blobs/")
                .next()
                .is_none(),
            "every orphan was deleted"
        );
    }
    total
}

fn collect(root: &Path) {
    let r = gc::collect(&Layout::new(root), &opts(), &[]).expect("gc");
    std::hint::black_box(r);
}

fn find_delete(root: &Path) {
    let status = Command::new("find")
        .arg(root.join("cloudimg/blobs"))
        .args(["-name", "*.qcow2", "-delete"])
        .status()
        .expect("running find");
    assert!(status.success());
}

fn bench(c: &mut Criterion) {
    let n = blob_count();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");
    let mut g = c.benchmark_group(format!("gc_{n}_orphans"));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("find_delete", |b| {
        b.iter_custom(|iters| timed(n, iters, find_delete));
    });
    g.bench_function("gc_collect", |b| {
        b.iter_custom(|iters| timed(n, iters, collect));
    });
    g.bench_function("gc_collect_1_thread", |b| {
        b.iter_custom(|iters| timed(n, iters, |root| one.install(|| collect(root))));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
