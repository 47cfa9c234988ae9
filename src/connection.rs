//! One client connection as a pure state machine: everything the server decides about a connection,
//! with no socket and no clock of its own.
//!
//! The loop (`server/`) owns the sockets. It tells a [`Connection`] what happened through the
//! `handle_*` calls (bytes arrived, the transport accepted `n` bytes or is full, the peer closed, a
//! deadline passed, the server is stopping), always with the time as an argument, and asks it what to
//! do through the `poll_*` calls (the next request, the bytes to write next, the next deadline). The
//! shared event log is passed in where a stream needs it. So every decision about writing, closing,
//! lingering, heartbeats, lifetimes and lag is made here, and the tests at the bottom drive a
//! connection through an in-memory pair with a hand-advanced clock: no socket, no sleep.
//!
//! The states are named ([`State`]): reading requests, streaming, closing (the last bytes are owed),
//! lingering (the write side is shut; the client's last bytes are read and dropped).

use std::io::IoSlice;
use std::time::{Duration, Instant};

use crate::broadcast::{Broadcast, Framing, Gathered, Selection, Subscription};
use crate::config::Config;
use crate::fanout::List;
use crate::http::chunk::{self, LAST_CHUNK};
use crate::http::reader::{Incoming, Meta, RequestReader, Waiting};
use crate::http::response::{self, Refusal};
use crate::metrics::DropReason;
use crate::sse;
use crate::timer::deadline_after;

/// How long a closing connection may keep reading the client's leftover bytes, so the final answer is
/// not destroyed by a reset (RFC 9112 §9.6, "tear-down").
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// Pending response bytes after which a connection's further requests wait until the client reads.
pub(crate) const MAX_PENDING_RESPONSES: usize = 64 * 1024;
/// Bytes one vectored write gathers at most.
pub(crate) const MAX_WRITE_BYTES: usize = 256 * 1024;

/// A subscriber's state: what the log needs of it (topics, framing, cursor) and its place on the
/// subscriber lists, which the loop keeps.
pub(crate) struct Stream {
    pub(crate) sub: Subscription,
    /// Position on the first list (`All`, or the first of `selection.topics()`), kept inline because
    /// nearly every stream is on exactly one list.
    position: u32,
    /// Positions on the other lists, parallel to `selection.topics()[1..]`; empty (no allocation)
    /// for a one-list stream.
    more_positions: Box<[u32]>,
    /// `--max-lifetime`: when the stream ends cleanly.
    ends_at: Option<Instant>,
}

impl Stream {
    /// A stream not yet on any list; the loop places it with [`Stream::set_position`].
    pub(crate) fn new(sub: Subscription, ends_at: Option<Instant>) -> Stream {
        let lists = sub.selection().topics().len() + usize::from(matches!(sub.selection(), Selection::All));
        Stream { sub, position: 0, more_positions: vec![0; lists.saturating_sub(1)].into(), ends_at }
    }

    pub(crate) fn position(&self, index: usize) -> u32 {
        if index == 0 {
            self.position
        } else {
            self.more_positions[index - 1]
        }
    }

    pub(crate) fn set_position(&mut self, index: usize, position: u32) {
        if index == 0 {
            self.position = position;
        } else {
            self.more_positions[index - 1] = position;
        }
    }

    /// The subscriber lists the stream is on, in position order.
    pub(crate) fn lists(&self) -> impl Iterator<Item = List> + '_ {
        let selection = self.sub.selection();
        let all = matches!(selection, Selection::All).then_some(List::All);
        all.into_iter().chain(selection.topics().iter().map(|&t| List::Topic(t)))
    }
}

/// Where a connection is in its life.
pub(crate) enum State {
    /// Reading requests and answering them, possibly several (keep-alive, pipelining).
    Requests(Box<RequestReader>),
    /// An event stream: written from the log at its cursor.
    Streaming(Stream),
    /// Owes the bytes queued in it and nothing more (an answer that ends the connection, or a
    /// stream's end); once they are written the write side is shut. A stream stays on its lists until
    /// the connection is gone.
    Closing(Option<Stream>),
    /// The write side is shut; what the client still sends is read and dropped until `until`, so it
    /// does not turn the close into a reset that destroys the answer.
    Lingering { until: Instant, stream: Option<Stream> },
}

/// Why a connection is to be closed, for the debug log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    PeerClosed,
    Error,
    Done,
    IdleTimeout,
    Dropped(DropReason),
    Shutdown,
}

/// What a passed deadline came to ([`Connection::handle_timeout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Nothing is due yet (a stale timer).
    Nothing,
    /// Bytes were queued (a heartbeat, a stream's end at its lifetime): write them.
    Write,
    /// The stream reached `--max-lifetime`; its end is queued: write it.
    Lifetime,
    /// A request did not complete within `--header-timeout`: answer `408` with this meta.
    RequestTimeout(Meta),
    /// Close the connection.
    Close(CloseReason),
}

/// What the peer's end of stream came to ([`Connection::handle_peer_closed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerClosed {
    /// Answers are still owed (a half-close after a complete request): write them, then close.
    Finish,
    /// Nothing is owed: close now.
    Close,
}

/// What the start of a shutdown asks of a connection ([`Connection::handle_shutdown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnShutdown {
    /// Already on its way out, or nothing to do yet.
    Nothing,
    /// Its last bytes are queued: write them.
    Write,
    /// Close it now.
    Close(CloseReason),
}

/// What [`Connection::poll_transmit`] put into the slice array, to be handed back with the number
/// of bytes the transport accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transmit {
    /// Slices filled (0: nothing to write).
    pub(crate) slices: usize,
    /// Bytes of the connection's own buffer in the first slice.
    own: usize,
    /// What came from the log, for a stream.
    gathered: Option<Gathered>,
    /// Slices there were room for after the own bytes.
    room: usize,
}

/// A connection's state and the bytes it owes, without its socket.
pub(crate) struct Connection {
    state: State,
    /// Bytes queued ahead of everything else: response heads, answers, heartbeats, the gap notice.
    out: Vec<u8>,
    out_at: usize,
    /// Last time bytes were accepted by the transport (streams count heartbeats from it).
    last_write: Instant,
    /// The last write found the transport full: write again only once it is writable.
    blocked: bool,
    /// Accepted beyond `--max-connections`: gets one answer, then is closed.
    over_capacity: bool,
    /// Answers in `out` that wait for the durable history's commit.
    awaiting_commit: u32,
}

impl Connection {
    /// A connection accepted at `now`, reading requests.
    pub(crate) fn new(now: Instant, over_capacity: bool) -> Connection {
        Connection {
            state: State::Requests(Box::new(RequestReader::new(now))),
            out: Vec::new(),
            out_at: 0,
            last_write: now,
            blocked: false,
            over_capacity,
            awaiting_commit: 0,
        }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// The stream, in any state that still has one (it leaves the lists only with the connection).
    pub(crate) fn stream(&self) -> Option<&Stream> {
        match &self.state {
            State::Streaming(stream) => Some(stream),
            State::Closing(stream) | State::Lingering { stream, .. } => stream.as_ref(),
            State::Requests(_) => None,
        }
    }

    pub(crate) fn stream_mut(&mut self) -> Option<&mut Stream> {
        match &mut self.state {
            State::Streaming(stream) => Some(stream),
            State::Closing(stream) | State::Lingering { stream, .. } => stream.as_mut(),
            State::Requests(_) => None,
        }
    }

    pub(crate) fn is_reading_requests(&self) -> bool {
        matches!(self.state, State::Requests(_))
    }

    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing(_))
    }

    pub(crate) fn is_lingering(&self) -> bool {
        matches!(self.state, State::Lingering { .. })
    }

    pub(crate) fn over_capacity(&self) -> bool {
        self.over_capacity
    }

    /// Queued bytes not yet accepted by the transport.
    pub(crate) fn pending_out(&self) -> usize {
        self.out.len() - self.out_at
    }

    /// Whether the last write found the transport full.
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Moves to [`State::Closing`] at `now`, keeping the stream (if any) until the connection is
    /// gone. The last bytes get a whole `--header-timeout` from here to be written: the clock of
    /// the give-up deadline restarts, however long the connection was quiet or stalled before
    /// (a stream ended at its lifetime, by a shutdown, or after a gap in the shared log).
    fn start_closing(&mut self, now: Instant) {
        self.last_write = now;
        let state = std::mem::replace(&mut self.state, State::Closing(None));
        self.state = match state {
            State::Streaming(stream) => State::Closing(Some(stream)),
            State::Requests(_) => State::Closing(None),
            other => other,
        };
    }

    // ----- requests -----

    /// How many bytes to read next for requests, or `None` while none are wanted: not reading
    /// requests, or `MAX_PENDING_RESPONSES` of answers wait for the client to read them.
    pub(crate) fn read_budget(&self, config: &Config) -> Option<usize> {
        let State::Requests(reader) = &self.state else { return None };
        if self.pending_out() >= MAX_PENDING_RESPONSES {
            return None;
        }
        Some(reader.read_budget(config).saturating_sub(reader.input.len()).max(1))
    }

    /// Bytes the client sent, read at `now`. Outside of reading requests they are dropped: a
    /// stream's client has nothing to say, a closing one only its leftovers.
    pub(crate) fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if let State::Requests(reader) = &mut self.state {
            let was_idle = reader.waiting() == Waiting::Idle;
            reader.input.extend_from_slice(bytes);
            reader.handle_input_at(was_idle, now);
        }
    }

    /// The next complete request (or interim answer, or refusal), while the connection reads
    /// requests and its client is not behind on reading answers.
    pub(crate) fn poll_request(&mut self, config: &Config, now: Instant) -> Option<Incoming> {
        if self.pending_out() >= MAX_PENDING_RESPONSES {
            return None;
        }
        let State::Requests(reader) = &mut self.state else { return None };
        let incoming = reader.poll_request(config, now);
        if let Some(Incoming::Interim(bytes)) = incoming {
            self.out.extend_from_slice(bytes);
        }
        incoming
    }

    /// The buffer a complete answer is queued in; the connection closes after it unless kept alive
    /// (and one accepted over capacity is never kept alive).
    pub(crate) fn answer(&mut self, keep_alive: bool, now: Instant) -> &mut Vec<u8> {
        if !keep_alive || self.over_capacity {
            self.start_closing(now);
        }
        &mut self.out
    }

    /// Queues a refusal; the connection closes after it unless the request allows keeping it.
    pub(crate) fn refuse(&mut self, meta: &Meta, refusal: &Refusal, cors: &[u8], now: Instant) {
        let keep_alive = meta.keep_alive && !refusal.closes() && !self.over_capacity;
        let out = self.answer(keep_alive, now);
        response::refusal(refusal, keep_alive, meta.head_only, cors, out);
    }

    /// Notes that the answer about to be queued waits for the durable history's commit; returns where
    /// it starts in the buffer, for [`Connection::fail_held_answers`].
    pub(crate) fn hold_answer(&mut self) -> usize {
        self.awaiting_commit += 1;
        self.out.len()
    }

    /// One held answer may go out; true when reading requests should resume (none is held any more
    /// and the connection still reads requests).
    pub(crate) fn release_answer(&mut self) -> bool {
        self.awaiting_commit = self.awaiting_commit.saturating_sub(1);
        self.awaiting_commit == 0 && self.is_reading_requests()
    }

    /// The answer held at `at` ([`Connection::hold_answer`], with nothing queued for it) is known
    /// now: `bytes` go in at that place, ahead of the answers queued after it. True when reading
    /// requests should resume, as for [`Connection::release_answer`].
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // cluster mode's answers; tested here
    pub(crate) fn fill_answer(&mut self, at: usize, bytes: &[u8]) -> bool {
        // Nothing is written while an answer is held, so `out_at` is at or before `at`.
        let at = at.clamp(self.out_at, self.out.len());
        self.out.splice(at..at, bytes.iter().copied());
        self.release_answer()
    }

    /// The commit failed: everything queued from the first held answer (at `out_start`) is replaced
    /// by `refusal`, and the connection closes so pipelined requests are not left in doubt. False
    /// when an earlier held answer of this connection already did so.
    pub(crate) fn fail_held_answers(&mut self, out_start: usize, refusal: &Refusal, now: Instant) -> bool {
        if self.awaiting_commit == 0 {
            return false;
        }
        self.out.truncate(out_start.max(self.out_at));
        self.awaiting_commit = 0;
        response::refusal(refusal, false, false, b"", &mut self.out);
        self.start_closing(now);
        true
    }

    /// Turns the connection into an event stream: queues the response head and the start of the
    /// body (`body`: the prelude, maybe a gap notice) with the framing the request's HTTP version
    /// calls for. A stream's connection is never reused, so the head says `Connection: close`.
    pub(crate) fn start_stream(
        &mut self,
        stream: Stream,
        meta: &Meta,
        cors: &[u8],
        body: &[u8],
        now: Instant,
    ) {
        queue_stream_start(meta, cors, body, &mut self.out);
        self.state = State::Streaming(stream);
        self.last_write = now;
    }

    /// At capacity, a subscriber is told to come back later in a way `EventSource` honours: a normal
    /// stream that carries only `body` (a long `retry:`) and ends at once (any non-200 would be
    /// final).
    pub(crate) fn turn_away(&mut self, meta: &Meta, cors: &[u8], body: &[u8], now: Instant) {
        if queue_stream_start(meta, cors, body, &mut self.out) == Framing::Chunked {
            self.out.extend_from_slice(LAST_CHUNK);
        }
        self.start_closing(now);
    }

    // ----- writing -----

    /// Fills `slices` with what to write next: the queued bytes, then (for a stream) the log from
    /// its cursor, up to the array's length and about `MAX_WRITE_BYTES`; `Ok(None)` while nothing may
    /// be written (blocked, lingering, or holding answers for a commit), and no slice filled when
    /// everything owed is written. `Err` when the stream's next event has left the history (the
    /// stream must be dropped).
    pub(crate) fn poll_transmit<'a>(
        &'a self,
        log: &'a Broadcast,
        slices: &mut [IoSlice<'a>],
    ) -> Result<Option<Transmit>, DropReason> {
        if self.blocked || self.is_lingering() || self.awaiting_commit > 0 {
            return Ok(None);
        }
        let own = self.pending_out();
        let mut tx = Transmit { slices: 0, own, gathered: None, room: slices.len() };
        if own > 0 {
            slices[0] = IoSlice::new(&self.out[self.out_at..]);
            tx.slices = 1;
            tx.room -= 1;
        }
        if let State::Streaming(stream) = &self.state {
            if log.lost(&stream.sub) {
                return Err(DropReason::Evicted);
            }
            let gathered = log.gather(&stream.sub, &mut slices[tx.slices..], MAX_WRITE_BYTES);
            tx.slices += gathered.slices;
            tx.gathered = Some(gathered);
        }
        Ok(Some(tx))
    }

    /// `tx` found nothing to write: everything owed was written. The buffer goes back (an idle
    /// connection holds no heap), and a stream's cursor moves past the events it may not read
    /// ([`Broadcast::advance`] by nothing). True when the connection is closing, so its write side
    /// is to be shut.
    pub(crate) fn handle_drained(&mut self, log: &Broadcast, tx: &Transmit) -> bool {
        self.release_out();
        if let (State::Streaming(stream), Some(g)) = (&mut self.state, &tx.gathered) {
            log.advance(&mut stream.sub, g, 0);
        }
        self.is_closing()
    }

    /// Everything queued was written: the buffer goes back, so an idle connection holds no heap.
    fn release_out(&mut self) {
        self.out = Vec::new();
        self.out_at = 0;
    }

    /// The transport accepted `written` bytes of `tx` at `now`: the queued bytes and the stream's
    /// cursor move past exactly those. True when the write took everything and there was nothing
    /// more to gather (so no second write is needed).
    pub(crate) fn handle_written(
        &mut self,
        log: &Broadcast,
        tx: &Transmit,
        written: usize,
        now: Instant,
    ) -> bool {
        self.last_write = now;
        let from_own = written.min(tx.own);
        self.out_at += from_own;
        if let (State::Streaming(stream), Some(g)) = (&mut self.state, &tx.gathered) {
            log.advance(&mut stream.sub, g, written - from_own);
        }
        let took_all = written == tx.own + tx.gathered.map_or(0, |g| g.bytes);
        let gathered_all = tx.gathered.is_none_or(|g| g.slices < tx.room && g.bytes < MAX_WRITE_BYTES);
        if took_all && gathered_all && !self.is_closing() {
            self.release_out();
            return true;
        }
        false
    }

    /// The transport is full: write again only once it says it is writable.
    pub(crate) fn handle_blocked(&mut self) {
        self.blocked = true;
    }

    /// The transport is writable again. True when reading requests should resume: reading paused
    /// for this client's answers to drain (and the readiness edge that would resume it is gone).
    pub(crate) fn handle_writable(&mut self) -> bool {
        self.blocked = false;
        self.is_reading_requests() && self.pending_out() >= MAX_PENDING_RESPONSES
    }

    /// Why a stream must be dropped now, if it must: its next event left the history, or its lag
    /// (see [`Broadcast::lag`]: a catch-up and the event being written do not count) plus its queued
    /// bytes passed `max_lag`.
    pub(crate) fn check_lag(&self, log: &Broadcast, max_lag: usize) -> Option<DropReason> {
        let State::Streaming(stream) = &self.state else { return None };
        if log.lost(&stream.sub) {
            return Some(DropReason::Evicted);
        }
        let lag = log.lag(&stream.sub) + self.pending_out() as u64;
        (lag > max_lag as u64).then_some(DropReason::Lag)
    }

    // ----- closing -----

    /// The client closed its side. A half-close after a complete request still gets its answer.
    pub(crate) fn handle_peer_closed(&mut self, now: Instant) -> PeerClosed {
        if self.is_reading_requests() && (self.pending_out() > 0 || self.awaiting_commit > 0) {
            self.start_closing(now);
            PeerClosed::Finish
        } else {
            PeerClosed::Close
        }
    }

    /// Ends a stream cleanly: the terminating chunk on HTTP/1.1 (the end of the connection on 1.0).
    ///
    /// A write cut inside a frame is completed first: the rest of that frame is copied ahead of the
    /// terminating chunk, since the client must never see half an event followed by the end. If that
    /// rest has left the history no clean end is possible: `Err`, drop the stream.
    pub(crate) fn end_stream(&mut self, log: &Broadcast, now: Instant) -> Result<(), DropReason> {
        let State::Streaming(stream) = &mut self.state else { return Ok(()) };
        if stream.sub.cursor().mid_frame() {
            if log.lost(&stream.sub) {
                // The client must not take what follows for the rest of that frame.
                return Err(DropReason::Evicted);
            }
            let mut rest = [IoSlice::new(&[])];
            let g = log.gather(&stream.sub, &mut rest, usize::MAX);
            self.out.extend_from_slice(&rest[0][..]);
            log.advance(&mut stream.sub, &g, g.bytes);
        }
        if stream.sub.framing() == Framing::Chunked {
            self.out.extend_from_slice(LAST_CHUNK);
        }
        self.start_closing(now);
        Ok(())
    }

    /// The write side was shut at `now`: linger, reading the client's leftovers.
    pub(crate) fn handle_write_closed(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::Closing(None));
        let stream = match state {
            State::Streaming(stream) => Some(stream),
            State::Closing(stream) | State::Lingering { stream, .. } => stream,
            State::Requests(_) => None,
        };
        self.state = State::Lingering { until: now + LINGER, stream };
    }

    /// A graceful shutdown begins: streams end cleanly, owed answers are written, the rest closes.
    pub(crate) fn handle_shutdown(&mut self, log: &Broadcast, now: Instant) -> OnShutdown {
        match &self.state {
            State::Closing(_) => OnShutdown::Nothing,
            State::Streaming(_) => match self.end_stream(log, now) {
                Ok(()) => OnShutdown::Write,
                Err(why) => OnShutdown::Close(CloseReason::Dropped(why)),
            },
            State::Lingering { .. } => OnShutdown::Close(CloseReason::Shutdown),
            State::Requests(_) if self.pending_out() > 0 => {
                self.start_closing(now);
                OnShutdown::Write
            }
            State::Requests(_) => OnShutdown::Close(CloseReason::Shutdown),
        }
    }

    // ----- deadlines -----

    /// The next moment this connection needs [`Connection::handle_timeout`], if any.
    pub(crate) fn poll_timeout(&self, config: &Config) -> Option<Instant> {
        self.deadline(config).map(|(at, _)| at)
    }

    /// The next deadline and what it is for; `poll_timeout` and `handle_timeout` both ask here, so
    /// what is scheduled and what is handled cannot drift apart.
    fn deadline(&self, config: &Config) -> Option<(Instant, Due)> {
        match &self.state {
            State::Lingering { until, .. } => Some((*until, Due::LingerOver)),
            State::Requests(reader) => {
                let due = match reader.waiting() {
                    Waiting::Idle => Due::KeepAliveOver,
                    Waiting::Request => Due::RequestTimedOut,
                };
                Some((reader.poll_deadline(config), due))
            }
            // Its end (or last answer) could not be written within as long as a request head may
            // take: give up on it.
            State::Closing(_) => Some((deadline_after(self.last_write, config.header_timeout), Due::GiveUp)),
            State::Streaming(stream) => {
                let heartbeat = (!config.heartbeat.is_zero())
                    .then(|| (deadline_after(self.last_write, config.heartbeat), Due::Heartbeat));
                let lifetime = stream.ends_at.map(|at| (at, Due::Lifetime));
                [lifetime, heartbeat].into_iter().flatten().min_by_key(|&(at, _)| at)
            }
        }
    }

    /// A deadline may have passed at `now`: acts on it, and says what the loop is to do.
    pub(crate) fn handle_timeout(&mut self, now: Instant, config: &Config, log: &Broadcast) -> Expired {
        let Some((at, due)) = self.deadline(config) else { return Expired::Nothing };
        if at > now {
            return Expired::Nothing;
        }
        match due {
            Due::LingerOver => Expired::Close(CloseReason::Done),
            Due::KeepAliveOver | Due::GiveUp => Expired::Close(CloseReason::IdleTimeout),
            Due::RequestTimedOut => match &self.state {
                State::Requests(reader) => Expired::RequestTimeout(reader.pending_meta()),
                _ => Expired::Nothing,
            },
            Due::Lifetime => match self.end_stream(log, now) {
                Ok(()) => Expired::Lifetime,
                Err(why) => Expired::Close(CloseReason::Dropped(why)),
            },
            Due::Heartbeat => {
                if self.blocked {
                    // A full socket is not idle: nothing to add behind it; look again later.
                    self.last_write = now;
                    return Expired::Nothing;
                }
                let State::Streaming(stream) = &self.state else { return Expired::Nothing };
                // Not blocked means the last write finished every frame, so a comment cannot land
                // inside one.
                push_body(stream.sub.framing(), sse::HEARTBEAT, &mut self.out);
                Expired::Write
            }
        }
    }
}

/// When a stream opened at `now` ends under `--max-lifetime` (`None`: never): somewhere from 80% to
/// 120% of it, as `pick(low, high)` chooses in milliseconds, so streams opened together (after a
/// restart) do not all reconnect together.
pub(crate) fn lifetime_end(
    now: Instant,
    max_lifetime: Duration,
    pick: impl FnOnce(u64, u64) -> u64,
) -> Option<Instant> {
    if max_lifetime.is_zero() {
        return None;
    }
    let base = max_lifetime.as_millis() as u64;
    let millis = pick(base * 8 / 10, base * 12 / 10);
    Some(deadline_after(now, Duration::from_millis(millis)))
}

/// What a connection's deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Lingering is over: close.
    LingerOver,
    /// Idle between requests for `--keep-alive-timeout`: close quietly.
    KeepAliveOver,
    /// A request did not complete within `--header-timeout`: `408`.
    RequestTimedOut,
    /// Closing, and its last bytes could not be written in time.
    GiveUp,
    /// `--max-lifetime` is up: end the stream cleanly.
    Lifetime,
    /// Quiet for `--heartbeat`: send a comment.
    Heartbeat,
}

/// Queues a stream's response head and the start of its body with the framing its HTTP version calls
/// for, which it returns.
fn queue_stream_start(meta: &Meta, cors: &[u8], body: &[u8], out: &mut Vec<u8>) -> Framing {
    let framing = Framing::for_http10(meta.http10);
    response::stream_head(meta.http10, false, cors, out);
    push_body(framing, body, out);
    framing
}

/// Appends a body fragment with the stream's framing.
fn push_body(framing: Framing, payload: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::Chunked => chunk::encode_chunk(payload, out),
        Framing::Raw => out.extend_from_slice(payload),
    }
}

/// The in-memory pair: a [`Connection`] driven the way the loop drives it, against a client whose
/// receive window the test sets, with a clock the test advances by hand. Timing is exact (a deadline
/// fires at its instant, not a millisecond before) and nothing sleeps.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::Limits;
    use crate::event::Draft;
    use crate::http::reader::Action;
    use crate::http::route::Subscribe;

    const MS: Duration = Duration::from_millis(1);

    struct Pair {
        conn: Connection,
        log: Broadcast,
        config: Config,
        now: Instant,
        /// Bytes the client has read.
        received: Vec<u8>,
        /// Bytes the client's side still takes before the transport is full.
        window: usize,
        /// The server shut its write side.
        write_shut: bool,
        /// The connection is gone, and why.
        closed: Option<CloseReason>,
        /// Ids of the events published, for microsecond clock ids that always increase.
        clock: u64,
    }

    impl Pair {
        fn new(config: Config) -> Pair {
            let now = Instant::now();
            let log = Broadcast::new(Limits { events: config.history, bytes: config.history_bytes }, 1);
            Pair {
                conn: Connection::new(now, false),
                log,
                config,
                now,
                received: Vec::new(),
                window: usize::MAX,
                write_shut: false,
                closed: None,
                clock: 1,
            }
        }

        /// The client sends `bytes`; the server carries out what they complete, as the loop does.
        fn send(&mut self, bytes: &[u8]) {
            assert!(self.closed.is_none(), "sending on a closed connection");
            self.conn.handle_input(bytes, self.now);
            self.serve();
        }

        fn serve(&mut self) {
            while let Some(incoming) = self.conn.poll_request(&self.config, self.now) {
                match incoming {
                    Incoming::Interim(_) => {}
                    Incoming::Refused(meta, refusal) => self.conn.refuse(&meta, &refusal, b"", self.now),
                    Incoming::Request(meta, Action::Health) => {
                        let out = self.conn.answer(meta.keep_alive, self.now);
                        response::text(200, "ok\n", meta.keep_alive, meta.head_only, b"", out);
                    }
                    Incoming::Request(meta, Action::Subscribe(subscribe)) => {
                        self.subscribe(&meta, &subscribe)
                    }
                    Incoming::Request(_, other) => panic!("the pair does not carry out {other:?}"),
                }
            }
            self.transmit();
        }

        fn subscribe(&mut self, meta: &Meta, subscribe: &Subscribe) {
            let names: Vec<&str> = subscribe.topics.iter().map(String::as_str).collect();
            let selection = self.log.acquire(&names);
            let resume = self.log.resume(&selection, subscribe.last_event_id);
            let sub = Subscription::new(selection, Framing::for_http10(meta.http10), &resume);
            // The shortest lifetime the jitter allows.
            let ends_at = lifetime_end(self.now, self.config.max_lifetime, |low, _| low);
            let mut body = Vec::new();
            sse::encode_prelude(3000, &mut body);
            self.conn.start_stream(Stream::new(sub, ends_at), meta, b"", &body, self.now);
        }

        /// Publishes `data` to `topic` and has the stream written, as the end of a loop turn does.
        fn publish(&mut self, topic: &str, data: &str) {
            let draft =
                Draft { topics: vec![topic.into()], data: data.as_bytes().to_vec(), ..Draft::default() };
            let event = draft.validate(usize::MAX).expect("a valid event");
            self.clock += 1;
            self.log.publish(&[topic], &event, self.clock).expect("stored");
            if self.conn.is_blocked() {
                self.check_lag();
            } else {
                self.transmit();
            }
        }

        fn check_lag(&mut self) {
            if let Some(why) = self.conn.check_lag(&self.log, self.config.max_lag) {
                self.closed = Some(CloseReason::Dropped(why));
            }
        }

        /// Writes what the connection owes, as far as the client's window takes it.
        fn transmit(&mut self) {
            while self.closed.is_none() {
                let mut slices = [IoSlice::new(&[]); 8];
                let tx = match self.conn.poll_transmit(&self.log, &mut slices) {
                    Ok(Some(tx)) => tx,
                    Ok(None) => return,
                    Err(why) => {
                        self.closed = Some(CloseReason::Dropped(why));
                        return;
                    }
                };
                if tx.slices == 0 {
                    if self.conn.handle_drained(&self.log, &tx) {
                        self.write_shut = true;
                        self.conn.handle_write_closed(self.now);
                    }
                    return;
                }
                let mut written = 0;
                for slice in &slices[..tx.slices] {
                    let take = slice.len().min(self.window - written);
                    self.received.extend_from_slice(&slice[..take]);
                    written += take;
                }
                if written == 0 {
                    self.conn.handle_blocked();
                    self.check_lag();
                    return;
                }
                self.window -= written;
                if self.conn.handle_written(&self.log, &tx, written, self.now) {
                    return;
                }
            }
        }

        /// The client reads: `room` more bytes fit, and the transport is writable again.
        fn make_room(&mut self, room: usize) {
            self.window = self.window.saturating_add(room);
            let resumes_reading = self.conn.handle_writable();
            self.transmit();
            if resumes_reading {
                self.serve();
            }
        }

        /// Moves the clock on by `by`, firing each deadline at its own instant on the way.
        fn advance(&mut self, by: Duration) {
            let end = self.now + by;
            for _ in 0..1000 {
                if self.closed.is_some() {
                    break;
                }
                match self.conn.poll_timeout(&self.config) {
                    Some(at) if at <= end => {
                        self.now = self.now.max(at);
                        self.fire();
                    }
                    _ => break,
                }
            }
            self.now = end;
        }

        fn fire(&mut self) {
            match self.conn.handle_timeout(self.now, &self.config, &self.log) {
                Expired::Nothing => {}
                Expired::Write | Expired::Lifetime => self.transmit(),
                Expired::RequestTimeout(meta) => {
                    self.conn.refuse(&meta, &Refusal::Timeout, b"", self.now);
                    self.transmit();
                }
                Expired::Close(reason) => self.closed = Some(reason),
            }
        }

        fn take_received(&mut self) -> String {
            String::from_utf8(std::mem::take(&mut self.received)).expect("UTF-8 on the wire")
        }
    }

    fn config() -> Config {
        Config {
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(15),
            ..Config::default()
        }
    }

    /// The status and the body of the one response in `text`.
    fn status_and_body(text: &str) -> (u16, &str) {
        let (head, body) =
            text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete head: {text:?}"));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        (status, body)
    }

    fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        let head = text.split("\r\n\r\n").next()?;
        head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn a_request_that_does_not_complete_within_the_header_timeout_is_408_then_closed() {
        for partial in [&b"GET /health HTTP/1.1\r\nHost: t\r\n"[..], b""] {
            let mut pair = Pair::new(config());
            if !partial.is_empty() {
                pair.send(partial);
            }
            pair.advance(Duration::from_secs(10) - MS);
            assert_eq!(pair.take_received(), "", "answered before the header timeout");
            assert_eq!(pair.closed, None);
            pair.advance(MS);
            let text = pair.take_received();
            assert_eq!(status_and_body(&text).0, 408, "{text}");
            assert_eq!(header(&text, "connection"), Some("close"), "{text}");
            assert!(pair.write_shut, "the write side is shut after the 408");
            assert!(pair.conn.is_lingering());
        }
    }

    #[test]
    fn the_header_clock_starts_at_the_first_byte_of_a_request_not_at_the_last_answer() {
        let mut pair = Pair::new(config());
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(status_and_body(&pair.take_received()).0, 200);
        pair.advance(Duration::from_secs(4));
        pair.send(b"GET /hea");
        // 10 s from that first byte, not from the answer 4 s earlier.
        pair.advance(Duration::from_secs(10) - MS);
        assert_eq!(pair.take_received(), "");
        pair.advance(MS);
        assert_eq!(status_and_body(&pair.take_received()).0, 408);
    }

    #[test]
    fn a_408_to_head_is_a_head_only_with_the_length_get_would_have() {
        for partial in [&b"HEAD /health HTTP/1.1\r\nHost: t\r\n"[..], b"HEAD /hea"] {
            let answer = |request: &[u8]| {
                let mut pair = Pair::new(config());
                pair.send(request);
                pair.advance(Duration::from_secs(10));
                pair.take_received()
            };
            let head = answer(partial);
            let get = answer(&[&b"GET"[..], &partial[4..]].concat());
            let (status, body) = status_and_body(&head);
            assert_eq!(status, 408, "{head}");
            assert_eq!(body, "", "a 408 to HEAD carried a body");
            let (_, get_body) = status_and_body(&get);
            assert!(!get_body.is_empty(), "the GET twin has a body: {get}");
            assert_eq!(header(&head, "content-length"), header(&get, "content-length"));
        }
    }

    #[test]
    fn an_idle_keep_alive_connection_closes_quietly_at_the_keep_alive_timeout() {
        let mut pair = Pair::new(config());
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(status_and_body(&pair.take_received()).0, 200);
        // Each answer restarts the idle clock.
        pair.advance(Duration::from_secs(3));
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(status_and_body(&pair.take_received()).0, 200);
        pair.advance(Duration::from_secs(5) - MS);
        assert_eq!(pair.closed, None, "closed before the keep-alive timeout");
        pair.advance(MS);
        assert_eq!(pair.closed, Some(CloseReason::IdleTimeout));
        assert_eq!(pair.take_received(), "", "no 408 and no bytes: just the close");
    }

    #[test]
    fn a_closed_connection_lingers_dropping_what_the_client_still_sends() {
        let mut pair = Pair::new(config());
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(status_and_body(&pair.take_received()).0, 200);
        assert!(pair.write_shut && pair.conn.is_lingering());
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(pair.take_received(), "", "a lingering connection answers nothing");
        pair.advance(LINGER - MS);
        assert_eq!(pair.closed, None, "closed before the linger was over");
        pair.advance(MS);
        assert_eq!(pair.closed, Some(CloseReason::Done));
    }

    fn subscribed(config: Config) -> Pair {
        let mut pair = Pair::new(config);
        pair.send(b"GET /events?topic=t HTTP/1.1\r\nHost: t\r\n\r\n");
        let text = pair.take_received();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(matches!(pair.conn.state(), State::Streaming(_)));
        pair
    }

    #[test]
    fn a_quiet_stream_gets_a_heartbeat_counted_from_its_last_write() {
        let mut pair = subscribed(config());
        pair.advance(Duration::from_secs(10));
        pair.publish("t", "hello");
        assert!(pair.take_received().contains("data: hello\n"));
        pair.advance(Duration::from_secs(15) - MS);
        assert_eq!(pair.take_received(), "", "a heartbeat before 15 s without a write");
        pair.advance(MS);
        assert_eq!(pair.take_received(), "2\r\n:\n\r\n", "one comment in its own chunk");
        pair.advance(Duration::from_secs(15));
        assert_eq!(pair.take_received(), "2\r\n:\n\r\n", "and again after another quiet period");
        pair.publish("t", "still live");
        assert!(pair.take_received().contains("data: still live\n"));
    }

    #[test]
    fn a_full_transport_gets_no_heartbeat_behind_what_it_owes() {
        let mut pair = subscribed(config());
        pair.window = 10;
        pair.publish("t", "a frame the client reads slowly");
        assert!(pair.conn.is_blocked());
        pair.advance(Duration::from_secs(15));
        pair.make_room(usize::MAX / 2);
        let text = pair.take_received();
        assert!(text.ends_with("data: a frame the client reads slowly\n\n\r\n"), "{text:?}");
        assert!(!text.contains(":\n\r\n"), "a heartbeat was queued behind a full socket: {text:?}");
    }

    #[test]
    fn lifetimes_are_spread_from_80_to_120_percent() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(lifetime_end(now, Duration::ZERO, |_, _| unreachable!()), None);
        assert_eq!(lifetime_end(now, hour, |low, _| low), Some(now + hour * 8 / 10));
        assert_eq!(lifetime_end(now, hour, |_, high| high), Some(now + hour * 12 / 10));
    }

    #[test]
    fn a_stream_ends_cleanly_at_its_lifetime() {
        let lifetime =
            Config { max_lifetime: Duration::from_secs(60), heartbeat: Duration::ZERO, ..config() };
        let mut pair = subscribed(lifetime);
        pair.publish("t", "before the end");
        assert!(pair.take_received().contains("data: before the end\n"));
        pair.advance(Duration::from_secs(48) - MS);
        assert_eq!(pair.take_received(), "", "ended before its lifetime");
        pair.advance(MS);
        assert_eq!(pair.take_received(), "0\r\n\r\n", "the terminating chunk, and nothing else");
        assert!(pair.write_shut);
    }

    #[test]
    fn a_lifetime_that_ends_inside_a_frame_completes_the_frame_first() {
        let lifetime =
            Config { max_lifetime: Duration::from_secs(60), heartbeat: Duration::ZERO, ..config() };
        let mut pair = subscribed(lifetime);
        pair.window = 20;
        pair.publish("t", "a frame cut by a full socket");
        let started = pair.take_received();
        // Stalled and quiet (no heartbeats) far longer than --header-timeout before the end.
        pair.advance(Duration::from_secs(48));
        assert_eq!(pair.closed, None, "cut the moment its end began");
        pair.make_room(usize::MAX / 2);
        let text = started + &pair.take_received();
        assert!(text.ends_with("data: a frame cut by a full socket\n\n\r\n0\r\n\r\n"), "{text:?}");
        assert!(pair.write_shut);
    }

    #[test]
    fn any_end_of_a_long_quiet_stalled_stream_gets_its_own_time_to_be_written() {
        // Ended from outside the lifetime: a gap in the shared log (cluster mode) ends every stream.
        let mut pair = subscribed(Config { heartbeat: Duration::ZERO, ..config() });
        pair.window = 5;
        pair.publish("t", "cut by a full socket");
        pair.advance(Duration::from_secs(60));
        pair.conn.end_stream(&pair.log, pair.now).expect("a clean end");
        pair.advance(Duration::from_secs(10) - MS);
        assert_eq!(pair.closed, None, "given up before --header-timeout from the end");
        pair.advance(MS);
        assert_eq!(pair.closed, Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn a_stalled_stream_is_dropped_once_what_it_owes_passes_max_lag() {
        let mut pair = subscribed(Config { max_lag: 4096, ..config() });
        pair.window = 0;
        let data = "x".repeat(1100);
        // The first event is the one being written: it does not count. Three more are under 4 KiB,
        // four are over.
        for _ in 0..4 {
            pair.publish("t", &data);
        }
        assert!(pair.conn.is_blocked());
        assert_eq!(
            pair.closed,
            None,
            "dropped at {} bytes behind",
            pair.log.lag(&pair.conn.stream().unwrap().sub)
        );
        pair.publish("t", &data);
        assert_eq!(pair.closed, Some(CloseReason::Dropped(DropReason::Lag)));
    }

    #[test]
    fn a_closing_connection_that_cannot_write_its_answer_gives_up_after_the_header_timeout() {
        let mut pair = Pair::new(config());
        pair.window = 0;
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert!(pair.conn.is_closing() && pair.conn.is_blocked());
        pair.advance(Duration::from_secs(10) - MS);
        assert_eq!(pair.closed, None);
        pair.advance(MS);
        assert_eq!(pair.closed, Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn a_half_close_after_a_request_still_gets_the_answer() {
        let mut pair = Pair::new(config());
        pair.window = 0;
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(pair.conn.handle_peer_closed(pair.now), PeerClosed::Finish);
        pair.make_room(usize::MAX / 2);
        assert_eq!(status_and_body(&pair.take_received()), (200, "ok\n"));
        assert!(pair.write_shut);
        // With nothing owed, the peer's end is the connection's.
        let mut idle = Pair::new(config());
        assert_eq!(idle.conn.handle_peer_closed(idle.now), PeerClosed::Close);
    }

    #[test]
    fn a_shutdown_ends_streams_writes_owed_answers_and_closes_the_rest() {
        let mut pair = subscribed(config());
        assert_eq!(pair.conn.handle_shutdown(&pair.log, pair.now), OnShutdown::Write);
        pair.transmit();
        assert_eq!(pair.take_received(), "0\r\n\r\n");

        let mut idle = Pair::new(config());
        assert_eq!(idle.conn.handle_shutdown(&idle.log, idle.now), OnShutdown::Close(CloseReason::Shutdown));

        let mut owed = Pair::new(config());
        owed.window = 0;
        owed.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(owed.conn.handle_shutdown(&owed.log, owed.now), OnShutdown::Write);
        assert!(owed.conn.is_closing(), "no request is read after a shutdown began");

        let mut lingering = Pair::new(config());
        lingering.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(
            lingering.conn.handle_shutdown(&lingering.log, lingering.now),
            OnShutdown::Close(CloseReason::Shutdown)
        );
    }

    #[test]
    fn held_answers_wait_for_the_commit_and_a_failed_commit_replaces_them_with_one_503() {
        let mut pair = Pair::new(config());
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        pair.take_received();
        let start = pair.conn.hold_answer();
        response::text(200, "1\n", true, false, b"", pair.conn.answer(true, pair.now));
        pair.transmit();
        assert_eq!(pair.take_received(), "", "a held answer went out before the commit");
        assert!(pair.conn.fail_held_answers(start, &Refusal::Timeout, pair.now));
        assert!(!pair.conn.fail_held_answers(start, &Refusal::Timeout, pair.now), "answered twice");
        pair.transmit();
        let text = pair.take_received();
        assert_eq!(status_and_body(&text).0, 408, "{text}");
        assert!(pair.write_shut, "the connection closes after the replacement");

        let mut pair = Pair::new(config());
        pair.conn.hold_answer();
        response::text(200, "1\n", true, false, b"", pair.conn.answer(true, pair.now));
        assert!(pair.conn.release_answer(), "reading resumes once no answer is held");
        pair.transmit();
        assert_eq!(status_and_body(&pair.take_received()), (200, "1\n"));
    }

    #[test]
    fn a_backlog_leaves_in_one_vectored_write() {
        let mut pair = subscribed(config());
        pair.window = 0;
        for n in 0..40 {
            pair.publish("t", &format!("{n:0>200}"));
        }
        pair.window = usize::MAX / 2;
        pair.conn.handle_writable();
        let mut slices = [IoSlice::new(&[]); 64];
        let tx = pair.conn.poll_transmit(&pair.log, &mut slices).unwrap().unwrap();
        assert_eq!(tx.slices, 40, "every pending event in one write, one slice each");
        let bytes: usize = slices[..tx.slices].iter().map(|s| s.len()).sum();
        assert!(bytes > 40 * 200, "{bytes}");
    }

    #[test]
    fn a_stream_keeps_one_position_per_list() {
        let mut log = Broadcast::new(Limits { events: 10, bytes: 1 << 20 }, 1);
        for (names, lists) in [(&["a"][..], 1), (&[][..], 1), (&["a", "b", "c"][..], 3)] {
            let selection = log.acquire(names);
            let resume = log.resume(&selection, None);
            let mut stream = Stream::new(Subscription::new(selection, Framing::Chunked, &resume), None);
            assert_eq!(stream.lists().count(), lists, "{names:?}");
            for index in 0..lists {
                stream.set_position(index, 10 + index as u32);
            }
            let positions: Vec<u32> = (0..lists).map(|index| stream.position(index)).collect();
            assert_eq!(positions, (0..lists as u32).map(|i| 10 + i).collect::<Vec<_>>(), "{names:?}");
        }
    }

    #[test]
    fn an_answer_known_later_goes_out_in_its_place_before_the_ones_queued_after_it() {
        let mut pair = Pair::new(config());
        let first = pair.conn.hold_answer();
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        let second = pair.conn.hold_answer();
        pair.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(pair.take_received(), "", "nothing goes out while an answer is unknown");
        assert!(!pair.conn.fill_answer(first, b"<one>"), "one answer is still held");
        pair.transmit();
        assert_eq!(pair.take_received(), "");
        // The second place moved with what went in before it.
        assert!(pair.conn.fill_answer(second + 5, b"<two>"));
        pair.transmit();
        let text = pair.take_received();
        let health = text.find("HTTP/1.1 200").expect("the health answers");
        assert!(text.starts_with("<one>"), "{text}");
        assert_eq!(text.matches("<two>").count(), 1, "{text}");
        let two = text.find("<two>").unwrap();
        assert!(health < two && two < text.rfind("HTTP/1.1 200").unwrap(), "{text}");
    }

    #[test]
    fn a_timer_that_fires_early_changes_nothing() {
        let mut pair = subscribed(config());
        let due = pair.conn.poll_timeout(&pair.config).expect("a heartbeat is scheduled");
        let early = due - MS;
        assert_eq!(pair.conn.handle_timeout(early, &pair.config, &pair.log), Expired::Nothing);
        assert_eq!(pair.conn.pending_out(), 0, "nothing queued by a stale timer");
        assert_eq!(pair.conn.handle_timeout(due, &pair.config, &pair.log), Expired::Write);
    }

    #[test]
    fn refusals_keep_the_connection_only_when_the_client_asked_and_the_framing_is_known() {
        let keep = Meta { keep_alive: true, http10: false, head_only: false, origin: None };
        let route = Refusal::Route(crate::http::route::RouteError::NotFound);
        for (meta, refusal, over_capacity, kept) in [
            (keep.clone(), route.clone(), false, true),
            (Meta { keep_alive: false, ..keep.clone() }, route.clone(), false, false),
            (keep.clone(), Refusal::Chunked, false, false),
            (keep.clone(), route.clone(), true, false),
        ] {
            let mut conn = Connection::new(Instant::now(), over_capacity);
            conn.refuse(&meta, &refusal, b"", Instant::now());
            assert_eq!(
                conn.is_reading_requests(),
                kept,
                "{meta:?} {refusal:?} over capacity: {over_capacity}"
            );
            assert_eq!(conn.is_closing(), !kept);
            assert!(conn.pending_out() > 0, "the refusal is queued");
        }
    }

    #[test]
    fn a_subscriber_turned_away_gets_a_stream_that_ends_at_once() {
        for (request, ends_with) in [("HTTP/1.1", "0\r\n\r\n"), ("HTTP/1.0", "retry: 5000\n")] {
            let mut pair = Pair::new(config());
            let meta =
                Meta { keep_alive: false, http10: request == "HTTP/1.0", head_only: false, origin: None };
            let mut body = Vec::new();
            sse::encode_prelude(5000, &mut body);
            pair.conn.turn_away(&meta, b"", &body, pair.now);
            pair.transmit();
            let text = pair.take_received();
            assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"), "{text}");
            assert!(text.contains("retry: 5000\n"), "{text}");
            assert!(text.ends_with(ends_with), "{request}: {text:?}");
            assert!(pair.write_shut, "the connection ends after it");
        }
    }

    #[test]
    fn nothing_is_written_while_the_transport_is_full() {
        let mut pair = subscribed(config());
        pair.window = 0;
        pair.publish("t", "waits");
        assert!(pair.conn.is_blocked());
        assert!(pair.conn.poll_transmit(&pair.log, &mut [IoSlice::new(&[]); 4]).unwrap().is_none());
        // Writable again: a stream resumes writing, not reading requests; nor does a connection
        // reading requests that was not paused for its answers.
        assert!(!pair.conn.handle_writable());
        assert!(!Connection::new(pair.now, false).handle_writable());
        assert!(pair.conn.poll_transmit(&pair.log, &mut [IoSlice::new(&[]); 4]).unwrap().is_some());
    }

    /// What the transport would accept of the next write: its slices' total length, and the
    /// transmission to hand back.
    fn next_write(pair: &Pair, slots: usize) -> (usize, Transmit) {
        let mut slices = vec![IoSlice::new(&[]); slots];
        let tx = pair.conn.poll_transmit(&pair.log, &mut slices).unwrap().unwrap();
        (slices[..tx.slices].iter().map(|s| s.len()).sum(), tx)
    }

    #[test]
    fn the_loop_is_told_when_one_write_took_everything() {
        let mut pair = subscribed(config());
        pair.window = 0;
        pair.publish("t", "one");
        pair.conn.handle_writable();
        let (total, tx) = next_write(&pair, 4);
        assert!(!pair.conn.handle_written(&pair.log, &tx, total - 1, pair.now), "a short write");
        let (rest, tx) = next_write(&pair, 4);
        assert_eq!((rest, tx.slices), (1, 1), "the last byte");
        assert!(pair.conn.handle_written(&pair.log, &tx, 1, pair.now), "everything written");
        // A gather cut short by the slice array is not the end either.
        for n in 0..5 {
            pair.publish("t", &format!("e{n}"));
        }
        pair.conn.handle_writable();
        let (total, tx) = next_write(&pair, 2);
        assert!(!pair.conn.handle_written(&pair.log, &tx, total, pair.now), "more is pending");
    }

    #[test]
    fn lag_counts_the_stream_s_own_unwritten_bytes_and_drops_only_past_the_limit() {
        let mut pair = subscribed(Config { max_lag: 4096, ..config() });
        pair.window = 0;
        pair.publish("t", "the event being written");
        let being_written = pair.log.lag(&pair.conn.stream().unwrap().sub);
        assert_eq!(being_written, 0, "the event at the cursor does not count");
        // Own bytes (a heartbeat here) count; exactly at the limit is still allowed.
        pair.conn.handle_writable();
        pair.conn.out.extend_from_slice(&vec![b':'; 4096]);
        assert_eq!(pair.conn.check_lag(&pair.log, 4096), None, "at the limit");
        assert_eq!(pair.conn.check_lag(&pair.log, 4095), Some(DropReason::Lag), "one byte past it");
    }

    #[test]
    fn a_half_close_while_an_answer_is_held_still_gets_it() {
        let mut pair = Pair::new(config());
        let at = pair.conn.hold_answer();
        assert_eq!(pair.conn.pending_out(), 0);
        assert_eq!(pair.conn.handle_peer_closed(pair.now), PeerClosed::Finish);
        pair.conn.fill_answer(at, b"answer");
        pair.transmit();
        assert_eq!(pair.take_received(), "answer");
        assert!(pair.write_shut);
    }

    #[test]
    fn reading_resumes_only_once_no_answer_is_held() {
        let mut conn = Connection::new(Instant::now(), false);
        conn.hold_answer();
        conn.hold_answer();
        assert!(!conn.release_answer(), "one is still held");
        assert!(conn.release_answer());
        let mut stream = subscribed(config());
        stream.conn.hold_answer();
        assert!(!stream.conn.release_answer(), "a stream reads no requests");
    }

    #[test]
    fn requests_wait_while_the_client_is_behind_on_reading_answers() {
        let mut pair = Pair::new(config());
        pair.window = 0;
        let request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
        let mut sent = 0;
        while pair.conn.read_budget(&pair.config).is_some() {
            pair.send(request);
            sent += 1;
            assert!(sent < 10_000, "reading never paused");
        }
        assert!(pair.conn.pending_out() >= MAX_PENDING_RESPONSES);
        pair.send(request); // buffered, not answered
        let pending = pair.conn.pending_out();
        pair.make_room(usize::MAX / 2);
        let answers = pair.take_received().matches("HTTP/1.1 200").count();
        assert_eq!(answers, sent + 1, "every buffered request is answered once the client reads");
        assert!(pending >= MAX_PENDING_RESPONSES);
    }
}
