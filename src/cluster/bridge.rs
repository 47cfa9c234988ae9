//! The bridge between the loop and Redis: the only code in cluster mode that blocks on the network.
//!
//! Two threads, each with its own blocking Redis connection, talk to the loop through one channel
//! and its [`mio::Waker`], the way `Publisher` handles do:
//! - the **writer** takes the loop's appends ([`Bridge::append`]), sends them with the append
//!   script ([`super::stream::APPEND_SCRIPT`], by `EVALSHA`, pipelined: everything queued, up to
//!   1000, goes in one round trip), and answers each with its event id or why it failed
//!   ([`FromRedis::Appended`]). A `NOSCRIPT` answer (Redis lost its script cache) loads the script
//!   again and resends, once, only the appends that got it: Redis did not run them;
//! - the **reader** hands over every entry after the last one it handed over, in stream order
//!   ([`FromRedis::Entries`]): every node inserts exactly these events, with these ids, so all
//!   nodes hold one log. Each read is `MULTI`, `XRANGE key - + COUNT 1`, `XREAD COUNT 1000
//!   STREAMS key <last id>`, `EXEC`; when it finds nothing, an `XREAD BLOCK 250` waits for
//!   something (its answer is not used: the next read takes it), so the reader notices a stop
//!   within about 300 ms (an idle Redis ends a BLOCK on its 100 ms tick, `hz 10`).
//!
//! [`Bridge::start`] connects (failing at once, naming the URL without its password, if Redis
//! cannot be reached), loads the script, and takes the retained tail with one `XREVRANGE key + -
//! COUNT max(tail, 1)`: the newest entry of that reply is where the reader starts (`0-0` if the
//! stream is empty or missing), so nothing appended between loading the tail and the first read
//! is missed. Entries that are not valid events are skipped with a warning naming their id.
//!
//! The loop never waits on either thread: it takes what is there with [`Bridge::try_recv`] when
//! the waker fires.
//!
//! **Losing Redis.** An append whose answer had not come when the connection failed may or may not
//! have landed: it fails ("Redis unavailable: …") and is not retried, nor is anything queued behind
//! it; while the writer has no connection, every append fails at once with the same reason. Both
//! threads reconnect with back-off (at once, then 50 ms doubling to 2 s); a connection counts as
//! back only once it worked (the writer: the script loaded; the reader: a read), so an error every
//! read meets (a key of another type) backs off instead of spinning. The loop hears one
//! [`RedisState::Down`] when the first thread loses its connection and one [`RedisState::Up`] when
//! the last gets it back. An idle writer `PING`s every second, and before sending checks its
//! connection if the reader lost its own meanwhile; a dead connection is then replaced at once
//! when Redis answers (it restarted), with no `Down`, so a restart does not fail the next append.
//! The reader carries on from its last entry: what other nodes published meanwhile comes in order,
//! none twice. If Redis came back with a shorter or older stream (an AOF behind), it carries on
//! from the same place all the same.
//!
//! **Trimmed entries.** If the stream's first entry is past the last entry handed over (and one
//! was: not `0-0`), entries may have been trimmed before the reader saw them, and the loop hears
//! [`FromRedis::Lost`] before the entries after the gap. The check is exact against trimming that
//! happens around the read (both replies come from one `MULTI`) but conservative about one case:
//! when the last entry handed over was itself trimmed, whether anything was between it and the
//! next cannot be known, and `Lost` is sent even if nothing was (likewise after Redis came back
//! without the stream). Entries removed by `XDEL` are not reported.
//!
//! Dropping the [`Bridge`] stops both threads: it waits for them up to a second (they end within
//! one bounded call), then leaves any still in a call to end alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use redis::{Client, Connection, ConnectionLike, Value};

use super::stream::{self, EntryId};
use crate::config::redact_url;
use crate::error::Error;
use crate::event::Event;

/// How long making a connection may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one reply may take (past the reader's `BLOCK`) before the connection counts as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The reader's `XREAD BLOCK`: how long it waits for new entries before it checks whether to stop.
const READ_BLOCK: Duration = Duration::from_millis(250);
/// Entries the reader takes per read.
const READ_COUNT: usize = 1000;
/// Appends the writer sends in one pipeline at most.
const MAX_BATCH: usize = 1000;
/// How often an idle writer checks its connection (`PING`), so it notices a loss before the next
/// append does.
const WRITER_PING: Duration = Duration::from_secs(1);
/// The first pause between reconnection attempts (the first attempt is immediate)…
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// …doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long dropping the bridge waits for its threads before it leaves them to finish alone.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The entry id before every other: a reader at it has handed nothing over.
const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

/// Where the bridge connects and how it appends.
#[derive(Debug, Clone)]
pub(crate) struct BridgeConfig {
    /// `redis://[user:password@]host:port/db` (`--redis`).
    pub(crate) url: String,
    /// The stream's key (`--redis-key`).
    pub(crate) key: String,
    /// `MAXLEN ~` for each append (0: no trimming).
    pub(crate) maxlen: usize,
    /// The data cap entries read back are checked against (`--max-body`).
    pub(crate) max_data: usize,
}

/// The state of the bridge's connections, for `/health`, the metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedisState {
    /// Both threads are connected.
    Up,
    /// A thread lost its connection (or could not make one) and is retrying; the reason is Redis'
    /// or the socket's error.
    Down(String),
}

/// What the bridge tells the loop, in the order it happened.
#[derive(Debug)]
pub(crate) enum FromRedis {
    /// An append was accepted, with the event's id, or failed, with why (Redis unreachable, a
    /// script error); `token` is the loop's, as given to [`Bridge::append`]. An accepted event comes
    /// back through `Entries` like every other, possibly before or after this answer.
    Appended { token: u64, result: Result<u64, String> },
    /// Entries read back, in stream order, with their event ids. An entry that does not describe a
    /// valid event (written by something other than ssed) is skipped with a warning, its id too.
    Entries(Vec<(u64, Event)>),
    /// Entries after `after` (the last event id handed over) were trimmed before they were read;
    /// `first` is the first event id still in the stream (the next one to be handed over).
    Lost { after: u64, first: u64 },
    /// A connection state changed (not every retry: once per change).
    State(RedisState),
    /// Counters for the metrics: reconnections so far, and the last append's round trip.
    Stats { reconnects: u64, append_latency: Duration },
}

/// The running bridge; dropping it stops its threads.
pub(crate) struct Bridge {
    /// To the writer; `None` once dropping began (the writer sees the channel close).
    appends: Option<Sender<(u64, Event)>>,
    /// From both threads.
    from_redis: Receiver<FromRedis>,
    /// To the loop, for an append the writer can no longer take.
    to_loop: Sender<FromRedis>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Closes when both threads have ended (each holds a sender).
    done: Receiver<()>,
}

impl Bridge {
    /// Connects to Redis, loads the retained tail (the newest `tail` entries, oldest first), and
    /// starts the two threads, the reader going on from after that tail. Fails (naming the URL and
    /// the cause) if Redis cannot be reached now: a node that starts without its log would serve
    /// resumes wrongly.
    pub(crate) fn start(
        config: BridgeConfig,
        tail: usize,
        waker: Arc<mio::Waker>,
    ) -> Result<(Bridge, Vec<(u64, Event)>), Error> {
        let shown = redact_url(&config.url);
        let client = Client::open(config.url.as_str())
            .map_err(|e| Error::config(format!("the Redis URL {shown} is not valid: {e}")))?;
        let unreachable =
            |cause: String| Error::unavailable(format!("connecting to Redis at {shown}: {cause}"));
        let mut writer_conn = connect(&client).map_err(unreachable)?;
        let sha = load_script(&mut writer_conn).map_err(unreachable)?;

        // One XREVRANGE gives both the tail and where the reader starts: nothing appended between
        // the two can be missed. At least one entry is asked for, for the reader's start.
        let mut newest = call(
            &mut writer_conn,
            redis::cmd("XREVRANGE").arg(&config.key).arg("+").arg("-").arg("COUNT").arg(tail.max(1)),
        )
        .and_then(parse_entries)
        .map_err(|cause| {
            Error::unavailable(format!("reading the stream {:?} from Redis at {shown}: {cause}", config.key))
        })?;
        let cursor = newest.first().map_or(ZERO, |entry| entry.id);
        newest.truncate(tail);
        newest.reverse();
        let tail_events = to_events(newest, &config);
        let reader_conn = connect(&client).map_err(unreachable)?;
        info!(
            "redis: connected to {shown}, stream {:?}: {} events loaded, reading on after {cursor}",
            config.key,
            tail_events.len()
        );

        let (to_loop, from_redis) = mpsc::channel();
        let (appends, appends_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::new(Shared {
            config,
            shown,
            client,
            waker,
            stop: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            reader_losses: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            down: Mutex::new(Down::default()),
        });
        let writer = Writer {
            shared: shared.clone(),
            out: to_loop.clone(),
            appends: appends_rx,
            conn: Some(writer_conn),
            sha,
            backoff: Backoff::new(),
            down_reason: String::new(),
            losses_seen: 0,
        };
        let reader = Reader {
            shared: shared.clone(),
            out: to_loop.clone(),
            conn: Some(reader_conn),
            cursor,
            backoff: Backoff::new(),
        };
        let spawn_failed = |e| Error::io("starting the Redis bridge's threads", e);
        let mut threads = Vec::with_capacity(2);
        let done_writer = done_tx.clone();
        threads.push(
            thread::Builder::new()
                .name("ssed-redis-writer".into())
                .spawn(move || {
                    let _done = done_writer;
                    writer.run();
                })
                .map_err(spawn_failed)?,
        );
        let started = thread::Builder::new().name("ssed-redis-reader".into()).spawn(move || {
            let _done = done_tx;
            reader.run();
        });
        match started {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                // The writer sees its channel close and ends.
                shared.stop.store(true, Ordering::SeqCst);
                return Err(spawn_failed(e));
            }
        }
        let bridge = Bridge { appends: Some(appends), from_redis, to_loop, shared, threads, done };
        Ok((bridge, tail_events))
    }

    /// Queues an append; never blocks. The answer comes as [`FromRedis::Appended`] with `token`.
    pub(crate) fn append(&self, token: u64, event: Event) {
        let sent = match &self.appends {
            Some(appends) => appends.send((token, event)).is_ok(),
            None => false,
        };
        if !sent {
            // Only if the writer thread ended, which it does not before the bridge is dropped.
            let result = Err("the Redis writer has stopped".to_string());
            let _ = self.to_loop.send(FromRedis::Appended { token, result });
            self.shared.wake();
        }
    }

    /// The next thing the bridge has to say, if any; never blocks.
    pub(crate) fn try_recv(&self) -> Option<FromRedis> {
        self.from_redis.try_recv().ok()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.appends = None;
        for thread in &self.threads {
            thread.thread().unpark();
        }
        // Each thread is between bounded calls (a BLOCK of READ_BLOCK, a back-off pause it is
        // unparked from, a reply within IO_TIMEOUT); wait a little, then leave a stuck one behind
        // rather than hold the process.
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    debug!("redis: a bridge thread is still in a call; leaving it to end alone");
                    break;
                }
            }
        }
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// What both threads share.
struct Shared {
    config: BridgeConfig,
    /// The URL without its password, for messages.
    shown: String,
    client: Client,
    waker: Arc<mio::Waker>,
    stop: AtomicBool,
    reconnects: AtomicU64,
    /// How often the reader lost its connection: the writer checks its own when this moves.
    reader_losses: AtomicU64,
    /// The last append batch's round trip, in microseconds.
    latency_us: AtomicU64,
    down: Mutex<Down>,
}

/// Which threads are without a connection.
#[derive(Default)]
struct Down {
    writer: bool,
    reader: bool,
}

#[derive(Clone, Copy)]
enum Role {
    Writer,
    Reader,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }
}

impl Down {
    fn flag(&mut self, role: Role) -> &mut bool {
        match role {
            Role::Writer => &mut self.writer,
            Role::Reader => &mut self.reader,
        }
    }

    fn any(&self) -> bool {
        self.writer || self.reader
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            warn!("redis: waking the loop failed: {e}");
        }
    }

    /// A thread lost its connection: the loop hears `Down` if it was the first to.
    fn went_down(&self, role: Role, reason: &str, out: &Sender<FromRedis>) {
        let mut down = self.down.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let was_up = !down.any();
        *down.flag(role) = true;
        if was_up {
            warn!("redis: lost the connection to {} ({}): {reason}; reconnecting", self.shown, role.name());
            let _ = out.send(FromRedis::State(RedisState::Down(reason.to_string())));
        } else {
            debug!("redis: the {} lost its connection too: {reason}", role.name());
        }
        drop(down);
        self.wake();
    }

    /// A thread has a working connection again: the loop hears `Up` if it was the last one without.
    fn came_up(&self, role: Role, out: &Sender<FromRedis>) {
        let mut down = self.down.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !*down.flag(role) {
            return;
        }
        *down.flag(role) = false;
        self.reconnects.fetch_add(1, Ordering::SeqCst);
        if !down.any() {
            info!("redis: connected to {} again", self.shown);
            let _ = out.send(FromRedis::State(RedisState::Up));
        } else {
            debug!("redis: the {} is connected again", role.name());
        }
        drop(down);
        let _ = out.send(self.stats());
        self.wake();
    }

    fn stats(&self) -> FromRedis {
        FromRedis::Stats {
            reconnects: self.reconnects.load(Ordering::SeqCst),
            append_latency: Duration::from_micros(self.latency_us.load(Ordering::SeqCst)),
        }
    }
}

/// When the next reconnection attempt is due.
struct Backoff {
    next_at: Instant,
    pause: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next_at: Instant::now(), pause: BACKOFF_FIRST }
    }

    /// The connection was just lost: try again at once.
    fn reset(&mut self) {
        *self = Backoff::new();
    }

    /// An attempt failed: wait longer before the next.
    fn failed(&mut self) {
        self.next_at = Instant::now() + self.pause;
        self.pause = (self.pause * 2).min(BACKOFF_MAX);
    }
}

/// The writer: the loop's appends, pipelined, answered one by one.
struct Writer {
    shared: Arc<Shared>,
    out: Sender<FromRedis>,
    appends: Receiver<(u64, Event)>,
    conn: Option<Connection>,
    /// The append script's SHA1, for `EVALSHA`.
    sha: String,
    backoff: Backoff,
    /// Why the connection was lost, while there is none: every append fails with it.
    down_reason: String,
    /// `Shared::reader_losses` when the connection was made or last checked.
    losses_seen: u64,
}

/// What became of one append of a pipeline.
enum Outcome {
    Done(Result<u64, String>),
    /// Redis did not know the script, so did not run it: safe to send again.
    NoScript,
    /// The connection failed before its answer came: it may or may not have landed.
    Unknown,
}

impl Writer {
    fn run(mut self) {
        while !self.shared.stopping() {
            let connected = self.conn.is_some();
            let wait = match connected {
                true => WRITER_PING,
                false => self.backoff.next_at.saturating_duration_since(Instant::now()),
            };
            match self.appends.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.appends.try_recv() {
                            Ok(append) => batch.push(append),
                            Err(_) => break,
                        }
                    }
                    if connected && self.shared.reader_losses.load(Ordering::SeqCst) != self.losses_seen {
                        // The reader lost its connection since this one was made: Redis may
                        // have restarted under it. Appends are not retried, so make sure first.
                        self.check();
                    }
                    match self.conn.is_some() {
                        true => self.send(batch),
                        false => self.fail(batch),
                    }
                }
                Err(RecvTimeoutError::Timeout) if connected => self.check(),
                Err(RecvTimeoutError::Timeout) => self.reconnect(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Checks the connection (`PING`); a dead one is replaced at once if Redis answers (it
    /// restarted, say: not worth a `Down`), and Redis is down only if it does not.
    fn check(&mut self) {
        self.losses_seen = self.shared.reader_losses.load(Ordering::SeqCst);
        let Some(conn) = self.conn.as_mut() else { return };
        let Err(stale) = call(conn, &redis::cmd("PING")) else { return };
        match self.open() {
            Ok(()) => {
                debug!("redis: the writer's connection was dead ({stale}); replaced it");
                self.shared.reconnects.fetch_add(1, Ordering::SeqCst);
                let _ = self.out.send(self.shared.stats());
                self.shared.wake();
            }
            Err(reason) => self.lost(&reason),
        }
    }

    /// A new connection, with the script loaded.
    fn open(&mut self) -> Result<(), String> {
        self.losses_seen = self.shared.reader_losses.load(Ordering::SeqCst);
        let mut conn = connect(&self.shared.client)?;
        self.sha = load_script(&mut conn)?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Sends a batch and answers each append.
    fn send(&mut self, batch: Vec<(u64, Event)>) {
        let conn = self.conn.as_mut().expect("connected");
        let started = Instant::now();
        let (mut outcomes, mut broken) = pipeline(conn, &self.sha, &self.shared.config, &batch, |_| true);
        if broken.is_none() && outcomes.iter().any(|o| matches!(o, Outcome::NoScript)) {
            // Redis lost its script cache (a restart, SCRIPT FLUSH): load it again and resend the
            // appends it did not run, once.
            debug!("redis: NOSCRIPT; loading the append script again");
            match load_script(conn) {
                Ok(sha) => {
                    self.sha = sha;
                    let retry: Vec<bool> = outcomes.iter().map(|o| matches!(o, Outcome::NoScript)).collect();
                    let (again, broken_again) =
                        pipeline(conn, &self.sha, &self.shared.config, &batch, |i| retry[i]);
                    let mut again = again.into_iter();
                    for (outcome, retried) in outcomes.iter_mut().zip(retry) {
                        if retried {
                            *outcome = again.next().unwrap_or(Outcome::Unknown);
                        }
                    }
                    broken = broken_again;
                }
                Err(reason) => broken = Some(reason),
            }
        }
        let latency = started.elapsed();
        self.shared.latency_us.store(latency.as_micros().try_into().unwrap_or(u64::MAX), Ordering::SeqCst);
        if let Some(reason) = &broken {
            self.lost(reason);
        }
        let unavailable = |why: &str| format!("Redis unavailable: {why}");
        for ((token, _), outcome) in batch.iter().zip(outcomes) {
            let result = match outcome {
                Outcome::Done(result) => result,
                Outcome::NoScript => {
                    Err("Redis does not know the append script (NOSCRIPT) even after loading it again".into())
                }
                Outcome::Unknown => Err(unavailable(broken.as_deref().unwrap_or("no answer"))),
            };
            let _ = self.out.send(FromRedis::Appended { token: *token, result });
        }
        if broken.is_some() {
            // What is queued already would only wait for a reconnection: fail it now.
            let queued: Vec<_> = self.appends.try_iter().collect();
            self.fail(queued);
        }
        let _ = self.out.send(self.shared.stats());
        self.shared.wake();
    }

    /// Answers appends made while there is no connection.
    fn fail(&self, batch: Vec<(u64, Event)>) {
        if batch.is_empty() {
            return;
        }
        for (token, _) in batch {
            let result = Err(format!("Redis unavailable: {}", self.down_reason));
            let _ = self.out.send(FromRedis::Appended { token, result });
        }
        self.shared.wake();
    }

    fn lost(&mut self, reason: &str) {
        self.conn = None;
        self.down_reason = reason.to_string();
        self.backoff.reset();
        self.shared.went_down(Role::Writer, reason, &self.out);
    }

    fn reconnect(&mut self) {
        match self.open() {
            Ok(()) => {
                self.backoff.reset();
                self.shared.came_up(Role::Writer, &self.out);
            }
            Err(reason) => {
                debug!("redis: writer reconnection failed: {reason}");
                self.backoff.failed();
            }
        }
    }
}

/// Sends the appends of `batch` that `include` picks as one pipeline of `EVALSHA`; the outcomes
/// are in the order of those appends, and the second value says why the connection broke, if it
/// did.
fn pipeline(
    conn: &mut Connection,
    sha: &str,
    config: &BridgeConfig,
    batch: &[(u64, Event)],
    include: impl Fn(usize) -> bool,
) -> (Vec<Outcome>, Option<String>) {
    let mut pipe = redis::pipe();
    let mut count = 0;
    for (_, event) in batch.iter().enumerate().filter(|(i, _)| include(*i)).map(|(_, a)| a) {
        pipe.cmd("EVALSHA").arg(sha).arg(1).arg(&config.key).arg(config.maxlen);
        for (name, value) in stream::fields(event) {
            pipe.arg(name).arg(value);
        }
        count += 1;
    }
    let mut outcomes = Vec::with_capacity(count);
    if let Err(e) = conn.send_packed_command(&pipe.get_packed_pipeline()) {
        outcomes.resize_with(count, || Outcome::Unknown);
        return (outcomes, Some(e.to_string()));
    }
    // Read every answer that comes; once one fails, the connection is done for, and the appends
    // still unanswered may or may not have landed.
    for _ in 0..count {
        let outcome = match conn.recv_response() {
            Ok(Value::ServerError(e)) if e.code() == "NOSCRIPT" => Outcome::NoScript,
            Ok(Value::ServerError(e)) => {
                Outcome::Done(Err(format!("Redis refused the append: {}", redis::RedisError::from(e))))
            }
            Ok(reply) => Outcome::Done(appended_id(reply)),
            Err(e) => {
                outcomes.resize_with(count, || Outcome::Unknown);
                return (outcomes, Some(e.to_string()));
            }
        };
        outcomes.push(outcome);
    }
    (outcomes, None)
}

/// The event id of the entry an append added, from the script's reply.
fn appended_id(reply: Value) -> Result<u64, String> {
    let text = text_of(reply).ok_or("the append script's reply is not an entry id")?;
    EntryId::parse(&text)
        .and_then(EntryId::event_id)
        .map_err(|e| format!("the append landed, but its id is not an event id: {e}"))
}

/// The reader: hands over the stream, entry by entry, in order.
struct Reader {
    shared: Arc<Shared>,
    out: Sender<FromRedis>,
    conn: Option<Connection>,
    /// The last entry handed over (or skipped as invalid); `0-0` before any.
    cursor: EntryId,
    backoff: Backoff,
}

impl Reader {
    fn run(mut self) {
        // Whether a read worked on this connection: a reconnection counts (and the loop hears
        // `Up`) only then, and a connection that fails before it does waits out the back-off, so
        // an error that every read meets (a key of another type) cannot spin.
        let mut proven = true;
        while !self.shared.stopping() {
            match self.conn.as_mut() {
                Some(conn) => match Self::step(conn, &self.shared, &self.out, &mut self.cursor) {
                    Ok(()) if !proven => {
                        proven = true;
                        self.backoff.reset();
                        self.shared.came_up(Role::Reader, &self.out);
                    }
                    Ok(()) => {}
                    Err(reason) => {
                        self.conn = None;
                        self.shared.reader_losses.fetch_add(1, Ordering::SeqCst);
                        match proven {
                            true => self.backoff.reset(),
                            false => self.backoff.failed(),
                        }
                        self.shared.went_down(Role::Reader, &reason, &self.out);
                    }
                },
                None => {
                    // Unparked by the bridge's drop.
                    let left = self.backoff.next_at.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        thread::park_timeout(left);
                        continue;
                    }
                    match connect(&self.shared.client) {
                        Ok(conn) => {
                            self.conn = Some(conn);
                            proven = false;
                        }
                        Err(reason) => {
                            debug!("redis: reader reconnection failed: {reason}");
                            self.backoff.failed();
                        }
                    }
                }
            }
        }
    }

    /// Reads what follows the cursor and hands it over, or waits a little for something to.
    fn step(
        conn: &mut Connection,
        shared: &Shared,
        out: &Sender<FromRedis>,
        cursor: &mut EntryId,
    ) -> Result<(), String> {
        let key = &shared.config.key;
        // The stream's first entry and what follows the cursor, atomically: if the first entry is
        // past the cursor, entries between them were trimmed before this read.
        let reply: Value = redis::pipe()
            .atomic()
            .cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(key)
            .arg(cursor.to_string())
            .query(conn)
            .map_err(|e| e.to_string())?;
        let Value::Array(mut parts) = reply else {
            return Err(format!("unexpected reply to MULTI/EXEC: {reply:?}"));
        };
        if parts.len() != 2 {
            return Err(format!("unexpected reply to MULTI/EXEC: {parts:?}"));
        }
        let entries = parse_xread(parts.pop().unwrap_or(Value::Nil))?;
        let first = parse_entries(parts.pop().unwrap_or(Value::Nil))?.first().map(|entry| entry.id);
        let (Some(next), Some(last)) = (entries.first(), entries.last()) else {
            // Nothing new: wait for something (or READ_BLOCK), then read it as above.
            let wait = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(key)
                .arg(cursor.to_string())
                .clone();
            call(conn, &wait)?;
            return Ok(());
        };
        if *cursor != ZERO && first.is_some_and(|first| first > *cursor) {
            // Conservative: the cursor's own entry was trimmed too, so whether anything was
            // between it and `next` cannot be known; say so.
            let (after, first) = (cursor.nearest_event_id(), next.id.nearest_event_id());
            warn!(
                "redis: entries of {key:?} after {cursor} were trimmed before they were read; going on \
                 from {}",
                next.id
            );
            let _ = out.send(FromRedis::Lost { after, first });
        }
        let last = last.id;
        let events = to_events(entries, &shared.config);
        *cursor = last;
        if !events.is_empty() {
            let _ = out.send(FromRedis::Entries(events));
        }
        shared.wake();
        Ok(())
    }
}

/// Connects, with timeouts on every call after.
fn connect(client: &Client) -> Result<Connection, String> {
    let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(IO_TIMEOUT + READ_BLOCK)).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(conn)
}

/// One command; Redis' error replies become errors too.
fn call(conn: &mut Connection, cmd: &redis::Cmd) -> Result<Value, String> {
    match conn.req_command(cmd) {
        Ok(Value::ServerError(e)) => Err(redis::RedisError::from(e).to_string()),
        Ok(reply) => Ok(reply),
        Err(e) => Err(e.to_string()),
    }
}

/// `SCRIPT LOAD`s the append script; its SHA1.
fn load_script(conn: &mut Connection) -> Result<String, String> {
    let reply = call(conn, redis::cmd("SCRIPT").arg("LOAD").arg(stream::APPEND_SCRIPT))?;
    text_of(reply).ok_or_else(|| "SCRIPT LOAD did not answer with the script's SHA1".to_string())
}

/// An entry's field-value pairs, in order (names may repeat).
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An entry as Redis gave it: its id, and its field-value pairs or why they could not be read.
struct RawEntry {
    id: EntryId,
    pairs: Result<Pairs, String>,
}

fn text_of(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn bytes_of(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

/// The entries of an `XRANGE` / `XREVRANGE` reply, in its order.
fn parse_entries(reply: Value) -> Result<Vec<RawEntry>, String> {
    match reply {
        Value::Array(items) => items.into_iter().map(parse_entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("unexpected reply to a stream range: {other:?}")),
    }
}

/// `[id, [field, value, …]]`. A malformed id fails the whole reply (the reader could not tell
/// where it is); malformed fields only this entry.
fn parse_entry(entry: Value) -> Result<RawEntry, String> {
    let Value::Array(parts) = entry else {
        return Err(format!("a stream entry is not [id, fields]: {entry:?}"));
    };
    let mut parts = parts.into_iter();
    let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("a stream entry is not [id, fields]".into());
    };
    let id = text_of(id).ok_or("a stream entry's id is not a string")?;
    let id = EntryId::parse(&id).map_err(|e| e.to_string())?;
    let pairs = match fields {
        Value::Array(flat) if flat.len() % 2 == 0 => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            let mut bad = false;
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                match (bytes_of(name), bytes_of(value)) {
                    (Some(name), Some(value)) => pairs.push((name, value)),
                    _ => bad = true,
                }
            }
            if bad {
                Err("a field name or value is not a string".to_string())
            } else {
                Ok(pairs)
            }
        }
        Value::Map(map) => map
            .into_iter()
            .map(|(name, value)| bytes_of(name).zip(bytes_of(value)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "a field name or value is not a string".to_string()),
        _ => Err("its fields are not a list of names and values".to_string()),
    };
    Ok(RawEntry { id, pairs })
}

/// The entries of an `XREAD` reply for one stream (nil: none).
fn parse_xread(reply: Value) -> Result<Vec<RawEntry>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => pair.into_iter().nth(1).ok_or(()),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, ()>>(),
        Value::Map(streams) => Ok(streams.into_iter().map(|(_, entries)| entries).collect()),
        _ => Err(()),
    }
    .map_err(|()| "unexpected reply to XREAD".to_string())?;
    let mut entries = Vec::new();
    for stream in streams {
        entries.extend(parse_entries(stream)?);
    }
    Ok(entries)
}

/// The events of `entries`, skipping (with a warning) those that are not valid events.
fn to_events(entries: Vec<RawEntry>, config: &BridgeConfig) -> Vec<(u64, Event)> {
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let mapped = entry.id.event_id().map_err(|e| e.to_string()).and_then(|id| {
            let pairs = entry.pairs.as_ref().map_err(String::clone)?;
            stream::event_of(pairs, config.max_data).map(|event| (id, event)).map_err(|e| e.to_string())
        });
        match mapped {
            Ok(event) => events.push(event),
            Err(why) => warn!("redis: skipping entry {} of {:?}: {why}", entry.id, config.key),
        }
    }
    events
}

#[cfg(test)]
mod tests {
    //! Against a real `redis-server` each (`#[ignore]`d: `.ci/run` has one), started on a free
    //! loopback port in a temporary directory with an append-only file, and killed at the end.

    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::AtomicUsize;
    use std::time::{SystemTime, UNIX_EPOCH};

    use mio::{Events, Poll, Token, Waker};

    use super::*;
    use crate::event::Draft;

    const KEY: &str = "ssed:test";
    const WITHIN: Duration = Duration::from_secs(10);

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
    }

    /// A redis-server of the test's own, killed (by its PID) when dropped.
    struct RedisServer {
        child: Option<Child>,
        port: u16,
        dir: PathBuf,
    }

    impl RedisServer {
        fn start() -> RedisServer {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("ssed-bridge-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            let mut server = RedisServer { child: None, port: 0, dir };
            // The port may be taken between finding it and redis binding it: try a few.
            for _ in 0..5 {
                server.port = free_port();
                if server.spawn() {
                    return server;
                }
            }
            panic!("redis-server did not start (see {}/redis.log)", server.dir.display());
        }

        /// Starts redis-server on `self.port` in `self.dir` (loading its AOF) and waits until it
        /// answers; false if it exited.
        fn spawn(&mut self) -> bool {
            let mut child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&self.dir)
                .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
                .args(["--daemonize", "no", "--logfile", "redis.log"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (run by .ci/run)");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
                let answered = Client::open(self.url())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
                if answered.is_ok() {
                    self.child = Some(child);
                    return true;
                }
                thread::sleep(Duration::from_millis(10)); // polling for readiness, bounded above
            }
            let _ = child.kill();
            let _ = child.wait();
            false
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        /// SIGKILL: no shutdown, no final AOF rewrite.
        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        fn restart(&mut self) {
            assert!(self.spawn(), "redis-server restarted on port {}", self.port);
        }

        fn conn(&self) -> Connection {
            Client::open(self.url()).and_then(|c| c.get_connection()).expect("a direct connection")
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn event(topic: &str, data: &str) -> Event {
        Draft { topics: vec![topic.into()], data: data.as_bytes().to_vec(), ..Draft::default() }
            .validate(1 << 20)
            .expect("a valid event")
    }

    /// Appends as another node would (the same script), without a bridge; the event id.
    fn direct_append(conn: &mut Connection, event: &Event) -> u64 {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(stream::APPEND_SCRIPT).arg(1).arg(KEY).arg(0);
        for (name, value) in stream::fields(event) {
            cmd.arg(name).arg(value);
        }
        let id: String = cmd.query(conn).expect("EVAL append");
        EntryId::parse(&id).and_then(EntryId::event_id).expect("an event id")
    }

    /// Everything a node heard, in order.
    #[derive(Default)]
    struct Seen {
        entries: Vec<(u64, Event)>,
        appended: Vec<(u64, Result<u64, String>, Instant)>,
        /// With how many entries had been handed over when each came.
        lost: Vec<(u64, u64, usize)>,
        states: Vec<(RedisState, Instant)>,
        stats: Option<(u64, Duration)>,
    }

    /// A bridge and the loop's side of it: a poll its waker wakes.
    struct Node {
        bridge: Bridge,
        poll: Poll,
        events: Events,
        seen: Seen,
    }

    impl Node {
        fn start(redis: &RedisServer, tail: usize) -> (Node, Vec<(u64, Event)>) {
            let poll = Poll::new().expect("poll");
            let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
            let config = BridgeConfig { url: redis.url(), key: KEY.into(), maxlen: 0, max_data: 1 << 20 };
            let (bridge, tail) = Bridge::start(config, tail, waker).expect("bridge starts");
            (Node { bridge, poll, events: Events::with_capacity(8), seen: Seen::default() }, tail)
        }

        /// Takes what the bridge says until `done` holds, waiting on the waker only (a bridge that
        /// forgot to wake would time out here); false at the deadline.
        fn until(&mut self, within: Duration, done: impl Fn(&Seen) -> bool) -> bool {
            let deadline = Instant::now() + within;
            loop {
                while let Some(message) = self.bridge.try_recv() {
                    let now = Instant::now();
                    match message {
                        FromRedis::Entries(batch) => self.seen.entries.extend(batch),
                        FromRedis::Appended { token, result } => {
                            self.seen.appended.push((token, result, now))
                        }
                        FromRedis::Lost { after, first } => {
                            self.seen.lost.push((after, first, self.seen.entries.len()))
                        }
                        FromRedis::State(state) => self.seen.states.push((state, now)),
                        FromRedis::Stats { reconnects, append_latency } => {
                            self.seen.stats = Some((reconnects, append_latency))
                        }
                    }
                }
                if done(&self.seen) {
                    return true;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                self.poll.poll(&mut self.events, Some(left)).expect("poll");
            }
        }
    }

    fn ids(entries: &[(u64, Event)]) -> Vec<u64> {
        entries.iter().map(|(id, _)| *id).collect()
    }

    fn strictly_increasing(ids: &[u64]) -> bool {
        ids.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn start_fails_naming_the_url_when_nothing_listens() {
        let port = free_port();
        let url = format!("redis://127.0.0.1:{port}/");
        let poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
        let config = BridgeConfig { url: url.clone(), key: KEY.into(), maxlen: 0, max_data: 100 };
        let started = Instant::now();
        let error = Bridge::start(config.clone(), 10, waker.clone()).err().expect("no Redis there");
        let message = error.to_string();
        assert!(message.contains(&url), "{message}");
        assert!(message.to_lowercase().contains("refused"), "the cause: {message}");
        assert!(started.elapsed() < CONNECT_TIMEOUT, "no retrying at start");

        let bad = BridgeConfig { url: "http://x:1/".into(), ..config };
        let message = Bridge::start(bad, 10, waker).err().expect("not a Redis URL").to_string();
        assert!(message.contains("http://x:1/"), "{message}");
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn two_bridges_hand_every_node_the_same_log() {
        let redis = RedisServer::start();
        let (mut a, tail_a) = Node::start(&redis, 100);
        let (mut b, tail_b) = Node::start(&redis, 100);
        assert!(tail_a.is_empty() && tail_b.is_empty());
        const EACH: u64 = 1000;
        let started = Instant::now();
        for i in 0..EACH {
            a.bridge.append(i, event("a", &format!("a{i}")));
            b.bridge.append(i, event("b", &format!("b{i}")));
        }
        let total = 2 * EACH as usize;
        for node in [&mut a, &mut b] {
            let all_in =
                node.until(WITHIN, |s| s.entries.len() >= total && s.appended.len() >= EACH as usize);
            assert!(all_in, "{} entries, {} answers", node.seen.entries.len(), node.seen.appended.len());
        }
        let elapsed = started.elapsed();
        assert_eq!(ids(&a.seen.entries), ids(&b.seen.entries), "one log, one order");
        assert_eq!(a.seen.entries, b.seen.entries, "the same events under the same ids");
        assert_eq!(a.seen.entries.len(), total, "none twice");
        assert!(strictly_increasing(&ids(&a.seen.entries)));
        // Each node's answers name exactly the entries of its own events, in its order.
        for (node, topic) in [(&a, "a"), (&b, "b")] {
            let answered: Vec<u64> = node
                .seen
                .appended
                .iter()
                .enumerate()
                .map(|(i, (token, result, _))| {
                    assert_eq!(*token, i as u64, "answers in append order");
                    result.clone().expect("appended")
                })
                .collect();
            let own: Vec<u64> =
                node.seen.entries.iter().filter(|(_, e)| e.topics()[0] == topic).map(|(id, _)| *id).collect();
            assert_eq!(answered, own);
            let data: Vec<&str> = node
                .seen
                .entries
                .iter()
                .filter(|(_, e)| e.topics()[0] == topic)
                .map(|(_, e)| e.data())
                .collect();
            let sent: Vec<String> = (0..EACH).map(|i| format!("{topic}{i}")).collect();
            assert_eq!(data, sent);
            assert!(node.seen.lost.is_empty() && node.seen.states.is_empty());
        }
        let (_, latency) = a.seen.stats.expect("stats after appends");
        eprintln!(
            "2 bridges x {EACH} appends: all read back by both in {elapsed:?}; last batch round trip \
             {latency:?}"
        );
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn the_tail_is_loaded_oldest_first_and_the_reader_goes_on_after_it() {
        let redis = RedisServer::start();
        // A missing stream: no tail, and the reader starts at 0-0.
        let (mut empty, tail) = Node::start(&redis, 100);
        assert!(tail.is_empty());

        let mut conn = redis.conn();
        let mut written = Vec::new();
        for i in 0..6 {
            let e = event("t", &format!("e{i}"));
            written.push((direct_append(&mut conn, &e), e));
        }
        // An entry that is not an event (no topics): skipped, at start and by the reader.
        let _: String =
            redis::cmd("XADD").arg(KEY).arg("*").arg("data").arg("x").query(&mut conn).expect("XADD");
        for i in 6..9 {
            let e = event("t", &format!("e{i}"));
            written.push((direct_append(&mut conn, &e), e));
        }
        assert!(empty.until(WITHIN, |s| s.entries.len() >= 9));
        assert_eq!(empty.seen.entries, written, "from 0-0, the invalid entry skipped");

        let (mut five, tail) = Node::start(&redis, 5);
        assert_eq!(tail, written[5..].to_vec(), "the newest 5 entries, oldest first, less the invalid one");
        let (mut none, tail) = Node::start(&redis, 0);
        assert!(tail.is_empty());
        let (_, tail) = Node::start(&redis, 1000);
        assert_eq!(tail, written, "all of a shorter stream");

        five.bridge.append(7, event("t", "new"));
        assert!(five.until(WITHIN, |s| !s.appended.is_empty()));
        let id = five.seen.appended[0].1.clone().expect("appended");
        assert!(id > written[8].0);
        for node in [&mut five, &mut none, &mut empty] {
            assert!(node.until(WITHIN, |s| s.entries.iter().any(|(i, _)| *i == id)));
        }
        for node in [&five, &none] {
            let entries = &node.seen.entries;
            assert_eq!(ids(entries), vec![id], "only what follows the tail");
            assert_eq!(entries[0].1.data(), "new");
        }
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn a_redis_restart_fails_appends_fast_and_the_reader_resumes_without_gap_or_duplicate() {
        let mut redis = RedisServer::start();
        let (mut node, _) = Node::start(&redis, 0);
        for i in 0..10 {
            node.bridge.append(i, event("t", &format!("before{i}")));
        }
        assert!(node.until(WITHIN, |s| s.entries.len() >= 10 && s.appended.len() >= 10));
        assert!(node.seen.appended.iter().all(|(_, r, _)| r.is_ok()));

        redis.kill();
        assert!(node.until(WITHIN, |s| !s.states.is_empty()), "the reader notices");
        assert!(matches!(&node.seen.states[0].0, RedisState::Down(reason) if !reason.is_empty()));
        // Appends during the outage are answered at once, with a reason.
        let mut slowest = Duration::ZERO;
        for i in 10..20 {
            let sent = Instant::now();
            node.bridge.append(i, event("t", "during"));
            assert!(node.until(WITHIN, |s| s.appended.len() as u64 > i));
            let (token, result, at) = node.seen.appended.last().expect("an answer").clone();
            assert_eq!(token, i);
            let reason = result.expect_err("Redis is down");
            assert!(reason.starts_with("Redis unavailable: "), "{reason}");
            assert!(at - sent < Duration::from_millis(500), "fails fast: {:?}", at - sent);
            slowest = slowest.max(at - sent);
        }

        let restarted = Instant::now();
        redis.restart();
        // Another node publishes as soon as Redis is back, maybe before this one reconnects.
        let mut other = redis.conn();
        let mut expected: Vec<u64> = ids(&node.seen.entries);
        for i in 0..5 {
            expected.push(direct_append(&mut other, &event("t", &format!("other{i}"))));
        }
        assert!(node.until(WITHIN, |s| s.states.len() >= 2), "reconnects");
        let up_after = node.seen.states[1].1 - restarted;
        assert_eq!(node.seen.states[1].0, RedisState::Up);
        for i in 20..30 {
            node.bridge.append(i, event("t", &format!("after{i}")));
        }
        assert!(node.until(WITHIN, |s| s.entries.len() >= 25 && s.appended.len() >= 30));
        for (_, result, _) in &node.seen.appended[20..] {
            expected.push(result.clone().expect("appended after the restart"));
        }
        assert_eq!(ids(&node.seen.entries), expected, "every entry, once, in order");
        assert!(strictly_increasing(&expected));
        let states: Vec<&RedisState> = node.seen.states.iter().map(|(s, _)| s).collect();
        assert_eq!(states.len(), 2, "one Down, one Up: {states:?}");
        assert!(node.seen.lost.is_empty(), "nothing was trimmed");
        let (reconnects, _) = node.seen.stats.expect("stats");
        assert_eq!(reconnects, 2, "both threads reconnected once");
        eprintln!(
            "Redis restart: appends failed within {slowest:?} while down; State(Up) {up_after:?} after \
             redis-server answered again"
        );
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn appended_ids_stay_mappable_past_a_full_millisecond_and_a_clock_behind() {
        let redis = RedisServer::start();
        let mut conn = redis.conn();
        // The last id is ten minutes ahead of Redis' clock and one short of a full millisecond.
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
        let ahead = now_ms + 600_000;
        let _: String = redis::cmd("XADD")
            .arg(KEY)
            .arg(format!("{ahead}-998"))
            .arg("f")
            .arg("v")
            .query(&mut conn)
            .expect("XADD");
        let append = |conn: &mut Connection, data: &str| direct_append(conn, &event("t", data));
        assert_eq!(append(&mut conn, "a"), ahead * 1000 + 999, "the last of that millisecond");
        assert_eq!(append(&mut conn, "b"), (ahead + 1) * 1000, "then the next millisecond's first");
        assert_eq!(append(&mut conn, "c"), (ahead + 1) * 1000 + 1);
        // Nothing was left behind with a sequence number of 1000: 1 + 3 entries.
        let len: u64 = redis::cmd("XLEN").arg(KEY).query(&mut conn).expect("XLEN");
        assert_eq!(len, 4);
        // A deleted last entry's id is not given again.
        let last = EntryId::of_event((ahead + 1) * 1000 + 1).to_string();
        let _: u64 = redis::cmd("XDEL").arg(KEY).arg(last).query(&mut conn).expect("XDEL");
        assert_eq!(append(&mut conn, "d"), (ahead + 1) * 1000 + 2);
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn entries_trimmed_before_the_reader_saw_them_are_reported_lost() {
        let redis = RedisServer::start();
        let (mut node, _) = Node::start(&redis, 0);
        for i in 0..5 {
            node.bridge.append(i, event("t", &format!("seen{i}")));
        }
        assert!(node.until(WITHIN, |s| s.entries.len() >= 5));
        let last_seen = node.seen.entries[4].0;

        // Another node appends 20 and trims to 1, atomically: the reader cannot see the 19.
        let mut conn = redis.conn();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for i in 0..20 {
            pipe.cmd("EVAL").arg(stream::APPEND_SCRIPT).arg(1).arg(KEY).arg(0);
            for (name, value) in stream::fields(&event("t", &format!("gone{i}"))) {
                pipe.arg(name).arg(value);
            }
        }
        pipe.cmd("XTRIM").arg(KEY).arg("MAXLEN").arg(1).ignore();
        let added: Vec<String> = pipe.query(&mut conn).expect("MULTI");
        let kept = EntryId::parse(&added[19]).and_then(EntryId::event_id).expect("an id");

        assert!(node.until(WITHIN, |s| s.entries.len() >= 6));
        assert_eq!(node.seen.lost, vec![(last_seen, kept, 5)], "Lost, before the entry after the gap");
        assert_eq!(node.seen.entries[5].0, kept);
        assert_eq!(node.seen.entries[5].1.data(), "gone19");

        // Reading on normally: no more Lost.
        node.bridge.append(9, event("t", "later"));
        assert!(node.until(WITHIN, |s| s.entries.len() >= 7));
        assert_eq!(node.seen.lost.len(), 1);
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn a_redis_that_comes_back_without_the_stream_is_read_on_from_the_same_place() {
        let mut redis = RedisServer::start();
        let (mut node, _) = Node::start(&redis, 0);
        for i in 0..3 {
            node.bridge.append(i, event("t", &format!("old{i}")));
        }
        assert!(node.until(WITHIN, |s| s.entries.len() >= 3));
        let last_seen = node.seen.entries[2].0;
        redis.kill();
        // Its append-only file is gone: it comes back with no stream at all.
        std::fs::remove_dir_all(redis.dir.join("appendonlydir")).expect("the AOF directory");
        redis.restart();
        assert!(node.until(WITHIN, |s| s.states.len() >= 2 && s.states[1].0 == RedisState::Up));
        node.bridge.append(3, event("t", "new"));
        assert!(node.until(WITHIN, |s| s.entries.len() >= 4));
        let new = node.seen.entries[3].0;
        assert!(new > last_seen, "a new stream's ids still follow the old ones (Redis' clock)");
        assert_eq!(node.seen.entries[3].1.data(), "new");
        // The conservative rule: the stream now starts past the last entry handed over, so what
        // was between may be lost, and the loop is told.
        assert_eq!(node.seen.lost, vec![(last_seen, new, 3)]);
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn a_key_of_another_type_is_one_down_not_a_spin() {
        let redis = RedisServer::start();
        let (mut node, _) = Node::start(&redis, 0);
        let mut conn = redis.conn();
        let _: () = redis::cmd("SET").arg(KEY).arg("not a stream").query(&mut conn).expect("SET");
        node.bridge.append(1, event("t", "x"));
        assert!(node.until(WITHIN, |s| !s.states.is_empty() && !s.appended.is_empty()));
        assert!(matches!(&node.seen.states[0].0, RedisState::Down(r) if r.contains("WRONGTYPE")));
        let refused = node.seen.appended[0].1.clone().expect_err("not a stream");
        assert!(refused.contains("WRONGTYPE"), "{refused}");
        // Reconnecting works but reading does not: no Up, no second Down, and the back-off holds
        // (no more than a handful of connections in a second).
        let watching = Instant::now() + Duration::from_secs(1);
        while Instant::now() < watching {
            assert!(!node.until(watching.saturating_duration_since(Instant::now()), |s| s.states.len() > 1));
        }
        let info: String = redis::cmd("INFO").arg("stats").query(&mut conn).expect("INFO");
        let connections: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("total_connections_received");
        assert!(connections < 20, "{connections} connections: the reader spins");

        let _: () = redis::cmd("DEL").arg(KEY).query(&mut conn).expect("DEL");
        assert!(node.until(WITHIN, |s| s.states.len() >= 2));
        assert_eq!(node.seen.states[1].0, RedisState::Up);
        node.bridge.append(2, event("t", "y"));
        assert!(node.until(WITHIN, |s| !s.entries.is_empty()));
        assert_eq!(node.seen.entries[0].1.data(), "y");
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn a_flushed_script_cache_is_reloaded() {
        let redis = RedisServer::start();
        let (mut node, _) = Node::start(&redis, 0);
        node.bridge.append(1, event("t", "one"));
        assert!(node.until(WITHIN, |s| !s.appended.is_empty()));
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut redis.conn()).expect("SCRIPT FLUSH");
        for i in 2..12 {
            node.bridge.append(i, event("t", "after flush"));
        }
        assert!(node.until(WITHIN, |s| s.appended.len() >= 11 && s.entries.len() >= 11));
        for (token, result, _) in &node.seen.appended {
            assert!(result.is_ok(), "append {token}: {result:?}");
        }
        assert_eq!(node.seen.entries.len(), 11, "each appended once");
        assert!(node.seen.states.is_empty(), "no reconnection needed");
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn dropping_the_bridge_stops_its_threads_promptly() {
        let redis = RedisServer::start();
        let mut conn = redis.conn();
        let clients = |conn: &mut Connection| -> usize {
            let list: String = redis::cmd("CLIENT").arg("LIST").query(conn).expect("CLIENT LIST");
            list.lines().count()
        };
        assert_eq!(clients(&mut conn), 1);
        let (node, _) = Node::start(&redis, 0);
        assert_eq!(clients(&mut conn), 3, "the writer's and the reader's connections");
        let dropping = Instant::now();
        drop(node);
        let took = dropping.elapsed();
        assert!(took < STOP_WAIT, "dropped in {took:?}");
        // The threads ended and closed their connections (Redis may take a moment to notice).
        let deadline = Instant::now() + WITHIN;
        while clients(&mut conn) > 1 {
            assert!(Instant::now() < deadline, "the bridge's connections stayed open");
            thread::sleep(Duration::from_millis(5)); // polling Redis' view, bounded above
        }
        eprintln!("dropping the bridge took {took:?}");
    }

    #[test]
    #[ignore = "needs redis-server: run by .ci/run"]
    fn a_bridge_dropped_while_redis_is_down_stops_promptly() {
        let mut redis = RedisServer::start();
        let (mut node, _) = Node::start(&redis, 0);
        redis.kill();
        assert!(node.until(WITHIN, |s| !s.states.is_empty()));
        let dropping = Instant::now();
        drop(node);
        assert!(dropping.elapsed() < Duration::from_millis(500), "took {:?}", dropping.elapsed());
    }
}
