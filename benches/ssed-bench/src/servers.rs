//! The servers a sweep measures: a command it starts on a free port for every run and stops after
//! it, or the URL of one already running (sampled when its PID is given).
//!
//! A started server leads a process group of its own: Ctrl-C on the terminal reaches the bench
//! only, and the bench stops the whole group (a wrapper shell, nginx's workers) by its PID.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys;
use crate::target;

/// The stream a started server is subscribed to and published on, unless `--url`/`--publish-url`
/// say otherwise: ssed's, and the axum peer's.
pub const DEFAULT_URL: &str = "http://127.0.0.1:{port}/events?topic=bench";
/// How long a stopped server gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a starting server is probed.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lines of the server's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 6;

/// How a server comes to be there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A command line, run with `{port}`, `{dir}` (a fresh scratch directory) and `{nofile}` (the
    /// hard descriptor limit) filled in; through `sh -c` when it needs a shell.
    Command(String),
    /// Already running: only its URL is known, and its PID if given (to sample memory and CPU).
    Running {
        /// The process to sample, with its descendants.
        pid: Option<u32>,
    },
}

/// One server of a sweep, as the command line described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Its name in tables, charts and JSON lines.
    pub name: String,
    /// How it is started, if at all.
    pub launch: Launch,
    /// Where to subscribe (`{port}` filled in for a command).
    pub url: String,
    /// Where to publish (likewise).
    pub publish_url: String,
}

impl ServerSpec {
    /// `NAME=COMMAND` or `NAME=http://…` (a server already running).
    pub fn parse(text: &str) -> Result<ServerSpec, String> {
        let (name, value) = text.split_once('=').ok_or_else(|| {
            format!("--server {text:?}: expected NAME=COMMAND or NAME=http://HOST:PORT/PATH")
        })?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)) {
            return Err(format!("--server {text:?}: the name must be letters, digits, - _ . or +"));
        }
        if name == "floor" {
            return Err("--server: \"floor\" is the name of the bare-write row; pick another".into());
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("--server {name}: empty command"));
        }
        let is_url = value.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        if is_url {
            Ok(ServerSpec {
                name: name.into(),
                launch: Launch::Running { pid: None },
                url: value.into(),
                publish_url: value.into(),
            })
        } else {
            if !value.contains("{port}") {
                return Err(format!(
                    "--server {name}: the command must take the port to listen on as {{port}}, e.g. \
                     'target/release/ssed --listen 127.0.0.1:{{port}}'"
                ));
            }
            Ok(ServerSpec {
                name: name.into(),
                launch: Launch::Command(value.into()),
                url: DEFAULT_URL.into(),
                publish_url: DEFAULT_URL.into(),
            })
        }
    }

    /// What the report says about how it ran.
    pub fn describe(&self) -> String {
        match &self.launch {
            Launch::Command(command) => command.clone(),
            Launch::Running { pid: Some(pid) } => format!("{} (running, pid {pid})", self.url),
            Launch::Running { pid: None } => format!("{} (running, not sampled: no pid given)", self.url),
        }
    }
}

/// A server up for one run.
#[derive(Debug)]
pub struct Started {
    child: Option<Child>,
    /// The process sampled (the started command's, or the one given).
    pub pid: Option<u32>,
    /// The stream to subscribe to.
    pub url: String,
    /// Where to publish.
    pub publish_url: String,
    /// The scratch directory given as `{dir}`, removed at the end.
    dir: Option<PathBuf>,
}

/// A port nobody listens on now (the kernel's pick, released at once for the server to take).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether a command needs `sh -c` rather than being split on white space.
fn needs_shell(command: &str) -> bool {
    command.chars().any(|c| "|&;<>()$`\\\"'*?[#~\n".contains(c))
}

/// The last `LOG_TAIL_LINES` lines written to `log` after `from`, on one line.
fn log_tail(log: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" / "))
    }
}

/// Whether the server answers an HTTP request (`GET /`, whatever the status). Accepting a connection
/// is not enough: nginx's master listens before its worker, which answers, is up, and a memory
/// sample taken in between would miss the worker.
fn answers(target: &target::Target) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&target.addr, PROBE_TIMEOUT) else { return false };
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", target.host);
    let mut first = [0u8; 1];
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).is_ok()
        && stream.set_read_timeout(Some(PROBE_TIMEOUT)).is_ok()
        && stream.write_all(request.as_bytes()).is_ok()
        && matches!(stream.read(&mut first), Ok(1))
}

/// One number per scratch directory made by this process.
static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// Starts `spec` (pinned to `cpu` with taskset when given) and waits until its stream's address
/// accepts connections, or fails saying why: the command could not run, exited, or did not listen
/// within `wait`. Its output is appended to `log`. `stop` (Ctrl-C) cuts the wait short.
pub fn start(
    spec: &ServerSpec,
    cpu: Option<usize>,
    log: &Path,
    wait: Duration,
    stop: &AtomicBool,
) -> Result<Started, String> {
    let command = match &spec.launch {
        Launch::Running { pid } => {
            return Ok(Started {
                child: None,
                pid: *pid,
                url: spec.url.clone(),
                publish_url: spec.publish_url.clone(),
                dir: None,
            })
        }
        Launch::Command(command) => command,
    };
    let port = free_port().map_err(|e| format!("finding a free port: {e}"))?.to_string();
    let dir = std::env::temp_dir().join(format!(
        "ssed-bench-{}-{}-{}",
        std::process::id(),
        spec.name,
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let nofile = sys::raise_file_limit().map_or(1024, |l| l.hard).to_string();
    let fill = |text: &str| {
        text.replace("{port}", &port).replace("{dir}", &dir.to_string_lossy()).replace("{nofile}", &nofile)
    };
    let line = fill(command);
    let (url, publish_url) = (fill(&spec.url), fill(&spec.publish_url));
    let mut started = Started { child: None, pid: None, url, publish_url, dir: Some(dir) };

    let mut argv: Vec<String> = Vec::new();
    if let Some(cpu) = cpu {
        argv.extend(["taskset".into(), "-c".into(), cpu.to_string()]);
    }
    if needs_shell(&line) {
        argv.extend(["sh".into(), "-c".into(), line.clone()]);
    } else {
        argv.extend(line.split_whitespace().map(String::from));
    }
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening the servers' log {}: {e}", log.display()))?;
    let _ = writeln!(out, "== {}: {line}", spec.name);
    let from = out.metadata().map_or(0, |m| m.len());
    let err = out.try_clone().map_err(|e| format!("the servers' log: {e}"))?;
    let mut note = out.try_clone().map_err(|e| format!("the servers' log: {e}"))?;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", argv[0]))?;
    let _ = writeln!(note, "== {} is pid {} (its process group)", spec.name, child.id());
    started.pid = Some(child.id());
    started.child = Some(child);

    let target = target::parse(&started.url, false)?;
    let until = Instant::now() + wait;
    loop {
        if answers(&target) {
            return Ok(started);
        }
        let child = started.child.as_mut().expect("set above");
        if let Ok(Some(status)) = child.try_wait() {
            // No port in the message: the same failure at every run reads the same.
            return Err(format!("exited ({status}) before listening{}", log_tail(log, from)));
        }
        if stop.load(Ordering::Relaxed) {
            return Err("interrupted while starting".into());
        }
        if Instant::now() >= until {
            return Err(format!(
                "did not answer HTTP on its port within {:.1} s{}",
                wait.as_secs_f64(),
                log_tail(log, from)
            ));
        }
        std::thread::sleep(PROBE_EVERY);
    }
}

impl Started {
    /// Stops a started server: SIGTERM to its group, SIGKILL after [`STOP_GRACE`], then reaped.
    /// Nothing to do for one that was already running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id();
            let _ = sys::signal_group(pgid, libc::SIGTERM);
            let until = Instant::now() + STOP_GRACE;
            while Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(PROBE_EVERY);
            }
            // Whatever is left of the group (workers, a wrapper's children) goes too.
            let _ = sys::signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_specs() {
        let s = ServerSpec::parse("ssed=target/release/ssed --listen 127.0.0.1:{port}").unwrap();
        assert_eq!(s.name, "ssed");
        assert_eq!(s.launch, Launch::Command("target/release/ssed --listen 127.0.0.1:{port}".into()));
        assert_eq!(s.url, DEFAULT_URL);
        let r = ServerSpec::parse("any=http://127.0.0.1:9000/stream").unwrap();
        assert_eq!(r.launch, Launch::Running { pid: None });
        assert_eq!(
            (r.url.as_str(), r.publish_url.as_str()),
            ("http://127.0.0.1:9000/stream", r.url.as_str())
        );
        assert!(ServerSpec::parse("nameless").unwrap_err().contains("NAME=COMMAND"));
        assert!(ServerSpec::parse("x=ssed --listen 127.0.0.1:8080").unwrap_err().contains("{port}"));
        assert!(ServerSpec::parse("floor=x {port}").is_err());
        assert!(ServerSpec::parse("a b=x {port}").is_err());
    }

    #[test]
    fn shell_only_when_needed() {
        assert!(!needs_shell("target/release/ssed --listen 127.0.0.1:8080 --heartbeat 0"));
        assert!(needs_shell("sed s/a/b/ x > y && exec nginx"));
        assert!(needs_shell("python3 -c 'print(1)'"));
    }

    /// A command that exits at once, and one that never listens, are reported as such.
    #[test]
    fn a_server_that_does_not_start_says_why() {
        let dir = std::env::temp_dir().join(format!("ssed-bench-servers-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("servers.log");
        let stop = AtomicBool::new(false);
        let exits = ServerSpec::parse("exits=sh -c 'echo no such option {port} >&2; exit 3'").unwrap();
        let err = start(&exits, None, &log, Duration::from_secs(10), &stop).unwrap_err();
        assert!(err.contains("exited (exit status: 3)") && err.contains("no such option"), "{err}");
        let silent = ServerSpec::parse("silent=sleep 30 {port}").unwrap();
        let began = Instant::now();
        let err = start(&silent, None, &log, Duration::from_millis(300), &stop).unwrap_err();
        assert!(err.contains("did not answer HTTP"), "{err}");
        assert!(began.elapsed() < Duration::from_secs(10), "the sleeping server was stopped, not waited for");
        let missing = ServerSpec::parse("missing=/nonexistent/server {port}").unwrap();
        assert!(start(&missing, None, &log, Duration::from_secs(1), &stop)
            .unwrap_err()
            .contains("cannot run"));
        let _ = fs::remove_dir_all(dir);
    }

    /// Ready means answering HTTP, not only accepting connections (nginx's master accepts before its
    /// worker answers): a listener that never answers times out, one that answers is ready.
    #[test]
    fn ready_when_it_answers_http() {
        let dir = std::env::temp_dir().join(format!("ssed-bench-ready-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("servers.log");
        let stop = AtomicBool::new(false);
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut spec = ServerSpec::parse("mute=sleep 30 {port}").unwrap();
        spec.url = format!("http://{}/events", silent.local_addr().unwrap());
        let err = start(&spec, None, &log, Duration::from_millis(700), &stop).unwrap_err();
        assert!(err.contains("did not answer HTTP"), "a listener that accepts but never answers: {err}");

        let answering = TcpListener::bind("127.0.0.1:0").unwrap();
        spec.url = format!("http://{}/events", answering.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = answering.accept().unwrap();
            let mut head = [0u8; 256];
            let _ = conn.read(&mut head);
            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").unwrap();
        });
        let mut started = start(&spec, None, &log, Duration::from_secs(10), &stop).unwrap();
        server.join().unwrap();
        started.stop();
        let _ = fs::remove_dir_all(dir);
    }
}
