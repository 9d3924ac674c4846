//! An open directory whose entries are stat-ed and removed by name through its descriptor
//! (`fstatat` / `unlinkat`), so gc's sweep does not resolve the directory's path per blob.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::{io_err, Error};

/// An open directory, to stat and remove many of its entries by name without resolving the
/// directory's path each time (`fstatat` / `unlinkat` on its descriptor).
#[derive(Debug)]
pub struct Dir {
    fd: File,
    path: PathBuf,
}

/// What `lstat` says of a directory entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryStat {
    /// Last modification.
    pub modified: std::time::SystemTime,
    /// Size in bytes.
    pub len: u64,
    /// A regular file.
    pub is_file: bool,
}

impl Dir {
    /// Open `path`; `Ok(None)` if it does not exist.
    pub fn open(path: &Path) -> Result<Option<Self>, Error> {
        match File::open(path) {
            Ok(fd) => Ok(Some(Self {
                fd,
                path: path.to_path_buf(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("opening directory", path)(e)),
        }
    }

    /// `lstat` of the entry `name`; `None` if it is gone or cannot be inspected.
    #[must_use]
    pub fn stat(&self, name: &std::ffi::OsStr) -> Option<EntryStat> {
        use nix::sys::stat::{fstatat, SFlag};
        let st = fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        let secs = u64::try_from(st.st_mtime).unwrap_or(0);
        let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
        Some(EntryStat {
            modified: std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos),
            len: u64::try_from(st.st_size).unwrap_or(0),
            is_file: SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG,
        })
    }

    /// Remove the file `name`; `Ok(false)` if it was already gone.
    pub fn remove_file(&self, name: &std::ffi::OsStr) -> Result<bool, Error> {
        use nix::unistd::{unlinkat, UnlinkatFlags};
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(errno) => Err(io_err("removing", &self.path.join(name))(errno.into())),
        }
    }
}
