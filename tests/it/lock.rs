//! flock guards across real processes: exclusion, sharing, waiting, timeouts, and the
//! lock-then-check protocol of deletable lock files.

use std::cell::Cell;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use imgstore::lock::{self, Error, LockWait, Mode};

use crate::support::{self, await_signal, signal, wait_for_file, Proc};

const LOCKER: &str = "lock::child_locker";

/// Child role: take a lock as told by its parameters, write the outcome to `OUT`, and if it got
/// the lock hold it until the file `RELEASE` appears.
#[test]
fn child_locker() {
    let Some(args) = support::child_args("locker") else {
        return;
    };
    let path = PathBuf::from(&args["PATH"]);
    let out = PathBuf::from(&args["OUT"]);
    let wait = match args["WAIT"].as_str() {
        "no_wait" => LockWait::no_wait(),
        "blocking" => LockWait::blocking(),
        t => LockWait::timeout(Duration::from_millis(
            t.strip_prefix("timeout_ms:").unwrap().parse().unwrap(),
        )),
    };
    let waits = Cell::new(0u32);
    let waiting_marker = marker(&out, "waiting");
    let on_wait = |p: &Path| {
        assert_eq!(p, path, "on_wait names the lock file");
        waits.set(waits.get() + 1);
        signal(&waiting_marker, "");
    };
    let result = match args["MODE"].as_str() {
        "shared" => lock::lock_file(&path, Mode::Shared, wait, &on_wait),
        "exclusive" => lock::lock_file(&path, Mode::Exclusive, wait, &on_wait),
        "deletable" => lock::lock_deletable(&path, wait, &on_wait),
        m => panic!("unknown mode {m}"),
    };
    match result {
        Ok(guard) => {
            signal(
                &out,
                &format!("acquired current={}", guard.is_current().unwrap()),
            );
            if let Some(release) = args.get("RELEASE") {
                await_signal(Path::new(release));
            }
            drop(guard);
        }
        Err(Error::WouldBlock { path: p }) => {
            assert_eq!(p, path);
            signal(&out, &format!("wouldblock on_wait={}", waits.get()));
        }
        Err(e @ Error::Timeout { .. }) => {
            assert_eq!(e.path(), path);
            let names_path = e.to_string().contains(&path.display().to_string());
            signal(
                &out,
                &format!("timeout names_path={names_path} on_wait={}", waits.get()),
            );
        }
        Err(e) => panic!("unexpected lock error: {e}"),
    }
}

fn marker(out: &Path, what: &str) -> PathBuf {
    let mut m = out.as_os_str().to_owned();
    m.push(format!(".{what}"));
    PathBuf::from(m)
}

/// A child process taking `path` in `mode` with `wait`; its outcome goes to `dir/<name>.out`.
struct Locker {
    proc: Proc,
    out: PathBuf,
    release: PathBuf,
}

impl Locker {
    fn spawn(dir: &Path, name: &str, path: &Path, mode: &str, wait: &str) -> Self {
        let out = dir.join(format!("{name}.out"));
        let release = dir.join(format!("{name}.release"));
        let proc = support::spawn(
            LOCKER,
            "locker",
            dir,
            &[
                ("PATH", path.to_str().unwrap()),
                ("MODE", mode),
                ("WAIT", wait),
                ("OUT", out.to_str().unwrap()),
                ("RELEASE", release.to_str().unwrap()),
            ],
        );
        Self { proc, out, release }
    }

    /// Wait for the outcome line.
    fn outcome(&mut self) -> String {
        wait_for_file(&self.out, &mut self.proc);
        std::fs::read_to_string(&self.out).unwrap()
    }

    /// Wait until the child reports it is waiting for the lock.
    fn wait_until_waiting(&mut self) {
        wait_for_file(&marker(&self.out, "waiting"), &mut self.proc);
    }

    fn release(self) {
        signal(&self.release, "");
        self.proc.finish();
    }

    /// Run to completion and return the outcome (for children that do not get the lock).
    fn run(mut self) -> String {
        let o = self.outcome();
        self.release();
        o
    }
}

fn try_lock_at(path: &Path) -> Result<File, TryLockError> {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    f.try_lock()?;
    Ok(f)
}

#[test]
fn exclusive_excludes_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db/images.lock");
    let guard = lock::lock_file(&p, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap();
    let o = Locker::spawn(dir.path(), "a", &p, "exclusive", "no_wait").run();
    assert_eq!(o, "wouldblock on_wait=0");
    let o = Locker::spawn(dir.path(), "b", &p, "shared", "no_wait").run();
    assert_eq!(o, "wouldblock on_wait=0");
    drop(guard);
    let o = Locker::spawn(dir.path(), "c", &p, "exclusive", "no_wait").run();
    assert_eq!(o, "acquired current=true", "released on drop");
}

#[test]
fn shared_locks_coexist_and_exclude_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("images.lock");
    let mut a = Locker::spawn(dir.path(), "a", &p, "shared", "no_wait");
    assert_eq!(a.outcome(), "acquired current=true");
    let mine = lock::lock_file(&p, Mode::Shared, LockWait::no_wait(), &|_| {}).unwrap();
    assert_eq!(mine.mode(), Mode::Shared);
    let mut b = Locker::spawn(dir.path(), "b", &p, "shared", "no_wait");
    assert_eq!(b.outcome(), "acquired current=true");
    let e = lock::lock_file(&p, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap_err();
    assert!(matches!(e, Error::WouldBlock { .. }), "{e}");
    a.release();
    b.release();
    drop(mine);
    lock::lock_file(&p, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap();
}

#[test]
fn exclusive_waits_for_shared() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("images.lock");
    let mut reader = Locker::spawn(dir.path(), "reader", &p, "shared", "no_wait");
    assert_eq!(reader.outcome(), "acquired current=true");
    let mut writer = Locker::spawn(dir.path(), "writer", &p, "exclusive", "blocking");
    writer.wait_until_waiting();
    assert!(
        !writer.out.exists(),
        "the writer cannot hold the lock while the reader does"
    );
    reader.release();
    assert_eq!(writer.outcome(), "acquired current=true");
    let e = lock::lock_file(&p, Mode::Shared, LockWait::no_wait(), &|_| {}).unwrap_err();
    assert!(
        matches!(e, Error::WouldBlock { .. }),
        "writer holds it: {e}"
    );
    writer.release();
}

#[test]
fn timeout_names_the_path_and_announces_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("images.lock");
    let guard = lock::lock_file(&p, Mode::Shared, LockWait::no_wait(), &|_| {}).unwrap();
    let o = Locker::spawn(dir.path(), "t", &p, "exclusive", "timeout_ms:150").run();
    assert_eq!(o, "timeout names_path=true on_wait=1");
    let o = Locker::spawn(dir.path(), "d", &p, "deletable", "timeout_ms:50").run();
    assert_eq!(o, "timeout names_path=true on_wait=1");
    // Not busy: a timed wait succeeds without announcing anything.
    drop(guard);
    let o = Locker::spawn(dir.path(), "ok", &p, "exclusive", "timeout_ms:150").run();
    assert_eq!(o, "acquired current=true");
    assert!(!marker(&dir.path().join("ok.out"), "waiting").exists());
}

/// A waiter blocked on a deletable lock file whose holder deletes it must not end up holding the
/// deleted inode (two "holders" of one digest): it re-checks and locks the file now at the path.
#[test]
fn deletable_lock_follows_removal() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("temp/abc.lock");
    let holder = lock::lock_deletable(&p, LockWait::no_wait(), &|_| {}).unwrap();
    let mut waiter = Locker::spawn(dir.path(), "w", &p, "deletable", "blocking");
    waiter.wait_until_waiting();
    holder.remove_locked_file().unwrap();
    assert_eq!(waiter.outcome(), "acquired current=true");
    // Independent check: the file now at the path is the one the waiter holds.
    assert!(matches!(try_lock_at(&p), Err(TryLockError::WouldBlock)));
    waiter.release();
    assert!(try_lock_at(&p).is_ok());
}

/// The path is replaced by a new, locked file while a waiter is blocked on the old one: when the
/// old one is unlocked, the waiter must notice the inode changed and wait for the new one.
#[test]
fn deletable_lock_follows_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("temp/abc.lock");
    let old = lock::lock_deletable(&p, LockWait::no_wait(), &|_| {}).unwrap();
    let mut waiter = Locker::spawn(dir.path(), "w", &p, "deletable", "blocking");
    waiter.wait_until_waiting();
    let staged = dir.path().join("temp/new.lock");
    let new = File::create(&staged).unwrap();
    new.lock().unwrap();
    std::fs::rename(&staged, &p).unwrap();
    assert!(!old.is_current().unwrap());
    drop(old);
    // The waiter wakes on the orphan, sees the new inode, and must block on it: it cannot report
    // success while we hold the new file. (With no inode check it would, with current=false.)
    waiter.proc.assert_running();
    assert!(!waiter.out.exists(), "waiter holds the orphaned file");
    drop(new);
    assert_eq!(waiter.outcome(), "acquired current=true");
    assert!(matches!(try_lock_at(&p), Err(TryLockError::WouldBlock)));
    waiter.release();
}

/// `remove_locked_file` leaves a path alone that no longer names the held file.
#[test]
fn remove_locked_file_spares_a_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.lock");
    let g = lock::lock_deletable(&p, LockWait::no_wait(), &|_| {}).unwrap();
    std::fs::write(dir.path().join("y"), b"other").unwrap();
    std::fs::rename(dir.path().join("y"), &p).unwrap();
    g.remove_locked_file().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"other");
}
