//! Resume with `Last-Event-ID` (header or query), the `ssed-gap` event, and ids treated as absent.

use ssed::Config;

use super::*;

/// Publishes `r1`..`rN` to topic `r` and returns their ids.
fn publish_r(server: &TestServer, n: usize) -> Vec<u64> {
    (1..=n).map(|i| publish(server.addr, "topic=r", format!("r{i}"))).collect()
}

/// Reads the next event and checks it is the `ssed-gap` event for a resume from `last` with `oldest`
/// the oldest retained id.
fn expect_gap(sub: &mut Subscriber, last: u64, oldest: u64) {
    let event = sub.next_event();
    assert_eq!(event.event.as_deref(), Some("ssed-gap"), "expected the gap event, got {event:?}");
    assert_eq!(event.id, None, "the gap event must not move the client's last id: {event:?}");
    assert_eq!(event.data, format!(r#"{{"last_event_id":{last},"oldest_retained":{oldest}}}"#));
}

/// Publishes a live event to `topic` and checks it is the next thing each subscriber gets, which
/// shows that nothing (no duplicate, no stray replay) was queued before it.
fn expect_live_next(server: &TestServer, topic: &str, subs: &mut [&mut Subscriber]) -> u64 {
    let id = publish(server.addr, &format!("topic={topic}"), "live");
    for sub in subs {
        let event = sub.next_event();
        assert_eq!(event.event, None, "{event:?}");
        assert_eq!(id_data(&event), (id, "live".to_string()));
    }
    id
}

#[test]
fn resume_by_last_event_id_header() {
    let server = TestServer::start(quiet_config());
    let ids = publish_r(&server, 3);
    let mut sub = Subscriber::open(server.addr, "/events?topic=r", &format!("Last-Event-ID: {}\r\n", ids[0]));
    assert_eq!(next_events(&mut sub, 2), pairs(&ids[1..], &["r2", "r3"]));
    let newest = expect_live_next(&server, "r", &mut [&mut sub]);

    // From the newest id: nothing to replay, live events only.
    let mut from_newest =
        Subscriber::open(server.addr, "/events?topic=r", &format!("Last-Event-ID: {newest}\r\n"));
    expect_live_next(&server, "r", &mut [&mut from_newest, &mut sub]);
}

#[test]
fn resume_by_query_in_both_spellings() {
    let server = TestServer::start(quiet_config());
    let ids = publish_r(&server, 3);
    let mut camel = Subscriber::open(server.addr, &format!("/events?topic=r&lastEventId={}", ids[0]), "");
    let mut mercure = Subscriber::open(server.addr, &format!("/events?lastEventID={}&topic=r", ids[1]), "");
    assert_eq!(next_events(&mut camel, 2), pairs(&ids[1..], &["r2", "r3"]));
    assert_eq!(next_events(&mut mercure, 1), pairs(&ids[2..], &["r3"]));
    expect_live_next(&server, "r", &mut [&mut camel, &mut mercure]);
}

#[test]
fn last_event_id_header_wins_over_query() {
    let server = TestServer::start(quiet_config());
    let ids = publish_r(&server, 3);
    let mut sub = Subscriber::open(
        server.addr,
        &format!("/events?topic=r&lastEventId={}", ids[0]),
        &format!("Last-Event-ID: {}\r\n", ids[1]),
    );
    assert_eq!(next_events(&mut sub, 1), pairs(&ids[2..], &["r3"]));
    expect_live_next(&server, "r", &mut [&mut sub]);
}

#[test]
fn resume_after_eviction_starts_with_gap_event() {
    let server = TestServer::start(Config { history: 3, ..quiet_config() });
    let gaps_before = metric(server.addr, "ssed_resume_gaps_total").expect("ssed_resume_gaps_total");
    let ids = publish_r(&server, 5); // r1 and r2 leave the history

    let mut sub = Subscriber::open(server.addr, "/events?topic=r", &format!("Last-Event-ID: {}\r\n", ids[0]));
    expect_gap(&mut sub, ids[0], ids[2]);
    assert_eq!(next_events(&mut sub, 3), pairs(&ids[2..], &["r3", "r4", "r5"]));
    assert_eq!(metric(server.addr, "ssed_resume_gaps_total"), Some(gaps_before + 1.0));

    // From r2 nothing newer was lost (r2 itself went, but the client has it): no gap event.
    let mut from_r2 =
        Subscriber::open(server.addr, "/events?topic=r", &format!("Last-Event-ID: {}\r\n", ids[1]));
    assert_eq!(next_events(&mut from_r2, 3), pairs(&ids[2..], &["r3", "r4", "r5"]));
    assert_eq!(metric(server.addr, "ssed_resume_gaps_total"), Some(gaps_before + 1.0));

    expect_live_next(&server, "r", &mut [&mut sub, &mut from_r2]);
}

#[test]
fn gap_is_judged_on_the_subscribed_topics() {
    let server = TestServer::start(Config { history: 3, ..quiet_config() });
    publish(server.addr, "topic=g", "g1");
    let x1 = publish(server.addr, "topic=x", "x1");
    publish(server.addr, "topic=g", "g2");
    let xs: Vec<u64> = (2..=4).map(|i| publish(server.addr, "topic=x", format!("x{i}"))).collect();
    // Retained: x2, x3, x4. Evicted after x1: g2 only.

    // Topic x lost nothing after x1: no gap event.
    let mut x = Subscriber::open(server.addr, "/events?topic=x", &format!("Last-Event-ID: {x1}\r\n"));
    assert_eq!(next_events(&mut x, 3), pairs(&xs, &["x2", "x3", "x4"]));

    // An every-topic stream lost g2.
    let mut all = Subscriber::open(server.addr, "/events", &format!("Last-Event-ID: {x1}\r\n"));
    expect_gap(&mut all, x1, xs[0]);
    assert_eq!(next_events(&mut all, 3), pairs(&xs, &["x2", "x3", "x4"]));

    expect_live_next(&server, "x", &mut [&mut x, &mut all]);
}

#[test]
fn resume_from_before_this_run_reports_gap() {
    let server = TestServer::start(quiet_config());
    let ids = publish_r(&server, 2);
    let mut by_header = Subscriber::open(server.addr, "/events?topic=r", "Last-Event-ID: 41\r\n");
    let mut by_query = Subscriber::open(server.addr, "/events?topic=r&lastEventId=0", "");
    expect_gap(&mut by_header, 41, ids[0]);
    expect_gap(&mut by_query, 0, ids[0]);
    for sub in [&mut by_header, &mut by_query] {
        assert_eq!(next_events(sub, 2), pairs(&ids, &["r1", "r2"]));
    }
    expect_live_next(&server, "r", &mut [&mut by_header, &mut by_query]);
}

#[test]
fn unusable_last_event_id_means_live_only() {
    let server = TestServer::start(quiet_config());
    let ids = publish_r(&server, 3);
    // Far enough above the newest id that the next live id is still below it: a server that used it
    // as a cursor would hold the live event back.
    let above = ids[2] + 1_000_000_000_000;
    let mut subs: Vec<Subscriber> = [
        above.to_string(),
        "abc".to_string(),
        "-1".to_string(),
        "12abc".to_string(),
        "1.5".to_string(),
        "99999999999999999999999".to_string(),
    ]
    .iter()
    .map(|value| Subscriber::open(server.addr, "/events?topic=r", &format!("Last-Event-ID: {value}\r\n")))
    .collect();
    subs.push(Subscriber::open(server.addr, &format!("/events?topic=r&lastEventId={above}"), ""));
    subs.push(Subscriber::open(server.addr, "/events?topic=r&lastEventID=nope", ""));
    let mut refs: Vec<&mut Subscriber> = subs.iter_mut().collect();
    expect_live_next(&server, "r", &mut refs);
}
