//! Routing: what a parsed request asks for, checked against the configuration, with no I/O.

use std::fmt;

use crate::config::Config;
use crate::event::{Draft, Event, EventError};
use crate::http::request::{Credentials, Head, Method};
use crate::sse;
use crate::topic::{self, TopicError};

/// What a request asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Open an event stream (or, for `HEAD`, only its headers).
    Subscribe(Subscribe),
    /// Publish the body as an event; the body is read next.
    Publish(PublishTarget),
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `OPTIONS /events` or on the hub: CORS preflight.
    Preflight,
    /// `GET /.well-known/mercure`: a Mercure subscription, checked by the loop (its token needs the
    /// loop's verifier and cache).
    HubSubscribe(Box<HubSubscribe>),
}

/// A subscription to the Mercure hub as the request states it; the hub's rules apply in the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSubscribe {
    /// The raw query (matchers, `last_event_id`, `lastEventID`, the legacy `authorization`).
    pub query: String,
    /// The `Last-Event-ID` header, which wins over the query's.
    pub last_event_id: Option<String>,
    /// Only the headers are wanted (`HEAD`).
    pub head_only: bool,
    /// Where its token may be.
    pub credentials: Credentials,
}

/// A subscribe request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Topic names; empty means every topic.
    pub topics: Vec<String>,
    /// The id to resume after (header first, then query); `None` when absent or not a `u64`.
    pub last_event_id: Option<u64>,
    /// Only the headers are wanted (`HEAD`).
    pub head_only: bool,
    /// With JWT keys configured: where its token may be (its topics need `subscribe` rights).
    pub auth: Option<Box<Credentials>>,
}

/// Where a publish goes, from the query; the body decides the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTarget {
    /// Topics named in the query; empty means the body is a Mercure-style form.
    pub topics: Vec<String>,
    /// `event=` from the query.
    pub event_type: Option<String>,
    /// With JWT keys configured, or on the hub: where its token may be.
    pub auth: Option<Box<Credentials>>,
    /// A Mercure publication (`POST /.well-known/mercure`): the body is the hub's form.
    pub hub: bool,
}

/// Why a request was refused after its head parsed; mapped to statuses in [`crate::http::response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Unknown path (`404`).
    NotFound,
    /// Known path, other method (`405`), with the `Allow` value.
    MethodNotAllowed(&'static str),
    /// Missing or wrong token (`401`).
    Unauthorized,
    /// A bad topic, event type, data or field (`400`), with the reason.
    BadRequest(String),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::NotFound => f.write_str("not found"),
            RouteError::MethodNotAllowed(_) => f.write_str("method not allowed"),
            RouteError::Unauthorized => f.write_str("missing or wrong token"),
            RouteError::BadRequest(reason) => f.write_str(reason),
        }
    }
}

impl From<TopicError> for RouteError {
    fn from(e: TopicError) -> Self {
        RouteError::BadRequest(e.to_string())
    }
}

impl From<EventError> for RouteError {
    fn from(e: EventError) -> Self {
        RouteError::BadRequest(e.to_string())
    }
}

/// `Allow` for `/events`.
pub const ALLOW_EVENTS: &str = "GET, HEAD, POST, OPTIONS";
/// The Mercure hub's path (feature `mercure`).
pub const HUB_PATH: &str = "/.well-known/mercure";
/// `Allow` for the hub.
pub const ALLOW_HUB: &str = "GET, HEAD, POST, OPTIONS";
/// `Allow` for `/health` and `/metrics`.
pub const ALLOW_READ_ONLY: &str = "GET, HEAD";

/// Decides what `head` asks for, applying tokens and validating the query.
pub fn route(head: &Head, config: &Config) -> Result<Route, RouteError> {
    match head.path.as_str() {
        "/events" => match head.method {
            Method::Get | Method::Head if config.jwt_enabled() => {
                let mut route = subscribe(head)?;
                if let Route::Subscribe(sub) = &mut route {
                    sub.auth = Some(Box::new(head.credentials.clone()));
                }
                Ok(route)
            }
            Method::Post if config.jwt_enabled() => {
                let mut route = publish_target(head)?;
                if let Route::Publish(target) = &mut route {
                    target.auth = Some(Box::new(head.credentials.clone()));
                }
                Ok(route)
            }
            Method::Get | Method::Head => {
                static_token(head, config, Method::Get)?;
                subscribe(head)
            }
            Method::Post => {
                static_token(head, config, Method::Post)?;
                publish_target(head)
            }
            Method::Options => Ok(Route::Preflight),
            Method::Other => Err(RouteError::MethodNotAllowed(ALLOW_EVENTS)),
        },
        HUB_PATH if cfg!(feature = "mercure") => match head.method {
            Method::Get | Method::Head => {
                if !config.jwt_enabled() {
                    static_token(head, config, Method::Get)?;
                }
                Ok(Route::HubSubscribe(Box::new(HubSubscribe {
                    query: head.query.clone(),
                    last_event_id: head.last_event_id.clone(),
                    head_only: head.method == Method::Head,
                    credentials: head.credentials.clone(),
                })))
            }
            Method::Post => {
                if !config.jwt_enabled() {
                    static_token(head, config, Method::Post)?;
                }
                Ok(Route::Publish(PublishTarget {
                    topics: Vec::new(),
                    event_type: None,
                    auth: Some(Box::new(head.credentials.clone())),
                    hub: true,
                }))
            }
            Method::Options => Ok(Route::Preflight),
            Method::Other => Err(RouteError::MethodNotAllowed(ALLOW_HUB)),
        },
        "/health" | "/metrics" => match head.method {
            Method::Get | Method::Head if head.path == "/health" => Ok(Route::Health),
            Method::Get | Method::Head => Ok(Route::Metrics),
            _ => Err(RouteError::MethodNotAllowed(ALLOW_READ_ONLY)),
        },
        _ => Err(RouteError::NotFound),
    }
}

/// The static tokens, where no JWT key is set (on `/events` and on the hub alike): `--subscribe-token`
/// for `Get` (the bearer token or the `ssed_token` cookie), `--publish-token` for `Post` (the bearer
/// token).
fn static_token(head: &Head, config: &Config, method: Method) -> Result<(), RouteError> {
    let (token, offered) = match method {
        Method::Post => (&config.publish_token, [head.bearer.as_deref(), None]),
        _ => (&config.subscribe_token, [head.bearer.as_deref(), head.cookie_token.as_deref()]),
    };
    match token {
        Some(token) if !offered.into_iter().flatten().any(|o| token_matches(o, token)) => {
            Err(RouteError::Unauthorized)
        }
        _ => Ok(()),
    }
}

/// Compares a presented token with the configured one in time independent of where they differ, so
/// the comparison leaks nothing but the length.
pub fn token_matches(offered: &str, expected: &str) -> bool {
    let (a, b) = (offered.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold back into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Validates a topic and adds it, up to [`topic::MAX_TOPICS`] per request.
fn push_topic(topics: &mut Vec<String>, name: String) -> Result<(), RouteError> {
    topic::validate(name.as_bytes())?;
    if topics.len() == topic::MAX_TOPICS {
        return Err(RouteError::BadRequest(format!("too many topics: at most {}", topic::MAX_TOPICS)));
    }
    topics.push(name);
    Ok(())
}

/// Sets a single-valued parameter: a second value is refused rather than one silently winning, since
/// which one the client meant is a guess (and a proxy or cache in between may have kept the other).
/// `field` names it in the refusal.
fn set_once<T>(slot: &mut Option<T>, value: T, field: &str) -> Result<(), RouteError> {
    if slot.is_some() {
        return Err(RouteError::BadRequest(format!("{field} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

fn subscribe(head: &Head) -> Result<Route, RouteError> {
    let mut topics = Vec::new();
    let mut query_last = None;
    for (key, value) in query_pairs(&head.query)? {
        match key.as_str() {
            "topic" => push_topic(&mut topics, value)?,
            "lastEventId" | "lastEventID" => {
                set_once(&mut query_last, value, "`lastEventId` (or `lastEventID`)")?;
            }
            _ => {}
        }
    }
    let last = head.last_event_id.clone().or(query_last);
    Ok(Route::Subscribe(Subscribe {
        topics,
        last_event_id: last.and_then(|v| parse_event_id(&v)),
        head_only: head.method == Method::Head,
        auth: None,
    }))
}

fn publish_target(head: &Head) -> Result<Route, RouteError> {
    let mut target = PublishTarget { topics: Vec::new(), event_type: None, auth: None, hub: false };
    for (key, value) in query_pairs(&head.query)? {
        match key.as_str() {
            "topic" => push_topic(&mut target.topics, value)?,
            "event" | "type" => {
                sse::validate_event_type(value.as_bytes())
                    .map_err(|e| RouteError::BadRequest(e.to_string()))?;
                set_once(&mut target.event_type, value, "`event` (or `type`)")?;
            }
            _ => {}
        }
    }
    if target.topics.is_empty() && !head.form {
        return Err(RouteError::BadRequest("missing topic".into()));
    }
    Ok(Route::Publish(target))
}

/// Interprets a publish body, raw data when the query named topics, a form otherwise, into a
/// validated event.
///
/// The data needs no size check of its own: it is part of the body, which `--max-body` capped
/// (`413`) while it was read.
pub fn publish_body(target: PublishTarget, body: Vec<u8>) -> Result<Event, RouteError> {
    let max_data = usize::MAX;
    if !target.topics.is_empty() {
        let draft =
            Draft { topics: target.topics, event_type: target.event_type, data: body, ..Draft::default() };
        return Ok(draft.validate(max_data)?);
    }
    let mut topics = Vec::new();
    let (mut data, mut event_type, mut retry_ms) = (None, None, None);
    let body = std::str::from_utf8(&body).map_err(|_| RouteError::BadRequest("form is not UTF-8".into()))?;
    for (key, value) in form_pairs(body)? {
        match key.as_str() {
            "topic" => push_topic(&mut topics, value)?,
            "data" => set_once(&mut data, value, "`data`")?,
            "type" => {
                sse::validate_event_type(value.as_bytes())
                    .map_err(|e| RouteError::BadRequest(e.to_string()))?;
                set_once(&mut event_type, value, "`type`")?;
            }
            "retry" => {
                let ms: u64 =
                    value.parse().map_err(|_| RouteError::BadRequest("bad retry: not a number".into()))?;
                set_once(&mut retry_ms, ms, "`retry`")?;
            }
            "id" => {
                return Err(RouteError::BadRequest(
                    "ids are assigned by the server: drop the id field".into(),
                ))
            }
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(EventError::NoTopic.into());
    }
    if target.event_type.is_some() && event_type.is_some() {
        return Err(RouteError::BadRequest("event type given twice: in the query and in the form".into()));
    }
    let draft = Draft {
        topics,
        event_type: target.event_type.or(event_type),
        retry_ms,
        data: data.unwrap_or_default().into_bytes(),
        ..Draft::default()
    };
    Ok(draft.validate(max_data)?)
}

/// Parses an event id the way the contract reads `Last-Event-ID`: a decimal `u64`, else absent.
pub fn parse_event_id(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn query_pairs(query: &str) -> Result<Vec<(String, String)>, RouteError> {
    let query =
        std::str::from_utf8(query.as_bytes()).map_err(|_| RouteError::BadRequest("bad query".into()))?;
    form_pairs(query)
}

/// Splits `a=1&b=2`, percent-decoding keys and values; `+` is a space in forms (and in queries,
/// where it would only ever make a topic invalid).
fn form_pairs(text: &str) -> Result<Vec<(String, String)>, RouteError> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+`; the result must be UTF-8.
pub fn percent_decode(text: &str) -> Result<String, RouteError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = bytes
                    .get(at + 1..at + 3)
                    .ok_or_else(|| RouteError::BadRequest("bad percent-encoding".into()))?;
                let text = std::str::from_utf8(hex)
                    .map_err(|_| RouteError::BadRequest("bad percent-encoding".into()))?;
                let value = u8::from_str_radix(text, 16)
                    .map_err(|_| RouteError::BadRequest("bad percent-encoding".into()))?;
                out.push(value);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            b => {
                out.push(b);
                at += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| RouteError::BadRequest("percent-encoded text is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_head;

    fn head(raw: &str) -> Head {
        parse_head(raw.as_bytes()).unwrap().unwrap().0
    }

    fn route_raw(raw: &str, config: &Config) -> Result<Route, RouteError> {
        route(&head(raw), config)
    }

    #[test]
    fn subscribe_with_topics_and_resume() {
        let config = Config::default();
        let got =
            route_raw("GET /events?topic=a&topic=room%2F1&lastEventId=7 HTTP/1.1\r\n\r\n", &config).unwrap();
        assert_eq!(
            got,
            Route::Subscribe(Subscribe {
                topics: vec!["a".into(), "room/1".into()],
                last_event_id: Some(7),
                head_only: false,
                auth: None,
            })
        );
        let got =
            route_raw("GET /events?lastEventID=7 HTTP/1.1\r\nLast-Event-ID: 9\r\n\r\n", &config).unwrap();
        let Route::Subscribe(sub) = got else { panic!() };
        assert_eq!(sub.last_event_id, Some(9), "the header wins");
        assert!(sub.topics.is_empty(), "no topic: every topic");
        let Route::Subscribe(sub) =
            route_raw("HEAD /events HTTP/1.1\r\nLast-Event-ID: x1\r\n\r\n", &config).unwrap()
        else {
            panic!()
        };
        assert_eq!(sub.last_event_id, None, "not a u64: absent");
        assert!(sub.head_only);
    }

    #[test]
    fn bad_topics_are_refused() {
        let config = Config::default();
        for query in ["topic=", "topic=a%20b", "topic=a%0Ab", "topic=%ZZ", "topic=a+b", "topic=%C3%A9"] {
            let raw = format!("GET /events?{query} HTTP/1.1\r\n\r\n");
            assert!(matches!(route_raw(&raw, &config), Err(RouteError::BadRequest(_))), "{query}");
        }
    }

    #[test]
    fn topics_per_request_are_capped() {
        let config = Config::default();
        let query = |n: usize| (0..n).map(|i| format!("topic=t{i}")).collect::<Vec<_>>().join("&");
        let at_cap = query(topic::MAX_TOPICS);
        let over = query(topic::MAX_TOPICS + 1);
        assert!(route_raw(&format!("GET /events?{at_cap} HTTP/1.1\r\n\r\n"), &config).is_ok());
        let refused = route_raw(&format!("GET /events?{over} HTTP/1.1\r\n\r\n"), &config);
        assert!(matches!(refused, Err(RouteError::BadRequest(_))), "{refused:?}");
        let refused = route_raw(&format!("POST /events?{over} HTTP/1.1\r\n\r\n"), &config);
        assert!(matches!(refused, Err(RouteError::BadRequest(_))), "{refused:?}");
        let target = PublishTarget { topics: Vec::new(), event_type: None, auth: None, hub: false };
        assert!(publish_body(target.clone(), at_cap.into_bytes()).is_ok());
        assert!(matches!(publish_body(target, over.into_bytes()), Err(RouteError::BadRequest(_))));
    }

    #[test]
    fn paths_and_methods() {
        let config = Config::default();
        assert_eq!(route_raw("GET /health HTTP/1.1\r\n\r\n", &config), Ok(Route::Health));
        assert_eq!(route_raw("HEAD /metrics HTTP/1.1\r\n\r\n", &config), Ok(Route::Metrics));
        assert_eq!(route_raw("OPTIONS /events HTTP/1.1\r\n\r\n", &config), Ok(Route::Preflight));
        assert_eq!(route_raw("GET /nope HTTP/1.1\r\n\r\n", &config), Err(RouteError::NotFound));
        assert_eq!(
            route_raw("DELETE /events HTTP/1.1\r\n\r\n", &config),
            Err(RouteError::MethodNotAllowed(ALLOW_EVENTS))
        );
        assert_eq!(
            route_raw("POST /health HTTP/1.1\r\n\r\n", &config),
            Err(RouteError::MethodNotAllowed(ALLOW_READ_ONLY))
        );
    }

    #[test]
    fn tokens() {
        let config = Config {
            publish_token: Some("pub".into()),
            subscribe_token: Some("sub".into()),
            ..Config::default()
        };
        let sub = "GET /events HTTP/1.1\r\n";
        assert_eq!(route_raw(&format!("{sub}\r\n"), &config), Err(RouteError::Unauthorized));
        assert_eq!(
            route_raw(&format!("{sub}Authorization: Bearer pub\r\n\r\n"), &config),
            Err(RouteError::Unauthorized)
        );
        assert!(route_raw(&format!("{sub}Authorization: Bearer sub\r\n\r\n"), &config).is_ok());
        assert!(route_raw(&format!("{sub}Cookie: ssed_token=sub\r\n\r\n"), &config).is_ok());
        let publish = "POST /events?topic=a HTTP/1.1\r\n";
        assert_eq!(route_raw(&format!("{publish}\r\n"), &config), Err(RouteError::Unauthorized));
        assert_eq!(
            route_raw(&format!("{publish}Cookie: ssed_token=pub\r\n\r\n"), &config),
            Err(RouteError::Unauthorized)
        );
        assert!(route_raw(&format!("{publish}Authorization: Bearer pub\r\n\r\n"), &config).is_ok());
        assert!(!token_matches("pu", "pub") && !token_matches("puc", "pub") && token_matches("pub", "pub"));
    }

    #[test]
    fn publish_raw_and_form() {
        let config = Config::default();
        let Ok(Route::Publish(target)) =
            route_raw("POST /events?topic=a&event=ping HTTP/1.1\r\n\r\n", &config)
        else {
            panic!()
        };
        let publish = publish_body(target, b"x=1&y".to_vec()).unwrap();
        assert_eq!(
            publish.data(),
            "x=1&y",
            "with a topic in the query, the body is data whatever it looks like"
        );
        assert_eq!(publish.event_type(), Some("ping"));

        let form = "POST /events HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n";
        let Ok(Route::Publish(target)) = route_raw(form, &config) else { panic!() };
        let publish =
            publish_body(target.clone(), b"topic=a&topic=b&data=line+1%0Aline%202&type=t&retry=500".to_vec())
                .unwrap();
        assert_eq!(publish.topics(), vec!["a", "b"]);
        assert_eq!(publish.data(), "line 1\nline 2");
        assert_eq!(publish.event_type(), Some("t"));
        assert_eq!(publish.retry_ms(), Some(500));
        assert!(matches!(
            publish_body(target.clone(), b"topic=a&id=5".to_vec()),
            Err(RouteError::BadRequest(_))
        ));
        assert!(matches!(publish_body(target.clone(), b"data=x".to_vec()), Err(RouteError::BadRequest(_))));
        assert!(matches!(
            publish_body(target, b"topic=a&retry=soon".to_vec()),
            Err(RouteError::BadRequest(_))
        ));
    }

    #[test]
    fn single_valued_parameters_are_refused_twice() {
        let config = Config::default();
        for query in ["topic=a&lastEventId=1&lastEventId=2", "lastEventID=1&lastEventId=1"] {
            let refused = route_raw(&format!("GET /events?{query} HTTP/1.1\r\n\r\n"), &config);
            assert!(
                matches!(&refused, Err(RouteError::BadRequest(r)) if r.contains("given twice")),
                "{query}"
            );
        }
        for query in ["topic=a&event=x&event=y", "topic=a&event=x&type=x"] {
            let refused = route_raw(&format!("POST /events?{query} HTTP/1.1\r\n\r\n"), &config);
            assert!(
                matches!(&refused, Err(RouteError::BadRequest(r)) if r.contains("given twice")),
                "{query}"
            );
        }
        let form = PublishTarget { topics: Vec::new(), event_type: None, auth: None, hub: false };
        for (body, field) in [
            ("topic=a&data=x&data=y", "`data`"),
            ("topic=a&data=&data=", "`data`"),
            ("topic=a&type=x&type=y", "`type`"),
            ("topic=a&retry=1&retry=1", "`retry`"),
        ] {
            let refused = publish_body(form.clone(), body.as_bytes().to_vec());
            assert_eq!(refused, Err(RouteError::BadRequest(format!("{field} given twice"))), "{body}");
        }
        let typed =
            PublishTarget { topics: Vec::new(), event_type: Some("q".into()), auth: None, hub: false };
        assert!(matches!(
            publish_body(typed.clone(), b"topic=a&type=f".to_vec()),
            Err(RouteError::BadRequest(_))
        ));
        assert_eq!(publish_body(typed, b"topic=a".to_vec()).unwrap().event_type(), Some("q"));
        // `topic` is a list, and other fields once each are fine.
        let publish = publish_body(form, b"topic=a&data=x&topic=b&type=t&retry=5".to_vec()).unwrap();
        assert_eq!(
            publish,
            Draft {
                topics: vec!["a".into(), "b".into()],
                event_type: Some("t".into()),
                retry_ms: Some(5),
                data: b"x".to_vec(),
                ..Draft::default()
            }
            .validate(usize::MAX)
            .unwrap()
        );
    }

    #[test]
    fn publish_needs_a_topic_and_utf8() {
        let config = Config::default();
        assert!(matches!(
            route_raw("POST /events HTTP/1.1\r\n\r\n", &config),
            Err(RouteError::BadRequest(_))
        ));
        assert!(matches!(
            route_raw("POST /events?topic=a&event=%0A HTTP/1.1\r\n\r\n", &config),
            Err(RouteError::BadRequest(_))
        ));
        let target = PublishTarget { topics: vec!["a".into()], event_type: None, auth: None, hub: false };
        assert!(matches!(publish_body(target, vec![0xff, 0xfe]), Err(RouteError::BadRequest(_))));
    }

    #[test]
    fn event_ids() {
        assert_eq!(parse_event_id("42"), Some(42));
        assert_eq!(parse_event_id(" 42 "), Some(42));
        assert_eq!(parse_event_id("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-1", "+1", "1e3", "18446744073709551616", "0x10", "abc"] {
            assert_eq!(parse_event_id(bad), None, "{bad}");
        }
    }
}
