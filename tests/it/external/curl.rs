//! curl as subscriber and as publisher, the way the README shows it.

use std::process::Command;
use std::time::Instant;

use ssed::Config;

use super::{program, run, Proc, CLIENT_DEADLINE};
use crate::support::TestServer;

/// Publishes with `curl -s ARGS...` (stdin fed from `stdin` when given) and returns the id it printed.
fn curl_publish(args: &[&str], stdin: Option<&[u8]>) -> u64 {
    let mut command = Command::new(program("curl"));
    command.arg("-s").arg("--max-time").arg("10").args(args);
    let (status, stdout, stderr) = run(&format!("curl {args:?}"), command, stdin);
    assert!(status.success(), "curl {args:?} failed with {status}: {stdout:?} {stderr}");
    assert!(
        stdout.ends_with('\n') && stdout.trim_end().bytes().all(|b| b.is_ascii_digit()) && stdout.len() > 1,
        "curl {args:?} should print the id and a newline, printed {stdout:?}"
    );
    stdout.trim_end().parse().unwrap()
}

#[test]
#[ignore = "needs curl: run by .ci/run"]
fn curl_subscribes_and_publishes() {
    let server = TestServer::start(Config::default());
    let base = format!("http://{}", server.addr);
    let chat = format!("{base}/events?topic=chat");

    let mut command = Command::new(program("curl"));
    command
        .args(["-sN", "--max-time", "30"])
        .arg("-w")
        .arg("\\nstatus=%{http_code} type=%{content_type}\\n")
        .arg(&chat);
    let mut subscriber = Proc::spawn("curl -sN (subscriber)", command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;

    // The body starts at once with a comment line: once curl prints it, the subscriber is registered.
    let first = subscriber.expect_line(deadline, "the stream's opening comment");
    assert!(first.starts_with(':'), "a stream starts with a comment line, got {first:?}");

    let hello = curl_publish(&["-d", "hello", &chat], None);
    // `echo hi | curl --data-binary @- …`: the line ending at the end of the body is dropped.
    let hi = curl_publish(&["--data-binary", "@-", &chat], Some(b"hi\n"));
    let multi = curl_publish(&["--data-binary", "first line\nsecond line\r\nthird line", &chat], None);
    let typed = curl_publish(&["-d", r#"{"n":4}"#, &format!("{chat}&event=greeting")], None);
    let elsewhere = curl_publish(&["-d", "not for chat", &format!("{base}/events?topic=elsewhere")], None);
    // The Mercure-style form: topic, data and type as form fields, no topic in the query.
    let form = curl_publish(
        &[
            "-d",
            "topic=chat",
            "--data-urlencode",
            "data=from a form",
            "-d",
            "type=note",
            &format!("{base}/events"),
        ],
        None,
    );
    let ids = [hello, hi, multi, typed, elsewhere, form];
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must strictly increase: {ids:?}");

    let frames = [
        format!("id: {hello}\ndata: hello\n\n"),
        format!("id: {hi}\ndata: hi\n\n"),
        format!("id: {multi}\ndata: first line\ndata: second line\ndata: third line\n\n"),
        format!("id: {typed}\nevent: greeting\ndata: {{\"n\":4}}\n\n"),
        format!("id: {form}\nevent: note\ndata: from a form\n\n"),
    ];
    let last = frames.last().unwrap().clone();
    subscriber.read_until(deadline, "the last published frame", |seen| seen.contains(&last));

    // A stream ended by shutdown ends cleanly (terminating chunk), so curl exits 0 and runs its -w.
    server.shutdown.shutdown();
    let status = subscriber.wait_exit(deadline);
    let output = subscriber.transcript.clone();
    assert!(
        status.success(),
        "curl should see a clean end of stream, exited {status}: {}",
        subscriber.report()
    );

    let mut from = 0;
    for frame in &frames {
        let at = output[from..]
            .find(frame.as_str())
            .unwrap_or_else(|| panic!("curl's output lacks {frame:?} (in order) in:\n{output}"));
        from += at + frame.len();
    }
    let first_id = output.find("\nid: ").expect("an id line");
    assert!(
        output[..first_id].lines().any(|l| l == "retry: 3000"),
        "`retry: 3000` comes before the first event:\n{output}"
    );
    assert!(!output.contains(&format!("id: {elsewhere}\n")), "an event of another topic leaked:\n{output}");
    assert!(
        output.trim_end().lines().last().is_some_and(|l| l.starts_with("status=200 type=text/event-stream")),
        "curl's -w should report 200 text/event-stream:\n{output}"
    );
    server.stop();
}
