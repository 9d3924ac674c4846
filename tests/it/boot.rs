//! What `config` returns boots: real QEMU VMs (TCG) started from `imgstore config -o json`
//! through the reference translation of `examples/boot_qemu/qemu.rs`.
//!
//! - An OCI image whose layers carry a real Debian kernel and a busybox initrd is pushed to a
//!   real registry, pulled, and booted; the guest mounts every layer disk as EROFS, stacks them
//!   with overlayfs in layer order, and reports what it sees (replaced, whited-out and opaque
//!   paths, owners and modes), once on virtio-blk and once on virtio-scsi.
//! - A UEFI-bootable disk (GPT, an ESP with systemd-boot, a data partition) is imported as raw
//!   and as qcow2 and booted through Debian's OVMF from the stored qcow2, read-only.
//!
//! Run them alone with `cargo test --test it boot::`.

use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::cli_support::{run, Run};
use crate::oci_image::{host_and_other_arch, ImageBuilder, LayerBuilder, OciLayout};
use crate::registry_server::TestRegistry;
use crate::vm::qemu::{qemu_argv, BootSpec, DiskSpec, QemuOptions, TranslateError, VmSpec};
use crate::vm::{boot, boot_firmware, initrd, kernel, options, GuestRun};

/// Debian 12's OVMF (package `ovmf`): code, and the variable store template.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A store root and a scratch area in one temp dir.
struct Env {
    td: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let td = tempfile::tempdir().expect("temp dir");
        let root = td.path().join("root");
        Self { td, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.td.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Run {
        run(&self.root, args)
    }

    /// `config -o json ID [extra...]`, parsed by the translation's own types.
    fn config(&self, id: &str, extra: &[&str]) -> (Value, VmSpec) {
        let mut args = vec!["-o", "json", "config", id];
        args.extend_from_slice(extra);
        let json = self.run(&args).ok().json();
        let specs: Vec<VmSpec> = serde_json::from_value(json.clone())
            .expect("config JSON is what the translation reads");
        assert_eq!(specs.len(), 1, "one image asked, one config: {json}");
        (json[0].clone(), specs.into_iter().next().expect("one spec"))
    }
}

/// What the guest does with an OCI image: wait for its disks, mount each as EROFS, stack them,
/// and report what it sees.
const OCI_GUEST: &str = r#"
list_disks
mount_layers
say "layer0 hostname=$(cat /layers/0/etc/hostname)"
say "top layer whiteout=$(stat -c '%F %t:%T' /layers/2/etc/removed-later)"
say "base-only=$(cat /merged/etc/base-only)"
say "hostname=$(cat /merged/etc/hostname)"
if [ -e /merged/etc/removed-later ]; then say "removed-later=present"; else say "removed-later=absent"; fi
say "var/cache=$(echo $(ls -A /merged/var/cache))"
say "whiteout names visible=$(find /merged -name '.wh.*' | wc -l)"
for p in srv/owned srv/data usr/bin/tool tmp; do say "stat $p $(stat -c '%u:%g %a %F' /merged/$p)"; done
say "kernel in its layer=$(stat -c %s /merged/boot/vmlinuz)"
say "device node=$(stat -c '%F %t:%T %a' /merged/srv/disk)"
"#;

/// The test image: a base with owned files, a boot layer with the real kernel and an initrd
/// running [`OCI_GUEST`], and an upper layer that replaces, deletes and hides base files and
/// adds `tmp/x` without `tmp/` over the base's 1777 `tmp`.
fn guest_image(work: &Path) -> ImageBuilder {
    let initrd_path = work.join("initrd.img");
    initrd(OCI_GUEST, &initrd_path);
    let base = LayerBuilder::new()
        .dir("etc")
        .file("etc/hostname", "base\n")
        .file("etc/base-only", "from the base layer\n")
        .file("etc/removed-later", "whited out by the top layer\n")
        .dir("srv")
        .file_owned("srv/owned", "owned\n", 0o604, 1234, 5678)
        .dir_owned("srv/data", 0o750, 42, 43)
        .dir("usr")
        .dir("usr/bin")
        .file_mode("usr/bin/tool", "#!/bin/sh\n", 0o755)
        // Only the in-process writer keeps device nodes (the mkfs.erofs path dropped them).
        .device("srv/disk", true, 8, 1, 0o640)
        .dir("var")
        .dir("var/cache")
        .file("var/cache/a", "hidden by the opaque dir of the top layer\n")
        .file("var/cache/c", "hidden too\n")
        .dir_owned("tmp", 0o1777, 1000, 1001);
    let boot = LayerBuilder::new()
        .gzip_level(0)
        .dir("boot")
        .file(
            "boot/vmlinuz",
            fs::read(kernel()).expect("read the kit's kernel"),
        )
        .file(
            "boot/initrd.img",
            fs::read(&initrd_path).expect("read the initrd"),
        );
    let upper = LayerBuilder::new()
        .file("etc/hostname", "upper\n")
        .whiteout("etc/removed-later")
        .opaque("var/cache")
        .file("var/cache/b", "new in the top layer\n")
        // Implies `tmp`: the chain rule hands the VM this layer's chain image (docs §11).
        .file("tmp/x", "x\n");
    ImageBuilder::new(host_and_other_arch().0)
        .layer(base)
        .layer(boot)
        .layer(upper)
}

/// Push the guest image to a fresh registry, pull it, and return its config.
fn pulled_guest_image(env: &Env) -> (TestRegistry, Value, VmSpec) {
    let reg = TestRegistry::start();
    let mut layout = OciLayout::create(&env.path("layout"));
    layout.add_image("v1", &guest_image(env.td.path()));
    reg.push_oci_layout(&layout.dir, "boot/guest", "v1");
    let reference = format!("{}/boot/guest:v1", reg.host());
    env.run(&["pull", &reference]).ok();
    let (json, spec) = env.config(&reference, &[]);
    (reg, json, spec)
}

/// The guest's report on the three-layer image, whatever the disk bus.
fn assert_guest_saw_the_image(run: &GuestRun) {
    for n in 0..3 {
        let disk = run.said_starting(&format!("disk cocoon-layer{n} "));
        assert!(
            disk.len() == 1 && disk[0].ends_with(" ro=1"),
            "layer {n} is one read-only disk with its serial: {disk:?}\n{}",
            run.log
        );
    }
    run.assert_said("overlay lowerdir=/layers/2:/layers/1:/layers/0");
    run.assert_said("base-only=from the base layer");
    run.assert_said("hostname=upper");
    run.assert_said("removed-later=absent");
    run.assert_said("var/cache=b");
    run.assert_said("whiteout names visible=0");
    run.assert_said("stat srv/owned 1234:5678 604 regular file");
    run.assert_said("stat srv/data 42:43 750 directory");
    run.assert_said("stat usr/bin/tool 0:0 755 regular file");
    // The top layer only implies `tmp`: the base's sticky mode and owner show through.
    run.assert_said("stat tmp 1000:1001 1777 directory");
    // Each disk is its layer: the base disk still has the base's version of a replaced file.
    run.assert_said("layer0 hostname=base");
    // The conversion turned the OCI whiteout into an overlay whiteout (a 0:0 character device).
    run.assert_said("top layer whiteout=character special file 0:0");
    let kernel_size = fs::metadata(kernel()).expect("stat kernel").len();
    run.assert_said(&format!("kernel in its layer={kernel_size}"));
    // The layers are the in-process writer's images (a device node survives; busybox prints
    // major:minor in hex).
    run.assert_said("device node=block special file 8:1 640");
}

/// A three-layer OCI image with a real kernel and initrd, pulled from a real registry, boots
/// from `config` exactly: one read-only virtio disk per layer with its serial, the stored
/// kernel and initrd; inside, the overlay of the layer disks shows the image as the tars
/// describe it (replaced file, whiteout, opaque directory, owners and modes).
#[test]
fn oci_image_boots_from_config() {
    let env = Env::new();
    let (_reg, json, spec) = pulled_guest_image(&env);
    assert_eq!(json["image_type"], "oci");
    assert_eq!(spec.storage.len(), 3);
    let BootSpec::Kernel { kernel_path, .. } = &spec.boot else {
        panic!("an oci image boots its kernel: {json}");
    };
    assert!(kernel_path.starts_with(env.root.join("oci/boot")), "{json}");

    let argv = qemu_argv(&spec, &options(spec.storage.len())).expect("translate");
    let run = boot(&argv);
    assert_guest_saw_the_image(&run);
    eprintln!(
        "oci guest: init after {:.2?}, powered off after {:.2?}",
        run.to_init, run.total
    );
}

/// The same image with its layers on one virtio-scsi controller, as the translation does when
/// an image has more layers than virtio-blk slots (forced here with a limit of 2): the serials
/// reach the guest through SCSI VPD page 0x80 and the overlay is the same.
#[test]
fn oci_layers_beyond_virtio_blk_slots_boot_on_virtio_scsi() {
    let env = Env::new();
    let (_reg, _json, spec) = pulled_guest_image(&env);
    let opts = QemuOptions {
        max_virtio_blk: 2,
        ..options(spec.storage.len())
    };
    let argv = qemu_argv(&spec, &opts).expect("translate");
    assert!(
        argv.iter().any(|a| a == "virtio-scsi-pci,id=scsi0"),
        "{argv:?}"
    );
    let run = boot(&argv);
    for n in 0..3 {
        let disk = run.said_starting(&format!("disk cocoon-layer{n} sd"));
        assert_eq!(disk.len(), 1, "layer {n} is a SCSI disk: {}", run.log);
    }
    assert_guest_saw_the_image(&run);
}

/// What the guest does with the cloud disk: find it by serial and read the marker from its
/// data partition.
const CLOUD_GUEST: &str = r#"
list_disks
dev="$(disk_by_serial cocoon-base)" || fail "no disk with serial cocoon-base"
mkdir -p /data
mount -t erofs -o ro "${dev}2" /data || fail "mount ${dev}2"
say "marker=$(cat /data/marker)"
"#;

const MIB: u64 = 1024 * 1024;
/// ESP: sectors 2048.. (36 MiB); data partition right after it.
const ESP_SECTORS: u64 = 36 * 2048;
const DATA_START: u64 = 2048 + ESP_SECTORS;

fn tool(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?} (see scripts/deps.sh): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw GPT disk that boots through UEFI: an ESP holding systemd-boot (as the removable-media
/// loader `\EFI\BOOT\BOOTX64.EFI`), the kit's kernel and an initrd running [`CLOUD_GUEST`], and
/// a loader entry passing the command line; then an EROFS data partition holding `marker`.
/// Built without loop devices: each filesystem is an image file copied in at its offset.
fn uefi_disk(work: &Path, marker: &str) -> PathBuf {
    let initrd_path = work.join("cloud-initrd.img");
    initrd(CLOUD_GUEST, &initrd_path);
    let esp = work.join("esp.img");
    tool(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", "ESP"])
            .arg(&esp)
            .arg((ESP_SECTORS / 2).to_string()),
    );
    let mtools = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = Command::new(args[0]);
        c.arg("-i").arg(&esp);
        for a in &args[1..] {
            c.arg(a);
        }
        tool(&mut c);
    };
    mtools(&[
        &"mmd",
        &"::/EFI",
        &"::/EFI/BOOT",
        &"::/loader",
        &"::/loader/entries",
    ]);
    let loader_conf = work.join("loader.conf");
    fs::write(&loader_conf, "default imgstore.conf\ntimeout 0\n").expect("write loader.conf");
    let entry = work.join("imgstore.conf");
    fs::write(
        &entry,
        format!(
            "title imgstore boot test\nlinux /vmlinuz\ninitrd /initrd.img\noptions {}\n",
            options(1).cmdline
        ),
    )
    .expect("write loader entry");
    let systemd_boot = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    mtools(&[&"mcopy", &systemd_boot, &"::/EFI/BOOT/BOOTX64.EFI"]);
    mtools(&[&"mcopy", &kernel(), &"::/vmlinuz"]);
    mtools(&[&"mcopy", &initrd_path, &"::/initrd.img"]);
    mtools(&[&"mcopy", &loader_conf, &"::/loader/loader.conf"]);
    mtools(&[&"mcopy", &entry, &"::/loader/entries/imgstore.conf"]);

    let data_dir = work.join("data");
    fs::create_dir_all(&data_dir).expect("mkdir data");
    fs::write(data_dir.join("marker"), format!("{marker}\n")).expect("write marker");
    let data = work.join("data.erofs");
    tool(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&data)
            .arg(&data_dir),
    );

    let disk = work.join("disk.raw");
    let f = fs::File::create(&disk).expect("create disk.raw");
    f.set_len(48 * MIB).expect("size disk.raw");
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sfdisk (fdisk, see scripts/deps.sh)");
    let table = format!(
        "label: gpt\nstart=2048, size={ESP_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
         start={DATA_START}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
    );
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().expect("sfdisk stdin"),
        table.as_bytes(),
    )
    .expect("write partition table to sfdisk");
    let out = sfdisk.wait_with_output().expect("wait for sfdisk");
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.write_all_at(&fs::read(&esp).expect("read esp.img"), MIB)
        .expect("copy the ESP into the disk");
    f.write_all_at(&fs::read(&data).expect("read data.erofs"), DATA_START * 512)
        .expect("copy the data partition into the disk");
    f.sync_all().expect("sync disk.raw");
    disk
}

/// A UEFI-bootable disk imported as raw and as qcow2 boots through Debian's OVMF from what
/// `config --firmware` returns: the stored qcow2 attached read-only with serial `cocoon-base`;
/// the guest reads the marker from the disk. Booting changes no stored byte (`verify`).
#[test]
fn cloud_image_boots_through_uefi_firmware() {
    let env = Env::new();
    let marker = format!("imgstore cloud marker {}", std::process::id());
    let raw = uefi_disk(env.td.path(), &marker);
    let qcow2 = env.path("disk.qcow2");
    tool(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    );
    env.run(&["import", "cloud-raw", raw.to_str().expect("utf-8 path")])
        .ok();
    env.run(&["import", "cloud-qcow2", qcow2.to_str().expect("utf-8 path")])
        .ok();

    for name in ["cloud-raw", "cloud-qcow2"] {
        let (json, spec) = env.config(name, &["--firmware", OVMF_CODE]);
        assert_eq!(json["image_type"], "cloudimg");
        assert_eq!(json["boot"]["firmware_path"], OVMF_CODE, "{json}");
        assert_eq!(spec.storage.len(), 1, "{json}");
        assert!(
            spec.storage[0]
                .path
                .starts_with(env.root.join("cloudimg/blobs")),
            "{json}"
        );
        let vars = env.path(&format!("{name}-vars.fd"));
        fs::copy(OVMF_VARS, &vars).expect("copy OVMF_VARS");
        let opts = QemuOptions {
            firmware_vars: Some(vars),
            ..options(1)
        };
        let argv = qemu_argv(&spec, &opts).expect("translate");
        let run = boot_firmware(&argv);
        let disk = run.said_starting("disk cocoon-base ");
        assert!(
            disk.len() == 1 && disk[0].ends_with(" ro=1"),
            "{name}: one read-only disk with serial cocoon-base: {disk:?}\n{}",
            run.log
        );
        run.assert_said(&format!("marker={marker}"));
        eprintln!(
            "{name}: guest init after {:.2?}, powered off after {:.2?}",
            run.to_init, run.total
        );
    }
    env.run(&["verify"]).ok();
}

fn spec(image_type: &str, disks: usize, boot: BootSpec) -> VmSpec {
    VmSpec {
        image: "img".to_owned(),
        image_type: image_type.to_owned(),
        storage: (0..disks)
            .map(|n| DiskSpec {
                path: PathBuf::from(format!("/store/blobs/{n},x.erofs")),
                ro: true,
                serial: format!("cocoon-layer{n}"),
                role: "layer".to_owned(),
            })
            .collect(),
        boot,
    }
}

fn kernel_boot() -> BootSpec {
    BootSpec::Kernel {
        kernel_path: "/k".into(),
        initrd_path: "/i".into(),
    }
}

/// The translation never lets QEMU guess: every disk has its format, read-only, its serial, in
/// order; commas in paths are escaped; what it cannot express is a clear error, not a VM.
#[test]
fn translation_states_formats_and_refuses_what_it_cannot_boot() {
    let argv = qemu_argv(&spec("oci", 2, kernel_boot()), &QemuOptions::default()).expect("oci");
    let drives: Vec<String> = argv
        .windows(2)
        .filter(|w| w[0] == "-drive")
        .map(|w| w[1].to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        drives,
        [
            "if=none,id=disk0,format=raw,readonly=on,file=/store/blobs/0,,x.erofs",
            "if=none,id=disk1,format=raw,readonly=on,file=/store/blobs/1,,x.erofs",
        ]
    );
    assert!(argv
        .iter()
        .any(|a| a == "virtio-blk-pci,drive=disk1,serial=cocoon-layer1"));

    let err = |s: &VmSpec| qemu_argv(s, &QemuOptions::default()).expect_err("refused");
    let mut writable = spec("oci", 1, kernel_boot());
    writable.storage[0].ro = false;
    assert!(matches!(err(&writable), TranslateError::Writable { .. }));
    assert!(matches!(
        err(&spec("vmdk", 1, kernel_boot())),
        TranslateError::UnknownType { .. }
    ));
    let firmware = BootSpec::Firmware {
        firmware_path: "/fw".into(),
    };
    assert!(matches!(
        err(&spec("oci", 1, firmware)),
        TranslateError::BootMismatch { .. }
    ));
    let e = err(&spec("oci", 300, kernel_boot()));
    assert!(
        matches!(e, TranslateError::TooManyDisks { count: 300, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("300 disks"), "{e}");
}
