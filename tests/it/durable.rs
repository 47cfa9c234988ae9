//! Durable history (`--data-dir`): restarts, crashes, damaged segments, retention, a full disk.
//! These run the built binary as a child so it can be stopped, killed and restarted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::child::*;
use crate::support::*;

fn start(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut command = base_command();
    command.args(["--listen", "127.0.0.1:0", "--heartbeat", "0", "--data-dir"]).arg(dir).args(extra);
    let proc = Proc::spawn(command);
    let addr = proc.listening_addr();
    (proc, addr)
}

/// Everything retained for topic `t` after `last` (or all of it), as `(id, data)` pairs, read up to
/// a marker published after the replay.
fn replay(addr: SocketAddr, last: Option<u64>) -> Vec<(u64, String)> {
    // Markers of earlier replays are stored events too; they are not part of what the tests check.
    parse_events(&resume_text(addr, last)).into_iter().filter(|(_, data)| data != "__end__").collect()
}

/// `(id, data)` of every event with an id in an SSE body (single-line data).
fn parse_events(text: &str) -> Vec<(u64, String)> {
    let mut events = Vec::new();
    let mut id = None;
    for line in text.split('\n') {
        if let Some(value) = line.strip_prefix("id: ") {
            id = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("data: ") {
            if let Some(id) = id.take() {
                events.push((id, value.to_string()));
            }
        }
    }
    events
}

#[test]
fn a_restart_keeps_the_history_and_ids_keep_growing() {
    let dir = TempDir::new("restart");
    let (mut proc, addr) = start(&dir.0, &[]);
    let ids: Vec<u64> = (0..5).map(|i| publish(addr, "topic=t", format!("before-{i}"))).collect();
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));

    let (mut proc, addr) = start(&dir.0, &[]);
    proc.wait_for_line("loaded 5 events");
    let replayed = replay(addr, Some(ids[1]));
    let expected: Vec<(u64, String)> = (2..5).map(|i| (ids[i], format!("before-{i}"))).collect();
    assert_eq!(replayed, expected, "exactly the events after the resume point, no gap notice needed");
    let after: u64 = publish(addr, "topic=t", "after");
    assert!(after > ids[4], "ids continue above the history on disk");
    let all = replay(addr, Some(ids[4]));
    assert_eq!(all.first(), Some(&(after, "after".to_string())));
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// Publishes `n`, `n+1`, ... on one keep-alive connection until the connection breaks; returns the
/// acknowledged `(id, data)` pairs and the data of the request in flight when it broke, if any.
fn publish_until_broken(addr: SocketAddr, first: usize) -> (Vec<(u64, String)>, Option<String>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut acked = Vec::new();
    for n in first.. {
        let body = format!("event-{n}");
        let request =
            format!("POST /events?topic=t HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if stream.write_all(request.as_bytes()).is_err() {
            return (acked, Some(body));
        }
        let mut response = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return (acked, Some(body)),
                Ok(k) => response.extend_from_slice(&buf[..k]),
            }
            if response.ends_with(b"\n") && response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let id = text.rsplit("\r\n\r\n").next().unwrap().trim().parse().unwrap();
        acked.push((id, body));
    }
    unreachable!()
}

#[test]
fn a_crash_loses_no_acknowledged_event_with_fsync_always() {
    let dir = TempDir::new("crash");
    let mut acked_all: Vec<(u64, String)> = Vec::new();
    let mut in_doubt: Vec<String> = Vec::new();
    let mut seed = u64::from(std::process::id()) | 1;
    for round in 0..5 {
        let (mut proc, addr) = start(&dir.0, &["--fsync", "always"]);
        let publisher = std::thread::spawn(move || publish_until_broken(addr, round * 1_000_000));
        // Kill at a random point: after a random number of acknowledged publishes.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = Duration::from_millis(20 + seed % 200);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            std::thread::yield_now();
        }
        proc.child.kill().unwrap();
        proc.wait_exit();
        let (acked, doubt) = publisher.join().unwrap();
        assert!(!acked.is_empty() || round > 0 || doubt.is_some());
        acked_all.extend(acked);
        in_doubt.extend(doubt);
    }
    let (mut proc, addr) = start(&dir.0, &["--fsync", "always"]);
    let stored = replay(addr, Some(0)).into_iter().filter(|(_, data)| data != "__end__").collect::<Vec<_>>();
    // Every acknowledged event is there, with its id, in order.
    let by_id: HashMap<u64, &String> = stored.iter().map(|(id, data)| (*id, data)).collect();
    for (id, data) in &acked_all {
        assert_eq!(by_id.get(id), Some(&data), "acknowledged event {id} ({data}) is missing or changed");
    }
    assert!(stored.windows(2).all(|w| w[0].0 < w[1].0), "ids in order");
    // Nothing is stored twice under different ids, and nothing appears that was never sent.
    let mut seen = std::collections::HashSet::new();
    for (_, data) in &stored {
        assert!(seen.insert(data.clone()), "{data} stored twice");
        assert!(acked_all.iter().any(|(_, d)| d == data) || in_doubt.contains(data), "{data} was never sent");
    }
    eprintln!(
        "crash test: {} acknowledged, {} stored, {} in doubt",
        acked_all.len(),
        stored.len(),
        in_doubt.len()
    );
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

#[test]
fn damage_at_the_end_of_the_last_segment_is_cut_off_and_logged() {
    let dir = TempDir::new("damage");
    let (mut proc, addr) = start(&dir.0, &[]);
    let ids: Vec<u64> = (0..4).map(|i| publish(addr, "topic=t", format!("kept-{i}"))).collect();
    proc.signal("TERM");
    proc.wait_exit();

    // A torn final record: the file ends in the middle of it.
    let segment = last_segment(&dir.0);
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 5).unwrap();
    let (mut proc, addr) = start(&dir.0, &[]);
    let line = proc.wait_for_line("cutting off");
    assert!(line.contains("cut short"), "{line}");
    let stored = replay(addr, Some(0));
    let expected: Vec<(u64, String)> = (0..3).map(|i| (ids[i], format!("kept-{i}"))).collect();
    assert_eq!(stored, expected, "the torn record is never served");
    proc.signal("TERM");
    proc.wait_exit();

    // A flipped bit inside the (now) last record, which holds the marker from the replay above.
    let segment = last_segment(&dir.0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let (mut proc, addr) = start(&dir.0, &[]);
    let line = proc.wait_for_line("cutting off");
    assert!(line.contains("checksum"), "{line}");
    assert_eq!(replay(addr, Some(0)), expected);
    proc.signal("TERM");
    proc.wait_exit();
}

/// Bytes of the files in `dir`; a file the server deletes while it is being listed counts as gone.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

#[test]
fn retention_deletes_old_segments() {
    let dir = TempDir::new("retention");
    // Segments are at least 1 MiB; a 2 MiB history of ~4 KiB events rolls several of them. Each
    // answer comes after the turn's commit, which also deletes what left the history, so every
    // measurement below sees the directory as retention left it.
    let (mut proc, addr) =
        start(&dir.0, &["--history-bytes", "2097152", "--max-body", "8192", "--max-lag", "65536"]);
    let body = "x".repeat(4000);
    let mut conn = Conn::open(addr);
    let mut largest = 0;
    for _ in 0..3000 {
        conn.publish("topic=t", body.as_bytes());
        largest = largest.max(dir_bytes(&dir.0));
    }
    let published = 3000 * 4000;
    let on_disk = dir_bytes(&dir.0);
    eprintln!("retention: {published} bytes published, {on_disk} on disk at the end, {largest} at most");
    assert!(largest < 4 << 20, "the directory stays near the history limit, not the bytes published");
    proc.signal("TERM");
    proc.wait_exit();
}

#[test]
#[ignore = "needs root to mount a small tmpfs: run by .ci/run"]
fn a_full_disk_refuses_publishes_and_recovers() {
    let dir = TempDir::new("full");
    let mount = dir.0.join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    let status =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mount).status().unwrap();
    assert!(status.success(), "mounting a tmpfs failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let data = mount.join("history");
    let (mut proc, addr) = start(&data, &[]);
    let mut sub = Subscriber::open(addr, "/events?topic=t", "");
    // Fill the disk with a file of our own, leaving only a little room.
    let filler = mount.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    drop(file);

    let mut refused = None;
    for i in 0..200 {
        let body = format!("fill-{i}-{}", "y".repeat(2000));
        let response = post(addr, "/events?topic=t", "", body.as_bytes());
        if response.status == 503 {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("a publish is refused once the disk is full");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert!(refused.body_text().contains("No space left on device"), "{refused:?}");
    // Subscribers are still served: the health check answers and the stream is open.
    let answer = get(addr, "/health", "");
    assert_eq!(answer.status, 200, "{answer:?}");

    // Room again: publishing works and the subscriber gets the event.
    std::fs::remove_file(&filler).unwrap();
    let id = publish(addr, "topic=t", "room again");
    // The publishes that filled the disk came first on this stream.
    let room = (id, "room again".to_string());
    while id_data(&sub.next_event()) != room {}
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// Reads a stream of topic `t` (HTTP/1.0, so unchunked) resumed after `last` (or from the start)
/// up to a marker published after it: the raw SSE text.
fn resume_text(addr: SocketAddr, last: Option<u64>) -> String {
    let mut stream = connect(addr);
    let header = last.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    write!(stream, "GET /events?topic=t HTTP/1.0\r\n{header}\r\n").unwrap();
    // Publish a marker so we know where the replay ends, without waiting on a timeout.
    let marker = publish(addr, "topic=t", "__end__");
    String::from_utf8(read_until(&mut stream, format!("id: {marker}\n").as_bytes())).unwrap()
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// Publishes `count` events of 4000 bytes (`00000-xxx…`, numbered) on one connection; their ids.
fn publish_numbered(addr: SocketAddr, count: usize) -> Vec<u64> {
    let mut conn = Conn::open(addr);
    (0..count).map(|i| conn.publish("topic=t", format!("{i:05}-{}", "x".repeat(3994)).as_bytes())).collect()
}

/// Item: a bit flip in the middle of an older segment used to truncate every intact record after
/// it (megabytes) and leave a hole that a resume crossed silently.
#[test]
fn damage_in_an_older_segment_keeps_the_records_after_it_and_resumes_across_it_get_a_gap() {
    let dir = TempDir::new("older-damage");
    // 1 MiB segments (the smallest): 600 events of ~4 KiB fill two and start a third.
    let flags = ["--history-bytes", "4194304", "--max-body", "8192", "--max-lag", "8388608"];
    let (mut proc, addr) = start(&dir.0, &flags);
    let ids = publish_numbered(addr, 600);
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
    let segments = files_ending(&dir.0, ".seg");
    assert!(segments.len() >= 3, "{segments:?}");

    // Flip one bit in the data of event 100, in the middle of the oldest segment.
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let at = bytes.windows(6).position(|w| w == b"00100-").expect("event 100 is in the oldest segment");
    bytes[at + 2000] ^= 0x01;
    std::fs::write(first, &bytes).unwrap();
    let after_damage = bytes.len() - at;
    assert!(after_damage > 500_000, "the damage is mid-file: {after_damage} bytes after it");

    let (mut proc, addr) = start(&dir.0, &flags);
    let line = proc.wait_for_line("damaged");
    assert!(line.contains("ERROR") && line.contains("checksum"), "{line}");
    eprintln!("older-segment damage: {after_damage} bytes after the flipped bit; log: {line}");
    proc.wait_for_line("durable history on");
    let damaged = files_ending(&dir.0, ".damaged");
    assert_eq!(damaged.len(), 1, "the damaged file is kept aside");
    assert_eq!(std::fs::read(&damaged[0]).unwrap(), bytes, "byte for byte");

    // Every event after the damaged one is served; a resume from before the damage is told of it.
    let text = resume_text(addr, Some(ids[0]));
    assert!(text.contains("event: ssed-gap\n"), "{text:.300}");
    let served: Vec<(u64, String)> = parse_events(&text)
        .into_iter()
        .filter(|(_, data)| data != "__end__" && !data.starts_with('{'))
        .collect();
    let served_ids: Vec<u64> = served.iter().map(|(id, _)| *id).collect();
    assert_eq!(served_ids, ids[101..].to_vec(), "everything after the damaged event, nothing before");
    assert!(served.iter().zip(101..).all(|((_, data), i)| data.starts_with(&format!("{i:05}-"))));
    let text = resume_text(addr, Some(ids[99]));
    assert!(text.contains("event: ssed-gap\n"), "a resume from just before the damage: {text:.300}");
    // A resume after the hole needs no notice and gets exactly what follows.
    let text = resume_text(addr, Some(ids[300]));
    assert!(!text.contains("ssed-gap"), "{text:.300}");
    let after: Vec<u64> =
        parse_events(&text).into_iter().filter(|(_, d)| d != "__end__").map(|(id, _)| id).collect();
    assert_eq!(after, ids[301..].to_vec());
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));

    // The next start still begins after the hole, and logs no new damage.
    let (mut proc, addr) = start(&dir.0, &flags);
    let line = proc.wait_for_line("durable history on");
    assert!(line.contains(&format!("loaded {} events", 600 - 101 + 3)), "{line}");
    assert!(resume_text(addr, Some(ids[50])).contains("event: ssed-gap\n"));
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// Item: two processes on one data directory both answered 200, and a restart kept only the
/// second one's events. The second start must fail, naming the directory and the holder; a crash of
/// the holder frees the directory with no clean-up step.
#[test]
fn a_second_process_on_the_same_data_dir_is_refused_until_the_first_dies() {
    let dir = TempDir::new("lock");
    let (mut first, addr) = start(&dir.0, &[]);
    publish(addr, "topic=t", "from the first");
    let mut command = base_command();
    command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(&dir.0);
    let mut second = Proc::spawn(command);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(2), "refused");
    let line = second.wait_for_line("in use");
    assert!(line.contains(&dir.0.display().to_string()), "{line}");
    assert!(line.contains(&format!("pid {}", first.child.id())), "{line}");

    first.child.kill().unwrap(); // SIGKILL: no chance to clean up
    first.wait_exit();
    let (mut third, addr) = start(&dir.0, &[]);
    third.wait_for_line("loaded 1 event,");
    assert_eq!(replay(addr, Some(0)).len(), 1);
    third.signal("TERM");
    assert_eq!(third.wait_exit().code(), Some(0));
}

#[test]
fn a_second_server_in_one_process_on_the_same_data_dir_is_refused() {
    let dir = TempDir::new("lock-inproc");
    let config = ssed::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.0.clone()),
        ..ssed::Config::default()
    };
    let first = ssed::Server::bind(config.clone()).expect("the first server starts");
    let err = ssed::Server::bind(config.clone()).expect_err("the directory is taken");
    let text = err.to_string();
    assert!(text.contains(&dir.0.display().to_string()) && text.contains("in use"), "{text}");
    drop(first);
    // The lock goes with the last descriptor of its open file. Another test of this process that
    // forks a client at that moment holds a copy until the child's exec closes it (close-on-exec),
    // so the directory is free again within moments, not necessarily at once.
    assert!(
        eventually(|| ssed::Server::bind(config.clone()).is_ok()),
        "free again once the first server is gone"
    );
}

/// Item: `--history-age` left expired events in the active segment until it rolled over, and a
/// restart without the flag served them again. On a quiet server they must leave the disk too.
#[test]
fn history_age_removes_expired_events_from_disk_on_a_quiet_server() {
    let dir = TempDir::new("age");
    let (mut proc, addr) = start(&dir.0, &["--history-age", "1"]);
    publish(addr, "topic=t", "short-lived");
    let published = std::time::Instant::now();
    let on_disk = |dir: &Path| {
        files_ending(dir, ".seg")
            .iter()
            .any(|p| std::fs::read(p).unwrap().windows(11).any(|w| w == b"short-lived"))
    };
    assert!(on_disk(&dir.0), "stored first");
    // No further request of any kind: the server must wake up by itself.
    assert!(eventually(|| !on_disk(&dir.0)), "the expired event is still on disk");
    let gone_after = published.elapsed();
    eprintln!("history-age 1 s: the event left the disk {gone_after:?} after its publish");
    assert!(gone_after >= Duration::from_millis(900), "not before its age");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));

    let (mut proc, addr) = start(&dir.0, &[]);
    proc.wait_for_line("loaded 0 events");
    assert_eq!(replay(addr, Some(0)), Vec::new(), "nothing expired is served after a restart");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// Starts the binary with `args` and returns its exit code and its stderr lines' first match of
/// `needle`.
fn failing_start(args: &[&std::ffi::OsStr], needle: &str) -> (Option<i32>, String) {
    let mut command = base_command();
    command.args(["--listen", "127.0.0.1:0"]).args(args);
    let mut proc = Proc::spawn(command);
    let code = proc.wait_exit().code();
    (code, proc.wait_for_line(needle))
}

/// Item: `--data-dir` created missing parents silently, said "File exists" for a file, and
/// "listing the data directory :" for an empty path; a start said nothing about the history.
#[test]
fn data_dir_problems_are_named_and_a_start_says_what_it_loaded() {
    let base = TempDir::new("datadir");
    let nested = base.0.join("typo").join("history");
    let (code, line) = failing_start(&["--data-dir".as_ref(), nested.as_os_str()], "ssed: ");
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains(&nested.display().to_string()) && line.contains("parent"), "{line}");
    assert!(!base.0.join("typo").exists(), "no parent is created");

    let file = base.0.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let (code, line) = failing_start(&["--data-dir".as_ref(), file.as_os_str()], "ssed: ");
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("not a directory") && line.contains(&file.display().to_string()), "{line}");

    let (code, line) = failing_start(&["--data-dir".as_ref(), "".as_ref()], "ssed: ");
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("--data-dir is empty"), "{line}");

    // The last component is created, and the start says where, how and how much.
    let dir = base.0.join("history");
    let (mut proc, addr) = start(&dir, &["--fsync", "always"]);
    proc.wait_for_line("created the data directory");
    let line = proc.wait_for_line("durable history on");
    assert!(line.contains(&dir.display().to_string()) && line.contains("fsync always"), "{line}");
    assert!(line.contains("loaded 0 events"), "{line}");
    publish(addr, "topic=t", "one");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
    let (mut proc, addr) = start(&dir, &[]);
    let line = proc.wait_for_line("durable history on");
    assert!(line.contains("fsync batch") && line.contains("loaded 1 event,"), "{line}");
    publish(addr, "topic=t", "two");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
    let (mut proc, _) = start(&dir, &[]);
    let line = proc.wait_for_line("durable history on");
    assert!(line.contains("loaded 2 events"), "{line}");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// One record in the store's original (version 1) layout, written here from the layout in the
/// store's module doc rather than with the server's code: `[payload length u32][CRC-32 of the
/// payload u32][id u64][topic count u16][per topic: length u8, bytes][type length u8, bytes]
/// [retry flag u8, retry u64 if 1][data length u32, bytes]`, little endian.
fn v1_record(id: u64, topic: &str, event_type: &str, retry_ms: Option<u64>, data: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(&1u16.to_le_bytes());
    payload.push(u8::try_from(topic.len()).unwrap());
    payload.extend_from_slice(topic.as_bytes());
    payload.push(u8::try_from(event_type.len()).unwrap());
    payload.extend_from_slice(event_type.as_bytes());
    match retry_ms {
        Some(ms) => {
            payload.push(1);
            payload.extend_from_slice(&ms.to_le_bytes());
        }
        None => payload.push(0),
    }
    payload.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
    payload.extend_from_slice(data.as_bytes());
    let mut record = Vec::new();
    record.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

#[test]
fn a_data_dir_from_the_old_record_format_is_served_resumed_and_appended_to() {
    let dir = TempDir::new("v1");
    // Ids are wall-clock microseconds: events from a few seconds ago, as an older ssed left them.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    let now = u64::try_from(now).unwrap();
    let old: Vec<u64> = (0..3u64).map(|i| now - 3_000_000 + i * 1_000_000).collect();
    let mut bytes = v1_record(old[0], "t", "", None, "old-0");
    bytes.extend(v1_record(old[1], "t", "note", Some(2500), "old-1"));
    bytes.extend(v1_record(old[2], "t", "", None, "old-2"));
    let segment = dir.0.join(format!("{:020}.seg", old[0]));
    std::fs::write(&segment, &bytes).unwrap();

    let (mut proc, addr) = start(&dir.0, &[]);
    proc.wait_for_line("loaded 3 events");
    let text = resume_text(addr, Some(old[0]));
    assert!(
        text.contains(&format!("id: {}\nevent: note\nretry: 2500\ndata: old-1\n", old[1])),
        "the old event keeps its type and retry: {text}"
    );
    let expected_old: Vec<(u64, String)> = (1..3).map(|i| (old[i], format!("old-{i}"))).collect();
    assert_eq!(replay(addr, Some(old[0])), expected_old, "a resume from an old event");
    let new: Vec<u64> = (0..2).map(|i| publish(addr, "topic=t", format!("new-{i}"))).collect();
    assert!(new[0] > old[2], "ids continue above the old history");
    let expected_new: Vec<(u64, String)> = (0..2).map(|i| (new[i], format!("new-{i}"))).collect();
    assert_eq!(replay(addr, Some(old[2])), expected_new);
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
    let on_disk = std::fs::read(&segment).unwrap();
    assert!(on_disk.len() > bytes.len() && on_disk.starts_with(&bytes), "appended after the old records");

    // 3 old events, 2 new ones and the 3 markers the reads above published.
    let (mut proc, addr) = start(&dir.0, &[]);
    proc.wait_for_line("loaded 8 events");
    let mut expected = expected_old;
    expected.extend(expected_new);
    assert_eq!(replay(addr, Some(old[0])), expected, "both formats after a restart");
    let text = resume_text(addr, Some(old[0]));
    assert!(text.contains(&format!("id: {}\nevent: note\nretry: 2500\n", old[1])), "{text}");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}

/// `(id, data)` of the next `n` events of `sub`, ids as sent (a hub's are IRIs).
#[cfg(feature = "mercure")]
fn next_hub_events(sub: &mut Subscriber, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let event = sub.next_event();
            (event.id.expect("an id"), event.data)
        })
        .collect()
}

#[test]
#[cfg(feature = "mercure")]
fn hub_events_keep_their_custom_ids_and_privacy_across_a_restart() {
    use crate::mercure::{bearer, claims, detail, hub_publish, hub_url, token, SECRET};

    let dir = TempDir::new("hub-restart");
    let (mut proc, addr) = start(&dir.0, &["--jwt-key", SECRET]);
    let published: Vec<(String, &str)> = [
        (&[("topic", "https://example.com/books/1"), ("id", "urn:uuid:p0")][..], "p0"),
        (
            &[
                ("topic", "https://example.com/books/1"),
                ("topic", "https://example.com/users/42/books/1"),
                ("private", "on"),
                ("id", "urn:uuid:s1"),
            ][..],
            "s1",
        ),
        (&[("topic", "https://example.com/books/2")][..], "p2"),
        (&[("topic", "https://example.com/books/2"), ("private", "on"), ("id", "urn:uuid:s3")][..], "s3"),
    ]
    .into_iter()
    .map(|(pairs, data)| {
        let mut pairs = pairs.to_vec();
        pairs.push(("data", data));
        (hub_publish(addr, &pairs), data)
    })
    .collect();
    let generated = published[2].0.clone();
    assert!(generated.starts_with("urn:ssed:"), "{generated}");
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));

    let (_proc, addr) = start(&dir.0, &["--jwt-key", SECRET]);
    _proc.wait_for_line("loaded 4 events");
    let books = [("match_urlpattern", "https://example.com/books/:id")];
    let own =
        token(&claims(vec![detail(&["subscribe"], &[("https://example.com/users/42/*", "urlpattern")])]));
    let all = token(&claims(vec![detail(&["subscribe"], &[("*", "exact")])]));
    let from = |last: &str, auth: &str| {
        let sub = Subscriber::open(addr, &hub_url(&books), &format!("{auth}Last-Event-ID: {last}\r\n"));
        assert_eq!(
            sub.response.header("mercure-last-event-id"),
            Some(last),
            "{last} is known after the restart"
        );
        sub
    };
    let mut owner = from("urn:uuid:p0", &bearer(&own));
    let mut stranger = from("urn:uuid:p0", "");
    let mut everything = from(&generated, &bearer(&all));
    let mut replay = Subscriber::open(addr, &hub_url(&[books[0], ("last_event_id", "earliest")]), "");
    let marker = hub_publish(addr, &[("topic", "https://example.com/books/9"), ("data", "marker")]);
    let expect = |which: &[usize]| -> Vec<(String, String)> {
        which
            .iter()
            .map(|&i| (published[i].0.clone(), published[i].1.to_string()))
            .chain([(marker.clone(), "marker".to_string())])
            .collect()
    };
    assert_eq!(
        next_hub_events(&mut owner, 3),
        expect(&[1, 2]),
        "what followed p0, s1 granted by its alternate topic"
    );
    assert_eq!(next_hub_events(&mut stranger, 2), expect(&[2]), "anonymous: the private ones stay private");
    assert_eq!(next_hub_events(&mut everything, 2), expect(&[3]), "a `*` grant, from the hub's own id");
    assert_eq!(next_hub_events(&mut replay, 3), expect(&[0, 2]), "earliest, anonymous");
}

/// One record in the store's version 2 layout, written here from the layout in the store's module
/// doc: `[0x8000_0000 | payload length u32][CRC-32 of that word and the payload u32][id u64]
/// [topic count u16][per topic: length u16, bytes][type length u16, bytes][retry flag u8]
/// [data length u32, bytes]`, little endian; no type, no retry.
#[cfg(feature = "mercure")]
fn v2_record(id: u64, topic: &str, data: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(&1u16.to_le_bytes());
    payload.extend_from_slice(&u16::try_from(topic.len()).unwrap().to_le_bytes());
    payload.extend_from_slice(topic.as_bytes());
    payload.extend_from_slice(&0u16.to_le_bytes());
    payload.push(0);
    payload.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
    payload.extend_from_slice(data.as_bytes());
    let word = (0x8000_0000 | u32::try_from(payload.len()).unwrap()).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&word);
    crc.update(&payload);
    let mut record = word.to_vec();
    record.extend_from_slice(&crc.finalize().to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

/// The format bits (top two of the first word) of each record in `bytes`, walked by their lengths.
#[cfg(feature = "mercure")]
fn record_formats(bytes: &[u8]) -> Vec<u32> {
    let mut formats = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        formats.push(word >> 30);
        at += 8 + (word & 0x3FFF_FFFF) as usize;
    }
    assert_eq!(at, bytes.len(), "whole records");
    formats
}

#[test]
#[cfg(feature = "mercure")]
fn a_data_dir_of_plain_version_2_records_loads_next_to_the_hubs_version_3_records() {
    use crate::mercure::{bearer, claims, detail, hub_publish, hub_url, token, SECRET};

    let dir = TempDir::new("v2-v3");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    let now = u64::try_from(now).unwrap();
    let old: Vec<u64> = (0..3u64).map(|i| now - 3_000_000 + i * 1_000_000).collect();
    let bytes: Vec<u8> =
        old.iter().enumerate().flat_map(|(i, &id)| v2_record(id, "t", &format!("old-{i}"))).collect();
    let segment = dir.0.join(format!("{:020}.seg", old[0]));
    std::fs::write(&segment, &bytes).unwrap();

    let (mut proc, addr) = start(&dir.0, &["--jwt-key", SECRET]);
    proc.wait_for_line("loaded 3 events");
    let secret = hub_publish(
        addr,
        &[
            ("topic", "https://example.com/books/1"),
            ("private", "on"),
            ("id", "urn:uuid:new-secret"),
            ("data", "s"),
        ],
    );
    let public = hub_publish(addr, &[("topic", "https://example.com/books/1"), ("data", "p")]);
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
    let on_disk = std::fs::read(&segment).unwrap();
    assert!(on_disk.starts_with(&bytes), "appended after the old records");
    assert_eq!(record_formats(&on_disk), [2, 2, 2, 3, 3], "version 2 as found, version 3 for the hub's");

    let (proc, addr) = start(&dir.0, &["--jwt-key", SECRET]);
    proc.wait_for_line("loaded 5 events");
    // The old events, resumed from a numeric id (through the hub: with a JWT key, /events wants
    // tokens too), with the numeric ids they were stored with.
    let mut old_sub =
        Subscriber::open(addr, &hub_url(&[("match", "t")]), &format!("Last-Event-ID: {}\r\n", old[0]));
    let marker = hub_publish(addr, &[("topic", "t"), ("data", "marker")]);
    let mut expected_old: Vec<(String, String)> =
        (1..3).map(|i| (old[i].to_string(), format!("old-{i}"))).collect();
    expected_old.push((marker, "marker".to_string()));
    assert_eq!(next_hub_events(&mut old_sub, 3), expected_old);
    let all = token(&claims(vec![detail(&["subscribe"], &[("*", "exact")])]));
    let books = hub_url(&[("match", "https://example.com/books/1"), ("last_event_id", "earliest")]);
    let mut granted = Subscriber::open(addr, &books, &bearer(&all));
    let mut anonymous = Subscriber::open(addr, &books, "");
    assert_eq!(
        next_hub_events(&mut granted, 2),
        [(secret.clone(), "s".to_string()), (public.clone(), "p".to_string())]
    );
    assert_eq!(next_hub_events(&mut anonymous, 1), [(public, "p".to_string())], "still private");
    let mut resumed = Subscriber::open(
        addr,
        &hub_url(&[("match", "https://example.com/books/1")]),
        &format!("{}Last-Event-ID: {secret}\r\n", bearer(&all)),
    );
    assert_eq!(resumed.response.header("mercure-last-event-id"), Some(secret.as_str()));
    assert_eq!(resumed.next_event().data, "p");
}
