//! The event every path publishes: checked once, then trusted by the log, the store and the loop.
//!
//! An HTTP publish (`route::publish_body`), a [`Publisher`](crate::Publisher) call and, next, the
//! Redis bridge all describe an event as a [`Draft`] and turn it into an [`Event`] with
//! [`Draft::validate`]; nothing else makes one from outside input. So the contract's rules (topics,
//! the 64-topic cap, event type, UTF-8 data, the size cap) live here and nowhere else, and the code
//! past this point never checks them again.

use std::fmt;

use crate::sse::{self, EventTypeError};
use crate::topic::{self, TopicError};

/// An event that passed [`Draft::validate`]: at least one and at most 64 (`topic::MAX_TOPICS`) valid
/// topics, a valid type if any, and UTF-8 data within the size cap it was checked against.
///
/// It has no id: ids are assigned when it enters the history. The log encodes it and the durable
/// history writes it by reference, so its data is held once per publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    topics: Vec<String>,
    event_type: Option<String>,
    retry_ms: Option<u64>,
    data: String,
    /// The id its subscribers see instead of the numeric one: a Mercure publisher's own `id`, or
    /// the `urn:ssed:` form the hub gives events published without one (see [`Draft::id`]).
    wire_id: Option<String>,
    /// Delivered only to subscribers whose rights cover one of its topics (Mercure `private`).
    private: bool,
    /// Published through the Mercure hub: without a [`Event::wire_id`] its id goes out in the
    /// `urn:ssed:` form, since Mercure wants an IRI, not a bare number.
    hub: bool,
}

impl Event {
    /// Its topics, in the order given (duplicates kept: the log folds them).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Its `event:` type, if any.
    pub fn event_type(&self) -> Option<&str> {
        self.event_type.as_deref()
    }

    /// Its `retry:` field in milliseconds, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Its data.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// The id subscribers see, when it is not the numeric one the log gives it.
    pub fn wire_id(&self) -> Option<&str> {
        self.wire_id.as_deref()
    }

    /// Whether only subscribers with rights to one of its topics may receive it.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Whether it came through the Mercure hub (see [`Draft::hub_topics`]).
    pub fn is_hub(&self) -> bool {
        self.hub
    }

    /// An event read back from the durable history, not checked again.
    ///
    /// A record is only written for an event that passed [`Draft::validate`], and its checksum
    /// vouches that the bytes are the ones written. One stored under older, looser rules (before the
    /// 64-topic cap) was accepted then and is served as it was, so a restart does not lose it.
    pub(crate) fn from_record(
        topics: Vec<String>,
        event_type: Option<String>,
        retry_ms: Option<u64>,
        data: String,
    ) -> Event {
        Event { topics, event_type, retry_ms, data, wire_id: None, private: false, hub: false }
    }

    /// Gives a record's event the hub's extras it was stored with.
    pub(crate) fn with_extras(mut self, wire_id: Option<String>, private: bool, hub: bool) -> Event {
        self.wire_id = wire_id;
        self.private = private;
        self.hub = hub;
        self
    }
}

/// An event as a publisher describes it, not yet checked; [`Draft::validate`] makes it an [`Event`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// Topic names.
    pub topics: Vec<String>,
    /// The `event:` type.
    pub event_type: Option<String>,
    /// The `retry:` field in milliseconds.
    pub retry_ms: Option<u64>,
    /// The data, which must be UTF-8.
    pub data: Vec<u8>,
    /// The id subscribers see (Mercure's `id`), checked by the hub's rules before it gets here;
    /// `None`: the log's numeric id.
    pub id: Option<String>,
    /// Mercure's `private`.
    pub private: bool,
    /// Topics follow the Mercure hub's rules (any IRI, checked by the hub before it gets here)
    /// rather than ssed's `/events` alphabet.
    pub hub_topics: bool,
}

impl Draft {
    /// Checks the draft against the contract's rules, with data of at most `max_data` bytes.
    ///
    /// Topics are checked in order, then the type, then the data, and the first problem is the
    /// answer.
    pub fn validate(self, max_data: usize) -> Result<Event, EventError> {
        if self.topics.is_empty() {
            return Err(EventError::NoTopic);
        }
        if self.topics.len() > topic::MAX_TOPICS {
            return Err(EventError::TooManyTopics);
        }
        for name in &self.topics {
            if self.hub_topics {
                hub_text(name).map_err(|_| EventError::HubTopic)?;
            } else {
                topic::validate(name.as_bytes()).map_err(EventError::Topic)?;
            }
        }
        if let Some(id) = &self.id {
            hub_text(id).map_err(|_| EventError::Id)?;
        }
        if let Some(event_type) = &self.event_type {
            sse::validate_event_type(event_type.as_bytes()).map_err(EventError::EventType)?;
        }
        if self.data.len() > max_data {
            return Err(EventError::DataTooLarge { len: self.data.len(), max: max_data });
        }
        let data = String::from_utf8(self.data).map_err(|_| EventError::DataNotUtf8)?;
        Ok(Event {
            topics: self.topics,
            event_type: self.event_type,
            retry_ms: self.retry_ms,
            data,
            wire_id: self.id,
            private: self.private,
            hub: self.hub_topics,
        })
    }
}

/// Longest hub topic or publisher id the log takes, in bytes; the hub's own rules are stricter.
pub const MAX_HUB_TEXT_BYTES: usize = 4096;

/// The floor every hub topic and publisher id meets wherever it comes from (the hub checks more
/// before): not empty, not too long, and no control character, so an id can never end its `id:`
/// line early or add a field, and a topic never holds the line break the cluster's stream entries
/// separate topics with.
fn hub_text(text: &str) -> Result<(), ()> {
    let control = |c: char| c.is_control();
    if text.is_empty() || text.len() > MAX_HUB_TEXT_BYTES || text.chars().any(control) {
        return Err(());
    }
    Ok(())
}

/// Why a [`Draft`] was refused: `400` over HTTP, [`ErrorKind::InvalidEvent`](crate::ErrorKind) from
/// a [`Publisher`](crate::Publisher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    /// No topic at all.
    NoTopic,
    /// More than 64 topics (`topic::MAX_TOPICS`).
    TooManyTopics,
    /// A topic name breaks the rules.
    Topic(TopicError),
    /// The event type breaks the rules.
    EventType(EventTypeError),
    /// The data is longer than the cap it was checked against.
    DataTooLarge {
        /// Its length in bytes.
        len: usize,
        /// The cap in bytes.
        max: usize,
    },
    /// The data is not UTF-8 (SSE carries text only).
    DataNotUtf8,
    /// A hub topic is empty, too long, or holds a control character.
    HubTopic,
    /// A publisher's id is empty, too long, or holds a control character.
    Id,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::NoTopic => f.write_str("missing topic"),
            EventError::TooManyTopics => write!(f, "too many topics: at most {}", topic::MAX_TOPICS),
            EventError::Topic(e) => e.fmt(f),
            EventError::EventType(e) => e.fmt(f),
            EventError::DataTooLarge { len, max } => {
                write!(f, "event data is {len} bytes, over the {max}-byte limit")
            }
            EventError::DataNotUtf8 => f.write_str("data is not UTF-8"),
            EventError::HubTopic => write!(
                f,
                "bad topic: empty, longer than {MAX_HUB_TEXT_BYTES} bytes, or holding a control character"
            ),
            EventError::Id => write!(
                f,
                "bad id: empty, longer than {MAX_HUB_TEXT_BYTES} bytes, or holding a control character"
            ),
        }
    }
}

impl std::error::Error for EventError {}

/// Why the server did not store a valid event (`Loop::publish`): `413` or `503` over HTTP,
/// [`ErrorKind::InvalidEvent`](crate::ErrorKind) or [`ErrorKind::Unavailable`](crate::ErrorKind)
/// from a [`Publisher`](crate::Publisher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The encoded event alone is larger than the whole history may hold (`--history-bytes`).
    TooLarge,
    /// The durable history could not store it (disk full, I/O error), with the reason; the same
    /// event may succeed later.
    Storage(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::TooLarge => f.write_str("event larger than --history-bytes allows"),
            PublishError::Storage(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for PublishError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(topics: &[&str]) -> Draft {
        Draft {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            data: b"x".to_vec(),
            ..Draft::default()
        }
    }

    #[test]
    fn hub_topics_and_ids_cannot_break_a_line_wherever_they_come_from() {
        let hub = |topics: &[&str], id: Option<&str>| Draft {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            id: id.map(str::to_string),
            hub_topics: true,
            ..Draft::default()
        };
        let ok = hub(&["https://example.com/a b?c#d", "é"], Some("urn:uuid:1")).validate(8).unwrap();
        assert_eq!((ok.wire_id(), ok.is_hub(), ok.is_private()), (Some("urn:uuid:1"), true, false));
        for id in ["", "a\nb", "a\rb", "a\u{85}b", "\0"] {
            assert_eq!(hub(&["t"], Some(id)).validate(8), Err(EventError::Id), "{id:?}");
        }
        let long = "x".repeat(MAX_HUB_TEXT_BYTES);
        assert!(hub(&[&long], Some(&long)).validate(8).is_ok(), "at the cap");
        let longer = "x".repeat(MAX_HUB_TEXT_BYTES + 1);
        assert_eq!(hub(&[&longer], None).validate(8), Err(EventError::HubTopic));
        assert_eq!(hub(&["t"], Some(&longer)).validate(8), Err(EventError::Id));
        for topic in ["", "a\nb", "a\u{7f}"] {
            assert_eq!(hub(&[topic], None).validate(8), Err(EventError::HubTopic), "{topic:?}");
        }
        // /events topics keep their own alphabet.
        let events = Draft { topics: vec!["a b".into()], ..Draft::default() };
        assert!(matches!(events.validate(8), Err(EventError::Topic(_))));
    }

    #[test]
    fn a_valid_draft_keeps_its_fields() {
        let draft = Draft {
            topics: vec!["a".into(), "room/1".into()],
            event_type: Some("ping".into()),
            retry_ms: Some(500),
            data: "héllo\nworld".as_bytes().to_vec(),
            ..Draft::default()
        };
        let event = draft.validate(64).unwrap();
        assert_eq!(event.topics(), ["a", "room/1"]);
        assert_eq!(event.event_type(), Some("ping"));
        assert_eq!(event.retry_ms(), Some(500));
        assert_eq!(event.data(), "héllo\nworld");
    }

    #[test]
    fn each_rule_has_its_error() {
        assert_eq!(draft(&[]).validate(64), Err(EventError::NoTopic));
        let many: Vec<String> = (0..=topic::MAX_TOPICS).map(|i| format!("t{i}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(draft(&names[..topic::MAX_TOPICS]).validate(64).is_ok());
        assert_eq!(draft(&names).validate(64), Err(EventError::TooManyTopics));
        assert_eq!(draft(&["ok", "a b"]).validate(64), Err(EventError::Topic(TopicError::BadByte(b' '))));
        let typed = Draft { event_type: Some("a\nb".into()), ..draft(&["ok"]) };
        assert_eq!(typed.validate(64), Err(EventError::EventType(EventTypeError::ForbiddenByte(b'\n'))));
        let big = Draft { data: vec![b'x'; 65], ..draft(&["ok"]) };
        assert_eq!(big.clone().validate(64), Err(EventError::DataTooLarge { len: 65, max: 64 }));
        assert!(big.validate(65).is_ok(), "the cap is inclusive");
        let binary = Draft { data: vec![0xff, 0xfe], ..draft(&["ok"]) };
        assert_eq!(binary.validate(64), Err(EventError::DataNotUtf8));
    }

    #[test]
    fn errors_read_as_the_contract_words_them() {
        assert_eq!(EventError::NoTopic.to_string(), "missing topic");
        assert_eq!(EventError::TooManyTopics.to_string(), "too many topics: at most 64");
        assert_eq!(EventError::Topic(TopicError::Empty).to_string(), "bad topic: empty");
        assert_eq!(EventError::DataNotUtf8.to_string(), "data is not UTF-8");
        assert_eq!(
            EventError::DataTooLarge { len: 2, max: 1 }.to_string(),
            "event data is 2 bytes, over the 1-byte limit"
        );
        assert_eq!(PublishError::TooLarge.to_string(), "event larger than --history-bytes allows");
    }
}
