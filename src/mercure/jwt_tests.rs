//! Tests of `jwt.rs`: tokens are signed here with jsonwebtoken's encoder (or, for headers it would
//! not write, its `crypto::sign`), with the keys of `test_keys.rs`.

use super::*;
use crate::mercure::grant::*;
use crate::mercure::test_keys::*;
use crate::mercure::MatcherKind;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

/// The Mercure.rocks hub's default secret, which the conformance suites' tokens are signed with.
pub(crate) const SECRET: &str = "!ChangeThisMercureHubJWTSecretKey!";
/// The time the tests run at.
pub(crate) const NOW: u64 = 1_800_000_000;
/// The audience a request to `localhost` stands for.
pub(crate) const AUD: &str = "https://localhost/.well-known/mercure";

/// The token of the current conformance suite (conf.ts): HS256, `typ` at+jwt, publish and
/// subscribe `*`.
const CONFORMANCE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJhdWQiOiJodHRwczovL2xvY2FsaG9zdC8ud2VsbC1rbm93bi9tZXJjdXJlIiwiaXNzIjoiaHR0cHM6Ly9sb2NhbGhvc3QiLCJhdXRob3JpemF0aW9uX2RldGFpbHMiOlt7InR5cGUiOiJodHRwczovL21lcmN1cmUucm9ja3MvYXV0aG9yaXphdGlvbi1kZXRhaWwiLCJhY3Rpb25zIjpbInB1Ymxpc2giXSwidG9waWNzIjpbeyJtYXRjaCI6IioifV19LHsidHlwZSI6Imh0dHBzOi8vbWVyY3VyZS5yb2Nrcy9hdXRob3JpemF0aW9uLWRldGFpbCIsImFjdGlvbnMiOlsic3Vic2NyaWJlIl0sInRvcGljcyI6W3sibWF0Y2giOiIqIn1dfV0sImV4cCI6NDEwMjQ0NDgwMH0.z_S8IP5WZsCK8h3pcq0PB5zvJE0OdTrGA70khAYJQy4";

/// The token of the pre-standardization conformance suite (conf-old.ts): HS256, a `mercure` claim
/// with publish and subscribe `*`, no `exp`.
const CONFORMANCE_OLD: &str = "eyJhbGciOiJIUzI1NiJ9.eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdLCJzdWJzY3JpYmUiOlsiKiJdfX0.bVXdlWXwfw9ySx7-iV5OpUSHo34RkjUdVzDLBcc6l_g";

pub(crate) fn hs256(secret: &str) -> KeySpec {
    KeySpec::parse("HS256", secret).expect("HS256 secret")
}

/// A verifier with one HS256 key shared by both roles.
pub(crate) fn hs_verifier() -> Verifier {
    Verifier::new(vec![hs256(SECRET)], vec![hs256(SECRET)])
}

/// The claims of a current-revision token granting `actions` on `*` to `localhost`.
pub(crate) fn claims(actions: &[&str]) -> Value {
    json!({
        "iss": DEFAULT_ISSUER,
        "aud": AUD,
        "sub": "urn:uuid:bb3de268",
        "exp": NOW + 600,
        "authorization_details": [
            {"type": DETAIL_TYPE, "actions": actions, "topics": [{"match": "*"}]}
        ]
    })
}

fn encoding_key(algorithm: Algorithm, secret: &str) -> EncodingKey {
    match algorithm.family() {
        AlgorithmFamily::Hmac => EncodingKey::from_secret(secret.as_bytes()).expect("secret"),
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("RSA key"),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("EC key"),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("Ed key"),
    }
}

/// A token with header `{"alg", "typ": "at+jwt"}` (plus `kid`), signed with the test key of
/// `algorithm` (for HMAC, `secret`).
pub(crate) fn sign_with(algorithm: Algorithm, secret: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.typ = Some("at+jwt".into());
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(algorithm, secret)).expect("encode")
}

/// An HS256 token with [`SECRET`].
pub(crate) fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, SECRET, None, claims)
}

/// A token with any header, signed as its `alg` says with the test key (or `secret`).
fn sign_raw(header: &Value, claims: &Value, algorithm: Algorithm, secret: &str) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let message = format!("{}.{}", part(header), part(claims));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &encoding_key(algorithm, secret), algorithm)
            .expect("sign");
    format!("{message}.{signature}")
}

fn verify(verifier: &Verifier, token: &str, role: Role) -> Result<Grant, TokenError> {
    verifier.verify(token, role, &[AUD], NOW)
}

fn refused(verifier: &Verifier, token: &str, role: Role) -> InvalidReason {
    match verify(verifier, token, role) {
        Err(TokenError::Invalid(reason)) => reason,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

fn exact(value: &str) -> RawMatcher {
    RawMatcher { kind: MatcherKind::Exact, value: value.into() }
}

fn legacy(value: &str) -> RawMatcher {
    RawMatcher { kind: MatcherKind::Legacy, value: value.into() }
}

#[test]
fn the_current_conformance_token_verifies_with_the_default_secret() {
    let audiences = host_audiences("localhost");
    let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let grant = hs_verifier().verify(CONFORMANCE, Role::Publisher, &audiences, NOW).expect("valid");
    assert_eq!(grant.publish, vec![exact("*")]);
    assert_eq!(grant.subscribe, vec![exact("*")]);
    assert_eq!(grant.expires_at, Some(4_102_444_800));
    assert_eq!(grant.issuer.as_deref(), Some("https://localhost"));
    assert!(!grant.legacy);
    // Another host, another hub: its audience is not in the token.
    let other = host_audiences("example.com");
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    assert_eq!(
        hs_verifier().verify(CONFORMANCE, Role::Publisher, &other, NOW),
        Err(TokenError::Invalid(InvalidReason::WrongAudience))
    );
}

#[test]
fn the_old_conformance_token_verifies_in_legacy_mode_only() {
    let grant = verify(&hs_verifier(), CONFORMANCE_OLD, Role::Publisher).expect("valid");
    assert_eq!(grant.publish, vec![legacy("*")]);
    assert_eq!(grant.subscribe, vec![legacy("*")]);
    assert_eq!(grant.expires_at, None);
    assert!(grant.legacy);
    // Without legacy mode it is read as a current token: no typ.
    assert_eq!(
        refused(&hs_verifier().legacy(false), CONFORMANCE_OLD, Role::Publisher),
        InvalidReason::WrongType
    );
}

#[test]
fn every_algorithm_verifies_with_its_own_key() {
    let cases = [
        (Algorithm::HS256, KeySpec::parse("HS256", SECRET)),
        (Algorithm::HS384, KeySpec::parse("hs384", SECRET)),
        (Algorithm::HS512, KeySpec::parse("HS512", SECRET)),
        (Algorithm::RS256, KeySpec::parse("RS256", RSA_PUBLIC)),
        (Algorithm::RS384, KeySpec::parse("RS384", RSA_PUBLIC)),
        (Algorithm::RS512, KeySpec::parse("RS512", RSA_PUBLIC)),
        (Algorithm::PS256, KeySpec::parse("PS256", RSA_PUBLIC)),
        (Algorithm::ES256, KeySpec::parse("ES256", EC_PUBLIC)),
        (Algorithm::EdDSA, KeySpec::parse("EdDSA", ED_PUBLIC)),
    ];
    for (algorithm, key) in cases {
        let key = key.unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        let verifier = Verifier::new(vec![key.clone()], vec![key]);
        let token = sign_with(algorithm, SECRET, None, &claims(&["publish"]));
        let grant =
            verify(&verifier, &token, Role::Publisher).unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        assert_eq!(grant.publish, vec![exact("*")], "{algorithm:?}");
        assert!(grant.subscribe.is_empty(), "{algorithm:?}");
        assert_eq!(grant.subject.as_deref(), Some("urn:uuid:bb3de268"));
        assert_eq!(grant.expires_at, Some(NOW + 600));
        // RS256 and PS256 share a key but not an algorithm: each key has exactly one.
        if algorithm == Algorithm::PS256 {
            let rs = sign_with(Algorithm::RS256, SECRET, None, &claims(&["publish"]));
            assert_eq!(refused(&verifier, &rs, Role::Publisher), InvalidReason::AlgorithmNotAllowed);
        }
    }
}

#[test]
fn a_key_checks_only_tokens_of_its_own_algorithm() {
    // Same family, two algorithms: the HS512 secret must not verify an HS256 token.
    let hs512_secret = "the HS512 secret, which is sixty-four bytes long, give or take a few";
    let verifier =
        Verifier::new(vec![hs256(SECRET), KeySpec::parse("HS512", hs512_secret).expect("HS512")], vec![]);
    let token = sign_with(Algorithm::HS256, hs512_secret, None, &claims(&["publish"]));
    assert_eq!(refused(&verifier, &token, Role::Publisher), InvalidReason::BadSignature);
    assert_eq!(verifier.signature_checks(), 1, "only the HS256 key was tried");
    let token = sign_with(Algorithm::HS512, hs512_secret, None, &claims(&["publish"]));
    assert!(verify(&verifier, &token, Role::Publisher).is_ok());
}

#[test]
fn the_attack_table_is_refused() {
    let rs_verifier = {
        let key = KeySpec::parse("RS256", RSA_PUBLIC).expect("RSA");
        Verifier::new(vec![key.clone()], vec![key])
    };
    let good = claims(&["publish", "subscribe"]);
    let header = |extra: Value| {
        let mut h = json!({"alg": "HS256", "typ": "at+jwt"});
        h.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        h
    };
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        change(&mut c);
        sign(&c)
    };
    let detail = |d: Value| with(&|c| c["authorization_details"] = json!([d]));
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good).expect("json"))
    );
    // HS256 with the RSA public key's PEM bytes as the HMAC secret, against an RS256 hub.
    let confused = sign_with(Algorithm::HS256, RSA_PUBLIC, None, &good);
    let good_token = sign(&good);
    let truncated = &good_token[..good_token.len() - 3];
    let too_many_details: Vec<Value> = (0..=MAX_DETAILS)
        .map(|i| json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": format!("/t/{i}")}]}))
        .collect();
    let too_many_topics: Vec<Value> =
        (0..=MAX_DETAIL_TOPICS).map(|i| json!({"match": format!("/t/{i}")})).collect();

    let hs = hs_verifier();
    let cases: Vec<(&str, &Verifier, String, InvalidReason)> = vec![
        ("alg none", &hs, alg_none, InvalidReason::AlgorithmNotAllowed),
        (
            "HS256 with the RSA public key as secret",
            &rs_verifier,
            confused,
            InvalidReason::AlgorithmNotAllowed,
        ),
        ("expired", &hs, with(&|c| c["exp"] = json!(NOW)), InvalidReason::Expired),
        ("expired long ago", &hs, with(&|c| c["exp"] = json!(NOW - 3600)), InvalidReason::Expired),
        (
            "not yet valid",
            &hs,
            with(&|c| c["nbf"] = json!(NOW + NBF_LEEWAY_SECS + 1)),
            InvalidReason::NotYetValid,
        ),
        (
            "no exp",
            &hs,
            with(&|c| _ = c.as_object_mut().map(|c| c.remove("exp"))),
            InvalidReason::MissingExpiry,
        ),
        ("exp not a number", &hs, with(&|c| c["exp"] = json!("soon")), InvalidReason::BadClaim("exp")),
        (
            "wrong aud",
            &hs,
            with(&|c| c["aud"] = json!("https://evil.example/.well-known/mercure")),
            InvalidReason::WrongAudience,
        ),
        (
            "no aud",
            &hs,
            with(&|c| _ = c.as_object_mut().map(|c| c.remove("aud"))),
            InvalidReason::WrongAudience,
        ),
        (
            "aud array without us",
            &hs,
            with(&|c| c["aud"] = json!(["https://a", "https://b"])),
            InvalidReason::WrongAudience,
        ),
        (
            "aud array with a number",
            &hs,
            with(&|c| c["aud"] = json!([AUD, 7])),
            InvalidReason::BadClaim("aud"),
        ),
        (
            "wrong iss",
            &hs,
            with(&|c| c["iss"] = json!("https://evil.example")),
            InvalidReason::UntrustedIssuer,
        ),
        (
            "no iss",
            &hs,
            with(&|c| _ = c.as_object_mut().map(|c| c.remove("iss"))),
            InvalidReason::UntrustedIssuer,
        ),
        (
            "missing typ",
            &hs,
            sign_raw(&json!({"alg": "HS256"}), &good, Algorithm::HS256, SECRET),
            InvalidReason::WrongType,
        ),
        (
            "typ JWT",
            &hs,
            sign_raw(&header(json!({"typ": "JWT"})), &good, Algorithm::HS256, SECRET),
            InvalidReason::WrongType,
        ),
        (
            "jku",
            &hs,
            sign_raw(&header(json!({"jku": "https://evil.example/jwks"})), &good, Algorithm::HS256, SECRET),
            InvalidReason::KeyInHeader("jku"),
        ),
        (
            "jwk",
            &hs,
            sign_raw(
                &header(json!({"jwk": {"kty": "oct", "k": "c2VjcmV0"}})),
                &good,
                Algorithm::HS256,
                SECRET,
            ),
            InvalidReason::KeyInHeader("jwk"),
        ),
        (
            "x5u",
            &hs,
            sign_raw(&header(json!({"x5u": "https://evil.example/cert"})), &good, Algorithm::HS256, SECRET),
            InvalidReason::KeyInHeader("x5u"),
        ),
        (
            "x5c",
            &hs,
            sign_raw(&header(json!({"x5c": ["MIIB"]})), &good, Algorithm::HS256, SECRET),
            InvalidReason::KeyInHeader("x5c"),
        ),
        (
            "crit",
            &hs,
            sign_raw(&header(json!({"crit": ["exp"], "exp": 1})), &good, Algorithm::HS256, SECRET),
            InvalidReason::CriticalHeader,
        ),
        ("truncated signature", &hs, truncated.to_string(), InvalidReason::BadSignature),
        (
            "signed with another secret",
            &hs,
            sign_with(Algorithm::HS256, "another secret of thirty-two bytes", None, &good),
            InvalidReason::BadSignature,
        ),
        (
            "truncated token",
            &hs,
            good_token[..good_token.len() / 2].to_string(),
            InvalidReason::Malformed("not three parts"),
        ),
        ("empty", &hs, String::new(), InvalidReason::Malformed("not three parts")),
        ("four parts", &hs, format!("{good_token}.x"), InvalidReason::Malformed("not three parts")),
        ("garbage", &hs, "a.b.c".into(), InvalidReason::Malformed("header is not base64url JSON object")),
        ("too long", &hs, "a".repeat(MAX_TOKEN_BYTES + 1), InvalidReason::Malformed("too long")),
        (
            "bad match_type",
            &hs,
            detail(
                json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "/a", "match_type": "regex"}]}),
            ),
            InvalidReason::BadAuthorization("unsupported match_type"),
        ),
        (
            "match_type in the wrong case",
            &hs,
            detail(
                json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "/a", "match_type": "Exact"}]}),
            ),
            InvalidReason::BadAuthorization("unsupported match_type"),
        ),
        (
            "match_type null",
            &hs,
            detail(
                json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "/a", "match_type": null}]}),
            ),
            InvalidReason::BadAuthorization("unsupported match_type"),
        ),
        (
            "non-string action",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": ["subscribe", 1], "topics": [{"match": "/a"}]})),
            InvalidReason::BadAuthorization("non-string action"),
        ),
        (
            "no actions",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": [], "topics": [{"match": "/a"}]})),
            InvalidReason::BadAuthorization("actions missing, empty or not an array"),
        ),
        (
            "no topics",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": []})),
            InvalidReason::BadAuthorization("topics missing, empty or not an array"),
        ),
        (
            "a bare string topic",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": ["/a"]})),
            InvalidReason::BadAuthorization("topic entry is not an object"),
        ),
        (
            "a topic without match",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match_type": "exact"}]})),
            InvalidReason::BadAuthorization("topic entry without a string match"),
        ),
        (
            "an empty match",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": ""}]})),
            InvalidReason::BadAuthorization("empty match"),
        ),
        (
            "a control character",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "/a\nid: 1"}]})),
            InvalidReason::BadAuthorization("control character in a matcher"),
        ),
        (
            "a format character",
            &hs,
            detail(
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "/a\u{200b}b"}]}),
            ),
            InvalidReason::BadAuthorization("format character in a matcher"),
        ),
        (
            "a pattern too long",
            &hs,
            detail(
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "a".repeat(MAX_PATTERN_BYTES + 1)}]}),
            ),
            InvalidReason::OverLimit("pattern too long"),
        ),
        (
            "payload not an object",
            &hs,
            detail(
                json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "/a"}], "payload": "x"}),
            ),
            InvalidReason::BadAuthorization("payload is not an object"),
        ),
        (
            "a detail without type",
            &hs,
            detail(json!({"actions": ["publish"], "topics": [{"match": "/a"}]})),
            InvalidReason::BadAuthorization("detail without a string type"),
        ),
        (
            "details not an array",
            &hs,
            with(&|c| c["authorization_details"] = json!({"type": DETAIL_TYPE})),
            InvalidReason::BadAuthorization("authorization_details is not an array"),
        ),
        (
            "too many details",
            &hs,
            with(&|c| c["authorization_details"] = json!(too_many_details)),
            InvalidReason::OverLimit("too many authorization details"),
        ),
        (
            "too many topics",
            &hs,
            detail(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": too_many_topics})),
            InvalidReason::OverLimit("too many topic matchers"),
        ),
    ];
    for (name, verifier, token, reason) in cases {
        assert_eq!(verify(verifier, &token, Role::Publisher), Err(TokenError::Invalid(reason)), "{name}");
    }
    // The same claims, well signed, pass: each case fails for its own reason.
    assert!(verify(&hs, &good_token, Role::Publisher).is_ok());
    assert!(verify(&hs, &with(&|c| c["nbf"] = json!(NOW + NBF_LEEWAY_SECS)), Role::Publisher).is_ok());
    assert!(verify(&hs, &with(&|c| c["exp"] = json!(NOW + 1)), Role::Publisher).is_ok());
    assert!(verify(&rs_verifier, &sign_with(Algorithm::RS256, "", None, &good), Role::Publisher).is_ok());
}

#[test]
fn a_bad_token_costs_no_signature_check() {
    let verifier = hs_verifier();
    let expired = sign(&json!({"iss": DEFAULT_ISSUER, "aud": AUD, "exp": NOW - 1}));
    let _ = verify(&verifier, &expired, Role::Subscriber);
    let _ = verify(&verifier, "a.b.c", Role::Subscriber);
    assert_eq!(verifier.signature_checks(), 0);
    let _ = verify(&verifier, &sign(&claims(&["subscribe"])), Role::Subscriber);
    assert_eq!(verifier.signature_checks(), 1);
}

#[test]
fn typ_is_compared_without_case_or_the_application_prefix() {
    let verifier = hs_verifier();
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
        let token =
            sign_raw(&json!({"alg": "HS256", "typ": typ}), &claims(&["publish"]), Algorithm::HS256, SECRET);
        assert!(verify(&verifier, &token, Role::Publisher).is_ok(), "{typ}");
    }
    for typ in ["jwt", "application/jwt", "at+jwt; charset=utf-8", "xapplication/at+jwt"] {
        let token =
            sign_raw(&json!({"alg": "HS256", "typ": typ}), &claims(&["publish"]), Algorithm::HS256, SECRET);
        assert_eq!(refused(&verifier, &token, Role::Publisher), InvalidReason::WrongType, "{typ}");
    }
}

#[test]
fn aud_may_be_an_array_and_configured_audiences_replace_the_request_ones() {
    let token = sign(&json!({
        "iss": DEFAULT_ISSUER, "aud": ["https://other", AUD], "exp": NOW + 60,
        "authorization_details": [{"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "/a"}]}]
    }));
    assert!(verify(&hs_verifier(), &token, Role::Publisher).is_ok());
    let configured = hs_verifier().audiences(vec!["https://other".into()]);
    assert!(configured.verify(&token, Role::Publisher, &["https://ignored"], NOW).is_ok());
    assert_eq!(configured.configured_audiences(), ["https://other".to_string()]);
    let elsewhere = hs_verifier().audiences(vec!["https://hub.example.com/.well-known/mercure".into()]);
    assert_eq!(refused(&elsewhere, &token, Role::Publisher), InvalidReason::WrongAudience);
    // No audience at all (no Host, none configured): nothing can match.
    assert_eq!(
        hs_verifier().verify(&token, Role::Publisher, &[], NOW),
        Err(TokenError::Invalid(InvalidReason::WrongAudience))
    );
}

#[test]
fn trusted_issuers_are_configured() {
    let token = sign(&json!({
        "iss": "https://auth.example.com", "aud": AUD, "exp": NOW + 60,
    }));
    assert_eq!(refused(&hs_verifier(), &token, Role::Publisher), InvalidReason::UntrustedIssuer);
    let verifier = hs_verifier().issuers(vec!["https://localhost".into(), "https://auth.example.com".into()]);
    let grant = verify(&verifier, &token, Role::Publisher).expect("valid");
    // No authorization_details: valid, and grants nothing.
    assert_eq!(
        grant,
        Grant {
            expires_at: Some(NOW + 60),
            issuer: Some("https://auth.example.com".into()),
            ..Grant::default()
        }
    );
}

#[test]
fn a_key_bound_to_an_issuer_checks_only_that_issuers_tokens() {
    let issuers = vec!["https://a.example".to_string(), "https://b.example".to_string()];
    let a = hs256(SECRET).with_issuer("https://a.example");
    let b = hs256("the secret of issuer b, 32 bytes long").with_issuer("https://b.example");
    let verifier = Verifier::new(vec![a, b], vec![]).issuers(issuers);
    let claims_of = |iss: &str| json!({"iss": iss, "aud": AUD, "exp": NOW + 60});
    assert!(verify(&verifier, &sign(&claims_of("https://a.example")), Role::Publisher).is_ok());
    // Signed with a's key, claiming to be b: b's key alone is tried.
    assert_eq!(
        refused(&verifier, &sign(&claims_of("https://b.example")), Role::Publisher),
        InvalidReason::BadSignature
    );
    assert_eq!(verifier.signature_checks(), 2);
}

#[test]
fn publisher_and_subscriber_keys_are_separate() {
    let publisher = hs256("the publishers' secret, at least 32 bytes");
    let subscriber = KeySpec::parse("EdDSA", ED_PUBLIC).expect("Ed25519");
    let verifier = Verifier::new(vec![publisher], vec![subscriber]);
    let subscriber_token = sign_with(Algorithm::EdDSA, "", None, &claims(&["publish", "subscribe"]));
    assert!(verify(&verifier, &subscriber_token, Role::Subscriber).is_ok());
    assert_eq!(refused(&verifier, &subscriber_token, Role::Publisher), InvalidReason::AlgorithmNotAllowed);
    // Two HMAC secrets: same algorithm, the other role's key does not verify.
    let verifier =
        Verifier::new(vec![hs256("the publishers' secret, at least 32 bytes")], vec![hs256(SECRET)]);
    let subscriber_token = sign(&claims(&["publish", "subscribe"]));
    assert!(verify(&verifier, &subscriber_token, Role::Subscriber).is_ok());
    assert_eq!(refused(&verifier, &subscriber_token, Role::Publisher), InvalidReason::BadSignature);
}

#[test]
fn kid_chooses_among_the_configured_keys() {
    let first = KeySpec::parse("HS256", "kid:2026-01:the first secret, at least 32 bytes").expect("key");
    let second = KeySpec::parse("HS256", "kid:2026-02:the second secret, at least 32 bytes").expect("key");
    assert_eq!(second.kid(), Some("2026-02"));
    let verifier = Verifier::new(vec![first, second], vec![]);
    let body = claims(&["publish"]);
    let signed = |secret: &str, kid: Option<&str>| sign_with(Algorithm::HS256, secret, kid, &body);

    // The named key alone is tried.
    assert!(verify(
        &verifier,
        &signed("the second secret, at least 32 bytes", Some("2026-02")),
        Role::Publisher
    )
    .is_ok());
    assert_eq!(verifier.signature_checks(), 1);
    // Named the wrong key: the right one is not tried behind its back.
    assert_eq!(
        refused(&verifier, &signed("the second secret, at least 32 bytes", Some("2026-01")), Role::Publisher),
        InvalidReason::BadSignature
    );
    assert_eq!(verifier.signature_checks(), 2);
    // A kid no key has, and no kid-less key to fall back on.
    assert_eq!(
        refused(&verifier, &signed("the second secret, at least 32 bytes", Some("2025-12")), Role::Publisher),
        InvalidReason::NoKey
    );
    assert_eq!(verifier.signature_checks(), 2);
    // No kid: every key of the algorithm is tried.
    assert!(verify(&verifier, &signed("the second secret, at least 32 bytes", None), Role::Publisher).is_ok());
    assert_eq!(verifier.signature_checks(), 4);

    // Keys without a kid serve tokens naming an unknown kid.
    let verifier = Verifier::new(vec![hs256(SECRET)], vec![]);
    assert!(verify(
        &verifier,
        &sign_with(Algorithm::HS256, SECRET, Some("anything"), &body),
        Role::Publisher
    )
    .is_ok());
}

#[test]
fn unknown_actions_and_detail_types_grant_nothing() {
    let token = sign(&json!({
        "iss": DEFAULT_ISSUER, "aud": AUD, "exp": NOW + 60,
        "authorization_details": [
            {"type": "https://example.com/payments", "actions": 7, "topics": "not ours to judge"},
            {"type": DETAIL_TYPE, "actions": ["read-history"], "topics": [{"match": "/a"}]},
            {"type": DETAIL_TYPE, "actions": ["subscribe", "future"], "topics": [{"match": "/b/:id", "match_type": "urlpattern"}]},
        ]
    }));
    let grant = verify(&hs_verifier(), &token, Role::Subscriber).expect("valid");
    assert!(grant.publish.is_empty());
    assert_eq!(grant.subscribe, vec![RawMatcher { kind: MatcherKind::UrlPattern, value: "/b/:id".into() }]);

    let only_foreign = sign(&json!({
        "iss": DEFAULT_ISSUER, "aud": AUD, "exp": NOW + 60,
        "authorization_details": [{"type": "https://example.com/payments", "actions": ["publish"], "topics": [{"match": "*"}]}]
    }));
    let grant = verify(&hs_verifier(), &only_foreign, Role::Publisher).expect("valid");
    assert!(grant.publish.is_empty() && grant.subscribe.is_empty());
}

#[test]
fn payloads_follow_the_first_matching_subscribe_detail() {
    let token = sign(&json!({
        "iss": DEFAULT_ISSUER, "aud": AUD, "exp": NOW + 60,
        "authorization_details": [
            {"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "https://example.com/foo"}], "payload": {"custom1": 1}},
            {"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "https://example.com/pub"}]},
            {"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "https://example.com/bar/:id", "match_type": "urlpattern"}, {"match": "/x"}]},
            {"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "*"}], "payload": {"custom3": 3}},
        ]
    }));
    let grant = verify(&hs_verifier(), &token, Role::Subscriber).expect("valid");
    assert_eq!(grant.subscribe.len(), 4);
    assert_eq!(grant.publish, vec![exact("https://example.com/pub")]);
    let ranges: Vec<_> = grant.subscribe_details.iter().map(|d| d.matchers.clone()).collect();
    assert_eq!(ranges, vec![0..1, 1..3, 3..4]);
    // A stand-in for the compiled matchers: the subscription's matcher equals the value, or `*`.
    let payload_of = |subscription: &str| {
        grant
            .payload_for(|i| grant.subscribe[i].value == "*" || grant.subscribe[i].value == subscription)
            .cloned()
    };
    assert_eq!(payload_of("https://example.com/foo"), Some(json!({"custom1": 1})));
    // The first matching detail has no payload: none, not the later wildcard's.
    assert_eq!(payload_of("/x"), None);
    assert_eq!(payload_of("https://example.com/other"), Some(json!({"custom3": 3})));
}

#[test]
fn legacy_claims_give_selectors_and_payloads() {
    let token = sign_raw(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({
            "iss": "https://my-app.example", "aud": "my-app",
            "mercure": {
                "publish": ["https://example.com/books/{id}"],
                "subscribe": ["https://example.com/users/42", {"match": "/b/:id", "match_type": "urlpattern", "payload": {"p": 2}}],
                "payload": {"user": 42}
            }
        }),
        Algorithm::HS256,
        SECRET,
    );
    // iss and aud are not checked on a pre-standardization token: the old hubs ignored them.
    let grant = verify(&hs_verifier(), &token, Role::Subscriber).expect("valid");
    assert!(grant.legacy);
    assert_eq!(grant.publish, vec![legacy("https://example.com/books/{id}")]);
    assert_eq!(
        grant.subscribe,
        vec![
            legacy("https://example.com/users/42"),
            RawMatcher { kind: MatcherKind::UrlPattern, value: "/b/:id".into() }
        ]
    );
    assert_eq!(grant.payload_for(|i| i == 1), Some(&json!({"p": 2})));
    assert_eq!(grant.payload_for(|i| i == 0), Some(&json!({"user": 42})));
    assert_eq!(grant.payload_for(|_| false), Some(&json!({"user": 42})));

    // The namespaced claim of the old hubs.
    let namespaced = sign_raw(
        &json!({"alg": "HS256"}),
        &json!({"https://mercure.rocks/": {"subscribe": ["*"]}}),
        Algorithm::HS256,
        SECRET,
    );
    assert_eq!(
        verify(&hs_verifier(), &namespaced, Role::Subscriber).expect("valid").subscribe,
        vec![legacy("*")]
    );

    // exp and nbf are enforced when present.
    let old = |claims: Value| sign_raw(&json!({"alg": "HS256"}), &claims, Algorithm::HS256, SECRET);
    let expired = old(json!({"exp": NOW, "mercure": {"subscribe": ["*"]}}));
    assert_eq!(refused(&hs_verifier(), &expired, Role::Subscriber), InvalidReason::Expired);
    let early = old(json!({"nbf": NOW + 60, "mercure": {"subscribe": ["*"]}}));
    assert_eq!(refused(&hs_verifier(), &early, Role::Subscriber), InvalidReason::NotYetValid);
    // An authorization_details claim makes it a current token, whatever its mercure claim says.
    let both = old(json!({"exp": NOW + 60, "mercure": {"subscribe": ["*"]}, "authorization_details": []}));
    assert_eq!(refused(&hs_verifier(), &both, Role::Subscriber), InvalidReason::WrongType);
    // Shapes.
    for (claim, reason) in [
        (json!("*"), InvalidReason::BadAuthorization("mercure claim is not an object")),
        (json!({"publish": "*"}), InvalidReason::BadAuthorization("mercure selectors are not an array")),
        (
            json!({"publish": [1]}),
            InvalidReason::BadAuthorization("selector is neither a string nor an object"),
        ),
        (
            json!({"publish": [{"match": "/a", "match_type": "uritemplate"}]}),
            InvalidReason::BadAuthorization("unsupported match_type"),
        ),
        (
            json!({"subscribe": vec!["*"; MAX_LEGACY_SELECTORS + 1]}),
            InvalidReason::OverLimit("too many selectors"),
        ),
    ] {
        assert_eq!(refused(&hs_verifier(), &old(json!({"mercure": claim})), Role::Subscriber), reason);
    }
    assert!(verify(
        &hs_verifier(),
        &old(json!({"mercure": {"publish": null, "subscribe": []}})),
        Role::Subscriber
    )
    .is_ok());
}

#[test]
fn key_specs_are_checked_when_they_are_built() {
    let err = |alg: &str, value: &str| KeySpec::parse(alg, value).expect_err("refused").to_string();
    assert!(err("none", SECRET).starts_with("unknown JWT algorithm \"none\""), "{}", err("none", SECRET));
    assert!(err("HS256", "").contains("empty"));
    assert!(err("HS256", RSA_PUBLIC).contains("PEM text"));
    assert!(err("HS256", "kid::secret").contains("kid:"));
    assert!(err("RS256", RSA_PRIVATE).contains("private key"));
    assert!(err("ES256", EC_PUBLIC.replace("MFkw", "MFkx").as_str()).contains("not an EC public key"));
    assert_eq!(err("ES256", EC384_PUBLIC), "ES256 JWT key PEM text: not an EC P-256 public key");
    assert!(err("ES384", EC_PUBLIC).contains("not an EC P-384 public key"));
    assert!(err("RS256", EC_PUBLIC).contains("not an RSA public key"));
    assert!(err("EdDSA", RSA_PUBLIC).contains("not an Ed25519 public key"));
    assert!(err("RS256", RSA1024_PUBLIC).contains("at least 2048"), "{}", err("RS256", RSA1024_PUBLIC));

    let dir = std::env::temp_dir().join(format!("ssed-jwt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = dir.join("missing.pem");
    let message = err("ES256", missing.to_str().expect("utf-8"));
    assert_eq!(message, format!("ES256 JWT key file {}: no such file", missing.display()));
    let path = dir.join("ec.pem");
    std::fs::write(&path, EC_PUBLIC).expect("write");
    let key = KeySpec::parse("ES256", &format!("kid:ec1:{}", path.display())).expect("from file");
    assert_eq!((key.algorithm(), key.kid()), ("ES256", Some("ec1")));
    assert!(format!("{key:?}").contains("ec.pem"));
    std::fs::write(&path, "not a key").expect("write");
    assert!(err("ES256", path.to_str().expect("utf-8")).contains("not an EC public key"));
    std::fs::remove_dir_all(&dir).expect("clean up");

    // The secret never shows in Debug; a short one is flagged for a warning.
    let short = KeySpec::parse("HS256", "hunter2").expect("accepted");
    assert!(!format!("{short:?}").contains("hunter2"));
    assert!(short.is_short_secret());
    assert!(!hs256(SECRET).is_short_secret());
    assert!(KeySpec::parse("HS512", SECRET).expect("accepted").is_short_secret());
}

#[test]
fn errors_answer_as_rfc_6750_says() {
    let meta = Some("https://hub.example/.well-known/oauth-protected-resource/.well-known/mercure");
    let cases = [
        (TokenError::Missing, None, 401, "Bearer"),
        (TokenError::Invalid(InvalidReason::Expired), None, 401, r#"Bearer error="invalid_token""#),
        (
            TokenError::InvalidRequest(RequestProblem::NotBearer),
            None,
            400,
            r#"Bearer error="invalid_request""#,
        ),
        (TokenError::InsufficientScope, None, 403, r#"Bearer error="insufficient_scope""#),
        (
            TokenError::Missing,
            meta,
            401,
            r#"Bearer resource_metadata="https://hub.example/.well-known/oauth-protected-resource/.well-known/mercure""#,
        ),
        (
            TokenError::Invalid(InvalidReason::BadSignature),
            Some(r#"https://h/"q"\"#),
            401,
            r#"Bearer error="invalid_token", resource_metadata="https://h/\"q\"\\""#,
        ),
    ];
    for (error, metadata, status, header) in cases {
        assert_eq!(error.response(metadata), (status, header.to_string()), "{error}");
    }
    // The reason is for the log only.
    let (_, header) = TokenError::Invalid(InvalidReason::Expired).response(None);
    assert!(!header.contains("expired"));
    assert_eq!(TokenError::Invalid(InvalidReason::Expired).to_string(), "invalid token: expired");
}
