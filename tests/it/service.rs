//! The `ssed` binary as a service: socket activation, sd_notify readiness/watchdog/stopping, signals,
//! journald-style logging. These run the built binary as a child process.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Instant;

use crate::child::*;
use crate::support::{connect, id_data, publish, Subscriber, DEADLINE};

#[test]
fn notifies_ready_watchdog_and_stopping_and_exits_cleanly_on_sigterm() {
    let path = std::env::temp_dir().join(format!("ssed-notify-it-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let notify = UnixDatagram::bind(&path).unwrap();
    let mut command = base_command();
    command
        .args(["--listen", "127.0.0.1:0", "--heartbeat", "0"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000");
    let mut proc = Proc::spawn(command);
    let addr = proc.listening_addr();

    let mut received = Vec::new();
    recv_until(&notify, "READY=1", &mut received);
    let pings_before = received.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    // At 200 ms, pings come every 100 ms; wait for two more to show they are periodic.
    let deadline = Instant::now() + DEADLINE;
    while received.iter().filter(|m| m.contains("WATCHDOG=1")).count() < pings_before + 2 {
        assert!(Instant::now() < deadline);
        let mut buf = [0u8; 1024];
        notify.set_read_timeout(Some(DEADLINE)).unwrap();
        let n = notify.recv(&mut buf).expect("watchdog pings keep coming");
        received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }

    let mut sub = Subscriber::open(addr, "/events?topic=t", "");
    let id = publish(addr, "topic=t", "before the end");
    assert_eq!(id_data(&sub.next_event()), (id, "before the end".to_string()));
    // "1 subscriber,", not "1 subscribers,".
    recv_until(&notify, "STATUS=1 subscriber,", &mut received);

    proc.signal("TERM");
    recv_until(&notify, "STOPPING=1", &mut received);
    let tail = sub.read_to_end();
    assert!(sub.clean_end(), "the stream ends with the terminating chunk after {tail:?}");
    let status = proc.wait_exit();
    assert_eq!(status.code(), Some(0), "a graceful shutdown exits 0");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn logs_with_syslog_priorities_under_journald() {
    let mut command = base_command();
    command.args(["--listen", "127.0.0.1:0"]).env("JOURNAL_STREAM", "8:12345");
    let mut proc = Proc::spawn(command);
    let line = proc.wait_for_line("listening on ");
    assert!(line.starts_with("<6>"), "info lines carry <6>: {line:?}");
    assert!(!line.contains("Z "), "no timestamp of our own under journald: {line:?}");
    let addr = listening_addr_from(&line);
    // A refused request logs at info too, without any token in it.
    let mut stream = connect(addr);
    stream.write_all(b"GET /nowhere HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n").unwrap();
    let refused = proc.wait_for_line("refused");
    assert!(refused.starts_with("<6>") && !refused.contains("s3cret"), "{refused:?}");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

#[test]
fn a_second_signal_exits_at_once() {
    // A subscriber that never reads keeps a graceful shutdown waiting for its bytes (up to a long
    // --shutdown-timeout); the second SIGTERM must not wait for that.
    let mut command = base_command();
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--shutdown-timeout",
        "60",
        "--max-body",
        "1048576",
        "--max-lag",
        "268435456",
        "--history-bytes",
        "268435456",
    ]);
    let mut proc = Proc::spawn(command);
    let addr = proc.listening_addr();
    let _stuck = Subscriber::open(addr, "/events?topic=t", "");
    let body = "x".repeat(1 << 20);
    for _ in 0..48 {
        publish(addr, "topic=t", &body);
    }
    proc.signal("TERM");
    proc.wait_for_line("shutting down");
    assert!(proc.child.try_wait().unwrap().is_none(), "still flushing to the stuck subscriber");
    proc.signal("TERM");
    let status = proc.wait_exit();
    assert_ne!(status.code(), Some(0), "the second signal is not a clean exit");
}

#[test]
#[ignore = "needs systemd-socket-activate (Debian package systemd): run by .ci/run"]
fn serves_on_a_socket_passed_by_systemd() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut command = Command::new("systemd-socket-activate");
    command
        .args(["-l", &format!("127.0.0.1:{port}"), "--fdname=ssed", "-E", "RUST_LOG=info", BIN])
        .args(["--listen", "127.0.0.1:1"]);
    let mut proc = Proc::spawn(command);
    proc.wait_for_line("Listening on");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The first connection makes systemd-socket-activate exec ssed with the socket as fd 3.
    let mut sub = Subscriber::open(addr, "/events?topic=t", "");
    let line = proc.wait_for_line("passed by systemd");
    assert!(line.contains("--listen is ignored"), "{line}");
    let id = publish(addr, "topic=t", "through the inherited socket");
    assert_eq!(id_data(&sub.next_event()), (id, "through the inherited socket".to_string()));
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// Every `file:` page the unit's `Documentation=` names is put in place by the README's install
/// steps, so `systemctl help ssed` and `systemctl status` point at something that exists.
#[test]
fn the_units_documentation_is_installed_by_the_readme_steps() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let unit = std::fs::read_to_string(format!("{root}/systemd/ssed.service")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    // The destination of each `install ... DEST` line, with its comment cut off.
    let installed: Vec<&str> = readme
        .lines()
        .filter(|line| line.starts_with("install "))
        .filter_map(|line| line.split('#').next().unwrap().split_whitespace().last())
        .collect();
    let pages: Vec<&str> = unit
        .lines()
        .filter_map(|line| line.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!pages.is_empty(), "the unit names its documentation");
    for page in pages {
        let Some(path) = page.strip_prefix("file://") else { continue };
        assert!(installed.contains(&path), "{path} is not installed by the README's steps {installed:?}");
    }
}
