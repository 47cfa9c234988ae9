//! Where a request's token comes from ([`extract`]), the cookie's CSRF rule
//! ([`check_cookie_origin`]), and a cache of verified grants ([`TokenCache`]), so a token presented
//! on every reconnect costs one signature check, not one per request.
//!
//! Sans-IO: the request's parts and the time come in as arguments.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use super::grant::Grant;
use super::jwt::{RequestProblem, Role, TokenError, Verifier};
use crate::http::request::{cookie_values, trim, Method};

/// The cookie name the spec recommends (spec, "Cookie"): the `__Secure-` prefix makes browsers
/// refuse it over plain HTTP.
pub const SECURE_COOKIE: &str = "__Secure-mercure_access_token";

/// The cookie name of the pre-standardization hubs.
pub const LEGACY_COOKIE: &str = "mercureAuthorization";

/// The query parameter of the pre-standardization hubs. The spec forbids tokens in URLs (they end
/// up in logs and histories, RFC 9700 §4.3.2), so it is read only when enabled.
pub const LEGACY_QUERY_PARAMETER: &str = "authorization";

/// Where ssed looks for a token, besides the `Authorization` header (which always wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOptions {
    /// Whether the legacy `authorization` query parameter is read (default `false`).
    pub legacy_query: bool,
    /// The cookie names looked for, first found wins (default: [`SECURE_COOKIE`],
    /// [`LEGACY_COOKIE`]).
    pub cookie_names: Vec<String>,
    /// The origins that may publish with a cookie token (see [`check_cookie_origin`]); empty by
    /// default, so a cookie never authorizes a publish until origins are configured.
    pub publish_origins: Vec<String>,
}

impl Default for TokenOptions {
    fn default() -> TokenOptions {
        TokenOptions {
            legacy_query: false,
            cookie_names: vec![SECURE_COOKIE.to_string(), LEGACY_COOKIE.to_string()],
            publish_origins: Vec::new(),
        }
    }
}

impl TokenOptions {
    /// Adds a configured cookie name, looked for before the default ones (the spec allows another
    /// name "to prevent conflicts when several hubs share the same domain").
    pub fn with_cookie_name(mut self, name: impl Into<String>) -> TokenOptions {
        self.cookie_names.insert(0, name.into());
        self
    }
}

/// The parts of a request a token may come in, as received.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The method: a cookie token on an unsafe one must pass [`check_cookie_origin`].
    pub method: Method,
    /// The value of each `Authorization` header.
    pub authorization: &'a [&'a [u8]],
    /// The value of each `Cookie` header.
    pub cookies: &'a [&'a [u8]],
    /// Each value of the `authorization` query parameter, percent-decoded.
    pub query_authorization: &'a [&'a str],
    /// The `Origin` header.
    pub origin: Option<&'a [u8]>,
    /// The `Referer` header.
    pub referer: Option<&'a [u8]>,
}

/// How the token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer`.
    Header,
    /// The legacy `authorization` query parameter.
    Query,
    /// A cookie.
    Cookie,
}

/// The token a request presents, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presentation<'a> {
    /// The token, not yet verified.
    pub token: &'a str,
    /// Where it came from.
    pub source: Source,
}

/// Finds the token a request presents: `Ok(None)` when it presents none (an anonymous request; the
/// caller answers [`TokenError::Missing`] if the operation needs a token).
///
/// Order (spec, "Presenting the Access Token"): an `Authorization` header wins and any cookie is
/// then ignored (cookies are ambient, so their presence is no client error); else the legacy query
/// parameter, if enabled; else the first cookie of [`TokenOptions::cookie_names`] present with a
/// non-empty value (an emptied cookie is a logged-out browser, not a token). A header that is not
/// exactly one `Bearer` credential is `invalid_request` (RFC 6750 §3.1), not a fallback to the
/// cookie. A cookie token on an unsafe method must also pass [`check_cookie_origin`].
pub fn extract<'a>(
    request: &Presented<'a>,
    options: &TokenOptions,
) -> Result<Option<Presentation<'a>>, TokenError> {
    match request.authorization {
        [] => {}
        [value] => return bearer(value).map(|token| Some(Presentation { token, source: Source::Header })),
        _ => return Err(TokenError::InvalidRequest(RequestProblem::RepeatedAuthorization)),
    }
    if options.legacy_query {
        match request.query_authorization {
            [] => {}
            [token] if !token.is_empty() => return Ok(Some(Presentation { token, source: Source::Query })),
            _ => return Err(TokenError::InvalidRequest(RequestProblem::BadQueryToken)),
        }
    }
    let Some(token) = options.cookie_names.iter().find_map(|name| cookie(request.cookies, name.as_bytes()))
    else {
        return Ok(None);
    };
    // RFC 9110 §9.2.1: GET, HEAD and OPTIONS are safe; a forged cross-site request using them
    // changes nothing.
    if !matches!(request.method, Method::Get | Method::Head | Method::Options) {
        check_cookie_origin(request.origin, request.referer, &options.publish_origins)?;
    }
    Ok(Some(Presentation { token, source: Source::Cookie }))
}

/// The token of an `Authorization` header: `Bearer` (any case), one or more spaces, a `b64token`
/// (RFC 6750 §2.1), optional whitespace around.
fn bearer(value: &[u8]) -> Result<&str, TokenError> {
    let bad = |problem| TokenError::InvalidRequest(problem);
    let value = trim(value);
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(at) => (&value[..at], &value[at..]),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(bad(RequestProblem::NotBearer));
    }
    let token = trim(rest);
    let body_end = token.iter().rposition(|&b| b != b'=').map_or(0, |at| at + 1);
    let is_b64token = body_end > 0
        && token[..body_end].iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        && token[body_end..].iter().all(|&b| b == b'=');
    if !is_b64token {
        return Err(bad(RequestProblem::BadBearer));
    }
    // Only ASCII is left, so this never fails.
    std::str::from_utf8(token).map_err(|_| bad(RequestProblem::BadBearer))
}

/// The first non-empty value of cookie `name` in the `Cookie` headers (RFC 6265 §4.2.1:
/// `name=value` pairs separated by `;`), without the optional double quotes.
fn cookie<'a>(headers: &[&'a [u8]], name: &[u8]) -> Option<&'a str> {
    headers
        .iter()
        .flat_map(|header| cookie_values(header, name))
        .find_map(|value| std::str::from_utf8(value).ok().filter(|v| !v.is_empty()))
}

/// The CSRF rule for a cookie token on an unsafe method (spec, "Security Considerations"; the
/// Mercure.rocks hub's rule): the request's origin, from `Origin` or else from `Referer`, must be one
/// of `allowed`; with neither header the request is refused, and so it is when `allowed` is empty.
///
/// An entry of `allowed` is `*` (any origin), an origin (`https://app.example.com`, compared
/// ASCII-case-insensitively), or an origin with one `*` standing for any run of characters
/// (`https://*.example.com`). Refusals are `invalid_request`, as the Mercure.rocks hub answers them:
/// the token itself was never looked at.
pub fn check_cookie_origin(
    origin: Option<&[u8]>,
    referer: Option<&[u8]>,
    allowed: &[String],
) -> Result<(), TokenError> {
    let refuse = |problem| Err(TokenError::InvalidRequest(problem));
    let origin = match (origin.map(trim), referer.map(trim)) {
        (Some(origin), _) if !origin.is_empty() => origin.to_vec(),
        (_, Some(referer)) if !referer.is_empty() => match referer_origin(referer) {
            Some(origin) => origin,
            None => return refuse(RequestProblem::OriginNotAllowed),
        },
        _ => return refuse(RequestProblem::NoOrigin),
    };
    let origin = String::from_utf8_lossy(&origin).to_ascii_lowercase();
    let allows = |entry: &String| {
        let entry = entry.to_ascii_lowercase();
        match entry.split_once('*') {
            _ if entry == "*" => true,
            Some((prefix, suffix)) => {
                origin.len() >= prefix.len() + suffix.len()
                    && origin.starts_with(prefix)
                    && origin.ends_with(suffix)
            }
            None => origin == entry,
        }
    };
    if allowed.iter().any(allows) {
        Ok(())
    } else {
        refuse(RequestProblem::OriginNotAllowed)
    }
}

/// `scheme://host[:port]` of a `Referer` URL, without any user information.
fn referer_origin(referer: &[u8]) -> Option<Vec<u8>> {
    let at = referer.windows(3).position(|w| w == b"://")?;
    let scheme = &referer[..at];
    if scheme.is_empty() || !scheme.iter().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)) {
        return None;
    }
    let rest = &referer[at + 3..];
    let authority_end = rest.iter().position(|b| b"/?#".contains(b)).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    if host.is_empty() {
        return None;
    }
    let mut origin = scheme.to_vec();
    origin.extend_from_slice(b"://");
    origin.extend_from_slice(host);
    Some(origin)
}

/// How many grants [`TokenCache::new`] keeps by default.
pub const CACHE_CAPACITY: usize = 10_000;

/// How many token bytes the cache keeps at most by default (a grant takes memory in proportion to
/// its token): with [`CACHE_CAPACITY`], tokens of up to about 800 bytes fill the cache by count.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// How long a pre-standardization token without `exp` stays cached before it is verified again.
/// Nothing about it can change meanwhile; this only bounds how long an entry outlives its use.
pub const NO_EXPIRY_MAX_AGE_SECS: u64 = 3600;

/// Verified grants, keyed by the token's bytes, the role and the request's audiences, kept until
/// the token expires.
///
/// Only successes are cached: a failure costs at most one signature check per configured key and
/// usually none (an expired, misaddressed or malformed token is refused before the signature), and
/// caching failures would let a flood of garbage tokens fill memory. The cache is bounded by
/// entries and by token bytes; when full it drops the expired entries (at most one sweep per
/// second of `now`), then the oldest.
///
/// A token's bytes are compared in full, never by hash alone, so a hash collision costs a
/// verification, never another token's grant. Use one cache per [`Verifier`].
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<u64, Entry>,
    /// (key, seq) in insertion order; pairs whose entry was replaced or dropped are skipped.
    order: VecDeque<(u64, u64)>,
    hasher: RandomState,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    next_seq: u64,
    last_sweep: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    role: Role,
    audiences: Box<[Box<str>]>,
    token: Box<str>,
    grant: Arc<Grant>,
    /// Unix seconds from which the entry is not used.
    valid_until: u64,
    seq: u64,
}

impl Entry {
    fn is_for(&self, token: &str, role: Role, audiences: &[&str]) -> bool {
        self.role == role
            && &*self.token == token
            && self.audiences.iter().map(|a| &**a).eq(audiences.iter().copied())
    }
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache::new(CACHE_CAPACITY, CACHE_BYTES)
    }
}

impl TokenCache {
    /// A cache of at most `capacity` grants and `max_bytes` token bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            hasher: RandomState::new(),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            next_seq: 0,
            last_sweep: None,
        }
    }

    /// How many grants are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no grant is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The grant of `token` for `role`, from the cache while it is valid, else from
    /// [`Verifier::verify`] (and then cached).
    pub fn verify(
        &mut self,
        verifier: &Verifier,
        token: &str,
        role: Role,
        audiences: &[&str],
        now_secs: u64,
    ) -> Result<Arc<Grant>, TokenError> {
        let key = self.key(token, role, audiences);
        if let Some(entry) = self.entries.get(&key) {
            if entry.is_for(token, role, audiences) {
                if now_secs < entry.valid_until {
                    return Ok(entry.grant.clone());
                }
                self.remove(key);
            }
        }
        let grant = Arc::new(verifier.verify(token, role, audiences, now_secs)?);
        let valid_until = grant.expires_at.unwrap_or_else(|| now_secs.saturating_add(NO_EXPIRY_MAX_AGE_SECS));
        self.insert(key, token, role, audiences, grant.clone(), valid_until, now_secs);
        Ok(grant)
    }

    fn key(&self, token: &str, role: Role, audiences: &[&str]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        role.hash(&mut hasher);
        audiences.hash(&mut hasher);
        token.hash(&mut hasher);
        hasher.finish()
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        key: u64,
        token: &str,
        role: Role,
        audiences: &[&str],
        grant: Arc<Grant>,
        valid_until: u64,
        now: u64,
    ) {
        let cost = token.len();
        if cost > self.max_bytes {
            return;
        }
        // Whatever held this key (a stale grant, or another token with the same hash) goes.
        self.remove(key);
        while self.entries.len() >= self.capacity || self.bytes + cost > self.max_bytes {
            if self.last_sweep != Some(now) {
                self.last_sweep = Some(now);
                let before = self.entries.len();
                self.entries.retain(|_, e| e.valid_until > now);
                if self.entries.len() != before {
                    self.bytes = self.entries.values().map(|e| e.token.len()).sum();
                }
                continue;
            }
            let Some((oldest, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                self.remove(oldest);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += cost;
        self.entries.insert(
            key,
            Entry {
                role,
                audiences: audiences.iter().map(|a| Box::from(*a)).collect(),
                token: token.into(),
                grant,
                valid_until,
                seq,
            },
        );
        self.order.push_back((key, seq));
        // Replaced and dropped entries leave their pairs behind; keep the queue in proportion.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(key, seq)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(entry) = self.entries.remove(&key) {
            self.bytes -= entry.token.len();
        }
    }
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
