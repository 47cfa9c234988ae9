//! What a Mercure hub request carries, parsed from raw bytes: a subscription's query (matchers and
//! the last event id) and a publication's form (topics, data, id, type, retry, private).
//!
//! Both are `application/x-www-form-urlencoded` (WHATWG URL, "application/x-www-form-urlencoded
//! parsing"): pairs split on `&`, name and value on the first `=`, `+` is a space, `%XX` a byte, a
//! name without `=` has an empty value. Unlike `form_urlencoded::parse`, which replaces invalid UTF-8
//! with U+FFFD, values are decoded to bytes and then checked, because the spec says invalid UTF-8
//! must be refused, and a replacement character would hide it.
//!
//! Errors carry the HTTP status the spec asks for: `413` when an update breaks a size limit, `400`
//! for everything else (a subscription's limits are `400` too).

use std::borrow::Cow;
use std::fmt;

use url::Url;

use super::matcher::{Matcher, WILDCARD};
use super::rules::{
    self, RuleError, MAX_ID_BYTES, MAX_MATCHERS, MAX_TOPICS, MAX_TOPIC_BYTES, MAX_TYPE_BYTES,
};
use super::MatcherKind;

/// A refused request: the status to answer and a message for the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    status: u16,
    message: String,
}

impl RequestError {
    fn bad_request(message: String) -> Self {
        RequestError { status: 400, message }
    }

    fn too_large(message: String) -> Self {
        RequestError { status: 413, message }
    }

    /// `400` (Bad Request) or `413` (Content Too Large).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// What is wrong, in a sentence for the response body. It never echoes a value.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

/// The query parameter name that selects a matcher kind (the canonical one for `exact`).
fn parameter_name(kind: MatcherKind) -> &'static str {
    match kind {
        MatcherKind::Exact => "match",
        MatcherKind::UrlPattern => "match_urlpattern",
        MatcherKind::Legacy => "topic",
    }
}

/// A subscription request's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The topic matchers, in request order, without duplicates (same kind and value).
    pub matchers: Vec<(MatcherKind, String)>,
    /// `last_event_id`, else the pre-standardization `lastEventID` (the first of each; an empty
    /// value counts as absent, as for `EventSource`'s `Last-Event-ID`). The `Last-Event-ID` header
    /// takes precedence over both. `earliest` is one such value.
    pub last_event_id: Option<String>,
    /// The pre-standardization `authorization` parameter's values (tokens), in order; the hub reads
    /// them only with `--legacy-query-token`.
    pub authorization: Vec<String>,
}

impl Subscribe {
    /// Parses the query component of a subscription URL (without the `?`).
    ///
    /// Matchers come from `match` and `match_exact` (exact), `match_urlpattern` (URL patterns) and
    /// `topic` (pre-standardization selectors); any other name beginning with `match` (ASCII
    /// case-insensitive) is refused, other names are ignored. Values must pass the [`rules`] and
    /// the caps ([`MAX_MATCHERS`], [`MAX_TOPIC_BYTES`]); [`Subscribe::compile`] then checks that
    /// each is valid for its kind.
    pub fn parse(query: &[u8]) -> Result<Subscribe, RequestError> {
        let mut matchers: Vec<(MatcherKind, String)> = Vec::new();
        let mut sent = 0usize;
        let mut last_event_id: Option<Cow<[u8]>> = None;
        let mut legacy_last_event_id: Option<Cow<[u8]>> = None;
        let mut authorization = Vec::new();
        for (name, value) in pairs(query) {
            let kind = match &*name {
                b"authorization" => {
                    authorization.push(String::from_utf8_lossy(&value).into_owned());
                    continue;
                }
                b"match" | b"match_exact" => MatcherKind::Exact,
                b"match_urlpattern" => MatcherKind::UrlPattern,
                b"topic" => MatcherKind::Legacy,
                b"last_event_id" => {
                    last_event_id.get_or_insert(value);
                    continue;
                }
                b"lastEventID" => {
                    legacy_last_event_id.get_or_insert(value);
                    continue;
                }
                other if other.len() >= 5 && other[..5].eq_ignore_ascii_case(b"match") => {
                    return Err(RequestError::bad_request(format!(
                        "unsupported topic matcher parameter {}: this hub supports match, match_exact \
                         and match_urlpattern (the match prefix is reserved)",
                        quote_name(other)
                    )));
                }
                _ => continue,
            };
            sent += 1;
            if sent > MAX_MATCHERS {
                return Err(RequestError::bad_request(format!(
                    "too many topic matchers: at most {MAX_MATCHERS} per subscription"
                )));
            }
            let value = rules::check_bytes(&value, MAX_TOPIC_BYTES).map_err(|e| {
                RequestError::bad_request(format!("{} value #{sent} {e}", parameter_name_of(&name)))
            })?;
            if !matchers.iter().any(|(k, v)| *k == kind && v == value) {
                matchers.push((kind, value.to_owned()));
            }
        }
        if matchers.is_empty() {
            return Err(RequestError::bad_request(
                "no topic matcher: a subscription needs at least one match, match_exact, \
                 match_urlpattern or topic parameter"
                    .to_owned(),
            ));
        }
        let last_event_id = match last_event_id.filter(|v| !v.is_empty()) {
            Some(id) => Some(utf8(id, "last_event_id")?),
            None => match legacy_last_event_id.filter(|v| !v.is_empty()) {
                Some(id) => Some(utf8(id, "lastEventID")?),
                None => None,
            },
        };
        Ok(Subscribe { matchers, last_event_id, authorization })
    }

    /// Compiles the matchers against the hub's URL; an invalid one (a malformed URL pattern or URI
    /// template) is a `400`.
    pub fn compile(&self, hub: &Url) -> Result<Vec<Matcher>, RequestError> {
        self.matchers
            .iter()
            .enumerate()
            .map(|(i, (kind, value))| {
                Matcher::new(*kind, value, hub).map_err(|e| {
                    RequestError::bad_request(format!(
                        "topic matcher #{} ({}) {e}",
                        i + 1,
                        parameter_name(*kind)
                    ))
                })
            })
            .collect()
    }
}

/// The name to show in a message about a matcher value: the name as sent (one of ours).
fn parameter_name_of(name: &[u8]) -> &'static str {
    match name {
        b"match_exact" => "match_exact",
        b"match_urlpattern" => "match_urlpattern",
        b"topic" => "topic",
        _ => "match",
    }
}

/// A client-sent name, quoted and escaped for a message, at most 64 characters of it.
fn quote_name(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    let shown: String = name.chars().take(64).collect();
    let ellipsis = if shown.len() < name.len() { "..." } else { "" };
    format!("\"{}{ellipsis}\"", shown.escape_debug())
}

fn utf8(value: Cow<[u8]>, field: &str) -> Result<String, RequestError> {
    String::from_utf8(value.into_owned())
        .map_err(|_| RequestError::bad_request(format!("{field} is not valid UTF-8")))
}

/// Size limits of a publication: breaking one is a `413`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateLimits {
    /// Most `topic` fields.
    pub max_topics: usize,
    /// Longest topic, in bytes.
    pub max_topic_bytes: usize,
    /// Longest `id`, in bytes.
    pub max_id_bytes: usize,
    /// Longest `data`, in bytes (the request body's own cap is the server's).
    pub max_data_bytes: usize,
}

impl Default for UpdateLimits {
    /// The caps of [`rules`]; `data` bounded only by the body.
    fn default() -> Self {
        UpdateLimits {
            max_topics: MAX_TOPICS,
            max_topic_bytes: MAX_TOPIC_BYTES,
            max_id_bytes: MAX_ID_BYTES,
            max_data_bytes: usize::MAX,
        }
    }
}

/// A publication's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The topics, never empty; the first is the canonical one, the others alternates.
    pub topics: Vec<String>,
    /// `data`, when sent (possibly empty).
    pub data: Option<String>,
    /// The publisher's `id`; `None` when absent or empty (the hub then makes one).
    pub id: Option<String>,
    /// `type`, the SSE `event` field; `None` when absent or empty.
    pub event_type: Option<String>,
    /// `retry`, the SSE reconnection time in milliseconds; `None` when absent or empty.
    pub retry: Option<u64>,
    /// Whether a `private` field was present, whatever its value.
    pub private: bool,
}

impl Update {
    /// Parses a publication's `application/x-www-form-urlencoded` body; `hub` is the hub's URL,
    /// whose path subtree topics may not address.
    ///
    /// Single-valued fields (`data`, `id`, `type`, `retry`) take their first occurrence; unknown
    /// fields are ignored.
    pub fn parse(form: &[u8], hub: &Url, limits: &UpdateLimits) -> Result<Update, RequestError> {
        let mut topics: Vec<String> = Vec::new();
        let mut data = None;
        let mut id = None;
        let mut event_type = None;
        let mut retry = None;
        let mut private = false;
        for (name, value) in pairs(form) {
            match &*name {
                b"topic" => {
                    let n = topics.len() + 1;
                    if n > limits.max_topics {
                        return Err(RequestError::too_large(format!(
                            "too many topics: at most {} per update",
                            limits.max_topics
                        )));
                    }
                    let topic = rules::check_bytes(&value, limits.max_topic_bytes)
                        .map_err(|e| rule_error(format!("topic #{n}"), e))?;
                    if topic == WILDCARD {
                        return Err(RequestError::bad_request(format!(
                            "topic #{n} is \"*\", which is reserved for the wildcard matcher"
                        )));
                    }
                    if in_reserved_namespace(topic, hub) {
                        return Err(RequestError::bad_request(format!(
                            "topic #{n} addresses the hub's reserved namespace ({} and below)",
                            hub.path()
                        )));
                    }
                    topics.push(topic.to_owned());
                }
                b"data" if data.is_none() => {
                    if value.len() > limits.max_data_bytes {
                        return Err(RequestError::too_large(format!(
                            "data is {} bytes long, over the limit of {}",
                            value.len(),
                            limits.max_data_bytes
                        )));
                    }
                    data = Some(utf8(value, "data")?);
                }
                b"id" if id.is_none() => id = Some(value),
                b"type" if event_type.is_none() => event_type = Some(value),
                b"retry" if retry.is_none() => retry = Some(value),
                b"private" => private = true,
                _ => {}
            }
        }
        if topics.is_empty() {
            return Err(RequestError::bad_request(
                "no topic: an update needs at least one topic field".to_owned(),
            ));
        }
        let id = match id.filter(|v| !v.is_empty()) {
            None => None,
            Some(value) => {
                let id = rules::check_bytes(&value, limits.max_id_bytes)
                    .map_err(|e| rule_error("id".to_owned(), e))?;
                if id.starts_with('#') {
                    return Err(RequestError::bad_request(
                        "id starts with '#', which is reserved for ids the hub makes".to_owned(),
                    ));
                }
                if id == "earliest" {
                    return Err(RequestError::bad_request(
                        "id is \"earliest\", which is reserved for requesting the whole history".to_owned(),
                    ));
                }
                Some(id.to_owned())
            }
        };
        let event_type = match event_type.filter(|v| !v.is_empty()) {
            None => None,
            Some(value) => {
                let event_type = rules::check_bytes(&value, MAX_TYPE_BYTES)
                    .map_err(|e| rule_error("type".to_owned(), e))?;
                if event_type == "mercure" {
                    return Err(RequestError::bad_request(
                        "type is \"mercure\", which is reserved for events the hub makes".to_owned(),
                    ));
                }
                Some(event_type.to_owned())
            }
        };
        let retry = match retry.filter(|v| !v.is_empty()) {
            None => None,
            Some(value) => Some(parse_retry(&value)?),
        };
        Ok(Update { topics, data, id, event_type, retry, private })
    }
}

/// A rule broken by `what`: `413` for a size, `400` for a character.
fn rule_error(what: String, e: RuleError) -> RequestError {
    let message = format!("{what} {e}");
    if e.is_too_long() {
        RequestError::too_large(message)
    } else {
        RequestError::bad_request(message)
    }
}

fn parse_retry(value: &[u8]) -> Result<u64, RequestError> {
    if !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::bad_request("retry must be ASCII digits only (milliseconds)".to_owned()));
    }
    // All ASCII digits, so UTF-8; the only failure left is overflow.
    std::str::from_utf8(value)
        .ok()
        .and_then(|digits| digits.parse::<u64>().ok())
        .ok_or_else(|| RequestError::bad_request("retry is too large for 64 bits".to_owned()))
}

/// Whether `topic`, resolved against the hub's URL, names the hub's path or a path below it.
///
/// The WHATWG parser (the one URL patterns use) resolves the topic and removes its dot segments,
/// `%2e` spellings included; percent-encoded unreserved characters are then decoded (RFC 3986
/// 6.2.2.2, so `/.well-known/%6Dercure` is caught) and the result compared with the hub's path,
/// normalized the same way. The
/// scheme and authority do not matter. A topic that does not parse is not in the namespace. A
/// trailing `/` on the hub's path is ignored.
pub fn in_reserved_namespace(topic: &str, hub: &Url) -> bool {
    let Ok(resolved) = hub.join(topic) else {
        return false;
    };
    let path = normalize_path(resolved.path());
    let hub_path = normalize_path(hub.path());
    let hub_path = hub_path.strip_suffix('/').unwrap_or(&hub_path);
    match path.strip_prefix(hub_path) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Decodes percent-encoded unreserved characters.
///
/// Dot segments need no second removal: the WHATWG parser already removed them in every spelling
/// (`.`, `%2e`, `.%2E`, `%2e%2e`...), so decoding cannot make new ones.
fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match hex_pair(bytes, i + 1).filter(|&b| bytes[i] == b'%' && is_unreserved(b)) {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Replacing `%XX` by the ASCII byte it encodes keeps UTF-8 valid; lossy is never lossy here.
    String::from_utf8_lossy(&decoded).into_owned()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_pair(bytes: &[u8], at: usize) -> Option<u8> {
    let hi = char::from(*bytes.get(at)?).to_digit(16)?;
    let lo = char::from(*bytes.get(at + 1)?).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// The name/value pairs of a form, percent-decoded to bytes (WHATWG URL,
/// "application/x-www-form-urlencoded parsing", without its lossy UTF-8 decoding).
fn pairs(input: &[u8]) -> impl Iterator<Item = (Cow<'_, [u8]>, Cow<'_, [u8]>)> {
    input.split(|&b| b == b'&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        (decode(name), decode(value))
    })
}

/// `+` to a space and `%XX` to its byte; a `%` without two hex digits after it stays as it is.
fn decode(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.iter().any(|&b| b == b'+' || b == b'%') {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => match hex_pair(input, i + 1) {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hub() -> Url {
        Url::parse("https://localhost/.well-known/mercure").expect("static URL")
    }

    fn subscribe(query: &str) -> Result<Subscribe, RequestError> {
        Subscribe::parse(query.as_bytes())
    }

    fn matchers(query: &str) -> Vec<(MatcherKind, String)> {
        subscribe(query).unwrap_or_else(|e| panic!("{query:?}: {e}")).matchers
    }

    fn refused(query: &str) -> RequestError {
        let err = subscribe(query).expect_err(query);
        assert_eq!(err.status(), 400, "{query:?}: {err}");
        err
    }

    fn update(form: &str) -> Result<Update, RequestError> {
        Update::parse(form.as_bytes(), &hub(), &UpdateLimits::default())
    }

    fn accepted(form: &str) -> Update {
        update(form).unwrap_or_else(|e| panic!("{form:?}: {e}"))
    }

    /// The status of a refused update, checking its message says something.
    fn status(form: &str) -> u16 {
        let err = update(form).expect_err(form);
        assert!(!err.message().is_empty());
        err.status()
    }

    use MatcherKind::{Exact, Legacy, UrlPattern};

    fn pair(kind: MatcherKind, value: &str) -> (MatcherKind, String) {
        (kind, value.to_owned())
    }

    #[test]
    fn subscribe_spec_example() {
        // What `URLSearchParams` makes of the spec's JavaScript example.
        let query = "match=https%3A%2F%2Fexample.com%2Ffoo&match=bar\
                     &match_urlpattern=https%3A%2F%2Fexample.com%2Fbar%2F%3Aid";
        let parsed = subscribe(query).expect("valid");
        assert_eq!(
            parsed.matchers,
            [
                pair(Exact, "https://example.com/foo"),
                pair(Exact, "bar"),
                pair(UrlPattern, "https://example.com/bar/:id")
            ]
        );
        assert_eq!(parsed.last_event_id, None);
        let compiled = parsed.compile(&hub()).expect("valid matchers");
        assert!(compiled[0].matches("https://example.com/foo"));
        assert!(compiled[1].matches("bar"));
        assert!(compiled[2].matches("https://example.com/bar/42"));
        assert!(!compiled[2].matches("https://example.com/foo/42"));
    }

    #[test]
    fn subscribe_pre_standardization() {
        let parsed =
            subscribe("topic=https%3A%2F%2Fexample.net%2Ffoo%2F%7Brandom%7D&lastEventID=x1").expect("valid");
        assert_eq!(parsed.matchers, [pair(Legacy, "https://example.net/foo/{random}")]);
        assert_eq!(parsed.last_event_id.as_deref(), Some("x1"));
        // Raw braces, as a hand-written URL would have them.
        let raw = matchers("topic=https://example.net/foo/{random}&topic=*");
        assert_eq!(raw, [pair(Legacy, "https://example.net/foo/{random}"), pair(Legacy, "*")]);
        let compiled = subscribe("topic=https://example.net/foo/{random}").and_then(|s| s.compile(&hub()));
        assert!(compiled.expect("valid")[0].matches("https://example.net/foo/abc"));
    }

    #[test]
    fn subscribe_matcher_names() {
        assert_eq!(matchers("match_exact=a"), [pair(Exact, "a")]);
        assert_eq!(matchers("match=a"), [pair(Exact, "a")]);
        assert_eq!(matchers("match_urlpattern=a"), [pair(UrlPattern, "a")]);
        assert_eq!(matchers("topic=a"), [pair(Legacy, "a")]);
        // Percent-encoded names are decoded first.
        assert_eq!(matchers("m%61tch=a"), [pair(Exact, "a")]);
        // Unknown names, including near misses outside the reserved prefix, are ignored.
        assert_eq!(
            matchers("foo=1&Topic=x&topics=y&xmatch=z&matc=w&match=a&authorization=t"),
            [pair(Exact, "a")]
        );
    }

    #[test]
    fn subscribe_keeps_the_legacy_query_tokens_in_order() {
        let parsed =
            Subscribe::parse(b"authorization=a.b.c&match=x&authorization=d%2Ee&Authorization=f").unwrap();
        assert_eq!(parsed.authorization, ["a.b.c", "d.e"]);
        assert!(Subscribe::parse(b"match=x").unwrap().authorization.is_empty());
    }

    #[test]
    fn subscribe_union_and_duplicates() {
        assert_eq!(
            matchers("match=a&match_exact=a&topic=a&match=a&match_urlpattern=a&topic=b&match=b"),
            [pair(Exact, "a"), pair(Legacy, "a"), pair(UrlPattern, "a"), pair(Legacy, "b"), pair(Exact, "b")]
        );
    }

    #[test]
    fn subscribe_form_decoding() {
        assert_eq!(matchers("match=a+b"), [pair(Exact, "a b")]);
        assert_eq!(matchers("match=a%2Bb"), [pair(Exact, "a+b")]);
        assert_eq!(matchers("match"), [pair(Exact, "")], "a name alone has an empty value");
        assert_eq!(matchers("match="), [pair(Exact, "")]);
        assert_eq!(matchers("match=a=b"), [pair(Exact, "a=b")], "split on the first '='");
        assert_eq!(matchers("&&match=a&&"), [pair(Exact, "a")], "empty pairs skipped");
        assert_eq!(matchers("match=100%"), [pair(Exact, "100%")], "a stray '%' stays");
        assert_eq!(matchers("match=%zz%4"), [pair(Exact, "%zz%4")]);
        // Non-ASCII IRIs with an encoded ?, # and %, and raw UTF-8 too.
        assert_eq!(
            matchers("match=https%3A%2F%2Fex%C3%A4mple.com%2Fcaf%C3%A9%3Fq%3D%C3%BC%23fr%25ag"),
            [pair(Exact, "https://exämple.com/café?q=ü#fr%ag")]
        );
        assert_eq!(matchers("match=日本"), [pair(Exact, "日本")]);
    }

    #[test]
    fn subscribe_reserved_match_prefix() {
        for name in [
            "Match",
            "MATCH",
            "match_Exact",
            "MATCH_EXACT",
            "match_URLPATTERN",
            "match_regex",
            "match_",
            "matches",
            "matchx",
            "match%5Fregex",
            "mAtCh_type",
        ] {
            for query in [format!("match=a&{name}=x"), format!("{name}&match=a"), format!("{name}=")] {
                let err = refused(&query);
                assert!(err.message().starts_with("unsupported topic matcher parameter \""), "{err}");
            }
        }
        let err = refused("match_regex=.*");
        assert_eq!(
            err.message(),
            "unsupported topic matcher parameter \"match_regex\": this hub supports match, \
             match_exact and match_urlpattern (the match prefix is reserved)"
        );
        // The name shown is escaped and bounded.
        let err = refused(&format!("match%0A{}=1", "x".repeat(100)));
        assert!(err.message().contains("\"match\\nxxx"), "{err}");
        assert!(err.message().contains("...\""), "{err}");
        assert!(err.message().len() < 200);
    }

    #[test]
    fn subscribe_needs_a_matcher() {
        for query in ["", "&", "foo=bar", "last_event_id=1", "lastEventID=1", "Topic=a", "mat=a"] {
            let err = refused(query);
            assert_eq!(
                err.message(),
                "no topic matcher: a subscription needs at least one match, match_exact, \
                 match_urlpattern or topic parameter"
            );
        }
    }

    #[test]
    fn subscribe_matcher_count_cap() {
        let at_cap: Vec<String> = (0..MAX_MATCHERS).map(|i| format!("match=t{i}")).collect();
        assert_eq!(matchers(&at_cap.join("&")).len(), MAX_MATCHERS);
        let with_others = format!("{}&last_event_id=1&foo=2", at_cap.join("&"));
        assert_eq!(matchers(&with_others).len(), MAX_MATCHERS, "other names do not count");
        let over = format!("{}&topic=one-more", at_cap.join("&"));
        let err = refused(&over);
        assert_eq!(err.message(), "too many topic matchers: at most 64 per subscription");
        // Counted as sent: duplicates count too.
        let same = vec!["match=a"; MAX_MATCHERS + 1].join("&");
        refused(&same);
        assert_eq!(matchers(&vec!["match=a"; MAX_MATCHERS].join("&")).len(), 1);
    }

    #[test]
    fn subscribe_matcher_length_cap() {
        let at_cap = "a".repeat(MAX_TOPIC_BYTES);
        assert_eq!(matchers(&format!("match={at_cap}")), [pair(Exact, &at_cap)]);
        let err = refused(&format!("match=x&match_urlpattern={at_cap}a"));
        assert_eq!(err.message(), "match_urlpattern value #2 is 2049 bytes long, over the limit of 2048");
        // Measured after decoding: 2048 bytes sent as %61 each are fine.
        assert_eq!(matchers(&format!("topic={}", "%61".repeat(MAX_TOPIC_BYTES))).len(), 1);
    }

    #[test]
    fn subscribe_value_rules() {
        for (query, message) in [
            ("match=a%0Ab", "match value #1 holds the control character U+000A at byte 1"),
            ("match=ok&match_exact=%00", "match_exact value #2 holds the control character U+0000 at byte 0"),
            ("topic=%7F", "topic value #1 holds the control character U+007F at byte 0"),
            ("match=%C2%85", "match value #1 holds the control character U+0085 at byte 0"),
            (
                "match_urlpattern=%E2%80%8B",
                "match_urlpattern value #1 holds the invisible Unicode format character U+200B at byte 0",
            ),
            (
                "match=a%E2%80%AE",
                "match value #1 holds the invisible Unicode format character U+202E at byte 1",
            ),
            (
                "match=%EF%BB%BF",
                "match value #1 holds the invisible Unicode format character U+FEFF at byte 0",
            ),
            ("topic=x%C2%AD", "topic value #1 holds the invisible Unicode format character U+00AD at byte 1"),
            ("match=%FF", "match value #1 is not valid UTF-8 (bad byte at offset 0)"),
            ("match=a%C3", "match value #1 is not valid UTF-8 (bad byte at offset 1)"),
        ] {
            assert_eq!(refused(query).message(), message, "{query}");
        }
        // Raw bytes that are not UTF-8.
        assert_eq!(
            Subscribe::parse(b"match=\xff").expect_err("not UTF-8").message(),
            "match value #1 is not valid UTF-8 (bad byte at offset 0)"
        );
    }

    #[test]
    fn subscribe_last_event_id() {
        let id = |q: &str| subscribe(q).expect("valid").last_event_id;
        assert_eq!(id("match=a"), None);
        assert_eq!(id("match=a&last_event_id=x"), Some("x".to_owned()));
        assert_eq!(id("match=a&lastEventID=y"), Some("y".to_owned()));
        assert_eq!(id("match=a&last_event_id=x&lastEventID=y"), Some("x".to_owned()));
        assert_eq!(id("lastEventID=y&last_event_id=x&match=a"), Some("x".to_owned()));
        assert_eq!(id("match=a&last_event_id=x&last_event_id=z"), Some("x".to_owned()));
        assert_eq!(id("match=a&lastEventID=y&lastEventID=z"), Some("y".to_owned()));
        assert_eq!(id("match=a&last_event_id=earliest"), Some("earliest".to_owned()));
        assert_eq!(id("match=a&last_event_id=urn%3Auuid%3A1+2"), Some("urn:uuid:1 2".to_owned()));
        // Empty is absent.
        assert_eq!(id("match=a&last_event_id=&lastEventID=y"), Some("y".to_owned()));
        assert_eq!(id("match=a&last_event_id"), None);
        assert_eq!(id("match=a&lastEventID="), None);
        // Names are case-sensitive.
        assert_eq!(id("match=a&Last_Event_ID=x&lasteventid=y"), None);
        assert_eq!(refused("match=a&last_event_id=%FF").message(), "last_event_id is not valid UTF-8");
        assert_eq!(refused("match=a&lastEventID=%FF").message(), "lastEventID is not valid UTF-8");
        // The one in use is checked, not the one that lost.
        assert_eq!(id("match=a&last_event_id=x&lastEventID=%FF"), Some("x".to_owned()));
    }

    #[test]
    fn subscribe_compile_reports_invalid_matchers() {
        let err = subscribe("match=ok&match_urlpattern=https%3A%2F%2Fexample.com%2F%3Aid(")
            .expect("rules pass")
            .compile(&hub())
            .expect_err("bad pattern");
        assert_eq!(err.status(), 400);
        assert!(
            err.message().starts_with("topic matcher #2 (match_urlpattern) is not a valid URL pattern: "),
            "{err}"
        );
        let err = subscribe("topic=%7Bx").expect("rules pass").compile(&hub()).expect_err("bad template");
        assert_eq!(
            err.message(),
            "topic matcher #1 (topic) is not a valid URI template (RFC 6570): an unclosed '{' at byte 2"
        );
        // The same value is a fine exact matcher.
        assert!(subscribe("match=%7Bx").expect("valid").compile(&hub()).is_ok());
        assert!(subscribe("match_exact=%7Bx").expect("valid").compile(&hub()).is_ok());
    }

    #[test]
    fn update_spec_example() {
        let parsed = accepted("topic=https://example.com/foo&data=the%20content");
        assert_eq!(
            parsed,
            Update {
                topics: vec!["https://example.com/foo".to_owned()],
                data: Some("the content".to_owned()),
                id: None,
                event_type: None,
                retry: None,
                private: false,
            }
        );
    }

    #[test]
    fn update_every_field() {
        let parsed = accepted(
            "topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&topic=https%3A%2F%2Fexample.com%2Fusers%2Fdunglas\
             &data=%7B%22a%22%3A1%7D%0D%0Aline+2&id=urn%3Auuid%3Ae1ee88e2&type=update&retry=1500&private=on\
             &unknown=x&authorization=y",
        );
        assert_eq!(parsed.topics, ["https://example.com/books/1", "https://example.com/users/dunglas"]);
        assert_eq!(parsed.data.as_deref(), Some("{\"a\":1}\r\nline 2"));
        assert_eq!(parsed.id.as_deref(), Some("urn:uuid:e1ee88e2"));
        assert_eq!(parsed.event_type.as_deref(), Some("update"));
        assert_eq!(parsed.retry, Some(1500));
        assert!(parsed.private);
    }

    #[test]
    fn update_topics_keep_order_and_non_ascii() {
        let parsed = accepted("topic=c&topic=a&topic=b&topic=a");
        assert_eq!(parsed.topics, ["c", "a", "b", "a"], "canonical first, alternates as sent");
        let iri = accepted("topic=https%3A%2F%2Fex%C3%A4mple.com%2Fcaf%C3%A9%3Fq%3D1%23x%25");
        assert_eq!(iri.topics, ["https://exämple.com/café?q=1#x%"]);
        assert_eq!(accepted("topic=**").topics, ["**"]);
        assert_eq!(accepted("topic=a*").topics, ["a*"]);
    }

    #[test]
    fn update_needs_a_topic() {
        for form in ["", "data=x", "Topic=x", "topics=x", "id=1&private"] {
            let err = update(form).expect_err(form);
            assert_eq!(err.status(), 400);
            assert_eq!(err.message(), "no topic: an update needs at least one topic field");
        }
    }

    #[test]
    fn update_refuses_the_wildcard_topic() {
        for form in ["topic=*", "topic=%2A", "topic=a&topic=*"] {
            assert_eq!(status(form), 400, "{form}");
        }
        let err = update("topic=a&topic=*").expect_err("wildcard");
        assert_eq!(err.message(), "topic #2 is \"*\", which is reserved for the wildcard matcher");
    }

    #[test]
    fn update_private_is_presence() {
        for form in [
            "topic=a&private=on",
            "topic=a&private",
            "topic=a&private=",
            "topic=a&private=false",
            "private=0&topic=a",
        ] {
            assert!(accepted(form).private, "{form}");
        }
        assert!(!accepted("topic=a&Private=on&privat=on").private);
    }

    #[test]
    fn update_data() {
        assert_eq!(accepted("topic=a").data, None);
        assert_eq!(accepted("topic=a&data=").data.as_deref(), Some(""));
        assert_eq!(accepted("topic=a&data").data.as_deref(), Some(""));
        assert_eq!(accepted("topic=a&data=1&data=2").data.as_deref(), Some("1"), "the first wins");
        // Controls and format characters are fine in data: it is split into lines, not checked.
        assert_eq!(accepted("topic=a&data=%00%E2%80%8B%0A").data.as_deref(), Some("\0\u{200b}\n"));
        let err = update("topic=a&data=%FF").expect_err("not UTF-8");
        assert_eq!((err.status(), err.message()), (400, "data is not valid UTF-8"));
        let limits = UpdateLimits { max_data_bytes: 3, ..UpdateLimits::default() };
        let parse = |form: &str| Update::parse(form.as_bytes(), &hub(), &limits);
        assert_eq!(parse("topic=a&data=abc").expect("at the limit").data.as_deref(), Some("abc"));
        assert_eq!(parse("topic=a&data=%61%62%63").expect("decoded length").data.as_deref(), Some("abc"));
        let err = parse("topic=a&data=abcd").expect_err("over");
        assert_eq!((err.status(), err.message()), (413, "data is 4 bytes long, over the limit of 3"));
    }

    #[test]
    fn update_id() {
        assert_eq!(accepted("topic=a&id=").id, None, "empty: the hub makes one");
        assert_eq!(accepted("topic=a&id=a%23b").id.as_deref(), Some("a#b"));
        assert_eq!(accepted("topic=a&id=Earliest").id.as_deref(), Some("Earliest"));
        assert_eq!(accepted("topic=a&id=earliest2").id.as_deref(), Some("earliest2"));
        assert_eq!(accepted("topic=a&id=%C3%A9").id.as_deref(), Some("é"));
        assert_eq!(accepted("topic=a&id=1&id=%23").id.as_deref(), Some("1"), "the first wins");
        for (form, status_code, message) in [
            ("topic=a&id=%23frag", 400, "id starts with '#', which is reserved for ids the hub makes"),
            ("topic=a&id=#", 400, "id starts with '#', which is reserved for ids the hub makes"),
            (
                "topic=a&id=earliest",
                400,
                "id is \"earliest\", which is reserved for requesting the whole history",
            ),
            ("topic=a&id=a%0Ab", 400, "id holds the control character U+000A at byte 1"),
            ("topic=a&id=a%0D", 400, "id holds the control character U+000D at byte 1"),
            ("topic=a&id=%C2%9F", 400, "id holds the control character U+009F at byte 0"),
            (
                "topic=a&id=%EF%BB%BF1",
                400,
                "id holds the invisible Unicode format character U+FEFF at byte 0",
            ),
            ("topic=a&id=%FF", 400, "id is not valid UTF-8 (bad byte at offset 0)"),
        ] {
            let err = update(form).expect_err(form);
            assert_eq!((err.status(), err.message()), (status_code, message), "{form}");
        }
        assert_eq!(
            accepted(&format!("topic=a&id={}", "i".repeat(MAX_ID_BYTES))).id.map(|i| i.len()),
            Some(MAX_ID_BYTES)
        );
        let err = update(&format!("topic=a&id={}", "i".repeat(MAX_ID_BYTES + 1))).expect_err("long");
        assert_eq!((err.status(), err.message()), (413, "id is 1025 bytes long, over the limit of 1024"));
        let limits = UpdateLimits { max_id_bytes: 2, ..UpdateLimits::default() };
        assert!(Update::parse(b"topic=a&id=ab", &hub(), &limits).is_ok());
        assert_eq!(Update::parse(b"topic=a&id=abc", &hub(), &limits).expect_err("long").status(), 413);
    }

    #[test]
    fn update_type() {
        assert_eq!(accepted("topic=a&type=").event_type, None);
        assert_eq!(accepted("topic=a&type=Mercure").event_type.as_deref(), Some("Mercure"));
        assert_eq!(accepted("topic=a&type=mercure2").event_type.as_deref(), Some("mercure2"));
        assert_eq!(accepted("topic=a&type=x&type=mercure").event_type.as_deref(), Some("x"));
        for (form, status_code, message) in [
            ("topic=a&type=mercure", 400, "type is \"mercure\", which is reserved for events the hub makes"),
            ("topic=a&type=a%0Aid%3A+1", 400, "type holds the control character U+000A at byte 1"),
            (
                "topic=a&type=%E2%81%A0",
                400,
                "type holds the invisible Unicode format character U+2060 at byte 0",
            ),
            ("topic=a&type=%C3", 400, "type is not valid UTF-8 (bad byte at offset 0)"),
        ] {
            let err = update(form).expect_err(form);
            assert_eq!((err.status(), err.message()), (status_code, message), "{form}");
        }
        assert!(update(&format!("topic=a&type={}", "t".repeat(MAX_TYPE_BYTES))).is_ok());
        let err = update(&format!("topic=a&type={}", "t".repeat(MAX_TYPE_BYTES + 1))).expect_err("long");
        assert_eq!((err.status(), err.message()), (413, "type is 129 bytes long, over the limit of 128"));
    }

    #[test]
    fn update_retry() {
        assert_eq!(accepted("topic=a&retry=").retry, None);
        assert_eq!(accepted("topic=a&retry=0").retry, Some(0));
        assert_eq!(accepted("topic=a&retry=007").retry, Some(7));
        assert_eq!(accepted("topic=a&retry=18446744073709551615").retry, Some(u64::MAX));
        assert_eq!(accepted("topic=a&retry=5&retry=x").retry, Some(5));
        for form in [
            "topic=a&retry=-1",
            "topic=a&retry=1.5",
            "topic=a&retry=+1",
            "topic=a&retry=%2B1",
            "topic=a&retry=1e3",
            "topic=a&retry=0x10",
            "topic=a&retry=%EF%BC%91",
            "topic=a&retry=%FF",
        ] {
            let err = update(form).expect_err(form);
            assert_eq!(
                (err.status(), err.message()),
                (400, "retry must be ASCII digits only (milliseconds)"),
                "{form}"
            );
        }
        let err = update("topic=a&retry=18446744073709551616").expect_err("overflow");
        assert_eq!((err.status(), err.message()), (400, "retry is too large for 64 bits"));
    }

    #[test]
    fn update_topic_rules() {
        for (form, status_code, message) in [
            ("topic=a%0A", 400, "topic #1 holds the control character U+000A at byte 1"),
            (
                "topic=ok&topic=%E2%80%8Bx",
                400,
                "topic #2 holds the invisible Unicode format character U+200B at byte 0",
            ),
            ("topic=%C2%AD", 400, "topic #1 holds the invisible Unicode format character U+00AD at byte 0"),
            (
                "topic=a%E2%80%AEb",
                400,
                "topic #1 holds the invisible Unicode format character U+202E at byte 1",
            ),
            (
                "topic=%EF%BB%BF",
                400,
                "topic #1 holds the invisible Unicode format character U+FEFF at byte 0",
            ),
            ("topic=%FF", 400, "topic #1 is not valid UTF-8 (bad byte at offset 0)"),
        ] {
            let err = update(form).expect_err(form);
            assert_eq!((err.status(), err.message()), (status_code, message), "{form}");
        }
    }

    #[test]
    fn update_topic_caps() {
        let at_cap: Vec<String> = (0..MAX_TOPICS).map(|i| format!("topic=t{i}")).collect();
        assert_eq!(accepted(&at_cap.join("&")).topics.len(), MAX_TOPICS);
        let err = update(&format!("{}&topic=more", at_cap.join("&"))).expect_err("too many");
        assert_eq!((err.status(), err.message()), (413, "too many topics: at most 64 per update"));
        let long = "a".repeat(MAX_TOPIC_BYTES);
        assert_eq!(accepted(&format!("topic={long}")).topics, [long.as_str()]);
        let err = update(&format!("topic=x&topic={long}a")).expect_err("too long");
        assert_eq!(
            (err.status(), err.message()),
            (413, "topic #2 is 2049 bytes long, over the limit of 2048")
        );
        let limits = UpdateLimits { max_topics: 2, max_topic_bytes: 3, ..UpdateLimits::default() };
        let parse = |form: &str| Update::parse(form.as_bytes(), &hub(), &limits);
        assert!(parse("topic=abc&topic=def").is_ok());
        assert_eq!(parse("topic=a&topic=b&topic=c").expect_err("three").status(), 413);
        assert_eq!(parse("topic=abcd").expect_err("four bytes").status(), 413);
    }

    #[test]
    fn reserved_namespace_variants() {
        let hub = hub();
        for topic in [
            "",
            "#fragment",
            "?query",
            "https://localhost/.well-known/mercure",
            "https://localhost/.well-known/mercure/",
            "https://localhost/.well-known/mercure?x=1#y",
            "https://localhost/.well-known/mercure/subscriptions/x",
            "/.well-known/mercure",
            "/.well-known/mercure/subscriptions/exact/a/b",
            "https://other.example/.well-known/mercure/subscriptions/x",
            "http://other.example:8080/.well-known/mercure",
            "//other.example/.well-known/mercure/x",
            "HTTPS://LOCALHOST/.well-known/mercure",
            "mailto:/.well-known/mercure",
            "mercure",
            "mercure/subscriptions",
            "./mercure",
            "../.well-known/mercure/x",
            "/.well-known/%6Dercure/x",
            "/.well-known/%6dercure",
            "/%2Ewell-known/mercure",
            "/%2ewell%2Dknown/merc%75re",
            "/.well-known/mercure/../mercure/x",
            "/.well-known/mercure/%2e%2e/mercure/x",
            "/.well-known/mercure/.%2E/mercure",
            "/a/b/../../.well-known/mercure",
            "/.well-known/./mercure",
            "/.well-known/%2e/mercure/x",
            "/x/%2E%2E/.well-known/mercure",
            "\\.well-known\\mercure\\x",
        ] {
            assert!(in_reserved_namespace(topic, &hub), "{topic:?} should be reserved");
        }
        for topic in [
            "foo",
            "mercurey",
            "/.well-known/mercurey",
            "/.well-known/mercure-x",
            "/.well-known/mercure%2Fx",
            "/.well-known%2Fmercure",
            "/.WELL-KNOWN/mercure",
            "/.well-known/Mercure",
            "/.well-known/mercure/../x",
            "/x/.well-known/mercure",
            "https://example.com/foo",
            "urn:uuid:e1ee88e2-532a-4d6f-ba70-f0f8bd584022",
            "urn:/.well-known/mercure%3Fx",
            "https://[oops/.well-known/mercure",
            "https://localhost:99999/.well-known/mercure",
            "/.well-known/%2E%2E%2E/mercure",
            "https://localhost/.well-known//mercure/../mercure",
        ] {
            assert!(!in_reserved_namespace(topic, &hub), "{topic:?} should not be reserved");
        }
        // Another hub path; a trailing slash on it changes nothing.
        for base in ["https://hub.example/hub", "https://hub.example/hub/"] {
            let other = Url::parse(base).expect("static URL");
            assert!(in_reserved_namespace("/hub", &other), "{base}");
            assert!(in_reserved_namespace("/hub/x", &other), "{base}");
            assert!(in_reserved_namespace("https://elsewhere/h%75b/x", &other), "{base}");
            assert!(!in_reserved_namespace("/hubx", &other), "{base}");
            assert!(!in_reserved_namespace("/.well-known/mercure", &other), "{base}");
        }
    }

    #[test]
    fn update_refuses_reserved_topics() {
        for form in [
            "topic=%2F.well-known%2Fmercure%2Fsubscriptions%2Fx",
            "topic=https%3A%2F%2Fother.example%2F.well-known%2Fmercure%2Fsubscriptions%2Fx",
            "topic=%2F.well-known%2F%256Dercure%2Fx",
            "topic=%2F.well-known%2Fmercure%2F..%2Fmercure%2Fx",
            "topic=mercure",
            "topic=",
            "topic",
            "topic=ok&topic=%2F.well-known%2Fmercure",
        ] {
            let err = update(form).expect_err(form);
            assert_eq!(err.status(), 400, "{form}");
            assert!(
                err.message()
                    .ends_with("addresses the hub's reserved namespace (/.well-known/mercure and below)"),
                "{err}"
            );
        }
        assert!(update("topic=https%3A%2F%2F%5Boops").is_ok(), "a topic that does not parse is not reserved");
    }

    #[test]
    fn decoding_matches_form_urlencoded_on_valid_utf8() {
        for input in ["a=b&c=d", "a+b=c+d", "%41%zz%4=%", "=x&y=&&z", "a=b=c", "é=%C3%A9", "%E2%82%AC+%2B"] {
            let ours: Vec<(String, String)> = pairs(input.as_bytes())
                .map(|(n, v)| {
                    (
                        String::from_utf8(n.into_owned()).expect("utf8"),
                        String::from_utf8(v.into_owned()).expect("utf8"),
                    )
                })
                .collect();
            let theirs: Vec<(String, String)> = url::form_urlencoded::parse(input.as_bytes())
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, theirs, "{input}");
        }
    }

    fn form_bytes() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just(b"match".to_vec()),
            Just(b"match_exact".to_vec()),
            Just(b"match_urlpattern".to_vec()),
            Just(b"topic".to_vec()),
            Just(b"last_event_id".to_vec()),
            Just(b"lastEventID".to_vec()),
            Just(b"data".to_vec()),
            Just(b"id".to_vec()),
            Just(b"type".to_vec()),
            Just(b"retry".to_vec()),
            Just(b"private".to_vec()),
            Just(b"MATCH_x".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        let value = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            "[%a-z0-9/:.{}?#*+,;=&@!$'()\\[\\]~-]{0,40}".prop_map(String::into_bytes),
            Just(b"*".to_vec()),
            Just(b"%2F.well-known%2Fmercure%2Fx".to_vec()),
        ];
        prop::collection::vec((name, prop::option::of(value)), 0..12).prop_map(|pairs| {
            let mut out = Vec::new();
            for (i, (name, value)) in pairs.into_iter().enumerate() {
                if i > 0 {
                    out.push(b'&');
                }
                out.extend(name);
                if let Some(value) = value {
                    out.push(b'=');
                    out.extend(value);
                }
            }
            out
        })
    }

    proptest! {
        #[test]
        fn subscribe_never_panics(query in prop_oneof![form_bytes(), prop::collection::vec(any::<u8>(), 0..200)]) {
            if let Ok(parsed) = Subscribe::parse(&query) {
                prop_assert!(!parsed.matchers.is_empty() && parsed.matchers.len() <= MAX_MATCHERS);
                for (_, value) in &parsed.matchers {
                    prop_assert!(rules::check(value, MAX_TOPIC_BYTES).is_ok());
                }
                // Compiling may refuse a value, but never panics.
                let _ = parsed.compile(&hub());
            }
        }

        #[test]
        fn update_never_panics(form in prop_oneof![form_bytes(), prop::collection::vec(any::<u8>(), 0..200)]) {
            match Update::parse(&form, &hub(), &UpdateLimits::default()) {
                Ok(parsed) => {
                    prop_assert!(!parsed.topics.is_empty() && parsed.topics.len() <= MAX_TOPICS);
                    for topic in &parsed.topics {
                        prop_assert!(topic != "*" && !in_reserved_namespace(topic, &hub()));
                        prop_assert!(rules::check(topic, MAX_TOPIC_BYTES).is_ok());
                    }
                }
                Err(e) => prop_assert!(e.status() == 400 || e.status() == 413),
            }
        }

        #[test]
        fn decoding_agrees_with_form_urlencoded(input in prop::collection::vec(any::<u8>(), 0..100)) {
            let ours: Vec<(String, String)> = pairs(&input)
                .map(|(n, v)| (String::from_utf8_lossy(&n).into_owned(), String::from_utf8_lossy(&v).into_owned()))
                .collect();
            let theirs: Vec<(String, String)> =
                url::form_urlencoded::parse(&input).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn url_patterns_never_panic(value in "[a-zA-Z0-9/:.{}?#*+@()\\[\\]\\\\é%!$&',;=~_ -]{0,24}",
                                    topic in "[a-zA-Z0-9/:.?#@\\[\\]\\\\é%!$&',;=~_ -]{0,24}") {
            if let Ok(matcher) = Matcher::new(UrlPattern, &value, &hub()) {
                let _ = matcher.matches(&topic);
            }
        }

        #[test]
        fn matchers_never_panic(kind in prop_oneof![Just(Exact), Just(UrlPattern), Just(Legacy)],
                                value in "[%a-z0-9/:.{}?#*+,;=&@!$'()\\[\\]~\\\\-]{0,40}",
                                topic in "[%a-z0-9/:.{}?#*+,;=&@!$'()\\[\\]~\\\\é-]{0,40}") {
            if let Ok(matcher) = Matcher::new(kind, &value, &hub()) {
                let _ = matcher.matches(&topic);
                prop_assert!(matcher.matches(&value) || kind == UrlPattern, "a selector matches itself");
            }
        }
    }
}
