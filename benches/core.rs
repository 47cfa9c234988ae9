//! Criterion benches of the per-event and per-request work: encoding an event, parsing a request
//! head, appending to the log, and one publish fanned out to N cursors without sockets.
//!
//! `cargo bench --bench core`; `cargo test --benches` runs each once as a smoke test.

use std::io::IoSlice;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ssed::__bench::{encode_frame, parse_head, Fields};
use ssed::broadcast::{Broadcast, Framing, Limits, Subscription, MAX_SLICES};
use ssed::event::{Draft, Event};
use ssed::ids::ClockIds;

const DATA_100: &str =
    "{\"role\":\"assistant\",\"content\":\"a token or two of a streamed answer, about a hundred bytes\"}";

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let multi_line = "line one\nline two\r\nline three\rline four\n".repeat(25);
    for (name, data) in [("100B", DATA_100.to_string()), ("1KiB-multiline", multi_line)] {
        group.throughput(Throughput::Bytes(data.len() as u64));
        let mut out = Vec::with_capacity(4096);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let fields = Fields {
                    id: Some(1_795_654_479_027_289),
                    wire_id: None,
                    event_type: Some("token"),
                    retry_ms: None,
                    data: &data,
                };
                encode_frame(black_box(&fields), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_head");
    let subscribe = b"GET /events?topic=chat&topic=room%2F42 HTTP/1.1\r\nHost: example.com\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36\r\n\
        Accept: text/event-stream\r\nCache-Control: no-cache\r\nLast-Event-ID: 1795654479027289\r\n\
        Origin: https://app.example.com\r\nCookie: session=abc; ssed_token=s3cr3t\r\n\r\n";
    let publish = b"POST /events?topic=chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 100\r\n\
        Content-Type: application/json\r\nAuthorization: Bearer s3cr3t\r\n\r\n";
    for (name, head) in [("subscribe", &subscribe[..]), ("publish", &publish[..])] {
        group.throughput(Throughput::Bytes(head.len() as u64));
        group
            .bench_function(name, |b| b.iter(|| black_box(parse_head(black_box(head)).expect("valid head"))));
    }
    group.finish();
}

/// What the server does with a publish to a history that lives only in memory: the next id, the
/// encoding, the insert (with eviction) under topic `chat`. Returns the id.
fn publish(log: &mut Broadcast, event: &Event) -> u64 {
    let id = ClockIds.next(log.newest_id(), 0);
    let encoded = log.encode(event, id).expect("fits");
    log.insert(&["chat"], encoded, 0).expect("ids increase");
    id
}

/// A 100-byte event to topic `chat`.
fn event_100() -> Event {
    let draft = Draft { topics: vec!["chat".into()], data: DATA_100.as_bytes().to_vec(), ..Draft::default() };
    draft.validate(usize::MAX).expect("a valid event")
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Elements(1));
    // A full history, so every append also evicts: the steady state of a busy server.
    let mut log = Broadcast::new(Limits { events: 10_000, bytes: 64 << 20 }, 1);
    let event = event_100();
    for _ in 0..10_000 {
        publish(&mut log, &event);
    }
    group.bench_function("100B-one-topic-full-history", |b| b.iter(|| black_box(publish(&mut log, &event))));
    group.finish();
}

/// One publish, then every one of N subscribers' cursors gathers its frame and advances past it:
/// the user-space part of a fan-out, without the write system calls.
fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1_000usize, 10_000] {
        let mut log = Broadcast::new(Limits { events: 10_000, bytes: 64 << 20 }, 1);
        let selection = log.acquire(&["chat"]);
        let mut subs: Vec<_> = (0..subscribers)
            .map(|_| Subscription::new(selection.clone(), Framing::Chunked, &log.resume(&selection, None)))
            .collect();
        let event = event_100();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(BenchmarkId::new("one-publish", subscribers), &subscribers, |b, _| {
            b.iter(|| {
                publish(&mut log, &event);
                let mut bytes = 0;
                for sub in subs.iter_mut() {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let gathered = log.gather(sub, &mut slices, usize::MAX);
                    bytes += gathered.bytes;
                    log.advance(sub, &gathered, gathered.bytes);
                }
                black_box(bytes)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, parse, append, fanout);
criterion_main!(benches);
