//! The subscriber's side of the wire as push parsers: the response head, the chunked transfer coding
//! (RFC 9112 §7.1) and the event-stream fields (WHATWG HTML, "Server-sent events", §9.2.6).
//!
//! Ten thousand connections each hold one [`BodyParser`], so it keeps only what a partial line needs:
//! the chunk state, the first [`LINE_KEEP`] bytes of an unfinished line, the `id:` of the event being
//! read and the first [`DATA_KEEP`] bytes of its first `data:` line. Nothing is allocated per event.

use std::fmt;

/// Bytes kept of a line that is cut by a read or a chunk boundary. The bench only needs a line's
/// start (`data: <timestamp> <sequence>` or `id: <u64>`), so longer lines are truncated, not grown.
pub const LINE_KEEP: usize = 48;

/// Bytes kept of the value of an event's first `data:` line and handed to the caller at dispatch.
pub const DATA_KEEP: usize = 40;

/// Longest response head accepted, like the server's own cap on request heads.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Headers looked at in a response head at most.
const MAX_HEADERS: usize = 32;

/// Hex digits accepted in a chunk size: 15 keep the value below `u64::MAX`.
const MAX_SIZE_DIGITS: u8 = 15;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked` (the HTTP/1.1 default for an open-ended stream).
    Chunked,
    /// Everything until the server closes (HTTP/1.0, or no transfer coding).
    Close,
}

/// Why a response could not be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The head does not parse as an HTTP/1.x response.
    BadHead,
    /// The head passed [`MAX_HEAD_BYTES`].
    HeadTooLarge,
    /// A chunk size line or a chunk's closing CRLF is malformed.
    BadChunk,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::BadHead => f.write_str("malformed response head"),
            ParseError::HeadTooLarge => write!(f, "response head over {MAX_HEAD_BYTES} bytes"),
            ParseError::BadChunk => f.write_str("malformed chunked framing"),
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bytes the head took, blank line included; the body starts there.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// How the body is delimited.
    pub framing: Framing,
    /// `Content-Length`, when given (a publish answer; never an event stream).
    pub content_length: Option<u64>,
    /// The server will close after this response (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// Parses a response head from the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(ParseError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ParseError::BadHead),
    };
    let status = response.code.ok_or(ParseError::BadHead)?;
    let http10 = response.version == Some(0);
    let mut chunked = false;
    let mut content_length = None;
    let mut close = http10;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| ParseError::BadHead)?.trim();
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 §6.1: chunked, when present, is the final coding.
            chunked = value.rsplit(',').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| ParseError::BadHead)?);
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    let framing = if chunked && !http10 { Framing::Chunked } else { Framing::Close };
    Ok(Some(Head { len, status, framing, content_length, close }))
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a size line; `ext` once past the digits (extensions and whitespace are skipped).
    Size { value: u64, digits: u8, ext: bool },
    /// Reading `remaining` payload bytes.
    Data { remaining: u64 },
    /// Expecting the CR that closes a chunk's payload (a bare LF is tolerated).
    DataCr,
    /// Expecting the LF that closes a chunk's payload.
    DataLf,
    /// After the last chunk: trailer lines until an empty one; `empty` while the line has no byte.
    Trailer { empty: bool },
    /// The body is complete.
    Done,
}

/// A push decoder for a chunked body: bytes in, payload slices out through a callback, nothing copied.
#[derive(Debug, Clone)]
pub struct ChunkDecoder {
    state: ChunkState,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder { state: ChunkState::Size { value: 0, digits: 0, ext: false } }
    }
}

impl ChunkDecoder {
    /// Feeds framed bytes, handing each run of payload to `payload`. Returns `Ok(Some(n))` once the
    /// last chunk and its trailer are complete, `n` being the bytes of `input` they took (what follows
    /// belongs to the next message); `Ok(None)` while the body goes on.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut payload: impl FnMut(&[u8]),
    ) -> Result<Option<usize>, ParseError> {
        let total = input.len();
        let mut input = input;
        if self.state == ChunkState::Done {
            return Ok(Some(0));
        }
        while !input.is_empty() {
            match self.state {
                ChunkState::Data { remaining } => {
                    let take = remaining.min(input.len() as u64) as usize;
                    payload(&input[..take]);
                    input = &input[take..];
                    let remaining = remaining - take as u64;
                    self.state =
                        if remaining == 0 { ChunkState::DataCr } else { ChunkState::Data { remaining } };
                    continue;
                }
                ChunkState::Done => return Ok(Some(total - input.len())),
                _ => {}
            }
            let byte = input[0];
            input = &input[1..];
            self.state = match (self.state, byte) {
                (ChunkState::Size { digits: 0, .. }, b'\n') => return Err(ParseError::BadChunk),
                (ChunkState::Size { value: 0, .. }, b'\n') => ChunkState::Trailer { empty: true },
                (ChunkState::Size { value, .. }, b'\n') => ChunkState::Data { remaining: value },
                (ChunkState::Size { value, digits, ext: false }, b) if b.is_ascii_hexdigit() => {
                    if digits == MAX_SIZE_DIGITS {
                        return Err(ParseError::BadChunk);
                    }
                    let nibble = (b as char).to_digit(16).expect("checked hex digit") as u64;
                    ChunkState::Size { value: value << 4 | nibble, digits: digits + 1, ext: false }
                }
                (ChunkState::Size { digits: 0, .. }, _) => return Err(ParseError::BadChunk),
                (ChunkState::Size { value, digits, .. }, _) => ChunkState::Size { value, digits, ext: true },
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataCr | ChunkState::DataLf, b'\n') => {
                    ChunkState::Size { value: 0, digits: 0, ext: false }
                }
                (ChunkState::DataCr | ChunkState::DataLf, _) => return Err(ParseError::BadChunk),
                (ChunkState::Trailer { empty: true }, b'\n') => ChunkState::Done,
                (ChunkState::Trailer { .. }, b'\n') => ChunkState::Trailer { empty: true },
                (ChunkState::Trailer { empty }, b'\r') => ChunkState::Trailer { empty },
                (ChunkState::Trailer { .. }, _) => ChunkState::Trailer { empty: false },
                (ChunkState::Data { .. } | ChunkState::Done, _) => unreachable!("handled above"),
            };
        }
        Ok((self.state == ChunkState::Done).then_some(total))
    }
}

/// One dispatched event, as the caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch<'a> {
    /// The event's `id:` when it had a decimal one.
    pub id: Option<u64>,
    /// The first [`DATA_KEEP`] bytes of the value of its first `data:` line.
    pub data: &'a [u8],
}

/// The event-stream line parser: splits lines at CRLF, CR or LF, keeps `id:` and the start of the
/// first `data:` line, and dispatches on the blank line.
#[derive(Debug, Clone)]
pub struct EventParser {
    /// The kept start of a line cut by the end of the input so far; `partial_len == 0` when none.
    partial: [u8; LINE_KEEP],
    partial_len: u8,
    /// The last line ended in CR: an LF right after it belongs to the same line ending.
    after_cr: bool,
    /// The `id:` of the event being read.
    id: Option<u64>,
    /// A `data:` line was seen, so the blank line dispatches (even an empty `data:` does).
    has_data: bool,
    data: [u8; DATA_KEEP],
    data_len: u8,
}

impl Default for EventParser {
    fn default() -> Self {
        EventParser {
            partial: [0; LINE_KEEP],
            partial_len: 0,
            after_cr: false,
            id: None,
            has_data: false,
            data: [0; DATA_KEEP],
            data_len: 0,
        }
    }
}

impl EventParser {
    /// Feeds payload bytes (already free of transfer framing), calling `on_event` per dispatched event.
    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(Dispatch<'_>)) {
        while !input.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if input[0] == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            let Some(end) = input.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.keep(input);
                return;
            };
            if self.partial_len == 0 {
                self.handle_line(&input[..end], on_event);
            } else {
                self.keep(&input[..end]);
                let (line, len) = (self.partial, self.partial_len as usize);
                self.partial_len = 0;
                self.handle_line(&line[..len], on_event);
            }
            self.after_cr = input[end] == b'\r';
            input = &input[end + 1..];
        }
    }

    /// Appends to the partial line, up to [`LINE_KEEP`] bytes.
    fn keep(&mut self, bytes: &[u8]) {
        let at = self.partial_len as usize;
        let take = bytes.len().min(LINE_KEEP - at);
        self.partial[at..at + take].copy_from_slice(&bytes[..take]);
        self.partial_len = (at + take) as u8;
    }

    fn handle_line(&mut self, line: &[u8], on_event: &mut impl FnMut(Dispatch<'_>)) {
        if line.is_empty() {
            if self.has_data {
                on_event(Dispatch { id: self.id, data: &self.data[..self.data_len as usize] });
            }
            self.id = None;
            self.has_data = false;
            self.data_len = 0;
            return;
        }
        if line[0] == b':' {
            return; // a comment
        }
        let (name, mut value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &[][..]),
        };
        if value.first() == Some(&b' ') {
            value = &value[1..];
        }
        match name {
            b"data" if !self.has_data => {
                self.has_data = true;
                let take = value.len().min(DATA_KEEP);
                self.data[..take].copy_from_slice(&value[..take]);
                self.data_len = take as u8;
            }
            b"data" => {}
            b"id" => self.id = parse_event_id(value),
            _ => {} // event:, retry: and unknown fields do not matter to the bench
        }
    }
}

/// An event id: a decimal `u64`, or the `urn:ssed:N` form ssed's Mercure hub gives its events.
pub fn parse_event_id(text: &[u8]) -> Option<u64> {
    parse_decimal(text.strip_prefix(b"urn:ssed:").unwrap_or(text))
}

/// A decimal `u64` with nothing around it.
pub fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// A response body as events: the transfer framing and the event-stream lines together.
#[derive(Debug, Clone)]
pub struct BodyParser {
    /// `None` for a close-delimited body.
    chunks: Option<ChunkDecoder>,
    events: EventParser,
}

impl BodyParser {
    /// A parser for a body with this framing.
    pub fn new(framing: Framing) -> BodyParser {
        let chunks = (framing == Framing::Chunked).then(ChunkDecoder::default);
        BodyParser { chunks, events: EventParser::default() }
    }

    /// Feeds body bytes, calling `on_event` per dispatched event. Returns `Ok(true)` once a chunked
    /// body has ended (the server closed the stream cleanly).
    pub fn feed(
        &mut self,
        input: &[u8],
        on_event: &mut impl FnMut(Dispatch<'_>),
    ) -> Result<bool, ParseError> {
        let events = &mut self.events;
        match &mut self.chunks {
            Some(chunks) => Ok(chunks.feed(input, |payload| events.feed(payload, on_event))?.is_some()),
            None => {
                events.feed(input, on_event);
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids_are_decimal_or_the_hubs_urn_form() {
        assert_eq!(super::parse_event_id(b"42"), Some(42));
        assert_eq!(super::parse_event_id(b"urn:ssed:42"), Some(42));
        assert_eq!(super::parse_event_id(b"urn:uuid:42"), None);
        assert_eq!(super::parse_event_id(b"urn:ssed:"), None);
    }

    use super::*;

    /// What a parser dispatched, owned so that runs can be compared.
    type Seen = Vec<(Option<u64>, Vec<u8>)>;

    /// An event stream in the shapes servers send: comments, `retry:`, multi-line data, an event with
    /// no id, an empty `data:`, CRLF and CR line endings, an `id:` with no data (no dispatch), a long
    /// data line (truncated to `DATA_KEEP`).
    fn stream() -> (Vec<u8>, Seen) {
        let long = "x".repeat(300);
        let text = format!(
            ": ssed\nretry: 3000\n\
             id: 1\ndata: 1700000000000000000 0000000000 pad\n\n\
             :\n\
             id: 2\r\nevent: kind\r\ndata: second\r\ndata: more\r\n\r\n\
             data: no id\r\r\
             id: 4\ndata\n\n\
             id: 5\n\n\
             id:6\ndata:{long}\n\n\
             id: 18446744073709551615\ndata: last\n\n"
        );
        let expected = vec![
            (Some(1), b"1700000000000000000 0000000000 pad".to_vec()),
            (Some(2), b"second".to_vec()),
            (None, b"no id".to_vec()),
            (Some(4), Vec::new()),
            (Some(6), vec![b'x'; DATA_KEEP]),
            (Some(u64::MAX), b"last".to_vec()),
        ];
        (text.into_bytes(), expected)
    }

    /// Frames `body` as chunks of `size` bytes, with an extension on every other one, and the end.
    fn chunked(body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, piece) in body.chunks(size).enumerate() {
            let ext = if n % 2 == 1 { ";name=value" } else { "" };
            out.extend_from_slice(format!("{:X}{ext}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nTrailer: x\r\n\r\n");
        out
    }

    /// Feeds `pieces` in order to a fresh parser; returns what it dispatched and whether it ended.
    fn run<'a>(framing: Framing, pieces: impl IntoIterator<Item = &'a [u8]>) -> (Seen, bool) {
        let mut parser = BodyParser::new(framing);
        let mut seen = Vec::new();
        let mut ended = false;
        for piece in pieces {
            ended = parser.feed(piece, &mut |d| seen.push((d.id, d.data.to_vec()))).expect("valid framing");
        }
        (seen, ended)
    }

    #[test]
    fn close_delimited_split_at_every_position() {
        let (body, expected) = stream();
        for at in 0..=body.len() {
            let (seen, ended) = run(Framing::Close, [&body[..at], &body[at..]]);
            assert_eq!(seen, expected, "split at {at}");
            assert!(!ended);
        }
        let (seen, _) = run(Framing::Close, body.chunks(1));
        assert_eq!(seen, expected, "one byte at a time");
    }

    #[test]
    fn chunk_boundaries_at_every_position() {
        let (body, expected) = stream();
        // Every chunk size puts chunk boundaries at every multiple of it; size 1 at every byte.
        for size in 1..=body.len() {
            let framed = chunked(&body, size);
            let (seen, ended) = run(Framing::Chunked, [&framed[..]]);
            assert_eq!(seen, expected, "chunks of {size}");
            assert!(ended, "chunks of {size}");
        }
    }

    #[test]
    fn chunked_reads_split_at_every_position() {
        let (body, expected) = stream();
        for size in [1, 7, 64, body.len()] {
            let framed = chunked(&body, size);
            for at in 0..=framed.len() {
                let (seen, ended) = run(Framing::Chunked, [&framed[..at], &framed[at..]]);
                assert_eq!(seen, expected, "chunks of {size}, read split at {at}");
                assert!(ended);
            }
            let (seen, ended) = run(Framing::Chunked, framed.chunks(1));
            assert_eq!(seen, expected, "chunks of {size}, one byte at a time");
            assert!(ended);
        }
    }

    #[test]
    fn open_stream_has_not_ended() {
        let (seen, ended) = run(Framing::Chunked, [&b"9\r\ndata: a\n\n\r\n"[..]]);
        assert_eq!(seen, vec![(None, b"a".to_vec())]);
        assert!(!ended);
    }

    #[test]
    fn chunked_end_reports_what_it_took() {
        let mut decoder = ChunkDecoder::default();
        let mut body = Vec::new();
        let input = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK";
        assert_eq!(decoder.feed(&input[..5], |p| body.extend_from_slice(p)), Ok(None));
        assert_eq!(decoder.feed(&input[5..], |p| body.extend_from_slice(p)), Ok(Some(8)));
        assert_eq!(body, b"abc");
    }

    #[test]
    fn bad_chunk_framing_is_refused() {
        for framed in [&b"zz\r\n"[..], b"\r\n", b"3\r\nabcX", b"1234567890123456\r\n", b";x\r\n"] {
            let mut parser = BodyParser::new(Framing::Chunked);
            assert_eq!(parser.feed(framed, &mut |_| {}), Err(ParseError::BadChunk), "{framed:?}");
        }
    }

    #[test]
    fn parses_heads() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        for at in 0..head.len() {
            assert_eq!(parse_head(&head[..at]), Ok(None), "prefix {at}");
        }
        let parsed = parse_head(head).unwrap().unwrap();
        assert_eq!(parsed.len, head.len());
        assert_eq!((parsed.status, parsed.framing, parsed.close), (200, Framing::Chunked, false));

        let parsed =
            parse_head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nbody").unwrap().unwrap();
        assert_eq!((parsed.framing, parsed.close), (Framing::Close, true));

        let parsed = parse_head(b"HTTP/1.1 503 Busy\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((parsed.status, parsed.content_length, parsed.close), (503, Some(5), true));

        assert_eq!(parse_head(b"HTTP/1.1 abc\r\n\r\n"), Err(ParseError::BadHead));
        let huge = [b'a'; MAX_HEAD_BYTES + 1];
        assert!(parse_head(&huge).is_err());
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1 "), None);
        assert_eq!(parse_decimal(b"-1"), None);
    }
}
