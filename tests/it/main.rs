//! Integration tests: real files, real tools, real processes.

mod fuzz_seeds;
mod oci_image;
mod registry;
mod registry_server;
