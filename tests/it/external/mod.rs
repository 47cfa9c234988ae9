//! ssed spoken to by real clients it did not write: curl, Python's httpx-sse and sseclient-py, Node's
//! `eventsource` package, headless Chromium, and nginx as a reverse proxy; with the `mercure` feature,
//! Chromium, pymercure and `eventsource` on the Mercure hub too.
//!
//! Every test here is `#[ignore]`d, so a plain `cargo test` needs nothing but the Rust toolchain;
//! `.ci/external-deps.sh` installs the programs and `.ci/run` runs them with `--include-ignored`.
//! Each test starts the server in-process, runs the outside program in its own process group with a
//! bounded time (the whole group is killed if it overruns, and always on drop), and asserts on what
//! the client printed. The client scripts live in `tests/clients/`.

pub(crate) mod chromium;
mod curl;
#[cfg(feature = "mercure")]
mod mercure;
mod nginx;
mod node;
mod python;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one outside program may run before it is killed and the test fails.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(relative)
}

/// Finds `name` on `PATH` (and in the sbin directories, where Debian puts nginx), or fails the test
/// with a hint about how to install it.
/// `tests/clients/node`, where the Node clients and their pinned `eventsource` package are.
pub fn node_client_dir() -> PathBuf {
    let dir = repo_path("tests/clients/node");
    assert!(
        dir.join("node_modules/eventsource/package.json").is_file(),
        "needs tests/clients/node/node_modules: run .ci/external-deps.sh"
    );
    dir
}

pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("needs {name} on PATH: install it with .ci/external-deps.sh"))
}

/// A free loopback port at the time of asking (for programs that cannot be handed a listener).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind loopback").local_addr().unwrap().port()
}

/// The most any outside program lives, even if the test that started it is killed.
pub const HARD_LIMIT: Duration = Duration::from_secs(60);

/// `command` run as `timeout -s KILL HARD_LIMIT program args...`, same directory and environment.
fn under_timeout(command: &Command) -> Command {
    let mut wrapped = Command::new("timeout");
    wrapped.arg("-s").arg("KILL").arg(format!("{}s", HARD_LIMIT.as_secs()));
    wrapped.arg(command.get_program()).args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// Sends SIGKILL to every process of the group `pgid` (one this file created with `process_group(0)`).
fn kill_group(pgid: u32) {
    let _ = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("kill -KILL -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// An outside program running in its own process group, its stdout followed line by line.
///
/// Every line it printed and the test consumed is kept in [`Proc::transcript`]; its stderr is kept
/// for failure messages. Dropping it kills the whole group and reaps the child.
pub struct Proc {
    what: String,
    child: Child,
    lines: Receiver<String>,
    stdout_open: bool,
    stderr: Arc<Mutex<Vec<u8>>>,
    status: Option<ExitStatus>,
    /// The stdout lines consumed so far, each with its `\n`.
    pub transcript: String,
}

impl Proc {
    /// Starts `command` with stdout and stderr piped (stdin from `/dev/null` unless `stdin` is given).
    ///
    /// The program runs under coreutils' `timeout`, which makes a process group of its own and kills
    /// all of it after [`HARD_LIMIT`]: so even a test binary killed before its destructors run leaves
    /// nothing behind for long.
    pub fn spawn(what: &str, command: Command, stdin: Option<&[u8]>) -> Proc {
        let mut command = under_timeout(&command);
        command
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("starting {what} ({command:?}): {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input).expect("write the child's stdin");
            // Dropping the pipe closes it, so the child sees the end of its input.
        }
        let (tx, lines) = mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Proc {
            what: what.to_string(),
            child,
            lines,
            stdout_open: true,
            stderr,
            status: None,
            transcript: String::new(),
        }
    }

    /// What the program wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// A description for failure messages: what it is, what it printed, what it complained about.
    pub fn report(&self) -> String {
        format!(
            "{}\n--- stdout so far ---\n{}--- stderr ---\n{}",
            self.what,
            self.transcript,
            tail(&self.stderr_text(), 6000)
        )
    }

    /// The next stdout line (without its line ending), or `None` at the deadline or at end of output.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        if !self.stdout_open {
            return None;
        }
        let now = Instant::now();
        let wait = deadline.saturating_duration_since(now);
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.transcript.push_str(&line);
                if !line.ends_with('\n') {
                    self.transcript.push('\n');
                }
                Some(line.trim_end_matches(['\n', '\r']).to_string())
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_open = false;
                None
            }
        }
    }

    /// The next stdout line, failing the test with the program's output if none comes in time.
    pub fn expect_line(&mut self, deadline: Instant, waiting_for: &str) -> String {
        match self.next_line(deadline) {
            Some(line) => line,
            None if self.stdout_open => panic!("timed out waiting for {waiting_for}: {}", self.report()),
            None => panic!("output ended while waiting for {waiting_for}: {}", self.report()),
        }
    }

    /// The next stdout line parsed as a flat JSON object.
    pub fn expect_record(&mut self, deadline: Instant, waiting_for: &str) -> Record {
        let line = self.expect_line(deadline, waiting_for);
        Record::parse(&line).unwrap_or_else(|e| panic!("{e} in {line:?}: {}", self.report()))
    }

    /// Reads lines until `done(transcript)` holds, failing the test at the deadline or end of output.
    pub fn read_until(&mut self, deadline: Instant, waiting_for: &str, mut done: impl FnMut(&str) -> bool) {
        while !done(&self.transcript) {
            self.expect_line(deadline, waiting_for);
        }
    }

    /// Waits for the program to exit (reading the rest of its output into the transcript), killing
    /// its process group and failing the test if it has not exited by the deadline.
    pub fn wait_exit(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            while self.next_line(Instant::now()).is_some() {}
            if let Some(status) = self.status {
                // Collect output still in flight after the exit.
                while self.next_line(Instant::now() + Duration::from_millis(200)).is_some() {}
                return status;
            }
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    self.kill();
                    panic!("{} did not exit in time and was killed: {}", self.what, self.report());
                }
                Ok(None) => {
                    // Bounded polling of the child's state; output is consumed meanwhile.
                    let _ = self.next_line(Instant::now() + Duration::from_millis(10));
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        }
    }

    /// The exit status if the program has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap_or_else(|e| panic!("polling {}: {e}", self.what));
        }
        self.status
    }

    /// Kills the program's whole process group and reaps it.
    pub fn kill(&mut self) {
        kill_group(self.child.id());
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The group id cannot be reused while its leader is unreaped, and a browser's helpers stay in
        // the group after the leader exits, so the group is killed in every case.
        kill_group(self.child.id());
        if self.status.is_none() {
            let _ = self.child.wait();
        }
    }
}

/// Runs a short-lived program to completion with a bounded time; returns its status and stdout.
pub fn run(what: &str, command: Command, stdin: Option<&[u8]>) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(what, command, stdin);
    let status = proc.wait_exit(Instant::now() + CLIENT_DEADLINE);
    let stderr = proc.stderr_text();
    (status, std::mem::take(&mut proc.transcript), stderr)
}

/// Calls `step` with 0, 1, 2... every `interval` on a thread of its own until finished, and keeps
/// what each call returns: the publishers the client tests run while clients reconnect.
pub struct Paced<T: Send + 'static> {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<T>>>,
}

impl<T: Send + 'static> Paced<T> {
    /// Starts calling `step`, at most `max` times and for at most [`CLIENT_DEADLINE`].
    pub fn run(
        interval: Duration,
        max: usize,
        mut step: impl FnMut(usize) -> T + Send + 'static,
    ) -> Paced<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut done = Vec::new();
            // Bounded in count and time whatever happens to the test.
            while !flag.load(Ordering::Acquire) && done.len() < max && started.elapsed() < CLIENT_DEADLINE {
                done.push(step(done.len()));
                // Pacing, not synchronisation: spreads the events over the reconnects.
                std::thread::sleep(interval);
            }
            done
        });
        Paced { stop, thread: Some(thread) }
    }

    /// Stops and returns what every call returned, in order.
    pub fn finish(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().expect("publishing thread panicked")
    }
}

impl<T: Send + 'static> Drop for Paced<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Publishes `"{prefix} {n}"` to `topic` every `interval`; finishing returns every (id, data).
pub type SteadyPublisher = Paced<(u64, String)>;

impl SteadyPublisher {
    pub fn start(
        publisher: &ssed::Publisher,
        topic: &str,
        prefix: &str,
        interval: Duration,
    ) -> SteadyPublisher {
        let (publisher, topic, prefix) = (publisher.clone(), topic.to_string(), prefix.to_string());
        Paced::run(interval, 5000, move |n| {
            let data = format!("{prefix} {n}");
            let id = publisher.publish(ssed::Event::new(data.clone()).topic(topic.clone())).expect("publish");
            (id.get(), data)
        })
    }
}

/// The last `max` bytes of `text` (on a character boundary).
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A JSON scalar, as the client scripts print them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// A number, kept as written.
    Number(String),
    Str(String),
}

/// One line of client output: a flat JSON object of scalars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record(pub BTreeMap<String, Json>);

impl Record {
    /// Parses `{"key": scalar, ...}`; nested values are not needed by these tests and are refused.
    pub fn parse(text: &str) -> Result<Record, String> {
        let mut parser = JsonParser { bytes: text.as_bytes(), pos: 0 };
        let record = parser.object()?;
        parser.skip_ws();
        if parser.pos != text.len() {
            return Err(format!("trailing characters after the JSON object at byte {}", parser.pos));
        }
        Ok(record)
    }

    /// The string value of `key`, if it is a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(Json::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The number value of `key` parsed as an integer, if it is one.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.0.get(key) {
            Some(Json::Number(n)) => n.parse().ok(),
            _ => None,
        }
    }

    /// The record's `type` field, or `""`.
    pub fn kind(&self) -> &str {
        self.str("type").unwrap_or("")
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && matches!(self.bytes[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Result<(), String> {
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", byte as char, self.pos))
        }
    }

    fn object(&mut self) -> Result<Record, String> {
        let mut map = BTreeMap::new();
        self.eat(b'{')?;
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Record(map));
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.eat(b':')?;
            let value = self.scalar()?;
            map.insert(key, value);
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Record(map));
                }
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.pos)),
            }
        }
    }

    fn scalar(&mut self) -> Result<Json, String> {
        self.skip_ws();
        let rest = &self.bytes[self.pos..];
        for (word, value) in [("null", Json::Null), ("true", Json::Bool(true)), ("false", Json::Bool(false))]
        {
            if rest.starts_with(word.as_bytes()) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        match rest.first() {
            Some(b'"') => self.string().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => {
                let len = rest
                    .iter()
                    .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .count();
                self.pos += len;
                Ok(Json::Number(String::from_utf8(rest[..len].to_vec()).unwrap()))
            }
            _ => Err(format!("expected a JSON scalar at byte {}", self.pos)),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or("truncated \\u escape")?;
        let value = u32::from_str_radix(std::str::from_utf8(digits).map_err(|e| e.to_string())?, 16)
            .map_err(|e| format!("bad \\u escape: {e}"))?;
        self.pos += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.pos) else { return Err("unterminated string".into()) };
            self.pos += 1;
            match byte {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let Some(&escape) = self.bytes.get(self.pos) else {
                        return Err("truncated escape".into());
                    };
                    self.pos += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err("lone high surrogate".into());
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err("bad low surrogate".into());
                                }
                                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                high
                            };
                            char::from_u32(code).ok_or("escape is not a character")?
                        }
                        other => return Err(format!("unknown escape \\{}", other as char)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
    }
}

#[test]
fn json_records_parse() {
    let record = Record::parse(
        r#"{"type":"event","id":"17","data":"a\nb \u00e9\ud83c\udf89 ✓","n":-3,"ok":true,"x":null}"#,
    )
    .unwrap();
    assert_eq!(record.kind(), "event");
    assert_eq!(record.str("id"), Some("17"));
    assert_eq!(record.str("data"), Some("a\nb é🎉 ✓"));
    assert_eq!(record.int("n"), Some(-3));
    assert_eq!(record.0.get("ok"), Some(&Json::Bool(true)));
    assert_eq!(record.0.get("x"), Some(&Json::Null));
    assert!(Record::parse(r#"{"a":[1]}"#).is_err());
}
