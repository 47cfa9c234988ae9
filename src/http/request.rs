//! Request heads: parsed with httparse into the few facts ssed acts on, with size caps.

use std::fmt;

/// Largest request head accepted (request line and headers); larger ones get `431`.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header lines accepted in one head; more get `431`.
pub const MAX_HEADERS: usize = 64;

/// The request methods ssed distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`: as GET, without a body.
    Head,
    /// `POST`
    Post,
    /// `OPTIONS`: CORS preflight.
    Options,
    /// Anything else (answered `405` on known paths).
    Other,
}

/// How the request body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The parts of a request head that ssed acts on; everything else is dropped after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The path, without the query (origin-form; an absolute-form target is reduced to it).
    pub path: String,
    /// The raw query string after `?`, if any.
    pub query: String,
    /// Whether the request is HTTP/1.0 (close-delimited streams, no keep-alive by default).
    pub http10: bool,
    /// Whether the connection should be kept open after the response.
    pub keep_alive: bool,
    /// The body framing.
    pub body: BodyFraming,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The `Last-Event-ID` header.
    pub last_event_id: Option<String>,
    /// The token of an `Authorization: Bearer` header.
    pub bearer: Option<String>,
    /// The value of the `ssed_token` cookie.
    pub cookie_token: Option<String>,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// `Content-Type` is `application/x-www-form-urlencoded`.
    pub form: bool,
    /// What a JWT may come in, kept raw for the hub's token rules (empty when nothing was sent).
    pub credentials: Credentials,
}

/// The headers a JWT and its checks may use, as received: every `Authorization` and `Cookie` value
/// (several `Authorization` headers are an error the token rules must see), `Host` (the audience a
/// token must name when none is configured), and `Referer` (the CSRF check of a cookie token on a
/// publish, with `Origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Each `Authorization` header's value.
    pub authorization: Vec<Vec<u8>>,
    /// Each `Cookie` header's value.
    pub cookies: Vec<Vec<u8>>,
    /// The `Host` header.
    pub host: Option<String>,
    /// The `Referer` header.
    pub referer: Option<Vec<u8>>,
}

/// Why a request head was refused; each maps to one status in [`crate::http::response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The request line or a header does not parse (`400`).
    Malformed,
    /// The head is over [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] lines (`431`).
    TooLarge,
    /// Both `Content-Length` and `Transfer-Encoding` (`400`, RFC 9112 §6.1: request smuggling).
    LengthAndEncoding,
    /// A `Content-Length` that is repeated or not a decimal number (`400`).
    BadLength,
    /// A transfer coding other than `chunked`, a repeated `Transfer-Encoding`, or chunked on
    /// HTTP/1.0, which has no such coding (`501`).
    BadEncoding,
    /// An HTTP version other than 1.0 and 1.1 (`505`).
    Version,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadError::Malformed => "malformed request",
            HeadError::TooLarge => "request head too large",
            HeadError::LengthAndEncoding => "both Content-Length and Transfer-Encoding",
            HeadError::BadLength => "bad Content-Length",
            HeadError::BadEncoding => "unsupported Transfer-Encoding",
            HeadError::Version => "unsupported HTTP version",
        })
    }
}

/// Parses one request head from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed (the caller caps the wait by time, and the size is capped
/// here); `Ok(Some((head, n)))` means the head took the first `n` bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    // Only the bytes a head may take are parsed: a head not complete within them is `431` whatever
    // follows (a bad byte just past the cap included), however the bytes were split into reads.
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let used = match request.parse(window) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => match version_error(window) {
            Some(e) => return Err(e),
            None if buf.len() > MAX_HEAD_BYTES => return Err(HeadError::TooLarge),
            None => return Ok(None),
        },
        Err(_) => return Err(HeadError::Malformed),
    };
    let http10 = match request.version {
        Some(0) => true,
        Some(1) => false,
        _ => return Err(HeadError::Version),
    };
    let method = match request.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let target = request.path.unwrap_or("");
    let (path, query) = split_target(target).ok_or(HeadError::Malformed)?;

    let mut head = Head {
        method,
        path: path.to_string(),
        query: query.to_string(),
        http10,
        keep_alive: !http10,
        body: BodyFraming::None,
        expect_continue: false,
        last_event_id: None,
        bearer: None,
        cookie_token: None,
        origin: None,
        form: false,
        credentials: Credentials::default(),
    };
    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HeadError::BadLength);
            }
            content_length = Some(parse_content_length(value).ok_or(HeadError::BadLength)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(HeadError::BadEncoding);
            }
            transfer_encoding = true;
            if !trim(value).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::BadEncoding);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("last-event-id") {
            head.last_event_id = Some(String::from_utf8_lossy(trim(value)).into_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.credentials.authorization.push(trim(value).to_vec());
            let value = trim(value);
            if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
                head.bearer = Some(String::from_utf8_lossy(trim(&value[7..])).into_owned());
            }
        } else if name.eq_ignore_ascii_case("cookie") {
            head.credentials.cookies.push(value.to_vec());
            if let Some(token) = cookie_value(value, b"ssed_token") {
                head.cookie_token = Some(String::from_utf8_lossy(token).into_owned());
            }
        } else if name.eq_ignore_ascii_case("host") {
            head.credentials.host = Some(String::from_utf8_lossy(trim(value)).into_owned());
        } else if name.eq_ignore_ascii_case("referer") {
            head.credentials.referer = Some(trim(value).to_vec());
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(String::from_utf8_lossy(trim(value)).into_owned());
        } else if name.eq_ignore_ascii_case("content-type") {
            let media = value.split(|&b| b == b';').next().unwrap_or(&[]);
            head.form = trim(media).eq_ignore_ascii_case(b"application/x-www-form-urlencoded");
        }
    }
    // `close` wins over `keep-alive`, in whatever order they came (RFC 9112 §9.6).
    head.keep_alive &= !close;
    head.body = match (content_length, transfer_encoding) {
        (Some(_), true) => return Err(HeadError::LengthAndEncoding),
        (Some(0), false) | (None, false) => BodyFraming::None,
        (Some(n), false) => BodyFraming::Length(n),
        (None, true) if http10 => return Err(HeadError::BadEncoding),
        (None, true) => BodyFraming::Chunked,
    };
    Ok(Some((head, used)))
}

/// The shape of `HTTP-version` (RFC 9112 §2.3: `HTTP-name "/" DIGIT "." DIGIT`, `HTTP` case-sensitive);
/// `d` stands for a digit.
const VERSION_SHAPE: &[u8] = b"HTTP/d.d";

/// Tells what httparse's version error means: it knows only `HTTP/1.0` and `HTTP/1.1` and reports
/// anything else after the target as a version, also a line that is not HTTP at all (`this is not
/// http`) or a target with a raw space in it (`/events?topic=my room HTTP/1.1`).
///
/// `Some(Version)` for a well-formed version other than 1.0 and 1.1 (`505`), `Some(Malformed)` for
/// a line outside the grammar (`400`), `None` while the line is incomplete and its version could still
/// become well-formed, so the answer never depends on how the bytes were split into reads.
fn version_error(buf: &[u8]) -> Option<HeadError> {
    // httparse skips empty lines before the request line (RFC 9112 §2.2); by the time it reports a
    // version they were well-formed.
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let rest = &buf[start..];
    let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
        Some(end) => (rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]), true),
        None => (rest, false),
    };
    // method SP request-target SP HTTP-version: whatever follows the second space is the version.
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(_method), Some(_target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Some(HeadError::Malformed);
    };
    let fits = |version: &[u8]| {
        version.len() <= VERSION_SHAPE.len()
            && version.iter().zip(VERSION_SHAPE).all(|(&b, &shape)| match shape {
                b'd' => b.is_ascii_digit(),
                _ => b == shape,
            })
    };
    if complete {
        return Some(if version.len() == VERSION_SHAPE.len() && fits(version) {
            HeadError::Version
        } else {
            HeadError::Malformed
        });
    }
    // Incomplete: a prefix of the shape, or all of it and the CR of the line's end, may still be one.
    let before_cr = version.strip_suffix(b"\r").filter(|v| v.len() == VERSION_SHAPE.len());
    if fits(before_cr.unwrap_or(version)) {
        None
    } else {
        Some(HeadError::Malformed)
    }
}

/// Whether the request in `buf` (complete or not, parsed or not) uses the method `HEAD`, so that even
/// the answer to a head that does not parse or never completes carries no body (RFC 9110 §9.3.2).
///
/// Empty lines before the request line are skipped as the parser skips them (RFC 9112 §2.2: CRLF or
/// a bare LF). A bare CR is not one: the head is malformed at that byte, before any method, so it is
/// no `HEAD`, and the answer does not depend on whether the method had arrived when it was refused.
pub fn names_head(buf: &[u8]) -> bool {
    let mut rest = buf;
    while let [b'\r', b'\n', tail @ ..] | [b'\n', tail @ ..] = rest {
        rest = tail;
    }
    rest.starts_with(b"HEAD ")
}

/// Reduces a request target to path and query: origin-form as is, absolute-form without its scheme
/// and authority (RFC 9112 §3.2). `None` for forms ssed does not serve (`*`, authority-form).
fn split_target(target: &str) -> Option<(&str, &str)> {
    let origin_form = if target.starts_with('/') {
        target
    } else {
        let rest = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://"))?;
        match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => &rest[at..],
            Some(at) => return Some(("/", &rest[at + 1..])),
            None => "/",
        }
    };
    let (path, query) = origin_form.split_once('?').unwrap_or((origin_form, ""));
    // A fragment never reaches a server, but a careless client might send one.
    let query = query.split('#').next().unwrap_or("");
    Some((path, query))
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    cookie_values(header, name).next()
}

/// The values of cookie `name` in one `Cookie` header (RFC 6265 §4.2.1: `name=value` pairs
/// separated by `;`), in order, without the optional double quotes.
pub(crate) fn cookie_values<'a, 'n>(
    header: &'a [u8],
    name: &'n [u8],
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = trim(pair);
        let at = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..at]) == name).then(|| {
            let value = trim(&pair[at + 1..]);
            value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value)
        })
    })
}

/// `bytes` without leading and trailing white space.
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<(Head, usize)>, HeadError> {
        let whole = parse_head(raw.as_bytes());
        // The same bytes fed one at a time must be Partial until the last one, then the same answer.
        let bytes = raw.as_bytes();
        for end in 1..bytes.len() {
            match parse_head(&bytes[..end]) {
                Ok(None) => {}
                Ok(Some((_, used))) => {
                    assert!(used <= end);
                    break;
                }
                Err(e) => {
                    assert_eq!(whole.as_ref().err(), Some(&e), "prefix of {raw:?} failed differently");
                    return whole;
                }
            }
        }
        whole
    }

    fn ok(raw: &str) -> Head {
        parse(raw).unwrap().expect("complete head").0
    }

    #[test]
    fn subscribe_head() {
        let head = ok("GET /events?topic=chat HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 42\r\nOrigin: https://a.example\r\n\r\n");
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, "/events");
        assert_eq!(head.query, "topic=chat");
        assert!(!head.http10 && head.keep_alive);
        assert_eq!(head.last_event_id.as_deref(), Some("42"));
        assert_eq!(head.origin.as_deref(), Some("https://a.example"));
        assert_eq!(head.body, BodyFraming::None);
    }

    #[test]
    fn partial_then_complete_reports_length() {
        let raw = "GET / HTTP/1.1\r\n\r\nPOST";
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n").unwrap(), None);
        let (_, used) = parse_head(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(&raw[used..], "POST");
    }

    #[test]
    fn http10_and_connection_tokens() {
        let head = ok("GET /events HTTP/1.0\r\n\r\n");
        assert!(head.http10 && !head.keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").keep_alive);
        for version in ["1.0", "1.1"] {
            for tokens in ["close, keep-alive", "keep-alive\r\nConnection: close", "Keep-Alive, CLOSE"] {
                let raw = format!("GET / HTTP/{version}\r\nConnection: {tokens}\r\n\r\n");
                assert!(!ok(&raw).keep_alive, "close wins: {raw:?}");
            }
        }
    }

    #[test]
    fn body_framing() {
        assert_eq!(ok("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").body, BodyFraming::Length(5));
        assert_eq!(ok("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body, BodyFraming::None);
        assert_eq!(
            ok("POST / HTTP/1.1\r\nContent-Length: 0000000000000000005\r\n\r\n").body,
            BodyFraming::Length(5)
        );
        assert_eq!(ok("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").body, BodyFraming::Chunked);
        assert!(ok("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").expect_continue);
    }

    #[test]
    fn refuses_smuggling_shapes() {
        let cases = [
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::LengthAndEncoding,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", HeadError::BadLength),
            // At most 19 digits, leading zeros or not: a longer number is never a length ssed takes.
            ("POST / HTTP/1.1\r\nContent-Length: 00000000000000000005\r\n\r\n", HeadError::BadLength),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HeadError::BadEncoding),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::BadEncoding,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::BadEncoding),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn refuses_garbage_and_bad_versions() {
        assert_eq!(parse("GARBAGE\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(parse("GET /x HTTP/1.1\r\nBad Header\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(parse("GET /x HTTP/2.0\r\n\r\n"), Err(HeadError::Version));
        assert_eq!(parse("GET * HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed));
    }

    #[test]
    fn only_a_well_formed_version_is_505() {
        // RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT, HTTP-name = %s"HTTP".
        let cases = [
            ("GET /x HTTP/2.0\r\n\r\n", HeadError::Version),
            ("GET /x HTTP/1.2\r\n\r\n", HeadError::Version),
            ("GET /x HTTP/0.9\r\n\r\n", HeadError::Version),
            ("GET /x HTTP/9.9\nHost: x\n\n", HeadError::Version),
            ("\r\nGET /x HTTP/3.0\r\n\r\n", HeadError::Version),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HeadError::Version),
            ("this is not http at all\r\n\r\n", HeadError::Malformed),
            ("POST /events?topic=my room HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", HeadError::Malformed),
            ("GET /x HTTP/2\r\n\r\n", HeadError::Malformed),
            ("GET /x http/1.1\r\n\r\n", HeadError::Malformed),
            ("GET /x HTTP/10.0\r\n\r\n", HeadError::Malformed),
            ("GET /x HTTP/1.10\r\n\r\n", HeadError::Malformed),
            ("GET /x HTTP/2.0 \r\n\r\n", HeadError::Malformed),
            ("GET /x HTTP/2.0\rX\r\n\r\n", HeadError::Malformed),
            ("GET /x HTTP/a.b\r\n\r\n", HeadError::Malformed),
            ("GET /x HTTP/1.1 x\r\n\r\n", HeadError::Malformed),
        ];
        for (raw, expected) in cases {
            // `parse` also feeds every prefix and checks it waits or gives the same answer.
            assert_eq!(parse(raw), Err(expected), "{raw:?}");
        }
        // A prefix that can still become a version waits for the rest of the line.
        for partial in ["GET /x H", "GET /x HTTP/2", "GET /x HTTP/2.0", "GET /x HTTP/2.0\r"] {
            assert_eq!(parse_head(partial.as_bytes()), Ok(None), "{partial:?}");
        }
        for garbage in ["GET /x h", "GET /x HTTP/2x", "GET /x HTTP/2.0x", "GET /x HTTP/2.0\rx", "GET /x y z"]
        {
            assert_eq!(parse_head(garbage.as_bytes()), Err(HeadError::Malformed), "{garbage:?}");
        }
    }

    #[test]
    fn tells_head_requests_even_unparsed() {
        assert!(names_head(b"HEAD /x HTTP/1.1\r\nBad header\r\n"));
        assert!(names_head(b"\r\nHEAD /x"));
        assert!(!names_head(b"HEADER /x HTTP/1.1\r\n"));
        assert!(!names_head(b"GET /x HTTP/1.1\r\n"));
        assert!(!names_head(b"HEA"));
    }

    #[test]
    fn caps_the_head() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_head(big.as_bytes()), Err(HeadError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn the_cap_is_16_kib_exactly() {
        // The contract's number: a head of 16 KiB is served, one byte more is `431`.
        assert_eq!(MAX_HEAD_BYTES, 16 * 1024);
        let head_of = |len: usize| {
            let frame = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(len - frame))
        };
        let at_cap = head_of(MAX_HEAD_BYTES);
        assert_eq!(parse(&at_cap).unwrap().map(|(_, used)| used), Some(MAX_HEAD_BYTES));
        assert_eq!(parse(&head_of(MAX_HEAD_BYTES + 1)), Err(HeadError::TooLarge));
        // A well-formed version cut by the cap is too large too, not a version to refuse or wait for.
        let line = format!("GET /{} HTTP/2.0\r\n\r\n", "a".repeat(MAX_HEAD_BYTES - "GET / HTTP/2".len()));
        assert_eq!(parse(&line), Err(HeadError::TooLarge));
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let all = [
            HeadError::Malformed,
            HeadError::TooLarge,
            HeadError::LengthAndEncoding,
            HeadError::BadLength,
            HeadError::BadEncoding,
            HeadError::Version,
        ];
        let texts: std::collections::HashSet<String> = all.iter().map(HeadError::to_string).collect();
        assert_eq!(texts.len(), all.len(), "one distinct reason each: {texts:?}");
        assert!(texts.iter().all(|t| !t.is_empty() && !t.contains('\n')));
    }

    #[test]
    fn an_oversized_head_is_431_whatever_follows() {
        // A bad byte past the cap: before, 400 when it arrived in the same read as the cap, else 431.
        let mut raw = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES)).into_bytes();
        raw.extend_from_slice(b"\x01\r\n\r\n");
        assert_eq!(parse_head(&raw), Err(HeadError::TooLarge));
        assert_eq!(parse_head(&raw[..MAX_HEAD_BYTES + 1]), Err(HeadError::TooLarge));
        // Even the first byte past the cap: a head needing it is over the cap, bad or not.
        let mut raw = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES - 19)).into_bytes();
        assert_eq!(raw.len(), MAX_HEAD_BYTES);
        raw.extend_from_slice(b"\x01\r\n\r\n");
        assert_eq!(parse(std::str::from_utf8(&raw).unwrap()), Err(HeadError::TooLarge));
    }

    #[test]
    fn credentials() {
        let head =
            ok("GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nCookie: a=1; ssed_token=tok; b=2\r\n\r\n");
        assert_eq!(head.bearer.as_deref(), Some("s3cret"));
        assert_eq!(head.cookie_token.as_deref(), Some("tok"));
        assert_eq!(ok("GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n").bearer, None);
        assert_eq!(ok("GET / HTTP/1.1\r\nCookie: ssed_token_x=1\r\n\r\n").cookie_token, None);
    }

    #[test]
    fn form_content_type() {
        assert!(
            ok("POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\r\n")
                .form
        );
        assert!(!ok("POST / HTTP/1.1\r\nContent-Type: text/plain\r\n\r\n").form);
    }

    #[test]
    fn absolute_form_targets() {
        assert_eq!(split_target("http://h:1/events?topic=a"), Some(("/events", "topic=a")));
        assert_eq!(split_target("http://h"), Some(("/", "")));
        assert_eq!(split_target("https://h:8080?topic=a"), Some(("/", "topic=a")));
        assert_eq!(split_target("/a?b#c"), Some(("/a", "b")));
        assert_eq!(split_target("*"), None);
    }
}
