//! Amplification: a request may not make the server hold much more memory than it sent, for longer
//! than it is answered; in particular the per-topic index must not escape the history's byte cap.

use std::net::TcpStream;

use super::*;

const MIB: u64 = 1024 * 1024;

/// A form naming `topics` distinct topics, as many as fit in one 64 KiB body.
fn many_topics_form(topics: usize) -> String {
    let fields: Vec<String> = (0..topics).map(|i| format!("topic=t{i}")).collect();
    format!("{}&data=x", fields.join("&"))
}

/// Events that each name thousands of topics (one 64 KiB form apiece) must not grow the server past
/// what `--history-bytes` allows, however few wire bytes they carry: 300 of them, accepted or
/// refused, may add at most `2 × 4 MiB + 8 MiB` of RSS with a 4 MiB history.
///
/// Without a cap on topics per event this grew by about 50 MiB (an index entry per topic per stored
/// event, none of it counted as history bytes), and would grow by about 1.5 GiB before the default
/// 10000-event history started to evict.
#[test]
fn events_naming_thousands_of_topics_stay_within_the_history_bound() {
    let _alone = exclusive();
    let server = Proc::start(&["--history-bytes", &(4 * MIB).to_string(), "--heartbeat", "0"]);
    let addr = server.listening_addr();
    let body = many_topics_form(5400);
    assert!(body.len() <= 64 * 1024);
    let rss_start = server.rss_kib();
    let mut stream = connect(addr);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..300 {
        let request = format!(
            "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let response = crate::support::read_response(&mut stream);
        match response.status {
            200 => accepted += 1,
            400 => {
                refused += 1;
                stream = connect(addr);
            }
            other => panic!("a many-topic publish answered {other}: {response:?}"),
        }
    }
    let growth = server.rss_kib().saturating_sub(rss_start);
    let history = metric(addr, "ssed_history_bytes").unwrap();
    println!(
        "many-topic events: {accepted} accepted, {refused} refused; RSS grew {growth} KiB, history bytes {history}"
    );
    let bound = (2 * 4 * MIB + 8 * MIB) / 1024;
    assert!(growth < bound, "RSS grew {growth} KiB with a 4 MiB history (bound {bound} KiB)");
}

/// A subscription costs the server little more than the request that made it: 200 streams whose
/// 14 KiB heads name 1100 new topics each may add at most 32 KiB of RSS apiece (a stream of one
/// topic costs about 1 KiB). Uncapped, each cost about 280 KiB: at the default descriptor-derived
/// `--max-connections` of about 20000, some 5.5 GiB for a few hundred KiB/s of requests.
#[test]
fn a_subscription_naming_many_topics_costs_little_per_connection() {
    let _alone = exclusive();
    let server = Proc::start(&["--heartbeat", "0"]);
    let addr = server.listening_addr();
    let rss_start = server.rss_kib();
    let mut held: Vec<TcpStream> = Vec::new();
    let mut refused = 0;
    for c in 0..200 {
        let query: Vec<String> = (0..1100).map(|i| format!("topic={c:x}.{i:x}")).collect();
        let mut stream = connect(addr);
        let request = format!("GET /events?{} HTTP/1.1\r\nHost: t\r\n\r\n", query.join("&"));
        assert!(request.len() < 16 * 1024);
        stream.write_all(request.as_bytes()).unwrap();
        match read_head(&mut stream).0.status {
            200 => held.push(stream),
            400 => refused += 1,
            other => panic!("a many-topic subscribe answered {other}"),
        }
    }
    let growth = server.rss_kib().saturating_sub(rss_start);
    println!(
        "many-topic subscriptions: {} held, {refused} refused; RSS grew {growth} KiB, {} KiB per request",
        held.len(),
        growth / 200
    );
    assert!(growth / 200 < 32, "each many-topic subscription holds {} KiB", growth / 200);
}

/// Events naming new topics cost memory for those names and their indexes, and it comes back once
/// the events are gone: 10,000 publishes of 64 new 128-byte topics each (640,000 topics, with a
/// 1,000-event history) grow the server by over 20 MiB; once `--history-age` has expired them all,
/// it is back within 4 MiB of where it started.
///
/// Before, the topic table and the name map kept their peak size (and every name twice): RSS went
/// from 2.4 to 309 MiB with the default history and stayed at 312 MiB after the eviction.
///
/// (Pushing the flood out with new events instead leaves more behind, 5-12 MiB measured here: the
/// allocator places the new events in pages the flood used, and each keeps its page resident.)
#[test]
fn topic_memory_comes_back_once_their_events_are_gone() {
    let _alone = exclusive();
    let server = Proc::start(&["--history", "1000", "--history-age", "2", "--heartbeat", "0"]);
    let mut publisher = Conn::open(server.listening_addr());
    let history_empty = || metric(server.listening_addr(), "ssed_history_events") == Some(0.0);
    // Warm up the paths a publish takes, then let it expire.
    for _ in 0..100 {
        publisher.publish("topic=warm", b"w");
    }
    assert!(eventually(history_empty), "the warm-up events never expired");
    let rss_start = server.rss_kib();
    let pad = "t".repeat(118);
    let mut rss_peak = rss_start;
    for i in 0..10_000 {
        let topics: Vec<String> = (0..64).map(|j| format!("topic={i:06}.{j:02}.{pad}")).collect();
        publisher.publish(&topics.join("&"), b"x");
        if i % 1000 == 999 {
            rss_peak = rss_peak.max(server.rss_kib());
        }
    }
    assert!(eventually(history_empty), "the flood never expired");
    let rss_end = server.rss_kib();
    println!(
        "topic flood: RSS {rss_start} KiB at the start, {rss_peak} KiB at the peak, {rss_end} KiB after"
    );
    assert!(rss_peak > rss_start + 20 * 1024, "the flood should cost memory while retained: {rss_peak} KiB");
    assert!(
        rss_end < rss_start + 4 * 1024,
        "RSS {rss_end} KiB once the flood was gone, {rss_start} KiB before it (peak {rss_peak} KiB)"
    );
}
