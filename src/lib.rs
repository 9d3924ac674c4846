//! imgstore: a content-addressed store for virtual-machine images.
//!
//! OCI images become one read-only EROFS disk per layer plus kernel and initrd; cloud images are
//! stored as qcow2. Everything is named by digest, deduplicated, verified with memory-mapped
//! parallel hashing, and found by any unique digest prefix. The on-disk layout and index files are
//! those of cocoon v0.3.7, so an existing cocoon root opens as-is.

pub mod backend;
pub mod digest;
#[doc(hidden)]
pub mod failpoint;
pub mod fsutil;
pub mod gc;
pub mod index;
pub mod ingest;
pub mod lock;
pub mod lookup;
pub mod reference;
pub mod store;
pub mod verify;

pub use digest::{Algorithm, Digest, Prefix};
pub use store::{Kind, Layout};
