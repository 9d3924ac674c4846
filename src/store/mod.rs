//! The Store facade: what a VM manager embeds.
//!
//! One file per verb: `open` (options, opening), `snapshot` (reading both indexes: list,
//! inspect, find), `config` (the boot path), `remove`, `verify`, `gc`, `import` (type detection,
//! name checks), `cloud` (import / pull of cloud images), `oci` and `oci_layout` (pull and
//! import of OCI images), and `publish` (digest lock, no-clobber publish, blob reuse) which
//! every ingest shares. This file holds the `Store` type and the facade's error.
//!
//! The boot path is [`Store::open`] → [`Store::config`]: no lock, a lookup through the lookup
//! caches beside the indexes (`resolve.rs`; the JSON only when a cache is missing or stale), and
//! a size check of every file the VM will use; no hashing, no waiting on any writer.

mod cloud;
mod cloud_artifact;
mod cloud_pull;
mod config;
mod gc;
mod import;
mod oci;
mod oci_chain;
mod oci_layer;
mod oci_layout;
mod open;
mod publish;
mod push;
mod remove;
mod resolve;
mod snapshot;
mod verify;

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{io_err, IoError};
use crate::lock;
use crate::lookup;

pub use crate::layout::{default_root, BackendLayout, Kind, Layout, Role};
pub use cloud::{CloudSource, PullOutcome, Revalidation};
pub use cloud_pull::CloudPull;
pub use config::{Boot, Disk, VmConfig};
pub use oci::OciSource;
pub use open::{OnWait, Progress, StoreOptions};
pub use push::{PushOptions, PushOutcome, PushedBlob, DEFAULT_PART_SIZE, EROFS_LAYER};
pub use remove::Removed;
pub use snapshot::{BlobInfo, Found, ImageInfo, ListEntry, ListRow, Snapshot};
pub use verify::{Status, VerifyEntry, VerifyOptions};

/// Make every cloud image download in flight durable as far as it got and write its resume
/// record, for a signal handler about to exit: the next pull continues where this one stopped.
pub use crate::backend::cloudimg::download::checkpoint_all as save_partial_downloads;
pub use crate::backend::cloudimg::Limits as CloudLimits;
pub use crate::backend::oci::registry::{
    ClientOptions as RegistryOptions, Credentials, Platform, RegistriesConf,
};
/// Remove every temp file and directory this process still holds, for a signal handler about to
/// exit without running destructors (what the CLI does on Ctrl-C). A temp entry another thread
/// creates after this call is removed as soon as it is created.
pub use crate::fsutil::remove_live_temps;
pub use crate::lock::LockWait;

/// The errors of the layers under the facade, as the variants of [`Error`] carry them: named
/// here so a caller can match on them too. Their variants may grow (`#[non_exhaustive]`).
pub mod error {
    pub use crate::backend::cloudimg::Error as CloudError;
    pub use crate::backend::oci::layer::Error as LayerError;
    pub use crate::backend::oci::registry::Error as RegistryError;
    pub use crate::error::IoError;
    pub use crate::index::file::Error as IndexError;
    pub use crate::index::legacy::Error as LegacySumsError;
    pub use crate::ingest::Error as IngestError;
    pub use crate::input::{Changed as InputChanged, Error as InputError};
    pub use crate::lock::Error as LockError;
    pub use crate::lookup::{Candidate, Error as LookupError};
    pub use crate::verify::Error as VerifyError;
}

/// Errors of the Store facade. Each names the image, file or URL involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No image matches, or several do (the message lists them).
    #[error(transparent)]
    Lookup(#[from] lookup::Error),
    /// An index file could not be read or written.
    #[error(transparent)]
    Index(#[from] crate::index::file::Error),
    /// A lock could not be taken.
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// Bytes could not be brought into the store (boxed: digest mismatches are large).
    #[error(transparent)]
    Ingest(Box<crate::ingest::Error>),
    /// The digests recorded for cocoon-written files could not be read or written.
    #[error(transparent)]
    LegacySums(#[from] crate::index::legacy::Error),
    /// Hashing a stored file failed.
    #[error(transparent)]
    Verify(#[from] crate::verify::Error),
    /// A cloud image was refused or could not be fetched or converted.
    #[error(transparent)]
    Cloud(#[from] crate::backend::cloudimg::Error),
    /// An oci layer could not be converted.
    #[error(transparent)]
    Layer(#[from] crate::backend::oci::layer::Error),
    /// A registry operation failed (boxed: digest mismatches are large).
    #[error(transparent)]
    Registry(Box<crate::backend::oci::registry::Error>),
    /// Garbage collection failed.
    #[error(transparent)]
    Gc(#[from] crate::gc::Error),
    /// An image reference that does not parse.
    #[error("invalid reference {input:?}: {source}")]
    Reference {
        /// What was given.
        input: String,
        /// Why it is invalid.
        #[source]
        source: crate::reference::Error,
    },
    /// A name that cannot be used as an index key.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// What was given.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A file an image needs is not there.
    #[error("image {image}: {} is missing", path.display())]
    Missing {
        /// The image (its key).
        image: String,
        /// The file.
        path: PathBuf,
    },
    /// A file an image needs has the wrong size (truncated or replaced).
    #[error(
        "image {image}: {} has {}, expected {}",
        path.display(),
        crate::human::bytes(*actual),
        crate::human::bytes(*expected)
    )]
    WrongSize {
        /// The image (its key).
        image: String,
        /// The file.
        path: PathBuf,
        /// Recorded size.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// A file of an image with no recorded size (written by cocoon) is empty.
    #[error("image {image}: {} is empty", path.display())]
    Empty {
        /// The image (its key).
        image: String,
        /// The file.
        path: PathBuf,
    },
    /// The UEFI firmware for cloud images is not installed.
    #[error("firmware {} not found (install it there or pass --firmware)", path.display())]
    FirmwareMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// An oci image without a kernel or initrd.
    #[error(
        "image {image} has no {what} (vmlinuz* / initrd.img* in boot/ or the root of a layer)"
    )]
    NoBootFiles {
        /// The image.
        image: String,
        /// "kernel" or "initrd".
        what: &'static str,
    },
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
    /// An import was given nothing to read.
    #[error("no {what} to import")]
    NoInput {
        /// What was missing ("files", "layer tars").
        what: &'static str,
    },
    /// The source of a cloud image holds no bytes.
    #[error("{source_name} is empty")]
    EmptySource {
        /// The file, URL or "stdin".
        source_name: String,
    },
    /// A directory given as an OCI layout has no `oci-layout` file.
    #[error("{} is not an OCI image layout (no oci-layout file)", path.display())]
    NotOciLayout {
        /// The directory.
        path: PathBuf,
    },
    /// An oci-archive holds an entry whose name could escape the unpack directory.
    #[error("{}: unsafe entry {}", archive.display(), entry.display())]
    UnsafeArchiveEntry {
        /// The archive.
        archive: PathBuf,
        /// The entry's name.
        entry: PathBuf,
    },
    /// An offline pull of a URL the store does not hold.
    #[error("{url} is not in the store, and this pull is offline")]
    NotStoredOffline {
        /// The URL.
        url: String,
    },
    /// A source to import could not be opened or read as a stream (a device, a directory
    /// among files, an unreadable path).
    #[error(transparent)]
    Input(#[from] crate::input::Error),
    /// Among layer tars, a file that is not one (a disk image, other compressed data).
    #[error("{name}: is {found}, not a layer tar (plain, gzip or zstd); import takes either layer tars or the parts of one disk image")]
    NotALayer {
        /// The file.
        name: String,
        /// What it looks like.
        found: &'static str,
    },
    /// A layer could not be converted; names the file or registry layer it came from.
    #[error("{source_name}: {source}")]
    LayerFrom {
        /// The layer tar as the user named it, or `layer <digest>` of a registry or layout.
        source_name: String,
        /// The cause.
        #[source]
        source: crate::backend::oci::layer::Error,
    },
    /// An EROFS-native layer was refused; names the registry layer.
    #[error("{source_name}: {source}")]
    NativeLayer {
        /// `layer <digest>`.
        source_name: String,
        /// The cause.
        #[source]
        source: crate::backend::oci::native::Error,
    },
    /// A name pinning a digest (`app@sha256:…`) given to an image with another ID (boxed: two
    /// digests are large).
    #[error(transparent)]
    PinnedDigest(Box<PinnedDigest>),
    /// The name already names an image of the other backend.
    #[error("{name} already names the {kind} image {key}; one reference names one image: remove that one first (imgstore rm {key:?}) or choose another name")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The backend holding the other image.
        kind: Kind,
        /// Its index key.
        key: String,
    },
    /// An OCI layout holding several tagged images, and no `DIR:TAG` to choose one.
    #[error("{layout}: holds several images (tags {}); choose one as {layout}:TAG", tags.join(", "))]
    LayoutTagNeeded {
        /// The layout directory (or archive).
        layout: String,
        /// The tags it holds.
        tags: Vec<String>,
    },
    /// `DIR:TAG` naming a tag the layout does not hold.
    #[error("{layout}: no image tagged {tag:?} (tags: {})", if tags.is_empty() { "none".to_owned() } else { tags.join(", ") })]
    LayoutTagMissing {
        /// The layout directory (or archive).
        layout: String,
        /// The tag asked for.
        tag: String,
        /// The tags it holds.
        tags: Vec<String>,
    },
}

impl From<crate::backend::oci::registry::Error> for Error {
    fn from(e: crate::backend::oci::registry::Error) -> Self {
        Error::Registry(Box::new(e))
    }
}

impl From<crate::ingest::Error> for Error {
    fn from(e: crate::ingest::Error) -> Self {
        Error::Ingest(Box::new(e))
    }
}

/// A name pinning a digest that is not the imported image's ID.
#[derive(Debug, thiserror::Error)]
#[error("{name} pins {pinned}, but the image imported has ID {id}; a name carrying a digest must match the image")]
pub struct PinnedDigest {
    /// The name.
    pub name: String,
    /// The digest in the name.
    pub pinned: Digest,
    /// The image's ID.
    pub id: Digest,
}

/// An image store rooted at one directory.
///
/// Cheap to open (nothing is read or created until a verb needs it) and safe to use from
/// several threads and processes at once: every verb takes the locks it needs (docs/design.md §2).
///
/// ```
/// use std::time::Duration;
/// use imgstore::{LockWait, Store, StoreOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = tempfile::tempdir()?;
/// let opts = StoreOptions {
///     lock_wait: LockWait::timeout(Duration::from_secs(5)),
///     ..StoreOptions::default()
/// };
/// let store = Store::open_opts(root.path(), opts)?;
/// assert!(store.list()?.is_empty());
/// // Asking for an image that is not there is an error naming the query.
/// let err = store.config(&["ubuntu:24.04"]).unwrap_err();
/// assert!(err.to_string().contains("ubuntu:24.04"), "{err}");
/// # Ok(())
/// # }
/// ```
pub struct Store {
    layout: Layout,
    opts: StoreOptions,
    /// Open lookup caches, reused while their indexes do not change.
    caches: resolve::Caches,
}

/// Size of a file, `None` if it does not exist.
fn file_size(path: &Path) -> Result<Option<u64>, Error> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_err("inspecting", path)(source).into()),
    }
}
