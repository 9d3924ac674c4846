//! Reference parsing: imgstore's hand-written parser against the `oci-spec` crate's regex-based
//! parser, on the same mix of typical references in one group, so the result reads as a ratio
//! (DESIGN.md §12: ≤ 200 ns per typical reference, ≥ 10× faster than `oci-spec`).
//!
//! Each iteration parses the whole mix; throughput is per reference, so criterion's
//! "time" divided by [`REFS`]'s length is the cost of one parse.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// What people type and what manifests carry: short official names, tags, other registries,
/// ports, IP hosts and pinned digests.
const REFS: &[&str] = &[
    "ubuntu",
    "ubuntu:22.04",
    "alpine:3.20",
    "library/debian:bookworm-slim",
    "docker.io/library/nginx:1.27",
    "index.docker.io/library/busybox:latest",
    "redis:7-alpine",
    "bitnami/postgresql:16.4.0-debian-12-r0",
    "ghcr.io/owner/repo:v1.2.3",
    "quay.io/coreos/etcd:v3.5.0",
    "gcr.io/distroless/static-debian12:nonroot",
    "registry.k8s.io/pause:3.9",
    "mcr.microsoft.com/dotnet/runtime:8.0",
    "public.ecr.aws/docker/library/python:3.12",
    "localhost:5000/team/app:dev",
    "127.0.0.1:5000/vm/kernel:6.1",
    "10.0.0.1/vm/rootfs",
    "ubuntu@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "ghcr.io/owner/repo:v1@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "registry.example.com:443/a/b/c/d:2024-01-01_build.7",
];

fn parse(c: &mut Criterion) {
    // Both parsers must accept the whole mix, or the comparison measures error paths.
    for r in REFS {
        assert!(imgstore::reference::Reference::parse(r).is_ok(), "{r}");
        assert!(
            r.parse::<oci_spec::distribution::Reference>().is_ok(),
            "{r}"
        );
    }
    let mut g = c.benchmark_group("reference_parse");
    g.throughput(Throughput::Elements(REFS.len() as u64));
    g.bench_function("imgstore", |b| {
        b.iter(|| {
            for r in REFS {
                black_box(imgstore::reference::Reference::parse(black_box(r)).ok());
            }
        });
    });
    g.bench_function("oci_spec", |b| {
        b.iter(|| {
            for r in REFS {
                black_box(
                    black_box(r)
                        .parse::<oci_spec::distribution::Reference>()
                        .ok(),
                );
            }
        });
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
