//! Secrets and origins: tokens never reach the log (a refusal is logged without them), and CORS
//! grants exactly the configured origins, never `*` with credentials. Complements
//! `contract::access`, which covers the ordinary cases.

use std::time::Duration;

use ssed::Config;

use super::*;

const PUBLISH_TOKEN: &str = "pub-4c1d-s3cr3t-9a7e";
const SUBSCRIBE_TOKEN: &str = "sub-77b2-s3cr3t-e01f";

/// The binary at `RUST_LOG=trace` (everything it can log) with both tokens set: wrong tokens of every
/// shape are refused with `401` and logged at info as a refusal, and neither the configured tokens
/// nor the offered ones appear anywhere on stderr, for refused and accepted requests alike.
#[test]
fn tokens_never_reach_the_log() {
    let args = ["--publish-token", PUBLISH_TOKEN, "--subscribe-token", SUBSCRIBE_TOKEN, "--heartbeat", "0"];
    let server = Proc::start_with(std::process::Command::new(BIN), &args, "trace");
    let addr = server.listening_addr();
    // A near miss differs in the last byte only; the others differ in length or everywhere.
    let near_miss = format!("{}X", &PUBLISH_TOKEN[..PUBLISH_TOKEN.len() - 1]);
    let offered = ["offered-wrong-71e3", near_miss.as_str(), SUBSCRIBE_TOKEN];
    let mut refusals = 0;
    for token in offered {
        let request = format!(
            "POST /events?topic=t HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: 1\r\n\
             Connection: close\r\n\r\nx"
        );
        let response = roundtrip(addr, request.as_bytes());
        assert_eq!(response.status, 401, "publishing with {token:?}");
        assert!(!response.body_text().contains(token), "the answer echoes the token: {response:?}");
        refusals += 1;
    }
    for headers in
        ["Authorization: Bearer offered-wrong-5d20\r\n", "Cookie: ssed_token=offered-cookie-c9aa\r\n"]
    {
        let request =
            format!("GET /events?topic=t HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
        assert_eq!(roundtrip(addr, request.as_bytes()).status, 401, "subscribing with {headers:?}");
        refusals += 1;
    }
    // The right tokens work, and are not logged either.
    let mut sub = Subscriber::open_on(
        connect(addr),
        "/events?topic=t",
        &format!("Authorization: Bearer {SUBSCRIBE_TOKEN}\r\n"),
        "HTTP/1.1",
    );
    let request = format!(
        "POST /events?topic=t HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {PUBLISH_TOKEN}\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\nok"
    );
    assert_eq!(roundtrip(addr, request.as_bytes()).status, 200);
    assert_eq!(sub.next_event().data, "ok");

    assert!(
        eventually(|| server.stderr().iter().filter(|l| l.contains("refused: 401")).count() == refusals),
        "{refusals} refusals logged: {:#?}",
        server.stderr()
    );
    let log = server.stderr();
    for line in log.iter().filter(|l| l.contains("refused: 401")) {
        assert!(line.contains(" INFO "), "a refusal is logged at info: {line}");
    }
    let secrets = [
        PUBLISH_TOKEN,
        SUBSCRIBE_TOKEN,
        "offered-wrong-71e3",
        &near_miss,
        "offered-wrong-5d20",
        "offered-cookie-c9aa",
    ];
    for secret in secrets {
        // Any recognisable fragment would do as much harm as the whole.
        for fragment in [secret, &secret[..secret.len() / 2], &secret[secret.len() / 2..]] {
            let leaks: Vec<&String> = log.iter().filter(|l| l.contains(fragment)).collect();
            assert!(leaks.is_empty(), "{fragment:?} is in the log: {leaks:#?}");
        }
    }
    assert!(log.len() > refusals, "the trace log was captured ({} lines)", log.len());
}

fn request(server: &TestServer, method: &str, path: &str, headers: &str) -> Response {
    let body = if method == "POST" { "Content-Length: 1\r\n\r\nx" } else { "\r\n" };
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n{body}");
    roundtrip(server.addr, raw.as_bytes())
}

fn cors_headers(response: &Response) -> Vec<(String, String)> {
    let cors = response.headers.iter().filter(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-"));
    cors.cloned().collect()
}

/// An origin is a string compared exactly: case variants, a trailing slash, an explicit default
/// port, `null` and a suffix or prefix of a listed origin get no CORS headers, on any answer.
#[test]
fn only_the_exact_listed_origin_gets_cors() {
    let listed = "https://app.example";
    let config = Config { cors_origins: vec![listed.into()], heartbeat: Duration::ZERO, ..Config::default() };
    let server = TestServer::start(config);
    for origin in [
        "HTTPS://APP.EXAMPLE",
        "https://app.example/",
        "https://app.example:443",
        "http://app.example",
        "null",
        "https://app.example.evil",
        "https://evil.app.example",
        "https://app.exampl",
        "",
    ] {
        let origin_header = format!("Origin: {origin}\r\n");
        for (method, path) in
            [("OPTIONS", "/events"), ("GET", "/health"), ("POST", "/events?topic=t"), ("GET", "/nope")]
        {
            let response = request(&server, method, path, &origin_header);
            assert_eq!(cors_headers(&response), vec![], "{method} {path} from {origin:?}: {response:?}");
        }
        let sub = Subscriber::open(server.addr, "/events?topic=t", &origin_header);
        assert_eq!(cors_headers(&sub.response), vec![], "a stream for {origin:?}");
    }
}

/// A listed origin is echoed with credentials and `Vary: Origin`, so a shared cache never hands one
/// origin's answer to another; errors carry the same headers (so the page can read why), and a
/// refused request from an unlisted origin carries none.
#[test]
fn echoed_origins_vary_and_errors_follow_the_same_rule() {
    let listed = "https://app.example";
    let config = Config {
        cors_origins: vec![listed.into()],
        publish_token: Some("pub".into()),
        heartbeat: Duration::ZERO,
        ..Config::default()
    };
    let server = TestServer::start(config);
    let from_listed = format!("Origin: {listed}\r\n");
    for (method, path, status) in [
        ("GET", "/health", 200),
        ("POST", "/events?topic=t", 401),
        ("GET", "/events?topic=bad%20t", 400),
        ("GET", "/nope", 404),
    ] {
        let response = request(&server, method, path, &from_listed);
        assert_eq!(response.status, status, "{response:?}");
        assert_eq!(response.header("access-control-allow-origin"), Some(listed), "{response:?}");
        assert_eq!(response.header("access-control-allow-credentials"), Some("true"), "{response:?}");
        let vary = response.header("vary").unwrap_or_default().to_ascii_lowercase();
        assert!(vary.contains("origin"), "an echoed origin without Vary: Origin: {response:?}");

        let response = request(&server, method, path, "Origin: https://evil.example\r\n");
        assert_eq!(response.status, status, "{response:?}");
        assert_eq!(cors_headers(&response), vec![], "{response:?}");
    }
}

/// With `*` (alone or beside listed origins) an unlisted origin gets `*` and never
/// `Access-Control-Allow-Credentials`, even on a stream it was allowed to open with the cookie token;
/// a listed origin is still echoed with credentials.
#[test]
fn wildcard_never_comes_with_credentials() {
    let listed = "https://app.example";
    let config = Config {
        cors_origins: vec![listed.into(), "*".into()],
        subscribe_token: Some("sub".into()),
        heartbeat: Duration::ZERO,
        ..Config::default()
    };
    let server = TestServer::start(config);
    let sub = Subscriber::open(
        server.addr,
        "/events?topic=t",
        "Origin: https://other.example\r\nCookie: ssed_token=sub\r\n",
    );
    assert_eq!(sub.response.header("access-control-allow-origin"), Some("*"), "{:?}", sub.response);
    assert_eq!(sub.response.header("access-control-allow-credentials"), None, "{:?}", sub.response);
    for (method, path) in [("OPTIONS", "/events"), ("GET", "/events?topic=t"), ("GET", "/health")] {
        let response = request(&server, method, path, "Origin: https://other.example\r\n");
        assert_eq!(response.header("access-control-allow-origin"), Some("*"), "{response:?}");
        assert_eq!(response.header("access-control-allow-credentials"), None, "{response:?}");
    }
    let response = request(&server, "OPTIONS", "/events", &format!("Origin: {listed}\r\n"));
    assert_eq!(response.header("access-control-allow-origin"), Some(listed), "{response:?}");
    assert_eq!(response.header("access-control-allow-credentials"), Some("true"), "{response:?}");
}
