//! What an operator relies on: `/health`, `/metrics`, `--max-lag`, `--max-lifetime` and shutdown.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use ssed::{Config, Event};

use super::*;

#[test]
fn health_is_ok() {
    let server = TestServer::start(quiet_config());
    let response = get(server.addr, "/health", "");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_text().trim_end(), "ok");
    assert!(response.header("content-type").is_some_and(|v| v.starts_with("text/plain")), "{response:?}");

    // HEAD: the same status, no body.
    let mut stream = connect(server.addr);
    stream.write_all(b"HEAD /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let (head, rest) = read_head(&mut stream);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(rest, b"", "HEAD carried a body");
    assert_closed(&mut stream);
}

/// The names of the samples in a Prometheus text exposition, labels dropped.
fn sample_names(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect()
}

#[test]
fn metrics_expose_the_contract_series_and_count() {
    let server = TestServer::start(Config { history: 2, ..quiet_config() });
    let response = get(server.addr, "/metrics", "");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.header("content-type").is_some_and(|v| v.starts_with("text/plain")), "{response:?}");
    let text = response.body_text();
    let names = sample_names(&text);
    for name in [
        "ssed_connections",
        "ssed_subscribers",
        "ssed_events_published_total",
        "ssed_bytes_sent_total",
        "ssed_resume_gaps_total",
        "ssed_history_events",
        "ssed_history_bytes",
    ] {
        assert!(names.contains(&name), "no {name} sample in {text}");
    }
    // A labelled counter may have no sample before its first drop, but it is described.
    assert!(text.contains("ssed_subscribers_dropped_total"), "no ssed_subscribers_dropped_total in {text}");

    let published = metric(server.addr, "ssed_events_published_total").unwrap();
    let sent = metric(server.addr, "ssed_bytes_sent_total").unwrap();
    let mut sub = Subscriber::open(server.addr, "/events?topic=m", "");
    publish(server.addr, "topic=m", "one");
    server.publisher.publish(Event::new("two").topic("m")).unwrap();
    publish(server.addr, "topic=m", "three");
    next_events(&mut sub, 3);

    assert_eq!(metric(server.addr, "ssed_events_published_total"), Some(published + 3.0));
    assert_eq!(metric(server.addr, "ssed_history_events"), Some(2.0), "history holds 2");
    assert!(metric(server.addr, "ssed_history_bytes").unwrap() > 0.0);
    assert!(
        eventually(|| { metric(server.addr, "ssed_bytes_sent_total").unwrap() > sent }),
        "timed out waiting for ssed_bytes_sent_total to count the stream"
    );
}

#[test]
fn subscriber_gauge_follows_streams() {
    let server = TestServer::start(quiet_config());
    assert_eq!(metric(server.addr, "ssed_subscribers"), Some(0.0));
    let first = Subscriber::open(server.addr, "/events?topic=a", "");
    assert!(
        eventually(|| metric(server.addr, "ssed_subscribers") == Some(1.0)),
        "timed out waiting for ssed_subscribers to be 1"
    );
    let second = Subscriber::open_on(connect(server.addr), "/events", "", "HTTP/1.0");
    assert!(
        eventually(|| metric(server.addr, "ssed_subscribers") == Some(2.0)),
        "timed out waiting for ssed_subscribers to be 2"
    );
    assert!(metric(server.addr, "ssed_connections").unwrap() >= 2.0);
    drop(first);
    assert!(
        eventually(|| metric(server.addr, "ssed_subscribers") == Some(1.0)),
        "timed out waiting for ssed_subscribers to be 1"
    );
    drop(second);
    assert!(
        eventually(|| metric(server.addr, "ssed_subscribers") == Some(0.0)),
        "timed out waiting for ssed_subscribers to be 0"
    );
}

const LAG_DROPS: &str = "ssed_subscribers_dropped_total{reason=\"lag\"}";

#[test]
fn subscriber_that_never_reads_is_dropped_at_max_lag() {
    let config = Config { max_body: 1024, max_lag: 64 * 1024, history: 30_000, ..quiet_config() };
    let server = TestServer::start(config);
    let started = Instant::now();

    // The stalled client reads its response head and then nothing more.
    let mut stalled = connect(server.addr);
    stalled.write_all(b"GET /events?topic=lag HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    assert_eq!(read_head(&mut stalled).0.status, 200);

    // A healthy reader of the same topic, on its own thread.
    let mut healthy = Subscriber::open(server.addr, "/events?topic=lag", "");
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            let event = healthy.next_event();
            if event.data == "end" {
                return (seen, id_data(&event).0);
            }
            seen.push(id_data(&event));
        }
    });

    let padding = "p".repeat(1000);
    let mut sent = Vec::new();
    while metric(server.addr, LAG_DROPS).unwrap_or(0.0) < 1.0 {
        assert!(sent.len() < 20_000, "the stalled subscriber was not dropped after {} events", sent.len());
        assert!(started.elapsed() < DEADLINE, "the stalled subscriber was not dropped in time");
        for _ in 0..100 {
            let data = format!("{:06} {padding}", sent.len());
            let id = server.publisher.publish(Event::new(data.clone()).topic("lag")).expect("publish").get();
            sent.push((id, data));
        }
    }
    let end = server.publisher.publish(Event::new("end").topic("lag")).unwrap().get();

    // The healthy reader got every event, in order, none missing.
    let (seen, seen_end) = reader.join().expect("healthy reader");
    assert_eq!(seen.len(), sent.len(), "the healthy reader missed events");
    assert!(seen == sent, "the healthy reader got the events out of order or altered");
    assert_eq!(seen_end, end);
    assert_eq!(metric(server.addr, LAG_DROPS), Some(1.0), "only the stalled subscriber was dropped");

    // The stalled client finds its socket closed once it drains what was already in flight.
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stalled.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => assert!(started.elapsed() < 2 * DEADLINE, "the stalled stream never ends"),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => break,
            Err(e) => panic!("the stalled subscriber's socket was not closed: {e}"),
        }
    }
    assert!(
        eventually(|| metric(server.addr, "ssed_subscribers") == Some(0.0)),
        "timed out waiting for ssed_subscribers to be 0"
    );
}

#[test]
fn shutdown_ends_streams_cleanly() {
    let server = TestServer::start(quiet_config());
    let publisher = server.publisher.clone();
    let mut subs = vec![
        Subscriber::open(server.addr, "/events?topic=s", ""),
        Subscriber::open(server.addr, "/events", ""),
    ];
    let id = publish(server.addr, "topic=s", "last");
    for sub in &mut subs {
        assert_eq!(id_data(&sub.next_event()), (id, "last".to_string()));
    }

    server.stop(); // returns once run() has returned Ok
    for sub in &mut subs {
        assert_eq!(sub.read_to_end(), vec![]);
        assert!(sub.clean_end(), "the stream ends with the terminating chunk");
    }
    let err = publisher.publish(Event::new("late").topic("s")).expect_err("publishing after stop");
    assert_eq!(err.kind(), ssed::ErrorKind::Stopped);
}
