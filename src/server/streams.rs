//! Streams and the bytes out: subscribing, writing what a [`Connection`] owes through its transport,
//! deadlines, closing. What to write, when a stream ends or is dropped and what a deadline means is
//! the connection's decision; this file carries it out on the sockets and the loop's lists.

use super::*;

/// Slices of the first write to a connection: its own bytes and up to three frames.
const FIRST_WRITE_SLICES: usize = 4;

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
    /// `GET /events`: a stream of the topics asked for (with JWT keys, once the token allows them).
    pub(super) fn subscribe(&mut self, key: Key, meta: &Meta, subscribe: &Subscribe, cors: &[u8]) {
        let names: Vec<&str> = subscribe.topics.iter().map(String::as_str).collect();
        let (rights, deadline) = match &subscribe.auth {
            Some(credentials) => match self.authorize_events(credentials, meta, &names, false) {
                Ok(granted) => granted,
                Err(refusal) => return self.refuse(key, meta, &refusal),
            },
            None => (broadcast::Rights::Public, None),
        };
        let selection = self.log.acquire(&names);
        let resume = self.log.resume(&selection, subscribe.last_event_id);
        let subscription =
            Subscription::new(selection, Framing::for_http10(meta.http10), &resume).with_rights(rights);
        self.start_subscription(key, meta, subscription, resume.gap, deadline, cors);
        debug!("conn={} subscribed to {:?} from {:?}", key.slot, subscribe.topics, subscribe.last_event_id);
    }

    /// Starts a stream of `subscription` on `key`: registered on its topics' lists, its head (with
    /// `headers`), prelude and gap notice queued, its lifetime drawn and cut at `deadline` (a
    /// token's end), and its first write this turn.
    pub(super) fn start_subscription(
        &mut self,
        key: Key,
        meta: &Meta,
        subscription: Subscription,
        gap: Option<(u64, u64)>,
        deadline: Option<Instant>,
        headers: &[u8],
    ) {
        let rng = &mut self.rng;
        let lifetime = lifetime_end(self.now, self.config.max_lifetime, |low, high| rng.between(low, high));
        let ends_at = match (lifetime, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut stream = Stream::new(subscription, ends_at);
        let positions: Vec<u32> = stream.lists().map(|list| self.registry.add(list, key)).collect();
        for (index, position) in positions.into_iter().enumerate() {
            stream.set_position(index, position);
        }
        let mut body = Vec::new();
        sse::encode_prelude(self.config.retry.as_millis() as u64, &mut body);
        if let Some((last, oldest)) = gap {
            self.metrics.resume_gaps += 1;
            sse::encode_gap(last, oldest, &mut body);
        }
        let conn = self.conns.get_mut(key).expect("caller holds a live key");
        conn.conn.start_stream(stream, meta, headers, &body, self.now);
        self.subscribers += 1;
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push_back(key);
        }
    }

    /// At capacity, a subscriber is told to come back later (see [`Connection::turn_away`]), after a
    /// long, random `retry:`.
    pub(super) fn turn_away_subscriber(&mut self, key: Key, meta: &Meta) {
        let retry_ms = self.rng.between(1_000, 10_000);
        let cors = self.cors(meta.origin.as_deref());
        let mut body = Vec::new();
        sse::encode_prelude(retry_ms, &mut body);
        info!("conn={} subscriber turned away at --max-connections (retry {retry_ms} ms)", key.slot);
        let conn = self.conns.get_mut(key).expect("caller holds a live key");
        conn.conn.turn_away(meta, &cors, &body, self.now);
    }

    // ----- writing -----

    pub(super) fn handle_writable(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let resumes_reading = conn.conn.handle_writable();
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
            if conn.conn.is_blocked() {
                // The socket is full: only check whether the backlog has grown past what is allowed.
                self.check_lag(key);
            } else {
                self.flush(key);
            }
        }
    }

    /// Drops a stream that [`Connection::check_lag`] says must go.
    pub(super) fn check_lag(&mut self, key: Key) {
        let Some(conn) = self.conns.get(key) else { return };
        if let Some(why) = conn.conn.check_lag(&self.log, self.config.max_lag) {
            self.close(key, CloseReason::Dropped(why));
        }
    }

    /// Writes what the connection owes, in vectored writes until done or `WouldBlock`.
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

    /// One vectored write of at most `N` slices, as [`Connection::poll_transmit`] fills them.
    fn write_once<const N: usize>(&mut self, key: Key) -> Wrote {
        let Some(conn) = self.conns.get_mut(key) else { return Wrote::Stopped };
        let mut slices = [IoSlice::new(&[]); N];
        let tx = match conn.conn.poll_transmit(&self.log, &mut slices) {
            Ok(Some(tx)) => tx,
            Ok(None) => return Wrote::Stopped,
            Err(why) => {
                self.close(key, CloseReason::Dropped(why));
                return Wrote::Stopped;
            }
        };
        if tx.slices == 0 && !conn.transport.wants_write() {
            if conn.conn.handle_drained(&self.log, &tx) {
                self.finish_closing(key);
            }
            return Wrote::Finished;
        }
        // With nothing new (`tx.slices == 0`) this only pushes out what the transport still holds.
        match conn.transport.write_vectored(&slices[..tx.slices]) {
            // `written` is what the transport accepted: the own bytes, the cursor and the lag
            // check all count that, whatever it may still hold.
            Outcome::Done(written) => {
                self.metrics.bytes_sent += written as u64;
                let finished = conn.conn.handle_written(&self.log, &tx, written, self.now);
                // The common case, one write that took everything and gathered all there was:
                // finish now instead of gathering again only to find nothing.
                if finished && !conn.transport.wants_write() {
                    Wrote::Finished
                } else {
                    Wrote::More
                }
            }
            Outcome::WouldBlock => {
                conn.conn.handle_blocked();
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
    /// client closes (or the linger passes) so unread request bytes do not turn the close into a
    /// reset.
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
        if conn.transport.wants_write() {
            // TLS: the socket did not take all of `close_notify`; flushing comes back here.
            return self.flush(key);
        }
        if self.stopping_by.is_some() {
            // Shutting down: the answer is out and nothing more will be read.
            return self.close(key, CloseReason::Done);
        }
        conn.conn.handle_write_closed(self.now);
        self.schedule(key);
        self.drain_input(key);
    }

    // ----- deadlines -----

    /// Puts the connection's next deadline in the heap if it is earlier than the one already there.
    pub(super) fn schedule(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(at) = conn.conn.poll_timeout(&self.config) else { return };
        if conn.scheduled.is_some_and(|s| s <= at) {
            return; // the earlier entry fires first and reschedules
        }
        conn.scheduled = Some(at);
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

    /// Carries out what [`Connection::handle_timeout`] decides.
    pub(super) fn handle_timeout(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.conn.handle_timeout(self.now, &self.config, &self.log) {
            Expired::Nothing => {}
            Expired::Write => self.flush(key),
            Expired::Lifetime => {
                self.metrics.dropped(DropReason::Lifetime);
                debug!("conn={} reached --max-lifetime", key.slot);
                self.flush(key);
            }
            Expired::RequestTimeout(_) if conn.transport.handshaking() => {
                // A TLS handshake still unfinished: there is no channel to answer 408 on.
                debug!("conn={} TLS handshake not complete within --header-timeout", key.slot);
                self.close(key, CloseReason::IdleTimeout)
            }
            Expired::RequestTimeout(meta) => {
                self.refuse(key, &meta, &Refusal::Timeout);
                self.flush(key);
            }
            Expired::Close(reason) => self.close(key, reason),
        }
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
        if let Some(stream) = conn.conn.stream() {
            for (index, list) in stream.lists().enumerate() {
                if let Some(moved) = self.registry.remove(list, stream.position(index)) {
                    let moved_conn = self.conns.get_mut(moved).expect("registry holds live keys");
                    if let Some(other) = moved_conn.conn.stream_mut() {
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
            self.log.release_subscription(&stream.sub);
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
        for mut listener in [self.listener.take(), self.tls_listener.take()].into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match conn.conn.handle_shutdown(&self.log, self.now) {
                OnShutdown::Nothing => {}
                OnShutdown::Write => self.flush(key),
                OnShutdown::Close(reason) => self.close(key, reason),
            }
        }
    }
}
