//! Lookup resolution: agrees with a linear-scan model over a `BTreeMap` on any items and queries.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imgstore::lookup::fuzz_check(data);
});
