//! imgstore: a content-addressed store for virtual-machine images.
//!
//! OCI images become one read-only EROFS disk per layer plus a kernel and an initrd; cloud
//! images are stored as qcow2. Everything is named by digest, deduplicated, verified with
//! memory-mapped parallel hashing, and found by any unique digest prefix. The on-disk layout and
//! index files are those of cocoon v0.3.7, so an existing cocoon root opens as-is.
//!
//! The boot path of a VM manager is [`store::Store::open`] then [`store::Store::config`]: two
//! index reads under shared locks, a lookup, and a size check of every file the VM will use.
//!
//! ```
//! use imgstore::store::Store;
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
//! - Layer conversion and image checks run the external tools `mkfs.erofs`/`fsck.erofs`
//!   (erofs-utils) and `qemu-img` (qemu-utils); they must be installed.
//! - With erofs-utils older than 1.8, layers are unpacked into a temp directory before
//!   `mkfs.erofs` runs, which needs as much free space as the unpacked layer and root privileges
//!   to keep owners and overlay whiteouts.
//! - Registry credential helpers (`credsStore`, `credHelpers`) are not run; only `auths` entries of
//!   the docker config file are read.
//!
//! # Cargo features
//! - `cli` (default): the `imgstore` binary, with clap, indicatif and signal-hook. Embedders use
//!   `default-features = false` and get the library alone.

pub mod backend;
pub mod digest;
#[doc(hidden)]
pub mod failpoint;
pub mod fsutil;
pub mod gc;
pub mod index;
pub mod ingest;
pub mod layout;
pub mod lock;
pub mod lookup;
pub mod reference;
pub mod store;
pub mod verify;

pub use digest::{Algorithm, Digest, Prefix};
pub use layout::{Kind, Layout};
pub use reference::Reference;
