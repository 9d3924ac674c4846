//! Integration tests: real files, real tools, real processes.

mod cli;
mod cli_support;
mod cloudimg;
mod contention;
mod crash;
mod erofs;
mod full_disk;
mod fuzz_seeds;
mod hostile;
mod http_server;
mod index;
mod index_fuzz_model;
mod ingest;
mod lock;
mod lookup;
mod oci_image;
mod reference;
mod registry;
mod registry_server;
mod support;
mod verify;
