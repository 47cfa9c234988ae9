//! Descriptor exhaustion: the loop pauses accepting instead of spinning, keeps serving the
//! connections it has, and recovers once descriptors free up; the descriptor limit caps
//! `--max-connections` so that its own connections never exhaust them.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// The open-file limit that leaves the child exactly `spare` free descriptor numbers: a new
/// descriptor takes the lowest free number, and fails with EMFILE when that is at or over the limit
/// (descriptors already open above it, such as ones inherited from the test runner, stay open).
fn limit_leaving(server: &Proc, spare: u32) -> u32 {
    let open: Vec<u32> = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("/proc/PID/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut free = 0;
    (0..)
        .find(|n| {
            if !open.contains(n) {
                free += 1;
            }
            free == spare
        })
        .expect("a limit")
        + 1
}

/// Sets the child's open-file limit, soft and hard, while it runs (util-linux `prlimit`).
fn set_fd_limit(server: &Proc, limit: u32) {
    let status = Command::new("prlimit")
        .args(["--pid", &server.pid().to_string(), &format!("--nofile={limit}:{limit}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --pid failed");
}

/// Waits up to `timeout` for a response to start on `stream`, then reads its head; `None` if nothing
/// came in time.
fn head_within(stream: &mut TcpStream, timeout: Duration) -> Option<u16> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut byte = [0u8; 1];
    if !matches!(stream.peek(&mut byte), Ok(1)) {
        return None;
    }
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    Some(read_head(stream).0.status)
}

/// EMFILE from `accept`: the limit is lowered under a running server (as when something else in the
/// process holds descriptors, or `ulimit -n` was set low), connections are opened until the server
/// can accept no more, and then:
/// - the loop does not spin: it pauses accepting for 100 ms at a time (under 0.3 s of CPU per second);
/// - the connections it already has are served: a publish on an open connection reaches a stream;
/// - once descriptors free up, the connections that waited in the backlog are served, and new ones.
#[test]
fn accept_emfile_pauses_without_spinning_and_recovers() {
    let _alone = exclusive();
    let server = Proc::start(&["--heartbeat", "0"]);
    let addr = server.listening_addr();
    let mut publisher = Conn::open(addr);
    let mut held = Subscriber::open_on(connect(addr), "/events?topic=e", "", "HTTP/1.1");

    const SPARE: u32 = 16;
    set_fd_limit(&server, limit_leaving(&server, SPARE));

    // Fill the spare descriptors with streams; the connections after them wait in the backlog.
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..SPARE + 8 {
        let mut stream = connect(addr);
        stream.write_all(b"GET /events?topic=e HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        // In accept order: once one is left waiting, every later one is too.
        let patience =
            if waiting.is_empty() { Duration::from_millis(500) } else { Duration::from_millis(20) };
        match head_within(&mut stream, patience) {
            Some(status) => {
                assert_eq!(status, 200);
                served.push(stream);
            }
            None => waiting.push(stream),
        }
    }
    assert!(!waiting.is_empty(), "no connection was left waiting: the limit did not bite");
    assert!(served.len() as u32 <= SPARE, "{} served with {SPARE} spare descriptors", served.len());
    let warning = server.wait_for_line("accept failed");
    assert!(warning.contains("WARN") && warning.contains("os error 24"), "{warning}");

    // Exhausted: measure the CPU used over a second, and serve the connections already open.
    let cpu_before = server.cpu();
    let window = Instant::now();
    let mut published = Vec::new();
    while window.elapsed() < Duration::from_secs(1) {
        let id = publisher.publish("topic=e", b"while exhausted");
        assert_eq!(held.next_event().id, Some(id.to_string()), "an open stream is served while exhausted");
        published.push(id);
        std::thread::sleep(Duration::from_millis(100)); // paces the publishes over the window
    }
    let cpu = server.cpu() - cpu_before;
    let wall = window.elapsed();
    let warnings = server.stderr().iter().filter(|l| l.contains("accept failed")).count();
    println!(
        "EMFILE: {} served, {} waiting; CPU {cpu:?} over {wall:?} of exhaustion ({} publishes served); \
         {warnings} warnings so far",
        served.len(),
        waiting.len(),
        published.len()
    );
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "the loop used {cpu:?} of CPU in {wall:?}: spinning"
    );

    // Free the descriptors: the first waiting connection is accepted and served, then a new one.
    drop(served);
    let mut first = waiting.remove(0);
    assert_eq!(head_within(&mut first, DEADLINE), Some(200), "a waiting connection is served after recovery");
    let mut fresh = Subscriber::open_on(connect(addr), "/events?topic=e", "", "HTTP/1.1");
    let id = publisher.publish("topic=e", b"recovered");
    assert_eq!(fresh.next_event().id, Some(id.to_string()));
    assert_eq!(held.next_event().id, Some(id.to_string()));
    assert_eq!(get(addr, "/health", "").status, 200);
}

/// The open-file limit caps `--max-connections` with room to spare: under `ulimit -n 160` the server
/// holds 64 connections (160, less 64 kept back, less 32 that may wait for a "come back later"),
/// tells the next ones to come back later, closes the rest at once, and never runs out of
/// descriptors however many clients push in.
#[test]
fn descriptor_limit_caps_connections_below_exhaustion() {
    let _alone = exclusive();
    let mut command = Command::new("prlimit");
    command.args(["--nofile=160:160", "--", BIN]);
    let server = Proc::start_with(command, &["--heartbeat", "0", "--retry-ms", "500"], "info");
    let addr = server.listening_addr();
    let line = server.wait_for_line("max-connections lowered");
    // "max-connections lowered from 100000 to N by the open-file limit 160 (...)"
    let cap: usize =
        line.split(" to ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().parse().unwrap();
    assert!(line.contains("by the open-file limit 160") && (16..=96).contains(&cap), "{line}");

    let mut publisher = Conn::open(addr);
    let mut held: Vec<Subscriber> =
        (1..cap).map(|_| Subscriber::open_on(connect(addr), "/events?topic=c", "", "HTTP/1.1")).collect();

    // Full: a subscriber is told to retry in 1-10 s and the stream ends at once; /health is answered;
    // anything else gets 503 with Retry-After.
    let mut turned_away = Subscriber::open_on(connect(addr), "/events?topic=c", "", "HTTP/1.1");
    assert_eq!(turned_away.read_to_end(), vec![]);
    assert!(turned_away.clean_end() && turned_away.retries.len() == 1, "{:?}", turned_away.retries);
    assert!((1000..=10_000).contains(&turned_away.retries[0]), "retry {:?}", turned_away.retries);
    assert_eq!(get(addr, "/health", "").status, 200);
    let metrics = get(addr, "/metrics", "");
    assert_eq!(metrics.status, 503);
    assert!(metrics.header("retry-after").is_some(), "{metrics:?}");

    // A burst of 200 more clients at once, each sending a request and never reading: more than the
    // 32 that may wait for an answer. Every one is answered or closed; none exhausts descriptors.
    let burst: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = connect(addr);
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
            stream
        })
        .collect();
    for mut stream in burst {
        assert!(closed_within(&mut stream, DEADLINE), "a client over the limit was left hanging");
    }
    assert!(
        !server.stderr().iter().any(|l| l.contains("accept failed")),
        "the server ran out of descriptors: {:#?}",
        server.stderr()
    );
    assert!(server.fds() < 160);

    // The held streams were not disturbed, and once one goes a new subscriber gets a normal stream.
    let id = publisher.publish("topic=c", b"still here");
    for sub in held.iter_mut() {
        assert_eq!(sub.next_event().id, Some(id.to_string()));
    }
    held.pop();
    assert!(
        eventually(|| {
            let mut sub = Subscriber::open_on(connect(addr), "/events?topic=c", "", "HTTP/1.1");
            sub.next_event_within(Duration::from_millis(100));
            sub.retries.first() == Some(&500) && !sub.ended
        }),
        "a slot freed up for a new subscriber"
    );
}
