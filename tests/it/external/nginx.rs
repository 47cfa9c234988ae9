//! nginx as a reverse proxy in front of ssed, with the configuration in
//! `tests/clients/nginx/nginx.conf.template` (the README's location block, and nginx's defaults).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use ssed::Config;

use super::{free_port, program, repo_path, Proc};
use crate::support::{eventually, post, published_id, Subscriber, TempDir, TestServer};

/// How long an event may take to come through the proxy: far less than any buffering would hold it.
const PROMPTLY: Duration = Duration::from_secs(2);

struct Nginx {
    addr: SocketAddr,
    // Fields drop in order: nginx is killed before its directory is removed.
    proc: Proc,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx in the foreground on a free loopback port, proxying to `upstream`.
    fn start(upstream: SocketAddr) -> Nginx {
        let nginx = program("nginx");
        let template = std::fs::read_to_string(repo_path("tests/clients/nginx/nginx.conf.template"))
            .expect("read the template");
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let mut last_failure = String::new();
        // The port is free when asked for but could be taken before nginx binds it: try a few.
        for _ in 0..3 {
            let dir = TempDir::new("nginx");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let prefix = dir.0.display().to_string();
            let conf = template
                .replace("@USER@", if root { "user root;" } else { "" })
                .replace("@PREFIX@", &prefix)
                .replace("@LISTEN@", &addr.to_string())
                .replace("@UPSTREAM@", &upstream.to_string());
            let conf_path = dir.0.join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut command = Command::new(&nginx);
            command
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.0.join("error.log"))
                .arg("-g")
                .arg("daemon off;");
            let mut proc = Proc::spawn("nginx", command, None);
            // Bounded polling for nginx's listener, or its exit.
            let mut listening = false;
            eventually(|| {
                listening = TcpStream::connect(addr).is_ok();
                listening || proc.try_exit().is_some()
            });
            if listening {
                return Nginx { addr, dir, proc };
            }
            last_failure = format!("{}\n--- error.log ---\n{}", proc.report(), error_log(&dir));
        }
        panic!("nginx did not start: {last_failure}");
    }

    /// Publishes `body` with `POST {path_and_query}` through nginx; returns the id ssed answered.
    fn publish(&self, path_and_query: &str, body: &str) -> u64 {
        let response = post(self.addr, path_and_query, "", body.as_bytes());
        assert_eq!(response.status, 200, "publish through nginx answered {response:?}\n{}", self.logs());
        published_id(&response)
    }

    /// Subscribes through nginx with `GET {path_and_query}` and the extra header lines given.
    fn subscribe(&self, path_and_query: &str, extra_headers: &str) -> Subscriber {
        Subscriber::open(self.addr, path_and_query, extra_headers)
    }

    fn logs(&self) -> String {
        format!("{}\n--- error.log ---\n{}", self.proc.report(), error_log(&self.dir))
    }
}

fn error_log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.0.join("error.log")).unwrap_or_default()
}

/// Waits up to [`PROMPTLY`] for the next event and checks its id and data, and that the stream is open.
fn expect_prompt(subscriber: &mut Subscriber, id: u64, data: &str, nginx: &Nginx) {
    let started = Instant::now();
    let event = subscriber.next_event_within(PROMPTLY).unwrap_or_else(|| {
        panic!(
            "event {id} did not come through nginx within {PROMPTLY:?} (stream ended: {}): buffered?\n{}",
            subscriber.ended,
            nginx.logs()
        )
    });
    assert_eq!((event.id, event.data.as_str()), (Some(id.to_string()), data), "through nginx");
    assert!(!subscriber.ended, "the event must arrive while the stream is still open");
    assert!(started.elapsed() < PROMPTLY);
}

#[test]
#[ignore = "needs nginx: run by .ci/run"]
fn nginx_recommended_location_streams_at_once_and_resumes() {
    let server = TestServer::start(Config::default());
    let nginx = Nginx::start(server.addr);

    let mut live = nginx.subscribe("/events?topic=chat", "");
    let content_type = live.response.header("content-type").unwrap_or_default().to_string();
    assert!(content_type.starts_with("text/event-stream"), "{:?}", live.response);
    assert_eq!(live.response.header("cache-control"), Some("no-cache"), "{:?}", live.response);

    let one = nginx.publish("/events?topic=chat", "one");
    expect_prompt(&mut live, one, "one", &nginx);
    let two = nginx.publish("/events?topic=chat", "two");
    expect_prompt(&mut live, two, "two", &nginx);
    let three = nginx.publish("/events?topic=chat&event=multi", "three\nlines");
    let event = live.next_event_within(PROMPTLY).expect("third event through nginx");
    assert_eq!(
        (event.id, event.event.as_deref(), event.data.as_str()),
        (Some(three.to_string()), Some("multi"), "three\nlines")
    );

    // Last-Event-ID passes through nginx: a resume gets what came after that id, then live events.
    let mut by_header = nginx.subscribe("/events?topic=chat", &format!("Last-Event-ID: {one}\r\n"));
    expect_prompt(&mut by_header, two, "two", &nginx);
    assert_eq!(by_header.next_event().id, Some(three.to_string()));
    let mut by_query = nginx.subscribe(&format!("/events?topic=chat&lastEventId={two}"), "");
    assert_eq!(by_query.next_event().id, Some(three.to_string()));

    let four = nginx.publish("/events?topic=chat", "four");
    expect_prompt(&mut live, four, "four", &nginx);
    expect_prompt(&mut by_header, four, "four", &nginx);
    expect_prompt(&mut by_query, four, "four", &nginx);
    assert!(live.retries.contains(&3000), "the retry: field passes through: {:?}", live.retries);

    // A shutdown ends ssed's streams cleanly, so nginx ends its own with the terminating chunk.
    server.shutdown.shutdown();
    let rest = live.read_to_end();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(live.clean_end(), "nginx should pass on a clean end of stream\n{}", nginx.logs());
    server.stop();
}

#[test]
#[ignore = "needs nginx: run by .ci/run"]
fn nginx_default_proxy_settings_still_stream_thanks_to_x_accel_buffering() {
    let server = TestServer::start(Config::default());
    let nginx = Nginx::start(server.addr);

    // `location /minimal/ { proxy_pass http://ssed/; }`: HTTP/1.0 to ssed, buffering on.
    let mut live = nginx.subscribe("/minimal/events?topic=chat", "");
    let one = nginx.publish("/minimal/events?topic=chat", "one");
    expect_prompt(&mut live, one, "one", &nginx);
    let two = nginx.publish("/minimal/events?topic=chat", "two");
    expect_prompt(&mut live, two, "two", &nginx);

    let mut resumed = nginx.subscribe("/minimal/events?topic=chat", &format!("Last-Event-ID: {one}\r\n"));
    expect_prompt(&mut resumed, two, "two", &nginx);
    let three = nginx.publish("/minimal/events?topic=chat", "three");
    expect_prompt(&mut live, three, "three", &nginx);
    expect_prompt(&mut resumed, three, "three", &nginx);
    server.stop();
}
