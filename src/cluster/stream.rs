//! The shared Redis stream's format, without a connection: entry ids and event ids, an event's
//! fields, and the script that appends one.
//!
//! **Ids.** A stream entry id is `<ms>-<seq>`. The event id is `ms * 1000 + seq`, with `seq` kept
//! below 1000 by the append script: the same scale as a single node's ids (microseconds since the
//! epoch, [`crate::ids::ClockIds`]), so a node moved into a cluster keeps handing out higher ids,
//! they stay below 2^53 (JavaScript reads them exactly) and the mapping runs both ways, which is
//! what lets a `Last-Event-ID` from one node be resumed on another. Redis gives every entry a
//! higher id than the last one it ever generated (trimmed or deleted ones included), so ids are
//! strictly increasing across the cluster and never reused.
//!
//! **Fields.** `topics` (names joined by single spaces: no topic may hold one), `data`, and `type`
//! and `retry` when present. An entry is read back through [`Draft::validate`] like any other
//! outside input: the stream is not ssed's alone.

use std::fmt;

use crate::event::{Draft, Event, EventError};

/// Sequence numbers per millisecond that map to event ids; the append script moves on to the next
/// millisecond past them.
pub const SEQ_PER_MS: u64 = 1000;

/// A Redis stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId {
    /// The millisecond part.
    pub ms: u64,
    /// The sequence part.
    pub seq: u64,
}

/// Why an entry id could not be read, or has no event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryIdError {
    /// Not `<ms>-<seq>` in decimal.
    Malformed(String),
    /// A sequence number of 1000 or more: an entry not added by ssed's script, which would break
    /// the order of event ids.
    SeqTooLarge(EntryId),
}

impl fmt::Display for EntryIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryIdError::Malformed(text) => write!(f, "stream entry id {text:?} is not <ms>-<seq>"),
            EntryIdError::SeqTooLarge(id) => write!(
                f,
                "stream entry id {id} has a sequence number of {SEQ_PER_MS} or more (added by something other than ssed?)"
            ),
        }
    }
}

impl std::error::Error for EntryIdError {}

impl EntryId {
    /// Reads `<ms>-<seq>`.
    pub fn parse(text: &str) -> Result<EntryId, EntryIdError> {
        let malformed = || EntryIdError::Malformed(text.to_string());
        let (ms, seq) = text.split_once('-').ok_or_else(malformed)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(malformed());
        }
        Ok(EntryId { ms: ms.parse().map_err(|_| malformed())?, seq: seq.parse().map_err(|_| malformed())? })
    }

    /// The event id of this entry: `ms * 1000 + seq`.
    pub fn event_id(self) -> Result<u64, EntryIdError> {
        if self.seq >= SEQ_PER_MS {
            return Err(EntryIdError::SeqTooLarge(self));
        }
        self.ms
            .checked_mul(SEQ_PER_MS)
            .and_then(|v| v.checked_add(self.seq))
            .ok_or(EntryIdError::SeqTooLarge(self))
    }

    /// The event id of this entry, or for an entry id that has none (a sequence number of 1000 or
    /// more, added by something other than ssed) the highest of its millisecond: the bound a gap
    /// report can name.
    pub fn nearest_event_id(self) -> u64 {
        self.event_id().unwrap_or_else(|_| self.ms.saturating_mul(SEQ_PER_MS).saturating_add(SEQ_PER_MS - 1))
    }

    /// The entry an event id names; any u64 names one (a `Last-Event-ID` from a single node, in
    /// microseconds, names the millisecond it fell in).
    pub fn of_event(id: u64) -> EntryId {
        EntryId { ms: id / SEQ_PER_MS, seq: id % SEQ_PER_MS }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The field names of an entry.
pub const TOPICS: &str = "topics";
/// The data field.
pub const DATA: &str = "data";
/// The `event:` type field.
pub const TYPE: &str = "type";
/// The `retry:` field.
pub const RETRY: &str = "retry";
/// The topics of an event of the Mercure hub, separated by line feeds (its topics may hold
/// spaces, never a control character).
pub const HUB_TOPICS: &str = "htopics";
/// A publisher's own id (Mercure).
pub const ID: &str = "id";
/// Present (`1`) on a private event (Mercure).
pub const PRIVATE: &str = "private";

/// The field-value pairs an event is appended with.
pub fn fields(event: &Event) -> Vec<(&'static str, Vec<u8>)> {
    let topics = if event.is_hub() {
        (HUB_TOPICS, event.topics().join("\n").into_bytes())
    } else {
        (TOPICS, event.topics().join(" ").into_bytes())
    };
    let mut fields = vec![topics, (DATA, event.data().as_bytes().to_vec())];
    if let Some(id) = event.wire_id() {
        fields.push((ID, id.as_bytes().to_vec()));
    }
    if event.is_private() {
        fields.push((PRIVATE, b"1".to_vec()));
    }
    if let Some(event_type) = event.event_type() {
        fields.push((TYPE, event_type.as_bytes().to_vec()));
    }
    if let Some(retry) = event.retry_ms() {
        fields.push((RETRY, retry.to_string().into_bytes()));
    }
    fields
}

/// Why an entry was not taken as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    /// A field the event needs is missing, or one is not what it should be.
    Field(String),
    /// The event it describes breaks the contract's rules.
    Event(EventError),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::Field(what) => f.write_str(what),
            EntryError::Event(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EntryError {}

/// The event an entry's field-value pairs describe, checked as any outside input is, with data of
/// at most `max_data` bytes. Unknown fields are ignored, so later versions may add some.
pub fn event_of(pairs: &[(Vec<u8>, Vec<u8>)], max_data: usize) -> Result<Event, EntryError> {
    let mut draft = Draft::default();
    let mut topics = None;
    for (name, value) in pairs {
        match name.as_slice() {
            b"topics" => {
                let text = std::str::from_utf8(value)
                    .map_err(|_| EntryError::Field("topics are not UTF-8".into()))?;
                topics = Some(text.split(' ').map(str::to_string).collect());
            }
            b"htopics" => {
                let text = std::str::from_utf8(value)
                    .map_err(|_| EntryError::Field("topics are not UTF-8".into()))?;
                topics = Some(text.split('\n').map(str::to_string).collect());
                draft.hub_topics = true;
            }
            b"id" => {
                let text = String::from_utf8(value.clone())
                    .map_err(|_| EntryError::Field("id is not UTF-8".into()))?;
                draft.id = Some(text);
            }
            b"private" => draft.private = true,
            b"data" => draft.data = value.clone(),
            b"type" => {
                let text = String::from_utf8(value.clone())
                    .map_err(|_| EntryError::Field("type is not UTF-8".into()))?;
                draft.event_type = Some(text);
            }
            b"retry" => {
                let retry = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok());
                draft.retry_ms =
                    Some(retry.ok_or_else(|| EntryError::Field("retry is not a number".into()))?);
            }
            _ => {}
        }
    }
    draft.topics = topics.ok_or_else(|| EntryError::Field("no topics field".into()))?;
    draft.validate(max_data).map_err(EntryError::Event)
}

/// Appends an event with the next id: `KEYS[1]` the stream, `ARGV[1]` the approximate length to
/// trim to (0: none), then field-value pairs; returns the new entry id.
///
/// The id is Redis' own (`XADD *`): the later of Redis' clock in milliseconds and the stream's last
/// generated id, atomically, so every node's appends fall into one order and Redis itself refuses
/// an id that is not above the last one. Event ids need the sequence number below [`SEQ_PER_MS`];
/// in the rare millisecond that passes it (a thousand appends in one millisecond, or a clock that
/// fell behind the last id), the entry is taken back and added again as the next millisecond's
/// first. `XDEL` leaves the stream's last generated id where it was, so the retry's id is above it.
///
/// This replaced a script that read `XINFO STREAM` and `TIME` and computed the id itself: the same
/// ids, at about half the cost per append (`XINFO` builds the whole stream summary each call).
pub const APPEND_SCRIPT: &str = r"
local args = {'XADD', KEYS[1]}
if tonumber(ARGV[1]) > 0 then
  args[#args + 1] = 'MAXLEN'
  args[#args + 1] = '~'
  args[#args + 1] = ARGV[1]
end
local at = #args + 1
args[at] = '*'
for i = 2, #ARGV do
  args[#args + 1] = ARGV[i]
end
local id = redis.call(unpack(args))
local ms, seq = string.match(id, '^(%d+)-(%d+)$')
if tonumber(seq) < 1000 then
  return id
end
redis.call('XDEL', KEYS[1], id)
args[at] = string.format('%d-0', tonumber(ms) + 1)
return redis.call(unpack(args))
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_and_event_ids_map_both_ways_in_order() {
        let id = EntryId::parse("1795654619449-7").unwrap();
        assert_eq!(id, EntryId { ms: 1_795_654_619_449, seq: 7 });
        assert_eq!(id.to_string(), "1795654619449-7");
        assert_eq!(id.event_id(), Ok(1_795_654_619_449_007));
        assert_eq!(EntryId::of_event(1_795_654_619_449_007), id);
        // Order is kept across a millisecond boundary.
        let last_of_ms = EntryId { ms: 5, seq: 999 }.event_id().unwrap();
        let first_of_next = EntryId { ms: 6, seq: 0 }.event_id().unwrap();
        assert_eq!(first_of_next, last_of_ms + 1);
        // A single node's microsecond id names the millisecond it fell in.
        assert_eq!(EntryId::of_event(1_795_654_619_449_565), EntryId { ms: 1_795_654_619_449, seq: 565 });
    }

    #[test]
    fn an_entry_without_an_event_id_is_bounded_by_its_millisecond() {
        assert_eq!(EntryId { ms: 5, seq: 7 }.nearest_event_id(), 5_007);
        assert_eq!(EntryId { ms: 5, seq: 1000 }.nearest_event_id(), 5_999);
        assert_eq!(EntryId { ms: u64::MAX, seq: 0 }.nearest_event_id(), u64::MAX);
    }

    #[test]
    fn ids_ssed_could_not_have_given_are_refused() {
        assert_eq!(
            EntryId { ms: 5, seq: 1000 }.event_id(),
            Err(EntryIdError::SeqTooLarge(EntryId { ms: 5, seq: 1000 }))
        );
        assert!(EntryId { ms: u64::MAX, seq: 0 }.event_id().is_err(), "overflow");
        for bad in ["", "5", "5-", "-5", "a-1", "1-b", "1-2-3", "+1-2", " 1-2"] {
            assert!(matches!(EntryId::parse(bad), Err(EntryIdError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn refusals_say_what_is_wrong_for_the_log() {
        let malformed = EntryId::parse("x-1").unwrap_err().to_string();
        assert!(malformed.contains("\"x-1\"") && malformed.contains("<ms>-<seq>"), "{malformed}");
        let seq = EntryId { ms: 5, seq: 1000 }.event_id().unwrap_err().to_string();
        assert!(seq.contains("5-1000") && seq.contains("other than ssed"), "{seq}");
        let field = event_of(&pairs(&[("data", b"x")]), 10).unwrap_err().to_string();
        assert_eq!(field, "no topics field");
        let event = event_of(&pairs(&[("topics", b"a"), ("data", b"0123456789A")]), 10).unwrap_err();
        let EntryError::Event(inner) = &event else { panic!("{event:?}") };
        assert_eq!(event.to_string(), inner.to_string());
        assert!(!event.to_string().is_empty());
    }

    fn pairs(fields: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn an_event_round_trips_through_its_fields() {
        let draft = Draft {
            topics: vec!["a".into(), "room/7".into()],
            event_type: Some("note".into()),
            retry_ms: Some(2500),
            data: b"line 1\nline 2".to_vec(),
            ..Draft::default()
        };
        let event = draft.validate(1024).unwrap();
        let encoded: Vec<(Vec<u8>, Vec<u8>)> =
            fields(&event).into_iter().map(|(n, v)| (n.as_bytes().to_vec(), v)).collect();
        assert_eq!(event_of(&encoded, 1024), Ok(event));

        let plain =
            Draft { topics: vec!["t".into()], data: b"x".to_vec(), ..Draft::default() }.validate(10).unwrap();
        let encoded = fields(&plain);
        assert_eq!(encoded.len(), 2, "no type or retry field when the event has none");
        let encoded: Vec<_> = encoded.into_iter().map(|(n, v)| (n.as_bytes().to_vec(), v)).collect();
        assert_eq!(event_of(&encoded, 10), Ok(plain));
    }

    #[test]
    fn a_hub_event_round_trips_with_its_id_privacy_and_topics_with_spaces() {
        let draft = Draft {
            topics: vec!["https://example.com/a b".into(), "ü/2".into()],
            data: b"x".to_vec(),
            id: Some("urn:uuid:1".into()),
            private: true,
            hub_topics: true,
            ..Draft::default()
        };
        let event = draft.validate(10).unwrap();
        let encoded: Vec<_> = fields(&event).into_iter().map(|(n, v)| (n.as_bytes().to_vec(), v)).collect();
        assert_eq!(event_of(&encoded, 10), Ok(event));
        // What another node wrote is checked as any input: an id that would add a field on the wire.
        let bad = pairs(&[("htopics", b"a"), ("data", b"x"), ("id", b"1\ndata: forged")]);
        assert_eq!(event_of(&bad, 10), Err(EntryError::Event(EventError::Id)));
        let bad = pairs(&[("htopics", b"a\n"), ("data", b"x")]);
        assert_eq!(event_of(&bad, 10), Err(EntryError::Event(EventError::HubTopic)), "an empty topic");
    }

    #[test]
    fn entries_from_elsewhere_are_checked_like_any_input() {
        assert_eq!(event_of(&pairs(&[("data", b"x")]), 10), Err(EntryError::Field("no topics field".into())));
        assert!(matches!(
            event_of(&pairs(&[("topics", b"a b!"), ("data", b"x")]), 10),
            Err(EntryError::Event(_))
        ));
        assert!(matches!(
            event_of(&pairs(&[("topics", b"a"), ("data", b"0123456789A")]), 10),
            Err(EntryError::Event(EventError::DataTooLarge { .. }))
        ));
        assert!(matches!(
            event_of(&pairs(&[("topics", b"a"), ("retry", b"soon")]), 10),
            Err(EntryError::Field(_))
        ));
        let extra = event_of(&pairs(&[("topics", b"a"), ("data", b"x"), ("from", b"elsewhere")]), 10);
        assert_eq!(extra.map(|e| e.data().to_string()), Ok("x".to_string()), "unknown fields are ignored");
    }
}
