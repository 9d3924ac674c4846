//! Opening a store: options, callbacks, and the handles every verb uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::index::file::Db;
use crate::index::{CloudEntry, OciEntry};
use crate::layout::{Kind, Layout};
use crate::lock::LockWait;

use super::{io_err, Error, Store};

/// Called with the lock path when a lock is contended ("waiting for lock on …").
pub type OnWait = Arc<dyn Fn(&Path) + Send + Sync>;
/// Called with (bytes done, bytes total if known) during long work.
pub type Progress = Arc<dyn Fn(&str, u64, Option<u64>) + Send + Sync>;

/// Options for [`Store::open_opts`].
#[derive(Clone)]
pub struct StoreOptions {
    /// How long to wait for index and digest locks.
    pub lock_wait: LockWait,
    /// Told when a lock is contended.
    pub on_wait: Option<OnWait>,
    /// Told about progress of downloads, conversions and hashing.
    pub progress: Option<Progress>,
    /// Limits for cloud images (download cap, virtual size cap, timeouts).
    pub cloud_limits: crate::backend::cloudimg::Limits,
    /// Registry client options (insecure hosts, credentials, platform).
    pub registry: crate::backend::oci::registry::ClientOptions,
    /// Firmware for cloud image boots; default `<root>/firmware/CLOUDHV.fd`.
    pub firmware: Option<PathBuf>,
    /// How many layers of one oci image are fetched and converted at once (at least 1).
    pub layer_jobs: usize,
    /// Resolve through the lookup caches beside the indexes (`db/images.idx`) and rebuild a
    /// missing or stale one when possible (default). `false` reads the JSON every time: the
    /// same answers, slower; writers refresh the caches either way.
    pub index_cache: bool,
    /// Connections one cloud image download uses at once when the server supports guarded
    /// ranges (1 ..= 16; default 4).
    pub download_connections: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            lock_wait: LockWait::timeout(Duration::from_secs(600)),
            on_wait: None,
            progress: None,
            cloud_limits: crate::backend::cloudimg::Limits::default(),
            registry: crate::backend::oci::registry::ClientOptions::default(),
            firmware: None,
            layer_jobs: 3,
            index_cache: true,
            download_connections: crate::backend::cloudimg::DEFAULT_CONNECTIONS,
        }
    }
}

impl Store {
    /// Open the store at `root` with default options. Nothing is created until something is
    /// written.
    ///
    /// # Errors
    /// None today; the signature leaves room for checks of the root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::open_opts(root, StoreOptions::default())
    }

    /// Open the store at `root` with `opts`.
    ///
    /// # Errors
    /// A relative root that cannot be made absolute (the working directory is gone).
    pub fn open_opts(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<Self, Error> {
        // Paths handed to a VM manager must not depend on its working directory.
        let root = root.into();
        let root = std::path::absolute(&root).map_err(io_err("resolving store root", &root))?;
        Ok(Self {
            layout: Layout::new(root),
            opts,
            caches: super::resolve::Caches::default(),
        })
    }

    /// The layout of this store.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(super) fn on_wait(&self) -> impl Fn(&Path) + '_ {
        move |p: &Path| {
            if let Some(f) = &self.opts.on_wait {
                f(p);
            }
        }
    }

    pub(super) fn progress(&self, what: &str, done: u64, total: Option<u64>) {
        if let Some(p) = &self.opts.progress {
            p(what, done, total);
        }
    }

    pub(super) fn oci_db(&self) -> Db<OciEntry> {
        Db::new(&self.layout.backend(Kind::Oci))
    }

    pub(super) fn cloud_db(&self) -> Db<CloudEntry> {
        Db::new(&self.layout.backend(Kind::CloudImg))
    }
}
