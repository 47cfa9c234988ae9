//! The mio shell: one `Poll`, the listener, a slab of connections, the waker, the timer heap. It
//! moves bytes and readiness and carries out what pure parts decide: each [`Connection`]
//! (`connection.rs`) decides what to write, when to end, linger, send a heartbeat or drop a stream
//! for lag, and turns bytes into requests through its reader; the [`Broadcast`] log says what a
//! stream still has to send and how far behind it is. What stays here is the server-wide part:
//! accepting under `--max-connections`, carrying out a request (publishing, subscribing, the
//! subscriber lists, the durable history's group commit), and the shutdown.
//!
//! A loop turn: sleep in `poll` until readiness or the earliest deadline; accept until `WouldBlock`;
//! read each readable connection until `WouldBlock` and carry out its complete requests (a publish is
//! stored and answered at once, its subscribers only marked); fire due deadlines; then write once to
//! every marked subscriber, so events published in the same turn leave in one vectored write.

use std::collections::{HashSet, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, log_enabled, trace, warn, Level};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::broadcast::{self, Broadcast, Framing, Limits, Subscription};
use crate::config::Config;
use crate::connection::MAX_PENDING_RESPONSES;
use crate::connection::{
    lifetime_end, CloseReason, Connection, Expired, OnShutdown, PeerClosed, State, Stream,
};
use crate::error::Error;
use crate::event::{Event, PublishError};
use crate::fanout::{List, Registry};
use crate::handle::{Command, Mailbox, Publisher, Reload, Shutdown};
use crate::http::reader::{Action, Incoming, Meta};
use crate::http::response::{self, Refusal};
use crate::http::route::Subscribe;
use crate::ids::ClockIds;
use crate::metrics::{DropReason, Gauges, Metrics};
use crate::net::{self, Outcome};
use crate::slab::{Key, Slab};
use crate::sse;
use crate::store::{Fsync, Record, Replayed, Store};
use crate::systemd::Notifier;
use crate::timer::deadline_after;
use crate::transport::{Link, Plain, Transport};

mod cluster;
mod expiry;
mod hub;
mod publish;
mod requests;
mod streams;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// The second listener, serving TLS beside a plain one (`--tls-listen`, or systemd's `ssed-tls`).
const TLS_LISTENER: Token = Token(usize::MAX - 2);

/// Connections taken from one listener per loop turn; the rest wait in the backlog for the next
/// turn (which polls without sleeping), so a connection flood of thousands cannot hold up the
/// delivery to streams already open for the whole of its accepting.
const ACCEPTS_PER_TURN: usize = 256;
/// TLS handshake steps (reads of a connection still in its handshake) per loop turn. The first
/// costs a key exchange and a signature (about 0.1 ms with ECDSA P-256, ten times that with RSA
/// 2048); more connections in their handshake wait for the next turn, after the turn's fan-out, so a
/// handshake flood delays delivery to open streams by a few milliseconds a turn, not by the flood.
const HANDSHAKES_PER_TURN: usize = 32;

/// Descriptors kept back from `--max-connections` for the listener, epoll, the waker and logging.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Connections beyond `--max-connections` that may wait at once for their one answer ("full, retry
/// later"): about 1/64 of the descriptors, so a reconnect rush against a full server is mostly told
/// when to come back rather than cut off, without costing much capacity.
fn overflow_allowance(descriptors: u64) -> usize {
    (descriptors / 64).clamp(32, 1024) as usize
}

/// How an open-file limit is shared out: `(connections held open, connections that may wait beyond
/// them for their one answer)`. `RESERVED_DESCRIPTORS` go first, then the overflow allowance of what
/// is left; the rest is the most `--max-connections` can be. The README quotes these figures.
fn descriptor_budget(limit: u64) -> (u64, usize) {
    let descriptors = limit.saturating_sub(RESERVED_DESCRIPTORS);
    let overflow = overflow_allowance(descriptors);
    (descriptors.saturating_sub(overflow as u64).max(1), overflow)
}

/// `n` and a noun, singular for exactly one: "1 subscriber", "2 subscribers".
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How often running out of descriptors is reported while it lasts.
const EXHAUSTION_REPORT: Duration = Duration::from_secs(10);
/// How long accepting pauses after the process ran out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Streams written per loop turn before the loop polls again (without sleeping) for new requests.
/// At ~8 µs per loopback write a slice is ~4 ms: publishes that arrive during a long fan-out are
/// answered within that and coalesce into the writes still to come.
const FANOUT_SLICE: usize = 512;
/// Topics dropped between two returns of free memory to the system (`return_free_memory`) while
/// the loop is busy.
const TRIM_AFTER_TOPICS: u64 = 4096;
/// Topics dropped after which the loop returns free memory when it next goes idle.
const TRIM_WHEN_IDLE: u64 = 256;
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
    /// Cluster mode (`--redis`): the bridge to the shared stream.
    cluster: Option<cluster::Cluster>,
    /// The Mercure hub and JWT rights (feature `mercure`).
    hub: Option<hub::HubState>,
    /// Connections allowed beyond `max_connections` to receive their "full" answer.
    overflow: usize,
    /// Who serves TLS, and with what.
    tls: TlsSide,
}

/// Where TLS is served: on the main listener, on a second one, or nowhere.
struct TlsSide {
    /// The main listener's connections are TLS (`--tls-cert` without `--tls-listen`).
    main: bool,
    /// A second listener, for TLS beside the plain one.
    listener: Option<TcpListener>,
    /// The address TLS is served on.
    addr: Option<SocketAddr>,
    /// What new handshakes start from; replaced on reload.
    #[cfg(feature = "tls")]
    config: Option<Arc<rustls::ServerConfig>>,
}

/// How often `STATUS=` is refreshed for `systemctl status` when a notifier is set.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

impl Server {
    /// Validates `config` and binds `config.listen`.
    pub fn bind(config: Config) -> Result<Server, Error> {
        config.validate()?;
        let listener = net::bind(config.listen, config.reuse_port)?;
        Server::from_listener(config, listener)
    }

    /// Validates `config` and serves on a listener bound elsewhere (a test's port 0, an inherited
    /// socket); `config.listen` is then ignored. With `--tls-cert` it serves TLS, unless
    /// `--tls-listen` names a second address for that.
    pub fn from_listener(config: Config, listener: std::net::TcpListener) -> Result<Server, Error> {
        Server::from_listeners(config, listener, None)
    }

    /// [`Server::from_listener`] with a second listener bound elsewhere for TLS (systemd's socket
    /// named `ssed-tls`), which `--tls-listen` then does not bind. The certificate and key are read
    /// and checked here: a bad file is a start-up error that names it.
    pub fn from_listeners(
        mut config: Config,
        listener: std::net::TcpListener,
        tls_listener: Option<std::net::TcpListener>,
    ) -> Result<Server, Error> {
        config.validate()?;
        #[cfg(feature = "tls")]
        let tls_config = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::load(cert, key, SystemTime::now())?),
            _ => None,
        };
        let serves_tls = config.tls_cert.is_some();
        if tls_listener.is_some() && !serves_tls {
            return Err(Error::config(
                "a TLS socket (ssed-tls) was passed but --tls-cert and --tls-key are not set",
            ));
        }
        let tls_listener = match (tls_listener, config.tls_listen) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) if serves_tls => Some(net::bind(addr, config.reuse_port)?),
            (None, _) => None,
        };
        listener.set_nonblocking(true).map_err(|e| Error::io("making the listener non-blocking", e))?;
        let local_addr = listener.local_addr().map_err(|e| Error::io("reading the listener's address", e))?;
        let mut overflow = overflow_allowance(config.max_connections as u64);
        if let Some(limit) = net::descriptor_limit() {
            let usable;
            (usable, overflow) = descriptor_budget(limit);
            if (config.max_connections as u64) > usable {
                info!(
                    "max-connections lowered from {} to {usable} by the open-file limit {limit} (raise the hard limit: LimitNOFILE= or ulimit -Hn)",
                    config.max_connections
                );
                config.max_connections = usable as usize;
            }
        }
        let poll = Poll::new().map_err(|e| Error::io("creating the epoll instance", e))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(|e| Error::io("creating the loop waker", e))?,
        );
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| Error::io("registering the listener", e))?;
        let tls_listener = match tls_listener {
            Some(std_listener) => {
                std_listener
                    .set_nonblocking(true)
                    .map_err(|e| Error::io("making the TLS listener non-blocking", e))?;
                let addr = std_listener
                    .local_addr()
                    .map_err(|e| Error::io("reading the TLS listener's address", e))?;
                let mut tls_listener = TcpListener::from_std(std_listener);
                poll.registry()
                    .register(&mut tls_listener, TLS_LISTENER, Interest::READABLE)
                    .map_err(|e| Error::io("registering the TLS listener", e))?;
                Some((tls_listener, addr))
            }
            None => None,
        };
        let tls = TlsSide {
            main: serves_tls && tls_listener.is_none(),
            addr: match &tls_listener {
                Some((_, addr)) => Some(*addr),
                None => serves_tls.then_some(local_addr),
            },
            listener: tls_listener.map(|(listener, _)| listener),
            #[cfg(feature = "tls")]
            config: tls_config,
        };
        // In cluster mode the history is the shared stream's tail, loaded before the first answer.
        let (log, store, cluster) = if config.redis.is_some() {
            let (cluster, log) = cluster::Cluster::start(&config, &waker)?;
            (log, None, Some(cluster))
        } else {
            let (log, store) = open_history(&config)?;
            (log, store, None)
        };
        let (sender, commands) = mpsc::channel();
        let mailbox = Mailbox {
            commands: sender,
            waker,
            shutdown: Arc::new(AtomicBool::new(false)),
            max_body: config.max_body,
        };
        // Keys load now, so a missing or bad key file stops the start with its name.
        let hub = hub::HubState::start(&config)?;
        Ok(Server {
            hub,
            config,
            poll,
            listener,
            local_addr,
            commands,
            mailbox,
            notifier: None,
            log,
            store,
            cluster,
            overflow,
            tls,
        })
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

    /// The address TLS is served on, if it is: the listener's own with `--tls-cert` alone, else
    /// the second listener's.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls.addr
    }

    /// A handle that reads the TLS certificate and key again from any thread (`SIGHUP`).
    pub fn reload_handle(&self) -> Reload {
        let tls = self.config.tls_cert.clone().zip(self.config.tls_key.clone());
        Reload { mailbox: self.mailbox.clone(), tls }
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
        let Server {
            config,
            poll,
            listener,
            local_addr,
            commands,
            mailbox,
            notifier,
            log,
            store,
            cluster,
            hub,
            overflow,
            tls,
        } = self;
        // The line ends with the main listener's address: scripts and tests read it from there.
        match (tls.addr, tls.main) {
            (Some(_), true) => info!("ssed serving TLS, listening on {local_addr}"),
            (Some(addr), false) => info!("ssed serving TLS on {addr}, plain HTTP listening on {local_addr}"),
            (None, _) => info!("ssed listening on {local_addr}"),
        }
        let mut event_loop = Loop {
            log,
            store,
            cluster,
            hub,
            pending_acks: Vec::new(),
            held_lists: HashSet::new(),
            held: publish::HeldTurn::default(),
            resume_after_commit: VecDeque::new(),
            overflow,
            config,
            poll,
            listener: Some(listener),
            tls_listener: tls.listener,
            main_is_tls: tls.main,
            #[cfg(feature = "tls")]
            tls: tls.config,
            accept_more: [false; 2],
            handshakes_left: HANDSHAKES_PER_TURN,
            handshakes_deferred: VecDeque::new(),
            conns: Slab::new(),
            registry: Registry::new(),
            timers: crate::timer::Timers::new(),
            metrics: Metrics::default(),
            dirty: VecDeque::new(),
            subscribers: 0,
            commands,
            shutdown: mailbox.shutdown.clone(),
            stopping_by: None,
            accept_paused_until: None,
            exhaustion_reported: None,
            exhausted_accepts: 0,
            scratch: vec![0; 64 * 1024],
            trimmed_at_topics: 0,
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
///
/// Where damage may have lost records (a [`Replayed::Hole`]), everything before it is forgotten: the
/// history starts afresh at the first record after the hole, so a resume from any id before that
/// (in the hole included) is told of the gap. The log has no way to mark a gap in its middle, and a
/// history that silently skipped lost events would break the promise that resumes miss nothing.
/// The records before the hole stay on disk, set aside by the store.
fn open_history(config: &Config) -> Result<(Broadcast, Option<Store>), Error> {
    let limits = Limits { events: config.history, bytes: config.history_bytes };
    let Some(dir) = &config.data_dir else { return Ok((Broadcast::new(limits, wall_micros()), None)) };
    // Segments small enough that deleting whole ones keeps the disk close to the memory limits.
    let segment_bytes = (config.history_bytes as u64 / 8).clamp(1 << 20, 64 << 20);
    let mut log: Option<Broadcast> = None;
    let mut loaded = 0u64;
    let mut store = Store::open(dir, config.fsync, segment_bytes, |replayed| {
        let record = match replayed {
            Replayed::Record(record) => record,
            Replayed::Hole => {
                log = None;
                loaded = 0;
                return;
            }
        };
        let log = log.get_or_insert_with(|| Broadcast::new(limits, record.id));
        // The store keeps no time of storage: ids from the clock are never below it, so the id
        // stands in for it (at worst an event expires a little later than it would have).
        match log.append(&record.event, record.id, record.id) {
            Ok(_) => loaded += 1,
            Err(broadcast::PublishError::TooLarge) => {
                warn!("event {} on disk is larger than --history-bytes allows; skipped", record.id)
            }
            Err(e) => warn!("event {} on disk skipped: {e}", record.id),
        }
    })?;
    // With nothing after a hole (or nothing at all) the log starts above every id ever given out, so
    // a resume from any of them is told of the gap.
    let newest = log.as_ref().map(Broadcast::newest_id);
    let floor = store.next_id_floor().max(wall_micros());
    let mut log = log.unwrap_or_else(|| Broadcast::new(limits, floor));
    log.raise_next_id(floor);
    info!(
        "durable history on in {} (fsync {}): loaded {}{}",
        dir.display(),
        config.fsync,
        count(loaded as usize, "event"),
        newest.map(|id| format!(", newest id {id}")).unwrap_or_default(),
    );
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

/// A connection as the loop holds it: the transport it moves bytes through, the pure [`Connection`]
/// that decides what they are, and the loop's own bookkeeping.
struct Conn {
    /// The connection's bytes; the loop reads, writes, shuts and registers only through this seam.
    transport: Link,
    conn: Connection,
    /// The deadline this connection has in the timer heap, if any.
    scheduled: Option<Instant>,
    /// On the list of streams to write at the end of the turn.
    dirty: bool,
    /// On `resume_after_commit`: its requests wait for room in a later turn.
    queued_for_commit: bool,
    /// On `handshakes_deferred`: its TLS handshake goes on in a later turn.
    handshake_deferred: bool,
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
    /// Cluster mode: the bridge to the shared Redis stream, which is then the log's only source.
    cluster: Option<cluster::Cluster>,
    /// The Mercure hub and JWT rights.
    hub: Option<hub::HubState>,
    /// Publishes of this turn waiting for the commit.
    pending_acks: Vec<Ack>,
    /// Subscriber lists of the events held for the commit, marked once it lands (a set: a turn may
    /// hold a thousand events of 64 topics each, and each list is marked once).
    held_lists: HashSet<List>,
    /// What this turn holds for the commit, and whether that is all it may.
    held: publish::HeldTurn,
    /// Connections whose requests wait because the turn holds all it may (`HeldTurn::is_full`), in the
    /// order they are to be resumed.
    resume_after_commit: VecDeque<Key>,
    /// Connections allowed beyond `max_connections` to receive their "full" answer.
    overflow: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    /// The second listener, whose connections are TLS.
    tls_listener: Option<TcpListener>,
    /// The main listener's connections are TLS too.
    main_is_tls: bool,
    /// What new TLS connections start from (replaced by a reload).
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    /// A listener (main, TLS) that stopped at `ACCEPTS_PER_TURN` with connections perhaps waiting.
    accept_more: [bool; 2],
    /// TLS handshake steps this turn may still take (`HANDSHAKES_PER_TURN`).
    handshakes_left: usize,
    /// Connections whose readable handshake waits for the next turn's budget, oldest first.
    handshakes_deferred: VecDeque<Key>,
    conns: Slab<Conn>,
    log: Broadcast,
    registry: Registry,
    timers: crate::timer::Timers,
    metrics: Metrics,
    /// Streams with something new to write this turn.
    dirty: VecDeque<Key>,
    subscribers: usize,
    commands: mpsc::Receiver<Command>,
    shutdown: Arc<AtomicBool>,
    /// Set when a graceful shutdown has begun: the deadline for flushing.
    stopping_by: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// When running out of descriptors was last reported, and how often it happened since.
    exhaustion_reported: Option<Instant>,
    exhausted_accepts: u64,
    /// One read buffer for every connection: connections keep only what they have not parsed yet.
    scratch: Vec<u8>,
    /// `log.topics_dropped()` when free memory was last returned to the system.
    trimmed_at_topics: u64,
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
        format!("STATUS={}, {}", count(self.subscribers, "subscriber"), count(self.conns.len(), "connection"))
    }

    /// Pings the watchdog and refreshes the status when due; called once per turn.
    fn supervise(&mut self) {
        if self.supervisor.as_ref().is_none_or(|s| s.next_tick > self.now) {
            return;
        }
        // Formatted only when due: this runs on every loop turn.
        let status = self.status();
        let Some(supervisor) = &mut self.supervisor else { return };
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
            self.continue_deferred();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    TLS_LISTENER => self.accept(true),
                    WAKER => {
                        self.handle_commands();
                        self.handle_redis();
                    }
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
                self.accept(false);
                self.accept(true);
            }
            if self.shutdown.load(Ordering::Acquire) && self.stopping_by.is_none() {
                self.begin_shutdown();
            }
            self.fire_timers();
            self.commit_turn();
            self.flush_dirty();
            self.return_memory_of_dropped_topics();
            if let Some(by) = self.stopping_by {
                if self.conns.len() == 0 || self.now >= by {
                    if self.conns.len() > 0 {
                        warn!("shutdown deadline passed: cutting {}", count(self.conns.len(), "connection"));
                    }
                    info!("ssed stopped");
                    return Ok(());
                }
            }
        }
    }

    /// Hands memory back to the system after topics were dropped: every `TRIM_AFTER_TOPICS` during
    /// a flood of new names, and once it ends (the loop is about to wait), so what a flood leaves
    /// unreturned is at most `TRIM_WHEN_IDLE` topics' worth.
    fn return_memory_of_dropped_topics(&mut self) {
        let dropped = self.log.topics_dropped() - self.trimmed_at_topics;
        let idle = self.pending_acks.is_empty() && self.dirty.is_empty();
        if dropped >= TRIM_AFTER_TOPICS || (idle && dropped >= TRIM_WHEN_IDLE) {
            self.trimmed_at_topics = self.log.topics_dropped();
            return_free_memory();
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.pending_acks.is_empty()
            || !self.dirty.is_empty()
            || !self.handshakes_deferred.is_empty()
            || self.accept_more.contains(&true)
        {
            // Answers released by the last commit let buffered requests run, and their publishes
            // wait for a commit of their own (or connections and handshakes wait for this turn's
            // budget): take another turn at once.
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut timeout = self.timers.poll_timeout(now);
        let supervise = self.supervisor.as_ref().map(|s| s.next_tick);
        for extra in [self.accept_paused_until, self.stopping_by, supervise].into_iter().flatten() {
            let wait = extra.saturating_duration_since(now);
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        if let Some(wait) = self.expiry_timeout() {
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        timeout
    }
}

/// Gives the allocator's wholly free pages back to the system.
///
/// A topic is a handful of small allocations (its name, index, slot); glibc keeps the freed ones in
/// its heap, interleaved with live ones, so after a flood of new topic names is evicted the memory
/// is free but still resident. `malloc_trim` returns the free pages inside the heap too
/// (`madvise(MADV_DONTNEED)`), which is what brings RSS back to where it was. Called only after
/// thousands of topics went; it walks the heap, a few milliseconds at most.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_free_memory() {
    // SAFETY: malloc_trim takes no pointers and only rearranges the allocator's own free memory; it
    // is safe to call at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's, for one) return memory on their own terms; nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `20000` as `20,000`, the way the docs write figures.
    fn with_commas(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(digit);
        }
        out
    }

    #[test]
    fn documented_capacity_figures_follow_the_descriptor_budget() {
        // The limits the docs discuss: the benchmark machine's hard limit and the shipped unit's.
        let docs = [
            ("README.md", include_str!("../../README.md")),
            ("docs/benchmarks.md", include_str!("../../docs/benchmarks.md")),
        ];
        for (name, text) in docs {
            for limit in [20_000, 1_048_576] {
                let (connections, _) = descriptor_budget(limit);
                let figure = with_commas(connections);
                assert!(
                    text.contains(&figure),
                    "{name} should give {figure} connections for a limit of {limit}"
                );
            }
        }
    }

    #[test]
    fn the_budget_reserves_descriptors_and_room_to_answer_at_capacity() {
        for limit in [0, 1, 100, 160, 2_112, 20_000, 65_600, 1_048_576, u64::MAX] {
            let (connections, overflow) = descriptor_budget(limit);
            assert!((32..=1024).contains(&overflow), "limit {limit}: overflow {overflow}");
            assert!(connections >= 1, "limit {limit}");
            if limit > RESERVED_DESCRIPTORS + 1024 + 1 {
                assert_eq!(connections + overflow as u64 + RESERVED_DESCRIPTORS, limit, "limit {limit}");
            }
        }
    }

    #[test]
    fn counts_read_as_english() {
        assert_eq!(count(0, "connection"), "0 connections");
        assert_eq!(count(1, "connection"), "1 connection");
        assert_eq!(count(2, "subscriber"), "2 subscribers");
    }
}
