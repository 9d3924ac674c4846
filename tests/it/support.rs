//! Helpers for tests that need several real processes: the test binary re-runs itself with
//! `--exact <test>` and a role in the environment; the named `#[test]` acts only when its role
//! is set, so in a normal run it returns at once.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the role a child process plays.
const ROLE_ENV: &str = "IMGSTORE_CHILD_ROLE";
/// Prefix of the variables passing parameters to a child.
const ARG_PREFIX: &str = "IMGSTORE_CHILD_ARG_";

/// Longest a test waits for a child to reach a step before failing (a hang, not a timing check).
const PATIENCE: Duration = Duration::from_secs(120);

/// The role of this process and its parameters if it was spawned by [`spawn`] for `role`.
pub fn child_args(role: &str) -> Option<HashMap<String, String>> {
    if std::env::var(ROLE_ENV).ok()? != role {
        return None;
    }
    Some(
        std::env::vars()
            .filter_map(|(k, v)| k.strip_prefix(ARG_PREFIX).map(|k| (k.to_owned(), v)))
            .collect(),
    )
}

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// A child process with its log file.
pub struct Proc {
    child: Child,
    log: PathBuf,
    what: String,
}

/// Run the test `test` (full path, e.g. `lock::child_locker`) in a new process as `role`, with
/// parameters `args`; its output goes to `log_dir/<role>.<pid>.log`.
pub fn spawn(test: &str, role: &str, log_dir: &Path, args: &[(&str, &str)]) -> Proc {
    let exe = std::env::current_exe().expect("test binary path");
    let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
    let log = log_dir.join(format!("{role}.{n}.log"));
    let out = File::create(&log).expect("creating child log");
    let err = out.try_clone().expect("cloning child log");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in args {
        cmd.env(format!("{ARG_PREFIX}{k}"), v);
    }
    let child = cmd.spawn().expect("spawning child test process");
    Proc {
        child,
        log,
        what: format!("{role} ({test})"),
    }
}

impl Proc {
    /// Wait for the child and panic with its log unless it succeeded.
    pub fn finish(mut self) {
        let status = self.child.wait().expect("waiting for child");
        assert!(
            status.success(),
            "child {} failed with {status}; its log:\n{}",
            self.what,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL the child and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panic with the log if the child has already exited (it should still be running).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("polling child") {
            panic!(
                "child {} exited early with {status}; its log:\n{}",
                self.what,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Wait until `path` exists, failing after a long while (or at once if `proc` died).
pub fn wait_for_file(path: &Path, proc: &mut Proc) {
    let start = Instant::now();
    while !path.exists() {
        proc.assert_running();
        assert!(
            start.elapsed() < PATIENCE,
            "{} never appeared (child {})",
            path.display(),
            proc.what
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// In a child: wait until `path` exists (the parent's signal), failing after a long while.
pub fn await_signal(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < PATIENCE,
            "signal {} never came",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Create `path` as a signal to another process (written fully before it appears).
pub fn signal(path: &Path, content: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".signal-tmp");
    std::fs::write(&tmp, content).expect("writing signal");
    std::fs::rename(&tmp, path).expect("publishing signal");
}
