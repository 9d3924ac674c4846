//! Filesystem mutations: no-clobber publish, atomic durable writes, removal, directory fsync, and
//! self-deleting temp files. This is the only module that renames or deletes anything in a store;
//! it knows nothing of digests, indexes or locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

mod dir;
pub use dir::{Dir, EntryStat};

/// A filesystem operation that failed: every failure here is an I/O error with its action and
/// path.
pub use crate::error::IoError as Error;

use crate::error::io_err;

/// Mode of directories imgstore creates.
pub const DIR_MODE: u32 = 0o750;
/// Mode of published blobs and boot files: read-only, never rewritten.
pub const BLOB_MODE: u32 = 0o444;

/// Create `dir` and its missing parents with mode 0750.
pub fn create_dir_all(dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("creating directory", dir))
}

/// fsync a directory, making renames and unlinks inside it durable.
pub fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Outcome of [`publish_noclobber`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// `src` was moved to `dest`.
    New,
    /// `dest` already existed and was left alone; `src` is still in place for the caller to drop.
    Existing,
}

/// Make `src` read-only and move it to `dest` unless `dest` exists, then fsync `dest`'s directory.
///
/// Uses `renameat2(RENAME_NOREPLACE)`, falling back to link + unlink on filesystems without it;
/// either way an existing `dest` is never replaced.
pub fn publish_noclobber(src: &Path, dest: &Path) -> Result<Published, Error> {
    fs::set_permissions(src, fs::Permissions::from_mode(BLOB_MODE))
        .map_err(io_err("making read-only", src))?;
    let published = match renameat2(AT_FDCWD, src, AT_FDCWD, dest, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Published::New,
        Err(Errno::EEXIST) => Published::Existing,
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => match fs::hard_link(src, dest) {
            Ok(()) => {
                remove_file(src)?;
                Published::New
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Published::Existing,
            Err(e) => return Err(io_err("linking into place", dest)(e)),
        },
        Err(errno) => return Err(io_err("renaming into place", dest)(errno.into())),
    };
    if published == Published::New {
        fsync_dir(parent(dest))?;
    }
    Ok(published)
}

/// Publish a finished temp directory (e.g. a layer's boot files) at `dest` unless something is
/// already there: its files are made read-only and fsynced, then the directory is renamed into
/// place without replacing anything, and `dest`'s parent is fsynced.
/// The caller keeps owning `dir`: if something was already at `dest`, `dir` is left in place.
pub fn publish_dir_noclobber(dir: &Path, dest: &Path) -> Result<Published, Error> {
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let p = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::set_permissions(&p, fs::Permissions::from_mode(BLOB_MODE))
                .map_err(io_err("making read-only", &p))?;
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io_err("syncing", &p))?;
        }
    }
    fsync_dir(dir)?;
    match renameat2(AT_FDCWD, dir, AT_FDCWD, dest, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {
            fsync_dir(parent(dest))?;
            Ok(Published::New)
        }
        Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(Published::Existing),
        Err(errno) => Err(io_err("renaming directory into place", dest)(errno.into())),
    }
}

/// Rename `src` (a file or a directory) to `dest` unless `dest` exists; `Ok(false)` if `src` was
/// already gone. Not durable by itself: the caller fsyncs the directories it cares about.
pub fn rename_noclobber(src: &Path, dest: &Path) -> Result<bool, Error> {
    match renameat2(AT_FDCWD, src, AT_FDCWD, dest, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) if fs::symlink_metadata(src).is_err() => Ok(false),
        Err(errno) => Err(io_err("renaming", src)(errno.into())),
    }
}

/// Names of the entries in `dir` (empty if it does not exist).
pub fn names_in(dir: &Path) -> Result<Vec<String>, Error> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(io_err("listing", dir))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("listing", dir)(e)),
    }
}

/// Replace `path` with `bytes` atomically and durably: write a temp file beside it, fsync it,
/// rename it over `path`, fsync the directory. Readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let dir = parent(path);
    let stem = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let mut tmp = TempFile::create_in(dir, &format!(".{stem}"))?;
    tmp.file()
        .write_all(bytes)
        .map_err(io_err("writing", tmp.path()))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .map_err(io_err("setting mode of", tmp.path()))?;
    tmp.sync()?;
    fs::rename(tmp.path(), path).map_err(io_err("renaming temp file over", path))?;
    tmp.forget();
    fsync_dir(dir)
}

/// Point `link` at the same inode as `target`, replacing whatever `link` was (atomic, durable).
pub fn link_replace(target: &Path, link: &Path) -> Result<(), Error> {
    let dir = parent(link);
    let tmp = TempFile::reserve_name(dir, ".link");
    fs::hard_link(target, &tmp).map_err(io_err("linking", target))?;
    let renamed = fs::rename(&tmp, link);
    // rename(2) does nothing when both names are already links to one inode, leaving `tmp`.
    let _ = fs::remove_file(&tmp);
    renamed.map_err(io_err("renaming link over", link))?;
    fsync_dir(dir)
}

/// Remove a file; `Ok(false)` if it was already gone.
pub fn remove_file(path: &Path) -> Result<bool, Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Remove a directory tree; `Ok(false)` if it was already gone.
pub fn remove_dir_all(path: &Path) -> Result<bool, Error> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing directory", path)(e)),
    }
}

/// Remove a file or a directory tree, whichever `path` is; `Ok(false)` if it was already gone.
pub fn remove_any(path: &Path) -> Result<bool, Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => remove_dir_all(path),
        Ok(_) => remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temp files and dirs alive in this process, so an interrupt handler can remove them.
static LIVE: parking_lot::Mutex<Vec<PathBuf>> = parking_lot::Mutex::new(Vec::new());

/// Set once [`remove_live_temps`] ran: the process is exiting, and a temp entry another thread
/// creates in the meantime must not outlive it.
static CLOSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn track(path: &Path) {
    let mut live = LIVE.lock();
    if CLOSING.load(Ordering::SeqCst) {
        drop(live);
        let _ = remove_any(path);
        return;
    }
    live.push(path.to_path_buf());
}

fn untrack(path: &Path) {
    let mut live = LIVE.lock();
    if let Some(i) = live.iter().rposition(|p| p == path) {
        live.swap_remove(i);
    }
}

/// Have [`remove_live_temps`] remove `path` too (a file whose name its owner chose, such as a
/// partial download that is not resumable yet). Balance with [`untrack_path`].
pub fn track_path(path: &Path) {
    track(path);
}

/// Undo one [`track_path`] of `path`: an interrupt leaves it in place.
pub fn untrack_path(path: &Path) {
    untrack(path);
}

/// Remove every temp file and dir this process still holds. For interrupt handlers: the process
/// is about to exit without running destructors. Any temp entry created after this call (by a
/// thread still running) is removed as soon as it is created.
pub fn remove_live_temps() {
    let live = {
        let mut guard = LIVE.lock();
        CLOSING.store(true, Ordering::SeqCst);
        std::mem::take(&mut *guard)
    };
    for p in live {
        let _ = remove_any(&p);
    }
}

/// A file under a work directory that deletes itself when dropped, unless [`TempFile::persist`]
/// or [`TempFile::forget`] was called. Names are `<prefix>.<pid>.<n>.tmp`, created with
/// `O_EXCL` and mode 0600, so two processes never share one.
///
/// While it lives, the file is held under an exclusive `flock`: garbage collection try-locks a
/// temp entry before removing it, so work in flight is never swept, however old it looks.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn reserve_name(dir: &Path, prefix: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        dir.join(format!("{prefix}.{}.{n}.{nanos:x}.tmp", std::process::id()))
    }

    /// Create a new, empty temp file in `dir` (which must exist).
    pub fn create_in(dir: &Path, prefix: &str) -> Result<Self, Error> {
        let path = Self::reserve_name(dir, prefix);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("creating temp file", &path))?;
        Ok(Self::hold(path, file))
    }

    /// Lock, track and own `file` at `path`. The inode is ours alone (a fresh one, or a tool's
    /// output in our own held directory), so the lock cannot be contended.
    fn hold(path: PathBuf, file: File) -> Self {
        let _ = file.try_lock();
        track(&path);
        Self {
            path,
            file: Some(file),
        }
    }

    /// A temp file for a tool to overwrite (e.g. `qemu-img convert`): created empty and held
    /// like any other, removed on drop.
    #[cfg(feature = "unstable")]
    pub fn path_in(dir: &Path, prefix: &str) -> Result<Self, Error> {
        Self::create_in(dir, prefix)
    }

    /// Take over the file a tool wrote at `path`, inside a temp directory the caller holds (a
    /// converted image): from now on it is held and removed on drop like any other.
    pub fn adopt(path: PathBuf) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        Ok(Self::hold(path, file))
    }

    /// Where the file is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (panics only after [`TempFile::persist`] or [`TempFile::forget`], which
    /// consume it, so never).
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("TempFile always holds its file until consumed")
    }

    /// fsync the file's data and metadata.
    pub fn sync(&self) -> Result<(), Error> {
        match &self.file {
            Some(f) => f.sync_all().map_err(io_err("syncing", &self.path)),
            None => File::open(&self.path)
                .and_then(|f| f.sync_all())
                .map_err(io_err("syncing", &self.path)),
        }
    }

    /// Keep the file: it is no longer deleted on drop. Returns its path.
    #[must_use]
    #[cfg(feature = "unstable")]
    pub fn persist(mut self) -> PathBuf {
        untrack(&self.path);
        self.file = None;
        let path = std::mem::take(&mut self.path);
        std::mem::forget(self);
        path
    }

    /// Stop tracking the file (it was renamed away).
    pub fn forget(mut self) {
        untrack(&self.path);
        self.file = None;
        self.path = PathBuf::new();
    }
}

/// A directory under a work directory, held under `flock` like [`TempFile`], removed with its
/// contents when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    _hold: File,
}

impl TempDir {
    /// Create a new directory in `dir` (which must exist).
    pub fn create_in(dir: &Path, prefix: &str) -> Result<Self, Error> {
        let path = TempFile::reserve_name(dir, prefix);
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&path)
            .map_err(io_err("creating temp directory", &path))?;
        track(&path);
        let hold = File::open(&path).map_err(io_err("opening temp directory", &path))?;
        let _ = hold.try_lock();
        Ok(Self { path, _hold: hold })
    }

    /// Where the directory is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop tracking the directory (it was renamed away).
    #[cfg(feature = "unstable")]
    pub fn forget(mut self) {
        untrack(&self.path);
        self.path = PathBuf::new();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        untrack(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// True if another live handle holds the `flock` of `path` (a [`TempFile`] or [`TempDir`] in
/// use, or any held lock file). A path that cannot be opened is not in use.
#[must_use]
pub fn is_held(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file().write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            untrack(&self.path);
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        let mut a = TempFile::create_in(dir.path(), "a").unwrap();
        a.file().write_all(b"first").unwrap();
        assert_eq!(publish_noclobber(a.path(), &dest).unwrap(), Published::New);
        a.forget();
        let mut b = TempFile::create_in(dir.path(), "b").unwrap();
        b.file().write_all(b"second").unwrap();
        assert_eq!(
            publish_noclobber(b.path(), &dest).unwrap(),
            Published::Existing
        );
        let b_path = b.path().to_path_buf();
        drop(b);
        assert!(!b_path.exists(), "dropped temp file is removed");
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, BLOB_MODE);
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("images.json");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the target remains");
    }

    #[test]
    fn temp_file_removed_on_drop_kept_on_persist() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::create_in(dir.path(), "x").unwrap();
        let p = t.path().to_path_buf();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());
        let t = TempFile::create_in(dir.path(), "y").unwrap();
        let kept = t.persist();
        assert!(kept.exists());
    }

    #[test]
    fn temp_entries_are_held_while_alive() {
        let dir = tempfile::tempdir().unwrap();
        let f = TempFile::create_in(dir.path(), "f").unwrap();
        let d = TempDir::create_in(dir.path(), "d").unwrap();
        fs::write(d.path().join("inner"), b"x").unwrap();
        assert!(is_held(f.path()));
        assert!(is_held(d.path()));
        let (fp, dp) = (f.path().to_path_buf(), d.path().to_path_buf());
        drop(f);
        drop(d);
        assert!(!fp.exists() && !dp.exists());
        let loose = dir.path().join("loose");
        fs::write(&loose, b"x").unwrap();
        assert!(!is_held(&loose));
    }

    #[test]
    fn publish_dir_is_read_only_and_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("boot");
        let a = TempDir::create_in(dir.path(), "a").unwrap();
        fs::write(a.path().join("vmlinuz"), b"k1").unwrap();
        assert_eq!(
            publish_dir_noclobber(a.path(), &dest).unwrap(),
            Published::New
        );
        a.forget();
        let mode = fs::metadata(dest.join("vmlinuz"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, BLOB_MODE);
        let b = TempDir::create_in(dir.path(), "b").unwrap();
        fs::write(b.path().join("vmlinuz"), b"k2").unwrap();
        let bp = b.path().to_path_buf();
        assert_eq!(
            publish_dir_noclobber(b.path(), &dest).unwrap(),
            Published::Existing
        );
        drop(b);
        assert!(!bp.exists(), "the losing temp dir is removed by its owner");
        assert_eq!(fs::read(dest.join("vmlinuz")).unwrap(), b"k1");
        assert_eq!(names_in(dir.path()).unwrap(), vec!["boot".to_owned()]);
    }

    #[test]
    fn remove_reports_absence() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        assert!(remove_file(&p).unwrap());
        assert!(!remove_file(&p).unwrap());
        let d = dir.path().join("d/e");
        create_dir_all(&d).unwrap();
        assert!(remove_any(&dir.path().join("d")).unwrap());
        assert!(!remove_any(&dir.path().join("d")).unwrap());
    }

    #[test]
    fn link_replace_points_at_target() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("a.bak");
        fs::write(&a, b"v1").unwrap();
        link_replace(&a, &b).unwrap();
        fs::write(dir.path().join("a2"), b"v2").unwrap();
        fs::rename(dir.path().join("a2"), &a).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"v1");
        link_replace(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"v2");
        // Already the same inode: nothing changes and no temp link is left behind.
        link_replace(&a, &b).unwrap();
        assert_eq!(names_in(dir.path()).unwrap().len(), 2);
    }
}
