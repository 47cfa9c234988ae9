//! HTTP/1.1 protocol rules on the wire: no body in any answer to `HEAD` (RFC 9110 §9.3.2), the
//! request-line grammar (RFC 9112 §2.3, §3), single-valued parameters given once, and CORS with `*`.

use std::io::Write;
use std::time::Duration;

use ssed::Config;

use super::*;

/// The same request with `GET` in place of its leading `HEAD`: what `HEAD` must mirror.
fn get_twin(request: &[u8]) -> Vec<u8> {
    let rest = request.strip_prefix(b"HEAD").expect("a HEAD request");
    [&b"GET"[..], rest].concat()
}

/// Sends `request` (a `HEAD`) followed at once by `GET /health` on one connection, and checks the
/// answer to `HEAD` is a head only, with the status and `Content-Length` the `GET` twin gets; then,
/// if the connection stays open (as `kept` says it must), that the `/health` answer follows intact,
/// else that nothing does.
fn check_head_answer(server: &TestServer, what: &str, request: &[u8], status: u16, kept: bool) {
    let twin = {
        let mut stream = connect(server.addr);
        let _ = stream.write_all(&get_twin(request));
        read_response(&mut stream)
    };
    assert_eq!(twin.status, status, "{what}: GET twin answered {twin:?}");

    let mut conn = Conn::open(server.addr);
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n");
    // An answer that closes may come before every byte is taken.
    let _ = conn.stream.write_all(&bytes);
    let head = conn.head();
    assert_eq!(head.status, status, "{what}: {head:?}");
    assert_eq!(
        head.header("content-length"),
        twin.header("content-length"),
        "{what}: HEAD says the length GET would have: {head:?} vs {twin:?}"
    );
    let closes = head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    assert_eq!(closes, !kept, "{what}: {head:?}");
    if closes {
        assert_eq!(conn.buf, b"", "{what}: HEAD answer carried a body");
        assert_closed(&mut conn.stream);
    } else {
        // The next bytes are the next answer, not a body left over from this one.
        while conn.buf.len() < 9 {
            conn.fill();
        }
        assert!(
            conn.buf.starts_with(b"HTTP/1.1 "),
            "{what}: bytes after the HEAD answer are not the next answer: {:?}",
            String::from_utf8_lossy(&conn.buf)
        );
        let health = conn.response();
        assert_eq!((health.status, health.body_text().as_str()), (200, "ok\n"), "{what}");
    }
}

#[test]
fn head_answers_never_carry_a_body() {
    let config = Config {
        subscribe_token: Some("sub".into()),
        header_timeout: Duration::from_secs(1),
        cors_origins: vec!["https://app.example".into()],
        ..quiet_config()
    };
    let server = TestServer::start(config);
    let big = format!("HEAD /health HTTP/1.1\r\nHost: test\r\nX-Filler: {}\r\n\r\n", "a".repeat(17 * 1024));
    let cases: &[(&str, &[u8], u16, bool)] = &[
        // Kept alive: the next answer must follow at once.
        ("unknown path", b"HEAD /nope HTTP/1.1\r\nHost: test\r\n\r\n", 404, true),
        (
            "unknown path with CORS",
            b"HEAD /nope HTTP/1.1\r\nHost: test\r\nOrigin: https://app.example\r\n\r\n",
            404,
            true,
        ),
        ("no token", b"HEAD /events?topic=t HTTP/1.1\r\nHost: test\r\n\r\n", 401, true),
        (
            "bad topic",
            b"HEAD /events?topic=bad%20topic HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer sub\r\n\r\n",
            400,
            true,
        ),
        ("health", b"HEAD /health HTTP/1.1\r\nHost: test\r\n\r\n", 200, true),
        // Closed after the answer: nothing may follow it.
        ("not HTTP/1.x", b"HEAD /health HTTP/1.2\r\nHost: test\r\n\r\n", 505, false),
        ("malformed header", b"HEAD /health HTTP/1.1\r\nHost: test\r\nNo colon\r\n\r\n", 400, false),
        ("bad Content-Length", b"HEAD /health HTTP/1.1\r\nContent-Length: five\r\n\r\n", 400, false),
        ("transfer coding", b"HEAD /health HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, false),
        ("head over 16 KiB", big.as_bytes(), 431, false),
        (
            "a body on HEAD",
            b"HEAD /events?topic=t HTTP/1.1\r\nAuthorization: Bearer sub\r\nContent-Length: 3\r\n\r\nabc",
            400,
            false,
        ),
        ("HTTP/1.0", b"HEAD /nope HTTP/1.0\r\n\r\n", 404, false),
    ];
    for &(what, request, status, kept) in cases {
        check_head_answer(&server, what, request, status, kept);
    }
    // `/metrics` changes between the two requests; only its head matters.
    let mut conn = Conn::open(server.addr);
    conn.send(b"HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\nGET /health HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(conn.head().status, 200);
    assert_eq!(conn.response().body_text(), "ok\n");
}

#[test]
fn head_at_max_connections_has_no_body() {
    let config = Config { max_connections: 1, ..quiet_config() };
    let server = TestServer::start(config);
    let _held = Subscriber::open(server.addr, "/events?topic=t", "");
    for (what, request, status) in [
        ("metrics", &b"HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n"[..], 503),
        // Refused by its route before the capacity check, and closed all the same.
        ("unknown path", b"HEAD /nope HTTP/1.1\r\nHost: test\r\n\r\n", 404),
        ("health", b"HEAD /health HTTP/1.1\r\nHost: test\r\n\r\n", 200),
    ] {
        let mut conn = Conn::open(server.addr);
        conn.send(request);
        let head = conn.head();
        assert_eq!(head.status, status, "{what}: {head:?}");
        assert_eq!(conn.buf, b"", "{what}: HEAD answer at capacity carried a body");
        assert_closed(&mut conn.stream);
    }
}

#[test]
fn request_lines_that_are_not_http_are_400_and_other_versions_505() {
    let server = TestServer::start(quiet_config());
    let cases: &[(&[u8], u16)] = &[
        (b"this is not http at all\r\n\r\n", 400),
        (b"POST /events?topic=my room HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"GET /health HTTP/2\r\n\r\n", 400),
        (b"GET /health http/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/10.0\r\n\r\n", 400),
        (b"GET /health HTTP/1.1.1\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\n\r\n", 505),
        (b"GET /health HTTP/1.2\r\n\r\n", 505),
        (b"GET /health HTTP/0.9\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ];
    for &(request, status) in cases {
        let (response, mut stream) = exchange(server.addr, request);
        assert_eq!(response.status, status, "{:?}: {response:?}", String::from_utf8_lossy(request));
        assert_error(&response, status);
        assert_closed(&mut stream);
    }
    // Nothing was published by the request with a space in its target.
    let mut sub = Subscriber::open(server.addr, "/events", "");
    assert_marker_next(server.addr, &mut sub, "topic=my", "the request with a space in its target published");
}

#[test]
fn single_valued_parameters_given_twice_are_400() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events", "");
    let raw = [
        ("/events?topic=t&event=a&event=b", "`event`"),
        ("/events?topic=t&type=a&event=b", "`type`"),
        ("/events?topic=t&event=a&event=a", "`event`"),
    ];
    for (path, field) in raw {
        let response = post(server.addr, path, "", b"x");
        assert_error(&response, 400);
        assert!(response.body_text().contains(field), "{path}: {response:?}");
        assert!(response.body_text().contains("given twice"), "{path}: {response:?}");
    }
    let forms = [
        ("topic=t&data=a&data=b", "`data`"),
        ("topic=t&data=a&type=e&type=f", "`type`"),
        ("topic=t&data=a&retry=1&retry=2", "`retry`"),
        ("data=a&topic=t&data=", "`data`"),
    ];
    for (form, field) in forms {
        let response = post_form(server.addr, form);
        assert_error(&response, 400);
        assert!(response.body_text().contains(field), "{form}: {response:?}");
        assert!(response.body_text().contains("given twice"), "{form}: {response:?}");
    }
    // An event type in the query and another in the form.
    let response = post(
        server.addr,
        "/events?event=a",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        b"topic=t&data=x&type=b",
    );
    assert_error(&response, 400);
    assert!(response.body_text().contains("given twice"), "{response:?}");
    for query in
        ["lastEventId=1&lastEventId=2", "lastEventId=1&lastEventID=1", "topic=t&lastEventID=1&lastEventID=2"]
    {
        let response = get(server.addr, &format!("/events?{query}"), "");
        assert_error(&response, 400);
        assert!(response.body_text().contains("given twice"), "{query}: {response:?}");
    }

    // `topic` stays repeatable, everywhere.
    let form_id = published_id(&post_form(server.addr, "topic=a&topic=b&data=form"));
    let raw_id = published_id(&post(server.addr, "/events?topic=a&topic=b", "", b"raw"));
    let two = Subscriber::open(server.addr, "/events?topic=a&topic=b", "");
    assert_eq!(two.response.status, 200);
    assert_eq!(
        next_events(&mut sub, 2),
        pairs(&[form_id, raw_id], &["form", "raw"]),
        "nothing refused published"
    );
}

#[test]
fn an_origin_of_star_never_gets_credentials() {
    let check = |response: &Response, what: &str| {
        assert_eq!(response.header("access-control-allow-origin"), Some("*"), "{what}: {response:?}");
        assert_eq!(response.header("access-control-allow-credentials"), None, "{what}: {response:?}");
    };
    for origins in [vec!["*".to_string()], vec!["https://app.example".into(), "*".into()]] {
        let server = TestServer::start(Config { cors_origins: origins.clone(), ..quiet_config() });
        let preflight = roundtrip(
            server.addr,
            b"OPTIONS /events HTTP/1.1\r\nHost: test\r\nOrigin: *\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(preflight.status, 204);
        check(&preflight, "preflight");
        let sub = Subscriber::open(server.addr, "/events?topic=t", "Origin: *\r\n");
        check(&sub.response, "stream");
        check(&get(server.addr, "/nope", "Origin: *\r\n"), "error");
        check(&post(server.addr, "/events?topic=t", "Origin: *\r\n", b"x"), "publish");
        // Any other origin, too.
        check(&get(server.addr, "/health", "Origin: https://other.example\r\n"), "health");
    }
    // With only listed origins, `*` is not one of them.
    let server =
        TestServer::start(Config { cors_origins: vec!["https://app.example".into()], ..quiet_config() });
    let response = get(server.addr, "/health", "Origin: *\r\n");
    assert_eq!(response.header("access-control-allow-origin"), None, "{response:?}");
}
