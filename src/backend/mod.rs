//! Image backends: how bytes of each kind of image become stored blobs.

pub mod cloudimg;
pub mod oci;
