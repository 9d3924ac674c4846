//! `Store::pull_oci` of one image's content from a real `docker-registry` on 127.0.0.1 into a
//! fresh store root each iteration, in two forms: EROFS-native layers (`imgstore push` of the
//! stored image: download, digest check, in-process EROFS check, no conversion) against the same
//! content as gzip tar layers (the baseline: download, then conversion to EROFS).
//!
//! The image: 4 layers, each 4 MiB of random data plus 200 small text files; boot files in the
//! first. Run: `nice -n 10 cargo bench --bench pull_native`. Needs docker-registry, skopeo and
//! erofs-utils (scripts/deps.sh).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use imgstore::store::{PushOptions, Store, StoreOptions};

#[path = "../tests/it/oci_image.rs"]
mod oci_image;
#[path = "../tests/it/registry_server.rs"]
mod registry_server;

use oci_image::{host_and_other_arch, ImageBuilder, LayerBuilder, OciLayout};
use registry_server::TestRegistry;

const LAYERS: u64 = 4;
const LAYER_MIB: usize = 4;
const SMALL_FILES: usize = 200;

fn pull_native(c: &mut Criterion) {
    let reg = TestRegistry::start();
    let layout_dir = tempfile::tempdir().expect("temp dir for the layout");
    let mut image = ImageBuilder::new(host_and_other_arch().0);
    for n in 0..LAYERS {
        let mut layer = LayerBuilder::new()
            .random_file(&format!("opt/data{n}"), LAYER_MIB << 20, n + 1)
            .dir(&format!("etc/conf{n}"));
        for i in 0..SMALL_FILES {
            layer = layer.file(
                &format!("etc/conf{n}/file{i}.conf"),
                format!("# layer {n} file {i}\nkey{i} = value{i}\n").repeat(8),
            );
        }
        if n == 0 {
            layer = layer
                .file("boot/vmlinuz", "bench kernel\n")
                .file("boot/initrd.img", "bench initrd\n");
        }
        image = image.layer(layer);
    }
    let mut layout = OciLayout::create(layout_dir.path());
    layout.add_image("v1", &image);
    reg.push_oci_layout(layout_dir.path(), "bench/tar", "v1");
    let tar_ref = format!("{}/bench/tar:v1", reg.host());
    let erofs_ref = format!("{}/bench/erofs:v1", reg.host());
    let seed = tempfile::tempdir().expect("temp dir for the pushing store");
    let store = Store::open(seed.path()).expect("open store");
    store.pull_oci(&tar_ref, false).expect("pull the tar image");
    store
        .push(&tar_ref, &erofs_ref, &PushOptions::default())
        .expect("push as EROFS-native");

    let mut g = c.benchmark_group(format!("pull_native/{LAYERS}x{LAYER_MIB}MiB"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (name, reference) in [
        ("EROFS-native layers", &erofs_ref),
        ("baseline: gzip tar layers", &tar_ref),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || tempfile::tempdir().expect("temp dir for a store root"),
                |root| {
                    let store =
                        Store::open_opts(root.path(), StoreOptions::default()).expect("open store");
                    store.pull_oci(reference, true).expect("pull");
                    root
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, pull_native);
criterion_main!(benches);
