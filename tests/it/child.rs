//! Running the built `ssed` binary as a child process: spawn it, read its log, signal it, measure it
//! through `/proc`, and talk to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::support::{eventually, DEADLINE};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ssed");

/// The `ssed` binary (or a wrapper such as `prlimit … BIN` that execs it in place) running as a
/// child process, with its stderr collected line by line; killed (by its own PID) when dropped.
pub struct Proc {
    pub child: Child,
    stderr: Arc<Stderr>,
}

/// The child's stderr lines so far, and whether the pipe has ended (the process has exited).
#[derive(Default)]
struct Stderr {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Proc {
    /// Spawns `command` as it is (see [`base_command`]) with stderr piped; waits for nothing.
    pub fn spawn(mut command: Command) -> Proc {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("the binary starts");
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Stderr::default());
        let sink = stderr.clone();
        // Drained continuously: a child blocked on a full stderr pipe would look like a stuck loop.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lines.lock().unwrap().0.push(line);
                sink.changed.notify_all();
            }
            sink.lines.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        Proc { child, stderr }
    }

    /// Starts `ssed --listen 127.0.0.1:0 ARGS` with `RUST_LOG=info` (the "listening on" line is at
    /// info) and waits until it listens.
    pub fn start(args: &[&str]) -> Proc {
        Proc::start_with(Command::new(BIN), args, "info")
    }

    /// Starts `command` (the binary, or a wrapper such as `prlimit … BIN` that execs it in place) with
    /// `--listen 127.0.0.1:0 ARGS` and the log level given, and waits until it listens.
    pub fn start_with(mut command: Command, args: &[&str], log: &str) -> Proc {
        scrub_env(&mut command, log);
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        let started = Proc::spawn(command);
        started.listening_addr();
        started
    }

    /// Returns the first stderr line containing `needle`, waiting for it if it has not come yet;
    /// fails the test if stderr ends (the process exits) or [`DEADLINE`] passes without one.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut guard = self.stderr.lines.lock().unwrap();
        loop {
            let (lines, ended) = &*guard;
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(!ended, "ssed's stderr ended (it exited) before a line with {needle:?}: {lines:#?}");
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no stderr line with {needle:?}: {lines:#?}");
            guard = self.stderr.changed.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// The address from the "listening on ADDR" log line, waiting for that line if need be.
    pub fn listening_addr(&self) -> SocketAddr {
        listening_addr_from(&self.wait_for_line("listening on "))
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lines.lock().unwrap().0.clone()
    }

    /// The child's process id (of the wrapper, where one execs the binary in place: the same).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the signal `name` (`TERM`, `HUP`, …) to the child with `kill`.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to [`DEADLINE`] for the process to exit; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        assert!(
            eventually(|| {
                status = self.child.try_wait().unwrap();
                status.is_some()
            }),
            "the process did not exit in time"
        );
        status.unwrap()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.pid())).expect("/proc of the child")
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = self.proc_file("status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Open descriptors (entries of `/proc/PID/fd`).
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).expect("/proc/PID/fd").count()
    }

    /// User plus system CPU time consumed so far (`/proc/PID/stat` fields 14 and 15).
    pub fn cpu(&self) -> Duration {
        let stat = self.proc_file("stat");
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
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

/// `USER_HZ`, the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok().and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100)
}

/// Sets `RUST_LOG` and removes the systemd variables a test runner might pass down, so the child
/// neither notifies nor takes over sockets unless the test sets them again.
fn scrub_env(command: &mut Command, log: &str) {
    command
        .env("RUST_LOG", log)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("JOURNAL_STREAM");
}

/// The binary with `RUST_LOG=info` and no systemd variables, for [`Proc::spawn`].
pub fn base_command() -> Command {
    let mut command = Command::new(BIN);
    scrub_env(&mut command, "info");
    command
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
