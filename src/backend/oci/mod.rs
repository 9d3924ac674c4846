//! OCI images: registry client, layer to EROFS conversion, boot files.

pub mod boot;
pub mod erofs;
pub mod native;
pub mod registry;
pub mod unpack;
