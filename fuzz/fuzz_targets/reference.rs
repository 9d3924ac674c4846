//! Reference parsing: never panics; whatever parses prints back to itself, canonical is idempotent.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        imgstore::reference::fuzz_check(s);
    }
});
