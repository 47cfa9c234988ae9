//! The SSE encoder: turns one event into its final wire bytes, once, at publish time.
//!
//! Field syntax follows WHATWG HTML, "Server-sent events" (§9.2.6, interpreting an event stream): a
//! line is `field: value`, a blank line dispatches the event, a line starting with `:` is a comment.
//! Line endings in data are CRLF, CR or LF, so every one of them must start a new `data:` line or the
//! client would end the event early or run two fields together.

use std::fmt;
use std::io::Write as _;

/// Longest `event:` type accepted, in bytes (contract: "Topics, ids, events").
pub const MAX_EVENT_TYPE_BYTES: usize = 128;

/// The comment line that opens every stream, so headers get through buffering proxies at once.
pub const STREAM_OPENING_COMMENT: &[u8] = b": ssed\n";

/// The heartbeat: the shortest comment line (`:` then LF), ignored by every client.
pub const HEARTBEAT: &[u8] = b":\n";

/// The event type of the notice sent when a resume reaches older than the history holds.
pub const GAP_EVENT_TYPE: &str = "ssed-gap";

/// Why an event type was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTypeError {
    /// The type is empty.
    Empty,
    /// The type is longer than [`MAX_EVENT_TYPE_BYTES`].
    TooLong,
    /// The type holds CR, LF or NUL, which would end the field early.
    ForbiddenByte(u8),
    /// The type is not UTF-8.
    NotUtf8,
}

impl fmt::Display for EventTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventTypeError::Empty => f.write_str("bad event type: empty"),
            EventTypeError::TooLong => write!(f, "bad event type: longer than {MAX_EVENT_TYPE_BYTES} bytes"),
            EventTypeError::ForbiddenByte(b) => write!(f, "bad event type: contains byte 0x{b:02x}"),
            EventTypeError::NotUtf8 => f.write_str("bad event type: not UTF-8"),
        }
    }
}

/// Accepts an event type of 1–128 bytes of UTF-8 without CR, LF or NUL.
pub fn validate_event_type(event_type: &[u8]) -> Result<(), EventTypeError> {
    if event_type.is_empty() {
        return Err(EventTypeError::Empty);
    }
    if event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(EventTypeError::TooLong);
    }
    if let Some(&b) = event_type.iter().find(|&&b| matches!(b, b'\r' | b'\n' | b'\0')) {
        return Err(EventTypeError::ForbiddenByte(b));
    }
    std::str::from_utf8(event_type).map_err(|_| EventTypeError::NotUtf8)?;
    Ok(())
}

/// The fields of one event as the encoder needs them; all already validated.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// The server-assigned id; `None` only for notices that must not move the client's last id.
    pub id: Option<u64>,
    /// The id as subscribers see it when it is not `id` in decimal (a Mercure publisher's own id);
    /// already checked to hold no line break.
    pub wire_id: Option<&'a str>,
    /// The `event:` type, if any.
    pub event_type: Option<&'a str>,
    /// The `retry:` delay in milliseconds, if any.
    pub retry_ms: Option<u64>,
    /// The data, split into `data:` lines at every CRLF, CR and LF.
    pub data: &'a str,
}

/// Appends the SSE frame of `fields` (ending in the blank line that dispatches it) to `out`.
pub fn encode_frame(fields: &Fields<'_>, out: &mut Vec<u8>) {
    if let Some(text) = fields.wire_id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    } else if let Some(id) = fields.id {
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, "id: {id}");
    }
    if let Some(event_type) = fields.event_type {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event_type.as_bytes());
        out.push(b'\n');
    }
    if let Some(retry) = fields.retry_ms {
        let _ = writeln!(out, "retry: {retry}");
    }
    for line in data_lines(fields.data) {
        if line.is_empty() {
            out.extend_from_slice(b"data:\n");
        } else {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

/// Splits data into the lines the client will join back with `\n`.
///
/// CRLF, CR and LF each end a line; one line ending at the very end is dropped, as in a text file,
/// and empty data is one empty line (contract: "Topics, ids, events").
pub fn data_lines(data: &str) -> impl Iterator<Item = &str> {
    let trimmed = data
        .strip_suffix("\r\n")
        .or_else(|| data.strip_suffix('\n'))
        .or_else(|| data.strip_suffix('\r'))
        .unwrap_or(data);
    let mut rest = Some(trimmed);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            Some(at) => {
                let skip = if text[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[at + skip..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// Appends the stream prelude: the opening comment, then `retry:` (no blank line after either).
pub fn encode_prelude(retry_ms: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(STREAM_OPENING_COMMENT);
    let _ = writeln!(out, "retry: {retry_ms}");
}

/// Appends the `ssed-gap` notice: no `id:` line, so the client's last event id does not move.
pub fn encode_gap(last_event_id: u64, oldest_retained: u64, out: &mut Vec<u8>) {
    let data = format!("{{\"last_event_id\":{last_event_id},\"oldest_retained\":{oldest_retained}}}");
    encode_frame(
        &Fields { id: None, wire_id: None, event_type: Some(GAP_EVENT_TYPE), retry_ms: None, data: &data },
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: Option<u64>, event_type: Option<&str>, data: &str) -> String {
        let mut out = Vec::new();
        encode_frame(&Fields { id, wire_id: None, event_type, retry_ms: None, data }, &mut out);
        String::from_utf8(out).unwrap()
    }

    macro_rules! frames {
        ($($name:ident: $data:expr => $wire:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(frame(Some(7), None, $data), $wire);
            }
        )*};
    }

    frames! {
        one_line: "hello" => "id: 7\ndata: hello\n\n";
        lf_lines: "a\nb" => "id: 7\ndata: a\ndata: b\n\n";
        crlf_lines: "a\r\nb" => "id: 7\ndata: a\ndata: b\n\n";
        cr_lines: "a\rb" => "id: 7\ndata: a\ndata: b\n\n";
        mixed_endings: "a\r\n\rb\nc" => "id: 7\ndata: a\ndata:\ndata: b\ndata: c\n\n";
        trailing_lf_dropped: "hi\n" => "id: 7\ndata: hi\n\n";
        trailing_crlf_dropped: "hi\r\n" => "id: 7\ndata: hi\n\n";
        trailing_cr_dropped: "hi\r" => "id: 7\ndata: hi\n\n";
        only_one_trailing_ending_dropped: "hi\n\n" => "id: 7\ndata: hi\ndata:\n\n";
        empty_is_one_empty_line: "" => "id: 7\ndata:\n\n";
        lone_newline_is_one_empty_line: "\n" => "id: 7\ndata:\n\n";
        leading_space_survives: " x" => "id: 7\ndata:  x\n\n";
        unicode: "héllo ✓ 🦀" => "id: 7\ndata: héllo ✓ 🦀\n\n";
        colon_in_data: "a: b" => "id: 7\ndata: a: b\n\n";
    }

    #[test]
    fn event_type_and_retry() {
        let mut out = Vec::new();
        encode_frame(
            &Fields { id: Some(1), wire_id: None, event_type: Some("chat"), retry_ms: Some(500), data: "x" },
            &mut out,
        );
        assert_eq!(out, b"id: 1\nevent: chat\nretry: 500\ndata: x\n\n");
    }

    #[test]
    fn a_wire_id_replaces_the_numeric_one() {
        let mut out = Vec::new();
        let fields =
            Fields { id: Some(1), wire_id: Some("urn:x:é"), event_type: None, retry_ms: None, data: "x" };
        encode_frame(&fields, &mut out);
        assert_eq!(out, "id: urn:x:é\ndata: x\n\n".as_bytes());
    }

    #[test]
    fn gap_notice_has_no_id() {
        let mut out = Vec::new();
        encode_gap(41, 100, &mut out);
        assert_eq!(out, b"event: ssed-gap\ndata: {\"last_event_id\":41,\"oldest_retained\":100}\n\n");
    }

    #[test]
    fn prelude_is_comment_then_retry_without_blank_line() {
        let mut out = Vec::new();
        encode_prelude(3000, &mut out);
        assert_eq!(out, b": ssed\nretry: 3000\n");
    }

    #[test]
    fn event_type_rules() {
        assert_eq!(validate_event_type(b"update"), Ok(()));
        assert_eq!(validate_event_type("ünï".as_bytes()), Ok(()));
        assert_eq!(validate_event_type(b""), Err(EventTypeError::Empty));
        assert_eq!(validate_event_type(&[b'a'; 129]), Err(EventTypeError::TooLong));
        assert_eq!(validate_event_type(&[b'a'; 128]), Ok(()));
        assert_eq!(validate_event_type(b"a\nb"), Err(EventTypeError::ForbiddenByte(b'\n')));
        assert_eq!(validate_event_type(b"a\rb"), Err(EventTypeError::ForbiddenByte(b'\r')));
        assert_eq!(validate_event_type(b"a\0b"), Err(EventTypeError::ForbiddenByte(0)));
        assert_eq!(validate_event_type(&[0xff]), Err(EventTypeError::NotUtf8));
    }
}
