//! Digest and prefix parsing: never panics; whatever parses formats back to the same text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        imgstore::digest::fuzz_check(s);
    }
});
