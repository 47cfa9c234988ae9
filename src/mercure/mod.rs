//! The Mercure hub (feature `mercure`): topic matchers, the hub's request and form rules, and JWT
//! authorization, as pure code; the loop wires them to `/.well-known/mercure` and `/events`.
//!
//! Two revisions of the protocol are spoken at once: the current one (the IETF-style draft of July
//! 2026: `match`/`match_urlpattern` matchers, RFC 9068 access tokens with `authorization_details`)
//! and the pre-standardization one most deployed applications still speak (`topic` selectors with
//! URI templates, the `mercure` claim). See `spec/mercure.md` in dunglas/mercure.

pub mod matcher;
pub mod request;
pub mod rules;

/// How a matcher's value is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatcherKind {
    /// Byte-for-byte comparison (`match`, `match_exact`, `match_type: exact` or absent).
    Exact,
    /// A WHATWG URL Pattern (`match_urlpattern`, `match_type: urlpattern`).
    UrlPattern,
    /// A pre-standardization selector (`topic` query parameter, `mercure` claim): `*`, a URI
    /// template (RFC 6570) when it holds a `{`, otherwise an exact string.
    Legacy,
}

pub mod grant;
pub mod hub;
pub mod jwt;
#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod test_keys;
pub mod token;
