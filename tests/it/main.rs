//! Integration tests: the server runs in-process on 127.0.0.1:0 and is spoken to over real TCP.
//! All of them build into this one test binary, so the crate is linked once.

mod child;
mod support;

mod abuse;
#[cfg(feature = "cluster")]
mod cluster;
mod contract;
mod durable;
mod external;
mod flags;
mod fuzz_regressions;
mod held;
mod injection;
mod lag;
#[cfg(feature = "mercure")]
mod mercure;
mod regressions;
mod service;
mod soak;
#[cfg(feature = "tls")]
mod tls;
