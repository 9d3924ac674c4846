//! Real VMs for the boot tests: the guest kit of `scripts/vm-kit.sh` (a Debian kernel taken out
//! of its package, busybox, the kernel's virtio/EROFS/overlay modules), QEMU under TCG started
//! from the argv of `examples/boot_qemu/qemu.rs`, a hard timeout, and the guest's serial output.
//!
//! The guest's `/init` (`scripts/vm-guest-init.sh` + a body per test) prints every line meant for
//! the host as `imgstore-guest: …`, ends with `imgstore-guest: done` and powers off; a run that
//! times out, fails inside the guest, or never says `done` panics with the whole serial log.
//! KVM is used only when `IMGSTORE_VM_KVM=1` (nested KVM hangs on some hosts). VMs run one at a
//! time; each is killed after `IMGSTORE_VM_TIMEOUT` seconds (default 60) for a direct kernel
//! boot and twice that through UEFI firmware: under TCG on the busy 2-core machine (load 14–17)
//! a firmware boot reached init after 30–35 s, a direct kernel boot after 10–27 s.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "../../examples/boot_qemu/qemu.rs"]
pub mod qemu;

use qemu::{Accel, QemuOptions};

/// What the guest prefixes its lines with.
const GUEST: &str = "imgstore-guest: ";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kit directory (`vmlinuz`, `busybox`, `modules/`), fetched once per machine.
pub fn kit() -> &'static Path {
    static KIT: OnceLock<PathBuf> = OnceLock::new();
    KIT.get_or_init(|| {
        let out = Command::new(repo().join("scripts/vm-kit.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/vm-kit.sh");
        assert!(
            out.status.success(),
            "scripts/vm-kit.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// The guest kernel.
pub fn kernel() -> PathBuf {
    kit().join("vmlinuz")
}

/// Write an initrd to `out` whose `/init` runs `body` after the shared guest prelude.
pub fn initrd(body: &str, out: &Path) {
    kit();
    let body_file = out.with_extension("body.sh");
    std::fs::write(&body_file, body).expect("write initrd body");
    let status = Command::new(repo().join("scripts/vm-kit.sh"))
        .arg("initrd")
        .arg(out)
        .arg(&body_file)
        .stdin(Stdio::null())
        .status()
        .expect("run scripts/vm-kit.sh initrd");
    assert!(status.success(), "scripts/vm-kit.sh initrd failed");
}

/// Translation options for the tests: console on stdout, TCG unless asked otherwise, and a
/// kernel command line that tells the guest how many disks to wait for.
pub fn options(disks: usize) -> QemuOptions {
    QemuOptions {
        cmdline: format!("console=ttyS0 panic=-1 quiet imgstore.disks={disks}"),
        accel: if std::env::var("IMGSTORE_VM_KVM").is_ok_and(|v| v == "1") {
            Accel::Kvm
        } else {
            Accel::Tcg
        },
        ..QemuOptions::default()
    }
}

fn timeout() -> Duration {
    let secs = std::env::var("IMGSTORE_VM_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// A finished guest run.
#[derive(Debug)]
pub struct GuestRun {
    /// What the guest said, prefix removed, in order.
    pub said: Vec<String>,
    /// The whole serial output and QEMU's stderr.
    pub log: String,
    /// From starting QEMU to the guest's first line (its `/init` running).
    pub to_init: Duration,
    /// From starting QEMU to its exit.
    pub total: Duration,
}

impl GuestRun {
    /// Panic with the serial log unless the guest said exactly `line`.
    #[track_caller]
    pub fn assert_said(&self, line: &str) {
        assert!(
            self.said.iter().any(|s| s == line),
            "the guest never said {line:?}; it said:\n{}\nserial log:\n{}",
            self.said.join("\n"),
            self.log
        );
    }

    /// The lines the guest said that start with `prefix`.
    pub fn said_starting(&self, prefix: &str) -> Vec<&str> {
        self.said
            .iter()
            .filter(|s| s.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }
}

/// One VM at a time per test process: each TCG guest wants a whole core, and on a 2-core
/// machine concurrent guests only push each other towards the timeout.
static ONE_VM: Mutex<()> = Mutex::new(());

/// Run the direct-kernel-boot VM `argv` (from `qemu::qemu_argv` with `Console::Stdio`) to its
/// end.
pub fn boot(argv: &[OsString]) -> GuestRun {
    run_vm(argv, timeout())
}

/// Like [`boot`], for a VM that starts through UEFI firmware (twice the time allowed).
pub fn boot_firmware(argv: &[OsString]) -> GuestRun {
    run_vm(argv, timeout() * 2)
}

fn run_vm(argv: &[OsString], limit: Duration) -> GuestRun {
    let _turn = ONE_VM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {} (see scripts/deps.sh): {e}", argv[0].display()));
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send((Instant::now(), text)).is_err() {
                    return;
                }
            }
        }
        if !pending.is_empty() {
            let _ = tx.send((
                Instant::now(),
                String::from_utf8_lossy(&pending).into_owned(),
            ));
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = start + limit;
    let mut log = String::new();
    let mut said = Vec::new();
    let mut first_said = None;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                // Firmware and the kernel may put escape sequences before the guest's text.
                if let Some(pos) = line.find(GUEST) {
                    first_said.get_or_insert(at);
                    said.push(line[pos + GUEST.len()..].to_owned());
                }
                log.push_str(&line);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().expect("wait for qemu");
    let total = start.elapsed();
    let _ = reader.join();
    let qemu_err = err_reader.join().unwrap_or_default();
    if !qemu_err.is_empty() {
        log.push_str("--- qemu stderr ---\n");
        log.push_str(&qemu_err);
    }
    let cmd = qemu::shell_line(argv);
    assert!(
        !timed_out,
        "the VM did not power off within {limit:?} and was killed\ncommand: {cmd}\nserial log:\n{log}"
    );
    assert!(
        status.success(),
        "qemu exited with {status}\ncommand: {cmd}\nserial log:\n{log}"
    );
    let failed: Vec<&String> = said.iter().filter(|s| s.starts_with("FAIL")).collect();
    assert!(
        failed.is_empty(),
        "the guest failed: {failed:?}\ncommand: {cmd}\nserial log:\n{log}"
    );
    assert!(
        said.last().is_some_and(|s| s == "done"),
        "the guest did not finish its script\ncommand: {cmd}\nserial log:\n{log}"
    );
    GuestRun {
        said,
        log,
        to_init: first_said.map_or(total, |at| at - start),
        total,
    }
}
