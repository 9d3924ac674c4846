//! Where a fresh `Store::open` + `config` spends its time, step by step, in one process: opening
//! one backend's cache, opening it and resolving a name, the same plus keys and entry, a lookup
//! in a kept cache, `config` on a kept `Store`, and `Store::open` + `config`. Each figure is the
//! best mean over 30 batches of 100 (robust to a loaded machine). Usage:
//! `boot_path_steps ROOT NAME` with a root from `examples/boot_path_root`; with a third argument
//! N it only runs N fresh `Store::open` + `config` (for `perf record` and `strace`).

use std::time::{Duration, Instant};

use imgstore::index::cache::Cache;
use imgstore::index::OciEntry;
use imgstore::{Kind, Store};

fn best(label: &str, mut f: impl FnMut()) {
    let mut best = Duration::MAX;
    for _ in 0..30 {
        let t = Instant::now();
        for _ in 0..100 {
            f();
        }
        best = best.min(t.elapsed() / 100);
    }
    println!("{label}: {best:?}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, name) = match args.as_slice() {
        [root, name] => (root, name),
        [root, name, n] => {
            // `ROOT NAME N`: only N fresh `Store::open` + `config`, for `perf` and `strace`.
            let n: usize = n.parse().expect("N: a number");
            for _ in 0..n {
                let s = Store::open(root).expect("opens");
                std::hint::black_box(s.config(&[name.as_str()]).expect("config"));
            }
            return;
        }
        _ => {
            eprintln!("usage: boot_path_steps ROOT NAME [N]");
            std::process::exit(2);
        }
    };
    let root = std::path::PathBuf::from(root);
    let db = root.join("oci/db");
    let (json, idx) = (db.join("images.json"), db.join("images.idx"));
    let open = || {
        Cache::open(Kind::Oci, &json, &idx, &db)
            .expect("a fresh cache")
            .expect("an index")
    };
    best("open the oci cache", || {
        std::hint::black_box(open());
    });
    best("open + resolve the name", || {
        std::hint::black_box(open().by_key(name).expect("resolves"));
    });
    best("open + resolve + keys + entry", || {
        let c = open();
        let i = c.by_key(name).expect("resolves").expect("found");
        std::hint::black_box((
            c.keys(i).expect("keys"),
            c.entry::<OciEntry>(i).expect("entry"),
        ));
    });
    let kept = open();
    best("kept cache: resolve + keys + entry", || {
        let i = kept.by_key(name).expect("resolves").expect("found");
        std::hint::black_box((
            kept.keys(i).expect("keys"),
            kept.entry::<OciEntry>(i).expect("entry"),
        ));
    });
    let store = Store::open(&root).expect("opens");
    best("kept Store: config", || {
        std::hint::black_box(store.config(&[name.as_str()]).expect("config"));
    });
    best("Store::open + config", || {
        let s = Store::open(&root).expect("opens");
        std::hint::black_box(s.config(&[name.as_str()]).expect("config"));
    });
}
