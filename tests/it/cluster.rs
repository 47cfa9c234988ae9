//! Cluster mode: several `ssed` processes on one real `redis-server`, started here on a free loopback
//! port in a temporary directory with its append-only file on. The tests that need the server are
//! `#[ignore]`d (plain `cargo test` needs nothing but the Rust toolchain); `.ci/run` installs it and
//! runs them. No mock: the nodes speak to Redis as they would in production.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::child::{base_command, Proc};
use crate::support::*;

/// A `redis-server` of the test's own, killed by its PID when dropped.
struct Redis {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { port, dir: TempDir::new("redis"), child: None };
        redis.restart();
        redis
    }

    /// Starts the server (again) on the same port and directory, so it reloads its append-only file.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir", self.dir.arg()])
            .args([
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--enable-debug-command",
                "local",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        assert!(
            eventually(|| self.try_cli(&["PING"]).is_some_and(|r| r == "PONG")),
            "redis-server did not start"
        );
    }

    /// SIGKILL: no chance to save anything beyond what the append-only file already holds.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node of the cluster on `redis`: `ssed --redis URL` on a fresh loopback port.
fn node(redis: &Redis, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut command = base_command();
    command.args(["--listen", "127.0.0.1:0", "--redis", &redis.url()]).args(extra);
    let proc = Proc::spawn(command);
    let addr = proc.listening_addr();
    (proc, addr)
}

/// The ids and data of `n` events from `sub`, each within the deadline.
fn take(sub: &mut Subscriber, n: usize) -> Vec<(u64, String)> {
    (0..n).map(|_| id_data(&sub.next_event())).collect()
}

fn strictly_increasing(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn every_node_sees_every_event_with_the_same_id_in_the_same_order() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 5_000;
    let redis = Redis::start();
    let nodes: Vec<(Proc, SocketAddr)> = (0..3).map(|_| node(&redis, &["--heartbeat", "0"])).collect();
    // On every node: every topic, one topic, and two topics merged.
    let paths = ["/events", "/events?topic=a", "/events?topic=a&topic=b"];
    let readers: Vec<_> = nodes
        .iter()
        .flat_map(|(_, addr)| paths.iter().map(move |path| (*addr, *path)))
        .map(|(addr, path)| {
            let mut sub = Subscriber::open(addr, path, "");
            let expected = if path == "/events?topic=a" { PUBLISHERS * EACH / 2 } else { PUBLISHERS * EACH };
            std::thread::spawn(move || {
                (path, (0..expected).map(|_| id_data(&sub.next_event())).collect::<Vec<_>>())
            })
        })
        .collect();
    let answered = Arc::new(Mutex::new(Vec::new()));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let addr = nodes[p % nodes.len()].1;
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                for i in 0..EACH {
                    let topic = if i % 2 == 0 { "a" } else { "b" };
                    let id = conn.publish(&format!("topic={topic}"), format!("{p}-{i}").as_bytes());
                    answered.lock().unwrap().push((id, topic));
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().expect("publisher");
    }
    let answered = answered.lock().unwrap().clone();
    let all: BTreeSet<u64> = answered.iter().map(|(id, _)| *id).collect();
    assert_eq!(all.len(), PUBLISHERS * EACH, "every publish got an id of its own");
    let of_a: Vec<u64> = {
        let mut ids: Vec<u64> = answered.iter().filter(|(_, t)| *t == "a").map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    };
    let mut seen: Vec<(&str, Vec<(u64, String)>)> = Vec::new();
    for reader in readers {
        let (path, events) = reader.join().expect("subscriber");
        let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
        assert!(strictly_increasing(&ids), "{path}: ids go up, none twice");
        if path == "/events?topic=a" {
            assert_eq!(ids, of_a, "{path}: exactly the events of topic a");
        } else {
            assert_eq!(ids, all.iter().copied().collect::<Vec<_>>(), "{path}: exactly every event");
        }
        seen.push((path, events));
    }
    for path in paths {
        let sequences: Vec<&Vec<(u64, String)>> =
            seen.iter().filter(|(p, _)| *p == path).map(|(_, e)| e).collect();
        assert_eq!(sequences.len(), nodes.len());
        assert!(sequences.windows(2).all(|w| w[0] == w[1]), "{path}: the same sequence on every node");
    }
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn a_client_resumes_on_another_node_exactly_after_its_last_id() {
    let redis = Redis::start();
    let (_a, a) = node(&redis, &[]);
    let (_c, c) = node(&redis, &[]);
    let mut watcher = Subscriber::open(c, "/events", "");
    let mut published: Vec<(u64, &str)> = Vec::new();
    for i in 0..10 {
        let topic = if i % 2 == 0 { "x" } else { "y" };
        published.push((publish(a, &format!("topic={topic}"), format!("e{i}")), topic));
    }
    // C has read them back (the watcher saw the last), so a resume there can be served.
    assert_eq!(take(&mut watcher, 10).last().map(|(id, _)| *id), published.last().map(|(id, _)| *id));
    let from = published[4].0;
    for (path, topics) in
        [("/events", &["x", "y"][..]), ("/events?topic=x", &["x"]), ("/events?topic=x&topic=y", &["x", "y"])]
    {
        let expected: Vec<u64> =
            published.iter().filter(|(id, t)| *id > from && topics.contains(t)).map(|(id, _)| *id).collect();
        let mut sub = Subscriber::open(c, path, &format!("Last-Event-ID: {from}\r\n"));
        let got: Vec<u64> = take(&mut sub, expected.len()).into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, expected, "{path} resumed on another node after {from}");
        let next = publish(a, "topic=x", "after the resume");
        published.push((next, "x"));
        assert_eq!(sub.next_event().id, Some(next.to_string()), "{path}: nothing twice, then live");
    }
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn clients_of_a_killed_node_resume_on_another_with_exactly_what_they_missed() {
    let redis = Redis::start();
    let (mut a, a_addr) = node(&redis, &[]);
    let (_b, b) = node(&redis, &[]);
    let mut sub = Subscriber::open(a_addr, "/events?topic=k", "");
    let before: Vec<u64> = (0..3).map(|i| publish(b, "topic=k", format!("before {i}"))).collect();
    let last = take(&mut sub, 3).last().unwrap().0;
    assert_eq!(last, before[2]);
    a.signal("KILL");
    a.wait_exit();
    let missed: Vec<u64> = (0..4).map(|i| publish(b, "topic=k", format!("missed {i}"))).collect();
    let mut resumed = Subscriber::open(b, "/events?topic=k", &format!("Last-Event-ID: {last}\r\n"));
    let got: Vec<u64> = take(&mut resumed, 4).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, missed);
    assert_eq!(resumed.next_event_within(Duration::from_millis(300)), None, "nothing more, nothing twice");
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn a_restarted_redis_is_reconnected_and_ids_keep_increasing() {
    let mut redis = Redis::start();
    let (_a, a) = node(&redis, &[]);
    let mut sub = Subscriber::open(a, "/events?topic=r", "");
    let before: Vec<u64> = (0..3).map(|i| publish(a, "topic=r", format!("before {i}"))).collect();
    assert_eq!(take(&mut sub, 3).into_iter().map(|(id, _)| id).collect::<Vec<_>>(), before);

    redis.kill();
    // Publishes are refused at once with the reason, and may be retried; the node says it is degraded.
    let mut refused = None;
    assert!(eventually(|| {
        let response = post(a, "/events?topic=r", "", b"during");
        let failed = response.status == 503;
        refused = Some(response);
        failed
    }));
    let refused = refused.unwrap();
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert!(refused.body_text().contains("Redis"), "{refused:?}");
    assert!(eventually(|| get(a, "/health", "").status == 503), "/health reports the outage");
    assert_eq!(metric(a, "ssed_redis_up"), Some(0.0));

    redis.restart();
    assert!(eventually(|| get(a, "/health", "").status == 200), "/health recovers");
    let after: Vec<u64> = (0..3).map(|i| publish(a, "topic=r", format!("after {i}"))).collect();
    assert!(after[0] > before[2], "ids keep increasing across the restart: {before:?} then {after:?}");
    let got: Vec<(u64, String)> = take(&mut sub, 3);
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), after, "the stream went on, nothing twice");
    assert!(metric(a, "ssed_redis_reconnects_total").unwrap_or(0.0) >= 1.0);
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn a_node_cut_off_from_redis_catches_up_in_order() {
    let redis = Redis::start();
    let (_a, a) = node(&redis, &[]);
    let (_b, b) = node(&redis, &[]);
    let mut sub = Subscriber::open(a, "/events", "");
    let first = publish(b, "topic=c", "first");
    assert_eq!(sub.next_event().id, Some(first.to_string()));
    // Every node loses its connections at once; B's publishes succeed as soon as it is back.
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut id = None;
        assert!(eventually(|| {
            let response = post(b, "/events?topic=c", "", format!("meanwhile {i}").as_bytes());
            id = (response.status == 200).then(|| published_id(&response));
            id.is_some()
        }));
        ids.push(id.unwrap());
    }
    let got: Vec<u64> = take(&mut sub, 20).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids, "every event published meanwhile, in order, none twice");
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn a_stalled_redis_does_not_stall_the_loop() {
    let redis = Redis::start();
    let (_a, a) = node(&redis, &["--heartbeat", "1"]);
    let mut sub = Subscriber::open(a, "/events?topic=s", "");
    let redis_addr: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    // Redis runs one command at a time: once DEBUG SLEEP is in and a PING on another connection
    // goes unanswered, it is stalled for (nearly) the whole three seconds.
    let mut sleeper = connect(redis_addr);
    sleeper.write_all(b"DEBUG SLEEP 3\r\n").unwrap();
    let stalled = || {
        let mut probe = connect(redis_addr);
        probe.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        probe.write_all(b"PING\r\n").unwrap();
        probe.read(&mut [0; 16]).is_err()
    };
    assert!(eventually(stalled), "Redis never stalled");
    let publisher = std::thread::spawn(move || {
        let started = Instant::now();
        let id = publish(a, "topic=s", "during the stall");
        (id, started.elapsed())
    });
    let mut slowest = Duration::ZERO;
    let probing = Instant::now();
    while !publisher.is_finished() && probing.elapsed() < DEADLINE {
        let started = Instant::now();
        assert_eq!(get(a, "/health", "").status, 200);
        slowest = slowest.max(started.elapsed());
    }
    let (id, waited) = publisher.join().unwrap();
    eprintln!("Redis stalled: the publish waited {waited:?}; the slowest /health meanwhile took {slowest:?}");
    assert!(waited > Duration::from_secs(1), "the publish waited for Redis ({waited:?})");
    assert!(
        slowest < Duration::from_millis(250),
        "the loop answered /health within {slowest:?} during the stall"
    );
    assert_eq!(sub.next_event().id, Some(id.to_string()));
    assert!(sub.comments >= 3, "heartbeats went on during the stall: {} comments", sub.comments);
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn entries_trimmed_before_a_node_read_them_are_a_gap_not_silence() {
    let redis = Redis::start();
    let (a_proc, a) = node(&redis, &["--redis-maxlen", "10"]);
    let (_b, b) = node(&redis, &["--redis-maxlen", "10"]);
    let mut sub = Subscriber::open(a, "/events?topic=g", "");
    let first = publish(b, "topic=g", "seen");
    assert_eq!(sub.next_event().id, Some(first.to_string()));
    // A is away (stopped) while far more than the stream keeps is published and trimmed.
    a_proc.signal("STOP");
    let mut conn = Conn::open(b);
    let ids: Vec<u64> = (0..1500).map(|i| conn.publish("topic=g", format!("away {i}").as_bytes())).collect();
    let length: usize = redis.cli(&["XLEN", "ssed:events"]).parse().unwrap();
    assert!(length < 1000, "Redis trimmed the stream ({length} entries)");
    a_proc.signal("CONT");
    // A's streams end, so their clients come back and are told what they missed.
    let events = sub.read_to_end();
    assert!(sub.clean_end(), "the stream ended cleanly");
    assert!(
        events.len() < ids.len(),
        "not every trimmed event reached it ({} of {})",
        events.len(),
        ids.len()
    );
    let mut resumed = Subscriber::open(a, "/events?topic=g", &format!("Last-Event-ID: {first}\r\n"));
    let gap = resumed.next_event();
    assert_eq!(gap.event.as_deref(), Some("ssed-gap"), "{gap:?}");
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn two_processes_share_one_port_with_reuse_port() {
    let redis = Redis::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let procs: Vec<Proc> = (0..2)
        .map(|_| {
            let mut command = base_command();
            command.args(["--listen", &listen, "--reuse-port", "--redis", &redis.url(), "--heartbeat", "0"]);
            let proc = Proc::spawn(command);
            proc.listening_addr();
            proc
        })
        .collect();
    let addr: SocketAddr = listen.parse().unwrap();
    let before: Vec<usize> = procs.iter().map(Proc::fds).collect();
    let mut subs: Vec<Subscriber> = (0..40).map(|_| Subscriber::open(addr, "/events?topic=p", "")).collect();
    let after: Vec<usize> = procs.iter().map(Proc::fds).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(a >= &(b + 3), "process {i} took connections too: {b} -> {a} descriptors");
    }
    let id = publish(addr, "topic=p", "to everyone");
    for sub in &mut subs {
        assert_eq!(sub.next_event().id, Some(id.to_string()), "every subscriber, on either process");
    }
}

#[test]
fn a_node_that_cannot_reach_redis_exits_naming_the_url() {
    // Nothing listens on port 1 of loopback.
    let mut command = base_command();
    command.args(["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1/0"]);
    let mut proc = Proc::spawn(command);
    proc.wait_for_line("redis://127.0.0.1:1/0");
    let status = proc.wait_exit();
    assert!(!status.success(), "{status:?}");
}

#[test]
fn settings_that_cannot_work_in_a_cluster_are_refused_at_start() {
    for (args, needle) in [
        (&["--reuse-port"][..], "--reuse-port needs --redis"),
        (&["--redis", "redis://127.0.0.1:6379/0", "--data-dir", "/tmp/x"][..], "--data-dir and --redis"),
    ] {
        let mut command = base_command();
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        let mut proc = Proc::spawn(command);
        proc.wait_for_line(needle);
        assert_eq!(proc.wait_exit().code(), Some(2), "{args:?}");
    }
}

#[test]
#[ignore = "needs redis-server: run by .ci/run"]
fn the_library_s_publisher_goes_through_redis_too() {
    let redis = Redis::start();
    let (_b, b) = node(&redis, &[]);
    let embedded = TestServer::start(ssed::Config { redis: Some(redis.url()), ..ssed::Config::default() });
    let mut on_b = Subscriber::open(b, "/events?topic=lib", "");
    let mut on_embedded = Subscriber::open(embedded.addr, "/events?topic=lib", "");
    let id = embedded
        .publisher
        .publish(ssed::Event::new("from the handle").topic("lib"))
        .expect("published")
        .get();
    for sub in [&mut on_b, &mut on_embedded] {
        assert_eq!(id_data(&sub.next_event()), (id, "from the handle".to_string()), "every node, same id");
    }
    // Refused at once while Redis is away, with an error a caller can act on.
    drop(redis);
    let mut last = None;
    assert!(eventually(|| {
        last = Some(embedded.publisher.publish(ssed::Event::new("x").topic("lib")));
        last.as_ref().is_some_and(|r| r.is_err())
    }));
    let err = last.unwrap().unwrap_err();
    assert_eq!(err.kind(), ssed::ErrorKind::Unavailable, "{err}");
}

#[test]
#[cfg(feature = "mercure")]
#[ignore = "needs redis-server: run by .ci/run"]
fn hub_updates_cross_nodes_with_their_id_their_privacy_and_their_topics_intact() {
    use crate::mercure::{bearer, claims, detail, hub_publish, hub_url, token, SECRET};

    let redis = Redis::start();
    let (_a, a) = node(&redis, &["--jwt-key", SECRET]);
    let (_b, b) = node(&redis, &["--jwt-key", SECRET]);
    let books = hub_url(&[("match_urlpattern", "https://example.com/books/:id")]);
    let own =
        token(&claims(vec![detail(&["subscribe"], &[("https://example.com/users/42/*", "urlpattern")])]));
    let mut owner = Subscriber::open(b, &books, &bearer(&own));
    let mut anonymous = Subscriber::open(b, &books, "");
    // A space (the separator of /events topics in the stream's `topics` field) and non-ASCII.
    let odd = "https://example.com/a b/é?q=ü&r=✓";
    let mut exact = Subscriber::open(b, &hub_url(&[("match", odd)]), "");

    let secret = [
        ("topic", "https://example.com/books/1"),
        ("topic", "https://example.com/users/42/books/1"),
        ("private", "on"),
        ("data", "secret"),
        ("id", "urn:uuid:private-1"),
    ];
    assert_eq!(hub_publish(a, &secret), "urn:uuid:private-1", "A answers with the publisher's id");
    let event = owner.next_event();
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some("urn:uuid:private-1"), "secret"),
        "B delivers it to the token that covers its alternate topic, with the publisher's id"
    );
    let after = hub_publish(a, &[("topic", "https://example.com/books/2"), ("data", "after")]);
    assert!(after.starts_with("urn:ssed:"), "{after}");
    let event = anonymous.next_event();
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some(after.as_str()), "after"),
        "the anonymous subscriber on B never saw the private update"
    );
    assert_eq!(owner.next_event().id.as_deref(), Some(after.as_str()));

    let spaced = hub_publish(a, &[("topic", odd), ("data", "odd topic"), ("id", "urn:uuid:ödd")]);
    assert_eq!(spaced, "urn:uuid:ödd");
    let event = exact.next_event();
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some("urn:uuid:ödd"), "odd topic"),
        "an exact match on B: the topic came through byte for byte"
    );

    // Resuming on B from the custom id A's publisher gave: exactly what followed, on its routes.
    let mut resumed =
        Subscriber::open(b, &books, &format!("{}Last-Event-ID: urn:uuid:private-1\r\n", bearer(&own)));
    assert_eq!(resumed.response.header("mercure-last-event-id"), Some("urn:uuid:private-1"));
    let last = hub_publish(a, &[("topic", "https://example.com/books/3"), ("data", "last")]);
    let got: Vec<(Option<String>, String)> = (0..2)
        .map(|_| {
            let e = resumed.next_event();
            (e.id, e.data)
        })
        .collect();
    assert_eq!(got, [(Some(after.clone()), "after".to_string()), (Some(last), "last".to_string())]);
    let mut resumed_odd =
        Subscriber::open(b, &hub_url(&[("match", odd)]), "Last-Event-ID: urn:uuid:private-1\r\n");
    assert_eq!(resumed_odd.next_event().data, "odd topic", "the odd topic is in B's history too");
}
