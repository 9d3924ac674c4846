//! ingest staging: pipelined hashing into temp files, checked against one-shot hashing and the
//! `sha256sum`/`b3sum` tools, and every failure leaving the temp dir empty.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::oci_image::pseudo_random;
use imgstore::digest::{Digest, DualHasher};
use imgstore::ingest::{self, Error, Expected};

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn no_progress(_: u64) {}

/// First word of a `*sum` tool's output for `path`.
fn tool_hex(tool: &str, path: &Path) -> String {
    let out = Command::new(tool).arg(path).output().unwrap();
    assert!(out.status.success(), "{tool} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn sums_match_one_shot_and_cli_tools() {
    let src_dir = tempfile::tempdir().unwrap();
    let temp = tempfile::tempdir().unwrap();
    // Not a multiple of the pipeline buffer, so the last chunk is partial.
    let data = pseudo_random((13 << 20) + 12_345, 42);
    let src = src_dir.path().join("image.raw");
    fs::write(&src, &data).unwrap();

    let seen = AtomicU64::new(0);
    let progress = |n: u64| {
        seen.fetch_max(n, Ordering::Relaxed);
    };
    let staged = ingest::stage(
        temp.path(),
        fs::File::open(&src).unwrap(),
        "image.raw",
        &Expected::default(),
        &progress,
    )
    .unwrap();

    let mut one_shot = DualHasher::new();
    one_shot.update(&data);
    assert_eq!(staged.sums, one_shot.finalize());
    assert_eq!(staged.sums.sha256.hex(), tool_hex("sha256sum", &src));
    assert_eq!(staged.sums.blake3.hex(), tool_hex("b3sum", &src));
    assert_eq!(fs::read(staged.temp.path()).unwrap(), data);
    assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64);
    assert!(staged.temp.path().starts_with(temp.path()));

    drop(staged);
    assert!(
        entries(temp.path()).is_empty(),
        "dropped Staged removes its file"
    );
}

/// Whole-MiB inputs are written with direct I/O; the descriptor handed back in `Staged` must
/// still serve ordinary unaligned reads (a format check reading a header through it).
#[test]
fn staged_descriptor_reads_normally() {
    let temp = tempfile::tempdir().unwrap();
    let data = pseudo_random(4 << 20, 21);
    let mut staged = ingest::stage(
        temp.path(),
        &data[..],
        "mem",
        &Expected::default(),
        &no_progress,
    )
    .unwrap();
    let file = staged.temp.file();
    file.seek(SeekFrom::Start(1)).unwrap();
    let mut head = [0u8; 333];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head[..], data[1..334]);
}

#[test]
fn expected_digests_of_each_algorithm_are_accepted() {
    let temp = tempfile::tempdir().unwrap();
    let data = pseudo_random(3 << 20, 9);
    let src = temp.path().join("src");
    fs::write(&src, &data).unwrap();
    let hex512 = tool_hex("sha512sum", &src);
    fs::remove_file(&src).unwrap();
    let sha512 = Digest::parse(&format!("sha512:{hex512}")).unwrap();
    for digest in [Digest::sha256_of(&data), Digest::blake3_of(&data), sha512] {
        let expected = Expected {
            digest: Some(digest),
            size: Some(data.len() as u64),
            max_size: Some(data.len() as u64),
        };
        let staged = ingest::stage(temp.path(), &data[..], "mem", &expected, &no_progress)
            .unwrap_or_else(|e| panic!("{digest}: {e}"));
        assert_eq!(staged.sums.size, data.len() as u64);
    }
    assert!(entries(temp.path()).is_empty());
}

#[test]
fn digest_mismatch_fails_and_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data = pseudo_random(5 << 20, 1);
    let wrong = Digest::sha256_of(b"something else");
    let expected = Expected {
        digest: Some(wrong),
        ..Expected::default()
    };
    let err = ingest::stage(
        temp.path(),
        &data[..],
        "https://example.test/img",
        &expected,
        &no_progress,
    )
    .unwrap_err();
    match err {
        Error::Mismatch {
            expected,
            actual,
            source_name,
        } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::sha256_of(&data));
            assert_eq!(source_name, "https://example.test/img");
        }
        other => panic!("expected Mismatch, got {other:?}"),
    }
    assert!(entries(temp.path()).is_empty());
}

/// Counts what was pulled from the inner reader.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[test]
fn too_large_stops_early_and_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let limit = 3 << 20;
    let mut reader = Counting {
        inner: io::repeat(0xab).take(1 << 30),
        count: 0,
    };
    let expected = Expected {
        max_size: Some(limit),
        ..Expected::default()
    };
    let err =
        ingest::stage(temp.path(), &mut reader, "big.img", &expected, &no_progress).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: l, ref source_name } if l == limit && source_name == "big.img"),
        "{err:?}"
    );
    assert_eq!(reader.count, limit + 1, "reads stop one byte past the cap");
    assert!(entries(temp.path()).is_empty());
}

#[test]
fn wrong_size_fails_and_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data = pseudo_random(2 << 20, 4);
    for (size, stops_at) in [(data.len() as u64 + 10, data.len() as u64), (1000, 1001)] {
        let expected = Expected {
            size: Some(size),
            ..Expected::default()
        };
        let err =
            ingest::stage(temp.path(), &data[..], "layer", &expected, &no_progress).unwrap_err();
        assert!(
            matches!(err, Error::SizeMismatch { expected, actual, .. } if expected == size && actual == stops_at),
            "{err:?}"
        );
        assert!(entries(temp.path()).is_empty());
    }
}

/// Yields `good` bytes, then fails like a dropped connection.
struct Failing {
    good: u64,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.good == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            ));
        }
        let n = buf.len().min(self.good as usize).min(70_000);
        buf[..n].fill(7);
        self.good -= n as u64;
        Ok(n)
    }
}

#[test]
fn read_error_names_the_source_and_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let err = ingest::stage(
        temp.path(),
        Failing { good: 5 << 20 },
        "http://127.0.0.1:1/disk.qcow2",
        &Expected::default(),
        &no_progress,
    )
    .unwrap_err();
    match &err {
        Error::Read {
            source_name,
            source,
        } => {
            assert_eq!(source_name, "http://127.0.0.1:1/disk.qcow2");
            assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
        }
        other => panic!("expected Read, got {other:?}"),
    }
    assert!(err.to_string().contains("http://127.0.0.1:1/disk.qcow2"));
    assert!(entries(temp.path()).is_empty());
}

#[test]
fn panic_in_a_worker_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data = pseudo_random(6 << 20, 8);
    // The progress callback runs on the writing thread: make it panic there mid-stream.
    let progress = |n: u64| assert!(n < 2 << 20, "boom at {n}");
    let result = std::panic::catch_unwind(|| {
        ingest::stage(
            temp.path(),
            &data[..],
            "mem",
            &Expected::default(),
            &progress,
        )
        .is_ok()
    });
    assert!(result.is_err(), "the worker's panic reaches the caller");
    assert!(entries(temp.path()).is_empty());
}

#[test]
fn split_parts_equal_the_concatenation() {
    let src_dir = tempfile::tempdir().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let data = pseudo_random((7 << 20) + 3, 77);
    // Uneven parts, one of them empty, one boundary inside a pipeline buffer.
    let cuts = [0, 1_500_000, 1_500_000, 6_000_001, data.len()];
    let mut parts = Vec::new();
    for (i, w) in cuts.windows(2).enumerate() {
        let p = src_dir.path().join(format!("disk.part{i}"));
        fs::write(&p, &data[w[0]..w[1]]).unwrap();
        parts.push(p);
    }
    let seen = AtomicU64::new(0);
    let progress = |n: u64| {
        seen.fetch_max(n, Ordering::Relaxed);
    };
    let split = ingest::stage_files(temp.path(), &parts, &Expected::default(), &progress).unwrap();
    let whole = ingest::stage(
        temp.path(),
        &data[..],
        "whole",
        &Expected::default(),
        &no_progress,
    )
    .unwrap();
    assert_eq!(split.sums, whole.sums);
    assert_eq!(split.sums.sha256, Digest::sha256_of(&data));
    assert_eq!(fs::read(split.temp.path()).unwrap(), data);
    assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64);

    let missing = vec![parts[0].clone(), src_dir.path().join("nope")];
    let err =
        ingest::stage_files(temp.path(), &missing, &Expected::default(), &no_progress).unwrap_err();
    assert!(
        matches!(err, Error::Io(ref e) if e.path().ends_with("nope")),
        "{err:?}"
    );
    drop((split, whole));
    assert!(entries(temp.path()).is_empty());
}

#[test]
fn empty_input_stages_an_empty_file() {
    let temp = tempfile::tempdir().unwrap();
    let staged = ingest::stage(
        temp.path(),
        io::empty(),
        "empty",
        &Expected::default(),
        &no_progress,
    )
    .unwrap();
    assert_eq!(staged.sums.size, 0);
    assert_eq!(staged.sums.sha256, Digest::sha256_of(b""));
    assert_eq!(staged.sums.blake3, Digest::blake3_of(b""));
    assert_eq!(fs::metadata(staged.temp.path()).unwrap().len(), 0);
}

/// Yields some bytes, then panics (a buggy `Read` impl from an embedder).
struct Panicking {
    good: u64,
}

impl Read for Panicking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(self.good > 0, "reader bug");
        let n = buf.len().min(self.good as usize);
        buf[..n].fill(1);
        self.good -= n as u64;
        Ok(n)
    }
}

#[test]
fn panic_in_the_reader_leaves_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let result = std::panic::catch_unwind(|| {
        ingest::stage(
            temp.path(),
            Panicking { good: 3 << 20 },
            "mem",
            &Expected::default(),
            &no_progress,
        )
        .is_ok()
    });
    assert!(result.is_err(), "the reader's panic reaches the caller");
    assert!(entries(temp.path()).is_empty());
}

/// A file its caller filled out of order (the second half first, as an EROFS writer puts its
/// superblock last or a ranged download lands) is hashed by reading it back: the sums are those
/// of its final bytes. An expected digest it does not have removes it.
#[test]
fn filled_out_of_order_is_hashed_by_reading_it_back() {
    use std::os::unix::fs::FileExt;
    let temp = tempfile::tempdir().unwrap();
    let data = pseudo_random((9 << 20) + 777, 7);
    let half = data.len() / 2;
    let mut file = imgstore::fsutil::TempFile::create_in(temp.path(), "filled").unwrap();
    file.file()
        .write_all_at(&data[half..], half as u64)
        .unwrap();
    file.file().write_all_at(&data[..half], 0).unwrap();
    let staged = ingest::stage_filled(file, "filled", &Expected::default(), &no_progress).unwrap();
    let mut one_shot = DualHasher::new();
    one_shot.update(&data);
    assert_eq!(staged.sums, one_shot.finalize());
    assert_eq!(fs::read(staged.temp.path()).unwrap(), data);
    drop(staged);
    assert!(entries(temp.path()).is_empty());

    let mut file = imgstore::fsutil::TempFile::create_in(temp.path(), "filled").unwrap();
    file.file().write_all_at(&data, 0).unwrap();
    let wrong = Expected {
        digest: Some(Digest::sha256_of(b"something else")),
        ..Expected::default()
    };
    let err = ingest::stage_filled(file, "filled", &wrong, &no_progress).unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err:?}");
    assert!(entries(temp.path()).is_empty());
}

/// Publishing makes the blob read-only; a second publish of other bytes under the same name is
/// refused and changes nothing; the same bytes again reuse the blob. No temp file is left.
#[test]
fn publish_never_replaces_a_blob_with_other_bytes() {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().unwrap();
    let blobs = tempfile::tempdir().unwrap();
    let dest = blobs.path().join("blob.qcow2");
    let stage = |bytes: &[u8]| {
        ingest::stage(
            temp.path(),
            bytes,
            "src",
            &Expected::default(),
            &no_progress,
        )
        .unwrap()
    };
    let first = stage(b"first content");
    let sums = first.sums;
    assert_eq!(ingest::publish(first, &dest).unwrap(), sums);
    assert_eq!(fs::read(&dest).unwrap(), b"first content");
    assert_eq!(
        fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o444
    );

    let err = ingest::publish(stage(b"other content"), &dest).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(fs::read(&dest).unwrap(), b"first content");
    assert_eq!(
        ingest::publish(stage(b"first content"), &dest).unwrap(),
        sums
    );
    assert!(entries(temp.path()).is_empty());
}

/// A layer's boot files are staged as a directory (their sums are those of their bytes) and
/// published with the blob: both end up in place, read-only, and nothing stays in temp.
#[test]
fn layer_boot_files_and_blob_are_published_together() {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let work = imgstore::fsutil::TempDir::create_in(temp.path(), "layer").unwrap();
    let boot = work.path().join("boot");
    fs::create_dir(&boot).unwrap();
    fs::write(boot.join("vmlinuz"), b"kernel bytes").unwrap();
    fs::write(boot.join("initrd.img"), b"initrd bytes").unwrap();
    let staged_boot = ingest::stage_dir(&boot).unwrap();
    assert_eq!(
        staged_boot.files["vmlinuz"].sha256,
        Digest::sha256_of(b"kernel bytes")
    );
    assert_eq!(staged_boot.files["initrd.img"].size, 12);
    let blob = ingest::stage(
        temp.path(),
        &b"erofs"[..],
        "layer",
        &Expected::default(),
        &no_progress,
    )
    .unwrap();
    let dest = store.path().join("blobs/l.erofs");
    let boot_dest = store.path().join("boot-l");
    ingest::publish_layer(blob, &staged_boot, &dest, &boot_dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"erofs");
    assert_eq!(
        fs::read(boot_dest.join("vmlinuz")).unwrap(),
        b"kernel bytes"
    );
    let mode = fs::metadata(boot_dest.join("initrd.img"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    drop(work);
    assert!(entries(temp.path()).is_empty());
}
