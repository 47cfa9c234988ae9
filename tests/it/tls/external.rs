//! Real clients over TLS, trusting the test CA the way each is told to: curl (`--cacert`), Python's
//! httpx-sse (`SSL_CERT_FILE`), Node's `eventsource` (`NODE_EXTRA_CA_CERTS`) and headless Chromium
//! (the CA added to the NSS database of the profile's `$HOME`, as `certutil` does for a user).
//! `#[ignore]`d like every test of an outside program; `.ci/external-deps.sh` installs them.

use std::process::Command;
use std::time::{Duration, Instant};

use ssed::{Config, Event};

use super::{Pki, TlsServer};
use crate::external::chromium::PageServer;
use crate::external::{node_client_dir, program, repo_path, run, Proc, Record, CLIENT_DEADLINE};
use crate::support::TempDir;

/// The `https://localhost:PORT` base of a TLS server.
fn base(server: &TlsServer) -> String {
    format!("https://localhost:{}", server.tls_addr.port())
}

#[test]
#[ignore = "needs curl: run by .ci/run"]
fn curl_subscribes_and_publishes_over_tls() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, Config::default());
    let ca = pki.write_ca(&server.dir);
    let chat = format!("{}/events?topic=chat", base(&server));
    let resolve = format!("localhost:{}:127.0.0.1", server.tls_addr.port());
    let curl = |extra: &[&str]| {
        let mut command = Command::new(program("curl"));
        command.args(["-s", "--max-time", "30", "--resolve", &resolve, "--cacert"]).arg(&ca).args(extra);
        command
    };
    let mut subscriber = Proc::spawn("curl -sN (subscriber)", curl(&["-N", &chat]), None);
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let first = subscriber.expect_line(deadline, "the stream's opening comment");
    assert!(first.starts_with(':'), "{first:?}: {}", subscriber.report());

    let (status, stdout, stderr) = run("curl publish", curl(&["-d", "hello over tls", &chat]), None);
    assert!(status.success(), "{status}: {stdout} {stderr}");
    let id: u64 = stdout.trim().parse().expect("the id");
    subscriber.read_until(deadline, "the event", |text| text.contains("data: hello over tls\n"));
    assert!(subscriber.transcript.contains(&format!("id: {id}\n")), "{}", subscriber.transcript);

    // A client that does not trust the test CA is refused (curl exit 60: peer certificate).
    let mut untrusting = Command::new(program("curl"));
    untrusting.args(["-s", "--max-time", "10", "--resolve", &resolve]).arg(&chat);
    let (status, _, _) = run("curl without the CA", untrusting, None);
    assert_eq!(status.code(), Some(60), "{status}");

    // Shutdown: curl sees the end of the chunked body and exits 0 (no "transfer closed" error 18).
    server.stop();
    let status = subscriber.wait_exit(deadline);
    assert!(status.success(), "{status}: {}", subscriber.report());
}

#[test]
#[ignore = "needs python with httpx-sse: run by .ci/run"]
fn python_httpx_sse_receives_events_over_tls() {
    let python = repo_path("target/pyenv/bin/python");
    assert!(python.is_file(), "needs {}: run .ci/external-deps.sh", python.display());
    let pki = Pki::new();
    let server = TlsServer::start(&pki, Config::default());
    let ca = pki.write_ca(&server.dir);
    let mut command = Command::new(python);
    command
        .env("SSL_CERT_FILE", &ca)
        .arg("-u")
        .arg(repo_path("tests/clients/python/sse_client.py"))
        .arg("httpx-sse")
        .arg(format!("{}/events?topic=chat", base(&server)))
        .arg("3");
    let mut client = Proc::spawn("python httpx-sse over TLS", command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let open = client.expect_record(deadline, "the response head");
    assert_eq!((open.kind(), open.int("status")), ("open", Some(200)), "{}", client.report());
    let mut ids = Vec::new();
    for data in ["one", "zwei\ndrei", "{\"four\":4}"] {
        ids.push(server.publisher.publish(Event::new(data).topic("chat")).unwrap().get());
    }
    for (id, data) in ids.iter().zip(["one", "zwei\ndrei", "{\"four\":4}"]) {
        let event = client.expect_record(deadline, "an event");
        assert_eq!(event.kind(), "event", "{}", client.report());
        assert_eq!((event.str("id"), event.str("data")), (Some(id.to_string().as_str()), Some(data)));
    }
    assert_eq!(client.expect_record(deadline, "done").kind(), "done", "{}", client.report());
    assert!(client.wait_exit(deadline).success(), "{}", client.report());
}

#[test]
#[ignore = "needs node and the npm eventsource package: run by .ci/run"]
fn node_eventsource_resumes_over_tls() {
    let dir = node_client_dir();
    let pki = Pki::new();
    // Streams end after about a second; the client comes back with Last-Event-ID over a new handshake.
    let server = TlsServer::start(
        &pki,
        Config {
            max_lifetime: Duration::from_secs(1),
            retry: Duration::from_millis(100),
            ..Config::default()
        },
    );
    let ca = pki.write_ca(&server.dir);
    let mut command = Command::new(program("node"));
    command
        .current_dir(&dir)
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .arg("client.mjs")
        .arg(format!("{}/events?topic=chat", base(&server)));
    let mut client = Proc::spawn("node eventsource over TLS", command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut published = Vec::new();
    let mut received = Vec::new();
    let mut resumed_with = Vec::new();
    let mut opens = 0;
    loop {
        let record = client.expect_record(deadline, "events and reconnects");
        match record.kind() {
            "open" => {
                opens += 1;
                if opens <= 3 {
                    let data = format!("event {opens}");
                    published.push(server.publisher.publish(Event::new(data).topic("chat")).unwrap().get());
                } else {
                    server.publisher.publish(Event::new("bye").topic("chat").event_type("done")).unwrap();
                }
            }
            "connect" => resumed_with.push(record.str("lastEventId").map(str::to_string)),
            "message" => received.push(record.str("id").unwrap().parse::<u64>().unwrap()),
            "done" => break,
            "error" => assert_eq!(record.int("readyState"), Some(0), "gave up: {}", client.report()),
            other => panic!("unexpected {other}: {}", client.report()),
        }
    }
    assert_eq!(received, published, "every event once, in order: {}", client.report());
    // Each reconnect after an event sent the id of the last one.
    let resumes: Vec<String> = resumed_with.iter().flatten().cloned().collect();
    assert!(resumes.len() >= 3, "{}", client.report());
    assert!(resumes.contains(&published[2].to_string()), "{}", client.report());
}

#[test]
#[ignore = "needs chromium and certutil: run by .ci/run"]
fn chromium_eventsource_over_tls_with_the_test_ca_trusted() {
    let chromium = program("chromium");
    let certutil = program("certutil");
    let pki = Pki::new();
    let page = PageServer::start(
        std::fs::read_to_string(repo_path("tests/clients/chromium/page.html")).expect("read page.html"),
    );
    let origin = format!("http://{}", page.addr);
    let server = TlsServer::start(&pki, Config { cors_origins: vec![origin.clone()], ..Config::default() });
    let ca = pki.write_ca(&server.dir);
    let old: Vec<u64> = (0..3)
        .map(|n| server.publisher.publish(Event::new(format!("old {n}")).topic("old")).unwrap().get())
        .collect();

    // Chromium on Linux trusts what the NSS database in $HOME/.pki/nssdb trusts.
    let home = TempDir::new("chromium-tls");
    let nssdb = format!("sql:{}/.pki/nssdb", home.arg());
    std::fs::create_dir_all(home.0.join(".pki/nssdb")).unwrap();
    for args in [
        vec!["-N", "-d", &nssdb, "--empty-password"],
        vec!["-A", "-d", &nssdb, "-t", "C,,", "-n", "ssed test CA", "-i", ca.to_str().unwrap()],
    ] {
        let mut command = Command::new(&certutil);
        command.args(&args);
        let (status, stdout, stderr) = run("certutil", command, None);
        assert!(status.success(), "certutil {args:?}: {status} {stdout} {stderr}");
    }
    let url = format!("{origin}/page.html?ssed={}&oldFrom={}&oldLast={}", base(&server), old[0], old[2]);
    let mut command = Command::new(chromium);
    command
        .env("HOME", &home.0)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .args(["--disable-dev-shm-usage", "--disable-breakpad"])
        .arg("--host-resolver-rules=MAP localhost 127.0.0.1")
        .arg(format!("--user-data-dir={}", home.0.join("profile").display()))
        .arg(&url);
    let mut browser = Proc::spawn("chromium", command, None);
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let next = || -> Record {
        let line = page.reports.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let line = line.unwrap_or_else(|_| panic!("no report from the page in time: {}", browser.report()));
        Record::parse(&line).unwrap_or_else(|e| panic!("{e} in report {line:?}"))
    };
    let (mut chat_open, mut old_seen) = (false, Vec::new());
    while !(chat_open && old_seen.len() == 2) {
        let record = next();
        match (record.kind(), record.str("stream")) {
            ("open", Some("chat")) => chat_open = true,
            ("message", Some("old")) => old_seen.push(record.str("id").unwrap().parse::<u64>().unwrap()),
            ("error", stream) => panic!("EventSource {stream:?} failed over TLS: {record:?}"),
            _ => {}
        }
    }
    assert_eq!(old_seen, old[1..].to_vec(), "the resume over TLS");
    let id = server.publisher.publish(Event::new("live over tls").topic("chat")).unwrap().get();
    loop {
        let record = next();
        if record.kind() == "message" && record.str("stream") == Some("chat") {
            assert_eq!(
                (record.str("id"), record.str("data")),
                (Some(id.to_string().as_str()), Some("live over tls"))
            );
            break;
        }
    }
    browser.kill();
}
