//! Entry points for the coverage-guided fuzz targets in `fuzz/` (feature `fuzzing`); not a public API.
//!
//! Each function takes arbitrary bytes, drives one part of the pure core and panics when an invariant
//! breaks, so a panic is a bug in ssed (or in the oracle here), never an expected outcome. The targets
//! in `fuzz/fuzz_targets/` only call these; `fuzz/README.md` says how to run them.
//!
//! Inputs start with one selector byte that picks a configuration and how the rest is split into
//! reads, so the fuzzer can steer both; the rest is the bytes under test.

use std::time::Instant;

use crate::config::Config;
use crate::event::Event;
use crate::http::chunk::{self, ChunkedDecoder};
use crate::http::reader::{Action, Incoming, RequestReader, Waiting};
use crate::http::response::{self, Refusal};
use crate::http::route::{self, PublishTarget};
use crate::sse;
use crate::topic;

/// The body cap of the fuzzed configurations: small, so `413` paths are cheap to reach.
const MAX_BODY: usize = 4096;

/// The smaller body cap, picked by a selector bit.
const TINY_BODY: usize = 16;

/// The largest piece a read may deliver, by the selector's three "split" bits: byte by byte up to all
/// at once (for inputs under 4 KiB).
const PIECE_SIZES: [usize; 8] = [1, 2, 3, 7, 16, 61, 256, 4096];

// ----- request side -----

/// Feeds `data` to a `RequestReader` all at once and again in pieces of varying sizes, polling
/// after every read as the server does, and checks both give the same answers.
///
/// Selector bits: 0 sets a publish token (`pub`), 1 a subscribe token (`sub`), 2 shrinks the body cap
/// from 4096 to 16 bytes, 3–5 choose the largest piece. Checked besides: no panic, no poll that answers
/// forever without consuming input, every publish within the cap with valid topics and event type,
/// every subscribe with valid topics, and every refusal that leaves unknown framing behind closes.
pub fn request_side(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else { return };
    let max_body = if selector & 0b100 != 0 { TINY_BODY } else { MAX_BODY };
    let config = Config {
        max_body,
        max_lag: 2 * max_body,
        publish_token: (selector & 0b1 != 0).then(|| "pub".to_string()),
        subscribe_token: (selector & 0b10 != 0).then(|| "sub".to_string()),
        ..Config::default()
    };
    debug_assert!(config.validate().is_ok());
    let largest = PIECE_SIZES[usize::from((selector >> 3) & 0b111)];

    let whole = read_requests(&config, std::iter::once(stream));
    let pieces = read_requests(&config, Pieces::new(stream, largest, selector));
    assert_eq!(whole, pieces, "the answers depend on how the bytes were split into reads");
}

/// What a connection's request side came to.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    /// Every answer, in order, without `100 Continue` (sent only when the body has not yet arrived,
    /// so it rightly depends on the split).
    answers: Vec<Incoming>,
    end: End,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The last answer closes the connection.
    Closed,
    /// The last answer turned the connection into an event stream: no more requests are read.
    Streaming,
    /// The input ran out with the connection still reading requests.
    Reading { waiting: Waiting, unparsed: Vec<u8> },
}

/// Reads requests the way `Server::process_requests` does: append a read, poll until `None`, stop at
/// an answer that closes the connection or starts a stream.
fn read_requests<'a>(config: &Config, reads: impl Iterator<Item = &'a [u8]>) -> Transcript {
    let now = Instant::now();
    let mut reader = RequestReader::new(now);
    let mut answers = Vec::new();
    let mut fed = 0usize;
    let mut polls = 0usize;
    for read in reads {
        reader.input.extend_from_slice(read);
        fed += read.len();
        while let Some(incoming) = reader.poll_request(config, now) {
            // Each answer consumes at least one byte, but for the one interim answer a request may get.
            polls += 1;
            assert!(polls <= 2 * fed + 2, "poll_request answers {polls} times for {fed} bytes: {incoming:?}");
            check_incoming(&incoming, config);
            if matches!(incoming, Incoming::Interim(_)) {
                continue;
            }
            let end = ends_requests(&incoming);
            answers.push(incoming);
            if let Some(end) = end {
                return Transcript { answers, end };
            }
        }
    }
    let end = End::Reading { waiting: reader.waiting(), unparsed: std::mem::take(&mut reader.input) };
    Transcript { answers, end }
}

/// Whether the server stops reading requests after `incoming`, mirroring `Server::refuse` and
/// `Server::carry_out` (a connection under `--max-connections`).
fn ends_requests(incoming: &Incoming) -> Option<End> {
    match incoming {
        Incoming::Interim(_) => None,
        Incoming::Refused(meta, refusal) => (!meta.keep_alive || refusal.closes()).then_some(End::Closed),
        Incoming::Request(_, Action::Subscribe(s)) if !s.head_only => Some(End::Streaming),
        // As when its token is good: a refused one is answered and the connection read on, which
        // only the loop (holding the keys) can know.
        Incoming::Request(_, Action::HubSubscribe(s)) if !s.head_only => Some(End::Streaming),
        Incoming::Request(meta, _) => (!meta.keep_alive).then_some(End::Closed),
    }
}

fn check_incoming(incoming: &Incoming, config: &Config) {
    match incoming {
        Incoming::Interim(bytes) => assert_eq!(*bytes, response::CONTINUE),
        Incoming::Request(meta, action) => match action {
            Action::Publish(publish, _) => {
                assert!(
                    publish.data().len() <= config.max_body,
                    "published {} bytes of data over a cap of {}",
                    publish.data().len(),
                    config.max_body
                );
                check_publish(publish);
                assert!(!meta.head_only);
            }
            Action::Subscribe(subscribe) => {
                for name in &subscribe.topics {
                    assert_eq!(topic::validate(name.as_bytes()), Ok(()), "subscribed to {name:?}");
                }
                assert_eq!(subscribe.head_only, meta.head_only);
            }
            Action::HubSubscribe(subscribe) => assert_eq!(subscribe.head_only, meta.head_only),
            Action::HubPublish(publish) => {
                assert!(publish.1.len() <= config.max_body, "a hub form of {} bytes", publish.1.len());
                assert!(!meta.head_only);
            }
            Action::Health | Action::Metrics | Action::Preflight => {}
        },
        Incoming::Refused(meta, refusal) => {
            // After these the framing of what follows is unknown: reading on would parse body bytes
            // as a request (request smuggling).
            if matches!(refusal, Refusal::Head(_) | Refusal::Chunked | Refusal::BodyTooLarge) {
                assert!(!meta.keep_alive, "{refusal:?} keeps the connection alive");
                assert!(refusal.closes());
            }
            assert!((100..600).contains(&refusal.status()));
        }
    }
}

fn check_publish(publish: &Event) {
    assert!(!publish.topics().is_empty(), "a publish without a topic");
    for name in publish.topics() {
        assert_eq!(topic::validate(name.as_bytes()), Ok(()), "published to {name:?}");
    }
    if let Some(event_type) = publish.event_type() {
        assert_eq!(sse::validate_event_type(event_type.as_bytes()), Ok(()), "event type {event_type:?}");
    }
}

// ----- publish bodies -----

/// Decodes `data` as a chunked body, all at once and in pieces, then reads the decoded body (or, by a
/// selector bit, the raw bytes) with `route::publish_body` as raw data and as a form.
///
/// Selector bits: 0 feeds the raw bytes to `publish_body` instead of the decoded ones, 1 gives the
/// query an event type, 2–3 choose the decoder's cap (4096, 16, 1, 64 KiB), 5–7 the largest piece.
/// Checked: the decoder agrees with itself across splits, never passes its cap, never consumes more
/// than it was given, decodes its own encoding back; a raw publish keeps the body byte for byte; an
/// accepted form has valid topics and type and reads back the same from a re-encoding of its fields.
pub fn publish_body(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else { return };
    let limit = [MAX_BODY, TINY_BODY, 1, 64 * 1024][usize::from((selector >> 2) & 0b11)];
    let largest = PIECE_SIZES[usize::from(selector >> 5)];

    let decoded = decode_chunked(input, limit, largest, selector);
    let body = if selector & 0b1 != 0 {
        input.to_vec()
    } else {
        match decoded {
            Some(body) => body,
            None => return,
        }
    };
    let event_type = (selector & 0b10 != 0).then(|| "t".to_string());

    // With topics in the query the body is the data, whatever it holds.
    let target =
        PublishTarget { topics: vec!["q".into()], event_type: event_type.clone(), auth: None, hub: false };
    match route::publish_body(target, body.clone()) {
        Ok(publish) => {
            assert_eq!(publish.data().as_bytes(), &body[..]);
            assert_eq!(publish.topics(), ["q"]);
            assert_eq!(publish.event_type(), event_type.as_deref());
            assert_eq!(publish.retry_ms(), None);
        }
        Err(_) => assert!(std::str::from_utf8(&body).is_err(), "a UTF-8 raw body was refused"),
    }

    // Without them it is a form.
    let target = PublishTarget { topics: Vec::new(), event_type: event_type.clone(), auth: None, hub: false };
    let Ok(publish) = route::publish_body(target, body) else { return };
    check_publish(&publish);
    // The same fields, percent-encoded afresh, must read back the same.
    let again = route::publish_body(
        PublishTarget { topics: Vec::new(), event_type: None, auth: None, hub: false },
        form_of(&publish),
    )
    .expect("a re-encoded accepted form is refused");
    assert_eq!(again, publish);
}

/// Returns the decoded body when the chunked body is complete; `None` when it is refused or cut short.
fn decode_chunked(input: &[u8], limit: usize, largest: usize, seed: u8) -> Option<Vec<u8>> {
    let mut whole = ChunkedDecoder::new(limit);
    let mut body = Vec::new();
    let result = whole.decode(input, &mut body);
    assert!(body.len() <= limit, "decoded {} bytes past a cap of {limit}", body.len());
    if let Ok(used) = result {
        assert!(used <= input.len());
        if !whole.is_done() {
            assert_eq!(used, input.len(), "an unfinished decoder left input unread");
        }
    }

    let mut split = ChunkedDecoder::new(limit);
    let mut split_body = Vec::new();
    let mut split_result = Ok(0);
    for piece in Pieces::new(input, largest, seed) {
        match split.decode(piece, &mut split_body) {
            Ok(used) => {
                assert!(used <= piece.len());
                split_result = split_result.map(|total| total + used);
                if split.is_done() {
                    break;
                }
                assert_eq!(used, piece.len(), "an unfinished decoder left input unread");
            }
            Err(e) => {
                split_result = Err(e);
                break;
            }
        }
    }
    assert_eq!(result, split_result, "the decoder's answer depends on the split");
    assert_eq!(body, split_body, "the decoded body depends on the split");
    assert_eq!(whole.is_done(), split.is_done());

    if result.is_err() || !whole.is_done() {
        return None;
    }
    // Our own framing of the decoded body decodes back to it, and ends exactly where it should.
    let mut framed = Vec::new();
    chunk::encode_chunk(&body, &mut framed);
    framed.extend_from_slice(chunk::LAST_CHUNK);
    framed.extend_from_slice(b"GET");
    let mut again = ChunkedDecoder::new(limit);
    let mut again_body = Vec::new();
    let used = again.decode(&framed, &mut again_body);
    assert_eq!(used, Ok(framed.len() - 3), "re-framed body: {framed:?}");
    assert!(again.is_done());
    assert_eq!(again_body, body);
    Some(body)
}

/// A form carrying `publish`'s fields, every byte outside the unreserved set percent-encoded.
fn form_of(publish: &Event) -> Vec<u8> {
    let mut fields: Vec<(&str, String)> = publish.topics().iter().map(|t| ("topic", t.clone())).collect();
    fields.push(("data", publish.data().to_string()));
    if let Some(event_type) = publish.event_type() {
        fields.push(("type", event_type.to_string()));
    }
    if let Some(retry) = publish.retry_ms() {
        fields.push(("retry", retry.to_string()));
    }
    let mut form = String::new();
    for (key, value) in fields {
        if !form.is_empty() {
            form.push('&');
        }
        form.push_str(key);
        form.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                form.push(char::from(b));
            } else {
                form.push_str(&format!("%{b:02X}"));
            }
        }
    }
    form.into_bytes()
}

// ----- the encoder -----

/// Encodes an event made from `data` with [`sse::encode_frame`], parses the stream (prelude, the
/// frame, a plain event after it) as a browser would, and checks the event comes back intact.
///
/// The rest of the input, read as UTF-8 (invalid bytes become U+FFFD), is split at its first NUL into
/// an event type (used when valid) and the data. Selector bits: 0 adds an id, 1 a `retry:`. Checked
/// per the contract: exactly one event per frame, no field the event did not have, the data back with
/// CRLF, CR and LF all as `\n` and one trailing line ending dropped, type, id and retry unchanged, and
/// nothing carried over into the next event.
pub fn encode_roundtrip(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let (event_type, event_data) = match text.split_once('\0') {
        Some((candidate, data)) => {
            (sse::validate_event_type(candidate.as_bytes()).is_ok().then_some(candidate), data)
        }
        None => (None, &text[..]),
    };
    let id = (selector & 0b1 != 0).then(|| u64::from(selector).wrapping_mul(0x0101_0101_0101_0101));
    let retry_ms = (selector & 0b10 != 0).then(|| u64::from(selector >> 2) * 250);
    let fields = sse::Fields { id, wire_id: None, event_type, retry_ms, data: event_data };

    const PRELUDE_RETRY: u64 = 3000;
    let mut wire = Vec::new();
    sse::encode_prelude(PRELUDE_RETRY, &mut wire);
    let frame_start = wire.len();
    sse::encode_frame(&fields, &mut wire);
    let frame_end = wire.len();
    sse::encode_frame(
        &sse::Fields { id: None, wire_id: None, event_type: None, retry_ms: None, data: "next" },
        &mut wire,
    );
    let wire = String::from_utf8(wire).expect("the encoder wrote invalid UTF-8");
    assert!(wire[frame_start..frame_end].ends_with("\n\n"), "a frame must end with a blank line");

    let mut parser = SseParser::default();
    parser.feed(&wire[..frame_end]);
    let expected_data = contract_data(event_data);
    let expected = Dispatched {
        event_type: event_type.unwrap_or("").to_string(),
        data: expected_data.clone(),
        last_event_id: id.map(|id| id.to_string()).unwrap_or_default(),
    };
    assert_eq!(parser.events, [expected], "frame {:?}", &wire[frame_start..frame_end]);
    assert_eq!(parser.retry, Some(retry_ms.unwrap_or(PRELUDE_RETRY)));
    assert_eq!(parser.comments, 1, "only the prelude's comment");
    let mut fields_seen = vec!["retry"];
    fields_seen.extend(id.map(|_| "id"));
    fields_seen.extend(event_type.map(|_| "event"));
    fields_seen.extend(retry_ms.map(|_| "retry"));
    fields_seen.extend(expected_data.split('\n').map(|_| "data"));
    assert_eq!(parser.fields, fields_seen, "frame {:?}", &wire[frame_start..frame_end]);
    assert!(parser.data.is_empty() && parser.event_type.is_empty() && parser.line.is_empty());

    // The next event starts clean: no type, data or stray line carried over.
    parser.feed(&wire[frame_end..]);
    let next = Dispatched {
        event_type: String::new(),
        data: "next".into(),
        last_event_id: id.map(|id| id.to_string()).unwrap_or_default(),
    };
    assert_eq!(parser.events.len(), 2);
    assert_eq!(parser.events[1], next);
}

/// The data a client must see for `data`, by the contract's rule: CRLF, CR and LF each become `\n`,
/// then one trailing `\n` is dropped.
fn contract_data(data: &str) -> String {
    let mut out = String::with_capacity(data.len());
    let mut chars = data.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    if out.ends_with('\n') {
        out.pop();
    }
    out
}

/// An event as dispatched to a page.
#[derive(Debug, PartialEq, Eq)]
struct Dispatched {
    /// The event type buffer: empty means `message`.
    event_type: String,
    data: String,
    /// The event source's last event ID string when the event was dispatched.
    last_event_id: String,
}

/// The event stream interpretation of WHATWG HTML, "Server-sent events" (§9.2.6), written from the
/// spec and independent of the encoder, on text already decoded from UTF-8.
#[derive(Debug, Default)]
struct SseParser {
    /// The unfinished line, and whether it ended in CR (a following LF then belongs to it).
    line: String,
    after_cr: bool,
    started: bool,
    data: String,
    event_type: String,
    last_event_id: String,
    retry: Option<u64>,
    /// The name of every field line processed, in order.
    fields: Vec<String>,
    comments: usize,
    events: Vec<Dispatched>,
}

impl SseParser {
    fn feed(&mut self, text: &str) {
        let mut text = text;
        if !self.started {
            // "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
            self.started = true;
        }
        for c in text.chars() {
            match c {
                // end-of-line = ( cr lf / cr / lf )
                '\n' if self.after_cr => self.after_cr = false,
                '\r' | '\n' => {
                    self.after_cr = c == '\r';
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line);
                }
                c => {
                    self.after_cr = false;
                    self.line.push(c);
                }
            }
        }
    }

    fn process_line(&mut self, line: &str) {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        self.fields.push(field.to_string());
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Too large to hold: a browser's integer would saturate; none of our values gets here.
                self.retry = Some(value.parse().unwrap_or(u64::MAX));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        self.events.push(Dispatched {
            event_type: std::mem::take(&mut self.event_type),
            data: std::mem::take(&mut self.data),
            last_event_id: self.last_event_id.clone(),
        });
    }
}

// ----- splitting input into reads -----

/// Splits bytes into pieces of 1 to `largest` bytes, the sizes drawn from a generator seeded by the
/// bytes themselves, so the same input always splits the same way.
struct Pieces<'a> {
    rest: &'a [u8],
    largest: usize,
    state: u64,
}

impl<'a> Pieces<'a> {
    fn new(bytes: &'a [u8], largest: usize, seed: u8) -> Self {
        // FNV-1a of the input, then never zero (xorshift would stay at zero).
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64 ^ u64::from(seed), |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Pieces { rest: bytes, largest, state: hash | 1 }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        // xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators").
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let draw = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        let size = 1 + (draw as usize) % self.largest;
        let (piece, rest) = self.rest.split_at(size.min(self.rest.len()));
        self.rest = rest;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_side_takes_pipelined_requests() {
        let mut input = vec![0b0000_1000];
        input.extend_from_slice(b"POST /events?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\none");
        input.extend_from_slice(b"POST /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n");
        input.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded\r\n\r\n");
        input.extend_from_slice(b"b\r\ntopic=a&dat\r\n5\r\na=two\r\n0\r\n\r\nGET /events HTTP/1.1\r\n\r\n");
        request_side(&input);
        for selector in 0..=255u8 {
            input[0] = selector;
            request_side(&input);
        }
    }

    #[test]
    fn publish_body_reads_forms() {
        let body = b"1a\r\ntopic=a&data=x%0D%0Ay&retry=5\r\n0\r\n\r\n";
        for selector in 0..=255u8 {
            let mut input = vec![selector];
            input.extend_from_slice(body);
            publish_body(&input);
        }
    }

    #[test]
    fn encode_roundtrip_cases() {
        for case in ["", "\n", "a\r\nb", "a\rb\n\r", "type\0line 1\nline 2\r\n", "\0data", "t\r\0x", ":\0:"] {
            for selector in 0..=3u8 {
                let mut input = vec![selector];
                input.extend_from_slice(case.as_bytes());
                encode_roundtrip(&input);
            }
        }
    }

    #[test]
    fn the_parser_follows_the_spec() {
        let mut parser = SseParser::default();
        parser.feed("\u{feff}data: a\r\ndata:b\r\rid: 1\nevent: x\ndata\n\n:c\nretry: 1x\n\ndata: z\n");
        assert_eq!(
            parser.events,
            [
                Dispatched { event_type: String::new(), data: "a\nb".into(), last_event_id: String::new() },
                Dispatched { event_type: "x".into(), data: String::new(), last_event_id: "1".into() },
            ]
        );
        assert_eq!(parser.retry, None);
        assert_eq!(parser.data, "z\n", "an event without its blank line is not dispatched");
    }

    #[test]
    fn pieces_cover_the_input() {
        let input: Vec<u8> = (0..=255).collect();
        for largest in PIECE_SIZES {
            let pieces: Vec<&[u8]> = Pieces::new(&input, largest, 7).collect();
            assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= largest));
            assert_eq!(pieces.concat(), input);
        }
    }
}

// ----- the TLS read path -----

/// The TLS read path (`transport::Tls::read_plain`, what the loop calls on a TLS connection) under
/// arbitrary records: built once from a certificate and key (the fuzz target makes them), then fed
/// each input whole and in pieces.
#[cfg(feature = "tls")]
pub struct TlsReadPath(std::sync::Arc<rustls::ServerConfig>);

#[cfg(feature = "tls")]
impl TlsReadPath {
    /// From a PEM certificate and key; panics if they do not load (a broken harness).
    pub fn new(cert_pem: &str, key_pem: &str) -> TlsReadPath {
        let config = crate::tls::from_pem(
            cert_pem.as_bytes(),
            "cert",
            key_pem.as_bytes(),
            "key",
            std::time::SystemTime::now(),
        )
        .expect("the fuzz target's certificate loads");
        TlsReadPath(config)
    }

    /// Feeds `data` after its selector byte whole and in pieces of `PIECE_SIZES[selector & 7]`.
    /// Checked: no panic, no plaintext without a handshake, nothing read or sent after a refusal, the
    /// end of stream noticed, and the same verdict (refused or closed) whatever the split.
    pub fn run(&self, data: &[u8]) {
        let Some((&selector, input)) = data.split_first() else { return };
        let whole = crate::transport::feed(&self.0, input, input.len().max(1));
        let split = crate::transport::feed(&self.0, input, PIECE_SIZES[usize::from(selector & 7)]);
        assert_eq!(whole, split, "the verdict depends on how the records were split");
    }
}

// ----- Mercure hub requests and tokens -----

/// The hub's URL in the Mercure target: topics resolve against it, and its path is the reserved
/// namespace.
#[cfg(feature = "mercure")]
const HUB_URL: &str = "https://localhost/.well-known/mercure";

/// The HS256 secret the Mercure target verifies with, and signs with when the input asks it to.
#[cfg(feature = "mercure")]
const FUZZ_SECRET: &str = "fuzz-secret-of-at-least-thirty-two-bytes";

/// The clock of the Mercure target, in Unix seconds: tokens carry `exp` and `nbf` around it.
#[cfg(feature = "mercure")]
const FUZZ_NOW: u64 = 1_800_000_000;

/// Topics every compiled matcher is tried on, besides its own value and the input's last event id:
/// a URL, a relative one, the reserved namespace, a URN, non-ASCII and the wildcard.
#[cfg(feature = "mercure")]
const FUZZ_TOPICS: [&str; 7] = [
    "https://example.com/books/1",
    "/books/1?x=y#z",
    "https://localhost/.well-known/mercure/subscriptions",
    "urn:isbn:0451450523",
    "https://example.com/b\u{fc}cher/%C3%BC",
    "*",
    "",
];

/// What a Mercure hub does with client bytes before any event moves: the subscription query, the
/// publication form, and a token (as sent, or signed here so its claims get past the signature).
///
/// Selector bits 0–1 say what the rest is: 0 a subscription query, 1 a publication form, 2 a token
/// as it would come in `Authorization: Bearer`, 3 a token's claims (JSON) that the target signs
/// with `FUZZ_SECRET` under an HS256 `at+jwt` header. Bit 2: tiny publication limits (3 topics,
/// 32-byte topics and ids, 64-byte data) / legacy tokens refused. Bit 3: a token is checked for the
/// publisher role rather than the subscriber's.
///
/// Checked besides no panic (a panic in a matcher compiler is a crash of the whole server, since
/// release builds abort): an accepted query holds 1 to `MAX_MATCHERS` (64) distinct matchers whose
/// values pass the value rules; its refusals are `400`. Every matcher that compiles gives the same
/// answer twice, the wildcard matches everything, and exact and plain legacy matchers match their
/// own value (exact ones nothing else). An accepted form has 1 to `max_topics` topics that pass the
/// rules, none `*` or in the hub's namespace, an id neither `#`-led nor `earliest`, a type other
/// than `mercure`, and no part over its limit; its refusals are `400` or `413`; what the tiny
/// limits accept, the default ones accept the same. A verified token is unexpired and, unless
/// legacy, has an `exp`; every matcher it grants either compiles or is refused, and compiled ones
/// obey the same matcher rules.
#[cfg(feature = "mercure")]
pub fn mercure_request(data: &[u8]) {
    use crate::mercure::request::{Subscribe, Update, UpdateLimits};
    use crate::mercure::rules::{self, MAX_MATCHERS, MAX_TOPIC_BYTES};

    let Some((&selector, rest)) = data.split_first() else { return };
    let hub = url::Url::parse(HUB_URL).expect("the hub URL parses");
    let flag = selector & 0b100 != 0;
    match selector & 0b11 {
        0 => match Subscribe::parse(rest) {
            Ok(subscribe) => {
                let n = subscribe.matchers.len();
                assert!((1..=MAX_MATCHERS).contains(&n), "{n} matchers accepted");
                for (i, (kind, value)) in subscribe.matchers.iter().enumerate() {
                    assert!(
                        rules::check(value, MAX_TOPIC_BYTES).is_ok(),
                        "matcher {value:?} breaks the rules"
                    );
                    assert!(
                        !subscribe.matchers[..i].contains(&(*kind, value.clone())),
                        "matcher {value:?} kept twice"
                    );
                }
                if let Ok(matchers) = subscribe.compile(&hub) {
                    assert_eq!(matchers.len(), n);
                    for matcher in &matchers {
                        check_matcher(matcher, subscribe.last_event_id.as_deref());
                    }
                }
            }
            Err(e) => assert_eq!(e.status(), 400, "a subscription refused with {}: {e}", e.status()),
        },
        1 => {
            let tiny =
                UpdateLimits { max_topics: 3, max_topic_bytes: 32, max_id_bytes: 32, max_data_bytes: 64 };
            let limits = if flag { tiny } else { UpdateLimits::default() };
            match Update::parse(rest, &hub, &limits) {
                Ok(update) => {
                    assert!((1..=limits.max_topics).contains(&update.topics.len()));
                    for topic in &update.topics {
                        assert!(
                            rules::check(topic, limits.max_topic_bytes).is_ok(),
                            "topic {topic:?} accepted"
                        );
                        assert_ne!(topic, "*");
                        assert!(
                            !crate::mercure::request::in_reserved_namespace(topic, &hub),
                            "topic {topic:?} in the hub's namespace accepted"
                        );
                    }
                    if let Some(id) = &update.id {
                        assert!(rules::check(id, limits.max_id_bytes).is_ok(), "id {id:?} accepted");
                        assert!(!id.starts_with('#') && id != "earliest", "id {id:?} accepted");
                    }
                    if let Some(event_type) = &update.event_type {
                        assert!(rules::check(event_type, rules::MAX_TYPE_BYTES).is_ok());
                        assert_ne!(event_type, "mercure");
                    }
                    assert!(update.data.as_ref().is_none_or(|d| d.len() <= limits.max_data_bytes));
                    if flag {
                        assert_eq!(
                            Update::parse(rest, &hub, &UpdateLimits::default()).as_ref(),
                            Ok(&update),
                            "the tiny limits accept what the default ones do not"
                        );
                    }
                }
                Err(e) => assert!(matches!(e.status(), 400 | 413), "a form refused with {}: {e}", e.status()),
            }
        }
        mode => {
            use crate::mercure::jwt::{host_audiences, Role};

            let token = if mode == 2 {
                match std::str::from_utf8(rest) {
                    Ok(token) => token.to_owned(),
                    Err(_) => return,
                }
            } else {
                sign_claims(rest)
            };
            let verifier = fuzz_verifier(!flag);
            let role = if selector & 0b1000 != 0 { Role::Publisher } else { Role::Subscriber };
            let audiences = host_audiences("localhost");
            let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
            if let Ok(grant) = verifier.verify(&token, role, &audiences, FUZZ_NOW) {
                assert!(!grant.legacy || !flag, "a legacy token accepted with legacy tokens off");
                assert!(grant.legacy || grant.expires_at.is_some(), "a current token without exp accepted");
                assert!(grant.expires_at.is_none_or(|exp| exp > FUZZ_NOW), "an expired token accepted");
                for raw in grant.publish.iter().chain(&grant.subscribe) {
                    if let Ok(matcher) = crate::mercure::matcher::Matcher::new(raw.kind, &raw.value, &hub) {
                        check_matcher(&matcher, None);
                    }
                }
                let _ = grant.payload_for(|i| i % 2 == 0);
            }
        }
    }
}

/// A token of `claims` (any bytes) under an HS256 `at+jwt` header, signed with [`FUZZ_SECRET`].
#[cfg(feature = "mercure")]
fn sign_claims(claims: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"at+jwt"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes()).expect("an HMAC key");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HMAC signs anything");
    format!("{message}.{signature}")
}

/// The hub's verifier as `ssed --jwt-key FUZZ_SECRET` builds it: one HS256 key for both roles,
/// the default issuer, audiences from the request; `legacy`: pre-standardization tokens accepted.
#[cfg(feature = "mercure")]
fn fuzz_verifier(legacy: bool) -> crate::mercure::jwt::Verifier {
    use crate::mercure::jwt::{KeySpec, Verifier};

    let key = || KeySpec::parse("HS256", FUZZ_SECRET).expect("the fuzz secret is a key");
    Verifier::new(vec![key()], vec![key()]).legacy(legacy)
}

/// The rules every compiled matcher obeys, on [`FUZZ_TOPICS`], its own value and `extra`.
#[cfg(feature = "mercure")]
fn check_matcher(matcher: &crate::mercure::matcher::Matcher, extra: Option<&str>) {
    use crate::mercure::MatcherKind;

    let source = matcher.source();
    for topic in FUZZ_TOPICS.iter().copied().chain([source]).chain(extra) {
        let matched = matcher.matches(topic);
        assert_eq!(matched, matcher.matches(topic), "{source:?} on {topic:?} changed its answer");
        if matcher.is_any() {
            assert!(matched, "the wildcard missed {topic:?}");
        } else if matcher.kind() == MatcherKind::Exact {
            assert_eq!(matched, topic == source, "exact {source:?} on {topic:?}");
        }
    }
    if matches!(matcher.kind(), MatcherKind::Exact | MatcherKind::Legacy) {
        assert!(matcher.matches(source), "{source:?} does not match itself");
    }
}

#[cfg(all(test, feature = "mercure"))]
mod mercure_tests {
    use super::*;

    /// Current-revision claims granting two matchers (`EXP` stands for the expiry).
    const CURRENT: &str = r#"{"iss":"https://localhost","aud":"https://localhost/.well-known/mercure",
        "exp":EXP,"authorization_details":[{"type":"https://mercure.rocks/authorization-detail",
        "actions":["subscribe","publish"],"topics":[{"match":"/books/:id","match_type":"urlpattern"},{"match":"*"}]}]}"#;

    /// Pre-standardization claims granting two selectors.
    const LEGACY: &str = r#"{"mercure":{"publish":["*"],"subscribe":["https://example.com/books/{id}","*"],"payload":{"a":1}}}"#;

    fn run(mode: u8, rest: &[u8]) {
        for flags in [0u8, 0b100, 0b1000, 0b1100] {
            let mut input = vec![mode | flags];
            input.extend_from_slice(rest);
            mercure_request(&input);
        }
    }

    #[test]
    fn queries_forms_and_tokens_of_both_revisions_pass_the_checks() {
        run(
            0,
            b"match=https%3A%2F%2Fexample.com%2Fbooks%2F1&match_urlpattern=/books/:id&topic=*&lastEventID=x",
        );
        run(
            0,
            b"topic=https://example.com/books/{id}&match_exact=urn:isbn:0451450523&last_event_id=earliest",
        );
        run(0, b"match_urlpattern=%3Aa%3A!%5D"); // a bracket urlpattern 0.6 panics on: refused first
        run(0, b"matches=x");
        run(1, b"topic=/books/1&topic=urn:x&data=hello&id=a&type=t&retry=10&private=on");
        run(1, b"topic=/.well-known/%6Dercure/x&data=no");
        run(2, b"not.a.token");
        run(3, CURRENT.replace("EXP", &(FUZZ_NOW + 60).to_string()).as_bytes());
        run(3, LEGACY.as_bytes());
    }

    #[test]
    fn the_signed_mode_reaches_verified_grants_of_both_revisions() {
        // The target's own signing must give tokens the hub accepts, or mode 3 fuzzes nothing past
        // the signature.
        use crate::mercure::jwt::{host_audiences, Role};
        let audiences = host_audiences("localhost");
        let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
        let current = CURRENT.replace("EXP", &(FUZZ_NOW + 60).to_string());
        for (claims, legacy) in [(current.as_str(), false), (LEGACY, true)] {
            let grant = fuzz_verifier(true)
                .verify(&sign_claims(claims.as_bytes()), Role::Subscriber, &audiences, FUZZ_NOW)
                .unwrap_or_else(|e| panic!("{claims}: {e}"));
            assert_eq!(grant.legacy, legacy);
            assert_eq!(grant.subscribe.len(), 2, "{claims}");
        }
        let refused = fuzz_verifier(false).verify(
            &sign_claims(LEGACY.as_bytes()),
            Role::Subscriber,
            &audiences,
            FUZZ_NOW,
        );
        assert!(refused.is_err(), "a legacy token with legacy tokens off");
    }
}
