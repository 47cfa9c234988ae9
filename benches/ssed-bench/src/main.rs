//! `ssed-bench`: a load generator for ssed, or for any server speaking SSE over HTTP/1.1.
//!
//! It holds `--connections` event streams open from one mio loop on one thread, publishes stamped
//! events from a second thread, and reports what the server's memory and CPU paid for them, how
//! long each delivery took, and whether any event went missing or arrived twice. `ssed-bench floor`
//! measures the bare cost of the writes a fan-out needs, with no server at all. `ssed-bench sweep`
//! runs both against several servers at several connection counts and draws the report.
//!
//! Safety: it only connects to the URLs it is given, and only on loopback unless `--allow-remote`;
//! every run stops by itself after `--duration`.
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod charts;
mod floor;
mod histogram;
mod html;
mod load;
mod procfs;
mod progress;
mod publish;
mod report;
mod servers;
mod sse;
mod summary;
mod sweep;
mod sys;
mod target;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floor::{FloorConfig, ReaderMode};
use load::LoadConfig;
use publish::{Pace, PublishConfig, MIN_BODY_BYTES};

/// The wall clock in nanoseconds since the Unix epoch: publisher and subscribers read the same
/// clock, so a delivery's latency is one subtraction.
pub fn wall_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// One flag of the help text: name, value placeholder, default, meaning.
struct Flag {
    name: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
}

const fn flag(name: &'static str, value: &'static str, default: &'static str, help: &'static str) -> Flag {
    Flag { name, value, default, help }
}

const LOAD_FLAGS: &[Flag] = &[
    flag("url", "URL", "required", "event stream to subscribe to (http://HOST:PORT/PATH?QUERY); repeat it to spread the connections round-robin over several"),
    flag("connections", "N", "1000", "streams to hold open"),
    flag("ramp", "RATE", "5000", "new connections per second; 0 = as fast as handshakes allow"),
    flag("max-pending", "N", "1000", "handshakes in flight at most"),
    flag("no-spread", "", "", "connect from the kernel's choice of address, not 127.0.0.2-254"),
    flag("publish-url", "URL", "none", "where to POST the events, once every stream is up"),
    flag("events", "M", "10", "events to publish"),
    flag("rate", "R", "10", "events per second"),
    flag("burst", "", "", "publish back to back, each request once the previous is answered"),
    flag("pipeline", "", "", "publish by writing every request at once (HTTP/1.1 pipelining)"),
    flag("body-size", "BYTES", "100", "bytes per event body (at least 31: stamp, sequence, padding)"),
    flag("server-pid", "PID", "none", "server process to sample (VmRSS, utime, stime; children included)"),
    flag("settle", "SECS", "2", "wait after the last connection before sampling memory"),
    flag("drain", "SECS", "10", "wait after the last publish for late deliveries"),
    flag("duration", "SECS", "60", "stop after this long whatever happens"),
    flag("header-file", "FILE", "none", "extra header lines for the streams: connection n sends line n mod L (e.g. one JWT per group)"),
    flag("publish-header", "LINE", "none", "an extra header line for each publish (e.g. Authorization: Bearer ...); repeatable"),
    flag("publish-form", "TOPIC", "none", "publish Mercure hub forms (topic=TOPIC&data=...) to --publish-url instead of raw bodies"),
    flag("private-every", "N", "0", "with --publish-form: every Nth event is private (0: none)"),
    flag("allow-remote", "", "", "allow a URL outside 127.0.0.0/8 and ::1"),
    flag("json", "", "", "print one JSON line on stdout (the table goes to stderr)"),
    flag("quiet", "", "", "no progress lines"),
];

const FLOOR_FLAGS: &[Flag] = &[
    flag("connections", "N", "1000", "loopback connections to write to"),
    flag("writes-per-syscall", "K", "1", "events per writev (1: one write per event)"),
    flag("rounds", "R", "10", "timed walks over all connections"),
    flag("size", "BYTES", "100", "bytes per event"),
    flag("writer-cpu", "CPU", "none", "pin the writing thread to this CPU"),
    flag("reader-cpu", "CPU", "none", "pin the reader to this CPU"),
    flag("reader", "MODE", "auto", "thread, process, or auto (a thread if 2N descriptors fit)"),
    flag("no-spread", "", "", "connect from 127.0.0.1 only, not 127.0.0.2-254"),
    flag("json", "", "", "print one JSON line"),
];

fn flag_lines(flags: &[Flag]) -> String {
    let mut text = String::new();
    for f in flags {
        let left = format!("  --{} {}", f.name, f.value);
        let default = if f.default.is_empty() { String::new() } else { format!(" [default: {}]", f.default) };
        text.push_str(&format!("{left:<28}{}{default}\n", f.help));
    }
    text
}

fn help() -> String {
    format!(
        "ssed-bench: load generator for Server-Sent Events servers\n\n\
         Usage: ssed-bench --url URL [--url URL...] [OPTIONS]\n       \
         ssed-bench floor [--connections N] [OPTIONS]\n       \
         ssed-bench sweep --server NAME=COMMAND [--server NAME=URL...] [OPTIONS]\n\n\
         Holds N event streams, optionally publishes stamped events, and reports the server's memory per\n\
         subscriber, delivery latency, missing or duplicated events and the server's CPU per delivery.\n\
         Loopback only unless --allow-remote. Exit status: 0 clean, 1 an event went missing, came twice\n\
         or out of order, 2 a usage or setup error, 3 the run was cut short by --duration, 4 fewer\n\
         streams were held than asked for.\n\nOptions:\n{}\n\
         floor: times writing to N loopback sockets with no server: the floor every server is measured\n\
         against.\n\nfloor options:\n{}\n{}\n  -h, --help                print this help\n  -V, --version             print the version\n",
        flag_lines(LOAD_FLAGS),
        flag_lines(FLOOR_FLAGS),
        sweep::SWEEP_HELP
    )
}

/// What the command line asked for.
enum Command {
    Load { config: Box<LoadConfig>, json: bool },
    Floor { config: FloorConfig, json: bool },
    FloorReader { connections: usize, cpu: Option<usize> },
    Sweep(Box<sweep::SweepConfig>),
    Help,
    Version,
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("--{name}: {text:?} is not a valid number"))
}

fn value(parser: &mut lexopt::Parser, name: &str) -> Result<String, String> {
    parser.value().map_err(|e| e.to_string())?.into_string().map_err(|_| format!("--{name}: not UTF-8"))
}

fn seconds(name: &str, text: &str) -> Result<Duration, String> {
    let secs: f64 = number(name, text)?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("--{name}: {text:?} is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The raw flags of a load run, before validation.
struct LoadFlags {
    /// Every `--url`, in order.
    urls: Vec<String>,
    connections: usize,
    ramp: f64,
    max_pending: usize,
    spread: bool,
    publish_url: Option<String>,
    events: u32,
    rate: Option<f64>,
    burst: bool,
    pipeline: bool,
    body_size: usize,
    server_pid: Option<u32>,
    settle: Duration,
    drain: Duration,
    duration: Duration,
    allow_remote: bool,
    json: bool,
    quiet: bool,
    header_file: Option<String>,
    publish_headers: Vec<String>,
    publish_form: Option<String>,
    private_every: u32,
}

impl Default for LoadFlags {
    fn default() -> Self {
        LoadFlags {
            urls: Vec::new(),
            connections: 1000,
            ramp: 5000.0,
            max_pending: 1000,
            spread: true,
            publish_url: None,
            events: 10,
            rate: None,
            burst: false,
            pipeline: false,
            body_size: 100,
            server_pid: None,
            settle: Duration::from_secs(2),
            drain: Duration::from_secs(10),
            duration: Duration::from_secs(60),
            allow_remote: false,
            json: false,
            quiet: false,
            header_file: None,
            publish_headers: Vec::new(),
            publish_form: None,
            private_every: 0,
        }
    }
}

/// Most events one run publishes (each takes a few bytes of timing in the bench).
pub(crate) const MAX_EVENTS: u32 = 1_000_000;
/// Most bits the per-stream bitsets of received events may take together.
pub(crate) const MAX_TRACKING_BITS: u64 = 1 << 31;

impl LoadFlags {
    fn validate(self) -> Result<Command, String> {
        if self.urls.is_empty() {
            return Err("--url is required (see --help)".into());
        }
        let targets = self
            .urls
            .iter()
            .map(|url| target::parse(url, self.allow_remote))
            .collect::<Result<Vec<_>, _>>()?;
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if !(self.ramp.is_finite() && self.ramp >= 0.0) {
            return Err("--ramp must be 0 or a positive rate".into());
        }
        if self.max_pending == 0 {
            return Err("--max-pending must be at least 1".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        let publish = match self.publish_url {
            None => {
                if self.burst || self.pipeline || self.rate.is_some() {
                    return Err("--burst, --pipeline and --rate need --publish-url".into());
                }
                None
            }
            Some(publish_url) => {
                let target = target::parse(&publish_url, self.allow_remote)?;
                let pace = match (self.burst, self.pipeline, self.rate) {
                    (false, false, rate) => {
                        let rate = rate.unwrap_or(10.0);
                        if !(rate.is_finite() && rate > 0.0) {
                            return Err("--rate must be above 0".into());
                        }
                        Pace::Rate(rate)
                    }
                    (true, false, None) => Pace::Burst,
                    (false, true, None) | (true, true, None) => Pace::Pipeline,
                    (_, _, Some(_)) => return Err("--rate cannot go with --burst or --pipeline".into()),
                };
                if !(1..=MAX_EVENTS).contains(&self.events) {
                    return Err(format!("--events must be 1 to {MAX_EVENTS}"));
                }
                if !(MIN_BODY_BYTES..=1 << 20).contains(&self.body_size) {
                    return Err(format!("--body-size must be {MIN_BODY_BYTES} to 1048576"));
                }
                if u64::from(self.events) * self.connections as u64 > MAX_TRACKING_BITS {
                    return Err(format!(
                        "--events x --connections over {MAX_TRACKING_BITS}: the per-stream record of \
                         received events would take more than 256 MiB"
                    ));
                }
                Some(PublishConfig {
                    target,
                    events: self.events,
                    pace,
                    body_size: self.body_size,
                    headers: self.publish_headers.clone(),
                    form_topic: self.publish_form.clone(),
                    private_every: self.private_every,
                })
            }
        };
        let config = LoadConfig {
            targets,
            connections: self.connections,
            ramp: self.ramp,
            max_pending: self.max_pending,
            spread: self.spread,
            publish,
            server_pid: self.server_pid,
            settle: self.settle,
            drain: self.drain,
            duration: self.duration,
            progress: !self.quiet,
            headers: match &self.header_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("--header-file {path}: {e}"))?
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .collect(),
                None => Vec::new(),
            },
            stop: None,
            live: None,
        };
        Ok(Command::Load { config: Box::new(config), json: self.json })
    }
}

fn parse_load(mut parser: lexopt::Parser) -> Result<Command, String> {
    use lexopt::Arg::{Long, Short};
    let mut flags = LoadFlags::default();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("url") => flags.urls.push(value(&mut parser, "url")?),
            Long("connections") => {
                flags.connections = number("connections", &value(&mut parser, "connections")?)?
            }
            Long("ramp") => flags.ramp = number("ramp", &value(&mut parser, "ramp")?)?,
            Long("max-pending") => {
                flags.max_pending = number("max-pending", &value(&mut parser, "max-pending")?)?
            }
            Long("no-spread") => flags.spread = false,
            Long("publish-url") => flags.publish_url = Some(value(&mut parser, "publish-url")?),
            Long("events") => flags.events = number("events", &value(&mut parser, "events")?)?,
            Long("rate") => flags.rate = Some(number("rate", &value(&mut parser, "rate")?)?),
            Long("burst") => flags.burst = true,
            Long("pipeline") => flags.pipeline = true,
            Long("body-size") => flags.body_size = number("body-size", &value(&mut parser, "body-size")?)?,
            Long("server-pid") => {
                flags.server_pid = Some(number("server-pid", &value(&mut parser, "server-pid")?)?)
            }
            Long("settle") => flags.settle = seconds("settle", &value(&mut parser, "settle")?)?,
            Long("drain") => flags.drain = seconds("drain", &value(&mut parser, "drain")?)?,
            Long("duration") => flags.duration = seconds("duration", &value(&mut parser, "duration")?)?,
            Long("allow-remote") => flags.allow_remote = true,
            Long("json") => flags.json = true,
            Long("quiet") => flags.quiet = true,
            Long("header-file") => flags.header_file = Some(value(&mut parser, "header-file")?),
            Long("publish-header") => flags.publish_headers.push(value(&mut parser, "publish-header")?),
            Long("publish-form") => flags.publish_form = Some(value(&mut parser, "publish-form")?),
            Long("private-every") => {
                flags.private_every = number("private-every", &value(&mut parser, "private-every")?)?
            }
            Long(name) => return Err(format!("unknown option --{name} (see --help)")),
            other => return Err(other.unexpected().to_string()),
        }
    }
    flags.validate()
}

fn parse_floor(mut parser: lexopt::Parser, as_reader: bool) -> Result<Command, String> {
    use lexopt::Arg::{Long, Short};
    let mut config = FloorConfig {
        connections: 1000,
        writes_per_syscall: 1,
        rounds: 10,
        size: 100,
        writer_cpu: None,
        reader_cpu: None,
        mode: ReaderMode::Auto,
        spread: true,
    };
    let mut json = false;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("connections") => {
                config.connections = number("connections", &value(&mut parser, "connections")?)?
            }
            Long("writes-per-syscall") => {
                config.writes_per_syscall =
                    number("writes-per-syscall", &value(&mut parser, "writes-per-syscall")?)?
            }
            Long("rounds") => config.rounds = number("rounds", &value(&mut parser, "rounds")?)?,
            Long("size") => config.size = number("size", &value(&mut parser, "size")?)?,
            Long("writer-cpu") => {
                config.writer_cpu = Some(number("writer-cpu", &value(&mut parser, "writer-cpu")?)?)
            }
            Long("reader-cpu") => {
                config.reader_cpu = Some(number("reader-cpu", &value(&mut parser, "reader-cpu")?)?)
            }
            Long("reader") => {
                config.mode = match value(&mut parser, "reader")?.as_str() {
                    "auto" => ReaderMode::Auto,
                    "thread" => ReaderMode::Thread,
                    "process" => ReaderMode::Process,
                    other => return Err(format!("--reader: {other:?} is not thread, process or auto")),
                }
            }
            Long("no-spread") => config.spread = false,
            Long("json") => json = true,
            Long(name) => return Err(format!("unknown floor option --{name} (see --help)")),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if config.connections == 0 || config.rounds == 0 || config.size == 0 {
        return Err("--connections, --rounds and --size must be at least 1".into());
    }
    if !(1..=1024).contains(&config.writes_per_syscall) {
        return Err("--writes-per-syscall must be 1 to 1024 (IOV_MAX)".into());
    }
    if as_reader {
        return Ok(Command::FloorReader { connections: config.connections, cpu: config.reader_cpu });
    }
    Ok(Command::Floor { config, json })
}

fn parse_args() -> Result<Command, String> {
    let mut parser = lexopt::Parser::from_env();
    // A subcommand comes first, if any.
    let mut peek = lexopt::Parser::from_env();
    match peek.next().map_err(|e| e.to_string())? {
        Some(lexopt::Arg::Value(sub)) => {
            let _ = parser.next();
            match sub.to_str() {
                Some("floor") => parse_floor(parser, false),
                Some("floor-reader") => parse_floor(parser, true),
                Some("sweep") => {
                    // The raw arguments after `sweep`, with any --config file's flags spliced in.
                    let raw: Vec<String> = parser
                        .raw_args()
                        .map_err(|e| e.to_string())?
                        .map(|a| a.into_string().map_err(|_| "sweep: an argument is not UTF-8".to_string()))
                        .collect::<Result<_, _>>()?;
                    let expanded = sweep::expand_config(raw.clone())?;
                    // The report quotes the command as typed and, for a --config, the flags it meant.
                    let mut command_line = sweep::quote_command(std::env::args());
                    if expanded != raw {
                        let program = std::env::args().next().unwrap_or_else(|| "ssed-bench".into());
                        let flags = sweep::quote_command(
                            [program, "sweep".into()].into_iter().chain(expanded.clone()),
                        );
                        command_line
                            .push_str(&format!("\n# with the --config file's flags spliced in:\n{flags}"));
                    }
                    let parser = lexopt::Parser::from_args(expanded);
                    let config = sweep::parse(parser, command_line)?;
                    Ok(config.map_or(Command::Help, |c| Command::Sweep(Box::new(c))))
                }
                _ => Err(format!("unknown subcommand {sub:?} (see --help)")),
            }
        }
        _ => parse_load(parser),
    }
}

/// Whether the run saw what must never happen: an event doubled or reordered on a held stream, or
/// lost (events still in flight when `--duration` cut the run short are not counted as lost).
fn found_faults(o: &load::Outcome) -> bool {
    let missing = if o.timed_out { 0 } else { o.missing };
    missing + o.duplicates + o.out_of_order + o.id_regressions + o.unexpected > 0
}

fn run() -> Result<ExitCode, String> {
    match parse_args()? {
        Command::Help => print!("{}", help()),
        Command::Version => println!("ssed-bench {}", env!("CARGO_PKG_VERSION")),
        Command::FloorReader { connections, cpu } => floor::run_reader_process(connections, cpu)?,
        Command::Sweep(config) => return Ok(ExitCode::from(sweep::run(*config)?)),
        Command::Floor { config, json } => {
            let outcome = floor::run(config)?;
            if json {
                println!("{}", outcome.json());
            } else {
                print!("{}", outcome.table());
            }
        }
        Command::Load { config, json } => {
            let urls: Vec<String> = config.targets.iter().map(|t| t.url.clone()).collect();
            let outcome = load::run(*config)?;
            if json {
                eprint!("{}", report::table(&urls, &outcome));
                println!("{}", report::json(&urls, &outcome));
            } else {
                print!("{}", report::table(&urls, &outcome));
            }
            if found_faults(&outcome) {
                return Ok(ExitCode::from(1));
            }
            if outcome.timed_out {
                return Ok(ExitCode::from(3));
            }
            if outcome.held < outcome.connections {
                return Ok(ExitCode::from(4));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("ssed-bench: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_config(args: &[&str]) -> Result<LoadConfig, String> {
        match parse_load(lexopt::Parser::from_args(args.iter().copied()))? {
            Command::Load { config, .. } => Ok(*config),
            _ => Err("not a load run".into()),
        }
    }

    #[test]
    fn url_may_repeat() {
        let one = load_config(&["--url", "http://127.0.0.1:1/events?topic=a"]).unwrap();
        assert_eq!(one.targets.len(), 1);
        assert_eq!(one.targets[0].path, "/events?topic=a");
        let three = load_config(&[
            "--url",
            "http://127.0.0.1:1/a",
            "--connections",
            "9",
            "--url",
            "http://127.0.0.1:2/b",
            "--url",
            "http://127.0.0.1:3/c",
        ])
        .unwrap();
        let ports: Vec<u16> = three.targets.iter().map(|t| t.addr.port()).collect();
        assert_eq!(ports, [1, 2, 3], "in the order given");
        assert!(load_config(&[]).unwrap_err().contains("--url is required"));
        let remote = load_config(&["--url", "http://127.0.0.1:1/", "--url", "http://192.0.2.1/"]);
        assert!(remote.unwrap_err().contains("--allow-remote"), "every URL is checked");
    }
}
