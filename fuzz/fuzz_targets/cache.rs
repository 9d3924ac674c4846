//! The index cache loader: any damage to `images.idx` (bit flips, truncation, re-sealed
//! hand-crafted tables) never panics and never yields an answer the JSON would not give.
#![no_main]

#[path = "../../tests/it/cache_fuzz_model.rs"]
mod cache_fuzz_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cache_fuzz_model::check(data);
});
