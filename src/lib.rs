//! imgstore: a content-addressed store for virtual-machine images.
//!
//! OCI images become one read-only EROFS disk per layer plus a kernel and an initrd; cloud
//! images are stored as qcow2. Everything is named by digest, deduplicated, verified with
//! memory-mapped parallel hashing, and found by any unique digest prefix. The on-disk layout and
//! index files are those of cocoon v0.3.7, so an existing cocoon root opens as-is.
//!
//! The boot path of a VM manager is [`Store::open`] then [`Store::config`]: no lock, a lookup in
//! the memory-mapped caches beside the two indexes (a few hash probes; the JSON is parsed only
//! if a cache is missing or stale), and a size check of every file the VM will use.
//!
//! ```
//! use imgstore::Store;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = tempfile::tempdir()?;
//! let disk = root.path().join("disk.raw");
//! std::fs::write(&disk, vec![0u8; 1 << 20])?;
//!
//! let store = Store::open(root.path().join("store"))?;
//! # if std::process::Command::new("qemu-img").arg("--version").output().is_err() { return Ok(()); }
//! let stored = store.import("demo", &[disk], None)?; // raw → qcow2 v3, hashed, published
//! let found = store.inspect(&stored.id.hex()[..12])?; // any unique 12+ digit prefix
//! assert_eq!(found.names, ["demo"]);
//! assert!(store.list()?.iter().any(|e| e.name == "demo"));
//! # Ok(())
//! # }
//! ```
//!
//! # Limitations
//! - Linux only: publishing relies on `renameat2(RENAME_NOREPLACE)` (with a link fallback) and
//!   locks on `flock`.
//! - Cloud image checks and conversion run the external tool `qemu-img` (qemu-utils); it must
//!   be installed. OCI layers are converted to EROFS in process (no tool, no root).
//! - OCI pulls read the docker config (`auths`, and the credential helpers of `credsStore` /
//!   `credHelpers`, which are run as docker runs them) and, by default, containers-registries.conf
//!   for mirrors, remapping and blocked registries, as podman finds it
//!   ([`store::RegistriesConf`]; `RegistriesConf::None` in [`store::RegistryOptions`] turns it
//!   off). Its drop-in directories are not read.
//!
//! # Cargo features
//! - `cli` (default): the `imgstore` binary, with clap, indicatif and signal-hook. Embedders use
//!   `default-features = false` and get the library alone.
//! - `unstable`: makes the internal modules public (fsutil, ingest, lock, index, lookup, verify,
//!   backend, erofs, failpoint) and compiles in the crash-test failpoints (`IMGSTORE_FAILPOINT`). It
//!   exists for imgstore's own tests, benches and fuzz targets: **no semver promise**, and never
//!   for a production build. Without it the failpoints are not in the binary at all.
//!
//! # Public API
//! - [`store`]: the facade ([`Store`], [`StoreOptions`], the types its verbs return, its
//!   [`store::Error`]);
//! - [`digest`]: [`Digest`], [`Algorithm`], [`Prefix`];
//! - [`reference`](mod@reference): [`Reference`], the OCI reference grammar;
//! - [`gc`]: [`PinSource`], [`GcOptions`], [`GcReport`];
//! - [`layout`]: [`Kind`], [`Layout`], the on-disk paths.

/// Die here when `IMGSTORE_FAILPOINT` names this point (crash tests). Expands to nothing without
/// the `unstable` feature, so release builds carry neither the check nor the names.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "unstable")]
        $crate::failpoint::hit($name);
    };
}

/// Internal modules: crate-private, public (hidden, no semver promise) under `unstable`.
macro_rules! internal {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        $(#[$meta])*
        #[cfg(feature = "unstable")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$meta])*
        #[cfg(not(feature = "unstable"))]
        pub(crate) mod $name;
    )*};
}

pub mod digest;
pub mod gc;
pub mod layout;
pub mod reference;
pub mod store;

internal! {
    backend;
    // Not on the pull/import path yet (design §10): only tests, benches and fuzzing call it.
    #[allow(dead_code)]
    erofs;
    error;
    fsutil;
    human;
    index;
    ingest;
    input;
    lock;
    lookup;
    verify;
}

#[cfg(feature = "unstable")]
#[doc(hidden)]
pub mod failpoint;

pub use digest::{Algorithm, Digest, Prefix};
pub use gc::{GcOptions, GcReport, PinSource};
pub use layout::{Kind, Layout};
pub use lock::LockWait;
pub use reference::Reference;
pub use store::{Store, StoreOptions};
