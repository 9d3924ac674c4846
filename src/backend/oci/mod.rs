//! OCI images: registry client, layer to EROFS conversion (in process), boot files.

pub mod boot;
pub mod chain;
pub mod layer;
pub mod native;
pub mod pipe;
pub mod registry;
