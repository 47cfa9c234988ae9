//! Abuse resistance: what a server on the open internet meets, tried over real sockets.
//!
//! Descriptor exhaustion, slowloris clients, readers that never read, abrupt resets, request
//! smuggling shapes, requests that make the server hold far more than they send, secrets in logs,
//! and CORS. Where the claim is about the process (CPU time, RSS,
//! open descriptors, what reaches stderr) the built `ssed` binary runs as a child and is measured
//! through `/proc`; elsewhere the server runs in-process like the contract tests. Every wait is
//! bounded by a deadline; the few fixed intervals are measurement windows, never synchronisation.
//! `docs/security.md` lists every input tried here, the answer, and the test that proves it.

mod amplification;
mod descriptors;
mod disconnects;
mod framing;
mod secrets;
mod slowloris;
mod stalled;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

use crate::child::{Proc, BIN};
use crate::support::{connect, eventually, metric, Response, DEADLINE};

/// A connection whose receive buffer is shrunk to `bytes` before the handshake, so a client that
/// never reads stops the server's writes early and the kernel holds little on its behalf.
pub fn connect_small_window(addr: SocketAddr, bytes: usize) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// Closes `stream` with a reset instead of a FIN: `SO_LINGER` of zero, then close.
pub fn reset(stream: TcpStream) {
    SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(stream);
}

/// Sends `request` on a new connection to `addr` and reads one response.
pub fn roundtrip_at(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = connect(addr);
    stream.write_all(request).unwrap();
    crate::support::read_response(&mut stream)
}

/// `GET path` on a connection of its own.
pub fn get_at(addr: SocketAddr, path: &str) -> Response {
    roundtrip_at(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
}

/// Publishes `body` raw to `query` on a new connection; returns the id.
pub fn publish_at(addr: SocketAddr, query: &str, body: &[u8]) -> u64 {
    let mut request = format!(
        "POST /events?{query} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let response = roundtrip_at(addr, &request);
    assert_eq!(response.status, 200, "publish answered {response:?}");
    response.body_text().trim_end().parse().expect("publish answers an id")
}

/// A keep-alive connection for publishing many events without a handshake each.
pub struct PublishConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl PublishConn {
    pub fn open(addr: SocketAddr) -> PublishConn {
        PublishConn { stream: connect(addr), buf: Vec::new() }
    }

    /// Publishes `body` raw to `query` and returns the id.
    pub fn publish(&mut self, query: &str, body: &[u8]) -> u64 {
        let mut request =
            format!("POST /events?{query} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).expect("send a publish");
        let (status, body) = self.response();
        assert_eq!(status, 200, "publish answered {status}: {}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap().trim_end().parse().expect("publish answers an id")
    }

    /// Reads one `Content-Length` response, keeping whatever follows it.
    fn response(&mut self) -> (u16, Vec<u8>) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return (status, body);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("publish connection closed; had {:?}", String::from_utf8_lossy(&self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading a publish answer: {e}"),
            }
        }
    }
}

/// Sends a subscribe request on `stream` and reads its response head; returns the status.
pub fn subscribe_head(stream: &mut TcpStream, path: &str) -> u16 {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
    crate::support::read_head(stream).0.status
}

/// Whether the server has closed `stream` (end of file or reset), reading and discarding anything
/// still in flight, within `timeout`.
pub fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
                return true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(e) => panic!("reading a stream: {e}"),
        }
    }
}

/// Held by the tests that load the machine (a thousand sockets, tens of megabytes) or time it
/// (latency, CPU per second), so that they do not run at the same time as each other: on a small
/// machine one would otherwise measure the other. Other tests may still run alongside.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Minimum, median, 99th percentile and maximum of some durations.
pub fn spread(samples: &mut [Duration]) -> (Duration, Duration, Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (samples[0], at(0.5), at(0.99), samples[samples.len() - 1])
}
