//! Cloud images: format checks, qemu-img hygiene and conversion, URL download.
//!
//! The building blocks of the cloudimg backend, each usable on its own:
//! - [`sniff`] / [`candidate_format`] tell from the first bytes whether a source is qcow2, a raw
//!   candidate, or something we refuse (HTML error pages, compressed archives, other disk formats);
//! - [`check_untrusted`] vets a staged file before anything else reads it as a disk: it parses
//!   the qcow2 header itself (so `qemu-img` never opens a backing or external data file named by
//!   an untrusted image), refuses a "raw" file that sniffs as something else, caps the virtual
//!   size, then confirms with `qemu-img info` and `qemu-img check`;
//! - [`plan`] and [`convert`] decide and perform the conversion to qcow2 v3;
//! - [`open`] / `download` stream an http(s) URL with a size cap, timeouts and length checks;
//!   the bytes delivered are exactly the bytes served (no transfer decoding).
//!
//! This module never touches the store: it does not know the layout, the index or locks, and it
//! never renames or deletes anything except the output of a failed [`convert`] (through
//! [`crate::fsutil`]).

use std::io;
use std::path::PathBuf;
use std::time::Duration;
use crate::error::IoError;

pub mod download;
mod format;
mod http;
mod qemu;

pub use download::DEFAULT_CONNECTIONS;
pub use format::{sniff, Format, SNIFF_LEN};
pub use qemu::{check_untrusted, convert, plan, Plan};
#[cfg(feature = "unstable")]
pub use {
    format::{candidate_format, qcow2_header, Qcow2Header},
    http::{download, open, Download},
    qemu::{qemu_info, ImageInfo},
};

/// Default cap on the virtual size of an image: 2 TiB.
///
/// Published cloud images have virtual sizes of a few GiB to a few hundred GiB; anything beyond
/// 2 TiB is a corrupt or hostile header rather than a real base image.
pub const DEFAULT_MAX_VIRTUAL_SIZE: u64 = 2 << 40;
/// Default cap on downloaded bytes: 20 GiB.
pub const DEFAULT_MAX_DOWNLOAD: u64 = 20 << 30;
/// Most redirects a download follows before failing.
pub const MAX_REDIRECTS: u32 = 10;

/// Bounds applied to untrusted sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted virtual disk size in bytes (default `DEFAULT_MAX_VIRTUAL_SIZE`, 2 TiB).
    pub max_virtual_size: u64,
    /// Largest accepted download in bytes (default 20 GiB).
    pub max_download: u64,
    /// Time allowed to resolve the host and establish a connection (default 30 s).
    pub connect_timeout: Duration,
    /// Longest wait for any single read from the server (default 60 s); the whole transfer has
    /// no deadline, so a slow but live mirror still completes.
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_virtual_size: DEFAULT_MAX_VIRTUAL_SIZE,
            max_download: DEFAULT_MAX_DOWNLOAD,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a cloud image was refused, or a tool or transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The content is not a disk image we accept (HTML page, archive, other disk format).
    #[error("{source_name}: is {format}, not a qcow2 or raw disk image")]
    Rejected {
        /// The file or URL the bytes came from.
        source_name: String,
        /// What the bytes look like ("HTML", "gzip", ...).
        format: &'static str,
    },
    /// The file's first bytes contradict the format it is to be read as.
    #[error("{path}: asked to read it as {asked}, but its first bytes say {found}", path = path.display())]
    FormatMismatch {
        /// The image.
        path: PathBuf,
        /// The format asked for.
        asked: &'static str,
        /// What the sniff says.
        found: &'static str,
    },
    /// Only "qcow2" and "raw" are ever passed to qemu-img.
    #[error("{path}: unsupported image format {format:?} (only qcow2 and raw)", path = path.display())]
    UnsupportedFormat {
        /// The image.
        path: PathBuf,
        /// The format asked for.
        format: String,
    },
    /// The qcow2 header is unreadable, truncated or of an unknown version.
    #[error("{path}: bad qcow2 header: {reason}", path = path.display())]
    BadHeader {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The image names a backing file, which would make qemu read another file of the host.
    #[error("{path}: qcow2 image has a backing file ({backing:?}); only standalone images are accepted", path = path.display())]
    BackingFile {
        /// The image.
        path: PathBuf,
        /// The backing file name as the image states it.
        backing: String,
    },
    /// The image keeps its data in an external file, which qemu would open.
    #[error("{path}: qcow2 image uses an external data file ({}); only standalone images are accepted", data_file.as_deref().map_or_else(|| "name not found".to_owned(), |d| format!("{d:?}")), path = path.display())]
    DataFile {
        /// The image.
        path: PathBuf,
        /// The data file name, when the header extension naming it was found.
        data_file: Option<String>,
    },
    /// The image is encrypted; a base image must be readable without a secret.
    #[error("{path}: qcow2 image is encrypted", path = path.display())]
    Encrypted {
        /// The image.
        path: PathBuf,
    },
    /// The image has a virtual size of zero.
    #[error("{path}: image is empty (virtual size 0)", path = path.display())]
    Empty {
        /// The image.
        path: PathBuf,
    },
    /// The virtual disk is larger than allowed.
    #[error("{path}: virtual size {} exceeds the limit of {}", bytes_text(*size), bytes_text(*limit), path = path.display())]
    VirtualSizeTooLarge {
        /// The image.
        path: PathBuf,
        /// Its virtual size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// `qemu-img check` found the image inconsistent.
    #[error("{path}: qemu-img check failed ({status}): {output}", path = path.display())]
    CheckFailed {
        /// The image.
        path: PathBuf,
        /// How qemu-img exited.
        status: String,
        /// What it printed (stdout and stderr).
        output: String,
    },
    /// The tool is not installed.
    #[error("{tool} not found; install qemu-utils")]
    ToolMissing {
        /// The program name.
        tool: &'static str,
    },
    /// A tool could not be started or exited with failure.
    #[error("{tool} {args} failed ({status}): {stderr}")]
    Tool {
        /// The program name.
        tool: &'static str,
        /// Its arguments, space separated.
        args: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A tool printed something we could not understand.
    #[error("{tool} {args}: unexpected output: {reason}")]
    ToolOutput {
        /// The program name.
        tool: &'static str,
        /// Its arguments, space separated.
        args: String,
        /// What was wrong.
        reason: String,
    },
    /// The URL is not an http(s) URL ureq can fetch.
    #[error("{url}: not a valid http(s) URL: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with a status other than 200.
    #[error("GET {url}: HTTP {status} {reason}")]
    Status {
        /// The URL asked for (before redirects).
        url: String,
        /// The final status code.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The transfer failed: connection refused, timeout, TLS, protocol error, ...
    #[error("GET {url}: {cause}")]
    Http {
        /// The URL asked for (before redirects).
        url: String,
        /// What went wrong, in words.
        cause: String,
        /// Whether a retry might succeed (timeouts, refused or dropped connections).
        transient: bool,
    },
    /// The body is larger than [`Limits::max_download`].
    #[error("GET {url}: body exceeds the download limit of {}{}", bytes_text(*limit), content_length.map_or_else(String::new, |n| format!(" (Content-Length {n})")))]
    TooLarge {
        /// The URL asked for.
        url: String,
        /// The limit.
        limit: u64,
        /// The announced length, when the server sent one.
        content_length: Option<u64>,
    },
    /// The connection ended before the announced Content-Length.
    #[error(
        "GET {url}: body truncated: got {got} of {}",
        crate::human::bytes(*expected)
    )]
    Truncated {
        /// The URL asked for.
        url: String,
        /// The announced length.
        expected: u64,
        /// The bytes received.
        got: u64,
    },
    /// A range came back other than asked (the server broke the protocol).
    #[error("GET {url}: asked for {asked}, the server sent {got}")]
    BadRange {
        /// The URL asked for.
        url: String,
        /// The range asked for.
        asked: String,
        /// The `Content-Range` received.
        got: String,
    },
    /// The resource kept changing while it was downloaded.
    #[error("GET {url}: the file changed on the server during the download, {restarts} times in a row; try again later")]
    Unstable {
        /// The URL asked for.
        url: String,
        /// How many times the download started over.
        restarts: u32,
    },
    /// Writing the downloaded body to its destination failed.
    #[error("GET {url}: writing the body: {source}")]
    Sink {
        /// The URL asked for.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An I/O error on a local file, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Error {
    /// The [`Error`] carried inside an `io::Error` returned by `Download`'s `Read` impl, if any.
    #[must_use]
    pub fn from_io_ref(e: &io::Error) -> Option<&Error> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
    }

    /// Turn an `io::Error` from `Download`'s `Read` impl back into an [`Error`]; errors that
    /// did not come from the download become [`Error::Http`] for `url`.
    #[must_use]
    pub fn from_io(e: io::Error, url: &str) -> Error {
        let cause = e.to_string();
        let transient = http::io_is_transient(&e);
        let other = || Error::Http {
            url: url.to_owned(),
            cause,
            transient,
        };
        match e.into_inner() {
            Some(inner) => inner
                .downcast::<Error>()
                .map_or_else(|_| other(), |err| *err),
            None => other(),
        }
    }

    /// Name the image by `label` instead of `staged` in messages: checks run on a staged copy
    /// under the store's `temp/`, a path the user never gave and that is gone by the time the
    /// error is shown. Errors about other paths are returned unchanged.
    #[must_use]
    pub fn relabel(mut self, staged: &std::path::Path, label: &str) -> Error {
        match &mut self {
            Error::FormatMismatch { path, .. }
            | Error::UnsupportedFormat { path, .. }
            | Error::BadHeader { path, .. }
            | Error::BackingFile { path, .. }
            | Error::DataFile { path, .. }
            | Error::Encrypted { path }
            | Error::Empty { path }
            | Error::VirtualSizeTooLarge { path, .. }
            | Error::CheckFailed { path, .. }
                if path.as_path() == staged =>
            {
                *path = PathBuf::from(label);
            }
            _ => {}
        }
        self
    }

    /// Whether trying again later might succeed (timeouts, dropped connections, 5xx, 429).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Error::Http { transient, .. } => *transient,
            Error::Truncated { .. } => true,
            _ => false,
        }
    }
}

/// `N bytes`, with a power-of-two unit in front when that reads better: `2 TiB (2199023255552 bytes)`.
fn bytes_text(n: u64) -> String {
    const UNITS: [(&str, u32); 5] = [
        ("EiB", 60),
        ("PiB", 50),
        ("TiB", 40),
        ("GiB", 30),
        ("MiB", 20),
    ];
    for (unit, shift) in UNITS {
        if n >= 1 << shift {
            let whole = n >> shift;
            let tenths = ((n & ((1 << shift) - 1)) * 10) >> shift;
            let num = if tenths == 0 {
                whole.to_string()
            } else {
                format!("{whole}.{tenths}")
            };
            return format!("{num} {unit} ({n} bytes)");
        }
    }
    crate::human::bytes(n).to_string()
}

