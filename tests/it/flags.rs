//! Flags, environment variables and `Config` ranges: what the binary and the library refuse at start,
//! and that everything they accept runs without panicking.

use std::process::{Command, Output};
use std::time::Duration;

use ssed::{Config, Server};

use crate::child::*;
use crate::support::{get, id_data, post, publish, Subscriber, TestServer, DEADLINE};

/// `ssed` with no `SSED_*` variable from the test's own environment.
fn ssed() -> Command {
    let mut command = base_command();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SSED_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `ssed` and expects it to refuse its settings: exit status 2 and the stderr lines it printed.
fn refused(mut command: Command) -> String {
    command.arg("--listen").arg("127.0.0.1:0");
    let mut proc = Proc::spawn(command);
    let status = proc.wait_exit();
    let line = proc.wait_for_line("ssed: ");
    assert_eq!(status.code(), Some(2), "expected exit status 2; stderr: {line}");
    line
}

/// Runs a command that must end on its own (`--help`): a child that keeps running fails the test
/// (and is killed) instead of hanging it.
fn finished(command: Command) -> Output {
    let mut command = command;
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = command.spawn().expect("the binary starts");
    let id = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("waiting for the child"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(id.to_string()).status();
            panic!("ssed did not exit");
        }
    }
}

/// Every numeric flag with its largest accepted value, as `ssed --help` documents them.
fn ceilings() -> Vec<(&'static str, String)> {
    vec![
        ("--history", ssed::HISTORY_CEILING.to_string()),
        ("--history-bytes", ssed::BYTES_CEILING.to_string()),
        ("--heartbeat", ssed::TIMEOUT_CEILING.as_secs().to_string()),
        ("--retry-ms", ssed::RETRY_CEILING.as_millis().to_string()),
        ("--max-connections", ssed::CONNECTIONS_CEILING.to_string()),
        ("--max-body", ssed::BODY_CEILING.to_string()),
        ("--max-lag", ssed::BYTES_CEILING.to_string()),
        ("--header-timeout", ssed::TIMEOUT_CEILING.as_secs().to_string()),
        ("--keep-alive-timeout", ssed::TIMEOUT_CEILING.as_secs().to_string()),
        ("--max-lifetime", ssed::AGE_CEILING.as_secs().to_string()),
        ("--shutdown-timeout", ssed::TIMEOUT_CEILING.as_secs().to_string()),
        ("--history-age", ssed::AGE_CEILING.as_secs().to_string()),
    ]
}

/// `--heartbeat 18446744073709551615` used to be accepted and then abort the process at the first
/// stream ("overflow when adding duration to instant"); every numeric flag is now range-checked at
/// start, through the flag and through its variable alike.
#[test]
fn huge_numbers_exit_2_naming_the_flag_and_its_range() {
    for (flag, max) in ceilings() {
        let mut command = ssed();
        command.args([flag, &u64::MAX.to_string()]);
        let line = refused(command);
        assert!(line.contains(flag), "{flag}: {line}");
        assert!(line.contains("out of range") && line.contains(&format!(" to {max}")), "{flag}: {line}");

        let variable = format!("SSED_{}", flag.trim_start_matches('-').replace('-', "_").to_uppercase());
        let mut command = ssed();
        command.env(&variable, "99999999999999999999999");
        let line = refused(command);
        assert!(line.contains(flag) && line.contains(&variable) && line.contains(" to "), "{line}");
    }
}

/// The library's `Config` is public: one built in code with durations that cannot be added to an
/// `Instant` is refused by `Server::bind` and `Server::from_listener`, with the setting named.
#[test]
fn a_config_with_huge_values_is_refused_by_the_server() {
    let base = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let cases = [
        ("--heartbeat", Config { heartbeat: Duration::MAX, ..base.clone() }),
        ("--header-timeout", Config { header_timeout: Duration::MAX, ..base.clone() }),
        ("--keep-alive-timeout", Config { keep_alive_timeout: Duration::MAX, ..base.clone() }),
        ("--shutdown-timeout", Config { shutdown_timeout: Duration::MAX, ..base.clone() }),
        ("--max-lifetime", Config { max_lifetime: Duration::MAX, ..base.clone() }),
        ("--history-age", Config { history_age: Duration::MAX, ..base.clone() }),
        ("--max-connections", Config { max_connections: usize::MAX, ..base.clone() }),
        ("--max-lag", Config { max_lag: usize::MAX, ..base.clone() }),
    ];
    for (flag, config) in cases {
        let error = Server::bind(config.clone()).err().unwrap_or_else(|| panic!("{flag}: bind accepted it"));
        assert!(error.to_string().contains(flag), "{flag}: {error}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let error = Server::from_listener(config, listener)
            .err()
            .unwrap_or_else(|| panic!("{flag}: from_listener accepted it"));
        assert!(error.to_string().contains(flag), "{flag}: {error}");
    }
}

/// The largest `Config` the library accepts serves a stream and a publish and shuts down.
#[test]
fn a_config_at_every_ceiling_serves_and_stops() {
    let config = Config {
        history: ssed::HISTORY_CEILING,
        history_bytes: ssed::BYTES_CEILING as usize,
        heartbeat: ssed::TIMEOUT_CEILING,
        retry: ssed::RETRY_CEILING,
        max_connections: ssed::CONNECTIONS_CEILING,
        max_body: ssed::BODY_CEILING,
        max_lag: ssed::BYTES_CEILING as usize,
        header_timeout: ssed::TIMEOUT_CEILING,
        keep_alive_timeout: ssed::TIMEOUT_CEILING,
        max_lifetime: ssed::AGE_CEILING,
        shutdown_timeout: ssed::TIMEOUT_CEILING,
        history_age: ssed::AGE_CEILING,
        ..Config::default()
    };
    let server = TestServer::start(config);
    let mut sub = Subscriber::open(server.addr, "/events?topic=t", "");
    publish(server.addr, "topic=t", "at the ceiling");
    assert_eq!(sub.next_event().data, "at the ceiling");
    server.stop();
    assert!(sub.read_to_end().is_empty() && sub.clean_end(), "the stream ends cleanly at shutdown");
}

/// Every numeric flag at its largest accepted value: the binary starts, serves a stream and a
/// publish, and a SIGTERM ends it cleanly (the shutdown deadline is computed from the largest
/// `--shutdown-timeout`). The log says what to raise when the descriptor limit lowers
/// `--max-connections` (the hard limit: main raises the soft one to it), and counts one stream.
#[test]
fn every_numeric_flag_at_its_ceiling_serves_and_stops() {
    let mut command = ssed();
    command.args(["--listen", "127.0.0.1:0"]);
    for (flag, max) in ceilings() {
        command.args([flag, &max]);
    }
    let mut proc = Proc::spawn(command);
    let addr = proc.listening_addr();
    let lowered = proc.wait_for_line("max-connections lowered");
    assert!(lowered.contains("ulimit -Hn") && !lowered.contains("ulimit -n"), "{lowered}");
    let mut sub = Subscriber::open(addr, "/events?topic=t", "");
    let id = publish(addr, "topic=t", "at the ceiling");
    assert_eq!(id_data(&sub.next_event()), (id, "at the ceiling".to_string()));
    proc.signal("TERM");
    let line = proc.wait_for_line("streams to end");
    assert!(line.contains("streams to end: 1"), "{line}");
    sub.read_to_end();
    assert!(sub.clean_end(), "the stream ends with the terminating chunk");
    drop(sub);
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// An invalid variable no longer blocks `--help`, nor a flag that overrides it.
#[test]
fn help_and_overriding_flags_win_over_a_bad_variable() {
    let mut command = ssed();
    command.env("SSED_HISTORY", "-5").arg("--help");
    let output = finished(command);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: ssed"));

    let mut command = ssed();
    command.env("SSED_HISTORY", "-5").args(["--history", "10", "--listen", "127.0.0.1:0"]);
    let proc = Proc::spawn(command);
    let addr = proc.listening_addr();
    let mut sub = Subscriber::open(addr, "/events?topic=t", "");
    let id = publish(addr, "topic=t", "flag wins");
    assert_eq!(id_data(&sub.next_event()), (id, "flag wins".to_string()));

    let mut command = ssed();
    command.env("SSED_HISTORY", "-5");
    let line = refused(command);
    assert!(line.contains("SSED_HISTORY") && line.contains("out of range"), "{line}");
}

/// Empty and blank variables, as an `EnvironmentFile=` writes them, count as unset.
#[test]
fn empty_variables_count_as_unset() {
    let mut command = ssed();
    for variable in ["SSED_HISTORY", "SSED_MAX_BODY", "SSED_CORS_ORIGIN", "SSED_FSYNC", "SSED_DATA_DIR"] {
        command.env(variable, "");
    }
    command.env("SSED_HEARTBEAT", "  ").args(["--listen", "127.0.0.1:0"]);
    let proc = Proc::spawn(command);
    proc.listening_addr();
}

/// `--fsync` without `--data-dir` would promise durability for a history kept in memory only.
#[test]
fn fsync_without_a_data_dir_is_refused() {
    let mut command = ssed();
    command.args(["--fsync", "never"]);
    let line = refused(command);
    assert!(line.contains("--fsync") && line.contains("--data-dir"), "{line}");
    let mut command = ssed();
    command.env("SSED_FSYNC", "always");
    let line = refused(command);
    assert!(line.contains("SSED_FSYNC") && line.contains("--data-dir"), "{line}");
}

/// A configured origin is compared with the browser's `Origin` byte for byte, and a browser sends
/// `scheme://host[:port]`: a path, a trailing slash or a missing scheme could never match.
#[test]
fn cors_origins_no_browser_sends_are_refused() {
    for origin in ["https://app.example.com/", "https://app.example.com/app", "app.example.com"] {
        let mut command = ssed();
        command.args(["--cors-origin", origin]);
        let line = refused(command);
        assert!(line.contains(origin) && line.contains("scheme://host[:port]"), "{line}");
    }
    let mut command = ssed();
    command.env("SSED_CORS_ORIGIN", "https://ok.example, https://bad.example/");
    let line = refused(command);
    assert!(line.contains("https://bad.example/"), "{line}");
    for origin in ["*", "https://app.example.com", "http://localhost:3000"] {
        let config = Config { cors_origins: vec![origin.into()], ..Config::default() };
        TestServer::start(config).stop();
    }
}

/// Sizes take binary units in flags and variables: `1K` is 1024 bytes, so a 1024-byte body is
/// published and a 1025-byte one gets 413.
#[test]
fn sizes_take_binary_units() {
    for (flag, variable) in [(Some("1K"), None), (None, Some("1KiB"))] {
        let mut command = ssed();
        command.args(["--listen", "127.0.0.1:0", "--max-lag", "64KiB", "--history-bytes", "1MiB"]);
        if let Some(value) = flag {
            command.args(["--max-body", value]);
        }
        if let Some(value) = variable {
            command.env("SSED_MAX_BODY", value);
        }
        let proc = Proc::spawn(command);
        let addr = proc.listening_addr();
        publish(addr, "topic=t", "x".repeat(1024));
        let answer = post(addr, "/events?topic=t", "", "x".repeat(1025).as_bytes());
        assert_eq!(answer.status, 413, "{answer:?}");
    }
}

/// The shipped environment file's example values are all accepted, units included (with the data
/// directory and address overridden by flags, which win), and it mentions every variable
/// `ssed --help` lists.
#[test]
fn the_environment_file_examples_are_accepted() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../systemd/ssed.env")).unwrap();
    let examples: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| line.strip_prefix('#')?.split_once('='))
        .filter(|(name, _)| name.starts_with("SSED_"))
        .collect();
    let mut help = ssed();
    help.arg("--help");
    let help = String::from_utf8(finished(help).stdout).unwrap();
    for variable in help.split("[env: ").skip(1).filter_map(|rest| rest.split_once(']')).map(|(v, _)| v) {
        assert!(examples.iter().any(|(name, _)| *name == variable), "{variable} missing from ssed.env");
    }
    let dir = std::env::temp_dir().join(format!("ssed-it-envfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The TLS examples name the host's certificate files and a public address: tests/it/tls.rs starts
    // ssed with certificates of its own instead.
    let examples = examples.iter().copied().filter(|(name, _)| !name.starts_with("SSED_TLS_"));
    let mut command = ssed();
    command.envs(examples).args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(&dir);
    let proc = Proc::spawn(command);
    let addr = proc.listening_addr();
    let answer = get(addr, "/health", "");
    assert_eq!(answer.status, 200, "{answer:?}");
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
}
