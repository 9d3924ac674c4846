//! `Store::pull_oci` of a 4-layer image (4 MiB of random data per layer) from a real
//! `docker-registry` on 127.0.0.1 into a fresh store root each iteration: layers fetched and
//! converted concurrently (the default, 3 at a time) against one at a time (the baseline).
//!
//! Run: `cargo bench --bench pull`. Needs docker-registry, skopeo and erofs-utils (scripts/deps.sh).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use imgstore::store::{Store, StoreOptions};

#[path = "../tests/it/oci_image.rs"]
mod oci_image;
#[path = "../tests/it/registry_server.rs"]
mod registry_server;

use oci_image::{host_and_other_arch, ImageBuilder, LayerBuilder, OciLayout};
use registry_server::TestRegistry;

const LAYERS: u64 = 4;
const LAYER_MIB: usize = 4;

fn pull(c: &mut Criterion) {
    let reg = TestRegistry::start();
    let layout_dir = tempfile::tempdir().expect("temp dir for the layout");
    let mut image = ImageBuilder::new(host_and_other_arch().0);
    for n in 0..LAYERS {
        let mut layer =
            LayerBuilder::new().random_file(&format!("opt/data{n}"), LAYER_MIB << 20, n + 1);
        if n == 0 {
            layer = layer
                .file("boot/vmlinuz", "bench kernel\n")
                .file("boot/initrd.img", "bench initrd\n");
        }
        image = image.layer(layer);
    }
    let mut layout = OciLayout::create(layout_dir.path());
    layout.add_image("v1", &image);
    reg.push_oci_layout(layout_dir.path(), "bench/pull", "v1");
    let reference = format!("{}/bench/pull:v1", reg.host());

    let mut g = c.benchmark_group(format!("pull_oci/{LAYERS}x{LAYER_MIB}MiB"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (name, jobs) in [
        (
            "default (3 layers at a time)",
            StoreOptions::default().layer_jobs,
        ),
        ("baseline: sequential layers", 1),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || tempfile::tempdir().expect("temp dir for a store root"),
                |root| {
                    let store = Store::open_opts(
                        root.path(),
                        StoreOptions {
                            layer_jobs: jobs,
                            ..StoreOptions::default()
                        },
                    )
                    .expect("open store");
                    store.pull_oci(&reference, true).expect("pull");
                    // Returned so the root is removed outside the timed part.
                    root
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, pull);
criterion_main!(benches);
