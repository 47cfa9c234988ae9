//! ssed's Mercure hub spoken to by clients it did not write: headless Chromium's `EventSource` with
//! the token in a cookie across origins, Python's pymercure publishing (tokens minted with PyJWT)
//! to httpx-sse and pymercure's own consumer, and Node's `eventsource` package resuming on custom
//! ids across server-ended streams.
//!
//! Updates the tests publish themselves go over HTTP to the hub with a token signed here
//! (jsonwebtoken), as an application's back end would.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use ssed::Config;

use super::chromium::{describe, headless, PageServer};
use super::{node_client_dir, program, repo_path, Json, Paced, Proc, Record, CLIENT_DEADLINE};
use crate::support::{post, Subscriber, TempDir, TestServer};

/// The hub's HS256 secret in these tests.
const SECRET: &str = "!ChangeThisMercureHubJWTSecretKey!";
const HUB: &str = "/.well-known/mercure";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A current-revision token (`typ: at+jwt`, HS256 with [`SECRET`]) for the audience `aud`, granting
/// `actions` on `topics` (each `(match, match_type)`), valid for ten minutes.
fn token(aud: &str, actions: &[&str], topics: &[(&str, &str)]) -> String {
    let topics: Vec<Value> = topics.iter().map(|(m, t)| json!({"match": m, "match_type": t})).collect();
    let claims = json!({
        "iss": "https://localhost",
        "aud": aud,
        "sub": "ssed-external-test",
        "iat": unix_now(),
        "exp": unix_now() + 600,
        "authorization_details": [
            {"type": "https://mercure.rocks/authorization-detail", "actions": actions, "topics": topics}
        ],
    });
    let header = Header { typ: Some("at+jwt".into()), ..Header::new(Algorithm::HS256) };
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

/// The audience ssed derives for a client reaching it as `addr` (its `Host` header).
fn audience_of(addr: SocketAddr) -> String {
    format!("http://{addr}{HUB}")
}

/// The application's back end, publishing to the hub at `addr` over HTTP with a token for `aud`.
struct Backend {
    addr: SocketAddr,
    token: String,
}

impl Backend {
    /// A publisher for the audience ssed derives from `Host: test`, which the support helpers send.
    fn new(addr: SocketAddr) -> Backend {
        Backend::for_audience(addr, "https://test/.well-known/mercure")
    }

    fn for_audience(addr: SocketAddr, aud: &str) -> Backend {
        Backend { addr, token: token(aud, &["publish"], &[("*", "exact")]) }
    }

    /// Publishes the form `pairs`; the id the hub answered with.
    fn publish(&self, pairs: &[(&str, &str)]) -> String {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let headers = format!(
            "Authorization: Bearer {}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
            self.token
        );
        let response = post(self.addr, HUB, &headers, body.as_bytes());
        assert_eq!(response.status, 200, "publish {pairs:?} answered {response:?}");
        response.body_text()
    }

    /// Publishes `(id, topics, private, data)`, checking that the hub answers with the id.
    fn publish_update(&self, (id, topics, private, data): (&str, &[&str], bool, &str)) {
        let mut pairs: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
        pairs.extend([("id", id), ("data", data)]);
        if private {
            pairs.push(("private", "on"));
        }
        assert_eq!(self.publish(&pairs), id, "the hub answers with the publisher's id");
    }
}

// ---------------------------------------------------------------------------------------------
// Chromium

const BOOK_1: &str = "https://example.com/books/1";
const BOOK_2: &str = "https://example.com/books/2";
/// The subscriber's token grants it this: private updates with a topic under it reach the page.
const OWN: &str = "https://example.com/users/42/books/1";
/// Not covered by the subscriber's token.
const OTHERS: &str = "https://example.com/users/41/books/1";

/// The page's reports, in the order the page made them.
struct Reports {
    page: PageServer,
    deadline: Instant,
    seen: Vec<Record>,
}

impl Reports {
    /// The next report, failing the test at the deadline or if an `EventSource` gave up.
    fn next(&mut self, browser: &mut Proc, waiting_for: &str) -> Record {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        let Ok(line) = self.page.reports.recv_timeout(wait) else {
            let exited = browser.try_exit();
            panic!(
                "timed out waiting for {waiting_for} (browser exited: {exited:?}); {}",
                describe(&self.seen, browser)
            );
        };
        let record = Record::parse(&line).unwrap_or_else(|e| panic!("{e} in report {line:?}"));
        assert_eq!(record.int("seq"), Some(self.seen.len() as i64), "reports arrive in order, once each");
        self.seen.push(record.clone());
        if record.kind() == "error" && record.int("readyState") != Some(0) {
            panic!("an EventSource gave up: {}", describe(&self.seen, browser));
        }
        record
    }

    /// Reads reports until `done(reports so far)` holds.
    fn until(&mut self, browser: &mut Proc, waiting_for: &str, done: impl Fn(&[Record]) -> bool) {
        while !done(&self.seen) {
            self.next(browser, waiting_for);
        }
    }
}

/// Whether `stream` has reported a message with the id `id`.
fn has_message(reports: &[Record], stream: &str, id: &str) -> bool {
    reports
        .iter()
        .any(|r| r.kind() == "message" && r.str("stream") == Some(stream) && r.str("id") == Some(id))
}

/// The page's three subscriptions (see tests/clients/chromium/mercure.html).
const STREAMS: [&str; 3] = ["exact", "pattern", "legacy"];

/// The messages `stream` reported, as (id, data).
fn messages<'a>(reports: &'a [Record], stream: &str) -> Vec<(&'a str, &'a str)> {
    reports
        .iter()
        .filter(|r| r.kind() == "message" && r.str("stream") == Some(stream))
        .map(|r| (r.str("id").unwrap_or_default(), r.str("data").unwrap_or_default()))
        .collect()
}

/// The position of the first report at or after `from` that satisfies `f`.
fn position_from(reports: &[Record], from: usize, f: impl Fn(&Record) -> bool) -> Option<usize> {
    reports.iter().skip(from).position(f).map(|i| i + from)
}

#[test]
#[ignore = "needs chromium: run by .ci/run"]
fn chromium_gets_hub_updates_with_a_cookie_token_across_origins_and_resumes_on_custom_ids() {
    const COOKIE: &str = "hubToken";
    // The hub's identifier, configured (--jwt-audience): the tokens need not know ssed's port.
    const AUDIENCE: &str = "https://hub.example/.well-known/mercure";
    let chromium = program("chromium");
    let html =
        std::fs::read_to_string(repo_path("tests/clients/chromium/mercure.html")).expect("read mercure.html");
    // The subscriber's token in an HttpOnly cookie set by the page's server for 127.0.0.1. Cookies
    // are per host, not per port: the browser sends it to ssed's port too, on requests made with
    // credentials, which across origins ssed must allow with CORS.
    let subscriber = token(AUDIENCE, &["subscribe"], &[("https://example.com/users/42/*", "urlpattern")]);
    let set_cookie = format!("Set-Cookie: {COOKIE}={subscriber}; Path={HUB}; HttpOnly; SameSite=Strict\r\n");
    let page = PageServer::start_with_headers(html, set_cookie);
    let origin = format!("http://{}", page.addr);
    // Streams end after about three seconds (±20%) and the browser comes back 1.5 s later: what is
    // published as soon as a stream has ended reaches it only through its Last-Event-ID.
    let server = TestServer::start(Config {
        jwt_key: Some(SECRET.into()),
        jwt_audiences: vec![AUDIENCE.into()],
        jwt_cookie: Some(COOKIE.into()),
        cors_origins: vec![origin.clone()],
        max_lifetime: Duration::from_secs(3),
        retry: Duration::from_millis(1500),
        ..Config::default()
    });
    let backend = Backend::for_audience(server.addr, AUDIENCE);
    let profile = TempDir::new("chromium-mercure");
    let url = format!("{origin}/page.html?hub=http://{}{HUB}", server.addr);
    let mut browser = Proc::spawn("chromium", headless(&chromium, &profile, &url), None);
    let mut reports = Reports { page, deadline: Instant::now() + CLIENT_DEADLINE, seen: Vec::new() };

    let loaded = reports.next(&mut browser, "the page to load");
    assert_eq!(loaded.kind(), "loaded", "{}", describe(&reports.seen, &browser));
    assert_eq!(loaded.0.get("cookieVisible"), Some(&Json::Bool(false)), "the cookie is HttpOnly");
    reports.until(&mut browser, "the three streams to open", |seen| {
        STREAMS.iter().all(|s| seen.iter().any(|r| r.kind() == "open" && r.str("stream") == Some(s)))
    });

    // Live: public updates on two books, a private one the cookie's token grants (through its
    // alternate topic), a private one it does not, then a public marker: the page sees the refused
    // one nowhere, as the marker following right after the granted one shows.
    for update in [
        ("urn:example:e1", &[BOOK_1][..], false, "public, book 1"),
        ("urn:example:e2", &[BOOK_2][..], false, "public, book 2"),
        ("urn:example:e3", &[BOOK_1, OWN][..], true, "private, granted"),
        ("urn:example:e4", &[BOOK_1, OTHERS][..], true, "private, someone else's"),
        ("urn:example:e5", &[BOOK_1][..], false, "marker"),
    ] {
        backend.publish_update(update);
    }
    reports.until(&mut browser, "the marker on every stream", |seen| {
        STREAMS.iter().all(|s| has_message(seen, s, "urn:example:e5"))
    });

    // Resume: once the server has ended the `exact` stream (the browser waits its retry before
    // coming back), updates are published; the browser's reconnect carries the custom id it saw
    // last as Last-Event-ID and must get exactly these, the refused private one excepted.
    let ended_at = loop {
        let record = reports.next(&mut browser, "the server to end the `exact` stream");
        if record.kind() == "error" && record.str("stream") == Some("exact") {
            break reports.seen.len() - 1;
        }
    };
    for update in [
        ("urn:example:r1", &[BOOK_1][..], false, "missed, public"),
        ("urn:example:r2", &[BOOK_1, OWN][..], true, "missed, private, granted"),
        ("urn:example:r3", &[BOOK_1, OTHERS][..], true, "missed, private, someone else's"),
        ("urn:example:r4", &[BOOK_1][..], false, "missed, marker"),
    ] {
        backend.publish_update(update);
    }
    let published_at = reports.seen.len();
    reports.until(&mut browser, "the missed updates on every stream", |seen| {
        STREAMS.iter().all(|s| has_message(seen, s, "urn:example:r4"))
    });
    backend.publish(&[("topic", BOOK_1), ("type", "done"), ("id", "urn:example:done"), ("data", "bye")]);
    reports.until(&mut browser, "`done` on every stream", |seen| {
        STREAMS.iter().all(|s| seen.iter().any(|r| r.kind() == "done" && r.str("stream") == Some(s)))
    });
    browser.kill();

    let seen = &reports.seen;
    let context = describe(seen, &browser);
    let exact = [
        ("urn:example:e1", "public, book 1"),
        ("urn:example:e3", "private, granted"),
        ("urn:example:e5", "marker"),
        ("urn:example:r1", "missed, public"),
        ("urn:example:r2", "missed, private, granted"),
        ("urn:example:r4", "missed, marker"),
    ];
    assert_eq!(
        messages(seen, "exact"),
        exact,
        "`match`: each update once, as lastEventId its own id: {context}"
    );
    let mut books = exact.to_vec();
    books.insert(1, ("urn:example:e2", "public, book 2"));
    assert_eq!(messages(seen, "pattern"), books, "`match_urlpattern`: {context}");
    assert_eq!(messages(seen, "legacy"), books, "`topic` with a URI template: {context}");
    // The missed updates came on the `exact` stream's next connection, opened after they were published.
    let reopened = position_from(seen, ended_at, |r| r.kind() == "open" && r.str("stream") == Some("exact"))
        .unwrap_or_else(|| panic!("the `exact` stream never reopened: {context}"));
    assert!(reopened >= published_at, "the browser came back before the updates were published: {context}");
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Python

/// `text` percent-encoded as a query value.
fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[test]
#[ignore = "needs python with pymercure, PyJWT and httpx-sse: run by .ci/run"]
fn python_pymercure_publishes_to_the_hub_and_subscribers_get_the_updates_with_their_ids() {
    let python = super::python::venv_python();
    let server = TestServer::start(Config { jwt_key: Some(SECRET.into()), ..Config::default() });
    // A subscriber of ssed's own test client: what the hub made of pymercure's form.
    let mut watcher = Subscriber::open(server.addr, &format!("{HUB}?match={}", query_value(BOOK_1)), "");
    let updates = [
        ("urn:uuid:0f8e7a52-1c3b-4d6e-9a2b-5c4d3e2f1a01", "first update\nline two, é ✓ 🎉"),
        ("urn:uuid:0f8e7a52-1c3b-4d6e-9a2b-5c4d3e2f1a02", "second update"),
    ];
    let mut command = Command::new(python);
    command
        .arg("-u")
        .arg(repo_path("tests/clients/python/mercure_client.py"))
        .arg(format!("http://{}{HUB}", server.addr))
        .arg(SECRET);
    for (id, data) in updates {
        command.arg(id).arg(data);
    }
    let mut client = Proc::spawn("python pymercure + httpx-sse", command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;

    let open = client.expect_record(deadline, "httpx-sse's response head");
    assert_eq!(open.kind(), "open", "{}", client.report());
    assert_eq!(open.int("status"), Some(200), "{}", client.report());
    assert!(open.str("content_type").unwrap_or("").starts_with("text/event-stream"), "{}", client.report());
    // pymercure returns the hub's answer, the id it was given; the two bad tokens raise the
    // library's errors for 401 and 403.
    let published: Vec<Record> =
        (0..4).map(|_| client.expect_record(deadline, "pymercure's publications")).collect();
    let got: Vec<(&str, Option<&str>)> =
        published.iter().map(|r| (r.kind(), r.str("id").or(r.str("error")))).collect();
    let want = [
        ("published", Some(updates[0].0)),
        ("refused", Some("UnauthorizedPublisherError")),
        ("refused", Some("PublishRejectedError")),
        ("published", Some(updates[1].0)),
    ];
    assert_eq!(got, want, "{}", client.report());
    // httpx-sse's events, then what pymercure's consumer got (the old `topic` query with a URI
    // template): each update once, with the publisher's id.
    for kind in ["event", "consumed"] {
        for (id, data) in updates {
            let record = client.expect_record(deadline, &format!("{kind} {id}"));
            let got = (record.kind(), record.str("id"), record.str("event"), record.str("data"));
            assert_eq!(got, (kind, Some(id), Some("message"), Some(data)), "{}", client.report());
        }
    }
    assert_eq!(client.expect_record(deadline, "the end of the script").kind(), "done", "{}", client.report());
    let status = client.wait_exit(deadline);
    assert!(status.success(), "{status}: {}", client.report());

    // The hub took the library's form as written (topic, id, data) and nothing it refused.
    for (id, data) in updates {
        let event = watcher.next_event();
        assert_eq!((event.id.as_deref(), event.data.as_str()), (Some(id), data));
    }
    let marker = Backend::new(server.addr).publish(&[("topic", BOOK_1), ("data", "marker")]);
    assert_eq!(watcher.next_event().id, Some(marker), "nothing else was published");
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Node

const ROOM: &str = "https://example.com/chat/lobby";

/// One update the chat publisher sent: its id, its data, and whether the subscriber may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    id: String,
    data: String,
    visible: bool,
}

/// Publishes to [`ROOM`] through the hub every `interval` until finished, with ids of the
/// publisher's (not in any order the hub could rely on). Of every four updates one is private with a
/// topic the subscriber's token grants, and one private with a topic it does not.
fn chat_publisher(backend: Backend, interval: Duration) -> Paced<Sent> {
    Paced::run(interval, 2000, move |n| {
        let id = format!("urn:example:chat:{:08x}", (n as u32).wrapping_mul(2_654_435_761));
        let data = format!("tick {n}");
        let mut pairs = vec![("topic", ROOM), ("id", id.as_str()), ("data", data.as_str())];
        let visible = match n % 4 {
            1 => {
                pairs.extend([("topic", "https://example.com/users/42/inbox"), ("private", "on")]);
                true
            }
            3 => {
                pairs.extend([("topic", "https://example.com/users/41/inbox"), ("private", "on")]);
                false
            }
            _ => true,
        };
        assert_eq!(backend.publish(&pairs), id);
        Sent { id, data, visible }
    })
}

#[test]
#[ignore = "needs node and the npm eventsource package: run by .ci/run"]
fn node_eventsource_resumes_hub_streams_right_after_the_last_custom_id() {
    let node = program("node");
    let dir = node_client_dir();
    // Each stream ends after about a second; the client comes back 100 ms later with Last-Event-ID.
    // Anonymous subscribers are refused: every request must carry the token.
    let server = TestServer::start(Config {
        jwt_key: Some(SECRET.into()),
        deny_anonymous: true,
        max_lifetime: Duration::from_secs(1),
        retry: Duration::from_millis(100),
        ..Config::default()
    });
    let subscriber =
        token(&audience_of(server.addr), &["subscribe"], &[("https://example.com/users/42/*", "urlpattern")]);
    let url = format!(
        "http://{}{HUB}?match_urlpattern={}",
        server.addr,
        query_value("https://example.com/chat/:room")
    );
    let mut command = Command::new(node);
    command.current_dir(&dir).arg("client.mjs").arg(&url).arg(&subscriber);
    let mut client = Proc::spawn("node eventsource client", command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;

    let first = client.expect_record(deadline, "the first request");
    assert_eq!(first.kind(), "connect", "{}", client.report());
    assert_eq!(first.str("lastEventId"), None, "the first request has no Last-Event-ID: {}", client.report());
    let open = client.expect_record(deadline, "the first open");
    assert_eq!(open.kind(), "open", "{}", client.report());

    // Publish continuously (also while the client is between two streams) until it has come back at
    // least three times with a Last-Event-ID.
    let mut chat = Some(chat_publisher(Backend::new(server.addr), Duration::from_millis(10)));
    let mut received: Vec<(String, String)> = Vec::new();
    // For every request after the first: the Last-Event-ID it sent and the last id received before it.
    let mut resumes: Vec<(Option<String>, Option<String>)> = Vec::new();
    let mut opens = 1;
    let mut failed_requests: Vec<String> = Vec::new();
    let mut done = false;
    let mut published = Vec::new();
    while !done {
        let record = client.expect_record(deadline, "updates, reconnects and the final `done`");
        match record.kind() {
            "message" => {
                let id = record.str("id").unwrap_or_default().to_string();
                received.push((id, record.str("data").unwrap_or_default().to_string()));
            }
            "connect" => resumes.push((
                record.str("lastEventId").map(str::to_string),
                received.last().map(|(id, _)| id.clone()),
            )),
            "open" => opens += 1,
            "error" => {
                assert_eq!(record.int("readyState"), Some(0), "the client gave up: {}", client.report());
                let message = record.str("message").unwrap_or_default();
                if !message.is_empty() {
                    failed_requests.push(message.to_string());
                }
            }
            "done" => done = true,
            other => panic!("unexpected record {other:?}: {}", client.report()),
        }
        if resumes.iter().filter(|r| r.0.is_some()).count() >= 3 && chat.is_some() {
            published = chat.take().unwrap().finish();
            Backend::new(server.addr).publish(&[("topic", ROOM), ("type", "done"), ("data", "bye")]);
        }
    }
    let status = client.wait_exit(deadline);
    assert!(status.success(), "{status}: {}", client.report());

    for (sent, last_received) in &resumes {
        assert_eq!(sent, last_received, "a reconnect sends the last id received: {}", client.report());
    }
    assert!(resumes.iter().filter(|r| r.0.is_some()).count() >= 3, "{}", client.report());
    let expected: Vec<(String, String)> =
        published.iter().filter(|s| s.visible).map(|s| (s.id.clone(), s.data.clone())).collect();
    if received != expected {
        let missing: Vec<&str> =
            expected.iter().filter(|e| !received.contains(e)).map(|e| e.0.as_str()).collect();
        let mut seen = std::collections::HashSet::new();
        let duplicated: Vec<&str> =
            received.iter().map(|e| e.0.as_str()).filter(|id| !seen.insert(*id)).collect();
        let leaked: Vec<&str> = published
            .iter()
            .filter(|s| !s.visible && received.iter().any(|r| r.0 == s.id))
            .map(|s| s.id.as_str())
            .collect();
        panic!(
            "updates lost, duplicated or leaked across reconnects: {} expected, {} received, missing \
             {missing:?}, duplicated {duplicated:?}, private ones not granted {leaked:?}, resumes {resumes:?}",
            expected.len(),
            received.len()
        );
    }
    assert!(failed_requests.is_empty(), "reconnects failed without a response: {failed_requests:?}");
    assert_eq!(opens, resumes.len() + 1, "every request was answered: {}", client.report());
    server.stop();
}
