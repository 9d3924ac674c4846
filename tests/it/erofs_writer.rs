//! The in-process EROFS writer (`imgstore::erofs`), judged by the Linux kernel: every image is
//! checked by `fsck.erofs --extract`, mounted (`mount -t erofs -o loop,ro`, as root; a failed
//! mount fails the test, a non-root run skips the mount and says so) and compared entry by
//! entry with the tar it came from, and with the crate's own reader.

mod hostile;
pub(crate) mod kit;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgstore::erofs::{self, Options};
use kit::{e, expected, tar_of, E, K};

/// Write `tar` to `dir/name.erofs` and fsck it.
fn build(dir: &Path, name: &str, tar: &[u8], opts: &Options) -> (PathBuf, erofs::Report) {
    let path = dir.join(format!("{name}.erofs"));
    let f = fs::File::create(&path).unwrap();
    let report = erofs::write(tar, f, opts).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), report.blocks * 4096);
    kit::fsck(&path);
    (path, report)
}

/// Build, fsck, mount, and compare with the model of `entries` and with the crate's reader.
fn check(entries: &[E]) -> (tempfile::TempDir, PathBuf) {
    let td = tempfile::tempdir().unwrap();
    let tar = tar_of(entries);
    let (image, _) = build(td.path(), "layer", &tar, &Options::default());
    let listing = erofs::read(&fs::read(&image).unwrap()).unwrap();
    let want = expected(entries);
    if let Some(m) = kit::mount(&image) {
        let got = kit::listing(m.dir.path());
        kit::assert_matches(&got, &want);
        // The reader sees what the kernel sees, inode numbers included.
        for (p, g) in &got {
            let node = &listing[p.as_bytes()];
            assert_eq!(node.nid, g.ino, "{p}: reader nid vs st_ino");
            assert_eq!(node.mode, g.want.mode, "{p}: reader mode");
            assert_eq!(u64::from(node.nlink), g.nlink, "{p}: reader nlink");
        }
        assert_eq!(
            listing.len(),
            got.len() + 1,
            "reader lists root + every path"
        );
    }
    (td, image)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every kind of entry a layer holds, with the metadata a tar can carry.
fn every_kind() -> Vec<E> {
    let long_gnu = format!("deep/{}/gnu-long-name", "g".repeat(120));
    let long_pax = format!("deep/{}/pax-long-name", "p".repeat(150));
    vec![
        e("./", K::Dir).mode(0o755),
        e("etc/", K::Dir),
        e("etc/empty", K::File(Vec::new())),
        e("etc/small", K::File(b"hello\n".to_vec()))
            .mode(0o600)
            .owner(1000, 1001),
        e("etc/block-exact", K::File(pattern(8192, 1))),
        e("etc/multi", K::File(pattern(3 * 4096 + 17, 2))),
        e("etc/big", K::File(pattern(3 << 20, 3))).mtime(1_600_000_000, 123_456_789),
        e("etc/zeros", K::File(vec![0u8; 3 * 4096 + 5])),
        e("usr/bin/suid", K::File(b"#!/bin/sh\n".to_vec())).mode(0o4755),
        e("usr/bin/sgid", K::File(b"x".to_vec()))
            .mode(0o2711)
            .owner(0, 50),
        e("tmp/", K::Dir).mode(0o1777),
        e("usr/bin/sh", K::Symlink("/bin/busybox".into())),
        e("usr/bin/rel", K::Symlink("../../etc/small".into())),
        e("usr/bin/longlink", K::Symlink("t".repeat(3000))),
        e("usr/bin/hard", K::Hard("usr/bin/suid".into())),
        e("usr/bin/hard2", K::Hard("./usr/bin/suid".into())),
        e("dev/", K::Dir),
        e("dev/null", K::Char(1, 3)).mode(0o666),
        e("dev/sda", K::Block(8, 0)).mode(0o660).owner(0, 6),
        e("dev/big", K::Char(0xfff, 0xf_ffff)),
        e("dev/fifo", K::Fifo).mode(0o600),
        e("owners/high", K::File(b"big ids".to_vec())).owner(70_000, 4_000_000_000),
        e("owners/dir", K::Dir).owner(100_000, 100_001).mode(0o700),
        e("xa/cap", K::File(b"ping".to_vec()))
            .xattr(
                "security.capability",
                &[
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            )
            .xattr("user.note", b"hello")
            .xattr("user.empty", b""),
        e("xa/dir", K::Dir)
            .xattr("trusted.custom", b"t")
            .xattr("user.big", &[7u8; 3000]),
        e(".wh.gone", K::File(Vec::new())),
        e("etc/.wh.old", K::File(Vec::new())).owner(5, 6),
        e("opaque/", K::Dir).mode(0o750),
        e("opaque/.wh..wh..opq", K::File(Vec::new())),
        e("opaque/kept", K::File(b"kept".to_vec())),
        e("nested/a/b/c/d/e/f/g/h/i/j/leaf", K::File(b"deep".to_vec())),
        e(&long_gnu, K::File(b"gnu".to_vec())),
        e(&long_pax, K::File(b"pax".to_vec())).pax_path(),
        e("times/negative-ns", K::File(b"t".to_vec())).mtime(1, 999_999_999),
    ]
}

#[test]
fn every_entry_kind_matches_the_tar() {
    check(&every_kind());
}

#[test]
fn forged_overlay_xattrs_are_dropped() {
    let mut entries = every_kind();
    entries.push(e("forged/", K::Dir).xattr("trusted.overlay.opaque", b"y"));
    let tar = tar_of(&entries);
    let td = tempfile::tempdir().unwrap();
    let (image, report) = build(td.path(), "f", &tar, &Options::default());
    assert_eq!(report.skipped_xattrs, 1);
    let l = erofs::read(&fs::read(image).unwrap()).unwrap();
    assert!(l[&b"forged"[..]].xattrs.is_empty());
    assert!(l[&b"opaque"[..]]
        .xattrs
        .contains_key(&b"trusted.overlay.opaque"[..]));
}

#[test]
fn spellings_and_repeated_entries_follow_tar() {
    check(&[
        e("./a", K::Dir).mode(0o700),
        e("a/", K::Dir).mode(0o711).owner(1, 1),
        e("a", K::Dir).mode(0o750),
        e("./a/f", K::File(b"one".to_vec())),
        // A directory entry repeated after its children keeps them and its opaque marker.
        e("keep/", K::Dir),
        e("keep/child", K::File(b"stays".to_vec())),
        e("keep/.wh..wh..opq", K::File(Vec::new())),
        e("keep/", K::Dir).mode(0o700).owner(3, 4),
        e("a/f", K::File(b"two, the later one".to_vec())),
        // A type change: file → directory → symlink, and directory → file (children go).
        e("t", K::File(b"file".to_vec())),
        e("t/", K::Dir),
        e("t/child", K::File(b"c".to_vec())),
        e("t", K::Symlink("elsewhere".into())),
        e("d/x/y", K::File(b"y".to_vec())),
        e("d/x", K::File(b"now a file".to_vec())),
        // A hard link whose first name is later replaced keeps the old inode under the new name.
        e("h1", K::File(b"linked".to_vec())),
        e("h2", K::Hard("h1".into())),
        e("h1", K::File(b"replaced".to_vec())),
        // A link to itself changes nothing.
        e("self", K::File(b"me".to_vec())),
        e("self", K::Hard("self".into())),
    ]);
}

#[test]
fn ten_thousand_files_and_a_directory_spanning_blocks() {
    let mut entries = vec![e("big/", K::Dir)];
    // Names sorting before "." and ".." ('!', '#', '-', '+'), and long ones, spread over blocks.
    for (i, prefix) in ["!", "#", "-", "+", "a", "~", ".x"].iter().enumerate() {
        for j in 0..40 {
            entries.push(e(
                &format!("big/{prefix}{j:03}{}", "n".repeat(j * 5)),
                K::File(pattern(j * 100, (i * 40 + j) as u8)),
            ));
        }
    }
    for i in 0..10_000 {
        entries.push(e(
            &format!("many/d{}/f{i:05}", i % 16),
            K::File(format!("file {i}").into_bytes()),
        ));
    }
    let (_td, image) = check(&entries);
    let l = erofs::read(&fs::read(image).unwrap()).unwrap();
    assert!(l.len() > 10_280);
}

/// GNU tar writes sparse files in every format; each must keep its bytes and stay small.
#[test]
fn sparse_files_in_every_tar_format_stay_small() {
    let td = tempfile::tempdir().unwrap();
    let src = td.path().join("src");
    fs::create_dir(&src).unwrap();
    // 5 GiB with data at 1 MiB, just below 4 GiB, just above it, and at the very end.
    let big = src.join("big.sparse");
    let f = fs::File::create(&big).unwrap();
    f.set_len(5 << 30).unwrap();
    for (off, byte) in [
        (1u64 << 20, 1u8),
        ((4 << 30) - 3, 2),
        ((4 << 30) + 4097, 3),
        ((5 << 30) - 10, 4),
    ] {
        write_at(&f, off, &[byte; 10]);
    }
    drop(f);
    let small = src.join("sub/small.sparse");
    fs::create_dir(src.join("sub")).unwrap();
    let f = fs::File::create(&small).unwrap();
    f.set_len(300 << 20).unwrap();
    write_at(&f, 7, b"start");
    write_at(&f, 200 << 20, &pattern(100_000, 9));
    drop(f);
    let want_big = kit::hash_file(&big);
    let want_small = kit::hash_file(&small);
    for (format, args, files) in [
        ("gnu", &["--format=gnu"][..], &["sub/small.sparse"][..]),
        (
            "pax-0.0",
            &["--format=posix", "--sparse-version=0.0"],
            &["big.sparse", "sub/small.sparse"],
        ),
        (
            "pax-0.1",
            &["--format=posix", "--sparse-version=0.1"],
            &["big.sparse", "sub/small.sparse"],
        ),
        (
            "pax-1.0",
            &["--format=posix", "--sparse-version=1.0"],
            &["big.sparse", "sub/small.sparse"],
        ),
    ] {
        let tar_path = td.path().join(format!("{format}.tar"));
        let out = Command::new("tar")
            .arg("--sparse")
            .args(args)
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tar_path)
            .args(files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tar = fs::File::open(&tar_path).unwrap();
        let image = td.path().join(format!("{format}.erofs"));
        let report = erofs::write(tar, fs::File::create(&image).unwrap(), &Options::default())
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        let size = fs::metadata(&image).unwrap().len();
        assert!(size < 4 << 20, "{format}: a sparse image of {size} bytes");
        assert_eq!(report.files, files.len() as u64);
        kit::fsck(&image);
        let l = erofs::read(&fs::read(&image).unwrap()).unwrap();
        let file = |p: &str| match &l[p.as_bytes()].content {
            erofs::Content::File { size, blake3 } => (*size, *blake3),
            other => panic!("{format}: {p} is {other:?}"),
        };
        assert_eq!(
            file("sub/small.sparse"),
            (300 << 20, want_small),
            "{format}"
        );
        if files.len() == 2 {
            assert_eq!(file("big.sparse"), (5 << 30, want_big), "{format}");
        }
        if let Some(m) = kit::mount(&image) {
            assert_eq!(
                kit::hash_file(&m.dir.path().join("sub/small.sparse")),
                want_small
            );
            if files.len() == 2 {
                let p = m.dir.path().join("big.sparse");
                assert_eq!(fs::metadata(&p).unwrap().len(), 5 << 30);
                assert_eq!(kit::hash_file(&p), want_big, "{format}: 5 GiB sparse file");
            }
        }
    }
}

fn write_at(f: &fs::File, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    f.write_all_at(data, off).unwrap();
}

#[test]
fn same_tar_gives_identical_bytes() {
    let tar = tar_of(&every_kind());
    let td = tempfile::tempdir().unwrap();
    let digest = imgstore::Digest::sha256_of(&tar);
    let opts = Options::for_layer(&digest);
    let (a, _) = build(td.path(), "a", &tar, &opts);
    let (b, _) = build(td.path(), "b", &tar, &opts);
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert!(a == b, "two builds of one tar differ");
    assert_eq!(
        &a[1024 + 48..1024 + 64],
        &digest.as_bytes()[..16],
        "UUID from the digest"
    );
    let mut mem = Cursor::new(Vec::new());
    erofs::write(&tar[..], &mut mem, &opts).unwrap();
    assert!(mem.into_inner() == a, "a Vec and a File get the same bytes");
}

/// Differential: GNU tar extracts the same layer to a directory, `mkfs.erofs` builds an image of
/// it, and both images mount to the same listing (inode numbers and link counts aside).
#[test]
fn mkfs_erofs_of_the_same_tree_mounts_to_the_same_listing() {
    if !kit::is_root() {
        eprintln!("skipping: extracting owners and devices needs root");
        return;
    }
    // Whiteouts are overlay syntax GNU tar does not know; everything else is a plain tree (long
    // names are left out: GNU tar does not restore the mtime 0 of their implied parents).
    let entries: Vec<E> = every_kind()
        .into_iter()
        .filter(|en| !en.path.contains(".wh.") && en.path.len() < 100)
        .collect();

    let td = tempfile::tempdir().unwrap();
    let tar = tar_of(&entries);
    let (mine, _) = build(td.path(), "mine", &tar, &Options::default());
    let tree = td.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let mut child = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(&tree)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(child.wait().unwrap().success());
    // GNU tar gives implied parents the current time; the layer's image says 0.
    let explicit: Vec<String> = entries
        .iter()
        .map(|en| en.path.trim_end_matches('/').to_owned())
        .collect();
    for (p, w) in expected(&entries) {
        if w.what == kit::What::Dir && !explicit.contains(&p) {
            assert!(Command::new("touch")
                .args(["-h", "-d", "@0"])
                .arg(tree.join(p))
                .status()
                .unwrap()
                .success());
        }
    }
    let theirs = td.path().join("theirs.erofs");
    let out = Command::new("mkfs.erofs")
        .args(["--quiet", "--preserve-mtime"])
        .arg(&theirs)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (kit::mount(&mine).unwrap(), kit::mount(&theirs).unwrap());
    let strip = |l: BTreeMap<String, kit::Got>| -> BTreeMap<String, kit::Want> {
        l.into_iter().map(|(k, g)| (k, g.want)).collect()
    };
    let (la, lb) = (
        strip(kit::listing(a.dir.path())),
        strip(kit::listing(b.dir.path())),
    );
    assert_eq!(la.keys().collect::<Vec<_>>(), lb.keys().collect::<Vec<_>>());
    for (p, w) in &la {
        assert_eq!(Some(w), lb.get(p), "{p}: mkfs.erofs's image differs");
    }
}

/// An upper layer that only implies `tmp/` (it adds `tmp/x`) keeps the base layer's 1777 when
/// the writer is told the lower attributes; the merged overlay shows 1777.
#[test]
fn implied_directory_keeps_the_lower_layer_attributes() {
    let td = tempfile::tempdir().unwrap();
    let base = tar_of(&[e("tmp/", K::Dir).mode(0o1777).mtime(1_650_000_000, 0)]);
    let upper = tar_of(&[e("tmp/x", K::File(b"x".to_vec()))]);
    let (base_img, _) = build(td.path(), "base", &base, &Options::default());
    let (plain_img, _) = build(td.path(), "plain", &upper, &Options::default());
    let lower = erofs::read(&fs::read(&base_img).unwrap()).unwrap();
    let tmp = &lower[&b"tmp"[..]];
    let mut opts = Options::default();
    opts.implied_dirs.insert(
        b"tmp".to_vec(),
        erofs::DirAttrs {
            mode: tmp.mode & 0o7777,
            uid: tmp.uid,
            gid: tmp.gid,
            mtime: tmp.mtime,
            mtime_nsec: tmp.mtime_nsec,
            xattrs: tmp.xattrs.clone(),
        },
    );
    let (chained_img, _) = build(td.path(), "chained", &upper, &opts);
    let mode_of = |img: &Path| erofs::read(&fs::read(img).unwrap()).unwrap()[&b"tmp"[..]].mode;
    assert_eq!(
        mode_of(&plain_img) & 0o7777,
        0o755,
        "without the chain: the unpack default"
    );
    assert_eq!(mode_of(&chained_img) & 0o7777, 0o1777);
    let (Some(b), Some(u)) = (kit::mount(&base_img), kit::mount(&chained_img)) else {
        return;
    };
    let merged = tempfile::tempdir().unwrap();
    let lowerdir = format!(
        "lowerdir={}:{}",
        u.dir.path().display(),
        b.dir.path().display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &lowerdir])
        .arg(merged.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = fs::metadata(merged.path().join("tmp"));
    let _ = Command::new("umount").arg(merged.path()).status();
    assert_eq!(md.unwrap().permissions().mode() & 0o7777, 0o1777);
}

/// Flipped bytes in an image make the reader fail cleanly, never panic.
#[test]
fn reader_survives_corrupt_images() {
    let tar = tar_of(&every_kind());
    let mut img = Cursor::new(Vec::new());
    erofs::write(&tar[..], &mut img, &Options::default()).unwrap();
    let img = img.into_inner();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bad = img.clone();
        let at = (x % bad.len() as u64) as usize;
        bad[at] ^= (x >> 32) as u8 | 1;
        let _ = erofs::read(&bad);
    }
}
