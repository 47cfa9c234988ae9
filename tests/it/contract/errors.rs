//! Every row of the contract's error table, and that an error stays on its own connection.

use std::io::Write;
use std::time::Duration;

use ssed::Config;

use super::*;

#[test]
fn unparsable_request_is_400_then_close() {
    let server = TestServer::start(quiet_config());
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: test\r\nNo colon in this header\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost\0: test\r\n\r\n",
    ] {
        let (response, mut stream) = exchange(server.addr, request);
        assert_error(&response, 400);
        assert_closed(&mut stream);
    }
}

#[test]
fn request_head_over_16_kib_is_431_then_close() {
    let server = TestServer::start(quiet_config());
    let head = |filler: usize| {
        format!(
            "GET /health HTTP/1.1\r\nHost: test\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        )
    };
    // Just under the cap is fine.
    assert_eq!(roundtrip(server.addr, head(15 * 1024).as_bytes()).status, 200);

    let mut stream = connect(server.addr);
    // The server may answer before taking every byte; what matters is the answer.
    let _ = stream.write_all(head(17 * 1024).as_bytes());
    let response = read_response(&mut stream);
    assert_error(&response, 431);
    assert_closed(&mut stream);
}

#[test]
fn unknown_path_is_404() {
    let server = TestServer::start(quiet_config());
    assert_error(&get(server.addr, "/nope", ""), 404);
    assert_error(&get(server.addr, "/events/extra?topic=t", ""), 404);
    assert_error(&get(server.addr, "/healthz", ""), 404);
    assert_error(&post(server.addr, "/publish?topic=t", "", b"x"), 404);
}

#[test]
fn known_path_other_method_is_405_with_allow() {
    let server = TestServer::start(quiet_config());
    let allow = |response: &Response| -> Vec<String> {
        let value = response.header("allow").unwrap_or_else(|| panic!("405 without Allow: {response:?}"));
        value.split(',').map(|m| m.trim().to_string()).collect()
    };

    let response =
        roundtrip(server.addr, b"DELETE /events?topic=t HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    assert_error(&response, 405);
    let methods = allow(&response);
    assert!(methods.contains(&"GET".to_string()) && methods.contains(&"POST".to_string()), "{response:?}");

    let response = post(server.addr, "/health", "", b"x");
    assert_error(&response, 405);
    assert!(allow(&response).contains(&"GET".to_string()), "{response:?}");
    assert!(!allow(&response).contains(&"POST".to_string()), "{response:?}");

    let response = roundtrip(
        server.addr,
        b"PUT /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_error(&response, 405);
    assert!(allow(&response).contains(&"GET".to_string()), "{response:?}");
}

#[test]
fn bad_topic_is_400() {
    let server = TestServer::start(quiet_config());
    let long = "t".repeat(129);
    for topic in ["bad%20topic", "bad!topic", "", "%00", "caf%C3%A9", "a%zz", long.as_str()] {
        assert_error(&post(server.addr, &format!("/events?topic={topic}"), "", b"x"), 400);
        assert_error(&post(server.addr, &format!("/events?topic=ok&topic={topic}"), "", b"x"), 400);
        assert_error(&get(server.addr, &format!("/events?topic={topic}"), ""), 400);
        assert_error(&post_form(server.addr, &format!("topic={topic}&data=x")), 400);
    }
}

#[test]
fn bad_event_type_is_400() {
    let server = TestServer::start(quiet_config());
    let long = "e".repeat(129);
    for event in ["", "a%0Ab", "a%0Db", "a%00b", long.as_str()] {
        assert_error(&post(server.addr, &format!("/events?topic=t&event={event}"), "", b"x"), 400);
        assert_error(&post_form(server.addr, &format!("topic=t&data=x&type={event}")), 400);
    }
    // 128 bytes of anything but CR, LF and NUL is a type.
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
    let longest = format!("{}%20%C3%A9", "e".repeat(125));
    let id = published_id(&post(server.addr, &format!("/events?topic=t&event={longest}"), "", b"x"));
    let event = sub.next_event();
    assert_eq!(event.id, Some(id.to_string()), "only the valid event was published");
    assert_eq!(event.event, Some(format!("{} é", "e".repeat(125))));
}

#[test]
fn non_utf8_data_is_400() {
    let server = TestServer::start(quiet_config());
    for body in [&b"\xff\xfe"[..], b"caf\xc3", b"ok\n\xc0\x80"] {
        assert_error(&post(server.addr, "/events?topic=t", "", body), 400);
    }
    assert_error(&post_form(server.addr, "topic=t&data=%FF"), 400);
}

#[test]
fn missing_topic_on_publish_is_400() {
    let server = TestServer::start(quiet_config());
    assert_error(&post(server.addr, "/events", "", b"x"), 400);
    assert_error(&post(server.addr, "/events", "Content-Type: text/plain\r\n", b"x"), 400);
    assert_error(&post(server.addr, "/events?event=e", "", b"x"), 400);
    assert_error(&post_form(server.addr, "data=x&type=e"), 400);
}

fn small_body_config() -> Config {
    Config { max_body: 1024, max_lag: 64 * 1024, ..quiet_config() }
}

#[test]
fn body_over_max_body_is_413() {
    let server = TestServer::start(small_body_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
    assert_error(&post(server.addr, "/events?topic=t", "", &[b'x'; 1025]), 413);
    let form = format!("topic=t&data={}", "x".repeat(1100));
    assert_error(&post_form(server.addr, &form), 413);
    let id = published_id(&post(server.addr, "/events?topic=t", "", &[b'y'; 1024]));
    assert_eq!(id_data(&sub.next_event()), (id, "y".repeat(1024)), "only the body at the cap was published");
}

/// An event whose encoding alone is over `--history-bytes` (every line break in the data costs a
/// `data: ` prefix) is refused whichever way it comes: `413` over HTTP on a connection that stays
/// usable (the body was read), `InvalidEvent` from a `Publisher`; nothing is published.
#[test]
fn an_event_larger_than_the_history_is_413_and_the_connection_stays() {
    let config = Config { max_body: 1024, history_bytes: 2048, max_lag: 64 * 1024, ..quiet_config() };
    let server = TestServer::start(config);
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
    let lines = "\n".repeat(1024);
    let request = |body: &str| {
        format!("POST /events?topic=t HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    };
    let (refused, mut stream) = exchange(server.addr, request(&lines).as_bytes());
    assert_error(&refused, 413);
    assert!(refused.body_text().contains("--history-bytes"), "{refused:?}");
    assert!(refused.header("connection").is_none(), "kept alive: {refused:?}");
    stream.write_all(request("fits").as_bytes()).unwrap();
    let id = published_id(&read_response(&mut stream));

    let err = server.publisher.publish(ssed::Event::new(lines).topic("t")).expect_err("too large");
    assert_eq!(err.kind(), ssed::ErrorKind::InvalidEvent, "{err}");
    assert!(err.to_string().contains("--history-bytes"), "{err}");
    assert_eq!(id_data(&sub.next_event()), (id, "fits".to_string()), "only the event that fits");
}

#[test]
fn declared_length_over_cap_is_413_before_the_body_is_sent() {
    let server = TestServer::start(small_body_config());
    let mut stream = connect(server.addr);
    // The head alone; the ten megabytes it announces never come.
    stream
        .write_all(b"POST /events?topic=t HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000\r\n\r\n")
        .unwrap();
    assert_error(&read_response(&mut stream), 413);
}

#[test]
fn chunked_body_over_cap_is_413() {
    let server = TestServer::start(small_body_config());
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /events?topic=t HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let mut stream = connect(server.addr);
    let _ = stream.write_all(request.as_bytes());
    assert_error(&read_response(&mut stream), 413);
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
    let response = roundtrip(
        server.addr,
        b"POST /events?topic=t HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\n",
    );
    assert_error(&response, 400);
    assert_marker_next(server.addr, &mut sub, "topic=t", "nothing was published");
}

#[test]
fn at_max_connections() {
    let config = Config { max_connections: 2, retry: Duration::from_millis(500), ..quiet_config() };
    let server = TestServer::start(config);
    let mut held = vec![
        Subscriber::open(server.addr, "/events?topic=t", ""),
        Subscriber::open(server.addr, "/events", ""),
    ];

    // A subscribe: 200, a retry of 1-10 s, and an immediate clean end.
    let mut refused = Subscriber::open(server.addr, "/events?topic=t", "");
    assert_eq!(refused.read_to_end(), vec![], "no events on a refused stream");
    assert!(refused.clean_end(), "the stream ends with the terminating chunk");
    assert_eq!(refused.retries.len(), 1, "one retry field: {:?}", refused.retries);
    assert!((1000..=10_000).contains(&refused.retries[0]), "retry {:?}", refused.retries);

    // Health checks are answered as usual.
    let health = get(server.addr, "/health", "");
    assert_eq!((health.status, health.body_text().trim_end()), (200, "ok"));

    // Anything else: 503 with Retry-After, then close.
    for request in [
        &b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n"[..],
        b"POST /events?topic=t HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\n\r\nx",
    ] {
        let (response, mut stream) = exchange(server.addr, request);
        assert_error(&response, 503);
        assert!(response.header("retry-after").is_some(), "{response:?}");
        assert_closed(&mut stream);
    }

    // The held streams were not disturbed, and nothing was published by the refused POST.
    let id = server.publisher.publish(ssed::Event::new("still here").topic("t")).unwrap().get();
    for sub in &mut held {
        assert_eq!(id_data(&sub.next_event()), (id, "still here".to_string()));
    }

    // Once a held connection goes, a subscribe gets a normal stream again.
    held.pop();
    assert!(
        eventually(|| {
            let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
            sub.next_event_within(Duration::from_millis(100));
            sub.retries.first() == Some(&500) && !sub.ended
        }),
        "timed out waiting for a slot to free up"
    );
}

#[test]
fn error_on_one_connection_does_not_disturb_another() {
    let server = TestServer::start(Config { max_body: 1024, max_lag: 4096, ..quiet_config() });
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
    let before = publish(server.addr, "topic=t", "before");
    assert_eq!(id_data(&sub.next_event()), (before, "before".to_string()));

    roundtrip(server.addr, b"GARBAGE\r\n\r\n");
    let mut big = connect(server.addr);
    let _ = big.write_all(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000)).as_bytes());
    read_response(&mut big);
    get(server.addr, "/nope", "");
    post(server.addr, "/events?topic=bad%20topic", "", b"x");
    post(server.addr, "/events?topic=t", "", &[b'x'; 2000]);
    roundtrip(
        server.addr,
        b"POST /events?topic=t HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    // A client that vanishes mid-request.
    let mut vanished = connect(server.addr);
    vanished.write_all(b"POST /events?topic=t HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc").unwrap();
    drop(vanished);

    let after = publish(server.addr, "topic=t", "after");
    let event = sub.next_event();
    assert_eq!(id_data(&event), (after, "after".to_string()));
    assert!(!sub.ended);
}
