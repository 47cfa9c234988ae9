//! Fuzz target: see `ssed::fuzzing::encode_roundtrip` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ssed::fuzzing::encode_roundtrip(data));
