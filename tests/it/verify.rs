//! verify: hashing real files through the mmap and read paths, and what verify reports.

use std::fs;
use std::path::Path;

use crate::oci_image::pseudo_random;
use imgstore::digest::{Algorithm, Digest};
use imgstore::verify::{self, Check, Outcome};

fn check(path: &Path, size: Option<u64>, expected: Option<Digest>) -> Check {
    Check {
        path: path.to_path_buf(),
        expected_size: size,
        expected,
    }
}

#[test]
fn good_files_verify_with_both_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    // Below the mmap threshold, and well above it.
    for (name, len) in [("small", 100_000usize), ("large", 9 << 20)] {
        let data = pseudo_random(len, len as u64);
        let p = dir.path().join(name);
        fs::write(&p, &data).unwrap();
        for expected in [Digest::sha256_of(&data), Digest::blake3_of(&data)] {
            let got = verify::hash_file(&p, expected.algorithm()).unwrap();
            assert_eq!(got, (expected, len as u64), "{name} {expected}");
            let outcome = verify::verify_one(&check(&p, Some(len as u64), Some(expected))).unwrap();
            assert_eq!(outcome, Outcome::Ok, "{name} {expected}");
        }
        let sums = verify::sums_of_file(&p).unwrap();
        assert_eq!(sums.sha256, Digest::sha256_of(&data));
        assert_eq!(sums.blake3, Digest::blake3_of(&data));
        assert_eq!(sums.size, len as u64);
    }
}

#[test]
fn sha512_is_supported() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(3 << 20, 5);
    let p = dir.path().join("f");
    fs::write(&p, &data).unwrap();
    let out = std::process::Command::new("sha512sum")
        .arg(&p)
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    let expected = Digest::parse(&format!("sha512:{}", &hex[..128])).unwrap();
    assert_eq!(
        verify::hash_file(&p, Algorithm::Sha512).unwrap(),
        (expected, data.len() as u64)
    );
}

#[test]
fn flipped_byte_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    for len in [50_000usize, 9 << 20] {
        let mut data = pseudo_random(len, 7);
        let good = [Digest::sha256_of(&data), Digest::blake3_of(&data)];
        data[len / 2] ^= 0x01;
        let p = dir.path().join(format!("f{len}"));
        fs::write(&p, &data).unwrap();
        for expected in good {
            let outcome = verify::verify_one(&check(&p, Some(len as u64), Some(expected))).unwrap();
            let actual = if expected.algorithm() == Algorithm::Sha256 {
                Digest::sha256_of(&data)
            } else {
                Digest::blake3_of(&data)
            };
            assert_eq!(outcome, Outcome::Corrupt { expected, actual });
        }
    }
}

#[test]
fn wrong_size_is_reported_before_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(10_000, 3);
    let p = dir.path().join("f");
    fs::write(&p, &data[..6_000]).unwrap();
    let outcome =
        verify::verify_one(&check(&p, Some(10_000), Some(Digest::sha256_of(&data)))).unwrap();
    assert_eq!(
        outcome,
        Outcome::Truncated {
            expected: 10_000,
            actual: 6_000
        }
    );
    // A directory cannot be hashed (reading it fails), so getting Truncated for one proves the
    // size was compared first and no byte was read.
    let sub = dir.path().join("d");
    fs::create_dir(&sub).unwrap();
    let dir_len = fs::metadata(&sub).unwrap().len();
    let outcome = verify::verify_one(&check(
        &sub,
        Some(dir_len + 1),
        Some(Digest::sha256_of(&data)),
    ))
    .unwrap();
    assert_eq!(
        outcome,
        Outcome::Truncated {
            expected: dir_len + 1,
            actual: dir_len
        }
    );
    // ...and with the right size it is hashed, and fails.
    assert!(
        verify::verify_one(&check(&sub, Some(dir_len), Some(Digest::sha256_of(&data)))).is_err()
    );
}

#[test]
fn missing_and_unverifiable() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    let d = Digest::sha256_of(b"x");
    assert_eq!(
        verify::verify_one(&check(&gone, Some(1), Some(d))).unwrap(),
        Outcome::Missing
    );
    assert_eq!(
        verify::verify_one(&check(&gone, None, None)).unwrap(),
        Outcome::Missing
    );
    let p = dir.path().join("old");
    fs::write(&p, b"legacy blob").unwrap();
    assert_eq!(
        verify::verify_one(&check(&p, Some(11), None)).unwrap(),
        Outcome::Unverifiable
    );
    assert_eq!(
        verify::verify_one(&check(&p, None, None)).unwrap(),
        Outcome::Unverifiable
    );
    // Without a digest, the size is still checked.
    assert_eq!(
        verify::verify_one(&check(&p, Some(12), None)).unwrap(),
        Outcome::Truncated {
            expected: 12,
            actual: 11
        }
    );
    assert!(matches!(
        verify::hash_file(&gone, Algorithm::Sha256),
        Err(verify::Error::Io(ref e)) if e.path() == gone
    ));
}

#[test]
fn verify_all_keeps_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut checks = Vec::new();
    let mut want = Vec::new();
    for i in 0..24u64 {
        let len = if i % 5 == 0 {
            2 << 20
        } else {
            1000 + i as usize * 37
        };
        let data = pseudo_random(len, i + 11);
        let p = dir.path().join(format!("b{i}"));
        let algo_digest = if i % 2 == 0 {
            Digest::sha256_of(&data)
        } else {
            Digest::blake3_of(&data)
        };
        match i % 4 {
            0 => {
                fs::write(&p, &data).unwrap();
                want.push(Outcome::Ok);
                checks.push(check(&p, Some(len as u64), Some(algo_digest)));
            }
            1 => {
                want.push(Outcome::Missing);
                checks.push(check(&p, Some(len as u64), Some(algo_digest)));
            }
            2 => {
                fs::write(&p, &data).unwrap();
                want.push(Outcome::Unverifiable);
                checks.push(check(&p, Some(len as u64), None));
            }
            _ => {
                fs::write(&p, &data[..len - 1]).unwrap();
                want.push(Outcome::Truncated {
                    expected: len as u64,
                    actual: len as u64 - 1,
                });
                checks.push(check(&p, Some(len as u64), Some(algo_digest)));
            }
        }
    }
    let got: Vec<Outcome> = verify::verify_all(&checks)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, want);
}

/// Something that cannot be mapped (a pipe, reported with size 0) is hashed with plain reads.
#[test]
fn unmappable_input_falls_back_to_reads() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let data = pseudo_random(3 << 20, 99);
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || fs::write(fifo, data).unwrap())
    };
    let got = verify::hash_file(&fifo, Algorithm::Blake3).unwrap();
    writer.join().unwrap();
    assert_eq!(got, (Digest::blake3_of(&data), data.len() as u64));
}
