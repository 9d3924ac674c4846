//! The chain rule end to end (docs/design.md §11): an upper layer that only implies a directory
//! of the base must not change what the VM sees. Layers are imported through the store, the
//! disks `config` returns are mounted by the kernel (`mount -t erofs -o loop,ro`) and merged by
//! overlayfs as a VM's init would; gc and verify must cover the chain blob.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imgstore::gc::GcOptions;
use imgstore::store::{OciSource, Role, Status, Store};
use imgstore::Digest;

/// One tar entry: path, mode, (uid, gid), contents (a file) or `None` (a directory).
type Entry<'a> = (&'a str, u32, (u64, u64), Option<&'a [u8]>);

/// A plain layer tar of `entries`; the entry at `xattr.0` gets the xattr `xattr.1` (PAX).
fn tar_of(entries: &[Entry<'_>], xattr: Option<(&str, (&str, &[u8]))>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, owner, data) in entries {
        if let Some((_, (name, value))) = xattr.filter(|(p, _)| p == path) {
            let key = format!("SCHILY.xattr.{name}");
            b.append_pax_extensions([(key.as_str(), value)]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_650_000_000);
        let data = data.unwrap_or_default();
        h.set_entry_type(if path.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A base layer with a kernel, an initrd and `tmp/` as given (with `user.test=base` when
/// `labelled`).
fn base(tmp_mode: u32, tmp_owner: (u64, u64), labelled: bool) -> Vec<u8> {
    tar_of(
        &[
            ("boot/", 0o755, (0, 0), None),
            ("boot/vmlinuz-6.1", 0o644, (0, 0), Some(b"kernel")),
            ("boot/initrd.img-6.1", 0o644, (0, 0), Some(b"initrd")),
            ("tmp/", tmp_mode, tmp_owner, None),
        ],
        labelled.then_some(("tmp/", ("user.test", &b"base"[..]))),
    )
}

/// An upper layer that adds `tmp/x` without a `tmp/` entry.
fn upper() -> Vec<u8> {
    tar_of(&[("tmp/x", 0o644, (0, 0), Some(b"x"))], None)
}

/// Write each tar to a file in `dir`; their paths and digests (sha256 of the tar, as `import`
/// names a layer file).
fn files(dir: &Path, tars: &[(&str, Vec<u8>)]) -> (Vec<PathBuf>, Vec<Digest>) {
    tars.iter()
        .map(|(name, tar)| {
            let p = dir.join(name);
            fs::write(&p, tar).unwrap();
            (p, Digest::sha256_of(tar))
        })
        .unzip()
}

fn blob(root: &Path, d: &Digest) -> PathBuf {
    root.join(format!("oci/blobs/{}.erofs", d.hex()))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A read-only loop mount, unmounted on drop.
struct Mount(tempfile::TempDir);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn mount(args: &[&str], source: &str) -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("mount")
        .args(args)
        .arg(source)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount {args:?} {source} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mount(dir)
}

/// What the merged tree shows of `tmp`: mode, uid, gid, `user.test`, and whether `tmp/x` is there.
type Tmp = (u32, u32, u32, Option<Vec<u8>>, bool);

/// Mount the disks (base first) as a VM's init does: each EROFS read-only, merged by overlayfs
/// with the top layer first; what the merged `tmp` shows.
fn merged_tmp(disks: &[PathBuf]) -> Tmp {
    let layers: Vec<Mount> = disks
        .iter()
        .map(|d| mount(&["-t", "erofs", "-o", "loop,ro"], d.to_str().unwrap()))
        .collect();
    let lowerdir: Vec<String> = layers
        .iter()
        .rev()
        .map(|m| m.0.path().display().to_string())
        .collect();
    let merged = mount(
        &[
            "-t",
            "overlay",
            "-o",
            &format!("lowerdir={}", lowerdir.join(":")),
        ],
        "overlay",
    );
    let tmp = merged.0.path().join("tmp");
    let md = fs::metadata(&tmp).unwrap();
    let label = xattr::get(&tmp, "user.test").unwrap();
    let has_x = merged.0.path().join("tmp/x").exists();
    drop(merged);
    (
        md.permissions().mode() & 0o7777,
        md.uid(),
        md.gid(),
        label,
        has_x,
    )
}

fn gc_now(store: &Store) -> imgstore::gc::GcReport {
    let opts = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    store.gc(&opts, &[]).unwrap()
}

/// The acceptance corpus item: base `tmp` 1777 owned 1000:1001 with `user.test=base`, the upper
/// layer only `tmp/x`. The VM's merged `/tmp` keeps the base's mode, owner and xattr; the
/// parent-independent image stays under the layer digest for cocoon (there `/tmp` is 0755);
/// gc keeps both while the image is referenced and collects both after `rm`.
#[test]
fn an_upper_layer_implying_a_sticky_tmp_keeps_it_in_the_vm() {
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("store");
    let (paths, digests) = files(
        td.path(),
        &[
            ("base.tar", base(0o1777, (1000, 1001), true)),
            ("upper.tar", upper()),
        ],
    );
    let store = Store::open(&root).unwrap();
    store
        .import_oci("chained", &OciSource::LayerTars(paths))
        .unwrap();

    let cfg = store.config(&["chained"]).unwrap().pop().unwrap();
    let disks: Vec<PathBuf> = cfg.storage.iter().map(|d| d.path.clone()).collect();
    assert_eq!(disks.len(), 2);
    assert_eq!(
        disks[0],
        blob(&root, &digests[0]),
        "the base needs no chain"
    );
    assert_ne!(
        disks[1],
        blob(&root, &digests[1]),
        "the upper layer is chain-keyed"
    );
    assert!(disks[1].starts_with(root.join("oci/blobs")));
    let cocoon = blob(&root, &digests[1]);
    assert!(
        cocoon.is_file(),
        "the parent-independent image stays for cocoon"
    );
    let fsck = Command::new("fsck.erofs").arg(&disks[1]).output().unwrap();
    assert!(
        fsck.status.success(),
        "fsck.erofs of the chain blob: {fsck:?}"
    );

    let info = store.inspect("chained").unwrap();
    let chain: Vec<_> = info
        .blobs
        .iter()
        .filter(|b| b.role == Role::Chain)
        .collect();
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].path, disks[1]);

    let rows = store
        .verify(&["chained"], imgstore::digest::Algorithm::Blake3)
        .unwrap();
    assert!(rows.iter().all(|r| r.status == Status::Ok), "{rows:?}");
    assert!(rows
        .iter()
        .any(|r| r.role == Role::Chain && r.path == disks[1]));

    if is_root() {
        assert_eq!(
            merged_tmp(&disks),
            (0o1777, 1000, 1001, Some(b"base".to_vec()), true),
            "the VM sees the base's tmp"
        );
        assert_eq!(
            merged_tmp(&[disks[0].clone(), cocoon.clone()]),
            (0o755, 0, 0, None, true),
            "the parent-independent image is what cocoon boots"
        );
    } else {
        eprintln!("skipping the kernel mounts: not root");
    }

    let r = gc_now(&store);
    assert!(
        r.blobs.is_empty(),
        "a referenced image loses nothing: {r:?}"
    );
    assert!(disks[1].is_file() && cocoon.is_file());

    store.remove(&["chained"]).unwrap();
    gc_now(&store);
    assert!(!disks[1].exists(), "the chain blob is collected");
    assert!(!cocoon.exists() && !disks[0].exists());
}

/// No chain image when nothing differs (the base's `tmp` is 0755 root:root); and a layer
/// already stored is chained from its stored image and view when a later image needs it.
#[test]
fn a_chain_image_only_where_the_merged_tree_differs() {
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("store");
    let (plain, plain_digests) = files(
        td.path(),
        &[
            ("base.tar", base(0o755, (0, 0), false)),
            ("upper.tar", upper()),
        ],
    );
    let store = Store::open(&root).unwrap();
    store
        .import_oci("plain", &OciSource::LayerTars(plain))
        .unwrap();
    let cfg = store.config(&["plain"]).unwrap().pop().unwrap();
    let disks: Vec<PathBuf> = cfg.storage.iter().map(|d| d.path.clone()).collect();
    let want: Vec<PathBuf> = plain_digests.iter().map(|d| blob(&root, d)).collect();
    assert_eq!(disks, want, "nothing differs: the layer blobs themselves");
    assert_eq!(fs::read_dir(root.join("oci/blobs")).unwrap().count(), 2);
    let info = store.inspect("plain").unwrap();
    assert!(info.blobs.iter().all(|b| b.role != Role::Chain));

    // The same upper layer (reused, not converted again) over a sticky tmp.
    let (sticky, sticky_digests) = files(
        td.path(),
        &[
            ("base2.tar", base(0o1777, (0, 0), false)),
            ("upper2.tar", upper()),
        ],
    );
    assert_eq!(sticky_digests[1], plain_digests[1]);
    store
        .import_oci("sticky", &OciSource::LayerTars(sticky))
        .unwrap();
    let cfg = store.config(&["sticky"]).unwrap().pop().unwrap();
    let disks: Vec<PathBuf> = cfg.storage.iter().map(|d| d.path.clone()).collect();
    assert_ne!(disks[1], blob(&root, &sticky_digests[1]));
    if is_root() {
        assert_eq!(merged_tmp(&disks), (0o1777, 0, 0, None, true));
    } else {
        eprintln!("skipping the kernel mounts: not root");
    }
    // The first image still boots its own (shared) layer blob.
    let cfg = store.config(&["plain"]).unwrap().pop().unwrap();
    assert_eq!(cfg.storage[1].path, blob(&root, &plain_digests[1]));
}

/// Pulled from a registry (the pull pipeline records the views too), the sticky `tmp` gets its
/// chain image; pushed back as an EROFS-native image, the layer goes up as that chain image, so
/// a store that pulls the pushed image hands VMs the same bytes.
#[test]
fn a_pulled_chain_image_is_what_push_sends() {
    use crate::cli_support::run;
    use crate::oci_image::{host_and_other_arch, ImageBuilder, LayerBuilder, OciLayout};
    use crate::registry_server::TestRegistry;

    let reg = TestRegistry::start();
    let td = tempfile::tempdir().unwrap();
    let (a, b) = (td.path().join("a"), td.path().join("b"));
    let base = LayerBuilder::new()
        .dir("boot")
        .file("boot/vmlinuz", "kernel\n")
        .file("boot/initrd.img", "initrd\n")
        .dir_owned("tmp", 0o1777, 1000, 1001);
    let upper = LayerBuilder::new().file("tmp/x", "x\n");
    let image = ImageBuilder::new(host_and_other_arch().0)
        .layer(base)
        .layer(upper);
    let mut layout = OciLayout::create(&td.path().join("layout"));
    layout.add_image("v1", &image);
    reg.push_oci_layout(&layout.dir, "src/tmp", "v1");
    let source = format!("{}/src/tmp:v1", reg.host());
    run(&a, &["pull", &source]).ok();
    let disks = |root: &Path, r: &str| -> Vec<PathBuf> {
        run(root, &["-o", "json", "config", r]).ok().json()[0]["storage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
            .collect()
    };
    let pulled = disks(&a, &source);
    let inspect = run(&a, &["-o", "json", "inspect", &source]).ok().json();
    let roles: Vec<&str> = inspect["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["layer", "layer", "chain", "kernel", "initrd"]);
    if is_root() {
        assert_eq!(merged_tmp(&pulled), (0o1777, 1000, 1001, None, true));
    }

    let target = format!("{}/dst/tmp:erofs", reg.host());
    run(&a, &["push", &source, &target]).ok();
    run(&b, &["pull", &target]).ok();
    let repulled = disks(&b, &target);
    let bytes =
        |ds: &[PathBuf]| -> Vec<Vec<u8>> { ds.iter().map(|d| fs::read(d).unwrap()).collect() };
    assert_eq!(
        bytes(&pulled),
        bytes(&repulled),
        "VMs of both stores get the same disks"
    );
}
