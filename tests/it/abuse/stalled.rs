//! Readers that never read: they are cut at `--max-lag`, the server's memory does not grow with the
//! bytes published, and a reader that keeps up gets every event in order.

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::*;

const MIB: u64 = 1024 * 1024;
const MAX_LAG: u64 = 256 * 1024;
const HISTORY_BYTES: u64 = 4 * MIB;
const STALLED: usize = 1000;
/// Data bytes per event; 768 of them make 24 MiB published, six times the history.
///
/// Not more: a debug build of the server spends about 5 ms of CPU on a 32 KiB publish (the per-byte
/// line splitting is unoptimised), so 50 MiB would take this test past ten seconds to show nothing
/// more than 24 MiB does: the growth over the second half is what shows memory does not follow the
/// bytes published.
const EVENT_DATA: usize = 32 * 1024;
const EVENTS: usize = 768;
/// Events the healthy reader may be behind before the publisher waits for it: 4 × 32 KiB, half of
/// `--max-lag`, so only a reader that stops reading is ever cut.
const WINDOW: u64 = 4;

fn lag_and_evicted_drops(addr: SocketAddr) -> f64 {
    metric(addr, "ssed_subscribers_dropped_total{reason=\"lag\"}").unwrap_or(0.0)
        + metric(addr, "ssed_subscribers_dropped_total{reason=\"evicted\"}").unwrap_or(0.0)
}

/// A thousand subscribers that never read, 24 MiB published: each is cut at `--max-lag`, RSS stays
/// under a bound set by the history cap and not by the bytes published, and a reader that keeps up
/// receives all 768 events in order.
///
/// The bound: the history holds at most `--history-bytes` (4 MiB) of wire bytes; the allocator may keep
/// as much again in freed blocks of evicted events; one publish body, one encoding buffer and the
/// 64 KiB read buffer are each under 128 KiB; a thousand streams cost well under 1 KiB each in the
/// server (the unsent backlog lives in the shared history, not per connection). So
/// `2 × 4 MiB + 1000 × 4 KiB + 4 MiB ≈ 16 MiB` of growth is generous, and 24 MiB published would be
/// over it if it were kept per event, let alone per subscriber. Growth over the second half of the
/// publishing (12 MiB published into a history already full) must stay under 4 MiB.
#[test]
fn readers_that_never_read_are_cut_and_memory_stays_bounded() {
    let _alone = exclusive();
    let mut server = Proc::start(&[
        "--heartbeat",
        "0",
        "--max-body",
        "65536",
        "--max-lag",
        &MAX_LAG.to_string(),
        "--history-bytes",
        &HISTORY_BYTES.to_string(),
        "--history",
        "100000",
    ]);
    let addr = server.listening_addr();
    let rss_start = server.rss_kib();

    // The stalled clients: a 16 KiB receive window, a subscribe, the response head, then nothing.
    let mut stalled: Vec<TcpStream> = (0..STALLED)
        .map(|_| {
            let mut stream = connect_small_window(addr, 16 * 1024);
            assert_eq!(subscribe_head(&mut stream, "/events?topic=flood"), 200);
            stream
        })
        .collect();

    // The healthy reader records every event and counts them for the publisher's pacing.
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let mut healthy = Subscriber::open_on(connect(addr), "/events?topic=flood", "", "HTTP/1.1");
    let reader = std::thread::spawn(move || {
        let mut seen: Vec<(u64, usize, String)> = Vec::with_capacity(EVENTS);
        loop {
            let event = healthy.next_event();
            if event.data == "end" {
                return (seen, healthy);
            }
            let id = event.id.as_deref().expect("an id").parse().expect("a numeric id");
            seen.push((id, event.data.len(), event.data[..8].to_string()));
            counter.fetch_add(1, Ordering::Release);
        }
    });
    assert!(
        eventually(|| metric(addr, "ssed_subscribers") == Some(STALLED as f64 + 1.0)),
        "timed out waiting for every stream to be registered"
    );
    let rss_connected = server.rss_kib();

    let mut publisher = Conn::open(addr);
    let mut ids = Vec::with_capacity(EVENTS);
    let mut rss_peak = rss_connected;
    let mut rss_half = 0;
    let started = Instant::now();
    for n in 0..EVENTS {
        let deadline = Instant::now() + DEADLINE;
        while (n as u64) > received.load(Ordering::Acquire) + WINDOW {
            assert!(Instant::now() < deadline, "the healthy reader stopped at event {}", n);
            std::thread::yield_now();
        }
        let mut data = format!("{n:08}").into_bytes();
        data.resize(EVENT_DATA, b'x');
        ids.push(publisher.publish("topic=flood", &data));
        if n % 100 == 99 {
            rss_peak = rss_peak.max(server.rss_kib());
        }
        if n == EVENTS / 2 - 1 {
            rss_half = server.rss_kib();
        }
    }
    let publishing = started.elapsed();
    publisher.publish("topic=flood", b"end");
    let rss_end = server.rss_kib();
    rss_peak = rss_peak.max(rss_end);

    let (seen, _healthy) = reader.join().expect("the healthy reader");
    assert_eq!(seen.len(), EVENTS, "the healthy reader missed events");
    for (n, ((id, len, prefix), published)) in seen.iter().zip(&ids).enumerate() {
        assert_eq!((id, *len, prefix.as_str()), (published, EVENT_DATA, format!("{n:08}").as_str()));
    }

    assert!(
        eventually(|| lag_and_evicted_drops(addr) >= STALLED as f64),
        "every stalled reader is cut; {} were",
        lag_and_evicted_drops(addr)
    );
    assert_eq!(metric(addr, "ssed_subscribers"), Some(1.0), "only the healthy reader is left");
    // Each stalled client finds its stream closed once it drains what was in flight.
    for stream in stalled.iter_mut().take(20) {
        assert!(closed_within(stream, DEADLINE), "a stalled stream was not closed");
    }

    let growth = rss_peak.saturating_sub(rss_start);
    let second_half = rss_end.saturating_sub(rss_half);
    println!(
        "stalled readers: {EVENTS} events of {EVENT_DATA} B ({} MiB) in {publishing:.2?}; RSS KiB: start {rss_start}, \
         {STALLED} streams {rss_connected}, half {rss_half}, peak {rss_peak}, end {rss_end}; growth {} KiB, \
         second half {} KiB",
        (EVENTS * EVENT_DATA) as u64 / MIB,
        growth,
        second_half,
    );
    let bound_kib = (2 * HISTORY_BYTES + STALLED as u64 * 4096 + 4 * MIB) / 1024;
    assert!(growth < bound_kib, "RSS grew {growth} KiB, over the {bound_kib} KiB bound");
    assert!(second_half < 4096, "RSS grew {second_half} KiB while the second 12 MiB were published");
    assert!(server.alive());
}
