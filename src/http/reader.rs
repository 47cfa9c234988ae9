//! One connection's request side as a pure state machine: bytes in, complete requests or refusals out.
//!
//! The shell appends whatever it read to [`RequestReader::input`] and calls
//! [`RequestReader::poll_request`] until it answers `None`; the reader never touches a socket or the
//! clock. A connection stops reading requests once it becomes an event stream.

use std::time::Instant;

use crate::config::Config;
use crate::event::Event;
use crate::http::chunk::ChunkedDecoder;
use crate::http::request::{self, BodyFraming, Credentials, Head};
use crate::http::response::Refusal;
use crate::http::route::{self, HubSubscribe, PublishTarget, Route, Subscribe};

/// A complete request, ready to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a stream (or answer `HEAD` with its headers).
    Subscribe(Subscribe),
    /// Store an event; with JWT keys configured, once the token it came with allows it.
    Publish(Event, Option<Box<Credentials>>),
    /// A Mercure subscription (the loop applies the hub's rules and checks the token).
    HubSubscribe(Box<HubSubscribe>),
    /// A Mercure publication: the form, and where its token may be.
    HubPublish(Box<(Credentials, Vec<u8>)>),
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// CORS preflight.
    Preflight,
}

/// What the connection needs to know about a request to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Keep the connection open after the answer.
    pub keep_alive: bool,
    /// The request is HTTP/1.0.
    pub http10: bool,
    /// `HEAD`: headers only.
    pub head_only: bool,
    /// The `Origin` header, for CORS.
    pub origin: Option<String>,
}

impl Meta {
    /// For an answer to a request whose head was never parsed (malformed, or timed out): nothing
    /// is known of it, so the answer is plain and the connection closes. (The reader still marks it
    /// `head_only` when its first bytes name `HEAD`.)
    pub fn unparsed() -> Meta {
        Meta { keep_alive: false, http10: false, head_only: false, origin: None }
    }
}

/// The output of [`RequestReader::poll_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Bytes to write before anything else (`100 Continue`); keep polling.
    Interim(&'static [u8]),
    /// A request to carry out.
    Request(Meta, Action),
    /// A request to refuse; the meta's `keep_alive` already accounts for an unread body.
    Refused(Meta, Refusal),
}

enum BodyState {
    Length { remaining: usize },
    Chunked(ChunkedDecoder),
}

struct ReadingBody {
    meta: Meta,
    target: PublishTarget,
    body: Vec<u8>,
    state: BodyState,
}

/// Request heads waited for longer than this get `408` (the shell passes `--header-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Between requests, with no byte of the next one yet: closed quietly at the keep-alive timeout.
    Idle,
    /// Inside a request (head or body): refused with `408` at the header timeout.
    Request,
}

/// Parses requests from a connection's bytes, one at a time, with size caps.
pub struct RequestReader {
    /// Bytes read and not yet consumed.
    pub input: Vec<u8>,
    body: Option<Box<ReadingBody>>,
    /// When the current request (or the idle wait) started.
    since: Instant,
    /// No request has completed yet: a new connection owes its first head within the header timeout,
    /// even before its first byte (contract: "Errors").
    fresh: bool,
    /// `input[..head_lines]` ends at the last LF found so far (0: none), and `input[..head_searched]`
    /// has been searched for one; both restart at 0 whenever `input` loses its front.
    head_lines: usize,
    head_searched: usize,
}

/// The first bytes of a head are parsed on every read, complete line or not, so garbage (a TLS
/// handshake, a mistyped method) is refused at once; past them, only complete lines are parsed.
const EAGER_HEAD_BYTES: usize = 256;

impl RequestReader {
    /// A reader for a connection opened at `now`.
    pub fn new(now: Instant) -> Self {
        RequestReader {
            input: Vec::new(),
            body: None,
            since: now,
            fresh: true,
            head_lines: 0,
            head_searched: 0,
        }
    }

    /// Whether the reader is between requests or inside one.
    pub fn waiting(&self) -> Waiting {
        if self.input.is_empty() && self.body.is_none() && !self.fresh {
            Waiting::Idle
        } else {
            Waiting::Request
        }
    }

    /// Notes that bytes arrived at `now`: the first byte of a request starts its header clock.
    pub fn handle_input_at(&mut self, was_idle: bool, now: Instant) {
        if was_idle && self.waiting() == Waiting::Request {
            self.since = now;
        }
    }

    /// When the connection must be answered `408` or closed if nothing more happens.
    pub fn poll_deadline(&self, config: &Config) -> Instant {
        match self.waiting() {
            Waiting::Idle => crate::timer::deadline_after(self.since, config.keep_alive_timeout),
            Waiting::Request => crate::timer::deadline_after(self.since, config.header_timeout),
        }
    }

    /// How many bytes the shell should read at most before polling again; bounds the input buffer
    /// (a head is at most 16 KiB, a body at most `--max-body`).
    pub fn read_budget(&self, config: &Config) -> usize {
        match &self.body {
            Some(_) => config.max_body + 64 * 1024,
            None => request::MAX_HEAD_BYTES + 1,
        }
    }

    /// What is known of the request being read, for an answer given before it completes (`408`):
    /// its meta once the head parsed, else [`Meta::unparsed`] (the connection closes after it), with
    /// `head_only` if the bytes so far name `HEAD`.
    pub fn pending_meta(&self) -> Meta {
        match &self.body {
            Some(reading) => Meta { keep_alive: false, ..reading.meta.clone() },
            None => self.unparsed_meta(),
        }
    }

    fn unparsed_meta(&self) -> Meta {
        Meta { head_only: request::names_head(&self.input), ..Meta::unparsed() }
    }

    /// Parses the next request, interim answer or refusal from `input`; `None` when more bytes are
    /// needed. `now` restarts the idle clock after a complete request.
    #[must_use]
    pub fn poll_request(&mut self, config: &Config, now: Instant) -> Option<Incoming> {
        if self.body.is_some() {
            return self.poll_body(now);
        }
        let (head, used) = match self.parse_head() {
            Ok(None) => return None,
            Ok(Some(parsed)) => parsed,
            Err(e) => {
                let meta = self.unparsed_meta();
                self.input.clear();
                (self.head_lines, self.head_searched) = (0, 0);
                return Some(Incoming::Refused(meta, e.into()));
            }
        };
        self.input.drain(..used);
        (self.head_lines, self.head_searched) = (0, 0);
        let meta = meta_of(&head);
        let has_body = head.body != BodyFraming::None;
        let route = match route::route(&head, config) {
            Ok(route) => route,
            Err(e) => {
                // The body of a refused request is not read, so nothing after it can be parsed.
                let meta = Meta { keep_alive: meta.keep_alive && !has_body, ..meta };
                self.finish(now);
                return Some(Incoming::Refused(meta, e.into()));
            }
        };
        let action = match route {
            Route::Publish(target) => return self.start_body(&head, meta, target, config, now),
            Route::Subscribe(s) => Action::Subscribe(s),
            Route::Health => Action::Health,
            Route::Metrics => Action::Metrics,
            Route::Preflight => Action::Preflight,
            Route::HubSubscribe(hub) => Action::HubSubscribe(hub),
        };
        if has_body {
            // GET with a body: legal but pointless; refusing is simpler than skipping it safely.
            self.finish(now);
            let meta = Meta { keep_alive: false, ..meta };
            let refusal = Refusal::Route(route::RouteError::BadRequest("unexpected request body".into()));
            return Some(Incoming::Refused(meta, refusal));
        }
        self.finish(now);
        Some(Incoming::Request(meta, action))
    }

    /// Parses the head at the front of `input`, but only the bytes that can change the answer: the
    /// first [`EAGER_HEAD_BYTES`], then whole lines (a head ends at an LF). A head sent a byte per read
    /// is so parsed once per line instead of once per byte (quadratic in its length), and the answer
    /// depends only on the bytes, never on how they were split into reads.
    fn parse_head(&mut self) -> Result<Option<(Head, usize)>, request::HeadError> {
        if self.input.len() > request::MAX_HEAD_BYTES {
            // Past the cap every byte a head may take is parsed: `431` unless they hold a head, `400`
            // for a bad byte among them, whichever line it is on.
            return request::parse_head(&self.input);
        }
        let from = self.head_searched.min(self.input.len());
        let lines = match self.input[from..].iter().rposition(|&b| b == b'\n') {
            Some(at) => from + at + 1,
            None => self.head_lines.min(from),
        };
        let seen_before = self.head_lines.min(from).max(from.min(EAGER_HEAD_BYTES));
        let seen = lines.max(self.input.len().min(EAGER_HEAD_BYTES));
        (self.head_lines, self.head_searched) = (lines, self.input.len());
        if from > 0 && seen == seen_before {
            // The same bytes as last time, which were not yet a head.
            return Ok(None);
        }
        request::parse_head(&self.input[..seen])
    }

    fn start_body(
        &mut self,
        head: &Head,
        meta: Meta,
        target: PublishTarget,
        config: &Config,
        now: Instant,
    ) -> Option<Incoming> {
        let state = match head.body {
            BodyFraming::None => BodyState::Length { remaining: 0 },
            BodyFraming::Length(n) => {
                if n > config.max_body as u64 {
                    self.input.clear();
                    return Some(Incoming::Refused(
                        Meta { keep_alive: false, ..meta },
                        Refusal::BodyTooLarge,
                    ));
                }
                BodyState::Length { remaining: n as usize }
            }
            BodyFraming::Chunked => BodyState::Chunked(ChunkedDecoder::new(config.max_body)),
        };
        let expect = head.expect_continue && head.body != BodyFraming::None && !head.http10;
        self.body = Some(Box::new(ReadingBody { meta, target, body: Vec::new(), state }));
        if expect && self.input.is_empty() {
            return Some(Incoming::Interim(crate::http::response::CONTINUE));
        }
        self.poll_body(now)
    }

    fn poll_body(&mut self, now: Instant) -> Option<Incoming> {
        let reading = self.body.as_mut().expect("called while reading a body");
        let done = match &mut reading.state {
            BodyState::Length { remaining } => {
                let take = (*remaining).min(self.input.len());
                reading.body.extend_from_slice(&self.input[..take]);
                self.input.drain(..take);
                *remaining -= take;
                *remaining == 0
            }
            BodyState::Chunked(decoder) => match decoder.decode(&self.input, &mut reading.body) {
                Ok(used) => {
                    self.input.drain(..used);
                    decoder.is_done()
                }
                Err(e) => {
                    let meta = Meta { keep_alive: false, ..reading.meta.clone() };
                    self.body = None;
                    self.input.clear();
                    return Some(Incoming::Refused(meta, e.into()));
                }
            },
        };
        if !done {
            return None;
        }
        let reading = *self.body.take().expect("checked above");
        self.finish(now);
        if reading.target.hub {
            let credentials = reading.target.auth.map(|c| *c).unwrap_or_default();
            return Some(Incoming::Request(
                reading.meta,
                Action::HubPublish(Box::new((credentials, reading.body))),
            ));
        }
        let auth = reading.target.auth.clone();
        Some(match route::publish_body(reading.target, reading.body) {
            Ok(publish) => Incoming::Request(reading.meta, Action::Publish(publish, auth)),
            Err(e) => Incoming::Refused(reading.meta, e.into()),
        })
    }

    /// A request is complete: the idle clock restarts (or the next request's, if bytes are waiting).
    fn finish(&mut self, now: Instant) {
        self.since = now;
        self.fresh = false;
    }
}

fn meta_of(head: &Head) -> Meta {
    Meta {
        keep_alive: head.keep_alive,
        http10: head.http10,
        head_only: head.method == request::Method::Head,
        origin: head.origin.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::Refusal;
    use crate::http::route::RouteError;
    use std::time::Duration;

    fn feed(reader: &mut RequestReader, bytes: &[u8], config: &Config) -> Vec<Incoming> {
        let now = Instant::now();
        let mut out = Vec::new();
        for b in bytes {
            reader.input.push(*b);
            while let Some(incoming) = reader.poll_request(config, now) {
                // The shell stops reading once a refusal closes the connection.
                let closes = matches!(&incoming, Incoming::Refused(meta, _) if !meta.keep_alive);
                out.push(incoming);
                if closes {
                    return out;
                }
            }
        }
        out
    }

    fn publish_data(incoming: &Incoming) -> &str {
        match incoming {
            Incoming::Request(_, Action::Publish(p, _)) => p.data(),
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[test]
    fn pipelined_publishes_byte_by_byte() {
        let config = Config::default();
        let mut reader = RequestReader::new(Instant::now());
        let one = "POST /events?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\none";
        let two = "POST /events?topic=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n";
        let three = "GET /health HTTP/1.1\r\n\r\n";
        let got = feed(&mut reader, format!("{one}{two}{three}").as_bytes(), &config);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(publish_data(&got[0]), "one");
        assert_eq!(publish_data(&got[1]), "two");
        assert!(matches!(got[2], Incoming::Request(_, Action::Health)));
        assert_eq!(reader.waiting(), Waiting::Idle);
    }

    #[test]
    fn declared_length_over_the_cap_is_refused_before_the_body() {
        let config = Config { max_body: 10, max_lag: 20, ..Config::default() };
        let mut reader = RequestReader::new(Instant::now());
        let got = feed(&mut reader, b"POST /events?topic=a HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &config);
        assert!(
            matches!(&got[..], [Incoming::Refused(Meta { keep_alive: false, .. }, Refusal::BodyTooLarge)]),
            "{got:?}"
        );
    }

    #[test]
    fn chunked_body_over_the_cap_is_refused() {
        let config = Config { max_body: 4, max_lag: 8, ..Config::default() };
        let mut reader = RequestReader::new(Instant::now());
        let got = feed(
            &mut reader,
            b"POST /events?topic=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n",
            &config,
        );
        assert!(matches!(&got[..], [Incoming::Refused(_, Refusal::BodyTooLarge)]), "{got:?}");
    }

    #[test]
    fn expect_continue_gets_an_interim_answer() {
        let config = Config::default();
        let mut reader = RequestReader::new(Instant::now());
        let got = feed(
            &mut reader,
            b"POST /events?topic=a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
            &config,
        );
        assert!(matches!(got[0], Incoming::Interim(_)));
        assert_eq!(publish_data(&got[1]), "hi");
    }

    #[test]
    fn a_refused_request_with_a_body_closes() {
        let config = Config::default();
        let mut reader = RequestReader::new(Instant::now());
        let got =
            feed(&mut reader, b"POST /events?topic=a%20b HTTP/1.1\r\nContent-Length: 2\r\n\r\n", &config);
        match &got[..] {
            [Incoming::Refused(meta, Refusal::Route(RouteError::BadRequest(_)))] => assert!(!meta.keep_alive),
            other => panic!("{other:?}"),
        }
        let mut reader = RequestReader::new(Instant::now());
        let got = feed(&mut reader, b"GET /nope HTTP/1.1\r\n\r\n", &config);
        assert!(
            matches!(&got[..], [Incoming::Refused(Meta { keep_alive: true, .. }, _)]),
            "no body: keep-alive"
        );
    }

    #[test]
    fn refusals_of_unparsed_heads_know_head() {
        let config = Config::default();
        for (raw, head_only) in [
            (&b"HEAD /health HTTP/1.1\r\nBad header\r\n\r\n"[..], true),
            (b"HEAD /health HTTP/2.0\r\n\r\n", true),
            (b"GET /health HTTP/2.0\r\n\r\n", false),
            // Empty lines before the request line are skipped (RFC 9112 §2.2)...
            (b"\r\n\nHEAD /health HTTP/2.0\r\n\r\n", true),
            // ...but a lone CR is no empty line: the head is malformed there, before any method,
            // and must not be taken for a HEAD (found by fuzzing: whether the method had arrived
            // when the CR was refused depended on how the bytes were split into reads).
            (b"\r\rHEAD /health HTTP/1.1\r\n\r\n", false),
            (b"\r\n\rHEAD /health HTTP/1.1\r\n\r\n", false),
            (b"\r\r\r\rHEAD \xee c\xee\xee=POP\r\n\r\n", false),
        ] {
            // Byte by byte, and all in one read.
            let bytewise = feed(&mut RequestReader::new(Instant::now()), raw, &config);
            let mut reader = RequestReader::new(Instant::now());
            reader.input.extend_from_slice(raw);
            let whole = reader.poll_request(&config, Instant::now());
            assert_eq!(whole.as_ref(), bytewise.first(), "{raw:?}: the answer depends on the split");
            match &bytewise[..] {
                [Incoming::Refused(meta, Refusal::Head(_))] => {
                    assert_eq!(meta.head_only, head_only, "{raw:?}");
                    assert!(!meta.keep_alive);
                }
                other => panic!("{raw:?}: {other:?}"),
            }
        }
        // A head that never completes: the timeout's answer knows it too.
        let mut reader = RequestReader::new(Instant::now());
        reader.input.extend_from_slice(b"HEAD /hea");
        assert_eq!(reader.poll_request(&config, Instant::now()), None);
        assert!(reader.pending_meta().head_only);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let config = Config::default();
        let start = Instant::now();
        let mut reader = RequestReader::new(start);
        assert_eq!(
            reader.poll_deadline(&config),
            start + config.header_timeout,
            "a new connection owes a head"
        );
        reader.input.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
        let done = start + Duration::from_secs(1);
        assert!(reader.poll_request(&config, done).is_some());
        assert_eq!(reader.poll_deadline(&config), done + config.keep_alive_timeout, "then it idles");
        let later = start + Duration::from_secs(5);
        reader.input.extend_from_slice(b"GET /hea");
        reader.handle_input_at(true, later);
        assert_eq!(reader.poll_deadline(&config), later + config.header_timeout);
    }

    #[test]
    fn deadlines_saturate_for_timeouts_too_long_to_add() {
        // `Config::validate` refuses such timeouts, but the core must not panic on an unchecked one.
        let config =
            Config { header_timeout: Duration::MAX, keep_alive_timeout: Duration::MAX, ..Config::default() };
        let start = Instant::now();
        let mut reader = RequestReader::new(start);
        assert!(reader.poll_deadline(&config) > start + Duration::from_secs(1 << 32));
        reader.input.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
        assert!(reader.poll_request(&config, start).is_some());
        assert!(reader.poll_deadline(&config) > start + Duration::from_secs(1 << 32));
    }
}
