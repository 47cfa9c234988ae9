//! Request smuggling and framing: every way of disagreeing about where a request ends is refused
//! and closes the connection, and nothing is published by a refused request. Complements
//! `contract::errors`, which has one case per row of the contract's error table.

use std::io::ErrorKind;
use std::time::Duration;

use ssed::Config;

use super::*;

fn config() -> Config {
    Config { heartbeat: Duration::ZERO, max_body: 1024, max_lag: 64 * 1024, ..Config::default() }
}

/// Sends `request` on a connection of its own and returns the status of every response that came
/// back before the server closed the connection (all of them carry `Content-Length`), then a `0` if
/// the connection was still open two seconds later.
fn statuses(server: &TestServer, request: &[u8]) -> Vec<u16> {
    let mut stream = connect(server.addr);
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // The server may answer and close before taking every byte; what it answered is what counts.
    let _ = stream.write_all(request);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let open = loop {
        match stream.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
                break false
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break true,
            Err(e) => panic!("reading answers: {e}"),
        }
    };
    let mut found = crate::support::statuses(&bytes);
    if open {
        found.push(0);
    }
    found
}

macro_rules! refused {
    ($($name:ident: $request:expr => $status:expr;)*) => {
        /// Each request is answered with exactly one refusal and the connection closes; then a
        /// marker is the first event a subscriber of the targeted topic sees.
        #[test]
        fn smuggling_shapes_are_refused_and_publish_nothing() {
            let server = TestServer::start(config());
            let mut watcher = Subscriber::open(server.addr, "/events?topic=smuggled", "");
            $(
                let request = $request;
                let request: &[u8] = request.as_ref();
                assert_eq!(statuses(&server, request), vec![$status], "{}: {:?}", stringify!($name),
                    String::from_utf8_lossy(request));
            )*
            assert_marker_next(server.addr, &mut watcher, "topic=smuggled", "a refused request published");
        }
    };
}

const POST: &str = "POST /events?topic=smuggled HTTP/1.1\r\nHost: t\r\n";

fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("{POST}{headers}\r\n{body}").into_bytes()
}

refused! {
    // RFC 9112 §6.1: a message with both is a smuggling attempt, whatever the order or spelling.
    te_then_cl: &post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n") => 400;
    cl_zero_and_te: &post("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n") => 400;
    cl_and_te_upper: &post("content-length: 5\r\nTRANSFER-ENCODING: CHUNKED\r\n", "hello") => 400;
    // RFC 9112 §6.3: a repeated or invalid Content-Length is unrecoverable.
    cl_twice_same: &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello") => 400;
    cl_twice_differ: &post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!") => 400;
    cl_list: &post("Content-Length: 5, 5\r\n", "hello") => 400;
    cl_words: &post("Content-Length: five\r\n", "hello") => 400;
    cl_plus: &post("Content-Length: +5\r\n", "hello") => 400;
    cl_minus: &post("Content-Length: -5\r\n", "hello") => 400;
    cl_hex: &post("Content-Length: 0x5\r\n", "hello") => 400;
    cl_two_numbers: &post("Content-Length: 5 5\r\n", "hello") => 400;
    cl_empty: &post("Content-Length:\r\n", "hello") => 400;
    cl_overflow: &post("Content-Length: 18446744073709551621\r\n", "hello") => 400;
    // RFC 9112 §5.1-5.2: whitespace before the colon and obsolete line folding are refused.
    space_before_colon: &post("Content-Length : 5\r\n", "hello") => 400;
    te_space_before_colon: &post("Transfer-Encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n") => 400;
    obs_fold: &post("Content-Length: 5\r\n 5\r\n", "hello") => 400;
    // Codings other than a single `chunked` are not implemented (RFC 9112 §6.1: 501).
    te_gzip: &post("Transfer-Encoding: gzip\r\n", "hello") => 501;
    te_gzip_chunked: &post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n") => 501;
    te_chunked_identity: &post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n") => 501;
    te_obfuscated: &post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n") => 501;
    te_twice: &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n") => 501;
    te_on_http10: b"POST /events?topic=smuggled HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" => 501;
    // Bytes that cannot be in a field value.
    nul_in_value: &post("X-Note: a\0b\r\nContent-Length: 5\r\n", "hello") => 400;
    bare_cr_in_value: &post("X-Note: a\rb\r\nContent-Length: 5\r\n", "hello") => 400;
    // Malformed chunked framing (RFC 9112 §7.1).
    chunk_size_not_hex: &post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n") => 400;
    chunk_size_0x: &post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n") => 400;
    chunk_size_leading_space: &post("Transfer-Encoding: chunked\r\n", " 5\r\nhello\r\n0\r\n\r\n") => 400;
    chunk_size_negative: &post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n") => 400;
    chunk_size_bare_lf: &post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n") => 400;
    chunk_data_too_long: &post("Transfer-Encoding: chunked\r\n", "5\r\nhello!\r\n0\r\n\r\n") => 400;
    chunk_size_line_too_long: &post("Transfer-Encoding: chunked\r\n", &format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(5000))) => 400;
    last_chunk_bare_lf: &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\n\r\n") => 400;
    // Sizes: the decoded cap (1024 here) against a size line that would overflow.
    chunk_size_huge: &post("Transfer-Encoding: chunked\r\n", "ffffffffffffffff\r\nhello\r\n") => 413;
    chunk_size_overflow: &post("Transfer-Encoding: chunked\r\n", "10000000000000000\r\nhello\r\n") => 400;
    // A body on a request that has none.
    get_with_length: b"GET /events?topic=smuggled HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" => 400;
    get_with_chunked: b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" => 400;
    // Versions and heads.
    http_2_line: b"POST /events?topic=smuggled HTTP/2.0\r\nContent-Length: 5\r\n\r\nhello" => 505;
    extra_in_request_line: b"POST /events?topic=smuggled HTTP/1.1 x\r\nContent-Length: 5\r\n\r\nhello" => 400;
    too_many_headers: format!("{POST}{}\r\n", "X-H: 1\r\n".repeat(65)).into_bytes() => 431;
    request_line_over_16k: format!("POST /events?topic=smuggled&pad={} HTTP/1.1\r\n\r\n", "p".repeat(17 * 1024)).into_bytes() => 431;
}

/// A trailer line of one byte ended by a bare LF is not the end of the trailer section: the bytes
/// after it must not be read as a second, smuggled request.
///
/// Before the fix in `ChunkedDecoder` (`line_len <= 1` took any one-byte line for the empty line),
/// `0\r\nX\n` ended the body and the `GET /metrics` that a front proxy sees as trailer fields was
/// answered on its own: three answers instead of two.
#[test]
fn a_one_byte_trailer_line_does_not_end_the_body() {
    let server = TestServer::start(config());
    let request = format!(
        "{POST}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX\nGET /metrics HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(statuses(&server, request.as_bytes()), vec![200, 200], "the publish and /health only");
}

/// A chunk size is hex digits only (RFC 9112 §7.1: `chunk-size = 1*HEXDIG`). Before the fix,
/// `usize::from_str_radix` took a leading `+`, so `+5` was read as 5 where a stricter proxy in front
/// refuses it or reads something else: a parsing difference of the kind smuggling is built on.
#[test]
fn a_signed_chunk_size_is_refused() {
    let server = TestServer::start(config());
    let mut watcher = Subscriber::open(server.addr, "/events?topic=smuggled", "");
    let request = post("Transfer-Encoding: chunked\r\n", "+5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(statuses(&server, &request), vec![400]);
    assert_marker_next(server.addr, &mut watcher, "topic=smuggled", "the signed chunk was published");
}

/// The cap applies to the decoded body, not to the bytes on the wire: 1024 bytes sent as 1024 chunks
/// of one byte with extensions (over 20 KiB of framing) are published whole; one byte more is `413`.
#[test]
fn chunked_cap_counts_decoded_bytes_exactly() {
    let server = TestServer::start(config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=capped", "");
    let body = |n: usize| -> String {
        let chunks: String =
            (0..n).map(|i| format!("1;ext-{i:05}=pad\r\n{}\r\n", (b'a' + (i % 26) as u8) as char)).collect();
        format!("{chunks}0\r\n\r\n")
    };
    let request = |n: usize| {
        format!(
            "POST /events?topic=capped HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}",
            body(n)
        )
    };
    assert!(request(1024).len() > 20 * 1024);
    assert_eq!(statuses(&server, request(1025).as_bytes()), vec![413]);
    assert_eq!(statuses(&server, request(1024).as_bytes()), vec![200]);
    let event = sub.next_event();
    let expected: String = (0..1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    assert_eq!(event.data, expected, "the first event is the one at the cap, decoded");
}

/// Lenient shapes that are accepted because their meaning is unambiguous (RFC 9112 allows a
/// recipient to accept them), each published exactly once.
#[test]
fn unambiguous_lenient_framing_is_accepted_once() {
    let server = TestServer::start(config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=lenient", "");
    let cases: [&[u8]; 5] = [
        // Bare LF line endings in the head (RFC 9112 §2.2).
        b"POST /events?topic=lenient HTTP/1.1\nContent-Length: 5\nConnection: close\n\nhello",
        // Leading zeros in Content-Length.
        b"POST /events?topic=lenient HTTP/1.1\r\nContent-Length: 005\r\nConnection: close\r\n\r\nhello",
        // A tab as the whitespace around a field value.
        b"POST /events?topic=lenient HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        // Chunk extensions, and trailer fields, are skipped.
        b"POST /events?topic=lenient HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        // Upper-case hex in a chunk size.
        b"POST /events?topic=lenient HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nA\r\nhellohello\r\n0\r\n\r\n",
    ];
    for request in cases {
        assert_eq!(statuses(&server, request), vec![200], "{:?}", String::from_utf8_lossy(request));
    }
    let data: Vec<String> = (0..cases.len()).map(|_| sub.next_event().data).collect();
    assert_eq!(data, ["hello", "hello", "hello", "hello", "hellohello"]);
    assert!(sub.next_event_within(Duration::from_millis(200)).is_none(), "each was published once");
}
