//! The EROFS writer: arbitrary bytes as a layer tar either fail with an error or give an image
//! the in-process reader parses back into exactly the tree the writer meant; never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgstore::erofs::fuzz_check(data);
});
