//! Index files (`db/images.json`): schema, loading and durable saving.

pub mod file;
pub mod schema;

pub use schema::{CloudEntry, Entry, IndexFile, LayerEntry, OciEntry};
