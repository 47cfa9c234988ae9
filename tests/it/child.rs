//! Running the built `ssed` binary as a child process: spawn, read its log, signal it, and talk to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::DEADLINE;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ssed");

/// A child process that is killed (by its PID) if the test ends before it exits.
pub struct Proc {
    pub child: Child,
    stderr_lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(mut command: Command) -> Proc {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("the binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, stderr_lines, seen: Vec::new() }
    }

    /// Returns the first stderr line containing `needle`, waiting for it if it has not come yet.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no stderr line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// The address from the "listening on ADDR" log line.
    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on ");
        line.rsplit(' ').next().unwrap().parse().expect("an address at the end of the line")
    }

    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn base_command() -> Command {
    let mut command = Command::new(BIN);
    command
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM");
    command
}

/// Opens a stream on topic `t` and returns the socket once the response head has been read.
pub fn subscribe(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}

pub fn publish(addr: SocketAddr, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let request = format!(
        "POST /events?topic=t HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.rsplit("\r\n\r\n").next().unwrap().trim().to_string()
}

/// Reads from a stream until `needle` has appeared or the stream ends; returns all bytes read.
pub fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + DEADLINE;
    while !seen.windows(needle.len()).any(|w| w == needle) {
        assert!(Instant::now() < deadline, "never saw {:?}", String::from_utf8_lossy(needle));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed: {e}; had {:?}", String::from_utf8_lossy(&seen)),
        }
    }
    seen
}

/// Receives datagrams until one contains `needle`; returns everything received.
pub fn recv_until(socket: &UnixDatagram, needle: &str, received: &mut Vec<String>) {
    let deadline = Instant::now() + DEADLINE;
    while !received.iter().any(|m| m.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {needle:?} notification; got {received:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 1024];
        match socket.recv(&mut buf) {
            Ok(n) => received.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => panic!("no {needle:?} notification ({e}); got {received:?}"),
        }
    }
}

/// The address at the end of a "listening on ADDR" log line.
pub fn listening_addr_from(line: &str) -> SocketAddr {
    line.rsplit(' ').next().unwrap().parse().expect("an address at the end of the line")
}
