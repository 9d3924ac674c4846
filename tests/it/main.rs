//! Integration tests: real files, real tools, real processes.

mod fuzz_seeds;
mod lookup;
