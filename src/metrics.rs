//! Counters and gauges, rendered in the Prometheus text format for `GET /metrics`.

use std::fmt::Write as _;

/// Names of the series, in one place so the docs, the tests and the renderer agree.
pub mod names {
    /// Open connections of every kind.
    pub const CONNECTIONS: &str = "ssed_connections";
    /// Open event streams.
    pub const SUBSCRIBERS: &str = "ssed_subscribers";
    /// Events stored in the history since start.
    pub const EVENTS_PUBLISHED: &str = "ssed_events_published_total";
    /// Bytes written to sockets since start.
    pub const BYTES_SENT: &str = "ssed_bytes_sent_total";
    /// Streams the server ended early, by reason.
    pub const SUBSCRIBERS_DROPPED: &str = "ssed_subscribers_dropped_total";
    /// Resumes that reached older than the history holds.
    pub const RESUME_GAPS: &str = "ssed_resume_gaps_total";
    /// Events in the history.
    pub const HISTORY_EVENTS: &str = "ssed_history_events";
    /// Wire bytes in the history.
    pub const HISTORY_BYTES: &str = "ssed_history_bytes";
    /// Memory of the history's topic index (capped by `--history-bytes` on its own).
    pub const HISTORY_INDEX_BYTES: &str = "ssed_history_index_bytes";
    /// Group commits of held publishes to the durable history.
    pub const HISTORY_COMMITS: &str = "ssed_history_commits_total";
    /// Connections accepted since start.
    pub const CONNECTIONS_ACCEPTED: &str = "ssed_connections_accepted_total";
    /// Requests refused, by status.
    pub const REQUESTS_REFUSED: &str = "ssed_requests_refused_total";
    /// Connections turned away at `--max-connections`.
    pub const CONNECTIONS_REJECTED: &str = "ssed_connections_rejected_total";
    /// JWT signatures verified (a cached token costs none).
    #[cfg(feature = "mercure")]
    pub const JWT_SIGNATURE_CHECKS: &str = "ssed_jwt_signature_checks_total";
    /// Cluster mode: 1 while connected to Redis.
    #[cfg(feature = "cluster")]
    pub const REDIS_UP: &str = "ssed_redis_up";
    /// Cluster mode: reconnections to Redis.
    #[cfg(feature = "cluster")]
    pub const REDIS_RECONNECTS: &str = "ssed_redis_reconnects_total";
    /// Cluster mode: stream entries read back.
    #[cfg(feature = "cluster")]
    pub const REDIS_ENTRIES_READ: &str = "ssed_redis_entries_read_total";
    /// Cluster mode: publishes waiting for Redis' answer.
    #[cfg(feature = "cluster")]
    pub const REDIS_APPENDS_WAITING: &str = "ssed_redis_appends_waiting";
    /// Cluster mode: round trip of the last batch of appends.
    #[cfg(feature = "cluster")]
    pub const REDIS_APPEND_SECONDS: &str = "ssed_redis_append_seconds";
    /// Cluster mode: age of the last entry read back (catch-up lag).
    #[cfg(feature = "cluster")]
    pub const REDIS_READ_LAG_SECONDS: &str = "ssed_redis_read_lag_seconds";
}

/// Why a stream was ended by the server rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its backlog passed `--max-lag`.
    Lag,
    /// An event it still needed left the history.
    Evicted,
    /// `--max-lifetime` ran out.
    Lifetime,
}

impl DropReason {
    const ALL: [DropReason; 3] = [DropReason::Lag, DropReason::Evicted, DropReason::Lifetime];

    fn label(self) -> &'static str {
        match self {
            DropReason::Lag => "lag",
            DropReason::Evicted => "evicted",
            DropReason::Lifetime => "lifetime",
        }
    }
}

/// The counters the event loop keeps; gauges are passed in when rendering.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Events stored.
    pub events_published: u64,
    /// Bytes written to sockets.
    pub bytes_sent: u64,
    /// Streams ended by the server, indexed like `DropReason::ALL`.
    dropped: [u64; 3],
    /// Resumes with a gap.
    pub resume_gaps: u64,
    /// Group commits that made held publishes durable and visible.
    pub history_commits: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections turned away at capacity.
    pub connections_rejected: u64,
    /// Refusals by status code, few distinct codes.
    refused: Vec<(u16, u64)>,
}

/// The gauges read from the server at render time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Open connections.
    pub connections: usize,
    /// Open streams.
    pub subscribers: usize,
    /// Events in the history.
    pub history_events: usize,
    /// Bytes in the history.
    pub history_bytes: usize,
    /// Memory of the history's topic index.
    pub history_index_bytes: usize,
}

impl Metrics {
    /// Counts a stream ended for `reason`.
    pub fn dropped(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    /// Counts a refused request.
    pub fn refused(&mut self, status: u16) {
        match self.refused.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => {
                self.refused.push((status, 1));
                self.refused.sort_unstable();
            }
        }
    }

    /// Renders every series in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        use names::*;
        let mut out = String::with_capacity(2048);
        let mut series = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| [(String::new(), v)];
        series(CONNECTIONS, "gauge", "Open connections.", &one(gauges.connections as u64));
        series(SUBSCRIBERS, "gauge", "Open event streams.", &one(gauges.subscribers as u64));
        series(EVENTS_PUBLISHED, "counter", "Events stored in the history.", &one(self.events_published));
        series(BYTES_SENT, "counter", "Bytes written to sockets.", &one(self.bytes_sent));
        let dropped: Vec<(String, u64)> = DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), self.dropped[*r as usize]))
            .collect();
        series(SUBSCRIBERS_DROPPED, "counter", "Streams ended by the server, by reason.", &dropped);
        series(
            RESUME_GAPS,
            "counter",
            "Resumes that reached older than the history.",
            &one(self.resume_gaps),
        );
        series(HISTORY_EVENTS, "gauge", "Events in the history.", &one(gauges.history_events as u64));
        series(HISTORY_BYTES, "gauge", "Wire bytes in the history.", &one(gauges.history_bytes as u64));
        series(
            HISTORY_INDEX_BYTES,
            "gauge",
            "Memory of the history's topic index.",
            &one(gauges.history_index_bytes as u64),
        );
        series(
            HISTORY_COMMITS,
            "counter",
            "Group commits of held publishes to the durable history.",
            &one(self.history_commits),
        );
        series(CONNECTIONS_ACCEPTED, "counter", "Connections accepted.", &one(self.connections_accepted));
        series(
            CONNECTIONS_REJECTED,
            "counter",
            "Connections turned away at --max-connections.",
            &one(self.connections_rejected),
        );
        let refused: Vec<(String, u64)> =
            self.refused.iter().map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n)).collect();
        series(REQUESTS_REFUSED, "counter", "Requests refused, by status.", &refused);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_contract_series() {
        let mut metrics = Metrics { events_published: 3, history_commits: 5, ..Metrics::default() };
        metrics.dropped(DropReason::Lag);
        metrics.refused(404);
        metrics.refused(404);
        let text = metrics.render(&Gauges {
            connections: 2,
            subscribers: 1,
            history_events: 3,
            history_bytes: 99,
            history_index_bytes: 7,
        });
        for line in [
            "ssed_connections 2",
            "ssed_subscribers 1",
            "ssed_events_published_total 3",
            "ssed_bytes_sent_total 0",
            "ssed_subscribers_dropped_total{reason=\"lag\"} 1",
            "ssed_subscribers_dropped_total{reason=\"evicted\"} 0",
            "ssed_resume_gaps_total 0",
            "ssed_history_events 3",
            "ssed_history_bytes 99",
            "ssed_history_index_bytes 7",
            "ssed_history_commits_total 5",
            "ssed_requests_refused_total{status=\"404\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
