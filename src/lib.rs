//! ssed: a small, fast Server-Sent Events broadcast server on one mio event loop.
//!
//! Publishers `POST` events; subscribers hold `GET /events` streams open and receive every event of
//! their topics, resuming after a reconnect from `Last-Event-ID` with no gap and no duplicate. The
//! HTTP contract is documented in the README.
//!
//! # Design
//! The code is split into a pure core and a thin shell:
//! - the core ([`event`], [`ids`], [`broadcast`], `http`, `sse`, `timer`, `conn`) does no I/O and never reads the clock: it
//!   takes bytes and an explicit `now`, and returns what should happen next, so it is tested without
//!   sockets or sleeps;
//! - the shell (`server`, `net`, `transport`) owns the `mio::Poll`, the listener and the connections, reads until
//!   `WouldBlock`, feeds the core, and writes frames straight out of the shared log.
//!
//! Every event is encoded once, at publish time, into its final wire bytes and kept in a bounded
//! history; a subscriber is a cursor into it, so an idle subscriber costs a few hundred bytes.
//!
//! # Embedding
//! ```no_run
//! use ssed::{Config, Event, Server};
//!
//! let server = Server::bind(Config::default())?;
//! let publisher = server.publisher();
//! let shutdown = server.shutdown_handle();
//! let thread = std::thread::spawn(move || server.run());
//! let id = publisher.publish(Event::new("hello").topic("chat"))?;
//! println!("published {id}");
//! shutdown.shutdown();
//! thread.join().expect("server thread panicked")?;
//! # Ok::<(), ssed::Error>(())
//! ```
//!
//! The library never installs a logger; it reports through the `log` facade.
//!
//! MSRV: Rust 1.88 (jsonwebtoken, for the `mercure` feature; see `rust-version` in Cargo.toml).
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod broadcast;
#[cfg(feature = "cluster")]
#[allow(dead_code)] // wired to the loop by the Redis bridge, next
mod cluster;
mod config;
mod connection;
mod error;
pub mod event;
mod fanout;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod http;
pub mod ids;
#[cfg(feature = "mercure")]
#[allow(dead_code)] // wired to the loop in the steps that follow
mod mercure;
mod metrics;
mod net;
mod server;
mod slab;
mod sse;
mod store;
pub mod systemd;
mod timer;
#[cfg(feature = "tls")]
mod tls;
mod topic;
mod transport;

/// Internals exposed for the criterion benches in `benches/`; not a stable API.
#[doc(hidden)]
pub mod __bench {
    pub use crate::http::request::parse_head;
    pub use crate::sse::{encode_frame, Fields};
}

pub use broadcast::EventId;
pub use config::*;
pub use error::{Error, ErrorKind};
pub use handle::{Event, Publisher, Reload, Shutdown};
pub use net::raise_descriptor_limit;
pub use server::Server;
pub use store::Fsync;
