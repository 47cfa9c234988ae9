//! `http://` URLs the bench sends requests to, and the safety rule: loopback only unless
//! `--allow-remote`, so a typo cannot aim a load test at someone else's machine.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// A resolved `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given, for messages.
    pub url: String,
    /// The authority, sent as `Host`.
    pub host: String,
    /// The address connected to (the first the name resolved to).
    pub addr: SocketAddr,
    /// Path and query, sent in the request line.
    pub path: String,
}

/// Whether `ip` is this machine's loopback: 127.0.0.0/8, `::1`, or 127/8 mapped into IPv6.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Parses and resolves `url`; refuses anything that resolves outside loopback unless `allow_remote`.
pub fn parse(url: &str, allow_remote: bool) -> Result<Target, String> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => return Err(format!("{url}: only http:// is supported, not {scheme}://")),
        None => return Err(format!("{url}: expected http://HOST[:PORT]/PATH")),
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or("");
    let path = match path.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_string(),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url}: expected http://HOST[:PORT]/PATH (no user info)"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("{url}: unclosed [ in host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
        None => 80,
    };
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?.collect();
    let addr = *addrs.first().ok_or_else(|| format!("{url}: {host} resolves to no address"))?;
    if !allow_remote {
        if let Some(outside) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(format!(
                "{url}: {host} resolves to {}, which is not loopback (127.0.0.0/8 or ::1); \
                 pass --allow-remote to load another machine",
                outside.ip()
            ));
        }
    }
    Ok(Target { url: url.to_string(), host: authority.to_string(), addr, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = parse("http://127.0.0.1:8080/events?topic=a", false).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((t.host.as_str(), t.path.as_str()), ("127.0.0.1:8080", "/events?topic=a"));
        let t = parse("HTTP://127.1.2.3?x=1#frag", false).unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/?x=1"));
        let t = parse("http://[::1]:9/", false).unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert!(parse("http://localhost:1/", false).is_ok());
    }

    #[test]
    fn refuses_remote_and_malformed() {
        assert!(parse("http://192.0.2.1/", false).unwrap_err().contains("--allow-remote"));
        assert!(parse("http://192.0.2.1/", true).is_ok());
        assert!(parse("http://[::ffff:192.0.2.1]/", false).is_err());
        assert!(parse("https://127.0.0.1/", false).is_err());
        assert!(parse("127.0.0.1:80/", false).is_err());
        assert!(parse("http://user@127.0.0.1/", false).is_err());
        assert!(parse("http://127.0.0.1:x/", false).is_err());
    }
}
