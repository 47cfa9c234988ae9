//! Soak: about a hundred seconds of churn against the `ssed` binary, then an exact audit.
//!
//! Up to 3000 subscribers at once, on 1-3 of 8 topics each, join at random, stay a while, then
//! resume (reconnect with `Last-Event-ID`, by header or query, after a close or a reset), leave for
//! good (and are replaced by a newcomer), or stay on. Two publishers publish steadily to one or two
//! topics at a time. At the end an event goes to every topic, and every subscriber is audited:
//! what it received, across all of its resumes, must be exactly the events of its topics, in id
//! order, once each, with no gap, from the first one it could have missed to the end (or to when it
//! left). A stream the server closes (it fell past `--max-lag`) is resumed too, as `EventSource`
//! would, and counted. The process's RSS and descriptors must come back near where they started.
//!
//! Four worker threads drive the subscribers through one `mio::Poll` each; everything is bounded
//! in time and stays on loopback. Run it with `cargo test --test it soak -- --ignored --nocapture`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::child::Proc;
use crate::support::{eventually, metric, Conn};

const TOPICS: usize = 8;
/// Subscribers connected at most at once; each slot holds one subscriber after another.
const SLOTS: usize = 3000;
const WORKERS: usize = 4;
const PUBLISHERS: u32 = 2;
/// Events per second from each publisher.
const RATE: u32 = 25;
/// How long the churn lasts.
const CHURN: Duration = Duration::from_secs(95);
/// The first subscribers join over this long.
const RAMP: Duration = Duration::from_secs(15);

/// A small xorshift generator, seeded from the clock and printed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.below(span + 1))
    }
}

/// FNV-1a, to check data without keeping it.
fn fingerprint(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A published event as the audit needs it.
#[derive(Clone, Copy)]
struct Published {
    id: u64,
    /// Bit `t` set for topic `t`.
    topics: u8,
    fingerprint: u64,
    /// When its publish request started: a subscriber that had its headers before this must get it.
    started: Instant,
}

fn topic_query(mask: u8) -> String {
    (0..TOPICS)
        .filter(|t| mask & (1 << t) != 0)
        .map(|t| format!("topic=soak/{t}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn publisher(addr: SocketAddr, n: u32, seed: u64, ledger: Arc<Mutex<Vec<Published>>>, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed);
    let mut conn = Conn::open(addr);
    let period = Duration::from_secs(1) / RATE;
    let start = Instant::now();
    let mut k = 0u32;
    while !stop.load(Ordering::Acquire) {
        let due = start + period * k;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now); // the publisher's steady rate
        }
        let first = rng.below(TOPICS as u64);
        let mut mask = 1u8 << first;
        if rng.chance(20) {
            mask |= 1 << rng.below(TOPICS as u64);
        }
        let data = format!("p{n}-{k}-{}", "d".repeat(rng.below(200) as usize));
        let started = Instant::now();
        let id = conn.publish(&topic_query(mask), data.as_bytes());
        ledger.lock().unwrap().push(Published {
            id,
            topics: mask,
            fingerprint: fingerprint(data.as_bytes()),
            started,
        });
        k += 1;
    }
}

/// An incremental reader of one stream: the response head, chunked framing, then SSE lines.
#[derive(Default)]
struct Reader {
    head: Option<u16>,
    raw: Vec<u8>,
    text: Vec<u8>,
    id: Option<u64>,
    data: Option<Vec<u8>>,
    event_type: bool,
    ended: bool,
}

/// What a stream delivered.
enum Delivery {
    Event(u64, u64),
    /// An event without an id or with a type: this soak publishes neither (an `ssed-gap` would be one).
    Unexpected(String),
}

impl Reader {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Delivery>) {
        self.raw.extend_from_slice(bytes);
        if self.head.is_none() {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else { return };
            let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            self.head = head.split(' ').nth(1).and_then(|s| s.parse().ok()).or(Some(0));
            self.raw.drain(..end + 4);
        }
        while !self.ended {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else { break };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s, 16).ok());
            let Some(size) = size else {
                out.push(Delivery::Unexpected(format!("bad chunk size line {:?}", &self.raw[..line_end])));
                self.ended = true;
                break;
            };
            if self.raw.len() < line_end + 2 + size + 2 {
                break;
            }
            self.text.extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 4 + size);
            self.ended = size == 0;
        }
        let mut at = 0;
        while let Some(len) = self.text[at..].iter().position(|&b| b == b'\n') {
            let line = &self.text[at..at + len];
            at += len + 1;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    match (self.id.take(), self.event_type) {
                        (Some(id), false) => out.push(Delivery::Event(id, fingerprint(&data))),
                        _ => out.push(Delivery::Unexpected(String::from_utf8_lossy(&data).into_owned())),
                    }
                }
                self.id = None;
                self.event_type = false;
            } else if let Some(value) = line.strip_prefix(b"data: ") {
                self.data = Some(value.to_vec());
            } else if let Some(value) = line.strip_prefix(b"id: ") {
                self.id = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if line.starts_with(b"event:") {
                self.event_type = true;
            }
            // Comments (the opening one, heartbeats) and `retry:` need nothing.
        }
        self.text.drain(..at);
    }
}

/// One subscriber, across all of its connections.
struct Subscriber {
    topics: u8,
    /// `(id, fingerprint)` of every event received, in arrival order, across resumes.
    received: Vec<(u64, u64)>,
    /// When it first had a response head: events whose publish started later must all arrive.
    first_head: Option<Instant>,
    unexpected: Vec<String>,
    resumes: u32,
    /// Connections the server closed (past `--max-lag`), each followed by a resume.
    server_closes: u32,
    /// Whether it was still connected at the end.
    stayed: bool,
}

enum Slot {
    /// Nobody: a newcomer joins at `at`.
    Empty {
        at: Instant,
    },
    /// Between two connections of the same subscriber: it resumes at `at`.
    Resuming {
        subscriber: Subscriber,
        at: Instant,
    },
    Connected {
        subscriber: Subscriber,
        stream: mio::net::TcpStream,
        reader: Reader,
        decide_at: Instant,
    },
}

#[derive(Default)]
struct Stats {
    joins: AtomicU64,
    resumes: AtomicU64,
    resets: AtomicU64,
    leaves: AtomicU64,
    server_closes: AtomicU64,
    connected: AtomicUsize,
    max_connected: AtomicUsize,
}

struct Shared {
    addr: SocketAddr,
    stop: AtomicBool,
    settled: AtomicUsize,
    end_id: AtomicU64,
    stats: Stats,
}

fn open_stream(addr: SocketAddr, subscriber: &Subscriber, rng: &mut Rng) -> mio::net::TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut query = topic_query(subscriber.topics);
    let mut headers = String::new();
    if let Some(&(last, _)) = subscriber.received.last() {
        // Both spellings of a resume: the header EventSource sends, or the query parameter.
        if rng.chance(50) {
            headers = format!("Last-Event-ID: {last}\r\n");
        } else {
            query.push_str(&format!("&lastEventId={last}"));
        }
    }
    let request = format!("GET /events?{query} HTTP/1.1\r\nHost: soak\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).expect("send a subscribe");
    stream.set_nonblocking(true).unwrap();
    mio::net::TcpStream::from_std(stream)
}

fn close(poll: &Poll, mut stream: mio::net::TcpStream, rst: bool) {
    let _ = poll.registry().deregister(&mut stream);
    if rst {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
}

fn connect_slot(poll: &Poll, shared: &Shared, index: usize, subscriber: Subscriber, rng: &mut Rng) -> Slot {
    let mut stream = open_stream(shared.addr, &subscriber, rng);
    poll.registry().register(&mut stream, Token(index), Interest::READABLE).expect("register");
    let connected = shared.stats.connected.fetch_add(1, Ordering::AcqRel) + 1;
    shared.stats.max_connected.fetch_max(connected, Ordering::AcqRel);
    let decide_at = Instant::now() + rng.between(Duration::from_secs(3), Duration::from_secs(40));
    Slot::Connected { subscriber, stream, reader: Reader::default(), decide_at }
}

fn newcomer(rng: &mut Rng) -> Subscriber {
    let mut topics = 0u8;
    for _ in 0..=rng.below(3) {
        topics |= 1 << rng.below(TOPICS as u64);
    }
    Subscriber {
        topics,
        received: Vec::new(),
        first_head: None,
        unexpected: Vec::new(),
        resumes: 0,
        server_closes: 0,
        stayed: false,
    }
}

/// Drives `slots` subscribers until the end event has reached every one still connected; returns
/// every subscriber it ever had.
fn worker(shared: Arc<Shared>, slots: usize, seed: u64) -> Vec<Subscriber> {
    let mut rng = Rng(seed);
    let mut poll = Poll::new().expect("a poll");
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    let mut slots: Vec<Slot> =
        (0..slots).map(|_| Slot::Empty { at: start + rng.between(Duration::ZERO, RAMP) }).collect();
    let mut done: Vec<Subscriber> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut deliveries = Vec::new();
    let mut settled = false;
    let mut last_scan = start;
    let hard_stop = start + CHURN + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < hard_stop, "the soak did not finish in time");
        poll.poll(&mut events, Some(Duration::from_millis(20))).expect("poll");
        for event in events.iter() {
            let index = event.token().0;
            let Slot::Connected { subscriber, stream, reader, .. } = &mut slots[index] else { continue };
            let mut closed = false;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => reader.feed(&buf[..n], &mut deliveries),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if reader.head.is_some() && subscriber.first_head.is_none() {
                subscriber.first_head = Some(Instant::now());
            }
            if let Some(status) = reader.head.filter(|s| *s != 200) {
                subscriber.unexpected.push(format!("a subscribe answered {status}"));
            }
            for delivery in deliveries.drain(..) {
                match delivery {
                    Delivery::Event(id, fp) => subscriber.received.push((id, fp)),
                    Delivery::Unexpected(what) => subscriber.unexpected.push(what),
                }
            }
            if closed || reader.ended {
                // The server ended the stream: resume at once, as EventSource would.
                let Slot::Connected { mut subscriber, stream, .. } =
                    std::mem::replace(&mut slots[index], Slot::Empty { at: Instant::now() })
                else {
                    unreachable!()
                };
                close(&poll, stream, false);
                shared.stats.connected.fetch_sub(1, Ordering::AcqRel);
                shared.stats.server_closes.fetch_add(1, Ordering::Relaxed);
                subscriber.server_closes += 1;
                if subscriber.received.is_empty() {
                    subscriber.first_head = None; // nothing to resume from: it starts over
                }
                slots[index] = Slot::Resuming { subscriber, at: Instant::now() };
            }
        }

        let now = Instant::now();
        if now.duration_since(last_scan) < Duration::from_millis(50) && !shared.stop.load(Ordering::Acquire) {
            continue;
        }
        last_scan = now;
        let stopping = shared.stop.load(Ordering::Acquire);
        for (index, slot) in slots.iter_mut().enumerate() {
            let due = match &*slot {
                Slot::Empty { at } => !stopping && *at <= now,
                Slot::Resuming { at, .. } => stopping || *at <= now,
                Slot::Connected { decide_at, .. } => !stopping && *decide_at <= now,
            };
            if !due {
                continue;
            }
            *slot = match std::mem::replace(slot, Slot::Empty { at: now }) {
                Slot::Empty { .. } => {
                    shared.stats.joins.fetch_add(1, Ordering::Relaxed);
                    connect_slot(&poll, &shared, index, newcomer(&mut rng), &mut rng)
                }
                Slot::Resuming { mut subscriber, .. } => {
                    if !subscriber.received.is_empty() {
                        subscriber.resumes += 1;
                        shared.stats.resumes.fetch_add(1, Ordering::Relaxed);
                    }
                    connect_slot(&poll, &shared, index, subscriber, &mut rng)
                }
                Slot::Connected { subscriber, stream, reader, .. } => {
                    let choice = rng.below(100);
                    if choice < 35 {
                        // Stay on for another while.
                        let decide_at = now + rng.between(Duration::from_secs(3), Duration::from_secs(40));
                        Slot::Connected { subscriber, stream, reader, decide_at }
                    } else {
                        let rst = rng.chance(30);
                        close(&poll, stream, rst);
                        shared.stats.connected.fetch_sub(1, Ordering::AcqRel);
                        if rst {
                            shared.stats.resets.fetch_add(1, Ordering::Relaxed);
                        }
                        if choice < 75 && !subscriber.received.is_empty() {
                            let at = now + rng.between(Duration::ZERO, Duration::from_millis(1500));
                            Slot::Resuming { subscriber, at }
                        } else {
                            shared.stats.leaves.fetch_add(1, Ordering::Relaxed);
                            done.push(subscriber);
                            Slot::Empty { at: now + rng.between(Duration::ZERO, Duration::from_secs(3)) }
                        }
                    }
                }
            };
        }
        if stopping && !settled && slots.iter().all(|s| !matches!(s, Slot::Resuming { .. })) {
            settled = true;
            shared.settled.fetch_add(1, Ordering::AcqRel);
        }
        let end_id = shared.end_id.load(Ordering::Acquire);
        let all_ended = slots.iter().all(|slot| match slot {
            Slot::Connected { subscriber, .. } => {
                subscriber.received.last().is_some_and(|&(id, _)| id >= end_id)
            }
            Slot::Resuming { .. } => false,
            Slot::Empty { .. } => true,
        });
        if end_id != 0 && all_ended {
            break;
        }
    }
    for slot in slots {
        if let Slot::Connected { mut subscriber, stream, .. } = slot {
            close(&poll, stream, false);
            subscriber.stayed = true;
            done.push(subscriber);
        }
    }
    done
}

/// Checks one subscriber against the ledger; returns what is wrong, if anything.
fn audit(subscriber: &Subscriber, ledger: &[Published], end_id: u64) -> Option<String> {
    if !subscriber.unexpected.is_empty() {
        return Some(format!("unexpected deliveries: {:?}", subscriber.unexpected));
    }
    let ids: Vec<u64> = subscriber.received.iter().map(|&(id, _)| id).collect();
    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        return Some(format!("out of order or twice: {} then {}", w[0], w[1]));
    }
    let mine: Vec<&Published> = ledger.iter().filter(|e| e.topics & subscriber.topics != 0).collect();
    let Some(&first) = ids.first() else {
        return subscriber.stayed.then(|| "stayed to the end and received nothing".to_string());
    };
    let Some(start) = mine.iter().position(|e| e.id == first) else {
        return Some(format!("received {first}, which was not published to its topics"));
    };
    for (at, &(id, fp)) in subscriber.received.iter().enumerate() {
        match mine.get(start + at) {
            Some(e) if e.id == id && e.fingerprint == fp => {}
            Some(e) if e.id == id => return Some(format!("event {id} arrived altered")),
            Some(e) => return Some(format!("expected {} next, got {id}: a gap or a stranger", e.id)),
            None => return Some(format!("received {id} after the last event of its topics")),
        }
    }
    if let Some(head) = subscriber.first_head {
        if let Some(missed) = mine[..start].iter().find(|e| e.started > head) {
            return Some(format!("missed {}, published after it had its response head", missed.id));
        }
    }
    if subscriber.stayed && ids.last() != Some(&end_id) {
        return Some(format!("stayed but ended at {:?}, not at the end event {end_id}", ids.last()));
    }
    None
}

#[test]
#[ignore = "soak: about two minutes; run by .ci/run"]
fn soak_churning_subscribers_get_every_event_once_in_order() {
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("soak seed {seed}");
    let server = Proc::start(&["--heartbeat", "5", "--history", "200000", "--max-lag", "1048576"]);
    let addr = server.listening_addr();
    let rss_start = server.rss_kib();
    let fds_start = server.fds();
    let cpu_start = server.cpu();
    let started = Instant::now();

    let shared = Arc::new(Shared {
        addr,
        stop: AtomicBool::new(false),
        settled: AtomicUsize::new(0),
        end_id: AtomicU64::new(0),
        stats: Stats::default(),
    });
    let ledger = Arc::new(Mutex::new(Vec::new()));
    let publish_stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|n| {
            let (ledger, stop) = (ledger.clone(), publish_stop.clone());
            std::thread::spawn(move || publisher(addr, n, seed.rotate_left(n * 7 + 1), ledger, stop))
        })
        .collect();
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let shared = shared.clone();
            std::thread::spawn(move || worker(shared, SLOTS / WORKERS, seed.rotate_left(n as u32 * 11 + 29)))
        })
        .collect();

    let mut rss_peak = rss_start;
    while started.elapsed() < CHURN {
        std::thread::sleep(Duration::from_secs(1)); // sampling RSS while the churn runs
        rss_peak = rss_peak.max(server.rss_kib());
    }
    publish_stop.store(true, Ordering::Release);
    for publisher in publishers {
        publisher.join().expect("a publisher");
    }
    shared.stop.store(true, Ordering::Release);
    assert!(
        eventually(|| shared.settled.load(Ordering::Acquire) == WORKERS),
        "the workers did not finish their resumes"
    );
    let mut ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let mut end = Conn::open(addr);
    let end_data = b"the end";
    let end_started = Instant::now();
    let end_id = end.publish(&topic_query(u8::MAX), end_data);
    ledger.push(Published {
        id: end_id,
        topics: u8::MAX,
        fingerprint: fingerprint(end_data),
        started: end_started,
    });
    ledger.sort_by_key(|e| e.id);
    shared.end_id.store(end_id, Ordering::Release);
    drop(end);
    let subscribers: Vec<Subscriber> =
        workers.into_iter().flat_map(|w| w.join().expect("a worker")).collect();
    rss_peak = rss_peak.max(server.rss_kib());
    let elapsed = started.elapsed();

    let failures: Vec<String> = subscribers
        .iter()
        .filter_map(|s| audit(s, &ledger, end_id).map(|f| format!("topics {:08b}: {f}", s.topics)))
        .collect();

    // Everyone has gone: the server gives back its connections and descriptors.
    let connections_back = eventually(|| metric(addr, "ssed_connections") == Some(1.0));
    let fds_back = eventually(|| server.fds() <= fds_start);
    let fds_end = server.fds();
    let history_bytes = metric(addr, "ssed_history_bytes").unwrap_or(0.0) as u64;
    let lag_drops = metric(addr, "ssed_subscribers_dropped_total{reason=\"lag\"}").unwrap_or(0.0);
    let rss_end = server.rss_kib();
    let cpu = server.cpu() - cpu_start;

    let stats = &shared.stats;
    let deliveries: usize = subscribers.iter().map(|s| s.received.len()).sum();
    let stayed = subscribers.iter().filter(|s| s.stayed).count();
    println!(
        "soak: {elapsed:.1?}; {} events published; {deliveries} deliveries audited; {} subscribers ({} joins, \
         {stayed} stayed to the end, {} left, {} resumes, {} closes by reset, {} streams closed by the server, \
         {lag_drops} lag drops); at most {} connected at once",
        ledger.len(),
        subscribers.len(),
        stats.joins.load(Ordering::Relaxed),
        stats.leaves.load(Ordering::Relaxed),
        stats.resumes.load(Ordering::Relaxed),
        stats.resets.load(Ordering::Relaxed),
        stats.server_closes.load(Ordering::Relaxed),
        stats.max_connected.load(Ordering::Relaxed),
    );
    println!(
        "soak: server RSS {rss_start} KiB at start, {rss_peak} KiB peak, {rss_end} KiB at the end (history \
         {history_bytes} B); descriptors {fds_start} at start, {fds_end} at the end; {cpu:.1?} of server CPU"
    );
    assert!(
        failures.is_empty(),
        "{} of {} subscribers failed the audit: {:#?}",
        failures.len(),
        subscribers.len(),
        &failures[..failures.len().min(20)]
    );
    assert!(
        stayed > 0 && stats.resumes.load(Ordering::Relaxed) > 0 && stats.leaves.load(Ordering::Relaxed) > 0
    );
    assert!(connections_back, "connections: {:?}", metric(addr, "ssed_connections"));
    assert!(fds_back, "descriptors {fds_end}, {fds_start} at start");
    // Near the start: the history held at the end, twice over for the allocator, plus 16 MiB for
    // what the allocator keeps of the buffers that 3000 connections once used.
    let bound = rss_start + 2 * history_bytes / 1024 + 16 * 1024;
    assert!(rss_end < bound, "RSS {rss_end} KiB at the end, over {bound} KiB");
}
