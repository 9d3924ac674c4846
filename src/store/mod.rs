//! The Store facade: open, import, pull, lookup, config, remove, verify, gc.

pub mod layout;

pub use layout::{default_root, BackendLayout, Kind, Layout};
