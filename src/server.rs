//! The mio shell: one `Poll`, the listener, a slab of connections, the waker; it moves bytes and
//! readiness and leaves every decision to the pure core.
//!
//! A loop turn: sleep in `poll` until readiness or the earliest deadline; accept until `WouldBlock`;
//! read each readable connection until `WouldBlock` and carry out its complete requests (a publish is
//! stored and answered at once, its subscribers only marked); fire due deadlines; then write once to
//! every marked subscriber, so events published in the same turn leave in one vectored write.

use std::io::{IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, log_enabled, trace, warn, Level};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::broadcast::{self, Broadcast, Cursor, Framing, Limits, NewEvent, Selection};
use crate::config::Config;
use crate::conn::{Action, Incoming, Meta, RequestReader, Waiting};
use crate::error::Error;
use crate::fanout::{List, Registry};
use crate::handle::{Command, Event, Mailbox, Publisher, Shutdown};
use crate::http::chunk::{self, LAST_CHUNK};
use crate::http::response::{self, Refusal};
use crate::http::route::{Publish, Subscribe};
use crate::metrics::{DropReason, Gauges, Metrics};
use crate::net::{self, Outcome};
use crate::slab::{Key, Slab};
use crate::sse;
use crate::store::{Fsync, Record, Store};
use crate::systemd::Notifier;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// Descriptors kept back from `--max-connections` for the listener, epoll, the waker, logging and the
/// connections that are accepted only to be told the server is full.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Connections beyond `--max-connections` that may wait for their one answer at the same time.
const OVERFLOW_CONNECTIONS: usize = 32;
/// How long accepting pauses after the process ran out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long a closing connection may keep reading the client's leftover bytes, so the final answer is
/// not destroyed by a reset (RFC 9112 §9.6, "tear-down").
const LINGER: Duration = Duration::from_secs(2);
/// Pending response bytes after which a connection's further requests wait until the client reads.
const MAX_PENDING_RESPONSES: usize = 64 * 1024;
/// Bytes one vectored write gathers at most.
const MAX_WRITE_BYTES: usize = 256 * 1024;
/// Readiness events taken per `poll` call.
const EVENTS_CAPACITY: usize = 1024;

/// A running ssed instance: configure it, take handles, then [`Server::run`] it on a thread of your own.
pub struct Server {
    config: Config,
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    commands: mpsc::Receiver<Command>,
    mailbox: Mailbox,
    notifier: Option<Notifier>,
    log: Broadcast,
    store: Option<Store>,
}

/// How often `STATUS=` is refreshed for `systemctl status` when a notifier is set.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

impl Server {
    /// Validates `config` and binds `config.listen`.
    pub fn bind(config: Config) -> Result<Server, Error> {
        config.validate()?;
        let listener = net::bind(config.listen)?;
        Server::from_listener(config, listener)
    }

    /// Validates `config` and serves on a listener bound elsewhere (a test's port 0, an inherited
    /// socket); `config.listen` is then ignored.
    pub fn from_listener(mut config: Config, listener: std::net::TcpListener) -> Result<Server, Error> {
        config.validate()?;
        listener.set_nonblocking(true).map_err(|e| Error::io("making the listener non-blocking", e))?;
        let local_addr = listener.local_addr().map_err(|e| Error::io("reading the listener's address", e))?;
        if let Some(limit) = net::descriptor_limit() {
            let usable = limit.saturating_sub(RESERVED_DESCRIPTORS + OVERFLOW_CONNECTIONS as u64).max(1);
            if (config.max_connections as u64) > usable {
                info!(
                    "max-connections lowered from {} to {usable} by the open-file limit {limit} (raise LimitNOFILE / ulimit -n)",
                    config.max_connections
                );
                config.max_connections = usable as usize;
            }
        }
        let poll = Poll::new().map_err(|e| Error::io("creating the epoll instance", e))?;
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(|e| Error::io("creating the loop waker", e))?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| Error::io("registering the listener", e))?;
        let (log, store) = open_history(&config)?;
        let (sender, commands) = mpsc::channel();
        let mailbox = Mailbox {
            commands: sender,
            waker: Arc::new(waker),
            shutdown: Arc::new(AtomicBool::new(false)),
            max_body: config.max_body,
        };
        Ok(Server { config, poll, listener, local_addr, commands, mailbox, notifier: None, log, store })
    }

    /// Reports to a service manager through `notifier`: `READY=1` once the loop runs, `STATUS=` with
    /// the subscriber count now and then, `WATCHDOG=1` from the loop itself (so a stuck loop gets the
    /// service restarted) and `STOPPING=1` when a shutdown begins.
    pub fn with_notifier(mut self, notifier: Notifier) -> Server {
        self.notifier = Some(notifier);
        self
    }

    /// The address the server accepts on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The settings in force, after start-up adjustments such as the descriptor cap.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A handle that publishes from any thread.
    pub fn publisher(&self) -> Publisher {
        Publisher { mailbox: self.mailbox.clone() }
    }

    /// A handle that stops the server from any thread.
    pub fn shutdown_handle(&self) -> Shutdown {
        Shutdown { mailbox: self.mailbox.clone() }
    }

    /// Runs the event loop on the calling thread until a [`Shutdown`] handle stops it.
    ///
    /// Returns an error only when the loop itself fails (epoll stops working); problems with single
    /// connections are answered on them and logged.
    pub fn run(self) -> Result<(), Error> {
        let now = Instant::now();
        let Server { config, poll, listener, local_addr, commands, mailbox, notifier, log, store } = self;
        info!("ssed listening on {local_addr}");
        let mut event_loop = Loop {
            log,
            store,
            pending_acks: Vec::new(),
            config,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            registry: Registry::new(),
            timers: crate::timer::Timers::new(),
            metrics: Metrics::default(),
            dirty: Vec::new(),
            subscribers: 0,
            commands,
            shutdown: mailbox.shutdown.clone(),
            stopping_by: None,
            accept_paused_until: None,
            scratch: vec![0; 64 * 1024],
            rng: Rng::seeded(),
            now,
            supervisor: notifier.map(|notifier| Supervisor { notifier, next_tick: now }),
        };
        let result = event_loop.run();
        // Handles that publish after this point get `Stopped`, not a hang.
        mailbox.shutdown.store(true, Ordering::Release);
        result
    }
}

/// The history a server starts with: empty, or read back from `--data-dir`.
///
/// With a data directory the records are replayed through the same encoder (the in-memory limits
/// evict as they go, so only the tail is kept), ids continue above the newest on disk, and segments
/// that no longer hold a retained event are deleted.
fn open_history(config: &Config) -> Result<(Broadcast, Option<Store>), Error> {
    let limits = Limits { events: config.history, bytes: config.history_bytes };
    let Some(dir) = &config.data_dir else { return Ok((Broadcast::new(limits, wall_micros()), None)) };
    // Segments small enough that deleting whole ones keeps the disk close to the memory limits.
    let segment_bytes = (config.history_bytes as u64 / 8).clamp(1 << 20, 64 << 20);
    let mut log: Option<Broadcast> = None;
    let mut store = Store::open(dir, config.fsync, segment_bytes, |record| {
        let log = log.get_or_insert_with(|| Broadcast::new(limits, record.id));
        let topics: Vec<&str> = record.topics.iter().map(String::as_str).collect();
        let event = NewEvent {
            topics: &topics,
            event_type: record.event_type.as_deref(),
            retry_ms: record.retry_ms,
            data: &record.data,
        };
        match log.encode(&event, record.id) {
            Ok(encoded) => {
                log.insert(&topics, encoded);
            }
            Err(_) => warn!("event {} on disk is larger than --history-bytes allows; skipped", record.id),
        }
    })?;
    let mut log = log.unwrap_or_else(|| Broadcast::new(limits, wall_micros()));
    log.raise_next_id(wall_micros());
    store.retain(log.oldest_id());
    Ok((log, Some(store)))
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

/// The wall clock in microseconds since the Unix epoch: the floor for new event ids.
fn wall_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A small xorshift generator for jitter (lifetimes, retry back-off); nothing secret depends on it.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = wall_micros() ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// A subscriber's state: its topics, its place on their lists, and its cursor into the log.
struct Stream {
    selection: Selection,
    /// Position on the first list (`All`, or the first of `selection.topics()`), kept inline because
    /// nearly every stream is on exactly one list.
    position: u32,
    /// Positions on the other lists, parallel to `selection.topics()[1..]`; empty (no allocation)
    /// for a one-list stream.
    more_positions: Box<[u32]>,
    cursor: Cursor,
    framing: Framing,
    /// `--max-lifetime`: when the stream ends cleanly.
    ends_at: Option<Instant>,
}

impl Stream {
    fn position(&self, index: usize) -> u32 {
        if index == 0 {
            self.position
        } else {
            self.more_positions[index - 1]
        }
    }

    fn set_position(&mut self, index: usize, position: u32) {
        if index == 0 {
            self.position = position;
        } else {
            self.more_positions[index - 1] = position;
        }
    }

    /// The subscriber lists the stream is on, in position order.
    fn lists(&self) -> Vec<List> {
        match &self.selection {
            Selection::All => vec![List::All],
            other => other.topics().iter().map(|&t| List::Topic(t)).collect(),
        }
    }
}

enum Phase {
    /// Reading and answering requests.
    Requests(Box<RequestReader>),
    /// An event stream.
    Streaming(Stream),
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    /// Bytes queued ahead of everything else: response heads, answers, heartbeats, the gap notice.
    out: Vec<u8>,
    out_at: usize,
    /// The deadline this connection has in the timer heap, if any.
    scheduled: Option<Instant>,
    /// Last time bytes were written (streams) — heartbeats count from it.
    last_write: Instant,
    /// On the list of streams to write at the end of the turn.
    dirty: bool,
    /// The last write hit `WouldBlock`: wait for `WRITABLE` instead of writing again.
    blocked: bool,
    /// Accepted beyond `--max-connections`: gets one answer, then is closed.
    over_capacity: bool,
    /// Close once `out` is written (and, for a stream, write nothing more from the log).
    closing: bool,
    /// Answers in `out` that wait for the durable history's commit at the end of the turn.
    awaiting_commit: u32,
    /// Set once the write side is shut: the connection only drains the client's bytes until `LINGER`.
    lingering_until: Option<Instant>,
}

impl Conn {
    fn pending_out(&self) -> usize {
        self.out.len() - self.out_at
    }
}

/// Why the loop is closing a connection, for the debug log and the metrics.
#[derive(Debug, Clone, Copy)]
enum CloseReason {
    PeerClosed,
    Error,
    Done,
    IdleTimeout,
    Dropped(DropReason),
    Shutdown,
}

/// A publish whose answer waits for the durable history's commit.
enum Ack {
    /// An HTTP answer already queued in the connection's `out`, from `out_start` on.
    Http { key: Key, out_start: usize },
    /// A [`Publisher`] call waiting on its reply channel.
    Handle { reply: mpsc::SyncSender<Result<broadcast::EventId, Error>>, id: broadcast::EventId },
}

struct Loop {
    config: Config,
    /// The durable history, with `--data-dir`.
    store: Option<Store>,
    /// Publishes of this turn waiting for the commit.
    pending_acks: Vec<Ack>,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    log: Broadcast,
    registry: Registry,
    timers: crate::timer::Timers,
    metrics: Metrics,
    /// Streams with something new to write this turn.
    dirty: Vec<Key>,
    subscribers: usize,
    commands: mpsc::Receiver<Command>,
    shutdown: Arc<AtomicBool>,
    /// Set when a graceful shutdown has begun: the deadline for flushing.
    stopping_by: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// One read buffer for every connection: connections keep only what they have not parsed yet.
    scratch: Vec<u8>,
    rng: Rng,
    /// The clock, read once per turn.
    now: Instant,
    supervisor: Option<Supervisor>,
}

/// The service manager's view of the loop: readiness, status and watchdog pings.
struct Supervisor {
    notifier: Notifier,
    next_tick: Instant,
}

impl Supervisor {
    fn send(&self, message: &str) {
        if let Err(e) = self.notifier.notify(message) {
            warn!("notifying the service manager ({message:?}) failed: {e}");
        }
    }

    fn interval(&self) -> Duration {
        self.notifier.watchdog_interval().map_or(STATUS_INTERVAL, |w| w.min(STATUS_INTERVAL))
    }
}

impl Loop {
    fn status(&self) -> String {
        format!("STATUS={} subscribers, {} connections", self.subscribers, self.conns.len())
    }

    /// Pings the watchdog and refreshes the status when due; called once per turn.
    fn supervise(&mut self) {
        let status = self.status();
        let Some(supervisor) = &mut self.supervisor else { return };
        if supervisor.next_tick > self.now {
            return;
        }
        let ping = if supervisor.notifier.watchdog_interval().is_some() { "WATCHDOG=1\n" } else { "" };
        supervisor.send(&format!("{ping}{status}"));
        supervisor.next_tick = self.now + supervisor.interval();
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        if let Some(supervisor) = &self.supervisor {
            // The listener is registered and the loop is about to wait on it: clients can connect.
            supervisor.send(&format!("READY=1\n{}", self.status()));
        }
        loop {
            self.supervise();
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                error!("event loop failed: {e}");
                return Err(Error::io("waiting for events", e));
            }
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.handle_commands(),
                    token => {
                        let key = Key::from_token(token.0);
                        if event.is_writable() {
                            self.handle_writable(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.handle_readable(key);
                        }
                    }
                }
            }
            if self.accept_paused_until.is_some_and(|t| t <= self.now) {
                self.accept_paused_until = None;
                self.accept();
            }
            if self.shutdown.load(Ordering::Acquire) && self.stopping_by.is_none() {
                self.begin_shutdown();
            }
            self.fire_timers();
            self.commit_turn();
            self.flush_dirty();
            if let Some(by) = self.stopping_by {
                if self.conns.len() == 0 || self.now >= by {
                    if self.conns.len() > 0 {
                        warn!("shutdown deadline passed: cutting {} connections", self.conns.len());
                    }
                    info!("ssed stopped");
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut timeout = self.timers.poll_timeout(now);
        let supervise = self.supervisor.as_ref().map(|s| s.next_tick);
        for extra in [self.accept_paused_until, self.stopping_by, supervise].into_iter().flatten() {
            let wait = extra.saturating_duration_since(now);
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        timeout
    }

    // ----- accepting -----

    fn accept(&mut self) {
        while self.accept_paused_until.is_none() {
            let Some(listener) = &self.listener else { return };
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if net::is_resource_exhaustion(&e) => {
                    warn!("accept failed: {e}; pausing new connections for {ACCEPT_PAUSE:?}");
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends concern one client only.
                    debug!("accept failed: {e}");
                    continue;
                }
            };
            let over_capacity = self.conns.len() >= self.config.max_connections;
            if over_capacity && self.conns.len() >= self.config.max_connections + OVERFLOW_CONNECTIONS {
                self.metrics.connections_rejected += 1;
                debug!("peer={peer} refused: over --max-connections with no room to answer");
                continue; // dropping the stream closes it
            }
            self.metrics.connections_accepted += 1;
            net::tune_stream(&stream);
            let conn = Conn {
                stream,
                phase: Phase::Requests(Box::new(RequestReader::new(self.now))),
                out: Vec::new(),
                out_at: 0,
                scheduled: None,
                last_write: self.now,
                dirty: false,
                blocked: false,
                over_capacity,
                closing: false,
                awaiting_commit: 0,
                lingering_until: None,
            };
            let key = self.conns.insert(conn);
            let conn = self.conns.get_mut(key).expect("just inserted");
            // Both directions at once, edge-triggered: no re-registration is ever needed.
            if let Err(e) = self.poll.registry().register(
                &mut conn.stream,
                Token(key.to_token()),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("peer={peer} could not be registered: {e}");
                self.conns.remove(key);
                continue;
            }
            if over_capacity {
                self.metrics.connections_rejected += 1;
            }
            debug!("conn={} peer={peer} open", key.slot);
            self.schedule(key);
        }
    }

    // ----- reading and requests -----

    fn handle_readable(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match &mut conn.phase {
            Phase::Requests(_) if conn.lingering_until.is_none() => self.read_requests(key),
            _ => self.drain_input(key),
        }
    }

    /// Reads and throws away what a stream's or a closing connection's client sends, to notice its end.
    fn drain_input(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        loop {
            match net::classify(conn.stream.read(&mut self.scratch), true) {
                Outcome::Done(_) => continue,
                Outcome::WouldBlock => return,
                Outcome::Closed => return self.close(key, CloseReason::PeerClosed),
                Outcome::Failed(e) => {
                    debug!("conn={} read failed: {e}", key.slot);
                    return self.close(key, CloseReason::Error);
                }
            }
        }
    }

    /// Reads until `WouldBlock` (or until the input cap), carrying out each complete request.
    fn read_requests(&mut self, key: Key) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.closing || conn.pending_out() >= MAX_PENDING_RESPONSES {
                // Wait for the client to read its answers; WRITABLE brings us back here.
                return;
            }
            let Phase::Requests(reader) = &mut conn.phase else { return self.drain_input(key) };
            let budget = reader.read_budget(&self.config).saturating_sub(reader.input.len()).max(1);
            let want = budget.min(self.scratch.len());
            let was_idle = reader.waiting() == Waiting::Idle;
            match net::classify(conn.stream.read(&mut self.scratch[..want]), true) {
                Outcome::Done(n) => {
                    trace!("conn={} read {n} bytes", key.slot);
                    reader.input.extend_from_slice(&self.scratch[..n]);
                    reader.handle_input_at(was_idle, self.now);
                    self.process_requests(key);
                }
                Outcome::WouldBlock => {
                    self.schedule(key);
                    return;
                }
                Outcome::Closed => {
                    // A half-close after a complete request still gets its answer.
                    let conn = self.conns.get_mut(key).expect("checked above");
                    if conn.pending_out() > 0 {
                        conn.closing = true;
                        self.flush(key);
                    } else {
                        self.close(key, CloseReason::PeerClosed);
                    }
                    return;
                }
                Outcome::Failed(e) => {
                    debug!("conn={} read failed: {e}", key.slot);
                    return self.close(key, CloseReason::Error);
                }
            }
        }
    }

    fn process_requests(&mut self, key: Key) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.closing || conn.pending_out() >= MAX_PENDING_RESPONSES {
                break;
            }
            let Phase::Requests(reader) = &mut conn.phase else { break };
            let Some(incoming) = reader.poll_request(&self.config, self.now) else { break };
            match incoming {
                Incoming::Interim(bytes) => conn.out.extend_from_slice(bytes),
                Incoming::Refused(meta, refusal) => self.refuse(key, &meta, &refusal),
                Incoming::Request(meta, action) => self.carry_out(key, meta, action),
            }
        }
        self.flush(key);
        self.schedule(key);
    }

    fn cors(&self, origin: Option<&str>) -> Vec<u8> {
        let mut cors = Vec::new();
        response::push_cors(&self.config, origin, &mut cors);
        cors
    }

    fn refuse(&mut self, key: Key, meta: &Meta, refusal: &Refusal) {
        let status = refusal.status();
        self.metrics.refused(status);
        info!("conn={} refused: {status} {}", key.slot, refusal.reason());
        let cors = self.cors(meta.origin.as_deref());
        let Some(conn) = self.conns.get_mut(key) else { return };
        let keep_alive = meta.keep_alive && !refusal.closes() && !conn.over_capacity;
        response::refusal(refusal, keep_alive, &cors, &mut conn.out);
        if !keep_alive {
            conn.closing = true;
        }
    }

    fn carry_out(&mut self, key: Key, meta: Meta, action: Action) {
        let over_capacity = self.conns.get(key).is_some_and(|c| c.over_capacity);
        if over_capacity {
            match action {
                Action::Health => {}
                Action::Subscribe(s) if !s.head_only => return self.turn_away_subscriber(key, &meta),
                _ => return self.refuse(key, &meta, &Refusal::Overloaded),
            }
        }
        let cors = self.cors(meta.origin.as_deref());
        let keep_alive = meta.keep_alive && !over_capacity;
        match action {
            Action::Health => {
                let conn = self.conns.get_mut(key).expect("caller holds a live key");
                response::text(200, "ok\n", keep_alive, meta.head_only, &cors, &mut conn.out);
                conn.closing |= !keep_alive;
            }
            Action::Metrics => {
                let gauges = Gauges {
                    connections: self.conns.len(),
                    subscribers: self.subscribers,
                    history_events: self.log.len(),
                    history_bytes: self.log.bytes(),
                };
                let body = self.metrics.render(&gauges);
                let conn = self.conns.get_mut(key).expect("caller holds a live key");
                response::text(200, &body, keep_alive, meta.head_only, &cors, &mut conn.out);
                conn.closing |= !keep_alive;
            }
            Action::Preflight => {
                let conn = self.conns.get_mut(key).expect("caller holds a live key");
                response::preflight(&self.config, meta.origin.as_deref(), keep_alive, &mut conn.out);
                conn.closing |= !keep_alive;
            }
            Action::Publish(publish) => match self.publish(&publish) {
                Ok(id) => {
                    let defer = self.defers_acks();
                    let conn = self.conns.get_mut(key).expect("caller holds a live key");
                    if defer {
                        conn.awaiting_commit += 1;
                        self.pending_acks.push(Ack::Http { key, out_start: conn.out.len() });
                    }
                    response::text(200, &format!("{id}\n"), keep_alive, false, &cors, &mut conn.out);
                    conn.closing |= !keep_alive;
                }
                Err(refusal) => self.refuse(key, &meta, &refusal),
            },
            Action::Subscribe(subscribe) if subscribe.head_only => {
                let conn = self.conns.get_mut(key).expect("caller holds a live key");
                response::stream_head(meta.http10, keep_alive, &cors, &mut conn.out);
                conn.closing |= !keep_alive;
            }
            Action::Subscribe(subscribe) => self.subscribe(key, &meta, &subscribe, &cors),
        }
    }

    // ----- publishing -----

    /// Stores an event and marks the streams of its topics; they are written at the end of the turn.
    fn publish(&mut self, publish: &Publish) -> Result<broadcast::EventId, Refusal> {
        let topics: Vec<&str> = publish.topics.iter().map(String::as_str).collect();
        let event = NewEvent {
            topics: &topics,
            event_type: publish.event_type.as_deref(),
            retry_ms: publish.retry_ms,
            data: &publish.data,
        };
        let id = self.log.next_id(wall_micros());
        let encoded = self.log.encode(&event, id).map_err(|_| Refusal::EventTooLarge)?;
        if let Some(store) = &mut self.store {
            let record = Record {
                id,
                topics: publish.topics.clone(),
                event_type: publish.event_type.clone(),
                retry_ms: publish.retry_ms,
                data: publish.data.clone(),
            };
            if let Err(e) = store.append(&record) {
                warn!("event not stored: writing the history failed: {e}");
                return Err(Refusal::Storage(format!("event not stored: writing the history failed: {e}")));
            }
            if store.fsync() != Fsync::Never {
                // Subscribers see it only once it is on disk: a crash must not leave delivered
                // events that a restart does not know.
                self.log.hold();
            }
        }
        let id = encoded.id();
        let topic_ids = self.log.insert(&topics, encoded);
        self.metrics.events_published += 1;
        let lists = topic_ids.iter().map(|&t| List::Topic(t)).chain(std::iter::once(List::All));
        for list in lists {
            for &sub in self.registry.subscribers(list) {
                if let Some(conn) = self.conns.get_mut(sub) {
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(sub);
                    }
                }
            }
        }
        trace!("published {id} to {topics:?}");
        Ok(id)
    }

    fn handle_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Publish(event, reply) => {
                    let Event { topics, event_type, data, retry } = event;
                    let publish =
                        Publish { topics, event_type, retry_ms: retry.map(|r| r.as_millis() as u64), data };
                    match self.publish(&publish) {
                        Ok(id) if self.defers_acks() => self.pending_acks.push(Ack::Handle { reply, id }),
                        result => {
                            let result = result
                                .map_err(|r| Error::invalid_event(format!("event refused: {}", r.reason())));
                            // The caller may have given up waiting; the outcome stands either way.
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        }
    }

    /// Whether publishes are answered only after the turn's commit (a durable history that syncs).
    fn defers_acks(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.fsync() != Fsync::Never)
    }

    /// Ends the turn for the durable history: one sync for every record written in it (group
    /// commit), then the held answers and the events go out. If the sync fails the turn's events are
    /// dropped from memory as well as disk and their publishers get `503`.
    fn commit_turn(&mut self) {
        if !self.config.history_age.is_zero() {
            let cutoff = wall_micros().saturating_sub(self.config.history_age.as_micros() as u64);
            self.log.evict_below(cutoff);
        }
        let Some(store) = &mut self.store else { return };
        let result = store.commit();
        store.retain(self.log.oldest_id());
        if self.pending_acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.pending_acks);
        match result {
            Ok(()) => {
                self.log.commit();
                for ack in acks {
                    match ack {
                        Ack::Http { key, .. } => {
                            if let Some(conn) = self.conns.get_mut(key) {
                                conn.awaiting_commit -= 1;
                                self.flush(key);
                            }
                        }
                        Ack::Handle { reply, id } => {
                            let _ = reply.send(Ok(id));
                        }
                    }
                }
            }
            Err(e) => {
                error!("syncing the history failed: {e}; this turn's {} events are dropped", acks.len());
                self.log.rollback();
                let refusal = Refusal::Storage(format!("event not stored: syncing the history failed: {e}"));
                for ack in acks {
                    match ack {
                        Ack::Http { key, out_start } => {
                            let Some(conn) = self.conns.get_mut(key) else { continue };
                            if conn.awaiting_commit == 0 {
                                continue; // already answered by an earlier ack of the same connection
                            }
                            // Everything queued from the first held answer on is replaced: one 503, and
                            // the connection closes so pipelined requests are not left in doubt.
                            conn.out.truncate(out_start.max(conn.out_at));
                            conn.awaiting_commit = 0;
                            response::refusal(&refusal, false, b"", &mut conn.out);
                            conn.closing = true;
                            self.metrics.refused(refusal.status());
                            self.flush(key);
                        }
                        Ack::Handle { reply, .. } => {
                            let _ = reply.send(Err(Error::invalid_event(refusal.reason())));
                        }
                    }
                }
            }
        }
    }

    // ----- subscribing -----

    fn subscribe(&mut self, key: Key, meta: &Meta, subscribe: &Subscribe, cors: &[u8]) {
        let names: Vec<&str> = subscribe.topics.iter().map(String::as_str).collect();
        let selection = self.log.acquire(&names);
        let resume = self.log.resume(&selection, subscribe.last_event_id);
        let framing = if meta.http10 { Framing::Raw } else { Framing::Chunked };
        let mut stream = Stream {
            selection,
            position: 0,
            more_positions: Box::new([]),
            cursor: resume.cursor,
            framing,
            ends_at: None,
        };
        let positions: Vec<u32> =
            stream.lists().into_iter().map(|list| self.registry.add(list, key)).collect();
        stream.position = positions[0];
        stream.more_positions = positions[1..].into();
        stream.ends_at = (!self.config.max_lifetime.is_zero()).then(|| {
            let base = self.config.max_lifetime.as_millis() as u64;
            let jitter = self.rng.between(base * 8 / 10, base * 12 / 10);
            self.now + Duration::from_millis(jitter)
        });
        let mut body = Vec::new();
        sse::encode_prelude(self.config.retry.as_millis() as u64, &mut body);
        if let Some((last, oldest)) = resume.gap {
            self.metrics.resume_gaps += 1;
            sse::encode_gap(last, oldest, &mut body);
        }
        let conn = self.conns.get_mut(key).expect("caller holds a live key");
        response::stream_head(meta.http10, false, cors, &mut conn.out);
        push_body(framing, &body, &mut conn.out);
        conn.phase = Phase::Streaming(stream);
        conn.last_write = self.now;
        self.subscribers += 1;
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        debug!("conn={} subscribed to {:?} from {:?}", key.slot, subscribe.topics, subscribe.last_event_id);
    }

    /// At capacity, a subscriber is told to come back later in a way `EventSource` honours: a normal
    /// stream that carries only a long, random `retry:` and ends at once (any non-200 would be final).
    fn turn_away_subscriber(&mut self, key: Key, meta: &Meta) {
        let retry_ms = self.rng.between(1_000, 10_000);
        let cors = self.cors(meta.origin.as_deref());
        let framing = if meta.http10 { Framing::Raw } else { Framing::Chunked };
        let mut body = Vec::new();
        sse::encode_prelude(retry_ms, &mut body);
        info!("conn={} subscriber turned away at --max-connections (retry {retry_ms} ms)", key.slot);
        let conn = self.conns.get_mut(key).expect("caller holds a live key");
        response::stream_head(meta.http10, false, &cors, &mut conn.out);
        push_body(framing, &body, &mut conn.out);
        if framing == Framing::Chunked {
            conn.out.extend_from_slice(LAST_CHUNK);
        }
        conn.closing = true;
    }

    // ----- writing -----

    fn handle_writable(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.blocked = false;
        let resumes_reading =
            matches!(conn.phase, Phase::Requests(_)) && conn.pending_out() >= MAX_PENDING_RESPONSES;
        self.flush(key);
        if resumes_reading {
            // Reading paused for this client's answers to drain; edge-triggered, so pick it up here.
            self.read_requests(key);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            conn.dirty = false;
            if conn.blocked {
                // The socket is full: only check whether the backlog has grown past what is allowed.
                self.check_lag(key);
            } else {
                self.flush(key);
            }
        }
        // Keep the allocation for the next turn.
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Closes a stream whose socket is full and whose backlog passed `--max-lag` or left the history.
    fn check_lag(&mut self, key: Key) {
        let Some(conn) = self.conns.get(key) else { return };
        let Phase::Streaming(stream) = &conn.phase else { return };
        if self.log.lost(&stream.selection, &stream.cursor) {
            return self.close(key, CloseReason::Dropped(DropReason::Evicted));
        }
        let backlog = self.log.backlog(&stream.selection, &stream.cursor) + conn.pending_out() as u64;
        if backlog > self.config.max_lag as u64 {
            self.close(key, CloseReason::Dropped(DropReason::Lag));
        }
    }

    /// Writes what the connection owes: queued bytes first, then (for a stream) the log from its
    /// cursor, gathered into vectored writes until done or `WouldBlock`.
    fn flush(&mut self, key: Key) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.blocked || conn.lingering_until.is_some() || conn.awaiting_commit > 0 {
                return;
            }
            let mut slices = [IoSlice::new(&[]); broadcast::MAX_SLICES + 1];
            let own = conn.pending_out();
            let mut used = 0;
            if own > 0 {
                slices[0] = IoSlice::new(&conn.out[conn.out_at..]);
                used = 1;
            }
            let mut gathered = None;
            if let Phase::Streaming(stream) = &conn.phase {
                if !conn.closing {
                    if self.log.lost(&stream.selection, &stream.cursor) {
                        return self.close(key, CloseReason::Dropped(DropReason::Evicted));
                    }
                    let g = self.log.gather(
                        &stream.selection,
                        &stream.cursor,
                        stream.framing,
                        &mut slices[used..],
                        MAX_WRITE_BYTES,
                    );
                    used += g.slices;
                    gathered = Some(g);
                }
            }
            if used == 0 {
                // Everything written: give the buffer back so an idle connection holds no heap.
                conn.out = Vec::new();
                conn.out_at = 0;
                if conn.closing {
                    self.finish_closing(key);
                }
                return;
            }
            let result = if used == 1 {
                conn.stream.write(&slices[0])
            } else {
                conn.stream.write_vectored(&slices[..used])
            };
            match net::classify(result, false) {
                Outcome::Done(written) => {
                    self.metrics.bytes_sent += written as u64;
                    conn.last_write = self.now;
                    let from_own = written.min(own);
                    conn.out_at += from_own;
                    if let (Phase::Streaming(stream), Some(g)) = (&mut conn.phase, gathered) {
                        let framing = stream.framing;
                        self.log.advance(
                            &stream.selection,
                            &mut stream.cursor,
                            framing,
                            &g,
                            written - from_own,
                        );
                    }
                    // The common case, one write that took everything and gathered all there was:
                    // finish now instead of gathering again only to find nothing.
                    let took_all = written == own + gathered.map_or(0, |g| g.bytes);
                    let gathered_all =
                        gathered.map_or(true, |g| g.slices < broadcast::MAX_SLICES && g.bytes < MAX_WRITE_BYTES);
                    if took_all && gathered_all && !conn.closing {
                        conn.out = Vec::new();
                        conn.out_at = 0;
                        return;
                    }
                }
                Outcome::WouldBlock => {
                    conn.blocked = true;
                    self.check_lag(key);
                    self.schedule(key);
                    return;
                }
                Outcome::Closed => return self.close(key, CloseReason::PeerClosed),
                Outcome::Failed(e) => {
                    debug!("conn={} write failed: {e}", key.slot);
                    return self.close(key, CloseReason::Error);
                }
            }
        }
    }

    /// All owed bytes are written on a closing connection: shut the write side, then read until the
    /// client closes (or `LINGER` passes) so unread request bytes do not turn the close into a reset.
    fn finish_closing(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
            return self.close(key, CloseReason::Done);
        }
        if self.stopping_by.is_some() {
            // Shutting down: the answer is out and nothing more will be read.
            return self.close(key, CloseReason::Done);
        }
        conn.lingering_until = Some(self.now + LINGER);
        self.schedule(key);
        self.drain_input(key);
    }

    // ----- deadlines -----

    /// The next moment this connection needs attention, if any.
    fn deadline_of(&self, conn: &Conn) -> Option<Instant> {
        if let Some(until) = conn.lingering_until {
            return Some(until);
        }
        match &conn.phase {
            Phase::Requests(reader) => Some(reader.poll_deadline(&self.config)),
            Phase::Streaming(stream) => {
                let heartbeat = (!self.config.heartbeat.is_zero() && !conn.closing)
                    .then(|| conn.last_write + self.config.heartbeat);
                // A stream that cannot flush its end is given as long as a request head.
                let closing = conn.closing.then(|| conn.last_write + self.config.header_timeout);
                [heartbeat, stream.ends_at, closing].into_iter().flatten().min()
            }
        }
    }

    /// Puts the connection's next deadline in the heap if it is earlier than the one already there.
    fn schedule(&mut self, key: Key) {
        let Some(conn) = self.conns.get(key) else { return };
        let Some(at) = self.deadline_of(conn) else { return };
        if conn.scheduled.is_some_and(|s| s <= at) {
            return; // the earlier entry fires first and reschedules
        }
        self.conns.get_mut(key).expect("checked above").scheduled = Some(at);
        self.timers.schedule(key, at);
    }

    fn fire_timers(&mut self) {
        while let Some((key, at)) = self.timers.poll_expired(self.now) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.scheduled != Some(at) {
                continue; // stale: the connection rescheduled earlier since
            }
            conn.scheduled = None;
            self.handle_timeout(key);
            self.schedule(key);
        }
        // Closed connections leave their entries behind; compact before they outnumber the living.
        if self.timers.len() > 2 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.timers.retain(|key, at| conns.get(key).is_some_and(|c| c.scheduled == Some(at)));
        }
    }

    fn handle_timeout(&mut self, key: Key) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.lingering_until.is_some_and(|t| t <= now) {
            return self.close(key, CloseReason::Done);
        }
        match &conn.phase {
            Phase::Requests(reader) => {
                if reader.poll_deadline(&self.config) > now {
                    return;
                }
                if conn.closing {
                    // Its answer could not be written within the time: give up on it.
                    return self.close(key, CloseReason::IdleTimeout);
                }
                if reader.waiting() == Waiting::Idle {
                    return self.close(key, CloseReason::IdleTimeout);
                }
                let meta = Meta { keep_alive: false, http10: false, head_only: false, origin: None };
                self.refuse(key, &meta, &Refusal::Timeout);
                self.flush(key);
            }
            Phase::Streaming(stream) => {
                if conn.closing {
                    if conn.last_write + self.config.header_timeout <= now {
                        self.close(key, CloseReason::IdleTimeout);
                    }
                    return;
                }
                if stream.ends_at.is_some_and(|t| t <= now) {
                    self.metrics.dropped(DropReason::Lifetime);
                    debug!("conn={} reached --max-lifetime", key.slot);
                    self.end_stream(key);
                    return;
                }
                if !self.config.heartbeat.is_zero() && conn.last_write + self.config.heartbeat <= now {
                    if conn.blocked {
                        // A full socket is not idle: nothing to add behind it; look again later.
                        conn.last_write = now;
                        return;
                    }
                    // Not blocked means the last write finished every frame, so a comment cannot
                    // land inside one.
                    push_body(stream.framing, sse::HEARTBEAT, &mut conn.out);
                    self.flush(key);
                }
            }
        }
    }

    /// Ends a stream cleanly: the terminating chunk on HTTP/1.1 (the end of the connection on 1.0).
    ///
    /// A write cut inside a frame is completed first: the rest of that frame is copied ahead of the
    /// terminating chunk, since the client must never see half an event followed by the end.
    fn end_stream(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::Streaming(stream) = &mut conn.phase else { return };
        if stream.cursor.mid_frame() && !self.log.lost(&stream.selection, &stream.cursor) {
            let mut rest = [IoSlice::new(&[])];
            let g = self.log.gather(&stream.selection, &stream.cursor, stream.framing, &mut rest, usize::MAX);
            conn.out.extend_from_slice(&rest[0][..]);
            let framing = stream.framing;
            self.log.advance(&stream.selection, &mut stream.cursor, framing, &g, g.bytes);
        }
        if stream.framing == Framing::Chunked {
            conn.out.extend_from_slice(LAST_CHUNK);
        }
        conn.closing = true;
        self.flush(key);
    }

    // ----- closing -----

    fn close(&mut self, key: Key, reason: CloseReason) {
        let Some(mut conn) = self.conns.remove(key) else { return };
        if let CloseReason::Dropped(why) = reason {
            if why != DropReason::Lifetime {
                self.metrics.dropped(why);
                info!("conn={} stream dropped: {why:?}", key.slot);
            }
        }
        if let Phase::Streaming(stream) = &conn.phase {
            for (index, list) in stream.lists().into_iter().enumerate() {
                if let Some(moved) = self.registry.remove(list, stream.position(index)) {
                    let moved_conn = self.conns.get_mut(moved).expect("registry holds live keys");
                    if let Phase::Streaming(other) = &mut moved_conn.phase {
                        let slot = match list {
                            List::All => 0,
                            List::Topic(t) => {
                                other.selection.topics().binary_search(&t).expect("listed topic")
                            }
                        };
                        other.set_position(slot, stream.position(index));
                    }
                }
            }
            self.log.release(&stream.selection);
            self.subscribers -= 1;
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if log_enabled!(Level::Debug) {
            debug!("conn={} closed: {reason:?}", key.slot);
        }
    }

    fn begin_shutdown(&mut self) {
        info!("ssed shutting down: ending {} streams", self.subscribers);
        if let Some(supervisor) = &self.supervisor {
            supervisor.send("STOPPING=1\nSTATUS=shutting down");
        }
        self.stopping_by = Some(self.now + self.config.shutdown_timeout);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match &conn.phase {
                Phase::Streaming(_) => self.end_stream(key),
                _ if conn.lingering_until.is_some() => self.close(key, CloseReason::Shutdown),
                Phase::Requests(_) if conn.pending_out() > 0 => {
                    conn.closing = true;
                    self.flush(key);
                }
                Phase::Requests(_) => self.close(key, CloseReason::Shutdown),
            }
        }
    }
}

/// Appends a body fragment with the stream's framing.
fn push_body(framing: Framing, payload: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::Chunked => chunk::encode_chunk(payload, out),
        Framing::Raw => out.extend_from_slice(payload),
    }
}
