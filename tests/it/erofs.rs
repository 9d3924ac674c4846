//! Layer blob → EROFS by the product's converter (`backend::oci::layer`: in-process writer,
//! boot files copied out of the image), checked with the real erofs-utils: whiteouts, boot
//! files, reproducibility, hostile layers. `fsck.erofs --extract` restores owners and device
//! nodes only as root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use imgstore::backend::oci::boot::BootFiles;
use imgstore::backend::oci::layer::{self, convert_layer, Compression, Error, LayerReport};
use imgstore::erofs::Error as WriteError;
use imgstore::Digest;
use tar::{EntryType, Header};

/// A layer tar written entry by entry. Names go into the header bytes verbatim, so hostile
/// paths (`../x`, `/etc/foo`) that the tar crate's own setters refuse can be written.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    #[allow(clippy::too_many_arguments)]
    fn raw(
        &mut self,
        name: &str,
        kind: EntryType,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
        owner: (u64, u64),
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_700_000_000);
        if matches!(kind, EntryType::Block | EntryType::Char) {
            h.set_device_major(8).unwrap();
            h.set_device_minor(1).unwrap();
        }
        let old = h.as_old_mut();
        assert!(name.len() < old.name.len());
        old.name.fill(0);
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            h.set_link_name_literal(link).unwrap();
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(name, EntryType::Directory, None, b"", mode, (0, 0))
    }

    fn file(&mut self, name: &str, data: &[u8], mode: u32, owner: (u64, u64)) -> &mut Self {
        self.raw(name, EntryType::Regular, None, data, mode, owner)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Symlink, Some(target), b"", 0o777, (0, 0))
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Link, Some(target), b"", 0o644, (0, 0))
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

const KERNEL: &[u8] = b"kernel 6.1 bytes";
const INITRD: &[u8] = b"initrd 6.1 bytes";

/// The main test layer: modes, owners, links, boot files, whiteouts, an opaque dir, xattrs.
fn sample_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/hostname", b"box\n", 0o644, (0, 0))
        .file("etc/secret", b"s3cret", 0o640, (1000, 1001))
        .dir("usr/", 0o755)
        .dir("usr/bin/", 0o755)
        .file("usr/bin/suid", b"#!/bin/sh\n", 0o4755, (0, 0))
        .symlink("usr/bin/sh", "/bin/busybox")
        .hardlink("usr/bin/hard", "usr/bin/suid")
        .dir("boot/", 0o755)
        .file("boot/vmlinuz-6.1", KERNEL, 0o600, (0, 0))
        .file("boot/initrd.img-6.1", INITRD, 0o600, (0, 0))
        .file("boot/vmlinuz.old", b"old kernel", 0o600, (0, 0))
        .file("boot/vmlinuz-6.1.old", b"old kernel", 0o600, (0, 0))
        .file(".wh.gone", b"", 0o644, (0, 0))
        .dir("opaque/", 0o750)
        .file("opaque/.wh..wh..opq", b"", 0o644, (0, 0))
        .file("opaque/kept", b"kept", 0o644, (0, 0))
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir("forged/", 0o755)
        .pax(&[("SCHILY.xattr.user.note", b"hello")])
        .file("noted", b"with xattr", 0o644, (0, 0));
    l.finish()
}

struct Env {
    _td: tempfile::TempDir,
    work: PathBuf,
    out: PathBuf,
    boot: PathBuf,
    root: PathBuf,
}

fn env() -> Env {
    let td = tempfile::tempdir().unwrap();
    let root = td.path().to_path_buf();
    let work = root.join("temp");
    fs::create_dir(&work).unwrap();
    Env {
        out: work.join("layer.erofs"),
        boot: root.join("boot"),
        work,
        root,
        _td: td,
    }
}

fn write_layer(env: &Env, bytes: &[u8]) -> (PathBuf, Digest) {
    let path = env.root.join("layer.tar");
    fs::write(&path, bytes).unwrap();
    (path, Digest::sha256_of(bytes))
}

/// `fsck.erofs --extract` of `image` into `into` (erofs-utils 1.5 restores no xattrs).
pub(crate) fn extract(image: &Path, into: &Path) {
    let out = Command::new("fsck.erofs")
        .arg(format!("--extract={}", into.display()))
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dump(image: &Path, path: &str) -> String {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The "Xattr size: N" field of `dump.erofs --path`.
pub(crate) fn xattr_size(image: &Path, path: &str) -> u64 {
    field(&dump(image, path), "Xattr size:")
}

/// A field after `label` in dump.erofs output, as a number.
fn field(text: &str, label: &str) -> u64 {
    let rest = text.split(label).nth(1).expect(text);
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// The full on-disk `i_mode` of `path`, read from the image: its inode sits at
/// metadata start block * 4096 + NID * 32 (EROFS inode slots are 32 bytes; `i_mode` is the third
/// little-endian u16 of both inode formats).
fn raw_mode(image: &Path, path: &str) -> u32 {
    let nid = field(&dump(image, path), "NID:");
    let out = Command::new("dump.erofs")
        .arg("-s")
        .arg(image)
        .output()
        .unwrap();
    let sb = String::from_utf8(out.stdout).unwrap();
    let meta = field(&sb, "Filesystem inode metadata start block:");
    let bytes = fs::read(image).unwrap();
    let off = usize::try_from(meta * 4096 + nid * 32).unwrap();
    u32::from(u16::from_le_bytes([bytes[off + 4], bytes[off + 5]]))
}

/// Work dir empty again: the scratch unpack dir is gone.
fn assert_work_clean(env: &Env, keep: &[&Path]) {
    let left: Vec<_> = fs::read_dir(&env.work)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !keep.contains(&p.as_path()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn check_sample_image(env: &Env, report: &LayerReport) {
    assert_eq!(
        report.boot,
        BootFiles {
            kernel: Some("boot/vmlinuz-6.1".into()),
            initrd: Some("boot/initrd.img-6.1".into()),
        }
    );
    assert_eq!(report.whiteouts, 2, "{report:?}");
    assert_eq!(fs::read(env.boot.join("vmlinuz")).unwrap(), KERNEL);
    assert_eq!(fs::read(env.boot.join("initrd.img")).unwrap(), INITRD);
    assert_work_clean(env, &[&env.out]);

    let x = env.root.join("extracted");
    extract(&env.out, &x);
    assert_eq!(fs::read(x.join("etc/hostname")).unwrap(), b"box\n");
    let secret = fs::metadata(x.join("etc/secret")).unwrap();
    assert_eq!(fs::read(x.join("etc/secret")).unwrap(), b"s3cret");
    assert_eq!(secret.permissions().mode() & 0o7777, 0o640);
    assert_eq!((secret.uid(), secret.gid()), (1000, 1001));
    // Neither dump.erofs nor fsck.erofs 1.5 shows set-id bits; the on-disk inode has them.
    assert_eq!(raw_mode(&env.out, "/usr/bin/suid"), 0o104_755);
    assert_eq!(
        fs::read_link(x.join("usr/bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(fs::read(x.join("usr/bin/hard")).unwrap(), b"#!/bin/sh\n");
    assert!(dump(&env.out, "/usr/bin/hard").contains("Links: 2"));
    assert_eq!(fs::read(x.join("opaque/kept")).unwrap(), b"kept");
    assert!(x.join("boot/vmlinuz.old").exists());

    let gone = fs::symlink_metadata(x.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    assert!(dump(&env.out, "/gone").contains("char dev"));
    let names: Vec<_> = fs::read_dir(&x)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".wh.")), "{names:?}");
    assert!(!x.join("opaque/.wh..wh..opq").exists());

    // fsck.erofs 1.5 does not extract xattrs; dump.erofs shows their size per inode.
    assert!(xattr_size(&env.out, "/opaque") > 0);
    assert_eq!(
        xattr_size(&env.out, "/forged"),
        0,
        "forged overlay xattr kept"
    );
    assert_eq!(xattr_size(&env.out, "/etc"), 0);
    assert!(xattr_size(&env.out, "/noted") > 0);
}

#[test]
fn converts_plain_layer_keeping_metadata() {
    let env = env();
    let (layer, digest) = write_layer(&env, &sample_layer());
    let report = convert_layer(&layer, &digest, &env.out, &env.boot).unwrap();
    check_sample_image(&env, &report);
}

#[test]
fn converts_gzip_layer() {
    let env = env();
    let (layer, digest) = write_layer(&env, &gzip(&sample_layer()));
    let report = convert_layer(&layer, &digest, &env.out, &env.boot).unwrap();
    check_sample_image(&env, &report);
}

#[test]
fn converts_zstd_layer_in_process() {
    let env = env();
    let tar = env.root.join("plain.tar");
    fs::write(&tar, sample_layer()).unwrap();
    let zst = env.root.join("layer.tar.zst");
    let st = Command::new("zstd")
        .args(["-q", "-o"])
        .arg(&zst)
        .arg(&tar)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = fs::read(&zst).unwrap();
    assert_eq!(layer::detect(&bytes), Compression::Zstd);
    let digest = Digest::sha256_of(&bytes);
    let report = convert_layer(&zst, &digest, &env.out, &env.boot).unwrap();
    check_sample_image(&env, &report);
}

#[test]
fn same_layer_gives_byte_identical_blobs() {
    let env = env();
    let (layer, digest) = write_layer(&env, &gzip(&sample_layer()));
    convert_layer(&layer, &digest, &env.out, &env.boot).unwrap();
    let second = env.work.join("again.erofs");
    let boot2 = env.root.join("boot2");
    convert_layer(&layer, &digest, &second, &boot2).unwrap();
    let (a, b) = (fs::read(&env.out).unwrap(), fs::read(&second).unwrap());
    assert!(a == b, "two conversions of one layer differ");
    let out = Command::new("dump.erofs")
        .arg("-s")
        .arg(&env.out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let h = digest.hex();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    assert!(text.contains(&uuid), "{text}");
}

#[test]
fn boot_files_under_leading_slash_and_dot() {
    let env = env();
    let mut l = Layer::new();
    l.dir("/boot/", 0o755)
        .file("/boot/vmlinuz-6.2", b"k62", 0o644, (0, 0))
        .file("/boot/vmlinuz-6.10", b"k610", 0o644, (0, 0))
        .file("./boot/initrd.img-6.2", b"i62", 0o644, (0, 0))
        .symlink("vmlinuz", "boot/vmlinuz-6.2");
    let (layer, digest) = write_layer(&env, &l.finish());
    let report = convert_layer(&layer, &digest, &env.out, &env.boot).unwrap();
    assert_eq!(
        report.boot.kernel.as_deref(),
        Some(Path::new("boot/vmlinuz-6.10"))
    );
    assert_eq!(fs::read(env.boot.join("vmlinuz")).unwrap(), b"k610");
    assert_eq!(fs::read(env.boot.join("initrd.img")).unwrap(), b"i62");
}

#[test]
fn layer_without_boot_files_writes_none() {
    let env = env();
    let mut l = Layer::new();
    l.file("boot/vmlinuz.old", b"old", 0o644, (0, 0)).file(
        "usr/boot/vmlinuz",
        b"nested",
        0o644,
        (0, 0),
    );
    let (layer, digest) = write_layer(&env, &l.finish());
    let report = convert_layer(&layer, &digest, &env.out, &env.boot).unwrap();
    assert_eq!(report.boot, BootFiles::default());
    assert!(!env.boot.join("vmlinuz").exists());
    assert!(env.out.exists());
}

/// Convert `tar` into a fresh dir: the result and (on success) the extracted tree.
fn conv(tar: &[u8]) -> (tempfile::TempDir, Result<LayerReport, Error>, PathBuf) {
    let td = tempfile::tempdir().unwrap();
    let image = td.path().join("layer.erofs");
    let r = layer::convert(
        tar,
        &imgstore::erofs::Options::default(),
        &image,
        &td.path().join("boot"),
    );
    let x = td.path().join("x");
    if r.is_ok() {
        extract(&image, &x);
    } else {
        assert!(!image.exists(), "a failed conversion removes its image");
    }
    (td, r, x)
}

#[test]
fn dotdot_entry_is_traversal() {
    let mut l = Layer::new();
    l.file("ok", b"fine", 0o644, (0, 0))
        .file("../outside/x", b"evil", 0o644, (0, 0));
    let (_td, r, _) = conv(&l.finish());
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::Erofs(WriteError::Traversal { entry }) if entry == "../outside/x"),
        "{err}"
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.symlink("evil", outside.path().to_str().unwrap()).file(
        "evil/passwd",
        b"root::0:0::/:/bin/sh\n",
        0o644,
        (0, 0),
    );
    let (_td, r, _) = conv(&l.finish());
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::Erofs(WriteError::NotADirectory { entry, parent }) if entry == "evil/passwd" && parent == "evil"),
        "{err}"
    );

    // A directory entry over a symlink replaces the link; the file then lands inside.
    let mut l = Layer::new();
    l.symlink("out", outside.path().to_str().unwrap())
        .dir("out/", 0o755)
        .file("out/planted", b"x", 0o644, (0, 0));
    let (_td, r, x) = conv(&l.finish());
    r.unwrap();
    assert!(fs::symlink_metadata(x.join("out")).unwrap().is_dir());
    assert_eq!(fs::read(x.join("out/planted")).unwrap(), b"x");

    let mut l = Layer::new();
    l.symlink("out", outside.path().to_str().unwrap())
        .file("out/planted", b"x", 0o644, (0, 0));
    let (_td, r, _) = conv(&l.finish());
    assert!(matches!(
        r,
        Err(Error::Erofs(WriteError::NotADirectory { .. }))
    ));
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn file_over_a_symlink_replaces_the_link() {
    let mut l = Layer::new();
    l.symlink("f", "/etc/victim")
        .file("f", b"new", 0o644, (0, 0));
    let (_td, r, x) = conv(&l.finish());
    r.unwrap();
    assert!(fs::symlink_metadata(x.join("f")).unwrap().is_file());
    assert_eq!(fs::read(x.join("f")).unwrap(), b"new");
}

#[test]
fn hard_links_that_escape_are_refused() {
    for (first, target) in [
        (None, "../../etc/passwd"),
        (Some("etc"), "etc/passwd"),
        (None, "/etc/passwd"),
    ] {
        let mut l = Layer::new();
        if let Some(link) = first {
            l.symlink(link, "/etc");
        }
        l.hardlink("h", target);
        let (_td, r, _) = conv(&l.finish());
        let err = r.unwrap_err();
        assert!(
            matches!(&err, Error::Erofs(WriteError::LinkEscape { entry, target: t }) if entry == "h" && t == target),
            "{err}"
        );
    }
}

#[test]
fn absolute_paths_land_inside_the_layer() {
    let mut l = Layer::new();
    l.file("/etc/foo", b"foo", 0o600, (0, 0))
        .hardlink("/etc/foo.link", "/etc/foo");
    let (td, r, x) = conv(&l.finish());
    assert_eq!(r.unwrap().files, 2);
    assert_eq!(fs::read(x.join("etc/foo")).unwrap(), b"foo");
    // fsck.erofs extracts links as copies; the image has one inode with two links.
    assert!(dump(&td.path().join("layer.erofs"), "/etc/foo.link").contains("Links: 2"));
}

/// Device nodes are kept in the image (no root needed to write them), as the tar has them.
#[test]
fn device_nodes_are_kept() {
    let mut l = Layer::new();
    l.raw("dev/sda", EntryType::Block, None, b"", 0o660, (0, 6))
        .raw("dev/null", EntryType::Char, None, b"", 0o666, (0, 0))
        .file("dev/keep", b"k", 0o644, (0, 0));
    let td = tempfile::tempdir().unwrap();
    let image = td.path().join("layer.erofs");
    let report = layer::convert(
        &l.finish()[..],
        &imgstore::erofs::Options::default(),
        &image,
        &td.path().join("boot"),
    )
    .unwrap();
    assert_eq!((report.files, report.skipped), (3, 0));
    assert!(dump(&image, "/dev/sda").contains("block dev"));
    assert!(dump(&image, "/dev/null").contains("char dev"));
}

#[test]
fn failed_conversion_leaves_nothing() {
    let env = env();
    let mut l = Layer::new();
    l.file("boot/vmlinuz-6.1", KERNEL, 0o644, (0, 0))
        .file("a/b", b"fine", 0o644, (0, 0))
        .file("../escape", b"evil", 0o644, (0, 0));
    let (layer, digest) = write_layer(&env, &l.finish());
    let err = convert_layer(&layer, &digest, &env.out, &env.boot).unwrap_err();
    assert!(
        matches!(err, Error::Erofs(WriteError::Traversal { .. })),
        "{err}"
    );
    assert_work_clean(&env, &[]);
    assert!(!env.out.exists());
    assert!(!env.boot.join("vmlinuz").exists());
    assert!(!env.root.join("escape").exists());

    // A truncated gzip stream fails as a read error of the tar, with the same cleanup.
    let gz = gzip(&sample_layer());
    let (layer, digest) = write_layer(&env, &gz[..gz.len() / 2]);
    let err = convert_layer(&layer, &digest, &env.out, &env.boot).unwrap_err();
    assert!(is_stream_error(&err), "{err}");
    assert_work_clean(&env, &[]);
    assert!(!env.out.exists());

    // So does a truncated zstd stream (decoded in-process by the zstd crate).
    let tar = env.root.join("plain.tar");
    fs::write(&tar, sample_layer()).unwrap();
    let out = Command::new("zstd")
        .arg("-q")
        .arg("-c")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (layer, digest) = write_layer(&env, &out.stdout[..out.stdout.len() / 2]);
    let err = convert_layer(&layer, &digest, &env.out, &env.boot).unwrap_err();
    assert!(is_stream_error(&err), "{err}");
    assert_work_clean(&env, &[]);
    assert!(!env.out.exists());
}

/// A truncated or corrupt stream: the tar reader's error, or the decompressor's at the end.
fn is_stream_error(err: &Error) -> bool {
    matches!(
        err,
        Error::Read { .. } | Error::Erofs(WriteError::Tar { .. } | WriteError::TarEntry { .. })
    )
}
