//! The HTTP contract (version 1, as the README states it) as a client sees it on the wire.
//!
//! Every test starts its own server on a fresh loopback port, speaks raw HTTP/1.x to it over std
//! `TcpStream`s, and asserts only what a browser, `curl` or a proxy would notice: status lines,
//! headers, body bytes and the events an SSE parser following the WHATWG rules dispatches. Waits are
//! bounded by [`DEADLINE`]; nothing sleeps to synchronise.

mod access;
mod errors;
mod operations;
mod protocol;
mod publish;
mod resume;
mod subscribe;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ssed::Config;

use crate::support::*;

/// A small configuration with heartbeats off, so a stream carries only what the test publishes.
fn quiet_config() -> Config {
    Config { history: 64, heartbeat: Duration::ZERO, ..Config::default() }
}

/// A form publish (`application/x-www-form-urlencoded`) of `body` to `/events`.
fn post_form(addr: SocketAddr, body: &str) -> Response {
    post(addr, "/events", "Content-Type: application/x-www-form-urlencoded\r\n", body.as_bytes())
}

/// Asserts `response` is the error `status` with a one-line plain-text body.
fn assert_error(response: &Response, status: u16) {
    assert_eq!(response.status, status, "expected {status}, got {response:?}");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "error body is plain text: {response:?}");
    let text = response.body_text();
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    assert!(!line.trim().is_empty(), "error body gives a reason: {response:?}");
    assert!(!line.contains(['\n', '\r']), "error body is one line: {text:?}");
}

/// Asserts the server closes `stream` (end of file, or a reset) within the deadline without sending
/// another byte.
fn assert_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection to close, got {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {}
        Err(e) => panic!("the connection was not closed within the deadline: {e}"),
    }
}

/// `(id, data)` pairs from ids and the data strings they were published with.
fn pairs(ids: &[u64], data: &[&str]) -> Vec<(u64, String)> {
    assert_eq!(ids.len(), data.len());
    ids.iter().zip(data).map(|(id, d)| (*id, d.to_string())).collect()
}
