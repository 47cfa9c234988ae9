//! `GET /events`: headers, the prelude, delivery, topics, heartbeats, HTTP/1.0 and HEAD.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ssed::{Config, Event};

use super::*;

#[test]
fn http_publish_reaches_subscriber_with_id_type_and_data() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=chat", "");

    let response = post(server.addr, "/events?topic=chat&event=greeting", "", b"hello");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "publish answer is plain text: {response:?}");
    let id = published_id(&response);

    let event = sub.next_event();
    assert_eq!(event.id, Some(id.to_string()));
    assert_eq!(event.event.as_deref(), Some("greeting"));
    assert_eq!(event.data, "hello");

    // An event of another topic does not reach this stream; the next one of its own does.
    publish(server.addr, "topic=other", "not for chat");
    let second = publish(server.addr, "topic=chat", "again");
    assert!(second > id, "ids increase: {id} then {second}");
    let event = sub.next_event();
    assert_eq!(id_data(&event), (second, "again".to_string()));
    assert_eq!(event.event, None, "no type was given");
}

#[test]
fn publisher_handle_event_reaches_subscriber() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=chat", "");

    let id = server
        .publisher
        .publish(
            Event::new("line one\nline two")
                .topic("chat")
                .event_type("note")
                .retry(Duration::from_millis(1500)),
        )
        .expect("publish through the handle");
    let shown = id.to_string();
    let id = id.get();
    assert_eq!(shown, id.to_string(), "Display prints the decimal id");

    let event = sub.next_event();
    assert_eq!(event.id, Some(shown));
    assert_eq!(event.event.as_deref(), Some("note"));
    assert_eq!(event.data, "line one\nline two");
    assert_eq!(event.retry, Some(1500));
    assert_eq!(sub.retries, vec![3000, 1500], "the prelude's retry, then the event's");

    // Handle and HTTP publishes share one id sequence.
    let http = publish(server.addr, "topic=chat", "over http");
    assert!(http > id);
    assert_eq!(id_data(&sub.next_event()), (http, "over http".to_string()));
}

/// A stream body read byte for byte, chunked framing undone, so exact framing can be checked.
struct StreamBody {
    stream: TcpStream,
    raw: Vec<u8>,
    text: Vec<u8>,
}

impl StreamBody {
    fn read_until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            // Body bytes may have come with the head, so decode before waiting for more.
            self.decode(what);
            let text = String::from_utf8(self.text.clone()).expect("UTF-8 stream").replace("\r\n", "\n");
            if done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what}: stream so far {text:?}");
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("{what}: stream closed; had {text:?}"),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{what}: {e}; had {text:?}"),
            }
        }
    }

    fn decode(&mut self, what: &str) {
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size_text = std::str::from_utf8(&self.raw[..line_end]).expect("ASCII chunk size");
            let size = usize::from_str_radix(size_text.trim(), 16).expect("hex chunk size");
            if self.raw.len() < line_end + 4 + size {
                return;
            }
            assert_ne!(size, 0, "{what}: the stream ended");
            assert_eq!(&self.raw[line_end + 2 + size..line_end + 4 + size], b"\r\n", "chunk ends in CRLF");
            self.text.extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 4 + size);
        }
    }
}

#[test]
fn stream_headers_and_prelude() {
    let server = TestServer::start(Config { retry: Duration::from_millis(2500), ..quiet_config() });
    let mut stream = connect(server.addr);
    stream.write_all(b"GET /events?topic=p HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (head, rest) = read_head(&mut stream);
    assert_eq!(head.status, 200, "{head:?}");
    let content_type = head.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{head:?}");
    assert!(head.header("cache-control").is_some_and(|v| v.contains("no-cache")), "{head:?}");
    assert_eq!(head.header("x-accel-buffering"), Some("no"), "{head:?}");
    assert!(head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")), "{head:?}");
    assert_eq!(head.header("content-length"), None, "{head:?}");

    let mut body = StreamBody { stream, raw: rest, text: Vec::new() };
    // The comment and the retry line come at once, before any event is published.
    let prelude = body.read_until("the prelude", |t| t.matches('\n').count() >= 2);
    let lines: Vec<&str> = prelude.split('\n').collect();
    assert!(lines[0].starts_with(':'), "the body starts with a comment line: {prelude:?}");
    assert_eq!(lines[1], "retry: 2500", "then retry, with no blank line between: {prelude:?}");

    let id = publish(server.addr, "topic=p", "first");
    let text = body.read_until("the first event", |t| t.contains("\n\n"));
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(
        lines[2..6],
        [format!("id: {id}").as_str(), "data: first", "", ""][..],
        "the event follows the retry line with no blank line between: {text:?}"
    );
}

#[test]
fn retry_field_follows_config() {
    for (config, expected) in
        [(Config { retry: Duration::from_millis(1234), ..quiet_config() }, 1234), (quiet_config(), 3000)]
    {
        let server = TestServer::start(config);
        let mut sub = Subscriber::open(server.addr, "/events?topic=r", "");
        publish(server.addr, "topic=r", "x");
        let event = sub.next_event();
        assert_eq!(sub.retries, vec![expected], "the stream announces the configured retry");
        assert_eq!(event.retry, Some(expected));
    }
}

#[test]
fn multi_topic_stream_merges_in_id_order_once_each() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=a&topic=b", "");

    let a1 = publish(server.addr, "topic=a", "a1");
    publish(server.addr, "topic=c", "c1");
    let b1 = publish(server.addr, "topic=b", "b1");
    let ab = publish(server.addr, "topic=a&topic=b", "ab");
    let a2 = server.publisher.publish(Event::new("a2").topic("a")).unwrap().get();
    let ba = server.publisher.publish(Event::new("ba").topic("b").topic("a")).unwrap().get();
    let b2 = publish(server.addr, "topic=b", "b2");
    let end = publish(server.addr, "topic=a", "end");

    let expected = pairs(&[a1, b1, ab, a2, ba, b2, end], &["a1", "b1", "ab", "a2", "ba", "b2", "end"]);
    assert_eq!(next_events(&mut sub, expected.len()), expected);

    // Resuming the merged stream replays the retained events of both topics in id order, once each.
    let mut resumed =
        Subscriber::open(server.addr, "/events?topic=b&topic=a", &format!("Last-Event-ID: {a1}\r\n"));
    assert_eq!(next_events(&mut resumed, expected.len() - 1), expected[1..]);
    let live = publish(server.addr, "topic=b&topic=a", "live");
    assert_eq!(id_data(&resumed.next_event()), (live, "live".to_string()));
    assert_eq!(id_data(&sub.next_event()), (live, "live".to_string()));
}

#[test]
fn repeated_topic_counts_once() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=a&topic=a", "");
    let first = publish(server.addr, "topic=a&topic=a", "first");
    let second = server.publisher.publish(Event::new("second").topic("a").topic("a")).unwrap().get();
    let end = publish(server.addr, "topic=a", "end");
    let expected = pairs(&[first, second, end], &["first", "second", "end"]);
    assert_eq!(next_events(&mut sub, 3), expected);
    let mut resumed =
        Subscriber::open(server.addr, "/events?topic=a&topic=a", &format!("Last-Event-ID: {first}\r\n"));
    assert_eq!(next_events(&mut resumed, 2), expected[1..]);
}

#[test]
fn stream_without_topic_gets_every_topic() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events", "");
    let x = publish(server.addr, "topic=x", "x");
    let y = publish(server.addr, "topic=y&topic=z", "y");
    let z = server.publisher.publish(Event::new("z").topic("deep/path:1")).unwrap().get();
    assert_eq!(next_events(&mut sub, 3), pairs(&[x, y, z], &["x", "y", "z"]));
}

#[test]
fn topics_are_percent_decoded_and_allow_the_whole_alphabet() {
    let server = TestServer::start(quiet_config());
    let topic = "Az09._~:/-";
    let mut encoded = Subscriber::open(server.addr, "/events?topic=Az09._~%3A%2F-", "");
    let mut plain = Subscriber::open(server.addr, &format!("/events?topic={topic}"), "");
    let long = "t".repeat(128);
    let mut longest = Subscriber::open(server.addr, &format!("/events?topic={long}"), "");

    let id = publish(server.addr, "topic=%41z09%2e_~:/-", "decoded");
    let via_handle = server.publisher.publish(Event::new("handle").topic(topic)).unwrap().get();
    let expected = pairs(&[id, via_handle], &["decoded", "handle"]);
    assert_eq!(next_events(&mut encoded, 2), expected);
    assert_eq!(next_events(&mut plain, 2), expected);

    let id = publish(server.addr, &format!("topic={long}"), "128 bytes");
    assert_eq!(id_data(&longest.next_event()), (id, "128 bytes".to_string()));
}

#[test]
fn http_10_subscriber_gets_close_delimited_stream() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open_on(connect(server.addr), "/events?topic=old", "", "HTTP/1.0");
    let response = &sub.response;
    assert!(response.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")), "{response:?}");
    assert_eq!(response.header("transfer-encoding"), None, "HTTP/1.0 has no chunked coding: {response:?}");
    assert_eq!(response.header("content-length"), None, "{response:?}");
    assert!(response.header("content-type").is_some_and(|v| v.starts_with("text/event-stream")));

    let first = publish(server.addr, "topic=old", "one");
    let second = server.publisher.publish(Event::new("two\nlines").topic("old")).unwrap().get();
    assert_eq!(next_events(&mut sub, 2), pairs(&[first, second], &["one", "two\nlines"]));
    assert_eq!(sub.retries, vec![3000]);

    // The body ends where the connection does.
    server.shutdown.shutdown();
    assert_eq!(sub.read_to_end(), vec![]);
    assert!(sub.ended);
}

#[test]
fn head_events_gives_stream_headers_and_no_body() {
    let server = TestServer::start(quiet_config());
    let mut conn = Conn::open(server.addr);
    conn.send(
        b"HEAD /events?topic=h HTTP/1.1\r\nHost: test\r\n\r\n\
          GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    let head = conn.head();
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.header("content-type").is_some_and(|v| v.starts_with("text/event-stream")), "{head:?}");
    assert!(head.header("cache-control").is_some_and(|v| v.contains("no-cache")), "{head:?}");
    assert_eq!(head.header("x-accel-buffering"), Some("no"), "{head:?}");

    if head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
        // The server chose to close after HEAD: then nothing at all may follow the head.
        assert_eq!(conn.buf, b"", "HEAD carried a body");
        assert_closed(&mut conn.stream);
    } else {
        // Kept alive: the very next bytes are the answer to the pipelined GET /health.
        let health = conn.response();
        assert_eq!((health.status, health.body_text().trim_end()), (200, "ok"), "HEAD carried a body");
    }
}
