//! The broadcast log: every published event, encoded once, in a bounded history shared by all subscribers.
//!
//! An event is turned into its final wire bytes (the SSE frame inside its HTTP chunk) when it is
//! published and stored once, however many topics it has. A subscriber holds only a [`Cursor`]: the
//! sequence number of the next event it needs and how many bytes of that event it has already sent.
//! Writing to it gathers slices straight out of the log, so a backlog of any length leaves in one
//! vectored write and an idle subscriber costs a few dozen bytes here.
//!
//! Each topic keeps an index of its events' sequence numbers, so a subscriber to a few topics out of
//! many never walks the others' events. The log does no I/O and never reads the clock: each event
//! comes with an id assigned by the caller ([`crate::ids`]), checked to be above the newest, and the
//! wall-clock time it is stored at, which `--history-age` follows.
//!
//! The history lives in this process's memory only. The server uses a narrow interface (encode and
//! insert an event, hold/commit/rollback, acquire/release a topic, resume, gather/advance,
//! backlog/lag/lost). With `--data-dir` the server also appends each event to files of its own
//! (`store.rs`) and replays them into a new log at start; when it syncs them, hold/commit keep an
//! event invisible to subscribers until it is on disk. The log itself never sees the files.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io::IoSlice;
use std::sync::Arc;

use crate::event::Event;
use crate::http::chunk;
use crate::sse;

/// The id of a published event: a decimal `u64`, strictly increasing across all topics.
///
/// The log does not make ids up: they come from a source of the caller's ([`crate::ids::ClockIds`]
/// for the server), and [`Broadcast::insert`] refuses one that is not above the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u64);

impl EventId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// An id given elsewhere (Redis, in cluster mode) and already stored by the log.
    #[cfg(feature = "cluster")]
    pub(crate) fn from_raw(id: u64) -> EventId {
        EventId(id)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A topic interned in the log; valid while the topic is acquired or has retained events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(u32);

impl TopicId {
    /// The index of the topic in dense per-topic tables (such as the server's subscriber lists).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id at `index` (tests of tables indexed by topic).
    #[cfg(test)]
    pub(crate) fn from_index(index: u32) -> TopicId {
        TopicId(index)
    }
}

/// The topics a subscriber listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every topic: the stream carries every event.
    All,
    /// One topic, the common case, kept inline.
    One(TopicId),
    /// Several distinct topics, sorted.
    Many(Box<[TopicId]>),
}

impl Selection {
    /// The topic ids named by the selection (none for [`Selection::All`]).
    pub fn topics(&self) -> &[TopicId] {
        match self {
            Selection::All => &[],
            Selection::One(t) => std::slice::from_ref(t),
            Selection::Many(ts) => ts,
        }
    }
}

/// Decides which topic names a derived topic takes in: a subscriber's set of topic matchers (the
/// Mercure hub's URL patterns) or the topics a token lets it read privately.
///
/// Evaluated once per (derived topic, topic name) pair, when the later of the two appears, and
/// remembered: a publish to a known topic costs no evaluation at all.
pub trait TopicFilter: Send {
    /// Whether `topic` belongs to the derived topic.
    fn matches(&self, topic: &str) -> bool;
}

/// What a subscriber may read of the events marked private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// None of them: anonymous subscribers, and every `/events` stream without a JWT.
    Public,
    /// Every one (a token granting `subscribe` on `*`).
    All,
    /// Those whose topics include one of the derived topic's (from [`Broadcast::acquire_derived`]
    /// with `private_only`).
    Matching(TopicId),
}

/// A subscriber's position: the next event it needs and the bytes of that event already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The sequence number from which the subscriber needs events (the first of its topics at or
    /// after it is the next to send).
    seq: u64,
    /// Bytes of that next event already written (a frame cut by a short write).
    offset: usize,
}

impl Framing {
    /// Chunked for HTTP/1.1, bare (close-delimited) for HTTP/1.0.
    pub fn for_http10(http10: bool) -> Framing {
        if http10 {
            Framing::Raw
        } else {
            Framing::Chunked
        }
    }
}

impl Cursor {
    /// Whether the last write stopped inside a frame, whose rest must go out before anything else.
    pub fn mid_frame(&self) -> bool {
        self.offset > 0
    }
}

/// How events are framed on a subscriber's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HTTP/1.1: each frame inside its chunk.
    Chunked,
    /// HTTP/1.0: bare frames, the body ends when the connection closes.
    Raw,
}

/// What [`Broadcast::resume`] found for a subscriber that is starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Where its stream starts.
    pub cursor: Cursor,
    /// `Some((last_event_id, oldest_retained))` when events it may need have left the history.
    pub gap: Option<(u64, u64)>,
    /// The first sequence number that is live for it: events from here on were published after it
    /// started, those before are its catch-up (see [`Broadcast::lag`]).
    pub live_from: u64,
}

/// A subscriber as the log sees it: its topics, how its events are framed, where it is, and where
/// its live part starts. [`Broadcast::gather`], [`Broadcast::advance`], [`Broadcast::backlog`],
/// [`Broadcast::lag`] and [`Broadcast::lost`] take it whole, so what a subscriber receives is decided
/// in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    selection: Selection,
    rights: Rights,
    framing: Framing,
    cursor: Cursor,
    /// The first sequence number published after it started: what came before is its catch-up,
    /// which never counts as lag.
    live_from: u64,
}

impl Subscription {
    /// A subscription to `selection` (from [`Broadcast::acquire`]) starting where `resume` (from
    /// [`Broadcast::resume`] for the same selection) says.
    pub fn new(selection: Selection, framing: Framing, resume: &Resume) -> Subscription {
        Subscription {
            selection,
            rights: Rights::Public,
            framing,
            cursor: resume.cursor,
            live_from: resume.live_from,
        }
    }

    /// The same subscription, allowed to read the private events `rights` cover; hand a
    /// [`Rights::Matching`] topic back with [`Broadcast::release`] when it ends.
    pub fn with_rights(mut self, rights: Rights) -> Subscription {
        self.rights = rights;
        self
    }

    /// Which private events it may read.
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// Its topics; hand them back with [`Broadcast::release`] when it ends.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// How its events are framed.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Its position in the log.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }
}

/// An event encoded into its wire bytes, ready for [`Broadcast::insert`].
#[derive(Debug)]
pub struct Encoded {
    id: u64,
    wire: Box<[u8]>,
    frame_start: u8,
    flags: u8,
}

/// [`Entry::flags`]: the event is private (Mercure).
const PRIVATE: u8 = 1;
/// [`Entry::flags`]: the event's id on the wire is its publisher's own (in the custom id map).
const CUSTOM_ID: u8 = 2;

impl Encoded {
    /// The id the event was encoded with.
    pub fn id(&self) -> EventId {
        EventId(self.id)
    }

    /// Its size on the wire (chunked framing).
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }
}

/// Why an event was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    /// The encoded event alone is larger than the whole history may hold.
    TooLarge,
    /// Its id is not above the newest id of the log (an id source that went back or repeated one), or
    /// is `u64::MAX`, which has no id after it.
    IdNotAbove {
        /// The id the event came with.
        id: u64,
        /// The newest id the log holds (or its floor).
        newest: u64,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::TooLarge => f.write_str("event larger than the history may hold"),
            PublishError::IdNotAbove { id: u64::MAX, .. } => {
                write!(f, "event id {} is out of range: the largest id is one below it", u64::MAX)
            }
            PublishError::IdNotAbove { id, newest } => {
                write!(f, "event id {id} is not above the newest id {newest}: ids must strictly increase")
            }
        }
    }
}

impl std::error::Error for PublishError {}

struct Entry {
    id: u64,
    /// Wall-clock microseconds when it was stored, never below the previous entry's (so the ring is
    /// in age order too); what `--history-age` follows, whatever the ids are.
    stored_at: u64,
    /// Wire bytes of every event stored before this one (the every-topic backlog's reference).
    total_before: u64,
    /// The topics the event belongs to, sorted and distinct.
    topics: EventTopics,
    /// Chunk header, frame, CRLF.
    wire: Box<[u8]>,
    /// Where the bare frame starts inside `wire`.
    frame_start: u8,
    /// [`PRIVATE`], [`CUSTOM_ID`].
    flags: u8,
}

/// An event's topics: one inline (nearly every event, and one allocation fewer each: a retained
/// event costs its wire bytes and nothing else on the heap), or several.
enum EventTopics {
    One(TopicId),
    Many(Box<[TopicId]>),
}

impl EventTopics {
    fn new(mut ids: Vec<TopicId>) -> EventTopics {
        ids.sort_unstable();
        ids.dedup();
        match ids[..] {
            [one] => EventTopics::One(one),
            _ => EventTopics::Many(ids.into_boxed_slice()),
        }
    }

    fn as_slice(&self) -> &[TopicId] {
        match self {
            EventTopics::One(t) => std::slice::from_ref(t),
            EventTopics::Many(ts) => ts,
        }
    }

    /// Adds a derived topic made after the event was stored.
    fn add(&mut self, id: TopicId) {
        let mut ids = self.as_slice().to_vec();
        ids.push(id);
        *self = EventTopics::new(ids);
    }

    /// Removes a derived topic taken apart.
    fn remove(&mut self, id: TopicId) {
        let ids: Vec<TopicId> = self.as_slice().iter().copied().filter(|&t| t != id).collect();
        *self = EventTopics::new(ids);
    }

    fn contains(&self, id: TopicId) -> bool {
        self.as_slice().binary_search(&id).is_ok()
    }
}

impl Entry {
    /// The `id:` line's value when it is not the decimal id (publisher-given or `urn:`).
    fn wire_id(&self) -> Option<&str> {
        let frame = &self.wire[usize::from(self.frame_start)..];
        let line = frame.strip_prefix(b"id: ")?;
        let end = line.iter().position(|&b| b == b'\n')?;
        let text = std::str::from_utf8(&line[..end]).ok()?;
        (self.flags & CUSTOM_ID != 0 || text.starts_with(URN_PREFIX)).then_some(text)
    }

    fn bytes(&self, framing: Framing) -> &[u8] {
        match framing {
            Framing::Chunked => &self.wire,
            Framing::Raw => &self.wire[usize::from(self.frame_start)..self.wire.len() - 2],
        }
    }
}

/// The prefix of the ids the Mercure hub gives events published without one: Mercure wants an IRI.
pub const URN_PREFIX: &str = "urn:ssed:";

/// Memory a topic costs beyond its name: its slot in the topic table, its entry in the name map, the
/// shared name's header and its index's first allocation (measured with `tests/it/abuse` topic
/// floods; an estimate, not an exact figure, since the allocator rounds).
const TOPIC_BYTES: usize = 192;
/// Memory one event costs in the index of each of its topics: a `(seq, bytes)` pair there and a
/// [`TopicId`] in the event's own topic list.
const INDEX_ENTRY_BYTES: usize = 20;

/// Per-topic index: the sequence numbers of the topic's retained events, and what it has lost.
struct TopicLog {
    /// The name, shared with the name map so it is stored once.
    name: Arc<str>,
    /// `(seq, bytes of this topic's events up to and including it)`, ascending.
    events: VecDeque<(u64, u64)>,
    /// Wire bytes of every event ever indexed here (the running total behind `events`).
    total_bytes: u64,
    /// Subscribers holding the topic.
    refs: u32,
    /// Highest id of this topic that left the history (or might have, for ids from before this log).
    evicted_max_id: u64,
    /// A named topic, or one derived from the named ones by a filter.
    kind: TopicKind,
    /// Highest sequence number of this topic that left the history; `None` if none did.
    evicted_max_seq: Option<u64>,
    /// The same, of the events that were not private (which every subscriber may read).
    evicted_max_public_seq: Option<u64>,
}

/// A topic with a name publishers use, or one whose events are those of the named topics a filter
/// takes in (see [`Broadcast::acquire_derived`]).
enum TopicKind {
    Named {
        /// The live derived topics that take this one in.
        derived: Vec<TopicId>,
    },
    Derived {
        filter: Box<dyn TopicFilter>,
        /// Only private events are indexed (a reader's rights, not a route).
        private_only: bool,
        /// The named topics it takes in.
        members: Vec<TopicId>,
    },
}

/// Size limits of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events kept at most.
    pub events: usize,
    /// Wire bytes kept at most.
    pub bytes: usize,
}

/// The bounded, shared history of published events with a per-topic index.
pub struct Broadcast {
    limits: Limits,
    ring: VecDeque<Entry>,
    /// Sequence number of `ring[0]` (or of the next event when the ring is empty).
    first_seq: u64,
    /// Wire bytes held by `ring`.
    bytes: usize,
    /// Memory of the topic index that retained events need: their entries in the topic indexes, and
    /// the topics nobody subscribes to (a subscriber's topics are its connection's cost, bounded by
    /// the per-stream topic cap). Capped by `limits.bytes` on its own, so a flood of new topic names
    /// evicts old events like a flood of data does, and the memory comes back when they go.
    index_bytes: usize,
    /// Running total of wire bytes of every event ever stored.
    total_bytes: u64,
    /// The lowest id the next event may have: one above the newest, or the floor given to `new`.
    next_id: u64,
    /// Highest id that left the history, any topic. It starts at the id below the first one this log
    /// may give out: ids up to there may have come from an earlier run, and are gone.
    evicted_max_id: u64,
    /// Highest id evicted from a topic whose index has since been dropped.
    forgotten_max_id: u64,
    /// Boxed, so a free slot that a long-lived topic further up keeps in the table costs 8 bytes.
    topics: Vec<Option<Box<TopicLog>>>,
    /// Free slots of `topics`, lowest first, so live topics stay packed at the front and the table
    /// can shrink; may hold stale entries (slots reused or cut off), skipped when popped.
    free_topics: BinaryHeap<Reverse<u32>>,
    /// Topics whose slots were freed so far (the server gives memory back to the system now and
    /// then, when many were).
    topics_dropped: u64,
    names: HashMap<Arc<str>, TopicId>,
    /// Scratch space for encoding, reused across publishes.
    scratch: Vec<u8>,
    /// The live derived topics.
    derived: Vec<TopicId>,
    /// Publisher-given wire ids of retained events, each to the numeric id of the earliest event
    /// that carries it (Mercure: a reused id resumes after the first) and how many retained events
    /// carry it.
    custom_ids: HashMap<Box<str>, (u64, u32)>,
    /// Highest sequence number of an event that was not private and left the history.
    evicted_max_public_seq: Option<u64>,
    /// Sequence number from which events await a commit (`u64::MAX`: everything is visible).
    visible_end: u64,
}

/// Slices gathered for one vectored write at most; Linux's `IOV_MAX` is 1024, and past a few dozen
/// frames the write is large enough that more slices buy nothing.
pub const MAX_SLICES: usize = 64;

/// What [`Broadcast::gather`] put into the slice array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gathered {
    /// Slices filled.
    pub slices: usize,
    /// Bytes in them.
    pub bytes: usize,
    /// Where the cursor goes once all of it is written: past the last event gathered, or, when
    /// the walk ran out, to the end of what is visible. So a stream's cursor never stays behind
    /// events it may not read (a private event, or another topic's), whose eviction would then
    /// look like a loss.
    end: Cursor,
}

impl Broadcast {
    /// An empty log whose first id must be at least `start_id` (the wall clock in microseconds, or the
    /// id after the highest one a durable history holds). Ids below it may have come from an earlier
    /// run: a resume from one of them is told of a gap.
    pub fn new(limits: Limits, start_id: u64) -> Self {
        let start_id = start_id.max(1);
        Broadcast {
            limits,
            ring: VecDeque::new(),
            first_seq: 0,
            bytes: 0,
            index_bytes: 0,
            total_bytes: 0,
            next_id: start_id,
            evicted_max_id: start_id - 1,
            forgotten_max_id: start_id - 1,
            topics: Vec::new(),
            free_topics: BinaryHeap::new(),
            topics_dropped: 0,
            names: HashMap::new(),
            scratch: Vec::new(),
            visible_end: u64::MAX,
            derived: Vec::new(),
            custom_ids: HashMap::new(),
            evicted_max_public_seq: None,
        }
    }

    /// Events retained.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no event is retained.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Wire bytes retained.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Memory of the topic index the retained events need (see `index_bytes`), capped by the byte
    /// limit separately from the wire bytes.
    pub fn index_bytes(&self) -> usize {
        self.index_bytes
    }

    /// Topics dropped since the log began: the caller may return freed memory to the system after
    /// many.
    pub fn topics_dropped(&self) -> u64 {
        self.topics_dropped
    }

    /// Topics currently known (subscribed to or holding retained events).
    pub fn topic_count(&self) -> usize {
        self.names.len()
    }

    /// The newest id stored (or the one below the floor, before the first event); the next event's
    /// id must be above it.
    pub fn newest_id(&self) -> u64 {
        self.next_id - 1
    }

    fn next_seq(&self) -> u64 {
        self.first_seq + self.ring.len() as u64
    }

    fn entry(&self, seq: u64) -> &Entry {
        &self.ring[(seq - self.first_seq) as usize]
    }

    fn topic(&self, id: TopicId) -> &TopicLog {
        self.topics[id.index()].as_ref().expect("topic ids held by callers stay valid")
    }

    fn topic_mut(&mut self, id: TopicId) -> &mut TopicLog {
        self.topics[id.index()].as_mut().expect("topic ids held by callers stay valid")
    }

    /// The topic id for `name`, creating its (empty) index if needed. A new topic has no subscriber
    /// yet, so it is charged to the history's index until one acquires it.
    fn intern(&mut self, name: &str) -> TopicId {
        self.intern_as(name, true)
    }

    /// [`Broadcast::intern`]; a new topic is offered to the live derived topics if `named`.
    fn intern_as(&mut self, name: &str, named: bool) -> TopicId {
        if let Some(&id) = self.names.get(name) {
            return id;
        }
        let name: Arc<str> = name.into();
        self.index_bytes += topic_charge(&name);
        let log = TopicLog {
            name: Arc::clone(&name),
            events: VecDeque::new(),
            total_bytes: 0,
            refs: 0,
            // A topic that had an index before and lost it must not forget that it lost events.
            evicted_max_id: self.forgotten_max_id,
            evicted_max_seq: None,
            evicted_max_public_seq: None,
            kind: TopicKind::Named { derived: Vec::new() },
        };
        let id = match self.take_free_slot() {
            Some(slot) => {
                self.topics[slot as usize] = Some(Box::new(log));
                TopicId(slot)
            }
            None => {
                self.topics.push(Some(Box::new(log)));
                TopicId(u32::try_from(self.topics.len() - 1).expect("fewer than 2^32 topics"))
            }
        };
        self.names.insert(Arc::clone(&name), id);
        // Every live derived topic decides once whether it takes the new name in.
        for index in 0..if named { self.derived.len() } else { 0 } {
            let d = self.derived[index];
            let takes = match &self.topic(d).kind {
                TopicKind::Derived { filter, .. } => filter.matches(&name),
                TopicKind::Named { .. } => false,
            };
            if takes {
                self.link(id, d);
            }
        }
        id
    }

    /// Records that derived topic `d` takes in named topic `t`.
    fn link(&mut self, t: TopicId, d: TopicId) {
        if let TopicKind::Named { derived } = &mut self.topic_mut(t).kind {
            derived.push(d);
        }
        if let TopicKind::Derived { members, .. } = &mut self.topic_mut(d).kind {
            members.push(t);
        }
    }

    /// A derived topic for `key` (unique among derived topics; the caller's canonical description of
    /// the filter), made with `filter` if it does not exist yet, held until [`Broadcast::release`].
    ///
    /// Its events are those of every named topic the filter takes in (only the private ones if
    /// `private_only`), retained ones included, so a subscriber to it resumes and is woken like a
    /// subscriber to a named topic. The filter sees each named topic once, now or when it first
    /// appears; a second subscriber with the same key shares the first one's topic and costs no
    /// evaluation.
    pub fn acquire_derived(
        &mut self,
        key: &str,
        private_only: bool,
        filter: impl FnOnce() -> Box<dyn TopicFilter>,
    ) -> TopicId {
        // NUL never appears in a topic name (neither ssed's alphabet nor the hub's rules allow
        // control characters), so derived keys cannot collide with named topics.
        let name = format!("\0{}{key}", if private_only { "private\0" } else { "route\0" });
        if let Some(&id) = self.names.get(name.as_str()) {
            self.topic_mut(id).refs += 1;
            return id;
        }
        let filter = filter();
        let named: Vec<TopicId> = self
            .topics
            .iter()
            .enumerate()
            .filter_map(|(i, log)| match log.as_deref() {
                Some(TopicLog { kind: TopicKind::Named { .. }, name, .. }) if filter.matches(name) => {
                    Some(TopicId(i as u32))
                }
                _ => None,
            })
            .collect();
        let id = self.intern_as(&name, false);
        self.index_bytes -= topic_charge(&name);
        let evicted_max_id = self.evicted_max_id;
        let log = self.topic_mut(id);
        log.refs = 1;
        log.kind = TopicKind::Derived { filter, private_only, members: Vec::new() };
        // Which of the events that already left it would have taken in is not known: a resume from
        // before any of them is told of a gap.
        log.evicted_max_id = evicted_max_id;
        self.derived.push(id);
        for &t in &named {
            self.link(t, id);
        }
        // Index the retained events it takes in, oldest first, as if it had been there all along.
        let first_seq = self.first_seq;
        let mut total = 0;
        let mut events = VecDeque::new();
        for (i, entry) in self.ring.iter_mut().enumerate() {
            let takes = (!private_only || entry.flags & PRIVATE != 0)
                && entry.topics.as_slice().iter().any(|t| named.binary_search(t).is_ok());
            if takes {
                total += entry.wire.len() as u64;
                events.push_back((first_seq + i as u64, total));
                entry.topics.add(id);
            }
        }
        self.index_bytes += events.len() * INDEX_ENTRY_BYTES;
        let log = self.topic_mut(id);
        log.total_bytes = total;
        log.events = events;
        id
    }

    /// Takes a derived topic apart once nobody holds it: out of every event and named topic that
    /// refers to it, then its slot is free.
    fn dismantle(&mut self, d: TopicId) {
        let log = self.topics[d.index()].take().expect("a live derived topic");
        self.derived.retain(|&x| x != d);
        self.names.remove(&log.name);
        self.index_bytes -= log.events.len() * INDEX_ENTRY_BYTES;
        for &(seq, _) in &log.events {
            let at = (seq - self.first_seq) as usize;
            self.ring[at].topics.remove(d);
        }
        if let TopicKind::Derived { members, .. } = &log.kind {
            for &t in members {
                if let Some(TopicLog { kind: TopicKind::Named { derived }, .. }) =
                    self.topics[t.index()].as_deref_mut()
                {
                    derived.retain(|&x| x != d);
                }
            }
        }
        self.topics_dropped += 1;
        self.free_topics.push(Reverse(d.0));
        self.shrink_topic_tables();
    }

    /// The lowest free slot of the topic table, skipping stale entries.
    fn take_free_slot(&mut self) -> Option<u32> {
        while let Some(Reverse(slot)) = self.free_topics.pop() {
            if self.topics.get(slot as usize).is_some_and(Option::is_none) {
                return Some(slot);
            }
        }
        None
    }

    fn drop_topic_if_unused(&mut self, id: TopicId) {
        let log = self.topic(id);
        if log.refs == 0 && log.events.is_empty() {
            let log = self.topics[id.index()].take().expect("checked above");
            self.index_bytes -= topic_charge(&log.name);
            if let TopicKind::Named { derived } = &log.kind {
                for &d in derived {
                    if let Some(TopicLog { kind: TopicKind::Derived { members, .. }, .. }) =
                        self.topics[d.index()].as_deref_mut()
                    {
                        members.retain(|&x| x != id);
                    }
                }
            }
            self.forgotten_max_id = self.forgotten_max_id.max(log.evicted_max_id);
            self.names.remove(&log.name);
            self.topics_dropped += 1;
            self.free_topics.push(Reverse(id.0));
            self.shrink_topic_tables();
        }
    }

    /// Gives back the memory of a topic table that a flood of names grew: trailing free slots are
    /// cut off, and the table, the name map and the free list shrink once they are mostly empty.
    /// Each shrink halves at least, so the cost is amortised over the drops that made it possible.
    fn shrink_topic_tables(&mut self) {
        while self.topics.last().is_some_and(Option::is_none) {
            self.topics.pop();
        }
        let live = self.names.len();
        if self.topics.capacity() > 4 * self.topics.len().max(16) {
            self.topics.shrink_to(2 * self.topics.len());
        }
        if self.names.capacity() > 4 * live.max(16) {
            self.names.shrink_to(2 * live);
        }
        if self.free_topics.len() > 2 * (self.topics.len() - live) + 16 {
            let topics = &self.topics;
            self.free_topics.retain(|&Reverse(s)| topics.get(s as usize).is_some_and(Option::is_none));
            self.free_topics.shrink_to_fit();
        }
    }

    /// Resolves subscriber topic names into a [`Selection`], holding each topic until
    /// [`Broadcast::release`]. No names means every topic.
    pub fn acquire(&mut self, names: &[&str]) -> Selection {
        let mut ids: Vec<TopicId> = names.iter().map(|n| self.intern(n)).collect();
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            let log = self.topic_mut(id);
            log.refs += 1;
            if log.refs == 1 {
                // Now the subscriber's cost, not the history's.
                let charge = topic_charge(&log.name);
                self.index_bytes -= charge;
            }
        }
        match ids.len() {
            0 => Selection::All,
            1 => Selection::One(ids[0]),
            _ => Selection::Many(ids.into_boxed_slice()),
        }
    }

    /// Lets go of a selection made by [`Broadcast::acquire`].
    pub fn release(&mut self, selection: &Selection) {
        for &id in selection.topics() {
            self.release_topic(id);
        }
    }

    /// Lets go of what a subscription holds: its topics and its rights.
    pub fn release_subscription(&mut self, sub: &Subscription) {
        self.release(sub.selection());
        self.release_rights(sub.rights());
    }

    /// Lets go of the derived topic of [`Rights::Matching`].
    pub fn release_rights(&mut self, rights: Rights) {
        if let Rights::Matching(id) = rights {
            self.release_topic(id);
        }
    }

    fn release_topic(&mut self, id: TopicId) {
        let log = self.topic_mut(id);
        log.refs -= 1;
        if matches!(log.kind, TopicKind::Derived { .. }) {
            if log.refs == 0 {
                self.dismantle(id);
            }
            return;
        }
        if log.refs == 0 {
            let charge = topic_charge(&log.name);
            self.index_bytes += charge;
        }
        self.drop_topic_if_unused(id);
    }

    /// Whether an event with `id` may be stored next: its id must be strictly above the newest.
    ///
    /// [`Broadcast::insert`] checks this itself; a caller that writes the event elsewhere first (the
    /// durable history) checks before, so a refused event is stored nowhere.
    pub fn check_id(&self, id: u64) -> Result<(), PublishError> {
        // `u64::MAX` is refused too: the id after it does not exist.
        if id < self.next_id || id == u64::MAX {
            return Err(PublishError::IdNotAbove { id, newest: self.newest_id() });
        }
        Ok(())
    }

    /// Encodes an event with `id` into its wire bytes, refusing one larger than the whole history.
    pub fn encode(&mut self, event: &Event, id: u64) -> Result<Encoded, PublishError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let urn;
        let wire_id = match event.wire_id() {
            Some(text) => Some(text),
            None if event.is_hub() => {
                urn = format!("{URN_PREFIX}{id}");
                Some(urn.as_str())
            }
            None => None,
        };
        let mut flags = if event.is_private() { PRIVATE } else { 0 };
        if event.wire_id().is_some() {
            flags |= CUSTOM_ID;
        }
        let fields = sse::Fields {
            id: Some(id),
            wire_id,
            event_type: event.event_type(),
            retry_ms: event.retry_ms(),
            data: event.data(),
        };
        sse::encode_frame(&fields, &mut scratch);
        let mut wire = Vec::with_capacity(scratch.len() + chunk::MAX_CHUNK_OVERHEAD);
        chunk::push_chunk_header(scratch.len(), &mut wire);
        let frame_start = u8::try_from(wire.len()).expect("a chunk header is at most 18 bytes");
        wire.extend_from_slice(&scratch);
        wire.extend_from_slice(b"\r\n");
        self.scratch = scratch;
        if wire.len() > self.limits.bytes {
            return Err(PublishError::TooLarge);
        }
        Ok(Encoded { id, wire: wire.into_boxed_slice(), frame_start, flags })
    }

    /// Stores an encoded event under `topics` as stored at wall-clock time `stored_at` (microseconds),
    /// evicting the oldest events past the limits, and returns the topic ids whose subscribers the
    /// caller wakes.
    ///
    /// The id the event was encoded with must be above the newest ([`Broadcast::check_id`]);
    /// otherwise nothing is stored and the error says so. A `stored_at` below the previous event's is
    /// taken as the previous event's, so a wall clock that went back cannot make an event expire
    /// before an older one.
    ///
    /// The event stays invisible to subscribers until [`Broadcast::commit`], so a durable history can
    /// put it on disk first; [`Broadcast::rollback`] drops it instead.
    pub fn insert(
        &mut self,
        topics: &[&str],
        encoded: Encoded,
        stored_at: u64,
    ) -> Result<&[TopicId], PublishError> {
        self.check_id(encoded.id)?;
        let stored_at = stored_at.max(self.ring.back().map_or(0, |e| e.stored_at));
        let mut ids: Vec<TopicId> = topics.iter().map(|n| self.intern(n)).collect();
        for i in 0..ids.len() {
            if let TopicKind::Named { derived } = &self.topic(ids[i]).kind {
                for &d in derived {
                    let private_only =
                        matches!(self.topic(d).kind, TopicKind::Derived { private_only: true, .. });
                    if !private_only || encoded.flags & PRIVATE != 0 {
                        ids.push(d);
                    }
                }
            }
        }
        let topic_ids = EventTopics::new(ids);
        let seq = self.next_seq();
        let size = encoded.wire.len() as u64;
        for &t in topic_ids.as_slice() {
            let log = self.topic_mut(t);
            log.total_bytes += size;
            let total = log.total_bytes;
            log.events.push_back((seq, total));
        }
        self.ring.push_back(Entry {
            id: encoded.id,
            stored_at,
            total_before: self.total_bytes,
            topics: topic_ids,
            wire: encoded.wire,
            frame_start: encoded.frame_start,
            flags: encoded.flags,
        });
        if encoded.flags & CUSTOM_ID != 0 {
            let entry = self.ring.back().expect("just pushed");
            if let Some(text) = entry.wire_id() {
                self.custom_ids.entry(text.into()).or_insert((encoded.id, 0)).1 += 1;
            }
        }
        self.total_bytes += size;
        self.bytes += size as usize;
        self.index_bytes += self.ring.back().map_or(0, |e| e.topics.as_slice().len()) * INDEX_ENTRY_BYTES;
        self.next_id = encoded.id + 1;
        // The new event itself always stays: `encode` refused one whose wire bytes alone exceed the
        // limit, and its index entries are at most a few kilobytes (64 topics of 128 bytes).
        while self.ring.len() > 1
            && (self.ring.len() > self.limits.events
                || self.bytes > self.limits.bytes
                || self.index_bytes > self.limits.bytes)
        {
            self.evict_oldest();
        }
        Ok(self.ring.back().expect("the new event fits the limits alone").topics.as_slice())
    }

    /// Encodes and stores an event whose id was given elsewhere (read back from the durable
    /// history or from the cluster's stream), under its own topics, stored at `stored_at`.
    pub fn append(&mut self, event: &Event, id: u64, stored_at: u64) -> Result<&[TopicId], PublishError> {
        let encoded = self.encode(event, id)?;
        let topics: Vec<&str> = event.topics().iter().map(String::as_str).collect();
        self.insert(&topics, encoded, stored_at)
    }

    /// Encodes and stores an event under `topics` with the next clock id, stored at `now_micros`, as
    /// the server does for a history that lives only in memory; the tests' shorthand.
    #[cfg(test)]
    pub fn publish(
        &mut self,
        topics: &[&str],
        event: &Event,
        now_micros: u64,
    ) -> Result<(EventId, &[TopicId]), PublishError> {
        let id = crate::ids::ClockIds.next(self.newest_id(), now_micros);
        let encoded = self.encode(event, id)?;
        let topics = self.insert(topics, encoded, now_micros)?;
        Ok((EventId(id), topics))
    }

    /// Makes every inserted event visible to subscribers.
    pub fn commit(&mut self) {
        self.visible_end = u64::MAX;
    }

    /// Marks the start of events that need a commit before subscribers may see them.
    pub fn hold(&mut self) {
        if self.visible_end == u64::MAX {
            self.visible_end = self.next_seq();
        }
    }

    /// Drops the events inserted since [`Broadcast::hold`] that were never committed (their record
    /// could not be made durable). Events they evicted stay evicted.
    pub fn rollback(&mut self) {
        if self.visible_end == u64::MAX {
            return;
        }
        while self.next_seq() > self.visible_end.max(self.first_seq) {
            let entry = self.ring.pop_back().expect("uncommitted entries exist");
            self.forget_custom_id(&entry);
            self.bytes -= entry.wire.len();
            self.index_bytes -= entry.topics.as_slice().len() * INDEX_ENTRY_BYTES;
            self.total_bytes -= entry.wire.len() as u64;
            for &t in entry.topics.as_slice() {
                let log = self.topic_mut(t);
                log.events.pop_back();
                log.total_bytes -= entry.wire.len() as u64;
                self.drop_topic_if_unused(t);
            }
        }
        self.visible_end = u64::MAX;
    }

    /// Evicts every event stored before wall-clock time `cutoff` (microseconds; `--history-age`).
    /// The ids play no part: they need not follow the clock.
    pub fn evict_below(&mut self, cutoff: u64) {
        while self.ring.front().is_some_and(|e| e.stored_at < cutoff) {
            self.evict_oldest();
        }
    }

    /// The oldest retained id, if any.
    pub fn oldest_id(&self) -> Option<u64> {
        self.ring.front().map(|e| e.id)
    }

    /// When the oldest retained event was stored (wall-clock microseconds), if any: the next to
    /// expire under `--history-age`.
    pub fn oldest_stored_at(&self) -> Option<u64> {
        self.ring.front().map(|e| e.stored_at)
    }

    /// Forgets everything up to `id`: the retained events leave, and every topic (the ones that come
    /// later too) counts the ids up to `id` as lost, so a resume from anywhere before it is told of
    /// the gap. For a history that learns it missed events it cannot name: a cluster node whose
    /// Redis trimmed entries before the node read them. (The log has no way to mark a gap in its
    /// middle, so what it held before the gap goes as well.)
    pub fn forget_up_to(&mut self, id: u64) {
        while !self.ring.is_empty() {
            self.evict_oldest();
        }
        self.evicted_max_id = self.evicted_max_id.max(id);
        self.forgotten_max_id = self.forgotten_max_id.max(id);
        for log in self.topics.iter_mut().flatten() {
            log.evicted_max_id = log.evicted_max_id.max(id);
        }
        self.raise_next_id(id.saturating_add(1));
    }

    /// Lets later ids start no lower than `id` (a restart whose clock is behind the history on disk).
    pub fn raise_next_id(&mut self, id: u64) {
        self.next_id = self.next_id.max(id);
    }

    /// Drops a leaving event's publisher-given id from the map, if it is the one the map points at.
    fn forget_custom_id(&mut self, entry: &Entry) {
        if entry.flags & CUSTOM_ID == 0 {
            return;
        }
        let Some(text) = entry.wire_id() else { return };
        let Some((earliest, count)) = self.custom_ids.get_mut(text) else { return };
        *count -= 1;
        if *count > 0 {
            if *earliest == entry.id {
                // A reused id (rare): the next retained event that carries it is now the earliest.
                let next = self.ring.iter().find(|e| e.flags & CUSTOM_ID != 0 && e.wire_id() == Some(text));
                *earliest = next.map_or(*earliest, |e| e.id);
            }
            return;
        }
        self.custom_ids.remove(text);
        if self.custom_ids.capacity() > 4 * self.custom_ids.len().max(16) {
            self.custom_ids.shrink_to(2 * self.custom_ids.len());
        }
    }

    /// The numeric id a `Last-Event-ID` names: a publisher's own id of a retained event (the earliest
    /// carrying it), the hub's `urn:ssed:` form, or a decimal id; `None` when it names none of them
    /// (an unknown or evicted custom id, or garbage).
    pub fn resolve_id(&self, text: &str) -> Option<u64> {
        if let Some(&(id, _)) = self.custom_ids.get(text) {
            return Some(id);
        }
        let digits = text.strip_prefix(URN_PREFIX).unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The id subscribers saw for numeric id `id` of a retained event (its custom or `urn:` id),
    /// or `None` when it went out as the number itself or is not retained.
    pub fn wire_id_of(&self, id: u64) -> Option<String> {
        let at = self.ring.partition_point(|e| e.id < id);
        let entry = self.ring.get(at).filter(|e| e.id == id)?;
        entry.wire_id().map(str::to_string)
    }

    fn evict_oldest(&mut self) {
        let entry = self.ring.pop_front().expect("evicting from a non-empty history");
        self.forget_custom_id(&entry);
        let seq = self.first_seq;
        self.first_seq += 1;
        if entry.flags & PRIVATE == 0 {
            self.evicted_max_public_seq = Some(seq);
        }
        self.bytes -= entry.wire.len();
        self.index_bytes -= entry.topics.as_slice().len() * INDEX_ENTRY_BYTES;
        self.evicted_max_id = entry.id;
        for &t in entry.topics.as_slice() {
            let log = self.topic_mut(t);
            let front = log.events.pop_front();
            debug_assert_eq!(front.map(|(s, _)| s), Some(seq));
            if log.events.capacity() > 4 * log.events.len().max(4) {
                // A subscribed topic outlives its events: do not keep the index a burst grew.
                log.events.shrink_to(2 * log.events.len());
            }
            log.evicted_max_id = entry.id;
            log.evicted_max_seq = Some(seq);
            if entry.flags & PRIVATE == 0 {
                log.evicted_max_public_seq = Some(seq);
            }
            self.drop_topic_if_unused(t);
        }
    }

    /// Where a subscriber with `last_event_id` starts, and whether it must be told of a gap.
    ///
    /// Without an id, or with one above the newest given out, it starts live. Otherwise it starts at
    /// the first retained event above the id; if any event of its topics above the id has left the
    /// history (or may have existed before this log), the gap is reported with the oldest id retained
    /// in those topics (the next id to be given out when none is).
    pub fn resume(&self, selection: &Selection, last_event_id: Option<u64>) -> Resume {
        // Events held for a commit are not published yet: a subscriber that starts now must get them
        // when they become visible, since their publishers have not had their answer.
        let live_from = self.next_seq().min(self.visible_end);
        let live = Resume { cursor: Cursor { seq: live_from, offset: 0 }, gap: None, live_from };
        let Some(last) = last_event_id else { return live };
        if last > self.newest_id() {
            return live;
        }
        let seq = self.first_seq + self.ring.partition_point(|e| e.id <= last) as u64;
        let cursor = Cursor { seq, offset: 0 };
        let lost_up_to = match selection {
            Selection::All => self.evicted_max_id,
            _ => selection.topics().iter().map(|&t| self.topic(t).evicted_max_id).max().unwrap_or(0),
        };
        let gap = (lost_up_to > last).then(|| {
            let oldest = match selection {
                Selection::All => self.ring.front().map(|e| e.id),
                _ => selection
                    .topics()
                    .iter()
                    .filter_map(|&t| self.topic(t).events.front().map(|&(s, _)| self.entry(s).id))
                    .min(),
            };
            (last, oldest.unwrap_or(self.next_id))
        });
        Resume { cursor, gap, live_from }
    }

    /// Whether an event the subscription still needs has left the history (the subscriber must go).
    ///
    /// Private events it may not read are not needed: a reader whose socket is full, with its
    /// cursor before some of them, is not cut when they leave while what it reads is still there.
    /// With [`Rights::Matching`] the check may still cut early: a private event of its topics and
    /// one its rights cover, both gone past its cursor, count as one it could read.
    pub fn lost(&self, sub: &Subscription) -> bool {
        let cursor = &sub.cursor;
        if cursor.seq >= self.first_seq {
            return false;
        }
        let gone = |seq: Option<u64>| seq.is_some_and(|s| s >= cursor.seq);
        // Whether private events it may read left, given that some of its topics' did (`any`).
        let private = |any: bool| match sub.rights {
            Rights::Public => false,
            Rights::All => any,
            Rights::Matching(d) => any && gone(self.topic(d).evicted_max_seq),
        };
        match &sub.selection {
            Selection::All => gone(self.evicted_max_public_seq) || private(true),
            selection => selection.topics().iter().any(|&t| {
                let log = self.topic(t);
                gone(log.evicted_max_public_seq) || private(gone(log.evicted_max_seq))
            }),
        }
    }

    /// Unsent wire bytes ahead of the subscription's cursor in its topics.
    ///
    /// For several topics this is the sum over them, which counts an event in two of them twice: an
    /// upper bound, cheap to compute, and only ever early in cutting a lagging subscriber.
    pub fn backlog(&self, sub: &Subscription) -> u64 {
        self.backlog_from(&sub.selection, &sub.cursor)
    }

    /// [`Broadcast::backlog`] of `selection` from `cursor`, from the running totals of the indexes
    /// (no walk over the events).
    fn backlog_from(&self, selection: &Selection, cursor: &Cursor) -> u64 {
        let before = match selection {
            Selection::All => {
                // The first retained event at or after the cursor; none: the cursor is caught up.
                let at = cursor.seq.saturating_sub(self.first_seq) as usize;
                self.ring.get(at).map_or(self.total_bytes, |e| e.total_before)
            }
            _ => {
                return selection
                    .topics()
                    .iter()
                    .map(|&t| {
                        let log = self.topic(t);
                        let at = lower_bound_from_back(&log.events, cursor.seq);
                        let before = if at == 0 {
                            log.events
                                .front()
                                .map_or(log.total_bytes, |&(s, cum)| cum - self.entry(s).wire.len() as u64)
                        } else {
                            log.events[at - 1].1
                        };
                        log.total_bytes - before
                    })
                    .sum::<u64>()
                    .saturating_sub(cursor.offset as u64);
            }
        };
        (self.total_bytes - before).saturating_sub(cursor.offset as u64)
    }

    /// How far a subscriber has fallen behind, in wire bytes, for `--max-lag`.
    ///
    /// Only events published since the stream started (from its `live_from` on) count: replaying
    /// retained events to a resuming client is a catch-up, not lag, however large. The event the
    /// cursor is in (or at) does not count either, so a single event larger than the limit reaches a
    /// reader that keeps reading. What is left is what was published while the subscriber was not
    /// taking it: a stalled reader, during its catch-up or live, and a reader slower than the
    /// publish rate both pass the limit once enough new events pile up.
    pub fn lag(&self, sub: &Subscription) -> u64 {
        let Some((current, _)) = self.pending(sub).next() else { return 0 };
        let from = Cursor { seq: (current + 1).max(sub.live_from), offset: 0 };
        self.backlog_from(&sub.selection, &from)
    }

    /// The events the subscription still needs, in order: each one's sequence number and the bytes
    /// of it still to write (the first cut by the cursor's offset), in the subscription's framing.
    ///
    /// [`Broadcast::gather`], [`Broadcast::advance`] and [`Broadcast::lag`] all walk this one
    /// sequence, so whatever decides which events a subscriber gets (its topics today) is decided
    /// here, once, for all of them.
    fn pending<'a>(&'a self, sub: &Subscription) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
        let Cursor { seq: at, offset } = sub.cursor;
        let framing = sub.framing;
        let rights = sub.rights;
        self.walk(&sub.selection, at).filter(move |&seq| self.readable(seq, rights)).map(move |seq| {
            let bytes = self.entry(seq).bytes(framing);
            (seq, if seq == at { &bytes[offset.min(bytes.len())..] } else { bytes })
        })
    }

    /// Whether a subscriber with `rights` may read the event at `seq`: a public one, or a private one
    /// its rights cover.
    fn readable(&self, seq: u64, rights: Rights) -> bool {
        let entry = self.entry(seq);
        entry.flags & PRIVATE == 0
            || match rights {
                Rights::Public => false,
                Rights::All => true,
                Rights::Matching(d) => entry.topics.contains(d),
            }
    }

    /// The sequence numbers of the retained, visible events of `selection` from `from` on.
    fn walk(&self, selection: &Selection, from: u64) -> Walk<'_> {
        let from = from.max(self.first_seq);
        let end = self.next_seq().min(self.visible_end);
        match selection {
            Selection::All => Walk::All { next: from, end },
            Selection::One(t) => {
                let events = &self.topic(*t).events;
                let at = lower_bound_from_back(events, from);
                Walk::One { events: events.range(at..), end }
            }
            Selection::Many(ts) => Walk::Many {
                heads: ts
                    .iter()
                    .map(|&t| {
                        let events = &self.topic(t).events;
                        (lower_bound_from_back(events, from), events)
                    })
                    .collect(),
                end,
            },
        }
    }

    /// Fills `slices` with the wire bytes the subscription still needs (the first one cut by its
    /// cursor's offset), up to the array's length and about `max_bytes`. The caller writes them and
    /// reports back through [`Broadcast::advance`].
    pub fn gather<'a>(
        &'a self,
        sub: &Subscription,
        slices: &mut [IoSlice<'a>],
        max_bytes: usize,
    ) -> Gathered {
        let mut gathered = Gathered { slices: 0, bytes: 0, end: sub.cursor };
        if slices.is_empty() {
            return gathered;
        }
        for (seq, bytes) in self.pending(sub) {
            slices[gathered.slices] = IoSlice::new(bytes);
            gathered.slices += 1;
            gathered.bytes += bytes.len();
            gathered.end = Cursor { seq: seq + 1, offset: 0 };
            if gathered.slices == slices.len() || gathered.bytes >= max_bytes {
                return gathered;
            }
        }
        // Nothing more it may read is visible.
        let end = self.next_seq().min(self.visible_end);
        if gathered.end.seq < end {
            gathered.end = Cursor { seq: end, offset: 0 };
        }
        gathered
    }

    /// Moves the subscription's cursor past `written` bytes of what [`Broadcast::gather`] returned
    /// as `gathered`. With all of it written (nothing, when nothing was gathered) the cursor goes
    /// to the gathered end, past what the subscription may not read.
    pub fn advance(&self, sub: &mut Subscription, gathered: &Gathered, written: usize) {
        if written >= gathered.bytes {
            sub.cursor = gathered.end;
            return;
        }
        if written == 0 {
            return;
        }
        // A short write: walk the same events again to find where it stopped.
        let mut left = written;
        let start = sub.cursor;
        let mut cursor = start;
        for (seq, rest) in self.pending(sub) {
            if left >= rest.len() {
                left -= rest.len();
                cursor = Cursor { seq: seq + 1, offset: 0 };
                if left == 0 {
                    break;
                }
            } else {
                let offset = if seq == start.seq { start.offset } else { 0 };
                cursor = Cursor { seq, offset: offset + left };
                break;
            }
        }
        sub.cursor = cursor;
    }

    /// Whether the subscription has nothing left to send.
    #[cfg(test)]
    pub fn caught_up(&self, sub: &Subscription) -> bool {
        self.pending(sub).next().is_none()
    }
}

/// The sequence numbers of one selection's events in a range, in order ([`Broadcast::walk`]).
enum Walk<'a> {
    /// Every event: the range itself.
    All { next: u64, end: u64 },
    /// One topic: its index.
    One { events: std::collections::vec_deque::Iter<'a, (u64, u64)>, end: u64 },
    /// Several topics: a k-way merge over their indexes, `(next position, index)` each, an event in
    /// several of them yielded once. The minimum is found with a linear scan since k is small.
    Many { heads: Vec<(usize, &'a VecDeque<(u64, u64)>)>, end: u64 },
}

impl Iterator for Walk<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match self {
            Walk::All { next, end } => {
                let seq = *next;
                (seq < *end).then(|| {
                    *next += 1;
                    seq
                })
            }
            // The index is ascending: once one is past the end, so are the rest.
            Walk::One { events, end } => events.next().map(|&(seq, _)| seq).filter(|seq| seq < end),
            Walk::Many { heads, end } => {
                let next = heads.iter().filter_map(|(at, events)| events.get(*at).map(|&(s, _)| s)).min()?;
                if next >= *end {
                    return None;
                }
                for (at, events) in heads.iter_mut() {
                    if events.get(*at).is_some_and(|&(s, _)| s == next) {
                        *at += 1;
                    }
                }
                Some(next)
            }
        }
    }
}

/// What a topic nobody subscribes to costs the history's index.
fn topic_charge(name: &str) -> usize {
    TOPIC_BYTES + name.len()
}

/// The index of the first entry with a sequence number at or above `seq`.
///
/// Subscribers are nearly always at or near the newest event, so the search gallops from the back
/// (O(log distance)) instead of bisecting the whole index.
fn lower_bound_from_back(events: &VecDeque<(u64, u64)>, seq: u64) -> usize {
    let len = events.len();
    let mut step = 1;
    let mut hi = len;
    while hi > 0 {
        let probe = hi.saturating_sub(step);
        if events[probe].0 < seq {
            // The answer lies in (probe, hi].
            let lo = probe + 1;
            let (mut low, mut high) = (lo, hi);
            while low < high {
                let mid = low + (high - low) / 2;
                if events[mid].0 < seq {
                    low = mid + 1;
                } else {
                    high = mid;
                }
            }
            return low;
        }
        hi = probe;
        step *= 2;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Draft;

    const BIG: Limits = Limits { events: 1000, bytes: 1 << 30 };

    /// An event carrying `data` (its topics are the ones `publish` is given).
    fn event(data: &str) -> Event {
        let draft = Draft { topics: vec!["t".into()], data: data.as_bytes().to_vec(), ..Draft::default() };
        draft.validate(usize::MAX).expect("a valid event")
    }

    fn log(limits: Limits) -> Broadcast {
        Broadcast::new(limits, 100)
    }

    #[test]
    fn forgetting_up_to_an_id_reports_the_gap_to_every_resume_before_it() {
        let mut log = log(BIG);
        let held = log.acquire(&["t"]);
        let first = publish(&mut log, &["t"], "a");
        let last = publish(&mut log, &["t"], "b");
        let lost_up_to = last + 50;
        log.forget_up_to(lost_up_to);
        assert_eq!(log.len(), 0, "what it held before the gap goes too");
        assert!(log.newest_id() >= lost_up_to, "ids continue above the forgotten ones");
        for (selection, what) in [(held.clone(), "a held topic"), (Selection::All, "every topic")] {
            for from in [first, last, lost_up_to - 1] {
                let resume = log.resume(&selection, Some(from));
                assert_eq!(resume.gap.map(|(l, _)| l), Some(from), "{what} from {from}");
            }
            assert_eq!(
                log.resume(&selection, Some(lost_up_to)).gap,
                None,
                "{what}: nothing after it was lost"
            );
        }
        let later = log.acquire(&["new"]);
        assert!(log.resume(&later, Some(last)).gap.is_some(), "a topic first named after the gap");
        let next = log.newest_id() + 1;
        let encoded = log.encode(&event("c"), next).unwrap();
        log.insert(&["t"], encoded, 0).expect("ids above the gap are taken");
    }

    fn publish(log: &mut Broadcast, topics: &[&str], data: &str) -> u64 {
        let event = event(data);
        log.publish(topics, &event, 0).expect("fits").0.get()
    }

    /// A subscription to `selection` at `cursor`, live from the start (its lag counts everything).
    fn at(selection: &Selection, cursor: &Cursor, framing: Framing) -> Subscription {
        Subscription {
            selection: selection.clone(),
            rights: Rights::Public,
            framing,
            cursor: *cursor,
            live_from: 0,
        }
    }

    /// Takes in topics that start with a prefix, counting its evaluations.
    struct Prefix(&'static str, Arc<std::sync::atomic::AtomicUsize>);

    impl TopicFilter for Prefix {
        fn matches(&self, topic: &str) -> bool {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            topic.starts_with(self.0)
        }
    }

    fn evaluations(counter: &Arc<std::sync::atomic::AtomicUsize>) -> usize {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn hub_event(data: &str, id: Option<&str>, private: bool) -> Event {
        let draft = Draft {
            topics: vec!["unused".into()],
            data: data.as_bytes().to_vec(),
            id: id.map(str::to_string),
            private,
            hub_topics: true,
            ..Draft::default()
        };
        draft.validate(usize::MAX).expect("a valid event")
    }

    fn publish_hub(log: &mut Broadcast, topics: &[&str], data: &str, id: Option<&str>, private: bool) -> u64 {
        log.publish(topics, &hub_event(data, id, private), 0).expect("fits").0.get()
    }

    fn data_in(text: &str) -> Vec<&str> {
        text.lines().filter_map(|l| l.strip_prefix("data: ")).collect()
    }

    /// Everything `sub` gets from the start of the log.
    fn from_start(log: &Broadcast, selection: &Selection, rights: Rights) -> String {
        let mut sub = at(selection, &Cursor { seq: 0, offset: 0 }, Framing::Raw).with_rights(rights);
        drain_sub(log, &mut sub)
    }

    #[test]
    fn a_derived_topic_takes_in_old_and_new_named_topics_evaluating_each_pair_once() {
        let mut log = log(BIG);
        publish(&mut log, &["books/1"], "b1");
        publish(&mut log, &["users/1"], "u1");
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&counter);
        let d = log.acquire_derived("books/*", false, || Box::new(Prefix("books/", c)));
        assert_eq!(evaluations(&counter), 2, "each named topic once");
        let selection = Selection::One(d);
        assert_eq!(data_in(&from_start(&log, &selection, Rights::Public)), ["b1"], "retained events");
        publish(&mut log, &["books/2"], "b2");
        publish(&mut log, &["users/2"], "u2");
        publish(&mut log, &["books/2", "users/2"], "both");
        assert_eq!(evaluations(&counter), 4, "two new names, evaluated once each");
        assert_eq!(data_in(&from_start(&log, &selection, Rights::Public)), ["b1", "b2", "both"]);
        // A second subscriber with the same key shares it: no evaluation, no new topic.
        let again = log.acquire_derived("books/*", false, || unreachable!("the filter exists"));
        assert_eq!(again, d);
        assert_eq!(evaluations(&counter), 4);
        // Resume and lag work as for a named topic.
        let second = log.oldest_id().unwrap() + 1;
        assert_eq!(log.resume(&selection, Some(second)).gap, None);
        log.release(&Selection::One(again));
        log.release(&selection);
        assert!(log.names.keys().all(|n| !n.starts_with('\0')), "taken apart once nobody holds it");
        assert!(log.derived.is_empty(), "and off the list every new topic is offered to");
        assert!(log.ring.iter().all(|e| !e.topics.contains(d)), "and out of every event");
        publish(&mut log, &["books/3"], "b3");
        assert_eq!(evaluations(&counter), 4, "a dismantled filter is never asked again");
    }

    #[test]
    fn a_derived_topic_made_after_evictions_indexes_the_retained_events_with_their_sizes_and_no_charge() {
        let mut log = log(Limits { events: 3, bytes: 1 << 30 });
        for data in ["a0", "b1", "a2", "a3-longer", "b4"] {
            publish(&mut log, &[&data[..1]], data);
        }
        assert!(log.first_seq > 0, "events were evicted");
        let before = log.index_bytes();
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&counter);
        let d = log.acquire_derived("a*", false, || Box::new(Prefix("a", c)));
        // Its retained events (a0 left), at their own sequence numbers, with their sizes.
        let selection = Selection::One(d);
        assert_eq!(data_in(&from_start(&log, &selection, Rights::Public)), ["a2", "a3-longer"]);
        let named = log.acquire(&["a"]);
        let start = Cursor { seq: 0, offset: 0 };
        let backlog = |sel: &Selection| log.backlog(&at(sel, &start, Framing::Chunked));
        assert_eq!(backlog(&selection), backlog(&named), "the same bytes as the named topic it took in");
        assert!(backlog(&selection) > 0);
        assert_eq!(
            log.index_bytes(),
            before + 2 * INDEX_ENTRY_BYTES - topic_charge("a"),
            "two index entries; a held topic is its subscriber's cost, not the history's"
        );
        log.release(&named);
        log.release(&selection);
        assert_eq!(log.index_bytes(), before, "all of it given back");
    }

    #[test]
    fn private_events_reach_only_the_rights_that_cover_one_of_their_topics_live_and_on_replay() {
        let mut log = log(BIG);
        publish_hub(&mut log, &["books/1"], "public", None, false);
        publish_hub(&mut log, &["books/9", "users/42/books/9"], "public-alt", None, false);
        publish_hub(&mut log, &["books/1", "users/42/books/1"], "private-alt", None, true);
        publish_hub(&mut log, &["books/2"], "private-other", None, true);
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&counter);
        let rights =
            Rights::Matching(log.acquire_derived("users/42/*", true, || Box::new(Prefix("users/42/", c))));
        let books = log.acquire(&["books/1", "books/2"]);
        assert_eq!(data_in(&from_start(&log, &books, Rights::Public)), ["public"]);
        assert_eq!(
            data_in(&from_start(&log, &books, Rights::All)),
            ["public", "private-alt", "private-other"]
        );
        assert_eq!(
            data_in(&from_start(&log, &books, rights)),
            ["public", "private-alt"],
            "replay: the alternate topic grants it"
        );
        publish_hub(&mut log, &["books/2", "users/42/x"], "live-alt", None, true);
        publish_hub(&mut log, &["books/2", "users/41/x"], "live-other", None, true);
        publish_hub(&mut log, &["books/2", "users/42/y"], "live-public", None, false);
        assert_eq!(
            data_in(&from_start(&log, &books, rights)),
            ["public", "private-alt", "live-alt", "live-public"]
        );
        assert_eq!(
            data_in(&from_start(&log, &Selection::All, Rights::Public)),
            ["public", "public-alt", "live-public"]
        );
        let private_index = log.topic(match rights {
            Rights::Matching(d) => d,
            _ => unreachable!(),
        });
        assert_eq!(private_index.events.len(), 2, "a rights topic indexes private events only");
        log.release_rights(rights);
        log.release(&books);
    }

    #[test]
    fn a_cursor_moves_past_what_it_may_not_read_so_its_eviction_is_no_loss() {
        let mut log = log(Limits { events: 3, bytes: 1 << 30 });
        let held = log.acquire(&["t"]);
        publish_hub(&mut log, &["t"], "seen", None, false);
        let mut sub = at(&held, &Cursor { seq: 0, offset: 0 }, Framing::Raw);
        assert_eq!(data_in(&drain_sub(&log, &mut sub)), ["seen"]);
        for i in 0..5 {
            publish_hub(&mut log, &["t"], &format!("secret{i}"), None, true);
        }
        assert!(!log.lost(&sub), "even before catching up, events it may not read are no loss");
        let behind = *sub.cursor();
        // What the loop does when it finds nothing to write: the empty gather moves the cursor.
        assert_eq!(drain_sub(&log, &mut sub), "");
        assert_ne!(*sub.cursor(), behind, "the cursor moved past them");
        assert!(!log.lost(&sub));
        assert_eq!(log.lag(&sub), 0);
        publish_hub(&mut log, &["t"], "next", None, false);
        assert_eq!(data_in(&drain_sub(&log, &mut sub)), ["next"], "catching up never skips what it may read");
    }

    #[test]
    fn the_custom_id_map_gives_its_memory_back_when_its_events_leave() {
        let mut log = log(Limits { events: 1000, bytes: 1 << 30 });
        for i in 0..1000 {
            publish_hub(&mut log, &["t"], "x", Some(&format!("id-{i}")), false);
        }
        assert_eq!(log.custom_ids.len(), 1000);
        let grown = log.custom_ids.capacity();
        for _ in 0..1000 {
            publish_hub(&mut log, &["t"], "x", None, false);
        }
        assert!(log.custom_ids.is_empty());
        assert!(log.custom_ids.capacity() <= 64, "{} of {grown} kept", log.custom_ids.capacity());
    }

    #[test]
    fn an_events_event_has_no_wire_id_of_its_own() {
        let mut log = log(BIG);
        let plain = publish(&mut log, &["t"], "numeric");
        assert_eq!(log.wire_id_of(plain), None, "it goes out as its number");
        assert_eq!(log.resolve_id(&plain.to_string()), Some(plain));
        assert!(log.custom_ids.is_empty());
    }

    #[test]
    fn a_full_socket_is_not_cut_for_private_events_it_may_not_read_leaving() {
        // Found by mercure::oracle_tests: an anonymous reader whose socket filled with its cursor
        // before private events was cut as soon as they left, every event it reads still there.
        let mut log = log(Limits { events: 3, bytes: 1 << 30 });
        let t = log.acquire(&["t"]);
        let all = log.acquire(&[]);
        let mut subs: Vec<Subscription> = [(&t, Rights::Public), (&all, Rights::Public), (&t, Rights::All)]
            .into_iter()
            .map(|(sel, rights)| at(sel, &log.resume(sel, None).cursor, Framing::Raw).with_rights(rights))
            .collect();
        publish_hub(&mut log, &["t"], "seen", None, false);
        for sub in &mut subs {
            assert_eq!(data_in(&drain_sub(&log, sub)), ["seen"]);
        }
        // Their sockets are full from here on: no write, no catch-up.
        publish_hub(&mut log, &["t"], "secret", None, true);
        publish_hub(&mut log, &["t"], "p1", None, false);
        publish_hub(&mut log, &["t"], "p2", None, false);
        publish_hub(&mut log, &["t"], "p3", None, false);
        assert_eq!(log.len(), 3, "\"secret\" left the history; p1, p2 and p3 are there");
        let (public_t, public_all, granted) = (&subs[0], &subs[1], &subs[2]);
        assert!(!log.lost(public_t), "a public reader of t needs none of what left");
        assert!(!log.lost(public_all), "nor one of every topic");
        assert!(log.lost(granted), "a reader of every private event lost one");
        assert_eq!(data_in(&drain_sub(&log, &mut subs[0])), ["p1", "p2", "p3"]);
        // A reader whose rights cover another topic lost none of what it may read either.
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&counter);
        let rights = Rights::Matching(log.acquire_derived("other", true, || Box::new(Prefix("other", c))));
        let mut narrow = at(&t, &Cursor { seq: 0, offset: 0 }, Framing::Raw).with_rights(rights);
        narrow.cursor = *subs[1].cursor();
        assert!(!log.lost(&narrow), "the private event that left was not one it may read");
        // A public event leaving is a loss for every reader.
        publish_hub(&mut log, &["t"], "p4", None, false);
        publish_hub(&mut log, &["t"], "p5", None, false);
        publish_hub(&mut log, &["t"], "p6", None, false);
        assert!(log.lost(&subs[1]));
    }

    #[test]
    fn custom_ids_go_out_as_given_and_resolve_to_the_earliest_retained_event() {
        let mut log = log(Limits { events: 3, bytes: 1 << 30 });
        let first = publish_hub(&mut log, &["t"], "a", Some("urn:uuid:1"), false);
        let second = publish_hub(&mut log, &["t"], "b", Some("urn:uuid:1"), false);
        let digits = publish_hub(&mut log, &["t"], "c", Some("42"), false);
        let all = from_start(&log, &Selection::All, Rights::Public);
        assert!(all.starts_with("id: urn:uuid:1\ndata: a\n\n"), "{all}");
        assert!(all.contains("id: 42\ndata: c"), "{all}");
        assert_eq!(log.resolve_id("urn:uuid:1"), Some(first), "a reused id names the earliest");
        assert_ne!(first, second);
        assert_eq!(log.resolve_id("42"), Some(digits), "a custom id before a decimal reading");
        assert_eq!(log.resolve_id(&first.to_string()), Some(first));
        assert_eq!(log.wire_id_of(second).as_deref(), Some("urn:uuid:1"));
        assert_eq!(log.resolve_id("nope"), None);
        // Without an id, a hub event goes out as urn:ssed:N, which resolves back.
        let plain = publish_hub(&mut log, &["t"], "d", None, false);
        assert_eq!(log.wire_id_of(plain), Some(format!("urn:ssed:{plain}")));
        assert_eq!(log.resolve_id(&format!("urn:ssed:{plain}")), Some(plain));
        // The first urn:uuid:1 left the history: the name now resolves to the later one.
        assert_eq!(log.resolve_id("urn:uuid:1"), Some(second));
        publish_hub(&mut log, &["t"], "e", None, false);
        assert_eq!(log.resolve_id("urn:uuid:1"), None, "gone with the event that carried it");
        assert!(log.custom_ids.len() <= 1);
    }

    /// Everything the cursor would receive, as text, delivered through gather/advance.
    fn drain(log: &Broadcast, selection: &Selection, cursor: &mut Cursor, framing: Framing) -> String {
        let mut sub = at(selection, cursor, framing);
        let text = drain_sub(log, &mut sub);
        *cursor = sub.cursor;
        text
    }

    /// Everything the subscription would receive, as text, delivered through gather/advance.
    fn drain_sub(log: &Broadcast, sub: &mut Subscription) -> String {
        let mut out = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let gathered = log.gather(sub, &mut slices, usize::MAX);
            for s in &slices[..gathered.slices] {
                out.extend_from_slice(s);
            }
            log.advance(sub, &gathered, gathered.bytes);
            if gathered.slices == 0 {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn ids_in(text: &str) -> Vec<u64> {
        text.lines().filter_map(|l| l.strip_prefix("id: ")).map(|v| v.parse().unwrap()).collect()
    }

    #[test]
    fn ids_follow_the_clock_and_strictly_increase() {
        let mut log = Broadcast::new(BIG, 1_000);
        let event = event("x");
        assert_eq!(log.publish(&["a"], &event, 0).unwrap().0.get(), 1_000);
        assert_eq!(
            log.publish(&["a"], &event, 500).unwrap().0.get(),
            1_001,
            "a clock behind never repeats an id"
        );
        assert_eq!(
            log.publish(&["a"], &event, 5_000).unwrap().0.get(),
            5_000,
            "ids jump ahead with the clock"
        );
        assert_eq!(log.publish(&["a"], &event, 5_000).unwrap().0.get(), 5_001);
    }

    #[test]
    fn stores_chunked_and_raw_frames() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a"]);
        let start = log.resume(&sel, None).cursor;
        let id = publish(&mut log, &["a"], "hi");
        let frame = format!("id: {id}\ndata: hi\n\n");
        let mut cursor = start;
        assert_eq!(
            drain(&log, &sel, &mut cursor, Framing::Chunked),
            format!("{:x}\r\n{frame}\r\n", frame.len())
        );
        let mut cursor = start;
        assert_eq!(drain(&log, &sel, &mut cursor, Framing::Raw), frame);
        assert!(log.caught_up(&at(&sel, &cursor, Framing::Raw)));
    }

    #[test]
    fn evicts_by_count() {
        let mut log = log(Limits { events: 3, bytes: 1 << 20 });
        let ids: Vec<u64> = (0..5).map(|i| publish(&mut log, &["a"], &i.to_string())).collect();
        assert_eq!(log.len(), 3);
        let sel = log.acquire(&["a"]);
        let mut resume = log.resume(&sel, Some(ids[0]));
        assert_eq!(resume.gap, Some((ids[0], ids[2])));
        assert_eq!(ids_in(&drain(&log, &sel, &mut resume.cursor, Framing::Raw)), &ids[2..]);
    }

    #[test]
    fn evicts_by_bytes() {
        let frame_len = {
            let mut probe = log(BIG);
            let before = probe.bytes();
            publish(&mut probe, &["a"], "0123456789");
            probe.bytes() - before
        };
        let mut log = log(Limits { events: 100, bytes: frame_len * 2 + frame_len / 2 });
        // Subscribed, the topic is not charged to the index, so only the wire bytes decide here.
        let _subscriber = log.acquire(&["a"]);
        let ids: Vec<u64> = (0..4).map(|_| publish(&mut log, &["a"], "0123456789")).collect();
        assert_eq!(log.len(), 2);
        assert!(log.bytes() <= frame_len * 2 + frame_len / 2);
        let sel = log.acquire(&[]);
        assert_eq!(log.resume(&sel, Some(ids[1])).gap, None, "nothing above ids[1] was lost");
        let mut resume = log.resume(&sel, Some(ids[0]));
        assert_eq!(resume.gap, Some((ids[0], ids[2])), "ids[1] was lost");
        assert_eq!(ids_in(&drain(&log, &sel, &mut resume.cursor, Framing::Raw)), &ids[2..]);
    }

    #[test]
    fn refuses_an_event_larger_than_the_history() {
        let mut log = log(Limits { events: 10, bytes: 64 });
        let event = event(&"x".repeat(100));
        assert_eq!(log.publish(&["a"], &event, 0).err(), Some(PublishError::TooLarge));
        assert!(log.is_empty());
    }

    #[test]
    fn resume_inside_the_window_has_no_gap() {
        let mut log = log(BIG);
        let ids: Vec<u64> = (0..5).map(|i| publish(&mut log, &["a"], &i.to_string())).collect();
        let sel = log.acquire(&["a"]);
        let mut resume = log.resume(&sel, Some(ids[2]));
        assert_eq!(resume.gap, None);
        assert_eq!(ids_in(&drain(&log, &sel, &mut resume.cursor, Framing::Chunked)), &ids[3..]);
    }

    #[test]
    fn resume_at_newest_or_above_is_live() {
        let mut log = log(BIG);
        let id = publish(&mut log, &["a"], "x");
        let sel = log.acquire(&["a"]);
        for last in [Some(id), Some(id + 1), Some(u64::MAX), None] {
            let mut resume = log.resume(&sel, last);
            assert_eq!(resume.gap, None, "{last:?}");
            assert_eq!(drain(&log, &sel, &mut resume.cursor, Framing::Raw), "", "{last:?}");
        }
    }

    #[test]
    fn resume_from_before_this_log_reports_a_gap() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a"]);
        assert_eq!(log.resume(&sel, Some(150)).gap, None, "an id above the newest given out (99) is live");
        assert_eq!(
            log.resume(&sel, Some(5)).gap,
            Some((5, 100)),
            "nothing retained: the next id is the oldest"
        );
        let id = publish(&mut log, &["a"], "x");
        let mut resume = log.resume(&sel, Some(5));
        assert_eq!(resume.gap, Some((5, id)), "ids 6..=99 may have come from an earlier run");
        assert_eq!(ids_in(&drain(&log, &sel, &mut resume.cursor, Framing::Raw)), vec![id]);
        assert_eq!(log.resume(&sel, Some(99)).gap, None, "the floor itself is known");
    }

    #[test]
    fn gap_is_per_topic() {
        let mut log = log(Limits { events: 2, bytes: 1 << 20 });
        let b0 = publish(&mut log, &["b"], "b0");
        let a0 = publish(&mut log, &["a"], "a0");
        let _a1 = publish(&mut log, &["a"], "a1"); // evicts b0
        let a_sel = log.acquire(&["a"]);
        assert_eq!(log.resume(&a_sel, Some(b0)).gap, None, "topic a lost nothing above b0");
        let b_sel = log.acquire(&["b"]);
        let oldest_next = log.newest_id() + 1;
        assert_eq!(log.resume(&b_sel, Some(b0 - 1)).gap, Some((b0 - 1, oldest_next)));
        let _ = a0;
    }

    #[test]
    fn a_dropped_topic_index_does_not_forget_its_losses() {
        let mut log = log(Limits { events: 1, bytes: 1 << 20 });
        let b0 = publish(&mut log, &["b"], "b0");
        publish(&mut log, &["a"], "a0"); // evicts b0; topic b has no events and no subscribers
        let sel = log.acquire(&["b"]);
        assert!(log.resume(&sel, Some(b0 - 1)).gap.is_some());
    }

    #[test]
    fn merges_several_topics_in_id_order_once_each() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a", "b"]);
        let mut cursor = log.resume(&sel, None).cursor;
        let mut expected = Vec::new();
        expected.push(publish(&mut log, &["a"], "1"));
        publish(&mut log, &["c"], "not mine");
        expected.push(publish(&mut log, &["b"], "2"));
        expected.push(publish(&mut log, &["a", "b"], "both"));
        expected.push(publish(&mut log, &["b"], "3"));
        expected.push(publish(&mut log, &["a"], "4"));
        assert_eq!(ids_in(&drain(&log, &sel, &mut cursor, Framing::Raw)), expected);
    }

    #[test]
    fn every_topic_selection_sees_everything() {
        let mut log = log(BIG);
        let sel = log.acquire(&[]);
        assert_eq!(sel, Selection::All);
        let mut cursor = log.resume(&sel, None).cursor;
        let ids: Vec<u64> = ["a", "b", "c"].iter().map(|t| publish(&mut log, &[t], t)).collect();
        assert_eq!(ids_in(&drain(&log, &sel, &mut cursor, Framing::Raw)), ids);
    }

    #[test]
    fn short_writes_resume_mid_frame() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a"]);
        let start = log.resume(&sel, None).cursor;
        for i in 0..10 {
            publish(&mut log, &["a"], &format!("event number {i}"));
        }
        let mut whole = start;
        let expected = drain(&log, &sel, &mut whole, Framing::Chunked);
        // Write 7 bytes at a time and check the bytes come out identical.
        let mut sub = at(&sel, &start, Framing::Chunked);
        let mut out = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let gathered = log.gather(&sub, &mut slices, usize::MAX);
            if gathered.slices == 0 {
                break;
            }
            let flat: Vec<u8> = slices[..gathered.slices].iter().flat_map(|s| s.iter().copied()).collect();
            let n = flat.len().min(7);
            out.extend_from_slice(&flat[..n]);
            log.advance(&mut sub, &gathered, n);
        }
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn writes_cut_by_the_slice_array_or_the_byte_cap_resume_at_the_next_event() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a"]);
        let start = log.resume(&sel, None).cursor;
        let ids: Vec<u64> =
            (0..MAX_SLICES + 5).map(|i| publish(&mut log, &["a", "b"], &format!("e{i}"))).collect();
        for (slices, max_bytes) in [(MAX_SLICES, usize::MAX), (3, usize::MAX), (MAX_SLICES, 1)] {
            let mut sub = at(&sel, &start, Framing::Raw);
            let mut out = String::new();
            loop {
                let mut array = [IoSlice::new(&[]); MAX_SLICES];
                let gathered = log.gather(&sub, &mut array[..slices], max_bytes);
                for s in &array[..gathered.slices] {
                    out.push_str(std::str::from_utf8(s).unwrap());
                }
                log.advance(&mut sub, &gathered, gathered.bytes);
                if gathered.slices == 0 {
                    break;
                }
            }
            assert_eq!(ids_in(&out), ids, "{slices} slices, {max_bytes} bytes: each event once, in order");
        }
    }

    #[test]
    fn short_writes_over_several_topics_walk_the_events_gathered() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a", "b"]);
        let start = Subscription::new(sel.clone(), Framing::Chunked, &log.resume(&sel, None));
        for i in 0..12 {
            let topics: &[&str] = [&["a"][..], &["c"], &["a", "b"], &["b"]][i % 4];
            publish(&mut log, topics, &format!("event {i}"));
        }
        let expected = drain_sub(&log, &mut start.clone());
        for step in [1, 5, 13] {
            let mut sub = start.clone();
            let mut out = Vec::new();
            loop {
                let mut slices = [IoSlice::new(&[]); 3];
                let gathered = log.gather(&sub, &mut slices, usize::MAX);
                if gathered.slices == 0 {
                    break;
                }
                let flat: Vec<u8> =
                    slices[..gathered.slices].iter().flat_map(|s| s.iter().copied()).collect();
                let n = flat.len().min(step);
                out.extend_from_slice(&flat[..n]);
                log.advance(&mut sub, &gathered, n);
            }
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{step} bytes a write");
            assert!(log.caught_up(&sub));
        }
        assert_eq!(ids_in(&expected).len(), 9, "each event of a or b once, none of c");
    }

    #[test]
    fn backlog_counts_unsent_bytes() {
        let mut log = log(BIG);
        let one = log.acquire(&["a"]);
        let all = log.acquire(&[]);
        let many = log.acquire(&["a", "b"]);
        let c_one = Subscription::new(one.clone(), Framing::Chunked, &log.resume(&one, None));
        let c_all = Subscription::new(all.clone(), Framing::Chunked, &log.resume(&all, None));
        let c_many = Subscription::new(many.clone(), Framing::Chunked, &log.resume(&many, None));
        assert_eq!(log.backlog(&c_one), 0);
        let before = log.bytes();
        publish(&mut log, &["a"], "x");
        let a_len = (log.bytes() - before) as u64;
        publish(&mut log, &["b"], "y");
        let total = log.bytes() as u64;
        assert_eq!(log.backlog(&c_one), a_len);
        assert_eq!(log.backlog(&c_all), total);
        assert_eq!(log.backlog(&c_many), total);
        let mut moved = c_one;
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let gathered = log.gather(&moved, &mut slices, usize::MAX);
        log.advance(&mut moved, &gathered, 3);
        assert_eq!(log.backlog(&moved), a_len - 3);
    }

    #[test]
    fn lost_when_the_next_needed_event_is_evicted() {
        let mut log = log(Limits { events: 2, bytes: 1 << 20 });
        let a = log.acquire(&["a"]);
        let b = log.acquire(&["b"]);
        let all = log.acquire(&[]);
        let ca = Subscription::new(a.clone(), Framing::Raw, &log.resume(&a, None));
        let cb = Subscription::new(b.clone(), Framing::Raw, &log.resume(&b, None));
        let call = Subscription::new(all.clone(), Framing::Raw, &log.resume(&all, None));
        publish(&mut log, &["a"], "1");
        publish(&mut log, &["a"], "2");
        assert!(!log.lost(&ca) && !log.lost(&cb) && !log.lost(&call));
        publish(&mut log, &["a"], "3");
        assert!(log.lost(&ca), "a's first event left");
        assert!(!log.lost(&cb), "b needed nothing that left");
        assert!(log.lost(&call));
    }

    #[test]
    fn topics_are_freed_when_unused() {
        let mut log = log(Limits { events: 1, bytes: 1 << 20 });
        let sel = log.acquire(&["a"]);
        publish(&mut log, &["a"], "1");
        publish(&mut log, &["b"], "2"); // evicts a's event
        log.release(&sel);
        assert!(!log.names.contains_key("a"));
        assert!(log.names.contains_key("b"), "b still has a retained event");
    }

    #[test]
    fn new_topic_names_are_capped_by_the_byte_limit_and_freed_with_their_events() {
        let limit = 64 * 1024;
        let mut log = log(Limits { events: 20, bytes: limit });
        let topics: Vec<String> = (0..64).map(|j| format!("{j:0>120}")).collect();
        for i in 0..2_000 {
            let names: Vec<String> = topics.iter().map(|t| format!("{i}-{t}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            publish(&mut log, &names, "x");
            assert!(log.index_bytes() <= limit + 64 * (TOPIC_BYTES + 128 + INDEX_ENTRY_BYTES));
        }
        assert!(log.len() < 10, "the names evicted old events: {} retained", log.len());
        let peak_slots = log.topics.capacity();
        // Plain events on one topic push the flood out; its topics and their table go with it.
        for _ in 0..20 {
            publish(&mut log, &["a"], "y");
        }
        assert_eq!(log.topic_count(), 1);
        // "a" took the lowest slot free when it came, and the table is cut back to it.
        assert!(log.topics.len() <= 64 * 10, "{} slots", log.topics.len());
        assert!(
            log.topics.capacity() <= 4 * log.topics.len().max(16),
            "{} of {peak_slots}",
            log.topics.capacity()
        );
        assert!(log.names.capacity() <= 64);
        assert_eq!(log.index_bytes(), topic_charge("a") + 20 * INDEX_ENTRY_BYTES);
        assert!(log.topics_dropped() >= 2_000 * 64 - 64 * 10);
    }

    #[test]
    fn an_event_whose_index_alone_passes_the_limit_is_still_kept() {
        let mut log = log(Limits { events: 10, bytes: 1000 });
        let names: Vec<String> = (0..64).map(|j| format!("topic-{j}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let id = publish(&mut log, &names, "x");
        assert!(log.index_bytes() > 1000);
        assert_eq!(log.len(), 1, "the newest event stays, however many topics it names");
        assert_eq!(log.topic_count(), 64);
        let sel = log.acquire(&["topic-7"]);
        assert_eq!(
            ids_in(&drain(&log, &sel, &mut log.resume(&sel, Some(id - 1)).cursor, Framing::Raw)),
            vec![id]
        );
    }

    #[test]
    fn limits_are_inclusive() {
        let frame_len = {
            let mut probe = log(BIG);
            publish(&mut probe, &["a"], "0123456789");
            probe.bytes()
        };
        // Exactly two frames of wire bytes: both stay.
        let mut log = log(Limits { events: 100, bytes: 2 * frame_len });
        let _wire = log.acquire(&["a"]);
        publish(&mut log, &["a"], "0123456789");
        publish(&mut log, &["a"], "0123456789");
        assert_eq!(log.len(), 2);
        // Exactly two events' index: both stay; a third goes past it.
        let index = topic_charge("b") + INDEX_ENTRY_BYTES;
        let mut log = Broadcast::new(Limits { events: 100, bytes: index + INDEX_ENTRY_BYTES }, 100);
        publish(&mut log, &["b"], "1");
        publish(&mut log, &["b"], "2");
        assert_eq!((log.len(), log.index_bytes()), (2, index + INDEX_ENTRY_BYTES));
        publish(&mut log, &["b"], "3");
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn only_unsubscribed_topics_are_charged_to_the_history() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a"]);
        assert_eq!(log.index_bytes(), 0, "a subscriber's topic is its connection's cost");
        publish(&mut log, &["a", "b"], "x");
        assert_eq!(log.index_bytes(), topic_charge("b") + 2 * INDEX_ENTRY_BYTES);
        log.release(&sel);
        assert_eq!(log.index_bytes(), topic_charge("a") + topic_charge("b") + 2 * INDEX_ENTRY_BYTES);
        let again = log.acquire(&["b"]);
        assert_eq!(log.index_bytes(), topic_charge("a") + 2 * INDEX_ENTRY_BYTES);
        log.release(&again);
    }

    #[test]
    fn freed_topic_slots_are_reused_lowest_first() {
        let mut log = log(BIG);
        let sels: Vec<Selection> = ["a", "b", "c", "d"].iter().map(|t| log.acquire(&[t])).collect();
        log.release(&sels[1]);
        log.release(&sels[2]);
        assert_eq!(log.acquire(&["e"]), Selection::One(TopicId(1)));
        assert_eq!(log.acquire(&["f"]), Selection::One(TopicId(2)));
        assert_eq!(log.topic_count(), 4, "a, d, e, f");
        log.release(&sels[3]);
        assert_eq!(log.topics.len(), 3, "a free slot at the end is cut off");
        assert_eq!(log.topic_count(), 3);
        assert_eq!(log.acquire(&["g"]), Selection::One(TopicId(3)));
    }

    #[test]
    fn a_subscriber_starting_while_events_are_held_gets_them_at_the_commit() {
        let mut log = log(BIG);
        log.hold();
        let held = publish(&mut log, &["a"], "held");
        let sel = log.acquire(&["a"]);
        let mut resume = log.resume(&sel, None);
        assert_eq!(drain(&log, &sel, &mut resume.cursor, Framing::Raw), "", "not visible before the commit");
        log.commit();
        assert_eq!(ids_in(&drain(&log, &sel, &mut resume.cursor, Framing::Raw)), vec![held]);

        log.hold();
        publish(&mut log, &["a"], "rolled back");
        let mut late = log.resume(&sel, None);
        // An id above every one given out is live too: it must not skip the held events either.
        let mut bogus = log.resume(&sel, Some(u64::MAX));
        log.rollback();
        let next = publish(&mut log, &["a"], "after the rollback");
        assert_eq!(ids_in(&drain(&log, &sel, &mut late.cursor, Framing::Raw)), vec![next]);
        assert_eq!(ids_in(&drain(&log, &sel, &mut bogus.cursor, Framing::Raw)), vec![next]);
        log.hold();
        let held_too = publish(&mut log, &["a"], "held");
        let mut bogus = log.resume(&sel, Some(u64::MAX));
        log.commit();
        assert_eq!(ids_in(&drain(&log, &sel, &mut bogus.cursor, Framing::Raw)), vec![held_too]);
    }

    #[test]
    fn lag_counts_neither_the_catch_up_nor_the_event_being_written() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a"]);
        let old: Vec<u64> = (0..5).map(|_| publish(&mut log, &["a"], &"o".repeat(100))).collect();
        let mut sub = Subscription::new(sel.clone(), Framing::Chunked, &log.resume(&sel, Some(old[0])));
        assert!(log.backlog(&sub) > 400);
        assert_eq!(log.lag(&sub), 0, "replaying retained events is no lag");
        let before = log.bytes();
        publish(&mut log, &["a"], &"n".repeat(50));
        let new_len = (log.bytes() - before) as u64;
        assert_eq!(log.lag(&sub), new_len, "what came since counts");
        drain_sub(&log, &mut sub);
        assert_eq!(log.lag(&sub), 0);

        // Live: the event at the cursor is free, even one written halfway; the ones after it count.
        let big = publish(&mut log, &["a"], &"b".repeat(10_000));
        assert_eq!(log.lag(&sub), 0, "a single large event is no lag");
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let g = log.gather(&sub, &mut slices, usize::MAX);
        log.advance(&mut sub, &g, 4_000);
        assert_eq!(log.lag(&sub), 0);
        let before = log.bytes();
        publish(&mut log, &["a"], "after");
        let after_len = (log.bytes() - before) as u64;
        assert_eq!(log.lag(&sub), after_len);
        let _ = big;
    }

    #[test]
    fn held_events_stay_invisible_until_commit_and_vanish_on_rollback() {
        let mut log = log(BIG);
        let sel = log.acquire(&["a"]);
        let mut cursor = log.resume(&sel, None).cursor;
        let all = log.acquire(&[]);
        let all_cursor = log.resume(&all, None).cursor;
        let first = publish(&mut log, &["a"], "committed");
        log.hold();
        let held = publish(&mut log, &["a"], "held");
        let mut has_held = log.resume(&sel, Some(held));
        assert_eq!(
            ids_in(&drain(&log, &sel, &mut cursor, Framing::Raw)),
            vec![first],
            "held events are not sent"
        );
        log.commit();
        assert_eq!(ids_in(&drain(&log, &sel, &mut cursor, Framing::Raw)), vec![held]);
        assert_eq!(
            drain(&log, &sel, &mut has_held.cursor, Framing::Raw),
            "",
            "a client that has it gets it once"
        );

        log.hold();
        let bytes = log.bytes();
        let index = log.index_bytes();
        let dropped = publish(&mut log, &["a", "b"], "never durable");
        assert!(log.bytes() > bytes);
        log.rollback();
        assert_eq!(log.bytes(), bytes);
        assert_eq!(log.index_bytes(), index, "the index entries and the new topic are uncharged");
        assert_eq!(log.len(), 2);
        assert!(!log.names.contains_key("b"), "a topic created by the dropped event goes with it");
        assert_eq!(drain(&log, &sel, &mut cursor, Framing::Raw), "");
        let next = publish(&mut log, &["a"], "after");
        assert!(next > dropped, "ids are never reused, even for dropped events");
        let next_len = (log.bytes() - bytes) as u64;
        assert_eq!(
            log.backlog(&at(&sel, &cursor, Framing::Chunked)),
            next_len,
            "the topic's running total forgot the dropped event"
        );
        assert_eq!(
            log.backlog(&at(&all, &all_cursor, Framing::Chunked)),
            log.bytes() as u64,
            "so did the log's"
        );
        assert_eq!(ids_in(&drain(&log, &sel, &mut cursor, Framing::Raw)), vec![next]);
        assert_eq!(log.backlog(&at(&sel, &cursor, Framing::Chunked)), 0);
    }

    #[test]
    fn evicts_by_age_through_ids() {
        let mut log = Broadcast::new(BIG, 1_000);
        let event = event("x");
        for now in [1_000, 2_000, 3_000] {
            log.publish(&["a"], &event, now).unwrap();
        }
        log.evict_below(2_500);
        assert_eq!(log.oldest_id(), Some(3_000));
        let sel = log.acquire(&["a"]);
        assert_eq!(log.resume(&sel, Some(1_000)).gap, Some((1_000, 3_000)));
    }

    /// Encodes `data` with an id from elsewhere and inserts it as stored at `stored_at`.
    fn insert_with_id(log: &mut Broadcast, id: u64, stored_at: u64) -> Result<(), PublishError> {
        let encoded = log.encode(&event("x"), id)?;
        log.insert(&["a"], encoded, stored_at).map(|_| ())
    }

    #[test]
    fn an_id_from_elsewhere_that_does_not_increase_is_refused_and_nothing_is_stored() {
        let mut log = Broadcast::new(BIG, 1);
        let sel = log.acquire(&["a"]);
        let mut cursor = log.resume(&sel, None).cursor;
        insert_with_id(&mut log, 5, 0).unwrap();
        let (bytes, index) = (log.bytes(), log.index_bytes());
        for id in [5, 4, 1, 0, u64::MAX] {
            let refused = insert_with_id(&mut log, id, 0);
            let newest = 5;
            assert_eq!(refused, Err(PublishError::IdNotAbove { id, newest }), "{id}");
            assert_eq!(log.check_id(id), refused, "{id}");
            assert!(refused.unwrap_err().to_string().contains(&id.to_string()));
        }
        assert_eq!((log.len(), log.bytes(), log.index_bytes(), log.newest_id()), (1, bytes, index, 5));
        insert_with_id(&mut log, 6, 0).unwrap();
        assert_eq!(ids_in(&drain(&log, &sel, &mut cursor, Framing::Raw)), vec![5, 6]);
    }

    #[test]
    fn ids_below_the_floor_are_refused() {
        let mut log = Broadcast::new(BIG, 100);
        assert_eq!(insert_with_id(&mut log, 99, 0), Err(PublishError::IdNotAbove { id: 99, newest: 99 }));
        assert!(log.is_empty());
        insert_with_id(&mut log, 100, 0).unwrap();
        assert_eq!(log.oldest_id(), Some(100));
    }

    #[test]
    fn age_follows_the_stored_time_not_the_ids() {
        let mut log = Broadcast::new(BIG, 1);
        for (id, stored_at) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
            insert_with_id(&mut log, id, stored_at).unwrap();
        }
        log.evict_below(4);
        assert_eq!(log.len(), 3, "small ids are no age");
        log.evict_below(2_500);
        assert_eq!((log.oldest_id(), log.oldest_stored_at()), (Some(3), Some(3_000)));
        // A clock that went back stores the next event no earlier than the one before.
        insert_with_id(&mut log, 4, 10).unwrap();
        log.evict_below(3_000);
        assert_eq!(log.len(), 2);
        log.evict_below(3_001);
        assert!(log.is_empty());
        let sel = log.acquire(&["a"]);
        assert_eq!(log.resume(&sel, Some(2)).gap, Some((2, 5)));
    }

    #[test]
    fn gallop_matches_bisect() {
        let events: VecDeque<(u64, u64)> = (0..100u64).map(|i| (i * 3, 0)).collect();
        for seq in 0..310 {
            let expected = events.partition_point(|&(s, _)| s < seq);
            assert_eq!(lower_bound_from_back(&events, seq), expected, "{seq}");
        }
        assert_eq!(lower_bound_from_back(&VecDeque::new(), 5), 0);
    }
}
