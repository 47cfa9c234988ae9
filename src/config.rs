//! Validated server settings: the same knobs as the command-line flags, with no I/O.
//!
//! The defaults below are the only place they are written: `Config::default` is built from them, and
//! `ssed --help` shows what `Config::default` holds (src/cli/main.rs derives each flag's default from
//! the field it sets).

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
/// Default key of the Redis stream the nodes of a cluster share.
pub const DEFAULT_REDIS_KEY: &str = "ssed:events";
/// The algorithm of a JWT key when none is named.
pub const DEFAULT_JWT_ALG: &str = "HS256";
/// The hub's public URL when none is configured (the Mercure.rocks hub's development default).
pub const DEFAULT_HUB_URL: &str = "https://localhost/.well-known/mercure";

// The ceilings below keep every setting far from where arithmetic on it could overflow (a deadline
// `now + timeout`, a jittered lifetime in milliseconds, `max_connections` plus its overflow allowance),
// while staying well above anything a deployment needs. `Config::validate` and the `ssed` flags
// both enforce them, and `ssed --help` shows them.

/// Longest `heartbeat`, `header_timeout`, `keep_alive_timeout` and `shutdown_timeout`: a day.
pub const TIMEOUT_CEILING: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest `max_lifetime` and `history_age`: a year of 365 days.
pub const AGE_CEILING: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Longest `retry`: `u32::MAX` milliseconds (about 49.7 days), what an `EventSource` can take.
pub const RETRY_CEILING: Duration = Duration::from_millis(u32::MAX as u64);
/// Most events `history` may keep: a hundred million.
pub const HISTORY_CEILING: usize = 100_000_000;
/// Most connections `max_connections` may allow: a hundred million (the open-file limit caps it further).
pub const CONNECTIONS_CEILING: usize = 100_000_000;
/// Largest `max_body`: 1 GiB.
pub const BODY_CEILING: usize = 1 << 30;
/// Largest `history_bytes` and `max_lag`: 1 TiB.
pub const BYTES_CEILING: u64 = 1 << 40;

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
    /// Cluster mode: `redis://host:port/db` of the Redis (or Valkey) whose stream this node shares
    /// with the others. Publishes go through it and every node delivers what it reads back.
    pub redis: Option<String>,
    /// The key of that stream.
    pub redis_key: String,
    /// About how many entries Redis keeps in the stream (`XADD MAXLEN ~`); 0 means `history`.
    pub redis_maxlen: usize,
    /// Bind with `SO_REUSEPORT`, so several processes (one per core) share the port; cluster mode
    /// only, since each process has a log of its own.
    pub reuse_port: bool,
    /// JWT verification key for publishers and subscribers alike (feature `mercure`): the secret
    /// for the HS algorithms, otherwise a public key as PEM text or the path of a PEM file. Setting
    /// any JWT key turns per-topic rights on, for `/events` too.
    pub jwt_key: Option<String>,
    /// The algorithm of `jwt_key`, the only one its tokens may use (`HS256`, `RS256`, `ES256`,
    /// `EdDSA`, ...).
    pub jwt_alg: String,
    /// A key for publishers' tokens only, beside or instead of `jwt_key`.
    pub publisher_jwt_key: Option<String>,
    /// The algorithm of `publisher_jwt_key`.
    pub publisher_jwt_alg: String,
    /// A key for subscribers' tokens only, beside or instead of `jwt_key`.
    pub subscriber_jwt_key: Option<String>,
    /// The algorithm of `subscriber_jwt_key`.
    pub subscriber_jwt_alg: String,
    /// The `iss` values a current-revision token may carry; none given: `https://localhost`, the
    /// Mercure.rocks hub's development default.
    pub jwt_issuers: Vec<String>,
    /// The `aud` values accepted (the hub's resource identifier); none given: the hub's URL under
    /// the request's `Host`, `https://HOST/.well-known/mercure` (or `http://`).
    pub jwt_audiences: Vec<String>,
    /// The hub's public URL: relative topics and URL patterns are resolved against it, and topics
    /// under its path are reserved to the hub.
    pub hub_url: String,
    /// Refuse subscribers that present no token (by default they get the public updates).
    pub deny_anonymous: bool,
    /// Refuse pre-standardization tokens (the `mercure` claim), which are accepted by default so
    /// that applications written for older hubs work unchanged.
    pub no_legacy_tokens: bool,
    /// Accept a token in the `authorization` query parameter, as pre-standardization hubs did
    /// (off by default: tokens in URLs end up in logs).
    pub legacy_query_token: bool,
    /// Another cookie name to take a token from, before `__Secure-mercure_access_token` and
    /// `mercureAuthorization`.
    pub jwt_cookie: Option<String>,
    /// Origins whose pages may publish with a cookie token (checked against `Origin`/`Referer`
    /// against cross-site request forgery); none: a cookie never authorizes a publish.
    pub publish_origins: Vec<String>,
    /// TLS (feature `tls`): the PEM certificate chain, leaf first. With it, the listener serves TLS,
    /// or, with `tls_listen`, a second listener does. Read again on reload (`SIGHUP`).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert` (PKCS#8, RSA or EC).
    pub tls_key: Option<PathBuf>,
    /// A second address to serve TLS on, beside the plain `listen`; unset: `listen` serves TLS.
    pub tls_listen: Option<SocketAddr>,
}

/// Tokens are shown as `<redacted>`, so a program that logs its configuration does not leak them.
/// The pattern names every field, so a field added to `Config` must be added here too (and a secret
/// one redacted) before it compiles.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Config {
            listen,
            history,
            history_bytes,
            heartbeat,
            retry,
            max_connections,
            max_body,
            max_lag,
            header_timeout,
            keep_alive_timeout,
            publish_token,
            subscribe_token,
            cors_origins,
            max_lifetime,
            shutdown_timeout,
            data_dir,
            fsync,
            history_age,
            redis,
            redis_key,
            redis_maxlen,
            reuse_port,
            jwt_key,
            jwt_alg,
            publisher_jwt_key,
            publisher_jwt_alg,
            subscriber_jwt_key,
            subscriber_jwt_alg,
            jwt_issuers,
            jwt_audiences,
            hub_url,
            deny_anonymous,
            no_legacy_tokens,
            legacy_query_token,
            jwt_cookie,
            publish_origins,
            tls_cert,
            tls_key,
            tls_listen,
        } = self;
        let redact = |token: &Option<String>| token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("listen", listen)
            .field("history", history)
            .field("history_bytes", history_bytes)
            .field("heartbeat", heartbeat)
            .field("retry", retry)
            .field("max_connections", max_connections)
            .field("max_body", max_body)
            .field("max_lag", max_lag)
            .field("header_timeout", header_timeout)
            .field("keep_alive_timeout", keep_alive_timeout)
            .field("publish_token", &redact(publish_token))
            .field("subscribe_token", &redact(subscribe_token))
            .field("cors_origins", cors_origins)
            .field("max_lifetime", max_lifetime)
            .field("shutdown_timeout", shutdown_timeout)
            .field("data_dir", data_dir)
            .field("fsync", fsync)
            .field("history_age", history_age)
            // A URL may carry a password.
            .field("redis", &redis.as_ref().map(|url| redact_url(url)))
            .field("redis_key", redis_key)
            .field("redis_maxlen", redis_maxlen)
            .field("reuse_port", reuse_port)
            // An HS secret is a secret; a public key is not, but one field cannot tell.
            .field("jwt_key", &redact(jwt_key))
            .field("jwt_alg", jwt_alg)
            .field("publisher_jwt_key", &redact(publisher_jwt_key))
            .field("publisher_jwt_alg", publisher_jwt_alg)
            .field("subscriber_jwt_key", &redact(subscriber_jwt_key))
            .field("subscriber_jwt_alg", subscriber_jwt_alg)
            .field("jwt_issuers", jwt_issuers)
            .field("jwt_audiences", jwt_audiences)
            .field("hub_url", hub_url)
            .field("deny_anonymous", deny_anonymous)
            .field("no_legacy_tokens", no_legacy_tokens)
            .field("legacy_query_token", legacy_query_token)
            .field("jwt_cookie", jwt_cookie)
            .field("publish_origins", publish_origins)
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("tls_listen", tls_listen)
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
            redis: None,
            redis_key: DEFAULT_REDIS_KEY.to_string(),
            redis_maxlen: 0,
            reuse_port: false,
            jwt_key: None,
            jwt_alg: DEFAULT_JWT_ALG.to_string(),
            publisher_jwt_key: None,
            publisher_jwt_alg: DEFAULT_JWT_ALG.to_string(),
            subscriber_jwt_key: None,
            subscriber_jwt_alg: DEFAULT_JWT_ALG.to_string(),
            jwt_issuers: Vec::new(),
            jwt_audiences: Vec::new(),
            hub_url: DEFAULT_HUB_URL.to_string(),
            deny_anonymous: false,
            no_legacy_tokens: false,
            legacy_query_token: false,
            jwt_cookie: None,
            publish_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_listen: None,
        }
    }
}

/// The URL with its password, if any, hidden (`redis://user:secret@host/0` as
/// `redis://user:***@host/0`), for logs, errors and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            if let Some((user, _)) = authority[..at].split_once(':') {
                return format!("{scheme}://{user}:***{}", &rest[at..]);
            }
        }
    }
    url.to_string()
}

impl Config {
    /// Checks the settings against each other and against their ranges.
    ///
    /// The rules are the contract's: `--max-lag` must be at least twice `--max-body` (otherwise one
    /// large event could disconnect every subscriber that has not yet taken it), the history holds at
    /// least one event and one maximal body, and the timeouts are non-zero. Every number also stays
    /// under its ceiling ([`TIMEOUT_CEILING`], [`AGE_CEILING`], [`BYTES_CEILING`], ...), so no
    /// deadline or size computed from it can overflow, and every CORS origin has the form a browser
    /// sends (`scheme://host[:port]`) or is `*`.
    pub fn validate(&self) -> Result<(), Error> {
        check_count("--history", self.history, 1, HISTORY_CEILING, "events")?;
        check_count("--max-body", self.max_body, 1, BODY_CEILING, "bytes")?;
        check_bytes("--history-bytes", self.history_bytes)?;
        check_bytes("--max-lag", self.max_lag)?;
        check_count("--max-connections", self.max_connections, 1, CONNECTIONS_CEILING, "connections")?;
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
        if self.header_timeout.is_zero() {
            return Err(Error::config("--header-timeout must be at least 1 second"));
        }
        if self.keep_alive_timeout.is_zero() {
            return Err(Error::config("--keep-alive-timeout must be at least 1 second"));
        }
        check_duration("--heartbeat", self.heartbeat, TIMEOUT_CEILING)?;
        check_duration("--header-timeout", self.header_timeout, TIMEOUT_CEILING)?;
        check_duration("--keep-alive-timeout", self.keep_alive_timeout, TIMEOUT_CEILING)?;
        check_duration("--shutdown-timeout", self.shutdown_timeout, TIMEOUT_CEILING)?;
        check_duration("--max-lifetime", self.max_lifetime, AGE_CEILING)?;
        check_duration("--history-age", self.history_age, AGE_CEILING)?;
        if self.retry > RETRY_CEILING {
            return Err(Error::config(format!(
                "--retry-ms ({}) is out of range: 0 to {} milliseconds",
                self.retry.as_millis(),
                RETRY_CEILING.as_millis()
            )));
        }
        for token in [&self.publish_token, &self.subscribe_token].into_iter().flatten() {
            if token.is_empty() || token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err(Error::config("tokens must be non-empty printable ASCII without spaces"));
            }
        }
        self.validate_jwt()?;
        self.validate_cluster()?;
        self.validate_tls()?;
        for origin in &self.cors_origins {
            if let Err(problem) = check_origin(origin) {
                return Err(Error::config(format!(
                    "--cors-origin {origin:?} is not an origin: {problem}; a browser sends scheme://host[:port] \
                     in lowercase, such as https://app.example.com or http://localhost:3000, with no path and \
                     no trailing slash (or use * for any origin)"
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The entries Redis keeps: `redis_maxlen`, or `history` when it is 0.
    pub fn redis_entries(&self) -> usize {
        if self.redis_maxlen == 0 {
            self.history
        } else {
            self.redis_maxlen
        }
    }

    /// Whether any JWT key is configured, which turns per-topic rights on.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt_key.is_some() || self.publisher_jwt_key.is_some() || self.subscriber_jwt_key.is_some()
    }

    /// The JWT settings this build can act on; whether the keys themselves load is checked when
    /// the server builds its verifier (it reads their files).
    fn validate_jwt(&self) -> Result<(), Error> {
        if self.jwt_enabled() && !cfg!(feature = "mercure") {
            return Err(Error::config(
                "--jwt-key: this ssed was built without JWT authorization (the cargo feature `mercure`)",
            ));
        }
        if self.jwt_enabled() && (self.publish_token.is_some() || self.subscribe_token.is_some()) {
            return Err(Error::config(
                "--publish-token/--subscribe-token and JWT keys cannot be used together: with a JWT key, \
                 tokens are JWTs and rights are per topic",
            ));
        }
        Ok(())
    }

    /// The TLS settings: a certificate and its key together, a TLS listener only with them, and a
    /// build that has TLS. The files themselves are read when the server starts.
    fn validate_tls(&self) -> Result<(), Error> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(Error::config("--tls-cert needs --tls-key (the certificate's private key)"))
            }
            (None, Some(_)) => {
                return Err(Error::config("--tls-key needs --tls-cert (the certificate chain)"))
            }
            (None, None) if self.tls_listen.is_some() => {
                return Err(Error::config("--tls-listen needs --tls-cert and --tls-key"))
            }
            (None, None) => return Ok(()),
            (Some(_), Some(_)) => {}
        }
        if self.tls_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(Error::config(
                "--tls-listen must differ from --listen (leave --tls-listen unset to serve TLS on --listen)",
            ));
        }
        if !cfg!(feature = "tls") {
            return Err(Error::config(
                "--tls-cert: this ssed was built without TLS (the cargo feature `tls`)",
            ));
        }
        Ok(())
    }

    /// The cluster settings: a URL this build can use, not beside `--data-dir`, and `--reuse-port`
    /// only with it.
    fn validate_cluster(&self) -> Result<(), Error> {
        check_count("--redis-maxlen", self.redis_maxlen, 0, HISTORY_CEILING, "entries")?;
        if self.redis_key.is_empty() {
            return Err(Error::config("--redis-key must not be empty"));
        }
        let Some(url) = &self.redis else {
            if self.reuse_port {
                return Err(Error::config(
                    "--reuse-port needs --redis: processes sharing a port must share one log, or a client \
                     that reconnects to another process would miss events or get them twice",
                ));
            }
            return Ok(());
        };
        if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
            return Err(Error::config(format!(
                "--redis {:?} is not a Redis URL such as redis://127.0.0.1:6379/0",
                redact_url(url)
            )));
        }
        if self.data_dir.is_some() {
            return Err(Error::config(
                "--data-dir and --redis cannot be used together: in cluster mode Redis is the durable \
                 history (what survives a crash is what its persistence keeps: appendonly yes, appendfsync)",
            ));
        }
        if !cfg!(feature = "cluster") {
            return Err(Error::config(
                "--redis: this ssed was built without cluster mode (the cargo feature `cluster`)",
            ));
        }
        Ok(())
    }
}

fn check_count(flag: &str, value: usize, min: usize, max: usize, unit: &str) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::config(format!("{flag} ({value}) is out of range: {min} to {max} {unit}")))
    }
}

fn check_bytes(flag: &str, value: usize) -> Result<(), Error> {
    if value as u64 <= BYTES_CEILING {
        Ok(())
    } else {
        Err(Error::config(format!("{flag} ({value}) is out of range: at most {BYTES_CEILING} bytes (1 TiB)")))
    }
}

fn check_duration(flag: &str, value: Duration, max: Duration) -> Result<(), Error> {
    if value <= max {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{flag} ({value:?}) is out of range: 0 to {} seconds ({})",
            max.as_secs(),
            if max == AGE_CEILING { "a year" } else { "a day" }
        )))
    }
}

/// Whether `origin` could ever equal a browser's `Origin` header, which is the serialized origin of
/// the WHATWG URL Standard: lowercase `scheme://host`, then `:port` only when the port is not the
/// scheme's default; no path, no trailing slash, no user, IDN hosts in their punycode form. The
/// comparison in `http::response` is exact, so anything else would silently never match.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Ok(());
    }
    let Some((scheme, rest)) = origin.split_once("://") else { return Err("it has no scheme://") };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err("its scheme is not lowercase letters");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("it has a path, query or trailing slash");
    }
    if rest.contains('@') {
        return Err("it has a user name");
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let Some((address, after)) = v6.split_once(']') else { return Err("its IPv6 address has no ]") };
            if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err("its IPv6 address is malformed");
            }
            if address.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err("its host is not lowercase");
            }
            match after {
                "" => (address, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (address, Some(port)),
                    None => return Err("it has text after its IPv6 address"),
                },
            }
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return Err("it has no host");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("its host is not lowercase");
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
        return Err("its host has characters a browser would not send (use the punycode form of a name)");
    }
    if let Some(port) = port {
        let number = match port.parse::<u16>() {
            Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) && !port.starts_with('0') => n,
            _ => return Err("its port is not a number from 1 to 65535"),
        };
        if (scheme, number) == ("http", 80) || (scheme, number) == ("https", 443) {
            return Err("it names the scheme's default port, which a browser leaves out");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("redis://user@h"), "redis://user@h");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn cluster_settings_that_cannot_work_are_refused_with_the_reason() {
        let refused = |config: Config, needle: &str| {
            let err = config.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        refused(Config { reuse_port: true, ..Config::default() }, "--reuse-port needs --redis");
        let cert = Some(PathBuf::from("cert.pem"));
        let key = Some(PathBuf::from("key.pem"));
        refused(Config { tls_cert: cert.clone(), ..Config::default() }, "--tls-cert needs --tls-key");
        refused(Config { tls_key: key.clone(), ..Config::default() }, "--tls-key needs --tls-cert");
        refused(
            Config { tls_listen: Some(DEFAULT_LISTEN), ..Config::default() },
            "--tls-listen needs --tls-cert",
        );
        let tls = Config { tls_cert: cert, tls_key: key, ..Config::default() };
        refused(Config { tls_listen: Some(DEFAULT_LISTEN), ..tls.clone() }, "--tls-listen must differ");
        if cfg!(feature = "tls") {
            tls.validate().unwrap();
        } else {
            refused(tls, "built without TLS");
        }
        let cluster = Config { redis: Some("redis://127.0.0.1:6379/0".into()), ..Config::default() };
        refused(Config { data_dir: Some("d".into()), ..cluster.clone() }, "--data-dir and --redis cannot");
        refused(Config { redis: Some("http://:secret@x".into()), ..cluster.clone() }, "is not a Redis URL");
        refused(Config { redis_key: String::new(), ..cluster.clone() }, "--redis-key");
        let shown =
            format!("{:?}", Config { redis: Some("redis://u:secret@h/0".into()), ..Config::default() });
        assert!(!shown.contains("secret"), "{shown}");
        if cfg!(feature = "cluster") {
            Config { reuse_port: true, ..cluster.clone() }.validate().unwrap();
            assert_eq!(cluster.redis_entries(), cluster.history, "0 means --history");
            assert_eq!(Config { redis_maxlen: 7, ..cluster }.redis_entries(), 7);
        } else {
            refused(cluster, "built without cluster mode");
        }
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

    /// Every setting at its ceiling: the largest configuration a user can ask for is accepted.
    fn at_ceilings() -> Config {
        Config {
            history: HISTORY_CEILING,
            history_bytes: BYTES_CEILING as usize,
            heartbeat: TIMEOUT_CEILING,
            retry: RETRY_CEILING,
            max_connections: CONNECTIONS_CEILING,
            max_body: BODY_CEILING,
            max_lag: BYTES_CEILING as usize,
            header_timeout: TIMEOUT_CEILING,
            keep_alive_timeout: TIMEOUT_CEILING,
            max_lifetime: AGE_CEILING,
            shutdown_timeout: TIMEOUT_CEILING,
            history_age: AGE_CEILING,
            ..Config::default()
        }
    }

    #[test]
    fn settings_at_their_ceilings_are_valid() {
        at_ceilings().validate().unwrap();
    }

    #[test]
    fn settings_past_their_ceilings_are_refused_with_the_range() {
        let just_over = |d: Duration| d + Duration::from_nanos(1);
        let cases: Vec<(&str, Config)> = vec![
            ("--heartbeat", Config { heartbeat: Duration::MAX, ..Config::default() }),
            ("--heartbeat", Config { heartbeat: just_over(TIMEOUT_CEILING), ..Config::default() }),
            ("--header-timeout", Config { header_timeout: Duration::MAX, ..Config::default() }),
            ("--keep-alive-timeout", Config { keep_alive_timeout: Duration::MAX, ..Config::default() }),
            ("--shutdown-timeout", Config { shutdown_timeout: Duration::MAX, ..Config::default() }),
            ("--max-lifetime", Config { max_lifetime: Duration::MAX, ..Config::default() }),
            ("--max-lifetime", Config { max_lifetime: just_over(AGE_CEILING), ..Config::default() }),
            ("--history-age", Config { history_age: Duration::MAX, ..Config::default() }),
            ("--retry-ms", Config { retry: Duration::MAX, ..Config::default() }),
            ("--history", Config { history: usize::MAX, ..Config::default() }),
            ("--history-bytes", Config { history_bytes: usize::MAX, ..Config::default() }),
            ("--max-lag", Config { max_lag: usize::MAX, ..Config::default() }),
            ("--max-body", Config { max_body: BODY_CEILING + 1, max_lag: usize::MAX, ..Config::default() }),
            ("--max-connections", Config { max_connections: usize::MAX, ..Config::default() }),
        ];
        for (flag, config) in cases {
            let message = config.validate().expect_err(flag).to_string();
            assert!(message.starts_with(flag) && message.contains("out of range"), "{flag}: {message}");
        }
    }

    #[test]
    fn cors_origins_must_be_what_a_browser_sends() {
        for good in [
            "*",
            "https://app.example.com",
            "http://localhost:3000",
            "http://[::1]:8080",
            "https://a.example:8443",
        ] {
            let config = Config { cors_origins: vec![good.into()], ..Config::default() };
            assert!(config.validate().is_ok(), "{good} refused");
        }
        for bad in [
            "",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?x",
            "https://App.example.com",
            "HTTPS://app.example.com",
            "https://user@app.example.com",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://app.example.com:",
            "https://",
            "https://bücher.example",
            "https://a b.example",
            "null",
            "http://[::1",
            "**",
        ] {
            let config = Config { cors_origins: vec![bad.into()], ..Config::default() };
            let message = config.validate().expect_err(bad).to_string();
            assert!(message.contains("scheme://host[:port]"), "{bad}: {message}");
        }
    }
}
