//! The Mercure hub at `/.well-known/mercure` and JWT rights on `/events`, over loopback sockets with
//! tokens signed here (jsonwebtoken) and the keys of `src/mercure/test_keys.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use ssed::Config;

use crate::support::*;

#[path = "../../src/mercure/test_keys.rs"]
#[allow(dead_code)]
mod keys;

/// The secret of the Mercure conformance suite and of these tests.
pub(crate) const SECRET: &str = "!ChangeThisMercureHubJWTSecretKey!";
/// The audience a request with `Host: test` stands for.
const AUD: &str = "https://test/.well-known/mercure";
const ISS: &str = "https://localhost";
pub(crate) const HUB: &str = "/.well-known/mercure";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hub_config() -> Config {
    Config { jwt_key: Some(SECRET.into()), ..Config::default() }
}

/// An authorization detail granting `actions` on `topics` (each `(match, match_type)`).
pub(crate) fn detail(actions: &[&str], topics: &[(&str, &str)]) -> Value {
    let topics: Vec<Value> = topics.iter().map(|(m, t)| json!({"match": m, "match_type": t})).collect();
    json!({"type": "https://mercure.rocks/authorization-detail", "actions": actions, "topics": topics})
}

/// Current-revision claims with `details`, valid for an hour.
pub(crate) fn claims(details: Vec<Value>) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "test", "exp": now() + 3600, "iat": now(), "authorization_details": details})
}

/// A token of `claims`, HS256 with the hub's secret and `typ: at+jwt`.
pub(crate) fn token(claims: &Value) -> String {
    let header = Header { typ: Some("at+jwt".into()), ..Header::new(Algorithm::HS256) };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

pub(crate) fn publisher_token() -> String {
    token(&claims(vec![detail(&["publish"], &[("*", "exact")])]))
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// A form with `pairs`, encoded as `URLSearchParams` would.
pub(crate) fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
}

/// Publishes `pairs` to the hub with `token`; the response.
pub(crate) fn hub_post(addr: std::net::SocketAddr, token: &str, pairs: &[(&str, &str)]) -> Response {
    let headers = format!("{}Content-Type: application/x-www-form-urlencoded\r\n", bearer(token));
    post(addr, HUB, &headers, &form(pairs))
}

/// Publishes and checks the answer: `200`, `text/plain; charset=utf-8`, the id alone.
pub(crate) fn hub_publish(addr: std::net::SocketAddr, pairs: &[(&str, &str)]) -> String {
    let response = hub_post(addr, &publisher_token(), pairs);
    assert_eq!(response.status, 200, "publish answered {response:?}");
    assert_eq!(response.header("content-type"), Some("text/plain; charset=utf-8"));
    response.body_text()
}

/// The hub's subscription URL with `params`.
pub(crate) fn hub_url(params: &[(&str, &str)]) -> String {
    format!("{HUB}?{}", String::from_utf8(form(params)).unwrap())
}

/// Publishes a public marker on `topic` and asserts it is `sub`'s next event: nothing was
/// delivered before it.
fn assert_next_is_marker(addr: std::net::SocketAddr, sub: &mut Subscriber, topic: &str, what: &str) {
    let id = hub_publish(addr, &[("topic", topic), ("data", "marker")]);
    let event = sub.next_event();
    assert_eq!((event.id.as_deref(), event.data.as_str()), (Some(id.as_str()), "marker"), "{what}");
}

#[test]
fn exact_and_url_pattern_subscribers_get_updates_with_the_publishers_id() {
    let server = TestServer::start(hub_config());
    let topic = "https://example.com/books/1?x=é#frag";
    let mut exact = Subscriber::open(server.addr, &hub_url(&[("match", "other"), ("match", topic)]), "");
    let mut pattern =
        Subscriber::open(server.addr, &hub_url(&[("match_urlpattern", "https://example.com/books/:id")]), "");
    let mut elsewhere =
        Subscriber::open(server.addr, &hub_url(&[("match_urlpattern", "https://example.com/bar/:id")]), "");
    let id =
        hub_publish(server.addr, &[("topic", topic), ("data", "line 1\nline 2"), ("id", "urn:uuid:book-1")]);
    assert_eq!(id, "urn:uuid:book-1", "the answer is the publisher's id");
    for sub in [&mut exact, &mut pattern] {
        let event = sub.next_event();
        assert_eq!(event.id.as_deref(), Some("urn:uuid:book-1"));
        assert_eq!(event.data, "line 1\nline 2");
    }
    // Without an id, the hub's own: an IRI (urn:ssed:N), the same on the wire and in the answer.
    let generated = hub_publish(server.addr, &[("topic", "https://example.com/books/2"), ("type", "t")]);
    assert!(generated.starts_with("urn:ssed:"), "{generated}");
    let event = pattern.next_event();
    assert_eq!((event.id.as_deref(), event.event.as_deref()), (Some(generated.as_str()), Some("t")));
    assert_next_is_marker(server.addr, &mut elsewhere, "https://example.com/bar/9", "no books on bar/:id");
}

#[test]
fn private_updates_reach_only_subscribers_whose_token_covers_one_of_their_topics() {
    let server = TestServer::start(hub_config());
    let books = hub_url(&[("match_urlpattern", "https://example.com/books/:id")]);
    let own =
        token(&claims(vec![detail(&["subscribe"], &[("https://example.com/users/42/*", "urlpattern")])]));
    let other =
        token(&claims(vec![detail(&["subscribe"], &[("https://example.com/users/41/*", "urlpattern")])]));
    let mut anonymous = Subscriber::open(server.addr, &books, "");
    let mut owner = Subscriber::open(server.addr, &books, &bearer(&own));
    let mut stranger = Subscriber::open(server.addr, &books, &bearer(&other));
    let secret = [
        ("topic", "https://example.com/books/1"),
        ("topic", "https://example.com/users/42/books/1"),
        ("private", ""),
        ("data", "secret"),
        ("id", "s1"),
    ];
    hub_publish(server.addr, &secret);
    let event = owner.next_event();
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some("s1"), "secret"),
        "granted by the alternate topic"
    );
    let marker = hub_publish(server.addr, &[("topic", "https://example.com/books/2"), ("data", "marker")]);
    for (sub, what) in
        [(&mut anonymous, "anonymous: public only"), (&mut stranger, "rights on another topic")]
    {
        assert_eq!(sub.next_event().id.as_deref(), Some(marker.as_str()), "{what}");
    }

    // On replay too: the same subscriptions resuming from before the private update.
    let from = [("match_urlpattern", "https://example.com/books/:id"), ("last_event_id", "earliest")];
    let mut replay = Subscriber::open(server.addr, &hub_url(&from), &bearer(&other));
    assert_eq!(replay.response.header("mercure-last-event-id"), Some("earliest"));
    assert_eq!(replay.next_event().data, "marker", "the stranger's replay skips the private update");
    let mut replay = Subscriber::open(server.addr, &hub_url(&from), &bearer(&own));
    assert_eq!(replay.next_event().data, "secret");
}

#[test]
fn a_last_event_id_carrying_a_custom_id_resumes_right_after_it() {
    let server = TestServer::start(hub_config());
    for id in ["a", "b", "c"] {
        hub_publish(server.addr, &[("topic", "t"), ("id", id), ("data", id)]);
    }
    let mut sub = Subscriber::open(server.addr, &hub_url(&[("match", "t")]), "Last-Event-ID: a\r\n");
    assert_eq!(sub.response.header("mercure-last-event-id"), Some("a"));
    let got: Vec<Option<String>> = (0..2).map(|_| sub.next_event().id).collect();
    assert_eq!(got, [Some("b".to_string()), Some("c".to_string())]);
    // The header wins over the query; the query's last_event_id over the older lastEventID.
    let query = hub_url(&[("match", "t"), ("last_event_id", "a"), ("lastEventID", "a")]);
    let mut sub = Subscriber::open(server.addr, &query, "Last-Event-ID: b\r\n");
    assert_eq!(sub.next_event().id.as_deref(), Some("c"));
    let query = hub_url(&[("match", "t"), ("lastEventID", "b")]);
    let mut sub = Subscriber::open(server.addr, &query, "");
    assert_eq!(sub.next_event().id.as_deref(), Some("c"), "the older revision's parameter");
    // A reused id resumes after the first event that carried it.
    hub_publish(server.addr, &[("topic", "t"), ("id", "a"), ("data", "again")]);
    let mut sub = Subscriber::open(server.addr, &hub_url(&[("match", "t")]), "Last-Event-ID: a\r\n");
    let got: Vec<String> = (0..3).map(|_| sub.next_event().data).collect();
    assert_eq!(got, ["b", "c", "again"]);
}

#[test]
fn the_hubs_publication_rules_refuse_with_400_and_413() {
    let server = TestServer::start(hub_config());
    for (pairs, what) in [
        (vec![("data", "x")], "no topic"),
        (vec![("topic", "*")], "the wildcard as a topic"),
        (vec![("topic", "/.well-known/mercure/subscriptions/x")], "the reserved namespace"),
        (vec![("topic", "https://other.example/.well-known/%6Dercure/x")], "reserved, encoded"),
        (vec![("topic", "/.well-known/mercure/../mercure/x")], "reserved, dot segments"),
        (vec![("topic", "t"), ("type", "mercure")], "the hub's own type"),
        (vec![("topic", "t"), ("retry", "1s")], "a retry that is not digits"),
        (vec![("topic", "t"), ("id", "#1")], "an id starting with #"),
        (vec![("topic", "t"), ("id", "earliest")], "the reserved id"),
        (vec![("topic", "t"), ("id", "urn:ssed:1")], "the hub's own id form"),
        (vec![("topic", "a\u{202e}b")], "a format character"),
    ] {
        let response = hub_post(server.addr, &publisher_token(), &pairs);
        assert_eq!(response.status, 400, "{what}: {response:?}");
    }
    let many: Vec<(&str, &str)> = (0..1000).map(|_| ("topic", "t")).collect();
    assert_eq!(hub_post(server.addr, &publisher_token(), &many).status, 413, "too many topics");
    let response = get(server.addr, &hub_url(&[("match_regex", "x")]), "");
    assert_eq!(response.status, 400, "an unknown matcher type");
    let response = get(server.addr, HUB, "");
    assert_eq!(response.status, 400, "no matcher at all");
    let response =
        get(server.addr, &hub_url(&[("match", "a"), ("match_urlpattern", "https://e.com/(unclosed")]), "");
    assert_eq!(response.status, 400, "a URL pattern that does not compile");
    assert!(response.body_text().contains("topic matcher #2 (match_urlpattern)"), "{response:?}");
}

/// A token of `claims` with `header`, signed with HMAC `secret`, by hand (for headers jsonwebtoken
/// will not write).
fn hand_token(header: &Value, claims: &Value, secret: Option<&[u8]>) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let head = URL_SAFE_NO_PAD.encode(header.to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = match secret {
        Some(secret) => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            mac.update(format!("{head}.{body}").as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        None => String::new(),
    };
    format!("{head}.{body}.{signature}")
}

#[test]
fn token_attacks_are_refused_with_the_right_status_and_nothing_is_delivered() {
    let server = TestServer::start(Config {
        jwt_key: None,
        publisher_jwt_key: Some(keys::RSA_PUBLIC.into()),
        publisher_jwt_alg: "RS256".into(),
        subscriber_jwt_key: Some(SECRET.into()),
        ..Config::default()
    });
    let good_claims = claims(vec![detail(&["publish", "subscribe"], &[("*", "exact")])]);
    let rs256 = |claims: &Value, header: Header| {
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(keys::RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let at_jwt = || Header { typ: Some("at+jwt".into()), ..Header::new(Algorithm::RS256) };
    let good = rs256(&good_claims, at_jwt());
    let mut watcher = Subscriber::open(server.addr, &hub_url(&[("match", "*")]), "");
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = good_claims.clone();
        f(c.as_object_mut().unwrap());
        c
    };
    let attacks: Vec<(String, u16, &str)> = vec![
        (hand_token(&json!({"alg": "none", "typ": "at+jwt"}), &good_claims, None), 401, "alg none"),
        (
            hand_token(
                &json!({"alg": "HS256", "typ": "at+jwt"}),
                &good_claims,
                Some(keys::RSA_PUBLIC.as_bytes()),
            ),
            401,
            "HS256 signed with the RSA public key",
        ),
        (rs256(&with(&|c| drop(c.insert("exp".into(), json!(now() - 10)))), at_jwt()), 401, "expired"),
        (rs256(&with(&|c| drop(c.insert("nbf".into(), json!(now() + 600)))), at_jwt()), 401, "not yet valid"),
        (
            rs256(
                &with(&|c| drop(c.insert("aud".into(), json!("https://evil/.well-known/mercure")))),
                at_jwt(),
            ),
            401,
            "wrong aud",
        ),
        (rs256(&with(&|c| drop(c.insert("iss".into(), json!("https://evil")))), at_jwt()), 401, "wrong iss"),
        (rs256(&good_claims, Header::new(Algorithm::RS256)), 401, "no typ on the current revision"),
        (
            rs256(&good_claims, Header { jku: Some("https://evil/keys".into()), ..at_jwt() }),
            401,
            "a jku header",
        ),
        (format!("{}x", &good[..good.len() - 8]), 401, "a truncated signature"),
        (
            rs256(&claims(vec![detail(&["publish"], &[("https://example.com/a", "exact")])]), at_jwt()),
            403,
            "a token for topic A used for B",
        ),
    ];
    for (token, status, what) in attacks {
        let response = hub_post(server.addr, &token, &[("topic", "https://example.com/b"), ("data", what)]);
        assert_eq!(response.status, status, "{what}: {response:?}");
        let challenge = response.header("www-authenticate").unwrap_or_default().to_string();
        let code = if status == 401 { "invalid_token" } else { "insufficient_scope" };
        assert!(challenge.starts_with("Bearer") && challenge.contains(code), "{what}: {challenge:?}");
    }
    // A subscriber token is no publisher token (separate keys).
    let subscriber = token(&good_claims);
    assert_eq!(hub_post(server.addr, &subscriber, &[("topic", "x")]).status, 401);
    assert_eq!(hub_post(server.addr, &good, &[("topic", "x"), ("data", "ok")]).status, 200);
    assert_eq!(watcher.next_event().data, "ok", "nothing refused was delivered before it");
    // No token at all: a bare challenge.
    let response = post(server.addr, HUB, "", &form(&[("topic", "x")]));
    assert_eq!((response.status, response.header("www-authenticate")), (401, Some("Bearer")));
}

#[test]
fn pre_standardization_clients_work_unchanged() {
    let server = TestServer::start(Config { legacy_query_token: true, ..hub_config() });
    // The old suite's token: a `mercure` claim, no typ, no exp, no iss, no aud.
    let old = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"mercure": {"publish": ["*"], "subscribe": ["https://example.com/users/42/{id}"]}}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let template = hub_url(&[("topic", "https://example.com/books/{id}")]);
    let mut cookie =
        Subscriber::open(server.addr, &template, &format!("Cookie: mercureAuthorization={old}\r\n"));
    let with_query = format!("{template}&authorization={old}");
    let mut query = Subscriber::open(server.addr, &with_query, "");
    let pairs = [
        ("topic", "https://example.com/books/7"),
        ("topic", "https://example.com/users/42/7"),
        ("private", "on"),
        ("data", "old"),
    ];
    let response = hub_post(server.addr, &old, &pairs);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(cookie.next_event().data, "old", "URI template route, private grant by the old cookie");
    assert_eq!(query.next_event().data, "old", "the old query parameter, when enabled");
    let mut anonymous = Subscriber::open(server.addr, &template, "");
    let marker = hub_publish(server.addr, &[("topic", "https://example.com/books/8"), ("data", "m")]);
    assert_eq!(anonymous.next_event().id, Some(marker));
    // Switched off, the old token is refused.
    let strict = TestServer::start(Config { no_legacy_tokens: true, ..hub_config() });
    assert_eq!(hub_post(strict.addr, &old, &[("topic", "x")]).status, 401);
}

#[test]
fn events_with_jwt_keys_need_rights_on_every_topic() {
    let server = TestServer::start(hub_config());
    let chat = token(&claims(vec![detail(&["subscribe", "publish"], &[("chat", "exact")])]));
    let all = token(&claims(vec![detail(&["subscribe"], &[("*", "exact")])]));
    assert_eq!(get(server.addr, "/events?topic=chat", "").status, 401, "no token");
    let response = get(server.addr, "/events?topic=chat&topic=news", &bearer(&chat));
    assert_eq!(response.status, 403, "rights on one of the two");
    assert_eq!(get(server.addr, "/events", &bearer(&chat)).status, 403, "every topic needs *");
    let mut sub = Subscriber::open(server.addr, "/events?topic=chat", &bearer(&chat));
    let mut everything = Subscriber::open(server.addr, "/events", &bearer(&all));
    let response = post(server.addr, "/events?topic=news", &bearer(&chat), b"no");
    assert_eq!(response.status, 403, "publishing needs publish on every topic");
    let id = published_id(&post(server.addr, "/events?topic=chat", &bearer(&chat), b"hello"));
    assert_eq!(id_data(&sub.next_event()), (id, "hello".to_string()));
    assert_eq!(id_data(&everything.next_event()), (id, "hello".to_string()));
    assert_eq!(post(server.addr, "/events?topic=chat", "", b"x").status, 401);
}

#[test]
fn without_jwt_keys_the_hub_takes_the_static_tokens_as_events_does() {
    // --subscribe-token and --publish-token guard the whole server, the hub's path included: a
    // hub subscription without the token must not stream what /events would refuse to.
    let server = TestServer::start(Config {
        publish_token: Some("pub-secret".into()),
        subscribe_token: Some("sub-secret".into()),
        ..Config::default()
    });
    let url = hub_url(&[("match", "chat")]);
    assert_eq!(get(server.addr, &url, "").status, 401, "subscribing without the token");
    assert_eq!(
        get(server.addr, &url, &bearer("pub-secret")).status,
        401,
        "the publish token does not subscribe"
    );
    assert_eq!(
        hub_post(server.addr, "sub-secret", &[("topic", "chat")]).status,
        401,
        "the subscribe token does not publish"
    );
    let headers = "Content-Type: application/x-www-form-urlencoded\r\n";
    assert_eq!(
        post(server.addr, HUB, headers, &form(&[("topic", "chat")])).status,
        401,
        "publishing without a token"
    );
    let mut sub = Subscriber::open(server.addr, &url, "Cookie: ssed_token=sub-secret\r\n");
    let response = hub_post(server.addr, "pub-secret", &[("topic", "chat"), ("data", "hi")]);
    assert_eq!(response.status, 200);
    let event = sub.next_event();
    assert_eq!((event.id, event.data.as_str()), (Some(response.body_text()), "hi"));
}

#[test]
fn head_on_the_hub_answers_as_a_stream_would_and_keeps_the_connection() {
    let server = TestServer::start(Config { deny_anonymous: true, ..hub_config() });
    let reader =
        token(&claims(vec![detail(&["subscribe"], &[("https://example.com/books/:id", "urlpattern")])]));
    let url = hub_url(&[("match", "https://example.com/books/1")]);
    let mut conn = Conn::open(server.addr);
    for (headers, status) in [(bearer(&reader), 200), (String::new(), 401), (bearer("not.a.token"), 401)] {
        conn.send(format!("HEAD {url} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").as_bytes());
        let response = conn.head();
        assert_eq!(response.status, status, "{headers:?}");
        if status == 200 {
            assert_eq!(response.header("content-type"), Some("text/event-stream"));
        }
        assert_eq!(conn.buf, b"", "HEAD carried a body");
    }
    // The HEAD held nothing: a stream with the same rights still gets a private update.
    let mut sub = Subscriber::open(server.addr, &url, &bearer(&reader));
    let id = hub_publish(
        server.addr,
        &[("topic", "https://example.com/books/1"), ("data", "p"), ("private", "on")],
    );
    assert_eq!(sub.next_event().id, Some(id));
}

#[test]
fn a_stream_ends_cleanly_when_its_token_expires() {
    let server = TestServer::start(hub_config());
    let mut short = claims(vec![detail(&["subscribe"], &[("*", "exact")])]);
    short["exp"] = json!(now() + 1);
    let started = std::time::Instant::now();
    let mut sub = Subscriber::open(server.addr, &hub_url(&[("match", "t")]), &bearer(&token(&short)));
    let events = sub.read_to_end();
    assert!(events.is_empty());
    assert!(sub.clean_end(), "the stream ends with its terminating chunk");
    assert!(started.elapsed() <= Duration::from_secs(3), "by the token's exp: {:?}", started.elapsed());
}

#[test]
fn ten_reconnects_with_one_token_verify_one_signature() {
    let server = TestServer::start(hub_config());
    let token = token(&claims(vec![detail(&["subscribe"], &[("https://example.com/:x", "urlpattern")])]));
    for _ in 0..10 {
        let sub = Subscriber::open(server.addr, &hub_url(&[("match", "t")]), &bearer(&token));
        drop(sub);
    }
    assert_eq!(metric(server.addr, "ssed_jwt_signature_checks_total"), Some(1.0));
}

/// The delivery rules over sockets, a few random cases against an oracle of the spec's rules (the
/// library's `mercure::oracle_tests` runs many more without sockets): a subscriber gets an update
/// iff one of its matchers selects one of the update's topics and, for a private update, its
/// token grants `subscribe` on one of them; live, on replay from `earliest`, and resumed from a
/// publisher's id.
mod delivery_oracle {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as Cases, TestCaseError, TestRunner};

    use super::*;

    const TOPICS: [&str; 6] = [
        "https://example.com/books/1",
        "https://example.com/books/2",
        "https://example.com/users/42/1",
        "https://example.com/users/42/2",
        "https://example.com/users/41/1",
        "https://example.com/users/41/2",
    ];
    const IDS: [&str; 2] = ["urn:uuid:a", "urn:uuid:b"];
    /// Every subscriber also routes this topic, which no update carries: the end of a read.
    const MARKER: &str = "https://example.com/marker";

    /// A matcher: its query parameter and value, its `match_type` in a token, and the oracle.
    #[derive(Debug, Clone, Copy)]
    enum M {
        Exact(usize),
        BooksById,
        UserFortyTwo,
        EveryUsersFirst,
        Wildcard,
    }

    impl M {
        fn param(self) -> (&'static str, &'static str) {
            match self {
                M::Exact(i) => ("match", TOPICS[i]),
                M::BooksById => ("match_urlpattern", "https://example.com/books/:id"),
                M::UserFortyTwo => ("match_urlpattern", "https://example.com/users/42/*"),
                M::EveryUsersFirst => ("match_urlpattern", "https://example.com/users/:user/1"),
                M::Wildcard => ("match", "*"),
            }
        }

        fn grant(self) -> (&'static str, &'static str) {
            let (param, value) = self.param();
            (value, if param == "match" { "exact" } else { "urlpattern" })
        }

        fn selects(self, topic: &str) -> bool {
            let segment = |s: &str| !s.is_empty() && !s.contains('/');
            match self {
                M::Exact(i) => topic == TOPICS[i],
                M::BooksById => topic.strip_prefix("https://example.com/books/").is_some_and(segment),
                M::UserFortyTwo => topic.starts_with("https://example.com/users/42/"),
                M::EveryUsersFirst => topic
                    .strip_prefix("https://example.com/users/")
                    .and_then(|r| r.strip_suffix("/1"))
                    .is_some_and(segment),
                M::Wildcard => true,
            }
        }
    }

    fn matcher() -> impl Strategy<Value = M> {
        prop_oneof![
            3 => (0..TOPICS.len()).prop_map(M::Exact),
            2 => Just(M::BooksById),
            2 => Just(M::UserFortyTwo),
            2 => Just(M::EveryUsersFirst),
            1 => Just(M::Wildcard),
        ]
    }

    #[derive(Debug, Clone)]
    struct Sub {
        routes: Vec<M>,
        /// `None`: anonymous.
        grant: Option<Vec<M>>,
    }

    #[derive(Debug, Clone)]
    struct Up {
        topics: Vec<usize>,
        private: bool,
        id: Option<usize>,
    }

    impl Sub {
        fn receives(&self, up: &Up) -> bool {
            let selected = |ms: &[M]| up.topics.iter().any(|&t| ms.iter().any(|m| m.selects(TOPICS[t])));
            selected(&self.routes) && (!up.private || self.grant.as_deref().is_some_and(selected))
        }

        fn open(&self, addr: std::net::SocketAddr, extra: &[(&str, &str)], header: &str) -> Subscriber {
            let mut params: Vec<(&str, &str)> = self.routes.iter().map(|m| m.param()).collect();
            params.push(("match", MARKER));
            params.extend_from_slice(extra);
            let auth = self.grant.as_ref().map_or(String::new(), |grant| {
                let topics: Vec<(&str, &str)> = grant.iter().map(|m| m.grant()).collect();
                bearer(&token(&claims(vec![detail(&["subscribe"], &topics)])))
            });
            Subscriber::open(addr, &hub_url(&params), &format!("{auth}{header}"))
        }
    }

    fn sub() -> impl Strategy<Value = Sub> {
        let grant = prop_oneof![
            1 => Just(None),
            1 => Just(Some(vec![M::Wildcard])),
            3 => vec(matcher(), 1..3).prop_map(Some),
        ];
        (vec(matcher(), 1..3), grant).prop_map(|(routes, grant)| Sub { routes, grant })
    }

    fn up() -> impl Strategy<Value = Up> {
        (vec(0..TOPICS.len(), 1..4), any::<bool>(), proptest::option::weighted(0.5, 0..IDS.len()))
            .prop_map(|(topics, private, id)| Up { topics, private, id })
    }

    /// `(id, data)` of the events up to and including the marker.
    fn until_marker(sub: &mut Subscriber) -> Vec<(String, String)> {
        let mut got = Vec::new();
        loop {
            let event = sub.next_event();
            got.push((event.id.unwrap_or_default(), event.data));
            if got.last().is_some_and(|(_, data)| data == "marker") {
                return got;
            }
        }
    }

    #[test]
    fn what_each_subscriber_gets_follows_the_spec() {
        let input = (vec(up(), 1..10), vec(sub(), 1..5), any::<usize>());
        let mut runner = TestRunner::new(Cases { cases: 40, failure_persistence: None, ..Cases::default() });
        runner
            .run(&input, |(ups, subs, resume_at)| {
                let server = TestServer::start(Config { heartbeat: Duration::ZERO, ..hub_config() });
                let mut live: Vec<Subscriber> = subs.iter().map(|s| s.open(server.addr, &[], "")).collect();
                let ids: Vec<String> = ups
                    .iter()
                    .enumerate()
                    .map(|(i, up)| {
                        let data = format!("u{i}");
                        let mut pairs: Vec<(&str, &str)> =
                            up.topics.iter().map(|&t| ("topic", TOPICS[t])).collect();
                        pairs.push(("data", &data));
                        if up.private {
                            pairs.push(("private", "on"));
                        }
                        if let Some(id) = up.id {
                            pairs.push(("id", IDS[id]));
                        }
                        hub_publish(server.addr, &pairs)
                    })
                    .collect();
                let marker = hub_publish(server.addr, &[("topic", MARKER), ("data", "marker")]);
                let expect = |sub: &Sub, from: usize| -> Vec<(String, String)> {
                    (from..ups.len())
                        .filter(|&i| sub.receives(&ups[i]))
                        .map(|i| (ids[i].clone(), format!("u{i}")))
                        .chain([(marker.clone(), "marker".to_string())])
                        .collect()
                };
                for (spec, stream) in subs.iter().zip(&mut live) {
                    prop_assert_eq!(until_marker(stream), expect(spec, 0), "live: {:?}", spec);
                }
                for spec in &subs {
                    let mut replay = spec.open(server.addr, &[("last_event_id", "earliest")], "");
                    prop_assert_eq!(until_marker(&mut replay), expect(spec, 0), "replay: {:?}", spec);
                }
                // A publisher's id resumes after the earliest update that carries it.
                let at = resume_at % ups.len();
                let (text, from) = match ups[at].id {
                    Some(c) => {
                        let first = ups.iter().position(|u| u.id == Some(c)).expect("at carries it");
                        (IDS[c].to_string(), first + 1)
                    }
                    None => (ids[at].clone(), at + 1),
                };
                for spec in &subs {
                    let mut resumed = spec.open(server.addr, &[], &format!("Last-Event-ID: {text}\r\n"));
                    prop_assert_eq!(resumed.response.header("mercure-last-event-id"), Some(text.as_str()));
                    prop_assert_eq!(
                        until_marker(&mut resumed),
                        expect(spec, from),
                        "from {}: {:?}",
                        text,
                        spec
                    );
                }
                Ok::<(), TestCaseError>(())
            })
            .unwrap();
    }
}
