//! Durable history (`--data-dir`): restarts, crashes, damaged segments, retention, a full disk.
//! These run the built binary as a child so it can be stopped, killed and restarted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::child::*;
use crate::support::DEADLINE;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("ssed-it-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut command = base_command();
    command.args(["--listen", "127.0.0.1:0", "--heartbeat", "0", "--data-dir"]).arg(dir).args(extra);
    let mut proc = Proc::spawn(command);
    let addr = proc.listening_addr();
    (proc, addr)
}

/// Everything retained for topic `t` after `last` (or all of it), as `(id, data)` pairs, read until
/// the stream has been quiet briefly after the replay.
fn replay(addr: SocketAddr, last: Option<u64>) -> Vec<(u64, String)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let header = last.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    write!(stream, "GET /events?topic=t HTTP/1.0\r\n{header}\r\n").unwrap();
    // Publish a marker so we know where the replay ends, without waiting on a timeout.
    let marker: u64 = publish(addr, "__end__").parse().unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let text = String::from_utf8(read_until(&mut stream, format!("id: {marker}\n").as_bytes())).unwrap();
    // Markers of earlier replays are stored events too; they are not part of what the tests check.
    parse_events(&text).into_iter().filter(|(_, data)| data != "__end__").collect()
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
    let ids: Vec<u64> = (0..5).map(|i| publish(addr, &format!("before-{i}")).parse().unwrap()).collect();
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));

    let (mut proc, addr) = start(&dir.0, &[]);
    proc.wait_for_line("loaded 5 events");
    let replayed = replay(addr, Some(ids[1]));
    let expected: Vec<(u64, String)> = (2..5).map(|i| (ids[i], format!("before-{i}"))).collect();
    assert_eq!(replayed, expected, "exactly the events after the resume point, no gap notice needed");
    let after: u64 = publish(addr, "after").parse().unwrap();
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
    let ids: Vec<u64> = (0..4).map(|i| publish(addr, &format!("kept-{i}")).parse().unwrap()).collect();
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

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

#[test]
fn retention_deletes_old_segments() {
    let dir = TempDir::new("retention");
    // Segments are at least 1 MiB; a 2 MiB history of ~4 KiB events rolls several of them.
    let (mut proc, addr) =
        start(&dir.0, &["--history-bytes", "2097152", "--max-body", "8192", "--max-lag", "65536"]);
    let body = "x".repeat(4000);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut largest = 0;
    for _ in 0..3000 {
        let request =
            format!("POST /events?topic=t HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
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
    let mut stream = subscribe(addr);
    // Fill the disk with a file of our own, leaving only a little room.
    let filler = mount.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    drop(file);

    let mut refused = None;
    for i in 0..200 {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let body = format!("fill-{i}-{}", "y".repeat(2000));
        write!(
            conn,
            "POST /events?topic=t HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        if response.starts_with("HTTP/1.1 503") {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("a publish is refused once the disk is full");
    assert!(refused.contains("Retry-After:"), "{refused}");
    assert!(refused.contains("No space left on device"), "{refused}");
    // Subscribers are still served: the health check answers and the stream is open.
    let mut health = TcpStream::connect(addr).unwrap();
    health.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Room again: publishing works and the subscriber gets the event.
    std::fs::remove_file(&filler).unwrap();
    let id = publish(addr, "room again");
    read_until(&mut stream, format!("id: {id}\ndata: room again\n").as_bytes());
    proc.signal("TERM");
    assert_eq!(proc.wait_exit().code(), Some(0));
}
