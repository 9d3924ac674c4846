//! OCI images: registry client, layer to EROFS conversion, boot files.
pub mod registry;
