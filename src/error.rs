//! The I/O error every module carries: what was being done, to which path, and the cause.
//!
//! Ground floor: depends on nothing in the crate. Each module's `Error` wraps it in one
//! transparent variant (`Io(#[from] IoError)`), so the message reads the same wherever the
//! failure surfaces ("renaming temp file into blobs/ /var/lib/…: No space left on device") and
//! a caller can still ask for the [`io::ErrorKind`].

use std::io;
use std::path::{Path, PathBuf};

/// An I/O operation that failed, with its action and path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct IoError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl IoError {
    /// `source` happened while `action` ("opening", "renaming temp file into blobs/", …) `path`.
    #[must_use]
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            action,
            path: path.into(),
            source,
        }
    }

    /// What was being done.
    #[must_use]
    pub fn action(&self) -> &'static str {
        self.action
    }

    /// The file or directory involved.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying I/O error (for its [`io::ErrorKind`]).
    #[must_use]
    pub fn io(&self) -> &io::Error {
        &self.source
    }

    /// The kind of the underlying I/O error.
    #[must_use]
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// Wrap an [`io::Error`] with its action and path, for `map_err`:
/// `File::open(p).map_err(io_err("opening", p))?`.
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> IoError + 'a {
    move |source| IoError::new(action, path, source)
}
