//! Integration tests: real files, real tools, real processes.

mod erofs;
mod fuzz_seeds;
