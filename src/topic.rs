//! Topic names: which bytes are allowed and why.

use std::fmt;

/// Longest topic name accepted, in bytes (contract: "Topics, ids, events").
pub const MAX_TOPIC_BYTES: usize = 128;

/// Most topics one request may name, for a stream or for an event; more get `400`.
///
/// Every topic named costs an index entry for as long as the stream or the event lives (a few
/// hundred bytes for a name not seen before), none of it counted by `--history-bytes`. Uncapped, a
/// 16 KiB request head held about 280 KiB per connection and a 64 KiB form about 150 KiB per stored
/// event; capped, a stream costs at most a few KiB more than one topic does.
pub const MAX_TOPICS: usize = 64;

/// Why a topic name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_TOPIC_BYTES`].
    TooLong,
    /// The name holds a byte outside `A-Z a-z 0-9 . _ ~ : / -`.
    BadByte(u8),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => f.write_str("bad topic: empty"),
            TopicError::TooLong => write!(f, "bad topic: longer than {MAX_TOPIC_BYTES} bytes"),
            TopicError::BadByte(b) => {
                write!(f, "bad topic: byte 0x{b:02x} is not one of A-Z a-z 0-9 . _ ~ : / -")
            }
        }
    }
}

/// Accepts a (percent-decoded) topic name of 1–128 bytes of `A-Z a-z 0-9 . _ ~ : / -`.
///
/// The set is URL-safe and can never carry CR, LF or a space, so a topic can be echoed into logs or
/// headers without escaping.
pub fn validate(name: &[u8]) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    match name.iter().find(|&&b| !is_topic_byte(b)) {
        Some(&b) => Err(TopicError::BadByte(b)),
        None => Ok(()),
    }
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'/' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        for name in ["chat", "a", "room/42", "user:7", "x.y_z~w-v", "A-Z0-9"] {
            assert_eq!(validate(name.as_bytes()), Ok(()), "{name}");
        }
        assert_eq!(validate(&[b'a'; MAX_TOPIC_BYTES]), Ok(()));
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(validate(b""), Err(TopicError::Empty));
        assert_eq!(validate(&[b'a'; MAX_TOPIC_BYTES + 1]), Err(TopicError::TooLong));
        for (name, bad) in [("a b", b' '), ("a\nb", b'\n'), ("a\rb", b'\r'), ("a&b", b'&'), ("é", 0xc3)] {
            assert_eq!(validate(name.as_bytes()), Err(TopicError::BadByte(bad)), "{name:?}");
        }
        assert_eq!(validate(b"a\0"), Err(TopicError::BadByte(0)));
    }
}
