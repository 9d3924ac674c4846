//! Index files (`db/images.json`): schema, loading and durable saving; and the digests recorded
//! for cocoon-written files (`db/legacy-sums.json`).

pub mod file;
pub mod legacy;
pub mod schema;
pub mod sources;

pub use schema::{CloudEntry, Entry, IndexFile, LayerEntry, OciEntry};
