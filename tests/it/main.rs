//! Integration tests: real files, real tools, real processes.

mod cloudimg;
mod fuzz_seeds;
mod http_server;
