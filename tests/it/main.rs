//! Integration tests: real files, real tools, real processes.

mod fuzz_seeds;
mod reference;
mod index;
mod lock;
mod support;
mod ingest;
mod verify;
mod lookup;
