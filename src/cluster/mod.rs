//! Cluster mode: many ssed processes share one log through a Redis stream.
//!
//! `stream.rs` is the stream's format (ids, fields, the append script), with no connection;
//! `bridge.rs` the two threads that talk to Redis for the loop.

pub mod bridge;
pub mod stream;
