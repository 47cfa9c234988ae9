//! The fuzz corpus (`tests/fuzz-corpus/<target>/`), replayed against a real server.
//!
//! The inputs are the smallest ones that together cover what the fuzz targets in `fuzz/` reached (see
//! `fuzz/README.md`). The targets check the pure core in-process; these tests send the same bytes over
//! TCP, so a request that once broke the request side cannot come back unnoticed, and whatever the
//! bytes were, the server answers or closes, and keeps answering other connections. Each input starts
//! with the fuzz target's selector byte, read here the same way as in `ssed::fuzzing`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ssed::Config;

use crate::support::*;

/// How long a connection may stay quiet after its first answer bytes before the answer is taken as
/// complete (an event stream never ends by itself).
const QUIET: Duration = Duration::from_millis(200);

/// Every input of one target's corpus, with its file name, in name order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fuzz-corpus")).join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    inputs
}

/// The configuration `ssed::fuzzing::request_side` derives from its selector byte.
fn request_side_config(selector: u8) -> Config {
    let max_body = if selector & 0b100 != 0 { 16 } else { 4096 };
    Config {
        max_body,
        max_lag: 2 * max_body,
        heartbeat: Duration::ZERO,
        publish_token: (selector & 0b1 != 0).then(|| "pub".to_string()),
        subscribe_token: (selector & 0b10 != 0).then(|| "sub".to_string()),
        ..Config::default()
    }
}

/// What came back for bytes sent on one connection.
struct Reply {
    bytes: Vec<u8>,
    /// The server closed the connection (or reset it).
    closed: bool,
}

/// Sends `request`, half-closes, and reads until the server closes or, once it has answered, falls
/// quiet. Fails the test when nothing at all happens within [`DEADLINE`].
fn send(server: &TestServer, request: &[u8]) -> Reply {
    let mut stream = connect(server.addr);
    // The server may close before it has read everything (a refused head): that is an answer too.
    let _ = stream.write_all(request);
    // After a half-close the server answers what it has and closes, or keeps streaming events.
    let _ = stream.shutdown(Shutdown::Write);
    read_reply(&mut stream)
}

fn read_reply(stream: &mut TcpStream) -> Reply {
    let deadline = Instant::now() + DEADLINE;
    let mut bytes = Vec::new();
    loop {
        let now = Instant::now();
        assert!(now < deadline, "the server neither answered nor closed within {DEADLINE:?}");
        let wait = if bytes.is_empty() { deadline - now } else { QUIET };
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => return Reply { bytes, closed: true },
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !bytes.is_empty() {
                    return Reply { bytes, closed: false };
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Reply { bytes, closed: true },
        }
    }
}

/// Fails the test unless the server still answers `GET /health` on a new connection.
fn assert_healthy(server: &TestServer, after: &str) {
    let response = get(server.addr, "/health", "");
    assert_eq!((response.status, response.body_text().as_str()), (200, "ok\n"), "after {after}");
}

#[test]
fn request_side_corpus_is_answered_and_the_server_lives_on() {
    for (name, input) in corpus("request_side") {
        let Some((&selector, stream)) = input.split_first() else { continue };
        let server = TestServer::start(request_side_config(selector));
        let reply = send(&server, stream);
        assert!(
            reply.bytes.is_empty() || reply.bytes.starts_with(b"HTTP/1.1 "),
            "{name}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&reply.bytes)
        );
        for status in statuses(&reply.bytes) {
            assert!((100..600).contains(&status), "{name}: status {status}");
        }
        if reply.bytes.is_empty() {
            assert!(reply.closed, "{name}: no answer and not closed");
        }
        assert_healthy(&server, &name);
        server.stop();
    }
}

#[test]
fn publish_body_corpus_is_answered_and_the_server_lives_on() {
    let server = TestServer::start(Config { heartbeat: Duration::ZERO, ..Config::default() });
    for (name, input) in corpus("publish_body") {
        let Some((&selector, body)) = input.split_first() else { continue };
        let raw = selector & 0b1 != 0;
        // As in `ssed::fuzzing::publish_body`: the bytes are a chunked body unless the raw bit is set.
        let framing =
            if raw { format!("Content-Length: {}", body.len()) } else { "Transfer-Encoding: chunked".into() };
        for (target, content_type) in [
            ("/events?topic=q&event=t", ""),
            ("/events", "Content-Type: application/x-www-form-urlencoded\r\n"),
        ] {
            let mut request =
                format!("POST {target} HTTP/1.1\r\nHost: test\r\n{content_type}{framing}\r\n\r\n")
                    .into_bytes();
            request.extend_from_slice(body);
            let reply = send(&server, &request);
            let statuses = statuses(&reply.bytes);
            assert!(statuses.len() <= 1 || !raw, "{name}: {statuses:?}");
            match statuses.first() {
                Some(200) | Some(400) | Some(413) => {}
                Some(status) => panic!("{name} to {target}: status {status}"),
                // An unfinished chunked body: the half-close ends it without an answer.
                None => assert!(!raw && reply.closed, "{name} to {target}: no answer"),
            }
            if raw && target.contains("topic=") {
                // A raw body is the data: accepted exactly when it is UTF-8.
                let expected = if std::str::from_utf8(body).is_ok() { 200 } else { 400 };
                assert_eq!(statuses.first(), Some(&expected), "{name}");
            }
        }
        assert_healthy(&server, &name);
    }
    server.stop();
}

#[test]
fn encode_roundtrip_corpus_reaches_a_subscriber_intact() {
    let server = TestServer::start(Config { heartbeat: Duration::ZERO, ..Config::default() });
    let mut subscriber = Subscriber::open(server.addr, "/events?topic=fuzz", "");
    for (name, input) in corpus("encode_roundtrip") {
        let Some((_, rest)) = input.split_first() else { continue };
        // As in `ssed::fuzzing::encode_roundtrip`: lossy UTF-8, split at the first NUL into an event
        // type (used when valid) and the data.
        let text = String::from_utf8_lossy(rest);
        let (event_type, data) = match text.split_once('\0') {
            Some((candidate, data)) => (valid_event_type(candidate).then_some(candidate), data),
            None => (None, &text[..]),
        };
        let mut query = "topic=fuzz".to_string();
        if let Some(event_type) = event_type {
            query.push_str("&event=");
            query.push_str(&percent_encode(event_type));
        }
        let id = publish(server.addr, &query, data);
        let event = subscriber.next_event();
        assert_eq!(event.id, Some(id.to_string()), "{name}");
        assert_eq!(event.event.as_deref(), event_type, "{name}");
        assert_eq!(event.data, contract_data(data), "{name}: data {data:?}");
    }
    server.stop();
}

/// The contract's event type rule: 1–128 bytes, no CR, LF or NUL.
fn valid_event_type(candidate: &str) -> bool {
    (1..=128).contains(&candidate.len()) && !candidate.contains(['\r', '\n', '\0'])
}

/// The data a client must see, by the contract: CRLF, CR and LF each become `\n`, then one trailing
/// `\n` is dropped.
fn contract_data(data: &str) -> String {
    let mut out = data.replace("\r\n", "\n").replace('\r', "\n");
    if out.ends_with('\n') {
        out.pop();
    }
    out
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
