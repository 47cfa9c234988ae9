//! Node's `eventsource` package (the common EventSource polyfill, pinned in
//! `tests/clients/node/package.json`) subscribing through several server-ended streams.

use std::process::Command;
use std::time::{Duration, Instant};

use ssed::{Config, Event};

use super::{node_client_dir, program, Proc, SteadyPublisher, CLIENT_DEADLINE};
use crate::support::TestServer;

#[test]
#[ignore = "needs node and the npm eventsource package: run by .ci/run"]
fn node_eventsource_reconnects_and_resumes_without_loss() {
    let node = program("node");
    let dir = node_client_dir();
    // Each stream ends after about a second; the client comes back 100 ms later with Last-Event-ID.
    let server = TestServer::start(Config {
        max_lifetime: Duration::from_secs(1),
        retry: Duration::from_millis(100),
        ..Config::default()
    });
    let url = format!("http://{}/events?topic=chat", server.addr);
    let mut command = Command::new(node);
    command.current_dir(&dir).arg("client.mjs").arg(&url);
    let mut client = Proc::spawn("node eventsource client", command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;

    let first = client.expect_record(deadline, "the first request");
    assert_eq!(first.kind(), "connect", "{}", client.report());
    assert_eq!(first.str("lastEventId"), None, "the first request has no Last-Event-ID: {}", client.report());
    let open = client.expect_record(deadline, "the first open");
    assert_eq!(open.kind(), "open", "{}", client.report());

    // Publish continuously (also while the client is between two streams) until it has come back at
    // least three times with a Last-Event-ID.
    let steady = SteadyPublisher::start(&server.publisher, "chat", "tick", Duration::from_millis(10));
    let mut received: Vec<(u64, String)> = Vec::new();
    // For every request after the first: the Last-Event-ID it sent and the last id received before it.
    let mut resumes: Vec<(Option<String>, Option<u64>)> = Vec::new();
    let mut opens = 1;
    let mut failed_requests: Vec<String> = Vec::new();
    let mut done_id = None;
    let mut steady = Some(steady);
    let mut published = Vec::new();
    while done_id.is_none() {
        let record = client.expect_record(deadline, "events, reconnects and the final `done`");
        match record.kind() {
            "message" => {
                let id = record.str("id").and_then(|s| s.parse().ok());
                let id = id.unwrap_or_else(|| panic!("message without a numeric id: {record:?}"));
                assert_eq!(record.str("event"), Some("message"));
                received.push((id, record.str("data").unwrap_or_default().to_string()));
            }
            "connect" => {
                resumes.push((record.str("lastEventId").map(str::to_string), received.last().map(|e| e.0)))
            }
            "open" => opens += 1,
            "error" => {
                assert_eq!(record.int("readyState"), Some(0), "the client gave up: {}", client.report());
                // A stream that ended cleanly gives an error with no message; a request that got no
                // response at all (a network error) carries one.
                let message = record.str("message").unwrap_or_default();
                if !message.is_empty() {
                    failed_requests.push(message.to_string());
                }
            }
            "gap" => panic!("unexpected ssed-gap: {}", client.report()),
            "done" => done_id = record.str("id").map(str::to_string),
            other => panic!("unexpected record {other:?}: {}", client.report()),
        }
        let with_id = resumes.iter().filter(|r| r.0.is_some()).count();
        if with_id >= 3 && steady.is_some() {
            published = steady.take().unwrap().finish();
            let id = server.publisher.publish(Event::new("bye").topic("chat").event_type("done")).unwrap();
            assert!(id.get() > published.last().unwrap().0);
        }
    }
    let status = client.wait_exit(deadline);
    assert!(status.success(), "{status}: {}", client.report());

    for (sent, last_received) in &resumes {
        assert_eq!(
            sent.as_deref().map(str::parse::<u64>).transpose().unwrap(),
            *last_received,
            "a reconnect must send the last id received as Last-Event-ID: {}",
            client.report()
        );
    }
    assert!(resumes.iter().filter(|r| r.0.is_some()).count() >= 3, "{}", client.report());
    // Every event exactly once, in order, across all the reconnects.
    if received != published {
        let ids = |v: &[(u64, String)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
        let missing: Vec<u64> =
            ids(&published).into_iter().filter(|id| !received.iter().any(|r| r.0 == *id)).collect();
        let mut seen = std::collections::HashSet::new();
        let duplicated: Vec<u64> = received.iter().map(|e| e.0).filter(|id| !seen.insert(*id)).collect();
        panic!(
            "events lost or duplicated across reconnects: {} published, {} received, missing {missing:?}, \
             duplicated {duplicated:?}, resumes {resumes:?}",
            published.len(),
            received.len()
        );
    }
    // Every reconnect must be answered. After a clean end of stream the server closes the connection;
    // if the response did not say `Connection: close`, Node's fetch may send the reconnect on that
    // pooled connection and fail with "other side closed" (the client then retries after a delay).
    assert!(
        failed_requests.is_empty(),
        "reconnect requests failed without a response: {failed_requests:?}: {}",
        client.report()
    );
    assert_eq!(opens, resumes.len() + 1, "every request was answered: {}", client.report());
    server.stop();
}
