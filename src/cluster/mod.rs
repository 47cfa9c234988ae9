//! Cluster mode: many ssed processes share one log through a Redis stream.
//!
//! `stream.rs` is the stream's format (ids, fields, the append script), with no connection.

pub mod stream;
