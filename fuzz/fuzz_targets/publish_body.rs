//! Fuzz target: see `ssed::fuzzing::publish_body` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ssed::fuzzing::publish_body(data));
