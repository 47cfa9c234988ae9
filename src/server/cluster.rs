//! Cluster mode in the loop (`--redis`): publishes go to Redis through the bridge and are answered
//! once Redis has accepted them; what the bridge reads back from the stream, in its one order, is
//! what this node's log holds and its subscribers receive. The loop never waits on Redis: the
//! bridge's threads wake it, and [`Loop::handle_redis`] takes what they have to say.
//!
//! Built without the `cluster` feature, [`Cluster`] is a type with no values, so the loop's
//! `Option<Cluster>` is always `None` and the calls below compile to nothing.

use super::*;

#[cfg(feature = "cluster")]
pub(super) use enabled::Cluster;

/// No cluster mode in this build: `Config::validate` refuses `--redis`, so none is ever made.
#[cfg(not(feature = "cluster"))]
pub(super) enum Cluster {}

#[cfg(not(feature = "cluster"))]
impl Cluster {
    pub(super) fn start(_: &Config, _: &Arc<Waker>) -> Result<(Cluster, Broadcast), Error> {
        Err(Error::config("--redis: this ssed was built without cluster mode (the cargo feature `cluster`)"))
    }

    pub(super) fn down_reason(&self) -> Option<&str> {
        match *self {}
    }

    pub(super) fn render_metrics(&self, _: &mut String) {
        match *self {}
    }
}

#[cfg(not(feature = "cluster"))]
impl Loop {
    pub(super) fn cluster_publish(&mut self, _: Waiter, _: Event) {}

    pub(super) fn handle_redis(&mut self) {}
}

/// What an HTTP publisher is answered with once its event is stored (in cluster mode, once its
/// append is in).
pub(super) enum Answer {
    /// ssed's: the numeric id and a line feed.
    Id,
    /// The Mercure hub's: the id subscribers see, the publisher's own if it gave one.
    Hub(Option<String>),
}

impl Answer {
    /// The answer's body for the event stored as `id`.
    pub(super) fn body(&self, id: u64) -> String {
        match self {
            Answer::Id => format!("{id}\n"),
            Answer::Hub(Some(text)) => text.clone(),
            Answer::Hub(None) => format!("{}{id}", broadcast::URN_PREFIX),
        }
    }
}

/// Who waits for an append's answer.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))] // made, never read, without cluster mode
pub(super) enum Waiter {
    /// An HTTP publish: its answer goes in at its place in the connection's buffer.
    Http { key: Key, keep_alive: bool, cors: Vec<u8>, answer: Answer },
    /// A [`Publisher`] call.
    Handle(mpsc::SyncSender<Result<broadcast::EventId, Error>>),
}

#[cfg(feature = "cluster")]
mod enabled {
    use std::collections::HashMap;

    use crate::broadcast::TopicId;

    use super::*;
    use crate::cluster::bridge::{Bridge, BridgeConfig, FromRedis, RedisState};
    use crate::cluster::stream::EntryId;
    use crate::config::redact_url;
    use crate::metrics::names;

    /// The loop's side of cluster mode.
    pub(in crate::server) struct Cluster {
        bridge: Bridge,
        state: RedisState,
        next_token: u64,
        waiting: HashMap<u64, Waiter>,
        /// Per connection, where the answers of its publishes still waiting for Redis go, oldest
        /// first: one connection's appends are answered in the order they were made.
        places: HashMap<Key, VecDeque<usize>>,
        reconnects: u64,
        append_latency: Duration,
        entries_read: u64,
        /// How far behind the stream's clock the last entry read was, in milliseconds.
        read_lag_ms: u64,
    }

    impl Cluster {
        /// Connects to Redis and loads the retained tail into a log of its own: a node serves
        /// resumes from memory from its first answer on.
        pub(in crate::server) fn start(
            config: &Config,
            waker: &Arc<Waker>,
        ) -> Result<(Cluster, Broadcast), Error> {
            let url = config.redis.clone().expect("cluster mode has a URL");
            let bridge_config = BridgeConfig {
                url: url.clone(),
                key: config.redis_key.clone(),
                maxlen: config.redis_entries(),
                max_data: config.max_body,
            };
            let (bridge, tail) = Bridge::start(bridge_config, config.history, Arc::clone(waker))?;
            let limits = Limits { events: config.history, bytes: config.history_bytes };
            // Ids below the tail's first are gone as far as this node knows: resumes from them get
            // the gap notice.
            let mut log = Broadcast::new(limits, tail.first().map_or(1, |(id, _)| *id));
            let now = wall_micros();
            let loaded = tail.len();
            for (id, event) in &tail {
                insert(&mut log, *id, event, now);
            }
            info!(
                "cluster mode: stream {:?} on {}, loaded {}{}",
                config.redis_key,
                redact_url(&url),
                count(loaded, "event"),
                tail.last().map(|(id, _)| format!(", newest id {id}")).unwrap_or_default()
            );
            let cluster = Cluster {
                bridge,
                state: RedisState::Up,
                next_token: 0,
                waiting: HashMap::new(),
                places: HashMap::new(),
                reconnects: 0,
                append_latency: Duration::ZERO,
                entries_read: 0,
                read_lag_ms: 0,
            };
            Ok((cluster, log))
        }

        /// Why Redis is unavailable, while it is: `/health` says so with a `503`.
        pub(in crate::server) fn down_reason(&self) -> Option<&str> {
            match &self.state {
                RedisState::Up => None,
                RedisState::Down(reason) => Some(reason),
            }
        }

        /// The cluster's series for `/metrics`.
        pub(in crate::server) fn render_metrics(&self, out: &mut String) {
            use std::fmt::Write as _;
            let series = [
                (
                    names::REDIS_UP,
                    "gauge",
                    "1 while the node is connected to Redis.",
                    u64::from(self.down_reason().is_none()).to_string(),
                ),
                (names::REDIS_RECONNECTS, "counter", "Reconnections to Redis.", self.reconnects.to_string()),
                (
                    names::REDIS_ENTRIES_READ,
                    "counter",
                    "Stream entries read back from Redis.",
                    self.entries_read.to_string(),
                ),
                (
                    names::REDIS_APPENDS_WAITING,
                    "gauge",
                    "Publishes waiting for Redis to answer.",
                    self.waiting.len().to_string(),
                ),
                (
                    names::REDIS_APPEND_SECONDS,
                    "gauge",
                    "Round trip of the last batch of appends to Redis.",
                    format!("{:.6}", self.append_latency.as_secs_f64()),
                ),
                (
                    names::REDIS_READ_LAG_SECONDS,
                    "gauge",
                    "How old the last entry read back was (its id's clock against this node's).",
                    format!("{:.3}", self.read_lag_ms as f64 / 1000.0),
                ),
            ];
            for (name, kind, help, value) in series {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
            }
        }
    }

    /// Stores an event read back from the stream with the id Redis gave it; the log refuses one
    /// that is not above its newest (a repeat), which is logged and skipped.
    fn insert(log: &mut Broadcast, id: u64, event: &Event, now_micros: u64) -> Option<Vec<TopicId>> {
        match log.append(event, id, now_micros) {
            Ok(topic_ids) => Some(topic_ids.to_vec()),
            Err(e) => {
                warn!("stream entry {} skipped: {e}", EntryId::of_event(id));
                None
            }
        }
    }

    impl Loop {
        /// Sends an event to Redis; `waiter` gets its id (or a refusal) when Redis answers. An HTTP
        /// publish's place in its connection's buffer is held until then, so the answers of a
        /// pipelining client stay in order.
        pub(in crate::server) fn cluster_publish(&mut self, waiter: Waiter, event: Event) {
            let Some(cluster) = &mut self.cluster else { return };
            if let Waiter::Http { key, keep_alive, .. } = &waiter {
                let Some(conn) = self.conns.get_mut(*key) else { return };
                // Nothing is queued yet: this only closes the connection after the answer if it
                // is not kept alive, and keeps it from reading further requests then.
                conn.conn.answer(*keep_alive, self.now);
                let at = conn.conn.hold_answer();
                cluster.places.entry(*key).or_default().push_back(at);
            }
            cluster.next_token += 1;
            let token = cluster.next_token;
            cluster.waiting.insert(token, waiter);
            cluster.bridge.append(token, event);
        }

        /// Takes everything the bridge has to say: answers to appends, entries read back (stored
        /// and delivered in stream order), gaps and state changes.
        pub(in crate::server) fn handle_redis(&mut self) {
            loop {
                let Some(cluster) = &mut self.cluster else { return };
                let Some(message) = cluster.bridge.try_recv() else { return };
                match message {
                    FromRedis::Appended { token, result } => {
                        let Some(waiter) = cluster.waiting.remove(&token) else { continue };
                        self.answer_append(waiter, result);
                    }
                    FromRedis::Entries(entries) => {
                        let now = wall_micros();
                        cluster.entries_read += entries.len() as u64;
                        if let Some((id, _)) = entries.last() {
                            cluster.read_lag_ms = (now / 1000).saturating_sub(EntryId::of_event(*id).ms);
                        }
                        for (id, event) in entries {
                            if let Some(topic_ids) = insert(&mut self.log, id, &event, now) {
                                self.metrics.events_published += 1;
                                self.mark_event(&topic_ids, event.is_private());
                            }
                        }
                    }
                    FromRedis::Lost { after, first } => {
                        warn!(
                            "Redis trimmed stream entries after id {after} before this node read them (next is \
                             {first}): ending every stream, so each client resumes and is told of the gap"
                        );
                        self.log.forget_up_to(first.saturating_sub(1));
                        for key in self.conns.keys() {
                            let Some(conn) = self.conns.get_mut(key) else { continue };
                            if matches!(conn.conn.state(), State::Streaming(_)) {
                                match conn.conn.end_stream(&self.log, self.now) {
                                    Ok(()) => self.flush(key),
                                    Err(why) => self.close(key, CloseReason::Dropped(why)),
                                }
                            }
                        }
                    }
                    FromRedis::State(state) => cluster.state = state,
                    FromRedis::Stats { reconnects, append_latency } => {
                        cluster.reconnects = reconnects;
                        cluster.append_latency = append_latency;
                    }
                }
            }
        }

        fn answer_append(&mut self, waiter: Waiter, result: Result<u64, String>) {
            match waiter {
                Waiter::Handle(reply) => {
                    let result = result.map(broadcast::EventId::from_raw).map_err(|reason| {
                        Error::from(PublishError::Storage(format!("event not stored: {reason}")))
                    });
                    // The caller may have given up waiting; the outcome stands either way.
                    let _ = reply.send(result);
                }
                Waiter::Http { key, keep_alive, cors, answer: form } => {
                    let mut answer = Vec::new();
                    match result {
                        Ok(id) => response::text(200, &form.body(id), keep_alive, false, &cors, &mut answer),
                        Err(reason) => {
                            let refusal =
                                Refusal::from(PublishError::Storage(format!("event not stored: {reason}")));
                            self.note_refusal(key, &refusal);
                            response::refusal(&refusal, keep_alive, false, &cors, &mut answer);
                        }
                    }
                    let Some(cluster) = &mut self.cluster else { return };
                    let Some(places) = cluster.places.get_mut(&key) else { return };
                    let Some(at) = places.pop_front() else { return };
                    // The answers held after this one moved along by what went in before them.
                    for later in places.iter_mut() {
                        *later += answer.len();
                    }
                    if places.is_empty() {
                        cluster.places.remove(&key);
                    }
                    let Some(conn) = self.conns.get_mut(key) else {
                        cluster.places.remove(&key);
                        return;
                    };
                    if conn.conn.fill_answer(at, &answer) {
                        // Reading may have paused behind the held answers: resume it.
                        self.read_requests(key);
                    } else {
                        self.flush(key);
                    }
                }
            }
        }
    }
}
