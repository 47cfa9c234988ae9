//! Streams: subscribing, writing from the log, deadlines (heartbeats, timeouts, lifetimes), closing.

use super::*;

/// Slices of the first write to a connection: its own bytes and up to three frames.
const FIRST_WRITE_SLICES: usize = 4;

/// A stream's next deadline and what it is for; `deadline_of` and `handle_timeout` both ask
/// here, so what is scheduled and what is handled cannot drift apart.
///
/// A closing stream only waits for its end to be written, as long as a request head may take
/// (its lifetime and heartbeats are over); an open one ends at its lifetime or is due a heartbeat.
fn stream_deadline(config: &Config, conn: &Conn, stream: &Stream) -> Option<(Instant, StreamTimer)> {
    if conn.closing {
        return Some((deadline_after(conn.last_write, config.header_timeout), StreamTimer::GiveUp));
    }
    let heartbeat = (!config.heartbeat.is_zero())
        .then(|| (deadline_after(conn.last_write, config.heartbeat), StreamTimer::Heartbeat));
    let lifetime = stream.ends_at.map(|at| (at, StreamTimer::Lifetime));
    [lifetime, heartbeat].into_iter().flatten().min_by_key(|&(at, _)| at)
}

/// Queues a stream's response head and the start of its body (prelude, gap notice) with the
/// framing its HTTP version calls for, which it returns. A stream's connection is never reused, so
/// the head says `Connection: close`.
fn queue_stream_start(meta: &Meta, cors: &[u8], body: &[u8], out: &mut Vec<u8>) -> Framing {
    let framing = Framing::for_http10(meta.http10);
    response::stream_head(meta.http10, false, cors, out);
    push_body(framing, body, out);
    framing
}

/// What a stream's deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamTimer {
    /// A closing stream whose end could not be written in time.
    GiveUp,
    /// `--max-lifetime` is up: end the stream cleanly.
    Lifetime,
    /// Quiet for `--heartbeat`: send a comment.
    Heartbeat,
}

/// What one vectored write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Everything owed is written.
    Finished,
    /// More may be owed: write again.
    More,
    /// The socket is full, the connection waits or was closed.
    Stopped,
}

impl Loop {
    pub(super) fn subscribe(&mut self, key: Key, meta: &Meta, subscribe: &Subscribe, cors: &[u8]) {
        let names: Vec<&str> = subscribe.topics.iter().map(String::as_str).collect();
        let selection = self.log.acquire(&names);
        let resume = self.log.resume(&selection, subscribe.last_event_id);
        let framing = Framing::for_http10(meta.http10);
        let mut stream = Stream {
            sub: Subscription::new(selection, framing, &resume),
            position: 0,
            more_positions: Box::new([]),
            ends_at: None,
        };
        let positions: Vec<u32> = stream.lists().map(|list| self.registry.add(list, key)).collect();
        stream.position = positions[0];
        stream.more_positions = positions[1..].into();
        stream.ends_at = (!self.config.max_lifetime.is_zero()).then(|| {
            let base = self.config.max_lifetime.as_millis() as u64;
            let jitter = self.rng.between(base * 8 / 10, base * 12 / 10);
            deadline_after(self.now, Duration::from_millis(jitter))
        });
        let mut body = Vec::new();
        sse::encode_prelude(self.config.retry.as_millis() as u64, &mut body);
        if let Some((last, oldest)) = resume.gap {
            self.metrics.resume_gaps += 1;
            sse::encode_gap(last, oldest, &mut body);
        }
        let conn = self.conns.get_mut(key).expect("caller holds a live key");
        queue_stream_start(meta, cors, &body, &mut conn.out);
        conn.phase = Phase::Streaming(stream);
        conn.last_write = self.now;
        self.subscribers += 1;
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push_back(key);
        }
        debug!("conn={} subscribed to {:?} from {:?}", key.slot, subscribe.topics, subscribe.last_event_id);
    }

    /// At capacity, a subscriber is told to come back later in a way `EventSource` honours: a normal
    /// stream that carries only a long, random `retry:` and ends at once (any non-200 would be final).
    pub(super) fn turn_away_subscriber(&mut self, key: Key, meta: &Meta) {
        let retry_ms = self.rng.between(1_000, 10_000);
        let cors = self.cors(meta.origin.as_deref());
        let mut body = Vec::new();
        sse::encode_prelude(retry_ms, &mut body);
        info!("conn={} subscriber turned away at --max-connections (retry {retry_ms} ms)", key.slot);
        let conn = self.conns.get_mut(key).expect("caller holds a live key");
        if queue_stream_start(meta, &cors, &body, &mut conn.out) == Framing::Chunked {
            conn.out.extend_from_slice(LAST_CHUNK);
        }
        conn.closing = true;
    }

    // ----- writing -----

    pub(super) fn handle_writable(&mut self, key: Key) {
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

    /// Writes to the next `FANOUT_SLICE` marked streams; the rest wait for the next turn, which
    /// polls without sleeping.
    ///
    /// Slicing the walk is what makes a backlog coalesce: a publish that arrives while a fan-out is
    /// under way is stored at the next turn, and the streams not yet written take both events in one
    /// write; publishers and new subscribers are also served between slices instead of after the
    /// whole walk.
    pub(super) fn flush_dirty(&mut self) {
        for _ in 0..FANOUT_SLICE {
            let Some(key) = self.dirty.pop_front() else { return };
            let Some(conn) = self.conns.get_mut(key) else { continue };
            conn.dirty = false;
            if conn.blocked {
                // The socket is full: only check whether the backlog has grown past what is allowed.
                self.check_lag(key);
            } else {
                self.flush(key);
            }
        }
    }

    /// Closes a stream whose socket is full and whose lag passed `--max-lag` (see
    /// [`Broadcast::lag`]: a catch-up and the event being written do not count) or whose next event
    /// left the history.
    pub(super) fn check_lag(&mut self, key: Key) {
        let Some(conn) = self.conns.get(key) else { return };
        let Phase::Streaming(stream) = &conn.phase else { return };
        if self.log.lost(&stream.sub) {
            return self.close(key, CloseReason::Dropped(DropReason::Evicted));
        }
        let lag = self.log.lag(&stream.sub) + conn.pending_out() as u64;
        if lag > self.config.max_lag as u64 {
            self.close(key, CloseReason::Dropped(DropReason::Lag));
        }
    }

    /// Writes what the connection owes: queued bytes first, then (for a stream) the log from its
    /// cursor, gathered into vectored writes until done or `WouldBlock`.
    ///
    /// The slice array is built on the stack for every write, so the first write uses a small one
    /// (a paced fan-out writes one frame per stream); only a backlog that fills it moves on to the
    /// full `MAX_SLICES`.
    pub(super) fn flush(&mut self, key: Key) {
        let mut wrote = self.write_once::<FIRST_WRITE_SLICES>(key);
        while wrote == Wrote::More {
            wrote = self.write_once::<{ broadcast::MAX_SLICES + 1 }>(key);
        }
    }

    /// One vectored write of at most `N` slices (the connection's own bytes, then frames).
    fn write_once<const N: usize>(&mut self, key: Key) -> Wrote {
        let Some(conn) = self.conns.get_mut(key) else { return Wrote::Stopped };
        if conn.blocked || conn.lingering_until.is_some() || conn.awaiting_commit > 0 {
            return Wrote::Stopped;
        }
        let mut slices = [IoSlice::new(&[]); N];
        let own = conn.pending_out();
        let mut used = 0;
        if own > 0 {
            slices[0] = IoSlice::new(&conn.out[conn.out_at..]);
            used = 1;
        }
        let room = N - used;
        let mut gathered = None;
        if let Phase::Streaming(stream) = &conn.phase {
            if !conn.closing {
                if self.log.lost(&stream.sub) {
                    self.close(key, CloseReason::Dropped(DropReason::Evicted));
                    return Wrote::Stopped;
                }
                let g = self.log.gather(&stream.sub, &mut slices[used..], MAX_WRITE_BYTES);
                used += g.slices;
                gathered = Some(g);
            }
        }
        if used == 0 && !conn.transport.wants_write() {
            // Everything written: give the buffer back so an idle connection holds no heap.
            conn.out = Vec::new();
            conn.out_at = 0;
            if conn.closing {
                self.finish_closing(key);
            }
            return Wrote::Finished;
        }
        // With nothing new (`used == 0`) this only pushes out what the transport still holds.
        match conn.transport.write_vectored(&slices[..used]) {
            // `written` is what the transport accepted: the own bytes, the cursor and the lag
            // check all count that, whatever it may still hold.
            Outcome::Done(written) => {
                self.metrics.bytes_sent += written as u64;
                conn.last_write = self.now;
                let from_own = written.min(own);
                conn.out_at += from_own;
                if let (Phase::Streaming(stream), Some(g)) = (&mut conn.phase, gathered) {
                    self.log.advance(&mut stream.sub, &g, written - from_own);
                }
                // The common case, one write that took everything and gathered all there was:
                // finish now instead of gathering again only to find nothing.
                let took_all = written == own + gathered.map_or(0, |g| g.bytes);
                let gathered_all = gathered.map_or(true, |g| g.slices < room && g.bytes < MAX_WRITE_BYTES);
                if took_all && gathered_all && !conn.closing && !conn.transport.wants_write() {
                    conn.out = Vec::new();
                    conn.out_at = 0;
                    return Wrote::Finished;
                }
                Wrote::More
            }
            Outcome::WouldBlock => {
                conn.blocked = true;
                self.check_lag(key);
                self.schedule(key);
                Wrote::Stopped
            }
            Outcome::Closed => {
                self.close(key, CloseReason::PeerClosed);
                Wrote::Stopped
            }
            Outcome::Failed(e) => {
                debug!("conn={} write failed: {e}", key.slot);
                self.close(key, CloseReason::Error);
                Wrote::Stopped
            }
        }
    }

    /// All owed bytes are written on a closing connection: shut the write side, then read until the
    /// client closes (or `LINGER` passes) so unread request bytes do not turn the close into a reset.
    ///
    /// A transport still holding bytes is flushed first (`write_once` comes back here once it is
    /// empty); plain TCP never holds any.
    pub(super) fn finish_closing(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.transport.wants_write() {
            return self.flush(key);
        }
        if conn.transport.close_write().is_err() {
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
    pub(super) fn deadline_of(&self, conn: &Conn) -> Option<Instant> {
        if let Some(until) = conn.lingering_until {
            return Some(until);
        }
        match &conn.phase {
            Phase::Requests(reader) => Some(reader.poll_deadline(&self.config)),
            Phase::Streaming(stream) => stream_deadline(&self.config, conn, stream).map(|(at, _)| at),
        }
    }

    /// Puts the connection's next deadline in the heap if it is earlier than the one already there.
    pub(super) fn schedule(&mut self, key: Key) {
        let Some(conn) = self.conns.get(key) else { return };
        let Some(at) = self.deadline_of(conn) else { return };
        if conn.scheduled.is_some_and(|s| s <= at) {
            return; // the earlier entry fires first and reschedules
        }
        self.conns.get_mut(key).expect("checked above").scheduled = Some(at);
        self.timers.schedule(key, at);
    }

    pub(super) fn fire_timers(&mut self) {
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

    pub(super) fn handle_timeout(&mut self, key: Key) {
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
                let meta = reader.pending_meta();
                self.refuse(key, &meta, &Refusal::Timeout);
                self.flush(key);
            }
            Phase::Streaming(stream) => {
                let Some((at, timer)) = stream_deadline(&self.config, conn, stream) else { return };
                if at > now {
                    return;
                }
                match timer {
                    // Its end could not be written within the time: give up on it.
                    StreamTimer::GiveUp => self.close(key, CloseReason::IdleTimeout),
                    StreamTimer::Lifetime => {
                        self.metrics.dropped(DropReason::Lifetime);
                        debug!("conn={} reached --max-lifetime", key.slot);
                        self.end_stream(key);
                    }
                    // A full socket is not idle: nothing to add behind it; look again later.
                    StreamTimer::Heartbeat if conn.blocked => conn.last_write = now,
                    StreamTimer::Heartbeat => {
                        // Not blocked means the last write finished every frame, so a comment
                        // cannot land inside one.
                        push_body(stream.sub.framing(), sse::HEARTBEAT, &mut conn.out);
                        self.flush(key);
                    }
                }
            }
        }
    }

    /// Ends a stream cleanly: the terminating chunk on HTTP/1.1 (the end of the connection on 1.0).
    ///
    /// A write cut inside a frame is completed first: the rest of that frame is copied ahead of the
    /// terminating chunk, since the client must never see half an event followed by the end.
    pub(super) fn end_stream(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::Streaming(stream) = &mut conn.phase else { return };
        if stream.sub.cursor().mid_frame() && self.log.lost(&stream.sub) {
            // Half a frame went out and its rest is gone from the history: no clean end is possible,
            // and the client must not take what follows for the rest of that frame.
            return self.close(key, CloseReason::Dropped(DropReason::Evicted));
        }
        if stream.sub.cursor().mid_frame() {
            let mut rest = [IoSlice::new(&[])];
            let g = self.log.gather(&stream.sub, &mut rest, usize::MAX);
            conn.out.extend_from_slice(&rest[0][..]);
            self.log.advance(&mut stream.sub, &g, g.bytes);
        }
        if stream.sub.framing() == Framing::Chunked {
            conn.out.extend_from_slice(LAST_CHUNK);
        }
        conn.closing = true;
        self.flush(key);
    }

    // ----- closing -----

    pub(super) fn close(&mut self, key: Key, reason: CloseReason) {
        let Some(mut conn) = self.conns.remove(key) else { return };
        if let CloseReason::Dropped(why) = reason {
            if why != DropReason::Lifetime {
                self.metrics.dropped(why);
                info!("conn={} stream dropped: {why:?}", key.slot);
            }
        }
        if let Phase::Streaming(stream) = &conn.phase {
            for (index, list) in stream.lists().enumerate() {
                if let Some(moved) = self.registry.remove(list, stream.position(index)) {
                    let moved_conn = self.conns.get_mut(moved).expect("registry holds live keys");
                    if let Phase::Streaming(other) = &mut moved_conn.phase {
                        let slot = match list {
                            List::All => 0,
                            List::Topic(t) => {
                                other.sub.selection().topics().binary_search(&t).expect("listed topic")
                            }
                        };
                        other.set_position(slot, stream.position(index));
                    }
                }
            }
            self.log.release(stream.sub.selection());
            self.subscribers -= 1;
        }
        let _ = self.poll.registry().deregister(conn.transport.source());
        if log_enabled!(Level::Debug) {
            debug!("conn={} closed: {reason:?}", key.slot);
        }
    }

    pub(super) fn begin_shutdown(&mut self) {
        info!("ssed shutting down; streams to end: {}", self.subscribers);
        if let Some(supervisor) = &self.supervisor {
            supervisor.send("STOPPING=1\nSTATUS=shutting down");
        }
        self.stopping_by = Some(deadline_after(self.now, self.config.shutdown_timeout));
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match &conn.phase {
                Phase::Streaming(_) if conn.closing => {} // already ending
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
