//! The one seam between the event loop and a connection's bytes: the loop reads, writes, shuts the
//! write side and (de)registers only through [`Transport`], so a transport that transforms the bytes
//! (TLS) lives in one place instead of at every socket call.
//!
//! Results come back already classified ([`Outcome`], from [`net::classify`]), so every transport
//! treats resets and `WouldBlock` alike. A write's `Done(n)` is the bytes the transport *accepted*
//! from the slices: the loop advances its own buffer and the stream's cursor by exactly that, and its
//! lag check counts only what the transport has not accepted.
//!
//! [`Plain`] is TCP as it is; `Tls` (feature `tls`) runs rustls' `ServerConnection` over the
//! socket: a read decrypts (and answers the handshake), a write encrypts the slices it is given
//! straight into TLS records (the shared frame is never copied or re-encoded first) and holds what
//! the socket did not take. [`Link`] is the one the loop holds: either of them, without a vtable.

use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;

use crate::net::{self, Outcome};

/// A connection's byte stream as the loop sees it.
///
/// Static dispatch on purpose: a `Conn` holds its transport inline, and the memory per idle
/// subscriber is a headline figure, so no box and no vtable pointer per connection.
pub trait Transport {
    /// What mio registers for readiness (the socket underneath).
    type Source: mio::event::Source;

    /// Reads into `buf`: `Done(n)` with `n > 0`, `Closed` at the peer's end of stream.
    fn read(&mut self, buf: &mut [u8]) -> Outcome;

    /// Writes the slices in order: `Done(n)` is how many of their bytes the transport accepted (a
    /// prefix; it may be fewer than offered). With no slices, it only pushes out what the transport
    /// still holds ([`Transport::wants_write`]): `Done(0)` once nothing is held, `WouldBlock`
    /// while the socket is full.
    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> Outcome;

    /// Whether the transport holds accepted bytes it has not yet put on the socket (a TLS transport's
    /// ciphertext). The loop keeps writing, and does not shut the write side, while this is true.
    fn wants_write(&self) -> bool;

    /// Shuts the write side, so the peer reads its end of stream; called once
    /// [`Transport::wants_write`] is false. A TLS transport would send its `close_notify` here.
    fn close_write(&mut self) -> io::Result<()>;

    /// The socket, to register and deregister with the loop's `Poll`.
    fn source(&mut self) -> &mut Self::Source;

    /// Whether the connection is still in its TLS handshake: its reads cost the loop public-key
    /// operations, which the loop rations per turn. Plain TCP never is.
    fn handshaking(&self) -> bool {
        false
    }
}

/// Plain TCP: bytes go to the socket as they are; nothing is ever held back.
#[derive(Debug)]
pub struct Plain(TcpStream);

impl Plain {
    /// Wraps an accepted, non-blocking stream.
    pub fn new(stream: TcpStream) -> Plain {
        Plain(stream)
    }
}

impl Transport for Plain {
    type Source = TcpStream;

    fn read(&mut self, buf: &mut [u8]) -> Outcome {
        net::classify(self.0.read(buf), true)
    }

    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> Outcome {
        // One slice is the common case (an answer, one frame): a plain `write` is cheaper than
        // `writev` with a one-element vector.
        let result = match slices {
            [one] => self.0.write(one),
            _ => self.0.write_vectored(slices),
        };
        net::classify(result, false)
    }

    fn wants_write(&self) -> bool {
        false
    }

    fn close_write(&mut self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }

    fn source(&mut self) -> &mut TcpStream {
        &mut self.0
    }
}

/// The transport a connection of the loop uses: plain TCP, or TLS over it.
///
/// TLS is boxed: its rustls state is a few hundred bytes inline, and a plain connection should not
/// pay for it in every slab slot.
#[derive(Debug)]
pub enum Link {
    /// Plain TCP.
    Plain(Plain),
    /// TLS over TCP.
    #[cfg(feature = "tls")]
    Tls(Box<Tls>),
}

impl Transport for Link {
    type Source = TcpStream;

    fn read(&mut self, buf: &mut [u8]) -> Outcome {
        match self {
            Link::Plain(t) => t.read(buf),
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.read(buf),
        }
    }

    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> Outcome {
        match self {
            Link::Plain(t) => t.write_vectored(slices),
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.write_vectored(slices),
        }
    }

    fn wants_write(&self) -> bool {
        match self {
            Link::Plain(t) => t.wants_write(),
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.wants_write(),
        }
    }

    fn close_write(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(t) => t.close_write(),
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.close_write(),
        }
    }

    fn source(&mut self) -> &mut TcpStream {
        match self {
            Link::Plain(t) => t.source(),
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.source(),
        }
    }

    fn handshaking(&self) -> bool {
        match self {
            Link::Plain(t) => t.handshaking(),
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.handshaking(),
        }
    }
}

#[cfg(all(feature = "tls", any(test, feature = "fuzzing")))]
pub use self::tls::feed;
#[cfg(feature = "tls")]
pub use self::tls::Tls;

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use std::sync::Arc;

    use rustls::{ServerConfig, ServerConnection};

    /// Ciphertext rustls may hold for the socket: what one write of the loop makes, so a slow
    /// client's backlog stays in the shared log (where `--max-lag` counts it) and not here.
    const HELD_CIPHERTEXT: usize = 64 * 1024;

    /// TLS over a socket (a `TcpStream` in the loop; anything `Read + Write` for the fuzz target
    /// and the tests).
    ///
    /// Reads feed the socket's records to rustls and return the plaintext; handshake messages and
    /// alerts rustls answers with go out at once. Writes encrypt the slices into records and push
    /// them out; the ciphertext the socket did not take is held (one write's worth at most:
    /// nothing more is accepted until it is out) and each record's buffer is freed as soon as it
    /// is written, so an idle connection holds none.
    pub struct Tls<S = TcpStream> {
        conn: ServerConnection,
        socket: S,
        /// `close_notify` is queued.
        closing: bool,
        /// The socket's write side is shut (after `close_notify` went out).
        shut: bool,
    }

    impl<S> std::fmt::Debug for Tls<S> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Tls").field("handshaking", &self.conn.is_handshaking()).finish_non_exhaustive()
        }
    }

    impl<S: Read + Write> Tls<S> {
        /// A server-side TLS connection over `socket`, starting from `config`.
        pub fn new(socket: S, config: Arc<ServerConfig>) -> Result<Tls<S>, rustls::Error> {
            let mut conn = ServerConnection::new(config)?;
            conn.set_buffer_limit(Some(HELD_CIPHERTEXT));
            Ok(Tls { conn, socket, closing: false, shut: false })
        }

        /// The socket underneath.
        #[cfg(any(test, feature = "fuzzing"))]
        pub fn socket(&mut self) -> &mut S {
            &mut self.socket
        }

        /// Pushes held ciphertext to the socket: `Done(0)` once none is held.
        fn push(&mut self) -> Outcome {
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut self.socket) {
                    Ok(0) => return Outcome::Closed,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return net::classify(Err(e), false),
                }
            }
            Outcome::Done(0)
        }

        /// Plaintext into `buf`: what rustls has decrypted already, else the socket's records
        /// until a record yields some, the socket would block, or the peer is gone.
        pub fn read_plain(&mut self, buf: &mut [u8]) -> Outcome {
            loop {
                match self.conn.reader().read(buf) {
                    // A clean `close_notify` (or an empty `buf`, which the loop never passes).
                    Ok(0) => return Outcome::Closed,
                    Ok(n) => return Outcome::Done(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // End of stream without `close_notify`: the peer is gone all the same.
                    Err(e) => return net::classify(Err(e), true),
                }
                match self.conn.read_tls(&mut self.socket) {
                    Ok(0) => return Outcome::Closed,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return net::classify(Err(e), true),
                }
                if let Err(e) = self.conn.process_new_packets() {
                    // rustls queued the alert that tells the peer why; it goes out if it can.
                    let _ = self.push();
                    return Outcome::Failed(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                match self.push() {
                    Outcome::Done(_) | Outcome::WouldBlock => {}
                    gone => return gone,
                }
            }
        }

        /// Encrypts a prefix of `slices` (all of them, up to `HELD_CIPHERTEXT`) once what was held
        /// is out, and pushes it: `Done(n)` is the plaintext accepted, whether or not its records
        /// all reached the socket.
        pub fn write_plain(&mut self, slices: &[IoSlice<'_>]) -> Outcome {
            match self.push() {
                Outcome::Done(_) => {}
                other => return other,
            }
            if slices.iter().all(|s| s.is_empty()) {
                return Outcome::Done(0);
            }
            let accepted = match self.conn.writer().write_vectored(slices) {
                Ok(n) => n,
                Err(e) => return Outcome::Failed(e),
            };
            match self.push() {
                Outcome::Done(_) | Outcome::WouldBlock => Outcome::Done(accepted),
                gone => gone,
            }
        }

        /// Whether the handshake is still going on.
        pub fn is_handshaking(&self) -> bool {
            self.conn.is_handshaking()
        }

        /// Whether ciphertext waits for the socket.
        pub fn holds_ciphertext(&self) -> bool {
            self.conn.wants_write()
        }

        /// Queues `close_notify` (once) and pushes it; true once nothing is held.
        fn notify_close(&mut self) -> io::Result<bool> {
            if !self.closing {
                self.closing = true;
                self.conn.send_close_notify();
            }
            match self.push() {
                Outcome::Done(_) => Ok(true),
                Outcome::WouldBlock => Ok(false),
                Outcome::Closed => Err(io::ErrorKind::BrokenPipe.into()),
                Outcome::Failed(e) => Err(e),
            }
        }
    }

    impl Transport for Tls<TcpStream> {
        type Source = TcpStream;

        fn read(&mut self, buf: &mut [u8]) -> Outcome {
            self.read_plain(buf)
        }

        fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> Outcome {
            self.write_plain(slices)
        }

        fn wants_write(&self) -> bool {
            self.holds_ciphertext()
        }

        /// Sends `close_notify`, then shuts the socket's write side once it is out. If the socket
        /// is full, `wants_write` stays true: the loop flushes and calls this again.
        fn close_write(&mut self) -> io::Result<()> {
            if self.notify_close()? && !self.shut {
                self.shut = true;
                self.socket.shutdown(std::net::Shutdown::Write)?;
            }
            Ok(())
        }

        fn source(&mut self) -> &mut TcpStream {
            &mut self.socket
        }

        fn handshaking(&self) -> bool {
            self.is_handshaking()
        }
    }

    /// A socket in memory for the fuzz target and the tests: what "arrives" is read until it runs
    /// out (then `WouldBlock`, or the end of stream once `eof`), and what is written is kept.
    #[cfg(any(test, feature = "fuzzing"))]
    #[derive(Debug, Default)]
    pub struct Pipe {
        /// What has arrived and not been read yet.
        pub arrived: std::collections::VecDeque<u8>,
        /// The peer has closed: reads return 0 once `arrived` is empty.
        pub eof: bool,
        /// Everything the server wrote.
        pub sent: Vec<u8>,
    }

    #[cfg(any(test, feature = "fuzzing"))]
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.arrived.is_empty() {
                return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let n = buf.len().min(self.arrived.len());
            for (slot, byte) in buf.iter_mut().zip(self.arrived.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// How the TLS read path ended for one input ([`feed`]).
    #[cfg(any(test, feature = "fuzzing"))]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fed {
        /// Refused (a fatal alert was due).
        Refused,
        /// The peer's end of stream, with or without `close_notify`.
        Closed,
    }

    /// Feeds `input` to a fresh server-side TLS connection in pieces of at most `piece` bytes (each
    /// read until `WouldBlock`, as the loop does), then the peer's end of stream. Panics if the
    /// read path misbehaves: plaintext from bytes that cannot have completed a handshake (nobody
    /// here knows the server's keys), a read larger than its buffer, or going on after a refusal.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn feed(config: &Arc<ServerConfig>, input: &[u8], piece: usize) -> Fed {
        let mut tls = Tls::new(Pipe::default(), config.clone()).expect("a server connection");
        let mut buf = [0u8; 1024];
        let mut pieces = input.chunks(piece.max(1)).peekable();
        loop {
            match pieces.next() {
                Some(bytes) => tls.socket().arrived.extend(bytes),
                None => tls.socket().eof = true,
            }
            // `read_plain` reads until the pipe runs dry, as the loop's reads go until `WouldBlock`.
            match tls.read_plain(&mut buf) {
                Outcome::Done(n) => panic!("{n} bytes of plaintext without a handshake"),
                Outcome::WouldBlock => {}
                Outcome::Closed => return Fed::Closed,
                Outcome::Failed(_) => {
                    // Nothing more is taken after a refusal.
                    let before = tls.socket().sent.len();
                    assert!(!matches!(tls.read_plain(&mut buf), Outcome::Done(_)));
                    assert_eq!(tls.socket().sent.len(), before, "nothing sent after the alert");
                    return Fed::Refused;
                }
            }
            assert!(pieces.peek().is_some() || !tls.socket().eof, "the end of stream was not noticed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::time::Duration;

    use mio::{Events, Interest, Poll, Token};

    /// A plain transport and the std client on the other end of a loopback connection.
    fn pair() -> (Plain, StdStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = StdStream::connect(listener.local_addr().expect("address")).expect("connect");
        client.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        (Plain::new(TcpStream::from_std(server)), client)
    }

    /// Waits (bounded) until the transport's socket is readable, through its mio source.
    fn wait_readable(poll: &mut Poll) {
        let mut events = Events::with_capacity(4);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while events.is_empty() {
            let left = deadline.checked_duration_since(std::time::Instant::now()).expect("readable in time");
            poll.poll(&mut events, Some(left)).expect("poll");
        }
    }

    #[test]
    fn plain_reads_writes_vectored_and_would_block() {
        let (mut plain, mut client) = pair();
        assert!(!plain.wants_write());
        let mut poll = Poll::new().expect("poll");
        poll.registry().register(plain.source(), Token(0), Interest::READABLE).expect("register");

        let mut buf = [0u8; 64];
        assert!(matches!(plain.read(&mut buf), Outcome::WouldBlock), "nothing sent yet");

        client.write_all(b"hello").expect("client writes");
        wait_readable(&mut poll);
        match plain.read(&mut buf) {
            Outcome::Done(n) => assert_eq!(&buf[..n], b"hello"),
            other => panic!("expected the client's bytes, got {other:?}"),
        }

        let slices = [IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cdef")];
        assert!(matches!(plain.write_vectored(&slices), Outcome::Done(6)));
        assert!(matches!(plain.write_vectored(&[IoSlice::new(b"g")]), Outcome::Done(1)));
        let mut got = [0u8; 7];
        client.read_exact(&mut got).expect("client reads");
        assert_eq!(&got, b"abcdefg");

        // The client reads nothing more: the socket fills, and the transport says so.
        let chunk = vec![b'x'; 64 * 1024];
        let mut accepted = 0usize;
        let full = (0..4096).any(|_| match plain.write_vectored(&[IoSlice::new(&chunk)]) {
            Outcome::Done(n) => {
                accepted += n;
                false
            }
            Outcome::WouldBlock => true,
            other => panic!("expected Done or WouldBlock, got {other:?}"),
        });
        assert!(full, "256 MiB went into a socket nobody reads");
        assert!(accepted > 0);
        assert!(!plain.wants_write(), "plain TCP never holds bytes back");

        poll.registry().deregister(plain.source()).expect("deregister");
    }

    #[test]
    fn plain_close_write_gives_the_peer_its_end_of_stream() {
        let (mut plain, mut client) = pair();
        assert!(matches!(plain.write_vectored(&[IoSlice::new(b"bye")]), Outcome::Done(3)));
        plain.close_write().expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("the client reads to its end of stream");
        assert_eq!(got, b"bye");

        // The read side stays open: the client's bytes and then its close still arrive.
        let mut poll = Poll::new().expect("poll");
        poll.registry().register(plain.source(), Token(0), Interest::READABLE).expect("register");
        client.write_all(b"late").expect("client writes");
        drop(client);
        let mut buf = [0u8; 16];
        let mut read = Vec::new();
        loop {
            match plain.read(&mut buf) {
                Outcome::Done(n) => read.extend_from_slice(&buf[..n]),
                Outcome::WouldBlock => wait_readable(&mut poll),
                Outcome::Closed => break,
                Outcome::Failed(e) => panic!("read failed: {e}"),
            }
        }
        assert_eq!(read, b"late");
    }
}

#[cfg(all(test, feature = "tls"))]
mod tls_tests {
    use super::tls::{Fed, Pipe};
    use super::*;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    fn server_config() -> (Arc<rustls::ServerConfig>, String) {
        let (ca, cert, key) = crate::tls::tests::ca_and_server(None);
        let config = crate::tls::from_pem(
            cert.as_bytes(),
            "cert",
            key.as_bytes(),
            "key",
            std::time::SystemTime::now(),
        )
        .expect("config");
        (config, ca)
    }

    fn client_hello(ca: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        hello
    }

    /// What the fuzz target checks, on inputs made here: refused or closed, the same in every split.
    #[test]
    fn the_tls_read_path_gives_the_same_verdict_in_any_split() {
        let (config, ca) = server_config();
        let hello = client_hello(&ca);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut inputs: Vec<(Vec<u8>, Option<Fed>)> = vec![
            (Vec::new(), Some(Fed::Closed)),
            (hello.clone(), Some(Fed::Closed)),
            (hello[..hello.len() / 2].to_vec(), Some(Fed::Closed)),
            (b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Some(Fed::Refused)),
            ([&hello[..], b"\x17\x03\x03\x00\x05hello"].concat(), Some(Fed::Refused)),
            (vec![0x16, 0x03, 0x01, 0xFF, 0xFF], Some(Fed::Refused)),
        ];
        for _ in 0..300 {
            let mut mutated = hello.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % mutated.len();
                mutated[at] ^= 1 << (next() % 8);
            }
            inputs.push((mutated, None));
            let garbage: Vec<u8> = (0..next() % 600).map(|_| next() as u8).collect();
            inputs.push((garbage, None));
        }
        for (input, expected) in &inputs {
            let whole = feed(&config, input, input.len());
            if let Some(expected) = expected {
                assert_eq!(whole, *expected, "{input:?}");
            }
            for piece in [1, 2, 3, 7, 16, 61, 256] {
                assert_eq!(feed(&config, input, piece), whole, "pieces of {piece}: {input:?}");
            }
        }
    }

    /// A write encrypts the slices (a frame and its framing) as they are, and holds nothing once the
    /// socket took it all.
    #[test]
    fn writes_encrypt_the_slices_into_records_the_client_reads_whole() {
        let (config, ca) = server_config();
        let mut tls = Tls::new(Pipe::default(), config).unwrap();
        // A handshake in memory: the client's flights arrive in the server's pipe and back.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
        let client_config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut buf = [0u8; 256];
        for _ in 0..10 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            tls.socket().arrived.extend(to_server);
            assert!(matches!(tls.read_plain(&mut buf), Outcome::WouldBlock));
            let from_server = std::mem::take(&mut tls.socket().sent);
            client.read_tls(&mut &from_server[..]).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !tls.is_handshaking() {
                break;
            }
        }
        assert!(!tls.is_handshaking(), "handshake done");
        let frame = vec![b'x'; 40_000];
        let slices = [IoSlice::new(b"id: 1\ndata: "), IoSlice::new(&frame), IoSlice::new(b"\n\n")];
        match tls.write_plain(&slices) {
            Outcome::Done(n) => assert_eq!(n, 12 + 40_000 + 2),
            other => panic!("{other:?}"),
        }
        assert!(!tls.holds_ciphertext(), "the pipe took everything");
        let sent = std::mem::take(&mut tls.socket().sent);
        let mut records = &sent[..];
        let mut plain = Vec::new();
        while !records.is_empty() {
            client.read_tls(&mut records).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut plain);
        }
        assert_eq!(plain.len(), 40_014);
        assert!(plain.starts_with(b"id: 1\ndata: xxx") && plain.ends_with(b"x\n\n"));
    }
}
