//! JWT access tokens: which keys the hub trusts ([`KeySpec`]), how a presented token is checked
//! ([`Verifier::verify`]), what a valid one grants ([`Grant`]), and how a refusal is answered
//! ([`TokenError::response`]).
//!
//! Sans-IO: the time is an argument (`now_secs`, Unix seconds) and nothing here reads the clock;
//! the only I/O is reading a PEM file once, when a [`KeySpec`] is built from a path.
//!
//! Two revisions of the protocol are accepted (see the module docs of `mercure`):
//! - the current one (any token with an `authorization_details` claim, or without a `mercure`
//!   claim): an RFC 9068 access token, `typ` `at+jwt`, `iss`, `aud` and `exp` required, rights in
//!   `authorization_details` (RFC 9396) entries of type [`DETAIL_TYPE`](super::grant::DETAIL_TYPE);
//! - the pre-standardization one (a `mercure` claim, when [`Verifier::legacy`] is on): any signed
//!   JWT, `exp`/`nbf` enforced when present, rights in `mercure.publish` / `mercure.subscribe`.
//!
//! Whatever the revision: the signature is checked with one of the hub's configured keys for the
//! role, and only with a key whose algorithm is the token's `alg` (each key has exactly one
//! algorithm, so the allowlist of RFC 8725 §3.1 is the set of configured keys' algorithms, and an
//! HS256 token can never be checked against an RSA public key used as an HMAC secret); `none` is
//! never accepted, and key material carried by the token (`jwk`, `jku`, `x5u`, `x5c`) refuses it.
//!
//! Every check except the signature runs first, on the still-unverified token, and the signature
//! last: any failure is the same `invalid_token` to the client, so the order changes nothing it
//! sees, while an expired, mistyped or misaddressed token costs no public-key operation.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

use super::grant::Grant;
use super::grant::{details_grant, legacy_grant};

/// The issuer trusted when none is configured: the one the Mercure.rocks hub's Caddyfile trusts,
/// so tokens minted for a default Mercure.rocks deployment (and its conformance suite) verify.
pub const DEFAULT_ISSUER: &str = "https://localhost";

/// The longest token looked at. ssed's request head is capped at 16 KiB
/// (`http::request::MAX_HEAD_BYTES`), so no header can carry more; the cap guards embedders and
/// bounds the JSON parsed before the signature is checked.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How far ahead of its `nbf` a token is already accepted, in seconds. RFC 7519 §4.1.5 allows "some
/// small leeway ... to account for clock skew": an issuer minting `nbf = now` on a clock a second
/// or two ahead of the hub's would otherwise see its fresh tokens refused. `exp` gets none: the spec
/// has the hub close a subscriber's stream no later than `exp`, and honouring a token past the
/// instant its stream is closed at would be contradictory.
pub const NBF_LEEWAY_SECS: u64 = 5;

/// Which endpoint's keys check a token: publishing and subscribing may be signed by different keys
/// (the spec recommends it, so a leaked subscriber key cannot publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `POST`: publishing an update.
    Publisher,
    /// `GET`: subscribing, and reading private updates.
    Subscriber,
}

/// One trusted verification key: its one algorithm, an optional `kid`, an optional issuer it is
/// bound to.
///
/// Built from a flag value by [`KeySpec::parse`]. `Debug` never shows the key material.
#[derive(Clone)]
pub struct KeySpec {
    algorithm: Algorithm,
    kid: Option<String>,
    issuer: Option<String>,
    key: DecodingKey,
    /// Where the key came from, for messages: `secret`, `PEM text`, or the file's path.
    source: String,
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySpec")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A key that cannot be used; the message names the algorithm, the file when there is one, and the
/// problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// The algorithm names a key may be given with (JWA, RFC 7518 §3.1 and RFC 8037), matched
/// ASCII-case-insensitively.
const ALGORITHMS: [(&str, Algorithm); 12] = [
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// An algorithm's JWA name.
fn algorithm_name(algorithm: Algorithm) -> &'static str {
    ALGORITHMS.iter().find(|(_, a)| *a == algorithm).map_or("?", |(name, _)| name)
}

/// The smallest RSA modulus accepted, in bits: RFC 7518 §3.3 ("A key of size 2048 bits or larger
/// MUST be used with these algorithms") and §3.5 for PS*.
const MIN_RSA_BITS: usize = 2048;

impl KeySpec {
    /// Reads a key from a flag value and the algorithm it verifies.
    ///
    /// `algorithm` is one of `HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384
    /// EdDSA` (any case). `value` may start with `kid:ID:` to give the key a `kid` (ID holds no
    /// `:`); what follows is, for `HS*`, the secret itself (its UTF-8 bytes; a secret that itself
    /// starts with `kid:` must be given a `kid:` prefix); for the others, PEM text if it starts with
    /// `-----BEGIN`, else the path of a PEM file, read now. The PEM holds a public key (`PUBLIC
    /// KEY`, or `RSA PUBLIC KEY` for RS*/PS*); a private key is refused, since the hub never signs.
    pub fn parse(algorithm: &str, value: &str) -> Result<KeySpec, KeyError> {
        let algorithm = ALGORITHMS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(algorithm))
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let names: Vec<&str> = ALGORITHMS.iter().map(|(name, _)| *name).collect();
                KeyError(format!("unknown JWT algorithm {algorithm:?}: expected one of {}", names.join(", ")))
            })?;
        let (kid, rest) = split_kid(value).map_err(|()| {
            KeyError("a JWT key's kid: prefix needs a non-empty id and a closing ':' (kid:ID:KEY)".into())
        })?;
        let name = algorithm_name(algorithm);
        if algorithm.family() == AlgorithmFamily::Hmac {
            if rest.is_empty() {
                return Err(KeyError(format!("{name} JWT secret is empty")));
            }
            if rest.starts_with("-----BEGIN") {
                return Err(KeyError(format!(
                    "{name} JWT secret is PEM text: a public key is used with its own algorithm \
                     (RS256, ES256, EdDSA ...), never as an HMAC secret"
                )));
            }
            let key = DecodingKey::from_secret(rest.as_bytes())
                .map_err(|e| KeyError(format!("{name} JWT secret: {e}")))?;
            return KeySpec::from_key(algorithm, kid, key, "secret");
        }
        if rest.starts_with("-----BEGIN") {
            return KeySpec::from_pem(algorithm, rest.as_bytes(), "PEM text").map(|k| k.with_kid(kid));
        }
        KeySpec::from_file(algorithm, Path::new(rest)).map(|k| k.with_kid(kid))
    }

    /// Reads a public key for `algorithm` from a PEM file.
    pub fn from_file(algorithm: Algorithm, path: &Path) -> Result<KeySpec, KeyError> {
        let name = algorithm_name(algorithm);
        let pem = std::fs::read(path).map_err(|e| {
            let problem = match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => e.to_string(),
            };
            KeyError(format!("{name} JWT key file {}: {problem}", path.display()))
        })?;
        KeySpec::from_pem(algorithm, &pem, &path.display().to_string())
    }

    /// Reads a public key for `algorithm` from PEM bytes; `source` names them in messages.
    pub fn from_pem(algorithm: Algorithm, pem: &[u8], source: &str) -> Result<KeySpec, KeyError> {
        let name = algorithm_name(algorithm);
        let fail = |problem: &str| KeyError(format!("{name} JWT key {source}: {problem}"));
        if pem.windows(16).any(|w| w == b"PRIVATE KEY-----") {
            return Err(fail("is a private key; give the public key (openssl pkey -in KEY -pubout)"));
        }
        let key = match algorithm.family() {
            AlgorithmFamily::Rsa => {
                DecodingKey::from_rsa_pem(pem).map_err(|_| fail("not an RSA public key in PEM"))?
            }
            AlgorithmFamily::Ec => {
                DecodingKey::from_ec_pem(pem).map_err(|_| fail("not an EC public key in PEM"))?
            }
            AlgorithmFamily::Ed => {
                DecodingKey::from_ed_pem(pem).map_err(|_| fail("not an Ed25519 public key in PEM"))?
            }
            AlgorithmFamily::Hmac => return Err(fail("an HMAC algorithm takes a secret, not a PEM key")),
        };
        KeySpec::from_key(algorithm, None, key, source)
    }

    /// Checks that `key` can verify `algorithm` (the right curve, an RSA key that parses and is
    /// large enough), so a wrong key fails at start-up rather than refusing every token.
    fn from_key(
        algorithm: Algorithm,
        kid: Option<String>,
        key: DecodingKey,
        source: &str,
    ) -> Result<KeySpec, KeyError> {
        let name = algorithm_name(algorithm);
        let fail = |problem: &str| KeyError(format!("{name} JWT key {source}: {problem}"));
        let provider =
            CryptoProvider::try_get_default().ok_or_else(|| fail("no crypto provider compiled in"))?;
        match algorithm.family() {
            AlgorithmFamily::Rsa => {
                // The RSA verifier parses the key only when it verifies; parse it now.
                let der = key.try_get_as_bytes().map_err(|_| fail("not an RSA public key"))?;
                let (n, _e) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
                    .map_err(|_| fail("not an RSA public key"))?;
                let bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
                if bits < MIN_RSA_BITS {
                    return Err(fail(&format!(
                        "RSA key of about {bits} bits; at least {MIN_RSA_BITS} are required"
                    )));
                }
            }
            AlgorithmFamily::Ed => {
                // jsonwebtoken slices the first 32 bytes of an Ed25519 key; a shorter one must not
                // reach it.
                let raw = key.try_get_as_bytes().map_err(|_| fail("not an Ed25519 public key"))?;
                if raw.len() != 32 {
                    return Err(fail("not an Ed25519 public key"));
                }
            }
            AlgorithmFamily::Ec | AlgorithmFamily::Hmac => {}
        }
        // Building the verifier checks an EC point against the algorithm's curve (a P-384 key for
        // ES256 fails here) and an Ed25519 point's encoding.
        (provider.verifier_factory)(&algorithm, &key).map_err(|_| match algorithm {
            Algorithm::ES256 => fail("not an EC P-256 public key"),
            Algorithm::ES384 => fail("not an EC P-384 public key"),
            _ => fail("not a key for this algorithm"),
        })?;
        Ok(KeySpec { algorithm, kid, issuer: None, key, source: source.to_string() })
    }

    /// Gives the key a `kid`: a token naming a `kid` is checked only with the keys of that `kid`
    /// (or, when no key of the role has it, with the keys that have none).
    pub fn with_kid(mut self, kid: Option<String>) -> KeySpec {
        self.kid = kid;
        self
    }

    /// Binds the key to one trusted issuer: a current-revision token is checked with it only when
    /// its `iss` is that issuer (spec, "Token Validation": with several issuers, only the token's
    /// issuer's keys). A key bound to no issuer serves every trusted issuer.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> KeySpec {
        self.issuer = Some(issuer.into());
        self
    }

    /// The key's algorithm (its JWA name).
    pub fn algorithm(&self) -> &'static str {
        algorithm_name(self.algorithm)
    }

    /// The key's `kid`, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether an HMAC secret is shorter than its hash's output, which RFC 7518 §3.2 forbids
    /// ("a key of the same size as the hash output ... or larger MUST be used"). Such secrets are
    /// accepted, as the Mercure.rocks hub accepts them; the caller may warn.
    pub fn is_short_secret(&self) -> bool {
        let min = match self.algorithm {
            Algorithm::HS256 => 32,
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => return false,
        };
        self.key.try_get_as_bytes().map(|k| k.len() < min).unwrap_or(false)
    }
}

/// Splits an optional `kid:ID:` prefix off a key flag's value.
fn split_kid(value: &str) -> Result<(Option<String>, &str), ()> {
    let Some(rest) = value.strip_prefix("kid:") else {
        return Ok((None, value));
    };
    match rest.split_once(':') {
        Some((kid, key)) if !kid.is_empty() => Ok((Some(kid.to_string()), key)),
        _ => Err(()),
    }
}

/// Why a presented token is not valid. Kept for the log; the client only ever sees
/// `invalid_token` (spec, "Error Responses": avoid disclosing why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// Not three base64url parts of JSON objects, over [`MAX_TOKEN_BYTES`], or not UTF-8.
    Malformed(&'static str),
    /// `alg` is `none`, unknown, or not the algorithm of any key configured for the role.
    AlgorithmNotAllowed,
    /// The header carries key material or a key location (`jwk`, `jku`, `x5u`, `x5c`), named.
    KeyInHeader(&'static str),
    /// The header has `crit`: no JWS extension is understood here (RFC 7515 §4.1.11).
    CriticalHeader,
    /// A current-revision token whose header `typ` is missing or not `at+jwt`.
    WrongType,
    /// No configured key of the role has the token's `alg`, `kid` and issuer.
    NoKey,
    /// The signature does not verify with any candidate key.
    BadSignature,
    /// A current-revision token without `exp`.
    MissingExpiry,
    /// `exp` is now or past.
    Expired,
    /// `nbf` is still ahead (beyond [`NBF_LEEWAY_SECS`]).
    NotYetValid,
    /// A current-revision token whose `iss` is missing or not a trusted issuer.
    UntrustedIssuer,
    /// A current-revision token whose `aud` is missing or names none of the hub's identifiers.
    WrongAudience,
    /// A registered claim of the wrong type (named).
    BadClaim(&'static str),
    /// `authorization_details` or the `mercure` claim does not have the spec's shape (what is
    /// wrong is named).
    BadAuthorization(&'static str),
    /// More authorization details, topic matchers or selectors than allowed, or a pattern too long.
    OverLimit(&'static str),
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidReason::Malformed(what) => write!(f, "malformed token: {what}"),
            InvalidReason::AlgorithmNotAllowed => {
                f.write_str("alg not among the configured keys' algorithms")
            }
            InvalidReason::KeyInHeader(name) => write!(f, "header carries {name}"),
            InvalidReason::CriticalHeader => f.write_str("header has crit"),
            InvalidReason::WrongType => f.write_str("typ is not at+jwt"),
            InvalidReason::NoKey => f.write_str("no configured key for this alg, kid and issuer"),
            InvalidReason::BadSignature => f.write_str("bad signature"),
            InvalidReason::MissingExpiry => f.write_str("no exp"),
            InvalidReason::Expired => f.write_str("expired"),
            InvalidReason::NotYetValid => f.write_str("not yet valid (nbf)"),
            InvalidReason::UntrustedIssuer => f.write_str("iss missing or not trusted"),
            InvalidReason::WrongAudience => f.write_str("aud missing or not this hub"),
            InvalidReason::BadClaim(name) => write!(f, "bad {name} claim"),
            InvalidReason::BadAuthorization(what) => write!(f, "bad authorization: {what}"),
            InvalidReason::OverLimit(what) => write!(f, "over limit: {what}"),
        }
    }
}

/// Why the token presented with a request is malformed as a presentation (before any token is
/// looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestProblem {
    /// More than one `Authorization` header.
    RepeatedAuthorization,
    /// An `Authorization` header whose scheme is not `Bearer`.
    NotBearer,
    /// `Authorization: Bearer` with no token, or with bytes a token cannot hold.
    BadBearer,
    /// The legacy `authorization` query parameter given more than once, or empty.
    BadQueryToken,
    /// A cookie token on an unsafe method without an `Origin` or `Referer` header.
    NoOrigin,
    /// A cookie token on an unsafe method from an origin not allowed to publish.
    OriginNotAllowed,
}

impl fmt::Display for RequestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestProblem::RepeatedAuthorization => "more than one Authorization header",
            RequestProblem::NotBearer => "Authorization scheme is not Bearer",
            RequestProblem::BadBearer => "Authorization: Bearer without a well-formed token",
            RequestProblem::BadQueryToken => "authorization query parameter repeated or empty",
            RequestProblem::NoOrigin => "cookie token on an unsafe method without Origin or Referer",
            RequestProblem::OriginNotAllowed => {
                "cookie token on an unsafe method from an origin not allowed to publish"
            }
        })
    }
}

/// Why a request is refused for its token; [`TokenError::response`] tells how the hub answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token, and the operation needs one: `401`, a bare `Bearer` challenge.
    Missing,
    /// The presentation is malformed: `400`, `error="invalid_request"`.
    InvalidRequest(RequestProblem),
    /// The token is not valid: `401`, `error="invalid_token"`.
    Invalid(InvalidReason),
    /// The token is valid but does not allow the operation: `403`, `error="insufficient_scope"`.
    InsufficientScope,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Missing => f.write_str("no token"),
            TokenError::InvalidRequest(problem) => write!(f, "invalid request: {problem}"),
            TokenError::Invalid(reason) => write!(f, "invalid token: {reason}"),
            TokenError::InsufficientScope => f.write_str("token does not allow this"),
        }
    }
}

impl std::error::Error for TokenError {}

impl TokenError {
    /// The status and the `WWW-Authenticate` value the hub answers with (RFC 6750 §3, spec "Error
    /// Responses"). No `realm` (the spec asks for none) and no `error_description`: why a token was
    /// refused is for the log, not the client. `resource_metadata`, when given, is the URL of the
    /// hub's protected resource metadata (RFC 9728 §5.1), which the spec asks every challenge to
    /// carry; it is the hub's own URL, quoted as a quoted-string.
    pub fn response(&self, resource_metadata: Option<&str>) -> (u16, String) {
        let (status, error) = match self {
            TokenError::Missing => (401, None),
            TokenError::InvalidRequest(_) => (400, Some("invalid_request")),
            TokenError::Invalid(_) => (401, Some("invalid_token")),
            TokenError::InsufficientScope => (403, Some("insufficient_scope")),
        };
        let mut header = String::from("Bearer");
        let mut separator = " ";
        if let Some(error) = error {
            header.push_str(separator);
            header.push_str("error=\"");
            header.push_str(error);
            header.push('"');
            separator = ", ";
        }
        if let Some(url) = resource_metadata {
            header.push_str(separator);
            header.push_str("resource_metadata=\"");
            for c in url.chars() {
                if c == '"' || c == '\\' {
                    header.push('\\');
                }
                header.push(c);
            }
            header.push('"');
        }
        (status, header)
    }
}

/// The audiences a request's `Host` stands for when no resource identifier is configured: the hub's
/// canonical URL under both schemes (a TLS terminator in front of ssed makes the scheme unknowable).
pub fn host_audiences(host: &str) -> [String; 2] {
    let path = crate::http::route::HUB_PATH;
    [format!("https://{host}{path}"), format!("http://{host}{path}")]
}

/// Checks presented tokens against the hub's keys, issuers and audiences.
///
/// Immutable once built; [`Verifier::signature_checks`] counts the public-key (or HMAC) operations
/// done, so a cache in front of it can be measured.
#[derive(Debug)]
pub struct Verifier {
    publisher_keys: Vec<KeySpec>,
    subscriber_keys: Vec<KeySpec>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    legacy: bool,
    signature_checks: AtomicU64,
}

impl Verifier {
    /// A verifier with these keys for each role (give the same keys twice for one shared set),
    /// trusting [`DEFAULT_ISSUER`], taking audiences from each request, accepting
    /// pre-standardization tokens.
    pub fn new(publisher_keys: Vec<KeySpec>, subscriber_keys: Vec<KeySpec>) -> Verifier {
        Verifier {
            publisher_keys,
            subscriber_keys,
            issuers: vec![DEFAULT_ISSUER.to_string()],
            audiences: Vec::new(),
            legacy: true,
            signature_checks: AtomicU64::new(0),
        }
    }

    /// Sets the trusted issuers: a current-revision token's `iss` must be one of them exactly.
    pub fn issuers(mut self, issuers: Vec<String>) -> Verifier {
        self.issuers = issuers;
        self
    }

    /// Sets the hub's resource identifiers: a current-revision token's `aud` must name one. When
    /// none are set, [`Verifier::verify`] uses the audiences the caller derives from each request
    /// (see [`host_audiences`]).
    pub fn audiences(mut self, audiences: Vec<String>) -> Verifier {
        self.audiences = audiences;
        self
    }

    /// Whether pre-standardization tokens (a `mercure` claim) are accepted; on by default, since
    /// most deployed applications still mint them.
    pub fn legacy(mut self, legacy: bool) -> Verifier {
        self.legacy = legacy;
        self
    }

    /// The configured resource identifiers (empty: taken from each request).
    pub fn configured_audiences(&self) -> &[String] {
        &self.audiences
    }

    /// How many signatures have been checked (each key tried counts once).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    fn keys(&self, role: Role) -> &[KeySpec] {
        match role {
            Role::Publisher => &self.publisher_keys,
            Role::Subscriber => &self.subscriber_keys,
        }
    }

    /// Checks `token` for `role` at `now_secs` (Unix seconds) and returns what it grants.
    ///
    /// `audiences` are the request's own identifiers (see [`host_audiences`]), used only when no
    /// resource identifier is configured. The only error is [`TokenError::Invalid`].
    pub fn verify(
        &self,
        token: &str,
        role: Role,
        audiences: &[&str],
        now_secs: u64,
    ) -> Result<Grant, TokenError> {
        self.check(token, role, audiences, now_secs).map_err(TokenError::Invalid)
    }

    fn check(&self, token: &str, role: Role, audiences: &[&str], now: u64) -> Result<Grant, InvalidReason> {
        use InvalidReason as R;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(R::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(R::Malformed("not three parts"));
        };
        let header = decode_object(header_b64).ok_or(R::Malformed("header is not base64url JSON object"))?;
        let claims =
            decode_object(claims_b64).ok_or(R::Malformed("claims are not a base64url JSON object"))?;

        // The header: what key may check it.
        for name in ["jwk", "jku", "x5u", "x5c"] {
            if header.contains_key(name) {
                return Err(R::KeyInHeader(name));
            }
        }
        if header.contains_key("crit") {
            return Err(R::CriticalHeader);
        }
        let algorithm = match header.get("alg") {
            Some(Value::String(alg)) => ALGORITHMS
                .iter()
                .find(|(name, _)| name == alg)
                .map(|(_, a)| *a)
                .ok_or(R::AlgorithmNotAllowed)?,
            _ => return Err(R::Malformed("alg is not a string")),
        };
        let keys = self.keys(role);
        if !keys.iter().any(|k| k.algorithm == algorithm) {
            return Err(R::AlgorithmNotAllowed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(R::Malformed("kid is not a string")),
        };

        // The revision, then its claims.
        let legacy_claim = claims.get("mercure").or_else(|| claims.get("https://mercure.rocks/"));
        let legacy = self.legacy && !claims.contains_key("authorization_details") && legacy_claim.is_some();
        let expires_at = numeric_date(&claims, "exp")?;
        let not_before = numeric_date(&claims, "nbf")?;
        let issuer = optional_string(&claims, "iss")?;
        let subject = optional_string(&claims, "sub")?;
        if !legacy {
            let typ = match header.get("typ") {
                Some(Value::String(typ)) => typ.as_str(),
                _ => return Err(R::WrongType),
            };
            if !is_access_token_type(typ) {
                return Err(R::WrongType);
            }
        }
        match expires_at {
            None if !legacy => return Err(R::MissingExpiry),
            Some(exp) if now >= exp => return Err(R::Expired),
            _ => {}
        }
        if let Some(nbf) = not_before {
            if now.saturating_add(NBF_LEEWAY_SECS) < nbf {
                return Err(R::NotYetValid);
            }
        }
        let mut grant = if legacy {
            // The old hubs checked neither `iss` nor `aud`, and tokens minted for them often carry
            // an application's own values: checking them would break the drop-in promise.
            legacy_grant(legacy_claim.unwrap_or(&Value::Null))?
        } else {
            match issuer {
                Some(iss) if self.issuers.iter().any(|i| i == iss) => {}
                _ => return Err(R::UntrustedIssuer),
            }
            let accepted: Vec<&str> = if self.audiences.is_empty() {
                audiences.to_vec()
            } else {
                self.audiences.iter().map(String::as_str).collect()
            };
            check_audience(claims.get("aud"), &accepted)?;
            details_grant(claims.get("authorization_details"))?
        };

        // Last, the signature, with the role's keys of this algorithm, issuer and kid.
        // A pre-standardization token's `iss` means nothing (it is not checked), so any key of the
        // role may have signed it.
        let eligible = |k: &&KeySpec| {
            k.algorithm == algorithm
                && match &k.issuer {
                    None => true,
                    Some(_) if legacy => true,
                    Some(bound) => issuer == Some(bound.as_str()),
                }
        };
        let named = kid.filter(|kid| keys.iter().filter(eligible).any(|k| k.kid.as_deref() == Some(kid)));
        let mut candidates = keys.iter().filter(eligible).filter(|k| match (kid, named) {
            (None, _) => true,
            (Some(_), Some(named)) => k.kid.as_deref() == Some(named),
            (Some(_), None) => k.kid.is_none(),
        });
        let message = &token[..header_b64.len() + 1 + claims_b64.len()];
        let mut tried = false;
        let verified = candidates.any(|k| {
            tried = true;
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            matches!(
                jsonwebtoken::crypto::verify(signature_b64, message.as_bytes(), &k.key, algorithm),
                Ok(true)
            )
        });
        if !tried {
            return Err(R::NoKey);
        }
        if !verified {
            return Err(R::BadSignature);
        }
        grant.expires_at = expires_at;
        grant.subject = subject.map(str::to_string);
        grant.issuer = issuer.map(str::to_string);
        grant.legacy = legacy;
        Ok(grant)
    }
}

/// Decodes one base64url (unpadded) part into a JSON object.
fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// `typ` is `at+jwt`, with or without `application/`, in any case (RFC 7515 §4.1.9, RFC 9068 §4).
fn is_access_token_type(typ: &str) -> bool {
    const PREFIX: &str = "application/";
    let bare = match typ.get(..PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
        _ => typ,
    };
    bare.eq_ignore_ascii_case("at+jwt")
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional), truncated to whole seconds.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, InvalidReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs)),
            (None, Some(secs)) if secs.is_finite() && secs >= 0.0 => Ok(Some(secs as u64)),
            _ => Err(InvalidReason::BadClaim(name)),
        },
        Some(_) => Err(InvalidReason::BadClaim(name)),
    }
}

/// A claim that must be a string when present.
fn optional_string<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, InvalidReason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(InvalidReason::BadClaim(name)),
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3) naming one of `accepted`.
fn check_audience(aud: Option<&Value>, accepted: &[&str]) -> Result<(), InvalidReason> {
    let names = |s: &str| accepted.contains(&s);
    match aud {
        Some(Value::String(s)) if names(s) => Ok(()),
        Some(Value::String(_)) | None => Err(InvalidReason::WrongAudience),
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                match item {
                    Value::String(s) => found |= names(s),
                    _ => return Err(InvalidReason::BadClaim("aud")),
                }
            }
            if found {
                Ok(())
            } else {
                Err(InvalidReason::WrongAudience)
            }
        }
        Some(_) => Err(InvalidReason::BadClaim("aud")),
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
pub(crate) mod tests;
