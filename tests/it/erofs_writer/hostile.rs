//! Hostile layer tars: each fails with an error naming the entry and the cause.

use std::io::Cursor;

use imgstore::erofs::{self, Error, Options};

use super::kit::{e, tar_of, E, K};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn hostile_tars_fail_with_clear_errors() {
    let cases: Vec<(&str, Vec<E>, &str)> = vec![
        (
            "dotdot",
            vec![e("../x", K::File(b"x".to_vec()))],
            "escapes the layer root",
        ),
        (
            "dotdot-deep",
            vec![e("a/../../x", K::File(b"x".to_vec()))],
            "escapes the layer root",
        ),
        (
            "through-symlink",
            vec![
                e("l", K::Symlink("/etc".into())),
                e("l/passwd", K::File(b"x".to_vec())),
            ],
            "is not a real directory",
        ),
        (
            "under-a-file",
            vec![
                e("f", K::File(b"x".to_vec())),
                e("f/x", K::File(b"x".to_vec())),
            ],
            "is not a real directory",
        ),
        (
            "link-escape",
            vec![e("h", K::Hard("../../etc/passwd".into()))],
            "hard link",
        ),
        (
            "link-missing",
            vec![e("h", K::Hard("nothing".into()))],
            "hard link",
        ),
        (
            "link-to-dir",
            vec![e("d/", K::Dir), e("h", K::Hard("d".into()))],
            "hard link",
        ),
        (
            "link-through-symlink",
            vec![
                e("real/f", K::File(b"x".to_vec())),
                e("l", K::Symlink("real".into())),
                e("h", K::Hard("l/f".into())),
            ],
            "hard link",
        ),
        (
            "whiteout-dotdot",
            vec![e("a/.wh..", K::File(Vec::new()))],
            "escapes",
        ),
        (
            "root-as-file",
            vec![e("./", K::File(b"x".to_vec()))],
            "escapes",
        ),
        (
            "name-too-long",
            vec![e(&format!("d/{}", "n".repeat(256)), K::File(Vec::new()))],
            "255 bytes",
        ),
    ];
    for (name, entries, needle) in cases {
        let tar = tar_of(&entries);
        let err = erofs::write(&tar[..], Cursor::new(Vec::new()), &Options::default())
            .expect_err(name)
            .to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
}

#[test]
fn hostile_streams_fail_with_clear_errors() {
    // Truncated streams: inside a file's data, inside a header.
    let tar = tar_of(&[e("f", K::File(pattern(10_000, 1)))]);
    for cut in [700, 300] {
        let err =
            erofs::write(&tar[..cut], Cursor::new(Vec::new()), &Options::default()).unwrap_err();
        assert!(
            matches!(err, Error::TarEntry { .. } | Error::Tar { .. }),
            "{err}"
        );
    }
    // A PAX header claiming an enormous size on a short stream fails without allocating it.
    let mut huge = tar_of(&[e("x", K::File(Vec::new()))]);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(1 << 40);
    h.set_path("pax").unwrap();
    h.set_cksum();
    huge.truncate(0);
    huge.extend_from_slice(h.as_bytes());
    huge.extend_from_slice(&[b'9'; 4096]);
    assert!(erofs::write(&huge[..], Cursor::new(Vec::new()), &Options::default()).is_err());
    // A sparse map listing more data than the entry holds.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("GNU.sparse.size", &b"100"[..]),
        ("GNU.sparse.map", b"0,50"),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(10);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_path("s").unwrap();
    h.set_cksum();
    b.append(&h, &[1u8; 10][..]).unwrap();
    let err = erofs::write(
        &b.into_inner().unwrap()[..],
        Cursor::new(Vec::new()),
        &Options::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Sparse { .. }), "{err}");
}

/// A sparse file claiming 2^64 − 1 bytes is refused up front instead of buffering a giant chunk.
#[test]
fn absurd_sparse_sizes_are_refused() {
    let mut b = tar::Builder::new(Vec::new());
    let size = u64::MAX.to_string();
    b.append_pax_extensions([
        ("GNU.sparse.size", size.as_bytes()),
        ("GNU.sparse.map", b"0,1"),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_path("s").unwrap();
    h.set_cksum();
    b.append(&h, &[1u8][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let err = erofs::write(&tar[..], Cursor::new(Vec::new()), &Options::default()).unwrap_err();
    assert!(err.to_string().contains("16 TiB"), "{err}");
}
