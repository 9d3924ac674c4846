//! Digest-prefix lookup against a linear scan over the same items (DESIGN.md §12: ≤ 500 ns
//! median at 1,000,000 images).
//!
//! Each query is a 12-hex prefix of an existing ID, resolved through the full
//! [`Lookup::resolve`] path (key map miss, digest parse, prefix table). The baseline parses the
//! same prefix and filters every item.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use imgstore::lookup::{Item, Lookup};
use imgstore::{Digest, Kind, Prefix};

/// Deterministic pseudo-random bytes (splitmix64), so every run sees the same IDs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn id(&mut self) -> Digest {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        Digest::sha256(bytes)
    }
}

fn items(n: usize, rng: &mut Rng) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            kind: if i % 4 == 0 {
                Kind::CloudImg
            } else {
                Kind::Oci
            },
            key: format!("registry.example.com/team/img-{i}:v1"),
            canonical: Some(format!("registry.example.com/team/img-{i}:v1")),
            id: rng.id(),
        })
        .collect()
}

fn prefix_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup_prefix12");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let mut rng = Rng(42);
    for n in [10_000, 100_000, 1_000_000] {
        let lookup = Lookup::build(items(n, &mut rng));
        // Queries in random order over the whole table, so the cache sees a realistic spread.
        let queries: Vec<String> = (0..4096)
            .map(|_| {
                let i = (rng.next() % n as u64) as usize;
                lookup.items()[i].id.hex()[..12].to_owned()
            })
            .collect();
        let mut q = queries.iter().cycle();
        group.bench_function(BenchmarkId::new("resolve", n), |b| {
            b.iter(|| {
                let query = q.next().expect("cycle never ends");
                let m = lookup
                    .resolve(black_box(query), None)
                    .expect("unique prefix");
                black_box(m.id)
            });
        });
        let mut q = queries.iter().cycle();
        group.bench_function(BenchmarkId::new("linear_scan", n), |b| {
            b.iter(|| {
                let query = q.next().expect("cycle never ends");
                let prefix = Prefix::parse(black_box(query)).expect("valid prefix");
                let hits: Vec<&Item> = lookup
                    .items()
                    .iter()
                    .filter(|item| prefix.matches(&item.id))
                    .collect();
                black_box(hits.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, prefix_lookup);
criterion_main!(benches);
