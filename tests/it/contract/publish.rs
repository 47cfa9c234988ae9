//! `POST /events`: keep-alive and pipelining, form publishing, data lines, chunked bodies, and the
//! `Publisher` handle.

use ssed::{Config, ErrorKind, Event};

use super::*;

fn raw_post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

#[test]
fn pipelined_publishes_in_one_write_are_answered_in_order() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=p", "");
    let mut conn = Conn::open(server.addr);
    let mut batch = String::new();
    for body in ["one", "two", "three"] {
        batch.push_str(&raw_post("/events?topic=p", body));
    }
    batch.push_str("GET /health HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.send(batch.as_bytes());

    let ids: Vec<u64> = (0..3).map(|_| published_id(&conn.response())).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "answered in order with increasing ids: {ids:?}");
    let health = conn.response();
    assert_eq!((health.status, health.body_text().trim_end()), (200, "ok"));

    // Still open for one more.
    conn.send(raw_post("/events?topic=p", "four").as_bytes());
    let four = published_id(&conn.response());
    assert!(four > ids[2]);

    let all = [ids[0], ids[1], ids[2], four];
    assert_eq!(next_events(&mut sub, 4), pairs(&all, &["one", "two", "three", "four"]));
}

#[test]
fn http_10_closes_unless_asked_to_keep_alive() {
    let server = TestServer::start(quiet_config());
    let (response, mut stream) = exchange(server.addr, b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(response.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")), "{response:?}");
    assert_closed(&mut stream);

    let mut conn = Conn::open(server.addr);
    for _ in 0..2 {
        conn.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = conn.response();
        assert_eq!((response.status, response.body_text().trim_end()), (200, "ok"));
        let connection = response.header("connection").unwrap_or_default();
        assert!(!connection.eq_ignore_ascii_case("close"), "keep-alive was asked for: {response:?}");
    }
}

#[test]
fn form_publish_is_mercure_compatible() {
    let server = TestServer::start(quiet_config());
    let mut both = Subscriber::open(server.addr, "/events?topic=f1&topic=f2", "");
    let mut f2 = Subscriber::open(server.addr, "/events?topic=f2", "");

    let response =
        post_form(server.addr, "topic=f1&topic=f2&data=hello%0Aworld+again%21&type=greeting&retry=5000");
    let id = published_id(&response);
    for sub in [&mut both, &mut f2] {
        let event = sub.next_event();
        assert_eq!(event.id, Some(id.to_string()));
        assert_eq!(event.event.as_deref(), Some("greeting"));
        assert_eq!(event.data, "hello\nworld again!");
        assert_eq!(event.retry, Some(5000));
    }

    // A trailing line ending in the data field is dropped, as for a raw body; a browser's form
    // (URLSearchParams) labels the type with a charset.
    let response = post(
        server.addr,
        "/events",
        "Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n",
        b"data=x%0D%0A&topic=f2",
    );
    let trailing = published_id(&response);
    let event = f2.next_event();
    assert_eq!(id_data(&event), (trailing, "x".to_string()));
    assert_eq!(event.event, None);

    // The event for both topics reached `both` once: its next event is the one after.
    let marker = publish(server.addr, "topic=f1", "marker");
    assert_eq!(id_data(&both.next_event()), (trailing, "x".to_string()));
    assert_eq!(id_data(&both.next_event()), (marker, "marker".to_string()));
}

#[test]
fn form_id_field_is_refused() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=f", "");
    assert_error(&post_form(server.addr, "topic=f&data=x&id=7"), 400);
    assert_marker_next(server.addr, &mut sub, "topic=f", "the refused form was not published");
}

#[test]
fn raw_body_with_topic_in_query_is_data_whatever_its_type() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=q", "");
    // What `curl -d 'a=b&topic=zzz' '…/events?topic=q'` sends.
    let response = post(
        server.addr,
        "/events?topic=q",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        b"a=b&topic=zzz",
    );
    let id = published_id(&response);
    assert_eq!(id_data(&sub.next_event()), (id, "a=b&topic=zzz".to_string()));
}

#[test]
fn data_line_endings_and_trailing_newline() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=d", "");
    let cases: [(&str, &str); 9] = [
        ("a\r\nb\rc\nd\n", "a\nb\nc\nd"),
        ("x\n", "x"),
        ("x\r\n", "x"),
        ("x\r", "x"),
        ("x\n\n", "x\n"),
        ("\r\n\r\n", "\n"),
        ("\n", ""),
        (" lead and trail ", " lead and trail "),
        ("id: 1\n\nevent: evil\ndata: x", "id: 1\n\nevent: evil\ndata: x"),
    ];
    for (body, expected) in cases {
        let id = publish(server.addr, "topic=d", body);
        let event = sub.next_event();
        assert_eq!(id_data(&event), (id, expected.to_string()), "body {body:?}");
        assert_eq!(event.event, None, "body {body:?}");
    }
}

#[test]
fn empty_body_is_one_empty_data_line() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=e", "");
    let http = published_id(&post(server.addr, "/events?topic=e", "", b""));
    let handle = server.publisher.publish(Event::new("").topic("e")).unwrap().get();
    // Each dispatches (so each carried a `data:` line) with "" as its data.
    assert_eq!(next_events(&mut sub, 2), pairs(&[http, handle], &["", ""]));
}

#[test]
fn chunked_publish_body_is_decoded() {
    let server = TestServer::start(quiet_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=c", "");
    let mut conn = Conn::open(server.addr);
    conn.send(
        b"POST /events?topic=c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nA;ext=1\r\n, world!!!\r\n0\r\n\r\n",
    );
    let chunked = published_id(&conn.response());
    // The decoder stopped exactly at the end: the connection serves the next request.
    conn.send(raw_post("/events?topic=c", "next").as_bytes());
    let next = published_id(&conn.response());
    assert_eq!(next_events(&mut sub, 2), pairs(&[chunked, next], &["hello, world!!!", "next"]));
}

#[test]
fn publisher_handle_from_many_threads() {
    let server = TestServer::start(Config { history: 256, ..quiet_config() });
    let mut sub = Subscriber::open(server.addr, "/events?topic=mt", "");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let publisher = server.publisher.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        let data = format!("{t}-{i}");
                        let id = publisher.publish(Event::new(data.clone()).topic("mt")).expect("publish");
                        (id.get(), data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut sent = Vec::new();
    for thread in threads {
        let mine = thread.join().expect("publishing thread");
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0), "one thread's ids increase: {mine:?}");
        sent.extend(mine);
    }
    sent.sort();
    assert!(sent.windows(2).all(|w| w[0].0 != w[1].0), "ids are distinct");

    let received = next_events(&mut sub, sent.len());
    assert_eq!(received, sent, "every event arrives once, in id order");
}

#[test]
fn publisher_handle_refuses_invalid_events() {
    let config = Config { max_body: 1024, max_lag: 4096, history_bytes: 4096, ..quiet_config() };
    let server = TestServer::start(config);
    let mut sub = Subscriber::open(server.addr, "/events", "");
    let publisher = &server.publisher;
    let invalid = [
        ("a bad topic", Event::new("x").topic("bad topic")),
        ("no topic", Event::new("x")),
        ("an empty topic", Event::new("x").topic("")),
        ("a 129-byte topic", Event::new("x").topic("t".repeat(129))),
        ("one bad topic of two", Event::new("x").topic("ok").topic("no!")),
        ("a type with a newline", Event::new("x").topic("ok").event_type("a\nb")),
        ("an empty type", Event::new("x").topic("ok").event_type("")),
        ("data over max_body", Event::new("x".repeat(1025)).topic("ok")),
    ];
    for (what, event) in invalid {
        match publisher.publish(event) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidEvent, "{what}: {e}"),
            Ok(id) => panic!("{what} was published as {id}"),
        }
    }
    let id = publisher.publish(Event::new("x".repeat(1024)).topic("ok")).expect("a valid event").get();
    assert_eq!(id_data(&sub.next_event()), (id, "x".repeat(1024)), "no refused event reached the stream");
}
