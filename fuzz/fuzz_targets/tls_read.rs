//! Fuzz target: see `ssed::fuzzing::TlsReadPath` for the input layout and what is checked. The
//! certificate is made once per process (rcgen), so nothing checked in can expire.
#![no_main]

use std::sync::OnceLock;

static PATH: OnceLock<ssed::fuzzing::TlsReadPath> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = PATH.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        ssed::fuzzing::TlsReadPath::new(&cert.pem(), &key.serialize_pem())
    });
    path.run(data);
});
