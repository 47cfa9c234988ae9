//! The publisher: a second thread with one blocking keep-alive HTTP/1.1 connection, so pacing and
//! waiting for answers never stall the subscribers' event loop.
//!
//! Each event's body starts with its publish time and its sequence number,
//! `<wall-clock ns, 19 digits> <sequence, 10 digits> ` padded with `x` to `--body-size`: every
//! receiver works out its own delivery latency, and which events it missed or got twice, from the
//! data alone, whatever ids the server assigns.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::sse::{self, parse_decimal, parse_event_id, ChunkDecoder, Framing};
use crate::target::Target;
use crate::wall_nanos;

/// The shortest body that holds the timestamp, the sequence number and their separators.
pub const MIN_BODY_BYTES: usize = 19 + 1 + 10 + 1;

/// How long a connect, a write or a wait for an answer may take before the event counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest pause between two checks of the stop flag while pacing.
const PACING_STEP: Duration = Duration::from_millis(50);

/// How the events are spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// This many events per second, on a fixed schedule from the first.
    Rate(f64),
    /// Back to back: each request as soon as the previous one is answered.
    Burst,
    /// All requests written at once, then all answers read (HTTP/1.1 pipelining).
    Pipeline,
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// Where to `POST`.
    pub target: Target,
    /// Events to publish.
    pub events: u32,
    /// Their spacing.
    pub pace: Pace,
    /// Bytes of each body.
    pub body_size: usize,
    /// Extra header lines of each publish request (a token).
    pub headers: Vec<String>,
    /// Publish as a Mercure hub form to this topic (`topic=…&data=…`) rather than a raw body.
    pub form_topic: Option<String>,
    /// With `form_topic`: every Nth event (the 1st, the N+1th, ...) is `private`; 0: none.
    pub private_every: u32,
}

/// Counters the subscribers' loop reads while the publisher runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests written.
    pub sent: AtomicU32,
    /// Requests answered with a 2xx status.
    pub ok: AtomicU32,
    /// Set by the loop to make the publisher give up (the run's `--duration` is over).
    pub stop: AtomicBool,
    /// Set by the publisher when it has nothing more to do.
    pub done: AtomicBool,
    /// With `--rate`: the wall-clock ns at which the schedule starts (event `seq` is due
    /// `seq / rate` seconds later), stored before the first request; 0 until then.
    pub schedule_start_ns: AtomicU64,
}

/// What the publisher did, handed back once it is done.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// Requests written.
    pub sent: u32,
    /// Per sequence number: answered with a 2xx status (so subscribers must receive it).
    pub accepted: Vec<bool>,
    /// Per sequence number: the id the answer carried, if its body was a decimal.
    pub ids: Vec<Option<u64>>,
    /// Failures by kind ("status 503", "connect: Connection refused", …).
    pub errors: BTreeMap<String, u64>,
    /// Wall-clock ns of the first request written (0 if none).
    pub first_sent_ns: u64,
    /// Wall-clock ns of the last request written.
    pub last_sent_ns: u64,
    /// Wall-clock ns at which the last answer was read (0 if none): with `--pipeline` every
    /// request is written (and stamped) at once, so only this says how long publishing took.
    pub last_answer_ns: u64,
}

impl PublishReport {
    /// Events the server accepted.
    pub fn accepted_count(&self) -> u32 {
        self.accepted.iter().filter(|&&a| a).count() as u32
    }

    /// Failed publishes.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Writes the body of event `seq` stamped `stamp_ns` into `out`, `size` bytes long.
pub fn encode_body(seq: u32, stamp_ns: u64, size: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(format!("{stamp_ns:019} {seq:010} ").as_bytes());
    out.resize(start + size.max(MIN_BODY_BYTES), b'x');
}

/// Percent-encodes `text` for a form value: everything but unreserved ASCII.
fn form_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads the timestamp and sequence number back from the start of a body.
pub fn decode_body(data: &[u8]) -> Option<(u64, u32)> {
    let mut fields = data.splitn(3, |&b| b == b' ');
    let stamp = parse_decimal(fields.next()?)?;
    let seq = parse_decimal(fields.next()?)?;
    Some((stamp, u32::try_from(seq).ok()?))
}

/// Starts the publisher thread; its report arrives on the returned channel.
pub fn spawn(
    config: PublishConfig,
    progress: Arc<Progress>,
    deadline: Instant,
) -> io::Result<mpsc::Receiver<PublishReport>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new().name("publisher".into()).spawn(move || {
        let mut publisher = Publisher::new(config, progress.clone(), deadline);
        publisher.run();
        progress.done.store(true, Ordering::Release);
        let _ = tx.send(publisher.report);
    })?;
    Ok(rx)
}

/// An answer to one request.
struct Answer {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

struct Publisher {
    config: PublishConfig,
    progress: Arc<Progress>,
    deadline: Instant,
    conn: Option<TcpStream>,
    /// Bytes read past the last answer (the start of the next one, when pipelining).
    input: Vec<u8>,
    report: PublishReport,
}

impl Publisher {
    fn new(config: PublishConfig, progress: Arc<Progress>, deadline: Instant) -> Publisher {
        let events = config.events as usize;
        let report =
            PublishReport { accepted: vec![false; events], ids: vec![None; events], ..Default::default() };
        Publisher { config, progress, deadline, conn: None, input: Vec::new(), report }
    }

    fn stopped(&self) -> bool {
        self.progress.stop.load(Ordering::Acquire) || Instant::now() >= self.deadline
    }

    fn run(&mut self) {
        match self.config.pace {
            Pace::Pipeline => self.run_pipelined(),
            Pace::Burst => {
                for seq in 0..self.config.events {
                    if self.stopped() {
                        return;
                    }
                    self.publish_one(seq);
                }
            }
            Pace::Rate(rate) => {
                let start = Instant::now();
                self.progress.schedule_start_ns.store(wall_nanos(), Ordering::Release);
                for seq in 0..self.config.events {
                    let due = start + Duration::from_secs_f64(f64::from(seq) / rate);
                    loop {
                        if self.stopped() {
                            return;
                        }
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        thread::sleep((due - now).min(PACING_STEP));
                    }
                    self.publish_one(seq);
                }
            }
        }
    }

    fn fail(&mut self, what: String) {
        *self.report.errors.entry(what).or_default() += 1;
    }

    /// The open connection, or a new one.
    fn connection(&mut self) -> io::Result<&mut TcpStream> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.config.target.addr, IO_TIMEOUT)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            self.input.clear();
            self.conn = Some(stream);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Appends the request for event `seq`, stamped now, to `out`; returns the stamp.
    fn push_request(&self, seq: u32, out: &mut Vec<u8>) -> u64 {
        let target = &self.config.target;
        let stamp = wall_nanos();
        let mut body = Vec::with_capacity(self.config.body_size + 64);
        encode_body(seq, stamp, self.config.body_size, &mut body);
        let content_type = match &self.config.form_topic {
            Some(topic) => {
                // The body's bytes are digits, spaces and `x`: only the spaces need encoding.
                let data: Vec<u8> = body.iter().map(|&b| if b == b' ' { b'+' } else { b }).collect();
                let mut form = format!("topic={}&data=", form_escape(topic)).into_bytes();
                form.extend_from_slice(&data);
                let every = self.config.private_every;
                if every > 0 && seq.is_multiple_of(every) {
                    form.extend_from_slice(b"&private=on");
                }
                body = form;
                "application/x-www-form-urlencoded"
            }
            None => "text/plain",
        };
        let mut extra = String::new();
        for header in &self.config.headers {
            extra.push_str(header.trim_end());
            extra.push_str("\r\n");
        }
        out.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n",
                target.path,
                target.host,
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        stamp
    }

    fn note_sent(&mut self, stamp: u64, count: u32) {
        if self.report.first_sent_ns == 0 {
            self.report.first_sent_ns = stamp;
        }
        self.report.last_sent_ns = stamp;
        self.report.sent += count;
        self.progress.sent.fetch_add(count, Ordering::Release);
    }

    fn note_answer(&mut self, seq: u32, answer: &Answer) {
        self.report.last_answer_ns = wall_nanos();
        if (200..300).contains(&answer.status) {
            self.report.accepted[seq as usize] = true;
            self.report.ids[seq as usize] = parse_event_id(trim(&answer.body));
            self.progress.ok.fetch_add(1, Ordering::Release);
        } else {
            self.fail(format!("status {}", answer.status));
        }
        if answer.close {
            self.conn = None;
        }
    }

    fn publish_one(&mut self, seq: u32) {
        let mut request = Vec::with_capacity(256 + self.config.body_size);
        let stamp = self.push_request(seq, &mut request);
        let written = match self.connection() {
            Ok(conn) => conn.write_all(&request),
            Err(e) => {
                self.fail(format!("connect: {e}"));
                return;
            }
        };
        if let Err(e) = written {
            self.conn = None;
            return self.fail(format!("write: {e}"));
        }
        self.note_sent(stamp, 1);
        match self.read_answer() {
            Ok(answer) => self.note_answer(seq, &answer),
            Err(e) => {
                self.conn = None;
                self.fail(format!("answer: {e}"));
            }
        }
    }

    fn run_pipelined(&mut self) {
        let events = self.config.events;
        let mut requests = Vec::with_capacity(events as usize * (256 + self.config.body_size));
        let first = self.push_request(0, &mut requests);
        for seq in 1..events {
            self.push_request(seq, &mut requests);
        }
        let written = match self.connection() {
            Ok(conn) => conn.write_all(&requests),
            Err(e) => {
                *self.report.errors.entry(format!("connect: {e}")).or_default() += u64::from(events);
                return;
            }
        };
        if let Err(e) = written {
            *self.report.errors.entry(format!("write: {e}")).or_default() += u64::from(events);
            return;
        }
        self.note_sent(first, events);
        for seq in 0..events {
            if self.stopped() {
                return;
            }
            match self.read_answer() {
                Ok(answer) => {
                    let close = answer.close;
                    self.note_answer(seq, &answer);
                    if close && seq + 1 < events {
                        let lost = u64::from(events - seq - 1);
                        *self.report.errors.entry("closed mid-pipeline".into()).or_default() += lost;
                        return;
                    }
                }
                Err(e) => {
                    self.conn = None;
                    let lost = u64::from(events - seq);
                    *self.report.errors.entry(format!("answer: {e}")).or_default() += lost;
                    return;
                }
            }
        }
    }

    /// Reads one answer: a head, then a body delimited by `Content-Length`, chunks or the close.
    fn read_answer(&mut self) -> io::Result<Answer> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some((answer, used)) = complete_answer(&self.input)? {
                self.input.drain(..used);
                return Ok(answer);
            }
            let conn = self.conn.as_mut().ok_or(io::ErrorKind::NotConnected)?;
            match conn.read(&mut buf) {
                Ok(0) => {
                    // The end of a close-delimited body, or of the connection.
                    let head = sse::parse_head(&self.input).map_err(invalid)?;
                    return match head {
                        Some(h) if h.content_length.is_none() && h.framing == Framing::Close => {
                            let body = self.input[h.len..].to_vec();
                            self.input.clear();
                            self.conn = None;
                            Ok(Answer { status: h.status, body, close: true })
                        }
                        _ => Err(io::ErrorKind::UnexpectedEof.into()),
                    };
                }
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `bytes` without ASCII whitespace around it (`<[u8]>::trim_ascii` is newer than the MSRV).
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn invalid(e: sse::ParseError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The first complete answer in `input` and the bytes it takes, if it is all there.
fn complete_answer(input: &[u8]) -> io::Result<Option<(Answer, usize)>> {
    let Some(head) = sse::parse_head(input).map_err(invalid)? else { return Ok(None) };
    let rest = &input[head.len..];
    let answer = |body: Vec<u8>| Answer { status: head.status, body, close: head.close };
    if let Some(length) = head.content_length {
        let length = length as usize;
        return Ok((rest.len() >= length).then(|| (answer(rest[..length].to_vec()), head.len + length)));
    }
    match head.framing {
        Framing::Chunked => {
            let mut body = Vec::new();
            let end = ChunkDecoder::default().feed(rest, |p| body.extend_from_slice(p)).map_err(invalid)?;
            Ok(end.map(|used| (answer(body), head.len + used)))
        }
        // No length and no chunks: only the close ends it (see `read_answer`), or nothing follows.
        Framing::Close if head.status == 204 || head.status == 304 => {
            Ok(Some((answer(Vec::new()), head.len)))
        }
        Framing::Close => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_forms_carry_the_topic_the_stamped_data_the_token_and_every_nth_private() {
        let config = PublishConfig {
            target: crate::target::parse("http://127.0.0.1:1/.well-known/mercure", false).unwrap(),
            events: 3,
            pace: Pace::Burst,
            body_size: 40,
            headers: vec!["Authorization: Bearer t".into()],
            form_topic: Some("https://example.com/books/1".into()),
            private_every: 2,
        };
        let publisher = Publisher::new(config, Arc::new(Progress::default()), Instant::now());
        let request = |seq| {
            let mut out = Vec::new();
            let stamp = publisher.push_request(seq, &mut out);
            (String::from_utf8(out).unwrap(), stamp)
        };
        let (first, stamp) = request(0);
        let (head, body) = first.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nContent-Type: application/x-www-form-urlencoded\r\n"), "{head}");
        assert!(head.contains("\r\nAuthorization: Bearer t\r\n"), "{head}");
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())), "{head}");
        let data = format!("{stamp:019}+{:010}+", 0);
        assert!(
            body.starts_with(&format!("topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&data={data}")),
            "{body}"
        );
        assert!(body.ends_with("&private=on"), "event 0 of every 2 is private: {body}");
        assert!(!request(1).0.contains("private"), "event 1 is public");
        assert!(request(2).0.ends_with("&private=on"));
    }

    #[test]
    fn body_round_trip() {
        let mut body = Vec::new();
        encode_body(7, 1_700_000_000_123_456_789, 100, &mut body);
        assert_eq!(body.len(), 100);
        assert!(!body.contains(&b'\n'));
        assert_eq!(decode_body(&body), Some((1_700_000_000_123_456_789, 7)));
        assert_eq!(decode_body(&body[..sse::DATA_KEEP]), Some((1_700_000_000_123_456_789, 7)));
        body.clear();
        encode_body(u32::MAX, 1, 0, &mut body);
        assert_eq!(body.len(), MIN_BODY_BYTES);
        assert_eq!(decode_body(&body), Some((1, u32::MAX)));
        assert_eq!(decode_body(b"hello world"), None);
    }

    #[test]
    fn answers() {
        let two =
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n42\nHTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n";
        let (first, used) = complete_answer(two).unwrap().unwrap();
        assert_eq!((first.status, first.body.as_slice(), first.close), (200, &b"42\n"[..], false));
        let (second, rest) = complete_answer(&two[used..]).unwrap().unwrap();
        assert_eq!((second.status, used + rest), (503, two.len()));
        assert!(complete_answer(&two[..used - 1]).unwrap().is_none());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n42\n\r\n0\r\n\r\n";
        let (answer, used) = complete_answer(chunked).unwrap().unwrap();
        assert_eq!((answer.body.as_slice(), used), (&b"42\n"[..], chunked.len()));
    }
}
