//! The hub's delivery rules against a brute-force oracle of the spec's, at the library level.
//!
//! The spec (Subscribers, Publication, Private Update Audience): a subscriber receives an update
//! iff one of its routing matchers matches one of the update's topics, and, for a private update,
//! its token grants `subscribe` on one of the update's topics (anonymous subscribers never receive
//! private updates). Random publications (1-3 topics from a small alphabet, so routes and grants
//! collide; private or not; a publisher's own id from a small alphabet, so ids are reused) are
//! stored in a real [`Broadcast`]; random subscribers made the way the server makes them (the real
//! [`Matcher`]s through [`Rights::compile`], derived topics through [`SharedRights`]) subscribe
//! live at random points, drain at random points, leave at random points, and replay from the
//! earliest retained event or from an id at the end. What each receives must be exactly the
//! oracle's list, in order, each once, with the id the publisher gave (or the hub's `urn:ssed:`).
//! Events are held, committed and rolled back as the durable history does; a reader's socket may
//! fill mid-write, and it must then be cut exactly when an event it still needs leaves the history.
//!
//! The oracle does not use the code under test: its matchers are hand-written for the few
//! patterns generated, and it computes retention from the event limit alone (the byte limits are
//! far away).

use std::io::IoSlice;
use std::sync::Arc;

use proptest::prelude::*;
use url::Url;

use super::hub::{Rights, SharedRights};
use super::MatcherKind;
use crate::broadcast::{
    Broadcast, Framing, Limits, Rights as LogRights, Selection, Subscription, MAX_SLICES,
};
use crate::event::{Draft, Event};

const HUB: &str = "https://example.com/.well-known/mercure";

/// The topics updates are published to: few, so that routes and grants overlap.
const TOPICS: [&str; 6] = [
    "https://example.com/books/1",
    "https://example.com/books/2",
    "https://example.com/users/42/1",
    "https://example.com/users/42/2",
    "https://example.com/users/41/1",
    "https://example.com/users/41/2",
];

/// Publisher ids, reused on purpose (a reused id resumes after the earliest event carrying it).
const CUSTOM_IDS: [&str; 3] = ["urn:uuid:a", "urn:uuid:b", "https://example.com/ids/c"];

/// A topic matcher as generated: what the hub compiles, and what the oracle decides by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `match=<topic>`.
    Exact(usize),
    /// A pre-standardization `topic=<topic>` selector without a template: a string comparison.
    LegacyExact(usize),
    /// `match_urlpattern=https://example.com/books/:id`.
    BooksById,
    /// The same pattern relative to the hub's URL: `/books/:id`.
    RelativeBooksById,
    /// `match_urlpattern=https://example.com/users/42/*`.
    UserFortyTwo,
    /// `match_urlpattern=https://example.com/users/:user/1`.
    EveryUsersFirst,
    /// `topic=https://example.com/books/{id}` (an RFC 6570 template, legacy).
    BooksTemplate,
    /// `*`, of any kind.
    Wildcard(MatcherKind),
}

impl Spec {
    fn raw(self) -> (MatcherKind, &'static str) {
        match self {
            Spec::Exact(i) => (MatcherKind::Exact, TOPICS[i]),
            Spec::LegacyExact(i) => (MatcherKind::Legacy, TOPICS[i]),
            Spec::BooksById => (MatcherKind::UrlPattern, "https://example.com/books/:id"),
            Spec::RelativeBooksById => (MatcherKind::UrlPattern, "/books/:id"),
            Spec::UserFortyTwo => (MatcherKind::UrlPattern, "https://example.com/users/42/*"),
            Spec::EveryUsersFirst => (MatcherKind::UrlPattern, "https://example.com/users/:user/1"),
            Spec::BooksTemplate => (MatcherKind::Legacy, "https://example.com/books/{id}"),
            Spec::Wildcard(kind) => (kind, "*"),
        }
    }

    /// The oracle: whether this matcher selects `topic`, decided without the matcher code.
    fn selects(self, topic: &str) -> bool {
        // One path segment: at least one character, no slash.
        let segment = |s: &str| !s.is_empty() && !s.contains('/');
        match self {
            Spec::Exact(i) | Spec::LegacyExact(i) => topic == TOPICS[i],
            Spec::BooksById | Spec::RelativeBooksById => {
                topic.strip_prefix("https://example.com/books/").is_some_and(segment)
            }
            Spec::BooksTemplate => topic.strip_prefix("https://example.com/books/").is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            }),
            Spec::UserFortyTwo => topic.starts_with("https://example.com/users/42/"),
            Spec::EveryUsersFirst => topic
                .strip_prefix("https://example.com/users/")
                .and_then(|rest| rest.strip_suffix("/1"))
                .is_some_and(segment),
            Spec::Wildcard(_) => true,
        }
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        3 => (0..TOPICS.len()).prop_map(Spec::Exact),
        1 => (0..TOPICS.len()).prop_map(Spec::LegacyExact),
        2 => Just(Spec::BooksById),
        1 => Just(Spec::RelativeBooksById),
        2 => Just(Spec::UserFortyTwo),
        2 => Just(Spec::EveryUsersFirst),
        1 => Just(Spec::BooksTemplate),
        1 => prop_oneof![Just(MatcherKind::Exact), Just(MatcherKind::UrlPattern), Just(MatcherKind::Legacy)]
            .prop_map(Spec::Wildcard),
    ]
}

/// A subscriber: its routing matchers, and its token's `subscribe` matchers (`None`: anonymous;
/// an empty list: a token that grants nothing to subscribe).
#[derive(Debug, Clone)]
struct Subscriber {
    routes: Vec<Spec>,
    grant: Option<Vec<Spec>>,
}

impl Subscriber {
    /// The oracle's rule for one update.
    fn receives(&self, update: &Update) -> bool {
        let topics = || update.topics.iter().map(|&t| TOPICS[t]);
        let routed = topics().any(|t| self.routes.iter().any(|m| m.selects(t)));
        let allowed = !update.private
            || self.grant.as_ref().is_some_and(|grant| topics().any(|t| grant.iter().any(|m| m.selects(t))));
        routed && allowed
    }
}

fn subscriber() -> impl Strategy<Value = Subscriber> {
    let grant = prop_oneof![
        2 => Just(None),
        1 => Just(Some(Vec::new())),
        1 => Just(Some(vec![Spec::Wildcard(MatcherKind::Exact)])),
        4 => prop::collection::vec(spec(), 1..3).prop_map(Some),
    ];
    (prop::collection::vec(spec(), 1..4), grant).prop_map(|(routes, grant)| Subscriber { routes, grant })
}

#[derive(Debug, Clone)]
struct Update {
    topics: Vec<usize>,
    private: bool,
    id: Option<usize>,
}

fn update() -> impl Strategy<Value = Update> {
    (
        prop::collection::vec(0..TOPICS.len(), 1..4),
        any::<bool>(),
        prop::option::weighted(0.4, 0..CUSTOM_IDS.len()),
    )
        .prop_map(|(topics, private, id)| Update { topics, private, id })
}

#[derive(Debug, Clone)]
enum Op {
    Publish(Update),
    /// A live subscriber starts now.
    Subscribe(Subscriber),
    /// The live subscriber at this index (modulo their count) writes what it has and is no longer
    /// blocked.
    Drain(usize),
    /// The live subscriber at this index writes only this many bytes (modulo what it has), then
    /// its socket is full: it writes nothing more, however much is published, until drained.
    Block(usize, usize),
    /// The live subscriber at this index (modulo their count) writes what it has and leaves.
    Leave(usize),
    /// Events published from now on wait for a commit (the durable history's hold while a
    /// record is synced).
    Hold,
    /// The held events become visible.
    Commit,
    /// The held events are dropped (their record could not be written).
    Rollback,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => update().prop_map(Op::Publish),
        2 => subscriber().prop_map(Op::Subscribe),
        1 => any::<usize>().prop_map(Op::Drain),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, cut)| Op::Block(i, cut)),
        1 => any::<usize>().prop_map(Op::Leave),
        1 => Just(Op::Hold),
        1 => Just(Op::Commit),
        1 => Just(Op::Rollback),
    ]
}

fn base() -> Url {
    Url::parse(HUB).expect("a URL")
}

/// A subscription made as `server/hub.rs` makes a hub subscription: `*` routes every topic, exact
/// matchers alone name topics, anything else is one derived route; a grant of `*` reads every
/// private update, a grant of nothing none, any other a derived private topic.
fn subscribe(log: &mut Broadcast, sub: &Subscriber, last_event_id: Option<u64>) -> Subscription {
    let base = base();
    let routes =
        Rights::compile(sub.routes.iter().map(|m| m.raw()), &base).expect("the generated matchers compile");
    let rights = match &sub.grant {
        None => LogRights::Public,
        Some(grant) => {
            let rights = Arc::new(
                Rights::compile(grant.iter().map(|m| m.raw()), &base).expect("the generated grants compile"),
            );
            if rights.is_any() {
                LogRights::All
            } else if rights.is_empty() {
                LogRights::Public
            } else {
                let key = rights.key().to_string();
                LogRights::Matching(log.acquire_derived(&key, true, || Box::new(SharedRights(rights))))
            }
        }
    };
    let selection = if routes.is_any() {
        Selection::All
    } else if let Some(topics) = routes.exact_topics() {
        log.acquire(&topics)
    } else {
        let key = routes.key().to_string();
        let routes = Arc::new(routes);
        Selection::One(log.acquire_derived(&key, false, || Box::new(SharedRights(routes))))
    };
    let resume = log.resume(&selection, last_event_id);
    Subscription::new(selection, Framing::Chunked, &resume).with_rights(rights)
}

/// Everything the subscription gets now, as wire bytes, written the way the loop writes (gather and
/// advance, the last time with nothing gathered).
fn drain(log: &Broadcast, sub: &mut Subscription) -> Vec<u8> {
    assert!(!log.lost(sub), "nothing it needs left the history");
    let mut wire = Vec::new();
    loop {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let gathered = log.gather(sub, &mut slices, usize::MAX);
        if gathered.slices == 0 {
            // As the loop does with nothing to write: the cursor moves past what it may not read.
            log.advance(sub, &gathered, 0);
            break;
        }
        // Short writes too: cut the write at an odd size when it is large enough.
        let written = if gathered.bytes > 7 { gathered.bytes - 7 } else { gathered.bytes };
        wire.extend(slices[..gathered.slices].iter().flat_map(|s| s.iter().copied()).take(written));
        log.advance(sub, &gathered, written);
        if written < gathered.bytes {
            let mut rest = [IoSlice::new(&[]); MAX_SLICES];
            let more = log.gather(sub, &mut rest, usize::MAX);
            for s in &rest[..more.slices] {
                wire.extend_from_slice(s);
            }
            log.advance(sub, &more, more.bytes);
        }
    }
    wire
}

/// One write of at most `cut` bytes (modulo what it has), as a reader whose socket then fills.
fn write_some(log: &Broadcast, sub: &mut Subscription, cut: usize) -> Vec<u8> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let gathered = log.gather(sub, &mut slices, usize::MAX);
    let written = cut % (gathered.bytes + 1);
    let bytes: Vec<u8> =
        slices[..gathered.slices].iter().flat_map(|s| s.iter().copied()).take(written).collect();
    log.advance(sub, &gathered, written);
    bytes
}

/// The complete chunks of chunked wire bytes, back to back (a write may stop anywhere).
fn complete_chunks(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = wire;
    loop {
        let Some(line) = rest.windows(2).position(|w| w == b"\r\n") else { return out };
        let size =
            std::str::from_utf8(&rest[..line]).ok().and_then(|hex| usize::from_str_radix(hex, 16).ok());
        let Some(size) = size else {
            // Not chunked framing any more: a write resumed somewhere else than where it stopped.
            out.extend_from_slice(b"id: broken\ndata: broken chunking\n\n");
            return out;
        };
        let Some(chunk) = rest.get(line + 2..line + 2 + size + 2) else { return out };
        out.extend_from_slice(&chunk[..size]);
        rest = &rest[line + 2 + size + 2..];
    }
}

/// The `(id, data)` of each complete SSE frame in chunked wire bytes.
fn frames(wire: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8(complete_chunks(wire)).expect("UTF-8 frames");
    let mut out = Vec::new();
    let mut id = None;
    for line in text.split('\n') {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            out.push((id.take().expect("an id before the data"), v.to_string()));
        }
    }
    out
}

/// An event as the oracle keeps it.
struct Published {
    update: Update,
    /// The numeric id the log gave it.
    id: u64,
    /// Its data, `e<n>`, unique in a run (rolled back events' numbers are not reused).
    data: String,
    /// Whether the history limit pushed it out (always the oldest retained: the retained events
    /// are a suffix of the list).
    evicted: bool,
}

impl Published {
    /// The id its subscribers see.
    fn wire_id(&self) -> String {
        self.update.id.map_or_else(|| format!("urn:ssed:{}", self.id), |c| CUSTOM_IDS[c].to_string())
    }
}

/// What the oracle says a subscriber gets of the events whose indexes `range` holds.
fn expected(
    published: &[Published],
    range: impl Iterator<Item = usize>,
    sub: &Subscriber,
) -> Vec<(String, String)> {
    range
        .filter(|&i| sub.receives(&published[i].update))
        .map(|i| (published[i].wire_id(), published[i].data.clone()))
        .collect()
}

fn event(update: &Update, data: &str) -> Event {
    let draft = Draft {
        topics: update.topics.iter().map(|&t| TOPICS[t].to_string()).collect(),
        data: data.as_bytes().to_vec(),
        id: update.id.map(|c| CUSTOM_IDS[c].to_string()),
        private: update.private,
        hub_topics: true,
        ..Draft::default()
    };
    draft.validate(usize::MAX).expect("a valid event")
}

struct Live {
    spec: Subscriber,
    sub: Subscription,
    /// Index of the first event it must get: the first published after it started, or the first
    /// held one if it started while events were held (their publishers have had no answer yet).
    from: usize,
    /// Every byte written to it.
    wire: Vec<u8>,
    /// Its socket is full: it writes nothing until drained.
    blocked: bool,
}

impl Live {
    /// Writes everything it may now, and is no longer blocked.
    fn drain(&mut self, log: &Broadcast) {
        let bytes = drain(log, &mut self.sub);
        self.wire.extend(bytes);
        self.blocked = false;
    }
}

/// The indexes of the events, among those `range` holds, that the rules give `sub`.
fn owed(published: &[Published], range: std::ops::Range<usize>, sub: &Subscriber) -> Vec<usize> {
    range.filter(|&i| sub.receives(&published[i].update)).collect()
}

fn run(
    ops: Vec<Op>,
    replays: Vec<Subscriber>,
    history: usize,
    resume_at: usize,
) -> Result<(), TestCaseError> {
    let mut log = Broadcast::new(Limits { events: history, bytes: 1 << 30 }, 1);
    let mut published: Vec<Published> = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    // Index of the first held event, while events are held.
    let mut held_from: Option<usize> = None;
    let mut numbers = 0..;
    // What a live subscriber must have got once it wrote everything visible.
    let check_live = |l: &Live, published: &[Published], visible: usize| {
        let want = expected(published, l.from..visible, &l.spec);
        prop_assert_eq!(frames(&l.wire), want, "live subscriber {:?} from event {}", l.spec, l.from);
        Ok(())
    };
    for op in ops {
        match op {
            Op::Publish(update) => {
                let oldest = published.iter().position(|p| !p.evicted);
                if log.len() == history && held_from.is_some_and(|h| oldest.is_some_and(|o| o >= h)) {
                    // It would push out a held event nobody could have read yet: a loss for every
                    // subscriber that needs it, which is not what is tested here.
                    continue;
                }
                let data = format!("e{}", numbers.next().expect("endless"));
                let topics: Vec<&str> = update.topics.iter().map(|&t| TOPICS[t]).collect();
                let id = match log.publish(&topics, &event(&update, &data), 0) {
                    Ok((id, _)) => id.get(),
                    Err(e) => return Err(TestCaseError::fail(format!("publish refused: {e}"))),
                };
                published.push(Published { update, id, data, evicted: false });
                if published.iter().filter(|p| !p.evicted).count() > history {
                    let oldest = oldest.expect("more retained than the limit");
                    published[oldest].evicted = true;
                }
                prop_assert_eq!(log.len(), published.iter().filter(|p| !p.evicted).count());
                // The loop wakes every subscriber; those whose socket has room write at once. A
                // blocked one is dropped if, and only if, an event it still needs left the history.
                let visible = held_from.unwrap_or(published.len());
                let mut i = 0;
                while i < live.len() {
                    let l = &mut live[i];
                    if !l.blocked {
                        l.drain(&log);
                        i += 1;
                        continue;
                    }
                    let got = frames(&l.wire);
                    let owed = owed(&published, l.from..visible, &l.spec);
                    let next_gone = owed.get(got.len()).is_some_and(|&n| published[n].evicted);
                    let lost = log.lost(&l.sub);
                    prop_assert!(
                        lost || !next_gone,
                        "{:?}: the next event it needs ({:?}) left the history unnoticed",
                        l.spec,
                        owed.get(got.len()).map(|&n| &published[n].data)
                    );
                    // With rights to some private topics, the check may cut a little early (see
                    // `Broadcast::lost`); with none or all, exactly when it must.
                    let exact = !matches!(l.sub.rights(), LogRights::Matching(_));
                    prop_assert!(
                        !lost || next_gone || !exact,
                        "{:?} cut though every event it needs is retained (it has {} of {})",
                        l.spec,
                        got.len(),
                        owed.len()
                    );
                    if lost {
                        let want = expected(&published, l.from..visible, &l.spec);
                        prop_assert_eq!(&got[..], &want[..got.len()], "what it got before the cut");
                        let l = live.swap_remove(i);
                        log.release_subscription(&l.sub);
                        continue;
                    }
                    i += 1;
                }
            }
            Op::Subscribe(spec) => {
                let sub = subscribe(&mut log, &spec, None);
                let from = held_from.unwrap_or(published.len());
                live.push(Live { spec, sub, from, wire: Vec::new(), blocked: false });
            }
            Op::Drain(i) if !live.is_empty() => {
                let n = live.len();
                live[i % n].drain(&log);
            }
            Op::Block(i, cut) if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[i % n];
                let bytes = write_some(&log, &mut l.sub, cut);
                l.wire.extend(bytes);
                l.blocked = true;
            }
            Op::Leave(i) if !live.is_empty() => {
                let n = live.len();
                let mut l = live.swap_remove(i % n);
                l.drain(&log);
                check_live(&l, &published, held_from.unwrap_or(published.len()))?;
                log.release_subscription(&l.sub);
            }
            Op::Drain(_) | Op::Block(..) | Op::Leave(_) => {}
            Op::Hold => {
                log.hold();
                held_from.get_or_insert(published.len());
            }
            Op::Commit => {
                log.commit();
                held_from = None;
                // The commit wakes the subscribers, as a publish does.
                for l in live.iter_mut().filter(|l| !l.blocked) {
                    l.drain(&log);
                }
            }
            Op::Rollback => {
                log.rollback();
                if let Some(h) = held_from.take() {
                    published.truncate(h);
                    for l in &mut live {
                        l.from = l.from.min(h);
                    }
                }
                prop_assert_eq!(log.len(), published.iter().filter(|p| !p.evicted).count());
            }
        }
    }
    log.commit();
    for l in &mut live {
        l.drain(&log);
        check_live(l, &published, published.len())?;
    }
    let retained = published.iter().position(|p| !p.evicted).unwrap_or(published.len())..published.len();
    prop_assert_eq!(log.len(), retained.len());
    // Replays with `last_event_id=earliest`: every retained event the rules allow.
    let all_specs = live.iter().map(|l| l.spec.clone()).chain(replays);
    let mut replayed = Vec::new();
    for spec in all_specs {
        let mut sub = subscribe(&mut log, &spec, Some(0));
        let got = frames(&drain(&log, &mut sub));
        prop_assert_eq!(got, expected(&published, retained.clone(), &spec), "replay of {:?}", spec);
        replayed.push((spec, sub));
    }
    // A resume from the id subscribers saw for one event (retained or not): what follows the
    // earliest retained event carrying it, or every retained event when the id names none.
    if !published.is_empty() {
        let at = resume_at % published.len();
        let text = published[at].wire_id();
        let oracle = match published[at].update.id {
            Some(c) => retained.clone().find(|&i| published[i].update.id == Some(c)),
            None => Some(at),
        };
        prop_assert_eq!(log.resolve_id(&text), oracle.map(|i| published[i].id), "resolving {}", text);
        let from = oracle.map_or(retained.start, |i| (i + 1).max(retained.start));
        let last = log.resolve_id(&text).unwrap_or(0);
        for (spec, _) in &replayed {
            let mut sub = subscribe(&mut log, spec, Some(last));
            let got = frames(&drain(&log, &mut sub));
            prop_assert_eq!(
                got,
                expected(&published, from..published.len(), spec),
                "resume from {} of {:?}",
                text,
                spec
            );
            log.release_subscription(&sub);
        }
    }
    for (_, sub) in &replayed {
        log.release_subscription(sub);
    }
    for l in &live {
        log.release_subscription(&l.sub);
    }
    // Every derived topic went with its last holder: what is left is the named topics of retained
    // events.
    prop_assert!(log.topic_count() <= TOPICS.len());
    Ok(())
}

proptest! {
    // 256 cases unless PROPTEST_CASES asks for another number (a longer search by hand).
    #![proptest_config(ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() { ProptestConfig::default().cases } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn delivery_follows_the_spec_live_and_on_replay(
        ops in prop::collection::vec(op(), 1..40),
        replays in prop::collection::vec(subscriber(), 0..4),
        history in prop_oneof![Just(3usize), Just(8), Just(1000)],
        resume_at in any::<usize>(),
    ) {
        run(ops, replays, history, resume_at)?;
    }
}
