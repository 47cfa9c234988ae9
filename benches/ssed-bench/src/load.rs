//! The subscribers: one mio loop on one thread that ramps up the connections, reads every stream
//! into one shared buffer, and checks and times each delivered event; plus the run's phases.
//!
//! A run goes: sample the server → ramp (`--ramp` connections per second, at most `--max-pending`
//! handshakes at once) → settle (`--settle`, then sample the server's memory with every subscriber
//! idle) → publish (the publisher thread, see [`crate::publish`]) → drain (until every held stream has
//! every accepted event, or `--drain` passes) → report. `--duration` cuts any phase short.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::histogram::Histogram;
use crate::procfs::{self, Sample};
use crate::publish::{self, decode_body, Progress, PublishConfig, PublishReport};
use crate::sse::{parse_head, BodyParser, Dispatch};
use crate::sys::{self, FileLimit};
use crate::target::Target;
use crate::wall_nanos;

/// The source addresses connections are spread over: 253 addresses times ~28k ephemeral ports each
/// lift the 64k-connections-per-destination ceiling (all of 127.0.0.0/8 is local on Linux).
const SPREAD_FIRST: u8 = 2;
const SPREAD_LAST: u8 = 254;
/// The one buffer every stream is read into.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Readiness events taken per `poll`.
const EVENTS_CAPACITY: usize = 1024;
/// Longest sleep in `poll`, so phases and deadlines are looked at often enough.
const TICK: Duration = Duration::from_millis(50);
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Descriptors kept for everything but the subscribers (epoll, the publisher, stdio, /proc reads).
const RESERVED_DESCRIPTORS: u64 = 32;
/// How long the report of a stopped publisher is waited for.
const PUBLISHER_GRACE: Duration = Duration::from_secs(6);

/// Settings of a load run, validated.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The streams to subscribe to (one or more): connection `n` goes to `targets[n % len]`.
    pub targets: Vec<Target>,
    /// Subscribers to hold.
    pub connections: usize,
    /// New connections per second; 0 for as fast as `max_pending` allows.
    pub ramp: f64,
    /// Handshakes (connect, request, response head) in flight at most.
    pub max_pending: usize,
    /// Bind each connection to one of 127.0.0.2–254 first (only for a 127/8 target).
    pub spread: bool,
    /// What to publish once the subscribers are up, if anything.
    pub publish: Option<PublishConfig>,
    /// The server process to sample.
    pub server_pid: Option<u32>,
    /// Pause between the last connection and the memory sample.
    pub settle: Duration,
    /// How long to wait for late deliveries after the last publish.
    pub drain: Duration,
    /// Hard limit on the whole run.
    pub duration: Duration,
    /// Print progress lines on stderr.
    pub progress: bool,
    /// Extra header lines of each stream request, connection `n` taking `headers[n % len]` (one
    /// token per group of subscribers); empty: none.
    pub headers: Vec<String>,
    /// Set from elsewhere (Ctrl-C in a sweep) to end the run as soon as possible; what was measured
    /// until then is reported, with [`Outcome::interrupted`] set.
    pub stop: Option<Arc<AtomicBool>>,
    /// Counters updated as the run goes, for a progress display running on another thread.
    pub live: Option<Arc<Live>>,
}

/// What a run has reached so far, published by its loop once per turn.
#[derive(Debug, Default)]
pub struct Live {
    /// Streams up now.
    pub held: AtomicUsize,
    /// Events delivered so far.
    pub deliveries: AtomicU64,
    /// Events the publisher has had accepted so far.
    pub accepted: AtomicU64,
}

impl Live {
    /// Back to nothing, for the next run.
    pub fn reset(&self) {
        self.held.store(0, Ordering::Relaxed);
        self.deliveries.store(0, Ordering::Relaxed);
        self.accepted.store(0, Ordering::Relaxed);
    }
}

/// Everything a run measured, for the report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Subscribers asked for.
    pub connections: usize,
    /// Streams open at the end.
    pub held: usize,
    /// Streams open at the end, per target (in `--url` order).
    pub held_per_target: Vec<usize>,
    /// Streams open when memory was sampled.
    pub held_at_sample: usize,
    /// Seconds from the first connect to the last stream up.
    pub ramp_secs: f64,
    /// Connections that never got a 200 stream head, by reason.
    pub connect_errors: BTreeMap<String, u64>,
    /// Streams that were up and then ended, by reason.
    pub ended: BTreeMap<String, u64>,
    /// Why the ramp stopped short, with what to change.
    pub ramp_stopped: Option<String>,
    /// The descriptor limits the bench ran with.
    pub file_limit: Option<FileLimit>,
    /// The server before connecting.
    pub server_before: Option<Sample>,
    /// The server with every subscriber up and idle.
    pub server_idle: Option<Sample>,
    /// The server just before the first publish.
    pub server_fanout_start: Option<Sample>,
    /// The server when the last delivery arrived (or the run stopped).
    pub server_end: Option<Sample>,
    /// What the publisher did.
    pub publish: Option<PublishReport>,
    /// Events delivered to held or dropped streams, each (event, stream) once.
    pub deliveries: u64,
    /// Accepted events a held stream never received, summed over streams.
    pub missing: u64,
    /// Events a stream received more than once.
    pub duplicates: u64,
    /// Events that arrived after a later one on the same stream.
    pub out_of_order: u64,
    /// Events whose `id:` was not above the stream's previous one.
    pub id_regressions: u64,
    /// Events whose data did not carry the bench's stamp (someone else's, or mangled).
    pub foreign: u64,
    /// Events with the bench's stamp that the publisher did not see accepted.
    pub unexpected: u64,
    /// Delivery latencies in nanoseconds.
    pub latency: Histogram,
    /// With `--rate`: delivery time minus the event's slot in the schedule, in nanoseconds. Unlike
    /// `latency` (from the stamp written when the request went out), it also counts the time the
    /// publisher fell behind its schedule waiting for the server's previous answers, so a server
    /// that slows its publishers down cannot hide it (coordinated omission).
    pub schedule_latency: Histogram,
    /// Seconds from the first publish to the last delivery.
    pub fanout_secs: f64,
    /// Per event that reached every held stream: nanoseconds from its publish to its last delivery.
    pub reach_all_ns: Vec<u64>,
    /// Accepted events that did not reach every held stream.
    pub reached_some: u64,
    /// CPU time of the bench's own loop thread over the fan-out: when it nears the fan-out's wall
    /// time, the bench (not the server) set the latencies.
    pub bench_cpu_secs: Option<f64>,
    /// Time the loop thread spent runnable but waiting for its CPU over the fan-out (other work on
    /// the machine).
    pub bench_wait_secs: Option<f64>,
    /// The run hit `--duration`.
    pub timed_out: bool,
    /// The run was stopped through [`LoadConfig::stop`].
    pub interrupted: bool,
    /// Seconds the whole run took.
    pub run_secs: f64,
}

/// Where a subscriber stands.
enum SubState {
    /// Connecting, then writing the request: `sent` bytes of it are out.
    Connecting { sent: usize },
    /// Reading the response head; holds what arrived of it when it spans reads.
    Head(Vec<u8>),
    /// Reading events.
    Streaming(BodyParser),
    /// Done with; the socket is closed.
    Closed,
}

/// What is tracked of one subscriber's deliveries.
#[derive(Default)]
struct Track {
    /// One bit per sequence number received; allocated at the first delivery.
    seen: Vec<u64>,
    /// Sequence numbers received.
    distinct: u32,
    /// One past the highest sequence number received.
    next_seq: u32,
    /// The last `id:` received.
    last_id: Option<u64>,
}

struct Sub {
    stream: Option<TcpStream>,
    state: SubState,
    track: Track,
}

/// Counters the loop keeps while streams come and go.
#[derive(Default)]
struct Stats {
    /// Connections that failed before getting a slot in `subs` (also in `connect_errors`).
    open_failures: usize,
    pending: usize,
    up: usize,
    connect_errors: BTreeMap<String, u64>,
    ended: BTreeMap<String, u64>,
    deliveries: u64,
    duplicates: u64,
    out_of_order: u64,
    id_regressions: u64,
    foreign: u64,
    unexpected: u64,
    /// Distinct deliveries summed over the streams still up.
    distinct_up: u64,
    latency: Histogram,
    /// With `--rate`, once the publisher has started: where each event's slot lies.
    schedule: Option<Schedule>,
    schedule_latency: Histogram,
    last_delivery_ns: u64,
    /// Events the publisher may send: sequence numbers at or above are unexpected.
    events: u32,
    /// Per sequence number: its stamp, its latest delivery and how many streams got it.
    per_event: Vec<EventTiming>,
}

/// The `--rate` schedule: event `seq` is due at `start_ns + seq * interval_ns`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start_ns: u64,
    interval_ns: f64,
}

impl Schedule {
    fn due_ns(&self, seq: u32) -> u64 {
        self.start_ns + (f64::from(seq) * self.interval_ns) as u64
    }
}

/// When one event left and when it reached its last stream.
#[derive(Debug, Clone, Copy, Default)]
struct EventTiming {
    stamp_ns: u64,
    last_ns: u64,
    streams: u32,
}

/// Why a connection or stream ended, as counted in the report.
fn reason_of(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{} (os error {code})", io::Error::from_raw_os_error(code).kind()),
        None => e.kind().to_string(),
    }
}

/// Whether a failure to open a socket means the machine, not the server, is out of something; the
/// ramp then stops and says what to change.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM | libc::EAGAIN)
    )
}

fn read_sysctl(name: &str) -> String {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .map_or_else(|_| "?".into(), |v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// What to change when the system stops the ramp with `e`.
pub fn advice(e: &io::Error, limit: Option<FileLimit>, wanted: usize) -> String {
    let limits = limit.map_or_else(String::new, |l| format!(" (soft {}, hard {})", l.soft, l.hard));
    match e.raw_os_error() {
        Some(libc::EMFILE) => format!(
            "the bench is out of file descriptors{limits} for {wanted} connections (it keeps \
             {RESERVED_DESCRIPTORS} for itself): raise the hard \
             RLIMIT_NOFILE (systemd LimitNOFILE=, `ulimit -Hn` as root, nofile in \
             /etc/security/limits.conf); it cannot pass fs.nr_open = {}",
            read_sysctl("fs.nr_open")
        ),
        Some(libc::ENFILE) => format!(
            "the system-wide file table is full: raise fs.file-max (now {}; in use: {})",
            read_sysctl("fs.file-max"),
            read_sysctl("fs.file-nr")
        ),
        Some(libc::EADDRNOTAVAIL | libc::EAGAIN) => format!(
            "out of local ports: widen net.ipv4.ip_local_port_range (now {}), keep source spreading \
             on (no --no-spread; needs a 127/8 target), or wait for TIME_WAIT sockets to expire",
            read_sysctl("net.ipv4.ip_local_port_range")
        ),
        Some(libc::ENOBUFS | libc::ENOMEM) => format!(
            "the kernel is out of socket memory: see net.ipv4.tcp_mem (now {}) and free memory",
            read_sysctl("net.ipv4.tcp_mem")
        ),
        _ => format!("{e}"),
    }
}

struct Bench {
    config: LoadConfig,
    poll: Poll,
    subs: Vec<Sub>,
    stats: Stats,
    buf: Vec<u8>,
    /// The request line and headers for each target.
    requests: Vec<Vec<u8>>,
    /// Set when the system refused a socket: no more connections are opened.
    ramp_stopped: Option<String>,
    file_limit: Option<FileLimit>,
}

/// Runs a load test to the end (or to `--duration`) and returns what it measured.
pub fn run(config: LoadConfig) -> Result<Outcome, String> {
    let started = Instant::now();
    let deadline = started + config.duration;
    let file_limit = match sys::raise_file_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            eprintln!("ssed-bench: cannot read RLIMIT_NOFILE: {e}");
            None
        }
    };
    if let Some(limit) = file_limit {
        let needed = config.connections as u64 + RESERVED_DESCRIPTORS;
        if limit.soft < needed {
            eprintln!(
                "ssed-bench: warning: {} connections need about {needed} descriptors but the limit is {} \
                 (hard {}); the ramp will stop there. Raise the hard limit (LimitNOFILE=, ulimit -Hn, \
                 fs.nr_open = {})",
                config.connections,
                limit.soft,
                limit.hard,
                read_sysctl("fs.nr_open")
            );
        }
    }
    let server_pid = config.server_pid;
    let sample = |what: &str| -> Option<Sample> {
        let pid = server_pid?;
        match procfs::sample(pid) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("ssed-bench: cannot sample server pid {pid} ({what}): {e}");
                None
            }
        }
    };
    let mut outcome = Outcome {
        connections: config.connections,
        file_limit,
        server_before: sample("before"),
        ..Default::default()
    };

    let rate = match config.publish.as_ref().map(|p| p.pace) {
        Some(publish::Pace::Rate(rate)) => Some(rate),
        _ => None,
    };
    let mut bench = Bench::new(config, file_limit)?;
    let progress = bench.config.progress;
    let mut mio_events = Events::with_capacity(EVENTS_CAPACITY);
    let ramp_start = Instant::now();
    let mut next_progress = ramp_start + PROGRESS_EVERY;
    let mut phase = Phase::Ramping;
    let mut publisher: Option<(Arc<Progress>, mpsc::Receiver<PublishReport>)> = None;
    let mut first_publish_ns = 0;
    let mut bench_cpu_start = None;
    let mut bench_sched_start = None;

    loop {
        let now = Instant::now();
        if now >= deadline {
            outcome.timed_out = true;
            break;
        }
        if bench.config.stop.as_ref().is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            outcome.interrupted = true;
            break;
        }
        if let Some(live) = &bench.config.live {
            live.held.store(bench.stats.up, Ordering::Relaxed);
            live.deliveries.store(bench.stats.deliveries, Ordering::Relaxed);
            if let Some((shared, _)) = &publisher {
                live.accepted.store(u64::from(shared.ok.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
        }
        match phase {
            Phase::Ramping => {
                bench.open_due(now.duration_since(ramp_start));
                let all_opened = bench.subs.len() + bench.stats.open_failures >= bench.config.connections
                    || bench.ramp_stopped.is_some();
                if all_opened && bench.stats.pending == 0 {
                    outcome.ramp_secs = now.duration_since(ramp_start).as_secs_f64();
                    if progress {
                        eprintln!(
                            "[{:6.1}s] ramp done: {} streams up in {:.2} s, {} failed",
                            started.elapsed().as_secs_f64(),
                            bench.stats.up,
                            outcome.ramp_secs,
                            bench.stats.connect_errors.values().sum::<u64>()
                        );
                    }
                    phase = Phase::Settling { until: now + bench.config.settle };
                }
            }
            Phase::Settling { until } if now >= until => {
                outcome.server_idle = sample("idle");
                outcome.held_at_sample = bench.stats.up;
                let Some(publish_config) = bench.config.publish.clone() else { break };
                outcome.server_fanout_start = sample("fan-out start");
                bench_cpu_start = sys::thread_cpu_time().ok();
                bench_sched_start = procfs::this_thread_sched();
                let shared = Arc::new(Progress::default());
                let rx = publish::spawn(publish_config, shared.clone(), deadline)
                    .map_err(|e| format!("starting the publisher thread: {e}"))?;
                first_publish_ns = wall_nanos();
                publisher = Some((shared, rx));
                phase = Phase::Publishing;
            }
            Phase::Settling { .. } => {}
            Phase::Publishing => {
                let (shared, _) = publisher.as_ref().expect("set when publishing starts");
                if shared.done.load(Ordering::Acquire) {
                    phase = Phase::Draining { until: now + bench.config.drain };
                }
            }
            Phase::Draining { until } => {
                let (shared, _) = publisher.as_ref().expect("set when publishing starts");
                let accepted = u64::from(shared.ok.load(Ordering::Acquire));
                if bench.stats.distinct_up >= accepted * bench.stats.up as u64 || now >= until {
                    break;
                }
            }
        }
        if progress && now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            bench.print_progress(started, &phase, publisher.as_ref().map(|(p, _)| &**p));
        }

        let timeout = match phase {
            Phase::Ramping if bench.config.ramp > 0.0 => {
                let opened = bench.subs.len() + bench.stats.open_failures;
                let next = ramp_start + Duration::from_secs_f64(opened as f64 / bench.config.ramp);
                next.saturating_duration_since(now).min(TICK)
            }
            _ => TICK,
        };
        if let Err(e) = bench.poll.poll(&mut mio_events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting for events: {e}"));
        }
        if let (None, Some(rate), Some((shared, _))) = (bench.stats.schedule, rate, publisher.as_ref()) {
            // Read after the poll: every delivery in this batch was sent after the store.
            let start_ns = shared.schedule_start_ns.load(Ordering::Acquire);
            if start_ns != 0 {
                bench.stats.schedule = Some(Schedule { start_ns, interval_ns: 1e9 / rate });
            }
        }
        for event in mio_events.iter() {
            bench.handle_event(event.token().0, event.is_read_closed() || event.is_error());
        }
    }

    outcome.server_end = if publisher.is_some() { sample("end") } else { None };
    if let (Some(start), Ok(end)) = (bench_cpu_start, sys::thread_cpu_time()) {
        outcome.bench_cpu_secs = Some((end - start).as_secs_f64());
    }
    if let (Some((_, start)), Some((_, end))) = (bench_sched_start, procfs::this_thread_sched()) {
        outcome.bench_wait_secs = Some(end - start);
    }
    if let Some((shared, rx)) = publisher {
        shared.stop.store(true, Ordering::Release);
        match rx.recv_timeout(PUBLISHER_GRACE) {
            Ok(report) => outcome.publish = Some(report),
            Err(_) => eprintln!("ssed-bench: the publisher did not stop in time; its events are not counted"),
        }
    }
    bench.finish(&mut outcome, first_publish_ns);
    outcome.run_secs = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// The phases of a run.
enum Phase {
    Ramping,
    Settling { until: Instant },
    Publishing,
    Draining { until: Instant },
}

/// The target connection `n` goes to, of `targets`: round-robin, so N connections over K URLs
/// put N / K on each (the first N mod K one more), and one URL takes them all.
fn target_of(n: usize, targets: usize) -> usize {
    n % targets.max(1)
}

/// The request that opens a stream on `target`, with the `extra` header lines (CRLF-ended).
fn stream_request(target: &Target, extra: &str) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\
         {extra}User-Agent: ssed-bench/{}\r\n\r\n",
        target.path,
        target.host,
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

impl Bench {
    fn new(config: LoadConfig, file_limit: Option<FileLimit>) -> Result<Bench, String> {
        if config.targets.is_empty() {
            return Err("no URL to subscribe to".into());
        }
        let events = config.publish.as_ref().map_or(0, |p| p.events);
        Ok(Bench {
            subs: Vec::with_capacity(config.connections),
            stats: Stats {
                events,
                per_event: vec![EventTiming::default(); events as usize],
                ..Stats::default()
            },
            buf: vec![0; READ_BUFFER_BYTES],
            requests: {
                let extras: Vec<String> = if config.headers.is_empty() {
                    vec![String::new()]
                } else {
                    config.headers.iter().map(|h| format!("{}\r\n", h.trim_end())).collect()
                };
                config.targets.iter().flat_map(|t| extras.iter().map(move |e| stream_request(t, e))).collect()
            },
            ramp_stopped: None,
            file_limit,
            poll: Poll::new().map_err(|e| format!("creating the event loop: {e}"))?,
            config,
        })
    }

    /// The target of connection `n`.
    fn target(&self, n: usize) -> &Target {
        &self.config.targets[target_of(n, self.config.targets.len())]
    }

    /// Opens the connections the ramp schedule allows by `elapsed`, within the handshake cap.
    fn open_due(&mut self, elapsed: Duration) {
        let target = self.config.connections;
        let due = if self.config.ramp > 0.0 {
            ((elapsed.as_secs_f64() * self.config.ramp) as usize + 1).min(target)
        } else {
            target
        };
        // Stop short of the descriptor limit: the publisher, /proc and the advice itself need some.
        let budget =
            self.file_limit.map_or(usize::MAX, |l| l.soft.saturating_sub(RESERVED_DESCRIPTORS) as usize);
        while self.ramp_stopped.is_none()
            && self.subs.len() + self.stats.open_failures < due
            && self.stats.pending < self.config.max_pending
        {
            let result = if self.stats.pending + self.stats.up >= budget {
                Err(io::Error::from_raw_os_error(libc::EMFILE))
            } else {
                self.open()
            };
            if let Err(e) = result {
                if is_resource_error(&e) {
                    let message = advice(&e, self.file_limit, target);
                    eprintln!("ssed-bench: stopping the ramp at {} connections: {message}", self.subs.len());
                    self.ramp_stopped = Some(message);
                } else {
                    self.stats.open_failures += 1;
                    *self.stats.connect_errors.entry(format!("opening: {}", reason_of(&e))).or_default() += 1;
                }
            }
        }
    }

    /// The source address of connection `n`, when spreading.
    fn source(&self, n: usize) -> Option<IpAddr> {
        let IpAddr::V4(dest) = self.target(n).addr.ip() else { return None };
        if !self.config.spread || !dest.is_loopback() {
            return None;
        }
        let span = usize::from(SPREAD_LAST - SPREAD_FIRST) + 1;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, SPREAD_FIRST + (n % span) as u8)))
    }

    /// Starts one non-blocking connect and registers it.
    fn open(&mut self) -> io::Result<()> {
        let n = self.subs.len();
        let addr = self.target(n).addr;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        if let Some(source) = self.source(n) {
            sys::bind_address_no_port(&socket)?;
            socket.bind(&SocketAddr::new(source, 0).into())?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(&mut stream, Token(n), Interest::READABLE | Interest::WRITABLE)?;
        self.subs.push(Sub {
            stream: Some(stream),
            state: SubState::Connecting { sent: 0 },
            track: Track::default(),
        });
        self.stats.pending += 1;
        Ok(())
    }

    /// Handles readiness of connection `n`; `closing` when the event says the peer closed or failed.
    fn handle_event(&mut self, n: usize, closing: bool) {
        let Some(sub) = self.subs.get_mut(n) else { return };
        let Some(stream) = sub.stream.as_mut() else { return };
        if let SubState::Connecting { sent } = &mut sub.state {
            // Readiness may be spurious: an error, or no peer yet, settles it.
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.close(n, format!("connect: {}", reason_of(&e))),
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.close(n, format!("connect: {}", reason_of(&e))),
            }
            let groups = self.config.headers.len().max(1);
            let request = &self.requests[target_of(n, self.config.targets.len()) * groups + n % groups];
            while *sent < request.len() {
                match stream.write(&request[*sent..]) {
                    Ok(written) => *sent += written,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.close(n, format!("request: {}", reason_of(&e))),
                }
            }
            sub.state = SubState::Head(Vec::new());
        }
        self.read(n, closing);
    }

    /// Reads and feeds the head or the event parser, until `WouldBlock` or a short read.
    ///
    /// A read that did not fill the buffer took all there was, and epoll's edge-triggered mode
    /// reports every later arrival anew (tokio relies on the same), so the `WouldBlock` read that
    /// would confirm it is skipped: it would be half the bench's system calls per delivery. Only
    /// when the event flags a close or an error is the socket read to the end, to see it.
    fn read(&mut self, n: usize, to_the_end: bool) {
        loop {
            let sub = &mut self.subs[n];
            let Some(stream) = sub.stream.as_mut() else { return };
            let len = match stream.read(&mut self.buf) {
                Ok(0) => {
                    let reason = if matches!(sub.state, SubState::Streaming(_)) {
                        "closed by the server"
                    } else {
                        "closed before the head"
                    };
                    return self.close(n, reason.into());
                }
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(n, format!("read: {}", reason_of(&e))),
            };
            let now_ns = wall_nanos();
            if let Err(reason) = feed(sub, &self.buf[..len], now_ns, &mut self.stats) {
                return self.close(n, reason);
            }
            if len < self.buf.len() && !to_the_end {
                return;
            }
        }
    }

    /// Closes connection `n` and counts why.
    fn close(&mut self, n: usize, reason: String) {
        let sub = &mut self.subs[n];
        if let Some(mut stream) = sub.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        match std::mem::replace(&mut sub.state, SubState::Closed) {
            SubState::Connecting { .. } | SubState::Head(_) => {
                self.stats.pending -= 1;
                *self.stats.connect_errors.entry(reason).or_default() += 1;
            }
            SubState::Streaming(_) => {
                self.stats.up -= 1;
                self.stats.distinct_up -= u64::from(sub.track.distinct);
                *self.stats.ended.entry(reason).or_default() += 1;
            }
            SubState::Closed => {}
        }
    }

    fn print_progress(&self, started: Instant, phase: &Phase, publisher: Option<&Progress>) {
        let at = started.elapsed().as_secs_f64();
        let errors: u64 = self.stats.connect_errors.values().sum::<u64>();
        let ended: u64 = self.stats.ended.values().sum();
        match (phase, publisher) {
            (Phase::Publishing | Phase::Draining { .. }, Some(p)) => eprintln!(
                "[{at:6.1}s] fan-out: {} published ({} accepted), {} deliveries, {} streams up, {ended} ended",
                p.sent.load(Ordering::Relaxed),
                p.ok.load(Ordering::Relaxed),
                self.stats.deliveries,
                self.stats.up
            ),
            _ => eprintln!(
                "[{at:6.1}s] ramp: {}/{} up, {} connecting, {errors} failed, {ended} ended",
                self.stats.up, self.config.connections, self.stats.pending
            ),
        }
    }

    /// Fills in the outcome from the streams still up.
    fn finish(self, outcome: &mut Outcome, first_publish_ns: u64) {
        let stats = self.stats;
        let accepted: Vec<u64> = match &outcome.publish {
            Some(report) => {
                let mut mask = vec![0u64; report.accepted.len().div_ceil(64)];
                for (seq, _) in report.accepted.iter().enumerate().filter(|(_, &a)| a) {
                    mask[seq / 64] |= 1 << (seq % 64);
                }
                mask
            }
            None => Vec::new(),
        };
        let mut unexpected = stats.unexpected;
        outcome.held_per_target = vec![0; self.config.targets.len()];
        for (n, sub) in self.subs.iter().enumerate() {
            if !matches!(sub.state, SubState::Streaming(_)) {
                continue;
            }
            outcome.held_per_target[target_of(n, self.config.targets.len())] += 1;
            for (i, &want) in accepted.iter().enumerate() {
                let got = sub.track.seen.get(i).copied().unwrap_or(0);
                outcome.missing += u64::from((want & !got).count_ones());
                unexpected += u64::from((got & !want).count_ones());
            }
        }
        let first_sent = outcome.publish.as_ref().map_or(first_publish_ns, |p| p.first_sent_ns);
        if stats.last_delivery_ns > first_sent && first_sent > 0 {
            outcome.fanout_secs = (stats.last_delivery_ns - first_sent) as f64 / 1e9;
        }
        outcome.held = stats.up;
        if let Some(report) = &outcome.publish {
            for (timing, _) in stats.per_event.iter().zip(&report.accepted).filter(|(_, &a)| a) {
                if timing.streams as usize >= stats.up {
                    outcome.reach_all_ns.push(timing.last_ns.saturating_sub(timing.stamp_ns));
                } else {
                    outcome.reached_some += 1;
                }
            }
            outcome.reach_all_ns.sort_unstable();
        }
        outcome.connect_errors = stats.connect_errors;
        outcome.ended = stats.ended;
        outcome.ramp_stopped = self.ramp_stopped;
        outcome.deliveries = stats.deliveries;
        outcome.duplicates = stats.duplicates;
        outcome.out_of_order = stats.out_of_order;
        outcome.id_regressions = stats.id_regressions;
        outcome.foreign = stats.foreign;
        outcome.unexpected = unexpected;
        outcome.latency = stats.latency;
        outcome.schedule_latency = stats.schedule_latency;
    }
}

/// Feeds bytes read from one subscriber: the head first, then events.
fn feed(sub: &mut Sub, bytes: &[u8], now_ns: u64, stats: &mut Stats) -> Result<(), String> {
    let body = match &mut sub.state {
        SubState::Streaming(_) => bytes,
        SubState::Head(kept) => {
            let whole: &[u8] = if kept.is_empty() {
                bytes
            } else {
                kept.extend_from_slice(bytes);
                kept
            };
            let head = match parse_head(whole) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    if kept.is_empty() {
                        kept.extend_from_slice(bytes);
                    }
                    return Ok(());
                }
                Err(e) => return Err(format!("response: {e}")),
            };
            if head.status != 200 {
                return Err(format!("status {}", head.status));
            }
            let rest = whole[head.len..].to_vec();
            sub.state = SubState::Streaming(BodyParser::new(head.framing));
            stats.pending -= 1;
            stats.up += 1;
            return feed(sub, &rest, now_ns, stats);
        }
        SubState::Connecting { .. } | SubState::Closed => return Ok(()),
    };
    let SubState::Streaming(parser) = &mut sub.state else { unreachable!("matched above") };
    let track = &mut sub.track;
    let ended = parser
        .feed(body, &mut |event| deliver(track, stats, event, now_ns))
        .map_err(|e| format!("stream: {e}"))?;
    if ended {
        return Err("ended by the server".into());
    }
    Ok(())
}

/// Checks and times one delivered event.
fn deliver(track: &mut Track, stats: &mut Stats, event: Dispatch<'_>, now_ns: u64) {
    if let Some(id) = event.id {
        if track.last_id.is_some_and(|last| id <= last) {
            stats.id_regressions += 1;
        }
        track.last_id = Some(id);
    }
    let Some((stamp, seq)) = decode_body(event.data) else {
        stats.foreign += 1;
        return;
    };
    if seq >= stats.events {
        stats.unexpected += 1;
        return;
    }
    if track.seen.is_empty() {
        track.seen = vec![0; (stats.events as usize).div_ceil(64)];
    }
    let (word, bit) = (seq as usize / 64, 1u64 << (seq % 64));
    if track.seen[word] & bit != 0 {
        stats.duplicates += 1;
        return;
    }
    track.seen[word] |= bit;
    track.distinct += 1;
    stats.distinct_up += 1;
    stats.deliveries += 1;
    if seq < track.next_seq {
        stats.out_of_order += 1;
    } else {
        track.next_seq = seq + 1;
    }
    stats.latency.record(now_ns.saturating_sub(stamp));
    if let Some(schedule) = stats.schedule {
        stats.schedule_latency.record(now_ns.saturating_sub(schedule.due_ns(seq)));
    }
    stats.last_delivery_ns = stats.last_delivery_ns.max(now_ns);
    let timing = &mut stats.per_event[seq as usize];
    timing.stamp_ns = stamp;
    timing.last_ns = timing.last_ns.max(now_ns);
    timing.streams += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::encode_body;

    fn event(seq: u32, id: u64, stamp: u64) -> Vec<u8> {
        let mut body = Vec::new();
        encode_body(seq, stamp, 100, &mut body);
        let mut text = format!("id: {id}\ndata: ").into_bytes();
        text.extend_from_slice(&body);
        text.extend_from_slice(b"\n\n");
        text
    }

    #[test]
    fn target_of_is_round_robin() {
        let spread: Vec<usize> = (0..7).map(|n| target_of(n, 3)).collect();
        assert_eq!(spread, [0, 1, 2, 0, 1, 2, 0]);
        assert!((0..1000).all(|n| target_of(n, 1) == 0), "one URL takes every connection");
    }

    /// Seven connections over three listening URLs: 3, 2 and 2 arrive, each sending the request
    /// line and `Host` of its own URL.
    #[test]
    fn connections_spread_round_robin_over_the_urls() {
        use std::net::TcpListener;
        let listeners: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let targets: Vec<Target> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let url = format!("http://127.0.0.1:{}/events?topic=t{i}", l.local_addr().unwrap().port());
                crate::target::parse(&url, false).unwrap()
            })
            .collect();
        let config = LoadConfig {
            targets: targets.clone(),
            connections: 7,
            ramp: 0.0,
            max_pending: 100,
            spread: true,
            publish: None,
            server_pid: None,
            settle: Duration::ZERO,
            drain: Duration::ZERO,
            duration: Duration::from_secs(5),
            progress: false,
            headers: vec!["Authorization: Bearer a".into(), "Authorization: Bearer b".into()],
            stop: None,
            live: None,
        };
        let mut bench = Bench::new(config, None).unwrap();
        bench.open_due(Duration::ZERO);
        assert_eq!(bench.subs.len(), 7);
        let mut tokens = Vec::new();
        // Each connection writes its request once its connect has completed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (0..7).any(|n| matches!(bench.subs[n].state, SubState::Connecting { .. })) {
            assert!(Instant::now() < deadline, "requests not written");
            for n in 0..7 {
                bench.handle_event(n, false);
            }
        }
        for (i, (listener, target)) in listeners.iter().zip(&targets).enumerate() {
            listener.set_nonblocking(true).unwrap();
            let mut requests = Vec::new();
            while let Ok((mut conn, _)) = listener.accept() {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut text = Vec::new();
                let mut byte = [0u8; 1];
                while !text.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                    text.push(byte[0]);
                }
                requests.push(String::from_utf8(text).unwrap());
            }
            assert_eq!(requests.len(), if i == 0 { 3 } else { 2 }, "connections on URL {i}");
            for request in requests {
                assert!(request.starts_with(&format!("GET /events?topic=t{i} HTTP/1.1\r\n")), "{request}");
                assert!(request.contains(&format!("\r\nHost: {}\r\n", target.host)), "{request}");
                let token = request.split("Authorization: Bearer ").nth(1).map(|r| r[..1].to_string());
                tokens.push(token.unwrap_or_else(|| panic!("no header line in {request}")));
            }
        }
        // Connection n sends header line n mod 2: 0, 2, 4, 6 the first, 1, 3, 5 the second.
        tokens.sort();
        assert_eq!(tokens, ["a", "a", "a", "a", "b", "b", "b"]);
    }

    #[test]
    fn counts_duplicates_gaps_and_regressions() {
        let mut stats = Stats { events: 4, per_event: vec![EventTiming::default(); 4], ..Stats::default() };
        let mut track = Track::default();
        let mut parser = BodyParser::new(crate::sse::Framing::Close);
        let mut stream = Vec::new();
        for (seq, id) in [(0, 10), (2, 12), (2, 12), (1, 11), (9, 13)] {
            stream.extend(event(seq, id, 1_000));
        }
        stream.extend_from_slice(b"data: not ours\n\n");
        parser.feed(&stream, &mut |e| deliver(&mut track, &mut stats, e, 5_000)).unwrap();
        assert_eq!(stats.deliveries, 3);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.out_of_order, 1);
        assert_eq!(stats.id_regressions, 2); // the duplicate's 12, then 11
        assert_eq!(stats.unexpected, 1);
        assert_eq!(stats.foreign, 1);
        assert_eq!(track.distinct, 3);
        assert_eq!(track.seen[0], 0b111);
        assert_eq!(stats.latency.max(), 4_000);
        assert_eq!(stats.schedule_latency.len(), 0, "no --rate schedule, no schedule latency");
    }

    #[test]
    fn schedule_latency_counts_from_the_slot() {
        // 10 events/s from t = 1 s: event 3 is due at 1.3 s. It went out late, stamped 1.8 s (the
        // publisher was held back), and arrived at 1.9 s: 100 ms from its stamp, 600 ms from its slot.
        let mut stats = Stats { events: 4, per_event: vec![EventTiming::default(); 4], ..Stats::default() };
        stats.schedule = Some(Schedule { start_ns: 1_000_000_000, interval_ns: 1e8 });
        assert_eq!(stats.schedule.unwrap().due_ns(3), 1_300_000_000);
        let mut track = Track::default();
        let mut parser = BodyParser::new(crate::sse::Framing::Close);
        let mut stream = event(3, 1, 1_800_000_000);
        stream.extend(event(3, 2, 1_800_000_000)); // a duplicate is not timed again
        parser.feed(&stream, &mut |e| deliver(&mut track, &mut stats, e, 1_900_000_000)).unwrap();
        assert_eq!((stats.deliveries, stats.duplicates), (1, 1));
        assert_eq!(stats.latency.max(), 100_000_000);
        assert_eq!((stats.schedule_latency.len(), stats.schedule_latency.max()), (1, 600_000_000));
    }
}
