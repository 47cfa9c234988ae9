//! The hub's decisions, without sockets: who a request's token says it is, what it may read and
//! publish, which matchers a subscription routes by. The loop (`server/hub.rs`) carries them out on
//! the log and the connections.

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use super::grant::{Grant, RawMatcher};
use super::jwt::{host_audiences, KeySpec, Role, TokenError, Verifier};
use super::matcher::{Matcher, MatcherError};
use super::token::{self, Presented, TokenCache, TokenOptions};
use super::MatcherKind;
use crate::broadcast::TopicFilter;
use crate::config::Config;
use crate::error::Error;
use crate::http::request::{Credentials, Method};

/// Compiled rights kept at most; past it the table starts over (a reconnect storm of 10,000
/// subscribers shares a few hundred distinct grants).
const MAX_COMPILED: usize = 4096;

/// The hub's state: its URL, its verifier and the caches in front of it.
pub struct Hub {
    base: Url,
    verifier: Option<Verifier>,
    cache: TokenCache,
    tokens: TokenOptions,
    anonymous: bool,
    /// Compiled matcher lists of grants, by [`key_of`] of their raw matchers.
    compiled: HashMap<String, Arc<Rights>>,
}

/// A set of compiled matchers a topic passes if any of them takes it: a grant's rights, or a
/// subscription's routing matchers.
pub struct Rights {
    matchers: Vec<Matcher>,
    any: bool,
    key: String,
}

impl Rights {
    /// Compiles `raw` against the hub's URL; an invalid matcher is the whole list's error.
    pub fn compile<'a>(
        raw: impl IntoIterator<Item = (MatcherKind, &'a str)> + Clone,
        base: &Url,
    ) -> Result<Rights, MatcherError> {
        let key = key_of(raw.clone());
        let matchers = raw
            .into_iter()
            .map(|(kind, value)| Matcher::new(kind, value, base))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rights::new(matchers, key))
    }

    /// Rights of matchers already compiled; `key` is [`key_of`] their kinds and values.
    pub fn new(matchers: Vec<Matcher>, key: String) -> Rights {
        let any = matchers.iter().any(Matcher::is_any);
        Rights { matchers, any, key }
    }

    /// Whether one of the matchers takes `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        self.any || self.matchers.iter().any(|m| m.matches(topic))
    }

    /// Whether a matcher is the wildcard `*`.
    pub fn is_any(&self) -> bool {
        self.any
    }

    /// Whether there is no matcher at all.
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// The topics of the exact matchers, if every matcher is exact (a subscription that needs no
    /// derived topic).
    pub fn exact_topics(&self) -> Option<Vec<&str>> {
        self.matchers.iter().map(Matcher::as_exact).collect()
    }

    /// A canonical description, the same for the same matchers in any order: the key of the
    /// derived topic these rights or routes share.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A [`Rights`] shared with the log as the filter of a derived topic.
pub struct SharedRights(pub Arc<Rights>);

impl TopicFilter for SharedRights {
    fn matches(&self, topic: &str) -> bool {
        self.0.allows(topic)
    }
}

/// The canonical key of a matcher list: sorted, deduplicated, each as kind and value.
pub fn key_of<'a>(raw: impl IntoIterator<Item = (MatcherKind, &'a str)>) -> String {
    let mut items: Vec<(u8, &str)> = raw
        .into_iter()
        .map(|(kind, value)| {
            let tag = match kind {
                MatcherKind::Exact => b'e',
                MatcherKind::UrlPattern => b'u',
                MatcherKind::Legacy => b'l',
            };
            (tag, value)
        })
        .collect();
    items.sort_unstable();
    items.dedup();
    let mut key = String::new();
    for (tag, value) in items {
        key.push(char::from(tag));
        key.push_str(value);
        // Values hold no control character (the hub's rules), so a line feed separates them.
        key.push('\n');
    }
    key
}

/// Who a request is, once its token (if any) checked out.
pub struct Access {
    /// The grant, `None` for an anonymous request.
    pub grant: Option<Arc<Grant>>,
}

impl Hub {
    /// The hub of `config`: its URL parsed, its keys loaded (an error names the flag and the file).
    pub fn new(config: &Config) -> Result<Hub, Error> {
        let base = Url::parse(&config.hub_url)
            .map_err(|e| Error::config(format!("--hub-url {:?} is not a URL: {e}", config.hub_url)))?;
        let verifier = if config.jwt_enabled() {
            let key = |flag: &str, value: &Option<String>, alg: &str| -> Result<Option<KeySpec>, Error> {
                value
                    .as_deref()
                    .map(|v| KeySpec::parse(alg, v).map_err(|e| Error::config(format!("--{flag}: {e}"))))
                    .transpose()
            };
            let shared = key("jwt-key", &config.jwt_key, &config.jwt_alg)?;
            let publisher = key("publisher-jwt-key", &config.publisher_jwt_key, &config.publisher_jwt_alg)?;
            let subscriber =
                key("subscriber-jwt-key", &config.subscriber_jwt_key, &config.subscriber_jwt_alg)?;
            let publisher_keys: Vec<KeySpec> = publisher.into_iter().chain(shared.clone()).collect();
            let subscriber_keys: Vec<KeySpec> = subscriber.into_iter().chain(shared).collect();
            let mut verifier = Verifier::new(publisher_keys, subscriber_keys);
            // Without --jwt-issuer, the verifier's own default (jwt::DEFAULT_ISSUER).
            if !config.jwt_issuers.is_empty() {
                verifier = verifier.issuers(config.jwt_issuers.clone());
            }
            Some(verifier.audiences(config.jwt_audiences.clone()).legacy(!config.no_legacy_tokens))
        } else {
            None
        };
        let mut tokens = TokenOptions {
            legacy_query: config.legacy_query_token,
            publish_origins: config.publish_origins.clone(),
            ..TokenOptions::default()
        };
        if let Some(name) = &config.jwt_cookie {
            tokens = tokens.with_cookie_name(name.clone());
        }
        Ok(Hub {
            base,
            verifier,
            cache: TokenCache::default(),
            tokens,
            anonymous: !config.deny_anonymous,
            compiled: HashMap::new(),
        })
    }

    /// The hub's URL, which relative topics and patterns resolve against.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Whether tokens are checked at all (a JWT key is configured).
    pub fn verifies(&self) -> bool {
        self.verifier.is_some()
    }

    /// Signature checks done so far (the cache's effect shows here).
    pub fn signature_checks(&self) -> u64 {
        self.verifier.as_ref().map_or(0, Verifier::signature_checks)
    }

    /// Checks the token `credentials` carry for `role` at `now_secs`: `Ok` with the grant, or
    /// with none for an anonymous request that may go on as one (a subscriber, when anonymous
    /// subscribers are allowed); the refusal otherwise.
    pub fn authorize(
        &mut self,
        credentials: &Credentials,
        method: Method,
        origin: Option<&str>,
        query_authorization: &[&str],
        role: Role,
        now_secs: u64,
    ) -> Result<Access, TokenError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Access { grant: None });
        };
        let authorization: Vec<&[u8]> = credentials.authorization.iter().map(Vec::as_slice).collect();
        let cookies: Vec<&[u8]> = credentials.cookies.iter().map(Vec::as_slice).collect();
        let presented = Presented {
            method,
            authorization: &authorization,
            cookies: &cookies,
            query_authorization,
            origin: origin.map(str::as_bytes),
            referer: credentials.referer.as_deref(),
        };
        let Some(presentation) = token::extract(&presented, &self.tokens)? else {
            return match role {
                Role::Subscriber if self.anonymous => Ok(Access { grant: None }),
                _ => Err(TokenError::Missing),
            };
        };
        let host = credentials.host.as_deref().unwrap_or("localhost");
        let derived = host_audiences(host);
        let audiences: Vec<&str> = if verifier.configured_audiences().is_empty() {
            derived.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        };
        let grant = self.cache.verify(verifier, presentation.token, role, &audiences, now_secs)?;
        Ok(Access { grant: Some(grant) })
    }

    /// The compiled form of a grant's `raw` matchers, shared by every request with the same ones;
    /// a matcher that does not compile makes the token invalid.
    pub fn rights(&mut self, raw: &[RawMatcher]) -> Result<Arc<Rights>, TokenError> {
        let pairs = raw.iter().map(|m| (m.kind, m.value.as_str()));
        let key = key_of(pairs.clone());
        if let Some(rights) = self.compiled.get(&key) {
            return Ok(Arc::clone(rights));
        }
        let matchers = pairs
            .map(|(kind, value)| Matcher::new(kind, value, &self.base))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                TokenError::Invalid(super::jwt::InvalidReason::BadClaim("a topic matcher does not compile"))
            })?;
        let rights = Arc::new(Rights::new(matchers, key.clone()));
        if self.compiled.len() >= MAX_COMPILED {
            self.compiled.clear();
        }
        self.compiled.insert(key, Arc::clone(&rights));
        Ok(rights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mercure::jwt::tests::{claims, sign, NOW, SECRET};
    use crate::mercure::MatcherKind::{Exact, Legacy, UrlPattern};

    fn base() -> Url {
        Url::parse("https://localhost/.well-known/mercure").unwrap()
    }

    fn hub(config: Config) -> Hub {
        Hub::new(&config).expect("a hub")
    }

    fn with_key() -> Config {
        Config { jwt_key: Some(SECRET.into()), ..Config::default() }
    }

    fn bearer(token: &str) -> Credentials {
        Credentials {
            authorization: vec![format!("Bearer {token}").into_bytes()],
            host: Some("localhost".into()),
            ..Credentials::default()
        }
    }

    fn authorize(hub: &mut Hub, credentials: &Credentials, role: Role) -> Result<Access, TokenError> {
        hub.authorize(credentials, Method::Get, None, &[], role, NOW)
    }

    #[test]
    fn a_matcher_list_has_one_key_whatever_its_order_and_repeats() {
        let a = key_of([(UrlPattern, "https://e/:x"), (Exact, "b"), (Exact, "b")]);
        let b = key_of([(Exact, "b"), (UrlPattern, "https://e/:x")]);
        assert_eq!(a, b);
        assert_eq!(a, "eb\nuhttps://e/:x\n");
        assert_ne!(key_of([(Exact, "x")]), key_of([(Legacy, "x")]), "the kind is part of the key");
        assert_ne!(key_of([(Exact, "a\nb")]), key_of([(Exact, "a"), (Exact, "b")]));
    }

    #[test]
    fn rights_say_which_topics_they_take_and_whether_they_need_a_derived_topic() {
        let exact = Rights::compile([(Exact, "a"), (Exact, "b")], &base()).unwrap();
        assert_eq!(exact.exact_topics(), Some(vec!["a", "b"]));
        assert!(exact.allows("a") && exact.allows("b") && !exact.allows("c"));
        assert!(!exact.is_any() && !exact.is_empty());
        let pattern = Rights::compile([(Exact, "a"), (UrlPattern, "https://e.com/b/:id")], &base()).unwrap();
        assert_eq!(pattern.exact_topics(), None, "a pattern needs a derived topic");
        assert!(
            pattern.allows("https://e.com/b/1")
                && pattern.allows("a")
                && !pattern.allows("https://e.com/c/1")
        );
        let any = Rights::compile([(UrlPattern, "*")], &base()).unwrap();
        assert!(any.is_any() && any.allows("anything at all"));
        let none = Rights::compile(std::iter::empty(), &base()).unwrap();
        assert!(none.is_empty() && !none.allows("a"));
        assert!(Rights::compile([(UrlPattern, "https://e.com/(unclosed")], &base()).is_err());
    }

    #[test]
    fn without_keys_everyone_is_anonymous_and_with_them_a_publisher_needs_a_token() {
        let mut open = hub(Config::default());
        assert!(!open.verifies());
        let access = authorize(&mut open, &bearer("not even a jwt"), Role::Publisher).unwrap();
        assert!(access.grant.is_none(), "no keys: tokens are not looked at");

        let mut checked = hub(with_key());
        assert!(checked.verifies());
        let nobody = Credentials { host: Some("localhost".into()), ..Credentials::default() };
        assert!(authorize(&mut checked, &nobody, Role::Subscriber).unwrap().grant.is_none());
        assert_eq!(authorize(&mut checked, &nobody, Role::Publisher).err(), Some(TokenError::Missing));
        let mut strict = hub(Config { deny_anonymous: true, ..with_key() });
        assert_eq!(authorize(&mut strict, &nobody, Role::Subscriber).err(), Some(TokenError::Missing));
        let token = sign(&claims(&["publish"]));
        let grant = authorize(&mut checked, &bearer(&token), Role::Publisher).unwrap().grant.unwrap();
        assert_eq!(grant.publish.len(), 1);
        assert!(matches!(
            authorize(&mut checked, &bearer("x.y.z"), Role::Publisher),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn the_audience_is_the_hosts_hub_url_unless_one_is_configured() {
        let token = sign(&claims(&["subscribe"]));
        let elsewhere = Credentials { host: Some("other.example".into()), ..bearer(&token) };
        let mut derived = hub(with_key());
        assert!(authorize(&mut derived, &bearer(&token), Role::Subscriber).is_ok());
        assert!(authorize(&mut derived, &elsewhere, Role::Subscriber).is_err(), "aud names localhost");
        let mut fixed =
            hub(Config { jwt_audiences: vec!["https://localhost/.well-known/mercure".into()], ..with_key() });
        assert!(authorize(&mut fixed, &elsewhere, Role::Subscriber).is_ok(), "the configured audience");
    }

    #[test]
    fn a_token_is_verified_once_and_its_rights_compiled_once() {
        let mut hub = hub(with_key());
        assert_eq!(hub.signature_checks(), 0);
        let token = sign(&claims(&["subscribe"]));
        for _ in 0..10 {
            authorize(&mut hub, &bearer(&token), Role::Subscriber).unwrap();
        }
        assert_eq!(hub.signature_checks(), 1);
        let other = sign(&claims(&["subscribe", "publish"]));
        authorize(&mut hub, &bearer(&other), Role::Subscriber).unwrap();
        assert_eq!(hub.signature_checks(), 2, "another token is checked");
        let raw = vec![RawMatcher { kind: UrlPattern, value: "https://e.com/:id".into() }];
        let first = hub.rights(&raw).unwrap();
        let next = vec![RawMatcher { kind: Exact, value: "x".into() }];
        hub.rights(&next).unwrap();
        let second = hub.rights(&raw).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "compiled once, shared, beside others");
        // Bounded: past MAX_COMPILED distinct grants the table starts over.
        for i in 0..MAX_COMPILED + 1 {
            hub.rights(&[RawMatcher { kind: Exact, value: format!("t{i}") }]).unwrap();
        }
        assert!(hub.compiled.len() <= MAX_COMPILED);
        let bad = vec![RawMatcher { kind: UrlPattern, value: "https://e.com/(".into() }];
        assert!(matches!(hub.rights(&bad), Err(TokenError::Invalid(_))), "a grant that does not compile");
    }

    #[test]
    fn a_bad_key_or_hub_url_stops_the_start_naming_the_flag() {
        let missing = Config {
            jwt_key: Some("/nonexistent/key.pem".into()),
            jwt_alg: "RS256".into(),
            ..Config::default()
        };
        let e = Hub::new(&missing).err().expect("refused").to_string();
        assert!(e.contains("--jwt-key") && e.contains("/nonexistent/key.pem"), "{e}");
        let url = Config { hub_url: "not a url".into(), ..Config::default() };
        assert!(Hub::new(&url).err().expect("refused").to_string().contains("--hub-url"));
    }
}
