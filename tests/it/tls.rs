//! TLS served by ssed itself (`--tls-cert`, `--tls-key`, `--tls-listen`): streams, publishes,
//! resume, heartbeats and shutdown over TLS with a Rust client (rustls), handshakes that must be
//! refused without disturbing anyone, the handshake's header timeout, reloads, and start-up errors.
//! Certificates are made by each test (rcgen): nothing checked in can expire.
//!
//! The clients from outside (curl, Python, Node, Chromium) are in `external.rs` beside this.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ssed::{Config, Event, Publisher, Reload, Server};

use crate::child::{base_command, Proc};
use crate::support::{get, ServerThread, TempDir, DEADLINE};

mod external;

/// A test CA and a certificate for `localhost` (and 127.0.0.1) signed by it, made now.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::valid_until(None)
    }

    /// With `not_after`, the certificate is valid for the year before that date.
    pub fn valid_until(not_after: Option<(i32, u8, u8)>) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: a client that trusts another test CA must not even find an issuer.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ca.distinguished_name.push(rcgen::DnType::CommonName, format!("ssed test CA {n}"));
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("server certificate");
        Pki { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// Writes the certificate and key as `cert.pem` and `key.pem` in `dir` (over what is there).
    pub fn write(&self, dir: &TempDir) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate");
        std::fs::write(&key, &self.key_pem).expect("write the key");
        (cert, key)
    }

    /// Writes the CA certificate as `ca.pem` in `dir`.
    pub fn write_ca(&self, dir: &TempDir) -> PathBuf {
        let path = dir.0.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write the CA");
        path
    }
}

/// An in-process server with TLS, on loopback port 0; stopped on drop.
pub struct TlsServer {
    /// The main listener's address (TLS, unless `tls_addr` differs).
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub publisher: Publisher,
    pub reload: Reload,
    running: ServerThread,
    pub dir: TempDir,
}

impl TlsServer {
    pub fn start(pki: &Pki, config: Config) -> TlsServer {
        let dir = TempDir::new("tls");
        let (cert, key) = pki.write(&dir);
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..config
        };
        let server = Server::bind(config).expect("server starts");
        let addr = server.local_addr();
        let tls_addr = server.tls_local_addr().expect("serves TLS");
        let (publisher, reload) = (server.publisher(), server.reload_handle());
        TlsServer { addr, tls_addr, publisher, reload, running: ServerThread::spawn(server), dir }
    }

    pub fn stop(self) {
        self.running.stop();
    }
}

/// A client configuration trusting `ca_pem` only, offering ALPN `http/1.1` and the given versions.
pub fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM")).expect("CA root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A blocking TLS client over loopback, with read timeouts of [`DEADLINE`].
pub struct TlsClient {
    pub tls: StreamOwned<ClientConnection, TcpStream>,
    seen: Vec<u8>,
}

impl TlsClient {
    /// Connects and completes the handshake, or returns why it failed.
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> io::Result<TlsClient> {
        let socket = TcpStream::connect(addr)?;
        socket.set_read_timeout(Some(DEADLINE))?;
        socket.set_write_timeout(Some(DEADLINE))?;
        let name = ServerName::try_from(name.to_string()).expect("server name");
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, socket);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsClient { tls, seen: Vec::new() })
    }

    pub fn open(addr: SocketAddr, pki: &Pki) -> TlsClient {
        TlsClient::connect(addr, client_config(&pki.ca_pem, BOTH), "localhost").expect("TLS handshake")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).expect("write over TLS");
        self.tls.flush().expect("flush");
    }

    /// Reads until what was received since the last call contains `needle`; returns it all.
    pub fn read_until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(at) = find(&self.seen, needle.as_bytes()) {
                let rest = self.seen.split_off(at + needle.len());
                let got = std::mem::replace(&mut self.seen, rest);
                return String::from_utf8_lossy(&got).into_owned();
            }
            assert!(Instant::now() < deadline, "no {needle:?} in {:?}", tail(&self.seen));
            let mut buf = [0u8; 16 * 1024];
            match self.tls.read(&mut buf) {
                Ok(0) => panic!("stream ended before {needle:?}: {:?}", tail(&self.seen)),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read failed before {needle:?} ({e}): {:?}", tail(&self.seen)),
            }
        }
    }

    /// Reads to the end: what came, and whether it ended with `close_notify` (`Ok`) or not.
    pub fn read_to_end(&mut self) -> (String, io::Result<()>) {
        let mut buf = [0u8; 16 * 1024];
        let result = loop {
            match self.tls.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        (String::from_utf8_lossy(&std::mem::take(&mut self.seen)).into_owned(), result)
    }
}

/// The last 300 bytes received, for failure messages.
fn tail(seen: &[u8]) -> String {
    String::from_utf8_lossy(&seen[seen.len().saturating_sub(300)..]).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn subscribe(addr: SocketAddr, pki: &Pki, query: &str, headers: &str) -> TlsClient {
    let mut client = TlsClient::open(addr, pki);
    client.send(format!("GET /events?{query} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes());
    let head = client.read_until("retry:");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    client
}

/// Reads what the peer sends until it closes (or resets) the connection, within [`DEADLINE`].
fn read_until_closed(socket: &mut TcpStream) -> Vec<u8> {
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("not closed within {:?} ({e}); got {got:?}", started.elapsed()),
        }
    }
}

/// A ClientHello as rustls writes it, for the tests that cut or mangle one.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(client_config(&pki.ca_pem, BOTH), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// A TLS 1.0 ClientHello (RFC 2246 §7.4.1.2) offering only TLS_RSA_WITH_AES_128_CBC_SHA.
fn tls10_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, (handshake.len() >> 8) as u8, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn a_tls_stream_carries_events_heartbeats_and_resume_and_ends_with_close_notify() {
    let pki = Pki::new();
    let server =
        TlsServer::start(&pki, Config { heartbeat: Duration::from_millis(300), ..Config::default() });
    assert_eq!(server.addr, server.tls_addr, "--tls-cert alone: the listener serves TLS");

    let mut sub = subscribe(server.addr, &pki, "topic=chat", "");
    assert_eq!(sub.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut ids = Vec::new();
    for data in ["one", "two", "three"] {
        ids.push(server.publisher.publish(Event::new(data).topic("chat")).expect("publish").get());
    }
    // A publish over TLS too, on a connection of its own.
    let mut publisher = TlsClient::open(server.addr, &pki);
    publisher.send(
        b"POST /events?topic=chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfour",
    );
    let (answer, ended) = publisher.read_to_end();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(ended.is_ok(), "the answer ends with close_notify: {ended:?}");
    let text = sub.read_until("data: four\n\n");
    for (id, data) in ids.iter().zip(["one", "two", "three"]) {
        assert!(text.contains(&format!("id: {id}\ndata: {data}\n\n")), "{text}");
    }
    // Idle: a heartbeat comes through the TLS stream.
    let idle = sub.read_until(":\n");
    assert!(!idle.contains("data:"), "{idle}");

    // Resume after the first event: the rest, nothing before.
    let mut resumed = subscribe(server.addr, &pki, "topic=chat", &format!("Last-Event-ID: {}\r\n", ids[0]));
    let text = resumed.read_until("data: four\n\n");
    assert!(
        !text.contains("data: one\n") && text.contains("data: two\n") && text.contains("data: three\n"),
        "{text}"
    );

    // Shutdown: the terminating chunk, then close_notify (a clean end, not a truncation).
    server.stop();
    for client in [&mut sub, &mut resumed] {
        let (rest, ended) = client.read_to_end();
        assert!(rest.ends_with("0\r\n\r\n"), "the stream ends with its last chunk: {rest:?}");
        assert!(ended.is_ok(), "the stream ends with close_notify: {ended:?}");
    }
}

#[test]
fn tls_12_and_13_are_served_and_large_events_cross_many_records() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, Config::default());
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config(&pki.ca_pem, &[version]);
        let mut client = TlsClient::connect(server.addr, config, "localhost").expect("handshake");
        assert_eq!(client.tls.conn.protocol_version(), Some(expected));
        client.send(b"GET /events?topic=big HTTP/1.1\r\nHost: localhost\r\n\r\n");
        client.read_until("retry:");
        // Events larger than a TLS record (16 KiB), published while the client reads nothing, so
        // the socket fills and the transport holds ciphertext between writes.
        let events: Vec<String> = (0..12).map(|i| format!("{i}:{}", "x".repeat(60_000))).collect();
        for data in &events {
            server.publisher.publish(Event::new(data.clone()).topic("big")).expect("publish");
        }
        for data in &events {
            let text = client.read_until("\n\n");
            assert!(text.contains(&format!("data: {data}\n")), "event {} arrived whole", &data[..3]);
        }
    }
}

#[test]
fn plain_and_tls_listeners_serve_side_by_side() {
    let pki = Pki::new();
    let server = TlsServer::start(
        &pki,
        Config { tls_listen: Some("127.0.0.1:0".parse().unwrap()), ..Config::default() },
    );
    assert_ne!(server.addr, server.tls_addr);
    // Plain HTTP on --listen.
    assert_eq!(get(server.addr, "/health", "").status, 200);
    // TLS on --tls-listen.
    let mut client = TlsClient::open(server.tls_addr, &pki);
    client.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let (answer, ended) = client.read_to_end();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
    assert!(ended.is_ok(), "{ended:?}");
    // And not the other way round.
    assert!(TlsClient::connect(server.addr, client_config(&pki.ca_pem, BOTH), "localhost").is_err());
    // Events published once reach subscribers of both.
    let mut tls_sub = subscribe(server.tls_addr, &pki, "topic=t", "");
    let mut plain_sub = crate::support::Subscriber::open(server.addr, "/events?topic=t", "");
    server.publisher.publish(Event::new("both").topic("t")).unwrap();
    assert_eq!(plain_sub.next_event().data, "both");
    tls_sub.read_until("data: both\n\n");
}

/// Each bad handshake is refused or closed, within the deadline, and the stream already open gets
/// the next event all the same.
#[test]
fn bad_handshakes_are_refused_without_disturbing_other_connections() {
    let pki = Pki::new();
    let server = TlsServer::start(&pki, Config::default());
    let mut sub = subscribe(server.addr, &pki, "topic=calm", "");
    let mut round = 0;
    let mut still_served = |sub: &mut TlsClient, what: &str| {
        round += 1;
        server.publisher.publish(Event::new(format!("after {what}")).topic("calm")).unwrap();
        sub.read_until(&format!("data: after {what}\n\n"));
    };

    let stranger = Pki::new();
    let err = TlsClient::connect(server.addr, client_config(&stranger.ca_pem, BOTH), "localhost").err();
    let err = err.expect("a certificate from an unknown CA is refused").to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    still_served(&mut sub, "unknown CA");

    let err = TlsClient::connect(server.addr, client_config(&pki.ca_pem, BOTH), "other.example").err();
    let err = err.expect("a certificate for another name is refused").to_string();
    assert!(err.contains("not valid for name"), "{err}");
    still_served(&mut sub, "wrong SNI");

    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.write_all(&tls10_client_hello()).unwrap();
    let answer = read_until_closed(&mut raw);
    // An alert record (RFC 8446 §6): content type 21, then the server closes.
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
    still_served(&mut sub, "TLS 1.0");

    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut raw);
    assert!(find(&answer, b"HTTP/1.1").is_none(), "{answer:?}");
    still_served(&mut sub, "plain HTTP");

    for garbage in [
        // Application data before any handshake.
        [&[0x17, 0x03, 0x03, 0x00, 0x10][..], &[0xAB; 16]].concat(),
        // A record type that does not exist, and a length past the limit.
        vec![0x63, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5],
        vec![0x16, 0x03, 0x03, 0xFF, 0xFF, 0x01],
        // A ClientHello with its body overwritten.
        {
            let mut hello = client_hello(&pki);
            for byte in &mut hello[9..] {
                *byte = 0x5A;
            }
            hello
        },
    ] {
        let mut raw = TcpStream::connect(server.addr).unwrap();
        raw.write_all(&garbage).unwrap();
        read_until_closed(&mut raw);
        still_served(&mut sub, "garbage");
    }

    // Half a ClientHello, then the client's end of stream.
    let hello = client_hello(&pki);
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.write_all(&hello[..hello.len() / 2]).unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    read_until_closed(&mut raw);
    still_served(&mut sub, "truncated handshake");
    assert_eq!(round, 9, "every case ran");
}

/// A handshake that trickles (a slowloris over TLS) gets the header timeout, like a request head.
#[test]
fn a_trickling_handshake_is_closed_at_the_header_timeout() {
    let pki = Pki::new();
    let timeout = Duration::from_secs(1);
    let server = TlsServer::start(&pki, Config { header_timeout: timeout, ..Config::default() });
    let hello = client_hello(&pki);
    // Before the connect: the server's clock starts at its accept, which cannot come earlier.
    let started = Instant::now();
    let mut raw = TcpStream::connect(server.addr).unwrap();
    // One byte every 200 ms: never a complete ClientHello before the timeout.
    raw.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 256];
    let closed_after = 'trickle: {
        for byte in &hello {
            if raw.write_all(std::slice::from_ref(byte)).is_err() {
                break 'trickle started.elapsed();
            }
            match raw.read(&mut buf) {
                Ok(0) => break 'trickle started.elapsed(),
                Ok(n) => panic!("the server answered a partial hello: {:?}", &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => break 'trickle started.elapsed(),
            }
            assert!(started.elapsed() < timeout + DEADLINE, "never closed");
        }
        panic!("the whole hello went out a byte at a time without the server closing");
    };
    assert!(closed_after >= timeout, "closed too early: {closed_after:?}");
    assert!(closed_after < timeout + Duration::from_secs(3), "closed late: {closed_after:?}");
}

/// A reload: new handshakes get the new certificate, the stream open before keeps going, and a file
/// that does not load changes nothing.
#[test]
fn a_reload_serves_the_new_certificate_to_new_handshakes_only() {
    let first = Pki::new();
    let server = TlsServer::start(&first, Config::default());
    let mut sub = subscribe(server.addr, &first, "topic=r", "");

    let second = Pki::new();
    second.write(&server.dir);
    assert!(server.reload.reload().expect("the new pair loads"), "the server serves TLS");
    // The reload reaches the loop through its mailbox: new handshakes switch soon after.
    let mut switched = false;
    for _ in 0..200 {
        if TlsClient::connect(server.addr, client_config(&second.ca_pem, BOTH), "localhost").is_ok() {
            switched = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(switched, "new handshakes use the reloaded certificate");
    assert!(TlsClient::connect(server.addr, client_config(&first.ca_pem, BOTH), "localhost").is_err());
    server.publisher.publish(Event::new("still here").topic("r")).unwrap();
    sub.read_until("data: still here\n\n");

    // A broken certificate file: refused, and the second certificate stays in use.
    std::fs::write(server.dir.0.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let err = server.reload.reload().expect_err("a broken file is refused").to_string();
    assert!(err.contains("cert.pem"), "{err}");
    TlsClient::connect(server.addr, client_config(&second.ca_pem, BOTH), "localhost")
        .expect("still the second");
}

fn start_up_error(args: &[&str]) -> String {
    let output = base_command().args(["--listen", "127.0.0.1:0"]).args(args).output().expect("ssed runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_certificate_files_stop_the_start_with_the_file_named() {
    let dir = TempDir::new("tls-start");
    let good = Pki::new();
    let (cert, key) = good.write(&dir);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();

    let err = start_up_error(&["--tls-cert", missing, "--tls-key", key]);
    assert!(err.contains(&format!("reading TLS certificate {missing}")), "{err}");
    let err = start_up_error(&["--tls-cert", cert, "--tls-key", missing]);
    assert!(err.contains(&format!("reading TLS key {missing}")), "{err}");
    let err = start_up_error(&["--tls-cert", cert]);
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");

    let other = dir.0.join("other-key.pem");
    std::fs::write(&other, Pki::new().key_pem).unwrap();
    let err = start_up_error(&["--tls-cert", cert, "--tls-key", other.to_str().unwrap()]);
    assert!(err.contains("other-key.pem does not belong to certificate"), "{err}");

    let expired = Pki::valid_until(Some((2022, 3, 1)));
    let old = dir.0.join("old.pem");
    let old_key = dir.0.join("old-key.pem");
    std::fs::write(&old, expired.cert_pem).unwrap();
    std::fs::write(&old_key, expired.key_pem).unwrap();
    let err = start_up_error(&["--tls-cert", old.to_str().unwrap(), "--tls-key", old_key.to_str().unwrap()]);
    assert!(err.contains("old.pem expired on 2022-03-01"), "{err}");

    std::fs::write(&other, "").unwrap();
    let err = start_up_error(&["--tls-cert", cert, "--tls-key", other.to_str().unwrap()]);
    assert!(err.contains("other-key.pem holds no PEM private key"), "{err}");
}

/// `systemctl reload` sends SIGHUP: the binary reads the files again; a bad one is logged and the
/// old certificate kept; the process keeps running either way.
#[test]
fn sighup_reloads_the_certificate_in_the_binary() {
    let dir = TempDir::new("tls-hup");
    let first = Pki::new();
    let (cert, key) = first.write(&dir);
    let ssed = Proc::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let addr = ssed.listening_addr();
    TlsClient::connect(addr, client_config(&first.ca_pem, BOTH), "localhost").expect("first certificate");

    let second = Pki::new();
    second.write(&dir);
    ssed.signal("HUP");
    ssed.wait_for_line("SIGHUP: TLS certificate and key read again");
    ssed.wait_for_line("TLS certificate reloaded");
    TlsClient::connect(addr, client_config(&second.ca_pem, BOTH), "localhost").expect("second certificate");

    std::fs::write(&key, "").unwrap();
    ssed.signal("HUP");
    let line = ssed.wait_for_line("reload failed");
    assert!(line.contains("key.pem holds no PEM private key") && line.contains("kept"), "{line}");
    TlsClient::connect(addr, client_config(&second.ca_pem, BOTH), "localhost").expect("still the second");
}

/// Under systemd: the socket named `ssed` stays plain and the one named `ssed-tls` serves TLS, as
/// ssed.socket and ssed-tls.socket pass them.
#[test]
#[ignore = "needs systemd-socket-activate (Debian package systemd): run by .ci/run"]
fn serves_tls_on_the_socket_named_ssed_tls() {
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (plain, tls) = (port(), port());
    let dir = TempDir::new("tls-socket");
    let pki = Pki::new();
    let (cert, key) = pki.write(&dir);
    let mut command = std::process::Command::new("systemd-socket-activate");
    command
        .args(["-l", &format!("127.0.0.1:{plain}"), "-l", &format!("127.0.0.1:{tls}")])
        .args(["--fdname=ssed:ssed-tls", "-E", "RUST_LOG=info", crate::child::BIN])
        .args([
            "--listen",
            "127.0.0.1:1",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
    let proc = Proc::spawn(command);
    proc.wait_for_line("Listening on");
    let (plain, tls): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{plain}").parse().unwrap(), format!("127.0.0.1:{tls}").parse().unwrap());
    // The first connection makes systemd-socket-activate exec ssed with both sockets.
    let mut client = TlsClient::open(tls, &pki);
    let line = proc.wait_for_line("passed by systemd");
    assert!(line.contains(&format!("TLS on {tls}")), "{line}");
    client.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let (answer, ended) = client.read_to_end();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(get(plain, "/health", "").status, 200, "the socket named ssed stays plain");
    proc.signal("TERM");
}

/// `--max-lag` over TLS: a subscriber that stops reading is dropped once it is that far behind,
/// counted on the plaintext the transport accepted (the ciphertext it holds is at most one write).
#[test]
fn a_tls_subscriber_that_stops_reading_is_dropped_at_max_lag() {
    let pki = Pki::new();
    let server =
        TlsServer::start(&pki, Config { max_body: 16 * 1024, max_lag: 64 * 1024, ..Config::default() });
    let mut slow = subscribe(server.addr, &pki, "topic=flood", "");
    let body = "y".repeat(16 * 1024 - 64);
    // Far more than the socket buffers on both sides and the lag allow.
    let mut last = 0;
    for _ in 0..1000 {
        last = server.publisher.publish(Event::new(body.clone()).topic("flood")).unwrap().get();
    }
    // The stream ends (dropped) before the last event, and the server counts it as a lag drop.
    let (text, _) = slow.read_to_end();
    assert!(!text.contains(&format!("id: {last}\n")), "the slow subscriber was never dropped");
    let mut metrics = TlsClient::open(server.addr, &pki);
    metrics.send(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let (metrics, _) = metrics.read_to_end();
    assert!(metrics.contains("ssed_subscribers_dropped_total{reason=\"lag\"} 1\n"), "{metrics}");
}
