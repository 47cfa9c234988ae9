//! What a valid token grants ([`Grant`]): the shape rules of its `authorization_details` or
//! `mercure` claim, read into raw matchers and payloads. The signature and the registered claims
//! are `jwt.rs`'s, which reads the grant before checking the signature (a malformed grant is as
//! refused as a forged one, and costs no signature check) and keeps it only if the signature holds.

use std::ops::Range;

use serde_json::Value;

use super::jwt::InvalidReason;
use super::rules::{self, RuleError};
use super::MatcherKind;

/// The `type` of a Mercure authorization detail (spec, "Authorization Details"), compared byte by
/// byte.
pub const DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// The most Mercure authorization details one token may carry (spec: implementation-defined
/// maximums; the Mercure.rocks hub's value, its subscribe query's matcher cap).
pub const MAX_DETAILS: usize = 100;

/// The most topic matchers one token may carry, summed over its Mercure authorization details
/// (the Mercure.rocks hub's value). Each may cost a URL Pattern compilation.
pub const MAX_DETAIL_TOPICS: usize = 100;

/// The most selectors in each of `mercure.publish` and `mercure.subscribe` of a
/// pre-standardization token (the Mercure.rocks hub's value for that claim).
pub const MAX_LEGACY_SELECTORS: usize = 1000;

/// The longest matcher or selector value, in bytes: the hub's one cap on matcher values, as for a
/// subscription's (the matcher module refuses longer ones, so a larger cap here could only turn
/// "too long" into "does not compile").
pub const MAX_PATTERN_BYTES: usize = rules::MAX_TOPIC_BYTES;
/// A matcher as a token states it; the matcher module compiles it, and a token with a matcher
/// that does not compile is refused by the caller.
///
/// The value `*` is the wildcard, whatever the kind (spec, "Topic Matcher List").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMatcher {
    /// How the value is interpreted.
    pub kind: MatcherKind,
    /// The matcher or selector, as the token gave it.
    pub value: String,
}

/// One `subscribe` authorization detail's matchers and payload, for the Payloads rule.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeDetail {
    /// Its matchers, as indices into [`Grant::subscribe`].
    pub matchers: Range<usize>,
    /// Its `payload` object, if it has one.
    pub payload: Option<Value>,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grant {
    /// The topics it may publish to: one matching each of an update's topics is needed.
    pub publish: Vec<RawMatcher>,
    /// The topics whose private updates it may read: one matching any of an update's topics is
    /// needed.
    pub subscribe: Vec<RawMatcher>,
    /// The subscribe details in token order (for a pre-standardization token, one per selector),
    /// for [`Grant::payload_for`].
    pub subscribe_details: Vec<SubscribeDetail>,
    /// A pre-standardization token's `mercure.payload`: the payload of a subscription that no
    /// detail's own payload covers.
    pub fallback_payload: Option<Value>,
    /// `exp`, Unix seconds; always set for a current-revision token. A subscriber's stream is
    /// closed no later than this.
    pub expires_at: Option<u64>,
    /// `sub`, if the token has one.
    pub subject: Option<String>,
    /// `iss`, if the token has one (for a current-revision token, the trusted issuer it matched).
    pub issuer: Option<String>,
    /// Whether the token is of the pre-standardization revision (a `mercure` claim).
    pub legacy: bool,
}

impl Grant {
    /// The payload of a subscription (spec, "Payloads"): that of the first subscribe detail one of
    /// whose matchers matches the subscription's own matcher string, else the fallback.
    /// `matches(i)` tells whether `self.subscribe[i]` (compiled by the caller) matches it.
    pub fn payload_for(&self, mut matches: impl FnMut(usize) -> bool) -> Option<&Value> {
        for detail in &self.subscribe_details {
            if detail.matchers.clone().any(&mut matches) {
                if detail.payload.is_some() {
                    return detail.payload.as_ref();
                }
                break;
            }
        }
        self.fallback_payload.as_ref()
    }
}
/// A matcher value's own rules: not empty (for the current revision), and the value rules every
/// matcher follows ([`rules::check`]: at most [`MAX_PATTERN_BYTES`], no control or format
/// character).
fn check_pattern(value: &str, allow_empty: bool) -> Result<(), InvalidReason> {
    if value.is_empty() && !allow_empty {
        return Err(InvalidReason::BadAuthorization("empty match"));
    }
    rules::check(value, MAX_PATTERN_BYTES).map_err(|e| match e {
        RuleError::TooLong { .. } => InvalidReason::OverLimit("pattern too long"),
        RuleError::Format { .. } => InvalidReason::BadAuthorization("format character in a matcher"),
        RuleError::Control { .. } | RuleError::NotUtf8 { .. } => {
            InvalidReason::BadAuthorization("control character in a matcher")
        }
    })
}

/// A topic matcher object `{"match": ..., "match_type": ...}` (spec, "Topic Matcher List").
fn topic_matcher(entry: &Value) -> Result<RawMatcher, InvalidReason> {
    use InvalidReason as R;
    let Value::Object(entry) = entry else {
        return Err(R::BadAuthorization("topic entry is not an object"));
    };
    let Some(Value::String(value)) = entry.get("match") else {
        return Err(R::BadAuthorization("topic entry without a string match"));
    };
    let kind = match entry.get("match_type") {
        None => MatcherKind::Exact,
        Some(Value::String(t)) if t == "exact" => MatcherKind::Exact,
        Some(Value::String(t)) if t == "urlpattern" => MatcherKind::UrlPattern,
        Some(_) => return Err(R::BadAuthorization("unsupported match_type")),
    };
    check_pattern(value, false)?;
    Ok(RawMatcher { kind, value: value.clone() })
}

/// The grant of a current-revision token's `authorization_details` (spec, "Authorization
/// Details"): any Mercure detail that fails to parse invalidates the whole token; details of other
/// types are skipped.
pub(super) fn details_grant(details: Option<&Value>) -> Result<Grant, InvalidReason> {
    use InvalidReason as R;
    let mut grant = Grant::default();
    let details = match details {
        None => return Ok(grant),
        Some(Value::Array(details)) => details,
        Some(_) => return Err(R::BadAuthorization("authorization_details is not an array")),
    };
    let (mut count, mut topics_total) = (0, 0);
    for detail in details {
        // RFC 9396 §2: every entry is an object with a string `type`.
        let Value::Object(detail) = detail else {
            return Err(R::BadAuthorization("detail is not an object"));
        };
        match detail.get("type") {
            Some(Value::String(t)) if t == DETAIL_TYPE => {}
            Some(Value::String(_)) => continue,
            _ => return Err(R::BadAuthorization("detail without a string type")),
        }
        count += 1;
        if count > MAX_DETAILS {
            return Err(R::OverLimit("too many authorization details"));
        }
        let (mut publish, mut subscribe) = (false, false);
        match detail.get("actions") {
            Some(Value::Array(actions)) if !actions.is_empty() => {
                for action in actions {
                    match action {
                        Value::String(a) if a == "publish" => publish = true,
                        Value::String(a) if a == "subscribe" => subscribe = true,
                        // An action this hub does not know grants nothing (spec).
                        Value::String(_) => {}
                        _ => return Err(R::BadAuthorization("non-string action")),
                    }
                }
            }
            _ => return Err(R::BadAuthorization("actions missing, empty or not an array")),
        }
        let topics = match detail.get("topics") {
            Some(Value::Array(topics)) if !topics.is_empty() => topics,
            _ => return Err(R::BadAuthorization("topics missing, empty or not an array")),
        };
        topics_total += topics.len();
        if topics_total > MAX_DETAIL_TOPICS {
            return Err(R::OverLimit("too many topic matchers"));
        }
        let matchers = topics.iter().map(topic_matcher).collect::<Result<Vec<_>, _>>()?;
        let payload = match detail.get("payload") {
            None => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(_) => return Err(R::BadAuthorization("payload is not an object")),
        };
        if publish {
            grant.publish.extend(matchers.iter().cloned());
        }
        if subscribe {
            let start = grant.subscribe.len();
            grant.subscribe.extend(matchers);
            grant.subscribe_details.push(SubscribeDetail { matchers: start..grant.subscribe.len(), payload });
        }
    }
    Ok(grant)
}

/// The grant of a pre-standardization `mercure` claim: `publish` and `subscribe` arrays of
/// selectors (strings, [`MatcherKind::Legacy`]; the object form `{"match", "match_type",
/// "payload"}` that later Mercure.rocks versions also read is accepted too), and `payload`.
pub(super) fn legacy_grant(claim: &Value) -> Result<Grant, InvalidReason> {
    use InvalidReason as R;
    let Value::Object(claim) = claim else {
        return Err(R::BadAuthorization("mercure claim is not an object"));
    };
    let mut grant = Grant {
        fallback_payload: claim.get("payload").filter(|p| !p.is_null()).cloned(),
        ..Grant::default()
    };
    for (name, subscribe) in [("publish", false), ("subscribe", true)] {
        let selectors = match claim.get(name) {
            // The old hub (Go) read a null like an absent array.
            None | Some(Value::Null) => continue,
            Some(Value::Array(selectors)) => selectors,
            Some(_) => return Err(R::BadAuthorization("mercure selectors are not an array")),
        };
        if selectors.len() > MAX_LEGACY_SELECTORS {
            return Err(R::OverLimit("too many selectors"));
        }
        for selector in selectors {
            let (matcher, payload) = match selector {
                Value::String(value) => {
                    check_pattern(value, true)?;
                    (RawMatcher { kind: MatcherKind::Legacy, value: value.clone() }, None)
                }
                Value::Object(object) => {
                    let payload = object.get("payload").filter(|p| !p.is_null()).cloned();
                    (topic_matcher(selector)?, payload)
                }
                _ => return Err(R::BadAuthorization("selector is neither a string nor an object")),
            };
            if subscribe {
                let index = grant.subscribe.len();
                grant.subscribe.push(matcher);
                grant.subscribe_details.push(SubscribeDetail { matchers: index..index + 1, payload });
            } else {
                grant.publish.push(matcher);
            }
        }
    }
    Ok(grant)
}
