//! Boot an image of the store in QEMU: `Store::config` → [`qemu::qemu_argv`] → QEMU.
//!
//! ```text
//! boot_qemu [--root DIR] [--firmware FD] [--vars FILE] [--append CMDLINE] [--run] ID
//! boot_qemu --json FILE|- [--vars FILE] [--append CMDLINE] [--run]
//! ```
//! Prints the command line (one per image); `--run` also starts it with the console on this
//! terminal. `--json` reads the output of `imgstore config -o json` instead of opening a store.
//! TCG unless `IMGSTORE_VM_KVM=1`.

mod qemu;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use imgstore::store::{Boot, Store, StoreOptions, VmConfig};
use qemu::{Accel, BootSpec, DiskSpec, QemuOptions, VmSpec};

/// What an embedder holds after `Store::config`, in the translation's terms.
fn spec_of(c: &VmConfig) -> VmSpec {
    VmSpec {
        image: c.image.clone(),
        image_type: c.image_type.to_string(),
        storage: c
            .storage
            .iter()
            .map(|d| DiskSpec {
                path: d.path.clone(),
                ro: d.ro,
                serial: d.serial.clone(),
                role: d.role.to_string(),
            })
            .collect(),
        boot: match &c.boot {
            Boot::Kernel {
                kernel_path,
                initrd_path,
            } => BootSpec::Kernel {
                kernel_path: kernel_path.clone(),
                initrd_path: initrd_path.clone(),
            },
            Boot::Firmware { firmware_path } => BootSpec::Firmware {
                firmware_path: firmware_path.clone(),
            },
        },
    }
}

#[derive(Default)]
struct Args {
    root: Option<PathBuf>,
    firmware: Option<PathBuf>,
    json: Option<String>,
    run: bool,
    ids: Vec<String>,
    opts: QemuOptions,
}

fn parse() -> Result<Args, String> {
    let mut a = Args::default();
    if std::env::var("IMGSTORE_VM_KVM").is_ok_and(|v| v == "1") {
        a.opts.accel = Accel::Kvm;
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--root" => a.root = Some(value()?.into()),
            "--firmware" => a.firmware = Some(value()?.into()),
            "--vars" => a.opts.firmware_vars = Some(value()?.into()),
            "--append" => a.opts.cmdline = value()?,
            "--json" => a.json = Some(value()?),
            "--run" => a.run = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => a.ids.push(arg),
        }
    }
    if a.json.is_none() == a.ids.is_empty() {
        return Err("give either image IDs or --json".to_owned());
    }
    Ok(a)
}

fn specs(a: &Args) -> Result<Vec<VmSpec>, String> {
    if let Some(src) = &a.json {
        let mut text = String::new();
        if src == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("reading stdin: {e}"))?;
        } else {
            text = std::fs::read_to_string(src).map_err(|e| format!("reading {src}: {e}"))?;
        }
        return serde_json::from_str(&text).map_err(|e| format!("{src}: not config JSON: {e}"));
    }
    let root = a.root.clone().unwrap_or_else(imgstore::store::default_root);
    let opts = StoreOptions {
        firmware: a.firmware.clone(),
        ..StoreOptions::default()
    };
    let store = Store::open_opts(&root, opts).map_err(|e| e.to_string())?;
    let ids: Vec<&str> = a.ids.iter().map(String::as_str).collect();
    let configs = store.config(&ids).map_err(|e| e.to_string())?;
    Ok(configs.iter().map(spec_of).collect())
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("usage: boot_qemu [--root DIR] [--firmware FD] [--vars FILE] [--append CMDLINE] [--run] ID | --json FILE|-");
            return ExitCode::from(2);
        }
    };
    let specs = match specs(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for spec in &specs {
        let argv = match qemu::qemu_argv(spec, &a.opts) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", qemu::shell_line(&argv));
        if a.run {
            match Command::new(&argv[0]).args(&argv[1..]).status() {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    eprintln!("error: {} exited with {s}", argv[0].to_string_lossy());
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("error: starting {}: {e}", argv[0].to_string_lossy());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}
