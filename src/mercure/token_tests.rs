//! Tests of `token.rs`: where a token is taken from, the cookie's CSRF rule, and the grant cache.

use super::*;
use crate::mercure::jwt::tests::{claims, hs_verifier, sign, AUD, NOW};
use crate::mercure::jwt::{InvalidReason, DEFAULT_ISSUER};
use serde_json::json;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2ln";
const OTHER: &str = "eyJhbGciOiJIUzI1NiJ9.eyJ5IjoyfQ.c2ln";

fn request<'a>(method: Method, authorization: &'a [&'a [u8]], cookies: &'a [&'a [u8]]) -> Presented<'a> {
    Presented { method, authorization, cookies, query_authorization: &[], origin: None, referer: None }
}

/// What [`extract`] finds, owned.
type Found = Result<Option<(String, Source)>, TokenError>;

fn run(presented: &Presented<'_>, options: &TokenOptions) -> Found {
    extract(presented, options).map(|p| p.map(|p| (p.token.to_string(), p.source)))
}

fn found(result: Found) -> Option<(String, Source)> {
    result.expect("no error")
}

fn problem(result: Found) -> RequestProblem {
    match result {
        Err(TokenError::InvalidRequest(problem)) => problem,
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

#[test]
fn the_authorization_header_wins_over_the_cookie() {
    let options = TokenOptions::default();
    let header = format!("Bearer {TOKEN}");
    let cookie = format!("theme=dark; {SECURE_COOKIE}={OTHER}");
    let (headers, cookies) = ([header.as_bytes()], [cookie.as_bytes()]);
    let both = request(Method::Get, &headers, &cookies);
    assert_eq!(found(run(&both, &options)), Some((TOKEN.into(), Source::Header)));
    let cookie_only = request(Method::Get, &[], &cookies);
    assert_eq!(found(run(&cookie_only, &options)), Some((OTHER.into(), Source::Cookie)));
    // A malformed header is an error, not a reason to fall back to the cookie.
    let malformed = request(Method::Get, &[b"Bearer"], &cookies);
    assert_eq!(problem(run(&malformed, &options)), RequestProblem::BadBearer);
    assert_eq!(found(run(&request(Method::Get, &[], &[]), &options)), None);
}

#[test]
fn the_authorization_header_is_one_bearer_credential() {
    let options = TokenOptions::default();
    let take = |values: &[&[u8]]| run(&request(Method::Post, values, &[]), &options);
    for good in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER   {TOKEN}  "),
        format!("\tBearer {TOKEN}"),
    ] {
        assert_eq!(found(take(&[good.as_bytes()])), Some((TOKEN.into(), Source::Header)), "{good:?}");
    }
    assert_eq!(found(take(&[b"Bearer abc+/~_-.=="])), Some(("abc+/~_-.==".into(), Source::Header)));
    for (bad, expected) in [
        (&b"Bearer"[..], RequestProblem::BadBearer),
        (b"Bearer   ", RequestProblem::BadBearer),
        (b"Bearer ===", RequestProblem::BadBearer),
        (b"Bearer a b", RequestProblem::BadBearer),
        (b"Bearer a=b", RequestProblem::BadBearer),
        (b"Bearer a, Basic b", RequestProblem::BadBearer),
        (b"Bearer \xff", RequestProblem::BadBearer),
        (b"Basic dXNlcjpwYXNz", RequestProblem::NotBearer),
        (b"Bearertoken", RequestProblem::NotBearer),
        (b"", RequestProblem::NotBearer),
    ] {
        assert_eq!(problem(take(&[bad])), expected, "{:?}", String::from_utf8_lossy(bad));
    }
    let header = format!("Bearer {TOKEN}");
    assert_eq!(problem(take(&[header.as_bytes(), header.as_bytes()])), RequestProblem::RepeatedAuthorization);
}

#[test]
fn the_legacy_query_parameter_is_read_only_when_enabled() {
    let cookie = format!("{LEGACY_COOKIE}={OTHER}");
    let cookies = [cookie.as_bytes()];
    let with_query = |values: &'static [&'static str]| Presented {
        query_authorization: values,
        ..request(Method::Get, &[], &cookies)
    };
    let off = TokenOptions::default();
    assert_eq!(found(run(&with_query(&[TOKEN]), &off)), Some((OTHER.into(), Source::Cookie)));
    let on = TokenOptions { legacy_query: true, ..TokenOptions::default() };
    assert_eq!(found(run(&with_query(&[TOKEN]), &on)), Some((TOKEN.into(), Source::Query)));
    assert_eq!(problem(run(&with_query(&[TOKEN, TOKEN]), &on)), RequestProblem::BadQueryToken);
    assert_eq!(problem(run(&with_query(&[""]), &on)), RequestProblem::BadQueryToken);
    // The header still wins.
    let header = format!("Bearer {TOKEN}");
    let headers = [header.as_bytes()];
    let both = Presented { query_authorization: &[OTHER], ..request(Method::Get, &headers, &[]) };
    assert_eq!(found(run(&both, &on)), Some((TOKEN.into(), Source::Header)));
}

#[test]
fn cookies_are_looked_for_by_name_in_order() {
    let get =
        |cookies: &[&[u8]], options: &TokenOptions| found(run(&request(Method::Get, &[], cookies), options));
    let options = TokenOptions::default();
    let both = format!("{LEGACY_COOKIE}={OTHER}; {SECURE_COOKIE}={TOKEN}");
    assert_eq!(get(&[both.as_bytes()], &options), Some((TOKEN.into(), Source::Cookie)));
    let legacy = format!("a=b;{LEGACY_COOKIE}=\"{OTHER}\"");
    assert_eq!(get(&[b"x=y", legacy.as_bytes()], &options), Some((OTHER.into(), Source::Cookie)));
    // An emptied cookie is no token.
    let emptied = format!("{SECURE_COOKIE}=; {LEGACY_COOKIE}=");
    assert_eq!(get(&[emptied.as_bytes()], &options), None);
    // A name is matched whole.
    let longer = format!("x{SECURE_COOKIE}={TOKEN}");
    assert_eq!(get(&[longer.as_bytes()], &options), None);
    // A configured name comes first.
    let configured = TokenOptions::default().with_cookie_name("ssed_token");
    let cookie = format!("{SECURE_COOKIE}={OTHER}; ssed_token={TOKEN}");
    assert_eq!(get(&[cookie.as_bytes()], &configured), Some((TOKEN.into(), Source::Cookie)));
}

#[test]
fn a_cookie_publishes_only_from_an_allowed_origin() {
    let cookie = format!("{SECURE_COOKIE}={TOKEN}");
    let cookies = [cookie.as_bytes()];
    let post = |origin: Option<&'static [u8]>, referer: Option<&'static [u8]>, allowed: &[&str]| {
        let options = TokenOptions {
            publish_origins: allowed.iter().map(|s| s.to_string()).collect(),
            ..TokenOptions::default()
        };
        let presented = Presented { origin, referer, ..request(Method::Post, &[], &cookies) };
        run(&presented, &options).map(|p| p.map(|(_, source)| source))
    };
    let refused = |problem| Err(TokenError::InvalidRequest(problem));
    let app: &[&str] = &["https://app.example.com"];
    assert_eq!(post(Some(b"https://app.example.com"), None, app), Ok(Some(Source::Cookie)));
    assert_eq!(post(Some(b"https://APP.example.com"), None, app), Ok(Some(Source::Cookie)));
    assert_eq!(post(Some(b"https://evil.example"), None, app), refused(RequestProblem::OriginNotAllowed));
    assert_eq!(post(Some(b"null"), None, app), refused(RequestProblem::OriginNotAllowed));
    assert_eq!(post(None, None, app), refused(RequestProblem::NoOrigin));
    // Origin wins over Referer; Referer is reduced to its origin.
    assert_eq!(
        post(Some(b"https://evil.example"), Some(b"https://app.example.com/x"), app),
        refused(RequestProblem::OriginNotAllowed)
    );
    assert_eq!(post(None, Some(b"https://app.example.com/books/1?x#y"), app), Ok(Some(Source::Cookie)));
    assert_eq!(post(None, Some(b"https://user@app.example.com/"), app), Ok(Some(Source::Cookie)));
    assert_eq!(
        post(None, Some(b"https://app.example.com.evil.example/"), app),
        refused(RequestProblem::OriginNotAllowed)
    );
    assert_eq!(post(None, Some(b"not a url"), app), refused(RequestProblem::OriginNotAllowed));
    // No allowed origin: a cookie never publishes.
    assert_eq!(post(Some(b"https://app.example.com"), None, &[]), refused(RequestProblem::OriginNotAllowed));
    // `*` and wildcard entries.
    assert_eq!(post(Some(b"https://anything"), None, &["*"]), Ok(Some(Source::Cookie)));
    let wild: &[&str] = &["https://*.example.com"];
    assert_eq!(post(Some(b"https://a.b.example.com"), None, wild), Ok(Some(Source::Cookie)));
    assert_eq!(post(Some(b"https://example.com"), None, wild), refused(RequestProblem::OriginNotAllowed));
    assert_eq!(post(Some(b"http://a.example.com"), None, wild), refused(RequestProblem::OriginNotAllowed));
    // A safe method needs no origin; a header token needs none either.
    let get = Presented { method: Method::Get, ..request(Method::Get, &[], &cookies) };
    assert_eq!(
        run(&get, &TokenOptions::default()).map(|p| p.map(|(_, source)| source)),
        Ok(Some(Source::Cookie))
    );
    let header = format!("Bearer {TOKEN}");
    let headers = [header.as_bytes()];
    assert_eq!(
        run(&request(Method::Post, &headers, &cookies), &TokenOptions::default())
            .map(|p| p.map(|(_, source)| source)),
        Ok(Some(Source::Header))
    );
}

/// A token granting subscribe on `*`, distinct for each `n`.
fn numbered(n: u64, exp: u64) -> String {
    let mut c = claims(&["subscribe"]);
    c["jti"] = json!(n);
    c["exp"] = json!(exp);
    sign(&c)
}

#[test]
fn ten_thousand_lookups_of_a_hundred_tokens_check_a_hundred_signatures() {
    let verifier = hs_verifier();
    let tokens: Vec<String> = (0..100).map(|n| numbered(n, NOW + 600)).collect();
    let mut cache = TokenCache::default();
    for i in 0..10_000u64 {
        let token = &tokens[(i % 100) as usize];
        let grant = cache.verify(&verifier, token, Role::Subscriber, &[AUD], NOW + i / 100).expect("valid");
        assert_eq!(grant.subscribe.len(), 1);
    }
    assert_eq!(verifier.signature_checks(), 100);
    assert_eq!(cache.len(), 100);
    // Without the cache, every lookup is a check.
    for token in &tokens {
        verifier.verify(token, Role::Subscriber, &[AUD], NOW).expect("valid");
    }
    assert_eq!(verifier.signature_checks(), 200);
}

#[test]
fn a_cached_grant_ends_when_its_token_expires() {
    let verifier = hs_verifier();
    let mut cache = TokenCache::default();
    let token = numbered(1, NOW + 10);
    assert!(cache.verify(&verifier, &token, Role::Subscriber, &[AUD], NOW).is_ok());
    assert!(cache.verify(&verifier, &token, Role::Subscriber, &[AUD], NOW + 9).is_ok());
    assert_eq!(verifier.signature_checks(), 1);
    assert_eq!(
        cache.verify(&verifier, &token, Role::Subscriber, &[AUD], NOW + 10),
        Err(TokenError::Invalid(InvalidReason::Expired))
    );
    assert!(cache.is_empty());
    // A token without exp (pre-standardization) is verified again after the maximum age.
    let old = crate::mercure::jwt::tests::sign(&json!({"mercure": {"subscribe": ["*"]}}));
    assert!(cache.verify(&verifier, &old, Role::Subscriber, &[], NOW).is_ok());
    assert!(cache.verify(&verifier, &old, Role::Subscriber, &[], NOW + NO_EXPIRY_MAX_AGE_SECS - 1).is_ok());
    assert_eq!(verifier.signature_checks(), 2);
    assert!(cache.verify(&verifier, &old, Role::Subscriber, &[], NOW + NO_EXPIRY_MAX_AGE_SECS).is_ok());
    assert_eq!(verifier.signature_checks(), 3);
}

#[test]
fn a_grant_is_cached_for_one_role_and_one_audience() {
    // Shared keys: each role verifies once.
    let verifier = hs_verifier();
    let mut cache = TokenCache::default();
    let token = numbered(1, NOW + 60);
    for _ in 0..3 {
        assert!(cache.verify(&verifier, &token, Role::Subscriber, &[AUD], NOW).is_ok());
        assert!(cache.verify(&verifier, &token, Role::Publisher, &[AUD], NOW).is_ok());
    }
    assert_eq!(verifier.signature_checks(), 2);
    // Separate keys: a grant cached for subscribing does not let the token publish.
    let separate = crate::mercure::jwt::Verifier::new(
        vec![crate::mercure::jwt::tests::hs256("the publishers' secret, at least 32 bytes")],
        vec![crate::mercure::jwt::tests::hs256(crate::mercure::jwt::tests::SECRET)],
    );
    let mut cache = TokenCache::default();
    assert!(cache.verify(&separate, &token, Role::Subscriber, &[AUD], NOW).is_ok());
    assert_eq!(
        cache.verify(&separate, &token, Role::Publisher, &[AUD], NOW),
        Err(TokenError::Invalid(InvalidReason::BadSignature))
    );
    // Nor is it reused for a request to another host.
    assert_eq!(
        cache.verify(
            &separate,
            &token,
            Role::Subscriber,
            &["https://other.example/.well-known/mercure"],
            NOW
        ),
        Err(TokenError::Invalid(InvalidReason::WrongAudience))
    );
}

#[test]
fn the_cache_is_bounded_and_drops_the_expired_first_then_the_oldest() {
    let verifier = hs_verifier();
    let mut cache = TokenCache::new(10, CACHE_BYTES);
    let tokens: Vec<String> = (0..20).map(|n| numbered(n, NOW + 600)).collect();
    for token in &tokens {
        assert!(cache.verify(&verifier, token, Role::Subscriber, &[AUD], NOW).is_ok());
    }
    assert_eq!(cache.len(), 10);
    assert_eq!(verifier.signature_checks(), 20);
    // The newest are kept, the oldest were dropped.
    assert!(cache.verify(&verifier, &tokens[19], Role::Subscriber, &[AUD], NOW).is_ok());
    assert_eq!(verifier.signature_checks(), 20);
    assert!(cache.verify(&verifier, &tokens[0], Role::Subscriber, &[AUD], NOW).is_ok());
    assert_eq!(verifier.signature_checks(), 21);

    // Expired entries go before the oldest live one.
    let mut cache = TokenCache::new(3, CACHE_BYTES);
    let oldest = numbered(100, NOW + 600);
    let short = numbered(101, NOW + 5);
    let newer = numbered(102, NOW + 600);
    for token in [&oldest, &short, &newer] {
        assert!(cache.verify(&verifier, token, Role::Subscriber, &[AUD], NOW).is_ok());
    }
    let checks = verifier.signature_checks();
    assert!(cache.verify(&verifier, &numbered(103, NOW + 600), Role::Subscriber, &[AUD], NOW + 6).is_ok());
    assert_eq!(cache.len(), 3);
    assert!(cache.verify(&verifier, &oldest, Role::Subscriber, &[AUD], NOW + 6).is_ok());
    assert_eq!(verifier.signature_checks(), checks + 1, "the oldest live grant was kept");

    // Bounded by bytes too.
    let one = numbered(200, NOW + 600);
    let mut cache = TokenCache::new(1000, 3 * one.len());
    for n in 200..210 {
        assert!(cache.verify(&verifier, &numbered(n, NOW + 600), Role::Subscriber, &[AUD], NOW).is_ok());
    }
    assert_eq!(cache.len(), 3);
}

#[test]
fn refused_tokens_are_not_cached() {
    let verifier = hs_verifier();
    let mut cache = TokenCache::default();
    for n in 0..10_000 {
        let garbage = format!("eyJhbGciOiJIUzI1NiJ9.{n}.x");
        assert!(cache.verify(&verifier, &garbage, Role::Subscriber, &[AUD], NOW).is_err());
    }
    let forged = sign(&json!({"iss": DEFAULT_ISSUER, "aud": AUD, "exp": NOW + 60}));
    let forged = format!("{}x", &forged[..forged.len() - 1]);
    for _ in 0..3 {
        assert!(cache.verify(&verifier, &forged, Role::Subscriber, &[AUD], NOW).is_err());
    }
    assert!(cache.is_empty());
    assert_eq!(verifier.signature_checks(), 3);
}
