//! Fuzz target: see `ssed::fuzzing::mercure_request` for the input layout and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ssed::fuzzing::mercure_request(data));
