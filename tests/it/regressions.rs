//! Regression tests for bugs found in review, each over real sockets.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ssed::Config;

use crate::support::*;

/// A stream ended by --max-lifetime while its socket was full left a past deadline that fired on
/// every loop turn: the loop spun at 100% CPU and stopped answering anyone.
#[test]
fn lifetime_end_of_a_stuck_stream_does_not_stall_the_loop() {
    let config = Config {
        max_lifetime: Duration::from_secs(1),
        max_lag: 64 << 20,
        max_body: 1 << 20,
        history_bytes: 64 << 20,
        heartbeat: Duration::ZERO,
        ..Config::default()
    };
    let server = TestServer::start(config);
    let mut stuck = connect(server.addr);
    stuck.write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(
        eventually(|| metric(server.addr, "ssed_subscribers") == Some(1.0)),
        "timed out waiting for the stuck stream is registered"
    );
    let body = "x".repeat(60_000);
    for _ in 0..150 {
        publish(server.addr, "topic=t", &body);
    }
    // Past the lifetime (at most 1.2 s), the server must keep answering promptly.
    let until = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < until {
        let mut health = connect(server.addr);
        health.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        health.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        health.read_to_string(&mut answer).expect("/health answers within 2 s");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    drop(stuck);
}

/// Requests already buffered when reading paused for unread answers were only parsed when more
/// bytes arrived, so a client pipelining many requests stalled until the header timeout.
#[test]
fn every_pipelined_request_is_answered_even_past_the_answer_buffer() {
    let server = TestServer::with_defaults();
    let mut stream = connect(server.addr);
    let count = 600;
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(count);
    stream.write_all(request.as_bytes()).unwrap();
    read_ok_answers(&mut stream, count);
}

/// Reads until `count` `200 OK` answers have arrived, failing at the deadline or an early close.
fn read_ok_answers(stream: &mut std::net::TcpStream, count: usize) {
    let mut seen = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut text = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while seen < count {
        assert!(Instant::now() < deadline, "only {seen} of {count} answers arrived");
        let n = stream.read(&mut buf).expect("answers keep coming");
        assert!(n > 0, "the server closed after {seen} answers");
        text.extend_from_slice(&buf[..n]);
        seen = text.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    }
    assert_eq!(seen, count);
}

/// With a durable history, answers wait for the turn's commit; a client pipelining more publishes
/// than fit in the answer buffer must still get every answer once the commits land.
#[test]
fn pipelined_publishes_past_the_answer_buffer_with_a_durable_history() {
    let dir = std::env::temp_dir().join(format!("ssed-it-pipelined-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config { data_dir: Some(dir.clone()), ..Config::default() };
    let server = TestServer::start(config);
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
    let mut stream = connect(server.addr);
    let count = 2_000;
    // Long-ish answers (a CORS origin is not needed: ids alone are ~17 bytes) times 2,000 > 64 KiB.
    let request = "POST /events?topic=t HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".repeat(count);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(request.as_bytes()).unwrap())
    };
    read_ok_answers(&mut stream, count);
    writer.join().unwrap();
    // Every acknowledged event reaches the subscriber, including those published in the turns that
    // the commits' released answers started.
    for i in 0..count {
        let event =
            sub.next_event_within(DEADLINE).unwrap_or_else(|| panic!("event {i} of {count} never came"));
        assert_eq!(event.data, "x");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--history-age`: an event older than the age leaves the history, so a resume from before it is
/// told of the gap instead of receiving it.
#[test]
fn events_older_than_the_history_age_leave_the_history() {
    let config =
        Config { history_age: Duration::from_secs(1), heartbeat: Duration::ZERO, ..Config::default() };
    let server = TestServer::start(config);
    let id = publish(server.addr, "topic=t", "short-lived");
    let mut fresh =
        Subscriber::open(server.addr, "/events?topic=t", &format!("Last-Event-ID: {}\r\n", id - 1));
    assert_eq!(fresh.next_event().data, "short-lived", "retained while younger than the age");
    let started = Instant::now();
    // Poll (bounded) until the age has passed and the event is gone.
    let mut gap = None;
    let aged_out = eventually(|| {
        let mut sub =
            Subscriber::open(server.addr, "/events?topic=t", &format!("Last-Event-ID: {}\r\n", id - 1));
        let first = sub.next_event_within(Duration::from_millis(200));
        gap = first.filter(|e| e.event.as_deref() == Some("ssed-gap"));
        gap.is_some()
    });
    assert!(aged_out, "the event never aged out");
    let event = gap.unwrap();
    assert!(event.data.starts_with(&format!("{{\"last_event_id\":{}", id - 1)), "{event:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "not evicted before its age");
}
