//! Publishing: storing an event, marking its subscribers, and the durable history's group commit.

use super::*;
use crate::broadcast::TopicId;

/// What one loop turn holds for the durable history's commit: publishes, their wire bytes and their
/// topic entries (an event of 64 new topics costs as much bookkeeping as 64 of one).
///
/// Past any of the limits the turn is full and further requests wait for the commit. This bounds a
/// turn's work, and so how long everyone else waits for it, however many publishers pipeline at
/// once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeldTurn {
    events: usize,
    bytes: usize,
    topics: usize,
}

impl HeldTurn {
    pub(super) const MAX_EVENTS: usize = 1024;
    pub(super) const MAX_BYTES: usize = 4 << 20;
    pub(super) const MAX_TOPICS: usize = 4096;

    /// Counts one held publish.
    pub(super) fn add(&mut self, wire_bytes: usize, topics: usize) {
        self.events += 1;
        self.bytes += wire_bytes;
        self.topics += topics;
    }

    /// Whether the turn holds all it may.
    pub(super) fn is_full(&self) -> bool {
        self.events >= Self::MAX_EVENTS || self.bytes >= Self::MAX_BYTES || self.topics >= Self::MAX_TOPICS
    }
}

/// The log's refusal as the publisher's: an event too large for the history, or an id the log
/// refused (not above its newest). With the clock's ids the latter does not happen; an id source
/// elsewhere that went back gets the publish refused like a storage failure, retryable.
fn log_refusal(e: broadcast::PublishError) -> PublishError {
    match e {
        broadcast::PublishError::TooLarge => PublishError::TooLarge,
        e @ broadcast::PublishError::IdNotAbove { .. } => {
            warn!("event not stored: {e}");
            PublishError::Storage(format!("event not stored: {e}"))
        }
    }
}

/// The lists whose streams an event on `topic_ids` may concern: its topics' and the every-topic list.
fn event_lists(topic_ids: &[TopicId]) -> impl Iterator<Item = List> + '_ {
    topic_ids.iter().map(|&t| List::Topic(t)).chain(std::iter::once(List::All))
}

impl Loop {
    /// Stores an event and marks the streams of its topics; they are written at the end of the turn.
    ///
    /// With a syncing durable history the event is held until the turn's commit, and so is the
    /// marking: a stream written before the commit could not see the event, and must be marked again
    /// when it becomes visible.
    pub(super) fn publish(&mut self, event: &Event) -> Result<broadcast::EventId, PublishError> {
        let topics: Vec<&str> = event.topics().iter().map(String::as_str).collect();
        let now = wall_micros();
        let id = ClockIds.next(self.log.newest_id(), now);
        // Checked before the record goes to disk: a refused event is stored nowhere.
        self.log.check_id(id).map_err(log_refusal)?;
        let encoded = self.log.encode(event, id).map_err(log_refusal)?;
        let wire_len = encoded.wire_len();
        let mut held = false;
        if let Some(store) = &mut self.store {
            if let Err(e) = store.append(&Record { id, event }) {
                warn!("event not stored: writing the history failed: {e}");
                return Err(PublishError::Storage(format!(
                    "event not stored: writing the history failed: {e}"
                )));
            }
            if store.fsync() != Fsync::Never {
                // Subscribers see it only once it is on disk: a crash must not leave delivered
                // events that a restart does not know.
                self.log.hold();
                self.held.add(wire_len, topics.len());
                held = true;
            }
        }
        let id = encoded.id();
        let topic_ids = self.log.insert(&topics, encoded, now).map_err(log_refusal)?.to_vec();
        self.metrics.events_published += 1;
        if held {
            self.held_lists.extend(event_lists(&topic_ids));
        } else {
            self.mark_event(&topic_ids, event.is_private());
        }
        trace!("published {id} to {topics:?}");
        Ok(id)
    }

    /// Marks the streams that may read an event just made visible on `topic_ids`: those on its
    /// topics' lists and the every-topic ones. A private event passes over the streams that may
    /// read no private event (anonymous ones): marked, each would walk to the event and write
    /// nothing, for every private update on a topic many anonymous subscribers follow.
    pub(super) fn mark_event(&mut self, topic_ids: &[TopicId], private: bool) {
        for list in event_lists(topic_ids) {
            self.mark_list(list, private);
        }
    }

    /// Marks the streams on `list` to be written at the end of the turn (with `private`, only
    /// those that may read some private event).
    pub(super) fn mark_list(&mut self, list: List, private: bool) {
        for &sub in self.registry.subscribers(list) {
            if let Some(conn) = self.conns.get_mut(sub) {
                let reads_no_private =
                    || conn.conn.stream().is_some_and(|s| s.sub.rights() == broadcast::Rights::Public);
                if !(conn.dirty || private && reads_no_private()) {
                    conn.dirty = true;
                    self.dirty.push_back(sub);
                }
            }
        }
    }

    pub(super) fn handle_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Publish(event, reply) if self.cluster.is_some() => {
                    self.cluster_publish(cluster::Waiter::Handle(reply), event)
                }
                Command::Publish(event, reply) => match self.publish(&event) {
                    Ok(id) if self.defers_acks() => self.pending_acks.push(Ack::Handle { reply, id }),
                    result => {
                        // The caller may have given up waiting; the outcome stands either way.
                        let _ = reply.send(result.map_err(Error::from));
                    }
                },
                #[cfg(feature = "tls")]
                Command::Tls(config) => {
                    self.tls = Some(config);
                    info!("TLS certificate reloaded: new handshakes use it, open connections keep theirs");
                }
            }
        }
    }

    /// Whether publishes are answered only after the turn's commit (a durable history that syncs).
    pub(super) fn defers_acks(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.fsync() != Fsync::Never)
    }

    /// Ends the turn for the durable history: one sync for every record written in it (group
    /// commit), then the held answers and the events go out. If the sync fails the turn's events are
    /// dropped from memory as well as disk and their publishers get `503`.
    pub(super) fn commit_turn(&mut self) {
        self.expire_history();
        let Some(store) = &mut self.store else { return };
        let result = store.commit();
        store.retain(self.log.oldest_id());
        if self.pending_acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.pending_acks);
        self.held = HeldTurn::default();
        match result {
            Ok(()) => {
                self.metrics.history_commits += 1;
                self.log.commit();
                // Every stream of the turn's events, private or not: the turn's lists are a set.
                for list in std::mem::take(&mut self.held_lists) {
                    self.mark_list(list, false);
                }
                for ack in acks {
                    match ack {
                        Ack::Http { key, .. } => {
                            if let Some(conn) = self.conns.get_mut(key) {
                                if conn.conn.release_answer() {
                                    // Reading may have paused behind the held answers: resume it.
                                    self.read_requests(key);
                                } else {
                                    self.flush(key);
                                }
                            }
                        }
                        Ack::Handle { reply, id } => {
                            let _ = reply.send(Ok(id));
                        }
                    }
                }
            }
            Err(e) => {
                error!(
                    "syncing the history failed: {e}; dropping this turn's {}",
                    count(acks.len(), "event")
                );
                self.log.rollback();
                self.held_lists.clear();
                let failure =
                    PublishError::Storage(format!("event not stored: syncing the history failed: {e}"));
                let refusal = Refusal::from(failure.clone());
                for ack in acks {
                    match ack {
                        Ack::Http { key, out_start } => {
                            let Some(conn) = self.conns.get_mut(key) else { continue };
                            // Everything queued from the first held answer on is replaced: one 503, and
                            // the connection closes so pipelined requests are not left in doubt.
                            if !conn.conn.fail_held_answers(out_start, &refusal, self.now) {
                                continue; // already answered by an earlier ack of the same connection
                            }
                            self.metrics.refused(refusal.status());
                            self.flush(key);
                        }
                        Ack::Handle { reply, .. } => {
                            let _ = reply.send(Err(Error::from(failure.clone())));
                        }
                    }
                }
            }
        }
        // Requests that waited for this commit, first come first served, until the next turn is
        // full again; what they publish is held for the next commit. A connection that fills it
        // goes to the back of the queue, so one busy publisher cannot keep the others (or a
        // `/health` probe) waiting.
        while !self.held.is_full() {
            let Some(key) = self.resume_after_commit.pop_front() else { break };
            if let Some(conn) = self.conns.get_mut(key) {
                conn.queued_for_commit = false;
                self.read_requests(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeldTurn;

    #[test]
    fn a_turn_is_full_at_any_of_its_limits() {
        let mut turn = HeldTurn::default();
        assert!(!turn.is_full());
        for _ in 0..HeldTurn::MAX_EVENTS - 1 {
            turn.add(1, 1);
        }
        assert!(!turn.is_full(), "one event short");
        turn.add(1, 1);
        assert!(turn.is_full(), "events");

        let mut turn = HeldTurn::default();
        turn.add(HeldTurn::MAX_BYTES - 1, 1);
        assert!(!turn.is_full(), "one byte short");
        turn.add(1, 1);
        assert!(turn.is_full(), "bytes");

        let mut turn = HeldTurn::default();
        turn.add(100, HeldTurn::MAX_TOPICS - 1);
        assert!(!turn.is_full(), "one topic short");
        turn.add(100, 1);
        assert!(turn.is_full(), "topic entries");
    }
}
