//! HTTP/1.1 for ssed: request heads, routing, body decoding and the responses, all without I/O.

pub mod chunk;
pub mod reader;
pub mod request;
pub mod response;
pub mod route;
