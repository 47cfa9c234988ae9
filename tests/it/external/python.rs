//! Python's SSE client libraries from PyPI (httpx-sse over httpx, and sseclient-py), run by
//! `tests/clients/python/sse_client.py` from the virtual environment `.ci/external-deps.sh` makes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ssed::{Config, Event};

use super::{repo_path, Proc, CLIENT_DEADLINE};
use crate::support::{publish, Subscriber, TestServer};

pub(super) fn venv_python() -> PathBuf {
    let python = repo_path("target/pyenv/bin/python");
    assert!(python.is_file(), "needs {}: run .ci/external-deps.sh", python.display());
    python
}

/// What the client should print for one event: id, event type, data.
type Expected = (u64, String, String);

fn python_library_receives_events(library: &str) {
    let python = venv_python();
    // Heartbeats every 300 ms, so the stream carries comment lines between events.
    let server = TestServer::start(Config { heartbeat: Duration::from_millis(300), ..Config::default() });
    let url = format!("http://{}/events?topic=chat", server.addr);

    let cases: &[(Option<&str>, &str)] = &[
        (None, "plain"),
        (None, "line one\nline two\nline three"),
        (None, "héllo wörld — ✓ 日本語 🎉"),
        (Some("greeting"), r#"{"hello":"wörld","n":[1,2]}"#),
        (None, " leading space, then a: colon"),
    ];
    // Then a CRLF event and an empty one over HTTP, and one more after the heartbeats.
    let count = cases.len() + 3;

    let mut command = Command::new(python);
    command
        .arg("-u")
        .arg(repo_path("tests/clients/python/sse_client.py"))
        .arg(library)
        .arg(&url)
        .arg(count.to_string());
    let mut client = Proc::spawn(&format!("python {library}"), command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;

    let open = client.expect_record(deadline, "the response head");
    assert_eq!(open.kind(), "open", "{}", client.report());
    assert_eq!(open.int("status"), Some(200), "{}", client.report());
    assert!(open.str("content_type").unwrap_or("").starts_with("text/event-stream"), "{}", client.report());

    let mut expected: Vec<Expected> = Vec::new();
    for (event_type, data) in cases {
        let mut event = Event::new(*data).topic("chat");
        if let Some(t) = event_type {
            event = event.event_type(*t);
        }
        let id = server.publisher.publish(event).expect("publish").get();
        expected.push((id, event_type.unwrap_or("message").to_string(), data.to_string()));
    }
    publish(server.addr, "topic=elsewhere", "not for chat");
    // Published over HTTP: CRLF line breaks arrive as LF, and an empty body as an empty string.
    let id = publish(server.addr, "topic=chat", "crlf one\r\ncrlf two");
    expected.push((id, "message".into(), "crlf one\ncrlf two".into()));
    let id = publish(server.addr, "topic=chat", "");
    expected.push((id, "message".into(), String::new()));

    let check = |client: &mut Proc, (id, event, data): &Expected| {
        let record = client.expect_record(deadline, &format!("event {id}"));
        let got = (record.kind(), record.str("id"), record.str("event"), record.str("data"));
        let want = ("event", Some(id.to_string()), Some(event.as_str()), Some(data.as_str()));
        assert_eq!((got.0, got.1.map(str::to_string), got.2, got.3), want, "{}", client.report());
    };
    for e in &expected {
        check(&mut client, e);
    }

    // Let heartbeat comments pass on the now idle stream (a second subscriber, opened later, has seen
    // two of them by the time this loop ends): the library must not turn them into events.
    let mut watcher = Subscriber::open(server.addr, "/events?topic=chat", "");
    while watcher.comments < 3 {
        assert!(Instant::now() < deadline, "no heartbeats seen: {} comments", watcher.comments);
        assert!(!watcher.ended, "the watching stream ended");
        assert!(watcher.next_event_within(Duration::from_millis(50)).is_none(), "unexpected event");
    }
    let id = server.publisher.publish(Event::new("after the heartbeats").topic("chat")).unwrap().get();
    check(&mut client, &(id, "message".into(), "after the heartbeats".into()));

    let done = client.expect_record(deadline, "the end of the script");
    assert_eq!(done.kind(), "done", "{}", client.report());
    let status = client.wait_exit(deadline);
    assert!(status.success(), "{status}: {}", client.report());
    server.stop();
}

#[test]
#[ignore = "needs python with httpx-sse: run by .ci/run"]
fn python_httpx_sse_receives_events() {
    python_library_receives_events("httpx-sse");
}

#[test]
#[ignore = "needs python with sseclient-py: run by .ci/run"]
fn python_sseclient_py_receives_events() {
    python_library_receives_events("sseclient-py");
}
