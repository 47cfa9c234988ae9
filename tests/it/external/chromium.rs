//! Headless Chromium: a page from another origin (served by a tiny HTTP server in the test) opens
//! `EventSource`s on ssed through CORS and POSTs what it receives back to that server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ssed::{Config, Event};

use super::{program, repo_path, Proc, Record, SteadyPublisher, CLIENT_DEADLINE};
use crate::support::{TempDir, TestServer};

/// Serves `GET /page.html` (and the pages' `/report.js`) and takes `POST /report` bodies into a
/// channel, one thread per connection.
pub(crate) struct PageServer {
    pub(crate) addr: SocketAddr,
    pub(crate) reports: Receiver<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    pub(crate) fn start(page: String) -> PageServer {
        PageServer::start_with_headers(page, String::new())
    }

    /// Like [`PageServer::start`], with header lines (each ending in CRLF) added to the page's
    /// response: a `Set-Cookie`, say.
    pub(crate) fn start_with_headers(page: String, page_headers: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let (tx, reports) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let page = Arc::new((page, page_headers));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (tx, page) = (tx.clone(), Arc::clone(&page));
                std::thread::spawn(move || serve(stream, &page, &tx));
            }
        });
        PageServer { addr, reports, stop, thread: Some(thread) }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream` (every answer closes the connection).
fn serve(mut stream: TcpStream, (page, page_headers): &(String, String), reports: &Sender<String>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return, // a speculative connection that never sent a request
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let request_line = head.lines().next().unwrap_or("");
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let response = match (method, path) {
        ("GET", "/page.html") => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n\
             {page_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        ),
        ("GET", "/report.js") => {
            let script = std::fs::read_to_string(super::repo_path("tests/clients/chromium/report.js"))
                .expect("read report.js");
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/javascript; charset=utf-8\r\nCache-Control: no-store\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{script}",
                script.len()
            )
        }
        ("POST", "/report") => {
            let _ = reports.send(body);
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    let _ = stream.write_all(response.as_bytes());
}

/// The reports the page sent so far, for failure messages.
pub(super) fn describe(reports: &[Record], browser: &Proc) -> String {
    let lines: Vec<String> = reports.iter().map(|r| format!("{:?}", r.0)).collect();
    format!("reports:\n{}\n{}", lines.join("\n"), browser.report())
}

/// Headless Chromium with a profile of its own in `profile`, opening `url`.
pub(super) fn headless(chromium: &Path, profile: &TempDir, url: &str) -> Command {
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-breakpad",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(url);
    command
}

#[test]
#[ignore = "needs chromium: run by .ci/run"]
fn chromium_eventsource_receives_in_order_and_resumes() {
    let chromium = program("chromium");
    let html =
        std::fs::read_to_string(repo_path("tests/clients/chromium/page.html")).expect("read page.html");
    let page = PageServer::start(html);
    let origin = format!("http://{}", page.addr);
    // Streams end after about a second and the browser is told to come back after 100 ms. The history
    // keeps 64 events, so a resume from the first of 80 earlier events lies beyond it.
    let server = TestServer::start(Config {
        max_lifetime: Duration::from_secs(1),
        retry: Duration::from_millis(100),
        history: 64,
        cors_origins: vec![origin.clone()],
        ..Config::default()
    });
    let old: Vec<u64> = (0..80)
        .map(|n| server.publisher.publish(Event::new(format!("old {n}")).topic("old")).unwrap().get())
        .collect();

    let profile = TempDir::new("chromium");
    let url = format!(
        "{origin}/page.html?ssed=http://{}&oldFrom={}&oldLast={}",
        server.addr,
        old[0],
        old[old.len() - 1]
    );
    let mut browser = Proc::spawn("chromium", headless(&chromium, &profile, &url), None);
    let deadline = Instant::now() + CLIENT_DEADLINE;

    let mut reports: Vec<Record> = Vec::new();
    let next = |reports: &mut Vec<Record>, browser: &mut Proc, waiting_for: &str| -> Record {
        let now = Instant::now();
        let line = match page.reports.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok(line) => line,
            Err(_) => {
                let exited = browser.try_exit();
                panic!(
                    "timed out waiting for {waiting_for} (browser exited: {exited:?}); {}",
                    describe(reports, browser)
                )
            }
        };
        let record = Record::parse(&line).unwrap_or_else(|e| panic!("{e} in report {line:?}"));
        assert_eq!(record.int("seq"), Some(reports.len() as i64), "reports arrive in order, once each");
        if record.kind() == "error" && record.int("readyState") != Some(0) {
            panic!("an EventSource gave up: {}", describe(reports, browser));
        }
        reports.push(record.clone());
        record
    };

    // First the page loads, the `old` stream is served its gap and what is retained, and `chat` opens.
    let mut chat_open = false;
    let mut old_closed = false;
    while !(chat_open && old_closed) {
        let record = next(&mut reports, &mut browser, "the page to open its streams");
        match (record.kind(), record.str("stream")) {
            ("open", Some("chat")) => chat_open = true,
            ("closed", Some("old")) => old_closed = true,
            _ => {}
        }
    }

    // Then publish continuously until the browser has come back at least twice after an event.
    let steady = SteadyPublisher::start(&server.publisher, "chat", "tick", Duration::from_millis(15));
    let mut steady = Some(steady);
    let mut published = Vec::new();
    let mut reopened_after_events = 0;
    let mut got_event = false;
    let mut done = false;
    while !done {
        let record = next(&mut reports, &mut browser, "events, reconnects and `done`");
        if record.str("stream") != Some("chat") {
            continue;
        }
        match record.kind() {
            "message" => got_event = true,
            "open" if got_event => reopened_after_events += 1,
            "done" => done = true,
            _ => {}
        }
        if reopened_after_events >= 2 && steady.is_some() {
            published = steady.take().unwrap().finish();
            server.publisher.publish(Event::new("bye").topic("chat").event_type("done")).unwrap();
        }
    }
    browser.kill();

    let context = describe(&reports, &browser);
    let chat: Vec<&Record> = reports.iter().filter(|r| r.str("stream") == Some("chat")).collect();
    assert!(!chat.iter().any(|r| r.kind() == "gap"), "no ssed-gap on a resume within the history: {context}");
    let received: Vec<(u64, String)> = chat
        .iter()
        .filter(|r| r.kind() == "message")
        .map(|r| (r.str("id").unwrap().parse().unwrap(), r.str("data").unwrap().to_string()))
        .collect();
    assert!(!published.is_empty());
    assert_eq!(received, published, "every event once, in order, across reconnects: {context}");
    assert!(reopened_after_events >= 2, "{context}");

    // The `old` stream: opened with ?lastEventId= the first of 80 events of which 64 are retained.
    let old_stream: Vec<&Record> = reports.iter().filter(|r| r.str("stream") == Some("old")).collect();
    assert_eq!(old_stream.first().map(|r| r.kind()), Some("open"), "{context}");
    let gap = old_stream.get(1).copied().unwrap_or_else(|| panic!("no ssed-gap: {context}"));
    assert_eq!(gap.kind(), "gap", "the first event of a resume beyond the history is ssed-gap: {context}");
    assert_eq!(gap.str("id"), Some(""), "ssed-gap carries no id: {context}");
    let gap_data = Record::parse(gap.str("data").unwrap()).expect("ssed-gap data is a JSON object");
    assert_eq!(gap_data.int("last_event_id"), Some(old[0] as i64), "{context}");
    assert_eq!(gap_data.int("oldest_retained"), Some(old[16] as i64), "{context}");
    let old_received: Vec<u64> = old_stream
        .iter()
        .filter(|r| r.kind() == "message")
        .map(|r| r.str("id").unwrap().parse().unwrap())
        .collect();
    assert_eq!(old_received, old[16..].to_vec(), "everything retained follows the gap: {context}");
    server.stop();
}
