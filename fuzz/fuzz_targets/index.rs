//! Index files: any bytes in `images.json` load without panicking, failed loads leave the file
//! untouched, and successful loads survive save → load unchanged (see the model).
#![no_main]

#[path = "../../tests/it/index_fuzz_model.rs"]
mod index_fuzz_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    index_fuzz_model::check(data);
});
