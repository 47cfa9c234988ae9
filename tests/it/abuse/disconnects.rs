//! Abrupt disconnects: connections reset (RST, not FIN) at every stage leave no slot, stream,
//! descriptor or busy timer behind.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

/// Connections held at once by the test; each stage runs in batches of this many.
const BATCH: usize = 250;

/// Opens `count` connections in batches, brings each to a stage with `prepare`, then resets the batch.
/// `after_batch` runs before each batch is reset.
fn reset_in_batches(
    addr: SocketAddr,
    count: usize,
    mut prepare: impl FnMut(&mut TcpStream),
    mut after_batch: impl FnMut(),
) {
    for _ in 0..count / BATCH {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let mut stream = connect_small_window(addr, 8 * 1024);
            prepare(&mut stream);
            batch.push(stream);
        }
        after_batch();
        batch.into_iter().for_each(reset);
    }
}

/// Thousands of connections reset before a byte, in the middle of a request head, in the middle of
/// a publish body, and in the middle of a stream (some with unsent bytes queued): afterwards
/// `ssed_connections`, `ssed_subscribers` and the process's open descriptors are back at their
/// baseline, nothing was published by a cut request, and the loop is idle.
#[test]
fn resets_at_every_stage_leave_nothing_behind() {
    let _alone = exclusive();
    // Heartbeats every second, so every stream has a deadline in the timer heap when it is cut.
    let server = Proc::start(&["--heartbeat", "1", "--max-body", "65536", "--max-lag", "1048576"]);
    let addr = server.listening_addr();
    let mut watcher = Subscriber::open_on(connect(addr), "/events?topic=cut", "", "HTTP/1.1");
    // Before any other request: a closed request connection lingers a moment for the client's FIN.
    let baseline_fds = server.fds();
    let baseline_connections = metric(addr, "ssed_connections").unwrap();
    let started = Instant::now();

    // Reset before sending anything.
    reset_in_batches(addr, 1000, |_| {}, || {});
    println!("stage 1 {:?}", started.elapsed());
    // Reset in the middle of a request head.
    reset_in_batches(
        addr,
        1000,
        |s| s.write_all(b"GET /events?topic=cut HTTP/1.1\r\nHost: t\r\nX-Half: ").unwrap(),
        || {},
    );
    println!("stage 2 {:?}", started.elapsed());
    // Reset in the middle of a publish body: nothing may be published.
    reset_in_batches(
        addr,
        500,
        |s| {
            s.write_all(
                b"POST /events?topic=cut HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nhalf a body",
            )
            .unwrap()
        },
        || {},
    );
    println!("stage 3 {:?}", started.elapsed());
    // Reset in the middle of a stream, after a 48 KiB event that their 8 KiB windows cannot take
    // whole, so the server has bytes queued for them when they go.
    let big = vec![b'q'; 48 * 1024];
    let mut publisher = Conn::open(addr);
    let mut published = Vec::new();
    reset_in_batches(
        addr,
        1000,
        |s| assert_eq!(subscribe_head(s, "/events?topic=cut"), 200),
        || published.push(publisher.publish("topic=cut", &big)),
    );
    let storm = started.elapsed();

    // The watcher saw exactly the events published on purpose, none from a cut request.
    for id in &published {
        assert_eq!(watcher.next_event().id, Some(id.to_string()));
    }
    let marker = publisher.publish("topic=cut", b"marker");
    assert_eq!(watcher.next_event().id, Some(marker.to_string()), "a cut request published something");
    drop(publisher);

    let settled = |name: &str, want: f64| eventually(|| metric(addr, name) == Some(want));
    assert!(
        settled("ssed_connections", baseline_connections),
        "connections: {:?}, baseline {baseline_connections}",
        metric(addr, "ssed_connections")
    );
    assert!(settled("ssed_subscribers", 1.0), "subscribers: {:?}", metric(addr, "ssed_subscribers"));
    assert!(
        eventually(|| server.fds() == baseline_fds),
        "descriptors: {}, baseline {baseline_fds}",
        server.fds()
    );
    let accepted = metric(addr, "ssed_connections_accepted_total").unwrap();

    // Idle afterwards: no deadline of a dead connection keeps the loop busy.
    let cpu_before = server.cpu();
    let window = Instant::now();
    std::thread::sleep(Duration::from_millis(500)); // a measurement window
    let cpu = server.cpu() - cpu_before;
    println!(
        "disconnects: 3500 resets in {storm:?} ({accepted} connections accepted in all); descriptors {} \
         (baseline {baseline_fds}); CPU {cpu:?} over {:?} afterwards",
        server.fds(),
        window.elapsed()
    );
    assert!(cpu < Duration::from_millis(50), "the idle loop used {cpu:?} of CPU in 500 ms");

    // Still serving: a new stream gets events.
    let mut fresh = Subscriber::open_on(connect(addr), "/events?topic=cut", "", "HTTP/1.1");
    let id = publish(addr, "topic=cut", b"after");
    assert_eq!(fresh.next_event().id, Some(id.to_string()));
    assert_eq!(watcher.next_event().id, Some(id.to_string()));
}
