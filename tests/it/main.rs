//! Integration tests: real files, real tools, real processes.

mod boot;
mod cli;
mod cli_support;
mod cloud_e2e;
mod cloudimg;
mod contention;
mod crash;
mod erofs;
mod full_disk;
mod fuzz_seeds;
mod gc;
mod hostile;
mod http_server;
mod index;
mod index_fuzz_model;
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
mod vm;
