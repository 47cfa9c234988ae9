//! The value rules Mercure shares between topics, matcher values, event ids and event types, and
//! the hub's size caps.
//!
//! Every such value must be UTF-8 and hold no control character (C0 U+0000–U+001F, DEL U+007F, C1
//! U+0080–U+009F) and no Unicode format character (general category `Cf`: bidirectional and
//! zero-width controls, the BOM, the soft hyphen...), which are invisible, spoof identifiers, and
//! (CR, LF, NUL) would inject Server-Sent Events fields (spec: "Terminology", "Publication",
//! "Server-Sent Events Field Injection"). The caps are ours: the spec asks for implementation-defined
//! ones ("Resource Limits").

use std::fmt;

use icu_properties::props::GeneralCategory;
use icu_properties::CodePointMapData;

/// Longest topic, and longest matcher value, in bytes.
///
/// Topics are usually URLs; 2 KiB is the URL length every browser and intermediary handles.
pub const MAX_TOPIC_BYTES: usize = 2 * 1024;

/// Most topic matchers one subscription request may carry (`match*` and `topic` parameters,
/// counted as sent, before duplicates are dropped).
///
/// Each matcher is compiled, and matched once against every distinct topic published while the
/// subscription lives.
pub const MAX_MATCHERS: usize = 64;

/// Most `topic` fields one update may carry (its canonical topic and alternates).
pub const MAX_TOPICS: usize = 64;

/// Longest client-supplied event id, in bytes. Ids travel back in `Last-Event-ID` request headers,
/// so they must stay far below a request head's cap.
pub const MAX_ID_BYTES: usize = 1024;

/// Longest event type, in bytes: the SSE encoder's cap, as the type becomes the `event:` field.
pub const MAX_TYPE_BYTES: usize = crate::sse::MAX_EVENT_TYPE_BYTES;

/// Why a value broke the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleError {
    /// The bytes are not UTF-8; the first `valid_up_to` are.
    NotUtf8 {
        /// Length of the longest valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The value is `len` bytes long, over the cap of `max`.
    TooLong {
        /// The value's length in bytes.
        len: usize,
        /// The cap it broke.
        max: usize,
    },
    /// A control character (C0, DEL or C1) at byte offset `at`.
    Control {
        /// The character.
        ch: char,
        /// Its byte offset in the value.
        at: usize,
    },
    /// A Unicode format character (general category Cf) at byte offset `at`.
    Format {
        /// The character.
        ch: char,
        /// Its byte offset in the value.
        at: usize,
    },
}

impl RuleError {
    /// Whether the value broke a size cap (a `413` on publish) rather than a character rule.
    pub fn is_too_long(&self) -> bool {
        matches!(self, RuleError::TooLong { .. })
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RuleError::NotUtf8 { valid_up_to } => {
                write!(f, "is not valid UTF-8 (bad byte at offset {valid_up_to})")
            }
            RuleError::TooLong { len, max } => write!(f, "is {len} bytes long, over the limit of {max}"),
            RuleError::Control { ch, at } => {
                write!(f, "holds the control character U+{:04X} at byte {at}", u32::from(ch))
            }
            RuleError::Format { ch, at } => {
                write!(f, "holds the invisible Unicode format character U+{:04X} at byte {at}", u32::from(ch))
            }
        }
    }
}

impl std::error::Error for RuleError {}

/// Checks a value of at most `max_bytes` bytes against the character rules.
///
/// The length is checked first, so an oversized value costs nothing more.
pub fn check(value: &str, max_bytes: usize) -> Result<(), RuleError> {
    if value.len() > max_bytes {
        return Err(RuleError::TooLong { len: value.len(), max: max_bytes });
    }
    match value.char_indices().find(|&(_, ch)| is_control(ch) || is_format(ch)) {
        None => Ok(()),
        Some((at, ch)) if is_control(ch) => Err(RuleError::Control { ch, at }),
        Some((at, ch)) => Err(RuleError::Format { ch, at }),
    }
}

/// [`check`] on raw bytes, which must first be UTF-8; returns them as a `str`.
pub fn check_bytes(value: &[u8], max_bytes: usize) -> Result<&str, RuleError> {
    if value.len() > max_bytes {
        return Err(RuleError::TooLong { len: value.len(), max: max_bytes });
    }
    let value =
        std::str::from_utf8(value).map_err(|e| RuleError::NotUtf8 { valid_up_to: e.valid_up_to() })?;
    check(value, max_bytes)?;
    Ok(value)
}

/// C0 (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F): exactly Rust's `char::is_control`
/// (general category Cc), spelled out because the spec lists the ranges.
fn is_control(ch: char) -> bool {
    matches!(ch, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// General category Cf, from ICU4X's compiled Unicode data (a lookup in a code point trie).
///
/// The spec cites Unicode 17 and lets hubs also refuse what later versions add to Cf; the data is
/// whatever `icu_properties` ships (Unicode 18 at the time of writing).
fn is_format(ch: char) -> bool {
    // ASCII is never Cf; skip the trie lookup for the common case.
    !ch.is_ascii() && CodePointMapData::<GeneralCategory>::new().get(ch) == GeneralCategory::Format
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_text_and_iris() {
        for value in [
            "",
            "chat",
            "https://example.com/books/1?x=1#top",
            "https://exämple.com/café/日本語?q=ü#ö",
            "emoji 🦀 and NBSP\u{a0}and U+FFFD \u{fffd}",
            "%00 percent-encoded controls are plain text",
            "\u{a1} is the first character after C1",
            "~ is the last ASCII character before DEL",
        ] {
            assert_eq!(check(value, MAX_TOPIC_BYTES), Ok(()), "{value:?}");
        }
    }

    #[test]
    fn refuses_every_control_character_and_says_where() {
        for ch in ('\u{0}'..='\u{1f}').chain('\u{7f}'..='\u{9f}') {
            let value = format!("ab{ch}c");
            assert_eq!(check(&value, MAX_TOPIC_BYTES), Err(RuleError::Control { ch, at: 2 }), "{ch:?}");
        }
        let msg = check("a\nb", 10).unwrap_err().to_string();
        assert_eq!(msg, "holds the control character U+000A at byte 1");
        // The neighbours of the ranges are fine.
        for ch in [' ', '~', '\u{a0}', '\u{a1}'] {
            assert_eq!(check(&ch.to_string(), 8), Ok(()), "{ch:?}");
        }
    }

    #[test]
    fn refuses_format_characters() {
        for ch in [
            '\u{ad}',    // soft hyphen
            '\u{600}',   // Arabic number sign
            '\u{61c}',   // Arabic letter mark
            '\u{200b}',  // zero width space
            '\u{200d}',  // zero width joiner
            '\u{200e}',  // left-to-right mark
            '\u{202e}',  // right-to-left override
            '\u{2066}',  // left-to-right isolate
            '\u{2060}',  // word joiner
            '\u{feff}',  // BOM / zero width no-break space
            '\u{fff9}',  // interlinear annotation anchor
            '\u{110bd}', // Kaithi number sign
            '\u{e0001}', // language tag
            '\u{e007f}', // cancel tag
        ] {
            let value = format!("é{ch}");
            assert_eq!(check(&value, MAX_TOPIC_BYTES), Err(RuleError::Format { ch, at: 2 }), "{ch:?}");
        }
        let msg = check("\u{202e}", 10).unwrap_err().to_string();
        assert_eq!(msg, "holds the invisible Unicode format character U+202E at byte 0");
    }

    #[test]
    fn format_table_is_exactly_general_category_cf() {
        // A hand count of Cf in Unicode 17 is 170 code points; later versions may only add.
        let cf: Vec<char> = (0..=0x10ffff).filter_map(char::from_u32).filter(|&c| is_format(c)).collect();
        assert!(cf.len() >= 170, "{} Cf code points", cf.len());
        assert!(cf.iter().all(|c| !c.is_control() && !c.is_ascii()));
        // Letters, marks, spaces and private use are not Cf.
        for ch in ['a', 'é', '\u{301}', '\u{3000}', '\u{e000}', '\u{fffd}', '\u{10ffff}'] {
            assert!(!is_format(ch), "{ch:?}");
        }
    }

    #[test]
    fn control_matches_the_standard_library() {
        for ch in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(is_control(ch), ch.is_control(), "{ch:?}");
        }
    }

    #[test]
    fn length_cap_is_inclusive() {
        let at_cap = "a".repeat(MAX_TOPIC_BYTES);
        assert_eq!(check(&at_cap, MAX_TOPIC_BYTES), Ok(()));
        let over = "a".repeat(MAX_TOPIC_BYTES + 1);
        let err = check(&over, MAX_TOPIC_BYTES).unwrap_err();
        assert_eq!(err, RuleError::TooLong { len: MAX_TOPIC_BYTES + 1, max: MAX_TOPIC_BYTES });
        assert!(err.is_too_long());
        assert_eq!(err.to_string(), "is 2049 bytes long, over the limit of 2048");
        // Bytes, not characters: two 2-byte characters are 4 bytes.
        assert!(check("éé", 3).is_err());
        assert_eq!(check("éé", 4), Ok(()));
        // An oversized value is reported as such even when it also holds a control character.
        assert!(check("\n\n", 1).unwrap_err().is_too_long());
        assert!(!RuleError::Control { ch: '\n', at: 0 }.is_too_long());
        assert!(!RuleError::Format { ch: '\u{ad}', at: 0 }.is_too_long());
        assert!(!RuleError::NotUtf8 { valid_up_to: 0 }.is_too_long());
    }

    #[test]
    fn bytes_must_be_utf8() {
        assert_eq!(check_bytes("héllo".as_bytes(), 16), Ok("héllo"));
        assert_eq!(check_bytes(b"ab\xffc", 16), Err(RuleError::NotUtf8 { valid_up_to: 2 }));
        assert_eq!(check_bytes(b"\xc3", 16), Err(RuleError::NotUtf8 { valid_up_to: 0 }));
        assert_eq!(check_bytes(b"a\x7f", 16), Err(RuleError::Control { ch: '\u{7f}', at: 1 }));
        assert_eq!(check_bytes(b"abc", 2), Err(RuleError::TooLong { len: 3, max: 2 }));
        assert_eq!(check_bytes(b"ab", 2), Ok("ab"));
        assert_eq!(
            check_bytes(b"a\xff", 16).unwrap_err().to_string(),
            "is not valid UTF-8 (bad byte at offset 1)"
        );
    }
}
