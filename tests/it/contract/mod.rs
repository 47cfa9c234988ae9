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

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ssed::Config;

use crate::support::*;

/// A small configuration with heartbeats off, so a stream carries only what the test publishes.
fn quiet_config() -> Config {
    Config { history: 64, heartbeat: Duration::ZERO, ..Config::default() }
}

/// `GET path` with the extra header lines given (each ending in CRLF), on a connection of its own.
/// Not for a successful subscribe, whose body never ends: use [`Subscriber`] for that.
fn get(server: &TestServer, path: &str, headers: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
    roundtrip(server, request.as_bytes())
}

/// `POST path` with a `Content-Length` body and the extra header lines given.
fn post(server: &TestServer, path: &str, headers: &str, body: &[u8]) -> Response {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    roundtrip(server, &request)
}

/// A form publish (`application/x-www-form-urlencoded`) of `body` to `/events`.
fn post_form(server: &TestServer, body: &str) -> Response {
    post(server, "/events", "Content-Type: application/x-www-form-urlencoded\r\n", body.as_bytes())
}

/// The id a successful publish answered with, checking the answer's shape on the way.
fn published_id(response: &Response) -> u64 {
    assert_eq!(response.status, 200, "publish answered {response:?}");
    let text = response.body_text();
    let id = text.strip_suffix('\n').unwrap_or_else(|| panic!("publish body {text:?} ends with a newline"));
    id.parse().unwrap_or_else(|_| panic!("publish body {text:?} is a decimal id"))
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

/// Sends `request` on a fresh connection; returns the response and the connection, for close checks.
fn exchange(server: &TestServer, request: &[u8]) -> (Response, TcpStream) {
    let mut stream = server.connect();
    stream.write_all(request).unwrap();
    let response = read_response(&mut stream);
    (response, stream)
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

/// The id and data of a dispatched event that must carry an id (every event but `ssed-gap`).
fn id_data(event: &SseEvent) -> (u64, String) {
    let id = event.id.as_deref().unwrap_or_else(|| panic!("event without an id: {event:?}"));
    (id.parse().unwrap_or_else(|_| panic!("id {id:?} is a decimal u64")), event.data.clone())
}

/// The next `n` events of `subscriber` as `(id, data)`.
fn next_events(subscriber: &mut Subscriber, n: usize) -> Vec<(u64, String)> {
    (0..n).map(|_| id_data(&subscriber.next_event())).collect()
}

/// `(id, data)` pairs from ids and the data strings they were published with.
fn pairs(ids: &[u64], data: &[&str]) -> Vec<(u64, String)> {
    assert_eq!(ids.len(), data.len());
    ids.iter().zip(data).map(|(id, d)| (*id, d.to_string())).collect()
}

/// One connection whose responses are read in order, keeping bytes that belong to the next response,
/// for keep-alive and pipelining.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(server: &TestServer) -> Conn {
        Conn { stream: server.connect(), buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed early; had {:?}", String::from_utf8_lossy(&self.buf)),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read failed: {e}; had {:?}", String::from_utf8_lossy(&self.buf)),
        }
    }

    /// The next response head, leaving any bytes after it in the buffer (a HEAD response ends here).
    fn head(&mut self) -> Response {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill();
        };
        let response = parse_head_bytes(&self.buf[..end]);
        self.buf.drain(..end + 4);
        response
    }

    /// The next complete response whose body is framed by `Content-Length` (or is empty).
    fn response(&mut self) -> Response {
        let mut response = self.head();
        assert!(response.header("transfer-encoding").is_none(), "unexpected chunked body: {response:?}");
        let len: usize = response.header("content-length").map_or(0, |v| v.parse().expect("numeric length"));
        while self.buf.len() < len {
            self.fill();
        }
        response.body = self.buf.drain(..len).collect();
        response
    }
}
