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
use crate::support::*;

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
