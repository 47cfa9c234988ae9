//! Responses: status lines, headers and one-line error bodies; every refusal mapped in one place.

use std::io::Write as _;

use crate::config::Config;
use crate::event::PublishError;
use crate::http::chunk::ChunkError;
use crate::http::request::HeadError;
use crate::http::route::{RouteError, ALLOW_EVENTS};

/// Everything that makes ssed refuse a request, mapped to a status by [`Refusal::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The head did not parse or broke a framing rule.
    Head(HeadError),
    /// The route or its parameters were refused.
    Route(RouteError),
    /// The chunked body was malformed.
    Chunked,
    /// The body is over `--max-body`.
    BodyTooLarge,
    /// The head or body did not arrive within `--header-timeout`.
    Timeout,
    /// The server is at `--max-connections` (non-subscribe requests).
    Overloaded,
    /// A valid event was not stored: larger than the history may hold, or the durable history
    /// failed (disk full, I/O error).
    Publish(PublishError),
    /// A JWT problem (401, 403, 400): the status, the `WWW-Authenticate` challenge, and the reason
    /// (for the log; the body says only what the status says, so a client learns nothing about why
    /// its token failed).
    #[cfg_attr(not(feature = "mercure"), allow(dead_code))] // only the hub makes them
    Auth {
        /// The status.
        status: u16,
        /// The `WWW-Authenticate` value.
        challenge: String,
        /// Why, for the log.
        reason: String,
    },
    /// A request the Mercure hub's rules refuse (`400`, or `413` past a size limit), and why.
    #[cfg_attr(not(feature = "mercure"), allow(dead_code))] // only the hub makes them
    Hub(u16, String),
}

impl From<HeadError> for Refusal {
    fn from(e: HeadError) -> Self {
        Refusal::Head(e)
    }
}

impl From<RouteError> for Refusal {
    fn from(e: RouteError) -> Self {
        Refusal::Route(e)
    }
}

impl From<PublishError> for Refusal {
    fn from(e: PublishError) -> Self {
        Refusal::Publish(e)
    }
}

impl From<ChunkError> for Refusal {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Malformed => Refusal::Chunked,
            ChunkError::TooLarge => Refusal::BodyTooLarge,
        }
    }
}

impl Refusal {
    /// The status code, per the contract's error table.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Head(HeadError::TooLarge) => 431,
            Refusal::Head(HeadError::Version) => 505,
            Refusal::Head(HeadError::BadEncoding) => 501,
            Refusal::Head(_) => 400,
            Refusal::Route(RouteError::NotFound) => 404,
            Refusal::Route(RouteError::MethodNotAllowed(_)) => 405,
            Refusal::Route(RouteError::Unauthorized) => 401,
            Refusal::Route(RouteError::BadRequest(_)) => 400,
            Refusal::Chunked => 400,
            Refusal::BodyTooLarge | Refusal::Publish(PublishError::TooLarge) => 413,
            Refusal::Timeout => 408,
            Refusal::Overloaded | Refusal::Publish(PublishError::Storage(_)) => 503,
            Refusal::Auth { status, .. } | Refusal::Hub(status, _) => *status,
        }
    }

    /// The one-line body.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Head(e) => e.to_string(),
            Refusal::Route(e) => e.to_string(),
            Refusal::Chunked => "malformed chunked body".into(),
            Refusal::BodyTooLarge => "body over --max-body".into(),
            Refusal::Timeout => "request not complete within --header-timeout".into(),
            Refusal::Overloaded => "server at --max-connections; retry later".into(),
            Refusal::Publish(e) => e.to_string(),
            Refusal::Auth { reason, .. } => reason.clone(),
            Refusal::Hub(_, reason) => reason.clone(),
        }
    }

    /// Whether the connection must close after the answer: when the framing of what follows is
    /// unknown (a bad head, an unread body) there is no safe place to read the next request from.
    pub fn closes(&self) -> bool {
        !matches!(self, Refusal::Route(_) | Refusal::Publish(_) | Refusal::Auth { .. } | Refusal::Hub(..))
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The interim answer to `Expect: 100-continue` (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends the CORS headers for a request from `origin`: none unless the origin is allowed.
///
/// A listed origin is echoed with credentials allowed (so cookies carry `ssed_token`); `*` allows any
/// origin but never with credentials, which browsers would refuse anyway. A request saying
/// `Origin: *` (no browser does; it is not an origin) is not thereby "listed" under `*`.
pub fn push_cors(config: &Config, origin: Option<&str>, out: &mut Vec<u8>) {
    let Some(origin) = origin else { return };
    if origin != "*" && config.cors_origins.iter().any(|o| o == origin) {
        let _ = write!(
            out,
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
        );
    } else if config.cors_origins.iter().any(|o| o == "*") {
        out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n");
    }
}

/// Whether `origin` is allowed by the CORS settings.
pub fn cors_allowed(config: &Config, origin: Option<&str>) -> bool {
    origin.is_some_and(|origin| config.cors_origins.iter().any(|o| o == origin || o == "*"))
}

/// A complete response with a plain-text body.
///
/// `body` is sent as is (callers end it with a newline); `head_only` leaves the body out but keeps
/// its length, as `HEAD` requires.
pub fn text(status: u16, body: &str, keep_alive: bool, head_only: bool, extra: &[u8], out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    out.extend_from_slice(if keep_alive { b"" } else { b"Connection: close\r\n" });
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}

/// A refusal: status, the headers it needs (`Allow`, `WWW-Authenticate`, `Retry-After`), one line.
///
/// `head_only` (the request was `HEAD`) leaves the line out but keeps its length: a response to
/// `HEAD` never has content, whatever its status (RFC 9110 §9.3.2), and on a kept-alive connection
/// the client would read the line as the start of the next response.
pub fn refusal(refusal: &Refusal, keep_alive: bool, head_only: bool, cors: &[u8], out: &mut Vec<u8>) {
    let mut extra = cors.to_vec();
    match refusal {
        Refusal::Route(RouteError::MethodNotAllowed(allow)) => {
            let _ = write!(extra, "Allow: {allow}\r\n");
        }
        Refusal::Route(RouteError::Unauthorized) => extra.extend_from_slice(b"WWW-Authenticate: Bearer\r\n"),
        Refusal::Auth { challenge, .. } => {
            let _ = write!(extra, "WWW-Authenticate: {challenge}\r\n");
        }
        Refusal::Overloaded | Refusal::Publish(PublishError::Storage(_)) => {
            extra.extend_from_slice(b"Retry-After: 5\r\n")
        }
        _ => {}
    }
    let body = match refusal {
        // Why a token failed stays in the log (the spec: do not disclose it).
        Refusal::Auth { status, .. } => format!("{}\n", reason_phrase(*status).to_ascii_lowercase()),
        _ => format!("{}\n", refusal.reason()),
    };
    text(refusal.status(), &body, keep_alive && !refusal.closes(), head_only, &extra, out);
}

/// The answer to a CORS preflight (`204`); CORS headers only for allowed origins.
pub fn preflight(config: &Config, origin: Option<&str>, keep_alive: bool, out: &mut Vec<u8>) {
    // Preflights reach only `/events` (the other paths refuse OPTIONS with 405).
    let _ = write!(out, "HTTP/1.1 204 No Content\r\nAllow: {ALLOW_EVENTS}\r\n");
    if cors_allowed(config, origin) {
        push_cors(config, origin, out);
        out.extend_from_slice(
            b"Access-Control-Allow-Methods: GET, POST\r\n\
              Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\n\
              Access-Control-Max-Age: 86400\r\n",
        );
    }
    out.extend_from_slice(if keep_alive { b"" } else { b"Connection: close\r\n" });
    out.extend_from_slice(b"\r\n");
}

/// The head of an event stream: chunked on HTTP/1.1, close-delimited on HTTP/1.0.
///
/// A stream's connection is never reused: when the server ends a stream (`--max-lifetime`, shutdown)
/// it closes the connection, so the head says `Connection: close` up front and pooling clients (Node's
/// `fetch`, for one) do not send their reconnect on a socket about to close. Only `HEAD`, which has
/// no stream, may keep the connection (`keep_alive`).
pub fn stream_head(http10: bool, keep_alive: bool, cors: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
    if !http10 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(cors);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn error_table_statuses() {
        let cases = [
            (Refusal::Head(HeadError::Malformed), 400, true),
            (Refusal::Head(HeadError::TooLarge), 431, true),
            (Refusal::Timeout, 408, true),
            (Refusal::Route(RouteError::NotFound), 404, false),
            (Refusal::Route(RouteError::MethodNotAllowed("GET")), 405, false),
            (Refusal::Route(RouteError::BadRequest("bad topic".into())), 400, false),
            (Refusal::BodyTooLarge, 413, true),
            (Refusal::Head(HeadError::LengthAndEncoding), 400, true),
            (Refusal::Route(RouteError::Unauthorized), 401, false),
            (Refusal::Overloaded, 503, true),
            (Refusal::Publish(PublishError::TooLarge), 413, false),
            (Refusal::Publish(PublishError::Storage("disk full".into())), 503, false),
        ];
        for (refusal, status, closes) in cases {
            assert_eq!(refusal.status(), status, "{refusal:?}");
            assert_eq!(refusal.closes(), closes, "{refusal:?}");
        }
    }

    #[test]
    fn refusal_headers() {
        let mut out = Vec::new();
        refusal(&Refusal::Route(RouteError::MethodNotAllowed("GET, HEAD")), true, false, b"", &mut out);
        let text = as_text(&out);
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{text}");
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        assert!(text.ends_with("\r\n\r\nmethod not allowed\n"));
        assert!(!text.contains("Connection: close"));

        let mut out = Vec::new();
        refusal(&Refusal::Route(RouteError::Unauthorized), true, false, b"", &mut out);
        assert!(as_text(&out).contains("WWW-Authenticate: Bearer\r\n"));

        let mut out = Vec::new();
        refusal(&Refusal::Overloaded, true, false, b"", &mut out);
        let text = as_text(&out);
        assert!(text.contains("Retry-After: ") && text.contains("Connection: close"), "{text}");
    }

    #[test]
    fn refusals_to_head_have_no_body() {
        for (refusal_to, keep_alive) in [
            (Refusal::Route(RouteError::NotFound), true),
            (Refusal::Route(RouteError::Unauthorized), true),
            (Refusal::Head(HeadError::Version), false),
            (Refusal::Timeout, false),
        ] {
            let mut get = Vec::new();
            refusal(&refusal_to, keep_alive, false, b"", &mut get);
            let mut head = Vec::new();
            refusal(&refusal_to, keep_alive, true, b"", &mut head);
            let get = as_text(&get);
            let (get_head, body) = get.split_once("\r\n\r\n").unwrap();
            assert!(!body.is_empty(), "{refusal_to:?}");
            assert_eq!(as_text(&head), format!("{get_head}\r\n\r\n"), "same head, no body: {refusal_to:?}");
        }
    }

    #[test]
    fn cors_rules() {
        let config = Config { cors_origins: vec!["https://a.example".into()], ..Config::default() };
        let mut out = Vec::new();
        push_cors(&config, Some("https://a.example"), &mut out);
        let text = as_text(&out);
        assert!(text.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
        assert!(text.contains("Access-Control-Allow-Credentials: true\r\n"));
        let mut out = Vec::new();
        push_cors(&config, Some("https://evil.example"), &mut out);
        assert!(out.is_empty());

        let any = Config { cors_origins: vec!["*".into()], ..Config::default() };
        let mut out = Vec::new();
        push_cors(&any, Some("https://b.example"), &mut out);
        assert_eq!(as_text(&out), "Access-Control-Allow-Origin: *\r\n", "never credentials with *");
        let mut out = Vec::new();
        push_cors(&any, Some("*"), &mut out);
        assert_eq!(as_text(&out), "Access-Control-Allow-Origin: *\r\n", "not even for `Origin: *`");
        let mut out = Vec::new();
        push_cors(&config, Some("*"), &mut out);
        assert!(out.is_empty(), "`*` is not a listed origin");

        let mut out = Vec::new();
        preflight(&config, Some("https://a.example"), true, &mut out);
        let text = as_text(&out);
        assert!(text.starts_with("HTTP/1.1 204"));
        assert!(text.contains("\r\nAllow: GET, HEAD, POST, OPTIONS\r\n"), "{text}");
        assert!(text.contains("Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\n"));
        let mut out = Vec::new();
        preflight(&config, Some("https://evil.example"), true, &mut out);
        assert!(!as_text(&out).contains("Access-Control"));
    }

    #[test]
    fn stream_heads() {
        let mut out = Vec::new();
        stream_head(false, false, b"", &mut out);
        let text = as_text(&out);
        assert!(text.contains("Connection: close"), "a stream's connection is not reused");
        for header in [
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "X-Accel-Buffering: no",
            "Transfer-Encoding: chunked",
        ] {
            assert!(text.contains(header), "{header}");
        }
        let mut out = Vec::new();
        stream_head(true, false, b"", &mut out);
        let text = as_text(&out);
        assert!(text.contains("Connection: close") && !text.contains("chunked"));
        let mut out = Vec::new();
        stream_head(false, true, b"", &mut out);
        assert!(!as_text(&out).contains("Connection"), "HEAD may keep the connection");
    }
}
