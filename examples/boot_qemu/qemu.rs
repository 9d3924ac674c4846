//! The reference translation of what `imgstore config` returns into a QEMU command line.
//!
//! An embedding VM manager reads this as the contract of `config`: every storage entry becomes
//! one read-only disk, in order, with the serial as given and its format stated (never probed);
//! an OCI image boots its kernel and initrd directly; a cloud image boots through UEFI firmware.
//! The tests (`tests/it/boot.rs`) include this file and boot what it produces.
//!
//! Input is the JSON shape of `imgstore config -o json` (one element of the array), so a manager
//! that shells out to the CLI and one that calls `Store::config` (whose `VmConfig` serializes to
//! the same JSON) share one translation.

#![allow(dead_code)] // the tests and the example each use their own part

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One element of `imgstore config -o json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VmSpec {
    /// The image's name.
    pub image: String,
    /// `oci` or `cloudimg`: decides the disk format and the boot method.
    pub image_type: String,
    /// Disks in order (oci: base layer first).
    pub storage: Vec<DiskSpec>,
    /// Kernel + initrd, or firmware.
    pub boot: BootSpec,
}

/// One storage entry.
#[derive(Debug, Clone, Deserialize)]
pub struct DiskSpec {
    /// The blob to attach.
    pub path: PathBuf,
    /// Whether the guest must not write it (always true for what the store returns).
    pub ro: bool,
    /// Serial the guest sees.
    pub serial: String,
    /// `layer`.
    pub role: String,
}

/// How the VM starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BootSpec {
    /// Direct kernel boot.
    Kernel {
        /// The kernel image.
        kernel_path: PathBuf,
        /// The initrd.
        initrd_path: PathBuf,
    },
    /// UEFI firmware boot.
    Firmware {
        /// The firmware code image.
        firmware_path: PathBuf,
    },
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone)]
pub enum Console {
    /// QEMU's stdout.
    Stdio,
    /// A file (created or truncated).
    File(PathBuf),
}

/// CPU acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Emulation: works everywhere, including nested guests where KVM does not.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
}

/// What the VM manager decides; the store says nothing about it.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Guest memory.
    pub memory_mib: u32,
    /// Kernel command line for direct kernel boot.
    pub cmdline: String,
    /// A writable copy of the firmware's variable store (`OVMF_VARS`), given as a second pflash;
    /// without it the firmware is loaded with `-bios` (a combined OVMF.fd).
    pub firmware_vars: Option<PathBuf>,
    /// How many disks go on their own virtio-blk PCI slot; beyond that, all disks go on one
    /// virtio-scsi controller. `-M pc -nodefaults` has 30 free PCI slots (QEMU 7.2 took a 30th
    /// virtio-blk-pci and refused a 31st).
    pub max_virtio_blk: usize,
    /// Serial console.
    pub console: Console,
    /// Acceleration.
    pub accel: Accel,
}

impl Default for QemuOptions {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            memory_mib: 256,
            cmdline: "console=ttyS0 panic=-1".to_owned(),
            firmware_vars: None,
            max_virtio_blk: MAX_VIRTIO_BLK,
            console: Console::Stdio,
            accel: Accel::Tcg,
        }
    }
}

/// Default for [`QemuOptions::max_virtio_blk`]: leaves 6 of the 30 free slots of `-M pc -nodefaults`
/// for a NIC and other devices.
pub const MAX_VIRTIO_BLK: usize = 24;
/// Targets of one virtio-scsi controller as QEMU numbers them (`scsi-id` 0..=255).
pub const MAX_VIRTIO_SCSI: usize = 256;

/// Why a spec cannot be turned into a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// An `image_type` this translation does not know: guessing a disk format is never safe.
    #[error("image {image}: unknown image_type {image_type:?} (expected oci or cloudimg)")]
    UnknownType {
        /// The image.
        image: String,
        /// What the spec said.
        image_type: String,
    },
    /// A disk the store did not mark read-only: blobs are shared and must never be written.
    #[error("image {image}: disk {} is not read-only; refusing to attach a shared blob writable", path.display())]
    Writable {
        /// The image.
        image: String,
        /// The disk.
        path: PathBuf,
    },
    /// The boot method does not match the image type.
    #[error("image {image}: a {image_type} image cannot boot with {boot}")]
    BootMismatch {
        /// The image.
        image: String,
        /// Its type.
        image_type: String,
        /// What the spec gave.
        boot: &'static str,
    },
    /// No disks at all.
    #[error("image {image}: no storage entries")]
    NoDisks {
        /// The image.
        image: String,
    },
    /// More disks than one virtio-scsi controller takes.
    #[error("image {image}: {count} disks, more than the {MAX_VIRTIO_SCSI} one virtio-scsi controller takes")]
    TooManyDisks {
        /// The image.
        image: String,
        /// How many disks.
        count: usize,
    },
}

/// QEMU quotes commas in option values by doubling them.
fn escape(path: &Path) -> OsString {
    let s = path.as_os_str().to_string_lossy();
    OsString::from(s.replace(',', ",,"))
}

fn opt(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}

/// The full argv (program first) that boots `spec`.
///
/// # Errors
/// An unknown image type, a disk not marked read-only, a boot method that does not match the
/// type, no disks, or more disks than virtio-scsi takes.
pub fn qemu_argv(spec: &VmSpec, opts: &QemuOptions) -> Result<Vec<OsString>, TranslateError> {
    let format = disk_format(spec)?;
    let mut argv = machine_args(opts);
    argv.extend(boot_args(spec, opts)?);
    argv.extend(disk_args(spec, format, opts));
    Ok(argv)
}

/// The format of every disk of `spec`, after checking the disks can be attached at all.
fn disk_format(spec: &VmSpec) -> Result<&'static str, TranslateError> {
    let image = || spec.image.clone();
    // The format follows from the image type, never from the file's bytes: a guest could write
    // a qcow2 header into a raw disk and have a prober open files of the host.
    let format = match spec.image_type.as_str() {
        "oci" => "raw",
        "cloudimg" => "qcow2",
        other => {
            return Err(TranslateError::UnknownType {
                image: image(),
                image_type: other.to_owned(),
            })
        }
    };
    if spec.storage.is_empty() {
        return Err(TranslateError::NoDisks { image: image() });
    }
    if let Some(d) = spec.storage.iter().find(|d| !d.ro) {
        return Err(TranslateError::Writable {
            image: image(),
            path: d.path.clone(),
        });
    }
    if spec.storage.len() > MAX_VIRTIO_SCSI {
        return Err(TranslateError::TooManyDisks {
            image: image(),
            count: spec.storage.len(),
        });
    }
    Ok(format)
}

/// Program, machine, memory, acceleration, console: nothing the image decides.
fn machine_args(opts: &QemuOptions) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![opts.qemu.clone().into_os_string()];
    let mut push = |a: &[&str]| argv.extend(a.iter().map(OsString::from));
    push(&[
        "-M",
        "pc",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]);
    push(&["-no-reboot", "-m", &opts.memory_mib.to_string()]);
    match opts.accel {
        Accel::Tcg => push(&["-accel", "tcg"]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
    }
    argv.push("-serial".into());
    argv.push(match &opts.console {
        Console::Stdio => "stdio".into(),
        Console::File(p) => opt(&[&"file:", &escape(p)]),
    });
    argv
}

/// Direct kernel boot for OCI images, UEFI firmware for cloud images.
fn boot_args(spec: &VmSpec, opts: &QemuOptions) -> Result<Vec<OsString>, TranslateError> {
    let mut argv: Vec<OsString> = Vec::new();
    match (&spec.boot, spec.image_type.as_str()) {
        (
            BootSpec::Kernel {
                kernel_path,
                initrd_path,
            },
            "oci",
        ) => {
            argv.push("-kernel".into());
            argv.push(kernel_path.clone().into_os_string());
            argv.push("-initrd".into());
            argv.push(initrd_path.clone().into_os_string());
            argv.push("-append".into());
            argv.push(opts.cmdline.clone().into());
        }
        (BootSpec::Firmware { firmware_path }, "cloudimg") => {
            if let Some(vars) = &opts.firmware_vars {
                argv.push("-drive".into());
                argv.push(opt(&[
                    &"if=pflash,format=raw,unit=0,readonly=on,file=",
                    &escape(firmware_path),
                ]));
                argv.push("-drive".into());
                argv.push(opt(&[&"if=pflash,format=raw,unit=1,file=", &escape(vars)]));
            } else {
                argv.push("-bios".into());
                argv.push(firmware_path.clone().into_os_string());
            }
        }
        (boot, _) => {
            return Err(TranslateError::BootMismatch {
                image: spec.image.clone(),
                image_type: spec.image_type.clone(),
                boot: match boot {
                    BootSpec::Kernel { .. } => "a kernel and initrd",
                    BootSpec::Firmware { .. } => "firmware",
                },
            })
        }
    }
    Ok(argv)
}

/// One read-only disk per storage entry, in order, with its serial: each on its own virtio-blk
/// slot, or all on one virtio-scsi controller when there are more than the slots allowed.
fn disk_args(spec: &VmSpec, format: &str, opts: &QemuOptions) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    let scsi = spec.storage.len() > opts.max_virtio_blk;
    if scsi {
        argv.push("-device".into());
        argv.push("virtio-scsi-pci,id=scsi0".into());
    }
    for (n, disk) in spec.storage.iter().enumerate() {
        argv.push("-drive".into());
        argv.push(opt(&[
            &format!("if=none,id=disk{n},format={format},readonly=on,file="),
            &escape(&disk.path),
        ]));
        argv.push("-device".into());
        let serial = disk.serial.replace(',', ",,");
        argv.push(if scsi {
            format!("scsi-hd,bus=scsi0.0,channel=0,scsi-id={n},lun=0,drive=disk{n},serial={serial}")
                .into()
        } else {
            format!("virtio-blk-pci,drive=disk{n},serial={serial}").into()
        });
    }
    argv
}

/// The argv as one line a shell accepts (single quotes where needed), for printing.
pub fn shell_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
