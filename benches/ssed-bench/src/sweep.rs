//! `ssed-bench sweep`: every server at every connection count, for every publish pattern and
//! repetition, in one process; then a Markdown table of medians and a self-contained HTML report
//! with charts (see [`crate::summary`], [`crate::charts`], [`crate::html`]).
//!
//! The runs are interleaved: repetition 1 of every point and server, then repetition 2, …; within a
//! point, the servers run one after the other. A noisy stretch of the machine then hits every
//! server alike. Each run gets a freshly started server (for a command) on a free port, and the
//! bare-write floor is measured at every connection count of every repetition.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::floor::{self, FloorConfig, ReaderMode};
use crate::load::{self, Live, LoadConfig};
use crate::progress::ProgressDisplay;
use crate::publish::{Pace, PublishConfig, MIN_BODY_BYTES};
use crate::report::{self, Json, Metrics};
use crate::servers::{self, Launch, ServerSpec};
use crate::summary::Summary;
use crate::{charts, html, sys, target};

/// How events are published in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// `--rate` events per second on a fixed schedule.
    Paced,
    /// Back to back, each request once the previous is answered.
    Burst,
    /// Every request written at once (HTTP/1.1 pipelining).
    Pipelined,
}

impl Pattern {
    /// Its name on the command line and in the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Paced => "paced",
            Pattern::Burst => "burst",
            Pattern::Pipelined => "pipelined",
        }
    }

    fn parse(text: &str) -> Result<Pattern, String> {
        match text.trim() {
            "paced" => Ok(Pattern::Paced),
            "burst" => Ok(Pattern::Burst),
            "pipelined" | "pipeline" => Ok(Pattern::Pipelined),
            other => Err(format!("--patterns: {other:?} is not paced, burst or pipelined")),
        }
    }
}

/// A validated sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The servers, in the order given (their colours follow it).
    pub servers: Vec<ServerSpec>,
    /// Connection counts, ascending.
    pub connections: Vec<usize>,
    /// Publish patterns.
    pub patterns: Vec<Pattern>,
    /// Events per run.
    pub events: u32,
    /// Events per second when paced.
    pub rate: f64,
    /// Bytes per event body (and per floor write).
    pub body_size: usize,
    /// Repetitions of every run.
    pub reps: usize,
    /// Measure the bare-write floor at every connection count.
    pub floor: bool,
    /// Where the HTML report goes; the Markdown table and the JSON lines go beside it (`.md`,
    /// `.jsonl`).
    pub report: Option<PathBuf>,
    /// Also write each chart as an SVG file here.
    pub svg_dir: Option<PathBuf>,
    /// The CPU the bench runs on.
    pub bench_cpu: Option<usize>,
    /// The CPU started servers (and the floor's writer) run on.
    pub server_cpu: Option<usize>,
    /// New connections per second.
    pub ramp: f64,
    /// Pause between the last connection and the memory sample.
    pub settle: Duration,
    /// Wait for late deliveries after the last publish.
    pub drain: Duration,
    /// How long a started server may take to listen.
    pub start_wait: Duration,
    /// Show progress on stderr.
    pub progress: bool,
    /// The command line, quoted, for the report.
    pub command_line: String,
}

/// What one run gave.
#[derive(Debug, Clone)]
pub enum Measured {
    /// A load run's figures.
    Load(Metrics),
    /// A floor run: writer CPU µs per write, and the median walk over every connection in ms.
    Floor {
        /// CPU µs per `write`.
        cpu_us_per_write: f64,
        /// Wall time of one walk over all connections, ms.
        walk_ms: f64,
    },
    /// The server did not come up: why.
    StartFailed(String),
    /// The bench itself could not run this point: why.
    RunFailed(String),
}

/// One run of the sweep.
#[derive(Debug, Clone)]
pub struct Record {
    /// The server's name, or `floor`.
    pub server: String,
    /// The pattern (none for the floor).
    pub pattern: Option<Pattern>,
    /// Connections asked for.
    pub connections: usize,
    /// Repetition, from 1.
    pub rep: usize,
    /// What came of it.
    pub measured: Measured,
}

/// The machine the sweep ran on, for the report.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// The running kernel's release.
    pub kernel: String,
    /// RLIMIT_NOFILE after raising the soft limit: soft, hard.
    pub nofile: Option<(u64, u64)>,
    /// When the sweep started, UTC.
    pub started: String,
}

impl Machine {
    /// Reads what /proc and getrlimit say.
    pub fn here() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown CPU")
            .to_string();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("?".into(), |k| k.trim().to_string()),
            nofile: sys::raise_file_limit().ok().map(|l| (l.soft, l.hard)),
            started: utc_now(),
        }
    }
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC` (days to civil date: Howard Hinnant's algorithm).
pub fn utc_now() -> String {
    let secs = (crate::wall_nanos() / 1_000_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `args` as one shell line, each argument quoted when it needs to be.
pub fn quote_command(args: impl IntoIterator<Item = String>) -> String {
    let quoted: Vec<String> = args
        .into_iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:=,@%+".contains(c)) {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

/// One sweep flag for the help text.
pub const SWEEP_HELP: &str = "\
sweep: every server at every connection count, publish pattern and repetition, interleaved; prints
one JSON line per run, then a Markdown table of medians [ranges]; --report also writes an HTML report
with SVG charts (no network, no script), the table (.md) and the JSON lines (.jsonl) beside it.

sweep options:
  --server NAME=COMMAND       a server to start for every run, on a free port given as {port}; also
                              {dir} (a fresh scratch directory) and {nofile} (the hard descriptor
                              limit). Through sh -c when the command needs a shell. Repeat per server.
  --server NAME=URL           a server already running at URL (not started or stopped)
  --server-pid NAME=PID       the process of a running server, to sample its memory and CPU
  --url NAME=URL              stream to subscribe to [default: http://127.0.0.1:{port}/events?topic=bench]
  --publish-url NAME=URL      where to POST events [default: the stream's URL]
  --connections N,N,...       connection counts [default: 1000,5000,10000]
  --patterns P,P              paced, burst, pipelined [default: paced,burst]
  --events M                  events per run [default: 200]
  --rate R                    events per second when paced [default: 5]
  --body-size BYTES           bytes per event [default: 100]
  --reps K                    repetitions [default: 3]
  --no-floor                  skip the bare-write floor rows
  --report FILE.html          write the HTML report (and FILE.md, FILE.jsonl)
  --svg-dir DIR               also write each chart as DIR/NAME.svg
  --bench-cpu CPU             pin the bench here [default: 0 on 2+ CPUs]
  --server-cpu CPU            pin started servers and the floor's writer here [default: 1 on 2+ CPUs]
  --no-pin                    pin nothing
  --ramp RATE                 new connections per second [default: 5000]
  --settle SECS               wait before sampling idle memory [default: 2]
  --drain SECS                wait for late deliveries [default: 10]
  --start-wait SECS           how long a started server may take to answer HTTP [default: 10]
  --quiet                     no progress display
  --config FILE.toml          the flags from a file: keys named like the flags (body_size for
                              --body-size; floor = false, pin = false, quiet = true), lists for the
                              lists, and each server as [[server]] with name and command, or url
                              and pid, and optionally url and publish_url
Exit status: 0 done, 1 a delivery was lost, doubled or reordered, or a server failed to start,
2 a usage error, 130 interrupted (Ctrl-C; the report holds what was measured).
";

/// The keys of a sweep file that take a value, each the flag of the same name (`_` for `-`).
const CONFIG_VALUE_KEYS: &[&str] = &[
    "connections",
    "patterns",
    "events",
    "rate",
    "body_size",
    "reps",
    "report",
    "svg_dir",
    "bench_cpu",
    "server_cpu",
    "ramp",
    "settle",
    "drain",
    "start_wait",
];

/// A TOML value as a flag's value: numbers and strings as written, arrays joined by commas.
fn config_value(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| config_value(key, v)).collect::<Result<_, _>>()?;
            Ok(items.join(","))
        }
        other => Err(format!("{key}: {} is not a number, a string or a list", other.type_str())),
    }
}

/// The flags a sweep file stands for, in the order written; flags given after `--config` on the
/// command line come later, so they win. `text` is the file's content, `path` its name for messages.
///
/// ```toml
/// connections = [1000, 5000, 10000]
/// patterns = ["paced", "burst"]
/// events = 200
/// rate = 5
/// reps = 3
/// report = "density.html"
///
/// [[server]]
/// name = "ssed"
/// command = "target/release/ssed --listen 127.0.0.1:{port} --heartbeat 0"
///
/// [[server]]
/// name = "any"
/// url = "http://127.0.0.1:9000/stream"
/// pid = 4242
/// ```
pub fn config_flags(path: &str, text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("{path}: {e}"))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let key = key.as_str();
        match (key, value) {
            ("server", toml::Value::Array(servers)) => {
                for server in servers {
                    flags.extend(server_flags(path, server)?);
                }
            }
            ("floor", toml::Value::Boolean(on)) => flags.extend((!on).then(|| "--no-floor".to_string())),
            ("pin", toml::Value::Boolean(on)) => flags.extend((!on).then(|| "--no-pin".to_string())),
            ("quiet", toml::Value::Boolean(on)) => flags.extend(on.then(|| "--quiet".to_string())),
            (key, value) if CONFIG_VALUE_KEYS.contains(&key) => {
                flags.push(format!("--{}", key.replace('_', "-")));
                flags.push(config_value(key, value).map_err(|e| format!("{path}: {e}"))?);
            }
            (key, _) => {
                return Err(format!(
                    "{path}: unknown key {key:?} (known: [[server]], floor, pin, quiet, {})",
                    CONFIG_VALUE_KEYS.join(", ")
                ))
            }
        }
    }
    Ok(flags)
}

/// The flags of one `[[server]]`: `name` and `command` (started) or `url` (running, with `pid`).
fn server_flags(path: &str, server: &toml::Value) -> Result<Vec<String>, String> {
    let table = server.as_table().ok_or_else(|| format!("{path}: server must be a [[server]] table"))?;
    let text = |key: &str| -> Result<Option<String>, String> {
        table.get(key).map(|v| config_value(key, v).map_err(|e| format!("{path}: server {e}"))).transpose()
    };
    for key in table.keys() {
        if !["name", "command", "url", "publish_url", "pid"].contains(&key.as_str()) {
            return Err(format!("{path}: unknown server key {key:?} (name, command, url, publish_url, pid)"));
        }
    }
    let name = text("name")?.ok_or_else(|| format!("{path}: a [[server]] without a name"))?;
    let mut flags = Vec::new();
    match (text("command")?, text("url")?) {
        (Some(command), url) => {
            flags.extend(["--server".to_string(), format!("{name}={command}")]);
            if let Some(url) = url {
                flags.extend(["--url".to_string(), format!("{name}={url}")]);
            }
        }
        (None, Some(url)) => flags.extend(["--server".to_string(), format!("{name}={url}")]),
        (None, None) => return Err(format!("{path}: server {name} needs a command or a url")),
    }
    if let Some(publish) = text("publish_url")? {
        flags.extend(["--publish-url".to_string(), format!("{name}={publish}")]);
    }
    if let Some(pid) = text("pid")? {
        flags.extend(["--server-pid".to_string(), format!("{name}={pid}")]);
    }
    Ok(flags)
}

/// The sweep's arguments with every `--config FILE` replaced by the flags the file stands for.
pub fn expand_config(args: Vec<String>) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let path = match arg.strip_prefix("--config") {
            Some("") => args.next().ok_or("--config: a file is needed")?,
            Some(rest) if rest.starts_with('=') => rest[1..].to_string(),
            _ => {
                out.push(arg);
                continue;
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("--config {path}: {e}"))?;
        out.extend(config_flags(&path, &text)?);
    }
    Ok(out)
}

fn parse_named<'a>(flag: &str, text: &'a str) -> Result<(&'a str, &'a str), String> {
    text.split_once('=').ok_or_else(|| format!("--{flag}: expected NAME=VALUE, got {text:?}"))
}

fn list<T>(flag: &str, text: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<T> =
        text.split(',').filter(|s| !s.trim().is_empty()).map(parse).collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Err(format!("--{flag}: empty list"));
    }
    Ok(items)
}

/// Parses the sweep's flags; `command_line` is what the report quotes.
pub fn parse(mut parser: lexopt::Parser, command_line: String) -> Result<Option<SweepConfig>, String> {
    use lexopt::Arg::{Long, Short};
    use lexopt::ValueExt;
    let value = |parser: &mut lexopt::Parser, name: &str| -> Result<String, String> {
        parser.value().map_err(|e| e.to_string())?.string().map_err(|_| format!("--{name}: not UTF-8"))
    };
    let number = |name: &str, text: &str| -> Result<f64, String> {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("--{name}: {text:?} is not a valid number"))
    };
    let whole = |name: &str, text: &str| -> Result<usize, String> {
        text.trim().parse::<usize>().map_err(|_| format!("--{name}: {text:?} is not a whole number"))
    };
    let mut servers: Vec<ServerSpec> = Vec::new();
    let mut urls: Vec<(String, String)> = Vec::new();
    let mut publish_urls: Vec<(String, String)> = Vec::new();
    let mut pids: Vec<(String, u32)> = Vec::new();
    let two_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut config = SweepConfig {
        servers: Vec::new(),
        connections: vec![1000, 5000, 10_000],
        patterns: vec![Pattern::Paced, Pattern::Burst],
        events: 200,
        rate: 5.0,
        body_size: 100,
        reps: 3,
        floor: true,
        report: None,
        svg_dir: None,
        bench_cpu: two_cpus.then_some(0),
        server_cpu: two_cpus.then_some(1),
        ramp: 5000.0,
        settle: Duration::from_secs(2),
        drain: Duration::from_secs(10),
        start_wait: Duration::from_secs(10),
        progress: true,
        command_line,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("server") => servers.push(ServerSpec::parse(&value(&mut parser, "server")?)?),
            Long("url") => {
                let v = value(&mut parser, "url")?;
                let (name, url) = parse_named("url", &v)?;
                urls.push((name.into(), url.into()));
            }
            Long("publish-url") => {
                let v = value(&mut parser, "publish-url")?;
                let (name, url) = parse_named("publish-url", &v)?;
                publish_urls.push((name.into(), url.into()));
            }
            Long("server-pid") => {
                let v = value(&mut parser, "server-pid")?;
                let (name, pid) = parse_named("server-pid", &v)?;
                let pid = pid.trim().parse().map_err(|_| format!("--server-pid: {pid:?} is not a pid"))?;
                pids.push((name.into(), pid));
            }
            Long("connections") => {
                config.connections =
                    list("connections", &value(&mut parser, "connections")?, |s| whole("connections", s))?
            }
            Long("patterns") => {
                config.patterns = list("patterns", &value(&mut parser, "patterns")?, Pattern::parse)?
            }
            Long("events") => {
                config.events = u32::try_from(whole("events", &value(&mut parser, "events")?)?)
                    .map_err(|_| "--events: too many".to_string())?
            }
            Long("rate") => config.rate = number("rate", &value(&mut parser, "rate")?)?,
            Long("body-size") => config.body_size = whole("body-size", &value(&mut parser, "body-size")?)?,
            Long("reps") => config.reps = whole("reps", &value(&mut parser, "reps")?)?,
            Long("no-floor") => config.floor = false,
            Long("report") => config.report = Some(PathBuf::from(value(&mut parser, "report")?)),
            Long("svg-dir") => config.svg_dir = Some(PathBuf::from(value(&mut parser, "svg-dir")?)),
            Long("bench-cpu") => {
                config.bench_cpu = Some(whole("bench-cpu", &value(&mut parser, "bench-cpu")?)?)
            }
            Long("server-cpu") => {
                config.server_cpu = Some(whole("server-cpu", &value(&mut parser, "server-cpu")?)?)
            }
            Long("no-pin") => (config.bench_cpu, config.server_cpu) = (None, None),
            Long("ramp") => config.ramp = number("ramp", &value(&mut parser, "ramp")?)?,
            Long("settle") => {
                config.settle = Duration::from_secs_f64(number("settle", &value(&mut parser, "settle")?)?)
            }
            Long("drain") => {
                config.drain = Duration::from_secs_f64(number("drain", &value(&mut parser, "drain")?)?)
            }
            Long("start-wait") => {
                config.start_wait =
                    Duration::from_secs_f64(number("start-wait", &value(&mut parser, "start-wait")?)?)
            }
            Long("quiet") => config.progress = false,
            Long(name) => return Err(format!("unknown sweep option --{name} (see --help)")),
            other => return Err(other.unexpected().to_string()),
        }
    }
    if servers.is_empty() {
        return Err("sweep: at least one --server NAME=COMMAND or NAME=URL is needed (see --help)".into());
    }
    for (i, s) in servers.iter().enumerate() {
        if servers[..i].iter().any(|t| t.name == s.name) {
            return Err(format!("--server {}: the name is given twice", s.name));
        }
    }
    let find = |flag: &str, name: &str, servers: &mut Vec<ServerSpec>| -> Result<usize, String> {
        servers
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| format!("--{flag} {name}=…: no --server {name}"))
    };
    for (name, url) in urls {
        let i = find("url", &name, &mut servers)?;
        let same = servers[i].publish_url == servers[i].url;
        servers[i].url = url.clone();
        if same {
            servers[i].publish_url = url;
        }
    }
    for (name, url) in publish_urls {
        let i = find("publish-url", &name, &mut servers)?;
        servers[i].publish_url = url;
    }
    for (name, pid) in pids {
        let i = find("server-pid", &name, &mut servers)?;
        match &mut servers[i].launch {
            Launch::Running { pid: slot } => *slot = Some(pid),
            Launch::Command(_) => return Err(format!("--server-pid {name}: {name} is started by the sweep")),
        }
    }
    for s in &servers {
        // Checked now (with a placeholder port) rather than an hour into the sweep.
        for url in [&s.url, &s.publish_url] {
            target::parse(&url.replace("{port}", "1"), false)
                .map_err(|e| format!("--server {}: {e}", s.name))?;
        }
    }
    config.servers = servers;
    config.connections.sort_unstable();
    config.connections.dedup();
    if config.connections.contains(&0) {
        return Err("--connections: every count must be at least 1".into());
    }
    let mut patterns = Vec::new();
    for p in std::mem::take(&mut config.patterns) {
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    config.patterns = patterns;
    if config.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    if !(1..=crate::MAX_EVENTS).contains(&config.events) {
        return Err(format!("--events must be 1 to {}", crate::MAX_EVENTS));
    }
    let most = config.connections.last().copied().unwrap_or(0) as u64;
    if u64::from(config.events) * most > crate::MAX_TRACKING_BITS {
        return Err(format!(
            "--events x the largest --connections over {}: the per-stream record of received events \
             would take more than 256 MiB",
            crate::MAX_TRACKING_BITS
        ));
    }
    if config.rate <= 0.0 {
        return Err("--rate must be above 0".into());
    }
    if !(MIN_BODY_BYTES..=1 << 20).contains(&config.body_size) {
        return Err(format!("--body-size must be {MIN_BODY_BYTES} to 1048576"));
    }
    Ok(Some(config))
}

/// A run of the plan.
#[derive(Debug, Clone)]
enum Step {
    Floor { connections: usize, rep: usize },
    Load { server: usize, pattern: Pattern, connections: usize, rep: usize },
}

/// Every run, in the order they are made: by repetition, then connection count, then pattern, then
/// server (the floor first at each count).
fn plan(config: &SweepConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    for rep in 1..=config.reps {
        for &connections in &config.connections {
            if config.floor {
                steps.push(Step::Floor { connections, rep });
            }
            for &pattern in &config.patterns {
                for server in 0..config.servers.len() {
                    steps.push(Step::Load { server, pattern, connections, rep });
                }
            }
        }
    }
    steps
}

/// Seconds a run is expected to take, for the time left (not a limit).
fn expected_secs(config: &SweepConfig, step: &Step) -> f64 {
    let ramp = |n: usize| if config.ramp > 0.0 { n as f64 / config.ramp } else { n as f64 / 20_000.0 };
    match *step {
        Step::Floor { connections, .. } => 1.5 + connections as f64 / 10_000.0,
        Step::Load { pattern, connections, .. } => {
            let publish = match pattern {
                Pattern::Paced => f64::from(config.events) / config.rate,
                // A few hundred thousand deliveries per second, between the servers measured so far.
                Pattern::Burst | Pattern::Pipelined => {
                    f64::from(config.events) * connections as f64 / 300_000.0
                }
            };
            1.0 + ramp(connections) + config.settle.as_secs_f64() + publish
        }
    }
}

/// The longest a load run may take: generous, so only a stuck server hits it.
fn run_limit(config: &SweepConfig, pattern: Pattern, connections: usize) -> Duration {
    let ramp =
        if config.ramp > 0.0 { connections as f64 / config.ramp } else { connections as f64 / 5_000.0 };
    let publish = match pattern {
        Pattern::Paced => f64::from(config.events) / config.rate,
        Pattern::Burst | Pattern::Pipelined => f64::from(config.events) * connections as f64 / 20_000.0,
    };
    Duration::from_secs_f64(
        30.0 + 3.0 * ramp + config.settle.as_secs_f64() + 2.0 * publish + config.drain.as_secs_f64(),
    )
}

/// Where the report's companions go: `density.html` → `density.md`, `density.jsonl`, `density.servers.log`.
fn beside(report: &Path, extension: &str) -> PathBuf {
    report.with_extension(extension)
}

/// The JSON line of a record: the run's own line, with the sweep's fields first.
fn json_line(record: &Record, run_json: Option<&str>) -> String {
    let mut j = Json::default();
    j.string("server", Some(&record.server))
        .string("pattern", record.pattern.map(Pattern::name))
        .raw("n", record.connections)
        .raw("rep", record.rep);
    match &record.measured {
        Measured::StartFailed(why) => {
            j.string("start_failed", Some(why));
        }
        Measured::RunFailed(why) => {
            j.string("run_failed", Some(why));
        }
        Measured::Load(_) | Measured::Floor { .. } => {}
    }
    let head = j.finish();
    match run_json.and_then(|line| line.strip_prefix('{')).filter(|rest| rest.len() > 1) {
        Some(rest) => format!("{},{rest}", &head[..head.len() - 1]),
        None => head,
    }
}

/// What a finished (or interrupted) sweep leaves.
pub struct Finished {
    /// Every run made.
    pub records: Vec<Record>,
    /// Ctrl-C stopped it early.
    pub interrupted: bool,
}

/// Runs the sweep, prints JSON lines as it goes, writes the outputs, and returns the exit status.
pub fn run(config: SweepConfig) -> Result<u8, String> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user does not want to wait for the servers to stop.
                std::process::exit(130);
            }
        })
        .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    }
    let machine = Machine::here();
    if let Some(cpu) = config.bench_cpu {
        sys::pin_current_thread(cpu).map_err(|e| format!("pinning the bench to CPU {cpu}: {e}"))?;
    }
    // The report's directory first: the JSON lines and the servers' log go there as the runs go.
    if let Some(dir) = config.report.as_ref().and_then(|r| r.parent()).filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let log = match &config.report {
        Some(report) => beside(report, "servers.log"),
        None => std::env::temp_dir().join(format!("ssed-bench-sweep-{}.servers.log", std::process::id())),
    };
    let _ = fs::write(&log, "");
    let finished = measure(&config, &stop, &log);
    let summary = Summary::of(&config, &finished.records);
    let table = summary.markdown();
    eprintln!("\n{table}");
    if let Some(report) = &config.report {
        write_outputs(&config, &machine, &summary, &finished, report)?;
        eprintln!(
            "report: {} (table {}, JSON lines {})",
            report.display(),
            beside(report, "md").display(),
            beside(report, "jsonl").display()
        );
    }
    if let Some(dir) = &config.svg_dir {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for chart in charts::all(&summary) {
            let path = dir.join(format!("{}.svg", chart.file));
            fs::write(&path, &chart.svg).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
    }
    if finished.interrupted {
        return Ok(130);
    }
    let bad = finished.records.iter().any(|r| match &r.measured {
        Measured::Load(m) => m.faults > 0,
        Measured::StartFailed(_) | Measured::RunFailed(_) => true,
        Measured::Floor { .. } => false,
    });
    Ok(u8::from(bad))
}

fn write_outputs(
    config: &SweepConfig,
    machine: &Machine,
    summary: &Summary,
    finished: &Finished,
    report: &Path,
) -> Result<(), String> {
    if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let write = |path: PathBuf, text: &str| {
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write(beside(report, "md"), &summary.markdown())?;
    let page = html::page(config, machine, summary, &charts::all(summary), finished.interrupted);
    write(report.to_path_buf(), &page)
}

/// Makes every run of the plan (until Ctrl-C), printing each JSON line on stdout and appending it
/// to the `.jsonl` beside the report.
fn measure(config: &SweepConfig, stop: &Arc<AtomicBool>, log: &Path) -> Finished {
    let steps = plan(config);
    let estimates: Vec<f64> = steps.iter().map(|s| expected_secs(config, s)).collect();
    let live = Arc::new(Live::default());
    let progress = ProgressDisplay::start(config.progress, estimates.iter().sum(), Arc::clone(&live));
    let mut jsonl = config.report.as_ref().and_then(|r| fs::File::create(beside(r, "jsonl")).ok());
    let mut records = Vec::new();
    let mut interrupted = false;
    for (step, estimate) in steps.iter().zip(&estimates) {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let (record, json) = match *step {
            Step::Floor { connections, rep } => {
                progress.begin(
                    format!("floor at {connections} (rep {rep}/{})", config.reps),
                    None,
                    *estimate,
                );
                let (measured, json) = run_floor(config, connections);
                (Record { server: "floor".into(), pattern: None, connections, rep, measured }, json)
            }
            Step::Load { server, pattern, connections, rep } => {
                let spec = &config.servers[server];
                progress.begin(
                    format!("{} {} at {connections} (rep {rep}/{})", spec.name, pattern.name(), config.reps),
                    Some(connections),
                    *estimate,
                );
                live.reset();
                let (measured, json) = run_load(config, spec, pattern, connections, stop, &live, log);
                (
                    Record { server: spec.name.clone(), pattern: Some(pattern), connections, rep, measured },
                    json,
                )
            }
        };
        let line = json_line(&record, json.as_deref());
        println!("{line}");
        let _ = io::stdout().flush();
        if let Some(file) = jsonl.as_mut() {
            let _ = writeln!(file, "{line}");
        }
        progress.end(&outcome_line(&record));
        let was_stopped = stop.load(Ordering::Relaxed);
        // A run cut short by Ctrl-C is not a measurement.
        if !was_stopped {
            records.push(record);
        } else {
            interrupted = true;
            break;
        }
    }
    progress.finish(interrupted);
    Finished { records, interrupted }
}

/// One line saying how a run went, for the progress display.
fn outcome_line(record: &Record) -> String {
    let what = match &record.measured {
        Measured::Load(m) => format!(
            "{} held, {:.0} B/subscriber, {} µs CPU/delivery, p99 {} ms{}",
            m.held,
            m.bytes_per_subscriber.unwrap_or(f64::NAN),
            m.cpu_us_per_delivery.map_or("-".into(), |v| format!("{v:.2}")),
            m.latency_ms[2].map_or("-".into(), |v| format!("{v:.1}")),
            if m.faults > 0 { format!(", {} FAULTS", m.faults) } else { String::new() }
        ),
        Measured::Floor { cpu_us_per_write, walk_ms } => {
            format!("{cpu_us_per_write:.2} µs CPU/write, walk {walk_ms:.1} ms")
        }
        Measured::StartFailed(why) => format!("FAILED TO START: {why}"),
        Measured::RunFailed(why) => format!("RUN FAILED: {why}"),
    };
    let pattern = record.pattern.map_or(String::new(), |p| format!(" {}", p.name()));
    format!("{}{pattern} at {} (rep {}): {what}", record.server, record.connections, record.rep)
}

fn run_floor(config: &SweepConfig, connections: usize) -> (Measured, Option<String>) {
    let floor_config = FloorConfig {
        connections,
        writes_per_syscall: 1,
        rounds: 10,
        size: config.body_size,
        writer_cpu: config.server_cpu,
        reader_cpu: config.bench_cpu,
        mode: ReaderMode::Auto,
        spread: true,
    };
    // On a thread of its own: the floor pins its writer, and the sweep's own thread stays put.
    let result = std::thread::spawn(move || floor::run(floor_config))
        .join()
        .unwrap_or_else(|_| Err("the floor's thread panicked".into()));
    match result {
        Ok(outcome) => {
            let (walk, _) = outcome.walk();
            let measured = Measured::Floor {
                cpu_us_per_write: outcome.cpu_us_per_write(),
                walk_ms: walk.as_secs_f64() * 1e3,
            };
            (measured, Some(outcome.json()))
        }
        Err(e) => (Measured::RunFailed(e), None),
    }
}

fn run_load(
    config: &SweepConfig,
    spec: &ServerSpec,
    pattern: Pattern,
    connections: usize,
    stop: &Arc<AtomicBool>,
    live: &Arc<Live>,
    log: &Path,
) -> (Measured, Option<String>) {
    let mut server = match servers::start(spec, config.server_cpu, log, config.start_wait, stop) {
        Ok(server) => server,
        Err(why) => return (Measured::StartFailed(why), None),
    };
    let targets = match (target::parse(&server.url, false), target::parse(&server.publish_url, false)) {
        (Ok(sub), Ok(publish)) => (sub, publish),
        (Err(e), _) | (_, Err(e)) => return (Measured::RunFailed(e), None),
    };
    let pace = match pattern {
        Pattern::Paced => Pace::Rate(config.rate),
        Pattern::Burst => Pace::Burst,
        Pattern::Pipelined => Pace::Pipeline,
    };
    let load_config = LoadConfig {
        targets: vec![targets.0],
        connections,
        ramp: config.ramp,
        max_pending: 1000,
        spread: true,
        publish: Some(PublishConfig {
            target: targets.1,
            events: config.events,
            pace,
            body_size: config.body_size,
            headers: Vec::new(),
            form_topic: None,
            private_every: 0,
        }),
        server_pid: server.pid,
        settle: config.settle,
        drain: config.drain,
        duration: run_limit(config, pattern, connections),
        progress: false,
        stop: Some(Arc::clone(stop)),
        live: Some(Arc::clone(live)),
        headers: Vec::new(),
    };
    let url = server.url.clone();
    let result = load::run(load_config);
    server.stop();
    match result {
        Ok(outcome) => (Measured::Load(report::metrics(&outcome)), Some(report::json(&[url], &outcome))),
        Err(e) => (Measured::RunFailed(e), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<SweepConfig, String> {
        parse(
            lexopt::Parser::from_args(args.iter().copied()),
            quote_command(args.iter().map(|s| s.to_string())),
        )
        .map(|c| c.expect("not --help"))
    }

    #[test]
    fn parses_a_sweep() {
        let c = parse_args(&[
            "--server",
            "ssed=target/release/ssed --listen 127.0.0.1:{port}",
            "--server",
            "any=http://127.0.0.1:9000/stream",
            "--server-pid",
            "any=4242",
            "--publish-url",
            "ssed=http://127.0.0.1:{port}/pub",
            "--connections",
            "5000,1000,10000",
            "--events",
            "20",
            "--reps",
            "2",
            "--patterns",
            "burst,paced",
        ])
        .unwrap();
        assert_eq!(c.connections, [1000, 5000, 10_000]);
        assert_eq!(c.patterns, [Pattern::Burst, Pattern::Paced]);
        assert_eq!(c.servers[0].publish_url, "http://127.0.0.1:{port}/pub");
        assert_eq!(c.servers[1].launch, Launch::Running { pid: Some(4242) });
        assert!(c.command_line.contains("'ssed=target/release/ssed --listen 127.0.0.1:{port}'"));
        // 2 reps x 3 counts x (floor + 2 patterns x 2 servers), servers innermost.
        let steps = plan(&c);
        assert_eq!(steps.len(), 2 * 3 * 5);
        assert!(matches!(steps[0], Step::Floor { connections: 1000, rep: 1 }));
        assert!(matches!(steps[1], Step::Load { server: 0, pattern: Pattern::Burst, .. }));
        assert!(matches!(steps[2], Step::Load { server: 1, pattern: Pattern::Burst, .. }));
        assert!(matches!(steps[15], Step::Floor { connections: 1000, rep: 2 }));
    }

    #[test]
    fn refuses_bad_sweeps() {
        assert!(parse_args(&[]).unwrap_err().contains("--server"));
        let one = ["--server", "a=x {port}"];
        assert!(parse_args(&[&one[..], &one[..]].concat()).unwrap_err().contains("twice"));
        assert!(parse_args(&[&one[..], &["--server-pid", "b=1"]].concat())
            .unwrap_err()
            .contains("no --server b"));
        assert!(parse_args(&[&one[..], &["--server-pid", "a=1"]].concat())
            .unwrap_err()
            .contains("started by"));
        assert!(parse_args(&[&one[..], &["--patterns", "fast"]].concat()).is_err());
        assert!(parse_args(&[&one[..], &["--connections", "0"]].concat()).is_err());
        assert!(parse_args(&[&one[..], &["--events", "2000000"]].concat()).unwrap_err().contains("--events"));
        let c = parse_args(&[&one[..], &["--patterns", "paced,burst,paced"]].concat()).unwrap();
        assert_eq!(c.patterns, [Pattern::Paced, Pattern::Burst], "each pattern once");
        assert!(parse_args(&["--server", "r=http://192.0.2.1/"]).unwrap_err().contains("loopback"));
    }

    /// The example sweep file stands for the flags compare.sh passes; later flags win; mistakes
    /// are named.
    #[test]
    fn a_sweep_file_is_its_flags() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/sweep.toml");
        let args: Vec<String> =
            ["--reps", "1", "--config", file, "--events", "20"].iter().map(|s| s.to_string()).collect();
        let expanded = expand_config(args).unwrap();
        let c = parse(lexopt::Parser::from_args(expanded.clone()), quote_command(expanded)).unwrap().unwrap();
        let names: Vec<&str> = c.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ssed", "nchan", "axum"], "in the file's order");
        assert_eq!(c.servers[1].publish_url, "http://127.0.0.1:{port}/pub?topic=bench");
        assert!(matches!(&c.servers[1].launch, Launch::Command(cmd) if cmd.contains("exec nginx -p {dir}")));
        assert_eq!(c.connections, [1000, 5000, 10_000]);
        assert_eq!(
            (c.reps, c.events, c.rate),
            (3, 20, 5.0),
            "the file's reps win over the earlier flag, the later --events over the file"
        );
        assert_eq!((c.bench_cpu, c.server_cpu), (Some(0), Some(1)));
        assert_eq!(c.svg_dir.as_deref(), Some(Path::new("target/sweep/svg")));

        let running = config_flags(
            "f",
            "floor = false\n[[server]]\nname = \"any\"\nurl = \"http://127.0.0.1:9000/s\"\npid = 42\n",
        )
        .unwrap();
        assert_eq!(
            running,
            ["--no-floor", "--server", "any=http://127.0.0.1:9000/s", "--server-pid", "any=42"]
        );
        assert!(config_flags("f", "conections = [1]").unwrap_err().contains("unknown key \"conections\""));
        assert!(config_flags("f", "[[server]]\nname = \"a\"")
            .unwrap_err()
            .contains("needs a command or a url"));
        assert!(
            config_flags("f", "events = ").unwrap_err().starts_with("f: "),
            "a TOML error names the file"
        );
        assert!(expand_config(vec!["--config".into()]).unwrap_err().contains("a file is needed"));
        assert!(expand_config(vec!["--config=/nonexistent.toml".into()])
            .unwrap_err()
            .contains("/nonexistent.toml"));
    }

    #[test]
    fn json_lines_lead_with_the_sweep_fields() {
        let record = Record {
            server: "ssed".into(),
            pattern: Some(Pattern::Paced),
            connections: 10,
            rep: 2,
            measured: Measured::Load(Metrics::default()),
        };
        assert_eq!(
            json_line(&record, Some(r#"{"held":10}"#)),
            r#"{"server":"ssed","pattern":"paced","n":10,"rep":2,"held":10}"#
        );
        let failed = Record { measured: Measured::StartFailed("exited".into()), ..record };
        assert_eq!(
            json_line(&failed, None),
            r#"{"server":"ssed","pattern":"paced","n":10,"rep":2,"start_failed":"exited"}"#
        );
    }

    #[test]
    fn quotes_and_dates() {
        assert_eq!(quote_command(["a".into(), "b c".into(), "it's".into()]), r"a 'b c' 'it'\''s'");
        let now = utc_now();
        assert_eq!(now.len(), "2026-12-03 07:00:00 UTC".len(), "{now}");
        assert!(now.starts_with("20"), "{now}");
    }
}
