//! Bearer tokens for publishing and subscribing, and CORS.

use ssed::Config;

use super::*;

fn assert_unauthorized(response: &Response, what: &str) {
    assert_eq!(response.status, 401, "{what}: {response:?}");
    assert_error(response, 401);
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(challenge.to_ascii_lowercase().starts_with("bearer"), "{what}: {response:?}");
}

fn tokens_config() -> Config {
    Config {
        publish_token: Some("pub-secret".into()),
        subscribe_token: Some("sub-secret".into()),
        ..quiet_config()
    }
}

#[test]
fn publish_token_is_required_for_publishing() {
    let server = TestServer::start(tokens_config());
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "Authorization: Bearer sub-secret\r\n");
    for (what, headers) in [
        ("no token", ""),
        ("a wrong token", "Authorization: Bearer nope\r\n"),
        ("the subscribe token", "Authorization: Bearer sub-secret\r\n"),
        ("the token as a cookie", "Cookie: ssed_token=pub-secret\r\n"),
        ("the token without the Bearer scheme", "Authorization: pub-secret\r\n"),
    ] {
        assert_unauthorized(&post(server.addr, "/events?topic=t", headers, b"refused"), what);
    }
    assert_unauthorized(&post_form(server.addr, "topic=t&data=refused"), "a form without a token");

    let id =
        published_id(&post(server.addr, "/events?topic=t", "Authorization: Bearer pub-secret\r\n", b"ok"));
    assert_eq!(id_data(&sub.next_event()), (id, "ok".to_string()), "no refused publish reached the stream");
}

#[test]
fn subscribe_token_by_bearer_or_cookie() {
    let server = TestServer::start(tokens_config());
    for (what, headers) in [
        ("no token", ""),
        ("a wrong bearer token", "Authorization: Bearer nope\r\n"),
        ("a wrong cookie", "Cookie: ssed_token=nope\r\n"),
        ("the token under another cookie name", "Cookie: token=sub-secret\r\n"),
    ] {
        assert_unauthorized(&get(server.addr, "/events?topic=t", headers), what);
    }
    let mut bearer = Subscriber::open(server.addr, "/events?topic=t", "Authorization: Bearer sub-secret\r\n");
    let mut cookie = Subscriber::open(server.addr, "/events?topic=t", "Cookie: ssed_token=sub-secret\r\n");
    let mut among = Subscriber::open(
        server.addr,
        "/events?topic=t",
        "Cookie: theme=dark; ssed_token=sub-secret; lang=en\r\n",
    );

    let id =
        published_id(&post(server.addr, "/events?topic=t", "Authorization: Bearer pub-secret\r\n", b"hi"));
    for sub in [&mut bearer, &mut cookie, &mut among] {
        assert_eq!(id_data(&sub.next_event()), (id, "hi".to_string()));
    }
}

#[test]
fn subscribe_token_alone_leaves_publishing_open() {
    let server = TestServer::start(Config { subscribe_token: Some("sub-secret".into()), ..quiet_config() });
    assert_unauthorized(&get(server.addr, "/events?topic=t", ""), "subscribing without a token");
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "Cookie: ssed_token=sub-secret\r\n");
    let id = publish(server.addr, "topic=t", "open");
    assert_eq!(id_data(&sub.next_event()), (id, "open".to_string()));
}

fn preflight(server: &TestServer, origin: &str) -> Response {
    let request = format!(
        "OPTIONS /events HTTP/1.1\r\nHost: test\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\n\
         Access-Control-Request-Headers: last-event-id\r\nConnection: close\r\n\r\n"
    );
    roundtrip(server.addr, request.as_bytes())
}

/// The comma-separated items of a header, trimmed.
fn list(response: &Response, name: &str) -> Vec<String> {
    let value = response.header(name).unwrap_or_else(|| panic!("no {name} in {response:?}"));
    value.split(',').map(|item| item.trim().to_string()).collect()
}

fn assert_no_cors(response: &Response, what: &str) {
    let cors: Vec<_> = response
        .headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{what}: CORS headers {cors:?} in {response:?}");
}

#[test]
fn cors_for_a_listed_origin() {
    let origin = "https://app.example";
    let server = TestServer::start(Config { cors_origins: vec![origin.into()], ..quiet_config() });

    let response = preflight(&server, origin);
    assert_eq!(response.status, 204, "{response:?}");
    assert_eq!(response.header("access-control-allow-origin"), Some(origin), "{response:?}");
    assert_eq!(response.header("access-control-allow-credentials"), Some("true"), "{response:?}");
    let methods = list(&response, "access-control-allow-methods");
    for method in ["GET", "POST"] {
        assert!(methods.iter().any(|m| m == method), "{method} allowed: {response:?}");
    }
    let headers = list(&response, "access-control-allow-headers");
    for header in ["Authorization", "Content-Type", "Last-Event-ID"] {
        assert!(headers.iter().any(|h| h.eq_ignore_ascii_case(header)), "{header} allowed: {response:?}");
    }

    // The stream itself, for `new EventSource(url, {withCredentials: true})`.
    let sub = Subscriber::open(server.addr, "/events?topic=t", &format!("Origin: {origin}\r\n"));
    assert_eq!(sub.response.header("access-control-allow-origin"), Some(origin), "{:?}", sub.response);
    assert_eq!(sub.response.header("access-control-allow-credentials"), Some("true"), "{:?}", sub.response);

    let response = post(server.addr, "/events?topic=t", &format!("Origin: {origin}\r\n"), b"x");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("access-control-allow-origin"), Some(origin), "{response:?}");
}

#[test]
fn cors_preflight_needs_no_token() {
    // Browsers send the preflight without credentials, whatever the request after it carries.
    let origin = "https://app.example";
    let config = Config { cors_origins: vec![origin.into()], ..tokens_config() };
    let server = TestServer::start(config);
    let response = preflight(&server, origin);
    assert_eq!(response.status, 204, "{response:?}");
    assert_eq!(response.header("access-control-allow-origin"), Some(origin), "{response:?}");
    // The refusal of a tokenless subscribe still carries CORS, so the page can read the 401.
    let refused = get(server.addr, "/events?topic=t", &format!("Origin: {origin}\r\n"));
    assert_unauthorized(&refused, "subscribe without a token");
    assert_eq!(refused.header("access-control-allow-origin"), Some(origin), "{refused:?}");
}

#[test]
fn cors_wildcard_allows_any_origin_without_credentials() {
    let server = TestServer::start(Config { cors_origins: vec!["*".into()], ..quiet_config() });
    let response = preflight(&server, "https://anyone.example");
    assert_eq!(response.status, 204, "{response:?}");
    assert_eq!(response.header("access-control-allow-origin"), Some("*"), "{response:?}");
    assert_ne!(response.header("access-control-allow-credentials"), Some("true"), "{response:?}");
    let methods = list(&response, "access-control-allow-methods");
    assert!(methods.iter().any(|m| m == "GET") && methods.iter().any(|m| m == "POST"), "{response:?}");

    let sub = Subscriber::open(server.addr, "/events?topic=t", "Origin: https://anyone.example\r\n");
    assert_eq!(sub.response.header("access-control-allow-origin"), Some("*"), "{:?}", sub.response);
    assert_ne!(sub.response.header("access-control-allow-credentials"), Some("true"), "{:?}", sub.response);
}

#[test]
fn cors_headers_absent_for_unlisted_origin() {
    let server =
        TestServer::start(Config { cors_origins: vec!["https://app.example".into()], ..quiet_config() });
    let evil = "https://evil.example";
    assert_no_cors(&preflight(&server, evil), "preflight");
    // A look-alike of the listed origin is another origin.
    assert_no_cors(&preflight(&server, "https://app.example.evil.example"), "look-alike preflight");
    let sub = Subscriber::open(server.addr, "/events?topic=t", &format!("Origin: {evil}\r\n"));
    assert_no_cors(&sub.response, "stream");
    let response = post(server.addr, "/events?topic=t", &format!("Origin: {evil}\r\n"), b"x");
    assert_eq!(response.status, 200);
    assert_no_cors(&response, "publish");

    // With no origin configured, CORS is off for everyone.
    let plain = TestServer::start(quiet_config());
    let sub = Subscriber::open(plain.addr, "/events?topic=t", "Origin: https://app.example\r\n");
    assert_no_cors(&sub.response, "stream without --cors-origin");
}
