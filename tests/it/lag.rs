//! `--max-lag` is for subscribers that do not keep up, and only for them: a catch-up from the
//! history that makes steady progress, and a single event larger than the limit, never trip it,
//! while a stalled reader (catching up or live) and a reader slower than the publish rate are cut.
//!
//! Every client here has a small receive buffer, so the server's writes block often and each of
//! those moments is a chance to be cut; the cases that must not be cut run several times over, so a
//! rule that depends on timing would show.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ssed::Config;

use crate::abuse::connect_small_window;
use crate::support::{eventually, metric, read_head, Conn, TestServer, DEADLINE};

const KIB: usize = 1024;
/// The receive buffer of every subscriber here (the kernel doubles it and rounds up).
const WINDOW: usize = 4 * KIB;

fn lag_drops(server: &TestServer) -> f64 {
    metric(server.addr, "ssed_subscribers_dropped_total{reason=\"lag\"}").expect("the lag series")
}

/// A subscriber with a small receive window whose response head has been read.
fn subscribe(server: &TestServer, query: &str, last_event_id: Option<u64>) -> (TcpStream, Vec<u8>) {
    let mut stream = connect_small_window(server.addr, WINDOW);
    let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    stream.write_all(format!("GET /events?{query} HTTP/1.1\r\nHost: t\r\n{resume}\r\n").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut stream);
    assert_eq!(head.status, 200);
    (stream, rest)
}

/// Reads the stream as fast as it comes until the event with `last` has arrived; returns the ids
/// seen, or `Err` with them if the server closed the stream first.
fn read_through(stream: &mut TcpStream, start: Vec<u8>, last: u64) -> Result<Vec<u64>, Vec<u64>> {
    let deadline = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 64 * KIB];
    // Only the unfinished line is kept: the events are megabytes of `x`.
    let mut line = Vec::new();
    let mut ids = Vec::new();
    let mut take = |bytes: &[u8], ids: &mut Vec<u64>| {
        for &b in bytes {
            if b != b'\n' {
                if line.len() < 32 {
                    line.push(b);
                }
                continue;
            }
            if let Some(id) = line.strip_prefix(b"id: ") {
                ids.push(std::str::from_utf8(id).unwrap().trim_end().parse().unwrap());
            }
            line.clear();
        }
    };
    take(&start, &mut ids);
    let mut tail = start;
    loop {
        if ids.last() == Some(&last) && tail.ends_with(b"\n\n\r\n") {
            return Ok(ids);
        }
        assert!(Instant::now() < deadline, "no event {last} within {DEADLINE:?}; got {} events", ids.len());
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return Err(ids),
            Ok(n) => {
                take(&buf[..n], &mut ids);
                tail.extend_from_slice(&buf[..n]);
                let keep = tail.len().saturating_sub(8);
                tail.drain(..keep);
            }
        }
    }
}

/// A server with `--max-lag 256KiB` and room for 16 MiB of history, a keep-alive publisher, and the
/// 48 KB event the catch-up cases publish.
fn catch_up_server() -> (TestServer, Conn, Vec<u8>) {
    let server = TestServer::start(Config {
        max_lag: 256 * KIB,
        history_bytes: 16 * KIB * KIB,
        heartbeat: Duration::ZERO,
        ..Config::default()
    });
    let publisher = Conn::open(server.addr);
    (server, publisher, vec![b'x'; 48 * KIB])
}

/// 5 MB of retained 48 KB events, replayed to a client that resumes from the first and reads as
/// fast as it can, with `--max-lag 256 KiB`: all of it arrives on the one connection, which then
/// carries a live event too, five times over.
#[test]
fn a_catch_up_that_keeps_reading_is_never_cut_for_lag() {
    let (server, mut publisher, event) = catch_up_server();
    let mut ids: Vec<u64> = (0..110).map(|_| publisher.publish("topic=big", &event)).collect();
    for round in 0..5 {
        let (mut stream, rest) = subscribe(&server, "topic=big", Some(ids[0]));
        let got = read_through(&mut stream, rest, *ids.last().unwrap()).unwrap_or_else(|got| {
            panic!("round {round}: cut after {} of {} events", got.len(), ids.len() - 1)
        });
        assert_eq!(got, ids[1..], "round {round}: every retained event once, in order");
        let live = publisher.publish("topic=big", b"live");
        ids.push(live);
        read_through(&mut stream, Vec::new(), live)
            .unwrap_or_else(|_| panic!("round {round}: cut after the catch-up"));
    }
    assert_eq!(lag_drops(&server), 0.0);
}

/// The same catch-up, but the client stops reading: once more than `--max-lag` of new events
/// piles up behind it, it is cut.
#[test]
fn a_stalled_catch_up_is_cut_once_new_events_pass_the_limit() {
    let (server, mut publisher, event) = catch_up_server();
    let first = publisher.publish("topic=big", &event);
    for _ in 0..100 {
        publisher.publish("topic=big", &event);
    }
    let (mut stalled, _) = subscribe(&server, "topic=big", Some(first));
    // Not cut for what it has yet to replay, however long it waits.
    publisher.publish("topic=other", b"a turn of the loop");
    assert_eq!(lag_drops(&server), 0.0);
    // 320 KiB of new events: past the limit.
    for _ in 0..(320 / 48 + 1) {
        publisher.publish("topic=big", &event);
    }
    assert!(eventually(|| lag_drops(&server) == 1.0), "timed out waiting for the stalled catch-up to be cut");
    assert!(crate::abuse::closed_within(&mut stalled, DEADLINE), "the stream is closed");
}

/// A live subscriber that never reads is cut once `--max-lag` of events waits for it.
#[test]
fn a_stalled_live_reader_is_cut_at_the_limit() {
    let server =
        TestServer::start(Config { max_lag: 256 * KIB, heartbeat: Duration::ZERO, ..Config::default() });
    let (_stalled, _) = subscribe(&server, "topic=t", None);
    let mut publisher = Conn::open(server.addr);
    let event = vec![b'x'; 16 * KIB];
    // Everything up to the limit is allowed.
    for _ in 0..(256 / 16) {
        publisher.publish("topic=t", &event);
    }
    assert_eq!(lag_drops(&server), 0.0, "not cut before the limit");
    // The kernel's send buffer takes some first (it grows to a few MiB on loopback); at most 32 MiB.
    let mut published = 256 * KIB;
    while lag_drops(&server) == 0.0 {
        assert!(published < 32 * KIB * KIB, "not cut after {published} bytes");
        for _ in 0..64 {
            publisher.publish("topic=t", &event);
        }
        published += 64 * event.len();
    }
    assert_eq!(lag_drops(&server), 1.0);
}

/// A reader that takes 8 KiB every 10 ms while 48 KB events arrive every 2 ms falls further behind
/// at every step and is cut.
#[test]
fn a_reader_slower_than_the_publish_rate_is_cut() {
    let server =
        TestServer::start(Config { max_lag: 256 * KIB, heartbeat: Duration::ZERO, ..Config::default() });
    let (mut slow, _) = subscribe(&server, "topic=t", None);
    let addr = server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut publisher = Conn::open(addr);
            let event = vec![b'x'; 48 * KIB];
            let deadline = Instant::now() + DEADLINE;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                publisher.publish("topic=t", &event);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 8 * KIB];
    let cut = loop {
        if Instant::now() > deadline {
            break false;
        }
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publishing.join().unwrap();
    assert!(cut, "the slow reader was never cut");
    assert_eq!(lag_drops(&server), 1.0);
}

/// A body of newlines encodes to six times its size in `data:` lines: 1 MiB becomes about 6 MB,
/// three times `--max-lag 2 MiB` (the smallest allowed with `--max-body 1 MiB`) and more than the
/// kernel's loopback send buffer, so the writes block inside the event. A subscriber that keeps
/// reading still gets all of it, live and replayed after a reconnect, every time.
#[test]
fn a_single_event_larger_than_max_lag_reaches_a_reader() {
    let server = TestServer::start(Config {
        max_body: KIB * KIB,
        max_lag: 2 * KIB * KIB,
        heartbeat: Duration::ZERO,
        ..Config::default()
    });
    let mut publisher = Conn::open(server.addr);
    let body = vec![b'\n'; KIB * KIB];
    for round in 0..3 {
        // Live: subscribed before the event is published.
        let (mut stream, rest) = subscribe(&server, "topic=nl", None);
        let before = publisher.publish("topic=nl", b"before");
        let id = publisher.publish("topic=nl", &body);
        let got = read_through(&mut stream, rest, id)
            .unwrap_or_else(|_| panic!("round {round}: live subscriber cut mid-event"));
        assert_eq!(got, vec![before, id]);
        // Resumed: the client reconnects and the event is replayed from the history.
        let (mut stream, rest) = subscribe(&server, "topic=nl", Some(before));
        let got = read_through(&mut stream, rest, id)
            .unwrap_or_else(|_| panic!("round {round}: resumed subscriber cut mid-event"));
        assert_eq!(got, vec![id]);
    }
    assert_eq!(lag_drops(&server), 0.0);
}
