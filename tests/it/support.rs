//! Shared test scaffolding: an in-process server and small blocking HTTP/SSE clients with deadlines.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ssed::{Config, Publisher, Server, Shutdown};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A server's loop on a thread of its own, and the handle that stops it: stopped and joined on
/// drop, waiting at most [`DEADLINE`], so a server that fails to stop fails (or at worst leaks) one
/// test instead of hanging the whole run.
pub struct ServerThread {
    shutdown: Shutdown,
    thread: Option<JoinHandle<Result<(), ssed::Error>>>,
}

impl ServerThread {
    /// Runs `server` on a new thread.
    pub fn spawn(server: Server) -> ServerThread {
        let shutdown = server.shutdown_handle();
        ServerThread { shutdown, thread: Some(std::thread::spawn(move || server.run())) }
    }

    /// Stops the server and waits for `run()` to return, failing the test if it returned an error.
    pub fn stop(mut self) {
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread panicked").expect("run() returned an error");
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + DEADLINE;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else if !std::thread::panicking() {
                panic!("the server did not stop within {DEADLINE:?} of shutdown()");
            }
        }
    }
}

/// A server running on its own thread for the length of a test; stopped and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub publisher: Publisher,
    pub shutdown: Shutdown,
    running: ServerThread,
}

impl TestServer {
    /// Starts a server with `config` (its `listen` is ignored: the server gets a fresh loopback port).
    ///
    /// `Server::bind` asks for the large listen backlog (std's `TcpListener::bind` asks for 128, and
    /// a burst of connects past it waits out one-second SYN retransmits).
    pub fn start(config: Config) -> TestServer {
        let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..config };
        let server = Server::bind(config).expect("server starts");
        let addr = server.local_addr();
        let publisher = server.publisher();
        let shutdown = server.shutdown_handle();
        TestServer { addr, publisher, shutdown, running: ServerThread::spawn(server) }
    }

    /// A server with the default configuration.
    pub fn with_defaults() -> TestServer {
        TestServer::start(Config::default())
    }

    /// Stops the server and waits for `run()` to return, failing the test if it returned an error.
    pub fn stop(self) {
        self.running.stop();
    }
}

/// A plain connection to `addr` with read and write timeouts of [`DEADLINE`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// A parsed HTTP response head plus whatever body bytes arrived with it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy), for assertions and failure messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` verbatim on a new connection to `addr` and reads one complete response.
pub fn roundtrip(addr: SocketAddr, request: &[u8]) -> Response {
    exchange(addr, request).0
}

/// Like [`roundtrip`], and also returns the connection, for checks on what comes after (a close).
pub fn exchange(addr: SocketAddr, request: &[u8]) -> (Response, TcpStream) {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    let response = read_response(&mut stream);
    (response, stream)
}

/// `GET path` with the extra header lines given (each ending in CRLF), on a connection of its own.
/// Not for a successful subscribe, whose body never ends: use [`Subscriber`] for that.
pub fn get(addr: SocketAddr, path: &str, headers: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
    roundtrip(addr, request.as_bytes())
}

/// The bytes of `POST path` with the extra header lines given and a `Content-Length` body;
/// `Connection: close` when `close`.
pub fn post_request(path: &str, headers: &str, body: &[u8], close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\n{headers}Content-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// `POST path` with a `Content-Length` body and the extra header lines given, on a connection of
/// its own.
pub fn post(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> Response {
    roundtrip(addr, &post_request(path, headers, body, true))
}

/// Publishes `body` raw with `POST /events?{query}` on a connection of its own; returns the id.
pub fn publish(addr: SocketAddr, query: &str, body: impl AsRef<[u8]>) -> u64 {
    published_id(&post(addr, &format!("/events?{query}"), "", body.as_ref()))
}

/// The id a successful publish answered with, checking the answer's shape (200, `ID\n`) on the way.
pub fn published_id(response: &Response) -> u64 {
    assert_eq!(response.status, 200, "publish answered {response:?}");
    let text = response.body_text();
    let id = text.strip_suffix('\n').unwrap_or_else(|| panic!("publish body {text:?} ends with a newline"));
    id.parse().unwrap_or_else(|_| panic!("publish body {text:?} is a decimal id"))
}

/// One connection whose responses are read in order, keeping bytes that belong to the next response:
/// for keep-alive, pipelining, and publishing many events without a handshake each.
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read but not yet taken by [`Conn::head`] or [`Conn::response`].
    pub buf: Vec<u8>,
}

impl Conn {
    /// A new connection to `addr` (timeouts as [`connect`]).
    pub fn open(addr: SocketAddr) -> Conn {
        Conn { stream: connect(addr), buf: Vec::new() }
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Publishes `body` raw with a keep-alive `POST /events?{query}` and returns the id.
    pub fn publish(&mut self, query: &str, body: &[u8]) -> u64 {
        self.send(&post_request(&format!("/events?{query}"), "", body, false));
        published_id(&self.response())
    }

    /// Reads once more into [`Conn::buf`]; fails the test if the connection ends or errs.
    pub fn fill(&mut self) {
        read_more(&mut self.stream, &mut self.buf);
    }

    /// The next response head, leaving any bytes after it in the buffer (a HEAD response ends here).
    pub fn head(&mut self) -> Response {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill();
        };
        let response = parse_head_bytes(&self.buf[..end]);
        self.buf.drain(..end + 4);
        response
    }

    /// The next complete response whose body is framed by `Content-Length` (or is empty).
    pub fn response(&mut self) -> Response {
        let mut response = self.head();
        assert!(response.header("transfer-encoding").is_none(), "unexpected chunked body: {response:?}");
        let len: usize = response.header("content-length").map_or(0, |v| v.parse().expect("numeric length"));
        while self.buf.len() < len {
            self.fill();
        }
        response.body = self.buf.drain(..len).collect();
        response
    }
}

/// Reads one response from `stream`: the head, then a body framed by Content-Length, chunked
/// encoding, or the end of the connection. A response to HEAD must be read with [`read_head`].
pub fn read_response(stream: &mut TcpStream) -> Response {
    let (mut response, mut rest) = read_head(stream);
    if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().expect("numeric content-length");
        while rest.len() < len {
            read_more(stream, &mut rest);
        }
        response.body = rest[..len].to_vec();
    } else if response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        response.body = read_chunked_to_end(stream, rest);
    } else {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading close-delimited body: {e}"),
            }
            assert!(Instant::now() < deadline, "body did not end in time");
        }
        response.body = rest;
    }
    response
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => panic!("connection closed early; had {:?}", String::from_utf8_lossy(buf)),
        Ok(n) => buf.extend_from_slice(&chunk[..n]),
        Err(e) => panic!("read failed: {e}; had {:?}", String::from_utf8_lossy(buf)),
    }
}

/// Reads `stream` until `needle` has arrived, failing the test if the stream ends or [`DEADLINE`]
/// passes first; returns every byte read. Searches only around what each read added, so a body of
/// megabytes stays cheap.
pub fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "never saw {:?}", String::from_utf8_lossy(needle));
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => panic!("the stream ended before {:?}", String::from_utf8_lossy(needle)),
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                let from = (seen.len() - n).saturating_sub(needle.len());
                if seen[from..].windows(needle.len()).any(|w| w == needle) {
                    return seen;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed before {:?}: {e}", String::from_utf8_lossy(needle)),
        }
    }
}

/// Reads a response head; returns it with the body bytes that arrived after it.
pub fn read_head(stream: &mut TcpStream) -> (Response, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf[end + 4..].to_vec();
            return (parse_head_bytes(&buf[..end]), rest);
        }
        read_more(stream, &mut buf);
    }
}

/// The status codes of every response head in `bytes`, in order (an event stream's body may follow
/// the last one; bodies with a `Content-Length` are skipped).
pub fn statuses(bytes: &[u8]) -> Vec<u16> {
    let mut found = Vec::new();
    let mut rest = bytes;
    while rest.starts_with(b"HTTP/1.") {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else { break };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a numeric status");
        found.push(status);
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, value)| value.trim().parse::<usize>().expect("a numeric Content-Length"));
        rest = &rest[(end + 4 + length).min(rest.len())..];
    }
    found
}

/// Parses a response head (status line and header lines, without the blank line) into a
/// [`Response`] with an empty body.
pub fn parse_head_bytes(head: &[u8]) -> Response {
    let head = String::from_utf8(head.to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).expect("status code").parse().expect("numeric status");
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line has a colon");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Response { status, headers, body: Vec::new() }
}

/// Decodes a chunked body until the terminating chunk.
fn read_chunked_to_end(stream: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            read_more(stream, &mut buf);
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("hex size");
        while buf.len() < line_end + 2 + size + 2 {
            read_more(stream, &mut buf);
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        assert_eq!(&buf[line_end + 2 + size..line_end + 4 + size], b"\r\n", "chunk ends with CRLF");
        buf.drain(..line_end + 4 + size);
        if size == 0 {
            return body;
        }
    }
}

/// One event as a spec-following SSE parser (WHATWG HTML, "Server-sent events") dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

/// A subscriber stream: sends the request, checks the head, then parses events from the body,
/// undoing chunked framing when the response uses it.
pub struct Subscriber {
    pub stream: TcpStream,
    pub response: Response,
    chunked: bool,
    raw: Vec<u8>,
    /// Decoded body bytes not yet parsed into lines.
    text: Vec<u8>,
    /// Every `retry:` value seen, in order.
    pub retries: Vec<u64>,
    /// Number of comment lines seen.
    pub comments: usize,
    /// Whether the terminating chunk (or, unchunked, the end of the connection) was seen.
    pub ended: bool,
    clean: bool,
    pending: SseEvent,
    pending_has_data: bool,
    data_lines: Vec<String>,
}

impl Subscriber {
    /// Subscribes to the server at `addr` with `GET {path_and_query}` and the extra header lines
    /// given (each ending in CRLF).
    pub fn open(addr: SocketAddr, path_and_query: &str, extra_headers: &str) -> Subscriber {
        Self::open_on(connect(addr), path_and_query, extra_headers, "HTTP/1.1")
    }

    /// Like [`Subscriber::open`] on an existing stream and with a chosen HTTP version.
    pub fn open_on(
        mut stream: TcpStream,
        path_and_query: &str,
        extra_headers: &str,
        version: &str,
    ) -> Subscriber {
        let request = format!("GET {path_and_query} {version}\r\nHost: test\r\n{extra_headers}\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let (response, rest) = read_head(&mut stream);
        assert_eq!(response.status, 200, "subscribe answered {response:?}");
        let chunked = response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut subscriber = Subscriber {
            stream,
            response,
            chunked,
            raw: rest,
            text: Vec::new(),
            retries: Vec::new(),
            comments: 0,
            ended: false,
            clean: false,
            pending: SseEvent { id: None, event: None, data: String::new(), retry: None },
            pending_has_data: false,
            data_lines: Vec::new(),
        };
        // Body bytes that came with the head are already here: decode them now.
        subscriber.decode();
        subscriber
    }

    /// Waits for the next dispatched event, up to `timeout`; `None` if none came or the stream ended.
    pub fn next_event_within(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            let mut buf = [0u8; 8192];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.decode();
                    if !self.chunked {
                        self.ended = true;
                    } else {
                        // A chunked stream closed without its terminating chunk: not a clean end.
                        self.ended = true;
                        self.raw.clear();
                    }
                }
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    self.decode();
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return None
                }
                Err(_) => {
                    self.ended = true;
                }
            }
        }
    }

    /// The next event, failing the test if none arrives within [`DEADLINE`].
    pub fn next_event(&mut self) -> SseEvent {
        self.next_event_within(DEADLINE).expect("an event within the deadline")
    }

    /// Waits until the stream ends, up to [`DEADLINE`]; returns the events dispatched before the end.
    pub fn read_to_end(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while !self.ended {
            assert!(Instant::now() < deadline, "stream did not end in time");
            if let Some(e) = self.next_event_within(deadline - Instant::now()) {
                events.push(e);
            }
        }
        while let Some(e) = self.parse_one() {
            events.push(e);
        }
        events
    }

    /// Whether the server ended the stream with the terminating chunk (`0\r\n\r\n`).
    pub fn clean_end(&self) -> bool {
        self.ended && self.clean
    }

    fn decode(&mut self) {
        if !self.chunked {
            self.text.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let size_text = std::str::from_utf8(&self.raw[..line_end]).expect("ASCII chunk size");
            let size = usize::from_str_radix(size_text.trim(), 16).expect("hex chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            assert_eq!(&self.raw[line_end + 2 + size..line_end + 4 + size], b"\r\n", "chunk ends with CRLF");
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.raw.drain(..line_end + 4 + size);
            if size == 0 {
                self.ended = true;
                self.clean = true;
                return;
            }
            self.text.extend_from_slice(&data);
        }
    }

    /// Parses complete lines per the WHATWG rules until one dispatches an event.
    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let pos = self.text.iter().position(|&b| b == b'\n' || b == b'\r')?;
            // A CR at the very end may be the first half of CRLF: wait for more unless the stream ended.
            if self.text[pos] == b'\r' && pos + 1 == self.text.len() && !self.ended {
                return None;
            }
            let line = String::from_utf8(self.text[..pos].to_vec()).expect("UTF-8 stream");
            let skip = if self.text[pos] == b'\r' && self.text.get(pos + 1) == Some(&b'\n') { 2 } else { 1 };
            self.text.drain(..pos + skip);
            if line.is_empty() {
                if self.pending_has_data {
                    let mut event = std::mem::replace(
                        &mut self.pending,
                        SseEvent { id: None, event: None, data: String::new(), retry: None },
                    );
                    event.data = self.data_lines.join("\n");
                    self.data_lines.clear();
                    self.pending_has_data = false;
                    return Some(event);
                }
                self.pending.event = None;
                self.pending.id = None;
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "data" => {
                    self.data_lines.push(value);
                    self.pending_has_data = true;
                }
                "event" => self.pending.event = Some(value),
                "id" => self.pending.id = Some(value),
                "retry" => {
                    if let Ok(ms) = value.parse() {
                        self.retries.push(ms);
                        self.pending.retry = Some(ms);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The id and data of a dispatched event that must carry an id (every event but `ssed-gap`).
pub fn id_data(event: &SseEvent) -> (u64, String) {
    let id = event.id.as_deref().unwrap_or_else(|| panic!("event without an id: {event:?}"));
    (id.parse().unwrap_or_else(|_| panic!("id {id:?} is a decimal u64")), event.data.clone())
}

/// The next `n` events of `subscriber` as `(id, data)`.
pub fn next_events(subscriber: &mut Subscriber, n: usize) -> Vec<(u64, String)> {
    (0..n).map(|_| id_data(&subscriber.next_event())).collect()
}

/// Publishes `marker` with `query` and asserts it is the next event `sub` sees: nothing else reached
/// the stream before it. `what` says what must not have been published.
pub fn assert_marker_next(addr: SocketAddr, sub: &mut Subscriber, query: &str, what: &str) {
    let marker = publish(addr, query, "marker");
    assert_eq!(id_data(&sub.next_event()), (marker, "marker".to_string()), "{what}");
}

/// Polls `condition` until it holds or [`DEADLINE`] passes; returns whether it held. Callers assert
/// on the answer with a message of their own (often the figure that failed to settle).
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fetches `/metrics` from the server at `addr` (in-process or a child) and returns the value of the
/// sample whose name (with labels) is `series`.
pub fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let text = get(addr, "/metrics", "").body_text();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap())
    })
}

/// A fresh directory of its own under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates `ssed-it-{name}-{pid}-{n}-{nanos}`: unique across the tests of this run and others.
    pub fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("ssed-it-{name}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// The path as a flag value.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
