//! Validated server settings: the same knobs as the command-line flags, with no I/O.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::store::Fsync;

/// Default listen address: loopback only, so a server started by hand is not exposed by accident.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// Default number of events kept for resume.
pub const DEFAULT_HISTORY: usize = 10_000;
/// Default cap on the bytes those events hold.
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// Default quiet time on a stream before a comment line is sent.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default `retry:` sent at the start of each stream.
pub const DEFAULT_RETRY: Duration = Duration::from_millis(3000);
/// Default cap on open connections (further capped by the descriptor limit at start).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default cap on a publish body.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Default backlog after which a subscriber is disconnected.
pub const DEFAULT_MAX_LAG: usize = 1024 * 1024;
/// Default time allowed for a request head (and then for its body) to arrive.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an idle keep-alive connection is held between requests (nginx uses 75 s).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a graceful shutdown waits for buffered bytes to drain.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything that shapes a server's behaviour, as one value.
///
/// Build it with [`Config::default`] and change the fields you need; [`Server`](crate::Server) checks it
/// with [`Config::validate`] before binding, so a bad combination is refused at start, not at the
/// first client.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to bind when no listener is handed over.
    pub listen: SocketAddr,
    /// Events kept for resume (at least 1).
    pub history: usize,
    /// Cap on the wire bytes the kept events hold; the oldest are dropped first.
    pub history_bytes: usize,
    /// Quiet time after which a stream gets a comment line; zero disables heartbeats.
    pub heartbeat: Duration,
    /// The `retry:` reconnection delay announced at the start of every stream.
    pub retry: Duration,
    /// Connections held open at once; beyond it a client is answered at once and closed.
    pub max_connections: usize,
    /// Largest publish body accepted (decoded size); larger ones get `413`.
    pub max_body: usize,
    /// Unsent bytes a subscriber may fall behind before it is disconnected; at least `2 * max_body`.
    pub max_lag: usize,
    /// Time a request head may take to arrive (and then its body); late ones get `408`.
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is held open between requests.
    pub keep_alive_timeout: Duration,
    /// When set, publishing needs `Authorization: Bearer <token>`.
    pub publish_token: Option<String>,
    /// When set, subscribing needs that bearer token or the cookie `ssed_token=<token>`.
    pub subscribe_token: Option<String>,
    /// Origins allowed by CORS; `"*"` allows any origin without credentials. Empty disables CORS.
    pub cors_origins: Vec<String>,
    /// When non-zero, each stream ends cleanly after this long, ±20% at random.
    pub max_lifetime: Duration,
    /// How long a graceful shutdown waits for buffered bytes to reach clients.
    pub shutdown_timeout: Duration,
    /// When set, the history is also kept in segment files here and survives restarts and crashes.
    pub data_dir: Option<PathBuf>,
    /// When a publish to the durable history is answered (only with `data_dir`).
    pub fsync: Fsync,
    /// When non-zero, events older than this leave the history (and the disk).
    pub history_age: Duration,
}

/// Tokens are shown as `<redacted>`, so a program that logs its configuration does not leak them.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |token: &Option<String>| token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("history", &self.history)
            .field("history_bytes", &self.history_bytes)
            .field("heartbeat", &self.heartbeat)
            .field("retry", &self.retry)
            .field("max_connections", &self.max_connections)
            .field("max_body", &self.max_body)
            .field("max_lag", &self.max_lag)
            .field("header_timeout", &self.header_timeout)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("publish_token", &redact(&self.publish_token))
            .field("subscribe_token", &redact(&self.subscribe_token))
            .field("cors_origins", &self.cors_origins)
            .field("max_lifetime", &self.max_lifetime)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("data_dir", &self.data_dir)
            .field("fsync", &self.fsync)
            .field("history_age", &self.history_age)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            history: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
            heartbeat: DEFAULT_HEARTBEAT,
            retry: DEFAULT_RETRY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_body: DEFAULT_MAX_BODY,
            max_lag: DEFAULT_MAX_LAG,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            publish_token: None,
            subscribe_token: None,
            cors_origins: Vec::new(),
            max_lifetime: Duration::ZERO,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            data_dir: None,
            fsync: Fsync::default(),
            history_age: Duration::ZERO,
        }
    }
}

impl Config {
    /// Checks the settings against each other and against their ranges.
    ///
    /// The rules are the contract's: `--max-lag` must be at least twice `--max-body` (otherwise one
    /// large event could disconnect every subscriber that has not yet taken it), the history holds at
    /// least one event and one maximal body, and the timeouts are non-zero.
    pub fn validate(&self) -> Result<(), Error> {
        if self.history == 0 {
            return Err(Error::config("--history must be at least 1"));
        }
        if self.max_body == 0 {
            return Err(Error::config("--max-body must be at least 1"));
        }
        if self.max_lag < self.max_body.saturating_mul(2) {
            return Err(Error::config(format!(
                "--max-lag ({}) must be at least twice --max-body ({})",
                self.max_lag, self.max_body
            )));
        }
        if self.history_bytes < self.max_body.saturating_mul(2) {
            return Err(Error::config(format!(
                "--history-bytes ({}) must be at least twice --max-body ({}) so the largest event fits",
                self.history_bytes, self.max_body
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::config("--max-connections must be at least 1"));
        }
        if self.header_timeout.is_zero() {
            return Err(Error::config("--header-timeout must be at least 1 second"));
        }
        if self.keep_alive_timeout.is_zero() {
            return Err(Error::config("--keep-alive-timeout must be at least 1 second"));
        }
        if self.retry.as_millis() > u128::from(u32::MAX) {
            return Err(Error::config("--retry-ms is too large"));
        }
        for token in [&self.publish_token, &self.subscribe_token].into_iter().flatten() {
            if token.is_empty() || token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err(Error::config("tokens must be non-empty printable ASCII without spaces"));
            }
        }
        for origin in &self.cors_origins {
            if origin.is_empty() || origin.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(Error::config(format!("--cors-origin {origin:?} is not a valid origin")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn max_lag_must_cover_two_bodies() {
        let config = Config { max_body: 1000, max_lag: 1999, ..Config::default() };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("--max-lag"), "{err}");
        Config { max_body: 1000, max_lag: 2000, ..Config::default() }.validate().unwrap();
    }

    #[test]
    fn debug_output_hides_tokens() {
        let config = Config {
            publish_token: Some("s3cret-p".into()),
            subscribe_token: Some("s3cret-s".into()),
            ..Config::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn zero_history_is_refused() {
        assert!(Config { history: 0, ..Config::default() }.validate().is_err());
    }

    #[test]
    fn tokens_with_spaces_are_refused() {
        let config = Config { publish_token: Some("a b".into()), ..Config::default() };
        assert!(config.validate().is_err());
    }
}
