//! The fuzz targets' committed seed corpora, run as ordinary tests so CI needs no nightly.

use std::path::PathBuf;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn digest_seeds() {
    for (_, data) in seeds("digest") {
        if let Ok(s) = std::str::from_utf8(&data) {
            imgstore::digest::fuzz_check(s);
        }
    }
}

#[test]
fn reference_seeds() {
    for (path, data) in seeds("reference") {
        let s = std::str::from_utf8(&data)
            .unwrap_or_else(|e| panic!("{}: seeds are UTF-8: {e}", path.display()));
        imgstore::reference::fuzz_check(s);
    }
}

#[test]
fn lookup_seeds() {
    for (_, data) in seeds("lookup") {
        imgstore::lookup::fuzz_check(&data);
    }
}

/// The seeds of the retired `unpack` target (hostile and odd layer tars) feed the writer too.
#[test]
fn unpack_seeds() {
    for (_, data) in seeds("unpack") {
        imgstore::erofs::fuzz_check(&data);
    }
}

#[test]
fn erofs_writer_seeds() {
    for (_, data) in seeds("erofs_writer") {
        imgstore::erofs::fuzz_check(&data);
    }
}

#[test]
fn index_seeds() {
    for (_, data) in seeds("index") {
        crate::index_fuzz_model::check(&data);
    }
}

#[test]
fn cache_seeds() {
    for (_, data) in seeds("cache") {
        crate::cache_fuzz_model::check(&data);
    }
}
