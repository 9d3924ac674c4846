//! Integration tests: real files, real tools, real processes.

mod cli;
mod cli_support;
mod cloud_e2e;
mod cloudimg;
mod erofs;
mod fuzz_seeds;
mod gc;
mod http_server;
mod index;
mod ingest;
mod lock;
mod lookup;
mod oci_e2e;
mod oci_image;
mod reference;
mod registry;
mod registry_server;
mod support;
mod verify;
