//! Layer unpacking: arbitrary bytes as a layer tar never panic and never write outside the
//! destination directory (needs root, like real conversions: owners and whiteout nodes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgstore::backend::oci::unpack::fuzz_check(data);
});
