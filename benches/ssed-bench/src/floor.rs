//! `ssed-bench floor`: the cost of the writes alone, with no server around them.
//!
//! N loopback TCP connections are made; a reader drains their far ends from epoll; the writing
//! thread then writes `--size` bytes to each of the N sockets in turn (one write, or one `writev` of
//! K events), for several rounds, and reports its own CPU time per write (`getrusage(RUSAGE_THREAD)`)
//! and the wall time of one walk over all N. A server fanning one event out to N subscribers cannot
//! do better than this; the load run's server CPU per delivery is compared against it.
//!
//! The reader is a thread when 2N descriptors fit under the limit, else a child process (the same
//! binary, `floor-reader`), so each process holds N of them.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::procfs;
use crate::report::Json;
use crate::sys;

/// Pause before each timed round, so the reader has drained the last one and the walk measures
/// writes into empty socket buffers, as a fan-out of one event does.
const ROUND_GAP: Duration = Duration::from_millis(100);
/// The listener's backlog request (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;
/// The reader gives up when it has not accepted anything for this long.
const ACCEPT_STALL: Duration = Duration::from_secs(30);
/// Descriptors kept for everything but the connections.
const RESERVED_DESCRIPTORS: u64 = 32;
const LISTENER: Token = Token(usize::MAX);

/// Where the reader runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderMode {
    /// A thread if the descriptors fit, else a process.
    Auto,
    /// A thread of this process.
    Thread,
    /// A child process.
    Process,
}

/// Settings of a floor run.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    /// Connections to write to.
    pub connections: usize,
    /// Events per `writev` (1: a plain `write`).
    pub writes_per_syscall: usize,
    /// Timed rounds.
    pub rounds: usize,
    /// Bytes per event.
    pub size: usize,
    /// CPU to pin the writing thread to.
    pub writer_cpu: Option<usize>,
    /// CPU to pin the reader to.
    pub reader_cpu: Option<usize>,
    /// Where the reader runs.
    pub mode: ReaderMode,
    /// Spread the connections' source addresses over 127.0.0.2–254.
    pub spread: bool,
}

/// What a floor run measured.
#[derive(Debug, Clone)]
pub struct FloorOutcome {
    /// The settings.
    pub config: FloorConfig,
    /// Where the reader ran.
    pub mode: ReaderMode,
    /// Writer CPU time of each round.
    pub cpu: Vec<Duration>,
    /// Wall time of each round.
    pub wall: Vec<Duration>,
    /// Writes that took fewer bytes than offered (then completed with more writes).
    pub short_writes: u64,
    /// Time the writer spent runnable but waiting for its CPU during the timed rounds (other work on
    /// the machine; it stretches the walks' wall time, not their CPU time).
    pub writer_wait: Option<Duration>,
}

impl FloorOutcome {
    fn writes(&self) -> f64 {
        (self.config.connections * self.cpu.len()) as f64
    }

    /// Writer CPU µs per write system call.
    pub fn cpu_us_per_write(&self) -> f64 {
        self.cpu.iter().sum::<Duration>().as_secs_f64() * 1e6 / self.writes()
    }

    /// Writer CPU µs per event.
    pub fn cpu_us_per_event(&self) -> f64 {
        self.cpu_us_per_write() / self.config.writes_per_syscall as f64
    }

    /// Median and fastest wall time of a walk over all connections.
    pub fn walk(&self) -> (Duration, Duration) {
        let mut sorted = self.wall.clone();
        sorted.sort();
        (sorted[sorted.len() / 2], sorted[0])
    }

    /// The table.
    pub fn table(&self) -> String {
        let c = &self.config;
        let (median, fastest) = self.walk();
        format!(
            "ssed-bench floor: {} loopback connections, {} rounds, {} x {} bytes per {} (reader: {:?})\n  \
             writer CPU    {:.2} µs per write, {:.2} µs per event\n  \
             walk          {:.2} ms median, {:.2} ms fastest ({:.2} µs per write)\n  \
             CPU wait      {} ms over all rounds, runnable but waiting for the writer's CPU\n",
            c.connections,
            self.cpu.len(),
            c.writes_per_syscall,
            c.size,
            if c.writes_per_syscall == 1 { "write" } else { "writev" },
            self.mode,
            self.cpu_us_per_write(),
            self.cpu_us_per_event(),
            median.as_secs_f64() * 1e3,
            fastest.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e6 / c.connections as f64,
            self.writer_wait.map_or("-".into(), |w| format!("{:.1}", w.as_secs_f64() * 1e3)),
        )
    }

    /// The JSON line.
    pub fn json(&self) -> String {
        let (median, fastest) = self.walk();
        Json::default()
            .raw("connections", self.config.connections)
            .raw("writes_per_syscall", self.config.writes_per_syscall)
            .raw("size", self.config.size)
            .raw("rounds", self.cpu.len())
            .string("reader", Some(&format!("{:?}", self.mode).to_lowercase()))
            .float("cpu_us_per_write", Some(self.cpu_us_per_write()), 3)
            .float("cpu_us_per_event", Some(self.cpu_us_per_event()), 3)
            .float("walk_ms_median", Some(median.as_secs_f64() * 1e3), 3)
            .float("walk_ms_min", Some(fastest.as_secs_f64() * 1e3), 3)
            .float("wall_us_per_write", Some(median.as_secs_f64() * 1e6 / self.config.connections as f64), 3)
            .raw("short_writes", self.short_writes)
            .float("writer_wait_ms", self.writer_wait.map(|w| w.as_secs_f64() * 1e3), 1)
            .finish()
    }
}

/// A listener on 127.0.0.1 with an ephemeral port and a backlog deep enough for N quick connects.
fn listen() -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts `n` connections and reads them until every one is closed; `on_all_accepted` runs once
/// the last is in.
fn drain(
    listener: TcpListener,
    n: usize,
    cpu: Option<usize>,
    on_all_accepted: impl FnOnce(),
) -> io::Result<()> {
    if let Some(cpu) = cpu {
        sys::pin_current_thread(cpu)?;
    }
    listener.set_nonblocking(true)?;
    let mut listener = Some(mio::net::TcpListener::from_std(listener));
    let mut poll = Poll::new()?;
    poll.registry().register(listener.as_mut().expect("just set"), LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut streams: Vec<Option<mio::net::TcpStream>> = Vec::with_capacity(n);
    let mut closed = 0;
    let mut notify = Some(on_all_accepted);
    let mut last_accept = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    while closed < n {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_secs(1))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Some(l) = listener.as_mut() {
                    match l.accept() {
                        Ok((mut stream, _)) => {
                            poll.registry().register(
                                &mut stream,
                                Token(streams.len()),
                                Interest::READABLE,
                            )?;
                            streams.push(Some(stream));
                            last_accept = Instant::now();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                    if streams.len() == n {
                        listener = None; // one descriptor back
                        if let Some(f) = notify.take() {
                            f();
                        }
                    }
                }
                continue;
            }
            let slot = &mut streams[event.token().0];
            let Some(stream) = slot.as_mut() else { continue };
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        *slot = None;
                        closed += 1;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        *slot = None;
                        closed += 1;
                        break;
                    }
                }
            }
        }
        if streams.len() < n && last_accept.elapsed() > ACCEPT_STALL {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("accepted only {} of {n} connections", streams.len()),
            ));
        }
    }
    Ok(())
}

/// `ssed-bench floor-reader`: the reader as a child process. Prints `listening PORT`, then
/// `accepted` once all `n` are in, and exits when all are closed.
pub fn run_reader_process(n: usize, cpu: Option<usize>) -> Result<(), String> {
    sys::raise_file_limit().map_err(|e| format!("raising the descriptor limit: {e}"))?;
    let listener = listen().map_err(|e| format!("listening: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut out = io::stdout();
    writeln!(out, "listening {port}").and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    drain(listener, n, cpu, || {
        let mut out = io::stdout();
        let _ = writeln!(out, "accepted").and_then(|()| out.flush());
    })
    .map_err(|e| format!("reader: {e}"))
}

/// The reader's side, as the writer holds it.
enum Reader {
    Thread { all_accepted: mpsc::Receiver<()>, done: thread::JoinHandle<io::Result<()>> },
    Process { child: Child, lines: BufReader<std::process::ChildStdout> },
}

impl Reader {
    fn start(mode: ReaderMode, config: &FloorConfig) -> Result<(Reader, SocketAddr), String> {
        let n = config.connections;
        let cpu = config.reader_cpu;
        if mode == ReaderMode::Thread {
            let listener = listen().map_err(|e| format!("listening: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let (tx, rx) = mpsc::channel();
            let done = thread::Builder::new()
                .name("floor-reader".into())
                .spawn(move || {
                    drain(listener, n, cpu, move || {
                        let _ = tx.send(());
                    })
                })
                .map_err(|e| format!("starting the reader thread: {e}"))?;
            return Ok((Reader::Thread { all_accepted: rx, done }, addr));
        }
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut command = Command::new(exe);
        command.args(["floor-reader", "--connections", &n.to_string()]);
        if let Some(cpu) = cpu {
            command.args(["--reader-cpu", &cpu.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the reader process: {e}"))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        lines.read_line(&mut line).map_err(|e| format!("reading from the reader process: {e}"))?;
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("the reader process said {line:?} instead of its port"))?;
        Ok((Reader::Process { child, lines }, SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
    }

    fn wait_all_accepted(&mut self) -> Result<(), String> {
        match self {
            Reader::Thread { all_accepted, .. } => {
                all_accepted.recv().map_err(|_| "the reader thread stopped before accepting all".to_string())
            }
            Reader::Process { lines, .. } => {
                let mut line = String::new();
                lines.read_line(&mut line).map_err(|e| e.to_string())?;
                if line.trim() == "accepted" {
                    Ok(())
                } else {
                    Err("the reader process stopped before accepting all".into())
                }
            }
        }
    }

    fn finish(self) -> Result<(), String> {
        match self {
            Reader::Thread { done, .. } => match done.join() {
                Ok(result) => result.map_err(|e| format!("reader: {e}")),
                Err(_) => Err("the reader thread panicked".into()),
            },
            Reader::Process { mut child, .. } => match child.wait() {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("the reader process ended with {status}")),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Opens one blocking connection to `addr`, from `source` if given.
fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(source) = source {
        sys::bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::from((source, 0)).into())?;
    }
    socket.connect(&addr.into())?;
    // Like a server's subscriber sockets: every write is a frame someone waits for.
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// Runs the floor measurement.
pub fn run(config: FloorConfig) -> Result<FloorOutcome, String> {
    let limit = sys::raise_file_limit().map_err(|e| format!("raising the descriptor limit: {e}"))?;
    let n = config.connections as u64;
    let mode = match config.mode {
        ReaderMode::Auto if 2 * n + RESERVED_DESCRIPTORS <= limit.soft => ReaderMode::Thread,
        ReaderMode::Auto => ReaderMode::Process,
        mode => mode,
    };
    let needed = if mode == ReaderMode::Thread { 2 * n } else { n } + RESERVED_DESCRIPTORS;
    if needed > limit.soft {
        return Err(format!(
            "{} connections need {needed} descriptors in this process, over the limit {} (hard {}): raise \
             LimitNOFILE / ulimit -Hn{}",
            config.connections,
            limit.soft,
            limit.hard,
            if mode == ReaderMode::Thread {
                ", or let the reader be a process (--reader process)"
            } else {
                ""
            }
        ));
    }
    if let Some(cpu) = config.writer_cpu {
        sys::pin_current_thread(cpu).map_err(|e| format!("pinning the writer to CPU {cpu}: {e}"))?;
    }
    let (mut reader, addr) = Reader::start(mode, &config)?;
    let mut sockets = Vec::with_capacity(config.connections);
    for i in 0..config.connections {
        let source = config.spread.then(|| Ipv4Addr::new(127, 0, 0, 2 + (i % 253) as u8));
        match connect(addr, source) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                return Err(format!(
                    "connection {i} of {}: {}",
                    config.connections,
                    crate::load::advice(&e, Some(limit), config.connections)
                ))
            }
        }
    }
    reader.wait_all_accepted()?;

    let payload = vec![b'x'; config.size];
    let slices: Vec<IoSlice<'_>> = (0..config.writes_per_syscall).map(|_| IoSlice::new(&payload)).collect();
    let per_call = config.size * config.writes_per_syscall;
    let mut outcome = FloorOutcome {
        config: config.clone(),
        mode,
        cpu: Vec::new(),
        wall: Vec::new(),
        short_writes: 0,
        writer_wait: Some(Duration::ZERO),
    };
    // One untimed round first: the first write on a connection pays for its buffers.
    for round in 0..=config.rounds {
        thread::sleep(ROUND_GAP);
        let cpu_before = sys::thread_cpu_time().map_err(|e| e.to_string())?;
        let sched_before = procfs::this_thread_sched();
        let started = Instant::now();
        for socket in &mut sockets {
            let written =
                if slices.len() == 1 { socket.write(&payload) } else { socket.write_vectored(&slices) }
                    .map_err(|e| format!("writing: {e}"))?;
            if written < per_call {
                outcome.short_writes += 1;
                let all: Vec<u8> = payload.repeat(config.writes_per_syscall);
                socket.write_all(&all[written..]).map_err(|e| format!("writing: {e}"))?;
            }
        }
        let wall = started.elapsed();
        let cpu = sys::thread_cpu_time().map_err(|e| e.to_string())? - cpu_before;
        if round > 0 {
            outcome.wall.push(wall);
            outcome.cpu.push(cpu);
            outcome.writer_wait = match (outcome.writer_wait, sched_before, procfs::this_thread_sched()) {
                (Some(sum), Some((_, before)), Some((_, after))) => {
                    Some(sum + Duration::from_secs_f64((after - before).max(0.0)))
                }
                _ => None,
            };
        }
    }
    drop(sockets);
    reader.finish()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_floor_in_a_thread() {
        let config = FloorConfig {
            connections: 20,
            writes_per_syscall: 3,
            rounds: 2,
            size: 100,
            writer_cpu: None,
            reader_cpu: None,
            mode: ReaderMode::Thread,
            spread: true,
        };
        let outcome = run(config).unwrap();
        assert_eq!((outcome.cpu.len(), outcome.wall.len(), outcome.mode), (2, 2, ReaderMode::Thread));
        assert!(outcome.cpu_us_per_event() <= outcome.cpu_us_per_write());
        assert!(outcome.json().starts_with("{\"connections\":20,"));
    }
}
