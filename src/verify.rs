//! Hashing of stored blobs through a read-only mmap; the crate's only unsafe code.
