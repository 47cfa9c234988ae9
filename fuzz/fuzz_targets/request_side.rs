//! Fuzz target: see `ssed::fuzzing::request_side` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ssed::fuzzing::request_side(data));
