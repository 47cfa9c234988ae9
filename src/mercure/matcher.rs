//! Topic matchers: a `(MatcherKind, value)` pair compiled once, then asked whether a topic matches.
//!
//! - `*` matches every topic, whatever the kind (spec: "Matcher Types").
//! - [`MatcherKind::Exact`]: byte-for-byte comparison, no resolution, no normalization.
//! - [`MatcherKind::UrlPattern`]: a WHATWG URL Pattern. Relative patterns and relative topics are
//!   resolved against the hub's URL; a topic that does not parse as a URL against it never matches;
//!   `ignoreCase` is never set. The `urlpattern` crate compiles each component to a `regex::Regex`,
//!   and that engine matches in time linear in the input (no backtracking), which is the spec's
//!   required defence against pathological patterns ("URL-Pattern Denial of Service").
//! - [`MatcherKind::Legacy`]: the pre-standardization selector, as the Mercure.rocks hub (Go)
//!   evaluates it: `*`; else a topic equal to the value matches; else, when the value holds a `{`,
//!   it is an RFC 6570 URI template and the topic must match the template's regular expression.
//!   Unlike the Go hub, which silently treats a value with a `{` that is not a valid template as a
//!   plain string, an invalid template is refused here, so a typo fails loudly.
//!
//! # URI templates (legacy)
//! A template is compiled into one anchored `regex::Regex` (linear-time too) that accepts what the
//! template could expand to, the way `yosida95/uritemplate`'s `Regexp()` (used by the Go hub) does:
//! - literals match themselves, byte for byte (a `%41` in the template matches `%41`, not `A`);
//! - each expression may expand to nothing (an undefined variable), else to its operator's first
//!   character, then one value, then (for several variables, or for any exploded one) more values
//!   after the operator's separator;
//! - a value is a run of unreserved characters (`A-Z a-z 0-9 - . _ ~`), percent-encoded octets and
//!   `,` (a list's separator); plus `=` for the named operators `;`, `?`, `&` and for exploded
//!   variables; plus the reserved characters (`: / ? # [ ] @ ! $ & ' ( ) * + , ; =`) for `{+var}`
//!   and `{#var}`;
//!
//! | expression | first | separator | value characters |
//! |------------|-------|-----------|------------------|
//! | `{var}`    |       | `,`       | unreserved, pct-encoded, `,` |
//! | `{+var}`   |       | `,`       | unreserved, reserved, pct-encoded |
//! | `{#var}`   | `#`   | `,`       | unreserved, reserved, pct-encoded |
//! | `{.var}`   | `.`   | `.`       | unreserved, pct-encoded, `,` |
//! | `{/var}`   | `/`   | `/`       | unreserved, pct-encoded, `,` |
//! | `{;x,y}`   | `;`   | `;`       | unreserved, pct-encoded, `,`, `=` |
//! | `{?x,y}`   | `?`   | `&`       | unreserved, pct-encoded, `,`, `=` |
//! | `{&x}`     | `&`   | `&`       | unreserved, pct-encoded, `,`, `=` |
//!
//! As in the Go hub, the variable names of `;`, `?` and `&` expressions are not checked against the
//! topic (`{?x}` matches `?y=1`), the prefix modifier (`{var:3}`) does not bound the value's length,
//! and raw non-ASCII characters never match a variable (an expansion percent-encodes them). The
//! operators RFC 6570 reserves (`= , ! @ |`) are refused.

use std::fmt;

use regex::Regex;
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

use super::rules::{self, RuleError, MAX_TOPIC_BYTES};
use super::MatcherKind;

/// The value that matches every topic, whatever the matcher kind.
pub const WILDCARD: &str = "*";

/// A compiled topic matcher.
#[derive(Debug)]
pub struct Matcher {
    kind: MatcherKind,
    source: String,
    compiled: Compiled,
}

#[derive(Debug)]
enum Compiled {
    /// `*`.
    Any,
    /// Byte comparison with `source`.
    Exact,
    /// A URL pattern, and the base relative topics are resolved against.
    UrlPattern { pattern: Box<UrlPattern>, base: Url },
    /// A legacy URI template: equality with `source`, or this anchored regex.
    Template(Regex),
}

/// Why a matcher value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatcherError {
    /// The value broke the character rules or the length cap.
    Rule(RuleError),
    /// The value is not a valid URL pattern; the message is the parser's.
    UrlPattern(String),
    /// The value holds a `{` but is not a valid RFC 6570 URI template.
    Template {
        /// Byte offset where parsing failed.
        at: usize,
        /// What is wrong there.
        reason: &'static str,
    },
}

impl fmt::Display for MatcherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatcherError::Rule(e) => e.fmt(f),
            MatcherError::UrlPattern(e) => write!(f, "is not a valid URL pattern: {e}"),
            MatcherError::Template { at, reason } => {
                write!(f, "is not a valid URI template (RFC 6570): {reason} at byte {at}")
            }
        }
    }
}

impl std::error::Error for MatcherError {}

impl From<RuleError> for MatcherError {
    fn from(e: RuleError) -> Self {
        MatcherError::Rule(e)
    }
}

impl Matcher {
    /// Compiles `value` as a matcher of `kind`; `base` is the hub's URL (for example
    /// `https://example.com/.well-known/mercure`), against which URL patterns and topics resolve.
    pub fn new(kind: MatcherKind, value: &str, base: &Url) -> Result<Matcher, MatcherError> {
        rules::check(value, MAX_TOPIC_BYTES)?;
        let compiled = if value == WILDCARD {
            Compiled::Any
        } else {
            match kind {
                MatcherKind::Exact => Compiled::Exact,
                MatcherKind::UrlPattern => Compiled::UrlPattern {
                    pattern: Box::new(compile_url_pattern(value, base)?),
                    base: base.clone(),
                },
                MatcherKind::Legacy if value.contains('{') => Compiled::Template(compile_template(value)?),
                MatcherKind::Legacy => Compiled::Exact,
            }
        };
        Ok(Matcher { kind, source: value.to_owned(), compiled })
    }

    /// Whether `topic` is selected by this matcher.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.compiled {
            Compiled::Any => true,
            Compiled::Exact => topic == self.source,
            Compiled::UrlPattern { pattern, base } => match base.join(topic) {
                // An evaluation error is a non-match, as the spec asks.
                Ok(url) => pattern.test(UrlPatternMatchInput::Url(url)).unwrap_or(false),
                Err(_) => false,
            },
            Compiled::Template(regex) => topic == self.source || regex.is_match(topic),
        }
    }

    /// Whether this is the wildcard `*`.
    pub fn is_any(&self) -> bool {
        matches!(self.compiled, Compiled::Any)
    }

    /// The topic this matcher selects alone, when it is a plain string comparison (an `exact`
    /// matcher, or a legacy selector without `{`), so a caller can look it up in an index.
    pub fn as_exact(&self) -> Option<&str> {
        match self.compiled {
            Compiled::Exact => Some(&self.source),
            _ => None,
        }
    }

    /// The kind it was compiled as.
    pub fn kind(&self) -> MatcherKind {
        self.kind
    }

    /// The value it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Compiles a URL pattern; only a relative one (a pattern without a protocol) gets the hub's URL
/// as its base.
///
/// Giving the base to an absolute pattern would not be neutral: the standard prefixes a pathname
/// that does not start with `/` with the base's directory even when the pattern has its own
/// protocol, so `urn:*` would become `urn:/.well-known/*` and never match `urn:uuid:...`.
fn compile_url_pattern(value: &str, base: &Url) -> Result<UrlPattern, MatcherError> {
    if has_bare_bracket(value) {
        return Err(MatcherError::UrlPattern(
            "'[' and ']' are only accepted inside a regexp group (IPv6 literal hosts are not \
             supported)"
                .to_owned(),
        ));
    }
    let init = match UrlPatternInit::parse_constructor_string::<Regex>(value, None) {
        Err(urlpattern::Error::BaseUrlRequired) => {
            UrlPatternInit::parse_constructor_string::<Regex>(value, Some(base.clone()))
        }
        other => other,
    }
    .map_err(|e| MatcherError::UrlPattern(e.to_string()))?;
    // `ignore_case: false` spelled out: the spec forbids `ignoreCase`. (urlpattern's `regex` backend
    // drops the flags it is given, so case-insensitivity could not sneak in through it either.)
    let options = UrlPatternOptions { ignore_case: false, ..UrlPatternOptions::default() };
    UrlPattern::parse(init, options).map_err(|e| MatcherError::UrlPattern(e.to_string()))
}

/// Whether the URL pattern holds a `[` or `]`, escaped or not, outside a regexp group.
///
/// urlpattern 0.6.0's constructor-string parser counts such brackets (escaped ones too) in the
/// hostname with an unsigned depth and decrements it on a `]` that closes no `[`: a panic in
/// builds with overflow checks (our tests, debug builds), a wrapped counter otherwise. Where a
/// bracket sits depends on the parser's state machine, so every such bracket is refused; this
/// costs IPv6 literal hosts and literal brackets in paths. Regexp groups are found as the
/// tokenizer finds them; a group it would reject is scanned as plain characters, which errs
/// towards refusing.
fn has_bare_bracket(pattern: &str) -> bool {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if matches!(bytes.get(i + 1), Some(b'[' | b']')) => return true,
            b'\\' => i += 2,
            b'[' | b']' => return true,
            b'(' => i = regexp_group_end(bytes, i + 1).unwrap_or(i + 1),
            _ => i += 1,
        }
    }
    false
}

/// Where the regexp group whose body starts at `start` ends (after its `)`), by the URL Pattern
/// tokenizer's rules (ASCII only, no leading `?`, nested groups must start with `?`, non-empty);
/// `None` when the tokenizer would refuse it.
fn regexp_group_end(bytes: &[u8], start: usize) -> Option<usize> {
    if bytes.get(start) == Some(&b'?') {
        return None;
    }
    let mut depth = 1;
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        if !b.is_ascii() {
            return None;
        }
        match b {
            b'\\' => {
                if !bytes.get(i + 1)?.is_ascii() {
                    return None;
                }
                i += 2;
                continue;
            }
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return (i > start).then_some(i + 1);
                }
            }
            b'(' if bytes.get(i + 1) != Some(&b'?') => return None,
            b'(' => depth += 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// An RFC 6570 operator, with how its expansion looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Simple,
    Reserved,
    Fragment,
    Label,
    Path,
    PathParam,
    Query,
    QueryContinuation,
}

impl Operator {
    fn from_byte(b: u8) -> Option<Operator> {
        Some(match b {
            b'+' => Operator::Reserved,
            b'#' => Operator::Fragment,
            b'.' => Operator::Label,
            b'/' => Operator::Path,
            b';' => Operator::PathParam,
            b'?' => Operator::Query,
            b'&' => Operator::QueryContinuation,
            _ => return None,
        })
    }

    /// What the expansion starts with, when anything is defined.
    fn first(self) -> &'static str {
        match self {
            Operator::Simple | Operator::Reserved => "",
            Operator::Fragment => "#",
            Operator::Label => ".",
            Operator::Path => "/",
            Operator::PathParam => ";",
            Operator::Query => "?",
            Operator::QueryContinuation => "&",
        }
    }

    fn separator(self) -> &'static str {
        match self {
            Operator::Simple | Operator::Reserved | Operator::Fragment => ",",
            Operator::Label => ".",
            Operator::Path => "/",
            Operator::PathParam => ";",
            Operator::Query | Operator::QueryContinuation => "&",
        }
    }

    /// `+` and `#` let reserved characters through unencoded.
    fn allows_reserved(self) -> bool {
        matches!(self, Operator::Reserved | Operator::Fragment)
    }

    /// `;`, `?` and `&` expand to `name=value` pairs.
    fn named(self) -> bool {
        matches!(self, Operator::PathParam | Operator::Query | Operator::QueryContinuation)
    }
}

/// RFC 3986 unreserved, as a regex class body.
const UNRESERVED: &str = r"A-Za-z0-9\-._~";
/// RFC 3986 reserved (gen-delims and sub-delims), as a regex class body.
const RESERVED: &str = r":/?#\[\]@!$&'()*+,;=";

/// The regex of one value of an expression: allowed characters and percent-encoded octets.
fn value_regex(op: Operator, with_equals: bool) -> String {
    let class = if op.allows_reserved() {
        format!("{UNRESERVED}{RESERVED}")
    } else if with_equals {
        format!("{UNRESERVED},=")
    } else {
        format!("{UNRESERVED},")
    };
    format!("(?:[{class}]|%[0-9A-Fa-f]{{2}})*")
}

/// Parses an RFC 6570 template and compiles what it can expand to into an anchored regex.
fn compile_template(template: &str) -> Result<Regex, MatcherError> {
    let bytes = template.as_bytes();
    let err = |at: usize, reason: &'static str| MatcherError::Template { at, reason };
    let mut re = String::with_capacity(template.len() * 2 + 8);
    re.push_str(r"\A");
    let mut literal_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                re.push_str(&regex::escape(&template[literal_start..i]));
                let (end, expression) = parse_expression(template, i)?;
                re.push_str(&expression);
                i = end;
                literal_start = i;
            }
            b'%' => {
                if !is_pct_encoded(bytes, i) {
                    return Err(err(i, "a '%' not followed by two hex digits"));
                }
                i += 3;
            }
            _ => {
                // `i` is on a character boundary: every branch advances by whole characters.
                let ch = template[i..].chars().next().ok_or(err(i, "unexpected end"))?;
                if !is_literal_char(ch) {
                    return Err(err(i, "a character not allowed in a template literal (percent-encode it)"));
                }
                i += ch.len_utf8();
            }
        }
    }
    re.push_str(&regex::escape(&template[literal_start..]));
    re.push_str(r"\z");
    // The regex's own compiled-size cap (10 MiB by default) bounds what a 2 KiB template can cost;
    // no template built above can exceed it, but an error is still an error, not a panic.
    Regex::new(&re).map_err(|_| err(0, "the template is too complex"))
}

/// Parses the expression opening at `open` (a `{`); returns the index after its `}` and its regex.
fn parse_expression(template: &str, open: usize) -> Result<(usize, String), MatcherError> {
    let bytes = template.as_bytes();
    let err = |at: usize, reason: &'static str| MatcherError::Template { at, reason };
    let mut i = open + 1;
    let op = match bytes.get(i) {
        None => return Err(err(i, "an unclosed '{'")),
        Some(b'=' | b',' | b'!' | b'@' | b'|') => {
            return Err(err(i, "an operator RFC 6570 reserves for future extensions"))
        }
        Some(&b) => match Operator::from_byte(b) {
            Some(op) => {
                i += 1;
                op
            }
            None => Operator::Simple,
        },
    };
    let mut variables = 0usize;
    let mut exploded = false;
    let mut first_explodes = false;
    loop {
        // varname = varchar *( ["."] varchar ); varchar = ALPHA / DIGIT / "_" / pct-encoded
        let name_start = i;
        let mut after_dot = true; // a name cannot start with '.'
        loop {
            match bytes.get(i) {
                Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => {
                    after_dot = false;
                    i += 1;
                }
                Some(b'%') if is_pct_encoded(bytes, i) => {
                    after_dot = false;
                    i += 3;
                }
                Some(b'.') if !after_dot => {
                    after_dot = true;
                    i += 1;
                }
                _ => break,
            }
        }
        if i == name_start {
            return Err(err(i, "a missing or invalid variable name"));
        }
        if after_dot {
            return Err(err(i - 1, "a variable name ending with '.'"));
        }
        variables += 1;
        // modifier = prefix / explode; prefix = ":" max-length (1-9999)
        match bytes.get(i) {
            Some(b':') => {
                i += 1;
                let digits_start = i;
                while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let digits = &template[digits_start..i];
                if digits.is_empty() || digits.starts_with('0') || digits.len() > 4 {
                    return Err(err(digits_start, "a prefix length that is not 1 to 9999"));
                }
            }
            Some(b'*') => {
                i += 1;
                exploded = true;
                first_explodes |= variables == 1;
            }
            _ => {}
        }
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {
                i += 1;
                break;
            }
            None => return Err(err(i, "an unclosed '{'")),
            Some(_) => return Err(err(i, "a character not allowed in an expression")),
        }
    }
    // `=` is allowed in the first value for named operators and when the first variable explodes
    // (an associative array's `key=value`), in the repeated values when any variable explodes:
    // the Go library's choice.
    let mut re = String::from("(?:");
    re.push_str(&regex::escape(op.first()));
    re.push_str(&value_regex(op, op.named() || first_explodes));
    if variables > 1 || exploded {
        re.push_str("(?:");
        re.push_str(&regex::escape(op.separator()));
        re.push_str(&value_regex(op, op.named() || exploded));
        re.push(')');
        if exploded {
            re.push('*');
        } else {
            re.push_str(&format!("{{0,{}}}", variables - 1));
        }
    }
    re.push_str(")?");
    Ok((i, re))
}

fn is_pct_encoded(bytes: &[u8], at: usize) -> bool {
    bytes.get(at) == Some(&b'%')
        && bytes.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
        && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
}

/// RFC 6570 `literals` (section 2.1), with erratum 6937's `'`, less `%` (handled by the caller).
fn is_literal_char(ch: char) -> bool {
    matches!(ch,
        '!' | '#' | '$' | '&'..=';' | '=' | '?'..='[' | ']' | '_' | 'a'..='z' | '~'
        // ucschar
        | '\u{A0}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFEF}'
        | '\u{10000}'..='\u{1FFFD}' | '\u{20000}'..='\u{2FFFD}' | '\u{30000}'..='\u{3FFFD}'
        | '\u{40000}'..='\u{4FFFD}' | '\u{50000}'..='\u{5FFFD}' | '\u{60000}'..='\u{6FFFD}'
        | '\u{70000}'..='\u{7FFFD}' | '\u{80000}'..='\u{8FFFD}' | '\u{90000}'..='\u{9FFFD}'
        | '\u{A0000}'..='\u{AFFFD}' | '\u{B0000}'..='\u{BFFFD}' | '\u{C0000}'..='\u{CFFFD}'
        | '\u{D0000}'..='\u{DFFFD}' | '\u{E1000}'..='\u{EFFFD}'
        // iprivate
        | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{FFFFD}' | '\u{100000}'..='\u{10FFFD}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://localhost/.well-known/mercure").expect("static URL")
    }

    fn m(kind: MatcherKind, value: &str) -> Matcher {
        Matcher::new(kind, value, &base()).unwrap_or_else(|e| panic!("{kind:?} {value:?}: {e}"))
    }

    fn template_regex(value: &str) -> String {
        compile_template(value).expect("valid template").as_str().to_owned()
    }

    #[test]
    fn wildcard_matches_everything_for_every_kind() {
        for kind in [MatcherKind::Exact, MatcherKind::UrlPattern, MatcherKind::Legacy] {
            let any = m(kind, "*");
            assert!(any.is_any());
            assert_eq!(any.as_exact(), None);
            for topic in ["", "*", "foo", "https://example.com/x", "not a url at all %%", "/rel"] {
                assert!(any.matches(topic), "{kind:?} {topic:?}");
            }
            assert_eq!(any.kind(), kind);
            assert_eq!(any.source(), "*");
        }
        // Only exactly `*`.
        assert!(!m(MatcherKind::Exact, "**").is_any());
        assert!(!m(MatcherKind::Exact, " *").matches("x"));
    }

    #[test]
    fn exact_compares_bytes_without_resolving_or_normalizing() {
        let exact = m(MatcherKind::Exact, "https://example.com/foo");
        assert!(!exact.is_any());
        assert_eq!(exact.as_exact(), Some("https://example.com/foo"));
        assert!(exact.matches("https://example.com/foo"));
        for other in [
            "https://example.com/foo/",
            "https://EXAMPLE.com/foo",
            "https://example.com:443/foo",
            "https://example.com/%66oo",
            "https://example.com/foo?",
        ] {
            assert!(!exact.matches(other), "{other}");
        }
        // A relative value is not resolved against the hub's URL.
        let relative = m(MatcherKind::Exact, "bar");
        assert!(relative.matches("bar"));
        assert!(!relative.matches("https://localhost/.well-known/bar"));
        // NFC and NFD spellings of é are different bytes.
        let nfc = m(MatcherKind::Exact, "caf\u{e9}");
        assert!(nfc.matches("caf\u{e9}"));
        assert!(!nfc.matches("cafe\u{301}"));
        // Non-ASCII IRIs with ?, # and % are plain bytes too.
        let iri = m(MatcherKind::Exact, "https://exämple.com/ü?q=%zz#é");
        assert!(iri.matches("https://exämple.com/ü?q=%zz#é"));
        assert!(!iri.matches("https://xn--exmple-cua.com/%C3%BC?q=%zz#%C3%A9"));
    }

    #[test]
    fn url_pattern_from_the_spec() {
        let books = m(MatcherKind::UrlPattern, "https://example.com/books/:id");
        assert_eq!(books.as_exact(), None);
        assert!(!books.is_any());
        assert!(books.matches("https://example.com/books/1"));
        assert!(books.matches("https://example.com/books/%C3%A9"));
        assert!(books.matches("https://example.com/books/é"), "topics are canonicalized like patterns");
        assert!(!books.matches("https://example.com/books/1/2"));
        assert!(!books.matches("https://example.com/books/"));
        assert!(!books.matches("https://example.org/books/1"));
        assert!(!books.matches("http://example.com/books/1"));
        // Hosts are case-insensitive (URL canonicalization), paths are not (no ignoreCase).
        assert!(books.matches("https://EXAMPLE.com/books/1"));
        assert!(!books.matches("https://example.com/BOOKS/1"));
        assert!(books.matches("https://example.com:443/books/1"), "default port");

        let conformance = m(MatcherKind::UrlPattern, "https://example.net/foo/:random");
        assert!(conformance.matches("https://example.net/foo/0123456789abcdef"));
        assert!(!conformance.matches("https://example.net/bar/0123456789abcdef"));
        assert!(
            !m(MatcherKind::UrlPattern, "https://example.net/bar/:var").matches("https://example.net/foo/x")
        );
    }

    #[test]
    fn url_pattern_relative_pattern_and_topics_resolve_against_the_hub() {
        let events =
            m(MatcherKind::UrlPattern, "/.well-known/mercure/subscriptions/exact/:topic/:subscriber");
        assert!(events.matches("/.well-known/mercure/subscriptions/exact/foo/bar"));
        assert!(events.matches("https://localhost/.well-known/mercure/subscriptions/exact/foo/bar"));
        assert!(!events.matches("https://other.example/.well-known/mercure/subscriptions/exact/foo/bar"));
        assert!(!events.matches("/.well-known/mercure/subscriptions/exact/foo"));
        // A relative topic resolves against the hub's URL like a browser would: `books/1` is a
        // sibling of `mercure`.
        let relative = m(MatcherKind::UrlPattern, "/.well-known/books/:id");
        assert!(relative.matches("books/1"));
        assert!(relative.matches("../.well-known/books/2"));
        assert!(relative.matches("https://localhost/.well-known/books/3"));
        // An absolute pattern still sees relative topics as URLs on the hub's origin.
        let absolute = m(MatcherKind::UrlPattern, "https://localhost/x/:id");
        assert!(absolute.matches("/x/1"));
        assert!(!absolute.matches("https://example.com/x/1"));
        // A pattern without a leading `/` is relative to the hub's directory, like a topic.
        let sibling = m(MatcherKind::UrlPattern, "foo");
        assert!(sibling.matches("foo"));
        assert!(sibling.matches("https://localhost/.well-known/foo"));
        assert!(!sibling.matches("https://localhost/foo"));
        // An absolute pattern in a non-special scheme is not touched by the base.
        let urn = m(MatcherKind::UrlPattern, "urn:*");
        assert!(urn.matches("urn:uuid:e1ee88e2-532a-4d6f-ba70-f0f8bd584022"));
        assert!(!urn.matches("https://localhost/urn"));
        // The components a pattern leaves out (here search and hash) are wildcards.
        let path_only = m(MatcherKind::UrlPattern, "/x/:id");
        assert!(path_only.matches("/x/1?y=2#z"));
        assert!(!path_only.matches("https://localhost:8443/x/1"), "the hub's port is part of it");
        // The base matters: the same pattern compiled against another hub.
        let other = Url::parse("https://hub.example/.well-known/mercure").expect("static URL");
        let elsewhere = Matcher::new(MatcherKind::UrlPattern, "/x/:id", &other).expect("valid");
        assert!(elsewhere.matches("https://hub.example/x/1"));
        assert!(elsewhere.matches("/x/1"));
        assert!(!elsewhere.matches("https://localhost/x/1"));
    }

    #[test]
    fn url_pattern_topics_that_are_not_urls_never_match() {
        let everything_https = m(MatcherKind::UrlPattern, "https://*/*");
        assert!(everything_https.matches("https://a.example/b"));
        // Unparseable even against the base: a bad port, a bad IPv6 host.
        assert!(!everything_https.matches("https://a.example:99999/b"));
        assert!(!everything_https.matches("https://[::1/b"));
        assert!(!m(MatcherKind::UrlPattern, "*://*").matches("http://[oops]"));
    }

    #[test]
    fn url_pattern_search_hash_and_non_ascii() {
        let query = m(MatcherKind::UrlPattern, "https://example.com/search?q=:term");
        assert!(query.matches("https://example.com/search?q=rust"));
        // Outside the path a named group is not bounded by `/` (URL Pattern's segment wildcard).
        assert!(query.matches("https://example.com/search?q=rust&x=1"));
        assert!(!query.matches("https://example.com/search?x=1"));
        assert!(!query.matches("https://example.com/search"));
        let iri = m(MatcherKind::UrlPattern, "https://exämple.com/café/:id");
        assert!(iri.matches("https://exämple.com/café/1"));
        assert!(iri.matches("https://xn--exmple-cua.com/caf%C3%A9/1"));
        assert!(!iri.matches("https://example.com/café/1"));
        let hash = m(MatcherKind::UrlPattern, "https://example.com/doc#:section");
        assert!(hash.matches("https://example.com/doc#intro"));
        assert!(!hash.matches("https://example.com/doc"));
        let regexp = m(MatcherKind::UrlPattern, "https://example.com/books/:id(\\d+)");
        assert!(regexp.matches("https://example.com/books/42"));
        assert!(!regexp.matches("https://example.com/books/x42"));
    }

    #[test]
    fn invalid_url_patterns_are_errors_with_messages() {
        for bad in ["https://example.com/:id(", "https://example.com/:id/:id", "https://example.com/(a"] {
            let err = Matcher::new(MatcherKind::UrlPattern, bad, &base()).unwrap_err();
            assert!(matches!(err, MatcherError::UrlPattern(_)), "{bad}: {err:?}");
            assert!(err.to_string().starts_with("is not a valid URL pattern: "), "{err}");
        }
        // The same values are fine exact matchers.
        assert!(Matcher::new(MatcherKind::Exact, "https://example.com/:id(", &base()).is_ok());
    }

    #[test]
    fn url_pattern_bare_brackets_are_refused_before_the_parser_sees_them() {
        // ":a:!]" made urlpattern 0.6.0 panic (an unsigned bracket depth going below zero).
        // "://(\\]" too: the parser counts escaped brackets.
        for bad in [
            ":a:!]",
            "://(\\]",
            "https://]/",
            "https://[::1]/x",
            "/a]b",
            "/a[b",
            "/a\\]b",
            "(?x)]",
            "(é)]",
            "(a(b))]",
            "()]",
        ] {
            let err = Matcher::new(MatcherKind::UrlPattern, bad, &base()).unwrap_err();
            assert!(
                err.to_string().contains("'[' and ']' are only accepted inside a regexp group"),
                "{bad}: {err}"
            );
        }
        // Inside a regexp group they are the regexp's business.
        let class = m(MatcherKind::UrlPattern, "https://example.com/books/:id([0-9]+)");
        assert!(class.matches("https://example.com/books/12"));
        assert!(!class.matches("https://example.com/books/1a"));
        assert!(Matcher::new(MatcherKind::UrlPattern, "/:x((?:[a-z])+)", &base()).is_ok());
        assert!(Matcher::new(MatcherKind::UrlPattern, "/:x(\\])", &base()).is_ok());
        // Other kinds do not care.
        assert!(m(MatcherKind::Exact, "https://[::1]/").matches("https://[::1]/"));
    }

    #[test]
    fn rules_apply_to_every_kind() {
        for kind in [MatcherKind::Exact, MatcherKind::UrlPattern, MatcherKind::Legacy] {
            let err = Matcher::new(kind, "a\u{200b}b", &base()).unwrap_err();
            assert_eq!(err, MatcherError::Rule(RuleError::Format { ch: '\u{200b}', at: 1 }));
            let err = Matcher::new(kind, "a\nb", &base()).unwrap_err();
            assert_eq!(err, MatcherError::Rule(RuleError::Control { ch: '\n', at: 1 }));
            let long = format!("/{}", "a".repeat(MAX_TOPIC_BYTES - 1));
            assert!(Matcher::new(kind, &long, &base()).is_ok(), "{kind:?} at the cap");
            let longer = format!("{long}a");
            assert!(matches!(
                Matcher::new(kind, &longer, &base()),
                Err(MatcherError::Rule(RuleError::TooLong { .. }))
            ));
        }
        // The wildcard check comes after the rules, so `*` with a BOM is refused, not a wildcard.
        assert!(Matcher::new(MatcherKind::Exact, "\u{feff}*", &base()).is_err());
    }

    #[test]
    fn legacy_plain_values_are_exact() {
        let plain = m(MatcherKind::Legacy, "https://example.com/foo");
        assert_eq!(plain.as_exact(), Some("https://example.com/foo"));
        assert!(plain.matches("https://example.com/foo"));
        assert!(!plain.matches("https://example.com/foo/bar"));
        // No URL-pattern syntax in legacy selectors: `:id` is literal.
        let colon = m(MatcherKind::Legacy, "https://example.com/:id");
        assert!(colon.matches("https://example.com/:id"));
        assert!(!colon.matches("https://example.com/1"));
    }

    #[test]
    fn legacy_templates_from_the_old_conformance_suite() {
        let random = m(MatcherKind::Legacy, "https://example.net/foo/{random}");
        assert_eq!(random.as_exact(), None);
        assert!(random.matches("https://example.net/foo/0123456789abcdef0123456789abcdef01234567"));
        assert!(!random.matches("https://example.net/foo/will-not-match}"));
        assert!(!m(MatcherKind::Legacy, "https://example.net/bar/{var}").matches("https://example.net/foo/x"));
        // As in the Go hub, the template's own text matches too (equality is tried first).
        assert!(random.matches("https://example.net/foo/{random}"));
    }

    #[test]
    fn legacy_simple_expansion() {
        let t = m(MatcherKind::Legacy, "https://example.com/books/{id}");
        for yes in ["1", "", "abc-._~", "%C3%A9", "a,b", "%2F"] {
            assert!(t.matches(&format!("https://example.com/books/{yes}")), "{yes:?}");
        }
        for no in ["1/2", "é", "a b", "a?b", "a#b", "a=b", "%2", "%zz", "a+b", "a:b"] {
            assert!(!t.matches(&format!("https://example.com/books/{no}")), "{no:?}");
        }
        // Anchored at both ends.
        assert!(!t.matches("xhttps://example.com/books/1"));
        assert!(!t.matches("https://example.com/books/1\n"));
        // Literals are literal, regex metacharacters included.
        let meta = m(MatcherKind::Legacy, "a.b*c(d)$[e]{x}");
        assert!(meta.matches("a.b*c(d)$[e]1"));
        assert!(!meta.matches("aXb*c(d)$[e]1"));
        // Several variables: still one value each, joined by ','.
        let two = m(MatcherKind::Legacy, "/{x,y}/end");
        assert!(two.matches("/1,2/end"));
        assert!(two.matches("/1/end"));
    }

    #[test]
    fn legacy_reserved_and_fragment_expansion() {
        let plus = m(MatcherKind::Legacy, "https://example.com{+path}");
        assert!(plus.matches("https://example.com/a/b?c=d&e"));
        assert!(plus.matches("https://example.com"));
        assert!(!plus.matches("https://example.com/a b"));
        let simple = m(MatcherKind::Legacy, "https://example.com{path}");
        assert!(!simple.matches("https://example.com/a/b"));
        let fragment = m(MatcherKind::Legacy, "https://example.com/doc{#section}");
        assert!(fragment.matches("https://example.com/doc#intro/a:b"));
        assert!(fragment.matches("https://example.com/doc"));
        assert!(!fragment.matches("https://example.com/docintro"));
    }

    #[test]
    fn legacy_label_path_and_parameter_expansion() {
        let label = m(MatcherKind::Legacy, "file{.ext}");
        assert!(label.matches("file.txt"));
        assert!(label.matches("file"));
        assert!(!label.matches("filetxt"));
        let path = m(MatcherKind::Legacy, "https://example.com{/a,b}");
        assert!(path.matches("https://example.com/x/y"));
        assert!(path.matches("https://example.com/x"));
        assert!(!path.matches("https://example.com/x/y/z"), "two variables, at most two segments");
        let exploded = m(MatcherKind::Legacy, "https://example.com{/list*}");
        assert!(exploded.matches("https://example.com/x/y/z"));
        assert!(exploded.matches("https://example.com/k=v/x"), "an exploded map's pairs");
        // `=` is allowed in the first value only when the first variable explodes (Go's rule).
        let second = m(MatcherKind::Legacy, "https://example.com{/a,list*}");
        assert!(second.matches("https://example.com/x/k=v"));
        assert!(!second.matches("https://example.com/k=v/x"));
        let params = m(MatcherKind::Legacy, "/map{;x,y}");
        assert!(params.matches("/map;x=1;y=2"));
        assert!(params.matches("/map;x"));
        assert!(!params.matches("/map;x=1;y=2;z=3"));
    }

    #[test]
    fn legacy_query_expansion() {
        let query = m(MatcherKind::Legacy, "https://example.com/s{?q,lang}");
        assert!(query.matches("https://example.com/s?q=rust&lang=fr"));
        assert!(query.matches("https://example.com/s?q=rust"));
        assert!(query.matches("https://example.com/s"));
        assert!(!query.matches("https://example.com/s?q=rust&lang=fr&x=1"));
        assert!(!query.matches("https://example.com/s?q=a/b"));
        // Names are not checked, as in the Go hub.
        assert!(query.matches("https://example.com/s?other=1"));
        let continuation = m(MatcherKind::Legacy, "/s?fixed=1{&x}");
        assert!(continuation.matches("/s?fixed=1&x=2"));
        assert!(continuation.matches("/s?fixed=1"));
        assert!(!continuation.matches("/s?fixed=1?x=2"));
        let exploded = m(MatcherKind::Legacy, "/s{?params*}");
        assert!(exploded.matches("/s?a=1&b=2&c=3"));
    }

    #[test]
    fn legacy_template_regex_shapes() {
        assert_eq!(template_regex("a{x}"), r"\Aa(?:(?:[A-Za-z0-9\-._~,]|%[0-9A-Fa-f]{2})*)?\z");
        assert_eq!(
            template_regex("{?x,y}"),
            r"\A(?:\?(?:[A-Za-z0-9\-._~,=]|%[0-9A-Fa-f]{2})*(?:\&(?:[A-Za-z0-9\-._~,=]|%[0-9A-Fa-f]{2})*){0,1})?\z"
        );
        assert!(template_regex("{/x*}").contains(r"(?:/(?:[A-Za-z0-9\-._~,=]|%[0-9A-Fa-f]{2})*)*"));
        assert!(template_regex("{+x}").contains(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]"));
    }

    #[test]
    fn legacy_template_syntax() {
        for ok in [
            "{x}",
            "{x.y}",
            "{x_1,Y2}",
            "{%41b}",
            "{x:1}",
            "{x:9999}",
            "{x*}",
            "{x*,y:3}",
            "a%20b{x}",
            "é/{x}/日本'",
            "{+x}{#x}{.x}{/x}{;x}{?x}{&x}",
        ] {
            assert!(compile_template(ok).is_ok(), "{ok}");
        }
        for (bad, at) in [
            ("{", 1),
            ("{x", 2),
            ("{x,", 3),
            ("{}", 1),
            ("{.}", 2),
            ("{x.}", 2),
            ("{..x}", 2),
            ("{x..y}", 2),
            ("{=x}", 1),
            ("{,x}", 1),
            ("{!x}", 1),
            ("{@x}", 1),
            ("{|x}", 1),
            ("{x:0}", 3),
            ("{x:10000}", 3),
            ("{x:}", 3),
            ("{x-y}", 2),
            ("{x y}", 2),
            ("{x}}", 3),
            ("a b{x}", 1),
            ("a\"{x}", 1),
            ("a<{x}", 1),
            ("a\\{x}", 1),
            ("a^{x}", 1),
            ("a`{x}", 1),
            ("a|{x}", 1),
            ("%4{x}", 0),
            ("{x}%", 3),
            ("{%4x}", 1),
            ("{x{y}}", 2),
            ("\u{fdd0}{x}", 0),
        ] {
            match compile_template(bad) {
                Err(MatcherError::Template { at: got, .. }) => assert_eq!(got, at, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let err = Matcher::new(MatcherKind::Legacy, "https://example.com/{id", &base()).unwrap_err();
        assert_eq!(err.to_string(), "is not a valid URI template (RFC 6570): an unclosed '{' at byte 23");
    }
}
