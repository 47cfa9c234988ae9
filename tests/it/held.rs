//! Publishes held for a durable history's commit: the loop's work per turn stays linear in what
//! it holds and bounded whatever the publishers do, and a subscriber whose stream started before a
//! publisher got its answer always gets that event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::abuse::exclusive;
use crate::child::Proc;
use crate::support::{connect, get, metric, TempDir, DEADLINE};

/// Pipelines `count` publishes on one connection, each naming 64 topics no one named before, and
/// reads every answer; returns how many were answered 200.
fn pipeline_new_topics(addr: SocketAddr, conn: usize, count: usize) -> usize {
    let stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        for i in 0..count {
            let topics: Vec<String> = (0..64).map(|j| format!("topic=c{conn}.{i}.{j}")).collect();
            let request = format!(
                "POST /events?{} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",
                topics.join("&")
            );
            writer.write_all(request.as_bytes()).unwrap();
        }
    });
    let mut reader = BufReader::new(stream);
    let mut ok = 0;
    for _ in 0..count {
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        ok += usize::from(status.starts_with("HTTP/1.1 200"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
    sending.join().unwrap();
    ok
}

/// Runs `conns` pipelining publishers at once against a fresh batch-mode server; returns the
/// server's CPU time for all of it, the slowest `/health` answer meanwhile, and how many group
/// commits it took.
fn flood(conns: usize, per_conn: usize) -> (Duration, Duration, f64) {
    let dir = TempDir::new(&format!("flood{conns}"));
    let server = Proc::start(&["--data-dir", dir.arg(), "--fsync", "batch", "--heartbeat", "0"]);
    let addr = server.listening_addr();
    let cpu_before = server.cpu();
    let done = Arc::new(Mutex::new(false));
    let probe = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            while !*done.lock().unwrap() {
                let asked = Instant::now();
                assert_eq!(get(addr, "/health", "").status, 200);
                slowest = slowest.max(asked.elapsed());
            }
            slowest
        })
    };
    let publishers: Vec<_> =
        (0..conns).map(|c| std::thread::spawn(move || pipeline_new_topics(addr, c, per_conn))).collect();
    for p in publishers {
        assert_eq!(p.join().unwrap(), per_conn, "every publish answered 200");
    }
    *done.lock().unwrap() = true;
    let slowest_health = probe.join().unwrap();
    let commits = metric(addr, "ssed_history_commits_total").expect("the commits series");
    (server.cpu() - cpu_before, slowest_health, commits)
}

/// Four connections pipelining 1,000 publishes of 64 new topics each cost the server about four
/// times what one does, not ten, and no turn holds more than its bound: the subscriber lists held for the commit were de-duplicated by a
/// linear scan, so a turn's bookkeeping grew with the square of what it held (6 s of CPU for four,
/// 0.6 s for one, in a release build, with `/health` waiting 5.6 s).
#[test]
fn held_publishes_cost_linear_work_per_turn() {
    let _alone = exclusive();
    let (one, one_health, _) = flood(1, 1000);
    let (four, four_health, commits) = flood(4, 1000);
    let ratio = four.as_secs_f64() / one.as_secs_f64().max(0.01);
    println!(
        "held flood: 1 connection {one:?} CPU (slowest /health {one_health:?}), \
         4 connections {four:?} CPU (slowest /health {four_health:?}): ratio {ratio:.2}"
    );
    assert!(ratio < 6.0, "4x the publishes cost {ratio:.2}x the CPU (1: {one:?}, 4: {four:?})");
    // A turn holds at most 4096 topic entries (plus the one publish that crosses the line): 4000
    // events of 64 topics take at least 62 commits, however fast they arrive.
    let least = (4000.0_f64 * 64.0 / (4096.0 + 64.0)).ceil();
    assert!(commits >= least, "{commits} commits for 4000 events of 64 topics: a turn held more than it may");
}

/// Parses the complete answers at the front of `buf` into ids, leaving a partial one.
fn take_answers(buf: &mut Vec<u8>, ids: &mut Vec<u64>) {
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "a publish answered {head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        if buf.len() < end + 4 + length {
            return;
        }
        ids.push(String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).trim().parse().unwrap());
        buf.drain(..end + 4 + length);
    }
}

/// Reads whatever is there without waiting.
fn read_available(stream: &mut TcpStream, into: &mut Vec<u8>) {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => panic!("the connection closed"),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// While pipelined publishes keep the loop's turns long and full of held events, subscribers
/// start one after another; every event whose answer reached its publisher after a subscriber's
/// response head arrived must reach that subscriber. One thread reads both sides, without
/// blocking, so "after" is exact: the answers read right after the head are the ones written before
/// it. A live subscriber used to start after the events still held for the commit, and missed them.
#[test]
fn a_subscriber_gets_every_event_answered_after_its_stream_started() {
    const COUNT: usize = 6000;
    let _alone = exclusive();
    let dir = TempDir::new("window");
    let server = Proc::start(&["--data-dir", dir.arg(), "--fsync", "batch", "--heartbeat", "0"]);
    let addr = server.listening_addr();
    let mut publisher = connect(addr);
    let mut writer = publisher.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let request = b"POST /events?topic=w HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx";
        for _ in 0..COUNT {
            writer.write_all(request).unwrap();
        }
    });
    publisher.set_nonblocking(true).unwrap();
    let (mut answers, mut acked) = (Vec::new(), Vec::new());
    // (stream, answers read before its head arrived, bytes read after the head)
    let mut subscribers: Vec<(TcpStream, usize, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + 3 * DEADLINE;
    while acked.len() < COUNT {
        assert!(Instant::now() < deadline, "only {} of {COUNT} publishes answered", acked.len());
        let mut sub = connect(addr);
        sub.write_all(b"GET /events?topic=w HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        sub.set_nonblocking(true).unwrap();
        let mut raw = Vec::new();
        let head_end = loop {
            assert!(Instant::now() < deadline, "no response head");
            read_available(&mut publisher, &mut answers);
            take_answers(&mut answers, &mut acked);
            read_available(&mut sub, &mut raw);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
        };
        // Anything readable now was written before the head.
        read_available(&mut publisher, &mut answers);
        take_answers(&mut answers, &mut acked);
        assert!(raw.starts_with(b"HTTP/1.1 200"));
        raw.drain(..head_end + 4);
        if subscribers.len() < 40 {
            subscribers.push((sub, acked.len(), raw));
        }
    }
    sending.join().unwrap();
    let last = *acked.last().unwrap();
    assert!(subscribers.len() >= 5, "only {} subscribers started during the publishes", subscribers.len());
    for (n, (mut stream, acked_before, mut raw)) in subscribers.into_iter().enumerate() {
        if acked_before == COUNT {
            continue; // owed nothing
        }
        stream.set_nonblocking(false).unwrap();
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 16 * 1024];
        while !String::from_utf8_lossy(&raw).contains(&format!("id: {last}\n")) {
            assert!(Instant::now() < deadline, "subscriber {n} never got the last event");
            let read = stream.read(&mut buf).unwrap_or_else(|e| panic!("subscriber {n}: {e}"));
            assert!(read > 0, "subscriber {n}'s stream ended");
            raw.extend_from_slice(&buf[..read]);
        }
        let text = String::from_utf8_lossy(&raw);
        let got: std::collections::HashSet<u64> =
            text.lines().filter_map(|l| l.strip_prefix("id: ")).map(|v| v.parse().unwrap()).collect();
        let missed: Vec<u64> = acked[acked_before..].iter().filter(|id| !got.contains(id)).copied().collect();
        assert!(
            missed.is_empty(),
            "subscriber {n} missed {} of the {} events answered after its head: {missed:?}",
            missed.len(),
            COUNT - acked_before
        );
    }
}
