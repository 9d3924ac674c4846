//! flock guards (shared/exclusive, wait policies, timeouts); knows nothing of what it protects.
//!
//! Two kinds of lock file exist:
//! - files that are never deleted (`db/images.lock`), locked with [`lock_file`];
//! - files that garbage collection may delete (`temp/<hex>.lock`, one per digest), locked with
//!   [`lock_deletable`]. After `flock` succeeds, the inode of the open file is compared with the
//!   inode now at the path; if they differ (or the path is gone) the lock was taken on an orphan
//!   and the whole open-and-lock is retried. Only the holder of such a lock may delete the file,
//!   through [`LockGuard::remove_locked_file`].
//!
//! # Lock order
//! Digest locks first, sorted by digest, then a backend's gc lease (`db/gc.lock`), then the index
//! locks — always, in every process (docs/design.md §2). Neither the lease nor an index lock is
//! ever held across a download or a conversion: the index lock covers only load, edit and save
//! of `images.json`, the lease an ingest's reuse-or-publish decision and commit.
//!
//! Every lock uses std's `File::lock` family, which is `flock(2)` on Linux: locks belong to the
//! open file description and vanish when the holder closes it or dies. This module never creates
//! anything but lock files and their parent directories, and deletes only through
//! [`crate::fsutil`].

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{io_err, IoError};
use crate::fsutil;

/// Mode of lock files this module creates.
const LOCK_FILE_MODE: u32 = 0o600;
/// First pause between two attempts of a timed wait.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest pause between two attempts of a timed wait.
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// A lock failure, naming the lock file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by someone else and the policy was not to wait.
    #[error("lock on {} is held by another process", path.display())]
    WouldBlock {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock stayed busy for the whole timeout.
    #[error(
        "timed out after {} waiting for lock on {}",
        crate::human::HumanDuration(*waited),
        path.display()
    )]
    Timeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Error {
    /// The lock file this error is about.
    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            Error::WouldBlock { path } | Error::Timeout { path, .. } => path,
            Error::Io(e) => e.path(),
        }
    }
}

/// Shared (many readers) or exclusive (one writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once; excludes exclusive holders. (Index readers take no lock; the lock
    /// tests keep exercising shared holders.)
    #[cfg_attr(not(feature = "unstable"), allow(dead_code))]
    Shared,
    /// One holder; excludes everyone else.
    Exclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Forever,
    Never,
    Upto(Duration),
}

/// How long to wait for a busy lock: [`LockWait::blocking`], [`LockWait::no_wait`] or
/// [`LockWait::timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockWait(Policy);

impl LockWait {
    /// Wait as long as it takes.
    #[must_use]
    pub const fn blocking() -> Self {
        Self(Policy::Forever)
    }

    /// Fail at once with [`Error::WouldBlock`] if the lock is busy.
    #[must_use]
    pub const fn no_wait() -> Self {
        Self(Policy::Never)
    }

    /// Wait at most `limit`, then fail with [`Error::Timeout`].
    #[must_use]
    pub const fn timeout(limit: Duration) -> Self {
        Self(Policy::Upto(limit))
    }
}

impl Default for LockWait {
    fn default() -> Self {
        Self::blocking()
    }
}

/// A held lock. Dropping it unlocks and closes the file.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
    mode: Mode,
}

impl LockGuard {
    /// The lock file.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How it is held.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The locked file, for a lock that is also the data it guards (a partial download).
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the locked file is still the one at [`LockGuard::path`] (same device and inode).
    pub fn is_current(&self) -> Result<bool, Error> {
        same_file_at(&self.file, &self.path)
    }

    /// Delete a deletable lock file while still holding it exclusively, then unlock. Waiters
    /// blocked on the old file wake up, see it is gone and retry on a fresh one.
    ///
    /// Panics if the lock is shared: deleting under a shared lock would race other holders.
    pub fn remove_locked_file(self) -> Result<(), Error> {
        assert_eq!(
            self.mode,
            Mode::Exclusive,
            "remove_locked_file needs an exclusive lock on {}",
            self.path.display()
        );
        // Only remove the file we hold; a path now naming another inode belongs to someone else.
        if self.is_current()? {
            fsutil::remove_file(&self.path)?;
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the fd would unlock too; unlocking explicitly also covers a duplicated fd.
        let _ = self.file.unlock();
    }
}

/// Whether `file` is the inode currently at `path`; `Ok(false)` if the path is gone.
fn same_file_at(file: &File, path: &Path) -> Result<bool, Error> {
    let held = file
        .metadata()
        .map_err(io_err("inspecting locked file", path))?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("inspecting lock file", path)(e).into()),
    }
}

fn open_lock_file(path: &Path) -> Result<File, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsutil::create_dir_all(dir)?;
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(LOCK_FILE_MODE)
        .open(path);
    match opened {
        Ok(f) => Ok(f),
        // flock works on a read-only fd: a reader without write access to an existing lock file
        // (another user's store) can still take it.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Ok(File::open(path).map_err(io_err("opening lock file", path))?)
        }
        Err(e) => Err(io_err("opening lock file", path)(e).into()),
    }
}

/// State of one acquisition, kept across the retries of [`lock_deletable`].
struct Acquire<'a> {
    wait: LockWait,
    on_wait: &'a dyn Fn(&Path),
    started: Instant,
    announced: bool,
}

impl<'a> Acquire<'a> {
    fn new(wait: LockWait, on_wait: &'a dyn Fn(&Path)) -> Self {
        Self {
            wait,
            on_wait,
            started: Instant::now(),
            announced: false,
        }
    }

    fn try_once(file: &File, mode: Mode) -> Result<bool, io::Error> {
        let r = match mode {
            Mode::Shared => file.try_lock_shared(),
            Mode::Exclusive => file.try_lock(),
        };
        match r {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn announce(&mut self, path: &Path) {
        if !self.announced {
            self.announced = true;
            (self.on_wait)(path);
        }
    }

    /// Lock `file` according to the policy; the deadline counts from the first attempt.
    fn lock(&mut self, file: &File, path: &Path, mode: Mode) -> Result<(), Error> {
        let lock_err = io_err("locking", path);
        if Self::try_once(file, mode).map_err(io_err("locking", path))? {
            return Ok(());
        }
        match self.wait.0 {
            Policy::Never => Err(Error::WouldBlock {
                path: path.to_path_buf(),
            }),
            Policy::Forever => {
                self.announce(path);
                loop {
                    let r = match mode {
                        Mode::Shared => file.lock_shared(),
                        Mode::Exclusive => file.lock(),
                    };
                    match r {
                        Ok(()) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(lock_err(e).into()),
                    }
                }
            }
            Policy::Upto(limit) => {
                self.announce(path);
                let mut pause = BACKOFF_MIN;
                loop {
                    let waited = self.started.elapsed();
                    if waited >= limit {
                        return Err(Error::Timeout {
                            path: path.to_path_buf(),
                            waited,
                        });
                    }
                    std::thread::sleep(pause.min(limit.saturating_sub(waited)));
                    pause = (pause * 2).min(BACKOFF_MAX);
                    if Self::try_once(file, mode).map_err(io_err("locking", path))? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Lock a lock file that is never deleted (`db/images.lock`): create it (0600, parent
/// directories 0750) if missing, then `flock` it. `on_wait` is called once if the lock is busy
/// and the policy waits.
pub fn lock_file(
    path: &Path,
    mode: Mode,
    wait: LockWait,
    on_wait: &dyn Fn(&Path),
) -> Result<LockGuard, Error> {
    let file = open_lock_file(path)?;
    Acquire::new(wait, on_wait).lock(&file, path, mode)?;
    Ok(LockGuard {
        file,
        path: path.to_path_buf(),
        mode,
    })
}

/// Try to lock, exclusively and without waiting, a lock file someone else owns and that must
/// not be created (cocoon's `blobs/<hex>.lock`): `Ok(None)` if it does not exist,
/// [`Error::WouldBlock`] if it is held.
pub fn try_existing(path: &Path) -> Result<Option<LockGuard>, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening lock file", path)(e).into()),
    };
    Acquire::new(LockWait::no_wait(), &|_| {}).lock(&file, path, Mode::Exclusive)?;
    Ok(Some(LockGuard {
        file,
        path: path.to_path_buf(),
        mode: Mode::Exclusive,
    }))
}

/// Lock, exclusively, a lock file that garbage collection may delete (`temp/<hex>.lock`), using
/// the lock-then-check protocol: retry until the locked inode is the one at `path`.
/// The wait policy's deadline covers all retries; `on_wait` is called at most once.
pub fn lock_deletable(
    path: &Path,
    wait: LockWait,
    on_wait: &dyn Fn(&Path),
) -> Result<LockGuard, Error> {
    let mut acquire = Acquire::new(wait, on_wait);
    loop {
        let file = open_lock_file(path)?;
        acquire.lock(&file, path, Mode::Exclusive)?;
        if same_file_at(&file, path)? {
            // Several names on one inode are the batch lock of a collector of an older version
            // (it linked digest lock names to one held file) left behind by a crash: holding
            // it, drop this name and lock a private file, so two digests never share (and
            // self-deadlock on) one lock.
            let links = file.metadata().map_or(1, |m| m.nlink());
            if links > 1 {
                fsutil::remove_file(path)?;
                let _ = file.unlock();
                continue;
            }
            return Ok(LockGuard {
                file,
                path: path.to_path_buf(),
                mode: Mode::Exclusive,
            });
        }
        // We locked an orphan: its holder deleted (and maybe someone recreated) the path.
        let _ = file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_file_0600_and_parents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/images.lock");
        let g = lock_file(&p, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap();
        assert_eq!(g.mode(), Mode::Exclusive);
        assert_eq!(g.path(), p);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(g);
        assert!(p.exists(), "a never-deleted lock file stays after unlock");
    }

    #[test]
    fn second_fd_in_same_process_is_excluded_until_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let called = Cell::new(0);
        let g = lock_file(&p, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap();
        let e = lock_file(&p, Mode::Shared, LockWait::no_wait(), &|_| {
            called.set(called.get() + 1);
        })
        .unwrap_err();
        assert!(matches!(e, Error::WouldBlock { .. }), "{e}");
        assert_eq!(called.get(), 0, "no_wait never announces a wait");
        let e = lock_file(
            &p,
            Mode::Exclusive,
            LockWait::timeout(Duration::from_millis(20)),
            &|_| called.set(called.get() + 1),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()));
        assert_eq!(called.get(), 1);
        drop(g);
        lock_file(&p, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap();
    }

    #[test]
    fn deletable_retries_after_removal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("temp/x.lock");
        let g = lock_deletable(&p, LockWait::no_wait(), &|_| {}).unwrap();
        assert!(g.is_current().unwrap());
        g.remove_locked_file().unwrap();
        assert!(!p.exists());
        let g = lock_deletable(&p, LockWait::no_wait(), &|_| {}).unwrap();
        assert!(g.is_current().unwrap());
    }
}
