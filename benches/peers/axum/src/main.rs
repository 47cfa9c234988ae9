//! A tokio + axum Server-Sent Events broadcast server, written the way an axum user would write one.
//! It is not part of ssed: it is the peer that `benches/compare.sh` measures ssed against (see
//! docs/benchmarks.md), a package of its own that the default build leaves out, so it has no tokio.
//!
//! - `GET /events?topic=T` streams `id:`/`data:` events from the topic's `tokio::sync::broadcast`
//!   channel through `axum::response::sse::Sse` (no keep-alive comments, no history, no resume);
//! - `POST /events?topic=T` publishes the body as one event and answers its id and a newline.
//!
//! ```text
//! cargo run --release -p ssed-axum-peer -- 127.0.0.1:8082        # target/release/axum_sse
//! cargo run --release -p ssed-axum-peer -- 127.0.0.1:8082 --runtime current
//! AXUM_SSE_RUNTIME=current TOKIO_WORKER_THREADS=2 ...    # the same through the environment
//! ```
//!
//! `--runtime current` runs everything on one thread (`new_current_thread`); `multi` (the default,
//! what `#[tokio::main]` gives) runs a work-stealing pool of `TOKIO_WORKER_THREADS` workers, one
//! per core by default. `--capacity N` (`AXUM_SSE_CAPACITY`, default 1024) is each channel's
//! buffer: a subscriber more than N events behind skips the ones it lost (`RecvError::Lagged`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// One published event, shared by every subscriber's stream.
struct Message {
    id: u64,
    data: String,
}

struct AppState {
    topics: Mutex<HashMap<String, broadcast::Sender<Arc<Message>>>>,
    next_id: AtomicU64,
    capacity: usize,
}

impl AppState {
    /// The topic's channel, created on first use.
    fn channel(&self, topic: &str) -> broadcast::Sender<Arc<Message>> {
        let mut topics = self.topics.lock().expect("topic map lock");
        topics.entry(topic.to_owned()).or_insert_with(|| broadcast::channel(self.capacity).0).clone()
    }
}

type Params = Query<HashMap<String, String>>;

fn topic_of(params: &HashMap<String, String>) -> Result<&str, (StatusCode, &'static str)> {
    match params.get("topic") {
        Some(topic) if !topic.is_empty() => Ok(topic),
        _ => Err((StatusCode::BAD_REQUEST, "missing topic\n")),
    }
}

async fn subscribe(
    State(state): State<Arc<AppState>>,
    Query(params): Params,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, (StatusCode, &'static str)> {
    let receiver = state.channel(topic_of(&params)?).subscribe();
    let stream = BroadcastStream::new(receiver)
        .filter_map(|message| message.ok()) // a lagging subscriber skips what it lost
        .map(|message| Ok(Event::default().id(message.id.to_string()).data(&message.data)));
    Ok(Sse::new(stream))
}

async fn publish(
    State(state): State<Arc<AppState>>,
    Query(params): Params,
    body: String,
) -> Result<String, (StatusCode, &'static str)> {
    let sender = state.channel(topic_of(&params)?);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    // An error only means that nobody is subscribed.
    let _ = sender.send(Arc::new(Message { id, data: body }));
    Ok(format!("{id}\n"))
}

/// A flag's value from the command line, else from the environment variable `env`.
fn setting(args: &[String], flag: &str, env: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|at| args.get(at + 1).cloned())
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "Usage: axum_sse [ADDR] [--runtime current|multi] [--capacity N]\n\
             ADDR defaults to 127.0.0.1:8082 (or AXUM_SSE_LISTEN); AXUM_SSE_RUNTIME, AXUM_SSE_CAPACITY\n\
             and tokio's TOKIO_WORKER_THREADS are read too."
        );
        return Ok(());
    }
    let addr: SocketAddr = match args.first().filter(|a| !a.starts_with("--")) {
        Some(a) => a.parse()?,
        None => std::env::var("AXUM_SSE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8082".into()).parse()?,
    };
    let runtime = setting(&args, "--runtime", "AXUM_SSE_RUNTIME").unwrap_or_else(|| "multi".into());
    let capacity: usize =
        setting(&args, "--capacity", "AXUM_SSE_CAPACITY").map_or(Ok(1024), |c| c.parse())?;

    let runtime = match runtime.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        "multi" => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        other => return Err(format!("--runtime: {other:?} is not current or multi").into()),
    };
    let state = Arc::new(AppState { topics: Mutex::default(), next_id: AtomicU64::new(0), capacity });
    let app = Router::new().route("/events", get(subscribe).post(publish)).with_state(state);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("axum_sse listening on http://{addr}/events");
        axum::serve(listener, app).await
    })?;
    Ok(())
}
