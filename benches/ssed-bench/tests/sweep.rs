//! `ssed-bench sweep` end to end: ssed and a tiny Python SSE server (tests/tiny_sse_server.py),
//! both started by the sweep, plus a server that cannot start; two connection counts, one
//! repetition. The JSON lines, the Markdown table and the HTML report must hold the expected rows,
//! the failed server must be reported as failed (not as zeros), and the report, opened in headless
//! Chromium, must show its charts (a screenshot is decoded and checked for the servers' colours).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The sweep must finish within this (it takes about 20 s).
const SWEEP_DEADLINE: Duration = Duration::from_secs(180);
/// Chromium must have written its screenshot within this.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);
/// The chart colours of the first two servers (charts.rs' palette): ssed blue, tiny vermillion.
const SSED_BLUE: [u8; 3] = [0x00, 0x72, 0xB2];
const TINY_VERMILLION: [u8; 3] = [0xD5, 0x5E, 0x00];
/// Where the screenshot (1000 px wide) is past the servers' table: only charts below.
const CHARTS_FROM_ROW: usize = 1300;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ssed binary: `SSED_BIN`, else the workspace's debug build (`cargo build -p ssed-server`).
fn ssed_binary() -> PathBuf {
    let path = std::env::var_os("SSED_BIN").map_or_else(|| repo().join("target/debug/ssed"), PathBuf::from);
    assert!(path.is_file(), "needs {}: run `cargo build -p ssed-server` (or set SSED_BIN)", path.display());
    path
}

/// Finds a program on PATH, or fails the test saying how to install it.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("needs {name} on PATH: install it with .ci/external-deps.sh"))
}

/// Waits for `child` until `deadline`, killing it (and failing) if it overruns.
fn wait_bounded(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ssed-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of `"key":` in a flat JSON line, as text.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map(|e| e + 2)?
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim_matches('"'))
}

/// Of the rows of `png` from `first_row` down: how many pixels are within a few levels of `rgb`,
/// how many are not near-white, and how many there are.
fn count_pixels(png: &Path, first_row: usize, rgb: [u8; 3]) -> (usize, usize, usize) {
    let decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).expect("open screenshot")));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let near = |a: u8, b: u8| a.abs_diff(b) <= 12;
    let (mut matching, mut inked, mut total) = (0, 0, 0);
    let row_bytes = info.width as usize * channels;
    for px in buf[..info.buffer_size()].chunks_exact(channels).skip(first_row * row_bytes / channels) {
        total += 1;
        if px[..3].iter().any(|&c| c < 235) {
            inked += 1;
        }
        if near(px[0], rgb[0]) && near(px[1], rgb[1]) && near(px[2], rgb[2]) {
            matching += 1;
        }
    }
    (matching, inked, total)
}

#[test]
#[ignore = "needs target/debug/ssed, python3 and chromium: run by .ci/run"]
fn sweep_of_two_servers_reports_json_markdown_and_html_with_charts() {
    let ssed = ssed_binary();
    let python = program("python3");
    let chromium = program("chromium");
    let scratch = Scratch::new("sweep-test");
    // In a directory that does not exist yet: the sweep makes it.
    let out_dir = scratch.0.join("out");
    let report = out_dir.join("density.html");
    let tiny = repo().join("benches/ssed-bench/tests/tiny_sse_server.py");
    let mut sweep = Command::new(env!("CARGO_BIN_EXE_ssed-bench"))
        .arg("sweep")
        .arg("--server")
        .arg(format!("ssed={} --listen 127.0.0.1:{{port}} --heartbeat 0", ssed.display()))
        .arg("--server")
        .arg(format!("tiny={} {} {{port}}", python.display(), tiny.display()))
        .arg("--server")
        .arg("broken=/bin/false {port}")
        .args(["--connections", "100,300", "--events", "20", "--rate", "20", "--reps", "1"])
        .args(["--settle", "0.5", "--drain", "5", "--no-pin"])
        .arg("--report")
        .arg(&report)
        .arg("--svg-dir")
        .arg(scratch.0.join("svg"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssed-bench sweep");
    let stdout = sweep.stdout.take().unwrap();
    let stderr = sweep.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = wait_bounded(&mut sweep, SWEEP_DEADLINE, "the sweep");
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.code(), Some(1), "a server that failed to start makes the exit status 1; {context}");

    // One JSON line per run: 2 counts x (floor + 2 patterns x 3 servers).
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 2 * (1 + 2 * 3), "{context}");
    let jsonl = std::fs::read_to_string(out_dir.join("density.jsonl")).expect("the .jsonl beside the report");
    assert_eq!(jsonl.lines().collect::<Vec<_>>(), lines, "the .jsonl holds the same lines");
    for n in ["100", "300"] {
        let at_n: Vec<&&str> = lines.iter().filter(|l| field(l, "n") == Some(n)).collect();
        let floor = at_n.iter().find(|l| field(l, "server") == Some("floor")).expect("a floor line");
        assert!(field(floor, "cpu_us_per_write").is_some_and(|v| v.parse::<f64>().unwrap() > 0.0), "{floor}");
        for server in ["ssed", "tiny"] {
            for pattern in ["paced", "burst"] {
                let line = at_n
                    .iter()
                    .find(|l| field(l, "server") == Some(server) && field(l, "pattern") == Some(pattern))
                    .unwrap_or_else(|| panic!("no {server} {pattern} line at {n}; {context}"));
                assert_eq!(field(line, "held"), Some(n), "{line}");
                assert_eq!(
                    field(line, "deliveries"),
                    Some(&*format!("{}", n.parse::<u32>().unwrap() * 20)),
                    "{line}"
                );
                for zero in ["missing", "duplicates", "out_of_order"] {
                    assert_eq!(field(line, zero), Some("0"), "{zero} in {line}");
                }
                assert!(field(line, "bytes_per_subscriber").is_some_and(|v| v != "null"), "{line}");
            }
        }
        let broken: Vec<&&&str> = at_n.iter().filter(|l| field(l, "server") == Some("broken")).collect();
        assert_eq!(broken.len(), 2, "{context}");
        for line in broken {
            assert!(field(line, "start_failed").is_some_and(|w| w.contains("exited")), "{line}");
            assert!(field(line, "held").is_none(), "no figures for a server that did not start: {line}");
        }
    }

    // The Markdown table: a row per server and count, the floor's, and the failure as a failure.
    let markdown = std::fs::read_to_string(out_dir.join("density.md")).expect("the .md beside the report");
    for n in ["100", "300"] {
        assert!(markdown.contains(&format!("| floor (bare writes) | {n} |")), "{markdown}");
        for server in ["ssed", "tiny"] {
            let row = markdown
                .lines()
                .find(|l| l.starts_with(&format!("| {server} | {n} |")))
                .unwrap_or_else(|| panic!("no {server} row at {n}: {markdown}"));
            assert!(row.contains(" B") && row.contains(" µs") && row.contains(" ms"), "{row}");
        }
        let row =
            markdown.lines().find(|l| l.starts_with(&format!("| broken | {n} |"))).expect("a broken row");
        assert!(row.contains("failed (2 of 2 runs): failed to start: exited"), "{row}");
        assert!(!row.contains(" B ") && !row.contains("µs"), "no figures for it: {row}");
    }

    // The HTML report: self-contained, four charts, the machine and the command.
    let html = std::fs::read_to_string(&report).expect("the report");
    assert_eq!(html.matches("<svg").count(), 4, "four charts");
    assert!(!html.contains("<script") && !html.contains("src="), "nothing loaded from elsewhere");
    for needle in
        ["RLIMIT_NOFILE", "kernel", "tiny_sse_server.py {port}", "broken=/bin/false", "failed to start"]
    {
        assert!(html.contains(needle), "the report names {needle:?}");
    }
    for svg in ["rss-per-subscriber", "cpu-per-delivery", "latency", "deliveries-per-second"] {
        let text =
            std::fs::read_to_string(scratch.0.join(format!("svg/{svg}.svg"))).expect("--svg-dir files");
        assert!(text.contains("subscribers (connections held)"), "{svg} has its x axis");
    }
    // None of the servers the sweep started is left behind.
    let servers_log = std::fs::read_to_string(out_dir.join("density.servers.log")).unwrap();
    assert_eq!(servers_log.matches("== ssed:").count(), 4, "a fresh ssed for each of the 4 runs");

    // Headless Chromium renders the report; the screenshot shows the charts in the servers' colours.
    let shot = scratch.0.join("shot.png");
    let mut browser = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", scratch.0.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1000,2600")
        .arg(format!("file://{}", report.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromium");
    let status = wait_bounded(&mut browser, BROWSER_DEADLINE, "chromium");
    assert!(status.success() && shot.is_file(), "chromium wrote no screenshot ({status})");
    // Below the servers' table (whose colour swatches would count too): the charts only.
    let (blue, inked, total) = count_pixels(&shot, CHARTS_FROM_ROW, SSED_BLUE);
    let (vermillion, _, _) = count_pixels(&shot, CHARTS_FROM_ROW, TINY_VERMILLION);
    assert!(inked * 50 > total, "the page is not blank: {inked} of {total} pixels inked");
    assert!(blue > 1000, "ssed's lines and points are drawn: {blue} pixels of its colour");
    assert!(vermillion > 1000, "tiny's lines and points are drawn: {vermillion} pixels of its colour");
}

/// The PIDs the sweep gave its started servers named `name`, from its servers' log.
fn server_pids(log: &Path, name: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let prefix = format!("== {name} is pid ");
    text.lines().filter_map(|l| l.strip_prefix(&prefix)?.split(' ').next()?.parse().ok()).collect()
}

#[test]
#[ignore = "needs target/debug/ssed: run by .ci/run"]
fn ctrl_c_stops_the_started_server_and_writes_what_was_measured() {
    let ssed = ssed_binary();
    let scratch = Scratch::new("sweep-interrupt");
    let report = scratch.0.join("cut.html");
    // A quick burst run, then a paced one that would take 50 s: Ctrl-C comes during the second.
    let mut sweep = Command::new(env!("CARGO_BIN_EXE_ssed-bench"))
        .arg("sweep")
        .arg("--server")
        .arg(format!("ssed={} --listen 127.0.0.1:{{port}} --heartbeat 0", ssed.display()))
        .args(["--connections", "200", "--patterns", "burst,paced", "--events", "100", "--rate", "2"])
        .args(["--reps", "1", "--no-floor", "--no-pin", "--settle", "0.2"])
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ssed-bench sweep");
    let log = scratch.0.join("cut.servers.log");
    let until = Instant::now() + SWEEP_DEADLINE;
    let paced_server = loop {
        if let [_, second] = server_pids(&log, "ssed")[..] {
            break second;
        }
        if Instant::now() >= until || sweep.try_wait().unwrap().is_some() {
            let _ = sweep.kill();
            panic!(
                "the second run's server never started: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(Path::new(&format!("/proc/{paced_server}")).exists(), "the paced run's server is up");
    // What a terminal's Ctrl-C sends; the servers lead process groups of their own, so only the
    // sweep gets it, and it is the sweep's job to stop them.
    let kill = Command::new("kill").args(["-INT", &sweep.id().to_string()]).status().expect("run kill");
    assert!(kill.success());
    let status = wait_bounded(&mut sweep, Duration::from_secs(30), "the interrupted sweep");
    assert_eq!(status.code(), Some(130), "interrupted");
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    assert!(gone(paced_server), "the server the sweep started ({paced_server}) was stopped");

    // The burst run, finished before Ctrl-C, is in the report; the cut paced run is not.
    let markdown = std::fs::read_to_string(scratch.0.join("cut.md")).expect("the table was written");
    let row = markdown.lines().find(|l| l.starts_with("| ssed | 200 |")).expect("a row for ssed");
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(
        cells[7].chars().next().is_some_and(|c| c.is_ascii_digit()),
        "burst deliveries/s measured: {row}"
    );
    assert_eq!(cells[4], "-", "no paced CPU figure from the interrupted run: {row}");
    let html = std::fs::read_to_string(&report).expect("the report was written");
    assert!(html.contains("Interrupted (Ctrl-C)"), "the report says it was cut short");
}
