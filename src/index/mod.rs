//! Index files (`db/images.json`): schema, loading and durable saving; the digests recorded
//! for cocoon-written files (`db/legacy-sums.json`); and the lookup cache derived from them
//! (`db/images.idx`).

pub mod cache;
pub mod file;
pub mod legacy;
pub mod schema;
pub mod sources;

pub use schema::{ChainBlob, CloudEntry, Entry, IndexFile, LayerEntry, OciEntry};
