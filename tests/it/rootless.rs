//! Rootless: `import` and `pull` of OCI images as an unprivileged user (uid/gid 65534 through
//! `setpriv`) on a store root that user owns. Then, as root, every layer image is mounted by the
//! kernel (`mount -t erofs -o loop,ro`) and its owners, modes, device nodes and whiteouts are
//! compared with the tars: they are recorded in the image, not on the host.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imgstore::Digest;
use tar::{EntryType, Header};

use crate::cli_support::{bin, Run};
use crate::erofs_writer::kit::{is_root, mount};
use crate::oci_image::{host_and_other_arch, ImageBuilder, LayerBuilder, OciLayout};
use crate::registry_server::TestRegistry;

const NOBODY: u32 = 65534;

/// A world-traversable temp dir holding a store root owned by `nobody`. `None` when not root
/// (the test then proves nothing: it needs root to drop to another user and to mount).
fn nobody_root() -> Option<(tempfile::TempDir, PathBuf)> {
    if !is_root() {
        eprintln!("skipping rootless test: it needs root to switch to uid {NOBODY} and to mount");
        return None;
    }
    let td = tempfile::tempdir().unwrap();
    fs::set_permissions(td.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = td.path().join("store");
    fs::create_dir(&root).unwrap();
    nix::unistd::chown(
        &root,
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    Some((td, root))
}

/// `imgstore --root ROOT ARGS` as uid/gid 65534 with no supplementary groups.
fn as_nobody(root: &Path, args: &[&str]) -> Run {
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_owned(),
        ])
        .arg(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env("HOME", root)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv");
    let run = Run::from_output(&out);
    assert!(run.code == 0, "as uid {NOBODY}: {args:?}: {}", run.stderr);
    run
}

/// Every file the unprivileged run created under the root belongs to it.
fn assert_owned_by_nobody(root: &Path) {
    for e in walk(root) {
        let m = fs::symlink_metadata(&e).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{}", e.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    mode: u32,
    dev: (u32, u32),
) {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(6);
    h.set_mtime(1_700_000_000);
    h.set_device_major(dev.0).unwrap();
    h.set_device_minor(dev.1).unwrap();
    b.append_data(&mut h, name, &[][..]).unwrap();
}

fn stat(m: &Path, p: &str) -> fs::Metadata {
    fs::symlink_metadata(m.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn major_minor(rdev: u64) -> (u64, u64) {
    (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
}

/// The base layer of both tests: owned files and directories.
fn base() -> LayerBuilder {
    LayerBuilder::new()
        .dir("srv")
        .file_owned("srv/owned", "owned\n", 0o604, 1234, 5678)
        .dir_owned("srv/data", 0o750, 42, 43)
        .file_owned("srv/big-ids", "ids\n", 0o640, 100_000, 200_000)
        .file("etc/removed-later", "whited out above\n")
}

fn boot_layer() -> LayerBuilder {
    LayerBuilder::new()
        .dir("boot")
        .file("boot/vmlinuz", "kernel\n")
        .file("boot/initrd.img", "initrd\n")
}

fn upper() -> LayerBuilder {
    LayerBuilder::new().whiteout("etc/removed-later")
}

/// The base layer's owners survive in its image.
fn check_base(m: &Path) {
    let o = stat(m, "srv/owned");
    assert_eq!((o.uid(), o.gid(), o.mode() & 0o7777), (1234, 5678, 0o604));
    let d = stat(m, "srv/data");
    assert!(d.is_dir());
    assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777), (42, 43, 0o750));
    let b = stat(m, "srv/big-ids");
    assert_eq!((b.uid(), b.gid()), (100_000, 200_000));
}

/// The top layer's whiteout is an overlay whiteout (0/0 character device).
fn check_whiteout(m: &Path) {
    let w = stat(m, "etc/removed-later");
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
}

fn blob(root: &Path, layer: &Digest) -> PathBuf {
    root.join(format!("oci/blobs/{}.erofs", layer.hex()))
}

#[test]
fn import_as_an_unprivileged_user_records_owners_devices_and_whiteouts() {
    let Some((td, root)) = nobody_root() else {
        return;
    };
    let input = td.path().join("in");
    fs::create_dir(&input).unwrap();
    fs::set_permissions(&input, fs::Permissions::from_mode(0o755)).unwrap();
    let mut devs = tar::Builder::new(Vec::new());
    raw_entry(&mut devs, "dev/sda", EntryType::Block, 0o660, (8, 1));
    raw_entry(&mut devs, "dev/null", EntryType::Char, 0o666, (1, 3));
    raw_entry(&mut devs, "run/fifo", EntryType::Fifo, 0o600, (0, 0));
    let layers = [
        base().build().gz,
        devs.into_inner().unwrap(),
        boot_layer().build().tar,
        upper().build().gz,
    ];
    let mut files = Vec::new();
    for (i, bytes) in layers.iter().enumerate() {
        let f = input.join(format!("layer{i}"));
        fs::write(&f, bytes).unwrap();
        files.push(f.to_str().unwrap().to_owned());
    }
    let mut args = vec!["import", "rootless/app"];
    args.extend(files.iter().map(String::as_str));
    as_nobody(&root, &args);
    assert_owned_by_nobody(&root);

    let digests: Vec<Digest> = layers.iter().map(|b| Digest::sha256_of(b)).collect();
    let m = mount(&blob(&root, &digests[0])).expect("root mounts");
    check_base(m.dir.path());
    let m = mount(&blob(&root, &digests[1])).expect("root mounts");
    let sda = stat(m.dir.path(), "dev/sda");
    assert!(sda.file_type().is_block_device());
    assert_eq!(major_minor(sda.rdev()), (8, 1));
    assert_eq!((sda.uid(), sda.gid(), sda.mode() & 0o7777), (0, 6, 0o660));
    let null = stat(m.dir.path(), "dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(major_minor(null.rdev()), (1, 3));
    assert!(stat(m.dir.path(), "run/fifo").file_type().is_fifo());
    let m = mount(&blob(&root, &digests[3])).expect("root mounts");
    check_whiteout(m.dir.path());
}

#[test]
fn pull_as_an_unprivileged_user_records_owners_and_whiteouts() {
    let Some((td, root)) = nobody_root() else {
        return;
    };
    let reg = TestRegistry::start();
    let mut layout = OciLayout::create(&td.path().join("layout"));
    let image = ImageBuilder::new(host_and_other_arch().0)
        .layer(base())
        .layer(boot_layer())
        .layer(upper());
    let built = layout.add_image("v1", &image);
    reg.push_oci_layout(&layout.dir, "rootless/app", "v1");
    let reference = format!("{}/rootless/app:v1", reg.host());
    as_nobody(&root, &["pull", &reference]);
    assert_owned_by_nobody(&root);

    let m = mount(&blob(&root, &built.layers[0].digest)).expect("root mounts");
    check_base(m.dir.path());
    let m = mount(&blob(&root, &built.layers[2].digest)).expect("root mounts");
    check_whiteout(m.dir.path());
}
