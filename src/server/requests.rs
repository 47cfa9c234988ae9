//! Accepting connections, reading requests and carrying them out.

use super::*;

impl Loop {
    /// Accepts from the main listener or (`tls`) the second one, up to `ACCEPTS_PER_TURN`.
    pub(super) fn accept(&mut self, tls: bool) {
        let side = usize::from(tls);
        let mut budget = ACCEPTS_PER_TURN;
        while self.accept_paused_until.is_none() {
            let listener = if tls { &self.tls_listener } else { &self.listener };
            let Some(listener) = listener else { return };
            if budget == 0 {
                // Edge-triggered: no new event announces the rest of the backlog. Next turn.
                self.accept_more[side] = true;
                return;
            }
            budget -= 1;
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if net::is_resource_exhaustion(&e) => {
                    // Said once, then every EXHAUSTION_REPORT with a count: not every 100 ms.
                    self.exhausted_accepts += 1;
                    if self.exhaustion_reported.is_none_or(|t| self.now >= t + EXHAUSTION_REPORT) {
                        warn!(
                            "accept failed: {e} ({} times since the last report); pausing new connections for \
                             {ACCEPT_PAUSE:?} at a time (raise the hard limit: LimitNOFILE= or ulimit -Hn, or lower --max-connections)",
                            self.exhausted_accepts
                        );
                        self.exhaustion_reported = Some(self.now);
                        self.exhausted_accepts = 0;
                    }
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
            if over_capacity && self.conns.len() >= self.config.max_connections + self.overflow {
                self.metrics.connections_rejected += 1;
                debug!("peer={peer} refused: over --max-connections with no room to answer");
                continue; // dropping the stream closes it
            }
            self.metrics.connections_accepted += 1;
            net::tune_stream(&stream);
            let Some(transport) = self.link(stream, tls || self.main_is_tls) else { continue };
            let conn = Conn {
                transport,
                conn: Connection::new(self.now, over_capacity),
                scheduled: None,
                dirty: false,
                queued_for_commit: false,
                handshake_deferred: false,
            };
            let key = self.conns.insert(conn);
            let conn = self.conns.get_mut(key).expect("just inserted");
            // Both directions at once, edge-triggered: no re-registration is ever needed.
            if let Err(e) = self.poll.registry().register(
                conn.transport.source(),
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

    /// Listeners that stopped at their budget last turn accept again, and handshakes deferred for
    /// want of budget go on (oldest first), before this turn's readiness events.
    pub(super) fn continue_deferred(&mut self) {
        let more = std::mem::take(&mut self.accept_more);
        for (side, more) in more.into_iter().enumerate() {
            if more {
                self.accept(side == 1);
            }
        }
        self.handshakes_left = HANDSHAKES_PER_TURN;
        for _ in 0..self.handshakes_deferred.len() {
            if self.handshakes_left == 0 {
                break;
            }
            let Some(key) = self.handshakes_deferred.pop_front() else { break };
            let Some(conn) = self.conns.get_mut(key) else { continue };
            conn.handshake_deferred = false;
            self.handle_readable(key);
        }
    }

    /// The transport for a new connection: plain, or TLS from the configuration in force.
    fn link(&self, stream: mio::net::TcpStream, tls: bool) -> Option<Link> {
        if !tls {
            return Some(Link::Plain(Plain::new(stream)));
        }
        #[cfg(feature = "tls")]
        {
            let config = self.tls.clone().expect("a TLS listener has a TLS configuration");
            match crate::transport::Tls::new(stream, config) {
                Ok(tls) => Some(Link::Tls(Box::new(tls))),
                Err(e) => {
                    warn!("starting a TLS connection failed: {e}");
                    None
                }
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            unreachable!("a TLS listener exists only with the `tls` feature ({:?})", stream.peer_addr())
        }
    }

    // ----- reading and requests -----

    pub(super) fn handle_readable(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.transport.handshaking() {
            // A handshake's first step is public-key work: rationed per turn (HANDSHAKES_PER_TURN)
            // so that a flood of them cannot hold up the fan-out to open streams.
            if self.handshakes_left == 0 {
                if !conn.handshake_deferred {
                    conn.handshake_deferred = true;
                    self.handshakes_deferred.push_back(key);
                }
                return;
            }
            self.handshakes_left -= 1;
        }
        match conn.conn.state() {
            State::Requests(_) => self.read_requests(key),
            // An answer is owed and the connection ends after it: a half-close must not cut it
            // short, so nothing is read until it is written (lingering then reads the rest).
            State::Closing(None) => {}
            State::Streaming(_) | State::Closing(Some(_)) | State::Lingering { .. } => self.drain_input(key),
        }
    }

    /// Reads and throws away what a stream's or a closing connection's client sends, to notice its end.
    pub(super) fn drain_input(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        loop {
            match conn.transport.read(&mut self.scratch) {
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

    /// Answers the requests already buffered, then reads until `WouldBlock` (or until the input cap),
    /// answering each complete request as it arrives.
    ///
    /// Reading stops while a client has `MAX_PENDING_RESPONSES` of answers it has not read (or that
    /// wait for a commit); `WRITABLE` or the commit calls this again, and since buffered requests
    /// announce themselves with no readiness event, they are answered first.
    pub(super) fn read_requests(&mut self, key: Key) {
        loop {
            self.process_requests(key);
            let full = self.held.is_full();
            let Some(conn) = self.conns.get_mut(key) else { return };
            if full {
                // Picked up again, and read until `WouldBlock`, once a commit makes room.
                if !conn.queued_for_commit {
                    conn.queued_for_commit = true;
                    self.resume_after_commit.push_back(key);
                }
                return;
            }
            let Some(budget) = conn.conn.read_budget(&self.config) else {
                if matches!(conn.conn.state(), State::Streaming(_)) {
                    // The last request opened a stream: its client has nothing more to say.
                    self.drain_input(key);
                }
                return;
            };
            let want = budget.min(self.scratch.len());
            match conn.transport.read(&mut self.scratch[..want]) {
                Outcome::Done(n) => {
                    trace!("conn={} read {n} bytes", key.slot);
                    conn.conn.handle_input(&self.scratch[..n], self.now);
                }
                Outcome::WouldBlock => {
                    self.schedule(key);
                    return;
                }
                Outcome::Closed => {
                    match conn.conn.handle_peer_closed(self.now) {
                        PeerClosed::Finish => self.flush(key),
                        PeerClosed::Close => self.close(key, CloseReason::PeerClosed),
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

    /// Carries out the complete requests in the connection's input, in order, writing their answers.
    pub(super) fn process_requests(&mut self, key: Key) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if !conn.conn.is_reading_requests() {
                break;
            }
            if conn.conn.pending_out() >= MAX_PENDING_RESPONSES {
                // Write what we can; go on only if the client took it.
                self.flush(key);
                match self.conns.get(key) {
                    Some(conn) if conn.conn.pending_out() < MAX_PENDING_RESPONSES => continue,
                    _ => break,
                }
            }
            if self.held.is_full() {
                break; // `read_requests` queues the connection for after the commit
            }
            let Some(incoming) = conn.conn.poll_request(&self.config, self.now) else { break };
            match incoming {
                Incoming::Interim(_) => {} // already queued by the connection
                Incoming::Refused(meta, refusal) => self.refuse(key, &meta, &refusal),
                Incoming::Request(meta, action) => self.carry_out(key, meta, action),
            }
        }
        self.flush(key);
        self.schedule(key);
    }

    pub(super) fn cors(&self, origin: Option<&str>) -> Vec<u8> {
        let mut cors = Vec::new();
        response::push_cors(&self.config, origin, &mut cors);
        cors
    }

    /// Counts and logs a refusal, wherever its answer is queued.
    pub(super) fn note_refusal(&mut self, key: Key, refusal: &Refusal) {
        let status = refusal.status();
        self.metrics.refused(status);
        info!("conn={} refused: {status} {}", key.slot, refusal.reason());
    }

    pub(super) fn refuse(&mut self, key: Key, meta: &Meta, refusal: &Refusal) {
        self.note_refusal(key, refusal);
        let cors = self.cors(meta.origin.as_deref());
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.conn.refuse(meta, refusal, &cors, self.now);
    }

    pub(super) fn carry_out(&mut self, key: Key, meta: Meta, action: Action) {
        let over_capacity = self.conns.get(key).is_some_and(|c| c.conn.over_capacity());
        if over_capacity {
            match action {
                // Load balancers must not mark a full node dead; HEAD works wherever GET does.
                Action::Health | Action::Subscribe(Subscribe { head_only: true, .. }) => {}
                Action::Subscribe(_) => return self.turn_away_subscriber(key, &meta),
                _ => return self.refuse(key, &meta, &Refusal::Overloaded),
            }
        }
        let cors = self.cors(meta.origin.as_deref());
        let keep_alive = meta.keep_alive && !over_capacity;
        match action {
            Action::Health => {
                // A node cut off from Redis still serves its streams, but a load balancer should
                // send new clients elsewhere: they would get no new events here.
                let (status, body) = match self.cluster.as_ref().and_then(|c| c.down_reason()) {
                    Some(reason) => (503, format!("degraded: Redis unavailable: {reason}\n").into()),
                    None => (200, std::borrow::Cow::Borrowed("ok\n")),
                };
                let out = answer_buffer(&mut self.conns, key, keep_alive, self.now);
                response::text(status, &body, keep_alive, meta.head_only, &cors, out);
            }
            Action::Metrics => {
                let gauges = Gauges {
                    connections: self.conns.len(),
                    subscribers: self.subscribers,
                    history_events: self.log.len(),
                    history_bytes: self.log.bytes(),
                    history_index_bytes: self.log.index_bytes(),
                };
                let mut body = self.metrics.render(&gauges);
                if let Some(cluster) = &self.cluster {
                    cluster.render_metrics(&mut body);
                }
                if let Some(hub) = &self.hub {
                    hub.render_metrics(&mut body);
                }
                let out = answer_buffer(&mut self.conns, key, keep_alive, self.now);
                response::text(200, &body, keep_alive, meta.head_only, &cors, out);
            }
            Action::Preflight => {
                let out = answer_buffer(&mut self.conns, key, keep_alive, self.now);
                response::preflight(&self.config, meta.origin.as_deref(), keep_alive, out);
            }
            Action::Publish(event, Some(credentials)) => {
                let topics: Vec<&str> = event.topics().iter().map(String::as_str).collect();
                match self.authorize_events(&credentials, &meta, &topics, true) {
                    Ok(_) => self.carry_out_publish(key, &meta, event, false),
                    Err(refusal) => self.refuse(key, &meta, &refusal),
                }
            }
            Action::Publish(event, None) => self.carry_out_publish(key, &meta, event, false),
            Action::HubSubscribe(request) => self.hub_subscribe(key, &meta, &request),
            Action::HubPublish(publish) => {
                let (credentials, body) = *publish;
                self.hub_publish(key, &meta, credentials, body)
            }
            Action::Subscribe(subscribe) if subscribe.head_only => {
                let out = answer_buffer(&mut self.conns, key, keep_alive, self.now);
                response::stream_head(meta.http10, keep_alive, &cors, out);
            }
            Action::Subscribe(subscribe) => self.subscribe(key, &meta, &subscribe, &cors),
        }
    }
}

impl Loop {
    /// Stores a checked event and answers its publisher with its id (through Redis in cluster
    /// mode, after the commit with a syncing durable history). A hub publication is answered with
    /// the id its subscribers see, as Mercure asks (`text/plain`, nothing else in the body).
    pub(super) fn carry_out_publish(&mut self, key: Key, meta: &Meta, event: Event, hub: bool) {
        let keep_alive = meta.keep_alive && !self.conns.get(key).is_some_and(|c| c.conn.over_capacity());
        let cors = self.cors(meta.origin.as_deref());
        let answer =
            if hub { cluster::Answer::Hub(event.wire_id().map(str::to_string)) } else { cluster::Answer::Id };
        if self.cluster.is_some() {
            return self.cluster_publish(cluster::Waiter::Http { key, keep_alive, cors, answer }, event);
        }
        match self.publish(&event) {
            Ok(id) => {
                if self.defers_acks() {
                    let conn = self.conns.get_mut(key).expect("caller holds a live key");
                    let out_start = conn.conn.hold_answer();
                    self.pending_acks.push(Ack::Http { key, out_start });
                }
                let body = answer.body(id.get());
                let out = answer_buffer(&mut self.conns, key, keep_alive, self.now);
                response::text(200, &body, keep_alive, false, &cors, out);
            }
            Err(e) => self.refuse(key, meta, &Refusal::from(e)),
        }
    }
}

/// The buffer a complete answer is queued in ([`Connection::answer`]).
///
/// A free function over the slab (not a method) so that an answer can borrow other parts of the
/// loop, such as its configuration, while it is written.
fn answer_buffer(conns: &mut Slab<Conn>, key: Key, keep_alive: bool, now: Instant) -> &mut Vec<u8> {
    conns.get_mut(key).expect("caller holds a live key").conn.answer(keep_alive, now)
}
