//! Garbage collection: scan, mark, sweep.
