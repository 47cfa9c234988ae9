//! Injection: arbitrary text published over HTTP (raw and form) comes out of a stream exactly as the
//! contract says, through a spec-faithful SSE parser, and never as an event nobody published.
//!
//! The data is built from the pieces that could break SSE framing if they leaked through: CR, LF,
//! CRLF, NUL, lines starting with `:`, `data:`, `id:`, `event:`, `retry:`, a byte-order mark, Unicode
//! line separators, and arbitrary text between them. Topics and event types come from the valid
//! alphabet; invalid ones must be refused with `400` and publish nothing. One server per property,
//! a fresh subscriber per case, and each case ends at a marker event, so a case's stream holds
//! exactly what it published (which also keeps shrinking sound).

use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestCaseError, TestRunner};

use ssed::{Config, Event};

use crate::support::{post, published_id, roundtrip, SseEvent, Subscriber, TestServer, DEADLINE};

/// Cases per property: enough variety to matter, few enough to run in a second or two.
const CASES: u32 = 64;

fn runner() -> TestRunner {
    TestRunner::new(Cases { cases: CASES, failure_persistence: None, ..Cases::default() })
}

fn server() -> TestServer {
    TestServer::start(Config { heartbeat: Duration::ZERO, ..Config::default() })
}

/// Text made of the pieces that matter to SSE framing, and arbitrary text between them.
fn data() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => Just("\n".to_string()),
        3 => Just("\r".to_string()),
        3 => Just("\r\n".to_string()),
        1 => Just("\0".to_string()),
        1 => Just(":".to_string()),
        1 => Just(": comment".to_string()),
        1 => Just("data:".to_string()),
        1 => Just("data: x".to_string()),
        1 => Just("id:".to_string()),
        1 => Just("id: 1".to_string()),
        1 => Just("event:".to_string()),
        1 => Just("event: injected".to_string()),
        1 => Just("retry: 1".to_string()),
        1 => Just(" ".to_string()),
        1 => Just("\u{feff}".to_string()),
        1 => Just("\u{2028}\u{2029}\u{85}".to_string()),
        1 => Just("é🦀".to_string()),
        4 => "[^\r\n]{0,12}",
        1 => any::<char>().prop_map(String::from),
    ];
    vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

/// A topic from the contract's alphabet: 1-128 bytes of `A-Z a-z 0-9 . _ ~ : / -`.
fn topic() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~:/-]{1,128}"
}

/// An event type: 1-128 bytes with no CR, LF or NUL (32 characters are at most 128 bytes).
fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n\0]{1,32}",
        Just(":x".to_string()),
        Just(" leading space".to_string()),
        Just("data".to_string()),
        Just("ssed-gap".to_string()),
    ]
}

/// What a client must see for published data, restated from the contract: one line ending at the
/// very end is dropped, and CRLF or CR become LF.
fn expected_data(data: &str) -> String {
    let trimmed = data
        .strip_suffix("\r\n")
        .or_else(|| data.strip_suffix('\n'))
        .or_else(|| data.strip_suffix('\r'))
        .unwrap_or(data);
    trimmed.replace("\r\n", "\n").replace('\r', "\n")
}

/// Percent-encodes everything but the unreserved characters (RFC 3986 §2.3); spaces become `+` when
/// `plus` is set, as HTML forms send them.
fn encode(text: &str, plus: bool) -> String {
    let mut out = String::new();
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            b' ' if plus => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

const FORM: &str = "Content-Type: application/x-www-form-urlencoded\r\n";

/// Which stream a case reads from.
#[derive(Debug, Clone, Copy)]
enum Listen {
    /// The event's first topic.
    First,
    /// Every topic the event has, in one stream (it must still arrive once).
    All,
    /// No topic: every event.
    Everything,
}

fn listen() -> impl Strategy<Value = Listen> {
    prop_oneof![Just(Listen::First), Just(Listen::All), Just(Listen::Everything)]
}

fn open(server: &TestServer, topics: &[String], listen: Listen) -> Subscriber {
    let query = match listen {
        Listen::First => format!("?topic={}", topics[0]),
        Listen::All => {
            format!("?{}", topics.iter().map(|t| format!("topic={t}")).collect::<Vec<_>>().join("&"))
        }
        Listen::Everything => String::new(),
    };
    Subscriber::open(server.addr, &format!("/events{query}"), "")
}

/// Publishes a marker to `topic` and returns every event the subscriber sees before it.
fn events_until_marker(
    server: &TestServer,
    sub: &mut Subscriber,
    topic: &str,
) -> Result<Vec<SseEvent>, TestCaseError> {
    let marker = server.publisher.publish(Event::new("marker").topic(topic)).expect("the marker").to_string();
    let mut seen = Vec::new();
    loop {
        let event = sub
            .next_event_within(DEADLINE)
            .ok_or_else(|| TestCaseError::fail(format!("no marker after {seen:?}")))?;
        if event.id.as_deref() == Some(marker.as_str()) {
            return Ok(seen);
        }
        seen.push(event);
    }
}

/// The `retry:` every stream starts with (the default `--retry-ms`).
const PRELUDE_RETRY: u64 = 3000;

/// The id, type and data of each event. (`retry:` is not an event field in the WHATWG model but a
/// setting that takes effect as it arrives: the tests check `Subscriber::retries`, every value seen.)
fn id_type_data(events: &[SseEvent]) -> Vec<(Option<String>, Option<String>, String)> {
    events.iter().map(|e| (e.id.clone(), e.event.clone(), e.data.clone())).collect()
}

/// Raw publish: the body is the data whatever it holds; the query names topics and the type.
#[test]
fn raw_publish_round_trips_exactly() {
    let server = server();
    let input = (data(), vec(topic(), 1..4), proptest::option::of(event_type()), listen());
    runner()
        .run(&input, |(data, topics, event_type, listen)| {
            let mut sub = open(&server, &topics, listen);
            let mut query: Vec<String> =
                topics.iter().map(|t| format!("topic={}", encode(t, false))).collect();
            if let Some(event_type) = &event_type {
                query.push(format!("event={}", encode(event_type, false)));
            }
            let id = published_id(&post(
                server.addr,
                &format!("/events?{}", query.join("&")),
                "",
                data.as_bytes(),
            ));
            let seen = events_until_marker(&server, &mut sub, &topics[0])?;
            prop_assert_eq!(
                id_type_data(&seen),
                vec![(Some(id.to_string()), event_type, expected_data(&data))]
            );
            prop_assert_eq!(&sub.retries, &[PRELUDE_RETRY], "no retry: field but the stream's own");
            Ok(())
        })
        .unwrap();
}

/// Form publish (Mercure style): fields in any order, with unknown fields, `+` or `%20` for spaces.
#[test]
fn form_publish_round_trips_exactly() {
    let server = server();
    let input = (
        data(),
        vec(topic(), 1..4),
        proptest::option::of(event_type()),
        proptest::option::of(0u64..=u64::from(u32::MAX)),
        any::<bool>(),
        any::<u64>(),
        listen(),
    );
    runner()
        .run(&input, |(data, topics, event_type, retry, plus, shuffle, listen)| {
            let mut sub = open(&server, &topics, listen);
            let mut fields: Vec<String> =
                topics.iter().map(|t| format!("topic={}", encode(t, plus))).collect();
            fields.push(format!("data={}", encode(&data, plus)));
            if let Some(event_type) = &event_type {
                fields.push(format!("type={}", encode(event_type, plus)));
            }
            if let Some(retry) = retry {
                fields.push(format!("retry={retry}"));
            }
            fields.push(format!("unknown={}", encode("data: x\nid: 1", plus)));
            // A deterministic shuffle from the generated seed; the topics keep their relative order.
            let n = fields.len();
            fields.rotate_left((shuffle % n as u64) as usize);
            let id = published_id(&post(server.addr, "/events", FORM, fields.join("&").as_bytes()));
            let seen = events_until_marker(&server, &mut sub, &topics[0])?;
            prop_assert_eq!(
                id_type_data(&seen),
                vec![(Some(id.to_string()), event_type, expected_data(&data))]
            );
            let retries: Vec<u64> = std::iter::once(PRELUDE_RETRY).chain(retry).collect();
            prop_assert_eq!(&sub.retries, &retries, "the stream's retry, then the event's");
            Ok(())
        })
        .unwrap();
}

/// Topics outside the alphabet (empty, over 128 bytes, any other byte, bad percent-encoding or UTF-8)
/// and event types with CR, LF or NUL, empty or over 128 bytes.
fn invalid_topic() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9]{129,160}",
        ("[A-Za-z0-9._~:/-]{0,8}", "[^A-Za-z0-9._~:/-]", "[A-Za-z0-9._~:/-]{0,8}")
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

fn invalid_event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{129,140}",
        ("[^\r\n\0]{0,8}", "[\r\n\0]", "[^\r\n\0]{0,8}").prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

/// Where an invalid value is sent.
#[derive(Debug, Clone)]
enum Refused {
    RawTopic(String),
    RawType(String),
    FormTopic(String),
    FormType(String),
    FormRetry(String),
    SubscribeTopic(String),
    /// Raw bytes for a percent-encoded query value that is not UTF-8 once decoded.
    NotUtf8Topic(u8),
}

fn refused() -> impl Strategy<Value = Refused> {
    prop_oneof![
        invalid_topic().prop_map(Refused::RawTopic),
        invalid_event_type().prop_map(Refused::RawType),
        invalid_topic().prop_map(Refused::FormTopic),
        invalid_event_type().prop_map(Refused::FormType),
        "[^0-9]{1,8}|[0-9]{21,24}|-[0-9]{1,3}".prop_map(Refused::FormRetry),
        invalid_topic().prop_map(Refused::SubscribeTopic),
        (0x80u8..=0xff).prop_map(Refused::NotUtf8Topic),
    ]
}

/// Every invalid topic, event type or retry is refused with `400` on every route, and a stream of
/// every topic that was open throughout sees nothing but the markers.
#[test]
fn invalid_topics_and_types_are_refused() {
    let server = server();
    // `TestRunner::run` takes a `Fn`: the one stream is borrowed per case.
    let everything = std::cell::RefCell::new(Subscriber::open(server.addr, "/events", ""));
    runner()
        .run(&(refused(), data()), |(refused, data)| {
            let body = data.as_bytes();
            let response = match &refused {
                Refused::RawTopic(t) => {
                    post(server.addr, &format!("/events?topic=ok&topic={}", encode(t, false)), "", body)
                }
                Refused::RawType(e) => {
                    post(server.addr, &format!("/events?topic=ok&event={}", encode(e, false)), "", body)
                }
                Refused::FormTopic(t) => post(
                    server.addr,
                    "/events",
                    FORM,
                    format!("topic=ok&topic={}&data={}", encode(t, true), encode(&data, true)).as_bytes(),
                ),
                Refused::FormType(e) => post(
                    server.addr,
                    "/events",
                    FORM,
                    format!("topic=ok&type={}&data={}", encode(e, true), encode(&data, true)).as_bytes(),
                ),
                Refused::FormRetry(r) => post(
                    server.addr,
                    "/events",
                    FORM,
                    format!("topic=ok&retry={}&data={}", encode(r, true), encode(&data, true)).as_bytes(),
                ),
                Refused::SubscribeTopic(t) => {
                    let request = format!(
                        "GET /events?topic={} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                        encode(t, false)
                    );
                    roundtrip(server.addr, request.as_bytes())
                }
                Refused::NotUtf8Topic(b) => post(server.addr, &format!("/events?topic=ok%{b:02X}"), "", body),
            };
            prop_assert_eq!(response.status, 400, "{:?} answered {:?}", refused, response);
            let seen = events_until_marker(&server, &mut everything.borrow_mut(), "ok")?;
            prop_assert_eq!(id_type_data(&seen), vec![], "a refused request published");
            Ok(())
        })
        .unwrap();
}
